//! Housekeeping calls counted per Redis Cluster master, so an operator can
//! see how this node's load spreads over the masters
//! (`deckhand_redis_master_calls_total`).
//!
//! Each call is counted under the master that served its queue's slot in
//! the slot map this node read last. The map is read again (one
//! `CLUSTER SLOTS`) by the first call after it is [`REFRESH`] old, so a
//! reshard or a failover shows within that time; calls made before the
//! first read, or on a slot the map has no master for, count as `unknown`.
//!
//! Invariants: the map's ranges are sorted by first slot and do not
//! overlap (as `CLUSTER SLOTS` gives them, checked on every update); counts
//! only grow, and a master's count stays when it leaves the map (counters
//! must not go down).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::redis_scan::SlotMap;

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
    /// Sorted by first slot.
    map: SlotMap,
    /// When `map` was read (`None`: never).
    read_at: Option<Instant>,
    calls: BTreeMap<String, u64>,
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

    /// Replaces the slot map (read at `now`).
    pub fn update(&self, mut map: SlotMap, now: Instant) {
        map.sort_by_key(|(first, _, _)| *first);
        debug_assert!(
            map.windows(2).all(|w| w[0].1 < w[1].0),
            "slot ranges overlap"
        );
        let mut inner = crate::locks::lock(&self.inner);
        inner.map = map;
        inner.read_at = Some(now);
    }

    /// Counts one call on `slot`.
    pub fn count(&self, slot: u16) {
        let mut inner = crate::locks::lock(&self.inner);
        let at = inner.map.partition_point(|(first, _, _)| *first <= slot);
        let master = at
            .checked_sub(1)
            .and_then(|i| inner.map.get(i))
            .filter(|(_, last, _)| slot <= *last)
            .map_or_else(|| UNKNOWN.to_string(), |(_, _, m)| m.to_string());
        *inner.calls.entry(master).or_insert(0) += 1;
    }

    /// Every master's count so far (masters that left the map included).
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        crate::locks::lock(&self.inner)
            .calls
            .iter()
            .map(|(m, n)| (m.clone(), *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
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
        // A reshard moves slot 0 to master 3; master 2 leaves the map but
        // keeps its count.
        calls.update(vec![(0, 16383, master(3))], t0 + REFRESH);
        calls.count(0);
        let counts: BTreeMap<String, u64> = calls.snapshot().into_iter().collect();
        assert_eq!(counts["10.0.0.1:1"], 4);
        assert_eq!(counts["10.0.0.1:2"], 2);
        assert_eq!(counts["10.0.0.1:3"], 1);
        // Before the first read, and slot 150 (in no range).
        assert_eq!(counts[UNKNOWN], 2);
    }
}
