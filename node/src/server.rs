//! Starting and stopping a replica: `run(config, listeners, shutdown)`.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use openraft::storage::RaftStateMachine;
use serde::{Deserialize, Serialize};
use tally_consensus::log_store::{AppendedBytes, RedbLogStore};
use tally_consensus::network::{PeerNetwork, PeerTransport};
use tally_consensus::peer_identity::{Incarnation, PeerIdentity, write_durably};
use tally_consensus::raft_state_machine::{DEFERRED_AGE_MAX, LedgerStateMachine, LedgerViews};
use tally_consensus::type_config::TypeConfig;
use tally_consensus::types::PeerNode;
use tally_proto::v1::admin_service_server::AdminServiceServer;
use tally_proto::v1::ledger_service_server::LedgerServiceServer;
use tally_state_machine::LedgerQueries;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::clock::{Clock, ClockCheck, ClockOffsets, SystemClock};
use crate::config::{NodeConfig, RaftSettings};
use crate::disk::{DiskSpace, watch_free_space};
use crate::gateway::{Gateway, GatewayLimits};
use crate::group_commit::{Events, GroupCommit};
use crate::observe;
use crate::replica::{Leader, Replica};
use crate::tls::ReplicaTls;

/// How often the leader checks whether pending transfers are due to expire.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);
const IDENTITY_FILE: &str = "identity.toml";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("data directory {path}: {detail}")]
    DataDirectory { path: String, detail: String },
    #[error("genesis file {path}: {detail}")]
    Genesis { path: String, detail: String },
    #[error("tls: {0}")]
    Tls(#[from] tally_identity::tls::TlsError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("raft: {0}")]
    Raft(String),
    #[error("gRPC server: {0}")]
    Server(String),
    /// The replica stopped taking part (a storage error, a broken invariant): fail-stop.
    #[error("fatal: {0}; the replica stopped (it recovers from its log on restart)")]
    Fatal(String),
}

/// What a data directory belongs to, written on first start and checked on every start after.
/// The incarnation is random, made with the directory: peers tell by it a replica that kept its
/// data from one that lost it (`tally_consensus::peer_identity`).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    cluster_name: String,
    node_id: u64,
    /// Absent in directories made before incarnations existed; added on their next start.
    incarnation: Option<Incarnation>,
    /// The fingerprint of the genesis the directory was made under, in hex; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    genesis: Option<String>,
}

/// Reads and checks the configured genesis file: its fingerprint, `None` without one.
fn load_genesis(config: &NodeConfig) -> Result<Option<tally_identity::genesis::Genesis>, NodeError> {
    let Some(path) = &config.genesis_file else { return Ok(None) };
    let refuse = |detail: String| NodeError::Genesis { path: path.display().to_string(), detail };
    let text = std::fs::read_to_string(path).map_err(|error| refuse(error.to_string()))?;
    let genesis = tally_identity::genesis::Genesis::from_toml(&text).map_err(|error| refuse(error.to_string()))?;
    Ok(Some(genesis))
}

/// Loads the TLS files (checked against the genesis' cluster id), or, with `insecure_plaintext`,
/// says loudly that there is none.
fn load_tls(
    config: &NodeConfig,
    genesis: Option<&tally_identity::genesis::Genesis>,
) -> Result<Option<Arc<ReplicaTls>>, NodeError> {
    let Some(settings) = &config.tls else {
        tracing::warn!(
            node = config.node_id,
            "INSECURE: insecure_plaintext is set. No TLS, no authentication: anyone who reaches this \
             replica's ports can move money, change the cluster and join it. For development only."
        );
        return Ok(None);
    };
    let genesis = genesis.expect("validate: tls comes with a genesis");
    let tls = ReplicaTls::load(settings, genesis.cluster, config.node_id)?;
    tracing::info!(
        node = config.node_id,
        cluster = %genesis.cluster,
        peer_key_exchange = settings.peer_key_exchange.name(),
        "TLS 1.3 on every listener"
    );
    Ok(Some(Arc::new(tls)))
}

