//! Raft metrics -> admin protobuf messages.

use std::collections::BTreeSet;

use openraft::ServerState;

use crate::proto::admin::{Member, StatusResponse};
use crate::raft::MembershipView;
use crate::raft::{NodeId, RaftMetrics};

/// The role name used by the admin API and `ctl`.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Members of the latest membership this node knows, voters flagged.
pub fn members(metrics: &RaftMetrics) -> Vec<Member> {
    let membership = metrics.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, info)| Member {
            id: *id,
            raft_addr: info.raft_addr.clone(),
            admin_addr: info.admin_addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

/// This node's status from a metrics snapshot and the applied shard count.
pub fn status(metrics: &RaftMetrics, cluster_name: &str, shard_count: u32) -> StatusResponse {
    let leader_admin_addr = metrics
        .current_leader
        .and_then(|id| metrics.member(id))
        .map(|info| info.admin_addr.clone())
        .unwrap_or_default();
    StatusResponse {
        node_id: metrics.id,
        role: role_name(metrics.state).to_string(),
        leader_id: metrics.current_leader,
        term: metrics.current_term,
        commit_index: metrics.local_committed.as_ref().map(|id| id.index()),
        applied_index: metrics.last_applied.as_ref().map(|id| id.index()),
        last_log_index: metrics.last_log_index,
        members: members(metrics),
        leader_admin_addr,
        cluster_name: cluster_name.to_string(),
        shard_count,
        ..Default::default()
    }
}
