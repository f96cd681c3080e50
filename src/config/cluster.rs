//! The `[cluster]` section: the cluster's name, shard count and members.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{check_addr, invalid, Check};
use crate::cluster::MAX_SHARDS;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Name of the cluster; a data dir of another cluster is refused.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// Number of queue shards, fixed when the cluster is created.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// The initial members. Identical on every node of a new cluster. A
    /// joining node lists itself (its advertised addresses) and any members.
    pub members: Vec<MemberConfig>,
    /// True for a node added to an existing cluster with `ctl add-node`: it
    /// never initializes a cluster and waits to be added.
    #[serde(default)]
    pub join: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    /// Address the other nodes dial for Raft and worker RPCs.
    pub raft_addr: String,
    /// Address clients dial for the admin API.
    pub admin_addr: String,
}

fn default_cluster_name() -> String {
    "deckhand".into()
}
fn default_shards() -> u32 {
    128
}

impl ClusterConfig {
    /// A valid name and shard count; member ids and addresses unique and
    /// well formed.
    pub(super) fn check(&self) -> Check {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid(
                "cluster.name",
                format!(
                    "{:?} must be non-empty letters, digits, '-' or '_'",
                    self.name
                ),
            );
        }
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return invalid(
                "cluster.shards",
                format!("{} is outside 1..={MAX_SHARDS}", self.shards),
            );
        }
        if self.members.is_empty() {
            return invalid("cluster.members", "at least one member is required");
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, member) in self.members.iter().enumerate() {
            if !ids.insert(member.id) {
                return invalid(
                    &format!("cluster.members[{i}].id"),
                    format!("duplicate node id {}", member.id),
                );
            }
            for (field, addr) in [
                ("raft_addr", &member.raft_addr),
                ("admin_addr", &member.admin_addr),
            ] {
                let key = format!("cluster.members[{i}].{field}");
                check_addr(addr).or_else(|m| invalid(&key, m))?;
                if !addrs.insert(addr.clone()) {
                    return invalid(&key, format!("address {addr} is used twice"));
                }
            }
        }
        Ok(())
    }
}
