//! Leader-only queue gauges under leadership changes, and the metric names
//! against the list in the docs.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{samples, try_http_get, wait_until, TestCluster};
use deckhand::raft::NodeId;
use deckhand::store::{DeckardClient, LockKind};

const QUEUES: usize = 30;
const MESSAGES_PER_QUEUE: usize = 5;
const ACTIVE_GAUGE: &str = "deckhand_queue_active_messages";
/// How long after a transfer, crash or restart the test treats the cluster
/// as failing over (test Raft timing: elections take 1-2 s).
const STEADY_AFTER: Duration = Duration::from_secs(3);

/// One scrape round: which nodes answered with queue gauges, and their sum.
#[derive(Debug, Clone)]
struct Round {
    at: Duration,
    with_gauges: Vec<NodeId>,
    leaders: f64,
    answered: usize,
    /// Queues covered by the gauges of the node that has them.
    queues_covered: f64,
}

/// Scrapes every node every 50 ms, all nodes of a round at once.
async fn scrape_rounds(
    addrs: BTreeMap<NodeId, std::net::SocketAddr>,
    rounds: Arc<Mutex<Vec<Round>>>,
    start: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let at = start.elapsed();
        let scrapes = addrs
            .iter()
            .map(|(id, addr)| async move { (*id, try_http_get(*addr, "/metrics").await) });
        let results = futures::future::join_all(scrapes).await;
        let mut round = Round {
            at,
            with_gauges: Vec::new(),
            leaders: 0.0,
            answered: 0,
            queues_covered: 0.0,
        };
        for (id, body) in results {
            let Some(body) = body else { continue };
            round.answered += 1;
            round.leaders += samples(&body, "deckhand_node_is_leader")
                .iter()
                .map(|(_, v)| v)
                .sum::<f64>();
            if body.contains(&format!("{ACTIVE_GAUGE}{{")) {
                round.with_gauges.push(id);
                round.queues_covered = samples(&body, "deckhand_queues_reported")
                    .iter()
                    .map(|(_, v)| v)
                    .sum();
            }
        }
        rounds.lock().expect("rounds").push(round);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return,
        }
    }
}

