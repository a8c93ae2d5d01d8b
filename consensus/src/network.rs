//! The peer network: openraft's RPCs over framed TCP, both directions.
//!
//! Why not gRPC: on a host shared by seven replicas every Raft entry costs a dozen peer RPCs (an
//! append and a commit-only message to each follower), and HTTP/2 framing, HPACK and the tasks that
//! stand between a gRPC caller and its socket were a quarter to a third of each replica's CPU
//! (BENCHMARKS.md, issue 5). Here a call writes one frame on a connection it holds alone and reads
//! one frame back, on its own task.
//!
//! The wire: a connection opens with [`PEER_PROTOCOL_MAGIC`], which lets it share the replica's
//! gRPC port (the server tells the two apart by their first bytes, [`classify_opening`]). Then
//! requests and responses alternate. A request is its method (one byte), its body's length (u32,
//! little-endian) and the body; a response is its length and its body. Bodies are Tally's binary
//! encoding of openraft's request and of the whole `Result` the remote Raft returned, so a Raft error
//! on the remote side (a higher term, say) arrives as the same error here. Both ways a body is at
//! most [`RAFT_MESSAGE_BYTES_MAX`]; snapshots travel as openraft's chunks, each at most the
//! configured chunk size.
//!
//! Connections: each peer address has a pool of idle connections. A call takes one (or dials) and
//! gives it back only once it has read the whole response, so no two calls share a connection and a
//! call that timed out takes its connection down with it. A call that fails on a pooled connection is
//! sent once more on a fresh one, since the peer may have closed it while it sat idle; Raft is built
//! to tolerate a duplicated message. Only a failed connection attempt makes a peer unreachable (and
//! openraft then backs off from it).
//!
//! Metrics: `tally_peer_requests_total` and `tally_peer_request_seconds` (by method) for what this
//! replica answered; `tally_peer_call_failures_total` (by reason: unreachable, broken, timeout) and
//! `tally_peer_connections_opened_total` for what it sent.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::types::{NodeId, PeerNode, TypeConfig, decode, encode};

/// The first bytes of every peer connection. A gRPC client's first bytes are HTTP/2's preface
/// (`PRI * HTTP/2.0`), so the two never look alike.
pub const PEER_PROTOCOL_MAGIC: [u8; 8] = *b"TALLYRP1";

/// The largest message body between replicas, either way. It bounds what one AppendEntries may carry
/// (openraft's `max_payload_entries` keeps batches of ~1 MiB well below it) and one snapshot chunk.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Time to open a TCP connection to a peer before giving up on this attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A server closes a peer connection that has sent no whole request for this long; the client
/// dials again when it next needs one. Replication sends a heartbeat every heartbeat interval
/// (250-500 ms in the shipped configs), so it is mostly connections idle in a pool that close.
pub const PEER_CONNECTION_IDLE_MAX: Duration = Duration::from_secs(60);

/// How long an accepted connection may take to send the bytes that say what it is.
pub const OPENING_TIMEOUT: Duration = Duration::from_secs(10);

/// How much longer than openraft's own timer for an RPC the transport's deadline runs. openraft
/// wraps every call in a timer of the RPC's hard TTL and reports a [`RPCError::Timeout`] when it
/// fires, which the leader simply retries. Had the transport's deadline fired first, at the same
/// instant, a slow but live follower would have looked unreachable and been backed off for 100 ms
/// to 2 s (BENCHMARKS.md, issue 5, fourth round).
const TRANSPORT_DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// Idle connections kept per peer address; one handed back beyond this is closed. Replication
/// holds one per peer, elections and leadership checks briefly a few more.
const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 8;

/// Each connection reads through a buffer this large, so a small message takes one system call.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Backoff after a peer was unreachable: 100 ms doubling to at most 2 s.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

type RpcError<E = RaftError<NodeId>> = RPCError<NodeId, PeerNode, E>;

