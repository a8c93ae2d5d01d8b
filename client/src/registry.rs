//! The key registry from the SDK: proposing a change (to the registry, the operators or, on a
//! secured cluster, the membership), approving it as an operator, sending it, and reading the
//! registry.
//!
//! A change is maker-checker: one operator proposes it ([`ProposedChange`]), as many as the genesis
//! requires approve it (each signs the change's bytes with their ML-DSA-87 key, in turn, offline:
//! the proposal travels as a JSON file), and anyone sends it ([`crate::Client::change_registry`]).
//! Every replica checks the approvals again when it applies the change.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tally_identity::request::change_payload;
use tally_identity::{Algorithm, ClusterId, Domain, KeyId, MlDsaKeyPair, PublicKey, Signer};
use tally_proto::v1 as wire;
pub use tally_proto::v1::Permission;

use crate::Error;

/// The longest a proposed change may wait for its approvals (the cluster refuses longer).
pub const CHANGE_VALIDITY_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// What a principal may do: operations, the ledgers it may use (none: all), and the account codes
/// it may debit (none: any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrincipalRole {
    /// The operations it may call.
    pub permissions: Vec<Permission>,
    /// The ledgers it may use; none listed: all.
    pub ledgers: Vec<u32>,
    /// The codes of the accounts it may debit; none listed: any.
    pub debit_account_codes: Vec<u16>,
}

impl PrincipalRole {
    /// Every permission (operating the cluster too), on every ledger.
    pub fn everything() -> PrincipalRole {
        PrincipalRole {
            permissions: vec![
                Permission::CreateLedgers,
                Permission::CreateAccounts,
                Permission::CreateTransfers,
                Permission::Read,
                Permission::Operate,
            ],
            ..PrincipalRole::default()
        }
    }

    fn to_wire(&self) -> wire::PrincipalRole {
        wire::PrincipalRole {
            permissions: self.permissions.iter().map(|permission| *permission as i32).collect(),
            ledgers: self.ledgers.clone(),
            debit_account_codes: self.debit_account_codes.iter().map(|code| u32::from(*code)).collect(),
        }
    }
}

/// A permission's name as operators write it (`create_transfers`).
pub fn permission_name(permission: Permission) -> String {
    permission.as_str_name().trim_start_matches("PERMISSION_").to_lowercase()
}

/// A change to the key registry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "each field is named for what it is")]
pub enum RegistryChange {
    /// A new principal, its role and its first ML-DSA-65 key.
    RegisterPrincipal { principal: u64, role: PrincipalRole, key: PublicKey },
    /// Another key for a principal, active at once (the first step of a rotation).
    AddKey { principal: u64, key: PublicKey },
    /// A key that signs nothing new (the last step of a rotation); not the principal's last.
    RetireKey { principal: u64, key_id: KeyId },
    /// A key that signs nothing new, at once.
    RevokeKey { principal: u64, key_id: KeyId },
    /// A principal's new role.
    SetRole { principal: u64, role: PrincipalRole },
    /// Another operator, with its ML-DSA-87 key.
    AddOperator { operator: u64, key: PublicKey },
    /// An operator that approves nothing from now on.
    RemoveOperator { operator: u64 },
    /// How many operators must approve a change.
    SetApprovalsRequired { required: u32 },
    /// A non-voting member, added once every replica applied the approval, and only while the
    /// membership entry at `membership_index` ([`crate::ClusterStatus::membership_index`]) is in
    /// force.
    AddLearner { node_id: u64, address: String, site: String, membership_index: u64 },
    /// A non-voting member out of the cluster (as [`RegistryChange::AddLearner`] is made).
    RemoveLearner { node_id: u64, membership_index: u64 },
    /// The complete set of voters after the change (as [`RegistryChange::AddLearner`] is made).
    ChangeVoters { voters: Vec<u64>, retain_as_learners: bool, membership_index: u64 },
}

fn public_key(key: &PublicKey) -> Option<wire::PublicKey> {
    Some(wire::PublicKey { algorithm: u32::from(key.algorithm().code()), raw: key.as_bytes().to_vec() })
}

