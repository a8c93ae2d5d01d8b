//! The ledger as openraft's state machine: applying committed entries, and building, sending and
//! installing snapshots.
//!
//! Each normal entry is one ledger batch. The applied log id and the membership are committed in the
//! same redb transaction as the batch's data (see `ledger_store`), so after a crash the ledger and
//! its record of what it applied always agree, and openraft re-applies the log from there.
//!
//! Applied batches need not be committed to the store at once: they stay *deferred* in the
//! store's overlay, which answers the ledger's own reads, and the durable log holds them. The
//! [`commit_pipeline`] moves them on (deferred, writing, written, committed, durable) without an
//! apply call waiting for a commit being written; see its documentation for the states and the
//! ordering rules. A replica that defers its commits ([`LedgerStateMachine::defer_commits`])
//! commits right after an apply call that finds [`DEFERRED_EVENTS_MAX`] events deferred or older
//! than [`DEFERRED_AGE_MAX`] (on a follower, [`DEFERRED_AGE_MAX_FOLLOWER`]); when the node's
//! ticker finds them older than that ([`LedgerViews::commit_if_due`]); before a checkpoint or an
//! expiry scan; and when a reader needs them ([`LedgerViews::wait_committed`]).
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
//! A received snapshot ([`crate::snapshot::file`] has the format) is installed into a fresh store
//! file that replaces the old one by an atomic rename, and kept for the next peer that needs it.
//!
//! This module owns the replica's data directory layout (the store file, the snapshot folder) and
//! openraft's state-machine trait. It must never decide on its own when deferred batches commit
//! (that is the pipeline's) nor write ledger rows (that is the store's).

mod commit_pipeline;

use std::fs;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use tally_state_machine::codec::decode_batch_into;
use tally_state_machine::{Batch, BatchOutcome, Operation, StateMachine, StorageRead};

pub use commit_pipeline::{
    CommitPipeline, Committable, DEFERRED_AGE_MAX, DEFERRED_AGE_MAX_FOLLOWER, DEFERRED_EVENTS_HARD_MAX,
    DEFERRED_EVENTS_MAX, Pipeline, Scheduler, TokioScheduler,
};

use crate::ledger_store::{LedgerCommit, LedgerReadView, RedbLedgerStore, WrittenCommit};
use crate::signed_entry::{ChangeEntry, MlDsaCheck, SignedEntry};
use crate::snapshot::SnapshotData;
use crate::snapshot::data::UnwrittenSnapshot;
use crate::snapshot::file::{
    SNAPSHOT_DIRECTORY, SNAPSHOT_EXTENSION, complete_snapshot_files, keep_snapshot_file, newest_snapshot_file,
    partial_path, read_snapshot_header, remove_if_present, sync_directory,
};
use crate::type_config::{Entry, TypeConfig};
use crate::types::{
    ApplyResponse, ConsensusRecord, LogPayload, Membership, Refusal, SignedResponse, SnapshotMeta, StorageError,
    decode, encode,
};
use tally_state_machine::registry::Registry;
use tally_state_machine::signed::{ChangeOutcome, RequestOutcome};

const LEDGER_FILE: &str = "ledger.redb";
const LEDGER_INSTALLING_FILE: &str = "ledger.installing.redb";

/// Phases of account-index merges that replicas take turns in
/// ([`LedgerStateMachine::stagger_index_merges`]): the replicas of a seven-node cluster on one
/// host (the local cluster, and the benchmarks) all merge at once otherwise.
pub const INDEX_MERGE_PHASES: usize = 8;

/// The ledger the commit pipeline drives: a state machine on the redb store.
type Ledger = StateMachine<RedbLedgerStore>;

impl Committable for Ledger {
    type Commit = LedgerCommit;
    type Written = WrittenCommit;

    fn begin_commit(&mut self) -> Option<LedgerCommit> {
        self.storage_mut().begin_commit()
    }

    fn write(commit: LedgerCommit) -> WrittenCommit {
        commit.write()
    }

    fn finish_commit(&mut self, written: WrittenCommit) {
        self.storage_mut().finish_commit(written);
    }

