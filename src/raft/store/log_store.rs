//! The Raft log and vote in sled.
//!
//! Invariants (asserted where the log changes):
//! - entries in the `log` tree have contiguous indexes;
//! - an append starts right after the current last index (or after the last
//!   purged id when the tree is empty), unless the log was empty and unpurged;
//! - `last_purged` only grows.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};

use super::{from_json, to_json, Durable};
use crate::raft::{Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

/// Log entries and vote, in sled. Clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    /// Entries keyed by big-endian index, so sled's byte order is log order.
    log: sled::Tree,
    /// Vote, last purged log id, committed log id.
    meta: sled::Tree,
    durable: Durable,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| super::invalid_data(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl LogStore {
    pub(super) fn new(log: sled::Tree, meta: sled::Tree, durable: Durable) -> Self {
        Self { log, meta, durable }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(io::Error::other)? {
            Some(bytes) => Ok(Some(from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        self.meta
            .insert(key, to_json(value)?)
            .map_err(io::Error::other)?;
        Ok(())
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        match self.log.last().map_err(io::Error::other)? {
            Some((_, bytes)) => Ok(Some(from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes every entry whose index lies in `range`.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(range) {
            let (key, _) = item.map_err(io::Error::other)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(io::Error::other)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.log.range((start, end)) {
            let (key, bytes) = item.map_err(io::Error::other)?;
            let entry: Entry = from_json(&bytes)?;
            assert_eq!(
                key_index(&key)?,
                entry.index(),
                "log key and entry index differ"
            );
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(KEY_VOTE, vote)?;
        // Not acknowledged until it is on disk: see `Durable`.
        self.durable.sync_async().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Durability is optional here (openraft recovers the committed id from
        // the quorum); sled flushes it in the background.
        match committed {
            Some(log_id) => self.put_meta(KEY_COMMITTED, &log_id),
            None => {
                self.meta.remove(KEY_COMMITTED).map_err(io::Error::other)?;
                Ok(())
            }
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.get_meta(KEY_COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut expected_next = self.last_entry()?.map(|e| e.index() + 1);
        if expected_next.is_none() {
            let purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
            expected_next = purged.map(|id| id.index() + 1);
        }
        let mut batch = sled::Batch::default();
        for entry in entries {
            let index = entry.index();
            if let Some(next) = expected_next {
                assert_eq!(
                    index, next,
                    "non-contiguous append: got index {index}, expected {next}"
                );
            }
            expected_next = Some(index + 1);
            batch.insert(&index_key(index), to_json(&entry)?);
        }
        self.log.apply_batch(batch).map_err(io::Error::other)?;
        // Report the entries flushed only once they are durable.
        let result = self.durable.sync_async().await;
        callback.io_completed(result);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index() + 1);
        tracing::debug!(first_removed, "truncating log");
        self.remove_range(index_key(first_removed)..)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let previous: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        if let Some(previous) = &previous {
            assert!(previous.index() <= log_id.index(), "purge went backwards");
        }
        tracing::debug!(upto = log_id.index(), "purging log");
        // Record the purge point first: a crash between the two steps leaves
        // extra entries behind, never a gap that looks like missing entries.
        self.put_meta(KEY_LAST_PURGED, &log_id)?;
        self.remove_range(..=index_key(log_id.index()))
    }
}
