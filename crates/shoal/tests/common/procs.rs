//! Nodes as real `shoal server` processes, for tests where a SIGKILL (or a clock of its
//! own) is the point: the test-facing side of the one process harness
//! (`shoal_testkit::procs`), which starts, probes, signals and kills the processes.

use super::config_text;
use serde_json::Value;
use shoal_testkit::procs::{Server, Spec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

pub struct Proc {
    pub id: String,
    /// The process: `child.id()` is its pid; dropping it SIGKILLs a process still running.
    pub child: Server,
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
        // Behind a pooler in transaction mode, the harness goes past it as the node's sessions do.
        let direct = env.iter().find(|(k, _)| *k == "SHOAL_STORE_SESSION_URL").map(|(_, v)| v.as_str());
        super::admit_test_token_blocking(direct.unwrap_or(store));
        let log = dir.join(format!("{id}.log"));
        let mut spec = Spec::server(id, SHOAL, &cfg, &log).env("RUST_LOG", "info,chitchat=warn");
        for (k, v) in env {
            spec = spec.env(k, v);
        }
        let child = Server::spawn(spec).unwrap_or_else(|e| panic!("{e}"));
        Proc { id: id.into(), child, url: format!("http://127.0.0.1:{port}"), log }
    }

    pub fn logs(&self) -> String {
        self.child.logs()
    }

    pub fn stop(&mut self) {
        if self.child.running() {
            self.child.terminate().unwrap_or_else(|e| panic!("{e}"));
            let status = self.child.wait().unwrap();
            assert!(status.success(), "{} did not stop cleanly: {status}\n{}", self.id, self.logs());
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
    let http = super::http();
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
    if let Err(e) = p.child.wait_ready(&p.url, deadline).await {
        panic!("{e}\n--- the whole log of {}:\n{}", p.id, p.logs());
    }
}
