//! Test support: a real `redis-server` on a free loopback port, and a real
//! local Redis Cluster of them.
//!
//! Used by the contract tests, the end-to-end tests and the measurement
//! tools. `scripts/test.sh` installs `redis-server` (and `redis-cli`, from
//! the same Debian package) when it is missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The server's working directory (its append-only file), removed on drop.
    dir: tempfile::TempDir,
    /// Extra arguments, kept for restarts.
    extra: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("cannot start redis-server (is it installed? scripts/test.sh installs it): {0}")]
    Spawn(std::io::Error),
    #[error("redis-server on port {0} did not accept connections within 10 s")]
    NotReady(u16),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the Redis Cluster did not form: {0}")]
    Cluster(String),
}

/// Ports handed to other processes come from below Linux's ephemeral range
/// (32768–60999 by default): a port there that was free a moment ago can be
/// taken as the source port of any outgoing loopback connection (Redis,
/// gRPC) before the process it was meant for binds it.
const HANDED_OUT_PORTS: std::ops::Range<u16> = 15_000..32_000;

/// A loopback port nothing listens on right now, for a process started
/// next. Each call of this process tries a different port (tests run in
/// parallel), from a random start so that two test processes rarely meet.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = HANDED_OUT_PORTS.end - HANDED_OUT_PORTS.start;
    let _ = NEXT.compare_exchange(
        0,
        rand::random_range(1..span),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut last_error = None;
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = HANDED_OUT_PORTS.start + offset;
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free loopback port")))
}

