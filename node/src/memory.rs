//! Pretouching: the replica makes its memory budget resident before it serves.
//!
//! The kernel zeroes an anonymous page the first time it is touched, two megabytes at a time where
//! transparent huge pages apply. A fresh replica's heap grows to its working set (caches, batches
//! in flight, uncommitted overlays) during its first minute of load, and on this project's two-core
//! host that zeroing took a sixth of the machine's CPU in the first seconds of a benchmark (the
//! seven replicas and the load generator faulted in about 3 GiB in 15 s). Batched writes from a
//! fresh cluster had a p99 of 98-100 ms and a largest request of 142-271 ms; with 768 MiB
//! pretouched, 83-95 ms and 104-149 ms (BENCHMARKS.md, issue 5, fifth round). The JVM's
//! `-XX:+AlwaysPreTouch` and databases that allocate their buffers at startup make the same trade:
//! a slower start for no page faults under load.
//!
//! The memory stays with the process only because the binary's allocator never returns freed memory
//! to the kernel (`keep_freed_memory` in `main.rs`): the touched chunks are freed at once and later
//! allocations of every size reuse them. A library user with another allocator gains nothing.

use std::time::{Duration, Instant};

/// The unit of touching: mimalloc's arena slice, so every freed chunk is memory its pages of any
/// size class can be carved from again.
const CHUNK_BYTES: usize = 64 * 1024;
const MEMINFO: &str = "/proc/meminfo";

/// What [`pretouch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pretouched {
    pub bytes: usize,
    pub elapsed: Duration,
}

/// Allocates `bytes` (rounded up to whole chunks), writes every byte of them, and frees them.
/// Refuses, touching nothing, when the machine has less memory available than that: a replica that
/// pushed the host into swap or the OOM killer would be worse than one that does not start.
pub fn pretouch(bytes: usize) -> Result<Pretouched, String> {
    let started = Instant::now();
    if bytes == 0 {
        return Ok(Pretouched { bytes: 0, elapsed: started.elapsed() });
    }
    let meminfo = std::fs::read_to_string(MEMINFO)
        .map_err(|error| format!("memory.pretouch_bytes needs {MEMINFO} to check the memory available: {error}"))?;
    check_available(bytes, &meminfo)?;
    let chunk_count = bytes.div_ceil(CHUNK_BYTES);
    let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(chunk_count);
    for _ in 0..chunk_count {
        // Non-zero: an allocator may hand out zeroed memory without writing it.
        chunks.push(vec![1u8; CHUNK_BYTES]);
    }
    // Without this the compiler may see the stores as dead and drop them with the allocation.
    let chunks = std::hint::black_box(chunks);
    let touched = chunks.len() * CHUNK_BYTES;
    drop(chunks);
    Ok(Pretouched { bytes: touched, elapsed: started.elapsed() })
}

/// `Err` naming both figures when `bytes` exceeds `MemAvailable` in `meminfo` (`/proc/meminfo`).
fn check_available(bytes: usize, meminfo: &str) -> Result<(), String> {
    let available_kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|number| number.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("{MEMINFO} has no MemAvailable line; cannot check memory.pretouch_bytes"))?;
    let available = available_kib.saturating_mul(1024);
    if bytes as u64 > available {
        return Err(format!(
            "memory.pretouch_bytes is {} MiB, but this machine has only {} MiB available",
            bytes / (1024 * 1024),
            available / (1024 * 1024)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO_SAMPLE: &str =
        "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:    2097152 kB\n";

    #[test]
    fn more_than_the_memory_available_is_refused_with_both_figures() {
        assert_eq!(check_available(2 * 1024 * 1024 * 1024, MEMINFO_SAMPLE), Ok(()));
        let error = check_available(3 * 1024 * 1024 * 1024, MEMINFO_SAMPLE).unwrap_err();
        assert_eq!(error, "memory.pretouch_bytes is 3072 MiB, but this machine has only 2048 MiB available");
        let error = check_available(1, "MemTotal: 1 kB\n").unwrap_err();
        assert!(error.contains("no MemAvailable line"), "{error}");
    }

    #[test]
    fn none_asked_for_touches_none_and_more_than_available_is_refused() {
        assert_eq!(pretouch(0).unwrap().bytes, 0);
        let error = pretouch(usize::MAX).unwrap_err();
        assert!(error.contains("this machine has only"), "{error}");
    }

    /// Only the rounding: that the pages end up resident is checked on a real replica
    /// (`tests/tests/cluster_faults.rs`), whose allocator keeps them.
    #[test]
    fn the_amount_is_rounded_up_to_whole_chunks() {
        assert_eq!(pretouch(1).unwrap().bytes, CHUNK_BYTES);
        assert_eq!(pretouch(3 * CHUNK_BYTES).unwrap().bytes, 3 * CHUNK_BYTES);
    }
}
