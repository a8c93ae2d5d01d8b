//! The `LedgerService` every replica serves: any replica accepts any request.
//!
//! Writes are checked field by field, then handed to group commit on the leader, or forwarded once
//! to the leader by a follower. Reads are linearizable: the leader confirms it still leads (read
//! index) and answers from a read view that includes everything committed before the request; a
//! follower forwards reads to the leader. Every answer names the leader, and every error that a
//! different replica could answer carries the leader in its metadata (`x-tally-leader-id`,
//! `x-tally-leader-address`). Requests in flight are bounded; a request that cannot reach a quorum
//! fails with `UNAVAILABLE` when its deadline passes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use tally_consensus::LedgerReadView;
use tally_consensus::peer_identity::PeerIdentity;
use tally_consensus::raft_state_machine::{LedgerViews, consensus_record};
use tally_consensus::type_config::TypeConfig;
use tally_proto::v1 as wire;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tally_proto::v1::ledger_service_server::LedgerService;
use tally_state_machine::constants::EVENTS_PER_BATCH_MAX;
use tally_state_machine::{LedgerQueries, QueryError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::clock::ClockCheck;
use crate::convert::{self, FieldError, Renderer};
use crate::disk::DiskSpace;
use crate::group_commit::{Events, GroupCommit, WriteError};

/// Metadata a replica adds to a request it forwards, so that it is never forwarded twice.
pub(crate) const FORWARDED: &str = "x-tally-forwarded";
const LEADER_ID: &str = "x-tally-leader-id";
const LEADER_ADDRESS: &str = "x-tally-leader-address";

/// Who leads, as this replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leader {
    Me,
    Other { id: u64, address: String },
    Unknown,
}

/// Shared by the gateway and the admin service.
pub struct Replica {
    pub node_id: u64,
    pub raft: Raft<TypeConfig>,
    pub views: LedgerViews,
    pub request_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    message_bytes_max: usize,
    /// This replica on the peer protocol: what says it must stop after losing its data.
    pub identity: Arc<PeerIdentity>,
    /// Its clock against its peers': a leader whose clock disagrees with a majority's proposes nothing.
    pub clock: ClockCheck,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Replica({})", self.node_id)
    }
}

impl Replica {
    pub fn new(
        node_id: u64,
        raft: Raft<TypeConfig>,
        views: LedgerViews,
        request_timeout: Duration,
        message_bytes_max: usize,
        identity: Arc<PeerIdentity>,
        clock: ClockCheck,
    ) -> Replica {
        let channels = Mutex::new(HashMap::new());
        Replica { node_id, raft, views, request_timeout, channels, message_bytes_max, identity, clock }
    }

    pub fn leader(&self) -> Leader {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(id) if id == self.node_id => Leader::Me,
            Some(id) => match metrics.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Other { id, address: node.address.clone() },
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// Waits (until `deadline`) for a leader to be known.
    pub async fn known_leader(&self, deadline: Instant) -> Result<Leader, Status> {
        let mut metrics = self.raft.metrics();
        loop {
            let leader = self.leader();
            if leader != Leader::Unknown {
                return Ok(leader);
            }
            if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                return Err(Status::unavailable(format!(
                    "no leader within {} ms: fewer than a majority of replicas can be reached",
                    self.request_timeout.as_millis()
                )));
            }
        }
    }

