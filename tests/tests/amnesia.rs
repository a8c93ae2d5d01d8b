//! No amnesia: a replica restarted under its old id on an empty data directory (a lost volume) or
//! an older copy of it (a restored backup) never takes part again; it is refused by its peers and
//! stops, naming the replacement procedure, which works. Bootstrapping is explicit, so a wiped
//! lowest id starts no second cluster.

use std::time::Duration;

use tally_proto::v1 as wire;
use tally_tests::{LocalCluster, Settings, create_ledger_and_accounts, serialised, uint128, write_one_by_one};

const ACCOUNTS: u128 = 10;
const LEADER_WITHIN: Duration = Duration::from_secs(30);
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// A wiped replica is refused on its first peer connection, which comes within a heartbeat or an
/// election timeout; then its health check (every 250 ms) stops it.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// Account 2's posted credits through `via`, in whole units.
async fn credited(cluster: &LocalCluster, via: u64) -> String {
    let mut client = cluster.ledger(via).await;
    let request = wire::LookupRequest { ids: vec![uint128(2).unwrap()] };
    let accounts = client.lookup_accounts(request).await.unwrap().into_inner().accounts;
    accounts[0].account.as_ref().expect("account 2 exists").credits_posted.clone()
}

/// Restarts replica `id` on an empty data directory and waits for it to stop, refused.
fn assert_refused_after_wipe(cluster: &mut LocalCluster, id: u64, bootstrapping: bool) {
    cluster.kill(id);
    cluster.wipe(id);
    if bootstrapping {
        cluster.restart_bootstrapping(id);
    } else {
        cluster.restart(id);
    }
    assert_refused(cluster, id);
}

/// Waits for a restarted replica to stop, refused, with a log line that names the replacement.
fn assert_refused(cluster: &mut LocalCluster, id: u64) {
    let status = cluster.wait_exit(id, REFUSED_WITHIN);
    let log = cluster.log(id);
    let status = status.unwrap_or_else(|| panic!("wiped replica {id} still runs; its log:\n{log}"));
    assert_eq!(status.code(), Some(1), "a refused replica exits 1; its log:\n{log}");
    assert!(log.contains("must not take part under its old id"), "{log}");
    assert!(log.contains(&format!("tallyctl cluster remove {id}")), "the log names the replacement procedure:\n{log}");
    assert!(log.contains("under a new node id"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_is_refused_and_its_replacement_under_a_new_id_joins() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;
    write_one_by_one(&cluster, leader, 1, 20).await;
    let wiped = if leader == 3 { 2 } else { 3 };
    cluster.wait_converged(&[1, 2, 3], CONVERGE_WITHIN).await;

    assert_refused_after_wipe(&mut cluster, wiped, false);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    write_one_by_one(&cluster, leader, 21, 10).await;
    assert_eq!(credited(&cluster, leader).await, "30.00");

    // The documented replacement: remove the old id, add a new one as a learner, promote it.
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != wiped).collect();
    let removed = cluster.change_voters(leader, &survivors, false).await.expect("the wiped replica is removed");
    assert_eq!(removed.voters, survivors);
    let replacement = cluster.add_replica("c");
    cluster.add_learner(leader, replacement, "c").await.expect("the replacement is added as a learner");
    cluster.wait_caught_up(leader, replacement, CONVERGE_WITHIN).await;
    let voters = [survivors.clone(), vec![replacement]].concat();
    let promoted = cluster.change_voters(leader, &voters, false).await.expect("the replacement is promoted");
    assert_eq!(promoted.voters, voters);
    write_one_by_one(&cluster, leader, 31, 10).await;
    cluster.wait_converged(&voters, CONVERGE_WITHIN).await;
    assert_eq!(credited(&cluster, replacement).await, "40.00");

    // With the replacement a voter, one of the old ones can go down: the majority holds.
    let down = survivors.into_iter().find(|id| *id != leader).unwrap();
    cluster.kill(down);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    write_one_by_one(&cluster, leader, 41, 5).await;
    assert_eq!(credited(&cluster, replacement).await, "45.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_lowest_id_starts_no_second_cluster_even_when_told_to_bootstrap() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;
    write_one_by_one(&cluster, leader, 1, 20).await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE_WITHIN).await;

    // As a script that does not pass --bootstrap would restart it.
    assert_refused_after_wipe(&mut cluster, 1, false);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    assert_ne!(leader, 1);
    write_one_by_one(&cluster, leader, 21, 5).await;

    // An operator who passes --bootstrap on every start: node 1 makes itself a new cluster's
    // member, but its peers refuse it as soon as it asks for their votes.
    assert_refused_after_wipe(&mut cluster, 1, true);
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    write_one_by_one(&cluster, leader, 26, 5).await;
    cluster.wait_converged(&[2, 3], CONVERGE_WITHIN).await;
    assert_eq!(credited(&cluster, 2).await, "30.00");
    assert_eq!(credited(&cluster, 3).await, "30.00");
}

fn copy_directory(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_directory(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_of_a_data_directory_is_refused() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    create_ledger_and_accounts(&cluster, leader, ACCOUNTS).await;
    write_one_by_one(&cluster, leader, 1, 10).await;
    let copied = if leader == 3 { 2 } else { 3 };
    cluster.wait_converged(&[1, 2, 3], CONVERGE_WITHIN).await;

    // A backup of the follower's directory, taken while it was stopped; it rejoins (a restart on
    // its own directory is never refused) and acknowledges more.
    let backup = tempfile::tempdir().unwrap();
    cluster.terminate(copied, Duration::from_secs(10));
    copy_directory(&cluster.data_directory(copied), backup.path());
    cluster.restart(copied);
    write_one_by_one(&cluster, leader, 11, 30).await;
    cluster.wait_converged(&[1, 2, 3], CONVERGE_WITHIN).await;
    // Two of the leader's once-a-second records of what its members acknowledged.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(cluster.pid(copied).is_some() && cluster.node_status(copied).await.is_some(), "{}", cluster.log(copied));

    // The volume is restored from the backup: same incarnation, fewer entries than acknowledged.
    cluster.kill(copied);
    cluster.wipe(copied);
    copy_directory(backup.path(), &cluster.data_directory(copied));
    cluster.restart(copied);
    assert_refused(&mut cluster, copied);
    assert!(cluster.log(copied).contains("older copy"), "{}", cluster.log(copied));
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    write_one_by_one(&cluster, leader, 41, 5).await;
    assert_eq!(credited(&cluster, leader).await, "45.00");
}
