//! Integration tests of the runner against real processes: output, exit statuses, process
//! group cleanup on every path, and cleanup when the shoal process itself is SIGKILLed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_runner::{Error, Exit, Launcher, OutputChunk, RunningChild, SpawnSpec, Stream};
use tokio::sync::mpsc::Receiver;

/// Generous bound for things that should happen at once, so a loaded machine does not
/// fail the suite; fast paths finish far sooner.
const SOON: Duration = Duration::from_secs(5);

fn testbin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal-runner-testbin"))
}

fn launcher() -> Launcher {
    Launcher::new(testbin()).expect("launcher starts")
}

fn sh(script: &str, cwd: &Path) -> SpawnSpec {
    SpawnSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        cwd: cwd.to_owned(),
        env: Vec::new(),
        kill_grace: Duration::from_secs(10),
        deadline_file: None,
    }
}

/// Everything received so far on a job's output channel.
struct Output {
    rx: Receiver<OutputChunk>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    closed: bool,
}

impl Output {
    fn of(child: &mut RunningChild) -> Output {
        Output {
            rx: child.take_output().expect("output not yet taken"),
            stdout: Vec::new(),
            stderr: Vec::new(),
            closed: false,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Receives chunks until `done` holds or the channel closes; panics after `within`.
    async fn until(&mut self, within: Duration, done: impl Fn(&Output) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self) {
            assert!(!self.closed, "output closed first; stdout {:?} stderr {:?}", self.stdout(), self.stderr());
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(chunk)) => {
                    assert!(!chunk.data.is_empty(), "empty chunk");
                    match chunk.stream {
                        Stream::Stdout => self.stdout.extend_from_slice(&chunk.data),
                        Stream::Stderr => self.stderr.extend_from_slice(&chunk.data),
                    }
                }
                Ok(None) => self.closed = true,
                Err(_) => panic!("timed out; stdout so far {:?} stderr so far {:?}", self.stdout(), self.stderr()),
            }
        }
    }

    /// Receives everything until the channel closes.
    async fn read_to_close(&mut self) {
        self.until(SOON, |o| o.closed).await;
    }

    /// Waits for the first complete stdout line, a pid the job printed.
    async fn first_pid(&mut self) -> i32 {
        self.until(SOON, |o| o.stdout.contains(&b'\n')).await;
        let text = self.stdout();
        let line = text.lines().next().unwrap_or_default();
        line.trim().parse().expect("job printed a pid")
    }
}

async fn wait_soon(child: &mut RunningChild) -> Exit {
    tokio::time::timeout(SOON, child.wait()).await.expect("job ended in time").expect("wait works")
}

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp.
fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Running, in the sense that matters here: exists and is not a zombie.
fn alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
}

/// Live processes in a process group.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((s, _, g)) if g == pgid && s != 'Z' && s != 'X'))
        .collect()
}

/// Polls `cond` until it holds or `within` passes; returns whether it held.
async fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn blocking_eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn output_arrives_in_order_and_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; \
                  while [ ! -e go ]; do sleep 0.02; done; echo out3; echo err3 >&2";
    let mut child = launcher().spawn(sh(script, dir.path())).await.unwrap();
    let mut out = Output::of(&mut child);

    // The lines must arrive while the job is still blocked waiting for `go`.
    out.until(SOON, |o| o.stdout == b"out1\nout2\n" && o.stderr == b"err1\nerr2\n").await;
    assert_eq!(child.try_wait().unwrap(), None, "job must still be running");

    std::fs::write(dir.path().join("go"), b"").unwrap();
    out.read_to_close().await;
    assert_eq!(out.stdout(), "out1\nout2\nout3\n");
    assert_eq!(out.stderr(), "err1\nerr2\nerr3\n");
    assert_eq!(wait_soon(&mut child).await, Exit::Code(0));
}

