//! `deckhand demo`: the whole system in one process, with faults.
//!
//! # What runs
//!
//! A cluster of `nodes` real nodes ([`cluster::DemoCluster`]: real gRPC on
//! loopback ports picked at run time, sled in a temporary directory) shares
//! the embedded in-memory store. `deckhand load`'s traffic engine acts like
//! Deckard's API pods and consumers on `queues` queues: it adds messages,
//! pulls them, acks or nacks some with locks and leaves some to time out,
//! and measures how late each one comes back. A live view shows the leader,
//! the shard owners, the work rate, lateness and fenced writes.
//!
//! # The faults
//!
//! At a third of the run the leader is killed (no handoff); later a
//! follower; later both come back from their data dirs. With 3 nodes the
//! leader is restarted before the follower is killed, so a quorum always
//! remains; with 5 both are down together.
//!
//! # The verdict
//!
//! After the traffic, the consumer waits until every locked or timed-out
//! message came back. The run passes only if: no such message is missing or
//! came back early, no store operation failed, no message id sits in two
//! sets of a queue, and the store accepted no operation of an older epoch
//! after a newer one on any queue (fencing held).

pub mod cluster;
pub mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{self, LiveLoad, LoadOptions, Percentiles};
use crate::locks::lock;
use crate::node::NodeError;
use crate::raft::NodeId;
use crate::store::memory::MemoryStore;
use crate::store::DeckardClient;
use cluster::DemoCluster;

/// How long to wait for a failover or handoff before calling it failed.
const FAULT_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Duration,
    pub nodes: u64,
    pub queues: usize,
    pub seed: u64,
    /// Messages added per second.
    pub rate: u64,
    /// Live view on stderr (only on a terminal).
    pub live: bool,
}

/// One fault and how long the cluster took to recover from it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub at_s: f64,
    pub what: String,
    /// Time to a new agreed leader (leader kill) or until every shard was
    /// worked again (follower kill, restarts), ms; `None`: not within 15 s.
    pub recovered_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Consistency {
    pub ok: bool,
    /// Locked or timed-out messages that never came back.
    pub missing: u64,
    /// Messages that came back before their unlock time or deadline.
    pub early: u64,
    /// Message ids found in more than one set of a queue.
    pub duplicated: u64,
    /// Accepted operations whose epoch was older than one accepted before on that queue.
    pub fence_regressions: u64,
    pub store_errors: u64,
    pub accepted_operations: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub nodes: u64,
    pub queues: usize,
    pub duration_s: f64,
    pub events: Vec<FaultEvent>,
    pub messages_added: u64,
    /// Locked or timed-out messages that came back to consumers.
    pub messages_returned: u64,
    pub unlock_lateness_ms: Percentiles,
    pub timeout_lateness_ms: Percentiles,
    /// Elements moved back to active pools by all nodes.
    pub elements_moved: u64,
    pub fenced_writes: u64,
    pub consistency: Consistency,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("bad option: {0}")]
    Options(String),
    #[error("a demo node failed: {0}")]
    Node(#[from] NodeError),
}

impl DemoOptions {
    /// Rejects options the demo cannot run with.
    pub fn check(&self) -> Result<(), DemoError> {
        if !(1..=7).contains(&self.nodes) {
            return Err(DemoError::Options(format!(
                "--nodes {} is outside 1..=7",
                self.nodes
            )));
        }
        if self.queues == 0 || self.queues > 100_000 {
            return Err(DemoError::Options(format!(
                "--queues {} is outside 1..=100000",
                self.queues
            )));
        }
        if self.duration < Duration::from_secs(5) {
            return Err(DemoError::Options(format!(
                "--duration {:?} is too short (at least 5s: there are faults to fit in)",
                self.duration
            )));
        }
        Ok(())
    }
}

/// Shared between the fault schedule and the live view.
pub struct DemoState {
    pub cluster: tokio::sync::RwLock<DemoCluster>,
    pub events: std::sync::Mutex<Vec<FaultEvent>>,
    pub started: Instant,
}