    /// A channel to a peer, opened once and reused.
    pub fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("the channel cache lock is never poisoned");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| Status::internal(format!("leader address {address:?} is invalid: {error}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Asks voter `successor` to run an election now (it wins if its log is as long as a
    /// majority's), as `tallyctl cluster transfer-leader` does; waits at most the request timeout.
    pub async fn hand_leadership_to(&self, successor: u64) -> Result<(), Status> {
        let address = {
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let node = membership
                .get_node(&successor)
                .ok_or_else(|| Status::failed_precondition(format!("node {successor} is not a member")))?;
            node.address.clone()
        };
        let mut admin = tally_proto::v1::admin_service_client::AdminServiceClient::new(self.channel(&address)?);
        let mut request = Request::new(wire::TransferLeaderRequest { node_id: successor });
        request.set_timeout(self.request_timeout);
        admin.transfer_leader(request).await.map(|_| ())
    }

    pub fn ledger_client(&self, address: &str) -> Result<LedgerServiceClient<Channel>, Status> {
        Ok(LedgerServiceClient::new(self.channel(address)?)
            .max_decoding_message_size(self.message_bytes_max)
            .max_encoding_message_size(self.message_bytes_max))
    }

    /// Sends a request on to the leader once, marked as forwarded (so that the leader, if it
    /// lost leadership meanwhile, answers instead of forwarding again), with what remains of the
    /// deadline. Shared by ledger and admin calls.
    pub(crate) async fn forward_once<Client, Req, Resp, Call, Fut>(
        &self,
        address: &str,
        client: Client,
        message: Req,
        deadline: Instant,
        call: Call,
    ) -> Result<Response<Resp>, Status>
    where
        Call: FnOnce(Client, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut request = Request::new(message);
        request.metadata_mut().insert(FORWARDED, MetadataValue::from_static("1"));
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let answer = tokio::time::timeout_at(deadline, call(client, request)).await;
        match answer {
            Err(_) => Err(Status::unavailable(format!("the leader at {address} did not answer in time; retry"))),
            // Replicas never answer `Unknown` or `Cancelled` themselves: it is the connection to the
            // leader that failed (it may have just died), which the client should retry.
            Ok(Err(status)) if matches!(status.code(), Code::Unknown | Code::Cancelled) => {
                Err(Status::unavailable(format!(
                    "the leader at {address} could not be reached ({}); retry, the write may have been applied",
                    status.message()
                )))
            }
            Ok(answer) => answer,
        }
    }

    /// The answer of a replica that was sent a forwarded request but is not the leader.
    pub(crate) fn not_leader(id: u64, address: &str) -> Status {
        Status::unavailable(format!("not the leader; the leader is {id} at {address}"))
    }

    pub fn header(&self, view: Option<&LedgerReadView>) -> wire::ResponseHeader {
        let (leader_id, leader_address) = match self.leader() {
            Leader::Me => (self.node_id, String::new()),
            Leader::Other { id, address } => (id, address),
            Leader::Unknown => (0, String::new()),
        };
        let leader_address = if leader_id == self.node_id {
            self.raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&self.node_id)
                .map(|node| node.address.clone())
                .unwrap_or_default()
        } else {
            leader_address
        };
        let applied_index = view
            .map(|view| consensus_record(view).applied.map_or(0, |log_id| log_id.index))
            .unwrap_or_else(|| self.raft.metrics().borrow().last_applied.map_or(0, |log_id| log_id.index));
        wire::ResponseHeader { served_by: self.node_id, leader_id, leader_address, applied_index }
    }

    /// Adds the leader to an error, so that a client can go there directly.
    pub fn with_leader(&self, mut status: Status) -> Status {
        if let Leader::Other { id, address } = self.leader() {
            if let Ok(value) = MetadataValue::try_from(id.to_string()) {
                status.metadata_mut().insert(LEADER_ID, value);
            }
            if let Ok(value) = MetadataValue::try_from(address) {
                status.metadata_mut().insert(LEADER_ADDRESS, value);
            }
        }
        status
    }
}

/// The gateway's service.
#[derive(Clone, Debug)]
pub struct Gateway {
    replica: Arc<Replica>,
    group_commit: GroupCommit,
    limits: GatewayLimits,
    in_flight: InFlight,
    disk: Arc<DiskSpace>,
}

/// What the gateway admits at once, and per request.
#[derive(Clone, Copy, Debug)]
pub struct GatewayLimits {
    pub requests_in_flight_max: usize,
    pub request_bytes_in_flight_max: usize,
    /// Events in one write request (`group_commit.events_per_batch_max`).
    pub events_per_request_max: usize,
}

/// Requests in flight are counted in units of this many bytes (a semaphore counts in `u32`).
const IN_FLIGHT_UNIT_BYTES: usize = 1024;

/// The permits a request holds while it is served.
#[derive(Debug)]
struct Admitted {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The requests being served, bounded in count and in bytes.
#[derive(Clone, Debug)]
struct InFlight {
    requests: Arc<Semaphore>,
    /// Kibibytes of requests in flight, at most `request_bytes_in_flight_max` of them.
    kibibytes: Arc<Semaphore>,
    requests_max: usize,
    bytes_max: usize,
}

impl InFlight {
    fn new(requests_max: usize, bytes_max: usize) -> InFlight {
        InFlight {
            requests: Arc::new(Semaphore::new(requests_max)),
            kibibytes: Arc::new(Semaphore::new(bytes_max / IN_FLIGHT_UNIT_BYTES)),
            requests_max,
            bytes_max,
        }
    }

