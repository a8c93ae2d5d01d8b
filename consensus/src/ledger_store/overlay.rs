//! The overlay: the writes of the batch being applied and of the deferred batches after it.
//!
//! Owns the in-memory shape of writes not yet taken by a commit, kept for point reads (hash maps)
//! and for rolling back a linked chain (vectors in insertion order). It must never read or write
//! redb: the store consults it before the committed state, and a commit writes it whole.

use std::collections::{BTreeSet, HashMap};

use foldhash::fast::RandomState;
use tally_state_machine::registry::Registry;
use tally_state_machine::signed::SeenRequest;
use tally_state_machine::{Account, AccountBalance, Ledger, PendingStatus, Transfer, TransferFailure};

pub(super) type Map<K, V> = HashMap<K, V, RandomState>;

/// Writes since the last commit. Hash maps here serve point reads; commits sort what they write.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    pub(super) ledgers: Vec<Ledger>,
    /// The latest value of every account written since the last commit.
    pub(super) accounts: Map<u128, Account>,
    pub(super) accounts_created: Vec<Account>,
    pub(super) transfers: Vec<Transfer>,
    /// Positions in `transfers` by id, kept only once ids are out of order: while every transfer's id
    /// is above the one before (clients' ids are time-ordered), a binary search of `transfers`
    /// finds an id, and each insert saves a hash-map insert.
    pub(super) transfer_positions: Map<u128, usize>,
    pub(super) transfers_out_of_order: bool,
    /// No transfer or failure in the overlay has a larger id (it may be larger than all of them
    /// after a rollback).
    pub(super) ids_max: u128,
    pub(super) failures: Vec<TransferFailure>,
    pub(super) failure_positions: Map<u128, usize>,
    /// `None`: removed.
    pub(super) pending_statuses: Map<u128, Option<PendingStatus>>,
    pub(super) expiries_added: BTreeSet<(u64, u128)>,
    pub(super) expiries_removed: BTreeSet<(u64, u128)>,
    pub(super) balances: Vec<(u128, AccountBalance)>,
    /// The registry, when a change in the overlay wrote it.
    pub(super) registry: Option<Registry>,
    /// Seen requests by `(principal, request id)`; `None`: forgotten.
    pub(super) requests_seen: Map<(u64, u128), Option<SeenRequest>>,
    pub(super) requests_seen_due_added: BTreeSet<(u64, u64, u128)>,
    pub(super) requests_seen_due_removed: BTreeSet<(u64, u64, u128)>,
}

impl Overlay {
    pub(super) fn transfer_position(&self, id: u128) -> Option<usize> {
        if !self.transfers_out_of_order {
            self.transfers.binary_search_by_key(&id, |transfer| transfer.id).ok()
        } else {
            self.transfer_positions.get(&id).copied()
        }
    }

    /// Empties the overlay but keeps its allocations: a batch of 8,190 transfers fills maps and
    /// vectors of a megabyte or more, and allocating them afresh for every batch faulted in new
    /// pages each time.
    pub(super) fn clear(&mut self) {
        self.ledgers.clear();
        self.accounts.clear();
        self.accounts_created.clear();
        self.transfers.clear();
        self.transfer_positions.clear();
        self.transfers_out_of_order = false;
        self.ids_max = 0;
        self.failures.clear();
        self.failure_positions.clear();
        self.pending_statuses.clear();
        self.expiries_added.clear();
        self.expiries_removed.clear();
        self.balances.clear();
        self.registry = None;
        self.requests_seen.clear();
        self.requests_seen_due_added.clear();
        self.requests_seen_due_removed.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ledgers.is_empty()
            && self.accounts.is_empty()
            && self.transfers.is_empty()
            && self.failures.is_empty()
            && self.pending_statuses.is_empty()
            && self.expiries_added.is_empty()
            && self.expiries_removed.is_empty()
            && self.balances.is_empty()
            && self.registry.is_none()
            && self.requests_seen.is_empty()
    }
}
