//! Private keys at rest: an ML-DSA key's 32-byte seed, encrypted with a key derived from a
//! passphrase, in a PEM file.
//!
//! The file's contents (PEM label `TALLY ENCRYPTED ML-DSA KEY`):
//!
//! ```text
//! "TKF1"                      4 bytes, magic and version
//! algorithm code              1 byte (65 or 87)
//! PBKDF2 iterations           4 bytes, big-endian
//! salt                       16 bytes
//! nonce                      12 bytes
//! AES-256-GCM(seed) and tag  32 + 16 bytes; the 37 header bytes are its associated data
//! ```
//!
//! The seed is FIPS 204's own private key form: the whole key pair is made again from it. The key
//! is derived with PBKDF2-HMAC-SHA256 at [`PBKDF2_ITERATIONS`] (OWASP's 2023 figure for it), and
//! both primitives are aws-lc-rs's, FIPS-approved, with no other crate. A memory-hard KDF (Argon2)
//! would resist guessing on GPUs better; it is a new format version away if an audit asks for it.
//! The header is authenticated: a file whose algorithm or iteration count was altered does not
//! open. This module owns the file format; it must never keep a passphrase or a seed beyond a call.

use std::num::NonZeroU32;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::pbkdf2;

use crate::keys::{Algorithm, KeyError};
use crate::sign::MlDsaKeyPair;

/// PBKDF2-HMAC-SHA256 iterations for new files.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// The fewest iterations a file may claim: fewer would make its passphrase cheap to guess.
pub const PBKDF2_ITERATIONS_MIN: u32 = 100_000;
/// The most a file may claim: more would make opening it a denial of service.
pub const PBKDF2_ITERATIONS_MAX: u32 = 10_000_000;
/// The shortest passphrase accepted for a new file.
pub const PASSPHRASE_CHARACTERS_MIN: usize = 12;

const MAGIC: &[u8; 4] = b"TKF1";
const PEM_LABEL: &str = "TALLY ENCRYPTED ML-DSA KEY";
const SALT_BYTES: usize = 16;
const NONCE_BYTES: usize = 12;
const SEED_BYTES: usize = 32;
const TAG_BYTES: usize = 16;
const HEADER_BYTES: usize = MAGIC.len() + 1 + 4 + SALT_BYTES + NONCE_BYTES;
const FILE_BYTES: usize = HEADER_BYTES + SEED_BYTES + TAG_BYTES;

/// Why a key file could not be written or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("a passphrase must have at least {PASSPHRASE_CHARACTERS_MIN} characters")]
    PassphraseTooShort,
    #[error("not a Tally key file: {0}")]
    NotAKeyFile(String),
    #[error("the key file claims {0} PBKDF2 iterations, outside {PBKDF2_ITERATIONS_MIN}..={PBKDF2_ITERATIONS_MAX}")]
    Iterations(u32),
    #[error("the passphrase is wrong, or the key file was altered")]
    WrongPassphrase,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no randomness: {0}")]
    Randomness(String),
    #[error("sealing the key failed")]
    Seal,
}

fn random<const N: usize>() -> Result<[u8; N], KeyFileError> {
    let mut bytes = [0; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyFileError::Randomness("aws-lc-rs's generator failed".into()))?;
    Ok(bytes)
}

/// A new key pair of `algorithm`, and its key file sealed with `passphrase` (PEM text).
pub fn generate(algorithm: Algorithm, passphrase: &str) -> Result<(MlDsaKeyPair, String), KeyFileError> {
    let seed: [u8; SEED_BYTES] = random()?;
    let key_pair = MlDsaKeyPair::from_seed(algorithm, &seed)?;
    Ok((key_pair, seal(algorithm, &seed, passphrase, PBKDF2_ITERATIONS)?))
}

