//! Group commit: the leader coalesces concurrent client requests into one log entry.
//!
//! Requests queue in a bounded channel. The batcher takes the first, then keeps taking requests of
//! the same kind until the batch holds `events_per_batch_max` events or `linger_us` has passed, and
//! proposes the batch to Raft. It lingers only while earlier batches are still committing: with
//! none in flight, waiting would only delay a lone request, so it takes what is already queued and
//! proposes at once. A request's events stay together in one batch, so its linked chains
//! are never split, and the batch records where each request ends ([`join_requests`]): the ledger
//! closes chains at every request's end, so a request's results never depend on what was grouped
//! with it. Batches are proposed one after another, in the order their timestamps were
//! assigned, while up to `batches_in_flight_max` of them wait to commit; each request gets its own
//! slice of the results once its entry is committed and applied.
//!
//! Cluster time: a batch is stamped `max(now, floor)` where `floor` is one past every timestamp the
//! log holds. When this replica becomes leader it first waits until everything committed before
//! its term is applied (a read-index barrier) and takes the floor from the applied state, so
//! timestamps keep increasing across leader changes even when clocks disagree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::Raft;
use openraft::error::ClientWriteError;
use tally_consensus::raft_state_machine::LedgerViews;
use tally_consensus::signed_entry::{ChangeEntry, EntryRequest, SignedEntry};
use tally_consensus::type_config::TypeConfig;
use tally_consensus::types::{ApplyResponse, LogPayload, NodeId, PeerNode, Refusal, encode};
use tally_state_machine::codec::encode_batch;
use tally_state_machine::constants::EXPIRIES_PER_BATCH_MAX;
use tally_state_machine::signed::REQUESTS_PER_BATCH_MAX;
use tally_state_machine::{Batch, NewAccount, NewLedger, NewTransfer, Operation, StorageRead};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::GroupCommitSettings;

/// Requests waiting for the batcher; beyond this, submitters get `Overloaded`.
pub const QUEUE_DEPTH_MAX: usize = 4_096;

/// What a client asked to write.
#[derive(Debug)]
pub enum Events {
    Ledgers(Vec<NewLedger>),
    Accounts(Vec<NewAccount>),
    Transfers(Vec<NewTransfer>),
    /// Release pending transfers that are due (proposed by the leader itself).
    Expire,
    /// A signed request of a secured cluster, as its principal sent it, with its event count.
    /// Signed requests of any operation join one entry (the ledger applies each on its own).
    Signed {
        request: EntryRequest,
        events: usize,
    },
    /// A registry change approved by operators (its timestamp is the entry's): never grouped.
    RegistryChange(ChangeEntry),
}

impl Events {
    fn len(&self) -> usize {
        match self {
            Events::Ledgers(events) => events.len(),
            Events::Accounts(events) => events.len(),
            Events::Transfers(events) => events.len(),
            Events::Expire | Events::RegistryChange(_) => 0,
            Events::Signed { events, .. } => *events,
        }
    }

    fn same_kind(&self, other: &Events) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other) && !self.alone()
    }

    /// Whether the entry holds this request alone.
    fn alone(&self) -> bool {
        matches!(self, Events::Expire | Events::RegistryChange(_))
    }
}

/// A committed and applied write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// One `ResultCode` number per event of the request (empty for an expiry).
    pub results: Vec<u8>,
    /// For an expiry, the pending transfers released.
    pub expired: Vec<u128>,
    pub log_index: u64,
    /// A signed request or change applied before (a retry): `results` are its first ones.
    pub repeated: bool,
    /// Why the ledger refused a signed request or change whole, which then changed nothing.
    pub refusal: Option<Refusal>,
}

impl Written {
    fn created(results: Vec<u8>, log_index: u64) -> Written {
        Written { results, expired: Vec::new(), log_index, repeated: false, refusal: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("this replica is not the leader")]
    NotLeader { leader: Option<(NodeId, PeerNode)> },
    #[error("{0}")]
    Unavailable(String),
    #[error("the ledger refused the batch: {0}")]
    Refused(String),
    #[error("more than {QUEUE_DEPTH_MAX} writes are waiting")]
    Overloaded,
}

/// Where a request's outcome is sent.
type Reply = oneshot::Sender<Result<Written, WriteError>>;

struct Submission {
    events: Events,
    reply: Reply,
}

/// The handle requests are submitted through.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    sender: mpsc::Sender<Submission>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Submission({} events)", self.events.len())
    }
}

