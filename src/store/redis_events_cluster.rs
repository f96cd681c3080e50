//! Queue events on a Redis Cluster: one keyspace-event subscription per
//! master, merged.
//!
//! Redis Cluster publishes a keyspace event only on the node that owns the
//! key, so the store subscribes on every master (a plain pub/sub
//! connection to each, by the address `CLUSTER SLOTS` gives), each checked
//! by its own probe: a key whose hash tag puts it in a slot that master
//! serves, written through the cluster connection (so it lands there).
//!
//! The merged stream ends, so the caller resubscribes and sweeps every
//! queue it runs (events published meanwhile are lost), as soon as
//!
//! - any one master's subscription ends (its connection closed, its probe
//!   did not come back: see `redis_events`);
//! - the set of masters changes ([`TOPOLOGY_CHECK`]): after a failover the
//!   promoted replica publishes events nobody listens to yet, whether or
//!   not the old master closed our connection; or
//! - [`SKIPPED_RETRY`] has passed since a master could not be subscribed to.
//!
//! # One master failing
//!
//! A master that cannot be reached is skipped rather than failing the whole
//! subscription: the others' events go on, and the stream ends after
//! [`SKIPPED_RETRY`] to try it again (each try sweeps once). A crashed
//! master's queues cannot be housekept anyway until its replica takes over,
//! which changes the masters. Missing events are different: a master whose
//! probe does not come back twice (in two random slots, since a slot being
//! migrated sends the probe's write to its new owner) fails the whole
//! subscription with `NoLockEvents`, and the node polls (`auto`): the mode
//! is the node's, not a master's. The error reads that master's setting.
//!
//! A reshard between existing masters needs no resubscription: every master
//! is listened to already, and the new owner of a slot publishes its keys'
//! events from the moment it serves them. A probe key whose slot starts
//! migrating can end a live subscription (one needless resubscription and
//! sweep).

use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::StreamExt;

use super::redis::RedisStore;
use super::redis_conn::{key_slot, Master, Node, RedisConn};
use super::redis_events::ProbeTiming;
use super::redis_scan::{masters, slot_map, SlotMap};
use super::{QueueEvent, QueueEventStream, StoreError};

/// How often the set of masters is compared with the one subscribed to.
pub const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

/// How soon the merged stream ends, so the caller resubscribes (and
/// sweeps), when some master could not be subscribed to.
pub const SKIPPED_RETRY: Duration = Duration::from_secs(2);

/// Random probe keys tried for one master before concluding that no key
/// under the prefix can land on it (with a prefix free of hash tags, a
/// master serving a single slot is missed with probability e^-64).
const PROBE_KEY_TRIES: u32 = 1 << 20;

impl RedisStore {
    /// Subscribes on every master (see the module doc).
    pub(super) async fn subscribe_cluster(
        &self,
        timing: ProbeTiming,
    ) -> Result<QueueEventStream, StoreError> {
        let mut con = self.connection().await?;
        let map = slot_map(&mut con).await?;
        let subscribed = masters(&map);
        let mut streams: Vec<BoxStream<'static, Option<QueueEvent>>> = Vec::new();
        let mut skipped: Option<StoreError> = None;
        for master in &subscribed {
            let Some(probe_key) = probe_key_on(self.prefix(), &map, master) else {
                tracing::debug!(%master, "no key under the prefix lands on this master: not subscribed");
                continue;
            };
            match self.subscribe_master(master, probe_key, &map, timing).await {
                Ok(events) => streams.push(until_end(events)),
                // Events are on or off for the whole node, not per master.
                Err(e @ StoreError::NoLockEvents(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(%master, error = %e, "cannot subscribe to this master's queue events; trying again in {SKIPPED_RETRY:?}");
                    skipped.get_or_insert(e);
                }
            }
        }
        if streams.is_empty() {
            return Err(skipped.unwrap_or_else(|| {
                StoreError::Unavailable("no master to subscribe to for queue events".into())
            }));
        }
        if skipped.is_some() {
            streams.push(end_after(SKIPPED_RETRY));
        }
        tracing::debug!(
            masters = subscribed.len(),
            listened = streams.len(),
            "subscribed to the masters' queue events"
        );
        streams.push(masters_change(con, subscribed));
        let merged = stream::select_all(streams)
            .take_while(|event| futures::future::ready(event.is_some()))
            .filter_map(futures::future::ready);
        Ok(Box::pin(merged))
    }

    /// One master's events. A probe that does not come back is tried once
    /// more in another slot before it counts as missing events: a slot
    /// being migrated sends the probe's write to the slot's new master.
    async fn subscribe_master(
        &self,
        master: &Master,
        first_probe: String,
        map: &SlotMap,
        timing: ProbeTiming,
    ) -> Result<QueueEventStream, StoreError> {
        let url = self.master_url(master);
        let client = redis::Client::open(url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("master {master}: {e}")))?;
        let node = Node::Master(master.clone());
        let first = self
            .subscribe_node(&client, 0, first_probe, timing, &node)
            .await;
        let result = match first {
            Err(StoreError::NoLockEvents(why)) => {
                tracing::debug!(%master, why, "probe did not come back; trying another slot");
                let Some(probe_key) = probe_key_on(self.prefix(), map, master) else {
                    return Err(StoreError::Unavailable(format!(
                        "master {master} serves no slot any more"
                    )));
                };
                self.subscribe_node(&client, 0, probe_key, timing, &node)
                    .await
            }
            other => other,
        };
        result.map_err(|e| on_master(master, e))
    }
}

