//! The Raft state machine in sled: applies committed entries to
//! [`ClusterState`] and keeps the current snapshot.
//!
//! Invariants:
//! - `applied.last_applied` only grows (checked on apply);
//! - the state and its `last_applied` id are persisted in one sled insert;
//! - a stored snapshot is never newer than the applied state it was built from.
//!
//! A broken invariant while applying (this module's or `ClusterState`'s
//! asserts) is returned as an I/O error, never left as a panic: openraft
//! runs `apply` in its own task, and a panic there would go unnoticed until
//! the next entry, which a quiet cluster may never send, while the node kept
//! heartbeating from a frozen state. An error stops the Raft core at once
//! with a fatal error, and the worker gives up its lease and its shards
//! (`worker::heartbeat`). A batch is applied to a copy of the state that
//! replaces it only once persisted, so nothing of a failed batch is
//! persisted, published, or seen by a snapshot build.

use std::io;
use std::sync::Arc;

use futures::TryStreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, RwLock};

use super::{from_json, to_json, Durable};
use crate::cluster::{ClusterState, CommandResult};
use crate::raft::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// Everything the state machine persists about applied entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub cluster: ClusterState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The applied state as services and loops read it. It holds no storage
/// handle (only the receiving end of the state machine's publications), so
/// a task that outlives its node (a server's connection task, say) cannot
/// keep the sled directory, and its file lock, open.
#[derive(Clone)]
pub struct AppliedView {
    rx: watch::Receiver<Arc<AppliedState>>,
}

impl AppliedView {
    /// The latest published applied state.
    pub fn latest(&self) -> Arc<AppliedState> {
        self.rx.borrow().clone()
    }

    /// Every applied state from now on (the current one first); the
    /// stream ends once the state machine is gone.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>> {
        let mut rx = self.rx.clone();
        rx.mark_unchanged();
        rx
    }
}

/// The state machine. Clones share state; readers (admin API, worker) take
/// the read lock for a consistent copy via [`StateMachineStore::applied`].
#[derive(Clone)]
pub struct StateMachineStore {
    /// The applied state, also held in memory so reads never touch sled.
    /// A tokio lock because apply holds it across the sled write.
    applied: Arc<RwLock<AppliedState>>,
    /// Publishes every new applied state, so the worker reacts to ownership
    /// changes as soon as they are applied instead of polling.
    published: Arc<watch::Sender<Arc<AppliedState>>>,
    tree: sled::Tree,
    durable: Durable,
}

impl StateMachineStore {
    pub(super) fn load(tree: sled::Tree, durable: Durable) -> io::Result<Self> {
        let applied = match tree.get(KEY_APPLIED).map_err(io::Error::other)? {
            Some(bytes) => from_json(&bytes)?,
            None => AppliedState::default(),
        };
        let (published, _) = watch::channel(Arc::new(applied.clone()));
        Ok(Self {
            applied: Arc::new(RwLock::new(applied)),
            published: Arc::new(published),
            tree,
            durable,
        })
    }

    /// Every applied state from now on (the current one first).
    pub fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.published.subscribe()
    }

    /// A read-only view for services and loops, holding no storage handle.
    pub fn view(&self) -> AppliedView {
        AppliedView {
            rx: self.published.subscribe(),
        }
    }

    /// Watches for every handle on this storage (log and state machine
    /// alike) to be gone, so its directory may be opened again.
    pub fn release_watch(&self) -> super::StorageRelease {
        self.durable.release_watch()
    }

    /// The latest published applied state, without waiting for the lock.
    pub fn latest(&self) -> Arc<AppliedState> {
        self.published.borrow().clone()
    }

    /// A copy of the applied state.
    pub async fn applied(&self) -> AppliedState {
        self.applied.read().await.clone()
    }

    fn persist(&self, state: &AppliedState) -> io::Result<()> {
        self.tree
            .insert(KEY_APPLIED, to_json(state)?)
            .map_err(io::Error::other)?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = self.applied().await;
        let data = to_json(&state)?;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership.clone(),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.tree
            .insert(KEY_SNAPSHOT, to_json(&stored)?)
            .map_err(io::Error::other)?;
        // The log is purged after a snapshot: make sure the snapshot survives.
        self.durable.sync_async().await?;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.applied.read().await;
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut applied = self.applied.write().await;
        // The batch is applied to a copy, which replaces the shared state
        // only once it is persisted: a failed entry (an error from the
        // stream, a broken invariant) leaves nothing of the batch behind
        // for a snapshot build or a reader to see.
        let mut state = applied.clone();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            if let Some(last) = &state.last_applied {
                if last.index() >= log_id.index() {
                    return Err(invariant(format!("entry {log_id} applied after {last}")));
                }
            }
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(command) => {
                    let cluster = &mut state.cluster;
                    let index = log_id.index();
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        cluster.apply(index, command)
                    }))
                    .map_err(|panic| {
                        invariant(format!(
                            "applying entry {log_id} ({command}): {}",
                            panic_message(panic.as_ref())
                        ))
                    })?;
                    tracing::debug!(index, %command, ?result, "applied command");
                    result
                }
                EntryPayload::Membership(membership) => {
                    state.last_membership = StoredMembership::new(Some(log_id), membership.clone());
                    CommandResult::None
                }
            };
            state.last_applied = Some(log_id);
            if let Some(responder) = responder {
                responders.push((responder, result));
            }
        }
        // One write for the whole batch; answered only after it is in sled.
        self.persist(&state)?;
        self.published.send_replace(Arc::new(state.clone()));
        *applied = state;
        drop(applied);
        for (responder, result) in responders {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let new_state: AppliedState = from_json(&snapshot)?;
        if new_state.last_applied != meta.last_log_id {
            return Err(super::invalid_data(format!(
                "snapshot meta says {:?} but its data was applied up to {:?}",
                meta.last_log_id, new_state.last_applied
            )));
        }
        let mut state = self.applied.write().await;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        };
        self.tree
            .insert(KEY_SNAPSHOT, to_json(&stored)?)
            .map_err(io::Error::other)?;
        self.persist(&new_state)?;
        self.durable.sync_async().await?;
        self.published.send_replace(Arc::new(new_state.clone()));
        *state = new_state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        match self.tree.get(KEY_SNAPSHOT).map_err(io::Error::other)? {
            Some(bytes) => {
                let stored: StoredSnapshot = from_json(&bytes)?;
                Ok(Some(Snapshot {
                    meta: stored.meta,
                    snapshot: stored.data,
                }))
            }
            None => Ok(None),
        }
    }
}

/// A broken invariant of the applied state, as the error openraft expects.
fn invariant(what: String) -> io::Error {
    tracing::error!(error = %what, "state machine invariant broken: stopping the Raft core");
    io::Error::other(format!("state machine invariant broken: {what}"))
}

/// The message of a caught panic (`assert!` gives a `String` or a `&str`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("panicked")
}

impl AppliedState {
    /// Index of the last applied entry, 0 before any.
    pub fn applied_index(&self) -> u64 {
        self.last_applied.map_or(0, |id| id.index())
    }
}

impl StateMachineStore {
    /// Flushes and fsyncs the whole database (used on shutdown).
    pub async fn sync(&self) -> io::Result<()> {
        self.durable.sync_async().await
    }
}
