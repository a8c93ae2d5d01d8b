//! The ledger as openraft's state machine: applying committed entries, and building, sending and
//! installing snapshots.
//!
//! Each normal entry is one ledger batch. The applied log id and the membership are committed in the
//! same redb transaction as the batch's data (see `ledger_store`), so after a crash the ledger and
//! its record of what it applied always agree, and openraft re-applies the log from there.
//!
//! Applied batches need not be committed to the store at once: they wait in the store's overlay,
//! which answers the ledger's own reads, and the durable log holds them. A replica that defers its
//! commits ([`LedgerStateMachine::defer_commits`]) commits right after the first apply call that
//! finds [`DEFERRED_EVENTS_MAX`] events waiting, or finds them older than [`DEFERRED_AGE_MAX`] (on
//! a follower, [`DEFERRED_AGE_MAX_FOLLOWER`]), has handed its responses back, on a blocking thread,
//! so that the clients of that call do not wait for the commit and it overlaps the replication of
//! the next batch (BENCHMARKS.md); when the node's ticker finds them older than that
//! ([`LedgerViews::commit_if_due`]); before a snapshot or an expiry scan; and when a reader needs
//! them ([`LedgerViews::wait_committed`]). Committing 16 batches together writes each account row
//! and B-tree page once instead of 16 times (BENCHMARKS.md).
//!
//! Such a commit takes its batches out of the store under the ledger lock, writes them without
//! it, and takes the lock again to finish: apply calls go on meanwhile. On the leader a commit of
//! 200 ms of batches took 40-380 ms, and while it held the lock every apply call, and so every
//! client, waited for it (BENCHMARKS.md). One commit is written at a time; a commit that must
//! happen at once (a snapshot, an expiry, a refused entry, or twice [`DEFERRED_EVENTS_MAX`]
//! events waiting) first waits for the one being written.
//!
//! Snapshots are checkpoints. When openraft (on the node's log-size policy) builds a snapshot, the
//! replica commits what it applied in one durable commit that records the checkpoint's meta: from
//! then on the store holds at least that state whatever happens, so the log behind it may be
//! purged. The builder runs as a task of its own and writes that commit like any other, without
//! the ledger lock ([`LedgerViews::checkpoint_applied`]), so applying goes on meanwhile. No file
//! is written: writing the whole ledger at every checkpoint halved a cluster's throughput for half
//! a minute at a time (BENCHMARKS.md). The ledger is written to a file only
//! when a peer needs it: `get_current_snapshot` hands out a snapshot at a new durable checkpoint,
//! whose data ([`SnapshotData`]) writes the file from a read view when first read, so applying goes
//! on meanwhile. Every meta handed to openraft names a durable state, and a file is reused only
//! while it is at least as new as the last checkpoint, so a peer caught up from a file never needs
//! log that was purged.
//!
//! A snapshot file is a short header with openraft's snapshot meta, followed by the ledger's own
//! snapshot format, named after the snapshot's id. A received one is installed into a fresh store
//! file that replaces the old one by an atomic rename, and kept for the next peer that needs it.

use std::fs;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use tally_state_machine::codec::decode_batch_into;
use tally_state_machine::constants::EVENTS_PER_BATCH_MAX;
use tally_state_machine::{Batch, BatchOutcome, Operation, StateMachine, StorageRead};
use tokio::sync::watch;

use crate::direct_io::DirectFileWriter;
use crate::ledger_store::{LedgerCommit, LedgerReadView, RedbLedgerStore, WrittenCommit};
use crate::snapshot_data::{SnapshotData, UnwrittenSnapshot};
use crate::types::{
    ApplyResponse, ConsensusRecord, Entry, LogPayload, Membership, SnapshotMeta, StorageError, TypeConfig, decode,
    encode,
};

const LEDGER_FILE: &str = "ledger.redb";
const LEDGER_INSTALLING_FILE: &str = "ledger.installing.redb";
const SNAPSHOT_DIRECTORY: &str = "snapshots";
/// Complete snapshot files end with this; files being written or received end otherwise and are
/// removed at open.
const SNAPSHOT_EXTENSION: &str = "snapshot";
const PARTIAL_EXTENSION: &str = "partial";
const SNAPSHOT_MAGIC: &[u8; 8] = b"TALLYRSN";
/// The largest snapshot meta header accepted from a file (it holds a membership of a few nodes).
const SNAPSHOT_META_BYTES_MAX: u32 = 1024 * 1024;

/// Events a replica keeps applied but uncommitted before it commits them (16 full batches: an
/// overlay of about 25 MB), after the apply call, without the ledger lock.
pub const DEFERRED_EVENTS_MAX: usize = 16 * EVENTS_PER_BATCH_MAX;
/// The most events a replica keeps applied but uncommitted while a commit is being written: at
/// this many an apply call commits them itself, and waits for the commit under way first.
pub const DEFERRED_EVENTS_HARD_MAX: usize = 2 * DEFERRED_EVENTS_MAX;
/// The longest a replica keeps applied batches uncommitted while it applies more; the node's
/// ticker commits older ones when no more come. The node sets it by role
/// ([`LedgerViews::set_deferred_age_max`]): the leader commits sooner, since its commits delay its
/// answers, and followers, which serve no reads, later, which writes each page less often.
pub const DEFERRED_AGE_MAX: Duration = Duration::from_millis(200);
/// Phases of account-index merges that replicas take turns in
/// ([`LedgerStateMachine::stagger_index_merges`]).
pub const INDEX_MERGE_PHASES: usize = 8;
/// The deferral a follower may use instead (see [`DEFERRED_AGE_MAX`]).
pub const DEFERRED_AGE_MAX_FOLLOWER: Duration = Duration::from_secs(1);

