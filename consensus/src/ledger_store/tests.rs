//! The redb ledger store passes the shared storage suite, keeps what it committed across a
//! reopen, and loses nothing but the uncommitted tail of a batch.

use super::{CACHE_BYTES_DEFAULT, LedgerStoreError, RedbLedgerStore, WrittenCommit};
use std::ops::ControlFlow;
use tally_state_machine::storage::suite;

use tally_state_machine::{
    Batch, Currency, Decimal, Direction, NewAccount, NewLedger, NewTransfer, Operation, StateMachine, Storage,
    StorageRead, TimestampRange,
};

#[test]
fn the_redb_store_passes_the_storage_suite() {
    let directory = tempfile::tempdir().unwrap();
    let stores = std::cell::Cell::new(0);
    suite::run(|| {
        stores.set(stores.get() + 1);
        let path = directory.path().join(format!("ledger-{}.redb", stores.get()));
        RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap()
    });
}

#[test]
fn the_redb_store_passes_the_storage_suite_when_it_merges_its_account_index_often() {
    let directory = tempfile::tempdir().unwrap();
    let stores = std::cell::Cell::new(0);
    suite::run(|| {
        stores.set(stores.get() + 1);
        let path = directory.path().join(format!("ledger-{}.redb", stores.get()));
        let mut store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
        store.set_index_merge_postings(5);
        store
    });
}

/// A deterministic pseudo-random sequence (xorshift64) from `seed`, so that failures reproduce.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Batches of random transfers among `ACCOUNTS` accounts of one ledger, from a fixed seed.
fn random_transfer_batches(batches: usize, transfers_per_batch: usize) -> Vec<Batch> {
    const ACCOUNTS: u128 = 12;
    let second = 1_000_000_000;
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let mut all = vec![
        Batch::new(
            second,
            Operation::CreateLedgers(vec![NewLedger {
                id: 1,
                currency: Currency(*b"EUR"),
                scale: 2,
                ..NewLedger::default()
            }]),
        ),
        Batch::new(
            2 * second,
            Operation::CreateAccounts(
                (1..=ACCOUNTS).map(|id| NewAccount { id, ledger: 1, code: 1, ..NewAccount::default() }).collect(),
            ),
        ),
    ];
    let mut id = 0;
    for batch in 0..batches {
        let transfers = (0..transfers_per_batch)
            .map(|_| {
                id += 1;
                // Account 1 is hot: it pays in half of the transfers.
                let debit = if next().is_multiple_of(2) { 1 } else { u128::from(next()) % ACCOUNTS + 1 };
                let credit = debit % ACCOUNTS + 1 + u128::from(next()) % (ACCOUNTS - 1);
                let credit = (credit - 1) % ACCOUNTS + 1;
                NewTransfer {
                    id,
                    debit_account_id: debit,
                    credit_account_id: credit,
                    amount: Some(Decimal::new(i64::try_from(next() % 10_000).unwrap() + 1, 2)),
                    ledger: 1,
                    code: 1,
                    ..NewTransfer::default()
                }
            })
            .collect();
        let timestamp = (3 + u64::try_from(batch).unwrap()) * second;
        all.push(Batch::new(timestamp, Operation::CreateTransfers(transfers)));
    }
    all
}

