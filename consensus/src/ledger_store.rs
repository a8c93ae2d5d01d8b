//! The ledger's durable store: the `Storage` of `tally-state-machine` on redb.
//!
//! A batch's writes collect in an in-memory [`Overlay`]: point reads consult it first, and a failed
//! linked chain rolls back inside it. `meta_put`, called once at the end of every batch, writes the
//! overlay and the meta record in one redb transaction, or, once the owner defers commits
//! ([`RedbLedgerStore::defer_commits`], as every replica does), stages the meta so that a later
//! commit writes the whole batches staged so far with it: either way the data of a batch and the
//! meta that says it was applied become durable together or not at all. Scans read the last committed state
//! through read handles that are refreshed after each commit; the ledger never scans with a batch
//! half applied.
//!
//! An account's transfers are indexed by `(account id, transfer timestamp)`. Writing that index
//! key by key would dirty one B-tree leaf per account a batch touches, which cost about 70% of the
//! store's time (BENCHMARKS.md); instead each batch appends its postings as one sorted *run*, and
//! once enough runs have gathered they are merged into rows of up to 504 timestamps per account,
//! one row per account the merge touches. A merge is spread over the commits that follow, each
//! merging the next accounts ([`INDEX_MERGE_SLICES`]); meanwhile a scan skips, in the runs being
//! merged, the accounts already merged. Every merged posting is older than every posting still in
//! a run a scan reads, so a scan reads the merged rows and then the runs, in order.
//!
//! Commits use `Durability::None` by default: the Raft log is the durable record, and a replica
//! that restarts re-applies the log from the applied index this store recorded. redb keeps such
//! commits in memory until a durable one, so at least every [`DURABLE_COMMIT_INTERVAL`] a commit
//! is made durable (fsync): that bounds what a crash makes the replica re-apply, and lets redb
//! reuse the pages that earlier commits freed. Before the log is purged, the replica makes a
//! *checkpoint* ([`RedbLedgerStore::commit_checkpoint`]): a durable commit, so a crash never takes
//! the store behind a purged log. An I/O error while applying is not something a replica can
//! answer for a client: the store stops the process (fail-stop), and the replica recovers from its
//! log on restart.
//!
//! A replica that defers its commits may also write one off its apply path:
//! [`RedbLedgerStore::begin_commit`] moves the whole batches staged so far out of the overlay into
//! a [`LedgerCommit`], which any thread writes while the store applies more into a fresh overlay.
//! Point reads consult the overlay, then the batches being written, then the committed state,
//! until [`RedbLedgerStore::finish_commit`] hands the written batches to the caches and the view.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt::Display;
use std::ops::{Bound, ControlFlow};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::direct_io::DirectWriteBackend;
use foldhash::fast::RandomState;
use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};
use tally_state_machine::codec::Record;
use tally_state_machine::storage::{Direction, Storage, StorageRead, TimestampRange, Visit};
use tally_state_machine::{Account, AccountBalance, Ledger, PendingStatus, StateMeta, Transfer, TransferFailure};

type Bytes = &'static [u8];

const LEDGERS: TableDefinition<u32, Bytes> = TableDefinition::new("ledgers");
const LEDGERS_BY_TIME: TableDefinition<u64, u32> = TableDefinition::new("ledgers_by_time");
const ACCOUNTS: TableDefinition<u128, Bytes> = TableDefinition::new("accounts");
const ACCOUNTS_BY_TIME: TableDefinition<u64, u128> = TableDefinition::new("accounts_by_time");
/// Transfers in blocks of up to [`TRANSFERS_PER_BLOCK`] encoded transfers in timestamp order, keyed by
/// the timestamp of a block's first transfer. One insert per block instead of one per transfer:
/// rows per transfer were a quarter of the store's time.
const TRANSFER_BLOCKS: TableDefinition<u64, Bytes> = TableDefinition::new("transfer_blocks");
/// Transfer ids in chunks of up to [`TRANSFER_IDS_PER_CHUNK`] `(id, timestamp)` entries sorted by id,
/// keyed by the chunk's first id; chunks never overlap. A commit rewrites the few chunks its ids fall
/// into instead of inserting one row per transfer: rows per id were a third of the store's time
/// (BENCHMARKS.md), and clients' ids are time-ordered, so a batch's ids almost always extend the
/// last chunk.
const TRANSFER_ID_CHUNKS: TableDefinition<u128, Bytes> = TableDefinition::new("transfer_id_chunks");
/// Merged account-index postings: each row holds up to [`TIMESTAMPS_PER_CHUNK`] transfer timestamps of
/// one account, ascending, keyed by the account and its first timestamp. A merge writes one row per
/// account it touches rather than one per posting.
const ACCOUNT_TRANSFER_CHUNKS: TableDefinition<(u128, u64), Bytes> = TableDefinition::new("account_transfer_chunks");
/// Postings not yet merged into `ACCOUNT_TRANSFER_CHUNKS`: one sorted run per batch, keyed by the timestamp
/// of the batch's first transfer (see [`postings`]).
const ACCOUNT_TRANSFER_RUNS: TableDefinition<u64, Bytes> = TableDefinition::new("account_transfer_runs");
const FAILURES: TableDefinition<u128, Bytes> = TableDefinition::new("transfer_failures");
const FAILURES_BY_TIME: TableDefinition<u64, u128> = TableDefinition::new("transfer_failures_by_time");
const PENDING_STATUSES: TableDefinition<u128, Bytes> = TableDefinition::new("pending_statuses");
const EXPIRIES: TableDefinition<(u64, u128), ()> = TableDefinition::new("expiries");
const BALANCES: TableDefinition<(u128, u64), Bytes> = TableDefinition::new("account_balances");
const META: TableDefinition<&str, Bytes> = TableDefinition::new("meta");

const META_STATE: &str = "state";
/// The consensus layer's record of what the ledger has applied (log id and membership), committed
/// with the batch it describes.
const META_CONSENSUS: &str = "consensus";
/// The store's format, checked at open so that a file from another version is refused.
const META_FORMAT: &str = "format";
const FORMAT_VERSION: &[u8] = b"tally-ledger-store/5";
/// Formats this version opens and upgrades in place: format 5 adds the record of an account-index
/// merge spread over commits ([`META_INDEX_MERGE`]), which a store of format 4 never holds. The
/// upgrade keeps older versions from opening a store whose scans need that record.
const FORMATS_UPGRADED: [&[u8]; 1] = [b"tally-ledger-store/4"];
/// The consensus layer's record of the last checkpoint: the state it names was made durable, so
/// the log up to it may be purged (`raft_state_machine`).
const META_CHECKPOINT: &str = "checkpoint";
/// An account-index merge under way: the key of the last run it merges and the first account whose
/// postings in those runs are not merged yet ([`IndexMerge`]).
const META_INDEX_MERGE: &str = "index_merge";

/// The longest a store goes without a durable commit while it is committing.
pub const DURABLE_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Memory redb may use for its page cache, by default.
pub const CACHE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

/// Accounts kept decoded in memory (about 150 bytes each). Every transfer reads two accounts, so
/// keeping them out of the B-tree is the largest saving on the apply path; beyond this many, the
/// rest are read from redb.
pub const ACCOUNTS_CACHED_MAX: usize = 1_000_000;

/// Ledgers kept decoded in memory (a few dozen bytes each); beyond this many, the rest are read
/// from redb.
pub const LEDGERS_CACHED_MAX: usize = 65_536;

/// Timestamps per merged account-index row: 4,032 bytes, so that a full row with its key and redb's
/// leaf header fits one 4 KiB page (512 took an 8 KiB page each).
pub const TIMESTAMPS_PER_CHUNK: usize = 504;

/// Transfers per stored block: 130,944 bytes, so that a block with its key and redb's leaf header
/// fits one 128 KiB page (a block of exactly a power of two takes the next page size up). redb's
/// cost per row is paid once per 1,023 transfers, and a full block is written around the page
/// cache ([`DirectWriteBackend`]) instead of being copied into fresh cache pages. With blocks of
/// 63 (8 KiB pages, buffered) the seven-replica cluster spent 20-28% more CPU per transfer
/// (BENCHMARKS.md). A point read binary-searches one block, which redb caches whole.
pub const TRANSFERS_PER_BLOCK: usize = 1023;

