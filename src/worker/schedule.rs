//! When each queue of a shard is called next: a pure timer queue.
//!
//! # Design
//!
//! A shard task keeps one [`QueueSchedule`]: for every queue it knows, the
//! instant of its next housekeeping call, ordered so that the next wake-up
//! and the due queues are found without looking at the others. What sets
//! the instant:
//!
//! - **the call's own result** ([`next_call`]): the earliest due time left in
//!   the queue (an exact timer), but never later than `look_again` after the
//!   call started (`tasks.sweep_interval` with lock events, `tasks.poll_interval`
//!   while polling), and *now* when the batch limit stopped the call;
//! - **a lock event** or a sweep ([`QueueSchedule::call_by`]): no later than
//!   now.
//!
//! With lock events, the `look_again` bound (the sweep) is rounded down to
//! a [`SweepGrid`] step shared by every shard task of the node: the sweeps
//! that fall due in one step are called together (each shard task with one
//! due wakes once per step, not once per queue), and their calls go to the
//! store concurrently, so Redis reads and answers them in a few pipelined
//! batches instead of one round trip each. Rounding down keeps the
//! guarantee (never later than `look_again`); exact due times and events
//! are not rounded. The price: a step's sweeps reach Redis as one burst
//! (at 250,000 quiet queues on three nodes, of which the leader runs no
//! shards, about 460 calls per owner every 100 ms, run back to back by
//! Redis: several milliseconds), where they were spread out.
//!
//! Except while a full batch is drained, two calls on one queue start at
//! least `spacing` apart (`tasks.call_spacing`): lock events and due times
//! that close together are served by one call, which bounds what a hot
//! queue costs; a lock due inside that window comes back at most `spacing`
//! late.
//!
//! A queue popped as due is *in flight* until [`QueueSchedule::set`] gives
//! it its next instant; it is not due again meanwhile.
//!
//! # Invariants
//!
//! - `order` holds exactly one `(instant, queue)` per scheduled queue, the
//!   one in its slot; in-flight queues have no entry in `order`.
//! - Pure: every instant comes from the caller; no clock is read here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One queue's timer and when its last call started.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The next call; `None` while a call is in flight.
    at: Option<Instant>,
    last_start: Option<Instant>,
}

/// Timers of one shard's queues (see the module doc).
#[derive(Debug)]
pub struct QueueSchedule {
    slots: HashMap<Arc<str>, Slot>,
    order: BTreeSet<(Instant, Arc<str>)>,
    spacing: Duration,
}

impl QueueSchedule {
    pub fn new(spacing: Duration) -> Self {
        Self {
            slots: HashMap::new(),
            order: BTreeSet::new(),
            spacing,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, queue: &str) -> bool {
        self.slots.contains_key(queue)
    }

    /// Adds a queue not known yet, due at `at`; a known queue is untouched.
    pub fn add(&mut self, queue: &str, at: Instant) {
        if !self.slots.contains_key(queue) {
            let name: Arc<str> = Arc::from(queue);
            self.slots.insert(name.clone(), Slot::default());
            self.place(name, at);
        }
    }

    /// Sets the next call of a known queue (after its call completed).
    pub fn set(&mut self, queue: &str, at: Instant) {
        if let Some((name, _)) = self.slots.get_key_value(queue) {
            let name = name.clone();
            self.place(name, at);
        }
    }

    /// Calls a known queue no later than `by` (a lock event, a sweep), but
    /// not sooner than `spacing` after its last call started. An in-flight
    /// queue is left alone: the caller schedules it when the call ends.
    pub fn call_by(&mut self, queue: &str, by: Instant) {
        let Some((name, slot)) = self.slots.get_key_value(queue) else {
            return;
        };
        let Some(current) = slot.at else { return };
        let earliest = slot.last_start.map_or(by, |s| by.max(s + self.spacing));
        if earliest < current {
            let name = name.clone();
            self.place(name, earliest);
        }
    }

    /// [`Self::call_by`] for every queue.
    pub fn call_all_by(&mut self, by: Instant) {
        let names: Vec<Arc<str>> = self.slots.keys().cloned().collect();
        for name in names {
            self.call_by(&name, by);
        }
    }

    /// Takes up to `limit` queues due at `now` (in due order); each is in
    /// flight from now until [`Self::set`].
    pub fn pop_due(&mut self, now: Instant, limit: usize) -> Vec<Arc<str>> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.order.first() {
            if *at > now || due.len() >= limit {
                break;
            }
            let Some((_, name)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.at = None;
                slot.last_start = Some(now);
            }
            due.push(name);
        }
        due
    }

