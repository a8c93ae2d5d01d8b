//! What a principal's role allows a request to do, checked before any of its events applies.
//!
//! The role names operations, ledgers and the account codes the principal may debit. Ledgers and
//! codes are read from the events and, where an event leaves them to the ledger (a post or void
//! names its pending transfer), from the state the request starts from. An event whose account or
//! pending transfer does not exist is left to fail on its own.

use crate::batch::Operation;
use crate::model::NewTransfer;
use crate::registry::{Permissions, Principal};
use crate::signed::RequestRefusal;
use crate::storage::StorageRead;

/// Whether `principal`'s role allows every event of `operation`; the first event it does not allow
/// otherwise.
pub(crate) fn check(
    principal: &Principal,
    operation: &Operation,
    storage: &impl StorageRead,
) -> Result<(), RequestRefusal> {
    let role = &principal.role;
    let needed = match operation {
        Operation::CreateLedgers(_) => Permissions::CREATE_LEDGERS,
        Operation::CreateAccounts(_) => Permissions::CREATE_ACCOUNTS,
        Operation::CreateTransfers(_) => Permissions::CREATE_TRANSFERS,
        Operation::ExpirePendingTransfers => unreachable!("no client request expires transfers"),
    };
    if !role.permissions.contains(needed) {
        return Err(RequestRefusal::OperationNotPermitted { principal: principal.id, operation: operation.name() });
    }
    let ledger_refused =
        |ledger: u32, index: usize| RequestRefusal::LedgerNotPermitted { principal: principal.id, ledger, index };
    match operation {
        Operation::CreateLedgers(ledgers) => {
            if let Some((index, ledger)) = ledgers.iter().enumerate().find(|(_, ledger)| !role.allows_ledger(ledger.id))
            {
                return Err(ledger_refused(ledger.id, index));
            }
        }
        Operation::CreateAccounts(accounts) => {
            if let Some((index, account)) =
                accounts.iter().enumerate().find(|(_, account)| !role.allows_ledger(account.ledger))
            {
                return Err(ledger_refused(account.ledger, index));
            }
        }
        Operation::CreateTransfers(transfers) => {
            if role.ledgers.is_empty() && role.debit_account_codes.is_empty() {
                return Ok(());
            }
            for (index, transfer) in transfers.iter().enumerate() {
                let Some((ledger, code)) = debit_of(transfer, storage) else { continue };
                if !role.allows_ledger(ledger) {
                    return Err(ledger_refused(ledger, index));
                }
                if code.is_some_and(|code| !role.allows_debit_code(code)) {
                    return Err(RequestRefusal::DebitAccountCodeNotPermitted {
                        principal: principal.id,
                        code: code.expect("checked"),
                        ledger,
                        index,
                    });
                }
            }
        }
        Operation::ExpirePendingTransfers => {}
    }
    Ok(())
}

/// The ledger a transfer moves money in and the code of the account it debits (`None` when that
/// account does not exist yet, so the transfer will fail by itself); `None` for a post or void of
/// a pending transfer that does not exist.
fn debit_of(transfer: &NewTransfer, storage: &impl StorageRead) -> Option<(u32, Option<u16>)> {
    let (ledger, debit_account_id) = if transfer.flags.resolves_pending() {
        let pending = storage.transfer_get(transfer.pending_id)?;
        (pending.ledger, pending.debit_account_id)
    } else {
        (transfer.ledger, transfer.debit_account_id)
    };
    Some((ledger, storage.account_get(debit_account_id).map(|account| account.code)))
}
