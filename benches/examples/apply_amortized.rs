//! The amortised apply rate of a ledger as it grows, growth of its tables included.
//!
//! `cargo run --release -p tally-benches --example apply_amortized -- [batches] [single|mixed] [memory|redb]`
//! generates all batches first, then times applying them to a ledger that starts empty, in memory
//! or on the redb ledger store (in a temporary directory, committing once per batch).

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

fn main() {
    let mut arguments = std::env::args().skip(1);
    let batches: usize = arguments.next().map_or(400, |text| text.parse().expect("batches: a count"));
    let workload = match arguments.next().as_deref() {
        None | Some("single") => Workload::SINGLE_PHASE,
        Some("mixed") => Workload::MIXED,
        Some(other) => panic!("workload must be single or mixed, not {other}"),
    };
    let (transfers, seconds) = match arguments.next().as_deref() {
        None | Some("memory") => measure(MemoryStorage::new(), workload, batches),
        Some("redb") => {
            let directory = tempfile::tempdir().expect("a temporary directory");
            let store = RedbLedgerStore::open(&directory.path().join("ledger.redb"), CACHE_BYTES_DEFAULT)
                .expect("a new ledger store");
            measure(store, workload, batches)
        }
        Some(other) => panic!("store must be memory or redb, not {other}"),
    };
    println!("{transfers} transfers in {seconds:.3} s: {:.0} transfers/s", transfers as f64 / seconds);
}
