//! Multi-node clusters in one process: election, failover, restart from disk.

mod common;

use common::{wait_until, TestCluster};
use deckhand::cluster::Command;
use deckhand::node::Node;
use deckhand::raft::store;
use openraft::storage::RaftLogStorage;
use openraft::RaftLogReader;
use openraft::ServerState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_fail_over_and_recover_from_disk() {
    let mut cluster = TestCluster::start(3).await;
    let first = cluster.wait_for_leader().await;
    assert_eq!(cluster.leaders(), vec![first], "exactly one leader");

    // The first leader records the configured shard count in the replicated state.
    let node = &cluster.nodes[&first];
    wait_until("the shard count is applied on the leader", || async {
        (node.state_machine.applied().await.cluster.shard_count == 16).then_some(())
    })
    .await;
    let term_before = node.metrics().current_term;

    // Stop the leader abruptly: the survivors elect a new one and agree on it.
    cluster.crash(first).await;
    // Writable: the write below comes right after the election.
    let second = cluster.wait_for_writable_leader().await;
    assert_ne!(second, first);
    assert_eq!(
        cluster.leaders(),
        vec![second],
        "exactly one leader among survivors"
    );
    assert!(cluster.nodes[&second].metrics().current_term > term_before);

    // Commit something new while the old leader is down.
    let leader = &cluster.nodes[&second].raft;
    leader
        .client_write(Command::InitCluster {
            shard_count: 16,
            generation: 1,
        })
        .await
        .expect("survivors commit");
    let committed = cluster.nodes[&second]
        .metrics()
        .last_applied
        .expect("applied");

    // The old leader comes back from its data dir as a follower and catches up.
    cluster.restart(first).await;
    let returned = &cluster.nodes[&first];
    returned
        .raft
        .wait(Some(common::DEADLINE))
        .metrics(
            |m| m.state == ServerState::Follower && m.current_leader == Some(second),
            "restarted node follows the new leader",
        )
        .await
        .expect("restarted node follows");
    returned
        .raft
        .wait(Some(common::DEADLINE))
        .applied_index_at_least(Some(committed.index()), "restarted node catches up")
        .await
        .expect("restarted node applies the new entries");
    // The leader keeps applying (shard moves as the node returns), so compare
    // with its state as it is at each poll, not with an earlier copy.
    let leader = &cluster.nodes[&second];
    wait_until("restarted node has the leader's applied state", || async {
        let state = returned.state_machine.applied().await;
        let leader_state = leader.state_machine.applied().await;
        (state == leader_state
            && state.last_applied.as_ref().map(|l| l.index()) >= Some(committed.index()))
        .then_some(())
    })
    .await;
    assert_eq!(
        cluster.wait_for_leader().await,
        second,
        "the returning node does not disturb the leader"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_keep_a_leader_with_two_stopped() {
    let mut cluster = TestCluster::start(5).await;
    let first = cluster.wait_for_leader().await;
    // Stop the leader and one follower: three of five remain, still a majority.
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != first)
        .expect("a follower");
    cluster.crash(first).await;
    cluster.crash(follower).await;
    // Writable: the write below comes right after the election.
    let leader = cluster.wait_for_writable_leader().await;
    assert!(leader != first && leader != follower);
    assert_eq!(cluster.leaders(), vec![leader]);
    cluster.nodes[&leader]
        .raft
        .client_write(Command::InitCluster {
            shard_count: 16,
            generation: 1,
        })
        .await
        .expect("three of five commit");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_in_reverse_order_form_one_cluster() {
    let (mut cluster, mut listeners) = TestCluster::prepare(3).await;
    for id in [3, 2, 1] {
        let l = listeners.remove(&id).expect("listeners");
        cluster.start_node_with(id, l).await;
        if id != 1 {
            // Until every initial member is up, nobody may initialize.
            let node = &cluster.nodes[&id];
            assert!(!node.raft.is_initialized().await.expect("raft running"));
        }
    }
    let leader = cluster.wait_for_leader().await;
    assert_eq!(cluster.leaders(), vec![leader]);
    let metrics = cluster.metrics();
    let voters: Vec<_> = metrics[&leader]
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, vec![1, 2, 3]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_leader_hands_off_leadership() {
    let mut cluster = TestCluster::start(3).await;
    let first = cluster.wait_for_leader().await;
    let term = cluster.nodes[&first].metrics().current_term;
    let node = cluster.nodes.remove(&first).expect("leader");
    node.shutdown().await;
    // A successor in a later term leads and the survivors agree on it. (How
    // fast that happens is measured by scripts/failover.sh, not asserted.)
    let successor = cluster.wait_for_leader().await;
    assert_ne!(successor, first);
    assert!(cluster.nodes[&successor].metrics().current_term > term);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_never_reinitializes_and_keeps_the_vote() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let before = cluster.nodes[&follower].metrics();
    cluster.crash(follower).await;

    // The vote and log are on disk: read them back from the stopped node's sled.
    {
        let (mut log, _sm) = store::open(&cluster.data_dir(follower).join("raft"))
            .expect("open stopped node's storage");
        let vote = log
            .read_vote()
            .await
            .expect("read vote")
            .expect("a vote was stored");
        assert!(
            vote.leader_id().term >= before.vote.leader_id().term,
            "vote survived the crash"
        );
        let state = log.get_log_state().await.expect("log state");
        assert!(
            state.last_log_id.map(|l| l.index()) >= before.last_applied.as_ref().map(|l| l.index()),
            "applied entries survived the crash"
        );
    }

    cluster.restart(follower).await;
    let node = &cluster.nodes[&follower];
    assert!(
        node.raft.is_initialized().await.expect("running"),
        "restart found its state"
    );
    cluster.wait_for_leader().await;
    cluster.shutdown().await;
}

/// A crashed node's storage may still be held by a task that outlives it
/// (openraft's state machine worker, a blocking fsync on a loaded disk);
/// stopping returns only once that handle is gone, so the node restarts on
/// its data dir at once instead of failing on sled's file lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_returns_only_once_its_storage_is_released() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers_of(leader)[0];
    let dir = cluster.data_dir(follower).join("raft");
    // A handle held past the node's own tasks, as a straggler would.
    let straggler = cluster.nodes[&follower].state_machine.clone();
    let release = straggler.release_watch();
    let node = cluster.nodes.remove(&follower).expect("running");
    let mut crash = tokio::spawn(node.crash());
    wait_until("every handle but the straggler's is gone", || async {
        (release.handles() == 1).then_some(())
    })
    .await;
    // The crash cannot return while the straggler holds the storage.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), &mut crash)
            .await
            .is_err(),
        "crash returned while a task still held the node's storage"
    );
    assert!(store::open(&dir).is_err(), "the straggler holds the lock");
    drop(straggler);
    crash.await.expect("crash finished");
    assert!(release.is_released());
    let (log, sm) = store::open(&dir).expect("the data dir is free after a crash");
    let reopened = sm.release_watch();
    drop((log, sm));
    wait_until("the reopened storage is closed again", || async {
        reopened.is_released().then_some(())
    })
    .await;
    cluster.restart(follower).await;
    cluster.wait_for_leader().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_a_port_in_use_and_another_nodes_data() {
    let (cluster, _listeners) = TestCluster::prepare(2).await;
    // The prepared listeners still hold node 1's ports.
    let err = Node::start(cluster.configs[&1].clone())
        .await
        .err()
        .expect("port in use");
    assert_eq!(err.config_key(), "raft_addr");
    assert!(!cluster.data_dir(1).exists(), "nothing was written");

    // Node 2's config pointed at node 1's data dir is refused, untouched.
    let (other, listeners) = TestCluster::prepare(2).await;
    let mut listeners = listeners;
    let l1 = listeners.remove(&1).expect("listeners");
    let mut other = other;
    other.start_node_with(1, l1).await;
    let node1_dir = other.data_dir(1);
    other.crash(1).await;
    let mut config = other.configs[&2].clone();
    config.data_dir = node1_dir.clone();
    let l2 = listeners.remove(&2).expect("listeners");
    let err = Node::start_with(config, l2)
        .await
        .err()
        .expect("foreign data dir");
    assert_eq!(err.config_key(), "data_dir");
    assert!(err.to_string().contains("belongs to node 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_leading_forgets_the_queue_names() {
    let cluster = TestCluster::start(3).await;
    let queues = cluster.add_queues(30);
    let old = cluster.wait_for_leader().await;
    let coordinator = cluster.nodes[&old].coordinator.clone();
    wait_until("the leader listed every queue", || async {
        (coordinator.queue_counts().values().sum::<usize>() == queues.len()).then_some(())
    })
    .await;

    let to = cluster.followers_of(old)[0];
    cluster.transfer_leadership(old, to).await;
    wait_until("the old leader holds no queue names", || async {
        coordinator.queue_counts().is_empty().then_some(())
    })
    .await;
    cluster.shutdown().await;
}

/// Issue 12, item 3: a new leader that cannot reach the store must not
/// replace anyone's queue lists (with nothing, housekeeping would stop
/// cluster-wide while it leads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_that_cannot_discover_replaces_no_ones_lists() {
    let cluster = TestCluster::start(3).await;
    let queues = cluster.add_queues(60);
    let owners = cluster.wait_for_balanced_ownership().await;
    cluster.wait_for_queues_worked(&queues).await;
    let shard_count = cluster.leader_state().await.cluster.shard_count;
    let listed = |id: u64| -> usize {
        let cache = cluster.nodes[&id].worker.queues();
        queues
            .iter()
            .filter(|q| {
                let shard = deckhand::cluster::shard_of(q, shard_count);
                owners.get(&shard) == Some(&id)
                    && cache
                        .by_shard
                        .get(&shard)
                        .is_some_and(|list| list.contains(*q))
            })
            .count()
    };
    let expected: std::collections::BTreeMap<u64, usize> = cluster
        .nodes
        .keys()
        .map(|id| {
            let n = queues
                .iter()
                .filter(|q| owners.get(&deckhand::cluster::shard_of(q, shard_count)) == Some(id))
                .count();
            (*id, n)
        })
        .collect();
    wait_until("every owner has the lists of its shards", || async {
        expected
            .iter()
            .all(|(id, n)| listed(*id) == *n)
            .then_some(())
    })
    .await;

    // The store stops answering discovery; leadership moves.
    cluster.store.fail_discovery(true);
    let old = cluster.wait_for_leader().await;
    let to = cluster.followers_of(old)[0];
    cluster.transfer_leadership(old, to).await;
    // Two heartbeats of every node acknowledged by the new leader: each
    // node has taken the new leader's answer (and its queue version) since.
    let coordinator = cluster.nodes[&to].coordinator.clone();
    let first: std::collections::BTreeMap<u64, std::time::Instant> =
        wait_until("every node heartbeats the new leader", || async {
            let reports = coordinator.reports();
            (reports.len() == 3).then(|| {
                reports
                    .into_iter()
                    .map(|(id, r)| (id, r.received_at))
                    .collect()
            })
        })
        .await;
    wait_until("every node heartbeats the new leader again", || async {
        let reports = coordinator.reports();
        first
            .iter()
            .all(|(id, at)| reports.get(id).is_some_and(|r| r.received_at > *at))
            .then_some(())
    })
    .await;
    for (id, n) in &expected {
        assert_eq!(
            listed(*id),
            *n,
            "node {id} lost queue lists to a leader that cannot discover"
        );
    }
    cluster.store.fail_discovery(false);
    cluster.shutdown().await;
}
