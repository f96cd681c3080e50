//! One connection type for a single Redis and for a Redis Cluster, and the
//! few operations that differ between them.
//!
//! # Routing on a cluster
//!
//! Every per-queue operation is one script (or one pipeline) over keys that
//! share the queue's hash tag, so the `redis` crate's cluster connection
//! sends it to the master of that slot (it routes `EVALSHA` by its first
//! key) and follows `MOVED`/`ASK` redirections itself. Scripts of different
//! queues are never pipelined together (that would be cross-slot); they run
//! concurrently instead. `NOSCRIPT` after a failover (script caches are per
//! node) is handled by `Script::invoke_async`, which loads the script and
//! retries.
//!
//! What is not per key is done master by master: `redis_scan` lists them
//! from `CLUSTER SLOTS`, and a key scan walks each one by address (`SCAN`
//! on the cluster connection would reach one random node).
//!
//! # Retries
//!
//! The crate retries `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` and `LOADING`
//! after a wait that starts at 1.28 s by default: a failover would stall
//! every call that long. With [`RETRY_MIN_WAIT_MS`], [`RETRY_MAX_WAIT_MS`]
//! and [`RETRIES`], retry *n* waits a uniform time in 10 ms to
//! min(10·2ⁿ, 320) ms: at most 934 ms for all six, about 0.5 s on average.
//! (`MOVED`, `ASK` and reconnections are retried at once.) The whole call is
//! also bounded by the response timeout (3 s), retries included. Past that
//! the call fails, and the shard task retries the queue after its own
//! short back-off (`STORE_RETRY`), so no call waits for a whole failover and
//! the rest of the shard keeps going.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Retries of one cluster call (redirections and `TRYAGAIN`-like errors).
pub const RETRIES: u32 = 6;
/// Shortest wait before a retry, instead of the crate's 1,280 ms.
pub const RETRY_MIN_WAIT_MS: u64 = 10;
/// Longest wait before a retry (with the crate's doubling from 10 ms, six
/// retries wait at most 934 ms in all).
pub const RETRY_MAX_WAIT_MS: u64 = 320;

/// A connection to a single Redis (reconnecting manager) or to a cluster
/// (the crate's cluster connection, which reconnects and follows the
/// topology itself). Both are cheap to clone.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// A master of a cluster, as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Master {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where a non-keyed command goes: the single server, or one master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Single,
    Master(Master),
}

impl RedisConn {
    /// Runs a command that names no key on `node` and returns its reply.
    pub async fn on_node(&mut self, cmd: Cmd, node: &Node) -> redis::RedisResult<Value> {
        match (self, node) {
            (RedisConn::Single(c), _) => cmd.query_async(c).await,
            (RedisConn::Cluster(c), Node::Master(m)) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: m.host.clone(),
                    port: m.port,
                });
                c.route_command(cmd, route).await
            }
            (RedisConn::Cluster(c), Node::Single) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                c.route_command(cmd, route).await
            }
        }
    }
}

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, when not empty) or of the whole key, modulo
/// [`SLOTS`], as Redis Cluster computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(key)) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot ranges and their masters from a `CLUSTER SLOTS` reply:
/// `(first slot, last slot, master)`, sorted. Replicas are not listed.
pub fn parse_cluster_slots(reply: &Value) -> Result<Vec<(u16, u16, Master)>, String> {
    let bad = |what: &str| format!("unexpected CLUSTER SLOTS reply: {what}");
    let Value::Array(ranges) = reply else {
        return Err(bad("not an array"));
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad("a range is not an array"));
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad("a range lacks its slots or master"));
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        // An empty, NULL or `?` endpoint (`cluster-preferred-endpoint-type`
        // `unknown-endpoint`, or `hostname` without hostnames) names no
        // address this store could reach a master by: say which setting.
        if host.is_empty() || host == "?" {
            return Err(bad(
                "a master announces no endpoint; set cluster-preferred-endpoint-type ip \
                 (the default) or give every node a hostname",
            ));
        }
        let port = match master.get(1) {
            Some(Value::Int(p)) => u16::try_from(*p).map_err(|_| bad("a port is out of range"))?,
            _ => return Err(bad("a master has no port")),
        };
        let slot = |s: i64| u16::try_from(s).map_err(|_| bad("a slot is out of range"));
        out.push((slot(*first)?, slot(*last)?, Master { host, port }));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_give_each_range_its_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7001), bulk("id-b")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7004), bulk("id-e")]),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7000), bulk("id-a")]),
            ]),
        ]);
        let parsed = parse_cluster_slots(&reply).expect("parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, 0);
        assert_eq!(parsed[0].2.to_string(), "127.0.0.1:7000");
        assert_eq!(parsed[1].2.port, 7001);
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Redis Cluster's reference values (`CLUSTER KEYSLOT`).
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), 8363);
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn a_malformed_reply_is_an_error_not_a_panic() {
        assert!(parse_cluster_slots(&Value::Int(1)).is_err());
        let short = Value::Array(vec![Value::Array(vec![Value::Int(0)])]);
        assert!(parse_cluster_slots(&short).is_err());
        let bad_port = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(1),
            Value::Array(vec![bulk("h"), Value::Int(70000)]),
        ])]);
        assert!(parse_cluster_slots(&bad_port).unwrap_err().contains("port"));
        for host in [bulk(""), bulk("?"), Value::Nil] {
            let no_endpoint = Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                Value::Array(vec![host, Value::Int(7000)]),
            ])]);
            let e = parse_cluster_slots(&no_endpoint).unwrap_err();
            assert!(e.contains("cluster-preferred-endpoint-type"), "{e}");
        }
    }
}
