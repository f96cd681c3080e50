//! Traffic mode of `deckhand load` (see the parent module's doc): a
//! producer, a consumer sweeping every queue, and a watcher pulling the
//! queues with a message due back, all sharing one [`Shared`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::census::{Census, Ledger};
use super::{
    histogram, progress_bar, queue_names, LiveLoad, LoadOptions, LoadSummary, Percentiles,
};
use crate::locks::lock;
use crate::store::{now_ms, DeckardClient, LockKind, StoreError};

#[derive(Debug, Clone, Copy)]
enum Fate {
    Unlock,
    Timeout,
}

/// Messages the consumer waits to see again: queue index -> id -> (fate, due ms).
type Pending = Vec<Mutex<HashMap<String, (Fate, i64)>>>;

/// How often the watcher pulls a queue whose message is due back and unseen.
const WATCH_TICK: Duration = Duration::from_millis(1);

struct Shared {
    opts: LoadOptions,
    client: Arc<dyn DeckardClient>,
    names: Vec<String>,
    pending: Pending,
    /// `(due ms, queue index, id)` of every message the consumer waits for.
    due: Mutex<BTreeSet<(i64, usize, String)>>,
    unlock_late: Mutex<Histogram<u64>>,
    timeout_late: Mutex<Histogram<u64>>,
    added: AtomicU64,
    pulls: AtomicU64,
    ack_locks: AtomicU64,
    nack_locks: AtomicU64,
    timeouts: AtomicU64,
    returned: AtomicU64,
    early: AtomicU64,
    errors: AtomicU64,
    /// With `check`: what the client knows about every message it wrote.
    ledger: Option<Ledger>,
}

