//! Every listener of a real three-replica cluster speaks TLS 1.3 only, with certificates of the
//! cluster's CA, and authorises by the identity a certificate names: plaintext, another CA, an
//! expired or revoked certificate, a principal on the peer protocol and a replica on the admin API
//! are refused; hybrid post-quantum key exchange is negotiated; a client without ML-DSA gets the
//! ECDSA fallback chain; `/metrics` needs a monitoring principal, `/ready` answers anyone.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tally_identity::certs::Identity;
use tally_identity::tls::{Credentials, TlsFiles, connect_tls};
use tally_proto::v1 as wire;
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tally_tests::{ClusterCerts, LocalCluster, MONITORING_PRINCIPAL, Settings, TEST_PRINCIPAL, serialised};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const LEADER_WITHIN: Duration = Duration::from_secs(30);

/// Asks `channel`'s replica for its status: what any principal may do.
async fn node_status(channel: Channel) -> Result<wire::NodeStatus, tonic::Status> {
    let mut admin = AdminServiceClient::new(channel);
    let mut request = tonic::Request::new(wire::NodeStatusRequest {});
    request.set_timeout(Duration::from_secs(3));
    admin.node_status(request).await.map(|response| response.into_inner())
}

/// Asks for one ledger (through the ledger API).
async fn list_ledgers(channel: Channel) -> Result<(), tonic::Status> {
    let mut ledger = LedgerServiceClient::new(channel);
    let mut request = tonic::Request::new(wire::LookupLedgersRequest { ids: vec![978] });
    request.set_timeout(Duration::from_secs(3));
    ledger.lookup_ledgers(request).await.map(|_| ())
}

/// Whether a call failed below gRPC (the connection was refused or broken), not with an answer.
/// Which code that gives depends on when the refusal reaches the client: in the TLS handshake
/// (UNAVAILABLE), or as a TLS alert that a plaintext HTTP/2 client reads as a malformed frame
/// (INTERNAL), or as the connection closing under a call (UNKNOWN, CANCELLED).
fn in_transport(status: &tonic::Status) -> bool {
    let transport = std::error::Error::source(status).is_some_and(|source| source.is::<tonic::transport::Error>());
    transport
        && matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled
        )
}

fn assert_refused_in_transport(status: &tonic::Status) {
    assert!(in_transport(status), "expected a refused connection, got {status:?}");
}

fn plaintext(address: &str) -> Channel {
    Channel::from_shared(format!("http://{address}")).unwrap().connect_timeout(Duration::from_secs(1)).connect_lazy()
}

