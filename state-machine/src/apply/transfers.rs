//! `create_transfers`: single-phase transfers, pending transfers, and posts and voids of them.

use super::{Event, check_id, into_code, same};
use crate::amount::{AmountError, Units};
use crate::codec::put_new_transfer;
use crate::flags::{AccountFlags, TransferFlags};
use crate::model::{Account, NewTransfer, PendingStatus, Transfer, TransferFailure, deadline};
use crate::result::ResultCode::{self, *};
// The glob above brings in `ResultCode::Ok`; this explicit import keeps `Ok` meaning `Result::Ok`.
use crate::storage::Storage;
use crate::writer::LedgerWriter;
use std::result::Result::Ok;

impl Event for NewTransfer {
    fn linked(&self) -> bool {
        self.flags.contains(TransferFlags::LINKED)
    }

    fn put(&self, out: &mut Vec<u8>) {
        put_new_transfer(out, self);
    }

    fn apply<S: Storage>(&self, ledger: &mut LedgerWriter<S>, timestamp: u64) -> ResultCode {
        into_code(ledger.create_transfer(self, timestamp))
    }

    fn record_failure<S: Storage>(&self, ledger: &mut LedgerWriter<S>, code: ResultCode, timestamp: u64) {
        // The id may already be taken: a failed chain can repeat an id that exists.
        if ledger.storage.transfer_get(self.id).is_none() && ledger.storage.transfer_failure_get(self.id).is_none() {
            ledger.storage.transfer_failure_insert(&TransferFailure { id: self.id, code, timestamp });
        }
    }
}

fn amount_code(error: AmountError) -> ResultCode {
    match error {
        AmountError::NotPositive => AmountMustBePositive,
        AmountError::ScaleExceedsLedgerScale => AmountScaleExceedsLedgerScale,
        AmountError::ExceedsMax => AmountExceedsMax,
    }
}

fn is_positive(amount: rust_decimal::Decimal) -> bool {
    !amount.is_zero() && amount.is_sign_positive()
}

/// The checks that need nothing but the event itself.
fn check_transfer_fields(transfer: &NewTransfer) -> Result<(), ResultCode> {
    check_id(transfer.id)?;
    let flags = transfer.flags;
    if flags.has_reserved_bits() {
        return Err(ReservedFlag);
    }
    let kinds = TransferFlags::PENDING | TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER;
    if flags.intersection(kinds).bits().count_ones() > 1 || (flags.resolves_pending() && flags.is_balancing()) {
        return Err(FlagsAreMutuallyExclusive);
    }
    if flags.is_closing() && !flags.contains(TransferFlags::PENDING) {
        return Err(ClosingTransferMustBePending);
    }
    if flags.resolves_pending() {
        return check_resolving_fields(transfer);
    }
    if transfer.pending_id != 0 {
        return Err(PendingIdMustBeZero);
    }
    if transfer.timeout_seconds != 0 && !flags.contains(TransferFlags::PENDING) {
        return Err(TimeoutReservedForPendingTransfer);
    }
    match transfer.debit_account_id {
        0 => return Err(DebitAccountIdMustNotBeZero),
        u128::MAX => return Err(DebitAccountIdMustNotBeIntMax),
        _ => {}
    }
    match transfer.credit_account_id {
        0 => return Err(CreditAccountIdMustNotBeZero),
        u128::MAX => return Err(CreditAccountIdMustNotBeIntMax),
        _ => {}
    }
    if transfer.debit_account_id == transfer.credit_account_id {
        return Err(AccountsMustBeDifferent);
    }
    if transfer.ledger == 0 {
        return Err(LedgerMustNotBeZero);
    }
    if transfer.code == 0 {
        return Err(CodeMustNotBeZero);
    }
    match transfer.amount {
        None => Err(AmountMustBeSet),
        Some(amount) if !is_positive(amount) => Err(AmountMustBePositive),
        Some(_) => Ok(()),
    }
}