/// Names the master in an error, keeping its kind.
fn on_master(master: &Master, e: StoreError) -> StoreError {
    match e {
        StoreError::NoLockEvents(why) => {
            StoreError::NoLockEvents(format!("master {master}: {why}"))
        }
        StoreError::Unavailable(why) => StoreError::Unavailable(format!("master {master}: {why}")),
        other => other,
    }
}

/// One `None` after `delay`.
fn end_after(delay: Duration) -> BoxStream<'static, Option<QueueEvent>> {
    stream::once(tokio::time::sleep(delay))
        .map(|()| None)
        .boxed()
}

/// `events`, then one `None` when it ends.
fn until_end(events: QueueEventStream) -> BoxStream<'static, Option<QueueEvent>> {
    events
        .map(Some)
        .chain(stream::once(futures::future::ready(None)))
        .boxed()
}

/// Emits `None` once the cluster's masters differ from `subscribed`
/// (checked every [`TOPOLOGY_CHECK`]; a failed check is tried again).
fn masters_change(
    con: RedisConn,
    subscribed: Vec<Master>,
) -> BoxStream<'static, Option<QueueEvent>> {
    stream::unfold((con, subscribed), |(mut con, subscribed)| async move {
        loop {
            tokio::time::sleep(TOPOLOGY_CHECK).await;
            match slot_map(&mut con).await {
                Ok(map) if masters(&map) != subscribed => {
                    tracing::info!("the cluster's masters changed: resubscribing to queue events");
                    return Some((None, (con, subscribed)));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the cluster's slot map"),
            }
        }
    })
    .boxed()
}

/// A probe key (outside Deckard's layout) whose slot `master` serves, or
/// `None` when no key under `prefix` lands there (then none of Deckard's
/// does either: a hash tag in the prefix pins every key to one slot).
fn probe_key_on(prefix: &str, map: &SlotMap, master: &Master) -> Option<String> {
    let served = |slot: u16| {
        map.iter()
            .any(|(first, last, m)| m == master && (*first..=*last).contains(&slot))
    };
    let mut key = format!("{prefix}:deckhand_probe:{{{:016x}}}", 0u64).into_bytes();
    let tag_at = key.len() - 17;
    // A master serving a third of the slots takes three tries on average.
    for _ in 0..PROBE_KEY_TRIES {
        let tag = rand::random::<u64>();
        for (i, digit) in key[tag_at..tag_at + 16].iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((tag >> (60 - 4 * i)) & 0xf) as usize];
        }
        if served(key_slot(&key)) {
            return String::from_utf8(key).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_key_lands_on_its_master() {
        let a = Master {
            host: "h".into(),
            port: 1,
        };
        let b = Master {
            host: "h".into(),
            port: 2,
        };
        let map: SlotMap = vec![(0, 100, a.clone()), (101, 16383, b.clone())];
        for _ in 0..20 {
            let key = probe_key_on("deckard_v1", &map, &a).expect("a key");
            assert!(key_slot(key.as_bytes()) <= 100, "{key}");
            assert!(key.starts_with("deckard_v1:deckhand_probe:{"));
        }
        let c = Master {
            host: "h".into(),
            port: 3,
        };
        assert!(probe_key_on("p", &map, &c).is_none());
        // A master serving one slot still gets a key of its own.
        let one: SlotMap = vec![
            (0, 6999, a.clone()),
            (7000, 7000, b.clone()),
            (7001, 16383, a),
        ];
        let key = probe_key_on("deckard_v1", &one, &b).expect("a key in slot 7000");
        assert_eq!(key_slot(key.as_bytes()), 7000, "{key}");
        // A hash tag in the prefix pins every key to one slot: no key of
        // ours (nor any of Deckard's) lands on a master without it.
        let pinned = "app{x}";
        let slot = key_slot(pinned.as_bytes());
        let split: SlotMap = vec![(slot, slot, b.clone()), (slot + 1, 16383, c.clone())];
        assert!(probe_key_on(pinned, &split, &c).is_none());
        assert!(probe_key_on(pinned, &split, &b).is_some());
    }
}
