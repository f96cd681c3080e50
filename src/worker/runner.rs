//! Runs this node's shards: one task per owned shard while the lease holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{lock, RunningShard, WorkerShared};
use crate::raft::store::AppliedState;
use crate::shutdown::ShutdownListener;
use crate::store::{Fence, StoreError};

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
        self.shared.report_now.notify_one();
    }
}

/// One shard's work loop: passes over its queues until cancelled or fenced.
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
        let mut completed = true;
        for queue in queues.iter() {
            if cancel.is_cancelled() || !shared.lease_valid() {
                completed = false;
                break;
            }
            // A pause here (after the lease check) is the dangerous one; the
            // store's fence check is what makes it harmless.
            shared.freeze.gate().await;
            match shared.store.touch(queue, fence).await {
                Ok(()) => {}
                Err(e @ StoreError::Fenced { .. }) => {
                    shared.stats.fenced_writes.fetch_add(1, Ordering::Relaxed);
                    lock(&shared.fenced).insert(shard, epoch);
                    tracing::info!(node = shared.node_id, shard, epoch, error = %e, "fenced: a newer owner wrote; dropping shard");
                    shared.changed.notify_one();
                    return;
                }
                Err(e) => {
                    shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = shared.node_id, shard, queue = %queue, error = %e, "store operation failed");
                    completed = false;
                    break;
                }
            }
        }
        let pause = if completed {
            if passes.fetch_add(1, Ordering::Relaxed) == 0 {
                // First pass at this epoch: tell the leader now, not at the
                // next heartbeat (`ctl shards` shows the shard as worked).
                shared.report_now.notify_one();
            }
            shared.stats.passes.fetch_add(1, Ordering::Relaxed);
            shared.settings.pass_interval
        } else {
            STORE_RETRY.min(shared.settings.pass_interval)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => {}
        }
    }
}
