//! The per-attempt supervisor process: the `__supervise` subcommand that starts the job in a
//! new process group and makes sure that group dies on cancel, on timeout, when the job's
//! main process exits, and when shoal itself dies.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use signal_hook::iterator::Signals;

/// The hidden subcommand of the shoal binary that runs [`supervise_main`]. The shoal binary
/// must dispatch it before any other argument parsing and before starting a tokio runtime.
pub const SUPERVISE_SUBCOMMAND: &str = "__supervise";

/// How often a supervisor reads the node's lease deadline.
const DEADLINE_CHECK: Duration = Duration::from_millis(100);

/// Exit code when the job cannot be started, as a shell would report it.
const CANNOT_START: i32 = 127;

/// The supervisor's arguments, as the launcher encodes them after `__supervise`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SuperviseArgs {
    /// pid of the shoal process, to notice that it died before PR_SET_PDEATHSIG was set.
    pub parent_pid: u32,
    /// How long a graceful stop waits between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The node's lease deadline file: the job is killed once the deadline in it has passed.
    pub deadline_file: Option<std::path::PathBuf>,
    /// The sandbox root the working directory must resolve inside (see
    /// [`crate::SANDBOX_ROOT_ENV`]).
    pub sandbox_root: Option<std::path::PathBuf>,
    /// The job's program and arguments; never empty.
    pub argv: Vec<String>,
}

