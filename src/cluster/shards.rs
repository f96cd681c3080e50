//! Queue-to-shard mapping and per-shard ownership with fencing epochs.
//!
//! Invariants (asserted where a shard changes):
//! - a shard has at most one owner;
//! - a shard's epoch is the log index of the entry that last changed it, so
//!   every change strictly raises it and epochs never repeat;
//! - `released_from` is set only while the shard has no owner.

use serde::{Deserialize, Serialize};

use crate::cluster::NodeId;

/// The shard of a queue: FNV-1a 64 of the name, modulo the shard count.
///
/// FNV-1a is fixed by its definition, so the mapping is the same in every
/// process, version and platform (unlike Rust's randomized `DefaultHasher`).
pub fn shard_of(queue: &str, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "shard count must be positive");
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = queue
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    (hash % u64::from(shard_count)) as u32
}

/// Bits of a fencing token that hold the epoch (a log index); the cluster's
/// generation sits above them. 2^36 log entries outlast any cluster.
pub const EPOCH_BITS: u32 = 36;

/// The largest cluster generation: tokens stay below 2^53, so Redis's Lua
/// (whose numbers are doubles) compares them exactly.
pub const MAX_GENERATION: u64 = (1 << (53 - EPOCH_BITS)) - 1;

/// The fencing token of `epoch` in a cluster of `generation`: ordered by
/// generation first, so every epoch of a cluster created later (with a
/// higher generation) beats every epoch of an earlier cluster on the same
/// store, whatever their log indices.
pub fn fence_token(generation: u64, epoch: u64) -> u64 {
    assert!(
        generation <= MAX_GENERATION,
        "generation {generation} above {MAX_GENERATION}"
    );
    assert!(
        epoch < 1 << EPOCH_BITS,
        "epoch {epoch} needs more than {EPOCH_BITS} bits"
    );
    (generation << EPOCH_BITS) | epoch
}

/// The generation a fencing token was written by (0: a token from before
/// generations existed, a plain log index).
pub fn token_generation(token: u64) -> u64 {
    token >> EPOCH_BITS
}

/// The epoch (log index) part of a fencing token.
pub fn token_epoch(token: u64) -> u64 {
    token & ((1 << EPOCH_BITS) - 1)
}

/// Ownership of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// The node that runs this shard's tasks, if any.
    pub owner: Option<NodeId>,
    /// Log index of the entry that last assigned or released this shard.
    /// Store operations carry it; the store rejects older epochs.
    pub epoch: u64,
    /// While unowned after a release: the node that must confirm it stopped
    /// before the shard is given to someone else (two-phase handoff).
    pub released_from: Option<NodeId>,
}

/// One change the planner asks for. Each is a compare-and-set on the
/// shard's epoch: if the shard changed since the plan was made, the move is
/// skipped, so a plan computed from a stale view can never undo a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Move {
    /// Give the shard to `to` (it had no owner, or its owner is gone).
    Assign {
        shard: u32,
        to: NodeId,
        expected_epoch: u64,
    },
    /// Take the shard from its live owner; it stays unowned until that owner
    /// reports it stopped (or its lease runs out), then it is assigned.
    Release { shard: u32, expected_epoch: u64 },
}

impl Move {
    pub fn shard(&self) -> u32 {
        match self {
            Move::Assign { shard, .. } | Move::Release { shard, .. } => *shard,
        }
    }
}

impl ShardState {
    /// Applies `m` at log `index`. Returns false (and changes nothing) when
    /// the shard's epoch is not the one the planner saw.
    pub fn apply(&mut self, m: &Move, index: u64) -> bool {
        let expected = match m {
            Move::Assign { expected_epoch, .. } | Move::Release { expected_epoch, .. } => {
                *expected_epoch
            }
        };
        if self.epoch != expected {
            return false;
        }
        assert!(
            index > self.epoch,
            "epoch must grow: {} -> {index}",
            self.epoch
        );
        match *m {
            Move::Assign { to, .. } => {
                self.owner = Some(to);
                self.released_from = None;
            }
            Move::Release { .. } => {
                let Some(owner) = self.owner else {
                    return false;
                };
                self.released_from = Some(owner);
                self.owner = None;
            }
        }
        self.epoch = index;
        debug_assert!(self.owner.is_none() || self.released_from.is_none());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_fnv1a() {
        // Reference values of FNV-1a 64: "" = cbf29ce484222325, "a" = af63dc4c8601ec8c.
        assert_eq!(
            shard_of("", u32::MAX),
            (0xcbf2_9ce4_8422_2325u64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(
            shard_of("a", u32::MAX),
            (0xaf63_dc4c_8601_ec8cu64 % u64::from(u32::MAX)) as u32
        );
        for q in ["q1", "orders::eu", "x"] {
            assert!(shard_of(q, 128) < 128);
            assert_eq!(shard_of(q, 128), shard_of(q, 128));
        }
    }

    #[test]
    fn moves_are_compare_and_set_on_epoch() {
        let mut s = ShardState::default();
        assert!(s.apply(
            &Move::Assign {
                shard: 0,
                to: 2,
                expected_epoch: 0
            },
            5
        ));
        assert_eq!((s.owner, s.epoch), (Some(2), 5));
        // A stale plan (saw epoch 0) is skipped.
        assert!(!s.apply(
            &Move::Assign {
                shard: 0,
                to: 3,
                expected_epoch: 0
            },
            6
        ));
        assert_eq!((s.owner, s.epoch), (Some(2), 5));
        assert!(s.apply(
            &Move::Release {
                shard: 0,
                expected_epoch: 5
            },
            7
        ));
        assert_eq!((s.owner, s.released_from, s.epoch), (None, Some(2), 7));
        assert!(s.apply(
            &Move::Assign {
                shard: 0,
                to: 3,
                expected_epoch: 7
            },
            9
        ));
        assert_eq!((s.owner, s.released_from, s.epoch), (Some(3), None, 9));
    }

    #[test]
    fn releasing_an_unowned_shard_changes_nothing() {
        let mut s = ShardState::default();
        assert!(!s.apply(
            &Move::Release {
                shard: 0,
                expected_epoch: 0
            },
            3
        ));
        assert_eq!(s, ShardState::default());
    }
}
