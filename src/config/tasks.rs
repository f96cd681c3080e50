//! The `[tasks]` section: how owners schedule housekeeping calls.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Check};

/// Whether owners learn of new locks from Redis keyspace notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationMode {
    /// Use them when Redis publishes them, else poll (and say so).
    #[default]
    Auto,
    /// Refuse to start unless Redis publishes them.
    Require,
    /// Never subscribe: poll every queue at `poll_interval`.
    Off,
}

impl NotificationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationMode::Auto => "auto",
            NotificationMode::Require => "require",
            NotificationMode::Off => "off",
        }
    }
}

/// How the housekeeping tasks run on each owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTuning {
    /// Most elements one housekeeping call moves in one queue (a batch).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// `auto`, `require` or `off` (see [`NotificationMode`]).
    #[serde(default)]
    pub notifications: NotificationMode,
    /// With notifications: the longest a queue goes without a call (a lock
    /// event or a due time calls it sooner). Bounds what a lost event or a
    /// new processing deadline can wait.
    #[serde(default = "default_sweep_interval", with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Without notifications (polling): the longest a queue goes without a
    /// call. A lock shorter than this can come back up to this much late.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The least time between two calls on one queue (lock events and due
    /// times closer than this are served by one call), except while a full
    /// batch is drained. Bounds the calls a hot queue costs.
    #[serde(default = "default_call_spacing", with = "humantime_serde")]
    pub call_spacing: Duration,
    /// Housekeeping calls in flight at once per shard.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// No longer used (queues with nothing due cost nothing until an event,
    /// a due time or the sweep); accepted so that older configs still load,
    /// with a warning at start.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_poll_interval: Option<Duration>,
}

impl Default for TaskTuning {
    fn default() -> Self {
        Self {
            batch: default_batch(),
            notifications: NotificationMode::default(),
            sweep_interval: default_sweep_interval(),
            poll_interval: default_poll_interval(),
            call_spacing: default_call_spacing(),
            concurrency: default_concurrency(),
            idle_poll_interval: None,
        }
    }
}

fn default_batch() -> usize {
    500
}
fn default_sweep_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_call_spacing() -> Duration {
    Duration::from_millis(5)
}
fn default_concurrency() -> usize {
    8
}

/// The largest `tasks.batch`: every store moves this many elements of each
/// kind in one call (the store contract runs at this size).
pub const MAX_BATCH: usize = 4000;

impl TaskTuning {
    /// The section's own checks.
    pub(super) fn check(&self) -> Check {
        if self.batch == 0 || self.batch > MAX_BATCH {
            return invalid(
                "tasks.batch",
                format!("{} is outside 1..={MAX_BATCH}", self.batch),
            );
        }
        for (key, value) in [
            ("tasks.sweep_interval", self.sweep_interval),
            ("tasks.poll_interval", self.poll_interval),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return invalid(key, format!("{value:?} is outside (0, 1h]"));
            }
        }
        if self.call_spacing > self.poll_interval.min(self.sweep_interval) {
            return invalid(
                "tasks.call_spacing",
                format!(
                    "{:?} is longer than tasks.poll_interval or tasks.sweep_interval",
                    self.call_spacing
                ),
            );
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return invalid(
                "tasks.concurrency",
                format!("{} is outside 1..=1024", self.concurrency),
            );
        }
        Ok(())
    }
}
