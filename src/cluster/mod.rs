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
//! Submodules: [`shards`] (queue hashing, per-shard ownership and epochs),
//! [`planner`] (the leader's assignment plan), [`lease`] (lease and liveness
//! arithmetic on monotonic instants).
//!
//! # Invariants
//!
//! - `shard_count` is `0` until the first [`Command::InitCluster`] is applied,
//!   and never changes afterwards: a second `InitCluster` with another count is
//!   rejected, one with the same count is a no-op (a new leader may re-propose it).
//! - `shards.len() == shard_count` at all times.
//! - `last_index` is the log index of the last applied command and only grows.
//! - Every shard change sets that shard's epoch to the index of the entry
//!   making it (see [`shards`]), so epochs only grow.
//! - `removed` only grows: a retired node id is never a member again.
//! - `generation` is set with `shard_count` and never changes: the fencing
//!   tokens of this cluster are `fence_token(generation, epoch)`.
//!
//! # Deliberately not done here
//!
//! Membership lives in openraft's own entries, not in [`ClusterState`]: only
//! the retired ids are kept here, so they outlive the membership change.

pub mod lease;
pub mod planner;
pub mod shards;
pub mod tasks;

use std::collections::BTreeSet;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use shards::{shard_of, Move, ShardState};
pub use tasks::{TaskKind, TaskSettings, Tasks};

/// A node's id in the cluster: its Raft id, its shard owner id, the id in
/// its certificate, as configured (`node_id`). Never reused once retired.
pub type NodeId = u64;

/// The most shards a cluster may be created with. Shards are planned and
/// reported individually, so the count stays small enough to list.
pub const MAX_SHARDS: u32 = 65_536;

/// A change to the replicated state, proposed by the leader and applied by
/// every node once committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Records the shard count chosen at cluster creation. Proposed by the
    /// first leader (and by any later leader that finds it missing).
    InitCluster {
        shard_count: u32,
        /// Above every generation that ever wrote fences to the store (the
        /// proposer takes it from the store); 0 in logs written before
        /// generations existed.
        #[serde(default)]
        generation: u64,
    },
    /// Assignments and releases planned by the leader, applied in order.
    Moves { moves: Vec<Move> },
    /// Marks a node drained (it owns no shards until undrained) or undrained.
    SetDrained { node: NodeId, drained: bool },
    /// Pauses or resumes a housekeeping task on every node.
    SetTaskPaused { task: TaskKind, paused: bool },
    /// Makes every owner re-check all its queues for a task now.
    TriggerTask { task: TaskKind },
    /// Records that `node` is being removed from the cluster: its id is
    /// never accepted again (committed before the membership change).
    RetireNode { node: NodeId },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::InitCluster {
                shard_count,
                generation,
            } => write!(
                f,
                "InitCluster(shards={shard_count}, generation={generation})"
            ),
            Command::Moves { moves } => write!(f, "Moves({} moves)", moves.len()),
            Command::SetDrained { node, drained } => {
                write!(f, "SetDrained(node={node}, drained={drained})")
            }
            Command::SetTaskPaused { task, paused } => {
                write!(f, "SetTaskPaused({task}, paused={paused})")
            }
            Command::TriggerTask { task } => write!(f, "TriggerTask({task})"),
            Command::RetireNode { node } => write!(f, "RetireNode({node})"),
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
    /// How many moves took effect and how many were skipped as stale.
    Moved {
        applied: usize,
        skipped: usize,
    },
    Rejected(String),
}

