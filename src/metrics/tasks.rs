//! The housekeeping calls' metrics: the one place each call outcome,
//! element count and duration is counted. Callers record through the
//! methods; the worker's counts (`ctl status`, heartbeats) read them back
//! here, so no count is kept twice.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Registry};

use super::{counter, counter_vec, histogram, register, LATENESS_BUCKETS, TASK_LATENCY_MS_BUCKETS};
use crate::store::{HousekeepOutcome, LockKind};

pub struct TaskMetrics {
    /// deckhand_unlock_lateness_seconds: per unlocked element.
    unlock_lateness: Histogram,
    /// deckhand_task_runs_total{outcome="ok|error|fenced"}: housekeeping calls.
    task_runs: IntCounterVec,
    /// deckhand_task_elements_total{task="unlock|timeout"}.
    task_elements: IntCounterVec,
    deckard_unlock: IntCounterVec,
    deckard_timeout: IntCounterVec,
    deckard_task_latency: HistogramVec,
    /// deckhand_task_duration_seconds: one housekeeping call, base units.
    task_duration: Histogram,
    fenced_writes: IntCounter,
    store_errors: IntCounter,
}

impl TaskMetrics {
    pub(super) fn register(registry: &Registry) -> Self {
        Self {
            unlock_lateness: histogram(
                registry,
                "deckhand_unlock_lateness_seconds",
                "How late each unlocked element returned to its active pool, after its unlock time",
                LATENESS_BUCKETS,
            ),
            task_runs: counter_vec(
                registry,
                "deckhand_task_runs_total",
                "Housekeeping calls on one queue, by outcome",
                &["outcome"],
            ),
            task_elements: counter_vec(
                registry,
                "deckhand_task_elements_total",
                "Elements moved back to active pools, by task",
                &["task"],
            ),
            deckard_unlock: counter_vec(
                registry,
                "deckard_message_unlock_total",
                "Messages unlocked (Deckard's metric; queue = name before '::')",
                &["queue", "lock_type"],
            ),
            deckard_timeout: counter_vec(
                registry,
                "deckard_message_timeout_total",
                "Messages returned after their ack deadline (Deckard's metric)",
                &["queue"],
            ),
            deckard_task_latency: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "deckard_housekeeper_task_latency",
                        "Duration of one housekeeping call on one queue, in milliseconds (Deckard's metric)",
                    )
                    .buckets(TASK_LATENCY_MS_BUCKETS.to_vec()),
                    &["task"],
                ),
            ),
            task_duration: histogram(
                registry,
                "deckhand_task_duration_seconds",
                "Duration of one successful housekeeping call on one queue",
                LATENESS_BUCKETS,
            ),
            fenced_writes: counter(
                registry,
                "deckhand_fenced_writes_total",
                "Store operations rejected because a newer shard owner had written",
            ),
            store_errors: counter(
                registry,
                "deckhand_store_errors_total",
                "Housekeeping calls that failed for another reason than fencing (store down, bad data)",
            ),
        }
    }

    /// One successful call that took `elapsed_ms`; `label` gives the
    /// queue's label, asked only when elements moved.
    pub(super) fn record_success(
        &self,
        out: &HousekeepOutcome,
        elapsed_ms: f64,
        label: impl FnOnce() -> String,
    ) {
        self.task_runs.with_label_values(&["ok"]).inc();
        self.deckard_task_latency
            .with_label_values(&["housekeep"])
            .observe(elapsed_ms);
        self.task_duration.observe(elapsed_ms / 1000.0);
        let unlocked = out.unlocked_ack + out.unlocked_nack;
        if unlocked + out.timed_out == 0 {
            return;
        }
        let label = label();
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

    /// One call the store refused: a newer owner of the shard had written.
    pub fn record_fenced(&self) {
        self.task_runs.with_label_values(&["fenced"]).inc();
        self.fenced_writes.inc();
    }

    /// One call on a name that is not a queue (not a store error: the
    /// store is fine, the name is dropped).
    pub fn record_invalid_queue(&self) {
        self.task_runs.with_label_values(&["error"]).inc();
    }

    /// One call that failed for another reason than fencing.
    pub fn record_store_error(&self) {
        self.task_runs.with_label_values(&["error"]).inc();
        self.store_errors.inc();
    }

    /// Successful calls so far.
    pub fn calls(&self) -> u64 {
        sum_where(&self.task_runs, "outcome", "ok")
    }

    /// Elements unlocked from `kind`'s lock set so far (every queue label).
    pub fn unlocked(&self, kind: LockKind) -> u64 {
        sum_where(&self.deckard_unlock, "lock_type", kind.label())
    }

    /// Elements returned after their ack deadline so far.
    pub fn timed_out(&self) -> u64 {
        sum_where(&self.task_elements, "task", "timeout")
    }

    /// Calls refused by fencing so far.
    pub fn fenced_writes(&self) -> u64 {
        self.fenced_writes.get()
    }

    /// Calls failed for another reason so far.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.get()
    }
}

/// The sum of `vec`'s series whose `label` is `value`, read from a
/// collection so that reading never creates a series (`with_label_values`
/// would, and `/metrics` would show a zero line that nothing recorded).
fn sum_where(vec: &IntCounterVec, label: &str, value: &str) -> u64 {
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == label && l.value() == value)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}
