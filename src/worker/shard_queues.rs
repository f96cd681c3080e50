//! The queues one shard task works: the leader's list plus the queues it
//! adopted from lock events, and their timers.
//!
//! Invariants (asserted when a list is applied): an adopted queue is never
//! in the current list, and at most [`MAX_ADOPTED`] queues are adopted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::schedule::QueueSchedule;
use super::WorkerShared;
use crate::locks::lock;
use crate::store::EventKind;

/// Most queues a shard task adopts from lock events before the leader's
/// discovery lists them (beyond that, discovery brings them).
const MAX_ADOPTED: usize = 65_536;

/// The queues one shard task works: the leader's list plus the queues it
/// adopted from lock events, and their timers.
pub(super) struct ShardQueues {
    pub(super) shard: u32,
    pub(super) schedule: QueueSchedule,
    /// The list last applied (lists are replaced, never changed in place,
    /// so a new Arc means a new list).
    pub(super) list: Option<Arc<Vec<String>>>,
    /// Announced by lock events, not (yet) in the leader's list.
    pub(super) adopted: HashSet<String>,
}

impl ShardQueues {
    /// Applies a new list from the leader: new queues are called now,
    /// queues that left it (and were not adopted) are forgotten, here and
    /// in the statistics.
    pub(super) fn apply_list(
        &mut self,
        shared: &WorkerShared,
        list: Arc<Vec<String>>,
        now: Instant,
    ) {
        if self.list.as_ref().is_some_and(|l| Arc::ptr_eq(l, &list)) {
            return;
        }
        let current: HashSet<&str> = list.iter().map(String::as_str).collect();
        self.adopted.retain(|q| !current.contains(q.as_str()));
        // A queue that left the list (discovery missed it three times) is
        // kept, as if adopted, until a call of its own says it is gone: an
        // event may have brought it back after that discovery, and only a
        // call that sees it gone lets its fence expire.
        let mut left = Vec::new();
        self.schedule.retain(|q| {
            if !current.contains(q) && !self.adopted.contains(q) {
                left.push(q.to_string());
            }
            true
        });
        for q in left {
            if self.adopted.len() < MAX_ADOPTED {
                self.adopted.insert(q);
            } else {
                self.schedule.remove(&q);
            }
        }
        for q in list.iter() {
            self.schedule.add(q, now);
        }
        let mut keep: Vec<String> = list.iter().cloned().collect();
        keep.extend(self.adopted.iter().cloned());
        lock(&shared.queue_stats).retain_queues(self.shard, &keep);
        debug_assert!(self.adopted.len() <= MAX_ADOPTED);
        debug_assert!(self.adopted.iter().all(|q| !current.contains(q.as_str())));
        self.list = Some(list);
    }

    /// Schedules announced queues (see `events` for when), adopting
    /// unknown ones.
    pub(super) fn announce(
        &mut self,
        queues: Vec<(String, EventKind)>,
        now: Instant,
        pull_delay: Duration,
    ) {
        for (q, kind) in queues {
            let by = match kind {
                // Ahead of any backlog (a sweep places every queue at its
                // instant, and due queues are taken in instant order).
                EventKind::Lock => self.schedule.next_wake().map_or(now, |w| w.min(now)),
                EventKind::Pull => now + pull_delay,
            };
            if self.schedule.contains(&q) {
                self.schedule.call_by(&q, by);
            } else if self.adopted.len() < MAX_ADOPTED {
                tracing::debug!(shard = self.shard, queue = %q, "adopted a queue from an event");
                self.schedule.add(&q, by);
                self.adopted.insert(q);
            }
        }
    }

    /// A queue reported gone: an adopted one is forgotten; a listed one waits
    /// at the sweep pace until the leader's list drops it.
    pub(super) fn gone(&mut self, queue: &str, later: Instant) {
        if self.adopted.remove(queue) {
            self.schedule.remove(queue);
        } else {
            self.schedule.set(queue, later);
        }
    }
}
