//! End to end on real Redis: a 3-node cluster housekeeps Deckard's keys.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{wait_until, TestCluster};
use deckhand::proto::admin::admin_client::AdminClient;
use deckhand::proto::admin::{TaskRequest, TasksRequest};
use deckhand::store::redis::RedisStore;
use deckhand::store::{now_ms, DeckardClient, LockKind};
use deckhand::testing::RedisServer;

/// What we expect of one message once housekeeping is done.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Back in the active pool with exactly this score.
    Score(f64),
    /// Back with an ack default score: the unlock time or later.
    AtLeast(f64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_unlock_and_time_out_deckard_messages_on_redis() {
    let server = RedisServer::start().expect("redis-server");
    let store = Arc::new(
        RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open"),
    );
    let client: &dyn DeckardClient = store.as_ref();

    // 120 queues; in each: an ack lock with a restore score, an ack lock
    // without one, a nack lock without one, and an entry whose ack deadline
    // passes (timeout). Some queue names use Deckard's `prefix::` form.
    let queues: Vec<String> = (0..120)
        .map(|i| {
            if i % 3 == 0 {
                format!("orders::q{i}")
            } else {
                format!("q{i}")
            }
        })
        .collect();
    let now = now_ms();
    let mut expected: BTreeMap<(String, String), Expect> = BTreeMap::new();
    for q in &queues {
        let items: Vec<(String, f64)> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| (id.to_string(), 10.0))
            .collect();
        client.add(q, &items).await.expect("add");
        client.pull(q, 3, now, 60_000).await.expect("pull a b c");
        client
            .pull(q, 1, now, 1_500)
            .await
            .expect("pull d: deadline in 1.5 s");
        client
            .release(q, LockKind::Ack, "a", now, 1_500, Some(77.0))
            .await
            .expect("ack a");
        client
            .release(q, LockKind::Ack, "b", now, 2_000, None)
            .await
            .expect("ack b");
        client
            .release(q, LockKind::Nack, "c", now, 1_000, None)
            .await
            .expect("nack c");
        expected.insert((q.clone(), "a".into()), Expect::Score(77.0));
        expected.insert(
            (q.clone(), "b".into()),
            Expect::AtLeast((now + 2_000) as f64),
        );
        expected.insert((q.clone(), "c".into()), Expect::Score(0.0));
        expected.insert((q.clone(), "d".into()), Expect::Score(0.0));
    }

    let cluster = TestCluster::start_on(3, Some(store.clone())).await;
    let leader = cluster.wait_for_leader().await;

    // Everything comes back to the active pools.
    wait_until("every lock and deadline was handled", || async {
        for q in &queues {
            let snap = client.snapshot(q).await.ok()?;
            if snap.active.len() != 4 {
                return None;
            }
        }
        Some(())
    })
    .await;
    for q in &queues {
        let snap = client.snapshot(q).await.expect("snapshot");
        assert!(
            snap.processing.is_empty() && snap.lock_ack.is_empty() && snap.lock_nack.is_empty(),
            "{q}: {snap:?}"
        );
        assert!(
            snap.lock_ack_score.is_empty() && snap.lock_nack_score.is_empty(),
            "{q}: score records left"
        );
        for (id, score) in &snap.active {
            match expected[&(q.clone(), id.clone())] {
                Expect::Score(s) => assert_eq!(*score, s, "{q}/{id}"),
                Expect::AtLeast(s) => assert!(*score >= s, "{q}/{id}: {score} < {s}"),
            }
        }
    }

    // `ctl tasks` (the admin API): both followers did part of the work.
    let addr = cluster.nodes[&leader].admin_addr();
    let mut admin = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("admin");
    let tasks = wait_until("both followers report their unlocks", || {
        let mut admin = admin.clone();
        async move {
            let tasks = admin.tasks(TasksRequest {}).await.ok()?.into_inner().tasks;
            let unlock = tasks.iter().find(|t| t.name == "UNLOCK")?;
            let followers_working = unlock
                .nodes
                .iter()
                .filter(|n| n.node_id != leader && n.moved > 0)
                .count();
            (unlock.moved == 3 * 120 && followers_working == 2).then_some(tasks)
        }
    })
    .await;
    let timeout = tasks
        .iter()
        .find(|t| t.name == "TIMEOUT")
        .expect("TIMEOUT row");
    assert_eq!(timeout.moved, 120);
    assert!(tasks.iter().all(|t| t.enabled && t.errors == 0));

    // Every node's /metrics: Deckard's counters (queue label = prefix before
    // `::`) and the lateness histogram, summed over the nodes.
    let mut unlock_orders_ack = 0.0;
    let mut lateness_count = 0.0;
    for node in cluster.nodes.values() {
        let body = common::http_get(node.metrics_addr(), "/metrics").await;
        for line in body.lines() {
            let value = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if line.starts_with("deckard_message_unlock_total{")
                && line.contains("queue=\"orders\"")
                && line.contains("lock_type=\"ack\"")
            {
                unlock_orders_ack += value;
            }
            if line.starts_with("deckhand_unlock_lateness_seconds_count") {
                lateness_count += value;
            }
        }
        assert!(
            body.contains("deckhand_node_is_leader"),
            "node gauges missing"
        );
    }
    assert_eq!(unlock_orders_ack, 80.0, "40 orders:: queues x 2 ack locks");
    assert_eq!(
        lateness_count, 360.0,
        "one lateness observation per unlocked element"
    );

    // Pause UNLOCK: a new lock stays locked past its time; resume: it returns.
    admin
        .pause_task(TaskRequest {
            task: "unlock".into(),
        })
        .await
        .expect("pause");
    let err = admin
        .pause_task(TaskRequest {
            task: "expire".into(),
        })
        .await
        .expect_err("unknown task");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let q = &queues[0];
    client.pull(q, 1, now_ms(), 60_000).await.expect("pull");
    let pulled = client.snapshot(q).await.expect("snap").processing[0]
        .0
        .clone();
    client
        .release(q, LockKind::Ack, &pulled, now_ms(), 100, None)
        .await
        .expect("lock 100 ms");
    let paused_at = now_ms();
    wait_until("the paused lock is 500 ms overdue", || async {
        (now_ms() > paused_at + 600).then_some(())
    })
    .await;
    assert_eq!(
        client.snapshot(q).await.expect("snap").lock_ack.len(),
        1,
        "UNLOCK is paused"
    );
    admin
        .resume_task(TaskRequest {
            task: "UNLOCK".into(),
        })
        .await
        .expect("resume");
    wait_until("the lock returns after resume", || async {
        client
            .snapshot(q)
            .await
            .ok()?
            .lock_ack
            .is_empty()
            .then_some(())
    })
    .await;
    cluster.shutdown().await;
}

