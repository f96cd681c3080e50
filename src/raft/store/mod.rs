//! sled-backed Raft storage: one `Db`, trees `log`, `meta` and `sm`.
//!
//! [`open`] returns the log store and the state machine store, which share
//! the `Db`. Both are cheap to clone (sled trees are reference counted).

mod log_store;
mod state_machine;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

pub use log_store::LogStore;
pub use state_machine::{AppliedState, AppliedView, StateMachineStore};

/// Errors opening the Raft storage.
#[derive(Debug, thiserror::Error)]
pub enum RaftStorageError {
    #[error("cannot open Raft storage at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("Raft storage at {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The sled database and the path of its data file, for [`Durable::sync`].
#[derive(Clone)]
pub(crate) struct Durable {
    db: sled::Db,
    /// One count per handle on this opened storage. Every store clone holds
    /// a `Durable`, and so does a blocking `sync` still running after its
    /// caller was dropped; sled keeps the directory's file lock until the
    /// last handle is gone. [`StorageRelease`] watches this count.
    handles: Arc<()>,
    /// sled keeps all data in `<dir>/db`; after `Db::flush` we `fsync` it
    /// ourselves, because sled's flush alone is not a guaranteed full fsync
    /// (sled issue #1452) and a lost vote can elect two leaders in one term.
    db_file: PathBuf,
    dir: PathBuf,
}

impl Durable {
    /// Flushes sled's buffers and fsyncs its data file and directory.
    /// Blocking: call from `spawn_blocking`.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        File::open(&self.db_file)?.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// [`Self::sync`] on the blocking pool.
    pub(crate) async fn sync_async(&self) -> io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.sync())
            .await
            .map_err(io::Error::other)?
    }
}

/// Tells when one opened storage is closed, so its directory can be opened
/// again: sled's file lock lives as long as any handle, and handles outlive
/// a stopped node inside tasks nobody awaits (openraft's state machine
/// worker and replication streams end on their own after the core stops, a
/// blocking fsync runs on after its caller is dropped); then sled's own
/// background threads may hold the file a moment longer. So released means
/// both: no handle left, and the data file's lock can be taken.
pub struct StorageRelease {
    handles: Weak<()>,
    db_file: PathBuf,
}

impl StorageRelease {
    /// How many store handles are left (0 once every one is dropped).
    pub fn handles(&self) -> usize {
        self.handles.strong_count()
    }

    pub fn is_released(&self) -> bool {
        self.handles() == 0 && lock_is_free(&self.db_file)
    }

    /// Waits until the storage is released or `deadline` passes; returns
    /// whether it was released.
    pub async fn wait(&self, deadline: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while !self.is_released() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }
}

impl Durable {
    pub(crate) fn release_watch(&self) -> StorageRelease {
        StorageRelease {
            handles: Arc::downgrade(&self.handles),
            db_file: self.db_file.clone(),
        }
    }
}

/// Whether sled's lock on `db_file` (an exclusive `flock`) can be taken
/// now; taken and let go at once. A file that cannot be opened has no lock.
fn lock_is_free(db_file: &Path) -> bool {
    match File::open(db_file) {
        Ok(file) => fs2::FileExt::try_lock_exclusive(&file).is_ok(),
        Err(_) => true,
    }
}

/// Opens (creating if needed) the Raft storage under `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), RaftStorageError> {
    let open_err = |source| RaftStorageError::Open {
        path: dir.to_path_buf(),
        source,
    };
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(open_err)?;
    let durable = Durable {
        db: db.clone(),
        handles: Arc::new(()),
        db_file: dir.join("db"),
        dir: dir.to_path_buf(),
    };
    let log = db.open_tree("log").map_err(open_err)?;
    let meta = db.open_tree("meta").map_err(open_err)?;
    let sm = db.open_tree("sm").map_err(open_err)?;
    let log_store = LogStore::new(log, meta, durable.clone());
    let sm_store = StateMachineStore::load(sm, durable).map_err(|e| RaftStorageError::Corrupt {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((log_store, sm_store))
}

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn to_json<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(invalid_data)
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(invalid_data)
}

#[cfg(test)]
mod tests;
