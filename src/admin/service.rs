//! The admin gRPC service: decode, read node state or call the coordinator,
//! encode.
//!
//! Reads about this node (`Status`, `Members`) are answered locally. Requests
//! only the leader can answer (`Shards` and every mutation) are forwarded to
//! the leader once; a forwarded request that lands on a non-leader (the
//! leader changed meanwhile) is answered `UNAVAILABLE` naming the leader
//! instead of being forwarded again.

use std::sync::Arc;

use openraft::async_runtime::watch::WatchReceiver;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::auth::Auth;
use super::membership::{self, Membership, MembershipError};
use super::status;
use crate::admin::client::TaskAction;
use crate::cluster::{Command, TaskKind};
use crate::proto::admin::admin_client::AdminClient;
use crate::proto::admin::admin_server::{Admin, AdminServer};
use crate::proto::admin::{
    AddNodeRequest, DrainRequest, DrainResponse, Member, MembersRequest, MembersResponse,
    MembershipResponse, RebalanceRequest, RebalanceResponse, RemoveNodeRequest, ShardInfo,
    ShardsRequest, ShardsResponse, StatusRequest, StatusResponse, TaskRequest, TaskResponse,
    TasksRequest, TasksResponse, TransferLeaderRequest, TransferLeaderResponse,
};
use crate::raft::network::Channels;
use crate::raft::store::AppliedView;
use crate::raft::MembershipView;
use crate::raft::{NodeId, Raft};
use crate::worker::coordinator::Coordinator;
use crate::worker::service::coord_status;
use crate::worker::WorkerShared;

/// Metadata key marking a request already forwarded by a follower.
const FORWARDED: &str = "x-deckhand-forwarded";

/// Admin API handlers for one node.
#[derive(Clone)]
pub struct AdminService {
    raft: Raft,
    state_machine: AppliedView,
    cluster_name: String,
    worker: Arc<WorkerShared>,
    coordinator: Coordinator,
    channels: Channels,
    /// Membership changes (leader side); one at a time.
    membership: Membership,
    /// The bearer token mutations need, if configured.
    auth: Auth,
}

/// Where a leader-only request is answered.
enum Route {
    Here,
    Leader(AdminClient<Channel>),
}

impl AdminService {
    pub fn new(
        raft: Raft,
        state_machine: AppliedView,
        cluster_name: String,
        worker: Arc<WorkerShared>,
        coordinator: Coordinator,
        channels: Channels,
    ) -> Self {
        let membership = Membership {
            raft: raft.clone(),
            state_machine: state_machine.clone(),
            coordinator: coordinator.clone(),
            node_id: worker.node_id,
            changing: Arc::new(tokio::sync::Mutex::new(())),
        };
        Self {
            raft,
            state_machine,
            cluster_name,
            worker,
            coordinator,
            channels,
            membership,
            auth: Auth::default(),
        }
    }

    /// Requires `auth`'s token on every mutation.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }

    /// A copy of the current metrics; the watch guard is dropped at once so
    /// it is never held across an await.
    fn metrics(&self) -> crate::raft::RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    fn node_id(&self) -> NodeId {
        self.worker.node_id
    }

    /// Answer here if this node leads; otherwise forward to the leader once.
    fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        let m = self.metrics();
        match m.current_leader {
            Some(leader) if leader == self.node_id() => Ok(Route::Here),
            Some(leader) => {
                let addr = m
                    .member(leader)
                    .map(|n| n.admin_addr.clone())
                    .ok_or_else(|| {
                        Status::unavailable(format!("leader {leader} has no known admin address"))
                    })?;
                if request.metadata().contains_key(FORWARDED) {
                    return Err(Status::unavailable(format!(
                        "this node is not the leader; the leader is node {leader} (admin address {addr})"
                    )));
                }
                let channel = self.channels.get(&addr).map_err(|e| {
                    Status::unavailable(format!("cannot reach leader {leader}: {e}"))
                })?;
                Ok(Route::Leader(AdminClient::new(channel)))
            }
            None => Err(Status::unavailable(
                "no leader elected yet (election in progress); try again shortly",
            )),
        }
    }
}

/// How long a request forwarded to the leader may take.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a forwarded membership change may take (a learner catches up).
const MEMBERSHIP_FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(
    membership::CATCH_UP_TIMEOUT.as_secs() + membership::DRAIN_TIMEOUT.as_secs() + 10,
);

/// `request` marked as forwarded, with a deadline, keeping its credentials.
fn forwarded<T>(request: Request<T>) -> Request<T> {
    forwarded_within(request, FORWARD_TIMEOUT)
}

