//! Signed requests and registry changes, as the state machine applies them.
//!
//! A secured cluster's log carries client requests as their principals signed them. Every replica
//! checks each one again when it applies it, against the registry as it stands at that log index:
//! the key is the principal's and active, the signature verifies, the deadline has not passed
//! (in cluster time) nor lies too far ahead, the request id is new (or it is a retry with the same
//! bytes, which gets the first outcome and changes nothing), and the role allows every event.
//! A request that fails any check is refused whole with its [`RequestRefusal`] and changes nothing
//! but the digest. The same holds for registry changes, which need a threshold of operator
//! approvals instead of a principal's signature.
//!
//! The state machine holds no cryptography: signatures are checked through [`SignatureCheck`],
//! which the node implements with ML-DSA (`tally_identity`). Checking is deterministic (signing is
//! randomised and never happens here), so every replica reaches the same verdict.

use crate::batch::Operation;
use crate::codec::{DecodeError, Put, Reader};
use crate::constants::EVENTS_PER_BATCH_MAX;
use crate::registry::{ChangeRefusal, KeyAlgorithm, KeyId, Operator, RegisteredKey, RegistryChange};
use crate::result::ResultCode;

/// The longest a signed request or change may be valid for: how long its id is remembered, and so
/// how long a retry of it stays safe.
pub const REQUEST_VALIDITY_MAX_NANOSECONDS: u64 = 5 * 60 * 1_000_000_000;

/// The longest a registry change may be valid for: operators approve a change one after another,
/// and may take a working day to.
pub const CHANGE_VALIDITY_MAX_NANOSECONDS: u64 = 24 * 60 * 60 * 1_000_000_000;

/// Signed requests in one log entry.
pub const REQUESTS_PER_BATCH_MAX: usize = 1_024;

/// Remembered requests whose deadline has passed that one signed batch forgets, at most. Twice the
/// requests a batch may add, so the window shrinks to its deadlines under any load.
pub const REQUESTS_FORGOTTEN_PER_BATCH_MAX: usize = 2 * REQUESTS_PER_BATCH_MAX;

/// Who signed a request, with which key, and until when it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSigner {
    pub principal: u64,
    pub key_id: KeyId,
    /// Unique per principal while the request is valid.
    pub request_id: u128,
    /// Unix nanoseconds, cluster time.
    pub deadline: u64,
}

/// One client request of a signed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    pub signer: RequestSigner,
    /// blake3 of the request's bytes exactly as signed.
    pub body_hash: [u8; 32],
    pub signature: Vec<u8>,
    /// The request's events, decoded from its bytes; `Err` names why they could not be. Never
    /// `ExpirePendingTransfers`, which no client sends.
    pub operation: Result<Operation, String>,
}

/// One log entry of signed requests, stamped with cluster time by the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedBatch {
    /// Event `i` of the batch (counting the applied requests' events in order) is at `timestamp + i`.
    pub timestamp: u64,
    /// The entry's log index: keys registered later than it do not sign it.
    pub log_index: u64,
    pub requests: Vec<SignedRequest>,
}

/// One operator's approval of a change: a signature over the change's signed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub operator: u64,
    pub signature: Vec<u8>,
}

/// What the operators sign of a change, besides its bytes' hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeSigner {
    pub change_id: u128,
    pub deadline: u64,
}

/// A registry change as its log entry carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    pub timestamp: u64,
    pub log_index: u64,
    pub signer: ChangeSigner,
    pub body_hash: [u8; 32],
    pub approvals: Vec<Approval>,
    pub change: Result<RegistryChange, String>,
}

/// Checks signatures for the state machine. Implementations must be deterministic.
pub trait SignatureCheck {
    /// A public key's id, or `None` when the bytes are no key of `algorithm`.
    fn key_id(&self, algorithm: KeyAlgorithm, public_key: &[u8]) -> Option<KeyId>;
    /// Whether `signature` is `key`'s over the signed bytes of a request of `cluster`.
    fn request_signed(
        &self,
        cluster: &[u8; 16],
        key: &RegisteredKey,
        signer: &RequestSigner,
        body_hash: &[u8; 32],
        signature: &[u8],
    ) -> bool;
    /// Whether `signature` is `operator`'s over the signed bytes of a change of `cluster`.
    fn change_approved(
        &self,
        cluster: &[u8; 16],
        operator: &Operator,
        signer: &ChangeSigner,
        body_hash: &[u8; 32],
        signature: &[u8],
    ) -> bool;
}

/// A request the window remembers until its deadline: a retry with the same bytes gets `results`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    pub principal: u64,
    pub request_id: u128,
    pub deadline: u64,
    pub body_hash: [u8; 32],
    /// The first outcome: one code per event (none for a registry change).
    pub results: Vec<ResultCode>,
}

