//! The commit pipeline: how applied batches reach the store's committed state without an apply
//! call, and so a client, waiting for a commit.
//!
//! A batch goes through five states, each with one name here, in the store and in ARCHITECTURE.md:
//!
//! 1. **deferred**: applied to the ledger's overlay, answered from it, and held by the durable
//!    Raft log; no commit has taken it yet.
//! 2. **writing**: taken out of the overlay into a commit ([`Committable::begin_commit`]) that a
//!    thread writes without the ledger lock, while apply calls go on.
//! 3. **written**: that commit's redb transaction is committed; the result waits in a
//!    [`CommitSlot`] for whoever holds the ledger lock next to finish it.
//! 4. **committed**: finished ([`Committable::finish_commit`]): read views and caches see it, and
//!    the committed index readers wait on says so.
//! 5. **durable**: fsynced, by a durable commit at least every second or by a checkpoint (the
//!    store's concern; a crash before it costs a re-apply from the log, never a batch).
//!
//! The rules this module keeps, each tested on its own in `tests` below:
//! - at most one commit is writing at a time, and commits finish in the order they were taken;
//! - an apply call never waits for a commit being written, unless [`DEFERRED_EVENTS_HARD_MAX`]
//!   events are deferred (which bounds the overlay);
//! - a commit that must happen at once (a refused or non-batch entry, an expiry, a checkpoint)
//!   first waits for the one being written and finishes it;
//! - the committed index never goes backwards, and a reader waiting for an index is woken once
//!   views reach it;
//! - a writer that panics marks its slot failed: the replica reports it and stops (fail-stop).
//!
//! This module owns the ledger lock, the commit slot and when commits run. It knows nothing of
//! openraft, redb or snapshot files: the ledger is any [`Committable`], and scheduled commits run
//! on an injected [`Scheduler`], so that the tests drive every interleaving themselves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tally_state_machine::constants::EVENTS_PER_BATCH_MAX;
use tokio::sync::watch;

/// Events a replica keeps deferred before it commits them (16 full batches: an overlay of about
/// 25 MB), after the apply call, without the ledger lock. Committing 16 batches together writes
/// each account row and B-tree page once instead of 16 times (BENCHMARKS.md).
pub const DEFERRED_EVENTS_MAX: usize = 16 * EVENTS_PER_BATCH_MAX;
/// The most events a replica keeps deferred while a commit is writing: at this many an apply call
/// commits them itself, and waits for the commit writing first.
pub const DEFERRED_EVENTS_HARD_MAX: usize = 2 * DEFERRED_EVENTS_MAX;
/// The longest a replica keeps batches deferred while it applies more; the node's ticker commits
/// older ones when no more come. The node sets it by role
/// ([`CommitPipeline::set_deferred_age_max`]): the leader commits sooner, since its commits delay
/// its answers, and followers, which serve no reads, later, which writes each page less often.
pub const DEFERRED_AGE_MAX: Duration = Duration::from_millis(200);
/// The deferral a follower may use instead (see [`DEFERRED_AGE_MAX`]).
pub const DEFERRED_AGE_MAX_FOLLOWER: Duration = Duration::from_secs(1);

/// A ledger whose deferred batches can be committed in the pipeline's steps.
pub trait Committable: Send + 'static {
    /// Deferred batches taken out of the ledger, to be written without the lock.
    type Commit: Send + 'static;
    /// A commit written, for the ledger to finish.
    type Written: Send + 'static;

    /// Takes the deferred batches out for a commit (deferred → writing); `None` when there are
    /// none. Only ever called with no commit writing.
    fn begin_commit(&mut self) -> Option<Self::Commit>;
    /// Writes a commit (writing → written), on any thread, without the ledger.
    fn write(commit: Self::Commit) -> Self::Written;
    /// Makes a written commit the committed state (written → committed).
    fn finish_commit(&mut self, written: Self::Written);
    /// The log index that views of the committed state reach.
    fn committed_index(&self) -> Option<u64>;
}

/// Runs a scheduled commit on a thread that may block.
pub trait Scheduler: Send + Sync + 'static {
    /// Runs `job` soon, on a thread that may block; `false` if it cannot (the caller then
    /// commits itself).
    fn spawn_blocking(&self, job: Box<dyn FnOnce() + Send>) -> bool;
}

/// Scheduled commits run on the tokio runtime's blocking threads; without a runtime (tests, tools)
/// the caller commits itself.
#[derive(Debug)]
pub struct TokioScheduler;

impl Scheduler for TokioScheduler {
    fn spawn_blocking(&self, job: Box<dyn FnOnce() + Send>) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
        runtime.spawn_blocking(job);
        true
    }
}

