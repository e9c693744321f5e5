//! The nodes a benchmark runs against: in-process ones (`shoal_server::start`) and real
//! `shoal server` processes through the process harness, plus what every benchmark asks of
//! them through the client (a cluster formed, a sandbox, an execution's end).

use anyhow::{bail, ensure, Context, Result};
use futures::TryStreamExt;
use shoal_client::{ByteStream, Client};
use shoal_procs::{Server, Spec};
use shoal_wire::{CreateSandboxRequest, Execution, GossipView, NodeState, SubmitRequest};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long nodes have to start, answer ready and see each other alive.
pub(crate) const FORM_LIMIT: Duration = Duration::from_secs(60);
/// How long a real node has after SIGTERM to stop.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The admin token of the benchmarks' throwaway stores ([`admit`]), which every client sends.
pub(crate) fn token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| shoal_wire::format_token(shoal_wire::TokenKind::Api, &[0x42; shoal_wire::TOKEN_BYTES]))
}

/// Puts [`token`] in the store at `url` as an admin token, unless it is there.
pub(crate) async fn admit(url: &str) -> Result<()> {
    let store = shoal_store::Store::open(url, 1).await.with_context(|| format!("cannot open {url}"))?;
    let hash = shoal_service::tokens::hash(token());
    if store.token_by_hash(&hash).await?.0.is_some() {
        return Ok(());
    }
    let new = shoal_store::NewToken {
        id: "bench".into(),
        name: "bench".into(),
        hash,
        prefix: shoal_wire::shown_part(token()),
        role: shoal_wire::Role::Admin,
        sandboxes: vec!["*".into()],
        created_by: "shoal-bench".into(),
        expires_in_ms: None,
    };
    store.create_token(&new).await.context("cannot give the store the benchmark's token")?;
    Ok(())
}

/// A client of the node at `url` alone (benchmarks choose which node each request goes to).
pub(crate) fn client(url: &str) -> Result<Client> {
    Client::new(vec![url.to_owned()])
        .and_then(|c| c.with_token(token()))
        .with_context(|| format!("cannot make a client for {url}"))
}

pub(crate) fn clients(urls: &[String]) -> Result<Vec<Client>> {
    urls.iter().map(|u| client(u)).collect()
}

/// An in-process node's configuration: port 0, its own data folder, `shoal` as the supervisor.
pub(crate) struct InProcess<'a> {
    pub id: &'a str,
    pub dir: &'a Path,
    pub store: &'a str,
    pub pool: usize,
    pub slots: u32,
    pub lease: Option<Duration>,
    pub shoal: &'a Path,
}

impl InProcess<'_> {
    fn config_text(&self) -> String {
        let mut text = format!(
            "node_id = {:?}\ndata_dir = {:?}\n[sandboxes]\nallowed_roots = [{:?}]\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = {:?}\npool_size = {}\n[executor]\nslots = {}\nsupervisor = {:?}\n",
            self.id,
            self.dir.join(format!("data-{}", self.id)).display().to_string(),
            self.dir.display().to_string(),
            self.store,
            self.pool,
            self.slots,
            self.shoal.display().to_string(),
        );
        if let Some(l) = self.lease {
            text.push_str(&format!("[cluster]\nlease_ttl = {:?}\n", shoal_core::duration::format(l)));
        }
        text
    }

    pub(crate) async fn start(&self) -> Result<shoal_server::Node> {
        self.start_edited(|t| t).await
    }

    /// A node whose configuration is this one's changed by `edit` (lines added to `[store]`).
    pub(crate) async fn start_edited(&self, edit: impl FnOnce(String) -> String) -> Result<shoal_server::Node> {
        self.launch(edit(self.config_text()), self.store).await
    }

    /// A node whose store is a transaction pooler's URL, with `session_url` (the same database
    /// past the pooler) for its session; the token is admitted through `session_url`, since a
    /// store opened on the pooler alone is refused.
    pub(crate) async fn start_pooled(&self, session_url: &str) -> Result<shoal_server::Node> {
        let text = self.config_text().replacen("[store]\n", &format!("[store]\nsession_url = {session_url:?}\n"), 1);
        self.launch(text, session_url).await
    }

    async fn launch(&self, text: String, admit_at: &str) -> Result<shoal_server::Node> {
        let config = shoal_server::Config::parse(&text, "(bench)", Vec::<(String, String)>::new())?;
        admit(admit_at).await?;
        shoal_server::start(config).await.with_context(|| format!("cannot start in-process node {}", self.id))
    }
}