impl GroupCommit {
    /// Starts the batcher task; it ends when every handle is dropped.
    pub fn start(
        raft: Raft<TypeConfig>,
        views: LedgerViews,
        clock: Arc<dyn Clock>,
        settings: GroupCommitSettings,
    ) -> GroupCommit {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH_MAX);
        let batcher = Batcher {
            raft,
            views,
            clock,
            in_flight: Arc::new(Semaphore::new(settings.batches_in_flight_max)),
            settings,
            receiver,
            carried: None,
            synced_term: None,
            resync: Arc::new(AtomicBool::new(false)),
            floor: 0,
        };
        tokio::spawn(batcher.run());
        GroupCommit { sender }
    }

    /// Submits events and waits until they are committed and applied (or refused).
    pub async fn submit(&self, events: Events) -> Result<Written, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.sender.try_send(Submission { events, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => WriteError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => WriteError::Unavailable("the replica is shutting down".into()),
        })?;
        answer.await.unwrap_or_else(|_| Err(WriteError::Unavailable("the replica is shutting down".into())))
    }
}

struct Batcher {
    raft: Raft<TypeConfig>,
    views: LedgerViews,
    clock: Arc<dyn Clock>,
    settings: GroupCommitSettings,
    in_flight: Arc<Semaphore>,
    receiver: mpsc::Receiver<Submission>,
    /// A request of another kind that ended the last group; it starts the next one.
    carried: Option<Submission>,
    /// The leader term whose timestamp floor was taken from the applied state.
    synced_term: Option<u64>,
    /// Set when the ledger refused a batch: the floor is re-read from the applied state before the
    /// next proposal rather than trusted.
    resync: Arc<AtomicBool>,
    /// One past the last timestamp any proposed batch may use.
    floor: u64,
}

impl Batcher {
    async fn run(mut self) {
        while let Some(group) = self.next_group().await {
            if let Err(error) = self.propose(group).await {
                tracing::warn!(%error, "group commit could not propose a batch");
            }
        }
    }

    /// Waits for a request, then gathers more of the same kind until the batch is full or the
    /// linger has passed (no linger while no batch is in flight).
    async fn next_group(&mut self) -> Option<Vec<Submission>> {
        let first = match self.carried.take() {
            Some(submission) => submission,
            None => self.receiver.recv().await?,
        };
        let idle = self.in_flight.available_permits() == self.settings.batches_in_flight_max;
        let linger = if idle { Duration::ZERO } else { Duration::from_micros(self.settings.linger_us) };
        let (group, carried) = gather(&mut self.receiver, first, linger, self.settings.events_per_batch_max).await;
        self.carried = carried;
        Some(group)
    }

