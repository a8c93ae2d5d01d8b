//! TLS 1.3 for every Tally connection: rustls on aws-lc-rs, ML-DSA certificates of the cluster CA,
//! post-quantum key exchange, and the identity each side reads from the other's certificate.
//!
//! Authentication ("signed by our CA") is rustls'; authorisation is by the identity the
//! certificate names ([`Identity::of_certificate`]), which each listener checks for itself: a
//! principal's certificate never opens the peer protocol, a replica's never opens the admin API.
//!
//! Key exchange: the hybrid X25519MLKEM768 first, for everyone. Peers offer nothing classical
//! (replicas are all ours), and can be restricted to pure ML-KEM-1024 ([`KeyExchange`]).
//! Client-facing listeners also accept the classical groups, for clients whose TLS stack has no
//! ML-KEM yet; TLS 1.3 signs the transcript, so a man in the middle cannot force a client that
//! offers the hybrid down to them.
//!
//! Everything a replica or a client loads is read from files once per (re)load into
//! [`Credentials`], and the configurations made from them are swapped whole ([`Current`]), so a
//! connection sees either the old certificates or the new ones, never a mix.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::certs::{CertError, Identity};
use crate::request::ClusterId;

/// The ALPN protocol of gRPC (HTTP/2), which the client API offers: gRPC clients of other
/// languages insist on it.
pub const ALPN_HTTP2: &[u8] = b"h2";

/// How long a TLS handshake may take, on either side, before the connection is given up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The key exchange replicas use with each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyExchange {
    /// X25519MLKEM768: ML-KEM-768 and X25519 together, secure while either holds.
    #[default]
    X25519Mlkem768,
    /// ML-KEM-1024 alone (the seed's Kyber-1024), for sites whose policy asks for pure
    /// post-quantum key exchange at its highest level.
    Mlkem1024,
}

impl KeyExchange {
    fn group(self) -> &'static dyn SupportedKxGroup {
        match self {
            KeyExchange::X25519Mlkem768 => kx_group::X25519MLKEM768,
            KeyExchange::Mlkem1024 => kx_group::MLKEM1024,
        }
    }

    /// The group's name as TLS logs it (`X25519MLKEM768`, `MLKEM1024`).
    pub fn name(self) -> &'static str {
        match self {
            KeyExchange::X25519Mlkem768 => "X25519MLKEM768",
            KeyExchange::Mlkem1024 => "MLKEM1024",
        }
    }

    /// Whether a connection that negotiated `group` used this key exchange.
    pub fn negotiated(self, group: Option<rustls::NamedGroup>) -> bool {
        group == Some(self.group().name())
    }
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("{path}: {source}")]
    Certificate { path: String, source: CertError },
    #[error("{path} expired at {not_after} (unix seconds); issue a new one (tallyctl certs rotate)")]
    Expired { path: String, not_after: u64 },
    #[error("cannot make the TLS configuration: {0}")]
    Config(String),
}

/// The files a replica or a client loads its TLS material from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate: the only root trusted.
    pub ca: PathBuf,
    /// This side's certificate, issued by the CA.
    pub certificate: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// The CA's certificate revocation list (`tallyctl certs revoke`), if any.
    pub revocation_list: Option<PathBuf>,
    /// An ECDSA P-256 chain a listener also presents, to clients that cannot verify ML-DSA.
    pub fallback: Option<FallbackFiles>,
}

