//! The composition root: [`start`] builds a node from a [`Config`] (store, engine, workers,
//! HTTP server); [`serve`] runs one until a shutdown signal. The CLI and the multi-node test
//! harness both come through here, so tests exercise exactly what production runs.

mod cluster;
pub mod config;
mod engine;
pub mod filewatch;
mod http;
mod lifecycle;
mod load;
mod tls;
mod triggers;
mod workers;

pub use config::{Config, ConfigError};

use anyhow::Context;
use engine::{Engine, EngineConfig, EngineHandle, Stop};
use shoal_api::{AppState, Limits, Metrics, NodeIdentity};
use shoal_store::{NodeRegistration, Store, StoreError};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use workers::{Backoff, Periodic, Step, Worker};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long past `kill_grace` a stopping node waits on the store (attempts' ends, the lease
/// release) before it goes on without it.
const SHUTDOWN_STORE_GRACE: Duration = Duration::from_secs(2);

/// How long workers get to end once cancelled. A step is dropped at its next await, so only
/// one that blocks its thread takes longer; it is aborted and named.
const WORKER_EXIT: Duration = Duration::from_millis(500);

/// How often the lease watchdog looks at the time since the last renewal.
const WATCHDOG_EVERY: Duration = Duration::from_millis(50);

/// How often a node reads the state and last log row of every execution followed here, for
/// followers of output this node does not write itself.
const LOG_WATCH_EVERY: Duration = Duration::from_millis(250);

/// How often the tokens used since are written as used (`last_used_at`, to within a minute).
const TOKEN_USAGE_EVERY: Duration = Duration::from_secs(20);

/// How often the `audit` worker looks for queued rows when nothing woke it.
const AUDIT_EVERY: Duration = Duration::from_secs(1);

/// How often the `replicas` worker checks each read replica's health and lag.
const REPLICA_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Audit rows one step of the `audit-prune` worker deletes at most.
const AUDIT_PRUNE_BATCH: i64 = 1000;

/// A running node.
pub struct Node {
    engine: Arc<Engine>,
    cluster: Arc<cluster::Cluster>,
    id: String,
    url: String,
    /// Stops the HTTP server (workers stop through `engine.workers`).
    shutdown: watch::Sender<bool>,
    http: JoinHandle<()>,
    kill_grace: Duration,
    audit: Arc<shoal_api::audit::AuditLog>,
}

/// Reads the node id kept in the data directory, or makes one and keeps it.
fn node_id(config: &Config) -> anyhow::Result<String> {
    if let Some(id) = &config.node_id {
        return Ok(id.to_string());
    }
    let path = config.data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            shoal_core::NodeId::parse(id).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            std::fs::write(&path, format!("{id}\n")).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn supervisor_exe(config: &Config) -> anyhow::Result<std::path::PathBuf> {
    match &config.executor.supervisor {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().context("cannot find this executable to supervise job processes"),
    }
}

/// Builds and starts a node. Returns once it serves HTTP and holds its lease.
pub async fn start(config: Config) -> anyhow::Result<Node> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let id = node_id(&config)?;
    // The TLS files first: a missing or mismatched one is a configuration error, said before
    // anything else is set up.
    let certificate = match &config.http.tls {
        Some(files) => Some(Arc::new(tls::CertResolver::load(files).map_err(ConfigError::Invalid)?)),
        None => None,
    };
    let acceptor = certificate.clone().map(tls::acceptor).transpose().map_err(anyhow::Error::msg)?;
    let peer_ca = config.cluster.tls_ca.as_deref().map(tls::load_ca).transpose().map_err(ConfigError::Invalid)?;
    let store =
        Store::open_with_session(&config.store.url, config.store.pool_size, config.store.session_url.as_deref())
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(m) => anyhow::anyhow!("{m}"),
                other => anyhow::anyhow!("store {}: {other}", shoal_store::redact(&config.store.url)),
            })?;
    let store = store
        .with_replicas(
            &config.store.replicas,
            config.store.pool_size,
            shoal_store::MaxLag { time: config.store.replica_max_lag, bytes: config.store.replica_max_lag_bytes },
        )
        .map_err(|e| anyhow::anyhow!("store.replicas: {e}"))?;
    store.replicas_wait_for_schema().await.context("cannot read the primary's WAL position")?;
    let store = Arc::new(store);
    // The key that seals job secrets: a node that cannot open the store's secrets refuses to
    // start, rather than run jobs with values it cannot read.
    let (secrets, made_key) = shoal_service::secrets::Keyring::open_for_node(
        &store,
        config.cluster.secrets_key_file.as_deref(),
        &config.cluster.secrets_previous_key_files,
        &config.data_dir,
    )
    .await
    .map_err(ConfigError::Invalid)?;
    if let Some(file) = made_key {
        tracing::info!(file = %file.display(), key_id = %secrets.current_id(), "made a key for job secrets, readable only by this user; every node of the cluster needs this same key (cluster.secrets_key_file)");
    }
    let secrets = Arc::new(secrets);
    filewatch::clean_stale_uploads(store.clone(), id.clone());
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    let bound = listener.local_addr()?;
    if let Some(warning) = exposure_warning(bound, acceptor.is_some()) {
        tracing::warn!(listen = %bound, "{warning}");
    }
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let url = config.http.advertise.clone().unwrap_or_else(|| format!("{scheme}://{bound}"));
    let launcher =
        shoal_runner::Launcher::new(supervisor_exe(&config)?).context("cannot start the process launcher")?;
    let metrics = Arc::new(Metrics::default());
    let logs = Arc::new(shoal_api::LogHub::default());
    let engine = Arc::new(Engine::new(
        store.clone(),
        EngineConfig {
            node_id: id.clone(),
            tags: config.tags.clone(),
            slots: config.executor.slots as usize,
            kill_grace: config.executor.kill_grace,
            max_output_bytes: config.executor.max_output_bytes,
            lease_ttl: config.cluster.lease_ttl,
            // Where inline commands without a sandbox run.
            scratch_dir: config.data_dir.join("scratch"),
            limits: shoal_core::placement::Limits {
                cpu: config.executor.cpu_limit,
                memory: config.executor.memory_limit,
            },
            drain_deadline: config.cluster.drain_deadline,
            store_outage_grace: config.cluster.store_outage_grace,
            deadline_file: config.data_dir.join("lease-deadline"),
            url: url.clone(),
            ca_file: config.cluster.tls_ca.clone(),
            secrets: secrets.clone(),
        },
        launcher,
        metrics.clone(),
        logs.clone(),
    ));

    // Authenticates gossip and forwarded requests; without cluster.secret, the one kept in the
    // store (see shoal_store's secret.rs for why that is as safe).
    let secret = match &config.cluster.secret {
        Some(s) => s.clone().into_bytes(),
        None => store.cluster_secret().await.context("cannot read the cluster secret from the store")?,
    };
    // A store with no admin token gets one, in this node's data directory; its path is
    // logged, never the token.
    match shoal_service::tokens::bootstrap_admin(&store, &config.data_dir, &format!("bootstrap:{id}")).await? {
        Some(path) => tracing::warn!(
            file = %path.display(),
            "the store had no admin token: created one, readable only by this user in this file; the CLI reads it when run where `shoal up` ran, or pass it with --token, SHOAL_TOKEN or SHOAL_TOKEN_FILE"
        ),
        None => tracing::debug!("the store has an admin token"),
    }
    let (session, session_events) = store.open_session(&id).await.context("cannot open a store session")?;
    let membership = start_membership(&config, &id, &url, &secret, &store).await?;

    // Register (a new generation), then take back what an earlier process of this node left
    // running: its children died with it, so those attempts are lost.
    let reg = NodeRegistration {
        id: id.clone(),
        url: url.clone(),
        state: shoal_core::placement::RegistryState::Active,
        tags: config.tags.clone(),
        slots: config.executor.slots,
        version: VERSION.into(),
        gossip_addr: membership.gossip_addr().to_string(),
        session_key: session.key,
    };
    let sent = Instant::now();
    let sent_boottime = shoal_runner::deadline::boottime_ms();
    let lease =
        store.register_node(&reg, config.cluster.lease_ttl).await.context("cannot register this node in the store")?;
    engine.publish_deadline(sent_boottime);
    *engine.last_renewal.lock() = sent;
    *engine.registration.lock() = Some(reg);
    engine.generation.store(lease.generation, Ordering::SeqCst);
    let recovered = store.recover_node(&id).await.context("cannot recover this node's earlier attempts")?;
    if !recovered.is_empty() {
        tracing::warn!(
            count = recovered.len(),
            "attempts of this node's previous process were lost; they follow their on_node_loss policy"
        );
    }
    engine.life.register();
    let cluster = cluster::Cluster::new(membership, session);
    cluster.publish(&engine);

    let (shutdown, shutdown_rx) = watch::channel(false);
    spawn_engine_workers(&engine, &cluster, &config);
    if let Some(certificate) = certificate {
        spawn_tls_reload(&engine, certificate);
    }
    cluster::spawn_workers(&cluster, &engine, session_events);
    let triggers = triggers::Triggers::new(store.clone(), engine.clone(), id.clone(), cluster.clone(), metrics.clone());
    triggers::spawn_workers(&triggers, &engine.workers);
    let auth = Arc::new(shoal_api::auth::Authenticator::new(
        store.clone(),
        config.http.metrics_public,
        config.http.session_ttl,
    ));
    engine.workers.spawn(Periodic::new("token-usage", TOKEN_USAGE_EVERY, auth.clone(), |a| async move {
        a.flush_usage().await.map(|n| if n > 0 { Step::Busy } else { Step::Idle }).map_err(|e| e.to_string())
    }));
    let audit = Arc::new(shoal_api::audit::AuditLog::new(id.clone(), metrics.clone()));
    spawn_audit_workers(&engine, &audit, config.audit.retention);
    if store.has_replicas() {
        // Checked often: a replica found lagging or down stops taking reads within a check.
        engine.workers.spawn(Periodic::new("replicas", REPLICA_CHECK_EVERY, store.clone(), |s| async move {
            s.check_replicas().await.map(|_| Step::Idle).map_err(|e| e.to_string())
        }));
    }

    let state = Arc::new(AppState {
        forwarder: Arc::new(shoal_api::Forwarder::new(id.clone(), secret, peer_ca.as_deref())?),
        submitter: shoal_store::Submitter::spawn(store.clone()),
        store: store.clone(),
        node: NodeIdentity {
            id: id.clone(),
            url: url.clone(),
            version: VERSION,
            tags: config.tags.clone(),
            slots: config.executor.slots,
        },
        engine: Arc::new(EngineHandle { engine: engine.clone(), cluster: cluster.clone(), triggers }),
        limits: Limits {
            max_request_bytes: config.http.max_request_bytes,
            max_upload_bytes: config.http.max_upload_bytes,
        },
        metrics,
        logs,
        roots: Arc::new(root_policy(&config).await?),
        hosts: shoal_api::browser::HostPolicy::new(&url, &config.http.hosts),
        auth,
        secrets: secrets.clone(),
        audit: audit.clone(),
        reads: shoal_api::replicas::ReadRouting {
            to_primary: config.store.route_to_primary.clone(),
            to_replica: config.store.route_to_replica.clone(),
        },
    });
    let app = shoal_api::router(state);
    // Start-up frees much of what it allocated (building the router builds its OpenAPI
    // description and drops it); hand the free pages back to the system rather than keep
    // them resident for the node's whole life (about 0.8 MiB).
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; it takes no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
    let http = http::spawn(listener, acceptor, app, (&config.http).into(), &id, shutdown_rx.clone());
    engine.wake.notify_one();
    tracing::info!(node = %id, url = %url, store = %store.redacted_url(), generation = lease.generation, startup_ms = started.elapsed().as_millis() as u64, "node ready");
    Ok(Node { engine, cluster, id, url, shutdown, http, kill_grace: config.executor.kill_grace, audit })
}

