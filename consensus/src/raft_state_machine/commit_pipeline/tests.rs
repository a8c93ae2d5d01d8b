//! The pipeline's ordering rules, each on its own, against a ledger whose commits the test holds
//! and releases, and a scheduler whose jobs the test runs when it chooses. No rule is checked by
//! timing: a thread's progress is observed (a step recorded, a thread waiting on the commit slot),
//! and waits are bounded only so that a broken rule fails instead of hanging.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::*;

/// What the fake ledger saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Commit `number` took these deferred batches.
    Began {
        number: u64,
        batches: Vec<u64>,
    },
    Wrote(u64),
    Finished(u64),
}

/// What every part of the fake shares: the steps, the commits held back, and the writers.
#[derive(Default)]
struct World {
    steps: Mutex<Vec<Step>>,
    held: Mutex<HashSet<u64>>,
    released: Condvar,
    /// Commits whose writer panics.
    failing: Mutex<HashSet<u64>>,
    writers: AtomicUsize,
}

impl World {
    fn record(&self, step: Step) {
        self.steps.lock().unwrap().push(step);
    }

    fn steps(&self) -> Vec<Step> {
        self.steps.lock().unwrap().clone()
    }

    fn hold(&self, number: u64) {
        self.held.lock().unwrap().insert(number);
    }

    fn release(&self, number: u64) {
        self.held.lock().unwrap().remove(&number);
        self.released.notify_all();
    }

    fn began(&self, number: u64) -> bool {
        self.steps().iter().any(|step| matches!(step, Step::Began { number: began, .. } if *began == number))
    }
}

/// A ledger of numbered batches: applying defers a batch, a commit takes all deferred ones.
struct FakeLedger {
    deferred: Vec<u64>,
    /// A commit was begun and not finished (the real store allows one at a time).
    unfinished: bool,
    commits: u64,
    committed_last: Option<u64>,
    world: Arc<World>,
}

struct FakeCommit {
    number: u64,
    batches: Vec<u64>,
    world: Arc<World>,
}

struct FakeWritten {
    number: u64,
    last: Option<u64>,
}

impl Committable for FakeLedger {
    type Commit = FakeCommit;
    type Written = FakeWritten;

    fn begin_commit(&mut self) -> Option<FakeCommit> {
        assert!(!self.unfinished, "a commit begun before the last one was finished");
        if self.deferred.is_empty() {
            return None;
        }
        self.unfinished = true;
        self.commits += 1;
        let batches = std::mem::take(&mut self.deferred);
        self.world.record(Step::Began { number: self.commits, batches: batches.clone() });
        Some(FakeCommit { number: self.commits, batches, world: Arc::clone(&self.world) })
    }

    fn write(commit: FakeCommit) -> FakeWritten {
        let world = &commit.world;
        let others = world.writers.fetch_add(1, Ordering::SeqCst);
        assert_eq!(others, 0, "two commits writing at once");
        let mut held = world.held.lock().unwrap();
        while held.contains(&commit.number) {
            held = world.released.wait(held).unwrap();
        }
        drop(held);
        world.writers.fetch_sub(1, Ordering::SeqCst);
        if world.failing.lock().unwrap().contains(&commit.number) {
            panic!("commit {} cannot write (injected)", commit.number);
        }
        world.record(Step::Wrote(commit.number));
        FakeWritten { number: commit.number, last: commit.batches.last().copied() }
    }

    fn finish_commit(&mut self, written: FakeWritten) {
        assert!(self.unfinished, "a commit finished twice");
        self.unfinished = false;
        self.world.record(Step::Finished(written.number));
        self.committed_last = written.last.or(self.committed_last);
    }

    fn committed_index(&self) -> Option<u64> {
        self.committed_last
    }
}

/// Jobs wait until the test runs them, each on a thread of its own.
#[derive(Default)]
struct HeldScheduler {
    jobs: Mutex<VecDeque<Box<dyn FnOnce() + Send>>>,
}

impl Scheduler for HeldScheduler {
    fn spawn_blocking(&self, job: Box<dyn FnOnce() + Send>) -> bool {
        self.jobs.lock().unwrap().push_back(job);
        true
    }
}

impl HeldScheduler {
    fn scheduled(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    fn run_next(&self) -> JoinHandle<()> {
        let job = self.jobs.lock().unwrap().pop_front().expect("a commit was scheduled");
        thread::spawn(job)
    }
}

/// Scheduled jobs run at once, each on a thread of its own.
#[derive(Default)]
struct ThreadScheduler {
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler for ThreadScheduler {
    fn spawn_blocking(&self, job: Box<dyn FnOnce() + Send>) -> bool {
        self.threads.lock().unwrap().push(thread::spawn(job));
        true
    }
}

fn pipeline_with(scheduler: Arc<dyn Scheduler>) -> (CommitPipeline<FakeLedger>, Arc<World>) {
    let world = Arc::new(World::default());
    let ledger = FakeLedger {
        deferred: Vec::new(),
        unfinished: false,
        commits: 0,
        committed_last: None,
        world: Arc::clone(&world),
    };
    let pipeline = CommitPipeline::new(ledger, scheduler);
    // Only the limit on deferred events makes commits due, unless a test says otherwise.
    pipeline.set_deferred_age_max(Duration::from_secs(3600));
    (pipeline, world)
}

/// One apply call of one batch of `events` events, as the state machine makes it.
fn apply(pipeline: &CommitPipeline<FakeLedger>, batch: u64, events: usize) {
    let mut locked = pipeline.lock();
    locked.ledger_mut().deferred.push(batch);
    locked.defer(events);
    pipeline.after_apply(&mut locked, true);
}

/// Waits for `condition`, failing (instead of hanging) if it does not come: a bound, not a timing.
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::yield_now();
    }
}