/// Transfer ids found by an account scan, stopping after `limit`.
fn account_scan(
    store: &impl StorageRead,
    account_id: u128,
    range: TimestampRange,
    direction: Direction,
    limit: usize,
) -> Vec<u128> {
    let mut ids = Vec::new();
    store.account_transfers_scan(account_id, range, direction, &mut |transfer| {
        ids.push(transfer.id);
        if ids.len() == limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    ids
}

/// Every account of `random_transfer_batches` has the same whole history, either way, in both stores.
fn assert_whole_scans_match(store: &impl StorageRead, reference: &impl StorageRead, when: &str) {
    for account_id in 1..=12 {
        for direction in [Direction::Ascending, Direction::Descending] {
            assert_eq!(
                account_scan(store, account_id, TimestampRange::ALL, direction, usize::MAX),
                account_scan(reference, account_id, TimestampRange::ALL, direction, usize::MAX),
                "{when}: account {account_id}, {direction:?}"
            );
        }
    }
}

#[test]
fn scans_and_lookups_match_the_in_memory_store_across_blocks_index_runs_and_a_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    // 100 transfers a batch, committed alone: a block each, so ranges start and end inside blocks.
    let batches = random_transfer_batches(40, 100);
    let mut reference = StateMachine::new();
    let open = |merge_postings: usize| {
        let mut store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
        store.set_index_merge_postings(merge_postings);
        StateMachine::open(store)
    };
    // First every fourth batch's postings (200 each) trigger a merge, so scans see both parts; after
    // the reopen, every thirteenth, so the hot account's merged postings (over 504) span several rows.
    let mut ledger = open(750);
    let mut runs_seen = std::collections::BTreeSet::new();
    for (index, batch) in batches.iter().enumerate() {
        assert_eq!(ledger.apply(batch), reference.apply(batch));
        runs_seen.insert(ledger.storage().index_runs());
        if index == 13 {
            drop(ledger);
            ledger = open(2_500);
        }
    }
    assert!(
        runs_seen.contains(&0) && runs_seen.contains(&4) && runs_seen.contains(&13),
        "runs gather and are merged: {runs_seen:?}"
    );
    assert!(ledger.storage().index_runs() > 0, "the last scans read unmerged runs too");
    let second = 1_000_000_000;
    let ranges = [TimestampRange::ALL, TimestampRange { min: 6 * second, max: 35 * second + 5 }];
    for account_id in 1..=12 {
        for range in ranges {
            for direction in [Direction::Ascending, Direction::Descending] {
                for limit in [usize::MAX, 7, 75] {
                    let expected = account_scan(reference.storage(), account_id, range, direction, limit);
                    assert!(!expected.is_empty());
                    assert_eq!(
                        account_scan(ledger.storage(), account_id, range, direction, limit),
                        expected,
                        "account {account_id}, {range:?}, {direction:?}, limit {limit}"
                    );
                }
            }
        }
    }
    for range in ranges.into_iter().chain([TimestampRange { min: 7 * second + 64, max: 7 * second + 64 }]) {
        for direction in [Direction::Ascending, Direction::Descending] {
            for limit in [usize::MAX, 3, 130] {
                let scan = |store: &dyn StorageRead| {
                    let mut ids = Vec::new();
                    store.transfers_scan(range, direction, &mut |transfer| {
                        ids.push(transfer.id);
                        if ids.len() == limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                    });
                    ids
                };
                let expected = scan(reference.storage());
                assert!(!expected.is_empty());
                assert_eq!(scan(ledger.storage()), expected, "transfers in {range:?}, {direction:?}, limit {limit}");
            }
        }
    }
    for id in 1..=4_001 {
        assert_eq!(ledger.storage().transfer_get(id), reference.storage().transfer_get(id), "transfer {id}");
    }
    assert_eq!(ledger.digest(), reference.digest());
}

fn snapshot<S: Storage>(ledger: &StateMachine<S>) -> Vec<u8> {
    let mut bytes = Vec::new();
    ledger.write_snapshot(&mut bytes).unwrap();
    bytes
}

#[test]
fn a_reopened_store_holds_every_committed_batch() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    let mut reference = StateMachine::new();
    let batches = suite::reference_batches();
    {
        let mut ledger = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
        for batch in &batches[..3] {
            assert_eq!(ledger.apply(batch), reference.apply(batch));
        }
    }
    let mut ledger = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
    assert_eq!(ledger.meta(), reference.meta(), "the reopened store has the last committed meta");
    for batch in &batches[3..] {
        assert_eq!(ledger.apply(batch), reference.apply(batch), "continues identically after a reopen");
    }
    assert_eq!(ledger.digest(), reference.digest());
    assert_eq!(snapshot(&ledger), snapshot(&reference));
}

