//! Deckard's client moves and the event tests' timing, shared by the tests
//! of lock events on a single Redis and on a Redis Cluster.

use std::time::Duration;

use deckhand::config::NodeConfig;
use deckhand::load::LoadOptions;
use deckhand::store::{now_ms, DeckardClient, LockKind, QueueStore};

use super::{wait_until, wait_until_within, TestCluster};

/// What the event path must beat: far below the sweep and discovery.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(8);
pub const SWEEP: Duration = Duration::from_secs(30);

/// A sweep, polling and discovery far longer than [`EVENT_DEADLINE`], so
/// only a lock event can bring a lock back in time.
pub fn slow_sweep(config: &mut NodeConfig) {
    config.tasks.sweep_interval = SWEEP;
    // Were the nodes to fall back to polling, that would be as slow.
    config.tasks.poll_interval = SWEEP;
    config.worker.discovery_interval = Duration::from_secs(60);
}

/// Deckard's pull and ack with a lock of `lock_ms` on `queue`'s message `id`.
pub async fn pull_and_lock(c: &dyn DeckardClient, queue: &str, id: &str, lock_ms: i64) {
    let now = now_ms();
    let pulled = c.pull(queue, 1, now, 300_000).await.expect("pull");
    assert_eq!(pulled, vec![id.to_string()], "{queue}");
    assert!(c
        .release(queue, LockKind::Ack, id, now, lock_ms, None)
        .await
        .expect("ack with lock"));
}

/// Waits until `id` is back in `queue`'s active pool.
pub async fn back_in_active(c: &dyn DeckardClient, queue: &str, id: &str, what: &str) {
    wait_until_within(EVENT_DEADLINE, what, || async {
        let snap = c.snapshot(queue).await.ok()?;
        snap.active.iter().any(|(i, _)| i == id).then_some(())
    })
    .await;
}

/// Waits until every queue of `queues` was worked (its fence is set) and
/// both followers are subscribed to lock events; returns each subscribed
/// follower's id and subscription generation.
pub async fn worked_and_subscribed(
    cluster: &TestCluster,
    store: &dyn QueueStore,
    queues: &[String],
) -> Vec<(u64, u64)> {
    wait_until("every queue worked, both followers subscribed", || async {
        for q in queues {
            if store.fence_of(q).await.ok()? == 0 {
                return None;
            }
        }
        let subscribed: Vec<(u64, u64)> = cluster
            .nodes
            .iter()
            .filter(|(_, n)| n.worker.scheduling().subscribed)
            .map(|(id, n)| (*id, n.worker.scheduling().generation))
            .collect();
        (subscribed.len() == 2).then_some(subscribed)
    })
    .await
}

/// Waits (15 s at most) until every follower of `generations` holds a
/// newer subscription than the one listed.
pub async fn resubscribed(cluster: &TestCluster, generations: &[(u64, u64)], what: &str) {
    wait_until_within(Duration::from_secs(15), what, || async {
        generations
            .iter()
            .all(|(id, g)| {
                let s = cluster.nodes[id].worker.scheduling();
                s.subscribed && s.generation > *g
            })
            .then_some(())
    })
    .await;
}

/// Deckard-like traffic over `queues` queues for 3 s (locks from 300 ms to
/// 1.5 s, deadlines, finished messages), every message checked at the end.
pub fn checked_traffic(queues: usize) -> LoadOptions {
    LoadOptions {
        queues,
        rate: 150,
        duration: Duration::from_secs(3),
        lock_ms: 300,
        lock_ms_max: 1500,
        timeout_ms: 800,
        new_queues_pct: 0,
        ack_lock_pct: 50,
        nack_lock_pct: 20,
        timeout_pct: 10,
        concurrency: 8,
        seed: 7,
        grace: Duration::from_secs(20),
        progress: false,
        expired_locks: 0,
        admin: None,
        warmup: Duration::ZERO,
        signal_file: None,
        check: true,
    }
}
