//! A cluster re-created on a Redis where another one ran (all data dirs
//! lost, or new ones to change `cluster.shards`) finds fences whose log
//! indices are far above its own epochs. Its fencing tokens must still win:
//! the generation it takes from the store ranks above every earlier one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{http_get, samples, wait_until, TestCluster};
use deckhand::cluster::shard_of;
use deckhand::cluster::shards::{fence_token, token_generation};
use deckhand::proto::admin::admin_client::AdminClient;
use deckhand::proto::admin::ShardsRequest;
use deckhand::store::redis::RedisStore;
use deckhand::store::{now_ms, DeckardClient, Fence, HousekeepRequest, LockKind, QueueStore};
use deckhand::testing::RedisServer;

/// Puts message `id` of `queue` under a lock that has already expired.
async fn expired_lock(c: &dyn DeckardClient, queue: &str, id: &str) {
    let now = now_ms();
    c.add(queue, &[(id.to_string(), 1.0)]).await.expect("add");
    let pulled = c.pull(queue, 1, now, 300_000).await.expect("pull");
    assert_eq!(pulled, vec![id.to_string()]);
    assert!(c
        .release(queue, LockKind::Ack, id, now - 10_000, 1, None)
        .await
        .expect("ack with a lock"));
}

async fn unlocked(c: &dyn DeckardClient, queue: &str, id: &str, what: &str) {
    wait_until(what, || async {
        let snap = c.snapshot(queue).await.ok()?;
        snap.active.iter().any(|(i, _)| i == id).then_some(())
    })
    .await;
}

/// A new cluster on `store` (fresh data dirs), once it has unlocked
/// message `id` of queue `q`.
async fn cluster_that_unlocks(store: &Arc<RedisStore>, id: &str, what: &str) -> TestCluster {
    let cluster = TestCluster::start_configured(3, Some(store.clone()), |c| {
        c.tasks.sweep_interval = Duration::from_millis(500);
        c.worker.discovery_interval = Duration::from_millis(300);
    })
    .await;
    cluster.wait_for_leader().await;
    unlocked(store.as_ref(), "q", id, what).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_cluster_outranks_the_fences_of_earlier_ones() {
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = Arc::new(
        RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open"),
    );
    // A fence as a deckhand from before generations leaves it: a plain log
    // index far above the epochs of a new cluster.
    expired_lock(store.as_ref(), "q", "m1").await;
    let old = Fence {
        shard: 0,
        epoch: 40_000,
        node: 9,
    };
    let req = HousekeepRequest {
        now_ms: 0,
        batch: 1,
        unlock: false,
        timeout: false,
    };
    store.housekeep("q", req, old).await.expect("old fence");
    assert_eq!(store.fence_of("q").await.expect("fence"), 40_000);

    let first =
        cluster_that_unlocks(&store, "m1", "the first cluster worked past the old fence").await;
    let first_generation = first.leader_state().await.cluster.generation;
    assert!(first_generation >= 1);
    let fence = store.fence_of("q").await.expect("fence");
    assert_eq!(token_generation(fence), first_generation);
    drop(first.shutdown().await);

    // All data dirs lost: a second cluster on the same Redis, whose epochs
    // start low again.
    expired_lock(store.as_ref(), "q", "m2").await;
    let second = cluster_that_unlocks(
        &store,
        "m2",
        "the second cluster worked past the first's fences",
    )
    .await;
    let second_generation = second.leader_state().await.cluster.generation;
    assert!(second_generation > first_generation);
    let fence = store.fence_of("q").await.expect("fence");
    assert_eq!(token_generation(fence), second_generation);
    assert!(
        second
            .nodes
            .values()
            .all(|n| n.worker.counts().fenced_writes == 0),
        "nothing of the second cluster was fenced"
    );
    drop(second.shutdown().await);

    // The counter is lost (evicted, deleted, or dropped by a failover)
    // while the fences stay: a third cluster still outranks them.
    let mut raw = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("DEL")
        .arg("deckard_v1:deckhand_generation")
        .query_async(&mut raw)
        .await
        .expect("DEL");
    expired_lock(store.as_ref(), "q", "m3").await;
    let third = cluster_that_unlocks(
        &store,
        "m3",
        "the third cluster worked past the second's fences",
    )
    .await;
    let third_generation = third.leader_state().await.cluster.generation;
    assert!(third_generation > second_generation);
    third.shutdown().await;
}

/// Two clusters working one store (a misconfiguration): the one with the
/// older generation is fenced at its shards' current epochs. It must not
/// park them silently: `ctl shards` shows them "fenced" and the owner's
/// `deckhand_shards_fenced` counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_fenced_at_its_current_epoch_is_visible() {
    let cluster = TestCluster::start_configured(3, None, |c| {
        c.tasks.sweep_interval = Duration::from_millis(300);
        c.worker.discovery_interval = Duration::from_millis(200);
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let store = cluster.store.clone();
    expired_lock(&store, "q", "m1").await;
    unlocked(&store, "q", "m1", "the queue was worked").await;
    let state = cluster.leader_state().await;
    let shard = shard_of("q", state.cluster.shard_count);
    let owner = state.cluster.shards[shard as usize]
        .owner
        .expect("the queue's shard has an owner");

    // Another cluster, created later on the same store, writes the queue.
    let newer = Fence {
        shard,
        epoch: fence_token(state.cluster.generation + 1, 1),
        node: 99,
    };
    let req = HousekeepRequest {
        now_ms: now_ms(),
        batch: 1,
        unlock: false,
        timeout: false,
    };
    store
        .housekeep("q", req, newer)
        .await
        .expect("newer cluster's call");

    let node = &cluster.nodes[&owner];
    wait_until("the owner's metric counts the fenced shard", || async {
        let body = http_get(node.metrics_addr(), "/metrics").await;
        (samples(&body, "deckhand_shards_fenced")
            == vec![("deckhand_shards_fenced".to_string(), 1.0)])
        .then_some(())
    })
    .await;
    let leader_admin = cluster.nodes[&leader].admin_addr();
    wait_until("ctl shards shows the shard fenced", || async {
        let mut admin = AdminClient::connect(format!("http://{leader_admin}"))
            .await
            .ok()?;
        let shards = admin.shards(ShardsRequest {}).await.ok()?.into_inner();
        let info = shards.shards.iter().find(|s| s.shard == shard)?;
        (info.lease == "fenced" && info.owner == Some(owner)).then_some(())
    })
    .await;
    // Only that shard: the rest of the owner's shards run.
    assert!(!node.worker.running().contains_key(&shard));
    assert!(!node.worker.running().is_empty());
    cluster.shutdown().await;
}