/// A remembered request's encoding: principal, request id, deadline, body hash, then one byte per
/// result code behind their count.
pub const SEEN_REQUEST_HEADER_BYTES: usize = 8 + 16 + 8 + 32 + 4;

impl SeenRequest {
    /// Where the window's deadline index files it.
    pub fn due(&self) -> (u64, u64, u128) {
        (self.deadline, self.principal, self.request_id)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64(self.principal);
        out.put_u128(self.request_id);
        out.put_u64(self.deadline);
        out.put(self.body_hash);
        out.put_u32(u32::try_from(self.results.len()).expect("a request holds under 2^32 events"));
        out.extend(self.results.iter().map(|code| *code as u8));
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(SEEN_REQUEST_HEADER_BYTES + self.results.len());
        self.encode(&mut bytes);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<SeenRequest, DecodeError> {
        let mut reader = Reader::new(bytes, "seen request");
        let principal = reader.u64()?;
        let request_id = reader.u128()?;
        let deadline = reader.u64()?;
        let body_hash = reader.take()?;
        let count = reader.u32()? as usize;
        if count > EVENTS_PER_BATCH_MAX || count != reader.remaining() {
            return Err(DecodeError::InvalidValue {
                what: "seen request",
                detail: format!("{count} result codes in {} bytes", reader.remaining()),
            });
        }
        let results = (0..count)
            .map(|_| {
                let number = reader.u8()?;
                ResultCode::from_number(number).ok_or_else(|| DecodeError::InvalidValue {
                    what: "seen request",
                    detail: format!("result code {number}"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(SeenRequest { principal, request_id, deadline, body_hash, results })
    }
}

/// What became of one signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Applied now: one code per event.
    Applied(Vec<ResultCode>),
    /// A retry of a request applied earlier (same principal, id and bytes, before its deadline):
    /// the first outcome's codes; nothing changed.
    Repeated(Vec<ResultCode>),
    /// Refused whole: nothing changed.
    Refused(RequestRefusal),
}

impl RequestOutcome {
    pub fn results(&self) -> &[ResultCode] {
        match self {
            RequestOutcome::Applied(results) | RequestOutcome::Repeated(results) => results,
            RequestOutcome::Refused(_) => &[],
        }
    }
}

/// What became of a registry change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeOutcome {
    Applied,
    /// The same change (id and bytes) was applied before: nothing changed.
    Repeated,
    Refused(ChangeRefusal),
}

/// Why a signed request was refused whole. Each has its own number on the wire (`code`), and its
/// message names what failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefusal {
    #[error("the request cannot be read: {detail}")]
    Malformed { detail: String },
    #[error("the request has no events")]
    Empty,
    #[error("the request has {count} events, above the limit of {max}")]
    TooManyEvents { count: usize, max: usize },
    #[error("principal {principal} is not registered")]
    PrincipalUnknown { principal: u64 },
    #[error("principal {principal} holds no key {key_id}")]
    KeyUnknown { principal: u64, key_id: KeyId },
    #[error("principal {principal}'s key {key_id} is retired")]
    KeyRetired { principal: u64, key_id: KeyId },
    #[error("principal {principal}'s key {key_id} is revoked")]
    KeyRevoked { principal: u64, key_id: KeyId },
    #[error("the signature does not verify with principal {principal}'s key {key_id}")]
    SignatureInvalid { principal: u64, key_id: KeyId },
    #[error("the request's deadline passed {late_nanoseconds} ns ago (cluster time)")]
    DeadlineExpired { late_nanoseconds: u64 },
    #[error(
        "the request's deadline is {ahead_nanoseconds} ns ahead, beyond the {REQUEST_VALIDITY_MAX_NANOSECONDS} ns a \
         request may be valid for"
    )]
    DeadlineTooFar { ahead_nanoseconds: u64 },
    #[error("principal {principal} already sent request id {request_id:#x} with other bytes")]
    RequestIdReused { principal: u64, request_id: u128 },
    #[error("principal {principal} may not {operation}")]
    OperationNotPermitted { principal: u64, operation: &'static str },
    #[error("principal {principal} may not use ledger {ledger} (event {index})")]
    LedgerNotPermitted { principal: u64, ledger: u32, index: usize },
    #[error("principal {principal} may not debit account code {code} on ledger {ledger} (event {index})")]
    DebitAccountCodeNotPermitted { principal: u64, code: u16, ledger: u32, index: usize },
}

impl RequestRefusal {
    /// The refusal's number on the wire (`tally.v1.RequestRefusal`).
    pub fn code(&self) -> u8 {
        match self {
            RequestRefusal::Malformed { .. } => 1,
            RequestRefusal::Empty => 2,
            RequestRefusal::TooManyEvents { .. } => 3,
            RequestRefusal::PrincipalUnknown { .. } => 4,
            RequestRefusal::KeyUnknown { .. } => 5,
            RequestRefusal::KeyRetired { .. } => 6,
            RequestRefusal::KeyRevoked { .. } => 7,
            RequestRefusal::SignatureInvalid { .. } => 8,
            RequestRefusal::DeadlineExpired { .. } => 9,
            RequestRefusal::DeadlineTooFar { .. } => 10,
            RequestRefusal::RequestIdReused { .. } => 11,
            RequestRefusal::OperationNotPermitted { .. } => 12,
            RequestRefusal::LedgerNotPermitted { .. } => 13,
            RequestRefusal::DebitAccountCodeNotPermitted { .. } => 14,
        }
    }

    /// Whether the refusal is about who sent the request (gRPC `UNAUTHENTICATED`) rather than what
    /// it may do (`PERMISSION_DENIED`) or how it is formed (`INVALID_ARGUMENT`).
    pub fn kind(&self) -> RefusalKind {
        RequestRefusal::kind_of_code(self.code())
    }

    /// [`RequestRefusal::kind`] from the refusal's number, as a response carries it.
    pub fn kind_of_code(code: u8) -> RefusalKind {
        match code {
            4..=8 => RefusalKind::Unauthenticated,
            12..=14 => RefusalKind::PermissionDenied,
            _ => RefusalKind::Invalid,
        }
    }
}

/// The three families of refusal, as the gateway reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    Invalid,
    Unauthenticated,
    PermissionDenied,
}

/// Why a deadline is not acceptable at cluster time `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineProblem {
    Expired { late_nanoseconds: u64 },
    TooFar { ahead_nanoseconds: u64 },
}

