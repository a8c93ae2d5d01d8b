//! The Raft log and vote on redb.
//!
//! Every append and every vote is committed with `Durability::Immediate` (fsync) before openraft is
//! told it is done, so nothing that depends on it (an acknowledgement to the leader, a vote
//! granted) leaves the node before it is on disk. The log lives in its own redb file: redb admits
//! one writer at a time per file, and the log's small fsynced appends must not queue behind the
//! ledger's large batch commits.
//!
//! The commit index is the exception: openraft may lose it (it then re-learns it from the leader),
//! so it is kept in memory and written in the next append's transaction. Its own transaction per
//! commit, even without fsync, was redb's whole commit (eight page writes) once more per entry.
//!
//! Purging records the purge point durably and returns; a background thread then deletes the
//! entries behind it a few at a time. redb reads every page it deletes, and a purge after a
//! checkpoint covers hundreds of 1 MiB entries written around the page cache: deleted in one
//! transaction, they held the log's only writer (and openraft's core, which awaits `purge`) for
//! about two seconds on every replica at once, and the cluster stopped (BENCHMARKS.md). Readers
//! never see an entry at or below the purge point, deleted yet or not; after a crash the deletion
//! resumes from the recorded point.

#![allow(
    clippy::result_large_err,
    reason = "helpers return openraft's StorageError, the type its storage traits require"
)]

use std::fmt::{Debug, Display};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::direct_io::DirectWriteBackend;
use crate::type_config::{Entry, TypeConfig};
use crate::types::{LogIdOf, NodeId, StorageError, decode, encode};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");

/// The log's page cache by default. The leader reads recent entries back to send them to
/// followers, so the cache holds the last few dozen batches; redb's own default (1 GiB per file)
/// made every replica's memory grow by the log's whole size.
pub const LOG_CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// Entries the background purge deletes per transaction (at most ~1 MiB each): few enough that an
/// append waits milliseconds for the writer, not seconds.
const PURGE_ENTRIES_PER_TRANSACTION: u64 = 8;
/// The pace of the background purge, in bytes of entries deleted per second. redb reads every page
/// it deletes: deleting 512 MiB of entries at full speed, even in the background, still stalled the
/// cluster at each checkpoint (all seven replicas read at once, and appends fsync meanwhile); paced
/// like this it did not (BENCHMARKS.md). A purge of 512 MiB then takes 16 s, and the log grows by
/// 512 MiB in about 40 s at full load.
const PURGE_BYTES_PER_SECOND: u64 = 32 * 1024 * 1024;
/// The least pause between two purge transactions, which lets appends take the writer in between.
const PURGE_PAUSE_MIN: Duration = Duration::from_millis(2);
/// Past this many entries still to delete, the purge stops pacing itself. Appends can outrun the
/// pace (seven replicas at full load on one host append about 36 MB/s each); without this the
/// backlog, and with it the log file, would grow for as long as the load lasts.
const PURGE_BACKLOG_ENTRIES_MAX: u64 = 1_024;
/// The pause after a purge transaction failed, before the thread tries again.
const PURGE_RETRY_PAUSE: Duration = Duration::from_secs(1);

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

#[derive(Clone, Debug)]
pub struct RedbLogStore {
    database: Arc<Database>,
    appended: AppendedBytes,
    held: HeldIndex,
    /// Entries with an index below this are purged, whether deleted yet or not.
    purged_below: Arc<AtomicU64>,
    purger: Arc<Purger>,
    /// The commit index openraft saved last, until an append writes it (`None`: nothing new).
    committed_unwritten: Arc<Mutex<Option<Option<LogIdOf>>>>,
}

