//! `tallyctl cluster`: status, membership, leadership and snapshots.
//!
//! On a secured cluster (one with a genesis) a membership change needs operators' approval, as a
//! registry change does: `add-learner`, `promote` and `remove` propose it, against the membership
//! in force, into a file (`--out`) that operators approve (`tallyctl registry approve`) and anyone
//! sends (`tallyctl registry submit`); where one approval is enough, an operator approves and
//! sends it at once (`--operator`, `--operator-key`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use tally_client::registry::{ProposedChange, RegistryChange};
use tally_client::{Client, ClusterStatus, Error, Membership};
use tally_identity::ClusterId;

use crate::common::{Failure, Printer, refuse_existing, usage, with_progress, write_new};
use crate::render;

/// How a membership change is approved on a secured cluster.
#[derive(Debug, Args)]
pub struct MembershipApproval {
    /// Write the change into this new proposal file, for operators to approve
    /// (`tallyctl registry approve`) and send (`tallyctl registry submit`).
    #[arg(long, conflicts_with = "operator")]
    out: Option<PathBuf>,
    /// Approve the change as this operator and send it at once (when one approval is enough).
    #[arg(long, requires = "operator_key")]
    operator: Option<u64>,
    /// The operator's sealed ML-DSA-87 key.
    #[arg(long, requires = "operator")]
    operator_key: Option<PathBuf>,
    /// A file whose first line is the operator key's passphrase (default: $TALLY_KEY_PASSPHRASE).
    #[arg(long, requires = "operator")]
    passphrase_file: Option<PathBuf>,
    /// How long the proposal may wait for its approvals, in hours, at most 24.
    #[arg(long, default_value_t = 1.0)]
    valid_hours: f64,
}

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
        #[command(flatten)]
        approval: MembershipApproval,
    },
    /// Makes a caught-up learner a voter.
    Promote {
        node_id: u64,
        #[command(flatten)]
        approval: MembershipApproval,
    },
    /// Removes a member from the voters (and the cluster, unless --keep-as-learner).
    Remove {
        node_id: u64,
        #[arg(long)]
        keep_as_learner: bool,
        #[command(flatten)]
        approval: MembershipApproval,
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
        ClusterCommand::AddLearner { node_id, address, site, approval } => {
            approval.check()?;
            let change = |membership_index| RegistryChange::AddLearner {
                node_id,
                address: address.clone(),
                site: site.clone(),
                membership_index,
            };
            let direct = async || client.add_learner(node_id, &address, &site).await;
            change_membership(client, printer, &approval, "adding the learner", None, change, direct).await
        }
        ClusterCommand::Promote { node_id, approval } => promote(client, printer, node_id, approval).await,
        ClusterCommand::Remove { node_id, keep_as_learner, approval } => {
            remove(client, printer, node_id, keep_as_learner, approval).await
        }
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

async fn promote(
    client: &Client,
    printer: &Printer,
    node_id: u64,
    approval: MembershipApproval,
) -> Result<(), Failure> {
    approval.check()?;
    let status = status_with_member(client, node_id, "; add it with `cluster add-learner` first").await?;
    let mut voters: Vec<u64> = status.nodes.iter().filter(|node| node.voter).map(|node| node.id).collect();
    if voters.contains(&node_id) {
        return Err(usage(format!("node {node_id} is already a voter")));
    }
    voters.push(node_id);
    voters.sort_unstable();
    change_voters(client, printer, &approval, &status, voters, true).await
}

async fn remove(
    client: &Client,
    printer: &Printer,
    node_id: u64,
    keep_as_learner: bool,
    approval: MembershipApproval,
) -> Result<(), Failure> {
    approval.check()?;
    let status = status_with_member(client, node_id, "").await?;
    if status.nodes.iter().any(|node| node.id == node_id && !node.voter) {
        if keep_as_learner {
            return Err(usage(format!("node {node_id} is a learner already")));
        }
        let change = |membership_index| RegistryChange::RemoveLearner { node_id, membership_index };
        let direct = async || {
            Err(Error::Usage(format!(
                "node {node_id} is a learner: only a secured cluster (one with a genesis) removes a learner; on this \
                 one, promote it and remove it as a voter"
            )))
        };
        return change_membership(client, printer, &approval, "removing the learner", Some(&status), change, direct)
            .await;
    }
    let voters: Vec<u64> =
        status.nodes.iter().filter(|node| node.voter && node.id != node_id).map(|node| node.id).collect();
    change_voters(client, printer, &approval, &status, voters, keep_as_learner).await
}

async fn change_voters(
    client: &Client,
    printer: &Printer,
    approval: &MembershipApproval,
    status: &ClusterStatus,
    voters: Vec<u64>,
    retain_as_learners: bool,
) -> Result<(), Failure> {
    let change = |membership_index| RegistryChange::ChangeVoters {
        voters: voters.clone(),
        retain_as_learners,
        membership_index,
    };
    let direct = async || client.change_membership(&voters, retain_as_learners).await;
    change_membership(client, printer, approval, "changing the voters", Some(status), change, direct).await
}

impl MembershipApproval {
    /// What can be refused before the cluster is asked anything.
    fn check(&self) -> Result<(), Failure> {
        if let Some(out) = &self.out {
            refuse_existing(std::slice::from_ref(out))?;
        }
        if !(self.valid_hours.is_finite() && self.valid_hours > 0.0 && self.valid_hours <= 24.0) {
            return Err(usage(format!("--valid-hours: {} is not in (0, 24]", self.valid_hours)));
        }
        Ok(())
    }
}

/// The cluster's key registry, or `None` for a cluster without a genesis (whose membership
/// changes without approvals).
async fn registry_if_secured(client: &Client) -> Result<Option<tally_proto::v1::Registry>, Failure> {
    match client.registry().await {
        Ok(registry) => Ok(Some(registry)),
        Err(Error::Server { code: tonic::Code::FailedPrecondition, message, .. }) if message.contains("no genesis") => {
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// Makes a membership change: at once on a cluster without a genesis (`direct`); on a secured
/// one, as a change proposed against the membership in force, into a file or approved and sent.
async fn change_membership(
    client: &Client,
    printer: &Printer,
    approval: &MembershipApproval,
    what: &str,
    status: Option<&ClusterStatus>,
    change: impl FnOnce(u64) -> RegistryChange,
    direct: impl AsyncFnOnce() -> Result<Membership, Error>,
) -> Result<(), Failure> {
    let Some(registry) = registry_if_secured(client).await? else {
        if approval.out.is_some() || approval.operator.is_some() {
            return Err(usage(
                "this cluster has no genesis: its membership changes without approvals; leave out --out and --operator",
            ));
        }
        let membership = with_progress(what, direct()).await?;
        print_membership(printer, &membership);
        return Ok(());
    };
    let required = registry.operator_approvals_required;
    if approval.out.is_none() && approval.operator.is_none() {
        return Err(usage(format!(
            "this cluster is secured: a membership change needs {required} operator approval(s); pass --out FILE to \
             propose it for approval, or --operator and --operator-key to approve it and send it at once"
        )));
    }
    if approval.operator.is_some() && required > 1 {
        return Err(usage(format!(
            "this cluster requires {required} operators' approvals: propose the change with --out FILE, have each \
             operator run `tallyctl registry approve FILE`, then `tallyctl registry submit FILE`"
        )));
    }
    let membership_index = match status {
        Some(status) => status.membership_index,
        None => client.cluster_status().await?.membership_index,
    };
    let cluster = <[u8; 16]>::try_from(registry.cluster_id.as_slice())
        .map(ClusterId)
        .map_err(|_| Failure::from(Error::Protocol("the registry's cluster id is not 16 bytes".into())))?;
    let validity = Duration::from_secs_f64(approval.valid_hours * 3600.0);
    let mut proposed = ProposedChange::new(cluster, &change(membership_index), validity).map_err(Failure::from)?;
    if let Some(out) = &approval.out {
        write_new(out, proposed.to_json().as_bytes(), false)?;
        crate::registry::print_proposal(printer, &proposed, out);
        return Ok(());
    }
    let (Some(operator), Some(key)) = (approval.operator, &approval.operator_key) else {
        unreachable!("clap requires --operator-key with --operator")
    };
    let key = crate::registry::operator_key(key, approval.passphrase_file.as_deref())?;
    proposed.approve(operator, &key).map_err(Failure::from)?;
    let applied = with_progress(what, client.change_registry(&proposed)).await?;
    let membership = applied.membership.ok_or_else(|| {
        Failure::from(Error::Protocol("a membership change was answered without the membership".into()))
    })?;
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
