//! The Redis queue store, in Deckard's exact key layout (see [`super::layout`]).
//!
//! Every operation on a queue is one Lua script over that queue's keys only,
//! all sharing the hash tag `{queue}`, so it is atomic and would stay in one
//! slot of a Redis Cluster. The housekeeping script checks and raises the
//! queue's fence key in the same script as the moves (the fencing contract of
//! [`super`]). Scripts run with EVALSHA and are reloaded if Redis forgot them.
//!
//! The connection is made lazily and re-made by the connection manager, so a
//! Redis that is down at start or goes away makes operations fail with
//! [`StoreError::Unavailable`] (the caller backs off) rather than stopping
//! the node; they succeed again as soon as Redis is back.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script};
use tokio::sync::Mutex;

use super::layout::{discovery_pattern, normalize_prefix, queue_of_set_key, QueueKeys, SCORE_MIN};
use super::{
    validate_queue_name, DeckardClient, Fence, HousekeepOutcome, HousekeepRequest, LockKind,
    QueueEventStream, QueueSizes, QueueSnapshot, QueueStore, StoreError, FENCE_RETENTION,
};

/// KEYS: active, processing, lock_ack, lock_ack:score, lock_nack, lock_nack:score, fence.
/// ARGV: epoch (fencing token), now_ms (capped at Redis's `TIME`), batch,
/// unlock (0/1), timeout (0/1), fence retention ms.
/// Returns {0, fence} when fenced, {2} when the queue is gone (its four sets
/// empty: the fence is kept, raised if need be, only for the retention),
/// else {1, unlocked_ack, unlocked_nack, timed_out, next_due or -1, active,
/// processing, locked_ack, locked_nack, oldest_overdue_ms, lateness...}.
/// An idle queue (nothing in processing or locked) costs six calls inside
/// the script: the fence, its PERSIST and four ZCARDs.
const HOUSEKEEP: &str = r#"
local fence = tonumber(redis.call('GET', KEYS[7]) or '0')
local epoch = tonumber(ARGV[1])
if epoch < fence then
  return {0, fence}
end
local n_tmp = redis.call('ZCARD', KEYS[2])
local n_ack = redis.call('ZCARD', KEYS[3])
local n_nack = redis.call('ZCARD', KEYS[5])
if n_tmp + n_ack + n_nack == 0 then
  local n_active = redis.call('ZCARD', KEYS[1])
  if n_active == 0 then
    -- Gone: Deckard emptied the queue. Keep the fence only for the retention.
    if epoch > fence then
      redis.call('SET', KEYS[7], ARGV[1], 'PX', ARGV[6])
    elseif fence > 0 then
      redis.call('PEXPIRE', KEYS[7], ARGV[6])
    end
    return {2}
  end
  if epoch > fence then
    redis.call('SET', KEYS[7], ARGV[1])
  else
    redis.call('PERSIST', KEYS[7])
  end
  -- Nothing in processing or locked (an idle queue): nothing to move.
  return {1, 0, 0, 0, -1, n_active, 0, 0, 0, 0}
end
if epoch > fence then
  redis.call('SET', KEYS[7], ARGV[1])
else
  -- A fence left to expire while the queue was gone is permanent again.
  redis.call('PERSIST', KEYS[7])
end
-- "Now" is the caller's clock, but never later than Redis's own: a node
-- whose clock stepped ahead must not unlock or time out early. (A clock
-- behind only makes moves late.) Effects replication, the default since
-- Redis 5, lets a script read TIME and then write.
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(ARGV[2])
local t = redis.call('TIME')
local redis_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis_now < now then now = redis_now end
local now_arg = string.format('%.0f', now)
local budget = tonumber(ARGV[3])
local late = {}
-- Lua's C stack holds about 8,000 values: a call's arguments go in chunks
-- (a batch of 4,000 locks is 8,000 ZADD arguments).
local CHUNK = 1000
local function chunked(cmd, key, list)
  for i = 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end
