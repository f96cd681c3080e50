//! The checks can fail: each is run against a deliberately broken store
//! (`MemoryStore::break_fencing`, `break_clock`) and must report it, and
//! against a correct one and must not.
//!
//! - The history check's interleaving rule ([`common::check::interleavings`])
//!   catches a paused owner that writes over its successor when the fence
//!   is off.
//! - The message check (`deckhand load --check`: consumer-seen early and
//!   missing returns, plus the census of every message) catches locks
//!   returned early by a node whose clock runs ahead.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::deckard::checked_traffic;
use common::{wait_until, TestCluster};
use deckhand::cluster::shard_of;
use deckhand::cluster::shards::fence_token;
use deckhand::load;
use deckhand::store::{DeckardClient, QueueStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_check_catches_a_stale_owner_when_the_fence_is_broken() {
    let cluster = TestCluster::start_configured(3, None, |c| {
        // Every queue is called often, so each shard has a call parked at
        // the freeze (after its lease check) before the lease runs out.
        c.tasks.sweep_interval = Duration::from_millis(100);
    })
    .await;
    cluster.store.break_fencing();
    let queues = cluster.add_queues(200);
    let owners = cluster.wait_for_balanced_ownership().await;
    cluster.wait_for_queues_worked(&queues).await;
    let victim = *owners.values().next().expect("an owner");
    let node = &cluster.nodes[&victim];
    let moved: BTreeSet<u32> = owners
        .iter()
        .filter(|(_, o)| **o == victim)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        common::check::interleavings(&cluster.store.history()).is_empty(),
        "nothing interleaves before the pause"
    );

    node.worker.freeze.freeze();
    wait_until(
        "every shard of the paused node has a parked call",
        || async { (node.worker.freeze.parked_shards() == moved).then_some(()) },
    )
    .await;
    // The shards move and the successors write every moved queue (the
    // fence shows their newer token), so any parked call comes after them.
    let leader = cluster.wait_for_leader().await;
    wait_until(
        "the paused node's queues were written by their new owners",
        || async {
            let state = cluster.nodes[&leader].state_machine.latest();
            for q in queues.iter().filter(|q| moved.contains(&shard_of(q, 16))) {
                let shard = state.cluster.shards[shard_of(q, 16) as usize];
                if shard.owner.is_none_or(|o| o == victim)
                    || cluster.store.fence_of(q).await.ok()?
                        < fence_token(state.cluster.generation, shard.epoch)
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Resumed, its parked calls carry the old tokens; with the fence broken
    // the store accepts them, and the check must say so.
    node.worker.freeze.thaw();
    let found = wait_until("the check reports the stale owner", || async {
        let found = common::check::interleavings(&cluster.store.history());
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert!(
        found
            .iter()
            .all(|f| f.contains(&format!("node {victim} wrote"))),
        "only the paused node wrote over a successor: {found:#?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_check_passes_on_a_correct_cluster_and_catches_a_clock_ahead() {
    let cluster = TestCluster::start(3).await;
    cluster.wait_for_balanced_ownership().await;
    let client: std::sync::Arc<dyn DeckardClient> = std::sync::Arc::new(cluster.store.clone());

    let healthy = load::run(client.clone(), checked_traffic(20)).await;
    assert!(
        healthy.ack_locks + healthy.nack_locks > 0,
        "the traffic took locks: {healthy:?}"
    );
    let census = healthy.census.as_ref().expect("census ran");
    assert!(census.present + census.removed > 0, "{census:?}");
    assert!(healthy.integrity_ok(), "{}", load::summary_text(&healthy));

    // Every node now housekeeps as if its clock were 1 s ahead: locks come
    // back before their time, and the check must say so.
    cluster.store.break_clock(1000);
    let mut skewed_opts = checked_traffic(20);
    skewed_opts.seed = 8;
    let skewed = load::run(client, skewed_opts).await;
    assert!(skewed.early > 0, "{}", load::summary_text(&skewed));
    assert!(!skewed.integrity_ok());
    cluster.shutdown().await;
}
