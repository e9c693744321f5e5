//! `latency`: one in-process node, one execution at a time with free slots; the time from
//! sending the submission to the job's process running (it prints `date +%s%N`), with where
//! that time goes from the store's own timestamps.

use crate::nodes::{self, InProcess};
use crate::stats::{now_ns, percentile, sort};
use crate::Common;
use anyhow::{ensure, Context, Result};
use shoal_wire::ExecutionState;
use std::path::Path;
use std::time::Duration;

pub(crate) async fn run(shoal: &Path, c: Common) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let store_url = c.store.clone().unwrap_or_else(|| format!("sqlite://{}/shoal.db", dir.path().display()));
    let spec =
        InProcess { id: "bench", dir: dir.path(), store: &store_url, pool: 16, slots: c.slots, lease: None, shoal };
    let node = spec.start().await?;
    let client = nodes::client(node.url())?;
    let store = node.store();
    let mut samples = Vec::with_capacity(c.count);
    // Where the time goes, from the store's own timestamps (millisecond resolution):
    // request sent -> row committed, committed -> claimed, claimed -> process running.
    let (mut to_commit, mut to_claim, mut to_process) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..c.count {
        let sent = now_ns();
        let id = nodes::submit(&client, &nodes::command(&["date", "+%s%N"])).await?;
        let logs = loop {
            let e = client.execution(&id).await?;
            if e.state == ExecutionState::Succeeded {
                break nodes::read_all(client.logs(&id, false, None).await?).await?;
            }
            ensure!(!e.state.is_final(), "execution ended {}", e.state);
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let started: i128 = String::from_utf8_lossy(&logs).trim().parse().context("the job printed no time")?;
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
        sort(v);
    }
    println!(
        "dispatch latency store={} count={}: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (submission to process start)",
        store.dialect_name(),
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
    node.shutdown().await;
    Ok(())
}
