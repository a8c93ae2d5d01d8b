//! How the SDK connects: TLS 1.3 with a principal's certificate, or, against a development
//! cluster started with `insecure_plaintext`, without.

use std::path::PathBuf;
use std::sync::Arc;

use tally_identity::ClusterId;
use tally_identity::certs::Identity;
use tally_identity::tls::{Credentials, Current, GrpcConnector, TlsFiles};

use crate::Error;

/// Environment variables [`Security::from_env`] reads.
pub const ENV_CA: &str = "TALLY_CA";
/// The principal's certificate.
pub const ENV_CERTIFICATE: &str = "TALLY_CERT";
/// The principal's private key.
pub const ENV_KEY: &str = "TALLY_KEY";
/// `1` to connect without TLS (a development cluster only).
pub const ENV_INSECURE_PLAINTEXT: &str = "TALLY_INSECURE_PLAINTEXT";

/// How a [`crate::Client`] connects.
#[derive(Clone, Debug)]
pub enum Security {
    /// TLS 1.3, hybrid post-quantum key exchange, this principal's certificate.
    Tls(Box<ClientTls>),
    /// No TLS: only a development cluster started with `insecure_plaintext` accepts it.
    InsecurePlaintext,
}

impl Security {
    /// TLS with the certificate and key of `principal` in a `tallyctl certs` folder.
    pub fn principal_in(dir: impl Into<PathBuf>, principal: u64) -> Result<Security, Error> {
        let files = TlsFiles::in_directory(&dir.into(), Identity::Principal(principal));
        Ok(Security::Tls(Box::new(ClientTls::load(files)?)))
    }

    /// From the environment: `TALLY_CA`, `TALLY_CERT` and `TALLY_KEY` name the files, or
    /// `TALLY_INSECURE_PLAINTEXT=1` connects without TLS.
    pub fn from_env() -> Result<Security, Error> {
        let variable = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
        if std::env::var(ENV_INSECURE_PLAINTEXT).is_ok_and(|value| value == "1") {
            return Ok(Security::InsecurePlaintext);
        }
        match (variable(ENV_CA), variable(ENV_CERTIFICATE), variable(ENV_KEY)) {
            (Some(ca), Some(certificate), Some(key)) => {
                let files = TlsFiles { ca, certificate, key, revocation_list: None, fallback: None };
                Ok(Security::Tls(Box::new(ClientTls::load(files)?)))
            }
            _ => Err(Error::Usage(format!(
                "no TLS identity: set {ENV_CA}, {ENV_CERTIFICATE} and {ENV_KEY} to the CA's certificate and a \
                 principal's certificate and key (tallyctl certs issue principal), or {ENV_INSECURE_PLAINTEXT}=1 \
                 for a development cluster without TLS"
            ))),
        }
    }
}

impl Security {
    /// A tonic channel to one replica at `address` (`host:port`), for calling the generated gRPC
    /// clients directly rather than through a [`crate::Client`].
    pub fn channel(&self, address: &str) -> Result<tonic::transport::Channel, Error> {
        crate::transport::channel(address, self)
    }
}

/// A principal's TLS material, loaded and checked.
#[derive(Clone)]
pub struct ClientTls {
    files: TlsFiles,
    identity: Identity,
    cluster: ClusterId,
    config: Arc<Current<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ClientTls({} of cluster {})", self.identity, self.cluster)
    }
}

impl ClientTls {
    /// Loads `files`; the cluster is the one the certificate names, and replicas of any other
    /// are refused.
    pub fn load(files: TlsFiles) -> Result<ClientTls, Error> {
        let credentials = Credentials::load(&files, None).map_err(|error| Error::Usage(error.to_string()))?;
        let config = credentials.grpc_client_config().map_err(|error| Error::Usage(error.to_string()))?;
        Ok(ClientTls {
            files,
            identity: credentials.identity(),
            cluster: credentials.cluster(),
            config: Arc::new(Current::new(config)),
        })
    }

    /// Loads the files again (a rotated certificate); connections opened from now on use it.
    /// On failure the old certificate stays in use.
    pub fn reload(&self) -> Result<(), Error> {
        let credentials =
            Credentials::load(&self.files, Some(&self.cluster)).map_err(|error| Error::Usage(error.to_string()))?;
        if credentials.identity() != self.identity {
            return Err(Error::Usage(format!(
                "{} is {}'s certificate, not {}'s",
                self.files.certificate.display(),
                credentials.identity(),
                self.identity
            )));
        }
        self.config.set(credentials.grpc_client_config().map_err(|error| Error::Usage(error.to_string()))?);
        Ok(())
    }

    /// The identity this client presents.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The cluster its certificate is of.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    pub(crate) fn connector(&self) -> GrpcConnector {
        GrpcConnector::new(Arc::clone(&self.config), self.cluster)
    }
}
