//! `forwarding`: a file of a `local` sandbox held by node B, downloaded directly from B and
//! through node A, which signs the request and forwards it to B; interleaved, sequential.

use crate::nodes::{self, InProcess};
use crate::stats::{percentile, summary_to};
use anyhow::{ensure, Context, Result};
use shoal_client::Client;
use shoal_wire::CreateSandboxRequest;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Downloads `path` of `sandbox` through `c`; answers how long it took, in milliseconds.
async fn fetch(c: &Client, sandbox: &str, path: &str, content: &[u8]) -> Result<f64> {
    let t = Instant::now();
    let body = nodes::read_all(c.download(sandbox, path).await?.stream).await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(body == content, "GET of {path} through {} answered {} other bytes", c.current_server(), body.len());
    Ok(ms)
}

pub(crate) async fn run(shoal: &Path, a: ForwardingArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let store = a.store.clone().unwrap_or_else(|| format!("sqlite://{}/shoal.db", dir.path().display()));
    let node = |id| InProcess { id, dir: dir.path(), store: &store, pool: 8, slots: 4, lease: None, shoal };
    let node_a = node("fwd-a").start().await?;
    let node_b = node("fwd-b").start().await?;
    let urls = vec![node_a.url().to_owned(), node_b.url().to_owned()];
    nodes::wait_formed(&urls, &["fwd-a".into(), "fwd-b".into()], nodes::FORM_LIMIT).await?;
    let (via_a, direct) = (nodes::client(&urls[0])?, nodes::client(&urls[1])?);
    let root = dir.path().join("local-b");
    let name = format!("fwd{}", std::process::id());
    let root_text = root.to_str().context("the temporary folder is not UTF-8")?;
    let request = CreateSandboxRequest {
        name: name.clone(),
        kind: "local".into(),
        root: Some(root_text.to_owned()),
        node: Some("fwd-b".into()),
        ..CreateSandboxRequest::default()
    };
    direct.create_sandbox(&request).await.context("cannot create the sandbox")?;
    let content: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(root.join("small.txt"), &content).context("cannot write the sandbox file")?;
    let path = "small.txt";

    for _ in 0..a.warmup {
        fetch(&direct, &name, path, &content).await?;
        fetch(&via_a, &name, path, &content).await?;
    }
    let (mut d, mut f) = (Vec::with_capacity(a.count), Vec::with_capacity(a.count));
    for i in 0..a.count {
        // Alternate which goes first, so neither always follows the other.
        if i % 2 == 0 {
            d.push(fetch(&direct, &name, path, &content).await?);
            f.push(fetch(&via_a, &name, path, &content).await?);
        } else {
            f.push(fetch(&via_a, &name, path, &content).await?);
            d.push(fetch(&direct, &name, path, &content).await?);
        }
    }
    let dialect = node_a.store().dialect_name();
    // A served what it forwarded, not the same file from the same disk: with B gone, A has
    // nothing to serve it from. (The client does not show the `x-shoal-served-by` header.)
    node_b.shutdown().await;
    let after = tokio::time::timeout(Duration::from_secs(30), via_a.download(&name, path)).await;
    ensure!(
        matches!(after, Ok(Err(_))),
        "fwd-a still served {path} of fwd-b's local sandbox after fwd-b stopped: it was not forwarding"
    );
    node_a.shutdown().await;
    let ds = summary_to(&mut d, 3);
    let fs = summary_to(&mut f, 3);
    println!(
        "forwarding store={dialect} count={}: direct to the holder {ds}; forwarded by the other node {fs}; forwarded minus direct: median {:+.3} ms, p99 {:+.3} ms",
        a.count,
        percentile(&f, 0.5) - percentile(&d, 0.5),
        percentile(&f, 0.99) - percentile(&d, 0.99)
    );
    Ok(())
}
