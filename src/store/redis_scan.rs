//! Walking every key that matches a pattern, on one Redis or on every
//! master of a Redis Cluster.
//!
//! On a cluster each master holds its own keys, so a scan lists the masters
//! (`CLUSTER SLOTS`) and runs `SCAN` to completion on each, by address.
//! The topology may change while it runs (a reshard moves keys from a
//! master not yet scanned to one already scanned; a failover removes a
//! master): a scan whose node fails, or whose slot map at the end differs
//! from the one it started with, starts over on the new masters, at most
//! [`MAX_RESTARTS`] times. A key may then be seen twice; both callers
//! (queue discovery, the highest fence) are idempotent per key.
//!
//! The slot map changes only when a slot's migration ends: while one is
//! under way its keys move between two masters without it, so a scan may
//! miss a key that moved from a master not yet scanned to one already
//! scanned. Queue discovery tolerates that (see below); the fence scan runs
//! once, when a new cluster is created, and could then rank a generation
//! below a key in transit: keep a reshard and a new deckhand cluster's
//! creation apart.
//!
//! Past the bound (a reshard still moving slots), a scan that must be
//! complete (the highest fence, before a new generation) fails, and the
//! caller tries again later; a best-effort scan (queue discovery, which
//! lock events and the next discovery complete) ends with what its passes
//! saw: a key is missed only if it moved away from every master before
//! each of the passes reached it.

use redis::Value;

use super::redis_conn::{parse_cluster_slots, Master, Node, RedisConn};
use super::StoreError;

/// Restarts of one scan after a topology change before it gives up.
pub const MAX_RESTARTS: u32 = 3;
/// Keys asked per `SCAN` step.
const SCAN_COUNT: u32 = 1000;

/// The slot map of a cluster: `(first slot, last slot, master)`, sorted.
pub type SlotMap = Vec<(u16, u16, Master)>;

/// Reads the slot map of the cluster behind `con`.
pub async fn slot_map(con: &mut RedisConn) -> Result<SlotMap, StoreError> {
    let reply = con
        .on_node(redis::cmd("CLUSTER").arg("SLOTS").clone(), &Node::Single)
        .await
        .map_err(|e| StoreError::Unavailable(format!("CLUSTER SLOTS: {e}")))?;
    parse_cluster_slots(&reply).map_err(StoreError::Unavailable)
}

/// The distinct masters of a slot map, in address order.
pub fn masters(map: &SlotMap) -> Vec<Master> {
    let mut masters: Vec<Master> = map.iter().map(|(_, _, m)| m.clone()).collect();
    masters.sort();
    masters.dedup();
    masters
}

/// The nodes a scan walks: the single server, or every master.
pub async fn scan_nodes(con: &mut RedisConn) -> Result<(Vec<Node>, Option<SlotMap>), StoreError> {
    match con {
        RedisConn::Single(_) => Ok((vec![Node::Single], None)),
        RedisConn::Cluster(_) => {
            let map = slot_map(con).await?;
            let nodes = masters(&map).into_iter().map(Node::Master).collect();
            Ok((nodes, Some(map)))
        }
    }
}

/// A scan in progress (see the module doc); [`KeyScan::next_page`] gives
/// its keys one `SCAN` step at a time.
pub struct KeyScan {
    pattern: String,
    nodes: Vec<Node>,
    /// The slot map the scan started from (`None`: a single server).
    map: Option<SlotMap>,
    /// The node being scanned, and its cursor.
    index: usize,
    cursor: u64,
    restarts: u32,
    /// End with what was seen, rather than fail, past [`MAX_RESTARTS`].
    best_effort: bool,
}

impl KeyScan {
    pub async fn start(con: &mut RedisConn, pattern: &str) -> Result<Self, StoreError> {
        let (nodes, map) = scan_nodes(con).await?;
        Ok(Self {
            pattern: pattern.to_string(),
            nodes,
            map,
            index: 0,
            cursor: 0,
            restarts: 0,
            best_effort: false,
        })
    }

    /// Past [`MAX_RESTARTS`], end with what the passes saw instead of
    /// failing (see the module doc).
    pub fn best_effort(mut self) -> Self {
        self.best_effort = true;
        self
    }

    /// The next page of keys, or `None` once every node was scanned to the
    /// end under one unchanged slot map.
    pub async fn next_page(
        &mut self,
        con: &mut RedisConn,
    ) -> Result<Option<Vec<String>>, StoreError> {
        loop {
            let Some(node) = self.nodes.get(self.index) else {
                if self.topology_changed(con).await? {
                    continue;
                }
                return Ok(None);
            };
            let cmd = redis::cmd("SCAN")
                .arg(self.cursor)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .clone();
            let reply = match con.on_node(cmd, node).await {
                Ok(reply) => reply,
                Err(e) if self.map.is_some() && self.restarts < MAX_RESTARTS => {
                    tracing::info!(node = ?node, error = %e, "a master failed mid-scan: scanning the new masters from the start");
                    self.restart(con).await?;
                    continue;
                }
                Err(e) => return Err(StoreError::Unavailable(format!("SCAN: {e}"))),
            };
            let (next, keys) = parse_scan(reply)?;
            if next == 0 {
                self.index += 1;
                self.cursor = 0;
            } else {
                self.cursor = next;
            }
            return Ok(Some(keys));
        }
    }

    /// At the end of a cluster scan: whether the slot map moved since it
    /// started (then the scan starts over, or fails past the bound).
    async fn topology_changed(&mut self, con: &mut RedisConn) -> Result<bool, StoreError> {
        let Some(started) = &self.map else {
            return Ok(false);
        };
        let now = slot_map(con).await?;
        if &now == started {
            return Ok(false);
        }
        if self.restarts >= MAX_RESTARTS && self.best_effort {
            tracing::debug!(
                "the cluster's slot map kept changing: this scan ends with what it saw"
            );
            return Ok(false);
        }
        if self.restarts >= MAX_RESTARTS {
            return Err(StoreError::Unavailable(format!(
                "the cluster's slot map changed during each of {} scans; try again once it settles",
                MAX_RESTARTS + 1
            )));
        }
        tracing::info!("the cluster's slot map changed during a scan: scanning again");
        self.restart_from(now);
        Ok(true)
    }

    async fn restart(&mut self, con: &mut RedisConn) -> Result<(), StoreError> {
        let map = slot_map(con).await?;
        self.restart_from(map);
        Ok(())
    }

    fn restart_from(&mut self, map: SlotMap) {
        self.restarts += 1;
        self.nodes = masters(&map).into_iter().map(Node::Master).collect();
        self.map = Some(map);
        self.index = 0;
        self.cursor = 0;
    }
}

/// A `SCAN` reply: the next cursor and the step's keys.
fn parse_scan(reply: Value) -> Result<(u64, Vec<String>), StoreError> {
    redis::from_redis_value(reply)
        .map_err(|e| StoreError::Unavailable(format!("unexpected SCAN reply: {e}")))
}
