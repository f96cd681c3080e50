//! A node whose Raft core stopped (a fatal storage error, a failed
//! assertion in the log or state machine) still has a running worker. Its
//! applied state is frozen, so it would never apply a pause, a release or a
//! move: it must stop its shards and stop renewing its lease, and the leader
//! must reassign them.

mod common;

use common::{wait_until, TestCluster};
use deckhand::cluster::{Command, TaskKind};
use deckhand::proto::worker::HeartbeatRequest;
use deckhand::raft::{NodeId, Raft};
use openraft::async_runtime::watch::WatchReceiver;

/// A bare report of `node` claiming it has applied the log to `applied_index`.
fn report(node: NodeId, applied_index: u64) -> HeartbeatRequest {
    HeartbeatRequest {
        node_id: node,
        applied_index,
        incarnation: 1,
        seq: 1,
        ..Default::default()
    }
}

/// Commits one more entry (a task trigger) through the leader `raft`:
/// its log index.
async fn write_one(raft: &Raft) -> Option<u64> {
    match raft
        .client_write(Command::TriggerTask {
            task: TaskKind::Unlock,
        })
        .await
    {
        Ok(written) => Some(written.log_id().index()),
        Err(e) => {
            // Shown with a failing test's output.
            eprintln!("write refused: {e}");
            None
        }
    }
}

/// Commits one entry through whichever node leads at the time: on a loaded
/// machine an election can move the leadership in the middle of a test,
/// and a write to the old leader then fails.
async fn write_through_the_leader(cluster: &TestCluster) -> u64 {
    wait_until("an entry committed by the current leader", || async {
        let leader = cluster.agreed_leader()?;
        write_one(&cluster.nodes[&leader].raft).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raft_core_stopped_gives_its_shards_up() {
    let cluster = TestCluster::start(3).await;
    let queues = cluster.add_queues(50);
    let owners = cluster.wait_for_balanced_ownership().await;
    let leader = cluster.wait_for_leader().await;
    let victim = *owners
        .values()
        .find(|o| **o != leader)
        .expect("a follower owns shards");
    let node = &cluster.nodes[&victim];
    wait_until("the victim runs its shards", || async {
        (!node.worker.running().is_empty()).then_some(())
    })
    .await;

    // The core stops; the process, its worker and its servers stay up.
    node.raft.shutdown().await.expect("raft shutdown");

    wait_until("the victim stopped every shard", || async {
        node.worker.running().is_empty().then_some(())
    })
    .await;
    wait_until(
        "the leader moved the victim's shards to live nodes",
        || async {
            let state = cluster.nodes[&leader].state_machine.latest();
            let shards = &state.cluster.shards;
            shards
                .iter()
                .all(|s| s.owner.is_some_and(|o| o != victim))
                .then_some(())
        },
    )
    .await;
    assert!(
        !node.worker.lease_valid(),
        "no lease without a running Raft core"
    );
    cluster.wait_for_queues_worked(&queues).await;
    cluster.shutdown().await;
}

/// A node whose state machine applies nothing (its core alive but stuck)
/// reports an applied index that falls behind: past `MAX_APPLY_LAG` entries
/// the leader stops acknowledging it, so its lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_heartbeats_of_a_node_far_behind_the_log() {
    use deckhand::worker::coordinator::{CoordError, MAX_APPLY_LAG};

    let cluster = TestCluster::start(3).await;
    cluster.wait_for_leader().await;
    for _ in 0..=MAX_APPLY_LAG {
        write_through_the_leader(&cluster).await;
    }
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers_of(leader)[0];
    let raft = &cluster.nodes[&leader].raft;
    // The commit index as the leader's metrics show it (what the check
    // reads), read afresh at each attempt: the planner may commit too.
    let committed = || {
        raft.metrics()
            .borrow_watched()
            .local_committed
            .map_or(0, |c| c.index())
    };
    wait_until("the writes show in the leader's metrics", || async {
        (committed() > MAX_APPLY_LAG).then_some(())
    })
    .await;
    let coordinator = &cluster.nodes[&leader].coordinator;
    let beat = |applied_index| report(follower, applied_index);
    // (A leader without a fresh quorum acknowledgement for a moment refuses
    // everyone as not leading: ask again then.)
    let stale = wait_until("an answer from a fresh leader", || async {
        match coordinator
            .on_heartbeat(beat(committed() - MAX_APPLY_LAG - 1))
            .await
        {
            Err(CoordError::NotLeader { .. }) => None,
            other => Some(other),
        }
    })
    .await;
    assert!(
        matches!(stale, Err(CoordError::Lagging { node, .. }) if node == follower),
        "{stale:?}"
    );
    // Caught up, it is acknowledged.
    wait_until(
        "a heartbeat of a node caught up is acknowledged",
        || async { coordinator.on_heartbeat(beat(committed())).await.ok() },
    )
    .await;
    cluster.shutdown().await;
}

/// In a quiet log a stuck node falls only a few entries behind, never
/// `MAX_APPLY_LAG`: the leader refuses it once it has not applied an entry
/// committed a lease ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_a_node_that_has_not_applied_what_was_committed_a_lease_ago() {
    use deckhand::worker::coordinator::CoordError;

    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers_of(leader)[0];
    let raft = &cluster.nodes[&leader].raft;
    let coordinator = &cluster.nodes[&leader].coordinator;
    let beat = |applied_index| report(follower, applied_index);
    // One entry behind a fresh write is acknowledged (retried until the
    // leader answers as a fresh leader right after a write).
    let index = wait_until("one entry behind a fresh write is acknowledged", || async {
        let index = write_one(raft).await?;
        coordinator.on_heartbeat(beat(index - 1)).await.ok()?;
        Some(index)
    })
    .await;
    // Still one entry behind, a lease later: refused.
    let refused = wait_until("still one entry behind, refused", || async {
        match coordinator.on_heartbeat(beat(index - 1)).await {
            Err(e @ CoordError::Lagging { .. }) => Some(e),
            _ => None,
        }
    })
    .await;
    // Refused by the time bound (the required index is the written entry),
    // not by the entry bound.
    assert!(
        matches!(refused, CoordError::Lagging { node, applied, required, .. }
            if node == follower && applied == index - 1 && required >= index),
        "{refused:?}"
    );
    cluster.shutdown().await;
}

/// The leader's own worker reports through the same check: a leader whose
/// state machine has not applied what it committed a lease ago hands
/// leadership off (the planner counts the leader as live, so its own shards
/// would otherwise never move).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_apply_its_own_log_hands_leadership_off() {
    use deckhand::worker::coordinator::CoordError;

    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_writable_leader().await;
    let raft = &cluster.nodes[&leader].raft;
    let coordinator = &cluster.nodes[&leader].coordinator;
    let index = write_one(raft).await.expect("write");
    // Its own report, one entry behind, for longer than the bound.
    wait_until("the leader refuses its own report", || async {
        match coordinator.on_heartbeat(report(leader, index - 1)).await {
            Err(CoordError::Lagging { .. } | CoordError::NotLeader { .. }) => Some(()),
            _ => None,
        }
    })
    .await;
    wait_until("another node leads", || async {
        let now_leading = cluster.wait_for_leader().await;
        (now_leading != leader).then_some(())
    })
    .await;
    cluster.shutdown().await;
}