/// Field checks of a post or void. Accounts, ledger and code may be 0 to take the pending
/// transfer's; when set, they are checked against it later.
fn check_resolving_fields(transfer: &NewTransfer) -> Result<(), ResultCode> {
    match transfer.pending_id {
        0 => return Err(PendingIdMustNotBeZero),
        u128::MAX => return Err(PendingIdMustNotBeIntMax),
        pending_id if pending_id == transfer.id => return Err(PendingIdMustBeDifferent),
        _ => {}
    }
    if transfer.timeout_seconds != 0 {
        return Err(TimeoutReservedForPendingTransfer);
    }
    match transfer.amount {
        Some(amount) if !is_positive(amount) => Err(AmountMustBePositive),
        _ => Ok(()),
    }
}

/// `submitted` must match `stored`, unless it is 0 and so defers to the pending transfer.
fn same_or_inherited<T: PartialEq + Default>(submitted: T, stored: T, different: ResultCode) -> Result<(), ResultCode> {
    if submitted == T::default() { Ok(()) } else { same(submitted, stored, different) }
}

/// The stored value, unless the submitted one is set.
fn inherited<T: PartialEq + Default>(submitted: T, stored: T) -> T {
    if submitted == T::default() { stored } else { submitted }
}

impl<S: Storage> LedgerWriter<S> {
    fn create_transfer(&mut self, transfer: &NewTransfer, timestamp: u64) -> Result<(), ResultCode> {
        check_transfer_fields(transfer)?;
        if let Some(existing) = self.storage.transfer_get(transfer.id) {
            return Err(self.compare_with_existing(transfer, &existing));
        }
        if self.storage.transfer_failure_get(transfer.id).is_some() {
            return Err(IdAlreadyFailed);
        }
        if transfer.flags.resolves_pending() {
            self.resolve_pending_transfer(transfer, timestamp)
        } else {
            self.create_new_transfer(transfer, timestamp)
        }
    }

    /// A re-submitted id: `exists` only when every submitted field matches what was stored.
    fn compare_with_existing(&self, transfer: &NewTransfer, existing: &Transfer) -> ResultCode {
        let compared = (|| {
            same(transfer.flags, existing.flags, ExistsWithDifferentFlags)?;
            if transfer.flags.resolves_pending() {
                same(transfer.pending_id, existing.pending_id, ExistsWithDifferentPendingId)?;
                same_or_inherited(
                    transfer.debit_account_id,
                    existing.debit_account_id,
                    ExistsWithDifferentDebitAccountId,
                )?;
                same_or_inherited(
                    transfer.credit_account_id,
                    existing.credit_account_id,
                    ExistsWithDifferentCreditAccountId,
                )?;
            } else {
                same(transfer.debit_account_id, existing.debit_account_id, ExistsWithDifferentDebitAccountId)?;
                same(transfer.credit_account_id, existing.credit_account_id, ExistsWithDifferentCreditAccountId)?;
            }
            if !self.same_amount(transfer, existing) {
                return Err(ExistsWithDifferentAmount);
            }
            same(transfer.timeout_seconds, existing.timeout_seconds, ExistsWithDifferentTimeout)?;
            if transfer.flags.resolves_pending() {
                same_or_inherited(transfer.user_data_128, existing.user_data_128, ExistsWithDifferentUserData128)?;
                same_or_inherited(transfer.user_data_64, existing.user_data_64, ExistsWithDifferentUserData64)?;
                same_or_inherited(transfer.user_data_32, existing.user_data_32, ExistsWithDifferentUserData32)?;
                same_or_inherited(transfer.ledger, existing.ledger, ExistsWithDifferentLedger)?;
                same_or_inherited(transfer.code, existing.code, ExistsWithDifferentCode)?;
            } else {
                same(transfer.user_data_128, existing.user_data_128, ExistsWithDifferentUserData128)?;
                same(transfer.user_data_64, existing.user_data_64, ExistsWithDifferentUserData64)?;
                same(transfer.user_data_32, existing.user_data_32, ExistsWithDifferentUserData32)?;
                same(transfer.ledger, existing.ledger, ExistsWithDifferentLedger)?;
                same(transfer.code, existing.code, ExistsWithDifferentCode)?;
            }
            Ok(())
        })();
        compared.err().unwrap_or(Exists)
    }

