//! The contract every store must meet, run against each one with the same
//! inputs: same resulting sets and scores, same fencing behaviour.

use super::{DeckardClient, Fence, HousekeepRequest, LockKind, QueueSizes, QueueStore, StoreError};

fn fence(epoch: u64) -> Fence {
    Fence {
        shard: 0,
        epoch,
        node: 1,
    }
}

fn req(now_ms: i64, batch: usize) -> HousekeepRequest {
    HousekeepRequest {
        now_ms,
        batch,
        unlock: true,
        timeout: true,
    }
}

fn ids(set: &[(String, f64)]) -> Vec<&str> {
    set.iter().map(|(id, _)| id.as_str()).collect()
}

fn score_of(set: &[(String, f64)], id: &str) -> Option<f64> {
    set.iter().find(|(i, _)| i == id).map(|(_, s)| *s)
}

/// Runs the whole contract on a store with empty data.
pub async fn run(store: &dyn QueueStore, client: &dyn DeckardClient) {
    deckard_client_semantics(client).await;
    unlock_and_timeout(store, client).await;
    batches_and_order(store, client).await;
    fencing(store, client).await;
    bad_names(store, client).await;
    gone_queues(store, client).await;
    largest_batch(store, client).await;
    generations(store, client).await;
}

/// A new cluster's generation is above the counter and above every fence:
/// a store whose counter was lost while its fences stayed still hands out
/// a generation that outranks them.
async fn generations(s: &dyn QueueStore, c: &dyn DeckardClient) {
    let big = s.highest_fence().await.expect("scan") + 1_000_000;
    for (q, token) in [("c::gen-a", big - 1), ("c::gen-b", big)] {
        c.add(q, &[("g".to_string(), 1.0)]).await.expect("add");
        s.housekeep(q, req(0, 10), fence(token))
            .await
            .expect("fence written");
    }
    assert_eq!(s.highest_fence().await.expect("scan"), big);
    let first = s.next_generation(0).await.expect("generation");
    let above = first + 10;
    let raised = s.next_generation(above).await.expect("generation");
    assert!(raised > above, "{raised} is not above {above}");
    let next = s.next_generation(0).await.expect("generation");
    assert!(
        next > raised,
        "{next} is not above {raised}: generations repeat"
    );
}

/// `tasks.batch` at its maximum, under the backlog it exists for: one call
/// moves a full batch of locks, then of timeouts (a Lua script cannot pass
/// more than about 8,000 values to one command, so this needs chunking).
async fn largest_batch(s: &dyn QueueStore, c: &dyn DeckardClient) {
    use crate::config::tasks::MAX_BATCH;
    let backlog = MAX_BATCH + 500;
    let (max, rest, all) = (MAX_BATCH as u64, 500u64, backlog as u64);
    let q = "c::largest";
    let items: Vec<(String, f64)> = (0..backlog).map(|i| (format!("m{i}"), i as f64)).collect();
    c.add(q, &items).await.expect("add");
    c.pull(q, backlog, 0, 0).await.expect("pull");
    for (id, _) in &items {
        c.release(q, LockKind::Ack, id, 1000, 1, None)
            .await
            .expect("ack");
    }
    let out = s
        .housekeep(q, req(5000, MAX_BATCH), fence(1))
        .await
        .expect("a full batch of unlocks");
    assert_eq!((out.unlocked_ack, out.sizes.locked_ack), (max, rest));
    let out = s
        .housekeep(q, req(5000, MAX_BATCH), fence(1))
        .await
        .expect("the rest");
    assert_eq!((out.unlocked_ack, out.sizes.active), (rest, all));
    // The same backlog timing out of processing (deadline 0).
    c.pull(q, backlog, 0, 0).await.expect("pull again");
    let out = s
        .housekeep(q, req(5000, MAX_BATCH), fence(1))
        .await
        .expect("a full batch of timeouts");
    assert_eq!((out.timed_out, out.sizes.processing), (max, rest));
}

