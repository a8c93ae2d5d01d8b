//! The cluster under faults, with real `tally-node` processes on 127.0.0.1: seven replicas over
//! three sites (a: 1-3, b: 4-6, c: 7).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_proto::v1 as wire;
use tally_tests::{LocalCluster, Settings, create_ledger_and_accounts, retry, serialised, transfer, uint128};

const SITES: [&str; 7] = ["a", "a", "a", "b", "b", "b", "c"];
const ACCOUNTS: u128 = 100;
const LEADER_WITHIN: Duration = Duration::from_secs(30);
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

/// Transfers of 1.00 between accounts chosen from the id, so every balance is predictable in sum.
fn transfers(first_id: u128, count: u128) -> Vec<wire::NewTransfer> {
    (first_id..first_id + count)
        .map(|id| {
            let debit = 1 + id % ACCOUNTS;
            let credit = 1 + (id * 7 + 3) % ACCOUNTS;
            let credit = if credit == debit { 1 + credit % ACCOUNTS } else { credit };
            transfer(id, debit, credit, "1.00")
        })
        .collect()
}

/// Sums posted debits and credits over all accounts, in cents, as seen through `via`.
async fn posted_totals(cluster: &LocalCluster, via: u64) -> (u128, u128) {
    let mut client = cluster.ledger(via).await;
    let window = wire::Window { limit: 8_190, ..wire::Window::default() };
    let page = client
        .query_accounts(wire::QueryRequest { window: Some(window), ..wire::QueryRequest::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.accounts.len() as u128, ACCOUNTS);
    let cents = |text: &str| text.replace('.', "").parse::<u128>().unwrap();
    page.accounts.iter().fold((0, 0), |(debits, credits), account| {
        (debits + cents(&account.debits_posted), credits + cents(&account.credits_posted))
    })
}

type Client = tally_tests::SignedLedger;

async fn clients(cluster: &LocalCluster, via: &[u64]) -> Vec<Client> {
    let mut clients = Vec::new();
    for id in via {
        clients.push(cluster.writer(*id).await);
    }
    clients
}

/// Sends `batches` concurrent requests of `per_request` transfers through the given clients,
/// retrying each with the same ids until it is acknowledged. Returns the acknowledged ids.
async fn write_until_acknowledged(clients: &[Client], first_id: u128, batches: u128, per_request: u128) -> Vec<u128> {
    let mut writers = Vec::new();
    for batch in 0..batches {
        let client = clients[batch as usize % clients.len()].clone();
        writers.push(tokio::spawn(async move {
            let first = first_id + batch * per_request;
            let events = transfers(first, per_request);
            let response = retry(|| {
                let mut client = client.clone();
                let events = events.clone();
                async move { client.create_transfers(wire::CreateTransfersRequest { transfers: events }).await }
            })
            .await;
            // `exists` means an earlier attempt was applied and acknowledged only now: still once.
            assert!(
                response
                    .results
                    .iter()
                    .all(|code| *code == wire::ResultCode::Ok as i32 || *code == wire::ResultCode::Exists as i32),
                "{:?}",
                response.results
            );
            (first..first + per_request).collect::<Vec<_>>()
        }));
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    acknowledged
}

async fn assert_all_present(cluster: &LocalCluster, via: u64, ids: &[u128]) {
    let mut client = cluster.ledger(via).await;
    for chunk in ids.chunks(8_190) {
        let request = wire::LookupRequest { ids: chunk.iter().map(|id| uint128(*id).unwrap()).collect() };
        let found = client.lookup_transfers(request).await.unwrap().into_inner();
        let missing: Vec<_> =
            found.transfers.iter().zip(chunk).filter(|(lookup, _)| !lookup.found).map(|(_, id)| *id).collect();
        assert!(missing.is_empty(), "acknowledged transfers missing: {missing:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_replicas_apply_ten_thousand_concurrent_transfers_identically() {
    let _turn = serialised().await;
    let cluster = LocalCluster::start(&SITES, Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;
    let acknowledged = write_until_acknowledged(&clients(&cluster, &cluster.ids()).await, 1, 100, 100).await;
    assert_eq!(acknowledged.len(), 10_000);
    let (applied, _) = cluster.wait_converged(&cluster.ids(), CONVERGE_WITHIN).await;
    assert!(applied > 0);
    let (debits, credits) = posted_totals(&cluster, 5).await;
    assert_eq!((debits, credits), (10_000 * 100, 10_000 * 100), "money is conserved and every transfer counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_transfer() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&SITES, Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;

    // Writers keep going, through the followers, while the leader is killed; each request is
    // retried with the same ids until acknowledged.
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let clients = clients(&cluster, &followers).await;
        let (acknowledged, killed, stop) = (Arc::clone(&acknowledged), Arc::clone(&killed), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut rounds_after_kill = 0;
            let mut round = 0u128;
            while !stop.load(Ordering::Relaxed) {
                let after_kill = killed.load(Ordering::Relaxed);
                let ids = write_until_acknowledged(&clients, 1 + round * 1_000, 10, 50).await;
                acknowledged.lock().unwrap().extend(ids);
                rounds_after_kill += u32::from(after_kill);
                round += 1;
            }
            rounds_after_kill
        })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let killed_at = Instant::now();
    cluster.kill(leader);
    killed.store(true, Ordering::Relaxed);
    let new_leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(failover < Duration::from_secs(15), "a new leader took {failover:?}");
    eprintln!("leader {leader} killed; replica {new_leader} leads after {failover:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let rounds_after_kill = load.await.unwrap();
    assert!(rounds_after_kill >= 2, "the load went on after the kill ({rounds_after_kill} rounds)");

    cluster.restart(leader);
    cluster.wait_converged(&cluster.ids(), CONVERGE_WITHIN).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!("{} transfers acknowledged, {rounds_after_kill} rounds of 500 after the kill", acknowledged.len());
    assert_all_present(&cluster, new_leader, &acknowledged).await;
    let (debits, credits) = posted_totals(&cluster, leader).await;
    let expected = acknowledged.iter().collect::<BTreeSet<_>>().len() as u128 * 100;
    assert_eq!((debits, credits), (expected, expected), "no retried transfer was applied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_site_keeps_writing_and_losing_a_majority_refuses_cleanly() {
    let _turn = serialised().await;
    let settings = Settings { request_timeout_ms: 3_000, ..Settings::default() };
    let mut cluster = LocalCluster::start(&SITES, settings);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;
    let before = write_until_acknowledged(&clients(&cluster, &cluster.ids()).await, 1, 10, 100).await;

    for id in cluster.ids_in_site("a") {
        cluster.kill(id);
    }
    let survivor_leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    assert!(cluster.ids_in_site("b").contains(&survivor_leader) || survivor_leader == 7);
    let during = write_until_acknowledged(&clients(&cluster, &cluster.running()).await, 10_001, 10, 100).await;
    assert_eq!(during.len(), 1_000, "writes continue with site a down");

    // A fourth replica down: three of seven cannot commit. The write fails with UNAVAILABLE
    // within its deadline, and is applied whole or not at all once the majority returns.
    cluster.kill(4);
    let mut client = cluster.writer(5).await;
    let refused_ids = transfers(20_001, 100);
    let started = Instant::now();
    let refused = client.create_transfers(wire::CreateTransfersRequest { transfers: refused_ids }).await;
    let waited = started.elapsed();
    let status = refused.expect_err("no majority, no acknowledgement");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(waited < Duration::from_secs(6), "the refusal took {waited:?}");

    for id in [1, 2, 3, 4] {
        cluster.restart(id);
    }
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    cluster.wait_converged(&cluster.ids(), CONVERGE_WITHIN).await;
    assert_all_present(&cluster, leader, &[before, during].concat()).await;
    let mut client = cluster.ledger(leader).await;
    let request = wire::LookupRequest { ids: (20_001..20_101).map(|id| uint128(id).unwrap()).collect() };
    let found = client.lookup_transfers(request).await.unwrap().into_inner();
    let present = found.transfers.iter().filter(|lookup| lookup.found).count();
    assert!(present == 0 || present == 100, "the refused request was applied partially: {present} of 100");
    let (debits, credits) = posted_totals(&cluster, leader).await;
    assert_eq!(debits, credits);
    assert_eq!(credits, (2_000 + present as u128) * 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_purged_log_catches_up_by_snapshot() {
    let _turn = serialised().await;
    let settings = Settings { snapshot_after_entries: 10, log_entries_kept_after_snapshot: 0, ..Settings::default() };
    let mut cluster = LocalCluster::start(&SITES, settings);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;
    let away = if leader == 7 { 6 } else { 7 };
    cluster.kill(away);
    // One request at a time: forty log entries, snapshots every ten (once the log has also grown by
    // the last snapshot's size), the log purged behind each. The policy looks at the log four times
    // a second, and forty writes take far less than that: a pause after every ten lets it see them.
    let clients = clients(&cluster, &[leader]).await;
    let mut written = Vec::new();
    for request in 0..40u128 {
        written.extend(write_until_acknowledged(&clients, 1 + request * 10, 1, 10).await);
        if request % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }
    cluster.restart(away);
    cluster.wait_converged(&cluster.ids(), CONVERGE_WITHIN).await;
    assert!(
        cluster.log_tail(away).contains("installed snapshot"),
        "replica {away} caught up without a snapshot:\n{}",
        cluster.log_tail(away)
    );
    assert_all_present(&cluster, away, &written).await;

    // A replica that stayed up has purged its own log behind its snapshots: after a SIGKILL it
    // must recover from its own snapshot and log, whatever its ledger store had made durable.
    let stayed = cluster.ids().into_iter().find(|id| *id != leader && *id != away).expect("a follower");
    cluster.kill(stayed);
    cluster.restart(stayed);
    cluster.wait_converged(&cluster.ids(), CONVERGE_WITHIN).await;
    assert_all_present(&cluster, stayed, &written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_are_added_promoted_and_voters_removed_while_serving() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let clients = clients(&cluster, &[2, 3]).await;
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut written = Vec::new();
            let mut round = 0u128;
            while !stop.load(Ordering::Relaxed) {
                written.extend(write_until_acknowledged(&clients, 1 + round * 1_000, 2, 50).await);
                round += 1;
            }
            written
        })
    };

    let learner = cluster.add_replica("b");
    let added = cluster.add_learner(2, learner, "b").await.expect("a learner is added through a follower");
    assert!(added.learners.contains(&learner));
    // Caught up: its replication lag, as the leader sees it, drops to (almost) nothing.
    cluster.wait_caught_up(2, learner, CONVERGE_WITHIN).await;
    let promoted = cluster.change_voters(2, &[1, 2, 3, learner], false).await.expect("the learner is promoted");
    assert_eq!(promoted.voters, vec![1, 2, 3, learner]);
    let removed = cluster.change_voters(2, &[2, 3, learner], false).await.expect("replica 1 is removed");
    assert_eq!(removed.voters, vec![2, 3, learner]);
    assert!(removed.learners.is_empty());
    let refused = cluster.change_voters(2, &[2, 99], false).await.unwrap_err();
    assert!(
        matches!(&refused, tally_client::Error::InvalidArgument(message) if message.contains("node 99 is not a member")),
        "{refused}"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let written = load.await.unwrap();
    cluster.kill(1);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    assert_ne!(leader, 1);
    cluster.wait_converged(&[2, 3, learner], CONVERGE_WITHIN).await;
    assert_all_present(&cluster, learner, &written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_replica_cleanly_and_it_rejoins() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let status = cluster.terminate(follower, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(cluster.log_tail(follower).contains("replica stopping"));
    let written = write_until_acknowledged(&clients(&cluster, &[leader]).await, 1, 2, 50).await;
    cluster.restart(follower);
    cluster.wait_converged(&cluster.ids(), CONVERGE_WITHIN).await;
    assert_all_present(&cluster, follower, &written).await;
}

/// The nice value of a process's session group, from `/proc/PID/autogroup` ("/autogroup-7 nice 5").
fn group_nice(pid: u32) -> Option<i32> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).ok()?;
    line.split_whitespace().last()?.parse().ok()
}

/// Waits until the leader's session group runs at nice 0 and every other running replica's at
/// `follower_nice`.
async fn wait_for_priorities(cluster: &LocalCluster, leader: u64, follower_nice: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: Vec<(u64, Option<i32>)> =
            cluster.running().into_iter().map(|id| (id, cluster.pid(id).and_then(group_nice))).collect();
        let expected = |id: u64| Some(if id == leader { 0 } else { follower_nice });
        if seen.iter().all(|(id, nice)| *nice == expected(*id)) {
            return;
        }
        assert!(Instant::now() < deadline, "leader {leader}: nice values {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_host_followers_yield_the_cpu_and_a_new_leader_takes_it_back() {
    if !std::path::Path::new("/proc/self/autogroup").exists() {
        eprintln!("this kernel has no session groups (autogroup): nothing to check");
        return;
    }
    let _turn = serialised().await;
    let settings = Settings { follower_nice: 5, ..Settings::default() };
    let mut cluster = LocalCluster::start(&["a", "b", "c"], settings);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    wait_for_priorities(&cluster, leader, 5).await;

    cluster.kill(leader);
    let successor = cluster.wait_for_leader(LEADER_WITHIN).await;
    assert_ne!(successor, leader);
    wait_for_priorities(&cluster, successor, 5).await;
}

/// A process's resident memory in bytes, from `/proc/PID/status`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the replica's status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|number| number.trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// A replica told to pretouch its memory holds it, resident, by the time it serves; one that is
/// not stays well below that. Under load the first would fault in no fresh pages until its working
/// set outgrows the budget (BENCHMARKS.md, issue 5, fifth round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_told_to_pretouch_its_memory_holds_it_before_it_serves() {
    const BUDGET: usize = 160 * 1024 * 1024;
    let _turn = serialised().await;
    let resident_once_leading = |settings: Settings| async move {
        let cluster = LocalCluster::start(&["a"], settings);
        cluster.wait_for_leader(LEADER_WITHIN).await;
        (resident_bytes(cluster.pid(1).expect("replica 1 runs")), cluster.log_tail(1))
    };
    let (plain, _) = resident_once_leading(Settings::default()).await;
    let (touched, log) = resident_once_leading(Settings { pretouch_bytes: BUDGET, ..Settings::default() }).await;
    assert!(plain < BUDGET as u64 / 2, "without pretouching, replica 1 already holds {plain} bytes");
    assert!(touched >= BUDGET as u64, "replica 1 holds {touched} bytes after pretouching {BUDGET}");
    assert!(log.contains("memory pretouched") && log.contains("mib=160"), "{log}");
}
