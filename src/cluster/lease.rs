//! Lease and liveness arithmetic (DESIGN.md §2), on monotonic instants only.
//!
//! - A follower's [`Lease`] runs for `lease` from the **send** time of its
//!   last heartbeat that the leader acknowledged. Measuring from the send
//!   time, not the receive time, means the follower's lease always ends no
//!   later than the leader believes it does.
//! - The leader's [`Liveness`] treats a node as gone once it has heard
//!   nothing from it for `lease + margin` by the leader's own clock. The
//!   margin covers clock-rate differences between the two machines.
//! - A new leader has heard nothing yet: every node counts as heard at the
//!   moment leadership began, so nothing is reassigned for one full
//!   `lease + margin` after an election.
//!
//! - A deposed leader can still acknowledge heartbeats (renew leases) for
//!   up to `leader_freshness` after its successor's election: its last
//!   quorum acknowledgement came before that election, and it acknowledges
//!   only while that is fresh. A node it renews then works until at most
//!   `election + freshness + lease`. A new leader that has not heard the
//!   node calls it gone at `election + lease + margin`, which is later only
//!   if `margin > freshness`. So [`Liveness::for_new_leader`] starts the
//!   clock `freshness - margin` (plus a millisecond) late when the margin
//!   is not larger: any configuration is safe, the defaults (margin 400 ms,
//!   freshness = `election_timeout_min` 300 ms) wait nothing extra.
//!
//! Only `Instant` (monotonic) is used: wall-clock jumps cannot shorten or
//! stretch a lease. A paused process keeps the monotonic clock running, so
//! after the pause its lease is seen as expired (and fencing covers the
//! operation that was already in flight). `CLOCK_MONOTONIC` does **not**
//! run while the whole machine is suspended (a VM paused by its host): a
//! node resumes believing its lease has as long left as when it stopped.
//! Leases then do not protect; fencing does: once a new owner has written a
//! queue, every operation of the resumed node on it is rejected, and one
//! accepted before that is a whole, correct housekeeping move on data the
//! new owner has not touched yet (work done twice at worst, never a message
//! lost or moved twice). The node then stops at its lease's end (the
//! leader refuses to renew a lease of a node that reports running a shard
//! the table gave to another node: `ClusterState::is_stale_run`), or at its
//! first fenced call, whichever comes first. Until then two nodes can run
//! one shard; only the fence keeps their writes apart.
//!
//! Invariants: a lease's expiry only moves forward within one leader term;
//! acknowledgements from an older term than one already seen are ignored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cluster::NodeId;

/// A follower's right to run its shards.
#[derive(Debug, Clone)]
pub struct Lease {
    duration: Duration,
    valid_until: Option<Instant>,
    /// Highest leader term an acknowledgement came from.
    term: u64,
}

impl Lease {
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            valid_until: None,
            term: 0,
        }
    }

    /// Records an acknowledged heartbeat sent at `sent_at` by a leader of
    /// `term`. Returns false if the acknowledgement is from an older term.
    pub fn renew(&mut self, sent_at: Instant, term: u64) -> bool {
        if term < self.term {
            return false;
        }
        if term > self.term {
            self.term = term;
        }
        let until = sent_at + self.duration;
        let previous = self.valid_until;
        self.valid_until = Some(previous.map_or(until, |p| p.max(until)));
        debug_assert!(self.valid_until >= previous);
        true
    }

    /// Gives the lease up at once (shutdown, fenced, or leadership moved away).
    pub fn revoke(&mut self) {
        self.valid_until = None;
    }

    /// When the lease ends (or ended): `None` when never granted or revoked.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|until| now < until)
    }

    /// Time left, or `None` when expired or never granted.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.valid_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    pub fn term(&self) -> u64 {
        self.term
    }
}

/// The leader's view of which nodes are still heard from.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// `lease + margin`: silence longer than this means the node is gone.
    timeout: Duration,
    /// When this node became leader; stands in for "last heard" of anyone
    /// not heard since.
    since: Instant,
    last_heard: BTreeMap<NodeId, Instant>,
}

