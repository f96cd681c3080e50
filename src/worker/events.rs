//! Queue events: how a node learns of new locks the moment Deckard takes them.
//!
//! # Design
//!
//! One subscriber task per node ([`run_subscriber`]) holds the store's event
//! stream (`QueueStore::watch_events`: Redis keyspace notifications of
//! Deckard's lock sets and processing sets) while the node runs at least one
//! shard; a node that runs none (the leader, usually) does not subscribe,
//! since every subscriber receives every event. Each event names a queue; the
//! subscriber hashes it to its shard and, if that shard runs here, drops it
//! into the shard's [`ShardInbox`]. The shard task drains its inbox between
//! calls and adopts a queue it has never seen without waiting for the
//! leader's discovery. What it does with each kind:
//!
//! - a **lock**: calls the queue at once (coalesced by `tasks.call_spacing`);
//!   the call learns the lock's unlock time and sets an exact timer;
//! - a **pull** (new ack deadlines): calls the queue within
//!   `tasks.poll_interval`, coalescing every pull of that window into one
//!   call. Ack deadlines are minutes in Deckard by default, so the call sets
//!   an exact timer long before they are due; a deadline shorter than
//!   `poll_interval` can time out that much late. A call per pull would
//!   double what a busy queue costs Redis; this costs at most one call per
//!   `poll_interval` per queue being pulled.
//!
//! Pub/sub is at-most-once. So:
//! - every (re)subscription, and every change of [`Scheduling`], bumps its
//!   `generation`, and every shard task then calls all its queues at once (a
//!   sweep): whatever was announced while nobody listened is found;
//! - every queue is still called at least every `tasks.sweep_interval`.
//!
//! Modes (`tasks.notifications`): `off` never subscribes; `auto` subscribes
//! when the store publishes events and polls otherwise, checking again every
//! [`RECHECK`]; `require` is checked once at start (the node refuses to
//! start without events, see [`check_at_start`]) and afterwards behaves like
//! `auto`, logging errors instead of warnings when it has to poll.
//! deckhand never changes the Redis setting itself (see docs/deckard-compat.md).
//!
//! # Invariants
//!
//! - An inbox holds at most [`INBOX_LIMIT`] names; past that it records an
//!   overflow and its shard sweeps instead: memory stays bounded whatever
//!   the event rate.
//! - While [`Scheduling::mode`] is `Polling`, no event is relied upon: every
//!   queue is called at least every `tasks.poll_interval`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use super::WorkerShared;
use crate::cluster::shard_of;
use crate::config::NotificationMode;
use crate::locks::lock;
use crate::shutdown::ShutdownListener;
use crate::store::{EventKind, SharedStore, StoreError};

/// Most queue names an inbox holds before it falls back to a sweep.
pub const INBOX_LIMIT: usize = 65_536;
/// How often `auto` checks again whether the store publishes events.
pub const RECHECK: Duration = Duration::from_secs(30);
/// Longest wait between attempts to (re)subscribe after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the start-up check may wait for a store that is down.
const START_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How the shard tasks of this node find new locks right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Lock events drive the calls; the sweep is the safety net.
    Events,
    /// No events: every queue is polled at `tasks.poll_interval`.
    Polling,
}

/// The node's scheduling state, watched by every shard task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduling {
    pub mode: Mode,
    /// Whether the node holds a live subscription right now (a node with
    /// no shards does not subscribe, while still in `Events` mode).
    pub subscribed: bool,
    /// Why the node polls (empty in `Events` mode).
    pub reason: String,
    /// Bumped on every (re)subscription and mode change: shard tasks sweep.
    pub generation: u64,
}

impl Scheduling {
    /// The state before the first check: polling, so nothing is missed.
    pub fn initial(mode: NotificationMode) -> Self {
        let reason = match mode {
            NotificationMode::Off => "tasks.notifications = \"off\"",
            _ => "not subscribed yet",
        };
        Self {
            mode: Mode::Polling,
            subscribed: false,
            reason: reason.to_string(),
            generation: 0,
        }
    }

    /// One line for `ctl status` and logs.
    pub fn describe(&self) -> String {
        match (self.mode, self.subscribed) {
            (Mode::Events, true) => "events".to_string(),
            (Mode::Events, false) => "events (standby: no shards here)".to_string(),
            (Mode::Polling, _) => format!("polling ({})", self.reason),
        }
    }
}

/// Queue names announced for one running shard, waiting for its task.
#[derive(Debug)]
pub struct ShardInbox {
    /// The shard task that drains it (each task gets its own inbox).
    pub task: u64,
    /// Announced queues, each with the most urgent kind announced.
    queues: Mutex<HashMap<String, EventKind>>,
    /// More than [`INBOX_LIMIT`] names arrived: sweep the shard.
    overflow: AtomicBool,
    /// Wakes the shard task (a permit is kept if it is busy).
    pub wake: Notify,
}

