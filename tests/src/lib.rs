//! # A local cluster of real `tally-node` processes, for tests
//!
//! Each replica runs as its own process with its own data directory and log file under one
//! temporary directory, listening on 127.0.0.1. Everything is killed and removed when the
//! [`LocalCluster`] is dropped, whatever the test's outcome.
//!
//! # Layout
//! - [`LocalCluster`]: start, kill (SIGKILL), restart, add replicas; clients and status.
//! - [`serialised`]: cluster tests take turns, so that seven replicas never compete with another
//!   seven for the machine's two cores.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tally_client::{Security, TlsFiles};
use tally_identity::certs::{CertifiedKey, ClusterCa, FallbackCa, Identity, LEAF_VALIDITY_DEFAULT, Revoked, serial_of};
use tally_identity::genesis::{Genesis, Operator};
use tally_identity::tls::{Credentials, Current, GrpcConnector};
use tally_identity::{Algorithm, ClusterId, MlDsaKeyPair, Signer};
use tally_proto::v1 as wire;
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tonic::transport::Channel;

/// Ports are drawn from below the kernel's range for outgoing connections (32768-60999), so a
/// port chosen here cannot be taken by a client socket before the replica binds it.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// Holds the cluster-test lock for the life of a test. A test that fails releases it like any other.
pub async fn serialised() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The `tally-node` binary of this build. It is (re)built once per test process: `cargo test` of
/// this package alone does not build another package's binary, and a stale one would test old code.
pub fn node_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_binary("tally-node", "tally-node")).clone()
}

/// The `tallyctl` binary of this build, (re)built once per test process like [`node_binary`].
pub fn tallyctl_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_binary("tally-client", "tallyctl")).clone()
}

/// The `tally-bench` load generator of this build, (re)built once per test process.
pub fn bench_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_binary("tally-benches", "tally-bench")).clone()
}

fn build_binary(package: &str, binary: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>/<binary>
    let profile_directory = test.parent().and_then(Path::parent).expect("a cargo target layout");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", package, "--bin", binary]);
    if profile_directory.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building {binary} failed");
    profile_directory.join(binary)
}

fn free_port(taken: &[u16]) -> u16 {
    // Start the search somewhere different in every process, so parallel test processes rarely race.
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = u64::from(std::process::id()).wrapping_mul(2_654_435_761) ^ u64::from(since_epoch.subsec_nanos());
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    (0..span)
        .map(|step| PORT_RANGE.start + u16::try_from((seed.wrapping_add(step * 7_919)) % span).expect("below the span"))
        .find(|port| !taken.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below 32768")
}

/// Timing settings that make elections quick on a busy two-core machine without flapping.
#[derive(Clone, Debug)]
pub struct Settings {
    pub snapshot_after_entries: u64,
    pub log_entries_kept_after_snapshot: u64,
    pub request_timeout_ms: u64,
    /// `scheduling.follower_nice`; when set, each replica is started in its own session (`setsid`),
    /// as `scripts/cluster.sh` starts them.
    pub follower_nice: u8,
    /// `memory.pretouch_bytes`.
    pub pretouch_bytes: usize,
    /// `tls.peer_key_exchange`.
    pub peer_key_exchange: &'static str,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            snapshot_after_entries: 20_000,
            log_entries_kept_after_snapshot: 1_000,
            request_timeout_ms: 5_000,
            follower_nice: 0,
            pretouch_bytes: 0,
            peer_key_exchange: "x25519-mlkem768",
        }
    }
}

