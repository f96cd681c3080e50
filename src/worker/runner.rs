//! Runs this node's shards: one task per owned shard while the lease holds.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::events::{Mode, Scheduling, ShardInbox};
use super::schedule::{next_call, CallResult, QueueSchedule};
use super::shard_queues::ShardQueues;
use super::{RunningShard, TaskRunState, WorkerShared};
use crate::cluster::shards::{fence_token, token_epoch};
use crate::cluster::TaskKind;
use crate::locks::lock;
use crate::raft::store::AppliedState;
use crate::shutdown::ShutdownListener;
use crate::store::{now_ms, Fence, HousekeepOutcome, HousekeepRequest, StoreError};

/// How long a task waits before retrying after a store error.
const STORE_RETRY: Duration = Duration::from_millis(200);
/// How long a task waits for its shard's queue list before asking again
/// (a new list wakes it at once).
const QUEUE_LIST_WAIT: Duration = Duration::from_secs(1);
/// How long an ending shard task waits for its calls in flight: above a
/// call's worst case on a reachable Redis (a connect, 0.5 s, then EVALSHA
/// and EVAL after NOSCRIPT, 3 s each).
const ENDING_DRAIN: Duration = Duration::from_secs(10);

struct Task {
    epoch: u64,
    /// Its id in the running set (`RunningShard::task`).
    id: u64,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// A cancelled task that may still be finishing a store call.
struct Stopping {
    id: u64,
    handle: JoinHandle<()>,
}

/// Keeps the set of running shard tasks equal to "owned here, at the
/// current epoch, lease valid, not fenced at that epoch".
///
/// Two more rules keep one task per shard: a shard's new task starts only
/// once its previous task (stopped for a new epoch) has ended, and no task
/// starts from an applied state older than the commit index a leader last
/// acknowledged this node at (`start_barrier`): a node back from a
/// partition first applies the moves that leader had committed while it was
/// away. (A leader that has not yet committed an entry of its own term may
/// acknowledge with a lower commit index; fencing covers that window.)
pub async fn run(
    shared: Arc<WorkerShared>,
    mut applied: watch::Receiver<Arc<AppliedState>>,
    mut stop: ShutdownListener,
) {
    let mut tasks: BTreeMap<u32, Task> = BTreeMap::new();
    // Cancelled tasks that may still be finishing a call, by shard.
    let mut stopping: BTreeMap<u32, Stopping> = BTreeMap::new();
    // Whether the lease held at the last pass, to log a lapse once.
    let mut lease_held = false;
    loop {
        let state = applied.borrow_and_update().clone();
        shared.set_shard_count(state.cluster.shard_count, state.cluster.generation);
        let settings = &state.cluster.tasks;
        shared.set_task_state(TaskRunState {
            unlock: !settings.get(TaskKind::Unlock).paused,
            timeout: !settings.get(TaskKind::Timeout).paused,
            trigger_seq: settings.trigger_seq(),
        });
        shared.forget_old_fences(|shard| state.cluster.shards.get(shard as usize).map(|s| s.epoch));
        // Read once: the validity this pass acts on and the wake-up at its
        // end must agree, or a lease ending in between (during `reconcile`)
        // would leave the tasks running and the loop asleep, with the lapse
        // unseen. `now` is taken first: a renewal after the read finds the
        // lease as this pass judged it at `now` or later, so if this pass
        // saw it run out, so does the renewal, which then wakes this loop
        // (`renew_lease` notifies when it renews a lease that had run out).
        let now = Instant::now();
        let lease_until = shared.lease_until();
        let lease_ok = lease_until.is_some_and(|until| now < until);
        // A lapse is the one way this node stops its shards without being
        // told, so it is said (scripts/failover.sh counts these lines). A
        // revoke (`lease_until` is `None`) is logged by whoever revoked.
        if lease_held
            && !lease_ok
            && lease_until.is_some()
            && !stop.is_triggered()
            && !shared.is_retired()
        {
            tracing::warn!(
                node = shared.node_id,
                shards = tasks.len(),
                "lease ran out: every shard stops until a leader acknowledges a heartbeat"
            );
        }
        lease_held = lease_ok;
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
        let may_start = state.applied_index() >= shared.start_barrier();
        reconcile(&shared, &mut tasks, &mut stopping, &desired, may_start);
        shared.set_reconciled_index(state.applied_index());

        // Wake when the state, lease or queues change, or the lease this
        // pass saw runs out (a renewal since then moves the end later: the
        // next pass reads it).
        let lease_end = lease_until
            .filter(|_| lease_ok)
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { break },
            _ = shared.changed.notified() => {}
            _ = sleep_until_some(lease_end) => {}
            _ = stop.recv() => break,
        }
    }
    stop_all(&mut tasks).await;
    for (_, old) in std::mem::take(&mut stopping) {
        let _ = old.handle.await;
    }
}

