//! Metrics and health: a Prometheus endpoint, `/health` and `/ready`, and the gauges and counters
//! fed from Raft's own metrics and from every gRPC request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::IncomingStream;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use openraft::ServerState;
use tally_consensus::raft_state_machine::{DEFERRED_AGE_MAX, DEFERRED_AGE_MAX_FOLLOWER};
use tally_identity::certs::Identity;
use tally_identity::tls::{HANDSHAKE_TIMEOUT, Stream};
use tokio::net::TcpListener;

use crate::replica::{Leader, Replica};
use crate::tls::ReplicaTls;

/// Latency buckets in seconds, for every `*_seconds` histogram: from 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Size buckets for group commit: events and requests per proposed batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 8190.0];

/// A replica with its applied index this far behind its own log is not ready to serve.
const READY_LAG_ENTRIES_MAX: u64 = 100;

/// The process-wide Prometheus recorder, installed once (every replica in a process shares it).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Without explicit buckets the exporter renders histograms as summaries.
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Prefix("tally_group_commit_".into()), BATCH_BUCKETS)
                })
                .expect("bucket lists are not empty")
                .install_recorder()
                .expect("the recorder is installed once")
        })
        .clone()
}

/// Whether the replica still takes part: its Raft core runs and its ledger store can write. A
/// replica that fails either is stopping (fail-stop: `run` returns the error, and the process
/// exits), and must not be reported healthy meanwhile.
pub fn health(replica: &Replica) -> Result<(), String> {
    let metrics = replica.raft.metrics();
    if let Err(fatal) = &metrics.borrow().running_state {
        return Err(format!("the Raft core stopped: {fatal}"));
    }
    // The sender is dropped when the core's task ends, a panic included.
    if metrics.has_changed().is_err() {
        return Err("the Raft core stopped".into());
    }
    if let Some(failure) = replica.views.failure() {
        return Err(failure.into());
    }
    if let Some(reason) = replica.identity.stop_reason() {
        return Err(reason.into());
    }
    Ok(())
}

/// Whether the replica can serve: it is healthy, a leader is known and it has applied (nearly) all of its log.
pub fn ready(replica: &Replica) -> Result<(), String> {
    health(replica)?;
    let metrics = replica.raft.metrics().borrow().clone();
    if replica.leader() == Leader::Unknown {
        return Err("no leader is known".into());
    }
    let last = metrics.last_log_index.unwrap_or(0);
    let applied = metrics.last_applied.map_or(0, |log_id| log_id.index);
    if last.saturating_sub(applied) > READY_LAG_ENTRIES_MAX {
        return Err(format!("applied index {applied} is behind log index {last}"));
    }
    Ok(())
}

/// Serves `/metrics`, `/health` (the replica takes part: [`health`]) and `/ready` (it can serve
/// requests: [`ready`]). With TLS, `/metrics` needs the certificate of a principal named in
/// `tls.monitoring_principals`; `/health` and `/ready` answer anyone (Kubernetes' probes present
/// no certificate) with their status alone, and give the reason only to a certificate of the
/// cluster.
pub async fn serve_http(
    listener: TcpListener,
    replica: Arc<Replica>,
    tls: Option<Arc<ReplicaTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let handle = recorder();
    let metrics_tls = tls.clone();
    let router = Router::new()
        .route(
            "/metrics",
            get(move |ConnectInfo(client): ConnectInfo<ObservedClient>| {
                let answer = match &metrics_tls {
                    Some(tls) if !tls.may_read_metrics(client.identity) => match client.identity {
                        None => {
                            (StatusCode::UNAUTHORIZED, "/metrics needs a monitoring principal's certificate\n".into())
                        }
                        Some(identity) => (
                            StatusCode::FORBIDDEN,
                            format!("{identity} is not a monitoring principal (tls.monitoring_principals)\n"),
                        ),
                    },
                    _ => (StatusCode::OK, handle.render()),
                };
                std::future::ready(answer)
            }),
        )
        .route(
            "/health",
            get({
                let replica = Arc::clone(&replica);
                move |ConnectInfo(client): ConnectInfo<ObservedClient>| {
                    let answer = match health(&replica) {
                        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, client.explained("failed", &reason)),
                    };
                    std::future::ready(answer)
                }
            }),
        )
        .route(
            "/ready",
            get(move |ConnectInfo(client): ConnectInfo<ObservedClient>| {
                let answer = match ready(&replica) {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, client.explained("not ready", &reason)),
                };
                std::future::ready(answer)
            }),
        );
    let listener = ObserveListener::start(listener, tls);
    let service = router.into_make_service_with_connect_info::<ObservedClient>();
    if let Err(error) = axum::serve(listener, service).with_graceful_shutdown(shutdown).await {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}

