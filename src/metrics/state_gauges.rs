//! The node's state gauges (role, Raft indexes, shards, lease), set from
//! the node at scrape time, and the scheduling metrics (events or polling),
//! set by the worker when its mode changes.

use prometheus::{IntCounter, IntGauge, Registry};

use super::{counter, gauge, register};

/// Gauges describing the node's state, set at scrape time (see the parent
/// module's doc), so they are never stale.
pub struct NodeGauges {
    /// deckhand_node_is_leader.
    pub is_leader: IntGauge,
    /// deckard_housekeeper_leader: the same, under Deckard's name.
    pub deckard_leader: IntGauge,
    pub raft_term: IntGauge,
    pub raft_commit_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub shards_owned: IntGauge,
    pub shards_running: IntGauge,
    /// deckhand_shards_fenced: shards this node owns at an epoch the store
    /// fenced it at, so it does not run them (a newer token wrote).
    pub shards_fenced: IntGauge,
    pub lease_remaining_seconds: prometheus::Gauge,
}

impl NodeGauges {
    pub(super) fn register(registry: &Registry) -> Self {
        Self {
            is_leader: gauge(
                registry,
                "deckhand_node_is_leader",
                "1 while this node is the Raft leader",
            ),
            deckard_leader: gauge(
                registry,
                "deckard_housekeeper_leader",
                "1 while this node leads (Deckard's metric)",
            ),
            raft_term: gauge(registry, "deckhand_raft_term", "Current Raft term"),
            raft_commit_index: gauge(
                registry,
                "deckhand_raft_commit_index",
                "Last committed Raft log index",
            ),
            raft_applied_index: gauge(
                registry,
                "deckhand_raft_applied_index",
                "Last applied Raft log index",
            ),
            shards_owned: gauge(registry, "deckhand_shards_owned", "Shards this node owns"),
            shards_running: gauge(
                registry,
                "deckhand_shards_running",
                "Shards this node is running",
            ),
            shards_fenced: gauge(
                registry,
                "deckhand_shards_fenced",
                "Shards this node owns but does not run: the store fenced it at their current epoch (a writer with a newer token, e.g. another cluster on the same store)",
            ),
            lease_remaining_seconds: register(
                registry,
                prometheus::Gauge::new(
                    "deckhand_lease_remaining_seconds",
                    "Time left on this node's worker lease (0: no lease)",
                ),
            ),
        }
    }
}

/// How the node learns of new locks.
pub struct SchedulingMetrics {
    /// deckhand_scheduling_polling: 1 while lock events are unavailable and
    /// every queue is polled (`tasks.notifications` fell back, or is off).
    pub polling: IntGauge,
    /// deckhand_keyspace_events_subscribed: 1 while this node holds a live
    /// queue-event subscription.
    pub queue_events_subscribed: IntGauge,
    /// deckhand_keyspace_events_total: queue events received.
    pub queue_events: IntCounter,
}

impl SchedulingMetrics {
    pub(super) fn register(registry: &Registry) -> Self {
        Self {
            polling: gauge(
                registry,
                "deckhand_scheduling_polling",
                "1 while this node polls every queue because lock events are unavailable or off",
            ),
            queue_events_subscribed: gauge(
                registry,
                "deckhand_keyspace_events_subscribed",
                "1 while this node holds a live queue-event (keyspace notification) subscription",
            ),
            queue_events: counter(
                registry,
                "deckhand_keyspace_events_total",
                "Queue events (keyspace notifications of locks and pulls) this node received",
            ),
        }
    }
}
