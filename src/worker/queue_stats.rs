//! Per-queue statistics for the leader's queue gauges.
//!
//! # Design
//!
//! Every housekeeping call reads the queue's set sizes inside the same atomic
//! store operation (`store::QueueSizes`). The owner keeps the latest sizes
//! per queue of each shard it runs ([`QueueStatsBook`]) and sends them to the
//! leader with its heartbeats; the leader keeps what each owner sent
//! ([`LeaderQueueStats`]) and serves, at scrape time, only the shards whose
//! reporter is their current owner at the current epoch.
//!
//! Reports (`ReportStats`, apart from heartbeats: the lease never waits on
//! bulk data) carry only shards whose figures changed since the last report,
//! except the first report to a leader (or after a failed one), which is
//! full: a new leader starts knowing nothing and has everything after one
//! report interval. A report is cut into chunks of at most [`CHUNK_BYTES`]
//! ([`chunks`]); a shard too big for one chunk continues in the next.
//!
//! # Invariants
//!
//! - The book holds figures of one epoch per shard; a new epoch starts empty.
//! - A full report (its first chunk) replaces everything the leader held
//!   from that node; so a
//!   shard the node stopped running disappears from the leader at the next
//!   full report, and at once from the gauges (the leader checks the shard
//!   table and the node's running set at every scrape).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::proto::worker::{QueueStats, ShardStats};
use crate::raft::NodeId;
use crate::store::QueueSizes;

/// A queue's figures as they travel in a heartbeat.
fn to_proto(queue: &str, s: &QueueSizes) -> QueueStats {
    QueueStats {
        queue: queue.to_string(),
        active: s.active,
        processing: s.processing,
        locked_ack: s.locked_ack,
        locked_nack: s.locked_nack,
        oldest_overdue_ms: s.oldest_overdue_ms,
    }
}

fn from_proto(q: QueueStats) -> (String, QueueSizes) {
    let sizes = QueueSizes {
        active: q.active,
        processing: q.processing,
        locked_ack: q.locked_ack,
        locked_nack: q.locked_nack,
        oldest_overdue_ms: q.oldest_overdue_ms,
    };
    (q.queue, sizes)
}

/// One shard's figures on its owner.
#[derive(Debug, Default)]
struct ShardBook {
    epoch: u64,
    queues: BTreeMap<String, QueueSizes>,
    /// Changed since the last report was taken.
    changed: bool,
}

/// The owner's side: latest sizes per queue of each running shard.
#[derive(Debug, Default)]
pub struct QueueStatsBook {
    shards: BTreeMap<u32, ShardBook>,
}

impl QueueStatsBook {
    /// Records what a housekeeping call at `epoch` left in `queue`.
    pub fn record(&mut self, shard: u32, epoch: u64, queue: &str, sizes: QueueSizes) {
        let book = self.shards.entry(shard).or_default();
        if book.epoch != epoch {
            // Figures of an older epoch describe work this node no longer does.
            *book = ShardBook {
                epoch,
                ..ShardBook::default()
            };
        }
        if book.queues.get(queue) != Some(&sizes) {
            book.queues.insert(queue.to_string(), sizes);
            book.changed = true;
        }
    }

    /// Forgets queues of `shard` that are no longer in its list.
    pub fn retain_queues(&mut self, shard: u32, queues: &[String]) {
        if let Some(book) = self.shards.get_mut(&shard) {
            let before = book.queues.len();
            let keep: BTreeSet<&str> = queues.iter().map(String::as_str).collect();
            book.queues.retain(|q, _| keep.contains(q.as_str()));
            book.changed |= book.queues.len() != before;
        }
    }

    /// Forgets a queue Deckard emptied.
    pub fn forget_queue(&mut self, shard: u32, queue: &str) {
        if let Some(book) = self.shards.get_mut(&shard) {
            book.changed |= book.queues.remove(queue).is_some();
        }
    }

    /// Forgets a shard whose task at `epoch` ended.
    pub fn drop_shard(&mut self, shard: u32, epoch: u64) {
        if self.shards.get(&shard).is_some_and(|b| b.epoch == epoch) {
            self.shards.remove(&shard);
        }
    }

    /// The shards to report: all of them when `full`, else the changed ones.
    /// Clears the changed marks (a failed send makes the next report full).
    pub fn take_report(&mut self, full: bool) -> Vec<ShardStats> {
        self.shards_to_report(full)
            .into_iter()
            .filter_map(|shard| self.take_shard(shard, full))
            .collect()
    }

    /// The shards a report covers (all when `full`, else the changed ones).
    pub fn shards_to_report(&self, full: bool) -> Vec<u32> {
        self.shards
            .iter()
            .filter(|(_, b)| full || b.changed)
            .map(|(shard, _)| *shard)
            .collect()
    }

    /// One shard's part of a report (see [`Self::take_report`]), clearing
    /// its changed mark; `None` if it is no longer there, or unchanged
    /// since it was listed (and not `full`).
    pub fn take_shard(&mut self, shard: u32, full: bool) -> Option<ShardStats> {
        let b = self.shards.get_mut(&shard).filter(|b| full || b.changed)?;
        b.changed = false;
        Some(ShardStats {
            shard,
            epoch: b.epoch,
            queues: b.queues.iter().map(|(q, s)| to_proto(q, s)).collect(),
            continued: false,
        })
    }
}

