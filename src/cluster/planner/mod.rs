//! The leader's shard planner: which shard should move where, now.
//!
//! Pure and deterministic: the same input always gives the same plan.
//!
//! # Rules
//!
//! - Only `eligible` nodes receive shards (the caller makes that the live,
//!   undrained followers, or the leader alone when no follower is live).
//! - **Balanced:** when nothing is in flight, eligible owners differ by at
//!   most one shard.
//! - **Sticky:** a node keeps what it owns up to its target; the nodes that
//!   own the most get the `+1` targets, so a join or a loss moves only the
//!   shards that must move.
//! - **Two-phase for live owners:** a shard is taken from a node that may
//!   still be running it only by a `Release`; it is assigned to its next
//!   owner once that node confirmed it stopped, or is gone. A gone node's
//!   shards are reassigned directly, all at once.
//! - **Rate-limited:** at most `max_releases` releases per plan, so a
//!   rebalance or drain is spread over several rounds.
//!
//! Every move is a compare-and-set on the epoch the planner saw (see
//! [`super::shards::Move`]), so a stale plan is harmless.

use std::collections::{BTreeMap, BTreeSet};

use super::shards::{Move, ShardState};
use crate::cluster::NodeId;

/// What the planner knows about the cluster right now.
pub struct PlanInput<'a> {
    pub shards: &'a [ShardState],
    /// Nodes that may receive shards.
    pub eligible: &'a BTreeSet<NodeId>,
    /// Nodes whose shards can be taken without confirmation: silent for
    /// longer than `lease + margin`, or handed their shards back.
    pub gone: &'a BTreeSet<NodeId>,
    /// Whether `node` has reported that it no longer runs `shard` (with an
    /// applied index at or past the shard's release).
    pub stopped: &'a dyn Fn(u32, NodeId, &ShardState) -> bool,
    pub max_releases: usize,
}

/// The moves that bring the shard table closer to the rules above.
pub fn plan(input: &PlanInput<'_>) -> Vec<Move> {
    if input.eligible.is_empty() {
        return Vec::new();
    }
    let table = Table::of(input);
    let targets = Targets::of(input.eligible, &table.load, input.shards.len());
    let mut moves = releases(input, &table, &targets);
    moves.extend(assignments(input, &table, &targets));
    moves
}

/// Where every shard stands, seen from the eligible set.
struct Table {
    /// Shards each eligible node owns now.
    load: BTreeMap<NodeId, Vec<u32>>,
    /// Shards with no owner that may be assigned now (or a gone owner's).
    assignable: Vec<u32>,
    /// Shards held by live nodes that may not keep them.
    must_release: Vec<u32>,
    /// Shards released but not yet confirmed stopped by their last owner.
    in_flight: usize,
}

impl Table {
    fn of(input: &PlanInput<'_>) -> Self {
        let mut table = Self {
            load: input.eligible.iter().map(|n| (*n, Vec::new())).collect(),
            assignable: Vec::new(),
            must_release: Vec::new(),
            in_flight: 0,
        };
        for (i, shard) in input.shards.iter().enumerate() {
            let i = i as u32;
            match (shard.owner, shard.released_from) {
                (Some(owner), _) if input.eligible.contains(&owner) => {
                    if let Some(owned) = table.load.get_mut(&owner) {
                        owned.push(i);
                    }
                }
                (Some(owner), _) if input.gone.contains(&owner) => table.assignable.push(i),
                (Some(_), _) => table.must_release.push(i),
                (None, Some(prev)) => {
                    if input.gone.contains(&prev) || (input.stopped)(i, prev, shard) {
                        table.assignable.push(i);
                    } else {
                        table.in_flight += 1;
                    }
                }
                (None, None) => table.assignable.push(i),
            }
        }
        table
    }
}

/// How many shards each eligible node should own.
struct Targets {
    /// Eligible nodes, most loaded first (ties by id).
    by_load: Vec<NodeId>,
    /// Floor or ceiling of the average; the most loaded get the ceilings.
    target: BTreeMap<NodeId, usize>,
}

