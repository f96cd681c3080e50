//! In-process cluster harness: real gRPC on loopback, real sled directories.
//!
//! Every node's sockets are bound on port 0 first and the addresses read
//! back, so tests run in parallel. Waiting is always "poll a condition until a
//! deadline", never a fixed sleep.

#![allow(dead_code)]

pub mod check;
pub mod deckard;
pub mod pki;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deckhand::config::{
    ClusterConfig, LogConfig, MemberConfig, NodeConfig, RaftTuning, StoreConfig, WorkerTuning,
};
use deckhand::node::{Listeners, Node};
use deckhand::raft::{NodeId, RaftMetrics};
use deckhand::store::memory::MemoryStore;
use openraft::ServerState;
use tempfile::TempDir;
use tokio::net::TcpListener;

/// Generous deadline for anything an election is involved in: tests share
/// two cores with other tests' clusters.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Raft timing for tests: elections three to four times slower than the
/// production defaults, so a loaded machine does not cause spurious ones.
pub fn test_raft_tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(1000),
        election_timeout_max: Duration::from_millis(2000),
    }
}

/// Worker timing for tests: a lease long enough to survive a loaded machine.
pub fn test_worker_tuning() -> WorkerTuning {
    WorkerTuning {
        heartbeat_interval: Duration::from_millis(200),
        lease: Duration::from_millis(2000),
        lease_margin: Duration::from_millis(500),
        pass_interval: Duration::from_millis(50),
        plan_interval: Duration::from_millis(100),
        max_releases_per_round: 32,
        discovery_interval: Duration::from_millis(200),
    }
}

pub struct TestCluster {
    /// Holds every node's data dir; removed when the cluster is dropped.
    pub dir: TempDir,
    /// The in-memory store, recording accepted operations (the default).
    pub store: MemoryStore,
    /// The store the nodes use: `store` unless started on another one.
    pub shared: deckhand::store::SharedStore,
    pub configs: BTreeMap<NodeId, NodeConfig>,
    pub nodes: BTreeMap<NodeId, Node>,
}

async fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback port 0")
}

fn addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().expect("local addr")
}

impl TestCluster {
    /// Configs and bound sockets for `n` nodes, nothing started.
    pub async fn prepare(n: u64) -> (Self, BTreeMap<NodeId, Listeners>) {
        init_test_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut listeners = BTreeMap::new();
        let mut members = Vec::new();
        let mut metrics_addrs = BTreeMap::new();
        for id in 1..=n {
            let l = Listeners {
                raft: loopback_listener().await,
                admin: loopback_listener().await,
                metrics: loopback_listener().await,
            };
            metrics_addrs.insert(id, addr(&l.metrics).to_string());
            members.push(MemberConfig {
                id,
                raft_addr: addr(&l.raft).to_string(),
                admin_addr: addr(&l.admin).to_string(),
            });
            listeners.insert(id, l);
        }
        let configs = members
            .iter()
            .map(|m| {
                let config = NodeConfig {
                    node_id: m.id,
                    data_dir: dir.path().join(format!("node{}", m.id)),
                    raft_addr: m.raft_addr.clone(),
                    admin_addr: m.admin_addr.clone(),
                    // The bound port, so a restarted node serves where it did.
                    metrics_addr: metrics_addrs[&m.id].clone(),
                    cluster: ClusterConfig {
                        name: "test".into(),
                        shards: 16,
                        members: members.clone(),
                        join: false,
                    },
                    raft: test_raft_tuning(),
                    worker: test_worker_tuning(),
                    tasks: deckhand::config::TaskTuning::default(),
                    store: StoreConfig {
                        url: "memory://".into(),
                        key_prefix: "deckard_v1".into(),
                        cluster: false,
                    },
                    log: LogConfig::default(),
                    // Queue gauges return one second after a failover.
                    metrics: deckhand::config::MetricsConfig {
                        scrape_interval: Duration::from_secs(1),
                        ..Default::default()
                    },
                    security: Default::default(),
                };
                (m.id, config)
            })
            .collect();
        let store = MemoryStore::with_history();
        let cluster = Self {
            dir,
            shared: Arc::new(store.clone()),
            store,
            configs,
            nodes: BTreeMap::new(),
        };
        (cluster, listeners)
    }

