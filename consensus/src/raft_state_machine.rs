//! The ledger as openraft's state machine: applying committed entries, and building, sending and
//! installing snapshots.
//!
//! Each normal entry is one ledger batch. The applied log id and the membership are committed in the
//! same redb transaction as the batch's data (see `ledger_store`), so after a crash the ledger and
//! its record of what it applied always agree, and openraft re-applies the log from there.
//!
//! A snapshot is one file: a short header with openraft's snapshot meta, followed by the ledger's
//! own snapshot format. It is written from a read view of the ledger store, so applying goes on
//! while it is built; it is installed into a fresh store file that replaces the old one by an atomic
//! rename.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use tally_state_machine::codec::decode_batch_into;
use tally_state_machine::{Batch, BatchOutcome, Operation, StateMachine, StorageRead};

use crate::ledger_store::{LedgerReadView, RedbLedgerStore};
use crate::types::{
    ApplyResponse, ConsensusRecord, Entry, LogPayload, Membership, SnapshotMeta, StorageError, TypeConfig, decode,
    encode,
};

const LEDGER_FILE: &str = "ledger.redb";
const LEDGER_INSTALLING_FILE: &str = "ledger.installing.redb";
const SNAPSHOT_DIRECTORY: &str = "snapshots";
const CURRENT_SNAPSHOT: &str = "current.snapshot";
const SNAPSHOT_MAGIC: &[u8; 8] = b"TALLYRSN";
/// The largest snapshot meta header accepted from a file (it holds a membership of a few nodes).
const SNAPSHOT_META_BYTES_MAX: u32 = 1024 * 1024;

fn state_machine_error(verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(error.to_string())).into()
}

fn snapshot_error(verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(error.to_string())).into()
}

/// Read views of the replica's ledger for anyone outside openraft (queries, status), valid across
/// snapshot installs, which replace the store underneath.
#[derive(Clone, Debug)]
pub struct LedgerViews {
    database: Arc<RwLock<Arc<redb::Database>>>,
}

