//! Queue events on a Redis Cluster: one keyspace-event subscription per
//! master, merged.
//!
//! Redis Cluster publishes a keyspace event only on the node that owns the
//! key, so the store subscribes on every master (a plain pub/sub
//! connection to each, by the address `CLUSTER SLOTS` gives), each checked
//! by its own probe: a key whose hash tag puts it in a slot that master
//! serves, written through the cluster connection (so it lands there).
//!
//! Only the masters that can hold keys under the prefix are subscribed to:
//! all of them, unless a hash tag in the prefix pins every key to one slot,
//! whose master alone is then followed.
//!
//! The merged stream ends, so the caller resubscribes and sweeps every
//! queue it runs (events published meanwhile are lost), as soon as
//!
//! - any one master's subscription ends (its connection closed, its probe
//!   did not come back: see `redis_events`);
//! - the masters to follow change ([`TOPOLOGY_CHECK`]): after a failover
//!   the promoted replica publishes events nobody listens to yet, whether
//!   or not the old master closed our connection; or
//! - a master that could not be subscribed to answers again.
//!
//! # One master failing
//!
//! A master that cannot be reached (or refuses the subscriber) is skipped
//! rather than failing the whole subscription: the others' events go on. A
//! new pub/sub connection to it is tried after [`SKIPPED_RETRY`], then
//! twice as long each time up to [`SKIPPED_RETRY_MAX`], and once it takes
//! one the stream ends, so the node resubscribes and sweeps once.
//! Meanwhile that master's queues get no events; while it takes no
//! connection they mostly cannot be housekept anyway, and its replica's
//! promotion changes the masters. (A master at its client limit still
//! serves the connections already open: its queues then come back only
//! by the sweep, every `tasks.sweep_interval`, until it takes one more.) A master that takes a connection but keeps failing
//! the subscription itself (an ACL, say) ends the stream once the waits
//! reach [`SKIPPED_RETRY_MAX`], so its queues are still swept that often,
//! at the cost of one resubscription and sweep per [`SKIPPED_RETRY_MAX`];
//! consecutive skips of one master start from a doubled wait.
//!
//! Missing events are different: a master whose probe does not come back
//! twice (in two slots, since a slot being migrated sends the probe's
//! write to its new owner) fails the whole subscription with
//! `NoLockEvents`, and the node polls (`auto`): the mode is the node's, not
//! a master's. The error reads that master's setting. With a hash tag in
//! the prefix every probe lands in the same slot, so the second probe
//! cannot avoid a migrating slot: during that slot's migration the node
//! may poll.
//!
//! A reshard between followed masters needs no resubscription: the new
//! owner of a slot publishes its keys' events from the moment it serves
//! them. A probe key whose slot starts migrating can end a live
//! subscription (one needless resubscription and sweep).

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

/// The first wait before a skipped master is tried again; it doubles with
/// each skip in a row, up to [`SKIPPED_RETRY_MAX`].
pub const SKIPPED_RETRY: Duration = Duration::from_secs(2);
pub const SKIPPED_RETRY_MAX: Duration = Duration::from_secs(30);

/// Random probe keys tried for one master before giving up (a master
/// serving a single slot is missed with probability e^-16).
const PROBE_KEY_TRIES: u32 = 1 << 18;

impl RedisStore {
    /// How long to wait before trying `master` again after it was skipped:
    /// [`SKIPPED_RETRY`], doubling with each skip in a row, at most
    /// [`SKIPPED_RETRY_MAX`] (so a master that keeps refusing the subscriber
    /// costs a resubscription and sweep at most that often).
    fn skip_backoff_next(&self, master: &Master) -> Duration {
        let mut waits = crate::locks::lock(&self.skip_backoff);
        let wait = waits
            .get(master)
            .map_or(SKIPPED_RETRY, |w| (*w * 2).min(SKIPPED_RETRY_MAX));
        waits.insert(master.clone(), wait);
        wait
    }

    fn skip_backoff_reset(&self, master: &Master) {
        crate::locks::lock(&self.skip_backoff).remove(master);
    }