    /// Admits a request of `encoded_bytes` within both limits, or refuses it with
    /// RESOURCE_EXHAUSTED naming the limit (the SDK retries: it is this moment's load, not the
    /// request). Refused requests hold nothing.
    fn admit(&self, encoded_bytes: usize) -> Result<Admitted, Status> {
        let request = Arc::clone(&self.requests).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "more than {} requests in flight on this replica (limits.requests_in_flight_max)",
                self.requests_max
            ))
        })?;
        let units = encoded_bytes.div_ceil(IN_FLIGHT_UNIT_BYTES).max(1);
        let bytes = u32::try_from(units)
            .ok()
            .and_then(|units| Arc::clone(&self.kibibytes).try_acquire_many_owned(units).ok())
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "requests in flight on this replica would hold more than {} bytes \
                     (limits.request_bytes_in_flight_max)",
                    self.bytes_max
                ))
            })?;
        Ok(Admitted { _request: request, _bytes: bytes })
    }
}

fn invalid(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn query_error(error: QueryError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), Status> {
    if count == 0 {
        return Err(Status::invalid_argument(format!("{field}: the request has no events")));
    }
    if count > max {
        return Err(Status::invalid_argument(format!(
            "{field}: {count} events, above the limit of {max} per request (group_commit.events_per_batch_max)"
        )));
    }
    Ok(())
}

/// Checks a write's event count and converts each wire event, naming the first bad field.
fn convert_events<W, E>(
    field: &str,
    events: &[W],
    events_max: usize,
    convert: impl Fn(&W, usize) -> Result<E, FieldError>,
) -> Result<Vec<E>, Status> {
    check_count(field, events.len(), events_max)?;
    events.iter().enumerate().map(|(index, event)| convert(event, index)).collect::<Result<_, _>>().map_err(invalid)
}

/// Whether another replica forwarded this request (it must then not be forwarded again).
pub(crate) fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

impl Gateway {
    pub fn new(
        replica: Arc<Replica>,
        group_commit: GroupCommit,
        limits: GatewayLimits,
        disk: Arc<DiskSpace>,
    ) -> Gateway {
        assert!(limits.events_per_request_max <= EVENTS_PER_BATCH_MAX);
        Gateway {
            replica,
            group_commit,
            in_flight: InFlight::new(limits.requests_in_flight_max, limits.request_bytes_in_flight_max),
            limits,
            disk,
        }
    }

    /// Admits a request within the limits on requests and on their bytes in flight.
    fn admit(&self, request: &impl prost::Message) -> Result<Admitted, Status> {
        self.in_flight.admit(request.encoded_len())
    }

    /// Writes through group commit on the leader, or forwards to it.
    async fn write<Req, Call, Fut>(
        &self,
        request: Request<Req>,
        events: Events,
        call: Call,
    ) -> Result<Response<wire::CreateResponse>, Status>
    where
        Call: FnOnce(LedgerServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<wire::CreateResponse>, Status>>,
    {
        let deadline = Instant::now() + self.replica.request_timeout;
        let was_forwarded = forwarded(&request);
        let started = std::time::Instant::now();
        let leader = self.replica.known_leader(deadline).await.map_err(|status| self.replica.with_leader(status))?;
        let result = match leader {
            Leader::Other { address, .. } if !was_forwarded => {
                let client = self.replica.ledger_client(&address)?;
                self.replica.forward_once(&address, client, request.into_inner(), deadline, call).await
            }
            Leader::Other { id, address } => Err(Replica::not_leader(id, &address)),
            Leader::Unknown => unreachable!("known_leader returns a known leader"),
            Leader::Me => self.commit(events, deadline).await,
        };
        metrics::histogram!("tally_write_seconds").record(started.elapsed().as_secs_f64());
        result.map_err(|status| self.replica.with_leader(status))
    }

    async fn commit(&self, events: Events, deadline: Instant) -> Result<Response<wire::CreateResponse>, Status> {
        if let Some(reason) = self.disk.below_floor() {
            return Err(Status::resource_exhausted(reason));
        }
        // UNAVAILABLE: the SDK retries, and finds the leader this one hands over to.
        if let Some(reason) = self.replica.clock.refusal() {
            return Err(Status::unavailable(reason));
        }
        let written = match tokio::time::timeout_at(deadline, self.group_commit.submit(events)).await {
            Ok(written) => written,
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "no quorum confirmed the write within {} ms; it may still be applied: retry with the same ids",
                    self.replica.request_timeout.as_millis()
                )));
            }
        };
        let written = written.map_err(|error| match error {
            WriteError::NotLeader { leader: Some((id, node)) } => {
                Status::unavailable(format!("leadership moved to {id} at {}; retry there", node.address))
            }
            WriteError::NotLeader { leader: None } => Status::unavailable("leadership moved; retry".to_string()),
            WriteError::Unavailable(detail) => Status::unavailable(detail),
            WriteError::Refused(reason) => Status::aborted(format!("{reason}; nothing was applied: retry")),
            WriteError::Overloaded => Status::resource_exhausted(error.to_string()),
        })?;
        let mut header = self.replica.header(None);
        header.applied_index = header.applied_index.max(written.log_index);
        let results = written.results.iter().map(|code| i32::from(*code)).collect();
        Ok(Response::new(wire::CreateResponse { header: Some(header), results }))
    }

    /// Answers a read on the leader after a read-index barrier, or forwards it there.
    async fn read<Req, Resp, Local, Call, Fut>(
        &self,
        request: Request<Req>,
        local: Local,
        call: Call,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Local: FnOnce(&Req, &LedgerReadView, wire::ResponseHeader) -> Result<Resp, Status>,
        Call: FnOnce(LedgerServiceClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let _permit = self.admit(request.get_ref())?;
        let deadline = Instant::now() + self.replica.request_timeout;
        let was_forwarded = forwarded(&request);
        let leader = self.replica.known_leader(deadline).await.map_err(|status| self.replica.with_leader(status))?;
        let result = match leader {
            Leader::Other { address, .. } if !was_forwarded => {
                let client = self.replica.ledger_client(&address)?;
                self.replica.forward_once(&address, client, request.into_inner(), deadline, call).await
            }
            Leader::Other { id, address } => Err(Replica::not_leader(id, &address)),
            Leader::Unknown => unreachable!("known_leader returns a known leader"),
            Leader::Me => {
                let read_log_id = match tokio::time::timeout_at(deadline, self.replica.raft.ensure_linearizable()).await
                {
                    Ok(Ok(read_log_id)) => read_log_id,
                    Ok(Err(error)) => {
                        return Err(self
                            .replica
                            .with_leader(Status::unavailable(format!("read not confirmed: {error}"))));
                    }
                    Err(_) => return Err(Status::unavailable("no quorum confirmed leadership for this read in time")),
                };
                // Applied is not yet visible: a busy replica commits its store a little later.
                let visible = self.replica.views.wait_committed(read_log_id.map(|log_id| log_id.index));
                if tokio::time::timeout_at(deadline, visible).await.is_err() {
                    return Err(Status::unavailable("the ledger did not reach the read's log index in time"));
                }
                let view = self.replica.views.view();
                let header = self.replica.header(Some(&view));
                local(request.get_ref(), &view, header).map(Response::new)
            }
        };
        result.map_err(|status| self.replica.with_leader(status))
    }
}

