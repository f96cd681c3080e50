//! Drain mode of `deckhand load`: write many already-expired locks, then
//! time how long the housekeeper takes to return them all.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::ProgressBar;

use super::{progress_bar, queue_names, LoadOptions, LoadSummary};
use crate::store::{now_ms, DeckardClient, LockKind, StoreError};

/// Drain mode: writes `expired_locks` already-expired ack locks and times
/// until no queue has any left.
pub(super) async fn drain(
    client: Arc<dyn DeckardClient>,
    opts: LoadOptions,
    show: bool,
) -> LoadSummary {
    let names = queue_names(opts.queues);
    let admin = opts.admin.clone();
    if let Some(admin) = &admin {
        if let Err(e) = set_unlock(admin, true).await {
            tracing::warn!(error = %e, "could not pause UNLOCK; the drain starts while writing");
        }
    }
    let bar = progress_bar(show);
    let (total, errors) = write_expired(&client, &names, &opts).await;
    bar.set_message(format!("{total} expired locks written; draining"));
    if let Some(admin) = &admin {
        if let Err(e) = set_unlock(admin, false).await {
            tracing::warn!(error = %e, "could not resume UNLOCK");
        }
    }
    let started = Instant::now();
    if let Some(path) = &opts.signal_file {
        if let Err(e) = std::fs::write(path, b"written\n") {
            tracing::warn!(path = %path.display(), error = %e, "could not create the signal file");
        }
    }
    let deadline = started + opts.grace.max(Duration::from_secs(300));
    wait_drained(&client, &names, &opts, deadline, &bar).await;
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    LoadSummary {
        mode: "drain",
        queues: opts.queues,
        drained: total,
        drain_s: secs,
        drain_per_s: total as f64 / secs.max(1e-9),
        errors,
        ..Default::default()
    }
}

/// Writes `opts.expired_locks` ack locks that expired a minute ago, spread
/// over `names`: add, pull into processing, ack with a 1 ms lock. Returns
/// the locks written and the queues whose writes failed.
async fn write_expired(
    client: &Arc<dyn DeckardClient>,
    names: &[String],
    opts: &LoadOptions,
) -> (u64, u64) {
    let per_queue = opts.expired_locks.div_ceil(opts.queues.max(1));
    let errors = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    futures::stream::iter(names.iter().enumerate())
        .for_each_concurrent(opts.concurrency, |(qi, q)| {
            let client = client.clone();
            let (errors, written) = (&errors, &written);
            async move {
                let n = per_queue.min(opts.expired_locks.saturating_sub(qi * per_queue));
                let items: Vec<(String, f64)> =
                    (0..n).map(|i| (format!("e{i}"), i as f64)).collect();
                let then = now_ms() - 60_000;
                let result = async {
                    client.add(q, &items).await?;
                    let ids = client.pull(q, n, then, 3_600_000).await?;
                    for id in &ids {
                        client.release(q, LockKind::Ack, id, then, 1, None).await?;
                    }
                    Ok::<usize, StoreError>(ids.len())
                }
                .await;
                match result {
                    Ok(n) => {
                        written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    (written.into_inner(), errors.into_inner())
}

/// Waits until no queue of `names` has anything pending, or `deadline`.
///
/// In drain mode nothing refills a lock set, so a queue seen empty once
/// is done for good. While a sample of queues still has locks, only the
/// sample is checked (checking all 10,000 every round would load the
/// Redis being measured); once a whole sample is empty, every remaining
/// queue is checked, round after round, until none is left.
async fn wait_drained(
    client: &Arc<dyn DeckardClient>,
    names: &[String],
    opts: &LoadOptions,
    deadline: Instant,
    bar: &ProgressBar,
) {
    const SAMPLE: usize = 64;
    let mut left_queues: Vec<&String> = names.iter().collect();
    let mut cursor = 0usize;
    loop {
        let sample: Vec<&String> = if left_queues.len() <= SAMPLE {
            left_queues.clone()
        } else {
            (0..SAMPLE)
                .map(|i| left_queues[(cursor + i) % left_queues.len()])
                .collect()
        };
        cursor = cursor.wrapping_add(SAMPLE);
        let sampled = sample.len();
        let mut done = empty_queues(client, sample.into_iter().cloned().collect(), opts).await;
        let settling = done.len() == sampled;
        if settling && left_queues.len() > sampled {
            let all = left_queues.iter().map(|q| (*q).clone()).collect();
            done = empty_queues(client, all, opts).await;
        }
        left_queues.retain(|q| !done.contains(*q));
        bar.set_message(format!("draining: {} queues left", left_queues.len()));
        bar.tick();
        if left_queues.is_empty() || Instant::now() >= deadline {
            break;
        }
        if !settling {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Which queues of `batch` have nothing pending (a failed read counts as not empty).
async fn empty_queues(
    client: &Arc<dyn DeckardClient>,
    batch: Vec<String>,
    opts: &LoadOptions,
) -> HashSet<String> {
    futures::stream::iter(batch)
        .map(|q| {
            let client = client.clone();
            async move {
                let empty = client.pending(&q).await.is_ok_and(|n| n == 0);
                (q, empty)
            }
        })
        .buffer_unordered(opts.concurrency)
        .filter_map(|(q, empty)| async move { empty.then_some(q) })
        .collect::<HashSet<String>>()
        .await
}

/// Pauses (or resumes) UNLOCK through a node's admin API.
async fn set_unlock(admin: &str, paused: bool) -> Result<(), String> {
    use crate::proto::admin::admin_client::AdminClient;
    use crate::proto::admin::TaskRequest;
    let mut client = AdminClient::connect(format!("http://{admin}"))
        .await
        .map_err(|e| e.to_string())?;
    let request = TaskRequest {
        task: "UNLOCK".into(),
    };
    let result = if paused {
        client.pause_task(request).await
    } else {
        client.resume_task(request).await
    };
    result.map(|_| ()).map_err(|s| s.message().to_string())
}
