//! Shard work on every node, and the leader's coordination of it.
//!
//! # Design
//!
//! - [`runner`]: the node-local side. Watches the applied cluster state and
//!   this node's lease; runs one task per owned shard while the lease is
//!   valid; stops a shard's task as soon as it is moved away, the lease runs
//!   out, or the store fences it.
//! - [`heartbeat`]: renews the lease. Every `heartbeat_interval` the node
//!   reports to the leader what it runs; an accepted reply renews the lease
//!   from the *send* time (see `cluster::lease`).
//! - [`coordinator`]: leader-only. Tracks liveness and reports, discovers
//!   queues (one scan for the cluster), plans moves with `cluster::planner`
//!   and commits them through Raft.
//! - [`service`]: the internal gRPC face of the coordinator (`raft_addr`).
//! - [`sync`]: queue lists in and queue statistics out, in pages and chunks
//!   ([`queue_lists`], [`queue_stats`]), apart from heartbeats; the
//!   statistics feed the leader-only queue gauges.
//! - [`events`]: the lock-event subscription that tells shard tasks of new
//!   locks at once; `event_gaps`: the node's scheduling mode and when events
//!   may have been missed; [`schedule`]: each shard's timers (exact due
//!   times, a sweep as the safety net, coalescing).
//! - `settings`: the timings the worker runs with; `freeze`: the test hook
//!   that stands in for a paused process.
//!
//! # Invariants
//!
//! - A shard task performs a store operation only after checking, right
//!   before it, that the lease is valid; every operation carries the shard's
//!   epoch, so an operation delayed past that check (a pause) is still
//!   rejected by the store once a newer owner has written.
//! - A shard fenced at epoch `e` is never run again at epoch `e`.
//! - The running set reported to the leader only loses a shard once that
//!   shard's task has exited, and an ending task sends no new call and waits
//!   up to 10 s for the ones in flight, so the leader's "stopped" means no
//!   call of that task is pending here. A call dropped after that wait, or
//!   one that timed out here and still runs in Redis, is not covered by
//!   "stopped": the fence rejects it once the successor has written.
//!
//! # Deliberately not done
//!
//! No work stealing between owners: a shard's queues are worked by its
//! owner alone, and balance comes from moving whole shards.

pub mod coordinator;
mod discovery;
mod event_gaps;
pub mod events;
mod freeze;
pub mod heartbeat;
pub mod queue_lists;
pub mod queue_stats;
pub mod runner;
pub mod schedule;
pub mod service;
mod settings;
mod shard_queues;
pub mod sync;

pub use freeze::Freeze;
pub use settings::WorkerSettings;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::cluster::lease::Lease;
use crate::locks::lock;
use crate::raft::NodeId;
use crate::store::{LockKind, SharedStore};

/// When this node last called a queue (its counts are in the Prometheus
/// counters only: see [`WorkerShared::counts`]).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Wall-clock ms of the last call and of the last successful one (0: never).
    pub last_run_ms: AtomicU64,
    pub last_success_ms: AtomicU64,
}

/// A node's housekeeping counts (see [`WorkerShared::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Housekeeping calls that succeeded.
    pub calls: u64,
    /// Store operations rejected because a newer owner had written.
    pub fenced_writes: u64,
    /// Store operations that failed for another reason.
    pub store_errors: u64,
    pub unlocked_ack: u64,
    pub unlocked_nack: u64,
    pub timed_out: u64,
}

/// What `ctl status` shows of this node's worker: a read model, so the
/// admin API reads no atomics or settings of the worker directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub shards_running: usize,
    /// `None`: no lease.
    pub lease_remaining: Option<Duration>,
    pub fenced_writes: u64,
    /// How queues are scheduled now (lock events or polling, and why).
    pub scheduling: String,
    /// The configured `tasks.notifications` mode.
    pub notifications: &'static str,
}

/// A shard this node is running: its epoch and completed passes.
#[derive(Debug, Clone)]
pub struct RunningShard {
    pub epoch: u64,
    /// Unique per shard task in this process: a task that outlives its
    /// cancellation (an in-flight call) unregisters itself only, never a
    /// newer task of the same shard at the same epoch.
    pub task: u64,
    pub passes: Arc<AtomicU64>,
}

