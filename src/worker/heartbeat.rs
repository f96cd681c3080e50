//! Heartbeats to the leader: report what runs here and renew the lease.
//!
//! The lease is renewed from the time the heartbeat was **sent**, and only by
//! a reply from the node we believe leads, in a term no older than any reply
//! seen before. If replies stop, nothing renews the lease and the runner
//! stops every shard when it runs out, without being told.
//!
//! A heartbeat is small and the same size whatever the number of queues:
//! queue lists and queue statistics travel in their own RPCs (`sync`), so
//! the lease never waits on bulk data. Each acknowledged heartbeat tells the
//! sync loop which leader to talk to ([`LeaderContact`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::alias::WatchReceiverOf;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::metrics::RaftServerMetrics;

use super::coordinator::Coordinator;
use super::service::coord_status;
use super::{WorkerCounts, WorkerShared};
use crate::proto::worker::worker_service_client::WorkerServiceClient;
use crate::proto::worker::{HeartbeatRequest, HeartbeatResponse, ShardReport, TaskCounters};
use crate::raft::network::{ChannelError, Channels};
use crate::raft::MembershipView;
use crate::raft::{NodeId, Raft, TypeConfig};
use crate::shutdown::ShutdownListener;

/// For one interval after a leader change, how soon a heartbeat that was
/// not acknowledged for a passing reason is tried again (at most
/// `heartbeat_interval`).
const LEADER_CHANGE_RETRY: Duration = Duration::from_millis(25);

/// Everything the loop needs.
pub struct HeartbeatLoop {
    pub shared: Arc<WorkerShared>,
    pub raft: Raft,
    pub coordinator: Coordinator,
    pub channels: Channels,
}

/// The leader that acknowledged this node's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderContact {
    pub leader: NodeId,
    /// Its `raft_addr` (`None` when it is this node).
    pub addr: Option<String>,
    pub term: u64,
    /// Its queue discovery version.
    pub queues_version: u64,
}

/// A worker-service client for the node at `addr`, on its reused channel.
pub(crate) fn worker_client(
    channels: &Channels,
    addr: &str,
) -> Result<WorkerServiceClient<tonic::transport::Channel>, String> {
    channels
        .get(addr)
        .map(WorkerServiceClient::new)
        .map_err(|e| e.to_string())
}

/// This node's report, as of now.
/// The report's applied index is the one the runner last reconciled its
/// tasks with, read before the running set: a shard missing from the set
/// was stopped (or never started) by a state at least that new, so the
/// leader's "stopped after applying the release" test cannot be fooled by a
/// task started from an older state after the index was read.
pub fn build_report(shared: &WorkerShared) -> HeartbeatRequest {
    let counts = shared.counts();
    let applied_index = shared.reconciled_index();
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
        fenced_writes: counts.fenced_writes,
        tasks: Some(task_counters(shared, counts)),
        incarnation: shared.incarnation,
        seq: shared.report_seq.fetch_add(1, Ordering::SeqCst) + 1,
        // Every fence: the leader shows those at a shard's current epoch,
        // which only a newer generation, or a reused one, can cause.
        fenced: shared
            .fenced()
            .into_iter()
            .map(|(shard, epoch)| ShardReport {
                shard,
                epoch,
                passes: 0,
            })
            .collect(),
        needs_discovery: shared.needs_discovery(Instant::now()),
    }
}

/// This node's housekeeping counters.
pub fn task_counters(shared: &WorkerShared, counts: WorkerCounts) -> TaskCounters {
    let s = &shared.stats;
    TaskCounters {
        calls: counts.calls,
        unlocked_ack: counts.unlocked_ack,
        unlocked_nack: counts.unlocked_nack,
        timed_out: counts.timed_out,
        errors: counts.store_errors,
        last_run_ms: s.last_run_ms.load(Ordering::Relaxed),
        last_success_ms: s.last_success_ms.load(Ordering::Relaxed),
    }
}