/// The fallback CA's certificate, and this side's ECDSA P-256 certificate and key from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackFiles {
    pub ca: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// The fallback CA's revocation list. Without it, while the main CA has one, fallback
    /// client certificates are refused: their revocation could not be checked.
    pub revocation_list: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `tallyctl certs` writes in `dir` for `identity`.
    pub fn in_directory(dir: &Path, identity: Identity) -> TlsFiles {
        let stem = match identity {
            Identity::Replica(id) => format!("replica-{id}"),
            Identity::Principal(id) => format!("principal-{id}"),
        };
        let revocation_list = dir.join(REVOCATION_LIST_FILE);
        let fallback_list = dir.join(FALLBACK_REVOCATION_LIST_FILE);
        let fallback = FallbackFiles {
            ca: dir.join(FALLBACK_CA_FILE),
            certificate: dir.join(format!("{stem}-ecdsa.pem")),
            key: dir.join(format!("{stem}-ecdsa.key")),
            revocation_list: fallback_list.exists().then_some(fallback_list),
        };
        TlsFiles {
            ca: dir.join("ca.pem"),
            certificate: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            revocation_list: revocation_list.exists().then_some(revocation_list),
            fallback: (fallback.ca.exists() && fallback.certificate.exists()).then_some(fallback),
        }
    }

    /// The files' last modification times, to notice a change (a rotation) without a signal.
    pub fn modified(&self) -> Vec<Option<SystemTime>> {
        let fallback = self.fallback.as_ref();
        let paths = [
            Some(&self.ca),
            Some(&self.certificate),
            Some(&self.key),
            self.revocation_list.as_ref(),
            fallback.map(|files| &files.ca),
            fallback.map(|files| &files.certificate),
            fallback.map(|files| &files.key),
            fallback.and_then(|files| files.revocation_list.as_ref()),
        ];
        paths
            .into_iter()
            .map(|path| path.and_then(|path| std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok()))
            .collect()
    }
}

/// The name of the CA's revocation list in a certificates folder.
pub const REVOCATION_LIST_FILE: &str = "ca.crl";
/// The name of the fallback (ECDSA P-256) CA's certificate in a certificates folder.
pub const FALLBACK_CA_FILE: &str = "ca-ecdsa.pem";
/// The name of the fallback CA's revocation list in a certificates folder.
pub const FALLBACK_REVOCATION_LIST_FILE: &str = "ca-ecdsa.crl";

/// The TLS material of one side, checked: a certificate of this cluster's CA naming one identity,
/// its key, the CA, and the revoked certificates.
#[derive(Clone)]
pub struct Credentials {
    cluster: ClusterId,
    identity: Identity,
    not_after: u64,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// `chain` and `key` loaded for signing, as the fallback's resolver presents them.
    certified: Arc<rustls::sign::CertifiedKey>,
    revocation_lists: Vec<CertificateRevocationListDer<'static>>,
    fallback: Option<Fallback>,
}

/// The ECDSA P-256 chain a client-facing listener presents to clients without ML-DSA.
#[derive(Clone)]
struct Fallback {
    ca: CertificateDer<'static>,
    certified: Arc<rustls::sign::CertifiedKey>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Credentials({} of cluster {})", self.identity, self.cluster)
    }
}

fn read_certificate(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(&read(path)?)
        .map_err(|error| invalid(path, format!("not a PEM certificate: {error}")))
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?)
        .map_err(|error| invalid(path, format!("not a PEM private key: {error}")))
}

fn read_revocation_list(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    CertificateRevocationListDer::from_pem_slice(&read(path)?)
        .map_err(|error| invalid(path, format!("not a PEM revocation list: {error}")))
}

/// `certificate` with its signing key, loaded by aws-lc-rs; fails when the key is not the
/// certificate's.
fn signing_key(
    certificate: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let key_pair = provider(&client_facing_groups())
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|error| error.to_string())?;
    let certified = rustls::sign::CertifiedKey::new(vec![certificate.clone()], key_pair);
    certified.keys_match().map_err(|error| format!("the key does not belong to the certificate: {error}"))?;
    Ok(Arc::new(certified))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn invalid(path: &Path, detail: impl fmt::Display) -> TlsError {
    TlsError::Invalid { path: path.display().to_string(), detail: detail.to_string() }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// The last second a certificate is valid in, unix seconds.
pub fn not_after(certificate: &CertificateDer<'_>) -> Result<u64, CertError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(certificate).map_err(|error| CertError::Unreadable(error.to_string()))?;
    Ok(u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0))
}

