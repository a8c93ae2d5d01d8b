//! Accepting connections on the replica's port: peers and clients, each within its own limit.
//!
//! Other replicas' Raft RPCs and clients' gRPC share one port. An accepted connection first holds
//! one of [`OPENING_CONNECTIONS_MAX`] opening slots while its first bytes are read (within
//! `OPENING_TIMEOUT`), which say what it is; then it moves to the peers' or the clients' limit, or
//! is closed when that is full. Peers and clients are counted apart, so that clients (idle ones
//! above all) can never take the connections replication needs. A client connection that carries
//! no bytes either way for `client_idle_timeout` is closed.
//!
//! With TLS (every replica not started with `insecure_plaintext`), the opening slot also covers
//! the TLS 1.3 handshake, which requires a certificate of the cluster's CA, not revoked and not
//! expired; the first bytes are read inside TLS. Who the certificate names decides what the
//! connection may carry: the peer protocol only for a replica (and only as itself, with the peer
//! key exchange), gRPC for principals and replicas, whose calls are then authorised by that
//! identity (`authorise.rs`).
//!
//! Metrics: `tally_connections_refused_total` by kind (`opening`, `peer`, `client`,
//! `peer_identity`), `tally_connections_silent_total` (closed or silent before saying what they
//! are), `tally_tls_handshakes_total` by the key exchange `group` negotiated, and
//! `tally_tls_handshakes_failed_total` by `reason`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::Raft;
use tally_consensus::network::{
    Opening, PEER_PROTOCOL_MAGIC, PeerServerLimits, Replayed, read_opening, serve_peer_connection,
};
use tally_consensus::peer_identity::PeerIdentity;
use tally_identity::certs::{Identity, is_ml_dsa};
use tally_identity::tls::{HANDSHAKE_TIMEOUT, Stream};