/// Entries per transfer-id chunk: 4,032 bytes, so that a full chunk with its key and redb's leaf
/// header fits one 4 KiB page.
pub const TRANSFER_IDS_PER_CHUNK: usize = 168;

/// Postings (two per transfer) gathered in runs before they are merged into the account index.
/// About 128 full batches (16 MiB of runs). A merge writes one row per account it touches, and
/// each row lands in that account's own B-tree leaf, so a merge rewrites about one 4 KiB leaf per
/// account whatever its size: merging four times less often than at 2^19 took the seven-replica
/// cluster from 129-137 k to 154-162 k transfers/s (BENCHMARKS.md). Merging twice as rarely made
/// each merge longer and the slowest requests slower (BENCHMARKS.md, issue 5, fourth round).
pub const INDEX_MERGE_POSTINGS_DEFAULT: usize = 1 << 21;

/// Runs kept at most, whatever their size: an account's scan binary-searches every run, so small
/// batches must not pile up unmerged.
pub const INDEX_RUNS_MAX: usize = 64;

/// A merge is spread over the commits that follow it, each merging the postings of the next
/// accounts: at least this fraction of the merge, and at least twice what the commit adds, so that
/// merges keep ahead of the runs. A merge made in one commit kept a follower busy for 0.3-3.5 s,
/// and with no merges the seven-replica cluster's batched p99 was 71-87 ms instead of 113-128 ms
/// (BENCHMARKS.md, issue 5, fourth round).
pub const INDEX_MERGE_SLICES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LedgerStoreError {
    #[error("cannot open the ledger store at {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("{path} is not a Tally ledger store of this version (format {found:?})")]
    WrongFormat { path: String, found: String },
}

/// Stops the replica on a storage failure it cannot answer for: the durable log is the source of
/// truth, and the replica re-applies it after a restart.
fn fatal<T, E: Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|error| {
        panic!("ledger store: {what} failed: {error}; the replica stops and re-applies its log on restart")
    })
}

fn decode<T: Record>(bytes: &[u8]) -> T {
    fatal(T::decode(bytes), "decoding a stored record")
}

#[derive(Debug)]
pub struct RedbLedgerStore {
    database: Arc<Database>,
    last_durable_commit: std::time::Instant,
    committed: LedgerReadView,
    overlay: Overlay,
    /// Whole batches handed to a commit that is being written ([`RedbLedgerStore::begin_commit`]):
    /// reads find them here until the commit is finished.
    committing: Option<Arc<Overlay>>,
    /// The meta of the batches in `committing`.
    committing_meta: Option<StateMeta>,
    /// An emptied overlay, kept for its allocations.
    spare: Option<Overlay>,
    /// The consensus record to write with the next commit.
    consensus_staged: Option<Vec<u8>>,
    /// Committed accounts, decoded; holds every account while `accounts_cache_complete`.
    accounts_cache: HashMap<u128, Account, RandomState>,
    accounts_cache_complete: bool,
    /// Committed ledgers (every transfer reads its ledger); holds every ledger while
    /// `ledgers_cache_complete`. Ledgers never change once created.
    ledgers_cache: Map<u32, Ledger>,
    ledgers_cache_complete: bool,
    /// Used only by commits, which may run on another thread.
    index: Arc<Mutex<AccountIndexRuns>>,
    /// The largest id of any committed transfer or recorded transfer failure. Ids made by clients
    /// are time-ordered, so a new transfer's id is almost always above it, and then the ledger's
    /// "does this id exist?" needs no B-tree lookup.
    committed_ids_max: u128,
    /// When set, `meta_put` stages the batch's meta instead of committing, and the owner commits
    /// several whole batches at once with [`RedbLedgerStore::commit_deferred`].
    defer_commits: bool,
    /// The meta of the last whole batch in the overlay, when commits are deferred.
    staged_meta: Option<StateMeta>,
    /// The record of the last checkpoint ([`RedbLedgerStore::commit_checkpoint`]).
    checkpoint: Option<Vec<u8>>,
}

/// An account-index merge under way. The accounts below `next_account` have their postings of the
/// runs up to `last_run` in merged rows already, so scans skip them in those runs; every later run
/// holds later timestamps, so scans still read merged rows first and runs after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexMerge {
    last_run: u64,
    next_account: u128,
}

impl IndexMerge {
    const BYTES: usize = 24;