impl SuperviseArgs {
    /// `--parent-pid N --grace-ms N [--deadline-file PATH] [--sandbox-root PATH] -- program args...`
    pub(crate) fn encode(&self) -> Vec<String> {
        let grace_ms = u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX);
        let mut out =
            vec!["--parent-pid".to_owned(), self.parent_pid.to_string(), "--grace-ms".to_owned(), grace_ms.to_string()];
        if let Some(path) = &self.deadline_file {
            out.push("--deadline-file".to_owned());
            out.push(path.display().to_string());
        }
        if let Some(path) = &self.sandbox_root {
            out.push("--sandbox-root".to_owned());
            out.push(path.display().to_string());
        }
        out.push("--".to_owned());
        out.extend(self.argv.iter().cloned());
        out
    }

    pub(crate) fn parse(args: &[String]) -> Result<SuperviseArgs, String> {
        let mut parent_pid = None;
        let mut grace = None;
        let mut deadline_file = None;
        let mut sandbox_root = None;
        let mut rest = args.iter();
        loop {
            let Some(flag) = rest.next() else {
                return Err("missing `--` before the program".to_owned());
            };
            match flag.as_str() {
                "--" => break,
                "--parent-pid" => {
                    let value = rest.next().ok_or("--parent-pid needs a value")?;
                    let pid = value.parse::<u32>().map_err(|e| format!("bad --parent-pid {value:?}: {e}"))?;
                    parent_pid = Some(pid);
                }
                "--grace-ms" => {
                    let value = rest.next().ok_or("--grace-ms needs a value")?;
                    let ms = value.parse::<u64>().map_err(|e| format!("bad --grace-ms {value:?}: {e}"))?;
                    grace = Some(Duration::from_millis(ms));
                }
                "--deadline-file" => {
                    let value = rest.next().ok_or("--deadline-file needs a value")?;
                    deadline_file = Some(std::path::PathBuf::from(value));
                }
                "--sandbox-root" => {
                    let value = rest.next().ok_or("--sandbox-root needs a value")?;
                    sandbox_root = Some(std::path::PathBuf::from(value));
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let argv: Vec<String> = rest.cloned().collect();
        if argv.is_empty() {
            return Err("no program after `--`".to_owned());
        }
        Ok(SuperviseArgs {
            parent_pid: parent_pid.ok_or("missing --parent-pid")?,
            grace: grace.ok_or("missing --grace-ms")?,
            deadline_file,
            sandbox_root,
            argv,
        })
    }
}

/// Whether `cwd` resolves, symlinks followed, inside `root`; the error is where it leads
/// (or `cwd` itself if it cannot be resolved).
pub(crate) fn confined(cwd: &Path, root: &Path) -> Result<(), std::path::PathBuf> {
    let resolved = std::fs::canonicalize(cwd).map_err(|_| cwd.to_owned())?;
    match std::fs::canonicalize(root) {
        Ok(root) if resolved.starts_with(&root) => Ok(()),
        _ => Err(resolved),
    }
}

/// What the supervisor's main loop reacts to.
enum Event {
    Signal(i32),
    /// The job's main process has exited; it is left a zombie (not reaped yet) so that its
    /// pid, which is also the group id, cannot be reused while we kill the group.
    ChildExited,
}

/// Entry point of the hidden `__supervise` subcommand; `args` are the arguments after
/// `__supervise`: `--parent-pid <shoal pid> --grace-ms <ms> -- <program> <args...>`.
///
/// Starts the program in a new process group and exits the way it did: with its exit code,
/// or killed by the same signal. If the program cannot be started it prints
/// ``shoal: cannot start `PROGRAM`: <os error>`` to stderr and exits with 127.
/// Never returns.
pub fn supervise_main(args: Vec<String>) -> ! {
    let args = match SuperviseArgs::parse(&args) {
        Ok(args) => args,
        Err(e) => fail(&format!("shoal: {SUPERVISE_SUBCOMMAND}: {e}")),
    };
    let status = run(&args);
    exit_like(status)
}

/// Writes a message to stderr and exits with 127. Errors writing are ignored: stderr is a
/// pipe to shoal, and if shoal is gone nobody would read the message anyway.
fn fail(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "{msg}");
    std::process::exit(CANNOT_START)
}

fn run(args: &SuperviseArgs) -> ExitStatus {
    // A SIG_IGN disposition for SIGCHLD survives exec and would make the kernel reap the
    // job behind our back, so restore the default before starting it.
    // SAFETY: setting a signal disposition to SIG_DFL has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }

    // Handlers go in before anything else so that no request is lost. SIGINT and SIGQUIT
    // are caught and ignored: the supervisor shares shoal's process group, so a Ctrl-C at
    // shoal's terminal reaches it, and dying of it would orphan the job. shoal decides what
    // Ctrl-C means; if it dies of it, PR_SET_PDEATHSIG tells us. Catching (rather than
    // SIG_IGN) matters because caught signals go back to default in the exec'd job.
    let (tx, events) = mpsc::channel::<Event>();
    let mut signals = match Signals::new([libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT]) {
        Ok(signals) => signals,
        Err(e) => fail(&format!("shoal: supervisor cannot handle signals: {e}")),
    };
    let signal_tx = tx.clone();
    let spawned = std::thread::Builder::new().name("signals".to_owned()).spawn(move || {
        for sig in signals.forever() {
            if signal_tx.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
    if let Err(e) = spawned {
        fail(&format!("shoal: supervisor cannot start a thread: {e}"));
    }

    // Ask the kernel for SIGHUP when shoal dies, then check shoal did not die before we
    // asked: in that case we were already reparented and the signal will never come.
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and has no memory-safety preconditions.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP as libc::c_ulong) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        fail(&format!("shoal: supervisor cannot set PR_SET_PDEATHSIG: {e}"));
    }
    // SAFETY: getppid cannot fail and has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if u32::try_from(ppid).ok() != Some(args.parent_pid) {
        // Nothing started yet, so there is nothing to clean up.
        std::process::exit(CANNOT_START);
    }

    // The job inherits this process's working directory, which the launcher chose by path:
    // check where it really is now (a directory, not a path, so it can no longer change
    // under us) before the job runs in it.
    if let Some(root) = &args.sandbox_root {
        let here = std::env::current_dir().unwrap_or_default();
        if let Err(resolved) = confined(&here, root) {
            fail(&format!(
                "shoal: working directory {} is outside the sandbox root {}; the job is not started",
                resolved.display(),
                root.display()
            ));
        }
    }

    let (program, rest) = match args.argv.split_first() {
        Some(split) => split,
        None => fail("shoal: supervisor was given no program"),
    };
    // The job inherits stdin (null), stdout and stderr (pipes to shoal), cwd and env: shoal
    // set all of them on the supervisor. process_group(0) makes the job the leader of a new
    // group whose id is its pid, so killpg reaches every process it starts.
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    command.args(rest).process_group(0);
    // Should the supervisor itself be SIGKILLed (the OOM killer), the job's main process goes
    // with it. The supervisor is single-threaded here, so the forking thread is the one that
    // lives as long as the supervisor does.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => fail(&format!("shoal: cannot start `{program}`: {e}")),
    };
    let pgid = child.id() as libc::pid_t;

    let spawned = std::thread::Builder::new().name("waiter".to_owned()).spawn(move || {
        wait_exited_no_reap(pgid);
        let _ = tx.send(Event::ChildExited);
    });
    if let Err(e) = spawned {
        // Without a waiter we cannot supervise; take the job down rather than leave it.
        kill_group(pgid, libc::SIGKILL);
        fail(&format!("shoal: supervisor cannot start a thread: {e}"));
    }

    event_loop(&events, pgid, args.grace, args.deadline_file.as_deref());
    // The main process has exited and the rest of its group has been sent SIGKILL.
    reap(child)
}

