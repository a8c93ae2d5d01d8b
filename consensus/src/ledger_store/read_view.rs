//! Read views: one committed state of the ledger, read through one redb read transaction.
//!
//! Owns every read of committed rows (point lookups, scans, the account index's merged rows and
//! runs in order). A view never changes: it must never see the overlay or a commit being written,
//! so a snapshot written from it, or a query answered from it, sees whole batches only.

use std::ops::ControlFlow;

use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable};
use tally_state_machine::registry::Registry;
use tally_state_machine::signed::SeenRequest;
use tally_state_machine::storage::{Direction, StorageRead, TimestampRange, Visit};
use tally_state_machine::{Account, AccountBalance, Ledger, PendingStatus, StateMeta, Transfer, TransferFailure};

use super::account_index::IndexMerge;
use super::encoding::{postings, transfer_blocks, transfer_ids};
use super::schema::*;

/// A consistent, read-only view of one committed state of the ledger (one redb read transaction).
/// It stays valid while the store goes on committing, so a snapshot can be written from it while
/// batches are applied.
#[derive(Debug)]
pub struct LedgerReadView {
    pub(super) handles: ReadHandles,
    pub(super) meta: StateMeta,
    pub(super) consensus: Option<Vec<u8>>,
    pub(super) index_merge: Option<IndexMerge>,
}

impl LedgerReadView {
    pub(crate) fn open(database: &Database) -> LedgerReadView {
        let transaction = fatal(database.begin_read(), "beginning a read");
        let meta_table = fatal(transaction.open_table(META), "opening a table");
        let record = |key: &str| fatal(meta_table.get(key), "reading meta").map(|guard| guard.value().to_vec());
        let meta = record(META_STATE).map_or_else(StateMeta::default, |bytes| decode(&bytes));
        let consensus = record(META_CONSENSUS);
        let index_merge = record(META_INDEX_MERGE).map(|bytes| IndexMerge::decode(&bytes));
        LedgerReadView { handles: ReadHandles::open(&transaction), meta, consensus, index_merge }
    }

    /// The consensus record committed with this state, if any.
    pub fn consensus_state(&self) -> Option<&[u8]> {
        self.consensus.as_deref()
    }
}

/// Read handles on the last committed state.
#[derive(Debug)]
pub(super) struct ReadHandles {
    pub(super) ledgers: ReadOnlyTable<u32, Bytes>,
    pub(super) ledgers_by_time: ReadOnlyTable<u64, u32>,
    pub(super) accounts: ReadOnlyTable<u128, Bytes>,
    pub(super) accounts_by_time: ReadOnlyTable<u64, u128>,
    pub(super) transfer_blocks: ReadOnlyTable<u64, Bytes>,
    pub(super) transfer_id_chunks: ReadOnlyTable<u128, Bytes>,
    pub(super) account_transfer_chunks: ReadOnlyTable<(u128, u64), Bytes>,
    pub(super) failures: ReadOnlyTable<u128, Bytes>,
    pub(super) failures_by_time: ReadOnlyTable<u64, u128>,
    pub(super) pending_statuses: ReadOnlyTable<u128, Bytes>,
    pub(super) expiries: ReadOnlyTable<(u64, u128), ()>,
    pub(super) balances: ReadOnlyTable<(u128, u64), Bytes>,
    pub(super) account_transfer_runs: ReadOnlyTable<u64, Bytes>,
    pub(super) meta: ReadOnlyTable<&'static str, Bytes>,
    pub(super) requests_seen: ReadOnlyTable<(u64, u128), Bytes>,
    pub(super) requests_seen_due: ReadOnlyTable<(u64, u64, u128), ()>,
}

impl ReadHandles {
    pub(super) fn open(transaction: &redb::ReadTransaction) -> ReadHandles {
        let open = "opening a table";
        ReadHandles {
            ledgers: fatal(transaction.open_table(LEDGERS), open),
            ledgers_by_time: fatal(transaction.open_table(LEDGERS_BY_TIME), open),
            accounts: fatal(transaction.open_table(ACCOUNTS), open),
            accounts_by_time: fatal(transaction.open_table(ACCOUNTS_BY_TIME), open),
            transfer_blocks: fatal(transaction.open_table(TRANSFER_BLOCKS), open),
            transfer_id_chunks: fatal(transaction.open_table(TRANSFER_ID_CHUNKS), open),
            account_transfer_chunks: fatal(transaction.open_table(ACCOUNT_TRANSFER_CHUNKS), open),
            failures: fatal(transaction.open_table(FAILURES), open),
            failures_by_time: fatal(transaction.open_table(FAILURES_BY_TIME), open),
            pending_statuses: fatal(transaction.open_table(PENDING_STATUSES), open),
            expiries: fatal(transaction.open_table(EXPIRIES), open),
            balances: fatal(transaction.open_table(BALANCES), open),
            account_transfer_runs: fatal(transaction.open_table(ACCOUNT_TRANSFER_RUNS), open),
            meta: fatal(transaction.open_table(META), open),
            requests_seen: fatal(transaction.open_table(REQUESTS_SEEN), open),
            requests_seen_due: fatal(transaction.open_table(REQUESTS_SEEN_DUE), open),
        }
    }
}