fn state_machine_error(verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(error.to_string())).into()
}

fn snapshot_error(verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(error.to_string())).into()
}

/// The ledger and what it applied but has not committed, shared by the apply path and the readers
/// that need applied batches committed. The apply path holds the lock for a whole apply call, so
/// whoever else takes it finds whole batches only.
#[derive(Debug)]
struct Applied {
    /// `None` only while a snapshot is being installed.
    ledger: Option<StateMachine<RedbLedgerStore>>,
    deferred_events: usize,
    deferred_since: Option<Instant>,
    /// A commit being written without this lock ([`LedgerViews::commit_applied`]).
    in_flight: Option<Arc<CommitSlot>>,
    /// The log index that views reach, published after every commit.
    committed: Arc<watch::Sender<Option<u64>>>,
}

/// Where a commit written without the ledger lock is handed back, for whoever holds the lock
/// next to finish.
#[derive(Debug, Default)]
struct CommitSlot {
    state: Mutex<CommitState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
enum CommitState {
    #[default]
    Writing,
    Written(WrittenCommit),
    Taken,
    /// The writer panicked: the store cannot write, and the replica stops (fail-stop).
    Failed,
}

impl CommitSlot {
    fn set(&self, state: CommitState) {
        *self.state.lock().expect("the commit slot lock is never poisoned") = state;
        self.changed.notify_all();
    }

    fn is_writing(&self) -> bool {
        matches!(*self.state.lock().expect("the commit slot lock is never poisoned"), CommitState::Writing)
    }

    fn has_failed(&self) -> bool {
        matches!(*self.state.lock().expect("the commit slot lock is never poisoned"), CommitState::Failed)
    }

    /// Waits until the writer is done, leaving what it wrote for the lock holder to finish.
    fn wait_until_written(&self) -> MutexGuard<'_, CommitState> {
        let mut state = self.state.lock().expect("the commit slot lock is never poisoned");
        while matches!(*state, CommitState::Writing) {
            state = self.changed.wait(state).expect("the commit slot lock is never poisoned");
        }
        assert!(!matches!(*state, CommitState::Failed), "a ledger commit failed: the replica cannot write its ledger");
        state
    }

    /// Waits until the writer is done; the written commit, once (`None` after it was taken).
    fn wait_written(&self) -> Option<WrittenCommit> {
        match std::mem::replace(&mut *self.wait_until_written(), CommitState::Taken) {
            CommitState::Written(written) => Some(written),
            _ => None,
        }
    }
}

impl Applied {
    fn ledger(&self) -> &StateMachine<RedbLedgerStore> {
        self.ledger.as_ref().expect("the ledger is present outside a snapshot install")
    }

    fn ledger_mut(&mut self) -> &mut StateMachine<RedbLedgerStore> {
        self.ledger.as_mut().expect("the ledger is present outside a snapshot install")
    }

    /// Commits `record` (with any batches still deferred), for entries that change no ledger data
    /// or were refused.
    fn commit_record(&mut self, record: &ConsensusRecord) {
        self.finish_in_flight();
        self.ledger_mut().storage_mut().commit_consensus_state(encode(record));
        self.after_commit();
    }

    /// Commits the batches applied since the last commit, if any, here and now (after the commit
    /// under way, if any).
    fn commit_deferred(&mut self) {
        self.finish_in_flight();
        if self.deferred_since.is_some() {
            self.ledger_mut().storage_mut().commit_deferred();
            self.after_commit();
        }
    }

    /// Finishes the commit being written without the lock, if any, waiting for its writer (which
    /// needs no lock to finish writing).
    fn finish_in_flight(&mut self) {
        let Some(slot) = self.in_flight.take() else { return };
        if let Some(written) = slot.wait_written() {
            self.ledger_mut().storage_mut().finish_commit(written);
            self.publish_committed();
        }
    }

    /// Commits everything applied in one durable commit that records it as a checkpoint, here and
    /// now (after the commit under way, if any); returns the checkpoint's meta and a view of
    /// exactly that state.
    fn checkpoint(&mut self) -> (SnapshotMeta, LedgerReadView) {
        self.finish_in_flight();
        let mut meta = None;
        let view = self.ledger_mut().storage_mut().commit_checkpoint(|view| checkpoint_record(view, &mut meta));
        self.after_commit();
        checkpoint_made(meta, view)
    }

    /// Hands the store's batches to a commit about to be written without the lock: nothing is
    /// deferred any more, and whoever takes the lock next waits for or finishes that commit.
    fn start_writing(&mut self) -> Arc<CommitSlot> {
        let slot = Arc::new(CommitSlot::default());
        self.in_flight = Some(Arc::clone(&slot));
        self.deferred_events = 0;
        self.deferred_since = None;
        slot
    }

    /// The meta of the last checkpoint, `None` before the first.
    fn last_checkpoint(&self) -> Option<SnapshotMeta> {
        let bytes = self.ledger().storage().checkpoint()?;
        Some(decode(bytes, "checkpoint record").expect("the store holds a checkpoint it wrote"))
    }

