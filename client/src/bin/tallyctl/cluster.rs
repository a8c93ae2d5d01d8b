//! `tallyctl cluster`: status, membership, leadership and snapshots.

use std::io::IsTerminal;

use clap::Subcommand;
use serde_json::json;
use tally_client::{Client, ClusterStatus, Membership};

use crate::common::{Failure, Printer, usage, with_progress};
use crate::render;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every member: role, term, log and applied index, replication lag, digest.
    Status,
    /// Voters and learners.
    Members,
    /// Adds a learner (a non-voting member that catches up at once).
    AddLearner {
        #[arg(long)]
        node_id: u64,
        /// Its gRPC address, host:port.
        #[arg(long)]
        address: String,
        #[arg(long)]
        site: String,
    },
    /// Makes a caught-up learner a voter.
    Promote { node_id: u64 },
    /// Removes a member from the voters (and the cluster, unless --keep-as-learner).
    Remove {
        node_id: u64,
        #[arg(long)]
        keep_as_learner: bool,
    },
    /// Hands leadership to another voter.
    TransferLeader { node_id: u64 },
    /// Builds a snapshot now, on one member or on every reachable one.
    Snapshot {
        #[arg(long)]
        node_id: Option<u64>,
    },
}

pub async fn run(client: &Client, printer: &Printer, command: ClusterCommand) -> Result<(), Failure> {
    match command {
        ClusterCommand::Status => {
            let status = with_progress("asking every member", client.cluster_status()).await?;
            printer.print(render::cluster_status_json(&status), || render::cluster_status_table(&status));
            Ok(())
        }
        ClusterCommand::Members => members(client, printer).await,
        ClusterCommand::AddLearner { node_id, address, site } => {
            let membership = with_progress("adding the learner", client.add_learner(node_id, &address, &site)).await?;
            print_membership(printer, &membership);
            Ok(())
        }
        ClusterCommand::Promote { node_id } => promote(client, printer, node_id).await,
        ClusterCommand::Remove { node_id, keep_as_learner } => remove(client, printer, node_id, keep_as_learner).await,
        ClusterCommand::TransferLeader { node_id } => {
            let leader = with_progress("moving leadership", client.transfer_leader(node_id)).await?;
            printer.print(json!({ "leader_id": leader }), || format!("leader is now node {leader}"));
            Ok(())
        }
        ClusterCommand::Snapshot { node_id } => snapshot(client, printer, node_id).await,
    }
}

async fn members(client: &Client, printer: &Printer) -> Result<(), Failure> {
    let status = with_progress("asking every member", client.cluster_status()).await?;
    let voters: Vec<u64> = status.nodes.iter().filter(|node| node.voter).map(|node| node.id).collect();
    let learners: Vec<u64> = status.nodes.iter().filter(|node| !node.voter).map(|node| node.id).collect();
    let json = json!({ "leader_id": status.leader_id, "voters": voters, "learners": learners });
    printer.print(json, || {
        let rows = status
            .nodes
            .iter()
            .map(|node| {
                vec![
                    node.id.to_string(),
                    if node.voter { "voter" } else { "learner" }.to_owned(),
                    node.site.clone(),
                    node.address.clone(),
                    if node.id == status.leader_id { "leader" } else { "" }.to_owned(),
                ]
            })
            .collect();
        render::table(&["ID", "MEMBERSHIP", "SITE", "ADDRESS", ""], rows)
    });
    Ok(())
}

/// The cluster's status, once `node_id` is known to be a member.
async fn status_with_member(client: &Client, node_id: u64, hint: &str) -> Result<ClusterStatus, Failure> {
    let status = client.cluster_status().await?;
    if !status.nodes.iter().any(|node| node.id == node_id) {
        return Err(usage(format!("node {node_id} is not a member{hint}")));
    }
    Ok(status)
}

async fn promote(client: &Client, printer: &Printer, node_id: u64) -> Result<(), Failure> {
    let status = status_with_member(client, node_id, "; add it with `cluster add-learner` first").await?;
    let mut voters: Vec<u64> = status.nodes.iter().filter(|node| node.voter).map(|node| node.id).collect();
    if voters.contains(&node_id) {
        return Err(usage(format!("node {node_id} is already a voter")));
    }
    voters.push(node_id);
    let membership = with_progress("changing the voters", client.change_membership(&voters, true)).await?;
    print_membership(printer, &membership);
    Ok(())
}

async fn remove(client: &Client, printer: &Printer, node_id: u64, keep_as_learner: bool) -> Result<(), Failure> {
    let status = status_with_member(client, node_id, "").await?;
    let voters: Vec<u64> =
        status.nodes.iter().filter(|node| node.voter && node.id != node_id).map(|node| node.id).collect();
    let membership = with_progress("changing the voters", client.change_membership(&voters, keep_as_learner)).await?;
    print_membership(printer, &membership);
    Ok(())
}

async fn snapshot(client: &Client, printer: &Printer, node_id: Option<u64>) -> Result<(), Failure> {
    let status = client.cluster_status().await?;
    let targets: Vec<_> =
        status.nodes.iter().filter(|node| node.reachable && node_id.is_none_or(|id| id == node.id)).collect();
    if targets.is_empty() {
        return Err(match node_id {
            Some(id) => usage(format!("node {id} is not a reachable member")),
            None => usage("no member is reachable"),
        });
    }
    let bar = if std::io::stderr().is_terminal() && targets.len() > 1 {
        indicatif::ProgressBar::new(targets.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut built = Vec::new();
    for node in targets {
        bar.set_message(format!("node {}", node.id));
        let index = client.trigger_snapshot(&node.address).await?;
        built.push((node.id, index));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let snapshots: Vec<_> = built.iter().map(|(id, index)| json!({"node_id": id, "snapshot_index": index})).collect();
    printer.print(json!({ "snapshots": snapshots }), || {
        let rows = built.iter().map(|(id, index)| vec![id.to_string(), index.to_string()]).collect();
        render::table(&["NODE", "SNAPSHOT INDEX"], rows)
    });
    Ok(())
}

fn print_membership(printer: &Printer, membership: &Membership) {
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    printer.print(render::membership_json(membership), || {
        render::table(
            &["LEADER", "VOTERS", "LEARNERS", "LOG INDEX"],
            vec![vec![
                membership.leader_id.to_string(),
                ids(&membership.voters),
                ids(&membership.learners),
                membership.log_index.to_string(),
            ]],
        )
    });
}
