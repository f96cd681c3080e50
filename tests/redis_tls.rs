//! deckhand against a Redis that speaks only TLS (`rediss://`), checked as
//! Deckard's Go client checks it: against the system's roots, which
//! `SSL_CERT_FILE` replaces.
//!
//! One test in its own binary: it sets `SSL_CERT_FILE` for its own process
//! (the in-process part), which no other test may see.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pki::Pki;
use deckhand::store::redis::RedisStore;
use deckhand::store::{now_ms, DeckardClient, QueueStore};
use deckhand::testing::{RedisServer, TlsCluster};
use futures::StreamExt;

const BIN: &str = env!("CARGO_BIN_EXE_deckhand");

/// One Redis and a Redis Cluster of three masters, both speaking only TLS.
#[test]
fn the_store_works_over_tls_and_refuses_an_unknown_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path(), "redis-ca");
    let (cert, key) = pki.issue("redis");
    let redis = RedisServer::start_tls(&cert, &key, &pki.ca()).expect("redis-server with TLS");
    let cluster = TlsCluster::start(&cert, &key, &pki.ca()).expect("Redis Cluster with TLS");
    let load_on = |url: &str, extra: &[&str], ca: Option<&std::path::Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["load", "--store", url, "--queues", "30"])
            .args(["--redis-limit", "3000", "--json"])
            .args(extra)
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        cmd.output().expect("run deckhand load")
    };
    let load = |ca: Option<&std::path::Path>| load_on(&redis.tls_url(), &[], ca);

    // The server's CA is not among the roots: refused, naming why.
    let refused = load(None);
    assert!(!refused.status.success(), "an unknown CA must be refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    // A certificate from the right CA for another name: refused too.
    let (other_cert, other_key) = pki.issue_for("elsewhere", &["other.example"]);
    let elsewhere =
        RedisServer::start_tls(&other_cert, &other_key, &pki.ca()).expect("redis-server with TLS");
    let wrong_name = load_on(&elsewhere.tls_url(), &[], Some(&pki.ca()));
    assert!(
        !wrong_name.status.success(),
        "a certificate for another name must be refused"
    );
    let stderr = String::from_utf8_lossy(&wrong_name.stderr);
    assert!(stderr.contains("not valid for name"), "{stderr}");

    // With the CA as SSL_CERT_FILE: the housekeeping script runs over TLS.
    let summary = summary_of_success(&load(Some(&pki.ca())));
    assert_eq!(summary["elements"], 3000, "{summary}");

    // On the cluster: the scripts run over TLS on every master.
    let summary = summary_of_success(&load_on(&cluster.url(), &["--cluster"], Some(&pki.ca())));
    assert_eq!(summary["elements"], 3000, "{summary}");
    let masters = summary["per_master_usec"].as_array().map_or(0, Vec::len);
    assert_eq!(masters, 3, "script time on every master: {summary}");

    // In this process too: lock events come over a TLS pub/sub connection
    // (its probe included).
    std::env::set_var("SSL_CERT_FILE", pki.ca());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let store = RedisStore::open(&redis.tls_url(), "deckard_v1")
                .await
                .expect("open");
            let mut events = store.watch_events().await.expect("events over TLS");
            store
                .add("tls::q", &[("m".to_string(), 1.0)])
                .await
                .expect("add");
            store
                .pull("tls::q", 1, now_ms(), 60_000)
                .await
                .expect("pull");
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on");
            assert_eq!(event.queue, "tls::q");

            // A cluster's events come over a TLS connection to each master
            // (its probe included): every queue's pull is announced.
            let store = RedisStore::open_with(&cluster.url(), "deckard_v1", true)
                .await
                .expect("open the cluster");
            let mut events = store.watch_events().await.expect("cluster events over TLS");
            let queues: Vec<String> = (0..30).map(|i| format!("tls::c{i}")).collect();
            for q in &queues {
                store.add(q, &[("m".to_string(), 1.0)]).await.expect("add");
                store.pull(q, 1, now_ms(), 60_000).await.expect("pull");
            }
            let mut announced = std::collections::BTreeSet::new();
            while announced.len() < queues.len() {
                let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                    .await
                    .expect("an event within 10 s")
                    .expect("the stream goes on");
                announced.insert(event.queue);
            }
        });
}

/// The JSON summary (last line of stdout) of a `deckhand load` that must
/// have succeeded.
fn summary_of_success(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).expect("json summary")
}