/// A worker counter summed over the running nodes.
fn sum_stat(cluster: &TestCluster, counter: impl Fn(deckhand::worker::WorkerCounts) -> u64) -> u64 {
    cluster
        .nodes
        .values()
        .map(|n| counter(n.worker.counts()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_load_loses_and_duplicates_nothing() {
    let mut server = RedisServer::start().expect("redis-server");
    let store = Arc::new(
        RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open"),
    );
    let cluster = TestCluster::start_on(3, Some(store.clone())).await;
    cluster.wait_for_leader().await;
    let queues: Vec<String> = (0..40).map(|i| format!("load{i}")).collect();

    // Deckard-like traffic: add, pull with short deadlines, ack/nack with
    // short locks. Ids Redis confirmed are remembered.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (store, queues, stop) = (store.clone(), queues.clone(), stop.clone());
        tokio::spawn(async move {
            let mut added: BTreeMap<String, Vec<String>> = BTreeMap::new();
            // Adds whose reply was lost (Redis going away): applied or not.
            let mut uncertain: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for q in &queues {
                    n += 1;
                    let id = format!("m{n}");
                    match store.add(q, &[(id.clone(), n as f64)]).await {
                        Ok(1) => added.entry(q.clone()).or_default().push(id),
                        Ok(_) => {}
                        Err(_) => uncertain.entry(q.clone()).or_default().push(id),
                    }
                    let now = now_ms();
                    let Ok(pulled) = store.pull(q, 2, now, 300).await else {
                        continue;
                    };
                    for (i, id) in pulled.iter().enumerate() {
                        // Ack-lock, nack-lock, or leave it to time out.
                        let _ = match (n as usize + i) % 3 {
                            0 => {
                                store
                                    .release(q, LockKind::Ack, id, now, 200, Some(5.0))
                                    .await
                            }
                            1 => store.release(q, LockKind::Nack, id, now, 250, None).await,
                            _ => Ok(false),
                        };
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            (added, uncertain)
        })
    };

    // Let traffic and housekeeping run, then restart Redis under them.
    wait_until("some housekeeping happened", || async {
        let moved: u64 = sum_stat(&cluster, |c| c.unlocked_ack);
        (moved > 20).then_some(())
    })
    .await;
    let errors_before: u64 = sum_stat(&cluster, |c| c.store_errors);
    server.stop();
    wait_until("the nodes notice Redis is gone", || async {
        let errors: u64 = sum_stat(&cluster, |c| c.store_errors);
        (errors > errors_before).then_some(())
    })
    .await;
    server.restart().expect("redis-server restarts");
    let resumed_from: u64 = sum_stat(&cluster, |c| c.calls);
    wait_until("housekeeping resumes after the restart", || async {
        let calls: u64 = sum_stat(&cluster, |c| c.calls);
        (calls > resumed_from + 100).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (added, uncertain) = load.await.expect("load task");
    assert!(
        added.values().map(Vec::len).sum::<usize>() > 100,
        "too little traffic"
    );

    // Once every lock and deadline has passed, every id is in the active
    // pool exactly once, every confirmed id is there, and no other id is
    // (except adds whose reply was lost, which may or may not have happened).
    wait_until("all locks and deadlines are handled", || async {
        for q in &queues {
            let snap = store.snapshot(q).await.ok()?;
            if !(snap.processing.is_empty()
                && snap.lock_ack.is_empty()
                && snap.lock_nack.is_empty())
            {
                return None;
            }
        }
        Some(())
    })
    .await;
    for q in &queues {
        let snap = store.snapshot(q).await.expect("snapshot");
        let placements = snap.placements();
        assert!(
            placements.values().all(|sets| sets.len() == 1),
            "{q}: an id in two sets"
        );
        let confirmed: Vec<&String> = added.get(q).map(|v| v.iter().collect()).unwrap_or_default();
        let maybe: Vec<&String> = uncertain
            .get(q)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        for id in &confirmed {
            assert!(placements.contains_key(*id), "{q}: {id} was lost");
        }
        for id in placements.keys() {
            assert!(
                confirmed.contains(&id) || maybe.contains(&id),
                "{q}: {id} appeared from nowhere"
            );
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_redis_works_once_redis_is_up() {
    // Nothing listens on the port yet: the store opens, the node starts and leads.
    let port = RedisServer::free_port().expect("free port");
    let url = format!("redis://127.0.0.1:{port}/0");
    let store = Arc::new(RedisStore::open(&url, "deckard_v1").await.expect("open"));
    let cluster = TestCluster::start_on(1, Some(store.clone())).await;
    let leader = cluster.wait_for_leader().await;
    assert!(store.snapshot("q").await.is_err(), "Redis is not there yet");

    // Redis appears; a lock written now comes back like any other.
    let _server = RedisServer::start_on(port).expect("redis-server on the node's port");
    let client: &dyn DeckardClient = store.as_ref();
    let now = now_ms();
    client
        .add("late", &[("m".to_string(), 1.0)])
        .await
        .expect("add");
    client.pull("late", 1, now, 60_000).await.expect("pull");
    client
        .release("late", LockKind::Nack, "m", now, 300, None)
        .await
        .expect("nack");
    wait_until("the lock written after Redis came up returns", || async {
        let snap = client.snapshot("late").await.ok()?;
        (snap.active == vec![("m".to_string(), 0.0)]).then_some(())
    })
    .await;
    assert_eq!(cluster.wait_for_leader().await, leader);
    cluster.shutdown().await;
}