#[tokio::test]
async fn large_output_keeps_order_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let script = "seq 1 100000; seq 100001 150000 >&2";
    let mut child = launcher().spawn(sh(script, dir.path())).await.unwrap();
    let mut out = Output::of(&mut child);
    out.until(Duration::from_secs(15), |o| o.closed).await;

    let expected = |range: std::ops::RangeInclusive<u32>| -> String { range.map(|n| format!("{n}\n")).collect() };
    assert!(out.stdout() == expected(1..=100_000), "stdout out of order");
    assert!(out.stderr() == expected(100_001..=150_000), "stderr out of order");
    assert_eq!(wait_soon(&mut child).await, Exit::Code(0));
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = launcher();
    for code in [0, 1, 3, 255] {
        let mut child = launcher.spawn(sh(&format!("exit {code}"), dir.path())).await.unwrap();
        let exit = wait_soon(&mut child).await;
        assert_eq!(exit, Exit::Code(code));
        // Waiting again returns the same answer.
        assert_eq!(wait_soon(&mut child).await, exit);
    }
    assert_eq!(Exit::Code(3).to_string(), "exit code 3");
}

#[tokio::test]
async fn death_by_signal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = launcher();
    // TERM and HUP are signals the supervisor itself handles, SEGV would dump core: all
    // must still come out as the job's own signal.
    for (name, sig) in
        [("KILL", libc::SIGKILL), ("TERM", libc::SIGTERM), ("HUP", libc::SIGHUP), ("SEGV", libc::SIGSEGV)]
    {
        let mut child = launcher.spawn(sh(&format!("kill -{name} $$"), dir.path())).await.unwrap();
        assert_eq!(wait_soon(&mut child).await, Exit::Signal(sig), "SIG{name}");
    }
    assert_eq!(Exit::Signal(9).to_string(), "signal 9 (SIGKILL)");
}

#[tokio::test]
async fn terminate_kills_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = launcher().spawn(sh("sleep 100 & echo $!; wait", dir.path())).await.unwrap();
    let mut out = Output::of(&mut child);
    let grandchild = out.first_pid().await;
    assert!(alive(grandchild));

    let started = Instant::now();
    child.terminate();
    // The shell dies of the SIGTERM itself, well within the 10 s grace.
    assert_eq!(wait_soon(&mut child).await, Exit::Signal(libc::SIGTERM));
    assert!(started.elapsed() < SOON);
    assert!(eventually(SOON, || !alive(grandchild)).await, "background grandchild {grandchild} survived terminate()");
    out.read_to_close().await;
}

#[tokio::test]
async fn terminate_escalates_to_sigkill_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(500);
    let mut spec = sh("trap '' TERM; sleep 100 & echo $!; while :; do sleep 1; done", dir.path());
    spec.kill_grace = grace;
    let mut child = launcher().spawn(spec).await.unwrap();
    let mut out = Output::of(&mut child);
    // The pid is printed after the trap is set, so TERM cannot arrive before it.
    let grandchild = out.first_pid().await;

    let started = Instant::now();
    child.terminate();
    assert_eq!(wait_soon(&mut child).await, Exit::Signal(libc::SIGKILL));
    let took = started.elapsed();
    assert!(took >= grace, "killed after {took:?}, before the grace");
    assert!(eventually(SOON, || !alive(grandchild)).await, "grandchild ignoring TERM survived");
    out.read_to_close().await;
}

#[tokio::test]
async fn kill_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh("trap '' TERM; sleep 100 & echo $!; while :; do sleep 1; done", dir.path());
    spec.kill_grace = Duration::from_secs(60);
    let mut child = launcher().spawn(spec).await.unwrap();
    let mut out = Output::of(&mut child);
    let grandchild = out.first_pid().await;

    let started = Instant::now();
    child.kill();
    assert_eq!(wait_soon(&mut child).await, Exit::Signal(libc::SIGKILL));
    assert!(started.elapsed() < SOON, "kill() waited for the grace");
    assert!(eventually(SOON, || !alive(grandchild)).await);
    out.read_to_close().await;
}