    fn committed_index(&self) -> Option<u64> {
        let record: ConsensusRecord = match self.storage().consensus_state() {
            Some(bytes) => decode(bytes, "consensus record").expect("the store holds a record it wrote"),
            None => ConsensusRecord::default(),
        };
        record.applied.map(|log_id| log_id.index)
    }
}

fn state_machine_error(verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(error.to_string())).into()
}

fn snapshot_error(verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(error.to_string())).into()
}

/// Read views of the replica's ledger for anyone outside openraft (queries, status), valid across
/// snapshot installs, which replace the store underneath, and the commit pipeline that makes
/// applied batches visible to them.
#[derive(Clone, Debug)]
pub struct LedgerViews {
    database: Arc<RwLock<Arc<redb::Database>>>,
    pipeline: CommitPipeline<Ledger>,
    /// The key registry as last applied, for gateways to check requests against without waiting
    /// for the ledger lock; `None` on a cluster without a genesis.
    registry: Arc<RwLock<Option<Arc<Registry>>>>,
}

impl LedgerViews {
    /// The key registry as last applied; `None` on a cluster without a genesis.
    pub fn registry(&self) -> Option<Arc<Registry>> {
        self.registry.read().expect("the registry lock is never poisoned").clone()
    }

    /// Publishes the ledger's registry to [`LedgerViews::registry`].
    fn publish_registry(&self, ledger: &Ledger) {
        let registry = ledger.registry().cloned().map(Arc::new);
        *self.registry.write().expect("the registry lock is never poisoned") = registry;
    }

    /// Why this ledger can no longer apply or commit, if it cannot
    /// ([`CommitPipeline::failure`]).
    pub fn failure(&self) -> Option<&'static str> {
        self.pipeline.failure()
    }

    /// How long applied batches may stay deferred (default [`DEFERRED_AGE_MAX`]).
    pub fn deferred_age_max(&self) -> Duration {
        self.pipeline.deferred_age_max()
    }

    /// Sets how long applied batches may stay deferred (the node sets it by role).
    pub fn set_deferred_age_max(&self, age: Duration) {
        self.pipeline.set_deferred_age_max(age);
    }

    /// A consistent view of the last committed state.
    pub fn view(&self) -> LedgerReadView {
        let database = Arc::clone(&self.database.read().expect("the views lock is never poisoned"));
        LedgerReadView::open(&database)
    }

    /// The log index up to which views see the ledger.
    pub fn committed_index(&self) -> Option<u64> {
        self.pipeline.committed_index()
    }

    /// Waits until views see the ledger at least up to log index `index`
    /// ([`CommitPipeline::wait_committed`]); callers bound the wait with their deadline.
    pub async fn wait_committed(&self, index: Option<u64>) {
        self.pipeline.wait_committed(index).await;
    }

    /// Commits every batch applied so far (blocking), written without the ledger lock.
    pub fn commit_applied(&self) {
        self.pipeline.commit_applied();
    }

    /// Commits the deferred batches if the oldest has waited long enough (blocking); the node
    /// calls this on a ticker.
    pub fn commit_if_due(&self) {
        self.pipeline.commit_if_due();
    }

    /// Commits everything applied so far in one durable commit that records it as a checkpoint
    /// (blocking); returns the checkpoint's meta and a view of exactly that state. Like other
    /// commits it is written without the ledger lock, so apply calls go on meanwhile: made under
    /// the lock, on openraft's state-machine worker, a checkpoint held up every client for 250-400
    /// ms on the leader (BENCHMARKS.md, issue 5, fourth round).
    pub fn checkpoint_applied(&self) -> (SnapshotMeta, LedgerReadView) {
        let mut meta = None;
        let view = self.pipeline.write_unlocked(
            |pipeline| Some(pipeline.ledger_mut().storage_mut().begin_checkpoint()),
            |commit| commit.write_checkpoint(|view| checkpoint_record(view, &mut meta)),
        );
        checkpoint_made(meta, view.expect("a checkpoint always takes a commit"))
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
    /// The registry of the cluster's genesis, for a ledger installed from a snapshot that holds
    /// none yet ([`LedgerStateMachine::secure`]).
    genesis: Option<Registry>,
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
        let database = store.database();
        let views = LedgerViews {
            database: Arc::new(RwLock::new(database)),
            pipeline: CommitPipeline::new(StateMachine::open(store), Arc::new(TokioScheduler)),
            registry: Arc::new(RwLock::new(None)),
        };
        views.publish_registry(views.pipeline.lock().ledger());
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
            genesis: None,
        })
    }

    /// Secures the ledger with its cluster's genesis registry: from now on it applies signed
    /// requests only (and refuses unsigned client batches), checking each against the registry.
    pub fn secure(&mut self, genesis: Registry) {
        let mut applied = self.views.pipeline.lock();
        applied.ledger_mut().secure(genesis.clone());
        self.views.publish_registry(applied.ledger());
        drop(applied);
        self.genesis = Some(genesis);
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
        self.views.pipeline.lock().ledger_mut().storage_mut().stagger_index_merges(phase, INDEX_MERGE_PHASES);
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
        read(self.views.pipeline.lock().ledger())
    }

    fn snapshots(&self) -> PathBuf {
        self.directory.join(SNAPSHOT_DIRECTORY)
    }
}