    fn encode(&self) -> [u8; IndexMerge::BYTES] {
        let mut bytes = [0; IndexMerge::BYTES];
        bytes[..8].copy_from_slice(&self.last_run.to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_account.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> IndexMerge {
        assert_eq!(bytes.len(), IndexMerge::BYTES, "an account-index merge record of {} bytes is corrupt", bytes.len());
        IndexMerge {
            last_run: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            next_account: u128::from_le_bytes(bytes[8..].try_into().expect("16 bytes")),
        }
    }

    /// Whether `account`'s postings in run `run` are in merged rows already.
    fn merged(&self, run: u64, account: u128) -> bool {
        run <= self.last_run && account < self.next_account
    }
}

/// A merge under way, with how many runs and postings it merges (to count off when it ends).
#[derive(Clone, Copy, Debug)]
struct MergeUnderWay {
    merge: IndexMerge,
    runs: usize,
    postings: usize,
}

/// The runs of account-index postings not yet merged, and when to merge them.
#[derive(Debug)]
struct AccountIndexRuns {
    runs: usize,
    postings: usize,
    merge_postings: usize,
    /// `(phase, phases)`: the first merge after the store opened comes after `(phase + 1) /
    /// phases` of `merge_postings` ([`RedbLedgerStore::stagger_index_merges`]).
    first_merge_phase: Option<(usize, usize)>,
    merging: Option<MergeUnderWay>,
    /// The newest run's key: a new run's key must be larger.
    last_key: Option<u64>,
    /// Reused to build a run and to merge runs: `(account id, timestamp)`, sorted as integers
    /// (much cheaper than comparing the 24-byte encodings).
    buffer: Vec<(u128, u64)>,
    /// Reused to encode a run.
    encoded: Vec<u8>,
}

/// Encoded transfers as stored in a block.
mod transfer_blocks {
    use tally_state_machine::codec::{TRANSFER_SIZE, transfer_timestamp};
    use tally_state_machine::storage::TimestampRange;

    pub type Encoded = [u8; TRANSFER_SIZE];

    pub fn records(block: &[u8]) -> &[Encoded] {
        let (records, rest) = block.as_chunks::<TRANSFER_SIZE>();
        assert!(rest.is_empty(), "a transfer block of {} bytes is not whole transfers", block.len());
        records
    }

    pub fn find(block: &[Encoded], timestamp: u64) -> Option<&Encoded> {
        block.binary_search_by_key(&timestamp, transfer_timestamp).ok().map(|position| &block[position])
    }

    pub fn within(block: &[Encoded], range: TimestampRange) -> &[Encoded] {
        let start = block.partition_point(|encoded| transfer_timestamp(encoded) < range.min);
        let end = block.partition_point(|encoded| transfer_timestamp(encoded) <= range.max);
        &block[start..end.max(start)]
    }
}

/// The encoding of transfer-id chunks: each entry is 24 bytes, the transfer id then its timestamp,
/// both big-endian, so byte order is id order.
pub mod transfer_ids {
    pub const ENTRY_BYTES: usize = 24;
    pub type Entry = [u8; ENTRY_BYTES];

    pub fn encode(id: u128, timestamp: u64) -> Entry {
        let mut entry = [0; ENTRY_BYTES];
        entry[..16].copy_from_slice(&id.to_be_bytes());
        entry[16..].copy_from_slice(&timestamp.to_be_bytes());
        entry
    }

    pub fn decode(entry: &Entry) -> (u128, u64) {
        let (id, timestamp) = entry.split_at(16);
        (
            u128::from_be_bytes(id.try_into().expect("16 bytes")),
            u64::from_be_bytes(timestamp.try_into().expect("8 bytes")),
        )
    }

    /// The entries of a stored chunk; a chunk that is not a whole number of entries is corrupt.
    pub fn records(chunk: &[u8]) -> &[Entry] {
        let (records, rest) = chunk.as_chunks::<ENTRY_BYTES>();
        assert!(rest.is_empty(), "a transfer-id chunk of {} bytes is not whole entries", chunk.len());
        records
    }

    /// The timestamp of transfer `id`, if the chunk holds it.
    pub fn find(chunk: &[Entry], id: u128) -> Option<u64> {
        let key = id.to_be_bytes();
        let position = chunk.binary_search_by(|entry| entry[..16].cmp(&key[..])).ok()?;
        Some(decode(&chunk[position]).1)
    }

    /// Splits sorted `entries` into the fewest chunks of at most `per_chunk` (one when they fit),
    /// as even as possible, so that a chunk split by an insert in its middle does not leave a
    /// sliver behind.
    pub fn split(entries: &[(u128, u64)], per_chunk: usize) -> impl Iterator<Item = &[(u128, u64)]> {
        let pieces = entries.len().div_ceil(per_chunk).max(1);
        let (size, larger) = (entries.len() / pieces, entries.len() % pieces);
        let mut rest = entries;
        (0..pieces).map(move |piece| {
            let (taken, left) = rest.split_at(size + usize::from(piece < larger));
            rest = left;
            taken
        })
    }
}

/// The encoding of an account-index run: a directory of the run's accounts, then their timestamps.
///
/// `accounts: u32` (little-endian), then for each account in ascending id order its id (`u128`,
/// big-endian) and the end of its timestamps (`u32`, little-endian: one past its last), then every
/// timestamp (`u64`, little-endian), grouped by account and ascending within each. A lookup
/// binary-searches the directory and then the account's timestamps, in place. An account's id is
/// written once per run rather than once per posting: 8 bytes a posting plus 20 an account, where
/// the earlier `(account, timestamp)` postings took 24, and the runs were a quarter of the bytes the
/// store wrote (BENCHMARKS.md).
pub mod postings {
    use tally_state_machine::storage::TimestampRange;

    pub const DIRECTORY_ENTRY_BYTES: usize = 20;
    pub type DirectoryEntry = [u8; DIRECTORY_ENTRY_BYTES];
    pub type Timestamp = [u8; 8];

    /// Encodes `postings`, sorted by `(account, timestamp)`, into `out` (cleared first).
    pub fn encode(postings: &[(u128, u64)], out: &mut Vec<u8>) {
        out.clear();
        let accounts = postings.chunk_by(|left, right| left.0 == right.0);
        let count = u32::try_from(accounts.clone().count()).expect("fewer than 2^32 accounts in a run");
        out.extend_from_slice(&count.to_le_bytes());
        let mut end = 0_usize;
        for account_postings in accounts {
            end += account_postings.len();
            out.extend_from_slice(&account_postings[0].0.to_be_bytes());
            out.extend_from_slice(&u32::try_from(end).expect("fewer than 2^32 postings in a run").to_le_bytes());
        }
        for (_, timestamp) in postings {
            out.extend_from_slice(&timestamp.to_le_bytes());
        }
    }

    /// A stored run, read in place.
    #[derive(Clone, Copy, Debug)]
    pub struct Run<'a> {
        directory: &'a [DirectoryEntry],
        timestamps: &'a [Timestamp],
    }

    fn account_of(entry: &DirectoryEntry) -> u128 {
        u128::from_be_bytes(entry[..16].try_into().expect("16 bytes"))
    }

    fn end_of(entry: &DirectoryEntry) -> usize {
        u32::from_le_bytes(entry[16..].try_into().expect("4 bytes")) as usize
    }

    pub fn timestamp(bytes: &Timestamp) -> u64 {
        u64::from_le_bytes(*bytes)
    }

    impl<'a> Run<'a> {
        /// Reads a stored run; one whose parts do not add up is corrupt.
        pub fn parse(run: &'a [u8]) -> Run<'a> {
            let (count, rest) = run.split_first_chunk::<4>().expect("an account-index run starts with its count");
            let accounts = u32::from_le_bytes(*count) as usize;
            let (directory, timestamps) = rest.split_at(accounts * DIRECTORY_ENTRY_BYTES);
            let (directory, none) = directory.as_chunks::<DIRECTORY_ENTRY_BYTES>();
            let (timestamps, rest) = timestamps.as_chunks::<8>();
            assert!(none.is_empty() && rest.is_empty(), "an account-index run of {} bytes is corrupt", run.len());
            assert_eq!(directory.last().map_or(0, end_of), timestamps.len(), "an account-index run is corrupt");
            Run { directory, timestamps }
        }

        /// Postings in the run.
        pub fn len(&self) -> usize {
            self.timestamps.len()
        }

        pub fn is_empty(&self) -> bool {
            self.timestamps.is_empty()
        }

        /// The timestamps of `account_id` within `range`, ascending.
        pub fn account_range(&self, account_id: u128, range: TimestampRange) -> &'a [Timestamp] {
            let Ok(position) = self.directory.binary_search_by_key(&account_id, account_of) else { return &[] };
            let timestamps = self.timestamps_at(position);
            let first = timestamps.partition_point(|bytes| timestamp(bytes) < range.min);
            let last = timestamps.partition_point(|bytes| timestamp(bytes) <= range.max).max(first);
            &timestamps[first..last]
        }

        /// The position in the run's directory of its first account from `account` on.
        pub fn position_from(&self, account: u128) -> usize {
            self.directory.partition_point(|entry| account_of(entry) < account)
        }

        /// The account of the `position`th entry of the run's directory, if it has that many.
        pub fn account_at(&self, position: usize) -> Option<u128> {
            self.directory.get(position).map(account_of)
        }

        /// The timestamps of the `position`th account of the run's directory, ascending.
        pub fn timestamps_at(&self, position: usize) -> &'a [Timestamp] {
            let start = if position == 0 { 0 } else { end_of(&self.directory[position - 1]) };
            &self.timestamps[start..end_of(&self.directory[position])]
        }
    }
}

/// A consistent, read-only view of one committed state of the ledger (one redb read transaction).
/// It stays valid while the store goes on committing, so a snapshot can be written from it while
/// batches are applied.
#[derive(Debug)]
pub struct LedgerReadView {
    handles: ReadHandles,
    meta: StateMeta,
    consensus: Option<Vec<u8>>,
    index_merge: Option<IndexMerge>,
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
struct ReadHandles {
    ledgers: ReadOnlyTable<u32, Bytes>,
    ledgers_by_time: ReadOnlyTable<u64, u32>,
    accounts: ReadOnlyTable<u128, Bytes>,
    accounts_by_time: ReadOnlyTable<u64, u128>,
    transfer_blocks: ReadOnlyTable<u64, Bytes>,
    transfer_id_chunks: ReadOnlyTable<u128, Bytes>,
    account_transfer_chunks: ReadOnlyTable<(u128, u64), Bytes>,
    failures: ReadOnlyTable<u128, Bytes>,
    failures_by_time: ReadOnlyTable<u64, u128>,
    pending_statuses: ReadOnlyTable<u128, Bytes>,
    expiries: ReadOnlyTable<(u64, u128), ()>,
    balances: ReadOnlyTable<(u128, u64), Bytes>,
    account_transfer_runs: ReadOnlyTable<u64, Bytes>,
}

impl ReadHandles {
    fn open(transaction: &redb::ReadTransaction) -> ReadHandles {
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
        }
    }
}

type Map<K, V> = HashMap<K, V, RandomState>;