impl Liveness {
    pub fn new(lease: Duration, margin: Duration, leader_since: Instant) -> Self {
        Self {
            timeout: lease + margin,
            since: leader_since,
            last_heard: BTreeMap::new(),
        }
    }

    /// The view of a leader elected at `elected_at`, whose predecessor may
    /// have acknowledged heartbeats until `elected_at + freshness` (see the
    /// module doc): nobody is called gone before every lease such an
    /// acknowledgement granted has run out, plus the margin.
    pub fn for_new_leader(
        lease: Duration,
        margin: Duration,
        freshness: Duration,
        elected_at: Instant,
    ) -> Self {
        let extra = if freshness >= margin {
            freshness - margin + Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        Self::new(lease, margin, elected_at + extra)
    }

    /// Records a heartbeat from `node` received at `at`.
    pub fn heard(&mut self, node: NodeId, at: Instant) {
        let entry = self.last_heard.entry(node).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// How long `node` has been silent, as far as this leader can tell.
    pub fn silent_for(&self, node: NodeId, now: Instant) -> Duration {
        let last = self
            .last_heard
            .get(&node)
            .copied()
            .unwrap_or(self.since)
            .max(self.since);
        now.saturating_duration_since(last)
    }

    /// False once `node` has been silent for longer than `lease + margin`.
    pub fn is_live(&self, node: NodeId, now: Instant) -> bool {
        self.silent_for(node, now) <= self.timeout
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Forgets every node `keep` rejects (nodes that left the cluster and
    /// own nothing), so the map does not grow with every replaced node.
    pub fn retain(&mut self, keep: impl Fn(NodeId) -> bool) {
        self.last_heard.retain(|n, _| keep(*n));
    }

    /// The first instant after `now` at which one of `nodes` that is live at
    /// `now` stops being live, if any: until then no liveness answer about
    /// them changes unless a heartbeat arrives, so the leader's planner can
    /// sleep until this instead of polling.
    pub fn next_expiry(
        &self,
        nodes: impl IntoIterator<Item = NodeId>,
        now: Instant,
    ) -> Option<Instant> {
        nodes
            .into_iter()
            .filter(|n| self.is_live(*n, now))
            .map(|n| {
                let last = self
                    .last_heard
                    .get(&n)
                    .copied()
                    .unwrap_or(self.since)
                    .max(self.since);
                // `is_live` holds through `last + timeout` inclusive.
                last + self.timeout + Duration::from_millis(1)
            })
            .min()
            .inspect(|t| debug_assert!(*t > now, "a live node's expiry is in the future"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn lease_runs_from_send_time() {
        let t0 = Instant::now();
        let mut lease = Lease::new(1000 * MS);
        assert!(!lease.is_valid(t0));
        assert!(lease.renew(t0, 1));
        // Acknowledged late: still counted from t0.
        assert!(lease.is_valid(t0 + 999 * MS));
        assert!(!lease.is_valid(t0 + 1000 * MS));
        assert_eq!(lease.remaining(t0 + 400 * MS), Some(600 * MS));
        assert_eq!(lease.remaining(t0 + 1000 * MS), None);
    }

    #[test]
    fn lease_never_moves_backwards_and_ignores_older_terms() {
        let t0 = Instant::now();
        let mut lease = Lease::new(1000 * MS);
        lease.renew(t0 + 500 * MS, 3);
        // An acknowledgement of an earlier heartbeat arrives late.
        lease.renew(t0, 3);
        assert!(lease.is_valid(t0 + 1400 * MS));
        // A deposed leader of term 2 cannot extend it.
        assert!(!lease.renew(t0 + 900 * MS, 2));
        assert!(!lease.is_valid(t0 + 1500 * MS));
        lease.revoke();
        assert!(!lease.is_valid(t0 + 600 * MS));
    }

    #[test]
    fn new_leader_waits_a_full_timeout_before_calling_anyone_gone() {
        let t0 = Instant::now();
        let live = Liveness::new(1000 * MS, 300 * MS, t0);
        assert!(live.is_live(7, t0 + 1300 * MS));
        assert!(!live.is_live(7, t0 + 1301 * MS));
    }

    #[test]
    fn a_new_leader_outwaits_leases_its_predecessor_may_still_grant() {
        let t0 = Instant::now();
        for (margin, freshness) in [(300, 150), (500, 1000), (300, 300), (0, 150)] {
            let (margin, freshness) = (margin * MS, freshness * MS);
            let live = Liveness::for_new_leader(1000 * MS, margin, freshness, t0);
            // The deposed leader renews a lease at t0 + freshness (its last
            // moment of freshness); the lease holds until then + lease.
            let mut lease = Lease::new(1000 * MS);
            lease.renew(t0 + freshness, 1);
            let mut now = t0;
            while live.is_live(4, now) {
                now += MS;
            }
            assert!(
                !lease.is_valid(now),
                "margin {margin:?}, freshness {freshness:?}: called gone at {:?} while its lease holds",
                now - t0
            );
            assert!(
                now - t0 >= 1000 * MS + margin,
                "never earlier than lease + margin"
            );
        }
    }

    #[test]
    fn liveness_follows_last_heartbeat() {
        let t0 = Instant::now();
        let mut live = Liveness::new(1000 * MS, 300 * MS, t0);
        live.heard(2, t0 + 2000 * MS);
        live.heard(2, t0 + 1000 * MS); // reordered delivery does not go back
        assert_eq!(live.silent_for(2, t0 + 2500 * MS), 500 * MS);
        assert!(live.is_live(2, t0 + 3300 * MS));
        assert!(!live.is_live(2, t0 + 3301 * MS));
    }

    #[test]
    fn next_expiry_is_the_first_live_node_to_go_silent() {
        let t0 = Instant::now();
        let mut live = Liveness::new(1000 * MS, 300 * MS, t0);
        // Nobody heard yet: everyone expires a full timeout after t0.
        assert_eq!(live.next_expiry([2, 3], t0), Some(t0 + 1301 * MS));
        live.heard(2, t0 + 200 * MS);
        live.heard(3, t0 + 100 * MS);
        assert_eq!(
            live.next_expiry([2, 3], t0 + 500 * MS),
            Some(t0 + 1401 * MS)
        );
        let at = live.next_expiry([2, 3], t0 + 500 * MS).unwrap();
        assert!(!live.is_live(3, at), "node 3 is gone at its expiry");
        assert!(live.is_live(3, at - MS), "and live just before");
        // Node 3 already gone: only node 2 can still change.
        assert_eq!(
            live.next_expiry([2, 3], t0 + 1450 * MS),
            Some(t0 + 1501 * MS)
        );
        assert_eq!(live.next_expiry([2, 3], t0 + 1600 * MS), None);
        assert_eq!(live.next_expiry([], t0), None);
    }

    #[test]
    fn retain_forgets_nodes_that_left() {
        let t0 = Instant::now();
        let mut live = Liveness::new(1000 * MS, 300 * MS, t0);
        live.heard(2, t0 + 500 * MS);
        live.heard(9, t0 + 500 * MS);
        live.retain(|n| n != 9);
        assert_eq!(live.last_heard.len(), 1);
        // A forgotten node counts from the term's start again.
        assert_eq!(live.silent_for(9, t0 + 600 * MS), 600 * MS);
        assert_eq!(live.silent_for(2, t0 + 600 * MS), 100 * MS);
    }

    #[test]
    fn follower_lease_ends_before_leader_calls_it_gone() {
        // Send at t, received at t + d: the follower stops at t + lease, the
        // leader reassigns after t + d + lease + margin.
        let t = Instant::now();
        for delay in [0, 5, 150] {
            let mut lease = Lease::new(1000 * MS);
            lease.renew(t, 1);
            let mut live = Liveness::new(1000 * MS, 300 * MS, t);
            live.heard(3, t + delay * MS);
            let mut now = t;
            while live.is_live(3, now) {
                now += MS;
            }
            assert!(
                !lease.is_valid(now),
                "lease still valid when the leader reassigns"
            );
        }
    }
}
