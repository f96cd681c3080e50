//! The internal worker gRPC service (`raft_addr`): decode, call the
//! coordinator, encode. Also maps coordinator errors to gRPC statuses, for
//! this service and the admin API.

use tonic::{Request, Response, Status};

use super::coordinator::{CoordError, Coordinator};
use crate::proto::worker::worker_service_server::{WorkerService, WorkerServiceServer};
use crate::proto::worker::{
    GetQueuesRequest, GetQueuesResponse, HandBackRequest, HandBackResponse, HeartbeatRequest,
    HeartbeatResponse, StatsAck, StatsReport,
};
use crate::tls::SenderCheck;

/// The gRPC status for a coordinator error, naming the leader when known.
pub fn coord_status(e: CoordError) -> Status {
    match &e {
        CoordError::NotLeader {
            leader: Some(id),
            leader_admin,
        } => Status::unavailable(format!(
            "this node is not the leader; the leader is node {id}{}",
            leader_admin
                .as_ref()
                .map(|a| format!(" (admin address {a})"))
                .unwrap_or_default()
        )),
        CoordError::NotLeader { leader: None, .. } => {
            Status::unavailable("no leader elected yet (election in progress); try again shortly")
        }
        CoordError::UnknownNode(_) => Status::not_found(e.to_string()),
        CoordError::LastWorker(_) | CoordError::Lagging { .. } | CoordError::StaleRun { .. } => {
            Status::failed_precondition(e.to_string())
        }
        CoordError::NotInitialized | CoordError::Raft(_) | CoordError::NotCommitted(_) => {
            Status::unavailable(e.to_string())
        }
    }
}

#[derive(Clone)]
pub struct WorkerRpc {
    coordinator: Coordinator,
    /// With TLS: the node a heartbeat, hand-back or report names must be the
    /// caller's certificate's, or it could take another node's shards.
    senders: SenderCheck,
}

impl WorkerRpc {
    pub fn new(coordinator: Coordinator, senders: SenderCheck) -> Self {
        Self {
            coordinator,
            senders,
        }
    }

    pub fn into_server(self) -> WorkerServiceServer<Self> {
        WorkerServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerRpc {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.senders.check(&request, request.get_ref().node_id)?;
        let resp = self
            .coordinator
            .on_heartbeat(request.into_inner())
            .await
            .map_err(coord_status)?;
        Ok(Response::new(resp))
    }

    async fn hand_back(
        &self,
        request: Request<HandBackRequest>,
    ) -> Result<Response<HandBackResponse>, Status> {
        self.senders.check(&request, request.get_ref().node_id)?;
        let req = request.into_inner();
        let shards = self
            .coordinator
            .hand_back(
                req.node_id,
                req.applied_index,
                (req.incarnation, req.last_seq),
            )
            .await
            .map_err(coord_status)?;
        Ok(Response::new(HandBackResponse { shards }))
    }

    async fn get_queues(
        &self,
        request: Request<GetQueuesRequest>,
    ) -> Result<Response<GetQueuesResponse>, Status> {
        let req = request.into_inner();
        if req.shards.len() > crate::cluster::MAX_SHARDS as usize {
            return Err(Status::invalid_argument("too many shards requested"));
        }
        if req.start_shard as usize > req.shards.len() {
            return Err(Status::invalid_argument(
                "start_shard is past the requested shards",
            ));
        }
        Ok(Response::new(self.coordinator.get_queues(&req)))
    }

    async fn report_stats(
        &self,
        request: Request<StatsReport>,
    ) -> Result<Response<StatsAck>, Status> {
        self.senders.check(&request, request.get_ref().node_id)?;
        let ack = self
            .coordinator
            .on_stats(request.into_inner())
            .await
            .map_err(coord_status)?;
        Ok(Response::new(ack))
    }
}
