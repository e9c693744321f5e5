//! `shoal up`: one command from nothing to a running local cluster with the example sandbox,
//! on the embedded SQLite store, so a new user can try shoal before configuring anything.
//!
//! With one node (the default) the node runs in this process. With `--nodes N` it starts N
//! real `shoal server` processes (n1..nN) on one shared store, each with its own config, data
//! folder and log under `<data-dir>/nK`: they find each other through the store's node
//! registry and gossip, as nodes on separate machines do, so killing one shows a real
//! takeover. The processes are started, probed, signalled and killed through the one process
//! harness (`shoal_procs`, shared with the tests and the benchmarks); they die with this
//! process (`PR_SET_PDEATHSIG`), so a killed `up` leaves nothing running.

use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// How long the nodes of a cluster have to start, answer readiness and see each other alive.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long each node has after SIGTERM to hand back its attempts and release its lease.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Lines of a node's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;
/// Where a node answers whether it is ready, and how long one ask may take.
const READY_PATH: &str = "/api/v1/health/ready";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Exit code when Ctrl-C or SIGTERM stops `up` before it serves (128 + SIGINT, as a shell
/// reports a command killed by Ctrl-C).
const INTERRUPTED: u8 = 130;

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

/// Start a local node, or with `--nodes N` a cluster of N local `shoal server` processes, on
/// the embedded SQLite store with the example sandbox
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Folder for the nodes' data, their SQLite store and the example sandbox
    #[arg(long, default_value = ".shoal")]
    data_dir: PathBuf,
    /// Address to serve the API on (port 0 picks a free one); with --nodes N and port P, the
    /// nodes use ports P to P+N-1
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: String,
    /// Concurrent attempts (per node)
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Nodes to start: 1 runs in this process; more start that many `shoal server` processes
    /// (n1, n2, ...) sharing DATA_DIR/shoal.db, each with its config, data and server.log in
    /// DATA_DIR/nK
    #[arg(long, default_value_t = 1, value_parser = node_count)]
    nodes: u32,
    /// Run this job of the example sandbox once the node is up and show its logs (repeatable),
    /// e.g. `--run jobs/orders-report.toml`; with several nodes it is submitted to n1
    #[arg(long = "run", value_name = "JOB")]
    run: Vec<String>,
    /// Stop after the --run jobs have finished instead of serving until Ctrl-C; the exit code
    /// is 1 if any of them did not succeed
    #[arg(long)]
    exit: bool,
}

fn node_count(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("a cluster needs at least one node".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a number of nodes")),
    }
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
    let result = if args.nodes == 1 { up(args).await } else { up_cluster(args).await };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            3
        }
    }
}

