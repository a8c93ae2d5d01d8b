//! Wall-clock time behind a trait (tests run replicas on clocks they control), and the rule that
//! a leader whose clock disagrees with a majority's stops proposing and hands leadership on.
//!
//! Why: cluster time is the leader's clock. Batches carry its timestamps and pending transfers
//! expire by it, so a leader whose clock ran an hour ahead would expire every pending transfer with
//! an hour to go. The peer network samples each peer's clock on every call
//! (`tally_consensus::clock`); [`ClockCheck::refusal`] compares them with this replica's clock now.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use tally_consensus::type_config::TypeConfig;
use tally_consensus::types::NodeId;

pub use tally_consensus::clock::{Clock, ClockOffsets, Offset, SystemClock};

/// This replica's clock and its peers', with the bound they must keep.
pub struct ClockCheck {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    clock: Arc<dyn Clock>,
    offsets: Arc<ClockOffsets>,
    /// `raft.clock_offset_max_ms`.
    bound: Duration,
}

impl std::fmt::Debug for ClockCheck {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ClockCheck(node {}, bound {:?})", self.node_id, self.bound)
    }
}

impl ClockCheck {
    pub fn new(
        node_id: NodeId,
        raft: Raft<TypeConfig>,
        clock: Arc<dyn Clock>,
        offsets: Arc<ClockOffsets>,
        bound: Duration,
    ) -> ClockCheck {
        ClockCheck { node_id, raft, clock, offsets, bound }
    }

    /// `peer`'s clock minus this replica's, if sampled lately.
    pub fn offset(&self, peer: NodeId) -> Option<Offset> {
        self.offsets.offset(peer, self.clock.now_nanoseconds(), Instant::now())
    }

    /// Why this replica, leading, must propose nothing: its clock is further than the bound from
    /// the clocks of a majority of the voters. `None` when it agrees, does not lead, or lacks
    /// samples to say otherwise (a peer down is no evidence against its clock).
    pub fn refusal(&self) -> Option<String> {
        // Read in place: this runs on every write, and the metrics hold the membership and the
        // replication map, which a clone would copy each time.
        let voters: Vec<NodeId> = {
            let watch = self.raft.metrics();
            let metrics = watch.borrow();
            if metrics.state != ServerState::Leader {
                return None;
            }
            metrics.membership_config.membership().voter_ids().collect()
        };
        let (local, now) = (self.clock.now_nanoseconds(), Instant::now());
        let disagreeing: Vec<String> = voters
            .iter()
            .filter(|voter| **voter != self.node_id)
            .filter_map(|voter| {
                let offset = self.offsets.offset(*voter, local, now)?;
                let allowed = self.bound + offset.uncertainty;
                (u128::from(offset.nanoseconds.unsigned_abs()) > allowed.as_nanos())
                    .then(|| format!("node {voter} {:+.0} ms", offset.milliseconds()))
            })
            .collect();
        let majority = voters.len() / 2 + 1;
        (disagreeing.len() >= majority).then(|| {
            format!(
                "this leader's clock is more than raft.clock_offset_max_ms ({} ms) from a majority of the voters' \
                 ({}); it proposes nothing and hands leadership on",
                self.bound.as_millis(),
                disagreeing.join(", ")
            )
        })
    }

    /// The voter to hand leadership to: the one furthest along in the log whose clock is within
    /// the bound of the most others' (here: of this leader's peers, which is all it can see).
    pub fn successor(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        let replication = metrics.replication.as_ref()?;
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|voter| *voter != self.node_id && self.offset(*voter).is_some())
            .max_by_key(|voter| replication.get(voter).copied().flatten().map(|matched| matched.index))
    }
}
