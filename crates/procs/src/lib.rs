//! Real `shoal server` processes and a breakable TCP proxy: the one process harness of the
//! black-box tests (through `shoal_testkit::procs`), the benchmarks (`shoal-bench`) and
//! `shoal up --nodes N`.
//!
//! A [`Server`] is a child process started from a [`Spec`], with its stdout and stderr in a
//! log file. It is waited for through `GET /health/ready` with a deadline ([`Server::wait_ready`],
//! or [`probe`] for callers that poll several at once), signalled (SIGKILL, SIGSTOP, SIGCONT,
//! SIGTERM to the process alone, as a crash, a debugger or an operator would), stopped within
//! a grace period, restarted with the same command, and killed when dropped, so that neither a
//! failing test nor a failed benchmark leaves a node running. [`Proxy`] forwards TCP to one
//! address until it is cut.
//!
//! Unlike `shoal-testkit`, this crate returns errors instead of panicking, and depends only on
//! what the `shoal` binary already has (libc, tokio, thiserror), because `shoal up` uses it.

mod probe;
mod proxy;
mod server;

pub use probe::{probe, READY_PATH};
pub use proxy::Proxy;
pub use server::{Server, Spec};

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a process; the messages that concern a started node end with the
/// last lines of its log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {name} ({exe}): {source}")]
    Spawn { name: String, exe: PathBuf, source: std::io::Error },
    #[error("cannot open the log of {name} at {path}: {source}")]
    Log { name: String, path: PathBuf, source: std::io::Error },
    #[error("cannot {what} {name}: {source}")]
    Io { name: String, what: &'static str, source: std::io::Error },
    #[error("{name} exited ({status}) before it was ready; the end of its log {log}:\n{tail}")]
    Exited { name: String, status: ExitStatus, log: PathBuf, tail: String },
    #[error("{name} was not ready within {waited:?} ({last}); the end of its log {log}:\n{tail}")]
    NotReady { name: String, waited: Duration, last: String, log: PathBuf, tail: String },
    #[error("{name} did not stop within {grace:?} of SIGTERM and was killed; the end of its log {log}:\n{tail}")]
    DidNotStop { name: String, grace: Duration, log: PathBuf, tail: String },
    #[error("{name} is still running (pid {pid}); stop it before starting it again")]
    StillRunning { name: String, pid: u32 },
    #[error("{name} is not running")]
    NotRunning { name: String },
    #[error("the proxy cannot {what}: {source}")]
    Proxy { what: &'static str, source: std::io::Error },
}