    /// Starts `n` nodes in id order.
    pub async fn start(n: u64) -> Self {
        Self::start_on(n, None).await
    }

    /// Starts `n` nodes sharing `store` (default: the in-memory store).
    pub async fn start_on(n: u64, store: Option<deckhand::store::SharedStore>) -> Self {
        Self::start_configured(n, store, |_| {}).await
    }

    /// [`Self::start_on`], with every node's config changed by `tune` first.
    pub async fn start_configured(
        n: u64,
        store: Option<deckhand::store::SharedStore>,
        tune: impl Fn(&mut NodeConfig),
    ) -> Self {
        let (mut cluster, listeners) = Self::prepare(n).await;
        for config in cluster.configs.values_mut() {
            tune(config);
        }
        if let Some(store) = store {
            cluster.shared = store;
        }
        for (id, l) in listeners {
            cluster.start_node_with(id, l).await;
        }
        cluster
    }

    pub async fn start_node_with(&mut self, id: NodeId, listeners: Listeners) {
        let config = self.configs[&id].clone();
        let store = self.shared.clone();
        let node = within(
            &format!("start node {id}"),
            Node::start_with_store(config, listeners, Some(store)),
        )
        .await
        .expect("node starts");
        self.nodes.insert(id, node);
    }

    /// Restarts a stopped node on its old addresses and data dir.
    pub async fn restart(&mut self, id: NodeId) {
        assert!(!self.nodes.contains_key(&id), "node {id} is still running");
        let config = self.configs[&id].clone();
        let listeners = Listeners::bind(&config)
            .await
            .expect("rebind the node's ports");
        self.start_node_with(id, listeners).await;
    }

    /// Stops a node abruptly: no leadership handoff.
    pub async fn crash(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node is running");
        within(&format!("crash node {id}"), node.crash()).await;
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.configs[&id].data_dir.clone()
    }

    pub fn metrics(&self) -> BTreeMap<NodeId, RaftMetrics> {
        self.nodes
            .iter()
            .map(|(id, n)| (*id, n.metrics()))
            .collect()
    }

    /// The leader every running node agrees on, if they all agree and it is
    /// running. A node started to join (`start_joining`) counts only once
    /// its membership names it: until `add-node`, it has no leader to agree on.
    pub fn agreed_leader(&self) -> Option<NodeId> {
        let mut metrics = self.metrics();
        metrics.retain(|id, m| {
            !self.configs[id].cluster.join
                || m.membership_config.membership().get_node(id).is_some()
        });
        let first = metrics.values().next()?.current_leader?;
        let all_agree = metrics.values().all(|m| m.current_leader == Some(first));
        let leader_leads = metrics
            .get(&first)
            .is_some_and(|m| m.state == ServerState::Leader);
        (all_agree && leader_leads).then_some(first)
    }

    /// Waits until every running node agrees on one running leader.
    pub async fn wait_for_leader(&self) -> NodeId {
        wait_until("all running nodes agree on a leader", || async {
            self.agreed_leader()
        })
        .await
    }

    /// [`Self::wait_for_leader`], and then until that leader accepts writes:
    /// a new leader refuses them (`ForwardToLeader`, `LeaseExpired`) until a
    /// quorum has acknowledged it within its lease, openraft's
    /// `election_timeout_max`, which the first replication after the
    /// election brings. Waits for an acknowledgement younger than half the
    /// lease, so the write that follows finds the lease still valid.
    pub async fn wait_for_writable_leader(&self) -> NodeId {
        wait_until(
            "all running nodes agree on a leader a quorum acknowledged",
            || async {
                let leader = self.agreed_leader()?;
                let lease = self.configs[&leader].raft.election_timeout_max;
                let m = self.nodes[&leader].metrics();
                m.last_quorum_acked
                    .as_ref()
                    .is_some_and(|at| openraft::Instant::elapsed(&**at) < lease / 2)
                    .then_some(leader)
            },
        )
        .await
    }

