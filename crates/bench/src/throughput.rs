//! `throughput`: executions per second end to end, from the first submission until the store
//! counts every execution final, on one or more in-process nodes sharing one store, with
//! `--concurrency` clients submitting round-robin over the nodes.

use crate::nodes::{self, InProcess};
use crate::Common;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub(crate) struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    /// In-process nodes on the one store, submissions round-robin across them
    #[arg(long, default_value_t = 1)]
    nodes: usize,
}

pub(crate) async fn run(shoal: &Path, a: ThroughputArgs) -> Result<()> {
    let (c, n) = (&a.common, a.nodes);
    ensure!(n >= 1, "--nodes must be at least 1");
    let job = match c.kind.as_str() {
        "noop" => "jobs/noop.toml",
        "true" => "jobs/true.toml",
        other => bail!("unknown kind `{other}`; use noop or true"),
    };
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let store_url = c.store.clone().unwrap_or_else(|| format!("sqlite://{}/shoal.db", dir.path().display()));
    let mut nodes = Vec::new();
    for i in 1..=n {
        let id = if n == 1 { "bench".to_owned() } else { format!("bench{i}") };
        let spec =
            InProcess { id: &id, dir: dir.path(), store: &store_url, pool: 16, slots: c.slots, lease: None, shoal };
        nodes.push(spec.start().await?);
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.id().to_owned()).collect();
    if n > 1 {
        nodes::wait_formed(&urls, &ids, nodes::FORM_LIMIT).await?;
    }
    let clients = nodes::clients(&urls)?;
    let root = dir.path().join("sandbox");
    std::fs::create_dir_all(root.join("jobs")).context("cannot create the sandbox folder")?;
    std::fs::write(root.join("jobs/noop.toml"), "kind = \"noop\"\n").context("cannot write a job file")?;
    std::fs::write(root.join("jobs/true.toml"), "command = [\"true\"]\n").context("cannot write a job file")?;
    let sandbox = format!("bench{}", std::process::id());
    nodes::shared_sandbox(&clients[0], &sandbox, &root).await?;

    let store = nodes[0].store();
    let done_before = nodes::count_final(&store).await?;
    let body = nodes::job(&sandbox, job);
    let t0 = Instant::now();
    nodes::submit_spread(&clients, &body, c.count, c.concurrency).await?;
    let submitted = t0.elapsed();
    while nodes::count_final(&store).await? - done_before < c.count as i64 {
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