impl Shared {
    fn error(&self, e: StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, "load: store operation failed");
    }

    /// One pull on queue `qi`, and what the consumer does with each message.
    async fn consume(&self, qi: usize, rng: &mut SmallRng) {
        let queue = &self.names[qi];
        let now = now_ms();
        let ids = match self.client.pull(queue, 50, now, self.opts.timeout_ms).await {
            Ok(ids) => ids,
            Err(e) => return self.error(e),
        };
        self.pulls.fetch_add(1, Ordering::Relaxed);
        // The pull ran somewhere between `now` and its reply: a message is
        // early only if it was back before the reply (a pull that waited
        // out a Redis restart may have run well after `now`). Lateness is
        // measured from `now`, so it is never overstated.
        let replied = now_ms();
        let mut finished = Vec::new();
        for id in ids {
            if self.came_back(qi, &id, now, replied) {
                finished.push(id);
            } else if let Some(id) = self.give_fate(qi, id, now, rng).await {
                finished.push(id);
            }
        }
        if !finished.is_empty() {
            let result = self.client.remove(queue, &finished).await;
            if let Some(ledger) = &self.ledger {
                ledger.removed(qi, &finished, result.is_ok());
            }
            if let Err(e) = result {
                self.error(e);
            }
        }
    }

    /// Whether `id`, pulled from queue `qi` at `now` (reply at `replied`),
    /// is a message the consumer waited for; if so, records its lateness
    /// (or that it was early).
    fn came_back(&self, qi: usize, id: &str, now: i64, replied: i64) -> bool {
        let Some((fate, due)) = lock(&self.pending[qi]).remove(id) else {
            return false;
        };
        if replied < due {
            self.early.fetch_add(1, Ordering::Relaxed);
        } else {
            let h = match fate {
                Fate::Unlock => &self.unlock_late,
                Fate::Timeout => &self.timeout_late,
            };
            let _ = lock(h).record((now - due).max(0) as u64);
        }
        self.returned.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Gives a freshly pulled message its fate by the mix: locked (ack or
    /// nack), left to time out, or finished. Returns the id when finished.
    async fn give_fate(
        &self,
        qi: usize,
        id: String,
        now: i64,
        rng: &mut SmallRng,
    ) -> Option<String> {
        let roll = rng.random_range(0..100u32);
        let o = &self.opts;
        if roll < o.ack_lock_pct + o.nack_lock_pct {
            let kind = if roll < o.ack_lock_pct {
                LockKind::Ack
            } else {
                LockKind::Nack
            };
            let lock_ms = if o.lock_ms_max > o.lock_ms {
                rng.random_range(o.lock_ms..=o.lock_ms_max)
            } else {
                o.lock_ms
            };
            self.release(qi, kind, id, now, lock_ms).await;
            None
        } else if roll < o.ack_lock_pct + o.nack_lock_pct + o.timeout_pct {
            // Left in processing: back after its deadline (now + timeout_ms).
            self.expect(qi, id, Fate::Timeout, now + o.timeout_ms);
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            Some(id)
        }
    }

    /// Locks `id` for `lock_ms` (ack or nack) and waits for it to come back.
    async fn release(&self, qi: usize, kind: LockKind, id: String, now: i64, lock_ms: i64) {
        let restore = (kind == LockKind::Ack).then_some(now as f64);
        let queue = &self.names[qi];
        match self
            .client
            .release(queue, kind, &id, now, lock_ms, restore)
            .await
        {
            Ok(true) => {
                self.expect(qi, id, Fate::Unlock, now + lock_ms);
                let counter = if kind == LockKind::Ack {
                    &self.ack_locks
                } else {
                    &self.nack_locks
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => self.error(e),
        }
    }

    /// Notes that `id` of queue `qi` should come back at `due` ms.
    fn expect(&self, qi: usize, id: String, fate: Fate, due: i64) {
        lock(&self.due).insert((due, qi, id.clone()));
        lock(&self.pending[qi]).insert(id, (fate, due));
    }

    /// Records an add of `items` to queue `qi` in the ledger, if any.
    fn record_add(&self, qi: usize, items: &[(String, f64)], ok: bool) {
        if let Some(ledger) = &self.ledger {
            ledger.added(qi, items.iter().map(|(id, _)| id.as_str()), ok);
        }
    }

    /// Adds `items` to queue `qi`, counting and recording the result.
    async fn add(&self, qi: usize, items: &[(String, f64)]) {
        let result = self.client.add(&self.names[qi], items).await;
        self.record_add(qi, items, result.is_ok());
        match result {
            Ok(n) => {
                self.added.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => self.error(e),
        }
    }

    /// Pulls every queue with a message due back and not seen yet, once.
    async fn watch_due(&self, rng: &mut SmallRng) {
        let now = now_ms();
        let queues: BTreeSet<usize> = {
            let mut due = lock(&self.due);
            // Forget what was seen (by any pull) since.
            let seen: Vec<(i64, usize, String)> = due
                .iter()
                .take_while(|(at, _, _)| *at <= now)
                .filter(|(_, qi, id)| !lock(&self.pending[*qi]).contains_key(id))
                .cloned()
                .collect();
            for entry in &seen {
                due.remove(entry);
            }
            due.iter()
                .take_while(|(at, _, _)| *at <= now)
                .map(|(_, qi, _)| *qi)
                .collect()
        };
        for qi in queues {
            self.consume(qi, rng).await;
        }
    }

    /// Whether queue `qi` may be written yet (see `new_queues_pct`).
    fn open(&self, qi: usize, elapsed: Duration) -> bool {
        let n = self.names.len();
        let late = n * self.opts.new_queues_pct as usize / 100;
        let first_late = n - late;
        if qi < first_late || late == 0 {
            return true;
        }
        let opens_at = self
            .opts
            .duration
            .mul_f64(0.8 * (qi - first_late) as f64 / late as f64);
        elapsed >= opens_at
    }

    fn pending_count(&self) -> usize {
        self.pending.iter().map(|p| lock(p).len()).sum()
    }
}

/// Runs the traffic (see the parent module's doc) and returns what the consumer saw.
pub(super) async fn traffic(
    client: Arc<dyn DeckardClient>,
    opts: LoadOptions,
    live: Option<tokio::sync::watch::Sender<LiveLoad>>,
    show: bool,
) -> LoadSummary {
    let shared = Arc::new(Shared::new(client, opts.clone()));
    let bar = progress_bar(show);
    if !opts.warmup.is_zero() {
        warm_up(&shared, &bar).await;
    }
    let started = Instant::now();
    let producing_until = started + opts.duration;
    let deadline = producing_until + opts.grace;
    let producer = tokio::spawn(produce(shared.clone(), started, producing_until));
    let watcher = tokio::spawn(watch(shared.clone(), producing_until, deadline));
    let timeline =
        consume_until_back(&shared, started, producing_until, deadline, &live, &bar).await;
    let _ = producer.await;
    let _ = watcher.await;
    let census = match &shared.ledger {
        Some(ledger) => {
            bar.set_message("checking every message");
            Some(ledger.census(&*shared.client, &shared.names).await)
        }
        None => None,
    };
    bar.finish_and_clear();
    shared.summary(timeline, census)
}

impl Shared {
    fn new(client: Arc<dyn DeckardClient>, opts: LoadOptions) -> Self {
        let names = queue_names(opts.queues);
        Self {
            pending: (0..names.len())
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            names,
            client,
            due: Mutex::new(BTreeSet::new()),
            unlock_late: Mutex::new(histogram()),
            timeout_late: Mutex::new(histogram()),
            added: AtomicU64::new(0),
            pulls: AtomicU64::new(0),
            ack_locks: AtomicU64::new(0),
            nack_locks: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            early: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ledger: opts.check.then(|| Ledger::new(opts.queues)),
            opts,
        }
    }

    /// What the consumer saw, once the run is over.
    fn summary(&self, timeline: Vec<(f64, u64)>, census: Option<Census>) -> LoadSummary {
        let opts = &self.opts;
        // One lock per statement: a guard taken inside the struct literal
        // below would live to its end, and a second one would deadlock.
        let (unlock_lateness_ms, unlock_lateness_quantiles_ms) = {
            let h = lock(&self.unlock_late);
            (Percentiles::of(&h), quantiles(&h))
        };
        let timeout_lateness_ms = Percentiles::of(&lock(&self.timeout_late));
        LoadSummary {
            mode: "traffic",
            queues: opts.queues,
            rate_per_s: opts.rate,
            duration_s: opts.duration.as_secs_f64(),
            added: self.added.load(Ordering::Relaxed),
            pulls: self.pulls.load(Ordering::Relaxed),
            ack_locks: self.ack_locks.load(Ordering::Relaxed),
            nack_locks: self.nack_locks.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            missing: self.pending_count() as u64,
            early: self.early.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            unlock_lateness_ms,
            timeout_lateness_ms,
            unlock_lateness_quantiles_ms,
            timeline,
            census,
            ..Default::default()
        }
    }

    /// What the consumer has seen so far.
    fn live(&self, p: &Percentiles) -> LiveLoad {
        LiveLoad {
            added: self.added.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            pending: self.pending_count() as u64,
            unlock_p50_ms: p.p50,
            unlock_p99_ms: p.p99,
            early: self.early.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// `(quantile, ms)` every percent and p99.9, or nothing for an empty histogram.
fn quantiles(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut qs: Vec<f64> = (1..=100).map(|i| i as f64 / 100.0).collect();
    qs.push(0.999);
    qs.sort_by(f64::total_cmp);
    qs.into_iter()
        .map(|q| (q, h.value_at_quantile(q)))
        .collect()
}

/// Creates every queue with one message, then waits `warmup` (see [`LoadOptions::warmup`]).
async fn warm_up(shared: &Arc<Shared>, bar: &ProgressBar) {
    bar.set_message(format!(
        "warming up: creating {} queues",
        shared.names.len()
    ));
    let now = now_ms() as f64;
    futures::stream::iter(shared.names.iter().enumerate())
        .for_each_concurrent(shared.opts.concurrency, |(qi, q)| async move {
            let items = [("warmup".to_string(), now)];
            let result = shared.client.add(q, &items).await;
            shared.record_add(qi, &items, result.is_ok());
            if let Err(e) = result {
                shared.error(e);
            }
        })
        .await;
    tokio::time::sleep(shared.opts.warmup).await;
}

/// Producer: `rate` messages per second, round robin over the queues open so far.
async fn produce(shared: Arc<Shared>, started: Instant, until: Instant) {
    let mut seq: u64 = 0;
    let mut next_queue = 0usize;
    while Instant::now() < until {
        let due = (started.elapsed().as_secs_f64() * shared.opts.rate as f64) as u64;
        let mut batches: HashMap<usize, Vec<(String, f64)>> = HashMap::new();
        let now = now_ms() as f64;
        let elapsed = started.elapsed();
        while seq < due {
            // Skip queues not created yet (at most one full turn).
            for _ in 0..shared.names.len() {
                if shared.open(next_queue, elapsed) {
                    break;
                }
                next_queue = (next_queue + 1) % shared.names.len();
            }
            seq += 1;
            batches
                .entry(next_queue)
                .or_default()
                .push((format!("m{seq}"), now));
            next_queue = (next_queue + 1) % shared.names.len();
        }
        for (qi, items) in batches {
            shared.add(qi, &items).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Watcher: pulls the queues whose messages are due back (see the module doc).
async fn watch(shared: Arc<Shared>, producing_until: Instant, deadline: Instant) {
    let mut rng = SmallRng::seed_from_u64(shared.opts.seed ^ 0x5eed);
    while Instant::now() < deadline {
        shared.watch_due(&mut rng).await;
        if Instant::now() >= producing_until && shared.pending_count() == 0 {
            break;
        }
        tokio::time::sleep(WATCH_TICK).await;
    }
}

/// Consumer: sweeps every queue, `concurrency` pulls at a time, until the
/// run is over and every locked or timed-out message came back (or the
/// grace period ends). Returns the timeline (see [`LoadSummary::timeline`]).
async fn consume_until_back(
    shared: &Arc<Shared>,
    started: Instant,
    producing_until: Instant,
    deadline: Instant,
    live: &Option<tokio::sync::watch::Sender<LiveLoad>>,
    bar: &ProgressBar,
) -> Vec<(f64, u64)> {
    let mut rng = SmallRng::seed_from_u64(shared.opts.seed);
    let mut timeline = Vec::new();
    let mut next_sample = started;
    loop {
        sweep(shared, &mut rng).await;
        let p = Percentiles::of(&lock(&shared.unlock_late));
        if Instant::now() >= next_sample {
            timeline.push((
                started.elapsed().as_secs_f64(),
                shared.returned.load(Ordering::Relaxed),
            ));
            next_sample += Duration::from_millis(500);
        }
        if let Some(live) = live {
            live.send_replace(shared.live(&p));
        }
        bar.set_message(format!(
            "added {} pulls {} returned {} pending {} unlock lateness p50 {} ms p99 {} ms max {} ms errors {}",
            shared.added.load(Ordering::Relaxed),
            shared.pulls.load(Ordering::Relaxed),
            shared.returned.load(Ordering::Relaxed),
            shared.pending_count(),
            p.p50,
            p.p99,
            p.max,
            shared.errors.load(Ordering::Relaxed),
        ));
        bar.tick();
        let now = Instant::now();
        if (now >= producing_until && shared.pending_count() == 0) || now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    timeline
}

/// One pull on every queue, `concurrency` at a time, each with its own seeded rng.
async fn sweep(shared: &Arc<Shared>, rng: &mut SmallRng) {
    let seeds: Vec<u64> = (0..shared.names.len()).map(|_| rng.random()).collect();
    futures::stream::iter(seeds.into_iter().enumerate().map(|(qi, seed)| {
        let shared = shared.clone();
        async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            shared.consume(qi, &mut rng).await;
        }
    }))
    .buffer_unordered(shared.opts.concurrency)
    .collect::<Vec<()>>()
    .await;
}
