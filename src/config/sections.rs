//! The `[metrics]` and `[security]` sections of a node's config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}
