//! The replicated cluster state and the commands that change it.
//!
//! # Design
//!
//! Everything in here is pure: no I/O, no clocks, no async. The Raft state
//! machine (`crate::raft::state_machine`) feeds committed [`Command`]s to
//! [`ClusterState::apply`] in log order and persists the result; every node
//! that applies the same log reaches the same [`ClusterState`].
//!
//! The state holds only small, authoritative facts. Membership lives in
//! openraft's own membership entries, not here. High-rate data (queue lists,
//! statistics, heartbeats) never goes through the log.
//!
//! # Invariants
//!
//! - `shard_count` is `0` until the first [`Command::InitCluster`] is applied,
//!   and never changes afterwards: a second `InitCluster` with another count is
//!   rejected, one with the same count is a no-op (a new leader may re-propose it).
//! - `last_index` is the log index of the last applied command and only grows.
//!
//! # Not done here (yet)
//!
//! Shard ownership with epochs and task settings arrive with their issues; they
//! extend [`Command`] and [`ClusterState`] and keep this module free of I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The most shards a cluster may be created with. Shards are planned and
/// reported individually, so the count stays small enough to list.
pub const MAX_SHARDS: u32 = 65_536;

/// A change to the replicated state, proposed by the leader and applied by
/// every node once committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Records the shard count chosen at cluster creation. Proposed by the
    /// first leader (and by any later leader that finds it missing).
    InitCluster { shard_count: u32 },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::InitCluster { shard_count } => write!(f, "InitCluster(shards={shard_count})"),
        }
    }
}

/// What applying a [`Command`] produced. Rejections are deterministic, so
/// every node rejects the same commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A blank or membership entry: nothing to report.
    #[default]
    None,
    Applied,
    Rejected(String),
}

/// The replicated state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Number of shards, fixed at cluster creation; 0 until recorded.
    pub shard_count: u32,
    /// Log index of the last command applied to this state.
    pub last_index: u64,
}

impl ClusterState {
    /// Applies one committed command found at log `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> CommandResult {
        assert!(
            index >= self.last_index,
            "log applied out of order: index {index} after {}",
            self.last_index
        );
        self.last_index = index;
        match command {
            Command::InitCluster { shard_count } => self.init_cluster(*shard_count),
        }
    }

    fn init_cluster(&mut self, shard_count: u32) -> CommandResult {
        if shard_count == 0 || shard_count > MAX_SHARDS {
            return CommandResult::Rejected(format!(
                "shard count {shard_count} is outside 1..={MAX_SHARDS}"
            ));
        }
        if self.shard_count == 0 {
            self.shard_count = shard_count;
            return CommandResult::Applied;
        }
        if self.shard_count == shard_count {
            return CommandResult::Applied;
        }
        CommandResult::Rejected(format!(
            "cluster already has {} shards; the shard count is fixed at creation (asked for {shard_count})",
            self.shard_count
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_cluster_sets_shard_count_once() {
        let mut state = ClusterState::default();
        assert_eq!(
            state.apply(1, &Command::InitCluster { shard_count: 128 }),
            CommandResult::Applied
        );
        assert_eq!(state.shard_count, 128);
        // Same count again: accepted, unchanged.
        assert_eq!(
            state.apply(2, &Command::InitCluster { shard_count: 128 }),
            CommandResult::Applied
        );
        // Another count: rejected, unchanged.
        assert!(matches!(
            state.apply(3, &Command::InitCluster { shard_count: 64 }),
            CommandResult::Rejected(_)
        ));
        assert_eq!(state.shard_count, 128);
        assert_eq!(state.last_index, 3);
    }

    #[test]
    fn init_cluster_rejects_out_of_range_counts() {
        let mut state = ClusterState::default();
        for bad in [0, MAX_SHARDS + 1] {
            assert!(matches!(
                state.apply(1, &Command::InitCluster { shard_count: bad }),
                CommandResult::Rejected(_)
            ));
        }
        assert_eq!(state.shard_count, 0);
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn applying_out_of_order_panics() {
        let mut state = ClusterState::default();
        state.apply(5, &Command::InitCluster { shard_count: 8 });
        state.apply(4, &Command::InitCluster { shard_count: 8 });
    }
}
