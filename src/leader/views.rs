//! Read models of the leader's knowledge for the admin API: what `ctl
//! shards` shows of each shard, built from the applied shard table and the
//! owners' last reports. Pure: time is an argument.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::term::Report;
use crate::cluster::{ClusterState, NodeId, ShardState};

/// The state of a shard owner's lease, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerLease {
    /// Released by its owner (two-phase move or drain); no owner yet.
    Released,
    /// No report from the owner this term.
    Unknown,
    /// The store fenced the owner at the shard's current epoch.
    Fenced,
    /// The owner's last reported lease has run out.
    Expired,
    /// The owner's lease has this long left.
    Valid(Duration),
}

impl OwnerLease {
    /// The word `ctl shards` shows.
    pub fn name(&self) -> &'static str {
        match self {
            OwnerLease::Released => "released",
            OwnerLease::Unknown => "unknown",
            OwnerLease::Fenced => "fenced",
            OwnerLease::Expired => "expired",
            OwnerLease::Valid(_) => "valid",
        }
    }

    /// Time left on a valid lease, zero otherwise.
    pub fn remaining(&self) -> Duration {
        match self {
            OwnerLease::Valid(left) => *left,
            _ => Duration::ZERO,
        }
    }
}

/// One shard as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub shard: u32,
    pub owner: Option<NodeId>,
    pub epoch: u64,
    pub lease: OwnerLease,
    /// Queues the last discovery put in the shard.
    pub queues: usize,
    /// Passes the owner reported at the current epoch (0: none yet).
    pub passes: u64,
    pub released_from: Option<NodeId>,
}

/// Every shard of `state`, with its owner's last report and the queue count
/// of the last discovery.
pub fn shard_views(
    state: &ClusterState,
    reports: &BTreeMap<NodeId, Report>,
    queue_counts: &BTreeMap<u32, usize>,
    now: Instant,
) -> Vec<ShardView> {
    state
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let shard = i as u32;
            let report = s.owner.and_then(|o| reports.get(&o));
            ShardView {
                shard,
                owner: s.owner,
                epoch: s.epoch,
                lease: owner_lease(shard, s, report, now),
                queues: queue_counts.get(&shard).copied().unwrap_or(0),
                passes: report
                    .and_then(|r| r.running.get(&shard))
                    .filter(|run| run.epoch == s.epoch)
                    .map_or(0, |run| run.passes),
                released_from: s.released_from,
            }
        })
        .collect()
}

fn owner_lease(shard: u32, s: &ShardState, report: Option<&Report>, now: Instant) -> OwnerLease {
    if s.released_from.is_some() {
        return OwnerLease::Released;
    }
    let Some(report) = report else {
        return OwnerLease::Unknown;
    };
    if report.fenced.get(&shard) == Some(&s.epoch) {
        return OwnerLease::Fenced;
    }
    let left = report
        .lease_remaining
        .saturating_sub(now.saturating_duration_since(report.received_at));
    if left.is_zero() {
        OwnerLease::Expired
    } else {
        OwnerLease::Valid(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Command, Move};
    use crate::leader::ShardRun;
    use crate::proto::worker::TaskCounters;

    #[test]
    fn a_shard_view_reads_its_owners_report() {
        let mut state = ClusterState::default();
        state.apply(
            1,
            &Command::InitCluster {
                shard_count: 3,
                generation: 1,
            },
        );
        let assign = |shard, to| Move::Assign {
            shard,
            to,
            expected_epoch: 0,
        };
        state.apply(
            2,
            &Command::Moves {
                moves: vec![assign(0, 7), assign(1, 7)],
            },
        );
        let t0 = Instant::now();
        let report = Report {
            received_at: t0,
            applied_index: 2,
            running: BTreeMap::from([(
                0,
                ShardRun {
                    epoch: 2,
                    passes: 4,
                },
            )]),
            lease_remaining: Duration::from_millis(900),
            fenced_writes: 0,
            tasks: TaskCounters::default(),
            fenced: BTreeMap::from([(1, 2)]),
        };
        let reports = BTreeMap::from([(7, report)]);
        let counts = BTreeMap::from([(0, 5)]);
        let views = shard_views(&state, &reports, &counts, t0 + Duration::from_millis(400));
        assert_eq!(
            views[0].lease,
            OwnerLease::Valid(Duration::from_millis(500))
        );
        assert_eq!((views[0].passes, views[0].queues), (4, 5));
        assert_eq!(views[1].lease, OwnerLease::Fenced);
        assert_eq!(views[2].lease, OwnerLease::Unknown);
        let later = shard_views(&state, &reports, &counts, t0 + Duration::from_secs(1));
        assert_eq!(later[0].lease, OwnerLease::Expired);
        // A clock read before the report was received counts no time.
        let before = shard_views(&state, &reports, &counts, t0 - Duration::from_millis(1));
        assert_eq!(
            before[0].lease,
            OwnerLease::Valid(Duration::from_millis(900))
        );
    }
}
