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
//! requests and responses alternate, after a hello each way ([`crate::peer_identity`]). A request
//! is its method (one byte), its body's length (u32, little-endian) and the body; a response is its
//! length, the responder's wall time (u64 nanoseconds since the Unix epoch, for
//! [`crate::clock::ClockOffsets`]) and its body. Bodies are Tally's binary
//! encoding of openraft's request and of the whole `Result` the remote Raft returned, so a Raft error
//! on the remote side (a higher term, say) arrives as the same error here. Both ways a body is at
//! most [`RAFT_MESSAGE_BYTES_MAX`]; snapshots travel as openraft's chunks, each at most the
//! configured chunk size.
//!
//! Why not tokio-util's `LengthDelimitedCodec`: it would carry these frames (its header offset
//! and length adjustment fit the method byte and the wall time), but it reserves the whole length a
//! header claims as soon as it reads it, where a peer's word must not make this replica allocate
//! 64 MiB before a byte of it arrives ([`FRAME_GROWTH_BYTES`]), and its encoder copies every body
//! into its write buffer, where a 1 MiB batch here goes to the socket as it is, in one vectored
//! write. A call writes one frame and reads one back, so a `Framed` stream buys nothing else.
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
use tally_identity::ClusterId;
use tally_identity::certs::Identity;
use tally_identity::tls::{Current, KeyExchange, Stream, connect_tls, split_address};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::clock::{Clock, ClockOffsets};
use crate::peer_identity::{HELLO_BYTES_MAX, Hello, PeerIdentity, Refusal};
use crate::type_config::TypeConfig;
use crate::types::{NodeId, PeerNode, decode, encode};

/// The first bytes of every peer connection. A gRPC client's first bytes are HTTP/2's preface
/// (`PRI * HTTP/2.0`), so the two never look alike.
///
/// Its last byte is the peer protocol's version. Version 2 added the genesis fingerprint to the
/// hello; a replica of another version is refused by name ([`Opening::OtherPeerVersion`]) rather
/// than with a hello it cannot decode.
pub const PEER_PROTOCOL_MAGIC: [u8; 8] = *b"TALLYRP2";

/// The largest message body between replicas, either way. It bounds what one AppendEntries may carry
/// (openraft's `max_payload_entries` keeps batches of ~1 MiB well below it) and one snapshot chunk.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Time to open a TCP connection to a peer before giving up on this attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A server closes a peer connection that has sent no whole request for this long; the client
/// dials again when it next needs one. Replication sends a heartbeat every heartbeat interval
/// (250-500 ms in the shipped configs), so it is mostly connections idle in a pool that close.
pub const PEER_CONNECTION_IDLE_MAX: Duration = Duration::from_secs(60);

/// How long an accepted connection may take to send the bytes that say what it is. Replicas and
/// gRPC clients send them in their first write, at once; a connection silent this long holds an
/// opening slot for nothing.
pub const OPENING_TIMEOUT: Duration = Duration::from_secs(2);

/// How much longer than openraft's own timer for an RPC the transport's deadline runs. openraft
/// wraps every call in a timer of the RPC's hard TTL and reports a [`RPCError::Timeout`] when it
/// fires, which the leader simply retries. Had the transport's deadline fired first, at the same
/// instant, a slow but live follower would have looked unreachable and been backed off for 100 ms
/// to 2 s (BENCHMARKS.md, issue 5, fourth round).
const TRANSPORT_DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// Idle connections kept per peer address; one handed back beyond this is closed. Replication
/// holds one per peer, elections and leadership checks briefly a few more.
const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 8;

/// The most a frame's buffer grows by before more of its bytes arrive: a full batch (about 1 MiB)
/// still takes one allocation.
const FRAME_GROWTH_BYTES: usize = 1024 * 1024 + 64 * 1024;

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

/// Makes clients to peers, sharing one pool of connections per peer (id and address: a replacement
/// may come back at the old address under a new id).
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    identity: Arc<PeerIdentity>,
    offsets: Arc<ClockOffsets>,
    transport: PeerTransport,
    pools: HashMap<(NodeId, String), Arc<ConnectionPool>>,
}

impl PeerNetwork {
    /// Calls peers as `identity` over `transport`, recording their clocks' offsets from each
    /// response in `offsets`.
    pub fn new(identity: Arc<PeerIdentity>, offsets: Arc<ClockOffsets>, transport: PeerTransport) -> PeerNetwork {
        PeerNetwork { identity, offsets, transport, pools: HashMap::new() }
    }
}

