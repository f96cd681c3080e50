//! Membership changes on the leader: add a node, remove a node, move the
//! leadership.
//!
//! # Design
//!
//! - **Add**: the node joins as a learner and the call waits until it has
//!   caught up with the log; only then is it made a voter. A node that does
//!   not catch up in [`CATCH_UP_TIMEOUT`] stays a learner, and the error says
//!   so (run `add-node` again, or `remove-node`).
//! - **Remove**: first checked by [`check_removal`] (pure), then the node is
//!   drained so its shards move by the normal release protocol (never two
//!   owners), then its id is retired in the replicated state, then it leaves
//!   the membership. A retired id is refused by `add-node` forever.
//! - **Transfer**: openraft's leadership transfer, waited on until the
//!   target leads.
//!
//! # Invariants
//!
//! - One membership change at a time on this leader (`changing`), and
//!   openraft refuses a change while another is uncommitted.
//! - A removal never leaves zero voters, and never leaves fewer live voters
//!   than a majority of the remaining voters unless the operator forces it.
//! - An id is retired (committed) before the membership change that removes
//!   it, so a crash between the two can only err on the side of "never again".
//!
//! # Deliberately not done
//!
//! Removing the current leader is refused with advice to transfer the
//! leadership first: openraft would keep a removed leader leading until the
//! change commits, which makes the outcome harder to explain to an operator.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ChangeMembers;

use crate::cluster::Command;
use crate::raft::store::AppliedView;
use crate::raft::MembershipView;
use crate::raft::{FatalError, NodeId, NodeInfo, Raft, WriteError};
use crate::worker::coordinator::{CoordError, Coordinator};

/// How long a new learner may take to catch up before `add-node` gives up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `remove-node` waits for the node's shards to move away.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `transfer-leader` waits for the target to lead.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("another membership change is in progress; retry when it has finished")]
    Busy,
    #[error("node {0} is already a voting member")]
    AlreadyMember(NodeId),
    #[error("node id {0} was removed from this cluster; a removed id can never rejoin: give the new node a new id")]
    Retired(NodeId),
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    #[error("invalid {field} {value:?}: {reason}")]
    BadAddress {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("node {0} is the last voter; a cluster cannot remove its last voter")]
    LastVoter(NodeId),
    #[error("removing node {node} would leave {live} live voter(s) of {remaining}, fewer than a majority ({needed}); bring nodes back first, or pass --force")]
    BelowMajority {
        node: NodeId,
        live: usize,
        remaining: usize,
        needed: usize,
    },
    #[error("node {0} is the leader; move the leadership first (`deckhand ctl transfer-leader ID`), then remove it")]
    IsLeader(NodeId),
    #[error("node {node} did not catch up within {after:?}; it stays a learner (is it running at {raft_addr}?). Run add-node again to retry, or remove-node {node}")]
    CatchUpTimeout {
        node: NodeId,
        raft_addr: String,
        after: Duration,
    },
    #[error("node {node} still owns {shards} shard(s) after {after:?}; retry, or pass --force to remove it anyway (its shards move once its lease expires)")]
    DrainTimeout {
        node: NodeId,
        shards: usize,
        after: Duration,
    },
    #[error("node {node} is not a voter; only a voter can lead")]
    NotVoter { node: NodeId },
    #[error("leadership did not move to node {node} within {after:?} (the leader is {leader:?})")]
    TransferTimeout {
        node: NodeId,
        leader: Option<NodeId>,
        after: Duration,
    },
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("raft: {0}")]
    Raft(#[from] WriteError),
    #[error("raft: {0}")]
    RaftStopped(#[from] FatalError),
    #[error("this node stopped while waiting for node {0}'s shards to move; check with `deckhand ctl shards` and retry on another node")]
    Stopping(NodeId),
}

/// Why a removal is unsafe, or `Ok` — pure, for tests.
///
/// `voters` is the current voter set, `live` the members heard from lately.
pub fn check_removal(
    voters: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
    node: NodeId,
    force: bool,
) -> Result<(), MembershipError> {
    if !voters.contains(&node) {
        return Ok(()); // a learner: no quorum changes
    }
    let remaining: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != node).collect();
    if remaining.is_empty() {
        return Err(MembershipError::LastVoter(node));
    }
    let live_remaining = remaining.iter().filter(|v| live.contains(v)).count();
    let needed = remaining.len() / 2 + 1;
    if live_remaining < needed && !force {
        return Err(MembershipError::BelowMajority {
            node,
            live: live_remaining,
            remaining: remaining.len(),
            needed,
        });
    }
    Ok(())
}

