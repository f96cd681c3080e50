//! One deckhand node: wiring, startup order and shutdown.
//!
//! # Startup order
//!
//! 1. Bind every listening socket named in the config. A port in use fails
//!    here, before any data is touched.
//! 2. Claim `data_dir` ([`identity`]): refuse another node's or cluster's data.
//! 3. Open the sled Raft storage under `data_dir/raft` and start openraft.
//! 4. Serve the internal Raft service on `raft_addr` and the admin API,
//!    health and reflection on `admin_addr`.
//! 5. [`bootstrap`] the cluster on first start; watch the role and, as
//!    leader, record the configured shard count if the state has none.
//!
//! # Shutdown
//!
//! [`Node::shutdown`] is graceful: a leader first hands leadership to the most
//! up-to-date voter and waits (bounded) until another node leads, so the
//! cluster does not sit out an election timeout; then servers stop, Raft
//! stops and sled is synced. [`Node::crash`] skips the handoff (tests use it
//! to stand in for `kill -9` inside one process).
//!
//! # Invariants
//!
//! - No data is touched before the config validated and all sockets bound.
//! - Every spawned task listens to the one [`Shutdown`] and is awaited, with a
//!   deadline, before [`Node::shutdown`] returns; after it returns the sled
//!   database is closed and may be reopened.

pub mod bootstrap;
pub mod identity;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::admin::service::AdminService;
use crate::cluster::Command;
use crate::config::NodeConfig;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::raft::network::{Channels, NetworkFactory};
use crate::raft::service::RaftRpc;
use crate::raft::store::{self, StateMachineStore};
use crate::raft::{NodeId, Raft, RaftMetrics};
use crate::shutdown::{Shutdown, ShutdownListener};

/// How long a leader waits for its successor before shutting down anyway.
const HANDOFF_DEADLINE: Duration = Duration::from_secs(3);
/// How long servers get to finish in-flight requests on shutdown.
const SERVER_DRAIN_DEADLINE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    DataDir(#[from] identity::IdentityError),
    #[error(transparent)]
    Storage(#[from] store::StoreError),
    #[error("invalid Raft settings: {0}")]
    RaftConfig(String),
    #[error("raft failed: {0}")]
    Raft(String),
}

impl NodeError {
    /// The config key the error is about, for the one-line error `main` prints.
    pub fn config_key(&self) -> &'static str {
        match self {
            NodeError::Bind { key, .. } => key,
            NodeError::DataDir(_) | NodeError::Storage(_) => "data_dir",
            NodeError::RaftConfig(_) => "raft",
            NodeError::Raft(_) => "data_dir",
        }
    }
}

/// The node's listening sockets, bound before anything else happens.
pub struct Listeners {
    pub raft: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &NodeConfig) -> Result<Self, NodeError> {
        Ok(Self {
            raft: bind("raft_addr", &config.raft_addr).await?,
            admin: bind("admin_addr", &config.admin_addr).await?,
        })
    }
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            key,
            addr: addr.to_string(),
            source,
        })
}

/// A running node.
pub struct Node {
    pub raft: Raft,
    pub state_machine: StateMachineStore,
    node_id: NodeId,
    raft_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// Fans the stop signal out to the servers and background tasks.
    shutdown: Shutdown,
    /// Servers and background tasks, awaited on shutdown.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Node {
    /// Binds the configured addresses and starts the node.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let listeners = Listeners::bind(&config).await?;
        Self::start_with(config, listeners).await
    }

    /// Starts the node on already bound sockets (tests bind port 0 first).
    pub async fn start_with(config: NodeConfig, listeners: Listeners) -> Result<Self, NodeError> {
        let local_addr = |l: &TcpListener, key| {
            l.local_addr().map_err(|source| NodeError::Bind {
                key,
                addr: String::new(),
                source,
            })
        };
        let raft_addr = local_addr(&listeners.raft, "raft_addr")?;
        let admin_addr = local_addr(&listeners.admin, "admin_addr")?;

        identity::claim(
            &config.data_dir,
            &identity::Identity {
                node_id: config.node_id,
                cluster_name: config.cluster.name.clone(),
            },
        )?;
        let (log_store, state_machine) = store::open(&config.data_dir.join("raft"))?;

        let raft_config = openraft::Config {
            cluster_name: config.cluster.name.clone(),
            heartbeat_interval: millis(config.raft.heartbeat_interval),
            election_timeout_min: millis(config.raft.election_timeout_min),
            election_timeout_max: millis(config.raft.election_timeout_max),
            // Snapshots are small; purge the log behind them.
            max_in_snapshot_log_to_keep: 500,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::RaftConfig(e.to_string()))?;

        let channels = Channels::default();
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            NetworkFactory::new(channels.clone()),
            log_store,
            state_machine.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        let shutdown = Shutdown::new();
        let mut tasks = Vec::new();

        let raft_service =
            RaftRpc::new(raft.clone(), config.node_id, config.cluster.name.clone()).into_server();
        let mut stop = shutdown.listener();
        let incoming = TcpListenerStream::new(listeners.raft);
        tasks.push((
            "raft server",
            tokio::spawn(async move {
                let result = Server::builder()
                    .add_service(raft_service)
                    .serve_with_incoming_shutdown(incoming, async move { stop.recv().await })
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "raft server failed");
                }
            }),
        ));

        let admin_service = AdminService::new(
            raft.clone(),
            state_machine.clone(),
            config.cluster.name.clone(),
        );
        tasks.push((
            "admin server",
            spawn_admin_server(admin_service, listeners.admin, shutdown.listener()).await,
        ));

        tasks.push((
            "bootstrap",
            tokio::spawn(bootstrap::run(
                raft.clone(),
                config.clone(),
                channels,
                shutdown.listener(),
            )),
        ));
        tasks.push((
            "role watcher",
            tokio::spawn(watch_role(
                raft.clone(),
                state_machine.clone(),
                config.cluster.shards,
                shutdown.listener(),
            )),
        ));

        tracing::info!(
            node_id = config.node_id,
            %raft_addr,
            %admin_addr,
            data_dir = %config.data_dir.display(),
            "node started"
        );
        Ok(Self {
            raft,
            state_machine,
            node_id: config.node_id,
            raft_addr,
            admin_addr,
            shutdown,
            tasks,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A copy of the current Raft metrics (the watch guard is not kept).
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Graceful stop: hand off leadership, then stop everything.
    pub async fn shutdown(self) {
        self.hand_off_leadership().await;
        self.stop().await;
    }

    /// Abrupt stop without handoff, standing in for a killed process.
    pub async fn crash(self) {
        self.stop().await;
    }

    async fn hand_off_leadership(&self) {
        let metrics = self.metrics();
        if metrics.state != ServerState::Leader {
            return;
        }
        let Some(target) = best_successor(&metrics) else {
            tracing::info!("no other voter to hand leadership to");
            return;
        };
        tracing::info!(to = target, "transferring leadership before shutdown");
        if let Err(e) = self.raft.trigger().transfer_leader(target).await {
            tracing::warn!(error = %e, "leadership transfer failed");
            return;
        }
        let me = self.node_id;
        let moved = self
            .raft
            .wait(Some(HANDOFF_DEADLINE))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != Some(me),
                "leadership moved",
            )
            .await;
        match moved {
            Ok(m) => tracing::info!(new_leader = ?m.current_leader, "leadership handed off"),
            Err(e) => {
                tracing::warn!(error = %e, "successor did not take over in time; stopping anyway")
            }
        }
    }

    async fn stop(self) {
        // Raft first, so nothing this node says after this point counts.
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown reported an error");
        }
        self.shutdown.trigger();
        for (name, task) in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(SERVER_DRAIN_DEADLINE, task)
                .await
                .is_err()
            {
                tracing::warn!(task = name, "did not stop in time; aborting");
                abort.abort();
            }
        }
        if let Err(e) = self.state_machine.sync().await {
            tracing::warn!(error = %e, "final storage sync failed");
        }
        tracing::info!(node_id = self.node_id, "node stopped");
    }
}

