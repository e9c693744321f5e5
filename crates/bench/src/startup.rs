//! `startup`: a real `shoal server` process on a fresh data folder with SQLite, from spawn
//! until `/health/ready` answers 200 (asked every millisecond), then its resident memory after
//! 3 s idle.

use crate::stats::{percentile, sort};
use anyhow::{ensure, Context, Result};
use shoal_procs::{Server, Spec};
use std::path::Path;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) async fn run(shoal: &Path, count: usize) -> Result<()> {
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..count {
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let spec = Spec::new("startup", shoal, ["server".into()], dir.path().join("server.log"))
            .env("SHOAL_DATA_DIR", dir.path().join("data"))
            .env("SHOAL_NODE_ID", "bench")
            .env("SHOAL_HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .die_with_parent();
        let t0 = Instant::now();
        let mut server = Server::spawn(spec)?;
        server.wait_ready_polling(&url, t0 + Duration::from_secs(20), Duration::from_millis(1)).await?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Idle: let the first lease renewals and worker loops run before measuring.
        tokio::time::sleep(Duration::from_secs(3)).await;
        rss.push(rss_kib(server.id()).unwrap_or(0) as f64 / 1024.0);
        let status = server.stop(Duration::from_secs(30)).await?;
        ensure!(status.success(), "the node did not stop cleanly ({status}):\n{}", server.log_tail(30));
    }
    sort(&mut times);
    sort(&mut rss);
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
