//! Signing and verifying, behind the [`Signer`] and [`Verifier`] traits, with aws-lc-rs's ML-DSA.
//!
//! Every signature covers a [`Domain`] label before its payload: aws-lc-rs signs "pure" ML-DSA
//! with an empty context, so the label is what keeps a signature made for one purpose (a request)
//! from being accepted for another (a checkpoint, an admin operation). The traits take the domain
//! apart from the payload, so that nothing can be signed without one.
//!
//! Signing is randomised (FIPS 204's hedged mode): the same bytes signed twice give two different
//! signatures, both valid. So signing never happens inside the ledger's apply; verifying is
//! deterministic and may. Another backend (a PKCS#11 HSM) implements the same traits.

use std::fmt;

use aws_lc_rs::encoding::AsRawBytes;
use aws_lc_rs::signature::{
    KeyPair, ML_DSA_65, ML_DSA_65_SIGNING, ML_DSA_87, ML_DSA_87_SIGNING, PqdsaKeyPair, PqdsaSigningAlgorithm,
    PqdsaVerificationAlgorithm, UnparsedPublicKey,
};

use crate::keys::{Algorithm, KeyError, PublicKey};

/// What a signature is for. Its label opens the signed bytes; labels are NUL-terminated, so no
/// label is a prefix of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// A principal's write request ([`crate::request`]).
    Request,
    /// An operator's approval of a change to the key registry ([`crate::request::change_payload`]).
    RegistryChange,
}

impl Domain {
    pub const fn label(self) -> &'static [u8] {
        match self {
            Domain::Request => b"tally.request.v1\0",
            Domain::RegistryChange => b"tally.registry-change.v1\0",
        }
    }
}

/// Why a signature could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("signing with the {algorithm} key {key_id} failed")]
pub struct SignError {
    pub algorithm: Algorithm,
    pub key_id: String,
}

/// Why a signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("a {algorithm} signature is {expected} bytes, not {found}")]
    SignatureLength { algorithm: Algorithm, expected: usize, found: usize },
    #[error("the signature does not verify with the {algorithm} key {key_id}")]
    BadSignature { algorithm: Algorithm, key_id: String },
}

/// Signs with one private key.
pub trait Signer: Send + Sync + fmt::Debug {
    fn public_key(&self) -> &PublicKey;
    /// Signs `domain`'s label followed by `payload`.
    fn sign(&self, domain: Domain, payload: &[u8]) -> Result<Vec<u8>, SignError>;
}

/// Checks signatures against public keys.
pub trait Verifier: Send + Sync + fmt::Debug {
    /// Checks that `signature` signs `domain`'s label followed by `payload` under `key`.
    fn verify(&self, key: &PublicKey, domain: Domain, payload: &[u8], signature: &[u8]) -> Result<(), VerifyError>;
}

/// The bytes a signature covers: the domain's label, then the payload.
pub fn signed_message(domain: Domain, payload: &[u8]) -> Vec<u8> {
    let label = domain.label();
    let mut message = Vec::with_capacity(label.len() + payload.len());
    message.extend_from_slice(label);
    message.extend_from_slice(payload);
    message
}

fn signing_algorithm(algorithm: Algorithm) -> &'static PqdsaSigningAlgorithm {
    match algorithm {
        Algorithm::MlDsa65 => &ML_DSA_65_SIGNING,
        Algorithm::MlDsa87 => &ML_DSA_87_SIGNING,
    }
}

fn verification_algorithm(algorithm: Algorithm) -> &'static PqdsaVerificationAlgorithm {
    match algorithm {
        Algorithm::MlDsa65 => &ML_DSA_65,
        Algorithm::MlDsa87 => &ML_DSA_87,
    }
}

/// An ML-DSA key pair held by aws-lc-rs.
pub struct MlDsaKeyPair {
    key_pair: PqdsaKeyPair,
    public_key: PublicKey,
}

impl fmt::Debug for MlDsaKeyPair {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        write!(formatter, "MlDsaKeyPair({:?})", self.public_key)
    }
}

impl MlDsaKeyPair {
    /// A new key pair from the operating system's randomness.
    pub fn generate(algorithm: Algorithm) -> Result<MlDsaKeyPair, KeyError> {
        let key_pair = PqdsaKeyPair::generate(signing_algorithm(algorithm))
            .map_err(|_| KeyError::PrivateKey { algorithm, detail: "generation failed".to_owned() })?;
        MlDsaKeyPair::wrap(algorithm, key_pair)
    }

    /// The key pair FIPS 204's key generation makes from a 32-byte seed (ξ): the same seed always
    /// gives the same keys, which is what test vectors and key files need.
    pub fn from_seed(algorithm: Algorithm, seed: &[u8; 32]) -> Result<MlDsaKeyPair, KeyError> {
        let key_pair = PqdsaKeyPair::from_seed(signing_algorithm(algorithm), seed)
            .map_err(|error| KeyError::PrivateKey { algorithm, detail: error.to_string() })?;
        MlDsaKeyPair::wrap(algorithm, key_pair)
    }

    /// A key pair from FIPS 204's expanded private key encoding (as PQClean stores it).
    pub fn from_expanded_private_key(algorithm: Algorithm, bytes: &[u8]) -> Result<MlDsaKeyPair, KeyError> {
        let key_pair = PqdsaKeyPair::from_raw_private_key(signing_algorithm(algorithm), bytes)
            .map_err(|error| KeyError::PrivateKey { algorithm, detail: error.to_string() })?;
        MlDsaKeyPair::wrap(algorithm, key_pair)
    }

    /// FIPS 204's expanded encoding of the private key. It is the secret: whoever holds it signs
    /// as this key.
    pub fn expanded_private_key(&self) -> Result<Vec<u8>, KeyError> {
        let algorithm = self.public_key.algorithm();
        let raw = self
            .key_pair
            .private_key()
            .as_raw_bytes()
            .map_err(|_| KeyError::PrivateKey { algorithm, detail: "cannot encode it".to_owned() })?;
        Ok(raw.as_ref().to_vec())
    }

    fn wrap(algorithm: Algorithm, key_pair: PqdsaKeyPair) -> Result<MlDsaKeyPair, KeyError> {
        let public_key = PublicKey::new(algorithm, key_pair.public_key().as_ref().to_vec())?;
        Ok(MlDsaKeyPair { key_pair, public_key })
    }
}

impl Signer for MlDsaKeyPair {
    fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    fn sign(&self, domain: Domain, payload: &[u8]) -> Result<Vec<u8>, SignError> {
        let algorithm = self.public_key.algorithm();
        let mut signature = vec![0; algorithm.signature_bytes()];
        let failed = || SignError { algorithm, key_id: self.public_key.key_id().to_string() };
        let written = self.key_pair.sign(&signed_message(domain, payload), &mut signature).map_err(|_| failed())?;
        if written != signature.len() {
            return Err(failed());
        }
        Ok(signature)
    }
}

/// Verifies with aws-lc-rs.
#[derive(Clone, Copy, Debug, Default)]
pub struct AwsLcVerifier;

impl Verifier for AwsLcVerifier {
    fn verify(&self, key: &PublicKey, domain: Domain, payload: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
        let algorithm = key.algorithm();
        let expected = algorithm.signature_bytes();
        if signature.len() != expected {
            return Err(VerifyError::SignatureLength { algorithm, expected, found: signature.len() });
        }
        UnparsedPublicKey::new(verification_algorithm(algorithm), key.as_bytes())
            .verify(&signed_message(domain, payload), signature)
            .map_err(|_| VerifyError::BadSignature { algorithm, key_id: key.key_id().to_string() })
    }
}