/// The RPC a request frame carries: its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Method {
    AppendEntries = 1,
    Vote = 2,
    InstallSnapshot = 3,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::AppendEntries => "append_entries",
            Method::Vote => "vote",
            Method::InstallSnapshot => "install_snapshot",
        }
    }

    fn from_byte(byte: u8) -> Option<Method> {
        match byte {
            1 => Some(Method::AppendEntries),
            2 => Some(Method::Vote),
            3 => Some(Method::InstallSnapshot),
            _ => None,
        }
    }
}

/// Makes clients to peers, sharing one pool of connections per peer address.
#[derive(Debug, Default, Clone)]
pub struct PeerNetwork {
    pools: HashMap<String, Arc<ConnectionPool>>,
}

impl PeerNetwork {
    pub fn new() -> PeerNetwork {
        PeerNetwork::default()
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        let pool = self
            .pools
            .entry(node.address.clone())
            .or_insert_with(|| Arc::new(ConnectionPool::new(node.address.clone())))
            .clone();
        PeerClient { target, node: node.clone(), pool }
    }
}

/// The client side of one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    node: PeerNode,
    pool: Arc<ConnectionPool>,
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
        let body = encode(request);
        let deadline = option.hard_ttl() + TRANSPORT_DEADLINE_MARGIN;
        let payload = match tokio::time::timeout(deadline, self.pool.exchange(method, &body)).await {
            Ok(Ok(payload)) => payload,
            Ok(Err(error)) => {
                metrics::counter!("tally_peer_call_failures_total", "reason" => error.reason()).increment(1);
                return Err(error.into_rpc_error());
            }
            Err(_) => {
                metrics::counter!("tally_peer_call_failures_total", "reason" => "timeout").increment(1);
                let error = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("replica {} at {} did not answer within {deadline:?}", self.target, self.node.address),
                );
                return Err(RPCError::Network(NetworkError::new(&error)));
            }
        };
        let result: Result<Resp, E> =
            decode(&payload, "a peer's response").map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), error)))
    }
}

/// Why a call got no response.
#[derive(Debug)]
enum CallError {
    /// No connection could be opened: the peer is down or cut off.
    Connect(io::Error),
    /// The connection broke or carried something that is not a response.
    Exchange(io::Error),
}

impl CallError {
    fn reason(&self) -> &'static str {
        match self {
            CallError::Connect(_) => "unreachable",
            CallError::Exchange(_) => "broken",
        }
    }

    /// Only a failed connection makes a peer unreachable (openraft backs off from it); a call that
    /// broke off reached a live peer and is retried at once.
    fn into_rpc_error<E: std::error::Error>(self) -> RpcError<E> {
        match self {
            CallError::Connect(error) => RPCError::Unreachable(Unreachable::new(&error)),
            CallError::Exchange(error) => RPCError::Network(NetworkError::new(&error)),
        }
    }
}

/// Idle connections to one peer address.
#[derive(Debug)]
struct ConnectionPool {
    address: String,
    idle: Mutex<Vec<PeerConnection>>,
}

impl ConnectionPool {
    fn new(address: String) -> ConnectionPool {
        ConnectionPool { address, idle: Mutex::new(Vec::new()) }
    }

    async fn exchange(&self, method: Method, body: &[u8]) -> Result<Vec<u8>, CallError> {
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        if let Some(mut connection) = pooled
            && let Ok(response) = connection.exchange(method, body).await
        {
            self.give_back(connection);
            return Ok(response);
        }
        let mut connection = PeerConnection::connect(&self.address).await.map_err(CallError::Connect)?;
        metrics::counter!("tally_peer_connections_opened_total").increment(1);
        let response = connection.exchange(method, body).await.map_err(CallError::Exchange)?;
        self.give_back(connection);
        Ok(response)
    }

    fn give_back(&self, connection: PeerConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_CONNECTIONS_PER_PEER_MAX {
            idle.push(connection);
        }
    }
}