/// The slot of the commit writing (taken while it writes: a thread waiting in it may hold the
/// ledger lock).
fn writing_slot(pipeline: &CommitPipeline<FakeLedger>) -> Arc<CommitSlot<FakeWritten>> {
    Arc::clone(pipeline.lock().writing.as_ref().expect("a commit is writing"))
}

fn waiters(slot: &CommitSlot<FakeWritten>) -> usize {
    slot.waiters.load(Ordering::SeqCst)
}

fn began(number: u64, batches: impl IntoIterator<Item = u64>) -> Step {
    Step::Began { number, batches: batches.into_iter().collect() }
}

#[test]
fn an_apply_call_goes_on_while_a_commit_is_writing_and_the_next_commit_waits_its_turn() {
    let scheduler = Arc::new(HeldScheduler::default());
    let (pipeline, world) = pipeline_with(scheduler.clone());
    world.hold(1);
    apply(&pipeline, 1, DEFERRED_EVENTS_MAX / 2);
    assert_eq!(scheduler.scheduled(), 0, "half the deferral limit schedules nothing");
    apply(&pipeline, 2, DEFERRED_EVENTS_MAX / 2);
    assert_eq!(scheduler.scheduled(), 1, "the limit reached schedules one commit, after the apply call");
    let first = scheduler.run_next();
    wait_until("commit 1 takes batches 1 and 2", || world.began(1));
    let slot = writing_slot(&pipeline);

    // Commit 1 is writing (held). Apply calls go on, and the limit reached again schedules the next.
    let applier = {
        let pipeline = pipeline.clone();
        thread::spawn(move || {
            apply(&pipeline, 3, DEFERRED_EVENTS_MAX / 2);
            apply(&pipeline, 4, DEFERRED_EVENTS_MAX / 2);
        })
    };
    wait_until("apply calls return while commit 1 is writing", || applier.is_finished());
    applier.join().unwrap();
    assert_eq!(scheduler.scheduled(), 1);
    let second = scheduler.run_next();
    wait_until("commit 2 waits for commit 1's writer", || waiters(&slot) == 1);
    assert!(!world.began(2), "no commit begins while another is writing");
    // A commit waiting its turn waits without the ledger lock: apply calls still go on.
    let applier = {
        let pipeline = pipeline.clone();
        thread::spawn(move || apply(&pipeline, 5, 1))
    };
    wait_until("an apply call returns while commit 2 waits", || applier.is_finished());
    applier.join().unwrap();
    assert_eq!(pipeline.committed_index(), None, "nothing is committed before commit 1 is finished");

    world.release(1);
    first.join().unwrap();
    second.join().unwrap();
    assert_eq!(
        world.steps(),
        [began(1, [1, 2]), Step::Wrote(1), Step::Finished(1), began(2, [3, 4, 5]), Step::Wrote(2), Step::Finished(2)]
    );
    assert_eq!(pipeline.committed_index(), Some(5));
    assert!(!pipeline.lock().has_deferred());
}

#[test]
fn a_commit_that_must_happen_at_once_finishes_the_one_writing_first() {
    let (pipeline, world) = pipeline_with(Arc::new(HeldScheduler::default()));
    world.hold(1);
    apply(&pipeline, 1, 10);
    let writer = {
        let pipeline = pipeline.clone();
        thread::spawn(move || pipeline.commit_applied())
    };
    wait_until("commit 1 takes batch 1", || world.began(1));
    let slot = writing_slot(&pipeline);
    apply(&pipeline, 2, 10);

    // A refused entry, an expiry or a checkpoint commits under the lock, at once.
    let at_once = {
        let pipeline = pipeline.clone();
        thread::spawn(move || pipeline.lock().commit_deferred())
    };
    wait_until("the commit at once waits for commit 1's writer", || waiters(&slot) == 1);
    assert!(!world.began(2));
    world.release(1);
    at_once.join().unwrap();
    writer.join().unwrap();
    assert_eq!(
        world.steps(),
        [began(1, [1]), Step::Wrote(1), Step::Finished(1), began(2, [2]), Step::Wrote(2), Step::Finished(2)],
        "commit 1 is finished once, by whoever held the lock first, and before commit 2 begins"
    );
    assert_eq!(pipeline.committed_index(), Some(2));
}

