//! The key registry: who may sign what. Replicated state, changed only through the log.
//!
//! A secured cluster (one with a genesis) holds one [`Registry`]: its cluster id, its operators
//! (ML-DSA-87 keys, from the genesis) with the number of them that must approve a change
//! (maker-checker), and its principals. A principal (a channel back-end, an integration, an
//! auditor) has a [`Role`] and up to [`KEYS_PER_PRINCIPAL_MAX`] ML-DSA-65 keys, each with a
//! [`KeyStatus`] and the log index from which it holds. Keys are never deleted: a retired or revoked
//! key stays, so that history signed with it still verifies, and an auditor can tell which entries
//! a key signed while it was active.
//!
//! This module owns the registry's shape, its canonical encoding and the rules of a change; it
//! never verifies a signature itself (the state machine has no cryptography: a
//! [`crate::signed::SignatureCheck`] does that, outside this crate).

use std::collections::BTreeMap;

use crate::codec::{DecodeError, Put, Reader};

/// Principals one registry may hold.
pub const PRINCIPALS_MAX: usize = 4_096;
/// Keys one principal may hold, retired and revoked ones included (rotate, then retire).
pub const KEYS_PER_PRINCIPAL_MAX: usize = 8;
/// Ledgers or account codes one role may name (a role naming none means all).
pub const ROLE_SCOPE_MAX: usize = 64;
/// Operators one registry may hold (as many as a genesis may name).
pub const OPERATORS_MAX: usize = 64;
/// The largest public key: ML-DSA-87's, 2,592 bytes.
pub const PUBLIC_KEY_BYTES_MAX: usize = 2_592;
/// The principal id a registry change is recorded under in the window of seen requests: operators
/// are no principal, and 0 names none.
pub const OPERATORS_PRINCIPAL: u64 = 0;
/// The most voters a membership change may name (a cluster has seven; more is a mistake).
pub const VOTERS_MAX: usize = 64;
/// The longest member address (host:port) and site name a membership change may carry.
pub const MEMBER_ADDRESS_BYTES_MAX: usize = 255;
pub const MEMBER_SITE_BYTES_MAX: usize = 64;

/// A key's id: a keyed hash of its algorithm and public key (`tally_identity::keys::KeyId`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 16]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(formatter, "{byte:02x}"))
    }
}

/// The signature algorithms of the registry; the numbers are those of key ids and the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeyAlgorithm {
    /// Principals' keys.
    MlDsa65 = 65,
    /// Operators' keys.
    MlDsa87 = 87,
}

impl KeyAlgorithm {
    pub fn from_code(code: u8) -> Option<KeyAlgorithm> {
        match code {
            65 => Some(KeyAlgorithm::MlDsa65),
            87 => Some(KeyAlgorithm::MlDsa87),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::MlDsa65 => "ML-DSA-65",
            KeyAlgorithm::MlDsa87 => "ML-DSA-87",
        }
    }
}

/// Whether a key may sign new requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeyStatus {
    /// Signs new requests.
    Active = 1,
    /// Rotated out: signs nothing new; what it signed while active stands.
    Retired = 2,
    /// Compromised or lost: signs nothing new; an audit treats what it signed as suspect.
    Revoked = 3,
}

impl KeyStatus {
    fn from_code(code: u8) -> Option<KeyStatus> {
        match code {
            1 => Some(KeyStatus::Active),
            2 => Some(KeyStatus::Retired),
            3 => Some(KeyStatus::Revoked),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Retired => "retired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// A principal's key as registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredKey {
    pub id: KeyId,
    pub algorithm: KeyAlgorithm,
    pub public_key: Vec<u8>,
    pub status: KeyStatus,
    /// The log index of the change that registered it: it signs requests from there on.
    pub valid_from_index: u64,
    /// The log index of the change that gave it its status (its registration while active).
    pub status_index: u64,
}

bitflags::bitflags! {
    /// What a role may do.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Permissions: u16 {
        const CREATE_LEDGERS = 1 << 0;
        const CREATE_ACCOUNTS = 1 << 1;
        const CREATE_TRANSFERS = 1 << 2;
        /// Lookups, queries and listings (of the role's ledgers).
        const READ = 1 << 3;
        /// Operating the cluster: leadership transfers and snapshots (no ledger operation).
        const OPERATE = 1 << 4;
    }
}

/// A role: which operations, on which ledgers, debiting accounts of which codes. An empty list of
/// ledgers or codes means every one; a role with [`Permissions::READ`] alone is read-only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Role {
    pub permissions: Permissions,
    /// Sorted, without duplicates; empty: all ledgers.
    pub ledgers: Vec<u32>,
    /// Sorted, without duplicates; empty: any account code may be debited.
    pub debit_account_codes: Vec<u16>,
}

impl Role {
    pub fn allows_ledger(&self, ledger: u32) -> bool {
        self.ledgers.is_empty() || self.ledgers.binary_search(&ledger).is_ok()
    }

