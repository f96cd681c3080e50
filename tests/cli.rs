//! The real `deckhand` binary: scripts/cluster.sh, `ctl`, signals, bad input.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_deckhand");

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port: bound on port 0, read back, released for a child
/// process to bind.
fn free_port() -> u16 {
    deckhand::testing::free_port().expect("a free loopback port")
}

#[derive(Clone, Copy)]
struct Ports {
    raft: u16,
    admin: u16,
    metrics: u16,
}

/// Writes node configs for `n` nodes with free ports and absolute data dirs.
fn write_configs(dir: &Path, n: u64) -> Vec<Ports> {
    let ports: Vec<Ports> = (0..n)
        .map(|_| Ports {
            raft: free_port(),
            admin: free_port(),
            metrics: free_port(),
        })
        .collect();
    let members = members_toml(&ports);
    let tuning = common::test_raft_tuning();
    for (i, p) in ports.iter().enumerate() {
        let id = i + 1;
        let text = format!(
            "node_id = {id}\ndata_dir = \"{data}\"\nraft_addr = \"127.0.0.1:{}\"\nadmin_addr = \"127.0.0.1:{}\"\nmetrics_addr = \"127.0.0.1:{}\"\n\n[cluster]\nname = \"cli-test\"\n{members}\n[raft]\nheartbeat_interval = \"{}ms\"\nelection_timeout_min = \"{}ms\"\nelection_timeout_max = \"{}ms\"\n\n[store]\nurl = \"memory://\"\n",
            p.raft,
            p.admin,
            p.metrics,
            tuning.heartbeat_interval.as_millis(),
            tuning.election_timeout_min.as_millis(),
            tuning.election_timeout_max.as_millis(),
            data = dir.join(format!("data/node{id}")).display(),
        );
        std::fs::write(dir.join(format!("node{id}.toml")), text).expect("write config");
    }
    ports
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

/// Runs the binary with `args`, its stdout a pipe whose reader is gone
/// (`deckhand ... | head -0`), and checks what every command must do then:
/// no panic and a non-zero exit. Returns its stderr.
fn run_into_closed_pipe(args: &[&str]) -> String {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .output()
        .expect("run command");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(!out.status.success(), "{args:?} reported success: {stderr}");
    stderr
}

fn ctl_status(admin: u16) -> Output {
    run(Command::new(BIN).args([
        "ctl",
        "--addr",
        &format!("127.0.0.1:{admin}"),
        "status",
        "--json",
    ]))
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "ctl printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// stderr as text, asserting it is exactly one line.
fn one_error_line(output: &Output) -> String {
    assert!(!output.status.success(), "command should fail");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one error line, got: {stderr}"
    );
    stderr
}

/// Configs for `n` nodes under `dir/cfg`, and a builder of
/// `scripts/cluster.sh ACTION` commands for them.
fn script_cluster(dir: &Path, n: u64) -> (Vec<Ports>, impl Fn(&str) -> Command) {
    let config_dir = dir.join("cfg");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    let ports = write_configs(&config_dir, n);
    let script = repo_root().join("scripts/cluster.sh");
    let run_dir = dir.join("run");
    let script_cmd = move |action: &str| {
        let mut cmd = Command::new(&script);
        cmd.arg(action)
            .arg(&config_dir)
            .env("DECKHAND_BIN", BIN)
            .env("DECKHAND_RUN_DIR", &run_dir)
            .env("START_TIMEOUT", "60");
        cmd
    };
    (ports, script_cmd)
}

/// `[[cluster.members]]` entries for nodes 1.. on `ports`.
fn members_toml(ports: &[Ports]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "[[cluster.members]]\nid = {}\nraft_addr = \"127.0.0.1:{}\"\nadmin_addr = \"127.0.0.1:{}\"\n",
                i + 1,
                p.raft,
                p.admin
            )
        })
        .collect()
}

