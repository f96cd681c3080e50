//! The queue store: where Deckard's queues live, behind one trait.
//!
//! # Fencing contract
//!
//! Every operation a shard owner performs carries a [`Fence`]: the shard's
//! epoch (the Raft log index of the assignment) and the writing node. For
//! each queue the store keeps the highest epoch that has written to it and,
//! **atomically with the operation**:
//!
//! - rejects the operation with [`StoreError::Fenced`] if its epoch is lower,
//!   changing nothing;
//! - otherwise performs it and raises the queue's fence to its epoch.
//!
//! So once a newer owner has written to a queue, no older owner's operation on
//! that queue can ever be accepted again, however long it was paused.
//! Operations with an equal epoch are accepted (the same owner, repeatedly).
//!
//! Epochs are plain integers here: this module knows nothing of Raft.
//!
//! # Queues Deckard emptied, and fence retention
//!
//! A queue whose four Deckard sets (active, processing, both lock sets) are
//! all empty is *gone*: Deckard created its keys on demand and Redis removed
//! them with their last member. A housekeeping call on a gone queue moves
//! nothing, reports [`HousekeepOutcome::gone`], and does not keep the fence
//! alive: the fence is kept (raised if the caller's epoch is higher) for
//! [`FENCE_RETENTION`] and then expires, so a queue Deckard stopped using
//! costs no memory and no discovery after that. A housekeeping call on a
//! queue that holds anything makes the fence permanent again.
//!
//! Why letting a fence expire is safe: a fence is only given an expiry by a
//! call that found the queue gone, and expires only if no call touched the
//! queue for the whole retention (24 h) after that: the queue stayed gone,
//! or it came back but nobody housekept it for a day (the cluster down, or
//! the queue unknown to its owner). An owner whose epoch was superseded
//! could then be accepted once only if it passed its lease check more than
//! 24 h earlier and was paused since (its lease is a second; its next call
//! checks the lease again and stops). Even that one call cannot corrupt a
//! queue: every accepted operation moves only elements already due by the
//! caller's own clock, with Deckard's own scores, in one atomic script, so
//! it does what the current owner would do; what is lost in that corner is
//! only the "one writer per queue" property, for one call.
//!
//! # On a Redis Cluster: a fence raise lost to a failover
//!
//! Replication is asynchronous: a master that fails may not have passed its
//! latest writes to the replica that takes over, and a master cut off on
//! the minority side of a partition keeps accepting writes until
//! `cluster-node-timeout`, all of them lost when its replica is promoted.
//! A raise of a queue's fence can be among them; the promoted replica then
//! holds an older fence (0 if the queue's first raise was lost). deckhand
//! does not `WAIT` for replicas. What that allows, and why it is accepted:
//!
//! - **who gets through**: a call whose epoch is at or above the fence the
//!   replica holds, i.e. from the owners the lost raises had fenced out.
//!   Such a call has passed its owner's lease check, so it is either in
//!   flight from before its shard moved (the redis crate retries and resends
//!   calls through redirections and reconnections for up to its 3 s
//!   response timeout, longer than lease + margin, and does so precisely
//!   during failovers) or from a process paused past its lease;
//! - **how long**: until the newest owner's next call on the queue raises
//!   the fence again (a poll interval on a cluster, where lock events are
//!   not followed yet);
//! - **what it can do**: it runs the same atomic script as any call. That
//!   script moves only elements already due, by the earlier of the caller's
//!   clock and Redis's own (`TIME`), each in one step with Deckard's
//!   scores. So two owners may both work a queue for that window, each move
//!   still happens once: never a message lost, duplicated or returned
//!   early. What is lost is the "one writer per queue" property.
//!
//! Closing the window would take, for each raise, a `WAIT 1 <ms>` sent on
//! the same connection right after the script (in one pipeline, so it goes
//! to the queue's master; a bare `WAIT` on the cluster connection goes to
//! every master and counts nothing of this write), on each queue's first
//! call of an epoch (and with more than one replica per master, a count
//! that covers the replica a failover would promote). It is the hardening
//! to add if this corner ever matters.
//!
//! # Implementations
//!
//! - [`memory::MemoryStore`]: embedded, for the demo and fast tests.
//! - [`redis::RedisStore`]: Deckard's Redis, in Deckard's key layout, one Lua
//!   script per operation.
//!
//! Both pass the same contract tests (`contract`).

