//! The admin gRPC service: decode, read node state, encode.

use openraft::async_runtime::watch::WatchReceiver;
use tonic::{Request, Response, Status};

use super::status;
use crate::proto::admin::admin_server::{Admin, AdminServer};
use crate::proto::admin::{MembersRequest, MembersResponse, StatusRequest, StatusResponse};
use crate::raft::store::StateMachineStore;
use crate::raft::Raft;

/// Admin API handlers for one node.
#[derive(Clone)]
pub struct AdminService {
    raft: Raft,
    state_machine: StateMachineStore,
    cluster_name: String,
}

impl AdminService {
    pub fn new(raft: Raft, state_machine: StateMachineStore, cluster_name: String) -> Self {
        Self {
            raft,
            state_machine,
            cluster_name,
        }
    }

    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }

    /// A copy of the current metrics; the watch guard is dropped at once so
    /// it is never held across an await.
    fn metrics(&self) -> crate::raft::RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        tracing::debug!("admin status");
        let metrics = self.metrics();
        let shard_count = self.state_machine.applied().await.cluster.shard_count;
        Ok(Response::new(status::status(
            &metrics,
            &self.cluster_name,
            shard_count,
        )))
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
}
