//! The test hook that stands in for SIGSTOP (see [`Freeze`]).
//!
//! Invariant: `parked_shards` counts, per shard, the calls that entered
//! [`Freeze::gate`] while calls park and have not left it (a call dropped
//! while parked stays counted), and holds no shard with a count of zero.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::locks::lock;

/// Test hook standing in for SIGSTOP: while frozen, heartbeats stop and
/// every shard task parks right **after** its lease check and before its
/// store operation, the worst moment for a pause. [`Freeze::park_calls`]
/// parks the calls only, the heartbeats going on (a call stuck in the
/// store, not a paused process).
#[derive(Debug)]
pub struct Freeze {
    mode: watch::Sender<FreezeMode>,
    /// Calls parked at the gate right now, per shard.
    parked_shards: Mutex<BTreeMap<u32, usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FreezeMode {
    Off,
    /// Calls park at the gate; heartbeats go on.
    Calls,
    /// Calls park and heartbeats stop: a paused process.
    Process,
}

impl Default for Freeze {
    fn default() -> Self {
        Self {
            mode: watch::channel(FreezeMode::Off).0,
            parked_shards: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Freeze {
    /// A paused process: calls park and heartbeats stop.
    pub fn freeze(&self) {
        self.mode.send_replace(FreezeMode::Process);
    }

    /// Calls park; heartbeats go on, so the lease stays valid.
    pub fn park_calls(&self) {
        self.mode.send_replace(FreezeMode::Calls);
    }

    pub fn thaw(&self) {
        self.mode.send_replace(FreezeMode::Off);
    }

    /// Whether the process stands paused (heartbeats stop).
    pub fn is_frozen(&self) -> bool {
        *self.mode.borrow() == FreezeMode::Process
    }

    /// Shards with at least one call parked right now.
    pub fn parked_shards(&self) -> std::collections::BTreeSet<u32> {
        lock(&self.parked_shards).keys().copied().collect()
    }

    /// Calls of `shard` parked right now.
    pub fn parked_calls(&self, shard: u32) -> usize {
        lock(&self.parked_shards).get(&shard).copied().unwrap_or(0)
    }

    /// Passes at once unless calls are parked; then waits for the thaw.
    pub(super) async fn gate(&self, shard: u32) {
        if *self.mode.borrow() == FreezeMode::Off {
            return;
        }
        *lock(&self.parked_shards).entry(shard).or_default() += 1;
        let mut rx = self.mode.subscribe();
        let _ = rx.wait_for(|mode| *mode == FreezeMode::Off).await;
        let mut shards = lock(&self.parked_shards);
        if let Some(n) = shards.get_mut(&shard) {
            *n -= 1;
            if *n == 0 {
                shards.remove(&shard);
            }
        }
    }
}