impl RedisServer {
    /// Starts a server (append-only file on, in a temporary directory, so
    /// a restart keeps the data) and waits until it answers.
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with(&[])
    }

    /// Starts a server that publishes keyspace events for sorted sets
    /// (`notify-keyspace-events Kz`), as lock events need.
    pub fn start_with_notifications() -> Result<Self, RedisServerError> {
        Self::start_with(&["--notify-keyspace-events", "Kz"])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Result<Self, RedisServerError> {
        Self::start_on_a_free_port(free_port, |_| extra.iter().map(|a| a.to_string()).collect())
    }

    /// Starts a server on a port from `pick_port`, with the arguments
    /// `extra(port)`. A port freed a moment ago can be taken by someone
    /// else before the server binds it: a few ports are tried.
    fn start_on_a_free_port(
        pick_port: fn() -> std::io::Result<u16>,
        extra: impl Fn(u16) -> Vec<String>,
    ) -> Result<Self, RedisServerError> {
        let mut last = RedisServerError::NotReady(0);
        for _ in 0..5 {
            let port = pick_port()?;
            let mut server = Self {
                child: None,
                port,
                dir: tempfile::tempdir()?,
                extra: extra(port),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ RedisServerError::Spawn(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts a server that speaks only TLS on its port, with the given
    /// certificate and key (clients are not asked for certificates); its
    /// URL is [`Self::tls_url`].
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Result<Self, RedisServerError> {
        Self::start_tls_on(free_port, cert, key, ca, &[])
    }

    /// [`Self::start_tls`] as a Redis Cluster node (the cluster bus over
    /// TLS too), not yet part of any cluster: see [`TlsCluster`].
    pub fn start_tls_cluster_node(
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> Result<Self, RedisServerError> {
        let mut extra: Vec<&str> = CLUSTER_NODE_ARGS.to_vec();
        extra.extend(["--tls-cluster", "yes"]);
        Self::start_tls_on(free_cluster_port, cert, key, ca, &extra)
    }

    fn start_tls_on(
        pick_port: fn() -> std::io::Result<u16>,
        cert: &Path,
        key: &Path,
        ca: &Path,
        extra: &[&str],
    ) -> Result<Self, RedisServerError> {
        Self::start_on_a_free_port(pick_port, |port| {
            let mut args: Vec<String> = vec![
                // After `--port <port>`: TLS on that port, plain TCP off.
                "--tls-port".into(),
                port.to_string(),
                "--port".into(),
                "0".into(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
                "--notify-keyspace-events".into(),
                "Kz".into(),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            args
        })
    }

    /// The `rediss://` URL of a server started by [`Self::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    /// Starts a server on a given port (e.g. one a node was pointed at
    /// before Redis existed).
    pub fn start_on(port: u16) -> Result<Self, RedisServerError> {
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir()?,
            extra: Vec::new(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// A loopback port nothing listens on right now.
    pub fn free_port() -> Result<u16, RedisServerError> {
        Ok(free_port()?)
    }

    fn spawn(&mut self) -> Result<(), RedisServerError> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(RedisServerError::Spawn)?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), RedisServerError> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return Err(RedisServerError::NotReady(self.port));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(RedisServerError::NotReady(self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server with SIGTERM (it flushes its append-only file), or
    /// kills it if it has not exited within 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL: no flush, like a crashed host).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data (after [`Self::stop`]).
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.stop();
        self.spawn()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `redis-cli args`, killed after `timeout_s` seconds.
fn redis_cli(timeout_s: u32, args: &[&str]) -> Result<std::process::Output, RedisServerError> {
    Command::new("timeout")
        .arg(timeout_s.to_string())
        .arg("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(RedisServerError::Spawn)
}

/// A loopback port `p` such that `p` and its cluster bus port `p + 10000`
/// are both free right now.
fn free_cluster_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let port = free_port()?;
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no port p with p + 10000 free"))
}

/// A local Redis Cluster: three masters with a replica each, one
/// `redis-server` per node in its own directory, formed by
/// `redis-cli --cluster create`, publishing keyspace events for sorted
/// sets. Killed when dropped.
pub struct RedisCluster {
    /// The six nodes; which are masters changes with failovers (ask
    /// [`RedisCluster::masters`]).
    pub nodes: Vec<RedisServer>,
}

/// `redis-server` arguments of a cluster node: a 2 s node timeout, so a
/// killed master's replica takes over within seconds in tests.
const CLUSTER_NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
    "--notify-keyspace-events",
    "Kz",
];

impl RedisCluster {
    /// Starts six nodes, forms the cluster, and waits until every node says
    /// `cluster_state:ok` and every replica's link to its master is up.
    pub fn start() -> Result<Self, RedisServerError> {
        let nodes = (0..6)
            .map(|_| {
                RedisServer::start_on_a_free_port(free_cluster_port, |_| {
                    CLUSTER_NODE_ARGS.iter().map(|a| a.to_string()).collect()
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = Self { nodes };
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(RedisServerError::Spawn)?;
        if !out.status.success() {
            return Err(RedisServerError::Cluster(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Deckard's cluster URL for it (the first three nodes as seeds).
    pub fn url(&self) -> String {
        format!(
            "redis://127.0.0.1:{}?addr=127.0.0.1:{}&addr=127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port, self.nodes[2].port
        )
    }

    /// Runs `redis-cli -p port args...` (killed after 10 s: a node that
    /// stopped answering must not hang a test) and returns its output.
    pub fn cli(port: u16, args: &[&str]) -> Result<String, RedisServerError> {
        let port = port.to_string();
        let mut all = vec!["-p", port.as_str()];
        all.extend(args);
        let out = redis_cli(10, &all)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The ports of the nodes that are masters now, by `ROLE`.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| {
                Self::cli(n.port, &["ROLE"]).is_ok_and(|out| out.lines().next() == Some("master"))
            })
            .map(|n| n.port)
            .collect()
    }

    /// The running replicas' ports, by `ROLE`.
    pub fn replicas(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| {
                Self::cli(n.port, &["ROLE"]).is_ok_and(|out| out.lines().next() == Some("slave"))
            })
            .map(|n| n.port)
            .collect()
    }

    /// This node's id and how many slots it serves, from `CLUSTER NODES`.
    pub fn id_and_slots(port: u16) -> Result<(String, usize), RedisServerError> {
        let nodes = Self::cli(port, &["CLUSTER", "NODES"])?;
        let line = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .ok_or_else(|| RedisServerError::Cluster(format!("{port}: no myself line")))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let slots = fields
            .iter()
            .skip(8)
            .filter(|f| !f.starts_with('['))
            .map(|range| match range.split_once('-') {
                Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                    (Ok(a), Ok(b)) => (b + 1).saturating_sub(a),
                    _ => 0,
                },
                None => 1,
            })
            .sum();
        Ok((fields[0].to_string(), slots))
    }

    /// Crashes a master with SIGKILL, after pausing its writes
    /// (`CLIENT PAUSE ... WRITE`) until its replica's replication offset has
    /// reached the master's, so the crash loses no acknowledged write (a
    /// loss Redis's asynchronous replication allows, and no housekeeper can
    /// prevent); then waits until its replica has taken over. Returns the
    /// killed port.
    pub fn crash_a_master(&mut self) -> Result<u16, RedisServerError> {
        let port = *self
            .masters()
            .first()
            .ok_or_else(|| RedisServerError::Cluster("no master".into()))?;
        let paused = Self::cli(port, &["CLIENT", "PAUSE", "10000", "WRITE"])?;
        if !paused.contains("OK") {
            return Err(RedisServerError::Cluster(format!("CLIENT PAUSE: {paused}")));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !Self::replica_caught_up(port)? {
            if Instant::now() >= deadline {
                return Err(RedisServerError::Cluster(format!(
                    "the replica of {port} did not catch up within 5 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
        self.wait_healthy(Duration::from_secs(30))?;
        Ok(port)
    }

    /// Whether the master on `port` has a replica whose acknowledged
    /// offset equals the master's own (`INFO replication`).
    fn replica_caught_up(port: u16) -> Result<bool, RedisServerError> {
        let info = Self::cli(port, &["INFO", "replication"])?;
        let field = |line: &str, key: &str| -> Option<u64> {
            line.split([',', ':'])
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
        };
        let master = info
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let replica = info
            .lines()
            .filter(|l| l.starts_with("slave"))
            .filter_map(|l| field(l, "offset="))
            .max();
        Ok(matches!((master, replica), (Some(m), Some(r)) if r >= m))
    }

    /// `CLUSTER FAILOVER` on a replica: a graceful, coordinated switch of
    /// roles. Waits until the replica is a master and the cluster is whole.
    /// Returns the promoted port.
    pub fn fail_over_to_a_replica(&mut self) -> Result<u16, RedisServerError> {
        let port = *self
            .replicas()
            .first()
            .ok_or_else(|| RedisServerError::Cluster("no replica".into()))?;
        let out = Self::cli(port, &["CLUSTER", "FAILOVER"])?;
        if !out.contains("OK") {
            return Err(RedisServerError::Cluster(format!(
                "CLUSTER FAILOVER: {out}"
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.masters().contains(&port) {
            if Instant::now() >= deadline {
                return Err(RedisServerError::Cluster(format!(
                    "{port} never became master"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_healthy(Duration::from_secs(30))?;
        Ok(port)
    }

    /// Moves half of one master's slots, with their keys, to another master
    /// (`redis-cli --cluster reshard`). Returns the number of slots moved.
    pub fn reshard_half_of_a_master(&mut self) -> Result<usize, RedisServerError> {
        let masters = self.masters();
        let (Some(&from), Some(&to)) = (masters.first(), masters.get(1)) else {
            return Err(RedisServerError::Cluster("fewer than two masters".into()));
        };
        let (from_id, slots) = Self::id_and_slots(from)?;
        let (to_id, _) = Self::id_and_slots(to)?;
        let moving = (slots / 2).max(1);
        let out = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &moving.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(RedisServerError::Spawn)?;
        if !out.status.success() {
            return Err(RedisServerError::Cluster(format!(
                "redis-cli --cluster reshard failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        self.wait_healthy(Duration::from_secs(30))?;
        Ok(moving)
    }

    /// Waits until every running node reports `cluster_state:ok`, three
    /// nodes are masters, every node names the same masters as serving
    /// slots, and every running replica's master link is up.
    pub fn wait_healthy(&self, within: Duration) -> Result<(), RedisServerError> {
        let deadline = Instant::now() + within;
        loop {
            let problem = self.health_problem();
            match problem {
                None => return Ok(()),
                Some(p) if Instant::now() >= deadline => return Err(RedisServerError::Cluster(p)),
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn health_problem(&self) -> Option<String> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let info = match Self::cli(node.port, &["CLUSTER", "INFO"]) {
                Ok(info) => info,
                Err(e) => return Some(e.to_string()),
            };
            if !info.contains("cluster_state:ok") {
                return Some(format!("node {} is not cluster_state:ok", node.port));
            }
            let role = Self::cli(node.port, &["INFO", "replication"]).unwrap_or_default();
            if role.contains("role:slave") && !role.contains("master_link_status:up") {
                return Some(format!("replica {} has no link to its master", node.port));
            }
        }
        let masters = self.masters().len();
        if masters != 3 {
            return Some(format!("{masters} masters, expected 3"));
        }
        // Every node's view names the same masters serving slots.
        let mut views = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| Self::masters_seen_by(n.port));
        let first = views.next()?;
        views
            .any(|v| v != first)
            .then(|| "the nodes disagree on which masters serve slots".into())
    }

    /// The masters serving slots in `port`'s `CLUSTER NODES` (empty when
    /// it does not answer).
    fn masters_seen_by(port: u16) -> Vec<String> {
        let nodes = Self::cli(port, &["CLUSTER", "NODES"]).unwrap_or_default();
        let mut masters: Vec<String> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .map(|f| f[1].split('@').next().unwrap_or_default().to_string())
            .collect();
        masters.sort();
        masters
    }
}

/// A local Redis Cluster of three masters (no replicas) that speaks only
/// TLS, clients and cluster bus alike, with certificates the caller made.
/// Killed when dropped.
pub struct TlsCluster {
    pub nodes: Vec<RedisServer>,
}

impl TlsCluster {
    /// Starts three TLS nodes, forms the cluster with `redis-cli --tls
    /// --cluster create`, and waits until every node says `cluster_state:ok`.
    pub fn start(cert: &Path, key: &Path, ca: &Path) -> Result<Self, RedisServerError> {
        let nodes = (0..3)
            .map(|_| RedisServer::start_tls_cluster_node(cert, key, ca))
            .collect::<Result<Vec<_>, _>>()?;
        let ca = ca.display().to_string();
        let cli = |args: &[String]| -> Result<String, RedisServerError> {
            let mut all = vec!["--tls", "--cacert", ca.as_str()];
            all.extend(args.iter().map(String::as_str));
            let out = redis_cli(30, &all)?;
            // Both streams: redis-cli reports errors on either.
            Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        };
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        let out = cli(&create)?;
        if !out.contains("All 16384 slots covered") {
            return Err(RedisServerError::Cluster(format!("cluster create: {out}")));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ok = true;
            for n in &nodes {
                let info = cli(&[
                    "-p".into(),
                    n.port.to_string(),
                    "CLUSTER".into(),
                    "INFO".into(),
                ])?;
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return Ok(Self { nodes });
            }
            if Instant::now() >= deadline {
                return Err(RedisServerError::Cluster("TLS cluster never ok".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deckard's cluster URL for it, over TLS.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("rediss://{}?addr={}", addrs[0], addrs[1..].join("&addr="))
    }
}
