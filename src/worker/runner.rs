//! Runs this node's shards: one task per owned shard while the lease holds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{lock, RunningShard, TaskRunState, WorkerShared};
use crate::cluster::TaskKind;
use crate::raft::store::AppliedState;
use crate::shutdown::ShutdownListener;
use crate::store::{now_ms, Fence, HousekeepRequest, StoreError};

/// How long a task waits before retrying after a store error.
const STORE_RETRY: Duration = Duration::from_millis(200);
/// How long a task waits for its shard's queue list before asking again.
const QUEUE_LIST_WAIT: Duration = Duration::from_millis(20);

struct Task {
    epoch: u64,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Keeps the set of running shard tasks equal to "owned here, at the
/// current epoch, lease valid, not fenced at that epoch".
pub async fn run(
    shared: Arc<WorkerShared>,
    mut applied: watch::Receiver<Arc<AppliedState>>,
    mut stop: ShutdownListener,
) {
    let mut tasks: BTreeMap<u32, Task> = BTreeMap::new();
    loop {
        let state = applied.borrow_and_update().clone();
        let settings = &state.cluster.tasks;
        shared.set_task_state(TaskRunState {
            unlock: !settings.get(TaskKind::Unlock).paused,
            timeout: !settings.get(TaskKind::Timeout).paused,
            trigger_seq: settings.trigger_seq(),
        });
        let lease_ok = shared.lease_valid();
        let desired: BTreeMap<u32, u64> =
            if lease_ok && !stop.is_triggered() && !shared.is_retired() {
                state
                    .cluster
                    .owned_by(shared.node_id)
                    .filter(|(shard, s)| shared.fenced_at(*shard) != Some(s.epoch))
                    .map(|(shard, s)| (shard, s.epoch))
                    .collect()
            } else {
                BTreeMap::new()
            };
        reconcile(&shared, &mut tasks, &desired);

        // Wake when the state, lease or queues change, or the lease runs out.
        let lease_left = shared
            .lease_remaining()
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { break },
            _ = shared.changed.notified() => {}
            _ = tokio::time::sleep(lease_left) => {}
            _ = stop.recv() => break,
        }
    }
    stop_all(&mut tasks).await;
}

fn reconcile(
    shared: &Arc<WorkerShared>,
    tasks: &mut BTreeMap<u32, Task>,
    desired: &BTreeMap<u32, u64>,
) {
    // Stop what we should not run (moved away, new epoch, lease gone, fenced).
    let to_stop: Vec<u32> = tasks
        .iter()
        .filter(|(shard, t)| desired.get(shard) != Some(&t.epoch) || t.handle.is_finished())
        .map(|(shard, _)| *shard)
        .collect();
    for shard in to_stop {
        if let Some(task) = tasks.remove(&shard) {
            task.cancel.cancel();
            if !task.handle.is_finished() {
                tracing::info!(
                    node = shared.node_id,
                    shard,
                    epoch = task.epoch,
                    "stopping shard"
                );
            }
        }
    }
    // Start what we should run and do not.
    for (&shard, &epoch) in desired {
        if tasks.contains_key(&shard) {
            continue;
        }
        tracing::info!(node = shared.node_id, shard, epoch, "running shard");
        let cancel = CancellationToken::new();
        let passes = Arc::new(AtomicU64::new(0));
        lock(&shared.running).insert(
            shard,
            RunningShard {
                epoch,
                passes: passes.clone(),
            },
        );
        let handle = tokio::spawn(run_shard(
            shared.clone(),
            shard,
            epoch,
            cancel.clone(),
            passes,
        ));
        tasks.insert(
            shard,
            Task {
                epoch,
                cancel,
                handle,
            },
        );
    }
}

async fn stop_all(tasks: &mut BTreeMap<u32, Task>) {
    for task in tasks.values() {
        task.cancel.cancel();
    }
    for (_, task) in std::mem::take(tasks) {
        let _ = task.handle.await;
    }
}

/// Removes the shard from the running set when its task ends, however it ends.
struct RunningGuard {
    shared: Arc<WorkerShared>,
    shard: u32,
    epoch: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut running = lock(&self.shared.running);
        if running
            .get(&self.shard)
            .is_some_and(|r| r.epoch == self.epoch)
        {
            running.remove(&self.shard);
        }
        drop(running);
        lock(&self.shared.queue_stats).drop_shard(self.shard, self.epoch);
        self.shared.report_now.notify_one();
    }
}

/// What happened to one queue in one sweep.
enum QueueResult {
    /// Look again at this instant.
    Next(Instant),
    /// The store fenced us: drop the shard.
    Fenced(StoreError),
}

