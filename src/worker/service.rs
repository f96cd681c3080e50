//! The internal worker gRPC service (`raft_addr`): decode, call the
//! coordinator, encode. Also maps coordinator errors to gRPC statuses, for
//! this service and the admin API.

use tokio::runtime::Handle;
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
    /// The node's own runtime. This service shares `raft_addr`, and so the
    /// Raft thread (`raft::runtime`), with the Raft RPCs; its handlers run
    /// here instead. They take the coordinator's locks, which a large
    /// statistics report or queue page holds for a while: on the Raft
    /// thread that wait would hold up every Raft heartbeat.
    node_runtime: Handle,
}

impl WorkerRpc {
    pub fn new(coordinator: Coordinator, senders: SenderCheck, node_runtime: Handle) -> Self {
        Self {
            coordinator,
            senders,
            node_runtime,
        }
    }

    /// Runs `work` with the coordinator on the node's runtime. If the call
    /// is dropped (the caller gave up), the work is aborted at its next
    /// await, as it was when it ran inside the call.
    async fn on_node_runtime<T, F, Fut>(&self, work: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(Coordinator) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    {
        let task = AbortOnDrop(self.node_runtime.spawn(work(self.coordinator.clone())));
        match task.join().await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(Status::internal(format!("the handler panicked: {e}"))),
            Err(_) => Err(Status::unavailable("the node is stopping")),
        }
    }

    pub fn into_server(self) -> WorkerServiceServer<Self> {
        WorkerServiceServer::new(self)
    }
}

/// A spawned handler, aborted if the call awaiting it is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        // A no-op once the task has finished.
        self.0.abort();
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerRpc {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.senders.check(&request, request.get_ref().node_id)?;
        let req = request.into_inner();
        let resp = self
            .on_node_runtime(|c| async move { c.on_heartbeat(req).await.map_err(coord_status) })
            .await?;
        Ok(Response::new(resp))
    }

    async fn hand_back(
        &self,
        request: Request<HandBackRequest>,
    ) -> Result<Response<HandBackResponse>, Status> {
        self.senders.check(&request, request.get_ref().node_id)?;
        let req = request.into_inner();
        let shards = self
            .on_node_runtime(|c| async move {
                c.hand_back(
                    req.node_id,
                    req.applied_index,
                    (req.incarnation, req.last_seq),
                )
                .await
                .map_err(coord_status)
            })
            .await?;
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
        let page = self
            .on_node_runtime(|c| async move { Ok(c.get_queues(&req)) })
            .await?;
        Ok(Response::new(page))
    }

    async fn report_stats(
        &self,
        request: Request<StatsReport>,
    ) -> Result<Response<StatsAck>, Status> {
        self.senders.check(&request, request.get_ref().node_id)?;
        let report = request.into_inner();
        let ack = self
            .on_node_runtime(|c| async move { c.on_stats(report).await.map_err(coord_status) })
            .await?;
        Ok(Response::new(ack))
    }
}
