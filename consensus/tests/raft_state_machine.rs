//! The ledger as openraft's state machine: batches applied through log entries, state that survives
//! a restart, checkpoints, and snapshots that move a whole ledger to a fresh replica.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};
use tally_consensus::raft_state_machine::{LedgerStateMachine, LedgerViews, consensus_record};
use tally_consensus::type_config::Entry;
use tally_consensus::types::{ApplyResponse, LogPayload, PeerNode};
use tally_state_machine::codec::encode_batch;
use tally_state_machine::storage::suite::reference_batches;
use tally_state_machine::{Batch, ResultCode, StateMachine, StorageRead};
use tokio::io::AsyncReadExt;

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

/// The commit runs on its own right after the apply call hands back its responses (so that call's
/// clients do not wait for it): no reader, ticker or later apply call is needed.
#[tokio::test]
async fn an_apply_call_gets_what_waited_longer_than_the_deferral_committed() {
    let directory = tempfile::tempdir().unwrap();
    let (mut machine, views) = deferring_machine(directory.path());
    let mut entries = entries().into_iter();
    machine.apply(entries.by_ref().take(3)).await.unwrap();
    assert_eq!(views.committed_index(), Some(1), "the batches wait");
    views.set_deferred_age_max(Duration::ZERO);
    machine.apply(entries.by_ref().take(1)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while views.committed_index() != Some(4) {
        assert!(std::time::Instant::now() < deadline, "what waited was never committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(views.view().meta_get().batches_applied, 3, "views see every batch applied");
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
    // The received file itself is kept as the target's snapshot: nothing else is left beside it.
    let kept: Vec<_> = std::fs::read_dir(target_directory.path().join("snapshots")).unwrap().collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(LedgerStateMachine::snapshot_files(target_directory.path()).unwrap().len(), 1);
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

async fn read_to_end(mut data: Box<tally_consensus::snapshot::SnapshotData>) -> Vec<u8> {
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes).await.unwrap();
    bytes
}

#[tokio::test]
async fn a_checkpoint_writes_no_file_and_a_peer_that_reads_the_snapshot_gets_one_shared_file() {
    let directory = tempfile::tempdir().unwrap();
    let mut entries = entries();
    let tail = entries.split_off(4);
    let mut machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    assert!(machine.get_current_snapshot().await.unwrap().is_none(), "no snapshot before the first checkpoint");
    machine.apply(entries).await.unwrap();
    let checkpoint = machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(checkpoint.meta.last_log_id, Some(log_id(4)));
    drop(checkpoint.snapshot);
    let files = || LedgerStateMachine::snapshot_files(directory.path()).unwrap();
    assert!(files().is_empty(), "a checkpoint writes no snapshot file: {:?}", files());

    // Later entries: a peer that needs the ledger gets it as applied now, at a new checkpoint.
    let last = tail.last().unwrap().log_id;
    machine.apply(tail).await.unwrap();
    let first = machine.get_current_snapshot().await.unwrap().expect("a snapshot after a checkpoint");
    let second = machine.get_current_snapshot().await.unwrap().expect("a snapshot after a checkpoint");
    assert_eq!(first.meta.last_log_id, Some(last));
    assert_eq!(second.meta, first.meta, "readers at the same time share one snapshot");
    assert!(files().is_empty(), "written only when read");
    let (first_bytes, first_again) = tokio::join!(read_to_end(first.snapshot), async {
        let again = machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(again.meta, first.meta);
        read_to_end(again.snapshot).await
    });
    assert_eq!(first_again, first_bytes);
    assert_eq!(files().len(), 1, "one file for every reader");

    // It restores to the ledger the machine holds.
    let target_directory = tempfile::tempdir().unwrap();
    let mut target = LedgerStateMachine::open(target_directory.path(), CACHE_BYTES).unwrap();
    let mut receiving = target.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut receiving, &first_bytes).await.unwrap();
    target.install_snapshot(&first.meta, receiving).await.unwrap();
    assert_eq!(target.with_ledger(snapshot_bytes), machine.with_ledger(snapshot_bytes));

    // A newer checkpoint: the file no longer serves (the log behind the newer one may be gone), a
    // newer one replaces it, and a reader of the older snapshot that starts only now still reads
    // the older one whole.
    machine.apply(vec![batch_entry(last.index + 1, &reference_batches()[0])]).await.unwrap();
    machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let newer = machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(newer.meta.last_log_id, Some(log_id(last.index + 1)));
    let newer_bytes = read_to_end(newer.snapshot).await;
    assert_ne!(newer_bytes, first_bytes);
    assert_eq!(files().len(), 1, "the newer file replaced the older one");
    assert_eq!(read_to_end(second.snapshot).await, first_bytes);

    // A checkpoint survives a restart: the reopened replica still has a snapshot to offer, at
    // least as new as the checkpoint.
    drop(machine);
    let mut reopened = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    let offered = reopened.get_current_snapshot().await.unwrap().expect("the checkpoint survives a restart");
    assert_eq!(offered.meta, newer.meta);
}

#[tokio::test]
async fn a_snapshot_is_written_by_the_senders_first_seek_and_read_from_offsets() {
    let directory = tempfile::tempdir().unwrap();
    let mut machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    machine.apply(entries()).await.unwrap();
    machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let snapshot = machine.get_current_snapshot().await.unwrap().unwrap();
    // openraft's sender: seek to the end for the size, then read chunks from offsets.
    let mut data = snapshot.snapshot;
    let size = tokio::io::AsyncSeekExt::seek(&mut data, std::io::SeekFrom::End(0)).await.unwrap();
    assert_eq!(LedgerStateMachine::snapshot_files(directory.path()).unwrap().len(), 1);
    let mut sent = Vec::new();
    for offset in (0..size).step_by(1000) {
        tokio::io::AsyncSeekExt::seek(&mut data, std::io::SeekFrom::Start(offset)).await.unwrap();
        let mut chunk = vec![0u8; usize::try_from((size - offset).min(1000)).unwrap()];
        data.read_exact(&mut chunk).await.unwrap();
        sent.extend(chunk);
    }
    assert_eq!(u64::try_from(sent.len()).unwrap(), size);

    let target_directory = tempfile::tempdir().unwrap();
    let mut target = LedgerStateMachine::open(target_directory.path(), CACHE_BYTES).unwrap();
    let mut receiving = target.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut receiving, &sent).await.unwrap();
    target.install_snapshot(&snapshot.meta, receiving).await.unwrap();
    assert_eq!(target.with_ledger(snapshot_bytes), snapshot_bytes(&reference_ledger()));
}

#[tokio::test]
async fn a_store_left_behind_its_newest_snapshot_file_is_restored_from_it_at_open() {
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
        read_to_end(snapshot.snapshot).await; // a peer reads it: the file is written
    }
    // What a crash between installing a received snapshot and moving its store into place leaves
    // (the log behind the snapshot may be purged): an older store beside a newer snapshot file.
    std::fs::rename(&behind, &ledger_file).unwrap();
    let mut reopened = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    assert_eq!(reopened.applied_state().await.unwrap().0, Some(last), "restored up to the snapshot");
    assert_eq!(reopened.with_ledger(|ledger| ledger.digest()), reference.digest());
    assert_eq!(reopened.with_ledger(snapshot_bytes), snapshot_bytes(&reference));
}