/// The background thread that deletes purged entries, and what it is asked to delete.
#[derive(Debug)]
struct Purger {
    request: Arc<PurgeRequest>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct PurgeRequest {
    state: Mutex<PurgeState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PurgeState {
    /// Delete every entry with an index up to this, inclusive.
    up_to: Option<u64>,
    stopped: bool,
}

impl Purger {
    fn start(database: Weak<Database>) -> Result<Purger, String> {
        let request = Arc::new(PurgeRequest::default());
        let shared = Arc::clone(&request);
        let thread = std::thread::Builder::new()
            .name("raft-log-purge".into())
            .spawn(move || delete_purged_entries(&database, &shared))
            .map_err(|error| format!("cannot start the log's purge thread: {error}"))?;
        Ok(Purger { request, thread: Some(thread) })
    }

    fn delete_up_to(&self, index: u64) {
        let mut state = self.request.state.lock().expect("the purge lock is never poisoned");
        state.up_to = Some(state.up_to.map_or(index, |up_to| up_to.max(index)));
        self.request.changed.notify_one();
    }
}

impl Drop for Purger {
    fn drop(&mut self) {
        self.request.state.lock().expect("the purge lock is never poisoned").stopped = true;
        self.request.changed.notify_one();
        // Joined, so that the database is closed once the last store handle is gone.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The purge thread: deletes what is asked, a few entries per transaction, until stopped.
fn delete_purged_entries(database: &Weak<Database>, request: &PurgeRequest) {
    loop {
        let up_to = {
            let mut state = request.state.lock().expect("the purge lock is never poisoned");
            while !state.stopped && state.up_to.is_none() {
                state = request.changed.wait(state).expect("the purge lock is never poisoned");
            }
            if state.stopped {
                return;
            }
            state.up_to.expect("woken with a request")
        };
        let Some(database) = database.upgrade() else { return };
        let deleted = delete_some_entries(&database, up_to);
        drop(database);
        match deleted {
            Ok(Some((bytes, entries_left))) => std::thread::sleep(purge_pause(bytes, entries_left)),
            Ok(None) => {
                let mut state = request.state.lock().expect("the purge lock is never poisoned");
                if state.up_to == Some(up_to) {
                    state.up_to = None;
                }
            }
            Err(error) => {
                // The entries stay, unseen by readers, until a later try deletes them.
                tracing::warn!(%error, up_to, "cannot delete purged log entries; trying again");
                std::thread::sleep(PURGE_RETRY_PAUSE);
            }
        }
    }
}

/// Deletes up to [`PURGE_ENTRIES_PER_TRANSACTION`] of the oldest entries, none above `up_to`.
/// Returns the bytes deleted when more are left to delete, `None` when done. Not fsynced: the next
/// append makes it durable, and after a crash the purge point recorded in the log tells what to
/// delete again.
/// How long the purge waits after deleting `bytes`, with `entries_left` still to delete.
fn purge_pause(bytes: u64, entries_left: u64) -> Duration {
    if entries_left > PURGE_BACKLOG_ENTRIES_MAX {
        return PURGE_PAUSE_MIN;
    }
    Duration::from_secs_f64(bytes as f64 / PURGE_BYTES_PER_SECOND as f64).max(PURGE_PAUSE_MIN)
}

/// Deletes the next few purged entries; `Some((bytes deleted, entries left))` while more remain.
fn delete_some_entries(database: &Database, up_to: u64) -> Result<Option<(u64, u64)>, redb::Error> {
    let mut transaction = database.begin_write()?;
    transaction.set_durability(Durability::None)?;
    let more = {
        let mut table = transaction.open_table(LOG)?;
        let first = table.first()?.map(|(index, _)| index.value());
        match first {
            Some(first) if first <= up_to => {
                let last = up_to.min(first + PURGE_ENTRIES_PER_TRANSACTION - 1);
                let mut bytes = 0u64;
                table.retain_in(first..=last, |_, value| {
                    bytes += value.len() as u64;
                    false
                })?;
                (last < up_to).then_some((bytes, up_to - last))
            }
            _ => None,
        }
    };
    transaction.commit()?;
    Ok(more)
}

/// Bytes of entries appended to the log since it was opened, so that the node can take a snapshot
/// (and let openraft purge the log) when the log grows by a given size, whatever the entries' sizes.
#[derive(Clone, Debug, Default)]
pub struct AppendedBytes(Arc<AtomicU64>);

impl AppendedBytes {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The highest log index this replica has held on disk: its last entry once fsynced, or the last
/// one a snapshot covers. It never goes down (a truncation removes only uncommitted entries, which
/// no peer counts as acknowledged); peers compare it with what they saw it acknowledge
/// (`peer_identity`), so it must never be above what is durable.
#[derive(Clone, Debug, Default)]
pub struct HeldIndex(Arc<AtomicU64>);

impl HeldIndex {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Raises it to `index` once `index` is durable (an entry fsynced, a snapshot installed).
    pub fn raise(&self, index: u64) {
        self.0.fetch_max(index, Ordering::AcqRel);
    }
}

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, error: impl Display) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(error.to_string())).into()
}

fn logs_error(verb: ErrorVerb) -> impl Fn(&dyn Display) -> StorageError {
    move |error| io_error(ErrorSubject::Logs, verb, error)
}

impl RedbLogStore {
    /// Opens the log at `path`, creating it if needed, with a page cache of at most `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<RedbLogStore, String> {
        let backend = DirectWriteBackend::open(path)
            .map_err(|error| format!("cannot open the Raft log at {}: {error}", path.display()))?;
        let database = Database::builder()
            .set_cache_size(cache_bytes)
            .create_with_backend(backend)
            .map_err(|error| format!("cannot open the Raft log at {}: {error}", path.display()))?;
        let transaction = database.begin_write().map_err(|error| error.to_string())?;
        transaction.open_table(LOG).map_err(|error| error.to_string())?;
        transaction.open_table(STATE).map_err(|error| error.to_string())?;
        transaction.commit().map_err(|error| error.to_string())?;
        let database = Arc::new(database);
        let purger = Purger::start(Arc::downgrade(&database))?;
        let store = RedbLogStore {
            database,
            appended: AppendedBytes::default(),
            held: HeldIndex::default(),
            purged_below: Arc::new(AtomicU64::new(0)),
            purger: Arc::new(purger),
            committed_unwritten: Arc::new(Mutex::new(None)),
        };
        // Entries a crash left behind the purge point are deleted again.
        let last_purged: Option<LogIdOf> =
            store.read_state(LAST_PURGED, ErrorSubject::Logs).map_err(|error| error.to_string())?;
        if let Some(last_purged) = last_purged {
            store.purged_below.store(last_purged.index + 1, Ordering::Release);
            store.purger.delete_up_to(last_purged.index);
            store.held.raise(last_purged.index);
        }
        if let Some(last) = store.last_entry_log_id().map_err(|error| error.to_string())? {
            store.held.raise(last.index);
        }
        Ok(store)
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let failed = |error: &dyn Display| io_error(subject.clone(), ErrorVerb::Read, error);
        let transaction = self.database.begin_read().map_err(|error| failed(&error))?;
        let table = transaction.open_table(STATE).map_err(|error| failed(&error))?;
        let Some(bytes) = table.get(key).map_err(|error| failed(&error))? else { return Ok(None) };
        decode(bytes.value(), key).map(Some).map_err(|error| failed(&error))
    }

    /// The count of bytes appended since the log was opened.
    pub fn appended_bytes(&self) -> AppendedBytes {
        self.appended.clone()
    }

    /// The highest log index held on disk, kept current as entries are fsynced.
    pub fn held_index(&self) -> HeldIndex {
        self.held.clone()
    }

    /// Writes one state record, durably (fsync) or to be made durable by the next durable commit.
    fn write_state<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<NodeId>,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let failed = |error: &dyn Display| io_error(subject.clone(), ErrorVerb::Write, error);
        let mut transaction = self.database.begin_write().map_err(|error| failed(&error))?;
        transaction.set_durability(durability).map_err(|error| failed(&error))?;
        {
            let mut table = transaction.open_table(STATE).map_err(|error| failed(&error))?;
            table.insert(key, encode(value).as_slice()).map_err(|error| failed(&error))?;
        }
        transaction.commit().map_err(|error| failed(&error))
    }