use crate::clock::Clock;
use crate::tls::ReplicaTls;
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
/// `tls`: none on a development cluster started with `insecure_plaintext`.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    raft: Raft<TypeConfig>,
    identity: Arc<PeerIdentity>,
    clock: Arc<dyn Clock>,
    tls: Option<Arc<ReplicaTls>>,
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
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
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
            let (clock, tls) = (Arc::clone(&clock), tls.clone());
            tokio::spawn(async move {
                let Some((mut stream, presented)) = secure(stream, remote, tls.as_deref()).await else {
                    return;
                };
                let (kind, prefix) = read_opening(&mut stream).await;
                drop(opening);
                let key_exchange =
                    stream.tls().and_then(|tls| tls.negotiated_key_exchange_group()).map(|group| group.name());
                let ml_dsa = stream
                    .tls()
                    .and_then(|tls| tls.peer_certificates())
                    .and_then(|certificates| certificates.first())
                    .is_some_and(is_ml_dsa);
                let stream = Replayed::new(prefix, stream);
                match kind {
                    Opening::Peer => {
                        let certified = match (presented, &tls) {
                            (None, _) => None,
                            (Some(Identity::Replica(id)), Some(tls))
                                if ml_dsa && tls.peer_key_exchange().negotiated(key_exchange) =>
                            {
                                Some(id)
                            }
                            (Some(Identity::Replica(id)), Some(tls)) => {
                                refused("peer_identity");
                                tracing::warn!(
                                    %remote, replica = id, negotiated = ?key_exchange, required = tls.peer_key_exchange().name(),
                                    ml_dsa,
                                    "refused a peer connection without an ML-DSA certificate or of another key exchange \
                                     than tls.peer_key_exchange"
                                );
                                return;
                            }
                            (Some(other), _) => {
                                refused("peer_identity");
                                tracing::warn!(%remote, "refused the peer protocol to {other}: only replicas' certificates open it");
                                return;
                            }
                        };
                        match peers.try_acquire_owned() {
                            Ok(permit) => {
                                serve_peer(stream, certified, raft, &identity, &*clock, limits.peer_server, permit)
                                    .await
                            }
                            Err(_) => refused("peer"),
                        }
                    }
                    Opening::Other => match clients.try_acquire_owned() {
                        Ok(permit) => {
                            let info = ConnectionInfo { remote, identity: presented };
                            let connection = ClientConnection::new(stream, info, permit, limits.client_idle_timeout);
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

/// Completes the TLS handshake and reads the identity the client's certificate names; `None`
/// (counted and logged) when either fails. In plaintext, the connection as it is, of no identity.
async fn secure(stream: TcpStream, remote: SocketAddr, tls: Option<&ReplicaTls>) -> Option<(Stream, Option<Identity>)> {
    let Some(tls) = tls else {
        return Some((Stream::Plain(stream), None));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.listener.get());
    let failed = |reason: &'static str, detail: String| {
        metrics::counter!("tally_tls_handshakes_failed_total", "reason" => reason).increment(1);
        match reason {
            // A port scan, a plaintext client, a client that gave up: nothing to act on.
            "not_tls" | "timeout" | "closed" => tracing::debug!(%remote, reason, "TLS handshake failed: {detail}"),
            _ => tracing::warn!(%remote, reason, "refused a TLS client: {detail}"),
        }
        None
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return failed(handshake_failure(&error), error.to_string()),
        Err(_) => return failed("timeout", format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
    };
    let group = match stream.get_ref().1.negotiated_key_exchange_group().map(|group| group.name()) {
        Some(rustls::NamedGroup::X25519MLKEM768) => "X25519MLKEM768",
        Some(rustls::NamedGroup::MLKEM1024) => "MLKEM1024",
        Some(rustls::NamedGroup::MLKEM768) => "MLKEM768",
        Some(rustls::NamedGroup::X25519) => "X25519",
        Some(rustls::NamedGroup::secp256r1) => "secp256r1",
        Some(rustls::NamedGroup::secp384r1) => "secp384r1",
        _ => "other",
    };
    // Which key exchange clients and peers use: how many still connect without post-quantum.
    metrics::counter!("tally_tls_handshakes_total", "group" => group).increment(1);
    match Identity::of_certificate_in(stream.get_ref().1, &tls.cluster()) {
        Ok(identity) => Some((Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))), Some(identity))),
        Err(error) => failed("no_identity", error.to_string()),
    }
}

/// A label for why a handshake failed, from rustls' error.
fn handshake_failure(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(error) = error.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
        return "closed";
    };
    match error {
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            "not_tls"
        }
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(CertificateError::Revoked) => "revoked",
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => "expired",
        Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => "unknown_ca",
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::PeerIncompatible(_) | Error::PeerMisbehaved(_) => "incompatible",
        _ => "other",
    }
}

/// Who is on the other end of a client connection: what tonic puts in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    /// The identity its certificate names; none in plaintext.
    pub identity: Option<Identity>,
}

#[allow(clippy::too_many_arguments, reason = "each is what a peer connection is served with")]
async fn serve_peer(
    stream: Replayed<Stream>,
    certified: Option<u64>,
    raft: Raft<TypeConfig>,
    identity: &PeerIdentity,
    clock: &dyn Clock,
    limits: PeerServerLimits,
    permit: OwnedSemaphorePermit,
) {
    match serve_peer_connection(stream, certified, raft, identity, clock, limits).await {
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
    stream: Replayed<Stream>,
    info: ConnectionInfo,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_activity: Instant,
    /// Fires at `last_activity + idle_timeout` as it was when last set; moved on, not reset, on
    /// activity, so that a busy connection does not touch the timer on every read.
    idle: Pin<Box<Sleep>>,
}

impl ClientConnection {
    fn new(
        stream: Replayed<Stream>,
        info: ConnectionInfo,
        permit: OwnedSemaphorePermit,
        idle_timeout: Duration,
    ) -> ClientConnection {
        let now = Instant::now();
        ClientConnection {
            stream,
            info,
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
    type ConnectInfo = ConnectionInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info
    }
}