    /// Makes sure this replica leads, and that the timestamp floor covers every entry committed
    /// before its term.
    async fn ensure_leading(&mut self) -> Result<(), WriteError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            let leader = metrics
                .current_leader
                .and_then(|id| metrics.membership_config.membership().get_node(&id).map(|node| (id, node.clone())));
            return Err(WriteError::NotLeader { leader });
        }
        if self.resync.swap(false, Ordering::Relaxed) {
            self.synced_term = None;
        }
        if self.synced_term == Some(metrics.current_term) {
            return Ok(());
        }
        let read_log_id = self
            .raft
            .ensure_linearizable()
            .await
            .map_err(|error| WriteError::Unavailable(format!("leadership not confirmed: {error}")))?;
        // The floor must cover every batch applied so far, including those the store commits later.
        self.views.wait_committed(read_log_id.map(|log_id| log_id.index)).await;
        self.floor = self.floor.max(self.views.view().meta_get().timestamp_last + 1);
        self.synced_term = Some(metrics.current_term);
        Ok(())
    }

    async fn propose(&mut self, group: Vec<Submission>) -> Result<(), WriteError> {
        if let Err(error) = self.ensure_leading().await {
            fail(group.into_iter().map(|submission| submission.reply), &error);
            return Err(error);
        }
        let permit = Arc::clone(&self.in_flight).acquire_owned().await.expect("the semaphore is never closed");
        let events: usize = group.iter().map(|submission| submission.events.len()).sum();
        let (payload, replies, shape) = self.stamp(group);
        metrics::histogram!("tally_group_commit_events").record(events as f64);
        metrics::histogram!("tally_group_commit_requests").record(replies.len() as f64);
        let receiver = match self.raft.client_write_ff(payload).await {
            Ok(receiver) => receiver,
            Err(fatal) => {
                let error = WriteError::Unavailable(format!("raft stopped: {fatal}"));
                fail(replies, &error);
                return Err(error);
            }
        };
        let resync = Arc::clone(&self.resync);
        tokio::spawn(async move {
            let _permit = permit;
            let result = receiver.await;
            let outcome = match result {
                Ok(Ok(response)) => Ok((response.log_id.index, response.data)),
                Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                    let leader = forward.leader_id.zip(forward.leader_node);
                    Err(WriteError::NotLeader { leader })
                }
                Ok(Err(error)) => Err(WriteError::Unavailable(error.to_string())),
                Err(_) => Err(WriteError::Unavailable("the replica is shutting down".into())),
            };
            if let Ok((_, ApplyResponse::Refused { .. })) = &outcome {
                resync.store(true, Ordering::Relaxed);
            }
            distribute(replies, shape, outcome);
        });
        Ok(())
    }

    /// Assigns the group's entry its timestamp and moves the requests into it, each request
    /// keeping its boundary; hands back the requests' reply channels, in order, and how to split
    /// the entry's outcome among them.
    fn stamp(&mut self, group: Vec<Submission>) -> (LogPayload, Vec<Reply>, Shape) {
        let timestamp = self.clock.now_nanoseconds().max(self.floor);
        let (requests, replies): (Vec<Events>, Vec<Reply>) =
            group.into_iter().map(|submission| (submission.events, submission.reply)).unzip();
        let (payload, shape, timestamps_used) = match &requests[0] {
            Events::Signed { .. } => {
                let events: usize = requests.iter().map(Events::len).sum();
                let requests = requests
                    .into_iter()
                    .map(|events| match events {
                        Events::Signed { request, .. } => request,
                        _ => unreachable!("a group holds one kind"),
                    })
                    .collect();
                (LogPayload::Signed(encode(&SignedEntry { timestamp, requests })), Shape::Signed, events.max(1))
            }
            Events::RegistryChange(_) => {
                assert_eq!(requests.len(), 1, "a registry change is never grouped");
                let Some(Events::RegistryChange(entry)) = requests.into_iter().next() else {
                    unreachable!("matched above")
                };
                let entry = ChangeEntry { timestamp, ..entry };
                (LogPayload::RegistryChange(encode(&entry)), Shape::Change, 1)
            }
            _ => {
                let batch = join_requests(timestamp, requests);
                let timestamps_used = match batch.operation {
                    Operation::ExpirePendingTransfers => EXPIRIES_PER_BATCH_MAX,
                    _ => batch.operation.event_count().max(1),
                };
                let mut bytes = Vec::new();
                encode_batch(&batch, &mut bytes);
                (LogPayload::Batch(bytes), Shape::Sizes(batch.request_sizes), timestamps_used)
            }
        };
        self.floor = timestamp + timestamps_used as u64;
        (payload, replies, shape)
    }
}

/// How an entry's outcome is split among the requests it joined.
#[derive(Debug)]
enum Shape {
    /// A plain batch: each request's number of events.
    Sizes(Vec<u32>),
    /// Signed requests: one response each.
    Signed,
    /// One registry change.
    Change,
}

