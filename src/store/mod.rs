//! The queue store: where Deckard's queues live, behind one trait.
//!
//! # Fencing contract
//!
//! Every operation a shard owner performs carries a [`Fence`]: the shard's
//! epoch (the Raft log index of the assignment) and the writing node. For
//! each queue the store keeps the highest epoch that has written to it and,
//! **atomically with the operation**:
//!
//! - rejects the operation with [`StoreError::Fenced`] if its epoch is lower,
//!   changing nothing;
//! - otherwise performs it and raises the queue's fence to its epoch.
//!
//! So once a newer owner has written to a queue, no older owner's operation on
//! that queue can ever be accepted again, however long it was paused.
//! Operations with an equal epoch are accepted (the same owner, repeatedly).
//!
//! Epochs are plain integers here: this module knows nothing of Raft.
//!
//! # Implementations
//!
//! - [`memory::MemoryStore`]: embedded, for the demo and fast tests.
//! - The Redis store in Deckard's key layout comes with the tasks issue and
//!   must pass the same contract tests.

pub mod memory;

use std::sync::Arc;

/// The right to write to a queue: the owning shard's epoch and the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub shard: u32,
    pub epoch: u64,
    /// The node performing the operation (for diagnostics and history).
    pub node: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A newer owner has written to the queue; the caller must drop the shard.
    #[error("queue {queue:?}: fenced: epoch {epoch} is older than the queue's fence {fence}")]
    Fenced {
        queue: String,
        epoch: u64,
        fence: u64,
    },
    #[error("invalid queue name {queue:?}: {reason}")]
    InvalidQueue { queue: String, reason: String },
    /// The store cannot be reached or failed; retry later.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }
}

/// What the housekeeper needs from a queue store.
#[async_trait::async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Every queue that exists now (one scan; the leader calls it for the cluster).
    async fn discover_queues(&self) -> Result<Vec<String>, StoreError>;

    /// A fenced no-op: checks and raises the queue's fence, moves nothing.
    /// Used by the shard worker until the real tasks exist.
    async fn touch(&self, queue: &str, fence: Fence) -> Result<(), StoreError>;

    /// The queue's current fence (highest epoch that wrote to it), 0 if none.
    async fn fence_of(&self, queue: &str) -> Result<u64, StoreError>;
}

pub type SharedStore = Arc<dyn QueueStore>;

/// Queue names Deckard would reject: empty, or containing the hash-tag
/// braces that delimit the name in its Redis keys.
pub fn validate_queue_name(queue: &str) -> Result<(), StoreError> {
    let reason = if queue.is_empty() {
        "empty"
    } else if queue.contains('{') || queue.contains('}') {
        "contains '{' or '}'"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidQueue {
        queue: queue.to_string(),
        reason: reason.to_string(),
    })
}

/// Parses `memory://` or `memory://?queues=N` (N empty queues `q0..`,
/// for demos and measurements: each process has its own embedded store).
pub fn parse_memory_url(url: &str) -> Option<Result<usize, String>> {
    let rest = url.strip_prefix("memory://")?;
    if rest.is_empty() {
        return Some(Ok(0));
    }
    let Some(n) = rest.strip_prefix("?queues=") else {
        return Some(Err(format!(
            "{url:?}: the only memory:// option is ?queues=N"
        )));
    };
    Some(
        n.parse::<usize>()
            .ok()
            .filter(|n| *n <= 1_000_000)
            .ok_or_else(|| format!("{url:?}: queues must be a number from 0 to 1000000")),
    )
}

/// Opens the store named by a config URL.
pub fn open(url: &str) -> Result<SharedStore, StoreError> {
    if let Some(parsed) = parse_memory_url(url) {
        let queues = parsed.map_err(StoreError::Unavailable)?;
        let store = memory::MemoryStore::new();
        for i in 0..queues {
            store.add_queue(&format!("q{i}"))?;
        }
        return Ok(Arc::new(store));
    }
    if url.starts_with("redis://") {
        return Err(StoreError::Unavailable(format!(
            "{url}: the Redis store is not built yet in this version; use memory://"
        )));
    }
    Err(StoreError::Unavailable(format!(
        "{url}: unknown store scheme"
    )))
}

#[cfg(test)]
pub(crate) mod contract;