/// One connection to a peer, between calls or held by one.
#[derive(Debug)]
struct PeerConnection {
    stream: BufReader<TcpStream>,
}

impl PeerConnection {
    async fn connect(address: &str) -> io::Result<PeerConnection> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {address} took over {CONNECT_TIMEOUT:?}"))
        })??;
        stream.set_nodelay(true)?;
        let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        stream.get_mut().write_all(&PEER_PROTOCOL_MAGIC).await?;
        Ok(PeerConnection { stream })
    }

    async fn exchange(&mut self, method: Method, body: &[u8]) -> io::Result<Vec<u8>> {
        let mut header = [0u8; 5];
        header[0] = method as u8;
        header[1..].copy_from_slice(&body_length(body.len())?.to_le_bytes());
        write_frame(self.stream.get_mut(), &header, body).await?;
        read_body(&mut self.stream).await
    }
}

fn body_length(length: usize) -> io::Result<u32> {
    if length > RAFT_MESSAGE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a peer message of {length} bytes is over the limit of {RAFT_MESSAGE_BYTES_MAX}"),
        ));
    }
    Ok(u32::try_from(length).expect("the limit fits in a u32"))
}

/// Writes a header and a body with as few system calls as the socket allows (one, vectored).
async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, header: &[u8], body: &[u8]) -> io::Result<()> {
    let mut pieces = [io::IoSlice::new(header), io::IoSlice::new(body)];
    let mut pieces: &mut [io::IoSlice<'_>] = &mut pieces;
    while !pieces.is_empty() {
        let written = writer.write_vectored(pieces).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut pieces, written);
    }
    Ok(())
}

/// Reads one length-prefixed body, refusing a length over the limit before reading it.
async fn read_body<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Vec<u8>> {
    let length = reader.read_u32_le().await? as usize;
    if length > RAFT_MESSAGE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a peer sent a message of {length} bytes, over the limit of {RAFT_MESSAGE_BYTES_MAX}"),
        ));
    }
    let mut body = Vec::with_capacity(length);
    (&mut *reader).take(length as u64).read_to_end(&mut body).await?;
    if body.len() != length {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a peer's message ended after {} of {length} bytes", body.len()),
        ));
    }
    Ok(body)
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

/// What the first bytes of an accepted connection say it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// Another replica's Raft RPCs: [`serve_peer_connection`].
    Peer,
    /// Anything else (gRPC from clients and operators).
    Other,
    /// Too few bytes yet to tell.
    Undecided,
}

/// Tells a peer connection from any other by the bytes it opened with.
pub fn classify_opening(prefix: &[u8]) -> Opening {
    let compared = prefix.len().min(PEER_PROTOCOL_MAGIC.len());
    if prefix[..compared] != PEER_PROTOCOL_MAGIC[..compared] {
        Opening::Other
    } else if compared == PEER_PROTOCOL_MAGIC.len() {
        Opening::Peer
    } else {
        Opening::Undecided
    }
}

/// Waits, without consuming them, for the bytes that say what an accepted connection carries. A
/// connection that closes or stays silent for [`OPENING_TIMEOUT`] is `Undecided`: drop it.
pub async fn opening(stream: &TcpStream) -> Opening {
    let mut prefix = [0u8; PEER_PROTOCOL_MAGIC.len()];
    let peeked = tokio::time::timeout(OPENING_TIMEOUT, async {
        loop {
            let read = stream.peek(&mut prefix).await?;
            if read == 0 {
                return Ok::<_, io::Error>(Opening::Undecided);
            }
            match classify_opening(&prefix[..read]) {
                // The magic is one write; a part of it is rare enough to poll for.
                Opening::Undecided => tokio::time::sleep(Duration::from_millis(1)).await,
                decided => return Ok(decided),
            }
        }
    })
    .await;
    match peeked {
        Ok(Ok(opening)) => opening,
        Ok(Err(_)) | Err(_) => Opening::Undecided,
    }
}

