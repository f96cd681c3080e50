//! The embedded in-memory queue store (demo, fast tests).
//!
//! Holds Deckard's six sets per queue as sorted sets with Redis's ordering
//! (score, then member). One mutex guards everything, so each operation is
//! atomic with its fence check, exactly like one Lua script in Redis. It must
//! behave like the Redis store; `store::contract` checks both.
//!
//! Optionally records every accepted fenced operation for history checks.
//!
//! Queue events ([`QueueStore::watch_events`]: locks and pulls) go through a broadcast channel
//! with Redis pub/sub's semantics: a subscriber that falls behind by more
//! than [`EVENT_BUFFER`] events loses its subscription (the stream ends), as
//! Redis drops a subscriber whose output buffer overflows.
//!
//! A queue whose four Deckard sets are empty is *gone*, as in Redis: it is
//! not discovered and housekeeping reports it gone. Its entry (and fence) is
//! kept: this store lives as long as one demo or test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::layout::SCORE_MIN;
use super::{
    validate_queue_name, DeckardClient, Fence, HousekeepOutcome, HousekeepRequest, LockKind,
    QueueSizes, QueueSnapshot, QueueStore, StoreError,
};

/// One accepted fenced operation, in acceptance order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedOp {
    pub seq: u64,
    pub queue: String,
    pub shard: u32,
    pub epoch: u64,
    pub node: u64,
}

/// A score with a total order (NaN never enters: scores come from our code).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score(f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A Redis-like sorted set.
#[derive(Debug, Default, Clone)]
struct SortedSet {
    by_score: BTreeSet<(Score, String)>,
    scores: HashMap<String, f64>,
}

impl SortedSet {
    fn add(&mut self, id: &str, score: f64) {
        if let Some(old) = self.scores.insert(id.to_string(), score) {
            self.by_score.remove(&(Score(old), id.to_string()));
        }
        self.by_score.insert((Score(score), id.to_string()));
    }

    fn remove(&mut self, id: &str) -> Option<f64> {
        let score = self.scores.remove(id)?;
        self.by_score.remove(&(Score(score), id.to_string()));
        Some(score)
    }

    fn contains(&self, id: &str) -> bool {
        self.scores.contains_key(id)
    }

    fn score(&self, id: &str) -> Option<f64> {
        self.scores.get(id).copied()
    }

    /// Up to `limit` members with score <= `max`, lowest first.
    fn due(&self, max: f64, limit: usize) -> Vec<(String, f64)> {
        self.by_score
            .iter()
            .take_while(|(s, _)| s.0 <= max)
            .take(limit)
            .map(|(s, id)| (id.clone(), s.0))
            .collect()
    }

    fn len(&self) -> u64 {
        self.scores.len() as u64
    }

    fn first_score(&self) -> Option<f64> {
        self.by_score.iter().next().map(|(s, _)| s.0)
    }

    fn lowest(&self, n: usize) -> Vec<String> {
        self.by_score
            .iter()
            .take(n)
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn items(&self) -> Vec<(String, f64)> {
        self.by_score
            .iter()
            .map(|(s, id)| (id.clone(), s.0))
            .collect()
    }
}

#[derive(Debug, Default, Clone)]
struct Queue {
    fence: u64,
    active: SortedSet,
    processing: SortedSet,
    lock_ack: SortedSet,
    lock_ack_score: SortedSet,
    lock_nack: SortedSet,
    lock_nack_score: SortedSet,
}

impl Queue {
    fn locks(&mut self, kind: LockKind) -> (&mut SortedSet, &mut SortedSet, &mut SortedSet) {
        match kind {
            LockKind::Ack => (
                &mut self.lock_ack,
                &mut self.lock_ack_score,
                &mut self.active,
            ),
            LockKind::Nack => (
                &mut self.lock_nack,
                &mut self.lock_nack_score,
                &mut self.active,
            ),
        }
    }

    /// None of Deckard's four sets holds anything (see the module doc).
    fn is_gone(&self) -> bool {
        self.active.len() + self.processing.len() + self.lock_ack.len() + self.lock_nack.len() == 0
    }

