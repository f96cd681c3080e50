//! The `deckhand` binary: `node` runs one cluster node, `ctl` talks to one.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deckhand::admin::client::{Ctl, CtlError, CtlOptions, TaskAction, DEFAULT_ADDR};
use deckhand::config::{self, NodeConfig};
use deckhand::node::Node;
use deckhand::store::redis_url::redacted;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "deckhand",
    version,
    about = "Raft-coordinated housekeeper cluster for Deckard priority queues"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one cluster node.
    Node {
        /// The node's TOML config file. DECKHAND_* variables override its keys.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a 3-node cluster, the embedded store and Deckard-like traffic in
    /// this process; kill and restart nodes; check nothing was lost.
    Demo(DemoArgs),
    /// Act like Deckard's API pods on a store and measure what consumers see.
    Load(LoadArgs),
    /// Inspect and steer a running cluster through any node's admin API.
    Ctl {
        /// Admin address of any node.
        #[arg(long, env = "DECKHAND_ADDR", default_value = DEFAULT_ADDR, global = true)]
        addr: String,
        /// Print JSON instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        security: CtlSecurity,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    /// How long the traffic runs (faults at a third, half, ...).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Nodes in the cluster (3 or 5 are typical).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Queues the traffic uses.
    #[arg(long, default_value_t = 300)]
    queues: usize,
    /// Messages added per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seed of the consumers' random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON (no live view).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// The store: redis://host:port/db (memory:// works but is only useful in-process).
    #[arg(long, env = "DECKHAND_STORE_URL")]
    store: String,
    /// Deckard's key prefix.
    #[arg(long, default_value = "deckard_v1")]
    prefix: String,
    /// --store names a Redis Cluster, in Deckard's form
    /// redis://n1:6379?addr=n2:6379&addr=... (traffic, drain and
    /// --redis-limit runs).
    #[arg(long, env = "DECKHAND_STORE_CLUSTER")]
    cluster: bool,
    /// Number of queues (named load::q0, load::q1, ...).
    #[arg(long, default_value_t = 100)]
    queues: usize,
    /// Messages added per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// How long to produce (then wait for locked messages to come back).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Lock duration of acks and nacks with a lock, ms (the shortest, with --lock-ms-max).
    #[arg(long, default_value_t = 500)]
    lock_ms: i64,
    /// Longest lock, ms: each lock lasts a uniform draw from --lock-ms to this.
    #[arg(long)]
    lock_ms_max: Option<i64>,
    /// Percent of the queues first written during the run, spread over its
    /// first 80 % (Deckard creates queues on demand).
    #[arg(long, default_value_t = 0)]
    new_queues_pct: u32,
    /// Ack deadline of pulls (messages left to time out come back after it), ms.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: i64,
    /// Percent of pulled messages acked with a lock.
    #[arg(long, default_value_t = 50)]
    ack_lock_pct: u32,
    /// Percent of pulled messages nacked with a lock.
    #[arg(long, default_value_t = 20)]
    nack_lock_pct: u32,
    /// Percent of pulled messages left to time out (the rest are finished).
    #[arg(long, default_value_t = 10)]
    timeout_pct: u32,
    /// Store operations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Create every queue first and wait this long before measuring (the
    /// housekeeper discovers the queues, as it knows long-lived Deckard queues).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: std::time::Duration,
    /// How long to wait after the run for locked messages to come back.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
    /// Drain mode: write this many already-expired locks and time the drain.
    #[arg(long, default_value_t = 0)]
    expired_locks: usize,
    /// Drain mode: a node's admin address, to pause UNLOCK while writing.
    #[arg(long)]
    admin: Option<String>,
    /// Measure what Redis alone sustains for the same moves (this many expired
    /// locks, drained by calling the script directly) instead of running traffic.
    #[arg(long, default_value_t = 0)]
    redis_limit: usize,
    /// Benchmarks only: instead of traffic, run the baseline deckhand is
    /// compared with, Deckard's single housekeeper policy (1 s tick, 1000 per
    /// queue and set per run, most recent first), for --duration.
    #[arg(long)]
    baseline_housekeeper: bool,
    /// Drain mode: create this file once the locks are written.
    #[arg(long)]
    signal_file: Option<PathBuf>,
    /// Traffic mode: keep a ledger of every message and end by reading every
    /// queue: exit 1 if a message is lost, in two of Deckard's sets, back
    /// after its removal, returned early or never returned.
    #[arg(long)]
    check: bool,
    /// Baseline mode: wait until this file exists before the first tick.
    #[arg(long)]
    start_file: Option<PathBuf>,
    /// Baseline mode: stop after a tick that moved nothing, once something moved.
    #[arg(long)]
    stop_when_idle: bool,
    /// Elements per housekeeping call in --redis-limit mode.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as one JSON object (no progress line).
    #[arg(long)]
    json: bool,
}

/// How `ctl` authenticates (all optional).
#[derive(clap::Args)]
struct CtlSecurity {
    /// The admin token mutations need when the cluster sets one.
    #[arg(long, env = "DECKHAND_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) of a cluster running TLS; switches to https.
    #[arg(long, env = "DECKHAND_CA", global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for a cluster running mutual TLS.
    #[arg(long, env = "DECKHAND_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, env = "DECKHAND_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// This node's role, the leader, term, log indexes and the members.
    Status,
    /// The cluster's members and their addresses.
    Members,
    /// Every shard: owner, epoch, the owner's lease, queues, work passes.
    Shards,
    /// Move all of a node's shards away; it owns none until `undrain`.
    Drain {
        /// The node id to drain.
        node: u64,
    },
    /// Let a drained node own shards again.
    Undrain {
        /// The node id to undrain.
        node: u64,
    },
    /// Plan and apply shard moves now.
    Rebalance,
    /// The housekeeping tasks: state, settings, work done, per-node share.
    Tasks,
    /// Pause a task (UNLOCK or TIMEOUT) on every node.
    Pause {
        /// UNLOCK or TIMEOUT.
        task: String,
    },
    /// Resume a paused task.
    Resume {
        /// UNLOCK or TIMEOUT.
        task: String,
    },
    /// Make every owner re-check all its queues for a task now.
    Trigger {
        /// UNLOCK or TIMEOUT.
        task: String,
    },
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    /// Start it first with `[cluster] join = true`.
    AddNode {
        /// The new node's id (never one that was removed).
        id: u64,
        /// Where the other nodes reach it for Raft (host:port).
        raft_addr: String,
        /// Where clients reach its admin API (host:port).
        admin_addr: String,
    },
    /// Remove a node: its shards move away first, then it leaves for good.
    RemoveNode {
        id: u64,
        /// Remove even if fewer than a majority of the remaining voters are
        /// live, without waiting for its shards to move first.
        #[arg(long)]
        force: bool,
    },
    /// Move the leadership to another voter.
    TransferLeader { id: u64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match &cli.command {
        Command::Node { .. } => runtime(Some(NODE_WORKER_THREADS)),
        // tokio's default: one worker per core.
        _ => runtime(None),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deckhand: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Node { config } => runtime.block_on(run_node(config)),
        Command::Ctl {
            addr,
            json,
            security,
            command,
        } => runtime.block_on(run_ctl(addr, json, security, command)),
        Command::Load(args) => runtime.block_on(run_load(args)),
        Command::Demo(args) => runtime.block_on(run_demo(args)),
    }
}

/// A node's async workers unless `TOKIO_WORKER_THREADS` says otherwise
/// (tokio's own default is one per core).
///
/// Two, because a second worker makes it less likely that a long piece of
/// work holds up the worker heartbeats that renew leases, or the leader's
/// answers to them (tokio reserves no worker, so it is not a guarantee;
/// Raft itself runs on a thread of its own, `raft::runtime`): with a single
/// worker, `scripts/scale-check.py` (a million queues, the leader's queue
/// gauges scraped) saw the leader let followers' leases run out, before
/// Raft had its own thread. More than two mostly add wake-ups to an idle
/// node: a node's own work is waiting on Redis, which does the moves, and
/// on its peers.
const NODE_WORKER_THREADS: usize = 2;

/// A multi-thread runtime with `TOKIO_WORKER_THREADS` workers if set (a
/// positive whole number, else an error naming it: tokio itself would
/// panic), `default` if not (`None`: tokio's default).
fn runtime(default: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let threads = match std::env::var("TOKIO_WORKER_THREADS") {
        Err(std::env::VarError::NotPresent) => default,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "TOKIO_WORKER_THREADS={v:?} is not a positive whole number"
                ))
            }
        },
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("TOKIO_WORKER_THREADS is not valid UTF-8".to_string())
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build().map_err(|e| e.to_string())
}

