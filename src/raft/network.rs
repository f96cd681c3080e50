//! The client side of node-to-node Raft RPCs.
//!
//! One tonic [`Channel`] per peer address is created lazily the first time
//! openraft asks for a client to that peer and is then shared by every Raft
//! RPC (votes, appends, heartbeats, snapshots): tonic channels multiplex
//! HTTP/2 streams and reconnect on their own, so there is nothing to gain
//! from a connection per RPC and a lot of handshakes to lose. AppendEntries
//! go over a long-lived stream on it ([`super::append_stream`]).
//!
//! The Raft thread ([`super::runtime`]) has its own map
//! ([`Channels::for_raft_thread`]): a channel's tasks run on the runtime
//! that made it. So a node holds two connections to each peer, one for
//! Raft and one for the worker, admin and bootstrap calls.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::append_stream::{AppendLane, LaneReply};
use super::codec::{self, SnapshotTransfer};
use super::{NodeId, NodeInfo, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::locks::lock;
use crate::proto::raft::raft_service_client::RaftServiceClient;
use crate::proto::raft::RaftPayload;

/// Largest message a node accepts or sends on the Raft address.
pub const MAX_RAFT_MESSAGE: usize = 64 * 1024 * 1024;

/// Most cached channels. A cluster has at most a handful of members, but
/// addresses of replaced members and mistyped `add-node` addresses would
/// otherwise stay cached for the life of the process.
const MAX_CHANNELS: usize = 64;

/// Shared, reusable channels to peers, keyed by address (at most
/// [`MAX_CHANNELS`]; a clone held by a caller keeps working after eviction).
#[derive(Clone, Default)]
pub struct Channels {
    /// A std mutex: held only to look up or insert, never across an await.
    by_addr: Arc<Mutex<HashMap<String, Channel>>>,
    /// Fault injection for tests: addresses this node cannot reach. Checked
    /// on every call, so a partition also cuts connections already open
    /// (an AppendEntries stream is dropped at its next call).
    blocked: Arc<Mutex<HashSet<String>>>,
    /// Mutual TLS to peers when the cluster runs with certificates.
    tls: Option<ClientTlsConfig>,
}

/// Why no channel to an address can be had.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}: unreachable (partitioned)")]
    Blocked(String),
    #[error("{addr}: bad address: {source}")]
    BadAddress {
        addr: String,
        source: tonic::transport::Error,
    },
}

impl Channels {
    /// Channels that dial peers over TLS with this node's certificate.
    pub fn with_tls(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            tls,
            ..Self::default()
        }
    }

    /// Channels with the same TLS settings and partitions but a map of
    /// their own, for the Raft thread: a tonic channel's tasks run on the
    /// runtime that made it, so the Raft thread makes its own.
    pub fn for_raft_thread(&self) -> Self {
        Self {
            by_addr: Arc::default(),
            blocked: self.blocked.clone(),
            tls: self.tls.clone(),
        }
    }

    /// Cuts this node off from `addr` (outgoing calls fail as unreachable).
    pub fn block(&self, addr: &str) {
        lock(&self.blocked).insert(addr.to_string());
    }

    /// Heals every cut made by [`Self::block`].
    pub fn unblock_all(&self) {
        lock(&self.blocked).clear();
    }

    fn is_blocked(&self, addr: &str) -> bool {
        lock(&self.blocked).contains(addr)
    }

    /// The channel to `addr`, created (lazily connecting) on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, ChannelError> {
        if self.is_blocked(addr) {
            return Err(ChannelError::Blocked(addr.to_string()));
        }
        let mut map = lock(&self.by_addr);
        if let Some(channel) = map.get(addr) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|source| {
                ChannelError::BadAddress {
                    addr: addr.to_string(),
                    source,
                }
            })?;
        if let Some(tls) = &self.tls {
            endpoint =
                endpoint
                    .tls_config(tls.clone())
                    .map_err(|source| ChannelError::BadAddress {
                        addr: addr.to_string(),
                        source,
                    })?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy();
        if map.len() >= MAX_CHANNELS {
            // Only replaced members and mistyped add-node addresses make the
            // map grow; dropping every entry costs live peers one reconnect.
            map.clear();
        }
        map.insert(addr.to_string(), channel.clone());
        debug_assert!(map.len() <= MAX_CHANNELS);
        Ok(channel)
    }
}

/// Creates per-peer connections for openraft.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    channels: Channels,
}

