//! The in-memory [`Storage`]: append-only vectors in timestamp order plus indexes by id.
//!
//! Timestamps only ever grow, so every "by timestamp" order is plain append order and a range is a
//! binary search. The layout is chosen for the apply path, which touches two accounts and appends
//! one transfer per event:
//! - accounts live in one dense vector, found through a small id → slot hash index, so the two
//!   accounts of a transfer cost two probes of a table that stays in cache;
//! - transfer ids are indexed by a compact hash table of 8-byte slots (position and 32 hash bits;
//!   the id itself is read from the transfer record), a quarter of a map keyed by `u128`. Probing
//!   it for a new id is about one cache miss per transfer at millions of transfers, and the smaller
//!   table keeps those misses off the page-table walks and makes growth cheaper (BENCHMARKS.md has
//!   the figures, and those of an ordered map that was tried and dropped);
//! - per-account transfer lists hold `u32` positions (4 billion transfers per store).
//!
//! Hash maps serve point lookups only and are never iterated, so their randomly seeded order
//! (which resists hash flooding by chosen ids) cannot leak into the ledger's behaviour.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use foldhash::fast::RandomState;

use super::{Direction, Storage, StorageRead, TimestampRange, Visit};
use crate::model::{Account, AccountBalance, Ledger, PendingStatus, StateMeta, Transfer, TransferFailure};
use crate::registry::Registry;
use crate::signed::SeenRequest;

type Map<K, V> = HashMap<K, V, RandomState>;

#[derive(Debug, Default)]
pub struct MemoryStorage {
    ledgers: Vec<Ledger>,
    ledger_positions: Map<u32, usize>,
    /// Accounts in creation order.
    accounts: Vec<AccountSlot>,
    account_positions: Map<u128, u32>,
    transfers: Vec<Transfer>,
    transfer_positions: TransferIndex,
    failures: Vec<TransferFailure>,
    failure_positions: Map<u128, usize>,
    pending_statuses: Map<u128, PendingStatus>,
    expiries: BTreeSet<(u64, u128)>,
    meta: StateMeta,
    registry: Option<Registry>,
    requests_seen: BTreeMap<(u64, u128), SeenRequest>,
    requests_seen_due: BTreeSet<(u64, u64, u128)>,
}

#[derive(Debug)]
struct AccountSlot {
    account: Account,
    /// Positions in `transfers` of the transfers touching this account, ascending.
    transfer_positions: Vec<u32>,
    /// Balance history, ascending by timestamp (accounts flagged `history` only).
    balances: Vec<AccountBalance>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// Reserves room up front, so a replica that knows its size does not pay for rehashing and
    /// vector growth while it applies batches.
    pub fn with_capacity(accounts: usize, transfers: usize) -> MemoryStorage {
        MemoryStorage {
            accounts: Vec::with_capacity(accounts),
            account_positions: Map::with_capacity_and_hasher(accounts, RandomState::default()),
            transfers: Vec::with_capacity(transfers),
            ..MemoryStorage::default()
        }
    }

    #[inline]
    fn slot(&self, id: u128) -> Option<&AccountSlot> {
        self.account_positions.get(&id).map(|position| &self.accounts[*position as usize])
    }

    #[inline]
    fn slot_mut(&mut self, id: u128) -> &mut AccountSlot {
        let position = *self.account_positions.get(&id).expect("account exists");
        &mut self.accounts[position as usize]
    }
}

/// Transfer ids to positions in `transfers`, eight bytes per transfer.
#[derive(Debug, Default)]
struct TransferIndex {
    table: hashbrown::HashTable<IndexSlot>,
    hasher: RandomState,
}

#[derive(Clone, Copy, Debug)]
struct IndexSlot {
    position: u32,
    /// The high half of the id's hash: it places the slot in the table (so growing the table
    /// never reads a transfer) and rules out most non-matching slots without reading one.
    hash_high: u32,
}

impl TransferIndex {
    fn hash_high(&self, id: u128) -> u32 {
        (self.hasher.hash_one(id) >> 32) as u32
    }

    /// The table's hash, rebuilt from the stored 32 bits: the multiplication spreads them over
    /// both the low bits (bucket) and the high bits (the table's 7-bit tag).
    fn table_hash(hash_high: u32) -> u64 {
        u64::from(hash_high).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(hash_high)
    }

    #[inline]
    fn find(&self, id: u128, transfers: &[Transfer]) -> Option<u32> {
        let hash_high = self.hash_high(id);
        let slot = self.table.find(Self::table_hash(hash_high), |slot| {
            slot.hash_high == hash_high && transfers[slot.position as usize].id == id
        })?;
        Some(slot.position)
    }