/// One housekeeping call on one queue: lease check, (test) freeze point,
/// fenced call, bookkeeping. Returns when to look at the queue again.
async fn housekeep_queue(
    shared: &WorkerShared,
    queue: &str,
    fence: Fence,
    run: TaskRunState,
) -> QueueResult {
    let poll = shared.settings.poll_interval;
    if !shared.lease_valid() {
        return QueueResult::Next(Instant::now() + STORE_RETRY.min(poll));
    }
    // A pause here (after the lease check) is the dangerous one; the
    // store's fence check is what makes it harmless.
    shared.freeze.gate(fence.shard).await;
    let now_ms = now_ms();
    let req = HousekeepRequest {
        now_ms,
        batch: shared.settings.batch,
        unlock: run.unlock,
        timeout: run.timeout,
    };
    let stats = &shared.stats;
    stats
        .last_run_ms
        .store(now_ms.max(0) as u64, Ordering::Relaxed);
    let started = Instant::now();
    match shared.store.housekeep(queue, req, fence).await {
        Ok(out) => {
            shared
                .metrics
                .record_housekeep(queue, &out, started.elapsed().as_secs_f64() * 1000.0);
            stats.calls.fetch_add(1, Ordering::Relaxed);
            lock(&shared.queue_stats).record(fence.shard, fence.epoch, queue, out.sizes);
            stats
                .last_success_ms
                .store(now_ms.max(0) as u64, Ordering::Relaxed);
            stats
                .unlocked_ack
                .fetch_add(out.unlocked_ack, Ordering::Relaxed);
            stats
                .unlocked_nack
                .fetch_add(out.unlocked_nack, Ordering::Relaxed);
            stats.timed_out.fetch_add(out.timed_out, Ordering::Relaxed);
            if out.moved() > 0 {
                tracing::debug!(
                    queue,
                    acks = out.unlocked_ack,
                    nacks = out.unlocked_nack,
                    timeouts = out.timed_out,
                    "housekept"
                );
            }
            let next = if out.more_due(now_ms) {
                // The batch limit stopped us: drain on.
                Instant::now()
            } else {
                let wait = match out.next_due_ms {
                    Some(due) => Duration::from_millis((due - now_ms).max(0) as u64).min(poll),
                    // Nothing pending: look again at the idle pace.
                    None => shared.settings.idle_poll_interval,
                };
                Instant::now() + wait
            };
            QueueResult::Next(next)
        }
        Err(e @ StoreError::Fenced { .. }) => {
            shared
                .metrics
                .task_runs
                .with_label_values(&["fenced"])
                .inc();
            shared.metrics.fenced_writes.inc();
            QueueResult::Fenced(e)
        }
        Err(e) => {
            shared.metrics.task_runs.with_label_values(&["error"]).inc();
            shared.metrics.store_errors.inc();
            stats.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = shared.node_id, queue, error = %e, "housekeeping failed; backing off");
            QueueResult::Next(Instant::now() + STORE_RETRY)
        }
    }
}

/// One shard's work loop: keeps every queue of the shard on a schedule by
/// due time, until cancelled or fenced.
async fn run_shard(
    shared: Arc<WorkerShared>,
    shard: u32,
    epoch: u64,
    cancel: CancellationToken,
    passes: Arc<AtomicU64>,
) {
    let _guard = RunningGuard {
        shared: shared.clone(),
        shard,
        epoch,
    };
    let fence = Fence {
        shard,
        epoch,
        node: shared.node_id,
    };
    let mut task_state = shared.watch_task_state();
    let mut schedule: HashMap<String, Instant> = HashMap::new();
    // The queue list the schedule was last pruned against (lists are
    // replaced, never changed in place, so a new Arc means a new list).
    let mut pruned_for: Option<Arc<Vec<String>>> = None;
    let mut seen = *task_state.borrow();
    while !cancel.is_cancelled() {
        let Some(queues) = shared.queues_of(shard) else {
            // Newly owned: ask for the queue list now rather than at the next
            // heartbeat, and do not count an empty pass as work done.
            shared.report_now.notify_one();
            tokio::select! {
                _ = tokio::time::sleep(QUEUE_LIST_WAIT) => {}
                _ = cancel.cancelled() => {}
            }
            continue;
        };
        let run = *task_state.borrow_and_update();
        if run != seen {
            // Triggered, resumed or paused: look at every queue again now
            // (a queue scheduled at the idle pace may have due work now).
            seen = run;
            schedule.clear();
        }
        if pruned_for.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &queues)) {
            // A new list: forget queues that left it, here and in the statistics.
            let current: HashSet<&str> = queues.iter().map(String::as_str).collect();
            schedule.retain(|q, _| current.contains(q.as_str()));
            lock(&shared.queue_stats).retain_queues(shard, &queues);
            pruned_for = Some(queues.clone());
        }
        let now = Instant::now();
        let due: Vec<String> = queues
            .iter()
            .filter(|q| schedule.get(*q).is_none_or(|t| *t <= now))
            .cloned()
            .collect();
        let calls = due.into_iter().map(|q| {
            let shared = shared.clone();
            async move {
                let result = housekeep_queue(&shared, &q, fence, run).await;
                (q, result)
            }
        });
        let mut results =
            futures::stream::iter(calls).buffer_unordered(shared.settings.concurrency);
        while let Some((queue, result)) = results.next().await {
            match result {
                QueueResult::Next(at) => {
                    schedule.insert(queue, at);
                }
                QueueResult::Fenced(e) => {
                    shared.stats.fenced_writes.fetch_add(1, Ordering::Relaxed);
                    lock(&shared.fenced).insert(shard, epoch);
                    tracing::info!(node = shared.node_id, shard, epoch, error = %e, "fenced: a newer owner wrote; dropping shard");
                    shared.changed.notify_one();
                    return;
                }
            }
        }
        drop(results);
        // One sweep done (the first one visits every queue of the shard).
        if passes.fetch_add(1, Ordering::Relaxed) == 0 {
            // First pass at this epoch: tell the leader now, not at the
            // next heartbeat (`ctl shards` shows the shard as worked).
            shared.report_now.notify_one();
        }
        let wake = schedule
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + shared.settings.poll_interval);
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = task_state.changed() => {}
            _ = cancel.cancelled() => {}
        }
    }
}
