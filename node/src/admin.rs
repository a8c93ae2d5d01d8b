//! The `AdminService`: status for operators, membership changes and the key registry.
//!
//! Membership changes run on the leader (a follower forwards them) and one at a time: concurrent
//! changes can leave a joint configuration in place. On a secured cluster (one with a genesis) a
//! membership change is a registry change like any other, approved by operators: its approval goes
//! through the log first, so that every replica checks it, and the leader makes the change in
//! Raft's membership once the approval applied, only while the membership it was proposed against
//! is still in force ([`membership_standing`]). Leadership is handed over by asking the target to
//! start an election; it wins when its log is up to date, which the caller can check first in the
//! cluster status (replication lag 0).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{ChangeMembers, ServerState};
use tally_consensus::raft_state_machine::consensus_record;
use tally_consensus::types::PeerNode;
use tally_proto::v1 as wire;
use tally_proto::v1::admin_service_client::AdminServiceClient;
use tally_proto::v1::admin_service_server::AdminService;
use tally_state_machine::StorageRead;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::gateway::Gateway;
use crate::group_commit::Events;
use crate::replica::{FORWARDED, Leader, PRINCIPAL, Replica, forwarded, principal_of};
use crate::signed;
use tally_state_machine::registry::{KeyStatus, Permissions, Registry, RegistryChange};

/// How long cluster status waits for each member.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a snapshot requested by an operator may take before the call returns.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// How long a status request waits for applied batches to be committed to the ledger store.
const STATUS_COMMIT_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Admin {
    replica: Arc<Replica>,
    site: String,
    membership_changes: Arc<Mutex<()>>,
    /// Registry changes go through the log like every write.
    gateway: Gateway,
}

impl Admin {
    pub fn new(replica: Arc<Replica>, site: String, gateway: Gateway) -> Admin {
        Admin { replica, site, membership_changes: Arc::new(Mutex::new(())), gateway }
    }

    fn secured(&self) -> Result<Arc<Registry>, Status> {
        self.replica.views.registry().ok_or_else(|| {
            Status::failed_precondition("this cluster has no genesis, so no key registry (start it with a genesis)")
        })
    }

    async fn local_status(&self) -> wire::NodeStatus {
        let metrics = self.replica.raft.metrics().borrow().clone();
        // Report what this replica has applied, with its digest there: batches waiting in the
        // ledger store's overlay are committed first (briefly; an overloaded replica reports what
        // its store holds).
        let applied = metrics.last_applied.map(|log_id| log_id.index);
        let _ = tokio::time::timeout(STATUS_COMMIT_WAIT, self.replica.views.wait_committed(applied)).await;
        let view = self.replica.views.view();
        let membership = metrics.membership_config.membership();
        let role = match metrics.state {
            ServerState::Leader => wire::Role::Leader,
            ServerState::Candidate => wire::Role::Candidate,
            ServerState::Shutdown => wire::Role::Shutdown,
            ServerState::Follower | ServerState::Learner if !membership.voter_ids().any(|id| id == metrics.id) => {
                wire::Role::Learner
            }
            ServerState::Follower | ServerState::Learner => wire::Role::Follower,
        };
        wire::NodeStatus {
            id: metrics.id,
            address: membership.get_node(&metrics.id).map(|node| node.address.clone()).unwrap_or_default(),
            site: self.site.clone(),
            role: role as i32,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: consensus_record(&view).applied.map_or(0, |log_id| log_id.index),
            digest: view.meta_get().digest.to_vec(),
            leader_id: metrics.current_leader.unwrap_or(0),
            replication_lag: None,
            clock_offset_ms: None,
            reachable: true,
            error: String::new(),
            voter: membership.voter_ids().any(|id| id == metrics.id),
        }
    }

    fn client(&self, address: &str) -> Result<AdminServiceClient<tonic::transport::Channel>, Status> {
        Ok(AdminServiceClient::new(self.replica.channel(address)?))
    }

