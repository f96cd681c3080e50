//! First-start cluster formation without any manual step.
//!
//! A node whose Raft storage is empty initializes the cluster with the
//! configured initial members only after it has probed **every** other
//! initial member and each answered "same cluster, not initialized yet".
//! Several nodes may pass that check at the same moment and all initialize;
//! openraft allows that when the membership is identical, which it is (it
//! comes from the same config). If any member answers "initialized", this
//! node does not initialize: the cluster exists and its leader will replicate
//! to us.
//!
//! Why every member and not a majority: a node whose data dir was wiped would
//! otherwise be able to re-create an old cluster with another wiped node while
//! the real cluster lives on elsewhere. Requiring all initial members to be
//! pristine makes initialization impossible once any of them has state. The
//! price: the very first start waits until all initial members are up.
//!
//! A restarted node (non-empty storage) never initializes again.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::errors::InitializeError;
use openraft::errors::RaftError;

use crate::config::NodeConfig;
use crate::proto::raft::raft_service_client::RaftServiceClient;
use crate::proto::raft::ProbeRequest;
use crate::raft::network::Channels;
use crate::raft::{NodeId, NodeInfo, Raft};
use crate::shutdown::ShutdownListener;

/// How often an unfinished bootstrap probes the other members again.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The initial membership from the config.
pub fn initial_members(config: &NodeConfig) -> BTreeMap<NodeId, NodeInfo> {
    config
        .cluster
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                NodeInfo {
                    raft_addr: m.raft_addr.clone(),
                    admin_addr: m.admin_addr.clone(),
                },
            )
        })
        .collect()
}

enum ProbeOutcome {
    Pristine,
    Initialized,
    /// Unreachable or misconfigured: try again later.
    NotReady(String),
}

async fn probe(channels: &Channels, cluster: &str, id: NodeId, addr: &str) -> ProbeOutcome {
    let channel = match channels.get(addr) {
        Ok(c) => c,
        Err(e) => return ProbeOutcome::NotReady(format!("bad address {addr}: {e}")),
    };
    let mut client = RaftServiceClient::new(channel);
    let mut request = tonic::Request::new(ProbeRequest {
        cluster_name: cluster.to_string(),
    });
    request.set_timeout(PROBE_TIMEOUT);
    match client.probe(request).await {
        Ok(resp) => {
            let resp = resp.into_inner();
            if resp.node_id != id || resp.cluster_name != cluster {
                ProbeOutcome::NotReady(format!(
                    "{addr} answers as node {} of cluster {:?}, expected node {id} of {cluster:?}",
                    resp.node_id, resp.cluster_name
                ))
            } else if resp.initialized {
                ProbeOutcome::Initialized
            } else {
                ProbeOutcome::Pristine
            }
        }
        Err(status) => ProbeOutcome::NotReady(format!("{addr}: {}", status.message())),
    }
}

/// Runs until this node is part of an initialized cluster, or shutdown.
pub async fn run(
    raft: Raft,
    config: NodeConfig,
    channels: Channels,
    mut shutdown: ShutdownListener,
) {
    if config.cluster.join {
        tracing::info!(
            node = config.node_id,
            "joining an existing cluster: waiting for `deckhand ctl add-node`"
        );
        return;
    }
    let members = initial_members(&config);
    let cluster = config.cluster.name.clone();
    let mut attempts: u64 = 0;
    loop {
        match raft.is_initialized().await {
            Ok(true) => {
                if attempts == 0 {
                    tracing::info!("raft storage has state; rejoining without initialization");
                }
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "raft stopped during bootstrap");
                return;
            }
        }
        let (someone_initialized, waiting_for) =
            probe_others(&channels, &cluster, &members, config.node_id).await;
        if someone_initialized {
            tracing::info!(
                "another initial member already has cluster state; waiting to be replicated to"
            );
            return;
        }
        if waiting_for.is_empty() {
            initialize(&raft, members).await;
            return;
        }
        // Say what we wait for now and then, not on every probe.
        if attempts.is_multiple_of(25) {
            tracing::info!(waiting_for = %waiting_for.join("; "), "first start: waiting for every initial member before forming the cluster");
        }
        attempts += 1;
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// Probes every initial member but `me`: whether one has cluster state
/// already, and which are not ready yet (with why).
async fn probe_others(
    channels: &Channels,
    cluster: &str,
    members: &BTreeMap<NodeId, NodeInfo>,
    me: NodeId,
) -> (bool, Vec<String>) {
    let others: Vec<_> = members.iter().filter(|(id, _)| **id != me).collect();
    let outcomes = futures::future::join_all(
        others
            .iter()
            .map(|(id, info)| probe(channels, cluster, **id, &info.raft_addr)),
    )
    .await;
    let mut waiting_for = Vec::new();
    let mut someone_initialized = false;
    for ((id, _), outcome) in others.iter().zip(outcomes) {
        match outcome {
            ProbeOutcome::Pristine => {}
            ProbeOutcome::Initialized => someone_initialized = true,
            ProbeOutcome::NotReady(why) => waiting_for.push(format!("node {id} ({why})")),
        }
    }
    (someone_initialized, waiting_for)
}

/// Forms the cluster with `members` (every one probed pristine and ready).
async fn initialize(raft: &Raft, members: BTreeMap<NodeId, NodeInfo>) {
    let count = members.len();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(members = count, "initialized new cluster"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            tracing::info!("cluster was initialized meanwhile");
        }
        Err(e) => tracing::error!(error = %e, "cluster initialization failed"),
    }
}
