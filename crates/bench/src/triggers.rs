//! `schedules` and `files`: firing and file-event lateness across real nodes, from the store's
//! own timestamps.
//!
//! - **schedules**: N nodes, S schedules firing every second; lateness from each firing time
//!   to its claim (the firing row and its execution committed) and to its execution's start.
//! - **files**: a file listener on a shared sandbox watched by N nodes; files dropped one by
//!   one; time from each file's last write, plus the settle time, to its execution's start.

use crate::nodes::{self, Procs};
use crate::stats::summary;
use anyhow::{ensure, Context, Result};
use shoal_wire::{ListenerRequest, OnFileRequest, ScheduleRequest};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

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
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Each node's `executor.slots` (no-op executions are claimed up to this many at once)
    #[arg(long, default_value_t = 64)]
    slots: u32,
}

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
    #[arg(long, default_value = "20ms", value_parser = crate::parse_duration)]
    every: Duration,
    /// The listener's settle time
    #[arg(long, default_value = "200ms", value_parser = crate::parse_duration)]
    settle: Duration,
}

pub(crate) async fn schedules(shoal: &Path, a: SchedulesArgs) -> Result<()> {
    let mut c = Procs::start(shoal, &a.store, a.nodes, Duration::from_secs(10), a.slots).await?;
    let clients = nodes::clients(&c.urls())?;
    let root = c.dir.path().join("sched");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("tick.toml"), "kind = \"noop\"\n[params.fire]\nrequired = true\n")?;
    nodes::shared_sandbox(&clients[0], "sched", &root).await?;
    let store = shoal_store::Store::open(&a.store, 2).await?;
    println!(
        "schedules: {} nodes ({} slots each), store {}, every schedule fires each second",
        a.nodes,
        a.slots,
        store.dialect_name()
    );
    let mut created = 0usize;
    for &count in &a.schedules {
        while created < count {
            let request = ScheduleRequest {
                name: Some(format!("s{created}")),
                sandbox: Some("sched".into()),
                job: Some("tick.toml".into()),
                cron: Some("* * * * * *".into()),
                params: Some([("fire".to_owned(), "{fire_unix_ms}".into())].into()),
                ..ScheduleRequest::default()
            };
            clients[created % clients.len()].schedules().create(&request).await.context("cannot create a schedule")?;
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
        let mut seen = HashSet::new();
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
    c.stop_all().await
}

pub(crate) async fn files(shoal: &Path, a: FilesArgs) -> Result<()> {
    let mut c = Procs::start(shoal, &a.store, a.nodes, Duration::from_secs(10), 8).await?;
    let client = nodes::client(&c.procs[0].url)?;
    let root = c.dir.path().join("drop");
    std::fs::create_dir_all(root.join("in"))?;
    std::fs::write(root.join("load.toml"), "kind = \"noop\"\n[params.file]\nrequired = true\n")?;
    nodes::shared_sandbox(&client, "drop", &root).await?;
    let settle = a.settle.as_millis() as u64;
    let request = ListenerRequest {
        name: Some("files".into()),
        kind: Some("file".into()),
        sandbox: Some("drop".into()),
        job: Some("load.toml".into()),
        params: Some([("file".to_owned(), "{event.path}".into())].into()),
        on_file: Some(OnFileRequest {
            sandbox: "drop".into(),
            pattern: "in/*.csv".into(),
            events: None,
            settle: Some(format!("{settle}ms")),
        }),
        ..ListenerRequest::default()
    };
    let id = client.listeners().create(&request).await.context("cannot create the listener")?.id;
    let store = shoal_store::Store::open(&a.store, 2).await?;
    let mut written = HashMap::new();
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
        let path = e.payload.get("path").map_or("", String::as_str);
        let arrived =
            written.get(path).with_context(|| format!("an event for a file not dropped: {path}"))? + settle as i64;
        to_start.push((exec.started_at.unwrap_or_default() - arrived) as f64);
    }
    println!(
        "files: {} nodes, store {}, {} files one every {:?}, settle {settle} ms: {} events, {} distinct files",
        a.nodes,
        store.dialect_name(),
        a.files,
        a.every,
        events.len(),
        events.iter().filter_map(|e| e.payload.get("path")).collect::<HashSet<_>>().len()
    );
    println!("  last write + settle → execution started: {}", summary(&mut to_start));
    c.stop_all().await
}
