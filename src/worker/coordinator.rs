//! Leader-only coordination: liveness, reports, queue discovery, planning.
//!
//! Runs on every node and does nothing unless the node leads. Its view
//! ([`LeaderView`]) belongs to one leader term and is dropped when the term
//! changes: a new leader starts knowing nothing, so by `cluster::lease` it
//! waits one full `lease + margin` before calling anyone gone.
//!
//! Invariants:
//! - A heartbeat is acknowledged only while this node leads and a quorum
//!   acknowledged it within `leader_freshness`, so a deposed leader that has
//!   not noticed yet cannot renew anyone's lease.
//! - A live owner's shard is only released, never reassigned directly; it is
//!   assigned again once that owner reported it stopped after applying the
//!   release, or went silent for `lease + margin`, or handed its shards back.
//! - One planning round at a time (the `planning` lock).
//! - A hand-back is undone only by a report the node built after it, or one
//!   from a new process (`returned`): a report still in flight when the node
//!   left would otherwise make the leader wait out its lease.
//! - Queue gauges ([`Coordinator::queue_gauges`]) are served only while this
//!   node leads with a fresh quorum acknowledgement, and only once it has led
//!   for `gauge_holdoff = leader_freshness + scrape_interval`. A deposed
//!   leader is fresh at most `leader_freshness` after its successor's
//!   election (the quorums intersect in a node that stopped acknowledging it
//!   when it voted), so the windows in which two nodes serve gauges never
//!   overlap, and are at least one scrape interval apart: the old leader's
//!   next scrape (showing none) comes before the new leader's first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::sync::{watch, Notify};

use super::discovery::QueueIndex;
use super::events::{Mode, Scheduling};
use super::queue_stats::{LeaderQueueStats, ShardRows};
use super::WorkerSettings;
use crate::cluster::{ClusterState, Command, CommandResult};
use crate::leader::{CommitTimes, LeaderTerm, ShardRun, ShardView, Timing};
use crate::locks::lock;
use crate::proto::worker::{
    GetQueuesRequest, GetQueuesResponse, HeartbeatRequest, HeartbeatResponse, StatsAck, StatsReport,
};
use crate::raft::store::{AppliedState, AppliedView};
use crate::raft::MembershipView;
use crate::raft::{NodeId, Raft, RaftMetrics, WriteError};
use crate::store::SharedStore;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_admin: Option<String>,
    },
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    #[error("node {0} is the last live worker; draining it would leave no node to run shards")]
    LastWorker(NodeId),
    #[error("cluster is not initialized yet (no shard count recorded)")]
    NotInitialized,
    #[error("node {node} has applied the log to {applied}, but must have applied {required} (the commit index {committed} less {MAX_APPLY_LAG} entries, or what was committed a lease ago): not acknowledged")]
    Lagging {
        node: NodeId,
        applied: u64,
        required: u64,
        committed: u64,
    },
    #[error("node {node} runs shard {shard} at epoch {epoch}, which the shard table gave to another node since: not acknowledged")]
    StaleRun {
        node: NodeId,
        shard: u32,
        epoch: u64,
    },
    #[error("raft: {0}")]
    Raft(#[from] WriteError),
    #[error("raft: not committed within {0:?} (has the leader lost its quorum?)")]
    NotCommitted(std::time::Duration),
}

mod run_loop;
mod view;

use view::{LeaderView, NodesNeedingDiscovery, IDLE_PLAN, REASSIGNMENTS_KEPT, WRITE_TIMEOUT};
pub use view::{Reassignment, Report, Round, MAX_APPLY_LAG};

/// Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    raft: Raft,
    state_machine: AppliedView,
    store: SharedStore,
    settings: WorkerSettings,
    /// This node's scheduling mode: without queue events owners cannot
    /// adopt new queues, so discovery runs more often (see `run`).
    scheduling: watch::Receiver<Scheduling>,
    /// std mutexes: held for short, synchronous sections only.
    view: Mutex<Option<LeaderView>>,
    queues: Mutex<QueueIndex>,
    /// The latest `REASSIGNMENTS_KEPT` reassignments, oldest first.
    reassignments: Mutex<std::collections::VecDeque<Reassignment>>,
    /// Serializes planning rounds (held across the Raft write).
    planning: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Shard owners whose heartbeats say they cannot count on lock events
    /// to adopt new queues (they poll, or just resubscribed): while one
    /// does, discovery runs at the polling pace.
    needing_discovery: Mutex<NodesNeedingDiscovery>,
}

