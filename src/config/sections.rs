//! The `[store]`, `[log]`, `[metrics]` and `[security]` sections of a
//! node's config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Check};

/// What `/metrics` exports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Most distinct `queue` label values (Deckard's name before `::`); the
    /// rest are summed under `queue="_other"`. Bounds the series count.
    #[serde(default = "default_max_queue_labels")]
    pub max_queue_labels: usize,
    /// How often Prometheus scrapes the nodes. A new leader serves the queue
    /// gauges only after this long (plus the leader freshness), so that no
    /// Prometheus evaluation sees them from two nodes after a failover.
    #[serde(default = "default_scrape_interval", with = "humantime_serde")]
    pub scrape_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_queue_labels: default_max_queue_labels(),
            scrape_interval: default_scrape_interval(),
        }
    }
}

fn default_scrape_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_max_queue_labels() -> usize {
    crate::metrics::MAX_QUEUE_LABELS
}

/// Optional mutual TLS and admin token (see `crate::tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// This node's certificate chain (PEM), for `raft_addr`, `admin_addr`
    /// and when dialling peers. Set with `tls_key` and `tls_ca`, or none.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs every node's and client's certificate;
    /// connections without a certificate from it are refused.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// A file whose first line is the bearer token every admin mutation
    /// must carry. Unset: mutations need no token.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
}

impl SecurityConfig {
    /// `(cert, key, ca)` when TLS is on.
    pub fn tls_files(&self) -> Option<(&Path, &Path, &Path)> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(c), Some(k), Some(a)) => Some((c, k, a)),
            _ => None,
        }
    }

    /// The three TLS files together, or none.
    pub(super) fn check(&self) -> Check {
        let set = [&self.tls_cert, &self.tls_key, &self.tls_ca].map(|v| v.is_some());
        if set.iter().any(|v| *v) && !set.iter().all(|v| *v) {
            let missing = ["security.tls_cert", "security.tls_key", "security.tls_ca"]
                .iter()
                .zip(set)
                .find(|(_, is_set)| !is_set)
                .map(|(k, _)| *k)
                .unwrap_or("security");
            return invalid(missing, "TLS needs tls_cert, tls_key and tls_ca together");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `redis://host:port/db` or `memory://`; with `cluster`, Deckard's
    /// cluster form `redis://node-1:6379?addr=node-2:6379&addr=...`.
    pub url: String,
    /// The URL names a Redis Cluster (Deckard's `DECKARD_REDIS_CLUSTER_MODE`).
    #[serde(default)]
    pub cluster: bool,
    /// Deckard's key prefix, trimmed of spaces and `:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info,openraft=warn` or `deckhand=debug,info,openraft=warn`
    /// (openraft at info logs every heartbeat the leader sends). `RUST_LOG` wins when set.
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

fn default_key_prefix() -> String {
    "deckard_v1".into()
}
fn default_log_level() -> String {
    "info,openraft=warn".into()
}
fn default_log_format() -> String {
    "text".into()
}

impl StoreConfig {
    /// A known URL scheme and a non-empty key prefix.
    pub(super) fn check(&self) -> Check {
        match crate::store::parse_memory_url(&self.url) {
            Some(Err(message)) => return invalid("store.url", message),
            Some(Ok(_)) if self.cluster => {
                return invalid("store.cluster", "a memory:// store is not a Redis Cluster")
            }
            Some(Ok(_)) => {}
            None if self.url.starts_with("redis://") || self.url.starts_with("rediss://") => {
                if let Err(message) = crate::store::redis_url::parse(&self.url, self.cluster) {
                    return invalid("store.url", message);
                }
            }
            None => {
                return invalid(
                    "store.url",
                    format!(
                        "{:?} has an unknown scheme; expected redis://host:port/db or memory://",
                        self.url
                    ),
                )
            }
        }
        if self.key_prefix.is_empty() {
            return invalid(
                "store.key_prefix",
                "must not be empty (after trimming spaces and ':')",
            );
        }
        Ok(())
    }
}

impl LogConfig {
    /// `text` or `json`.
    pub(super) fn check(&self) -> Check {
        if self.format != "text" && self.format != "json" {
            return invalid(
                "log.format",
                format!("{:?} is not \"text\" or \"json\"", self.format),
            );
        }
        Ok(())
    }
}

impl MetricsConfig {
    /// A scrape interval in (0, 10m]; a label cap in 1..=100000.
    pub(super) fn check(&self) -> Check {
        let scrape = self.scrape_interval;
        if scrape.is_zero() || scrape > Duration::from_secs(600) {
            return invalid(
                "metrics.scrape_interval",
                format!("{scrape:?} is outside (0, 10m]"),
            );
        }
        let labels = self.max_queue_labels;
        if labels == 0 || labels > 100_000 {
            return invalid(
                "metrics.max_queue_labels",
                format!("{labels} is outside 1..=100000"),
            );
        }
        Ok(())
    }
}