/// Serves one peer connection, from its magic on, until the peer closes it, sends something that is
/// not a request, or stays idle for [`PEER_CONNECTION_IDLE_MAX`].
pub async fn serve_peer_connection<S>(stream: S, raft: openraft::Raft<TypeConfig>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_frames(stream, |method, body| {
        let raft = raft.clone();
        async move { answer(&raft, method, &body).await }
    })
    .await
}

async fn answer(raft: &openraft::Raft<TypeConfig>, method: Method, body: &[u8]) -> io::Result<Vec<u8>> {
    let started = std::time::Instant::now();
    let response = answer_unmeasured(raft, method, body).await;
    metrics::counter!("tally_peer_requests_total", "method" => method.label()).increment(1);
    metrics::histogram!("tally_peer_request_seconds", "method" => method.label())
        .record(started.elapsed().as_secs_f64());
    response
}

async fn answer_unmeasured(raft: &openraft::Raft<TypeConfig>, method: Method, body: &[u8]) -> io::Result<Vec<u8>> {
    let invalid = |error: crate::types::EncodingError| io::Error::new(io::ErrorKind::InvalidData, error.to_string());
    match method {
        Method::AppendEntries => {
            let request: AppendEntriesRequest<TypeConfig> = decode(body, "append entries request").map_err(invalid)?;
            reply(&raft.append_entries(request).await)
        }
        Method::Vote => {
            let request: VoteRequest<NodeId> = decode(body, "vote request").map_err(invalid)?;
            reply(&raft.vote(request).await)
        }
        Method::InstallSnapshot => {
            let request: InstallSnapshotRequest<TypeConfig> =
                decode(body, "install snapshot request").map_err(invalid)?;
            reply(&raft.install_snapshot(request).await)
        }
    }
}

/// Encodes the local Raft's whole result, except when it has stopped: then the connection closes,
/// and the peer dials again and finds whatever listens now (a restarted replica, or nothing).
fn reply<T: Serialize, E: Serialize>(result: &Result<T, RaftError<NodeId, E>>) -> io::Result<Vec<u8>> {
    if let Err(RaftError::Fatal(fatal)) = result {
        return Err(io::Error::other(format!("this replica's Raft has stopped: {fatal}")));
    }
    Ok(encode(result))
}

