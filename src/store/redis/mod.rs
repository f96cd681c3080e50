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
//!
//! The same store runs on a Redis Cluster (`store.cluster`, Deckard's
//! cluster URL: see [`super::redis_url`]): per-queue scripts go to the
//! master of the queue's slot, scans walk every master (see
//! [`super::redis_conn`] and [`super::redis_scan`]).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{Client, RedisError, Script};
use tokio::sync::Mutex;

use super::redis_calls::CallsByMaster;
use super::redis_conn::{
    key_slot, Master, Node, RedisConn, RETRIES, RETRY_MAX_WAIT_MS, RETRY_MIN_WAIT_MS,
};
use super::redis_scan::{scan_nodes, slot_map, KeyScan};
use super::redis_url::{self, RedisTarget};

use super::layout::{
    discovery_pattern, fence_pattern, normalize_prefix, queue_of_set_key, QueueKeys,
};
use super::{
    validate_queue_name, Fence, HousekeepOutcome, HousekeepRequest, QueueEventStream, QueueSizes,
    QueueStore, StoreError, FENCE_RETENTION,
};

use super::redis_scripts::{ADD, HOUSEKEEP, PULL, RAISE_GENERATION, RELEASE};

/// How long to wait for a connection before reporting Redis unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one command may take before it fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the first connection to a cluster may take: it reaches a seed,
/// reads the slot map and connects to every master.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The store's connection, once made, and when making it last failed.
#[derive(Default)]
struct ConnSlot {
    con: Option<RedisConn>,
    /// A caller that waited for the slot while an attempt failed fails at
    /// once instead of making its own: with Redis down at start, every
    /// shard task would otherwise wait for each earlier task's connect
    /// timeout in turn. A caller that arrives later tries again.
    failed_at: Option<std::time::Instant>,
}

/// What the store connects to.
enum Target {
    /// Both boxed: with TLS support a client is a few hundred bytes, and
    /// the two kinds differ in size.
    Single(Box<Client>),
    Cluster(Box<ClusterClient>),
}

pub struct RedisStore {
    target: Target,
    /// On a cluster, the seed URL's credentials (`user:password`), for the
    /// pub/sub connection each master's events need.
    cluster_auth: Option<String>,
    /// `rediss://`: the per-master connections (events) use TLS too.
    tls: bool,
    prefix: String,
    /// Made on first use and kept; both connection kinds reconnect by
    /// themselves. A tokio mutex because connecting awaits.
    connection: Mutex<ConnSlot>,
    housekeep: Script,
    add: Script,
    pull: Script,
    release: Script,
    /// Hands out the next cluster generation (`next_generation`).
    raise_generation: Script,
    /// On a cluster, housekeeping calls per master (`redis_calls`).
    calls: CallsByMaster,
    /// On a cluster, the next retry wait of each master the event
    /// subscriber skipped (`redis_events_cluster`); pruned to the current
    /// masters on every subscription.
    pub(super) skip_backoff: std::sync::Mutex<std::collections::HashMap<Master, Duration>>,
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
    /// A single Redis at `url` (a bad URL is an error now); connects on first use.
    pub async fn open(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::open_with(url, prefix, false).await
    }

    /// A single Redis, or with `cluster` a Redis Cluster given in Deckard's
    /// cluster URL form (see [`redis_url`]); connects on first use.
    pub async fn open_with(url: &str, prefix: &str, cluster: bool) -> Result<Self, StoreError> {
        let bad = |e: String| StoreError::Unavailable(format!("{}: {e}", redis_url::redacted(url)));
        let mut cluster_auth = None;
        let tls = redis_url::is_tls(url);
        let target = match redis_url::parse(url, cluster).map_err(StoreError::Unavailable)? {
            RedisTarget::Single(url) => Target::Single(Box::new(
                Client::open(url.as_str()).map_err(|e| bad(e.to_string()))?,
            )),
            RedisTarget::Cluster(nodes) => Target::Cluster(Box::new({
                cluster_auth = nodes.first().and_then(|n| redis_url::userinfo(n));
                ClusterClientBuilder::new(nodes)
                    .retries(RETRIES)
                    .min_retry_wait(RETRY_MIN_WAIT_MS)
                    .max_retry_wait(RETRY_MAX_WAIT_MS)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()
                    .map_err(|e| bad(e.to_string()))?
            })),
        };
        Ok(Self {
            target,
            cluster_auth,
            tls,
            prefix: normalize_prefix(prefix),
            connection: Mutex::new(ConnSlot::default()),
            housekeep: Script::new(HOUSEKEEP),
            add: Script::new(ADD),
            pull: Script::new(PULL),
            release: Script::new(RELEASE),
            raise_generation: Script::new(RAISE_GENERATION),
            calls: CallsByMaster::default(),
            skip_backoff: Default::default(),
        })
    }

