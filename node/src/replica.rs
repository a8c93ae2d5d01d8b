//! The replica as its services see it: who leads, and how a call that needs the leader gets
//! there.
//!
//! Every ledger and admin call that only the leader can answer goes through
//! [`Replica::on_leader`]: answered here when this replica leads, or forwarded once to the leader
//! with what remains of its deadline. It is the one place such calls pass, where authorisation
//! will be checked. This module owns the leader's identity as this replica knows it, the channels
//! to peers, and the response header; it must never look into what a call asks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use rustls::ClientConfig;
use tally_consensus::LedgerReadView;
use tally_consensus::peer_identity::PeerIdentity;
use tally_consensus::raft_state_machine::{LedgerViews, consensus_record};
use tally_consensus::type_config::TypeConfig;
use tally_identity::ClusterId;
use tally_identity::tls::{Current, GrpcConnector};
use tally_proto::v1 as wire;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::clock::ClockCheck;

/// Metadata a replica adds to a request it forwards, so that it is never forwarded twice.
pub(crate) const FORWARDED: &str = "x-tally-forwarded";
/// Metadata a replica adds to a request it forwards: the principal its client's certificate named,
/// which the leader trusts from a replica's connection only.
pub(crate) const PRINCIPAL: &str = "x-tally-principal";
const LEADER_ID: &str = "x-tally-leader-id";
const LEADER_ADDRESS: &str = "x-tally-leader-address";

/// Who leads, as this replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leader {
    Me,
    Other { id: u64, address: String },
    Unknown,
}

/// This replica, shared by the gateway and the admin service.
pub struct Replica {
    pub node_id: u64,
    pub raft: Raft<TypeConfig>,
    pub views: LedgerViews,
    pub request_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    /// How channels to other replicas are secured: this replica's certificate and the cluster
    /// whose replicas the other end must be; none in plaintext.
    grpc_tls: Option<(Arc<Current<ClientConfig>>, ClusterId)>,
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
    #[allow(clippy::too_many_arguments, reason = "each is a part of the replica, made once by server::run")]
    pub fn new(
        node_id: u64,
        raft: Raft<TypeConfig>,
        views: LedgerViews,
        request_timeout: Duration,
        message_bytes_max: usize,
        identity: Arc<PeerIdentity>,
        grpc_tls: Option<(Arc<Current<ClientConfig>>, ClusterId)>,
        clock: ClockCheck,
    ) -> Replica {
        let channels = Mutex::new(HashMap::new());
        Replica { node_id, raft, views, request_timeout, channels, grpc_tls, message_bytes_max, identity, clock }
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
        let channel = match &self.grpc_tls {
            Some((config, cluster)) => {
                endpoint.connect_with_connector_lazy(GrpcConnector::new(Arc::clone(config), *cluster))
            }
            None => endpoint.connect_lazy(),
        };
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
        // A replica calls the admin API only as a relay (`authorise.rs`).
        request.metadata_mut().insert(FORWARDED, MetadataValue::from_static("1"));
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

    /// Runs a call only the leader can answer: `local` (given the request and its deadline) when
    /// this replica leads; otherwise the call is forwarded once to the leader with `forward`, on a
    /// client `client` makes for the leader's address ([`Replica::forward_once`]). A replica sent a
    /// forwarded call that it cannot answer itself (leadership moved meanwhile) answers
    /// UNAVAILABLE naming the leader rather than forwarding again, so that two replicas with stale
    /// views never bounce a call between them. Every error names the leader
    /// ([`Replica::with_leader`]), so that a client can go there directly.
    pub(crate) async fn on_leader<Req, Resp, Client, Forward, Forwarded>(
        &self,
        request: Request<Req>,
        client: impl FnOnce(&str) -> Result<Client, Status>,
        forward: Forward,
        local: impl AsyncFnOnce(Request<Req>, Instant) -> Result<Response<Resp>, Status>,
    ) -> Result<Response<Resp>, Status>
    where
        Forward: FnOnce(Client, Request<Req>) -> Forwarded,
        Forwarded: Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let was_forwarded = forwarded(&request);
        let leader = self.known_leader(deadline).await.map_err(|status| self.with_leader(status))?;
        let answer = match leader {
            Leader::Me => local(request, deadline).await,
            Leader::Other { id, address } if was_forwarded => Err(Replica::not_leader(id, &address)),
            Leader::Other { address, .. } => {
                let client = client(&address)?;
                let principal = principal_of(&request);
                let forwarded = |request: &mut Request<Req>| {
                    if let Some(principal) = principal {
                        request.metadata_mut().insert(PRINCIPAL, MetadataValue::from(principal));
                    }
                };
                let forward = |client, mut request: Request<Req>| {
                    forwarded(&mut request);
                    forward(client, request)
                };
                self.forward_once(&address, client, request.into_inner(), deadline, forward).await
            }
            Leader::Unknown => unreachable!("known_leader returns a known leader"),
        };
        answer.map_err(|status| self.with_leader(status))
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

/// Whether another replica forwarded this request (it must then not be forwarded again).
/// The principal a request comes from: the one its connection's certificate names, or, on a
/// replica's connection with a forwarded call, the one the forwarding replica passed on. `None`
/// without TLS.
pub(crate) fn principal_of<T>(request: &Request<T>) -> Option<u64> {
    use tally_identity::certs::Identity;
    match request.extensions().get::<crate::connections::ConnectionInfo>().and_then(|info| info.identity)? {
        Identity::Principal(principal) => Some(principal),
        Identity::Replica(_) if forwarded(request) => {
            request.metadata().get(PRINCIPAL).and_then(|value| value.to_str().ok()).and_then(|text| text.parse().ok())
        }
        Identity::Replica(_) => None,
    }
}

pub(crate) fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}
