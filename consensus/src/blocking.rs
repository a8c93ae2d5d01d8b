//! Running synchronous storage work (redb commits, fsync) from async code without stalling the
//! runtime: on a multi-threaded runtime the worker hands its other tasks (heartbeats, peer RPCs)
//! to another thread first, so a long commit never delays a heartbeat into an election.
//!
//! That hand-over is not free: it wakes another thread, and the worker takes its tasks back after.
//! For a small append or the apply of a few transfers (a fraction of a millisecond) it cost more
//! than the work: a follower made 16 `futex` calls per single-transfer entry (BENCHMARKS.md).
//! [`blocking_when`] does the hand-over only for work that may be long.

/// Work expected to take at least this many bytes of writing is handed over as blocking: a direct
/// write of that size and its fsync take milliseconds, not microseconds.
pub const LONG_WORK_BYTES_MIN: usize = 128 * 1024;

/// Runs `work`, telling a multi-threaded tokio runtime that this thread will block.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Runs `work` as [`blocking`] when it may be long, and in place (holding the worker for a
/// moment) when it is short.
pub fn blocking_when<T>(long: bool, work: impl FnOnce() -> T) -> T {
    if long { blocking(work) } else { work() }
}