/// The audit trail's workers: `audit` writes the rows the API queued, in batches, as soon as
/// they come (retrying, with the runner's backoff, while the store is away); `audit-prune`
/// deletes rows older than `audit.retention`, in bounded batches, on every node (deleting is
/// the same whoever does it).
fn spawn_audit_workers(engine: &Arc<Engine>, audit: &Arc<shoal_api::audit::AuditLog>, retention: Duration) {
    let store = engine.store.clone();
    engine.workers.spawn(
        Periodic::new("audit", AUDIT_EVERY, (audit.clone(), store.clone()), |(a, s)| async move {
            a.flush(&s).await.map(|n| if n > 0 { Step::Busy } else { Step::Idle }).map_err(|e| e.to_string())
        })
        .woken_by(|(a, _)| a.wake()),
    );
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    // A short retention (tests) is pruned promptly; a long one once a minute.
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    engine.workers.spawn(Periodic::new("audit-prune", every, store, move |s| async move {
        match s.prune_audit(retention_ms, AUDIT_PRUNE_BATCH).await {
            Ok(n) if n as i64 >= AUDIT_PRUNE_BATCH => Ok(Step::Busy),
            Ok(_) => Ok(Step::Idle),
            Err(e) => Err(e.to_string()),
        }
    }));
}

