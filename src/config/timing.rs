//! The `[raft]` and `[worker]` sections: election and lease timing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, Check};

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

// The defaults trade failover time for an idle cost of about 0.7–1 % of a core
// (docs/benchmarks.md, "Idle cost and failover"). DESIGN.md suggests a 50 ms
// heartbeat, 150–300 ms elections, 200 ms worker heartbeats and a 1 s lease:
// failover about 0.5 s, but about 1.4 % of a core per idle node, most of it
// the 20 heartbeat rounds a second. With 100 ms and 300–450 ms a leader's
// `kill -9` is noticed and replaced in about 0.8–0.95 s (medians of four
// runs of 5–7 kills), 1.03 s at worst, still "a second or two"; the election
// minimum stays three heartbeats, so one late heartbeat on a loaded machine
// does not start an election. Failover follows `election_timeout_max` more
// than the minimum: openraft's followers refuse to vote for that long after
// they last heard the leader, and a candidate's own timeout is drawn again.
fn default_heartbeat() -> Duration {
    Duration::from_millis(100)
}
fn default_election_min() -> Duration {
    Duration::from_millis(300)
}
fn default_election_max() -> Duration {
    Duration::from_millis(450)
}
// Five heartbeats a lease, as before. The lease must outlast a leader
// failover, or every follower stops its shards until the new leader answers:
// the last heartbeat the dead leader answered was sent at most one interval
// (and a round trip) before it died, so a follower's lease runs out about
// `lease − heartbeat_interval` (1.2 s) after the death at the earliest, above
// the slowest failover measured (1.03 s). Followers heartbeat a new leader
// the moment they learn of it (worker::heartbeat), not at their next interval.
fn default_worker_heartbeat() -> Duration {
    Duration::from_millis(300)
}
fn default_lease() -> Duration {
    Duration::from_millis(1500)
}
// Above `election_timeout_min` (a leader's freshness) by 100 ms: a deposed
// leader can renew a lease for up to its freshness after its successor's
// election, and the 100 ms above that is what is left for clock-rate
// differences (cluster::lease). It was 300 ms over a 150 ms minimum.
fn default_lease_margin() -> Duration {
    Duration::from_millis(400)
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
/// The safety net's pace, as `tasks.sweep_interval` is for known queues:
/// with lock events an owner adopts a new queue at its first pull or lock,
/// so discovery only finds what no event announced (a queue that holds
/// only waiting messages, a missed event) and drops queues that are gone.
/// A `SCAN` reads every key of the database: at 250,000 quiet queues on
/// local-3, one every 5 s took 129 ms of Redis time per second (`INFO
/// commandstats`, `cmdstat_scan`, measured by hand; docs/benchmarks.md).
/// (While a node that runs shards polls, or may just have missed events,
/// the leader discovers every second regardless.)
fn default_discovery_interval() -> Duration {
    Duration::from_secs(30)
}

impl RaftTuning {
    /// `0 < heartbeat_interval < election_timeout_min < election_timeout_max`,
    /// each a whole number of milliseconds (openraft counts in milliseconds).
    pub(super) fn check(&self) -> Check {
        for (key, d) in [
            ("raft.heartbeat_interval", self.heartbeat_interval),
            ("raft.election_timeout_min", self.election_timeout_min),
            ("raft.election_timeout_max", self.election_timeout_max),
        ] {
            if d.subsec_nanos() % 1_000_000 != 0 {
                return invalid(
                    key,
                    format!(
                        "{} is not a whole number of milliseconds",
                        humantime::format_duration(d)
                    ),
                );
            }
        }
        if self.heartbeat_interval.is_zero() {
            return invalid("raft.heartbeat_interval", "must be greater than zero");
        }
        if self.heartbeat_interval >= self.election_timeout_min {
            return invalid(
                "raft.heartbeat_interval",
                format!(
                    "{} must be shorter than raft.election_timeout_min ({})",
                    humantime::format_duration(self.heartbeat_interval),
                    humantime::format_duration(self.election_timeout_min)
                ),
            );
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return invalid(
                "raft.election_timeout_max",
                format!(
                    "{} must be longer than raft.election_timeout_min ({})",
                    humantime::format_duration(self.election_timeout_max),
                    humantime::format_duration(self.election_timeout_min)
                ),
            );
        }
        Ok(())
    }
}

impl WorkerTuning {
    /// Every interval positive; a lease of at least two heartbeats; at
    /// least one release per planning round.
    pub(super) fn check(&self) -> Check {
        for (key, d) in [
            ("worker.heartbeat_interval", self.heartbeat_interval),
            ("worker.lease", self.lease),
            ("worker.pass_interval", self.pass_interval),
            ("worker.plan_interval", self.plan_interval),
            ("worker.discovery_interval", self.discovery_interval),
        ] {
            if d.is_zero() {
                return invalid(key, "must be greater than zero");
            }
        }
        if self.heartbeat_interval * 2 > self.lease {
            return invalid(
                "worker.lease",
                format!(
                    "{} must be at least twice worker.heartbeat_interval ({}), or one lost heartbeat stops all work",
                    humantime::format_duration(self.lease),
                    humantime::format_duration(self.heartbeat_interval)
                ),
            );
        }
        if self.max_releases_per_round == 0 {
            return invalid("worker.max_releases_per_round", "must be at least 1");
        }
        Ok(())
    }
}