/// `host:port` with a numeric port (hosts may be DNS names, as in Kubernetes).
pub fn check_address(field: &'static str, value: &str) -> Result<(), MembershipError> {
    let bad = |reason: &str| MembershipError::BadAddress {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(bad("the host is empty or malformed"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("the port must be a number in 1..=65535")),
    }
}

/// The leader's side of membership changes.
#[derive(Clone)]
pub struct Membership {
    pub raft: Raft,
    pub state_machine: AppliedView,
    pub coordinator: Coordinator,
    pub node_id: NodeId,
    /// Held for the whole of one change: one at a time.
    pub changing: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The membership after a change: id -> (node, voter).
pub type Members = BTreeMap<NodeId, (NodeInfo, bool)>;

impl Membership {
    fn members(&self) -> Members {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| (*id, (n.clone(), voters.contains(id))))
            .collect()
    }

    fn retired(&self, node: NodeId) -> bool {
        self.state_machine.latest().cluster.removed.contains(&node)
    }

    /// Joins `node` as a learner, waits for it to catch up, makes it a voter.
    pub async fn add_node(&self, node: NodeId, info: NodeInfo) -> Result<Members, MembershipError> {
        check_address("raft_addr", &info.raft_addr)?;
        check_address("admin_addr", &info.admin_addr)?;
        let _one = self
            .changing
            .try_lock()
            .map_err(|_| MembershipError::Busy)?;
        self.coordinator.live_nodes().await?; // leads, with a fresh quorum
        if self.retired(node) {
            return Err(MembershipError::Retired(node));
        }
        match self.members().get(&node) {
            Some((_, true)) => return Err(MembershipError::AlreadyMember(node)),
            Some((existing, false)) if *existing != info => {
                return Err(MembershipError::BadAddress {
                    field: "raft_addr",
                    value: info.raft_addr,
                    reason: format!(
                        "node {node} is already a learner at {}; remove it first to change its addresses",
                        existing.raft_addr
                    ),
                });
            }
            _ => {}
        }
        tracing::info!(node, raft_addr = %info.raft_addr, "adding node as a learner");
        let raft_addr = info.raft_addr.clone();
        match tokio::time::timeout(CATCH_UP_TIMEOUT, self.raft.add_learner(node, info, true)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(MembershipError::Raft(e)),
            Err(_) => {
                return Err(MembershipError::CatchUpTimeout {
                    node,
                    raft_addr,
                    after: CATCH_UP_TIMEOUT,
                })
            }
        }
        tracing::info!(node, "learner caught up; promoting to voter");
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), false)
            .await?;
        tracing::info!(node, "node is a voter");
        Ok(self.members())
    }

    /// Drains `node`, retires its id and removes it from the membership.
    pub async fn remove_node(&self, node: NodeId, force: bool) -> Result<Members, MembershipError> {
        let _one = self
            .changing
            .try_lock()
            .map_err(|_| MembershipError::Busy)?;
        let live = self.coordinator.live_nodes().await?;
        let members = self.members();
        if !members.contains_key(&node) {
            return Err(if self.retired(node) {
                MembershipError::Retired(node)
            } else {
                MembershipError::UnknownNode(node)
            });
        }
        if node == self.node_id {
            return Err(MembershipError::IsLeader(node));
        }
        let voters: BTreeSet<NodeId> = members
            .iter()
            .filter(|(_, (_, voter))| *voter)
            .map(|(id, _)| *id)
            .collect();
        check_removal(&voters, &live, node, force)?;
        tracing::info!(node, force, "removing node: draining its shards first");
        match self.coordinator.set_drained(node, true).await {
            Ok(_) => {}
            Err(CoordError::LastWorker(_)) if force => {}
            Err(e) => return Err(e.into()),
        }
        if !force {
            self.wait_until_unowned(node).await?;
        }
        self.coordinator
            .commit(Command::RetireNode { node })
            .await?;
        let change = if voters.contains(&node) {
            ChangeMembers::RemoveVoters(BTreeSet::from([node]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node]))
        };
        self.raft.change_membership(change, false).await?;
        tracing::info!(node, "node removed; its id is retired");
        Ok(self.members())
    }

    async fn wait_until_unowned(&self, node: NodeId) -> Result<(), MembershipError> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut applied = self.state_machine.subscribe();
        loop {
            let owned = applied.borrow_and_update().cluster.owned_by(node).count();
            if owned == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(MembershipError::DrainTimeout {
                    node,
                    shards: owned,
                    after: DRAIN_TIMEOUT,
                });
            }
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline.into(), applied.changed()).await {
                // The state machine is gone: this node stopped.
                return Err(MembershipError::Stopping(node));
            }
        }
    }

    /// Moves the leadership to `node` and waits until it leads.
    pub async fn transfer_leader(&self, node: NodeId) -> Result<NodeId, MembershipError> {
        let members = self.members();
        match members.get(&node) {
            None => return Err(MembershipError::UnknownNode(node)),
            Some((_, false)) => return Err(MembershipError::NotVoter { node }),
            Some(_) => {}
        }
        if node == self.node_id {
            return Ok(node);
        }
        self.coordinator.live_nodes().await?; // leads
        tracing::info!(to = node, "transferring leadership");
        self.raft.trigger().transfer_leader(node).await?;
        let mut metrics = self.raft.metrics();
        let waited = tokio::time::timeout(TRANSFER_TIMEOUT, async {
            loop {
                if metrics.borrow_watched().current_leader == Some(node) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let leader = self.raft.metrics().borrow_watched().current_leader;
        match waited {
            Ok(()) if leader == Some(node) => Ok(node),
            _ => Err(MembershipError::TransferTimeout {
                node,
                leader,
                after: TRANSFER_TIMEOUT,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn removal_keeps_a_live_majority_unless_forced() {
        let voters = set(&[1, 2, 3]);
        // All live: removing one leaves 2 of 2.
        assert!(check_removal(&voters, &set(&[1, 2, 3]), 3, false).is_ok());
        // 3 is dead: removing 2 leaves {1, 3} with one live, not a majority.
        let err = check_removal(&voters, &set(&[1, 2]), 2, false).unwrap_err();
        assert!(matches!(
            err,
            MembershipError::BelowMajority {
                live: 1,
                remaining: 2,
                needed: 2,
                ..
            }
        ));
        assert!(check_removal(&voters, &set(&[1, 2]), 2, true).is_ok());
        // Removing the dead node itself is fine.
        assert!(check_removal(&voters, &set(&[1, 2]), 3, false).is_ok());
        // 5 voters, 2 dead: removing a live one leaves 2 live of 4.
        let five = set(&[1, 2, 3, 4, 5]);
        assert!(check_removal(&five, &set(&[1, 2, 3]), 3, false).is_err());
        assert!(check_removal(&five, &set(&[1, 2, 3]), 5, false).is_ok());
    }

    #[test]
    fn the_last_voter_is_never_removed_even_forced() {
        let err = check_removal(&set(&[1]), &set(&[1]), 1, true).unwrap_err();
        assert!(matches!(err, MembershipError::LastVoter(1)));
        // A learner's removal changes no quorum.
        assert!(check_removal(&set(&[1]), &set(&[]), 4, false).is_ok());
    }

    #[test]
    fn addresses_need_a_host_and_a_numeric_port() {
        assert!(check_address("raft_addr", "10.0.0.1:7101").is_ok());
        assert!(check_address("raft_addr", "deckhand-3.deckhand:7101").is_ok());
        assert!(check_address("raft_addr", "[::1]:7101").is_ok());
        for bad in [
            "",
            "host",
            ":7101",
            "host:0",
            "host:port",
            "ho st:1",
            "host:70000",
        ] {
            assert!(check_address("raft_addr", bad).is_err(), "{bad:?} accepted");
        }
    }
}
