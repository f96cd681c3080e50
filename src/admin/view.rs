//! What `deckhand ctl` prints: JSON documents (stable field names, see
//! DESIGN.md §4) and human tables.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::Table;
use serde::Serialize;

use crate::proto::admin::{Member, MembersResponse, ShardsResponse, StatusResponse, TasksResponse};

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub raft_addr: String,
    pub admin_addr: String,
    pub voter: bool,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub node_id: u64,
    pub role: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub cluster_name: String,
    pub shard_count: u32,
    pub leader_admin_addr: Option<String>,
    pub shards_owned: u32,
    pub shards_running: u32,
    pub lease_remaining_ms: u64,
    pub fenced_writes: u64,
    pub drained: bool,
    /// How this node finds new locks (see `worker::events`).
    pub scheduling: String,
    /// The configured `tasks.notifications`.
    pub notifications: String,
    pub members: Vec<MemberView>,
}

/// One row of `ctl shards --json`.
#[derive(Debug, Serialize)]
pub struct ShardView {
    pub shard: u32,
    pub owner: Option<u64>,
    pub epoch: u64,
    pub lease: String,
    pub lease_remaining_ms: u64,
    pub queues: u32,
    pub passes: u64,
    pub released_from: Option<u64>,
}

pub fn shards_json(r: &ShardsResponse) -> Vec<ShardView> {
    r.shards
        .iter()
        .map(|s| ShardView {
            shard: s.shard,
            owner: s.owner,
            epoch: s.epoch,
            lease: s.lease.clone(),
            lease_remaining_ms: s.lease_remaining_ms,
            queues: s.queues,
            passes: s.passes,
            released_from: s.released_from,
        })
        .collect()
}

pub fn shards_text(r: &ShardsResponse) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["SHARD", "OWNER", "EPOCH", "LEASE", "QUEUES", "PASSES"]);
    for s in &r.shards {
        let owner = match (s.owner, s.released_from) {
            (Some(o), _) => o.to_string(),
            (None, Some(from)) => format!("- (from {from})"),
            (None, None) => "-".to_string(),
        };
        let lease = if s.lease == "valid" {
            format!("valid ({} ms)", s.lease_remaining_ms)
        } else {
            s.lease.clone()
        };
        table.add_row([
            s.shard.to_string(),
            owner,
            s.epoch.to_string(),
            lease,
            s.queues.to_string(),
            s.passes.to_string(),
        ]);
    }
    let mut per_owner: std::collections::BTreeMap<String, usize> =
        std::collections::BTreeMap::new();
    for s in &r.shards {
        *per_owner
            .entry(
                s.owner
                    .map_or_else(|| "unowned".into(), |o| format!("node {o}")),
            )
            .or_default() += 1;
    }
    let summary: Vec<String> = per_owner.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let drained = if r.drained.is_empty() {
        String::new()
    } else {
        format!("; drained: {:?}", r.drained)
    };
    format!(
        "{table}
{} shards ({}){drained}",
        r.shards.len(),
        summary.join(", ")
    )
}

impl From<&Member> for MemberView {
    fn from(m: &Member) -> Self {
        Self {
            id: m.id,
            raft_addr: m.raft_addr.clone(),
            admin_addr: m.admin_addr.clone(),
            voter: m.voter,
        }
    }
}