impl Credentials {
    /// Loads and checks `files`: each parses, the certificate names an identity of `cluster` (by
    /// default the one it names) and has not expired, and the key is the certificate's.
    pub fn load(files: &TlsFiles, cluster: Option<&ClusterId>) -> Result<Credentials, TlsError> {
        let (ca, certificate, key) =
            (read_certificate(&files.ca)?, read_certificate(&files.certificate)?, read_private_key(&files.key)?);
        let revocation_lists =
            files.revocation_list.iter().map(|path| read_revocation_list(path)).collect::<Result<_, _>>()?;
        let credentials =
            Credentials::new(ca, certificate, key, revocation_lists, cluster).map_err(|error| match error {
                TlsError::Certificate { source, .. } => {
                    TlsError::Certificate { path: files.certificate.display().to_string(), source }
                }
                TlsError::Expired { not_after, .. } => {
                    TlsError::Expired { path: files.certificate.display().to_string(), not_after }
                }
                TlsError::Invalid { detail, .. } => invalid(&files.certificate, detail),
                other => other,
            })?;
        match &files.fallback {
            None => Ok(credentials),
            Some(fallback) => credentials.with_fallback(fallback),
        }
    }

    /// Credentials from what is already in memory (tests, and [`Credentials::load`]).
    pub fn new(
        ca: CertificateDer<'static>,
        certificate: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        revocation_lists: Vec<CertificateRevocationListDer<'static>>,
        cluster: Option<&ClusterId>,
    ) -> Result<Credentials, TlsError> {
        let here = || "the certificate".to_owned();
        let cluster = match cluster {
            Some(cluster) => *cluster,
            None => Identity::cluster_of_certificate(&certificate)
                .map_err(|source| TlsError::Certificate { path: here(), source })?,
        };
        let cluster = &cluster;
        let identity = Identity::of_certificate(&certificate, cluster)
            .map_err(|source| TlsError::Certificate { path: here(), source })?;
        let not_after = not_after(&certificate).map_err(|source| TlsError::Certificate { path: here(), source })?;
        if not_after < unix_now() {
            return Err(TlsError::Expired { path: here(), not_after });
        }
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|error| TlsError::Invalid { path: "the CA".into(), detail: error.to_string() })?;
        let certified = signing_key(&certificate, &key).map_err(|detail| TlsError::Invalid { path: here(), detail })?;
        Ok(Credentials {
            cluster: *cluster,
            identity,
            not_after,
            roots: Arc::new(roots),
            chain: vec![certificate],
            key: Arc::new(key),
            certified,
            revocation_lists,
            fallback: None,
        })
    }

    /// Adds the fallback chain: its certificate must name this side's identity.
    fn with_fallback(mut self, files: &FallbackFiles) -> Result<Credentials, TlsError> {
        let (ca, certificate, key) =
            (read_certificate(&files.ca)?, read_certificate(&files.certificate)?, read_private_key(&files.key)?);
        let named = Identity::of_certificate(&certificate, &self.cluster)
            .map_err(|source| TlsError::Certificate { path: files.certificate.display().to_string(), source })?;
        if named != self.identity {
            return Err(invalid(
                &files.certificate,
                format!("names {named}, and the ML-DSA certificate {}", self.identity),
            ));
        }
        let certified = signing_key(&certificate, &key).map_err(|detail| invalid(&files.key, detail))?;
        if let Some(path) = &files.revocation_list {
            self.revocation_lists.push(read_revocation_list(path)?);
        }
        self.fallback = Some(Fallback { ca, certified });
        Ok(self)
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The last second this side's certificate is valid in, unix seconds.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// A replica's listener: TLS 1.3, a client certificate of the CA required (or, with
    /// `ClientCertificates::Optional`, allowed: `/health` and `/ready`), revoked certificates
    /// refused, HTTP/2 by ALPN. It accepts every group peers and clients may offer.
    pub fn server_config(
        &self,
        peers: KeyExchange,
        client_certificates: ClientCertificates,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut groups = client_facing_groups();
        if !groups.iter().any(|group| group.name() == peers.group().name()) {
            groups.insert(1, peers.group());
        }
        let provider = provider(&groups);
        let roots = match &self.fallback {
            None => Arc::clone(&self.roots),
            Some(fallback) => {
                let mut roots = (*self.roots).clone();
                roots.add(fallback.ca.clone()).map_err(|error| TlsError::Config(error.to_string()))?;
                Arc::new(roots)
            }
        };
        let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .with_crls(self.revocation_lists.iter().cloned())
            .only_check_end_entity_revocation();
        if client_certificates == ClientCertificates::Optional {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build().map_err(|error| TlsError::Config(error.to_string()))?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_client_cert_verifier(verifier);
        let mut config = match &self.fallback {
            None => builder
                .with_single_cert(self.chain.clone(), self.key.clone_key())
                .map_err(|error| TlsError::Config(error.to_string()))?,
            Some(fallback) => builder.with_cert_resolver(Arc::new(ByClientSchemes {
                ml_dsa: Arc::clone(&self.certified),
                fallback: Arc::clone(&fallback.certified),
            })),
        };
        // Resumed sessions skip the certificate checks; a revoked or expired certificate must not
        // come back on a ticket issued before, so every connection makes a full handshake.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.alpn_protocols = vec![ALPN_HTTP2.to_vec()];
        Ok(Arc::new(config))
    }

    /// A replica dialling another: only `peers`' group offered, no ALPN (the peer protocol is
    /// not HTTP), this side's certificate presented.
    pub fn peer_client_config(&self, peers: KeyExchange) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config(&[peers.group()], Vec::new())
    }

    /// A client of the gRPC API (the SDK, tallyctl, a replica forwarding to the leader): the
    /// hybrid first, HTTP/2 by ALPN, this side's certificate presented.
    pub fn grpc_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config(&client_facing_groups(), vec![ALPN_HTTP2.to_vec()])
    }

    fn client_config(
        &self,
        groups: &[&'static dyn SupportedKxGroup],
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider(groups);
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.roots), Arc::clone(&provider))
            .with_crls(self.revocation_lists.iter().cloned())
            .only_check_end_entity_revocation()
            .build()
            .map_err(|error| TlsError::Config(error.to_string()))?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|error| TlsError::Config(error.to_string()))?;
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }
}

