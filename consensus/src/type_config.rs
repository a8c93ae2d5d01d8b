//! The one Raft type configuration of a Tally cluster, for openraft's generic types.
//!
//! Apart from [`crate::types`] because it names the snapshot data type, which depends on the
//! ledger store: keeping it here leaves `types` at the bottom of the crate, with no circle.

use crate::types::{ApplyResponse, LogPayload, NodeId, PeerNode};

openraft::declare_raft_types!(
    /// The one Raft type configuration of a Tally cluster.
    pub TypeConfig:
        D = LogPayload,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
