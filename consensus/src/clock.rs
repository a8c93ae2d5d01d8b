//! Wall-clock time, and how far each peer's clock is from this replica's.
//!
//! Cluster time comes from the leader's clock (batch timestamps, pending transfers' expiry), so a
//! leader whose clock runs ahead would expire pending transfers early. Every response on the peer
//! protocol carries the responder's wall time; the caller takes it as the peer's time at the middle
//! of the round trip ([`ClockOffsets::record`]). An offset is read by carrying that sample forward
//! on the monotonic clock and comparing it with this replica's wall clock now, so a clock that
//! steps is seen at once, not at the next sample.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::types::NodeId;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Nanoseconds since the Unix epoch.
    fn now_nanoseconds(&self) -> u64;
}

/// The operating system's real-time clock. It may step backwards; the leader never lets cluster
/// time follow it there (see the node's group commit).
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanoseconds(&self) -> u64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A sample older than this says nothing about a peer's clock: the peer is down or cut off.
pub const CLOCK_SAMPLE_AGE_MAX: Duration = Duration::from_secs(10);

/// A peer's wall time at a moment of this replica's monotonic clock.
#[derive(Clone, Copy, Debug)]
struct Sample {
    remote_nanoseconds: u64,
    at: Instant,
    round_trip: Duration,
}

/// A peer's clock minus this replica's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Offset {
    pub nanoseconds: i64,
    /// Half the round trip of the call it was measured on: the true offset is within this of it.
    pub uncertainty: Duration,
}

impl Offset {
    pub fn milliseconds(&self) -> f64 {
        self.nanoseconds as f64 / 1e6
    }
}

/// The last sample of each peer's clock.
#[derive(Debug, Default)]
pub struct ClockOffsets {
    samples: Mutex<BTreeMap<NodeId, Sample>>,
}

impl ClockOffsets {
    /// Takes in `peer`'s wall time from a response to a call sent at `sent` and read at `received`.
    /// A sample from a shorter round trip is kept over a slightly newer one from a long one.
    pub fn record(&self, peer: NodeId, remote_nanoseconds: u64, sent: Instant, received: Instant) {
        let round_trip = received.saturating_duration_since(sent);
        let sample = Sample { remote_nanoseconds, at: sent + round_trip / 2, round_trip };
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let keep_old = samples.get(&peer).is_some_and(|old| {
            old.round_trip < round_trip / 4 && received.saturating_duration_since(old.at) < Duration::from_secs(1)
        });
        if !keep_old {
            samples.insert(peer, sample);
        }
    }

    /// `peer`'s clock minus this replica's (whose wall time is `local_nanoseconds` at `now`), or
    /// `None` without a sample younger than [`CLOCK_SAMPLE_AGE_MAX`].
    pub fn offset(&self, peer: NodeId, local_nanoseconds: u64, now: Instant) -> Option<Offset> {
        let sample = *self.samples.lock().unwrap_or_else(PoisonError::into_inner).get(&peer)?;
        let age = now.checked_duration_since(sample.at).unwrap_or_default();
        if age > CLOCK_SAMPLE_AGE_MAX {
            return None;
        }
        let remote_now = i128::from(sample.remote_nanoseconds) + i128::try_from(age.as_nanos()).unwrap_or(i128::MAX);
        let difference = remote_now - i128::from(local_nanoseconds);
        let nanoseconds = i64::try_from(difference).unwrap_or(if difference < 0 { i64::MIN } else { i64::MAX });
        Some(Offset { nanoseconds, uncertainty: sample.round_trip / 2 })
    }

    /// The peers with a sample.
    pub fn peers(&self) -> Vec<NodeId> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner).keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn an_offset_is_carried_forward_on_the_monotonic_clock_and_forgotten_when_old() {
        let offsets = ClockOffsets::default();
        let sent = Instant::now();
        // The peer's clock read 100 s at the middle of a 2 ms round trip.
        offsets.record(2, 100 * SECOND, sent, sent + Duration::from_millis(2));
        let later = sent + Duration::from_millis(1) + Duration::from_secs(5);
        let offset = offsets.offset(2, 105 * SECOND, later).unwrap();
        assert_eq!(offset.nanoseconds, 0, "both clocks moved 5 s");
        assert_eq!(offset.uncertainty, Duration::from_millis(1));
        // This replica's wall clock stepped an hour ahead: seen at once, without a new sample.
        let offset = offsets.offset(2, 105 * SECOND + 3_600 * SECOND, later).unwrap();
        assert_eq!(offset.nanoseconds, -3_600 * 1_000_000_000);
        assert_eq!(offsets.offset(3, 105 * SECOND, later), None, "no sample of peer 3");
        assert_eq!(offsets.offset(2, 0, later + CLOCK_SAMPLE_AGE_MAX), None, "too old");
    }
}
