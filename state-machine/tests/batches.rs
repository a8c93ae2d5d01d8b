//! Whole-batch rules: limits, timestamps, expiry batches, and what the digest chain detects.

mod support;

use support::*;
use tally_state_machine::constants::{EVENTS_PER_BATCH_MAX, EXPIRIES_PER_BATCH_MAX};
use tally_state_machine::{
    Batch, BatchError, BatchOutcome, NewTransfer, Operation, ResultCode, StateMachine, Storage, StorageRead,
    TransferFlags,
};

fn transfers(count: usize, first_id: u128) -> Vec<NewTransfer> {
    (0..count as u128).map(|index| transfer(first_id + index, BANK, BOB, "0.01")).collect()
}

/// A refused batch leaves everything as it was, including the digest and the batch count.
fn assert_refused(harness: &mut Harness, batch: Batch, expected: BatchError) {
    let before = harness.ledger.meta();
    assert_eq!(harness.ledger.apply(&batch), Err(expected));
    assert_eq!(harness.ledger.meta(), before);
}

#[test]
fn an_empty_batch_is_refused() {
    let mut harness = Harness::new();
    let batch = Batch::new(harness.clock, Operation::CreateTransfers(vec![]));
    assert_refused(&mut harness, batch, BatchError::Empty { operation: "create_transfers" });
}

#[test]
fn a_batch_above_the_event_limit_is_refused_and_one_at_it_is_applied() {
    let mut harness = Harness::new();
    let oversized =
        Batch::new(harness.clock, Operation::CreateTransfers(transfers(EVENTS_PER_BATCH_MAX + 1, 1_000_000)));
    let expected = BatchError::TooManyEvents { count: EVENTS_PER_BATCH_MAX + 1, max: EVENTS_PER_BATCH_MAX };
    assert_refused(&mut harness, oversized, expected);
    let codes = harness.transfers(transfers(EVENTS_PER_BATCH_MAX, 1_000_000));
    assert!(codes.iter().all(|code| *code == ResultCode::Ok));
    assert_eq!(harness.balances(BOB)[3], EVENTS_PER_BATCH_MAX as u128);
}

#[test]
fn timestamps_must_increase_across_batches() {
    let mut harness = Harness::new();
    let first = harness.clock;
    assert_eq!(harness.transfers(transfers(3, 1)), [ResultCode::Ok; 3]);
    assert_eq!(harness.ledger.timestamp_last(), first + 2, "three events use three timestamps");
    for timestamp in [first, first + 2] {
        let batch = Batch::new(timestamp, Operation::CreateTransfers(transfers(1, 10)));
        let expected = BatchError::TimestampNotIncreasing { timestamp, timestamp_last: first + 2 };
        assert_refused(&mut harness, batch, expected);
    }
    let next = Batch::new(first + 3, Operation::CreateTransfers(transfers(1, 10)));
    assert!(harness.ledger.apply(&next).is_ok());
}

#[test]
fn a_batch_whose_events_would_run_past_the_end_of_time_is_refused() {
    let mut harness = Harness::new();
    let batch = Batch::new(u64::MAX - 1, Operation::CreateTransfers(transfers(3, 1)));
    assert_refused(&mut harness, batch, BatchError::TimestampOverflow { timestamp: u64::MAX - 1, count: 3 });
}

#[test]
fn an_expiry_batch_with_nothing_due_still_uses_its_timestamp() {
    let mut harness = Harness::new();
    let timestamp = harness.clock;
    assert_eq!(harness.expire(), Vec::<u128>::new());
    assert_eq!(harness.ledger.timestamp_last(), timestamp);
}

#[test]
fn one_expiry_batch_releases_at_most_its_limit() {
    let mut harness = Harness::new();
    // Ids above the fixture's own.
    let first_id = 1_000_000u128;
    let last_id = first_id + (EXPIRIES_PER_BATCH_MAX + 5) as u128 - 1;
    let mut id = first_id;
    while id <= last_id {
        let chunk: Vec<_> = (id..=last_id.min(id + EVENTS_PER_BATCH_MAX as u128 - 1))
            .map(|id| NewTransfer { timeout_seconds: 1, ..pending(id, BANK, BOB, "0.01") })
            .collect();
        id += chunk.len() as u128;
        assert!(harness.transfers(chunk).iter().all(|code| *code == ResultCode::Ok));
    }
    harness.advance_seconds(2);
    let first = harness.expire();
    assert_eq!(first.len(), EXPIRIES_PER_BATCH_MAX);
    assert_eq!(first[..3], [first_id, first_id + 1, first_id + 2], "the earliest deadlines go first");
    assert!(harness.ledger.expiry_next().is_some(), "the rest wait for the next expiry batch");
    assert_eq!(harness.expire().len(), 5);
    assert_eq!(harness.balances(BOB), [0; 4]);
}

#[test]
fn identical_batches_give_identical_digests_and_different_batches_do_not() {
    let mut first = Harness::new();
    let mut second = Harness::new();
    assert_eq!(first.ledger.digest(), second.ledger.digest());
    first.transfers(vec![transfer(1, BANK, BOB, "1")]);
    second.transfers(vec![transfer(1, BANK, BOB, "1")]);
    assert_eq!(first.ledger.digest(), second.ledger.digest());
    first.transfers(vec![transfer(2, BANK, BOB, "1")]);
    second.transfers(vec![transfer(2, BANK, BOB, "2")]);
    assert_ne!(first.ledger.digest(), second.ledger.digest());
}

