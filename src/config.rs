//! Node configuration: one TOML file per node, overridable by `DECKHAND_*`
//! environment variables.
//!
//! Every key, its default and its meaning are documented in
//! `cluster-config/local-3/node1.toml`. Errors name the file (or variable),
//! the key and what is wrong, in one line.
//!
//! Invariants of a [`NodeConfig`] returned by [`load`]:
//! - member ids and member addresses are unique, and `node_id` is a member;
//! - `1 <= cluster.shards <= MAX_SHARDS`;
//! - `0 < heartbeat_interval < election_timeout_min < election_timeout_max`;
//! - `store.url` has a known scheme and `store.key_prefix` is non-empty and
//!   has no spaces or `:` at either end.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::MAX_SHARDS;

mod sections;
pub mod tasks;
pub use sections::{MetricsConfig, SecurityConfig};
pub use tasks::{NotificationMode, TaskTuning};

/// One node's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; must be one of `cluster.members`. Never reuse the id of a removed node.
    pub node_id: u64,
    /// Where Raft log, vote and state live (sled). Owned by exactly one node id and cluster.
    pub data_dir: PathBuf,
    /// Listen address for Raft and worker RPCs (internal).
    pub raft_addr: String,
    /// Listen address for the gRPC admin API, health and reflection.
    pub admin_addr: String,
    /// Listen address for Prometheus `/metrics`.
    pub metrics_addr: String,
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub worker: WorkerTuning,
    #[serde(default)]
    pub tasks: TaskTuning,
    pub store: StoreConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub security: SecurityConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Name of the cluster; a data dir of another cluster is refused.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// Number of queue shards, fixed when the cluster is created.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// The initial members. Identical on every node of a new cluster. A
    /// joining node lists itself (its advertised addresses) and any members.
    pub members: Vec<MemberConfig>,
    /// True for a node added to an existing cluster with `ctl add-node`: it
    /// never initializes a cluster and waits to be added.
    #[serde(default)]
    pub join: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    /// Address the other nodes dial for Raft and worker RPCs.
    pub raft_addr: String,
    /// Address clients dial for the admin API.
    pub admin_addr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftTuning {
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(default = "default_election_min", with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(default = "default_election_max", with = "humantime_serde")]
    pub election_timeout_max: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval: default_heartbeat(),
            election_timeout_min: default_election_min(),
            election_timeout_max: default_election_max(),
        }
    }
}

/// Shard ownership timing (DESIGN.md §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTuning {
    /// How often a follower heartbeats the leader (renewing its lease).
    #[serde(default = "default_worker_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a follower may work after the send time of its last acknowledged heartbeat.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Extra silence the leader waits beyond `lease` before reassigning a node's shards.
    #[serde(default = "default_lease_margin", with = "humantime_serde")]
    pub lease_margin: Duration,
    /// Pause between two work passes over a shard's queues.
    #[serde(default = "default_pass_interval", with = "humantime_serde")]
    pub pass_interval: Duration,
    /// How often the leader plans shard moves (also on every relevant event).
    #[serde(default = "default_plan_interval", with = "humantime_serde")]
    pub plan_interval: Duration,
    /// Most shards taken from live owners per planning round (rate limit).
    #[serde(default = "default_max_releases")]
    pub max_releases_per_round: usize,
    /// How often the leader scans the store for queues. With lock events an
    /// owner adopts a new queue at its first lock without waiting for this;
    /// discovery finds the rest (queues holding only active or processing
    /// messages). A queue unseen by three discoveries in a row leaves the lists.
    #[serde(default = "default_discovery_interval", with = "humantime_serde")]
    pub discovery_interval: Duration,
}

impl Default for WorkerTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval: default_worker_heartbeat(),
            lease: default_lease(),
            lease_margin: default_lease_margin(),
            pass_interval: default_pass_interval(),
            plan_interval: default_plan_interval(),
            max_releases_per_round: default_max_releases(),
            discovery_interval: default_discovery_interval(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `redis://host:port/db` or `memory://`.
    pub url: String,
    /// Deckard's key prefix, trimmed of spaces and `:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info,openraft=warn` or `deckhand=debug,info`. `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_cluster_name() -> String {
    "deckhand".into()
}
fn default_shards() -> u32 {
    128
}
fn default_heartbeat() -> Duration {
    Duration::from_millis(50)
}
fn default_election_min() -> Duration {
    Duration::from_millis(150)
}
fn default_election_max() -> Duration {
    Duration::from_millis(300)
}
fn default_worker_heartbeat() -> Duration {
    Duration::from_millis(200)
}
fn default_lease() -> Duration {
    Duration::from_secs(1)
}
fn default_lease_margin() -> Duration {
    Duration::from_millis(300)
}
fn default_pass_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_plan_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_max_releases() -> usize {
    32
}
fn default_discovery_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_key_prefix() -> String {
    "deckard_v1".into()
}
fn default_log_level() -> String {
    "info,openraft=warn".into()
}
fn default_log_format() -> String {
    "text".into()
}

