//! `deckhand load`: acts like Deckard's API pods and consumers on a store,
//! and measures what a consumer sees.
//!
//! A producer adds messages at `rate` per second over `queues` queues. A
//! consumer keeps pulling every queue; each fresh message it pulls gets one
//! fate by the configured mix: ack with a lock (`lock_ms`), nack with a lock,
//! left in processing to time out (pulled with a `timeout_ms` deadline), or
//! finished (removed). When a locked or timed-out message shows up in a pull
//! again, the consumer records how late that was after its unlock time or
//! deadline (consumer-observed lateness, in ms) and finishes it. After the
//! run, the consumer keeps going until every such message came back, or a
//! grace period ends: messages that never came back are reported missing.
//!
//! Lock durations are drawn uniformly from `lock_ms..=lock_ms_max`. With
//! `new_queues_pct`, that share of the queues receives its first message
//! only during the run (spread over its first 80 %), as Deckard creates
//! queues on demand. Finished messages are removed, so a quiet queue goes
//! empty between locks and comes back.
//!
//! Besides the sweeps over every queue, a watcher pulls each queue that has
//! a message due back every [`WATCH_TICK`] until it is seen, so what is
//! measured is the housekeeper's lateness, not the consumer's sweep time.
//!
//! With `expired_locks > 0` it instead measures drain throughput: it writes
//! that many already-expired ack locks, spread over the queues, and times
//! until the lock sets are empty.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::locks::lock;
use crate::store::{now_ms, DeckardClient, LockKind, StoreError};

mod census;
mod drain;
mod limit;
pub use census::Census;
use census::Ledger;
pub use limit::{redis_limit, RedisLimit};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub queues: usize,
    pub rate: u64,
    pub duration: Duration,
    pub lock_ms: i64,
    /// Locks last a uniformly drawn `lock_ms..=lock_ms_max` (equal: fixed).
    pub lock_ms_max: i64,
    pub timeout_ms: i64,
    /// Percent of the queues first written during the run (see the module doc).
    pub new_queues_pct: u32,
    /// Percentages of pulled messages: ack-locked, nack-locked, left to time out (rest: finished).
    pub ack_lock_pct: u32,
    pub nack_lock_pct: u32,
    pub timeout_pct: u32,
    pub concurrency: usize,
    pub seed: u64,
    pub grace: Duration,
    pub progress: bool,
    /// Drain mode: write this many expired locks and time the drain.
    pub expired_locks: usize,
    /// Drain mode: a node's admin address; UNLOCK is paused while the locks
    /// are written and resumed when the clock starts.
    pub admin: Option<String>,
    /// Traffic mode: create every queue (one message each) and wait this long
    /// before measuring, so the housekeeper knows the queues, as it would
    /// know long-lived Deckard queues.
    pub warmup: Duration,
    /// Drain mode: created once the locks are written and the clock starts
    /// (benchmarks start a housekeeper that waits for it).
    pub signal_file: Option<std::path::PathBuf>,
    /// Traffic mode: keep a ledger of every message and end with the
    /// integrity census (see [`census`]).
    pub check: bool,
}

/// Lateness percentiles in ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadSummary {
    pub mode: &'static str,
    pub queues: usize,
    pub rate_per_s: u64,
    pub duration_s: f64,
    pub added: u64,
    pub pulls: u64,
    pub ack_locks: u64,
    pub nack_locks: u64,
    pub timeouts: u64,
    pub returned: u64,
    /// Locked or timed-out messages that never came back within the grace period.
    pub missing: u64,
    /// Messages seen again before their unlock time or deadline (should be 0).
    pub early: u64,
    pub errors: u64,
    /// Consumer-observed lateness of unlocked messages, ms after the unlock time.
    pub unlock_lateness_ms: Percentiles,
    /// Consumer-observed lateness of timed-out messages, ms after the deadline.
    pub timeout_lateness_ms: Percentiles,
    /// `(quantile, ms)` of the unlock lateness, every percent and p99.9 (plots).
    pub unlock_lateness_quantiles_ms: Vec<(f64, u64)>,
    /// `(seconds since the traffic started, messages back so far)`, every
    /// half second: the throughput as consumers see it (plots).
    pub timeline: Vec<(f64, u64)>,
    /// Drain mode: expired locks written, seconds to drain, elements per second.
    pub drained: u64,
    pub drain_s: f64,
    pub drain_per_s: f64,
    /// Traffic mode with `check`: the end-of-run integrity census.
    pub census: Option<Census>,
}

impl LoadSummary {
    /// With `check`: every message accounted for, none early, none missing.
    pub fn integrity_ok(&self) -> bool {
        self.census.as_ref().is_some_and(Census::ok) && self.early == 0 && self.missing == 0
    }
}

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
    due: Mutex<std::collections::BTreeSet<(i64, usize, String)>>,
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

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is a valid histogram")
}

