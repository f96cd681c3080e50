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
//! dropped here. What the owner does with each kind: `worker::events`.
//!
//! # Checking that events really arrive
//!
//! Reading `CONFIG GET notify-keyspace-events` is not enough (managed Redis
//! services often forbid `CONFIG`, and ACLs can forbid channels), so after
//! subscribing, the subscriber writes a probe key outside Deckard's layout
//! (`<prefix>:deckhand_probe:<random>`, ZADD then DEL at once) and waits for
//! its own `zadd` event. Only if that arrives is the subscription used; if it
//! does not, the error names the setting and, when `CONFIG GET` is allowed,
//! its current value.
//!
//! # Losing the connection
//!
//! The stream ends when the connection closes (`CLIENT KILL TYPE pubsub`, a
//! Redis restart, an output buffer overflow): the caller resubscribes and
//! sweeps, since events published meanwhile are lost. A connection that
//! stays open but silent (a half-open TCP link) is found by a PING every
//! [`PING_INTERVAL`] that must be answered within [`PING_TIMEOUT`].

use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::Msg;

use super::layout::queue_of_key;
use super::redis::RedisStore;
use super::{EventKind, QueueEvent, QueueEventStream, StoreError};

/// How long the probe's own event may take to come back.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscription connection is checked with a PING.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a PING on the subscription connection may take.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
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

impl RedisStore {
    /// See [`super::QueueStore::watch_events`] and the module doc.
    pub(super) async fn subscribe_lock_events(&self) -> Result<QueueEventStream, StoreError> {
        let db = self.client().get_connection_info().redis_settings().db();
        let channel_prefix = format!("__keyspace@{db}__:");
        let prefix = self.prefix().to_string();
        let base = format!("{channel_prefix}{}:queue:{{*}}", glob_escape(&prefix));
        let probe_key = format!("{prefix}:deckhand_probe:{:016x}", rand::random::<u64>());
        let probe_channel = format!("{channel_prefix}{probe_key}");

        let connect = async {
            let pubsub = self
                .client()
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
            sink.subscribe(&probe_channel)
                .await
                .map_err(|e| unavailable("SUBSCRIBE", e))?;
            Ok::<_, StoreError>((sink, stream))
        };
        let (mut sink, mut stream) = tokio::time::timeout(SUBSCRIBE_TIMEOUT, connect)
            .await
            .map_err(|_| {
                StoreError::Unavailable("subscribing to keyspace events timed out".into())
            })??;

        // Probe: our own ZADD must come back as an event.
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&probe_key)
            .arg(0)
            .arg("probe")
            .ignore();
        pipe.cmd("DEL").arg(&probe_key).ignore();
        self.run_pipeline::<()>(&pipe).await?;
        let mut early: Vec<QueueEvent> = Vec::new();
        let probe = async {
            while let Some(msg) = stream.next().await {
                if msg.get_channel_name() == probe_channel {
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
            let current = match self.config_get("notify-keyspace-events").await {
                Ok(value) => format!("it is {value:?}"),
                Err(e) => format!("CONFIG GET was refused ({e})"),
            };
            return Err(StoreError::NoLockEvents(format!(
                "Redis did not publish a keyspace event for a ZADD within {PROBE_TIMEOUT:?}: \
                 {REQUIRED_SETTING}; {current}"
            )));
        }
        let _ = sink.unsubscribe(&probe_channel).await;
        tracing::debug!(db, prefix, "subscribed to lock events");

        let state = Subscription {
            sink,
            stream,
            channel_prefix,
            prefix,
            ping: tokio::time::interval_at(
                tokio::time::Instant::now() + PING_INTERVAL,
                PING_INTERVAL,
            ),
        };
        let early = futures::stream::iter(early);
        Ok(Box::pin(early.chain(futures::stream::unfold(
            state,
            Subscription::next_event,
        ))))
    }
}

/// A live subscription: the connection's two halves and the PING timer.
struct Subscription {
    /// Kept to PING (and to keep the subscription: dropping it closes the connection).
    sink: PubSubSink,
    stream: PubSubStream,
    channel_prefix: String,
    prefix: String,
    ping: tokio::time::Interval,
}

impl Subscription {
    /// The next event, or `None` once the connection is lost.
    async fn next_event(mut self) -> Option<(QueueEvent, Self)> {
        loop {
            tokio::select! {
                msg = self.stream.next() => {
                    let msg = msg?;
                    if let Some(event) = queue_event(&self.channel_prefix, &self.prefix, &msg) {
                        return Some((event, self));
                    }
                }
                _ = self.ping.tick() => {
                    let ping = self.sink.ping::<redis::Value>();
                    match tokio::time::timeout(PING_TIMEOUT, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "keyspace event connection failed a PING");
                            return None;
                        }
                        Err(_) => {
                            tracing::warn!("keyspace event connection did not answer a PING");
                            return None;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn prefixes_with_glob_characters_are_escaped() {
        assert_eq!(glob_escape("deckard_v1"), "deckard_v1");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