/// Commits `record` (with any batches still deferred), for entries that change no ledger data or
/// were refused.
fn commit_record(pipeline: &mut Pipeline<Ledger>, record: &ConsensusRecord) {
    pipeline.commit_here(|ledger| ledger.storage_mut().commit_consensus_state(encode(record)));
}

/// Applies one batch entry; `record` already names the entry.
fn apply_batch(
    applied: &mut Pipeline<Ledger>,
    record: &ConsensusRecord,
    bytes: &[u8],
    batch: &mut Batch,
) -> ApplyResponse {
    if let Err(error) = decode_batch_into(bytes, batch) {
        commit_record(applied, record);
        return ApplyResponse::Refused { reason: format!("malformed batch: {error}") };
    }
    let batch = &*batch;
    if matches!(batch.operation, Operation::ExpirePendingTransfers) {
        // Expiry scans committed state: batches applied before it go first.
        applied.commit_deferred();
    }
    applied.ledger_mut().storage_mut().defer_consensus_state(encode(record));
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
            commit_record(applied, record);
            ApplyResponse::Refused { reason: error.to_string() }
        }
    }
}

/// Applies one entry of signed requests; every request is checked again here (`signed_entry`).
fn apply_signed(
    applied: &mut Pipeline<Ledger>,
    record: &ConsensusRecord,
    log_index: u64,
    bytes: &[u8],
) -> ApplyResponse {
    let entry: SignedEntry = match decode(bytes, "signed entry") {
        Ok(entry) => entry,
        Err(error) => {
            commit_record(applied, record);
            return ApplyResponse::Refused { reason: format!("malformed signed entry: {error}") };
        }
    };
    let batch = entry.to_batch(log_index);
    applied.ledger_mut().storage_mut().defer_consensus_state(encode(record));
    match applied.ledger_mut().apply_signed(&batch, &MlDsaCheck) {
        Ok(outcomes) => {
            applied.defer(outcomes.iter().map(|outcome| outcome.results().len()).sum::<usize>().max(1));
            let requests = outcomes
                .into_iter()
                .map(|outcome| match outcome {
                    RequestOutcome::Applied(results) => {
                        SignedResponse { results: codes(&results), repeated: false, refusal: None }
                    }
                    RequestOutcome::Repeated(results) => {
                        SignedResponse { results: codes(&results), repeated: true, refusal: None }
                    }
                    RequestOutcome::Refused(refusal) => SignedResponse {
                        results: Vec::new(),
                        repeated: false,
                        refusal: Some(Refusal { code: refusal.code(), message: refusal.to_string() }),
                    },
                })
                .collect();
            ApplyResponse::Signed { requests }
        }
        Err(error) => {
            commit_record(applied, record);
            ApplyResponse::Refused { reason: error.to_string() }
        }
    }
}

fn codes(results: &[tally_state_machine::ResultCode]) -> Vec<u8> {
    results.iter().map(|code| *code as u8).collect()
}

