//! A thread of its own for Raft: openraft's core, its replication tasks, the
//! Raft and worker RPC server and the heartbeat pacer run on a
//! single-threaded tokio runtime, apart from the node's other work.
//!
//! # Why
//!
//! An idle node's CPU is almost all Raft heartbeats (twenty rounds a second
//! with the 50 ms heartbeat this was written for; ten with today's 100 ms). On the node's multi-thread runtime one heartbeat
//! crossed threads several times: the pacer, the core, the replication task,
//! tonic's buffer and connection tasks and the server's per-request task
//! were spread over both workers, and each hand-over between them was a
//! futex wake-up (on a virtual machine, an inter-processor interrupt and an
//! exit to the hypervisor). On one thread the same hand-overs are queue
//! pushes, and the thread sleeps only in `epoll_wait`.
//!
//! It also keeps Raft's timers apart from the housekeeping: a burst of shard
//! work on the node's runtime can no longer sit in front of a heartbeat in
//! the same task queue; the operating system shares the cores between the
//! threads instead.
//!
//! # Invariants
//!
//! - Every task spawned through [`RaftRuntime::handle`] runs on the Raft
//!   thread, and only while the runtime is alive: [`RaftRuntime::stop`] (or
//!   dropping the value) ends the thread and drops what is left, which is
//!   how openraft's storage handles are released after a shutdown.
//! - Stopping is bounded: the runtime gets [`SHUTDOWN_DEADLINE`] for its
//!   blocking tasks (an fsync on a slow disk), and [`RaftRuntime::stop`]
//!   waits at most a second longer than that for the thread.
//! - Nothing on the Raft thread takes the coordinator's locks: the worker
//!   service's handlers run on the node's runtime (`worker::service`), so
//!   merging a large statistics report cannot hold up a heartbeat. The
//!   worker messages themselves are still received and decoded on the Raft
//!   thread (a statistics chunk or a queue page is at most about 1 MiB).
//!
//! # Deliberately not done
//!
//! - The Raft thread still does openraft's own storage work: sled calls
//!   (fsyncs go to the blocking pool), the applied state written on each
//!   apply, snapshots built and installed. The replicated state is small
//!   (members, shard table, settings); how long these take on the thread is
//!   not measured.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long the Raft thread's runtime waits for its blocking tasks when it
/// stops, and how long [`RaftRuntime::stop`] waits for the thread.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// The Raft thread and its runtime.
#[derive(Debug)]
pub struct RaftRuntime {
    /// Spawns onto the Raft thread.
    handle: Handle,
    /// Dropped (or sent) to end the thread's `block_on`.
    stop: Option<oneshot::Sender<()>>,
    /// Completed by the thread once its runtime is shut down (dropped
    /// unsent if it panicked). The thread itself is never joined: a
    /// blocking join could outlive any deadline.
    done: Option<oneshot::Receiver<()>>,
}

impl RaftRuntime {
    /// Starts the thread, named after the node so that `top -H` shows it.
    /// The runtime is built on the thread itself, so no failure here drops
    /// a runtime inside the caller's async context.
    pub fn start(node_id: u64) -> std::io::Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (finished, done) = oneshot::channel::<()>();
        let (started, handle) = std::sync::mpsc::sync_channel::<std::io::Result<Handle>>(1);
        std::thread::Builder::new()
            .name(format!("raft-{node_id}"))
            .spawn(move || {
                // Sockets and timers only: no signal or child-process
                // driver, whose bookkeeping would run at every wake-up.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                if started.send(Ok(runtime.handle().clone())).is_err() {
                    return;
                }
                // Ends on a stop or when the sender is dropped.
                let _ = runtime.block_on(stopped);
                // Drops every task still on it; a blocking task still
                // running after the deadline is left to finish on its own.
                runtime.shutdown_timeout(SHUTDOWN_DEADLINE);
                let _ = finished.send(());
            })?;
        // The thread answers as soon as its runtime is built.
        let handle = handle
            .recv()
            .map_err(|_| std::io::Error::other("the Raft thread ended before starting"))??;
        Ok(Self {
            handle,
            stop: Some(stop),
            done: Some(done),
        })
    }

    /// Spawns onto the Raft thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Ends the thread, dropping the tasks still on it, and waits for it,
    /// at most a little over [`SHUTDOWN_DEADLINE`].
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(done) = self.done.take() else {
            return;
        };
        match tokio::time::timeout(SHUTDOWN_DEADLINE + Duration::from_secs(1), done).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the Raft thread ended with a panic"),
            Err(_) => tracing::error!(
                "the Raft thread did not stop within {SHUTDOWN_DEADLINE:?}; leaving it behind"
            ),
        }
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        // The thread ends on its own once the sender is gone.
        self.stop.take();
    }
}