local function unlock(lock, restore, default, count)
  if budget <= 0 or count == 0 then return 0 end
  local due = redis.call('ZRANGE', lock, '-inf', now_arg, 'BYSCORE', 'LIMIT', 0, budget, 'WITHSCORES')
  if #due == 0 then return 0 end
  local ids = {}
  for i = 1, #due, 2 do
    ids[#ids + 1] = due[i]
    late[#late + 1] = now - tonumber(due[i + 1])
  end
  local scores = {}
  for i = 1, #ids, CHUNK do
    local part = redis.call('ZMSCORE', restore, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #part do scores[#scores + 1] = part[j] end
  end
  local args = {}
  for i, id in ipairs(ids) do
    local s = scores[i]
    if not s then s = default end
    args[#args + 1] = s
    args[#args + 1] = id
  end
  chunked('ZADD', KEYS[1], args)
  chunked('ZREM', lock, ids)
  chunked('ZREM', restore, ids)
  budget = budget - #ids
  return #ids
end
local acks, nacks, timeouts = 0, 0, 0
if ARGV[4] == '1' then
  acks = unlock(KEYS[3], KEYS[4], now_arg, n_ack)
  nacks = unlock(KEYS[5], KEYS[6], '0', n_nack)
end
if ARGV[5] == '1' and budget > 0 and n_tmp > 0 then
  local due = redis.call('ZRANGE', KEYS[2], '-inf', now_arg, 'BYSCORE', 'LIMIT', 0, budget)
  if #due > 0 then
    local args = {}
    for _, id in ipairs(due) do
      args[#args + 1] = '0'
      args[#args + 1] = id
    end
    chunked('ZADD', KEYS[1], args)
    chunked('ZREM', KEYS[2], due)
    timeouts = #due
  end
end
-- The lowest score left in a set (-1: empty), without a call for an empty set.
local function first(key, count)
  if count <= 0 then return -1 end
  local f = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #f == 0 then return -1 end
  return tonumber(f[2])
end
local function lower(a, b)
  if a == -1 then return b end
  if b == -1 then return a end
  if a < b then return a end
  return b
end
local f_ack = first(KEYS[3], n_ack - acks)
local f_nack = first(KEYS[5], n_nack - nacks)
local next_due = -1
if ARGV[4] == '1' then next_due = lower(f_ack, f_nack) end
if ARGV[5] == '1' then next_due = lower(next_due, first(KEYS[2], n_tmp - timeouts)) end
local oldest = lower(f_ack, f_nack)
local overdue = 0
if oldest ~= -1 and oldest < now then overdue = now - oldest end
local result = {1, acks, nacks, timeouts, next_due,
  redis.call('ZCARD', KEYS[1]), n_tmp - timeouts, n_ack - acks, n_nack - nacks, overdue}
for _, l in ipairs(late) do result[#result + 1] = l end
return result
"#;

/// Deckard's add: KEYS active, processing, lock_ack, lock_nack; ARGV score, id, ...
const ADD: &str = r#"
local inserted = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i + 1]
  local present = false
  for _, key in ipairs(KEYS) do
    if redis.call('ZSCORE', key, id) then present = true break end
  end
  if not present then
    redis.call('ZADD', KEYS[1], ARGV[i], id)
    inserted = inserted + 1
  end
end
return inserted
"#;

/// Deckard's pull: KEYS active, processing; ARGV n, deadline score.
const PULL: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then return {} end
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[2], ARGV[2], id)
end
redis.call('ZREM', KEYS[1], unpack(ids))
return ids
"#;

/// Deckard's ack/nack: KEYS processing, lock, lock:score, active;
/// ARGV id, lock_ms, unlock time, restore score or '', default score.
const RELEASE: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
else
  local s = ARGV[4]
  if s == '' then s = ARGV[5] end
  redis.call('ZADD', KEYS[4], s, ARGV[1])
end
return 1
"#;

/// How long to wait for a connection before reporting Redis unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one command may take before it fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct RedisStore {
    client: Client,
    prefix: String,
    /// Made on first use and kept; the manager reconnects by itself. A tokio
    /// mutex because connecting awaits.
    connection: Mutex<Option<ConnectionManager>>,
    housekeep: Script,
    add: Script,
    pull: Script,
    release: Script,
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Maps an error of an operation on `queue`: Deckard keys of another type
/// are the caller's data problem, anything else is Redis being unavailable.
fn op_error(queue: &str, e: RedisError) -> StoreError {
    let text = e.to_string();
    if text.contains("WRONGTYPE") {
        return StoreError::WrongType {
            queue: queue.to_string(),
            reason: "a key of this queue holds another Redis type than Deckard's sorted sets"
                .into(),
        };
    }
    StoreError::Unavailable(text)
}

impl RedisStore {
    /// Parses `url` (a bad URL is an error now); connects on first use.
    pub async fn open(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client =
            Client::open(url).map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        Ok(Self {
            client,
            prefix: normalize_prefix(prefix),
            connection: Mutex::new(None),
            housekeep: Script::new(HOUSEKEEP),
            add: Script::new(ADD),
            pull: Script::new(PULL),
            release: Script::new(RELEASE),
        })
    }

    pub(super) async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connect = ConnectionManager::new_with_config(self.client.clone(), config);
        let manager = tokio::time::timeout(CONNECT_TIMEOUT * 2, connect)
            .await
            .map_err(|_| StoreError::Unavailable("connecting to Redis timed out".into()))?
            .map_err(unavailable)?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    /// `(calls, usec)` of EVALSHA from `INFO commandstats` (measurements).
    pub async fn evalsha_stats(&self) -> Result<(u64, u64), StoreError> {
        let mut con = self.connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        let line = info
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .unwrap_or("cmdstat_evalsha:calls=0,usec=0");
        let field = |name: &str| {
            line.split([':', ','])
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("calls="), field("usec=")))
    }

    /// Runs a pipeline on `queue`'s keys, mapping errors for that queue.
    async fn query<T: redis::FromRedisValue>(
        &self,
        queue: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut con = self.connection().await?;
        pipe.query_async(&mut con)
            .await
            .map_err(|e| op_error(queue, e))
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One Redis setting, by `CONFIG GET` (refused on many managed services).
    pub async fn config_get(&self, name: &str) -> Result<String, StoreError> {
        let mut con = self.connection().await?;
        let pairs: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(pairs.get(1).cloned().unwrap_or_default())
    }

    fn keys(&self, queue: &str) -> Result<QueueKeys, StoreError> {
        validate_queue_name(queue)?;
        Ok(QueueKeys::new(&self.prefix, queue))
    }
}

fn parse_housekeep(
    queue: &str,
    fence: Fence,
    reply: Vec<i64>,
) -> Result<HousekeepOutcome, StoreError> {
    let bad = || StoreError::Unavailable(format!("queue {queue:?}: unexpected housekeeping reply"));
    match reply.first() {
        Some(0) => Err(StoreError::Fenced {
            queue: queue.to_string(),
            epoch: fence.epoch,
            fence: reply.get(1).copied().ok_or_else(bad)? as u64,
        }),
        Some(2) => Ok(HousekeepOutcome {
            gone: true,
            ..HousekeepOutcome::default()
        }),
        Some(1) if reply.len() >= 10 => Ok(HousekeepOutcome {
            unlocked_ack: reply[1] as u64,
            unlocked_nack: reply[2] as u64,
            timed_out: reply[3] as u64,
            next_due_ms: (reply[4] >= 0).then_some(reply[4]),
            sizes: QueueSizes {
                active: reply[5].max(0) as u64,
                processing: reply[6].max(0) as u64,
                locked_ack: reply[7].max(0) as u64,
                locked_nack: reply[8].max(0) as u64,
                oldest_overdue_ms: reply[9].max(0) as u64,
            },
            unlock_lateness_ms: reply[10..].to_vec(),
            gone: false,
        }),
        _ => Err(bad()),
    }
}

#[async_trait::async_trait]
impl QueueStore for RedisStore {
    async fn discover_queues(&self) -> Result<Vec<String>, StoreError> {
        let mut con = self.connection().await?;
        let mut queues = std::collections::BTreeSet::new();
        {
            let pattern = discovery_pattern(&self.prefix);
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut con)
                    .await
                    .map_err(unavailable)?;
                for key in &keys {
                    // Deckard's four sets say a queue exists; a fence or an
                    // orphan restore-score set alone does not.
                    if let Some(q) = queue_of_set_key(&self.prefix, key) {
                        if validate_queue_name(q).is_ok() {
                            queues.insert(q.to_string());
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(queues.into_iter().collect())
    }

    async fn housekeep(
        &self,
        queue: &str,
        req: HousekeepRequest,
        fence: Fence,
    ) -> Result<HousekeepOutcome, StoreError> {
        let k = self.keys(queue)?;
        let mut con = self.connection().await?;
        let reply: Vec<i64> = self
            .housekeep
            .key(&k.active)
            .key(&k.processing)
            .key(&k.lock_ack)
            .key(&k.lock_ack_score)
            .key(&k.lock_nack)
            .key(&k.lock_nack_score)
            .key(&k.fence)
            .arg(fence.epoch)
            .arg(req.now_ms)
            .arg(req.batch.max(1))
            .arg(if req.unlock { "1" } else { "0" })
            .arg(if req.timeout { "1" } else { "0" })
            .arg(FENCE_RETENTION.as_millis() as u64)
            .invoke_async(&mut con)
            .await
            .map_err(|e| op_error(queue, e))?;
        parse_housekeep(queue, fence, reply)
    }

    async fn watch_events(&self) -> Result<QueueEventStream, StoreError> {
        self.subscribe_lock_events().await
    }

    async fn next_generation(&self) -> Result<u64, StoreError> {
        let mut con = self.connection().await?;
        let key = format!("{}:deckhand_generation", self.prefix);
        redis::cmd("INCR")
            .arg(&key)
            .query_async(&mut con)
            .await
            .map_err(|e| StoreError::Unavailable(format!("INCR {key}: {e}")))
    }

    async fn fence_of(&self, queue: &str) -> Result<u64, StoreError> {
        let k = self.keys(queue)?;
        let mut con = self.connection().await?;
        let value: Option<u64> = redis::cmd("GET")
            .arg(&k.fence)
            .query_async(&mut con)
            .await
            .map_err(|e| op_error(queue, e))?;
        Ok(value.unwrap_or(0))
    }
}

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
        let mut pipe = redis::pipe();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    #[tokio::test]
    async fn redis_store_meets_the_contract() {
        let server = RedisServer::start_with_notifications().expect("redis-server");
        let store = RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open");
        crate::store::contract::run(&store, &store).await;
        crate::store::contract::lock_events(&store, &store).await;
        // The keys are Deckard's, under the prefix, with the fence beside them.
        let mut con = store.connection().await.expect("connection");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*{c::fenced}*")
            .query_async(&mut con)
            .await
            .expect("keys");
        let mut keys = keys;
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "deckard_v1:queue:{c::fenced}",
                "deckard_v1:queue:{c::fenced}:deckhand_fence"
            ]
        );
    }

    #[tokio::test]
    async fn without_keyspace_events_the_error_names_the_setting() {
        let server = RedisServer::start().expect("redis-server");
        let store = RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open");
        let err = match store.watch_events().await {
            Ok(_) => panic!("events without notify-keyspace-events"),
            Err(e) => e,
        };
        assert!(matches!(err, StoreError::NoLockEvents(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains("notify-keyspace-events"), "{text}");
        assert!(text.contains("it is \"\""), "the current value: {text}");
        // The probe left nothing behind.
        let mut con = store.connection().await.expect("connection");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut con)
            .await
            .expect("keys");
        assert!(keys.is_empty(), "{keys:?}");
    }

    #[tokio::test]
    async fn keyspace_events_without_sorted_sets_are_refused() {
        // K and g: Redis announces DEL (generic) on the probe key, never ZADD.
        let server =
            RedisServer::start_with(&["--notify-keyspace-events", "Kg"]).expect("redis-server");
        let store = RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open");
        let err = match store.watch_events().await {
            Ok(_) => panic!("events accepted without the z flag"),
            Err(e) => e,
        };
        assert!(matches!(err, StoreError::NoLockEvents(_)), "{err}");
        assert!(err.to_string().contains("it is \"gK\""), "{err}");
    }

    #[tokio::test]
    async fn a_subscription_ends_when_redis_stops_publishing() {
        use futures::StreamExt;
        let server = RedisServer::start_with_notifications().expect("redis-server");
        let store = RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open");
        let mut events = store.watch_events().await.expect("events");
        let mut con = store.connection().await.expect("connection");
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("")
            .query_async(&mut con)
            .await
            .expect("config set");
        // The next probe (within 5 s) does not come back (2 s): the stream ends.
        let end = tokio::time::timeout(Duration::from_secs(15), events.next())
            .await
            .expect("the stream ends within 15 s");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn a_killed_subscription_ends_the_event_stream() {
        use futures::StreamExt;
        let server = RedisServer::start_with_notifications().expect("redis-server");
        let store = RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open");
        let mut events = store.watch_events().await.expect("lock events");
        let mut con = store.connection().await.expect("connection");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut con)
            .await
            .expect("client kill");
        assert_eq!(killed, 1);
        let end = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the stream ends within 10 s");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn discovery_finds_every_queue_with_keys() {
        let server = RedisServer::start().expect("redis-server");
        let store = RedisStore::open(&server.url(), " deckard_v1: ")
            .await
            .expect("open");
        store
            .add("only-active", &[("a".into(), 1.0)])
            .await
            .expect("add");
        store
            .add("orders::eu", &[("a".into(), 1.0)])
            .await
            .expect("add");
        store.pull("orders::eu", 1, 0, 100).await.expect("pull");
        store
            .add("locked", &[("a".into(), 1.0)])
            .await
            .expect("add");
        store.pull("locked", 1, 0, 100).await.expect("pull");
        store
            .release("locked", LockKind::Nack, "a", 0, 100, None)
            .await
            .expect("nack");
        let _: () = redis::cmd("SET")
            .arg("deckard_v1:other")
            .arg("x")
            .query_async(&mut store.connection().await.expect("connection"))
            .await
            .expect("set");
        let queues = store.discover_queues().await.expect("discover");
        assert_eq!(
            queues,
            vec![
                "locked".to_string(),
                "only-active".to_string(),
                "orders::eu".to_string()
            ]
        );
    }

    /// A node whose wall clock stepped an hour ahead: Redis's own clock
    /// caps "now", so nothing is unlocked or timed out early.
    #[tokio::test]
    async fn a_clock_ahead_of_redis_moves_nothing_early() {
        use crate::store::{now_ms, Fence, HousekeepRequest};
        let server = RedisServer::start().expect("redis-server");
        let store = RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open");
        let now = now_ms();
        store
            .add("q", &[("a".into(), 1.0), ("b".into(), 2.0)])
            .await
            .expect("add");
        // Both pulled with a 10-minute ack deadline; a acked with a 30-minute lock.
        store.pull("q", 2, now, 600_000).await.expect("pull");
        assert!(store
            .release("q", LockKind::Ack, "a", now, 1_800_000, None)
            .await
            .expect("ack"));
        let ahead = HousekeepRequest {
            now_ms: now + 3_600_000,
            batch: 10,
            unlock: true,
            timeout: true,
        };
        let fence = Fence {
            shard: 0,
            epoch: 1,
            node: 1,
        };
        let out = store.housekeep("q", ahead, fence).await.expect("housekeep");
        assert_eq!(
            (out.unlocked_ack, out.timed_out),
            (0, 0),
            "moved by a clock an hour ahead"
        );
        let snap = store.snapshot("q").await.expect("snapshot");
        assert!(snap.active.is_empty(), "{snap:?}");
    }

    #[tokio::test]
    async fn wrong_types_and_a_missing_redis_are_clear_errors() {
        let server = RedisServer::start().expect("redis-server");
        let store = RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open");
        let mut con = store.connection().await.expect("connection");
        let _: () = redis::cmd("SET")
            .arg("deckard_v1:queue:{broken}:lock_ack")
            .arg("x")
            .query_async(&mut con)
            .await
            .expect("set");
        let fence = Fence {
            shard: 0,
            epoch: 1,
            node: 1,
        };
        let req = HousekeepRequest {
            now_ms: 10,
            batch: 10,
            unlock: true,
            timeout: true,
        };
        let err = store
            .housekeep("broken", req, fence)
            .await
            .expect_err("wrong type");
        assert!(matches!(err, StoreError::WrongType { .. }), "{err}");

        // Nothing listens: the store opens, and operations say Redis is unavailable.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let down = RedisStore::open(&format!("redis://127.0.0.1:{port}/0"), "deckard_v1")
            .await
            .expect("open");
        let err = down
            .housekeep("q", req, fence)
            .await
            .expect_err("unavailable");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        // A malformed URL fails at open.
        assert!(RedisStore::open("redis://[bad", "p").await.is_err());
    }
}
