//! The demo's live view: one screen on stderr, redrawn four times a second.
//! Hidden when stderr is not a terminal or under `--json`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use openraft::ServerState;
use tokio::sync::watch;

use super::{DemoOptions, DemoState};
use crate::cluster::{NodeId, ShardState};
use crate::load::LiveLoad;
use crate::locks::lock;
use crate::node::Node;

pub struct LiveView {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveView {
    pub fn start(
        state: Arc<DemoState>,
        live: watch::Receiver<LiveLoad>,
        opts: DemoOptions,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let show = opts.live && std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let bar = if show {
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            let mut last = (Instant::now(), 0u64);
            loop {
                if show {
                    // Copy first: a watch guard must not live across the await.
                    let load = live.borrow().clone();
                    let text = screen(&state, &load, &opts, &mut last).await;
                    bar.set_message(text);
                    bar.tick();
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stopped.changed() => break,
                }
            }
            bar.finish_and_clear();
        });
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// One frame of the view.
async fn screen(
    state: &DemoState,
    load: &LiveLoad,
    opts: &DemoOptions,
    last: &mut (Instant, u64),
) -> String {
    let cluster = state.cluster.read().await;
    let elapsed = state.started.elapsed().as_secs_f64();
    let leader = cluster.agreed_leader();
    let totals = cluster.totals();
    let now = Instant::now();
    let dt = now.duration_since(last.0).as_secs_f64().max(0.001);
    let rate = (totals.moved.saturating_sub(last.1)) as f64 / dt;
    *last = (now, totals.moved);
    let mut out = format!(
        "deckhand demo  {elapsed:5.1}s / {:.0}s   {} nodes, {} queues\n",
        opts.duration.as_secs_f64(),
        opts.nodes,
        opts.queues
    );
    out.push_str(&format!(
        "leader: {}\n",
        leader.map_or("electing...".to_string(), |l| format!("node {l}"))
    ));
    let shards = leader
        .and_then(|l| cluster.nodes.get(&l))
        .map(|n| n.state_machine.latest().cluster.shards.clone())
        .unwrap_or_default();
    for id in cluster.configs.keys() {
        out.push_str(&node_line(*id, cluster.nodes.get(id), &shards));
    }
    out.push_str(&format!(
        "elements moved/s {rate:>7.0}   total {}   fenced writes {}\n",
        totals.moved, totals.fenced
    ));
    out.push_str(&format!(
        "consumers: {} added, {} came back, {} pending; unlock lateness p50 {} ms p99 {} ms\n",
        load.added, load.returned, load.pending, load.unlock_p50_ms, load.unlock_p99_ms
    ));
    let events = lock(&state.events).clone();
    for e in events.iter().rev().take(4).rev() {
        let took = e
            .recovered_ms
            .map_or("not within 15 s".to_string(), |ms| format!("{ms} ms"));
        out.push_str(&format!("  {:>5.1}s  {} ({took})\n", e.at_s, e.what));
    }
    out
}

/// One node's line: its role, term, shards owned and running, or DOWN.
fn node_line(id: NodeId, node: Option<&Node>, shards: &[ShardState]) -> String {
    let Some(n) = node else {
        return format!("  node {id}  DOWN\n");
    };
    let m = n.metrics();
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    let owned = shards.iter().filter(|s| s.owner == Some(id)).count();
    format!(
        "  node {id}  {role:<9} term {:<3} shards owned {owned:<3} running {}\n",
        m.current_term,
        n.worker.running().len()
    )
}