impl ShardInbox {
    pub fn new(task: u64) -> Self {
        Self {
            task,
            queues: Mutex::new(HashMap::new()),
            overflow: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Announces `queue`; false when the inbox was full and its name was
    /// dropped (the shard sweeps what it knows; a queue it does not know
    /// yet needs the leader's discovery).
    pub fn push(&self, queue: &str, kind: EventKind) -> bool {
        let kept = {
            let mut queues = lock(&self.queues);
            let kept = if let Some(known) = queues.get_mut(queue) {
                *known = (*known).max(kind);
                true
            } else if queues.len() < INBOX_LIMIT {
                queues.insert(queue.to_string(), kind);
                true
            } else {
                self.overflow.store(true, Ordering::Relaxed);
                false
            };
            debug_assert!(queues.len() <= INBOX_LIMIT);
            kept
        };
        self.wake.notify_one();
        kept
    }

    /// Takes what was announced so far, and whether some was dropped.
    pub fn take(&self) -> (Vec<(String, EventKind)>, bool) {
        let queues: Vec<(String, EventKind)> = lock(&self.queues).drain().collect();
        (queues, self.overflow.swap(false, Ordering::Relaxed))
    }
}

/// Hands one announced queue to its shard's task, if it runs here.
fn route(shared: &WorkerShared, queue: &str, kind: EventKind) {
    let shard_count = shared.shard_count();
    if shard_count == 0 {
        return;
    }
    let shard = shard_of(queue, shard_count);
    let inbox = lock(&shared.inboxes).get(&shard).cloned();
    if let Some(inbox) = inbox {
        if !inbox.push(queue, kind) {
            shared.note_events_gap();
        }
    }
}

/// `require`: refuses to start unless the store publishes lock events;
/// `auto`: logs a warning and starts polling when it does not. Sets the
/// node's initial [`Scheduling`]. Waits at most [`START_CHECK_TIMEOUT`].
pub async fn check_at_start(shared: &WorkerShared) -> Result<(), StoreError> {
    let mode = shared.settings.notifications;
    if mode == NotificationMode::Off {
        tracing::info!("lock events off (tasks.notifications = \"off\"): polling every queue");
        return Ok(());
    }
    let result = tokio::time::timeout(START_CHECK_TIMEOUT, shared.store.watch_events())
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "checking for lock events timed out".into(),
            ))
        });
    match result {
        // Dropping the stream unsubscribes: a node subscribes only while it runs shards.
        Ok(_stream) => {
            shared.set_scheduling(Mode::Events, false, String::new());
            tracing::info!(notifications = mode.as_str(), "lock events available");
            Ok(())
        }
        Err(e) if mode == NotificationMode::Require => Err(e),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "tasks.notifications = \"auto\": lock events unavailable, falling back to polling every queue at tasks.poll_interval"
            );
            shared.set_scheduling(Mode::Polling, false, e.to_string());
            Ok(())
        }
    }
}

/// Waits until this node runs some shards (`some`) or none; the watch's
/// guard is dropped inside, so the caller's future stays `Send`.
async fn wait_running(
    running: &mut tokio::sync::watch::Receiver<usize>,
    some: bool,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    running.wait_for(|n| (*n > 0) == some).await.map(|_| ())
}

/// Checks, without keeping a subscription, whether events are available
/// now (a node that runs no shards).
async fn recheck_standby(shared: &WorkerShared, store: &SharedStore) {
    match tokio::time::timeout(START_CHECK_TIMEOUT, store.watch_events()).await {
        Ok(Ok(_stream)) => {
            tracing::info!(node = shared.node_id, "queue events available again");
            shared.set_scheduling(Mode::Events, false, String::new());
        }
        Ok(Err(e)) => shared.set_scheduling(Mode::Polling, false, e.to_string()),
        Err(_) => {}
    }
}

/// The subscriber loop (see the module doc).
pub async fn run_subscriber(shared: Arc<WorkerShared>, mut stop: ShutdownListener) {
    let mode = shared.settings.notifications;
    if mode == NotificationMode::Off {
        return;
    }
    let store: SharedStore = shared.store.clone();
    let mut running = shared.watch_running_count();
    let mut backoff = Duration::from_millis(100);
    loop {
        if wait_for_shards(&shared, &store, &mut running, &mut stop)
            .await
            .is_none()
        {
            return;
        }
        let attempt = tokio::select! {
            r = store.watch_events() => r,
            _ = stop.recv() => return,
        };
        let wait = match attempt {
            Ok(events) => {
                backoff = Duration::from_millis(100);
                let Some(lost) = follow(&shared, events, &mut running, &mut stop).await else {
                    return;
                };
                if lost {
                    backoff
                } else {
                    Duration::ZERO
                }
            }
            Err(e) => subscription_failed(&shared, e, &mut backoff),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.recv() => return,
        }
    }
}

