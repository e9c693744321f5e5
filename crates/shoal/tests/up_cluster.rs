//! `shoal up --nodes N`: a local cluster of real `shoal server` processes, started, used and
//! stopped by one command, leaving no process behind however it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// A `shoal up` process with its output in files (no pipe to fill up and block it).
struct Up {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    args: Vec<String>,
}

impl Up {
    fn start(dir: &Path, args: &[&str]) -> Up {
        let stdout = dir.join("up.stdout");
        let stderr = dir.join("up.stderr");
        let child = Command::new(SHOAL)
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Up { child, stdout, stderr, args: args.iter().map(|a| a.to_string()).collect() }
    }

    fn output(&self) -> (String, String) {
        (std::fs::read_to_string(&self.stdout).unwrap(), std::fs::read_to_string(&self.stderr).unwrap())
    }

    /// Everything needed to see why a check failed: the command, its output, the node logs.
    fn explain(&self) -> String {
        let (out, err) = self.output();
        let mut text = format!("$ shoal {}\n--- stdout\n{out}--- stderr\n{err}", self.args.join(" "));
        for node in nodes(&out) {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            text += &format!("--- {} ({})\n{log}", node.id, node.log.display());
        }
        text
    }

    /// Waits for it to exit, killing it (and failing) after `timeout`.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("shoal up did not exit within {timeout:?}\n{}", self.explain());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // Its nodes die with it (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One of the lines `shoal up` prints per node once the cluster is up.
#[derive(Debug)]
struct NodeLine {
    id: String,
    url: String,
    pid: i32,
    log: PathBuf,
}

/// Parses the node lines: `  n1  http://127.0.0.1:40001  pid 1234     log /path/n1/server.log`.
fn nodes(stdout: &str) -> Vec<NodeLine> {
    stdout
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [id, url, "pid", pid, "log", log] if line.starts_with("  n") => Some(NodeLine {
                    id: id.to_string(),
                    url: url.to_string(),
                    pid: pid.parse().ok()?,
                    log: PathBuf::from(log),
                }),
                _ => None,
            }
        })
        .collect()
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// The scriptable form: three processes come up as one cluster, run the example job, and all
/// stop, each releasing its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_the_example_job_and_all_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let started = Instant::now();
    let mut up = Up::start(
        dir.path(),
        &[
            "up",
            "--nodes",
            "3",
            "--data-dir",
            &data_arg,
            "--listen",
            "127.0.0.1:0",
            "--run",
            "jobs/orders-report.toml",
            "--exit",
        ],
    );
    let status = tokio::task::block_in_place(|| up.wait(Duration::from_secs(120)));
    let took = started.elapsed();
    assert!(status.success(), "{status}\n{}", up.explain());
    let (out, err) = up.output();
    let lines = nodes(&out);
    let ids: Vec<&str> = lines.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"], "{}", up.explain());
    let mut urls: Vec<&str> = lines.iter().map(|n| n.url.as_str()).collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 3, "distinct URLs\n{}", up.explain());
    assert!(urls.iter().all(|u| u.starts_with("http://127.0.0.1:") && !u.ends_with(":0")), "{}", up.explain());
    assert!(out.contains("total: 9 orders"), "{}", up.explain());
    assert!(err.contains(" succeeded on node n"), "the node that ran the job is shown\n{}", up.explain());
    for n in &lines {
        assert!(!alive(n.pid), "node {} (pid {}) outlived shoal up\n{}", n.id, n.pid, up.explain());
        assert_eq!(n.log, data.join(&n.id).join("server.log"));
        assert!(out.contains(&format!("node {} stopped\n", n.id)), "{}", up.explain());
    }
    assert!(data.join("sandboxes/examples/out/report-2026-11-20.csv").exists());
    // One key for job secrets, private, named by every node's configuration.
    let key = data.join("secrets.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600);
    for id in ["n1", "n2", "n3"] {
        let config = std::fs::read_to_string(data.join(id).join("shoal.toml")).unwrap();
        assert!(config.contains(&format!("secrets_key_file = {:?}", key.display().to_string())), "{config}");
    }

    let store = shoal_store::Store::open(&format!("sqlite://{}/shoal.db", data.display()), 1).await.unwrap();
    let rows = store.list_nodes().await.unwrap();
    let states: Vec<(&str, &str)> = rows.iter().map(|r| (r.id.as_str(), r.state.as_str())).collect();
    assert_eq!(states, [("n1", "stopped"), ("n2", "stopped"), ("n3", "stopped")], "{}", up.explain());
    eprintln!("shoal up --nodes 3 ... --exit took {took:?}");
}