/// Starts gossip on its own thread and runtime, with this node's fixed keys.
async fn start_membership(
    config: &Config,
    id: &str,
    url: &str,
    secret: &[u8],
    store: &Store,
) -> anyhow::Result<shoal_cluster::Membership> {
    use shoal_cluster::keys;
    let mut m = shoal_cluster::MembershipConfig::new(
        id,
        // A restart is a new incarnation: the start time orders them without asking the store.
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1),
        secret.to_vec(),
        config.cluster.gossip_listen,
    );
    m.advertise = config.cluster.gossip_advertise;
    m.seeds = config.cluster.seeds.clone();
    m.multicast = config.cluster.multicast.map(|c| shoal_cluster::Multicast { group: c.group, interface: c.interface });
    m.gossip_interval = config.cluster.gossip_interval;
    let held = cluster::held_by(id, &store.list_sandboxes().await.context("cannot list sandboxes")?);
    m.initial_keys = vec![
        (keys::URL.into(), url.into()),
        (keys::STATE.into(), "joining".into()),
        (keys::SLOTS.into(), config.executor.slots.to_string()),
        (keys::TAGS.into(), serde_json::to_string(&config.tags)?),
        (keys::SANDBOXES.into(), serde_json::to_string(&held)?),
        (keys::VERSION.into(), VERSION.into()),
    ];
    let membership = tokio::task::spawn_blocking(move || shoal_cluster::Membership::start(m))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot start gossip on {}: {e}", config.cluster.gossip_listen))?;
    Ok(membership)
}