/// Where a commit written without the ledger lock is handed back, for whoever holds the lock
/// next to finish.
#[derive(Debug)]
pub struct CommitSlot<W> {
    state: Mutex<SlotState<W>>,
    changed: Condvar,
    /// Threads waiting for the writer (what the tests watch to know a thread is blocked here).
    #[cfg(test)]
    waiters: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
enum SlotState<W> {
    Writing,
    Written(W),
    Finished,
    /// The writer panicked: the store cannot write, and the replica stops (fail-stop).
    Failed,
}

impl<W> CommitSlot<W> {
    fn new() -> CommitSlot<W> {
        CommitSlot {
            state: Mutex::new(SlotState::Writing),
            changed: Condvar::new(),
            #[cfg(test)]
            waiters: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<W>> {
        self.state.lock().expect("the commit slot lock is never poisoned")
    }

    fn set(&self, state: SlotState<W>) {
        *self.lock() = state;
        self.changed.notify_all();
    }

    fn is_writing(&self) -> bool {
        matches!(*self.lock(), SlotState::Writing)
    }

    fn has_failed(&self) -> bool {
        matches!(*self.lock(), SlotState::Failed)
    }

    /// Waits until the writer is done, leaving what it wrote for the lock holder to finish.
    fn wait_until_written(&self) -> MutexGuard<'_, SlotState<W>> {
        let mut state = self.lock();
        #[cfg(test)]
        self.waiters.fetch_add(1, Ordering::SeqCst);
        while matches!(*state, SlotState::Writing) {
            state = self.changed.wait(state).expect("the commit slot lock is never poisoned");
        }
        #[cfg(test)]
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        assert!(!matches!(*state, SlotState::Failed), "a ledger commit failed: the replica cannot write its ledger");
        state
    }

    /// Waits until the writer is done; the written commit, once (`None` after it was finished).
    fn wait_written(&self) -> Option<W> {
        match std::mem::replace(&mut *self.wait_until_written(), SlotState::Finished) {
            SlotState::Written(written) => Some(written),
            _ => None,
        }
    }
}

/// The ledger and its deferred batches, behind the ledger lock. The apply path holds the lock for
/// a whole apply call, so whoever else takes it finds whole batches only.
#[derive(Debug)]
pub struct Pipeline<L: Committable> {
    /// `None` only while a snapshot is being installed.
    ledger: Option<L>,
    deferred_events: usize,
    deferred_since: Option<Instant>,
    /// The commit writing without this lock, or written and not finished yet.
    writing: Option<Arc<CommitSlot<L::Written>>>,
    /// The log index that views reach, published after every commit.
    committed: Arc<watch::Sender<Option<u64>>>,
}

impl<L: Committable> Pipeline<L> {
    pub fn ledger(&self) -> &L {
        self.ledger.as_ref().expect("the ledger is present outside a snapshot install")
    }

    pub fn ledger_mut(&mut self) -> &mut L {
        self.ledger.as_mut().expect("the ledger is present outside a snapshot install")
    }

    /// Takes the ledger away (to replace its store) after finishing the commit writing, if any.
    pub fn take_ledger(&mut self) -> Option<L> {
        self.finish_writing();
        self.ledger.take()
    }

    /// Puts a ledger in place (an installed snapshot's); what it holds is committed, and the
    /// committed index is what it reaches.
    pub fn replace_ledger(&mut self, ledger: L) {
        assert!(self.writing.is_none(), "a ledger replaced while a commit is writing");
        self.committed.send_replace(ledger.committed_index());
        self.ledger = Some(ledger);
        self.after_commit();
    }

    /// Counts `events` applied and deferred.
    pub fn defer(&mut self, events: usize) {
        self.deferred_events += events;
        self.deferred_since.get_or_insert_with(Instant::now);
    }

    /// Commits here and now with `commit` (which commits the deferred batches, if any, with what
    /// else it writes), after finishing the commit writing, if any.
    pub fn commit_here<T>(&mut self, commit: impl FnOnce(&mut L) -> T) -> T {
        self.finish_writing();
        let made = commit(self.ledger_mut());
        self.after_commit();
        made
    }

    /// Commits the deferred batches, if any, here and now, after finishing the commit writing, if
    /// any.
    pub fn commit_deferred(&mut self) {
        self.finish_writing();
        if self.has_deferred() {
            if let Some(commit) = self.ledger_mut().begin_commit() {
                let written = L::write(commit);
                self.ledger_mut().finish_commit(written);
            }
            self.after_commit();
        }
    }

    /// Whether anything applied is deferred.
    pub fn has_deferred(&self) -> bool {
        self.deferred_since.is_some()
    }

    /// Finishes the commit writing without the lock, if any, waiting for its writer (which needs
    /// no lock to finish writing).
    fn finish_writing(&mut self) {
        let Some(slot) = self.writing.take() else { return };
        if let Some(written) = slot.wait_written() {
            self.ledger_mut().finish_commit(written);
            self.publish_committed();
        }
    }

