//! The Raft log and vote on redb.
//!
//! Every append and every vote is committed with `Durability::Immediate` (fsync) before openraft is
//! told it is done, so nothing that depends on it (an acknowledgement to the leader, a vote
//! granted) leaves the node before it is on disk. The log lives in its own redb file: redb admits
//! one writer at a time per file, and the log's small fsynced appends must not queue behind the
//! ledger's large batch commits.
//!
//! The commit index is the exception: openraft may lose it (it then re-learns it from the leader),
//! so it is written without fsync and made durable by the next append.

#![allow(
    clippy::result_large_err,
    reason = "helpers return openraft's StorageError, the type its storage traits require"
)]

use std::fmt::{Debug, Display};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::direct_io::DirectWriteBackend;
use crate::types::{Entry, LogIdOf, NodeId, StorageError, TypeConfig, decode, encode};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");

/// The log's page cache by default. The leader reads recent entries back to send them to
/// followers, so the cache holds the last few dozen batches; redb's own default (1 GiB per file)
/// made every replica's memory grow by the log's whole size.
pub const LOG_CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

#[derive(Clone, Debug)]
pub struct RedbLogStore {
    database: Arc<Database>,
    appended: AppendedBytes,
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
        Ok(RedbLogStore { database: Arc::new(database), appended: AppendedBytes::default() })
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

    /// Removes the entries with indexes in `range`, recording `last_purged` first when purging.
    fn remove_entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
        last_purged: Option<&LogIdOf>,
    ) -> Result<(), StorageError> {
        let failed = logs_error(ErrorVerb::Delete);
        let mut transaction = self.database.begin_write().map_err(|error| failed(&error))?;
        transaction.set_durability(Durability::Immediate).map_err(|error| failed(&error))?;
        {
            if let Some(log_id) = last_purged {
                let mut state = transaction.open_table(STATE).map_err(|error| failed(&error))?;
                state.insert(LAST_PURGED, encode(log_id).as_slice()).map_err(|error| failed(&error))?;
            }
            let mut table = transaction.open_table(LOG).map_err(|error| failed(&error))?;
            table.retain_in(range, |_, _| false).map_err(|error| failed(&error))?;
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
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
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
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
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
        // No fsync: a commit index lost in a crash is only smaller, which openraft allows; it
        // becomes durable with the next append. An fsync here stalled openraft's core on every commit.
        crate::blocking::blocking(|| self.write_state(COMMITTED, &committed, ErrorSubject::Store, Durability::None))
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf>, StorageError> {
        Ok(self.read_state::<Option<LogIdOf>>(COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let failed = logs_error(ErrorVerb::Write);
        let mut transaction = self.database.begin_write().map_err(|error| failed(&error))?;
        transaction.set_durability(Durability::Immediate).map_err(|error| failed(&error))?;
        {
            let mut table = transaction.open_table(LOG).map_err(|error| failed(&error))?;
            for entry in entries {
                let bytes = encode(&entry);
                table.insert(entry.log_id.index, bytes.as_slice()).map_err(|error| failed(&error))?;
                self.appended.add(bytes.len());
            }
        }
        // The entries are on disk (fsynced) once commit returns; only then may openraft act on them.
        let result = crate::blocking::blocking(|| transaction.commit());
        callback
            .log_io_completed(result.as_ref().map(|_| ()).map_err(|error| std::io::Error::other(error.to_string())));
        result.map_err(|error| failed(&error))
    }

    async fn truncate(&mut self, log_id: LogIdOf) -> Result<(), StorageError> {
        crate::blocking::blocking(|| self.remove_entries((Bound::Included(log_id.index), Bound::Unbounded), None))
    }

    async fn purge(&mut self, log_id: LogIdOf) -> Result<(), StorageError> {
        crate::blocking::blocking(|| {
            self.remove_entries((Bound::Unbounded, Bound::Included(log_id.index)), Some(&log_id))
        })
    }
}
