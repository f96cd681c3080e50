//! How this node finds new locks right now (its scheduling mode), and when
//! lock events may have been missed, so that the leader discovers new
//! queues at the polling pace (`HeartbeatRequest.needs_discovery`).
//!
//! # When a gap is recorded
//!
//! - a fallback to polling (a subscription lost or refused, no events);
//! - the subscription that ends a polling spell: events before it were
//!   never seen;
//! - a full shard inbox that dropped an announced name.
//!
//! Not at a first subscription, nor one after an unsubscription on purpose
//! (no shards left): shards come with moves, and the leader discovers
//! `DISCOVERY_AFTER_MOVES` after those anyway.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;

use super::{events, WorkerShared};
use crate::locks::lock;

impl WorkerShared {
    pub fn scheduling(&self) -> events::Scheduling {
        self.scheduling.borrow().clone()
    }

    pub fn watch_scheduling(&self) -> watch::Receiver<events::Scheduling> {
        self.scheduling.subscribe()
    }

    /// Records the scheduling mode; a mode change or a new subscription
    /// bumps the generation, so every shard task sweeps (its known queues);
    /// after a fallback to polling, and after the subscription that ends
    /// one, the next heartbeats also ask the leader for discovery (new
    /// queues whose events were missed; see [`Self::needs_discovery`]).
    pub(crate) fn set_scheduling(&self, mode: events::Mode, subscribed: bool, reason: String) {
        if mode == events::Mode::Polling {
            self.polled_since_subscribed.store(true, Ordering::SeqCst);
        }
        let after_polling =
            subscribed && self.polled_since_subscribed.swap(false, Ordering::SeqCst);
        let mut gap = false;
        self.scheduling.send_if_modified(|s| {
            let bump = s.mode != mode || (subscribed && !s.subscribed);
            let changed = bump || s.subscribed != subscribed || s.reason != reason;
            s.mode = mode;
            s.subscribed = subscribed;
            s.reason = reason;
            if bump {
                s.generation += 1;
                gap = mode == events::Mode::Polling || after_polling;
            }
            changed
        });
        if gap {
            self.note_events_gap();
        }
        self.metrics
            .scheduling
            .polling
            .set(i64::from(mode == events::Mode::Polling));
        self.metrics
            .scheduling
            .queue_events_subscribed
            .set(i64::from(subscribed));
    }

    /// Records that lock events may have been missed just now, and tells
    /// the leader at once rather than at the next heartbeat.
    pub(crate) fn note_events_gap(&self) {
        *lock(&self.events_gap_at) = Some(Instant::now());
        self.report_now.notify_one();
    }

    /// Whether this node cannot count on lock events to adopt new queues
    /// right now: it polls, or it could have missed events within the last
    /// `lease + lease_margin` (long enough for several heartbeats to carry
    /// it, so one lost heartbeat does not hide it from the leader).
    pub fn needs_discovery(&self, now: Instant) -> bool {
        if self.scheduling.borrow().mode == events::Mode::Polling {
            return true;
        }
        let window = self.settings.lease + self.settings.lease_margin;
        lock(&self.events_gap_at).is_some_and(|at| now.saturating_duration_since(at) < window)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::events;
    use super::super::tests::shared;

    #[test]
    fn a_resubscription_asks_for_discovery_for_a_lease_and_margin() {
        let node = shared();
        let now = Instant::now();
        // Polling (the state before the first check): always.
        assert!(node.needs_discovery(now));
        // The check finds events, and the first subscription: not asked
        // (the leader discovers after the moves that brought the shards).
        node.set_scheduling(events::Mode::Events, false, String::new());
        node.set_scheduling(events::Mode::Events, true, String::new());
        assert!(!node.needs_discovery(Instant::now()));
        // Unsubscribed on purpose (no shards left), then back: not asked.
        node.set_scheduling(events::Mode::Events, false, String::new());
        node.set_scheduling(events::Mode::Events, true, String::new());
        assert!(!node.needs_discovery(Instant::now()));
        // Lost (polling meanwhile), then subscribed again: asked, for a
        // lease and margin after the resubscription.
        node.set_scheduling(events::Mode::Polling, false, "resubscribing".into());
        assert!(node.needs_discovery(Instant::now()));
        node.set_scheduling(events::Mode::Events, true, String::new());
        let at = Instant::now();
        let window = Duration::from_millis(1_300);
        assert!(node.needs_discovery(at + window / 2));
        assert!(!node.needs_discovery(at + window));
        // A full inbox dropped a name: asked.
        assert!(!node.needs_discovery(Instant::now() + window * 2));
        node.note_events_gap();
        assert!(node.needs_discovery(Instant::now() + window / 2));
        // Started without events, which appear later: asked at the
        // subscription, whose events start only then.
        let late = shared();
        late.set_scheduling(events::Mode::Polling, false, "no events".into());
        late.set_scheduling(events::Mode::Events, true, String::new());
        let at = Instant::now();
        assert!(late.needs_discovery(at + window / 2));
        assert!(!late.needs_discovery(at + window));
        // Falling back to polling: for as long as it lasts.
        node.set_scheduling(events::Mode::Polling, false, "no events".into());
        assert!(node.needs_discovery(Instant::now() + window * 10));
    }
}