/// A queue Deckard emptied is gone: not discovered, no work, and its fence
/// (kept for the retention) still holds off older owners.
async fn gone_queues(s: &dyn QueueStore, c: &dyn DeckardClient) {
    let q = "c::gone";
    c.add(q, &[("g1".to_string(), 1.0)]).await.expect("add");
    c.pull(q, 1, 0, 10).await.expect("pull");
    let out = s.housekeep(q, req(0, 10), fence(20)).await.expect("live");
    assert!(!out.gone);
    assert!(s
        .discover_queues()
        .await
        .expect("discover")
        .contains(&q.to_string()));
    // Deckard finishes the message for good: every set of the queue is empty.
    c.remove(q, &["g1".to_string()]).await.expect("remove");
    let out = s.housekeep(q, req(0, 10), fence(20)).await.expect("gone");
    assert!(out.gone, "{out:?}");
    assert_eq!((out.moved(), out.next_due_ms), (0, None));
    assert!(!s
        .discover_queues()
        .await
        .expect("discover")
        .contains(&q.to_string()));
    assert_eq!(s.fence_of(q).await.expect("fence"), 20);
    assert!(s
        .housekeep(q, req(0, 10), fence(19))
        .await
        .expect_err("older owner")
        .is_fenced());
    // It comes back: live again, discovered again.
    c.add(q, &[("g2".to_string(), 1.0)]).await.expect("add");
    let out = s.housekeep(q, req(0, 10), fence(21)).await.expect("back");
    assert!(!out.gone);
    assert_eq!(out.sizes.active, 1);
    assert!(s
        .discover_queues()
        .await
        .expect("discover")
        .contains(&q.to_string()));
}

/// Queue events: a pull and a lock announce their queue; adds, acks
/// without a lock and an empty pull do not.
pub async fn lock_events(s: &dyn QueueStore, c: &dyn DeckardClient) {
    use super::{EventKind, QueueEvent};
    use futures::StreamExt;
    let mut events = s.watch_events().await.expect("queue events");
    async fn next(events: &mut super::QueueEventStream) -> Option<QueueEvent> {
        tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
    }
    let event = |queue: &str, kind| {
        Some(QueueEvent {
            queue: queue.to_string(),
            kind,
        })
    };
    for q in ["e::plain", "e::locked"] {
        c.add(q, &[("m".to_string(), 1.0)]).await.expect("add");
        c.pull(q, 1, 0, 60_000).await.expect("pull");
        assert_eq!(next(&mut events).await, event(q, EventKind::Pull));
    }
    assert!(c
        .pull("e::plain", 1, 0, 60_000)
        .await
        .expect("empty pull")
        .is_empty());
    c.release("e::plain", LockKind::Ack, "m", 0, 0, None)
        .await
        .expect("ack without lock");
    c.release("e::locked", LockKind::Nack, "m", 0, 500, Some(3.0))
        .await
        .expect("nack with lock");
    assert_eq!(next(&mut events).await, event("e::locked", EventKind::Lock));
}

async fn deckard_client_semantics(c: &dyn DeckardClient) {
    let q = "c::clients";
    let items = vec![
        ("m1".to_string(), 5.0),
        ("m2".to_string(), 1.0),
        ("m3".to_string(), 3.0),
    ];
    assert_eq!(c.add(q, &items).await.expect("add"), 3);
    // Add skips ids already present.
    assert_eq!(c.add(q, &items[..1]).await.expect("add again"), 0);
    // Pull takes the lowest scores, deadline now + ack_deadline.
    let pulled = c.pull(q, 2, 1000, 300).await.expect("pull");
    assert_eq!(pulled, vec!["m2".to_string(), "m3".to_string()]);
    let snap = c.snapshot(q).await.expect("snapshot");
    assert_eq!(ids(&snap.active), vec!["m1"]);
    assert_eq!(
        snap.processing,
        vec![("m2".to_string(), 1300.0), ("m3".to_string(), 1300.0)]
    );
    // An id being processed is not added again.
    assert_eq!(c.add(q, &[("m2".to_string(), 0.0)]).await.expect("add"), 0);
    // Ack with a lock and a restore score; nack with a lock and no score.
    assert!(c
        .release(q, LockKind::Ack, "m2", 2000, 500, Some(42.0))
        .await
        .expect("ack"));
    assert!(c
        .release(q, LockKind::Nack, "m3", 2000, 700, None)
        .await
        .expect("nack"));
    assert!(!c
        .release(q, LockKind::Ack, "m2", 2000, 500, None)
        .await
        .expect("not processing"));
    let snap = c.snapshot(q).await.expect("snapshot");
    assert_eq!(snap.lock_ack, vec![("m2".to_string(), 2500.0)]);
    assert_eq!(snap.lock_ack_score, vec![("m2".to_string(), 42.0)]);
    assert_eq!(snap.lock_nack, vec![("m3".to_string(), 2700.0)]);
    assert!(snap.lock_nack_score.is_empty());
    // Without a lock: straight back to the active pool (default score: now for ack).
    c.pull(q, 1, 3000, 300).await.expect("pull m1");
    assert!(c
        .release(q, LockKind::Ack, "m1", 3000, 0, None)
        .await
        .expect("ack"));
    let snap = c.snapshot(q).await.expect("snapshot");
    assert_eq!(score_of(&snap.active, "m1"), Some(3000.0));
    // Pending counts processing and locked ids; remove takes ids out of every set.
    assert_eq!(c.pending(q).await.expect("pending"), 2);
    assert_eq!(
        c.remove(q, &["m2".to_string(), "m1".to_string()])
            .await
            .expect("remove"),
        3
    );
    let snap = c.snapshot(q).await.expect("snapshot");
    assert!(snap.lock_ack.is_empty() && snap.lock_ack_score.is_empty() && snap.active.is_empty());
    assert_eq!(c.pending(q).await.expect("pending"), 1);
}

