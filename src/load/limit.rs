//! `deckhand load --redis-limit`: what one Redis (or the masters of a Redis
//! Cluster) sustains for the housekeeping moves alone, the ceiling the drain
//! figures are compared with.
//!
//! On a cluster the server time is read per master: `elements_per_s` is
//! the rate of one core's worth of script time (all masters' time summed),
//! `parallel_elements_per_s` the rate were every master on its own core
//! (the elements over the busiest master's time). On a machine with fewer
//! cores than masters, neither is reached: `wall_elements_per_s` is what
//! this machine did, client and masters sharing its cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::store::redis::RedisStore;
use crate::store::{now_ms, DeckardClient, LockKind, StoreError};
use crate::store::{Fence, HousekeepRequest, QueueStore};

/// What one Redis sustains for the housekeeping moves alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisLimit {
    pub elements: u64,
    pub calls: u64,
    /// Server-side time spent in the script, from `INFO commandstats`.
    pub server_usec: u64,
    pub elements_per_s: f64,
    pub wall_elements_per_s: f64,
    /// On a cluster: the elements over the busiest master's server time.
    pub parallel_elements_per_s: f64,
    /// On a cluster: each master's share of the server time (address, usec).
    pub per_master_usec: Vec<(String, u64)>,
}

/// Writes `n` expired locks over `queues` queues (prefix `limit::`), then
/// drains them by calling the housekeeping script directly, `concurrency`
/// calls in flight, and reads the server time per call from Redis.
#[allow(clippy::too_many_arguments)]
pub async fn redis_limit(
    url: &str,
    prefix: &str,
    cluster: bool,
    n: usize,
    queues: usize,
    batch: usize,
    concurrency: usize,
) -> Result<RedisLimit, StoreError> {
    let store = Arc::new(RedisStore::open_with(url, prefix, cluster).await?);
    let names: Vec<String> = (0..queues).map(|i| format!("limit::q{i}")).collect();
    write_expired(&store, &names, n.div_ceil(queues.max(1)), concurrency).await?;
    let before = store.evalsha_stats_per_node().await?;
    let started = Instant::now();
    let (calls, elements) = drain_directly(&store, &names, batch, concurrency).await;
    let wall = started.elapsed().as_secs_f64();
    let after = store.evalsha_stats_per_node().await?;
    let per_master_usec = server_time_between(&before, &after);
    let server_usec: u64 = per_master_usec.iter().map(|(_, u)| u).sum();
    let busiest = per_master_usec.iter().map(|(_, u)| *u).max().unwrap_or(0);
    // No server time measured (nothing moved): no rate, rather than a huge one.
    let rate = |usec: u64| {
        if usec == 0 {
            0.0
        } else {
            elements as f64 / (usec as f64 / 1e6)
        }
    };
    Ok(RedisLimit {
        elements,
        calls,
        server_usec,
        elements_per_s: rate(server_usec),
        wall_elements_per_s: elements as f64 / wall.max(1e-9),
        parallel_elements_per_s: rate(busiest),
        per_master_usec: if cluster { per_master_usec } else { Vec::new() },
    })
}

/// Each node's script time between two `evalsha_stats_per_node` readings
/// (a node missing from `before`, such as a new master, counts from 0).
fn server_time_between(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(node, _, usec)| {
            let was = before
                .iter()
                .find(|(n, _, _)| n == node)
                .map_or(0, |(_, _, u)| *u);
            (node.clone(), usec.saturating_sub(was))
        })
        .collect()
}

/// Writes `per_queue` ack locks that expired a minute ago in every queue.
async fn write_expired(
    store: &Arc<RedisStore>,
    names: &[String],
    per_queue: usize,
    concurrency: usize,
) -> Result<(), StoreError> {
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
        .collect()
}

/// Calls the housekeeping script on every queue until it moves nothing,
/// `concurrency` queues at a time; returns the calls and elements moved.
async fn drain_directly(
    store: &Arc<RedisStore>,
    names: &[String],
    batch: usize,
    concurrency: usize,
) -> (u64, u64) {
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
    (calls.into_inner(), moved.into_inner())
}
