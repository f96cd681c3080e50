//! The coordinator's per-term view (the pure `LeaderTerm` plus queue
//! figures), what a planning round did, and the coordinator's timing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::leader::{CommitTimes, LeaderTerm};
pub use crate::leader::{Reassignment, Report};
use crate::raft::NodeId;

use super::super::queue_stats::LeaderQueueStats;

/// What one planning round did, and when planning is next needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Shard moves committed.
    pub moved: usize,
    /// `Some(t)`: the round saw everything settled, and no decision can
    /// change before `t` (a node's liveness running out) unless an event
    /// wakes the planner: a heartbeat that changes what a node runs or has
    /// applied, a hand-back, a new applied state, a new role. `None`: plan
    /// again after `plan_interval` (moves were made, or the round could not
    /// run yet).
    pub quiet_until: Option<Instant>,
}

/// How many reassignments the leader keeps for diagnostics (a node that
/// crashes over and over would otherwise grow the list forever).
pub(super) const REASSIGNMENTS_KEPT: usize = 1024;

/// How far behind the leader's commit index a node's applied index may be
/// for its heartbeat to be acknowledged. A node that applies nothing (its
/// state machine stuck, its core stopped) runs from a frozen shard table and
/// would miss pauses and releases: it loses its lease instead. A healthy
/// node applies within milliseconds, and the log grows by at most a few
/// entries per planning round. In a quiet log this bound never trips; the
/// time bound ([`CommitTimes`]: applied what was committed a lease ago)
/// does.
pub const MAX_APPLY_LAG: u64 = 100;

/// The longest the leader goes without a planning round while nothing
/// changes: a safety net for a change no event announces.
pub(super) const IDLE_PLAN: Duration = Duration::from_secs(1);

/// The leader's knowledge during one term: its decisions (pure, in
/// `crate::leader`) and the queue figures owners reported.
pub(super) struct LeaderView {
    pub(super) leader: LeaderTerm,
    /// Queue figures the owners reported this term.
    pub(super) stats: LeaderQueueStats,
    /// When each commit index was first seen this term: a node must have
    /// applied what was committed a lease ago to be acknowledged.
    pub(super) commits: CommitTimes,
}

/// The longest a Raft write of the coordinator may take.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How soon a failed (or not yet possible) discovery is tried again.
pub(super) const DISCOVERY_RETRY: Duration = Duration::from_millis(500);

/// The longest discovery interval while this node polls (no queue events).
pub(super) const POLLING_DISCOVERY: Duration = Duration::from_secs(1);

/// How soon after committing shard moves the leader discovers again (the
/// new owners run their shards by then).
pub(super) const DISCOVERY_AFTER_MOVES: Duration = Duration::from_secs(1);

/// Which nodes' heartbeats say they need discovery (they poll, or may have
/// missed lock events), and when each last said so. Pure: the caller
/// passes the time.
///
/// Invariant: one entry per node whose latest heartbeat said so (a
/// heartbeat that says otherwise removes it; [`Self::any_within`] drops
/// entries older than its window). Only members' heartbeats get here, so
/// it holds at most the members plus nodes removed since the last
/// `any_within`.
#[derive(Debug, Default)]
pub(super) struct NodesNeedingDiscovery {
    since: BTreeMap<NodeId, Instant>,
}

impl NodesNeedingDiscovery {
    /// Records a heartbeat of `node`; true when it newly needs discovery.
    pub(super) fn note(&mut self, node: NodeId, needs: bool, now: Instant) -> bool {
        if needs {
            self.since.insert(node, now).is_none()
        } else {
            self.since.remove(&node);
            false
        }
    }

    /// Whether a node said it needs discovery within `window` before `now`;
    /// forgets the ones that have not (a node that stopped heartbeating no
    /// longer counts).
    pub(super) fn any_within(&mut self, now: Instant, window: Duration) -> bool {
        self.since
            .retain(|_, at| now.saturating_duration_since(*at) < window);
        !self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polling_node_counts_until_it_says_otherwise_or_goes_silent() {
        let t0 = Instant::now();
        let window = Duration::from_millis(1_300);
        let mut nodes = NodesNeedingDiscovery::default();
        assert!(!nodes.any_within(t0, window));
        // Newly polling: true once, then just refreshed.
        assert!(nodes.note(2, true, t0));
        assert!(!nodes.note(2, true, t0 + Duration::from_millis(200)));
        assert!(nodes.any_within(t0 + Duration::from_millis(1_000), window));
        // Back on events.
        assert!(!nodes.note(2, false, t0 + Duration::from_millis(1_100)));
        assert!(!nodes.any_within(t0 + Duration::from_millis(1_100), window));
        // Silent since its last heartbeat: counts only within the window.
        assert!(nodes.note(3, true, t0));
        assert!(nodes.any_within(t0 + Duration::from_millis(1_299), window));
        assert!(!nodes.any_within(t0 + Duration::from_millis(1_300), window));
        // Forgotten, so a later heartbeat is news again.
        assert!(nodes.note(3, true, t0 + Duration::from_millis(2_000)));
    }
}