/// Joins requests of one kind into one batch stamped `timestamp`, moving their events (not
/// copying them one by one) and recording each request's size: the ledger closes linked chains at
/// every request's end, so each request gets the results it would get alone in the log.
pub fn join_requests(timestamp: u64, requests: Vec<Events>) -> Batch {
    assert!(!requests.is_empty(), "a group holds at least one request");
    let request_sizes: Vec<u32> =
        requests.iter().map(|events| u32::try_from(events.len()).expect("a request holds under 2^32 events")).collect();
    let mut requests = requests.into_iter();
    let operation = match requests.next().expect("checked above") {
        Events::Ledgers(first) => Operation::CreateLedgers(append_all(first, requests, |events| match events {
            Events::Ledgers(events) => events,
            _ => unreachable!("a group holds one kind"),
        })),
        Events::Accounts(first) => Operation::CreateAccounts(append_all(first, requests, |events| match events {
            Events::Accounts(events) => events,
            _ => unreachable!("a group holds one kind"),
        })),
        Events::Transfers(first) => Operation::CreateTransfers(append_all(first, requests, |events| match events {
            Events::Transfers(events) => events,
            _ => unreachable!("a group holds one kind"),
        })),
        Events::Expire => {
            assert!(requests.next().is_none(), "an expiry is never grouped");
            return Batch::new(timestamp, Operation::ExpirePendingTransfers);
        }
        Events::Signed { .. } | Events::RegistryChange(_) => unreachable!("signed entries are not batches"),
    };
    Batch::joined(timestamp, operation, request_sizes)
}

/// Appends every request's events to the first request's vector.
fn append_all<T>(mut all: Vec<T>, requests: impl Iterator<Item = Events>, events: impl Fn(Events) -> Vec<T>) -> Vec<T> {
    for request in requests {
        all.append(&mut events(request));
    }
    all
}

/// Groups `first` with the requests of its kind that follow it, up to `events_max` events: those
/// already queued, then those arriving within `linger`. Returns the group and the request that
/// ended it by not fitting, if any.
async fn gather(
    receiver: &mut mpsc::Receiver<Submission>,
    first: Submission,
    linger: Duration,
    events_max: usize,
) -> (Vec<Submission>, Option<Submission>) {
    let mut events = first.events.len();
    let mut group = vec![first];
    let deadline = Instant::now() + linger;
    while events < events_max && !group[0].events.alone() && group.len() < REQUESTS_PER_BATCH_MAX {
        // Requests already queued are taken without a timer: tokio rounds a timer's deadline up
        // to its next millisecond tick, so even a deadline already passed cost a lone request up
        // to 1 ms of waiting (two-thirds of a single replica's whole write; BENCHMARKS.md).
        let next = match receiver.try_recv() {
            Ok(next) => next,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() >= deadline => break,
            Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(next)) => next,
                Ok(None) | Err(_) => break,
            },
        };
        let fits = events + next.events.len() <= events_max;
        if !(next.events.same_kind(&group[0].events) && fits) {
            return (group, Some(next));
        }
        events += next.events.len();
        group.push(next);
    }
    (group, None)
}

