//! The peer network: openraft's RPCs over tonic gRPC, both directions.
//!
//! Requests and openraft's whole `Result` travel in Tally's binary encoding inside `RaftMessage`,
//! so a Raft error on the remote side (a higher term, say) arrives as the same error here. One
//! lazily connected HTTP/2 channel per peer is reused by every stream to it and reconnects by
//! itself; every call carries openraft's deadline; an unreachable peer is retried with exponential
//! backoff; messages are bounded by [`RAFT_MESSAGE_BYTES_MAX`]. Snapshots travel as openraft's
//! chunks, each at most the configured chunk size.

use std::collections::HashMap;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tally_proto::v1::RaftMessage;
use tally_proto::v1::raft_service_client::RaftServiceClient;
use tally_proto::v1::raft_service_server::RaftService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::types::{NodeId, PeerNode, TypeConfig, decode, encode};

/// The largest message between replicas, either way. It bounds what one AppendEntries may carry
/// (openraft's `max_payload_entries` keeps batches of ~1 MiB well below it) and one snapshot chunk.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Time to open a TCP connection to a peer before giving up on this attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How much longer than openraft's own timer for an RPC the transport's deadline runs. openraft
/// wraps every call in a timer of the RPC's hard TTL and reports a [`RPCError::Timeout`] when it
/// fires, which the leader simply retries. Had the transport's deadline fired first, at the same
/// instant, a slow but live follower would have looked unreachable and been backed off for 100 ms
/// to 2 s (BENCHMARKS.md, issue 5, fourth round).
const TRANSPORT_DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// Backoff after a peer was unreachable: 100 ms doubling to at most 2 s.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

type RpcError<E = RaftError<NodeId>> = RPCError<NodeId, PeerNode, E>;

/// Makes clients to peers, sharing one channel per peer address.
#[derive(Debug, Default, Clone)]
pub struct GrpcNetwork {
    channels: HashMap<String, Channel>,
}

impl GrpcNetwork {
    pub fn new() -> GrpcNetwork {
        GrpcNetwork::default()
    }

    fn channel(&mut self, address: &str) -> Result<Channel, String> {
        if let Some(channel) = self.channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| format!("invalid peer address {address:?}: {error}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        self.channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        let client = self.channel(&node.address).map(|channel| {
            RaftServiceClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        });
        PeerClient { target, node: node.clone(), client }
    }
}

/// The client side of one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    node: PeerNode,
    /// `Err` when the peer's address is unusable; every call then reports the peer unreachable.
    client: Result<RaftServiceClient<Channel>, String>,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(error) => return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(error.clone())))),
        };
        let mut message = Request::new(RaftMessage { payload: encode(request).into() });
        message.set_timeout(option.hard_ttl() + TRANSPORT_DEADLINE_MARGIN);
        let response = match method {
            Method::AppendEntries => client.append_entries(message).await,
            Method::Vote => client.vote(message).await,
            Method::InstallSnapshot => client.install_snapshot(message).await,
        };
        let payload = response.map_err(|status| status_error(&status))?.into_inner().payload;
        let result: Result<Resp, E> =
            decode(&payload, "a peer's response").map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), error)))
    }
}

#[derive(Clone, Copy, Debug)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// A transport failure: only a peer that cannot be connected to is unreachable (and openraft backs
/// off from it). A call that ran out of time or was cancelled reached a live peer that was slow:
/// that is a network error, retried at once, like openraft's own timeout.
fn status_error<E: std::error::Error>(status: &Status) -> RpcError<E> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.call(Method::AppendEntries, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<RaftError<NodeId, InstallSnapshotError>>> {
        self.call(Method::InstallSnapshot, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call(Method::Vote, &request, &option).await
    }

    fn backoff(&self) -> Backoff {
        let mut delay = BACKOFF_FIRST;
        Backoff::new(std::iter::from_fn(move || {
            let current = delay;
            delay = (delay * 2).min(BACKOFF_MAX);
            Some(current)
        }))
    }
}

/// The server side: hands peers' RPCs to the local Raft and sends back its whole result.
#[derive(Clone)]
pub struct RaftGrpcService {
    raft: openraft::Raft<TypeConfig>,
}

impl std::fmt::Debug for RaftGrpcService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RaftGrpcService")
    }
}

impl RaftGrpcService {
    pub fn new(raft: openraft::Raft<TypeConfig>) -> RaftGrpcService {
        RaftGrpcService { raft }
    }

    /// The tonic service, with the message limit applied in both directions.
    pub fn into_server(self) -> tally_proto::v1::raft_service_server::RaftServiceServer<RaftGrpcService> {
        tally_proto::v1::raft_service_server::RaftServiceServer::new(self)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }
}

fn decode_request<T: DeserializeOwned>(request: Request<RaftMessage>, what: &'static str) -> Result<T, Status> {
    decode(&request.into_inner().payload, what).map_err(|error| Status::invalid_argument(error.to_string()))
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage { payload: encode(result).into() }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let request: AppendEntriesRequest<TypeConfig> = decode_request(request, "append entries request")?;
        reply(&self.raft.append_entries(request).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let request: VoteRequest<NodeId> = decode_request(request, "vote request")?;
        reply(&self.raft.vote(request).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let request: InstallSnapshotRequest<TypeConfig> = decode_request(request, "install snapshot request")?;
        reply(&self.raft.install_snapshot(request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: Status) -> &'static str {
        match status_error::<RaftError<NodeId>>(&status) {
            RPCError::Unreachable(_) => "unreachable",
            RPCError::Network(_) => "network",
            _ => "other",
        }
    }

    /// openraft backs off from an unreachable peer for up to 2 s: only a failed connection may say
    /// so. A slow follower whose call ran out of time is retried at once.
    #[test]
    fn only_a_failed_connection_makes_a_peer_unreachable() {
        assert_eq!(kind(Status::unavailable("tcp connect error")), "unreachable");
        assert_eq!(kind(Status::cancelled("Timeout expired")), "network");
        assert_eq!(kind(Status::deadline_exceeded("deadline has elapsed")), "network");
        assert_eq!(kind(Status::internal("h2 protocol error")), "network");
    }
}
