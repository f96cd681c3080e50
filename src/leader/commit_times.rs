//! When the leader saw its commit index reach each value, so that it can
//! refuse a node that has not applied an entry committed long ago.
//!
//! A node whose state machine is stuck (blocked on its disk, or its apply
//! task gone) keeps heartbeating from a frozen shard table: it would never
//! apply a release or a pause. In a quiet cluster the log barely grows, so
//! a bound in entries never trips; a bound in time does. The leader
//! acknowledges a node only if it has applied every entry committed more
//! than `bound` (the worker lease) ago; otherwise that node's lease runs out
//! and its shards move as for a crash.
//!
//! Invariants: samples are strictly increasing in index and non-decreasing
//! in time; only the newest sample at or before `now - bound` is kept among
//! the old ones, so at most one sample per observation within the last
//! `bound` plus one is held. An index is stamped when the leader first
//! observes it, never earlier than its real commit, so the bound errs on the
//! side of acknowledging.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct CommitTimes {
    bound: Duration,
    /// (commit index, when first observed), oldest first.
    samples: VecDeque<(u64, Instant)>,
}

impl CommitTimes {
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            samples: VecDeque::new(),
        }
    }

    /// Records the commit index as of `now` (a lower or equal one changes
    /// nothing) and forgets samples nobody can ask about any more. Callers
    /// read `committed` and `now` before taking the lock this sits under,
    /// so a call may come with an earlier `now` than the last one: it is
    /// stamped at the last sample's time, which only delays a demand.
    pub fn observe(&mut self, committed: u64, now: Instant) {
        if let Some(&(last_index, last_at)) = self.samples.back() {
            if last_index >= committed {
                return self.forget(now.max(last_at));
            }
            self.samples.push_back((committed, now.max(last_at)));
        } else {
            self.samples.push_back((committed, now));
        }
        let latest = self.samples.back().map_or(now, |(_, t)| *t);
        self.forget(latest);
    }

    fn forget(&mut self, now: Instant) {
        if let Some(cutoff) = now.checked_sub(self.bound) {
            while self.samples.len() >= 2 && self.samples[1].1 <= cutoff {
                self.samples.pop_front();
            }
        }
    }

    /// The highest index committed at or before `now - bound` (0: none):
    /// a node must have applied at least this much to be acknowledged.
    pub fn must_have_applied(&self, now: Instant) -> u64 {
        let Some(cutoff) = now.checked_sub(self.bound) else {
            return 0;
        };
        self.samples
            .iter()
            .take_while(|(_, t)| *t <= cutoff)
            .last()
            .map_or(0, |(i, _)| *i)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_entry_must_be_applied_once_it_is_older_than_the_bound() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut c = CommitTimes::new(S);
        c.observe(5, t0);
        assert_eq!(c.must_have_applied(t0), 0, "just committed");
        assert_eq!(c.must_have_applied(t0 + S / 2), 0);
        c.observe(9, t0 + S / 2);
        assert_eq!(c.must_have_applied(t0 + S), 5);
        assert_eq!(c.must_have_applied(t0 + S + S / 2), 9);
        // A quiet cluster: nothing new is committed, the demand stays.
        c.observe(9, t0 + 10 * S);
        assert_eq!(c.must_have_applied(t0 + 10 * S), 9);
    }

    #[test]
    fn old_samples_are_forgotten_and_the_demand_never_drops() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut c = CommitTimes::new(S);
        for i in 1..=1000u64 {
            let now = t0 + Duration::from_millis(10 * i);
            c.observe(i, now);
            assert!(c.len() <= 102, "{} samples held", c.len());
        }
        let end = t0 + Duration::from_millis(10_000);
        // Index 900 was seen at 9 s, exactly `bound` before the end.
        assert_eq!(c.must_have_applied(end), 900);
        // A lower observation (a stale read) changes nothing.
        c.observe(3, end);
        assert_eq!(c.must_have_applied(end), 900);
    }

    #[test]
    fn an_observation_with_an_earlier_time_is_stamped_at_the_last_one() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut c = CommitTimes::new(S);
        c.observe(5, t0 + S / 2);
        // Read before the previous caller's, recorded after it.
        c.observe(9, t0);
        assert_eq!(c.must_have_applied(t0 + S), 0, "9 is stamped at t0 + S/2");
        assert_eq!(c.must_have_applied(t0 + S + S / 2), 9);
    }

    #[test]
    fn nothing_is_demanded_before_the_first_bound_has_passed() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let c = CommitTimes::new(S);
        assert_eq!(c.must_have_applied(t0), 0);
    }
}
