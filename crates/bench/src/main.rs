//! `shoal-bench`: the benchmarks behind BENCHMARKS.md, a binary of its own so that the product
//! binary carries none of them.
//!
//! Nodes run in this process (`shoal_server::start`, the code `shoal server` runs) where the
//! figure is the node's own work (throughput, latency, forwarding, cut-off), and as real
//! `shoal server` processes started through the process harness (`shoal_procs`, the one the
//! tests and `shoal up` use) where a process is the point (start-up, SIGKILL failover, soak,
//! schedules, file events). Every request goes through `shoal_client`, as any client's would;
//! figures that need the store's own timestamps read them through `shoal_store`.
//!
//! The nodes need the `shoal` binary: to run as `shoal server`, and as every job's supervisor
//! (`shoal __supervise`, the same binary re-executed), in-process nodes included. It is found
//! beside this executable (`target/release/shoal` next to `target/release/shoal-bench`) unless
//! `--shoal` names it.

mod auth;
mod cutoff;
mod failover;
mod forwarding;
mod latency;
mod nodes;
mod pooler;
mod replicas;
mod soak;
mod startup;
mod stats;
mod throughput;
mod triggers;

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "shoal-bench",
    about = "The benchmarks behind BENCHMARKS.md, against in-process nodes and real `shoal server` processes"
)]
struct Cli {
    /// The `shoal` binary the nodes run and supervise their jobs with; default: `shoal` in the
    /// folder of this executable
    #[arg(long, global = true, env = "SHOAL_BENCH_SHOAL", value_name = "PATH")]
    shoal: Option<PathBuf>,
    #[command(subcommand)]
    what: BenchCmd,
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Executions completed per second, submission to final state
    Throughput(throughput::ThroughputArgs),
    /// Submission to process start, one execution at a time with a free slot
    Latency(Common),
    /// Start-up to ready, and resident memory when idle, of a real `shoal server` process
    Startup {
        /// How many starts to measure
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
    /// SIGKILL the `shoal server` process running an attempt: time until the next attempt runs
    Failover(failover::FailoverArgs),
    /// Cut a node off from PostgreSQL: when it kills its child, when another node takes over
    Cutoff(cutoff::CutoffArgs),
    /// A local sandbox's file read directly from its holder versus forwarded by another node
    Forwarding(forwarding::ForwardingArgs),
    /// Real processes under CPU pressure and steady load: count nodes falsely seen dead
    Soak(soak::SoakArgs),
    /// Schedules firing every second across real nodes: lateness to claim and to start
    Schedules(triggers::SchedulesArgs),
    /// Files dropped into a watched shared sandbox: time from a settled file to its job's start
    Files(triggers::FilesArgs),
    /// The cost of authenticating a request against a build without access control, and the
    /// time until every one of three nodes refuses a revoked token
    Auth(auth::AuthArgs),
    /// GET /api/v1/executions with no read replica, one and two, side by side; the routing
    /// layer's cost per request (throwaway PostgreSQL servers of its own)
    Replicas(replicas::ReplicasArgs),
    /// Kill the PostgreSQL primary, promote its replica: time to the first claim on it
    Promotion(replicas::PromotionArgs),
    /// A node direct on PostgreSQL and one behind PgBouncer in transaction mode, side by side;
    /// named prepared statements against the unnamed ones the store sends (servers of its own)
    Pooler(pooler::PoolerArgs),
}

/// Options shared by the in-process throughput and latency benchmarks.
#[derive(clap::Args, Debug)]
pub(crate) struct Common {
    /// Store URL; default: a fresh SQLite file in a temporary folder
    #[arg(long)]
    pub(crate) store: Option<String>,
    /// `noop` (built-in job kind) or `true` (a real process)
    #[arg(long, default_value = "noop")]
    pub(crate) kind: String,
    /// Executions to run
    #[arg(long, default_value_t = 2000)]
    pub(crate) count: usize,
    /// Concurrent submitting clients
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// The node's slots
    #[arg(long, default_value_t = 16)]
    pub(crate) slots: u32,
}

/// Parses `--lease 10s`, `--duration 10m` and the like.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    shoal_core::duration::parse(text)
}

/// The `shoal` binary the nodes run: `--shoal`, else `shoal` beside this executable.
fn find_shoal(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => {
            let me = std::env::current_exe().context("cannot find this executable")?;
            me.parent().context("this executable is in no folder")?.join("shoal")
        }
    };
    ensure!(
        path.is_file(),
        "cannot find the shoal binary at {}; build it beside this one (`cargo build --release -p shoal -p shoal-bench`) or pass --shoal PATH",
        path.display()
    );
    // Absolute, because nodes are given it in their configuration and run from other folders.
    std::fs::canonicalize(&path).with_context(|| format!("cannot resolve {}", path.display()))
}

async fn run(cli: Cli) -> Result<()> {
    let shoal = find_shoal(cli.shoal)?;
    match cli.what {
        BenchCmd::Throughput(a) => throughput::run(&shoal, a).await,
        BenchCmd::Latency(c) => latency::run(&shoal, c).await,
        BenchCmd::Startup { count } => startup::run(&shoal, count).await,
        BenchCmd::Failover(a) => failover::run(&shoal, a).await,
        BenchCmd::Cutoff(a) => cutoff::run(&shoal, a).await,
        BenchCmd::Forwarding(a) => forwarding::run(&shoal, a).await,
        BenchCmd::Soak(a) => soak::run(&shoal, a).await,
        BenchCmd::Schedules(a) => triggers::schedules(&shoal, a).await,
        BenchCmd::Files(a) => triggers::files(&shoal, a).await,
        BenchCmd::Auth(a) => auth::run(&shoal, a).await,
        BenchCmd::Replicas(a) => replicas::replicas(&shoal, a).await,
        BenchCmd::Promotion(a) => replicas::promotion(&shoal, a).await,
        BenchCmd::Pooler(a) => pooler::run(&shoal, a).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // In-process nodes log to stderr; only their errors, so that the figures stay readable.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).compact().try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    // Real nodes are spawned from this thread (inside `block_on`), which lasts as long as the
    // process, so their PR_SET_PDEATHSIG fires only when the bench itself dies.
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}