async fn unlock_and_timeout(s: &dyn QueueStore, c: &dyn DeckardClient) {
    let q = "c::unlock";
    let items: Vec<(String, f64)> = (0..4)
        .map(|i| (format!("x{i}"), 100.0 + i as f64))
        .collect();
    c.add(q, &items).await.expect("add");
    c.pull(q, 4, 1000, 300)
        .await
        .expect("pull all: deadline 1300");
    // x0: ack-locked until 2500 with restore score 7; x1: ack-locked until 2400, no score;
    // x2: nack-locked until 2300, no score; x3 stays in processing (deadline 1300).
    c.release(q, LockKind::Ack, "x0", 2000, 500, Some(7.0))
        .await
        .expect("ack");
    c.release(q, LockKind::Ack, "x1", 2000, 400, None)
        .await
        .expect("ack");
    c.release(q, LockKind::Nack, "x2", 2000, 300, None)
        .await
        .expect("nack");

    // Before anything is due: nothing moves; the next due time is the timeout at 1300.
    let out = s
        .housekeep(q, req(1200, 100), fence(1))
        .await
        .expect("housekeep");
    assert_eq!(out.moved(), 0);
    assert_eq!(out.next_due_ms, Some(1300));
    // Sizes after the call: x3 processing, x0 and x1 ack-locked, x2 nack-locked.
    assert_eq!(
        out.sizes,
        QueueSizes {
            active: 0,
            processing: 1,
            locked_ack: 2,
            locked_nack: 1,
            oldest_overdue_ms: 0,
        }
    );

    // At 2450: x3 timed out (score 0), x2 and x1 unlocked; x0 not yet.
    let out = s
        .housekeep(q, req(2450, 100), fence(1))
        .await
        .expect("housekeep");
    assert_eq!(
        (out.unlocked_ack, out.unlocked_nack, out.timed_out),
        (1, 1, 1)
    );
    let mut late = out.unlock_lateness_ms.clone();
    late.sort_unstable();
    assert_eq!(late, vec![50, 150]);
    assert_eq!(out.next_due_ms, Some(2500));
    let snap = c.snapshot(q).await.expect("snapshot");
    assert_eq!(score_of(&snap.active, "x3"), Some(0.0), "timeout: score 0");
    assert_eq!(
        score_of(&snap.active, "x2"),
        Some(0.0),
        "nack without score: 0"
    );
    assert_eq!(
        score_of(&snap.active, "x1"),
        Some(2450.0),
        "ack without score: now"
    );
    assert_eq!(ids(&snap.lock_ack), vec!["x0"]);

    // At 2500: x0 returns with its restore score, and its score record is gone.
    let out = s
        .housekeep(q, req(2500, 100), fence(1))
        .await
        .expect("housekeep");
    assert_eq!(out.unlocked_ack, 1);
    assert_eq!(out.unlock_lateness_ms, vec![0]);
    assert_eq!(out.next_due_ms, None);
    let snap = c.snapshot(q).await.expect("snapshot");
    assert_eq!(score_of(&snap.active, "x0"), Some(7.0));
    assert!(snap.lock_ack.is_empty() && snap.lock_ack_score.is_empty());
    assert!(snap.lock_nack.is_empty() && snap.processing.is_empty());
    // Every id is in exactly one set.
    assert!(snap.placements().values().all(|sets| sets.len() == 1));
}