    fn defer(&mut self, events: usize) {
        self.deferred_events += events;
        self.deferred_since.get_or_insert_with(Instant::now);
    }

    fn deferred_longer_than(&self, age: Duration) -> bool {
        self.deferred_since.is_some_and(|since| since.elapsed() >= age)
    }

    /// Nothing is deferred any more; readers learn which log index views now reach.
    fn after_commit(&mut self) {
        self.deferred_events = 0;
        self.deferred_since = None;
        self.publish_committed();
    }

    /// Tells readers which log index views now reach.
    fn publish_committed(&mut self) {
        let record: ConsensusRecord = match self.ledger().storage().consensus_state() {
            Some(bytes) => decode(bytes, "consensus record").expect("the store holds a record it wrote"),
            None => ConsensusRecord::default(),
        };
        let committed = record.applied.map(|log_id| log_id.index);
        self.committed.send_if_modified(|current| std::mem::replace(current, committed) != committed);
    }
}

/// Read views of the replica's ledger for anyone outside openraft (queries, status), valid across
/// snapshot installs, which replace the store underneath.
#[derive(Clone, Debug)]
pub struct LedgerViews {
    database: Arc<RwLock<Arc<redb::Database>>>,
    committed: Arc<watch::Sender<Option<u64>>>,
    applied: Arc<Mutex<Applied>>,
    /// How long applied batches may wait for their commit, in milliseconds.
    deferred_age_max_ms: Arc<AtomicU64>,
    /// A commit is scheduled to run after the current apply call ([`LedgerViews::commit_soon`]).
    commit_scheduled: Arc<AtomicBool>,
}

impl LedgerViews {
    /// Why this store can no longer apply or commit, if it cannot: a commit failed (a storage
    /// error, never retried: the replica recovers from its log on restart) or a panic broke the
    /// ledger lock. Health checks ask this; the failure also stops the next apply call. It never
    /// waits for the ledger lock (apply holds it for milliseconds at a time): a lock that is busy
    /// is in use, not broken, and the next check looks again.
    pub fn failure(&self) -> Option<&'static str> {
        match self.applied.try_lock() {
            Err(std::sync::TryLockError::Poisoned(_)) => Some("a panic while applying broke the ledger lock"),
            Err(std::sync::TryLockError::WouldBlock) => None,
            Ok(applied) => applied
                .in_flight
                .as_ref()
                .is_some_and(|slot| slot.has_failed())
                .then_some("a ledger commit failed: the store cannot write"),
        }
    }

    /// How long applied batches may wait for their commit (default [`DEFERRED_AGE_MAX`]).
    pub fn deferred_age_max(&self) -> Duration {
        Duration::from_millis(self.deferred_age_max_ms.load(Ordering::Relaxed))
    }

    /// Sets how long applied batches may wait for their commit (the node sets it by role).
    pub fn set_deferred_age_max(&self, age: Duration) {
        let millis = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        self.deferred_age_max_ms.store(millis, Ordering::Relaxed);
    }

    /// A consistent view of the last committed state.
    pub fn view(&self) -> LedgerReadView {
        let database = Arc::clone(&self.database.read().expect("the views lock is never poisoned"));
        LedgerReadView::open(&database)
    }

    /// The log index up to which views see the ledger.
    pub fn committed_index(&self) -> Option<u64> {
        *self.committed.borrow()
    }

    /// Waits until views see the ledger at least up to log index `index` (`None`: nothing to wait
    /// for), committing what the replica applied if views do not reach it yet. The entry at
    /// `index` must be applied already (openraft's read index wait ensures that); callers bound
    /// the wait with their deadline.
    pub async fn wait_committed(&self, index: Option<u64>) {
        let Some(index) = index else { return };
        let reached = |committed: &Option<u64>| committed.is_some_and(|committed| committed >= index);
        let mut receiver = self.committed.subscribe();
        if reached(&receiver.borrow_and_update()) {
            return;
        }
        let views = self.clone();
        // A panicked commit stops the replica (fail-stop); the wait below then never ends, and
        // the caller's deadline answers.
        let _ = tokio::task::spawn_blocking(move || views.commit_applied()).await;
        // The sender lives as long as any views do, so this ends when the index is reached.
        let _ = receiver.wait_for(reached).await;
    }

    /// Commits every batch applied so far (blocking). The batches are written without the ledger
    /// lock, so apply calls go on meanwhile: a commit of 200 ms of batches took 40-380 ms on the
    /// leader, and an apply call that waited for it delayed its clients by as much (BENCHMARKS.md).
    pub fn commit_applied(&self) {
        self.commit_applied_then(|| {});
    }

    /// [`LedgerViews::commit_applied`], calling `begun` (under the ledger lock) once this commit has
    /// taken its batches or found none, before it writes them.
    fn commit_applied_then(&self, begun: impl FnOnce()) {
        let (applied, taken) = self.take_applied();
        begun();
        drop(applied);
        let Some((commit, slot)) = taken else { return };
        write_in(&slot, || (commit.write(), ()));
        self.finish_written(&slot);
    }

    /// Commits everything applied so far in one durable commit that records it as a checkpoint
    /// (blocking); returns the checkpoint's meta and a view of exactly that state. Like other
    /// commits it is written without the ledger lock, so apply calls go on meanwhile: made under
    /// the lock, on openraft's state-machine worker, a checkpoint held up every client for 250-400
    /// ms on the leader (BENCHMARKS.md, issue 5, fourth round).
    pub fn checkpoint_applied(&self) -> (SnapshotMeta, LedgerReadView) {
        let mut applied = self.lock_between_commits();
        let commit = applied.ledger_mut().storage_mut().begin_checkpoint();
        let slot = applied.start_writing();
        drop(applied);
        let mut meta = None;
        let view = write_in(&slot, || commit.write_checkpoint(|view| checkpoint_record(view, &mut meta)));
        self.finish_written(&slot);
        checkpoint_made(meta, view)
    }

    /// Finishes the commit written in `slot`, unless whoever took the lock meanwhile did.
    fn finish_written(&self, slot: &Arc<CommitSlot>) {
        let mut applied = self.applied.lock().expect("the ledger lock is never poisoned");
        if applied.in_flight.as_ref().is_some_and(|in_flight| Arc::ptr_eq(in_flight, slot)) {
            applied.finish_in_flight();
        }
    }

    /// The ledger lock, once no commit is being written without it (waiting for the one being
    /// written, if any, without the lock) and the last one written is finished.
    fn lock_between_commits(&self) -> MutexGuard<'_, Applied> {
        loop {
            let mut applied = self.applied.lock().expect("the ledger lock is never poisoned");
            if let Some(slot) = applied.in_flight.as_ref().filter(|slot| slot.is_writing()).map(Arc::clone) {
                drop(applied);
                drop(slot.wait_until_written());
                continue;
            }
            applied.finish_in_flight();
            return applied;
        }
    }

    /// Takes the batches applied so far out of the store for a commit (after the commit being
    /// written, if any, is finished), with the ledger lock still held; `None` when there are none.
    fn take_applied(&self) -> (MutexGuard<'_, Applied>, Option<(LedgerCommit, Arc<CommitSlot>)>) {
        let mut applied = self.lock_between_commits();
        if applied.deferred_since.is_none() {
            return (applied, None);
        }
        let Some(commit) = applied.ledger_mut().storage_mut().begin_commit() else {
            applied.after_commit();
            return (applied, None);
        };
        let slot = applied.start_writing();
        (applied, Some((commit, slot)))
    }

    /// Commits every batch applied so far on a blocking thread, once the apply call under way lets
    /// go of the ledger; at most one such commit waits to take its batches at a time (another may
    /// be writing meanwhile). Without a tokio runtime (tests, tools) the caller must commit
    /// itself: this returns `false`.
    fn commit_soon(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
        if !self.commit_scheduled.swap(true, Ordering::AcqRel) {
            let views = self.clone();
            runtime.spawn_blocking(move || {
                views.commit_applied_then(|| views.commit_scheduled.store(false, Ordering::Release));
            });
        }
        true
    }

    /// Commits the batches applied so far if the oldest has waited [`LedgerViews::deferred_age_max`]
    /// or more (blocking). The node calls this on a ticker, so that batches applied just before the
    /// cluster went quiet become visible to views.
    pub fn commit_if_due(&self) {
        let age = self.deferred_age_max();
        let due = self.applied.lock().expect("the ledger lock is never poisoned").deferred_longer_than(age);
        if due {
            self.commit_applied();
        }
    }

    fn replace(&self, database: Arc<redb::Database>) {
        *self.database.write().expect("the views lock is never poisoned") = database;
    }
}

