//! [`Client`]: the ledger and admin calls, each bounded by the client's deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tally_proto::v1 as wire;
use tally_proto::v1::ResultCode;
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::Error;
use crate::model::{
    Account, AccountBalance, AccountFlags, AccountTransfersFilter, Ledger, NewAccount, NewLedger, NewTransfer, Page,
    QueryFilter, Transfer, TransferFlags, Window, uint128,
};
use crate::registry::{ChangeApplied, ProposedChange};
use crate::security::Security;
use crate::signing::RequestSigning;
use crate::transport::{MESSAGE_BYTES_MAX, Transport};

/// Events per request, at most (the ledger's batch limit).
pub const EVENTS_PER_REQUEST_MAX: usize = 8_190;
/// The deadline of a call unless the caller sets another with [`Client::with_deadline`].
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(10);
/// Single calls waiting to be batched, at most; beyond this, callers wait for room.
const BATCH_QUEUE_MAX: usize = 65_536;
/// Automatic batches in flight at once: while they are, new single calls gather into the next.
/// Two rather than four: fewer, larger batches cost the cluster fewer Raft entries, and the
/// second keeps the leader busy while the first's answers travel back (BENCHMARKS.md, issue 5,
/// sixth round).
const BATCHES_IN_FLIGHT: usize = 2;
/// How many times a batcher about to send yields to the runtime first, so that callers woken
/// just now (by the answers to the last batch, typically) join this batch instead of the next. It
/// stops at the first yield that brought no one, so a lone caller waits one yield.
const FILL_YIELDS_MAX: usize = 32;

/// A connection to a Tally cluster. Cheap to clone; clones share connections, leader knowledge,
/// breakers and the automatic batchers.
///
/// Every call is bounded by a deadline (default [`DEADLINE_DEFAULT`]): within it the client follows
/// leader hints, retries retryable failures with jittered exponential backoff, and skips endpoints
/// whose circuit breaker is open; at the deadline it returns [`Error::Unavailable`]. Writes are
/// safe to retry because events carry ids made by the caller (see [`crate::new_id`]): an event
/// that was applied before answers [`ResultCode::Exists`].
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
    deadline: Duration,
}

#[derive(Debug)]
struct Shared {
    transport: Arc<Transport>,
    writer: Writer,
    transfers: mpsc::Sender<Queued<NewTransfer>>,
    accounts: mpsc::Sender<Queued<NewAccount>>,
    stats: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    batched_requests: AtomicU64,
    batched_events: AtomicU64,
}

/// What the automatic batchers have sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchingStats {
    /// Requests the batchers sent (each with one or more single calls).
    pub requests: u64,
    /// Single calls they carried.
    pub events: u64,
}

#[derive(Debug)]
struct Queued<E> {
    event: E,
    deadline: Instant,
    reply: oneshot::Sender<Result<ResultCode, Error>>,
}

fn leader_of(header: Option<&wire::ResponseHeader>) -> Option<String> {
    header.map(|header| header.leader_address.clone()).filter(|address| !address.is_empty())
}