/// How replicas reach each other.
#[derive(Clone, Debug)]
pub enum PeerTransport {
    /// TLS 1.3 with this replica's certificate; the peer dialled must present the certificate of
    /// the replica it was dialled as. The configuration is read at each dial, so a reloaded
    /// certificate is used from the next connection on.
    Tls { config: Arc<Current<rustls::ClientConfig>>, cluster: ClusterId, key_exchange: KeyExchange },
    /// A development cluster started with `insecure_plaintext`: anyone who reaches the port is a peer.
    Plaintext,
}

impl PeerTransport {
    /// Opens a connection to `target` at `address`.
    async fn dial(&self, address: &str, target: NodeId) -> io::Result<Stream> {
        match self {
            PeerTransport::Plaintext => {
                let stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Plain(stream))
            }
            PeerTransport::Tls { config, cluster, key_exchange } => {
                let (host, port) = split_address(address)?;
                let stream = connect_tls(host, port, config.get()).await?;
                let denied = |detail: String| io::Error::new(io::ErrorKind::PermissionDenied, detail);
                let presented = Identity::of_certificate_in(stream.get_ref().1, cluster)
                    .map_err(|error| denied(format!("{address}: {error}")))?;
                if presented != Identity::Replica(target) {
                    return Err(denied(format!(
                        "{address} presented the certificate of {presented}, not of replica {target}"
                    )));
                }
                let group = stream.get_ref().1.negotiated_key_exchange_group().map(|group| group.name());
                if !key_exchange.negotiated(group) {
                    return Err(denied(format!("{address} did not negotiate {}", key_exchange.name())));
                }
                Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))))
            }
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        let (identity, offsets, transport) = (&self.identity, &self.offsets, &self.transport);
        let pool = self
            .pools
            .entry((target, node.address.clone()))
            .or_insert_with(|| {
                let pool = ConnectionPool::new(target, node.address.clone(), Arc::clone(identity), transport.clone());
                Arc::new(pool.recording_offsets(Arc::clone(offsets)))
            })
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

/// Idle connections to one peer.
#[derive(Debug)]
struct ConnectionPool {
    target: NodeId,
    address: String,
    identity: Arc<PeerIdentity>,
    transport: PeerTransport,
    offsets: Option<Arc<ClockOffsets>>,
    idle: Mutex<Vec<PeerConnection>>,
}

impl ConnectionPool {
    fn new(target: NodeId, address: String, identity: Arc<PeerIdentity>, transport: PeerTransport) -> ConnectionPool {
        ConnectionPool { target, address, identity, transport, offsets: None, idle: Mutex::new(Vec::new()) }
    }

    fn recording_offsets(self, offsets: Arc<ClockOffsets>) -> ConnectionPool {
        ConnectionPool { offsets: Some(offsets), ..self }
    }

    async fn exchange(&self, method: Method, body: &[u8]) -> Result<Vec<u8>, CallError> {
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let sent = std::time::Instant::now();
        if let Some(mut connection) = pooled
            && let Ok((wall, response)) = connection.exchange(method, body).await
        {
            self.give_back(connection);
            self.record_offset(wall, sent);
            return Ok(response);
        }
        let mut connection = PeerConnection::connect(&self.address, self.target, &self.identity, &self.transport)
            .await
            .map_err(CallError::Connect)?;
        metrics::counter!("tally_peer_connections_opened_total").increment(1);
        let sent = std::time::Instant::now();
        let (wall, response) = connection.exchange(method, body).await.map_err(CallError::Exchange)?;
        self.give_back(connection);
        self.record_offset(wall, sent);
        Ok(response)
    }