    fn same_amount(&self, transfer: &NewTransfer, existing: &Transfer) -> bool {
        let scale = self.storage.ledger_get(existing.ledger).expect("a stored transfer's ledger exists").scale;
        match transfer.amount {
            // An omitted amount posts or voids the whole pending amount.
            None => {
                let pending =
                    self.storage.transfer_get(existing.pending_id).expect("a post or void's pending transfer exists");
                existing.amount == pending.amount
            }
            Some(amount) => match Units::from_decimal(amount, scale) {
                // A balancing transfer's amount is a ceiling: it stored what it could move.
                Ok(ceiling) if transfer.flags.is_balancing() => ceiling >= existing.amount,
                Ok(units) => units == existing.amount,
                Err(_) => false,
            },
        }
    }

    fn create_new_transfer(&mut self, transfer: &NewTransfer, timestamp: u64) -> Result<(), ResultCode> {
        let ledger = self.storage.ledger_get(transfer.ledger).ok_or(LedgerNotFound)?;
        let requested = transfer.amount.expect("checked by check_transfer_fields");
        let requested = Units::from_decimal(requested, ledger.scale).map_err(amount_code)?;
        let debit = self.storage.account_get(transfer.debit_account_id).ok_or(DebitAccountNotFound)?;
        let credit = self.storage.account_get(transfer.credit_account_id).ok_or(CreditAccountNotFound)?;
        if debit.ledger != credit.ledger {
            return Err(AccountsMustHaveTheSameLedger);
        }
        if debit.ledger != transfer.ledger {
            return Err(TransferMustHaveTheSameLedgerAsAccounts);
        }
        if debit.flags.contains(AccountFlags::CLOSED) {
            return Err(DebitAccountAlreadyClosed);
        }
        if credit.flags.contains(AccountFlags::CLOSED) {
            return Err(CreditAccountAlreadyClosed);
        }
        let amount = clamp_balancing(transfer.flags, requested, &debit, &credit)?;
        let pending = transfer.flags.contains(TransferFlags::PENDING);
        let debit_after = add_debit(&debit, amount, pending)?;
        let credit_after = add_credit(&credit, amount, pending)?;
        let expires_at = match (pending, transfer.timeout_seconds) {
            (true, timeout @ 1..) => Some(deadline(timestamp, timeout).ok_or(OverflowsTimeout)?),
            _ => None,
        };
        check_limits(&debit_after, &credit_after)?;
        self.write_new_transfer(transfer, amount, (&debit, debit_after), (&credit, credit_after), timestamp);
        if pending {
            self.write_pending_status(transfer.id, PendingStatus::Pending);
            if let Some(expires_at) = expires_at {
                self.write_expiry_insert(expires_at, transfer.id);
            }
        }
        Ok(())
    }

    fn write_new_transfer(
        &mut self,
        transfer: &NewTransfer,
        amount: Units,
        (debit, mut debit_after): (&Account, Account),
        (credit, mut credit_after): (&Account, Account),
        timestamp: u64,
    ) {
        if transfer.flags.contains(TransferFlags::CLOSING_DEBIT) {
            debit_after.flags.insert(AccountFlags::CLOSED);
        }
        if transfer.flags.contains(TransferFlags::CLOSING_CREDIT) {
            credit_after.flags.insert(AccountFlags::CLOSED);
        }
        self.write_transfer_insert(&Transfer {
            id: transfer.id,
            debit_account_id: transfer.debit_account_id,
            credit_account_id: transfer.credit_account_id,
            amount,
            pending_id: 0,
            ledger: transfer.ledger,
            code: transfer.code,
            flags: transfer.flags,
            timeout_seconds: transfer.timeout_seconds,
            user_data_128: transfer.user_data_128,
            user_data_64: transfer.user_data_64,
            user_data_32: transfer.user_data_32,
            timestamp,
        });
        self.write_account_update(debit, &debit_after, timestamp);
        self.write_account_update(credit, &credit_after, timestamp);
        self.fingerprint(amount, &debit_after, &credit_after);
    }