    /// Runs a membership change on the leader, or forwards it there once
    /// ([`Replica::on_leader`]); changes run one at a time (openraft refuses a second while one is
    /// under way).
    async fn change_on_leader<Req, F, Fut>(
        &self,
        request: Request<Req>,
        change: impl AsyncFnOnce(Req) -> Result<wire::MembershipResponse, Status>,
        forward: F,
    ) -> Result<Response<wire::MembershipResponse>, Status>
    where
        F: FnOnce(AdminServiceClient<tonic::transport::Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<wire::MembershipResponse>, Status>>,
    {
        let local = async |request: Request<Req>, _deadline| {
            let _serialised = self.membership_changes.lock().await;
            change(request.into_inner()).await.map(Response::new)
        };
        self.replica.on_leader(request, |address| self.client(address), forward, local).await
    }

    fn membership_response(&self, log_index: u64) -> wire::MembershipResponse {
        let metrics = self.replica.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners = membership.nodes().map(|(id, _)| *id).filter(|id| !voters.contains(id)).collect();
        wire::MembershipResponse {
            leader_id: metrics.current_leader.unwrap_or(0),
            voters: voters.into_iter().collect(),
            learners,
            log_index,
        }
    }
}

fn raft_error(error: impl std::fmt::Display) -> Status {
    Status::failed_precondition(error.to_string())
}

/// A membership change's error from Raft: UNAVAILABLE when leadership moved (the SDK retries
/// there, and the approval, already applied, answers `repeated` and runs on the new leader).
fn membership_error<E>(error: openraft::error::RaftError<u64, E>) -> Status
where
    E: std::error::Error + openraft::TryAsRef<openraft::error::ForwardToLeader<u64, PeerNode>>,
{
    if error.forward_to_leader::<PeerNode>().is_some() {
        return Status::unavailable(format!("leadership moved before the membership change was made: {error}; retry"));
    }
    raft_error(error)
}

/// Where an approved membership change stands against the membership in force, when it may go on.
#[derive(Debug, PartialEq, Eq)]
enum MembershipStanding {
    /// The membership it was proposed against is in force, and the change fits it: it may be made.
    Proposed,
    /// What it asks for is in force already (it ran before: a retry).
    Made,
}

fn membership_index(metrics: &openraft::RaftMetrics<u64, PeerNode>) -> u64 {
    metrics.membership_config.log_id().map_or(0, |log_id| log_id.index)
}

/// Whether an approved membership change may go on: refused when another membership is in force
/// than the one it was proposed against (unless what it asks for is in force already), or when it
/// does not fit the membership.
fn membership_standing(
    metrics: &openraft::RaftMetrics<u64, PeerNode>,
    change: &RegistryChange,
) -> Result<MembershipStanding, Status> {
    let proposed_index = change.membership_index().expect("only membership changes have a standing");
    let membership = metrics.membership_config.membership();
    let made = match change {
        RegistryChange::AddLearner { node_id, address, .. } => {
            membership.get_node(node_id).is_some_and(|node| node.address == *address)
        }
        RegistryChange::RemoveLearner { node_id, .. } => membership.get_node(node_id).is_none(),
        RegistryChange::ChangeVoters { voters, .. } => {
            let wanted: BTreeSet<u64> = voters.iter().copied().collect();
            membership.get_joint_config().len() == 1 && membership.voter_ids().collect::<BTreeSet<_>>() == wanted
        }
        _ => unreachable!("only membership changes have a standing"),
    };
    if made {
        return Ok(MembershipStanding::Made);
    }
    let in_force = membership_index(metrics);
    if in_force != proposed_index {
        return Err(Status::failed_precondition(format!(
            "the {} change was proposed against the membership of log index {proposed_index}, but the one in force \
             is of log index {in_force}: it was not made; propose it again",
            change.name()
        )));
    }
    let misfit = match change {
        RegistryChange::AddLearner { node_id, .. } if membership.get_node(node_id).is_some() => {
            Some(format!("node {node_id} is a member already, at another address: remove it first"))
        }
        RegistryChange::RemoveLearner { node_id, .. } if membership.voter_ids().any(|id| id == *node_id) => {
            Some(format!("node {node_id} is a voter: remove it from the voters first"))
        }
        RegistryChange::ChangeVoters { voters, .. } => voters
            .iter()
            .find(|id| membership.get_node(id).is_none())
            .map(|unknown| format!("node {unknown} is not a member: add it as a learner first")),
        _ => None,
    };
    match misfit {
        Some(misfit) => Err(Status::invalid_argument(misfit)),
        None => Ok(MembershipStanding::Proposed),
    }
}

impl Admin {
    /// Cluster status as this replica sees it; replication lag is known only on the leader.
    async fn local_cluster_status(&self) -> wire::ClusterStatusResponse {
        let metrics = self.replica.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched: BTreeMap<u64, u64> = metrics
            .replication
            .as_ref()
            .map(|replication| {
                replication.iter().map(|(id, log_id)| (*id, log_id.map_or(0, |log_id| log_id.index))).collect()
            })
            .unwrap_or_default();
        let last_index = metrics.last_log_index.unwrap_or(0);
        let mut nodes = Vec::new();
        for (id, node) in membership.nodes() {
            let mut status = if *id == self.replica.node_id {
                self.local_status().await
            } else {
                self.member_status(*id, node).await
            };
            status.voter = voters.contains(id);
            if let Some(matched) = matched.get(id) {
                status.replication_lag = Some(last_index.saturating_sub(*matched));
            }
            if *id != self.replica.node_id {
                status.clock_offset_ms = self.replica.clock.offset(*id).map(|offset| offset.nanoseconds / 1_000_000);
            }
            nodes.push(status);
        }
        wire::ClusterStatusResponse {
            leader_id: metrics.current_leader.unwrap_or(0),
            nodes,
            membership_index: membership_index(&metrics),
        }
    }

