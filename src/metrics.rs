//! Prometheus metrics of one node, served at `metrics_addr` `/metrics`.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` for
//! durations), except Deckard's own metrics, kept under Deckard's names so
//! existing dashboards keep working: `deckard_message_unlock_total`,
//! `deckard_message_timeout_total`, `deckard_housekeeper_task_latency`
//! (milliseconds, as Deckard exports it) and `deckard_housekeeper_leader`.
//!
//! Gauges describing node state (role, Raft indexes, shards, lease) are read
//! at scrape time from the node, so they are never stale.
//!
//! Label cardinality is bounded: at most [`MAX_QUEUE_LABELS`] distinct
//! `queue` label values; later ones are counted under `queue="_other"`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::store::layout::queue_label;
use crate::store::LockKind;

/// Distinct `queue` label values before new ones go to `_other`.
pub const MAX_QUEUE_LABELS: usize = 1000;

/// Unlock lateness buckets, seconds: 1 ms to 10 s.
const LATENESS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Deckard's task latency buckets, milliseconds.
const TASK_LATENCY_MS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

pub struct NodeMetrics {
    registry: Registry,
    pub unlock_lateness: Histogram,
    /// deckhand_task_runs_total{outcome="ok|error|fenced"}: housekeeping calls.
    pub task_runs: IntCounterVec,
    /// deckhand_task_elements_total{task="unlock|timeout"}.
    pub task_elements: IntCounterVec,
    pub deckard_unlock: IntCounterVec,
    pub deckard_timeout: IntCounterVec,
    pub deckard_task_latency: HistogramVec,
    pub fenced_writes: IntCounter,
    pub store_errors: IntCounter,
    pub is_leader: IntGauge,
    pub deckard_leader: IntGauge,
    pub raft_term: IntGauge,
    pub raft_commit_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub shards_owned: IntGauge,
    pub shards_running: IntGauge,
    pub lease_remaining_seconds: prometheus::Gauge,
    /// The queue label values seen so far (cardinality cap).
    labels: Mutex<HashSet<String>>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl NodeMetrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let unlock_lateness = Histogram::with_opts(
            HistogramOpts::new(
                "deckhand_unlock_lateness_seconds",
                "How late each unlocked element returned to its active pool, after its unlock time",
            )
            .buckets(LATENESS_BUCKETS.to_vec()),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(unlock_lateness.clone()))
            .expect("metric registered once");
        let deckard_task_latency = HistogramVec::new(
            HistogramOpts::new(
                "deckard_housekeeper_task_latency",
                "Duration of one housekeeping call on one queue, in milliseconds (Deckard's metric)",
            )
            .buckets(TASK_LATENCY_MS_BUCKETS.to_vec()),
            &["task"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(deckard_task_latency.clone()))
            .expect("metric registered once");
        let lease = prometheus::Gauge::new(
            "deckhand_lease_remaining_seconds",
            "Time left on this node's worker lease (0: no lease)",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(lease.clone()))
            .expect("metric registered once");
        let fenced = IntCounter::new(
            "deckhand_fenced_writes_total",
            "Store operations rejected because a newer shard owner had written",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(fenced.clone()))
            .expect("metric registered once");
        let store_errors = IntCounter::new(
            "deckhand_store_errors_total",
            "Housekeeping calls that failed for another reason than fencing (store down, bad data)",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(store_errors.clone()))
            .expect("metric registered once");
        Arc::new(Self {
            task_runs: counter_vec(
                &registry,
                "deckhand_task_runs_total",
                "Housekeeping calls on one queue, by outcome",
                &["outcome"],
            ),
            task_elements: counter_vec(
                &registry,
                "deckhand_task_elements_total",
                "Elements moved back to active pools, by task",
                &["task"],
            ),
            deckard_unlock: counter_vec(
                &registry,
                "deckard_message_unlock_total",
                "Messages unlocked (Deckard's metric; queue = name before '::')",
                &["queue", "lock_type"],
            ),
            deckard_timeout: counter_vec(
                &registry,
                "deckard_message_timeout_total",
                "Messages returned after their ack deadline (Deckard's metric)",
                &["queue"],
            ),
            is_leader: gauge(
                &registry,
                "deckhand_node_is_leader",
                "1 while this node is the Raft leader",
            ),
            deckard_leader: gauge(
                &registry,
                "deckard_housekeeper_leader",
                "1 while this node leads (Deckard's metric)",
            ),
            raft_term: gauge(&registry, "deckhand_raft_term", "Current Raft term"),
            raft_commit_index: gauge(
                &registry,
                "deckhand_raft_commit_index",
                "Last committed Raft log index",
            ),
            raft_applied_index: gauge(
                &registry,
                "deckhand_raft_applied_index",
                "Last applied Raft log index",
            ),
            shards_owned: gauge(&registry, "deckhand_shards_owned", "Shards this node owns"),
            shards_running: gauge(
                &registry,
                "deckhand_shards_running",
                "Shards this node is running",
            ),
            lease_remaining_seconds: lease,
            unlock_lateness,
            deckard_task_latency,
            fenced_writes: fenced,
            store_errors,
            registry,
            labels: Mutex::new(HashSet::new()),
        })
    }

    /// The `queue` label for `queue`: Deckard's prefix, within the cap.
    pub fn queue_label(&self, queue: &str) -> String {
        let label = queue_label(queue);
        let mut seen = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(label) {
            return label.to_string();
        }
        if seen.len() < MAX_QUEUE_LABELS {
            seen.insert(label.to_string());
            return label.to_string();
        }
        "_other".to_string()
    }

    /// Records one successful housekeeping call.
    pub fn record_housekeep(
        &self,
        queue: &str,
        out: &crate::store::HousekeepOutcome,
        elapsed_ms: f64,
    ) {
        self.task_runs.with_label_values(&["ok"]).inc();
        self.deckard_task_latency
            .with_label_values(&["housekeep"])
            .observe(elapsed_ms);
        let unlocked = out.unlocked_ack + out.unlocked_nack;
        if unlocked + out.timed_out == 0 {
            return;
        }
        let label = self.queue_label(queue);
        for (kind, n) in [
            (LockKind::Ack, out.unlocked_ack),
            (LockKind::Nack, out.unlocked_nack),
        ] {
            if n > 0 {
                self.deckard_unlock
                    .with_label_values(&[&label, kind.label()])
                    .inc_by(n);
            }
        }
        if out.timed_out > 0 {
            self.deckard_timeout
                .with_label_values(&[&label])
                .inc_by(out.timed_out);
            self.task_elements
                .with_label_values(&["timeout"])
                .inc_by(out.timed_out);
        }
        if unlocked > 0 {
            self.task_elements
                .with_label_values(&["unlock"])
                .inc_by(unlocked);
        }
        for ms in &out.unlock_lateness_ms {
            self.unlock_lateness.observe((*ms).max(0) as f64 / 1000.0);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