fn fail(replies: impl IntoIterator<Item = Reply>, error: &WriteError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

/// Hands each request its slice of the entry's outcome.
fn distribute(replies: Vec<Reply>, shape: Shape, outcome: Result<(u64, ApplyResponse), WriteError>) {
    let (log_index, response) = match outcome {
        Ok(committed) => committed,
        Err(error) => return fail(replies, &error),
    };
    match (response, shape) {
        (ApplyResponse::Signed { requests }, Shape::Signed) => {
            assert_eq!(requests.len(), replies.len(), "one response per signed request");
            for (reply, response) in replies.into_iter().zip(requests) {
                let written = Written {
                    repeated: response.repeated,
                    refusal: response.refusal,
                    ..Written::created(response.results, log_index)
                };
                let _ = reply.send(Ok(written));
            }
        }
        (ApplyResponse::Changed { repeated, refusal }, Shape::Change) => {
            for reply in replies {
                let written = Written { repeated, refusal: refusal.clone(), ..Written::created(Vec::new(), log_index) };
                let _ = reply.send(Ok(written));
            }
        }
        (ApplyResponse::Created { results }, Shape::Sizes(sizes)) => {
            assert_eq!(results.len(), sizes.iter().map(|&size| size as usize).sum::<usize>(), "one result per event");
            assert_eq!(replies.len(), sizes.len(), "one size per request");
            let mut offset = 0;
            for (reply, size) in replies.into_iter().zip(sizes) {
                let results = results[offset..offset + size as usize].to_vec();
                offset += size as usize;
                let _ = reply.send(Ok(Written::created(results, log_index)));
            }
        }
        (ApplyResponse::Expired { ids }, Shape::Sizes(_)) => {
            for reply in replies {
                let _ = reply.send(Ok(Written { expired: ids.clone(), ..Written::created(Vec::new(), log_index) }));
            }
        }
        (ApplyResponse::Refused { reason }, _) => fail(replies, &WriteError::Refused(reason)),
        (ApplyResponse::NoOp, _) => fail(replies, &WriteError::Refused("the entry carried no batch".into())),
        (response, shape) => panic!("an entry proposed as {shape:?} was answered {response:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(events: Events) -> Submission {
        let (reply, _answer) = oneshot::channel();
        Submission { events, reply }
    }

    fn accounts(count: usize) -> Events {
        Events::Accounts((0..count).map(|_| NewAccount::default()).collect())
    }

    fn transfers(count: usize) -> Events {
        Events::Transfers((0..count).map(|_| NewTransfer::default()).collect())
    }

    fn sizes(group: &[Submission]) -> Vec<usize> {
        group.iter().map(|submission| submission.events.len()).collect()
    }

    /// Time is paused: the clock moves only when every task waits on a timer, so a group that
    /// waited for one shows as time passed.
    #[tokio::test(start_paused = true)]
    async fn without_linger_a_group_takes_what_is_queued_and_never_waits_for_a_timer() {
        let (sender, mut receiver) = mpsc::channel(16);
        // Between two of the timer's millisecond ticks, as a request arriving at any time is.
        tokio::time::advance(Duration::from_micros(300)).await;
        let started = Instant::now();
        let (group, carried) = gather(&mut receiver, submission(transfers(1)), Duration::ZERO, 10).await;
        assert_eq!(sizes(&group), [1]);
        assert!(carried.is_none());
        assert_eq!(Instant::now(), started, "a lone request waited for a timer");

        for count in [2, 3, 4] {
            sender.try_send(submission(transfers(count))).unwrap();
        }
        let (group, carried) = gather(&mut receiver, submission(transfers(1)), Duration::ZERO, 10).await;
        assert_eq!(sizes(&group), [1, 2, 3, 4]);
        assert!(carried.is_none());
        assert_eq!(Instant::now(), started);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_ends_at_a_request_of_another_kind_or_one_that_does_not_fit() {
        let (sender, mut receiver) = mpsc::channel(16);
        sender.try_send(submission(transfers(4))).unwrap();
        sender.try_send(submission(accounts(1))).unwrap();
        let (group, carried) = gather(&mut receiver, submission(transfers(3)), Duration::ZERO, 10).await;
        assert_eq!(sizes(&group), [3, 4]);
        assert!(matches!(carried.map(|next| next.events), Some(Events::Accounts(_))));

        sender.try_send(submission(transfers(5))).unwrap();
        let (group, carried) = gather(&mut receiver, submission(transfers(6)), Duration::ZERO, 10).await;
        assert_eq!(sizes(&group), [6]);
        assert_eq!(carried.map(|next| next.events.len()), Some(5));
    }

    #[tokio::test(start_paused = true)]
    async fn with_linger_a_group_waits_for_requests_until_the_deadline() {
        let (sender, mut receiver) = mpsc::channel(16);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            sender.send(submission(transfers(2))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            sender.send(submission(transfers(7))).await.unwrap();
        });
        let started = Instant::now();
        let linger = Duration::from_millis(5);
        let (group, carried) = gather(&mut receiver, submission(transfers(1)), linger, 100).await;
        assert_eq!(sizes(&group), [1, 2], "the request 3 ms in joins, the one 13 ms in does not");
        assert!(carried.is_none());
        let waited = Instant::now() - started;
        assert!(waited >= linger && waited < Duration::from_millis(13), "waited {waited:?}");
        late.await.unwrap();
    }
}