#[derive(Debug)]
struct Replica {
    id: u64,
    site: String,
    grpc_port: u16,
    metrics_port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

/// The principal whose certificate the harness's clients present.
pub const TEST_PRINCIPAL: u64 = 1;
/// The principal named in every replica's `tls.monitoring_principals`.
pub const MONITORING_PRINCIPAL: u64 = 2;

/// A cluster's CA, genesis and certificates, as `tallyctl certs` and `genesis init` write them,
/// in `dir`: `ca.pem`, `replica-<id>.pem`/`.key`, `principal-<id>.pem`/`.key`, `genesis.toml`.
#[derive(Debug)]
pub struct ClusterCerts {
    pub dir: PathBuf,
    pub ca: ClusterCa,
    /// The ECDSA P-256 CA whose chain replicas present to clients without ML-DSA.
    pub fallback: FallbackCa,
    pub cluster: ClusterId,
    /// The seed of the genesis' one operator's ML-DSA-87 key.
    operator_seed: [u8; 32],
}

/// The passphrase of every sealed key file the harness writes (`passphrase` in the folder).
pub const KEY_PASSPHRASE: &str = "correct horse battery staple";
/// The genesis' one operator.
pub const OPERATOR: u64 = 1;

impl ClusterCerts {
    /// A new CA and genesis (one operator) in `dir`, with certificates for the test principal
    /// and the monitoring principal.
    pub fn create(dir: &Path) -> ClusterCerts {
        std::fs::create_dir_all(dir).expect("a certificates folder");
        let mut cluster = [0u8; 16];
        cluster[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        cluster[8..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        let cluster = ClusterId(cluster);
        let ca = ClusterCa::generate(cluster, LEAF_VALIDITY_DEFAULT).expect("a CA");
        std::fs::write(dir.join("ca.pem"), &ca.certified().certificate_pem).expect("ca.pem");
        let fallback = FallbackCa::generate(cluster, LEAF_VALIDITY_DEFAULT).expect("a fallback CA");
        std::fs::write(dir.join(tally_identity::tls::FALLBACK_CA_FILE), &fallback.certified().certificate_pem)
            .expect("ca-ecdsa.pem");
        std::fs::write(dir.join("cluster-id"), format!("{cluster}\n")).expect("cluster-id");
        let operator_seed = random_seed();
        let operator = MlDsaKeyPair::from_seed(Algorithm::MlDsa87, &operator_seed).expect("an operator key");
        let genesis = Genesis::new(cluster, vec![Operator { id: OPERATOR, key: operator.public_key().clone() }], 1)
            .expect("a genesis");
        std::fs::write(dir.join("genesis.toml"), genesis.to_toml()).expect("genesis.toml");
        std::fs::write(dir.join("passphrase"), format!("{KEY_PASSPHRASE}\n")).expect("passphrase");
        let sealed = tally_identity::key_file::seal_seed(Algorithm::MlDsa87, &operator_seed, KEY_PASSPHRASE)
            .expect("a sealed operator key");
        std::fs::write(dir.join(format!("operator-{OPERATOR}.key")), sealed).expect("the operator's key file");
        let certs = ClusterCerts { dir: dir.to_owned(), ca, fallback, cluster, operator_seed };
        certs.issue(Identity::Principal(TEST_PRINCIPAL));
        certs.issue(Identity::Principal(MONITORING_PRINCIPAL));
        certs.write_signing_key(TEST_PRINCIPAL, 1);
        certs
    }

    /// The ML-DSA-65 signing key of `principal`'s `generation` (deterministic, so tests can make
    /// it again), written sealed to `principal-<id>.signing.key` when asked.
    pub fn signing_key(&self, principal: u64, generation: u8) -> MlDsaKeyPair {
        MlDsaKeyPair::from_seed(Algorithm::MlDsa65, &self.signing_seed(principal, generation)).expect("a signing key")
    }

    fn signing_seed(&self, principal: u64, generation: u8) -> [u8; 32] {
        let mut seed = self.operator_seed;
        seed[..8].copy_from_slice(&principal.to_le_bytes());
        seed[8] = generation;
        seed
    }

    /// Seals `principal`'s signing key of `generation` into its key file, as `tallyctl keys
    /// generate` does.
    pub fn write_signing_key(&self, principal: u64, generation: u8) {
        let seed = self.signing_seed(principal, generation);
        let sealed =
            tally_identity::key_file::seal_seed(Algorithm::MlDsa65, &seed, KEY_PASSPHRASE).expect("a sealed key");
        replace(&self.signing_key_file(principal), &sealed);
    }

    pub fn signing_key_file(&self, principal: u64) -> PathBuf {
        self.dir.join(format!("principal-{principal}.signing.key"))
    }

    /// How the SDK signs as `principal` with its key of `generation`.
    pub fn signing(&self, principal: u64, generation: u8) -> tally_client::RequestSigning {
        tally_client::RequestSigning::new(principal, self.cluster, self.signing_key(principal, generation))
            .expect("an ML-DSA-65 key")
    }

    /// The operator's sealed key file (its passphrase: `passphrase_file`), for tallyctl.
    pub fn operator_key_file(&self) -> PathBuf {
        self.dir.join(format!("operator-{OPERATOR}.key"))
    }

    /// The file whose first line is every sealed key's passphrase.
    pub fn passphrase_file(&self) -> PathBuf {
        self.dir.join("passphrase")
    }

    /// The operator's key, which approves registry changes.
    pub fn operator_key(&self) -> MlDsaKeyPair {
        MlDsaKeyPair::from_seed(Algorithm::MlDsa87, &self.operator_seed).expect("the operator key")
    }

    /// A registry change approved by the genesis' operator, valid for ten minutes.
    pub fn approved(&self, change: &tally_client::registry::RegistryChange) -> tally_client::registry::ProposedChange {
        let mut proposed = tally_client::registry::ProposedChange::new(self.cluster, change, Duration::from_secs(600))
            .expect("a proposal");
        proposed.approve(OPERATOR, &self.operator_key()).expect("an approval");
        proposed
    }

    /// Issues `identity`'s certificate (a replica's for 127.0.0.1) and writes its files,
    /// replacing any earlier ones.
    pub fn issue(&self, identity: Identity) -> CertifiedKey {
        let addresses = match identity {
            Identity::Replica(_) => vec!["127.0.0.1".to_owned()],
            Identity::Principal(_) => Vec::new(),
        };
        let issued = self.ca.issue(identity, &addresses, LEAF_VALIDITY_DEFAULT).expect("a certificate");
        self.write(identity, &issued);
        let fallback =
            self.fallback.issue(identity, &addresses, LEAF_VALIDITY_DEFAULT).expect("a fallback certificate");
        let stem = TlsFiles::in_directory(&self.dir, identity).certificate.with_extension("");
        replace(Path::new(&format!("{}-ecdsa.key", stem.display())), &fallback.private_key_pem);
        replace(Path::new(&format!("{}-ecdsa.pem", stem.display())), &fallback.certificate_pem);
        issued
    }

    /// Writes `identity`'s certificate and key files, each replaced in one rename (the key
    /// first), as `tallyctl certs rotate` does: a replica that reloads in between refuses the
    /// mismatched pair and keeps its old one until the next check.
    pub fn write(&self, identity: Identity, issued: &CertifiedKey) {
        let files = TlsFiles::in_directory(&self.dir, identity);
        replace(&files.key, &issued.private_key_pem);
        replace(&files.certificate, &issued.certificate_pem);
    }

    pub fn genesis_file(&self) -> PathBuf {
        self.dir.join("genesis.toml")
    }

    /// How a client connects as `principal`.
    pub fn security(&self, principal: u64) -> Security {
        Security::principal_in(&self.dir, principal).expect("the principal's certificate")
    }

    /// The environment tallyctl and tally-bench take `principal`'s certificate from.
    pub fn environment(&self, principal: u64) -> Vec<(&'static str, String)> {
        let files = TlsFiles::in_directory(&self.dir, Identity::Principal(principal));
        let mut environment = vec![
            ("TALLY_CA", files.ca.display().to_string()),
            ("TALLY_CERT", files.certificate.display().to_string()),
            ("TALLY_KEY", files.key.display().to_string()),
        ];
        if self.signing_key_file(principal).exists() {
            environment.push(("TALLY_SIGNING_KEY", self.signing_key_file(principal).display().to_string()));
            environment.push(("TALLY_SIGNING_PASSPHRASE_FILE", self.dir.join("passphrase").display().to_string()));
        }
        environment
    }

    /// A gRPC channel to `address` as `principal`.
    pub fn channel(&self, address: &str, principal: u64) -> Channel {
        self.channel_as(address, Identity::Principal(principal))
    }

    /// A gRPC channel to `address` presenting `identity`'s certificate, loaded and checked.
    fn channel_as(&self, address: &str, identity: Identity) -> Channel {
        let files = TlsFiles::in_directory(&self.dir, identity);
        let credentials = Credentials::load(&files, None).expect("the certificate");
        channel_with(address, credentials.grpc_client_config().expect("a client configuration"), credentials.cluster())
    }

    /// A gRPC channel to `address` with `principal`'s files as they are, unchecked (an expired
    /// certificate, say), for tests of what a replica refuses.
    pub fn channel_unchecked(&self, address: &str, principal: u64) -> Channel {
        let files = TlsFiles::in_directory(&self.dir, Identity::Principal(principal));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&files.ca).expect("the CA")).expect("a root");
        let certificate = CertificateDer::from_pem_file(&files.certificate).expect("a certificate");
        let key = PrivateKeyDer::from_pem_file(&files.key).expect("a key");
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3")
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![certificate], key)
                .expect("a client configuration");
        config.alpn_protocols = vec![b"h2".to_vec()];
        channel_with(address, Arc::new(config), self.ca.cluster())
    }

