//! Wall-clock time, behind a trait so that tests can run the leader on a clock they control.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Nanoseconds since the Unix epoch.
    fn now_nanoseconds(&self) -> u64;
}

/// The operating system's real-time clock. It may step backwards; the leader never lets cluster
/// time follow it there (see `group_commit`).
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanoseconds(&self) -> u64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
    }
}