/// Ctrl-C to `up` alone (not its process group, as a terminal would): it stops both nodes
/// cleanly and exits 0.
#[test]
fn ctrl_c_stops_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &["up", "--nodes", "2", "--listen", "127.0.0.1:0"]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let (out, _) = up.output();
        if nodes(&out).len() == 2 && out.contains("serving until Ctrl-C") {
            break;
        }
        if let Some(status) = up.child.try_wait().unwrap() {
            panic!("shoal up exited early with {status}\n{}", up.explain());
        }
        assert!(Instant::now() < deadline, "timed out waiting for the node lines\n{}", up.explain());
        std::thread::sleep(Duration::from_millis(50));
    }
    let up_after = started.elapsed();
    let (out, _) = up.output();
    let lines = nodes(&out);
    // Data went to the default folder under the working directory.
    assert_eq!(lines[0].log, dir.path().canonicalize().unwrap().join(".shoal/n1/server.log"));
    for n in &lines {
        assert!(alive(n.pid), "{}", up.explain());
        let status = ready_status(&n.url);
        assert_eq!(status, 200, "{} at {} is ready\n{}", n.id, n.url, up.explain());
    }

    unsafe { libc::kill(up.child.id() as i32, libc::SIGINT) };
    let status = up.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", up.explain());
    for n in &lines {
        assert!(!alive(n.pid), "node {} (pid {}) outlived shoal up\n{}", n.id, n.pid, up.explain());
    }
    let (out, _) = up.output();
    assert!(out.contains("node n1 stopped\n") && out.contains("node n2 stopped\n"), "{}", up.explain());
    eprintln!("shoal up --nodes 2 was up after {up_after:?}, stopped after {:?}", started.elapsed());
}

/// The status of a node's `GET /api/v1/health/ready`, over a plain socket so that the Ctrl-C
/// test needs no async runtime.
fn ready_status(url: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /api/v1/health/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn run_fail(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(SHOAL).args(args).current_dir(dir).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_arguments_fail_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_fail(dir.path(), &["up", "--nodes", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--nodes") && err.contains("a cluster needs at least one node"), "{err}");

    let (code, err) = run_fail(dir.path(), &["up", "--nodes", "2", "--listen", "localhost"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("error: --listen `localhost` is not an address with a port"), "{err}");

    let (code, err) = run_fail(dir.path(), &["up", "--nodes", "3", "--listen", "127.0.0.1:65534"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("leaves no room for 3 nodes"), "{err}");
}

/// A node that cannot start (its port is taken) fails the whole start with that node's log,
/// and the node that did start is stopped.
#[test]
fn a_node_that_cannot_start_fails_up_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut up = Up::start(dir.path(), &["up", "--nodes", "2", "--listen", &listen]);
    let status = up.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{}", up.explain());
    let (out, err) = up.output();
    // n1 cannot have the port; n2, on the next one, most likely can (if not, it is the one named).
    assert!(err.contains("error: node n") && err.contains(" exited while starting"), "{}", up.explain());
    assert!(err.contains("cannot listen on 127.0.0.1:"), "the log's tail is shown\n{}", up.explain());
    // Every node started was stopped: its pid, printed at start, is gone.
    let pids: Vec<i32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("starting n")?.split("(pid ").nth(1)?.split(',').next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{}", up.explain());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived shoal up\n{}", up.explain());
    }
    drop(taken);
}