    /// The earliest timer, if any queue is scheduled.
    pub fn next_wake(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Forgets a queue.
    pub fn remove(&mut self, queue: &str) {
        if let Some(slot) = self.slots.remove(queue) {
            if let Some(at) = slot.at {
                self.order.remove(&(at, Arc::from(queue)));
            }
        }
    }

    /// Keeps only the queues `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<Arc<str>> = self.slots.keys().filter(|q| !keep(q)).cloned().collect();
        for name in gone {
            self.remove(&name);
        }
    }

    fn place(&mut self, name: Arc<str>, at: Instant) {
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        if let Some(old) = slot.at.replace(at) {
            self.order.remove(&(old, name.clone()));
        }
        self.order.insert((at, name));
        debug_assert!(
            self.order.len() <= self.slots.len(),
            "at most one timer per queue"
        );
    }
}

/// The instants sweeps are rounded down to: `origin + k * step`.
///
/// Invariant: `step > 0`.
#[derive(Debug, Clone, Copy)]
pub struct SweepGrid {
    origin: Instant,
    step: Duration,
}

impl SweepGrid {
    /// The longest step: a step's sweeps reach Redis as one burst, and this
    /// keeps a burst at a tenth of a second's share of the sweeps.
    pub const MAX_STEP: Duration = Duration::from_millis(100);

    /// A grid for sweeps every `sweep_interval`: a step of a tenth of it, at
    /// most [`Self::MAX_STEP`] and at least 1 ms.
    pub fn new(origin: Instant, sweep_interval: Duration) -> Self {
        let step = (sweep_interval / 10).clamp(Duration::from_millis(1), Self::MAX_STEP);
        assert!(!step.is_zero(), "a sweep grid step is never zero");
        Self { origin, step }
    }

    /// The last grid instant at or before `at` (`at` itself before the origin).
    pub fn floor(&self, at: Instant) -> Instant {
        let Some(since) = at.checked_duration_since(self.origin) else {
            return at;
        };
        // Under one step (at most 100 ms), so it fits in a u64 of nanoseconds.
        let past = Duration::from_nanos((since.as_nanos() % self.step.as_nanos()) as u64);
        debug_assert!(past < self.step);
        at - past
    }
}

/// What a housekeeping call said about when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallResult {
    /// The call's `now_ms` (wall clock, ms).
    pub now_ms: i64,
    /// The earliest due time left in the queue (wall clock, ms).
    pub next_due_ms: Option<i64>,
    /// The batch limit stopped the call with due work left.
    pub more_due: bool,
}