#[tonic::async_trait]
impl LedgerService for Gateway {
    async fn create_ledgers(
        &self,
        request: Request<wire::CreateLedgersRequest>,
    ) -> Result<Response<wire::CreateResponse>, Status> {
        let _permit = self.admit(request.get_ref())?;
        let events = convert_events(
            "ledgers",
            &request.get_ref().ledgers,
            self.limits.events_per_request_max,
            convert::new_ledger,
        )?;
        self.write(request, Events::Ledgers(events), |mut client, request| async move {
            client.create_ledgers(request).await
        })
        .await
    }

    async fn create_accounts(
        &self,
        request: Request<wire::CreateAccountsRequest>,
    ) -> Result<Response<wire::CreateResponse>, Status> {
        let _permit = self.admit(request.get_ref())?;
        let events = convert_events(
            "accounts",
            &request.get_ref().accounts,
            self.limits.events_per_request_max,
            convert::new_account,
        )?;
        self.write(request, Events::Accounts(events), |mut client, request| async move {
            client.create_accounts(request).await
        })
        .await
    }

    async fn create_transfers(
        &self,
        request: Request<wire::CreateTransfersRequest>,
    ) -> Result<Response<wire::CreateResponse>, Status> {
        let _permit = self.admit(request.get_ref())?;
        let events = convert_events(
            "transfers",
            &request.get_ref().transfers,
            self.limits.events_per_request_max,
            convert::new_transfer,
        )?;
        self.write(request, Events::Transfers(events), |mut client, request| async move {
            client.create_transfers(request).await
        })
        .await
    }

