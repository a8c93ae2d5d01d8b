//! The in-memory [`Storage`]: append-only vectors in timestamp order plus hash indexes by id.
//!
//! Timestamps only ever grow, so every "by timestamp" order is plain append order and a range is a
//! binary search. Hash maps serve point lookups only and are never iterated, so their (randomly
//! seeded, hash-flooding resistant) order cannot leak into the ledger's behaviour.

use std::collections::{BTreeSet, HashMap};

use foldhash::fast::RandomState;

use super::{Direction, Storage, TimestampRange, Visit};
use crate::model::{Account, AccountBalance, Ledger, PendingStatus, StateMeta, Transfer, TransferFailure};

type Map<K, V> = HashMap<K, V, RandomState>;

#[derive(Debug, Default)]
pub struct MemoryStorage {
    ledgers: Vec<Ledger>,
    ledger_positions: Map<u32, usize>,
    /// Account ids in creation order.
    account_ids: Vec<u128>,
    accounts: Map<u128, AccountEntry>,
    transfers: Vec<Transfer>,
    transfer_positions: Map<u128, usize>,
    failures: Vec<TransferFailure>,
    failure_positions: Map<u128, usize>,
    pending_statuses: Map<u128, PendingStatus>,
    expiries: BTreeSet<(u64, u128)>,
    meta: StateMeta,
}

#[derive(Debug)]
struct AccountEntry {
    account: Account,
    /// Positions in `transfers` of the transfers touching this account, ascending.
    transfer_positions: Vec<usize>,
    /// Balance history, ascending by timestamp (accounts flagged `history` only).
    balances: Vec<AccountBalance>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// Reserves room up front, so a benchmark or a replica that knows its size does not pay for
    /// rehashing and vector growth while it applies batches.
    pub fn with_capacity(accounts: usize, transfers: usize) -> MemoryStorage {
        MemoryStorage {
            account_ids: Vec::with_capacity(accounts),
            accounts: Map::with_capacity_and_hasher(accounts, RandomState::default()),
            transfers: Vec::with_capacity(transfers),
            transfer_positions: Map::with_capacity_and_hasher(transfers, RandomState::default()),
            ..MemoryStorage::default()
        }
    }
}

/// Visits the items whose timestamp lies in `range`, in the given direction. `items` are sorted by
/// timestamp; `resolve` maps an item (a record, or a position or id of one) to its record.
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

impl Storage for MemoryStorage {
    fn ledger_get(&self, id: u32) -> Option<Ledger> {
        self.ledger_positions.get(&id).map(|position| self.ledgers[*position])
    }

    fn ledger_insert(&mut self, ledger: &Ledger) {
        let previous = self.ledger_positions.insert(ledger.id, self.ledgers.len());
        assert!(previous.is_none(), "ledger {} inserted twice", ledger.id);
        self.ledgers.push(*ledger);
    }

