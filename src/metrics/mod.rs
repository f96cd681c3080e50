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
//! Label cardinality is bounded: at most `max_queue_labels` (config
//! `[metrics]`, default [`MAX_QUEUE_LABELS`]) distinct `queue` label values;
//! later ones are counted under `queue="_other"`.
//!
//! # Leader-only queue gauges
//!
//! The gauges that describe the whole store (`deckhand_queue_*`) are built at
//! scrape time by [`queue_gauge_families`] from what the leader's
//! coordinator returns at that moment, and appended to the node's own
//! metrics ([`NodeMetrics::render_with`]). Nothing is cached between scrapes:
//! a node that is not (or no longer) a fresh leader returns no rows, so its
//! very next scrape has no queue gauges at all. Queues are grouped by
//! Deckard's label (the name before `::`): sizes are summed, the overdue age
//! is the maximum. Labels past the cap, in name order, go to `_other`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

mod state_gauges;
mod tasks;
pub use state_gauges::{NodeGauges, SchedulingMetrics};
pub use tasks::TaskMetrics;

use crate::store::layout::queue_label;
use crate::store::{LockKind, QueueSizes};

/// The `queue` label value past the cap.
pub const OVERFLOW_LABEL: &str = "_other";

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
    /// Housekeeping call outcomes, elements and durations.
    pub tasks: TaskMetrics,
    /// Node state gauges, set at scrape time.
    pub node: NodeGauges,
    /// How this node learns of new locks (events or polling).
    pub scheduling: SchedulingMetrics,
    /// The queue label values seen so far (cardinality cap).
    labels: Mutex<HashSet<String>>,
    /// Most distinct `queue` label values (config `metrics.max_queue_labels`).
    label_cap: usize,
}

/// Registers `metric` (a definition in this file, so an invalid one or a
/// name used twice is a bug here, caught by every test) and returns it.
fn register<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts))
}

impl NodeMetrics {
    pub fn new() -> Arc<Self> {
        Self::with_label_cap(MAX_QUEUE_LABELS)
    }

    /// Metrics keeping at most `label_cap` distinct `queue` label values.
    pub fn with_label_cap(label_cap: usize) -> Arc<Self> {
        assert!(label_cap > 0, "the queue label cap must allow one label");
        let registry = Registry::new();
        Arc::new(Self {
            tasks: TaskMetrics::register(&registry),
            node: NodeGauges::register(&registry),
            scheduling: SchedulingMetrics::register(&registry),
            registry,
            labels: Mutex::new(HashSet::new()),
            label_cap,
        })
    }

    /// The `queue` label for `queue`: Deckard's prefix, within the cap.
    pub fn queue_label(&self, queue: &str) -> String {
        let label = queue_label(queue);
        let mut seen = crate::locks::lock(&self.labels);
        if seen.contains(label) {
            return label.to_string();
        }
        if seen.len() < self.label_cap {
            seen.insert(label.to_string());
            return label.to_string();
        }
        OVERFLOW_LABEL.to_string()
    }

    /// Records one successful housekeeping call.
    pub fn record_housekeep(
        &self,
        queue: &str,
        out: &crate::store::HousekeepOutcome,
        elapsed_ms: f64,
    ) {
        self.tasks
            .record_success(out, elapsed_ms, || self.queue_label(queue));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.render_with(Vec::new())
    }

    /// The text exposition of every metric plus `extra` families.
    pub fn render_with(&self, extra: Vec<MetricFamily>) -> String {
        let mut families = self.registry.gather();
        families.extend(extra);
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&families, &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn label_cap(&self) -> usize {
        self.label_cap
    }
}

/// Names of the leader-only queue gauges.
pub const QUEUE_GAUGE_NAMES: &[&str] = &[
    "deckhand_queue_active_messages",
    "deckhand_queue_processing_messages",
    "deckhand_queue_locked_messages",
    "deckhand_queue_oldest_overdue_lock_seconds",
    "deckhand_queues_reported",
];

/// Figures of all queues sharing one label.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct LabelTotals {
    queues: u64,
    active: u64,
    processing: u64,
    locked_ack: u64,
    locked_nack: u64,
    oldest_overdue_ms: u64,
}

impl LabelTotals {
    /// One queue's figures.
    fn of(s: &QueueSizes) -> Self {
        Self {
            queues: 1,
            active: s.active,
            processing: s.processing,
            locked_ack: s.locked_ack,
            locked_nack: s.locked_nack,
            oldest_overdue_ms: s.oldest_overdue_ms,
        }
    }

    /// Sums sizes and counts; keeps the larger overdue age. Saturating: the
    /// sizes come from other nodes' reports.
    fn add(&mut self, o: &Self) {
        self.queues = self.queues.saturating_add(o.queues);
        self.active = self.active.saturating_add(o.active);
        self.processing = self.processing.saturating_add(o.processing);
        self.locked_ack = self.locked_ack.saturating_add(o.locked_ack);
        self.locked_nack = self.locked_nack.saturating_add(o.locked_nack);
        self.oldest_overdue_ms = self.oldest_overdue_ms.max(o.oldest_overdue_ms);
    }
}

