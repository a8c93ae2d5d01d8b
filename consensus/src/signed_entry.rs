//! Log entries of a secured cluster: signed requests and approved registry changes, as the
//! leader proposes them and every replica applies them.
//!
//! An entry keeps each request's body exactly as its principal sent and signed it; applying it
//! hashes those bytes, checks the signature against the registry as it stands at that log index,
//! and reads the events from the same bytes. Nothing is decoded and encoded again before it is
//! checked, so a faulty leader can neither alter a request nor slip in one nobody signed: every
//! follower refuses it at apply.
//!
//! This module owns the entries' shape, reading their bodies into the ledger's types, and the
//! [`SignatureCheck`] the ledger is given ([`MlDsaCheck`], on `tally_identity`).

use serde::{Deserialize, Serialize};
use tally_identity::genesis::Genesis;
use tally_identity::request::{RequestSigner as WireSigner, change_payload, signed_payload_of_hash};
use tally_identity::{Algorithm, AwsLcVerifier, ClusterId, Domain, KeyId as IdentityKeyId, PublicKey, Verifier};
use tally_proto::v1 as wire;
use tally_state_machine::registry::{
    KeyAlgorithm, KeyId, Operator, Permissions, RegisteredKey, Registry, RegistryChange, Role,
};
use tally_state_machine::signed::{
    Approval, ChangeSigner, RequestSigner, SignatureCheck, SignedBatch, SignedChange, SignedRequest,
};

use crate::write_request::operation_of;

/// One signed request in a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRequest {
    pub principal: u64,
    pub key_id: [u8; 16],
    pub request_id: u128,
    pub deadline: u64,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The encoded `tally.v1.WriteRequest`, as signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A log entry of signed requests (`LogPayload::Signed`), stamped with cluster time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEntry {
    pub timestamp: u64,
    pub requests: Vec<EntryRequest>,
}

/// A log entry of one registry change (`LogPayload::RegistryChange`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEntry {
    pub timestamp: u64,
    pub change_id: u128,
    pub deadline: u64,
    /// The encoded `tally.v1.RegistryChange`, as approved.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub approvals: Vec<EntryApproval>,
}

/// One operator's approval in a change entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryApproval {
    pub operator: u64,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl EntryRequest {
    /// The request as the ledger checks it: its body hashed and read.
    pub fn to_signed(&self) -> SignedRequest {
        SignedRequest {
            signer: RequestSigner {
                principal: self.principal,
                key_id: KeyId(self.key_id),
                request_id: self.request_id,
                deadline: self.deadline,
            },
            body_hash: *blake3::hash(&self.body).as_bytes(),
            signature: self.signature.clone(),
            operation: operation_of(&self.body).map_err(|error| error.to_string()),
        }
    }
}

impl SignedEntry {
    pub fn to_batch(&self, log_index: u64) -> SignedBatch {
        SignedBatch {
            timestamp: self.timestamp,
            log_index,
            requests: self.requests.iter().map(EntryRequest::to_signed).collect(),
        }
    }
}

impl ChangeEntry {
    pub fn to_change(&self, log_index: u64) -> SignedChange {
        SignedChange {
            timestamp: self.timestamp,
            log_index,
            signer: ChangeSigner { change_id: self.change_id, deadline: self.deadline },
            body_hash: *blake3::hash(&self.body).as_bytes(),
            approvals: self
                .approvals
                .iter()
                .map(|approval| Approval { operator: approval.operator, signature: approval.signature.clone() })
                .collect(),
            change: change_of(&self.body),
        }
    }
}

fn key_algorithm(code: u32) -> Result<KeyAlgorithm, String> {
    u8::try_from(code)
        .ok()
        .and_then(KeyAlgorithm::from_code)
        .ok_or_else(|| format!("key algorithm {code} is not 65 or 87"))
}

fn role_of(role: Option<&wire::PrincipalRole>) -> Result<Role, String> {
    let role = role.ok_or("the change names no role")?;
    let mut permissions = Permissions::empty();
    for number in &role.permissions {
        permissions |= match wire::Permission::try_from(*number) {
            Ok(wire::Permission::CreateLedgers) => Permissions::CREATE_LEDGERS,
            Ok(wire::Permission::CreateAccounts) => Permissions::CREATE_ACCOUNTS,
            Ok(wire::Permission::CreateTransfers) => Permissions::CREATE_TRANSFERS,
            Ok(wire::Permission::Read) => Permissions::READ,
            Ok(wire::Permission::Operate) => Permissions::OPERATE,
            _ => return Err(format!("permission {number} is not one of the role permissions")),
        };
    }
    let debit_account_codes = role
        .debit_account_codes
        .iter()
        .map(|code| u16::try_from(*code).map_err(|_| format!("account code {code} does not fit in 16 bits")))
        .collect::<Result<_, _>>()?;
    Ok(Role { permissions, ledgers: role.ledgers.clone(), debit_account_codes })
}

