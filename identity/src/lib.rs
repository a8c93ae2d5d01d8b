//! # Tally's post-quantum identities
//!
//! ML-DSA (FIPS 204) keys and signatures for principals, operators and replicas, on aws-lc-rs
//! (Tally's TLS provider already, and FIPS-validated), behind traits that another backend (an HSM)
//! can implement. `pqcrypto-mldsa` (PQClean) checks this crate in its tests only: PQClean was
//! archived in July 2026, so it is a second, independent implementation to agree with, not one
//! to depend on.
//!
//! # Layout
//! - [`keys`]: algorithms, public keys and key ids.
//! - [`sign`]: the [`sign::Signer`] and [`sign::Verifier`] traits, domain labels, and the aws-lc-rs
//!   implementation.
//! - [`request`]: the signed bytes of a write request, and the deadline rule.
//! - [`key_file`]: private keys at rest, sealed with a passphrase.
//! - [`genesis`]: the cluster id, the operators' keys and their signature threshold.
//! - [`certs`]: the cluster CA (ML-DSA-87) and the replica and principal certificates
//!   (ML-DSA-65) it issues, each naming one identity, and its revocation list.
//! - [`tls`]: TLS 1.3 configurations from those certificates, post-quantum key exchange, and
//!   the connector the gRPC clients dial replicas with.
//!
//! Each module uses only those listed before it.

pub mod certs;
pub mod genesis;
pub mod key_file;
pub mod keys;
pub mod request;
pub mod sign;
pub mod tls;

pub use keys::{Algorithm, KeyError, KeyId, PublicKey};
pub use request::{ClusterId, RequestSigner, sign_request, signed_payload, verify_request};
pub use sign::{AwsLcVerifier, Domain, MlDsaKeyPair, Signer, Verifier};