/// [`QueueStatsBook::take_report`] on the shared book, taking its lock for
/// one shard at a time: with hundreds of thousands of queues, one lock over
/// the whole report would hold up every housekeeping call meanwhile.
pub fn take_report_shared(book: &std::sync::Mutex<QueueStatsBook>, full: bool) -> Vec<ShardStats> {
    let shards = crate::locks::lock(book).shards_to_report(full);
    shards
        .into_iter()
        .filter_map(|shard| crate::locks::lock(book).take_shard(shard, full))
        .collect()
}

impl QueueStatsBook {}

/// Most bytes of figures in one `ReportStats` chunk (gRPC's default limit is 4 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Bytes one queue's figures cost in a chunk (name plus five varints and framing).
fn cost(q: &QueueStats) -> usize {
    q.queue.len() + 40
}

/// Cuts a report into chunks of at most `budget` bytes of figures (at least
/// one queue each); a shard split across chunks continues with `continued`.
pub fn chunks(shards: Vec<ShardStats>, budget: usize) -> Vec<Vec<ShardStats>> {
    let mut out: Vec<Vec<ShardStats>> = vec![Vec::new()];
    let mut used = 0;
    for shard in shards {
        let mut part = ShardStats {
            shard: shard.shard,
            epoch: shard.epoch,
            queues: Vec::new(),
            continued: false,
        };
        for q in shard.queues {
            let c = cost(&q);
            if used + c > budget && used > 0 {
                let continued = !part.queues.is_empty() || part.continued;
                let full = std::mem::replace(
                    &mut part,
                    ShardStats {
                        shard: shard.shard,
                        epoch: shard.epoch,
                        queues: Vec::new(),
                        continued,
                    },
                );
                if !full.queues.is_empty() || !full.continued {
                    if let Some(last) = out.last_mut() {
                        last.push(full);
                    }
                }
                out.push(Vec::new());
                used = 0;
            }
            used += c;
            part.queues.push(q);
        }
        if let Some(last) = out.last_mut() {
            last.push(part);
        }
    }
    out.retain(|c| !c.is_empty());
    out
}

/// One shard's reported queue figures. Shared: a scrape takes the shards it
/// serves by reference count under the coordinator's lock, and reads them
/// after letting go (it used to copy every queue's row under the lock that
/// heartbeats take). A report chunk that extends a shard a scrape still
/// holds copies that shard's rows received so far (`Arc::make_mut`): never
/// more than the old per-scrape copy of everything.
pub type ShardRows = Arc<Vec<(String, QueueSizes)>>;

/// What one node reported for one shard.
#[derive(Debug, Clone)]
struct Reported {
    node: NodeId,
    epoch: u64,
    queues: ShardRows,
}

/// The leader's side: the union of what owners reported, for one term.
#[derive(Debug, Default)]
pub struct LeaderQueueStats {
    by_shard: BTreeMap<u32, Reported>,
}

impl LeaderQueueStats {
    /// Takes a chunk of a report of `node`. The first chunk of a full report
    /// replaces all of the node's shards; a `continued` shard extends what
    /// the same node sent for it at the same epoch, and is dropped otherwise.
    /// Shards at or past `shard_count` do not exist and are dropped, so the
    /// map never holds more than `shard_count` entries whatever is sent.
    pub fn apply(&mut self, node: NodeId, full: bool, shards: Vec<ShardStats>, shard_count: u32) {
        if full {
            self.by_shard.retain(|_, r| r.node != node);
        }
        for s in shards.into_iter().filter(|s| s.shard < shard_count) {
            let queues: Vec<(String, QueueSizes)> = s.queues.into_iter().map(from_proto).collect();
            if s.continued {
                if let Some(r) = self.by_shard.get_mut(&s.shard) {
                    if r.node == node && r.epoch == s.epoch {
                        // Copies only if a scrape still holds this shard.
                        Arc::make_mut(&mut r.queues).extend(queues);
                    }
                }
                continue;
            }
            self.by_shard.insert(
                s.shard,
                Reported {
                    node,
                    epoch: s.epoch,
                    queues: Arc::new(queues),
                },
            );
        }
    }

    /// The figures of the shards `current(shard, node, epoch)` accepts,
    /// shared: at most one reference per shard, no queue copied.
    pub fn current_rows(&self, current: impl Fn(u32, NodeId, u64) -> bool) -> Vec<ShardRows> {
        self.by_shard
            .iter()
            .filter(|(shard, r)| current(**shard, r.node, r.epoch))
            .map(|(_, r)| Arc::clone(&r.queues))
            .collect()
    }