/// One HTTP/1.0 GET of the metrics endpoint over TLS as `identity`'s certificate (none: no
/// client certificate): the status code and the body.
async fn metrics_get(cluster: &LocalCluster, id: u64, path: &str, principal: Option<u64>) -> (u16, String) {
    let dir = &cluster.certs().dir;
    let roots = || {
        let mut roots = RootCertStore::empty();
        roots.add(rustls_pki_types::CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap()).unwrap();
        Arc::new(roots)
    };
    let config = match principal {
        Some(principal) => {
            let files = TlsFiles::in_directory(dir, Identity::Principal(principal));
            Credentials::load(&files, None).unwrap().peer_client_config(Default::default()).unwrap()
        }
        None => Arc::new(
            ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots())
                .with_no_client_auth(),
        ),
    };
    let address = cluster.metrics_address(id);
    let (host, port) = tally_identity::tls::split_address(&address).unwrap();
    let mut stream = connect_tls(host, port, config).await.expect("the metrics endpoint serves TLS");
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap_or_default();
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_refuses_what_its_certificate_does_not_allow() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let certs = cluster.certs();
    let address = cluster.address(follower);

    // The test principal works, directly and through a follower (which forwards to the leader
    // with its replica certificate).
    if let Err(error) = node_status(certs.channel(&address, TEST_PRINCIPAL)).await {
        panic!("a principal reads a replica's status: {error:?}\n{}", cluster.log_tail(follower));
    }
    list_ledgers(certs.channel(&address, TEST_PRINCIPAL)).await.expect("a principal reads through a follower");

    // Plaintext gets no answer at all.
    let refused = node_status(plaintext(&address)).await.unwrap_err();
    assert_refused_in_transport(&refused);

    // A certificate of another CA (even naming this cluster's id) is refused in the handshake.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = ClusterCerts::create(stranger_dir.path());
    let refused = node_status(stranger.channel(&address, TEST_PRINCIPAL)).await.unwrap_err();
    assert_refused_in_transport(&refused);

    // An expired certificate of this CA is refused.
    let now = time::OffsetDateTime::now_utc();
    let expired = certs
        .ca
        .issue_valid_between(Identity::Principal(5), &[], now - time::Duration::days(10), now - time::Duration::days(1))
        .unwrap();
    certs.write(Identity::Principal(5), &expired);
    let refused = node_status(certs.channel_unchecked(&address, 5)).await.unwrap_err();
    assert_refused_in_transport(&refused);

    // A replica's certificate does not open the admin or ledger API (it may only forward).
    let as_replica = certs.replica_channel(&address, leader);
    let refused = node_status(as_replica.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains(&format!("replica {leader}'s certificate may not call")),
        "{}",
        refused.message()
    );
    let refused = list_ledgers(as_replica).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A principal's certificate does not open the peer protocol: the replica closes the
    // connection after the magic, answering nothing.
    let files = TlsFiles::in_directory(&certs.dir, Identity::Principal(TEST_PRINCIPAL));
    let config = Credentials::load(&files, None).unwrap().peer_client_config(Default::default()).unwrap();
    let (host, port) = tally_identity::tls::split_address(&address).unwrap();
    let mut stream = connect_tls(host, port, config).await.expect("the TLS handshake itself succeeds");
    stream.write_all(&tally_consensus::network::PEER_PROTOCOL_MAGIC).await.unwrap();
    stream.write_all(&[16, 0, 0, 0]).await.unwrap();
    stream.write_all(&[0; 16]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the replica closes the connection within 5 s");
    assert!(answer.is_empty(), "no peer protocol answer to a principal: {answer:?}");
    let (status, metrics) = metrics_get(&cluster, follower, "/metrics", Some(MONITORING_PRINCIPAL)).await;
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|line| line.starts_with("tally_connections_refused_total{kind=\"peer_identity\"}")),
        "the refusal is counted"
    );

    // A revoked certificate is refused once the replicas reload the revocation list, and so is
    // its ECDSA fallback certificate.
    let revoked = certs.issue(Identity::Principal(6));
    node_status(certs.channel(&address, 6)).await.expect("principal 6 works before it is revoked");
    node_status(fallback_channel(certs, &address, 6)).await.expect("and with its fallback certificate");
    certs.revoke(&[&revoked]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // A new channel each time: connections already open keep their certificate.
        match node_status(certs.channel(&address, 6)).await {
            Err(status) if in_transport(&status) => break,
            answer => {
                assert!(tokio::time::Instant::now() < deadline, "revoked principal 6 still served: {answer:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let refused = node_status(fallback_channel(certs, &address, 6)).await.unwrap_err();
    assert_refused_in_transport(&refused);
    node_status(certs.channel(&address, TEST_PRINCIPAL)).await.expect("other principals go on");
    node_status(fallback_channel(certs, &address, TEST_PRINCIPAL)).await.expect("and their fallback certificates");

    // /metrics needs the monitoring principal; /ready answers anyone, with its status alone.
    assert_eq!(metrics_get(&cluster, follower, "/metrics", None).await.0, 401);
    assert_eq!(metrics_get(&cluster, follower, "/metrics", Some(TEST_PRINCIPAL)).await.0, 403);
    let (status, body) = metrics_get(&cluster, follower, "/ready", None).await;
    assert_eq!((status, body.trim()), (200, "ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_key_exchange_is_negotiated_and_clients_without_ml_dsa_get_the_fallback_chain() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a"], Settings::default());
    cluster.wait_for_leader(LEADER_WITHIN).await;
    let certs = cluster.certs();
    let address = cluster.address(1);
    let (host, port) = tally_identity::tls::split_address(&address).unwrap();
    let files = TlsFiles::in_directory(&certs.dir, Identity::Principal(TEST_PRINCIPAL));
    let credentials = Credentials::load(&files, None).unwrap();

    // A client that offers only X25519MLKEM768 connects, and that is the group negotiated.
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![kx_group::X25519MLKEM768];
    let only_hybrid = client_config(provider, &certs.dir.join("ca.pem"), &files);
    let stream = connect_tls(host, port, only_hybrid).await.expect("a hybrid-only client connects");
    let group = stream.get_ref().1.negotiated_key_exchange_group().map(|group| group.name());
    assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert!(tally_identity::certs::is_ml_dsa(&presented), "an ML-DSA client gets the ML-DSA chain");

    // A client whose TLS offers no ML-DSA signature scheme (as OpenSSL 3.0) gets the replica's
    // ECDSA P-256 chain from the fallback CA, naming the same replica.
    let provider = without_ml_dsa();
    let fallback_files = files.fallback.clone().expect("certificates come with a fallback chain");
    let classical = client_config(provider, &fallback_files.ca, &files);
    let stream = connect_tls(host, port, classical).await.expect("a client without ML-DSA connects");
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert!(!tally_identity::certs::is_ml_dsa(&presented), "it gets the fallback chain");
    assert_eq!(Identity::of_certificate(&presented, &credentials.cluster()).unwrap(), Identity::Replica(1));
}

/// A client configuration trusting `ca` with `provider`, presenting the principal's ML-DSA
/// certificate.
fn client_config(
    provider: rustls::crypto::CryptoProvider,
    ca: &std::path::Path,
    files: &TlsFiles,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let certificate = rustls_pki_types::CertificateDer::from_pem_file(&files.certificate).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![certificate], key)
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_a_live_cluster_under_load_and_no_acknowledged_transfer_is_lost() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tally_client::{Client, NewTransfer, Security};

    let _turn = serialised().await;
    let cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    tally_tests::create_ledger_and_accounts(&cluster, leader, 2).await;
    let security = cluster.security();
    let Security::Tls(tls) = &security else { panic!("the cluster serves TLS") };
    let endpoints: Vec<String> = cluster.ids().iter().map(|id| cluster.address(*id)).collect();
    let client = Client::connect_signed(&endpoints, security.clone(), Some(cluster.signing()))
        .await
        .unwrap()
        .with_deadline(Duration::from_secs(20));

    // Sixteen callers write single transfers until told to stop, keeping what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in 0..16u128 {
        let (client, stop) = (client.clone(), Arc::clone(&stop));
        callers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut sequence = 0u128;
            while !stop.load(Ordering::Relaxed) {
                let id = (caller + 1) << 64 | sequence;
                sequence += 1;
                let transfer = NewTransfer::new(id, 1, 2, rust_decimal::Decimal::new(1, 2), 1, 1);
                let code = client.create_transfer(transfer).await.expect("a write under rotation is answered");
                assert!(code.is_success(), "transfer {id}: {}", code.description());
                acknowledged.push(id);
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every replica's certificate and the client's are replaced, with the load running.
    let certs = cluster.certs();
    let before: Vec<usize> =
        cluster.ids().iter().map(|id| cluster.log(*id).matches("TLS files reloaded").count()).collect();
    for id in cluster.ids() {
        certs.issue(Identity::Replica(id));
    }
    certs.issue(Identity::Principal(TEST_PRINCIPAL));
    tls.reload().expect("the client takes its new certificate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for (index, id) in cluster.ids().into_iter().enumerate() {
        while cluster.log(id).matches("TLS files reloaded").count() <= before[index] {
            assert!(tokio::time::Instant::now() < deadline, "replica {id} did not reload:\n{}", cluster.log_tail(id));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for caller in callers {
        acknowledged.extend(caller.await.unwrap());
    }
    assert!(acknowledged.len() > 100, "the load ran: {} transfers", acknowledged.len());

    // New connections, from a new client and between replicas, use the new certificates; every
    // acknowledged transfer is there.
    let fresh = Client::connect(&endpoints, cluster.security()).await.unwrap().with_deadline(Duration::from_secs(20));
    for chunk in acknowledged.chunks(1_000) {
        let found = fresh.lookup_transfers(chunk).await.unwrap();
        let missing: Vec<u128> =
            chunk.iter().zip(&found).filter(|(_, found)| found.is_none()).map(|(id, _)| *id).collect();
        assert!(missing.is_empty(), "acknowledged transfers missing: {missing:?}");
    }
    let status = fresh.cluster_status().await.unwrap();
    assert!(status.nodes.iter().all(|node| node.reachable), "replicas reach each other with the new certificates");

    // A file that does not load (half-written, say) changes nothing: the replica says so and
    // goes on serving new connections with the certificate it had.
    let replica = cluster.ids()[0];
    let files = TlsFiles::in_directory(&certs.dir, Identity::Replica(replica));
    let good = std::fs::read(&files.certificate).unwrap();
    let failed_before = cluster.log(replica).matches("TLS files not reloaded").count();
    std::fs::write(&files.certificate, b"-----BEGIN CERTIFICATE-----\nhalf").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while cluster.log(replica).matches("TLS files not reloaded").count() == failed_before {
        assert!(tokio::time::Instant::now() < deadline, "no failed reload logged:\n{}", cluster.log_tail(replica));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node_status(certs.channel(&cluster.address(replica), TEST_PRINCIPAL))
        .await
        .expect("a new connection still gets the certificate the replica had");
    std::fs::write(&files.certificate, good).unwrap();
}

/// A gRPC channel as a client whose TLS has no ML-DSA (as OpenSSL 3.0): it trusts the fallback CA
/// and presents `principal`'s ECDSA fallback certificate.
fn fallback_channel(certs: &ClusterCerts, address: &str, principal: u64) -> Channel {
    let files = TlsFiles::in_directory(&certs.dir, Identity::Principal(principal));
    let fallback = files.fallback.clone().expect("a fallback certificate");
    let fallback_files = TlsFiles { certificate: fallback.certificate, key: fallback.key, ..files };
    let mut config = (*client_config(without_ml_dsa(), &fallback.ca, &fallback_files)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tally_tests::channel_with(address, Arc::new(config), certs.ca.cluster())
}

/// aws-lc-rs' provider offering no ML-DSA signature scheme.
fn without_ml_dsa() -> rustls::crypto::CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    let mapping: Vec<_> = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(scheme, _)| !format!("{scheme:?}").starts_with("ML_DSA"))
        .copied()
        .collect();
    provider.signature_verification_algorithms.mapping = Box::leak(mapping.into_boxed_slice());
    provider
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_restricted_to_pure_ml_kem_1024_replicate_and_refuse_a_peer_on_the_hybrid() {
    let _turn = serialised().await;
    let settings = Settings { peer_key_exchange: "mlkem1024", ..Settings::default() };
    let cluster = LocalCluster::start(&["a", "b", "c"], settings);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    tally_tests::create_ledger_and_accounts(&cluster, leader, 2).await;
    tally_tests::write_one_by_one(&cluster, leader, 1, 20).await;
    cluster.wait_converged(&cluster.ids(), Duration::from_secs(30)).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let (_, metrics) = metrics_get(&cluster, follower, "/metrics", Some(MONITORING_PRINCIPAL)).await;
    let handshakes = sample(&metrics, "tally_tls_handshakes_total{group=\"MLKEM1024\"}");
    assert!(handshakes >= 1.0, "peers use ML-KEM-1024:\n{metrics}");

    // Replica 1's own certificate, but the hybrid key exchange: the peer protocol is refused.
    let certs = cluster.certs();
    let files = TlsFiles::in_directory(&certs.dir, Identity::Replica(leader));
    let config = Credentials::load(&files, None).unwrap().peer_client_config(Default::default()).unwrap();
    const REFUSED: &str = "tally_connections_refused_total{kind=\"peer_identity\"}";
    let refused_before = sample(&metrics, REFUSED);
    let address = cluster.address(follower);
    let (host, port) = tally_identity::tls::split_address(&address).unwrap();
    let mut stream = connect_tls(host, port, config).await.expect("the TLS handshake itself succeeds");
    assert_eq!(
        stream.get_ref().1.negotiated_key_exchange_group().map(|group| group.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    stream.write_all(&tally_consensus::network::PEER_PROTOCOL_MAGIC).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok() && answer.is_empty(), "the replica closes the connection unanswered: {answer:?}");
    let (_, metrics) = metrics_get(&cluster, follower, "/metrics", Some(MONITORING_PRINCIPAL)).await;
    assert_eq!(sample(&metrics, REFUSED), refused_before + 1.0, "the refusal is counted");
}

/// The value of the Prometheus sample `series` (name and labels) in `metrics`; 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}