#[test]
fn a_batch_that_never_reached_its_commit_leaves_no_trace() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    let batches = suite::reference_batches();
    let meta_after_setup = {
        let mut ledger = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
        ledger.apply(&batches[0]).unwrap();
        ledger.apply(&batches[1]).unwrap();
        let meta = ledger.meta();
        // Writes of a half-applied batch stay in the overlay; dropping the store before its commit
        // models a crash in the middle of a batch.
        let mut store = ledger.into_storage();
        store.account_update(&tally_state_machine::Account {
            credits_posted: tally_state_machine::Units(999),
            ..store.account_get(1).unwrap()
        });
        meta
    };
    let store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
    assert_eq!(store.meta_get(), meta_after_setup);
    assert_eq!(store.account_get(1).unwrap().credits_posted.0, 0, "the uncommitted write is gone");
    let mut ledger = StateMachine::open(store);
    let third = Batch::new(batches[2].timestamp, batches[2].operation.clone());
    assert!(ledger.apply(&third).is_ok(), "the next batch applies on the committed state");
}

#[test]
fn a_file_of_another_kind_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("not-a-store");
    std::fs::write(&path, b"this is not a redb file at all, just some text").unwrap();
    match RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT) {
        Err(LedgerStoreError::Open { .. }) => {}
        other => panic!("expected an open error, got {other:?}"),
    }
}

/// A store of format 4 (before merges were spread over commits) opens, and is marked format 5 so
/// that older versions refuse it from then on; a store of an unknown format is refused unchanged.
#[test]
fn a_store_of_the_previous_format_is_upgraded_and_an_unknown_one_refused() {
    use redb::ReadableDatabase;
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    let batches = suite::reference_batches();
    let mut reference = StateMachine::new();
    {
        let mut ledger = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
        for batch in &batches {
            assert_eq!(ledger.apply(batch), reference.apply(batch));
        }
    }
    let set_format = |format: &[u8]| {
        let database = redb::Database::open(&path).unwrap();
        let transaction = database.begin_write().unwrap();
        transaction.open_table(META).unwrap().insert("format", format).unwrap();
        transaction.commit().unwrap();
    };
    let format = || {
        let database = redb::Database::open(&path).unwrap();
        let transaction = database.begin_read().unwrap();
        let meta = transaction.open_table(META).unwrap();
        meta.get("format").unwrap().unwrap().value().to_vec()
    };
    set_format(b"tally-ledger-store/4");
    let ledger = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
    assert_eq!(ledger.digest(), reference.digest());
    drop(ledger);
    assert_eq!(format(), b"tally-ledger-store/6");
    set_format(b"tally-ledger-store/5");
    let ledger = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
    assert_eq!(ledger.digest(), reference.digest());
    drop(ledger);
    assert_eq!(format(), b"tally-ledger-store/6");

    set_format(b"tally-ledger-store/3");
    match RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT) {
        Err(LedgerStoreError::WrongFormat { found, .. }) => assert_eq!(found, "tally-ledger-store/3"),
        other => panic!("expected a format error, got {other:?}"),
    }
    assert_eq!(format(), b"tally-ledger-store/3", "a refused store is left as it was");
}

#[test]
fn a_read_view_keeps_its_state_while_the_store_commits_more() {
    let directory = tempfile::tempdir().unwrap();
    let batches = suite::reference_batches();
    let mut ledger =
        StateMachine::open(RedbLedgerStore::open(&directory.path().join("ledger.redb"), CACHE_BYTES_DEFAULT).unwrap());
    let mut reference = StateMachine::new();
    for batch in &batches[..3] {
        ledger.apply(batch).unwrap();
        reference.apply(batch).unwrap();
    }
    let view = ledger.storage().read_view();
    for batch in &batches[3..] {
        ledger.apply(batch).unwrap();
    }
    let mut from_view = Vec::new();
    tally_state_machine::snapshot::write_snapshot(&view, &mut from_view).unwrap();
    assert_eq!(from_view, snapshot(&reference), "the view still shows the state after three batches");
    assert_ne!(snapshot(&ledger), from_view);
}