/// The replicated state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Number of shards, fixed at cluster creation; 0 until recorded.
    pub shard_count: u32,
    /// Ownership of every shard, indexed by shard number.
    pub shards: Vec<ShardState>,
    /// Nodes that must own no shards (`ctl drain`), until undrained.
    pub drained: BTreeSet<NodeId>,
    /// Operator settings of the housekeeping tasks.
    #[serde(default)]
    pub tasks: Tasks,
    /// Ids of nodes removed from the cluster; never members again.
    #[serde(default)]
    pub removed: BTreeSet<NodeId>,
    /// This cluster's generation, recorded with the shard count: the high
    /// bits of every fencing token, so a cluster re-created on the same
    /// store outranks the fences its predecessor left (see `shards::fence_token`).
    #[serde(default)]
    pub generation: u64,
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
        let result = match command {
            Command::InitCluster {
                shard_count,
                generation,
            } => self.init_cluster(*shard_count, *generation),
            Command::Moves { moves } => self.apply_moves(moves, index),
            Command::SetDrained { node, drained } => {
                if *drained {
                    self.drained.insert(*node);
                } else {
                    self.drained.remove(node);
                }
                CommandResult::Applied
            }
            Command::SetTaskPaused { task, paused } => {
                self.tasks.set_paused(*task, *paused);
                CommandResult::Applied
            }
            Command::TriggerTask { task } => {
                self.tasks.trigger(*task);
                CommandResult::Applied
            }
            Command::RetireNode { node } => {
                self.removed.insert(*node);
                self.drained.remove(node);
                CommandResult::Applied
            }
        };
        assert_eq!(
            self.shards.len(),
            self.shard_count as usize,
            "shard table size"
        );
        result
    }

    fn apply_moves(&mut self, moves: &[Move], index: u64) -> CommandResult {
        let (mut applied, mut skipped) = (0, 0);
        for m in moves {
            let ok = self
                .shards
                .get_mut(m.shard() as usize)
                .is_some_and(|shard| shard.apply(m, index));
            if ok {
                applied += 1;
            } else {
                skipped += 1;
            }
        }
        CommandResult::Moved { applied, skipped }
    }

    /// The shards `node` owns, in shard order.
    pub fn owned_by(&self, node: NodeId) -> impl Iterator<Item = (u32, &ShardState)> {
        self.shards
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.owner == Some(node))
            .map(|(i, s)| (i as u32, s))
    }

    /// Whether `node` running `shard` at `epoch` is a run the table has
    /// moved past: the shard belongs to another node, at a newer epoch. A
    /// two-phase handoff never gets there (a shard goes to another node only
    /// once its old owner reported it stopped); a node that was declared
    /// gone (paused, cut off, its VM suspended past its lease) and came back
    /// with its old tasks does.
    pub fn is_stale_run(&self, node: NodeId, shard: u32, epoch: u64) -> bool {
        self.shards
            .get(shard as usize)
            .is_some_and(|s| s.epoch > epoch && s.owner.is_some_and(|o| o != node))
    }

    /// The shards `node` owns at exactly the epoch `epochs` gives for them
    /// (e.g. the epochs at which the store fenced it).
    pub fn owned_at<'a>(
        &'a self,
        node: NodeId,
        epochs: &'a std::collections::BTreeMap<u32, u64>,
    ) -> impl Iterator<Item = u32> + 'a {
        self.owned_by(node)
            .filter(move |(shard, s)| epochs.get(shard) == Some(&s.epoch))
            .map(|(shard, _)| shard)
    }

    fn init_cluster(&mut self, shard_count: u32, generation: u64) -> CommandResult {
        if shard_count == 0 || shard_count > MAX_SHARDS {
            return CommandResult::Rejected(format!(
                "shard count {shard_count} is outside 1..={MAX_SHARDS}"
            ));
        }
        if generation > shards::MAX_GENERATION {
            return CommandResult::Rejected(format!(
                "generation {generation} is above {}",
                shards::MAX_GENERATION
            ));
        }
        if self.shard_count == 0 {
            self.shard_count = shard_count;
            self.generation = generation;
            self.shards = vec![ShardState::default(); shard_count as usize];
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
    fn a_run_is_stale_only_once_the_shard_is_another_nodes_at_a_newer_epoch() {
        let mut s = ClusterState::default();
        s.apply(
            1,
            &Command::InitCluster {
                shard_count: 4,
                generation: 1,
            },
        );
        let assign = |shard, to, expected_epoch| Move::Assign {
            shard,
            to,
            expected_epoch,
        };
        s.apply(
            2,
            &Command::Moves {
                moves: vec![assign(0, 7, 0)],
            },
        );
        assert!(!s.is_stale_run(7, 0, 2), "its own current run");
        // Released (phase one): the old owner runs it until it applies that.
        s.apply(
            3,
            &Command::Moves {
                moves: vec![Move::Release {
                    shard: 0,
                    expected_epoch: 2,
                }],
            },
        );
        assert!(!s.is_stale_run(7, 0, 2), "stopping after a release");
        // Given to another node: the old run is stale.
        s.apply(
            4,
            &Command::Moves {
                moves: vec![assign(0, 8, 3)],
            },
        );
        assert!(s.is_stale_run(7, 0, 2));
        assert!(!s.is_stale_run(8, 0, 4), "the new owner's run");
        // Given back to the same node at a newer epoch: its old task may
        // still be ending, which the node handles itself.
        s.apply(
            5,
            &Command::Moves {
                moves: vec![assign(0, 7, 4)],
            },
        );
        assert!(!s.is_stale_run(7, 0, 2));
        assert!(!s.is_stale_run(7, 99, 1), "no such shard");
    }

    #[test]
    fn init_cluster_sets_shard_count_once() {
        let mut state = ClusterState::default();
        assert_eq!(
            state.apply(
                1,
                &Command::InitCluster {
                    shard_count: 128,
                    generation: 1
                }
            ),
            CommandResult::Applied
        );
        assert_eq!(state.shard_count, 128);
        assert_eq!(state.shards.len(), 128);
        // Same count again: accepted, unchanged.
        assert_eq!(
            state.apply(
                2,
                &Command::InitCluster {
                    shard_count: 128,
                    generation: 1
                }
            ),
            CommandResult::Applied
        );
        // Another count: rejected, unchanged.
        assert!(matches!(
            state.apply(
                3,
                &Command::InitCluster {
                    shard_count: 64,
                    generation: 1
                }
            ),
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
                state.apply(
                    1,
                    &Command::InitCluster {
                        shard_count: bad,
                        generation: 1
                    }
                ),
                CommandResult::Rejected(_)
            ));
        }
        assert_eq!(state.shard_count, 0);
    }

    #[test]
    fn moves_set_epochs_to_the_entry_index_and_skip_stale_ones() {
        let mut state = ClusterState::default();
        state.apply(
            1,
            &Command::InitCluster {
                shard_count: 4,
                generation: 1,
            },
        );
        let moves = vec![
            Move::Assign {
                shard: 0,
                to: 2,
                expected_epoch: 0,
            },
            Move::Assign {
                shard: 1,
                to: 3,
                expected_epoch: 0,
            },
            Move::Assign {
                shard: 9,
                to: 3,
                expected_epoch: 0,
            },
        ];
        assert_eq!(
            state.apply(2, &Command::Moves { moves }),
            CommandResult::Moved {
                applied: 2,
                skipped: 1
            }
        );
        assert_eq!(state.shards[0].owner, Some(2));
        assert_eq!(state.shards[0].epoch, 2);
        assert_eq!(
            state.owned_by(3).map(|(i, _)| i).collect::<Vec<_>>(),
            vec![1]
        );
        // A plan made before entry 2 is stale now.
        let stale = vec![Move::Assign {
            shard: 0,
            to: 3,
            expected_epoch: 0,
        }];
        assert_eq!(
            state.apply(3, &Command::Moves { moves: stale }),
            CommandResult::Moved {
                applied: 0,
                skipped: 1
            }
        );
        assert_eq!(state.shards[0].owner, Some(2));
    }

    #[test]
    fn drain_and_undrain() {
        let mut state = ClusterState::default();
        state.apply(
            1,
            &Command::SetDrained {
                node: 2,
                drained: true,
            },
        );
        assert!(state.drained.contains(&2));
        state.apply(
            2,
            &Command::SetDrained {
                node: 2,
                drained: false,
            },
        );
        assert!(state.drained.is_empty());
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn applying_out_of_order_panics() {
        let mut state = ClusterState::default();
        state.apply(
            5,
            &Command::InitCluster {
                shard_count: 8,
                generation: 1,
            },
        );
        state.apply(
            4,
            &Command::InitCluster {
                shard_count: 8,
                generation: 1,
            },
        );
    }
}
