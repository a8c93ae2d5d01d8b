//! Three replicas in this process, over real gRPC on 127.0.0.1: the gateway, forwarding, group
//! commit, linearizable reads, admin status and metrics, end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tally_consensus::raft_state_machine::LedgerStateMachine;
use tally_node::NodeConfig;
use tally_node::clock::{Clock, SystemClock};
use tally_node::config::{GroupCommitSettings, Limits, Member, RaftSettings, StorageSettings};
use tally_proto::v1 as wire;
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

struct Cluster {
    addresses: Vec<String>,
    metrics_addresses: Vec<String>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), tally_node::NodeError>>>,
    /// Each replica's wall clock, which a test may set ahead or behind.
    clocks: Vec<Arc<SkewedClock>>,
    directory: tempfile::TempDir,
}

/// The system clock plus a skew the test sets.
#[derive(Debug, Default)]
struct SkewedClock {
    skew_nanoseconds: AtomicI64,
}

impl SkewedClock {
    fn set_skew(&self, skew: Duration) {
        self.skew_nanoseconds.store(i64::try_from(skew.as_nanos()).unwrap(), Ordering::SeqCst);
    }
}

impl Clock for SkewedClock {
    fn now_nanoseconds(&self) -> u64 {
        let now = i64::try_from(SystemClock.now_nanoseconds()).unwrap();
        u64::try_from(now + self.skew_nanoseconds.load(Ordering::SeqCst)).unwrap()
    }
}

async fn start_cluster(size: u64) -> Cluster {
    start_cluster_with(size, RaftSettings::default()).await
}

/// A cluster of `size` replicas with `raft` settings (their timeouts shortened for tests).
async fn start_cluster_with(size: u64, raft: RaftSettings) -> Cluster {
    start_cluster_configured(size, raft, GroupCommitSettings::default()).await
}

async fn start_cluster_configured(size: u64, raft: RaftSettings, group_commit: GroupCommitSettings) -> Cluster {
    let directory = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..size {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.push((grpc, metrics));
    }
    let addresses: Vec<String> = listeners.iter().map(|(grpc, _)| grpc.local_addr().unwrap().to_string()).collect();
    let metrics_addresses = listeners.iter().map(|(_, metrics)| metrics.local_addr().unwrap().to_string()).collect();
    let members: Vec<Member> = addresses
        .iter()
        .enumerate()
        .map(|(index, address)| Member {
            id: index as u64 + 1,
            address: address.clone(),
            site: format!("site-{}", index % 2),
        })
        .collect();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let clocks: Vec<Arc<SkewedClock>> = (0..size).map(|_| Arc::default()).collect();
    for (index, (grpc, metrics)) in listeners.into_iter().enumerate() {
        let config = NodeConfig {
            cluster_name: "in-process".into(),
            node_id: index as u64 + 1,
            site: members[index].site.clone(),
            listen_address: grpc.local_addr().unwrap(),
            advertise_address: addresses[index].clone(),
            metrics_address: Some(metrics.local_addr().unwrap()),
            data_directory: directory.path().join(format!("node-{}", index + 1)),
            genesis_file: None,
            tls: None,
            insecure_plaintext: true,
            initial_members: members.clone(),
            bootstrap: index == 0,
            clock: Some(Arc::clone(&clocks[index]) as Arc<dyn Clock>),
            raft_handle: None,
            raft: RaftSettings {
                heartbeat_interval_ms: 50,
                election_timeout_min_ms: 300,
                election_timeout_max_ms: 600,
                ..raft.clone()
            },
            limits: Limits { request_timeout_ms: 5_000, ..Limits::default() },
            group_commit: group_commit.clone(),
            storage: StorageSettings {
                cache_bytes: 8 * 1024 * 1024,
                log_cache_bytes: 8 * 1024 * 1024,
                ..StorageSettings::default()
            },
            scheduling: Default::default(),
            memory: Default::default(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        tasks.push(tokio::spawn(tally_node::run(config, grpc, Some(metrics), async {
            let _ = stopped.await;
        })));
    }
    Cluster { addresses, metrics_addresses, stops, tasks, clocks, directory }
}

impl Cluster {
    async fn ledger(&self, index: usize) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::connect(format!("http://{}", self.addresses[index])).await.unwrap()
    }

    async fn admin(&self, index: usize) -> AdminServiceClient<Channel> {
        AdminServiceClient::connect(format!("http://{}", self.addresses[index])).await.unwrap()
    }

    async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            let outcome = tokio::time::timeout(Duration::from_secs(10), task).await.expect("a replica stops in time");
            outcome.unwrap().expect("a replica stops cleanly");
        }
    }
}

