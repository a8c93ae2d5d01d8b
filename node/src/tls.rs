//! The replica's TLS: its certificate, key, CA and revocation list, loaded from the files the
//! configuration names, checked, and reloaded without a restart.
//!
//! A reload happens on SIGHUP, or when a file's modification time changes (checked every
//! `tls.reload_check_interval_ms`: a Kubernetes secret or a config-management run replaces files
//! without sending signals). A reload that fails (a half-written file, a certificate for another
//! replica, an expired one) changes nothing and is logged; the replica goes on with what it had.
//! Connections already open keep the certificates they were made with; the next handshake uses
//! the new ones. So a rotation loses no request: issue the new certificate, replace the files,
//! and every replica takes it up within the check interval.
//!
//! Metrics: `tally_tls_reloads_total` by `outcome` (`loaded`, `failed`) and
//! `tally_tls_certificate_expiry_seconds` (the unix time this replica's certificate expires).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use tally_consensus::network::PeerTransport;
use tally_identity::ClusterId;
use tally_identity::certs::Identity;
use tally_identity::tls::{ClientCertificates, Credentials, Current, KeyExchange, TlsError, TlsFiles};

use crate::config::TlsSettings;

/// Everything made from one load of the files.
struct Made {
    credentials: Credentials,
    listener: Arc<ServerConfig>,
    observe: Arc<ServerConfig>,
    peer_client: Arc<ClientConfig>,
    grpc_client: Arc<ClientConfig>,
}

/// The replica's TLS configurations, each swapped whole on reload.
pub struct ReplicaTls {
    files: TlsFiles,
    cluster: ClusterId,
    node_id: u64,
    peers: KeyExchange,
    monitoring_principals: Vec<u64>,
    /// The client API's and the peer protocol's listener: a client certificate required.
    pub listener: Arc<Current<ServerConfig>>,
    /// `/metrics`, `/health` and `/ready`: a certificate allowed, not required.
    pub observe: Arc<Current<ServerConfig>>,
    /// Dialling peers.
    pub peer_client: Arc<Current<ClientConfig>>,
    /// Forwarding calls to the leader's gRPC API.
    pub grpc_client: Arc<Current<ClientConfig>>,
    /// The files' modification times at the last load.
    loaded_modified: Mutex<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for ReplicaTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ReplicaTls(replica {} of cluster {})", self.node_id, self.cluster)
    }
}

impl ReplicaTls {
    /// Loads the files: the certificate must be replica `node_id`'s of `cluster`.
    pub fn load(settings: &TlsSettings, cluster: ClusterId, node_id: u64) -> Result<ReplicaTls, TlsError> {
        let files = settings.files();
        let modified = files.modified();
        let made = make(&files, &cluster, node_id, settings.peer_key_exchange)?;
        metrics::gauge!("tally_tls_certificate_expiry_seconds").set(made.credentials.not_after() as f64);
        Ok(ReplicaTls {
            files,
            cluster,
            node_id,
            peers: settings.peer_key_exchange,
            monitoring_principals: settings.monitoring_principals.clone(),
            listener: Arc::new(Current::new(made.listener)),
            observe: Arc::new(Current::new(made.observe)),
            peer_client: Arc::new(Current::new(made.peer_client)),
            grpc_client: Arc::new(Current::new(made.grpc_client)),
            loaded_modified: Mutex::new(modified),
        })
    }

    /// Loads the files again and, if they are good, uses them from the next handshake on.
    pub fn reload(&self) -> Result<u64, TlsError> {
        let modified = self.files.modified();
        let made = make(&self.files, &self.cluster, self.node_id, self.peers);
        // Recorded even when the load failed, so that a bad file is reported once, not at every check.
        *self.loaded_modified.lock().expect("the TLS reload lock is never poisoned") = modified;
        let made = made?;
        self.listener.set(made.listener);
        self.observe.set(made.observe);
        self.peer_client.set(made.peer_client);
        self.grpc_client.set(made.grpc_client);
        metrics::gauge!("tally_tls_certificate_expiry_seconds").set(made.credentials.not_after() as f64);
        Ok(made.credentials.not_after())
    }

    /// Whether a file changed since the last load.
    fn changed(&self) -> bool {
        *self.loaded_modified.lock().expect("the TLS reload lock is never poisoned") != self.files.modified()
    }

    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The key exchange peers must use.
    pub fn peer_key_exchange(&self) -> KeyExchange {
        self.peers
    }

    /// How this replica dials its peers.
    pub fn peer_transport(&self) -> PeerTransport {
        PeerTransport::Tls { config: Arc::clone(&self.peer_client), cluster: self.cluster, key_exchange: self.peers }
    }

    /// Whether `identity` may read `/metrics`.
    pub fn may_read_metrics(&self, identity: Option<Identity>) -> bool {
        matches!(identity, Some(Identity::Principal(id)) if self.monitoring_principals.contains(&id))
    }
}

fn make(files: &TlsFiles, cluster: &ClusterId, node_id: u64, peers: KeyExchange) -> Result<Made, TlsError> {
    let credentials = Credentials::load(files, Some(cluster))?;
    if credentials.identity() != Identity::Replica(node_id) {
        return Err(TlsError::Invalid {
            path: files.certificate.display().to_string(),
            detail: format!("the certificate is {}'s, and this is replica {node_id}", credentials.identity()),
        });
    }
    Ok(Made {
        listener: credentials.server_config(peers, ClientCertificates::Required)?,
        observe: {
            // HTTP/1.1 there, not the gRPC listener's HTTP/2.
            let mut observe = (*credentials.server_config(peers, ClientCertificates::Optional)?).clone();
            observe.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(observe)
        },
        peer_client: credentials.peer_client_config(peers)?,
        grpc_client: credentials.grpc_client_config()?,
        credentials,
    })
}

/// Reloads on SIGHUP and when a file changes, until `shutdown` completes.
pub async fn reload_when_told(
    tls: Arc<ReplicaTls>,
    check_interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler: TLS files reload only when they change");
            None
        }
    };
    let mut checks = tokio::time::interval(check_interval);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let told = async {
            match hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = &mut shutdown => return,
            _ = told => "SIGHUP",
            _ = checks.tick() => {
                if !tls.changed() {
                    continue;
                }
                "a file changed"
            }
        };
        match tls.reload() {
            Ok(not_after) => {
                metrics::counter!("tally_tls_reloads_total", "outcome" => "loaded").increment(1);
                tracing::info!(why, certificate_expires_unix = not_after, "TLS files reloaded");
            }
            Err(error) => {
                metrics::counter!("tally_tls_reloads_total", "outcome" => "failed").increment(1);
                tracing::error!(why, %error, "TLS files not reloaded; the replica goes on with the ones it had");
            }
        }
    }
}
