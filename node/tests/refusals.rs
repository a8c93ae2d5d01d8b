//! What a replica refuses, and how: oversized messages, requests above the events limit, client
//! connections above their limit (while peers are still served), idle client connections, and data
//! directories of another cluster.

use std::time::Duration;

use tally_node::NodeConfig;
use tally_node::config::{GroupCommitSettings, Limits, Member, RaftSettings, StorageSettings};
use tally_proto::v1 as wire;
use tally_proto::v1::ledger_service_client::LedgerServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

fn config(directory: &std::path::Path, cluster_name: &str, address: std::net::SocketAddr) -> NodeConfig {
    NodeConfig {
        cluster_name: cluster_name.into(),
        node_id: 1,
        site: "a".into(),
        listen_address: address,
        advertise_address: address.to_string(),
        metrics_address: None,
        data_directory: directory.to_owned(),
        genesis_file: None,
        tls: None,
        insecure_plaintext: true,
        initial_members: vec![Member { id: 1, address: address.to_string(), site: "a".into() }],
        bootstrap: true,
        clock: None,
        raft_handle: None,
        raft: RaftSettings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            ..RaftSettings::default()
        },
        limits: Limits { message_bytes_max: 64 * 1024, ..Limits::default() },
        group_commit: GroupCommitSettings::default(),
        storage: StorageSettings {
            cache_bytes: 4 * 1024 * 1024,
            log_cache_bytes: 4 * 1024 * 1024,
            ..StorageSettings::default()
        },
        scheduling: Default::default(),
        memory: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_with_resource_exhausted() {
    let directory = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(tally_node::run(config(directory.path(), "refusals", address), listener, None, async {
        let _ = stopped.await;
    }));
    let mut client = LedgerServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap()
        .max_encoding_message_size(16 * 1024 * 1024);
    // About 30 bytes each: 8,000 of them are several times the 64 KiB limit.
    let transfers = (1..=8_000u128)
        .map(|id| wire::NewTransfer {
            id: tally_node::convert::uint128(id),
            amount: "1".into(),
            ledger: 1,
            code: 1,
            ..wire::NewTransfer::default()
        })
        .collect();
    let status = match client.create_transfers(wire::CreateTransfersRequest { transfers }).await {
        Ok(_) => panic!("an oversized request was accepted"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("message_bytes_max"), "{}", status.message());
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), node).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_cluster_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let first = tally_node::run(config(directory.path(), "first", address), listener, None, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    first.await.expect("the first cluster starts and stops cleanly");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let error =
        tally_node::run(config(directory.path(), "second", address), listener, None, async {}).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("belongs to node 1 of cluster \"first\""), "{message}");
    assert!(message.contains("refusing to start"), "{message}");
}

/// A single replica running in this process, stopped when dropped.
struct Running {
    address: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    node: tokio::task::JoinHandle<Result<(), tally_node::NodeError>>,
    _directory: tempfile::TempDir,
}

impl Running {
    async fn start(adjust: impl FnOnce(&mut NodeConfig)) -> Running {
        let directory = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut config = config(directory.path(), "bounds", address);
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let node = tokio::spawn(tally_node::run(config, listener, None, async {
            let _ = stopped.await;
        }));
        Running { address, stop: Some(stop), node, _directory: directory }
    }

    async fn client(&self) -> LedgerServiceClient<tonic::transport::Channel> {
        LedgerServiceClient::connect(format!("http://{}", self.address)).await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.node).await.unwrap().unwrap().unwrap();
    }
}