#[tokio::test]
async fn program_that_cannot_start_exits_127() {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("not-executable");
    std::fs::write(&not_executable, b"#!/bin/sh\n").unwrap();
    let not_executable = not_executable.to_string_lossy().into_owned();
    let launcher = launcher();

    for (program, error) in [
        ("/nonexistent/shoal-program".to_owned(), "No such file or directory (os error 2)"),
        ("shoal-no-such-program-on-path".to_owned(), "No such file or directory (os error 2)"),
        (not_executable, "Permission denied (os error 13)"),
    ] {
        let spec = SpawnSpec {
            argv: vec![program.clone(), "arg".into()],
            cwd: dir.path().to_owned(),
            env: Vec::new(),
            kill_grace: Duration::from_secs(1),
            deadline_file: None,
        };
        let mut child = launcher.spawn(spec).await.unwrap();
        let mut out = Output::of(&mut child);
        out.read_to_close().await;
        assert_eq!(wait_soon(&mut child).await, Exit::Code(127));
        assert_eq!(out.stderr(), format!("shoal: cannot start `{program}`: {error}\n"));
        assert_eq!(out.stdout(), "");
    }
}

#[tokio::test]
async fn cwd_and_env_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh(r#"pwd -P; printf '%s\n' "$SHOAL_A" "$SHOAL_B"; [ -n "$PATH" ] && echo inherited"#, dir.path());
    spec.env = vec![("SHOAL_A".into(), "alpha".into()), ("SHOAL_B".into(), "b e t a".into())];
    let mut child = launcher().spawn(spec).await.unwrap();
    let mut out = Output::of(&mut child);
    out.read_to_close().await;
    assert_eq!(wait_soon(&mut child).await, Exit::Code(0));
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(out.stdout(), format!("{}\nalpha\nb e t a\ninherited\n", cwd.display()));
}

#[tokio::test]
async fn bad_specs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = launcher();
    let mut spec = sh("true", dir.path());
    spec.argv.clear();
    assert!(matches!(launcher.spawn(spec).await, Err(Error::EmptyArgv)));
    let missing = dir.path().join("missing");
    let result = launcher.spawn(sh("true", &missing)).await;
    assert!(matches!(result, Err(Error::Cwd { path }) if path == missing));
}

#[tokio::test]
async fn grandchild_left_behind_is_killed_when_main_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = launcher().spawn(sh("sleep 100 & echo $!", dir.path())).await.unwrap();
    let mut out = Output::of(&mut child);
    let grandchild = out.first_pid().await;
    assert_eq!(wait_soon(&mut child).await, Exit::Code(0));
    assert!(eventually(SOON, || !alive(grandchild)).await, "grandchild {grandchild} outlived the job");
    // The grandchild held the stdout pipe; its death lets the output end.
    out.read_to_close().await;
}

#[tokio::test]
async fn dropping_the_handle_kills_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = launcher().spawn(sh("sleep 100 & echo $!; wait", dir.path())).await.unwrap();
    let mut out = Output::of(&mut child);
    let grandchild = out.first_pid().await;
    let supervisor = i32::try_from(child.pid()).unwrap();
    drop(child);
    assert!(eventually(SOON, || !alive(grandchild) && !alive(supervisor)).await);
    out.read_to_close().await;
}

