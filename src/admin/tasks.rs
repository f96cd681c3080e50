//! The `Tasks` report: replicated task settings plus the counters every
//! node last reported to the leader (pure assembly).

use std::collections::BTreeMap;

use crate::cluster::{TaskKind, Tasks};
use crate::proto::admin::{TaskInfo, TaskNodeShare};
use crate::raft::NodeId;
use crate::worker::coordinator::Report;
use crate::worker::WorkerSettings;

/// One row per task. `moved` for UNLOCK is ack + nack unlocks, for TIMEOUT
/// the timed-out entries; calls, errors and times are shared by both tasks,
/// since one housekeeping call on a queue runs every enabled task.
pub fn task_infos(
    settings: &Tasks,
    worker: &WorkerSettings,
    reports: &BTreeMap<NodeId, Report>,
) -> Vec<TaskInfo> {
    TaskKind::ALL
        .iter()
        .map(|task| {
            let moved_by = |r: &Report| match task {
                TaskKind::Unlock => r.tasks.unlocked_ack + r.tasks.unlocked_nack,
                TaskKind::Timeout => r.tasks.timed_out,
            };
            let nodes: Vec<TaskNodeShare> = reports
                .iter()
                .map(|(id, r)| TaskNodeShare {
                    node_id: *id,
                    moved: moved_by(r),
                    calls: r.tasks.calls,
                    errors: r.tasks.errors,
                })
                .collect();
            TaskInfo {
                name: task.name().to_string(),
                enabled: !settings.get(*task).paused,
                batch: worker.batch as u32,
                poll_interval_ms: worker.poll_interval.as_millis() as u64,
                last_run_ms: reports
                    .values()
                    .map(|r| r.tasks.last_run_ms)
                    .max()
                    .unwrap_or(0),
                last_success_ms: reports
                    .values()
                    .map(|r| r.tasks.last_success_ms)
                    .max()
                    .unwrap_or(0),
                moved: nodes.iter().map(|n| n.moved).sum(),
                errors: nodes.iter().map(|n| n.errors).sum(),
                nodes,
            }
        })
        .collect()
}
