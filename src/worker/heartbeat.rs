//! Heartbeats to the leader: report what runs here, renew the lease, and
//! keep the queue lists of owned shards current.
//!
//! The lease is renewed from the time the heartbeat was **sent**, and only by
//! a reply from the node we believe leads, in a term no older than any reply
//! seen before. If replies stop, nothing renews the lease and the runner
//! stops every shard when it runs out, without being told.
//!
//! Queue statistics ride along (see `queue_stats`): the first report to a
//! leader of a new term, or after a failed report, is full; later ones carry
//! changed shards at most every [`STATS_INTERVAL`].

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use super::coordinator::Coordinator;
use super::{lock, QueueCache, WorkerShared};
use crate::proto::worker::worker_service_client::WorkerServiceClient;
use crate::proto::worker::{
    GetQueuesRequest, HeartbeatRequest, HeartbeatResponse, ShardReport, TaskCounters,
};
use crate::raft::network::Channels;
use crate::raft::store::AppliedState;
use crate::raft::{NodeId, Raft};
use crate::shutdown::ShutdownListener;

/// Everything the loop needs.
pub struct HeartbeatLoop {
    pub shared: Arc<WorkerShared>,
    pub raft: Raft,
    pub applied: watch::Receiver<Arc<AppliedState>>,
    pub coordinator: Coordinator,
    pub channels: Channels,
}

/// How often changed queue statistics are sent (full reports go at once).
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// What the statistics sender remembers between beats.
#[derive(Debug, Default)]
struct StatsSender {
    /// The leader and term that acknowledged our last report with statistics;
    /// `None` after a failure (the next report is full).
    acked_by: Option<(NodeId, u64)>,
    /// When statistics were last taken for a report.
    last_sent: Option<Instant>,
}

/// This node's report, as of now, without queue statistics.
pub fn build_report(shared: &WorkerShared, applied_index: u64) -> HeartbeatRequest {
    let running = shared
        .running()
        .into_iter()
        .map(|(shard, r)| ShardReport {
            shard,
            epoch: r.epoch,
            passes: r.passes.load(Ordering::Relaxed),
        })
        .collect();
    HeartbeatRequest {
        node_id: shared.node_id,
        applied_index,
        running,
        lease_remaining_ms: shared.lease_remaining().map_or(0, |d| d.as_millis() as u64),
        fenced_writes: shared.stats.fenced_writes.load(Ordering::Relaxed),
        tasks: Some(task_counters(shared)),
        stats_full: false,
        stats: Vec::new(),
        incarnation: shared.incarnation,
        seq: shared.report_seq.fetch_add(1, Ordering::SeqCst) + 1,
    }
}

/// This node's housekeeping counters.
pub fn task_counters(shared: &WorkerShared) -> TaskCounters {
    let s = &shared.stats;
    TaskCounters {
        calls: s.calls.load(Ordering::Relaxed),
        unlocked_ack: s.unlocked_ack.load(Ordering::Relaxed),
        unlocked_nack: s.unlocked_nack.load(Ordering::Relaxed),
        timed_out: s.timed_out.load(Ordering::Relaxed),
        errors: s.store_errors.load(Ordering::Relaxed),
        last_run_ms: s.last_run_ms.load(Ordering::Relaxed),
        last_success_ms: s.last_success_ms.load(Ordering::Relaxed),
    }
}

