//! The ledger's records as the SDK hands them out, the events it submits with their builders, and
//! their conversion to and from the wire (`tally.v1`). Amounts are exact [`Decimal`]s: they travel
//! as decimal strings and are never rounded on the way.

use std::str::FromStr;

use rust_decimal::Decimal;
use tally_proto::v1 as wire;

use crate::Error;

bitflags::bitflags! {
    /// An account's flags (bits as in `ledger.proto`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct AccountFlags: u32 {
        /// Links this event to the next in the same request: all of them apply or none does.
        const LINKED = 1;
        /// The account's debits may never exceed its credits (an asset the bank must not overdraw).
        const DEBITS_MUST_NOT_EXCEED_CREDITS = 2;
        /// The account's credits may never exceed its debits.
        const CREDITS_MUST_NOT_EXCEED_DEBITS = 4;
        /// Keep the account's balance after every change, for `account_balances`.
        const HISTORY = 8;
        /// Set by the ledger on a closed account (never on a new one).
        const CLOSED = 16;
    }
}

bitflags::bitflags! {
    /// A transfer's flags (bits as in `ledger.proto`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct TransferFlags: u32 {
        /// Links this event to the next in the same request: all of them apply or none does.
        const LINKED = 1;
        /// Makes the transfer pending (two-phase): post or void it later.
        const PENDING = 2;
        /// Posts a pending transfer (all of it, or less).
        const POST_PENDING_TRANSFER = 4;
        /// Voids a pending transfer, releasing its pending amount.
        const VOID_PENDING_TRANSFER = 8;
        /// Moves at most the amount, as much as the debit account's balance allows.
        const BALANCING_DEBIT = 16;
        /// Moves at most the amount, as much as the credit account's balance allows.
        const BALANCING_CREDIT = 32;
        /// Closes the debit account (with `PENDING`: until the transfer is voided).
        const CLOSING_DEBIT = 64;
        /// Closes the credit account (with `PENDING`: until the transfer is voided).
        const CLOSING_CREDIT = 128;
    }
}

/// A ledger to create: one currency, with amounts counted in minor units of `scale` decimals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewLedger {
    /// The ledger id (by convention the ISO 4217 numeric code, such as 978 for EUR).
    pub id: u32,
    /// ISO 4217 alphabetic code, such as `EUR`.
    pub currency: String,
    /// Decimal places of the minor unit (2 for cents), 0..=18.
    pub scale: u32,
    /// Free for the bank: a reference to an external record (0 for none). Indexed for queries.
    pub user_data_128: u128,
    /// Free for the bank: a secondary reference (such as a batch or settlement date). Indexed for queries.
    pub user_data_64: u64,
    /// Free for the bank: a small secondary reference (such as a branch or channel). Indexed for queries.
    pub user_data_32: u32,
}

impl NewLedger {
    /// A ledger for `currency` (ISO 4217) counted in minor units of `scale` decimals.
    pub fn new(id: u32, currency: &str, scale: u32) -> NewLedger {
        NewLedger { id, currency: currency.to_owned(), scale, ..NewLedger::default() }
    }
}

/// An account to create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewAccount {
    /// The account id: non-zero, chosen by the client (see [`crate::new_id`]).
    pub id: u128,
    /// The ledger (and so the currency) this record belongs to.
    pub ledger: u32,
    /// The account's type in the bank's chart of accounts; non-zero.
    pub code: u16,
    /// The account's flags.
    pub flags: AccountFlags,
    /// Free for the bank: a reference to an external record (0 for none). Indexed for queries.
    pub user_data_128: u128,
    /// Free for the bank: a secondary reference (such as a batch or settlement date). Indexed for queries.
    pub user_data_64: u64,
    /// Free for the bank: a small secondary reference (such as a branch or channel). Indexed for queries.
    pub user_data_32: u32,
}

impl NewAccount {
    /// An account in `ledger` with the given type `code` and no flags.
    pub fn new(id: u128, ledger: u32, code: u16) -> NewAccount {
        NewAccount { id, ledger, code, ..NewAccount::default() }
    }

    /// The account may not be overdrawn: its debits never exceed its credits.
    pub fn debits_must_not_exceed_credits(mut self) -> NewAccount {
        self.flags |= AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
        self
    }

    /// The account's credits never exceed its debits (an asset account that must not go negative).
    pub fn credits_must_not_exceed_debits(mut self) -> NewAccount {
        self.flags |= AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
        self
    }