/// Queue names per shard, as last fetched from the leader's discovery.
#[derive(Debug, Default, Clone)]
pub struct QueueCache {
    pub version: u64,
    pub by_shard: BTreeMap<u32, Arc<Vec<String>>>,
}

/// State shared by the runner, the heartbeat loop and the node.
pub struct WorkerShared {
    pub node_id: NodeId,
    pub store: SharedStore,
    pub settings: WorkerSettings,
    /// The lease. A std mutex: held for a read or an update, never across an await.
    lease: Mutex<Lease>,
    /// Shards with a live task (removed by the task itself when it exits).
    running: Mutex<BTreeMap<u32, RunningShard>>,
    /// How many shards run here (the lock-event subscriber watches it).
    running_count: watch::Sender<usize>,
    /// Source of [`RunningShard::task`] ids.
    task_ids: AtomicU64,
    /// Announced queues per running shard (see [`events`]); an entry lives
    /// exactly as long as its shard's task at that epoch.
    pub(crate) inboxes: Mutex<HashMap<u32, Arc<events::ShardInbox>>>,
    /// The cluster's shard count (0 until known), to route lock events.
    shard_count: AtomicU32,
    /// The applied index the runner last reconciled its tasks with (see
    /// `heartbeat::build_report`).
    reconciled_index: AtomicU64,
    /// The highest commit index a leader acknowledged this node at: no
    /// shard task starts from an applied state older than it.
    start_barrier: AtomicU64,
    /// The cluster's generation (high bits of every fencing token); set
    /// with the shard count, before any shard runs.
    generation: AtomicU64,
    /// How shard tasks find new locks right now (see [`events`]).
    scheduling: watch::Sender<events::Scheduling>,
    /// Bumped whenever the queue lists change: wakes shard tasks.
    lists_version: watch::Sender<u64>,
    /// shard -> (epoch at which the store fenced us, the fence token that
    /// did); never rerun at that epoch. A token of a newer generation means
    /// another cluster on the same store (`fenced_by_newer_cluster`); one of
    /// this cluster's generation is the normal end of a stale owner's work.
    /// Entries of epochs a shard has left are dropped (`forget_old_fences`):
    /// epochs only grow, so such a shard is never at that epoch again.
    fenced: Mutex<BTreeMap<u32, (u64, u64)>>,
    queues: Mutex<QueueCache>,
    /// Latest set sizes per queue of the running shards, for the leader's
    /// gauges. A std mutex: one record or one report at a time.
    pub(crate) queue_stats: Mutex<queue_stats::QueueStatsBook>,
    /// Wakes the runner: lease, fencing or queue lists changed.
    pub(crate) changed: Notify,
    /// Wakes the heartbeat loop early (a task exited: tell the leader now).
    pub(crate) report_now: Notify,
    /// Wakes the sync loop early (a shard task waits for its queue list).
    pub(crate) sync_now: Notify,
    /// The leader that acknowledged the last heartbeat (for the sync loop).
    contact: watch::Sender<Option<heartbeat::LeaderContact>>,
    pub stats: WorkerStats,
    /// Prometheus metrics of this node.
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    pub freeze: Freeze,
    /// Set once on graceful shutdown: no lease is renewed and no shard runs.
    retired: AtomicBool,
    /// Random per process start; with `report_seq`, lets the leader tell a
    /// late report of a leaving node from the node coming back.
    pub incarnation: u64,
    /// Heartbeat reports built so far by this process.
    pub report_seq: AtomicU64,
    /// Which tasks run, from the replicated state (set by the runner); shard
    /// tasks watch it to react to pause, resume and trigger at once.
    task_state: watch::Sender<TaskRunState>,
    /// One grid for every shard task of this node, so that their sweeps
    /// fall due together (see `schedule`).
    pub(crate) sweep_grid: schedule::SweepGrid,
    /// When this node last could have missed lock events (see `event_gaps`
    /// for when): a queue whose first event fell in such a gap is not
    /// adopted, so heartbeats ask the leader for discovery for
    /// `lease + lease_margin` after it ([`Self::needs_discovery`]). A std
    /// mutex: one read or write at a time.
    events_gap_at: Mutex<Option<Instant>>,
    /// Polling since the last subscription (a fallback, or a subscription
    /// lost or refused): the next subscription closes a gap.
    polled_since_subscribed: AtomicBool,
}

