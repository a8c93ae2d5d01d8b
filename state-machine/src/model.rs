//! The ledger's records. `New*` types are what a client submits; the others are what the ledger
//! stores, with the fields only the ledger may set (timestamps, balances, resolved amounts).

use rust_decimal::Decimal;

use crate::amount::Units;
use crate::currency::Currency;
use crate::flags::{AccountFlags, TransferFlags};
use crate::result::ResultCode;

/// A request to create a ledger: one currency at one scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewLedger {
    pub id: u32,
    pub currency: Currency,
    /// Decimal places of the ledger's minor unit, `0..=LEDGER_SCALE_MAX`.
    pub scale: u8,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ledger {
    pub id: u32,
    pub currency: Currency,
    pub scale: u8,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    /// Cluster time at which the ledger was created, unique across all records.
    pub timestamp: u64,
}

/// A request to open an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewAccount {
    pub id: u128,
    pub ledger: u32,
    /// The account's type in the bank's chart of accounts.
    pub code: u16,
    pub flags: AccountFlags,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: u128,
    pub ledger: u32,
    pub code: u16,
    pub flags: AccountFlags,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub debits_pending: Units,
    pub debits_posted: Units,
    pub credits_pending: Units,
    pub credits_posted: Units,
    pub timestamp: u64,
}

/// A request to move money, to make a pending transfer, or to post or void one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewTransfer {
    pub id: u128,
    /// For a post or void, 0 means "the pending transfer's"; otherwise it must match it.
    pub debit_account_id: u128,
    /// For a post or void, 0 means "the pending transfer's"; otherwise it must match it.
    pub credit_account_id: u128,
    /// Required, except that a post or void may omit it to mean the pending transfer's whole amount.
    /// For a balancing transfer it is the most that may move.
    pub amount: Option<Decimal>,
    /// The pending transfer that this one posts or voids; 0 otherwise.
    pub pending_id: u128,
    /// For a post or void, 0 means "the pending transfer's"; otherwise it must match it.
    pub ledger: u32,
    /// For a post or void, 0 means "the pending transfer's"; otherwise it must match it.
    pub code: u16,
    pub flags: TransferFlags,
    /// Pending transfers only: seconds after which the pending transfer expires; 0 never expires.
    pub timeout_seconds: u32,
    /// For a post or void, 0 means "the pending transfer's".
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    /// The amount moved (or reserved): for a balancing transfer, after clamping; for a post, what
    /// was posted; for a void, the amount released.
    pub amount: Units,
    pub pending_id: u128,
    pub ledger: u32,
    pub code: u16,
    pub flags: TransferFlags,
    pub timeout_seconds: u32,
    pub user_data_128: u128,
    pub user_data_64: u64,
    pub user_data_32: u32,
    pub timestamp: u64,
}

/// An account's four balances at one moment, kept for accounts with the `history` flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountBalance {
    /// Cluster time of the change that produced these balances.
    pub timestamp: u64,
    pub debits_pending: Units,
    pub debits_posted: Units,
    pub credits_pending: Units,
    pub credits_posted: Units,
}

/// Where a pending transfer stands. Every state but `Pending` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingStatus {
    Pending,
    /// Posted by the transfer with this timestamp.
    Posted {
        timestamp: u64,
    },
    /// Voided by the transfer with this timestamp.
    Voided {
        timestamp: u64,
    },
    /// Released at this cluster time because its timeout passed.
    Expired {
        timestamp: u64,
    },
}

/// A transfer id whose first outcome was a failure that depended on ledger state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferFailure {
    pub id: u128,
    pub code: ResultCode,
    /// Cluster time of the failed event.
    pub timestamp: u64,
}

impl Account {
    pub fn balance(&self, timestamp: u64) -> AccountBalance {
        AccountBalance {
            timestamp,
            debits_pending: self.debits_pending,
            debits_posted: self.debits_posted,
            credits_pending: self.credits_pending,
            credits_posted: self.credits_posted,
        }
    }

    /// The account's limit flag holds for its current balances.
    pub fn within_limits(&self) -> bool {
        let debits = self.debits_pending.0 + self.debits_posted.0;
        let credits = self.credits_pending.0 + self.credits_posted.0;
        let debits_exceed =
            self.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) && debits > self.credits_posted.0;
        let credits_exceed =
            self.flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) && credits > self.debits_posted.0;
        !debits_exceed && !credits_exceed
    }
}

impl Transfer {
    /// The cluster time at which a pending transfer with a timeout expires; `None` for transfers that
    /// never expire. Creation refuses deadlines beyond `u64` (`overflows_timeout`), so a stored
    /// transfer always has a representable one.
    pub fn expires_at(&self) -> Option<u64> {
        if !self.flags.contains(TransferFlags::PENDING) || self.timeout_seconds == 0 {
            return None;
        }
        Some(deadline(self.timestamp, self.timeout_seconds).expect("deadline checked on create"))
    }
}

/// `timestamp + timeout_seconds` in nanoseconds, or `None` past the end of cluster time.
pub fn deadline(timestamp: u64, timeout_seconds: u32) -> Option<u64> {
    let timeout = u64::from(timeout_seconds) * crate::constants::NANOSECONDS_PER_SECOND;
    timestamp.checked_add(timeout)
}

/// State that describes the ledger as a whole, stored with the data it describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateMeta {
    /// Timestamp of the last event applied (0 before the first batch).
    pub timestamp_last: u64,
    /// Batches applied since the ledger was created.
    pub batches_applied: u64,
    /// The running digest after the last batch (all zeros before the first).
    pub digest: [u8; 32],
}