    /// A gRPC channel to `address` presenting replica `id`'s certificate.
    pub fn replica_channel(&self, address: &str, id: u64) -> Channel {
        self.channel_as(address, Identity::Replica(id))
    }

    /// The `[tls]` section of replica `id`'s configuration.
    fn config_section(&self, id: u64, peer_key_exchange: &str) -> String {
        let files = TlsFiles::in_directory(&self.dir, Identity::Replica(id));
        let fallback = files.fallback.clone().expect("every replica has a fallback chain");
        format!(
            "[tls]\nca_file = \"{ca}\"\ncertificate_file = \"{certificate}\"\nkey_file = \"{key}\"\n\
             revocation_list_file = \"{crl}\"\nfallback_ca_file = \"{fallback_ca}\"\nfallback_certificate_file = \"{fallback_certificate}\"\n\
             fallback_key_file = \"{fallback_key}\"\nfallback_revocation_list_file = \"{fallback_crl}\"\npeer_key_exchange = \"{peer_key_exchange}\"\nmonitoring_principals = [{MONITORING_PRINCIPAL}]\nreload_check_interval_ms = 500\n",
            ca = files.ca.display(),
            certificate = files.certificate.display(),
            key = files.key.display(),
            crl = self.revocation_list_file().display(),
            fallback_ca = fallback.ca.display(),
            fallback_certificate = fallback.certificate.display(),
            fallback_key = fallback.key.display(),
            fallback_crl = self.dir.join(tally_identity::tls::FALLBACK_REVOCATION_LIST_FILE).display(),
        )
    }