impl HeartbeatLoop {
    pub async fn run(self, mut stop: ShutdownListener) {
        let interval = self.shared.settings.heartbeat_interval;
        let mut stats = StatsSender::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.shared.report_now.notified() => {}
                _ = stop.recv() => return,
            }
            // Frozen (test pause), or retired: a leaving node has no lease to
            // renew and has handed its shards back.
            if self.shared.freeze.is_frozen() || self.shared.is_retired() {
                continue;
            }
            self.beat(&mut stats).await;
        }
    }

    async fn beat(&self, stats: &mut StatsSender) {
        let (leader, leader_addr) = {
            let m = self.raft.metrics().borrow_watched().clone();
            let Some(leader) = m.current_leader else {
                return;
            };
            let addr = m
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.raft_addr.clone());
            (leader, addr)
        };
        let state = self.applied.borrow().clone();
        let mut report = build_report(&self.shared, state.applied_index());
        let sent_at = Instant::now();
        // Full when this leader has not acknowledged statistics from us yet
        // (new leader, new term, or the last report failed).
        let full = stats.acked_by.is_none_or(|(l, _)| l != leader);
        if full
            || stats
                .last_sent
                .is_none_or(|t| sent_at - t >= STATS_INTERVAL)
        {
            report.stats_full = full;
            report.stats = lock(&self.shared.queue_stats).take_report(full);
            stats.last_sent = Some(sent_at);
        }
        let carried_stats = report.stats_full || !report.stats.is_empty();
        let reply = if leader == self.shared.node_id {
            self.coordinator
                .on_heartbeat(report)
                .await
                .map_err(|e| e.to_string())
        } else {
            match &leader_addr {
                Some(addr) => self.remote_heartbeat(addr, report).await,
                None => Err(format!("leader {leader} has no known address")),
            }
        };
        match reply {
            Ok(ack) if ack.leader_id == leader => {
                self.shared.renew_lease(sent_at, ack.term);
                match stats.acked_by {
                    // A new term of the same leader id knows nothing either.
                    Some((_, term)) if term != ack.term => stats.acked_by = None,
                    _ if carried_stats => stats.acked_by = Some((leader, ack.term)),
                    _ => {}
                }
                self.refresh_queues(&state, leader, leader_addr.as_deref(), ack.queues_version)
                    .await;
            }
            Ok(ack) => {
                stats.acked_by = None;
                tracing::debug!(
                    expected = leader,
                    answered = ack.leader_id,
                    "heartbeat answered by another leader"
                )
            }
            Err(e) => {
                stats.acked_by = None;
                tracing::debug!(leader, error = %e, "heartbeat not acknowledged")
            }
        }
    }

    fn client(&self, addr: &str) -> Result<WorkerServiceClient<tonic::transport::Channel>, String> {
        self.channels
            .get(addr)
            .map(WorkerServiceClient::new)
            .map_err(|e| e.to_string())
    }

    async fn remote_heartbeat(
        &self,
        addr: &str,
        report: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, String> {
        let mut client = self.client(addr)?;
        let mut request = tonic::Request::new(report);
        request.set_timeout(self.shared.settings.heartbeat_interval);
        client
            .heartbeat(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
    }

    /// Fetches queue lists when discovery moved on or owned shards changed.
    async fn refresh_queues(
        &self,
        state: &AppliedState,
        leader: NodeId,
        leader_addr: Option<&str>,
        version: u64,
    ) {
        let owned: BTreeSet<u32> = state
            .cluster
            .owned_by(self.shared.node_id)
            .map(|(s, _)| s)
            .collect();
        let cached = self.shared.queues();
        let cached_shards: BTreeSet<u32> = cached.by_shard.keys().copied().collect();
        if cached.version == version && cached_shards == owned {
            return;
        }
        let request = GetQueuesRequest {
            shards: owned.iter().copied().collect(),
        };
        let response = if leader == self.shared.node_id {
            Ok(self.coordinator.get_queues(&request))
        } else {
            match leader_addr.map(|a| self.client(a)) {
                Some(Ok(mut client)) => {
                    // Bounded like the heartbeat itself: this loop renews the lease.
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(self.shared.settings.heartbeat_interval * 2);
                    client
                        .get_queues(request)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| s.message().to_string())
                }
                Some(Err(e)) => Err(e),
                None => Err("no leader address".into()),
            }
        };
        match response {
            Ok(resp) => {
                let by_shard = resp
                    .shards
                    .into_iter()
                    .map(|sq| (sq.shard, Arc::new(sq.queues)))
                    .collect();
                self.shared.set_queues(QueueCache {
                    version: resp.version,
                    by_shard,
                });
            }
            Err(e) => tracing::debug!(error = %e, "could not fetch queue lists"),
        }
    }
}