    /// Keep the balance after every change (see [`crate::Client::account_balances`]).
    pub fn history(mut self) -> NewAccount {
        self.flags |= AccountFlags::HISTORY;
        self
    }

    /// Chain this account with the next event of the same request (all or nothing).
    pub fn linked(mut self) -> NewAccount {
        self.flags |= AccountFlags::LINKED;
        self
    }

    /// Sets the three `user_data` fields (the bank's own references).
    pub fn user_data(mut self, user_data_128: u128, user_data_64: u64, user_data_32: u32) -> NewAccount {
        (self.user_data_128, self.user_data_64, self.user_data_32) = (user_data_128, user_data_64, user_data_32);
        self
    }
}

/// A transfer to create. Start from [`NewTransfer::new`], [`NewTransfer::post`] or
/// [`NewTransfer::void`] and add flags with the builder methods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewTransfer {
    /// The transfer id: non-zero, chosen by the client (see [`crate::new_id`]); a retry with the same id never applies twice.
    pub id: u128,
    /// For a post or void, 0 means "the pending transfer's".
    pub debit_account_id: u128,
    /// For a post or void, 0 means "the pending transfer's".
    pub credit_account_id: u128,
    /// Required, except that a post or void may leave it out to mean the pending amount.
    pub amount: Option<Decimal>,
    /// The pending transfer a post or void resolves.
    pub pending_id: u128,
    /// The ledger (and so the currency) this record belongs to.
    pub ledger: u32,
    /// The transfer's reason in the bank's scheme (payment, fee, card capture...); non-zero.
    pub code: u16,
    /// The transfer's flags.
    pub flags: TransferFlags,
    /// Pending transfers only: seconds until the pending transfer expires; 0 never expires.
    pub timeout_seconds: u32,
    /// Free for the bank: a reference to an external record (0 for none). Indexed for queries.
    pub user_data_128: u128,
    /// Free for the bank: a secondary reference (such as a batch or settlement date). Indexed for queries.
    pub user_data_64: u64,
    /// Free for the bank: a small secondary reference (such as a branch or channel). Indexed for queries.
    pub user_data_32: u32,
}

impl NewTransfer {
    /// Moves `amount` from the debit account to the credit account, both in `ledger`.
    pub fn new(
        id: u128,
        debit_account_id: u128,
        credit_account_id: u128,
        amount: Decimal,
        ledger: u32,
        code: u16,
    ) -> Self {
        NewTransfer {
            id,
            debit_account_id,
            credit_account_id,
            amount: Some(amount),
            ledger,
            code,
            ..NewTransfer::default()
        }
    }

    /// Posts the pending transfer `pending_id`: all of it, or [`NewTransfer::amount`] of it.
    pub fn post(id: u128, pending_id: u128) -> NewTransfer {
        NewTransfer { id, pending_id, flags: TransferFlags::POST_PENDING_TRANSFER, ..NewTransfer::default() }
    }

    /// Voids the pending transfer `pending_id`, releasing what it reserved.
    pub fn void(id: u128, pending_id: u128) -> NewTransfer {
        NewTransfer { id, pending_id, flags: TransferFlags::VOID_PENDING_TRANSFER, ..NewTransfer::default() }
    }

    /// Makes the amount pending instead of moving it (two-phase); `timeout_seconds` 0 never expires.
    pub fn pending(mut self, timeout_seconds: u32) -> NewTransfer {
        self.flags |= TransferFlags::PENDING;
        self.timeout_seconds = timeout_seconds;
        self
    }

    /// Sets the amount (for a post: post less than was reserved).
    pub fn amount(mut self, amount: Decimal) -> NewTransfer {
        self.amount = Some(amount);
        self
    }

    /// Chain this transfer with the next event of the same request (all or nothing).
    pub fn linked(mut self) -> NewTransfer {
        self.flags |= TransferFlags::LINKED;
        self
    }

    /// Move at most the amount: as much as the debit account's balance limit allows.
    pub fn balancing_debit(mut self) -> NewTransfer {
        self.flags |= TransferFlags::BALANCING_DEBIT;
        self
    }

    /// Move at most the amount: as much as the credit account's balance limit allows.
    pub fn balancing_credit(mut self) -> NewTransfer {
        self.flags |= TransferFlags::BALANCING_CREDIT;
        self
    }

    /// Close the debit account with this transfer.
    pub fn closing_debit(mut self) -> NewTransfer {
        self.flags |= TransferFlags::CLOSING_DEBIT;
        self
    }