    /// Asks the leader, which knows how far each member lags; answers locally when there is no
    /// leader to ask (or it does not answer).
    async fn leader_cluster_status(
        &self,
        request: &Request<wire::ClusterStatusRequest>,
    ) -> wire::ClusterStatusResponse {
        if let (Leader::Other { address, .. }, false) = (self.replica.leader(), forwarded(request)) {
            let deadline = Instant::now() + self.replica.request_timeout;
            if let Ok(client) = self.client(&address)
                && let Ok(response) = self
                    .replica
                    .forward_once(
                        &address,
                        client,
                        wire::ClusterStatusRequest {},
                        deadline,
                        |mut client, request| async move { client.cluster_status(request).await },
                    )
                    .await
            {
                return response.into_inner();
            }
        }
        self.local_cluster_status().await
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn change_registry(
        &self,
        request: Request<wire::RegistryChangeRequest>,
    ) -> Result<Response<wire::RegistryChangeResponse>, Status> {
        self.secured()?;
        let (entry, change) = signed::change_entry(request.get_ref())?;
        let forward = |mut client: AdminServiceClient<_>, request| async move { client.change_registry(request).await };
        let local = async |_request, deadline| {
            let membership_change = change.membership_index().is_some();
            let _serialised = match membership_change {
                true => Some(self.membership_changes.lock().await),
                false => None,
            };
            if membership_change {
                // Refused here, a change that cannot be made takes no log entry (and leaves its
                // change id unused).
                membership_standing(&self.replica.raft.metrics().borrow(), &change)?;
            }
            let written = self.gateway.commit_written(Events::RegistryChange(entry), deadline).await?;
            if let Some(refusal) = &written.refusal {
                return Err(signed::change_refused(refusal));
            }
            let membership = match membership_change {
                true => Some(self.make_membership_change(&change).await?),
                false => None,
            };
            Ok(Response::new(wire::RegistryChangeResponse {
                applied_index: written.log_index,
                repeated: written.repeated,
                membership,
            }))
        };
        self.replica.on_leader(request, |address| self.client(address), forward, local).await
    }

    async fn get_registry(
        &self,
        request: Request<wire::GetRegistryRequest>,
    ) -> Result<Response<wire::Registry>, Status> {
        self.secured()?;
        let forward = |mut client: AdminServiceClient<_>, request| async move { client.get_registry(request).await };
        let local = async |_request, _deadline| {
            let registry = self.secured()?;
            Ok(Response::new(registry_message(&registry, self.replica.header(None))))
        };
        self.replica.on_leader(request, |address| self.client(address), forward, local).await
    }

    async fn node_status(
        &self,
        _request: Request<wire::NodeStatusRequest>,
    ) -> Result<Response<wire::NodeStatus>, Status> {
        Ok(Response::new(self.local_status().await))
    }

    async fn cluster_status(
        &self,
        request: Request<wire::ClusterStatusRequest>,
    ) -> Result<Response<wire::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.leader_cluster_status(&request).await))
    }

    async fn add_learner(
        &self,
        request: Request<wire::AddLearnerRequest>,
    ) -> Result<Response<wire::MembershipResponse>, Status> {
        self.refuse_unapproved_membership_change()?;
        let message = request.get_ref();
        if message.node_id == 0 || message.address.is_empty() {
            return Err(Status::invalid_argument("node_id must not be 0 and address must be set"));
        }
        let change = async |message: wire::AddLearnerRequest| {
            let node = PeerNode { address: message.address.clone(), site: message.site.clone() };
            let written = self.replica.raft.add_learner(message.node_id, node, false).await.map_err(raft_error)?;
            Ok(self.membership_response(written.log_id.index))
        };
        let forward = |mut client: AdminServiceClient<_>, request| async move { client.add_learner(request).await };
        self.change_on_leader(request, change, forward).await
    }

    async fn change_membership(
        &self,
        request: Request<wire::ChangeMembershipRequest>,
    ) -> Result<Response<wire::MembershipResponse>, Status> {
        self.refuse_unapproved_membership_change()?;
        let message = request.get_ref();
        let voters: BTreeSet<u64> = message.voters.iter().copied().collect();
        if voters.is_empty() || voters.contains(&0) {
            return Err(Status::invalid_argument("voters must name at least one member and not 0"));
        }
        let change = async |message: wire::ChangeMembershipRequest| {
            let known: BTreeSet<u64> = self
                .replica
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            if let Some(unknown) = voters.iter().find(|id| !known.contains(id)) {
                return Err(Status::invalid_argument(format!(
                    "node {unknown} is not a member: add it as a learner first"
                )));
            }
            let changes = ChangeMembers::ReplaceAllVoters(voters.clone());
            let written =
                self.replica.raft.change_membership(changes, message.retain_as_learners).await.map_err(raft_error)?;
            Ok(self.membership_response(written.log_id.index))
        };
        let forward =
            |mut client: AdminServiceClient<_>, request| async move { client.change_membership(request).await };
        self.change_on_leader(request, change, forward).await
    }

    async fn transfer_leader(
        &self,
        request: Request<wire::TransferLeaderRequest>,
    ) -> Result<Response<wire::TransferLeaderResponse>, Status> {
        self.check_may_operate(&request, "hand leadership over")?;
        let target = request.get_ref().node_id;
        let metrics = self.replica.raft.metrics().borrow().clone();
        if target == self.replica.node_id {
            self.replica.raft.trigger().elect().await.map_err(raft_error)?;
            let deadline = Some(self.replica.request_timeout);
            let elected =
                self.replica.raft.wait(deadline).metrics(|m| m.current_leader == Some(target), "leadership").await;
            elected.map_err(|error| Status::unavailable(format!("node {target} did not win the election: {error}")))?;
            return Ok(Response::new(wire::TransferLeaderResponse { leader_id: target }));
        }
        let membership = metrics.membership_config.membership();
        if !membership.voter_ids().any(|id| id == target) {
            return Err(Status::invalid_argument(format!("node {target} is not a voter")));
        }
        let node = membership.get_node(&target).expect("voters are nodes");
        if forwarded(&request) {
            // Only the target runs the election; a forwarded call reached the wrong replica because
            // the sender's membership view is stale.
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target}, which a forwarded leadership transfer must reach",
                self.replica.node_id
            )));
        }
        let client = self.client(&node.address)?;
        let deadline = Instant::now() + self.replica.request_timeout;
        let message = wire::TransferLeaderRequest { node_id: target };
        // The target checks the caller's role again: it is told whom it relays for.
        let principal = principal_of(&request);
        self.replica
            .forward_once(&node.address, client, message, deadline, |mut client, mut request| async move {
                if let Some(principal) = principal {
                    request.metadata_mut().insert(PRINCIPAL, tonic::metadata::MetadataValue::from(principal));
                }
                client.transfer_leader(request).await
            })
            .await
    }

    async fn trigger_snapshot(
        &self,
        request: Request<wire::TriggerSnapshotRequest>,
    ) -> Result<Response<wire::TriggerSnapshotResponse>, Status> {
        self.check_may_operate(&request, "build a snapshot")?;
        let applied = self.replica.raft.metrics().borrow().last_applied.map_or(0, |log_id| log_id.index);
        self.replica.raft.trigger().snapshot().await.map_err(raft_error)?;
        let built = self
            .replica
            .raft
            .wait(Some(SNAPSHOT_WAIT))
            .metrics(|m| m.snapshot.is_some_and(|log_id| log_id.index >= applied), "snapshot")
            .await
            .map_err(|error| Status::deadline_exceeded(format!("the snapshot is still being built: {error}")))?;
        Ok(Response::new(wire::TriggerSnapshotResponse {
            snapshot_index: built.snapshot.map_or(0, |log_id| log_id.index),
        }))
    }
}