    /// Every queue's figures from shards `current(shard, node, epoch)` accepts
    /// (the tests' flat view of [`Self::current_rows`]).
    #[cfg(test)]
    pub fn union(&self, current: impl Fn(u32, NodeId, u64) -> bool) -> Vec<(String, QueueSizes)> {
        self.current_rows(current)
            .iter()
            .flat_map(|rows| rows.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(active: u64) -> QueueSizes {
        QueueSizes {
            active,
            ..QueueSizes::default()
        }
    }

    #[test]
    fn only_changes_are_reported_unless_full() {
        let mut book = QueueStatsBook::default();
        book.record(1, 5, "a", sizes(1));
        book.record(2, 6, "b", sizes(2));
        assert_eq!(book.take_report(false).len(), 2);
        assert!(book.take_report(false).is_empty(), "nothing changed");
        book.record(1, 5, "a", sizes(1));
        assert!(book.take_report(false).is_empty(), "same figures");
        book.record(1, 5, "a", sizes(3));
        let report = book.take_report(false);
        assert_eq!(report.len(), 1);
        assert_eq!((report[0].shard, report[0].queues[0].active), (1, 3));
        assert_eq!(book.take_report(true).len(), 2, "full: everything");
    }

    #[test]
    fn a_new_epoch_starts_empty_and_dropped_shards_vanish() {
        let mut book = QueueStatsBook::default();
        book.record(1, 5, "a", sizes(1));
        book.record(1, 9, "b", sizes(2));
        let report = book.take_report(true);
        assert_eq!(report[0].epoch, 9);
        assert_eq!(report[0].queues.len(), 1, "epoch 5's queue is gone");
        book.drop_shard(1, 5);
        assert_eq!(book.take_report(true).len(), 1, "older epoch: kept");
        book.drop_shard(1, 9);
        assert!(book.take_report(true).is_empty());
    }

    #[test]
    fn the_leader_serves_only_current_owners_and_full_reports_replace() {
        let mut book = QueueStatsBook::default();
        book.record(1, 5, "a", sizes(1));
        book.record(2, 6, "b", sizes(2));
        let mut leader = LeaderQueueStats::default();
        leader.apply(10, true, book.take_report(true), 16);
        let all = leader.union(|_, _, _| true);
        assert_eq!(all.len(), 2);
        // Shard 2 moved on (another epoch): its figures are not served.
        let current = leader.union(|shard, node, epoch| node == 10 && (shard, epoch) != (2, 6));
        assert_eq!(current, vec![("a".to_string(), sizes(1))]);
        // The node stopped shard 2: its next full report drops it.
        book.drop_shard(2, 6);
        leader.apply(10, true, book.take_report(true), 16);
        assert_eq!(leader.union(|_, _, _| true).len(), 1);
    }

    #[test]
    fn the_leader_drops_shards_that_do_not_exist() {
        let mut book = QueueStatsBook::default();
        book.record(3, 5, "a", sizes(1));
        book.record(99, 6, "b", sizes(2));
        book.record(u32::MAX, 7, "c", sizes(3));
        let mut leader = LeaderQueueStats::default();
        leader.apply(10, true, book.take_report(true), 16);
        assert_eq!(
            leader.union(|_, _, _| true),
            vec![("a".to_string(), sizes(1))]
        );
        assert_eq!(leader.by_shard.len(), 1);
    }

    #[test]
    fn chunks_split_big_shards_and_the_leader_puts_them_back() {
        let mut book = QueueStatsBook::default();
        for i in 0..100 {
            book.record(1, 5, &format!("a{i:03}"), sizes(i));
            book.record(2, 6, &format!("b{i:03}"), sizes(i));
        }
        book.record(3, 7, "c", sizes(1));
        let report = book.take_report(true);
        let whole = {
            let mut leader = LeaderQueueStats::default();
            leader.apply(10, true, report.clone(), 16);
            leader.union(|_, _, _| true)
        };
        for budget in [1, 100, 1000, 10_000] {
            let parts = chunks(report.clone(), budget);
            if budget < 10_000 {
                assert!(parts.len() > 1, "budget {budget}");
            }
            for part in &parts {
                let bytes: usize = part.iter().flat_map(|s| &s.queues).map(cost).sum();
                assert!(
                    bytes <= budget.max(cost(&part[0].queues[0])),
                    "budget {budget}"
                );
            }
            let mut leader = LeaderQueueStats::default();
            // Something old from this node that the full report replaces.
            leader.apply(
                10,
                true,
                vec![ShardStats {
                    shard: 9,
                    epoch: 1,
                    queues: vec![to_proto("old", &sizes(1))],
                    continued: false,
                }],
                16,
            );
            for (i, part) in parts.into_iter().enumerate() {
                leader.apply(10, i == 0, part, 16);
            }
            assert_eq!(leader.union(|_, _, _| true), whole, "budget {budget}");
        }
    }

    #[test]
    fn pruned_queues_are_reported_as_a_change() {
        let mut book = QueueStatsBook::default();
        book.record(1, 5, "a", sizes(1));
        book.record(1, 5, "b", sizes(1));
        book.take_report(false);
        book.retain_queues(1, &["a".to_string()]);
        let report = book.take_report(false);
        assert_eq!(report[0].queues.len(), 1);
    }
}
