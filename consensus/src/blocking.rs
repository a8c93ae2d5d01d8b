//! Running synchronous storage work (redb commits, fsync) from async code without stalling the
//! runtime: on a multi-threaded runtime the worker hands its other tasks (heartbeats, peer RPCs)
//! to another thread first, so a long commit never delays a heartbeat into an election.

/// Runs `work`, telling a multi-threaded tokio runtime that this thread will block.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