/// Applies one registry change entry; its approvals are checked again here.
fn apply_change(
    applied: &mut Pipeline<Ledger>,
    record: &ConsensusRecord,
    log_index: u64,
    bytes: &[u8],
) -> ApplyResponse {
    let entry: ChangeEntry = match decode(bytes, "registry change entry") {
        Ok(entry) => entry,
        Err(error) => {
            commit_record(applied, record);
            return ApplyResponse::Refused { reason: format!("malformed registry change entry: {error}") };
        }
    };
    let change = entry.to_change(log_index);
    applied.ledger_mut().storage_mut().defer_consensus_state(encode(record));
    match applied.ledger_mut().apply_change(&change, &MlDsaCheck) {
        Ok(outcome) => {
            applied.defer(1);
            match outcome {
                ChangeOutcome::Applied => ApplyResponse::Changed { repeated: false, refusal: None },
                ChangeOutcome::Repeated => ApplyResponse::Changed { repeated: true, refusal: None },
                ChangeOutcome::Refused(refusal) => ApplyResponse::Changed {
                    repeated: false,
                    refusal: Some(Refusal { code: refusal.code(), message: refusal.to_string() }),
                },
            }
        }
        Err(error) => {
            commit_record(applied, record);
            ApplyResponse::Refused { reason: error.to_string() }
        }
    }
}

/// The meta of the last checkpoint, `None` before the first.
fn last_checkpoint(ledger: &Ledger) -> Option<SnapshotMeta> {
    let bytes = ledger.storage().checkpoint()?;
    Some(decode(bytes, "checkpoint record").expect("the store holds a checkpoint it wrote"))
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
                EntryPayload::Normal(payload) => payload.len(),
                _ => 0,
            })
            .sum();
        let pipeline = self.views.pipeline.clone();
        let responses = crate::blocking::blocking_when(payload_bytes >= crate::blocking::LONG_WORK_BYTES_MIN, || {
            let mut applied = pipeline.lock();
            let mut responses = Vec::new();
            for entry in entries {
                self.record.applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => {
                        commit_record(&mut applied, &self.record);
                        ApplyResponse::NoOp
                    }
                    EntryPayload::Membership(membership) => {
                        self.record.membership = Membership::new(Some(entry.log_id), membership);
                        commit_record(&mut applied, &self.record);
                        ApplyResponse::NoOp
                    }
                    EntryPayload::Normal(LogPayload::Batch(bytes)) => {
                        apply_batch(&mut applied, &self.record, &bytes, &mut self.decoded)
                    }
                    EntryPayload::Normal(LogPayload::Signed(bytes)) => {
                        apply_signed(&mut applied, &self.record, entry.log_id.index, &bytes)
                    }
                    EntryPayload::Normal(LogPayload::RegistryChange(bytes)) => {
                        let response = apply_change(&mut applied, &self.record, entry.log_id.index, &bytes);
                        self.views.publish_registry(applied.ledger());
                        response
                    }
                };
                responses.push(response);
            }
            // Clients get their answers from these responses: the batches are in the durable log
            // and the store's overlay, so their commit to the store may wait (module documentation).
            // Batches old enough or many enough commit just after this call returns, written
            // without the ledger lock, so that no apply call waits for them. Only when commits fall
            // so far behind that twice as many wait does one run here, which bounds the overlay.
            pipeline.after_apply(&mut applied, self.defer_commits);
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
        let mut applied = self.views.pipeline.lock();
        drop(applied.take_ledger());
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
        let mut ledger = StateMachine::open(store);
        if let Some(genesis) = &self.genesis {
            ledger.secure(genesis.clone());
        }
        self.views.publish_registry(&ledger);
        applied.replace_ledger(ledger);
        drop(applied);
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        self.record = record;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshots = self.snapshots();
        let pipeline = self.views.pipeline.clone();
        let shared_unwritten = Arc::clone(&self.unwritten);
        let current = crate::blocking::blocking(|| -> io::Result<Option<Snapshot<TypeConfig>>> {
            let mut applied = pipeline.lock();
            let mut shared_unwritten = shared_unwritten.lock().expect("the unwritten snapshot lock is never poisoned");
            let Some(checkpoint) = last_checkpoint(applied.ledger()) else { return Ok(None) };
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
            let mut meta = None;
            let view = applied.commit_here(|ledger| {
                ledger.storage_mut().commit_checkpoint(|view| checkpoint_record(view, &mut meta))
            });
            let (meta, view) = checkpoint_made(meta, view);
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