    fn record_offset(&self, remote_nanoseconds: u64, sent: std::time::Instant) {
        if let Some(offsets) = &self.offsets {
            offsets.record(self.target, remote_nanoseconds, sent, std::time::Instant::now());
        }
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
    stream: BufReader<Stream>,
}

impl PeerConnection {
    /// Dials `target` at `address` and exchanges hellos ([`crate::peer_identity`]) within
    /// [`CONNECT_TIMEOUT`]; a refused hello fails the connection.
    async fn connect(
        address: &str,
        target: NodeId,
        identity: &PeerIdentity,
        transport: &PeerTransport,
    ) -> io::Result<PeerConnection> {
        let opened = async {
            let stream = transport.dial(address, target).await?;
            let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
            let hello = encode(&identity.hello(target));
            let mut opening = PEER_PROTOCOL_MAGIC.to_vec();
            opening.extend_from_slice(&body_length(hello.len())?.to_le_bytes());
            write_frame(stream.get_mut(), &opening, &hello).await?;
            let answer = read_body_at_most(&mut stream, HELLO_BYTES_MAX).await?;
            let answer: Result<Hello, Refusal> =
                decode(&answer, "a peer's hello").map_err(|error| refuse(error.to_string()))?;
            answer
                .and_then(|hello| identity.check(&hello, Some(target), None))
                .inspect_err(|refusal| identity.refused(refusal, target))
                .map_err(|refusal| io::Error::new(io::ErrorKind::PermissionDenied, refusal.to_string()))?;
            Ok(PeerConnection { stream })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, opened).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {address} took over {CONNECT_TIMEOUT:?}"))
        })?
    }

    /// Sends one request; returns the responder's wall time and the response's body.
    async fn exchange(&mut self, method: Method, body: &[u8]) -> io::Result<(u64, Vec<u8>)> {
        let mut header = [0u8; 5];
        header[0] = method as u8;
        header[1..].copy_from_slice(&body_length(body.len())?.to_le_bytes());
        write_frame(self.stream.get_mut(), &header, body).await?;
        let length = read_length(&mut self.stream, RAFT_MESSAGE_BYTES_MAX).await?;
        let wall = self.stream.read_u64_le().await?;
        let mut response = Vec::new();
        read_body_into(&mut self.stream, length, &mut response).await?;
        Ok((wall, response))
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

/// Reads one length-prefixed body, refusing a length over the limit before reading it. The buffer
/// grows as bytes arrive, [`FRAME_GROWTH_BYTES`] at a time at most: the length is the sender's
/// word, and a header claiming 64 MiB must not make this replica reserve 64 MiB before a byte of
/// it has come.
async fn read_body<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Vec<u8>> {
    read_body_at_most(reader, RAFT_MESSAGE_BYTES_MAX).await
}

/// [`read_body`] with a smaller limit than a Raft message's.
async fn read_body_at_most<R: AsyncRead + Unpin>(reader: &mut R, limit: usize) -> io::Result<Vec<u8>> {
    let length = read_length(reader, limit).await?;
    let mut body = Vec::new();
    read_body_into(reader, length, &mut body).await?;
    Ok(body)
}

/// Reads a body's length, refusing one over `limit`.
async fn read_length<R: AsyncRead + Unpin>(reader: &mut R, limit: usize) -> io::Result<usize> {
    let length = reader.read_u32_le().await? as usize;
    if length > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a peer sent a message of {length} bytes, over the limit of {limit}"),
        ));
    }
    Ok(length)
}

/// Reads `length` bytes into `body`, growing it as they arrive (see [`read_body`]).
async fn read_body_into<R: AsyncRead + Unpin>(reader: &mut R, length: usize, body: &mut Vec<u8>) -> io::Result<()> {
    body.reserve(length.min(FRAME_GROWTH_BYTES));
    let mut limited = (&mut *reader).take(length as u64);
    while body.len() < length {
        if body.len() == body.capacity() {
            body.reserve((length - body.len()).min(FRAME_GROWTH_BYTES));
        }
        if limited.read_buf(body).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("a peer's message ended after {} of {length} bytes", body.len()),
            ));
        }
    }
    Ok(())
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
    /// A replica speaking another version of the peer protocol (the byte after `TALLYRP`).
    OtherPeerVersion(u8),
    /// Anything else (gRPC from clients and operators).
    Other,
    /// Too few bytes yet to tell.
    Undecided,
}

/// Tells a peer connection from any other by the bytes it opened with.
pub fn classify_opening(prefix: &[u8]) -> Opening {
    let compared = prefix.len().min(PEER_PROTOCOL_MAGIC.len());
    let family = PEER_PROTOCOL_MAGIC.len() - 1;
    if prefix.len() >= PEER_PROTOCOL_MAGIC.len()
        && prefix[..family] == PEER_PROTOCOL_MAGIC[..family]
        && prefix[family] != PEER_PROTOCOL_MAGIC[family]
    {
        Opening::OtherPeerVersion(prefix[family])
    } else if prefix[..compared] != PEER_PROTOCOL_MAGIC[..compared] {
        Opening::Other
    } else if compared == PEER_PROTOCOL_MAGIC.len() {
        Opening::Peer
    } else {
        Opening::Undecided
    }
}