    /// Close the credit account with this transfer.
    pub fn closing_credit(mut self) -> NewTransfer {
        self.flags |= TransferFlags::CLOSING_CREDIT;
        self
    }

    /// Sets the three `user_data` fields (the bank's own references).
    pub fn user_data(mut self, user_data_128: u128, user_data_64: u64, user_data_32: u32) -> NewTransfer {
        (self.user_data_128, self.user_data_64, self.user_data_32) = (user_data_128, user_data_64, user_data_32);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// A ledger as the cluster holds it.
pub struct Ledger {
    /// The ledger id (by convention the ISO 4217 numeric code).
    pub id: u32,
    /// ISO 4217 alphabetic code.
    pub currency: String,
    /// Decimal places of the minor unit.
    pub scale: u32,
    /// Free for the bank: a reference to an external record (0 for none). Indexed for queries.
    pub user_data_128: u128,
    /// Free for the bank: a secondary reference (such as a batch or settlement date). Indexed for queries.
    pub user_data_64: u64,
    /// Free for the bank: a small secondary reference (such as a branch or channel). Indexed for queries.
    pub user_data_32: u32,
    /// Cluster time of creation, nanoseconds since the Unix epoch.
    pub timestamp: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// An account as the ledger holds it, with its four balances.
pub struct Account {
    /// The account id: non-zero, chosen by the client (see [`crate::new_id`]).
    pub id: u128,
    /// The ledger (and so the currency) this record belongs to.
    pub ledger: u32,
    /// The account's type in the bank's chart of accounts; non-zero.
    pub code: u16,
    /// The account's flags.
    pub flags: AccountFlags,
    /// Free for the bank: a reference to an external record (0 for none). Indexed for queries.
    pub user_data_128: u128,
    /// Free for the bank: a secondary reference (such as a batch or settlement date). Indexed for queries.
    pub user_data_64: u64,
    /// Free for the bank: a small secondary reference (such as a branch or channel). Indexed for queries.
    pub user_data_32: u32,
    /// Debits reserved by pending transfers, not yet posted or voided.
    pub debits_pending: Decimal,
    /// Debits that moved money.
    pub debits_posted: Decimal,
    /// Credits reserved by pending transfers, not yet posted or voided.
    pub credits_pending: Decimal,
    /// Credits that moved money.
    pub credits_posted: Decimal,
    /// Cluster time when the ledger applied it, nanoseconds since the Unix epoch (unique per record).
    pub timestamp: u64,
}

impl Account {
    /// Posted credits minus posted debits (what a liability account, such as a customer's, holds).
    pub fn credit_balance(&self) -> Decimal {
        self.credits_posted - self.debits_posted
    }

    /// What the account could still pay out with its pending debits reserved.
    pub fn available_credit_balance(&self) -> Decimal {
        self.credits_posted - self.debits_posted - self.debits_pending
    }
}

/// Where a pending transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingStatus {
    /// Still reserved.
    Pending,
    /// Posted (all of it or less).
    Posted,
    /// Voided: its pending amount was released.
    Voided,
    /// Expired: its timeout passed before a post or void.
    Expired,
}

impl PendingStatus {
    /// The status in lower case, as `tallyctl` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingStatus::Pending => "pending",
            PendingStatus::Posted => "posted",
            PendingStatus::Voided => "voided",
            PendingStatus::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// A transfer as the ledger holds it.
pub struct Transfer {
    /// The transfer id: non-zero, chosen by the client (see [`crate::new_id`]); a retry with the same id never applies twice.
    pub id: u128,
    /// The account debited.
    pub debit_account_id: u128,
    /// The account credited.
    pub credit_account_id: u128,
    /// What moved (for a balancing transfer, after clamping; for a post, what was posted).
    pub amount: Decimal,
    /// For a post or void, the pending transfer it resolved; 0 otherwise.
    pub pending_id: u128,
    /// The ledger (and so the currency) this record belongs to.
    pub ledger: u32,
    /// The transfer's reason in the bank's scheme (payment, fee, card capture...); non-zero.
    pub code: u16,
    /// The transfer's flags.
    pub flags: TransferFlags,
    /// For a pending transfer, the seconds after which it expires (0: never).
    pub timeout_seconds: u32,
    /// Free for the bank: a reference to an external record (0 for none). Indexed for queries.
    pub user_data_128: u128,
    /// Free for the bank: a secondary reference (such as a batch or settlement date). Indexed for queries.
    pub user_data_64: u64,
    /// Free for the bank: a small secondary reference (such as a branch or channel). Indexed for queries.
    pub user_data_32: u32,
    /// Cluster time when the ledger applied it, nanoseconds since the Unix epoch (unique per record).
    pub timestamp: u64,
    /// For pending transfers: where the pending transfer stands.
    pub pending_status: Option<PendingStatus>,
    /// For resolved pending transfers: when (cluster time).
    pub pending_resolved_at: Option<u64>,
}

/// An account's balances after one change (accounts with [`AccountFlags::HISTORY`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountBalance {
    /// Cluster time when the ledger applied it, nanoseconds since the Unix epoch (unique per record).
    pub timestamp: u64,
    /// Debits reserved by pending transfers, not yet posted or voided.
    pub debits_pending: Decimal,
    /// Debits that moved money.
    pub debits_posted: Decimal,
    /// Credits reserved by pending transfers, not yet posted or voided.
    pub credits_pending: Decimal,
    /// Credits that moved money.
    pub credits_posted: Decimal,
}

/// A page of a listing; ask for the next one with [`Window::after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The records of this page, in the order asked.
    pub records: Vec<T>,
    /// Set when the page stopped early: where the next page starts.
    pub cursor: Option<u64>,
}

/// The time window and size of a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The earliest timestamp to include; `None` from the beginning.
    pub timestamp_min: Option<u64>,
    /// The latest timestamp to include; `None` up to now.
    pub timestamp_max: Option<u64>,
    /// Records per page, 1..=8190.
    pub limit: u32,
    /// Newest first.
    pub reversed: bool,
}