/// Reacts to signals until the job's main process exits, then kills what is left of its
/// group.
fn event_loop(events: &mpsc::Receiver<Event>, pgid: libc::pid_t, grace: Duration, deadline: Option<&Path>) {
    // Set while a graceful stop is in progress: when to give up and SIGKILL.
    let mut kill_at: Option<Instant> = None;
    // Once SIGKILL has been sent, further stop requests change nothing.
    let mut killed = false;
    loop {
        // Wake at least this often to check the node's lease deadline.
        let tick = if deadline.is_some() && !killed { DEADLINE_CHECK } else { Duration::from_secs(3600) };
        let wait = match kill_at {
            None => tick,
            Some(at) => at.saturating_duration_since(Instant::now()).min(tick),
        };
        let event = match events.recv_timeout(wait) {
            Ok(event) => Some(event),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    kill_group(pgid, libc::SIGKILL);
                    killed = true;
                    kill_at = None;
                } else if !killed
                    && deadline.and_then(crate::deadline::read).is_some_and(|d| crate::deadline::boottime_ms() >= d)
                {
                    // The node could not renew its lease in time and did not kill us itself
                    // (frozen): go now, before another node may take the attempt over.
                    let _ = writeln!(std::io::stderr(), "shoal: the node's lease deadline passed; killing the job");
                    kill_group(pgid, libc::SIGKILL);
                    killed = true;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        };
        match event {
            Some(Event::Signal(libc::SIGHUP)) => {
                // shoal died, or asked for an immediate kill.
                kill_group(pgid, libc::SIGKILL);
                killed = true;
                kill_at = None;
            }
            Some(Event::Signal(libc::SIGTERM)) => {
                if !killed && kill_at.is_none() {
                    kill_group(pgid, libc::SIGTERM);
                    kill_at = Some(Instant::now() + grace);
                }
            }
            // SIGINT, SIGQUIT: deliberately ignored, see `run`.
            Some(Event::Signal(_)) => {}
            Some(Event::ChildExited) => {
                // The main process is done; nothing the job left behind may outlive it.
                kill_group(pgid, libc::SIGKILL);
                return;
            }
            None => {
                // Both senders gone means the waiter thread ended, which it only does after
                // sending ChildExited; treat it the same way to be safe.
                kill_group(pgid, libc::SIGKILL);
                return;
            }
        }
    }
}

/// Blocks until `pid` has exited, leaving it unreaped (WNOWAIT).
fn wait_exited_no_reap(pid: libc::pid_t) {
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // ECHILD and friends: nothing left to wait for.
            return;
        }
    }
}

fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    // ESRCH (group already empty) is the expected, harmless outcome after the job ended.
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

fn reap(mut child: Child) -> ExitStatus {
    loop {
        match child.wait() {
            Ok(status) => return status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => fail(&format!("shoal: supervisor cannot wait for the job: {e}")),
        }
    }
}

/// Exits with the job's code, or dies of the job's signal so shoal sees the same ending.
fn exit_like(status: ExitStatus) -> ! {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    if let Some(sig) = status.signal() {
        // SAFETY: these calls only change this process's signal state and resource limits;
        // the set is initialised by sigemptyset before use.
        unsafe {
            // A core dump of the supervisor would be useless and slow; the job's own core,
            // if any, has already been written.
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            // Our own handler (SIGHUP, SIGTERM, ...) would swallow the signal: restore the
            // default action and make sure it is not blocked.
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        // Only reached for a signal whose default action is not fatal to us.
        std::process::exit(128 + sig);
    }
    fail("shoal: supervisor saw the job end with an unknown status")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn args_round_trip() {
        let args = SuperviseArgs {
            parent_pid: 42,
            grace: Duration::from_millis(2500),
            deadline_file: None,
            sandbox_root: None,
            argv: strings(&["sh", "-c", "echo -- --grace-ms"]),
        };
        let encoded = args.encode();
        assert_eq!(
            encoded,
            strings(&["--parent-pid", "42", "--grace-ms", "2500", "--", "sh", "-c", "echo -- --grace-ms"])
        );
        assert_eq!(SuperviseArgs::parse(&encoded), Ok(args.clone()));
        let with = SuperviseArgs { deadline_file: Some("/d/lease-deadline".into()), ..args };
        assert_eq!(SuperviseArgs::parse(&with.encode()), Ok(with.clone()));
        let with = SuperviseArgs { sandbox_root: Some("/srv/sb".into()), ..with };
        assert_eq!(SuperviseArgs::parse(&with.encode()), Ok(with));
    }

    #[test]
    fn args_rejected() {
        assert!(SuperviseArgs::parse(&strings(&["--parent-pid", "1", "--grace-ms", "1"])).is_err());
        assert!(SuperviseArgs::parse(&strings(&["--parent-pid", "1", "--grace-ms", "1", "--"])).is_err());
        assert!(SuperviseArgs::parse(&strings(&["--grace-ms", "1", "--", "true"])).is_err());
        assert!(SuperviseArgs::parse(&strings(&["--parent-pid", "x", "--", "true"])).is_err());
        assert!(SuperviseArgs::parse(&strings(&["--bogus", "--", "true"])).is_err());
    }
}
