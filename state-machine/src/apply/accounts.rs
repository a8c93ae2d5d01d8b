//! `create_accounts`: open accounts on existing ledgers, with zero balances.

use super::{Event, check_id, into_code, same};
use crate::amount::Units;
use crate::codec::put_new_account;
use crate::flags::AccountFlags;
use crate::model::{Account, NewAccount};
use crate::result::ResultCode::{self, *};
// The glob above brings in `ResultCode::Ok`; this explicit import keeps `Ok` meaning `Result::Ok`.
use crate::storage::Storage;
use crate::writer::LedgerWriter;
use std::result::Result::Ok;

impl Event for NewAccount {
    fn linked(&self) -> bool {
        self.flags.contains(AccountFlags::LINKED)
    }

    fn put(&self, out: &mut Vec<u8>) {
        put_new_account(out, self);
    }

    fn apply<S: Storage>(&self, ledger: &mut LedgerWriter<S>, timestamp: u64) -> ResultCode {
        into_code(ledger.create_account(self, timestamp))
    }
}

fn check_account_fields(account: &NewAccount) -> Result<(), ResultCode> {
    check_id(account.id)?;
    if account.flags.has_reserved_bits() {
        return Err(ReservedFlag);
    }
    if account.flags.contains(AccountFlags::CLOSED) {
        return Err(AccountMustNotBeCreatedClosed);
    }
    let both_limits = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
    if account.flags.contains(both_limits) {
        return Err(FlagsAreMutuallyExclusive);
    }
    if account.ledger == 0 {
        return Err(LedgerMustNotBeZero);
    }
    if account.code == 0 {
        return Err(CodeMustNotBeZero);
    }
    Ok(())
}

impl<S: Storage> LedgerWriter<S> {
    fn create_account(&mut self, account: &NewAccount, timestamp: u64) -> Result<(), ResultCode> {
        check_account_fields(account)?;
        if let Some(existing) = self.storage.account_get(account.id) {
            // `closed` is the only flag that changes after creation, and a new account cannot set it.
            same(account.flags, existing.flags.difference(AccountFlags::CLOSED), ExistsWithDifferentFlags)?;
            same(account.user_data_128, existing.user_data_128, ExistsWithDifferentUserData128)?;
            same(account.user_data_64, existing.user_data_64, ExistsWithDifferentUserData64)?;
            same(account.user_data_32, existing.user_data_32, ExistsWithDifferentUserData32)?;
            same(account.ledger, existing.ledger, ExistsWithDifferentLedger)?;
            same(account.code, existing.code, ExistsWithDifferentCode)?;
            return Err(Exists);
        }
        if self.storage.ledger_get(account.ledger).is_none() {
            return Err(LedgerNotFound);
        }
        self.write_account_insert(&Account {
            id: account.id,
            ledger: account.ledger,
            code: account.code,
            flags: account.flags,
            user_data_128: account.user_data_128,
            user_data_64: account.user_data_64,
            user_data_32: account.user_data_32,
            debits_pending: Units::ZERO,
            debits_posted: Units::ZERO,
            credits_pending: Units::ZERO,
            credits_posted: Units::ZERO,
            timestamp,
        });
        Ok(())
    }
}
