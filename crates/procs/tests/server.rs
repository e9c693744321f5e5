//! The harness on stand-in processes (`sh`), so that its signals, stops, restarts, logs and
//! readiness errors are proven without building a node.

use shoal_procs::{Error, Server, Spec};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

fn sh(dir: &Path, name: &str, script: &str) -> Spec {
    Spec::new(name, "sh", [OsString::from("-c"), script.into()], dir.join(format!("{name}.log")))
}

/// Polls `f` until it holds, failing with `what` after 10 s.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(1);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The state letter of `/proc/<pid>/stat` (`S`, `T` for stopped, `Z`), if the process exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().next()?.chars().next()
}

#[test]
fn signals_reach_the_process_and_a_restart_appends_to_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Server::spawn(sh(dir.path(), "n1", "echo started $$; exec sleep 600").env("X", "1")).unwrap();
    let first = p.id();
    until("the first start to log", || p.logs().contains(&format!("started {first}")));
    assert_eq!(p.name(), "n1");

    p.freeze().unwrap();
    until("SIGSTOP to stop it", || state(first) == Some('T'));
    p.thaw().unwrap();
    until("SIGCONT to resume it", || state(first) != Some('T'));

    assert!(matches!(p.restart(), Err(Error::StillRunning { .. })), "a running process is not started twice");
    let status = p.kill().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    assert!(!p.running());
    assert!(matches!(p.freeze(), Err(Error::NotRunning { .. })), "a reaped pid is never signalled");

    p.restart().unwrap();
    let second = p.id();
    assert_ne!(first, second);
    until("the second start to log", || p.logs().contains(&format!("started {second}")));
    assert!(p.logs().contains(&format!("started {first}")), "the first run's log is kept: {}", p.logs());
    drop(p);
    assert!(!matches!(state(second), Some(s) if s != 'Z'), "dropping a Server kills its process");
}

#[tokio::test]
async fn stop_is_clean_within_the_grace_and_a_kill_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut clean =
        Server::spawn(sh(dir.path(), "clean", "trap 'exit 0' TERM; echo trapped; while :; do sleep 0.05; done"))
            .unwrap();
    // A SIGTERM before the trap is set would kill the shell outright.
    until("the clean process to set its trap", || clean.logs().contains("trapped"));
    assert!(clean.stop(Duration::from_secs(10)).await.unwrap().success());
    // Stopping what has stopped answers how it ended.
    assert!(clean.stop(Duration::from_secs(10)).await.unwrap().success());

    let mut stubborn = Server::spawn(sh(dir.path(), "stubborn", "trap '' TERM; echo deaf; exec sleep 600")).unwrap();
    until("the stubborn process to ignore TERM", || stubborn.logs().contains("deaf"));
    let e = stubborn.stop(Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(e, Error::DidNotStop { .. }), "{e}");
    assert!(e.to_string().contains("    deaf"), "the error quotes the log: {e}");
    assert!(!stubborn.running(), "killed past the grace");
}

#[tokio::test]
async fn readiness_fails_with_the_log_when_the_process_exits_or_the_deadline_passes() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");

    let mut dead = Server::spawn(sh(dir.path(), "dead", "echo cannot listen on 127.0.0.1 >&2; exit 3")).unwrap();
    let e = dead.wait_ready(&url, Instant::now() + Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(e, Error::Exited { .. }), "{e}");
    assert!(e.to_string().contains("dead exited (exit status: 3) before it was ready"), "{e}");
    assert!(e.to_string().contains("    cannot listen on 127.0.0.1"), "stderr is in the log: {e}");

    let mut slow = Server::spawn(sh(dir.path(), "slow", "exec sleep 600")).unwrap();
    let e = slow.wait_ready(&url, Instant::now() + Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(e, Error::NotReady { .. }), "{e}");
    assert!(e.to_string().contains(&format!("no answer at {url}/health/ready")), "{e}");
}
