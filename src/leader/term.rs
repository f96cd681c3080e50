//! [`LeaderTerm`]: what the leader knows and decides during one term, as a
//! pure state machine. Time is an argument, never read; nothing here talks
//! to Raft or the network.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::cluster::lease::Liveness;
use crate::cluster::planner::{self, Candidates, PlanInput};
use crate::cluster::NodeId;
use crate::cluster::{ClusterState, Move, ShardState};
use crate::proto::worker::TaskCounters;

/// What a node last reported.
#[derive(Debug, Clone)]
pub struct Report {
    pub received_at: Instant,
    pub applied_index: u64,
    /// The shards it runs.
    pub running: BTreeMap<u32, ShardRun>,
    pub lease_remaining: Duration,
    pub fenced_writes: u64,
    pub tasks: TaskCounters,
    /// shard -> epoch at which the store fenced the node there.
    pub fenced: BTreeMap<u32, u64>,
}

/// A shard a node reported running: at which epoch, and its passes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRun {
    pub epoch: u64,
    pub passes: u64,
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

/// The timing the leader's liveness rules follow (worker settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a node may work after its last acknowledged heartbeat.
    pub lease: Duration,
    /// Extra silence before the leader calls a node gone.
    pub margin: Duration,
    /// How long after election a deposed leader's quorum may still look
    /// fresh (`raft.election_timeout_min`): see `Liveness::for_new_leader`.
    pub freshness: Duration,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heard {
    /// Plan now: what the node runs or has applied changed, it is new this
    /// term, or it is back after a hand-back.
    pub replan: bool,
    /// The node had handed its shards back and this report shows it back.
    pub back: bool,
    /// The set of shards the store fenced the node at changed.
    pub fenced_changed: bool,
}

/// What a planning round decided (not yet committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundPlan {
    pub moves: Vec<Move>,
    /// The assignments among `moves` that take a gone node's shard.
    pub reassigned: Vec<Reassignment>,
    /// The first instant a decision can change by time alone (a live node
    /// running out of `lease + margin`), if any node can.
    pub next_expiry: Option<Instant>,
}

/// The leader's knowledge during one term.
///
/// Invariants:
/// - a node is reassigned from only when it handed its shards back or has
///   been silent for longer than `lease + margin`, counted from no earlier
///   than the term's start plus what `Timing::freshness` requires;
/// - `departed_at` has an entry exactly for the nodes in `departed`;
/// - after [`Self::plan`], nothing is kept about a node that is neither a
///   member nor named by the shard table.
#[derive(Debug, Clone)]
pub struct LeaderTerm {
    me: NodeId,
    term: u64,
    /// When this node started tracking the term (after it was elected).
    since: Instant,
    timing: Timing,
    liveness: Liveness,
    reports: BTreeMap<NodeId, Report>,
    /// Nodes that handed their shards back and have not returned.
    departed: BTreeSet<NodeId>,
    /// For each departed node, the (incarnation, report seq) it handed back
    /// at: only a later report, or one from a new incarnation, means it is back.
    departed_at: BTreeMap<NodeId, (u64, u64)>,
}