impl From<&StatusResponse> for StatusView {
    fn from(s: &StatusResponse) -> Self {
        Self {
            node_id: s.node_id,
            role: s.role.clone(),
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            last_log_index: s.last_log_index,
            cluster_name: s.cluster_name.clone(),
            shard_count: s.shard_count,
            leader_admin_addr: (!s.leader_admin_addr.is_empty())
                .then(|| s.leader_admin_addr.clone()),
            shards_owned: s.shards_owned,
            shards_running: s.shards_running,
            lease_remaining_ms: s.lease_remaining_ms,
            fenced_writes: s.fenced_writes,
            drained: s.drained,
            scheduling: s.scheduling.clone(),
            notifications: s.notifications.clone(),
            members: s.members.iter().map(MemberView::from).collect(),
        }
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn members_table(members: &[Member], leader_id: Option<u64>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["ID", "ROLE", "RAFT ADDR", "ADMIN ADDR"]);
    for m in members {
        let role = if Some(m.id) == leader_id {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        table.add_row([
            m.id.to_string(),
            role.to_string(),
            m.raft_addr.clone(),
            m.admin_addr.clone(),
        ]);
    }
    table
}

pub fn status_text(s: &StatusResponse) -> String {
    let mut out = String::new();
    let leader = match (s.leader_id, s.leader_admin_addr.is_empty()) {
        (Some(id), false) => format!("{id} ({})", s.leader_admin_addr),
        (Some(id), true) => id.to_string(),
        (None, _) => "none (election in progress?)".to_string(),
    };
    let shards = if s.shard_count == 0 {
        "not recorded yet".to_string()
    } else {
        s.shard_count.to_string()
    };
    for (k, v) in [
        ("node", s.node_id.to_string()),
        ("cluster", s.cluster_name.clone()),
        ("role", s.role.clone()),
        ("leader", leader),
        ("term", s.term.to_string()),
        ("commit index", opt(s.commit_index)),
        ("applied index", opt(s.applied_index)),
        ("shards", shards),
        (
            "owned here",
            format!(
                "{} ({} running){}",
                s.shards_owned,
                s.shards_running,
                if s.drained { ", drained" } else { "" }
            ),
        ),
        (
            "lease",
            if s.lease_remaining_ms > 0 {
                format!("valid ({} ms left)", s.lease_remaining_ms)
            } else {
                "none".to_string()
            },
        ),
        ("fenced writes", s.fenced_writes.to_string()),
        (
            "scheduling",
            format!("{} (notifications = {})", s.scheduling, s.notifications),
        ),
    ] {
        out.push_str(&format!("{k:<14} {v}\n"));
    }
    out.push('\n');
    out.push_str(&members_table(&s.members, s.leader_id).to_string());
    out
}

pub fn members_text(m: &MembersResponse) -> String {
    members_table(&m.members, m.leader_id).to_string()
}

pub fn members_json(m: &MembersResponse) -> Vec<MemberView> {
    m.members.iter().map(MemberView::from).collect()
}

/// One row of `ctl tasks --json`.
#[derive(Debug, Serialize)]
pub struct TaskView {
    pub task: String,
    pub enabled: bool,
    pub batch: u32,
    pub poll_interval_ms: u64,
    pub last_run_ms: u64,
    pub last_success_ms: u64,
    pub moved: u64,
    pub errors: u64,
    /// node id -> elements moved, calls, errors
    pub nodes: Vec<TaskNodeView>,
}

#[derive(Debug, Serialize)]
pub struct TaskNodeView {
    pub node_id: u64,
    pub moved: u64,
    pub calls: u64,
    pub errors: u64,
}

pub fn tasks_json(r: &TasksResponse) -> Vec<TaskView> {
    r.tasks
        .iter()
        .map(|t| TaskView {
            task: t.name.clone(),
            enabled: t.enabled,
            batch: t.batch,
            poll_interval_ms: t.poll_interval_ms,
            last_run_ms: t.last_run_ms,
            last_success_ms: t.last_success_ms,
            moved: t.moved,
            errors: t.errors,
            nodes: t
                .nodes
                .iter()
                .map(|n| TaskNodeView {
                    node_id: n.node_id,
                    moved: n.moved,
                    calls: n.calls,
                    errors: n.errors,
                })
                .collect(),
        })
        .collect()
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let now = crate::store::now_ms().max(0) as u64;
    format!("{} ms ago", now.saturating_sub(ms))
}

pub fn tasks_text(r: &TasksResponse) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "TASK",
        "STATE",
        "BATCH",
        "POLL",
        "LAST RUN",
        "LAST SUCCESS",
        "MOVED",
        "ERRORS",
        "PER NODE (moved)",
    ]);
    for t in &r.tasks {
        let share: Vec<String> = t
            .nodes
            .iter()
            .map(|n| format!("{}: {}", n.node_id, n.moved))
            .collect();
        table.add_row([
            t.name.clone(),
            if t.enabled { "running" } else { "paused" }.to_string(),
            t.batch.to_string(),
            format!("{} ms", t.poll_interval_ms),
            ago(t.last_run_ms),
            ago(t.last_success_ms),
            t.moved.to_string(),
            t.errors.to_string(),
            share.join(", "),
        ]);
    }
    table.to_string()
}