impl Default for Window {
    fn default() -> Self {
        Window { timestamp_min: None, timestamp_max: None, limit: 100, reversed: false }
    }
}

impl Window {
    /// The first `limit` records, oldest first.
    pub fn first(limit: u32) -> Window {
        Window { limit, ..Window::default() }
    }

    /// The last `limit` records, newest first.
    pub fn last(limit: u32) -> Window {
        Window { limit, reversed: true, ..Window::default() }
    }

    /// The window of the page after one that ended at `cursor`.
    pub fn after(self, cursor: u64) -> Window {
        if self.reversed {
            Window { timestamp_max: Some(cursor), ..self }
        } else {
            Window { timestamp_min: Some(cursor), ..self }
        }
    }

    pub(crate) fn to_wire(self) -> wire::Window {
        wire::Window {
            timestamp_min: self.timestamp_min,
            timestamp_max: self.timestamp_max,
            limit: self.limit,
            reversed: self.reversed,
        }
    }
}

/// Which of an account's transfers to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountTransfersFilter {
    /// The account whose transfers to list.
    pub account_id: u128,
    /// Include transfers that debit the account.
    pub debits: bool,
    /// Include transfers that credit the account.
    pub credits: bool,
    /// Only transfers with this code.
    pub code: Option<u16>,
    /// The time window and page size.
    pub window: Window,
}

impl AccountTransfersFilter {
    /// Both sides of the account, in `window`.
    pub fn new(account_id: u128, window: Window) -> AccountTransfersFilter {
        AccountTransfersFilter { account_id, debits: true, credits: true, code: None, window }
    }
}

/// Records matching every field set, in `window`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryFilter {
    /// Only records of this ledger.
    pub ledger: Option<u32>,
    /// Only records with this code.
    pub code: Option<u16>,
    /// Only records with this `user_data_128`.
    pub user_data_128: Option<u128>,
    /// Only records with this `user_data_64`.
    pub user_data_64: Option<u64>,
    /// Only records with this `user_data_32`.
    pub user_data_32: Option<u32>,
    /// The time window and page size.
    pub window: Window,
}

pub(crate) fn uint128(value: u128) -> Option<wire::Uint128> {
    #[allow(clippy::cast_possible_truncation, reason = "splitting into halves")]
    Some(wire::Uint128 { high: (value >> 64) as u64, low: value as u64 })
}

pub(crate) fn from_uint128(value: Option<wire::Uint128>) -> u128 {
    value.map_or(0, |value| (u128::from(value.high) << 64) | u128::from(value.low))
}

fn optional_uint128(value: u128) -> Option<wire::Uint128> {
    if value == 0 { None } else { uint128(value) }
}

fn decimal(field: &str, text: &str) -> Result<Decimal, Error> {
    Decimal::from_str(text).map_err(|error| Error::Protocol(format!("{field} {text:?} is not a decimal: {error}")))
}