    /// The CA's revocation list, which every replica reads (empty at first).
    pub fn revocation_list_file(&self) -> PathBuf {
        self.dir.join(tally_identity::tls::REVOCATION_LIST_FILE)
    }

    /// Revokes `certificates` and their fallback certificates (replacing both lists, as
    /// `tallyctl certs revoke` does); replicas refuse them once they reload.
    pub fn revoke(&self, certificates: &[&CertifiedKey]) {
        let revoked_at = time::OffsetDateTime::now_utc();
        let entry = |certificate: &CertificateDer<'_>| Revoked {
            serial: serial_of(certificate).expect("a serial"),
            revoked_at,
        };
        let revoked: Vec<Revoked> = certificates.iter().map(|certified| entry(&certified.certificate)).collect();
        let fallback: Vec<Revoked> = certificates
            .iter()
            .map(|certified| {
                let identity =
                    Identity::of_certificate(&certified.certificate, &self.ca.cluster()).expect("an identity");
                let files = TlsFiles::in_directory(&self.dir, identity).fallback.expect("a fallback certificate");
                entry(&CertificateDer::from_pem_file(&files.certificate).expect("the fallback certificate"))
            })
            .collect();
        let number = fastrand::u64(1..u64::MAX / 2);
        replace(&self.revocation_list_file(), &self.ca.revocation_list(number, &revoked).expect("a revocation list"));
        let list = self.fallback.revocation_list(number, &fallback).expect("a fallback revocation list");
        replace(&self.dir.join(tally_identity::tls::FALLBACK_REVOCATION_LIST_FILE), &list);
    }
}

/// What a command-line tool (tallyctl, tally-bench) needs to reach a cluster.
#[derive(Clone, Debug)]
pub struct Target {
    /// Comma-separated `host:port`.
    pub endpoints: String,
    /// The TLS variables (`TALLY_CA`, `TALLY_CERT`, `TALLY_KEY`).
    pub environment: Vec<(&'static str, String)>,
}

/// A gRPC channel to `address` over TLS with `config`, to replicas of `cluster`.
pub fn channel_with(address: &str, config: Arc<rustls::ClientConfig>, cluster: ClusterId) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .expect("a valid address")
        .connect_timeout(Duration::from_secs(1))
        .connect_with_connector_lazy(GrpcConnector::new(Arc::new(Current::new(config)), cluster))
}

/// Replaces `file` with `text` in one rename.
fn replace(file: &Path, text: &str) {
    let staged = PathBuf::from(format!("{}.staged", file.display()));
    std::fs::write(&staged, text).expect("a staged file");
    std::fs::rename(&staged, file).expect("the file replaced");
}

/// Replicas of one cluster, as processes.
#[derive(Debug)]
pub struct LocalCluster {
    certs: ClusterCerts,
    /// Whether the test principal is in the registry yet (done at the first leader).
    registered: std::sync::atomic::AtomicBool,
    directory: tempfile::TempDir,
    replicas: BTreeMap<u64, Replica>,
    settings: Settings,
    initial_members: String,
}

impl LocalCluster {
    /// Starts replicas `1..=sites.len()`, replica `i` in `sites[i - 1]`, all initial voters.
    pub fn start(sites: &[&str], settings: Settings) -> LocalCluster {
        let directory = tempfile::Builder::new().prefix("tally-cluster-").tempdir().expect("a temporary directory");
        let mut taken = Vec::new();
        let mut replicas = BTreeMap::new();
        for (index, site) in sites.iter().enumerate() {
            let id = index as u64 + 1;
            let grpc_port = free_port(&taken);
            taken.push(grpc_port);
            let metrics_port = free_port(&taken);
            taken.push(metrics_port);
            let replica = Replica {
                id,
                site: (*site).to_owned(),
                grpc_port,
                metrics_port,
                config_path: directory.path().join(format!("node-{id}.toml")),
                log_path: directory.path().join(format!("node-{id}.log")),
                child: None,
            };
            replicas.insert(id, replica);
        }
        let mut initial_members = String::from("initial_members = [\n");
        for replica in replicas.values() {
            let _ = writeln!(
                initial_members,
                "  {{ id = {}, address = \"127.0.0.1:{}\", site = \"{}\" }},",
                replica.id, replica.grpc_port, replica.site
            );
        }
        initial_members.push_str("]\n");
        let certs = ClusterCerts::create(&directory.path().join("certs"));
        certs.revoke(&[]);
        for id in replicas.keys() {
            certs.issue(Identity::Replica(*id));
        }
        let registered = std::sync::atomic::AtomicBool::new(false);
        let mut cluster = LocalCluster { certs, registered, directory, replicas, settings, initial_members };
        let ids: Vec<u64> = cluster.replicas.keys().copied().collect();
        for &id in &ids {
            cluster.write_config(id, true);
            // One member, once, starts the cluster: as the README's scripts do.
            cluster.launch(id, id == ids[0]);
        }
        cluster
    }

