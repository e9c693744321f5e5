//! The launcher: a dedicated thread that spawns every supervisor, and the handle to one
//! running attempt.
//!
//! Why a dedicated thread: the supervisor asks the kernel for SIGHUP when its parent dies
//! (PR_SET_PDEATHSIG), but Linux tracks the parent *thread*, not the process. The signal
//! fires when the thread that forked the supervisor exits, even while shoal lives on.
//! shoal runs on tokio, whose worker and blocking threads come and go (an idle blocking
//! thread exits after ten seconds), so a supervisor forked from one of them would kill its
//! healthy job at some random later moment. Every supervisor is therefore forked by the one
//! long-lived thread owned by the [`Launcher`], which outlives every [`RunningChild`] it
//! spawned: each child keeps the thread's request channel, and so the thread, alive.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::output::{spawn_readers, OutputChunk};
use crate::supervisor::{SuperviseArgs, SUPERVISE_SUBCOMMAND};
use crate::{Error, Exit, Result};

/// What to run for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnSpec {
    /// Program and arguments; must not be empty. A program without a `/` is looked up in
    /// `PATH`.
    pub argv: Vec<String>,
    /// Working directory of the job; must exist.
    pub cwd: PathBuf,
    /// Variables added on top of the environment inherited from shoal. If they set
    /// [`SANDBOX_ROOT_ENV`](crate::SANDBOX_ROOT_ENV) (the last value counts), `cwd` must
    /// resolve inside that folder, or the job is not started.
    pub env: Vec<(String, String)>,
    /// How long [`RunningChild::terminate`] waits between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// The node's lease deadline file (see [`crate::deadline`]); the supervisor kills the job
    /// once the deadline in it has passed.
    pub deadline_file: Option<PathBuf>,
}

/// A spawn request to the launcher thread. The runtime handle is that of the caller, so the
/// child is registered with the runtime that will wait for it.
struct Request {
    spec: SpawnSpec,
    runtime: Handle,
    reply: oneshot::Sender<Result<Spawned>>,
}

/// A freshly spawned supervisor with its output pipes taken out.
struct Spawned {
    pid: u32,
    child: tokio::process::Child,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
}

/// Owns the dedicated thread that spawns every supervisor (see the module docs for why).
///
/// Cloning is cheap and shares the thread. The thread ends once the `Launcher` and every
/// [`RunningChild`] it spawned have been dropped.
#[derive(Debug, Clone)]
pub struct Launcher {
    requests: mpsc::Sender<Request>,
}

impl Launcher {
    /// Starts the launcher thread.
    ///
    /// `supervisor_exe` is the binary that understands `__supervise` (the shoal binary,
    /// usually `std::env::current_exe()`).
    pub fn new(supervisor_exe: PathBuf) -> Result<Launcher> {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("shoal-launcher".to_owned())
            .spawn(move || launcher_thread(&supervisor_exe, &incoming))
            .map_err(Error::LauncherThread)?;
        Ok(Launcher { requests })
    }

    /// Starts one attempt: a supervisor running `spec.argv` in a new process group.
    ///
    /// Must be called within a tokio runtime with IO and signal drivers enabled (as
    /// `#[tokio::main]` provides): output readers are spawned on it and the child is
    /// registered with it. If this future is dropped before it completes, a supervisor
    /// that was already started is killed rather than orphaned.
    ///
    /// A program that does not exist or is not executable is not an error here: the
    /// attempt ends with exit code 127 and a message on its stderr.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<RunningChild> {
        if spec.argv.is_empty() {
            return Err(Error::EmptyArgv);
        }
        let (reply, replied) = oneshot::channel();
        let request = Request { spec, runtime: Handle::current(), reply };
        self.requests.send(request).map_err(|_| Error::LauncherGone)?;
        let Spawned { pid, child, stdout, stderr } = replied.await.map_err(|_| Error::LauncherGone)??;
        // No await from here on, so a dropped future cannot lose the child half-built.
        Ok(RunningChild {
            pid,
            child,
            output: Some(spawn_readers(stdout, stderr)),
            exit: None,
            _launcher: self.requests.clone(),
        })
    }
}

/// The body of the launcher thread: spawns supervisors until every sender is gone.
fn launcher_thread(exe: &std::path::Path, incoming: &mpsc::Receiver<Request>) {
    let parent_pid = std::process::id();
    while let Ok(Request { spec, runtime, reply }) = incoming.recv() {
        // A panic here would end this thread and, through PR_SET_PDEATHSIG, kill every
        // running job; contain it to the one request.
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _entered = runtime.enter();
            spawn_supervisor(exe, parent_pid, spec)
        }));
        let result = spawned.unwrap_or_else(|_| {
            Err(Error::Spawn {
                exe: exe.to_owned(),
                source: std::io::Error::other("panic while spawning the supervisor"),
            })
        });
        if let Err(Ok(Spawned { child, .. })) = reply.send(result) {
            // The caller stopped waiting (its future was dropped): do not leave an orphan.
            // tokio reaps the dropped child in the background.
            if let Some(pid) = child.id() {
                send_signal(pid, libc::SIGHUP);
            }
            let _entered = runtime.enter();
            drop(child);
        }
    }
}