impl RegistryChange {
    fn encode(&self) -> Vec<u8> {
        use wire::registry_change::Change;
        let reference = |principal: u64, key_id: &KeyId| wire::KeyReference { principal, key_id: key_id.0.to_vec() };
        let change = match self {
            RegistryChange::RegisterPrincipal { principal, role, key } => {
                Change::RegisterPrincipal(wire::RegisterPrincipal {
                    principal: *principal,
                    role: Some(role.to_wire()),
                    key: public_key(key),
                })
            }
            RegistryChange::AddKey { principal, key } => {
                Change::AddKey(wire::AddKey { principal: *principal, key: public_key(key) })
            }
            RegistryChange::RetireKey { principal, key_id } => Change::RetireKey(reference(*principal, key_id)),
            RegistryChange::RevokeKey { principal, key_id } => Change::RevokeKey(reference(*principal, key_id)),
            RegistryChange::SetRole { principal, role } => {
                Change::SetRole(wire::SetRole { principal: *principal, role: Some(role.to_wire()) })
            }
            RegistryChange::AddOperator { operator, key } => {
                Change::AddOperator(wire::AddOperator { operator: *operator, key: public_key(key) })
            }
            RegistryChange::RemoveOperator { operator } => {
                Change::RemoveOperator(wire::RemoveOperator { operator: *operator })
            }
            RegistryChange::SetApprovalsRequired { required } => {
                Change::SetApprovalsRequired(wire::SetApprovalsRequired { required: *required })
            }
            RegistryChange::AddLearner { node_id, address, site, membership_index } => {
                Change::AddLearner(wire::AddLearner {
                    node_id: *node_id,
                    address: address.clone(),
                    site: site.clone(),
                    membership_index: *membership_index,
                })
            }
            RegistryChange::RemoveLearner { node_id, membership_index } => {
                Change::RemoveLearner(wire::RemoveLearner { node_id: *node_id, membership_index: *membership_index })
            }
            RegistryChange::ChangeVoters { voters, retain_as_learners, membership_index } => {
                Change::ChangeVoters(wire::ChangeVoters {
                    voters: voters.clone(),
                    retain_as_learners: *retain_as_learners,
                    membership_index: *membership_index,
                })
            }
        };
        wire::RegistryChange { change: Some(change) }.encode_to_vec()
    }

    /// One line for operators: what they approve.
    pub fn summary(&self) -> String {
        let role = |role: &PrincipalRole| {
            let permissions: Vec<String> = role.permissions.iter().copied().map(permission_name).collect();
            format!(
                "permissions [{}], ledgers {:?} (none: all), debit account codes {:?} (none: any)",
                permissions.join(", "),
                role.ledgers,
                role.debit_account_codes
            )
        };
        match self {
            RegistryChange::RegisterPrincipal { principal, role: given, key } => {
                format!("register principal {principal} with key {} and role: {}", key.key_id(), role(given))
            }
            RegistryChange::AddKey { principal, key } => format!("add key {} to principal {principal}", key.key_id()),
            RegistryChange::RetireKey { principal, key_id } => format!("retire principal {principal}'s key {key_id}"),
            RegistryChange::RevokeKey { principal, key_id } => format!("revoke principal {principal}'s key {key_id}"),
            RegistryChange::SetRole { principal, role: given } => {
                format!("set principal {principal}'s role: {}", role(given))
            }
            RegistryChange::AddOperator { operator, key } => {
                format!("add operator {operator} with key {}", key.key_id())
            }
            RegistryChange::RemoveOperator { operator } => format!("remove operator {operator}"),
            RegistryChange::SetApprovalsRequired { required } => {
                format!("require {required} operators' approvals for every change")
            }
            RegistryChange::AddLearner { node_id, address, site, membership_index } => format!(
                "add node {node_id} at {address} (site {site}) as a learner, to the membership of log index \
                 {membership_index}"
            ),
            RegistryChange::RemoveLearner { node_id, membership_index } => {
                format!("remove the learner node {node_id}, from the membership of log index {membership_index}")
            }
            RegistryChange::ChangeVoters { voters, retain_as_learners, membership_index } => {
                let removed = if *retain_as_learners { "kept as learners" } else { "removed from the cluster" };
                format!(
                    "make the voters {voters:?} (others {removed}), in the membership of log index {membership_index}"
                )
            }
        }
    }
}