/// The server's framing: checks the magic, then answers requests one after another with `handle`.
async fn serve_frames<S, H, F>(stream: S, mut handle: H) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Method, Vec<u8>) -> F,
    F: Future<Output = io::Result<Vec<u8>>>,
{
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut magic = [0u8; PEER_PROTOCOL_MAGIC.len()];
    stream.read_exact(&mut magic).await?;
    if magic != PEER_PROTOCOL_MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a Tally peer connection"));
    }
    loop {
        let request = tokio::time::timeout(PEER_CONNECTION_IDLE_MAX, async {
            let method = match stream.read_u8().await {
                Ok(method) => method,
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(error) => return Err(error),
            };
            let method = Method::from_byte(method)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unknown peer method {method}")))?;
            Ok(Some((method, read_body(&mut stream).await?)))
        })
        .await;
        let (method, body) = match request {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(error)) => return Err(error),
        };
        let response = handle(method, body).await?;
        let length = body_length(response.len())?.to_le_bytes();
        write_frame(stream.get_mut(), &length, &response).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// A peer that answers each body with itself reversed, closing each connection after
    /// `answers_per_connection` answers; counts the connections it accepted.
    async fn reversing_peer(answers_per_connection: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut answered = 0;
                    let _ = serve_frames(stream, |_, mut body| {
                        answered += 1;
                        let last = answered > answers_per_connection;
                        body.reverse();
                        async move {
                            if last { Err(io::Error::other("closing, as a restarted peer would")) } else { Ok(body) }
                        }
                    })
                    .await;
                });
            }
        });
        (address, accepted)
    }

    #[tokio::test]
    async fn calls_reuse_one_connection_and_redial_once_it_is_closed() {
        let (address, accepted) = reversing_peer(2).await;
        let pool = ConnectionPool::new(address);
        for round in 0..5u8 {
            let answer = pool.exchange(Method::Vote, &[round, 1, 2]).await.unwrap();
            assert_eq!(answer, [2, 1, round]);
        }
        // Two answers per connection: the third call on each found it closed and dialed again.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.idle.lock().unwrap().len(), 1, "a connection is kept for the next call");
    }

    #[tokio::test]
    async fn a_peer_that_cannot_be_reached_is_unreachable_and_a_broken_call_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let refused = ConnectionPool::new(address).exchange(Method::Vote, b"x").await.unwrap_err();
        assert!(matches!(refused.into_rpc_error::<RaftError<NodeId>>(), RPCError::Unreachable(_)));

        let (address, _) = reversing_peer(0).await;
        let broken = ConnectionPool::new(address).exchange(Method::Vote, b"x").await.unwrap_err();
        assert!(matches!(broken.into_rpc_error::<RaftError<NodeId>>(), RPCError::Network(_)));
    }

    /// A slow follower must not look unreachable (openraft would back off from it for up to 2 s),
    /// and its connection, with an answer maybe still to come, must not be used again.
    #[tokio::test]
    async fn a_call_past_its_deadline_is_a_network_error_and_drops_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = serve_frames(stream, |_, body| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(body)
            })
            .await;
        });
        let mut client = PeerClient {
            target: 2,
            node: PeerNode { address: address.clone(), site: "a".into() },
            pool: Arc::new(ConnectionPool::new(address)),
        };
        let request = VoteRequest { vote: openraft::Vote::new(1, 1), last_log_id: None };
        let started = std::time::Instant::now();
        let error = client.vote(request, RPCOption::new(Duration::from_millis(50))).await.unwrap_err();
        assert!(matches!(error, RPCError::Network(_)), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(client.pool.idle.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_length_over_the_limit_is_refused_before_it_is_read() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&u32::try_from(RAFT_MESSAGE_BYTES_MAX + 1).unwrap().to_le_bytes());
        let error = read_body(&mut frame.as_slice()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("over the limit"), "{error}");

        let mut short = 10u32.to_le_bytes().to_vec();
        short.extend_from_slice(b"four");
        let error = read_body(&mut short.as_slice()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_server_refuses_a_connection_without_the_magic_or_with_an_unknown_method() {
        let (client, server) = tokio::io::duplex(1024);
        let serving = tokio::spawn(serve_frames(server, |_, body| async move { Ok(body) }));
        let mut client = client;
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert_eq!(serving.await.unwrap().unwrap_err().kind(), io::ErrorKind::InvalidData);

        let (mut client, server) = tokio::io::duplex(1024);
        let serving = tokio::spawn(serve_frames(server, |_, body| async move { Ok(body) }));
        client.write_all(&PEER_PROTOCOL_MAGIC).await.unwrap();
        client.write_all(&[9, 0, 0, 0, 0]).await.unwrap();
        let error = serving.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("unknown peer method 9"), "{error}");
    }

    #[test]
    fn peer_connections_are_told_from_grpc_by_their_first_bytes() {
        assert_eq!(classify_opening(b"TALLYRP1"), Opening::Peer);
        assert_eq!(classify_opening(b"TALLYRP1\x01\x00"), Opening::Peer);
        assert_eq!(classify_opening(b"TALL"), Opening::Undecided);
        assert_eq!(classify_opening(b""), Opening::Undecided);
        assert_eq!(classify_opening(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Opening::Other);
        assert_eq!(classify_opening(b"TALLYRP2"), Opening::Other);
        assert_eq!(classify_opening(&[0x16, 0x03, 0x01]), Opening::Other, "a TLS client hello");
    }
}
