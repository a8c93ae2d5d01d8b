//! The signed bytes of a write request (version 1) and of an operator's approval of a registry
//! change. (The rules a deadline must keep are the ledger's: `tally_state_machine::signed`.)
//!
//! A principal signs, with one of its registered keys:
//!
//! ```text
//! "tally.request.v1\0"            17 bytes, the domain label (crate::sign::Domain::Request)
//! cluster id                      16 bytes
//! principal                        8 bytes, big-endian
//! key id                          16 bytes (crate::keys::KeyId)
//! request id                      16 bytes, big-endian
//! deadline                         8 bytes, big-endian: Unix nanoseconds, cluster time
//! blake3(request bytes)           32 bytes
//! ```
//!
//! 113 bytes whatever the request's size: the request's own bytes (its protobuf encoding, exactly
//! as sent) enter only through their hash, so a replica verifies a batch of 8,190 transfers for the
//! price of hashing it. Fixed widths and a fixed order leave no two requests with the same signed
//! bytes. `proto/vectors/request-signature-v1.json` holds test vectors for other languages.
//!
//! This module owns those layouts. It must never look inside the request's
//! bytes, nor decide which keys a principal holds: that is the key registry's.

use crate::keys::{KeyId, PublicKey};
use crate::sign::{Domain, SignError, Signer, Verifier, VerifyError};

/// Bytes after the domain label.
pub const SIGNED_PAYLOAD_BYTES: usize = 16 + 8 + KeyId::BYTES + 16 + 8 + 32;

/// A cluster's id, from its genesis file: a signature made for one cluster is refused by another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub [u8; 16]);

impl ClusterId {
    /// The id from its 32 hex digits (as in the genesis and `certs/cluster-id`).
    pub fn from_hex(text: &str) -> Option<ClusterId> {
        if text.len() != 32 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0; 16];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
        }
        Some(ClusterId(bytes))
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(formatter, "{byte:02x}"))
    }
}

/// Who signed a request, with which key, and until when it is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSigner {
    pub cluster: ClusterId,
    pub principal: u64,
    pub key_id: KeyId,
    /// Unique per principal while the request is valid: a second request with the same id and
    /// the same bytes is a retry, with other bytes a replay.
    pub request_id: u128,
    pub deadline_unix_nanoseconds: u64,
}

/// The payload a request's signature covers (after the domain label).
pub fn signed_payload(signer: &RequestSigner, request_bytes: &[u8]) -> [u8; SIGNED_PAYLOAD_BYTES] {
    signed_payload_of_hash(signer, blake3::hash(request_bytes).as_bytes())
}

/// [`signed_payload`] from the blake3 hash of the request's bytes (which a replica has already).
pub fn signed_payload_of_hash(signer: &RequestSigner, request_hash: &[u8; 32]) -> [u8; SIGNED_PAYLOAD_BYTES] {
    let mut payload = [0; SIGNED_PAYLOAD_BYTES];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        payload[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&signer.cluster.0);
    put(&signer.principal.to_be_bytes());
    put(&signer.key_id.0);
    put(&signer.request_id.to_be_bytes());
    put(&signer.deadline_unix_nanoseconds.to_be_bytes());
    put(request_hash);
    assert_eq!(at, SIGNED_PAYLOAD_BYTES);
    payload
}

/// Bytes of an approval's payload after its domain label: cluster id, change id, deadline, hash.
pub const CHANGE_PAYLOAD_BYTES: usize = 16 + 16 + 8 + 32;

/// The payload an operator's approval of a registry change covers (after the domain label
/// `tally.registry-change.v1\0`): the cluster id, the change id and deadline (big-endian) and the
/// blake3 hash of the change's bytes as sent.
pub fn change_payload(
    cluster: &ClusterId,
    change_id: u128,
    deadline_unix_nanoseconds: u64,
    change_hash: &[u8; 32],
) -> [u8; CHANGE_PAYLOAD_BYTES] {
    let mut payload = [0; CHANGE_PAYLOAD_BYTES];
    payload[..16].copy_from_slice(&cluster.0);
    payload[16..32].copy_from_slice(&change_id.to_be_bytes());
    payload[32..40].copy_from_slice(&deadline_unix_nanoseconds.to_be_bytes());
    payload[40..].copy_from_slice(change_hash);
    payload
}

/// Why a request's signature was not made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestSignError {
    #[error("the request names key {named}, but the signer holds key {held}")]
    WrongKey { named: KeyId, held: KeyId },
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Signs a request's bytes for `signer` (whose key id must be `key`'s).
pub fn sign_request(
    key: &dyn Signer,
    signer: &RequestSigner,
    request_bytes: &[u8],
) -> Result<Vec<u8>, RequestSignError> {
    let held = key.public_key().key_id();
    if held != signer.key_id {
        return Err(RequestSignError::WrongKey { named: signer.key_id, held });
    }
    Ok(key.sign(Domain::Request, &signed_payload(signer, request_bytes))?)
}

/// Why a request's signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestVerifyError {
    #[error("the request names key {named}, not {given}, the key it was checked with")]
    WrongKey { named: KeyId, given: KeyId },
    #[error(transparent)]
    Signature(#[from] VerifyError),
}

/// Checks a request's signature with `key` (the registered key its signer names).
pub fn verify_request(
    verifier: &dyn Verifier,
    key: &PublicKey,
    signer: &RequestSigner,
    request_bytes: &[u8],
    signature: &[u8],
) -> Result<(), RequestVerifyError> {
    let given = key.key_id();
    if given != signer.key_id {
        return Err(RequestVerifyError::WrongKey { named: signer.key_id, given });
    }
    verifier.verify(key, Domain::Request, &signed_payload(signer, request_bytes), signature)?;
    Ok(())
}