    /// Every running node except `leader`, in id order.
    pub fn followers_of(&self, leader: NodeId) -> Vec<NodeId> {
        self.nodes
            .keys()
            .copied()
            .filter(|n| *n != leader)
            .collect()
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.metrics()
            .into_iter()
            .filter(|(_, m)| m.state == ServerState::Leader)
            .map(|(id, _)| id)
            .collect()
    }

    /// Stops every node gracefully. Returns the data directory, which is
    /// deleted when the returned value is dropped.
    pub async fn shutdown(self) -> TempDir {
        for (id, node) in self.nodes {
            within(&format!("shut down node {id}"), node.shutdown()).await;
        }
        self.dir
    }
}

/// Awaits `f`, panicking with `what` if it takes longer than [`DEADLINE`]:
/// a hang becomes a failure that says where it happened.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {DEADLINE:?}"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics at [`DEADLINE`].
pub async fn wait_until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_within(DEADLINE, what, check).await
}

/// [`wait_until`] with another deadline (for conditions that must hold
/// well before something slower, such as a sweep, could make them hold).
pub async fn wait_until_within<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs to the test's captured output when `RUST_LOG` is set.
pub fn init_test_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

impl TestCluster {
    /// Creates `n` queues named `q0..` in the shared store.
    pub fn add_queues(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let q = format!("q{i}");
                self.store.add_queue(&q).expect("valid queue name");
                q
            })
            .collect()
    }

    /// The applied state on the current leader.
    pub async fn leader_state(&self) -> Arc<deckhand::raft::store::AppliedState> {
        let leader = self.wait_for_leader().await;
        self.nodes[&leader].state_machine.latest()
    }

    /// Waits until every shard is owned by a follower, owners differ by at
    /// most one shard, the leader owns none (when followers run), and every
    /// owner is running exactly what it owns. Returns shard -> owner.
    pub async fn wait_for_balanced_ownership(&self) -> BTreeMap<u32, NodeId> {
        wait_until("shards are owned, balanced and running", || async {
            let leader = self.agreed_leader()?;
            let state = self.nodes[&leader].state_machine.latest();
            let shards = &state.cluster.shards;
            if shards.is_empty() || shards.iter().any(|s| s.owner.is_none()) {
                return None;
            }
            let owners: BTreeMap<u32, NodeId> = shards
                .iter()
                .enumerate()
                .map(|(i, s)| (i as u32, s.owner.expect("checked")))
                .collect();
            // An owner that is not (or no longer) a node of this cluster,
            // e.g. one removed and crashed, cannot be checked for running
            // its shards: not settled until the leader moves them.
            if owners.values().any(|o| !self.nodes.contains_key(o)) {
                return None;
            }
            let followers: Vec<NodeId> = self
                .nodes
                .keys()
                .copied()
                .filter(|n| *n != leader)
                .collect();
            let counts: Vec<usize> = followers
                .iter()
                .map(|f| owners.values().filter(|o| *o == f).count())
                .collect();
            let leader_owns = owners.values().any(|o| *o == leader);
            let (max, min) = (counts.iter().max()?, counts.iter().min()?);
            if leader_owns && !followers.is_empty() || max - min > 1 {
                return None;
            }
            // Each owner runs exactly its shards, at the assigned epochs.
            for (id, node) in &self.nodes {
                let running = node.worker.running();
                let mine: BTreeMap<u32, u64> = shards
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.owner == Some(*id))
                    .map(|(i, s)| (i as u32, s.epoch))
                    .collect();
                let runs: BTreeMap<u32, u64> = running.iter().map(|(s, r)| (*s, r.epoch)).collect();
                if runs != mine {
                    return None;
                }
            }
            Some(owners)
        })
        .await
    }
}