/// Who asked the metrics endpoint.
#[derive(Clone, Copy, Debug)]
pub struct ObservedClient {
    /// The identity its certificate names: none without one, and always none in plaintext
    /// (where everyone may read everything).
    identity: Option<Identity>,
    authenticated: bool,
}

impl ObservedClient {
    /// A failure's answer: its reason only to a certificate of the cluster (or in plaintext).
    fn explained(&self, status: &str, reason: &str) -> String {
        if self.authenticated { format!("{status}: {reason}\n") } else { format!("{status}\n") }
    }
}

impl Connected<IncomingStream<'_, ObserveListener>> for ObservedClient {
    fn connect_info(stream: IncomingStream<'_, ObserveListener>) -> Self {
        *stream.remote_addr()
    }
}

/// Connections to the metrics endpoint, each past its TLS handshake (done on a task of its own,
/// within [`HANDSHAKE_TIMEOUT`], so that a slow client holds up no other).
#[derive(Debug)]
pub struct ObserveListener {
    accepted: tokio::sync::mpsc::Receiver<(Stream, ObservedClient)>,
}

/// Connections in their TLS handshake at once, at most; more wait to be accepted.
const OBSERVE_HANDSHAKES_MAX: usize = 64;

impl ObserveListener {
    fn start(listener: TcpListener, tls: Option<Arc<ReplicaTls>>) -> ObserveListener {
        let (sender, accepted) = tokio::sync::mpsc::channel(OBSERVE_HANDSHAKES_MAX);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(OBSERVE_HANDSHAKES_MAX));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else { return };
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::debug!(%error, "the metrics endpoint could not accept a connection");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = sender.closed() => return,
                };
                let (sender, tls) = (sender.clone(), tls.clone());
                tokio::spawn(async move {
                    let secured = match tls {
                        None => Some((Stream::Plain(stream), ObservedClient { identity: None, authenticated: true })),
                        Some(tls) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls.observe.get());
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => {
                                    let identity = Identity::of_certificate_in(stream.get_ref().1, &tls.cluster()).ok();
                                    let client = ObservedClient { identity, authenticated: identity.is_some() };
                                    Some((Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))), client))
                                }
                                _ => None,
                            }
                        }
                    };
                    drop(permit);
                    if let Some(secured) = secured {
                        let _ = sender.send(secured).await;
                    }
                });
            }
        });
        ObserveListener { accepted }
    }
}

impl axum::serve::Listener for ObserveListener {
    type Io = Stream;
    type Addr = ObservedClient;

    async fn accept(&mut self) -> (Stream, ObservedClient) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ends only with this listener; until axum drops it, nothing comes.
            None => std::future::pending().await,
        }
    }

    /// axum asks only to log it; the listener's address is not a client.
    fn local_addr(&self) -> std::io::Result<ObservedClient> {
        Ok(ObservedClient { identity: None, authenticated: false })
    }
}