    /// Hands the deferred batches to a commit about to be written without the lock: nothing is
    /// deferred any more, and whoever takes the lock next waits for or finishes that commit.
    fn start_writing(&mut self) -> Arc<CommitSlot<L::Written>> {
        let slot = Arc::new(CommitSlot::new());
        self.writing = Some(Arc::clone(&slot));
        self.deferred_events = 0;
        self.deferred_since = None;
        slot
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
        let committed = self.ledger().committed_index();
        let current = *self.committed.borrow();
        assert!(committed >= current, "the committed index went back from {current:?} to {committed:?}");
        self.committed.send_if_modified(|current| std::mem::replace(current, committed) != committed);
    }
}

/// The shared handle on the pipeline: the apply path, the readers that need batches committed,
/// the node's ticker and scheduled commits all hold one.
pub struct CommitPipeline<L: Committable> {
    shared: Arc<Mutex<Pipeline<L>>>,
    committed: Arc<watch::Sender<Option<u64>>>,
    /// How long batches may stay deferred, in milliseconds.
    deferred_age_max_ms: Arc<AtomicU64>,
    /// A commit is scheduled to run after the current apply call ([`CommitPipeline::commit_soon`]).
    commit_scheduled: Arc<AtomicBool>,
    scheduler: Arc<dyn Scheduler>,
}

impl<L: Committable> Clone for CommitPipeline<L> {
    fn clone(&self) -> Self {
        CommitPipeline {
            shared: Arc::clone(&self.shared),
            committed: Arc::clone(&self.committed),
            deferred_age_max_ms: Arc::clone(&self.deferred_age_max_ms),
            commit_scheduled: Arc::clone(&self.commit_scheduled),
            scheduler: Arc::clone(&self.scheduler),
        }
    }
}

impl<L: Committable> std::fmt::Debug for CommitPipeline<L> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("CommitPipeline").field("committed", &*self.committed.borrow()).finish()
    }
}

impl<L: Committable> CommitPipeline<L> {
    /// A pipeline for `ledger`, whose committed state is all it holds.
    pub fn new(ledger: L, scheduler: Arc<dyn Scheduler>) -> CommitPipeline<L> {
        let committed = Arc::new(watch::Sender::new(ledger.committed_index()));
        let pipeline = Pipeline {
            ledger: Some(ledger),
            deferred_events: 0,
            deferred_since: None,
            writing: None,
            committed: Arc::clone(&committed),
        };
        CommitPipeline {
            shared: Arc::new(Mutex::new(pipeline)),
            committed,
            deferred_age_max_ms: Arc::new(AtomicU64::new(
                u64::try_from(DEFERRED_AGE_MAX.as_millis()).expect("a small constant"),
            )),
            commit_scheduled: Arc::new(AtomicBool::new(false)),
            scheduler,
        }
    }

