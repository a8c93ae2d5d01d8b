//! Fuzzing the peer frame decoder with proptest: whatever bytes a peer sends, a replica refuses
//! them with an error or accepts them, and never panics, hangs or reserves memory the bytes did
//! not bring. Two kinds of input: arbitrary bytes, and valid frames of each method with bytes
//! flipped, cut off, appended or their length rewritten (which reach much deeper into the
//! decoders than random bytes do).
//!
//! `TALLY_FUZZ_CASES` sets the number of inputs of each kind (default 2,000, a few seconds);
//! `scripts/fuzz.sh` runs far more. `TALLY_SEED` replays a failure.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tally_consensus::network::{PeerServerLimits, check_request_frame};
use tally_consensus::type_config::TypeConfig;
use tally_consensus::types::{LogPayload, SnapshotMeta, encode};

const LIMITS: PeerServerLimits = PeerServerLimits { snapshot_bytes_max: 1 << 30 };

fn cases() -> u32 {
    std::env::var("TALLY_FUZZ_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(2_000)
}

fn runner() -> (TestRunner, u64) {
    let seed = std::env::var("TALLY_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(0x7A11_F022);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&u64::to_le_bytes(seed));
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    (TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)), seed)
}

fn frame(method: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![method];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

/// One valid frame of each method, with realistic contents.
fn valid_frames() -> Vec<Vec<u8>> {
    let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new(3, 1),
        prev_log_id: Some(log_id(3, 9)),
        entries: vec![
            Entry { log_id: log_id(3, 10), payload: EntryPayload::Blank },
            Entry { log_id: log_id(3, 11), payload: EntryPayload::Normal(LogPayload::Batch(vec![1, 3, 0, 0, 7])) },
        ],
        leader_commit: Some(log_id(3, 9)),
    };
    let vote = VoteRequest { vote: Vote::new(4, 2), last_log_id: Some(log_id(3, 11)) };
    let snapshot = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new(3, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(3, 9)),
            snapshot_id: "3-9-abcd".into(),
            ..SnapshotMeta::default()
        },
        offset: 4096,
        data: vec![0xAB; 64],
        done: false,
    };
    vec![frame(1, &encode(&append)), frame(2, &encode(&vote)), frame(3, &encode(&snapshot))]
}

/// Whether the frame was accepted.
fn check(bytes: &[u8], runtime: &tokio::runtime::Runtime) -> bool {
    // Within a deadline: an input that made the decoder wait for bytes that never come would hang.
    let checked = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), check_request_frame(bytes, LIMITS)).await
    });
    checked.unwrap_or_else(|_| panic!("checking {} bytes did not finish", bytes.len())).is_ok()
}

#[test]
fn arbitrary_bytes_are_refused_or_accepted_never_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let (mut runner, seed) = runner();
    let strategy = prop::collection::vec(any::<u8>(), 0..512);
    let result = runner.run(&strategy, |bytes| {
        let _ = check(&bytes, &runtime);
        Ok(())
    });
    assert!(result.is_ok(), "with TALLY_SEED={seed}: {result:?}");
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { position: usize, bit: u8 },
    Cut { length: usize },
    Append(Vec<u8>),
    Length(u32),
}

#[test]
fn mutated_valid_frames_are_refused_or_accepted_never_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let frames = valid_frames();
    for frame in &frames {
        runtime.block_on(check_request_frame(frame, LIMITS)).expect("the unmutated frames are valid");
    }
    let (mut runner, seed) = runner();
    let mutation = prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(position, bit)| Mutation::Flip { position, bit }),
        any::<usize>().prop_map(|length| Mutation::Cut { length }),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
        any::<u32>().prop_map(Mutation::Length),
    ];
    let strategy = (0..frames.len(), prop::collection::vec(mutation, 1..4));
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |(which, mutations)| {
        let mut bytes = frames[which].clone();
        for mutation in mutations {
            match mutation {
                Mutation::Flip { position, bit } if !bytes.is_empty() => {
                    let position = position % bytes.len();
                    bytes[position] ^= 1 << bit;
                }
                Mutation::Flip { .. } => {}
                Mutation::Cut { length } => bytes.truncate(length % (bytes.len() + 1)),
                Mutation::Append(more) => bytes.extend(more),
                Mutation::Length(length) if bytes.len() >= 5 => bytes[1..5].copy_from_slice(&length.to_le_bytes()),
                Mutation::Length(_) => {}
            }
        }
        accepted.set(accepted.get() + u32::from(check(&bytes, &runtime)));
        Ok(())
    });
    assert!(result.is_ok(), "with TALLY_SEED={seed}: {result:?}");
    // Both outcomes must occur, or the mutations never reach past the framing (or never break it).
    let accepted = accepted.get();
    assert!(accepted > 0 && accepted < cases(), "{accepted} of {} mutated frames accepted", cases());
}