/// A replica whose state silently diverged (here: a corrupted balance) shows a different digest
/// at the first batch that touches the divergence, even though every result code is the same.
#[test]
fn the_digest_exposes_diverged_state_at_the_first_batch_that_touches_it() {
    let mut healthy = Harness::new();
    let corrupted = Harness::new();
    let clock = corrupted.clock;
    let mut storage = corrupted.ledger.into_storage();
    let mut bob = storage.account_get(BOB).unwrap();
    bob.credits_posted.0 += 1;
    storage.account_update(&bob);
    let mut corrupted = Harness { ledger: StateMachine::open(storage), clock };

    let untouched = vec![transfer(1, BANK, ALICE, "1")];
    assert_eq!(healthy.transfers(untouched.clone()), corrupted.transfers(untouched));
    assert_eq!(healthy.ledger.digest(), corrupted.ledger.digest(), "Bob was not touched yet");

    let touching = vec![transfer(2, BANK, BOB, "1")];
    assert_eq!(healthy.transfers(touching.clone()), corrupted.transfers(touching));
    assert_ne!(healthy.ledger.digest(), corrupted.ledger.digest());
}

#[test]
fn an_expiry_outcome_lists_the_released_transfers() {
    let mut harness = Harness::new();
    let events = vec![
        NewTransfer { timeout_seconds: 2, ..pending(1, BANK, BOB, "1") },
        NewTransfer { timeout_seconds: 1, ..pending(2, BANK, BOB, "1") },
        pending(3, BANK, BOB, "1"),
    ];
    assert_eq!(harness.transfers(events), [ResultCode::Ok; 3]);
    harness.advance_seconds(3);
    let outcome = harness.apply(Operation::ExpirePendingTransfers);
    assert_eq!(outcome, BatchOutcome::Expired(vec![2, 1]), "ordered by deadline; 3 never expires");
}

/// The bug group commit had: `[t1 linked, t2 linked]` (a chain its request leaves open) joined
/// with another client's transfer ran into it, applied, and failed the other client's transfer.
#[test]
fn a_chain_left_open_by_one_request_fails_alone_and_never_runs_into_the_next_request() {
    let mut harness = Harness::new();
    let linked = TransferFlags::LINKED;
    let open_chain =
        vec![with_flags(transfer(1, BANK, BOB, "5"), linked), with_flags(transfer(2, BANK, BOB, "5"), linked)];
    let single = vec![transfer(3, BANK, USD_LIQUIDITY, "7")];
    let closed_chain = vec![with_flags(transfer(4, BANK, BOB, "1"), linked), transfer(5, BANK, BOB, "2")];
    let events: Vec<NewTransfer> = [open_chain, single, closed_chain].concat();
    let batch = Batch::joined(harness.clock, Operation::CreateTransfers(events), vec![2, 1, 2]);
    let outcome = harness.ledger.apply(&batch).unwrap();
    use ResultCode::*;
    assert_eq!(outcome.results(), [LinkedEventFailed, LinkedEventChainOpen, Ok, Ok, Ok]);
    assert_eq!(harness.balances(BOB)[3], 300, "only the closed chain moved money to Bob (3.00)");
    assert_eq!(harness.balances(USD_LIQUIDITY)[3], 700);

    // The same events as one request: the chain runs on into the transfer after it.
    let mut alone = Harness::new();
    let events = vec![
        with_flags(transfer(1, BANK, BOB, "5"), linked),
        with_flags(transfer(2, BANK, BOB, "5"), linked),
        transfer(3, BANK, USD_LIQUIDITY, "7"),
    ];
    assert_eq!(alone.transfers(events), [Ok, Ok, Ok], "one request: a chain of three");
}

#[test]
fn request_boundaries_enter_the_digest() {
    let events = || vec![transfer(1, BANK, BOB, "1"), transfer(2, BANK, BOB, "1")];
    let mut one_request = Harness::new();
    let mut two_requests = Harness::new();
    one_request.ledger.apply(&Batch::new(one_request.clock, Operation::CreateTransfers(events()))).unwrap();
    let joined = Batch::joined(two_requests.clock, Operation::CreateTransfers(events()), vec![1, 1]);
    two_requests.ledger.apply(&joined).unwrap();
    assert_eq!(one_request.balances(BOB), two_requests.balances(BOB));
    assert_ne!(one_request.ledger.digest(), two_requests.ledger.digest());
}

#[test]
fn request_sizes_that_do_not_cover_the_events_exactly_are_refused() {
    let mut harness = Harness::new();
    let clock = harness.clock;
    for sizes in [vec![], vec![1], vec![2, 2], vec![3, 0], vec![0, 3]] {
        let declared = sizes.iter().map(|&size| u64::from(size)).sum();
        let batch = Batch::joined(clock, Operation::CreateTransfers(transfers(3, 1)), sizes);
        assert_refused(&mut harness, batch, BatchError::RequestSizes { count: 3, declared });
    }
    let expiry = Batch::joined(clock, Operation::ExpirePendingTransfers, vec![1]);
    assert_refused(&mut harness, expiry, BatchError::RequestSizes { count: 0, declared: 1 });
}
