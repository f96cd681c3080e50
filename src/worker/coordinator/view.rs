//! The leader's per-term view and the small pure rules it applies: what a
//! node reported, which reassignments were made, what a planning round did,
//! and when a report means a node that handed its shards back is back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::cluster::lease::Liveness;
use crate::proto::worker::TaskCounters;
use crate::raft::NodeId;

use super::super::queue_stats::LeaderQueueStats;

/// What a node last reported.
#[derive(Debug, Clone)]
pub struct Report {
    pub received_at: Instant,
    pub applied_index: u64,
    /// shard -> (epoch, passes)
    pub running: BTreeMap<u32, (u64, u64)>,
    pub lease_remaining: Duration,
    pub fenced_writes: u64,
    pub tasks: TaskCounters,
    /// shard -> epoch at which the store fenced the node there.
    pub fenced: BTreeMap<u32, u64>,
}

/// A reassignment of a silent node's shards, kept for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reassignment {
    pub from: NodeId,
    pub shard: u32,
    /// How long `from` had been silent when the leader decided.
    pub silent_for: Duration,
    /// Whether `from` had handed its shards back (then no wait is needed).
    pub handed_back: bool,
}

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
/// entries per planning round.
pub const MAX_APPLY_LAG: u64 = 100;

/// The longest the leader goes without a planning round while nothing
/// changes: a safety net for a change no event announces.
pub(super) const IDLE_PLAN: Duration = Duration::from_secs(1);

/// The leader's knowledge during one term.
pub(super) struct LeaderView {
    pub(super) term: u64,
    /// When this node started tracking the term (after it was elected).
    pub(super) since: Instant,
    /// Queue figures the owners reported this term.
    pub(super) stats: LeaderQueueStats,
    pub(super) liveness: Liveness,
    pub(super) reports: BTreeMap<NodeId, Report>,
    pub(super) departed: BTreeSet<NodeId>,
    /// For each departed node, the (incarnation, report seq) it handed back
    /// at: only a later report, or one from a new incarnation, means it is back.
    pub(super) departed_at: BTreeMap<NodeId, (u64, u64)>,
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

/// Whether a report `(incarnation, seq)` from a node that handed its shards
/// back at `departed_at` means it is back: a report from a new process, or
/// one built after the hand-back. A report that was in flight when the node
/// left (same process, not later) is not.
pub(super) fn returned(departed_at: Option<(u64, u64)>, incarnation: u64, seq: u64) -> bool {
    departed_at.is_none_or(|(inc, last)| incarnation != inc || seq > last)
}

/// Whether two reports run the same shards at the same epochs (passes aside).
pub(super) fn same_shards(a: &BTreeMap<u32, (u64, u64)>, b: &BTreeMap<u32, (u64, u64)>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((sa, (ea, _)), (sb, (eb, _)))| sa == sb && ea == eb)
}

#[cfg(test)]
mod tests {
    use super::returned;

    #[test]
    fn a_report_sent_before_the_hand_back_is_not_a_return() {
        // Handed back after report 7 of incarnation 42.
        let at = Some((42, 7));
        assert!(!returned(at, 42, 7), "the last report before leaving");
        assert!(!returned(at, 42, 3), "an older report arriving late");
        assert!(returned(at, 42, 8), "a report built after the hand-back");
        assert!(returned(at, 99, 1), "a restarted process");
        assert!(returned(None, 42, 1), "never departed");
    }
}