/// The key file of the key pair of `algorithm` made from `seed`, sealed with `passphrase` (for a
/// key made elsewhere from its FIPS 204 seed).
pub fn seal_seed(algorithm: Algorithm, seed: &[u8; SEED_BYTES], passphrase: &str) -> Result<String, KeyFileError> {
    seal(algorithm, seed, passphrase, PBKDF2_ITERATIONS)
}

/// Seals a seed (see the module documentation).
fn seal(
    algorithm: Algorithm,
    seed: &[u8; SEED_BYTES],
    passphrase: &str,
    iterations: u32,
) -> Result<String, KeyFileError> {
    if passphrase.chars().count() < PASSPHRASE_CHARACTERS_MIN {
        return Err(KeyFileError::PassphraseTooShort);
    }
    // A fresh salt makes a fresh key for every file, so a random nonce never repeats under one.
    let salt: [u8; SALT_BYTES] = random()?;
    let nonce: [u8; NONCE_BYTES] = random()?;
    let mut header = Vec::with_capacity(FILE_BYTES);
    header.extend_from_slice(MAGIC);
    header.push(algorithm.code());
    header.extend_from_slice(&iterations.to_be_bytes());
    header.extend_from_slice(&salt);
    header.extend_from_slice(&nonce);
    let sealing = file_key(passphrase, &salt, iterations)?;
    let mut sealed = seed.to_vec();
    sealing
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&header), &mut sealed)
        .map_err(|_| KeyFileError::Seal)?;
    let mut contents = header;
    contents.extend_from_slice(&sealed);
    assert_eq!(contents.len(), FILE_BYTES);
    Ok(pem::encode(&pem::Pem::new(PEM_LABEL, contents)))
}

/// The file's AES-256-GCM key: PBKDF2-HMAC-SHA256 of the passphrase and the salt.
fn file_key(passphrase: &str, salt: &[u8], iterations: u32) -> Result<LessSafeKey, KeyFileError> {
    let rounds = NonZeroU32::new(iterations).ok_or(KeyFileError::Iterations(iterations))?;
    let mut key = [0; 32];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, passphrase.as_bytes(), &mut key);
    let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| KeyFileError::WrongPassphrase)?;
    Ok(LessSafeKey::new(unbound))
}

/// Opens a key file with its passphrase: the key pair it holds.
pub fn open(text: &str, passphrase: &str) -> Result<MlDsaKeyPair, KeyFileError> {
    let parsed = pem::parse(text).map_err(|error| KeyFileError::NotAKeyFile(error.to_string()))?;
    if parsed.tag() != PEM_LABEL {
        return Err(KeyFileError::NotAKeyFile(format!("its PEM label is {:?}, not {PEM_LABEL:?}", parsed.tag())));
    }
    let contents = parsed.contents();
    if contents.len() != FILE_BYTES || &contents[..MAGIC.len()] != MAGIC {
        return Err(KeyFileError::NotAKeyFile(format!("{} bytes without the TKF1 header", contents.len())));
    }
    let (header, sealed) = contents.split_at(HEADER_BYTES);
    let algorithm = Algorithm::from_code(header[4]).ok_or(KeyError::UnknownAlgorithm(header[4]))?;
    let iterations = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes"));
    if !(PBKDF2_ITERATIONS_MIN..=PBKDF2_ITERATIONS_MAX).contains(&iterations) {
        return Err(KeyFileError::Iterations(iterations));
    }
    let salt = &header[9..9 + SALT_BYTES];
    let nonce: [u8; NONCE_BYTES] = header[9 + SALT_BYTES..].try_into().expect("12 bytes");
    let key = file_key(passphrase, salt, iterations)?;
    let mut opened = sealed.to_vec();
    let seed = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut opened)
        .map_err(|_| KeyFileError::WrongPassphrase)?;
    let seed: [u8; SEED_BYTES] = seed.try_into().map_err(|_| KeyFileError::WrongPassphrase)?;
    Ok(MlDsaKeyPair::from_seed(algorithm, &seed)?)
}