/// Writes since the last commit. Hash maps here serve point reads; commits sort what they write.
#[derive(Debug, Default)]
struct Overlay {
    ledgers: Vec<Ledger>,
    /// The latest value of every account written since the last commit.
    accounts: Map<u128, Account>,
    accounts_created: Vec<Account>,
    transfers: Vec<Transfer>,
    /// Positions in `transfers` by id, kept only once ids are out of order: while every transfer's id
    /// is above the one before (clients' ids are time-ordered), a binary search of `transfers`
    /// finds an id, and each insert saves a hash-map insert.
    transfer_positions: Map<u128, usize>,
    transfers_out_of_order: bool,
    /// No transfer or failure in the overlay has a larger id (it may be larger than all of them
    /// after a rollback).
    ids_max: u128,
    failures: Vec<TransferFailure>,
    failure_positions: Map<u128, usize>,
    /// `None`: removed.
    pending_statuses: Map<u128, Option<PendingStatus>>,
    expiries_added: BTreeSet<(u64, u128)>,
    expiries_removed: BTreeSet<(u64, u128)>,
    balances: Vec<(u128, AccountBalance)>,
}

impl Overlay {
    fn transfer_position(&self, id: u128) -> Option<usize> {
        if !self.transfers_out_of_order {
            self.transfers.binary_search_by_key(&id, |transfer| transfer.id).ok()
        } else {
            self.transfer_positions.get(&id).copied()
        }
    }

    /// Empties the overlay but keeps its allocations: a batch of 8,190 transfers fills maps and
    /// vectors of a megabyte or more, and allocating them afresh for every batch faulted in new
    /// pages each time.
    fn clear(&mut self) {
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
    }

    fn is_empty(&self) -> bool {
        self.ledgers.is_empty()
            && self.accounts.is_empty()
            && self.transfers.is_empty()
            && self.failures.is_empty()
            && self.pending_statuses.is_empty()
            && self.expiries_added.is_empty()
            && self.expiries_removed.is_empty()
            && self.balances.is_empty()
    }
}