/// Runs the demo to the end and returns its summary.
pub async fn run(opts: DemoOptions) -> Result<DemoSummary, DemoError> {
    opts.check()?;
    let store = MemoryStore::with_history();
    let cluster = tokio::sync::RwLock::new(DemoCluster::start(opts.nodes, store.clone()).await?);
    let _ = poll_until(&cluster, |c| c.agreed_leader().is_some()).await;
    let state = Arc::new(DemoState {
        cluster,
        events: std::sync::Mutex::new(Vec::new()),
        started: Instant::now(),
    });
    let warmup = Duration::from_secs(1);
    let load_opts = LoadOptions {
        queues: opts.queues,
        rate: opts.rate,
        duration: opts.duration.saturating_sub(warmup),
        // Deckard-like: locks from 100 ms to 2 s, a tenth of the queues new.
        lock_ms: 100,
        lock_ms_max: 2000,
        timeout_ms: 1000,
        new_queues_pct: 10,
        ack_lock_pct: 50,
        nack_lock_pct: 20,
        timeout_pct: 10,
        concurrency: 32,
        seed: opts.seed,
        grace: Duration::from_secs(10),
        progress: false,
        expired_locks: 0,
        admin: None,
        warmup,
        signal_file: None,
        check: false,
    };
    let (live_tx, live_rx) = tokio::sync::watch::channel(LiveLoad::default());
    let client: Arc<dyn DeckardClient> = Arc::new(store.clone());
    let traffic = tokio::spawn(load::run_with(client, load_opts, Some(live_tx)));
    let faults = tokio::spawn(fault_schedule(state.clone(), opts.clone()));
    let view = view::LiveView::start(state.clone(), live_rx, opts.clone());
    let load_summary = traffic.await.unwrap_or_default();
    let _ = faults.await;
    view.stop().await;

    let events = lock(&state.events).clone();
    let state = Arc::try_unwrap(state).ok().map(|s| s.cluster.into_inner());
    let totals = state.as_ref().map(|c| c.totals()).unwrap_or_default();
    let consistency = check_consistency(&store, &load_summary).await;
    if let Some(cluster) = state {
        cluster.shutdown().await;
    }
    Ok(DemoSummary {
        nodes: opts.nodes,
        queues: opts.queues,
        duration_s: opts.duration.as_secs_f64(),
        events,
        messages_added: load_summary.added,
        messages_returned: load_summary.returned,
        unlock_lateness_ms: load_summary.unlock_lateness_ms,
        timeout_lateness_ms: load_summary.timeout_lateness_ms,
        elements_moved: totals.moved,
        fenced_writes: totals.fenced,
        consistency,
    })
}

/// Kill the leader at a third, a follower later, restart both.
async fn fault_schedule(state: Arc<DemoState>, opts: DemoOptions) {
    if opts.nodes < 3 {
        return; // a kill would leave no quorum
    }
    let d = opts.duration.as_secs_f64();
    let at = |f: f64| state.started + Duration::from_secs_f64(d * f);
    let together = opts.nodes >= 5;
    tokio::time::sleep_until(at(1.0 / 3.0).into()).await;
    let leader = kill_leader(&state).await;
    if !together {
        tokio::time::sleep_until(at(0.5).into()).await;
        if let Some(id) = leader {
            restart(&state, id).await;
        }
    }
    tokio::time::sleep_until(at(if together { 0.5 } else { 0.6 }).into()).await;
    let follower = kill_follower(&state, leader).await;
    tokio::time::sleep_until(at(if together { 0.7 } else { 0.75 }).into()).await;
    if together {
        if let Some(id) = leader {
            restart(&state, id).await;
        }
    }
    if let Some(id) = follower {
        restart(&state, id).await;
    }
}

fn record(state: &DemoState, what: String, recovered: Option<Duration>, at: Instant) {
    let event = FaultEvent {
        at_s: (at - state.started).as_secs_f64(),
        what,
        recovered_ms: recovered.map(|d| d.as_millis() as u64),
    };
    tracing::info!(what = %event.what, recovered_ms = ?event.recovered_ms, "demo fault");
    lock(&state.events).push(event);
}

async fn kill_leader(state: &DemoState) -> Option<NodeId> {
    let mut cluster = state.cluster.write().await;
    let leader = cluster.agreed_leader()?;
    let at = Instant::now();
    cluster.crash(leader).await;
    drop(cluster);
    let took = poll_until(&state.cluster, |c| c.agreed_leader().is_some()).await;
    let new = state.cluster.read().await.agreed_leader();
    record(
        state,
        format!(
            "killed leader node {leader}; node {} leads",
            new.map_or("?".into(), |n| n.to_string())
        ),
        took,
        at,
    );
    Some(leader)
}

/// Kills a follower that owns shards, preferring one other than `spare`
/// (the node killed before, just back).
async fn kill_follower(state: &DemoState, spare: Option<NodeId>) -> Option<NodeId> {
    let mut cluster = state.cluster.write().await;
    let leader = cluster.agreed_leader()?;
    let followers: Vec<NodeId> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|n| *n != leader)
        .collect();
    let follower = followers
        .iter()
        .copied()
        .find(|n| Some(*n) != spare)
        .or_else(|| followers.first().copied())?;
    let at = Instant::now();
    cluster.crash(follower).await;
    drop(cluster);
    let took = poll_until(&state.cluster, DemoCluster::all_shards_worked).await;
    record(
        state,
        format!("killed follower node {follower}; its shards moved"),
        took,
        at,
    );
    Some(follower)
}

