//! The baseline deckhand is measured against (benchmarks only, not part of
//! the product): Deckard's single housekeeper policy on Redis.
//!
//! One process, a fixed 1 s tick. Every tick it scans for queues, then
//! visits them one after another and moves, per queue and set, at most
//! 1000 due elements, **most recent first** (highest due time first), back
//! to the active pool: due ack locks (restoring the recorded score, or now),
//! due nack locks (recorded score, or 0), and processing entries past their
//! deadline (score 0). The moves are the same as deckhand's, so only the
//! policy differs: when work is found (a tick, not the due time), how much
//! per run, in which order, and by how many workers (one).
//!
//! `deckhand load --baseline-housekeeper` runs it; `scripts/bench.sh` runs
//! every figure against it.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Script;
use serde::Serialize;

use crate::store::layout::{normalize_prefix, QueueKeys};
use crate::store::redis::RedisStore;
use crate::store::{now_ms, QueueStore, StoreError};

/// KEYS: active, processing, lock_ack, lock_ack_score, lock_nack,
/// lock_nack_score. ARGV: now (ms), most elements per set.
const BASELINE_RUN: &str = r#"
local now = ARGV[1]
local limit = tonumber(ARGV[2])
local moved = 0
local function unlock(lock, restore, default)
  local due = redis.call('ZRANGE', lock, now, '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, limit)
  if #due == 0 then return end
  local scores = redis.call('ZMSCORE', restore, unpack(due))
  local args = {}
  for i, id in ipairs(due) do
    local s = scores[i]
    if not s then s = default end
    args[#args + 1] = s
    args[#args + 1] = id
  end
  redis.call('ZADD', KEYS[1], unpack(args))
  redis.call('ZREM', lock, unpack(due))
  redis.call('ZREM', restore, unpack(due))
  moved = moved + #due
end
unlock(KEYS[3], KEYS[4], now)
unlock(KEYS[5], KEYS[6], '0')
local due = redis.call('ZRANGE', KEYS[2], now, '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, limit)
if #due > 0 then
  local args = {}
  for _, id in ipairs(due) do
    args[#args + 1] = '0'
    args[#args + 1] = id
  end
  redis.call('ZADD', KEYS[1], unpack(args))
  redis.call('ZREM', KEYS[2], unpack(due))
  moved = moved + #due
end
return moved
"#;

#[derive(Debug, Clone)]
pub struct BaselineOptions {
    pub url: String,
    pub prefix: String,
    /// Deckard's housekeeper tick.
    pub tick: Duration,
    /// Most elements per queue and set per run.
    pub per_run: usize,
    /// Stop after this long.
    pub duration: Duration,
    /// Wait until this file exists before the first tick (benchmarks).
    pub start_file: Option<std::path::PathBuf>,
    /// Stop after a tick that moved nothing, once a tick moved something.
    pub stop_when_idle: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BaselineSummary {
    pub ticks: u64,
    pub queues: usize,
    pub moved: u64,
    /// Ticks whose pass took longer than the tick (the next one started late).
    pub overrun_ticks: u64,
    pub max_pass_ms: u64,
    pub errors: u64,
    /// From the first tick to the end of the last tick that moved anything.
    pub busy_s: f64,
}

/// Runs the baseline housekeeper until `duration` has passed.
pub async fn run(opts: &BaselineOptions) -> Result<BaselineSummary, StoreError> {
    let prefix = normalize_prefix(&opts.prefix);
    let discovery = RedisStore::open(&opts.url, &prefix).await?;
    let client = redis::Client::open(opts.url.as_str())
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let mut con = ConnectionManager::new(client)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let script = Script::new(BASELINE_RUN);
    let mut summary = BaselineSummary::default();
    if let Some(path) = &opts.start_file {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let first = Instant::now();
    let end = first + opts.duration;
    let mut next_tick = first;
    while Instant::now() < end {
        tokio::time::sleep_until(next_tick.into()).await;
        let started = Instant::now();
        next_tick = started + opts.tick;
        summary.ticks += 1;
        let queues = match discovery.discover_queues().await {
            Ok(q) => q,
            Err(e) => {
                summary.errors += 1;
                tracing::warn!(error = %e, "baseline: discovery failed");
                continue;
            }
        };
        summary.queues = queues.len();
        let moved_before = summary.moved;
        for q in &queues {
            match unlock_once(&script, &mut con, &prefix, q, opts.per_run).await {
                Ok(n) => summary.moved += n,
                Err(e) => {
                    summary.errors += 1;
                    tracing::debug!(queue = q, error = %e, "baseline: run failed");
                }
            }
        }
        let took = started.elapsed();
        summary.max_pass_ms = summary.max_pass_ms.max(took.as_millis() as u64);
        if summary.moved > moved_before {
            summary.busy_s = first.elapsed().as_secs_f64();
        } else if opts.stop_when_idle && summary.moved > 0 {
            break;
        }
        if took > opts.tick {
            summary.overrun_ticks += 1;
            next_tick = Instant::now();
        }
    }
    Ok(summary)
}

/// One call of Deckard's unlock script on queue `q`, as Deckard's
/// housekeeper makes it: at most `per_run` elements per lock set.
async fn unlock_once(
    script: &Script,
    con: &mut ConnectionManager,
    prefix: &str,
    q: &str,
    per_run: usize,
) -> redis::RedisResult<u64> {
    let mut call = script.prepare_invoke();
    for key in QueueKeys::new(prefix, q).sets() {
        call.key(key);
    }
    call.arg(now_ms()).arg(per_run).invoke_async(con).await
}