    /// The ledger lock, as the apply path takes it: it may find a commit writing, and goes on.
    pub fn lock(&self) -> MutexGuard<'_, Pipeline<L>> {
        self.shared.lock().expect("the ledger lock is never poisoned")
    }

    /// After an apply call's batches were deferred, still under its lock: schedules a commit of
    /// them, without the lock, once they are many or old enough; commits them here (waiting for
    /// the commit writing, if any) when twice that many wait, when `defer_commits` is off, or when
    /// no scheduler can run the commit.
    pub fn after_apply(&self, pipeline: &mut Pipeline<L>, defer_commits: bool) {
        let due =
            pipeline.deferred_events >= DEFERRED_EVENTS_MAX || pipeline.deferred_longer_than(self.deferred_age_max());
        let commit_now =
            !defer_commits || pipeline.deferred_events >= DEFERRED_EVENTS_HARD_MAX || (due && !self.commit_soon());
        if commit_now {
            crate::blocking::blocking(|| pipeline.commit_deferred());
        }
    }

    /// Why this ledger can no longer apply or commit, if it cannot: a commit failed (a storage
    /// error, never retried: the replica recovers from its log on restart) or a panic broke the
    /// ledger lock. Health checks ask this; the failure also stops the next apply call. It never
    /// waits for the ledger lock (apply holds it for milliseconds at a time): a lock that is busy
    /// is in use, not broken, and the next check looks again.
    pub fn failure(&self) -> Option<&'static str> {
        match self.shared.try_lock() {
            Err(std::sync::TryLockError::Poisoned(_)) => Some("a panic while applying broke the ledger lock"),
            Err(std::sync::TryLockError::WouldBlock) => None,
            Ok(pipeline) => pipeline
                .writing
                .as_ref()
                .is_some_and(|slot| slot.has_failed())
                .then_some("a ledger commit failed: the store cannot write"),
        }
    }

    /// How long batches may stay deferred (default [`DEFERRED_AGE_MAX`]).
    pub fn deferred_age_max(&self) -> Duration {
        Duration::from_millis(self.deferred_age_max_ms.load(Ordering::Relaxed))
    }

    /// Sets how long batches may stay deferred (the node sets it by role).
    pub fn set_deferred_age_max(&self, age: Duration) {
        let millis = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        self.deferred_age_max_ms.store(millis, Ordering::Relaxed);
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
        let pipeline = self.clone();
        // A panicked commit stops the replica (fail-stop); the wait below then never ends, and
        // the caller's deadline answers.
        let _ = tokio::task::spawn_blocking(move || pipeline.commit_applied()).await;
        // The sender lives as long as any pipeline handle does, so this ends when the index is
        // reached.
        let _ = receiver.wait_for(reached).await;
    }

    /// Commits every batch applied so far (blocking). The batches are written without the ledger
    /// lock, so apply calls go on meanwhile: a commit of 200 ms of batches took 40-380 ms on the
    /// leader, and an apply call that waited for it delayed its clients by as much (BENCHMARKS.md).
    pub fn commit_applied(&self) {
        self.commit_applied_then(|| {});
    }

    /// [`CommitPipeline::commit_applied`], calling `begun` (under the ledger lock) once this commit
    /// has taken its batches or found none, before it writes them.
    fn commit_applied_then(&self, begun: impl FnOnce()) {
        self.write_unlocked(
            |pipeline| {
                let commit = if pipeline.has_deferred() { pipeline.ledger_mut().begin_commit() } else { None };
                if commit.is_none() {
                    pipeline.after_commit();
                }
                begun();
                commit
            },
            |commit| (L::write(commit), ()),
        );
    }

    /// Takes a commit with `begin` under the ledger lock, once no other commit is writing, writes
    /// it with `write` without the lock, then finishes it (unless whoever took the lock meanwhile
    /// did). `begin` returning `None` takes nothing; then nothing is written.
    pub fn write_unlocked<C, T>(
        &self,
        begin: impl FnOnce(&mut Pipeline<L>) -> Option<C>,
        write: impl FnOnce(C) -> (L::Written, T),
    ) -> Option<T> {
        let mut pipeline = self.lock_between_commits();
        let commit = begin(&mut pipeline)?;
        let slot = pipeline.start_writing();
        drop(pipeline);
        let made = write_in(&slot, || write(commit));
        let mut pipeline = self.lock();
        if pipeline.writing.as_ref().is_some_and(|writing| Arc::ptr_eq(writing, &slot)) {
            pipeline.finish_writing();
        }
        Some(made)
    }

    /// The ledger lock, once no commit is writing without it (waiting for the one writing, if
    /// any, without the lock) and the last one written is finished.
    pub fn lock_between_commits(&self) -> MutexGuard<'_, Pipeline<L>> {
        loop {
            let mut pipeline = self.lock();
            if let Some(slot) = pipeline.writing.as_ref().filter(|slot| slot.is_writing()).map(Arc::clone) {
                drop(pipeline);
                drop(slot.wait_until_written());
                continue;
            }
            pipeline.finish_writing();
            return pipeline;
        }
    }

    /// Commits every batch applied so far on the scheduler, once the apply call under way lets go
    /// of the ledger; at most one such commit waits to take its batches at a time (another may be
    /// writing meanwhile). `false` when the scheduler cannot run it: the caller must commit itself.
    fn commit_soon(&self) -> bool {
        if self.commit_scheduled.swap(true, Ordering::AcqRel) {
            return true;
        }
        let pipeline = self.clone();
        let job = Box::new(move || {
            pipeline.commit_applied_then(|| pipeline.commit_scheduled.store(false, Ordering::Release));
        });
        let scheduled = self.scheduler.spawn_blocking(job);
        if !scheduled {
            self.commit_scheduled.store(false, Ordering::Release);
        }
        scheduled
    }

    /// Commits the deferred batches if the oldest has waited [`CommitPipeline::deferred_age_max`]
    /// or more (blocking). The node calls this on a ticker, so that batches applied just before
    /// the cluster went quiet become visible to views.
    pub fn commit_if_due(&self) {
        let age = self.deferred_age_max();
        if self.lock().deferred_longer_than(age) {
            self.commit_applied();
        }
    }
}

/// Writes a commit taken out of the ledger, and leaves it in `slot` for whoever holds the ledger
/// lock next to finish; a writer that panics marks the slot failed, which stops the replica.
fn write_in<W, T>(slot: &CommitSlot<W>, write: impl FnOnce() -> (W, T)) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)) {
        Ok((written, made)) => {
            slot.set(SlotState::Written(written));
            made
        }
        Err(panic) => {
            slot.set(SlotState::Failed);
            std::panic::resume_unwind(panic);
        }
    }
}

#[cfg(test)]
mod tests;
