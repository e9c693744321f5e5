//! Running PostgreSQL's programs as the right OS user, and tying servers to this test process's life.

use parking_lot::Mutex;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::bins::Bins;
use super::SUPERUSER;

/// How long a server gets to accept connections before the start is failed.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts retried when the chosen port was taken between probing and binding.
const PORT_ATTEMPTS: usize = 5;

/// The unprivileged account PostgreSQL runs as when tests run as root, since
/// `initdb`, `postgres` and `pg_ctl` all refuse to run as root.
const SERVICE_USER: &str = "postgres";

#[derive(Debug, Clone, Copy)]
pub(super) struct RunAs {
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
}

/// Who PostgreSQL's programs run as: `None` means "as we are".
pub(super) fn run_as() -> Result<Option<RunAs>, String> {
    static RUN_AS: OnceLock<Result<Option<RunAs>, String>> = OnceLock::new();
    RUN_AS
        .get_or_init(|| {
            // SAFETY: geteuid cannot fail and touches no memory of ours.
            if unsafe { libc::geteuid() } != 0 {
                return Ok(None);
            }
            lookup_user(SERVICE_USER).map(Some).ok_or_else(|| {
                format!(
                    "tests run as root, and PostgreSQL refuses to, but there is no \
                     `{SERVICE_USER}` OS user to run it as; run scripts/install-test-deps.sh"
                )
            })
        })
        .clone()
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: an all-zero passwd is a valid out-parameter (null pointers and
    // zero ids), and getpwnam_r writes only into `pwd` and `buf`, whose
    // length it is given; the strings it points at are not read afterwards.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        (rc == 0 && !result.is_null()).then_some(RunAs { uid: pwd.pw_uid, gid: pwd.pw_gid })
    }
}

/// Hands `path` to the user PostgreSQL runs as, so it can create its files.
pub(super) fn give_away(path: &Path) -> Result<(), String> {
    if let Some(user) = run_as()? {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| format!("chown {} to {SERVICE_USER}: {e}", path.display()))?;
    }
    Ok(())
}

/// Strips the libpq variables (PGHOST, PGSSLMODE, ...) a developer's shell
/// may set, so every connection goes exactly where its arguments say.
pub(super) fn scrub_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// A command for one of PostgreSQL's programs, run as the user that owns the
/// data directories and from `cwd`, which that user can enter (the test's own
/// working directory may be closed to it).
pub(super) fn command(program: &Path, cwd: &Path) -> Result<Command, String> {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).env("HOME", cwd).stdin(Stdio::null());
    scrub_pg_env(&mut cmd);
    if let Some(RunAs { uid, gid }) = run_as()? {
        // SAFETY: the closure runs between fork and exec, and only makes
        // async-signal-safe calls on values copied in before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Supplementary groups first, then the group, then the user:
                // each step needs the privilege the next one gives up.
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Ok(cmd)
}

/// Runs `cmd` to completion, failing with its output if it does not succeed.
pub(super) fn run(what: &str, mut cmd: Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it receives SIGINT (PostgreSQL's fast shutdown) when
/// this process ends, however it ends, leaving no server behind.
///
/// The death signal fires when the *thread* that forked the child exits, and
/// cargo's test harness runs every test on its own short-lived thread, so all
/// such children are forked by one thread that lives as long as the process.
pub(super) fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("shoal-testkit-spawner".to_owned())
            .spawn(move || {
                // The sender lives in a static and is never dropped, so this
                // loop, and the thread, last until the process exits.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the testkit's spawner thread");
        tx
    });

    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe, and the closure uses
    // only values copied in before the fork. It is registered after the
    // credential change of `command`, which would clear the death signal.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGINT as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the signal was armed.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }

    let (reply_tx, reply_rx) = mpsc::channel();
    let lost = || io::Error::other("the testkit's spawner thread is gone");
    spawner.send((cmd, reply_tx)).map_err(|_| lost())?;
    reply_rx.recv().map_err(|_| lost())?
}

/// A port that was free a moment ago. Another process may take it before
/// PostgreSQL binds it; [`Instance::start`] retries when that happens.
pub(super) fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind 127.0.0.1:0 to find a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("cannot read the probed port: {e}"))
}

/// One running `postgres` process over a data directory.
#[derive(Debug)]
pub(super) struct Instance {
    /// Holds `data`, the server's log and its Unix socket; owned by the
    /// server's OS user.
    pub(super) root: PathBuf,
    pub(super) data: PathBuf,
    pub(super) port: u16,
    pid: u32,
    child: Mutex<Child>,
}