/// Reads the first bytes of an accepted connection, as many as it takes to tell a peer connection
/// from any other (at most the magic's length), within [`OPENING_TIMEOUT`]. Returns what they say
/// and the bytes read, which the connection's server must see first ([`Replayed`]). Each read waits
/// for bytes to arrive; nothing polls. A connection that closes or stays silent is `Undecided`.
pub async fn read_opening<S: AsyncRead + Unpin>(stream: &mut S) -> (Opening, Vec<u8>) {
    let mut prefix = [0u8; PEER_PROTOCOL_MAGIC.len()];
    let mut filled = 0;
    let decided = tokio::time::timeout(OPENING_TIMEOUT, async {
        loop {
            match stream.read(&mut prefix[filled..]).await {
                Ok(0) | Err(_) => return Opening::Undecided,
                Ok(read) => filled += read,
            }
            match classify_opening(&prefix[..filled]) {
                Opening::Undecided => {}
                decided => return decided,
            }
        }
    })
    .await
    .unwrap_or(Opening::Undecided);
    (decided, prefix[..filled].to_vec())
}

/// A stream whose first bytes, already read from it, are read again: the connection's opening,
/// handed back to whichever server takes the connection.
#[derive(Debug)]
pub struct Replayed<S> {
    prefix: Vec<u8>,
    replayed: usize,
    stream: S,
}