/// The engine's workers: the lease, its watchdog, claiming, takeover of lost attempts,
/// cancel requests and the log watch.
fn spawn_engine_workers(engine: &Arc<Engine>, cluster: &Arc<cluster::Cluster>, config: &Config) {
    let beat = (config.cluster.lease_ttl / 5).max(Duration::from_millis(200));
    let poll = config.executor.poll_interval;
    let w = &engine.workers;
    let e = || engine.clone();
    // The lease is retried at its own pace however often it fails: backing off would let it
    // run out while the store is reachable again.
    // Gossip hears at once whether the renewal went through.
    let lease = Periodic::new("lease", beat, (e(), cluster.clone()), move |(e, c)| async move {
        let step = e.clone().renew_lease(beat).await;
        c.publish_store(&e);
        step
    });
    w.spawn(lease.backoff(Backoff::Never));
    w.spawn(Watchdog {
        engine: e(),
        cluster: cluster.clone(),
        linger: ride_linger(config, engine.kill_margin()),
        heard_back: None,
    });
    w.spawn(
        Periodic::new("dispatcher", poll, e(), |e| async move {
            e.dispatch().await.map(|any| if any { Step::Busy } else { Step::Idle }).map_err(|e| e.to_string())
        })
        .woken_by(|e| &e.wake),
    );
    w.spawn(Periodic::new("reaper", beat, e(), |e| e.reap()));
    w.spawn(Periodic::new("cancel-watcher", poll, e(), |e| e.watch_cancels()));
    w.spawn(Periodic::new("log-watch", LOG_WATCH_EVERY, e(), |e| e.watch_logs()));
}