    /// Posts or voids a pending transfer.
    fn resolve_pending_transfer(&mut self, transfer: &NewTransfer, timestamp: u64) -> Result<(), ResultCode> {
        let pending = self.storage.transfer_get(transfer.pending_id).ok_or(PendingTransferNotFound)?;
        if !pending.flags.contains(TransferFlags::PENDING) {
            return Err(PendingTransferNotPending);
        }
        same_or_inherited(
            transfer.debit_account_id,
            pending.debit_account_id,
            PendingTransferHasDifferentDebitAccountId,
        )?;
        same_or_inherited(
            transfer.credit_account_id,
            pending.credit_account_id,
            PendingTransferHasDifferentCreditAccountId,
        )?;
        same_or_inherited(transfer.ledger, pending.ledger, PendingTransferHasDifferentLedger)?;
        same_or_inherited(transfer.code, pending.code, PendingTransferHasDifferentCode)?;
        match self.storage.pending_status_get(pending.id).expect("a pending transfer has a status") {
            PendingStatus::Posted { .. } => return Err(PendingTransferAlreadyPosted),
            PendingStatus::Voided { .. } => return Err(PendingTransferAlreadyVoided),
            PendingStatus::Expired { .. } => return Err(PendingTransferExpired),
            // Past its deadline but not yet swept by an expiry batch: as good as expired.
            PendingStatus::Pending if pending.expires_at().is_some_and(|expires_at| expires_at <= timestamp) => {
                return Err(PendingTransferExpired);
            }
            PendingStatus::Pending => {}
        }
        let post = transfer.flags.contains(TransferFlags::POST_PENDING_TRANSFER);
        let amount = match transfer.amount {
            None => pending.amount,
            Some(amount) => {
                let scale = self.storage.ledger_get(pending.ledger).expect("a stored transfer's ledger exists").scale;
                Units::from_decimal(amount, scale).map_err(amount_code)?
            }
        };
        if post && amount > pending.amount {
            return Err(ExceedsPendingTransferAmount);
        }
        if !post && amount != pending.amount {
            return Err(PendingTransferHasDifferentAmount);
        }
        let (debit, credit) = self.accounts_of(&pending);
        let (debit_after, credit_after) = release_pending(&pending, &debit, &credit, post.then_some(amount));
        self.write_resolution(transfer, &pending, amount, (&debit, debit_after), (&credit, credit_after), timestamp);
        Ok(())
    }

    fn write_resolution(
        &mut self,
        transfer: &NewTransfer,
        pending: &Transfer,
        amount: Units,
        (debit, debit_after): (&Account, Account),
        (credit, credit_after): (&Account, Account),
        timestamp: u64,
    ) {
        self.write_transfer_insert(&Transfer {
            id: transfer.id,
            debit_account_id: pending.debit_account_id,
            credit_account_id: pending.credit_account_id,
            amount,
            pending_id: pending.id,
            ledger: pending.ledger,
            code: pending.code,
            flags: transfer.flags,
            timeout_seconds: 0,
            user_data_128: inherited(transfer.user_data_128, pending.user_data_128),
            user_data_64: inherited(transfer.user_data_64, pending.user_data_64),
            user_data_32: inherited(transfer.user_data_32, pending.user_data_32),
            timestamp,
        });
        self.write_account_update(debit, &debit_after, timestamp);
        self.write_account_update(credit, &credit_after, timestamp);
        let status = if transfer.flags.contains(TransferFlags::POST_PENDING_TRANSFER) {
            PendingStatus::Posted { timestamp }
        } else {
            PendingStatus::Voided { timestamp }
        };
        self.write_pending_status(pending.id, status);
        if let Some(expires_at) = pending.expires_at() {
            self.write_expiry_remove(expires_at, pending.id);
        }
        self.fingerprint(amount, &debit_after, &credit_after);
    }

    /// The two accounts of a stored transfer (they always exist: accounts are never removed).
    pub(crate) fn accounts_of(&self, transfer: &Transfer) -> (Account, Account) {
        let account = |id| self.storage.account_get(id).expect("a stored transfer's accounts exist");
        (account(transfer.debit_account_id), account(transfer.credit_account_id))
    }