fn fingerprint_hex(fingerprint: Option<[u8; 32]>) -> Option<String> {
    fingerprint.as_ref().map(tally_state_machine::digest::digest_hex)
}

/// Checks (or, on first start, writes) the data directory's identity and returns its incarnation.
fn check_identity(directory: &Path, config: &NodeConfig, genesis: Option<[u8; 32]>) -> Result<Incarnation, NodeError> {
    let genesis = fingerprint_hex(genesis);
    let error = |detail: String| NodeError::DataDirectory { path: directory.display().to_string(), detail };
    std::fs::create_dir_all(directory).map_err(|source| error(source.to_string()))?;
    let path = directory.join(IDENTITY_FILE);
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: Identity =
                toml::from_str(&text).map_err(|source| error(format!("{IDENTITY_FILE} is damaged: {source}")))?;
            if found.cluster_name != config.cluster_name || found.node_id != config.node_id {
                return Err(error(format!(
                    "belongs to node {} of cluster {:?}, not node {} of cluster {:?}; refusing to start",
                    found.node_id, found.cluster_name, config.node_id, config.cluster_name
                )));
            }
            if found.genesis != genesis {
                let name = |genesis: &Option<String>| genesis.clone().unwrap_or_else(|| "none".to_owned());
                return Err(error(format!(
                    "was made under genesis {}, but the configuration names genesis {}; refusing to start",
                    name(&found.genesis),
                    name(&genesis)
                )));
            }
            found.incarnation
        }
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(error(source.to_string())),
    };
    if let Some(incarnation) = found {
        return Ok(incarnation);
    }
    let incarnation = Incarnation::random().map_err(|source| error(source.to_string()))?;
    let identity = Identity {
        cluster_name: config.cluster_name.clone(),
        node_id: config.node_id,
        incarnation: Some(incarnation),
        genesis,
    };
    let text = toml::to_string(&identity).expect("an identity serialises");
    write_durably(&path, text.as_bytes()).map_err(|source| error(source.to_string()))?;
    tracing::info!(node = config.node_id, %incarnation, "data directory created");
    Ok(incarnation)
}

/// Binds the configured addresses and runs until `shutdown` completes.
pub async fn run_from_config(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let listen = |address: std::net::SocketAddr| async move {
        TcpListener::bind(address).await.map_err(|source| NodeError::Listen { address: address.to_string(), source })
    };
    let grpc = listen(config.listen_address).await?;
    let metrics = match config.metrics_address {
        Some(address) => Some(listen(address).await?),
        None => None,
    };
    run(config, grpc, metrics, shutdown).await
}