impl NetworkFactory {
    pub fn new(channels: Channels) -> Self {
        Self { channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerConnection {
            target,
            addr: node.raft_addr.clone(),
            channels: self.channels.clone(),
            appends: AppendLane::default(),
        }
    }
}

/// openraft's handle on one peer. Looks the channel up on every call (a map
/// lookup and a clone), so partitions injected by tests take effect at once.
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    channels: Channels,
    /// AppendEntries (heartbeats included) go over one long-lived stream.
    appends: AppendLane,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {target} at {addr}: {message}")]
struct PeerError {
    target: NodeId,
    addr: String,
    message: String,
}

impl PeerConnection {
    fn error(&self, message: impl Into<String>) -> PeerError {
        PeerError {
            target: self.target,
            addr: self.addr.clone(),
            message: message.into(),
        }
    }

    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        self.channels
            .get(&self.addr)
            .map(|channel| {
                RaftServiceClient::new(channel)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE)
            })
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&self.error(e.to_string()))))
    }

    /// Maps a transport failure: refused or unreachable peers back off
    /// (`Unreachable`); anything else is a plain network error.
    fn status_error(&self, status: tonic::Status) -> RPCError<TypeConfig> {
        let err = self.error(format!("{}: {}", status.code(), status.message()));
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                RPCError::Unreachable(Unreachable::new(&err))
            }
            _ => RPCError::Network(NetworkError::new(&err)),
        }
    }

    fn codec_error(&self, e: codec::CodecError) -> RPCError<TypeConfig> {
        RPCError::Network(NetworkError::new(&self.error(e.to_string())))
    }

    async fn call<Req, Resp, F, Fut>(
        &mut self,
        what: &'static str,
        req: &Req,
        option: &RPCOption,
        rpc: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self.client()?;
        let payload = codec::encode(what, req).map_err(|e| self.codec_error(e))?;
        tracing::trace!(target_node = self.target, rpc = what, "sending Raft RPC");
        let response = self.unary(client, payload, option.hard_ttl(), rpc).await?;
        codec::decode(what, &response).map_err(|e| self.codec_error(e))
    }

    /// One unary call of an encoded request, with `timeout` as its deadline.
    async fn unary<F, Fut>(
        &self,
        client: RaftServiceClient<Channel>,
        payload: RaftPayload,
        timeout: Duration,
        rpc: F,
    ) -> Result<RaftPayload, RPCError<TypeConfig>>
    where
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(payload);
        request.set_timeout(timeout);
        rpc(client, request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.status_error(s))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => {
                // A partition also cuts the stream already open.
                self.appends.abandon();
                return Err(e);
            }
        };
        let what = "append entries";
        let payload = codec::encode(what, &rpc).map_err(|e| self.codec_error(e))?;
        // openraft's own timeout around a heartbeat is the hard TTL; this
        // one, the soft TTL, ends first, so the stream is dropped here and
        // not left for the next call to find unanswered. One deadline
        // covers the stream and a unary retry.
        let ttl = option.soft_ttl();
        let deadline = tokio::time::Instant::now() + ttl;
        let timed_out = || tonic::Status::deadline_exceeded(format!("no answer within {ttl:?}"));
        tracing::trace!(target_node = self.target, rpc = what, "sending Raft RPC");
        let call = self.appends.call(client.clone(), payload);
        let reply = match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(status)) => return Err(self.status_error(status)),
            Err(_) => {
                self.appends.abandon();
                return Err(self.status_error(timed_out()));
            }
        };
        let response = match reply {
            LaneReply::Answered(response) => response,
            LaneReply::Unsupported(payload) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(self.status_error(timed_out()));
                }
                self.unary(client, payload, left, |mut c, r| async move {
                    c.append_entries(r).await
                })
                .await?
            }
        };
        codec::decode(what, &response).map_err(|e| self.codec_error(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            "vote",
            &rpc,
            &option,
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("pre-vote", &rpc, &option, |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let transfer = SnapshotTransfer::new(vote, snapshot);
        let send = self.call("snapshot", &transfer, &option, |mut c, r| async move {
            c.install_snapshot(r).await
        });
        tokio::select! {
            result = send => result.map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
            }),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call("transfer leader", &req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    fn backoff(&self) -> Option<Backoff> {
        // A dead peer is retried every 100 ms: fast enough to notice it coming
        // back within a heartbeat or two, slow enough not to spin.
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(100))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_channel_cache_stays_bounded_and_keeps_the_newest() {
        let channels = Channels::default();
        for port in 0..(MAX_CHANNELS as u16 * 3) {
            let addr = format!("127.0.0.1:{}", 20000 + port);
            channels.get(&addr).expect("valid address");
            let map = channels.by_addr.lock().expect("not poisoned");
            assert!(map.len() <= MAX_CHANNELS, "{} cached", map.len());
            assert!(map.contains_key(&addr), "the channel just made is cached");
        }
    }
}