    fn holds(&self, id: &str) -> bool {
        self.active.contains(id)
            || self.processing.contains(id)
            || self.lock_ack.contains(id)
            || self.lock_nack.contains(id)
    }
}

#[derive(Default)]
struct Inner {
    queues: BTreeMap<String, Queue>,
    history: Option<Vec<AcceptedOp>>,
    next_seq: u64,
    /// The last cluster generation handed out (`next_generation`).
    generation: u64,
    /// Deliberate defects, for tests that show the checks can fail.
    broken: Defects,
}

/// Deliberate defects a test can switch on to show that a check fails on a
/// broken build (issue: "a checker that can fail"). Never set by a node.
#[derive(Debug, Default, Clone, Copy)]
struct Defects {
    /// Accept every fenced call, whatever its epoch.
    no_fencing: bool,
    /// Housekeeping sees the time this much ahead (a clock stepped forward).
    clock_ahead_ms: i64,
    /// Discovery fails as if the store were unreachable (a fault, not a bug).
    discovery_down: bool,
}

/// Lock events a subscriber may fall behind by before it loses its subscription.
pub const EVENT_BUFFER: usize = 65_536;

/// Clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    /// Locks and pulls (see the module doc).
    events: tokio::sync::broadcast::Sender<super::QueueEvent>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that records every accepted fenced operation (see [`Self::history`]).
    pub fn with_history() -> Self {
        let store = Self::default();
        store.lock().history = Some(Vec::new());
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::locks::lock(&self.inner)
    }

    /// Creates a queue holding one message `seed` in its active pool (as if
    /// Deckard had created it: a queue with no message does not exist).
    pub fn add_queue(&self, queue: &str) -> Result<(), StoreError> {
        validate_queue_name(queue)?;
        let mut inner = self.lock();
        let q = inner.queues.entry(queue.to_string()).or_default();
        if !q.holds("seed") {
            q.active.add("seed", SCORE_MIN);
        }
        Ok(())
    }

    /// Every accepted fenced operation so far, if recording.
    pub fn history(&self) -> Vec<AcceptedOp> {
        self.lock().history.clone().unwrap_or_default()
    }

    /// Defect: accept stale owners' calls (tests of the history check only).
    pub fn break_fencing(&self) {
        self.lock().broken.no_fencing = true;
    }

    /// Defect: housekeeping takes "now" `ms` ahead of the caller's clock, as
    /// a node whose clock stepped forward would (tests of the checks only).
    pub fn break_clock(&self, ms: i64) {
        self.lock().broken.clock_ahead_ms = ms;
    }

    /// Fault: discovery fails as if the store could not be reached (the
    /// other operations still work), until called again with `false`.
    pub fn fail_discovery(&self, down: bool) {
        self.lock().broken.discovery_down = down;
    }

    /// Defect: puts `id` in the active pool whatever set holds it already
    /// (tests of the census only).
    pub fn force_add_active(&self, queue: &str, id: &str) {
        let mut inner = self.lock();
        let q = inner.queues.entry(queue.to_string()).or_default();
        q.active.add(id, SCORE_MIN);
    }
}

fn unlock(
    q: &mut Queue,
    kind: LockKind,
    req: &HousekeepRequest,
    budget: &mut usize,
    out: &mut HousekeepOutcome,
) {
    let default = match kind {
        LockKind::Ack => req.now_ms as f64,
        LockKind::Nack => SCORE_MIN,
    };
    let (lock, restore, active) = q.locks(kind);
    let due = lock.due(req.now_ms as f64, *budget);
    for (id, due_at) in &due {
        lock.remove(id);
        let score = restore.remove(id).unwrap_or(default);
        active.add(id, score);
        out.unlock_lateness_ms.push(req.now_ms - *due_at as i64);
    }
    *budget -= due.len();
    match kind {
        LockKind::Ack => out.unlocked_ack += due.len() as u64,
        LockKind::Nack => out.unlocked_nack += due.len() as u64,
    }
}

