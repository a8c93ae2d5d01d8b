//! Snapshots: a restored ledger is the same ledger, and a damaged snapshot is refused.

mod support;

use support::*;
use tally_state_machine::LedgerQueries;
use tally_state_machine::codec::{ACCOUNT_SIZE, LEDGER_SIZE, NEW_ACCOUNT_SIZE};
use tally_state_machine::{
    AccountTransfersFilter, MemoryStorage, NewTransfer, PendingStatus, SnapshotError, StateMachine, TransferFlags,
    Window,
};

const HEADER_SIZE: usize = 8 + 4 + 8 + 8 + 32;

/// A ledger with history, pending, posted, voided and expiring transfers and a recorded failure.
fn busy_harness() -> Harness {
    let mut harness = Harness::new();
    harness.transfers(vec![
        transfer(1, ALICE, BOB, "10"),
        pending(2, ALICE, BOB, "20"),
        NewTransfer { timeout_seconds: 30, ..pending(3, ALICE, BOB, "5") },
        NewTransfer { timeout_seconds: 1, ..pending(4, BANK, BOB, "5") },
        with_flags(pending(5, CAROL, BANK, "0.01"), TransferFlags::CLOSING_DEBIT),
        transfer(6, ALICE, BOB, "1000"),
    ]);
    harness.transfers(vec![post(7, 2, Some("15"))]);
    harness.advance_seconds(2);
    assert_eq!(harness.expire(), [4]);
    harness
}

fn snapshot_bytes(ledger: &StateMachine<MemoryStorage>) -> Vec<u8> {
    let mut bytes = Vec::new();
    ledger.write_snapshot(&mut bytes).unwrap();
    bytes
}

fn restore(bytes: &[u8]) -> Result<StateMachine<MemoryStorage>, SnapshotError> {
    StateMachine::restore_snapshot(MemoryStorage::new(), bytes)
}

/// Replaces the trailing checksum so that only the semantic checks can catch a change.
fn reseal(bytes: &mut [u8]) {
    let body = bytes.len() - 32;
    let checksum = *blake3::hash(&bytes[..body]).as_bytes();
    bytes[body..].copy_from_slice(&checksum);
}

#[test]
fn a_restored_ledger_is_identical_and_continues_identically() {
    let mut original = busy_harness();
    let bytes = snapshot_bytes(&original.ledger);
    let mut restored = Harness { ledger: restore(&bytes).unwrap(), clock: original.clock };
    assert_eq!(restored.ledger.meta(), original.ledger.meta());
    assert_eq!(snapshot_bytes(&restored.ledger), bytes, "writing the restored ledger gives the same bytes");
    assert_eq!(restored.ledger.expiry_next(), original.ledger.expiry_next());
    assert_eq!(
        restored.ledger.storage().pending_status(2),
        Some(PendingStatus::Posted {
            timestamp: original.ledger.storage().lookup_transfers(&[7]).unwrap()[0].unwrap().timestamp
        })
    );
    let history = |ledger: &StateMachine<MemoryStorage>| {
        ledger.storage().get_account_balances(ALICE, Window::first(100)).unwrap()
    };
    assert_eq!(history(&restored.ledger), history(&original.ledger));
    let bob = |ledger: &StateMachine<MemoryStorage>| {
        ledger.storage().get_account_transfers(AccountTransfersFilter::all(BOB, Window::first(100))).unwrap()
    };
    assert_eq!(bob(&restored.ledger), bob(&original.ledger));

    // Both continue through the same batches: a retried failure, a post, an expiry, a void.
    for harness in [&mut original, &mut restored] {
        harness.transfers(vec![transfer(6, ALICE, BOB, "1000"), post(8, 3, None), void(9, 5)]);
        harness.advance_seconds(60);
        harness.expire();
    }
    assert_eq!(restored.ledger.digest(), original.ledger.digest());
    assert_eq!(snapshot_bytes(&restored.ledger), snapshot_bytes(&original.ledger));
}

#[test]
fn an_empty_ledger_round_trips() {
    let bytes = snapshot_bytes(&StateMachine::new());
    assert_eq!(restore(&bytes).unwrap().meta(), StateMachine::new().meta());
}