impl NewLedger {
    pub(crate) fn to_wire(&self) -> wire::NewLedger {
        wire::NewLedger {
            id: self.id,
            currency: self.currency.clone(),
            scale: self.scale,
            user_data_128: optional_uint128(self.user_data_128),
            user_data_64: self.user_data_64,
            user_data_32: self.user_data_32,
        }
    }
}

/// Flags travel in 32 bits but the ledger keeps 16: a replica refuses the whole request for a
/// flag above them.
const FLAG_BITS_MAX: u32 = u16::MAX as u32;

impl NewAccount {
    /// What a replica would refuse in this account before the ledger sees it (the request's other
    /// events with it); `field` names the event.
    pub(crate) fn check(&self, field: &str) -> Result<(), Error> {
        if self.flags.bits() > FLAG_BITS_MAX {
            return Err(Error::InvalidArgument(format!(
                "{field}.flags: {:#x} does not fit in 16 bits",
                self.flags.bits()
            )));
        }
        Ok(())
    }

    pub(crate) fn to_wire(&self) -> wire::NewAccount {
        wire::NewAccount {
            id: uint128(self.id),
            ledger: self.ledger,
            code: u32::from(self.code),
            flags: self.flags.bits(),
            user_data_128: optional_uint128(self.user_data_128),
            user_data_64: self.user_data_64,
            user_data_32: self.user_data_32,
        }
    }
}

impl NewTransfer {
    /// What a replica would refuse in this transfer before the ledger sees it (the request's other
    /// events with it); `field` names the event. A zero amount, or one finer than the ledger's
    /// scale, is the ledger's to refuse with a result code, for this event alone.
    pub(crate) fn check(&self, field: &str) -> Result<(), Error> {
        if self.flags.bits() > FLAG_BITS_MAX {
            return Err(Error::InvalidArgument(format!(
                "{field}.flags: {:#x} does not fit in 16 bits",
                self.flags.bits()
            )));
        }
        if let Some(amount) = self.amount.filter(|amount| amount.is_sign_negative() && !amount.is_zero()) {
            return Err(Error::InvalidArgument(format!("{field}.amount: {amount} is negative")));
        }
        Ok(())
    }

    pub(crate) fn to_wire(&self) -> wire::NewTransfer {
        wire::NewTransfer {
            id: uint128(self.id),
            debit_account_id: optional_uint128(self.debit_account_id),
            credit_account_id: optional_uint128(self.credit_account_id),
            amount: self.amount.map(|amount| amount.to_string()).unwrap_or_default(),
            pending_id: optional_uint128(self.pending_id),
            ledger: self.ledger,
            code: u32::from(self.code),
            flags: self.flags.bits(),
            timeout_seconds: self.timeout_seconds,
            user_data_128: optional_uint128(self.user_data_128),
            user_data_64: self.user_data_64,
            user_data_32: self.user_data_32,
        }
    }
}

fn code(field: &str, value: u32) -> Result<u16, Error> {
    u16::try_from(value).map_err(|_| Error::Protocol(format!("{field} {value} does not fit 16 bits")))
}

impl Ledger {
    pub(crate) fn from_wire(ledger: wire::Ledger) -> Ledger {
        Ledger {
            id: ledger.id,
            currency: ledger.currency,
            scale: ledger.scale,
            user_data_128: from_uint128(ledger.user_data_128),
            user_data_64: ledger.user_data_64,
            user_data_32: ledger.user_data_32,
            timestamp: ledger.timestamp,
        }
    }
}

impl Account {
    pub(crate) fn from_wire(account: wire::Account) -> Result<Account, Error> {
        Ok(Account {
            id: from_uint128(account.id),
            ledger: account.ledger,
            code: code("account code", account.code)?,
            flags: AccountFlags::from_bits_retain(account.flags),
            user_data_128: from_uint128(account.user_data_128),
            user_data_64: account.user_data_64,
            user_data_32: account.user_data_32,
            debits_pending: decimal("debits_pending", &account.debits_pending)?,
            debits_posted: decimal("debits_posted", &account.debits_posted)?,
            credits_pending: decimal("credits_pending", &account.credits_pending)?,
            credits_posted: decimal("credits_posted", &account.credits_posted)?,
            timestamp: account.timestamp,
        })
    }
}