impl Admin {
    /// On a secured cluster, only a registered principal whose role has the operate permission may
    /// hand leadership over or build snapshots (`what`). In plaintext there is no identity to
    /// check (a development cluster).
    fn check_may_operate<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        let Some(registry) = self.replica.views.registry() else { return Ok(()) };
        let identified = request
            .extensions()
            .get::<crate::connections::ConnectionInfo>()
            .is_some_and(|info| info.identity.is_some());
        if !identified {
            return Ok(());
        }
        let Some(principal) = principal_of(request) else {
            return Err(Status::permission_denied(format!(
                "only a principal whose role may operate the cluster may {what}, and the relaying replica named none"
            )));
        };
        match registry.principals.get(&principal) {
            Some(registered) if registered.role.permissions.contains(Permissions::OPERATE) => Ok(()),
            Some(_) => Err(Status::permission_denied(format!(
                "principal {principal} may not {what} (its role has no operate permission)"
            ))),
            None => {
                Err(Status::permission_denied(format!("principal {principal} is not registered, so may not {what}")))
            }
        }
    }

    /// A secured cluster changes its membership only as operators approve.
    fn refuse_unapproved_membership_change(&self) -> Result<(), Status> {
        let Some(registry) = self.replica.views.registry() else { return Ok(()) };
        Err(Status::failed_precondition(format!(
            "this cluster is secured: a membership change needs {} operator approval(s); propose it with \
             `tallyctl cluster add-learner|promote|remove --out FILE`, have operators approve it with \
             `tallyctl registry approve FILE`, and send it with `tallyctl registry submit FILE`",
            registry.operator_approvals_required
        )))
    }

    /// Makes an approved membership change, which every replica applied, in Raft's membership.
    async fn make_membership_change(&self, change: &RegistryChange) -> Result<wire::MembershipResponse, Status> {
        let metrics = self.replica.raft.metrics().borrow().clone();
        if membership_standing(&metrics, change)? == MembershipStanding::Made {
            return Ok(self.membership_response(membership_index(&metrics)));
        }
        let written = match change {
            RegistryChange::AddLearner { node_id, address, site, .. } => {
                let node = PeerNode { address: address.clone(), site: site.clone() };
                self.replica.raft.add_learner(*node_id, node, false).await.map_err(membership_error)?
            }
            RegistryChange::RemoveLearner { node_id, .. } => {
                let learner = ChangeMembers::RemoveNodes(BTreeSet::from([*node_id]));
                self.replica.raft.change_membership(learner, false).await.map_err(membership_error)?
            }
            RegistryChange::ChangeVoters { voters, retain_as_learners, .. } => {
                let voters = ChangeMembers::ReplaceAllVoters(voters.iter().copied().collect());
                self.replica.raft.change_membership(voters, *retain_as_learners).await.map_err(membership_error)?
            }
            _ => unreachable!("only membership changes are made in Raft's membership"),
        };
        Ok(self.membership_response(written.log_id.index))
    }

    async fn member_status(&self, id: u64, node: &PeerNode) -> wire::NodeStatus {
        let unreachable = |error: String| wire::NodeStatus {
            id,
            address: node.address.clone(),
            site: node.site.clone(),
            reachable: false,
            error,
            ..wire::NodeStatus::default()
        };
        let mut client = match self.client(&node.address) {
            Ok(client) => client,
            Err(status) => return unreachable(status.message().to_owned()),
        };
        let mut request = Request::new(wire::NodeStatusRequest {});
        // A replica calls the admin API only as a relay for the caller (`authorise.rs`).
        request.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        request.set_timeout(MEMBER_STATUS_TIMEOUT);
        match tokio::time::timeout(MEMBER_STATUS_TIMEOUT, client.node_status(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => unreachable(format!("{}: {}", node.address, status.message())),
            Err(_) => {
                unreachable(format!("{}: no answer within {} ms", node.address, MEMBER_STATUS_TIMEOUT.as_millis()))
            }
        }
    }
}