impl LedgerReadView {
    /// The largest transfer or failure id in this state (0 when there is none).
    pub(super) fn ids_max(&self) -> u128 {
        let last_chunk = fatal(self.handles.transfer_id_chunks.last(), "reading the last transfer-id chunk");
        let last_failure = fatal(self.handles.failures.last(), "reading the last failure id");
        let transfer = last_chunk.map_or(0, |(_, chunk)| {
            let entries = transfer_ids::records(chunk.value());
            transfer_ids::decode(entries.last().expect("a stored transfer-id chunk is never empty")).0
        });
        let failure = last_failure.map_or(0, |(id, _)| id.value());
        transfer.max(failure)
    }

    /// The transfer with this timestamp, which an index says exists.
    pub(super) fn transfer_at(&self, timestamp: u64) -> Transfer {
        let block = fatal(self.handles.transfer_blocks.range(..=timestamp), "reading a transfer block")
            .next_back()
            .map(|entry| fatal(entry, "reading a transfer block").1);
        let block = block.expect("an indexed transfer's block exists");
        let encoded = transfer_blocks::find(transfer_blocks::records(block.value()), timestamp);
        decode(encoded.expect("an indexed transfer is in its block"))
    }
}

impl StorageRead for LedgerReadView {
    fn ledger_get(&self, id: u32) -> Option<Ledger> {
        fatal(self.handles.ledgers.get(id), "reading a ledger").map(|guard| decode(guard.value()))
    }

