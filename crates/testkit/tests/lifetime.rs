//! A server cannot outlive its test process, and what it leaves behind is swept.
//!
//! Alone in its own test binary, without libtest's harness (`harness = false`): the binary
//! re-runs itself as the child that starts a server and dies, then checks the aftermath, so
//! this process starts its own server only after the child's is gone.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_testkit::{postgres, wait_until};

const CHILD_ENV: &str = "SHOAL_TESTKIT_LIFETIME_CHILD";

/// The child: starts a server, reports it, then dies without any exit-time cleanup, as a
/// killed test process would.
fn child_starts_server_then_dies() {
    let pg = postgres();
    let pid_file = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap();
    println!("SERVER {pid} {}", pg.data_dir().parent().unwrap().display());
    use std::io::Write as _;
    std::io::stdout().flush().unwrap();
    // SAFETY: ends the process on the spot; nothing needs to run after.
    unsafe { libc::_exit(0) };
}

/// Alive and not a zombie: a zombie has exited, whoever is to reap it.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

fn server_dies_with_its_process() {
    let out = Command::new(std::env::current_exe().unwrap()).env(CHILD_ENV, "1").stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SERVER "))
        .unwrap_or_else(|| panic!("child printed no SERVER line:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let (pid, dir) = line.split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    let dir = PathBuf::from(dir);

    wait_until("the orphaned server to shut down", Duration::from_secs(30), || !alive(pid));
    assert!(dir.exists(), "a killed process cannot clean up after itself");

    // Our own first server sweeps directories of processes that are gone.
    postgres();
    assert!(!dir.exists(), "{} was not swept", dir.display());
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_starts_server_then_dies();
        return;
    }
    // `cargo test -- --list` and filters: this binary has one test.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("server_dies_with_its_process: test");
        return;
    }
    println!("running 1 test");
    server_dies_with_its_process();
    println!("test server_dies_with_its_process ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
