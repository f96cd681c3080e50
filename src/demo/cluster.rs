//! The demo's in-process cluster: real nodes on loopback ports picked at
//! run time, sled in a temporary directory, one shared embedded store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::config::{
    ClusterConfig, LogConfig, MemberConfig, MetricsConfig, NodeConfig, RaftTuning, StoreConfig,
    TaskTuning, WorkerTuning,
};
use crate::node::{Listeners, Node, NodeError};
use crate::raft::NodeId;
use crate::store::memory::MemoryStore;

/// Work counters of a node, summed over its runs (a crash loses nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub moved: u64,
    pub fenced: u64,
}

pub struct DemoCluster {
    /// Holds the nodes' data dirs; removed when dropped.
    pub dir: TempDir,
    pub store: MemoryStore,
    pub configs: BTreeMap<NodeId, NodeConfig>,
    pub nodes: BTreeMap<NodeId, Node>,
    /// Counters of earlier runs of each node (before a crash).
    earlier: BTreeMap<NodeId, Counters>,
}

async fn loopback() -> Result<TcpListener, NodeError> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| NodeError::Bind {
            key: "demo",
            addr: "127.0.0.1:0".into(),
            source,
        })
}

fn addr(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "127.0.0.1:0".into())
}

impl DemoCluster {
    /// Starts `n` nodes sharing `store`, with production timing.
    pub async fn start(n: u64, store: MemoryStore) -> Result<Self, NodeError> {
        let dir = tempfile::tempdir().map_err(NodeError::TempDir)?;
        let mut listeners = BTreeMap::new();
        let mut members = Vec::new();
        let mut metrics = BTreeMap::new();
        for id in 1..=n {
            let l = Listeners {
                raft: loopback().await?,
                admin: loopback().await?,
                metrics: loopback().await?,
            };
            members.push(MemberConfig {
                id,
                raft_addr: addr(&l.raft),
                admin_addr: addr(&l.admin),
            });
            metrics.insert(id, addr(&l.metrics));
            listeners.insert(id, l);
        }
        let configs: BTreeMap<NodeId, NodeConfig> = members
            .iter()
            .map(|m| {
                let config = NodeConfig {
                    node_id: m.id,
                    data_dir: dir.path().join(format!("node{}", m.id)),
                    raft_addr: m.raft_addr.clone(),
                    admin_addr: m.admin_addr.clone(),
                    metrics_addr: metrics[&m.id].clone(),
                    cluster: ClusterConfig {
                        name: "demo".into(),
                        shards: 64,
                        members: members.clone(),
                        join: false,
                    },
                    raft: RaftTuning::default(),
                    worker: WorkerTuning::default(),
                    tasks: TaskTuning::default(),
                    store: StoreConfig {
                        url: "memory://".into(),
                        key_prefix: "deckard_v1".into(),
                        cluster: false,
                    },
                    log: LogConfig::default(),
                    metrics: MetricsConfig::default(),
                    security: Default::default(),
                };
                (m.id, config)
            })
            .collect();
        let mut cluster = Self {
            dir,
            store,
            configs,
            nodes: BTreeMap::new(),
            earlier: BTreeMap::new(),
        };
        for (id, l) in listeners {
            cluster.start_node(id, l).await?;
        }
        Ok(cluster)
    }

    async fn start_node(&mut self, id: NodeId, listeners: Listeners) -> Result<(), NodeError> {
        let config = self.configs[&id].clone();
        let store: crate::store::SharedStore = Arc::new(self.store.clone());
        let node = Node::start_with_store(config, listeners, Some(store)).await?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Restarts a crashed node on its old addresses and data dir.
    pub async fn restart(&mut self, id: NodeId) -> Result<(), NodeError> {
        let listeners = Listeners::bind(&self.configs[&id]).await?;
        self.start_node(id, listeners).await
    }

    /// Stops a node abruptly (no handoff), keeping its counters.
    pub async fn crash(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            let c = Self::counters_of(&node);
            let e = self.earlier.entry(id).or_default();
            e.moved += c.moved;
            e.fenced += c.fenced;
            node.crash().await;
        }
    }

    fn counters_of(node: &Node) -> Counters {
        let c = node.worker.counts();
        Counters {
            moved: c.unlocked_ack + c.unlocked_nack + c.timed_out,
            fenced: c.fenced_writes,
        }
    }

    /// Every node's counters over all its runs, summed.
    pub fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for c in self.earlier.values() {
            t.moved += c.moved;
            t.fenced += c.fenced;
        }
        for node in self.nodes.values() {
            let c = Self::counters_of(node);
            t.moved += c.moved;
            t.fenced += c.fenced;
        }
        t
    }

    /// The leader every running node agrees on, if any.
    pub fn agreed_leader(&self) -> Option<NodeId> {
        let mut leaders = self.nodes.values().map(|n| n.metrics().current_leader);
        let first = leaders.next()??;
        let all = leaders.all(|l| l == Some(first));
        let leads = self
            .nodes
            .get(&first)
            .is_some_and(|n| n.metrics().state == ServerState::Leader);
        (all && leads).then_some(first)
    }

    /// True when every shard is owned by a running node that runs it.
    pub fn all_shards_worked(&self) -> bool {
        let Some(leader) = self.agreed_leader() else {
            return false;
        };
        let state = self.nodes[&leader].state_machine.latest();
        !state.cluster.shards.is_empty()
            && state.cluster.shards.iter().enumerate().all(|(i, s)| {
                s.owner.is_some_and(|o| {
                    self.nodes.get(&o).is_some_and(|n| {
                        n.worker
                            .running()
                            .get(&(i as u32))
                            .is_some_and(|r| r.epoch == s.epoch)
                    })
                })
            })
    }

    /// Stops every node gracefully.
    pub async fn shutdown(self) {
        for (_, node) in self.nodes {
            let _ = tokio::time::timeout(Duration::from_secs(10), node.shutdown()).await;
        }
    }
}