#[test]
fn the_consensus_record_commits_with_its_batch() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    let batches = suite::reference_batches();
    {
        let mut store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
        assert_eq!(store.consensus_state(), None);
        store.commit_consensus_state(b"membership at 1".to_vec());
        assert_eq!(store.consensus_state(), Some(&b"membership at 1"[..]));
        let mut ledger = StateMachine::open(store);
        ledger.apply(&batches[0]).unwrap();
        let mut store = ledger.into_storage();
        store.defer_consensus_state(b"applied 2".to_vec());
        let mut ledger = StateMachine::open(store);
        ledger.apply(&batches[1]).unwrap();
        assert_eq!(ledger.storage().consensus_state(), Some(&b"applied 2"[..]));
        // Staged, but its batch never commits: the record must not move either.
        let mut store = ledger.into_storage();
        store.defer_consensus_state(b"applied 3".to_vec());
        store.account_update(&tally_state_machine::Account {
            credits_posted: tally_state_machine::Units(5),
            ..store.account_get(1).unwrap()
        });
    }
    let store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
    assert_eq!(store.consensus_state(), Some(&b"applied 2"[..]));
    assert_eq!(store.meta_get().batches_applied, 2);
}

/// Transfer ids arrive in any order: below every stored id, inside a chunk's range (splitting full
/// chunks), between chunks, after them, and as resubmissions of stored ids. Lookups of stored and
/// absent ids and every result match the in-memory store, across commits and a reopen.
#[test]
fn transfer_ids_in_any_order_are_found_across_chunks_and_a_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let mut batches = random_transfer_batches(0, 0);
    let mut submitted: Vec<u128> = Vec::new();
    for batch in 0..60_u64 {
        let mut ids = Vec::new();
        for position in 0..200_u128 {
            let id = match batch % 4 {
                // Ascending, above everything so far.
                0 => (1 << 100) + u128::from(batch) * 1_000 + position,
                // Scattered over the whole range, so most land inside existing chunks.
                1 | 2 => (u128::from(next()) << 40) | u128::from(batch) << 8 | position,
                // Below every id so far, descending.
                _ => 1_000_000 - u128::from(batch) * 1_000 - position,
            };
            ids.push(id);
        }
        // A few resubmissions of stored ids (answered `exists`, nothing stored twice).
        for _ in 0..5 {
            if !submitted.is_empty() {
                ids.push(submitted[usize::try_from(next()).unwrap() % submitted.len()]);
            }
        }
        submitted.extend(&ids);
        let transfers = ids
            .into_iter()
            .map(|id| NewTransfer {
                id,
                debit_account_id: 1 + u128::from(next() % 6),
                credit_account_id: 7 + u128::from(next() % 6),
                amount: Some(Decimal::new(1, 2)),
                ledger: 1,
                code: 1,
                ..NewTransfer::default()
            })
            .collect();
        batches.push(Batch::new((3 + batch) * 1_000_000_000, Operation::CreateTransfers(transfers)));
    }
    let mut reference = StateMachine::new();
    let open = || StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
    let mut ledger = open();
    for (index, batch) in batches.iter().enumerate() {
        assert_eq!(ledger.apply(batch), reference.apply(batch), "batch {index}");
        if index == 31 {
            drop(ledger);
            ledger = open();
        }
    }
    let absent = |id: u128| [id.wrapping_sub(1), id + 1];
    for &id in &submitted {
        let found = ledger.storage().transfer_get(id);
        assert!(found.is_some(), "transfer {id} is stored");
        assert_eq!(found, reference.storage().transfer_get(id), "transfer {id}");
        for probe in absent(id) {
            assert_eq!(ledger.storage().transfer_get(probe), reference.storage().transfer_get(probe), "id {probe}");
        }
    }
    for probe in [0, 1, u128::MAX, 1 << 100, (1 << 101) + 3] {
        assert_eq!(ledger.storage().transfer_get(probe), reference.storage().transfer_get(probe), "id {probe}");
    }
    assert_eq!(ledger.digest(), reference.digest());
}