/// Runs a replica on already bound listeners (tests bind 127.0.0.1:0) until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    grpc_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate()?;
    observe::recorder();
    let genesis = load_genesis(&config)?;
    let tls = load_tls(&config, genesis.as_ref())?;
    let registry = genesis.as_ref().map(tally_consensus::signed_entry::genesis_registry);
    let genesis = genesis.as_ref().map(tally_identity::genesis::Genesis::fingerprint);
    let incarnation = check_identity(&config.data_directory, &config, genesis)?;
    let log = RedbLogStore::open(&config.data_directory.join("raft-log.redb"), config.storage.log_cache_bytes)
        .map_err(NodeError::Storage)?;
    let appended = log.appended_bytes();
    let mut state_machine =
        LedgerStateMachine::open(&config.data_directory, config.storage.cache_bytes).map_err(NodeError::Storage)?;
    // With a genesis the ledger takes signed requests only, each checked against its registry.
    if let Some(registry) = registry {
        state_machine.secure(registry);
    }
    // What this replica holds: its log, or a snapshot installed past it.
    let held = log.held_index();
    let (applied, _) = state_machine.applied_state().await.map_err(|error| NodeError::Storage(error.to_string()))?;
    held.raise(applied.map_or(0, |log_id| log_id.index));
    let identity = PeerIdentity::open(&config.data_directory, &config.cluster_name, config.node_id, incarnation, held)
        .map_err(|source| NodeError::DataDirectory {
            path: config.data_directory.display().to_string(),
            detail: source.to_string(),
        })?;
    let identity = Arc::new(match genesis {
        Some(fingerprint) => identity.with_genesis(fingerprint),
        None => identity,
    });
    let clock: Arc<dyn Clock> = config.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
    let offsets = Arc::new(ClockOffsets::default());
    state_machine.defer_commits();
    // Replicas apply the same transfers and would merge their account indexes at the same moment;
    // on a shared host (the local cluster, the benchmarks) every follower merging at once held the
    // leader's quorum back (BENCHMARKS.md, issue 5). Apart, each merges at a phase of its own id;
    // on hosts of their own the stagger changes nothing but when the first merge comes.
    state_machine.stagger_index_merges(config.node_id);
    let views = state_machine.views();
    let openraft_config = Arc::new(config.openraft()?);
    let raft = Raft::new(
        config.node_id,
        openraft_config,
        PeerNetwork::new(
            Arc::clone(&identity),
            Arc::clone(&offsets),
            tls.as_ref().map_or(PeerTransport::Plaintext, |tls| tls.peer_transport()),
        ),
        log,
        state_machine,
    )
    .await
    .map_err(|error| NodeError::Raft(error.to_string()))?;
    if let Some(handle) = &config.raft_handle {
        *handle.0.lock().expect("the handle's lock is never poisoned") = Some(raft.clone());
    }
    bootstrap(&raft, &config).await?;

    let replica = Arc::new(Replica::new(
        config.node_id,
        raft.clone(),
        views.clone(),
        config.request_timeout(),
        config.limits.message_bytes_max,
        Arc::clone(&identity),
        tls.as_ref().map(|tls| (Arc::clone(&tls.grpc_client), tls.cluster())),
        ClockCheck::new(
            config.node_id,
            raft.clone(),
            Arc::clone(&clock),
            offsets,
            Duration::from_millis(config.raft.clock_offset_max_ms),
        ),
    ));
    let group_commit = GroupCommit::start(raft.clone(), views, Arc::clone(&clock), config.group_commit.clone());
    let limits = GatewayLimits {
        requests_in_flight_max: config.limits.requests_in_flight_max,
        request_bytes_in_flight_max: config.limits.request_bytes_in_flight_max,
        events_per_request_max: config.group_commit.events_per_batch_max,
    };
    let disk = DiskSpace::measure(&config.data_directory, config.storage.free_bytes_min).map_err(|source| {
        NodeError::DataDirectory {
            path: config.data_directory.display().to_string(),
            detail: format!("cannot measure free space: {source}"),
        }
    })?;
    let disk = Arc::new(disk);
    let gateway = Gateway::new(Arc::clone(&replica), group_commit.clone(), limits, Arc::clone(&disk));
    let admin = Admin::new(Arc::clone(&replica), config.site.clone(), gateway.clone());

    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
    };
    tokio::spawn(propose_expiries(Arc::clone(&replica), group_commit, Arc::clone(&clock), until_stopped()));
    tokio::spawn(step_down_when_clock_disagrees(Arc::clone(&replica), until_stopped()));
    #[cfg(debug_assertions)]
    panic_when_told(&raft);
    tokio::spawn(commit_deferred_batches(replica.views.clone(), until_stopped()));
    tokio::spawn(snapshot_when_log_grows(raft.clone(), appended, config.raft.clone(), until_stopped()));
    tokio::spawn(observe::watch_raft(Arc::clone(&replica)));
    tokio::spawn(watch_free_space(disk, until_stopped()));
    tokio::spawn(record_acknowledged(raft.clone(), Arc::clone(&replica.identity), until_stopped()));
    tokio::spawn(crate::scheduling::yield_host_while_following(Arc::clone(&replica), config.scheduling.follower_nice));
    if let Some(listener) = metrics_listener {
        tokio::spawn(observe::serve_http(listener, Arc::clone(&replica), tls.clone(), until_stopped()));
    }
    if let Some(tls) = &tls {
        let interval = Duration::from_millis(config.tls.as_ref().map_or(10_000, |tls| tls.reload_check_interval_ms));
        tokio::spawn(crate::tls::reload_when_told(Arc::clone(tls), interval, until_stopped()));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<LedgerServiceServer<Gateway>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tally_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| NodeError::Server(error.to_string()))?;
    let message_bytes_max = config.limits.message_bytes_max;
    // The server stops on `shutdown`, or when the replica fails (fail-stop), whichever comes first.
    let failure = Arc::new(std::sync::OnceLock::new());
    let shutdown = {
        let (replica, failure) = (Arc::clone(&replica), Arc::clone(&failure));
        async move {
            tokio::select! {
                () = shutdown => {}
                reason = failed(&replica) => {
                    health_reporter.set_not_serving::<LedgerServiceServer<Gateway>>().await;
                    let _ = failure.set(reason);
                }
            }
        }
    };
    let server = tonic::transport::Server::builder()
        .layer(observe::EdgeLayer { message_bytes_max: config.limits.message_bytes_max })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            LedgerServiceServer::new(gateway)
                .max_decoding_message_size(message_bytes_max)
                .max_encoding_message_size(message_bytes_max),
        )
        .add_service(AdminServiceServer::new(admin))
        .serve_with_incoming_shutdown(
            crate::connections::accept(grpc_listener, config.connection_limits(), raft.clone(), identity, clock, tls),
            shutdown,
        );
    tracing::info!(node = config.node_id, address = %config.advertise_address, "replica serving");
    let served = server.await;
    let _ = stop.send(true);
    if let Some(reason) = failure.get() {
        tracing::error!(node = config.node_id, "fatal: {reason}; the replica stops");
        let _ = raft.shutdown().await;
        return Err(NodeError::Fatal(reason.clone()));
    }
    tracing::info!(node = config.node_id, "replica stopping");
    raft.shutdown().await.map_err(|error| NodeError::Raft(error.to_string()))?;
    served.map_err(|error| NodeError::Server(error.to_string()))
}