impl LedgerViews {
    /// A consistent view of the last committed state.
    pub fn view(&self) -> LedgerReadView {
        let database = Arc::clone(&self.database.read().expect("the views lock is never poisoned"));
        LedgerReadView::open(&database)
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
    /// `None` only while a snapshot is being installed.
    ledger: Option<StateMachine<RedbLedgerStore>>,
    record: ConsensusRecord,
    received_snapshots: u64,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
    views: LedgerViews,
    /// The last decoded batch, kept so that the next one reuses its allocation.
    decoded: Batch,
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
            if path.file_name().is_some_and(|name| name != CURRENT_SNAPSHOT) {
                remove_if_present(&path)?;
            }
        }
        let mut store =
            RedbLedgerStore::open(&directory.join(LEDGER_FILE), cache_bytes).map_err(|error| error.to_string())?;
        let mut record = match store.consensus_state() {
            Some(bytes) => decode(bytes, "consensus record").map_err(|error| error.to_string())?,
            None => ConsensusRecord::default(),
        };
        // The store commits without fsync, so after a crash it may hold less than this replica's
        // own snapshot, and the log behind that snapshot may be purged: start from the snapshot.
        if let Some((meta, mut file)) = open_snapshot(&snapshots.join(CURRENT_SNAPSHOT))
            .map_err(|error| format!("cannot read the current snapshot in {}: {error}", snapshots.display()))?
            && meta.last_log_id > record.applied
        {
            drop(store);
            record = install(directory, cache_bytes, &mut file, &meta)?;
            fs::rename(directory.join(LEDGER_INSTALLING_FILE), directory.join(LEDGER_FILE))
                .map_err(|error| format!("cannot move the restored ledger into place: {error}"))?;
            store =
                RedbLedgerStore::open(&directory.join(LEDGER_FILE), cache_bytes).map_err(|error| error.to_string())?;
            tracing::info!(
                snapshot = %meta.snapshot_id,
                last_log_id = ?meta.last_log_id,
                "restored the ledger from this replica's snapshot: the store was behind it after a crash"
            );
        }
        store.defer_commits();
        let views = LedgerViews { database: Arc::new(RwLock::new(store.database())) };
        Ok(LedgerStateMachine {
            directory: directory.to_owned(),
            cache_bytes,
            views,
            ledger: Some(StateMachine::open(store)),
            record,
            received_snapshots: 0,
            receiving: None,
            decoded: Batch { timestamp: 0, operation: Operation::ExpirePendingTransfers },
        })
    }

    /// Read views of this ledger that stay valid after the state machine moves into openraft.
    pub fn views(&self) -> LedgerViews {
        self.views.clone()
    }

    /// The ledger, for reads while this value is still owned here.
    pub fn ledger(&self) -> &StateMachine<RedbLedgerStore> {
        self.ledger.as_ref().expect("the ledger is present outside a snapshot install")
    }

    fn ledger_mut(&mut self) -> &mut StateMachine<RedbLedgerStore> {
        self.ledger.as_mut().expect("the ledger is present outside a snapshot install")
    }

    /// Commits the consensus record alone, for entries that change no ledger data.
    fn commit_record(&mut self) {
        let bytes = encode(&self.record);
        self.ledger_mut().storage_mut().commit_consensus_state(bytes);
    }

    fn apply_batch(&mut self, bytes: &[u8]) -> ApplyResponse {
        let mut batch =
            std::mem::replace(&mut self.decoded, Batch { timestamp: 0, operation: Operation::ExpirePendingTransfers });
        let response = self.apply_decoded(bytes, &mut batch);
        self.decoded = batch;
        response
    }

    fn apply_decoded(&mut self, bytes: &[u8], batch: &mut Batch) -> ApplyResponse {
        if let Err(error) = decode_batch_into(bytes, batch) {
            self.commit_record();
            return ApplyResponse::Refused { reason: format!("malformed batch: {error}") };
        }
        let batch = &*batch;
        if matches!(batch.operation, Operation::ExpirePendingTransfers) {
            // Expiry scans committed state: earlier batches of this apply call go first.
            self.ledger_mut().storage_mut().commit_deferred();
        }
        let record = encode(&self.record);
        self.ledger_mut().storage_mut().stage_consensus_state(record);
        match self.ledger_mut().apply(batch) {
            Ok(BatchOutcome::Created(results)) => {
                ApplyResponse::Created { results: results.iter().map(|code| *code as u8).collect() }
            }
            Ok(BatchOutcome::Expired(ids)) => ApplyResponse::Expired { ids },
            Err(error) => {
                self.commit_record();
                ApplyResponse::Refused { reason: error.to_string() }
            }
        }
    }

    fn snapshots(&self) -> PathBuf {
        self.directory.join(SNAPSHOT_DIRECTORY)
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

/// Writes a complete snapshot file: written under a temporary name, fsynced, then renamed.
fn write_snapshot_file(directory: &Path, view: &LedgerReadView, meta: &SnapshotMeta) -> io::Result<PathBuf> {
    let building = directory.join(format!("building-{}.snapshot", meta.snapshot_id));
    let mut out = BufWriter::new(fs::File::create(&building)?);
    let header = encode(meta);
    out.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&u32::try_from(header.len()).expect("a small header").to_le_bytes())?;
    out.write_all(&header)?;
    tally_state_machine::snapshot::write_snapshot(view, &mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    let current = directory.join(CURRENT_SNAPSHOT);
    fs::rename(&building, &current)?;
    Ok(current)
}

fn open_snapshot(path: &Path) -> io::Result<Option<(SnapshotMeta, fs::File)>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let meta = read_snapshot_header(&mut BufReader::new(&mut file))?;
    file.seek(SeekFrom::Start(0))?;
    Ok(Some((meta, file)))
}