/// Without a lease, how often the reconcile loop looks again anyway. The
/// argument in `run` says a renewal always wakes it; this bounds what a
/// wake-up missed by a bug would cost (an hour before `9bed2ea`, for ever
/// after it until `28a1278`).
const NO_LEASE_RECHECK: Duration = Duration::from_secs(1);

/// Sleeps until `end`, or for [`NO_LEASE_RECHECK`] when there is none.
async fn sleep_until_some(end: Option<tokio::time::Instant>) {
    match end {
        Some(end) => tokio::time::sleep_until(end).await,
        None => tokio::time::sleep(NO_LEASE_RECHECK).await,
    }
}

fn reconcile(
    shared: &Arc<WorkerShared>,
    tasks: &mut BTreeMap<u32, Task>,
    stopping: &mut BTreeMap<u32, Stopping>,
    desired: &BTreeMap<u32, u64>,
    may_start: bool,
) {
    // A task has stopped working once its guard left the running set (it
    // does so, then wakes this loop, before tokio marks the task finished).
    let running = shared.running();
    stopping.retain(|shard, old| {
        !old.handle.is_finished() && running.get(shard).is_some_and(|r| r.task == old.id)
    });
    // Stop what we should not run (moved away, new epoch, lease gone, fenced).
    let to_stop: Vec<u32> = tasks
        .iter()
        .filter(|(shard, t)| desired.get(shard) != Some(&t.epoch) || t.handle.is_finished())
        .map(|(shard, _)| *shard)
        .collect();
    for shard in to_stop {
        if let Some(task) = tasks.remove(&shard) {
            stop_task(shared, shard, task, stopping);
        }
    }
    if !may_start {
        return;
    }
    // Start what we should run and do not.
    for (&shard, &epoch) in desired {
        if tasks.contains_key(&shard) || stopping.contains_key(&shard) {
            continue;
        }
        // `desired` was read before this pass: a task that recorded a
        // fence at this epoch and ended since must not be restarted.
        if shared.fenced_at(shard) == Some(epoch) {
            continue;
        }
        tasks.insert(shard, start_task(shared, shard, epoch));
    }
}

/// Cancels `task`; one still working is kept in `stopping` until it ends
/// (its end wakes the reconcile loop, see `RunningGuard`).
fn stop_task(
    shared: &WorkerShared,
    shard: u32,
    task: Task,
    stopping: &mut BTreeMap<u32, Stopping>,
) {
    task.cancel.cancel();
    if task.handle.is_finished() {
        return;
    }
    tracing::info!(
        node = shared.node_id,
        shard,
        epoch = task.epoch,
        "stopping shard"
    );
    let previous = stopping.insert(
        shard,
        Stopping {
            id: task.id,
            handle: task.handle,
        },
    );
    debug_assert!(previous.is_none(), "shard {shard} had two tasks at once");
}