/// The consensus record a view was committed with.
pub fn consensus_record(view: &LedgerReadView) -> ConsensusRecord {
    view.consensus_state()
        .map(|bytes| decode(bytes, "consensus record").expect("the store holds a record it wrote"))
        .unwrap_or_default()
}

/// The replica's ledger, driven by openraft.
#[derive(Debug)]
pub struct LedgerStateMachine {
    directory: PathBuf,
    cache_bytes: usize,
    /// The last applied entry and the membership; what the store holds may be older.
    record: ConsensusRecord,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
    /// The last snapshot handed out unwritten, shared with later readers while anyone holds it
    /// (and with snapshot builders, which openraft runs as tasks of their own).
    unwritten: Arc<Mutex<Weak<UnwrittenSnapshot>>>,
    views: LedgerViews,
    /// The last decoded batch, kept so that the next one reuses its allocation.
    decoded: Batch,
    /// Whether applied batches may wait for a later commit; without it every apply call commits.
    defer_commits: bool,
    /// This replica's merge phase ([`LedgerStateMachine::stagger_index_merges`]).
    index_merge_phase: Option<usize>,
}

impl LedgerStateMachine {
    /// Opens (or creates) the ledger kept in `directory`, discarding leftovers of an interrupted
    /// snapshot install or transfer.
    pub fn open(directory: &Path, cache_bytes: usize) -> Result<LedgerStateMachine, String> {
        let snapshots = directory.join(SNAPSHOT_DIRECTORY);
        fs::create_dir_all(&snapshots).map_err(|error| format!("cannot create {}: {error}", snapshots.display()))?;
        remove_if_present(&directory.join(LEDGER_INSTALLING_FILE))?;
        for leftover in fs::read_dir(&snapshots).map_err(|error| error.to_string())? {
            let path = leftover.map_err(|error| error.to_string())?.path();
            if path.extension().is_none_or(|extension| extension != SNAPSHOT_EXTENSION) {
                remove_if_present(&path)?;
            }
        }
        let mut store =
            RedbLedgerStore::open(&directory.join(LEDGER_FILE), cache_bytes).map_err(|error| error.to_string())?;
        let mut record = match store.consensus_state() {
            Some(bytes) => decode(bytes, "consensus record").map_err(|error| error.to_string())?,
            None => ConsensusRecord::default(),
        };
        // A crash between installing a received snapshot and moving its store into place (or a
        // data directory from before checkpoints) leaves the store behind this replica's newest
        // snapshot file, and the log behind that may be purged: start from the snapshot.
        if let Some((meta, path)) = newest_snapshot_file(&snapshots)
            .map_err(|error| format!("cannot read the snapshots in {}: {error}", snapshots.display()))?
            && meta.last_log_id > record.applied
        {
            let mut file = fs::File::open(&path).map_err(|error| format!("cannot open {}: {error}", path.display()))?;
            drop(store);
            record = install(directory, cache_bytes, &mut file, &meta)?;
            fs::rename(directory.join(LEDGER_INSTALLING_FILE), directory.join(LEDGER_FILE))
                .map_err(|error| format!("cannot move the restored ledger into place: {error}"))?;
            sync_directory(directory).map_err(|error| format!("cannot sync {}: {error}", directory.display()))?;
            store =
                RedbLedgerStore::open(&directory.join(LEDGER_FILE), cache_bytes).map_err(|error| error.to_string())?;
            tracing::info!(
                snapshot = %meta.snapshot_id,
                last_log_id = ?meta.last_log_id,
                "restored the ledger from this replica's snapshot: the store was behind it after a crash"
            );
        }
        store.defer_commits();
        let committed = Arc::new(watch::Sender::new(record.applied.map(|log_id| log_id.index)));
        let database = store.database();
        let applied = Applied {
            ledger: Some(StateMachine::open(store)),
            deferred_events: 0,
            deferred_since: None,
            in_flight: None,
            committed: Arc::clone(&committed),
        };
        let views = LedgerViews {
            database: Arc::new(RwLock::new(database)),
            committed,
            applied: Arc::new(Mutex::new(applied)),
            deferred_age_max_ms: Arc::new(AtomicU64::new(
                u64::try_from(DEFERRED_AGE_MAX.as_millis()).expect("a small constant"),
            )),
            commit_scheduled: Arc::new(AtomicBool::new(false)),
        };
        Ok(LedgerStateMachine {
            directory: directory.to_owned(),
            cache_bytes,
            views,
            record,
            receiving: None,
            unwritten: Arc::new(Mutex::new(Weak::new())),
            decoded: Batch::new(0, Operation::ExpirePendingTransfers),
            defer_commits: false,
            index_merge_phase: None,
        })
    }

