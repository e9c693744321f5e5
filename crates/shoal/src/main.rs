//! The `shoal` command: `server` runs a node, `up` starts a ready-to-try local node with the
//! example sandbox, and the client commands (run, ps, logs, ...) talk to any node's API.

mod client_audit;
mod client_cmds;
mod client_sched;
mod client_secrets;
mod client_tokens;
mod client_users;
mod output;
mod positions;
mod up;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "shoal", version, about = "A leaderless high-availability job cluster", propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: client_cmds::GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node
    Server(ServerArgs),
    /// Start a local cluster (one node, or `--nodes N` processes) on the embedded store with the example sandbox, for trying shoal
    Up(up::UpArgs),
    #[command(flatten)]
    Client(client_cmds::ClientCommand),
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Configuration file (TOML); every key can also be set as SHOAL_<SECTION>_<KEY>
    #[arg(long, short, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
}

/// Sets up structured logs on stderr; `RUST_LOG` overrides the configured level.
pub(crate) fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.compact().try_init();
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a node answers ready before `serve` waits on it, and a
/// SIGTERM in between must stop it cleanly, not kill it.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait(term.take()) => {}
            _ = wait(int.take()) => {}
        }
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let config = shoal_server::Config::load(args.config.as_deref(), std::env::vars())?;
    init_logging(&config.log.level, config.log.format == shoal_server::config::LogFormat::Json);
    shoal_server::serve(config, shutdown_signal()).await
}

fn main() -> ExitCode {
    // A job's supervisor is this binary re-executed; it must not parse arguments, log, or
    // start a runtime before taking over.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(shoal_runner::SUPERVISE_SUBCOMMAND) {
        args.remove(0);
        shoal_runner::supervise_main(args);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => match server(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(3)
                }
            },
            Command::Up(args) => ExitCode::from(up::run(args).await),
            Command::Client(cmd) => ExitCode::from(client_cmds::run(cmd, &cli.global).await as u8),
        }
    })
}
