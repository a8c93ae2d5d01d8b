//! Certificates the cluster CA issues make mutual TLS 1.3 connections with rustls and aws-lc-rs:
//! ML-DSA certificates both ways, post-quantum key exchange, and each side reads the other's
//! identity from its certificate. A client of another CA, a plaintext client, and a certificate
//! of another cluster are refused.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::ServerName;
use tally_identity::ClusterId;
use tally_identity::certs::{CertError, CertifiedKey, ClusterCa, Identity, LEAF_VALIDITY_DEFAULT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const CLUSTER: ClusterId = ClusterId(*b"tally-test-clstr");

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn roots(ca: &ClusterCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.certified().certificate.clone()).unwrap();
    Arc::new(roots)
}

fn server_config(ca: &ClusterCa, replica: &CertifiedKey) -> ServerConfig {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().unwrap();
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![replica.certificate.clone()], replica.private_key())
        .unwrap()
}

fn client_config(ca: &ClusterCa, principal: &CertifiedKey, provider: CryptoProvider) -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_client_auth_cert(vec![principal.certificate.clone()], principal.private_key())
        .unwrap()
}

struct Handshake {
    /// The identity the server read from the client's certificate.
    client: Result<Identity, String>,
    /// The identity the client read from the server's certificate, and the key exchange group.
    server: Result<(Identity, String), String>,
}

/// One connection on 127.0.0.1: the server accepts, each side reads the other's identity, and
/// one byte goes each way.
async fn handshake(server: ServerConfig, client: ClientConfig) -> Handshake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let serving = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = acceptor.accept(stream).await.map_err(|error| error.to_string())?;
        let certificates = stream.get_ref().1.peer_certificates().ok_or("no client certificate")?.to_vec();
        let identity = Identity::of_certificate(&certificates[0], &CLUSTER).map_err(|error| error.to_string())?;
        let mut byte = [0];
        stream.read_exact(&mut byte).await.map_err(|error| error.to_string())?;
        stream.write_all(&byte).await.map_err(|error| error.to_string())?;
        Ok::<_, String>(identity)
    });
    let connector = TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(address).await.unwrap();
    let server_side = async {
        let mut stream = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|error| error.to_string())?;
        stream.write_all(b"x").await.map_err(|error| error.to_string())?;
        let mut byte = [0];
        stream.read_exact(&mut byte).await.map_err(|error| error.to_string())?;
        let connection = stream.get_ref().1;
        let certificates = connection.peer_certificates().ok_or("no server certificate")?;
        let identity = Identity::of_certificate(&certificates[0], &CLUSTER).map_err(|error| error.to_string())?;
        let group = connection.negotiated_key_exchange_group().ok_or("no key exchange")?;
        Ok((identity, format!("{:?}", group.name())))
    };
    let server = server_side.await;
    let client = serving.await.unwrap();
    Handshake { client, server }
}

struct Cluster {
    ca: ClusterCa,
    replica: CertifiedKey,
    principal: CertifiedKey,
}

fn cluster() -> Cluster {
    let ca = ClusterCa::generate(CLUSTER, LEAF_VALIDITY_DEFAULT).unwrap();
    let replica = ca.issue(Identity::Replica(1), &["127.0.0.1".to_owned()], LEAF_VALIDITY_DEFAULT).unwrap();
    let principal = ca.issue(Identity::Principal(9), &[], LEAF_VALIDITY_DEFAULT).unwrap();
    Cluster { ca, replica, principal }
}

#[tokio::test]
async fn ml_dsa_certificates_make_a_mutual_tls_13_connection_with_hybrid_post_quantum_key_exchange() {
    let Cluster { ca, replica, principal } = cluster();
    let done = handshake(server_config(&ca, &replica), client_config(&ca, &principal, aws_lc_rs::default_provider()));
    let done = done.await;
    assert_eq!(done.client, Ok(Identity::Principal(9)), "the server reads the client's identity");
    let (server, group) = done.server.expect("the client connects");
    assert_eq!(server, Identity::Replica(1), "the client reads the server's identity");
    assert_eq!(group, "X25519MLKEM768", "hybrid ML-KEM key exchange by default");
}

#[tokio::test]
async fn a_client_offering_only_a_post_quantum_key_exchange_connects() {
    let Cluster { ca, replica, principal } = cluster();
    for (group, name) in [(kx_group::X25519MLKEM768, "X25519MLKEM768"), (kx_group::MLKEM1024, "MLKEM1024")] {
        let mut server = server_config(&ca, &replica);
        if name == "MLKEM1024" {
            // Pure ML-KEM-1024 is not among the defaults: a listener restricted to it offers it.
            let mut restricted = aws_lc_rs::default_provider();
            restricted.kx_groups = vec![kx_group::MLKEM1024];
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), Arc::new(restricted.clone()));
            server = ServerConfig::builder_with_provider(Arc::new(restricted))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_client_cert_verifier(verifier.build().unwrap())
                .with_single_cert(vec![replica.certificate.clone()], replica.private_key())
                .unwrap();
        }
        let mut only = aws_lc_rs::default_provider();
        only.kx_groups = vec![group];
        let done = handshake(server, client_config(&ca, &principal, only)).await;
        let (_, negotiated) = done.server.unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(negotiated, name);
    }
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_is_refused() {
    let Cluster { ca, replica, .. } = cluster();
    let stranger_ca = ClusterCa::generate(CLUSTER, LEAF_VALIDITY_DEFAULT).unwrap();
    let stranger = stranger_ca.issue(Identity::Principal(9), &[], LEAF_VALIDITY_DEFAULT).unwrap();
    let done = handshake(server_config(&ca, &replica), client_config(&ca, &stranger, aws_lc_rs::default_provider()));
    let done = done.await;
    let refused = done.client.expect_err("the server refuses a certificate its CA did not issue");
    assert!(refused.contains("certificate"), "{refused}");
    assert!(done.server.is_err());
}

#[tokio::test]
async fn a_plaintext_client_is_refused() {
    let Cluster { ca, replica, .. } = cluster();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&ca, &replica)));
    let serving = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        acceptor.accept(stream).await.map(|_| ()).map_err(|error| error.to_string())
    });
    let mut plain = TcpStream::connect(address).await.unwrap();
    plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let refused = serving.await.unwrap().expect_err("no TLS, no connection");
    assert!(!refused.is_empty());
}

#[test]
fn a_certificate_names_one_identity_of_its_own_cluster() {
    let Cluster { ca, replica, principal } = cluster();
    assert_eq!(Identity::of_certificate(&replica.certificate, &CLUSTER), Ok(Identity::Replica(1)));
    assert_eq!(Identity::of_certificate(&principal.certificate, &CLUSTER), Ok(Identity::Principal(9)));
    let other = ClusterId([0xab; 16]);
    assert!(matches!(Identity::of_certificate(&replica.certificate, &other), Err(CertError::OtherCluster { .. })));
    assert!(
        matches!(Identity::of_certificate(&ca.certified().certificate, &CLUSTER), Err(CertError::NoIdentity { .. })),
        "the CA's own certificate names no identity"
    );
    // A CA read back from its files issues certificates that chain to the same root.
    let reloaded =
        ClusterCa::from_pem(CLUSTER, &ca.certified().certificate_pem, &ca.certified().private_key_pem).unwrap();
    let reissued = reloaded.issue(Identity::Principal(10), &[], LEAF_VALIDITY_DEFAULT).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider()).build().unwrap();
    let now = rustls_pki_types::UnixTime::now();
    assert!(verifier.verify_client_cert(&reissued.certificate, &[], now).is_ok(), "the reloaded CA's certificate");
}
