//! `shoal up`: one command from nothing to a running node with the example sandbox, on the
//! embedded SQLite store, so a new user can try shoal before configuring anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The example sandbox, built into the binary so `shoal up` works from any folder.
const EXAMPLES: &[(&str, &str)] = &[
    ("jobs/orders-report.toml", include_str!("../../../examples/sandbox/jobs/orders-report.toml")),
    ("jobs/flaky-upload.toml", include_str!("../../../examples/sandbox/jobs/flaky-upload.toml")),
    ("jobs/slow-export.toml", include_str!("../../../examples/sandbox/jobs/slow-export.toml")),
    ("jobs/greet.toml", include_str!("../../../examples/sandbox/jobs/greet.toml")),
    ("jobs/noop.toml", include_str!("../../../examples/sandbox/jobs/noop.toml")),
    ("scripts/orders-report.sh", include_str!("../../../examples/sandbox/scripts/orders-report.sh")),
    ("scripts/flaky-upload.sh", include_str!("../../../examples/sandbox/scripts/flaky-upload.sh")),
    ("data/orders.csv", include_str!("../../../examples/sandbox/data/orders.csv")),
];

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Folder for the node's data, its SQLite store and the example sandbox
    #[arg(long, default_value = ".shoal")]
    data_dir: PathBuf,
    /// Address to serve the API on (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: String,
    /// Concurrent attempts
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Run this job of the example sandbox once the node is up and show its logs (repeatable),
    /// e.g. `--run jobs/orders-report.toml`
    #[arg(long = "run", value_name = "JOB")]
    run: Vec<String>,
    /// Stop after the --run jobs have finished instead of serving until Ctrl-C; the exit code
    /// is 1 if any of them did not succeed
    #[arg(long)]
    exit: bool,
}

/// Writes the example files that are missing (a user's edits are kept).
fn write_examples(root: &Path) -> std::io::Result<()> {
    for (rel, text) in EXAMPLES {
        let path = root.join(rel);
        if path.exists() {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text)?;
    }
    Ok(())
}

pub async fn run(args: UpArgs) -> u8 {
    crate::init_logging("warn,shoal_server=info", false);
    match up(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            3
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<u8> {
    use anyhow::Context;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let sandbox_root = data_dir.join("sandboxes").join("examples");
    write_examples(&sandbox_root).context("cannot write the example sandbox")?;
    let config_text = format!(
        "node_id = \"n1\"\ndata_dir = {:?}\n[http]\nlisten = {:?}\n[executor]\nslots = {}\n",
        data_dir.display().to_string(),
        args.listen,
        args.slots
    );
    // Environment overrides still apply, as for `shoal server`.
    let config = shoal_server::Config::parse(&config_text, "(shoal up)", std::env::vars())?;
    let node = shoal_server::start(config).await?;
    let store = node.store();
    let root_text = sandbox_root.display().to_string();
    match store.create_sandbox("examples", shoal_core::SandboxKind::Shared, &root_text, None).await {
        Ok(_) | Err(shoal_store::StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if let Ok(Some(s)) = store.get_sandbox("examples").await {
        if s.root != root_text {
            eprintln!("note: sandbox `examples` is registered at {}, not {root_text}; leaving it as it is", s.root);
        }
    }
    println!("shoal is up: node {} at {} (store {})", node.id(), node.url(), store.redacted_url());
    println!("sandbox `examples` is at {root_text}");
    println!("try, in another terminal:");
    println!("  shoal --server {} run examples/jobs/greet.toml -p name=you --follow", node.url());
    println!("  shoal --server {} ps", node.url());

    let mut failed = false;
    if !args.run.is_empty() {
        for job in &args.run {
            let job = job.trim_start_matches("examples/");
            println!("\n$ shoal run examples/{job} --follow");
            match run_and_follow(node.url(), "examples", job).await {
                Ok(true) => {}
                Ok(false) => failed = true,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    failed = true;
                }
            }
        }
    }
    if args.exit {
        node.shutdown().await;
        return Ok(u8::from(failed));
    }
    println!("\nserving until Ctrl-C");
    crate::shutdown_signal().await;
    println!("stopping");
    tokio::time::timeout(Duration::from_secs(30), node.shutdown()).await.ok();
    Ok(0)
}

/// Submits a job through the node's API, streams its logs to stdout, and reports whether it
/// succeeded.
async fn run_and_follow(url: &str, sandbox: &str, job: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{url}/api/v1/executions"))
        .json(&serde_json::json!({"sandbox": sandbox, "job": job}))
        .send()
        .await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    if !status.is_success() {
        anyhow::bail!(
            "{} ({})",
            body["error"]["message"].as_str().unwrap_or("?"),
            body["error"]["code"].as_str().unwrap_or("?")
        );
    }
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    eprintln!("execution {id} accepted");
    let mut logs = http.get(format!("{url}/api/v1/executions/{id}/logs?follow=true")).send().await?;
    while let Some(chunk) = logs.chunk().await? {
        std::io::stdout().write_all(&chunk)?;
        std::io::stdout().flush()?;
    }
    let e: serde_json::Value = http.get(format!("{url}/api/v1/executions/{id}")).send().await?.json().await?;
    eprintln!(
        "execution {id} {} ({}) after {} attempt(s)",
        e["state"].as_str().unwrap_or("?"),
        e["message"].as_str().unwrap_or(""),
        e["attempt"]
    );
    Ok(e["state"] == "succeeded")
}