/// The voter (other than us) whose replicated log is furthest along.
fn best_successor(metrics: &RaftMetrics) -> Option<NodeId> {
    let voters = metrics.membership_config.membership().voter_ids();
    let replication = metrics.replication.as_ref();
    voters.filter(|id| *id != metrics.id).max_by_key(|id| {
        replication
            .and_then(|r| r.get(id))
            .and_then(|matched| matched.as_ref().map(|log_id| log_id.index()))
    })
}

async fn spawn_admin_server(
    admin: AdminService,
    listener: TcpListener,
    mut stop: ShutdownListener,
) -> JoinHandle<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<crate::proto::admin::admin_server::AdminServer<AdminService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1();
    let reflection_v1alpha = reflection().build_v1alpha();
    let incoming = TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let (reflection_v1, reflection_v1alpha) = match (reflection_v1, reflection_v1alpha) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot build reflection service");
                return;
            }
        };
        let result = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(admin.into_server())
            .serve_with_incoming_shutdown(incoming, async move {
                stop.recv().await;
                // Tell health checkers first, so load balancers stop sending.
                health_reporter
                    .set_not_serving::<crate::proto::admin::admin_server::AdminServer<AdminService>>()
                    .await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin server failed");
        }
    })
}

/// Logs role changes, and as a new leader records the shard count once.
async fn watch_role(
    raft: Raft,
    state_machine: StateMachineStore,
    shard_count: u32,
    mut stop: ShutdownListener,
) {
    let mut rx = raft.metrics();
    let mut last: Option<(ServerState, Option<NodeId>)> = None;
    loop {
        let (state, leader, term) = {
            let m = rx.borrow_watched();
            (m.state, m.current_leader, m.current_term)
        };
        if last != Some((state, leader)) {
            let was_leader = matches!(last, Some((ServerState::Leader, _)));
            tracing::info!(
                role = crate::admin::status::role_name(state),
                leader = ?leader,
                term,
                "role changed"
            );
            if state == ServerState::Leader && !was_leader {
                tokio::spawn(record_shard_count(
                    raft.clone(),
                    state_machine.clone(),
                    shard_count,
                    term,
                ));
            }
            last = Some((state, leader));
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.recv() => return,
        }
    }
}

/// Proposes `InitCluster` unless the applied state already has the count.
///
/// A just-elected leader refuses writes until its leadership is established,
/// so this retries for as long as this node leads in the same term.
async fn record_shard_count(
    raft: Raft,
    state_machine: StateMachineStore,
    shard_count: u32,
    term: u64,
) {
    let still_leading = |m: &RaftMetrics| m.state == ServerState::Leader && m.current_term == term;
    loop {
        let recorded = state_machine.applied().await.cluster.shard_count;
        if recorded == shard_count {
            return;
        }
        if recorded != 0 {
            tracing::warn!(
                configured = shard_count,
                cluster = recorded,
                "cluster.shards in the config differs from the cluster's; the cluster's count stays"
            );
            return;
        }
        match raft
            .client_write(Command::InitCluster { shard_count })
            .await
        {
            Ok(_) => {
                tracing::info!(shard_count, "shard count recorded");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "shard count not recorded yet"),
        }
        if !still_leading(&raft.metrics().borrow_watched()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
