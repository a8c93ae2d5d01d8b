//! Fail-stop: a panic on any thread of a replica (a broken invariant) ends the process with exit
//! code 1 and one line naming it, instead of leaving a replica that answers /health but no longer
//! takes part; the others go on, and it recovers from its log on restart.

use std::time::Duration;

use tally_tests::{LocalCluster, Settings, create_ledger_and_accounts, serialised, write_one_by_one};

const LEADER_WITHIN: Duration = Duration::from_secs(30);
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_replica_stops_it_with_one_line_and_the_cluster_goes_on() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, 2).await;
    write_one_by_one(&cluster, leader, 1, 5).await;
    let (applied, _) = cluster.wait_converged(&[1, 2, 3], CONVERGE_WITHIN).await;

    let follower = if leader == 3 { 2 } else { 3 };
    cluster.terminate(follower, Duration::from_secs(10));
    let at = (applied + 5).to_string();
    cluster.restart_with_environment(follower, &[("TALLY_TEST_PANIC_AT_APPLIED_INDEX", &at)]);
    write_one_by_one(&cluster, leader, 6, 20).await;
    let status = cluster.wait_exit(follower, Duration::from_secs(20));
    let log = cluster.log(follower);
    let status = status.unwrap_or_else(|| panic!("replica {follower} still runs after its panic:\n{log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    let fatal: Vec<&str> = log.lines().filter(|line| line.contains("fatal")).collect();
    assert_eq!(fatal.len(), 1, "one line names the failure: {fatal:?}");
    assert!(fatal[0].contains(&format!("injected panic at applied index {at}")), "{}", fatal[0]);
    assert!(fatal[0].contains("the replica stops"), "{}", fatal[0]);

    // The others go on; restarted without the fault, it recovers from its log and catches up.
    write_one_by_one(&cluster, leader, 26, 5).await;
    cluster.restart(follower);
    cluster.wait_converged(&[1, 2, 3], CONVERGE_WITHIN).await;
}