/// How often a replica checks that it still takes part (`observe::health`). Not on every change
/// of Raft's metrics: those come with every applied batch, and the check looks at the ledger lock.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Completes, with the reason, once the replica fails (`observe::health`).
async fn failed(replica: &Replica) -> String {
    let mut interval = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(reason) = observe::health(replica) {
            return reason;
        }
    }
}

/// Initialises a new cluster of `initial_members`, when asked to (`tally-node --bootstrap`, once
/// per cluster, on one member). Never by default: a replica that lost its data would otherwise
/// find its log empty and start a second cluster. A replica whose log is not empty is already
/// part of a cluster and ignores the flag.
async fn bootstrap(raft: &Raft<TypeConfig>, config: &NodeConfig) -> Result<(), NodeError> {
    if !config.bootstrap {
        return Ok(());
    }
    if raft.is_initialized().await.map_err(|error| NodeError::Raft(error.to_string()))? {
        tracing::info!(node = config.node_id, "--bootstrap ignored: this replica is already part of a cluster");
        return Ok(());
    }
    if !config.initial_members.iter().any(|member| member.id == config.node_id) {
        return Err(NodeError::Raft(format!(
            "--bootstrap: node {} is not one of initial_members, so it cannot start their cluster",
            config.node_id
        )));
    }
    let members: BTreeMap<u64, PeerNode> = config
        .initial_members
        .iter()
        .map(|member| (member.id, PeerNode { address: member.address.clone(), site: member.site.clone() }))
        .collect();
    tracing::info!(members = members.len(), "bootstrapping a new cluster");
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        // Another start already initialised it (the log was written but not yet visible).
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(error) => Err(NodeError::Raft(format!("bootstrap failed: {error}"))),
    }
}

