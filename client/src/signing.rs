//! Request signing: on a secured cluster every write carries its principal's ML-DSA-65
//! signature (`tally.v1.SignedRequest`). The SDK signs each request once, automatic batches
//! included, and sends the same signed bytes on every retry: a retry that reaches the cluster after
//! the first attempt applied gets the first outcome, never a second application.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally_identity::certs::Identity;
use tally_identity::request::{RequestSigner, sign_request};
use tally_identity::{Algorithm, ClusterId, MlDsaKeyPair, Signer};
use tally_proto::v1 as wire;

use crate::Error;
use crate::model::uint128;
use crate::security::Security;

/// The sealed key file of the principal's signing key (`tallyctl keys generate`).
pub const ENV_SIGNING_KEY: &str = "TALLY_SIGNING_KEY";
/// A file whose first line is the signing key file's passphrase.
pub const ENV_SIGNING_PASSPHRASE_FILE: &str = "TALLY_SIGNING_PASSPHRASE_FILE";
/// The principal, when no TLS certificate names it (a plaintext development cluster).
pub const ENV_PRINCIPAL: &str = "TALLY_PRINCIPAL";
/// The cluster id, when no TLS certificate names it (a plaintext development cluster).
pub const ENV_CLUSTER_ID: &str = "TALLY_CLUSTER_ID";

/// The longest a signed request stays valid for (the cluster refuses longer).
const VALIDITY_MAX: Duration = Duration::from_secs(5 * 60);
/// Added to a call's deadline for the request's: the cluster's clock may run a little ahead.
const VALIDITY_SLACK: Duration = Duration::from_secs(5);

/// A principal's signing key, and whom it signs for.
#[derive(Clone)]
pub struct RequestSigning {
    principal: u64,
    cluster: ClusterId,
    key: Arc<MlDsaKeyPair>,
}

impl std::fmt::Debug for RequestSigning {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "RequestSigning(principal {} with key {})", self.principal, self.key.public_key().key_id())
    }
}

impl RequestSigning {
    /// Signs for `principal` of `cluster` with `key` (ML-DSA-65, registered to the principal).
    pub fn new(principal: u64, cluster: ClusterId, key: MlDsaKeyPair) -> Result<RequestSigning, Error> {
        if key.public_key().algorithm() != Algorithm::MlDsa65 {
            return Err(Error::Usage(format!(
                "principals sign with ML-DSA-65 keys; this key is {}",
                key.public_key().algorithm().name()
            )));
        }
        Ok(RequestSigning { principal, cluster, key: Arc::new(key) })
    }

    /// The key sealed in `key_file` under `passphrase`.
    pub fn from_key_file(
        principal: u64,
        cluster: ClusterId,
        key_file: &Path,
        passphrase: &str,
    ) -> Result<RequestSigning, Error> {
        let text = std::fs::read_to_string(key_file)
            .map_err(|error| Error::Usage(format!("cannot read the signing key {}: {error}", key_file.display())))?;
        let key = tally_identity::key_file::open(&text, passphrase)
            .map_err(|error| Error::Usage(format!("signing key {}: {error}", key_file.display())))?;
        RequestSigning::new(principal, cluster, key)
    }

    /// From the environment: `TALLY_SIGNING_KEY` and `TALLY_SIGNING_PASSPHRASE_FILE` name the
    /// sealed key and its passphrase; the principal and cluster are those of the TLS certificate
    /// in `security`, or `TALLY_PRINCIPAL` and `TALLY_CLUSTER_ID` without TLS. `None` without a
    /// signing key (a development cluster without a genesis takes unsigned writes).
    pub fn from_env(security: &Security) -> Result<Option<RequestSigning>, Error> {
        let variable = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
        let Some(key_file) = variable(ENV_SIGNING_KEY) else { return Ok(None) };
        let passphrase_file = variable(ENV_SIGNING_PASSPHRASE_FILE).ok_or_else(|| {
            Error::Usage(format!(
                "{ENV_SIGNING_KEY} is set: set {ENV_SIGNING_PASSPHRASE_FILE} to its passphrase's file"
            ))
        })?;
        RequestSigning::for_security(security, &key_file, &passphrase_file).map(Some)
    }

    /// The key sealed in `key_file`, its passphrase the first line of `passphrase_file`, signing
    /// for the principal of the TLS certificate in `security` (without TLS: `TALLY_PRINCIPAL`
    /// and `TALLY_CLUSTER_ID`).
    pub fn for_security(security: &Security, key_file: &Path, passphrase_file: &Path) -> Result<RequestSigning, Error> {
        let passphrase = read_passphrase(passphrase_file)?;
        let (principal, cluster) = match security {
            Security::Tls(tls) => match tls.identity() {
                Identity::Principal(principal) => (principal, tls.cluster()),
                Identity::Replica(id) => {
                    return Err(Error::Usage(format!(
                        "the TLS certificate is replica {id}'s; a principal's signs requests"
                    )));
                }
            },
            Security::InsecurePlaintext => {
                let principal =
                    std::env::var(ENV_PRINCIPAL).ok().and_then(|text| text.parse().ok()).ok_or_else(|| {
                        Error::Usage(format!(
                            "without TLS, set {ENV_PRINCIPAL} to the principal the signing key is registered to"
                        ))
                    })?;
                let cluster =
                    std::env::var(ENV_CLUSTER_ID).ok().and_then(|text| ClusterId::from_hex(&text)).ok_or_else(
                        || Error::Usage(format!("without TLS, set {ENV_CLUSTER_ID} to the cluster id (32 hex digits)")),
                    )?;
                (principal, cluster)
            }
        };
        RequestSigning::from_key_file(principal, cluster, key_file, &passphrase)
    }

    /// The principal this key signs for.
    pub fn principal(&self) -> u64 {
        self.principal
    }

    /// Signs one write, valid for `deadline` (the call's) and a little more, at most five minutes.
    pub fn sign(
        &self,
        operation: wire::write_request::Operation,
        deadline: Duration,
    ) -> Result<wire::SignedRequest, Error> {
        use prost::Message;
        let body = wire::WriteRequest { operation: Some(operation) }.encode_to_vec();
        let validity = (deadline + VALIDITY_SLACK).min(VALIDITY_MAX);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let deadline_unix_nanoseconds = u64::try_from((now + validity).as_nanos()).unwrap_or(u64::MAX);
        let signer = RequestSigner {
            cluster: self.cluster,
            principal: self.principal,
            key_id: self.key.public_key().key_id(),
            request_id: crate::new_id(),
            deadline_unix_nanoseconds,
        };
        let signature = sign_request(self.key.as_ref(), &signer, &body)
            .map_err(|error| Error::Usage(format!("cannot sign the request: {error}")))?;
        Ok(wire::SignedRequest {
            principal: signer.principal,
            key_id: signer.key_id.0.to_vec(),
            request_id: uint128(signer.request_id),
            deadline_unix_nanoseconds,
            signature,
            body,
        })
    }
}

/// The first line of a passphrase file.
pub fn read_passphrase(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Error::Usage(format!("cannot read the passphrase file {}: {error}", path.display())))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}
