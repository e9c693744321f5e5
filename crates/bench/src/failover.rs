//! `failover`: real `shoal server` processes on one store; the process running an attempt is
//! SIGKILLed and the time until the next attempt's first heartbeat is measured from the
//! heartbeats themselves (each line carries its fencing token and a nanosecond timestamp).

use crate::nodes::{self, Procs};
use crate::stats::{now_ns, summary};
use anyhow::{bail, ensure, Context, Result};
use shoal_wire::ExecutionState;
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

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
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    lease: Duration,
}

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

pub(crate) async fn run(shoal: &Path, a: FailoverArgs) -> Result<()> {
    let mut c = Procs::start(shoal, &a.store, a.nodes, a.lease, 8).await?;
    let clients = nodes::clients(&c.urls())?;
    let sandbox = c.dir.path().join("sb");
    std::fs::create_dir_all(sandbox.join("jobs")).context("cannot create the sandbox folder")?;
    std::fs::write(sandbox.join("jobs/beat.toml"), BEATING_JOB).context("cannot write the job file")?;
    let name = format!("failover{}", std::process::id());
    nodes::shared_sandbox(&clients[0], &name, &sandbox).await?;
    let dialect = shoal_store::Store::open(&a.store, 1).await.context("cannot open the store")?.dialect_name();

    let mut times = Vec::new();
    let (mut violations, mut not_succeeded, mut same_node, mut extra_tokens) = (0usize, 0usize, 0usize, 0usize);
    for round in 0..a.kills {
        let entry = &clients[round % clients.len()];
        let id = nodes::submit(entry, &nodes::job(&name, "jobs/beat.toml")).await?;
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
        // SIGKILL, the process alone (not its group), as a crash would.
        c.procs[victim].server.kill()?;

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

        let survivor = &clients[(victim + 1) % clients.len()];
        let e = nodes::wait_final(survivor, &id, Duration::from_secs(60)).await?;
        if e.state != ExecutionState::Succeeded {
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
            e.state,
            e.attempt
        );
        c.restart(victim).await?;
    }
    c.stop_all().await?;
    let n = times.len();
    println!(
        "failover store={dialect} nodes={} lease={} kills={n}: SIGKILL to the next attempt's first beat {}; fencing violations (old token beating after the new one started) {violations}; not succeeded {not_succeeded}; re-run on the killed node {same_node}; extra attempts {extra_tokens}",
        a.nodes,
        shoal_core::duration::format(a.lease),
        summary(&mut times)
    );
    Ok(())
}