/// PR_SET_PDEATHSIG follows the thread that forked the supervisor. Spawning from a thread
/// that then exits must not kill the job: the launcher's own thread does the fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_survives_the_exit_of_the_thread_that_asked_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = launcher();
    let runtime = tokio::runtime::Handle::current();
    let spec = sh("echo started; while [ ! -e go ]; do sleep 0.02; done; echo done", dir.path());
    // The asking thread stays until the job has printed, which proves the supervisor has
    // armed PR_SET_PDEATHSIG (it does so before starting the job), and only then exits.
    let asker = std::thread::spawn({
        let launcher = launcher.clone();
        move || {
            runtime.block_on(async {
                let mut child = launcher.spawn(spec).await.unwrap();
                let mut out = Output::of(&mut child);
                out.until(SOON, |o| o.stdout == b"started\n").await;
                (child, out)
            })
        }
    });
    let (mut child, mut out) = asker.join().unwrap();
    // Round trip through the launcher thread so a stray SIGHUP would have landed by now.
    let mut probe = launcher.spawn(sh("true", dir.path())).await.unwrap();
    assert_eq!(wait_soon(&mut probe).await, Exit::Code(0));

    std::fs::write(dir.path().join("go"), b"").unwrap();
    out.read_to_close().await;
    assert_eq!(wait_soon(&mut child).await, Exit::Code(0));
    assert_eq!(out.stdout(), "started\ndone\n");
}

/// SIGKILLs a process on drop, so a failing test does not leave its `parent` running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The testbin's `parent` mode plays shoal: it spawns a job and waits. SIGKILLing it alone
/// must take the supervisor and the job's whole tree down.
#[test]
fn parent_sigkill_kills_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let mut parent = KillOnDrop(
        std::process::Command::new(testbin())
            .args(["parent", "--", "sh", "-c", "sleep 300 & echo $$ $! > pids.tmp; mv pids.tmp pids; sleep 300"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    let stdout = parent.0.stdout.take().unwrap();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    let supervisor: i32 = line.trim().parse().expect("parent printed the supervisor pid");

    assert!(blocking_eventually(SOON, || pids_file.exists()), "job did not start");
    let pids = std::fs::read_to_string(&pids_file).unwrap();
    let pids: Vec<i32> = pids.split_whitespace().map(|p| p.parse().unwrap()).collect();
    let (job, background) = (pids[0], pids[1]);
    assert!(alive(supervisor) && alive(job) && alive(background));
    // The job leads its own group, distinct from the supervisor's.
    assert_eq!(proc_stat(job).map(|s| s.2), Some(job));
    assert_ne!(proc_stat(supervisor).map(|s| s.2), Some(job));
    assert!(group_members(job).len() >= 2);

    // SIGKILL the parent alone, not its group.
    let parent_pid = i32::try_from(parent.0.id()).unwrap();
    // SAFETY: plain kill(2) of our own unreaped child.
    assert_eq!(unsafe { libc::kill(parent_pid, libc::SIGKILL) }, 0);
    parent.0.wait().unwrap();

    let all_gone = || !alive(supervisor) && !alive(job) && !alive(background) && group_members(job).is_empty();
    assert!(
        blocking_eventually(SOON, all_gone),
        "survivors: supervisor alive {}, group {:?}",
        alive(supervisor),
        group_members(job)
    );
}

#[tokio::test]
async fn sigkill_of_the_supervisor_takes_the_job_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = launcher().spawn(sh("echo $$; while :; do sleep 1; done", dir.path())).await.unwrap();
    let mut out = Output::of(&mut child);
    let job = out.first_pid().await;
    assert!(alive(job));
    unsafe { libc::kill(child.pid() as i32, libc::SIGKILL) };
    assert_eq!(wait_soon(&mut child).await, Exit::Signal(libc::SIGKILL));
    assert!(eventually(SOON, || !alive(job)).await, "the job outlived its supervisor");
    out.read_to_close().await;
}

/// A frozen node cannot kill its jobs; the supervisor does, once the lease deadline the node
/// last published has passed, and only then.
#[tokio::test]
async fn the_job_dies_when_the_nodes_lease_deadline_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lease-deadline");
    let launcher = launcher();
    shoal_runner::deadline::write(&file, shoal_runner::deadline::boottime_ms() + 60_000).unwrap();
    let mut spec = sh("echo $$ > pid; sleep 600", dir.path());
    spec.deadline_file = Some(file.clone());
    let mut child = launcher.spawn(spec).await.unwrap();
    let _out = Output::of(&mut child);
    let pid_file = dir.path().join("pid");
    let started = std::time::Instant::now();
    while !pid_file.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "job did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A deadline in the future keeps it alive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "killed before the deadline");
    // The node stops renewing: the deadline passes.
    shoal_runner::deadline::write(&file, shoal_runner::deadline::boottime_ms()).unwrap();
    let killed_at = std::time::Instant::now();
    let exit = wait_soon(&mut child).await;
    assert_eq!(exit, Exit::Signal(libc::SIGKILL));
    assert!(killed_at.elapsed() < Duration::from_secs(2), "{:?}", killed_at.elapsed());
}