fn forwarded_within<T>(request: Request<T>, timeout: std::time::Duration) -> Request<T> {
    let token = request.metadata().get(super::auth::AUTHORIZATION).cloned();
    let mut request = Request::new(request.into_inner());
    request.set_timeout(timeout);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert(super::auth::AUTHORIZATION, token);
    }
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        tracing::debug!("admin status");
        let metrics = self.metrics();
        let applied = self.state_machine.latest();
        let mut resp = status::status(&metrics, &self.cluster_name, applied.cluster.shard_count);
        resp.shards_owned = applied.cluster.owned_by(self.node_id()).count() as u32;
        let worker = self.worker.status();
        resp.shards_running = worker.shards_running as u32;
        resp.lease_remaining_ms = worker.lease_remaining.map_or(0, |d| d.as_millis() as u64);
        resp.fenced_writes = worker.fenced_writes;
        resp.drained = applied.cluster.drained.contains(&self.node_id());
        resp.scheduling = worker.scheduling;
        resp.notifications = worker.notifications.to_string();
        Ok(Response::new(resp))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        tracing::debug!("admin members");
        let metrics = self.metrics();
        Ok(Response::new(MembersResponse {
            members: status::members(&metrics),
            leader_id: metrics.current_leader,
        }))
    }

    async fn shards(
        &self,
        request: Request<ShardsRequest>,
    ) -> Result<Response<ShardsResponse>, Status> {
        tracing::debug!("admin shards");
        if let Route::Leader(mut client) = self.route(&request)? {
            return client.shards(forwarded(request)).await;
        }
        let state = self.state_machine.latest();
        let shards = self
            .coordinator
            .shard_views(&state.cluster)
            .into_iter()
            .map(|v| ShardInfo {
                shard: v.shard,
                owner: v.owner,
                epoch: v.epoch,
                lease: v.lease.name().to_string(),
                lease_remaining_ms: v.lease.remaining().as_millis() as u64,
                queues: v.queues as u32,
                passes: v.passes,
                released_from: v.released_from,
            })
            .collect();
        Ok(Response::new(ShardsResponse {
            leader_id: self.node_id(),
            shards,
            drained: state.cluster.drained.iter().copied().collect(),
        }))
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        self.drain_change(request, true).await
    }

    async fn undrain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        self.drain_change(request, false).await
    }

    async fn rebalance(
        &self,
        request: Request<RebalanceRequest>,
    ) -> Result<Response<RebalanceResponse>, Status> {
        tracing::debug!("admin rebalance");
        self.auth.check(request.metadata(), "rebalance")?;
        if let Route::Leader(mut client) = self.route(&request)? {
            return client.rebalance(forwarded(request)).await;
        }
        let moves = self
            .coordinator
            .plan_round()
            .await
            .map_err(coord_status)?
            .moved;
        Ok(Response::new(RebalanceResponse {
            moves: moves as u32,
        }))
    }

    async fn tasks(
        &self,
        request: Request<TasksRequest>,
    ) -> Result<Response<TasksResponse>, Status> {
        tracing::debug!("admin tasks");
        if let Route::Leader(mut client) = self.route(&request)? {
            return client.tasks(forwarded(request)).await;
        }
        let state = self.state_machine.latest();
        let tasks = super::tasks::task_infos(
            &state.cluster.tasks,
            &self.worker.settings,
            &self.coordinator.reports(),
        );
        Ok(Response::new(TasksResponse { tasks }))
    }

    async fn pause_task(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<TaskResponse>, Status> {
        self.task_change(request, TaskAction::Pause).await
    }

    async fn resume_task(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<TaskResponse>, Status> {
        self.task_change(request, TaskAction::Resume).await
    }

    async fn trigger_task(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<TaskResponse>, Status> {
        self.task_change(request, TaskAction::Trigger).await
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let r = request.get_ref();
        tracing::debug!(node = r.node_id, raft_addr = %r.raft_addr, "admin add node");
        self.auth.check(request.metadata(), "add-node")?;
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be greater than 0"));
        }
        if let Route::Leader(mut client) = self.route(&request)? {
            let request = forwarded_within(request, MEMBERSHIP_FORWARD_TIMEOUT);
            return client.add_node(request).await;
        }
        let r = request.into_inner();
        let info = crate::raft::NodeInfo {
            raft_addr: r.raft_addr,
            admin_addr: r.admin_addr,
        };
        let members = self
            .membership
            .add_node(r.node_id, info)
            .await
            .map_err(membership_status)?;
        Ok(Response::new(MembershipResponse {
            members: members_of(members),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let r = request.get_ref();
        tracing::debug!(node = r.node_id, force = r.force, "admin remove node");
        self.auth.check(request.metadata(), "remove-node")?;
        if let Route::Leader(mut client) = self.route(&request)? {
            let request = forwarded_within(request, MEMBERSHIP_FORWARD_TIMEOUT);
            return client.remove_node(request).await;
        }
        let r = request.into_inner();
        let members = self
            .membership
            .remove_node(r.node_id, r.force)
            .await
            .map_err(membership_status)?;
        Ok(Response::new(MembershipResponse {
            members: members_of(members),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        tracing::debug!(to = request.get_ref().node_id, "admin transfer leader");
        self.auth.check(request.metadata(), "transfer-leader")?;
        if let Route::Leader(mut client) = self.route(&request)? {
            let request = forwarded_within(request, MEMBERSHIP_FORWARD_TIMEOUT);
            return client.transfer_leader(request).await;
        }
        let leader_id = self
            .membership
            .transfer_leader(request.into_inner().node_id)
            .await
            .map_err(membership_status)?;
        Ok(Response::new(TransferLeaderResponse { leader_id }))
    }
}

/// Membership errors as gRPC statuses.
fn membership_status(e: MembershipError) -> Status {
    use MembershipError as E;
    match e {
        E::Coord(c) => coord_status(c),
        E::Busy
        | E::LastVoter(_)
        | E::BelowMajority { .. }
        | E::IsLeader(_)
        | E::DrainTimeout { .. }
        | E::NotVoter { .. }
        | E::Retired(_) => Status::failed_precondition(e.to_string()),
        E::AlreadyMember(_) => Status::already_exists(e.to_string()),
        E::UnknownNode(_) => Status::not_found(e.to_string()),
        E::BadAddress { .. } => Status::invalid_argument(e.to_string()),
        E::CatchUpTimeout { .. } | E::TransferTimeout { .. } => {
            Status::deadline_exceeded(e.to_string())
        }
        E::Raft(_) | E::RaftStopped(_) | E::Stopping(_) => Status::unavailable(e.to_string()),
    }
}

fn members_of(members: membership::Members) -> Vec<Member> {
    members
        .into_iter()
        .map(|(id, (info, voter))| Member {
            id,
            raft_addr: info.raft_addr,
            admin_addr: info.admin_addr,
            voter,
        })
        .collect()
}

/// The task named in a request, or `INVALID_ARGUMENT` naming the choices.
fn parse_task(request: &TaskRequest) -> Result<TaskKind, Status> {
    request.task.parse().map_err(Status::invalid_argument)
}

impl AdminService {
    /// Drain (or undrain) a node on the leader, forwarding if needed.
    async fn drain_change(
        &self,
        request: Request<DrainRequest>,
        drained: bool,
    ) -> Result<Response<DrainResponse>, Status> {
        tracing::debug!(
            node = request.get_ref().node_id,
            drained,
            "admin drain change"
        );
        let what = if drained { "drain" } else { "undrain" };
        self.auth.check(request.metadata(), what)?;
        if let Route::Leader(mut client) = self.route(&request)? {
            let message = forwarded(request);
            return if drained {
                client.drain(message).await
            } else {
                client.undrain(message).await
            };
        }
        let node = request.into_inner().node_id;
        let owned = self
            .coordinator
            .set_drained(node, drained)
            .await
            .map_err(coord_status)?;
        Ok(Response::new(DrainResponse {
            shards_owned: owned,
        }))
    }

    /// Pauses, resumes or triggers a task on the leader, forwarding if needed.
    async fn task_change(
        &self,
        request: Request<TaskRequest>,
        action: TaskAction,
    ) -> Result<Response<TaskResponse>, Status> {
        self.auth.check(request.metadata(), "task change")?;
        let task = parse_task(request.get_ref())?;
        if let Route::Leader(mut client) = self.route(&request)? {
            let message = forwarded(request);
            return match action {
                TaskAction::Pause => client.pause_task(message).await,
                TaskAction::Resume => client.resume_task(message).await,
                TaskAction::Trigger => client.trigger_task(message).await,
            };
        }
        let command = match action {
            TaskAction::Pause => Command::SetTaskPaused { task, paused: true },
            TaskAction::Resume => Command::SetTaskPaused {
                task,
                paused: false,
            },
            TaskAction::Trigger => Command::TriggerTask { task },
        };
        tracing::debug!(%command, "admin task change");
        self.coordinator
            .task_command(command)
            .await
            .map_err(coord_status)?;
        let enabled = !self.state_machine.latest().cluster.tasks.get(task).paused;
        Ok(Response::new(TaskResponse {
            task: task.name().to_string(),
            enabled,
        }))
    }
}
