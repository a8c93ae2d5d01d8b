//! The ledger's durable store: the `Storage` of `tally-state-machine` on redb.
//!
//! A batch's writes collect in an in-memory [`Overlay`]: point reads consult it first, and a failed
//! linked chain rolls back inside it. `meta_put`, called once at the end of every batch, writes the
//! overlay and the meta record in one redb transaction, or, once the owner defers commits
//! ([`RedbLedgerStore::defer_commits`], as every replica does), keeps the meta so that a later
//! commit writes the whole batches deferred so far with it: either way the data of a batch and the
//! meta that says it was applied become durable together or not at all. Scans read the last committed state
//! through read handles that are refreshed after each commit; the ledger never scans with a batch
//! half applied.
//!
//! An account's transfers are indexed by `(account id, transfer timestamp)`. Writing that index
//! key by key would dirty one B-tree leaf per account a batch touches, which cost about 70% of the
//! store's time (BENCHMARKS.md); instead each batch appends its postings as one sorted *run*, and
//! once enough runs have gathered they are merged into rows of up to 504 timestamps per account,
//! one row per account the merge touches. A merge is spread over the commits that follow, each
//! merging the next accounts ([`INDEX_MERGE_SLICES`](account_index::INDEX_MERGE_SLICES)); meanwhile a scan skips, in the runs being
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
//! [`RedbLedgerStore::begin_commit`] moves the whole batches deferred so far out of the overlay into
//! a [`LedgerCommit`], which any thread writes while the store applies more into a fresh overlay.
//! Point reads consult the overlay, then the batches being written, then the committed state,
//! until [`RedbLedgerStore::finish_commit`] hands the written batches to the caches and the view.
//!
//! # Layout
//! - this file: [`RedbLedgerStore`], what it holds, and the ledger's reads and writes through it:
//!   point reads consult the overlay, then the commit being written, then the caches and the
//!   committed state; writes go to the overlay; the commit pipeline's store side (defer, begin,
//!   finish).
//! - `schema`: table definitions, meta keys, the format version and its upgrade; the helpers
//!   every module reads rows with.
//! - `encoding`: the byte layouts of transfer blocks, transfer-id chunks and account-index runs.
//! - `overlay`: the in-memory writes not yet taken by a commit.
//! - `commit`: writing taken batches in one transaction ([`LedgerCommit`]), and checkpoints.
//! - `account_index`: runs, merges, and merges spread over commits.
//! - `read_view`: every read of committed rows ([`LedgerReadView`]).
//!
//! Each module depends only on those listed after it (this file on all of them), so none imports
//! another in a circle.

mod account_index;
mod commit;
mod encoding;
mod overlay;
mod read_view;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;
use redb::{Database, Durability};
use tally_state_machine::registry::Registry;
use tally_state_machine::signed::SeenRequest;
use tally_state_machine::storage::{Direction, Storage, StorageRead, TimestampRange, Visit};
use tally_state_machine::{Account, AccountBalance, Ledger, PendingStatus, StateMeta, Transfer, TransferFailure};

use crate::direct_io::DirectWriteBackend;
use account_index::AccountIndexRuns;
pub use commit::{LedgerCommit, WrittenCommit};
use overlay::{Map, Overlay};
pub use read_view::LedgerReadView;
use schema::{FORMAT_VERSION, FORMATS_UPGRADED, META_CHECKPOINT, META_FORMAT};

/// The longest a store goes without a durable commit while it commits.
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

#[derive(Debug, thiserror::Error)]
pub enum LedgerStoreError {
    #[error("cannot open the ledger store at {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("{path} is not a Tally ledger store of this version (format {found:?})")]
    WrongFormat { path: String, found: String },
}

