//! `shoal bench failover | cutoff | forwarding | soak`, and `throughput --nodes N` for N > 1:
//! the cluster benchmarks behind BENCHMARKS.md.
//!
//! - **failover**: real `shoal server` processes on one store; the process running an attempt
//!   is SIGKILLed and the time until the next attempt's first heartbeat is measured from the
//!   heartbeats themselves (each line carries its fencing token and a nanosecond timestamp).
//! - **cutoff**: an in-process node reaches PostgreSQL through a TCP proxy that is cut; how long
//!   before its lease ends it kills its child, and how long after the lease ends another node
//!   starts the next attempt, both on the store's clock.
//! - **throughput --nodes N**: N in-process nodes on one store, submissions round-robin.
//! - **forwarding**: a file of a `local` sandbox read directly from its holder and through
//!   another node, which forwards the request, interleaved.
//! - **soak**: real processes under CPU pressure with a steady load; every node's view of the
//!   others is sampled, and any node seen dead or lost while its process is alive counts.
//!
//! Every figure is measured here, never estimated; summaries give median, p90, p99 and max.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::bench::{count_final, percentile, Common};

/// Parses `--lease 10s`, `--duration 10m` and the like.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    shoal_core::duration::parse(text)
}

/// The failover benchmark's options.
#[derive(clap::Args, Debug)]
pub(crate) struct FailoverArgs {
    /// Store URL every node shares (PostgreSQL or SQLite)
    #[arg(long)]
    store: String,
    /// How many `shoal server` processes
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How many SIGKILLs (one per round)
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// The nodes' lease; long, so that only the early path (gossip + store session) is fast
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease: Duration,
}

/// The store cut-off benchmark's options.
#[derive(clap::Args, Debug)]
pub(crate) struct CutoffArgs {
    /// PostgreSQL URL (node A reaches it through a proxy the bench cuts)
    #[arg(long)]
    store: String,
    /// How many cuts
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The nodes' lease
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    lease: Duration,
}

/// The forwarding benchmark's options.
#[derive(clap::Args, Debug)]
pub(crate) struct ForwardingArgs {
    /// Store URL; default: a fresh SQLite file in a temporary folder
    #[arg(long)]
    store: Option<String>,
    /// Requests of each kind (direct, forwarded), after the warm-up
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Unmeasured requests of each kind first
    #[arg(long, default_value_t = 200)]
    warmup: usize,
}

/// The schedule lateness benchmark's options.
#[derive(clap::Args, Debug)]
pub(crate) struct SchedulesArgs {
    /// Store URL every node shares (PostgreSQL or SQLite)
    #[arg(long)]
    store: String,
    /// How many `shoal server` processes
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Schedules firing every second; several comma-separated counts run one after another
    /// on the same cluster (to find how many a cluster carries)
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    schedules: Vec<usize>,
    /// How long each count is measured, after a warm-up of 5 s
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Each node's `executor.slots` (no-op executions are claimed up to this many at once)
    #[arg(long, default_value_t = 64)]
    slots: u32,
}

/// The file event benchmark's options.
#[derive(clap::Args, Debug)]
pub(crate) struct FilesArgs {
    /// Store URL every node shares (PostgreSQL or SQLite)
    #[arg(long)]
    store: String,
    /// How many `shoal server` processes
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Files dropped, one every `--every`
    #[arg(long, default_value_t = 200)]
    files: usize,
    /// Time between two files
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    every: Duration,
    /// The listener's settle time
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    settle: Duration,
}