fn spawn_supervisor(exe: &std::path::Path, parent_pid: u32, spec: SpawnSpec) -> Result<Spawned> {
    // Checked here rather than left to the spawn: a missing cwd and a missing supervisor
    // both surface as ENOENT, and the first is the user's problem while the second is ours.
    if !spec.cwd.is_dir() {
        return Err(Error::Cwd { path: spec.cwd });
    }
    let sandbox_root = spec.env.iter().rev().find(|(k, _)| k == crate::SANDBOX_ROOT_ENV).map(|(_, v)| PathBuf::from(v));
    if let Some(root) = &sandbox_root {
        crate::supervisor::confined(&spec.cwd, root).map_err(|resolved| Error::OutsideSandbox {
            path: spec.cwd.clone(),
            resolved,
            root: root.clone(),
        })?;
    }
    let args = SuperviseArgs {
        parent_pid,
        grace: spec.kill_grace,
        deadline_file: spec.deadline_file,
        sandbox_root,
        argv: spec.argv,
    };
    let mut command = tokio::process::Command::new(exe);
    command
        .arg(SUPERVISE_SUBCOMMAND)
        .args(args.encode())
        .current_dir(&spec.cwd)
        .envs(spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| Error::Spawn { exe: exe.to_owned(), source })?;
    tracing::debug!(pid = child.id(), argv = ?args.argv, "spawned supervisor");
    match (child.id(), child.stdout.take(), child.stderr.take()) {
        (Some(pid), Some(stdout), Some(stderr)) => Ok(Spawned { pid, child, stdout, stderr }),
        _ => {
            // Not expected: nobody has waited for the child yet, and both streams were
            // requested as pipes. Without them the attempt is
            // unusable, so do not leave it running.
            if let Some(pid) = child.id() {
                send_signal(pid, libc::SIGHUP);
            }
            Err(Error::Spawn { exe: exe.to_owned(), source: std::io::Error::other("supervisor output pipes missing") })
        }
    }
}

fn send_signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions. The pid is that of our own unreaped
    // child, so it cannot have been reused by another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// One running attempt: the supervisor process and the job's output.
///
/// Dropping it before [`wait`](RunningChild::wait) has returned kills the job, so a lost
/// handle never leaves processes behind.
#[derive(Debug)]
pub struct RunningChild {
    pid: u32,
    child: tokio::process::Child,
    output: Option<async_mpsc::Receiver<OutputChunk>>,
    exit: Option<Exit>,
    /// Keeps the launcher thread, the parent thread of the supervisor, alive.
    _launcher: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("spec", &self.spec).finish()
    }
}

impl RunningChild {
    /// The supervisor's pid (the job itself runs as its child, leading its own group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Takes the output channel; `None` if it was already taken.
    ///
    /// Chunks of each stream arrive in order; the channel closes once both streams reach
    /// end of file. The channel is bounded: a taken receiver that is not read holds the job
    /// back once its pipes fill up. An untaken or dropped receiver does not: the output is
    /// then read and thrown away.
    pub fn take_output(&mut self) -> Option<async_mpsc::Receiver<OutputChunk>> {
        self.output.take()
    }

    /// Graceful stop: SIGTERM to the job's process group, then SIGKILL to the group if the
    /// job has not exited after the spec's `kill_grace`. Returns at once; use
    /// [`wait`](RunningChild::wait) to see the end. Does nothing once the attempt has been
    /// waited for.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Immediate stop: SIGKILL to the job's whole process group. Returns at once; use
    /// [`wait`](RunningChild::wait) to see the end. Does nothing once the attempt has been
    /// waited for.
    pub fn kill(&self) {
        // SIGHUP is the supervisor's "kill now" signal, the same one the kernel sends it
        // when shoal dies.
        self.signal(libc::SIGHUP);
    }

    fn signal(&self, sig: libc::c_int) {
        // `id()` is None once tokio has reaped the supervisor; from then on its pid may
        // belong to someone else.
        if let Some(pid) = self.child.id() {
            send_signal(pid, sig);
        }
    }

    /// Waits for the attempt to end. Cancel-safe: dropping the future (e.g. in the losing
    /// branch of `tokio::select!`) loses nothing, and it may be called again, also after it
    /// has returned.
    pub async fn wait(&mut self) -> Result<Exit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let status = self.child.wait().await.map_err(|source| Error::Wait { pid: self.pid, source })?;
        self.record(status)
    }

    /// Returns the attempt's end if it has ended, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        match self.child.try_wait() {
            Ok(Some(status)) => self.record(status).map(Some),
            Ok(None) => Ok(None),
            Err(source) => Err(Error::Wait { pid: self.pid, source }),
        }
    }

    fn record(&mut self, status: std::process::ExitStatus) -> Result<Exit> {
        let exit = Exit::from_status(status)
            .ok_or_else(|| Error::UnknownStatus { pid: self.pid, status: status.to_string() })?;
        self.exit = Some(exit);
        Ok(exit)
    }
}

impl Drop for RunningChild {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
        }
        // The tokio child, dropped next, is reaped by tokio in the background.
    }
}