impl Transfer {
    pub(crate) fn from_wire(transfer: wire::Transfer) -> Result<Transfer, Error> {
        let pending_status = match wire::PendingStatus::try_from(transfer.pending_status) {
            Ok(wire::PendingStatus::Pending) => Some(PendingStatus::Pending),
            Ok(wire::PendingStatus::Posted) => Some(PendingStatus::Posted),
            Ok(wire::PendingStatus::Voided) => Some(PendingStatus::Voided),
            Ok(wire::PendingStatus::Expired) => Some(PendingStatus::Expired),
            Ok(wire::PendingStatus::Unspecified) => None,
            Err(_) => return Err(Error::Protocol(format!("unknown pending status {}", transfer.pending_status))),
        };
        Ok(Transfer {
            id: from_uint128(transfer.id),
            debit_account_id: from_uint128(transfer.debit_account_id),
            credit_account_id: from_uint128(transfer.credit_account_id),
            amount: decimal("amount", &transfer.amount)?,
            pending_id: from_uint128(transfer.pending_id),
            ledger: transfer.ledger,
            code: code("transfer code", transfer.code)?,
            flags: TransferFlags::from_bits_retain(transfer.flags),
            timeout_seconds: transfer.timeout_seconds,
            user_data_128: from_uint128(transfer.user_data_128),
            user_data_64: transfer.user_data_64,
            user_data_32: transfer.user_data_32,
            timestamp: transfer.timestamp,
            pending_status,
            pending_resolved_at: (transfer.pending_resolved_at != 0).then_some(transfer.pending_resolved_at),
        })
    }
}

impl AccountBalance {
    pub(crate) fn from_wire(balance: wire::AccountBalance) -> Result<AccountBalance, Error> {
        Ok(AccountBalance {
            timestamp: balance.timestamp,
            debits_pending: decimal("debits_pending", &balance.debits_pending)?,
            debits_posted: decimal("debits_posted", &balance.debits_posted)?,
            credits_pending: decimal("credits_pending", &balance.credits_pending)?,
            credits_posted: decimal("credits_posted", &balance.credits_posted)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_the_flags_the_ledger_expects() {
        let amount = Decimal::new(1250, 2);
        let authorisation = NewTransfer::new(1, 2, 3, amount, 7, 10).pending(3_600);
        assert_eq!(authorisation.flags, TransferFlags::PENDING);
        assert_eq!(authorisation.to_wire().flags, 2);
        assert_eq!(authorisation.to_wire().amount, "12.50");
        assert_eq!(authorisation.timeout_seconds, 3_600);
        let capture = NewTransfer::post(4, 1).amount(Decimal::new(1000, 2));
        let wire = capture.to_wire();
        assert_eq!((wire.flags, from_uint128(wire.pending_id), wire.amount.as_str()), (4, 1, "10.00"));
        assert_eq!(wire.debit_account_id, None, "a post leaves the accounts to the pending transfer");
        assert_eq!(NewTransfer::void(5, 1).to_wire().amount, "", "a void releases the whole pending amount");
        assert_eq!(NewTransfer::new(6, 2, 3, amount, 7, 10).linked().balancing_debit().to_wire().flags, 1 | 16);
        assert_eq!(NewTransfer::new(6, 2, 3, amount, 7, 10).closing_debit().closing_credit().flags.bits(), 64 | 128);
        let account = NewAccount::new(9, 7, 100).debits_must_not_exceed_credits().history().linked();
        assert_eq!(account.to_wire().flags, 2 | 8 | 1);
    }

    #[test]
    fn ids_and_amounts_round_trip_exactly() {
        for id in [1, u128::from(u64::MAX), u128::from(u64::MAX) + 1, u128::MAX - 1] {
            assert_eq!(from_uint128(uint128(id)), id);
        }
        let wire = wire::Transfer {
            id: uint128(5),
            amount: "123456789012345678.91".into(),
            code: 70_000,
            ..wire::Transfer::default()
        };
        let refused = Transfer::from_wire(wire.clone()).unwrap_err();
        assert!(refused.to_string().contains("70000"), "{refused}");
        let transfer = Transfer::from_wire(wire::Transfer { code: 7, ..wire }).unwrap();
        assert_eq!(transfer.amount.to_string(), "123456789012345678.91");
        assert_eq!(transfer.pending_status, None);
    }

    #[test]
    fn windows_page_forwards_and_backwards() {
        assert_eq!(Window::first(10).after(77).timestamp_min, Some(77));
        let back = Window::last(10).after(77);
        assert_eq!((back.timestamp_max, back.timestamp_min, back.reversed), (Some(77), None, true));
    }
}
