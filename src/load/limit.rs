//! `deckhand load --redis-limit`: what one Redis sustains for the
//! housekeeping moves alone, the ceiling the drain figures are compared with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::store::{now_ms, DeckardClient, LockKind, StoreError};

/// What one Redis sustains for the housekeeping moves alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisLimit {
    pub elements: u64,
    pub calls: u64,
    /// Server-side time spent in the script, from `INFO commandstats`.
    pub server_usec: u64,
    pub elements_per_s: f64,
    pub wall_elements_per_s: f64,
}

/// Writes `n` expired locks over `queues` queues (prefix `limit::`), then
/// drains them by calling the housekeeping script directly, `concurrency`
/// calls in flight, and reads the server time per call from Redis.
pub async fn redis_limit(
    url: &str,
    prefix: &str,
    n: usize,
    queues: usize,
    batch: usize,
    concurrency: usize,
) -> Result<RedisLimit, StoreError> {
    use crate::store::redis::RedisStore;
    use crate::store::{Fence, HousekeepRequest, QueueStore};
    let store = Arc::new(RedisStore::open(url, prefix).await?);
    let names: Vec<String> = (0..queues).map(|i| format!("limit::q{i}")).collect();
    let per_queue = n.div_ceil(queues.max(1));
    let then = now_ms() - 60_000;
    futures::stream::iter(names.iter())
        .map(|q| {
            let store = store.clone();
            async move {
                let items: Vec<(String, f64)> = (0..per_queue)
                    .map(|i| (format!("e{i}"), i as f64))
                    .collect();
                store.add(q, &items).await?;
                let ids = store.pull(q, per_queue, then, 3_600_000).await?;
                for id in &ids {
                    store.release(q, LockKind::Ack, id, then, 1, None).await?;
                }
                Ok::<(), StoreError>(())
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<(), _>>()?;
    let before = store.evalsha_stats().await?;
    let started = Instant::now();
    let fence = Fence {
        shard: 0,
        epoch: 1,
        node: 0,
    };
    let moved = AtomicU64::new(0);
    let calls = AtomicU64::new(0);
    futures::stream::iter(names.iter())
        .for_each_concurrent(concurrency, |q| {
            let store = store.clone();
            let (moved, calls) = (&moved, &calls);
            async move {
                loop {
                    let req = HousekeepRequest {
                        now_ms: now_ms(),
                        batch,
                        unlock: true,
                        timeout: false,
                    };
                    let Ok(out) = store.housekeep(q, req, fence).await else {
                        break;
                    };
                    calls.fetch_add(1, Ordering::Relaxed);
                    moved.fetch_add(out.moved(), Ordering::Relaxed);
                    if out.moved() == 0 {
                        break;
                    }
                }
            }
        })
        .await;
    let wall = started.elapsed().as_secs_f64();
    let after = store.evalsha_stats().await?;
    let elements = moved.load(Ordering::Relaxed);
    let server_usec = after.1.saturating_sub(before.1);
    Ok(RedisLimit {
        elements,
        calls: calls.load(Ordering::Relaxed),
        server_usec,
        elements_per_s: elements as f64 / (server_usec as f64 / 1e6).max(1e-9),
        wall_elements_per_s: elements as f64 / wall.max(1e-9),
    })
}