/// Re-reads the API's certificate and key when their files change (`tls.rs`); a failed
/// reload is this worker's error, and the certificate in use stays.
fn spawn_tls_reload(engine: &Arc<Engine>, certificate: Arc<tls::CertResolver>) {
    engine.workers.spawn(Periodic::new("tls-reload", tls::RELOAD_EVERY, certificate, |c| async move {
        match tokio::task::spawn_blocking(move || c.reload()).await {
            Ok(Ok(_)) => Ok(Step::Idle),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("the certificate reload task failed: {e}")),
        }
    }));
}

/// Kills every attempt before the lease can run out when renewals keep failing: every
/// `WATCHDOG_EVERY`, whatever the store does (its step never touches the store, nor fails).
///
/// Unless the loss is shared (docs/design/store-outage.md): when, at that moment, every
/// other member says through gossip that it cannot reach the store either, nobody can take
/// anything over, so the attempts ride through the outage. The ride ends, killing every attempt
/// at once, as soon as a member reaches the store or cannot be heard, or after
/// `cluster.store_outage_grace`; it ends without a kill when this node renews again.
struct Watchdog {
    engine: Arc<Engine>,
    cluster: Arc<cluster::Cluster>,
    /// How long a ride may go on after a member says it reaches the store again (see
    /// [`ride_linger`]); zero: riding is off.
    linger: Duration,
    /// When, in this ride, a member was first heard to reach the store.
    heard_back: Option<std::time::Instant>,
}

/// The longest a peer's word in gossip can be out of date while gossip still calls it alive:
/// its failure detector's time to notice silence (about five gossip intervals, see
/// `shoal_cluster::Membership`) and the refresh of this node's view.
fn heard_within(config: &Config) -> Duration {
    config.cluster.gossip_interval * 5 + Duration::from_millis(250)
}

/// How long a riding node may keep its attempts after a member says it reaches the store
/// again: that member's first renewal gave this node's lease back until a whole lease after
/// it, at most `heard_within` before this node heard of it, and the children must be dead a
/// margin before that. Zero when the lease is too short for the gossip interval: then a
/// member that goes silent could not be told from one that took over in time, and nothing
/// rides (docs/design/store-outage.md).
fn ride_linger(config: &Config, margin: Duration) -> Duration {
    config.cluster.lease_ttl.saturating_sub(margin).saturating_sub(heard_within(config))
}

