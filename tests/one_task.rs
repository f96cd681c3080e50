//! One shard, one task: a shard that comes back to the same node at a new
//! epoch starts its new task only once the old one has ended (it may be in
//! the middle of a store call when the new epoch is applied).

mod common;

use common::{wait_until, TestCluster};
use deckhand::cluster::shards::token_epoch;
use deckhand::cluster::{shard_of, Command, Move, TaskKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_waits_for_the_old_task_to_end() {
    let cluster = TestCluster::start(3).await;
    let queues = cluster.add_queues(50);
    let owners = cluster.wait_for_balanced_ownership().await;
    let leader = cluster.wait_for_leader().await;
    let count = owners.len() as u32;
    let of_shard = |s: u32| queues.iter().filter(|q| shard_of(q, count) == s).count();
    let (shard, owner) = queues
        .iter()
        .map(|q| shard_of(q, count))
        .map(|s| (s, owners[&s]))
        .find(|(s, o)| *o != leader && of_shard(*s) >= 2)
        .expect("a follower owns a shard with two queues or more");
    let node = &cluster.nodes[&owner];
    let old_epoch = wait_until("the shard runs", || async {
        node.worker.running().get(&shard).map(|r| r.epoch)
    })
    .await;

    // Its queue list is in (the owner fetches it through heartbeat acks,
    // which stop while frozen).
    cluster.wait_for_queues_worked(&queues).await;

    // Park the owner's store calls (after their lease check), then give the
    // shard to the same owner again: a new epoch. Heartbeats go on, so the
    // owner keeps its lease and would start the new task at once without
    // the rule under test.
    node.worker.freeze.park_calls();
    let raft = &cluster.nodes[&leader].raft;
    // Every owner calls all its queues now (rather than at the next sweep).
    raft.client_write(Command::TriggerTask {
        task: TaskKind::Unlock,
    })
    .await
    .expect("trigger");
    wait_until("two calls of the shard are parked", || async {
        (node.worker.freeze.parked_calls(shard) >= 2).then_some(())
    })
    .await;
    let written = raft
        .client_write(Command::Moves {
            moves: vec![Move::Assign {
                shard,
                to: owner,
                expected_epoch: old_epoch,
            }],
        })
        .await
        .expect("move");
    let new_index = written.log_id().index();
    wait_until("the owner reconciled with the new epoch", || async {
        (node.worker.reconciled_index() >= new_index).then_some(())
    })
    .await;
    assert!(
        node.worker.lease_valid(),
        "the owner lost its lease: the check below would pass whatever the rule"
    );
    let running = node.worker.running();
    assert_eq!(
        running.get(&shard).map(|r| r.epoch),
        Some(old_epoch),
        "the new task started while the old one was still in a call"
    );

    // Every parked call is in flight (past every local check): the old
    // task ends only once each has come back, none dropped half sent.
    let in_flight = node.worker.freeze.parked_calls(shard);
    let history_at_move = cluster.store.history().len();
    node.worker.freeze.thaw();
    wait_until("the new task runs once the old one ended", || async {
        (node.worker.running().get(&shard)?.epoch == new_index).then_some(())
    })
    .await;
    let completed = cluster.store.history()[history_at_move..]
        .iter()
        .filter(|op| op.shard == shard && token_epoch(op.epoch) == old_epoch)
        .count();
    assert!(
        completed >= in_flight,
        "{in_flight} calls were in flight when the task was cancelled, {completed} completed: \
         the others were dropped, not awaited"
    );
    cluster.shutdown().await;
}