/// Builds snapshots from a read view taken when openraft asked for a builder.
#[derive(Debug)]
pub struct LedgerSnapshotBuilder {
    view: Option<LedgerReadView>,
    directory: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for LedgerSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let view = self.view.take().expect("a builder builds one snapshot");
        let directory = self.directory.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<(SnapshotMeta, PathBuf), String> {
            let record: ConsensusRecord = match view.consensus_state() {
                Some(bytes) => decode(bytes, "consensus record").map_err(|error| error.to_string())?,
                None => ConsensusRecord::default(),
            };
            let digest = tally_state_machine::digest::digest_hex(&view.meta_get().digest);
            let snapshot_id = match record.applied {
                Some(log_id) => format!("{}-{}-{}", log_id.leader_id.term, log_id.index, &digest[..16]),
                None => format!("empty-{}", &digest[..16]),
            };
            let meta = SnapshotMeta { last_log_id: record.applied, last_membership: record.membership, snapshot_id };
            let path = write_snapshot_file(&directory, &view, &meta).map_err(|error| error.to_string())?;
            Ok((meta, path))
        });
        let (meta, path) = written
            .await
            .map_err(|error| snapshot_error(ErrorVerb::Write, error))?
            .map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
        let file = tokio::fs::File::open(&path).await.map_err(|error| snapshot_error(ErrorVerb::Read, error))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
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
        // Applying a batch commits to redb synchronously; keep heartbeats flowing meanwhile.
        let responses = crate::blocking::blocking(|| {
            let mut responses = Vec::new();
            for entry in entries {
                self.record.applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => {
                        self.commit_record();
                        ApplyResponse::NoOp
                    }
                    EntryPayload::Membership(membership) => {
                        self.record.membership = Membership::new(Some(entry.log_id), membership);
                        self.commit_record();
                        ApplyResponse::NoOp
                    }
                    EntryPayload::Normal(LogPayload::Batch(bytes)) => self.apply_batch(&bytes),
                };
                responses.push(response);
            }
            // One commit for the batches of this call: openraft reports them applied (and clients
            // get their answers) only after this returns.
            self.ledger_mut().storage_mut().commit_deferred();
            responses
        });
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> LedgerSnapshotBuilder {
        LedgerSnapshotBuilder { view: Some(self.ledger().storage().read_view()), directory: self.snapshots() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        self.received_snapshots += 1;
        let path = self.snapshots().join(format!("receiving-{}.snapshot", self.received_snapshots));
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
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut file = snapshot.into_std().await;
        let directory = self.directory.clone();
        let cache_bytes = self.cache_bytes;
        let expected = meta.clone();
        let installed = tokio::task::spawn_blocking(move || install(&directory, cache_bytes, &mut file, &expected));
        let record = installed
            .await
            .map_err(|error| state_machine_error(ErrorVerb::Write, error))?
            .map_err(|error| state_machine_error(ErrorVerb::Write, error))?;
        // Swap the stores: close the old one, move the restored file over it, reopen.
        drop(self.ledger.take());
        let rename = fs::rename(self.directory.join(LEDGER_INSTALLING_FILE), self.directory.join(LEDGER_FILE));
        rename.map_err(|error| state_machine_error(ErrorVerb::Write, error))?;
        let mut store = RedbLedgerStore::open(&self.directory.join(LEDGER_FILE), self.cache_bytes)
            .map_err(|error| state_machine_error(ErrorVerb::Read, error))?;
        store.defer_commits();
        self.views.replace(store.database());
        self.ledger = Some(StateMachine::open(store));
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        self.record = record;
        if let Some(received) = self.receiving.take() {
            remove_if_present(&received).map_err(|error| snapshot_error(ErrorVerb::Delete, error))?;
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.snapshots().join(CURRENT_SNAPSHOT);
        let opened = tokio::task::spawn_blocking(move || open_snapshot(&path))
            .await
            .map_err(|error| snapshot_error(ErrorVerb::Read, error))?
            .map_err(|error| snapshot_error(ErrorVerb::Read, error))?;
        Ok(opened.map(|(meta, file)| Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}

/// Restores a received snapshot file into a new store file beside the live one and keeps the
/// file as the replica's current snapshot. Returns the consensus record the store now holds.
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
    drop(ledger);
    // Keep the received file as this replica's current snapshot, for the next lagging peer.
    file.seek(SeekFrom::Start(0)).map_err(|error| error.to_string())?;
    let snapshots = directory.join(SNAPSHOT_DIRECTORY);
    let copy = snapshots.join(format!("installed-{}.snapshot", meta.snapshot_id));
    let mut out = fs::File::create(&copy).map_err(|error| error.to_string())?;
    io::copy(file, &mut out).map_err(|error| error.to_string())?;
    out.sync_all().map_err(|error| error.to_string())?;
    fs::rename(&copy, snapshots.join(CURRENT_SNAPSHOT)).map_err(|error| error.to_string())?;
    Ok(record)
}