/// Debug builds only, for the fail-stop test (tests/tests/fail_stop.rs): with
/// `TALLY_TEST_PANIC_AT_APPLIED_INDEX=N`, a task panics once this replica has applied entry N, as a
/// broken invariant would. Release builds have no such variable.
#[cfg(debug_assertions)]
fn panic_when_told(raft: &Raft<TypeConfig>) {
    let Some(index) = std::env::var("TALLY_TEST_PANIC_AT_APPLIED_INDEX").ok().and_then(|text| text.parse::<u64>().ok())
    else {
        return;
    };
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        let _ = metrics.wait_for(|metrics| metrics.last_applied.is_some_and(|applied| applied.index >= index)).await;
        panic!("injected panic at applied index {index}");
    });
}

/// How often a leader records what its members acknowledged (`PeerIdentity::record_acknowledged`):
/// one small fsynced write a second at most, and only when something was acknowledged since.
const ACKNOWLEDGED_RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// On the leader, records for each member the index up to which it holds committed entries: the
/// lesser of what it matched and what the leader applied (applied entries are committed, and a
/// committed entry is never truncated from a log that holds it).
async fn record_acknowledged(raft: Raft<TypeConfig>, identity: Arc<PeerIdentity>, stopped: impl Future<Output = ()>) {
    every(ACKNOWLEDGED_RECORD_INTERVAL, stopped, || {
        let metrics = raft.metrics().borrow().clone();
        if let (Some(replication), Some(applied)) = (&metrics.replication, metrics.last_applied) {
            let acknowledged = replication
                .iter()
                .filter_map(|(node, matched)| matched.map(|matched| (*node, matched.index.min(applied.index))));
            identity.record_acknowledged(acknowledged);
        }
        std::future::ready(ControlFlow::Continue(()))
    })
    .await;
}

/// How often a replica checks its clock against its peers' and exports the offsets.
const CLOCK_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Exports each peer's clock offset (`tally_clock_offset_seconds`, by peer) and, on a leader whose
/// clock disagrees with a majority's (`ClockCheck::refusal`), hands leadership to the voter furthest
/// along, asking it to run an election (as `tallyctl cluster transfer-leader` does). Meanwhile the
/// gateway and the expiry task propose nothing.
async fn step_down_when_clock_disagrees(replica: Arc<Replica>, stopped: impl Future<Output = ()>) {
    every(CLOCK_CHECK_INTERVAL, stopped, || {
        let replica = Arc::clone(&replica);
        async move {
            let metrics = replica.raft.metrics().borrow().clone();
            for (peer, _) in metrics.membership_config.membership().nodes() {
                if let Some(offset) = replica.clock.offset(*peer) {
                    metrics::gauge!("tally_clock_offset_seconds", "peer" => peer.to_string())
                        .set(offset.nanoseconds as f64 / 1e9);
                }
            }
            let Some(reason) = replica.clock.refusal() else { return ControlFlow::Continue(()) };
            let Some(successor) = replica.clock.successor() else {
                tracing::error!(node = replica.node_id, "{reason}; no voter to hand leadership to");
                return ControlFlow::Continue(());
            };
            tracing::error!(node = replica.node_id, successor, "{reason}");
            metrics::counter!("tally_clock_step_downs_total").increment(1);
            if let Err(error) = replica.hand_leadership_to(successor).await {
                tracing::warn!(node = replica.node_id, successor, %error, "leadership was not handed on");
            }
            ControlFlow::Continue(())
        }
    })
    .await;
}

/// Runs `tick` every `period` (the next one waits for a slow one) until `stopped` completes or
/// `tick` breaks: the shape of every background task of a replica.
async fn every<Tick: Future<Output = ControlFlow<()>>>(
    period: Duration,
    stopped: impl Future<Output = ()>,
    mut tick: impl FnMut() -> Tick,
) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = interval.tick() => {}
        }
        if tick().await.is_break() {
            return;
        }
    }
}

/// Commits applied batches that have waited their deferral (`LedgerViews::deferred_age_max`) when
/// no apply call came to commit them, so that views (status, reads) catch up once the cluster goes
/// quiet.
async fn commit_deferred_batches(views: LedgerViews, stopped: impl Future<Output = ()>) {
    every(DEFERRED_AGE_MAX / 2, stopped, || {
        let views = views.clone();
        async move {
            match tokio::task::spawn_blocking(move || views.commit_if_due()).await {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()), // the commit panicked: the replica is stopping (fail-stop)
            }
        }
    })
    .await;
}