#[async_trait::async_trait]
impl Worker for Watchdog {
    fn name(&self) -> &'static str {
        "watchdog"
    }

    fn interval(&self) -> Duration {
        WATCHDOG_EVERY
    }

    async fn step(&mut self) -> Result<Step, String> {
        let e = &self.engine;
        // Margin between killing our children and the earliest moment another node may take
        // them over: covers the kill itself and the scheduling of this check.
        let deadline = e.cfg.lease_ttl.saturating_sub(e.kill_margin());
        let since = e.last_renewal.lock().elapsed();
        if since < deadline {
            return Ok(Step::Idle);
        }
        let riding = *e.riding.lock();
        if let Some(started) = riding {
            let grace = e.cfg.store_outage_grace;
            let end = if started.elapsed() >= grace {
                Err(format!("the store has been away longer than cluster.store_outage_grace ({grace:?})"))
            } else {
                match self.cluster.shared_loss(e) {
                    cluster::Loss::Shared if self.heard_back.is_none() => Ok(()),
                    // Heard once, it counts for the rest of the ride.
                    cluster::Loss::Shared | cluster::Loss::Reached(_) => {
                        let heard = *self.heard_back.get_or_insert_with(std::time::Instant::now);
                        if heard.elapsed() < self.linger {
                            Ok(())
                        } else {
                            Err(format!(
                                "a member reaches the store again, and this node has not renewed within {:?}",
                                self.linger
                            ))
                        }
                    }
                    cluster::Loss::Unheard(why) => Err(why),
                }
            };
            match end {
                Ok(()) => e.publish_ride_deadline(),
                Err(why) => {
                    *e.riding.lock() = None;
                    e.metrics.store_outage_rides_ended.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        why,
                        ride_ms = started.elapsed().as_millis() as u64,
                        "riding through the store outage is no longer safe; killing every attempt"
                    );
                    e.stop_all(Stop::LeaseLost);
                }
            }
            return Ok(Step::Idle);
        }
        if !e.life.cut_off() {
            // Cut off already: the attempts were killed (or rode and then were).
            return Ok(Step::Idle);
        }
        let shared = if e.cfg.store_outage_grace.is_zero() {
            Err("cluster.store_outage_grace is 0s".to_owned())
        } else if self.linger.is_zero() {
            Err("cluster.lease_ttl is too short for cluster.gossip_interval to ride through an outage".to_owned())
        } else {
            match self.cluster.shared_loss(e) {
                cluster::Loss::Shared => Ok(()),
                cluster::Loss::Reached(why) | cluster::Loss::Unheard(why) => Err(why),
            }
        };
        match shared {
            Ok(()) => {
                self.heard_back = None;
                *e.riding.lock() = Some(std::time::Instant::now());
                e.metrics.store_outage_rides.fetch_add(1, Ordering::Relaxed);
                e.publish_ride_deadline();
                tracing::warn!(
                    since_ms = since.as_millis() as u64,
                    running = e.running(),
                    "cannot renew the lease, and no member of the cluster reaches the store either; the attempts ride through the outage"
                );
            }
            Err(why) => {
                tracing::error!(
                    since_ms = since.as_millis() as u64,
                    why,
                    "cannot renew the lease in time; killing every attempt before it runs out"
                );
                e.stop_all(Stop::LeaseLost);
            }
        }
        Ok(Step::Idle)
    }
}

impl Node {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The URL other nodes and clients use.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> Arc<Store> {
        self.engine.store.clone()
    }

