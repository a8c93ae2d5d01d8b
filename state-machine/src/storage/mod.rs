//! The storage interface the ledger is written against, and its in-memory implementation.
//!
//! The ledger decides *what* to store; a [`Storage`] decides *how*. Every method is a point
//! operation or an ordered scan, so an implementation on disk (the redb store of the consensus
//! crate) maps each one onto a table. Any implementation must pass [`suite::run`].
//!
//! Contracts every implementation keeps:
//! - Scans visit records in ascending timestamp order (descending when `Direction::Descending`),
//!   restricted to the inclusive `TimestampRange`, and stop when the visitor returns `Break`.
//! - Records passed to `*_insert` are new: the ledger checks ids before inserting.
//! - `*_rollback_insert` undoes the most recent insert of that kind; the ledger calls them in
//!   reverse order of insertion when a linked chain fails, and only for records of that chain.
//! - Nothing is visible to a scan in a different order than it was inserted: timestamps arrive
//!   strictly increasing.
//! - A store may buffer a batch's writes until `meta_put`; point reads must see them at once, but
//!   scans need only see written-through data. The ledger never scans while a batch is half
//!   applied, and a restore calls `flush_writes` before it scans.

pub mod memory;
pub mod suite;

use std::ops::ControlFlow;

use crate::model::{Account, AccountBalance, Ledger, PendingStatus, StateMeta, Transfer, TransferFailure};
use crate::registry::Registry;
use crate::signed::SeenRequest;

/// Inclusive bounds on cluster timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampRange {
    pub min: u64,
    pub max: u64,
}

impl TimestampRange {
    pub const ALL: TimestampRange = TimestampRange { min: 0, max: u64::MAX };

    pub fn contains(&self, timestamp: u64) -> bool {
        self.min <= timestamp && timestamp <= self.max
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    Descending,
}

/// A scan's callback: return `ControlFlow::Break(())` to stop early.
pub type Visit<'a, T> = &'a mut dyn FnMut(&T) -> ControlFlow<()>;

/// The reading half of a store: point reads, ordered scans and the meta record. Queries and
/// snapshot writing need only this, so they can run on a consistent read view of a durable store
/// while the ledger keeps applying batches.
pub trait StorageRead {
    fn ledger_get(&self, id: u32) -> Option<Ledger>;
    fn ledgers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Ledger>);

    fn account_get(&self, id: u128) -> Option<Account>;
    fn accounts_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Account>);

    fn transfer_get(&self, id: u128) -> Option<Transfer>;
    fn transfers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Transfer>);
    /// The transfers that debit or credit `account_id`.
    fn account_transfers_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<Transfer>,
    );

    fn transfer_failure_get(&self, id: u128) -> Option<TransferFailure>;
    /// Failures in the order they were recorded (ascending timestamp).
    fn transfer_failures_scan(&self, visit: Visit<TransferFailure>);

    fn pending_status_get(&self, pending_id: u128) -> Option<PendingStatus>;
    /// Deadlines at or before `expires_at_max`, ascending by `(expires_at, pending_id)`; the
    /// visitor gets `(expires_at, pending_id)`.
    fn expiries_scan(&self, expires_at_max: u64, visit: Visit<(u64, u128)>);

    fn account_balances_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<AccountBalance>,
    );

    /// The ledger-wide meta record; all zeros for an empty store.
    fn meta_get(&self) -> StateMeta;

    /// The key registry, once a change has written one (a secured cluster starts from its genesis).
    fn registry_get(&self) -> Option<Registry>;

    /// A signed request (or registry change, under `OPERATORS_PRINCIPAL`) the window remembers.
    fn request_seen_get(&self, principal: u64, request_id: u128) -> Option<SeenRequest>;
    /// Remembered requests with a deadline at or before `deadline_max`, ascending by
    /// `(deadline, principal, request_id)`, which is what the visitor gets.
    fn requests_seen_due_scan(&self, deadline_max: u64, visit: Visit<(u64, u64, u128)>);
}

/// A store the ledger can apply batches to.
pub trait Storage: StorageRead {
    fn ledger_insert(&mut self, ledger: &Ledger);

    fn account_insert(&mut self, account: &Account);
    /// Replaces the balances and flags of an existing account; the other fields never change.
    fn account_update(&mut self, account: &Account);
    fn account_rollback_insert(&mut self, account: &Account);

    /// Stores a transfer and indexes it under both of its accounts.
    fn transfer_insert(&mut self, transfer: &Transfer);
    fn transfer_rollback_insert(&mut self, transfer: &Transfer);

    fn transfer_failure_insert(&mut self, failure: &TransferFailure);

    fn pending_status_put(&mut self, pending_id: u128, status: PendingStatus);
    fn pending_status_remove(&mut self, pending_id: u128);

    /// Indexes a pending transfer by its deadline.
    fn expiry_insert(&mut self, expires_at: u64, pending_id: u128);
    fn expiry_remove(&mut self, expires_at: u64, pending_id: u128);

    /// Appends to the balance history of an account flagged `history`.
    fn account_balance_insert(&mut self, account_id: u128, balance: &AccountBalance);
    fn account_balance_rollback_insert(&mut self, account_id: u128, balance: &AccountBalance);

    /// Called once at the end of every applied batch: an implementation that groups writes into
    /// transactions commits here, so the meta record is stored atomically with the batch's data.
    fn meta_put(&mut self, meta: &StateMeta);

    fn registry_put(&mut self, registry: &Registry);

    /// Remembers a request that is not remembered yet.
    fn request_seen_insert(&mut self, seen: &SeenRequest);
    /// Forgets a remembered request, named by its `SeenRequest::due`.
    fn request_seen_remove(&mut self, due: (u64, u64, u128));

    /// Writes buffered writes through without a meta record, so that scans see them and buffers
    /// stay bounded. Only a restore calls it (its store is discarded if the restore fails).
    fn flush_writes(&mut self) {}
}