/// Whether a listener requires a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCertificates {
    Required,
    /// Allowed but not required: what the other side may do then is the listener's to decide.
    Optional,
}

/// aws-lc-rs' groups with the hybrid first (rustls' `prefer-post-quantum` order).
fn client_facing_groups() -> Vec<&'static dyn SupportedKxGroup> {
    aws_lc_rs::default_provider().kx_groups
}

fn provider(groups: &[&'static dyn SupportedKxGroup]) -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = groups.to_vec();
    Arc::new(provider)
}

/// A value swapped whole on reload: readers take the current `Arc` and keep it for as long as
/// they use it (a handshake, a connection).
#[derive(Debug)]
pub struct Current<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Current<T> {
    pub fn new(value: Arc<T>) -> Current<T> {
        Current { value: RwLock::new(value) }
    }

    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.value.read().expect("a TLS configuration lock is never poisoned"))
    }

    pub fn set(&self, value: Arc<T>) {
        *self.value.write().expect("a TLS configuration lock is never poisoned") = value;
    }
}

/// A TLS stream as hyper (and so tonic) reads and writes it.
pub type GrpcStream = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

/// Dials a replica's gRPC API over TLS, for tonic's `Endpoint::connect_with_connector_lazy`
/// (whose URI stays `http://`: HTTP/2 runs inside this connector's TLS). It checks that the
/// server is a replica of the cluster, and that its certificate names the address dialled.
#[derive(Clone)]
pub struct GrpcConnector {
    config: Arc<Current<ClientConfig>>,
    cluster: ClusterId,
}