/// One node, in this process.
async fn up(args: UpArgs) -> anyhow::Result<u8> {
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
    let token = {
        let store = open_store(&config.store).await?;
        up_token(&store, &data_dir).await?
    };
    let node = shoal_server::start(config).await?;
    let store = node.store();
    let root_text = sandbox_root.display().to_string();
    register_examples(&store, &root_text).await?;
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
            match run_and_follow(node.url(), &token, "examples", job, false).await {
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

/// Opens the store as this process's own handle (to register the sandbox and the token).
async fn open_store(config: &shoal_server::config::StoreConfig) -> anyhow::Result<shoal_store::Store> {
    let url = &config.url;
    shoal_store::Store::open_with_session(url, 1, config.session_url.as_deref()).await.map_err(|e| match e {
        shoal_store::StoreError::Unavailable(m) => anyhow::anyhow!("{m}"),
        other => anyhow::anyhow!("store {}: {other}", shoal_store::redact(url)),
    })
}

/// The admin token of this `shoal up`, in `DATA_DIR/admin.token`: kept from an earlier run if
/// the store still takes it, else made anew. The CLI run in the folder `shoal up` ran in reads
/// `.shoal/admin.token` by itself; for another `--data-dir`, this says how to point it there.
async fn up_token(store: &shoal_store::Store, data_dir: &Path) -> anyhow::Result<String> {
    let file = data_dir.join(shoal_service::tokens::ADMIN_TOKEN_FILE);
    let token = shoal_service::tokens::ensure_file_token(store, &file, "shoal-up", "shoal up").await?;
    let here = std::env::current_dir().ok().map(|d| d.join(crate::client_tokens::UP_TOKEN_FILE));
    if here.and_then(|h| std::fs::canonicalize(h).ok()).as_deref() == std::fs::canonicalize(&file).ok().as_deref() {
        println!("admin token: {} (the CLI run in this folder uses it)", file.display());
    } else {
        println!("admin token: {} (for the CLI: export SHOAL_TOKEN_FILE={})", file.display(), file.display());
    }
    Ok(token)
}

/// Registers the example folder as shared sandbox `examples`, leaving an existing registration
/// (perhaps of a folder the user chose) as it is.
async fn register_examples(store: &shoal_store::Store, root_text: &str) -> anyhow::Result<()> {
    match store.create_sandbox("examples", shoal_core::SandboxKind::Shared, root_text, None, &[]).await {
        Ok(_) | Err(shoal_store::StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if let Ok(Some(s)) = store.get_sandbox("examples").await {
        if s.root != root_text {
            eprintln!("note: sandbox `examples` is registered at {}, not {root_text}; leaving it as it is", s.root);
        }
    }
    Ok(())
}

/// Submits a job through the node's API, streams its logs to stdout, and reports whether it
/// succeeded; `show_node` names the node that ran it (which matters once there are several).
async fn run_and_follow(url: &str, token: &str, sandbox: &str, job: &str, show_node: bool) -> anyhow::Result<bool> {
    use futures::StreamExt;
    use std::io::Write;
    let client = shoal_client::Client::new(vec![url.to_owned()])?.with_token(token)?;
    let request = shoal_wire::SubmitRequest {
        sandbox: Some(sandbox.to_owned()),
        job: Some(job.to_owned()),
        ..shoal_wire::SubmitRequest::default()
    };
    let (execution, _) = client.submit(&request).await?;
    let id = execution.id;
    eprintln!("execution {id} accepted");
    let mut logs = client.logs(&id, true, None).await?;
    while let Some(chunk) = logs.next().await {
        std::io::stdout().write_all(&chunk?)?;
        std::io::stdout().flush()?;
    }
    let e = client.execution(&id).await?;
    let node = match &e.node {
        Some(node) if show_node => format!(" on node {node}"),
        _ => String::new(),
    };
    eprintln!("execution {id} {}{node} ({}) after {} attempt(s)", e.state, e.message, e.attempt);
    Ok(e.state == shoal_wire::ExecutionState::Succeeded)
}

/// One node of a local cluster: where its files are.
struct NodeSpec {
    id: String,
    config: PathBuf,
    log: PathBuf,
}

/// A node's `shoal server` process and what this run has learnt of it.
struct NodeProc {
    id: String,
    log: PathBuf,
    server: shoal_procs::Server,
    /// From the store's node registry, once the node has registered in this run.
    url: Option<String>,
    /// The registry generation of this run's process (0 until it registered).
    generation: i64,
    ready: bool,
    /// Why it is not up yet, for the error if it never is.
    waiting_for: String,
    /// Whether its exit has been reported to the user.
    reported: bool,
}

impl NodeProc {
    fn pid(&self) -> u32 {
        self.server.id()
    }

    /// Reaps the process if it has exited (the status is kept once reaped).
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        match self.server.try_wait() {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(node = %self.id, error = %e, "cannot check whether the node's process exited");
                None
            }
        }
    }
}

/// The cluster's processes. Any still running when this is dropped (a panic) are killed by
/// their `Server`'s drop; every other path stops them with [`stop_all`] first, which lets them
/// release their leases.
#[derive(Default)]
struct Procs(Vec<NodeProc>);

/// Ctrl-C and SIGTERM, listened for from before the first node starts, so that neither kills
/// `up` before it has stopped its nodes.
struct Interrupt {
    int: Signal,
    term: Signal,
}

impl Interrupt {
    fn new() -> anyhow::Result<Interrupt> {
        Ok(Interrupt {
            int: signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Several nodes, each a `shoal server` child process, on one store.
async fn up_cluster(args: UpArgs) -> anyhow::Result<u8> {
    let listen: SocketAddr = args.listen.parse().map_err(|_| {
        anyhow::anyhow!("--listen `{}` is not an address with a port, like 127.0.0.1:7700", args.listen)
    })?;
    let last_port = u32::from(listen.port()) + args.nodes - 1;
    if listen.port() != 0 && last_port > u32::from(u16::MAX) {
        anyhow::bail!(
            "--listen port {} leaves no room for {} nodes (they would need ports up to {last_port}); use a lower port, or port 0",
            listen.port(),
            args.nodes
        );
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let data_text = data_dir
        .to_str()
        .with_context(|| format!("the data directory {} is not valid UTF-8; pick another", data_dir.display()))?;
    let sandbox_root = data_dir.join("sandboxes").join("examples");
    write_examples(&sandbox_root).context("cannot write the example sandbox")?;
    let exe = std::env::current_exe().context("cannot find this executable to start the nodes")?;

    let store_url = format!("sqlite://{data_text}/shoal.db");
    // Every node needs the same key for job secrets: one file, kept from run to run.
    let key_file = data_dir.join(shoal_service::secrets::DEFAULT_KEY_FILE);
    shoal_service::secrets::generate_key_file(&key_file)
        .with_context(|| format!("cannot write the secrets key {}", key_file.display()))?;
    let mut specs = Vec::new();
    let mut configs = Vec::new();
    for k in 1..=args.nodes {
        let id = format!("n{k}");
        let dir = data_dir.join(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let port = if listen.port() == 0 { 0 } else { listen.port() + (k - 1) as u16 };
        let text = format!(
            "# written by `shoal up --nodes {}`; rewritten on every run\nnode_id = {}\ndata_dir = {}\n\n[sandboxes]\nallowed_roots = [{}]\n\n[http]\nlisten = {}\n\n[store]\nurl = {}\n\n[cluster]\nsecrets_key_file = {}\n\n[executor]\nslots = {}\n",
            args.nodes,
            toml_str(&id),
            toml_str(&format!("{data_text}/{id}")),
            toml_str(&format!("{data_text}/sandboxes")),
            toml_str(&SocketAddr::new(listen.ip(), port).to_string()),
            toml_str(&store_url),
            toml_str(&key_file.display().to_string()),
            args.slots,
        );
        let path = dir.join("shoal.toml");
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        // Checked here with the environment overrides the child will see, so that a bad one
        // fails once, clearly, rather than in every node's log.
        let config = shoal_server::Config::parse(&text, &path.display().to_string(), std::env::vars())?;
        if config.node_id.as_ref().map(|n| n.to_string()).as_deref() != Some(id.as_str()) || config.data_dir != dir {
            anyhow::bail!(
                "SHOAL_NODE_ID or SHOAL_DATA_DIR is set, which would give every node the same id or data; unset them for `shoal up --nodes {}`",
                args.nodes
            );
        }
        specs.push(NodeSpec { id, config: path, log: dir.join("server.log") });
        configs.push(config);
    }
    // An override such as SHOAL_STORE_URL applies to every node alike; this process uses the
    // same store to register the sandbox and to find the nodes.
    let config = &configs[0];
    let store = open_store(&config.store).await?;
    let root_text = sandbox_root.display().to_string();
    register_examples(&store, &root_text).await?;
    let token = up_token(&store, &data_dir).await?;
    let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
    let before = earlier_generations(&store, &ids, config.cluster.lease_ttl).await?;

    let mut interrupt = Interrupt::new()?;
    let mut procs = Procs::default();
    let cluster = Cluster {
        args: &args,
        exe: &exe,
        store: &store,
        specs: &specs,
        before: &before,
        root: &root_text,
        token: &token,
    };
    let outcome = cluster.drive(&mut procs, &mut interrupt).await;
    if !procs.0.is_empty() {
        println!("stopping");
        stop_all(&mut procs.0, &mut interrupt).await;
    }
    outcome
}

/// The registry generation of each node before this run, so that its rows are not mistaken
/// for this run's. A node whose lease is still live may be of a run killed a moment ago: its
/// lease is waited out. One whose lease keeps being renewed is running elsewhere, and two
/// processes must not share a node id.
async fn earlier_generations(
    store: &shoal_store::Store,
    ids: &[&str],
    lease_ttl: Duration,
) -> anyhow::Result<HashMap<String, i64>> {
    let deadline = Instant::now() + lease_ttl + Duration::from_secs(1);
    let mut noted = false;
    loop {
        let rows = store.list_nodes().await.context("cannot read the node registry")?;
        let live: Vec<_> = rows
            .iter()
            .filter(|r| {
                ids.contains(&r.id.as_str())
                    && r.lease_expires_at > r.now
                    && !matches!(r.state, shoal_wire::NodeState::Stopped | shoal_wire::NodeState::Lost)
            })
            .collect();
        let Some(first) = live.first() else {
            return Ok(rows.into_iter().map(|r| (r.id, r.generation)).collect());
        };
        if Instant::now() >= deadline {
            anyhow::bail!(
                "node {} is already running (at {}) on the store {}; stop that `shoal up` or `shoal server` first, or give this one another --data-dir",
                first.id,
                first.url,
                store.redacted_url()
            );
        }
        if !noted {
            println!("waiting up to {lease_ttl:?} for the lease of node {} of an earlier run to run out", first.id);
            noted = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What starting a cluster needs.
struct Cluster<'a> {
    args: &'a UpArgs,
    exe: &'a Path,
    store: &'a shoal_store::Store,
    specs: &'a [NodeSpec],
    before: &'a HashMap<String, i64>,
    root: &'a str,
    /// The admin token this run's own requests carry.
    token: &'a str,
}

impl Cluster<'_> {
    /// Starts the nodes, waits until they are one cluster, runs the --run jobs and serves.
    /// The caller stops whatever was started, whichever way this ends.
    async fn drive(&self, procs: &mut Procs, interrupt: &mut Interrupt) -> anyhow::Result<u8> {
        for spec in self.specs {
            let server = spawn_node(self.exe, spec)?;
            println!("starting {} (pid {}, log {})", spec.id, server.id(), spec.log.display());
            procs.0.push(NodeProc {
                id: spec.id.clone(),
                log: spec.log.clone(),
                server,
                url: None,
                generation: 0,
                ready: false,
                waiting_for: "not registered in the store yet".into(),
                reported: false,
            });
        }
        if !self.wait_until_up(&mut procs.0, interrupt).await? {
            println!("interrupted");
            return Ok(INTERRUPTED);
        }
        let nodes = &procs.0;
        let urls: Vec<&str> = nodes.iter().filter_map(|p| p.url.as_deref()).collect();
        println!("shoal is up: {} nodes (store {})", nodes.len(), self.store.redacted_url());
        let id_width = nodes.iter().map(|p| p.id.len()).max().unwrap_or(0);
        let url_width = urls.iter().map(|u| u.len()).max().unwrap_or(0);
        for (p, url) in nodes.iter().zip(&urls) {
            println!("  {:id_width$}  {url:url_width$}  pid {:<7}  log {}", p.id, p.pid(), p.log.display());
        }
        println!("sandbox `examples` is at {}", self.root);
        println!("try, in another terminal:");
        println!("  shoal --server {} run examples/jobs/greet.toml -p name=you --follow", urls.join(","));
        println!("  shoal --server {} nodes", urls[0]);

        let mut failed = false;
        for job in &self.args.run {
            let job = job.trim_start_matches("examples/");
            println!("\n$ shoal run examples/{job} --follow");
            let result = tokio::select! {
                r = run_and_follow(urls[0], self.token, "examples", job, true) => r,
                _ = interrupt.recv() => {
                    println!("\ninterrupted");
                    return Ok(INTERRUPTED);
                }
            };
            match result {
                Ok(true) => {}
                Ok(false) => failed = true,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    failed = true;
                }
            }
        }
        if self.args.exit {
            return Ok(u8::from(failed));
        }
        println!("\nserving until Ctrl-C");
        serve(&mut procs.0, interrupt).await
    }

    /// Waits until every node has registered, answers readiness, and n1 sees all of them
    /// alive. `Ok(false)`: interrupted.
    async fn wait_until_up(&self, procs: &mut [NodeProc], interrupt: &mut Interrupt) -> anyhow::Result<bool> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            for p in procs.iter_mut() {
                if let Some(status) = p.poll_exit() {
                    p.reported = true;
                    anyhow::bail!(
                        "node {} exited while starting ({status}); the end of its log {}:\n{}",
                        p.id,
                        p.log.display(),
                        p.server.log_tail(LOG_TAIL_LINES)
                    );
                }
            }
            if procs.iter().any(|p| p.url.is_none()) {
                // Only a row of a newer generation than before this run is this run's process.
                for row in self.store.list_nodes().await.context("cannot read the node registry")? {
                    let earlier = self.before.get(&row.id).copied().unwrap_or(0);
                    if let Some(p) = procs.iter_mut().find(|p| p.id == row.id && p.url.is_none()) {
                        if row.generation > earlier {
                            p.waiting_for = format!("no answer yet at {}/api/v1/health/ready", row.url);
                            p.url = Some(row.url);
                            p.generation = row.generation;
                        }
                    }
                }
            }
            for p in procs.iter_mut().filter(|p| !p.ready) {
                let Some(url) = &p.url else { continue };
                let ready = format!("{url}{READY_PATH}");
                match shoal_procs::probe(url, READY_PATH, PROBE_TIMEOUT).await {
                    Ok(200) => {
                        p.ready = true;
                        p.waiting_for.clear();
                    }
                    Ok(status) => p.waiting_for = format!("{ready} answers {status}"),
                    Err(e) => p.waiting_for = format!("no answer at {ready}: {e}"),
                }
            }
            if procs.iter().all(|p| p.ready) {
                match membership_gaps(procs, self.token).await {
                    Ok(gaps) if gaps.is_empty() => return Ok(true),
                    Ok(gaps) => {
                        for (i, why) in gaps {
                            procs[i].waiting_for = why;
                        }
                    }
                    Err(e) => procs[0].waiting_for = format!("cannot list the nodes: {e:#}"),
                }
            }
            if Instant::now() >= deadline {
                use std::fmt::Write;
                let lagging: Vec<&NodeProc> = procs.iter().filter(|p| !p.waiting_for.is_empty()).collect();
                let mut msg = format!("the nodes did not all come up within {START_DEADLINE:?}");
                for p in &lagging {
                    let _ = write!(msg, "\n  {}: {}", p.id, p.waiting_for);
                }
                for p in &lagging {
                    let tail = p.server.log_tail(LOG_TAIL_LINES);
                    let _ = write!(msg, "\nthe end of {}'s log {}:\n{tail}", p.id, p.log.display());
                }
                anyhow::bail!(msg);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = interrupt.recv() => return Ok(false),
            }
        }
    }
}

/// For each node that n1 does not show as this run's process, alive by gossip: its index and
/// why.
async fn membership_gaps(procs: &mut [NodeProc], token: &str) -> anyhow::Result<Vec<(usize, String)>> {
    let url = procs[0].url.clone().unwrap_or_default();
    let client =
        shoal_client::Client::new(vec![url])?.with_request_timeout(Duration::from_secs(2)).with_token(token)?;
    let rows = client.nodes().await?.nodes;
    let first = procs[0].id.clone();
    let mut gaps = Vec::new();
    for (i, p) in procs.iter_mut().enumerate() {
        let why = match rows.iter().find(|r| r.id == p.id) {
            None => Some(format!("{first} does not list it")),
            Some(r) if r.generation != p.generation => {
                Some(format!("{first} lists generation {} of it, not this run's {}", r.generation, p.generation))
            }
            Some(r) if r.gossip == shoal_wire::GossipView::Alive => None,
            Some(r) => {
                Some(format!("not alive by gossip as {first} sees it (gossip: {})", crate::output::name(&r.gossip)))
            }
        };
        match why {
            Some(why) => gaps.push((i, why)),
            None => p.waiting_for.clear(),
        }
    }
    Ok(gaps)
}

/// Starts a node's `shoal server`, its output going to its log (emptied first).
fn spawn_node(exe: &Path, spec: &NodeSpec) -> anyhow::Result<shoal_procs::Server> {
    // The child gets SIGTERM (a clean stop) when this process dies, however it dies. The
    // signal follows the *thread* that forked: this runs on the main thread, in the runtime's
    // `block_on`, which lasts as long as the process.
    let spec = shoal_procs::Spec::server(&spec.id, exe, &spec.config, &spec.log).die_with_parent();
    Ok(shoal_procs::Server::spawn(spec)?)
}

/// Serves until Ctrl-C or SIGTERM, reporting nodes that exit meanwhile (the others carry on,
/// taking over their work as they would on separate machines).
async fn serve(procs: &mut [NodeProc], interrupt: &mut Interrupt) -> anyhow::Result<u8> {
    loop {
        tokio::select! {
            biased;
            _ = interrupt.recv() => return Ok(0),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        for p in procs.iter_mut().filter(|p| !p.reported) {
            if let Some(status) = p.poll_exit() {
                p.reported = true;
                println!("node {} exited ({status}); the others carry on. see its log {}", p.id, p.log.display());
            }
        }
        if procs.iter().all(|p| p.reported) {
            anyhow::bail!("every node has exited; see their logs");
        }
    }
}

/// SIGTERM to every node still running, so that it hands back its attempts and releases its
/// lease; SIGKILL to any that has not stopped within [`STOP_DEADLINE`], or to all at once on
/// another Ctrl-C.
async fn stop_all(procs: &mut [NodeProc], interrupt: &mut Interrupt) {
    for p in procs.iter_mut() {
        if p.poll_exit().is_none() {
            // It may have exited since; then there is nothing to stop.
            let _ = p.server.terminate();
        }
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        for p in procs.iter_mut().filter(|p| !p.reported) {
            if let Some(status) = p.poll_exit() {
                p.reported = true;
                if status.success() {
                    println!("node {} stopped", p.id);
                } else {
                    println!("node {} stopped ({status}); see its log {}", p.id, p.log.display());
                }
            }
        }
        if procs.iter().all(|p| p.reported) {
            return;
        }
        let why = if Instant::now() >= deadline {
            format!("did not stop within {STOP_DEADLINE:?}")
        } else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                _ = interrupt.recv() => "was still stopping at the second Ctrl-C".to_owned(),
            }
        };
        for p in procs.iter_mut().filter(|p| !p.reported) {
            let _ = p.server.kill();
            p.reported = true;
            println!("node {} {why}; killed it", p.id);
        }
        return;
    }
}