/// Puts `shard` in the running set at `epoch` and spawns its task.
fn start_task(shared: &Arc<WorkerShared>, shard: u32, epoch: u64) -> Task {
    tracing::info!(node = shared.node_id, shard, epoch, "running shard");
    let cancel = CancellationToken::new();
    let passes = Arc::new(AtomicU64::new(0));
    let task = shared.next_task_id();
    let inbox = shared.start_running(
        shard,
        RunningShard {
            epoch,
            task,
            passes: passes.clone(),
        },
    );
    let handle = tokio::spawn(run_shard(
        shared.clone(),
        shard,
        epoch,
        cancel.clone(),
        passes,
        inbox,
    ));
    Task {
        epoch,
        id: task,
        cancel,
        handle,
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
    task: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.shared.stop_running(self.shard, self.task, self.epoch) {
            // No newer task of this shard at this epoch keeps its figures.
            lock(&self.shared.queue_stats).drop_shard(self.shard, self.epoch);
        }
        self.shared.report_now.notify_one();
        // The runner may be waiting for this task's end to start the
        // shard's next one.
        self.shared.changed.notify_one();
    }
}

/// What happened to one queue in one call.
enum QueueResult {
    /// Call it again at this instant.
    Next(Instant),
    /// Deckard emptied it: nothing to do until it comes back.
    Gone,
    /// The store fenced us: drop the shard.
    Fenced(StoreError),
    /// Not called: the task is ending (cancelled, or fenced on another
    /// queue) and this call had not reached the store yet.
    Skipped,
}

/// How long a queue may go without a call in the current mode, drawn from
/// 80-100 % of the setting: queues found at the same moment (a new list, a
/// resubscription) spread out instead of coming due together ever after.
fn look_again(shared: &WorkerShared, mode: Mode) -> Duration {
    let interval = match mode {
        Mode::Events => shared.settings.sweep_interval,
        Mode::Polling => shared.settings.poll_interval,
    };
    interval.mul_f64(rand::random_range(0.8..=1.0))
}

/// One housekeeping call on one queue: lease check, (test) freeze point,
/// fenced call, bookkeeping. Returns when to call the queue again.
async fn housekeep_queue(
    shared: &WorkerShared,
    queue: &str,
    fence: Fence,
    run: TaskRunState,
    mode: Mode,
    ending: &CancellationToken,
) -> QueueResult {
    if !shared.lease_valid() {
        return QueueResult::Next(Instant::now() + STORE_RETRY);
    }
    // A task that is ending starts no new call (the ones past this point
    // are in flight and awaited).
    if ending.is_cancelled() {
        return QueueResult::Skipped;
    }
    // A pause here (after every local check) is the dangerous one; the
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
        Ok(out) => on_success(shared, queue, fence, out, now_ms, started, mode),
        Err(e @ StoreError::Fenced { .. }) => {
            shared.metrics.tasks.record_fenced();
            QueueResult::Fenced(e)
        }
        Err(e @ StoreError::InvalidQueue { .. }) => {
            // No call on this name can ever succeed: drop it like a gone queue
            // instead of retrying it for ever.
            shared.metrics.tasks.record_invalid_queue();
            tracing::warn!(node = shared.node_id, queue, error = %e, "not a queue; dropped");
            QueueResult::Gone
        }
        Err(e) => {
            shared.metrics.tasks.record_store_error();
            tracing::warn!(node = shared.node_id, queue, error = %e, "housekeeping failed; backing off");
            QueueResult::Next(Instant::now() + STORE_RETRY)
        }
    }
}

