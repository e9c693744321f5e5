//! One node as a real process: how it is started ([`Spec`]) and what can be done to it
//! ([`Server`]).

use crate::{probe, Error, Result, READY_PATH};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often [`Server::wait_ready`] asks, and how long one ask may take.
const READY_POLL: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often [`Server::stop`] looks whether the process has exited.
const EXIT_POLL: Duration = Duration::from_millis(10);
/// Lines of a log quoted in an error.
const TAIL_LINES: usize = 30;

/// How to start a node's process: the command, its environment and its log.
#[derive(Clone, Debug)]
pub struct Spec {
    name: String,
    exe: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
    die_with_parent: bool,
}

impl Spec {
    /// `<exe> server --config <config>`, named `name` in messages, its output in `log`.
    pub fn server(name: impl Into<String>, exe: impl Into<PathBuf>, config: &Path, log: impl Into<PathBuf>) -> Spec {
        Spec::new(name, exe, ["server".into(), "--config".into(), config.as_os_str().to_owned()], log)
    }

    /// Any command (`shoal server` configured through the environment, or a stand-in in tests).
    pub fn new(
        name: impl Into<String>,
        exe: impl Into<PathBuf>,
        args: impl IntoIterator<Item = OsString>,
        log: impl Into<PathBuf>,
    ) -> Spec {
        Spec {
            name: name.into(),
            exe: exe.into(),
            args: args.into_iter().collect(),
            env: Vec::new(),
            log: log.into(),
            die_with_parent: false,
        }
    }

    /// Sets an environment variable of the process (the rest is inherited).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Spec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The process gets SIGTERM when the *thread* that spawned it exits (`PR_SET_PDEATHSIG`),
    /// so a killed parent leaves nothing running. Only for parents that spawn from a thread
    /// that lasts as long as they do (the main thread, a runtime's `block_on`).
    pub fn die_with_parent(mut self) -> Spec {
        self.die_with_parent = true;
        self
    }

    fn command(&self) -> Result<Command> {
        let log_error = |source| Error::Log { name: self.name.clone(), path: self.log.clone(), source };
        // Appended to, so that a restarted node's log follows its previous run's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).map_err(log_error)?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(log_error)?)
            .stderr(log);
        if self.die_with_parent {
            die_with_parent(&mut cmd);
        }
        Ok(cmd)
    }
}

fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls (prctl,
    // getppid) and allocates nothing on its success path.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If the parent died before the prctl, nothing would ever signal the child.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// A started node's process. Its methods mirror [`std::process::Child`]'s where they overlap
/// (`id` is the pid, `try_wait` and `wait` reap it); dropping a `Server` whose process still
/// runs SIGKILLs it and reaps it.
#[derive(Debug)]
pub struct Server {
    spec: Spec,
    child: Child,
}

impl Server {
    /// Starts the process, its log emptied first.
    pub fn spawn(spec: Spec) -> Result<Server> {
        std::fs::File::create(&spec.log).map_err(|source| Error::Log {
            name: spec.name.clone(),
            path: spec.log.clone(),
            source,
        })?;
        let child = Self::start(&spec)?;
        Ok(Server { spec, child })
    }

    fn start(spec: &Spec) -> Result<Child> {
        spec.command()?.spawn().map_err(|source| Error::Spawn {
            name: spec.name.clone(),
            exe: spec.exe.clone(),
            source,
        })
    }

    /// Starts the same command again once the process has exited (and been reaped), its
    /// output appended to the same log.
    pub fn restart(&mut self) -> Result<()> {
        if self.running() {
            return Err(Error::StillRunning { name: self.spec.name.clone(), pid: self.id() });
        }
        self.child = Self::start(&self.spec)?;
        Ok(())
    }

    /// The name given in the spec (a node id, usually).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// The process id (of the latest start).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the process to exit, however long that takes.
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Whether the process is still running (reaping it if it has exited). A process whose
    /// state cannot be read counts as running, so that it is still killed on drop.
    pub fn running(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends `signal` to the process alone (not its group: its jobs' supervisors are in groups
    /// of their own and must notice its death themselves). Refused once it has been reaped,
    /// when its pid may belong to another process.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if !self.running() {
            return Err(Error::NotRunning { name: self.spec.name.clone() });
        }
        // SAFETY: kill(2) on our own child, not reaped yet, so its pid is not reused.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            let source = std::io::Error::last_os_error();
            return Err(Error::Io { name: self.spec.name.clone(), what: "signal", source });
        }
        Ok(())
    }

    /// SIGKILL, as a crash would, and reaps the process.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        self.wait().map_err(|source| Error::Io { name: self.spec.name.clone(), what: "reap", source })
    }

    /// SIGSTOP: the process freezes (a debugger, a paused VM) with its sockets and locks held.
    pub fn freeze(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`Server::freeze`].
    pub fn thaw(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGTERM, the clean stop, without waiting for it.
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// SIGTERM, then up to `grace` for the process to exit; past that, SIGKILL and an error.
    /// Answers how it exited (already exited: that status).
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let reap_error = |name: &str, source| Error::Io { name: name.to_owned(), what: "reap", source };
        if let Some(status) = self.try_wait().map_err(|e| reap_error(&self.spec.name, e))? {
            return Ok(status);
        }
        self.terminate()?;
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.try_wait().map_err(|e| reap_error(&self.spec.name, e))? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(Error::DidNotStop {
                    name: self.spec.name.clone(),
                    grace,
                    log: self.spec.log.clone(),
                    tail: self.log_tail(TAIL_LINES),
                });
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Waits until `GET <url>/health/ready` answers 200, asking every 20 ms; fails with the
    /// log's end if the process exits first or `deadline` passes.
    pub async fn wait_ready(&mut self, url: &str, deadline: Instant) -> Result<()> {
        self.wait_ready_polling(url, deadline, READY_POLL).await
    }

    /// [`Server::wait_ready`] asking every `pause` (a start-up time measured to the
    /// millisecond asks every millisecond).
    pub async fn wait_ready_polling(&mut self, url: &str, deadline: Instant, pause: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let last = match probe(url, READY_PATH, PROBE_TIMEOUT).await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("{url}{READY_PATH} answers {status}"),
                Err(e) => format!("no answer at {url}{READY_PATH}: {e}"),
            };
            if let Ok(Some(status)) = self.try_wait() {
                return Err(Error::Exited {
                    name: self.spec.name.clone(),
                    status,
                    log: self.spec.log.clone(),
                    tail: self.log_tail(TAIL_LINES),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NotReady {
                    name: self.spec.name.clone(),
                    waited: now - started,
                    last,
                    log: self.spec.log.clone(),
                    tail: self.log_tail(TAIL_LINES),
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
        }
    }

    /// The whole log (empty if it cannot be read).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.spec.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, indented and without terminal colours, for an error
    /// message.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.spec.log, lines)
    }
}

impl Drop for Server {
    /// A failing test or benchmark must not leave its nodes running.
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of the file at `path`, indented and without terminal colours.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => strip_ansi(&String::from_utf8_lossy(&bytes)),
        Err(e) => return format!("    (cannot read it: {e})"),
    };
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "    (empty)".into();
    }
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which the logs use for colour.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_indented_and_colourless() {
        assert_eq!(strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m x"), "time ERROR x");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("n1.log");
        std::fs::write(&log, "one\ntwo\n\u{1b}[31mthree\u{1b}[0m\n").unwrap();
        assert_eq!(log_tail(&log, 2), "    two\n    three");
        std::fs::write(&log, "").unwrap();
        assert_eq!(log_tail(&log, 2), "    (empty)");
        assert!(log_tail(&dir.path().join("none"), 2).starts_with("    (cannot read it: "));
    }
}