impl RedbLedgerStore {
    /// Opens the store at `path`, creating it if it does not exist.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<RedbLedgerStore, LedgerStoreError> {
        let open_error = |detail: String| LedgerStoreError::Open { path: path.display().to_string(), detail };
        let backend = DirectWriteBackend::open(path).map_err(|error| open_error(error.to_string()))?;
        let database = Database::builder()
            .set_cache_size(cache_bytes)
            .create_with_backend(backend)
            .map_err(|error| open_error(error.to_string()))?;
        Self::initialise(&database).map_err(open_error)?;
        let mut format = Self::read_meta(&database, META_FORMAT).map_err(open_error)?.unwrap_or_default();
        if FORMATS_UPGRADED.contains(&format.as_slice()) {
            Self::upgrade_format(&database).map_err(open_error)?;
            format = FORMAT_VERSION.to_vec();
        }
        if format != FORMAT_VERSION {
            let found = String::from_utf8_lossy(&format).into_owned();
            return Err(LedgerStoreError::WrongFormat { path: path.display().to_string(), found });
        }
        let checkpoint = Self::read_meta(&database, META_CHECKPOINT).map_err(open_error)?;
        let committed = LedgerReadView::open(&database);
        let (accounts_cache, accounts_cache_complete) = load_accounts(&committed);
        let (ledgers_cache, ledgers_cache_complete) = load_ledgers(&committed);
        let index = AccountIndexRuns::load(&committed.handles.account_transfer_runs, committed.index_merge);
        let committed_ids_max = committed.ids_max();
        Ok(RedbLedgerStore {
            database: Arc::new(database),
            last_durable_commit: std::time::Instant::now(),
            committed,
            overlay: Overlay::default(),
            committing: None,
            committing_meta: None,
            spare: None,
            consensus_staged: None,
            accounts_cache,
            accounts_cache_complete,
            ledgers_cache,
            ledgers_cache_complete,
            index: Arc::new(Mutex::new(index)),
            committed_ids_max,
            defer_commits: false,
            staged_meta: None,
            checkpoint,
        })
    }

    /// Merges account-index runs once they hold this many postings (default
    /// [`INDEX_MERGE_POSTINGS_DEFAULT`]); tests set it low to exercise merges.
    pub fn set_index_merge_postings(&mut self, postings: usize) {
        assert!(postings > 0, "a merge threshold of zero postings");
        self.index.lock().expect("the index lock is never poisoned").merge_postings = postings;
    }

    /// Makes the first merge after this store opened come after `(phase + 1) / phases` of the
    /// merge threshold, and every later one after the whole threshold. Replicas that share a
    /// host take different phases (their replica ids), so that their merges, which they would
    /// otherwise all make at the same moment since they apply the same transfers, take turns: a
    /// merge writes a row for every account it touches and kept a follower busy for 0.3-3.5 s,
    /// and with every follower merging at once the leader's writes waited for the quorum
    /// (BENCHMARKS.md, issue 5, fourth round).
    pub fn stagger_index_merges(&mut self, phase: usize, phases: usize) {
        assert!(phase < phases, "merge phase {phase} of {phases}");
        let mut index = self.index.lock().expect("the index lock is never poisoned");
        index.first_merge_phase = Some((phase, phases));
    }

    /// Account-index runs not yet merged.
    pub fn index_runs(&self) -> usize {
        self.index.lock().expect("the index lock is never poisoned").runs
    }

    /// Whether an account-index merge is under way (spread over commits, [`INDEX_MERGE_SLICES`]).
    pub fn index_merging(&self) -> bool {
        self.index.lock().expect("the index lock is never poisoned").merging.is_some()
    }

    /// A read view of the last committed state, independent of later commits.
    pub fn read_view(&self) -> LedgerReadView {
        LedgerReadView::open(&self.database)
    }

    /// The database, shared with readers that take their own views.
    pub(crate) fn database(&self) -> Arc<Database> {
        Arc::clone(&self.database)
    }

    /// The consensus record of the last commit.
    pub fn consensus_state(&self) -> Option<&[u8]> {
        self.committed.consensus_state()
    }

    /// Sets the consensus record to commit with the next batch, atomically with its data.
    pub fn stage_consensus_state(&mut self, record: Vec<u8>) {
        self.consensus_staged = Some(record);
    }

    /// Commits a consensus record on its own, for log entries that change no ledger data.
    pub fn commit_consensus_state(&mut self, record: Vec<u8>) {
        // With deferred commits the overlay may hold whole batches (their meta is staged), which
        // commit with the record; otherwise it must be empty.
        assert!(
            self.overlay.is_empty() || self.staged_meta.is_some(),
            "a consensus record alone must not carry half a batch"
        );
        self.consensus_staged = Some(record);
        let meta = self.staged_meta.take();
        self.commit(meta);
    }

    /// From now on, `meta_put` (the end of each batch) stages instead of committing: the owner
    /// calls [`RedbLedgerStore::commit_deferred`] after several batches. Committing the batches of
    /// one apply call together writes each B-tree page once instead of once per batch; scans (which
    /// read committed state) must wait for that commit.
    pub fn defer_commits(&mut self) {
        self.defer_commits = true;
    }

    /// Commits the whole batches staged since the last commit, with the staged consensus record.
    pub fn commit_deferred(&mut self) {
        if let Some(meta) = self.staged_meta.take() {
            self.commit(Some(meta));
        } else {
            assert!(self.overlay.is_empty(), "writes without the end of their batch");
        }
    }

    /// Takes the whole batches staged since the last commit (with the staged consensus record) out
    /// of the overlay, for [`LedgerCommit::write`] to write on any thread while this store applies
    /// more; reads find them in memory until [`RedbLedgerStore::finish_commit`]. `None` when no
    /// batch is staged. One commit at a time: the one under way must be finished first.
    pub fn begin_commit(&mut self) -> Option<LedgerCommit> {
        match self.staged_meta.take() {
            Some(meta) => Some(self.take_commit(Some(meta))),
            None => {
                assert!(self.overlay.is_empty(), "writes without the end of their batch");
                None
            }
        }
    }

    /// Whether a commit was begun and not finished yet.
    pub fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    /// Makes a written commit the store's committed state: its batches move from memory to the
    /// caches and to the read view.
    pub fn finish_commit(&mut self, mut written: WrittenCommit) {
        let committing = self.committing.take().expect("finishing a commit that was begun");
        assert!(Arc::ptr_eq(&committing, &written.overlay), "finishing the commit this store began");
        if let Some(checkpoint) = written.checkpoint.take() {
            self.checkpoint = Some(checkpoint);
            self.last_durable_commit = std::time::Instant::now();
        }
        drop(written);
        let mut overlay = Arc::into_inner(committing).expect("nothing else holds a written commit's batches");
        self.cache_accounts(&overlay);
        self.cache_ledgers(&overlay);
        self.note_committed_ids(&overlay);
        self.committing_meta = None;
        self.committed = LedgerReadView::open(&self.database);
        overlay.clear();
        self.spare = Some(overlay);
    }

    /// The record of the last checkpoint, `None` before the first.
    pub fn checkpoint(&self) -> Option<&[u8]> {
        self.checkpoint.as_deref()
    }

    /// Commits the whole batches waiting, then records the checkpoint that `record_for` makes from
    /// a view of the state they leave, in a durable commit (fsync), which makes every earlier
    /// commit durable too: after a crash the store holds at least the state the checkpoint names,
    /// so the log behind it is no longer needed. Returns that view.
    pub fn commit_checkpoint(&mut self, record_for: impl FnOnce(&LedgerReadView) -> Vec<u8>) -> LedgerReadView {
        let (written, view) = self.begin_checkpoint().write_checkpoint(record_for);
        self.finish_commit(written);
        view
    }

    /// [`RedbLedgerStore::begin_commit`] for a checkpoint: takes the whole batches staged, if any,
    /// into a commit that [`LedgerCommit::write_checkpoint`] writes on any thread while this store
    /// applies more. One commit at a time: the one under way must be finished first.
    pub fn begin_checkpoint(&mut self) -> LedgerCommit {
        let meta = self.staged_meta.take();
        if meta.is_none() {
            assert!(self.overlay.is_empty(), "writes without the end of their batch");
        }
        self.take_commit(meta)
    }

    /// Creates every table and the format record, once.
    fn initialise(database: &Database) -> Result<(), String> {
        let transaction = database.begin_write().map_err(|error| error.to_string())?;
        {
            let mut meta = transaction.open_table(META).map_err(|error| error.to_string())?;
            if meta.get(META_FORMAT).map_err(|error| error.to_string())?.is_none() {
                meta.insert(META_FORMAT, FORMAT_VERSION).map_err(|error| error.to_string())?;
            }
            let created = (|| -> Result<(), redb::TableError> {
                transaction.open_table(LEDGERS)?;
                transaction.open_table(LEDGERS_BY_TIME)?;
                transaction.open_table(ACCOUNTS)?;
                transaction.open_table(ACCOUNTS_BY_TIME)?;
                transaction.open_table(TRANSFER_BLOCKS)?;
                transaction.open_table(TRANSFER_ID_CHUNKS)?;
                transaction.open_table(ACCOUNT_TRANSFER_CHUNKS)?;
                transaction.open_table(FAILURES)?;
                transaction.open_table(FAILURES_BY_TIME)?;
                transaction.open_table(PENDING_STATUSES)?;
                transaction.open_table(EXPIRIES)?;
                transaction.open_table(BALANCES)?;
                transaction.open_table(ACCOUNT_TRANSFER_RUNS)?;
                Ok(())
            })();
            created.map_err(|error| error.to_string())?;
        }
        transaction.commit().map_err(|error| error.to_string())
    }

    /// Records this version's format, durably, in a store of a format it upgrades.
    fn upgrade_format(database: &Database) -> Result<(), String> {
        let mut transaction = database.begin_write().map_err(|error| error.to_string())?;
        transaction.set_durability(Durability::Immediate).map_err(|error| error.to_string())?;
        {
            let mut meta = transaction.open_table(META).map_err(|error| error.to_string())?;
            meta.insert(META_FORMAT, FORMAT_VERSION).map_err(|error| error.to_string())?;
        }
        transaction.commit().map_err(|error| error.to_string())
    }

    fn read_meta(database: &Database, key: &str) -> Result<Option<Vec<u8>>, String> {
        let transaction = database.begin_read().map_err(|error| error.to_string())?;
        let meta = transaction.open_table(META).map_err(|error| error.to_string())?;
        let record = meta.get(key).map_err(|error| error.to_string())?;
        Ok(record.map(|guard| guard.value().to_vec()))
    }

    fn assert_committed(&self) {
        assert!(
            self.overlay.is_empty() && self.committing.is_none(),
            "a scan must not run while a batch is half applied or being committed"
        );
    }

    /// The writes not committed yet, newest first: the overlay, then a commit being written.
    fn uncommitted(&self) -> impl Iterator<Item = &Overlay> {
        std::iter::once(&self.overlay).chain(self.committing.as_deref())
    }

    fn note_committed_ids(&mut self, committed: &Overlay) {
        let transfers = committed.transfers.iter().map(|transfer| transfer.id);
        let failures = committed.failures.iter().map(|failure| failure.id);
        self.committed_ids_max = transfers.chain(failures).fold(self.committed_ids_max, u128::max);
    }

    /// Adds the ledgers just committed to the cache, while it has room.
    fn cache_ledgers(&mut self, committed: &Overlay) {
        for ledger in &committed.ledgers {
            if self.ledgers_cache.len() < LEDGERS_CACHED_MAX {
                self.ledgers_cache.insert(ledger.id, *ledger);
            } else {
                self.ledgers_cache_complete = false;
            }
        }
    }

    /// Puts the accounts just committed in the cache: new ones while it has room, and every
    /// update of one it holds.
    fn cache_accounts(&mut self, committed: &Overlay) {
        for (id, account) in &committed.accounts {
            if self.accounts_cache.len() < ACCOUNTS_CACHED_MAX || self.accounts_cache.contains_key(id) {
                self.accounts_cache.insert(*id, *account);
            } else {
                self.accounts_cache_complete = false;
            }
        }
    }

    /// Writes the overlay (and the meta record, when given) in one transaction, here and now.
    fn commit(&mut self, meta: Option<StateMeta>) {
        let written = self.take_commit(meta).write();
        self.finish_commit(written);
    }

    /// Moves the overlay (with `meta` and the staged consensus record) into a commit to write.
    fn take_commit(&mut self, meta: Option<StateMeta>) -> LedgerCommit {
        assert!(self.committing.is_none(), "one commit at a time: finish the one under way first");
        let durability = if self.last_durable_commit.elapsed() >= DURABLE_COMMIT_INTERVAL {
            self.last_durable_commit = std::time::Instant::now();
            Durability::Immediate
        } else {
            Durability::None
        };
        let emptied = self.spare.take().unwrap_or_default();
        let overlay = Arc::new(std::mem::replace(&mut self.overlay, emptied));
        self.committing = Some(Arc::clone(&overlay));
        self.committing_meta = meta;
        LedgerCommit {
            database: Arc::clone(&self.database),
            overlay,
            meta,
            consensus: self.consensus_staged.take(),
            durability,
            index: Arc::clone(&self.index),
        }
    }
}

/// Whole batches taken out of a store's overlay to be written in one transaction, on any thread,
/// while the store applies more ([`RedbLedgerStore::begin_commit`]).
#[derive(Debug)]
pub struct LedgerCommit {
    database: Arc<Database>,
    overlay: Arc<Overlay>,
    meta: Option<StateMeta>,
    consensus: Option<Vec<u8>>,
    durability: Durability,
    index: Arc<Mutex<AccountIndexRuns>>,
}

/// A [`LedgerCommit`] written and committed, for its store to finish
/// ([`RedbLedgerStore::finish_commit`]).
#[derive(Debug)]
pub struct WrittenCommit {
    overlay: Arc<Overlay>,
    /// The checkpoint record it made durable, if it was a checkpoint.
    checkpoint: Option<Vec<u8>>,
}

