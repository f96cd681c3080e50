//! Role changes and cluster creation: a node that becomes leader records
//! the configured shard count once, with a generation taken from the store.
//!
//! The cluster's generation comes from the store first (one scan of the
//! fences, then one counter raise above both), so a cluster created on a
//! Redis where another one ran outranks its fences, even if the counter was
//! lost. While the store cannot answer, nothing is proposed: a cluster
//! without its generation would be fenced by any earlier cluster's queues.
//!
//! Invariant: at most one creation attempt runs per node, and it is awaited
//! when the node shuts down.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::task::JoinHandle;

use crate::cluster::shards::{token_generation, MAX_GENERATION};
use crate::cluster::Command;
use crate::raft::store::AppliedView;
use crate::raft::{NodeId, Raft, RaftMetrics};
use crate::shutdown::ShutdownListener;
use crate::store::SharedStore;

/// Logs role changes; as a new leader, starts recording the shard count.
pub(super) struct RoleWatch {
    pub(super) raft: Raft,
    pub(super) state_machine: AppliedView,
    pub(super) store: SharedStore,
    pub(super) shard_count: u32,
}

impl RoleWatch {
    pub(super) async fn run(self, mut stop: ShutdownListener) {
        // The server metrics change only with the role, leader, vote or
        // membership; the full metrics are republished on every Raft
        // heartbeat (40 times a second on a 3-node leader), and waking on
        // each would cost an idle node more than all its own work.
        let mut rx = self.raft.server_metrics();
        let mut last: Option<(ServerState, Option<NodeId>)> = None;
        // The creation attempt of the latest term this node led, if any.
        let mut creating: Option<JoinHandle<()>> = None;
        loop {
            let (state, leader, term) = {
                let m = rx.borrow_watched();
                (m.state, m.current_leader, m.vote.leader_id.term)
            };
            if last != Some((state, leader)) {
                let was_leader = matches!(last, Some((ServerState::Leader, _)));
                tracing::info!(
                    role = crate::admin::status::role_name(state),
                    leader = ?leader,
                    term,
                    "role changed"
                );
                if state == ServerState::Leader && !was_leader {
                    // The new attempt starts once an earlier term's attempt
                    // has ended (it does by itself once it sees it no longer
                    // leads in that term), so two never run at once. It
                    // waits in its own task: this watcher keeps following
                    // the role meanwhile, and sees a quick step down and
                    // re-election too.
                    let previous = creating.take();
                    let attempt = self.record_shard_count(term, stop.clone());
                    creating = Some(tokio::spawn(async move {
                        if let Some(old) = previous {
                            let _ = old.await;
                        }
                        attempt.await;
                    }));
                }
                last = Some((state, leader));
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = stop.recv() => break,
            }
        }
        if let Some(attempt) = creating {
            let _ = attempt.await;
        }
    }

    /// Proposes `InitCluster` unless the applied state already has the
    /// count. A just-elected leader refuses writes until its leadership is
    /// established, so this retries for as long as this node leads in the
    /// same term (or until shutdown).
    fn record_shard_count(
        &self,
        term: u64,
        mut stop: ShutdownListener,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let raft = self.raft.clone();
        let state_machine = self.state_machine.clone();
        let store = self.store.clone();
        let shard_count = self.shard_count;
        async move {
            let still_leading =
                |m: &RaftMetrics| m.state == ServerState::Leader && m.current_term == term;
            let mut generation = None;
            // The fence scan is kept across retries: it reads every key.
            let mut highest = None;
            loop {
                if !needs_creating(&state_machine, shard_count) {
                    return;
                }
                if generation.is_none() {
                    match next_generation(&store, &mut highest).await {
                        Ok(g) => generation = Some(g),
                        Err(Stop) => return,
                        Err(Retry) => {}
                    }
                }
                if let Some(generation) = generation {
                    let init = Command::InitCluster {
                        shard_count,
                        generation,
                    };
                    match raft.client_write(init).await {
                        Ok(_) => {
                            tracing::info!(shard_count, generation, "cluster created");
                            return;
                        }
                        Err(e) => tracing::debug!(error = %e, "shard count not recorded yet"),
                    }
                }
                if !still_leading(&raft.metrics().borrow_watched()) {
                    return;
                }
                // Store trouble is not fixed in 50 ms: ask it less often.
                let pause = if generation.is_some() { 50 } else { 500 };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    _ = stop.recv() => return,
                }
            }
        }
    }
}

/// Whether the cluster still lacks its shard count (a different count
/// recorded already is logged and kept).
fn needs_creating(state_machine: &AppliedView, shard_count: u32) -> bool {
    let recorded = state_machine.latest().cluster.shard_count;
    if recorded != 0 && recorded != shard_count {
        tracing::warn!(
            configured = shard_count,
            cluster = recorded,
            "cluster.shards in the config differs from the cluster's; the cluster's count stays"
        );
    }
    recorded == 0
}

/// Why no generation was taken.
enum NoGeneration {
    /// The store did not answer: try again.
    Retry,
    /// The counter is past the largest generation: creating is impossible.
    Stop,
}
use NoGeneration::{Retry, Stop};

/// A generation above the store's counter and above every fence on it
/// (`highest`: the highest fence, once scanned).
async fn next_generation(
    store: &SharedStore,
    highest: &mut Option<u64>,
) -> Result<u64, NoGeneration> {
    let taken = async {
        // The counter alone may have been lost while the fences stayed.
        let fence = match *highest {
            Some(fence) => fence,
            None => *highest.insert(store.highest_fence().await?),
        };
        store.next_generation(token_generation(fence)).await
    };
    match taken.await {
        Ok(g) if g <= MAX_GENERATION => Ok(g),
        Ok(g) => {
            tracing::error!(
                generation = g,
                "the generation needed above the store's deckhand_generation counter and its highest fence is past the largest one; cannot create the cluster"
            );
            Err(Stop)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the cluster yet: the store does not answer for its generation");
            Err(Retry)
        }
    }
}