pub mod layout;
pub mod memory;
pub mod redis;
mod redis_calls;
pub mod redis_conn;
pub mod redis_events;
mod redis_events_cluster;
mod redis_scan;
mod redis_scripts;
pub mod redis_url;

use std::sync::Arc;

/// The right to write to a queue: the owning shard's epoch and the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub shard: u32,
    pub epoch: u64,
    /// The node performing the operation (for diagnostics and history).
    pub node: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A newer owner has written to the queue; the caller must drop the shard.
    #[error("queue {queue:?}: fenced: epoch {epoch} is older than the queue's fence {fence}")]
    Fenced {
        queue: String,
        epoch: u64,
        fence: u64,
    },
    #[error("invalid queue name {queue:?}: {reason}")]
    InvalidQueue { queue: String, reason: String },
    /// A key of the queue holds something that is not what Deckard puts there.
    #[error("queue {queue:?}: unexpected data: {reason}")]
    WrongType { queue: String, reason: String },
    /// The store cannot be reached or failed; retry later.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
    /// The store is reachable but does not announce lock changes.
    #[error("lock events unavailable: {0}")]
    NoLockEvents(String),
}

impl StoreError {
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }
}

/// Which lock set of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockKind {
    Ack,
    Nack,
}

impl LockKind {
    /// Deckard's `lock_type` label.
    pub fn label(self) -> &'static str {
        match self {
            LockKind::Ack => "ack",
            LockKind::Nack => "nack",
        }
    }
}

/// What one housekeeping call on one queue may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HousekeepRequest {
    /// Wall-clock milliseconds: elements due at or before it are moved.
    pub now_ms: i64,
    /// The most elements moved by this call, over all its tasks.
    pub batch: usize,
    /// UNLOCK: move due ack locks, then due nack locks, to the active pool.
    pub unlock: bool,
    /// TIMEOUT: move processing entries past their ack deadline to the active pool with score 0.
    pub timeout: bool,
}

/// What a housekeeping call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HousekeepOutcome {
    pub unlocked_ack: u64,
    pub unlocked_nack: u64,
    pub timed_out: u64,
    /// For every unlocked element: `now_ms` minus its unlock time, in ms.
    pub unlock_lateness_ms: Vec<i64>,
    /// The earliest due time still in the sets of the enabled tasks, if any.
    pub next_due_ms: Option<i64>,
    /// The queue's set sizes right after the call (for the leader's gauges).
    pub sizes: QueueSizes,
    /// The queue has no Deckard set left (active, processing and both lock
    /// sets are empty): Deckard emptied it. Nothing was moved, the fence was
    /// left to expire (see the fence retention in the module doc), and the
    /// caller should stop spending calls on it.
    pub gone: bool,
}

/// A queue's set sizes as one housekeeping call left them, read inside the
/// same atomic operation (no extra round trip).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSizes {
    /// The active pool (`queue:{q}`).
    pub active: u64,
    /// Messages being processed (`:tmp`).
    pub processing: u64,
    pub locked_ack: u64,
    pub locked_nack: u64,
    /// How far past its unlock time the most overdue remaining lock is, in
    /// ms; 0 when no lock is due (the normal case once housekeeping keeps up).
    pub oldest_overdue_ms: u64,
}

impl HousekeepOutcome {
    pub fn moved(&self) -> u64 {
        self.unlocked_ack + self.unlocked_nack + self.timed_out
    }

    /// True when due elements remain (the batch limit stopped the call).
    pub fn more_due(&self, now_ms: i64) -> bool {
        self.next_due_ms.is_some_and(|d| d <= now_ms)
    }
}

