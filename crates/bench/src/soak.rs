//! `soak`: real processes under CPU pressure with a steady load of short executions; every
//! node's view of the others is sampled, and any node seen dead or lost while its process is
//! alive, or any execution re-run or ended for node loss, counts as a false death.

use crate::nodes::{self, Procs};
use anyhow::{ensure, Context, Result};
use parking_lot::Mutex;
use shoal_wire::{GossipView, NodeState};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub(crate) struct SoakArgs {
    /// Store URL every node shares
    #[arg(long)]
    store: String,
    /// How long the load runs, e.g. `10m` or `90s`
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    duration: Duration,
    /// How many `shoal server` processes
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Threads spinning on the CPU in the bench process
    #[arg(long, default_value_t = 2)]
    burn: usize,
    /// The nodes' lease
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    lease: Duration,
    /// Executions of `sh -c "sleep 0.2"` submitted per second per node (plus one `true` per
    /// second per node)
    #[arg(long, default_value_t = 4)]
    rate: u32,
}

#[derive(Default)]
struct SoakCounts {
    samples: AtomicU64,
    unanswered: AtomicU64,
    sightings: AtomicU64,
    submit_errors: AtomicU64,
}

pub(crate) async fn run(shoal: &Path, a: SoakArgs) -> Result<()> {
    let mut c = Procs::start(shoal, &a.store, a.nodes, a.lease, 8).await?;
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
        let (counts, submitted, stop) = (counts.clone(), submitted.clone(), stop.clone());
        let clients = nodes::clients(&urls)?;
        let tick = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick);
            // Ticks until the next `true`s.
            let mut until_true = 0u32;
            while !stop.load(Ordering::SeqCst) {
                every.tick().await;
                let with_true = until_true == 0;
                until_true = if with_true { a.rate.max(1) - 1 } else { until_true - 1 };
                for client in &clients {
                    let mut bodies = vec![nodes::command(&["sh", "-c", "sleep 0.2"])];
                    if with_true {
                        bodies.push(nodes::command(&["true"]));
                    }
                    for body in bodies {
                        let (client, counts, submitted) = (client.clone(), counts.clone(), submitted.clone());
                        tokio::spawn(async move {
                            match nodes::submit(&client, &body).await {
                                Ok(id) => submitted.lock().push(id),
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
        let (ids, counts, deaths, stop) = (ids.clone(), counts.clone(), deaths.clone(), stop.clone());
        let clients: Vec<_> =
            nodes::clients(&urls)?.into_iter().map(|c| c.with_request_timeout(Duration::from_secs(2))).collect();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            while !stop.load(Ordering::SeqCst) {
                every.tick().await;
                let views =
                    futures::future::join_all(clients.iter().map(|c| async move { c.nodes().await.ok() })).await;
                for (observer, view) in ids.iter().zip(views) {
                    let Some(view) = view else {
                        counts.unanswered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    counts.samples.fetch_add(1, Ordering::Relaxed);
                    for n in &view.nodes {
                        let subject = n.id.as_str();
                        if !ids.iter().any(|i| i == subject) {
                            continue;
                        }
                        if n.gossip == GossipView::Dead || n.state == NodeState::Lost {
                            counts.sightings.fetch_add(1, Ordering::Relaxed);
                            deaths.lock().push(format!(
                                "{:.1}s: {observer} saw {subject} gossip={:?} state={} lease_expires_in_ms={}",
                                t0.elapsed().as_secs_f64(),
                                n.gossip,
                                n.state,
                                n.lease_expires_in_ms
                            ));
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
            if !p.server.running() && !exited.contains(&p.id) {
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
    let ours: HashSet<String> = submitted.lock().iter().cloned().collect();
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
    c.stop_all().await?;
    let succeeded = rows.iter().filter(|e| e.state == shoal_core::ExecState::Succeeded).count();
    let lost = rows.iter().filter(|e| e.attempt > 1 || e.reason == "node_lost").count();
    let deaths = deaths.lock().clone();
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