impl LedgerCommit {
    /// Writes the batches and commits them. A store that cannot write stops the replica
    /// (fail-stop): the panic names what failed.
    pub fn write(self) -> WrittenCommit {
        let mut transaction = fatal(self.database.begin_write(), "beginning a write");
        fatal(transaction.set_durability(self.durability), "setting durability");
        let mut index = self.index.lock().expect("the index lock is never poisoned");
        let written =
            write_overlay(&transaction, &self.overlay, self.meta.as_ref(), self.consensus.as_deref(), &mut index);
        fatal(written, "writing a batch");
        drop(index);
        fatal(transaction.commit(), "committing a batch");
        WrittenCommit { overlay: self.overlay, checkpoint: None }
    }

    /// Writes the batches, then records the checkpoint that `record_for` makes from a view of
    /// exactly the state they leave, in a durable commit (fsync) that makes them durable too.
    /// Returns the written commit and that view. No other commit can come between the two: the
    /// store begins the next only once this one is finished.
    pub fn write_checkpoint(
        self,
        record_for: impl FnOnce(&LedgerReadView) -> Vec<u8>,
    ) -> (WrittenCommit, LedgerReadView) {
        let database = Arc::clone(&self.database);
        // The checkpoint's own commit below makes this one durable as well: one fsync.
        let batches = LedgerCommit { durability: Durability::None, ..self };
        let mut written = batches.write();
        let view = LedgerReadView::open(&database);
        let checkpoint = record_for(&view);
        let mut transaction = fatal(database.begin_write(), "beginning a checkpoint");
        fatal(transaction.set_durability(Durability::Immediate), "setting durability");
        {
            let mut meta = fatal(transaction.open_table(META), "opening a table");
            fatal(meta.insert(META_CHECKPOINT, checkpoint.as_slice()), "writing a checkpoint");
        }
        fatal(transaction.commit(), "committing a checkpoint");
        written.checkpoint = Some(checkpoint);
        (written, view)
    }
}

/// Decodes up to `LEDGERS_CACHED_MAX` ledgers; says whether that was all of them.
fn load_ledgers(view: &LedgerReadView) -> (Map<u32, Ledger>, bool) {
    load_cache(
        LEDGERS_CACHED_MAX,
        |ledger: &Ledger| ledger.id,
        |visit| {
            view.ledgers_scan(TimestampRange::ALL, Direction::Ascending, visit);
        },
    )
}

/// Decodes up to `ACCOUNTS_CACHED_MAX` accounts; says whether that was all of them.
fn load_accounts(view: &LedgerReadView) -> (Map<u128, Account>, bool) {
    load_cache(
        ACCOUNTS_CACHED_MAX,
        |account: &Account| account.id,
        |visit| {
            view.accounts_scan(TimestampRange::ALL, Direction::Ascending, visit);
        },
    )
}

/// Collects up to `limit` of the records `scan` visits, by `key`; says whether that was all of them.
fn load_cache<K: std::hash::Hash + Eq, V: Copy>(
    limit: usize,
    key: impl Fn(&V) -> K,
    scan: impl FnOnce(Visit<V>),
) -> (Map<K, V>, bool) {
    let mut cache = Map::default();
    let mut complete = true;
    scan(&mut |record: &V| {
        if cache.len() == limit {
            complete = false;
            return ControlFlow::Break(());
        }
        cache.insert(key(record), *record);
        ControlFlow::Continue(())
    });
    (cache, complete)
}

/// Encodes records into one reused buffer, so writing a batch allocates nothing per record.
#[derive(Default)]
struct Encoder {
    buffer: Vec<u8>,
}

impl Encoder {
    fn bytes<T: Record>(&mut self, record: &T) -> &[u8] {
        self.buffer.clear();
        record.encode(&mut self.buffer);
        &self.buffer
    }
}

fn write_overlay(
    transaction: &redb::WriteTransaction,
    overlay: &Overlay,
    meta: Option<&StateMeta>,
    consensus: Option<&[u8]>,
    index: &mut AccountIndexRuns,
) -> Result<(), redb::Error> {
    let mut encoder = Encoder::default();
    let mut ledgers = transaction.open_table(LEDGERS)?;
    let mut ledgers_by_time = transaction.open_table(LEDGERS_BY_TIME)?;
    for ledger in &overlay.ledgers {
        ledgers.insert(ledger.id, encoder.bytes(ledger))?;
        ledgers_by_time.insert(ledger.timestamp, ledger.id)?;
    }
    let mut accounts_by_time = transaction.open_table(ACCOUNTS_BY_TIME)?;
    for account in &overlay.accounts_created {
        accounts_by_time.insert(account.timestamp, account.id)?;
    }
    // Sorted, so that redb writes in key order (faster) and the file does not depend on the
    // overlay's hash order.
    let mut accounts: Vec<&Account> = overlay.accounts.values().collect();
    accounts.sort_unstable_by_key(|account| account.id);
    let mut accounts_table = transaction.open_table(ACCOUNTS)?;
    for account in accounts {
        accounts_table.insert(account.id, encoder.bytes(account))?;
    }
    let mut transfer_blocks = transaction.open_table(TRANSFER_BLOCKS)?;
    for block in overlay.transfers.chunks(TRANSFERS_PER_BLOCK) {
        encoder.buffer.clear();
        block.iter().for_each(|transfer| transfer.encode(&mut encoder.buffer));
        transfer_blocks.insert(block[0].timestamp, encoder.buffer.as_slice())?;
    }
    write_transfer_ids(transaction, &overlay.transfers)?;
    index.append(transaction, &overlay.transfers)?;
    let mut failures = transaction.open_table(FAILURES)?;
    let mut failures_by_time = transaction.open_table(FAILURES_BY_TIME)?;
    for failure in &overlay.failures {
        failures.insert(failure.id, encoder.bytes(failure))?;
        failures_by_time.insert(failure.timestamp, failure.id)?;
    }
    let mut statuses: Vec<_> = overlay.pending_statuses.iter().collect();
    statuses.sort_unstable_by_key(|(id, _)| **id);
    let mut pending_statuses = transaction.open_table(PENDING_STATUSES)?;
    for (id, status) in statuses {
        match status {
            Some(status) => pending_statuses.insert(*id, encoder.bytes(status))?,
            None => pending_statuses.remove(*id)?,
        };
    }
    let mut expiries = transaction.open_table(EXPIRIES)?;
    for expiry in &overlay.expiries_removed {
        expiries.remove(*expiry)?;
    }
    for expiry in &overlay.expiries_added {
        expiries.insert(*expiry, ())?;
    }
    let mut balances = transaction.open_table(BALANCES)?;
    for (account_id, balance) in &overlay.balances {
        balances.insert((*account_id, balance.timestamp), encoder.bytes(balance))?;
    }
    let mut meta_table = transaction.open_table(META)?;
    if let Some(meta) = meta {
        meta_table.insert(META_STATE, encoder.bytes(meta))?;
    }
    if let Some(consensus) = consensus {
        meta_table.insert(META_CONSENSUS, consensus)?;
    }
    Ok(())
}

