//! Housekeeping calls counted per Redis Cluster master, so an operator can
//! see how this node's load spreads over the masters
//! (`deckhand_redis_master_calls_total`).
//!
//! Each call is counted under the master that served its queue's slot in
//! the slot map this node read last. The map is read again (one
//! `CLUSTER SLOTS`, by one caller) by the first call after it is
//! [`REFRESH`] old, so a reshard or a failover shows within that time;
//! calls made before the first read, or on a slot the map has no master
//! for, count as `unknown`.
//!
//! Only the current masters (and `unknown`) keep a count: a master that
//! leaves the map loses its series, so the labels stay as many as the
//! masters however often their addresses change (pods rescheduled); one
//! that comes back starts again from 0, which Prometheus reads as a reset.
//!
//! Invariants: `map`'s ranges are sorted by first slot and each names an
//! index into `counts` (asserted in debug builds on every update); counts
//! only grow while their master stays.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::redis_scan::{masters, SlotMap};

/// How old the slot map may get before the next call reads it again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The label of calls whose master was not known.
pub const UNKNOWN: &str = "unknown";

#[derive(Default)]
pub struct CallsByMaster {
    /// Held only to bump a count or swap the map: never across an await.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (first slot, last slot, index into `counts`), sorted by first slot.
    map: Vec<(u16, u16, usize)>,
    /// When `map` was read (`None`: never).
    read_at: Option<Instant>,
    /// Per current master (label, count), in master order (host, then port).
    counts: Vec<(String, u64)>,
    unknown: u64,
}

impl CallsByMaster {
    /// True for one caller per [`REFRESH`]: that caller reads the map
    /// (concurrent calls do not each send `CLUSTER SLOTS`). A failed read
    /// leaves the old map for another `REFRESH`.
    pub fn claim_refresh(&self, now: Instant) -> bool {
        let mut inner = crate::locks::lock(&self.inner);
        let due = inner
            .read_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH);
        if due {
            inner.read_at = Some(now);
        }
        due
    }

    /// Replaces the slot map (read at `now`), keeping the counts of the
    /// masters still in it.
    pub fn update(&self, map: SlotMap, now: Instant) {
        let masters = masters(&map);
        let mut inner = crate::locks::lock(&self.inner);
        let counts: Vec<(String, u64)> = masters
            .iter()
            .map(|m| {
                let label = m.to_string();
                let kept = inner
                    .counts
                    .iter()
                    .find(|(l, _)| *l == label)
                    .map_or(0, |(_, n)| *n);
                (label, kept)
            })
            .collect();
        let mut ranges: Vec<(u16, u16, usize)> = map
            .iter()
            .filter_map(|(first, last, m)| {
                let index = masters.iter().position(|x| x == m)?;
                Some((*first, *last, index))
            })
            .collect();
        ranges.sort_by_key(|(first, _, _)| *first);
        debug_assert!(
            ranges.windows(2).all(|w| w[0].1 < w[1].0),
            "slot ranges overlap"
        );
        debug_assert!(ranges.iter().all(|(_, _, i)| *i < counts.len()));
        inner.map = ranges;
        inner.counts = counts;
        inner.read_at = Some(now);
    }

    /// Counts one call on `slot`.
    pub fn count(&self, slot: u16) {
        let mut inner = crate::locks::lock(&self.inner);
        let at = inner.map.partition_point(|(first, _, _)| *first <= slot);
        let index = at
            .checked_sub(1)
            .and_then(|i| inner.map.get(i))
            .filter(|(_, last, _)| slot <= *last)
            .map(|(_, _, index)| *index);
        match index.and_then(|i| inner.counts.get_mut(i)) {
            Some((_, n)) => *n += 1,
            None => inner.unknown += 1,
        }
    }

    /// Every current master's count, then `unknown` if any.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let inner = crate::locks::lock(&self.inner);
        let mut rows = inner.counts.clone();
        if inner.unknown > 0 {
            rows.push((UNKNOWN.to_string(), inner.unknown));
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::redis_conn::Master;

    fn master(port: u16) -> Master {
        Master {
            host: "10.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn calls_count_under_the_master_of_their_slot() {
        let calls = CallsByMaster::default();
        let t0 = Instant::now();
        calls.count(5);
        assert!(calls.claim_refresh(t0), "never read: due");
        calls.update(
            vec![
                (8000, 16383, master(2)),
                (0, 99, master(1)),
                (200, 7999, master(1)),
            ],
            t0,
        );
        assert!(!calls.claim_refresh(t0 + Duration::from_secs(1)));
        assert!(
            calls.claim_refresh(t0 + REFRESH),
            "one caller reads the map"
        );
        assert!(!calls.claim_refresh(t0 + REFRESH), "the next does not");
        for slot in [0, 99, 200, 7999, 8000, 16383, 150] {
            calls.count(slot);
        }
        // A failover replaces master 2 with master 3: 2's series goes, 1 keeps its count.
        calls.update(
            vec![
                (0, 99, master(1)),
                (200, 7999, master(1)),
                (8000, 16383, master(3)),
            ],
            t0 + REFRESH,
        );
        calls.count(9000);
        let counts: BTreeMap<String, u64> = calls.snapshot().into_iter().collect();
        assert_eq!(counts["10.0.0.1:1"], 4);
        assert!(!counts.contains_key("10.0.0.1:2"), "{counts:?}");
        assert_eq!(counts["10.0.0.1:3"], 1);
        // Before the first read, and slot 150 (in no range).
        assert_eq!(counts[UNKNOWN], 2);
    }
}
