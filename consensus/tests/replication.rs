//! Replicas in one process, each with its own redb files, talking openraft over the peer protocol on
//! 127.0.0.1: batches written through the leader reach every replica with the same digest, and a
//! replica that was away while the log was purged catches up by snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, SnapshotPolicy};
use tally_consensus::clock::SystemClock;
use tally_consensus::log_store::{LOG_CACHE_BYTES_DEFAULT, RedbLogStore};
use tally_consensus::network::{PeerNetwork, PeerServerLimits, PeerTransport, serve_peer_connection};
use tally_consensus::peer_identity::{Incarnation, PeerIdentity};
use tally_consensus::raft_state_machine::{LedgerStateMachine, LedgerViews, consensus_record};
use tally_consensus::type_config::TypeConfig;
use tally_consensus::types::{ApplyResponse, LogPayload, PeerNode};
use tally_state_machine::codec::encode_batch;
use tally_state_machine::storage::suite::reference_batches;
use tally_state_machine::{Batch, NewTransfer, Operation, StateMachine, StorageRead};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const CACHE_BYTES: usize = 8 * 1024 * 1024;
const WAIT: Option<Duration> = Some(Duration::from_secs(20));

struct Replica {
    raft: Raft<TypeConfig>,
    views: LedgerViews,
    stop_server: Option<oneshot::Sender<()>>,
    _directory: tempfile::TempDir,
}

fn config(snapshot_after_entries: u64) -> Arc<Config> {
    let config = Config {
        cluster_name: "tally-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        max_payload_entries: 16,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_after_entries),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        snapshot_max_chunk_size: 64 * 1024,
        ..Config::default()
    };
    Arc::new(config.validate().expect("a valid config"))
}

async fn reserve() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

async fn start(id: u64, listener: TcpListener, config: Arc<Config>) -> Replica {
    let directory = tempfile::tempdir().unwrap();
    let log = RedbLogStore::open(&directory.path().join("raft-log.redb"), LOG_CACHE_BYTES_DEFAULT).unwrap();
    let state_machine = LedgerStateMachine::open(directory.path(), CACHE_BYTES).unwrap();
    let views = state_machine.views();
    let incarnation = Incarnation::random().unwrap();
    let identity =
        Arc::new(PeerIdentity::open(directory.path(), "replication", id, incarnation, log.held_index()).unwrap());
    let raft = Raft::new(
        id,
        config,
        PeerNetwork::new(Arc::clone(&identity), Default::default(), PeerTransport::Plaintext),
        log,
        state_machine,
    )
    .await
    .unwrap();
    let (stop_server, mut stopped) = oneshot::channel::<()>();
    let serving = raft.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted.unwrap();
                    let limits = PeerServerLimits { snapshot_bytes_max: u64::MAX };
                    let (serving, identity) = (serving.clone(), Arc::clone(&identity));
                    tokio::spawn(async move { serve_peer_connection(stream, None, serving, &identity, &SystemClock, limits).await });
                }
                _ = &mut stopped => return,
            }
        }
    });
    Replica { raft, views, stop_server: Some(stop_server), _directory: directory }
}

impl Replica {
    async fn stop(mut self) {
        self.raft.shutdown().await.unwrap();
        let _ = self.stop_server.take().map(|stop| stop.send(()));
    }
}

fn members(addresses: &[String]) -> BTreeMap<u64, PeerNode> {
    addresses
        .iter()
        .enumerate()
        .map(|(index, address)| (index as u64 + 1, PeerNode { address: address.clone(), site: "a".into() }))
        .collect()
}

async fn leader(replicas: &[&Replica]) -> Raft<TypeConfig> {
    let metrics = replicas[0].raft.wait(WAIT).metrics(|m| m.current_leader.is_some(), "a leader").await.unwrap();
    let leader = metrics.current_leader.unwrap();
    replicas
        .iter()
        .find(|replica| replica.raft.metrics().borrow().id == leader)
        .expect("the leader is ours")
        .raft
        .clone()
}

