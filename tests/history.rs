//! History checker: a 3-node cluster under random faults for 30 s. Every
//! store operation the store accepted is checked against the Raft log.
//!
//! Faults: follower crash and restart, follower pause (worker and heartbeats
//! frozen mid-operation), leader crash and restart, leadership transfer, and
//! a node partitioned from the others while it still reaches the store.
//!
//! Checked at the end:
//! - per queue, no older token was accepted after a newer one (the fence's
//!   own rule: it fails only with a broken fence, see `tests/checker.rs`,
//!   and does not see a broken lease check);
//! - every accepted operation's (shard, epoch) is an assignment the Raft log
//!   made to exactly the node that performed it, and the shard is the queue's;
//! - after the faults heal, every shard is owned, balanced and worked.
//!
//! The seed is printed; set DECKHAND_CHAOS_SEED to replay a schedule.

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;
use deckhand::raft::NodeId;

const RUN_FOR: Duration = Duration::from_secs(30);

/// xorshift64*: small, deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick(&mut self, ids: &[NodeId]) -> NodeId {
        ids[self.below(ids.len() as u64) as usize]
    }

    fn hold(&mut self) -> Duration {
        // Some faults end before lease + margin (2.5 s), some after.
        Duration::from_millis(300 + self.below(3500))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_operations_follow_the_raft_log_under_faults() {
    let seed = std::env::var("DECKHAND_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("chaos seed: {seed} (DECKHAND_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let mut cluster = TestCluster::start(3).await;
    let queues = cluster.add_queues(120);
    cluster.wait_for_balanced_ownership().await;

    let started = Instant::now();
    let mut actions = Vec::new();
    let mut logged = 0;
    while started.elapsed() < RUN_FOR {
        for action in &actions[logged..] {
            eprintln!("{:>6} ms: {action}", started.elapsed().as_millis());
        }
        logged = actions.len();
        let leader = cluster.wait_for_leader().await;
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        let followers: Vec<NodeId> = ids.iter().copied().filter(|n| *n != leader).collect();
        let hold = rng.hold();
        match rng.below(5) {
            0 => {
                let victim = rng.pick(&followers);
                actions.push(format!("crash follower {victim} for {hold:?}"));
                cluster.crash(victim).await;
                tokio::time::sleep(hold).await;
                cluster.restart(victim).await;
            }
            1 => {
                let victim = rng.pick(&followers);
                actions.push(format!("pause follower {victim} for {hold:?}"));
                let worker = cluster.nodes[&victim].worker.clone();
                worker.freeze.freeze();
                tokio::time::sleep(hold).await;
                worker.freeze.thaw();
            }
            2 => {
                actions.push(format!("crash leader {leader} for {hold:?}"));
                cluster.crash(leader).await;
                tokio::time::sleep(hold).await;
                cluster.restart(leader).await;
            }
            3 => {
                let to = rng.pick(&followers);
                actions.push(format!("transfer leadership {leader} -> {to}"));
                let raft = cluster.nodes[&leader].raft.clone();
                let trigger = raft.trigger();
                let _ = common::within("transfer leadership", trigger.transfer_leader(to)).await;
            }
            _ => {
                let victim = rng.pick(&ids);
                actions.push(format!("partition node {victim} for {hold:?}"));
                cluster.partition(victim);
                tokio::time::sleep(hold).await;
                cluster.heal();
            }
        }
    }
    eprintln!("faults: {actions:#?}");
    assert!(actions.len() >= 5, "too few faults exercised: {actions:?}");

    // Healed: the cluster converges and works every queue again.
    cluster.wait_for_balanced_ownership().await;
    cluster.wait_for_queues_worked(&queues).await;
    let history = cluster.store.history();
    let fenced: u64 = cluster
        .nodes
        .values()
        .map(|n| n.worker.counts().fenced_writes)
        .sum();
    eprintln!(
        "{} accepted operations, {fenced} fenced on live nodes",
        history.len()
    );
    common::check::accepted_operations_follow_the_log(cluster).await;
}
