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
//! 6. Start the worker (shard runner and heartbeats) and the coordinator
//!    (leader-only planning and discovery).
//!
//! # Shutdown
//!
//! [`Node::shutdown`] is graceful: the node retires its worker (gives up its
//! lease, waits for every shard task to exit), a leader hands leadership to
//! the most up-to-date voter and waits (bounded) until another node leads,
//! then the node tells the leader it handed its shards back so they move at
//! once instead of after a lease timeout; then servers stop, Raft stops and
//! sled is synced. [`Node::crash`] skips all of that (tests use it to stand
//! in for `kill -9` inside one process).
//!
//! # Invariants
//!
//! - No data is touched before the config validated and all sockets bound.
//! - Every task this node spawns listens to the one [`Shutdown`] and is
//!   awaited, with a deadline, before [`Node::shutdown`] or [`Node::crash`]
//!   returns. Tasks spawned by others are not: openraft's state machine
//!   worker and replication streams, a blocking fsync, the servers'
//!   connection tasks. Only the first three hold storage (services read a
//!   [`store::AppliedView`], which holds none). openraft's tasks run on the
//!   Raft thread ([`crate::raft::runtime`]), stopped after the node's own
//!   tasks, which drops them; then both wait (at most
//!   [`STORAGE_RELEASE_DEADLINE`], logged if it passes) until the storage is
//!   released and the data dir may be reopened.

pub mod bootstrap;
mod creation;
pub mod identity;
mod metrics_http;
mod servers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::proto::worker::worker_service_client::WorkerServiceClient;
use crate::proto::worker::HandBackRequest;
use crate::raft::network::{Channels, NetworkFactory};
use crate::raft::runtime::RaftRuntime;
use crate::raft::store::{self, StateMachineStore};
use crate::raft::MembershipView;
use crate::raft::{NodeId, Raft, RaftMetrics};
use crate::shutdown::Shutdown;
use crate::store::SharedStore;
use crate::worker::coordinator::Coordinator;
use crate::worker::heartbeat::HeartbeatLoop;
use crate::worker::{runner, WorkerSettings, WorkerShared};

/// How long a leader waits for its successor before shutting down anyway.
const HANDOFF_DEADLINE: Duration = Duration::from_secs(3);
/// A leader hands off only if a quorum acknowledged it this recently.
const HANDOFF_QUORUM_AGE: Duration = Duration::from_secs(1);
/// How long servers get to finish in-flight requests on shutdown.
const SERVER_DRAIN_DEADLINE: Duration = Duration::from_secs(3);
/// How long a stopping node waits for the last handle on its Raft storage
/// (held by tasks that end on their own, such as openraft's state machine
/// worker or a blocking fsync on a loaded disk) before it gives up.
const STORAGE_RELEASE_DEADLINE: Duration = Duration::from_secs(10);

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
    Storage(#[from] store::RaftStorageError),
    #[error("invalid Raft settings: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("the Raft core failed to start: {0}")]
    Raft(openraft::errors::Fatal<crate::raft::TypeConfig>),
    #[error("cannot start the Raft thread: {0}")]
    RaftThread(std::io::Error),
    #[error("cannot create a temporary data dir: {0}")]
    TempDir(std::io::Error),
    #[error(
        "tasks.notifications = \"require\", but the queue store does not publish lock events: {0}"
    )]
    Notifications(crate::store::StoreError),
    #[error("queue store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Security(#[from] crate::tls::TlsError),
    #[error("{key}: {message}")]
    Tls { key: &'static str, message: String },
}

impl NodeError {
    /// The config key the error is about, for the one-line error `main` prints.
    pub fn config_key(&self) -> &'static str {
        match self {
            NodeError::Bind { key, .. } => key,
            NodeError::DataDir(_) | NodeError::Storage(_) => "data_dir",
            NodeError::RaftConfig(_) => "raft",
            NodeError::Raft(_) | NodeError::TempDir(_) => "data_dir",
            NodeError::RaftThread(_) => "raft",
            NodeError::Store(_) => "store.url",
            NodeError::Notifications(_) => "tasks.notifications",
            NodeError::Security(e) => e.key(),
            NodeError::Tls { key, .. } => key,
        }
    }
}