async fn write(leader: &Raft<TypeConfig>, batch: &Batch) -> (u64, ApplyResponse) {
    let mut bytes = Vec::new();
    encode_batch(batch, &mut bytes);
    let written = leader.client_write(LogPayload::Batch(bytes)).await.expect("a committed write");
    (written.log_id.index, written.data)
}

/// More transfer batches on top of the reference workload's accounts, with fresh ids.
fn more_batches(count: u64, after: u64) -> Vec<Batch> {
    (0..count)
        .map(|round| {
            let transfers = (0..50u128)
                .map(|index| NewTransfer {
                    id: 10_000 + u128::from(round) * 100 + index,
                    debit_account_id: 1,
                    credit_account_id: 3,
                    amount: Some(tally_state_machine::Decimal::new(1, 2)),
                    ledger: 1,
                    code: 1,
                    ..NewTransfer::default()
                })
                .collect();
            Batch::new(after + (round + 1) * 1_000_000, Operation::CreateTransfers(transfers))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_applies_the_same_batches_to_the_same_digest() {
    let mut listeners = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..3 {
        let (listener, address) = reserve().await;
        listeners.push(listener);
        addresses.push(address);
    }
    let config = config(10_000);
    let mut replicas = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        replicas.push(start(index as u64 + 1, listener, Arc::clone(&config)).await);
    }
    replicas[0].raft.initialize(members(&addresses)).await.unwrap();
    let leader = leader(&replicas.iter().collect::<Vec<_>>()).await;

    let mut reference = StateMachine::new();
    let mut last_index = 0;
    for batch in reference_batches() {
        let expected = reference.apply(&batch).unwrap();
        let (index, response) = write(&leader, &batch).await;
        last_index = index;
        match (expected, response) {
            (tally_state_machine::BatchOutcome::Created(codes), ApplyResponse::Created { results }) => {
                assert_eq!(results, codes.iter().map(|code| *code as u8).collect::<Vec<_>>());
            }
            (tally_state_machine::BatchOutcome::Expired(ids), ApplyResponse::Expired { ids: got }) => {
                assert_eq!(got, ids)
            }
            (expected, got) => panic!("expected {expected:?}, got {got:?}"),
        }
    }
    for replica in &replicas {
        replica.raft.wait(WAIT).applied_index(Some(last_index), "applied everything").await.unwrap();
        let view = replica.views.view();
        assert_eq!(
            view.meta_get().digest,
            reference.digest(),
            "replica {} diverged",
            replica.raft.metrics().borrow().id
        );
        assert_eq!(consensus_record(&view).applied.map(|log_id| log_id.index), Some(last_index));
    }
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_purged_log_catches_up_by_snapshot() {
    let mut listeners = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..3 {
        let (listener, address) = reserve().await;
        listeners.push(listener);
        addresses.push(address);
    }
    let late_listener = listeners.pop().unwrap();
    let config = config(4);
    let first = start(1, listeners.remove(0), Arc::clone(&config)).await;
    let second = start(2, listeners.remove(0), Arc::clone(&config)).await;
    // Replica 3 is a member from the start but does not run yet: two of three carry on.
    first.raft.initialize(members(&addresses)).await.unwrap();
    let leader = leader(&[&first, &second]).await;
    let mut reference = StateMachine::new();
    let mut batches = reference_batches();
    let last_timestamp = batches.last().unwrap().timestamp;
    batches.extend(more_batches(12, last_timestamp));
    let mut last_index = 0;
    for batch in &batches {
        reference.apply(batch).unwrap();
        last_index = write(&leader, batch).await.0;
    }
    let purged = leader.wait(WAIT).metrics(|m| m.purged.is_some_and(|purged| purged.index > 2), "log purged").await;
    assert!(purged.is_ok(), "the leader purged its log behind a snapshot");

    let late = start(3, late_listener, Arc::clone(&config)).await;
    late.raft.wait(WAIT).applied_index(Some(last_index), "caught up").await.expect("the late replica catches up");
    let snapshot = late.raft.metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "it caught up by installing a snapshot");
    assert_eq!(late.views.view().meta_get().digest, reference.digest());
    for replica in [first, second, late] {
        replica.stop().await;
    }
}