/// The replicated task settings as shard tasks need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRunState {
    pub unlock: bool,
    pub timeout: bool,
    /// Changes on every `ctl trigger`: shard tasks re-check all queues.
    pub trigger_seq: u64,
}

impl Default for TaskRunState {
    fn default() -> Self {
        Self {
            unlock: true,
            timeout: true,
            trigger_seq: 0,
        }
    }
}

impl WorkerShared {
    pub fn new(
        node_id: NodeId,
        store: SharedStore,
        settings: WorkerSettings,
        metrics: Arc<crate::metrics::NodeMetrics>,
    ) -> Arc<Self> {
        // Polling until the first check says otherwise (see `events`).
        metrics.scheduling.polling.set(1);
        let scheduling = events::Scheduling::initial(settings.notifications);
        let settings_sweep = settings.sweep_interval;
        Arc::new(Self {
            node_id,
            store,
            lease: Mutex::new(Lease::new(settings.lease)),
            settings,
            running: Mutex::new(BTreeMap::new()),
            running_count: watch::channel(0).0,
            task_ids: AtomicU64::new(0),
            inboxes: Mutex::new(HashMap::new()),
            shard_count: AtomicU32::new(0),
            reconciled_index: AtomicU64::new(0),
            start_barrier: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            scheduling: watch::channel(scheduling).0,
            lists_version: watch::channel(0).0,
            fenced: Mutex::new(BTreeMap::new()),
            queues: Mutex::new(QueueCache::default()),
            queue_stats: Mutex::new(queue_stats::QueueStatsBook::default()),
            changed: Notify::new(),
            report_now: Notify::new(),
            sync_now: Notify::new(),
            contact: watch::channel(None).0,
            stats: WorkerStats::default(),
            metrics,
            freeze: Freeze::default(),
            retired: AtomicBool::new(false),
            incarnation: rand::random::<u64>().max(1),
            report_seq: AtomicU64::new(0),
            task_state: watch::channel(TaskRunState::default()).0,
            sweep_grid: schedule::SweepGrid::new(Instant::now(), settings_sweep),
            events_gap_at: Mutex::new(None),
            polled_since_subscribed: AtomicBool::new(false),
        })
    }

    pub fn task_state(&self) -> TaskRunState {
        *self.task_state.borrow()
    }