fn init_logging(config: &NodeConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run_demo(args: DemoArgs) -> ExitCode {
    // Node logs would scroll the live view away (and the faults are on
    // purpose): errors only, unless RUST_LOG asks for more.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let opts = deckhand::demo::DemoOptions {
        duration: args.duration,
        nodes: args.nodes,
        queues: args.queues,
        seed: args.seed,
        rate: args.rate,
        live: !args.json,
    };
    if let Err(e) = opts.check() {
        eprintln!("deckhand demo: {e}");
        return ExitCode::FAILURE;
    }
    if !args.json {
        eprintln!(
            "deckhand demo: {} nodes on loopback, embedded store, {} queues, {:?}; faults at 1/3 and later",
            args.nodes, args.queues, args.duration
        );
    }
    let summary = match deckhand::demo::run(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("deckhand demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        match serde_json::to_string_pretty(&summary) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("deckhand demo: cannot encode the summary: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        deckhand::demo::summary_text(&summary)
    };
    if let Err(e) = write_line(text.trim_end()) {
        eprintln!("deckhand demo: {e}");
        return ExitCode::FAILURE;
    }
    if summary.consistency.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_node(path: PathBuf) -> ExitCode {
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("deckhand: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!(
                "deckhand: {}: key `{}`: {e}",
                path.display(),
                e.config_key()
            );
            return ExitCode::FAILURE;
        }
    };
    match wait_for_signal().await {
        Ok(signal) => tracing::info!(signal, "shutting down"),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; shutting down");
        }
    }
    node.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn run_ctl(addr: String, json: bool, security: CtlSecurity, command: CtlCommand) -> ExitCode {
    let result: Result<String, CtlError> = async {
        let tls = match &security.ca {
            Some(ca) => Some(deckhand::tls::Tls::client_only(
                ca,
                security.cert.as_deref().zip(security.key.as_deref()),
            )?),
            None => None,
        };
        let membership_change = matches!(
            command,
            CtlCommand::AddNode { .. } | CtlCommand::RemoveNode { .. }
        );
        let options = CtlOptions {
            token: security.token,
            tls,
            // A learner's catch-up plus the drain wait, and some slack.
            timeout: membership_change.then(|| std::time::Duration::from_secs(120)),
        };
        let mut ctl = Ctl::connect_with(&addr, options).await?;
        match command {
            CtlCommand::Status => ctl.status(json).await,
            CtlCommand::Members => ctl.members(json).await,
            CtlCommand::Shards => ctl.shards(json).await,
            CtlCommand::Drain { node } => ctl.drain(node, true, json).await,
            CtlCommand::Undrain { node } => ctl.drain(node, false, json).await,
            CtlCommand::Rebalance => ctl.rebalance(json).await,
            CtlCommand::Tasks => ctl.tasks(json).await,
            CtlCommand::Pause { task } => ctl.task(TaskAction::Pause, &task, json).await,
            CtlCommand::Resume { task } => ctl.task(TaskAction::Resume, &task, json).await,
            CtlCommand::Trigger { task } => ctl.task(TaskAction::Trigger, &task, json).await,
            CtlCommand::AddNode {
                id,
                raft_addr,
                admin_addr,
            } => ctl.add_node(id, &raft_addr, &admin_addr, json).await,
            CtlCommand::RemoveNode { id, force } => ctl.remove_node(id, force, json).await,
            CtlCommand::TransferLeader { id } => ctl.transfer_leader(id, json).await,
        }
    }
    .await;
    match result {
        Ok(out) => write_stdout("ctl", out.trim_end()),
        Err(e) => {
            eprintln!("deckhand ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a command's output and a newline to stdout. A failed write, a
/// reader that went away included (`deckhand ctl status | head -0`), gets one
/// line on stderr and a failure exit; `println!` would panic.
fn write_stdout(command: &str, text: &str) -> ExitCode {
    match write_line(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deckhand {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `text` and a newline on stdout, flushed; a failed write (a closed pipe
/// included) is an error naming what failed instead of `println!`'s panic.
fn write_line(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the output: {e}"))
}

async fn run_load(args: LoadArgs) -> ExitCode {
    let result = async {
        let lock_ms_max = check_load_args(&args)?;
        if args.baseline_housekeeper {
            run_baseline(&args).await
        } else if args.redis_limit > 0 {
            run_redis_limit(&args).await
        } else {
            run_traffic_or_drain(&args, lock_ms_max).await
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("deckhand load: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the arguments of `deckhand load`; returns the longest lock (ms).
fn check_load_args(args: &LoadArgs) -> Result<i64, String> {
    if args.ack_lock_pct + args.nack_lock_pct + args.timeout_pct > 100 {
        return Err("--ack-lock-pct + --nack-lock-pct + --timeout-pct must not exceed 100".into());
    }
    if args.queues == 0 || args.rate == 0 || args.concurrency == 0 {
        return Err("--queues, --rate and --concurrency must be at least 1".into());
    }
    if args.lock_ms <= 0 || args.timeout_ms <= 0 {
        return Err("--lock-ms and --timeout-ms must be positive".into());
    }
    let lock_ms_max = args.lock_ms_max.unwrap_or(args.lock_ms);
    if lock_ms_max < args.lock_ms {
        return Err("--lock-ms-max must be at least --lock-ms".into());
    }
    if args.new_queues_pct > 100 {
        return Err("--new-queues-pct must be at most 100".into());
    }
    if args.cluster && args.baseline_housekeeper {
        return Err(
            "--cluster applies to traffic, drain and --redis-limit runs; \
             --baseline-housekeeper runs on a single Redis"
                .into(),
        );
    }
    if args.check && args.expired_locks > 0 && !args.baseline_housekeeper && args.redis_limit == 0 {
        return Err("--check applies to traffic runs, not to --expired-locks (drain mode)".into());
    }
    Ok(lock_ms_max)
}

/// Prints `value` as one JSON line.
fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let line =
        serde_json::to_string(value).map_err(|e| format!("cannot encode the result: {e}"))?;
    write_line(&line)
}

/// `--baseline-housekeeper`: Deckard's own housekeeping loop, as a baseline.
async fn run_baseline(args: &LoadArgs) -> Result<(), String> {
    let opts = deckhand::baseline::BaselineOptions {
        url: args.store.clone(),
        prefix: args.prefix.clone(),
        tick: std::time::Duration::from_secs(1),
        per_run: 1000,
        duration: args.duration,
        start_file: args.start_file.clone(),
        stop_when_idle: args.stop_when_idle,
    };
    let summary = deckhand::baseline::run(&opts)
        .await
        .map_err(|e| e.to_string())?;
    print_json(&summary)
}

/// `--redis-limit`: what Redis alone sustains for the moves housekeeping makes.
async fn run_redis_limit(args: &LoadArgs) -> Result<(), String> {
    let limit = deckhand::load::redis_limit(
        &args.store,
        &args.prefix,
        args.cluster,
        args.redis_limit,
        args.queues,
        args.batch,
        args.concurrency,
    )
    .await
    .map_err(|e| format!("--store {}: {e}", redacted(&args.store)))?;
    if args.json {
        return print_json(&limit);
    }
    let mut text = format!(
        "Redis alone: {} elements in {} calls, {} us of server time: {:.0} elements/s (wall clock: {:.0}/s)",
        limit.elements, limit.calls, limit.server_usec, limit.elements_per_s, limit.wall_elements_per_s
    );
    for (master, usec) in &limit.per_master_usec {
        text.push_str(&format!("\n  master {master}: {usec} us of server time"));
    }
    if !limit.per_master_usec.is_empty() {
        text.push_str(&format!(
            "\n  every master on its own core: {:.0} elements/s",
            limit.parallel_elements_per_s
        ));
    }
    write_line(&text)
}

/// Traffic (or, with `--expired-locks`, drain) against the store; prints the summary.
async fn run_traffic_or_drain(args: &LoadArgs, lock_ms_max: i64) -> Result<(), String> {
    let store = deckhand::store::open_with(&args.store, &args.prefix, args.cluster)
        .await
        .map_err(|e| format!("--store {}: {e}", redacted(&args.store)))?
        .as_client();
    let opts = deckhand::load::LoadOptions {
        queues: args.queues,
        rate: args.rate,
        duration: args.duration,
        lock_ms: args.lock_ms,
        lock_ms_max,
        timeout_ms: args.timeout_ms,
        new_queues_pct: args.new_queues_pct,
        ack_lock_pct: args.ack_lock_pct,
        nack_lock_pct: args.nack_lock_pct,
        timeout_pct: args.timeout_pct,
        concurrency: args.concurrency,
        seed: args.seed,
        grace: args.grace,
        progress: !args.json,
        expired_locks: args.expired_locks,
        admin: args.admin.clone(),
        warmup: args.warmup,
        signal_file: args.signal_file.clone(),
        check: args.check,
    };
    let summary = deckhand::load::run(store, opts).await;
    let text = if args.json {
        serde_json::to_string(&summary).map_err(|e| format!("cannot encode the summary: {e}"))?
    } else {
        deckhand::load::summary_text(&summary)
    };
    write_line(&text)?;
    if summary.errors > 0 && summary.added == 0 && summary.drained == 0 {
        return Err(format!(
            "every store operation failed ({} errors); is the store reachable?",
            summary.errors
        ));
    }
    if args.check && !summary.integrity_ok() {
        return Err(format!(
            "the integrity check failed: {} missing, {} early, census {}",
            summary.missing,
            summary.early,
            summary
                .census
                .as_ref()
                .map_or("not run (drain mode?)".to_string(), |c| format!(
                    "{} duplicated, {} lost, {} resurrected, {} queues unreadable",
                    c.duplicated, c.lost, c.resurrected, c.unreadable
                ))
        ));
    }
    Ok(())
}
