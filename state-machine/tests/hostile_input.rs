//! Bytes from the network or from disk cannot crash a replica: the batch decoder and snapshot
//! restore answer every input with a value or an error, never a panic.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use support::*;
use tally_state_machine::codec::{decode_batch, encode_batch};
use tally_state_machine::{Batch, MemoryStorage, NewTransfer, Operation, StateMachine, TransferFlags};

fn runner(cases: u32) -> TestRunner {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[42; 32]))
}

fn sample_batch() -> Vec<u8> {
    let events = vec![
        transfer(1, BANK, BOB, "12.34"),
        NewTransfer { timeout_seconds: 9, ..pending(2, BANK, BOB, "1") },
        post(3, 2, None),
        with_flags(transfer(4, BOB, BANK, "0.5"), TransferFlags::LINKED),
    ];
    let mut bytes = Vec::new();
    encode_batch(&Batch::new(77, Operation::CreateTransfers(events)), &mut bytes);
    bytes
}

/// Whatever decodes, re-encodes to exactly the same bytes: the encoding is canonical.
#[test]
fn the_batch_decoder_survives_random_and_mutated_input() {
    let valid = sample_batch();
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6).prop_map(move |mutations| {
            let mut bytes = valid.clone();
            for (index, value) in mutations {
                let position = index.index(bytes.len());
                bytes[position] = value;
            }
            bytes
        }),
    ];
    runner(2_000)
        .run(&strategy, |bytes| {
            if let Ok(batch) = decode_batch(&bytes) {
                let mut encoded = Vec::new();
                encode_batch(&batch, &mut encoded);
                prop_assert_eq!(encoded, bytes);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn restore_survives_mutated_snapshots_that_pass_the_checksum() {
    let mut harness = Harness::new();
    harness.transfers(vec![
        transfer(1, ALICE, BOB, "10"),
        NewTransfer { timeout_seconds: 30, ..pending(2, ALICE, BOB, "5") },
        post(3, 2, Some("1")),
        transfer(4, ALICE, BOB, "1000"),
    ]);
    let mut valid = Vec::new();
    harness.ledger.write_snapshot(&mut valid).unwrap();
    let body = valid.len() - 32;
    let strategy = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4);
    runner(1_000)
        .run(&strategy, |mutations| {
            let mut bytes = valid.clone();
            for (index, value) in mutations {
                bytes[index.index(body)] = value;
            }
            let checksum = *blake3::hash(&bytes[..body]).as_bytes();
            bytes[body..].copy_from_slice(&checksum);
            // Refused, or (for a change the checks cannot tell from a real ledger, such as user data)
            // restored into a ledger that writes back exactly these bytes.
            if let Ok(restored) = StateMachine::restore_snapshot(MemoryStorage::new(), bytes.as_slice()) {
                let mut written = Vec::new();
                restored.write_snapshot(&mut written).unwrap();
                prop_assert_eq!(written, bytes);
            }
            Ok(())
        })
        .unwrap();
}