    fn write_config(&self, id: u64, initial_member: bool) {
        let replica = &self.replicas[&id];
        let data = self.directory.path().join(format!("data-{id}"));
        let members = if initial_member { self.initial_members.clone() } else { String::new() };
        let config = format!(
            "cluster_name = \"test\"\nnode_id = {id}\nsite = \"{site}\"\nlisten_address = \"127.0.0.1:{grpc}\"\n\
             advertise_address = \"127.0.0.1:{grpc}\"\nmetrics_address = \"127.0.0.1:{metrics}\"\ndata_directory = \"{data}\"\n\
             genesis_file = \"{genesis}\"\n\
             {members}\n[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 600\nelection_timeout_max_ms = 1200\n\
             snapshot_after_entries = {snapshot}\nlog_entries_kept_after_snapshot = {kept}\n\n[limits]\nrequest_timeout_ms = {timeout}\n\n\
             [storage]\ncache_bytes = 33554432\n\n[scheduling]\nfollower_nice = {nice}\n\n[memory]\npretouch_bytes = {pretouch}\n\n{tls}",
            site = replica.site,
            grpc = replica.grpc_port,
            metrics = replica.metrics_port,
            data = data.display(),
            snapshot = self.settings.snapshot_after_entries,
            kept = self.settings.log_entries_kept_after_snapshot,
            timeout = self.settings.request_timeout_ms,
            nice = self.settings.follower_nice,
            pretouch = self.settings.pretouch_bytes,
            tls = self.certs.config_section(id, self.settings.peer_key_exchange),
            genesis = self.certs.genesis_file().display(),
        );
        std::fs::write(&replica.config_path, config).expect("the config is written");
    }

    fn launch(&mut self, id: u64, bootstrap: bool) {
        self.launch_with(id, bootstrap, &[]);
    }

    fn launch_with(&mut self, id: u64, bootstrap: bool, environment: &[(&str, &str)]) {
        let binary = node_binary();
        let replica = self.replicas.get_mut(&id).expect("a known replica");
        assert!(replica.child.is_none(), "replica {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&replica.log_path).expect("a log file");
        // `setsid` (util-linux) runs the replica in its own session without forking: a child of this
        // process leads no process group, so the pid is the replica's.
        let mut command = if self.settings.follower_nice > 0 {
            let mut command = Command::new("setsid");
            command.arg(binary);
            command
        } else {
            Command::new(binary)
        };
        command.arg("--config").arg(&replica.config_path);
        if bootstrap {
            command.arg("--bootstrap");
        }
        let child = command
            .env("RUST_LOG", "info,openraft=warn")
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .expect("tally-node starts");
        replica.child = Some(child);
    }

    /// The process id of a running replica.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.replicas[&id].child.as_ref().map(Child::id)
    }

    /// SIGKILLs a replica: no shutdown, no flush, like a power cut.
    pub fn kill(&mut self, id: u64) {
        let replica = self.replicas.get_mut(&id).expect("a known replica");
        if let Some(mut child) = replica.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `within`) for the replica to exit; returns its exit status.
    pub fn terminate(&mut self, id: u64, within: Duration) -> std::process::ExitStatus {
        let replica = self.replicas.get_mut(&id).expect("a known replica");
        let mut child = replica.child.take().expect("the replica is running");
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM could not be sent");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("the child can be waited for") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("replica {id} did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self, id: u64) {
        self.launch(id, false);
    }

    /// Restarts a replica with `--bootstrap`, as an operator who passes it on every start would.
    pub fn restart_bootstrapping(&mut self, id: u64) {
        self.launch(id, true);
    }

    /// Restarts a replica with extra environment variables (fault injection in debug builds).
    pub fn restart_with_environment(&mut self, id: u64, environment: &[(&str, &str)]) {
        self.launch_with(id, false, environment);
    }

    /// Deletes a stopped replica's data directory: a lost volume.
    pub fn wipe(&mut self, id: u64) {
        assert!(self.replicas[&id].child.is_none(), "replica {id} is running");
        std::fs::remove_dir_all(self.data_directory(id)).expect("the data directory is removed");
    }

