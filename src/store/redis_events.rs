//! Queue events (locks and pulls) from Redis keyspace notifications.
//!
//! # Design
//!
//! With `notify-keyspace-events` holding `K` (keyspace channels) and `z`
//! (sorted-set commands), Redis publishes `zadd` on
//! `__keyspace@<db>__:<key>` for every ZADD, including those inside Deckard's
//! own Lua scripts. One dedicated pub/sub connection pattern-subscribes to
//! the two lock sets and the processing set of every queue under the prefix
//! (`…:queue:{*}:lock_ack`, `…:lock_nack`, `…:tmp`; a pattern matches the
//! whole channel name, so the `:score` sets are not included) and turns each
//! `zadd` into a [`QueueEvent`]: a lock, or a pull (new ack deadlines). Other
//! commands on those keys (the `zrem` of our own moves, Deckard's acks) are
//! dropped here. What the owner does with each kind: `worker::events`. On a
//! Redis Cluster there is one such subscription per master, merged
//! (`redis_events_cluster`).
//!
//! # Checking that events really arrive
//!
//! Reading `CONFIG GET notify-keyspace-events` is not enough (managed Redis
//! services often forbid `CONFIG`, and ACLs can forbid channels), so after
//! subscribing, the subscriber writes a probe key outside Deckard's layout
//! (`<prefix>:deckhand_probe:<random>`, ZADD then DEL at once) and waits for
//! its own `zadd` event (not just any event: with `Kg` the DEL's `del` comes,
//! but no sorted-set event ever would). Only if that arrives is the
//! subscription used; if it does not, the error names the setting and, when
//! `CONFIG GET` is allowed, its current value. The probe is repeated every
//! [`PROBE_INTERVAL`] while subscribed: a subscription whose probe does not
//! come back within [`PROBE_TIMEOUT`] (a half-open connection, or the setting
//! changed at run time) ends like a lost one.
//!
//! # Losing the connection
//!
//! The stream ends when the connection closes (`CLIENT KILL TYPE pubsub`, a
//! Redis restart, an output buffer overflow): the caller resubscribes and
//! sweeps, since events published meanwhile are lost. A connection that
//! stays open but silent (a half-open TCP link) is found by the probe.
//!
//! # Falling behind
//!
//! The `redis` crate buffers received messages in an unbounded channel, so
//! a node that reads events slower than Redis publishes them would hold an
//! ever-growing backlog in its own memory (Redis's
//! `client-output-buffer-limit pubsub` never fires: the crate drains the
//! socket). The probe bounds that too: it is written every
//! [`PROBE_INTERVAL`] even while events keep coming, and its event queues up
//! behind everything received before it. If it is not read back within
//! [`PROBE_TIMEOUT`], the reader is that far behind and the subscription
//! ends like a lost one, dropping the backlog (the caller's resubscription
//! sweep covers it). The backlog is thus bounded by what Redis publishes in
//! `PROBE_INTERVAL + PROBE_TIMEOUT` plus the time the probe's write takes
//! (bounded by the command connection's response timeout).

use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::Msg;

use super::layout::queue_of_key;
use super::redis::RedisStore;
use super::redis_conn::{Node, RedisConn};
use super::{EventKind, QueueEvent, QueueEventStream, StoreError};

/// How long the probe's own event may take to come back.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a live subscription is checked with a probe.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long connecting and subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The Redis setting lock events need, for error messages and docs.
pub const REQUIRED_SETTING: &str = "notify-keyspace-events must contain K and z (e.g. \"Kz\")";

/// Escapes Redis glob specials so a prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The event a keyspace notification announces, if any: a `zadd` to a lock
/// set or to the processing set.
fn queue_event(channel_prefix: &str, prefix: &str, msg: &Msg) -> Option<QueueEvent> {
    let payload: String = msg.get_payload().ok()?;
    if payload != "zadd" {
        return None;
    }
    let key = msg.get_channel_name().strip_prefix(channel_prefix)?;
    let queue = queue_of_key(prefix, key)?;
    let kind = if key.ends_with("}:lock_ack") || key.ends_with("}:lock_nack") {
        EventKind::Lock
    } else if key.ends_with("}:tmp") {
        EventKind::Pull
    } else {
        return None;
    };
    Some(QueueEvent {
        queue: queue.to_string(),
        kind,
    })
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// How often the probe is written and how long it may take to come back.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProbeTiming {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        Self {
            interval: PROBE_INTERVAL,
            timeout: PROBE_TIMEOUT,
        }
    }
}

impl RedisStore {
    /// See [`super::QueueStore::watch_events`] and the module doc.
    pub(super) async fn subscribe_lock_events(&self) -> Result<QueueEventStream, StoreError> {
        self.subscribe_with(ProbeTiming::default()).await
    }