#[async_trait::async_trait]
impl QueueStore for MemoryStore {
    async fn discover_queues(&self) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        if inner.broken.discovery_down {
            return Err(StoreError::Unavailable(
                "discovery: the store cannot be reached (injected fault)".into(),
            ));
        }
        Ok(inner
            .queues
            .iter()
            .filter(|(_, q)| !q.is_gone())
            .map(|(name, _)| name.clone())
            .collect())
    }

    async fn watch_events(&self) -> Result<super::QueueEventStream, StoreError> {
        use futures::StreamExt;
        let events = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe());
        // A lagging subscriber has lost events: end the stream, as Redis would.
        Ok(Box::pin(
            events
                .take_while(|e| std::future::ready(e.is_ok()))
                .filter_map(|e| std::future::ready(e.ok())),
        ))
    }

    async fn housekeep(
        &self,
        queue: &str,
        req: HousekeepRequest,
        fence: Fence,
    ) -> Result<HousekeepOutcome, StoreError> {
        validate_queue_name(queue)?;
        let mut inner = self.lock();
        let broken = inner.broken;
        let req = HousekeepRequest {
            now_ms: req.now_ms + broken.clock_ahead_ms,
            ..req
        };
        let q = inner.queues.entry(queue.to_string()).or_default();
        if fence.epoch < q.fence && !broken.no_fencing {
            return Err(StoreError::Fenced {
                queue: queue.to_string(),
                epoch: fence.epoch,
                fence: q.fence,
            });
        }
        q.fence = q.fence.max(fence.epoch);
        let out = if q.is_gone() {
            HousekeepOutcome {
                gone: true,
                ..HousekeepOutcome::default()
            }
        } else {
            housekeep_queue(q, req)
        };
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some(history) = inner.history.as_mut() {
            history.push(AcceptedOp {
                seq,
                queue: queue.to_string(),
                shard: fence.shard,
                epoch: fence.epoch,
                node: fence.node,
            });
        }
        Ok(out)
    }

    async fn next_generation(&self, above: u64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        inner.generation = inner.generation.max(above) + 1;
        Ok(inner.generation)
    }

    async fn highest_fence(&self) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .queues
            .values()
            .map(|q| q.fence)
            .max()
            .unwrap_or(0))
    }

    async fn fence_of(&self, queue: &str) -> Result<u64, StoreError> {
        validate_queue_name(queue)?;
        Ok(self.lock().queues.get(queue).map_or(0, |q| q.fence))
    }
}

/// The moves of one accepted housekeeping call on a queue that is not gone.
fn housekeep_queue(q: &mut Queue, req: HousekeepRequest) -> HousekeepOutcome {
    let mut out = HousekeepOutcome::default();
    let mut budget = req.batch;
    if req.unlock {
        unlock(q, LockKind::Ack, &req, &mut budget, &mut out);
        unlock(q, LockKind::Nack, &req, &mut budget, &mut out);
    }
    if req.timeout {
        let due = q.processing.due(req.now_ms as f64, budget);
        for (id, _) in &due {
            q.processing.remove(id);
            q.active.add(id, SCORE_MIN);
        }
        out.timed_out = due.len() as u64;
    }
    let mut firsts = Vec::new();
    if req.unlock {
        firsts.extend(q.lock_ack.first_score());
        firsts.extend(q.lock_nack.first_score());
    }
    if req.timeout {
        firsts.extend(q.processing.first_score());
    }
    out.next_due_ms = firsts.into_iter().reduce(f64::min).map(|s| s as i64);
    let oldest_lock = [q.lock_ack.first_score(), q.lock_nack.first_score()]
        .into_iter()
        .flatten()
        .reduce(f64::min);
    out.sizes = QueueSizes {
        active: q.active.len(),
        processing: q.processing.len(),
        locked_ack: q.lock_ack.len(),
        locked_nack: q.lock_nack.len(),
        oldest_overdue_ms: oldest_lock.map_or(0, |s| (req.now_ms as f64 - s).max(0.0) as u64),
    };
    out
}

#[async_trait::async_trait]
impl DeckardClient for MemoryStore {
    async fn add(&self, queue: &str, items: &[(String, f64)]) -> Result<usize, StoreError> {
        validate_queue_name(queue)?;
        let mut inner = self.lock();
        let q = inner.queues.entry(queue.to_string()).or_default();
        let mut inserted = 0;
        for (id, score) in items {
            if !q.holds(id) {
                q.active.add(id, *score);
                inserted += 1;
            }
        }
        Ok(inserted)
    }

