//! The replica's configuration: one TOML file, checked before anything starts.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tally_state_machine::constants::EVENTS_PER_BATCH_MAX;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Recorded in the data directory on first start; a replica refuses a directory of another cluster.
    pub cluster_name: String,
    /// Never reused: a replica that lost its disk joins again under a new id.
    pub node_id: u64,
    /// The site (data centre) this replica runs in.
    pub site: String,
    /// Where the gRPC server listens.
    pub listen_address: SocketAddr,
    /// `host:port` that peers and clients use to reach this replica.
    pub advertise_address: String,
    /// Where `/metrics`, `/health` and `/ready` are served over HTTP; none when absent.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    pub data_directory: PathBuf,
    /// The cluster's genesis file (`tallyctl genesis init`): read and checked at start, recorded in
    /// the data directory on first start (a directory of another genesis is refused), and named in
    /// every peer hello (a peer of another genesis is refused). None: a cluster without one.
    #[serde(default)]
    pub genesis_file: Option<PathBuf>,
    /// TLS 1.3 on every listener and to every peer. Required, with `genesis_file` (whose cluster
    /// id the certificates name), unless `insecure_plaintext` is set.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// Development only: no TLS, no authentication, anyone who reaches a port may do anything.
    /// Logged loudly at start; a replica refuses `tls` and this together.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The voters a new cluster starts with, once one of them is started with `--bootstrap`;
    /// afterwards membership changes only through the admin API.
    #[serde(default)]
    pub initial_members: Vec<Member>,
    /// Initialise a new cluster of `initial_members` (`tally-node --bootstrap`): once per cluster,
    /// on one member whose log is empty. Never read from the file, so that no config left in place
    /// can make a replica that lost its data start a second cluster.
    #[serde(skip)]
    pub bootstrap: bool,
    /// The wall clock the replica runs on: the system's unless a test injects one.
    #[serde(skip)]
    pub clock: Option<Arc<dyn crate::clock::Clock>>,
    /// Where a test takes this replica's Raft handle, to propose what no client could (a forged
    /// entry, as a faulty leader would). Never set from a file.
    #[serde(skip)]
    pub raft_handle: Option<RaftHandle>,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub group_commit: GroupCommitSettings,
    #[serde(default)]
    pub storage: StorageSettings,
    #[serde(default)]
    pub scheduling: SchedulingSettings,
    #[serde(default)]
    pub memory: MemorySettings,
}

/// Where the replica's TLS material is, and how it is used.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The cluster CA's certificate (`tallyctl certs init`): the only root trusted.
    pub ca_file: PathBuf,
    /// This replica's certificate (`tallyctl certs issue replica <node_id>`).
    pub certificate_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA's revocation list (`tallyctl certs revoke`): certificates it names are refused.
    #[serde(default)]
    pub revocation_list_file: Option<PathBuf>,
    /// The fallback CA (ECDSA P-256, `ca-ecdsa.pem`) and this replica's certificate and key from
    /// it: presented to clients that offer no ML-DSA signature scheme (OpenSSL 3.0, Go), whose
    /// fallback certificates are accepted too. Peers never use them. All three or none.
    #[serde(default)]
    pub fallback_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub fallback_certificate_file: Option<PathBuf>,
    #[serde(default)]
    pub fallback_key_file: Option<PathBuf>,
    /// The fallback CA's revocation list (`ca-ecdsa.crl`, written by `tallyctl certs revoke` with
    /// `ca.crl`). Set it whenever `revocation_list_file` is set: without it, fallback client
    /// certificates are refused, since their revocation cannot be checked.
    #[serde(default)]
    pub fallback_revocation_list_file: Option<PathBuf>,
    /// The key exchange replicas use with each other: `x25519-mlkem768` (hybrid, the default) or
    /// `mlkem1024` (pure ML-KEM-1024). Clients may use any group the listener accepts.
    #[serde(default)]
    pub peer_key_exchange: tally_identity::tls::KeyExchange,
    /// Principals whose certificates may read `/metrics` (a Prometheus scraper's). Kept here
    /// rather than in the replicated registry: metrics must be readable when the cluster is not.
    #[serde(default)]
    pub monitoring_principals: Vec<u64>,
    /// How often the files are checked for a change (a rotation); SIGHUP reloads at once.
    #[serde(default = "TlsSettings::reload_check_interval_ms_default")]
    pub reload_check_interval_ms: u64,
}

impl TlsSettings {
    fn reload_check_interval_ms_default() -> u64 {
        10_000
    }

