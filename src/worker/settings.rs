//! The timing and limits the worker and coordinator run with, taken from
//! the node's configuration once at start.

use std::time::Duration;

use crate::config::NodeConfig;

/// Timing the worker and coordinator run with (from `[worker]` and `[raft]`).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub heartbeat_interval: Duration,
    pub lease: Duration,
    pub lease_margin: Duration,
    pub pass_interval: Duration,
    pub plan_interval: Duration,
    pub max_releases_per_round: usize,
    pub discovery_interval: Duration,
    /// A leader acknowledges heartbeats only if a quorum acknowledged it
    /// within this long (so a deposed leader cannot renew leases).
    pub leader_freshness: Duration,
    /// Most elements per housekeeping call.
    pub batch: usize,
    /// Whether lock events are used (`tasks.notifications`).
    pub notifications: crate::config::NotificationMode,
    /// With lock events: the longest a queue goes without a call.
    pub sweep_interval: Duration,
    /// Without lock events: the longest a queue goes without a call.
    pub poll_interval: Duration,
    /// Least time between two calls on one queue (except while draining).
    pub call_spacing: Duration,
    /// Housekeeping calls in flight at once per shard.
    pub concurrency: usize,
    /// How long a new leader waits before serving queue gauges:
    /// `leader_freshness + metrics.scrape_interval`.
    pub gauge_holdoff: Duration,
}

impl WorkerSettings {
    pub fn from_config(config: &NodeConfig) -> Self {
        let w = &config.worker;
        Self {
            heartbeat_interval: w.heartbeat_interval,
            lease: w.lease,
            lease_margin: w.lease_margin,
            pass_interval: w.pass_interval,
            plan_interval: w.plan_interval,
            max_releases_per_round: w.max_releases_per_round,
            discovery_interval: w.discovery_interval,
            leader_freshness: config.raft.election_timeout_min,
            batch: config.tasks.batch,
            notifications: config.tasks.notifications,
            sweep_interval: config.tasks.sweep_interval,
            poll_interval: config.tasks.poll_interval,
            call_spacing: config.tasks.call_spacing,
            concurrency: config.tasks.concurrency,
            gauge_holdoff: config.raft.election_timeout_min + config.metrics.scrape_interval,
        }
    }
}
