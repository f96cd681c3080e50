//! The embedded in-memory queue store (demo, fast tests).
//!
//! One mutex guards all queues: every operation is atomic with its fence
//! check, which is the whole point. Optionally records every accepted
//! operation so tests can check the history.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{validate_queue_name, Fence, QueueStore, StoreError};

/// One accepted operation, in acceptance order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedOp {
    pub seq: u64,
    pub queue: String,
    pub shard: u32,
    pub epoch: u64,
    pub node: u64,
}

#[derive(Default)]
struct Inner {
    /// queue -> highest epoch that has written to it.
    fences: BTreeMap<String, u64>,
    history: Option<Vec<AcceptedOp>>,
    next_seq: u64,
}

/// Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that records every accepted operation (see [`Self::history`]).
    pub fn with_history() -> Self {
        let store = Self::default();
        store.lock().history = Some(Vec::new());
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied
        // operation (each is one map update), so poisoning is not fatal.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an empty queue (as Deckard's API would on first use).
    pub fn add_queue(&self, queue: &str) -> Result<(), StoreError> {
        validate_queue_name(queue)?;
        self.lock().fences.entry(queue.to_string()).or_insert(0);
        Ok(())
    }

    /// Every accepted operation so far, if recording.
    pub fn history(&self) -> Vec<AcceptedOp> {
        self.lock().history.clone().unwrap_or_default()
    }

    /// Checks and raises the fence, then runs `op` under the same lock.
    fn fenced<T>(
        &self,
        queue: &str,
        fence: Fence,
        op: impl FnOnce() -> T,
    ) -> Result<T, StoreError> {
        validate_queue_name(queue)?;
        let mut inner = self.lock();
        let current = inner.fences.get(queue).copied().unwrap_or(0);
        if fence.epoch < current {
            return Err(StoreError::Fenced {
                queue: queue.to_string(),
                epoch: fence.epoch,
                fence: current,
            });
        }
        inner.fences.insert(queue.to_string(), fence.epoch);
        let result = op();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some(history) = inner.history.as_mut() {
            history.push(AcceptedOp {
                seq,
                queue: queue.to_string(),
                shard: fence.shard,
                epoch: fence.epoch,
                node: fence.node,
            });
        }
        Ok(result)
    }
}

#[async_trait::async_trait]
impl QueueStore for MemoryStore {
    async fn discover_queues(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().fences.keys().cloned().collect())
    }

    async fn touch(&self, queue: &str, fence: Fence) -> Result<(), StoreError> {
        self.fenced(queue, fence, || ())
    }

    async fn fence_of(&self, queue: &str) -> Result<u64, StoreError> {
        validate_queue_name(queue)?;
        Ok(self.lock().fences.get(queue).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_meets_the_contract() {
        let store = MemoryStore::new();
        crate::store::contract::run(&store, &|q| store.add_queue(q).expect("valid queue")).await;
    }

    #[tokio::test]
    async fn history_records_accepted_operations_only() {
        let store = MemoryStore::with_history();
        store.add_queue("q").expect("valid");
        let fence = |epoch| Fence {
            shard: 0,
            epoch,
            node: 1,
        };
        store.touch("q", fence(5)).await.expect("accepted");
        assert!(store.touch("q", fence(4)).await.is_err());
        store.touch("q", fence(6)).await.expect("accepted");
        let epochs: Vec<_> = store.history().iter().map(|op| op.epoch).collect();
        assert_eq!(epochs, vec![5, 6]);
    }
}