/// When to call a queue again after a call that started at `start` (see
/// the module doc): drained on at once while a batch was full, else at its
/// next due time, no sooner than `spacing` and no later than `look_again`
/// after `start`. With a `grid`, that bound is rounded down to it when the
/// result is still after `start` (and then never below `spacing`).
pub fn next_call(
    start: Instant,
    result: CallResult,
    look_again: Duration,
    spacing: Duration,
    grid: Option<&SweepGrid>,
) -> Instant {
    if result.more_due {
        return start;
    }
    let unrounded = start + look_again;
    let latest = match grid.map(|g| g.floor(unrounded)) {
        // Never at `start` itself: with no spacing that would call the queue
        // again at once, for ever (a bound shorter than a step).
        Some(rounded) if rounded > start => rounded.max(start + spacing),
        _ => unrounded,
    };
    debug_assert!(latest <= start + look_again.max(spacing));
    match result.next_due_ms {
        Some(due) => {
            let wait = Duration::from_millis((due - result.now_ms).max(0) as u64);
            (start + wait).max(start + spacing).min(latest)
        }
        None => latest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn due_queues_come_out_in_order_and_are_in_flight_until_set() {
        let t0 = Instant::now();
        let mut s = QueueSchedule::new(5 * MS);
        s.add("b", t0 + 20 * MS);
        s.add("a", t0 + 10 * MS);
        s.add("c", t0 + 30 * MS);
        s.add("a", t0 + 99 * MS); // known: untouched
        assert_eq!(s.next_wake(), Some(t0 + 10 * MS));
        assert!(s.pop_due(t0, 100).is_empty());
        // A pass takes at most `limit` queues.
        assert_eq!(s.pop_due(t0 + 20 * MS, 1).len(), 1);
        s.set("a", t0 + 10 * MS);
        let due: Vec<String> = s
            .pop_due(t0 + 20 * MS, 100)
            .iter()
            .map(|q| q.to_string())
            .collect();
        assert_eq!(due, vec!["a", "b"]);
        assert_eq!(s.next_wake(), Some(t0 + 30 * MS));
        // In flight: an event does not schedule it twice.
        s.call_by("a", t0 + 21 * MS);
        assert_eq!(s.next_wake(), Some(t0 + 30 * MS));
        s.set("a", t0 + 25 * MS);
        assert_eq!(s.next_wake(), Some(t0 + 25 * MS));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn events_are_coalesced_by_the_spacing() {
        let t0 = Instant::now();
        let mut s = QueueSchedule::new(5 * MS);
        s.add("q", t0);
        assert_eq!(s.pop_due(t0, 100).len(), 1);
        s.set("q", t0 + 10_000 * MS);
        // An event 1 ms after the call started waits for the spacing.
        s.call_by("q", t0 + MS);
        assert_eq!(s.next_wake(), Some(t0 + 5 * MS));
        // A second event in the window changes nothing.
        s.call_by("q", t0 + 2 * MS);
        assert_eq!(s.next_wake(), Some(t0 + 5 * MS));
        assert_eq!(s.pop_due(t0 + 5 * MS, 100).len(), 1);
        s.set("q", t0 + 10_000 * MS);
        // Long after the last call: at once.
        s.call_by("q", t0 + 50 * MS);
        assert_eq!(s.next_wake(), Some(t0 + 50 * MS));
    }

    #[test]
    fn removing_and_retaining_drop_timers() {
        let t0 = Instant::now();
        let mut s = QueueSchedule::new(MS);
        for q in ["a", "b", "c"] {
            s.add(q, t0);
        }
        s.remove("b");
        s.retain(|q| q != "c");
        assert_eq!(s.len(), 1);
        let due: Vec<String> = s.pop_due(t0, 100).iter().map(|q| q.to_string()).collect();
        assert_eq!(due, vec!["a"]);
        assert_eq!(s.next_wake(), None);
    }

    #[test]
    fn the_next_call_is_the_due_time_within_spacing_and_look_again() {
        let t0 = Instant::now();
        let look = 10_000 * MS;
        let r = |next_due_ms, more_due| CallResult {
            now_ms: 1_000,
            next_due_ms,
            more_due,
        };
        // A lock due in 250 ms: an exact timer.
        assert_eq!(
            next_call(t0, r(Some(1_250), false), look, 5 * MS, None),
            t0 + 250 * MS
        );
        // Due already (or within the spacing): after the spacing.
        assert_eq!(
            next_call(t0, r(Some(999), false), look, 5 * MS, None),
            t0 + 5 * MS
        );
        // Due in an hour: the sweep comes first.
        assert_eq!(
            next_call(t0, r(Some(3_601_000), false), look, 5 * MS, None),
            t0 + look
        );
        // Nothing pending: the sweep.
        assert_eq!(next_call(t0, r(None, false), look, 5 * MS, None), t0 + look);
        // A full batch: drain on at once, spacing or not.
        assert_eq!(next_call(t0, r(Some(0), true), look, 5 * MS, None), t0);
    }

    #[test]
    fn sweeps_are_rounded_down_to_the_grid_and_due_times_are_not() {
        let origin = Instant::now();
        let grid = SweepGrid::new(origin, 30_000 * MS);
        assert_eq!(grid.floor(origin + 250 * MS), origin + 200 * MS);
        assert_eq!(grid.floor(origin + 300 * MS), origin + 300 * MS);
        let look = 24_050 * MS;
        let r = |next_due_ms| CallResult {
            now_ms: 1_000,
            next_due_ms,
            more_due: false,
        };
        // Two calls started 30 ms apart sweep at the same grid instant, no
        // later than their own bound.
        let a = origin + 1_010 * MS;
        let b = origin + 1_040 * MS;
        let sweep_a = next_call(a, r(None), look, 5 * MS, Some(&grid));
        let sweep_b = next_call(b, r(None), look, 5 * MS, Some(&grid));
        assert_eq!(sweep_a, origin + 25_000 * MS);
        assert_eq!(sweep_a, sweep_b);
        // Without the grid they would differ.
        assert_ne!(
            next_call(a, r(None), look, 5 * MS, None),
            next_call(b, r(None), look, 5 * MS, None)
        );
        // An exact due time keeps its instant.
        assert_eq!(
            next_call(a, r(Some(1_250)), look, 5 * MS, Some(&grid)),
            a + 250 * MS
        );
        // A bound that rounds to the call's start or before is left as it is
        // (with no spacing, the queue would be called again at once).
        assert_eq!(
            next_call(a, r(None), 20 * MS, 5 * MS, Some(&grid)),
            a + 20 * MS
        );
        let at_step = origin + 1_000 * MS;
        assert_eq!(
            next_call(at_step, r(None), 50 * MS, Duration::ZERO, Some(&grid)),
            at_step + 50 * MS
        );
    }

    #[test]
    fn a_rounded_sweep_is_never_late_never_at_once_and_on_the_grid() {
        let origin = Instant::now();
        let result = CallResult {
            now_ms: 0,
            next_due_ms: None,
            more_due: false,
        };
        // 1 ms: a step longer than a tenth, so some bounds round onto or
        // before the call's start and must stay unrounded.
        for sweep_ms in [1, 5, 30, 1_000, 30_000, 600_000] {
            let sweep = sweep_ms * MS;
            let grid = SweepGrid::new(origin, sweep);
            let step = (sweep / 10).clamp(MS, SweepGrid::MAX_STEP);
            for start_us in (0..3_000_000u64).step_by(7_919) {
                let start = origin + Duration::from_micros(start_us);
                for look in [sweep * 8 / 10, sweep] {
                    // The config keeps call_spacing <= sweep_interval.
                    for spacing in [Duration::ZERO, 5 * MS].into_iter().filter(|s| *s <= sweep) {
                        let at = next_call(start, result, look, spacing, Some(&grid));
                        assert!(at <= start + look.max(spacing), "late");
                        assert!(at > start, "at once");
                        assert!(at >= start + spacing, "inside the spacing");
                        let on_grid = (at - origin).as_nanos().is_multiple_of(step.as_nanos());
                        assert!(
                            on_grid || at == start + look || at == start + spacing,
                            "off the grid"
                        );
                        if look >= 2 * step {
                            assert!(at + step > start + look, "rounded by more than a step");
                        }
                    }
                }
            }
        }
    }
}