    fn last_entry_log_id(&self) -> Result<Option<LogIdOf>, StorageError> {
        let failed = logs_error(ErrorVerb::Read);
        let transaction = self.database.begin_read().map_err(|error| failed(&error))?;
        let table = transaction.open_table(LOG).map_err(|error| failed(&error))?;
        let Some((_, bytes)) = table.last().map_err(|error| failed(&error))? else { return Ok(None) };
        let entry: Entry = decode(bytes.value(), "log entry").map_err(|error| failed(&error))?;
        Ok(Some(entry.log_id))
    }

    /// A durable transaction that appends `entries`, with the commit index saved since the last
    /// append, and the count of bytes it appends; committing it is the caller's.
    fn prepare_append(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(redb::WriteTransaction, usize, Option<u64>), StorageError> {
        let failed = logs_error(ErrorVerb::Write);
        let mut last_index = None;
        let mut transaction = self.database.begin_write().map_err(|error| failed(&error))?;
        transaction.set_durability(Durability::Immediate).map_err(|error| failed(&error))?;
        let mut bytes_appended = 0;
        {
            let mut table = transaction.open_table(LOG).map_err(|error| failed(&error))?;
            for entry in entries {
                let bytes = encode(&entry);
                table.insert(entry.log_id.index, bytes.as_slice()).map_err(|error| failed(&error))?;
                bytes_appended += bytes.len();
                last_index = Some(entry.log_id.index);
            }
            let committed = self.committed_unwritten.lock().expect("the commit index lock is never poisoned").take();
            if let Some(committed) = committed {
                let mut state = transaction.open_table(STATE).map_err(|error| failed(&error))?;
                state.insert(COMMITTED, encode(&committed).as_slice()).map_err(|error| failed(&error))?;
            }
        }
        self.appended.add(bytes_appended);
        Ok((transaction, bytes_appended, last_index))
    }

    /// Removes the entries with indexes from `index` on.
    fn remove_entries_from(&self, index: u64) -> Result<(), StorageError> {
        let failed = logs_error(ErrorVerb::Delete);
        let mut transaction = self.database.begin_write().map_err(|error| failed(&error))?;
        transaction.set_durability(Durability::Immediate).map_err(|error| failed(&error))?;
        {
            let mut table = transaction.open_table(LOG).map_err(|error| failed(&error))?;
            table.retain_in(index.., |_, _| false).map_err(|error| failed(&error))?;
        }
        transaction.commit().map_err(|error| failed(&error))
    }
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let failed = logs_error(ErrorVerb::Read);
        let transaction = self.database.begin_read().map_err(|error| failed(&error))?;
        let table = transaction.open_table(LOG).map_err(|error| failed(&error))?;
        // Purged entries the purge thread has not deleted yet are not there for readers.
        let purged_below = self.purged_below.load(Ordering::Acquire);
        let start = match range.start_bound().cloned() {
            Bound::Included(start) => Bound::Included(start.max(purged_below)),
            Bound::Excluded(start) if start < purged_below => Bound::Included(purged_below),
            Bound::Excluded(start) => Bound::Excluded(start),
            Bound::Unbounded => Bound::Included(purged_below),
        };
        let bounds = (start, range.end_bound().cloned());
        let mut entries = Vec::new();
        for item in table.range(bounds).map_err(|error| failed(&error))? {
            let (_, bytes) = item.map_err(|error| failed(&error))?;
            entries.push(decode(bytes.value(), "log entry").map_err(|error| failed(&error))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = RedbLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogIdOf> = self.read_state(LAST_PURGED, ErrorSubject::Logs)?;
        // The last entry may be one the purge thread has not deleted yet.
        let last_log_id = match (self.last_entry_log_id()?, last_purged_log_id) {
            (Some(last), Some(purged)) if last.index <= purged.index => Some(purged),
            (last, purged) => last.or(purged),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> RedbLogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        crate::blocking::blocking(|| self.write_state(VOTE, vote, ErrorSubject::Vote, Durability::Immediate))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_state(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf>) -> Result<(), StorageError> {
        // Written with the next append: a commit index lost in a crash is only smaller, which
        // openraft allows (the leader tells it again).
        *self.committed_unwritten.lock().expect("the commit index lock is never poisoned") = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf>, StorageError> {
        if let Some(committed) = *self.committed_unwritten.lock().expect("the commit index lock is never poisoned") {
            return Ok(committed);
        }
        Ok(self.read_state::<Option<LogIdOf>>(COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (transaction, bytes_appended, last_index) = self.prepare_append(entries)?;
        // The entries are on disk (fsynced) once commit returns; only then may openraft act on them.
        let long = bytes_appended >= crate::blocking::LONG_WORK_BYTES_MIN;
        let result = crate::blocking::blocking_when(long, || transaction.commit());
        if let (Ok(_), Some(last_index)) = (&result, last_index) {
            self.held.raise(last_index);
        }
        callback
            .log_io_completed(result.as_ref().map(|_| ()).map_err(|error| std::io::Error::other(error.to_string())));
        result.map_err(|error| logs_error(ErrorVerb::Write)(&error))
    }

    async fn truncate(&mut self, log_id: LogIdOf) -> Result<(), StorageError> {
        crate::blocking::blocking(|| self.remove_entries_from(log_id.index))
    }

    async fn purge(&mut self, log_id: LogIdOf) -> Result<(), StorageError> {
        // The purge point is durable before openraft goes on; the entries go in the background.
        crate::blocking::blocking(|| {
            self.write_state(LAST_PURGED, &log_id, ErrorSubject::Logs, Durability::Immediate)
        })?;
        self.purged_below.fetch_max(log_id.index + 1, Ordering::AcqRel);
        self.purger.delete_up_to(log_id.index);
        self.held.raise(log_id.index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    /// Paced while it keeps up, so that its reads do not crowd the disk; at full speed once appends
    /// have outrun it, so that the log stays bounded.
    #[test]
    fn the_purge_paces_itself_until_it_falls_behind() {
        let eight_mib = 8 * 1024 * 1024;
        assert_eq!(purge_pause(eight_mib, 100), Duration::from_millis(250));
        assert_eq!(purge_pause(eight_mib, PURGE_BACKLOG_ENTRIES_MAX), Duration::from_millis(250));
        assert_eq!(purge_pause(eight_mib, PURGE_BACKLOG_ENTRIES_MAX + 1), PURGE_PAUSE_MIN);
        assert_eq!(purge_pause(1_000, 3), PURGE_PAUSE_MIN, "a few small entries wait the least pause");
    }

    fn entry(index: u64) -> Entry {
        // About 64 KiB, so that the purge spans many pages.
        let payload = crate::types::LogPayload::Batch(vec![u8::try_from(index % 251).unwrap(); 64 * 1024]);
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(payload) }
    }

    /// Writes entries straight into the table (openraft's append callback cannot be made outside
    /// openraft).
    fn write_entries(store: &RedbLogStore, indexes: std::ops::RangeInclusive<u64>) {
        let transaction = store.database.begin_write().unwrap();
        {
            let mut table = transaction.open_table(LOG).unwrap();
            for index in indexes {
                table.insert(index, encode(&entry(index)).as_slice()).unwrap();
            }
        }
        transaction.commit().unwrap();
    }

    fn stored_indexes(store: &RedbLogStore) -> Vec<u64> {
        let transaction = store.database.begin_read().unwrap();
        let table = transaction.open_table(LOG).unwrap();
        table.iter().unwrap().map(|item| item.unwrap().0.value()).collect()
    }

    fn wait_until_stored(store: &RedbLogStore, expected: &[u64]) {
        for _ in 0..500 {
            if stored_indexes(store) == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the log still holds {:?}, not {expected:?}", stored_indexes(store));
    }

    #[tokio::test]
    async fn the_commit_index_is_written_with_the_next_append_and_read_back_after_a_restart() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("raft-log.redb");
        let mut store = RedbLogStore::open(&path, LOG_CACHE_BYTES_DEFAULT).unwrap();
        let (transaction, _, _) = store.prepare_append([entry(1), entry(2)]).unwrap();
        transaction.commit().unwrap();
        store.save_committed(Some(entry(2).log_id)).await.unwrap();
        // In this process at once; on disk only with the next append.
        assert_eq!(store.read_committed().await.unwrap(), Some(entry(2).log_id));
        drop(store);
        let mut reopened = RedbLogStore::open(&path, LOG_CACHE_BYTES_DEFAULT).unwrap();
        assert_eq!(reopened.read_committed().await.unwrap(), None, "lost with the process: only smaller, as allowed");

        reopened.save_committed(Some(entry(2).log_id)).await.unwrap();
        let (transaction, _, _) = reopened.prepare_append([entry(3)]).unwrap();
        transaction.commit().unwrap();
        drop(reopened);
        let mut reopened = RedbLogStore::open(&path, LOG_CACHE_BYTES_DEFAULT).unwrap();
        assert_eq!(reopened.read_committed().await.unwrap(), Some(entry(2).log_id));
        let indexes: Vec<u64> =
            reopened.try_get_log_entries(..).await.unwrap().iter().map(|entry| entry.log_id.index).collect();
        assert_eq!(indexes, [1, 2, 3]);
    }

    #[tokio::test]
    async fn purged_entries_are_never_read_and_are_deleted_in_the_background_even_after_a_restart() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("raft-log.redb");
        let mut store = RedbLogStore::open(&path, LOG_CACHE_BYTES_DEFAULT).unwrap();
        write_entries(&store, 1..=100);
        store.purge(entry(60).log_id).await.unwrap();

        // At once, whatever the thread has deleted so far.
        let indexes = |entries: Vec<Entry>| entries.iter().map(|entry| entry.log_id.index).collect::<Vec<_>>();
        assert_eq!(indexes(store.try_get_log_entries(..).await.unwrap()), (61..=100).collect::<Vec<_>>());
        assert_eq!(indexes(store.try_get_log_entries(10..70).await.unwrap()), (61..70).collect::<Vec<_>>());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|log_id| log_id.index), Some(60));
        assert_eq!(state.last_log_id.map(|log_id| log_id.index), Some(100));
        wait_until_stored(&store, &(61..=100).collect::<Vec<_>>());

        // Purging everything: the last log id is the purge point.
        store.purge(entry(100).log_id).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|log_id| log_id.index), Some(100));
        assert!(store.try_get_log_entries(..).await.unwrap().is_empty());

        // Entries a crash left behind the purge point (here written back by hand) are deleted
        // when the log is opened again.
        wait_until_stored(&store, &[]);
        write_entries(&store, 95..=105);
        drop(store);
        let mut reopened = RedbLogStore::open(&path, LOG_CACHE_BYTES_DEFAULT).unwrap();
        assert_eq!(indexes(reopened.try_get_log_entries(..).await.unwrap()), (101..=105).collect::<Vec<_>>());
        wait_until_stored(&reopened, &(101..=105).collect::<Vec<_>>());
    }
}