/// Turns Raft's metrics into gauges and counters until the replica stops.
pub async fn watch_raft(replica: Arc<Replica>) {
    let mut watch = replica.raft.metrics();
    let mut leader = None;
    let mut snapshot = None;
    loop {
        let metrics = watch.borrow_and_update().clone();
        metrics::gauge!("tally_raft_term").set(metrics.current_term as f64);
        metrics::gauge!("tally_raft_last_log_index").set(metrics.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("tally_raft_applied_index").set(metrics.last_applied.map_or(0, |log_id| log_id.index) as f64);
        // Applied entries came from the log on disk or from a snapshot installed on disk.
        replica.identity.held_index().raise(metrics.last_applied.map_or(0, |log_id| log_id.index));
        metrics::gauge!("tally_raft_is_leader").set(if metrics.state == ServerState::Leader { 1.0 } else { 0.0 });
        // The leader's reads see committed batches only, so it commits sooner; followers serve no reads.
        replica.views.set_deferred_age_max(if metrics.state == ServerState::Leader {
            DEFERRED_AGE_MAX
        } else {
            DEFERRED_AGE_MAX_FOLLOWER
        });
        if metrics.current_leader != leader {
            metrics::counter!("tally_raft_leader_changes_total").increment(1);
            leader = metrics.current_leader;
        }
        if metrics.snapshot != snapshot {
            metrics::counter!("tally_snapshots_total").increment(1);
            metrics::gauge!("tally_snapshot_index").set(metrics.snapshot.map_or(0, |log_id| log_id.index) as f64);
            snapshot = metrics.snapshot;
        }
        if metrics.state == ServerState::Shutdown || watch.changed().await.is_err() {
            return;
        }
    }
}

/// The tower layer in front of every gRPC service. It authorises each call by the identity of its
/// connection ([`crate::authorise::authorise`]), answering a refused one itself; it counts
/// requests by method and status and times them, and it turns tonic's own `OUT_OF_RANGE` for an oversized message into
/// `RESOURCE_EXHAUSTED` naming the limit (Tally's services never answer `OUT_OF_RANGE` themselves,
/// so only the codec's size check is rewritten).
#[derive(Clone, Copy, Debug)]
pub struct EdgeLayer {
    pub message_bytes_max: usize,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge { inner, message_bytes_max: self.message_bytes_max }
    }
}

#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    message_bytes_max: usize,
}

fn grpc_status<B>(response: &axum::http::Response<B>) -> Option<tonic::Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

impl<S, Body, ResponseBody> tower::Service<axum::http::Request<Body>> for Edge<S>
where
    S: tower::Service<axum::http::Request<Body>, Response = axum::http::Response<ResponseBody>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: axum::http::Request<Body>) -> Self::Future {
        let method = method_label(request.uri().path());
        let limit = self.message_bytes_max;
        let started = Instant::now();
        let served = match crate::authorise::refusal(&request) {
            None => Ok(self.inner.call(request)),
            Some(refused) => Err(refused),
        };
        Box::pin(async move {
            let mut response = match served {
                Ok(future) => future.await,
                Err(refused) => {
                    metrics::counter!("tally_requests_refused_total", "reason" => "identity").increment(1);
                    Ok(refused.into_http())
                }
            };
            if let Ok(response) = &mut response
                && grpc_status(response) == Some(tonic::Code::OutOfRange)
            {
                let message = format!(
                    "message_bytes_max: the message is larger than the limit of {limit} bytes; send fewer events per request"
                );
                let headers = response.headers_mut();
                headers.insert("grpc-status", (tonic::Code::ResourceExhausted as i32).into());
                if let Ok(value) = axum::http::HeaderValue::from_str(&percent_encode(&message)) {
                    headers.insert("grpc-message", value);
                }
            }
            let status = match &response {
                // A successful unary call carries its status in the trailers, not the headers.
                Ok(response) => grpc_status(response).map_or("ok", code_label),
                Err(_) => "transport_error",
            };
            metrics::counter!("tally_requests_total", "method" => method, "status" => status).increment(1);
            metrics::histogram!("tally_request_seconds", "method" => method).record(started.elapsed().as_secs_f64());
            response
        })
    }
}

/// Paths of the services a replica serves besides Tally's own.
const OTHER_METHOD_PATHS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

/// The metrics label of a request path: the method's name when the path is one of the API's
/// methods, `unknown` otherwise. Labels come from this fixed list, never from the path a client
/// sent: each distinct label value is a time series kept forever, and random paths would grow the
/// exporter's memory without bound.
pub fn method_label(path: &str) -> &'static str {
    tally_proto::METHOD_PATHS
        .iter()
        .chain(OTHER_METHOD_PATHS)
        .find(|known| **known == path)
        .and_then(|known| known.rsplit('/').next())
        .unwrap_or("unknown")
}

/// The percent-encoding gRPC requires of `grpc-message`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b' '..=b'~' if byte != b'%' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The gRPC status code of an error, for metrics labels.
fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Aborted => "aborted",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_labels_come_from_the_apis_methods_never_from_the_path_sent() {
        assert_eq!(method_label("/tally.v1.LedgerService/CreateTransfers"), "CreateTransfers");
        assert_eq!(method_label("/tally.v1.AdminService/ClusterStatus"), "ClusterStatus");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "Check");
        for stranger in ["/tally.v1.LedgerService/Random1234", "/x/CreateTransfers", "/", "", "/CreateTransfers"] {
            assert_eq!(method_label(stranger), "unknown", "{stranger:?}");
        }
    }
}
