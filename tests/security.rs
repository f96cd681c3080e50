//! The admin token and mutual TLS, on real clusters over loopback.

mod common;

use std::path::Path;
use std::time::Duration;

use common::pki::Pki;
use common::{wait_until, TestCluster};
use deckhand::admin::client::{Ctl, CtlError, CtlOptions};
use deckhand::proto::raft::raft_service_client::RaftServiceClient;
use deckhand::proto::raft::ProbeRequest;
use deckhand::raft::NodeId;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn code(e: &CtlError) -> Option<tonic::Code> {
    match e {
        CtlError::Rpc { code, .. } => Some(*code),
        _ => None,
    }
}

async fn connect(addr: std::net::SocketAddr, options: CtlOptions) -> Result<Ctl, CtlError> {
    Ctl::connect_with(&addr.to_string(), options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_need_the_token_and_reads_do_not() {
    let (mut cluster, listeners) = TestCluster::prepare(3).await;
    let token_file = cluster.dir.path().join("token");
    std::fs::write(&token_file, "correct-horse\n").expect("write token");
    for config in cluster.configs.values_mut() {
        config.security.admin_token_file = Some(token_file.clone());
    }
    for (id, l) in listeners {
        cluster.start_node_with(id, l).await;
    }
    cluster.wait_for_balanced_ownership().await;
    let leader = cluster.wait_for_leader().await;
    let follower = *cluster
        .nodes
        .keys()
        .find(|n| **n != leader)
        .expect("follower");
    let addr = cluster.nodes[&follower].admin_addr();

    // Reads are open.
    let mut anonymous = connect(addr, CtlOptions::default()).await.expect("connect");
    anonymous
        .status(true)
        .await
        .expect("status without a token");
    anonymous
        .shards(true)
        .await
        .expect("shards without a token");
    anonymous.tasks(true).await.expect("tasks without a token");

    // Mutations without or with a wrong token: UNAUTHENTICATED, nothing changes.
    let e = anonymous.drain(leader, true, false).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
    let e = anonymous
        .transfer_leader(follower, false)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
    let wrong = CtlOptions {
        token: Some("wrong".into()),
        ..CtlOptions::default()
    };
    let mut wrong = connect(addr, wrong).await.expect("connect");
    let e = wrong.drain(leader, true, false).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
    let e = wrong
        .task(deckhand::admin::client::TaskAction::Pause, "UNLOCK", false)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
    let state = cluster.leader_state().await;
    assert!(state.cluster.drained.is_empty());
    assert!(
        !state
            .cluster
            .tasks
            .get(deckhand::cluster::TaskKind::Unlock)
            .paused
    );

    // With the token, through a follower (forwarded with its token).
    let right = CtlOptions {
        token: Some("correct-horse".into()),
        ..CtlOptions::default()
    };
    let mut right = connect(addr, right).await.expect("connect");
    right
        .drain(follower, true, false)
        .await
        .expect("drain with the token");
    wait_until("the drain is applied", || async {
        let state = cluster.leader_state().await;
        state.cluster.drained.contains(&follower).then_some(())
    })
    .await;
    cluster.shutdown().await;
}

/// A client TLS config trusting `pki`'s CA, presenting `cert` and `key`.
fn client_tls(pki: &Pki, cert: &Path, key: &Path) -> ClientTlsConfig {
    let read = |p: &Path| std::fs::read(p).expect("read pem");
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(Identity::from_pem(read(cert), read(key)))
}

async fn probe(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    RaftServiceClient::new(channel)
        .probe(ProbeRequest {
            cluster_name: "test".into(),
        })
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_only_holders_of_the_clusters_certificates_get_in() {
    let (mut cluster, listeners) = TestCluster::prepare(3).await;
    let pki = Pki::new(cluster.dir.path(), "cluster-ca");
    let rogue = Pki::new(cluster.dir.path(), "rogue-ca");
    for (id, config) in cluster.configs.iter_mut() {
        let (cert, key) = pki.issue(&format!("node{id}"));
        config.security.tls_cert = Some(cert);
        config.security.tls_key = Some(key);
        config.security.tls_ca = Some(pki.ca());
    }
    for (id, l) in listeners {
        cluster.start_node_with(id, l).await;
    }
    // The cluster forms and assigns shards over mutual TLS.
    cluster.wait_for_balanced_ownership().await;
    let leader: NodeId = cluster.wait_for_leader().await;
    let node = &cluster.nodes[&leader];

    // A client with a certificate from the cluster's CA is served.
    let (cert, key) = pki.issue("operator");
    let tls = deckhand::tls::Tls::client_only(&pki.ca(), Some((&cert, &key))).expect("client tls");
    let options = CtlOptions {
        tls: Some(tls),
        ..CtlOptions::default()
    };
    let mut ctl = connect(node.admin_addr(), options)
        .await
        .expect("connect with a cert");
    let status = ctl.status(true).await.expect("status over mTLS");
    assert!(status.contains("\"role\": \"leader\""), "{status}");
    probe(node.raft_addr(), client_tls(&pki, &cert, &key))
        .await
        .expect("raft probe with the cluster's certificate");

    // Plain text: refused.
    let plain = connect(node.admin_addr(), CtlOptions::default()).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.status(true).await.is_err(),
    };
    assert!(refused, "a plaintext client was served");

    // TLS without a client certificate: refused.
    let tls = deckhand::tls::Tls::client_only(&pki.ca(), None).expect("client tls");
    let options = CtlOptions {
        tls: Some(tls),
        ..CtlOptions::default()
    };
    let refused = match connect(node.admin_addr(), options).await {
        Err(_) => true,
        Ok(mut c) => c.status(true).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // A node with a certificate from another CA cannot send Raft messages
    // (and does not trust the cluster's servers either).
    let (rcert, rkey) = rogue.issue("intruder");
    let rogue_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(Identity::from_pem(
            std::fs::read(&rcert).expect("read"),
            std::fs::read(&rkey).expect("read"),
        ));
    let e = probe(node.raft_addr(), rogue_tls)
        .await
        .expect_err("a foreign certificate was accepted on the raft address");
    eprintln!("foreign certificate refused: {e}");
    assert!(probe(node.raft_addr(), client_tls(&rogue, &rcert, &rkey))
        .await
        .is_err());
    cluster.shutdown().await;
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> tonic::transport::Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect over mTLS")
}

/// An empty heartbeat claiming to come from `node`.
async fn heartbeat_as(
    client: &mut deckhand::proto::worker::worker_service_client::WorkerServiceClient<
        tonic::transport::Channel,
    >,
    node: NodeId,
) -> Result<tonic::Response<deckhand::proto::worker::HeartbeatResponse>, tonic::Status> {
    client
        .heartbeat(deckhand::proto::worker::HeartbeatRequest {
            node_id: node,
            ..Default::default()
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_a_node_can_only_speak_for_itself() {
    use deckhand::proto::worker::worker_service_client::WorkerServiceClient;
    use deckhand::proto::worker::HandBackRequest;

    let (mut cluster, listeners) = TestCluster::prepare(3).await;
    let pki = Pki::new(cluster.dir.path(), "cluster-ca");
    for (id, config) in cluster.configs.iter_mut() {
        let (cert, key) = pki.issue(&format!("node{id}"));
        config.security.tls_cert = Some(cert);
        config.security.tls_key = Some(key);
        config.security.tls_ca = Some(pki.ca());
    }
    for (id, l) in listeners {
        cluster.start_node_with(id, l).await;
    }
    let owners = cluster.wait_for_balanced_ownership().await;
    let leader: NodeId = cluster.wait_for_leader().await;
    let followers = cluster.followers_of(leader);
    let (me, victim) = (followers[0], followers[1]);
    let leader_addr = cluster.nodes[&leader].raft_addr();

    // With its own certificate, a node heartbeats as itself, not as another.
    let (cert, key) = pki.issue(&format!("node{me}"));
    let mut worker =
        WorkerServiceClient::new(tls_channel(leader_addr, client_tls(&pki, &cert, &key)).await);
    let denied = heartbeat_as(&mut worker, victim)
        .await
        .expect_err("a heartbeat as another node was accepted");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    assert!(
        denied
            .message()
            .contains(&format!("node {me}'s but the request claims node {victim}")),
        "{denied}"
    );
    let handed = worker
        .hand_back(HandBackRequest {
            node_id: victim,
            ..Default::default()
        })
        .await
        .expect_err("a hand-back as another node was accepted");
    assert_eq!(handed.code(), tonic::Code::PermissionDenied, "{handed}");
    let own = heartbeat_as(&mut worker, me).await;
    if let Err(e) = &own {
        assert_ne!(
            e.code(),
            tonic::Code::PermissionDenied,
            "its own heartbeat: {e}"
        );
    }

    // An operator's certificate names no node.
    let (ocert, okey) = pki.issue("operator");
    let mut operator =
        WorkerServiceClient::new(tls_channel(leader_addr, client_tls(&pki, &ocert, &okey)).await);
    let denied = heartbeat_as(&mut operator, victim)
        .await
        .expect_err("an operator heartbeat was accepted");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");

    // Raft messages too: a vote request in the victim's name.
    let vote = deckhand::raft::Vote::new(1_000, victim);
    let request: openraft::raft::VoteRequest<deckhand::raft::TypeConfig> =
        openraft::raft::VoteRequest::new(vote, None);
    let payload = deckhand::raft::codec::encode("vote", &request).expect("encode");
    let mut raft =
        RaftServiceClient::new(tls_channel(leader_addr, client_tls(&pki, &cert, &key)).await);
    let denied = raft
        .vote(payload)
        .await
        .expect_err("a vote in another's name was accepted");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");

    // The victim kept its shards and the cluster its leader.
    assert_eq!(cluster.wait_for_leader().await, leader);
    assert_eq!(cluster.wait_for_balanced_ownership().await, owners);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_another_nodes_certificate() {
    let (cluster, mut listeners) = TestCluster::prepare(1).await;
    let pki = Pki::new(cluster.dir.path(), "cluster-ca");
    let mut config = cluster.configs[&1].clone();
    let (cert, key) = pki.issue("node2");
    config.security.tls_cert = Some(cert);
    config.security.tls_key = Some(key);
    config.security.tls_ca = Some(pki.ca());
    let listeners = listeners.remove(&1).expect("node 1's sockets");
    let err = match deckhand::node::Node::start_with(config, listeners).await {
        Ok(_) => panic!("node 1 started with node 2's certificate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("names node 2 but this is node 1"), "{err}");
}