impl LeaderTerm {
    /// The view of node `me`, elected for `term`, from `now`.
    pub fn new(me: NodeId, term: u64, timing: Timing, now: Instant) -> Self {
        Self {
            me,
            term,
            since: now,
            timing,
            liveness: Liveness::for_new_leader(timing.lease, timing.margin, timing.freshness, now),
            reports: BTreeMap::new(),
            departed: BTreeSet::new(),
            departed_at: BTreeMap::new(),
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// When this node started leading the term.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The last report of every node heard this term.
    pub fn reports(&self) -> &BTreeMap<NodeId, Report> {
        &self.reports
    }

    /// Whether `node` counts as live at `now` (this node always does: it is
    /// running this code).
    pub fn is_live(&self, node: NodeId, now: Instant) -> bool {
        node == self.me || self.liveness.is_live(node, now)
    }

    /// Whether `node` handed its shards back and has not returned.
    pub fn is_departed(&self, node: NodeId) -> bool {
        self.departed.contains(&node)
    }

    /// A heartbeat `report` from `node`, received at `report.received_at`,
    /// sent by its process `incarnation` as its report number `seq`.
    pub fn heartbeat(&mut self, node: NodeId, report: Report, incarnation: u64, seq: u64) -> Heard {
        self.liveness.heard(node, report.received_at);
        let old = self.reports.get(&node);
        let fenced_changed = old.is_none_or(|old| old.fenced != report.fenced);
        let back = returned(self.departed_at.get(&node).copied(), incarnation, seq)
            && self.departed.remove(&node);
        if back {
            self.departed_at.remove(&node);
        }
        // Nothing else in a report feeds a decision: an idle leader woken
        // only by these sleeps between rounds.
        let changed = old.is_none_or(|old| {
            !same_shards(&old.running, &report.running) || old.applied_index != report.applied_index
        });
        self.reports.insert(node, report);
        debug_assert_eq!(
            self.departed.len(),
            self.departed_at.len(),
            "departed and departed_at disagree"
        );
        Heard {
            replan: back || changed,
            back,
            fenced_changed,
        }
    }

    /// `node` stopped all its shard work and is leaving, after its report
    /// `last_report` = (incarnation, seq), having applied `applied_index`.
    pub fn hand_back(
        &mut self,
        node: NodeId,
        applied_index: u64,
        last_report: (u64, u64),
        now: Instant,
    ) {
        self.departed.insert(node);
        self.departed_at.insert(node, last_report);
        let report = self.reports.entry(node).or_insert_with(|| Report {
            received_at: now,
            applied_index,
            running: BTreeMap::new(),
            lease_remaining: Duration::ZERO,
            fenced_writes: 0,
            tasks: TaskCounters::default(),
            fenced: BTreeMap::new(),
        });
        report.running.clear();
        report.applied_index = report.applied_index.max(applied_index);
    }

    /// The members that count as live at `now`, this node included.
    pub fn live_members(&self, members: &BTreeSet<NodeId>, now: Instant) -> BTreeSet<NodeId> {
        members
            .iter()
            .copied()
            .filter(|n| self.is_live(*n, now))
            .collect()
    }

    /// How many members would still take shards if `node` were drained.
    pub fn workers_without(
        &self,
        node: NodeId,
        state: &ClusterState,
        members: &BTreeSet<NodeId>,
        now: Instant,
    ) -> usize {
        members
            .iter()
            .filter(|n| **n != node && !state.drained.contains(n) && !self.is_departed(**n))
            .filter(|n| self.is_live(**n, now))
            .count()
    }

    /// One planning round over `state` with the cluster's `members` at
    /// `now`: the moves to commit, and what they take from gone nodes.
    pub fn plan(
        &mut self,
        state: &ClusterState,
        members: &BTreeSet<NodeId>,
        max_releases: usize,
        now: Instant,
    ) -> RoundPlan {
        let eligible = self.eligible(state, members, now);
        let involved = involved(state, members);
        let gone: BTreeSet<NodeId> = involved
            .iter()
            .copied()
            .filter(|n| self.departed.contains(n) || !self.is_live(*n, now))
            .collect();
        let reports = &self.reports;
        let stopped = |shard: u32, node: NodeId, s: &ShardState| {
            reports
                .get(&node)
                .is_some_and(|r| r.applied_index >= s.epoch && !r.running.contains_key(&shard))
        };
        let moves = planner::plan(&PlanInput {
            shards: &state.shards,
            eligible: &eligible,
            gone: &gone,
            stopped: &stopped,
            max_releases,
        });
        let reassigned = self.reassignments(&moves, state, &gone, now);
        self.forget_all_but(&involved);
        let me = self.me;
        let next_expiry = self
            .liveness
            .next_expiry(involved.iter().copied().filter(|n| *n != me), now);
        RoundPlan {
            moves,
            reassigned,
            next_expiry,
        }
    }

    /// The nodes that may receive shards now (see [`planner::eligible`]).
    fn eligible(
        &self,
        state: &ClusterState,
        members: &BTreeSet<NodeId>,
        now: Instant,
    ) -> BTreeSet<NodeId> {
        let heard = |n: NodeId| self.reports.contains_key(&n);
        let live = |n: NodeId| self.is_live(n, now);
        planner::eligible(&Candidates {
            leader: self.me,
            members,
            drained: &state.drained,
            departed: &self.departed,
            heard: &heard,
            live: &live,
        })
    }

    /// What `moves` take from `gone` nodes (checked: only from nodes that
    /// handed their shards back or were silent past lease + margin).
    fn reassignments(
        &self,
        moves: &[Move],
        state: &ClusterState,
        gone: &BTreeSet<NodeId>,
        now: Instant,
    ) -> Vec<Reassignment> {
        let reassigned: Vec<Reassignment> = moves
            .iter()
            .filter_map(|mv| match mv {
                Move::Assign { shard, .. } => {
                    let s = &state.shards[*shard as usize];
                    let from = s.owner.or(s.released_from)?;
                    gone.contains(&from).then(|| Reassignment {
                        from,
                        shard: *shard,
                        silent_for: self.liveness.silent_for(from, now),
                        handed_back: self.departed.contains(&from),
                    })
                }
                Move::Release { .. } => None,
            })
            .collect();
        for r in &reassigned {
            debug_assert!(
                r.handed_back || r.silent_for > self.timing.lease + self.timing.margin,
                "reassigned a live node's shard: {r:?}"
            );
        }
        reassigned
    }

    /// Forgets nodes neither in `involved` nor this one: removed or
    /// replaced nodes that can never matter again.
    fn forget_all_but(&mut self, involved: &BTreeSet<NodeId>) {
        let me = self.me;
        let known = |n: NodeId| involved.contains(&n) || n == me;
        self.reports.retain(|n, _| known(*n));
        self.departed.retain(|n| known(*n));
        self.departed_at.retain(|n, _| known(*n));
        self.liveness.retain(known);
    }
}

/// The members and every node the shard table names (owner or released from).
fn involved(state: &ClusterState, members: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
    let mut involved = members.clone();
    for s in &state.shards {
        involved.extend(s.owner);
        involved.extend(s.released_from);
    }
    involved
}

/// Whether a report `(incarnation, seq)` from a node that handed its shards
/// back at `departed_at` means it is back: a report from a new process, or
/// one built after the hand-back. A report that was in flight when the node
/// left (same process, not later) is not.
pub fn returned(departed_at: Option<(u64, u64)>, incarnation: u64, seq: u64) -> bool {
    departed_at.is_none_or(|(inc, last)| incarnation != inc || seq > last)
}

/// Whether two reports run the same shards at the same epochs (passes aside).
pub fn same_shards(a: &BTreeMap<u32, ShardRun>, b: &BTreeMap<u32, ShardRun>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((sa, ra), (sb, rb))| sa == sb && ra.epoch == rb.epoch)
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