    /// Adds what a transfer did to the digest: the amount it moved and the balances it left.
    pub(crate) fn fingerprint(&mut self, amount: Units, debit: &Account, credit: &Account) {
        crate::codec::Put::put_u128(self.digest.buffer(), amount.0);
        self.digest.put_account(debit);
        self.digest.put_account(credit);
    }
}

/// A balancing transfer moves at most its amount: as much as the debit account's posted credits
/// cover (`balancing_debit`) and the credit account's posted debits cover (`balancing_credit`).
fn clamp_balancing(
    flags: TransferFlags,
    requested: Units,
    debit: &Account,
    credit: &Account,
) -> Result<Units, ResultCode> {
    let mut amount = requested;
    if flags.contains(TransferFlags::BALANCING_DEBIT) {
        let debits = Units(debit.debits_pending.0 + debit.debits_posted.0);
        amount = amount.min(debit.credits_posted.saturating_sub(debits));
        if amount.is_zero() {
            return Err(ExceedsCredits);
        }
    }
    if flags.contains(TransferFlags::BALANCING_CREDIT) {
        let credits = Units(credit.credits_pending.0 + credit.credits_posted.0);
        amount = amount.min(credit.debits_posted.saturating_sub(credits));
        if amount.is_zero() {
            return Err(ExceedsDebits);
        }
    }
    Ok(amount)
}

fn add_debit(account: &Account, amount: Units, pending: bool) -> Result<Account, ResultCode> {
    let mut after = *account;
    if pending {
        after.debits_pending = account.debits_pending.checked_add(amount).ok_or(OverflowsDebitsPending)?;
    } else {
        after.debits_posted = account.debits_posted.checked_add(amount).ok_or(OverflowsDebitsPosted)?;
    }
    after.debits_pending.checked_add(after.debits_posted).ok_or(OverflowsDebits)?;
    Ok(after)
}

fn add_credit(account: &Account, amount: Units, pending: bool) -> Result<Account, ResultCode> {
    let mut after = *account;
    if pending {
        after.credits_pending = account.credits_pending.checked_add(amount).ok_or(OverflowsCreditsPending)?;
    } else {
        after.credits_posted = account.credits_posted.checked_add(amount).ok_or(OverflowsCreditsPosted)?;
    }
    after.credits_pending.checked_add(after.credits_posted).ok_or(OverflowsCredits)?;
    Ok(after)
}

fn check_limits(debit: &Account, credit: &Account) -> Result<(), ResultCode> {
    let debits = debit.debits_pending.0 + debit.debits_posted.0;
    if debit.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) && debits > debit.credits_posted.0 {
        return Err(ExceedsCredits);
    }
    let credits = credit.credits_pending.0 + credit.credits_posted.0;
    if credit.flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) && credits > credit.debits_posted.0 {
        return Err(ExceedsDebits);
    }
    Ok(())
}

/// Releases a pending transfer's amount from both accounts' pending balances, posting `posted` of it when the
/// release is a post. Voiding (or expiring) a closing transfer reopens what it closed.
///
/// Posting cannot overflow: creation kept `pending + posted` within the maximum and a post moves at
/// most the reserved amount from one to the other.
pub(crate) fn release_pending(
    pending: &Transfer,
    debit: &Account,
    credit: &Account,
    posted: Option<Units>,
) -> (Account, Account) {
    let mut debit_after = *debit;
    let mut credit_after = *credit;
    debit_after.debits_pending = debit.debits_pending.minus(pending.amount);
    credit_after.credits_pending = credit.credits_pending.minus(pending.amount);
    match posted {
        Some(amount) => {
            assert!(amount <= pending.amount);
            debit_after.debits_posted = debit.debits_posted.checked_add(amount).expect("bounded at creation");
            credit_after.credits_posted = credit.credits_posted.checked_add(amount).expect("bounded at creation");
        }
        None => {
            if pending.flags.contains(TransferFlags::CLOSING_DEBIT) {
                debit_after.flags.remove(AccountFlags::CLOSED);
            }
            if pending.flags.contains(TransferFlags::CLOSING_CREDIT) {
                credit_after.flags.remove(AccountFlags::CLOSED);
            }
        }
    }
    (debit_after, credit_after)
}