/// Waits until this node runs shards (`None`: stop). Subscribe only while
/// this node runs shards. Without shards, a node that fell back to polling
/// still checks every [`RECHECK`], so its mode (and the gauge) recovers
/// once Redis publishes events again.
async fn wait_for_shards(
    shared: &WorkerShared,
    store: &SharedStore,
    running: &mut tokio::sync::watch::Receiver<usize>,
    stop: &mut ShutdownListener,
) -> Option<()> {
    loop {
        tokio::select! {
            r = wait_running(running, true) => return r.ok(),
            _ = tokio::time::sleep(RECHECK) => {
                if shared.scheduling().mode == Mode::Polling {
                    recheck_standby(shared, store).await;
                }
            }
            _ = stop.recv() => return None,
        }
    }
}

/// Routes every event of a live subscription until it is lost (`Some(true)`,
/// the mode goes back to polling), this node runs no shard any more
/// (`Some(false)`: unsubscribed on purpose), or stop (`None`).
async fn follow(
    shared: &WorkerShared,
    mut events: crate::store::QueueEventStream,
    running: &mut tokio::sync::watch::Receiver<usize>,
    stop: &mut ShutdownListener,
) -> Option<bool> {
    shared.set_scheduling(Mode::Events, true, String::new());
    tracing::info!(
        node = shared.node_id,
        "subscribed to lock events; sweeping every owned queue"
    );
    let lost = loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => {
                    shared.metrics.scheduling.queue_events.inc();
                    route(shared, &event.queue, event.kind);
                }
                None => break true,
            },
            r = wait_running(running, false) => {
                r.ok()?;
                break false;
            }
            _ = stop.recv() => return None,
        }
    };
    drop(events);
    if lost {
        tracing::warn!(
            node = shared.node_id,
            "lost the lock-event subscription; polling until it is back"
        );
        shared.set_scheduling(Mode::Polling, false, "resubscribing".into());
    } else {
        tracing::debug!(
            node = shared.node_id,
            "no shards here: unsubscribed from lock events"
        );
        shared.set_scheduling(Mode::Events, false, String::new());
    }
    Some(lost)
}

/// Polls after a failed subscription; returns how long to wait before the
/// next attempt (doubling `backoff` on errors other than missing events).
fn subscription_failed(shared: &WorkerShared, e: StoreError, backoff: &mut Duration) -> Duration {
    if let StoreError::NoLockEvents(_) = e {
        if shared.settings.notifications == NotificationMode::Require {
            tracing::error!(node = shared.node_id, error = %e, "tasks.notifications = \"require\" but lock events stopped: polling");
        } else {
            tracing::warn!(node = shared.node_id, error = %e, "lock events unavailable: polling");
        }
        shared.set_scheduling(Mode::Polling, false, e.to_string());
        return RECHECK;
    }
    tracing::warn!(node = shared.node_id, error = %e, "cannot subscribe to lock events: polling");
    shared.set_scheduling(Mode::Polling, false, e.to_string());
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    *backoff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbox_coalesces_and_overflows_into_a_sweep() {
        let inbox = ShardInbox::new(7);
        assert!(inbox.push("a", EventKind::Pull));
        assert!(inbox.push("a", EventKind::Lock));
        assert!(inbox.push("a", EventKind::Pull));
        assert!(inbox.push("b", EventKind::Pull));
        let (mut queues, overflow) = inbox.take();
        queues.sort();
        assert_eq!(
            queues,
            vec![
                ("a".to_string(), EventKind::Lock),
                ("b".to_string(), EventKind::Pull)
            ]
        );
        assert!(!overflow);
        let kept = (0..INBOX_LIMIT + 10)
            .filter(|i| inbox.push(&format!("q{i}"), EventKind::Lock))
            .count();
        // The names past the limit are dropped, and said to be.
        assert_eq!(kept, INBOX_LIMIT);
        // A name already held is still kept when the inbox is full.
        assert!(inbox.push("q0", EventKind::Lock));
        let (queues, overflow) = inbox.take();
        assert_eq!(queues.len(), INBOX_LIMIT);
        assert!(overflow);
        assert_eq!(inbox.take(), (Vec::new(), false));
    }
}