/// How often a replica compares its log's growth with its snapshot policy.
const LOG_GROWTH_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Whether a replica makes its next snapshot, given how far its log grew since the last one (in
/// entries and in bytes of entries): by `snapshot_after_entries` entries or by
/// `snapshot_after_log_bytes` bytes, whichever comes first. A snapshot is a checkpoint (one durable
/// commit of the ledger store), whatever the ledger's size, so the log on disk stays within the
/// byte limit (`raft_state_machine`).
pub fn snapshot_due(grown_entries: u64, grown_bytes: u64, settings: &RaftSettings) -> bool {
    grown_entries >= settings.snapshot_after_entries || grown_bytes >= settings.snapshot_after_log_bytes
}

/// Builds snapshots on the policy of [`snapshot_due`]; openraft then purges the log behind them.
/// openraft 0.9's own policy counts entries only, and entries range from one transfer to a full
/// batch of about 1 MiB, so it is switched off (`SnapshotPolicy::Never`) in favour of this task.
async fn snapshot_when_log_grows(
    raft: Raft<TypeConfig>,
    appended: AppendedBytes,
    settings: RaftSettings,
    stopped: impl Future<Output = ()>,
) {
    // Where the log stood (bytes appended, last index) at the last snapshot, and which snapshot
    // that was: one built for another reason (an operator's trigger, an install) counts too.
    let mut snapshot_seen = raft.metrics().borrow().snapshot;
    let mut at_last_snapshot = (appended.get(), snapshot_seen.map_or(0, |log_id| log_id.index));
    every(LOG_GROWTH_CHECK_INTERVAL, stopped, || {
        let (snapshot, last_log_index) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            (metrics.snapshot, metrics.last_log_index.unwrap_or(0))
        };
        let bytes = appended.get();
        if snapshot != snapshot_seen {
            snapshot_seen = snapshot;
            at_last_snapshot = (bytes, snapshot.map_or(0, |log_id| log_id.index));
        }
        let grown_bytes = bytes - at_last_snapshot.0;
        let grown_entries = last_log_index.saturating_sub(at_last_snapshot.1);
        let due = snapshot_due(grown_entries, grown_bytes, &settings);
        if due {
            at_last_snapshot = (bytes, last_log_index);
        }
        let raft = raft.clone();
        async move {
            if due {
                tracing::info!(grown_entries, grown_bytes, "the log grew: making a snapshot");
                if let Err(error) = raft.trigger().snapshot().await {
                    tracing::warn!(%error, "cannot start a snapshot");
                }
            }
            ControlFlow::Continue(())
        }
    })
    .await;
}

