//! `cutoff`: an in-process node reaches PostgreSQL through the harness's TCP proxy, which is
//! cut while the node runs an attempt; how long before its lease ends it kills its child, and
//! how long after the lease ends another node starts the next attempt, both on the store's
//! clock.

use crate::nodes::{self, InProcess};
use crate::stats::{summary, summary_min};
use anyhow::{ensure, Context, Result};
use shoal_client::NodeAction;
use shoal_procs::Proxy;
use shoal_wire::ExecutionState;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub(crate) struct CutoffArgs {
    /// PostgreSQL URL (node A reaches it through a proxy the bench cuts)
    #[arg(long)]
    store: String,
    /// How many cuts
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The nodes' lease
    #[arg(long, default_value = "4s", value_parser = crate::parse_duration)]
    lease: Duration,
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

/// Whether a process exists (signal 0 only checks).
fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; it only asks whether the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

struct CutRound {
    cut_to_kill_ms: f64,
    killed_before_lease_end_ms: i64,
    took_over_after_lease_end_ms: i64,
}

pub(crate) async fn run(shoal: &Path, a: CutoffArgs) -> Result<()> {
    ensure!(a.store.starts_with("postgres"), "the cutoff bench needs a postgres:// store (it cuts a TCP connection)");
    let (before, host, after) = split_host(&a.store)?;
    let target = tokio::net::lookup_host(host.as_str())
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    let proxy = Proxy::start(target).await?;
    let via_proxy = format!("{before}127.0.0.1:{}{after}", proxy.port());
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let node = |id, store| InProcess { id, dir: dir.path(), store, pool: 4, slots: 4, lease: Some(a.lease), shoal };
    let node_a = node("cut-a", &via_proxy).start().await?;
    let node_b = node("cut-b", &a.store).start().await?;
    let urls = vec![node_a.url().to_owned(), node_b.url().to_owned()];
    let ids = vec!["cut-a".to_owned(), "cut-b".to_owned()];
    let (client_a, client_b) = (nodes::client(&urls[0])?, nodes::client(&urls[1])?);
    nodes::wait_formed(&urls, &ids, nodes::FORM_LIMIT).await?;
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
        client_b.node_action("cut-b", NodeAction::Suspend).await.context("cannot suspend cut-b")?;
        let id = nodes::submit(&client_a, &nodes::command(&["sh", "-c", &script])).await?;
        let pid_file = pids.join(format!("{id}.pid"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid: i32 = loop {
            if let Some(p) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse().ok()) {
                break p;
            }
            ensure!(Instant::now() < deadline, "execution {id}: attempt 1 did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        client_b.node_action("cut-b", NodeAction::Resume).await.context("cannot resume cut-b")?;
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

        let e = nodes::wait_final(&client_b, &id, a.lease * 2 + Duration::from_secs(30)).await?;
        ensure!(e.state == ExecutionState::Succeeded, "round {round}: execution {id} ended {}: {}", e.state, e.message);
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
        nodes::wait_ready(&client_a, nodes::FORM_LIMIT).await?;
        nodes::wait_formed(&urls, &ids, nodes::FORM_LIMIT).await?;
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
