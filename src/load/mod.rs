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

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::store::DeckardClient;

mod census;
mod drain;
mod limit;
mod traffic;
pub use census::Census;
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

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is a valid histogram")
}

fn queue_names(n: usize) -> Vec<String> {
    // Deckard-style names with a `prefix::` part, as metrics labels use it.
    (0..n).map(|i| format!("load::q{i}")).collect()
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
    traffic::traffic(client, opts, live, show).await
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
