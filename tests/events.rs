//! Lock events on real Redis: locks come back by their keyspace event, not
//! by polling; a lost subscription is followed by a resubscription and a
//! sweep; the `require` and `auto` modes; a follower that polls makes the
//! leader discover at the polling pace; queues Deckard emptied stop costing
//! calls.
//!
//! Every test here sets `tasks.sweep_interval` (and discovery) far longer
//! than its deadlines, so only the path under test can pass it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::deckard::{
    back_in_active, pull_and_lock, resubscribed, slow_sweep, worked_and_subscribed,
};
use common::{http_get, samples, wait_until, TestCluster};
use deckhand::cluster::shards::shard_of;
use deckhand::config::NotificationMode;
use deckhand::proto::admin::admin_client::AdminClient;
use deckhand::proto::admin::StatusRequest;
use deckhand::store::redis::RedisStore;
use deckhand::store::{now_ms, DeckardClient, QueueStore};
use deckhand::testing::RedisServer;

async fn redis_store(server: &RedisServer) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open"),
    )
}

/// Waits until both followers are subscribed and one lock has come back by
/// its event: by then the sweep that follows a subscription is long done, so
/// a lock taken afterwards can only come back by its own event.
async fn settle_events(cluster: &TestCluster, client: &dyn DeckardClient) {
    wait_until("both followers are subscribed", || async {
        let subscribed = cluster
            .nodes
            .values()
            .filter(|n| n.worker.scheduling().subscribed)
            .count();
        (subscribed == 2).then_some(())
    })
    .await;
    client
        .add("canary", &[("c".into(), 1.0)])
        .await
        .expect("add");
    pull_and_lock(client, "canary", "c", 100).await;
    back_in_active(client, "canary", "c", "the canary lock came back").await;
}