fn key_of(key: Option<&wire::PublicKey>) -> Result<(KeyAlgorithm, Vec<u8>), String> {
    let key = key.ok_or("the change names no key")?;
    Ok((key_algorithm(key.algorithm)?, key.raw.clone()))
}

fn key_id_of(bytes: &[u8]) -> Result<KeyId, String> {
    Ok(KeyId(bytes.try_into().map_err(|_| format!("a key id is 16 bytes, not {}", bytes.len()))?))
}

/// Reads a registry change from its wire encoding (`tally.v1.RegistryChange`).
pub fn change_of(body: &[u8]) -> Result<RegistryChange, String> {
    use prost::Message;
    use wire::registry_change::Change;
    let change = wire::RegistryChange::decode(body).map_err(|error| format!("not a RegistryChange: {error}"))?;
    Ok(match change.change.ok_or("the change names no operation")? {
        Change::RegisterPrincipal(register) => {
            let (algorithm, public_key) = key_of(register.key.as_ref())?;
            RegistryChange::RegisterPrincipal {
                principal: register.principal,
                role: role_of(register.role.as_ref())?,
                algorithm,
                public_key,
            }
        }
        Change::AddKey(add) => {
            let (algorithm, public_key) = key_of(add.key.as_ref())?;
            RegistryChange::AddKey { principal: add.principal, algorithm, public_key }
        }
        Change::RetireKey(key) => {
            RegistryChange::RetireKey { principal: key.principal, key_id: key_id_of(&key.key_id)? }
        }
        Change::RevokeKey(key) => {
            RegistryChange::RevokeKey { principal: key.principal, key_id: key_id_of(&key.key_id)? }
        }
        Change::SetRole(set) => RegistryChange::SetRole { principal: set.principal, role: role_of(set.role.as_ref())? },
        Change::AddOperator(add) => {
            let (algorithm, public_key) = key_of(add.key.as_ref())?;
            if algorithm != KeyAlgorithm::MlDsa87 {
                return Err(format!("operators approve with ML-DSA-87 keys, not {}", algorithm.name()));
            }
            RegistryChange::AddOperator { operator: add.operator, public_key }
        }
        Change::RemoveOperator(remove) => RegistryChange::RemoveOperator { operator: remove.operator },
        Change::SetApprovalsRequired(set) => RegistryChange::SetApprovalsRequired { required: set.required },
        Change::AddLearner(add) => RegistryChange::AddLearner {
            node_id: add.node_id,
            address: add.address,
            site: add.site,
            membership_index: add.membership_index,
        },
        Change::RemoveLearner(remove) => {
            RegistryChange::RemoveLearner { node_id: remove.node_id, membership_index: remove.membership_index }
        }
        Change::ChangeVoters(change) => RegistryChange::ChangeVoters {
            voters: change.voters,
            retain_as_learners: change.retain_as_learners,
            membership_index: change.membership_index,
        },
    })
}

/// The registry a cluster starts from: its genesis' operators and threshold, no principal.
pub fn genesis_registry(genesis: &Genesis) -> Registry {
    let operators = genesis
        .operators
        .iter()
        .map(|operator| Operator {
            id: operator.id,
            key_id: KeyId(operator.key.key_id().0),
            public_key: operator.key.as_bytes().to_vec(),
        })
        .collect();
    let required = u32::try_from(genesis.operator_signatures_required).expect("a genesis names at most 64 operators");
    Registry::genesis(genesis.cluster.0, operators, required)
}

fn algorithm_of(algorithm: KeyAlgorithm) -> Algorithm {
    match algorithm {
        KeyAlgorithm::MlDsa65 => Algorithm::MlDsa65,
        KeyAlgorithm::MlDsa87 => Algorithm::MlDsa87,
    }
}

/// The ledger's signature checks on aws-lc-rs's ML-DSA (FIPS 204), deterministic as verification is.
///
/// A request's signature is verified once per process: the leader's gateway verifies it before
/// proposing, and the same replica's apply finds it among the signatures it verified
/// ([`VerifiedSignatures`]) instead of verifying it a second time on the lone request's path.
/// Every other replica verifies it itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct MlDsaCheck;

/// How many good request signatures a process remembers (32 bytes each, in order of verification):
/// far more than are between a leader's gateway check and its apply at full load.
pub const VERIFIED_SIGNATURES_MAX: usize = 16_384;