#[test]
fn cluster_script_starts_reports_and_stops_three_nodes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ports, script_cmd) = script_cluster(tmp.path(), 3);

    let started = run(&mut script_cmd("start"));
    assert!(
        started.status.success(),
        "cluster.sh start failed: {}{}",
        String::from_utf8_lossy(&started.stdout),
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(String::from_utf8_lossy(&started.stdout).contains("is up: leader is node"));

    // Every node reports the same leader and all three members.
    let leader = common_leader(&ports);
    let status = json(&ctl_status(ports[1].admin));
    let members = status["members"].as_array().expect("members list");
    assert_eq!(members.len(), 3);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["id"], i as u64 + 1);
        assert_eq!(m["voter"], true);
        assert_eq!(m["admin_addr"], format!("127.0.0.1:{}", ports[i].admin));
    }
    assert_eq!(status["leader_id"], leader);
    for key in ["term", "commit_index", "applied_index"] {
        assert!(status[key].is_u64(), "{key} missing: {status}");
    }

    // A reader that is gone (`ctl status | head -0`): no panic, one line
    // naming the cause at most, and a non-zero exit.
    let addr = format!("127.0.0.1:{}", ports[0].admin);
    let stderr = run_into_closed_pipe(&["ctl", "--addr", &addr, "status"]);
    assert!(stderr.lines().count() <= 1, "{stderr}");

    // Shards through any node's admin API; bad drains get one clear line.
    let ctl = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["ctl", "--addr", &format!("127.0.0.1:{}", ports[1].admin)])
            .args(args);
        run(&mut cmd)
    };
    let shards = wait_for(|| {
        let out = ctl(&["shards", "--json"]);
        if !out.status.success() {
            return None;
        }
        let table = json(&out);
        let rows = table.as_array()?.clone();
        rows.iter().all(|r| r["owner"].is_u64()).then_some(rows)
    });
    assert_eq!(shards.len(), 128);
    assert!(
        shards.iter().all(|r| r["owner"] != leader),
        "the leader owns no shard"
    );
    for key in ["shard", "epoch", "lease", "queues"] {
        assert!(!shards[0][key].is_null(), "{key} missing: {}", shards[0]);
    }
    let out = ctl(&["drain", "9"]);
    let line = one_error_line(&out);
    assert!(line.contains("node 9 is not a member"), "{line}");
    let out = ctl(&["rebalance"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Tasks: listed, paused and resumed through any node; a bad name is one line.
    let tasks = json(&ctl(&["tasks", "--json"]));
    let names: Vec<&str> = tasks
        .as_array()
        .expect("task list")
        .iter()
        .filter_map(|t| t["task"].as_str())
        .collect();
    assert_eq!(names, vec!["UNLOCK", "TIMEOUT"]);
    let paused = json(&ctl(&["pause", "unlock", "--json"]));
    assert_eq!(paused["enabled"], false);
    let tasks = json(&ctl(&["tasks", "--json"]));
    assert_eq!(tasks[0]["enabled"], false);
    let resumed = json(&ctl(&["resume", "UNLOCK", "--json"]));
    assert_eq!(resumed["enabled"], true);
    let out = ctl(&["pause", "expire"]);
    let line = one_error_line(&out);
    assert!(line.contains("unknown task \"expire\""), "{line}");

    // kill -9 the leader process: the survivors agree on a new leader.
    let pid_of = |id: u64| {
        std::fs::read_to_string(tmp.path().join(format!("run/node{id}.pid")))
            .expect("pid file")
            .trim()
            .to_string()
    };
    let killed = run(Command::new("kill").args(["-KILL", &pid_of(leader)]));
    assert!(killed.status.success());
    let survivors: Vec<Ports> = ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, p)| *p)
        .collect();
    // Until their election timeout fires the survivors still name the dead
    // leader; wait for them to agree on another one.
    let new_leader = common_leader_except(&survivors, Some(leader));

    // `start` again brings the killed node back from its data dir; it follows.
    let restarted = run(&mut script_cmd("start"));
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    assert_eq!(common_leader(&ports), new_leader);

    let pids: Vec<String> = (1..=3)
        .map(|i| {
            std::fs::read_to_string(tmp.path().join(format!("run/node{i}.pid"))).expect("pid file")
        })
        .collect();
    let stopped = run(&mut script_cmd("stop"));
    assert!(stopped.status.success());
    for pid in pids {
        let alive = Path::new(&format!("/proc/{}", pid.trim())).exists();
        assert!(!alive, "node pid {pid} still running after stop");
    }
    // Graceful stops log an orderly shutdown.
    let log = std::fs::read_to_string(tmp.path().join("run/node1.log")).expect("log");
    assert!(log.contains("node stopped"), "{log}");
}

/// Polls `check` every 100 ms until it returns `Some`, or panics at the deadline.
fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "condition not met in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until all nodes answer `status` with one common leader id.
fn common_leader(ports: &[Ports]) -> u64 {
    common_leader_except(ports, None)
}

