//! What a replica refuses, and how: oversized messages, and data directories of another cluster.

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
        initial_members: vec![Member { id: 1, address: address.to_string(), site: "a".into() }],
        raft: RaftSettings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            ..RaftSettings::default()
        },
        limits: Limits { message_bytes_max: 64 * 1024, ..Limits::default() },
        group_commit: GroupCommitSettings::default(),
        storage: StorageSettings { cache_bytes: 4 * 1024 * 1024, log_cache_bytes: 4 * 1024 * 1024 },
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