    /// Updates the task settings; wakes shard tasks if they changed.
    pub(crate) fn set_task_state(&self, state: TaskRunState) {
        self.task_state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    fn watch_task_state(&self) -> watch::Receiver<TaskRunState> {
        self.task_state.subscribe()
    }

    /// Stops all shard work for good (graceful shutdown).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.revoke_lease();
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    pub fn lease_valid(&self) -> bool {
        lock(&self.lease).is_valid(Instant::now())
    }

    /// When the lease ends (or ended): `None` when never granted or revoked.
    pub fn lease_until(&self) -> Option<Instant> {
        lock(&self.lease).valid_until()
    }

    pub fn lease_remaining(&self) -> Option<Duration> {
        lock(&self.lease).remaining(Instant::now())
    }

    /// Records an acknowledged heartbeat sent at `sent_at` by a leader of `term`.
    pub(crate) fn renew_lease(&self, sent_at: Instant, term: u64) {
        // Under one lock: whether the lease had run out and the renewal are
        // one step, so a runner that saw it run out is always woken (see
        // `runner::run`). Retirement is read under it too: `retire` sets the
        // flag and then revokes under this lock, so a renewal either sees
        // the flag or comes before the revoke, never after it.
        let (was_valid, renewed) = {
            let mut lease = lock(&self.lease);
            if self.is_retired() {
                return;
            }
            let was_valid = lease.is_valid(Instant::now());
            (was_valid, lease.renew(sent_at, term))
        };
        if renewed && !was_valid {
            tracing::info!(node = self.node_id, term, "lease acquired");
            self.changed.notify_one();
        }
    }

    pub(crate) fn revoke_lease(&self) {
        lock(&self.lease).revoke();
        self.changed.notify_one();
    }

    pub fn running(&self) -> BTreeMap<u32, RunningShard> {
        lock(&self.running).clone()
    }

    pub fn fenced_at(&self, shard: u32) -> Option<u64> {
        lock(&self.fenced).get(&shard).map(|(epoch, _)| *epoch)
    }

    /// Records that the store fenced `shard` at `epoch` with fence token
    /// `fence`: the shard is not run at that epoch again.
    pub(crate) fn record_fenced(&self, shard: u32, epoch: u64, fence: u64) {
        lock(&self.fenced).insert(shard, (epoch, fence));
    }

    /// Drops the fence records of shards that moved on from the fenced
    /// epoch (`current_epoch`: the applied state's epoch of a shard), so the
    /// map, and every heartbeat that carries it, holds only what matters.
    pub(crate) fn forget_old_fences(&self, current_epoch: impl Fn(u32) -> Option<u64>) {
        lock(&self.fenced).retain(|shard, (epoch, _)| {
            let now = current_epoch(*shard);
            debug_assert!(
                now.is_none_or(|e| e >= *epoch),
                "shard {shard} went back from epoch {epoch} to {now:?}"
            );
            now == Some(*epoch)
        });
    }

    /// Every shard the store fenced, with the epoch it was fenced at.
    pub fn fenced(&self) -> BTreeMap<u32, u64> {
        lock(&self.fenced)
            .iter()
            .map(|(shard, (epoch, _))| (*shard, *epoch))
            .collect()
    }

    /// Shards fenced by a newer cluster generation, with the epoch they were
    /// fenced at.
    pub fn fenced_by_newer_cluster(&self) -> BTreeMap<u32, u64> {
        let generation = self.generation();
        lock(&self.fenced)
            .iter()
            .filter(|(_, (_, fence))| crate::cluster::shards::token_generation(*fence) > generation)
            .map(|(shard, (epoch, _))| (*shard, *epoch))
            .collect()
    }

    pub fn queues(&self) -> QueueCache {
        lock(&self.queues).clone()
    }

    pub(crate) fn set_queues(&self, cache: QueueCache) {
        *lock(&self.queues) = cache;
        self.lists_version.send_modify(|v| *v += 1);
        self.changed.notify_one();
    }

    pub(crate) fn set_contact(&self, contact: heartbeat::LeaderContact) {
        self.contact.send_if_modified(|c| {
            let changed = c.as_ref() != Some(&contact);
            *c = Some(contact);
            changed
        });
    }

    pub(crate) fn watch_contact(&self) -> watch::Receiver<Option<heartbeat::LeaderContact>> {
        self.contact.subscribe()
    }

    pub(crate) fn watch_lists(&self) -> watch::Receiver<u64> {
        self.lists_version.subscribe()
    }

    /// This node's housekeeping counts, each read from the one place it is
    /// counted: its Prometheus counter.
    pub fn counts(&self) -> WorkerCounts {
        let tasks = &self.metrics.tasks;
        WorkerCounts {
            calls: tasks.calls(),
            fenced_writes: tasks.fenced_writes(),
            store_errors: tasks.store_errors(),
            unlocked_ack: tasks.unlocked(LockKind::Ack),
            unlocked_nack: tasks.unlocked(LockKind::Nack),
            timed_out: tasks.timed_out(),
        }
    }

    /// This worker's state for `ctl status`.
    pub fn status(&self) -> WorkerStatus {
        WorkerStatus {
            shards_running: self.running().len(),
            lease_remaining: self.lease_remaining(),
            fenced_writes: self.counts().fenced_writes,
            scheduling: self.scheduling().describe(),
            notifications: self.settings.notifications.as_str(),
        }
    }

    /// The (incarnation, number) of the last report this process built:
    /// a hand-back names it, so the leader can ignore reports in flight.
    pub fn last_report(&self) -> (u64, u64) {
        (self.incarnation, self.report_seq.load(Ordering::SeqCst))
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count.load(Ordering::Relaxed)
    }

    pub fn reconciled_index(&self) -> u64 {
        self.reconciled_index.load(Ordering::SeqCst)
    }

    /// Called by the runner after each reconcile, which inserts every task
    /// it starts into `running` first: so a report that reads this index
    /// and then the running set sees every task started from a state at or
    /// below the index (issue 12, item 6(c)). Applied states only move
    /// forward, so neither does this.
    pub(crate) fn set_reconciled_index(&self, index: u64) {
        let previous = self.reconciled_index.swap(index, Ordering::SeqCst);
        debug_assert!(
            previous <= index,
            "reconciled index went back from {previous} to {index}"
        );
    }

    pub fn start_barrier(&self) -> u64 {
        self.start_barrier.load(Ordering::SeqCst)
    }

    pub(crate) fn raise_start_barrier(&self, index: u64) {
        self.start_barrier.fetch_max(index, Ordering::SeqCst);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub(crate) fn set_shard_count(&self, count: u32, generation: u64) {
        self.shard_count.store(count, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
    }

    pub(crate) fn watch_running_count(&self) -> watch::Receiver<usize> {
        self.running_count.subscribe()
    }

    /// Registers a new shard task (its `task` id from [`Self::next_task_id`]),
    /// with its inbox.
    pub(crate) fn start_running(
        &self,
        shard: u32,
        running: RunningShard,
    ) -> Arc<events::ShardInbox> {
        let inbox = Arc::new(events::ShardInbox::new(running.task));
        lock(&self.inboxes).insert(shard, inbox.clone());
        let mut map = lock(&self.running);
        map.insert(shard, running);
        self.running_count.send_replace(map.len());
        inbox
    }

    /// A task id never used before in this process.
    pub(crate) fn next_task_id(&self) -> u64 {
        self.task_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Unregisters shard task `task` (a newer task of the shard is left
    /// alone). Returns whether no task of `shard` at `epoch` remains.
    pub(crate) fn stop_running(&self, shard: u32, task: u64, epoch: u64) -> bool {
        {
            let mut inboxes = lock(&self.inboxes);
            if inboxes.get(&shard).is_some_and(|i| i.task == task) {
                inboxes.remove(&shard);
            }
        }
        let mut map = lock(&self.running);
        if map.get(&shard).is_some_and(|r| r.task == task) {
            map.remove(&shard);
        }
        self.running_count.send_replace(map.len());
        map.get(&shard).is_none_or(|r| r.epoch != epoch)
    }

    /// The shard's queues, or `None` while its list has not been fetched
    /// (which is not the same as a shard without queues).
    fn queues_of(&self, shard: u32) -> Option<Arc<Vec<String>>> {
        lock(&self.queues).by_shard.get(&shard).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's shared state with the default test settings (also for the
    /// tests of `event_gaps`).
    pub(super) fn shared() -> Arc<WorkerShared> {
        let settings = WorkerSettings {
            heartbeat_interval: Duration::from_millis(200),
            lease: Duration::from_secs(1),
            lease_margin: Duration::from_millis(300),
            pass_interval: Duration::from_millis(100),
            plan_interval: Duration::from_millis(100),
            max_releases_per_round: 32,
            discovery_interval: Duration::from_secs(5),
            leader_freshness: Duration::from_millis(150),
            batch: 500,
            notifications: crate::config::NotificationMode::Auto,
            sweep_interval: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            call_spacing: Duration::from_millis(5),
            concurrency: 8,
            gauge_holdoff: Duration::from_secs(1),
        };
        WorkerShared::new(
            1,
            Arc::new(crate::store::memory::MemoryStore::new()),
            settings,
            crate::metrics::NodeMetrics::new(),
        )
    }

    fn running(shared: &WorkerShared, epoch: u64) -> RunningShard {
        RunningShard {
            epoch,
            task: shared.next_task_id(),
            passes: Arc::new(AtomicU64::new(0)),
        }
    }

    #[test]
    fn an_old_task_of_a_shard_never_unregisters_a_newer_one() {
        let shared = shared();
        // A task at epoch 5 is cancelled and a new one starts at the same
        // epoch (a lease blip) before the old one has finished.
        let old = running(&shared, 5);
        let old_task = old.task;
        shared.start_running(3, old);
        let new = running(&shared, 5);
        let new_task = new.task;
        let inbox = shared.start_running(3, new);
        assert_ne!(old_task, new_task);
        // The old task ends: the new one keeps its entry and its inbox.
        assert!(!shared.stop_running(3, old_task, 5), "epoch 5 still runs");
        assert_eq!(shared.running()[&3].task, new_task);
        assert!(Arc::ptr_eq(&lock(&shared.inboxes)[&3], &inbox));
        assert_eq!(*shared.watch_running_count().borrow(), 1);
        // The new one ends: gone, and its figures may go.
        assert!(shared.stop_running(3, new_task, 5));
        assert!(shared.running().is_empty());
        assert!(lock(&shared.inboxes).is_empty());
    }
}