/// The registry as the admin API shows it.
fn registry_message(registry: &Registry, header: wire::ResponseHeader) -> wire::Registry {
    let permissions = |permissions: Permissions| {
        [
            (Permissions::CREATE_LEDGERS, wire::Permission::CreateLedgers),
            (Permissions::CREATE_ACCOUNTS, wire::Permission::CreateAccounts),
            (Permissions::CREATE_TRANSFERS, wire::Permission::CreateTransfers),
            (Permissions::READ, wire::Permission::Read),
            (Permissions::OPERATE, wire::Permission::Operate),
        ]
        .into_iter()
        .filter(|(flag, _)| permissions.contains(*flag))
        .map(|(_, permission)| permission as i32)
        .collect()
    };
    let status = |status: KeyStatus| match status {
        KeyStatus::Active => wire::KeyStatus::Active,
        KeyStatus::Retired => wire::KeyStatus::Retired,
        KeyStatus::Revoked => wire::KeyStatus::Revoked,
    };
    wire::Registry {
        header: Some(header),
        cluster_id: registry.cluster.to_vec(),
        operator_approvals_required: registry.operator_approvals_required,
        operators: registry
            .operators
            .iter()
            .map(|operator| wire::RegistryOperator { id: operator.id, key_id: operator.key_id.0.to_vec() })
            .collect(),
        principals: registry
            .principals
            .values()
            .map(|principal| wire::RegistryPrincipal {
                id: principal.id,
                role: Some(wire::PrincipalRole {
                    permissions: permissions(principal.role.permissions),
                    ledgers: principal.role.ledgers.clone(),
                    debit_account_codes: principal
                        .role
                        .debit_account_codes
                        .iter()
                        .map(|code| u32::from(*code))
                        .collect(),
                }),
                keys: principal
                    .keys
                    .iter()
                    .map(|key| wire::RegistryKey {
                        key_id: key.id.0.to_vec(),
                        key: Some(wire::PublicKey {
                            algorithm: u32::from(key.algorithm as u8),
                            raw: key.public_key.clone(),
                        }),
                        status: status(key.status) as i32,
                        valid_from_index: key.valid_from_index,
                        status_index: key.status_index,
                    })
                    .collect(),
            })
            .collect(),
    }
}