impl GrpcConnector {
    pub fn new(config: Arc<Current<ClientConfig>>, cluster: ClusterId) -> GrpcConnector {
        GrpcConnector { config, cluster }
    }
}

impl fmt::Debug for GrpcConnector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "GrpcConnector({})", self.cluster)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for GrpcConnector {
    type Response = GrpcStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<GrpcStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.get();
        let cluster = self.cluster;
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| format!("{uri} names no host"))?.to_owned();
            let port = uri.port_u16().ok_or_else(|| format!("{uri} names no port"))?;
            let stream = connect_tls(&host, port, config).await?;
            let presented = Identity::of_certificate_in(stream.get_ref().1, &cluster).map_err(|error| match error {
                CertError::OtherCluster { named, expected } => format!(
                    "{host}:{port} is a replica of cluster {named}, and this client's certificate is of cluster \
                     {expected}: use a certificate of that cluster's CA"
                ),
                other => format!("{host}:{port}: {other}"),
            })?;
            match presented {
                Identity::Replica(_) => Ok(hyper_util::rt::TokioIo::new(stream)),
                other => Err(format!("{host}:{port} presented the certificate of {other}, not of a replica").into()),
            }
        })
    }
}

/// Opens a TCP connection to `host:port` and completes a TLS handshake on it, within
/// [`HANDSHAKE_TIMEOUT`]; the server's certificate must name `host` (a DNS name or an IP).
pub async fn connect_tls(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    // `[::1]` in a URI is `::1` to TLS.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(bare.to_owned()).map_err(|error| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host} is no server name: {error}"))
    })?;
    let connecting = async {
        let tcp = TcpStream::connect((bare, port)).await?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("TLS handshake with {host}:{port} took over {HANDSHAKE_TIMEOUT:?}"),
        )
    })?
}

impl Identity {
    /// The identity the other side of a finished handshake presented (see
    /// [`Credentials::identity_of`]).
    pub fn of_certificate_in(connection: &rustls::CommonState, cluster: &ClusterId) -> Result<Identity, CertError> {
        let certificates = connection.peer_certificates().unwrap_or_default();
        let Some(end_entity) = certificates.first() else {
            return Err(CertError::NoIdentity { uris: Vec::new() });
        };
        Identity::of_certificate(end_entity, cluster)
    }
}

/// A connection with TLS or, on a development cluster started with `insecure_plaintext`,
/// without: one type for what the peer protocol and the listeners read and write.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => stream.get_ref().0,
        }
    }

    /// The TLS connection's state (its certificates, its key exchange); none in plaintext.
    pub fn tls(&self) -> Option<&rustls::CommonState> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(stream) => Some(stream.get_ref().1),
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(context, buffers),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// Splits `host:port` (or `[v6]:port`) for [`connect_tls`].
pub fn split_address(address: &str) -> Result<(&str, u16), std::io::Error> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address} is not host:port"));
    let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
    let port = port.parse().map_err(|_| invalid())?;
    Ok((host, port))
}

/// Presents the ML-DSA chain to a client that offers ML-DSA-65 signatures, the ECDSA fallback
/// chain to one that does not.
#[derive(Debug)]
struct ByClientSchemes {
    ml_dsa: Arc<rustls::sign::CertifiedKey>,
    fallback: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for ByClientSchemes {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if hello.signature_schemes().contains(&rustls::SignatureScheme::ML_DSA_65) {
            Some(Arc::clone(&self.ml_dsa))
        } else {
            Some(Arc::clone(&self.fallback))
        }
    }
}