    /// Lets applied batches wait for a later commit (see the module documentation). The owner
    /// must then call [`LedgerViews::commit_if_due`] on a ticker.
    pub fn defer_commits(&mut self) {
        self.defer_commits = true;
    }

    /// Gives this replica's account-index merges their own phase
    /// ([`RedbLedgerStore::stagger_index_merges`]): replica `replica` of a cluster merges at
    /// phase `replica % INDEX_MERGE_PHASES`.
    pub fn stagger_index_merges(&mut self, replica: u64) {
        let phase = usize::try_from(replica % INDEX_MERGE_PHASES as u64).expect("a phase below INDEX_MERGE_PHASES");
        self.index_merge_phase = Some(phase);
        let mut applied = self.views.applied.lock().expect("the ledger lock is never poisoned");
        applied.ledger_mut().storage_mut().stagger_index_merges(phase, INDEX_MERGE_PHASES);
    }

    /// The complete snapshot files of the replica whose data directory is `directory`: one at
    /// most, but for a moment while a newer one replaces it.
    pub fn snapshot_files(directory: &Path) -> io::Result<Vec<PathBuf>> {
        complete_snapshot_files(&directory.join(SNAPSHOT_DIRECTORY))
    }

    /// Read views of this ledger that stay valid after the state machine moves into openraft.
    pub fn views(&self) -> LedgerViews {
        self.views.clone()
    }

    /// Reads the ledger itself (applied batches included, committed or not).
    pub fn with_ledger<T>(&self, read: impl FnOnce(&StateMachine<RedbLedgerStore>) -> T) -> T {
        read(self.views.applied.lock().expect("the ledger lock is never poisoned").ledger())
    }

    fn snapshots(&self) -> PathBuf {
        self.directory.join(SNAPSHOT_DIRECTORY)
    }
}

/// Applies one batch entry; `record` already names the entry.
fn apply_batch(applied: &mut Applied, record: &ConsensusRecord, bytes: &[u8], batch: &mut Batch) -> ApplyResponse {
    if let Err(error) = decode_batch_into(bytes, batch) {
        applied.commit_record(record);
        return ApplyResponse::Refused { reason: format!("malformed batch: {error}") };
    }
    let batch = &*batch;
    if matches!(batch.operation, Operation::ExpirePendingTransfers) {
        // Expiry scans committed state: batches applied before it go first.
        applied.commit_deferred();
    }
    applied.ledger_mut().storage_mut().stage_consensus_state(encode(record));
    match applied.ledger_mut().apply(batch) {
        Ok(BatchOutcome::Created(results)) => {
            applied.defer(results.len());
            ApplyResponse::Created { results: results.iter().map(|code| *code as u8).collect() }
        }
        Ok(BatchOutcome::Expired(ids)) => {
            applied.defer(ids.len());
            ApplyResponse::Expired { ids }
        }
        Err(error) => {
            applied.commit_record(record);
            ApplyResponse::Refused { reason: error.to_string() }
        }
    }
}