impl Coordinator {
    pub fn new(
        node_id: NodeId,
        raft: Raft,
        state_machine: AppliedView,
        store: SharedStore,
        settings: WorkerSettings,
        scheduling: watch::Receiver<Scheduling>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_id,
                raft,
                state_machine,
                store,
                settings,
                scheduling,
                view: Mutex::new(None),
                queues: Mutex::new(QueueIndex::default()),
                reassignments: Mutex::new(std::collections::VecDeque::new()),
                planning: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                needing_discovery: Mutex::new(NodesNeedingDiscovery::default()),
            }),
        }
    }

    fn metrics(&self) -> RaftMetrics {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    fn not_leader(&self, m: &RaftMetrics) -> CoordError {
        let leader_admin = m
            .current_leader
            .and_then(|id| m.member(id))
            .map(|n| n.admin_addr.clone());
        CoordError::NotLeader {
            leader: m.current_leader,
            leader_admin,
        }
    }

    /// Checks this node leads with a fresh quorum acknowledgement; returns the term.
    ///
    /// Reads the acknowledgement time from the metrics snapshot `m`: the Raft
    /// core republishes its metrics at the top of every loop turn, and a
    /// leader's core turns at least once per `raft.heartbeat_interval` (the
    /// heartbeat the pacer triggers, then its replies: `raft::pacer`), so
    /// the snapshot's `last_quorum_acked` is at most about a heartbeat
    /// older than the core's. Older only ever means "less fresh": a stale snapshot
    /// can refuse a fresh leader for a moment, never accept a stale one.
    /// (Asking the core through a read linearizer gave the same answer at
    /// the cost of a core round trip per heartbeat.)
    fn leading(&self, m: &RaftMetrics) -> Result<u64, CoordError> {
        if m.state != ServerState::Leader {
            return Err(self.not_leader(m));
        }
        let freshness = self.inner.settings.leader_freshness;
        let alone = {
            let mut voters = m.membership().voter_ids();
            voters.next() == Some(self.inner.node_id) && voters.next().is_none()
        };
        let fresh = alone
            || m.last_quorum_acked
                .as_ref()
                .is_some_and(|at| openraft::Instant::elapsed(&**at) <= freshness);
        if fresh {
            Ok(m.current_term)
        } else {
            tracing::debug!(
                node = self.inner.node_id,
                "leader without a fresh quorum acknowledgement"
            );
            Err(self.not_leader(m))
        }
    }

    /// Runs `f` on the view of `term`, creating it (knowing nothing) on a new term.
    fn with_view<T>(&self, term: u64, f: impl FnOnce(&mut LeaderView) -> T) -> T {
        let mut guard = lock(&self.inner.view);
        if guard.as_ref().is_none_or(|v| v.leader.term() != term) {
            let s = &self.inner.settings;
            let timing = Timing {
                lease: s.lease,
                margin: s.lease_margin,
                freshness: s.leader_freshness,
            };
            *guard = Some(LeaderView {
                leader: LeaderTerm::new(self.inner.node_id, term, timing, Instant::now()),
                stats: LeaderQueueStats::default(),
                // A healthy node reports an entry applied within a Raft
                // heartbeat (to learn the commit) plus a worker heartbeat
                // (to report it); freshness bounds the first.
                commits: CommitTimes::new(s.lease + s.leader_freshness + s.heartbeat_interval),
            });
            tracing::info!(term, "leading: tracking worker liveness from now");
        }
        f(guard.as_mut().expect("view was just ensured"))
    }

    /// The discovery version owners may fetch in `term`: 0 (keep what you
    /// have) until this leader's first discovery of the term succeeded, so a
    /// new leader that cannot reach the store replaces nobody's lists.
    fn queues_version(&self, term: u64) -> u64 {
        let index = lock(&self.inner.queues);
        if index.term == term {
            index.version
        } else {
            0
        }
    }

    /// Whether the heartbeat `req` may renew its sender's lease: a node
    /// behind the log (by entries in a busy log, by time in a quiet one:
    /// its state machine is stuck) may not, nor one that runs a shard the
    /// table gave to another node (it was declared gone and came back).
    /// `Ok` carries the commit index it checked against.
    async fn check_acknowledgeable(
        &self,
        m: &RaftMetrics,
        term: u64,
        req: &HeartbeatRequest,
        now: Instant,
    ) -> Result<u64, CoordError> {
        let node = req.node_id;
        let committed = m.local_committed.map_or(0, |c| c.index());
        // Behind by entries (a busy log) or by time (a quiet log): a node
        // whose state machine is stuck must lose its lease either way.
        let applied_long_ago = self.with_view(term, |view| {
            view.commits.observe(committed, now);
            view.commits.must_have_applied(now)
        });
        let required = applied_long_ago.max(committed.saturating_sub(MAX_APPLY_LAG));
        if req.applied_index < required {
            // debug: a learner catching up after add-node is refused at every
            // heartbeat until it has; its lease state shows in ctl status.
            tracing::debug!(
                node,
                applied = req.applied_index,
                required,
                committed,
                "heartbeat of a node behind the log refused"
            );
            if node == self.inner.node_id {
                // This leader's own state machine is stuck: its worker
                // loses its lease, and the planner, which counts the leader
                // as live, would never move its shards. Lead no longer.
                self.step_down(m).await;
            }
            return Err(CoordError::Lagging {
                node,
                applied: req.applied_index,
                required,
                committed,
            });
        }
        // A node that came back with tasks of shards that moved on (it was
        // declared gone: paused, cut off, its VM suspended past its lease)
        // gets no lease: its tasks stop within a lease of its own clock.
        let state = self.inner.state_machine.latest();
        if let Some(run) = req
            .running
            .iter()
            .find(|r| state.cluster.is_stale_run(node, r.shard, r.epoch))
        {
            tracing::warn!(
                node,
                shard = run.shard,
                epoch = run.epoch,
                "a node runs a shard that moved on: heartbeat refused"
            );
            return Err(CoordError::StaleRun {
                node,
                shard: run.shard,
                epoch: run.epoch,
            });
        }
        Ok(committed)
    }

    /// A follower's (or this node's own) heartbeat.
    pub async fn on_heartbeat(
        &self,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, CoordError> {
        let m = self.metrics();
        let term = self.leading(&m)?;
        let node = req.node_id;
        if m.member(node).is_none() {
            return Err(CoordError::UnknownNode(node));
        }
        let now = Instant::now();
        let committed = self.check_acknowledgeable(&m, term, &req, now).await?;
        let report = Report {
            received_at: now,
            applied_index: req.applied_index,
            running: req
                .running
                .iter()
                .map(|r| {
                    let run = ShardRun {
                        epoch: r.epoch,
                        passes: r.passes,
                    };
                    (r.shard, run)
                })
                .collect(),
            lease_remaining: Duration::from_millis(req.lease_remaining_ms),
            fenced_writes: req.fenced_writes,
            tasks: req.tasks.unwrap_or_default(),
            fenced: req.fenced.iter().map(|r| (r.shard, r.epoch)).collect(),
        };
        let fenced_now = self.fenced_at_current_epoch(node, &report.fenced);
        let heard = self.with_view(term, |view| {
            view.leader
                .heartbeat(node, report, req.incarnation, req.seq)
        });
        if heard.fenced_changed && !fenced_now.is_empty() {
            // Only a writer with a newer fencing token does this: another
            // cluster working the same store. Nothing here can fix it.
            tracing::error!(
                node,
                shards = ?fenced_now,
                "the store fenced this owner at its shards' current epochs: another deckhand cluster with a newer generation writes to the same store"
            );
        }
        if heard.back {
            tracing::info!(node, "node is back after handing its shards back");
        }
        let replan = heard.replan;
        tracing::debug!(node, "heartbeat");
        // A node that runs no shards adopts nothing: it needs no discovery.
        let needs_discovery = req.needs_discovery && !req.running.is_empty();
        if self.note_needs_discovery(node, needs_discovery, now) {
            tracing::debug!(
                node,
                "node cannot adopt new queues from events: discovering at the polling pace"
            );
            // The loop brings its next discovery forward.
            self.inner.wake.notify_one();
        }
        if replan {
            self.inner.wake.notify_one();
        }
        Ok(HeartbeatResponse {
            leader_id: self.inner.node_id,
            term,
            queues_version: self.queues_version(term),
            commit_index: committed,
        })
    }

    /// Records whether `node` needs discovery (see `NodesNeedingDiscovery`); true
    /// when it newly does.
    fn note_needs_discovery(&self, node: NodeId, needs: bool, now: Instant) -> bool {
        lock(&self.inner.needing_discovery).note(node, needs, now)
    }

    /// Whether this node polls (its own check found no events), or a shard
    /// owner that heartbeated within `lease + lease_margin` said it needs
    /// discovery.
    pub(super) fn discovery_needed(&self, now: Instant) -> bool {
        if self.inner.scheduling.borrow().mode == Mode::Polling {
            return true;
        }
        let recent = self.inner.settings.lease + self.inner.settings.lease_margin;
        lock(&self.inner.needing_discovery).any_within(now, recent)
    }

    /// The shards `node` owns at an epoch it reports the store fenced it at.
    fn fenced_at_current_epoch(&self, node: NodeId, fenced: &BTreeMap<u32, u64>) -> Vec<u32> {
        if fenced.is_empty() {
            return Vec::new();
        }
        let state = self.inner.state_machine.latest();
        state.cluster.owned_at(node, fenced).collect()
    }

    /// The members this leader has heard from within `lease + margin`
    /// (itself included). A new leader counts everyone live until it has
    /// waited that long, as for shard moves.
    pub async fn live_nodes(&self) -> Result<BTreeSet<NodeId>, CoordError> {
        let m = self.metrics();
        let term = self.leading(&m)?;
        let now = Instant::now();
        let members = member_ids(&m);
        Ok(self.with_view(term, |view| view.leader.live_members(&members, now)))
    }

    /// Commits a command as the leader (used by membership changes).
    pub async fn commit(&self, command: Command) -> Result<CommandResult, CoordError> {
        let m = self.metrics();
        self.leading(&m)?;
        self.write(command).await
    }

    /// Every queue's latest figures, or `None` unless this node may serve the
    /// cluster's queue gauges right now (see the module invariants).
    ///
    /// Only shards whose reporter owns them at the reported epoch, by the
    /// applied shard table, and still runs them, by its last report.
    ///
    /// Returns the accepted shards' rows by reference: the lock is held for
    /// one reference count per shard, never for a copy of every queue.
    pub async fn queue_gauges(&self) -> Option<Vec<ShardRows>> {
        let m = self.metrics();
        let term = self.leading(&m).ok()?;
        let hold_off = self.inner.settings.gauge_holdoff;
        let state = self.inner.state_machine.latest();
        let guard = lock(&self.inner.view);
        let view = guard.as_ref().filter(|v| v.leader.term() == term)?;
        if view.leader.since().elapsed() < hold_off {
            return None;
        }
        Some(view.stats.current_rows(|shard, node, epoch| {
            let owned = state
                .cluster
                .shards
                .get(shard as usize)
                .is_some_and(|s| s.owner == Some(node) && s.epoch == epoch);
            let running = view
                .leader
                .reports()
                .get(&node)
                .is_some_and(|r| r.running.get(&shard).is_some_and(|run| run.epoch == epoch));
            owned && running
        }))
    }

    /// One page of the queues of the requested shards (see `queue_lists`);
    /// version 0 and no lists until this term's first discovery succeeded.
    pub fn get_queues(&self, req: &GetQueuesRequest) -> GetQueuesResponse {
        let term = self.metrics().current_term;
        let index = lock(&self.inner.queues);
        if index.term != term {
            return GetQueuesResponse::default();
        }
        super::queue_lists::page(
            index.version,
            &index.by_shard,
            req,
            super::queue_lists::PAGE_BYTES,
        )
    }

    /// A chunk of an owner's queue figures (see `queue_stats`).
    pub async fn on_stats(&self, req: StatsReport) -> Result<StatsAck, CoordError> {
        let m = self.metrics();
        let term = self.leading(&m)?;
        let node = req.node_id;
        if m.member(node).is_none() {
            return Err(CoordError::UnknownNode(node));
        }
        let shard_count = self.inner.state_machine.latest().cluster.shard_count;
        self.with_view(term, |view| {
            view.stats.apply(node, req.full, req.stats, shard_count)
        });
        tracing::debug!(node, full = req.full, "queue statistics");
        Ok(StatsAck {
            leader_id: self.inner.node_id,
            term,
        })
    }

    /// Queue count per shard, from the last discovery.
    pub fn queue_counts(&self) -> BTreeMap<u32, usize> {
        lock(&self.inner.queues)
            .by_shard
            .iter()
            .map(|(s, q)| (*s, q.len()))
            .collect()
    }

    /// Every shard of `cluster` (the caller's snapshot of the applied
    /// state, so what it shows beside the shards agrees with them) as this
    /// leader sees it, for `ctl shards`.
    pub fn shard_views(&self, cluster: &ClusterState) -> Vec<ShardView> {
        crate::leader::shard_views(
            cluster,
            &self.reports(),
            &self.queue_counts(),
            Instant::now(),
        )
    }

    /// Last reports by node (leader only; empty otherwise).
    pub fn reports(&self) -> BTreeMap<NodeId, Report> {
        lock(&self.inner.view)
            .as_ref()
            .map(|v| v.leader.reports().clone())
            .unwrap_or_default()
    }

    /// The latest reassignments of a silent or departed node's shards this
    /// process decided (at most `REASSIGNMENTS_KEPT`, oldest first).
    pub fn reassignments(&self) -> Vec<Reassignment> {
        lock(&self.inner.reassignments).iter().copied().collect()
    }

    /// A node stopped all its shard work and is leaving: reassign now.
    ///
    /// `last_report` is the node's (incarnation, seq of its last heartbeat
    /// report): a report that was in flight when it left does not undo this.
    pub async fn hand_back(
        &self,
        node: NodeId,
        applied_index: u64,
        last_report: (u64, u64),
    ) -> Result<u32, CoordError> {
        let m = self.metrics();
        let term = self.leading(&m)?;
        if m.member(node).is_none() {
            return Err(CoordError::UnknownNode(node));
        }
        let owned = self
            .inner
            .state_machine
            .latest()
            .cluster
            .owned_by(node)
            .count() as u32;
        self.with_view(term, |view| {
            view.leader
                .hand_back(node, applied_index, last_report, Instant::now())
        });
        tracing::info!(node, shards = owned, "node handed its shards back");
        self.plan_round().await?;
        Ok(owned)
    }

    /// Marks `node` drained (or undrained) through Raft.
    pub async fn set_drained(&self, node: NodeId, drained: bool) -> Result<u32, CoordError> {
        let m = self.metrics();
        let term = self.leading(&m)?;
        let members = member_ids(&m);
        if !members.contains(&node) {
            return Err(CoordError::UnknownNode(node));
        }
        let state = self.inner.state_machine.latest();
        if drained {
            let now = Instant::now();
            let remaining = self.with_view(term, |view| {
                view.leader
                    .workers_without(node, &state.cluster, &members, now)
            });
            if remaining == 0 {
                return Err(CoordError::LastWorker(node));
            }
        }
        let owned = state.cluster.owned_by(node).count() as u32;
        self.write(Command::SetDrained { node, drained }).await?;
        tracing::info!(node, drained, "drain state changed");
        self.inner.wake.notify_one();
        Ok(owned)
    }

    /// Pauses, resumes or triggers a task through Raft (leader only).
    pub async fn task_command(&self, command: Command) -> Result<(), CoordError> {
        let described = command.to_string();
        self.commit(command).await?;
        tracing::info!(command = %described, "task settings changed");
        Ok(())
    }

    /// Commits a command, bounded: a leader that lost its quorum would
    /// otherwise hold the planning lock until it notices.
    async fn write(&self, command: Command) -> Result<CommandResult, CoordError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.inner.raft.client_write(command)).await {
            Ok(Ok(resp)) => Ok(resp.response().clone()),
            Ok(Err(e)) => Err(CoordError::Raft(e)),
            Err(_) => Err(CoordError::NotCommitted(WRITE_TIMEOUT)),
        }
    }

    /// One planning round: compute moves from the current view and commit them.
    pub async fn plan_round(&self) -> Result<Round, CoordError> {
        let _planning = self.inner.planning.lock().await;
        let m = self.metrics();
        let term = match self.leading(&m) {
            Ok(term) => term,
            Err(e) => {
                if m.state != ServerState::Leader {
                    *lock(&self.inner.view) = None;
                }
                return Err(e);
            }
        };
        let state = self.inner.state_machine.latest();
        if state.cluster.shard_count == 0 {
            return Err(CoordError::NotInitialized);
        }
        if !caught_up(&state, term, &m) {
            return Ok(Round {
                moved: 0,
                quiet_until: None,
            });
        }
        let members = member_ids(&m);
        let now = Instant::now();
        let max_releases = self.inner.settings.max_releases_per_round;
        let plan = self.with_view(term, |view| {
            view.leader
                .plan(&state.cluster, &members, max_releases, now)
        });
        let (moves, reassigned, expiry) = (plan.moves, plan.reassigned, plan.next_expiry);
        if moves.is_empty() {
            return Ok(Round {
                moved: 0,
                quiet_until: Some(expiry.unwrap_or(now + IDLE_PLAN)),
            });
        }
        self.keep_reassignments(reassigned);
        let count = moves.len();
        let moved = match self.write(Command::Moves { moves }).await? {
            CommandResult::Moved { applied, skipped } => {
                tracing::info!(applied, skipped, "shard moves committed");
                applied
            }
            CommandResult::Rejected(_) => 0,
            _ => count,
        };
        Ok(Round {
            moved,
            quiet_until: None,
        })
    }
}

