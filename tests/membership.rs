//! Growing a cluster from 3 to 5 voters and back to 3 through the admin API
//! (the calls `deckhand ctl` makes), under traffic, with the history check.

mod common;

use std::time::Duration;

use common::{traffic, wait_until, within, TestCluster};
use deckhand::admin::client::{Ctl, CtlError, CtlOptions};
use deckhand::raft::NodeId;

async fn ctl(cluster: &TestCluster, via: NodeId) -> Ctl {
    let addr = cluster.nodes[&via].admin_addr().to_string();
    let options = CtlOptions {
        timeout: Some(Duration::from_secs(120)),
        ..CtlOptions::default()
    };
    Ctl::connect_with(&addr, options).await.expect("connect")
}

fn rpc_code(e: &CtlError) -> Option<tonic::Code> {
    match e {
        CtlError::Rpc { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_to_five_voters_and_shrink_back_under_load() {
    let mut cluster = TestCluster::start(3).await;
    let queues = cluster.add_queues(24);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(traffic(cluster.store.clone(), queues.clone(), stop_rx));
    cluster.wait_for_balanced_ownership().await;

    // Grow: 4 and 5 start in join mode and are added through a follower
    // (the request is forwarded to the leader).
    for id in [4, 5] {
        let me = cluster.start_joining(id).await;
        let leader = cluster.wait_for_leader().await;
        let via = *cluster
            .nodes
            .keys()
            .find(|n| **n != leader && **n != id)
            .expect("a follower");
        let out = within(
            "add-node",
            ctl(&cluster, via)
                .await
                .add_node(id, &me.raft_addr, &me.admin_addr, true),
        )
        .await
        .expect("add-node succeeds");
        assert!(out.contains(&format!("\"id\": {id}")), "{out}");
    }
    wait_until("five voters", || async {
        (cluster.voters()? == vec![1, 2, 3, 4, 5]).then_some(())
    })
    .await;
    let owners = cluster.wait_for_balanced_ownership().await;
    assert!(
        owners.values().any(|o| *o == 4) && owners.values().any(|o| *o == 5),
        "new voters got shards: {owners:?}"
    );

    // Bad requests: an existing id, an unknown id, a malformed address.
    let leader = cluster.wait_for_leader().await;
    let mut c = ctl(&cluster, leader).await;
    let e = c
        .add_node(4, "127.0.0.1:1", "127.0.0.1:2", false)
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&e), Some(tonic::Code::AlreadyExists), "{e}");
    let e = c.remove_node(99, false, false).await.unwrap_err();
    assert_eq!(rpc_code(&e), Some(tonic::Code::NotFound), "{e}");
    let e = c
        .add_node(6, "no-port", "127.0.0.1:2", false)
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&e), Some(tonic::Code::InvalidArgument), "{e}");
    let e = c.remove_node(leader, false, false).await.unwrap_err();
    assert_eq!(rpc_code(&e), Some(tonic::Code::FailedPrecondition), "{e}");

    // Shrink: move the leadership to node 1 if 4 or 5 leads, then remove both.
    let leader = cluster.wait_for_leader().await;
    if leader > 3 {
        within(
            "transfer-leader",
            ctl(&cluster, leader).await.transfer_leader(1, false),
        )
        .await
        .expect("transfer-leader succeeds");
    }
    for id in [4, 5] {
        let out = within(
            "remove-node",
            ctl(&cluster, 1).await.remove_node(id, false, false),
        )
        .await
        .expect("remove-node succeeds");
        assert!(out.contains("can never rejoin"), "{out}");
        cluster.crash(id).await;
    }
    wait_until("three voters", || async {
        (cluster.voters()? == vec![1, 2, 3]).then_some(())
    })
    .await;
    let owners = cluster.wait_for_balanced_ownership().await;
    assert!(owners.values().all(|o| *o <= 3), "{owners:?}");

    // A removed id never comes back.
    let e = ctl(&cluster, 1)
        .await
        .add_node(4, "127.0.0.1:1", "127.0.0.1:2", false)
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&e), Some(tonic::Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("can never rejoin"), "{e}");

    cluster.wait_for_queues_worked(&queues).await;
    let _ = stop_tx.send(true);
    let added = load.await.expect("traffic");
    assert!(added > 0);
    common::check::accepted_operations_follow_the_log(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_that_would_lose_the_quorum_are_refused_without_force() {
    let mut cluster = TestCluster::start(3).await;
    cluster.wait_for_balanced_ownership().await;
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers_of(leader);
    let (dead, live) = (followers[0], followers[1]);
    cluster.crash(dead).await;
    // The leader notices the silence after lease + margin: it reassigns the
    // dead node's shards. Before that, it counts the node live.
    wait_until("the dead node's shards are reassigned", || async {
        let state = cluster.leader_state().await;
        (state.cluster.owned_by(dead).count() == 0).then_some(())
    })
    .await;
    let e = wait_until("the leader sees the dead node as gone", || async {
        let e = ctl(&cluster, leader)
            .await
            .remove_node(live, false, false)
            .await
            .err()?;
        (rpc_code(&e) == Some(tonic::Code::FailedPrecondition)).then_some(e)
    })
    .await;
    assert!(e.to_string().contains("majority"), "{e}");
    // Removing the dead node itself is safe, and works.
    within(
        "remove the dead node",
        ctl(&cluster, leader).await.remove_node(dead, false, false),
    )
    .await
    .expect("removing the dead node");
    wait_until("two voters", || async {
        (cluster.voters()?.len() == 2).then_some(())
    })
    .await;
    cluster.shutdown().await;
}
