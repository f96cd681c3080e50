//! Deckard's own client moves on the Redis store (add, pull, ack or nack
//! with a lock, remove, sizes, snapshots): what `deckhand load` and the
//! tests do as Deckard's API pods would, in Deckard's key layout.

use super::{op_error, RedisStore};
use crate::store::layout::SCORE_MIN;
use crate::store::{DeckardClient, LockKind, QueueSnapshot, StoreError};

#[async_trait::async_trait]
impl DeckardClient for RedisStore {
    async fn add(&self, queue: &str, items: &[(String, f64)]) -> Result<usize, StoreError> {
        let k = self.keys(queue)?;
        if items.is_empty() {
            return Ok(0);
        }
        let mut con = self.connection().await?;
        let mut inv = self.add.prepare_invoke();
        inv.key(&k.active)
            .key(&k.processing)
            .key(&k.lock_ack)
            .key(&k.lock_nack);
        for (id, score) in items {
            inv.arg(*score).arg(id);
        }
        let n: usize = inv
            .invoke_async(&mut con)
            .await
            .map_err(|e| op_error(queue, e))?;
        Ok(n)
    }

    async fn pull(
        &self,
        queue: &str,
        n: usize,
        now_ms: i64,
        ack_deadline_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let k = self.keys(queue)?;
        let mut con = self.connection().await?;
        self.pull
            .key(&k.active)
            .key(&k.processing)
            .arg(n.max(1))
            .arg(now_ms + ack_deadline_ms)
            .invoke_async(&mut con)
            .await
            .map_err(|e| op_error(queue, e))
    }

    async fn release(
        &self,
        queue: &str,
        kind: LockKind,
        id: &str,
        now_ms: i64,
        lock_ms: i64,
        score: Option<f64>,
    ) -> Result<bool, StoreError> {
        let k = self.keys(queue)?;
        let (lock, restore, default) = match kind {
            LockKind::Ack => (&k.lock_ack, &k.lock_ack_score, now_ms as f64),
            LockKind::Nack => (&k.lock_nack, &k.lock_nack_score, SCORE_MIN),
        };
        let mut con = self.connection().await?;
        let moved: i64 = self
            .release
            .key(&k.processing)
            .key(lock)
            .key(restore)
            .key(&k.active)
            .arg(id)
            .arg(lock_ms)
            .arg(now_ms + lock_ms)
            .arg(score.map(|s| s.to_string()).unwrap_or_default())
            .arg(default)
            .invoke_async(&mut con)
            .await
            .map_err(|e| op_error(queue, e))?;
        Ok(moved == 1)
    }

    async fn remove(&self, queue: &str, ids: &[String]) -> Result<usize, StoreError> {
        let k = self.keys(queue)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for key in k.sets() {
            pipe.cmd("ZREM").arg(key).arg(ids);
        }
        let counts: Vec<usize> = self.query(queue, &pipe).await?;
        Ok(counts.iter().sum())
    }

    async fn pending(&self, queue: &str) -> Result<usize, StoreError> {
        let k = self.keys(queue)?;
        let mut pipe = redis::pipe();
        for key in [&k.processing, &k.lock_ack, &k.lock_nack] {
            pipe.cmd("ZCARD").arg(key);
        }
        let counts: Vec<usize> = self.query(queue, &pipe).await?;
        Ok(counts.iter().sum())
    }

    async fn snapshot(&self, queue: &str) -> Result<QueueSnapshot, StoreError> {
        let k = self.keys(queue)?;
        // MULTI/EXEC: one moment's view, or a message moving between sets
        // while they are read would look lost or duplicated to the census.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in k.sets() {
            pipe.cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES");
        }
        let sets: Vec<Vec<(String, f64)>> = self.query(queue, &pipe).await?;
        let mut sets = sets.into_iter();
        let mut next = || sets.next().unwrap_or_default();
        Ok(QueueSnapshot {
            active: next(),
            processing: next(),
            lock_ack: next(),
            lock_ack_score: next(),
            lock_nack: next(),
            lock_nack_score: next(),
        })
    }
}