/// A spec whose environment names `root` as the sandbox root, as the engine's does.
fn in_sandbox(script: &str, cwd: &Path, root: &Path) -> SpawnSpec {
    let mut spec = sh(script, cwd);
    spec.env = vec![(shoal_runner::SANDBOX_ROOT_ENV.into(), root.display().to_string())];
    spec
}

#[tokio::test]
async fn a_workdir_swapped_for_a_symlink_out_of_the_sandbox_is_refused_at_spawn() {
    let base = tempfile::tempdir().unwrap();
    let (root, outside) = (base.path().join("sandbox"), base.path().join("outside"));
    std::fs::create_dir_all(root.join("work")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let launcher = launcher();

    // As submitted: a real folder inside the sandbox. The job runs there.
    let mut child = launcher.spawn(in_sandbox("pwd -P; touch marker", &root.join("work"), &root)).await.unwrap();
    let mut out = Output::of(&mut child);
    out.read_to_close().await;
    assert_eq!(wait_soon(&mut child).await, Exit::Code(0));
    assert_eq!(out.stdout(), format!("{}\n", root.join("work").canonicalize().unwrap().display()));

    // Swapped after submission for a symlink that leads out: the job is not started.
    std::fs::remove_dir_all(root.join("work")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("work")).unwrap();
    let result = launcher.spawn(in_sandbox("touch marker", &root.join("work"), &root)).await;
    match result {
        Err(e @ Error::OutsideSandbox { .. }) => {
            let text = e.to_string();
            assert!(text.contains("outside the sandbox root") && text.contains("not started"), "{text}");
        }
        other => panic!("expected OutsideSandbox, got {other:?}"),
    }
    // Through a deeper symlinked folder, too.
    std::fs::create_dir_all(outside.join("deep")).unwrap();
    let result = launcher.spawn(in_sandbox("touch marker", &root.join("work/deep"), &root)).await;
    assert!(matches!(result, Err(Error::OutsideSandbox { .. })), "{result:?}");
    assert!(!outside.join("marker").exists() && !outside.join("deep/marker").exists(), "the job ran outside");

    // Without a sandbox root in the environment there is nothing to confine to.
    let mut child = launcher.spawn(sh("true", &root.join("work"))).await.unwrap();
    assert_eq!(wait_soon(&mut child).await, Exit::Code(0));
}

/// The supervisor checks the directory it really is in right before it starts the job, so
/// a symlink swapped in between the launcher's check and the start cannot lead it out.
#[test]
fn the_supervisor_refuses_a_working_directory_outside_the_sandbox() {
    let base = tempfile::tempdir().unwrap();
    let (root, outside) = (base.path().join("sandbox"), base.path().join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("work")).unwrap();
    let run = |cwd: &Path| {
        std::process::Command::new(testbin())
            .current_dir(cwd)
            .args(["__supervise", "--parent-pid", &std::process::id().to_string(), "--grace-ms", "100"])
            .args(["--sandbox-root", &root.display().to_string(), "--", "sh", "-c", "echo ran; touch marker"])
            .output()
            .unwrap()
    };
    let out = run(&root.join("work"));
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("outside the sandbox root") && stderr.contains("not started"), "{stderr}");
    assert!(out.stdout.is_empty() && !outside.join("marker").exists(), "the job ran outside: {out:?}");

    let out = run(&root);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
}