    /// Stops taking work, hands running attempts back (they are retried by their
    /// `on_node_loss` policy), releases the lease at once and stops serving.
    ///
    /// Ends within `executor.kill_grace` plus a few seconds whatever the store does: every
    /// wait on it below has a deadline, and workers are cancelled inside their step (store
    /// transactions are rolled back whatever await they are dropped at), aborted if they have
    /// not ended `WORKER_EXIT` later.
    pub async fn shutdown(self) {
        let e = &self.engine;
        e.life.stop();
        e.stop_all(Stop::Shutdown);
        // Children get `kill_grace` to exit; recording how they ended and the lease release
        // need the store, and share one short deadline. The workers (the lease among them)
        // run until the attempts are done.
        let deadline = tokio::time::Instant::now() + self.kill_grace + SHUTDOWN_STORE_GRACE;
        while e.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if e.running() > 0 {
            tracing::warn!(
                running = e.running(),
                "attempts did not record their end in time; their lease will hand them on"
            );
        }
        let _ = self.shutdown.send(true);
        e.workers.shutdown(tokio::time::Instant::now() + WORKER_EXIT).await;
        let generation = e.generation.load(Ordering::SeqCst);
        let deadline = deadline.max(tokio::time::Instant::now() + Duration::from_millis(500));
        // The audit rows still queued, within the same deadline.
        match tokio::time::timeout_at(deadline, self.audit.flush_all(&e.store)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, queued = self.audit.queued(), "audit rows could not be written before stopping; they are lost")
            }
            Err(_) => tracing::warn!(
                queued = self.audit.queued(),
                "the store did not take the audit rows in time before stopping; they are lost"
            ),
        }
        match tokio::time::timeout_at(deadline, e.store.release_lease(&self.id, generation)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "could not release the lease; it will expire on its own"),
            Err(_) => {
                tracing::warn!("the store did not answer the lease release in time; the lease will expire on its own")
            }
        }
        // Only now, with the lease released, may gossip see this node go.
        self.cluster.session.lock().take();
        // Stopping gossip joins its thread: not on a runtime thread.
        let cluster = self.cluster.clone();
        let _ = tokio::task::spawn_blocking(move || cluster.membership.leave()).await;
        // Followers of live logs may hold connections open; give them a moment, then go.
        let mut http = self.http;
        if tokio::time::timeout(Duration::from_secs(2), &mut http).await.is_err() {
            http.abort();
        }
        tracing::info!(node = %self.id, "node stopped");
    }
}

/// Runs a node until `shutdown` completes, then stops it cleanly.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let node = start(config).await?;
    shutdown.await;
    node.shutdown().await;
    Ok(())
}

/// Where this node lets sandbox folders be: under `sandboxes.allowed_roots` (default: the data
/// directory), never holding the data directory or a SQLite store file.
async fn root_policy(config: &Config) -> anyhow::Result<shoal_service::roots::RootPolicy> {
    let data_dir = std::path::absolute(&config.data_dir)
        .with_context(|| format!("cannot resolve the data directory {}", config.data_dir.display()))?;
    let allowed = config.sandboxes.allowed_roots.clone().unwrap_or_else(|| vec![data_dir.clone()]);
    let store_file = match config.store.url.strip_prefix("sqlite://") {
        Some(file) => Some(std::path::absolute(file.split('?').next().unwrap_or(file))?),
        None => None,
    };
    Ok(tokio::task::spawn_blocking(move || {
        shoal_service::roots::RootPolicy::new(&allowed, &data_dir, store_file.as_deref())
    })
    .await?)
}

/// What a node listening beyond loopback in plain HTTP must say at start: its tokens and
/// answers cross the network unencrypted. With `http.tls` there is nothing to say.
fn exposure_warning(listen: std::net::SocketAddr, tls: bool) -> Option<&'static str> {
    (!listen.ip().is_loopback() && !tls).then_some(
        "THE API IS UNENCRYPTED: this node listens beyond loopback in plain HTTP (no http.tls), so API tokens and every answer cross the network in clear text, and anyone who can watch the traffic can take a token and act with its rights. Set http.tls, bind http.listen to 127.0.0.1, or keep the port on a network only trusted machines reach",
    )
}

#[cfg(test)]
mod exposure_tests {
    use super::exposure_warning;

    #[test]
    fn a_node_beyond_loopback_says_it_is_open() {
        for open in ["0.0.0.0:7700", "[::]:7700", "192.168.1.5:7700"] {
            let plain = exposure_warning(open.parse().unwrap(), false).unwrap();
            assert!(plain.contains("THE API IS UNENCRYPTED") && plain.contains("plain HTTP"), "{open}");
            assert_eq!(exposure_warning(open.parse().unwrap(), true), None, "{open}: TLS");
        }
        for closed in ["127.0.0.1:7700", "[::1]:7700", "127.0.0.2:0"] {
            assert_eq!(exposure_warning(closed.parse().unwrap(), false), None, "{closed}");
            assert_eq!(exposure_warning(closed.parse().unwrap(), true), None, "{closed}");
        }
    }
}
