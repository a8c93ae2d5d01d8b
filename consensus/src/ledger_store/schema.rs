//! The store's redb schema: its tables, the keys of its meta table, and its format version.
//!
//! Owns the names and key/value types of every table, so that a reader and a writer can never
//! disagree on them, and creating, checking and upgrading the format at open. It must never hold
//! ledger rules or caching: what a row means is for the modules that read and write it. The three
//! helpers every module reads rows with live here too: [`fatal`] for a storage error no replica
//! can answer for, [`decode`] for a stored record, [`scan_range`] for a range either way.

use std::fmt::Display;
use std::ops::ControlFlow;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tally_state_machine::codec::Record;
use tally_state_machine::storage::Direction;

pub(super) type Bytes = &'static [u8];

pub(super) const LEDGERS: TableDefinition<u32, Bytes> = TableDefinition::new("ledgers");
pub(super) const LEDGERS_BY_TIME: TableDefinition<u64, u32> = TableDefinition::new("ledgers_by_time");
pub(super) const ACCOUNTS: TableDefinition<u128, Bytes> = TableDefinition::new("accounts");
pub(super) const ACCOUNTS_BY_TIME: TableDefinition<u64, u128> = TableDefinition::new("accounts_by_time");
/// Transfers in blocks of up to [`TRANSFERS_PER_BLOCK`] encoded transfers in timestamp order, keyed by
/// the timestamp of a block's first transfer. One insert per block instead of one per transfer:
/// rows per transfer were a quarter of the store's time.
pub(super) const TRANSFER_BLOCKS: TableDefinition<u64, Bytes> = TableDefinition::new("transfer_blocks");
/// Transfer ids in chunks of up to [`TRANSFER_IDS_PER_CHUNK`] `(id, timestamp)` entries sorted by id,
/// keyed by the chunk's first id; chunks never overlap. A commit rewrites the few chunks its ids fall
/// into instead of inserting one row per transfer: rows per id were a third of the store's time
/// (BENCHMARKS.md), and clients' ids are time-ordered, so a batch's ids almost always extend the
/// last chunk.
pub(super) const TRANSFER_ID_CHUNKS: TableDefinition<u128, Bytes> = TableDefinition::new("transfer_id_chunks");
/// Merged account-index postings: each row holds up to [`TIMESTAMPS_PER_CHUNK`] transfer timestamps of
/// one account, ascending, keyed by the account and its first timestamp. A merge writes one row per
/// account it touches rather than one per posting.
pub(super) const ACCOUNT_TRANSFER_CHUNKS: TableDefinition<(u128, u64), Bytes> =
    TableDefinition::new("account_transfer_chunks");
/// Postings not yet merged into `ACCOUNT_TRANSFER_CHUNKS`: one sorted run per batch, keyed by the timestamp
/// of the batch's first transfer (see [`postings`]).
pub(super) const ACCOUNT_TRANSFER_RUNS: TableDefinition<u64, Bytes> = TableDefinition::new("account_transfer_runs");
pub(super) const FAILURES: TableDefinition<u128, Bytes> = TableDefinition::new("transfer_failures");
pub(super) const FAILURES_BY_TIME: TableDefinition<u64, u128> = TableDefinition::new("transfer_failures_by_time");
pub(super) const PENDING_STATUSES: TableDefinition<u128, Bytes> = TableDefinition::new("pending_statuses");
pub(super) const EXPIRIES: TableDefinition<(u64, u128), ()> = TableDefinition::new("expiries");
pub(super) const BALANCES: TableDefinition<(u128, u64), Bytes> = TableDefinition::new("account_balances");
pub(super) const META: TableDefinition<&str, Bytes> = TableDefinition::new("meta");
/// The window of seen signed requests, by `(principal, request id)`: a `SeenRequest` each.
pub(super) const REQUESTS_SEEN: TableDefinition<(u64, u128), Bytes> = TableDefinition::new("requests_seen");
/// The same requests by `(deadline, principal, request id)`, so that the ledger forgets them in order.
pub(super) const REQUESTS_SEEN_DUE: TableDefinition<(u64, u64, u128), ()> = TableDefinition::new("requests_seen_due");

pub(super) const META_STATE: &str = "state";
/// The consensus layer's record of what the ledger has applied (log id and membership), committed
/// with the batch it describes.
pub(super) const META_CONSENSUS: &str = "consensus";
/// The store's format, checked at open so that a file from another version is refused.
pub(super) const META_FORMAT: &str = "format";
pub(super) const FORMAT_VERSION: &[u8] = b"tally-ledger-store/6";
/// Formats this version opens and upgrades in place: format 5 adds the record of an account-index
/// merge spread over commits ([`META_INDEX_MERGE`]), which a store of format 4 never holds; format
/// 6 the key registry ([`META_REGISTRY`]) and the window of seen requests, which a store of format
/// 5 never holds (`initialise` creates their tables). The upgrade keeps older versions from opening
/// a store whose state they would not see.
pub(super) const FORMATS_UPGRADED: [&[u8]; 2] = [b"tally-ledger-store/4", b"tally-ledger-store/5"];
/// The consensus layer's record of the last checkpoint: the state it names was made durable, so
/// the log up to it may be purged (`raft_state_machine`).
pub(super) const META_CHECKPOINT: &str = "checkpoint";
/// An account-index merge under way: the key of the last run it merges and the first account whose
/// postings in those runs are not merged yet ([`IndexMerge`]).
pub(super) const META_INDEX_MERGE: &str = "index_merge";
/// The key registry of a secured cluster, once a change has written it (`Registry::encode`).
pub(super) const META_REGISTRY: &str = "registry";

/// Creates every table and the format record, once.
pub(super) fn initialise(database: &Database) -> Result<(), String> {
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
            transaction.open_table(REQUESTS_SEEN)?;
            transaction.open_table(REQUESTS_SEEN_DUE)?;
            Ok(())
        })();
        created.map_err(|error| error.to_string())?;
    }
    transaction.commit().map_err(|error| error.to_string())
}

/// Records this version's format, durably, in a store of a format it upgrades.
pub(super) fn upgrade_format(database: &Database) -> Result<(), String> {
    let mut transaction = database.begin_write().map_err(|error| error.to_string())?;
    transaction.set_durability(Durability::Immediate).map_err(|error| error.to_string())?;
    {
        let mut meta = transaction.open_table(META).map_err(|error| error.to_string())?;
        meta.insert(META_FORMAT, FORMAT_VERSION).map_err(|error| error.to_string())?;
    }
    transaction.commit().map_err(|error| error.to_string())
}

pub(super) fn read_meta(database: &Database, key: &str) -> Result<Option<Vec<u8>>, String> {
    let transaction = database.begin_read().map_err(|error| error.to_string())?;
    let meta = transaction.open_table(META).map_err(|error| error.to_string())?;
    let record = meta.get(key).map_err(|error| error.to_string())?;
    Ok(record.map(|guard| guard.value().to_vec()))
}

/// Stops the replica on a storage failure it cannot answer for: the durable log is the source of
/// truth, and the replica re-applies it after a restart.
pub(super) fn fatal<T, E: Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|error| {
        panic!("ledger store: {what} failed: {error}; the replica stops and re-applies its log on restart")
    })
}

pub(super) fn decode<T: Record>(bytes: &[u8]) -> T {
    fatal(T::decode(bytes), "decoding a stored record")
}

/// Runs `visit` over a redb range in either direction, stopping when it breaks.
pub(super) fn scan_range<K: redb::Key + 'static, V: redb::Value + 'static>(
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