/// The node's listening sockets, bound before anything else happens.
pub struct Listeners {
    pub raft: TcpListener,
    pub admin: TcpListener,
    pub metrics: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &NodeConfig) -> Result<Self, NodeError> {
        Ok(Self {
            raft: bind("raft_addr", &config.raft_addr).await?,
            admin: bind("admin_addr", &config.admin_addr).await?,
            metrics: bind("metrics_addr", &config.metrics_addr).await?,
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
    /// This node's shard work (lease, running shards, counters, test hooks).
    pub worker: Arc<WorkerShared>,
    /// Leader-side coordination (idle while following).
    pub coordinator: Coordinator,
    /// Channels to peers; tests use them to inject partitions.
    pub channels: Channels,
    node_id: NodeId,
    raft_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics_addr: SocketAddr,
    /// Fans the stop signal out to the servers and background tasks.
    shutdown: Shutdown,
    /// The thread Raft's core, its RPC server and the heartbeat pacer run
    /// on; stopped last, since dropping its tasks releases the storage.
    raft_runtime: RaftRuntime,
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
        Self::start_with_store(config, listeners, None).await
    }

    /// Like [`Self::start_with`], with a queue store shared by the caller
    /// (in-process clusters share one embedded store); `None` opens `store.url`.
    ///
    /// In named steps: storage, security, the worker's state, Raft, the
    /// servers, the loops. A failing step returns an error naming the config
    /// key at fault. The steps before Raft start nothing; once Raft is
    /// created its core runs on the Raft thread, and a later failing step
    /// (a server's TLS setup) returns with the node not serving: the Raft
    /// thread ends when its handle is dropped, and the process exits.
    pub async fn start_with_store(
        config: NodeConfig,
        listeners: Listeners,
        store: Option<SharedStore>,
    ) -> Result<Self, NodeError> {
        let addrs = Addrs::of(&listeners)?;
        let storage = Storage::open(&config, store).await?;
        let security = Security::load(&config)?;
        let worker = start_worker(&config, &storage).await?;
        let channels = Channels::with_tls(security.tls.as_ref().map(|t| t.client.clone()));
        let raft_config = Arc::new(raft_config(&config)?);
        let raft_runtime = RaftRuntime::start(config.node_id).map_err(NodeError::RaftThread)?;
        // openraft spawns its core and replication tasks where it is
        // created: on the Raft thread. Its channels are the Raft thread's
        // too (a tonic channel's tasks run where it was first made).
        let network = NetworkFactory::new(channels.for_raft_thread());
        let (log, state_machine) = (storage.log, storage.state_machine.clone());
        let node_id = config.node_id;
        let raft = raft_runtime
            .handle()
            .spawn(
                async move { Raft::new(node_id, raft_config, network, log, state_machine).await },
            )
            .await
            .map_err(|e| NodeError::RaftThread(std::io::Error::other(e.to_string())))?
            .map_err(NodeError::Raft)?;
        let coordinator = Coordinator::new(
            config.node_id,
            raft.clone(),
            storage.state_machine.view(),
            storage.queues.clone(),
            worker.settings.clone(),
            worker.watch_scheduling(),
        );
        let parts = Parts {
            raft,
            state_machine: storage.state_machine,
            queues: storage.queues,
            worker,
            coordinator,
            channels,
        };
        let shutdown = Shutdown::new();
        let mut tasks = servers::serve(
            &config,
            &parts,
            security,
            listeners,
            &shutdown,
            raft_runtime.handle(),
        )
        .await?;
        tasks.extend(spawn_loops(
            &config,
            &parts,
            &shutdown,
            raft_runtime.handle(),
        ));
        tracing::info!(
            node_id = config.node_id,
            raft_addr = %addrs.raft,
            admin_addr = %addrs.admin,
            metrics_addr = %addrs.metrics,
            data_dir = %config.data_dir.display(),
            "node started"
        );
        Ok(Self {
            raft: parts.raft,
            state_machine: parts.state_machine,
            worker: parts.worker,
            coordinator: parts.coordinator,
            channels: parts.channels,
            node_id: config.node_id,
            raft_addr: addrs.raft,
            admin_addr: addrs.admin,
            metrics_addr: addrs.metrics,
            shutdown,
            raft_runtime,
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

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// A copy of the current Raft metrics (the watch guard is not kept).
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Graceful stop: stop shard work, hand off leadership, hand the shards
    /// back to the leader, then stop everything.
    pub async fn shutdown(self) {
        self.retire_worker().await;
        self.hand_off_leadership().await;
        self.hand_back_shards().await;
        self.stop().await;
    }

    /// Gives up the lease and waits until no shard task runs any more.
    async fn retire_worker(&self) {
        self.worker.retire();
        let deadline = tokio::time::Instant::now() + SERVER_DRAIN_DEADLINE;
        while !self.worker.running().is_empty() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "shard tasks still running at shutdown; the leader will wait out their lease"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Tells the leader this node runs nothing any more, so its shards move now.
    async fn hand_back_shards(&self) {
        let state = self.state_machine.latest();
        let owns = state.cluster.owned_by(self.node_id).next().is_some()
            || state
                .cluster
                .shards
                .iter()
                .any(|s| s.released_from == Some(self.node_id));
        if !owns || !self.worker.running().is_empty() {
            return;
        }
        let applied_index = state.applied_index();
        let metrics = self.metrics();
        let Some(leader) = metrics.current_leader.filter(|l| *l != self.node_id) else {
            return;
        };
        let Some(addr) = metrics.member(leader).map(|n| n.raft_addr.clone()) else {
            return;
        };
        let Ok(channel) = self.channels.get(&addr) else {
            return;
        };
        let (incarnation, last_seq) = self.worker.last_report();
        let mut request = tonic::Request::new(HandBackRequest {
            node_id: self.node_id,
            applied_index,
            incarnation,
            last_seq,
        });
        request.set_timeout(HANDOFF_DEADLINE);
        match WorkerServiceClient::new(channel).hand_back(request).await {
            Ok(resp) => tracing::info!(
                leader,
                shards = resp.into_inner().shards,
                "handed shards back"
            ),
            Err(status) => {
                tracing::warn!(leader, error = %status.message(), "hand-back failed; the leader will wait out the lease")
            }
        }
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
        // Without a quorum nobody can take over; do not wait for it.
        let quorum = openraft::LinearizerOption::new(Some(HANDOFF_QUORUM_AGE), false)
            .with_wait_timeout(Duration::ZERO);
        if self.raft.get_read_linearizer(quorum).await.is_err() {
            tracing::info!("no quorum reached recently; skipping the leadership handoff");
            return;
        }
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

    /// Stops Raft, then every task, syncs sled, and returns once the
    /// storage is released (so the data dir can be opened again).
    async fn stop(self) {
        let release = self.state_machine.release_watch();
        let node_id = self.node_id;
        let raft_runtime = self.stop_tasks().await;
        // What is left on the Raft thread (openraft's state machine worker)
        // holds the storage until the thread's runtime is dropped.
        raft_runtime.stop().await;
        let started = tokio::time::Instant::now();
        if !release.wait(STORAGE_RELEASE_DEADLINE).await {
            tracing::error!(
                node_id,
                "the Raft storage is still open {STORAGE_RELEASE_DEADLINE:?} after stopping; its data dir stays locked until the task holding it ends"
            );
        } else if started.elapsed() > Duration::from_secs(1) {
            tracing::warn!(node_id, waited = ?started.elapsed(), "the Raft storage was released late");
        }
        tracing::info!(node_id, "node stopped");
    }

    /// Stops Raft and the tasks; hands back the Raft thread, stopped last.
    async fn stop_tasks(self) -> RaftRuntime {
        // Raft first, so nothing this node says after this point counts.
        match tokio::time::timeout(SERVER_DRAIN_DEADLINE, self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown reported an error"),
            Err(_) => tracing::error!("raft did not shut down within {SERVER_DRAIN_DEADLINE:?}"),
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
        self.raft_runtime
    }
}

/// The voter (other than us) whose replicated log is furthest along.
fn best_successor(metrics: &RaftMetrics) -> Option<NodeId> {
    let voters = metrics.membership().voter_ids();
    let replication = metrics.replication.as_ref();
    voters.filter(|id| *id != metrics.id).max_by_key(|id| {
        replication
            .and_then(|r| r.get(id))
            .and_then(|matched| matched.as_ref().map(|log_id| log_id.index()))
    })
}

/// The addresses the listeners are bound to (port 0 resolved).
struct Addrs {
    raft: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
}

impl Addrs {
    fn of(listeners: &Listeners) -> Result<Self, NodeError> {
        let local = |l: &TcpListener, key| {
            l.local_addr().map_err(|source| NodeError::Bind {
                key,
                addr: String::new(),
                source,
            })
        };
        Ok(Self {
            raft: local(&listeners.raft, "raft_addr")?,
            admin: local(&listeners.admin, "admin_addr")?,
            metrics: local(&listeners.metrics, "metrics_addr")?,
        })
    }
}

/// Step 1: the data dir claimed for this node and cluster, the Raft log and
/// state machine opened, the queue store opened (or the caller's).
struct Storage {
    queues: SharedStore,
    log: store::LogStore,
    state_machine: StateMachineStore,
}

impl Storage {
    async fn open(config: &NodeConfig, shared: Option<SharedStore>) -> Result<Self, NodeError> {
        identity::claim(
            &config.data_dir,
            &identity::Identity {
                node_id: config.node_id,
                cluster_name: config.cluster.name.clone(),
            },
        )?;
        let queues = match shared {
            Some(s) => s,
            None => crate::store::open_with(
                &config.store.url,
                &config.store.key_prefix,
                config.store.cluster,
            )
            .await?
            .as_queue_store(),
        };
        let (log, state_machine) = store::open(&config.data_dir.join("raft"))?;
        Ok(Self {
            queues,
            log,
            state_machine,
        })
    }
}

/// Step 2: TLS (checked to name this node), the sender check, the token.
struct Security {
    tls: Option<crate::tls::Tls>,
    senders: crate::tls::SenderCheck,
    admin_token: Option<String>,
}

impl Security {
    fn load(config: &NodeConfig) -> Result<Self, NodeError> {
        let tls = match config.security.tls_files() {
            Some((cert, key, ca)) => {
                crate::tls::check_node_certificate(cert, config.node_id)?;
                Some(crate::tls::Tls::load(cert, key, ca)?)
            }
            None => None,
        };
        let admin_token = match &config.security.admin_token_file {
            Some(path) => Some(crate::tls::read_token(path)?),
            None => None,
        };
        Ok(Self {
            senders: crate::tls::SenderCheck::new(tls.is_some()),
            tls,
            admin_token,
        })
    }
}

/// Step 3: the worker's shared state and metrics. Before Raft starts:
/// `tasks.notifications = "require"` refuses to start without lock events.
async fn start_worker(
    config: &NodeConfig,
    storage: &Storage,
) -> Result<Arc<WorkerShared>, NodeError> {
    if config.tasks.idle_poll_interval.is_some() {
        tracing::warn!(
            "tasks.idle_poll_interval is no longer used and is ignored: queues are called on \
             events, at their due times and every tasks.sweep_interval (see docs/deckard-compat.md)"
        );
    }
    let metrics = crate::metrics::NodeMetrics::with_label_cap(config.metrics.max_queue_labels);
    let worker = WorkerShared::new(
        config.node_id,
        storage.queues.clone(),
        WorkerSettings::from_config(config),
        metrics,
    );
    crate::worker::events::check_at_start(&worker)
        .await
        .map_err(NodeError::Notifications)?;
    Ok(worker)
}

/// Step 4: openraft's settings from `[raft]`.
fn raft_config(config: &NodeConfig) -> Result<openraft::Config, NodeError> {
    let timing = crate::raft::pacer::openraft_timing(
        millis(config.raft.heartbeat_interval),
        millis(config.raft.election_timeout_min),
    );
    Ok(openraft::Config {
        cluster_name: config.cluster.name.clone(),
        // Not the heartbeat: the basis of openraft's tick and RPC timeouts.
        // The leader's heartbeats come from `HeartbeatPacer` (raft::pacer).
        heartbeat_interval: timing.timer_basis_ms,
        enable_heartbeat: timing.enable_heartbeat,
        election_timeout_min: millis(config.raft.election_timeout_min),
        election_timeout_max: millis(config.raft.election_timeout_max),
        // Snapshots are small; purge the log behind them.
        max_in_snapshot_log_to_keep: 500,
        // A node cut off from the leader must not campaign at a higher
        // term: when it comes back it would depose a healthy leader, and
        // while it campaigns it knows no leader to renew its lease with.
        // Pre-vote asks first; peers that still hear the leader refuse.
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()?)
}

/// What the servers and loops share.
struct Parts {
    raft: Raft,
    state_machine: StateMachineStore,
    queues: SharedStore,
    worker: Arc<WorkerShared>,
    coordinator: Coordinator,
    channels: Channels,
}

type Tasks = Vec<(&'static str, JoinHandle<()>)>;

/// Step 6: the background loops, each stopped by `shutdown`.
/// The heartbeat pacer runs on the Raft thread (`raft_thread`).
fn spawn_loops(
    config: &NodeConfig,
    parts: &Parts,
    shutdown: &Shutdown,
    raft_thread: &tokio::runtime::Handle,
) -> Tasks {
    let sync = crate::worker::sync::SyncLoop {
        shared: parts.worker.clone(),
        applied: parts.state_machine.subscribe(),
        coordinator: parts.coordinator.clone(),
        channels: parts.channels.clone(),
    };
    let heartbeats = HeartbeatLoop {
        shared: parts.worker.clone(),
        raft: parts.raft.clone(),
        coordinator: parts.coordinator.clone(),
        channels: parts.channels.clone(),
    };
    let role = creation::RoleWatch {
        raft: parts.raft.clone(),
        state_machine: parts.state_machine.view(),
        store: parts.queues.clone(),
        shard_count: config.cluster.shards,
    };
    vec![
        (
            "bootstrap",
            tokio::spawn(bootstrap::run(
                parts.raft.clone(),
                config.clone(),
                parts.channels.clone(),
                shutdown.listener(),
            )),
        ),
        (
            "shard runner",
            tokio::spawn(runner::run(
                parts.worker.clone(),
                parts.state_machine.subscribe(),
                shutdown.listener(),
            )),
        ),
        (
            "lock events",
            tokio::spawn(crate::worker::events::run_subscriber(
                parts.worker.clone(),
                shutdown.listener(),
            )),
        ),
        ("sync", tokio::spawn(sync.run(shutdown.listener()))),
        (
            "heartbeat",
            tokio::spawn(heartbeats.run(shutdown.listener())),
        ),
        (
            "coordinator",
            tokio::spawn(parts.coordinator.clone().run(shutdown.listener())),
        ),
        ("role watcher", tokio::spawn(role.run(shutdown.listener()))),
        (
            "raft heartbeats",
            raft_thread.spawn(
                crate::raft::pacer::HeartbeatPacer {
                    raft: parts.raft.clone(),
                    interval: config.raft.heartbeat_interval,
                }
                .run(shutdown.listener()),
            ),
        ),
    ]
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