fn transfers(count: u128) -> Vec<wire::NewTransfer> {
    (1..=count)
        .map(|id| wire::NewTransfer {
            id: tally_node::convert::uint128(id),
            debit_account_id: tally_node::convert::uint128(1),
            credit_account_id: tally_node::convert::uint128(2),
            amount: "1".into(),
            ledger: 1,
            code: 1,
            ..wire::NewTransfer::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_above_events_per_batch_max_is_refused_and_one_at_the_limit_is_served() {
    let node = Running::start(|config| config.group_commit.events_per_batch_max = 4).await;
    let mut client = node.client().await;
    let status = client
        .create_transfers(wire::CreateTransfersRequest { transfers: transfers(5) })
        .await
        .expect_err("five events are above the limit of four");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("group_commit.events_per_batch_max"), "{}", status.message());
    // Four events are served: each gets its own result (the accounts do not exist).
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.create_transfers(wire::CreateTransfersRequest { transfers: transfers(4) }),
    )
    .await
    .unwrap()
    .expect("four events are within the limit")
    .into_inner();
    assert_eq!(answer.results.len(), 4);
    node.stop().await;
}

/// The HTTP/2 connection preface, which every gRPC client sends first.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 SETTINGS frame with no settings: length 0, type 4, no flags, stream 0.
const HTTP2_EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
/// The header of an HTTP/2 PING frame: length 8, type 6, no flags, stream 0 (8 bytes follow).
const HTTP2_PING_HEADER: [u8; 9] = [0, 0, 8, 6, 0, 0, 0, 0, 0];

/// Opens a client connection that says it is HTTP/2 and then sends nothing more.
async fn idle_client_connection(address: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(HTTP2_PREFACE).await.unwrap();
    stream
}

/// Reads until the replica closes the connection, or `within` passes; returns whether it closed.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 4096];
    let reads = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, reads).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_above_their_limit_are_closed_while_peers_are_still_served() {
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    let node = Running::start(|config| config.limits.client_connections_max = 2).await;
    let mut first = idle_client_connection(node.address).await;
    let mut second = idle_client_connection(node.address).await;
    // Let the replica accept both before the third arrives.
    assert!(!closed_within(&mut first, Duration::from_millis(300)).await, "the first client is within the limit");
    assert!(!closed_within(&mut second, Duration::from_millis(100)).await, "the second client is within the limit");
    let mut third = idle_client_connection(node.address).await;
    assert!(closed_within(&mut third, Duration::from_secs(5)).await, "the third client is above the limit");

    // The peer protocol has its own limit: a vote request is answered while clients are full.
    let peer = tally_consensus::types::PeerNode { address: node.address.to_string(), site: "a".into() };
    let peer_directory = tempfile::tempdir().unwrap();
    let incarnation = tally_consensus::peer_identity::Incarnation::random().unwrap();
    let identity = tally_consensus::peer_identity::PeerIdentity::open(
        peer_directory.path(),
        "bounds",
        2,
        incarnation,
        Default::default(),
    );
    let mut network = tally_consensus::network::PeerNetwork::new(
        std::sync::Arc::new(identity.unwrap()),
        Default::default(),
        tally_consensus::network::PeerTransport::Plaintext,
    );
    let mut peer_client = network.new_client(1, &peer).await;
    let request = openraft::raft::VoteRequest::new(openraft::Vote::new(0, 2), None);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        peer_client.vote(request, RPCOption::new(Duration::from_secs(5))),
    )
    .await
    .unwrap()
    .expect("the replica answers a peer while client connections are at their limit");
    assert!(!answer.vote_granted, "a vote from an older term is not granted");

    // A client slot freed is a client slot again.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = node.client().await;
    client.create_transfers(wire::CreateTransfersRequest { transfers: transfers(1) }).await.unwrap();
    drop((second, third, client));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_connection_is_closed_after_the_idle_timeout() {
    let node = Running::start(|config| {
        config.limits.request_timeout_ms = 200;
        config.limits.client_idle_timeout_ms = 600;
    })
    .await;
    let mut idle = idle_client_connection(node.address).await;
    assert!(!closed_within(&mut idle, Duration::from_millis(300)).await, "open before the idle timeout");
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "closed after the idle timeout");

    // A connection in use is not closed: HTTP/2 pings spaced closer than the timeout (each
    // answered by the replica) keep it open well past it.
    use tokio::io::AsyncWriteExt;
    let mut busy = idle_client_connection(node.address).await;
    busy.write_all(&HTTP2_EMPTY_SETTINGS).await.unwrap();
    for round in 0..5u8 {
        let mut ping = HTTP2_PING_HEADER.to_vec();
        ping.extend_from_slice(&[round; 8]);
        busy.write_all(&ping).await.unwrap();
        assert!(!closed_within(&mut busy, Duration::from_millis(300)).await, "closed while in use (round {round})");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_writes_below_the_free_space_floor_and_still_answers_reads() {
    // No file system has u64::MAX / 2 bytes free: the floor is crossed from the start.
    let node = Running::start(|config| config.storage.free_bytes_min = u64::MAX / 2).await;
    let mut client = node.client().await;
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        client.create_transfers(wire::CreateTransfersRequest { transfers: transfers(1) }),
    )
    .await
    .unwrap()
    .expect_err("a write below the floor is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("storage.free_bytes_min"), "{}", status.message());
    let read = client
        .lookup_accounts(wire::LookupRequest { ids: vec![tally_node::convert::uint128(1).unwrap()] })
        .await
        .expect("reads are still served");
    assert!(read.into_inner().accounts.iter().all(|account| !account.found), "nothing was written");
    node.stop().await;
}