/// The queue store as the housekeeper uses it. Every mutation is fenced.
#[async_trait::async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Every queue that has any key in the store (one scan for the cluster).
    async fn discover_queues(&self) -> Result<Vec<String>, StoreError>;

    /// Checks and raises the queue's fence, then runs the enabled tasks on it,
    /// longest-overdue first, moving at most `batch` elements. Atomic.
    async fn housekeep(
        &self,
        queue: &str,
        req: HousekeepRequest,
        fence: Fence,
    ) -> Result<HousekeepOutcome, StoreError>;

    /// A cluster generation above `above` and above every one this store
    /// handed out before (see `cluster::shards::fence_token`): asked once,
    /// by the leader that creates a cluster, with `above` the highest
    /// generation in any fence ([`QueueStore::highest_fence`]). Fences
    /// written by an earlier cluster on this store then rank below every
    /// epoch of the new one, even when the counter itself was lost
    /// (evicted, deleted, or dropped by a failover) while the fences stayed.
    async fn next_generation(&self, above: u64) -> Result<u64, StoreError>;

    /// The highest fence any queue on this store holds (0: none). One full
    /// scan of the store: asked once, when a cluster is created.
    async fn highest_fence(&self) -> Result<u64, StoreError>;

    /// The queue's current fence (highest epoch that wrote to it), 0 if none.
    async fn fence_of(&self, queue: &str) -> Result<u64, StoreError>;

    /// Subscribes to queue events: the returned stream yields a
    /// [`QueueEvent`] each time an element enters one of a queue's lock sets
    /// (Deckard's ack or nack with a lock) or its processing set (a pull),
    /// and ends when the subscription is lost (events from then on are lost:
    /// the caller resubscribes and sweeps).
    ///
    /// Fails with [`StoreError::NoLockEvents`] when the store cannot announce
    /// them (Redis without keyspace notifications), naming why.
    async fn watch_events(&self) -> Result<QueueEventStream, StoreError>;

    /// Housekeeping calls so far per server of a Redis Cluster (label,
    /// count); empty where there is one server.
    fn calls_by_master(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// What a queue event announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// Messages were pulled: new ack deadlines in `:tmp`.
    Pull,
    /// A message was locked (ack or nack with a lock).
    Lock,
}

/// One keyspace event about one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEvent {
    pub queue: String,
    pub kind: EventKind,
}

/// Queue events; ends when the subscription is lost. See [`QueueStore::watch_events`].
pub type QueueEventStream = std::pin::Pin<Box<dyn futures::Stream<Item = QueueEvent> + Send>>;

/// A queue's sets, for checks: `(id, score)` sorted by score then id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueSnapshot {
    pub active: Vec<(String, f64)>,
    pub processing: Vec<(String, f64)>,
    pub lock_ack: Vec<(String, f64)>,
    pub lock_ack_score: Vec<(String, f64)>,
    pub lock_nack: Vec<(String, f64)>,
    pub lock_nack_score: Vec<(String, f64)>,
}

impl QueueSnapshot {
    /// Every id with the sets it is in (active, processing, lock_ack, lock_nack).
    pub fn placements(&self) -> std::collections::BTreeMap<String, Vec<&'static str>> {
        let mut out: std::collections::BTreeMap<String, Vec<&'static str>> = Default::default();
        for (set, name) in [
            (&self.active, "active"),
            (&self.processing, "processing"),
            (&self.lock_ack, "lock_ack"),
            (&self.lock_nack, "lock_nack"),
        ] {
            for (id, _) in set {
                out.entry(id.clone()).or_default().push(name);
            }
        }
        out
    }
}