    fn ledgers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Ledger>) {
        let entries = fatal(self.handles.ledgers_by_time.range(range.min..=range.max), "scanning ledgers");
        let _ = scan_range(entries, direction, |_, id| visit(&self.ledger_get(id).expect("indexed ledger exists")));
    }

    fn account_get(&self, id: u128) -> Option<Account> {
        fatal(self.handles.accounts.get(id), "reading an account").map(|guard| decode(guard.value()))
    }

    fn accounts_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Account>) {
        let entries = fatal(self.handles.accounts_by_time.range(range.min..=range.max), "scanning accounts");
        let _ = scan_range(entries, direction, |_, id| visit(&self.account_get(id).expect("indexed account exists")));
    }

    fn transfer_get(&self, id: u128) -> Option<Transfer> {
        let chunk = fatal(self.handles.transfer_id_chunks.range(..=id), "reading a transfer-id chunk")
            .next_back()
            .map(|entry| fatal(entry, "reading a transfer-id chunk").1)?;
        let timestamp = transfer_ids::find(transfer_ids::records(chunk.value()), id)?;
        Some(self.transfer_at(timestamp))
    }

    fn transfers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Transfer>) {
        // The block that holds `range.min` may begin before it.
        let first_block = fatal(self.handles.transfer_blocks.range(..=range.min), "scanning transfers")
            .next_back()
            .map(|entry| fatal(entry, "reading a range").0.value())
            .unwrap_or(range.min);
        let blocks = fatal(self.handles.transfer_blocks.range(first_block..=range.max), "scanning transfers");
        let _ = scan_range(blocks, direction, |_, block| {
            let within = transfer_blocks::within(transfer_blocks::records(block), range);
            let mut visit_encoded = |encoded: &transfer_blocks::Encoded| visit(&decode(encoded));
            match direction {
                Direction::Ascending => within.iter().try_for_each(&mut visit_encoded),
                Direction::Descending => within.iter().rev().try_for_each(&mut visit_encoded),
            }
        });
    }

    fn account_transfers_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<Transfer>,
    ) {
        let mut visit_timestamp = |timestamp: u64| visit(&self.transfer_at(timestamp));
        // Merged postings are all older than the runs' postings: ascending reads the B-tree first,
        // descending reads the runs first.
        let scan_merged = |visit_timestamp: &mut dyn FnMut(u64) -> ControlFlow<()>| {
            let chunks = &self.handles.account_transfer_chunks;
            // The chunk that holds `range.min` may begin before it.
            let first_chunk = fatal(chunks.range((account_id, 0)..=(account_id, range.min)), "scanning an account")
                .next_back()
                .map_or(range.min, |entry| fatal(entry, "reading a range").0.value().1);
            let entries =
                fatal(chunks.range((account_id, first_chunk)..=(account_id, range.max)), "scanning an account");
            scan_range(entries, direction, |_, chunk| {
                let (timestamps, rest) = chunk.as_chunks::<8>();
                assert!(rest.is_empty(), "an account-index chunk of {} bytes is not whole timestamps", chunk.len());
                let timestamp = |bytes: &[u8; 8]| u64::from_le_bytes(*bytes);
                let start = timestamps.partition_point(|bytes| timestamp(bytes) < range.min);
                let end = timestamps.partition_point(|bytes| timestamp(bytes) <= range.max).max(start);
                let mut visit_bytes = |bytes: &[u8; 8]| visit_timestamp(timestamp(bytes));
                match direction {
                    Direction::Ascending => timestamps[start..end].iter().try_for_each(&mut visit_bytes),
                    Direction::Descending => timestamps[start..end].iter().rev().try_for_each(&mut visit_bytes),
                }
            })
        };
        let scan_runs = |visit_timestamp: &mut dyn FnMut(u64) -> ControlFlow<()>| {
            let runs = fatal(self.handles.account_transfer_runs.range::<u64>(..), "scanning account-index runs");
            scan_range(runs, direction, |key, run| {
                if self.index_merge.is_some_and(|merge| merge.merged(key, account_id)) {
                    return ControlFlow::Continue(());
                }
                let matching = postings::Run::parse(run).account_range(account_id, range);
                let mut visit_posting = |bytes: &postings::Timestamp| visit_timestamp(postings::timestamp(bytes));
                match direction {
                    Direction::Ascending => matching.iter().try_for_each(&mut visit_posting),
                    Direction::Descending => matching.iter().rev().try_for_each(&mut visit_posting),
                }
            })
        };
        let _ = match direction {
            Direction::Ascending => match scan_merged(&mut visit_timestamp) {
                ControlFlow::Continue(()) => scan_runs(&mut visit_timestamp),
                stopped => stopped,
            },
            Direction::Descending => match scan_runs(&mut visit_timestamp) {
                ControlFlow::Continue(()) => scan_merged(&mut visit_timestamp),
                stopped => stopped,
            },
        };
    }

    fn transfer_failure_get(&self, id: u128) -> Option<TransferFailure> {
        fatal(self.handles.failures.get(id), "reading a transfer failure").map(|guard| decode(guard.value()))
    }

    fn transfer_failures_scan(&self, visit: Visit<TransferFailure>) {
        let entries = fatal(self.handles.failures_by_time.range::<u64>(..), "scanning transfer failures");
        let _ = scan_range(entries, Direction::Ascending, |_, id| {
            visit(&self.transfer_failure_get(id).expect("indexed failure exists"))
        });
    }

    fn pending_status_get(&self, pending_id: u128) -> Option<PendingStatus> {
        fatal(self.handles.pending_statuses.get(pending_id), "reading a pending status")
            .map(|guard| decode(guard.value()))
    }

    fn expiries_scan(&self, expires_at_max: u64, visit: Visit<(u64, u128)>) {
        let entries = fatal(self.handles.expiries.range(..=(expires_at_max, u128::MAX)), "scanning expiries");
        let _ = scan_range(entries, Direction::Ascending, |expiry, ()| visit(&expiry));
    }

    fn account_balances_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<AccountBalance>,
    ) {
        let bounds = (account_id, range.min)..=(account_id, range.max);
        let entries = fatal(self.handles.balances.range(bounds), "scanning balance history");
        let _ = scan_range(entries, direction, |_, bytes| visit(&decode(bytes)));
    }

    fn meta_get(&self) -> StateMeta {
        self.meta
    }

    fn registry_get(&self) -> Option<Registry> {
        let record = fatal(self.handles.meta.get(META_REGISTRY), "reading the registry");
        record.map(|guard| fatal(Registry::decode(guard.value()), "decoding the stored registry"))
    }

    fn request_seen_get(&self, principal: u64, request_id: u128) -> Option<SeenRequest> {
        let record = fatal(self.handles.requests_seen.get((principal, request_id)), "reading a seen request");
        record.map(|guard| fatal(SeenRequest::decode(guard.value()), "decoding a seen request"))
    }

    fn requests_seen_due_scan(&self, deadline_max: u64, visit: Visit<(u64, u64, u128)>) {
        let bounds = ..=(deadline_max, u64::MAX, u128::MAX);
        let entries = fatal(self.handles.requests_seen_due.range(bounds), "scanning seen requests");
        let _ = scan_range(entries, Direction::Ascending, |due, ()| visit(&due));
    }
}