    #[inline]
    fn insert(&mut self, id: u128, position: u32) {
        let hash_high = self.hash_high(id);
        self.table.insert_unique(Self::table_hash(hash_high), IndexSlot { position, hash_high }, |slot| {
            Self::table_hash(slot.hash_high)
        });
    }

    fn remove(&mut self, id: u128, position: u32) {
        let hash_high = self.hash_high(id);
        let entry = self.table.find_entry(Self::table_hash(hash_high), |slot| slot.position == position);
        entry.expect("removing an indexed transfer").remove();
    }
}

fn position(index: usize) -> u32 {
    u32::try_from(index).expect("the in-memory store holds at most 2^32 records of a kind")
}

/// Visits the items whose timestamp lies in `range`, in the given direction. `items` are sorted by
/// timestamp; `resolve` maps an item (a record, or a position of one) to its record.
fn scan_sorted<'record, T: 'record, I>(
    items: &'record [I],
    timestamp: impl Fn(&I) -> u64,
    range: TimestampRange,
    direction: Direction,
    resolve: impl Fn(&'record I) -> &'record T,
    visit: Visit<T>,
) {
    let start = items.partition_point(|item| timestamp(item) < range.min);
    let end = items.partition_point(|item| timestamp(item) <= range.max);
    if start >= end {
        return;
    }
    let selected = &items[start..end];
    let mut step = |item: &'record I| visit(resolve(item));
    let _ = match direction {
        Direction::Ascending => selected.iter().try_for_each(&mut step),
        Direction::Descending => selected.iter().rev().try_for_each(&mut step),
    };
}

impl StorageRead for MemoryStorage {
    #[inline]
    fn ledger_get(&self, id: u32) -> Option<Ledger> {
        self.ledger_positions.get(&id).map(|position| self.ledgers[*position])
    }

    fn ledgers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Ledger>) {
        scan_sorted(&self.ledgers, |ledger| ledger.timestamp, range, direction, |ledger| ledger, visit);
    }

    #[inline]
    fn account_get(&self, id: u128) -> Option<Account> {
        self.slot(id).map(|slot| slot.account)
    }

    fn accounts_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Account>) {
        scan_sorted(&self.accounts, |slot| slot.account.timestamp, range, direction, |slot| &slot.account, visit);
    }

    #[inline]
    fn transfer_get(&self, id: u128) -> Option<Transfer> {
        self.transfer_positions.find(id, &self.transfers).map(|position| self.transfers[position as usize])
    }

    fn transfers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Transfer>) {
        scan_sorted(&self.transfers, |transfer| transfer.timestamp, range, direction, |transfer| transfer, visit);
    }

    fn account_transfers_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<Transfer>,
    ) {
        let Some(slot) = self.slot(account_id) else { return };
        let transfers = &self.transfers;
        let transfer = |position: &u32| -> &Transfer { &transfers[*position as usize] };
        scan_sorted(
            &slot.transfer_positions,
            |position| transfer(position).timestamp,
            range,
            direction,
            transfer,
            visit,
        );
    }

    #[inline]
    fn transfer_failure_get(&self, id: u128) -> Option<TransferFailure> {
        self.failure_positions.get(&id).map(|position| self.failures[*position])
    }

    fn transfer_failures_scan(&self, visit: Visit<TransferFailure>) {
        let _ = self.failures.iter().try_for_each(visit);
    }

    #[inline]
    fn pending_status_get(&self, pending_id: u128) -> Option<PendingStatus> {
        self.pending_statuses.get(&pending_id).copied()
    }

    fn expiries_scan(&self, expires_at_max: u64, visit: Visit<(u64, u128)>) {
        let _ = self.expiries.range(..=(expires_at_max, u128::MAX)).try_for_each(visit);
    }

    fn account_balances_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<AccountBalance>,
    ) {
        let Some(slot) = self.slot(account_id) else { return };
        scan_sorted(&slot.balances, |balance| balance.timestamp, range, direction, |balance| balance, visit);
    }

    fn meta_get(&self) -> StateMeta {
        self.meta
    }

    fn registry_get(&self) -> Option<Registry> {
        self.registry.clone()
    }

    fn request_seen_get(&self, principal: u64, request_id: u128) -> Option<SeenRequest> {
        self.requests_seen.get(&(principal, request_id)).cloned()
    }

    fn requests_seen_due_scan(&self, deadline_max: u64, visit: Visit<(u64, u64, u128)>) {
        let _ = self.requests_seen_due.range(..=(deadline_max, u64::MAX, u128::MAX)).try_for_each(visit);
    }
}