#[test]
fn an_apply_call_with_twice_the_deferral_limit_waiting_commits_them_itself() {
    let scheduler = Arc::new(HeldScheduler::default());
    let (pipeline, world) = pipeline_with(scheduler.clone());
    world.hold(1);
    apply(&pipeline, 1, DEFERRED_EVENTS_MAX);
    let first = scheduler.run_next();
    wait_until("commit 1 takes batch 1", || world.began(1));
    let slot = writing_slot(&pipeline);
    apply(&pipeline, 2, DEFERRED_EVENTS_MAX);
    assert_eq!(scheduler.scheduled(), 1, "commit 2 is scheduled, not made in the apply call");
    let over = {
        let pipeline = pipeline.clone();
        thread::spawn(move || apply(&pipeline, 3, DEFERRED_EVENTS_MAX))
    };
    wait_until("the apply call over the hard limit waits for commit 1", || waiters(&slot) == 1);
    world.release(1);
    over.join().unwrap();
    first.join().unwrap();
    assert_eq!(pipeline.committed_index(), Some(3), "the apply call committed batches 2 and 3 itself");
    // The scheduled commit finds nothing left.
    scheduler.run_next().join().unwrap();
    assert_eq!(
        world.steps(),
        [began(1, [1]), Step::Wrote(1), Step::Finished(1), began(2, [2, 3]), Step::Wrote(2), Step::Finished(2)]
    );
}

#[test]
fn a_commit_whose_writer_panics_stops_the_ledger_instead_of_being_skipped() {
    let (pipeline, world) = pipeline_with(Arc::new(HeldScheduler::default()));
    world.failing.lock().unwrap().insert(1);
    apply(&pipeline, 1, 10);
    assert_eq!(pipeline.failure(), None);
    let writer = {
        let pipeline = pipeline.clone();
        thread::spawn(move || pipeline.commit_applied())
    };
    assert!(writer.join().is_err(), "the writer's panic reaches its thread");
    assert_eq!(pipeline.failure(), Some("a ledger commit failed: the store cannot write"));
    apply(&pipeline, 2, 10);
    let next = {
        let pipeline = pipeline.clone();
        thread::spawn(move || pipeline.commit_applied())
    };
    assert!(next.join().is_err(), "no later commit goes ahead of the failed one");
    assert_eq!(pipeline.committed_index(), None, "batch 1 was never committed, so nothing after it is");
}

#[test]
fn a_reader_waiting_for_an_index_is_answered_once_views_reach_it() {
    let (pipeline, _world) = pipeline_with(Arc::new(TokioScheduler));
    for batch in 1..=3 {
        apply(&pipeline, batch, 10);
    }
    assert_eq!(pipeline.committed_index(), None, "deferred, not committed");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(pipeline.wait_committed(None));
    runtime.block_on(pipeline.wait_committed(Some(3)));
    assert_eq!(pipeline.committed_index(), Some(3));
}

/// Many apply calls, scheduled commits, the ticker and readers at once, over a seeded mix of
/// batch sizes: every batch is committed exactly once, in log order, one commit writing at a time
/// (the fake asserts that), and the committed index ends at the last batch.
#[test]
fn concurrent_apply_calls_commits_and_readers_commit_every_batch_once_in_order() {
    for seed in 1..=8_u64 {
        let scheduler = Arc::new(ThreadScheduler::default());
        let (pipeline, world) = pipeline_with(scheduler.clone());
        pipeline.set_deferred_age_max(Duration::ZERO);
        let batches = 300;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let helpers: Vec<JoinHandle<()>> = (0..2)
            .map(|helper| {
                let (pipeline, done) = (pipeline.clone(), Arc::clone(&done));
                thread::spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        if helper == 0 {
                            pipeline.commit_if_due()
                        } else {
                            pipeline.commit_applied()
                        }
                        thread::yield_now();
                    }
                })
            })
            .collect();
        let mut state = seed;
        for batch in 1..=batches {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let events = [1, 100, DEFERRED_EVENTS_MAX / 3, DEFERRED_EVENTS_MAX][(state % 4) as usize];
            apply(&pipeline, batch, events);
        }
        done.store(true, Ordering::SeqCst);
        helpers.into_iter().for_each(|helper| helper.join().unwrap());
        pipeline.commit_applied();
        for thread in std::mem::take(&mut *scheduler.threads.lock().unwrap()) {
            thread.join().unwrap();
        }
        let steps = world.steps();
        let committed: Vec<u64> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Began { batches, .. } => Some(batches.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(committed, (1..=batches).collect::<Vec<_>>(), "seed {seed}: each batch once, in order");
        let mut open: Option<u64> = None;
        for step in &steps {
            match step {
                Step::Began { number, .. } => {
                    assert_eq!(open, None, "seed {seed}: commit {number} began before the last finished");
                    open = Some(*number);
                }
                Step::Wrote(number) => assert_eq!(open, Some(*number), "seed {seed}"),
                Step::Finished(number) => {
                    assert_eq!(open.take(), Some(*number), "seed {seed}: finished out of order");
                }
            }
        }
        assert_eq!(pipeline.committed_index(), Some(batches), "seed {seed}");
    }
}
