//! The leader's loops: queue discovery and planning rounds, and when each
//! runs (see [`Coordinator::run`]).

use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use super::view::{DISCOVERY_AFTER_MOVES, DISCOVERY_RETRY, IDLE_PLAN, POLLING_DISCOVERY};
use super::{CoordError, Coordinator, Round};
use crate::locks::lock;
use crate::shutdown::ShutdownListener;
use crate::worker::discovery::DiscoveryMemory;

impl Coordinator {
    /// Scans the store for queues and groups them by shard; false when it
    /// could not (not initialized, store unavailable).
    async fn discover(&self, memory: &mut DiscoveryMemory) -> bool {
        let shard_count = self.inner.state_machine.latest().cluster.shard_count;
        if shard_count == 0 {
            return false;
        }
        let term = self.metrics().current_term;
        match self.inner.store.discover_queues().await {
            Ok(queues) => {
                // Hundreds of thousands of queues take a while: off the
                // async workers (Raft runs there), and outside the mutex
                // that heartbeats and GetQueues take.
                let mut owned = std::mem::take(memory);
                let work = tokio::task::spawn_blocking(move || {
                    let (by_shard, version) = owned.absorb(queues, shard_count);
                    (owned, by_shard, version)
                });
                let Ok((owned, by_shard, version)) = work.await else {
                    tracing::warn!("queue discovery's bookkeeping failed");
                    return false;
                };
                *memory = owned;
                let old = {
                    let mut index = lock(&self.inner.queues);
                    index.term = term;
                    // Set on every success, not only on a change: an empty
                    // store's first discovery must turn version 0 ("none
                    // yet") into the version of no queues.
                    if index.version != version {
                        tracing::debug!(version, "queue discovery changed");
                    }
                    index.version = version;
                    std::mem::replace(&mut index.by_shard, by_shard)
                };
                // Freed after the mutex is released.
                drop(old);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue discovery failed");
                false
            }
        }
    }

    /// The leader's loops: planning and discovery. Idle on followers.
    ///
    /// A round runs when an event wakes the planner (`wake`: a heartbeat
    /// that changed what a node runs, a hand-back, a drain), at most
    /// `plan_interval` after the applied state or this node's role changed,
    /// `plan_interval` after a round that moved shards or could not run,
    /// and otherwise when a node's liveness runs out ([`Round::quiet_until`])
    /// or after `IDLE_PLAN`. An idle leader thus plans about once a second
    /// instead of every `plan_interval`, and a silent node's shards move the
    /// moment its `lease + margin` is over rather than up to a round later.
    pub async fn run(self, mut stop: ShutdownListener) {
        let settings = self.inner.settings.clone();
        let mut next_discovery = Instant::now();
        let mut memory = DiscoveryMemory::default();
        let mut applied = self.inner.state_machine.subscribe();
        let mut server = self.inner.raft.server_metrics();
        let mut last_round = Instant::now();
        let mut due = last_round + settings.plan_interval;
        loop {
            let leads = server.borrow_watched().state == ServerState::Leader;
            let wake_at = if leads { due.min(next_discovery) } else { due };
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = self.inner.wake.notified() => {}
                changed = applied.changed() => {
                    if changed.is_err() { return }
                    due = due.min(last_round + settings.plan_interval);
                    continue;
                }
                changed = server.changed() => {
                    if changed.is_err() { return }
                    due = due.min(last_round + settings.plan_interval);
                    continue;
                }
                _ = stop.recv() => return,
            }
            let leads = server.borrow_watched().state == ServerState::Leader;
            if !leads {
                // A follower serves no lists, and a later term starts from
                // its own first discovery (`QueueIndex::term`): hold no
                // queue names meanwhile.
                memory = DiscoveryMemory::default();
                *lock(&self.inner.queues) = Default::default();
            }
            let needed = leads && self.discovery_needed(Instant::now());
            if needed {
                // A shard owner polls or may have missed events since the
                // last discovery.
                next_discovery = next_discovery.min(Instant::now() + POLLING_DISCOVERY);
            }
            if leads && Instant::now() >= next_discovery {
                next_discovery = self.discovery(&mut memory, needed).await;
            }
            let outcome = self.plan_round().await;
            last_round = Instant::now();
            due = self.next_round(outcome, leads, last_round, &mut next_discovery);
        }
    }

    /// Runs one discovery; returns when the next one is due. A failed
    /// discovery is retried soon, not a whole interval later. Without queue
    /// events (this node's check says Redis publishes none, or a shard
    /// owner's heartbeat says it polls or may have missed events), discovery
    /// is the only way owners learn of new queues: run it at least every
    /// `POLLING_DISCOVERY`; `needed` says so (`discovery_needed`, just asked).
    async fn discovery(&self, memory: &mut DiscoveryMemory, needed: bool) -> Instant {
        let interval = self.inner.settings.discovery_interval;
        let interval = if needed {
            interval.min(POLLING_DISCOVERY)
        } else {
            interval
        };
        let wait = if self.discover(memory).await {
            interval
        } else {
            interval.min(DISCOVERY_RETRY)
        };
        Instant::now() + wait
    }

    /// When the next round is due after one that ended at `last_round`
    /// with `outcome`; a round that moved shards brings discovery forward.
    fn next_round(
        &self,
        outcome: Result<Round, CoordError>,
        leads: bool,
        last_round: Instant,
        next_discovery: &mut Instant,
    ) -> Instant {
        let soon = last_round + self.inner.settings.plan_interval;
        match outcome {
            Ok(round) => {
                if round.moved > 0 {
                    // New owners start their shards now; a queue created
                    // while nobody ran its shard announced itself to
                    // nobody: find it soon rather than a whole interval later.
                    *next_discovery = (*next_discovery).min(last_round + DISCOVERY_AFTER_MOVES);
                }
                round.quiet_until.map_or(soon, |t| {
                    t.clamp(
                        last_round + Duration::from_millis(1),
                        last_round + IDLE_PLAN,
                    )
                })
            }
            // A follower: becoming leader is a role change, which wakes us.
            Err(CoordError::NotLeader { .. }) if !leads => last_round + IDLE_PLAN,
            // A leader without a fresh quorum acknowledgement, not
            // initialized yet, or a failed write: try again soon.
            Err(CoordError::NotLeader { .. }) | Err(CoordError::NotInitialized) => soon,
            Err(e) => {
                tracing::debug!(node = self.inner.node_id, error = %e, "planning round failed");
                soon
            }
        }
    }
}
