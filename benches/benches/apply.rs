//! Applying batches of 8,190 transfers over 10,000 accounts, digest included, on one core.
//!
//! `cargo bench -p tally-benches --bench apply`; figures go to BENCHMARKS.md.
//!
//! Every sample starts from a fresh ledger that already holds `TRANSFERS_PRELOADED` transfers
//! (built outside the timer), generates its batches outside the timer, and times only
//! `StateMachine::apply` over them. Samples are flat (equal length), so each measures the same
//! ledger size; how the rate changes as an in-memory ledger grows to ten million transfers is
//! measured separately by `examples/apply_amortized.rs`.

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tally_benches::{Ledger, Workload};

const TRANSFERS_PRELOADED: usize = 2_000_000;

fn bench_workload(criterion: &mut Criterion, name: &str, workload: Workload) {
    let mut group = criterion.benchmark_group("apply");
    group.throughput(Throughput::Elements(workload.transfers_per_batch as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(name, |bencher| {
        bencher.iter_custom(|iterations| {
            let mut ledger = Ledger::preloaded(workload, TRANSFERS_PRELOADED);
            let batches = ledger.batches(usize::try_from(iterations).expect("iterations fit usize"));
            let start = Instant::now();
            ledger.apply_all(&batches);
            start.elapsed()
        })
    });
    group.finish();
}

fn apply(criterion: &mut Criterion) {
    bench_workload(criterion, "single_phase_8190_transfers_10k_accounts", Workload::SINGLE_PHASE);
    bench_workload(criterion, "mixed_8190_transfers_10k_accounts", Workload::MIXED);
}

criterion_group!(benches, apply);
criterion_main!(benches);
