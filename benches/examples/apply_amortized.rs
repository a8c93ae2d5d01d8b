//! The amortised apply rate of an in-memory ledger as it grows, growth of its tables included.
//!
//! `cargo run --release -p tally-benches --example apply_amortized -- [batches] [single|mixed]`
//! generates all batches first, then times applying them to a ledger that starts empty.

use std::time::Instant;

use tally_benches::{Ledger, Workload};

fn main() {
    let mut arguments = std::env::args().skip(1);
    let batches: usize = arguments.next().map_or(400, |text| text.parse().expect("batches: a count"));
    let workload = match arguments.next().as_deref() {
        None | Some("single") => Workload::SINGLE_PHASE,
        Some("mixed") => Workload::MIXED,
        Some(other) => panic!("workload must be single or mixed, not {other}"),
    };
    let mut ledger = Ledger::preloaded(workload, 0);
    let prepared = ledger.batches(batches);
    let start = Instant::now();
    ledger.apply_all(&prepared);
    let seconds = start.elapsed().as_secs_f64();
    let transfers = ledger.transfers_applied;
    println!("{transfers} transfers in {seconds:.3} s: {:.0} transfers/s", transfers as f64 / seconds);
}