/// Every point lookup the ledger makes, compared with the in-memory reference.
fn assert_lookups_match(store: &RedbLedgerStore, reference: &impl StorageRead, when: &str) {
    for id in 1..=3_100 {
        assert_eq!(store.transfer_get(id), reference.transfer_get(id), "transfer {id}, {when}");
        assert_eq!(store.transfer_failure_get(id), reference.transfer_failure_get(id), "failure {id}, {when}");
        assert_eq!(store.pending_status_get(id), reference.pending_status_get(id), "pending {id}, {when}");
        assert_eq!(store.account_get(id), reference.account_get(id), "account {id}, {when}");
    }
    for id in 1..=20 {
        assert_eq!(store.ledger_get(id), reference.ledger_get(id), "ledger {id}, {when}");
    }
    assert_eq!(store.meta_get(), reference.meta_get(), "meta, {when}");
}

/// Batches taken out of the store by `begin_commit` are written on another thread while the
/// store applies more (as a replica commits without its ledger lock): meanwhile and afterwards
/// every lookup finds them, and the store, then a reopened copy, ends where the reference does.
#[test]
fn batches_apply_and_are_found_while_an_earlier_commit_is_written_on_another_thread() {
    for (name, batches) in
        [("random transfers", random_transfer_batches(30, 100)), ("reference", suite::reference_batches())]
    {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("ledger.redb");
        let mut reference = StateMachine::new();
        let mut store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
        store.defer_commits();
        let mut ledger = StateMachine::open(store);
        let mut writer: Option<std::thread::JoinHandle<WrittenCommit>> = None;
        let mut written_meanwhile = 0;
        for (index, batch) in batches.iter().enumerate() {
            if matches!(batch.operation, Operation::ExpirePendingTransfers) {
                // An expiry scans committed state: the replica commits everything before it.
                if let Some(writer) = writer.take() {
                    ledger.storage_mut().finish_commit(writer.join().unwrap());
                }
                ledger.storage_mut().commit_deferred();
            }
            assert_eq!(ledger.apply(batch), reference.apply(batch), "{name}, batch {index}");
            if let Some(running) = writer.take() {
                assert!(ledger.storage().is_writing());
                let when = format!("{name}, batch {index}, a commit being written");
                assert_lookups_match(ledger.storage(), reference.storage(), &when);
                let written = running.join().unwrap();
                ledger.storage_mut().finish_commit(written);
                written_meanwhile += 1;
                let when = format!("{name}, batch {index}, a commit finished");
                assert_lookups_match(ledger.storage(), reference.storage(), &when);
            }
            let commit = ledger.storage_mut().begin_commit().expect("whole batches are deferred");
            writer = Some(std::thread::spawn(move || commit.write()));
        }
        assert!(written_meanwhile >= 3, "{name}: only {written_meanwhile} commits overlapped applying");
        if let Some(writer) = writer.take() {
            ledger.storage_mut().finish_commit(writer.join().unwrap());
        }
        ledger.storage_mut().commit_deferred();
        assert!(!ledger.storage().is_writing());
        assert_eq!(ledger.digest(), reference.digest(), "{name}");
        assert_eq!(snapshot(&ledger), snapshot(&reference), "{name}");
        drop(ledger);
        let reopened = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
        assert_lookups_match(reopened.storage(), reference.storage(), &format!("{name}, reopened"));
        assert_eq!(snapshot(&reopened), snapshot(&reference), "{name}, reopened");
    }
}

