//! The ledger as openraft's state machine: batches applied through log entries, state that survives
//! a restart, and snapshots that move a whole ledger to a fresh replica.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};
use tally_consensus::raft_state_machine::{LedgerStateMachine, LedgerViews, consensus_record};
use tally_consensus::types::{ApplyResponse, Entry, LogPayload, PeerNode};
use tally_state_machine::codec::encode_batch;
use tally_state_machine::storage::suite::reference_batches;
use tally_state_machine::{Batch, ResultCode, StateMachine, StorageRead};

const CACHE_BYTES: usize = 8 * 1024 * 1024;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn batch_entry(index: u64, batch: &Batch) -> Entry {
    let mut bytes = Vec::new();
    encode_batch(batch, &mut bytes);
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(LogPayload::Batch(bytes)) }
}

fn membership_entry(index: u64) -> Entry {
    let nodes: BTreeMap<u64, PeerNode> =
        (1..=3).map(|id| (id, PeerNode { address: format!("127.0.0.1:{}", 7000 + id), site: "a".into() })).collect();
    let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
    Entry { log_id: log_id(index), payload: EntryPayload::Membership(membership) }
}

/// The entries of the reference workload, after a membership entry at index 1.
fn entries() -> Vec<Entry> {
    let mut entries = vec![membership_entry(1)];
    entries.extend(reference_batches().iter().enumerate().map(|(index, batch)| batch_entry(index as u64 + 2, batch)));
    entries
}

/// The in-memory ledger after the whole reference workload.
fn reference_ledger() -> StateMachine<tally_state_machine::MemoryStorage> {
    let mut reference = StateMachine::new();
    for batch in reference_batches() {
        reference.apply(&batch).unwrap();
    }
    reference
}

fn snapshot_bytes(ledger: &StateMachine<impl tally_state_machine::Storage>) -> Vec<u8> {
    let mut bytes = Vec::new();
    ledger.write_snapshot(&mut bytes).unwrap();
    bytes
}

#[tokio::test]
async fn applied_entries_answer_per_event_and_survive_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let reference = reference_ledger();
    let entries = entries();
    let last = entries.last().unwrap().log_id;
    {
        let mut machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
        let responses = machine.apply(entries).await.unwrap();
        assert_eq!(responses[0], ApplyResponse::NoOp);
        assert_eq!(responses[4], ApplyResponse::Expired { ids: vec![14] });
        let ApplyResponse::Created { results } = &responses[3] else { panic!("{:?}", responses[3]) };
        assert_eq!(results[2], ResultCode::ExceedsCredits as u8);
    }
    let mut reopened = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    let (applied, membership) = reopened.applied_state().await.unwrap();
    assert_eq!(applied, Some(last));
    assert_eq!(membership.log_id(), &Some(log_id(1)));
    assert_eq!(reopened.with_ledger(|ledger| ledger.digest()), reference.digest());
    assert_eq!(reopened.with_ledger(snapshot_bytes), snapshot_bytes(&reference));
}

/// A state machine that defers its commits for an hour: longer than any apply call here, however
/// slow the machine, so only what a test does commits.
fn deferring_machine(directory: &std::path::Path) -> (LedgerStateMachine, LedgerViews) {
    let mut machine = LedgerStateMachine::open(directory, CACHE_BYTES).unwrap();
    machine.defer_commits();
    let views = machine.views();
    views.set_deferred_age_max(Duration::from_secs(3_600));
    (machine, views)
}

#[tokio::test]
async fn deferred_batches_commit_when_a_reader_needs_them_or_when_old_enough() {
    let directory = tempfile::tempdir().unwrap();
    let (mut machine, views) = deferring_machine(directory.path());
    let mut entries = entries().into_iter();

    // The membership entry commits at once; the ledgers and accounts batches wait in the overlay.
    machine.apply(entries.by_ref().take(3)).await.unwrap();
    assert_eq!(machine.applied_state().await.unwrap().0, Some(log_id(3)));
    assert_eq!(views.committed_index(), Some(1));
    assert_eq!(consensus_record(&views.view()).applied, Some(log_id(1)));
    assert_eq!(views.view().meta_get().batches_applied, 0, "views see only committed batches");
    assert_eq!(machine.with_ledger(|ledger| ledger.batches_applied()), 2, "the ledger sees every applied batch");

    // A reader that needs index 3 gets it committed.
    let waited = tokio::time::timeout(Duration::from_secs(5), views.wait_committed(Some(3))).await;
    assert!(waited.is_ok(), "the reader's index was never committed");
    assert_eq!(views.committed_index(), Some(3));
    assert_eq!(views.view().meta_get().batches_applied, 2);

    // The transfers batch waits until it is older than asked for.
    machine.apply(entries.by_ref().take(1)).await.unwrap();
    views.commit_if_due();
    assert_eq!(views.committed_index(), Some(3));
    std::thread::sleep(Duration::from_millis(20));
    views.set_deferred_age_max(Duration::from_millis(10));
    views.commit_if_due();
    assert_eq!(views.committed_index(), Some(4));

    // The expiry batch commits what was deferred before it scans; the rest commits when asked.
    machine.apply(entries).await.unwrap();
    views.wait_committed(Some(6)).await;
    let reference = reference_ledger();
    assert_eq!(views.view().meta_get().digest, reference.digest());
    assert_eq!(machine.with_ledger(|ledger| ledger.digest()), reference.digest());
}