    fn ledgers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Ledger>) {
        scan_sorted(
            &self.ledgers,
            |ledger| ledger.timestamp,
            range,
            direction,
            |ledger| ledger,
            visit,
        );
    }

    fn account_get(&self, id: u128) -> Option<Account> {
        self.accounts.get(&id).map(|entry| entry.account)
    }

    fn account_insert(&mut self, account: &Account) {
        let entry = AccountEntry {
            account: *account,
            transfer_positions: Vec::new(),
            balances: Vec::new(),
        };
        let previous = self.accounts.insert(account.id, entry);
        assert!(previous.is_none(), "account {} inserted twice", account.id);
        self.account_ids.push(account.id);
    }

    fn account_update(&mut self, account: &Account) {
        let entry = self
            .accounts
            .get_mut(&account.id)
            .expect("updating an account that does not exist");
        entry.account = *account;
    }

    fn account_rollback_insert(&mut self, account: &Account) {
        assert_eq!(
            self.account_ids.pop(),
            Some(account.id),
            "rollback out of insertion order"
        );
        self.accounts.remove(&account.id);
    }

    fn accounts_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Account>) {
        let accounts = &self.accounts;
        let account = |id: &u128| -> &Account { &accounts[id].account };
        scan_sorted(
            &self.account_ids,
            |id| account(id).timestamp,
            range,
            direction,
            account,
            visit,
        );
    }

    fn transfer_get(&self, id: u128) -> Option<Transfer> {
        self.transfer_positions
            .get(&id)
            .map(|position| self.transfers[*position])
    }

    fn transfer_insert(&mut self, transfer: &Transfer) {
        let position = self.transfers.len();
        let previous = self.transfer_positions.insert(transfer.id, position);
        assert!(previous.is_none(), "transfer {} inserted twice", transfer.id);
        self.transfers.push(*transfer);
        for account_id in [transfer.debit_account_id, transfer.credit_account_id] {
            let entry = self
                .accounts
                .get_mut(&account_id)
                .expect("transfer references a missing account");
            entry.transfer_positions.push(position);
        }
    }

    fn transfer_rollback_insert(&mut self, transfer: &Transfer) {
        let removed = self
            .transfers
            .pop()
            .expect("rollback of a transfer that was not inserted");
        assert_eq!(removed.id, transfer.id, "rollback out of insertion order");
        self.transfer_positions.remove(&transfer.id);
        for account_id in [transfer.debit_account_id, transfer.credit_account_id] {
            let entry = self
                .accounts
                .get_mut(&account_id)
                .expect("transfer references a missing account");
            assert_eq!(entry.transfer_positions.pop(), Some(self.transfers.len()));
        }
    }

    fn transfers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Transfer>) {
        scan_sorted(
            &self.transfers,
            |transfer| transfer.timestamp,
            range,
            direction,
            |transfer| transfer,
            visit,
        );
    }

    fn account_transfers_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<Transfer>,
    ) {
        let Some(entry) = self.accounts.get(&account_id) else {
            return;
        };
        let transfers = &self.transfers;
        let transfer = |position: &usize| -> &Transfer { &transfers[*position] };
        scan_sorted(
            &entry.transfer_positions,
            |position| transfer(position).timestamp,
            range,
            direction,
            transfer,
            visit,
        );
    }

    fn transfer_failure_get(&self, id: u128) -> Option<TransferFailure> {
        self.failure_positions.get(&id).map(|position| self.failures[*position])
    }

    fn transfer_failure_insert(&mut self, failure: &TransferFailure) {
        let previous = self.failure_positions.insert(failure.id, self.failures.len());
        assert!(previous.is_none(), "failure of transfer {} recorded twice", failure.id);
        self.failures.push(*failure);
    }

    fn transfer_failures_scan(&self, visit: Visit<TransferFailure>) {
        let _ = self.failures.iter().try_for_each(visit);
    }

    fn pending_status_get(&self, pending_id: u128) -> Option<PendingStatus> {
        self.pending_statuses.get(&pending_id).copied()
    }

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
        assert!(
            self.expiries.remove(&(expires_at, pending_id)),
            "removing an expiry that is not indexed"
        );
    }

    fn expiries_scan(&self, expires_at_max: u64, visit: Visit<(u64, u128)>) {
        let _ = self.expiries.range(..=(expires_at_max, u128::MAX)).try_for_each(visit);
    }

    fn account_balance_insert(&mut self, account_id: u128, balance: &AccountBalance) {
        let entry = self
            .accounts
            .get_mut(&account_id)
            .expect("history of a missing account");
        assert!(
            entry
                .balances
                .last()
                .is_none_or(|last| last.timestamp < balance.timestamp)
        );
        entry.balances.push(*balance);
    }

    fn account_balance_rollback_insert(&mut self, account_id: u128, balance: &AccountBalance) {
        let entry = self
            .accounts
            .get_mut(&account_id)
            .expect("history of a missing account");
        assert_eq!(
            entry.balances.pop().as_ref(),
            Some(balance),
            "rollback out of insertion order"
        );
    }

    fn account_balances_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<AccountBalance>,
    ) {
        let Some(entry) = self.accounts.get(&account_id) else {
            return;
        };
        scan_sorted(
            &entry.balances,
            |balance| balance.timestamp,
            range,
            direction,
            |balance| balance,
            visit,
        );
    }

    fn meta_get(&self) -> StateMeta {
        self.meta
    }

    fn meta_put(&mut self, meta: &StateMeta) {
        self.meta = *meta;
    }
}