async fn restart(state: &DemoState, id: NodeId) {
    let at = Instant::now();
    let result = state.cluster.write().await.restart(id).await;
    match result {
        Ok(()) => {
            // The leader rebalances onto a returning node.
            let took = poll_until(&state.cluster, |c| {
                c.nodes
                    .get(&id)
                    .is_some_and(|n| !n.worker.running().is_empty())
            })
            .await;
            record(
                state,
                format!("restarted node {id}; it runs shards again"),
                took,
                at,
            );
        }
        Err(e) => record(state, format!("restarting node {id} failed: {e}"), None, at),
    }
}

/// Polls `check` every 10 ms, taking the read lock only for each check,
/// until it holds or [`FAULT_LIMIT`]; returns the time it took.
async fn poll_until(
    cluster: &tokio::sync::RwLock<DemoCluster>,
    check: impl Fn(&DemoCluster) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < FAULT_LIMIT {
        if check(&*cluster.read().await) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The end-of-run checks (see the module docs).
async fn check_consistency(store: &MemoryStore, load: &load::LoadSummary) -> Consistency {
    let mut c = Consistency {
        missing: load.missing,
        early: load.early,
        store_errors: load.errors,
        ..Consistency::default()
    };
    for q in (0..load.queues).map(|i| format!("load::q{i}")) {
        match store.snapshot(&q).await {
            Ok(snap) => {
                for (id, sets) in snap.placements() {
                    if sets.len() > 1 {
                        c.duplicated += 1;
                        if c.problems.len() < 10 {
                            c.problems.push(format!("{q}: {id} is in {sets:?}"));
                        }
                    }
                }
            }
            Err(e) => c.problems.push(format!("{q}: cannot read: {e}")),
        }
    }
    let history = store.history();
    c.accepted_operations = history.len() as u64;
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for op in &history {
        let prev = last.insert(op.queue.as_str(), op.epoch).unwrap_or(0);
        if op.epoch < prev {
            c.fence_regressions += 1;
            if c.problems.len() < 10 {
                c.problems.push(format!(
                    "{}: epoch {} accepted after epoch {prev}",
                    op.queue, op.epoch
                ));
            }
        }
    }
    if c.missing > 0 {
        c.problems.push(format!(
            "{} locked or timed-out messages never came back",
            c.missing
        ));
    }
    if c.early > 0 {
        c.problems.push(format!(
            "{} messages came back before they were due",
            c.early
        ));
    }
    if c.store_errors > 0 {
        c.problems
            .push(format!("{} store operations failed", c.store_errors));
    }
    c.ok = c.missing == 0
        && c.early == 0
        && c.duplicated == 0
        && c.fence_regressions == 0
        && c.store_errors == 0
        && c.problems.is_empty();
    c
}

/// The summary as text.
pub fn summary_text(s: &DemoSummary) -> String {
    let mut out = format!(
        "deckhand demo: {} nodes, {} queues, {:.0} s\n",
        s.nodes, s.queues, s.duration_s
    );
    for e in &s.events {
        let took = e
            .recovered_ms
            .map_or("not within 15 s".to_string(), |ms| format!("{ms} ms"));
        out.push_str(&format!("  {:>5.1}s  {}  ({took})\n", e.at_s, e.what));
    }
    let u = &s.unlock_lateness_ms;
    let t = &s.timeout_lateness_ms;
    out.push_str(&format!(
        "messages: {} added, {} came back after a lock or deadline\n\
         unlock lateness (consumer view): p50 {} ms, p99 {} ms, max {} ms over {}\n\
         timeout lateness: p50 {} ms, p99 {} ms, max {} ms over {}\n\
         elements moved by the cluster: {}; fenced writes: {}\n",
        s.messages_added,
        s.messages_returned,
        u.p50,
        u.p99,
        u.max,
        u.count,
        t.p50,
        t.p99,
        t.max,
        t.count,
        s.elements_moved,
        s.fenced_writes
    ));
    let c = &s.consistency;
    if c.ok {
        out.push_str(&format!(
            "consistency: OK (nothing lost, nothing duplicated, no early returns; fencing held over {} accepted operations)\n",
            c.accepted_operations
        ));
    } else {
        out.push_str("consistency: FAILED\n");
        for p in &c.problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}