/// Whether `state` includes everything committed before `term`: an entry
/// of this term has been applied. Plan only from such a state; a plan from
/// an older state would only be skipped by the compare-and-set.
fn caught_up(state: &AppliedState, term: u64, m: &RaftMetrics) -> bool {
    state.last_applied.is_some_and(|l| {
        l.leader_id.term == term && l.index() >= m.local_committed.map_or(0, |c| c.index())
    })
}

impl Coordinator {
    /// Logs and keeps (the last `REASSIGNMENTS_KEPT`) what a round took
    /// from gone nodes, for `ctl status`.
    fn keep_reassignments(&self, reassigned: Vec<Reassignment>) {
        if reassigned.is_empty() {
            return;
        }
        let from: BTreeSet<NodeId> = reassigned.iter().map(|r| r.from).collect();
        tracing::info!(
            ?from,
            shards = reassigned.len(),
            "reassigning shards of gone nodes"
        );
        let mut kept = lock(&self.inner.reassignments);
        kept.extend(reassigned);
        let excess = kept.len().saturating_sub(REASSIGNMENTS_KEPT);
        kept.drain(..excess);
        debug_assert!(kept.len() <= REASSIGNMENTS_KEPT);
    }

    /// Hands leadership to another voter: this leader cannot apply its own
    /// log. Repeated at each of its own refused heartbeats until it follows.
    async fn step_down(&self, m: &RaftMetrics) {
        let me = self.inner.node_id;
        let Some(target) = m.membership().voter_ids().find(|v| *v != me) else {
            tracing::error!("this leader's state machine is stuck and no other voter can lead");
            return;
        };
        tracing::error!(
            target,
            "this leader's state machine has not applied what it committed a lease ago: handing leadership off"
        );
        if let Err(e) = self.inner.raft.trigger().transfer_leader(target).await {
            tracing::warn!(target, error = %e, "leadership hand-off failed");
        }
    }
}

fn member_ids(m: &RaftMetrics) -> BTreeSet<NodeId> {
    m.membership().nodes().map(|(id, _)| *id).collect()
}