fn id(value: u128) -> Option<wire::Uint128> {
    tally_node::convert::uint128(value)
}

fn transfer(transfer_id: u128, debit: u128, credit: u128, amount: &str) -> wire::NewTransfer {
    wire::NewTransfer {
        id: id(transfer_id),
        debit_account_id: id(debit),
        credit_account_id: id(credit),
        amount: amount.into(),
        ledger: 1,
        code: 1,
        ..wire::NewTransfer::default()
    }
}

/// Ledger 1 (EUR) with accounts 1 and 2, through the first replica; returns its client.
async fn ledger_with_two_accounts(cluster: &Cluster) -> LedgerServiceClient<Channel> {
    let mut client = cluster.ledger(0).await;
    let ledgers = vec![wire::NewLedger { id: 1, currency: "EUR".into(), scale: 2, ..wire::NewLedger::default() }];
    client.create_ledgers(wire::CreateLedgersRequest { ledgers }).await.unwrap();
    let accounts =
        (1..=2u128).map(|account| wire::NewAccount { id: id(account), ledger: 1, code: 10, ..Default::default() });
    client.create_accounts(wire::CreateAccountsRequest { accounts: accounts.collect() }).await.unwrap();
    client
}

/// Request `request` of 100 transfers of 0.01 from account 1 to account 2; their result codes.
async fn hundred_transfers(client: &mut LedgerServiceClient<Channel>, request: u128) -> Vec<i32> {
    let transfers = (0..100u128).map(|index| transfer(10_000 + request * 100 + index, 1, 2, "0.01")).collect();
    client.create_transfers(wire::CreateTransfersRequest { transfers }).await.unwrap().into_inner().results
}

