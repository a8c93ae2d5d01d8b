//! ML-DSA algorithms, public keys and key ids.
//!
//! Owns what a key is on the wire and in the registry: its algorithm, its raw public key bytes,
//! checked for length, and the key id every signature names. It holds no private key and never
//! signs: that is [`crate::sign`]'s.

use std::fmt;

/// The ML-DSA parameter sets Tally uses (FIPS 204): ML-DSA-65 for principals' request keys and
/// replica certificates, ML-DSA-87 ("Dilithium-5") for operators and the cluster CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    MlDsa65,
    MlDsa87,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::MlDsa65, Algorithm::MlDsa87];

    /// The number that names the algorithm in key ids and on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Algorithm::MlDsa65 => 65,
            Algorithm::MlDsa87 => 87,
        }
    }

    pub fn from_code(code: u8) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|algorithm| algorithm.code() == code)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::MlDsa65 => "ML-DSA-65",
            Algorithm::MlDsa87 => "ML-DSA-87",
        }
    }

    /// Bytes of a raw public key (FIPS 204, table 2).
    pub const fn public_key_bytes(self) -> usize {
        match self {
            Algorithm::MlDsa65 => 1952,
            Algorithm::MlDsa87 => 2592,
        }
    }

    /// Bytes of a signature (FIPS 204, table 2).
    pub const fn signature_bytes(self) -> usize {
        match self {
            Algorithm::MlDsa65 => 3309,
            Algorithm::MlDsa87 => 4627,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Why bytes are not a key of the algorithm they were given as.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a {algorithm} public key is {expected} bytes, not {found}")]
    PublicKeyLength { algorithm: Algorithm, expected: usize, found: usize },
    #[error("{0} is not an ML-DSA algorithm code (65 or 87)")]
    UnknownAlgorithm(u8),
    #[error("not a Tally public key file: {0}")]
    NotAPublicKey(String),
    #[error("the {algorithm} private key was refused: {detail}")]
    PrivateKey { algorithm: Algorithm, detail: String },
}

/// A raw ML-DSA public key of a known algorithm, its length checked.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

impl PublicKey {
    pub fn new(algorithm: Algorithm, bytes: Vec<u8>) -> Result<PublicKey, KeyError> {
        let expected = algorithm.public_key_bytes();
        if bytes.len() != expected {
            return Err(KeyError::PublicKeyLength { algorithm, expected, found: bytes.len() });
        }
        Ok(PublicKey { algorithm, bytes })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The id that names this key in signatures and in the key registry.
    pub fn key_id(&self) -> KeyId {
        let mut hasher = blake3::Hasher::new_derive_key(KEY_ID_CONTEXT);
        hasher.update(&[self.algorithm.code()]);
        hasher.update(&self.bytes);
        let mut id = [0; KeyId::BYTES];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..KeyId::BYTES]);
        KeyId(id)
    }
}

/// The PEM label of a public key file: its contents are the algorithm code, then the raw key.
const PUBLIC_KEY_PEM_LABEL: &str = "TALLY ML-DSA PUBLIC KEY";

impl PublicKey {
    /// The key as a PEM file (label `TALLY ML-DSA PUBLIC KEY`: the algorithm code, then the raw
    /// key), as operators hand it over to register it.
    pub fn to_pem(&self) -> String {
        let mut contents = Vec::with_capacity(1 + self.bytes.len());
        contents.push(self.algorithm.code());
        contents.extend_from_slice(&self.bytes);
        pem::encode(&pem::Pem::new(PUBLIC_KEY_PEM_LABEL, contents))
    }

    /// A key from its PEM file ([`PublicKey::to_pem`]).
    pub fn from_pem(text: &str) -> Result<PublicKey, KeyError> {
        let parsed = pem::parse(text).map_err(|error| KeyError::NotAPublicKey(error.to_string()))?;
        if parsed.tag() != PUBLIC_KEY_PEM_LABEL {
            return Err(KeyError::NotAPublicKey(format!("its PEM label is {:?}", parsed.tag())));
        }
        let (code, bytes) =
            parsed.contents().split_first().ok_or_else(|| KeyError::NotAPublicKey("it is empty".to_owned()))?;
        let algorithm = Algorithm::from_code(*code).ok_or(KeyError::UnknownAlgorithm(*code))?;
        PublicKey::new(algorithm, bytes.to_vec())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "PublicKey({}, {})", self.algorithm, self.key_id())
    }
}

/// blake3's key-derivation context for key ids: no other hash in Tally can collide with one.
const KEY_ID_CONTEXT: &str = "tally 2026-12 key id v1";

/// The first 16 bytes of a keyed blake3 of a public key's algorithm code and bytes. 128 bits: a
/// registry would need about 2^64 keys before two ids met by chance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KeyId::BYTES]);

impl KeyId {
    pub const BYTES: usize = 16;
}

impl fmt::Display for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(formatter, "{byte:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "KeyId({self})")
    }
}
