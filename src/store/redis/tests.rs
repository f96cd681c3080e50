//! The Redis store on real servers: the store contract on one Redis and on a
//! Redis Cluster, Deckard's key layout, and its own rules.

use super::*;
use crate::store::{DeckardClient, LockKind};
use crate::testing::RedisServer;

/// The same contract on a real three-master Redis Cluster: scripts go
/// to each queue's master, discovery and the fence scan walk every
/// master, and the load is spread (every master ran scripts).
#[tokio::test]
async fn redis_cluster_store_meets_the_contract() {
    let cluster = crate::testing::RedisCluster::start().expect("redis cluster");
    let store = RedisStore::open_with(&cluster.url(), "deckard_v1", true)
        .await
        .expect("open");
    crate::store::contract::run(&store, &store).await;
    // Our slot function is the cluster's, tricky hash tags included.
    let mut con = store.connection().await.expect("connection");
    for key in [
        "foo{}{bar}",
        "foo{{bar}}zap",
        "{user1000}.following",
        "deckard_v1:queue:{orders::q7}:lock_ack",
        "deckard_v1:deckhand_probe:{00ff00ff00ff00ff}",
        "no tag at all",
        "{}",
        "a{b",
    ] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut con)
            .await
            .expect("CLUSTER KEYSLOT");
        assert_eq!(
            crate::store::redis_conn::key_slot(key.as_bytes()),
            slot,
            "{key}"
        );
    }
    // Queues hash to every master, and discovery finds each one.
    let queues: Vec<String> = (0..60).map(|i| format!("spread::q{i}")).collect();
    for q in &queues {
        store.add(q, &[("m".to_string(), 1.0)]).await.expect("add");
    }
    let found = store.discover_queues().await.expect("discover");
    for q in &queues {
        assert!(found.contains(q), "{q} not discovered on the cluster");
    }
    let per_node = store.evalsha_stats_per_node().await.expect("stats");
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(
        per_node.iter().all(|(_, calls, _)| *calls > 0),
        "every master ran scripts: {per_node:?}"
    );
}

/// A master our subscriber cannot connect to (here: it refuses new
/// clients) is skipped: the other masters' events still arrive, the stream
/// goes on while that master keeps refusing, and it ends (so the node
/// resubscribes and sweeps once) when the master takes clients again.
#[tokio::test]
async fn cluster_events_skip_a_master_that_refuses_the_subscriber() {
    use futures::StreamExt;
    use std::time::Duration;
    let cluster = crate::testing::RedisCluster::start().expect("redis cluster");
    let store = RedisStore::open_with(&cluster.url(), "deckard_v1", true)
        .await
        .expect("open");
    // Queues on every master, so the store's own connections reach each.
    let queues: Vec<String> = (0..30).map(|i| format!("skip::q{i}")).collect();
    for q in &queues {
        store.add(q, &[("m".to_string(), 1.0)]).await.expect("add");
    }
    let refusing = cluster.masters()[0];
    // A connection made before the limit, so it can lift the limit again.
    let mut admin = Client::open(format!("redis://127.0.0.1:{refusing}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let mut set_maxclients = async |n: u32| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxclients")
            .arg(n)
            .query_async::<()>(&mut admin)
            .await
            .expect("CONFIG SET maxclients");
    };
    set_maxclients(1).await;
    // Probes far apart: a late probe on a loaded machine must not end the
    // stream inside the window checked below.
    let timing = crate::store::redis_events::ProbeTiming {
        interval: Duration::from_secs(120),
        ..Default::default()
    };
    let mut events = store
        .subscribe_with(timing)
        .await
        .expect("subscribed to the other masters");
    let now = crate::store::now_ms();
    for q in &queues {
        store.pull(q, 1, now, 60_000).await.expect("pull");
    }
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event from a master that accepted the subscriber");
    assert!(first.is_some(), "the stream went on");
    // While the master refuses, the stream goes on (past the first retry).
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(
        drained.is_err(),
        "the stream ended while the master still refused"
    );
    set_maxclients(10000).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while events.next().await.is_some() {}
    })
    .await
    .expect("the stream ends once the skipped master takes clients again");
}

#[tokio::test]
async fn redis_store_meets_the_contract() {
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = RedisStore::open(&server.url(), "deckard_v1")
        .await
        .expect("open");
    crate::store::contract::run(&store, &store).await;
    crate::store::contract::lock_events(&store, &store).await;
    // The keys are Deckard's, under the prefix, with the fence beside them.
    let mut con = store.connection().await.expect("connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*{c::fenced}*")
        .query_async(&mut con)
        .await
        .expect("keys");
    let mut keys = keys;
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "deckard_v1:queue:{c::fenced}",
            "deckard_v1:queue:{c::fenced}:deckhand_fence"
        ]
    );
}

