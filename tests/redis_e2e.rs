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