#[derive(Debug)]
pub struct RedbLedgerStore {
    database: Arc<Database>,
    last_durable_commit: std::time::Instant,
    committed: LedgerReadView,
    overlay: Overlay,
    /// Whole batches handed to a commit that is being written ([`RedbLedgerStore::begin_commit`]):
    /// reads find them here until the commit is finished.
    writing: Option<Arc<Overlay>>,
    /// The meta of the batches in `writing`.
    writing_meta: Option<StateMeta>,
    /// An emptied overlay, kept for its allocations.
    spare: Option<Overlay>,
    /// The consensus record to write with the next commit.
    deferred_consensus: Option<Vec<u8>>,
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
    /// When set, `meta_put` keeps the batch's meta (deferred) instead of committing, and the owner commits
    /// several whole batches at once with [`RedbLedgerStore::commit_deferred`].
    defer_commits: bool,
    /// The meta of the last whole batch in the overlay, when commits are deferred.
    deferred_meta: Option<StateMeta>,
    /// The record of the last checkpoint ([`RedbLedgerStore::commit_checkpoint`]).
    checkpoint: Option<Vec<u8>>,
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
        schema::initialise(&database).map_err(open_error)?;
        let mut format = schema::read_meta(&database, META_FORMAT).map_err(open_error)?.unwrap_or_default();
        if FORMATS_UPGRADED.contains(&format.as_slice()) {
            schema::upgrade_format(&database).map_err(open_error)?;
            format = FORMAT_VERSION.to_vec();
        }
        if format != FORMAT_VERSION {
            let found = String::from_utf8_lossy(&format).into_owned();
            return Err(LedgerStoreError::WrongFormat { path: path.display().to_string(), found });
        }
        let checkpoint = schema::read_meta(&database, META_CHECKPOINT).map_err(open_error)?;
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
            writing: None,
            writing_meta: None,
            spare: None,
            deferred_consensus: None,
            accounts_cache,
            accounts_cache_complete,
            ledgers_cache,
            ledgers_cache_complete,
            index: Arc::new(Mutex::new(index)),
            committed_ids_max,
            defer_commits: false,
            deferred_meta: None,
            checkpoint,
        })
    }

    /// Merges account-index runs once they hold this many postings (default
    /// [`INDEX_MERGE_POSTINGS_DEFAULT`]); tests set it low to exercise merges.
    #[cfg(test)]
    pub(crate) fn set_index_merge_postings(&mut self, postings: usize) {
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
    #[cfg(test)]
    pub(crate) fn index_runs(&self) -> usize {
        self.index.lock().expect("the index lock is never poisoned").runs
    }

    /// Whether an account-index merge is under way (spread over commits, [`INDEX_MERGE_SLICES`](account_index::INDEX_MERGE_SLICES)).
    #[cfg(test)]
    pub(crate) fn index_merging(&self) -> bool {
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
    pub fn defer_consensus_state(&mut self, record: Vec<u8>) {
        self.deferred_consensus = Some(record);
    }

    /// Commits a consensus record on its own, for log entries that change no ledger data.
    pub fn commit_consensus_state(&mut self, record: Vec<u8>) {
        // With deferred commits the overlay may hold whole batches (their meta is deferred), which
        // commit with the record; otherwise it must be empty.
        assert!(
            self.overlay.is_empty() || self.deferred_meta.is_some(),
            "a consensus record alone must not carry half a batch"
        );
        self.deferred_consensus = Some(record);
        let meta = self.deferred_meta.take();
        self.commit(meta);
    }

    /// From now on, `meta_put` (the end of each batch) defers instead of committing: the owner
    /// calls [`RedbLedgerStore::commit_deferred`] after several batches. Committing the batches of
    /// one apply call together writes each B-tree page once instead of once per batch; scans (which
    /// read committed state) must wait for that commit.
    pub fn defer_commits(&mut self) {
        self.defer_commits = true;
    }

    /// Commits the whole batches deferred since the last commit, with the deferred consensus record.
    pub fn commit_deferred(&mut self) {
        if let Some(meta) = self.deferred_meta.take() {
            self.commit(Some(meta));
        } else {
            assert!(self.overlay.is_empty(), "writes without the end of their batch");
        }
    }

    /// Takes the whole batches deferred since the last commit (with the deferred consensus record) out
    /// of the overlay, for [`LedgerCommit::write`] to write on any thread while this store applies
    /// more; reads find them in memory until [`RedbLedgerStore::finish_commit`]. `None` when no
    /// batch is deferred. One commit at a time: the one under way must be finished first.
    pub fn begin_commit(&mut self) -> Option<LedgerCommit> {
        match self.deferred_meta.take() {
            Some(meta) => Some(self.take_commit(Some(meta))),
            None => {
                assert!(self.overlay.is_empty(), "writes without the end of their batch");
                None
            }
        }
    }

    /// Whether a commit was begun and not finished yet.
    #[cfg(test)]
    pub(crate) fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Makes a written commit the store's committed state: its batches move from memory to the
    /// caches and to the read view.
    pub fn finish_commit(&mut self, mut written: WrittenCommit) {
        let writing = self.writing.take().expect("finishing a commit that was begun");
        assert!(Arc::ptr_eq(&writing, &written.overlay), "finishing the commit this store began");
        if let Some(checkpoint) = written.checkpoint.take() {
            self.checkpoint = Some(checkpoint);
            self.last_durable_commit = std::time::Instant::now();
        }
        drop(written);
        let mut overlay = Arc::into_inner(writing).expect("nothing else holds a written commit's batches");
        self.cache_accounts(&overlay);
        self.cache_ledgers(&overlay);
        self.note_committed_ids(&overlay);
        self.writing_meta = None;
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

    /// [`RedbLedgerStore::begin_commit`] for a checkpoint: takes the whole batches deferred, if any,
    /// into a commit that [`LedgerCommit::write_checkpoint`] writes on any thread while this store
    /// applies more. One commit at a time: the one under way must be finished first.
    pub fn begin_checkpoint(&mut self) -> LedgerCommit {
        let meta = self.deferred_meta.take();
        if meta.is_none() {
            assert!(self.overlay.is_empty(), "writes without the end of their batch");
        }
        self.take_commit(meta)
    }

    fn assert_committed(&self) {
        assert!(
            self.overlay.is_empty() && self.writing.is_none(),
            "a scan must not run while a batch is half applied or being committed"
        );
    }

    /// The writes not committed yet, newest first: the overlay, then a commit being written.
    fn uncommitted(&self) -> impl Iterator<Item = &Overlay> {
        std::iter::once(&self.overlay).chain(self.writing.as_deref())
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

    /// Moves the overlay (with `meta` and the deferred consensus record) into a commit to write.
    fn take_commit(&mut self, meta: Option<StateMeta>) -> LedgerCommit {
        assert!(self.writing.is_none(), "one commit at a time: finish the one under way first");
        let durability = if self.last_durable_commit.elapsed() >= DURABLE_COMMIT_INTERVAL {
            self.last_durable_commit = std::time::Instant::now();
            Durability::Immediate
        } else {
            Durability::None
        };
        let emptied = self.spare.take().unwrap_or_default();
        let overlay = Arc::new(std::mem::replace(&mut self.overlay, emptied));
        self.writing = Some(Arc::clone(&overlay));
        self.writing_meta = meta;
        LedgerCommit {
            database: Arc::clone(&self.database),
            overlay,
            meta,
            consensus: self.deferred_consensus.take(),
            durability,
            index: Arc::clone(&self.index),
        }
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
        let uncommitted = match &self.writing {
            None => self.overlay.accounts.get(&id),
            Some(writing) => self.overlay.accounts.get(&id).or_else(|| writing.accounts.get(&id)),
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
        self.deferred_meta.or(self.writing_meta).unwrap_or(self.committed.meta)
    }

    fn registry_get(&self) -> Option<Registry> {
        match self.uncommitted().find_map(|overlay| overlay.registry.as_ref()) {
            Some(registry) => Some(registry.clone()),
            None => self.committed.registry_get(),
        }
    }

    fn request_seen_get(&self, principal: u64, request_id: u128) -> Option<SeenRequest> {
        match self.uncommitted().find_map(|overlay| overlay.requests_seen.get(&(principal, request_id))) {
            Some(seen) => seen.clone(),
            None => self.committed.request_seen_get(principal, request_id),
        }
    }

    /// Merges the committed index with the overlays' own additions, leaving out what they removed:
    /// the ledger forgets requests with every signed batch, so this scan cannot wait for a commit.
    /// (An entry is never added again once removed: a request id used again has a later deadline.)
    fn requests_seen_due_scan(&self, deadline_max: u64, visit: Visit<(u64, u64, u128)>) {
        let bounds = ..=(deadline_max, u64::MAX, u128::MAX);
        let removed =
            |due: &(u64, u64, u128)| self.uncommitted().any(|overlay| overlay.requests_seen_due_removed.contains(due));
        let mut added: Vec<(u64, u64, u128)> =
            self.uncommitted().flat_map(|overlay| overlay.requests_seen_due_added.range(bounds).copied()).collect();
        added.sort_unstable();
        let mut added = added.into_iter().filter(|due| !removed(due)).peekable();
        let mut stopped = false;
        self.committed.requests_seen_due_scan(deadline_max, &mut |committed| {
            while let Some(earlier) = added.next_if(|due| due < committed) {
                if visit(&earlier).is_break() {
                    stopped = true;
                    return ControlFlow::Break(());
                }
            }
            if removed(committed) {
                return ControlFlow::Continue(());
            }
            let flow = visit(committed);
            stopped = flow.is_break();
            flow
        });
        if !stopped {
            let _ = added.try_for_each(|due| visit(&due));
        }
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

    fn registry_put(&mut self, registry: &Registry) {
        self.overlay.registry = Some(registry.clone());
    }

    fn request_seen_insert(&mut self, seen: &SeenRequest) {
        self.overlay.requests_seen.insert((seen.principal, seen.request_id), Some(seen.clone()));
        let due = seen.due();
        if !self.overlay.requests_seen_due_removed.remove(&due) {
            self.overlay.requests_seen_due_added.insert(due);
        }
    }

    fn request_seen_remove(&mut self, due: (u64, u64, u128)) {
        let (_, principal, request_id) = due;
        self.overlay.requests_seen.insert((principal, request_id), None);
        if !self.overlay.requests_seen_due_added.remove(&due) {
            self.overlay.requests_seen_due_removed.insert(due);
        }
    }

    fn meta_put(&mut self, meta: &StateMeta) {
        if self.defer_commits {
            self.deferred_meta = Some(*meta);
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
