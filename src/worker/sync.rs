//! Bulk exchanges with the leader, apart from heartbeats: queue lists in,
//! queue statistics out.
//!
//! # Design
//!
//! The heartbeat loop publishes which leader acknowledged it last
//! ([`LeaderContact`]). This loop, woken by that, by a change of the owned
//! shards, by a shard task waiting for its list (`sync_now`) and every
//! [`STATS_INTERVAL`]:
//!
//! - fetches the queue lists of the owned shards when the leader's discovery
//!   version or the owned set changed, page by page (`queue_lists`), and
//!   installs them only when complete and of one version;
//! - sends the queue statistics (`queue_stats`) in chunks: full to a leader
//!   (or term) that has not acknowledged a report from us yet, or after a
//!   failure; else the changed shards.
//!
//! Both are bounded by timeouts and never delay a heartbeat, so neither the
//! lease nor its renewal depends on how many queues there are.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::coordinator::Coordinator;
use super::heartbeat::LeaderContact;
use super::queue_lists::{Assembler, Step};
use super::queue_stats::{chunks, CHUNK_BYTES};
use super::{QueueCache, WorkerShared};
use crate::proto::worker::worker_service_client::WorkerServiceClient;
use crate::proto::worker::{GetQueuesRequest, GetQueuesResponse, StatsReport};
use crate::raft::network::Channels;
use crate::raft::store::AppliedState;
use crate::raft::NodeId;
use crate::shutdown::ShutdownListener;

/// How often changed queue statistics are sent (full reports go at once).
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Longest one page or chunk may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a fetch restarts when the lists change between pages.
const FETCH_ATTEMPTS: usize = 3;

pub struct SyncLoop {
    pub shared: Arc<WorkerShared>,
    pub applied: watch::Receiver<Arc<AppliedState>>,
    pub coordinator: Coordinator,
    pub channels: Channels,
}

/// The leader and term that acknowledged our last statistics; `None` after
/// a failure (the next report is full).
type StatsAckedBy = Option<(NodeId, u64)>;

impl SyncLoop {
    pub async fn run(mut self, mut stop: ShutdownListener) {
        let mut contact_rx = self.shared.watch_contact();
        let mut acked_by: StatsAckedBy = None;
        let mut last_stats: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STATS_INTERVAL) => {}
                r = contact_rx.changed() => if r.is_err() { return },
                r = self.applied.changed() => if r.is_err() { return },
                _ = self.shared.sync_now.notified() => {}
                _ = stop.recv() => return,
            }
            let Some(contact) = contact_rx.borrow_and_update().clone() else {
                continue;
            };
            if self.shared.is_retired() {
                continue;
            }
            let state = self.applied.borrow_and_update().clone();
            self.refresh_queues(&state, &contact).await;
            let full = acked_by != Some((contact.leader, contact.term));
            if full || last_stats.is_none_or(|t| t.elapsed() >= STATS_INTERVAL) {
                last_stats = Some(Instant::now());
                acked_by = self.send_stats(&contact, full).await;
            }
        }
    }

    fn client(&self, addr: &str) -> Result<WorkerServiceClient<tonic::transport::Channel>, String> {
        super::heartbeat::worker_client(&self.channels, addr)
    }

    async fn get_page(
        &self,
        contact: &LeaderContact,
        req: GetQueuesRequest,
    ) -> Result<GetQueuesResponse, String> {
        match &contact.addr {
            None => Ok(self.coordinator.get_queues(&req)),
            Some(addr) => {
                let mut client = self.client(addr)?;
                let mut request = tonic::Request::new(req);
                request.set_timeout(RPC_TIMEOUT);
                client
                    .get_queues(request)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string())
            }
        }
    }

    /// Fetches queue lists when discovery moved on or owned shards changed.
    async fn refresh_queues(&self, state: &AppliedState, contact: &LeaderContact) {
        let owned: BTreeSet<u32> = state
            .cluster
            .owned_by(self.shared.node_id)
            .map(|(s, _)| s)
            .collect();
        let cached = self.shared.queues();
        let cached_shards: BTreeSet<u32> = cached.by_shard.keys().copied().collect();
        // Version 0: the leader has not discovered this term; keep our lists.
        if contact.queues_version == 0
            || (cached.version == contact.queues_version && cached_shards == owned)
        {
            return;
        }
        let shards: Vec<u32> = owned.into_iter().collect();
        for _ in 0..FETCH_ATTEMPTS {
            let mut asm = Assembler::default();
            let mut req = GetQueuesRequest {
                shards: shards.clone(),
                start_shard: 0,
                start_offset: 0,
            };
            loop {
                let page = match self.get_page(contact, req.clone()).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::debug!(error = %e, "could not fetch queue lists");
                        return;
                    }
                };
                match asm.add(page) {
                    Step::Next { shard, offset } => {
                        req.start_shard = shard;
                        req.start_offset = offset;
                    }
                    Step::Done => {
                        let (version, by_shard) = asm.finish();
                        if version != 0 {
                            self.shared.set_queues(QueueCache { version, by_shard });
                        }
                        return;
                    }
                    Step::Changed => break,
                }
            }
        }
        tracing::debug!("queue lists kept changing while fetched; trying again later");
    }

    /// Sends statistics in chunks; returns who acknowledged all of them.
    async fn send_stats(&self, contact: &LeaderContact, full: bool) -> StatsAckedBy {
        let report = super::queue_stats::take_report_shared(&self.shared.queue_stats, full);
        if report.is_empty() && !full {
            return Some((contact.leader, contact.term));
        }
        let parts = chunks(report, CHUNK_BYTES);
        let count = parts.len().max(1);
        let mut parts = parts.into_iter();
        for i in 0..count {
            let req = StatsReport {
                node_id: self.shared.node_id,
                full: full && i == 0,
                stats: parts.next().unwrap_or_default(),
            };
            let ack = match &contact.addr {
                None => self
                    .coordinator
                    .on_stats(req)
                    .await
                    .map_err(|e| e.to_string()),
                Some(addr) => match self.client(addr) {
                    Ok(mut client) => {
                        let mut request = tonic::Request::new(req);
                        request.set_timeout(RPC_TIMEOUT);
                        client
                            .report_stats(request)
                            .await
                            .map(|r| r.into_inner())
                            .map_err(|s| s.message().to_string())
                    }
                    Err(e) => Err(e),
                },
            };
            match ack {
                Ok(ack) if ack.leader_id == contact.leader && ack.term == contact.term => {}
                Ok(_) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, "queue statistics not acknowledged");
                    return None;
                }
            }
        }
        Some((contact.leader, contact.term))
    }
}