    pub fn files(&self) -> tally_identity::tls::TlsFiles {
        tally_identity::tls::TlsFiles {
            ca: self.ca_file.clone(),
            certificate: self.certificate_file.clone(),
            key: self.key_file.clone(),
            revocation_list: self.revocation_list_file.clone(),
            fallback: match (&self.fallback_ca_file, &self.fallback_certificate_file, &self.fallback_key_file) {
                (Some(ca), Some(certificate), Some(key)) => Some(tally_identity::tls::FallbackFiles {
                    ca: ca.clone(),
                    certificate: certificate.clone(),
                    key: key.clone(),
                    revocation_list: self.fallback_revocation_list_file.clone(),
                }),
                _ => None,
            },
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    /// Heap the replica writes once at startup, before it serves, so that the kernel zeroes those
    /// pages then rather than under load (`memory.rs`). About the replica's working set: its page
    /// caches, one second of uncommitted batches on a follower, the batches in flight. 0, the
    /// default, touches nothing. The replica refuses to start when the machine has less available.
    pub pretouch_bytes: usize,
}

/// For replicas that share a host (a local cluster, a test rig). A replica on a host of its own
/// needs none of this.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingSettings {
    /// The nice value (0-19) of the replica's process group while it follows; it goes back to 0
    /// while it leads. Replicas sharing a host then share it unevenly in the leader's favour: the
    /// leader does the most work per transfer (clients, every follower's messages), and with an
    /// even share it was the one every write waited for (BENCHMARKS.md). 0, the default, changes
    /// nothing. It takes effect only when the replica leads its own session (`setsid`), as
    /// `scripts/cluster.sh` starts it, since Linux sets it for the whole session's group.
    pub follower_nice: u8,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub address: String,
    pub site: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Also openraft 0.9's deadline for each AppendEntries message: it must cover sending
    /// `entries_per_message_max` full batches and the follower's fsync on a busy machine, or
    /// replication times out, backs off, and followers start elections under load.
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one...
    pub snapshot_after_entries: u64,
    /// ...or after this many bytes of entries, whichever comes first (entries range from one
    /// transfer to a full batch of about 1 MiB, so the bytes are what bounds the log on disk: at
    /// most this plus `log_entries_kept_after_snapshot` entries). A snapshot is a checkpoint, one
    /// durable commit of the ledger store; the ledger is written to a file only when a peer needs
    /// it (`server::snapshot_due`, `raft_state_machine`).
    pub snapshot_after_log_bytes: u64,
    /// Log entries kept behind a snapshot, so briefly absent replicas catch up from the log.
    pub log_entries_kept_after_snapshot: u64,
    pub snapshot_chunk_bytes: u64,
    /// The largest snapshot this replica receives from a leader; a chunk that would end past it
    /// is refused, so a faulty or hostile peer cannot fill the disk with one. Size it well above
    /// the ledger's snapshot (replicas log each snapshot file's size when they write it).
    pub snapshot_bytes_max: u64,
    /// Entries per AppendEntries message (each entry is one batch, at most ~1 MiB).
    pub entries_per_message_max: u64,
    /// How far a leader's clock may be from a majority of the voters' before it stops proposing
    /// and hands leadership on (cluster time is the leader's clock: pending transfers expire by
    /// it). Well above what NTP keeps hosts within (milliseconds), well below any pending timeout.
    pub clock_offset_max_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1_500,
            election_timeout_max_ms: 3_000,
            snapshot_after_entries: 20_000,
            snapshot_after_log_bytes: 2 * 1024 * 1024 * 1024,
            log_entries_kept_after_snapshot: 1_000,
            snapshot_chunk_bytes: 4 * 1024 * 1024,
            snapshot_bytes_max: 256 * 1024 * 1024 * 1024,
            entries_per_message_max: 4,
            clock_offset_max_ms: 1_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest request or response a client may exchange with the gateway.
    pub message_bytes_max: usize,
    /// Client requests being served at once; more are refused with RESOURCE_EXHAUSTED.
    pub requests_in_flight_max: usize,
    /// Bytes of client requests being served at once (their encoded size): with
    /// `requests_in_flight_max`, what requests may hold of the replica's memory. Beyond it, a
    /// request is refused with RESOURCE_EXHAUSTED (the SDK retries it). At least
    /// `message_bytes_max`, so that the largest request fits.
    pub request_bytes_in_flight_max: usize,
    /// Open client connections (gRPC); more are closed at once.
    pub client_connections_max: usize,
    /// Open connections from other replicas (the peer protocol), counted apart from clients' so
    /// that idle client connections can never lock replication out; more are closed at once.
    pub peer_connections_max: usize,
    /// A client connection that carries no bytes either way for this long is closed. Longer than
    /// `request_timeout_ms`, so that a request waiting for its commit is never cut off.
    pub client_idle_timeout_ms: u64,
    /// How long a request may wait for the leader and a quorum before it fails with UNAVAILABLE.
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_bytes_max: 4 * 1024 * 1024,
            requests_in_flight_max: 4_096,
            request_bytes_in_flight_max: 256 * 1024 * 1024,
            client_connections_max: 1_024,
            peer_connections_max: 256,
            client_idle_timeout_ms: 300_000,
            request_timeout_ms: 5_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupCommitSettings {
    /// How long the leader waits for more requests before proposing a batch that is not full,
    /// while earlier batches are still committing (with none in flight it proposes at once).
    pub linger_us: u64,
    /// Events per proposed batch, at most `EVENTS_PER_BATCH_MAX`, and so per request: the
    /// gateway refuses a request with more.
    pub events_per_batch_max: usize,
    /// Batches proposed and not yet applied at once.
    pub batches_in_flight_max: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        GroupCommitSettings { linger_us: 200, events_per_batch_max: EVENTS_PER_BATCH_MAX, batches_in_flight_max: 8 }
    }
}

/// 256 MiB: some seconds of full batches at the leader's highest write rate.
pub const FREE_BYTES_MIN_DEFAULT: u64 = 256 * 1024 * 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// redb page cache of the ledger store.
    pub cache_bytes: usize,
    /// redb page cache of the Raft log.
    pub log_cache_bytes: usize,
    /// Free bytes the data directory's file system must keep: below them, the leader refuses new
    /// writes with RESOURCE_EXHAUSTED naming this setting, before its disk fills (node/src/disk.rs).
    /// Leave room for a few seconds of full batches and for a snapshot of the ledger.
    pub free_bytes_min: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            cache_bytes: tally_consensus::CACHE_BYTES_DEFAULT,
            log_cache_bytes: tally_consensus::log_store::LOG_CACHE_BYTES_DEFAULT,
            free_bytes_min: FREE_BYTES_MIN_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path} is not valid: {detail}")]
    Parse { path: String, detail: String },
    #[error("config is not valid: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let config: NodeConfig = toml::from_str(&text)
            .map_err(|error| ConfigError::Parse { path: path.display().to_string(), detail: error.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |detail: String| Err(ConfigError::Invalid(detail));
        if self.node_id == 0 {
            return invalid("node_id must not be 0".into());
        }
        if self.cluster_name.trim().is_empty() {
            return invalid("cluster_name must not be empty".into());
        }
        match (&self.tls, self.insecure_plaintext) {
            (Some(_), true) => return invalid("tls and insecure_plaintext are both set; choose one".into()),
            (None, false) => {
                return invalid(
                    "no [tls] section: a replica serves TLS only (tallyctl certs init and issue make the files), \
                     unless insecure_plaintext = true is set for development"
                        .into(),
                );
            }
            (Some(tls), false) => {
                if self.genesis_file.is_none() {
                    return invalid(
                        "tls needs genesis_file: the certificates name the cluster id that the genesis fixes".into(),
                    );
                }
                let fallback = [&tls.fallback_ca_file, &tls.fallback_certificate_file, &tls.fallback_key_file];
                if fallback.iter().any(|file| file.is_some()) && !fallback.iter().all(|file| file.is_some()) {
                    return invalid(
                        "tls: fallback_ca_file, fallback_certificate_file and fallback_key_file go together".into(),
                    );
                }
                if tls.reload_check_interval_ms == 0 {
                    return invalid("tls.reload_check_interval_ms must be above 0".into());
                }
            }
            (None, true) => {}
        }
        let ids: BTreeSet<u64> = self.initial_members.iter().map(|member| member.id).collect();
        if ids.len() != self.initial_members.len() {
            return invalid("initial_members lists an id twice".into());
        }
        if ids.contains(&0) {
            return invalid("initial_members: id 0 is reserved".into());
        }
        if let Some(me) = self.initial_members.iter().find(|member| member.id == self.node_id)
            && me.address != self.advertise_address
        {
            return invalid(format!(
                "initial_members gives node {} the address {}, but advertise_address is {}",
                self.node_id, me.address, self.advertise_address
            ));
        }
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 || raft.election_timeout_min_ms <= raft.heartbeat_interval_ms * 2 {
            return invalid("raft.election_timeout_min_ms must exceed twice raft.heartbeat_interval_ms".into());
        }
        if raft.clock_offset_max_ms == 0 {
            return invalid("raft.clock_offset_max_ms must be above 0".into());
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return invalid("raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms".into());
        }
        if raft.snapshot_after_log_bytes == 0 {
            return invalid("raft.snapshot_after_log_bytes must be at least 1".into());
        }
        if raft.snapshot_chunk_bytes == 0
            || raft.snapshot_chunk_bytes > (tally_consensus::network::RAFT_MESSAGE_BYTES_MAX / 2) as u64
        {
            return invalid("raft.snapshot_chunk_bytes must be between 1 and half the peer message limit".into());
        }
        if raft.snapshot_bytes_max < raft.snapshot_chunk_bytes {
            return invalid("raft.snapshot_bytes_max must be at least raft.snapshot_chunk_bytes".into());
        }
        let batch_max = self.group_commit.events_per_batch_max;
        if batch_max == 0 || batch_max > EVENTS_PER_BATCH_MAX {
            return invalid(format!("group_commit.events_per_batch_max must be 1..={EVENTS_PER_BATCH_MAX}"));
        }
        if self.group_commit.batches_in_flight_max == 0 {
            return invalid("group_commit.batches_in_flight_max must be at least 1".into());
        }
        if self.scheduling.follower_nice > 19 {
            return invalid(format!("scheduling.follower_nice must be 0..=19, not {}", self.scheduling.follower_nice));
        }
        let limits = &self.limits;
        if limits.requests_in_flight_max == 0
            || limits.client_connections_max == 0
            || limits.peer_connections_max == 0
            || limits.request_timeout_ms == 0
        {
            return invalid("limits must all be above 0".into());
        }
        if limits.request_bytes_in_flight_max < limits.message_bytes_max {
            return invalid(format!(
                "limits.request_bytes_in_flight_max ({}) must be at least limits.message_bytes_max ({})",
                limits.request_bytes_in_flight_max, limits.message_bytes_max
            ));
        }
        if limits.client_idle_timeout_ms <= limits.request_timeout_ms {
            return invalid(format!(
                "limits.client_idle_timeout_ms ({}) must exceed limits.request_timeout_ms ({})",
                limits.client_idle_timeout_ms, limits.request_timeout_ms
            ));
        }
        Ok(())
    }

    pub fn connection_limits(&self) -> crate::connections::ConnectionLimits {
        crate::connections::ConnectionLimits {
            client_connections_max: self.limits.client_connections_max,
            peer_connections_max: self.limits.peer_connections_max,
            client_idle_timeout: Duration::from_millis(self.limits.client_idle_timeout_ms),
            peer_server: tally_consensus::network::PeerServerLimits {
                snapshot_bytes_max: self.raft.snapshot_bytes_max,
            },
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.request_timeout_ms)
    }

    /// openraft's configuration derived from ours.
    pub fn openraft(&self) -> Result<openraft::Config, ConfigError> {
        let raft = &self.raft;
        let config = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: raft.heartbeat_interval_ms,
            election_timeout_min: raft.election_timeout_min_ms,
            election_timeout_max: raft.election_timeout_max_ms,
            max_payload_entries: raft.entries_per_message_max,
            // The replica's own task applies both snapshot limits (`server::snapshot_due`).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: raft.log_entries_kept_after_snapshot,
            snapshot_max_chunk_size: raft.snapshot_chunk_bytes,
            // openraft 0.9 treats a follower whose log went backwards as a fatal error on the leader:
            // a replica that lost its disk must rejoin under a new id (see ARCHITECTURE.md).
            ..openraft::Config::default()
        };
        config.validate().map_err(|error| ConfigError::Invalid(format!("raft: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> &'static str {
        r#"
cluster_name = "test"
node_id = 1
site = "a"
listen_address = "127.0.0.1:7001"
advertise_address = "127.0.0.1:7001"
data_directory = "/tmp/tally-test-1"
insecure_plaintext = true
initial_members = [
  { id = 1, address = "127.0.0.1:7001", site = "a" },
  { id = 2, address = "127.0.0.1:7002", site = "b" },
]
"#
    }

    fn parse(text: &str) -> Result<NodeConfig, String> {
        let config: NodeConfig = toml::from_str(text).map_err(|error| error.to_string())?;
        config.validate().map_err(|error| error.to_string())?;
        Ok(config)
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let config = parse(minimal()).unwrap();
        assert_eq!(config.group_commit.events_per_batch_max, EVENTS_PER_BATCH_MAX);
        assert_eq!(config.request_timeout(), Duration::from_secs(5));
        assert!(config.openraft().is_ok());
    }

    #[test]
    fn mistakes_are_named() {
        let unknown = format!("{}\nlistening_port = 3", minimal());
        assert!(parse(&unknown).unwrap_err().contains("unknown field `listening_port`"));
        let zero = minimal().replace("node_id = 1", "node_id = 0");
        assert!(parse(&zero).unwrap_err().contains("node_id must not be 0"));
        let mismatch =
            minimal().replace("advertise_address = \"127.0.0.1:7001\"", "advertise_address = \"10.0.0.1:7001\"");
        assert!(parse(&mismatch).unwrap_err().contains("advertise_address is 10.0.0.1:7001"));
        let twice = minimal().replace("id = 2,", "id = 1,");
        assert!(parse(&twice).unwrap_err().contains("lists an id twice"));
        let timeouts = format!("{}\n[raft]\nheartbeat_interval_ms = 800\n", minimal());
        assert!(parse(&timeouts).unwrap_err().contains("election_timeout_min_ms"));
        let batch = format!("{}\n[group_commit]\nevents_per_batch_max = 9000\n", minimal());
        assert!(parse(&batch).unwrap_err().contains("events_per_batch_max"));
        let nice = format!("{}\n[scheduling]\nfollower_nice = 20\n", minimal());
        assert!(parse(&nice).unwrap_err().contains("follower_nice must be 0..=19, not 20"));
        let negative = format!("{}\n[scheduling]\nfollower_nice = -1\n", minimal());
        assert!(parse(&negative).unwrap_err().contains("follower_nice"));
    }

    #[test]
    fn a_replica_serves_tls_unless_plaintext_is_asked_for_by_name() {
        let tls = "\n[tls]\nca_file = \"ca.pem\"\ncertificate_file = \"replica-1.pem\"\nkey_file = \"replica-1.key\"\n";
        let neither = minimal().replace("insecure_plaintext = true\n", "");
        assert!(parse(&neither).unwrap_err().contains("no [tls] section"), "{}", parse(&neither).unwrap_err());
        let both = format!("{}{tls}", minimal());
        assert!(parse(&both).unwrap_err().contains("tls and insecure_plaintext are both set"));
        let without_genesis = format!("{neither}{tls}");
        assert!(parse(&without_genesis).unwrap_err().contains("tls needs genesis_file"));
        let secure = format!("genesis_file = \"genesis.toml\"\n{neither}{tls}");
        let config = parse(&secure).unwrap();
        let settings = config.tls.unwrap();
        assert_eq!(settings.peer_key_exchange, tally_identity::tls::KeyExchange::X25519Mlkem768);
        assert!(settings.files().fallback.is_none());
        let pure = format!("{secure}peer_key_exchange = \"mlkem1024\"\n");
        assert_eq!(parse(&pure).unwrap().tls.unwrap().peer_key_exchange, tally_identity::tls::KeyExchange::Mlkem1024);
        let half_fallback = format!("{secure}fallback_ca_file = \"ca-ecdsa.pem\"\n");
        assert!(parse(&half_fallback).unwrap_err().contains("go together"));
    }

    #[test]
    fn memory_is_pretouched_only_when_asked() {
        assert_eq!(parse(minimal()).unwrap().memory.pretouch_bytes, 0);
        let touched = format!("{}\n[memory]\npretouch_bytes = 805306368\n", minimal());
        assert_eq!(parse(&touched).unwrap().memory.pretouch_bytes, 768 * 1024 * 1024);
        let negative = format!("{}\n[memory]\npretouch_bytes = -1\n", minimal());
        assert!(parse(&negative).unwrap_err().contains("pretouch_bytes"));
    }

    #[test]
    fn followers_yield_the_host_only_when_asked() {
        assert_eq!(parse(minimal()).unwrap().scheduling.follower_nice, 0);
        let nice = format!("{}\n[scheduling]\nfollower_nice = 5\n", minimal());
        assert_eq!(parse(&nice).unwrap().scheduling.follower_nice, 5);
    }
}

/// A slot for a replica's Raft handle ([`NodeConfig::raft_handle`]), filled when the replica starts.
#[derive(Clone, Default)]
pub struct RaftHandle(pub Arc<std::sync::Mutex<Option<openraft::Raft<tally_consensus::type_config::TypeConfig>>>>);

impl std::fmt::Debug for RaftHandle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RaftHandle")
    }
}