impl Targets {
    fn of(eligible: &BTreeSet<NodeId>, load: &BTreeMap<NodeId, Vec<u32>>, total: usize) -> Self {
        let k = eligible.len();
        let (base, extra) = (total / k, total % k);
        let mut by_load: Vec<NodeId> = eligible.iter().copied().collect();
        by_load.sort_by_key(|n| (std::cmp::Reverse(load[n].len()), *n));
        let target = by_load
            .iter()
            .enumerate()
            .map(|(rank, n)| (*n, base + usize::from(rank < extra)))
            .collect();
        Self { by_load, target }
    }
}

/// Releases, at most `max_releases`: first the shards of live ineligible
/// nodes, then overloaded nodes' highest-numbered surplus.
fn releases(input: &PlanInput<'_>, table: &Table, targets: &Targets) -> Vec<Move> {
    let release = |i: u32| Move::Release {
        shard: i,
        expected_epoch: input.shards[i as usize].epoch,
    };
    let mut moves: Vec<Move> = table
        .must_release
        .iter()
        .take(input.max_releases)
        .map(|&i| release(i))
        .collect();
    let mut releases_left = input.max_releases - moves.len();
    // Shards already in flight will land on underloaded nodes, so count
    // them. Release only what the underloaded nodes can take.
    let (load, target) = (&table.load, &targets.target);
    let deficit: usize = input
        .eligible
        .iter()
        .map(|m| target[m].saturating_sub(load[m].len()))
        .sum();
    let mut surplus_needed = table.in_flight + table.must_release.len() + table.assignable.len();
    for n in &targets.by_load {
        let owned = &load[n];
        let over = owned.len().saturating_sub(target[n]);
        for &i in owned.iter().rev().take(over) {
            if releases_left == 0 || surplus_needed >= deficit {
                break;
            }
            moves.push(release(i));
            releases_left -= 1;
            surplus_needed += 1;
        }
    }
    moves
}

/// Assigns every assignable shard, each to the node furthest below target.
fn assignments(input: &PlanInput<'_>, table: &Table, targets: &Targets) -> Vec<Move> {
    let (load, target) = (&table.load, &targets.target);
    let mut incoming: BTreeMap<NodeId, usize> = input.eligible.iter().map(|n| (*n, 0)).collect();
    let mut moves = Vec::new();
    for &i in &table.assignable {
        let to = input
            .eligible
            .iter()
            .copied()
            .max_by_key(|n| {
                let have = load[n].len() + incoming[n];
                (target[n] as i64 - have as i64, std::cmp::Reverse(*n))
            })
            .expect("eligible is not empty");
        *incoming.get_mut(&to).expect("eligible node") += 1;
        moves.push(Move::Assign {
            shard: i,
            to,
            expected_epoch: input.shards[i as usize].epoch,
        });
    }
    moves
}

/// What decides which nodes may receive shards.
pub struct Candidates<'a> {
    pub leader: NodeId,
    pub members: &'a BTreeSet<NodeId>,
    pub drained: &'a BTreeSet<NodeId>,
    /// Nodes that handed their shards back and have not heartbeated since.
    pub departed: &'a BTreeSet<NodeId>,
    /// Heard from at least once in this leader's term.
    pub heard: &'a dyn Fn(NodeId) -> bool,
    /// Not silent for longer than `lease + margin` (see `lease::Liveness`).
    pub live: &'a dyn Fn(NodeId) -> bool,
}

/// The nodes that may receive shards now.
///
/// Live, undrained followers that have reported in this term. The leader only
/// when no follower could still be alive: a follower that is live but has not
/// reported yet (just after an election) is waited for, not replaced.
pub fn eligible(c: &Candidates<'_>) -> BTreeSet<NodeId> {
    let usable = |n: NodeId| {
        c.members.contains(&n) && !c.drained.contains(&n) && !c.departed.contains(&n) && (c.live)(n)
    };
    let followers: BTreeSet<NodeId> = c
        .members
        .iter()
        .copied()
        .filter(|n| *n != c.leader && usable(*n) && (c.heard)(*n))
        .collect();
    if !followers.is_empty() {
        return followers;
    }
    let may_come = c.members.iter().any(|n| *n != c.leader && usable(*n));
    if may_come || !c.members.contains(&c.leader) || c.drained.contains(&c.leader) {
        return BTreeSet::new();
    }
    BTreeSet::from([c.leader])
}

#[cfg(test)]
mod tests;
