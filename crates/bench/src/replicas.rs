//! PostgreSQL read replicas and primary failover, on throwaway servers of the bench's own
//! (`shoal_testkit`: a primary, streaming replicas, `pg_ctl promote`).
//!
//! `replicas`: `GET /api/v1/executions` from concurrent clients against three in-process
//! nodes on one database, with no replica, one and two, in interleaved rounds in one run; and
//! the routing layer's cost per request, `GET /api/v1/executions/{id}` one at a time on a node
//! without replicas, on one whose reads are all forced to the primary
//! (`route_to_primary = [".*"]`: the layer's work without a replica's), and on one reading
//! from its replica.
//!
//! `promotion`: a fresh primary, a replica of it and a node on the multi-host URL of both, each
//! round: the primary is killed, the replica promoted, and a client that keeps trying
//! (`Client::with_patience`) submits one execution; the figure is the time from the moment
//! `pg_ctl promote` returned to that execution's start on the store's clock.

use crate::nodes::{self, InProcess};
use crate::stats::{percentile, sort, summary, summary_to};
use anyhow::{ensure, Context, Result};
use shoal_client::ExecutionFilter;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug)]
pub(crate) struct ReplicasArgs {
    /// Concurrent clients in each throughput run
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long each throughput run lasts
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Rounds, each running every configuration once (in a rotated order)
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sequential requests per configuration for the routing cost
    #[arg(long, default_value_t = 2000)]
    requests: usize,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PromotionArgs {
    /// How many failovers
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// The `[store]` lines that give a node these replicas (the bench's limits: a replica on the
/// same machine is never far behind).
fn with_replicas(urls: &[String], more: &str) -> impl FnOnce(String) -> String {
    let list = urls.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ");
    let more = more.to_owned();
    move |text: String| {
        if list.is_empty() && more.is_empty() {
            return text;
        }
        text.replacen("[store]\n", &format!("[store]\nreplicas = [{list}]\nreplica_max_lag = \"1h\"\n{more}\n"), 1)
    }
}

/// Waits until every replica has replayed the primary's writes so far, so that the rounds
/// compare replicas that hold the same rows.
fn caught_up(primary: &shoal_testkit::PgServer, replicas: &[&shoal_testkit::PgReplica]) -> Result<()> {
    let lsn = shoal_testkit::psql(&primary.admin_url(), "SELECT pg_current_wal_lsn()").map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in replicas {
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        while shoal_testkit::psql(&r.url_for("postgres"), &sql).map_err(anyhow::Error::msg)? != "t" {
            ensure!(Instant::now() < deadline, "a replica did not replay {lsn} within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Requests per second and per-request latencies of `concurrency` clients listing executions
/// from `url` for `duration`.
async fn list_load(url: &str, concurrency: usize, duration: Duration) -> Result<(f64, Vec<f64>)> {
    let start = Instant::now();
    let until = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let c = nodes::client(url)?;
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let list = c.executions(&ExecutionFilter::default()).await?;
                ensure!(!list.executions.is_empty(), "the list came back empty");
                took.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(took)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all.len() as f64 / start.elapsed().as_secs_f64(), all))
}

pub(crate) async fn replicas(shoal: &Path, a: ReplicasArgs) -> Result<()> {
    let primary = shoal_testkit::PgServer::start_private();
    shoal_testkit::psql(&primary.admin_url(), "CREATE DATABASE bench").map_err(anyhow::Error::msg)?;
    let first = primary.start_replica();
    let second = primary.start_replica();
    let url = primary.url_for("bench");
    let dir = tempfile::tempdir()?;
    let node =
        |id: &'static str| InProcess { id, dir: dir.path(), store: &url, pool: 16, slots: 16, lease: None, shoal };
    let (one, two) = (vec![first.url_for("bench")], vec![first.url_for("bench"), second.url_for("bench")]);
    let started = [
        ("primary alone", node("p0").start_edited(with_replicas(&[], "")).await?),
        ("one replica", node("p1").start_edited(with_replicas(&one, "")).await?),
        ("two replicas", node("p2").start_edited(with_replicas(&two, "")).await?),
        ("replica configured, reads forced to the primary", {
            node("p3").start_edited(with_replicas(&one, "route_to_primary = [\".*\"]")).await?
        }),
    ];
    // 200 finished executions to list (the list answers 50 a page).
    let c = nodes::client(started[0].1.url())?;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(nodes::submit(&c, &nodes::command(&["true"])).await?);
    }
    for id in &ids {
        nodes::wait_final(&c, id, Duration::from_secs(60)).await?;
    }
    tokio::task::block_in_place(|| caught_up(&primary, &[&first, &second]))?;
    // Every node with a replica reads from it once it is fit.
    for (name, n) in &started[1..3] {
        let c = nodes::client(n.url())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let me = c.node(n.id()).await?;
            let fit = me.replicas.as_deref().unwrap_or_default();
            if !fit.is_empty() && fit.iter().all(|r| r.state == shoal_wire::ReplicaState::Ok) {
                break;
            }
            ensure!(Instant::now() < deadline, "{name}: the replicas never became fit: {fit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    println!(
        "GET /api/v1/executions (50 of 200 rows), {} clients, {} s per run, {} rounds:",
        a.concurrency,
        a.duration.as_secs_f64(),
        a.rounds
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..a.rounds {
        for k in 0..3 {
            let i = (round + k) % 3;
            let (rate, took) = list_load(started[i].1.url(), a.concurrency, a.duration).await?;
            rates[i].push(rate);
            latencies[i].extend(took);
        }
    }
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|r| {
            sort(r);
            percentile(r, 0.5)
        })
        .collect();
    for i in 0..3 {
        println!(
            "  {:<14} median {:.0} requests/s over rounds ({}), {:.2}x the primary alone; latency {}",
            started[i].0,
            medians[i],
            rates[i].iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
            medians[i] / medians[0],
            summary(&mut latencies[i])
        );
    }

    // Proof that the reads went where they were meant to.
    for (name, n) in &started[1..] {
        let me = nodes::client(n.url())?.node(n.id()).await?;
        let reads: Vec<String> =
            me.replicas.unwrap_or_default().iter().map(|r| format!("{} {}", r.address, r.reads)).collect();
        println!("  reads served by the replicas of {name}: {}", reads.join(", "));
    }
    println!("GET /api/v1/executions/{{id}}, one at a time, {} requests each, interleaved:", a.requests);
    let order = [0usize, 3, 1];
    let clients: Vec<_> = order.iter().map(|&i| nodes::client(started[i].1.url())).collect::<Result<_>>()?;
    let mut took: Vec<Vec<f64>> = vec![Vec::new(); order.len()];
    for r in 0..a.requests {
        for (k, c) in clients.iter().enumerate() {
            let t = Instant::now();
            c.execution(&ids[r % ids.len()]).await?;
            took[k].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let base = {
        let mut b = took[0].clone();
        sort(&mut b);
        percentile(&b, 0.5)
    };
    for (k, &i) in order.iter().enumerate() {
        let mut v = took[k].clone();
        sort(&mut v);
        let median = percentile(&v, 0.5);
        println!(
            "  {:<48} {}; median {:+.3} ms against no replicas",
            started[i].0,
            summary_to(&mut took[k], 3),
            median - base
        );
    }
    for (_, n) in started {
        n.shutdown().await;
    }
    Ok(())
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) async fn promotion(shoal: &Path, a: PromotionArgs) -> Result<()> {
    let mut figures = Vec::new();
    for round in 0..a.rounds {
        let primary = shoal_testkit::PgServer::start_private();
        shoal_testkit::psql(&primary.admin_url(), "CREATE DATABASE bench").map_err(anyhow::Error::msg)?;
        let replica = primary.start_replica();
        let url = shoal_testkit::multi_host_url(&[primary.port(), replica.port()], "bench");
        let dir = tempfile::tempdir()?;
        let node =
            InProcess { id: "n1", dir: dir.path(), store: &url, pool: 8, slots: 4, lease: None, shoal }.start().await?;
        let c = nodes::client(node.url())?.with_patience(Duration::from_secs(60));
        // The store is in use, and the replica has it all, before the primary dies.
        let warm = nodes::submit(&c, &nodes::command(&["true"])).await?;
        nodes::wait_final(&c, &warm, Duration::from_secs(30)).await?;
        tokio::task::block_in_place(|| caught_up(&primary, &[&replica]))?;
        primary.kill();
        tokio::task::block_in_place(|| replica.promote());
        let promoted = wall_ms();
        let id = nodes::submit(&c, &nodes::command(&["true"])).await?;
        nodes::wait_final(&c, &id, Duration::from_secs(60)).await?;
        let store = shoal_store::Store::open(&replica.url_for("bench"), 1).await?;
        let attempts = store.list_attempts(&id).await?;
        let started = attempts.first().context("the execution has no attempt")?.started_at;
        let ms = (started - promoted) as f64;
        println!("  failover {}: first claim {ms:.0} ms after the promotion", round + 1);
        figures.push(ms);
        node.shutdown().await;
    }
    println!("promotion to the first claim on the new primary, {} failovers: {}", a.rounds, summary(&mut figures));
    Ok(())
}