impl TestCluster {
    /// Waits until every queue's fence in the store equals its shard's
    /// current epoch: each owner has worked each of its queues.
    pub async fn wait_for_queues_worked(&self, queues: &[String]) {
        use deckhand::store::QueueStore;
        wait_until(
            "every queue was written under its owner's epoch",
            || async {
                let state = self.leader_state().await;
                let count = state.cluster.shard_count;
                for q in queues {
                    let shard =
                        &state.cluster.shards[deckhand::cluster::shard_of(q, count) as usize];
                    shard.owner?;
                    let token = deckhand::cluster::shards::fence_token(
                        state.cluster.generation,
                        shard.epoch,
                    );
                    if self.store.fence_of(q).await.ok()? != token {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }
}

impl TestCluster {
    /// Cuts `id` off from every other node, both ways (Raft and worker RPCs).
    /// The node still reaches the store.
    pub fn partition(&self, id: NodeId) {
        let addr = |n: NodeId| self.configs[&n].raft_addr.clone();
        for (other, node) in &self.nodes {
            if *other == id {
                for peer in self.configs.keys().filter(|p| **p != id) {
                    node.channels.block(&addr(*peer));
                }
            } else {
                node.channels.block(&addr(id));
            }
        }
    }

    /// Moves leadership from `from` to `to` and waits until every node
    /// agrees that `to` leads.
    pub async fn transfer_leadership(&self, from: NodeId, to: NodeId) {
        let trigger = self.nodes[&from].raft.trigger();
        within("transfer leadership", trigger.transfer_leader(to))
            .await
            .expect("transfer");
        wait_until("the new leader leads", || async {
            self.agreed_leader().filter(|l| *l == to)
        })
        .await;
    }

    /// Heals every partition.
    pub fn heal(&self) {
        for node in self.nodes.values() {
            node.channels.unblock_all();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback; `None` when the node does not answer
/// (stopped) or answers with anything but 200.
pub async fn try_http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    if !(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")) {
        return None;
    }
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// The value of every sample of `metric` in an exposition, with its labels.
pub fn samples(body: &str, metric: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name == metric).then(|| (series.to_string(), value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

/// A plain HTTP/1.0 GET on loopback; returns the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

impl TestCluster {
    /// Starts a new node `id` configured to join this cluster (it never
    /// initializes one); add it with `add-node` afterwards.
    pub async fn start_joining(&mut self, id: NodeId) -> MemberConfig {
        assert!(!self.configs.contains_key(&id), "node {id} exists");
        let l = Listeners {
            raft: loopback_listener().await,
            admin: loopback_listener().await,
            metrics: loopback_listener().await,
        };
        let me = MemberConfig {
            id,
            raft_addr: addr(&l.raft).to_string(),
            admin_addr: addr(&l.admin).to_string(),
        };
        let template = self.configs.values().next().expect("a node").clone();
        let mut members = template.cluster.members.clone();
        members.push(me.clone());
        let config = NodeConfig {
            node_id: id,
            data_dir: self.dir.path().join(format!("node{id}")),
            raft_addr: me.raft_addr.clone(),
            admin_addr: me.admin_addr.clone(),
            metrics_addr: addr(&l.metrics).to_string(),
            cluster: ClusterConfig {
                members,
                join: true,
                ..template.cluster.clone()
            },
            ..template
        };
        self.configs.insert(id, config);
        self.start_node_with(id, l).await;
        me
    }

    /// Voter ids in the leader's current membership.
    pub fn voters(&self) -> Option<Vec<NodeId>> {
        let leader = self.agreed_leader()?;
        let m = self.nodes[&leader].metrics();
        Some(m.membership_config.membership().voter_ids().collect())
    }
}

/// Deckard-like traffic on the in-memory store until `stop`: add, pull,
/// ack or nack with short locks, leave some to time out. Returns the
/// number of messages added.
pub async fn traffic(
    store: MemoryStore,
    queues: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    use deckhand::store::{now_ms, DeckardClient, LockKind};
    let mut added = 0u64;
    let mut round = 0u64;
    loop {
        for (i, q) in queues.iter().enumerate() {
            let now = now_ms();
            let id = format!("{q}-{round}");
            if store.add(q, &[(id, now as f64)]).await.unwrap_or(0) > 0 {
                added += 1;
            }
            let pulled = store.pull(q, 2, now, 300).await.unwrap_or_default();
            for (j, id) in pulled.iter().enumerate() {
                let kind = if (i + j) % 2 == 0 {
                    LockKind::Ack
                } else {
                    LockKind::Nack
                };
                // Every third message is left to time out.
                if !(i + j + round as usize).is_multiple_of(3) {
                    let _ = store.release(q, kind, id, now, 50, None).await;
                }
            }
        }
        round += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.changed() => return added,
        }
    }
}
