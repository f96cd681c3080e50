//! The server side of node-to-node Raft RPCs: decode, hand to openraft, encode.
//!
//! Votes and appends from a node whose id was retired (`ctl remove-node`)
//! are refused before openraft sees them: a removed node that comes back
//! with its old data cannot disturb the cluster with elections. With TLS,
//! so is every message whose sender differs from the node its certificate
//! names (`tls::SenderCheck`).

use tonic::{Request, Response, Status};

use super::codec::{self, SnapshotTransfer};
use super::network::MAX_RAFT_MESSAGE;
use super::store::AppliedView;
use super::{NodeId, Raft};
use crate::proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use crate::proto::raft::{ProbeRequest, ProbeResponse, RaftPayload};
use crate::tls::SenderCheck;
use openraft::vote::RaftLeaderId;

/// Serves the internal Raft service for one node.
#[derive(Clone)]
pub struct RaftRpc {
    raft: Raft,
    node_id: NodeId,
    cluster_name: String,
    /// The applied state, for the retired ids.
    state_machine: AppliedView,
    /// With TLS: the sender a message names must be its certificate's.
    senders: SenderCheck,
}

impl RaftRpc {
    pub fn new(
        raft: Raft,
        node_id: NodeId,
        cluster_name: String,
        state_machine: AppliedView,
        senders: SenderCheck,
    ) -> Self {
        Self {
            raft,
            node_id,
            cluster_name,
            state_machine,
            senders,
        }
    }

    /// `PERMISSION_DENIED` if `from` is not the certificate's node (with
    /// TLS) or was removed from the cluster.
    fn refuse<T>(&self, request: &Request<T>, from: NodeId) -> Result<(), Status> {
        self.senders.check(request, from)?;
        self.refuse_retired(from)
    }

    /// `PERMISSION_DENIED` if `from` was removed from the cluster.
    fn refuse_retired(&self, from: NodeId) -> Result<(), Status> {
        if self.state_machine.latest().cluster.removed.contains(&from) {
            tracing::debug!(from, "refused a raft message from a removed node");
            return Err(Status::permission_denied(format!(
                "node {from} was removed from this cluster and can never rejoin"
            )));
        }
        Ok(())
    }

    pub fn into_server(self) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
    }
}

/// Raft core errors (it stopped, or storage failed) leave the caller nothing
/// to retry against this node right now.
fn raft_error(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: openraft::raft::AppendEntriesRequest<super::TypeConfig> =
            codec::decode("append entries", request.get_ref())?;
        self.refuse(&request, *req.vote.leader_id().node_id())?;
        let resp = self.raft.append_entries(req).await.map_err(raft_error)?;
        Ok(Response::new(codec::encode(
            "append entries response",
            &resp,
        )?))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: openraft::raft::VoteRequest<super::TypeConfig> =
            codec::decode("vote", request.get_ref())?;
        self.refuse(&request, *req.vote.leader_id().node_id())?;
        let resp = self.raft.vote(req).await.map_err(raft_error)?;
        Ok(Response::new(codec::encode("vote response", &resp)?))
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: openraft::raft::VoteRequest<super::TypeConfig> =
            codec::decode("pre-vote", request.get_ref())?;
        self.refuse(&request, *req.vote.leader_id().node_id())?;
        let resp = self.raft.pre_vote(req).await.map_err(raft_error)?;
        Ok(Response::new(codec::encode("pre-vote response", &resp)?))
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let transfer: SnapshotTransfer = codec::decode("snapshot", request.get_ref())?;
        self.refuse(&request, *transfer.vote.leader_id().node_id())?;
        let (vote, snapshot) = transfer.into_parts();
        let resp = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(raft_error)?;
        Ok(Response::new(codec::encode("snapshot response", &resp)?))
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: openraft::raft::TransferLeaderRequest<super::TypeConfig> =
            codec::decode("transfer leader", request.get_ref())?;
        self.refuse(&request, *req.from_leader().leader_id().node_id())?;
        let resp = self
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(raft_error)?;
        Ok(Response::new(codec::encode(
            "transfer leader response",
            &resp,
        )?))
    }

    async fn probe(
        &self,
        request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        tracing::debug!(from_cluster = %request.get_ref().cluster_name, "probe");
        let initialized = self.raft.is_initialized().await.map_err(raft_error)?;
        Ok(Response::new(ProbeResponse {
            node_id: self.node_id,
            cluster_name: self.cluster_name.clone(),
            initialized,
        }))
    }
}
