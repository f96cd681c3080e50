//! The history check shared by fault tests: every store operation the
//! in-memory store accepted is checked against the Raft log.

use std::collections::BTreeMap;

use deckhand::cluster::shards::token_epoch;
use deckhand::cluster::{shard_of, Command, ShardState};
use deckhand::raft::store;
use deckhand::raft::NodeId;
use openraft::storage::RaftLogStorage;
use openraft::{EntryPayload, RaftLogReader};

use super::TestCluster;

/// Stops the cluster, replays the longest Raft log of any node (current or
/// removed) and checks: per queue, accepted epochs never decrease; every
/// accepted (shard, epoch) was assigned to exactly the node that wrote, and
/// the shard is the queue's.
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

    let mut last_epoch: BTreeMap<&str, u64> = BTreeMap::new();
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
        let prev = last_epoch.insert(op.queue.as_str(), op.epoch).unwrap_or(0);
        assert!(
            op.epoch >= prev,
            "{op:?}: accepted after epoch {prev} on the same queue"
        );
    }
}