    pub(super) async fn subscribe_with(
        &self,
        timing: ProbeTiming,
    ) -> Result<QueueEventStream, StoreError> {
        let Some(client) = self.single_client() else {
            return self.subscribe_cluster(timing).await;
        };
        let db = client.get_connection_info().redis_settings().db();
        let probe_key = format!(
            "{}:deckhand_probe:{:016x}",
            self.prefix(),
            rand::random::<u64>()
        );
        self.subscribe_node(client, db, probe_key, timing, &Node::Single)
            .await
    }

    /// Subscribes to one server's keyspace events (a single Redis, or one
    /// master of a cluster), probed with `probe_key` (on a cluster, a key
    /// that master serves): what arrived while probing, then live events.
    /// `node` names the server for reading its setting when the probe fails.
    pub(super) async fn subscribe_node(
        &self,
        client: &redis::Client,
        db: i64,
        probe_key: String,
        timing: ProbeTiming,
        node: &Node,
    ) -> Result<QueueEventStream, StoreError> {
        let channel_prefix = format!("__keyspace@{db}__:");
        let prefix = self.prefix().to_string();
        let probe_channel = format!("{channel_prefix}{probe_key}");
        let (sink, mut stream) = tokio::time::timeout(
            SUBSCRIBE_TIMEOUT,
            self.connect_pubsub(client, &channel_prefix, &probe_channel),
        )
        .await
        .map_err(|_| {
            StoreError::Unavailable("subscribing to keyspace events timed out".into())
        })??;

        // Probe: our own ZADD must come back as a `zadd` event (a DEL's `del`
        // alone would mean Redis publishes keyspace events, but not for sorted sets).
        let mut con = self.connection().await?;
        write_probe(&mut con, &probe_key).await?;
        let mut early: Vec<QueueEvent> = Vec::new();
        let probe = async {
            while let Some(msg) = stream.next().await {
                if is_probe_zadd(&msg, &probe_channel) {
                    return Ok(true);
                }
                if let Some(event) = queue_event(&channel_prefix, &prefix, &msg) {
                    early.push(event);
                }
            }
            Err(StoreError::Unavailable(
                "the keyspace event connection closed while probing".into(),
            ))
        };
        let arrived = tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .unwrap_or(Ok(false))?;
        if !arrived {
            return Err(self.no_lock_events(node).await);
        }
        tracing::debug!(db, prefix, "subscribed to queue events");

        let state = Subscription {
            _sink: sink,
            stream,
            channel_prefix,
            prefix,
            con,
            probe_key,
            probe_channel,
            timing,
            next_probe: tokio::time::Instant::now() + timing.interval,
            probe_due: None,
            probe_sent: false,
        };
        let early = futures::stream::iter(early);
        Ok(Box::pin(early.chain(futures::stream::unfold(
            state,
            Subscription::next_event,
        ))))
    }

    /// A pub/sub connection subscribed to Deckard's lock and processing
    /// sets under this prefix, and to the probe's channel.
    async fn connect_pubsub(
        &self,
        client: &redis::Client,
        channel_prefix: &str,
        probe_channel: &str,
    ) -> Result<(PubSubSink, PubSubStream), StoreError> {
        let base = format!("{channel_prefix}{}:queue:{{*}}", glob_escape(self.prefix()));
        let pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| unavailable("connecting for keyspace events", e))?;
        let (mut sink, stream) = pubsub.split();
        sink.psubscribe(&[
            format!("{base}:lock_ack"),
            format!("{base}:lock_nack"),
            format!("{base}:tmp"),
        ])
        .await
        .map_err(|e| unavailable("PSUBSCRIBE", e))?;
        sink.subscribe(probe_channel)
            .await
            .map_err(|e| unavailable("SUBSCRIBE", e))?;
        Ok((sink, stream))
    }

    /// The error for a probe that did not come back, with Redis's setting.
    async fn no_lock_events(&self, node: &Node) -> StoreError {
        let current = match self.config_get_on("notify-keyspace-events", node).await {
            Ok(value) => format!("it is {value:?}"),
            Err(e) => format!("CONFIG GET was refused ({e})"),
        };
        StoreError::NoLockEvents(format!(
            "Redis did not publish a keyspace event for a ZADD within {PROBE_TIMEOUT:?}: \
             {REQUIRED_SETTING}; {current}"
        ))
    }
}

/// ZADD (a new member each time, so the ZADD always changes the key) then
/// DEL of the probe key (outside Deckard's layout).
async fn write_probe(con: &mut RedisConn, probe_key: &str) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(probe_key)
        .arg(0)
        .arg(rand::random::<u64>())
        .ignore();
    pipe.cmd("DEL").arg(probe_key).ignore();
    pipe.query_async::<()>(con)
        .await
        .map_err(|e| unavailable("writing the keyspace event probe", e))
}