    pub fn allows_debit_code(&self, code: u16) -> bool {
        self.debit_account_codes.is_empty() || self.debit_account_codes.binary_search(&code).is_ok()
    }

    /// The role with its lists sorted and deduplicated, or why it cannot be held.
    pub fn normalized(mut self) -> Result<Role, ChangeRefusal> {
        self.ledgers.sort_unstable();
        self.ledgers.dedup();
        self.debit_account_codes.sort_unstable();
        self.debit_account_codes.dedup();
        if self.permissions.bits() & !Permissions::all().bits() != 0 {
            return Err(ChangeRefusal::RoleMalformed {
                detail: format!("unknown permission bits {:#x}", self.permissions.bits()),
            });
        }
        if self.ledgers.len() > ROLE_SCOPE_MAX || self.debit_account_codes.len() > ROLE_SCOPE_MAX {
            return Err(ChangeRefusal::RoleMalformed {
                detail: format!("a role names at most {ROLE_SCOPE_MAX} ledgers and {ROLE_SCOPE_MAX} account codes"),
            });
        }
        Ok(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: u64,
    pub role: Role,
    /// In the order they were registered.
    pub keys: Vec<RegisteredKey>,
}

impl Principal {
    pub fn key(&self, id: KeyId) -> Option<&RegisteredKey> {
        self.keys.iter().find(|key| key.id == id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub id: u64,
    pub key_id: KeyId,
    /// ML-DSA-87.
    pub public_key: Vec<u8>,
}

/// The whole registry of a secured cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    pub cluster: [u8; 16],
    /// In id order.
    pub operators: Vec<Operator>,
    pub operator_approvals_required: u32,
    pub principals: BTreeMap<u64, Principal>,
}

/// A change to the registry, as operators approve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryChange {
    /// A new principal with its role and first key.
    RegisterPrincipal {
        principal: u64,
        role: Role,
        algorithm: KeyAlgorithm,
        public_key: Vec<u8>,
    },
    /// Another key for a principal, active at once (the first step of a rotation).
    AddKey {
        principal: u64,
        algorithm: KeyAlgorithm,
        public_key: Vec<u8>,
    },
    /// A key that signs nothing new (the last step of a rotation).
    RetireKey {
        principal: u64,
        key_id: KeyId,
    },
    /// A key that signs nothing new, at once, even the principal's last.
    RevokeKey {
        principal: u64,
        key_id: KeyId,
    },
    SetRole {
        principal: u64,
        role: Role,
    },
    /// Another operator, with its ML-DSA-87 key: it approves changes from the next entry on.
    AddOperator {
        operator: u64,
        public_key: Vec<u8>,
    },
    /// An operator that approves nothing from now on (never the last, nor below the threshold).
    RemoveOperator {
        operator: u64,
    },
    /// How many operators must approve a change, from the next change on.
    SetApprovalsRequired {
        required: u32,
    },
    /// Authorises adding a non-voting member. The ledger only checks and records the approval;
    /// the leader makes the change in Raft's membership once it applied, and only while the
    /// membership entry at `membership_index` is still in force.
    AddLearner {
        node_id: u64,
        address: String,
        site: String,
        membership_index: u64,
    },
    /// Authorises removing a non-voting member (as [`RegistryChange::AddLearner`] is carried out).
    RemoveLearner {
        node_id: u64,
        membership_index: u64,
    },
    /// Authorises replacing the voters (as [`RegistryChange::AddLearner`] is carried out).
    ChangeVoters {
        voters: Vec<u64>,
        retain_as_learners: bool,
        membership_index: u64,
    },
}

impl RegistryChange {
    pub fn name(&self) -> &'static str {
        match self {
            RegistryChange::RegisterPrincipal { .. } => "register_principal",
            RegistryChange::AddKey { .. } => "add_key",
            RegistryChange::RetireKey { .. } => "retire_key",
            RegistryChange::RevokeKey { .. } => "revoke_key",
            RegistryChange::SetRole { .. } => "set_role",
            RegistryChange::AddOperator { .. } => "add_operator",
            RegistryChange::RemoveOperator { .. } => "remove_operator",
            RegistryChange::SetApprovalsRequired { .. } => "set_approvals_required",
            RegistryChange::AddLearner { .. } => "add_learner",
            RegistryChange::RemoveLearner { .. } => "remove_learner",
            RegistryChange::ChangeVoters { .. } => "change_voters",
        }
    }

    /// For a change that authorises a membership change (which the leader then carries out): the
    /// log index of the membership entry it was proposed against.
    pub fn membership_index(&self) -> Option<u64> {
        match self {
            RegistryChange::AddLearner { membership_index, .. }
            | RegistryChange::RemoveLearner { membership_index, .. }
            | RegistryChange::ChangeVoters { membership_index, .. } => Some(*membership_index),
            _ => None,
        }
    }
}

/// Why a registry change was refused; it changed nothing. The numbers are the wire's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefusal {
    #[error("the change cannot be read: {detail}")]
    Malformed { detail: String },
    #[error("the change's deadline passed {late_nanoseconds} ns ago (cluster time)")]
    DeadlineExpired { late_nanoseconds: u64 },
    #[error("the change's deadline is {ahead_nanoseconds} ns ahead, beyond the 24 hours a change may be valid for")]
    DeadlineTooFar { ahead_nanoseconds: u64 },
    #[error("change id {change_id:#x} was already applied")]
    ChangeIdReused { change_id: u128 },
    #[error("approval by {operator}, who is no operator")]
    OperatorUnknown { operator: u64 },
    #[error("operator {operator} approved twice")]
    ApprovalDuplicate { operator: u64 },
    #[error("operator {operator}'s approval does not verify")]
    ApprovalInvalid { operator: u64 },
    #[error("{approved} operator approvals, but a change needs {required}")]
    ApprovalsTooFew { approved: u32, required: u32 },
    #[error("principal {principal} is already registered")]
    PrincipalExists { principal: u64 },
    #[error("principal {principal} is not registered")]
    PrincipalUnknown { principal: u64 },
    #[error("principal id 0 names no principal")]
    PrincipalZero,
    #[error("the registry holds its limit of {PRINCIPALS_MAX} principals")]
    PrincipalsFull,
    #[error("principal {principal} holds its limit of {KEYS_PER_PRINCIPAL_MAX} keys")]
    KeysFull { principal: u64 },
    #[error("key {key_id} is already registered (to principal {principal})")]
    KeyExists { key_id: KeyId, principal: u64 },
    #[error("principal {principal} holds no key {key_id}")]
    KeyUnknown { principal: u64, key_id: KeyId },
    #[error("principal {principal}'s key {key_id} is {status}, not active")]
    KeyNotActive { principal: u64, key_id: KeyId, status: &'static str },
    #[error("key {key_id} is principal {principal}'s last active key: add its successor first, or revoke it")]
    KeyLastActive { principal: u64, key_id: KeyId },
    #[error("principals sign with ML-DSA-65 keys, not {algorithm}")]
    KeyAlgorithm { algorithm: &'static str },
    #[error("the public key is not a valid {algorithm} key")]
    KeyMalformed { algorithm: &'static str },
    #[error("the role cannot be held: {detail}")]
    RoleMalformed { detail: String },
    #[error("operator {operator} is already an operator")]
    OperatorExists { operator: u64 },
    #[error("the registry holds its limit of {OPERATORS_MAX} operators")]
    OperatorsFull,
    #[error("{required} approvals cannot be required of {operators} operators: between 1 and the operator count")]
    ApprovalsRequiredInvalid { required: u32, operators: usize },
    #[error("operator {operator} is no operator")]
    OperatorNotFound { operator: u64 },
    #[error("the membership change cannot be made: {detail}")]
    MembershipMalformed { detail: String },
}

impl ChangeRefusal {
    /// The refusal's number on the wire (1 is unused: a cluster without a registry refuses the
    /// whole entry, `BatchError::Unsecured`).
    pub fn code(&self) -> u8 {
        match self {
            ChangeRefusal::Malformed { .. } => 2,
            ChangeRefusal::DeadlineExpired { .. } => 3,
            ChangeRefusal::DeadlineTooFar { .. } => 4,
            ChangeRefusal::ChangeIdReused { .. } => 5,
            ChangeRefusal::OperatorUnknown { .. } => 6,
            ChangeRefusal::ApprovalDuplicate { .. } => 7,
            ChangeRefusal::ApprovalInvalid { .. } => 8,
            ChangeRefusal::ApprovalsTooFew { .. } => 9,
            ChangeRefusal::PrincipalExists { .. } => 10,
            ChangeRefusal::PrincipalUnknown { .. } => 11,
            ChangeRefusal::PrincipalZero => 12,
            ChangeRefusal::PrincipalsFull => 13,
            ChangeRefusal::KeysFull { .. } => 14,
            ChangeRefusal::KeyExists { .. } => 15,
            ChangeRefusal::KeyUnknown { .. } => 16,
            ChangeRefusal::KeyNotActive { .. } => 17,
            ChangeRefusal::KeyLastActive { .. } => 18,
            ChangeRefusal::KeyAlgorithm { .. } => 19,
            ChangeRefusal::KeyMalformed { .. } => 20,
            ChangeRefusal::RoleMalformed { .. } => 21,
            ChangeRefusal::OperatorExists { .. } => 22,
            ChangeRefusal::OperatorsFull => 23,
            ChangeRefusal::ApprovalsRequiredInvalid { .. } => 24,
            ChangeRefusal::OperatorNotFound { .. } => 25,
            ChangeRefusal::MembershipMalformed { .. } => 26,
        }
    }
}

impl Registry {
    /// A registry with the genesis' operators and no principal.
    pub fn genesis(cluster: [u8; 16], mut operators: Vec<Operator>, operator_approvals_required: u32) -> Registry {
        operators.sort_by_key(|operator| operator.id);
        assert!(!operators.is_empty() && operators.len() <= OPERATORS_MAX, "a genesis names 1 to 64 operators");
        assert!(
            operator_approvals_required >= 1 && operator_approvals_required as usize <= operators.len(),
            "the threshold is between 1 and the operator count"
        );
        Registry { cluster, operators, operator_approvals_required, principals: BTreeMap::new() }
    }

    pub fn operator(&self, id: u64) -> Option<&Operator> {
        self.operators.binary_search_by_key(&id, |operator| operator.id).ok().map(|index| &self.operators[index])
    }

    /// The principal that holds `key_id`, if any does (an operator's key: `OPERATORS_PRINCIPAL`).
    fn key_holder(&self, key_id: KeyId) -> Option<u64> {
        if self.operators.iter().any(|operator| operator.key_id == key_id) {
            return Some(OPERATORS_PRINCIPAL);
        }
        self.principals.values().find(|principal| principal.key(key_id).is_some()).map(|principal| principal.id)
    }

    /// Applies an approved change at log index `index`, or says why it cannot apply (changing
    /// nothing). `key_id_of` computes a public key's id, `None` for bytes that are no such key.
    pub fn apply(
        &mut self,
        change: &RegistryChange,
        index: u64,
        key_id_of: &dyn Fn(KeyAlgorithm, &[u8]) -> Option<KeyId>,
    ) -> Result<(), ChangeRefusal> {
        let new_key = |algorithm: KeyAlgorithm, public_key: &[u8]| -> Result<RegisteredKey, ChangeRefusal> {
            if algorithm != KeyAlgorithm::MlDsa65 {
                return Err(ChangeRefusal::KeyAlgorithm { algorithm: algorithm.name() });
            }
            let malformed = ChangeRefusal::KeyMalformed { algorithm: algorithm.name() };
            if public_key.len() > PUBLIC_KEY_BYTES_MAX {
                return Err(malformed);
            }
            let id = key_id_of(algorithm, public_key).ok_or(malformed)?;
            if let Some(principal) = self.key_holder(id) {
                return Err(ChangeRefusal::KeyExists { key_id: id, principal });
            }
            Ok(RegisteredKey {
                id,
                algorithm,
                public_key: public_key.to_vec(),
                status: KeyStatus::Active,
                valid_from_index: index,
                status_index: index,
            })
        };
        match change {
            RegistryChange::RegisterPrincipal { principal, role, algorithm, public_key } => {
                if *principal == OPERATORS_PRINCIPAL {
                    return Err(ChangeRefusal::PrincipalZero);
                }
                if self.principals.contains_key(principal) {
                    return Err(ChangeRefusal::PrincipalExists { principal: *principal });
                }
                if self.principals.len() >= PRINCIPALS_MAX {
                    return Err(ChangeRefusal::PrincipalsFull);
                }
                let role = role.clone().normalized()?;
                let key = new_key(*algorithm, public_key)?;
                self.principals.insert(*principal, Principal { id: *principal, role, keys: vec![key] });
            }
            RegistryChange::AddKey { principal, algorithm, public_key } => {
                let key = new_key(*algorithm, public_key)?;
                let holder = self.principal_mut(*principal)?;
                if holder.keys.len() >= KEYS_PER_PRINCIPAL_MAX {
                    return Err(ChangeRefusal::KeysFull { principal: *principal });
                }
                holder.keys.push(key);
            }
            RegistryChange::RetireKey { principal, key_id } => {
                let holder = self.principal_mut(*principal)?;
                let active = holder.keys.iter().filter(|key| key.status == KeyStatus::Active).count();
                let key = active_key(holder, *key_id)?;
                if active == 1 {
                    return Err(ChangeRefusal::KeyLastActive { principal: *principal, key_id: *key_id });
                }
                key.status = KeyStatus::Retired;
                key.status_index = index;
            }
            RegistryChange::RevokeKey { principal, key_id } => {
                let holder = self.principal_mut(*principal)?;
                let key = holder
                    .keys
                    .iter_mut()
                    .find(|key| key.id == *key_id)
                    .ok_or(ChangeRefusal::KeyUnknown { principal: *principal, key_id: *key_id })?;
                if key.status == KeyStatus::Revoked {
                    return Err(ChangeRefusal::KeyNotActive {
                        principal: *principal,
                        key_id: *key_id,
                        status: key.status.name(),
                    });
                }
                key.status = KeyStatus::Revoked;
                key.status_index = index;
            }
            RegistryChange::SetRole { principal, role } => {
                let role = role.clone().normalized()?;
                self.principal_mut(*principal)?.role = role;
            }
            RegistryChange::AddOperator { operator, public_key } => {
                if self.operator(*operator).is_some() {
                    return Err(ChangeRefusal::OperatorExists { operator: *operator });
                }
                if self.operators.len() >= OPERATORS_MAX {
                    return Err(ChangeRefusal::OperatorsFull);
                }
                let malformed = ChangeRefusal::KeyMalformed { algorithm: KeyAlgorithm::MlDsa87.name() };
                if public_key.len() > PUBLIC_KEY_BYTES_MAX {
                    return Err(malformed);
                }
                let key_id = key_id_of(KeyAlgorithm::MlDsa87, public_key).ok_or(malformed)?;
                if let Some(holder) = self.key_holder(key_id) {
                    return Err(ChangeRefusal::KeyExists { key_id, principal: holder });
                }
                let at = self.operators.partition_point(|existing| existing.id < *operator);
                self.operators.insert(at, Operator { id: *operator, key_id, public_key: public_key.clone() });
            }
            RegistryChange::RemoveOperator { operator } => {
                let at = self
                    .operators
                    .binary_search_by_key(operator, |existing| existing.id)
                    .map_err(|_| ChangeRefusal::OperatorNotFound { operator: *operator })?;
                let remaining = self.operators.len() - 1;
                if remaining < self.operator_approvals_required as usize {
                    let required = self.operator_approvals_required;
                    return Err(ChangeRefusal::ApprovalsRequiredInvalid { required, operators: remaining });
                }
                self.operators.remove(at);
            }
            RegistryChange::SetApprovalsRequired { required } => {
                if *required == 0 || *required as usize > self.operators.len() {
                    let operators = self.operators.len();
                    return Err(ChangeRefusal::ApprovalsRequiredInvalid { required: *required, operators });
                }
                self.operator_approvals_required = *required;
            }
            // Whether the change fits the membership in force is the leader's to check (the
            // ledger does not hold Raft's membership); the ledger checks what it can alone.
            RegistryChange::AddLearner { node_id, address, site, membership_index: _ } => {
                let malformed = |detail: String| Err(ChangeRefusal::MembershipMalformed { detail });
                if *node_id == 0 {
                    return malformed("node id 0 names no member".into());
                }
                if address.is_empty() || address.len() > MEMBER_ADDRESS_BYTES_MAX {
                    return malformed(format!("an address is 1 to {MEMBER_ADDRESS_BYTES_MAX} bytes"));
                }
                if site.len() > MEMBER_SITE_BYTES_MAX {
                    return malformed(format!("a site name is at most {MEMBER_SITE_BYTES_MAX} bytes"));
                }
            }
            RegistryChange::RemoveLearner { node_id, membership_index: _ } => {
                if *node_id == 0 {
                    return Err(ChangeRefusal::MembershipMalformed { detail: "node id 0 names no member".into() });
                }
            }
            RegistryChange::ChangeVoters { voters, retain_as_learners: _, membership_index: _ } => {
                let malformed = |detail: String| Err(ChangeRefusal::MembershipMalformed { detail });
                if voters.is_empty() || voters.len() > VOTERS_MAX {
                    return malformed(format!("a membership has 1 to {VOTERS_MAX} voters, not {}", voters.len()));
                }
                if voters.contains(&0) {
                    return malformed("node id 0 names no member".into());
                }
                let mut sorted = voters.clone();
                sorted.sort_unstable();
                if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
                    return malformed(format!("node {} is named twice among the voters", pair[0]));
                }
            }
        }
        Ok(())
    }

    fn principal_mut(&mut self, principal: u64) -> Result<&mut Principal, ChangeRefusal> {
        self.principals.get_mut(&principal).ok_or(ChangeRefusal::PrincipalUnknown { principal })
    }
}

fn active_key(principal: &mut Principal, key_id: KeyId) -> Result<&mut RegisteredKey, ChangeRefusal> {
    let id = principal.id;
    let key = principal
        .keys
        .iter_mut()
        .find(|key| key.id == key_id)
        .ok_or(ChangeRefusal::KeyUnknown { principal: id, key_id })?;
    if key.status != KeyStatus::Active {
        return Err(ChangeRefusal::KeyNotActive { principal: id, key_id, status: key.status.name() });
    }
    Ok(key)
}

// The canonical encoding: little-endian fixed-width fields, lists behind a u32 count, byte
// strings behind a u32 length. It is what the store keeps and what the digest and snapshots hash.

const REGISTRY_VERSION: u8 = 1;

fn put_count(out: &mut Vec<u8>, count: usize) {
    out.put_u32(u32::try_from(count).expect("registry lists and byte strings are bounded far below 2^32"));
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_count(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn read_bytes(reader: &mut Reader, max: usize) -> Result<Vec<u8>, DecodeError> {
    let length = reader.u32()? as usize;
    if length > max || length > reader.remaining() {
        return Err(DecodeError::InvalidValue { what: "registry", detail: format!("a byte string of {length} bytes") });
    }
    let mut bytes = vec![0; length];
    for byte in &mut bytes {
        *byte = reader.u8()?;
    }
    Ok(bytes)
}

fn read_count(reader: &mut Reader, max: usize) -> Result<usize, DecodeError> {
    let count = reader.u32()? as usize;
    if count > max {
        return Err(DecodeError::InvalidValue { what: "registry", detail: format!("a list of {count} entries") });
    }
    Ok(count)
}

fn invalid(detail: String) -> DecodeError {
    DecodeError::InvalidValue { what: "registry", detail }
}

pub(crate) fn put_role(out: &mut Vec<u8>, role: &Role) {
    out.put_u16(role.permissions.bits());
    put_count(out, role.ledgers.len());
    role.ledgers.iter().for_each(|ledger| out.put_u32(*ledger));
    put_count(out, role.debit_account_codes.len());
    role.debit_account_codes.iter().for_each(|code| out.put_u16(*code));
}

fn read_role(reader: &mut Reader) -> Result<Role, DecodeError> {
    let permissions = Permissions::from_bits_retain(reader.u16()?);
    let ledgers = (0..read_count(reader, ROLE_SCOPE_MAX)?).map(|_| reader.u32()).collect::<Result<_, _>>()?;
    let debit_account_codes =
        (0..read_count(reader, ROLE_SCOPE_MAX)?).map(|_| reader.u16()).collect::<Result<_, _>>()?;
    Ok(Role { permissions, ledgers, debit_account_codes })
}

fn read_algorithm(reader: &mut Reader) -> Result<KeyAlgorithm, DecodeError> {
    let code = reader.u8()?;
    KeyAlgorithm::from_code(code).ok_or_else(|| invalid(format!("key algorithm {code}")))
}

impl Registry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(REGISTRY_VERSION);
        out.put(self.cluster);
        out.put_u32(self.operator_approvals_required);
        put_count(out, self.operators.len());
        for operator in &self.operators {
            out.put_u64(operator.id);
            out.put(operator.key_id.0);
            put_bytes(out, &operator.public_key);
        }
        put_count(out, self.principals.len());
        for principal in self.principals.values() {
            out.put_u64(principal.id);
            put_role(out, &principal.role);
            put_count(out, principal.keys.len());
            for key in &principal.keys {
                out.put(key.id.0);
                out.put_u8(key.algorithm as u8);
                put_bytes(out, &key.public_key);
                out.put_u8(key.status as u8);
                out.put_u64(key.valid_from_index);
                out.put_u64(key.status_index);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.encode(&mut bytes);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Registry, DecodeError> {
        let mut reader = Reader::new(bytes, "registry");
        let version = reader.u8()?;
        if version != REGISTRY_VERSION {
            return Err(invalid(format!("registry format version {version}")));
        }
        let cluster = reader.take::<16>()?;
        let operator_approvals_required = reader.u32()?;
        let mut operators = Vec::new();
        for _ in 0..read_count(&mut reader, OPERATORS_MAX)? {
            let id = reader.u64()?;
            let key_id = KeyId(reader.take()?);
            let public_key = read_bytes(&mut reader, PUBLIC_KEY_BYTES_MAX)?;
            operators.push(Operator { id, key_id, public_key });
        }
        let mut principals = BTreeMap::new();
        for _ in 0..read_count(&mut reader, PRINCIPALS_MAX)? {
            let id = reader.u64()?;
            let role = read_role(&mut reader)?;
            let mut keys = Vec::new();
            for _ in 0..read_count(&mut reader, KEYS_PER_PRINCIPAL_MAX)? {
                let key_id = KeyId(reader.take()?);
                let algorithm = read_algorithm(&mut reader)?;
                let public_key = read_bytes(&mut reader, PUBLIC_KEY_BYTES_MAX)?;
                let status_code = reader.u8()?;
                let status =
                    KeyStatus::from_code(status_code).ok_or_else(|| invalid(format!("key status {status_code}")))?;
                keys.push(RegisteredKey {
                    id: key_id,
                    algorithm,
                    public_key,
                    status,
                    valid_from_index: reader.u64()?,
                    status_index: reader.u64()?,
                });
            }
            if principals.insert(id, Principal { id, role, keys }).is_some() {
                return Err(invalid(format!("principal {id} twice")));
            }
        }
        if reader.remaining() != 0 {
            return Err(DecodeError::TrailingBytes { count: reader.remaining() });
        }
        let sorted = operators.windows(2).all(|pair| pair[0].id < pair[1].id);
        let threshold = operator_approvals_required >= 1 && operator_approvals_required as usize <= operators.len();
        if !sorted || !threshold {
            return Err(invalid("operators out of order, or a threshold outside 1..=operators".into()));
        }
        Ok(Registry { cluster, operators, operator_approvals_required, principals })
    }
}

impl RegistryChange {
    /// The change's canonical encoding (for the digest).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            RegistryChange::RegisterPrincipal { principal, role, algorithm, public_key } => {
                out.put_u8(1);
                out.put_u64(*principal);
                put_role(out, role);
                out.put_u8(*algorithm as u8);
                put_bytes(out, public_key);
            }
            RegistryChange::AddKey { principal, algorithm, public_key } => {
                out.put_u8(2);
                out.put_u64(*principal);
                out.put_u8(*algorithm as u8);
                put_bytes(out, public_key);
            }
            RegistryChange::RetireKey { principal, key_id } => {
                out.put_u8(3);
                out.put_u64(*principal);
                out.put(key_id.0);
            }
            RegistryChange::RevokeKey { principal, key_id } => {
                out.put_u8(4);
                out.put_u64(*principal);
                out.put(key_id.0);
            }
            RegistryChange::SetRole { principal, role } => {
                out.put_u8(5);
                out.put_u64(*principal);
                put_role(out, role);
            }
            RegistryChange::AddOperator { operator, public_key } => {
                out.put_u8(6);
                out.put_u64(*operator);
                put_bytes(out, public_key);
            }
            RegistryChange::RemoveOperator { operator } => {
                out.put_u8(7);
                out.put_u64(*operator);
            }
            RegistryChange::SetApprovalsRequired { required } => {
                out.put_u8(8);
                out.put_u32(*required);
            }
            RegistryChange::AddLearner { node_id, address, site, membership_index } => {
                out.put_u8(9);
                out.put_u64(*node_id);
                put_bytes(out, address.as_bytes());
                put_bytes(out, site.as_bytes());
                out.put_u64(*membership_index);
            }
            RegistryChange::RemoveLearner { node_id, membership_index } => {
                out.put_u8(11);
                out.put_u64(*node_id);
                out.put_u64(*membership_index);
            }
            RegistryChange::ChangeVoters { voters, retain_as_learners, membership_index } => {
                out.put_u8(10);
                put_count(out, voters.len());
                voters.iter().for_each(|voter| out.put_u64(*voter));
                out.put_u8(u8::from(*retain_as_learners));
                out.put_u64(*membership_index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_id_of(algorithm: KeyAlgorithm, public_key: &[u8]) -> Option<KeyId> {
        if public_key.is_empty() {
            return None;
        }
        let hash = blake3::hash(&[&[algorithm as u8][..], public_key].concat());
        Some(KeyId(hash.as_bytes()[..16].try_into().unwrap()))
    }

    fn registry() -> Registry {
        let operator = Operator { id: 1, key_id: KeyId([1; 16]), public_key: vec![1; 32] };
        Registry::genesis([7; 16], vec![operator], 1)
    }

    fn register(registry: &mut Registry, principal: u64, key: u8) -> Result<(), ChangeRefusal> {
        let change = RegistryChange::RegisterPrincipal {
            principal,
            role: Role { permissions: Permissions::CREATE_TRANSFERS, ledgers: vec![978, 840, 978], ..Role::default() },
            algorithm: KeyAlgorithm::MlDsa65,
            public_key: vec![key; 8],
        };
        registry.apply(&change, 10, &key_id_of)
    }

    #[test]
    fn a_rotation_adds_then_retires_and_a_key_is_never_held_twice() {
        let mut registry = registry();
        register(&mut registry, 9, 1).unwrap();
        assert_eq!(registry.principals[&9].role.ledgers, vec![840, 978], "scopes are kept sorted and unique");
        assert_eq!(register(&mut registry, 9, 2), Err(ChangeRefusal::PrincipalExists { principal: 9 }));
        let first = registry.principals[&9].keys[0].id;
        assert!(matches!(register(&mut registry, 10, 1), Err(ChangeRefusal::KeyExists { principal: 9, .. })));
        let retire = RegistryChange::RetireKey { principal: 9, key_id: first };
        assert_eq!(
            registry.apply(&retire, 11, &key_id_of),
            Err(ChangeRefusal::KeyLastActive { principal: 9, key_id: first })
        );
        let add = RegistryChange::AddKey { principal: 9, algorithm: KeyAlgorithm::MlDsa65, public_key: vec![3; 8] };
        registry.apply(&add, 12, &key_id_of).unwrap();
        registry.apply(&retire, 13, &key_id_of).unwrap();
        let key = &registry.principals[&9].keys[0];
        assert_eq!((key.status, key.valid_from_index, key.status_index), (KeyStatus::Retired, 10, 13));
        assert_eq!(registry.principals[&9].keys[1].valid_from_index, 12);
        assert!(matches!(registry.apply(&retire, 14, &key_id_of), Err(ChangeRefusal::KeyNotActive { .. })));
        let revoke = RegistryChange::RevokeKey { principal: 9, key_id: registry.principals[&9].keys[1].id };
        registry.apply(&revoke, 15, &key_id_of).unwrap();
        assert!(registry.principals[&9].keys.iter().all(|key| key.status != KeyStatus::Active));
    }

    #[test]
    fn a_refused_change_changes_nothing() {
        let mut registry = registry();
        register(&mut registry, 9, 1).unwrap();
        let before = registry.clone();
        let refusals = [
            RegistryChange::AddKey { principal: 9, algorithm: KeyAlgorithm::MlDsa87, public_key: vec![4; 8] },
            RegistryChange::AddKey { principal: 9, algorithm: KeyAlgorithm::MlDsa65, public_key: Vec::new() },
            RegistryChange::AddKey { principal: 8, algorithm: KeyAlgorithm::MlDsa65, public_key: vec![4; 8] },
            RegistryChange::SetRole {
                principal: 9,
                role: Role { permissions: Permissions::from_bits_retain(1 << 9), ..Role::default() },
            },
            RegistryChange::SetRole { principal: 9, role: Role { ledgers: (0..65).collect(), ..Role::default() } },
            RegistryChange::RevokeKey { principal: 9, key_id: KeyId([0; 16]) },
        ];
        for change in refusals {
            assert!(registry.apply(&change, 20, &key_id_of).is_err(), "{change:?}");
            assert_eq!(registry, before, "{change:?}");
        }
        assert_eq!(register(&mut registry, 0, 5), Err(ChangeRefusal::PrincipalZero));
    }

    #[test]
    fn a_membership_change_is_checked_alone_and_changes_no_registry_entry() {
        let mut registry = registry();
        let before = registry.clone();
        let learner = |node_id: u64, address: &str, site: &str| RegistryChange::AddLearner {
            node_id,
            address: address.into(),
            site: site.into(),
            membership_index: 4,
        };
        let voters =
            |voters: Vec<u64>| RegistryChange::ChangeVoters { voters, retain_as_learners: false, membership_index: 4 };
        registry.apply(&learner(8, "10.0.0.8:7000", "b"), 5, &key_id_of).unwrap();
        registry.apply(&voters(vec![3, 1, 2]), 6, &key_id_of).unwrap();
        assert_eq!(registry, before, "the leader carries a membership change out; the registry holds none");
        let refused = [
            (learner(0, "10.0.0.8:7000", "b"), "node id 0"),
            (learner(8, "", "b"), "an address is 1 to 255 bytes"),
            (learner(8, &"a".repeat(256), "b"), "an address is 1 to 255 bytes"),
            (learner(8, "10.0.0.8:7000", &"s".repeat(65)), "a site name is at most 64 bytes"),
            (voters(Vec::new()), "1 to 64 voters, not 0"),
            (voters((1..=65).collect()), "1 to 64 voters, not 65"),
            (voters(vec![1, 0]), "node id 0"),
            (voters(vec![1, 2, 1]), "node 1 is named twice"),
        ];
        for (change, expected) in refused {
            let refusal = registry.apply(&change, 7, &key_id_of).expect_err(expected);
            assert_eq!(refusal.code(), 26);
            assert!(refusal.to_string().contains(expected), "{refusal} for {change:?}");
        }
        let encoded = |change: &RegistryChange| {
            let mut out = Vec::new();
            change.encode(&mut out);
            out
        };
        assert_ne!(encoded(&voters(vec![1, 2])), encoded(&voters(vec![2, 1])), "the digest sees the voters as sent");
    }

    #[test]
    fn operators_are_added_and_removed_within_the_threshold_and_never_share_a_key() {
        let mut registry = registry();
        let add = |operator: u64, key: u8| RegistryChange::AddOperator { operator, public_key: vec![key; 8] };
        registry.apply(&add(2, 2), 5, &key_id_of).unwrap();
        assert_eq!(registry.apply(&add(2, 3), 6, &key_id_of), Err(ChangeRefusal::OperatorExists { operator: 2 }));
        let shared = registry.apply(&add(3, 2), 6, &key_id_of);
        assert!(matches!(shared, Err(ChangeRefusal::KeyExists { principal: OPERATORS_PRINCIPAL, .. })), "{shared:?}");
        let require = |required: u32| RegistryChange::SetApprovalsRequired { required };
        registry.apply(&require(2), 7, &key_id_of).unwrap();
        assert_eq!(registry.operator_approvals_required, 2);
        assert_eq!(
            registry.apply(&require(3), 8, &key_id_of),
            Err(ChangeRefusal::ApprovalsRequiredInvalid { required: 3, operators: 2 })
        );
        let remove = |operator: u64| RegistryChange::RemoveOperator { operator };
        assert_eq!(
            registry.apply(&remove(1), 8, &key_id_of),
            Err(ChangeRefusal::ApprovalsRequiredInvalid { required: 2, operators: 1 }),
            "lower the threshold first"
        );
        registry.apply(&require(1), 9, &key_id_of).unwrap();
        registry.apply(&remove(1), 10, &key_id_of).unwrap();
        assert_eq!(registry.operators.iter().map(|operator| operator.id).collect::<Vec<_>>(), [2]);
        assert_eq!(
            registry.apply(&remove(2), 11, &key_id_of),
            Err(ChangeRefusal::ApprovalsRequiredInvalid { required: 1, operators: 0 }),
            "never the last operator"
        );
        assert_eq!(registry.apply(&remove(7), 11, &key_id_of), Err(ChangeRefusal::OperatorNotFound { operator: 7 }));
        assert_eq!(Registry::decode(&registry.to_bytes()).unwrap(), registry);
    }

    #[test]
    fn the_encoding_round_trips_and_refuses_what_it_cannot_hold() {
        let mut registry = registry();
        register(&mut registry, 9, 1).unwrap();
        register(&mut registry, 3, 2).unwrap();
        let bytes = registry.to_bytes();
        assert_eq!(Registry::decode(&bytes).unwrap(), registry);
        assert!(Registry::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Registry::decode(&longer).is_err());
    }
}
