//! The leader's queue discovery: what one scan found, grouped by shard,
//! and what it remembers between scans.
//!
//! # Invariants
//!
//! - A queue leaves the lists only after [`QUEUE_RETENTION_DISCOVERIES`]
//!   successful discoveries in a row missed it.
//! - A version is a hash of the lists' contents, never 0 (0 means "no
//!   discovery this term"), so equal contents from two leaders compare equal.

use std::collections::BTreeMap;

use crate::cluster::shard_of;

/// How many discoveries in a row may miss a queue before it leaves the
/// lists (a SCAN returns every key that exists throughout it, so one miss
/// means the queue was gone at least for a moment; three, that it stayed gone).
pub(super) const QUEUE_RETENTION_DISCOVERIES: u64 = 3;

/// The queues found by discovery, by shard.
#[derive(Default)]
pub(super) struct QueueIndex {
    /// A hash of the contents, not a counter: versions from different
    /// leaders compare correctly (equal contents, equal version). Never 0:
    /// 0 means "no discovery this term" (see `Coordinator::get_queues`).
    pub(super) version: u64,
    /// The leader term of the last successful discovery.
    pub(super) term: u64,
    pub(super) by_shard: BTreeMap<u32, Vec<String>>,
}

/// What discovery remembers between rounds; owned by the leader's loop, so
/// the work over every queue never runs under the index's mutex.
#[derive(Default)]
pub(super) struct DiscoveryMemory {
    /// Successful discoveries so far.
    round: u64,
    /// The discovery round that last saw each queue.
    last_seen: BTreeMap<String, u64>,
}

impl DiscoveryMemory {
    /// Takes one discovery's queues; returns the lists by shard (sorted)
    /// and their version. O(queues): run it off the async workers.
    pub(super) fn absorb(
        &mut self,
        queues: Vec<String>,
        shard_count: u32,
    ) -> (BTreeMap<u32, Vec<String>>, u64) {
        self.round += 1;
        let round = self.round;
        for q in queues {
            self.last_seen.insert(q, round);
        }
        self.last_seen
            .retain(|_, seen| round - *seen < QUEUE_RETENTION_DISCOVERIES);
        // BTreeMap keys are sorted, so each shard's list is too.
        let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for q in self.last_seen.keys() {
            by_shard
                .entry(shard_of(q, shard_count))
                .or_default()
                .push(q.clone());
        }
        let version = content_version(&by_shard);
        (by_shard, version)
    }
}

/// FNV-1a over every (shard, queue) pair in order; 1 for no queues, never 0.
fn content_version(by_shard: &BTreeMap<u32, Vec<String>>) -> u64 {
    if by_shard.is_empty() {
        return 1;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (shard, queues) in by_shard {
        feed(&shard.to_be_bytes());
        for q in queues {
            feed(q.as_bytes());
            feed(&[0]);
        }
    }
    h.max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_leaves_after_three_missed_discoveries_and_versions_follow_contents() {
        let mut memory = DiscoveryMemory::default();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (lists, v1) = memory.absorb(names(&["a", "b"]), 4);
        assert_eq!(lists.values().map(Vec::len).sum::<usize>(), 2);
        // "b" missed once and twice: still listed, same contents, same version.
        assert_eq!(memory.absorb(names(&["a"]), 4).1, v1);
        assert_eq!(memory.absorb(names(&["a"]), 4).1, v1);
        // Missed a third time: gone.
        let (lists, v4) = memory.absorb(names(&["a"]), 4);
        assert_eq!(lists.values().flatten().collect::<Vec<_>>(), vec!["a"]);
        assert_ne!(v4, v1);
        // A fresh memory with the same contents gets the same version; none is 0.
        let mut other = DiscoveryMemory::default();
        assert_eq!(other.absorb(names(&["a"]), 4).1, v4);
        let (_, empty) = DiscoveryMemory::default().absorb(Vec::new(), 4);
        assert!(empty != 0 && v1 != 0 && v4 != 0);
    }
}