fn is_probe_zadd(msg: &Msg, probe_channel: &str) -> bool {
    msg.get_channel_name() == probe_channel
        && msg.get_payload::<String>().is_ok_and(|p| p == "zadd")
}

/// A live subscription, checked by a probe every [`PROBE_INTERVAL`].
struct Subscription {
    /// Kept only so the subscription lives (dropping it closes the connection).
    _sink: PubSubSink,
    stream: PubSubStream,
    channel_prefix: String,
    prefix: String,
    /// A command connection, for the probe's writes.
    con: RedisConn,
    probe_key: String,
    probe_channel: String,
    timing: ProbeTiming,
    /// When to write the next probe (while none is outstanding).
    next_probe: tokio::time::Instant,
    /// When the probe written last must have come back by (or, after a
    /// failed write, by when one must have been written and come back).
    probe_due: Option<tokio::time::Instant>,
    /// A probe was written and its event has not been read yet.
    probe_sent: bool,
}

impl Subscription {
    /// The next event, or `None` once the subscription is lost, Redis
    /// stopped publishing, or this reader fell [`PROBE_TIMEOUT`] behind (the
    /// probe did not come back in time, see the module doc).
    async fn next_event(mut self) -> Option<(QueueEvent, Self)> {
        loop {
            // Checked on every turn, not only when the stream is idle: a
            // biased select would never reach a timer while events flow.
            let now = tokio::time::Instant::now();
            if self.probe_due.is_some_and(|due| now >= due) {
                tracing::warn!(
                    "the keyspace event probe did not come back within {:?}: the \
                     subscription is dead, Redis stopped publishing ({REQUIRED_SETTING}), \
                     or this node reads events too slowly; resubscribing",
                    self.timing.timeout
                );
                return None;
            }
            if !self.probe_sent && now >= self.next_probe {
                self.next_probe = now + self.timing.interval;
                match write_probe(&mut self.con, &self.probe_key).await {
                    Ok(()) => {
                        // From when the write returned: a write queued
                        // behind busy scripts is not the reader's delay.
                        self.probe_sent = true;
                        self.probe_due = Some(tokio::time::Instant::now() + self.timing.timeout);
                    }
                    Err(e) => {
                        // Retried at the next interval; but the clock starts
                        // now, or a command connection that keeps failing
                        // would leave the backlog unbounded.
                        tracing::debug!(error = %e, "cannot write the keyspace event probe");
                        self.probe_due
                            .get_or_insert(now + self.timing.interval + self.timing.timeout);
                    }
                }
            }
            let wake = match self.probe_due {
                Some(due) if self.probe_sent => due,
                Some(due) => due.min(self.next_probe),
                None => self.next_probe,
            };
            tokio::select! {
                // Messages are read before the timer; the probe is judged
                // at the top of the loop, after whatever was ready.
                biased;
                msg = self.stream.next() => {
                    let msg = msg?;
                    if is_probe_zadd(&msg, &self.probe_channel) {
                        self.probe_due = None;
                        self.probe_sent = false;
                    } else if let Some(event) = queue_event(&self.channel_prefix, &self.prefix, &msg) {
                        return Some((event, self));
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    /// A reader that falls behind loses its subscription instead of
    /// buffering without bound (module doc, "Falling behind").
    #[tokio::test]
    async fn a_reader_far_behind_loses_the_subscription() {
        let server = RedisServer::start_with_notifications().expect("redis-server");
        let store = RedisStore::open(&server.url(), "deckard_v1")
            .await
            .expect("open");
        let mut con = store.connection().await.expect("connection");
        // Only this test's rule may end the subscription, not Redis's own
        // limit on a subscriber's output buffer.
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("client-output-buffer-limit")
            .arg("pubsub 0 0 0")
            .query_async(&mut con)
            .await
            .expect("config set");
        let timing = ProbeTiming {
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(20),
        };
        let mut events = store.subscribe_with(timing).await.expect("subscribe");

        // A burst far longer than the reader can take in the probe timeout.
        const BURST: u64 = 200_000;
        let _: () = redis::cmd("EVAL")
            .arg("for i = 1, tonumber(ARGV[1]) do redis.call('ZADD', KEYS[1], i, i) end")
            .arg(1)
            .arg("deckard_v1:queue:{burst}:lock_ack")
            .arg(BURST)
            .query_async(&mut con)
            .await
            .expect("burst");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut read = 0u64;
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(_)) => read += 1,
                Ok(None) => break,
                Err(_) => panic!("still subscribed after reading {read} of {BURST} events"),
            }
        }
        assert!(read < BURST, "the whole backlog was read before giving up");
    }

    #[test]
    fn prefixes_with_glob_characters_are_escaped() {
        assert_eq!(glob_escape("deckard_v1"), "deckard_v1");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
