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

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod cluster;
mod sections;
pub mod tasks;
mod timing;
pub use cluster::{ClusterConfig, MemberConfig};
pub use sections::{LogConfig, MetricsConfig, SecurityConfig, StoreConfig};
pub use tasks::{NotificationMode, TaskTuning};
pub use timing::{RaftTuning, WorkerTuning};

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
    ("DECKHAND_STORE_CLUSTER", "store.cluster", EnvKind::Boolean),
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
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, any case).
    Boolean,
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
            EnvKind::Boolean => {
                toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(ConfigError::Env {
                            var: var.clone(),
                            message: format!("key `{key}` expects true or false, got {raw:?}"),
                        })
                    }
                })
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

/// A config check's failure: the key and what is wrong with it.
type Check = Result<(), (String, String)>;

fn invalid(key: &str, message: impl Into<String>) -> Check {
    Err((key.to_string(), message.into()))
}

/// Every section checks itself (next to its struct); this checks what
/// spans sections.
fn validate(config: &NodeConfig) -> Check {
    for (key, addr) in [
        ("raft_addr", &config.raft_addr),
        ("admin_addr", &config.admin_addr),
        ("metrics_addr", &config.metrics_addr),
    ] {
        check_addr(addr).or_else(|m| invalid(key, m))?;
    }
    if config.data_dir.as_os_str().is_empty() {
        return invalid("data_dir", "must not be empty");
    }
    config.cluster.check()?;
    if !config
        .cluster
        .members
        .iter()
        .any(|m| m.id == config.node_id)
    {
        let mut known: Vec<_> = config.cluster.members.iter().map(|m| m.id).collect();
        known.sort_unstable();
        return invalid(
            "node_id",
            format!(
                "{} is not among cluster.members (ids {known:?})",
                config.node_id
            ),
        );
    }
    config.raft.check()?;
    config.worker.check()?;
    config.tasks.check()?;
    config.security.check()?;
    config.metrics.check()?;
    config.store.check()?;
    config.log.check()
}

impl NodeConfig {
    /// This node's entry in `cluster.members` (always present after [`load`]).
    pub fn self_member(&self) -> Option<&MemberConfig> {
        self.cluster.members.iter().find(|m| m.id == self.node_id)
    }
}

#[cfg(test)]
mod tests;
