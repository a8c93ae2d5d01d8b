//! The time to write a ledger snapshot: encoding and checksumming alone, then to a file through the
//! page cache and around it (`O_DIRECT`, as replicas write theirs).
//!
//! `cargo run --release -p tally-benches --example snapshot_write -- [batches]` applies that many
//! batches of 8,190 transfers to an in-memory ledger, then writes its snapshot three ways and
//! restores the last one, checking its digest.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::time::Instant;

use tally_benches::{Ledger, Workload};
use tally_consensus::direct_io::DirectFileWriter;
use tally_state_machine::{MemoryStorage, StateMachine};

fn main() -> io::Result<()> {
    let batches: usize = std::env::args().nth(1).map_or(200, |text| text.parse().expect("batches: a count"));
    let mut ledger = Ledger::preloaded_on(MemoryStorage::new(), Workload::SINGLE_PHASE, 0);
    let prepared = ledger.batches(batches);
    ledger.apply_all(&prepared);
    let directory = tempfile::tempdir_in(".")?;
    let report = |how: &str, started: Instant, bytes: u64| {
        let seconds = started.elapsed().as_secs_f64();
        println!("{how:32} {bytes} bytes in {seconds:.3} s: {:.0} MB/s", bytes as f64 / seconds / 1e6);
    };

    let started = Instant::now();
    let summary = ledger.state_machine.write_snapshot(io::sink())?;
    report("encode and checksum only", started, summary.bytes);

    let started = Instant::now();
    let path = directory.path().join("buffered.snapshot");
    let mut out = BufWriter::new(File::create(&path)?);
    let summary = ledger.state_machine.write_snapshot(&mut out)?;
    out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
    report("to a file, page cache, fsync", started, summary.bytes);
    std::fs::remove_file(&path)?;

    let started = Instant::now();
    let path = directory.path().join("direct.snapshot");
    let mut out = DirectFileWriter::create(&path)?;
    let summary = ledger.state_machine.write_snapshot(&mut out)?;
    out.finish()?;
    report("to a file, O_DIRECT, fsync", started, summary.bytes);

    // What was written around the page cache restores to the same ledger (checksum and digest).
    let started = Instant::now();
    let restored = StateMachine::restore_snapshot(MemoryStorage::new(), BufReader::new(File::open(&path)?))
        .map_err(io::Error::other)?;
    assert_eq!(restored.digest(), ledger.state_machine.digest(), "the restored ledger has another digest");
    report("restored from the O_DIRECT file", started, summary.bytes);
    println!("{} transfers in the ledger", ledger.transfers_applied);
    Ok(())
}