/// Groups `rows` by Deckard's queue label, keeping the first `cap` labels in
/// name order and folding the rest into `_other`.
fn group_by_label<'a>(
    rows: impl IntoIterator<Item = &'a (String, QueueSizes)>,
    cap: usize,
) -> BTreeMap<String, LabelTotals> {
    let mut by_label: BTreeMap<&str, LabelTotals> = BTreeMap::new();
    for (queue, s) in rows {
        by_label
            .entry(queue_label(queue))
            .or_default()
            .add(&LabelTotals::of(s));
    }
    let mut out: BTreeMap<String, LabelTotals> = BTreeMap::new();
    for (i, (label, t)) in by_label.into_iter().enumerate() {
        let key = if i < cap { label } else { OVERFLOW_LABEL };
        out.entry(key.to_string()).or_default().add(&t);
    }
    debug_assert!(out.len() <= cap + 1, "label cap exceeded");
    out
}

/// This node's housekeeping calls per Redis Cluster master (`rows`: label,
/// count), from the store's own counts; nothing on a single Redis.
pub fn master_call_families(rows: &[(String, u64)]) -> Vec<MetricFamily> {
    if rows.is_empty() {
        return Vec::new();
    }
    let registry = Registry::new();
    let calls = counter_vec(
        &registry,
        "deckhand_redis_master_calls_total",
        "Housekeeping calls this node sent, per Redis Cluster master serving the queue's slot",
        &["master"],
    );
    for (master, n) in rows {
        calls.with_label_values(&[master.as_str()]).inc_by(*n);
    }
    registry.gather()
}

/// The leader-only queue gauges for `rows` (every queue's latest figures).
pub fn queue_gauge_families<'a>(
    rows: impl IntoIterator<Item = &'a (String, QueueSizes)>,
    cap: usize,
) -> Vec<MetricFamily> {
    let registry = Registry::new();
    let vec = |name: &str, help: &str, labels: &[&str]| {
        register(&registry, IntGaugeVec::new(Opts::new(name, help), labels))
    };
    let active = vec(
        QUEUE_GAUGE_NAMES[0],
        "Messages in the active pool, per queue label (leader only)",
        &["queue"],
    );
    let processing = vec(
        QUEUE_GAUGE_NAMES[1],
        "Messages being processed (:tmp), per queue label (leader only)",
        &["queue"],
    );
    let locked = vec(
        QUEUE_GAUGE_NAMES[2],
        "Locked messages (:lock_ack, :lock_nack), per queue label (leader only)",
        &["queue", "lock_type"],
    );
    let queues = vec(
        QUEUE_GAUGE_NAMES[4],
        "Queues whose figures these gauges include, per queue label (leader only)",
        &["queue"],
    );
    let overdue = register(
        &registry,
        GaugeVec::new(
            Opts::new(
                QUEUE_GAUGE_NAMES[3],
                "How far past its unlock time the most overdue lock is, per queue label (leader only)",
            ),
            &["queue"],
        ),
    );
    for (label, t) in group_by_label(rows, cap) {
        let l = label.as_str();
        active.with_label_values(&[l]).set(t.active as i64);
        processing.with_label_values(&[l]).set(t.processing as i64);
        locked
            .with_label_values(&[l, LockKind::Ack.label()])
            .set(t.locked_ack as i64);
        locked
            .with_label_values(&[l, LockKind::Nack.label()])
            .set(t.locked_nack as i64);
        queues.with_label_values(&[l]).set(t.queues as i64);
        overdue
            .with_label_values(&[l])
            .set(t.oldest_overdue_ms as f64 / 1000.0);
    }
    registry.gather()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(queue: &str, active: u64, overdue: u64) -> (String, QueueSizes) {
        (
            queue.to_string(),
            QueueSizes {
                active,
                locked_ack: 1,
                oldest_overdue_ms: overdue,
                ..QueueSizes::default()
            },
        )
    }

    #[test]
    fn queues_are_grouped_by_label_and_capped() {
        let rows = vec![
            row("a::1", 2, 10),
            row("a::2", 3, 30),
            row("b", 1, 0),
            row("c::x", 4, 5),
            row("d", 5, 7),
        ];
        let groups = group_by_label(&rows, 2);
        assert_eq!(groups.len(), 3);
        assert_eq!(
            (
                groups["a"].active,
                groups["a"].queues,
                groups["a"].oldest_overdue_ms
            ),
            (5, 2, 30)
        );
        assert_eq!(groups["b"].active, 1);
        let other = groups[OVERFLOW_LABEL];
        assert_eq!((other.active, other.queues, other.locked_ack), (9, 2, 2));
        assert_eq!(other.oldest_overdue_ms, 7);
    }

    #[test]
    fn no_rows_no_series_and_rows_render_in_base_units() {
        let text = |rows: &[(String, QueueSizes)]| {
            let mut buf = Vec::new();
            TextEncoder::new()
                .encode(&queue_gauge_families(rows, 10), &mut buf)
                .expect("encode");
            String::from_utf8(buf).expect("utf8")
        };
        assert!(!text(&[]).contains("deckhand_queue_active_messages{"));
        let t = text(&[row("orders::eu", 7, 1500)]);
        assert!(
            t.contains("deckhand_queue_active_messages{queue=\"orders\"} 7"),
            "{t}"
        );
        assert!(
            t.contains("deckhand_queue_locked_messages{lock_type=\"ack\",queue=\"orders\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("deckhand_queue_oldest_overdue_lock_seconds{queue=\"orders\"} 1.5"),
            "{t}"
        );
    }
}