/// On the leader, proposes an expiry batch whenever a pending transfer's deadline has passed.
async fn propose_expiries(
    replica: Arc<Replica>,
    group_commit: GroupCommit,
    clock: Arc<dyn Clock>,
    stopped: impl Future<Output = ()>,
) {
    every(EXPIRY_CHECK_INTERVAL, stopped, || {
        // Not on a clock that disagrees with the majority's: it would expire transfers early.
        let due = replica.leader() == Leader::Me
            && replica.clock.refusal().is_none()
            && replica.views.view().expiry_next().is_some_and(|deadline| deadline <= clock.now_nanoseconds());
        let group_commit = group_commit.clone();
        async move {
            if due {
                match group_commit.submit(Events::Expire).await {
                    Ok(written) => metrics::counter!("tally_pending_transfers_expired_total")
                        .increment(written.expired.len() as u64),
                    Err(error) => tracing::debug!(%error, "expiry batch not applied"),
                }
            }
            ControlFlow::Continue(())
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn config_with_genesis(directory: &Path, genesis_file: Option<&Path>) -> NodeConfig {
        let text = format!(
            "cluster_name = \"test\"\nnode_id = 1\nsite = \"a\"\nlisten_address = \"127.0.0.1:7001\"\n\
             advertise_address = \"127.0.0.1:7001\"\ndata_directory = {:?}\n{}",
            directory.display().to_string(),
            genesis_file.map_or(String::new(), |file| format!("genesis_file = {:?}\n", file.display().to_string()))
        );
        toml::from_str(&text).unwrap()
    }

    fn genesis_file(directory: &Path, name: &str, seed: u8) -> std::path::PathBuf {
        use tally_identity::Signer;
        let key = tally_identity::MlDsaKeyPair::from_seed(tally_identity::Algorithm::MlDsa87, &[seed; 32]).unwrap();
        let operator = tally_identity::genesis::Operator { id: 1, key: key.public_key().clone() };
        let cluster = tally_identity::ClusterId([seed; 16]);
        let genesis = tally_identity::genesis::Genesis::new(cluster, vec![operator], 1).unwrap();
        let path = directory.join(name);
        std::fs::write(&path, genesis.to_toml()).unwrap();
        path
    }

    #[test]
    fn a_data_directory_keeps_the_genesis_it_was_made_under_and_refuses_another() {
        let scratch = tempfile::tempdir().unwrap();
        let data = scratch.path().join("data");
        let first = genesis_file(scratch.path(), "first.toml", 1);
        let second = genesis_file(scratch.path(), "second.toml", 2);
        let config = config_with_genesis(&data, Some(&first));
        let genesis = load_genesis(&config).unwrap().map(|genesis| genesis.fingerprint());
        assert!(genesis.is_some());
        let incarnation = check_identity(&data, &config, genesis).unwrap();
        assert_eq!(check_identity(&data, &config, genesis).unwrap(), incarnation, "the same genesis starts again");
        let other =
            load_genesis(&config_with_genesis(&data, Some(&second))).unwrap().map(|genesis| genesis.fingerprint());
        let refused = check_identity(&data, &config, other).unwrap_err().to_string();
        assert!(refused.contains("was made under genesis") && refused.contains("refusing to start"), "{refused}");
        let refused = check_identity(&data, &config, None).unwrap_err().to_string();
        assert!(refused.contains("names genesis none"), "a genesis cannot be dropped: {refused}");
        let plain = scratch.path().join("plain");
        check_identity(&plain, &config_with_genesis(&plain, None), None).unwrap();
        let refused = check_identity(&plain, &config, genesis).unwrap_err().to_string();
        assert!(refused.contains("was made under genesis none"), "nor added to a running cluster: {refused}");
    }

    #[test]
    fn a_malformed_genesis_file_stops_the_replica_before_it_starts() {
        let scratch = tempfile::tempdir().unwrap();
        let broken = scratch.path().join("genesis.toml");
        std::fs::write(&broken, "cluster_id = \"not hex\"\noperator_signatures_required = 1\noperators = []\n")
            .unwrap();
        let refused = load_genesis(&config_with_genesis(scratch.path(), Some(&broken))).unwrap_err().to_string();
        assert!(refused.starts_with(&format!("genesis file {}", broken.display())), "{refused}");
        assert!(refused.contains("is not 32 hex digits"), "{refused}");
        let missing = scratch.path().join("missing.toml");
        assert!(load_genesis(&config_with_genesis(scratch.path(), Some(&missing))).is_err());
    }

    fn settings() -> RaftSettings {
        RaftSettings { snapshot_after_entries: 1_000, snapshot_after_log_bytes: 64 * MIB, ..RaftSettings::default() }
    }

    #[test]
    fn a_replica_snapshots_at_either_log_limit() {
        assert!(!snapshot_due(999, 64 * MIB - 1, &settings()));
        assert!(snapshot_due(1_000, 2 * MIB, &settings()), "the entry limit");
        assert!(snapshot_due(10, 64 * MIB, &settings()), "the byte limit");
        assert!(!snapshot_due(0, 0, &settings()), "nothing grew");
    }
}