#[tokio::test]
async fn an_apply_call_commits_what_waited_longer_than_the_deferral_the_node_set() {
    let directory = tempfile::tempdir().unwrap();
    let (mut machine, views) = deferring_machine(directory.path());
    let mut entries = entries().into_iter();
    machine.apply(entries.by_ref().take(3)).await.unwrap();
    assert_eq!(views.committed_index(), Some(1), "the batches wait");
    views.set_deferred_age_max(Duration::ZERO);
    machine.apply(entries.by_ref().take(1)).await.unwrap();
    assert_eq!(views.committed_index(), Some(4), "the apply call commits everything that waited");
}

#[tokio::test]
async fn a_malformed_batch_is_refused_and_still_counts_as_applied() {
    let directory = tempfile::tempdir().unwrap();
    let mut machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    let garbage = Entry { log_id: log_id(1), payload: EntryPayload::Normal(LogPayload::Batch(vec![9, 9, 9])) };
    let responses = machine.apply([garbage]).await.unwrap();
    assert!(matches!(&responses[0], ApplyResponse::Refused { reason } if reason.contains("malformed batch")));
    assert_eq!(machine.applied_state().await.unwrap().0, Some(log_id(1)));
    assert_eq!(machine.with_ledger(|ledger| ledger.batches_applied()), 0);
}

#[tokio::test]
async fn a_snapshot_moves_the_whole_ledger_to_a_fresh_replica() {
    let source_directory = tempfile::tempdir().unwrap();
    let target_directory = tempfile::tempdir().unwrap();
    let mut entries = entries();
    let tail = entries.split_off(4); // expiry and the last transfers come after the snapshot
    let mut source = LedgerStateMachine::open(source_directory.path(), CACHE_BYTES).unwrap();
    source.apply(entries).await.unwrap();
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(4)));

    let mut target = LedgerStateMachine::open(target_directory.path(), CACHE_BYTES).unwrap();
    let mut receiving = target.begin_receiving_snapshot().await.unwrap();
    let mut sent = snapshot.snapshot;
    tokio::io::copy(&mut sent, &mut receiving).await.unwrap();
    target.install_snapshot(&snapshot.meta, receiving).await.unwrap();
    assert_eq!(target.applied_state().await.unwrap(), source.applied_state().await.unwrap());
    assert_eq!(target.with_ledger(snapshot_bytes), source.with_ledger(snapshot_bytes));

    // Both go on identically, and the target serves the snapshot it received to the next peer.
    source.apply(tail.clone()).await.unwrap();
    target.apply(tail).await.unwrap();
    assert_eq!(target.with_ledger(|ledger| ledger.digest()), source.with_ledger(|ledger| ledger.digest()));
    let current = target.get_current_snapshot().await.unwrap().expect("the installed snapshot is kept");
    assert_eq!(current.meta, snapshot.meta);
    drop(target);
    let reopened = LedgerStateMachine::open(target_directory.path(), CACHE_BYTES).unwrap();
    assert_eq!(
        reopened.with_ledger(|ledger| ledger.digest()),
        source.with_ledger(|ledger| ledger.digest()),
        "the installed store survives a restart"
    );
}

#[tokio::test]
async fn a_store_left_behind_its_own_snapshot_is_restored_from_it_at_open() {
    let directory = tempfile::tempdir().unwrap();
    let reference = reference_ledger();
    let entries = entries();
    let last = entries.last().unwrap().log_id;
    let ledger_file = directory.path().join("ledger.redb");
    let behind = directory.path().join("ledger-behind.redb");
    {
        let mut machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
        machine.apply(entries[..2].to_vec()).await.unwrap();
        drop(machine);
        std::fs::copy(&ledger_file, &behind).unwrap();
        let mut machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
        machine.apply(entries[2..].to_vec()).await.unwrap();
        let mut builder = machine.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(last));
    }
    // What a crash leaves when the store's last durable commit came before the snapshot (and the
    // log behind the snapshot may be purged): an older store beside a newer snapshot.
    std::fs::rename(&behind, &ledger_file).unwrap();
    let mut reopened = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    assert_eq!(reopened.applied_state().await.unwrap().0, Some(last), "restored up to the snapshot");
    assert_eq!(reopened.with_ledger(|ledger| ledger.digest()), reference.digest());
    assert_eq!(reopened.with_ledger(snapshot_bytes), snapshot_bytes(&reference));
}
