//! Accepting connections on the replica's port: peers and clients, each within its own limit.
//!
//! Other replicas' Raft RPCs and clients' gRPC share one port. An accepted connection first holds
//! one of [`OPENING_CONNECTIONS_MAX`] opening slots while its first bytes are read (within
//! `OPENING_TIMEOUT`), which say what it is; then it moves to the peers' or the clients' limit, or
//! is closed when that is full. Peers and clients are counted apart, so that clients (idle ones
//! above all) can never take the connections replication needs. A client connection that carries
//! no bytes either way for `client_idle_timeout` is closed.
//!
//! Metrics: `tally_connections_refused_total` by kind (`opening`, `peer`, `client`) and
//! `tally_connections_silent_total` (closed or silent before saying what they are).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::Raft;
use tally_consensus::network::{
    Opening, PEER_PROTOCOL_MAGIC, PeerServerLimits, Replayed, read_opening, serve_peer_connection,
};
use tally_consensus::peer_identity::PeerIdentity;

use crate::clock::Clock;
use tally_consensus::type_config::TypeConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;

/// Connections that have not yet said what they are, at most. Each holds its slot for at most
/// `OPENING_TIMEOUT`, so a flood of silent connections fills these slots and nothing else.
pub const OPENING_CONNECTIONS_MAX: usize = 256;

/// The limits connections are accepted within.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub client_connections_max: usize,
    pub peer_connections_max: usize,
    pub client_idle_timeout: Duration,
    /// What peer connections may send.
    pub peer_server: PeerServerLimits,
}

/// Accepts connections until the gRPC server drops the stream (shutdown). Peer connections are
/// served here, each on a task of its own; client connections go on to the gRPC server.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    raft: Raft<TypeConfig>,
    identity: Arc<PeerIdentity>,
    clock: Arc<dyn Clock>,
) -> ReceiverStream<std::io::Result<ClientConnection>> {
    let (sender, receiver) = mpsc::channel(64);
    let openings = Arc::new(Semaphore::new(OPENING_CONNECTIONS_MAX));
    let peers = Arc::new(Semaphore::new(limits.peer_connections_max));
    let clients = Arc::new(Semaphore::new(limits.client_connections_max));
    tokio::spawn(async move {
        loop {
            // The gRPC server dropping its end (shutdown) ends this loop, and with it the listener.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    if sender.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Ok(opening) = Arc::clone(&openings).try_acquire_owned() else {
                refused("opening");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (to_grpc, raft, identity, peers, clients) =
                (sender.clone(), raft.clone(), Arc::clone(&identity), Arc::clone(&peers), Arc::clone(&clients));
            let clock = Arc::clone(&clock);
            tokio::spawn(async move {
                let mut stream = stream;
                let (kind, prefix) = read_opening(&mut stream).await;
                drop(opening);
                let stream = Replayed::new(prefix, stream);
                match kind {
                    Opening::Peer => match peers.try_acquire_owned() {
                        Ok(permit) => serve_peer(stream, raft, &identity, &*clock, limits.peer_server, permit).await,
                        Err(_) => refused("peer"),
                    },
                    Opening::Other => match clients.try_acquire_owned() {
                        Ok(permit) => {
                            let connection = ClientConnection::new(stream, permit, limits.client_idle_timeout);
                            let _ = to_grpc.send(Ok(connection)).await;
                        }
                        Err(_) => refused("client"),
                    },
                    Opening::OtherPeerVersion(version) => {
                        metrics::counter!("tally_peer_connections_refused_total", "reason" => "version").increment(1);
                        tracing::warn!(
                            theirs = %char::from(version),
                            ours = %char::from(PEER_PROTOCOL_MAGIC[PEER_PROTOCOL_MAGIC.len() - 1]),
                            "refused a replica of another peer protocol version: upgrade a cluster's replicas together"
                        );
                    }
                    Opening::Undecided => metrics::counter!("tally_connections_silent_total").increment(1),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

fn refused(kind: &'static str) {
    metrics::counter!("tally_connections_refused_total", "kind" => kind).increment(1);
}

async fn serve_peer(
    stream: Replayed<TcpStream>,
    raft: Raft<TypeConfig>,
    identity: &PeerIdentity,
    clock: &dyn Clock,
    limits: PeerServerLimits,
    permit: OwnedSemaphorePermit,
) {
    match serve_peer_connection(stream, raft, identity, clock, limits).await {
        Ok(()) => {}
        // Something that is not the peer protocol (a bug or a stranger), or a peer whose hello
        // was refused (another cluster, a wrong address, a replica that lost its data).
        Err(error)
            if matches!(error.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::PermissionDenied) =>
        {
            tracing::warn!(%error, "peer connection refused")
        }
        // A peer that went away, or this replica stopping.
        Err(error) => tracing::debug!(%error, "peer connection closed"),
    }
    drop(permit);
}

/// A client's connection: it holds one of the clients' permits while open, and ends (as if the
/// client had closed it) once no bytes have passed either way for the idle timeout.
#[derive(Debug)]
pub struct ClientConnection {
    stream: Replayed<TcpStream>,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_activity: Instant,
    /// Fires at `last_activity + idle_timeout` as it was when last set; moved on, not reset, on
    /// activity, so that a busy connection does not touch the timer on every read.
    idle: Pin<Box<Sleep>>,
}

impl ClientConnection {
    fn new(stream: Replayed<TcpStream>, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> ClientConnection {
        let now = Instant::now();
        ClientConnection {
            stream,
            _permit: permit,
            idle_timeout,
            last_activity: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// Whether the connection has been idle for its timeout (arming the timer for later if not).
    fn idle_expired(&mut self, context: &mut Context<'_>) -> bool {
        loop {
            if self.idle.as_mut().poll(context).is_pending() {
                return false;
            }
            let due = self.last_activity + self.idle_timeout;
            if Instant::now() >= due {
                return true;
            }
            self.idle.as_mut().reset(due);
        }
    }
}

impl AsyncRead for ClientConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let filled = buffer.filled().len();
        match Pin::new(&mut this.stream).poll_read(context, buffer) {
            Poll::Ready(Ok(())) if buffer.filled().len() > filled => {
                this.last_activity = Instant::now();
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.idle_expired(context) => {
                metrics::counter!("tally_client_connections_idle_closed_total").increment(1);
                // An end of stream: the server closes the connection as it would after the client's.
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for ClientConnection {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(context, buffer);
        if matches!(written, Poll::Ready(Ok(count)) if count > 0) {
            self.last_activity = Instant::now();
        }
        written
    }
    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(context, buffers);
        if matches!(written, Poll::Ready(Ok(count)) if count > 0) {
            self.last_activity = Instant::now();
        }
        written
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for ClientConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().connect_info()
    }
}