/// What is wrong with a configuration. Each renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: key `{key}`: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// Which environment variable overrides which key, and the key's TOML type.
const ENV_OVERRIDES: &[(&str, &str, EnvKind)] = &[
    ("DECKHAND_NODE_ID", "node_id", EnvKind::Integer),
    ("DECKHAND_DATA_DIR", "data_dir", EnvKind::String),
    ("DECKHAND_RAFT_ADDR", "raft_addr", EnvKind::String),
    ("DECKHAND_ADMIN_ADDR", "admin_addr", EnvKind::String),
    ("DECKHAND_METRICS_ADDR", "metrics_addr", EnvKind::String),
    ("DECKHAND_CLUSTER_NAME", "cluster.name", EnvKind::String),
    (
        "DECKHAND_CLUSTER_SHARDS",
        "cluster.shards",
        EnvKind::Integer,
    ),
    (
        "DECKHAND_RAFT_HEARTBEAT_INTERVAL",
        "raft.heartbeat_interval",
        EnvKind::String,
    ),
    (
        "DECKHAND_RAFT_ELECTION_TIMEOUT_MIN",
        "raft.election_timeout_min",
        EnvKind::String,
    ),
    (
        "DECKHAND_RAFT_ELECTION_TIMEOUT_MAX",
        "raft.election_timeout_max",
        EnvKind::String,
    ),
    (
        "DECKHAND_WORKER_HEARTBEAT_INTERVAL",
        "worker.heartbeat_interval",
        EnvKind::String,
    ),
    ("DECKHAND_WORKER_LEASE", "worker.lease", EnvKind::String),
    (
        "DECKHAND_WORKER_LEASE_MARGIN",
        "worker.lease_margin",
        EnvKind::String,
    ),
    (
        "DECKHAND_WORKER_PASS_INTERVAL",
        "worker.pass_interval",
        EnvKind::String,
    ),
    (
        "DECKHAND_WORKER_PLAN_INTERVAL",
        "worker.plan_interval",
        EnvKind::String,
    ),
    (
        "DECKHAND_WORKER_MAX_RELEASES_PER_ROUND",
        "worker.max_releases_per_round",
        EnvKind::Integer,
    ),
    (
        "DECKHAND_WORKER_DISCOVERY_INTERVAL",
        "worker.discovery_interval",
        EnvKind::String,
    ),
    ("DECKHAND_TASKS_BATCH", "tasks.batch", EnvKind::Integer),
    (
        "DECKHAND_TASKS_POLL_INTERVAL",
        "tasks.poll_interval",
        EnvKind::String,
    ),
    (
        "DECKHAND_TASKS_SWEEP_INTERVAL",
        "tasks.sweep_interval",
        EnvKind::String,
    ),
    (
        "DECKHAND_TASKS_NOTIFICATIONS",
        "tasks.notifications",
        EnvKind::String,
    ),
    (
        "DECKHAND_TASKS_CALL_SPACING",
        "tasks.call_spacing",
        EnvKind::String,
    ),
    (
        "DECKHAND_TASKS_CONCURRENCY",
        "tasks.concurrency",
        EnvKind::Integer,
    ),
    ("DECKHAND_STORE_URL", "store.url", EnvKind::String),
    (
        "DECKHAND_STORE_KEY_PREFIX",
        "store.key_prefix",
        EnvKind::String,
    ),
    ("DECKHAND_LOG_LEVEL", "log.level", EnvKind::String),
    (
        "DECKHAND_SECURITY_TLS_CERT",
        "security.tls_cert",
        EnvKind::String,
    ),
    (
        "DECKHAND_SECURITY_TLS_KEY",
        "security.tls_key",
        EnvKind::String,
    ),
    (
        "DECKHAND_SECURITY_TLS_CA",
        "security.tls_ca",
        EnvKind::String,
    ),
    (
        "DECKHAND_SECURITY_ADMIN_TOKEN_FILE",
        "security.admin_token_file",
        EnvKind::String,
    ),
    (
        "DECKHAND_METRICS_SCRAPE_INTERVAL",
        "metrics.scrape_interval",
        EnvKind::String,
    ),
    (
        "DECKHAND_METRICS_MAX_QUEUE_LABELS",
        "metrics.max_queue_labels",
        EnvKind::Integer,
    ),
    ("DECKHAND_LOG_FORMAT", "log.format", EnvKind::String),
];

