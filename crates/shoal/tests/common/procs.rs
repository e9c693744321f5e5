//! Nodes as real `shoal server` processes, for tests where a SIGKILL (or a clock of its
//! own) is the point.

use super::config_text;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

pub struct Proc {
    pub id: String,
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn start_with_lease(dir: &Path, store: &str, id: &str, lease: &str) -> Proc {
        Proc::start_with_env(dir, store, id, lease, "", &[])
    }

    /// A node whose config gets `extra` appended, with more environment variables (such as
    /// libfaketime's `LD_PRELOAD` and `FAKETIME`).
    pub fn start_with_env(dir: &Path, store: &str, id: &str, lease: &str, extra: &str, env: &[(&str, String)]) -> Proc {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = config_text(dir, store, extra)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
            .replace("node_id = \"n1\"", &format!("node_id = \"{id}\""))
            .replace("/data\"", &format!("/data-{id}\""))
            .replace("lease_ttl = \"2s\"", &format!("lease_ttl = \"{lease}\""));
        let cfg = dir.join(format!("{id}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let log = dir.join(format!("{id}.log"));
        let child = Command::new(SHOAL)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["server", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info,chitchat=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { id: id.into(), child, url: format!("http://127.0.0.1:{port}"), log }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let status = self.child.wait().unwrap();
            assert!(status.success(), "{} did not stop cleanly: {status}\n{}", self.id, self.logs());
        }
    }
}

impl Drop for Proc {
    /// A failing test must not leave its nodes running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Starts `ids` as processes on one store, waits until each is ready and every node's gossip
/// sees every other alive.
pub async fn start_cluster(dir: &Path, store: &str, ids: &[&str], lease: &str) -> Vec<Proc> {
    let procs: Vec<Proc> = ids.iter().map(|id| Proc::start_with_lease(dir, store, id, lease)).collect();
    wait_cluster(procs).await
}

/// Waits until each process is ready and every one's gossip sees them all alive.
pub async fn wait_cluster(mut procs: Vec<Proc>) -> Vec<Proc> {
    let deadline = Instant::now() + Duration::from_secs(40);
    for p in procs.iter_mut() {
        wait_ready(p, deadline).await;
    }
    let http = reqwest::Client::new();
    for p in &procs {
        loop {
            let nodes = get(&http, &format!("{}/api/v1/nodes", p.url)).await.unwrap_or_default();
            let alive = nodes["nodes"].as_array().map_or(0, |a| a.iter().filter(|n| n["gossip"] == "alive").count());
            if alive == procs.len() {
                break;
            }
            assert!(Instant::now() < deadline, "gossip did not form on {}: {nodes}\n{}", p.id, p.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    procs
}

/// Waits until a process answers ready.
pub async fn wait_ready(p: &mut Proc, deadline: Instant) {
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http.get(format!("{}/health/ready", p.url)).send().await {
            if r.status() == 200 {
                return;
            }
        }
        if let Ok(Some(s)) = p.child.try_wait() {
            panic!("{} exited with {s} before it was ready:\n{}", p.id, p.logs());
        }
        assert!(Instant::now() < deadline, "{} not ready in time:\n{}", p.id, p.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
