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
//!   did not come back: see `redis_events`), which a crash or a failover
//!   does to the old master's connection; or
//! - the set of masters changes ([`TOPOLOGY_CHECK`]): a promoted replica or
//!   a new master publishes events nobody listens to yet.
//!
//! A reshard between existing masters needs neither: every master is
//! listened to already, and the new owner of a slot publishes its keys'
//! events from the moment it serves them.

use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::StreamExt;

use super::redis::RedisStore;
use super::redis_conn::{key_slot, Master, RedisConn};
use super::redis_events::ProbeTiming;
use super::redis_scan::{masters, slot_map, SlotMap};
use super::{QueueEvent, QueueEventStream, StoreError};

/// How often the set of masters is compared with the one subscribed to.
pub const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

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
        for master in &subscribed {
            let url = self.master_url(master);
            let client = redis::Client::open(url.as_str())
                .map_err(|e| StoreError::Unavailable(format!("master {master}: {e}")))?;
            let probe_key = probe_key_on(self.prefix(), &map, master)?;
            let events = self
                .subscribe_node(&client, 0, probe_key, timing)
                .await
                .map_err(|e| on_master(master, e))?;
            streams.push(until_end(events));
        }
        tracing::debug!(
            masters = subscribed.len(),
            "subscribed to every master's queue events"
        );
        streams.push(masters_change(con, subscribed));
        let merged = stream::select_all(streams)
            .take_while(|event| futures::future::ready(event.is_some()))
            .filter_map(futures::future::ready);
        Ok(Box::pin(merged))
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

/// A probe key (outside Deckard's layout) whose slot `master` serves.
fn probe_key_on(prefix: &str, map: &SlotMap, master: &Master) -> Result<String, StoreError> {
    let served = |slot: u16| {
        map.iter()
            .any(|(first, last, m)| m == master && (*first..=*last).contains(&slot))
    };
    // A master serves a share of the 16,384 slots: a few tries find one.
    for _ in 0..100_000 {
        let key = format!("{prefix}:deckhand_probe:{{{:016x}}}", rand::random::<u64>());
        if served(key_slot(key.as_bytes())) {
            return Ok(key);
        }
    }
    Err(StoreError::Unavailable(format!(
        "master {master} serves no slot: cannot probe its events"
    )))
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
        assert!(probe_key_on("p", &map, &c).is_err());
    }
}