fn remove_if_present(path: &Path) -> Result<(), String> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {error}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Reads the snapshot meta header, leaving `reader` at the start of the ledger snapshot.
fn read_snapshot_header(reader: &mut impl Read) -> io::Result<SnapshotMeta> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a Tally replica snapshot"));
    }
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_le_bytes(length);
    if length > SNAPSHOT_META_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("snapshot meta of {length} bytes")));
    }
    let mut bytes = vec![0u8; length as usize];
    reader.read_exact(&mut bytes)?;
    decode(&bytes, "snapshot meta").map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Names the snapshot of the state a view holds: the same state always gets the same id.
fn snapshot_meta(view: &LedgerReadView) -> SnapshotMeta {
    let record = consensus_record(view);
    let digest = tally_state_machine::digest::digest_hex(&view.meta_get().digest);
    let snapshot_id = match record.applied {
        Some(log_id) => format!("{}-{}-{}", log_id.leader_id.term, log_id.index, &digest[..16]),
        None => format!("empty-{}", &digest[..16]),
    };
    SnapshotMeta { last_log_id: record.applied, last_membership: record.membership, snapshot_id }
}

/// The checkpoint record for the state `view` shows: its snapshot meta, kept in `meta` as well.
fn checkpoint_record(view: &LedgerReadView, meta: &mut Option<SnapshotMeta>) -> Vec<u8> {
    let made = snapshot_meta(view);
    let record = encode(&made);
    *meta = Some(made);
    record
}

fn checkpoint_made(meta: Option<SnapshotMeta>, view: LedgerReadView) -> (SnapshotMeta, LedgerReadView) {
    let meta = meta.expect("a checkpoint's record is made from its view");
    tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "made a checkpoint");
    (meta, view)
}

/// Writes a commit taken out of the store, and leaves it in `slot` for whoever holds the ledger
/// lock next to finish; a writer that panics marks the slot failed, which stops the replica.
fn write_in<T>(slot: &CommitSlot, write: impl FnOnce() -> (WrittenCommit, T)) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)) {
        Ok((written, made)) => {
            slot.set(CommitState::Written(written));
            made
        }
        Err(panic) => {
            slot.set(CommitState::Failed);
            std::panic::resume_unwind(panic);
        }
    }
}

/// Makes renames and removals in `directory` durable.
fn sync_directory(directory: &Path) -> io::Result<()> {
    fs::File::open(directory)?.sync_all()
}

/// Tells apart the partial files of writers that run at the same time.
static PARTIAL_FILES: AtomicU64 = AtomicU64::new(0);

fn partial_path(directory: &Path, what: &str) -> PathBuf {
    let number = PARTIAL_FILES.fetch_add(1, Ordering::Relaxed);
    directory.join(format!("{what}-{number}.{PARTIAL_EXTENSION}"))
}

/// The complete snapshot files in the snapshot folder `snapshots`, by name.
fn complete_snapshot_files(snapshots: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(snapshots)? {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == SNAPSHOT_EXTENSION) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Moves a complete, fsynced snapshot file into place as `meta`'s file and removes the older
/// ones (a reader still holding one keeps it open).
fn publish_snapshot_file(directory: &Path, partial: &Path, meta: &SnapshotMeta) -> io::Result<PathBuf> {
    let complete = directory.join(format!("{}.{SNAPSHOT_EXTENSION}", meta.snapshot_id));
    fs::rename(partial, &complete)?;
    for older in complete_snapshot_files(directory)? {
        if older != complete {
            remove_if_present(&older).map_err(io::Error::other)?;
        }
    }
    sync_directory(directory)?;
    Ok(complete)
}

/// Writes a complete snapshot file of `view` (whose state `meta` names); returns its path and a
/// handle opened before it was moved into place (so that a newer file replacing it at once cannot
/// take it from the caller).
pub(crate) fn write_snapshot_file(
    directory: &Path,
    view: &LedgerReadView,
    meta: &SnapshotMeta,
) -> io::Result<(PathBuf, fs::File)> {
    let started = Instant::now();
    let partial = partial_path(directory, "building");
    let written = (|| {
        // Around the page cache: the file is written once and read again only to catch a peer up.
        let mut out = DirectFileWriter::create(&partial)?;
        let header = encode(meta);
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&u32::try_from(header.len()).expect("a small header").to_le_bytes())?;
        out.write_all(&header)?;
        let summary = tally_state_machine::snapshot::write_snapshot(view, &mut out)?;
        out.finish()?;
        Ok((summary, fs::File::open(&partial)?))
    })();
    let (summary, file) = match written {
        Ok(written) => written,
        Err(error) => {
            // A full disk, say: leave no partial file behind to make it fuller.
            let _ = fs::remove_file(&partial);
            return Err(error);
        }
    };
    let complete = publish_snapshot_file(directory, &partial, meta)?;
    tracing::info!(
        snapshot = %meta.snapshot_id,
        bytes = summary.bytes,
        transfers = summary.transfers,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "wrote a snapshot file for a peer"
    );
    Ok((complete, file))
}

