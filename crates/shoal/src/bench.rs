//! `shoal bench`: the benchmarks behind BENCHMARKS.md, run against a real node (in-process
//! for throughput and latency, a real `shoal server` process for start-up and memory).
//!
//! Every figure is measured end to end through the HTTP API, as a client would see it.

use serde_json::{json, Value};
use shoal_core::ExecState;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCmd,
}

#[derive(clap::Subcommand, Debug)]
enum BenchCmd {
    /// Executions completed per second, submission to final state
    Throughput(ThroughputArgs),
    /// Submission to process start, one execution at a time with a free slot
    Latency(Common),
    /// Start-up to ready, and resident memory when idle, of a real `shoal server` process
    Startup {
        /// How many starts to measure
        #[arg(long, default_value_t = 10)]
        count: usize,
    },
    /// SIGKILL the `shoal server` process running an attempt: time until the next attempt runs
    Failover(crate::bench_cluster::FailoverArgs),
    /// Cut a node off from PostgreSQL: when it kills its child, when another node takes over
    Cutoff(crate::bench_cluster::CutoffArgs),
    /// A local sandbox's file read directly from its holder versus forwarded by another node
    Forwarding(crate::bench_cluster::ForwardingArgs),
    /// Real processes under CPU pressure and steady load: count nodes falsely seen dead
    Soak(crate::bench_cluster::SoakArgs),
    /// Schedules firing every second across real nodes: lateness to claim and to start
    Schedules(crate::bench_cluster::SchedulesArgs),
    /// Files dropped into a watched shared sandbox: time from a settled file to its job's start
    Files(crate::bench_cluster::FilesArgs),
}

#[derive(clap::Args, Debug)]
struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    /// In-process nodes on the one store, submissions round-robin across them
    #[arg(long, default_value_t = 1)]
    nodes: usize,
}