fn ledger_client(channel: Channel) -> LedgerServiceClient<Channel> {
    LedgerServiceClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

/// Responses whose header names the leader as the answering replica knows it.
trait LeaderHint {
    fn leader_hint(&self) -> Option<String>;
}

macro_rules! leader_hint {
    ($($response:ty),*) => {
        $(impl LeaderHint for $response {
            fn leader_hint(&self) -> Option<String> {
                leader_of(self.header.as_ref())
            }
        })*
    };
}

leader_hint!(
    wire::CreateResponse,
    wire::SubmitResponse,
    wire::LookupLedgersResponse,
    wire::LookupAccountsResponse,
    wire::LookupTransfersResponse,
    wire::TransfersPage,
    wire::AccountBalancesPage,
    wire::LedgersPage,
    wire::AccountsPage
);

/// One `LedgerService` call: retried within `deadline`, following the leader hints of answers.
async fn ledger_call<Request, Response, Call, Answer>(
    transport: &Transport,
    deadline: Duration,
    message: Request,
    call: Call,
) -> Result<Response, Error>
where
    Request: Clone,
    Response: LeaderHint,
    Call: Fn(LedgerServiceClient<Channel>, tonic::Request<Request>) -> Answer,
    Answer: Future<Output = Result<tonic::Response<Response>, tonic::Status>>,
{
    transport
        .call(deadline, None, Response::leader_hint, |channel, timeout| {
            call(ledger_client(channel), request(message.clone(), timeout))
        })
        .await
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn result_codes(codes: Vec<i32>, expected: usize) -> Result<Vec<ResultCode>, Error> {
    if codes.len() != expected {
        return Err(Error::Protocol(format!("{} result codes for {expected} events", codes.len())));
    }
    codes
        .into_iter()
        .map(|code| ResultCode::try_from(code).map_err(|_| Error::Protocol(format!("unknown result code {code}"))))
        .collect()
}

/// Writes the SDK knows how to batch.
trait Batchable: Sized + Send + Sync + 'static {
    /// Refuses what a replica would refuse in this event alone (which would fail every call in
    /// its batch), naming it `field`.
    fn check(&self, field: &str) -> Result<(), Error>;

    fn submit(
        writer: Writer,
        events: Vec<Self>,
        deadline: Duration,
    ) -> impl Future<Output = Result<Vec<ResultCode>, Error>> + Send;
}

/// What sends writes: the transport, and the principal's key on a secured cluster.
#[derive(Clone, Debug)]
struct Writer {
    transport: Arc<Transport>,
    signing: Option<Arc<RequestSigning>>,
}

impl Writer {
    /// Sends one write: signed (`Submit`) when the client has a signing key, else the unsigned
    /// call `unsigned` makes. A signed write is signed once; every retry sends the same bytes.
    async fn create<Call, Answer>(
        &self,
        operation: wire::write_request::Operation,
        events: usize,
        deadline: Duration,
        unsigned: Call,
    ) -> Result<Vec<ResultCode>, Error>
    where
        Call: FnOnce(wire::write_request::Operation) -> Answer,
        Answer: Future<Output = Result<wire::CreateResponse, Error>>,
    {
        let Some(signing) = &self.signing else {
            return result_codes(unsigned(operation).await?.results, events);
        };
        let message = signing.sign(operation, deadline)?;
        let response: wire::SubmitResponse =
            ledger_call(&self.transport, deadline, message, |mut client, request| async move {
                client.submit(request).await
            })
            .await?;
        result_codes(response.results, events)
    }
}

impl Batchable for NewTransfer {
    fn check(&self, field: &str) -> Result<(), Error> {
        NewTransfer::check(self, field)
    }

    async fn submit(writer: Writer, events: Vec<Self>, deadline: Duration) -> Result<Vec<ResultCode>, Error> {
        create_transfers(&writer, &events, deadline).await
    }
}

impl Batchable for NewAccount {
    fn check(&self, field: &str) -> Result<(), Error> {
        NewAccount::check(self, field)
    }

    async fn submit(writer: Writer, events: Vec<Self>, deadline: Duration) -> Result<Vec<ResultCode>, Error> {
        create_accounts(&writer, &events, deadline).await
    }
}

async fn create_transfers(
    writer: &Writer,
    transfers: &[NewTransfer],
    deadline: Duration,
) -> Result<Vec<ResultCode>, Error> {
    use wire::write_request::Operation;
    let message = wire::CreateTransfersRequest { transfers: transfers.iter().map(NewTransfer::to_wire).collect() };
    let unsigned = async |operation| {
        let Operation::CreateTransfers(message) = operation else { unreachable!("made above") };
        ledger_call(&writer.transport, deadline, message, |mut client, request| async move {
            client.create_transfers(request).await
        })
        .await
    };
    writer.create(Operation::CreateTransfers(message), transfers.len(), deadline, unsigned).await
}

async fn create_accounts(
    writer: &Writer,
    accounts: &[NewAccount],
    deadline: Duration,
) -> Result<Vec<ResultCode>, Error> {
    use wire::write_request::Operation;
    let message = wire::CreateAccountsRequest { accounts: accounts.iter().map(NewAccount::to_wire).collect() };
    let unsigned = async |operation| {
        let Operation::CreateAccounts(message) = operation else { unreachable!("made above") };
        ledger_call(&writer.transport, deadline, message, |mut client, request| async move {
            client.create_accounts(request).await
        })
        .await
    };
    writer.create(Operation::CreateAccounts(message), accounts.len(), deadline, unsigned).await
}

/// Packs queued single calls into requests of up to [`EVENTS_PER_REQUEST_MAX`] while up to
/// [`BATCHES_IN_FLIGHT`] earlier requests are out, and routes each event's result back.
async fn batcher<E: Batchable>(writer: Writer, mut queue: mpsc::Receiver<Queued<E>>, stats: Arc<Counters>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // Waiting for a free slot is what lets the next batch fill up.
        let permit: OwnedSemaphorePermit =
            Arc::clone(&in_flight).acquire_owned().await.expect("the semaphore is never closed");
        let batch = fill_batch(first, &mut queue).await;
        stats.batched_requests.fetch_add(1, Ordering::Relaxed);
        stats.batched_events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let writer = writer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = batch.iter().map(|queued| queued.deadline).max().expect("a batch is never empty");
            let (events, replies): (Vec<E>, Vec<_>) =
                batch.into_iter().map(|queued| (queued.event, queued.reply)).unzip();
            let remaining = deadline.saturating_duration_since(Instant::now());
            match E::submit(writer, events, remaining).await {
                Ok(codes) => {
                    for (reply, code) in replies.into_iter().zip(codes) {
                        let _ = reply.send(Ok(code));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// `first` and the calls queued behind it, up to [`EVENTS_PER_REQUEST_MAX`]. Yields to the runtime
/// while each yield brings more (at most [`FILL_YIELDS_MAX`] times): callers woken together by the
/// answers to one batch then travel together in the next.
async fn fill_batch<T>(first: T, queue: &mut mpsc::Receiver<T>) -> Vec<T> {
    let mut batch = vec![first];
    take_queued(queue, &mut batch);
    for _ in 0..FILL_YIELDS_MAX {
        if batch.len() == EVENTS_PER_REQUEST_MAX {
            break;
        }
        let before = batch.len();
        tokio::task::yield_now().await;
        take_queued(queue, &mut batch);
        if batch.len() == before {
            break;
        }
    }
    batch
}

/// Moves queued calls into `batch` until it is full or the queue is empty.
fn take_queued<T>(queue: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) {
    while batch.len() < EVENTS_PER_REQUEST_MAX {
        match queue.try_recv() {
            Ok(queued) => batch.push(queued),
            Err(_) => break,
        }
    }
}

impl Client {
    /// Connects to a cluster through `endpoints` (`host:port`; a name that resolves to several
    /// addresses counts as several). Connections open lazily: this fails only on endpoints that
    /// cannot be parsed or resolved. `security`: TLS with a principal's certificate
    /// ([`Security::from_env`], [`Security::principal_in`]), or plaintext for a development cluster.
    pub async fn connect<S: AsRef<str>>(endpoints: &[S], security: Security) -> Result<Client, Error> {
        Client::connect_signed(endpoints, security, None).await
    }

    /// [`Client::connect`] for a secured cluster: every write is signed with `signing` (once per
    /// request, automatic batches included). `None` sends unsigned writes, which only a
    /// development cluster without a genesis takes.
    pub async fn connect_signed<S: AsRef<str>>(
        endpoints: &[S],
        security: Security,
        signing: Option<RequestSigning>,
    ) -> Result<Client, Error> {
        let addresses: Vec<String> = endpoints.iter().map(|endpoint| endpoint.as_ref().to_owned()).collect();
        let transport = Arc::new(Transport::new(&addresses, security).await?);
        let writer = Writer { transport: Arc::clone(&transport), signing: signing.map(Arc::new) };
        let stats = Arc::new(Counters::default());
        let (transfers, transfer_queue) = mpsc::channel(BATCH_QUEUE_MAX);
        let (accounts, account_queue) = mpsc::channel(BATCH_QUEUE_MAX);
        tokio::spawn(batcher(writer.clone(), transfer_queue, Arc::clone(&stats)));
        tokio::spawn(batcher(writer.clone(), account_queue, Arc::clone(&stats)));
        let shared = Shared { transport, writer, transfers, accounts, stats };
        Ok(Client { shared: Arc::new(shared), deadline: DEADLINE_DEFAULT })
    }

    /// [`Client::connect_signed`] with both from the environment ([`Security::from_env`],
    /// [`RequestSigning::from_env`]).
    pub async fn connect_from_env<S: AsRef<str>>(endpoints: &[S]) -> Result<Client, Error> {
        let security = Security::from_env()?;
        let signing = RequestSigning::from_env(&security)?;
        Client::connect_signed(endpoints, security, signing).await
    }

    /// The same client with another deadline for each call.
    pub fn with_deadline(&self, deadline: Duration) -> Client {
        Client { shared: Arc::clone(&self.shared), deadline }
    }

    /// The deadline of each call made through this client.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The endpoints in use (configured, resolved, and learned from leader hints).
    pub fn endpoints(&self) -> Vec<String> {
        self.shared.transport.addresses()
    }

    /// What the automatic batchers have sent so far (for tests and tuning).
    pub fn batching_stats(&self) -> BatchingStats {
        BatchingStats {
            requests: self.shared.stats.batched_requests.load(Ordering::Relaxed),
            events: self.shared.stats.batched_events.load(Ordering::Relaxed),
        }
    }

    fn check_count(count: usize) -> Result<(), Error> {
        if count == 0 || count > EVENTS_PER_REQUEST_MAX {
            return Err(Error::Usage(format!("{count} events in one request; send 1..={EVENTS_PER_REQUEST_MAX}")));
        }
        Ok(())
    }

    /// Creates ledgers in one request, in order; one result code each.
    pub async fn create_ledgers(&self, ledgers: &[NewLedger]) -> Result<Vec<ResultCode>, Error> {
        Self::check_count(ledgers.len())?;
        use wire::write_request::Operation;
        let message = wire::CreateLedgersRequest { ledgers: ledgers.iter().map(NewLedger::to_wire).collect() };
        let writer = &self.shared.writer;
        let unsigned = async |operation| {
            let Operation::CreateLedgers(message) = operation else { unreachable!("made above") };
            ledger_call(&writer.transport, self.deadline, message, |mut client, request| async move {
                client.create_ledgers(request).await
            })
            .await
        };
        writer.create(Operation::CreateLedgers(message), ledgers.len(), self.deadline, unsigned).await
    }

    /// Creates accounts in one request, in order; linked accounts apply all or nothing.
    pub async fn create_accounts(&self, accounts: &[NewAccount]) -> Result<Vec<ResultCode>, Error> {
        Self::check_count(accounts.len())?;
        for (index, account) in accounts.iter().enumerate() {
            account.check(&format!("accounts[{index}]"))?;
        }
        create_accounts(&self.shared.writer, accounts, self.deadline).await
    }

    /// Creates transfers in one request, in order; a linked chain applies all or nothing.
    pub async fn create_transfers(&self, transfers: &[NewTransfer]) -> Result<Vec<ResultCode>, Error> {
        Self::check_count(transfers.len())?;
        for (index, transfer) in transfers.iter().enumerate() {
            transfer.check(&format!("transfers[{index}]"))?;
        }
        create_transfers(&self.shared.writer, transfers, self.deadline).await
    }

    async fn batched<E: Batchable>(&self, queue: &mpsc::Sender<Queued<E>>, event: E) -> Result<ResultCode, Error> {
        // Checked here, not in the batch: a malformed call must fail alone, not with its batch.
        event.check("event")?;
        let deadline = Instant::now() + self.deadline;
        let (reply, answer) = oneshot::channel();
        let unavailable = |detail: &str| Error::Unavailable {
            deadline: self.deadline,
            attempts: 0,
            last_errors: vec![("batcher".to_owned(), detail.to_owned())],
        };
        // A queue with room takes the call at once; only a full one needs waiting, under the deadline.
        match queue.try_send(Queued { event, deadline, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(unavailable("the batcher stopped")),
            Err(mpsc::error::TrySendError::Full(queued)) => {
                tokio::time::timeout_at(deadline, queue.send(queued))
                    .await
                    .map_err(|_| unavailable("the batch queue stayed full until the deadline"))?
                    .map_err(|_| unavailable("the batcher stopped"))?;
            }
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable("the batcher stopped")),
            Err(_) => {
                Err(unavailable("its batch had no answer by the deadline; it may still apply: retry with the same id"))
            }
        }
    }

    /// Creates one transfer, packed with other concurrent single calls into one request
    /// (automatic batching). A linked transfer must travel with its chain: use
    /// [`Client::create_transfers`].
    pub async fn create_transfer(&self, transfer: NewTransfer) -> Result<ResultCode, Error> {
        if transfer.flags.contains(TransferFlags::LINKED) {
            return Err(Error::Usage(
                "a linked transfer must be sent with the rest of its chain in create_transfers".into(),
            ));
        }
        self.batched(&self.shared.transfers, transfer).await
    }

    /// Creates one account, batched with other concurrent single calls (see
    /// [`Client::create_transfer`]).
    pub async fn create_account(&self, account: NewAccount) -> Result<ResultCode, Error> {
        if account.flags.contains(AccountFlags::LINKED) {
            return Err(Error::Usage(
                "a linked account must be sent with the rest of its chain in create_accounts".into(),
            ));
        }
        self.batched(&self.shared.accounts, account).await
    }

    /// Ledgers by id, in the order asked; `None` where there is none.
    pub async fn lookup_ledgers(&self, ids: &[u32]) -> Result<Vec<Option<Ledger>>, Error> {
        Self::check_count(ids.len())?;
        let message = wire::LookupLedgersRequest { ids: ids.to_vec() };
        let response: wire::LookupLedgersResponse =
            ledger_call(&self.shared.transport, self.deadline, message, |mut client, request| async move {
                client.lookup_ledgers(request).await
            })
            .await?;
        Ok(response
            .ledgers
            .into_iter()
            .map(|lookup| lookup.ledger.filter(|_| lookup.found).map(Ledger::from_wire))
            .collect())
    }

    /// Accounts by id, in the order asked; `None` where there is none.
    pub async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Option<Account>>, Error> {
        Self::check_count(ids.len())?;
        let message = wire::LookupRequest { ids: ids.iter().map(|id| uint128(*id).expect("some")).collect() };
        let response: wire::LookupAccountsResponse =
            ledger_call(&self.shared.transport, self.deadline, message, |mut client, request| async move {
                client.lookup_accounts(request).await
            })
            .await?;
        response
            .accounts
            .into_iter()
            .map(|lookup| lookup.account.filter(|_| lookup.found).map(Account::from_wire).transpose())
            .collect()
    }

    /// Transfers by id, in the order asked; `None` where there is none.
    pub async fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Option<Transfer>>, Error> {
        Self::check_count(ids.len())?;
        let message = wire::LookupRequest { ids: ids.iter().map(|id| uint128(*id).expect("some")).collect() };
        let response: wire::LookupTransfersResponse =
            ledger_call(&self.shared.transport, self.deadline, message, |mut client, request| async move {
                client.lookup_transfers(request).await
            })
            .await?;
        response
            .transfers
            .into_iter()
            .map(|lookup| lookup.transfer.filter(|_| lookup.found).map(Transfer::from_wire).transpose())
            .collect()
    }

    /// One account by id; `None` if there is none.
    pub async fn account(&self, id: u128) -> Result<Option<Account>, Error> {
        Ok(self.lookup_accounts(&[id]).await?.pop().flatten())
    }

    /// One transfer by id; `None` if there is none.
    pub async fn transfer(&self, id: u128) -> Result<Option<Transfer>, Error> {
        Ok(self.lookup_transfers(&[id]).await?.pop().flatten())
    }

    /// One page of an account's transfers.
    pub async fn account_transfers(&self, filter: AccountTransfersFilter) -> Result<Page<Transfer>, Error> {
        let message = wire::AccountTransfersRequest {
            account_id: uint128(filter.account_id),
            debits: filter.debits,
            credits: filter.credits,
            code: filter.code.map(u32::from),
            user_data_128: None,
            user_data_64: None,
            user_data_32: None,
            window: Some(filter.window.to_wire()),
        };
        let page: wire::TransfersPage =
            ledger_call(&self.shared.transport, self.deadline, message, |mut client, request| async move {
                client.get_account_transfers(request).await
            })
            .await?;
        Ok(Page {
            records: page.transfers.into_iter().map(Transfer::from_wire).collect::<Result<_, _>>()?,
            cursor: page.cursor,
        })
    }

    /// One page of an account's balance history (accounts with the `history` flag).
    pub async fn account_balances(&self, account_id: u128, window: Window) -> Result<Page<AccountBalance>, Error> {
        let message = wire::AccountBalancesRequest { account_id: uint128(account_id), window: Some(window.to_wire()) };
        let page: wire::AccountBalancesPage =
            ledger_call(&self.shared.transport, self.deadline, message, |mut client, request| async move {
                client.get_account_balances(request).await
            })
            .await?;
        Ok(Page {
            records: page.balances.into_iter().map(AccountBalance::from_wire).collect::<Result<_, _>>()?,
            cursor: page.cursor,
        })
    }

    /// One page of ledgers, in time order.
    pub async fn query_ledgers(&self, window: Window) -> Result<Page<Ledger>, Error> {
        let message = wire::QueryLedgersRequest { window: Some(window.to_wire()) };
        let page: wire::LedgersPage =
            ledger_call(&self.shared.transport, self.deadline, message, |mut client, request| async move {
                client.query_ledgers(request).await
            })
            .await?;
        Ok(Page { records: page.ledgers.into_iter().map(Ledger::from_wire).collect(), cursor: page.cursor })
    }

    fn query(filter: &QueryFilter) -> wire::QueryRequest {
        wire::QueryRequest {
            ledger: filter.ledger,
            code: filter.code.map(u32::from),
            user_data_128: filter.user_data_128.and_then(uint128),
            user_data_64: filter.user_data_64,
            user_data_32: filter.user_data_32,
            window: Some(filter.window.to_wire()),
        }
    }

    /// One page of accounts matching every field set in `filter`, in time order.
    pub async fn query_accounts(&self, filter: QueryFilter) -> Result<Page<Account>, Error> {
        let message = Self::query(&filter);
        let page: wire::AccountsPage =
            ledger_call(&self.shared.transport, self.deadline, message, |mut client, request| async move {
                client.query_accounts(request).await
            })
            .await?;
        Ok(Page {
            records: page.accounts.into_iter().map(Account::from_wire).collect::<Result<_, _>>()?,
            cursor: page.cursor,
        })
    }

    /// One page of transfers matching every field set in `filter`, in time order.
    pub async fn query_transfers(&self, filter: QueryFilter) -> Result<Page<Transfer>, Error> {
        let message = Self::query(&filter);
        let page: wire::TransfersPage =
            ledger_call(&self.shared.transport, self.deadline, message, |mut client, request| async move {
                client.query_transfers(request).await
            })
            .await?;
        Ok(Page {
            records: page.transfers.into_iter().map(Transfer::from_wire).collect::<Result<_, _>>()?,
            cursor: page.cursor,
        })
    }

    async fn admin<T, F, Fut>(&self, target: Option<&str>, call: F) -> Result<T, Error>
    where
        F: Fn(AdminServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.shared
            .transport
            .call(
                self.deadline,
                target,
                |_: &T| None,
                |channel, timeout| call(AdminServiceClient::new(channel), timeout),
            )
            .await
    }

    /// Every member's status as one replica gathers it (lag as the leader sees it).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let response = self
            .admin(None, |mut admin, timeout| async move {
                admin.cluster_status(request(wire::ClusterStatusRequest {}, timeout)).await
            })
            .await?;
        Ok(ClusterStatus {
            leader_id: response.leader_id,
            nodes: response.nodes.into_iter().map(NodeStatus::from_wire).collect(),
            membership_index: response.membership_index,
        })
    }

    /// The status of the replica at `endpoint`, as it sees itself.
    pub async fn node_status(&self, endpoint: &str) -> Result<NodeStatus, Error> {
        let response = self
            .admin(Some(endpoint), |mut admin, timeout| async move {
                admin.node_status(request(wire::NodeStatusRequest {}, timeout)).await
            })
            .await?;
        Ok(NodeStatus::from_wire(response))
    }

    /// Adds a non-voting member, which starts catching up at once.
    pub async fn add_learner(&self, node_id: u64, address: &str, site: &str) -> Result<Membership, Error> {
        let message = wire::AddLearnerRequest { node_id, address: address.to_owned(), site: site.to_owned() };
        let response = self
            .admin(None, |mut admin, timeout| {
                let message = message.clone();
                async move { admin.add_learner(request(message, timeout)).await }
            })
            .await?;
        Ok(Membership::from_wire(response))
    }

    /// Replaces the voters (joint consensus). Members left out stay as learners when
    /// `retain_as_learners`, and are removed otherwise.
    pub async fn change_membership(&self, voters: &[u64], retain_as_learners: bool) -> Result<Membership, Error> {
        let message = wire::ChangeMembershipRequest { voters: voters.to_vec(), retain_as_learners };
        let response = self
            .admin(None, |mut admin, timeout| {
                let message = message.clone();
                async move { admin.change_membership(request(message, timeout)).await }
            })
            .await?;
        Ok(Membership::from_wire(response))
    }

    /// Hands leadership to voter `node_id`; returns the leader afterwards.
    pub async fn transfer_leader(&self, node_id: u64) -> Result<u64, Error> {
        let response = self
            .admin(None, |mut admin, timeout| async move {
                admin.transfer_leader(request(wire::TransferLeaderRequest { node_id }, timeout)).await
            })
            .await?;
        Ok(response.leader_id)
    }

    /// Sends a registry change its operators approved ([`crate::registry`]); the leader applies
    /// it through the log.
    pub async fn change_registry(&self, change: &ProposedChange) -> Result<ChangeApplied, Error> {
        let message = change.to_wire();
        let response = self
            .admin(None, |mut admin, timeout| {
                let message = message.clone();
                async move { admin.change_registry(request(message, timeout)).await }
            })
            .await?;
        Ok(ChangeApplied {
            applied_index: response.applied_index,
            repeated: response.repeated,
            membership: response.membership.map(Membership::from_wire),
        })
    }

    /// The key registry as the leader last applied it.
    pub async fn registry(&self) -> Result<wire::Registry, Error> {
        self.admin(None, |mut admin, timeout| async move {
            admin.get_registry(request(wire::GetRegistryRequest {}, timeout)).await
        })
        .await
    }

    /// Builds a snapshot now on the replica at `endpoint`; returns the log index it covers.
    pub async fn trigger_snapshot(&self, endpoint: &str) -> Result<u64, Error> {
        let response = self
            .admin(Some(endpoint), |mut admin, timeout| async move {
                admin.trigger_snapshot(request(wire::TriggerSnapshotRequest {}, timeout)).await
            })
            .await?;
        Ok(response.snapshot_index)
    }
}

/// A replica's role in the cluster.
pub use tally_proto::v1::Role;

/// One member's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The member's node id.
    pub id: u64,
    /// The member's gRPC address.
    pub address: String,
    /// The site (data centre) the member runs in.
    pub site: String,
    /// Leader, follower, candidate or learner.
    pub role: Role,
    /// Whether the member votes (false for a learner).
    pub voter: bool,
    /// The Raft term this member is in.
    pub term: u64,
    /// The index of the last entry in this member's log.
    pub last_log_index: u64,
    /// The last log index this member has applied to its ledger.
    pub applied_index: u64,
    /// The ledger's state digest (blake3) at `applied_index`.
    pub digest: Vec<u8>,
    /// The leader as this member knows it; 0 during an election.
    pub leader_id: u64,
    /// Entries behind the leader's last log index, as the leader sees it.
    pub replication_lag: Option<u64>,
    /// This member's clock minus the leader's, in milliseconds, as the leader measured it lately.
    pub clock_offset_ms: Option<i64>,
    /// False when the member could not be reached; `error` says why.
    pub reachable: bool,
    /// Why the member could not be reached (empty when it could).
    pub error: String,
}

impl NodeStatus {
    fn from_wire(status: wire::NodeStatus) -> NodeStatus {
        NodeStatus {
            id: status.id,
            address: status.address,
            site: status.site,
            role: Role::try_from(status.role).unwrap_or(Role::Unspecified),
            voter: status.voter,
            term: status.term,
            last_log_index: status.last_log_index,
            applied_index: status.applied_index,
            digest: status.digest,
            leader_id: status.leader_id,
            replication_lag: status.replication_lag,
            clock_offset_ms: status.clock_offset_ms,
            reachable: status.reachable,
            error: status.error,
        }
    }

    /// The digest's first bytes in hex, for tables.
    pub fn digest_prefix(&self) -> String {
        self.digest.iter().take(6).map(|byte| format!("{byte:02x}")).collect()
    }
}

/// Lower-case role names, as `tallyctl` prints them.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
        Role::Unspecified => "unknown",
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
/// Every member's status, gathered by one replica.
pub struct ClusterStatus {
    /// The leader as the answering replica knows it; 0 during an election.
    pub leader_id: u64,
    /// One entry per member, reachable or not.
    pub nodes: Vec<NodeStatus>,
    /// The log index of the membership entry in force: a membership change on a secured cluster is
    /// proposed against it ([`crate::registry::RegistryChange::AddLearner`]).
    pub membership_index: u64,
}

/// The membership after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The leader that made the change.
    pub leader_id: u64,
    /// The voting members.
    pub voters: Vec<u64>,
    /// The non-voting members.
    pub learners: Vec<u64>,
    /// The log index of the membership entry.
    pub log_index: u64,
}

impl Membership {
    pub(crate) fn from_wire(response: wire::MembershipResponse) -> Membership {
        Membership {
            leader_id: response.leader_id,
            voters: response.voters,
            learners: response.learners,
            log_index: response.log_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers that were woken together but take a few scheduler turns each before they call again
    /// (as after the answers to one batch) go out in one request, not one per turn.
    #[tokio::test]
    async fn callers_woken_together_go_out_in_one_batch() {
        const CALLERS: usize = 100;
        let (sender, mut queue) = mpsc::channel(CALLERS);
        let (release, released) = tokio::sync::watch::channel(false);
        for caller in 0..CALLERS {
            let sender = sender.clone();
            let mut released = released.clone();
            tokio::spawn(async move {
                released.wait_for(|released| *released).await.unwrap();
                for _ in 0..caller % 6 {
                    tokio::task::yield_now().await;
                }
                sender.send(caller).await.unwrap();
            });
        }
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        let first = queue.recv().await.unwrap();
        let batch = fill_batch(first, &mut queue).await;
        assert_eq!(batch.len(), CALLERS, "the callers that needed up to five turns are in the batch");
    }

    #[tokio::test]
    async fn a_lone_call_goes_out_alone_and_a_batch_stops_at_the_limit() {
        let (sender, mut queue) = mpsc::channel(EVENTS_PER_REQUEST_MAX + 10);
        assert_eq!(fill_batch(7, &mut queue).await, [7]);

        for event in 0..EVENTS_PER_REQUEST_MAX + 10 {
            sender.try_send(event).unwrap();
        }
        let first = queue.recv().await.unwrap();
        assert_eq!(fill_batch(first, &mut queue).await.len(), EVENTS_PER_REQUEST_MAX);
        let first = queue.recv().await.unwrap();
        assert_eq!(
            fill_batch(first, &mut queue).await,
            (EVENTS_PER_REQUEST_MAX..EVENTS_PER_REQUEST_MAX + 10).collect::<Vec<_>>()
        );
    }
}