impl<S> Replayed<S> {
    pub fn new(prefix: Vec<u8>, stream: S) -> Replayed<S> {
        Replayed { prefix, replayed: 0, stream }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.prefix.len() {
            let count = (this.prefix.len() - this.replayed).min(buffer.remaining());
            buffer.put_slice(&this.prefix[this.replayed..this.replayed + count]);
            this.replayed += count;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.stream).poll_read(context, buffer)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(context, buffer)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(context)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(context)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The largest term and the largest log index a peer's message may carry. openraft adds one to
/// both (the next election's term, the next entry's index): a message carrying `u64::MAX` would
/// make this replica overflow. An honest cluster stays far below either: an election every
/// millisecond would take 292 million years to reach this term.
pub const TERM_MAX: u64 = u64::MAX / 2;
pub const LOG_INDEX_MAX: u64 = u64::MAX / 2;

/// What a replica accepts from its peers beyond the framing's own limits.
#[derive(Clone, Copy, Debug)]
pub struct PeerServerLimits {
    /// The largest snapshot this replica receives: a chunk that would end past it is refused.
    pub snapshot_bytes_max: u64,
}

/// Serves one peer connection, from its magic on, until the peer closes it, sends something that is
/// not a request, or stays idle for [`PEER_CONNECTION_IDLE_MAX`].
///
/// `certified`: the replica whose certificate the connection presented (none in plaintext); a
/// hello from any other node is refused.
pub async fn serve_peer_connection<S>(
    stream: S,
    certified: Option<NodeId>,
    raft: openraft::Raft<TypeConfig>,
    identity: &PeerIdentity,
    clock: &dyn Clock,
    limits: PeerServerLimits,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_frames(stream, certified, identity, clock, |method, body| {
        let raft = raft.clone();
        async move { answer(&raft, method, &body, limits).await }
    })
    .await
}

fn refuse(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

fn check_vote(vote: &openraft::Vote<NodeId>) -> io::Result<()> {
    let term = vote.leader_id().term;
    if term > TERM_MAX {
        return Err(refuse(format!("a peer sent term {term}, above the largest accepted, {TERM_MAX}")));
    }
    Ok(())
}

fn check_log_id(log_id: Option<&crate::types::LogIdOf>) -> io::Result<()> {
    let Some(log_id) = log_id else { return Ok(()) };
    if log_id.leader_id.term > TERM_MAX || log_id.index > LOG_INDEX_MAX {
        return Err(refuse(format!("a peer sent log id {log_id}, above the largest term or index accepted")));
    }
    Ok(())
}

/// Refuses what openraft would take in and then overflow on, or what would grow without bound.
fn check_request(request: &DecodedRequest, limits: PeerServerLimits) -> io::Result<()> {
    match request {
        DecodedRequest::AppendEntries(request) => {
            check_vote(&request.vote)?;
            check_log_id(request.prev_log_id.as_ref())?;
            check_log_id(request.leader_commit.as_ref())?;
            request.entries.iter().try_for_each(|entry| check_log_id(Some(&entry.log_id)))
        }
        DecodedRequest::Vote(request) => {
            check_vote(&request.vote)?;
            check_log_id(request.last_log_id.as_ref())
        }
        DecodedRequest::InstallSnapshot(request) => {
            check_vote(&request.vote)?;
            check_log_id(request.meta.last_log_id.as_ref())?;
            let end = request.offset.saturating_add(request.data.len() as u64);
            if end > limits.snapshot_bytes_max {
                return Err(refuse(format!(
                    "a peer sent a snapshot chunk ending at byte {end}, past the limit of {} (raft.snapshot_bytes_max)",
                    limits.snapshot_bytes_max
                )));
            }
            Ok(())
        }
    }
}

/// A request as decoded from its frame.
enum DecodedRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// Reads one request frame from `frame` as a server does (method, length, body), decodes it and
/// checks it, without a Raft to answer it: what the fuzz tests drive with hostile bytes.
pub async fn check_request_frame(mut frame: &[u8], limits: PeerServerLimits) -> io::Result<()> {
    let method = frame.read_u8().await?;
    let method = Method::from_byte(method).ok_or_else(|| refuse(format!("unknown peer method {method}")))?;
    let body = read_body(&mut frame).await?;
    check_request(&decode_body(method, &body)?, limits)
}

fn decode_body(method: Method, body: &[u8]) -> io::Result<DecodedRequest> {
    let invalid = |error: crate::types::EncodingError| refuse(error.to_string());
    Ok(match method {
        Method::AppendEntries => {
            DecodedRequest::AppendEntries(decode(body, "append entries request").map_err(invalid)?)
        }
        Method::Vote => DecodedRequest::Vote(decode(body, "vote request").map_err(invalid)?),
        Method::InstallSnapshot => {
            DecodedRequest::InstallSnapshot(decode(body, "install snapshot request").map_err(invalid)?)
        }
    })
}

async fn answer(
    raft: &openraft::Raft<TypeConfig>,
    method: Method,
    body: &[u8],
    limits: PeerServerLimits,
) -> io::Result<Vec<u8>> {
    let started = std::time::Instant::now();
    let response = answer_unmeasured(raft, method, body, limits).await;
    metrics::counter!("tally_peer_requests_total", "method" => method.label()).increment(1);
    metrics::histogram!("tally_peer_request_seconds", "method" => method.label())
        .record(started.elapsed().as_secs_f64());
    response
}

async fn answer_unmeasured(
    raft: &openraft::Raft<TypeConfig>,
    method: Method,
    body: &[u8],
    limits: PeerServerLimits,
) -> io::Result<Vec<u8>> {
    let request = decode_body(method, body)?;
    check_request(&request, limits)?;
    match request {
        DecodedRequest::AppendEntries(request) => reply(&raft.append_entries(request).await),
        DecodedRequest::Vote(request) => reply(&raft.vote(request).await),
        DecodedRequest::InstallSnapshot(request) => reply(&raft.install_snapshot(request).await),
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

/// The server's framing: checks the magic and the dialer's hello (answering with this replica's, or
/// with the refusal), then answers requests one after another with `handle`.
async fn serve_frames<S, H, F>(
    stream: S,
    certified: Option<NodeId>,
    identity: &PeerIdentity,
    clock: &dyn Clock,
    mut handle: H,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Method, Vec<u8>) -> F,
    F: Future<Output = io::Result<Vec<u8>>>,
{
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let hello = tokio::time::timeout(OPENING_TIMEOUT, async {
        let mut magic = [0u8; PEER_PROTOCOL_MAGIC.len()];
        stream.read_exact(&mut magic).await?;
        if magic != PEER_PROTOCOL_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a Tally peer connection"));
        }
        let hello = read_body_at_most(&mut stream, HELLO_BYTES_MAX).await?;
        decode::<Hello>(&hello, "a peer's hello").map_err(|error| refuse(error.to_string()))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no hello within {OPENING_TIMEOUT:?}")))??;
    let answer = identity.check(&hello, None, certified).map(|()| identity.hello(hello.node_id));
    let encoded = encode(&answer);
    write_frame(stream.get_mut(), &body_length(encoded.len())?.to_le_bytes(), &encoded).await?;
    if let Err(refusal) = answer {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, refusal.to_string()));
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
        let mut header = [0u8; 12];
        header[..4].copy_from_slice(&body_length(response.len())?.to_le_bytes());
        header[4..].copy_from_slice(&clock.now_nanoseconds().to_le_bytes());
        write_frame(stream.get_mut(), &header, &response).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;
    use crate::clock::SystemClock;
    use crate::log_store::HeldIndex;
    use crate::peer_identity::Incarnation;

    /// Node 1 (the dialer) and node 2 (the server) of cluster "test", in `directory`.
    fn identities(directory: &tempfile::TempDir) -> (Arc<PeerIdentity>, Arc<PeerIdentity>) {
        let open = |id: NodeId| {
            let path = directory.path().join(id.to_string());
            std::fs::create_dir_all(&path).unwrap();
            Arc::new(
                PeerIdentity::open(&path, "test", id, Incarnation::random().unwrap(), HeldIndex::default()).unwrap(),
            )
        };
        (open(1), open(2))
    }

    /// A peer that answers each body with itself reversed, closing each connection after
    /// `answers_per_connection` answers; counts the connections it accepted.
    async fn reversing_peer(answers_per_connection: usize, identity: Arc<PeerIdentity>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let identity = Arc::clone(&identity);
                tokio::spawn(async move {
                    let mut answered = 0;
                    let _ = serve_frames(stream, None, &identity, &SystemClock, |_, mut body| {
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
        let directory = tempfile::tempdir().unwrap();
        let (dialer, server) = identities(&directory);
        let (address, accepted) = reversing_peer(2, server).await;
        let pool = ConnectionPool::new(2, address, dialer, PeerTransport::Plaintext);
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
        let directory = tempfile::tempdir().unwrap();
        let (dialer, server) = identities(&directory);
        let refused = ConnectionPool::new(2, address, Arc::clone(&dialer), PeerTransport::Plaintext)
            .exchange(Method::Vote, b"x")
            .await
            .unwrap_err();
        assert!(matches!(refused.into_rpc_error::<RaftError<NodeId>>(), RPCError::Unreachable(_)));

        let (address, _) = reversing_peer(0, server).await;
        let broken = ConnectionPool::new(2, address, dialer, PeerTransport::Plaintext)
            .exchange(Method::Vote, b"x")
            .await
            .unwrap_err();
        assert!(matches!(broken.into_rpc_error::<RaftError<NodeId>>(), RPCError::Network(_)));
    }

    /// A slow follower must not look unreachable (openraft would back off from it for up to 2 s),
    /// and its connection, with an answer maybe still to come, must not be used again.
    #[tokio::test]
    async fn a_call_past_its_deadline_is_a_network_error_and_drops_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let directory = tempfile::tempdir().unwrap();
        let (dialer, server) = identities(&directory);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = serve_frames(stream, None, &server, &SystemClock, |_, body| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(body)
            })
            .await;
        });
        let mut client = PeerClient {
            target: 2,
            node: PeerNode { address: address.clone(), site: "a".into() },
            pool: Arc::new(ConnectionPool::new(2, address, dialer, PeerTransport::Plaintext)),
        };
        let request = VoteRequest { vote: openraft::Vote::new(1, 1), last_log_id: None };
        let started = std::time::Instant::now();
        let error = client.vote(request, RPCOption::new(Duration::from_millis(50))).await.unwrap_err();
        assert!(matches!(error, RPCError::Network(_)), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(client.pool.idle.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_frame_buffer_grows_with_the_bytes_that_arrive_not_with_the_length_claimed() {
        let mut reader: &[u8] = &[7u8; 10];
        let mut body = Vec::new();
        let error = read_body_into(&mut reader, RAFT_MESSAGE_BYTES_MAX, &mut body).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(body.len(), 10);
        assert!(body.capacity() <= FRAME_GROWTH_BYTES, "reserved {} bytes for 10", body.capacity());
    }

    #[tokio::test]
    async fn the_opening_is_read_as_it_arrives_and_replayed_to_the_server() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"TALL").await.unwrap();
        let reading = tokio::spawn(async move { (read_opening(&mut server).await, server) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"YRP2\x02rest").await.unwrap();
        let ((opening, prefix), server) = reading.await.unwrap();
        assert_eq!(opening, Opening::Peer);
        let mut replayed = Replayed::new(prefix, server);
        let mut first = [0u8; 13];
        replayed.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"TALLYRP2\x02rest");

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let (opening, prefix) = read_opening(&mut server).await;
        assert_eq!(opening, Opening::Other);
        assert_eq!(prefix, b"PRI * HT", "no more than the magic's length is read");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_opening_is_undecided_after_the_opening_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        assert_eq!(read_opening(&mut server).await.0, Opening::Undecided);
        assert_eq!(started.elapsed(), OPENING_TIMEOUT);
    }

    fn frame(method: Method, body: &[u8]) -> Vec<u8> {
        let mut frame = vec![method as u8];
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        frame.extend_from_slice(body);
        frame
    }

    const LIMITS: PeerServerLimits = PeerServerLimits { snapshot_bytes_max: 1024 };

    #[tokio::test]
    async fn terms_and_indexes_that_would_overflow_are_refused() {
        let log_id = |term, index| openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index);
        let vote = |term| VoteRequest { vote: openraft::Vote::new(term, 1), last_log_id: Some(log_id(1, 5)) };
        let accepted = frame(Method::Vote, &encode(&vote(TERM_MAX)));
        check_request_frame(&accepted, LIMITS).await.unwrap();
        for refused in [
            vote(u64::MAX),
            vote(TERM_MAX + 1),
            VoteRequest { last_log_id: Some(log_id(1, u64::MAX)), ..vote(3) },
            VoteRequest { last_log_id: Some(log_id(u64::MAX, 1)), ..vote(3) },
        ] {
            let error = check_request_frame(&frame(Method::Vote, &encode(&refused)), LIMITS).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{refused:?}");
        }
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new(2, 1),
            prev_log_id: None,
            entries: vec![openraft::Entry { log_id: log_id(2, u64::MAX - 1), payload: openraft::EntryPayload::Blank }],
            leader_commit: None,
        };
        let error = check_request_frame(&frame(Method::AppendEntries, &encode(&append)), LIMITS).await.unwrap_err();
        assert!(error.to_string().contains("above the largest"), "{error}");
    }

    #[tokio::test]
    async fn a_snapshot_chunk_past_the_limit_is_refused() {
        let chunk = |offset: u64, length: usize| InstallSnapshotRequest::<TypeConfig> {
            vote: openraft::Vote::new(2, 1),
            meta: crate::types::SnapshotMeta::default(),
            offset,
            data: vec![0; length],
            done: false,
        };
        check_request_frame(&frame(Method::InstallSnapshot, &encode(&chunk(1000, 24))), LIMITS).await.unwrap();
        for (offset, length) in [(1000, 25), (u64::MAX, 1)] {
            let bytes = frame(Method::InstallSnapshot, &encode(&chunk(offset, length)));
            let error = check_request_frame(&bytes, LIMITS).await.unwrap_err();
            assert!(error.to_string().contains("raft.snapshot_bytes_max"), "{error}");
        }
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
    async fn a_server_refuses_a_connection_without_the_magic_or_hello_or_with_an_unknown_method() {
        let directory = tempfile::tempdir().unwrap();
        let (dialer, server) = identities(&directory);
        let serve = |stream| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                serve_frames(stream, None, &server, &SystemClock, |_, body| async move { Ok(body) }).await
            })
        };
        let (mut client, stream) = tokio::io::duplex(1024);
        let serving = serve(stream);
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert_eq!(serving.await.unwrap().unwrap_err().kind(), io::ErrorKind::InvalidData);

        // The magic, then a Raft request where the hello should be.
        let (mut client, stream) = tokio::io::duplex(1024);
        let serving = serve(stream);
        client.write_all(&PEER_PROTOCOL_MAGIC).await.unwrap();
        client.write_all(&frame(Method::Vote, b"no hello")[1..]).await.unwrap();
        assert_eq!(serving.await.unwrap().unwrap_err().kind(), io::ErrorKind::InvalidData);

        let (mut client, stream) = tokio::io::duplex(1024);
        let serving = serve(stream);
        let hello = encode(&dialer.hello(2));
        client.write_all(&PEER_PROTOCOL_MAGIC).await.unwrap();
        client.write_all(&u32::try_from(hello.len()).unwrap().to_le_bytes()).await.unwrap();
        client.write_all(&hello).await.unwrap();
        let answer: Result<Hello, Refusal> = decode(&read_body(&mut client).await.unwrap(), "hello").unwrap();
        assert_eq!(answer, Ok(server.hello(1)));
        client.write_all(&[9, 0, 0, 0, 0]).await.unwrap();
        let error = serving.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("unknown peer method 9"), "{error}");
    }

    /// A replica restarted under its old id on an empty data directory is refused, and stops, on
    /// the first connection either way.
    #[tokio::test]
    async fn a_replica_whose_incarnation_changed_is_refused_both_ways_and_stops() {
        let directory = tempfile::tempdir().unwrap();
        let (one, two) = identities(&directory);
        let (address, _) = reversing_peer(1, Arc::clone(&two)).await;
        ConnectionPool::new(2, address.clone(), Arc::clone(&one), PeerTransport::Plaintext)
            .exchange(Method::Vote, b"x")
            .await
            .unwrap();
        assert_eq!(one.remembered(2), Some(two.incarnation()));
        assert_eq!(two.remembered(1), Some(one.incarnation()));

        // Node 1 wiped dials node 2, which remembers it: refused, and node 1 learns why.
        let wiped = tempfile::tempdir().unwrap();
        let one_wiped = Arc::new(
            PeerIdentity::open(wiped.path(), "test", 1, Incarnation::random().unwrap(), HeldIndex::default()).unwrap(),
        );
        let error = ConnectionPool::new(2, address.clone(), Arc::clone(&one_wiped), PeerTransport::Plaintext)
            .exchange(Method::Vote, b"x")
            .await
            .unwrap_err();
        assert!(matches!(error.into_rpc_error::<RaftError<NodeId>>(), RPCError::Unreachable(_)));
        assert!(
            one_wiped.stop_reason().unwrap().contains("tallyctl cluster remove 1"),
            "{:?}",
            one_wiped.stop_reason()
        );
        assert_eq!(two.stop_reason(), None);

        // Node 1 (intact) dials node 2 wiped: node 2 stops, node 1 does not talk to it.
        let two_wiped = Arc::new(
            PeerIdentity::open(wiped.path(), "test", 2, Incarnation::random().unwrap(), HeldIndex::default()).unwrap(),
        );
        let (address, _) = reversing_peer(1, Arc::clone(&two_wiped)).await;
        let error = ConnectionPool::new(2, address, Arc::clone(&one), PeerTransport::Plaintext)
            .exchange(Method::Vote, b"x")
            .await
            .unwrap_err();
        assert!(format!("{error:?}").contains("incarnation"), "{error:?}");
        assert!(two_wiped.stop_reason().is_some());
        assert_eq!(one.stop_reason(), None);
    }

    /// Replicas of different geneses never exchange a message, whichever side dials, and neither
    /// stops: each is healthy, just not of the other's cluster.
    #[tokio::test]
    async fn replicas_of_different_geneses_do_not_talk_over_the_peer_protocol() {
        let directories: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let open = |index: usize, id: NodeId, genesis: [u8; 32]| {
            let identity = PeerIdentity::open(
                directories[index].path(),
                "test",
                id,
                Incarnation::random().unwrap(),
                HeldIndex::default(),
            )
            .unwrap();
            Arc::new(identity.with_genesis(genesis))
        };
        let one = open(0, 1, [1; 32]);
        let two = open(1, 2, [2; 32]);
        let (address, _) = reversing_peer(1, Arc::clone(&two)).await;
        let error = ConnectionPool::new(2, address, Arc::clone(&one), PeerTransport::Plaintext)
            .exchange(Method::Vote, b"x")
            .await
            .unwrap_err();
        assert!(format!("{error:?}").contains("genesis"), "{error:?}");
        let (address, _) = reversing_peer(2, Arc::clone(&one)).await;
        let error = ConnectionPool::new(1, address, Arc::clone(&two), PeerTransport::Plaintext)
            .exchange(Method::Vote, b"x")
            .await
            .unwrap_err();
        assert!(format!("{error:?}").contains("genesis"), "{error:?}");
        assert_eq!((one.remembered(2), two.remembered(1)), (None, None), "neither remembers the other");
        assert_eq!((one.stop_reason(), two.stop_reason()), (None, None));
    }

    #[test]
    fn peer_connections_are_told_from_grpc_by_their_first_bytes() {
        assert_eq!(classify_opening(b"TALLYRP2"), Opening::Peer);
        assert_eq!(classify_opening(b"TALLYRP2\x01\x00"), Opening::Peer);
        assert_eq!(classify_opening(b"TALLYRP1"), Opening::OtherPeerVersion(b'1'), "the previous version, by name");
        assert_eq!(classify_opening(b"TALLYRP3\x00"), Opening::OtherPeerVersion(b'3'));
        assert_eq!(classify_opening(b"TALL"), Opening::Undecided);
        assert_eq!(classify_opening(b""), Opening::Undecided);
        assert_eq!(classify_opening(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Opening::Other);
        assert_eq!(classify_opening(b"TALLYRQ2"), Opening::Other);
        assert_eq!(classify_opening(&[0x16, 0x03, 0x01]), Opening::Other, "a TLS client hello");
    }
}
