//! The `deckhand` binary: `node` runs one cluster node, `ctl` talks to one.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deckhand::admin::client::{Ctl, CtlError, TaskAction, DEFAULT_ADDR};
use deckhand::config::{self, NodeConfig};
use deckhand::node::Node;
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
    /// Inspect and steer a running cluster through any node's admin API.
    Ctl {
        /// Admin address of any node.
        #[arg(long, env = "DECKHAND_ADDR", default_value = DEFAULT_ADDR, global = true)]
        addr: String,
        /// Print JSON instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
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
            command,
        } => runtime.block_on(run_ctl(addr, json, command)),
    }
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

async fn run_ctl(addr: String, json: bool, command: CtlCommand) -> ExitCode {
    let result: Result<String, CtlError> = async {
        let mut ctl = Ctl::connect(&addr).await?;
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
        }
    }
    .await;
    match result {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deckhand ctl: {e}");
            ExitCode::FAILURE
        }
    }
}