enum Readiness {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

impl Instance {
    /// Starts `postgres` over the initialized `root/data` on `port`, or on a free port when
    /// `None`, and waits until it accepts connections.
    pub(super) fn start(bins: &Bins, root: PathBuf, port: Option<u16>) -> Result<Instance, String> {
        let data = root.join("data");
        let log_path = root.join("postgres.log");
        // A port given is that port or nothing.
        let attempts = if port.is_some() { 1 } else { PORT_ATTEMPTS };
        for attempt in 1..=attempts {
            let port = match port {
                Some(p) => p,
                None => free_port()?,
            };
            let log = File::options()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
            let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
            let log_err = log.try_clone().map_err(|e| format!("cannot duplicate the log's handle: {e}"))?;
            let mut cmd = command(&bins.tool("postgres"), &root)?;
            cmd.arg("-D").arg(&data).arg("-p").arg(port.to_string()).stdout(log).stderr(log_err);
            let mut child = spawn_tied(cmd).map_err(|e| format!("cannot start postgres: {e}"))?;

            match wait_ready(bins, &root, port, &mut child) {
                Readiness::Ready => {
                    exit_cleanup::register(child.id(), &root);
                    return Ok(Instance { pid: child.id(), root, data, port, child: Mutex::new(child) });
                }
                Readiness::Exited(status) => {
                    let log = read_log_from(&log_path, log_start);
                    if log.contains("Address already in use") && attempt < attempts {
                        continue;
                    }
                    return Err(format!(
                        "postgres over {} exited ({status}) before accepting connections; \
                         its log:\n{log}",
                        data.display()
                    ));
                }
                Readiness::TimedOut => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "postgres over {} did not accept connections within {READY_TIMEOUT:?}; \
                         its log:\n{}",
                        data.display(),
                        read_log_from(&log_path, log_start)
                    ));
                }
            }
        }
        unreachable!("the last attempt always returns")
    }

    /// Immediate shutdown (SIGQUIT): no checkpoint, as after a crash, but
    /// the postmaster still takes its backends down with it. Idempotent.
    pub(super) fn stop(&self) {
        let mut child = self.child.lock();
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill only sends a signal; the pid is our unreaped child,
            // so it cannot have been reused by another process.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGQUIT) };
            let _ = child.wait();
        }
        exit_cleanup::forget(self.pid);
    }
}

/// Polls through the server's private Unix socket rather than its TCP port:
/// if the port were taken, TCP could reach another process's server.
fn wait_ready(bins: &Bins, root: &Path, port: u16, child: &mut Child) -> Readiness {
    let deadline = Instant::now() + READY_TIMEOUT;
    let pg_isready = bins.tool("pg_isready");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Readiness::Exited(status);
        }
        if accepting(&pg_isready, root, port) {
            return Readiness::Ready;
        }
        if Instant::now() >= deadline {
            return Readiness::TimedOut;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a server (or a PgBouncer) answers `pg_isready` on the Unix socket for `port` in the
/// directory `socket_dir`.
pub(super) fn accepting(pg_isready: &Path, socket_dir: &Path, port: u16) -> bool {
    let mut probe = Command::new(pg_isready);
    scrub_pg_env(&mut probe);
    probe
        .arg("-q")
        .arg("-h")
        .arg(socket_dir)
        .args(["-p", &port.to_string(), "-U", SUPERUSER, "-d", "postgres"])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(super) fn read_log_from(path: &Path, start: u64) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = usize::try_from(start).unwrap_or(0).min(bytes.len());
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Removing servers and their directories when the test process exits
/// normally, which cargo's harness does with or without failures. A process
/// killed outright skips this: its servers still get the death signal, and
/// its directories are swept by the next test process that starts a server.
pub(super) mod exit_cleanup {
    use super::*;

    static LIVE: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());
    static OWNER: OnceLock<u32> = OnceLock::new();

    pub(in crate::pg) fn register(pid: u32, root: &Path) {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let _ = OWNER.set(std::process::id());
            // SAFETY: registering a plain extern "C" fn; it never unwinds.
            unsafe { libc::atexit(on_exit) };
        });
        LIVE.lock().push((pid, root.to_owned()));
    }

    pub(in crate::pg) fn forget(pid: u32) {
        LIVE.lock().retain(|(p, _)| *p != pid);
    }

    extern "C" fn on_exit() {
        // A forked child calling exit() inherits this hook; the servers are
        // not its to stop.
        if OWNER.get() != Some(&std::process::id()) {
            return;
        }
        // try_lock: at exit, a thread that was killed mid-update could hold
        // the lock forever, and hanging the exit is worse than leaving files.
        let Some(live) = LIVE.try_lock() else { return };
        for (pid, _) in live.iter() {
            // SAFETY: only sends a signal to a server this process started.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGQUIT) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (pid, root) in live.iter() {
            loop {
                // SAFETY: waitpid with WNOHANG on our own child; a null status
                // pointer is allowed.
                let rc = unsafe { libc::waitpid(*pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
                let interrupted = rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
                // Otherwise non-zero means reaped now, or already (ECHILD):
                // either way the server is gone and its files are free.
                if rc != 0 && !interrupted {
                    let _ = std::fs::remove_dir_all(root);
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