/// Books a successful call: metrics, the queue's figures for the leader,
/// counts; returns when to call the queue again (or that it is gone).
fn on_success(
    shared: &WorkerShared,
    queue: &str,
    fence: Fence,
    out: HousekeepOutcome,
    now_ms: i64,
    started: Instant,
    mode: Mode,
) -> QueueResult {
    let stats = &shared.stats;
    shared
        .metrics
        .record_housekeep(queue, &out, started.elapsed().as_secs_f64() * 1000.0);
    stats
        .last_success_ms
        .store(now_ms.max(0) as u64, Ordering::Relaxed);
    if out.gone {
        lock(&shared.queue_stats).forget_queue(fence.shard, queue);
        return QueueResult::Gone;
    }
    // Statistics are keyed by the shard's epoch (a log index), as
    // the leader's shard table is; the fence carries the token.
    let epoch = token_epoch(fence.epoch);
    lock(&shared.queue_stats).record(fence.shard, epoch, queue, out.sizes);
    if out.moved() > 0 {
        tracing::debug!(
            queue,
            acks = out.unlocked_ack,
            nacks = out.unlocked_nack,
            timeouts = out.timed_out,
            "housekept"
        );
    }
    let result = CallResult {
        now_ms,
        next_due_ms: out.next_due_ms,
        more_due: out.more_due(now_ms),
    };
    // Sweeps are rounded to the node's grid only with lock events: polling
    // keeps each queue's own interval, which its lateness depends on.
    let grid = (mode == Mode::Events).then_some(&shared.sweep_grid);
    QueueResult::Next(next_call(
        started,
        result,
        look_again(shared, mode),
        shared.settings.call_spacing,
        grid,
    ))
}

/// Calls per concurrency slot in one pass of a shard task (between two
/// looks at its inbox).
const PASS_CALLS_PER_SLOT: usize = 32;

/// One shard's work loop: calls each queue of the shard when its timer,
/// a lock event or a sweep says so (see `schedule` and `events`), until
/// cancelled or fenced. Sleeps, without waking, while nothing is due.
async fn run_shard(
    shared: Arc<WorkerShared>,
    shard: u32,
    epoch: u64,
    cancel: CancellationToken,
    passes: Arc<AtomicU64>,
    inbox: Arc<ShardInbox>,
) {
    let _guard = RunningGuard {
        shared: shared.clone(),
        shard,
        epoch,
        task: inbox.task,
    };
    // Stores compare tokens: this cluster's generation above the epoch.
    let fence = Fence {
        shard,
        epoch: fence_token(shared.generation(), epoch),
        node: shared.node_id,
    };
    let mut watch = ShardWatch::new(&shared);
    let mut queues = ShardQueues {
        shard,
        schedule: QueueSchedule::new(shared.settings.call_spacing),
        list: None,
        adopted: HashSet::new(),
    };
    let pass_limit = shared.settings.concurrency * PASS_CALLS_PER_SLOT;
    while !cancel.is_cancelled() {
        let now = Instant::now();
        let (run, mode) = watch.refresh(&shared, &mut queues, &inbox, now);
        // A bounded pass, so that announced queues are not held up behind a
        // sweep of every queue of the shard.
        let due = queues.schedule.pop_due(now, pass_limit);
        let worked = !due.is_empty();
        let pass = Pass {
            shared: &shared,
            shard,
            epoch,
            fence,
            run,
            mode,
        };
        if pass.run(&mut queues, due, &cancel).await == PassEnd::Ending {
            // Moved away, stopped or fenced: what came back is recorded,
            // the rest of the pass was skipped.
            return;
        }
        if worked {
            // A store that answers at once (the embedded one, or Redis under
            // a long sweep) never makes this task wait: give the runtime's
            // other tasks (Raft, heartbeats) their turn after every pass.
            tokio::task::yield_now().await;
        }
        count_pass(&shared, &passes, &queues, worked);
        watch.wait(&queues, &inbox, &cancel).await;
    }
}

