//! The history check shared by fault tests: every store operation the
//! in-memory store accepted is checked against the Raft log, and no two
//! nodes' operations on one queue interleave.
//!
//! The store's fence makes both checks hold on a correct build; the
//! interleaving rule is the same ordering the fence enforces, so it can only
//! fail when the fence is broken, and `tests/checker.rs` shows it does. It
//! does not see a broken lease check (a stale owner writing, unbounded in
//! time, before its successor's first write): that needs store-side times.

use std::collections::BTreeMap;

use deckhand::cluster::shards::token_epoch;
use deckhand::cluster::{shard_of, Command, ShardState};
use deckhand::raft::store;
use deckhand::raft::NodeId;
use deckhand::store::memory::AcceptedOp;
use openraft::storage::RaftLogStorage;
use openraft::{EntryPayload, RaftLogReader};

use super::TestCluster;

/// Operations that interleave with another node's on the same queue: an
/// operation accepted after one of a later owner (a higher fencing token).
///
/// The documented window in which two nodes may both write a queue is a
/// stale owner writing *before* its successor's first write (the pause
/// window: fencing stops it at the successor's first write, not earlier).
/// So per queue, owners' runs of operations must follow token order; an
/// older token accepted after a newer one is a stale owner writing over its
/// successor, which only a broken fence allows.
pub fn interleavings(history: &[AcceptedOp]) -> Vec<String> {
    let mut newest: BTreeMap<&str, &AcceptedOp> = BTreeMap::new();
    let mut found = Vec::new();
    for op in history {
        match newest.get(op.queue.as_str()) {
            Some(prev) if op.epoch < prev.epoch => found.push(format!(
                "{}: node {} wrote with token {} (op {}) after node {} wrote with token {} (op {})",
                op.queue, op.node, op.epoch, op.seq, prev.node, prev.epoch, prev.seq
            )),
            _ => {
                newest.insert(op.queue.as_str(), op);
            }
        }
    }
    found
}

/// Stops the cluster, replays the longest Raft log of any node (current or
/// removed) and checks: no interleaving ([`interleavings`]); every accepted
/// (shard, epoch) was assigned to exactly the node that wrote, and the shard
/// is the queue's.
pub async fn accepted_operations_follow_the_log(cluster: TestCluster) {
    let history = cluster.store.history();
    let ids: Vec<NodeId> = cluster.configs.keys().copied().collect();
    let dirs: Vec<_> = ids.iter().map(|id| cluster.data_dir(*id)).collect();
    let _data = cluster.shutdown().await;

    // Who was assigned (shard, epoch): replay the longest Raft log.
    let mut longest = Vec::new();
    for dir in dirs {
        let (mut log, _sm) = store::open(&dir.join("raft")).expect("open stopped node's log");
        let state = log.get_log_state().await.expect("log state");
        assert!(
            state.last_purged_log_id.is_none(),
            "the test expects an unpurged log"
        );
        let entries = log.try_get_log_entries(0..).await.expect("read log");
        if entries.len() > longest.len() {
            longest = entries;
        }
    }
    let mut shards: Vec<ShardState> = Vec::new();
    let mut assigned: BTreeMap<(u32, u64), NodeId> = BTreeMap::new();
    for entry in &longest {
        let index = entry.log_id.index();
        match &entry.payload {
            EntryPayload::Normal(Command::InitCluster { shard_count, .. }) if shards.is_empty() => {
                shards = vec![ShardState::default(); *shard_count as usize];
            }
            EntryPayload::Normal(Command::Moves { moves }) => {
                for m in moves {
                    let applied = shards[m.shard() as usize].apply(m, index);
                    if let (true, deckhand::cluster::Move::Assign { shard, to, .. }) = (applied, m)
                    {
                        assigned.insert((*shard, index), *to);
                    }
                }
            }
            _ => {}
        }
    }
    assert!(
        !assigned.is_empty(),
        "no assignment replayed from {} entries: {:?}",
        longest.len(),
        longest
            .iter()
            .take(12)
            .map(|e| format!("{}: {:?}", e.log_id.index(), e.payload))
            .collect::<Vec<_>>()
    );

    let interleaved = interleavings(&history);
    assert!(interleaved.is_empty(), "interleaved: {interleaved:#?}");
    for op in &history {
        assert_eq!(
            op.shard,
            shard_of(&op.queue, shards.len() as u32),
            "{op:?}: wrong shard"
        );
        // Stores see fencing tokens: the cluster's generation above the epoch.
        let owner = assigned.get(&(op.shard, token_epoch(op.epoch)));
        assert_eq!(
            owner,
            Some(&op.node),
            "{op:?}: epoch {} was not assigned to node {}",
            op.epoch,
            op.node
        );
    }
}
