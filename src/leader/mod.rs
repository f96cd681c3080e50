//! The leader's decisions, as a pure state machine.
//!
//! # Design
//!
//! During one term the leader learns what every node runs (heartbeats) and
//! who is leaving (hand-backs), and decides which shards move (planning
//! rounds). [`LeaderTerm`] holds that knowledge and makes those decisions
//! with the clock passed in: `heartbeat`, `hand_back`, then
//! `plan(&ClusterState, members, max_releases, now) -> RoundPlan`. It
//! performs no I/O. The async coordinator (`worker::coordinator`) is the shell around it: it
//! checks that this node leads, converts protobuf at the edge, asks
//! `LeaderTerm` what to do and commits the moves through Raft.
//!
//! The rules, each exercised by a golden scenario under
//! `src/leader/testscripts/`:
//! - a node is gone only after `lease + margin` of silence (or a hand-back);
//!   a new leader starts counting silence from its election, later still if
//!   its predecessor's quorum may have looked fresh (`Timing::freshness`);
//! - a live owner's shard moves in two phases: released, then assigned once
//!   the owner reports it stopped (or goes silent);
//! - a report that was in flight when a node handed back does not undo the
//!   hand-back; a later one does;
//! - at most `max_releases` shards are taken from live owners per round.
//!
//! # Scenario tests
//!
//! `scenario.rs` runs plain-text scripts (`heartbeat n2`, `advance 1.4s`,
//! `plan`, `hand-back n3`, …) against a `LeaderTerm` and a `ClusterState`,
//! and compares the transcript with the checked-in `.golden` file beside
//! each script. `UPDATE_GOLDEN=1 cargo test --lib leader::` rewrites them.
//!
//! # Deliberately not here
//!
//! Raft (whether this node leads, whether its state has caught up with the
//! term), queue discovery and queue statistics: the coordinator's.

mod commit_times;
mod term;
mod views;

#[cfg(test)]
mod scenario;

pub use commit_times::CommitTimes;
pub use term::{
    returned, same_shards, Heard, LeaderTerm, Reassignment, Report, RoundPlan, ShardRun, Timing,
};
pub use views::{shard_views, OwnerLease, ShardView};