    async fn lookup_ledgers(
        &self,
        request: Request<wire::LookupLedgersRequest>,
    ) -> Result<Response<wire::LookupLedgersResponse>, Status> {
        self.read(
            request,
            |message, view, header| {
                let found = view.lookup_ledgers(&message.ids).map_err(query_error)?;
                let render = Renderer { storage: view };
                let ledgers = found
                    .iter()
                    .map(|ledger| wire::LedgerLookup {
                        found: ledger.is_some(),
                        ledger: ledger.as_ref().map(|ledger| render.ledger(ledger)),
                    })
                    .collect();
                Ok(wire::LookupLedgersResponse { header: Some(header), ledgers })
            },
            |mut client, request| async move { client.lookup_ledgers(request).await },
        )
        .await
    }

    async fn lookup_accounts(
        &self,
        request: Request<wire::LookupRequest>,
    ) -> Result<Response<wire::LookupAccountsResponse>, Status> {
        self.read(
            request,
            |message, view, header| {
                let ids: Vec<u128> = message.ids.iter().map(|id| convert::u128_from(Some(id))).collect();
                let found = view.lookup_accounts(&ids).map_err(query_error)?;
                let render = Renderer { storage: view };
                let accounts = found
                    .iter()
                    .map(|account| wire::AccountLookup {
                        found: account.is_some(),
                        account: account.as_ref().map(|account| render.account(account)),
                    })
                    .collect();
                Ok(wire::LookupAccountsResponse { header: Some(header), accounts })
            },
            |mut client, request| async move { client.lookup_accounts(request).await },
        )
        .await
    }

    async fn lookup_transfers(
        &self,
        request: Request<wire::LookupRequest>,
    ) -> Result<Response<wire::LookupTransfersResponse>, Status> {
        self.read(
            request,
            |message, view, header| {
                let ids: Vec<u128> = message.ids.iter().map(|id| convert::u128_from(Some(id))).collect();
                let found = view.lookup_transfers(&ids).map_err(query_error)?;
                let render = Renderer { storage: view };
                let transfers = found
                    .iter()
                    .map(|transfer| wire::TransferLookup {
                        found: transfer.is_some(),
                        transfer: transfer.as_ref().map(|transfer| render.transfer(transfer)),
                    })
                    .collect();
                Ok(wire::LookupTransfersResponse { header: Some(header), transfers })
            },
            |mut client, request| async move { client.lookup_transfers(request).await },
        )
        .await
    }

    async fn get_account_transfers(
        &self,
        request: Request<wire::AccountTransfersRequest>,
    ) -> Result<Response<wire::TransfersPage>, Status> {
        self.read(
            request,
            |message, view, header| {
                let filter = convert::account_transfers_filter(message).map_err(invalid)?;
                let page = view.get_account_transfers(filter).map_err(query_error)?;
                let render = Renderer { storage: view };
                let transfers = page.items.iter().map(|transfer| render.transfer(transfer)).collect();
                Ok(wire::TransfersPage { header: Some(header), transfers, cursor: page.cursor })
            },
            |mut client, request| async move { client.get_account_transfers(request).await },
        )
        .await
    }

    async fn get_account_balances(
        &self,
        request: Request<wire::AccountBalancesRequest>,
    ) -> Result<Response<wire::AccountBalancesPage>, Status> {
        self.read(
            request,
            |message, view, header| {
                let account_id = convert::u128_from(message.account_id.as_ref());
                let page = view
                    .get_account_balances(account_id, convert::window(message.window.as_ref()))
                    .map_err(query_error)?;
                let render = Renderer { storage: view };
                let scale = render.account_scale(account_id);
                let balances = page.items.iter().map(|balance| render.balance(balance, scale)).collect();
                Ok(wire::AccountBalancesPage { header: Some(header), balances, cursor: page.cursor })
            },
            |mut client, request| async move { client.get_account_balances(request).await },
        )
        .await
    }