    /// Subscribes on every master that can hold Deckard's keys under the
    /// prefix (see the module doc), all at once.
    pub(super) async fn subscribe_cluster(
        &self,
        timing: ProbeTiming,
    ) -> Result<QueueEventStream, StoreError> {
        let mut con = self.connection().await?;
        let map = slot_map(&mut con).await?;
        let wanted = relevant_masters(&map, self.prefix());
        crate::locks::lock(&self.skip_backoff).retain(|m, _| wanted.contains(m));
        let attempts = wanted
            .iter()
            .map(|master| self.subscribe_master(master, &map, timing));
        let results = futures::future::join_all(attempts).await;
        let mut streams: Vec<BoxStream<'static, Option<QueueEvent>>> = Vec::new();
        let mut skipped = Vec::new();
        for (master, result) in wanted.iter().zip(results) {
            match result {
                Ok(events) => {
                    self.skip_backoff_reset(master);
                    streams.push(until_end(events));
                }
                // Events are on or off for the whole node, not per master.
                Err(e @ StoreError::NoLockEvents(_)) => return Err(e),
                Err(e) => skipped.push((master.clone(), e)),
            }
        }
        if streams.is_empty() {
            return Err(skipped.into_iter().next().map_or_else(
                || StoreError::Unavailable("no master to subscribe to for queue events".into()),
                |(_, e)| e,
            ));
        }
        for (master, e) in skipped {
            let wait = self.skip_backoff_next(&master);
            tracing::warn!(%master, error = %e, retry_in = ?wait, "cannot subscribe to this master's queue events; following the others");
            streams.push(reachable_again(self.master_url(&master), master, wait));
        }
        tracing::debug!(
            masters = wanted.len(),
            listened = streams.len(),
            "subscribed to the masters' queue events"
        );
        streams.push(masters_change(con, wanted, self.prefix().to_string()));
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
        map: &SlotMap,
        timing: ProbeTiming,
    ) -> Result<QueueEventStream, StoreError> {
        let probe = |avoid| {
            probe_key_on(self.prefix(), map, master, avoid).ok_or_else(|| {
                StoreError::Unavailable(format!("master {master}: no probe key lands on it"))
            })
        };
        let first_probe = probe(None)?;
        let first_slot = key_slot(first_probe.as_bytes());
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
                self.subscribe_node(&client, 0, probe(Some(first_slot))?, timing, &node)
                    .await
            }
            other => other,
        };
        result.map_err(|e| on_master(master, e))
    }
}

/// The masters that can hold keys under `prefix`: every master, or, when a
/// hash tag in the prefix pins every key to one slot, that slot's master.
fn relevant_masters(map: &SlotMap, prefix: &str) -> Vec<Master> {
    match pinned_slot(prefix) {
        Some(slot) => {
            let mut owner: Vec<Master> = map
                .iter()
                .filter(|(first, last, _)| (*first..=*last).contains(&slot))
                .map(|(_, _, m)| m.clone())
                .collect();
            owner.dedup();
            owner
        }
        None => masters(map),
    }
}

/// The slot every key under `prefix` hashes to, when the prefix holds a
/// non-empty hash tag (`app{x}`); `None` when keys spread over the slots.
fn pinned_slot(prefix: &str) -> Option<u16> {
    let bytes = prefix.as_bytes();
    let open = bytes.iter().position(|&b| b == b'{')?;
    let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| key_slot(bytes))
}

/// Ends (`None`) once `master` takes a new pub/sub connection and a
/// subscription on it, tried after `wait`, then after twice as long each
/// time up to [`SKIPPED_RETRY_MAX`]. A master that takes the connection but
/// refuses the subscription (an ACL, say) also ends it once the waits
/// reach that bound, so its queues are swept that often; one that takes no
/// connection at all (down, unreachable) does not: its queues cannot be
/// housekept anyway, and a failover changes the masters. The caller then
/// resubscribes to every master and sweeps once.
fn reachable_again(
    url: String,
    master: Master,
    wait: Duration,
) -> BoxStream<'static, Option<QueueEvent>> {
    stream::once(async move {
        let mut wait = wait;
        loop {
            tokio::time::sleep(wait).await;
            match try_subscriber(&url).await {
                Subscriber::Taken => {
                    tracing::info!(%master, "master takes subscribers again: resubscribing to queue events");
                    return None;
                }
                Subscriber::Refused if wait >= SKIPPED_RETRY_MAX => return None,
                Subscriber::Refused | Subscriber::NoConnection => {}
            }
            wait = (wait * 2).min(SKIPPED_RETRY_MAX);
        }
    })
    .boxed()
}

/// What a master did with a trial subscriber.
enum Subscriber {
    /// Connected and subscribed.
    Taken,
    /// Connected, but the subscription failed.
    Refused,
    /// No connection (down, unreachable, at its client limit, TLS refused).
    NoConnection,
}

