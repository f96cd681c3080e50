//! End to end on a real local Redis Cluster (three masters, a replica each):
//! a 3-node deckhand cluster housekeeps Deckard's keys spread over every
//! master.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::deckard::{
    back_in_active, checked_traffic, pull_and_lock, resubscribed, slow_sweep, worked_and_subscribed,
};
use common::{samples, try_http_get, wait_until, TestCluster};
use deckhand::load::{self, LoadOptions};
use deckhand::store::redis::RedisStore;
use deckhand::store::{now_ms, DeckardClient, LockKind};
use deckhand::testing::{RedisCluster, RedisServerError};

/// The Redis store on `redis`, in cluster mode.
async fn cluster_store(redis: &RedisCluster) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::open_with(&redis.url(), "deckard_v1", true)
            .await
            .expect("open"),
    )
}

/// One Redis Cluster test at a time: each runs six redis-servers, three
/// nodes and traffic, and two at once on this 2-core machine would starve
/// the cluster's own failure detector (2 s node timeout).
/// (A tokio mutex: it is held across awaits, works across the tests'
/// runtimes, and a failed test does not poison it.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_housekeep_queues_on_every_master_of_a_redis_cluster() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let redis = RedisCluster::start().expect("redis cluster");
    let store = cluster_store(&redis).await;
    let client: &dyn DeckardClient = store.as_ref();

    // 90 queues (their slots fall on all three masters); in each an ack
    // lock with a restore score, a nack lock and a deadline that passes.
    let queues: Vec<String> = (0..90).map(|i| format!("orders::q{i}")).collect();
    let now = now_ms();
    for q in &queues {
        let items: Vec<(String, f64)> = ["a", "b", "c"]
            .iter()
            .map(|id| (id.to_string(), 10.0))
            .collect();
        client.add(q, &items).await.expect("add");
        client.pull(q, 2, now, 60_000).await.expect("pull a b");
        client
            .pull(q, 1, now, 1_000)
            .await
            .expect("pull c: 1 s deadline");
        client
            .release(q, LockKind::Ack, "a", now, 1_000, Some(77.0))
            .await
            .expect("ack a");
        client
            .release(q, LockKind::Nack, "b", now, 800, None)
            .await
            .expect("nack b");
    }

    let cluster = TestCluster::start_on(3, Some(store.clone())).await;
    cluster.wait_for_leader().await;

    wait_until(
        "every lock and deadline on every master was handled",
        || async {
            for q in &queues {
                let snap = client.snapshot(q).await.ok()?;
                if snap.active.len() != 3 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    for q in &queues {
        let snap = client.snapshot(q).await.expect("snapshot");
        assert!(
            snap.processing.is_empty() && snap.lock_ack.is_empty() && snap.lock_nack.is_empty(),
            "{q}: every message in exactly one set: {snap:?}"
        );
        let score = |id: &str| snap.active.iter().find(|(i, _)| i == id).map(|(_, s)| *s);
        assert_eq!(score("a"), Some(77.0), "{q}: the ack restore score");
        assert_eq!(score("b"), Some(0.0), "{q}: a nack goes first");
        assert_eq!(score("c"), Some(0.0), "{q}: a timeout goes first");
    }

    // Every master ran housekeeping scripts, and the nodes follow every
    // master's lock events (the harness's nodes publish them).
    let per_node = store.evalsha_stats_per_node().await.expect("stats");
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(
        per_node.iter().all(|(_, calls, _)| *calls > 0),
        "{per_node:?}"
    );
    // Operators see the same spread in each node's own call counts.
    let mut calls_by_master: std::collections::BTreeMap<String, f64> = Default::default();
    for node in cluster.nodes.values() {
        let body = try_http_get(node.metrics_addr(), "/metrics")
            .await
            .expect("metrics");
        for (series, n) in samples(&body, "deckhand_redis_master_calls_total") {
            *calls_by_master.entry(series).or_default() += n;
        }
    }
    let known: Vec<_> = calls_by_master
        .iter()
        .filter(|(series, n)| !series.contains("unknown") && **n > 0.0)
        .collect();
    assert_eq!(
        known.len(),
        3,
        "calls under each master: {calls_by_master:?}"
    );
    wait_until("every node schedules by events", || async {
        cluster
            .nodes
            .values()
            .all(|n| n.worker.status().scheduling.starts_with("events"))
            .then_some(())
    })
    .await;
    cluster.shutdown().await;
}

/// Deckard-like traffic for the fault tests: locks from 100 ms to 1.5 s,
/// deadlines, finished messages, every message checked at the end.
fn traffic() -> LoadOptions {
    LoadOptions {
        duration: Duration::from_secs(12),
        lock_ms: 100,
        seed: 13,
        grace: Duration::from_secs(30),
        ..checked_traffic(60)
    }
}

/// A 3-node deckhand cluster on a Redis Cluster under traffic; once it has
/// returned locks, `fault` is applied to the Redis Cluster. The traffic's
/// check must then find every message in exactly one of Deckard's sets,
/// none back early, none missing (every lock came back); the worst unlock
/// lateness, through the fault, is printed (measured, not asserted).
async fn through(what: &str, fault: fn(&mut RedisCluster) -> Result<String, RedisServerError>) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut redis = RedisCluster::start().expect("redis cluster");
    let store = cluster_store(&redis).await;
    let cluster = TestCluster::start_on(3, Some(store.clone())).await;
    cluster.wait_for_balanced_ownership().await;
    let client: Arc<dyn DeckardClient> = store.clone();
    let run = tokio::spawn(load::run(client, traffic()));
    wait_until("locks come back before the fault", || async {
        let moved: u64 = cluster
            .nodes
            .values()
            .map(|n| n.worker.counts().unlocked_ack + n.worker.counts().unlocked_nack)
            .sum();
        (moved >= 20).then_some(())
    })
    .await;
    let started = Instant::now();
    let (redis_back, done) = tokio::task::spawn_blocking(move || {
        let done = fault(&mut redis);
        (redis, done)
    })
    .await
    .expect("fault thread");
    redis = redis_back;
    let done = done.expect("the fault was applied and the Redis Cluster is whole again");
    let fault_took = started.elapsed();
    let summary = run.await.expect("traffic");
    assert!(
        summary.ack_locks + summary.nack_locks > 0,
        "{}",
        load::summary_text(&summary)
    );
    assert!(
        summary.integrity_ok(),
        "{what}: {}",
        load::summary_text(&summary)
    );
    eprintln!(
        "{what} ({done}, {:.1} s until the Redis Cluster was whole): unlock lateness \
         p50 {} ms, p99 {} ms, max {} ms; {} store errors seen by the traffic",
        fault_took.as_secs_f64(),
        summary.unlock_lateness_ms.p50,
        summary.unlock_lateness_ms.p99,
        summary.unlock_lateness_ms.max,
        summary.errors,
    );
    cluster.shutdown().await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_survives_a_reshard_of_busy_slots() {
    through("reshard", |redis| {
        redis
            .reshard_half_of_a_master()
            .map(|slots| format!("{slots} slots moved with their keys"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_survives_a_master_crash_and_its_replicas_promotion() {
    through("master crash", |redis| {
        redis
            .crash_a_master()
            .map(|port| format!("master {port} killed, its replica promoted"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_survives_cluster_failover_on_a_replica() {
    through("CLUSTER FAILOVER", |redis| {
        redis
            .fail_over_to_a_replica()
            .map(|port| format!("replica {port} took over"))
    })
    .await;
}

/// Queues on every master, known to their owners, then a lock on each:
/// with the sweep, polling and discovery 30 s and more away, each lock can
/// only come back by its master's keyspace event. A queue nobody knows is
/// adopted from its event. Then `CLUSTER FAILOVER`: the nodes resubscribe
/// (to the new master too) and locks on every master come back by event
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_come_back_by_each_masters_events_also_after_a_failover() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut redis = RedisCluster::start().expect("redis cluster");
    let store = cluster_store(&redis).await;
    let client: &dyn DeckardClient = store.as_ref();
    let queues: Vec<String> = (0..12).map(|i| format!("quiet::q{i}")).collect();
    for q in &queues {
        client.add(q, &[("m".into(), 1.0)]).await.expect("add");
    }
    let cluster = TestCluster::start_configured(3, Some(store.clone()), slow_sweep).await;
    cluster.wait_for_leader().await;
    let generations = worked_and_subscribed(&cluster, store.as_ref(), &queues).await;
    locks_come_back_by_events(
        &cluster,
        client,
        &queues,
        "a lock came back by its master's event",
    )
    .await;
    client
        .add("fresh::q", &[("n".into(), 1.0)])
        .await
        .expect("add");
    pull_and_lock(client, "fresh::q", "n", 200).await;
    back_in_active(client, "fresh::q", "n", "a new queue's lock came back").await;

    let (redis_back, promoted) = tokio::task::spawn_blocking(move || {
        let promoted = redis.fail_over_to_a_replica();
        (redis, promoted)
    })
    .await
    .expect("failover thread");
    redis = redis_back;
    promoted.expect("CLUSTER FAILOVER");
    resubscribed(
        &cluster,
        &generations,
        "both followers resubscribed after the failover",
    )
    .await;
    locks_come_back_by_events(
        &cluster,
        client,
        &queues,
        "a lock came back by event after the failover",
    )
    .await;
    cluster.shutdown().await;
    drop(redis);
}

/// Locks every queue's message `m` for 300 ms and waits for each to come
/// back. A resubscription sweeps every queue, so it would bring the locks
/// back too: a round proves the event path only if no node's subscription
/// changed during it. Right after a failover the nodes' views of the
/// masters may still change once, so such a round is run again (three
/// rounds at most); each round's locks must come back within the event
/// deadline regardless.
async fn locks_come_back_by_events(
    cluster: &TestCluster,
    client: &dyn DeckardClient,
    queues: &[String],
    what: &str,
) {
    let generations = || -> Vec<u64> {
        cluster
            .nodes
            .values()
            .map(|n| n.worker.scheduling().generation)
            .collect()
    };
    for _ in 0..3 {
        let before = generations();
        for q in queues {
            pull_and_lock(client, q, "m", 300).await;
        }
        for q in queues {
            back_in_active(client, q, "m", what).await;
        }
        if generations() == before {
            return;
        }
    }
    panic!("{what}: every round had a resubscription, so none shows the event path");
}