/// Whether every node of `urls` sees every one of `ids` alive in gossip and not lost.
async fn formed(clients: &[Client], ids: &[String]) -> bool {
    for c in clients {
        let Ok(list) = c.nodes().await else { return false };
        let all_alive = ids.iter().all(|id| {
            list.nodes.iter().any(|n| n.id == *id && n.gossip == GossipView::Alive && n.state != NodeState::Lost)
        });
        if !all_alive {
            return false;
        }
    }
    true
}

/// Waits until every node of `urls` sees all of `ids` alive.
pub(crate) async fn wait_formed(urls: &[String], ids: &[String], limit: Duration) -> Result<()> {
    let clients = clients(urls)?;
    let deadline = Instant::now() + limit;
    while !formed(&clients, ids).await {
        if Instant::now() > deadline {
            let mut views = String::new();
            for c in &clients {
                let view = match c.nodes().await {
                    Ok(list) => serde_json::to_string(&list).unwrap_or_else(|e| e.to_string()),
                    Err(e) => e.to_string(),
                };
                views.push_str(&format!("\n{}: {view}", c.current_server()));
            }
            bail!("gossip did not show {ids:?} alive on every node within {limit:?}:{views}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until the node `c` talks to answers ready (an in-process node after a cut, say).
pub(crate) async fn wait_ready(c: &Client, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match c.health_ready().await {
            Ok(_) => return Ok(()),
            Err(e) => ensure!(Instant::now() < deadline, "{} was not ready within {limit:?}: {e}", c.current_server()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers `root` as shared sandbox `name`.
pub(crate) async fn shared_sandbox(c: &Client, name: &str, root: &Path) -> Result<()> {
    let root = root.to_str().with_context(|| format!("{} is not UTF-8", root.display()))?;
    let request = CreateSandboxRequest {
        name: name.to_owned(),
        kind: "shared".into(),
        root: Some(root.to_owned()),
        ..CreateSandboxRequest::default()
    };
    c.create_sandbox(&request).await.with_context(|| format!("cannot create sandbox {name}"))?;
    Ok(())
}

/// Submits an execution; answers its id.
pub(crate) async fn submit(c: &Client, request: &SubmitRequest) -> Result<String> {
    let (e, replayed) =
        c.submit(request).await.with_context(|| format!("submission to {} failed", c.current_server()))?;
    ensure!(!replayed, "a fresh submission was answered as a replay: {e:?}");
    Ok(e.id)
}

/// Submits `request` `count` times from `concurrency` tasks, each going round the `clients`
/// from its own starting point; answers the executions' ids.
pub(crate) async fn submit_spread(
    clients: &[Client],
    request: &SubmitRequest,
    count: usize,
    concurrency: usize,
) -> Result<Vec<String>> {
    let per = count.div_ceil(concurrency.max(1));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let n = per.min(count.saturating_sub(w * per));
        let (clients, request) = (clients.to_vec(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                ids.push(submit(&clients[(w + i) % clients.len()], &request).await?);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok(ids)
}

/// Polls execution `id` until it is final; answers it.
pub(crate) async fn wait_final(c: &Client, id: &str, limit: Duration) -> Result<Execution> {
    let deadline = Instant::now() + limit;
    loop {
        let e = c.execution(id).await;
        if let Ok(e) = &e {
            if e.state.is_final() {
                return Ok(e.clone());
            }
        }
        ensure!(Instant::now() < deadline, "execution {id} not final within {limit:?}: {e:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response stream read to its end.
pub(crate) async fn read_all(stream: ByteStream) -> Result<Vec<u8>> {
    Ok(stream
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await?)
}

/// Executions in a final state, counted by the store.
pub(crate) async fn count_final(store: &shoal_store::Store) -> Result<i64> {
    Ok(store.count_by_state().await?.into_iter().filter(|(s, _)| s.is_final()).map(|(_, n)| n).sum())
}

/// One real node of a [`Procs`] cluster.
pub(crate) struct Proc {
    pub id: String,
    pub url: String,
    pub server: Server,
}

/// N `shoal server` processes on one store, each with a fixed loopback port, started and seen
/// by each other in gossip.
pub(crate) struct Procs {
    pub procs: Vec<Proc>,
    // Last: the folders outlive the processes (fields drop in order).
    pub dir: tempfile::TempDir,
}

impl Procs {
    pub(crate) async fn start(shoal: &Path, store: &str, n: usize, lease: Duration, slots: u32) -> Result<Procs> {
        Procs::start_as(shoal, store, n, lease, slots, true).await
    }

    /// [`Procs::start`]; `with_token`: the store gets the benchmarks' [`token`] first (not for
    /// a build from before tokens, whose schema has none).
    pub(crate) async fn start_as(
        shoal: &Path,
        store: &str,
        n: usize,
        lease: Duration,
        slots: u32,
        with_token: bool,
    ) -> Result<Procs> {
        ensure!(n >= 1, "a cluster benchmark needs at least 1 node");
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        if with_token {
            admit(store).await?;
        }
        let mut procs = Vec::new();
        for i in 1..=n {
            let id = format!("n{i}");
            let (config, url) = write_config(dir.path(), store, &id, lease, slots)?;
            let spec = Spec::server(&id, shoal, &config, dir.path().join(format!("{id}.log")))
                .env("RUST_LOG", "warn")
                .die_with_parent();
            procs.push(Proc { id, url, server: Server::spawn(spec)? });
        }
        let mut c = Procs { procs, dir };
        let deadline = Instant::now() + FORM_LIMIT;
        for p in c.procs.iter_mut() {
            p.server.wait_ready(&p.url, deadline).await?;
        }
        c.wait_formed().await?;
        Ok(c)
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.url.clone()).collect()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.id.clone()).collect()
    }

    pub(crate) async fn wait_formed(&self) -> Result<()> {
        wait_formed(&self.urls(), &self.ids(), FORM_LIMIT).await
    }

    /// Starts node `i` again after it died, and waits until the cluster has it back.
    pub(crate) async fn restart(&mut self, i: usize) -> Result<()> {
        let p = &mut self.procs[i];
        p.server.restart()?;
        p.server.wait_ready(&p.url, Instant::now() + FORM_LIMIT).await?;
        self.wait_formed().await
    }

    /// SIGTERM to each, which must stop cleanly within the grace.
    pub(crate) async fn stop_all(&mut self) -> Result<()> {
        for p in self.procs.iter_mut() {
            let status = p.server.stop(STOP_GRACE).await?;
            ensure!(status.success(), "{} did not stop cleanly ({status}):\n{}", p.id, p.server.log_tail(30));
        }
        Ok(())
    }
}

/// Writes node `id`'s configuration (a loopback port free right now, gossip defaults); answers
/// its path and the node's URL.
fn write_config(dir: &Path, store: &str, id: &str, lease: Duration, slots: u32) -> Result<(PathBuf, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free loopback port")?
        .port();
    let text = format!(
        "node_id = {id:?}\ndata_dir = {data:?}\n[sandboxes]\nallowed_roots = [{base:?}]\n[http]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = {store:?}\n[cluster]\nlease_ttl = {lease:?}\n[executor]\nslots = {slots}\n",
        data = dir.join(format!("data-{id}")).display().to_string(),
        base = dir.display().to_string(),
        lease = shoal_core::duration::format(lease),
    );
    let config = dir.join(format!("{id}.toml"));
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    Ok((config, format!("http://127.0.0.1:{port}")))
}

/// A submission of `job` of `sandbox`.
pub(crate) fn job(sandbox: &str, job: &str) -> SubmitRequest {
    SubmitRequest { sandbox: Some(sandbox.to_owned()), job: Some(job.to_owned()), ..SubmitRequest::default() }
}

/// A submission of an inline command.
pub(crate) fn command(argv: &[&str]) -> SubmitRequest {
    SubmitRequest { command: Some(argv.iter().map(|a| a.to_string()).collect()), ..SubmitRequest::default() }
}