fn ok_codes(count: usize) -> Vec<i32> {
    vec![wire::ResultCode::Ok as i32; count]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_writes_and_reads_through_any_replica() {
    let cluster = start_cluster(3).await;
    let mut follower_or_leader = cluster.ledger(1).await;
    let created = follower_or_leader
        .create_ledgers(wire::CreateLedgersRequest {
            ledgers: vec![wire::NewLedger { id: 1, currency: "EUR".into(), scale: 2, ..wire::NewLedger::default() }],
        })
        .await
        .expect("a ledger is created through any replica")
        .into_inner();
    assert_eq!(created.results, ok_codes(1));
    let header = created.header.unwrap();
    assert_ne!(header.leader_id, 0, "the response names the leader");

    let accounts = (1..=3u128)
        .map(|account| wire::NewAccount {
            id: id(account),
            ledger: 1,
            code: 10,
            flags: if account == 2 { 2 } else { 0 },
            ..wire::NewAccount::default()
        })
        .collect();
    let mut third = cluster.ledger(2).await;
    let created = third.create_accounts(wire::CreateAccountsRequest { accounts }).await.unwrap().into_inner();
    assert_eq!(created.results, ok_codes(3));

    // Concurrent writers through different replicas: group commit and forwarding at once.
    let mut writers = Vec::new();
    for writer in 0..6u128 {
        let mut client = cluster.ledger((writer % 3) as usize).await;
        writers.push(tokio::spawn(async move {
            let transfers = (0..50u128).map(|index| transfer(1_000 + writer * 100 + index, 1, 3, "1.25")).collect();
            client.create_transfers(wire::CreateTransfersRequest { transfers }).await.unwrap().into_inner().results
        }));
    }
    for writer in writers {
        assert_eq!(writer.await.unwrap(), ok_codes(50));
    }
    // A failure with its code, and a retry that reports `exists` and moves nothing.
    let overdraft = vec![transfer(5_000, 2, 3, "0.01")];
    let codes = third
        .create_transfers(wire::CreateTransfersRequest { transfers: overdraft })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(codes, vec![wire::ResultCode::ExceedsCredits as i32]);
    let retried = vec![transfer(1_000, 1, 3, "1.25")];
    let codes =
        third.create_transfers(wire::CreateTransfersRequest { transfers: retried }).await.unwrap().into_inner().results;
    assert_eq!(codes, vec![wire::ResultCode::Exists as i32]);

    // Right after its answers, the leader's status already shows every write applied: the status
    // commits what waits in the ledger store's overlay before reading it.
    let status = cluster.admin(0).await.cluster_status(wire::ClusterStatusRequest {}).await.unwrap().into_inner();
    let leader = status.nodes.iter().find(|node| node.role == wire::Role::Leader as i32).expect("a leader");
    assert_eq!(leader.applied_index, leader.last_log_index, "the leader's status lags what it applied");

    // Reads are linearizable from any replica: every acknowledged write is visible.
    for index in 0..3 {
        let mut client = cluster.ledger(index).await;
        let found =
            client.lookup_accounts(wire::LookupRequest { ids: vec![id(3).unwrap()] }).await.unwrap().into_inner();
        let account = found.accounts[0].account.clone().unwrap();
        assert_eq!(account.credits_posted, "375.00", "replica {index} sees all 300 transfers of 1.25");
    }

    // Bad input names the field and changes nothing.
    let bad = vec![wire::NewTransfer { amount: "12,50".into(), ..transfer(6_000, 1, 3, "") }];
    let status = third.create_transfers(wire::CreateTransfersRequest { transfers: bad }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("transfers[0].amount"), "{}", status.message());

    let mut admin = cluster.admin(0).await;
    // Every replica reaches the same applied index and digest.
    let mut converged = false;
    for _ in 0..50 {
        let status = admin.cluster_status(wire::ClusterStatusRequest {}).await.unwrap().into_inner();
        assert_eq!(status.nodes.len(), 3);
        let first = &status.nodes[0];
        if status
            .nodes
            .iter()
            .all(|node| node.reachable && node.applied_index == first.applied_index && node.digest == first.digest)
        {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(converged, "replicas converge on one applied index and digest");

    let metrics = reqwest_like_get(&cluster.metrics_addresses[0], "/metrics").await;
    assert!(metrics.contains("tally_requests_total"), "{metrics}");
    assert!(metrics.contains("tally_peer_requests_total{method=\"append_entries\"}"), "{metrics}");
    assert!(metrics.contains("tally_raft_term"));
    assert!(reqwest_like_get(&cluster.metrics_addresses[0], "/ready").await.contains("ready"));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_snapshots_when_its_log_grows_by_the_byte_limit() {
    // Entries of 100 transfers (about 13 KB each): the entry-count policy (20,000) never fires
    // here, the byte limit does after a handful of requests.
    let raft = RaftSettings { snapshot_after_log_bytes: 64 * 1024, ..RaftSettings::default() };
    let cluster = start_cluster_with(1, raft).await;
    let snapshot_index = || async {
        let metrics = reqwest_like_get(&cluster.metrics_addresses[0], "/metrics").await;
        let line = metrics.lines().find(|line| line.starts_with("tally_snapshot_index ")).map(str::to_owned);
        line.map_or(0.0, |line| line["tally_snapshot_index ".len()..].trim().parse::<f64>().unwrap())
    };
    let mut client = ledger_with_two_accounts(&cluster).await;
    for request in 0..3 {
        assert_eq!(hundred_transfers(&mut client, request).await, ok_codes(100));
    }
    // 300 transfers: about 40 KB of log, under the limit.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(snapshot_index().await, 0.0, "a snapshot before the log reached the limit");
    for request in 3..8 {
        assert_eq!(hundred_transfers(&mut client, request).await, ok_codes(100));
    }
    let mut built = false;
    for _ in 0..100 {
        if snapshot_index().await > 0.0 {
            built = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(built, "no snapshot after the log grew past raft.snapshot_after_log_bytes");
    let files = LedgerStateMachine::snapshot_files(&cluster.directory.path().join("node-1")).unwrap();
    assert!(files.is_empty(), "the snapshot is a checkpoint; no peer asked for a file: {files:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_is_proposed_at_once_whatever_the_linger() {
    // A linger far longer than the test: a request that waited for it would hit its deadline.
    let group_commit = GroupCommitSettings { linger_us: 60_000_000, ..GroupCommitSettings::default() };
    let cluster = start_cluster_configured(1, RaftSettings::default(), group_commit).await;
    let mut client = ledger_with_two_accounts(&cluster).await;
    for request in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(hundred_transfers(&mut client, request).await, ok_codes(100));
        assert!(started.elapsed() < Duration::from_secs(5), "a lone request waited {:?}", started.elapsed());
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_expires_a_pending_transfer_when_its_timeout_passes() {
    let cluster = start_cluster(1).await;
    let mut client = ledger_with_two_accounts(&cluster).await;
    let pending = wire::NewTransfer { flags: 2, timeout_seconds: 1, ..transfer(1, 1, 2, "5.00") };
    let codes = client.create_transfers(wire::CreateTransfersRequest { transfers: vec![pending] }).await.unwrap();
    assert_eq!(codes.into_inner().results, ok_codes(1));

    // Nobody posts or voids it: the leader's expiry ticker proposes the release on its own.
    let mut released = false;
    for _ in 0..60 {
        let found = client.lookup_accounts(wire::LookupRequest { ids: vec![id(1).unwrap()] }).await.unwrap();
        let account = found.into_inner().accounts[0].account.clone().unwrap();
        if account.debits_pending == "0.00" {
            released = true;
            break;
        }
        assert_eq!(account.debits_pending, "5.00");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the pending transfer was not expired within 6 s of a 1 s timeout");
    let metrics = reqwest_like_get(&cluster.metrics_addresses[0], "/metrics").await;
    assert!(metrics.contains("tally_pending_transfers_expired_total 1"), "{metrics}");
    cluster.stop().await;
}

/// A minimal HTTP/1.0 GET, enough for the metrics endpoint.
async fn reqwest_like_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// A request carrying the mark a replica puts on a call it forwards.
fn marked<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-tally-forwarded", tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// A call marked as forwarded is never forwarded again: a follower that receives one (its sender's
/// view of the leader was stale) answers UNAVAILABLE naming the leader, for admin calls as for
/// ledger calls, and the same calls unmarked are forwarded once and served by the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_is_not_forwarded_again() {
    let cluster = start_cluster(3).await;
    let mut admin = cluster.admin(0).await;
    let leader = loop {
        let status = admin.cluster_status(wire::ClusterStatusRequest {}).await.unwrap().into_inner();
        if status.leader_id != 0 {
            break status.leader_id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Replica ids are their index + 1.
    let follower = (0..3).find(|index| *index as u64 + 1 != leader).unwrap();
    let learner = wire::AddLearnerRequest { node_id: 9, address: "127.0.0.1:9".into(), site: "x".into() };
    let mut follower_admin = cluster.admin(follower).await;
    let refused = follower_admin.add_learner(marked(learner.clone())).await.expect_err("not forwarded twice");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(refused.message().contains(&format!("the leader is {leader}")), "{}", refused.message());
    let voters = wire::ChangeMembershipRequest { voters: vec![1, 2, 3], retain_as_learners: false };
    let refused = follower_admin.change_membership(marked(voters)).await.expect_err("not forwarded twice");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");

    let mut follower_ledger = cluster.ledger(follower).await;
    let ledger = wire::NewLedger { id: 1, currency: "EUR".into(), scale: 2, ..wire::NewLedger::default() };
    let refused = follower_ledger
        .create_ledgers(marked(wire::CreateLedgersRequest { ledgers: vec![ledger.clone()] }))
        .await
        .expect_err("not forwarded twice");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");

    // Unmarked, the follower forwards each once and the leader serves it.
    let added = follower_admin.add_learner(learner).await.expect("forwarded to the leader").into_inner();
    assert_eq!(added.leader_id, leader);
    assert!(added.learners.contains(&9), "{added:?}");
    let created = follower_ledger
        .create_ledgers(wire::CreateLedgersRequest { ledgers: vec![ledger] })
        .await
        .expect("forwarded to the leader")
        .into_inner();
    assert_eq!(created.results, ok_codes(1));
    cluster.stop().await;
}

/// The cluster's leader as replica `index` knows it, once there is one.
async fn leader_seen_by(cluster: &Cluster, index: usize, other_than: u64) -> u64 {
    let mut admin = cluster.admin(index).await;
    for _ in 0..100 {
        let status = admin.node_status(wire::NodeStatusRequest {}).await.unwrap().into_inner();
        if status.leader_id != 0 && status.leader_id != other_than {
            return status.leader_id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replica {} saw no leader other than {other_than} within 10 s", index + 1);
}

/// Cluster time is the leader's clock: a leader an hour or two ahead would expire every pending
/// transfer at once. One whose clock disagrees with a majority's proposes nothing and hands on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_clock_runs_ahead_of_the_majority_proposes_nothing_and_steps_down() {
    let cluster = start_cluster(3).await;
    let mut client = ledger_with_two_accounts(&cluster).await;
    let pending = wire::NewTransfer { flags: 2, timeout_seconds: 1_800, ..transfer(1, 1, 2, "5.00") };
    let codes = client.create_transfers(wire::CreateTransfersRequest { transfers: vec![pending] }).await.unwrap();
    assert_eq!(codes.into_inner().results, ok_codes(1));
    let leader = leader_seen_by(&cluster, 0, 0).await;
    let leader_index = usize::try_from(leader - 1).unwrap();

    // Clocks that agree: the leader's status shows each member's small offset.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = cluster.admin(leader_index).await.cluster_status(wire::ClusterStatusRequest {}).await.unwrap();
    for node in status.into_inner().nodes.iter().filter(|node| node.id != leader) {
        let offset = node.clock_offset_ms.unwrap_or_else(|| panic!("no clock offset for node {}", node.id));
        assert!(offset.abs() < 200, "node {}: {offset} ms", node.id);
    }

    // The leader's clock jumps two hours ahead, past the pending transfer's 30 minutes.
    cluster.clocks[leader_index].set_skew(Duration::from_secs(2 * 3_600));
    let follower_index = (0..3).find(|index| *index != leader_index).unwrap();
    let successor = leader_seen_by(&cluster, follower_index, leader).await;
    assert_ne!(successor, leader);
    let successor_index = usize::try_from(successor - 1).unwrap();

    // Nothing expired: the skewed leader proposed no expiry, and its successor's clock is right.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut via_successor = cluster.ledger(successor_index).await;
    let found = via_successor.lookup_accounts(wire::LookupRequest { ids: vec![id(1).unwrap()] }).await.unwrap();
    assert_eq!(found.into_inner().accounts[0].account.clone().unwrap().debits_pending, "5.00");
    // Writes go on, through the skewed replica too (it forwards to the new leader).
    let mut via_skewed = cluster.ledger(leader_index).await;
    let written = via_skewed
        .create_transfers(wire::CreateTransfersRequest { transfers: vec![transfer(2, 1, 2, "1.00")] })
        .await
        .expect("a write through the skewed replica reaches the new leader");
    assert_eq!(written.into_inner().results, ok_codes(1));
    // The new leader sees the skewed member two hours ahead; the old one counted its step-down.
    let status = cluster.admin(successor_index).await.cluster_status(wire::ClusterStatusRequest {}).await.unwrap();
    let skewed = status.into_inner().nodes.into_iter().find(|node| node.id == leader).unwrap();
    let offset = skewed.clock_offset_ms.expect("an offset for the skewed member");
    assert!((offset - 7_200_000).abs() < 1_000, "{offset} ms");
    let metrics = reqwest_like_get(&cluster.metrics_addresses[leader_index], "/metrics").await;
    assert!(metrics.contains("tally_clock_step_downs_total"), "{metrics}");
    assert!(metrics.contains("tally_clock_offset_seconds{peer="), "{metrics}");
    cluster.stop().await;
}