/// The request signatures this process verified and found good, each by the blake3 hash of
/// everything its verification reads (algorithm, public key, signed payload, signature): a hit
/// answers what verifying again would, since verification is a pure function of those bytes.
/// Only good signatures are remembered, so a bad one is verified (and refused) every time.
#[derive(Debug, Default)]
pub struct VerifiedSignatures {
    remembered: std::collections::HashSet<[u8; 32]>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl VerifiedSignatures {
    fn key(algorithm: Algorithm, public_key: &[u8], payload: &[u8], signature: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("tally verified request signature v1");
        hasher.update(&[algorithm.code()]);
        for part in [public_key, payload, signature] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        *hasher.finalize().as_bytes()
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.remembered.contains(key)
    }

    fn insert(&mut self, key: [u8; 32]) {
        if !self.remembered.insert(key) {
            return;
        }
        self.order.push_back(key);
        if self.order.len() > VERIFIED_SIGNATURES_MAX {
            let oldest = self.order.pop_front().expect("more than the limit");
            self.remembered.remove(&oldest);
        }
        debug_assert_eq!(self.order.len(), self.remembered.len());
    }
}

static VERIFIED: std::sync::LazyLock<std::sync::Mutex<VerifiedSignatures>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(VerifiedSignatures::default()));

/// Verifies a request signature, or finds it among those this process verified.
fn request_verified(public_key: &PublicKey, payload: &[u8], signature: &[u8]) -> bool {
    let key = VerifiedSignatures::key(public_key.algorithm(), public_key.as_bytes(), payload, signature);
    if VERIFIED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&key) {
        return true;
    }
    let good = AwsLcVerifier.verify(public_key, Domain::Request, payload, signature).is_ok();
    if good {
        VERIFIED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key);
    }
    good
}

impl SignatureCheck for MlDsaCheck {
    fn key_id(&self, algorithm: KeyAlgorithm, public_key: &[u8]) -> Option<KeyId> {
        let key = PublicKey::new(algorithm_of(algorithm), public_key.to_vec()).ok()?;
        Some(KeyId(key.key_id().0))
    }

    fn request_signed(
        &self,
        cluster: &[u8; 16],
        key: &RegisteredKey,
        signer: &RequestSigner,
        body_hash: &[u8; 32],
        signature: &[u8],
    ) -> bool {
        let Ok(public_key) = PublicKey::new(algorithm_of(key.algorithm), key.public_key.clone()) else { return false };
        let signer = WireSigner {
            cluster: ClusterId(*cluster),
            principal: signer.principal,
            key_id: IdentityKeyId(signer.key_id.0),
            request_id: signer.request_id,
            deadline_unix_nanoseconds: signer.deadline,
        };
        let payload = signed_payload_of_hash(&signer, body_hash);
        request_verified(&public_key, &payload, signature)
    }

    fn change_approved(
        &self,
        cluster: &[u8; 16],
        operator: &Operator,
        signer: &ChangeSigner,
        body_hash: &[u8; 32],
        signature: &[u8],
    ) -> bool {
        let Ok(public_key) = PublicKey::new(Algorithm::MlDsa87, operator.public_key.clone()) else { return false };
        let payload = change_payload(&ClusterId(*cluster), signer.change_id, signer.deadline, body_hash);
        AwsLcVerifier.verify(&public_key, Domain::RegistryChange, &payload, signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_identity::{MlDsaKeyPair, Signer};

    #[test]
    fn a_remembered_signature_answers_only_for_the_same_bytes() {
        let key = MlDsaKeyPair::from_seed(Algorithm::MlDsa65, &[41; 32]).unwrap();
        let payload = b"the signed payload of a request".to_vec();
        let signature = key.sign(Domain::Request, &payload).unwrap();
        assert!(request_verified(key.public_key(), &payload, &signature));
        assert!(request_verified(key.public_key(), &payload, &signature), "verified again, or remembered");
        let mut altered = signature.clone();
        altered[7] ^= 1;
        assert!(!request_verified(key.public_key(), &payload, &altered));
        assert!(!request_verified(key.public_key(), b"another payload", &signature));
        let stranger = MlDsaKeyPair::from_seed(Algorithm::MlDsa65, &[42; 32]).unwrap();
        assert!(!request_verified(stranger.public_key(), &payload, &signature));
    }

    #[test]
    fn the_memory_holds_at_most_its_limit_and_forgets_the_oldest_first() {
        let mut verified = VerifiedSignatures::default();
        let key = |n: usize| VerifiedSignatures::key(Algorithm::MlDsa65, b"key", &n.to_be_bytes(), b"signature");
        for n in 0..VERIFIED_SIGNATURES_MAX + 10 {
            verified.insert(key(n));
        }
        verified.insert(key(VERIFIED_SIGNATURES_MAX + 9));
        assert_eq!(verified.order.len(), VERIFIED_SIGNATURES_MAX);
        assert!(!verified.contains(&key(9)));
        assert!(verified.contains(&key(10)));
        assert!(verified.contains(&key(VERIFIED_SIGNATURES_MAX + 9)));
    }
}