impl HeartbeatLoop {
    pub async fn run(self, mut stop: ShutdownListener) {
        let interval = self.shared.settings.heartbeat_interval;
        // A new leader is heartbeated the moment it is known, even if a
        // heartbeat to the old one is still waiting for its answer. The
        // lease runs from the last heartbeat the old leader answered, so
        // after a failover a follower that waited out its interval (or a
        // call to a dead host) would renew later than it could, and with a
        // failover near the lease its shards would stop until it did.
        let mut roles = Some(self.raft.server_metrics());
        let mut leader_seen = roles
            .as_ref()
            .and_then(|r| r.borrow_watched().current_leader);
        // Until when a heartbeat that was not acknowledged for a passing
        // reason is tried again every LEADER_CHANGE_RETRY instead of every
        // interval: one interval after a leader change. A leader that has
        // just been elected refuses until a quorum has acknowledged it in
        // its term, and that must not cost the follower a whole interval.
        let mut quick_until = leader_seen.map(|_| Instant::now() + interval);
        // The first heartbeat goes at once: a leader may be known already.
        let mut beat_now = true;
        loop {
            if !beat_now {
                let quick = quick_until.is_some_and(|until| Instant::now() < until);
                let wait = if quick {
                    interval.min(LEADER_CHANGE_RETRY)
                } else {
                    interval
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.shared.report_now.notified() => {}
                    _ = leader_change(&mut roles, leader_seen) => {}
                    _ = stop.recv() => return,
                }
            }
            beat_now = false;
            // The leader as the watch has it now, whatever woke the loop: a
            // change opens a window of quick retries.
            let known = roles
                .as_ref()
                .and_then(|r| r.borrow_watched().current_leader);
            if known != leader_seen {
                tracing::debug!(node = self.shared.node_id, leader = ?known, "new leader: heartbeat now");
                leader_seen = known;
                quick_until = known.map(|_| Instant::now() + interval);
            }
            // Frozen (test pause), or retired: a leaving node has no lease to
            // renew and has handed its shards back.
            if self.shared.freeze.is_frozen() || self.shared.is_retired() {
                continue;
            }
            if let Some(why) = raft_stopped(self.raft.metrics()).await {
                // The applied state is frozen: pause, release and moves
                // would never reach the runner. Stop working and stop
                // renewing; the leader reassigns after lease + margin.
                if self.shared.lease_valid() {
                    tracing::error!(node = self.shared.node_id, error = %why, "the Raft core stopped: giving up the lease and every shard");
                }
                self.shared.revoke_lease();
                continue;
            }
            match self.beat(&mut roles).await {
                Beat::Acked | Beat::Refused => quick_until = None,
                Beat::NotYet => {}
                // The new leader is read at the top of the loop.
                Beat::LeaderChanged => beat_now = true,
            }
        }
    }

    /// One heartbeat to the leader this node knows. A call to another node
    /// is dropped the moment another node is known to lead (`roles`); not
    /// when no leader is known, as while this node votes: the call may still
    /// be answered, and there is no one else to ask.
    async fn beat(
        &self,
        roles: &mut Option<WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>>,
    ) -> Beat {
        let (leader, leader_addr) = {
            // The loop's own receiver of the server metrics (the full ones
            // are republished on every Raft heartbeat). `None` once the core
            // stopped publishing, which `raft_stopped` reports first.
            let Some(rx) = roles.as_ref() else {
                return Beat::NotYet;
            };
            let m = rx.borrow_watched();
            let Some(leader) = m.current_leader else {
                return Beat::NotYet;
            };
            (leader, m.member(leader).map(|n| n.raft_addr.clone()))
        };
        let report = build_report(&self.shared);
        let sent_at = Instant::now();
        let local = leader == self.shared.node_id;
        let reply = if local {
            self.coordinator
                .on_heartbeat(report)
                .await
                .map_err(|e| Failure::from(coord_status(e)))
        } else {
            match &leader_addr {
                Some(addr) => tokio::select! {
                    reply = self.remote_heartbeat(addr, report) => reply,
                    _ = another_leader(roles, leader) => return Beat::LeaderChanged,
                },
                // Passing: the membership naming it may not be applied yet.
                None => Err(Failure {
                    passing: true,
                    why: format!("leader {leader} has no known address"),
                }),
            }
        };
        match reply {
            Ok(ack) if ack.leader_id == leader => {
                self.shared.raise_start_barrier(ack.commit_index);
                self.shared.renew_lease(sent_at, ack.term);
                self.shared.set_contact(LeaderContact {
                    leader,
                    addr: if local { None } else { leader_addr },
                    term: ack.term,
                    queues_version: ack.queues_version,
                });
                Beat::Acked
            }
            Ok(ack) => {
                tracing::debug!(
                    expected = leader,
                    answered = ack.leader_id,
                    "heartbeat answered by another leader"
                );
                Beat::NotYet
            }
            Err(Failure { passing, why }) => {
                tracing::debug!(leader, error = %why, "heartbeat not acknowledged");
                if passing {
                    Beat::NotYet
                } else {
                    Beat::Refused
                }
            }
        }
    }

    async fn remote_heartbeat(
        &self,
        addr: &str,
        report: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, Failure> {
        let channel = self.channels.get(addr).map_err(|e| Failure {
            // A partition (simulated by tests) stands for a network that
            // fails, which a real call reports as UNAVAILABLE: passing. A
            // bad address is not.
            passing: matches!(e, ChannelError::Blocked(_)),
            why: e.to_string(),
        })?;
        let mut client = WorkerServiceClient::new(channel);
        let mut request = tonic::Request::new(report);
        request.set_timeout(self.shared.settings.heartbeat_interval);
        client
            .heartbeat(request)
            .await
            .map(|r| r.into_inner())
            .map_err(Failure::from)
    }
}

/// What one heartbeat came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// The leader this node knows acknowledged it: the lease is renewed.
    Acked,
    /// Not acknowledged for a passing reason, worth another try soon: no
    /// leader known yet, a leader without a fresh quorum acknowledgement
    /// yet, another node answering, or the call failing on the way.
    NotYet,
    /// Refused for a reason another try would not change soon (behind the
    /// log, a stale run, an unknown node): the next try waits an interval.
    Refused,
    /// Another node became the known leader while the call was in flight;
    /// the call was dropped.
    LeaderChanged,
}