/// How many `SCAN`s Redis has served (discovery's only command).
async fn scan_calls(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Total successful housekeeping calls of the running nodes.
fn calls(cluster: &TestCluster) -> u64 {
    cluster
        .nodes
        .values()
        .map(|n| n.worker.counts().calls)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_on_quiet_and_new_queues_come_back_by_their_event() {
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = redis_store(&server).await;
    let client: &dyn DeckardClient = store.as_ref();
    // A known queue with nothing in flight: after its first call its next
    // one is a sweep away.
    client
        .add("quiet", &[("m".into(), 1.0)])
        .await
        .expect("add");
    let cluster = TestCluster::start_configured(3, Some(store.clone()), slow_sweep).await;
    cluster.wait_for_leader().await;
    wait_until("the quiet queue was worked", || async {
        (store.fence_of("quiet").await.ok()? > 0).then_some(())
    })
    .await;
    settle_events(&cluster, client).await;

    pull_and_lock(client, "quiet", "m", 300).await;
    back_in_active(client, "quiet", "m", "the quiet queue's lock came back").await;

    // A queue nobody has seen (discovery is a minute away): its owner
    // adopts it from the event.
    client
        .add("fresh::q", &[("n".into(), 1.0)])
        .await
        .expect("add");
    pull_and_lock(client, "fresh::q", "n", 200).await;
    back_in_active(client, "fresh::q", "n", "the new queue's lock came back").await;
    let snap = client.snapshot("fresh::q").await.expect("snapshot");
    assert!(
        snap.lock_ack.is_empty() && snap.processing.is_empty(),
        "{snap:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_is_followed_by_a_resubscription_and_a_sweep() {
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = redis_store(&server).await;
    let client: &dyn DeckardClient = store.as_ref();
    let queues: Vec<String> = (0..24).map(|i| format!("k{i}")).collect();
    for q in &queues {
        client.add(q, &[("m".into(), 1.0)]).await.expect("add");
    }
    let cluster = TestCluster::start_configured(3, Some(store.clone()), slow_sweep).await;
    cluster.wait_for_leader().await;
    let generations = worked_and_subscribed(&cluster, store.as_ref(), &queues).await;
    settle_events(&cluster, client).await;
    let before = calls(&cluster);

    // Subscriptions cut, and refused for now (no channel permissions).
    let mut con = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let acl_con = con.clone();
    let acl = |rule: &'static str| {
        let mut con = acl_con.clone();
        async move {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg(rule)
                .query_async(&mut con)
                .await
                .expect("acl setuser");
        }
    };
    // Revoking the channels disconnects the subscribers (Redis 7 does so for
    // clients subscribed to channels their user may no longer use); the
    // kill makes sure of it.
    acl("resetchannels").await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut con)
        .await
        .expect("client kill");
    wait_until("both followers lost their subscription", || async {
        cluster
            .nodes
            .values()
            .all(|n| !n.worker.scheduling().subscribed)
            .then_some(())
    })
    .await;
    // A lock nobody hears of: polling and the sweep are 30 s away.
    pull_and_lock(client, "k3", "m", 200).await;
    acl("allchannels").await;

    // Resubscribed (a new generation on both followers) and swept: the lock
    // is found though no event announced it.
    resubscribed(&cluster, &generations, "both followers resubscribed").await;
    back_in_active(
        client,
        "k3",
        "m",
        "the unannounced lock came back by the sweep",
    )
    .await;
    assert!(
        calls(&cluster) >= before + queues.len() as u64,
        "the sweep called every queue"
    );
    // Events flow again.
    pull_and_lock(client, "k5", "m", 200).await;
    back_in_active(
        client,
        "k5",
        "m",
        "a lock after the resubscription came back",
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_without_keyspace_events_refuses_to_start() {
    let server = RedisServer::start().expect("redis-server");
    let store = redis_store(&server).await;
    let (mut cluster, mut listeners) = TestCluster::prepare(1).await;
    let mut config = cluster.configs[&1].clone();
    config.tasks.notifications = NotificationMode::Require;
    let listeners = listeners.remove(&1).expect("listeners");
    let err = match deckhand::node::Node::start_with_store(config, listeners, Some(store)).await {
        Ok(_) => panic!("started without keyspace events"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(text.contains("notify-keyspace-events"), "{text}");
    assert!(text.contains("require"), "{text}");
    assert_eq!(err.config_key(), "tasks.notifications");
    cluster.nodes.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_keyspace_events_polls_and_says_so() {
    let server = RedisServer::start().expect("redis-server");
    let store = redis_store(&server).await;
    let client: &dyn DeckardClient = store.as_ref();
    client.add("p", &[("m".into(), 1.0)]).await.expect("add");
    let cluster = TestCluster::start_configured(3, Some(store.clone()), |c| {
        c.tasks.poll_interval = Duration::from_millis(200);
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    for (id, node) in &cluster.nodes {
        let mut admin = AdminClient::connect(format!("http://{}", node.admin_addr()))
            .await
            .expect("admin");
        let status = admin
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(status.notifications, "auto", "node {id}");
        assert!(
            status.scheduling.starts_with("polling (")
                && status.scheduling.contains("notify-keyspace-events"),
            "node {id}: {}",
            status.scheduling
        );
        let body = http_get(node.metrics_addr(), "/metrics").await;
        assert_eq!(
            samples(&body, "deckhand_scheduling_polling"),
            vec![("deckhand_scheduling_polling".to_string(), 1.0)],
            "node {id}"
        );
    }
    // Polling still does the work.
    wait_until("the queue was worked", || async {
        (store.fence_of("p").await.ok()? > 0).then_some(())
    })
    .await;
    pull_and_lock(client, "p", "m", 100).await;
    back_in_active(client, "p", "m", "a lock came back by polling").await;
    let _ = leader;
    cluster.shutdown().await;
}

/// A follower without lock events cannot adopt a new queue: its heartbeats
/// say it polls, and the leader, which has events, then discovers every
/// second. With `discovery_interval` at 60 s, only that brings a queue
/// created after the shards settled to its polling owner in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_follower_makes_the_leader_discover_at_the_polling_pace() {
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = redis_store(&server).await;
    let client: &dyn DeckardClient = store.as_ref();
    let polling_node = 3;
    let cluster = TestCluster::start_configured(3, Some(store.clone()), |c| {
        slow_sweep(c);
        c.tasks.poll_interval = Duration::from_millis(200);
        if c.node_id == polling_node {
            c.tasks.notifications = NotificationMode::Off;
        }
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    if leader == polling_node {
        cluster.transfer_leadership(polling_node, 1).await;
    }
    let owners = cluster.wait_for_balanced_ownership().await;
    let leader = cluster.agreed_leader().expect("a leader");
    assert_ne!(leader, polling_node);
    assert_eq!(
        cluster.nodes[&leader].worker.scheduling().mode,
        deckhand::worker::events::Mode::Events,
        "the leader has lock events of its own"
    );
    let settled = cluster.leader_state().await;
    let shard_count = settled.cluster.shard_count;
    let queue = (0..)
        .map(|i| format!("late-{i}"))
        .find(|q| owners.get(&shard_of(q, shard_count)) == Some(&polling_node))
        .expect("a queue of the polling node's shards");
    // Discovery is the only SCAN: once one has run after the shards
    // settled (the one that follows the last moves, at least), only the
    // polling pace brings another within the deadline.
    let mut con = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let settled_scans = scan_calls(&mut con).await;
    wait_until("a discovery after the shards settled", || {
        let mut con = con.clone();
        async move { (scan_calls(&mut con).await > settled_scans).then_some(()) }
    })
    .await;
    client.add(&queue, &[("m".into(), 1.0)]).await.expect("add");
    pull_and_lock(client, &queue, "m", 100).await;
    back_in_active(
        client,
        &queue,
        "m",
        "the polling owner got the new queue from a discovery at the polling pace",
    )
    .await;
    // Its shard never moved (same owner, same epoch): no node with events
    // could have adopted it.
    let shard = shard_of(&queue, shard_count) as usize;
    let now_state = cluster.leader_state().await;
    assert_eq!(now_state.cluster.shards[shard].owner, Some(polling_node));
    assert_eq!(
        now_state.cluster.shards[shard].epoch,
        settled.cluster.shards[shard].epoch
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deckard_emptied_stops_being_discovered_and_called() {
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = redis_store(&server).await;
    let client: &dyn DeckardClient = store.as_ref();
    client
        .add("doomed", &[("m".into(), 1.0)])
        .await
        .expect("add");
    client
        .add("alive", &[("m".into(), 1.0)])
        .await
        .expect("add");
    let sweep = Duration::from_millis(300);
    let cluster = TestCluster::start_configured(3, Some(store.clone()), |c| {
        c.tasks.sweep_interval = sweep;
        c.worker.discovery_interval = Duration::from_millis(200);
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    wait_until("both queues worked", || async {
        let a = store.fence_of("doomed").await.ok()?;
        let b = store.fence_of("alive").await.ok()?;
        (a > 0 && b > 0).then_some(())
    })
    .await;

    // Deckard pulls the last message and removes it for good.
    let now = now_ms();
    client.pull("doomed", 1, now, 300_000).await.expect("pull");
    client
        .remove("doomed", &["m".to_string()])
        .await
        .expect("remove");

    // The leader's discovery forgets it (three discoveries in a row).
    let coordinator = cluster.nodes[&leader].coordinator.clone();
    wait_until("the queue left the leader's lists", || async {
        let listed: usize = coordinator.queue_counts().values().sum();
        (listed == 1).then_some(())
    })
    .await;
    // Only the fence is left, expiring.
    let mut con = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*{doomed}*")
        .query_async(&mut con)
        .await
        .expect("keys");
    assert_eq!(keys, vec!["deckard_v1:queue:{doomed}:deckhand_fence"]);
    let pttl = || {
        let mut con = con.clone();
        async move {
            redis::cmd("PTTL")
                .arg("deckard_v1:queue:{doomed}:deckhand_fence")
                .query_async::<i64>(&mut con)
                .await
                .expect("pttl")
        }
    };
    let first = pttl().await;
    assert!(first > 0, "the fence expires: {first}");
    // Every call on a gone queue renews that expiry; once no owner calls it,
    // it only runs down. Were it still called every 300 ms, it would never
    // fall 2 s below where it stood.
    wait_until("no owner calls the gone queue any more", || async {
        (pttl().await < first - 2_000).then_some(())
    })
    .await;
    // The living queue is still worked, and announced locks still come back.
    pull_and_lock(client, "alive", "m", 200).await;
    back_in_active(client, "alive", "m", "the living queue's lock came back").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_on_a_quiet_queue_times_out_by_its_event() {
    let server = RedisServer::start_with_notifications().expect("redis-server");
    let store = redis_store(&server).await;
    let client: &dyn DeckardClient = store.as_ref();
    client
        .add("pulled", &[("m".into(), 1.0)])
        .await
        .expect("add");
    // The sweep is 30 s away; a pull event asks for a call within 300 ms.
    let cluster = TestCluster::start_configured(3, Some(store.clone()), |c| {
        slow_sweep(c);
        c.tasks.poll_interval = Duration::from_millis(300);
    })
    .await;
    cluster.wait_for_leader().await;
    wait_until("the queue was worked", || async {
        (store.fence_of("pulled").await.ok()? > 0).then_some(())
    })
    .await;
    settle_events(&cluster, client).await;
    // A consumer pulls with a 1 s ack deadline and never acks.
    let pulled = client
        .pull("pulled", 1, now_ms(), 1_000)
        .await
        .expect("pull");
    assert_eq!(pulled, vec!["m".to_string()]);
    back_in_active(client, "pulled", "m", "the pulled message timed out").await;
    let snap = client.snapshot("pulled").await.expect("snapshot");
    assert_eq!(
        snap.active,
        vec![("m".to_string(), 0.0)],
        "timeout score is 0"
    );
    cluster.shutdown().await;
}