/// A change proposed for approval: its bytes exactly as approved and as they will be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposedChange {
    /// The cluster it is for.
    pub cluster: ClusterId,
    /// Unique among changes while they are valid.
    pub change_id: u128,
    /// Cluster time by which it must be applied.
    pub deadline_unix_nanoseconds: u64,
    /// The encoded `tally.v1.RegistryChange`.
    pub change: Vec<u8>,
    /// What the change does, for the operators who approve it.
    pub summary: String,
    /// `(operator, ML-DSA-87 signature)`, in the order given.
    pub approvals: Vec<(u64, Vec<u8>)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(field: &str, text: &str) -> Result<Vec<u8>, Error> {
    let bad = || Error::Usage(format!("{field}: not hex digits"));
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

impl ProposedChange {
    /// Proposes `change` in `cluster`, to be approved and applied within `validity`.
    pub fn new(cluster: ClusterId, change: &RegistryChange, validity: Duration) -> Result<ProposedChange, Error> {
        if validity > CHANGE_VALIDITY_MAX {
            return Err(Error::Usage(format!(
                "a change may wait at most {} hours for its approvals",
                CHANGE_VALIDITY_MAX.as_secs() / 3600
            )));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(ProposedChange {
            cluster,
            change_id: crate::new_id(),
            deadline_unix_nanoseconds: u64::try_from((now + validity).as_nanos()).unwrap_or(u64::MAX),
            change: change.encode(),
            summary: change.summary(),
            approvals: Vec::new(),
        })
    }

    /// Adds `operator`'s approval, signed with its ML-DSA-87 key.
    pub fn approve(&mut self, operator: u64, key: &MlDsaKeyPair) -> Result<(), Error> {
        if key.public_key().algorithm() != Algorithm::MlDsa87 {
            return Err(Error::Usage("operators approve with their ML-DSA-87 key".into()));
        }
        if self.approvals.iter().any(|(approved, _)| *approved == operator) {
            return Err(Error::Usage(format!("operator {operator} has approved this change already")));
        }
        let hash = blake3::hash(&self.change);
        let payload = change_payload(&self.cluster, self.change_id, self.deadline_unix_nanoseconds, hash.as_bytes());
        let signature = key
            .sign(Domain::RegistryChange, &payload)
            .map_err(|error| Error::Usage(format!("cannot sign the approval: {error}")))?;
        self.approvals.push((operator, signature));
        Ok(())
    }

    pub(crate) fn to_wire(&self) -> wire::RegistryChangeRequest {
        wire::RegistryChangeRequest {
            change_id: crate::model::uint128(self.change_id),
            deadline_unix_nanoseconds: self.deadline_unix_nanoseconds,
            change: self.change.clone(),
            approvals: self
                .approvals
                .iter()
                .map(|(operator, signature)| wire::Approval { operator: *operator, signature: signature.clone() })
                .collect(),
        }
    }

    /// The proposal as the JSON file operators pass on.
    pub fn to_json(&self) -> String {
        let approvals: Vec<serde_json::Value> = self
            .approvals
            .iter()
            .map(|(operator, signature)| serde_json::json!({ "operator": operator, "signature": hex(signature) }))
            .collect();
        let value = serde_json::json!({
            "summary": self.summary,
            "cluster_id": self.cluster.to_string(),
            "change_id": format!("{:032x}", self.change_id),
            "deadline_unix_nanoseconds": self.deadline_unix_nanoseconds,
            "change": hex(&self.change),
            "approvals": approvals,
        });
        serde_json::to_string_pretty(&value).expect("a JSON value always prints")
    }

    /// Reads a proposal's JSON file.
    pub fn from_json(text: &str) -> Result<ProposedChange, Error> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| Error::Usage(format!("not a proposed change: {error}")))?;
        let text_of = |field: &str| {
            value[field]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Usage(format!("{field}: missing or not a string")))
        };
        let cluster = ClusterId::from_hex(&text_of("cluster_id")?)
            .ok_or_else(|| Error::Usage("cluster_id: not 32 hex digits".into()))?;
        let change_id =
            u128::from_str_radix(&text_of("change_id")?, 16).map_err(|_| Error::Usage("change_id: not hex".into()))?;
        let deadline_unix_nanoseconds = value["deadline_unix_nanoseconds"]
            .as_u64()
            .ok_or_else(|| Error::Usage("deadline_unix_nanoseconds: missing or not a number".into()))?;
        let mut approvals = Vec::new();
        for approval in value["approvals"].as_array().cloned().unwrap_or_default() {
            let operator = approval["operator"]
                .as_u64()
                .ok_or_else(|| Error::Usage("approvals[].operator: not a number".into()))?;
            let signature = from_hex("approvals[].signature", approval["signature"].as_str().unwrap_or_default())?;
            approvals.push((operator, signature));
        }
        Ok(ProposedChange {
            cluster,
            change_id,
            deadline_unix_nanoseconds,
            change: from_hex("change", &text_of("change")?)?,
            summary: text_of("summary").unwrap_or_default(),
            approvals,
        })
    }
}

/// What became of a change sent to the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeApplied {
    /// The log index it applied at: keys it added sign requests from the next one on.
    pub applied_index: u64,
    /// It had been applied before; nothing changed now.
    pub repeated: bool,
    /// For a membership change: the membership it made (or, sent again, the one in force).
    pub membership: Option<crate::Membership>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposal_survives_its_json_file_with_its_approvals() {
        let operator = MlDsaKeyPair::from_seed(Algorithm::MlDsa87, &[3; 32]).unwrap();
        let principal = MlDsaKeyPair::from_seed(Algorithm::MlDsa65, &[4; 32]).unwrap();
        let change = RegistryChange::RegisterPrincipal {
            principal: 9,
            role: PrincipalRole::everything(),
            key: principal.public_key().clone(),
        };
        let mut proposed = ProposedChange::new(ClusterId([5; 16]), &change, Duration::from_secs(600)).unwrap();
        proposed.approve(1, &operator).unwrap();
        assert!(proposed.approve(1, &operator).is_err(), "one approval per operator");
        assert!(proposed.approve(2, &principal).is_err(), "operators approve with ML-DSA-87");
        let read = ProposedChange::from_json(&proposed.to_json()).unwrap();
        assert_eq!(read, proposed);
        assert!(read.summary.contains("register principal 9"), "{}", read.summary);
    }
}