    pub(super) async fn connection(&self) -> Result<RedisConn, StoreError> {
        let asked = std::time::Instant::now();
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.con.as_ref() {
            return Ok(c.clone());
        }
        if slot.failed_at.is_some_and(|at| at >= asked) {
            return Err(StoreError::Unavailable(
                "Redis unreachable: a connection attempt failed while this call waited for it"
                    .into(),
            ));
        }
        let made = self.connect().await;
        match &made {
            Ok(con) => slot.con = Some(con.clone()),
            Err(_) => slot.failed_at = Some(std::time::Instant::now()),
        }
        made
    }

    /// One connection attempt, bounded by the connect timeouts.
    async fn connect(&self) -> Result<RedisConn, StoreError> {
        let con = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                let connect = ConnectionManager::new_with_config(client.as_ref().clone(), config);
                let manager = tokio::time::timeout(CONNECT_TIMEOUT * 2, connect)
                    .await
                    .map_err(|_| StoreError::Unavailable("connecting to Redis timed out".into()))?
                    .map_err(unavailable)?;
                RedisConn::Single(manager)
            }
            Target::Cluster(client) => {
                let connect = client.get_async_connection();
                let cluster = tokio::time::timeout(CLUSTER_CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable("connecting to the Redis Cluster timed out".into())
                    })?
                    .map_err(unavailable)?;
                RedisConn::Cluster(cluster)
            }
        };
        Ok(con)
    }

    /// `(calls, usec)` of EVALSHA from `INFO commandstats`, summed over
    /// every master (measurements).
    pub async fn evalsha_stats(&self) -> Result<(u64, u64), StoreError> {
        let per_node = self.evalsha_stats_per_node().await?;
        Ok(per_node
            .iter()
            .fold((0, 0), |(c, u), (_, calls, usec)| (c + calls, u + usec)))
    }

    /// `(node, calls, usec)` of EVALSHA on each master (one row, named
    /// `single`, on a single Redis): how the load spreads over a cluster.
    pub async fn evalsha_stats_per_node(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut con = self.connection().await?;
        let (nodes, _) = scan_nodes(&mut con).await?;
        let mut rows = Vec::with_capacity(nodes.len());
        for node in nodes {
            let reply = con
                .on_node(redis::cmd("INFO").arg("commandstats").clone(), &node)
                .await
                .map_err(unavailable)?;
            let info: String = redis::from_redis_value(reply)
                .map_err(|e| StoreError::Unavailable(format!("INFO commandstats: {e}")))?;
            let (calls, usec) = evalsha_line(&info);
            let name = match node {
                Node::Single => "single".to_string(),
                Node::Master(m) => m.to_string(),
            };
            rows.push((name, calls, usec));
        }
        Ok(rows)
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

    /// A plain URL for one master, with the cluster's credentials.
    pub(super) fn master_url(&self, master: &super::redis_conn::Master) -> String {
        let host = if master.host.contains(':') {
            format!("[{}]", master.host)
        } else {
            master.host.clone()
        };
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.cluster_auth {
            Some(auth) => format!("{scheme}://{auth}@{host}:{}", master.port),
            None => format!("{scheme}://{host}:{}", master.port),
        }
    }

    /// The single server's client; `None` on a cluster.
    pub(super) fn single_client(&self) -> Option<&Client> {
        match &self.target {
            Target::Single(client) => Some(client.as_ref()),
            Target::Cluster(_) => None,
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One Redis setting, by `CONFIG GET` (refused on many managed
    /// services); on a cluster, one master's.
    pub async fn config_get(&self, name: &str) -> Result<String, StoreError> {
        self.config_get_on(name, &Node::Single).await
    }

    /// `CONFIG GET name` on one node (on a cluster, `Node::Single` is a
    /// random master).
    pub(crate) async fn config_get_on(
        &self,
        name: &str,
        node: &Node,
    ) -> Result<String, StoreError> {
        let mut con = self.connection().await?;
        let reply = con
            .on_node(redis::cmd("CONFIG").arg("GET").arg(name).clone(), node)
            .await
            .map_err(unavailable)?;
        let pairs: Vec<String> = redis::from_redis_value(reply)
            .map_err(|e| StoreError::Unavailable(format!("CONFIG GET {name}: {e}")))?;
        Ok(pairs.get(1).cloned().unwrap_or_default())
    }

    /// Counts a call on `key` under its slot's master, reading the slot map
    /// first when it is `redis_calls::REFRESH` old.
    async fn count_call(&self, con: &mut RedisConn, key: &str) {
        let now = std::time::Instant::now();
        if self.calls.claim_refresh(now) {
            match slot_map(con).await {
                Ok(map) => self.calls.update(map, now),
                Err(e) => tracing::debug!(error = %e, "cannot read the slot map for call counts"),
            }
        }
        self.calls.count(key_slot(key.as_bytes()));
    }

    fn keys(&self, queue: &str) -> Result<QueueKeys, StoreError> {
        validate_queue_name(queue)?;
        Ok(QueueKeys::new(&self.prefix, queue))
    }
}

/// `(calls, usec)` from the `cmdstat_evalsha` line of `INFO commandstats`.
fn evalsha_line(info: &str) -> (u64, u64) {
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
    (field("calls="), field("usec="))
}

/// `now_ms` is the caller's clock; the script may have used an earlier
/// "now" (Redis's clock, when the caller's runs ahead): its `next_due` is
/// moved onto the caller's clock by the difference, so a caller ahead of
/// Redis does not see as due what Redis does not, and call again at once.
fn parse_housekeep(
    queue: &str,
    fence: Fence,
    now_ms: i64,
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
        Some(1) if reply.len() >= 11 => Ok(HousekeepOutcome {
            unlocked_ack: reply[1] as u64,
            unlocked_nack: reply[2] as u64,
            timed_out: reply[3] as u64,
            next_due_ms: (reply[4] >= 0)
                .then(|| reply[4].saturating_add(now_ms.saturating_sub(reply[10]).max(0))),
            sizes: QueueSizes {
                active: reply[5].max(0) as u64,
                processing: reply[6].max(0) as u64,
                locked_ack: reply[7].max(0) as u64,
                locked_nack: reply[8].max(0) as u64,
                oldest_overdue_ms: reply[9].max(0) as u64,
            },
            unlock_lateness_ms: reply[11..].to_vec(),
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
        let mut scan = KeyScan::start(&mut con, &discovery_pattern(&self.prefix))
            .await?
            .best_effort();
        while let Some(keys) = scan.next_page(&mut con).await? {
            for key in &keys {
                // Deckard's four sets say a queue exists; a fence or an
                // orphan restore-score set alone does not.
                if let Some(q) = queue_of_set_key(&self.prefix, key) {
                    if validate_queue_name(q).is_ok() {
                        queues.insert(q.to_string());
                    }
                }
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
        if matches!(self.target, Target::Cluster(_)) {
            self.count_call(&mut con, &k.fence).await;
        }
        // KEYS: Deckard's six sets in layout order, then the fence.
        let mut call = self.housekeep.prepare_invoke();
        for key in k.sets() {
            call.key(key);
        }
        let reply: Vec<i64> = call
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
        parse_housekeep(queue, fence, req.now_ms, reply)
    }

    async fn watch_events(&self) -> Result<QueueEventStream, StoreError> {
        self.subscribe_lock_events().await
    }

    fn calls_by_master(&self) -> Vec<(String, u64)> {
        self.calls.snapshot()
    }

    async fn next_generation(&self, above: u64) -> Result<u64, StoreError> {
        let mut con = self.connection().await?;
        let key = format!("{}:deckhand_generation", self.prefix);
        self.raise_generation
            .key(&key)
            .arg(above)
            .invoke_async(&mut con)
            .await
            .map_err(|e| StoreError::Unavailable(format!("raising {key}: {e}")))
    }

    async fn highest_fence(&self) -> Result<u64, StoreError> {
        let mut con = self.connection().await?;
        let mut highest = 0u64;
        let mut scan = KeyScan::start(&mut con, &fence_pattern(&self.prefix)).await?;
        while let Some(keys) = scan.next_page(&mut con).await? {
            if keys.is_empty() {
                continue;
            }
            // A value that is not a number, or past 2^53 (the script's
            // numbers are doubles), was not written by deckhand: it ranks
            // nothing. (On a cluster the crate splits the MGET by slot.)
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut con)
                .await
                .map_err(unavailable)?;
            let found = values
                .iter()
                .flatten()
                .filter_map(|v| v.parse::<u64>().ok())
                .filter(|v| *v <= 1 << 53);
            highest = highest.max(found.max().unwrap_or(0));
        }
        Ok(highest)
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

mod client;
#[cfg(test)]
mod tests;
