//! AppendEntries over one long-lived gRPC stream per peer connection.
//!
//! # Why
//!
//! A leader sends every follower ten heartbeats a second (an
//! AppendEntries with no entries; twenty with the 50 ms heartbeat this was
//! written for). As unary gRPC calls each one opened an
//! HTTP/2 stream, encoded and decoded request and response headers, went
//! through tonic's request buffer task, was routed by path and got a task of
//! its own on the follower. On an idle cluster that per-call work was most
//! of a node's CPU. On one open stream a heartbeat is a data frame each way.
//!
//! # Design
//!
//! - openraft keeps one network client per follower for its heartbeats and
//!   one per replication stream, and calls each with `&mut self`, one
//!   AppendEntries at a time. Each [`AppendLane`] (one per client) opens its
//!   stream on first use and then sends a request and reads its response in
//!   turn. The follower answers each request in order (`raft::service`).
//! - Every request carries a sequence number that its response echoes; a
//!   response that does not match ends the stream (it never does unless a
//!   peer is broken).
//! - Any failure drops the stream: the next call opens a new one. So does a
//!   call that was cancelled after sending (openraft times heartbeats out by
//!   dropping the call): its response may still come, and would otherwise
//!   be read as the answer to the next request.
//! - A peer that does not know the stream (an older deckhand during a
//!   rolling upgrade answers `UNIMPLEMENTED`) gets unary calls from this
//!   lane for the rest of its life; a new lane (a new term) tries again.
//!
//! # Invariants
//!
//! - At most one request of a lane is unanswered, and only while a call is
//!   running: a new call finding one unanswered discards the stream.
//! - A response is handed to a caller only if its sequence number is the
//!   caller's request's.
//!
//! # Deliberately not done
//!
//! - No pipelining: openraft's default sequential `stream_append` drives
//!   the lane, which is all an idle or lightly written cluster needs.
//! - Votes, snapshots and leader transfers stay unary: they are rare.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::proto::raft::raft_service_client::RaftServiceClient;
use crate::proto::raft::RaftPayload;

/// One peer connection's AppendEntries stream.
#[derive(Debug, Default)]
pub struct AppendLane {
    /// The open stream, if any.
    stream: Option<OpenStream>,
    /// The peer answered `UNIMPLEMENTED`: this lane sends unary calls.
    unsupported: bool,
    /// The last sequence number sent on this lane (across its streams).
    last_seq: u64,
    /// A stream was opened once: the peer has streams, so a request need
    /// not be kept for a unary retry when a stream is opened again.
    opened_once: bool,
}

#[derive(Debug)]
struct OpenStream {
    /// The request side; dropping it ends the stream cleanly.
    requests: mpsc::Sender<RaftPayload>,
    /// The response side; dropping it resets the stream.
    responses: Streaming<RaftPayload>,
    /// A request was sent and its response not read yet.
    awaiting: bool,
}

/// What a lane made of a call.
#[derive(Debug)]
pub enum LaneReply {
    /// The response to the request.
    Answered(RaftPayload),
    /// The peer has no stream: send this request as a unary call.
    Unsupported(RaftPayload),
}

impl AppendLane {
    /// Sends `payload` on the stream (opening it if need be) and returns
    /// the peer's answer. On an error the stream is gone; the next call
    /// opens a new one.
    pub async fn call(
        &mut self,
        client: RaftServiceClient<Channel>,
        mut payload: RaftPayload,
    ) -> Result<LaneReply, Status> {
        if self.unsupported {
            return Ok(LaneReply::Unsupported(payload));
        }
        if self.stream.as_ref().is_some_and(|s| s.awaiting) {
            // The last call was dropped before its response came.
            self.stream = None;
        }
        self.last_seq += 1;
        let seq = self.last_seq;
        payload.seq = seq;
        let result = self.exchange(client, payload).await;
        match result {
            Ok(Some(response)) if response.seq == seq => {
                if let Some(stream) = self.stream.as_mut() {
                    stream.awaiting = false;
                }
                Ok(LaneReply::Answered(response))
            }
            Ok(Some(response)) => {
                self.stream = None;
                Err(Status::internal(format!(
                    "append stream out of step: response {} to request {seq}",
                    response.seq
                )))
            }
            Ok(None) => {
                self.stream = None;
                Err(Status::unavailable("the peer ended the append stream"))
            }
            Err(Unsent::Unsupported(payload)) => {
                self.unsupported = true;
                self.stream = None;
                tracing::info!("peer has no append stream (older version); using unary calls");
                Ok(LaneReply::Unsupported(payload))
            }
            Err(Unsent::Failed(status)) => {
                self.stream = None;
                Err(status)
            }
        }
    }

    /// Drops the open stream (a timed-out call, a partition).
    pub fn abandon(&mut self) {
        self.stream = None;
    }

    /// Sends `payload` and reads one response (`None`: the stream ended).
    async fn exchange(
        &mut self,
        mut client: RaftServiceClient<Channel>,
        payload: RaftPayload,
    ) -> Result<Option<RaftPayload>, Unsent> {
        let stream = match self.stream.take() {
            Some(mut stream) => {
                stream.awaiting = true;
                let stream = self.stream.insert(stream);
                stream
                    .requests
                    .send(payload)
                    .await
                    .map_err(|_| Unsent::Failed(Status::unavailable("append stream closed")))?;
                stream
            }
            None => {
                // The first request goes with the stream's headers: it is
                // queued before the stream is opened.
                let (requests, rx) = mpsc::channel(1);
                // Kept for a unary retry until the peer is known to stream.
                let kept = (!self.opened_once).then(|| payload.clone());
                requests
                    .try_send(payload)
                    .map_err(|_| Unsent::Failed(Status::internal("a new stream is not empty")))?;
                let responses = match client.append_stream(ReceiverStream::new(rx)).await {
                    Ok(response) => response.into_inner(),
                    Err(status) if status.code() == Code::Unimplemented => {
                        return Err(match kept {
                            Some(kept) => Unsent::Unsupported(kept),
                            // Streamed before: this request fails, the
                            // next one goes unary.
                            None => {
                                self.unsupported = true;
                                Unsent::Failed(status)
                            }
                        });
                    }
                    Err(status) => return Err(Unsent::Failed(status)),
                };
                self.opened_once = true;
                self.stream.insert(OpenStream {
                    requests,
                    responses,
                    awaiting: true,
                })
            }
        };
        stream.responses.message().await.map_err(Unsent::Failed)
    }
}

/// Why a call got no response.
enum Unsent {
    /// The peer has no stream; the request, to send unary instead.
    Unsupported(RaftPayload),
    Failed(Status),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer without the stream (here a server with only a health
    /// service) gets the request back for a unary call, then every later
    /// one without a new attempt.
    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_calls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid")
            .connect_lazy();
        let client = RaftServiceClient::new(channel);
        let mut lane = AppendLane::default();
        for seq in 1..=2 {
            let payload = RaftPayload {
                data: b"{}".to_vec(),
                seq: 0,
            };
            match lane.call(client.clone(), payload).await {
                Ok(LaneReply::Unsupported(back)) => assert_eq!(back.data, b"{}"),
                other => panic!("call {seq}: expected a unary fallback, got {other:?}"),
            }
            assert!(lane.unsupported && lane.stream.is_none());
            // The second call is not even tried as a stream.
            assert_eq!(lane.last_seq, 1, "call {seq}");
        }
        server.abort();
    }
}
