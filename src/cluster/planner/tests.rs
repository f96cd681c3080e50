//! Property tests of the planner against a simulated shard table.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{eligible, plan, Candidates, PlanInput};
use crate::cluster::shards::{Move, ShardState};
use crate::cluster::NodeId;

/// A shard table plus a log index, applying plans like the state machine.
struct Sim {
    shards: Vec<ShardState>,
    index: u64,
}

impl Sim {
    fn new(owners: &[Option<NodeId>]) -> Self {
        let shards = owners
            .iter()
            .enumerate()
            .map(|(i, o)| ShardState {
                owner: *o,
                epoch: i as u64 + 1,
                released_from: None,
            })
            .collect();
        Self {
            shards,
            index: owners.len() as u64 + 1,
        }
    }

    /// One planning round where every released shard's old owner has
    /// already stopped. Returns the moves.
    fn round(
        &mut self,
        eligible: &BTreeSet<NodeId>,
        gone: &BTreeSet<NodeId>,
        max_releases: usize,
    ) -> Vec<Move> {
        let stopped = |_: u32, _: NodeId, _: &ShardState| true;
        let moves = plan(&PlanInput {
            shards: &self.shards,
            eligible,
            gone,
            stopped: &stopped,
            max_releases,
        });
        self.index += 1;
        for m in &moves {
            self.shards[m.shard() as usize].apply(m, self.index);
        }
        moves
    }

    fn converge(
        &mut self,
        eligible: &BTreeSet<NodeId>,
        gone: &BTreeSet<NodeId>,
        max_releases: usize,
    ) -> usize {
        let mut moved = 0;
        for _ in 0..10_000 {
            let moves = self.round(eligible, gone, max_releases);
            if moves.is_empty() {
                return moved;
            }
            moved += moves
                .iter()
                .filter(|m| matches!(m, Move::Assign { .. }))
                .count();
        }
        panic!("planner did not converge");
    }

    fn loads(&self, eligible: &BTreeSet<NodeId>) -> BTreeMap<NodeId, usize> {
        let mut loads: BTreeMap<NodeId, usize> = eligible.iter().map(|n| (*n, 0)).collect();
        for s in &self.shards {
            if let Some(o) = s.owner {
                *loads.entry(o).or_default() += 1;
            }
        }
        loads
    }

    fn owners(&self) -> Vec<Option<NodeId>> {
        self.shards.iter().map(|s| s.owner).collect()
    }
}

fn assert_balanced(sim: &Sim, eligible: &BTreeSet<NodeId>) {
    for s in &sim.shards {
        let owner = s.owner.expect("every shard has an owner after convergence");
        assert!(
            eligible.contains(&owner),
            "shard owned by ineligible node {owner}"
        );
    }
    let loads = sim.loads(eligible);
    let max = loads.values().max().copied().unwrap_or(0);
    let min = loads.values().min().copied().unwrap_or(0);
    assert!(max - min <= 1, "unbalanced: {loads:?}");
}

fn node_set(ids: impl IntoIterator<Item = NodeId>) -> BTreeSet<NodeId> {
    ids.into_iter().collect()
}