    /// A replica's data directory.
    pub fn data_directory(&self, id: u64) -> PathBuf {
        assert!(self.replicas.contains_key(&id), "replica {id} is not known");
        self.directory.path().join(format!("data-{id}"))
    }

    /// Waits (up to `within`) for a replica to exit on its own; returns its exit status, or `None`
    /// if it is still running then.
    pub fn wait_exit(&mut self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        let replica = self.replicas.get_mut(&id).expect("a known replica");
        let child = replica.child.as_mut().expect("the replica is running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("the child can be waited for") {
                replica.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A replica's whole log (stdout and stderr).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.replicas[&id].log_path).unwrap_or_default()
    }

    /// Adds a replica that is not a member yet (to be added as a learner); returns its id.
    pub fn add_replica(&mut self, site: &str) -> u64 {
        let id = self.replicas.keys().max().copied().unwrap_or(0) + 1;
        let taken: Vec<u16> =
            self.replicas.values().flat_map(|replica| [replica.grpc_port, replica.metrics_port]).collect();
        let grpc_port = free_port(&taken);
        let metrics_port = free_port(&[taken.as_slice(), &[grpc_port]].concat());
        let replica = Replica {
            id,
            site: site.to_owned(),
            grpc_port,
            metrics_port,
            config_path: self.directory.path().join(format!("node-{id}.toml")),
            log_path: self.directory.path().join(format!("node-{id}.log")),
            child: None,
        };
        self.replicas.insert(id, replica);
        self.certs.issue(Identity::Replica(id));
        self.write_config(id, false);
        self.launch(id, false);
        id
    }

    pub fn address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.replicas[&id].grpc_port)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.replicas.keys().copied().collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.replicas.values().filter(|replica| replica.child.is_some()).map(|replica| replica.id).collect()
    }

    pub fn ids_in_site(&self, site: &str) -> Vec<u64> {
        self.replicas.values().filter(|replica| replica.site == site).map(|replica| replica.id).collect()
    }

    /// The last lines of a replica's log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(&self.replicas[&id].log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The cluster's CA and certificates.
    pub fn certs(&self) -> &ClusterCerts {
        &self.certs
    }

    /// How the SDK connects to this cluster, as the test principal.
    pub fn security(&self) -> Security {
        self.certs.security(TEST_PRINCIPAL)
    }

    /// The environment tallyctl and tally-bench connect with, as the test principal.
    pub fn client_environment(&self) -> Vec<(&'static str, String)> {
        self.certs.environment(TEST_PRINCIPAL)
    }

    /// Every replica's address and the test principal's certificate, for a command-line tool.
    pub fn target(&self) -> Target {
        let endpoints = self.ids().iter().map(|id| self.address(*id)).collect::<Vec<_>>().join(",");
        Target { endpoints, environment: self.client_environment() }
    }

    /// The metrics endpoint of replica `id`.
    pub fn metrics_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.replicas[&id].metrics_port)
    }

    pub async fn ledger(&self, id: u64) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.certs.channel(&self.address(id), TEST_PRINCIPAL))
    }

    /// A gRPC client of replica `id` whose writes are signed as the test principal.
    pub async fn writer(&self, id: u64) -> SignedLedger {
        SignedLedger { client: self.ledger(id).await, signing: Arc::new(self.signing()) }
    }

    pub async fn admin(&self, id: u64) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.certs.channel(&self.address(id), TEST_PRINCIPAL))
    }

    /// This replica's own status, if it answers.
    pub async fn node_status(&self, id: u64) -> Option<wire::NodeStatus> {
        let mut admin = self.admin(id).await;
        let mut request = tonic::Request::new(wire::NodeStatusRequest {});
        request.set_timeout(Duration::from_secs(1));
        admin.node_status(request).await.ok().map(tonic::Response::into_inner)
    }

    /// Waits until the running replicas agree on a leader among them; returns it.
    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for id in self.running() {
                if let Some(status) = self.node_status(id).await {
                    leaders.push(status.leader_id);
                }
            }
            let leader = leaders.first().copied().unwrap_or(0);
            if leader != 0 && leaders.iter().all(|seen| *seen == leader) && self.running().contains(&leader) {
                if !self.registered.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    self.register_test_principal().await;
                }
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}; logs of replica 1:\n{}", self.log_tail(1));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers the test principal, with every permission and its signing key of generation 1,
    /// as an operator of a new cluster does before its first client writes.
    async fn register_test_principal(&self) {
        use tally_client::registry::{PrincipalRole, RegistryChange};
        let key = self.certs.signing_key(TEST_PRINCIPAL, 1).public_key().clone();
        let change =
            RegistryChange::RegisterPrincipal { principal: TEST_PRINCIPAL, role: PrincipalRole::everything(), key };
        let proposed = self.certs.approved(&change);
        let endpoints: Vec<String> = self.running().iter().map(|id| self.address(*id)).collect();
        let client = tally_client::Client::connect(&endpoints, self.security()).await.expect("a client");
        let applied = client.with_deadline(Duration::from_secs(30)).change_registry(&proposed).await;
        applied.expect("the test principal is registered");
    }

    /// Adds replica `id` as a learner at `site`, asking through replica `via`, as operators do on a
    /// secured cluster: the genesis' operator approves the change, proposed against the membership
    /// in force.
    pub async fn add_learner(
        &self,
        via: u64,
        id: u64,
        site: &str,
    ) -> Result<tally_client::Membership, tally_client::Error> {
        let change = |membership_index| tally_client::registry::RegistryChange::AddLearner {
            node_id: id,
            address: self.address(id),
            site: site.to_owned(),
            membership_index,
        };
        self.change_membership(via, change).await
    }

    /// Makes `voters` the voters (the others learners if `retain_as_learners`, else gone), asking
    /// through replica `via`, approved as [`LocalCluster::add_learner`] is.
    pub async fn change_voters(
        &self,
        via: u64,
        voters: &[u64],
        retain_as_learners: bool,
    ) -> Result<tally_client::Membership, tally_client::Error> {
        let change = |membership_index| tally_client::registry::RegistryChange::ChangeVoters {
            voters: voters.to_vec(),
            retain_as_learners,
            membership_index,
        };
        self.change_membership(via, change).await
    }

    async fn change_membership(
        &self,
        via: u64,
        change: impl FnOnce(u64) -> tally_client::registry::RegistryChange,
    ) -> Result<tally_client::Membership, tally_client::Error> {
        let client = tally_client::Client::connect(&[self.address(via)], self.security()).await?;
        let client = client.with_deadline(Duration::from_secs(30));
        let membership_index = client.cluster_status().await?.membership_index;
        let applied = client.change_registry(&self.certs.approved(&change(membership_index))).await?;
        Ok(applied.membership.expect("a membership change answers the membership it made"))
    }

    /// An SDK client of every replica, signing as the test principal.
    pub async fn client(&self) -> tally_client::Client {
        let endpoints: Vec<String> = self.ids().iter().map(|id| self.address(*id)).collect();
        let signing = Some(self.certs.signing(TEST_PRINCIPAL, 1));
        tally_client::Client::connect_signed(&endpoints, self.security(), signing).await.expect("a client")
    }

    /// How the SDK signs as the test principal.
    pub fn signing(&self) -> tally_client::RequestSigning {
        self.certs.signing(TEST_PRINCIPAL, 1)
    }

    /// Waits until the leader, asked through `via`, sees replica `id` (a learner catching up) at
    /// most 2 entries behind.
    pub async fn wait_caught_up(&self, via: u64, id: u64, within: Duration) {
        let mut admin = self.admin(via).await;
        let deadline = Instant::now() + within;
        loop {
            let status = admin.cluster_status(wire::ClusterStatusRequest {}).await.unwrap().into_inner();
            let lag = status.nodes.iter().find(|node| node.id == id).and_then(|node| node.replication_lag);
            if lag.is_some_and(|lag| lag <= 2) {
                return;
            }
            assert!(Instant::now() < deadline, "replica {id} did not catch up: {lag:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every listed replica reports the same applied index and digest; returns them.
    pub async fn wait_converged(&self, ids: &[u64], within: Duration) -> (u64, Vec<u8>) {
        let deadline = Instant::now() + within;
        loop {
            let mut statuses = Vec::new();
            for id in ids {
                statuses.push(self.node_status(*id).await);
            }
            if let Some(Some(first)) = statuses.first()
                && statuses.iter().all(|status| {
                    status.as_ref().is_some_and(|status| {
                        status.applied_index == first.applied_index && status.digest == first.digest
                    })
                })
            {
                return (first.applied_index, first.digest.clone());
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = ids
                    .iter()
                    .zip(&statuses)
                    .map(|(id, status)| match status {
                        Some(status) => format!(
                            "{id}: applied {} digest {:02x?}",
                            status.applied_index,
                            &status.digest[..4.min(status.digest.len())]
                        ),
                        None => format!("{id}: unreachable"),
                    })
                    .collect();
                panic!("replicas did not converge within {within:?}: {summary:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for replica in self.replicas.values_mut() {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn uint128(value: u128) -> Option<wire::Uint128> {
    let high = u64::try_from(value >> 64).expect("the high half fits");
    let low = u64::try_from(value & u128::from(u64::MAX)).expect("the low half fits");
    Some(wire::Uint128 { high, low })
}

pub fn transfer(id: u128, debit: u128, credit: u128, amount: &str) -> wire::NewTransfer {
    wire::NewTransfer {
        id: uint128(id),
        debit_account_id: uint128(debit),
        credit_account_id: uint128(credit),
        amount: amount.into(),
        ledger: 1,
        code: 1,
        ..wire::NewTransfer::default()
    }
}

/// Writes transfers `first..first + count` of 1.00 from account 1 to account 2, one request each,
/// through `via`, retrying each until it is acknowledged as applied (`ok`, or `exists` for a retry).
pub async fn write_one_by_one(cluster: &LocalCluster, via: u64, first: u128, count: u128) {
    let client = cluster.ledger(via).await;
    let signing = cluster.signing();
    for id in first..first + count {
        let response = retry(|| {
            let client = client.clone();
            let transfers = vec![transfer(id, 1, 2, "1.00")];
            let operation = wire::write_request::Operation::CreateTransfers(wire::CreateTransfersRequest { transfers });
            signed_write(client, &signing, operation)
        })
        .await;
        let applied = |code: &i32| *code == wire::ResultCode::Ok as i32 || *code == wire::ResultCode::Exists as i32;
        assert!(response.results.iter().all(applied), "transfer {id}: {:?}", response.results);
    }
}

/// Creates ledger 1 (EUR, scale 2) and accounts `1..=count`, retrying through leader changes.
pub async fn create_ledger_and_accounts(cluster: &LocalCluster, via: u64, count: u128) {
    use wire::write_request::Operation;
    let client = cluster.ledger(via).await;
    let signing = cluster.signing();
    let ledger = wire::NewLedger { id: 1, currency: "EUR".into(), scale: 2, ..wire::NewLedger::default() };
    let results = retry(|| {
        let operation = Operation::CreateLedgers(wire::CreateLedgersRequest { ledgers: vec![ledger.clone()] });
        signed_write(client.clone(), &signing, operation)
    })
    .await;
    assert!(results.results.iter().all(|code| *code == 0 || *code == 1), "ledger: {:?}", results.results);
    let accounts: Vec<wire::NewAccount> = (1..=count)
        .map(|id| wire::NewAccount { id: uint128(id), ledger: 1, code: 1, ..wire::NewAccount::default() })
        .collect();
    let results = retry(|| {
        let operation = Operation::CreateAccounts(wire::CreateAccountsRequest { accounts: accounts.clone() });
        signed_write(client.clone(), &signing, operation)
    })
    .await;
    assert!(results.results.iter().all(|code| *code == 0 || *code == 1), "accounts: {:?}", results.results);
}

/// A replica's ledger service with the unsigned write calls' shapes, each write signed as the
/// test principal and sent with `Submit` (a secured cluster takes nothing else).
#[derive(Clone, Debug)]
pub struct SignedLedger {
    client: LedgerServiceClient<Channel>,
    signing: Arc<tally_client::RequestSigning>,
}

impl SignedLedger {
    pub async fn create_ledgers(
        &mut self,
        request: wire::CreateLedgersRequest,
    ) -> Result<tonic::Response<wire::CreateResponse>, tonic::Status> {
        signed_write(self.client.clone(), &self.signing, wire::write_request::Operation::CreateLedgers(request)).await
    }

    pub async fn create_accounts(
        &mut self,
        request: wire::CreateAccountsRequest,
    ) -> Result<tonic::Response<wire::CreateResponse>, tonic::Status> {
        signed_write(self.client.clone(), &self.signing, wire::write_request::Operation::CreateAccounts(request)).await
    }

    pub async fn create_transfers(
        &mut self,
        request: wire::CreateTransfersRequest,
    ) -> Result<tonic::Response<wire::CreateResponse>, tonic::Status> {
        signed_write(self.client.clone(), &self.signing, wire::write_request::Operation::CreateTransfers(request)).await
    }
}

/// Sends one write signed as `signing`'s principal (`LedgerService.Submit`), its answer in the
/// shape of the unsigned calls'.
pub async fn signed_write(
    mut client: LedgerServiceClient<Channel>,
    signing: &tally_client::RequestSigning,
    operation: wire::write_request::Operation,
) -> Result<tonic::Response<wire::CreateResponse>, tonic::Status> {
    let message = signing.sign(operation, Duration::from_secs(30)).expect("a signature");
    let response = client.submit(message).await?.into_inner();
    Ok(tonic::Response::new(wire::CreateResponse { header: response.header, results: response.results }))
}

/// Retries a write through elections: UNAVAILABLE and ABORTED are worth retrying with the same ids.
pub async fn retry<F, Fut>(mut call: F) -> wire::CreateResponse
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<wire::CreateResponse>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(response) => return response.into_inner(),
            Err(status)
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Aborted)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("write failed: {status}"),
        }
    }
}

/// 32 random bytes, for a key that tests can make again from them.
fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
    }
    seed
}