    async fn pull(
        &self,
        queue: &str,
        n: usize,
        now_ms: i64,
        ack_deadline_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        validate_queue_name(queue)?;
        let mut inner = self.lock();
        let q = inner.queues.entry(queue.to_string()).or_default();
        let ids = q.active.lowest(n);
        for id in &ids {
            q.active.remove(id);
            q.processing.add(id, (now_ms + ack_deadline_ms) as f64);
        }
        if !ids.is_empty() {
            let _ = self.events.send(super::QueueEvent {
                queue: queue.to_string(),
                kind: super::EventKind::Pull,
            });
        }
        Ok(ids)
    }

    async fn release(
        &self,
        queue: &str,
        kind: LockKind,
        id: &str,
        now_ms: i64,
        lock_ms: i64,
        score: Option<f64>,
    ) -> Result<bool, StoreError> {
        validate_queue_name(queue)?;
        let mut inner = self.lock();
        let q = inner.queues.entry(queue.to_string()).or_default();
        if q.processing.remove(id).is_none() {
            return Ok(false);
        }
        if lock_ms > 0 {
            let (lock, restore, _) = q.locks(kind);
            lock.add(id, (now_ms + lock_ms) as f64);
            if let Some(score) = score {
                restore.add(id, score);
            }
            // No subscriber is not an error (as PUBLISH to nobody).
            let _ = self.events.send(super::QueueEvent {
                queue: queue.to_string(),
                kind: super::EventKind::Lock,
            });
        } else {
            let default = match kind {
                LockKind::Ack => now_ms as f64,
                LockKind::Nack => SCORE_MIN,
            };
            q.active.add(id, score.unwrap_or(default));
        }
        Ok(true)
    }

    async fn remove(&self, queue: &str, ids: &[String]) -> Result<usize, StoreError> {
        validate_queue_name(queue)?;
        let mut inner = self.lock();
        let Some(q) = inner.queues.get_mut(queue) else {
            return Ok(0);
        };
        let mut removed = 0;
        for id in ids {
            for set in [
                &mut q.active,
                &mut q.processing,
                &mut q.lock_ack,
                &mut q.lock_ack_score,
                &mut q.lock_nack,
                &mut q.lock_nack_score,
            ] {
                removed += usize::from(set.remove(id).is_some());
            }
        }
        Ok(removed)
    }

    async fn pending(&self, queue: &str) -> Result<usize, StoreError> {
        validate_queue_name(queue)?;
        let inner = self.lock();
        Ok(inner.queues.get(queue).map_or(0, |q| {
            q.processing.scores.len() + q.lock_ack.scores.len() + q.lock_nack.scores.len()
        }))
    }

    async fn snapshot(&self, queue: &str) -> Result<QueueSnapshot, StoreError> {
        validate_queue_name(queue)?;
        let inner = self.lock();
        let Some(q) = inner.queues.get(queue) else {
            return Ok(QueueSnapshot::default());
        };
        Ok(QueueSnapshot {
            active: q.active.items(),
            processing: q.processing.items(),
            lock_ack: q.lock_ack.items(),
            lock_ack_score: q.lock_ack_score.items(),
            lock_nack: q.lock_nack.items(),
            lock_nack_score: q.lock_nack_score.items(),
        })
    }
}

impl MemoryStore {
    /// The score of `id` in the active pool (tests).
    pub fn active_score(&self, queue: &str, id: &str) -> Option<f64> {
        self.lock()
            .queues
            .get(queue)
            .and_then(|q| q.active.score(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_meets_the_contract() {
        let store = MemoryStore::new();
        crate::store::contract::run(&store, &store).await;
        crate::store::contract::lock_events(&store, &store).await;
    }

    #[tokio::test]
    async fn history_records_accepted_operations_only() {
        let store = MemoryStore::with_history();
        store.add_queue("q").expect("valid");
        let fence = |epoch| Fence {
            shard: 0,
            epoch,
            node: 1,
        };
        let req = HousekeepRequest {
            now_ms: 0,
            batch: 10,
            unlock: true,
            timeout: true,
        };
        store.housekeep("q", req, fence(5)).await.expect("accepted");
        assert!(store.housekeep("q", req, fence(4)).await.is_err());
        store.housekeep("q", req, fence(6)).await.expect("accepted");
        let epochs: Vec<_> = store.history().iter().map(|op| op.epoch).collect();
        assert_eq!(epochs, vec![5, 6]);
    }
}