#[derive(Clone, Copy)]
enum EnvKind {
    Integer,
    String,
}

/// The environment variables [`load`] reads, for documentation and `--help`.
pub fn env_override_names() -> impl Iterator<Item = (&'static str, &'static str)> {
    ENV_OVERRIDES.iter().map(|(var, key, _)| (*var, *key))
}

/// Reads `path`, applies overrides from the process environment, validates.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with an explicit environment, for tests.
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, env)
}

/// Parses config text as if read from `path` (used in errors only).
pub fn parse(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<NodeConfig, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = e
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((0, 0));
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: one_line(e.message()),
        }
    })?;
    apply_env(&mut table, env)?;
    let config: NodeConfig =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            ConfigError::Key {
                path: path.to_path_buf(),
                key: e.path().to_string(),
                message: one_line(e.inner().message()),
            }
        })?;
    let config = normalize(config);
    validate(&config).map_err(|(key, message)| ConfigError::Key {
        path: path.to_path_buf(),
        key,
        message,
    })?;
    Ok(config)
}

/// Folds a multi-line parser message into one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some((_, key, kind)) = ENV_OVERRIDES.iter().find(|(name, _, _)| *name == var) else {
            continue;
        };
        let value = match kind {
            EnvKind::String => toml::Value::String(raw),
            EnvKind::Integer => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| ConfigError::Env {
                    var: var.clone(),
                    message: format!("key `{key}` expects an integer, got {raw:?}"),
                })?)
            }
        };
        let mut node = &mut *table;
        let mut parts: Vec<&str> = key.split('.').collect();
        let leaf = parts.pop().unwrap_or(key);
        for part in parts {
            let entry = node
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: format!("cannot override `{key}`: `{part}` in the file is not a table"),
            })?;
        }
        node.insert(leaf.to_string(), value);
    }
    Ok(())
}

fn normalize(mut config: NodeConfig) -> NodeConfig {
    config.store.key_prefix = config
        .store
        .key_prefix
        .trim_matches(|c: char| c == ':' || c.is_whitespace())
        .to_string();
    config
}

/// Checks a `host:port` address's shape (the host may be a name).
fn check_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{addr:?} has no valid port (0-65535)"))?;
    Ok(())
}