    async fn query_ledgers(
        &self,
        request: Request<wire::QueryLedgersRequest>,
    ) -> Result<Response<wire::LedgersPage>, Status> {
        self.read(
            request,
            |message, view, header| {
                let page = view.query_ledgers(convert::window(message.window.as_ref())).map_err(query_error)?;
                let render = Renderer { storage: view };
                let ledgers = page.items.iter().map(|ledger| render.ledger(ledger)).collect();
                Ok(wire::LedgersPage { header: Some(header), ledgers, cursor: page.cursor })
            },
            |mut client, request| async move { client.query_ledgers(request).await },
        )
        .await
    }

    async fn query_accounts(
        &self,
        request: Request<wire::QueryRequest>,
    ) -> Result<Response<wire::AccountsPage>, Status> {
        self.read(
            request,
            |message, view, header| {
                let filter = convert::field_filter(message).map_err(invalid)?;
                let page =
                    view.query_accounts(filter, convert::window(message.window.as_ref())).map_err(query_error)?;
                let render = Renderer { storage: view };
                let accounts = page.items.iter().map(|account| render.account(account)).collect();
                Ok(wire::AccountsPage { header: Some(header), accounts, cursor: page.cursor })
            },
            |mut client, request| async move { client.query_accounts(request).await },
        )
        .await
    }

    async fn query_transfers(
        &self,
        request: Request<wire::QueryRequest>,
    ) -> Result<Response<wire::TransfersPage>, Status> {
        self.read(
            request,
            |message, view, header| {
                let filter = convert::field_filter(message).map_err(invalid)?;
                let page =
                    view.query_transfers(filter, convert::window(message.window.as_ref())).map_err(query_error)?;
                let render = Renderer { storage: view };
                let transfers = page.items.iter().map(|transfer| render.transfer(transfer)).collect();
                Ok(wire::TransfersPage { header: Some(header), transfers, cursor: page.cursor })
            },
            |mut client, request| async move { client.query_transfers(request).await },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_in_flight_are_bounded_by_bytes_as_well_as_by_count() {
        let in_flight = InFlight::new(10, 256 * 1024);
        let first = in_flight.admit(100 * 1024).expect("100 KiB of 256 KiB");
        let second = in_flight.admit(100 * 1024).expect("200 KiB of 256 KiB");
        let refused = in_flight.admit(100 * 1024).expect_err("300 KiB is above 256 KiB");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("limits.request_bytes_in_flight_max"), "{}", refused.message());
        // A refused request holds nothing: a small one still fits, and a finished one frees its bytes.
        let small = in_flight.admit(10).expect("one unit fits beside 200 KiB");
        drop(first);
        let third = in_flight.admit(100 * 1024).expect("the first request's bytes were returned");
        drop((second, small, third));
        assert!(in_flight.admit(256 * 1024).is_ok(), "everything was returned");
    }

    #[test]
    fn requests_in_flight_are_bounded_by_count() {
        let in_flight = InFlight::new(2, 256 * 1024);
        let held = [in_flight.admit(1).unwrap(), in_flight.admit(1).unwrap()];
        let refused = in_flight.admit(1).expect_err("a third request is above the count");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("limits.requests_in_flight_max"), "{}", refused.message());
        drop(held);
        assert!(in_flight.admit(1).is_ok());
    }

    #[test]
    fn a_request_above_the_byte_budget_is_refused_not_stuck() {
        let in_flight = InFlight::new(2, 4 * 1024);
        let refused = in_flight.admit(5 * 1024).expect_err("larger than the whole budget");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(in_flight.admit(4 * 1024).is_ok(), "the refused request's count permit was returned");
    }

    #[test]
    fn a_write_is_refused_above_the_events_per_request_limit() {
        let convert = |event: &u32, _index: usize| Ok::<u32, FieldError>(*event);
        assert_eq!(convert_events("transfers", &[1, 2, 3], 3, convert).unwrap(), vec![1, 2, 3]);
        let refused = convert_events("transfers", &[1, 2, 3, 4], 3, convert).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("group_commit.events_per_batch_max"), "{}", refused.message());
        assert!(refused.message().contains("4 events"), "{}", refused.message());
        let empty = convert_events("transfers", &[], 3, convert).unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
    }
}