/// A checkpoint is written on another thread while the store applies more (as a replica makes one
/// without its ledger lock): its record is made from a view of exactly the batches applied before
/// it began, later batches are found meanwhile, and after a reopen the store holds that state and
/// that record, durably.
#[test]
fn a_checkpoint_is_written_while_later_batches_apply() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    let batches = random_transfer_batches(20, 100);
    let (before, after) = batches.split_at(12);
    let mut reference = StateMachine::new();
    let mut store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
    store.defer_commits();
    let mut ledger = StateMachine::open(store);
    for batch in before {
        assert_eq!(ledger.apply(batch), reference.apply(batch));
    }
    let digest_at_checkpoint = reference.digest();
    let checkpoint = ledger.storage_mut().begin_checkpoint();
    let writer = std::thread::spawn(move || {
        checkpoint.write_checkpoint(|view| {
            let mut record = b"checkpoint at ".to_vec();
            record.extend_from_slice(&view.meta_get().digest);
            record
        })
    });
    for (index, batch) in after.iter().enumerate() {
        assert_eq!(ledger.apply(batch), reference.apply(batch), "batch {index} after the checkpoint began");
        assert_lookups_match(
            ledger.storage(),
            reference.storage(),
            &format!("batch {index}, a checkpoint being written"),
        );
    }
    assert!(ledger.storage().is_writing());
    let (written, view) = writer.join().unwrap();
    assert_eq!(view.meta_get().digest, digest_at_checkpoint, "the view shows the state the checkpoint names");
    ledger.storage_mut().finish_commit(written);
    let expected_record = [b"checkpoint at ".as_slice(), &digest_at_checkpoint].concat();
    assert_eq!(ledger.storage().checkpoint(), Some(expected_record.as_slice()));
    assert_lookups_match(ledger.storage(), reference.storage(), "the checkpoint finished");
    assert_eq!(ledger.digest(), reference.digest());

    // The later batches were never committed: a reopened store is at the checkpoint.
    drop(ledger);
    let reopened = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
    assert_eq!(reopened.digest(), digest_at_checkpoint);
    assert_eq!(reopened.storage().checkpoint(), Some(expected_record.as_slice()));
}

/// A store given merge phase `phase` of `phases` makes its first merge after `(phase + 1) /
/// phases` of the threshold and every later one after the whole threshold, so that replicas on
/// one host take turns; account scans find the same transfers whenever the merges came.
#[test]
fn a_staggered_store_merges_first_at_its_phase_then_at_the_threshold() {
    let directory = tempfile::tempdir().unwrap();
    // Committed one batch at a time: 100 postings a run.
    let batches = random_transfer_batches(12, 50);
    let runs_after_each_batch = |stagger: Option<(usize, usize)>, name: &str| {
        let mut store =
            RedbLedgerStore::open(&directory.path().join(format!("{name}.redb")), CACHE_BYTES_DEFAULT).unwrap();
        store.set_index_merge_postings(400);
        if let Some((phase, phases)) = stagger {
            store.stagger_index_merges(phase, phases);
        }
        let mut ledger = StateMachine::open(store);
        let mut reference = StateMachine::new();
        let mut runs = Vec::new();
        for batch in &batches {
            assert_eq!(ledger.apply(batch), reference.apply(batch));
            if matches!(batch.operation, Operation::CreateTransfers(_)) {
                runs.push(ledger.storage().index_runs());
            }
        }
        assert_whole_scans_match(ledger.storage(), reference.storage(), name);
        runs
    };
    // A merge begins once the runs hold 400 postings and takes that commit and the next (each
    // merges at least twice the 100 postings a commit adds), which adds a run of its own.
    assert_eq!(runs_after_each_batch(None, "unstaggered"), [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]);
    // Phase 1 of 4: the first merge at 200 postings (done in one commit), then at 400.
    assert_eq!(runs_after_each_batch(Some((1, 4)), "phase-1"), [1, 0, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2]);
    assert_eq!(runs_after_each_batch(Some((0, 4)), "phase-0"), [0, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3]);
}