/// Adds the ids of `transfers` (none of them stored yet) to the transfer-id chunks. Ids in order
/// extend the last chunk and start new ones; an id that falls inside an existing chunk's range is
/// merged into that chunk, which is split if it outgrows [`TRANSFER_IDS_PER_CHUNK`].
fn write_transfer_ids(transaction: &redb::WriteTransaction, transfers: &[Transfer]) -> Result<(), redb::Error> {
    let mut entries: Vec<(u128, u64)> = transfers.iter().map(|transfer| (transfer.id, transfer.timestamp)).collect();
    if !entries.is_sorted_by_key(|entry| entry.0) {
        entries.sort_unstable_by_key(|entry| entry.0);
    }
    let mut table = transaction.open_table(TRANSFER_ID_CHUNKS)?;
    let mut merged: Vec<(u128, u64)> = Vec::new();
    let mut encoded: Vec<u8> = Vec::with_capacity(TRANSFER_IDS_PER_CHUNK * transfer_ids::ENTRY_BYTES);
    let mut rest = entries.as_slice();
    while let Some(&(first_id, _)) = rest.first() {
        // The chunk these ids join: the last one that starts at or below the first of them, or the
        // very first chunk when they all start above it.
        let target = match table.range(..=first_id)?.next_back() {
            Some(entry) => Some(entry?.0.value()),
            None => table.first()?.map(|(key, _)| key.value()),
        };
        // It takes every id below the start of the chunk after it.
        let next_start = match target {
            Some(key) => {
                table.range((Bound::Excluded(key), Bound::Unbounded))?.next().transpose()?.map(|(next, _)| next.value())
            }
            None => None,
        };
        let taken = next_start.map_or(rest.len(), |next| rest.partition_point(|entry| entry.0 < next));
        let (joining, later) = rest.split_at(taken);
        rest = later;
        merged.clear();
        if let Some(key) = target {
            let guard = table.get(key)?.expect("the chunk just found exists");
            let stored = transfer_ids::records(guard.value());
            let last_stored = transfer_ids::decode(stored.last().expect("a stored transfer-id chunk is never empty")).0;
            if stored.len() < TRANSFER_IDS_PER_CHUNK || joining[0].0 < last_stored {
                merged.extend(stored.iter().map(transfer_ids::decode));
                drop(guard);
                table.remove(key)?;
            }
            // A full chunk that every new id follows stays as it is.
        }
        let stored = merged.len();
        merged.extend_from_slice(joining);
        if stored > 0 && joining[0].0 < merged[stored - 1].0 {
            merged.sort_unstable_by_key(|entry| entry.0);
        }
        assert!(merged.windows(2).all(|pair| pair[0].0 < pair[1].0), "a transfer id stored twice");
        for piece in transfer_ids::split(&merged, TRANSFER_IDS_PER_CHUNK) {
            encoded.clear();
            piece.iter().for_each(|(id, timestamp)| encoded.extend_from_slice(&transfer_ids::encode(*id, *timestamp)));
            table.insert(piece[0].0, encoded.as_slice())?;
        }
    }
    Ok(())
}

impl AccountIndexRuns {
    fn load(runs_table: &ReadOnlyTable<u64, Bytes>, merge: Option<IndexMerge>) -> AccountIndexRuns {
        let mut index = AccountIndexRuns {
            runs: 0,
            postings: 0,
            merge_postings: INDEX_MERGE_POSTINGS_DEFAULT,
            first_merge_phase: None,
            merging: merge.map(|merge| MergeUnderWay { merge, runs: 0, postings: 0 }),
            last_key: None,
            buffer: Vec::new(),
            encoded: Vec::new(),
        };
        let entries = fatal(runs_table.range::<u64>(..), "scanning account-index runs");
        let _ = scan_range(entries, Direction::Ascending, |key, run| {
            let postings = postings::Run::parse(run).len();
            index.runs += 1;
            index.postings += postings;
            index.last_key = Some(key);
            if let Some(merging) = &mut index.merging
                && key <= merging.merge.last_run
            {
                merging.runs += 1;
                merging.postings += postings;
            }
            ControlFlow::Continue(())
        });
        index
    }

    /// Writes the postings of a batch's transfers as one run. Once the runs have grown past their
    /// limits, a merge of all of them begins, and this and the following commits each merge the
    /// postings of the next accounts in them ([`INDEX_MERGE_SLICES`]); the runs at its limit, a
    /// merge finishes at once.
    fn append(&mut self, transaction: &redb::WriteTransaction, transfers: &[Transfer]) -> Result<(), redb::Error> {
        let Some(first) = transfers.first() else { return Ok(()) };
        let key = first.timestamp;
        assert!(self.last_key.is_none_or(|last| last < key), "account-index runs out of timestamp order");
        self.buffer.clear();
        for transfer in transfers {
            self.buffer.push((transfer.debit_account_id, transfer.timestamp));
            self.buffer.push((transfer.credit_account_id, transfer.timestamp));
        }
        self.buffer.sort_unstable();
        postings::encode(&self.buffer, &mut self.encoded);
        let mut runs_table = transaction.open_table(ACCOUNT_TRANSFER_RUNS)?;
        runs_table.insert(key, self.encoded.as_slice())?;
        self.runs += 1;
        self.postings += self.buffer.len();
        self.last_key = Some(key);
        let mut merging = match self.merging {
            Some(merging) => merging,
            None => {
                let threshold = match self.first_merge_phase {
                    Some((phase, phases)) => (self.merge_postings / phases * (phase + 1)).max(1),
                    None => self.merge_postings,
                };
                if self.postings < threshold && self.runs < INDEX_RUNS_MAX {
                    return Ok(());
                }
                let merge = IndexMerge { last_run: key, next_account: 0 };
                MergeUnderWay { merge, runs: self.runs, postings: self.postings }
            }
        };
        let budget = if self.runs >= INDEX_RUNS_MAX {
            usize::MAX
        } else {
            (merging.postings / INDEX_MERGE_SLICES).max(2 * self.buffer.len())
        };
        let next_account = merge_slice(transaction, &runs_table, merging.merge, budget)?;
        let mut meta = transaction.open_table(META)?;
        match next_account {
            Some(next_account) => {
                merging.merge.next_account = next_account;
                meta.insert(META_INDEX_MERGE, merging.merge.encode().as_slice())?;
                self.merging = Some(merging);
            }
            None => {
                meta.remove(META_INDEX_MERGE)?;
                runs_table.retain(|run, _| run > merging.merge.last_run)?;
                self.runs -= merging.runs;
                self.postings -= merging.postings;
                self.merging = None;
                self.first_merge_phase = None;
            }
        }
        Ok(())
    }
}

/// Merges into rows the postings that the runs up to `merge.last_run` hold for the accounts from
/// `merge.next_account` on, account by account, until about `budget` postings are merged; returns
/// the first account left, `None` once every account is merged. Each run is sorted by account, and
/// every run's timestamps are later than those of the run before it, so an account's timestamps
/// taken run after run are in order: the runs' account directories are walked together, and no
/// posting is sorted or decoded (sorting 2 M postings took 0.1-0.5 s of a merge, BENCHMARKS.md).
fn merge_slice(
    transaction: &redb::WriteTransaction,
    runs_table: &redb::Table<'_, u64, Bytes>,
    merge: IndexMerge,
    budget: usize,
) -> Result<Option<u128>, redb::Error> {
    let stored =
        runs_table.range(..=merge.last_run)?.map(|entry| entry.map(|(_, run)| run)).collect::<Result<Vec<_>, _>>()?;
    let runs: Vec<postings::Run<'_>> = stored.iter().map(|run| postings::Run::parse(run.value())).collect();
    let mut positions: Vec<usize> = runs.iter().map(|run| run.position_from(merge.next_account)).collect();
    // The next account of each run, smallest first; ties in run order.
    let mut heads: BinaryHeap<Reverse<(u128, usize)>> = runs
        .iter()
        .enumerate()
        .filter_map(|(run, postings)| postings.account_at(positions[run]).map(|account| Reverse((account, run))))
        .collect();
    let mut chunks = transaction.open_table(ACCOUNT_TRANSFER_CHUNKS)?;
    let mut timestamps: Vec<u8> = Vec::new();
    let mut merged = 0_usize;
    while let Some(Reverse((account, _))) = heads.peek().copied() {
        if merged >= budget {
            return Ok(Some(account));
        }
        timestamps.clear();
        while let Some(&Reverse((next, run))) = heads.peek()
            && next == account
        {
            heads.pop();
            timestamps.extend_from_slice(runs[run].timestamps_at(positions[run]).as_flattened());
            positions[run] += 1;
            if let Some(following) = runs[run].account_at(positions[run]) {
                heads.push(Reverse((following, run)));
            }
        }
        merged += timestamps.len() / 8;
        for piece in timestamps.chunks(TIMESTAMPS_PER_CHUNK * 8) {
            let first = u64::from_le_bytes(piece[..8].try_into().expect("a whole timestamp"));
            chunks.insert((account, first), piece)?;
        }
    }
    Ok(None)
}