/// The first pass after the list arrived visits its queues (none, for a
/// shard without queues); later ones count only rounds with calls. The
/// first pass at an epoch tells the leader now, not at the next heartbeat
/// (`ctl shards` shows the shard as worked).
fn count_pass(shared: &WorkerShared, passes: &AtomicU64, queues: &ShardQueues, worked: bool) {
    // "First pass": the list arrived and its initial backlog is done.
    let first = passes.load(Ordering::Relaxed) == 0
        && queues.list.is_some()
        && queues
            .schedule
            .next_wake()
            .is_none_or(|w| w > Instant::now());
    if worked || first {
        passes.fetch_add(1, Ordering::Relaxed);
    }
    if first {
        shared.report_now.notify_one();
    }
}

/// What a shard task watches between passes: the task settings (pause,
/// trigger), the scheduling mode, and the queue lists.
struct ShardWatch {
    task_state: watch::Receiver<TaskRunState>,
    scheduling: watch::Receiver<Scheduling>,
    lists: watch::Receiver<u64>,
    seen_run: TaskRunState,
    seen_generation: u64,
    /// When the queue list was last asked for, while the shard has none.
    asked_for_list: Option<Instant>,
}

impl ShardWatch {
    fn new(shared: &WorkerShared) -> Self {
        let task_state = shared.watch_task_state();
        let scheduling = shared.watch_scheduling();
        let seen_run = *task_state.borrow();
        let seen_generation = scheduling.borrow().generation;
        Self {
            task_state,
            scheduling,
            lists: shared.watch_lists(),
            seen_run,
            seen_generation,
            asked_for_list: None,
        }
    }

    /// Brings `queues` up to date before a pass: the latest list, every
    /// queue due at once after a trigger, resume or (re)subscription, and
    /// the queues lock events announced. Returns the task settings and the
    /// scheduling mode the pass runs with.
    fn refresh(
        &mut self,
        shared: &WorkerShared,
        queues: &mut ShardQueues,
        inbox: &ShardInbox,
        now: Instant,
    ) -> (TaskRunState, Mode) {
        self.lists.borrow_and_update();
        match shared.queues_of(queues.shard) {
            Some(list) => {
                self.asked_for_list = None;
                queues.apply_list(shared, list, now);
            }
            None => {
                // Newly owned (or the leader has no discovery yet): ask for
                // the list now, and again every QUEUE_LIST_WAIT; announced
                // queues are worked meanwhile.
                if self
                    .asked_for_list
                    .is_none_or(|at| now >= at + QUEUE_LIST_WAIT)
                {
                    shared.sync_now.notify_one();
                    self.asked_for_list = Some(now);
                }
            }
        }
        let run = *self.task_state.borrow_and_update();
        let sched = self.scheduling.borrow_and_update().clone();
        if run != self.seen_run || sched.generation != self.seen_generation {
            // Triggered, resumed or paused, or (re)subscribed: call every
            // queue now (events may have been missed). Fallen back to
            // polling: every queue within poll_interval, as polling does.
            let by = if run == self.seen_run && sched.mode == Mode::Polling {
                now + shared.settings.poll_interval
            } else {
                now
            };
            self.seen_run = run;
            self.seen_generation = sched.generation;
            queues.schedule.call_all_by(by);
        }
        let (announced, overflow) = inbox.take();
        queues.announce(announced, now, shared.settings.poll_interval);
        if overflow {
            queues.schedule.call_all_by(now);
        }
        (run, sched.mode)
    }

    /// Sleeps until the next queue is due (or the list is to be asked for
    /// again), or anything watched changes.
    async fn wait(&mut self, queues: &ShardQueues, inbox: &ShardInbox, cancel: &CancellationToken) {
        let wake = match self.asked_for_list {
            Some(at) => Some(
                queues
                    .schedule
                    .next_wake()
                    .map_or(at + QUEUE_LIST_WAIT, |w| w.min(at + QUEUE_LIST_WAIT)),
            ),
            None => queues.schedule.next_wake(),
        };
        tokio::select! {
            _ = sleep_until(wake) => {}
            _ = inbox.wake.notified() => {}
            _ = self.task_state.changed() => {}
            _ = self.scheduling.changed() => {}
            _ = self.lists.changed() => {}
            _ = cancel.cancelled() => {}
        }
    }
}

