//! The amortised apply rate of a ledger as it grows, growth of its tables included.
//!
//! `cargo run --release -p tally-benches --example apply_amortized -- [batches] [single|mixed] [memory|redb]
//! [batches per commit]` generates all batches first, then times applying them to a ledger that starts
//! empty, in memory or on the redb ledger store (in a temporary directory, committing once per batch, or
//! once per the given number of batches as a replica does when it defers commits).

use std::time::Instant;

use tally_benches::{Ledger, Workload};
use tally_consensus::{CACHE_BYTES_DEFAULT, RedbLedgerStore};
use tally_state_machine::{MemoryStorage, Storage};

fn measure<S: Storage>(storage: S, workload: Workload, batches: usize) -> (usize, f64) {
    let mut ledger = Ledger::preloaded_on(storage, workload, 0);
    let prepared = ledger.batches(batches);
    let start = Instant::now();
    ledger.apply_all(&prepared);
    (ledger.transfers_applied, start.elapsed().as_secs_f64())
}

/// As `measure`, on the redb store with its commits deferred and made every `per_commit` batches.
fn measure_deferred(store: RedbLedgerStore, workload: Workload, batches: usize, per_commit: usize) -> (usize, f64) {
    let mut ledger = Ledger::preloaded_on(store, workload, 0);
    ledger.state_machine.storage_mut().defer_commits();
    let prepared = ledger.batches(batches);
    let start = Instant::now();
    for group in prepared.chunks(per_commit) {
        ledger.apply_all(group);
        ledger.state_machine.storage_mut().commit_deferred();
    }
    (ledger.transfers_applied, start.elapsed().as_secs_f64())
}

fn main() {
    let mut arguments = std::env::args().skip(1);
    let batches: usize = arguments.next().map_or(400, |text| text.parse().expect("batches: a count"));
    let workload = match arguments.next().as_deref() {
        None | Some("single") => Workload::SINGLE_PHASE,
        Some("mixed") => Workload::MIXED,
        Some(other) => panic!("workload must be single or mixed, not {other}"),
    };
    let store = arguments.next();
    let per_commit: Option<usize> = arguments.next().map(|text| text.parse().expect("batches per commit: a count"));
    let (transfers, seconds) = match store.as_deref() {
        None | Some("memory") => measure(MemoryStorage::new(), workload, batches),
        Some("redb") => {
            let directory = tempfile::tempdir().expect("a temporary directory");
            let store = RedbLedgerStore::open(&directory.path().join("ledger.redb"), CACHE_BYTES_DEFAULT)
                .expect("a new ledger store");
            match per_commit {
                None => measure(store, workload, batches),
                Some(per_commit) => measure_deferred(store, workload, batches, per_commit),
            }
        }
        Some(other) => panic!("store must be memory or redb, not {other}"),
    };
    println!("{transfers} transfers in {seconds:.3} s: {:.0} transfers/s", transfers as f64 / seconds);
    if let Some(written) = bytes_written() {
        println!("{:.0} bytes written per transfer (whole run, setup included)", written as f64 / transfers as f64);
    }
}

/// Bytes this process has written to files so far (Linux: `wchar` in /proc/self/io).
fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|line| line.strip_prefix("wchar: ")).and_then(|value| value.trim().parse().ok())
}