async fn batches_and_order(s: &dyn QueueStore, c: &dyn DeckardClient) {
    let q = "c::batches";
    let items: Vec<(String, f64)> = (0..10).map(|i| (format!("b{i}"), i as f64)).collect();
    c.add(q, &items).await.expect("add");
    c.pull(q, 10, 0, 0).await.expect("pull");
    // Lock b_i until 1001 + 10 * i: b0 is the longest overdue.
    for i in 0..10 {
        c.release(q, LockKind::Ack, &format!("b{i}"), 1000 + 10 * i, 1, None)
            .await
            .expect("ack");
    }
    let out = s
        .housekeep(q, req(5000, 4), fence(1))
        .await
        .expect("batch 1");
    assert_eq!(out.unlocked_ack, 4);
    assert!(out.more_due(5000), "due elements remain after a full batch");
    // b4 (locked until 1041) is now the most overdue lock: 5000 - 1041.
    assert_eq!(
        (
            out.sizes.active,
            out.sizes.locked_ack,
            out.sizes.oldest_overdue_ms
        ),
        (4, 6, 3959)
    );
    let snap = c.snapshot(q).await.expect("snapshot");
    let mut active = ids(&snap.active);
    active.sort_unstable();
    assert_eq!(
        active,
        vec!["b0", "b1", "b2", "b3"],
        "longest overdue first"
    );
    // Draining in batches moves everything.
    let mut total = 4;
    while total < 10 {
        total += s
            .housekeep(q, req(5000, 4), fence(1))
            .await
            .expect("batch")
            .moved();
    }
    assert_eq!(total, 10);
    let out = s.housekeep(q, req(5000, 4), fence(1)).await.expect("empty");
    assert_eq!((out.moved(), out.next_due_ms), (0, None));
}

async fn fencing(s: &dyn QueueStore, c: &dyn DeckardClient) {
    let q = "c::fenced";
    c.add(q, &[("f1".to_string(), 1.0)]).await.expect("add");
    c.pull(q, 1, 0, 10).await.expect("pull: deadline 10");
    assert_eq!(s.fence_of(q).await.expect("fence"), 0);
    s.housekeep(q, req(0, 10), fence(10))
        .await
        .expect("first owner");
    assert_eq!(s.fence_of(q).await.expect("fence"), 10);
    // Same epoch again: the same owner, accepted.
    s.housekeep(q, req(0, 10), fence(10))
        .await
        .expect("same epoch");
    // An older epoch is rejected and changes nothing (f1 stays in processing).
    let err = s
        .housekeep(q, req(100, 10), fence(9))
        .await
        .expect_err("stale epoch");
    assert_eq!(
        err,
        StoreError::Fenced {
            queue: q.into(),
            epoch: 9,
            fence: 10
        }
    );
    assert_eq!(s.fence_of(q).await.expect("fence"), 10);
    assert_eq!(
        ids(&c.snapshot(q).await.expect("snap").processing),
        vec!["f1"]
    );
    // A newer epoch takes over; the old one is now rejected for good.
    let out = s
        .housekeep(q, req(100, 10), fence(12))
        .await
        .expect("newer owner");
    assert_eq!(out.timed_out, 1);
    assert!(s
        .housekeep(q, req(100, 10), fence(10))
        .await
        .expect_err("old owner")
        .is_fenced());
    // Fences are per queue.
    s.housekeep("c::other", req(0, 10), fence(3))
        .await
        .expect("other queue");
}

async fn bad_names(s: &dyn QueueStore, c: &dyn DeckardClient) {
    for bad in ["", "a{b", "c}"] {
        let err = s
            .housekeep(bad, req(0, 1), fence(1))
            .await
            .expect_err("invalid name");
        assert!(matches!(err, StoreError::InvalidQueue { .. }), "{err}");
        let err = c
            .add(bad, &[("x".into(), 1.0)])
            .await
            .expect_err("invalid name");
        assert!(matches!(err, StoreError::InvalidQueue { .. }), "{err}");
    }
}