#[test]
fn restore_needs_empty_storage() {
    let harness = busy_harness();
    let bytes = snapshot_bytes(&harness.ledger);
    let used = harness.ledger.into_storage();
    assert!(matches!(StateMachine::restore_snapshot(used, bytes.as_slice()), Err(SnapshotError::StorageNotEmpty)));
}

/// Hands out at most a few bytes per read, as a pipe or a socket may: the restore's own buffer is
/// then refilled mid-record and mid-checksum, which whole-slice reads never do.
struct Trickle<'a> {
    bytes: &'a [u8],
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let taken = out.len().min(self.bytes.len()).min(7);
        out[..taken].copy_from_slice(&self.bytes[..taken]);
        self.bytes = &self.bytes[taken..];
        Ok(taken)
    }
}

#[test]
fn a_snapshot_read_a_few_bytes_at_a_time_restores_and_damage_is_still_caught() {
    let ledger = busy_harness().ledger;
    let bytes = snapshot_bytes(&ledger);
    let restored = StateMachine::restore_snapshot(MemoryStorage::new(), Trickle { bytes: &bytes }).unwrap();
    assert_eq!(restored.digest(), ledger.digest());

    let mut last_checksum_byte = bytes.clone();
    *last_checksum_byte.last_mut().unwrap() ^= 1;
    let refused = StateMachine::restore_snapshot(MemoryStorage::new(), Trickle { bytes: &last_checksum_byte });
    assert!(matches!(refused, Err(SnapshotError::ChecksumMismatch)));
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(StateMachine::restore_snapshot(MemoryStorage::new(), Trickle { bytes: &trailing }).is_err());
}

#[test]
fn damaged_snapshots_are_refused() {
    let bytes = snapshot_bytes(&busy_harness().ledger);

    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'X';
    assert!(matches!(restore(&wrong_magic), Err(SnapshotError::NotASnapshot)));

    let mut future_version = bytes.clone();
    future_version[8] = 3;
    assert!(matches!(restore(&future_version), Err(SnapshotError::UnsupportedVersion { found: 3, supported: 2 })));
    let mut version_zero = bytes.clone();
    version_zero[8] = 0;
    assert!(matches!(restore(&version_zero), Err(SnapshotError::UnsupportedVersion { found: 0, supported: 2 })));

    for cut in [HEADER_SIZE - 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(restore(&bytes[..cut]).is_err(), "a snapshot cut at {cut} bytes must be refused");
    }

    // Flipping any one byte of the body is caught (by the checksum, or earlier by a record check).
    for position in (HEADER_SIZE..bytes.len() - 33).step_by(97) {
        let mut flipped = bytes.clone();
        flipped[position] ^= 0x40;
        assert!(restore(&flipped).is_err(), "a flipped byte at {position} must be refused");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(restore(&trailing).is_err());
}

#[test]
fn a_resealed_snapshot_whose_balances_do_not_add_up_is_refused() {
    let bytes = snapshot_bytes(&busy_harness().ledger);
    // The first account record follows the header and the two ledger records; inside it,
    // credits_posted is the fourth balance after the account's own fields.
    let first_account = HEADER_SIZE + 2 * (1 + LEDGER_SIZE);
    assert_eq!(bytes[first_account], 2, "account record tag");
    let credits_posted = first_account + 1 + NEW_ACCOUNT_SIZE + 3 * 16;
    assert!(credits_posted + 16 <= first_account + 1 + ACCOUNT_SIZE);
    let mut tampered = bytes.clone();
    tampered[credits_posted] ^= 1;
    reseal(&mut tampered);
    match restore(&tampered) {
        Err(SnapshotError::Inconsistent(detail)) => assert!(detail.contains(&format!("account {BANK}")), "{detail}"),
        other => panic!("expected an inconsistency, got {other:?}"),
    }
}

#[test]
fn a_resealed_snapshot_with_records_out_of_order_is_refused() {
    let bytes = snapshot_bytes(&busy_harness().ledger);
    // Swap the two ledger records: their timestamps then run backwards.
    let first = HEADER_SIZE;
    let record = 1 + LEDGER_SIZE;
    let mut swapped = bytes.clone();
    let (left, right) = swapped[first..first + 2 * record].split_at_mut(record);
    left.swap_with_slice(right);
    reseal(&mut swapped);
    assert!(matches!(restore(&swapped), Err(SnapshotError::Inconsistent(_))));
}