/// Waits until all nodes agree on one leader other than `excluded`.
fn common_leader_except(ports: &[Ports], excluded: Option<u64>) -> u64 {
    let start = Instant::now();
    loop {
        let leaders: Vec<Option<u64>> = ports
            .iter()
            .map(|p| {
                let out = ctl_status(p.admin);
                out.status
                    .success()
                    .then(|| json(&out)["leader_id"].as_u64())
                    .flatten()
            })
            .collect();
        if let Some(Some(first)) = leaders.first() {
            if Some(*first) != excluded && leaders.iter().all(|l| *l == Some(*first)) {
                return *first;
            }
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "nodes never agreed on a leader: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn single_node_exits_zero_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ports = write_configs(tmp.path(), 1);
    let mut child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(tmp.path().join("node1.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node");
    // A one-node cluster initializes itself and leads.
    assert_eq!(common_leader(&ports), 1);
    let killed = run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(killed.status.success());
    let status = child.wait().expect("wait for node");
    assert!(status.success(), "node exited with {status}");
    assert!(tmp.path().join("data/node1/deckhand-node.json").exists());
}

#[test]
fn bad_config_files_fail_with_one_line_naming_file_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_configs(tmp.path(), 2);
    let good = std::fs::read_to_string(tmp.path().join("node1.toml")).expect("read");
    let cases = [
        ("missing.toml", None, "cannot read config file"),
        (
            "syntax.toml",
            Some("node_id = = 1\n".to_string()),
            "not valid TOML at line 1",
        ),
        (
            "unknown.toml",
            Some(good.replace("[store]", "[store]\nurll = \"x\"")),
            "urll",
        ),
        (
            "dup.toml",
            Some(good.replace("id = 2\nraft_addr", "id = 1\nraft_addr")),
            "duplicate node id 1",
        ),
        (
            "notmember.toml",
            Some(good.replace("node_id = 1", "node_id = 9")),
            "key `node_id`",
        ),
    ];
    for (name, text, expected) in cases {
        let path = tmp.path().join(name);
        if let Some(text) = text {
            std::fs::write(&path, text).expect("write");
        }
        let out = run(Command::new(BIN).arg("node").arg("--config").arg(&path));
        let line = one_error_line(&out);
        assert!(
            line.contains(&path.display().to_string()),
            "{name}: no file in: {line}"
        );
        assert!(
            line.contains(expected),
            "{name}: expected {expected:?} in: {line}"
        );
    }
    assert!(
        !tmp.path().join("data").exists(),
        "a rejected config touched no data"
    );
}

#[test]
fn port_in_use_and_foreign_data_dir_fail_without_touching_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ports = write_configs(tmp.path(), 2);
    let config = tmp.path().join("node1.toml");

    // Someone else holds node 1's admin port.
    let holder = TcpListener::bind(("127.0.0.1", ports[0].admin)).expect("hold port");
    let out = run(Command::new(BIN).arg("node").arg("--config").arg(&config));
    let line = one_error_line(&out);
    assert!(
        line.contains("key `admin_addr`") && line.contains("cannot bind"),
        "{line}"
    );
    assert!(!tmp.path().join("data/node1").exists());
    drop(holder);

    // Node 1's data dir, claimed by node 2's identity.
    std::fs::create_dir_all(tmp.path().join("data/node1")).expect("mkdir");
    let identity = tmp.path().join("data/node1/deckhand-node.json");
    std::fs::write(&identity, r#"{"node_id":2,"cluster_name":"cli-test"}"#).expect("write");
    let out = run(Command::new(BIN).arg("node").arg("--config").arg(&config));
    let line = one_error_line(&out);
    assert!(
        line.contains("key `data_dir`") && line.contains("belongs to node 2"),
        "{line}"
    );
    let entries: Vec<_> = std::fs::read_dir(tmp.path().join("data/node1"))
        .expect("ls")
        .collect();
    assert_eq!(entries.len(), 1, "only the identity file is there");
}

#[test]
fn ctl_against_nothing_fails_with_one_line() {
    let port = free_port();
    let out =
        run(Command::new(BIN).args(["ctl", "--addr", &format!("127.0.0.1:{port}"), "status"]));
    let line = one_error_line(&out);
    assert!(
        line.contains("cannot reach") && line.contains(&port.to_string()),
        "{line}"
    );

    let out = run(Command::new(BIN).args(["ctl", "--addr", "not an address", "members"]));
    let line = one_error_line(&out);
    assert!(line.contains("not a valid admin address"), "{line}");
}

#[test]
fn tls_certificates_from_the_script_and_the_token_through_the_binary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    let made = run(Command::new(repo_root().join("scripts/make-certs.sh"))
        .arg(&certs)
        .args(["node1", "ctl"]));
    assert!(
        made.status.success(),
        "make-certs.sh failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ports = write_configs(tmp.path(), 1);
    let token = tmp.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let config = tmp.path().join("node1.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[security]\ntls_cert = \"{c}/node1.pem\"\ntls_key = \"{c}/node1-key.pem\"\ntls_ca = \"{c}/ca.pem\"\nadmin_token_file = \"{t}\"\n",
        c = certs.display(),
        t = token.display()
    ));
    std::fs::write(&config, text).expect("write config");
    let mut child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    let addr = format!("127.0.0.1:{}", ports[0].admin);
    let ctl = |args: &[&str], tls: bool, token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["ctl", "--addr", &addr]).args(args);
        for var in [
            "DECKHAND_CA",
            "DECKHAND_CERT",
            "DECKHAND_KEY",
            "DECKHAND_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        if tls {
            cmd.env("DECKHAND_CA", certs.join("ca.pem"))
                .env("DECKHAND_CERT", certs.join("ctl.pem"))
                .env("DECKHAND_KEY", certs.join("ctl-key.pem"));
        }
        if let Some(t) = token {
            cmd.env("DECKHAND_TOKEN", t);
        }
        run(&mut cmd)
    };
    let status = wait_for(|| {
        let out = ctl(&["status", "--json"], true, None);
        let status = out.status.success().then(|| json(&out))?;
        (status["role"] == "leader").then_some(status)
    });
    assert_eq!(status["node_id"], 1);
    // Without the client certificate: refused, one line, non-zero exit.
    let line = one_error_line(&ctl(&["status"], false, None));
    assert!(line.contains("deckhand ctl:"), "{line}");
    // A mutation without the token: UNAUTHENTICATED; with it: done.
    let line = one_error_line(&ctl(&["pause", "UNLOCK"], true, None));
    assert!(
        line.contains("Unauthenticated") || line.contains("token"),
        "{line}"
    );
    let line = one_error_line(&ctl(&["pause", "UNLOCK"], true, Some("nope")));
    assert!(line.contains("token is wrong"), "{line}");
    let out = ctl(&["pause", "UNLOCK", "--json"], true, Some("s3cret"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["enabled"], false);
    // Membership mistakes are one clear line each.
    let line = one_error_line(&ctl(
        &["add-node", "1", "127.0.0.1:1", "127.0.0.1:2"],
        true,
        Some("s3cret"),
    ));
    assert!(line.contains("already a voting member"), "{line}");
    let line = one_error_line(&ctl(&["remove-node", "1"], true, Some("s3cret")));
    assert!(
        line.contains("leader") || line.contains("last voter"),
        "{line}"
    );
    let line = one_error_line(&ctl(&["transfer-leader", "7"], true, Some("s3cret")));
    assert!(line.contains("not a member"), "{line}");

    let term = run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(term.status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "node exited with {exit}");
}