/// Why a heartbeat was not acknowledged.
struct Failure {
    /// `UNAVAILABLE`, a call that did not complete, or a peer behind a test
    /// partition: see [`Beat::NotYet`].
    passing: bool,
    why: String,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        Self {
            passing: matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            ),
            why: format!("{}: {}", status.code(), status.message()),
        }
    }
}

/// The known leader once it differs from `seen`, at once if it already
/// does. Never resolves once the core stops publishing (`roles` becomes
/// `None`): `raft_stopped` handles that at the next interval. Cancel-safe:
/// it compares the current value before waiting, so a change consumed by an
/// earlier call that did not return it is still seen. Callers take the
/// returned value as their new `seen`, so it does not resolve twice for one
/// value.
async fn leader_change(
    roles: &mut Option<WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>>,
    seen: Option<NodeId>,
) -> Option<NodeId> {
    loop {
        let Some(rx) = roles.as_mut() else {
            return std::future::pending().await;
        };
        let leader = rx.borrow_watched().current_leader;
        if leader != seen {
            return leader;
        }
        if rx.changed().await.is_err() {
            *roles = None;
        }
    }
}

/// A known leader other than `leader`, passing over spells of no leader
/// (and `leader` itself again after one).
async fn another_leader(
    roles: &mut Option<WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>>,
    leader: NodeId,
) -> NodeId {
    let mut seen = Some(leader);
    loop {
        match leader_change(roles, seen).await {
            Some(other) if other != leader => return other,
            now => seen = now,
        }
    }
}

/// Why this node's Raft core no longer runs, if it does not: a fatal
/// error or a shutdown, which the core marks in the full metrics on its
/// way out (the server metrics keep the last role), or a panic (a failed
/// assertion), which unwinds the core task and drops the metrics sender
/// without marking anything.
async fn raft_stopped(
    mut metrics: WatchReceiverOf<TypeConfig, crate::raft::RaftMetrics>,
) -> Option<String> {
    {
        let m = metrics.borrow_watched();
        match &m.running_state {
            Err(fatal) => return Some(fatal.to_string()),
            Ok(()) if m.state == openraft::ServerState::Shutdown => {
                return Some("shut down".into())
            }
            Ok(()) => {}
        }
    }
    // A fresh clone may not have seen the current value, so the first poll
    // can report a change even on a closed channel; the second is pending
    // on an open channel (or reports another change: alive) and fails on a
    // closed one.
    for _ in 0..2 {
        match tokio::time::timeout(Duration::ZERO, metrics.changed()).await {
            Ok(Err(_)) => return Some("the Raft core task ended (panicked)".into()),
            Ok(Ok(())) => continue,
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use openraft::async_runtime::watch::{Watch, WatchSender};
    use openraft::error::Fatal;

    use super::*;
    use crate::raft::RaftMetrics;

    type Channel = openraft::alias::WatchOf<TypeConfig>;

    #[tokio::test]
    async fn a_live_core_is_not_stopped() {
        let (tx, rx) = Channel::channel(RaftMetrics::new_initial(1));
        assert_eq!(raft_stopped(rx.clone()).await, None);
        // An unseen update is not a stop either.
        tx.send(RaftMetrics::new_initial(1))
            .expect("receiver alive");
        assert_eq!(raft_stopped(rx).await, None);
    }

    #[tokio::test]
    async fn a_panicked_core_is_stopped_even_behind_an_unseen_update() {
        let (tx, rx) = Channel::channel(RaftMetrics::new_initial(1));
        // The core's last update, then the unwinding drops its sender
        // without marking anything.
        tx.send(RaftMetrics::new_initial(1))
            .expect("receiver alive");
        drop(tx);
        let why = raft_stopped(rx).await.expect("a panic is a stop");
        assert!(why.contains("panicked"), "{why}");
    }

    #[tokio::test]
    async fn a_fatal_error_or_a_shutdown_is_a_stop() {
        let mut fatal = RaftMetrics::new_initial(1);
        fatal.running_state = Err(Fatal::Panicked);
        let (_tx, rx) = Channel::channel(fatal);
        assert_eq!(raft_stopped(rx).await.as_deref(), Some("panicked"));

        let mut shut = RaftMetrics::new_initial(1);
        shut.state = openraft::ServerState::Shutdown;
        let (_tx, rx) = Channel::channel(shut);
        assert_eq!(raft_stopped(rx).await.as_deref(), Some("shut down"));
    }
}