#[derive(clap::Args, Debug)]
pub(crate) struct Common {
    /// Store URL; default: a fresh SQLite file in a temporary folder
    #[arg(long)]
    pub(crate) store: Option<String>,
    /// `noop` (built-in job kind) or `true` (a real process)
    #[arg(long, default_value = "noop")]
    pub(crate) kind: String,
    /// Executions to run
    #[arg(long, default_value_t = 2000)]
    pub(crate) count: usize,
    /// Concurrent submitting clients
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// The node's slots
    #[arg(long, default_value_t = 16)]
    pub(crate) slots: u32,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

struct Bench {
    node: shoal_server::Node,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    url: String,
}

async fn start(c: &Common) -> anyhow::Result<Bench> {
    let dir = tempfile::tempdir()?;
    let store = c.store.clone().unwrap_or_else(|| format!("sqlite://{}/shoal.db", dir.path().display()));
    let text = format!(
        "node_id = \"bench\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = {:?}\npool_size = 16\n[executor]\nslots = {}\n",
        dir.path().join("data").display().to_string(),
        store,
        c.slots
    );
    let config = shoal_server::Config::parse(&text, "(bench)", Vec::<(String, String)>::new())?;
    let node = shoal_server::start(config).await?;
    let root = dir.path().join("sandbox");
    std::fs::create_dir_all(root.join("jobs"))?;
    std::fs::write(root.join("jobs/noop.toml"), "kind = \"noop\"\n")?;
    std::fs::write(root.join("jobs/true.toml"), "command = [\"true\"]\n")?;
    let http = reqwest::Client::new();
    let url = node.url().to_owned();
    let name = format!("bench{}", std::process::id());
    let r = http
        .post(format!("{url}/api/v1/sandboxes"))
        .json(&json!({"name": name, "kind": "shared", "root": root.display().to_string()}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "cannot create the bench sandbox: {}", r.text().await?);
    Ok(Bench { node, _dir: dir, http, url })
}

async fn throughput(c: Common) -> anyhow::Result<()> {
    let b = start(&c).await?;
    let sandbox = format!("bench{}", std::process::id());
    let job = match c.kind.as_str() {
        "noop" => "jobs/noop.toml",
        "true" => "jobs/true.toml",
        other => anyhow::bail!("unknown kind `{other}`; use noop or true"),
    };
    let store = b.node.store();
    let done_before = count_final(&store).await?;
    let body = json!({"sandbox": sandbox, "job": job});
    let t0 = Instant::now();
    let per = c.count.div_ceil(c.concurrency);
    let mut tasks = Vec::new();
    for w in 0..c.concurrency {
        let n = per.min(c.count.saturating_sub(w * per));
        let (http, url, body) = (b.http.clone(), b.url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
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
    loop {
        if count_final(&store).await? - done_before >= c.count as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = t0.elapsed();
    let failed =
        store.count_by_state().await?.into_iter().filter(|(s, _)| *s != ExecState::Succeeded && s.is_final()).count();
    println!(
        "throughput kind={} store={} count={} concurrency={} slots={}: submitted in {:.2}s ({:.0}/s), all final in {:.2}s => {:.0} executions/s end to end{}",
        c.kind,
        store.dialect_name(),
        c.count,
        c.concurrency,
        c.slots,
        submitted.as_secs_f64(),
        c.count as f64 / submitted.as_secs_f64(),
        total.as_secs_f64(),
        c.count as f64 / total.as_secs_f64(),
        if failed > 0 { " (some did not succeed!)" } else { "" }
    );
    b.node.shutdown().await;
    Ok(())
}

pub(crate) async fn count_final(store: &shoal_store::Store) -> anyhow::Result<i64> {
    Ok(store.count_by_state().await?.into_iter().filter(|(s, _)| s.is_final()).map(|(_, n)| n).sum())
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

async fn latency(c: Common) -> anyhow::Result<()> {
    let b = start(&c).await?;
    let mut samples = Vec::with_capacity(c.count);
    // Where the time goes, from the store's own timestamps (millisecond resolution):
    // request sent -> row committed, committed -> claimed, claimed -> process running.
    let (mut to_commit, mut to_claim, mut to_process) = (Vec::new(), Vec::new(), Vec::new());
    let store = b.node.store();
    for _ in 0..c.count {
        let sent = now_ns();
        let r = b
            .http
            .post(format!("{}/api/v1/executions", b.url))
            .json(&json!({"command": ["date", "+%s%N"]}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "submission failed");
        let e: Value = r.json().await?;
        let id = e["id"].as_str().unwrap_or_default().to_owned();
        let logs = loop {
            let e: Value = b.http.get(format!("{}/api/v1/executions/{id}", b.url)).send().await?.json().await?;
            if e["state"] == "succeeded" {
                break b.http.get(format!("{}/api/v1/executions/{id}/logs", b.url)).send().await?.text().await?;
            }
            anyhow::ensure!(e["state"] == "queued" || e["state"] == "running", "execution ended {}", e["state"]);
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let started: i128 = logs.trim().parse()?;
        samples.push((started - sent) as f64 / 1e6);
        if let Some(row) = store.get_execution(&id).await? {
            let created = i128::from(row.created_at) * 1_000_000;
            let claimed = i128::from(row.started_at.unwrap_or(row.created_at)) * 1_000_000;
            to_commit.push((created - sent) as f64 / 1e6);
            to_claim.push((claimed - created) as f64 / 1e6);
            to_process.push((started - claimed) as f64 / 1e6);
        }
    }
    for v in [&mut samples, &mut to_commit, &mut to_claim, &mut to_process] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "dispatch latency store={} count={}: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (submission to process start)",
        b.node.store().dialect_name(),
        c.count,
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  medians (store timestamps, ms resolution): sent -> committed {:.1} ms, committed -> claimed {:.1} ms, claimed -> process running {:.1} ms",
        percentile(&to_commit, 0.5),
        percentile(&to_claim, 0.5),
        percentile(&to_process, 0.5)
    );
    b.node.shutdown().await;
    Ok(())
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

async fn startup(count: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..count {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let t0 = Instant::now();
        let mut child = std::process::Command::new(&exe)
            .arg("server")
            .env("SHOAL_DATA_DIR", dir.path())
            .env("SHOAL_NODE_ID", "bench")
            .env("SHOAL_HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()?;
        loop {
            if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/health/ready")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(20), "server did not become ready");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Idle: let the first lease renewals and worker loops run before measuring.
        tokio::time::sleep(Duration::from_secs(3)).await;
        rss.push(rss_kb(child.id()).unwrap_or(0) as f64 / 1024.0);
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait()?;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    rss.sort_by(|a, b| a.total_cmp(b));
    println!(
        "startup (SQLite, fresh data dir) count={count}: start to ready median {:.1} ms, p90 {:.1} ms, max {:.1} ms; idle RSS median {:.1} MiB, max {:.1} MiB",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        times.last().copied().unwrap_or(f64::NAN),
        percentile(&rss, 0.5),
        rss.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

pub async fn run(args: BenchArgs) -> u8 {
    crate::init_logging("error", false);
    let result = match args.what {
        BenchCmd::Throughput(t) if t.nodes <= 1 => throughput(t.common).await,
        BenchCmd::Throughput(t) => crate::bench_cluster::throughput(&t.common, t.nodes).await,
        BenchCmd::Latency(c) => latency(c).await,
        BenchCmd::Startup { count } => startup(count).await,
        BenchCmd::Failover(a) => crate::bench_cluster::failover(a).await,
        BenchCmd::Cutoff(a) => crate::bench_cluster::cutoff(a).await,
        BenchCmd::Forwarding(a) => crate::bench_cluster::forwarding(a).await,
        BenchCmd::Soak(a) => crate::bench_cluster::soak(a).await,
        BenchCmd::Schedules(a) => crate::bench_cluster::schedules(a).await,
        BenchCmd::Files(a) => crate::bench_cluster::files(a).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            3
        }
    }
}