/// Runs `visit` over a redb range in either direction, stopping when it breaks.
fn scan_range<K: redb::Key + 'static, V: redb::Value + 'static>(
    range: redb::Range<'static, K, V>,
    direction: Direction,
    mut visit: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let mut step = |entry: Result<(redb::AccessGuard<'_, K>, redb::AccessGuard<'_, V>), redb::StorageError>| {
        let (key, value) = fatal(entry, "reading a range");
        visit(key.value(), value.value())
    };
    match direction {
        Direction::Ascending => range.into_iter().try_for_each(&mut step),
        Direction::Descending => range.rev().try_for_each(&mut step),
    }
}

impl StorageRead for RedbLedgerStore {
    fn ledger_get(&self, id: u32) -> Option<Ledger> {
        let found = self
            .ledgers_cache
            .get(&id)
            .or_else(|| self.uncommitted().flat_map(|overlay| overlay.ledgers.iter()).find(|ledger| ledger.id == id));
        if let Some(ledger) = found {
            return Some(*ledger);
        }
        if self.ledgers_cache_complete { None } else { self.committed.ledger_get(id) }
    }

    fn ledgers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Ledger>) {
        self.assert_committed();
        self.committed.ledgers_scan(range, direction, visit);
    }

    fn account_get(&self, id: u128) -> Option<Account> {
        let uncommitted = match &self.committing {
            None => self.overlay.accounts.get(&id),
            Some(committing) => self.overlay.accounts.get(&id).or_else(|| committing.accounts.get(&id)),
        };
        if let Some(account) = uncommitted.or_else(|| self.accounts_cache.get(&id)) {
            return Some(*account);
        }
        if self.accounts_cache_complete { None } else { self.committed.account_get(id) }
    }

    fn accounts_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Account>) {
        self.assert_committed();
        self.committed.accounts_scan(range, direction, visit);
    }

    fn transfer_get(&self, id: u128) -> Option<Transfer> {
        if self.uncommitted().all(|overlay| id > overlay.ids_max) && id > self.committed_ids_max {
            return None;
        }
        for overlay in self.uncommitted() {
            if let Some(position) = overlay.transfer_position(id) {
                return Some(overlay.transfers[position]);
            }
        }
        if id > self.committed_ids_max { None } else { self.committed.transfer_get(id) }
    }

    fn transfers_scan(&self, range: TimestampRange, direction: Direction, visit: Visit<Transfer>) {
        self.assert_committed();
        self.committed.transfers_scan(range, direction, visit);
    }

    fn account_transfers_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<Transfer>,
    ) {
        self.assert_committed();
        self.committed.account_transfers_scan(account_id, range, direction, visit);
    }

    fn transfer_failure_get(&self, id: u128) -> Option<TransferFailure> {
        if self.uncommitted().all(|overlay| id > overlay.ids_max) && id > self.committed_ids_max {
            return None;
        }
        for overlay in self.uncommitted() {
            if let Some(position) = overlay.failure_positions.get(&id) {
                return Some(overlay.failures[*position]);
            }
        }
        if id > self.committed_ids_max { None } else { self.committed.transfer_failure_get(id) }
    }

    fn transfer_failures_scan(&self, visit: Visit<TransferFailure>) {
        self.assert_committed();
        self.committed.transfer_failures_scan(visit);
    }

    fn pending_status_get(&self, pending_id: u128) -> Option<PendingStatus> {
        match self.uncommitted().find_map(|overlay| overlay.pending_statuses.get(&pending_id)) {
            Some(status) => *status,
            None => self.committed.pending_status_get(pending_id),
        }
    }

    fn expiries_scan(&self, expires_at_max: u64, visit: Visit<(u64, u128)>) {
        self.assert_committed();
        self.committed.expiries_scan(expires_at_max, visit);
    }

    fn account_balances_scan(
        &self,
        account_id: u128,
        range: TimestampRange,
        direction: Direction,
        visit: Visit<AccountBalance>,
    ) {
        self.assert_committed();
        self.committed.account_balances_scan(account_id, range, direction, visit);
    }

    fn meta_get(&self) -> StateMeta {
        self.staged_meta.or(self.committing_meta).unwrap_or(self.committed.meta)
    }
}

impl LedgerReadView {
    /// The largest transfer or failure id in this state (0 when there is none).
    fn ids_max(&self) -> u128 {
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
    fn transfer_at(&self, timestamp: u64) -> Transfer {
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
}

impl Storage for RedbLedgerStore {
    fn ledger_insert(&mut self, ledger: &Ledger) {
        self.overlay.ledgers.push(*ledger);
    }

    fn account_insert(&mut self, account: &Account) {
        self.overlay.accounts.insert(account.id, *account);
        self.overlay.accounts_created.push(*account);
    }

    fn account_update(&mut self, account: &Account) {
        self.overlay.accounts.insert(account.id, *account);
    }

    fn account_rollback_insert(&mut self, account: &Account) {
        let removed = self.overlay.accounts_created.pop().expect("rollback of an account that was not inserted");
        assert_eq!(removed.id, account.id, "rollback out of insertion order");
        self.overlay.accounts.remove(&account.id);
    }

    fn transfer_insert(&mut self, transfer: &Transfer) {
        let overlay = &mut self.overlay;
        if !overlay.transfers_out_of_order && overlay.transfers.last().is_some_and(|last| last.id >= transfer.id) {
            overlay.transfers_out_of_order = true;
            let positions = overlay.transfers.iter().enumerate().map(|(position, stored)| (stored.id, position));
            overlay.transfer_positions.extend(positions);
        }
        if overlay.transfers_out_of_order {
            overlay.transfer_positions.insert(transfer.id, overlay.transfers.len());
        }
        overlay.transfers.push(*transfer);
        overlay.ids_max = overlay.ids_max.max(transfer.id);
    }

    fn transfer_rollback_insert(&mut self, transfer: &Transfer) {
        let removed = self.overlay.transfers.pop().expect("rollback of a transfer that was not inserted");
        assert_eq!(removed.id, transfer.id, "rollback out of insertion order");
        if self.overlay.transfers_out_of_order {
            self.overlay.transfer_positions.remove(&transfer.id);
        }
    }

    fn transfer_failure_insert(&mut self, failure: &TransferFailure) {
        self.overlay.failure_positions.insert(failure.id, self.overlay.failures.len());
        self.overlay.ids_max = self.overlay.ids_max.max(failure.id);
        self.overlay.failures.push(*failure);
    }

    fn pending_status_put(&mut self, pending_id: u128, status: PendingStatus) {
        self.overlay.pending_statuses.insert(pending_id, Some(status));
    }

    fn pending_status_remove(&mut self, pending_id: u128) {
        self.overlay.pending_statuses.insert(pending_id, None);
    }

    fn expiry_insert(&mut self, expires_at: u64, pending_id: u128) {
        let expiry = (expires_at, pending_id);
        if !self.overlay.expiries_removed.remove(&expiry) {
            self.overlay.expiries_added.insert(expiry);
        }
    }

    fn expiry_remove(&mut self, expires_at: u64, pending_id: u128) {
        let expiry = (expires_at, pending_id);
        if !self.overlay.expiries_added.remove(&expiry) {
            self.overlay.expiries_removed.insert(expiry);
        }
    }

    fn account_balance_insert(&mut self, account_id: u128, balance: &AccountBalance) {
        self.overlay.balances.push((account_id, *balance));
    }

    fn account_balance_rollback_insert(&mut self, account_id: u128, balance: &AccountBalance) {
        let removed = self.overlay.balances.pop();
        assert_eq!(removed, Some((account_id, *balance)), "rollback out of insertion order");
    }

    fn meta_put(&mut self, meta: &StateMeta) {
        if self.defer_commits {
            self.staged_meta = Some(*meta);
            return;
        }
        self.commit(Some(*meta));
        debug_assert_eq!(self.committed.meta, *meta);
    }

    fn flush_writes(&mut self) {
        if !self.overlay.is_empty() {
            self.commit(None);
        }
    }
}