/// The newest complete snapshot file in `directory` (by the log id it covers), with its meta.
fn newest_snapshot_file(directory: &Path) -> io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let mut newest: Option<(SnapshotMeta, PathBuf)> = None;
    for path in complete_snapshot_files(directory)? {
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            // Replaced by a newer one meanwhile.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let meta = read_snapshot_header(&mut BufReader::new(file))
            .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
        if newest.as_ref().is_none_or(|(newest, _)| meta.last_log_id > newest.last_log_id) {
            newest = Some((meta, path));
        }
    }
    Ok(newest)
}

/// Makes a checkpoint when openraft builds a snapshot; the file is written only if read.
#[derive(Debug)]
pub struct LedgerSnapshotBuilder {
    views: LedgerViews,
    snapshots: PathBuf,
    unwritten: Arc<Mutex<Weak<UnwrittenSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for LedgerSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // openraft runs this as a task of its own: applying goes on while the checkpoint is written.
        let views = self.views.clone();
        let (meta, view) = tokio::task::spawn_blocking(move || views.checkpoint_applied())
            .await
            .map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
        let checkpoint = UnwrittenSnapshot::new(meta.clone(), view, self.snapshots.clone());
        *self.unwritten.lock().expect("the unwritten snapshot lock is never poisoned") = Arc::downgrade(&checkpoint);
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotData::unwritten(checkpoint)) })
    }
}

impl RaftStateMachine<TypeConfig> for LedgerStateMachine {
    type SnapshotBuilder = LedgerSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<crate::types::LogIdOf>, Membership), StorageError> {
        Ok((self.record.applied, self.record.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // A large batch takes milliseconds to apply: hand this worker's other tasks (heartbeats,
        // peer RPCs) to another thread meanwhile. A small one is quicker than that hand-over.
        let entries: Vec<Entry> = entries.into_iter().collect();
        let payload_bytes: usize = entries
            .iter()
            .map(|entry| match &entry.payload {
                EntryPayload::Normal(LogPayload::Batch(bytes)) => bytes.len(),
                _ => 0,
            })
            .sum();
        let shared = Arc::clone(&self.views.applied);
        let responses = crate::blocking::blocking_when(payload_bytes >= crate::blocking::LONG_WORK_BYTES_MIN, || {
            let mut applied = shared.lock().expect("the ledger lock is never poisoned");
            let mut responses = Vec::new();
            for entry in entries {
                self.record.applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => {
                        applied.commit_record(&self.record);
                        ApplyResponse::NoOp
                    }
                    EntryPayload::Membership(membership) => {
                        self.record.membership = Membership::new(Some(entry.log_id), membership);
                        applied.commit_record(&self.record);
                        ApplyResponse::NoOp
                    }
                    EntryPayload::Normal(LogPayload::Batch(bytes)) => {
                        apply_batch(&mut applied, &self.record, &bytes, &mut self.decoded)
                    }
                };
                responses.push(response);
            }
            // Clients get their answers from these responses: the batches are in the durable log
            // and the store's overlay, so their commit to the store may wait (module documentation).
            // Batches old enough or many enough commit just after this call returns, written
            // without the ledger lock, so that no apply call waits for them. Only when commits fall
            // so far behind that twice as many wait does one run here, which bounds the overlay.
            let due = applied.deferred_events >= DEFERRED_EVENTS_MAX
                || applied.deferred_longer_than(self.views.deferred_age_max());
            let commit_now = !self.defer_commits
                || applied.deferred_events >= DEFERRED_EVENTS_HARD_MAX
                || (due && !self.views.commit_soon());
            if commit_now {
                crate::blocking::blocking(|| applied.commit_deferred());
            }
            responses
        });
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> LedgerSnapshotBuilder {
        // The checkpoint covers what is applied when the builder runs: openraft may purge the log
        // up to it.
        LedgerSnapshotBuilder {
            views: self.views.clone(),
            snapshots: self.snapshots(),
            unwritten: Arc::clone(&self.unwritten),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let path = partial_path(&self.snapshots(), "receiving");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
        if let Some(abandoned) = self.receiving.replace(path) {
            remove_if_present(&abandoned).map_err(|error| snapshot_error(ErrorVerb::Delete, error))?;
        }
        Ok(Box::new(SnapshotData::file(file)))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        let file = snapshot.into_file().await.map_err(|error| snapshot_error(ErrorVerb::Read, error))?;
        let mut file = file.into_std().await;
        let directory = self.directory.clone();
        let cache_bytes = self.cache_bytes;
        let expected = meta.clone();
        let received = self.receiving.take();
        let installed = tokio::task::spawn_blocking(move || {
            let record = install(&directory, cache_bytes, &mut file, &expected)?;
            // Kept for the next lagging peer, before the store moves into place: a crash between
            // the two is repaired at open from this file.
            keep_snapshot_file(&directory.join(SNAPSHOT_DIRECTORY), &mut file, received.as_deref(), &expected)
                .map_err(|error| format!("cannot keep the received snapshot: {error}"))?;
            Ok::<_, String>(record)
        });
        let record = installed
            .await
            .map_err(|error| state_machine_error(ErrorVerb::Write, error))?
            .map_err(|error| state_machine_error(ErrorVerb::Write, error))?;
        // Swap the stores: close the old one, move the restored file over it, reopen. Whatever the
        // old one had deferred goes with it: the snapshot is newer.
        let mut applied = self.views.applied.lock().expect("the ledger lock is never poisoned");
        applied.finish_in_flight();
        drop(applied.ledger.take());
        let rename = fs::rename(self.directory.join(LEDGER_INSTALLING_FILE), self.directory.join(LEDGER_FILE));
        rename.map_err(|error| state_machine_error(ErrorVerb::Write, error))?;
        sync_directory(&self.directory).map_err(|error| state_machine_error(ErrorVerb::Write, error))?;
        let mut store = RedbLedgerStore::open(&self.directory.join(LEDGER_FILE), self.cache_bytes)
            .map_err(|error| state_machine_error(ErrorVerb::Read, error))?;
        store.defer_commits();
        if let Some(phase) = self.index_merge_phase {
            store.stagger_index_merges(phase, INDEX_MERGE_PHASES);
        }
        self.views.replace(store.database());
        applied.ledger = Some(StateMachine::open(store));
        applied.after_commit();
        drop(applied);
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        self.record = record;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshots = self.snapshots();
        let shared = Arc::clone(&self.views.applied);
        let shared_unwritten = Arc::clone(&self.unwritten);
        let current = crate::blocking::blocking(|| -> io::Result<Option<Snapshot<TypeConfig>>> {
            let mut applied = shared.lock().expect("the ledger lock is never poisoned");
            let mut shared_unwritten = shared_unwritten.lock().expect("the unwritten snapshot lock is never poisoned");
            let Some(checkpoint) = applied.last_checkpoint() else { return Ok(None) };
            // A snapshot being written for the last checkpoint: share its file.
            if let Some(unwritten) = shared_unwritten.upgrade()
                && unwritten.meta.last_log_id >= checkpoint.last_log_id
            {
                let meta = unwritten.meta.clone();
                return Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::unwritten(unwritten)) }));
            }
            // A file at least as new as the last checkpoint.
            if let Some((meta, path)) = newest_snapshot_file(&snapshots)?
                && meta.last_log_id >= checkpoint.last_log_id
            {
                let file = tokio::fs::File::from_std(fs::File::open(path)?);
                return Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::file(file)) }));
            }
            // Otherwise a new checkpoint at what is applied now, written to a file when read.
            let (meta, view) = applied.checkpoint();
            let unwritten = UnwrittenSnapshot::new(meta.clone(), view, snapshots.clone());
            *shared_unwritten = Arc::downgrade(&unwritten);
            Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::unwritten(unwritten)) }))
        })
        .map_err(|error| snapshot_error(ErrorVerb::Read, error))?;
        Ok(current)
    }
}