/// Tries a new pub/sub connection to `url` and a subscription on it
/// (within 2 s each).
async fn try_subscriber(url: &str) -> Subscriber {
    let within = Duration::from_secs(2);
    let Ok(client) = redis::Client::open(url) else {
        return Subscriber::NoConnection;
    };
    let Ok(Ok(mut pubsub)) = tokio::time::timeout(within, client.get_async_pubsub()).await else {
        return Subscriber::NoConnection;
    };
    match tokio::time::timeout(within, pubsub.subscribe("deckhand_reachability_check")).await {
        Ok(Ok(())) => Subscriber::Taken,
        _ => Subscriber::Refused,
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

/// `events`, then one `None` when it ends.
fn until_end(events: QueueEventStream) -> BoxStream<'static, Option<QueueEvent>> {
    events
        .map(Some)
        .chain(stream::once(futures::future::ready(None)))
        .boxed()
}

/// Emits `None` once the masters that can hold keys under `prefix` differ
/// from `subscribed` (checked every [`TOPOLOGY_CHECK`]; a failed check is
/// tried again): a failover, a new master, or a pinned slot resharded.
fn masters_change(
    con: RedisConn,
    subscribed: Vec<Master>,
    prefix: String,
) -> BoxStream<'static, Option<QueueEvent>> {
    stream::unfold((con, subscribed), move |(mut con, subscribed)| {
        let prefix = prefix.clone();
        async move {
            loop {
                tokio::time::sleep(TOPOLOGY_CHECK).await;
                match slot_map(&mut con).await {
                    Ok(map) if relevant_masters(&map, &prefix) != subscribed => {
                        tracing::info!(
                            "the cluster's masters changed: resubscribing to queue events"
                        );
                        return Some((None, (con, subscribed)));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot read the cluster's slot map"),
                }
            }
        }
    })
    .boxed()
}

/// A probe key (outside Deckard's layout) whose slot `master` serves,
/// preferably not in slot `avoid`; `None` when none is found.
fn probe_key_on(
    prefix: &str,
    map: &SlotMap,
    master: &Master,
    avoid: Option<u16>,
) -> Option<String> {
    let served = |slot: u16| {
        map.iter()
            .any(|(first, last, m)| m == master && (*first..=*last).contains(&slot))
    };
    if let Some(slot) = pinned_slot(prefix) {
        // Every key lands in one slot: nothing to choose or avoid.
        let key = format!("{prefix}:deckhand_probe:{:016x}", rand::random::<u64>());
        return served(slot).then_some(key);
    }
    let mut key = format!("{prefix}:deckhand_probe:{{{:016x}}}", 0u64).into_bytes();
    let tag_at = key.len() - 17;
    let mut fallback = None;
    // A master serving a third of the slots takes three tries on average.
    for _ in 0..PROBE_KEY_TRIES {
        let tag = rand::random::<u64>();
        for (i, digit) in key[tag_at..tag_at + 16].iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((tag >> (60 - 4 * i)) & 0xf) as usize];
        }
        let slot = key_slot(&key);
        if served(slot) {
            if Some(slot) != avoid {
                return String::from_utf8(key).ok();
            }
            // The only slot a master serves may be the one to avoid.
            fallback.get_or_insert_with(|| key.clone());
        }
    }
    fallback.and_then(|k| String::from_utf8(k).ok())
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
            let key = probe_key_on("deckard_v1", &map, &a, None).expect("a key");
            assert!(key_slot(key.as_bytes()) <= 100, "{key}");
            assert!(key.starts_with("deckard_v1:deckhand_probe:{"));
        }
        let c = Master {
            host: "h".into(),
            port: 3,
        };
        assert!(probe_key_on("p", &map, &c, None).is_none());
        // A master serving one slot still gets a key of its own.
        let one: SlotMap = vec![
            (0, 6999, a.clone()),
            (7000, 7000, b.clone()),
            (7001, 16383, a),
        ];
        let key = probe_key_on("deckard_v1", &one, &b, None).expect("a key in slot 7000");
        assert_eq!(key_slot(key.as_bytes()), 7000, "{key}");
        // A hash tag in the prefix pins every key to one slot: no key of
        // ours (nor any of Deckard's) lands on a master without it.
        let pinned = "app{x}";
        let slot = key_slot(pinned.as_bytes());
        let split: SlotMap = vec![(slot, slot, b.clone()), (slot + 1, 16383, c.clone())];
        assert!(probe_key_on(pinned, &split, &c, None).is_none());
        assert!(probe_key_on(pinned, &split, &b, None).is_some());
        assert_eq!(pinned_slot(pinned), Some(slot));
        assert_eq!(pinned_slot("deckard_v1"), None);
        assert_eq!(pinned_slot("a{}b"), None, "an empty tag does not pin");
        assert_eq!(
            pinned_slot("a{b"),
            None,
            "a tag closed by our own key does not pin"
        );
        // Only the pinned slot's master is wanted; without a tag, all.
        assert_eq!(relevant_masters(&split, pinned), vec![b.clone()]);
        assert_eq!(
            relevant_masters(&split, "deckard_v1"),
            vec![b.clone(), c.clone()]
        );
    }

    #[test]
    fn a_second_probe_avoids_the_first_ones_slot() {
        let a = Master {
            host: "h".into(),
            port: 1,
        };
        let map: SlotMap = vec![(0, 1, a.clone())];
        for _ in 0..20 {
            let key = probe_key_on("deckard_v1", &map, &a, Some(0)).expect("a key");
            assert_eq!(key_slot(key.as_bytes()), 1, "{key}");
        }
        // A master serving only the slot to avoid still gets a key.
        let single: SlotMap = vec![(5, 5, a.clone())];
        let key = probe_key_on("deckard_v1", &single, &a, Some(5)).expect("a key");
        assert_eq!(key_slot(key.as_bytes()), 5);
    }
}
