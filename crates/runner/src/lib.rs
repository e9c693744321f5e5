//! Runs job attempts as real child processes, each under a tiny supervisor process, so that
//! cancel, timeout and the death of shoal itself always take the attempt's whole process tree
//! down with them.
//!
//! The process tree of one attempt looks like this:
//!
//! ```text
//! shoal (the node)                      [launcher thread forks the supervisor]
//!  └─ shoal __supervise -- prog args    [PR_SET_PDEATHSIG = SIGHUP, in shoal's group]
//!      └─ prog args                     [leader of a new process group]
//!          └─ grandchildren...          [same group, unless they leave it on purpose]
//! ```
//!
//! shoal talks to the supervisor with signals only: SIGTERM asks for a graceful stop (TERM the
//! group, KILL it after the grace period), SIGHUP asks for an immediate kill, and the kernel
//! sends SIGHUP itself when shoal dies. The supervisor exits the way the job did, so shoal
//! sees the job's exit code or fatal signal as the supervisor's.
//!
//! A supervisor also watches the node's lease deadline (see [`deadline`]) and kills the job
//! when the deadline passes, so a frozen node's jobs die before its lease runs out.
//!
//! The supervisor is the shoal binary re-executed with the hidden `__supervise` subcommand,
//! whose entry point is [`supervise_main`].

pub mod deadline;
mod exit;
mod launcher;
mod output;
mod supervisor;

pub use exit::Exit;
pub use launcher::{Launcher, RunningChild, SpawnSpec};
pub use output::{OutputChunk, Stream};
pub use supervisor::{supervise_main, SUPERVISE_SUBCOMMAND};

/// The variable that tells a job its sandbox's root folder. When a spawn's environment sets
/// it, the job's working directory must resolve (symlinks followed) inside that folder: the
/// launcher checks before spawning, and the supervisor checks its own working directory
/// again right before it starts the job, so a symlink swapped in meanwhile cannot lead the
/// job out of its sandbox.
pub const SANDBOX_ROOT_ENV: &str = "SHOAL_SANDBOX_ROOT";

use std::path::PathBuf;

/// What can go wrong while starting or waiting for a job attempt.
///
/// A job that cannot be exec'd (not found, not executable) is not an error here: the
/// supervisor reports it as exit code 127 with a message on the job's stderr, like a shell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec had no program to run.
    #[error("cannot run a job with an empty argv")]
    EmptyArgv,
    /// The working directory does not exist or is not a directory.
    #[error("working directory {} is not a directory", path.display())]
    Cwd {
        /// The directory the spec asked for.
        path: PathBuf,
    },
    /// The working directory resolves (through a symlink) outside the sandbox root named by
    /// [`SANDBOX_ROOT_ENV`] in the spec's environment.
    #[error("working directory {} resolves to {}, outside the sandbox root {}; the job is not started", path.display(), resolved.display(), root.display())]
    OutsideSandbox {
        /// The directory the spec asked for.
        path: PathBuf,
        /// Where it leads.
        resolved: PathBuf,
        /// The sandbox root it must stay in.
        root: PathBuf,
    },
    /// The launcher thread could not be started.
    #[error("cannot start the launcher thread: {0}")]
    LauncherThread(#[source] std::io::Error),
    /// The launcher thread is no longer running (it panicked or could not reply).
    #[error("the launcher thread is gone")]
    LauncherGone,
    /// The supervisor process could not be spawned.
    #[error("cannot spawn supervisor {}: {source}", exe.display())]
    Spawn {
        /// The supervisor executable.
        exe: PathBuf,
        /// Why spawning failed.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the supervisor failed.
    #[error("waiting for supervisor pid {pid}: {source}")]
    Wait {
        /// The supervisor's pid.
        pid: u32,
        /// Why waiting failed.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor ended with a status that is neither an exit code nor a signal.
    #[error("supervisor pid {pid} ended with an unrecognised status: {status}")]
    UnknownStatus {
        /// The supervisor's pid.
        pid: u32,
        /// The raw status, as std prints it.
        status: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