fn queue_names(n: usize) -> Vec<String> {
    // Deckard-style names with a `prefix::` part, as metrics labels use it.
    (0..n).map(|i| format!("load::q{i}")).collect()
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
            let seen = lock(&self.pending[qi]).remove(&id);
            if let Some((fate, due)) = seen {
                let late = (now - due).max(0);
                if replied < due {
                    self.early.fetch_add(1, Ordering::Relaxed);
                } else {
                    let h = match fate {
                        Fate::Unlock => &self.unlock_late,
                        Fate::Timeout => &self.timeout_late,
                    };
                    let _ = lock(h).record(late as u64);
                }
                self.returned.fetch_add(1, Ordering::Relaxed);
                finished.push(id);
                continue;
            }
            let roll = rng.random_range(0..100u32);
            let o = &self.opts;
            if roll < o.ack_lock_pct + o.nack_lock_pct {
                let kind = if roll < o.ack_lock_pct {
                    LockKind::Ack
                } else {
                    LockKind::Nack
                };
                let restore = (kind == LockKind::Ack).then_some(now as f64);
                let lock_ms = if o.lock_ms_max > o.lock_ms {
                    rng.random_range(o.lock_ms..=o.lock_ms_max)
                } else {
                    o.lock_ms
                };
                match self
                    .client
                    .release(queue, kind, &id, now, lock_ms, restore)
                    .await
                {
                    Ok(true) => {
                        lock(&self.due).insert((now + lock_ms, qi, id.clone()));
                        lock(&self.pending[qi]).insert(id, (Fate::Unlock, now + lock_ms));
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
            } else if roll < o.ack_lock_pct + o.nack_lock_pct + o.timeout_pct {
                // Left in processing: back after its deadline (now + timeout_ms).
                lock(&self.due).insert((now + o.timeout_ms, qi, id.clone()));
                lock(&self.pending[qi]).insert(id, (Fate::Timeout, now + o.timeout_ms));
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            } else {
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

    /// Records an add of `items` to queue `qi` in the ledger, if any.
    fn record_add(&self, qi: usize, items: &[(String, f64)], ok: bool) {
        if let Some(ledger) = &self.ledger {
            ledger.added(qi, items.iter().map(|(id, _)| id.as_str()), ok);
        }
    }

    /// Pulls every queue with a message due back and not seen yet, once.
    async fn watch_due(&self, rng: &mut SmallRng) {
        let now = now_ms();
        let queues: std::collections::BTreeSet<usize> = {
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

fn progress_bar(show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

/// What the consumer has seen so far, published after every sweep.
#[derive(Debug, Clone, Default)]
pub struct LiveLoad {
    pub added: u64,
    /// Locked or timed-out messages that came back so far.
    pub returned: u64,
    pub pending: u64,
    pub unlock_p50_ms: u64,
    pub unlock_p99_ms: u64,
    pub early: u64,
    pub errors: u64,
}

/// Runs the traffic and returns what the consumer saw.
pub async fn run(client: Arc<dyn DeckardClient>, opts: LoadOptions) -> LoadSummary {
    run_with(client, opts, None).await
}

/// [`run`], publishing [`LiveLoad`] after every sweep of the consumer.
pub async fn run_with(
    client: Arc<dyn DeckardClient>,
    opts: LoadOptions,
    live: Option<tokio::sync::watch::Sender<LiveLoad>>,
) -> LoadSummary {
    let show = opts.progress && std::io::stderr().is_terminal();
    if opts.expired_locks > 0 {
        return drain::drain(client, opts, show).await;
    }
    let names = queue_names(opts.queues);
    let shared = Arc::new(Shared {
        pending: (0..names.len())
            .map(|_| Mutex::new(HashMap::new()))
            .collect(),
        names,
        client,
        due: Mutex::new(std::collections::BTreeSet::new()),
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
        opts: opts.clone(),
    });
    let bar = progress_bar(show);
    if !opts.warmup.is_zero() {
        bar.set_message(format!(
            "warming up: creating {} queues",
            shared.names.len()
        ));
        let now = now_ms() as f64;
        futures::stream::iter(shared.names.iter().enumerate())
            .for_each_concurrent(opts.concurrency, |(qi, q)| {
                let shared = shared.clone();
                async move {
                    let items = [("warmup".to_string(), now)];
                    let result = shared.client.add(q, &items).await;
                    shared.record_add(qi, &items, result.is_ok());
                    if let Err(e) = result {
                        shared.error(e);
                    }
                }
            })
            .await;
        tokio::time::sleep(opts.warmup).await;
    }
    let started = Instant::now();
    let producing_until = started + opts.duration;

    // Producer: `rate` messages per second, round robin over the queues.
    let producer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut seq: u64 = 0;
            let mut next_queue = 0usize;
            while Instant::now() < producing_until {
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
                    let result = shared.client.add(&shared.names[qi], &items).await;
                    shared.record_add(qi, &items, result.is_ok());
                    match result {
                        Ok(n) => {
                            shared.added.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => shared.error(e),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Watcher: pulls queues whose messages are due back (see the module doc).
    let deadline = producing_until + opts.grace;
    let watcher = {
        let shared = shared.clone();
        let seed = opts.seed ^ 0x5eed;
        tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            while Instant::now() < deadline {
                shared.watch_due(&mut rng).await;
                if Instant::now() >= producing_until && shared.pending_count() == 0 {
                    break;
                }
                tokio::time::sleep(WATCH_TICK).await;
            }
        })
    };
    // Consumer: sweeps every queue, `concurrency` pulls at a time, until the
    // run is over and every locked or timed-out message came back (or grace ends).
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let mut timeline = Vec::new();
    let mut next_sample = started;
    loop {
        let seeds: Vec<u64> = (0..shared.names.len()).map(|_| rng.random()).collect();
        let sweep = futures::stream::iter(seeds.into_iter().enumerate().map(|(qi, seed)| {
            let shared = shared.clone();
            async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                shared.consume(qi, &mut rng).await;
            }
        }))
        .buffer_unordered(opts.concurrency)
        .collect::<Vec<()>>();
        sweep.await;
        let p = Percentiles::of(&lock(&shared.unlock_late));
        if Instant::now() >= next_sample {
            timeline.push((
                started.elapsed().as_secs_f64(),
                shared.returned.load(Ordering::Relaxed),
            ));
            next_sample += Duration::from_millis(500);
        }
        if let Some(live) = &live {
            live.send_replace(LiveLoad {
                added: shared.added.load(Ordering::Relaxed),
                returned: shared.returned.load(Ordering::Relaxed),
                pending: shared.pending_count() as u64,
                unlock_p50_ms: p.p50,
                unlock_p99_ms: p.p99,
                early: shared.early.load(Ordering::Relaxed),
                errors: shared.errors.load(Ordering::Relaxed),
            });
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
    let unlock_lateness_ms = Percentiles::of(&lock(&shared.unlock_late));
    let timeout_lateness_ms = Percentiles::of(&lock(&shared.timeout_late));
    let unlock_lateness_quantiles_ms = {
        let h = lock(&shared.unlock_late);
        let mut qs: Vec<f64> = (1..=100).map(|i| i as f64 / 100.0).collect();
        qs.push(0.999);
        qs.sort_by(f64::total_cmp);
        if h.is_empty() {
            Vec::new()
        } else {
            qs.into_iter()
                .map(|q| (q, h.value_at_quantile(q)))
                .collect()
        }
    };
    LoadSummary {
        mode: "traffic",
        queues: opts.queues,
        rate_per_s: opts.rate,
        duration_s: opts.duration.as_secs_f64(),
        added: shared.added.load(Ordering::Relaxed),
        pulls: shared.pulls.load(Ordering::Relaxed),
        ack_locks: shared.ack_locks.load(Ordering::Relaxed),
        nack_locks: shared.nack_locks.load(Ordering::Relaxed),
        timeouts: shared.timeouts.load(Ordering::Relaxed),
        returned: shared.returned.load(Ordering::Relaxed),
        missing: shared.pending_count() as u64,
        early: shared.early.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        unlock_lateness_ms,
        timeout_lateness_ms,
        unlock_lateness_quantiles_ms,
        timeline,
        census,
        ..Default::default()
    }
}

/// The summary as a few readable lines.
pub fn summary_text(s: &LoadSummary) -> String {
    if s.mode == "drain" {
        return format!(
            "drained {} expired locks over {} queues in {:.2} s: {:.0} elements/s (errors: {})",
            s.drained, s.queues, s.drain_s, s.drain_per_s, s.errors
        );
    }
    let p = |x: &Percentiles| {
        format!(
            "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} samples)",
            x.p50, x.p90, x.p99, x.max, x.count
        )
    };
    format!(
        "{} queues, {}/s for {:.0} s: added {}, pulls {}, ack locks {}, nack locks {}, left to time out {}\n\
         came back {}, missing {}, early {}, errors {}\n\
         unlock lateness as consumers saw it: {}\n\
         timeout lateness as consumers saw it: {}",
        s.queues,
        s.rate_per_s,
        s.duration_s,
        s.added,
        s.pulls,
        s.ack_locks,
        s.nack_locks,
        s.timeouts,
        s.returned,
        s.missing,
        s.early,
        s.errors,
        p(&s.unlock_lateness_ms),
        p(&s.timeout_lateness_ms)
    ) + &s.census.as_ref().map(census_text).unwrap_or_default()
}

fn census_text(c: &Census) -> String {
    let mut out = format!(
        "\ncheck of every message over {} queues: {} in exactly one set, {} removed and gone, {} duplicated, \
         {} lost, {} resurrected, {} uncertain (an operation on them failed), {} queues unreadable",
        c.queues, c.present, c.removed, c.duplicated, c.lost, c.resurrected, c.uncertain, c.unreadable
    );
    for problem in &c.problems {
        out.push_str("\n  ");
        out.push_str(problem);
    }
    out
}
