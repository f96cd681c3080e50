//! The HTTP `/metrics` endpoint of one node.
//!
//! Every value is read at scrape time: node gauges from the Raft metrics and
//! the worker, queue gauges from the coordinator, which returns them only
//! while this node is a fresh leader (see `worker::coordinator`). So a node
//! that stopped leading has no queue gauges on its very next scrape.

use std::sync::Arc;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::net::TcpListener;

use crate::metrics::{master_call_families, queue_gauge_families};
use crate::raft::store::AppliedView;
use crate::raft::Raft;
use crate::shutdown::ShutdownListener;
use crate::worker::coordinator::Coordinator;
use crate::worker::WorkerShared;

/// What `/metrics` reads node state from at scrape time.
#[derive(Clone)]
pub(super) struct MetricsSource {
    pub raft: Raft,
    pub state_machine: AppliedView,
    pub worker: Arc<WorkerShared>,
    /// Serves the leader-only queue gauges (or nothing, off-leader).
    pub coordinator: Coordinator,
}

impl MetricsSource {
    /// Sets the node gauges from the node's current state, asks the
    /// coordinator for queue gauges (none unless a fresh leader), renders.
    async fn render(&self) -> String {
        let queue_rows = self.coordinator.queue_gauges().await;
        let metrics = self.worker.metrics.as_ref();
        let m = &metrics.node;
        let raft = self.raft.metrics().borrow_watched().clone();
        let leader = i64::from(raft.state == ServerState::Leader);
        m.is_leader.set(leader);
        m.deckard_leader.set(leader);
        m.raft_term.set(raft.current_term as i64);
        m.raft_commit_index
            .set(raft.local_committed.map_or(0, |l| l.index() as i64));
        m.raft_applied_index
            .set(raft.last_applied.map_or(0, |l| l.index() as i64));
        let applied = self.state_machine.latest();
        m.shards_owned
            .set(applied.cluster.owned_by(self.worker.node_id).count() as i64);
        m.shards_running.set(self.worker.running().len() as i64);
        let fenced = self.worker.fenced_by_newer_cluster();
        m.shards_fenced.set(
            applied
                .cluster
                .owned_at(self.worker.node_id, &fenced)
                .count() as i64,
        );
        m.lease_remaining_seconds.set(
            self.worker
                .lease_remaining()
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        // Grouping every queue by its label is work proportional to the
        // queues (a million on a large cluster): off the async worker, which
        // also drives the Raft heartbeats.
        let cap = metrics.label_cap();
        let mut extra = match queue_rows {
            Some(rows) => tokio::task::spawn_blocking(move || {
                queue_gauge_families(rows.iter().flat_map(|r| r.iter()), cap)
            })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "building the queue gauges failed; served without them");
                Vec::new()
            }),
            None => Vec::new(),
        };
        extra.extend(master_call_families(&self.worker.store.calls_by_master()));
        metrics.render_with(extra)
    }
}

pub(super) async fn serve_metrics(
    listener: TcpListener,
    source: MetricsSource,
    mut stop: ShutdownListener,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let source = source.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    source.render().await,
                )
            }
        }),
    );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.recv().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics server failed");
    }
}