/// Checks a deadline against cluster time `now`: not passed, and at most
/// [`REQUEST_VALIDITY_MAX_NANOSECONDS`] ahead (which bounds how long the window remembers ids).
pub fn check_deadline(deadline: u64, now: u64) -> Result<(), DeadlineProblem> {
    check_deadline_within(deadline, now, REQUEST_VALIDITY_MAX_NANOSECONDS)
}

/// [`check_deadline`] with another longest validity (a registry change's).
pub fn check_deadline_within(deadline: u64, now: u64, validity_max: u64) -> Result<(), DeadlineProblem> {
    if deadline < now {
        return Err(DeadlineProblem::Expired { late_nanoseconds: now - deadline });
    }
    let ahead_nanoseconds = deadline - now;
    if ahead_nanoseconds > validity_max {
        return Err(DeadlineProblem::TooFar { ahead_nanoseconds });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_holds_from_now_to_five_minutes_ahead() {
        let now = 1_000 * REQUEST_VALIDITY_MAX_NANOSECONDS;
        assert_eq!(check_deadline(now, now), Ok(()));
        assert_eq!(check_deadline(now + REQUEST_VALIDITY_MAX_NANOSECONDS, now), Ok(()));
        assert_eq!(check_deadline(now - 1, now), Err(DeadlineProblem::Expired { late_nanoseconds: 1 }));
        assert_eq!(
            check_deadline(now + REQUEST_VALIDITY_MAX_NANOSECONDS + 1, now),
            Err(DeadlineProblem::TooFar { ahead_nanoseconds: REQUEST_VALIDITY_MAX_NANOSECONDS + 1 })
        );
    }

    #[test]
    fn every_refusal_has_its_own_code() {
        let key_id = KeyId([0; 16]);
        let refusals = [
            RequestRefusal::Malformed { detail: String::new() },
            RequestRefusal::Empty,
            RequestRefusal::TooManyEvents { count: 0, max: 0 },
            RequestRefusal::PrincipalUnknown { principal: 1 },
            RequestRefusal::KeyUnknown { principal: 1, key_id },
            RequestRefusal::KeyRetired { principal: 1, key_id },
            RequestRefusal::KeyRevoked { principal: 1, key_id },
            RequestRefusal::SignatureInvalid { principal: 1, key_id },
            RequestRefusal::DeadlineExpired { late_nanoseconds: 1 },
            RequestRefusal::DeadlineTooFar { ahead_nanoseconds: 1 },
            RequestRefusal::RequestIdReused { principal: 1, request_id: 1 },
            RequestRefusal::OperationNotPermitted { principal: 1, operation: "create_transfers" },
            RequestRefusal::LedgerNotPermitted { principal: 1, ledger: 1, index: 0 },
            RequestRefusal::DebitAccountCodeNotPermitted { principal: 9, code: 900, ledger: 978, index: 0 },
        ];
        let mut codes: Vec<u8> = refusals.iter().map(RequestRefusal::code).collect();
        codes.dedup();
        assert_eq!(codes, (1..=14).collect::<Vec<u8>>());
        assert_eq!(refusals[13].to_string(), "principal 9 may not debit account code 900 on ledger 978 (event 0)");
    }
}