/// Restores a snapshot file into a new store file beside the live one, durably. Returns the
/// consensus record the store now holds.
fn install(
    directory: &Path,
    cache_bytes: usize,
    file: &mut fs::File,
    expected: &SnapshotMeta,
) -> Result<ConsensusRecord, String> {
    file.seek(SeekFrom::Start(0)).map_err(|error| error.to_string())?;
    let mut reader = BufReader::new(&mut *file);
    let meta = read_snapshot_header(&mut reader).map_err(|error| error.to_string())?;
    if meta.last_log_id != expected.last_log_id || meta.last_membership != expected.last_membership {
        return Err(format!(
            "snapshot file describes {:?}, not the {:?} it was sent as",
            meta.last_log_id, expected.last_log_id
        ));
    }
    let installing = directory.join(LEDGER_INSTALLING_FILE);
    remove_if_present(&installing)?;
    let store = RedbLedgerStore::open(&installing, cache_bytes).map_err(|error| error.to_string())?;
    let mut ledger =
        StateMachine::restore_snapshot(store, reader).map_err(|error| format!("snapshot refused: {error}"))?;
    let record = ConsensusRecord { applied: meta.last_log_id, membership: meta.last_membership.clone() };
    ledger.storage_mut().commit_consensus_state(encode(&record));
    // Durable before the store moves into place: the log behind the snapshot may be gone.
    ledger.storage_mut().commit_checkpoint(|_| encode(&meta));
    Ok(record)
}

/// Keeps an installed snapshot `file` in `snapshots` as the replica's snapshot file. The file
/// received from the leader (`received`) is moved into place; any other (the data of a snapshot
/// handed over in process, as openraft's storage suite does) is copied.
fn keep_snapshot_file(
    snapshots: &Path,
    file: &mut fs::File,
    received: Option<&Path>,
    meta: &SnapshotMeta,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let installed = file.metadata()?;
    let same_file = |path: &Path| {
        fs::metadata(path).is_ok_and(|metadata| metadata.dev() == installed.dev() && metadata.ino() == installed.ino())
    };
    if let Some(received) = received.filter(|path| same_file(path)) {
        file.sync_all()?;
        publish_snapshot_file(snapshots, received, meta)?;
        return Ok(());
    }
    if let Some(abandoned) = received {
        remove_if_present(abandoned).map_err(io::Error::other)?;
    }
    file.seek(SeekFrom::Start(0))?;
    let copy = partial_path(snapshots, "installed");
    let mut out = fs::File::create(&copy)?;
    io::copy(file, &mut out)?;
    out.sync_all()?;
    publish_snapshot_file(snapshots, &copy, meta)?;
    Ok(())
}
