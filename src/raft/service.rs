//! The server side of node-to-node Raft RPCs: decode, hand to openraft, encode.
//!
//! Votes and appends from a node whose id was retired (`ctl remove-node`)
//! are refused before openraft sees them: a removed node that comes back
//! with its old data cannot disturb the cluster with elections. With TLS,
//! so is every message whose sender differs from the node its certificate
//! names (`tls::SenderCheck`).
//!
//! `AppendStream` answers AppendEntries on a long-lived stream
//! (`raft::append_stream` is the client): one request at a time, each
//! refused or answered exactly like the unary call, the first error ending
//! the stream.

use rustls_pki_types::CertificateDer;
use tonic::{Request, Response, Status, Streaming};

use super::codec::{self, SnapshotTransfer};
use super::network::MAX_RAFT_MESSAGE;
use super::store::AppliedView;
use super::{NodeId, Raft};
use crate::proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use crate::proto::raft::{ProbeRequest, ProbeResponse, RaftPayload};
use crate::shutdown::ShutdownListener;
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
    /// The node's shutdown, which ends the AppendEntries streams.
    stop: ShutdownListener,
}

impl RaftRpc {
    pub fn new(
        raft: Raft,
        node_id: NodeId,
        cluster_name: String,
        state_machine: AppliedView,
        senders: SenderCheck,
        stop: ShutdownListener,
    ) -> Self {
        Self {
            raft,
            node_id,
            cluster_name,
            state_machine,
            senders,
            stop,
        }
    }

    /// `PERMISSION_DENIED` if `from` is not the certificate's node (with
    /// TLS) or was removed from the cluster.
    fn refuse<T>(&self, request: &Request<T>, from: NodeId) -> Result<(), Status> {
        self.senders.check(request, from)?;
        self.refuse_retired(from)
    }

    /// One AppendEntries, unary or of a stream: refused if its sender is not
    /// who `certs` say or was removed.
    async fn append_one(
        &self,
        payload: &RaftPayload,
        certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<RaftPayload, Status> {
        let req: openraft::raft::AppendEntriesRequest<super::TypeConfig> =
            codec::decode("append entries", payload)?;
        let from = *req.vote.leader_id().node_id();
        self.senders.check_certs(certs, from)?;
        self.refuse_retired(from)?;
        let resp = self.raft.append_entries(req).await.map_err(raft_error)?;
        Ok(codec::encode("append entries response", &resp)?)
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

/// The answers of one `AppendStream`.
pub type AppendResponses =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

/// What an `AppendStream` keeps between two requests.
struct StreamState {
    rpc: RaftRpc,
    requests: Streaming<RaftPayload>,
    /// The caller's TLS certificates (`None` without TLS).
    certs: Option<std::sync::Arc<Vec<CertificateDer<'static>>>>,
}

/// A stream message tonic could not decode is the sender's fault, as for
/// unary calls (`admin::grpc_errors`, which sees only trailers-only
/// answers, so not a stream's).
fn invalid_request(status: Status) -> Status {
    if crate::admin::grpc_errors::is_decode_failure(status.code(), status.message()) {
        Status::invalid_argument(status.message().to_string())
    } else {
        status
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
        let certs = request.peer_certs();
        let answer = self
            .append_one(request.get_ref(), certs.as_deref().map(Vec::as_slice))
            .await?;
        Ok(Response::new(answer))
    }

    type AppendStreamStream = AppendResponses;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AppendResponses>, Status> {
        // The certificate is the connection's: read once for the stream.
        let certs = request.peer_certs();
        let state = StreamState {
            rpc: self.clone(),
            requests: request.into_inner(),
            certs,
        };
        // One request at a time, in order; the first error ends the stream
        // with its status (and the client opens a new one).
        let responses = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let next = tokio::select! {
                next = state.requests.message() => next,
                // A stream that waits for the leader's next request would
                // hold the server's graceful stop up to its deadline (an
                // idle replication stream waits for good).
                () = state.rpc.stop.recv() => {
                    return Some((Err(Status::unavailable("the node is stopping")), None));
                }
            };
            let payload = match next {
                Ok(Some(payload)) => payload,
                // The leader closed its side: the stream is done.
                Ok(None) => return None,
                // A message that does not decode, or is too large: the
                // same status a unary call gets (rewritten like it to
                // INVALID_ARGUMENT below), and the stream ends.
                Err(status) => return Some((Err(invalid_request(status)), None)),
            };
            let certs = state.certs.as_deref().map(Vec::as_slice);
            match state.rpc.append_one(&payload, certs).await {
                // Answered with the request's `seq`.
                Ok(answer) => Some((
                    Ok(RaftPayload {
                        seq: payload.seq,
                        ..answer
                    }),
                    Some(state),
                )),
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(responses)))
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