/// What Deckard's API pods do to a queue (unfenced): used by `deckhand
/// load`, the demo and tests to act like Deckard on the same data.
#[async_trait::async_trait]
pub trait DeckardClient: Send + Sync + 'static {
    /// Inserts ids into the active pool unless present in any set. Returns how many.
    async fn add(&self, queue: &str, items: &[(String, f64)]) -> Result<usize, StoreError>;
    /// Moves up to `n` lowest-score ids to processing, deadline `now + ack_deadline_ms`.
    async fn pull(
        &self,
        queue: &str,
        n: usize,
        now_ms: i64,
        ack_deadline_ms: i64,
    ) -> Result<Vec<String>, StoreError>;
    /// Ack (or nack) a processing id: with `lock_ms > 0` into the lock set until
    /// `now + lock_ms`, recording `score` to restore when given; with no lock,
    /// straight back to the active pool with `score` (default: now for ack, 0 for nack).
    async fn release(
        &self,
        queue: &str,
        kind: LockKind,
        id: &str,
        now_ms: i64,
        lock_ms: i64,
        score: Option<f64>,
    ) -> Result<bool, StoreError>;
    /// Removes ids from every set of the queue (a message finished for good).
    async fn remove(&self, queue: &str, ids: &[String]) -> Result<usize, StoreError>;
    /// All sets of a queue.
    async fn snapshot(&self, queue: &str) -> Result<QueueSnapshot, StoreError>;
    /// How many ids are in the queue's lock and processing sets (housekeeping backlog).
    async fn pending(&self, queue: &str) -> Result<usize, StoreError>;
}

pub type SharedStore = Arc<dyn QueueStore>;

/// Current wall-clock time in ms since the epoch (compared with Deckard's scores).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Queue names Deckard would reject: empty, or containing the hash-tag
/// braces that delimit the name in its Redis keys.
pub fn validate_queue_name(queue: &str) -> Result<(), StoreError> {
    let reason = if queue.is_empty() {
        "empty"
    } else if queue.contains('{') || queue.contains('}') {
        "contains '{' or '}'"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidQueue {
        queue: queue.to_string(),
        reason: reason.to_string(),
    })
}

/// Parses `memory://` or `memory://?queues=N` (N queues `q0..` holding one message each,
/// for demos and measurements: each process has its own embedded store).
pub fn parse_memory_url(url: &str) -> Option<Result<usize, String>> {
    let rest = url.strip_prefix("memory://")?;
    if rest.is_empty() {
        return Some(Ok(0));
    }
    let Some(n) = rest.strip_prefix("?queues=") else {
        return Some(Err(format!(
            "{url:?}: the only memory:// option is ?queues=N"
        )));
    };
    Some(
        n.parse::<usize>()
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| format!("{url:?}: queues must be a number from 0 to 1000000")),
    )
}

/// Opens the store named by a config URL with Deckard's key `prefix`.
/// A Redis store that cannot be reached yet still opens: it connects (and
/// reconnects) on use, and operations fail until Redis answers.
pub async fn open(url: &str, prefix: &str) -> Result<Arc<dyn FullStoreDyn>, StoreError> {
    open_with(url, prefix, false).await
}

/// [`open`], where `cluster` says the URL names a Redis Cluster (config
/// `store.cluster`).
pub async fn open_with(
    url: &str,
    prefix: &str,
    cluster: bool,
) -> Result<Arc<dyn FullStoreDyn>, StoreError> {
    if let Some(parsed) = parse_memory_url(url) {
        let queues = parsed.map_err(StoreError::Unavailable)?;
        let store = memory::MemoryStore::new();
        for i in 0..queues {
            store.add_queue(&format!("q{i}"))?;
        }
        return Ok(Arc::new(store));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Arc::new(
            redis::RedisStore::open_with(url, prefix, cluster).await?,
        ));
    }
    Err(StoreError::Unavailable(format!(
        "{}: unknown store scheme",
        redis_url::redacted(url)
    )))
}

/// How long a gone queue's fence is kept before it expires (see the module doc).
pub const FENCE_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Object-safe union of both store traits, with upcasts.
pub trait FullStoreDyn: QueueStore + DeckardClient {
    fn as_queue_store(self: Arc<Self>) -> SharedStore;
    fn as_client(self: Arc<Self>) -> Arc<dyn DeckardClient>;
}

impl<T: QueueStore + DeckardClient> FullStoreDyn for T {
    fn as_queue_store(self: Arc<Self>) -> SharedStore {
        self
    }
    fn as_client(self: Arc<Self>) -> Arc<dyn DeckardClient> {
        self
    }
}

#[cfg(test)]
pub(crate) mod contract;