fn rounds_since(rounds: &Mutex<Vec<Round>>, from: Duration) -> Vec<Round> {
    rounds
        .lock()
        .expect("rounds")
        .iter()
        .filter(|r| r.at >= from)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_gauges_come_from_one_node_only_through_transfers_and_crashes() {
    let mut cluster = TestCluster::start(3).await;
    let queues = cluster.add_queues(QUEUES);
    for q in &queues {
        let items: Vec<(String, f64)> = (0..MESSAGES_PER_QUEUE)
            .map(|i| (format!("{q}-m{i}"), i as f64))
            .collect();
        cluster.store.add(q, &items).await.expect("add messages");
    }
    cluster.wait_for_balanced_ownership().await;

    let addrs: BTreeMap<NodeId, std::net::SocketAddr> = cluster
        .nodes
        .iter()
        .map(|(id, n)| (*id, n.metrics_addr()))
        .collect();
    let rounds = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scraper = tokio::spawn(scrape_rounds(addrs, rounds.clone(), start, stop_rx));

    // The steady state first: the leader serves every queue, with the right sizes.
    let leader = cluster.wait_for_leader().await;
    let body = wait_until("the leader serves gauges for every queue", || async {
        let body = try_http_get(cluster.nodes[&leader].metrics_addr(), "/metrics").await?;
        let covered: f64 = samples(&body, "deckhand_queues_reported")
            .iter()
            .map(|(_, v)| v)
            .sum();
        (covered == QUEUES as f64).then_some(body)
    })
    .await;
    let steady_from = start.elapsed();
    let active: f64 = samples(&body, ACTIVE_GAUGE).iter().map(|(_, v)| v).sum();
    // add_queues seeds each queue with one message (a queue without any does not exist).
    assert_eq!(active, (QUEUES * (MESSAGES_PER_QUEUE + 1)) as f64);

    let mut comebacks = Vec::new();
    // Instants at which leadership may change (transfer, crash, restart).
    let mut events = Vec::new();
    for i in 0..10 {
        let leader = cluster.wait_for_leader().await;
        let followers = cluster.followers_of(leader);
        // A transfer first, then a crash of whoever leads after it.
        let to = followers[i % followers.len()];
        let trigger = cluster.nodes[&leader].raft.clone();
        events.push(start.elapsed());
        let _ = common::within("transfer leadership", trigger.trigger().transfer_leader(to)).await;
        let leader = wait_until("a leader after the transfer", || async {
            cluster.agreed_leader()
        })
        .await;
        let killed_at = start.elapsed();
        events.push(killed_at);
        cluster.crash(leader).await;
        // Gauges come back, from the new leader, once it leads.
        wait_until("queue gauges come back after the crash", || async {
            let new_leader = cluster.agreed_leader()?;
            rounds_since(&rounds, killed_at)
                .iter()
                .any(|r| r.with_gauges == vec![new_leader])
                .then_some(())
        })
        .await;
        let back = rounds_since(&rounds, killed_at)
            .into_iter()
            .find(|r| !r.with_gauges.is_empty())
            .expect("a round with gauges");
        comebacks.push(back.at - killed_at);
        events.push(start.elapsed());
        cluster.restart(leader).await;
        // Coverage returns to every queue once shards are owned again.
        let restarted_at = start.elapsed();
        wait_until("gauges cover every queue again", || async {
            rounds_since(&rounds, restarted_at)
                .iter()
                .any(|r| r.answered == 3 && r.queues_covered == QUEUES as f64)
                .then_some(())
        })
        .await;
        if i % 3 == 0 {
            // Observe a steady stretch past the failover window too.
            wait_until("scrape rounds past the failover window", || async {
                rounds_since(
                    &rounds,
                    restarted_at + STEADY_AFTER + Duration::from_millis(500),
                )
                .iter()
                .any(|r| r.answered == 3)
                .then_some(())
            })
            .await;
        }
    }
    let _ = stop_tx.send(true);
    scraper.await.expect("scraper");

    let rounds = rounds.lock().expect("rounds").clone();
    assert!(
        rounds.len() > 100,
        "too few scrape rounds: {}",
        rounds.len()
    );
    for r in &rounds {
        assert!(
            r.with_gauges.len() <= 1,
            "two nodes served queue gauges in one scrape round: {r:?}"
        );
    }
    // Outside the failover windows (3 s after a transfer, crash or restart),
    // with every node answering, exactly one node says it leads.
    let window = STEADY_AFTER;
    let steady: Vec<&Round> = rounds
        .iter()
        .filter(|r| r.answered == 3 && r.at >= steady_from)
        .filter(|r| !events.iter().any(|e| r.at >= *e && r.at < *e + window))
        .collect();
    assert!(!steady.is_empty(), "no steady rounds to check");
    for r in &steady {
        assert_eq!(
            r.leaders, 1.0,
            "not one leader outside a failover window: {r:?}"
        );
        assert_eq!(
            r.with_gauges.len(),
            1,
            "no queue gauges outside a failover window: {r:?}"
        );
    }
    eprintln!("queue gauges back after a leader crash: {comebacks:?}");
    cluster.shutdown().await;
}

/// Every metric a node exports is in the list in `docs/metrics.md`, and
/// every name there is exported, with Prometheus's naming rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_metric_names_match_the_documented_list() {
    let cluster = TestCluster::start(1).await;
    let queues = cluster.add_queues(3);
    // One message times out, one is ack-locked and unlocked, one nack-locked:
    // every labelled counter gets a series.
    let store = &cluster.store;
    let q = &queues[0];
    let items: Vec<(String, f64)> = (0..3).map(|i| (format!("m{i}"), i as f64)).collect();
    store.add(q, &items).await.expect("add");
    let now = deckhand::store::now_ms();
    let pulled = store.pull(q, 3, now, 1).await.expect("pull");
    assert_eq!(pulled.len(), 3);
    store
        .release(q, LockKind::Ack, "m1", now, 1, None)
        .await
        .expect("ack");
    store
        .release(q, LockKind::Nack, "m2", now, 1, None)
        .await
        .expect("nack");
    let leader = cluster.wait_for_leader().await;
    let addr = cluster.nodes[&leader].metrics_addr();
    let body = wait_until("the node serves queue gauges and every counter", || async {
        let body = try_http_get(addr, "/metrics").await?;
        let complete = body.contains(&format!("{ACTIVE_GAUGE}{{"))
            && body.contains("deckard_message_timeout_total{")
            && body.contains("deckard_message_unlock_total{")
            && body.contains("deckhand_task_elements_total{");
        complete.then_some(body)
    })
    .await;
    let exported = exported_families(&body);
    let mut documented = documented_metrics();
    // Exported only on a Redis Cluster (tests/redis_cluster.rs scrapes it);
    // this cluster runs on the embedded store.
    for name in ONLY_ON_A_REDIS_CLUSTER {
        assert!(documented.remove(*name).is_some(), "{name} is documented");
        assert!(
            !exported.contains_key(*name),
            "{name} without a Redis Cluster"
        );
    }
    assert_eq!(
        exported.keys().cloned().collect::<Vec<_>>(),
        documented.keys().cloned().collect::<Vec<_>>(),
        "exported metric names differ from docs/metrics.md"
    );
    for (name, kind) in &exported {
        assert_eq!(
            documented.get(name),
            Some(kind),
            "{name}: type differs from docs"
        );
        check_name(name, kind);
    }
    promtool_check(&body);
    cluster.shutdown().await;
}

