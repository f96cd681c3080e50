use std::path::Path;
use std::time::Duration;

use super::*;

const GOOD: &str = r#"
node_id = 2
data_dir = "data/node2"
raft_addr = "127.0.0.1:7102"
admin_addr = "127.0.0.1:7202"
metrics_addr = "127.0.0.1:9102"

[cluster]
[[cluster.members]]
id = 1
raft_addr = "127.0.0.1:7101"
admin_addr = "127.0.0.1:7201"
[[cluster.members]]
id = 2
raft_addr = "127.0.0.1:7102"
admin_addr = "127.0.0.1:7202"

[store]
url = "memory://"
"#;

fn parse_text(text: &str) -> Result<NodeConfig, ConfigError> {
    parse(Path::new("node.toml"), text, Vec::new())
}

fn error_line(text: &str) -> String {
    let e = parse_text(text).expect_err("config should be rejected");
    let line = e.to_string();
    assert!(!line.contains('\n'), "error is not one line: {line}");
    assert!(
        line.starts_with("node.toml: "),
        "error does not name the file: {line}"
    );
    line
}

#[test]
fn defaults_fill_optional_keys() {
    let c = parse_text(GOOD).expect("valid config");
    assert_eq!(c.node_id, 2);
    assert_eq!(c.cluster.name, "deckhand");
    assert_eq!(c.cluster.shards, 128);
    assert_eq!(c.raft.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(c.raft.election_timeout_min, Duration::from_millis(300));
    assert_eq!(c.raft.election_timeout_max, Duration::from_millis(450));
    assert_eq!(c.worker.heartbeat_interval, Duration::from_millis(300));
    assert_eq!(c.worker.lease, Duration::from_millis(1500));
    assert_eq!(c.worker.lease_margin, Duration::from_millis(400));
    // A deposed leader renews leases for up to its freshness
    // (election_timeout_min) after its successor's election; the defaults
    // keep clock-rate slack above that (cluster::lease).
    assert!(c.worker.lease_margin > c.raft.election_timeout_min);
    assert_eq!(c.store.key_prefix, "deckard_v1");
    assert_eq!(
        c.self_member().map(|m| m.raft_addr.as_str()),
        Some("127.0.0.1:7102")
    );
}

#[test]
fn env_overrides_keys() {
    let env = vec![
        (
            "DECKHAND_STORE_URL".to_string(),
            "redis://127.0.0.1:6379/0".to_string(),
        ),
        ("DECKHAND_CLUSTER_SHARDS".to_string(), "64".to_string()),
        (
            "DECKHAND_RAFT_HEARTBEAT_INTERVAL".to_string(),
            "20ms".to_string(),
        ),
        (
            "DECKHAND_ADDR".to_string(),
            "ignored: the ctl address".to_string(),
        ),
    ];
    let c = parse(Path::new("node.toml"), GOOD, env).expect("valid config");
    assert_eq!(c.store.url, "redis://127.0.0.1:6379/0");
    assert_eq!(c.cluster.shards, 64);
    assert_eq!(c.raft.heartbeat_interval, Duration::from_millis(20));
}

#[test]
fn env_integer_that_does_not_parse_names_the_variable() {
    let env = vec![("DECKHAND_NODE_ID".to_string(), "two".to_string())];
    let e = parse(Path::new("node.toml"), GOOD, env).expect_err("rejected");
    let line = e.to_string();
    assert!(
        line.contains("DECKHAND_NODE_ID") && line.contains("node_id"),
        "{line}"
    );
}

#[test]
fn key_prefix_is_trimmed() {
    let text = GOOD.replace(
        "url = \"memory://\"",
        "url = \"memory://\"\nkey_prefix = \" deckard_v2: \"",
    );
    assert_eq!(
        parse_text(&text).expect("valid").store.key_prefix,
        "deckard_v2"
    );
}

#[test]
fn syntax_error_names_line() {
    let line = error_line("node_id = \n");
    assert!(line.contains("line 1"), "{line}");
}

#[test]
fn unknown_key_is_named() {
    let text = GOOD.replace("[store]", "[store]\nurll = \"x\"");
    let line = error_line(&text);
    assert!(line.contains("urll"), "{line}");
}

#[test]
fn wrong_type_names_key() {
    let text = GOOD.replace("node_id = 2", "node_id = \"two\"");
    let line = error_line(&text);
    assert!(line.contains("key `node_id`"), "{line}");
}

#[test]
fn bad_duration_names_key() {
    let text = format!("{GOOD}\n[raft]\nheartbeat_interval = \"fast\"\n");
    let line = error_line(&text);
    assert!(line.contains("raft.heartbeat_interval"), "{line}");
}

#[test]
fn duplicate_member_ids_are_rejected() {
    let text = GOOD.replace("id = 2\nraft_addr", "id = 1\nraft_addr");
    let line = error_line(&text);
    assert!(
        line.contains("cluster.members[1].id") && line.contains("duplicate"),
        "{line}"
    );
}

#[test]
fn node_id_must_be_a_member() {
    let text = GOOD.replace("node_id = 2", "node_id = 7");
    let line = error_line(&text);
    assert!(
        line.contains("key `node_id`") && line.contains("not among"),
        "{line}"
    );
}

#[test]
fn missing_required_key_is_named() {
    let text = GOOD.replace("metrics_addr = \"127.0.0.1:9102\"", "");
    let line = error_line(&text);
    assert!(line.contains("metrics_addr"), "{line}");
}

#[test]
fn election_timeouts_must_be_ordered() {
    let text = format!(
        "{GOOD}\n[raft]\nelection_timeout_min = \"300ms\"\nelection_timeout_max = \"200ms\"\n"
    );
    let line = error_line(&text);
    assert!(line.contains("raft.election_timeout_max"), "{line}");
}

#[test]
fn store_scheme_is_checked() {
    let text = GOOD.replace("memory://", "postgres://x");
    let line = error_line(&text);
    assert!(
        line.contains("store.url") && line.contains("unknown scheme"),
        "{line}"
    );
}

#[test]
fn a_deckard_cluster_url_needs_the_cluster_switch() {
    let url = "redis://n1:7000?addr=n2:7001&addr=n3:7002";
    let text = GOOD.replace("memory://", url);
    let line = error_line(&text);
    assert!(
        line.contains("store.url") && line.contains("store.cluster"),
        "{line}"
    );
    let env = vec![("DECKHAND_STORE_CLUSTER".to_string(), "true".to_string())];
    let c = parse(Path::new("node.toml"), &text, env).expect("valid with the switch");
    assert!(c.store.cluster);
    assert_eq!(c.store.url, url);
    let env = vec![("DECKHAND_STORE_CLUSTER".to_string(), "maybe".to_string())];
    let e = parse(Path::new("node.toml"), &text, env).expect_err("not a boolean");
    let line = e.to_string();
    assert!(
        line.contains("DECKHAND_STORE_CLUSTER") && line.contains("true or false"),
        "{line}"
    );
    let text = GOOD.replace(
        "url = \"memory://\"",
        "url = \"redis://n1:7000/2\"\ncluster = true",
    );
    let line = error_line(&text);
    assert!(line.contains("no database number"), "{line}");
}

#[test]
fn address_without_port_is_rejected() {
    let text = GOOD.replace(
        "admin_addr = \"127.0.0.1:7202\"\nmetrics",
        "admin_addr = \"127.0.0.1\"\nmetrics",
    );
    let line = error_line(&text);
    assert!(line.contains("key `admin_addr`"), "{line}");
}

#[test]
fn missing_file_is_named() {
    let e =
        load_with_env(Path::new("/nonexistent/deckhand.toml"), Vec::new()).expect_err("missing");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/deckhand.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn memory_store_url_options_are_checked() {
    let ok = GOOD.replace("memory://", "memory://?queues=500");
    assert_eq!(
        parse_text(&ok).expect("valid").store.url,
        "memory://?queues=500"
    );
    let bad = GOOD.replace("memory://", "memory://?queues=lots");
    let line = error_line(&bad);
    assert!(
        line.contains("store.url") && line.contains("queues must be a number"),
        "{line}"
    );
}

#[test]
fn raft_timings_are_whole_milliseconds() {
    // openraft counts in milliseconds: 50.5 ms would silently become 50.
    let text = format!("{GOOD}\n[raft]\nheartbeat_interval = \"50ms 500us\"\n");
    let line = error_line(&text);
    assert!(
        line.contains("raft.heartbeat_interval") && line.contains("whole number of milliseconds"),
        "{line}"
    );
}