prop_compose! {
    /// A random table over nodes 1..=8 (some shards unowned) and a non-empty eligible set.
    fn scenario()(shard_count in 1usize..300, eligible in proptest::collection::btree_set(1u64..=8, 1..=5))
        (owners in proptest::collection::vec(proptest::option::of(1u64..=8), shard_count),
         eligible in Just(eligible),
         max_releases in 1usize..=64)
        -> (Vec<Option<NodeId>>, BTreeSet<NodeId>, usize) {
        (owners, eligible, max_releases)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn converges_to_a_balanced_table_owned_by_eligible_nodes((owners, eligible, max_releases) in scenario()) {
        let gone: BTreeSet<NodeId> = (1..=8).filter(|n| !eligible.contains(n)).collect();
        let mut sim = Sim::new(&owners);
        sim.converge(&eligible, &gone, max_releases);
        assert_balanced(&sim, &eligible);
    }

    #[test]
    fn plans_are_deterministic_and_rate_limited((owners, eligible, max_releases) in scenario()) {
        // Ineligible nodes are live here: their shards must be released, not reassigned.
        let gone = BTreeSet::new();
        let sim = Sim::new(&owners);
        let stopped = |_: u32, _: NodeId, _: &ShardState| false;
        let input = PlanInput { shards: &sim.shards, eligible: &eligible, gone: &gone, stopped: &stopped, max_releases };
        let first = plan(&input);
        prop_assert_eq!(&first, &plan(&input));
        let releases = first.iter().filter(|m| matches!(m, Move::Release { .. })).count();
        prop_assert!(releases <= max_releases);
        for m in &first {
            if let Move::Assign { shard, .. } = m {
                // Only shards no live node may be running are assigned directly.
                let s = sim.shards[*shard as usize];
                prop_assert!(s.owner.is_none(), "a live owner's shard was assigned without release");
            }
        }
    }

    #[test]
    fn losing_a_node_moves_only_its_shards(shard_count in 1usize..300, nodes in 2u64..=6, lost_pick in 0u64..6) {
        let all = node_set(1..=nodes);
        let mut sim = Sim::new(&vec![None; shard_count]);
        sim.converge(&all, &BTreeSet::new(), 64);
        let before = sim.owners();
        let lost = 1 + lost_pick % nodes;
        let survivors: BTreeSet<NodeId> = all.iter().copied().filter(|n| *n != lost).collect();
        let gone = node_set([lost]);
        let moves = sim.round(&survivors, &gone, 64);
        for m in &moves {
            prop_assert!(matches!(m, Move::Assign { .. }), "unexpected {:?}", m);
            prop_assert_eq!(before[m.shard() as usize], Some(lost));
        }
        // One round reassigns all of them: no shard is left without an owner.
        prop_assert!(sim.shards.iter().all(|s| s.owner.is_some()));
        prop_assert_eq!(moves.len(), before.iter().filter(|o| **o == Some(lost)).count());
        assert_balanced(&sim, &survivors);
    }

    #[test]
    fn a_join_moves_the_minimum(shard_count in 1usize..300, nodes in 1u64..=5, max_releases in 1usize..=64) {
        let old = node_set(1..=nodes);
        let mut sim = Sim::new(&vec![None; shard_count]);
        sim.converge(&old, &BTreeSet::new(), 64);
        let before = sim.owners();
        let joined = nodes + 1;
        let all = node_set(1..=joined);
        sim.converge(&all, &BTreeSet::new(), max_releases);
        assert_balanced(&sim, &all);
        let changed = before.iter().zip(sim.owners()).filter(|(a, b)| **a != *b).count();
        // Every changed shard went to the new node, and it got exactly its share.
        let new_load = sim.loads(&all)[&joined];
        prop_assert_eq!(changed, new_load);
        prop_assert!(new_load <= shard_count.div_ceil(all.len()));
    }

    #[test]
    fn assignable_shards_never_stay_unowned((owners, eligible, max_releases) in scenario()) {
        let gone: BTreeSet<NodeId> = (1..=8).filter(|n| !eligible.contains(n)).collect();
        let mut sim = Sim::new(&owners);
        sim.round(&eligible, &gone, max_releases);
        // After one round, every shard is owned, or released from a node that
        // has not confirmed yet (never the case here: all confirm).
        for (i, s) in sim.shards.iter().enumerate() {
            prop_assert!(s.owner.is_some() || s.released_from.is_some_and(|p| !gone.contains(&p)),
                "shard {} left without an owner: {:?}", i, s);
        }
    }
}

#[test]
fn released_shard_waits_for_its_old_owner() {
    let eligible = node_set([2, 3]);
    let mut sim = Sim::new(&[Some(1), Some(1)]);
    // Node 1 is live but not eligible (say, drained): release first.
    let stopped_never = |_: u32, _: NodeId, _: &ShardState| false;
    let moves = plan(&PlanInput {
        shards: &sim.shards,
        eligible: &eligible,
        gone: &BTreeSet::new(),
        stopped: &stopped_never,
        max_releases: 10,
    });
    assert!(moves.iter().all(|m| matches!(m, Move::Release { .. })));
    sim.index += 1;
    for m in &moves {
        sim.shards[m.shard() as usize].apply(m, sim.index);
    }
    // Not confirmed: nothing is assigned.
    let again = plan(&PlanInput {
        shards: &sim.shards,
        eligible: &eligible,
        gone: &BTreeSet::new(),
        stopped: &stopped_never,
        max_releases: 10,
    });
    assert!(again.is_empty(), "{again:?}");
    // Confirmed: both are assigned, one to each eligible node.
    let stopped = |_: u32, _: NodeId, _: &ShardState| true;
    let assigned = plan(&PlanInput {
        shards: &sim.shards,
        eligible: &eligible,
        gone: &BTreeSet::new(),
        stopped: &stopped,
        max_releases: 10,
    });
    let targets: BTreeSet<NodeId> = assigned
        .iter()
        .map(|m| match m {
            Move::Assign { to, .. } => *to,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(targets, eligible);
}

#[test]
fn no_eligible_node_means_no_moves() {
    let sim = Sim::new(&[Some(1), None]);
    let stopped = |_: u32, _: NodeId, _: &ShardState| true;
    let moves = plan(&PlanInput {
        shards: &sim.shards,
        eligible: &BTreeSet::new(),
        gone: &node_set([1]),
        stopped: &stopped,
        max_releases: 10,
    });
    assert!(moves.is_empty());
}

fn candidates_case(
    members: &[NodeId],
    drained: &[NodeId],
    departed: &[NodeId],
    heard: &[NodeId],
    live: &[NodeId],
) -> BTreeSet<NodeId> {
    let (members, drained, departed) = (
        node_set(members.to_vec()),
        node_set(drained.to_vec()),
        node_set(departed.to_vec()),
    );
    let (heard, live) = (node_set(heard.to_vec()), node_set(live.to_vec()));
    eligible(&Candidates {
        leader: 1,
        members: &members,
        drained: &drained,
        departed: &departed,
        heard: &|n| heard.contains(&n),
        live: &|n| live.contains(&n),
    })
}

#[test]
fn eligible_prefers_reporting_followers_and_spares_the_leader() {
    // Followers 2 and 3 report: they get the shards, not the leader.
    assert_eq!(
        candidates_case(&[1, 2, 3], &[], &[], &[1, 2, 3], &[1, 2, 3]),
        node_set([2, 3])
    );
    // Drained and departed followers are out.
    assert_eq!(
        candidates_case(&[1, 2, 3], &[2], &[], &[1, 2, 3], &[1, 2, 3]),
        node_set([3])
    );
    assert_eq!(
        candidates_case(&[1, 2, 3], &[], &[3], &[1, 2, 3], &[1, 2, 3]),
        node_set([2])
    );
    // Just elected: followers look live but have not reported: wait for them.
    assert!(candidates_case(&[1, 2, 3], &[], &[], &[1], &[1, 2, 3]).is_empty());
    // Every follower gone: the leader works alone. A one-node cluster likewise.
    assert_eq!(
        candidates_case(&[1, 2, 3], &[], &[], &[1], &[1]),
        node_set([1])
    );
    assert_eq!(candidates_case(&[1], &[], &[], &[1], &[1]), node_set([1]));
    // Every follower drained: the leader works; a drained leader does not.
    assert_eq!(
        candidates_case(&[1, 2, 3], &[2, 3], &[], &[1, 2, 3], &[1, 2, 3]),
        node_set([1])
    );
    assert!(candidates_case(&[1], &[1], &[], &[1], &[1]).is_empty());
}