fn validate(config: &NodeConfig) -> Result<(), (String, String)> {
    let err = |key: &str, message: String| Err((key.to_string(), message));
    for (key, addr) in [
        ("raft_addr", &config.raft_addr),
        ("admin_addr", &config.admin_addr),
        ("metrics_addr", &config.metrics_addr),
    ] {
        check_addr(addr).or_else(|m| err(key, m))?;
    }
    if config.data_dir.as_os_str().is_empty() {
        return err("data_dir", "must not be empty".into());
    }
    let cluster = &config.cluster;
    if cluster.name.is_empty()
        || !cluster
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return err(
            "cluster.name",
            format!(
                "{:?} must be non-empty letters, digits, '-' or '_'",
                cluster.name
            ),
        );
    }
    if cluster.shards == 0 || cluster.shards > MAX_SHARDS {
        return err(
            "cluster.shards",
            format!("{} is outside 1..={MAX_SHARDS}", cluster.shards),
        );
    }
    if cluster.members.is_empty() {
        return err("cluster.members", "at least one member is required".into());
    }
    let mut ids = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, member) in cluster.members.iter().enumerate() {
        if !ids.insert(member.id) {
            return err(
                &format!("cluster.members[{i}].id"),
                format!("duplicate node id {}", member.id),
            );
        }
        for (field, addr) in [
            ("raft_addr", &member.raft_addr),
            ("admin_addr", &member.admin_addr),
        ] {
            let key = format!("cluster.members[{i}].{field}");
            check_addr(addr).or_else(|m| err(&key, m))?;
            if !addrs.insert(addr.clone()) {
                return err(&key, format!("address {addr} is used twice"));
            }
        }
    }
    if !ids.contains(&config.node_id) {
        let mut known: Vec<_> = ids.into_iter().collect();
        known.sort_unstable();
        return err(
            "node_id",
            format!(
                "{} is not among cluster.members (ids {known:?})",
                config.node_id
            ),
        );
    }
    let raft = &config.raft;
    if raft.heartbeat_interval.is_zero() {
        return err(
            "raft.heartbeat_interval",
            "must be greater than zero".into(),
        );
    }
    if raft.heartbeat_interval >= raft.election_timeout_min {
        return err(
            "raft.heartbeat_interval",
            format!(
                "{} must be shorter than raft.election_timeout_min ({})",
                humantime::format_duration(raft.heartbeat_interval),
                humantime::format_duration(raft.election_timeout_min)
            ),
        );
    }
    if raft.election_timeout_min >= raft.election_timeout_max {
        return err(
            "raft.election_timeout_max",
            format!(
                "{} must be longer than raft.election_timeout_min ({})",
                humantime::format_duration(raft.election_timeout_max),
                humantime::format_duration(raft.election_timeout_min)
            ),
        );
    }
    let worker = &config.worker;
    for (key, d) in [
        ("worker.heartbeat_interval", worker.heartbeat_interval),
        ("worker.lease", worker.lease),
        ("worker.pass_interval", worker.pass_interval),
        ("worker.plan_interval", worker.plan_interval),
        ("worker.discovery_interval", worker.discovery_interval),
    ] {
        if d.is_zero() {
            return err(key, "must be greater than zero".into());
        }
    }
    if worker.heartbeat_interval * 2 > worker.lease {
        return err(
            "worker.lease",
            format!(
                "{} must be at least twice worker.heartbeat_interval ({}), or one lost heartbeat stops all work",
                humantime::format_duration(worker.lease),
                humantime::format_duration(worker.heartbeat_interval)
            ),
        );
    }
    if worker.max_releases_per_round == 0 {
        return err("worker.max_releases_per_round", "must be at least 1".into());
    }
    config
        .tasks
        .check()
        .map_err(|(key, message)| (key.to_string(), message))?;
    let s = &config.security;
    let set = [&s.tls_cert, &s.tls_key, &s.tls_ca].map(|v| v.is_some());
    if set.iter().any(|v| *v) && !set.iter().all(|v| *v) {
        let missing = ["security.tls_cert", "security.tls_key", "security.tls_ca"]
            .iter()
            .zip(set)
            .find(|(_, is_set)| !is_set)
            .map(|(k, _)| *k)
            .unwrap_or("security");
        return err(
            missing,
            "TLS needs tls_cert, tls_key and tls_ca together".into(),
        );
    }
    let scrape = config.metrics.scrape_interval;
    if scrape.is_zero() || scrape > Duration::from_secs(600) {
        return err(
            "metrics.scrape_interval",
            format!("{scrape:?} is outside (0, 10m]"),
        );
    }
    let labels = config.metrics.max_queue_labels;
    if labels == 0 || labels > 100_000 {
        return err(
            "metrics.max_queue_labels",
            format!("{labels} is outside 1..=100000"),
        );
    }
    let url = &config.store.url;
    match crate::store::parse_memory_url(url) {
        Some(Err(message)) => return err("store.url", message),
        Some(Ok(_)) => {}
        None if url.starts_with("redis://") => {}
        None => {
            return err(
                "store.url",
                format!(
                    "{url:?} has an unknown scheme; expected redis://host:port/db or memory://"
                ),
            )
        }
    }
    if config.store.key_prefix.is_empty() {
        return err(
            "store.key_prefix",
            "must not be empty (after trimming spaces and ':')".into(),
        );
    }
    if config.log.format != "text" && config.log.format != "json" {
        return err(
            "log.format",
            format!("{:?} is not \"text\" or \"json\"", config.log.format),
        );
    }
    Ok(())
}

impl NodeConfig {
    /// This node's entry in `cluster.members` (always present after [`load`]).
    pub fn self_member(&self) -> Option<&MemberConfig> {
        self.cluster.members.iter().find(|m| m.id == self.node_id)
    }
}

#[cfg(test)]
mod tests;