/// How a pass ended.
#[derive(Debug, PartialEq, Eq)]
enum PassEnd {
    Done,
    /// The task is ending: cancelled, or fenced on one of its queues.
    Ending,
}

/// One pass of a shard task over its due queues: what every call of the
/// pass shares.
struct Pass<'a> {
    shared: &'a Arc<WorkerShared>,
    shard: u32,
    epoch: u64,
    fence: Fence,
    run: TaskRunState,
    mode: Mode,
}

impl Pass<'_> {
    /// Calls the `due` queues, `tasks.concurrency` at a time, and records
    /// each result in `queues`. Cancelled with the task, or by a fenced
    /// result, no call of the pass starts after that, and the ones already
    /// in flight are awaited (up to [`ENDING_DRAIN`]), so a task that has
    /// ended (and is reported stopped) has no call left in flight.
    async fn run(
        &self,
        queues: &mut ShardQueues,
        due: Vec<Arc<str>>,
        cancel: &CancellationToken,
    ) -> PassEnd {
        let ending = cancel.child_token();
        let calls = due.into_iter().map(|q| {
            let ending = ending.clone();
            async move {
                let result =
                    housekeep_queue(self.shared, &q, self.fence, self.run, self.mode, &ending)
                        .await;
                (q, result)
            }
        });
        let mut results =
            futures::stream::iter(calls).buffer_unordered(self.shared.settings.concurrency);
        // Once the task is ending, its calls in flight get this long to come
        // back; past it they are dropped (the fence still covers one that
        // reaches the store later).
        let mut give_up: Option<tokio::time::Instant> = None;
        loop {
            let next = tokio::select! {
                next = results.next() => next,
                _ = ending.cancelled(), if give_up.is_none() => {
                    give_up = Some(tokio::time::Instant::now() + ENDING_DRAIN);
                    continue;
                }
                _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)),
                    if give_up.is_some() => {
                    if self.shared.freeze.is_frozen() {
                        // The test stand-in for SIGSTOP: a stopped process's
                        // timers do not run either.
                        give_up = Some(tokio::time::Instant::now() + ENDING_DRAIN);
                        continue;
                    }
                    tracing::warn!(
                        node = self.shared.node_id,
                        shard = self.shard,
                        epoch = self.epoch,
                        "calls still in flight {ENDING_DRAIN:?} after the shard task was stopped: dropped"
                    );
                    break;
                }
            };
            let Some((queue, result)) = next else { break };
            self.settle(queues, &queue, result, &ending);
        }
        if ending.is_cancelled() {
            PassEnd::Ending
        } else {
            PassEnd::Done
        }
    }

    /// Records one call's result: when to call the queue again, or that it
    /// is gone, or that the store fenced this task (which ends the pass).
    fn settle(
        &self,
        queues: &mut ShardQueues,
        queue: &Arc<str>,
        result: QueueResult,
        ending: &CancellationToken,
    ) {
        match result {
            QueueResult::Next(at) => queues.schedule.set(queue, at),
            QueueResult::Gone => {
                let later = Instant::now() + look_again(self.shared, self.mode);
                queues.gone(queue, later);
            }
            QueueResult::Skipped => queues.schedule.set(queue, Instant::now()),
            QueueResult::Fenced(e) => {
                let fence = match &e {
                    StoreError::Fenced { fence, .. } => *fence,
                    _ => 0,
                };
                let (shard, epoch) = (self.shard, self.epoch);
                self.shared.record_fenced(shard, epoch, fence);
                if !ending.is_cancelled() {
                    tracing::info!(node = self.shared.node_id, shard, epoch, error = %e, "fenced: a newer owner wrote; dropping shard");
                }
                ending.cancel();
                self.shared.changed.notify_one();
            }
        }
    }
}

/// Sleeps until `at`, or forever when nothing is scheduled.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