impl Storage for MemoryStorage {
    fn ledger_insert(&mut self, ledger: &Ledger) {
        let previous = self.ledger_positions.insert(ledger.id, self.ledgers.len());
        assert!(previous.is_none(), "ledger {} inserted twice", ledger.id);
        self.ledgers.push(*ledger);
    }

    fn account_insert(&mut self, account: &Account) {
        let previous = self.account_positions.insert(account.id, position(self.accounts.len()));
        assert!(previous.is_none(), "account {} inserted twice", account.id);
        self.accounts.push(AccountSlot { account: *account, transfer_positions: Vec::new(), balances: Vec::new() });
    }

    #[inline]
    fn account_update(&mut self, account: &Account) {
        self.slot_mut(account.id).account = *account;
    }

    fn account_rollback_insert(&mut self, account: &Account) {
        let removed = self.accounts.pop().expect("rollback of an account that was not inserted");
        assert_eq!(removed.account.id, account.id, "rollback out of insertion order");
        self.account_positions.remove(&account.id);
    }

    #[inline]
    fn transfer_insert(&mut self, transfer: &Transfer) {
        let index = position(self.transfers.len());
        debug_assert!(self.transfer_get(transfer.id).is_none(), "transfer {} inserted twice", transfer.id);
        self.transfer_positions.insert(transfer.id, index);
        self.transfers.push(*transfer);
        self.slot_mut(transfer.debit_account_id).transfer_positions.push(index);
        self.slot_mut(transfer.credit_account_id).transfer_positions.push(index);
    }

    fn transfer_rollback_insert(&mut self, transfer: &Transfer) {
        let removed = self.transfers.pop().expect("rollback of a transfer that was not inserted");
        assert_eq!(removed.id, transfer.id, "rollback out of insertion order");
        let index = position(self.transfers.len());
        self.transfer_positions.remove(transfer.id, index);
        for account_id in [transfer.debit_account_id, transfer.credit_account_id] {
            assert_eq!(self.slot_mut(account_id).transfer_positions.pop(), Some(index));
        }
    }

    fn transfer_failure_insert(&mut self, failure: &TransferFailure) {
        let previous = self.failure_positions.insert(failure.id, self.failures.len());
        assert!(previous.is_none(), "failure of transfer {} recorded twice", failure.id);
        self.failures.push(*failure);
    }

    #[inline]
    fn pending_status_put(&mut self, pending_id: u128, status: PendingStatus) {
        self.pending_statuses.insert(pending_id, status);
    }

    fn pending_status_remove(&mut self, pending_id: u128) {
        self.pending_statuses.remove(&pending_id);
    }

    fn expiry_insert(&mut self, expires_at: u64, pending_id: u128) {
        assert!(self.expiries.insert((expires_at, pending_id)), "expiry indexed twice");
    }

    fn expiry_remove(&mut self, expires_at: u64, pending_id: u128) {
        assert!(self.expiries.remove(&(expires_at, pending_id)), "removing an expiry that is not indexed");
    }

    fn account_balance_insert(&mut self, account_id: u128, balance: &AccountBalance) {
        let slot = self.slot_mut(account_id);
        assert!(slot.balances.last().is_none_or(|last| last.timestamp < balance.timestamp));
        slot.balances.push(*balance);
    }

    fn account_balance_rollback_insert(&mut self, account_id: u128, balance: &AccountBalance) {
        let slot = self.slot_mut(account_id);
        assert_eq!(slot.balances.pop().as_ref(), Some(balance), "rollback out of insertion order");
    }

    fn meta_put(&mut self, meta: &StateMeta) {
        self.meta = *meta;
    }

    fn registry_put(&mut self, registry: &Registry) {
        self.registry = Some(registry.clone());
    }

    fn request_seen_insert(&mut self, seen: &SeenRequest) {
        let previous = self.requests_seen.insert((seen.principal, seen.request_id), seen.clone());
        assert!(previous.is_none(), "a request remembered twice");
        assert!(self.requests_seen_due.insert(seen.due()));
    }

    fn request_seen_remove(&mut self, due: (u64, u64, u128)) {
        let (deadline, principal, request_id) = due;
        let seen = self.requests_seen.remove(&(principal, request_id)).expect("forgetting a request not remembered");
        assert_eq!(seen.deadline, deadline, "forgetting a request under another deadline");
        assert!(self.requests_seen_due.remove(&due));
    }
}