/// A merge is spread over several commits, a slice of accounts each: after every commit, and after
/// a reopen in the middle of a merge, every account's scan finds its transfers once each, in
/// order, whether they sit in merged rows, in runs being merged, or in later runs.
#[test]
fn a_merge_spread_over_commits_keeps_every_accounts_scan_whole() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    // 40 postings a commit among 12 accounts; a merge of 800 postings takes about five commits.
    let batches = random_transfer_batches(60, 20);
    let open = || {
        let mut store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
        store.set_index_merge_postings(800);
        StateMachine::open(store)
    };
    let mut ledger = open();
    let mut reference = StateMachine::new();
    let (mut commits_mid_merge, mut reopened_mid_merge) = (0, false);
    for (index, batch) in batches.iter().enumerate() {
        assert_eq!(ledger.apply(batch), reference.apply(batch));
        let merging = ledger.storage().index_merging();
        commits_mid_merge += usize::from(merging);
        if merging && !reopened_mid_merge {
            drop(ledger);
            ledger = open();
            assert!(ledger.storage().index_merging(), "a merge under way survives a reopen");
            reopened_mid_merge = true;
        }
        assert_whole_scans_match(ledger.storage(), reference.storage(), &format!("batch {index} (merging: {merging})"));
    }
    assert!(reopened_mid_merge && commits_mid_merge >= 8, "{commits_mid_merge} commits ended mid-merge");
}

/// The window of seen requests and the registry read the same through deferred and in-flight
/// commits as from a committed store: signed batches forget requests with every batch, long before
/// a commit, and a retry must find the first outcome wherever it is.
#[test]
fn the_window_of_seen_requests_reads_through_deferred_and_in_flight_commits() {
    use tally_state_machine::registry::{Permissions, Role};
    use tally_state_machine::signed::SignedBatch;
    use tally_state_machine::storage::suite::{
        HashSignatures, approved_change, register_principal, secured_genesis, signed_request,
    };
    use tally_state_machine::{NewTransfer, Operation};

    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.redb");
    let mut reference = StateMachine::new().with_genesis(secured_genesis());
    let mut store = RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap();
    store.defer_commits();
    let mut ledger = StateMachine::open(store).with_genesis(secured_genesis());
    let second = 1_000_000_000;
    let mut clock = 1_700_000_000 * second;
    let everything = Role { permissions: Permissions::all(), ..Role::default() };
    let register = approved_change(clock, 1, 1, register_principal(9, everything), &[1, 2]);
    assert_eq!(ledger.apply_change(&register, &HashSignatures), reference.apply_change(&register, &HashSignatures));
    let due = |storage: &dyn StorageRead| {
        let mut entries = Vec::new();
        storage.requests_seen_due_scan(u64::MAX, &mut |entry| {
            entries.push(*entry);
            ControlFlow::Continue(())
        });
        entries
    };
    let mut random = xorshift(7);
    let mut in_flight = None;
    for index in 2..200u64 {
        clock += second / 2 + random() % second;
        // Requests valid for 1 to 8 seconds, some of them retries of earlier ones.
        let requests = (0..1 + random() % 4)
            .map(|_| {
                let id = u128::from(random() % 300);
                let transfer = NewTransfer { id: 1 + id, ..NewTransfer::default() };
                let deadline = clock + (1 + random() % 8) * second;
                signed_request(9, 1, id, deadline, Operation::CreateTransfers(vec![transfer]), 0)
            })
            .collect();
        let batch = SignedBatch { timestamp: clock, log_index: index, requests };
        assert_eq!(ledger.apply_signed(&batch, &HashSignatures), reference.apply_signed(&batch, &HashSignatures));
        assert_eq!(ledger.digest(), reference.digest(), "entry {index}");
        assert_eq!(due(ledger.storage()), due(reference.storage()), "the window after entry {index}");
        match random() % 4 {
            0 if in_flight.is_none() => in_flight = ledger.storage_mut().begin_commit().map(|commit| commit.write()),
            1 => {
                if let Some(written) = in_flight.take() {
                    ledger.storage_mut().finish_commit(written);
                }
            }
            _ => {}
        }
    }
    if let Some(written) = in_flight.take() {
        ledger.storage_mut().finish_commit(written);
    }
    ledger.storage_mut().commit_deferred();
    drop(ledger);
    let reopened = StateMachine::open(RedbLedgerStore::open(&path, CACHE_BYTES_DEFAULT).unwrap());
    assert_eq!(reopened.digest(), reference.digest());
    assert_eq!(reopened.registry(), reference.registry(), "the registry is stored");
    assert_eq!(due(reopened.storage()), due(reference.storage()));
}
