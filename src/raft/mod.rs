//! Raft: openraft's type configuration, the sled-backed storage, and the
//! node-to-node gRPC transport.
//!
//! # Design
//!
//! - **Types.** Log entries carry [`crate::cluster::Command`]; a node is
//!   described by [`NodeInfo`] (its internal Raft address and its public admin
//!   address), which openraft stores inside every membership entry, so every
//!   node learns every other node's addresses from the log itself.
//! - **Storage** ([`store`]). One sled `Db` per node under `data_dir/raft`,
//!   with three trees: `log` (entries keyed by big-endian index), `meta` (vote,
//!   last purged log id, committed log id) and `sm` (the applied state and the
//!   current snapshot). The vote and appended entries are acknowledged only
//!   after sled has flushed *and* the database file has been `fsync`ed by us.
//! - **Transport** ([`network`], [`service`]). A separate gRPC service on
//!   `raft_addr`. Messages are openraft types serialized as JSON inside a
//!   protobuf `bytes` field ([`codec`]). One lazily connected tonic `Channel`
//!   per peer is created once and reused by every RPC to that peer;
//!   AppendEntries, heartbeats included, go over a long-lived stream on it
//!   ([`append_stream`]). Raft runs on a thread of its own ([`runtime`]).
//!
//! # Invariants
//!
//! - Log indexes in the `log` tree are contiguous, and the first one is right
//!   after the last purged id (asserted on append).
//! - A vote is never reported saved before it is durable.
//! - The applied state and the id of the last applied entry are written in one
//!   sled insert, so a crash never separates them.
//!
//! # Deliberately not done
//!
//! - No streaming snapshot transfer: the replicated state is small (members,
//!   shard map, settings), so a snapshot is one message.
//! - Certificates are read at start; rotating them needs a restart.

pub mod append_stream;
pub mod beat;
pub mod codec;
pub mod network;
pub mod pacer;
pub mod runtime;
pub mod service;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::{Command, CommandResult};

/// Node ids are the cluster state's (`crate::cluster::NodeId`): `raft`
/// depends on `cluster`, never the other way round.
pub use crate::cluster::NodeId;

/// How other nodes and clients reach a member. Stored in membership entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Internal address: Raft and worker RPCs.
    pub raft_addr: String,
    /// Public gRPC admin API address.
    pub admin_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} admin={}", self.raft_addr, self.admin_addr)
    }
}

openraft::declare_raft_types!(
    /// openraft type configuration for deckhand.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// The membership a metrics snapshot carries: the one place that knows
/// where openraft keeps it, so callers ask for a member or the voters.
pub trait MembershipView {
    fn membership(&self) -> &openraft::Membership<NodeId, NodeInfo>;

    /// The member `id`'s addresses, if it is a member (voter or learner).
    fn member(&self, id: NodeId) -> Option<&NodeInfo> {
        self.membership().get_node(&id)
    }

    /// The voters' ids, ascending.
    fn voters(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.membership().voter_ids().collect();
        ids.sort_unstable();
        ids
    }
}

impl MembershipView for RaftMetrics {
    fn membership(&self) -> &openraft::Membership<NodeId, NodeInfo> {
        self.membership_config.membership()
    }
}

impl MembershipView for openraft::metrics::RaftServerMetrics<TypeConfig> {
    fn membership(&self) -> &openraft::Membership<NodeId, NodeInfo> {
        self.membership_config.membership()
    }
}

/// A snapshot's bytes: the JSON of the applied state.
pub type SnapshotData = Vec<u8>;

pub type Raft = openraft::Raft<TypeConfig, store::StateMachineStore>;
/// Why a write through Raft (a command, a membership change) failed.
pub type WriteError =
    openraft::errors::RaftError<TypeConfig, openraft::errors::ClientWriteError<TypeConfig>>;
/// The Raft core stopped (a storage error, a panic, a shutdown).
pub type FatalError = openraft::errors::Fatal<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