/// `promtool check metrics` on the exposition, when promtool is installed
/// (scripts/test.sh installs Debian's prometheus package, which has it).
fn promtool_check(body: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed: checked by the parser above only");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `# TYPE` lines of an exposition: family name -> type.
fn exported_families(body: &str) -> BTreeMap<String, String> {
    let mut families = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.insert(name.to_string(), kind.to_string());
        }
    }
    // Every sample belongs to a declared family.
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().expect("a sample name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains_key(*f)))
            .unwrap_or(name);
        assert!(
            families.contains_key(family),
            "sample {name} has no # TYPE line"
        );
    }
    families
}

/// Documented metrics a node exports only on a Redis Cluster.
const ONLY_ON_A_REDIS_CLUSTER: &[&str] = &["deckhand_redis_master_calls_total"];

/// Rows of the metrics table in `docs/metrics.md`: `| `name` | type | ...`.
fn documented_metrics() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md");
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.get(2)?;
            Some((name.to_string(), kind.to_string()))
        })
        .collect()
}

/// Prometheus naming: `[a-zA-Z_:][a-zA-Z0-9_:]*`, counters end in `_total`,
/// no unit other than base units in our own names.
fn check_name(name: &str, kind: &str) {
    let mut chars = name.chars();
    let first = chars.next().expect("non-empty name");
    assert!(first.is_ascii_alphabetic() || first == '_', "{name}");
    assert!(
        chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "{name}"
    );
    if kind == "counter" {
        assert!(
            name.ends_with("_total"),
            "counter {name} must end in _total"
        );
    }
    if name.starts_with("deckhand_") {
        for bad in ["_ms", "_milliseconds", "_minutes", "_bytes_total_"] {
            assert!(!name.contains(bad), "{name}: use base units");
        }
    }
}

/// The Grafana dashboard is valid JSON and uses only documented metrics.
#[test]
fn the_grafana_dashboard_uses_documented_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/deckhand-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let documented = documented_metrics();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5);
    let mut used = std::collections::BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if token.starts_with("deckhand_") || token.starts_with("deckard_") {
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| token.strip_suffix(s))
                        .unwrap_or(token);
                    assert!(
                        documented.contains_key(family),
                        "panel {:?} uses undocumented metric {token}",
                        panel["title"]
                    );
                    used.insert(family.to_string());
                }
            }
        }
    }
    for needed in [
        "deckhand_node_is_leader",
        "deckhand_unlock_lateness_seconds",
        "deckhand_task_elements_total",
        "deckhand_fenced_writes_total",
        "deckhand_queue_active_messages",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}
