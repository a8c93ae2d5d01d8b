//! The genesis file: what a cluster is before its first log entry. It fixes the cluster id and
//! the operators' ML-DSA-87 public keys, and how many operators must sign a change to operators,
//! membership or the key registry (maker-checker).
//!
//! ```toml
//! cluster_id = "0123456789abcdef0123456789abcdef"
//! operator_signatures_required = 2
//!
//! [[operators]]
//! id = 1
//! public_key = """
//! -----BEGIN TALLY ML-DSA PUBLIC KEY-----
//! ...
//! -----END TALLY ML-DSA PUBLIC KEY-----
//! """
//! ```
//!
//! Every replica of a cluster must hold the same genesis; its [`Genesis::fingerprint`], a hash of
//! a canonical encoding (operators in id order, whatever the file's order), is what they compare.
//! This module owns the file, its checks and the fingerprint; it must never change a genesis once
//! made (operators change later through signed, replicated operations).

use serde::Deserialize;

use crate::keys::{Algorithm, KeyError, PublicKey};
use crate::request::ClusterId;

/// Operators a genesis may name at most.
pub const OPERATORS_MAX: usize = 64;

/// One operator of the genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub id: u64,
    pub key: PublicKey,
}

/// A checked genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    pub cluster: ClusterId,
    /// In id order.
    pub operators: Vec<Operator>,
    pub operator_signatures_required: usize,
}

/// Why a genesis file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    #[error("the genesis file is not valid TOML of a genesis: {0}")]
    Syntax(String),
    #[error("cluster_id: {0:?} is not 32 hex digits")]
    ClusterId(String),
    #[error("a genesis names between 1 and {OPERATORS_MAX} operators, not {0}")]
    OperatorCount(usize),
    #[error("operator ids must be non-zero and unique; {0} is not")]
    OperatorId(u64),
    #[error("operator {id}: {error}")]
    OperatorKey { id: u64, error: KeyError },
    #[error("operator {id}'s key is {algorithm}; operators sign with ML-DSA-87")]
    OperatorAlgorithm { id: u64, algorithm: Algorithm },
    #[error("operators {first} and {second} hold the same key")]
    SharedKey { first: u64, second: u64 },
    #[error("operator_signatures_required must be between 1 and the {operators} operators, not {required}")]
    Threshold { required: usize, operators: usize },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cluster_id: String,
    operator_signatures_required: usize,
    operators: Vec<FileOperator>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOperator {
    id: u64,
    public_key: String,
}

impl Genesis {
    /// A genesis from its parts, checked as a file is.
    pub fn new(cluster: ClusterId, operators: Vec<Operator>, required: usize) -> Result<Genesis, GenesisError> {
        if operators.is_empty() || operators.len() > OPERATORS_MAX {
            return Err(GenesisError::OperatorCount(operators.len()));
        }
        let mut operators = operators;
        operators.sort_by_key(|operator| operator.id);
        for (index, operator) in operators.iter().enumerate() {
            if operator.id == 0 || operators[..index].iter().any(|earlier| earlier.id == operator.id) {
                return Err(GenesisError::OperatorId(operator.id));
            }
            if operator.key.algorithm() != Algorithm::MlDsa87 {
                return Err(GenesisError::OperatorAlgorithm { id: operator.id, algorithm: operator.key.algorithm() });
            }
            if let Some(earlier) = operators[..index].iter().find(|earlier| earlier.key == operator.key) {
                return Err(GenesisError::SharedKey { first: earlier.id, second: operator.id });
            }
        }
        if required == 0 || required > operators.len() {
            return Err(GenesisError::Threshold { required, operators: operators.len() });
        }
        Ok(Genesis { cluster, operators, operator_signatures_required: required })
    }

    /// Reads and checks a genesis file.
    pub fn from_toml(text: &str) -> Result<Genesis, GenesisError> {
        let file: File = toml::from_str(text).map_err(|error| GenesisError::Syntax(error.to_string()))?;
        let cluster = ClusterId::from_hex(&file.cluster_id).ok_or(GenesisError::ClusterId(file.cluster_id.clone()))?;
        let operators = file
            .operators
            .iter()
            .map(|operator| {
                let key = PublicKey::from_pem(&operator.public_key)
                    .map_err(|error| GenesisError::OperatorKey { id: operator.id, error })?;
                Ok(Operator { id: operator.id, key })
            })
            .collect::<Result<Vec<_>, GenesisError>>()?;
        Genesis::new(cluster, operators, file.operator_signatures_required)
    }

    /// The genesis as a file [`Genesis::from_toml`] reads back.
    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "# Tally genesis: fixed at bootstrap; every replica of the cluster holds the same one.\n\
             cluster_id = \"{}\"\noperator_signatures_required = {}\n",
            self.cluster, self.operator_signatures_required
        );
        for operator in &self.operators {
            text.push_str(&format!(
                "\n[[operators]]\nid = {}\npublic_key = \"\"\"\n{}\"\"\"\n",
                operator.id,
                operator.key.to_pem()
            ));
        }
        text
    }

    /// [`Genesis::fingerprint`] in hex, as files, logs and `tallyctl` show it.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint().iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// A hash of the genesis's canonical encoding: two replicas hold the same genesis exactly when
    /// their fingerprints are equal.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("tally 2026-12 genesis v1");
        hasher.update(&self.cluster.0);
        hasher.update(&(self.operator_signatures_required as u64).to_be_bytes());
        hasher.update(&(self.operators.len() as u64).to_be_bytes());
        for operator in &self.operators {
            hasher.update(&operator.id.to_be_bytes());
            hasher.update(&[operator.key.algorithm().code()]);
            hasher.update(operator.key.as_bytes());
        }
        *hasher.finalize().as_bytes()
    }
}