#[tokio::test]
async fn without_keyspace_events_the_error_names_the_setting() {
    let server = RedisServer::start().expect("redis-server");
    let store = RedisStore::open(&server.url(), "deckard_v1")
        .await
        .expect("open");
    let err = match store.watch_events().await {
        Ok(_) => panic!("events without notify-keyspace-events"),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::NoLockEvents(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("notify-keyspace-events"), "{text}");
    assert!(text.contains("it is \"\""), "the current value: {text}");
    // The probe left nothing behind.
    let mut con = store.connection().await.expect("connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .expect("keys");
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn keyspace_events_without_sorted_sets_are_refused() {
    // K and g: Redis announces DEL (generic) on the probe key, never ZADD.
    let server =
        RedisServer::start_with(&["--notify-keyspace-events", "Kg"]).expect("redis-server");
    let store = RedisStore::open(&server.url(), "deckard_v1")
        .await
        .expect("open");
    let err = match store.watch_events().await {
        Ok(_) => panic!("events accepted without the z flag"),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::NoLockEvents(_)), "{err}");
    assert!(err.to_string().contains("it is \"gK\""), "{err}");
}

#[tokio::test]
async fn a_subscription_ends_when_redis_stops_publishing() {
    use futures::StreamExt;
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = RedisStore::open(&server.url(), "deckard_v1")
        .await
        .expect("open");
    let mut events = store.watch_events().await.expect("events");
    let mut con = store.connection().await.expect("connection");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("")
        .query_async(&mut con)
        .await
        .expect("config set");
    // The next probe (within 5 s) does not come back (2 s): the stream ends.
    let end = tokio::time::timeout(Duration::from_secs(15), events.next())
        .await
        .expect("the stream ends within 15 s");
    assert_eq!(end, None);
}

#[tokio::test]
async fn a_killed_subscription_ends_the_event_stream() {
    use futures::StreamExt;
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = RedisStore::open(&server.url(), "deckard_v1")
        .await
        .expect("open");
    let mut events = store.watch_events().await.expect("lock events");
    let mut con = store.connection().await.expect("connection");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut con)
        .await
        .expect("client kill");
    assert_eq!(killed, 1);
    let end = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the stream ends within 10 s");
    assert_eq!(end, None);
}

#[tokio::test]
async fn discovery_finds_every_queue_with_keys() {
    let server = RedisServer::start().expect("redis-server");
    let store = RedisStore::open(&server.url(), " deckard_v1: ")
        .await
        .expect("open");
    store
        .add("only-active", &[("a".into(), 1.0)])
        .await
        .expect("add");
    store
        .add("orders::eu", &[("a".into(), 1.0)])
        .await
        .expect("add");
    store.pull("orders::eu", 1, 0, 100).await.expect("pull");
    store
        .add("locked", &[("a".into(), 1.0)])
        .await
        .expect("add");
    store.pull("locked", 1, 0, 100).await.expect("pull");
    store
        .release("locked", LockKind::Nack, "a", 0, 100, None)
        .await
        .expect("nack");
    let _: () = redis::cmd("SET")
        .arg("deckard_v1:other")
        .arg("x")
        .query_async(&mut store.connection().await.expect("connection"))
        .await
        .expect("set");
    let queues = store.discover_queues().await.expect("discover");
    assert_eq!(
        queues,
        vec![
            "locked".to_string(),
            "only-active".to_string(),
            "orders::eu".to_string()
        ]
    );
}

/// A node whose wall clock stepped an hour ahead: Redis's own clock
/// caps "now", so nothing is unlocked or timed out early.
#[tokio::test]
async fn a_clock_ahead_of_redis_moves_nothing_early() {
    use crate::store::{now_ms, Fence, HousekeepRequest};
    let server = RedisServer::start().expect("redis-server");
    let store = RedisStore::open(&server.url(), "deckard_v1")
        .await
        .expect("open");
    let now = now_ms();
    store
        .add("q", &[("a".into(), 1.0), ("b".into(), 2.0)])
        .await
        .expect("add");
    // Both pulled with a 10-minute ack deadline; a acked with a 30-minute lock.
    store.pull("q", 2, now, 600_000).await.expect("pull");
    assert!(store
        .release("q", LockKind::Ack, "a", now, 1_800_000, None)
        .await
        .expect("ack"));
    let ahead = HousekeepRequest {
        now_ms: now + 3_600_000,
        batch: 10,
        unlock: true,
        timeout: true,
    };
    let fence = Fence {
        shard: 0,
        epoch: 1,
        node: 1,
    };
    let out = store.housekeep("q", ahead, fence).await.expect("housekeep");
    assert_eq!(
        (out.unlocked_ack, out.timed_out),
        (0, 0),
        "moved by a clock an hour ahead"
    );
    // Nor does that node see as due what Redis does not (it would call
    // the queue again at once, over and over).
    assert!(
        !out.more_due(now + 3_600_000),
        "next due {:?} on the node's clock",
        out.next_due_ms
    );
    let snap = store.snapshot("q").await.expect("snapshot");
    assert!(snap.active.is_empty(), "{snap:?}");
}

#[tokio::test]
async fn wrong_types_and_a_missing_redis_are_clear_errors() {
    let server = RedisServer::start().expect("redis-server");
    let store = RedisStore::open(&server.url(), "deckard_v1")
        .await
        .expect("open");
    let mut con = store.connection().await.expect("connection");
    let _: () = redis::cmd("SET")
        .arg("deckard_v1:queue:{broken}:lock_ack")
        .arg("x")
        .query_async(&mut con)
        .await
        .expect("set");
    let fence = Fence {
        shard: 0,
        epoch: 1,
        node: 1,
    };
    let req = HousekeepRequest {
        now_ms: 10,
        batch: 10,
        unlock: true,
        timeout: true,
    };
    let err = store
        .housekeep("broken", req, fence)
        .await
        .expect_err("wrong type");
    assert!(matches!(err, StoreError::WrongType { .. }), "{err}");

    // Nothing listens: the store opens, and operations say Redis is unavailable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let down = RedisStore::open(&format!("redis://127.0.0.1:{port}/0"), "deckard_v1")
        .await
        .expect("open");
    let err = down
        .housekeep("q", req, fence)
        .await
        .expect_err("unavailable");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    // A malformed URL fails at open.
    assert!(RedisStore::open("redis://[bad", "p").await.is_err());
}
