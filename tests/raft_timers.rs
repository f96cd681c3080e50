//! The Raft timers deckhand drives itself (`raft::pacer`): openraft's own
//! heartbeats are off and its tick is coarse, the leader's heartbeats come
//! from the pacer, and a leader's tick is off while it leads.

mod common;

use std::time::Instant;

use common::{test_raft_tuning, wait_until, TestCluster};

/// With no writes at all, only the pacer's heartbeats keep the followers
/// from running for election: the leader's quorum acknowledgement keeps
/// advancing, and after twice the longest election timeout the same leader
/// leads in the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_leader_keeps_its_followers_with_paced_heartbeats() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_for_leader().await;
    let term = c.metrics()[&leader].current_term;
    let tuning = test_raft_tuning();
    let until = Instant::now() + 2 * tuning.election_timeout_max;
    wait_until(
        "a fresh quorum acknowledgement after two election timeouts",
        || async {
            let m = c.nodes[&leader].metrics();
            let fresh = m
                .last_quorum_acked
                .as_ref()
                .is_some_and(|at| openraft::Instant::elapsed(&**at) < tuning.election_timeout_min);
            (Instant::now() >= until && fresh).then_some(())
        },
    )
    .await;
    for (id, m) in c.metrics() {
        assert_eq!(m.current_term, term, "node {id} saw an election");
        assert_eq!(
            m.current_leader,
            Some(leader),
            "node {id} follows another leader"
        );
    }
    c.shutdown().await;
}

/// A leader's tick is off while it leads; it must be on again once the
/// node follows, or the node could never be elected again. Here the former
/// leader is the only node allowed to run once the new leader crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_leader_gets_its_election_timer_back() {
    let mut c = TestCluster::start(3).await;
    let first = c.wait_for_leader().await;
    let others = c.followers_of(first);
    let (second, third) = (others[0], others[1]);
    c.transfer_leadership(first, second).await;
    c.nodes[&third].raft.runtime_config().elect(false);
    // `third` votes for `first` only if `first`'s log is as long as its own.
    wait_until("every node holds the new leader's whole log", || async {
        let m = c.metrics();
        let last = m[&second].last_log_index;
        (m[&first].last_log_index == last && m[&third].last_log_index == last).then_some(())
    })
    .await;
    c.crash(second).await;
    wait_until("the former leader leads again", || async {
        let m = c.nodes[&first].metrics();
        (m.state == openraft::ServerState::Leader).then_some(())
    })
    .await;
    c.shutdown().await;
}
