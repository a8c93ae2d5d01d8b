//! A secured cluster's membership changes only as enough operators approve (maker-checker): the
//! admin API's direct membership calls are refused, an approval below the threshold changes
//! nothing, an approved change runs once (sent again it answers the membership it made), and a
//! change approved for one membership never runs in another.

use std::time::Duration;

use tally_client::Error;
use tally_client::registry::RegistryChange;
use tally_identity::{Algorithm, MlDsaKeyPair, Signer};
use tally_proto::v1 as wire;
use tally_tests::{LocalCluster, Settings, serialised};
use tonic::Code;

const LEADER_WITHIN: Duration = Duration::from_secs(30);
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

fn learners(status: &tally_client::ClusterStatus) -> Vec<u64> {
    status.nodes.iter().filter(|node| !node.voter).map(|node| node.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_only_as_enough_operators_approve_and_each_runs_once() {
    let _turn = serialised().await;
    let mut cluster = LocalCluster::start(&["a", "b", "c"], Settings::default());
    let leader = cluster.wait_for_leader(LEADER_WITHIN).await;
    let learner = cluster.add_replica("b");
    let client = cluster.client().await.with_deadline(Duration::from_secs(30));

    // The admin API's own membership calls are refused on a secured cluster, through a follower
    // as on the leader, and change nothing.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    for via in [leader, follower] {
        let mut admin = cluster.admin(via).await;
        let add = wire::AddLearnerRequest { node_id: learner, address: cluster.address(learner), site: "b".into() };
        let refused = admin.add_learner(add).await.expect_err("an unapproved learner");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
        assert!(
            refused.message().contains("this cluster is secured: a membership change needs 1 operator"),
            "{refused}"
        );
        let voters = wire::ChangeMembershipRequest { voters: vec![leader], retain_as_learners: false };
        let refused = admin.change_membership(voters).await.expect_err("unapproved voters");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    }

    // A second operator, and two approvals required from now on.
    let second = MlDsaKeyPair::from_seed(Algorithm::MlDsa87, &[29; 32]).unwrap();
    let add_operator = RegistryChange::AddOperator { operator: 2, key: second.public_key().clone() };
    client.change_registry(&cluster.certs().approved(&add_operator)).await.expect("operator 2 added");
    let raise = RegistryChange::SetApprovalsRequired { required: 2 };
    client.change_registry(&cluster.certs().approved(&raise)).await.expect("two approvals required");

    let before = client.cluster_status().await.unwrap();
    assert!(learners(&before).is_empty());
    let add = RegistryChange::AddLearner {
        node_id: learner,
        address: cluster.address(learner),
        site: "b".into(),
        membership_index: before.membership_index,
    };
    let mut proposed = cluster.certs().approved(&add);
    let refused = client.change_registry(&proposed).await.expect_err("one approval of two");
    assert!(
        matches!(&refused, Error::Unauthenticated(message) if message.contains("1 operator approvals, but a change needs 2")),
        "{refused}"
    );
    let status = client.cluster_status().await.unwrap();
    assert!(learners(&status).is_empty(), "a refused change adds no learner: {status:?}");
    assert_eq!(status.membership_index, before.membership_index);

    // With the second approval it runs, once, however many send it at the same time, to the leader
    // and to followers: one answer made it, every other says it was made before, with the same
    // membership.
    proposed.approve(2, &second).unwrap();
    let senders: Vec<_> = [leader, follower, leader, follower]
        .into_iter()
        .map(|via| {
            let endpoint = cluster.address(via);
            let security = cluster.security();
            let proposed = proposed.clone();
            tokio::spawn(async move {
                let client = tally_client::Client::connect(&[endpoint], security).await.unwrap();
                client.with_deadline(Duration::from_secs(30)).change_registry(&proposed).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for sender in senders {
        answers.push(sender.await.unwrap().expect("an approved learner"));
    }
    assert_eq!(answers.iter().filter(|answer| !answer.repeated).count(), 1, "{answers:?}");
    let membership = answers.iter().find(|answer| !answer.repeated).unwrap().membership.clone().unwrap();
    assert_eq!(membership.learners, vec![learner]);
    for answer in &answers {
        assert_eq!(answer.membership.as_ref().expect("the membership in force").learners, vec![learner]);
    }
    let again = client.change_registry(&proposed).await.expect("the same change again");
    assert!(again.repeated, "{again:?}");
    cluster.wait_caught_up(leader, learner, CONVERGE_WITHIN).await;

    // A change approved for the membership before the learner joined is refused, taking no log
    // entry; approved for the one in force, it runs.
    let stale = RegistryChange::ChangeVoters {
        voters: vec![1, 2, 3, learner],
        retain_as_learners: false,
        membership_index: before.membership_index,
    };
    let mut stale = cluster.certs().approved(&stale);
    stale.approve(2, &second).unwrap();
    let before_refusal = cluster.node_status(leader).await.unwrap();
    let refused = client.change_registry(&stale).await.expect_err("approved for another membership");
    assert!(
        matches!(&refused, Error::Server { code: Code::FailedPrecondition, message, .. }
            if message.contains(&format!("proposed against the membership of log index {}", before.membership_index))),
        "{refused}"
    );
    let after_refusal = cluster.node_status(leader).await.unwrap();
    // An election in between would add a blank entry of its own (none is expected in this test).
    if after_refusal.term == before_refusal.term {
        assert_eq!(after_refusal.last_log_index, before_refusal.last_log_index, "no entry for it");
    }
    let in_force = client.cluster_status().await.unwrap().membership_index;
    assert_eq!(in_force, membership.log_index);
    let promote = RegistryChange::ChangeVoters {
        voters: vec![1, 2, 3, learner],
        retain_as_learners: false,
        membership_index: in_force,
    };
    let mut promote = cluster.certs().approved(&promote);
    promote.approve(2, &second).unwrap();
    let promoted = client.change_registry(&promote).await.expect("the learner promoted");
    assert_eq!(promoted.membership.expect("the membership made").voters, vec![1, 2, 3, learner]);

    // Every replica applied every approval, refused or not, to one digest.
    cluster.wait_converged(&[1, 2, 3, learner], CONVERGE_WITHIN).await;

    // Back to a learner, kept; then out of the cluster. A learner is removed by name, not through
    // the voters (which leave it in place), and a voter cannot be removed so.
    let approved = |change: &RegistryChange| {
        let mut proposed = cluster.certs().approved(change);
        proposed.approve(2, &second).unwrap();
        proposed
    };
    let in_force = client.cluster_status().await.unwrap().membership_index;
    let remove_voter = RegistryChange::RemoveLearner { node_id: 1, membership_index: in_force };
    let refused = client.change_registry(&approved(&remove_voter)).await.expect_err("a voter is no learner");
    assert!(matches!(&refused, Error::InvalidArgument(message) if message.contains("node 1 is a voter")), "{refused}");
    let in_force = client.cluster_status().await.unwrap().membership_index;
    let demote =
        RegistryChange::ChangeVoters { voters: vec![1, 2, 3], retain_as_learners: true, membership_index: in_force };
    let demoted = client.change_registry(&approved(&demote)).await.expect("demoted").membership.unwrap();
    assert_eq!((demoted.voters, demoted.learners), (vec![1, 2, 3], vec![learner]));
    let in_force = client.cluster_status().await.unwrap().membership_index;
    let remove = RegistryChange::RemoveLearner { node_id: learner, membership_index: in_force };
    let removed = client.change_registry(&approved(&remove)).await.expect("removed").membership.unwrap();
    assert_eq!((removed.voters, removed.learners), (vec![1, 2, 3], vec![]));
    let status = client.cluster_status().await.unwrap();
    assert!(status.nodes.iter().all(|node| node.id != learner), "{status:?}");
}