#[test]
fn demo_runs_kills_restarts_and_passes_its_consistency_check() {
    let out = run(Command::new(BIN).args([
        "demo",
        "--duration",
        "9s",
        "--queues",
        "100",
        "--rate",
        "300",
        "--json",
    ]));
    assert!(
        out.status.success(),
        "demo failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json(&out);
    assert_eq!(summary["consistency"]["ok"], true, "{summary}");
    assert_eq!(summary["consistency"]["duplicated"], 0);
    assert_eq!(summary["consistency"]["missing"], 0);
    assert!(
        summary["messages_added"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert!(
        summary["elements_moved"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    let events = summary["events"].as_array().expect("events");
    assert_eq!(events.len(), 4, "{summary}");
    assert!(events[0]["what"]
        .as_str()
        .unwrap_or("")
        .starts_with("killed leader"));
    assert!(
        events[0]["recovered_ms"].is_u64(),
        "no new leader after the kill: {summary}"
    );
    // Bad options: one line, non-zero exit.
    let out = run(Command::new(BIN).args(["demo", "--nodes", "0"]));
    let line = one_error_line(&out);
    assert!(line.contains("--nodes 0"), "{line}");
}

#[test]
fn load_into_a_closed_pipe_fails_with_one_line_instead_of_a_panic() {
    // `deckhand load ... | head -0`: the summary cannot be written. One
    // line naming the cause, a non-zero exit, no panic.
    let stderr = run_into_closed_pipe(&[
        "load",
        "--store",
        "memory://",
        "--queues",
        "2",
        "--rate",
        "20",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--grace",
        "0s",
        "--json",
    ]);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("deckhand load: cannot write the output"),
        "{stderr}"
    );
}

/// Writes a config for node `id` joining the cluster of `ports` (it lists
/// the existing members and itself, with `join = true`).
fn write_join_config(dir: &Path, id: u64, ports: &[Ports], own: Ports) -> PathBuf {
    let mut members = members_toml(ports);
    members.push_str(&format!(
        "[[cluster.members]]\nid = {id}\nraft_addr = \"127.0.0.1:{}\"\nadmin_addr = \"127.0.0.1:{}\"\n",
        own.raft, own.admin
    ));
    let tuning = common::test_raft_tuning();
    let text = format!(
        "node_id = {id}\ndata_dir = \"{data}\"\nraft_addr = \"127.0.0.1:{}\"\nadmin_addr = \"127.0.0.1:{}\"\nmetrics_addr = \"127.0.0.1:{}\"\n\n[cluster]\nname = \"cli-test\"\njoin = true\n{members}\n[raft]\nheartbeat_interval = \"{}ms\"\nelection_timeout_min = \"{}ms\"\nelection_timeout_max = \"{}ms\"\n\n[store]\nurl = \"memory://\"\n",
        own.raft,
        own.admin,
        own.metrics,
        tuning.heartbeat_interval.as_millis(),
        tuning.election_timeout_min.as_millis(),
        tuning.election_timeout_max.as_millis(),
        data = dir.join(format!("data/node{id}")).display(),
    );
    let path = dir.join(format!("join-node{id}.toml"));
    std::fs::write(&path, text).expect("write join config");
    path
}

#[test]
fn ctl_grows_the_cluster_to_five_voters_and_back_to_three() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ports, script_cmd) = script_cluster(tmp.path(), 3);
    let started = run(&mut script_cmd("start"));
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    common_leader(&ports);
    let ctl = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["ctl", "--addr", &format!("127.0.0.1:{}", ports[0].admin)])
            .args(args);
        run(&mut cmd)
    };
    let voters = || {
        let out = ctl(&["members", "--json"]);
        let members = json(&out);
        let mut ids: Vec<u64> = members["members"]
            .as_array()
            .or_else(|| members.as_array())
            .expect("members")
            .iter()
            .filter(|m| m["voter"] == true)
            .filter_map(|m| m["id"].as_u64())
            .collect();
        ids.sort_unstable();
        ids
    };

    // Start nodes 4 and 5 in join mode, then add them through ctl.
    let mut joiners = Vec::new();
    for id in [4u64, 5] {
        let own = Ports {
            raft: free_port(),
            admin: free_port(),
            metrics: free_port(),
        };
        let path = write_join_config(tmp.path(), id, &ports, own);
        let child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start joining node");
        joiners.push((id, child));
        let out = ctl(&[
            "add-node",
            &id.to_string(),
            &format!("127.0.0.1:{}", own.raft),
            &format!("127.0.0.1:{}", own.admin),
        ]);
        assert!(
            out.status.success(),
            "add-node {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("node {id} added")));
    }
    // `ctl members` asks node 1, which may not have the membership entry
    // yet: the leader commits it once a quorum has, and node 1 may not be in
    // that quorum.
    wait_for(|| (voters() == vec![1, 2, 3, 4, 5]).then_some(()));
    // The new voters get shards.
    wait_for(|| {
        let out = ctl(&["shards", "--json"]);
        let rows = out.status.success().then(|| json(&out))?;
        let owners: Vec<u64> = rows
            .as_array()?
            .iter()
            .filter_map(|r| r["owner"].as_u64())
            .collect();
        (owners.contains(&4) && owners.contains(&5)).then_some(())
    });
    let line = one_error_line(&ctl(&["add-node", "4", "127.0.0.1:1", "127.0.0.1:2"]));
    assert!(line.contains("already a voting member"), "{line}");

    // Shrink back: move the leadership to node 1 first if a new node leads.
    let leader = common_leader(&ports);
    if leader > 3 {
        let out = ctl(&["transfer-leader", "1"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (id, mut child) in joiners {
        let out = ctl(&["remove-node", &id.to_string()]);
        assert!(
            out.status.success(),
            "remove-node {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let _ = child.wait();
    }
    wait_for(|| (voters() == vec![1, 2, 3]).then_some(()));
    let line = one_error_line(&ctl(&["add-node", "4", "127.0.0.1:1", "127.0.0.1:2"]));
    assert!(line.contains("can never rejoin"), "{line}");
    let line = one_error_line(&ctl(&["remove-node", "9"]));
    assert!(line.contains("not a member"), "{line}");
    let stopped = run(&mut script_cmd("stop"));
    assert!(stopped.status.success());
}