/// The soak's options.
#[derive(clap::Args, Debug)]
pub(crate) struct SoakArgs {
    /// Store URL every node shares
    #[arg(long)]
    store: String,
    /// How long the load runs, e.g. `10m` or `90s`
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// How many `shoal server` processes
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Threads spinning on the CPU in the bench process
    #[arg(long, default_value_t = 2)]
    burn: usize,
    /// The nodes' lease
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    lease: Duration,
    /// Executions of `sh -c "sleep 0.2"` submitted per second per node (plus one `true` per
    /// second per node)
    #[arg(long, default_value_t = 4)]
    rate: u32,
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

/// "median X ms, p90 X ms, p99 X ms, max X ms" of `v` (sorted here).
fn summary(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(v, 0.5),
        percentile(v, 0.9),
        percentile(v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

/// The same with the minimum first, for margins (where the smallest is the worst case).
fn summary_min(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!("min {:.1} ms, {}", v.first().copied().unwrap_or(f64::NAN), summary(v))
}

fn summary2(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(v, 0.5),
        percentile(v, 0.9),
        percentile(v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

/// A loopback port free right now (bound to port 0, then released).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr().context("cannot read a bound port")?.port())
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0: only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().context("cannot build an HTTP client")
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, Value)> {
    let r = http.post(url).json(body).send().await.with_context(|| format!("POST {url}"))?;
    let status = r.status().as_u16();
    let text = r.text().await.with_context(|| format!("reading the answer to POST {url}"))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

async fn submit(http: &reqwest::Client, base: &str, body: &Value) -> Result<String> {
    let (status, e) = post_json(http, &format!("{base}/api/v1/executions"), body).await?;
    ensure!(status == 201, "submission to {base} failed ({status}): {e}");
    e["id"].as_str().map(str::to_owned).with_context(|| format!("no id in {e}"))
}

async fn create_sandbox(http: &reqwest::Client, base: &str, body: Value) -> Result<()> {
    let (status, v) = post_json(http, &format!("{base}/api/v1/sandboxes"), &body).await?;
    ensure!(status == 201, "cannot create sandbox {body}: ({status}) {v}");
    Ok(())
}

/// Whether every node of `urls` sees every one of `ids` alive in gossip and with a live lease.
async fn cluster_formed(http: &reqwest::Client, urls: &[String], ids: &[String]) -> bool {
    for u in urls {
        let Some(v) = get_json(http, &format!("{u}/api/v1/nodes")).await else { return false };
        let Some(nodes) = v["nodes"].as_array() else { return false };
        let ok = ids
            .iter()
            .all(|id| nodes.iter().any(|n| n["id"] == id.as_str() && n["gossip"] == "alive" && n["state"] != "lost"));
        if !ok {
            return false;
        }
    }
    true
}

async fn wait_cluster(http: &reqwest::Client, urls: &[String], ids: &[String], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !cluster_formed(http, urls, ids).await {
        if Instant::now() > deadline {
            let mut views = String::new();
            for u in urls {
                views.push_str(&format!(
                    "\n{u}: {}",
                    get_json(http, &format!("{u}/api/v1/nodes")).await.unwrap_or_default()
                ));
            }
            bail!("gossip did not show {ids:?} alive on every node within {limit:?}:{views}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_ready(http: &reqwest::Client, url: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = http.get(format!("{url}/health/ready")).send().await {
            if r.status() == 200 {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "{url} was not ready within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_final(state: &Value) -> bool {
    state.as_str().is_some_and(|s| s != "queued" && s != "running")
}

/// Polls `base`'s view of execution `id` until it is final.
async fn wait_final(http: &reqwest::Client, base: &str, id: &str, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let e = get_json(http, &format!("{base}/api/v1/executions/{id}")).await.unwrap_or_default();
        if is_final(&e["state"]) {
            return Ok(e);
        }
        ensure!(Instant::now() < deadline, "execution {id} not final within {limit:?}: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Real `shoal server` processes

/// One `shoal server` process, restartable with the same configuration.
struct Proc {
    id: String,
    url: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Writes node `id`'s configuration (fixed loopback HTTP port, gossip defaults).
    fn new(dir: &Path, store: &str, id: &str, lease: Duration, slots: u32) -> Result<Proc> {
        let port = free_port()?;
        let text = format!(
            "node_id = {id:?}\ndata_dir = {data:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = {store:?}\n[cluster]\nlease_ttl = {lease:?}\n[executor]\nslots = {slots}\n",
            data = dir.join(format!("data-{id}")).display().to_string(),
            lease = shoal_core::duration::format(lease),
        );
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Proc {
            id: id.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            config,
            log: dir.join(format!("{id}.log")),
            child: None,
        })
    }

    fn spawn(&mut self, exe: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = Command::new(exe)
            .args(["server", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} server", exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Whether the process is still running (reaps it if not).
    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL, the process alone (not its group), as a crash would.
    fn kill9(&mut self) -> Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.id))?;
        ensure!(unsafe { libc::kill(pid, libc::SIGKILL) } == 0, "cannot SIGKILL {} (pid {pid})", self.id);
        Ok(())
    }

    /// Reaps a process already killed.
    fn reap(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.wait().with_context(|| format!("waiting for {}", self.id))?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `limit` for a clean exit (SIGKILL after that).
    fn stop(&mut self, limit: Duration) -> Result<()> {
        let Some(mut c) = self.child.take() else { return Ok(()) };
        if matches!(c.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = c.try_wait().with_context(|| format!("waiting for {}", self.id))? {
                ensure!(status.success(), "{} did not stop cleanly ({status}):\n{}", self.id, self.log_tail());
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("{} did not stop within {limit:?} of SIGTERM:\n{}", self.id, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only on an error path: a normal run has stopped every process already.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// N processes on one store, started and seen by each other in gossip.
struct Procs {
    exe: PathBuf,
    procs: Vec<Proc>,
    http: reqwest::Client,
    // Last: the folders outlive the processes (fields drop in order).
    dir: tempfile::TempDir,
}

impl Procs {
    async fn start(store: &str, n: usize, lease: Duration) -> Result<Procs> {
        Procs::start_with_slots(store, n, lease, 8).await
    }

    async fn start_with_slots(store: &str, n: usize, lease: Duration, slots: u32) -> Result<Procs> {
        ensure!(n >= 1, "a cluster benchmark needs at least 1 node");
        let exe = std::env::current_exe().context("cannot find the shoal binary")?;
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        let mut procs = Vec::new();
        for i in 1..=n {
            procs.push(Proc::new(dir.path(), store, &format!("n{i}"), lease, slots)?);
        }
        for p in procs.iter_mut() {
            p.spawn(&exe)?;
        }
        let c = Procs { exe, procs, http: http_client()?, dir };
        for p in &c.procs {
            wait_ready(&c.http, &p.url, Duration::from_secs(60))
                .await
                .with_context(|| format!("{} log:\n{}", p.id, p.log_tail()))?;
        }
        c.wait_formed().await?;
        Ok(c)
    }

    fn urls(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.url.clone()).collect()
    }

    fn ids(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.id.clone()).collect()
    }

    async fn wait_formed(&self) -> Result<()> {
        wait_cluster(&self.http, &self.urls(), &self.ids(), Duration::from_secs(60)).await
    }

    async fn restart(&mut self, i: usize) -> Result<()> {
        self.procs[i].reap()?;
        self.procs[i].spawn(&self.exe)?;
        wait_ready(&self.http, &self.procs[i].url, Duration::from_secs(60))
            .await
            .with_context(|| format!("{} log:\n{}", self.procs[i].id, self.procs[i].log_tail()))?;
        self.wait_formed().await
    }

    fn stop_all(&mut self) -> Result<()> {
        for p in self.procs.iter_mut() {
            p.stop(Duration::from_secs(30))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// failover

/// Attempt 1 beats forever; a later attempt beats once and succeeds. Every beat carries the
/// attempt's fencing token, a nanosecond timestamp and the node. (No braces: job files read
/// `{` as a parameter.)
const BEATING_JOB: &str = r#"command = ["sh", "-c", '''
f=beats-$SHOAL_EXECUTION_ID
if [ "$SHOAL_ATTEMPT" = 1 ]; then
  while true; do echo "$SHOAL_FENCING_TOKEN $(date +%s%N) $SHOAL_NODE_ID" >> $f; sleep 0.02; done
fi
echo "$SHOAL_FENCING_TOKEN $(date +%s%N) $SHOAL_NODE_ID" >> $f
''']
"#;

struct Beat {
    token: i64,
    ns: i128,
    node: String,
}

/// The complete lines of a beats file.
fn read_beats(path: &Path) -> Vec<Beat> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let mut p = l.trim_end().split(' ');
            Some(Beat { token: p.next()?.parse().ok()?, ns: p.next()?.parse().ok()?, node: p.next()?.to_owned() })
        })
        .collect()
}

pub(crate) async fn failover(a: FailoverArgs) -> Result<()> {
    let mut c = Procs::start(&a.store, a.nodes, a.lease).await?;
    let http = c.http.clone();
    let sandbox = c.dir.path().join("sb");
    std::fs::create_dir_all(sandbox.join("jobs")).context("cannot create the sandbox folder")?;
    std::fs::write(sandbox.join("jobs/beat.toml"), BEATING_JOB).context("cannot write the job file")?;
    let name = format!("failover{}", std::process::id());
    create_sandbox(
        &http,
        &c.procs[0].url,
        json!({"name": name, "kind": "shared", "root": sandbox.display().to_string()}),
    )
    .await?;
    let dialect = shoal_store::Store::open(&a.store, 1).await.context("cannot open the store")?.dialect_name();

    let mut times = Vec::new();
    let (mut violations, mut not_succeeded, mut same_node, mut extra_tokens) = (0usize, 0usize, 0usize, 0usize);
    for round in 0..a.kills {
        let entry = c.procs[round % c.procs.len()].url.clone();
        let id = submit(&http, &entry, &json!({"sandbox": name, "job": "jobs/beat.toml"})).await?;
        let beats_file = sandbox.join(format!("beats-{id}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Some(b) = read_beats(&beats_file).into_iter().next() {
                break b;
            }
            ensure!(Instant::now() < deadline, "execution {id}: attempt 1 did not beat within 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let victim = c
            .procs
            .iter()
            .position(|p| p.id == first.node)
            .with_context(|| format!("attempt 1 runs on unknown node `{}`", first.node))?;
        let killed_ns = now_ns();
        c.procs[victim].kill9()?;

        // The first beat with another token: attempt 2 is running.
        let limit = a.lease + Duration::from_secs(30);
        let deadline = Instant::now() + limit;
        let second = loop {
            if let Some(b) = read_beats(&beats_file).into_iter().find(|b| b.token != first.token) {
                break b;
            }
            if Instant::now() > deadline {
                bail!(
                    "round {}: no other attempt beat within {limit:?} of SIGKILLing {}",
                    round + 1,
                    c.procs[victim].id
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let took = (second.ns - killed_ns) as f64 / 1e6;
        times.push(took);

        let survivor = c.procs[(victim + 1) % c.procs.len()].url.clone();
        let e = wait_final(&http, &survivor, &id, Duration::from_secs(60)).await?;
        if e["state"] != "succeeded" {
            not_succeeded += 1;
        }
        if second.node == first.node {
            same_node += 1;
        }
        // Give a straggling attempt 1 time to show itself before counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all = read_beats(&beats_file);
        let late = all.iter().filter(|b| b.token == first.token && b.ns > second.ns).count();
        violations += late;
        let tokens: HashSet<i64> = all.iter().map(|b| b.token).collect();
        extra_tokens += tokens.len().saturating_sub(2);
        println!(
            "  kill {:>2}: {} SIGKILLed, attempt 2 (token {}) beat on {} after {:.1} ms; old token beats after it: {late}; execution {} (attempt {})",
            round + 1,
            first.node,
            second.token,
            second.node,
            took,
            e["state"].as_str().unwrap_or("?"),
            e["attempt"]
        );
        c.restart(victim).await?;
    }
    c.stop_all()?;
    let n = times.len();
    println!(
        "failover store={dialect} nodes={} lease={} kills={n}: SIGKILL to the next attempt's first beat {}; fencing violations (old token beating after the new one started) {violations}; not succeeded {not_succeeded}; re-run on the killed node {same_node}; extra attempts {extra_tokens}",
        a.nodes,
        shoal_core::duration::format(a.lease),
        summary(&mut times)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// In-process nodes

fn in_process_config(id: &str, dir: &Path, store: &str, pool: usize, slots: u32, lease: Option<Duration>) -> String {
    let mut text = format!(
        "node_id = {id:?}\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = {store:?}\npool_size = {pool}\n[executor]\nslots = {slots}\n",
        dir.join(format!("data-{id}")).display().to_string(),
    );
    if let Some(l) = lease {
        text.push_str(&format!("[cluster]\nlease_ttl = {:?}\n", shoal_core::duration::format(l)));
    }
    text
}

async fn start_node(text: &str) -> Result<shoal_server::Node> {
    let config = shoal_server::Config::parse(text, "(bench)", Vec::<(String, String)>::new())?;
    shoal_server::start(config).await.context("cannot start an in-process node")
}

// ---------------------------------------------------------------------------------------------
// throughput --nodes N

/// `shoal bench throughput --nodes N` for N > 1: the single-node benchmark of bench.rs spread
/// over N in-process nodes on one store, one shared sandbox, submissions round-robin.
pub(crate) async fn throughput(c: &Common, n: usize) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let store_url = c.store.clone().unwrap_or_else(|| format!("sqlite://{}/shoal.db", dir.path().display()));
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(
            start_node(&in_process_config(&format!("bench{i}"), dir.path(), &store_url, 16, c.slots, None)).await?,
        );
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.id().to_owned()).collect();
    let http = reqwest::Client::new();
    wait_cluster(&http_client()?, &urls, &ids, Duration::from_secs(60)).await?;
    let root = dir.path().join("sandbox");
    std::fs::create_dir_all(root.join("jobs")).context("cannot create the sandbox folder")?;
    std::fs::write(root.join("jobs/noop.toml"), "kind = \"noop\"\n").context("cannot write a job file")?;
    std::fs::write(root.join("jobs/true.toml"), "command = [\"true\"]\n").context("cannot write a job file")?;
    let sandbox = format!("bench{}", std::process::id());
    create_sandbox(&http, &urls[0], json!({"name": sandbox, "kind": "shared", "root": root.display().to_string()}))
        .await?;
    let job = match c.kind.as_str() {
        "noop" => "jobs/noop.toml",
        "true" => "jobs/true.toml",
        other => bail!("unknown kind `{other}`; use noop or true"),
    };
    let store = nodes[0].store();
    let done_before = count_final(&store).await?;
    let body = json!({"sandbox": sandbox, "job": job});
    let t0 = Instant::now();
    let per = c.count.div_ceil(c.concurrency);
    let mut tasks = Vec::new();
    for w in 0..c.concurrency {
        let count = per.min(c.count.saturating_sub(w * per));
        let (http, urls, body) = (http.clone(), urls.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..count {
                let url = &urls[(w + i) % urls.len()];
                let r = http.post(format!("{url}/api/v1/executions")).json(&body).send().await?;
                anyhow::ensure!(r.status() == 201, "submission failed: {}", r.text().await?);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let submitted = t0.elapsed();
    while count_final(&store).await? - done_before < c.count as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = t0.elapsed();
    let mut per_node = BTreeMap::new();
    let mut failed = 0usize;
    let mut cursor = None;
    loop {
        let f = shoal_store::ExecutionFilter {
            sandbox: Some(sandbox.clone()),
            limit: 5000,
            cursor: cursor.clone(),
            ..Default::default()
        };
        let page = store.list_executions(&f).await?;
        for e in &page {
            *per_node.entry(e.node_id.clone().unwrap_or_else(|| "-".into())).or_insert(0usize) += 1;
            if e.state != shoal_core::ExecState::Succeeded {
                failed += 1;
            }
        }
        match page.last() {
            Some(last) if page.len() == 5000 => cursor = Some(last.id.to_string()),
            _ => break,
        }
    }
    let spread: Vec<String> = per_node.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "throughput kind={} store={} nodes={n} count={} concurrency={} slots={} per node: submitted in {:.2}s ({:.0}/s), all final in {:.2}s => {:.0} executions/s end to end (ran: {}){}",
        c.kind,
        store.dialect_name(),
        c.count,
        c.concurrency,
        c.slots,
        submitted.as_secs_f64(),
        c.count as f64 / submitted.as_secs_f64(),
        total.as_secs_f64(),
        c.count as f64 / total.as_secs_f64(),
        spread.join(", "),
        if failed > 0 { format!(" ({failed} did not succeed!)") } else { String::new() }
    );
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cutoff

/// A TCP proxy that can be cut (every connection dropped, new ones refused) and restored.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind the proxy")?;
        let port = listener.local_addr().context("cannot read the proxy's port")?.port();
        let open = Arc::new(AtomicBool::new(true));
        let (cut, cut_rx) = watch::channel(0u64);
        let o = open.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut rx = cut_rx.clone();
                // Only cuts after this connection opened concern it.
                rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy { port, open, cut, accept })
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Splits a PostgreSQL URL around its `host:port`: (before, host:port, after).
fn split_host(url: &str) -> Result<(String, String, String)> {
    let start = url.find("://").map(|i| i + 3).with_context(|| format!("`{url}` is not a URL"))?;
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_at = authority.rfind('@').map_or(0, |i| i + 1);
    let mut host = authority[host_at..].to_owned();
    ensure!(!host.is_empty(), "`{url}` names no host; the cutoff bench needs a TCP host:port");
    if !host.contains(':') {
        host.push_str(":5432");
    }
    Ok((url[..start + host_at].to_owned(), host, rest[end..].to_owned()))
}

struct CutRound {
    cut_to_kill_ms: f64,
    killed_before_lease_end_ms: i64,
    took_over_after_lease_end_ms: i64,
}

pub(crate) async fn cutoff(a: CutoffArgs) -> Result<()> {
    ensure!(a.store.starts_with("postgres"), "the cutoff bench needs a postgres:// store (it cuts a TCP connection)");
    let (before, host, after) = split_host(&a.store)?;
    let target = tokio::net::lookup_host(host.as_str())
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    let proxy = Proxy::start(target).await?;
    let via_proxy = format!("{before}127.0.0.1:{}{after}", proxy.port);
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let node_a = start_node(&in_process_config("cut-a", dir.path(), &via_proxy, 4, 4, Some(a.lease))).await?;
    let node_b = start_node(&in_process_config("cut-b", dir.path(), &a.store, 4, 4, Some(a.lease))).await?;
    let (url_a, url_b) = (node_a.url().to_owned(), node_b.url().to_owned());
    let urls = vec![url_a.clone(), url_b.clone()];
    let ids = vec!["cut-a".to_owned(), "cut-b".to_owned()];
    let http = http_client()?;
    wait_cluster(&http, &urls, &ids, Duration::from_secs(60)).await?;
    let watcher = shoal_store::Store::open(&a.store, 1).await.context("cannot open the store")?;
    let pids = dir.path().join("pids");
    std::fs::create_dir_all(&pids).context("cannot create a temporary folder")?;
    let script = format!(
        "if [ \"$SHOAL_ATTEMPT\" = 1 ]; then echo $$ > {}/$SHOAL_EXECUTION_ID.pid; exec sleep 600; fi; echo finished on $SHOAL_NODE_ID",
        pids.display()
    );
    let lease_of = |nodes: Vec<shoal_store::NodeRow>| nodes.into_iter().find(|n| n.id == "cut-a");

    let mut rounds = Vec::new();
    for round in 1..=a.rounds {
        // Attempt 1 on A: B takes no work until it runs there.
        let (s, v) = post_json(&http, &format!("{url_b}/api/v1/nodes/cut-b/suspend"), &json!({})).await?;
        ensure!(s == 200, "cannot suspend cut-b: ({s}) {v}");
        let id = submit(&http, &url_a, &json!({"command": ["sh", "-c", script]})).await?;
        let pid_file = pids.join(format!("{id}.pid"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid: i32 = loop {
            if let Some(p) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse().ok()) {
                break p;
            }
            ensure!(Instant::now() < deadline, "execution {id}: attempt 1 did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let (s, v) = post_json(&http, &format!("{url_b}/api/v1/nodes/cut-b/resume"), &json!({})).await?;
        ensure!(s == 200, "cannot resume cut-b: ({s}) {v}");
        let first = watcher.list_attempts(&id).await?;
        ensure!(first.first().is_some_and(|t| t.node_id == "cut-a"), "attempt 1 is not on cut-a: {first:?}");

        let lease_before = lease_of(watcher.list_nodes().await?).context("cut-a has no node row")?.lease_expires_at;
        let cut_at = Instant::now();
        proxy.cut();
        let limit = a.lease * 2 + Duration::from_secs(10);
        while pid_alive(pid) {
            ensure!(cut_at.elapsed() < limit, "round {round}: cut-a's child outlived the cut by {limit:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let cut_to_kill = cut_at.elapsed();
        let killed_store = watcher.now_ms().await?;
        // The lease A last managed to renew, read once the cut has settled.
        let lease_end =
            lease_of(watcher.list_nodes().await?).context("cut-a has no node row")?.lease_expires_at.max(lease_before);

        let e = wait_final(&http, &url_b, &id, a.lease * 2 + Duration::from_secs(30)).await?;
        ensure!(e["state"] == "succeeded", "round {round}: execution {id} ended {e}");
        let attempts = watcher.list_attempts(&id).await?;
        ensure!(
            attempts.len() == 2 && attempts[1].node_id == "cut-b",
            "round {round}: expected attempt 2 on cut-b: {attempts:?}"
        );
        let r = CutRound {
            cut_to_kill_ms: cut_to_kill.as_secs_f64() * 1000.0,
            killed_before_lease_end_ms: lease_end - killed_store,
            took_over_after_lease_end_ms: attempts[1].started_at - lease_end,
        };
        println!(
            "  cut {round}: cut-a killed its child {:.0} ms after the cut, {} ms before its lease ended (store clock); attempt 2 started on cut-b {} ms after the lease ended",
            r.cut_to_kill_ms, r.killed_before_lease_end_ms, r.took_over_after_lease_end_ms
        );
        rounds.push(r);

        proxy.restore();
        wait_ready(&http, &url_a, Duration::from_secs(60)).await?;
        wait_cluster(&http, &urls, &ids, Duration::from_secs(60)).await?;
    }
    node_b.shutdown().await;
    node_a.shutdown().await;
    let mut kill: Vec<f64> = rounds.iter().map(|r| r.cut_to_kill_ms).collect();
    let mut margin: Vec<f64> = rounds.iter().map(|r| r.killed_before_lease_end_ms as f64).collect();
    let mut late: Vec<f64> = rounds.iter().map(|r| r.took_over_after_lease_end_ms as f64).collect();
    let killed_after_lease = rounds.iter().filter(|r| r.killed_before_lease_end_ms <= 0).count();
    let early = rounds.iter().filter(|r| r.took_over_after_lease_end_ms < 0).count();
    let within_1s = rounds.iter().filter(|r| (0..=1000).contains(&r.took_over_after_lease_end_ms)).count();
    println!(
        "cutoff store=postgres lease={} rounds={}: cut to child killed {}; child killed before the lease end by {} (killed after the lease end: {killed_after_lease}); attempt 2 start after the lease end {} (before the lease end: {early}; within 1 s: {within_1s}/{})",
        shoal_core::duration::format(a.lease),
        rounds.len(),
        summary(&mut kill),
        summary_min(&mut margin),
        summary(&mut late),
        rounds.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// forwarding

pub(crate) async fn forwarding(a: ForwardingArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let store = a.store.clone().unwrap_or_else(|| format!("sqlite://{}/shoal.db", dir.path().display()));
    let node_a = start_node(&in_process_config("fwd-a", dir.path(), &store, 8, 4, None)).await?;
    let node_b = start_node(&in_process_config("fwd-b", dir.path(), &store, 8, 4, None)).await?;
    let (url_a, url_b) = (node_a.url().to_owned(), node_b.url().to_owned());
    let http = http_client()?;
    wait_cluster(&http, &[url_a.clone(), url_b.clone()], &["fwd-a".into(), "fwd-b".into()], Duration::from_secs(60))
        .await?;
    let root = dir.path().join("local-b");
    let name = format!("fwd{}", std::process::id());
    create_sandbox(
        &http,
        &url_b,
        json!({"name": name, "kind": "local", "node": "fwd-b", "root": root.display().to_string()}),
    )
    .await?;
    let content: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(root.join("small.txt"), &content).context("cannot write the sandbox file")?;
    let path = format!("/api/v1/sandboxes/{name}/files/small.txt");
    let direct = format!("{url_b}{path}");
    let forwarded = format!("{url_a}{path}");

    let fetch = |url: String| {
        let (http, content) = (http.clone(), &content);
        async move {
            let t = Instant::now();
            let r = http.get(&url).send().await.with_context(|| format!("GET {url}"))?;
            let status = r.status();
            let served_by = r.headers().get("x-shoal-served-by").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = r.bytes().await.with_context(|| format!("reading GET {url}"))?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            ensure!(status == 200 && body.as_ref() == content.as_slice(), "GET {url}: {status}, {} bytes", body.len());
            ensure!(served_by.as_deref() == Some("fwd-b"), "GET {url} served by {served_by:?}, not fwd-b");
            anyhow::Ok(ms)
        }
    };
    for _ in 0..a.warmup {
        fetch(direct.clone()).await?;
        fetch(forwarded.clone()).await?;
    }
    let (mut d, mut f) = (Vec::with_capacity(a.count), Vec::with_capacity(a.count));
    for i in 0..a.count {
        // Alternate which goes first, so neither always follows the other.
        if i % 2 == 0 {
            d.push(fetch(direct.clone()).await?);
            f.push(fetch(forwarded.clone()).await?);
        } else {
            f.push(fetch(forwarded.clone()).await?);
            d.push(fetch(direct.clone()).await?);
        }
    }
    let dialect = node_a.store().dialect_name();
    node_a.shutdown().await;
    node_b.shutdown().await;
    let ds = summary2(&mut d);
    let fs = summary2(&mut f);
    println!(
        "forwarding store={dialect} count={}: direct to the holder {ds}; forwarded by the other node {fs}; forwarded minus direct: median {:+.3} ms, p99 {:+.3} ms",
        a.count,
        percentile(&f, 0.5) - percentile(&d, 0.5),
        percentile(&f, 0.99) - percentile(&d, 0.99)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// soak

#[derive(Default)]
struct SoakCounts {
    samples: AtomicU64,
    unanswered: AtomicU64,
    sightings: AtomicU64,
    submit_errors: AtomicU64,
}

pub(crate) async fn soak(a: SoakArgs) -> Result<()> {
    let mut c = Procs::start(&a.store, a.nodes, a.lease).await?;
    let urls = c.urls();
    let ids = c.ids();
    let store = shoal_store::Store::open(&a.store, 2).await.context("cannot open the store")?;
    let dialect = store.dialect_name();

    let stop_burn = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..a.burn)
        .map(|i| {
            let stop = stop_burn.clone();
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
                    }
                }
                x
            })
        })
        .collect();

    let counts = Arc::new(SoakCounts::default());
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let deaths: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    // The load: every 1/rate s, one short sleep per node, and once a second one `true` per node.
    let load = {
        let (urls, counts, submitted, stop) = (urls.clone(), counts.clone(), submitted.clone(), stop.clone());
        let http = http_client()?;
        let tick = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick);
            // Ticks until the next `true`s.
            let mut until_true = 0u32;
            while !stop.load(Ordering::SeqCst) {
                every.tick().await;
                let with_true = until_true == 0;
                until_true = if with_true { a.rate.max(1) - 1 } else { until_true - 1 };
                for url in &urls {
                    let mut bodies = vec![json!({"command": ["sh", "-c", "sleep 0.2"]})];
                    if with_true {
                        bodies.push(json!({"command": ["true"]}));
                    }
                    for body in bodies {
                        let (http, url, counts, submitted) =
                            (http.clone(), url.clone(), counts.clone(), submitted.clone());
                        tokio::spawn(async move {
                            match submit(&http, &url, &body).await {
                                Ok(id) => submitted.lock().map(|mut s| s.push(id)).unwrap_or(()),
                                Err(_) => {
                                    counts.submit_errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        });
                    }
                }
            }
        })
    };

    // The sampler: every 200 ms, each node's view of every node.
    let sampler = {
        let (urls, ids, counts, deaths, stop) =
            (urls.clone(), ids.clone(), counts.clone(), deaths.clone(), stop.clone());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().context("HTTP client")?;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            while !stop.load(Ordering::SeqCst) {
                every.tick().await;
                let views = futures::future::join_all(urls.iter().map(|u| {
                    let (http, url) = (&http, format!("{u}/api/v1/nodes"));
                    async move { get_json(http, &url).await }
                }))
                .await;
                for (observer, view) in ids.iter().zip(views) {
                    let Some(view) = view else {
                        counts.unanswered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    counts.samples.fetch_add(1, Ordering::Relaxed);
                    for n in view["nodes"].as_array().into_iter().flatten() {
                        let subject = n["id"].as_str().unwrap_or_default();
                        if !ids.iter().any(|i| i == subject) {
                            continue;
                        }
                        if n["gossip"] == "dead" || n["state"] == "lost" {
                            counts.sightings.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut d) = deaths.lock() {
                                d.push(format!(
                                    "{:.1}s: {observer} saw {subject} gossip={} state={} lease_expires_in_ms={}",
                                    t0.elapsed().as_secs_f64(),
                                    n["gossip"],
                                    n["state"],
                                    n["lease_expires_in_ms"]
                                ));
                            }
                        }
                    }
                }
            }
        })
    };

    // Meanwhile, check that every process stays up (a sighting only counts while it is).
    let deadline = t0 + a.duration;
    let mut exited = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for p in c.procs.iter_mut() {
            if !p.running() && !exited.contains(&p.id) {
                exited.push(p.id.clone());
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    load.await.context("the load task failed")?;
    sampler.await.context("the sampler failed")?;
    let ran_for = t0.elapsed();
    // Let submissions in flight land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_burn.store(true, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    ensure!(exited.is_empty(), "node processes exited during the soak: {exited:?}");

    // Every submitted execution final, then their outcomes.
    let ours: HashSet<String> = submitted.lock().map(|s| s.iter().cloned().collect()).unwrap_or_default();
    let wait_until = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let mut rows = Vec::new();
        let mut cursor = None;
        loop {
            let f = shoal_store::ExecutionFilter { limit: 5000, cursor: cursor.clone(), ..Default::default() };
            let page = store.list_executions(&f).await?;
            let full = page.len() == 5000;
            cursor = page.last().map(|e| e.id.to_string());
            rows.extend(page.into_iter().filter(|e| ours.contains(e.id.as_str())));
            if !full {
                break;
            }
        }
        if rows.len() == ours.len() && rows.iter().all(|e| e.state.is_final()) {
            break rows;
        }
        ensure!(Instant::now() < wait_until, "executions not final a minute after the load stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    c.stop_all()?;
    let succeeded = rows.iter().filter(|e| e.state == shoal_core::ExecState::Succeeded).count();
    let lost = rows.iter().filter(|e| e.attempt > 1 || e.reason == "node_lost").count();
    let deaths = deaths.lock().map(|d| d.clone()).unwrap_or_default();
    for d in deaths.iter().take(20) {
        println!("  false death: {d}");
    }
    let sightings = counts.sightings.load(Ordering::Relaxed);
    println!(
        "soak store={dialect} nodes={} burn={} lease={} duration={:.1}s: {} executions ({succeeded} succeeded, {} not), {} submissions refused; false deaths {} ({sightings} dead/lost sightings of live nodes, {lost} executions re-run or ended for node loss); node-view samples {} answered, {} unanswered (2 s timeout)",
        a.nodes,
        a.burn,
        shoal_core::duration::format(a.lease),
        ran_for.as_secs_f64(),
        rows.len(),
        rows.len() - succeeded,
        counts.submit_errors.load(Ordering::Relaxed),
        sightings + lost as u64,
        counts.samples.load(Ordering::Relaxed),
        counts.unanswered.load(Ordering::Relaxed),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// schedules

/// `shoal bench schedules`: N real nodes, S schedules firing every second; lateness from each
/// firing time to its claim (the firing row and its execution committed) and to its
/// execution's start, from the store's own timestamps.
pub(crate) async fn schedules(a: SchedulesArgs) -> Result<()> {
    let mut c = Procs::start_with_slots(&a.store, a.nodes, Duration::from_secs(10), a.slots).await?;
    let base = c.procs[0].url.clone();
    let root = c.dir.path().join("sched");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("tick.toml"), "kind = \"noop\"\n[params.fire]\nrequired = true\n")?;
    create_sandbox(&c.http, &base, json!({"name": "sched", "kind": "shared", "root": root.display().to_string()}))
        .await?;
    let store = shoal_store::Store::open(&a.store, 2).await?;
    println!(
        "schedules: {} nodes ({} slots each), store {}, every schedule fires each second",
        a.nodes,
        a.slots,
        store.dialect_name()
    );
    let mut created = 0usize;
    for &count in &a.schedules {
        let urls = c.urls();
        while created < count {
            let url = format!("{}/api/v1/schedules", urls[created % urls.len()]);
            let body = json!({"name": format!("s{created}"), "sandbox": "sched", "job": "tick.toml",
                              "cron": "* * * * * *", "params": {"fire": "{fire_unix_ms}"}});
            let (status, v) = post_json(&c.http, &url, &body).await?;
            ensure!(status == 201, "cannot create a schedule: ({status}) {v}");
            created += 1;
        }
        let warm = store.now_ms().await? + 5_000;
        let from = (warm / 1000 + 1) * 1000;
        let to = from + a.duration.as_millis() as i64 - 1000;
        // Everything up to `to` has fired (or is missing for good) a few seconds after it.
        while store.now_ms().await? < to + 5_000 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rows = store.firing_report(from, to).await?;
        let expected = count * ((to - from) / 1000 + 1) as usize;
        let mut seen = std::collections::HashSet::new();
        let mut dupes = 0;
        for (id, at, _, _) in &rows {
            if !seen.insert((id.clone(), *at)) {
                dupes += 1;
            }
        }
        let (mut claim, mut start): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
        for (_, at, claimed, started) in &rows {
            claim.push((claimed - at) as f64);
            if let Some(s) = started {
                start.push((s - at) as f64);
            }
        }
        let secs = (to - from) as f64 / 1000.0 + 1.0;
        println!(
            "  {count} schedules ({:.0} firings/s) over {secs:.0} s: {} firings of {expected} expected, {dupes} duplicates, {} executions started",
            count as f64,
            rows.len(),
            start.len()
        );
        println!("    firing time → claimed (firing and execution committed): {}", summary(&mut claim));
        println!("    firing time → execution started:                         {}", summary(&mut start));
    }
    c.stop_all()
}

// ---------------------------------------------------------------------------------------------
// files

/// `shoal bench files`: a file listener on a shared sandbox watched by N real nodes; files
/// dropped one by one; time from each file's last write, plus the settle time, to its
/// execution's start.
pub(crate) async fn files(a: FilesArgs) -> Result<()> {
    let mut c = Procs::start(&a.store, a.nodes, Duration::from_secs(10)).await?;
    let base = c.procs[0].url.clone();
    let root = c.dir.path().join("drop");
    std::fs::create_dir_all(root.join("in"))?;
    std::fs::write(root.join("load.toml"), "kind = \"noop\"\n[params.file]\nrequired = true\n")?;
    create_sandbox(&c.http, &base, json!({"name": "drop", "kind": "shared", "root": root.display().to_string()}))
        .await?;
    let settle = a.settle.as_millis() as u64;
    let (status, l) = post_json(
        &c.http,
        &format!("{base}/api/v1/listeners"),
        &json!({"name": "files", "kind": "file", "sandbox": "drop", "job": "load.toml",
                "params": {"file": "{event.path}"},
                "on_file": {"sandbox": "drop", "pattern": "in/*.csv", "settle": format!("{settle}ms")}}),
    )
    .await?;
    ensure!(status == 201, "cannot create the listener: ({status}) {l}");
    let id = l["id"].as_str().context("no listener id")?.to_owned();
    let store = shoal_store::Store::open(&a.store, 2).await?;
    let mut written = std::collections::HashMap::new();
    for i in 0..a.files {
        let path = root.join(format!("in/f{i:05}.csv"));
        std::fs::write(&path, format!("id,{i}\n"))?;
        let mtime = std::fs::metadata(&path)?.modified()?.duration_since(UNIX_EPOCH)?.as_millis() as i64;
        written.insert(format!("in/f{i:05}.csv"), mtime);
        tokio::time::sleep(a.every).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let events = loop {
        let ev = store.all_events(&id).await?;
        if ev.len() >= a.files {
            break ev;
        }
        ensure!(Instant::now() < deadline, "only {} of {} file events after 120 s", ev.len(), a.files);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut to_start = Vec::new();
    for e in &events {
        let Some(x) = &e.execution_id else { continue };
        let exec = loop {
            let ex = store.get_execution(x).await?.context("an event's execution is missing")?;
            if ex.started_at.is_some() {
                break ex;
            }
            ensure!(Instant::now() < deadline, "execution {x} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let arrived = written[&e.payload["path"]] + settle as i64;
        to_start.push((exec.started_at.unwrap_or_default() - arrived) as f64);
    }
    println!(
        "files: {} nodes, store {}, {} files one every {:?}, settle {settle} ms: {} events, {} distinct files",
        a.nodes,
        store.dialect_name(),
        a.files,
        a.every,
        events.len(),
        events.iter().map(|e| &e.payload["path"]).collect::<std::collections::HashSet<_>>().len()
    );
    println!("  last write + settle → execution started: {}", summary(&mut to_start));
    c.stop_all()
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn postgres_urls_split_around_the_host() {
        let (a, h, b) = split_host("postgres://shoal@127.0.0.1:5433/db_1?sslmode=disable").unwrap();
        assert_eq!(
            (a.as_str(), h.as_str(), b.as_str()),
            ("postgres://shoal@", "127.0.0.1:5433", "/db_1?sslmode=disable")
        );
        let (a, h, b) = split_host("postgresql://localhost/db").unwrap();
        assert_eq!((a.as_str(), h.as_str(), b.as_str()), ("postgresql://", "localhost:5432", "/db"));
    }
}
