//! Tally's Raft types: what a log entry carries, what applying one returns, who the peers are, and
//! the binary encoding all of them are stored and sent in.
//!
//! This module depends on no other of this crate, so that every other may use it; the type
//! configuration that names the snapshot data type is in [`crate::type_config`].

use std::fmt;

use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

/// A replica's id. Ids are never reused: a replica that lost its disk joins again under a new id.
pub type NodeId = u64;

pub type LogIdOf = LogId<NodeId>;
pub type Membership = StoredMembership<NodeId, PeerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A replica as the others see it: where to reach it, and which site it runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// `host:port` of the replica's gRPC endpoint.
    pub address: String,
    /// The site (data centre) the replica runs in; losing one site must leave a majority.
    pub site: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} (site {})", self.address, self.site)
    }
}

/// What a normal log entry carries. An enum so that later kinds (signed checkpoints, request
/// signatures) are new variants that old entries keep decoding around.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogPayload {
    /// One ledger batch in the canonical encoding of `tally_state_machine::codec`, stamped with the
    /// cluster timestamp by the leader that proposed it.
    Batch(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Signed requests of a secured cluster (`crate::signed_entry::SignedEntry`, encoded), each
    /// body exactly as its principal signed it.
    Signed(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A registry change with its operators' approvals (`crate::signed_entry::ChangeEntry`).
    RegistryChange(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl LogPayload {
    /// The entry's size, which decides whether applying it is long work.
    pub fn len(&self) -> usize {
        match self {
            LogPayload::Batch(bytes) | LogPayload::Signed(bytes) | LogPayload::RegistryChange(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for LogPayload {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogPayload::Batch(bytes) => write!(formatter, "Batch({} bytes)", bytes.len()),
            LogPayload::Signed(bytes) => write!(formatter, "Signed({} bytes)", bytes.len()),
            LogPayload::RegistryChange(bytes) => write!(formatter, "RegistryChange({} bytes)", bytes.len()),
        }
    }
}

/// What applying one log entry produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResponse {
    /// A blank or membership entry: nothing for a client.
    NoOp,
    /// A create batch: one result code (`ResultCode` number) per event.
    Created { results: Vec<u8> },
    /// An expiry batch: the pending transfers released.
    Expired { ids: Vec<u128> },
    /// The batch was refused whole (malformed, or against a batch rule) and changed nothing.
    Refused { reason: String },
    /// A signed entry: what became of each request, in order.
    Signed { requests: Vec<SignedResponse> },
    /// A registry change entry.
    Changed { repeated: bool, refusal: Option<Refusal> },
}

/// What became of one signed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedResponse {
    /// One `ResultCode` number per event; empty when refused.
    pub results: Vec<u8>,
    /// A retry of a request applied before: `results` are its first ones.
    pub repeated: bool,
    pub refusal: Option<Refusal>,
}

/// Why a request or change was refused whole: its number on the wire and what failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: u8,
    pub message: String,
}

/// What the ledger store records about the log with every commit: the last applied entry and the
/// membership in force, so that both move atomically with the ledger data they describe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusRecord {
    pub applied: Option<LogIdOf>,
    pub membership: Membership,
}

/// Why stored or received bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {source}")]
pub struct EncodingError {
    what: &'static str,
    source: postcard::Error,
}

/// The binary encoding of entries, votes and records (postcard: compact, no schema on the wire).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding to memory cannot fail")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, EncodingError> {
    postcard::from_bytes(bytes).map_err(|source| EncodingError { what, source })
}
