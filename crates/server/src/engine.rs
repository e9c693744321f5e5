//! The engine of one node: claims work from the store, runs attempts as supervised child
//! processes, streams their output into the store, and records how they end, every write
//! fenced by the attempt's token.
//!
//! Ownership rules (see docs/design/leases-and-fencing.md): this node may run an attempt
//! only while its lease in the store is live. If it cannot renew the lease, it kills its
//! children before the lease can run out, so a node cut off from the store never runs an
//! attempt beside the node that takes it over.

use crate::lifecycle::{LifeCycle, Phase};
use crate::workers::{Step, Workers};
use parking_lot::Mutex;
use shoal_api::{LogHub, Metrics, WorkerStatus};
use shoal_core::mask::Masker;
use shoal_core::placement::{
    admits_work, claim_delay, Candidate, Limits, Load, NodeState, NodeView, Refusal, RegistryState,
};
use shoal_core::state::Outcome;
use shoal_core::{ExecutionId, FencingToken, JobKind, SandboxPath};
use shoal_runner::{Exit, Launcher, SpawnSpec, Stream};
use shoal_store::{
    AttemptEnd, Claimed, Finish, FinishResult, LogChunk, NodeRegistration, NodeStatus, Store, StoreError,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Why an attempt is being stopped by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    Cancel {
        by: String,
    },
    /// The node is shutting down: the attempt is handed back (`node_lost`, retried by policy).
    Shutdown,
    /// The lease could not be renewed in time: kill now, before anyone takes over.
    LeaseLost,
    /// The store refused the attempt's token: someone else owns it now. Kill, write nothing.
    Fenced,
}

struct AttemptHandle {
    execution: String,
    stop: watch::Sender<Option<Stop>>,
}

pub struct EngineConfig {
    pub node_id: String,
    pub tags: Vec<String>,
    pub slots: usize,
    pub kill_grace: Duration,
    /// Output kept per attempt; the rest is counted and dropped.
    pub max_output_bytes: u64,
    pub lease_ttl: Duration,
    pub scratch_dir: PathBuf,
    pub limits: Limits,
    pub drain_deadline: Duration,
    /// How long attempts may ride through a store outage the whole cluster shares
    /// (`cluster.store_outage_grace`; zero: never).
    pub store_outage_grace: Duration,
    /// Where the lease deadline is published to supervisors (see `shoal_runner::deadline`).
    pub deadline_file: PathBuf,
    /// This node's URL, as it advertises it: `SHOAL_SERVER` in each attempt's environment.
    pub url: String,
    /// The CA bundle the cluster's certificates are checked against (`cluster.tls_ca`), given
    /// to attempts as `SHOAL_CA_FILE`.
    pub ca_file: Option<PathBuf>,
    /// Opens the job secrets an attempt's environment names.
    pub secrets: Arc<shoal_service::secrets::Keyring>,
}

/// A peer's figures from gossip, for [`claim_delay`].
#[derive(Clone, Debug)]
pub struct PeerLoad {
    pub id: String,
    pub free: usize,
    pub slots: usize,
    pub cpu: f64,
}

/// How much longer each rank of [`claim_delay`] waits, and the most any node waits.
const CLAIM_STEP: Duration = Duration::from_millis(2);
const CLAIM_MAX_DELAY: Duration = Duration::from_millis(12);

pub struct Engine {
    pub store: Arc<Store>,
    pub cfg: EngineConfig,
    pub metrics: Arc<Metrics>,
    /// Wakes log followers of this node when an attempt's output or end is stored.
    pub logs: Arc<LogHub>,
    pub workers: Workers,
    launcher: Launcher,
    /// Running attempts by fencing token (unique), so an old attempt of an execution and its
    /// successor can never be confused.
    attempts: Mutex<HashMap<FencingToken, AttemptHandle>>,
    running: AtomicUsize,
    pub wake: Notify,
    pub generation: AtomicI64,
    /// Starting, running or stopping, and whether cut off from the store or superseded by
    /// another process of this node id (see [`crate::lifecycle`]).
    pub life: LifeCycle,
    /// When the last successful lease renewal was *sent*: the store set the expiry after
    /// that, so `sent + ttl` is never later than the real expiry.
    pub last_renewal: Mutex<Instant>,
    pub last_store_error: Mutex<Option<String>>,
    /// When the first of the renewals failing since the last success was sent; `None` while
    /// renewals succeed. While set, this node takes nothing over (its reaper and failure
    /// detector wait), and gossip says it cannot reach the store.
    pub failing_since: Mutex<Option<Instant>>,
    /// When renewals last succeeded again after failing: for a lease after that, this node
    /// ends no dead node's lease early (see `Cluster::take_over_dead`).
    pub recovered_at: Mutex<Option<Instant>>,
    /// The other nodes whose lease was live at the last successful renewal.
    pub members: Mutex<Vec<String>>,
    /// After an outage long enough for nodes to have ridden through it: this node claims
    /// nothing before this moment (every rider has a lease's time to check its attempts),
    /// and first checks its own attempts against the store (`verify_after_outage`).
    claim_after: Mutex<Option<Instant>>,
    verify_after_outage: AtomicBool,
    /// Since when the attempts here ride through a store outage the cluster shares, instead
    /// of being killed (docs/design/store-outage.md).
    pub riding: Mutex<Option<Instant>>,
    /// Active, draining or suspended; set through the API.
    state: Mutex<(NodeState, Option<Instant>)>,
    pub load: Mutex<Load>,
    /// Active peers' figures from gossip (this node excluded).
    pub peers: Mutex<Vec<PeerLoad>>,
    /// What to register again with when the cluster ended this node's lease.
    pub registration: Mutex<Option<NodeRegistration>>,
    /// A claim failed without saying whether it committed (its connection was lost, maybe
    /// with the commit in flight): the attempts it may have made here after all are looked for,
    /// and handed back, before the next claim.
    claim_unsure: AtomicBool,
}

/// Largest amount of output kept in memory for an attempt while the store is unreachable.
const MAX_BUFFERED_OUTPUT: usize = 64 * 1024 * 1024;
/// Output is written to the store at least this often while a job runs.
const LOG_FLUSH: Duration = Duration::from_millis(100);
/// Rows are merged up to this size, so chatty jobs do not write one row per line.
const MAX_LOG_ROW: usize = 256 * 1024;

impl Engine {
    pub fn new(
        store: Arc<Store>,
        cfg: EngineConfig,
        launcher: Launcher,
        metrics: Arc<Metrics>,
        logs: Arc<LogHub>,
    ) -> Engine {
        Engine {
            store,
            cfg,
            metrics,
            logs,
            workers: Workers::default(),
            launcher,
            attempts: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            wake: Notify::new(),
            generation: AtomicI64::new(0),
            life: LifeCycle::default(),
            last_renewal: Mutex::new(Instant::now()),
            last_store_error: Mutex::new(None),
            failing_since: Mutex::new(None),
            recovered_at: Mutex::new(None),
            members: Mutex::new(Vec::new()),
            claim_after: Mutex::new(None),
            verify_after_outage: AtomicBool::new(false),
            riding: Mutex::new(None),
            state: Mutex::new((NodeState::Active, None)),
            load: Mutex::new(Load::default()),
            peers: Mutex::new(Vec::new()),
            registration: Mutex::new(None),
            claim_unsure: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> NodeState {
        self.state.lock().0
    }

    /// Drains, suspends or resumes this node. Returns the state before.
    pub fn set_state(&self, new: NodeState) -> NodeState {
        let mut s = self.state.lock();
        let old = s.0;
        if old != new {
            *s = (new, (new == NodeState::Draining).then(Instant::now));
            tracing::info!(from = old.as_str(), to = new.as_str(), "node state changed");
        }
        drop(s);
        if new == NodeState::Active {
            self.wake.notify_one();
        }
        old
    }

    /// Why this node takes no new work now, if it takes none.
    pub fn refusal(&self) -> Option<Refusal> {
        let free = self.cfg.slots.saturating_sub(self.running());
        let load = *self.load.lock();
        admits_work(self.state(), free, load, self.cfg.limits).err()
    }

    /// Wakes the dispatcher, after this node's turn in the claim order when peers are known.
    pub fn wake_in_turn(self: &Arc<Self>) {
        let delay = {
            let peers = self.peers.lock().clone();
            if peers.is_empty() {
                Duration::ZERO
            } else {
                let free = self.cfg.slots.saturating_sub(self.running());
                let cpu = self.load.lock().cpu;
                let mut all: Vec<Candidate<'_>> =
                    peers.iter().map(|p| Candidate { id: &p.id, free: p.free, slots: p.slots, cpu: p.cpu }).collect();
                all.push(Candidate { id: &self.cfg.node_id, free, slots: self.cfg.slots, cpu });
                claim_delay(&self.cfg.node_id, &all, CLAIM_STEP, CLAIM_MAX_DELAY)
            }
        };
        if delay.is_zero() {
            self.wake.notify_one();
        } else {
            let e = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                e.wake.notify_one();
            });
        }
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    fn accepting(&self) -> bool {
        self.life.get().accepting() && self.refusal().is_none()
    }

    pub fn readiness(&self) -> Result<(), String> {
        let life = self.life.get();
        if life.phase == Phase::Starting {
            return Err("starting".into());
        }
        if life.superseded {
            return Err("another process registered this node id; this process no longer runs work".into());
        }
        if life.stopping() {
            return Err("shutting down".into());
        }
        if self.state() == NodeState::Draining {
            return Err(format!("draining: {} attempts still running", self.running()));
        }
        if life.cut_off {
            let last_error = self.last_store_error.lock().clone();
            let why = last_error.unwrap_or_else(|| {
                let since = self.last_renewal.lock().elapsed();
                format!("no lease renewal has succeeded for {:.1}s", since.as_secs_f64())
            });
            return Err(format!("cut off from the store: {why}"));
        }
        Ok(())
    }

    /// Asks every running attempt to stop.
    pub fn stop_all(&self, why: Stop) {
        for a in self.attempts.lock().values() {
            let _ = a.stop.send(Some(why.clone()));
        }
    }

    /// Stops the attempts of an execution that run here: the one with this token, or every
    /// one when `None`.
    pub fn stop_one(&self, id: &str, fence: Option<FencingToken>, why: Stop) -> bool {
        let attempts = self.attempts.lock();
        let mut any = false;
        for (f, a) in attempts.iter() {
            if a.execution == id && fence.is_none_or(|want| want == *f) {
                let _ = a.stop.send(Some(why.clone()));
                any = true;
            }
        }
        any
    }

    /// Whether an older attempt of this execution still runs here.
    fn older_attempt_alive(&self, id: &str, fence: FencingToken) -> bool {
        self.attempts.lock().iter().any(|(f, h)| h.execution == id && *f != fence)
    }

    /// Renews the lease on the store's clock and publishes the node's load. A renewal that
    /// takes longer than `bound` counts as failed.
    /// How long before its lease runs out a node (or, if the node is frozen, each supervisor)
    /// kills the attempts: covers the kill itself and the scheduling of the check.
    pub fn kill_margin(&self) -> Duration {
        (self.cfg.lease_ttl / 5).max(Duration::from_millis(500))
    }

    /// Publishes to supervisors the moment their jobs must be dead by: the lease end as this
    /// node knows it (from when the renewal was sent), less half the margin. The node's own
    /// watchdog acts at the full margin, first, so a supervisor only acts for a node too
    /// frozen to; both are before the lease ends.
    pub fn publish_deadline(&self, sent_boottime_ms: u64) {
        let deadline = sent_boottime_ms + self.cfg.lease_ttl.saturating_sub(self.kill_margin() / 2).as_millis() as u64;
        if let Err(e) = shoal_runner::deadline::write(&self.cfg.deadline_file, deadline) {
            tracing::warn!(error = %e, path = %self.cfg.deadline_file.display(), "cannot publish the lease deadline");
        }
    }

    /// Whether this node's lease deadline has passed without a renewal: then a SIGKILL of an
    /// attempt came from its supervisor's deadline (or the watchdog), not from the job.
    fn past_lease_deadline(&self) -> bool {
        self.life.get().cut_off
            || self.last_renewal.lock().elapsed() >= self.cfg.lease_ttl.saturating_sub(self.kill_margin())
    }

    /// The one background read of every execution followed here: wakes the followers whose
    /// execution's state or output moved, wherever it was written.
    pub async fn watch_logs(self: Arc<Self>) -> Result<Step, String> {
        let ids = self.logs.followed();
        if ids.is_empty() {
            return Ok(Step::Idle);
        }
        let marks = self.store.log_marks(&ids).await.map_err(|e| e.to_string())?;
        self.logs.observe(&ids, &marks);
        Ok(Step::Idle)
    }

    pub async fn renew_lease(self: Arc<Self>, beat: Duration) -> Result<Step, String> {
        let sent = Instant::now();
        let sent_boottime = shoal_runner::deadline::boottime_ms();
        let generation = self.generation.load(Ordering::SeqCst);
        self.hand_back_after_drain_deadline();
        let state = if self.life.get().stopping() { RegistryState::Stopping } else { self.state().into() };
        let load = *self.load.lock();
        let status = NodeStatus {
            state,
            running: self.running() as i64,
            cpu_permille: (load.cpu * 10.0) as i64,
            memory_permille: (load.memory * 10.0) as i64,
            failing_ms: self.failing_since.lock().map_or(0, |t| t.elapsed().as_millis().max(1) as i64),
        };
        // A renewal that is merely slow (queued behind another node's write on a shared SQLite
        // file, say) is still worth its wait: cutting it off and starting again only sends it
        // to the back. So it may take until shortly before the watchdog would act, and never
        // less than a `beat`; the expiry it sets counts from the moment it was sent.
        let until_watchdog = self
            .cfg
            .lease_ttl
            .saturating_sub(self.kill_margin())
            .saturating_sub(self.last_renewal.lock().elapsed())
            .saturating_sub(Duration::from_millis(100));
        let bound = beat.max(until_watchdog);
        let renewal =
            self.store.renew_lease_within(&self.cfg.node_id, generation, self.cfg.lease_ttl, &status, bound).await;
        match renewal {
            Ok(r) => {
                *self.last_renewal.lock() = sent;
                self.publish_deadline(sent_boottime);
                *self.last_store_error.lock() = None;
                *self.members.lock() = r.members;
                if let Some(since) = self.failing_since.lock().take() {
                    *self.recovered_at.lock() = Some(Instant::now());
                    // Long enough that a node may have ridden through it: the server that
                    // answers now may be a promoted replica that lost commits, such as a
                    // claim whose attempt still runs here. Check before claiming anything.
                    if since.elapsed() >= self.cfg.lease_ttl.saturating_sub(self.kill_margin()) {
                        *self.claim_after.lock() = Some(Instant::now() + self.cfg.lease_ttl);
                        self.verify_after_outage.store(true, Ordering::SeqCst);
                        self.wake.notify_one();
                    }
                }
                if let Some(since) = self.riding.lock().take() {
                    tracing::warn!(
                        ride_ms = since.elapsed().as_millis() as u64,
                        running = self.running(),
                        "store reachable again; every attempt rode through the outage"
                    );
                }
                if r.extended > 0 {
                    tracing::warn!(
                        leases = r.extended,
                        "first renewal after a store outage nobody renewed through: gave the leases that ran out in it a whole lease back"
                    );
                }
                if r.had_expired {
                    tracing::warn!(
                        "lease had expired before it was renewed; attempts of this node may have been taken over"
                    );
                }
                if self.life.reconnect() {
                    tracing::info!("store reachable again; taking work again");
                    self.wake.notify_one();
                }
                // The next renewal is sent one beat after this one was, not one beat after its
                // answer: a slow answer must not push every later renewal back towards the
                // watchdog's deadline, which counts from the last renewal sent.
                Ok(Step::After(beat.saturating_sub(sent.elapsed())))
            }
            Err(StoreError::LeaseLost(g)) => {
                if self.life.supersede() {
                    tracing::error!(
                        generation = g,
                        "another process registered this node id; stopping every attempt here"
                    );
                    self.stop_all(Stop::LeaseLost);
                }
                Err(format!("lease lost to generation {g} of this node id"))
            }
            Err(StoreError::LeaseEnded) => {
                // Other nodes found us dead (our store session ended and gossip lost us) and
                // are taking our attempts over: stop them, then join again as a new generation.
                tracing::error!("the cluster ended this node's lease; stopping every attempt and registering again");
                self.stop_all(Stop::LeaseLost);
                self.register_again(sent, sent_boottime).await
            }
            Err(err) => {
                self.metrics.lease_renewal_failures.fetch_add(1, Ordering::Relaxed);
                self.failing_since.lock().get_or_insert(sent);
                *self.last_store_error.lock() = Some(err.to_string());
                Err(err.to_string())
            }
        }
    }

    async fn register_again(&self, sent: Instant, sent_boottime: u64) -> Result<Step, String> {
        let reg = self.registration.lock().clone();
        let Some(reg) = reg else {
            return Err("lease ended and nothing to register again with".into());
        };
        let lease = self.store.register_node(&reg, self.cfg.lease_ttl).await.map_err(|e| e.to_string())?;
        self.generation.store(lease.generation, Ordering::SeqCst);
        *self.last_renewal.lock() = sent;
        self.publish_deadline(sent_boottime);
        tracing::warn!(generation = lease.generation, "registered again after the cluster ended this node's lease");
        Ok(Step::Busy)
    }

    /// A drain that outlasts its deadline hands the remaining attempts back to the cluster.
    fn hand_back_after_drain_deadline(&self) {
        let since = self.state.lock().1;
        if let Some(since) = since {
            if since.elapsed() >= self.cfg.drain_deadline && self.running() > 0 {
                tracing::warn!(running = self.running(), "drain deadline passed; handing the remaining attempts back");
                self.stop_all(Stop::Shutdown);
            }
        }
    }

    /// Whether this node's renewals are failing: then it takes nothing over. After a store
    /// outage, its first successful renewal gives back the leases that ran out in it
    /// (`Store::renew_lease`), and only then may this node reap.
    pub fn store_failing(&self) -> bool {
        self.failing_since.lock().is_some()
    }

    /// Whether renewals failed less than a lease ago: nodes that rode through an outage may
    /// still be reopening their store sessions, so none is ended as dead yet.
    pub fn recovered_lately(&self) -> bool {
        self.store_failing() || self.recovered_at.lock().is_some_and(|t| t.elapsed() < self.cfg.lease_ttl)
    }

    /// Publishes to supervisors a deadline `margin` from now, for attempts riding through a
    /// store outage: renewed by every watchdog check, so a node that freezes while riding has
    /// its children killed `margin` after it stopped looking.
    pub fn publish_ride_deadline(&self) {
        let deadline = shoal_runner::deadline::boottime_ms() + self.kill_margin().as_millis() as u64;
        if let Err(e) = shoal_runner::deadline::write(&self.cfg.deadline_file, deadline) {
            tracing::warn!(error = %e, path = %self.cfg.deadline_file.display(), "cannot publish the lease deadline");
        }
    }

    /// Takes over the attempts of nodes whose lease is gone.
    pub async fn reap(self: Arc<Self>) -> Result<Step, String> {
        if self.store_failing() {
            return Ok(Step::Idle);
        }
        let touched = self.store.reap_lost_attempts().await.map_err(|e| e.to_string())?;
        if touched.is_empty() {
            return Ok(Step::Idle);
        }
        self.metrics.takeovers.fetch_add(touched.len() as u64, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(Step::Busy)
    }

    /// Stops the attempts here that someone asked, on any node, to cancel.
    pub async fn watch_cancels(self: Arc<Self>) -> Result<Step, String> {
        if self.running() == 0 {
            return Ok(Step::Idle);
        }
        let reqs = self.store.cancel_requests(&self.cfg.node_id).await.map_err(|e| e.to_string())?;
        for (id, fence, by) in reqs {
            self.stop_one(id.as_str(), Some(fence), Stop::Cancel { by });
        }
        Ok(Step::Idle)
    }

    /// Claims what fits in the free slots and starts it; loops while there is more.
    pub async fn dispatch(self: &Arc<Self>) -> Result<bool, StoreError> {
        let mut any = false;
        if self.verify_after_outage.load(Ordering::SeqCst) {
            self.verify_own_attempts().await?;
        }
        if self.claim_after.lock().is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        while self.accepting() {
            if self.claim_unsure.load(Ordering::SeqCst) {
                self.hand_back_unstarted().await?;
            }
            let free = self.cfg.slots.saturating_sub(self.running());
            let view = NodeView { id: &self.cfg.node_id, tags: &self.cfg.tags };
            let claimed = match self.store.claim(&view, free.min(256)).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    if matches!(e, StoreError::Unavailable(_)) {
                        self.claim_unsure.store(true, Ordering::SeqCst);
                    }
                    return Err(e);
                }
            };
            if claimed.is_empty() {
                break;
            }
            any = true;
            self.metrics.claim_batch_size.observe(claimed.len() as f64);
            let mut noops = Vec::new();
            for c in claimed {
                self.metrics.attempts_started.fetch_add(1, Ordering::Relaxed);
                if matches!(c.spec.kind, JobKind::Noop) {
                    // Nothing to spawn: the attempt starts when it is claimed.
                    self.metrics.dispatch_latency.observe(c.runnable_for().as_secs_f64());
                }
                match c.spec.kind {
                    JobKind::Noop => noops.push(Finish {
                        id: c.id,
                        fence: c.fence,
                        attempt: c.attempt,
                        end: AttemptEnd { outcome: Outcome::Exited(0), exit_code: Some(0), signal: None },
                        logs: Vec::new(),
                    }),
                    JobKind::Process { .. } => {
                        self.running.fetch_add(1, Ordering::SeqCst);
                        // An older attempt of the same execution can only still run here if this
                        // node's lease was taken from it while it thought it held it; the store
                        // has moved on, so that attempt is fenced: kill it before starting anew.
                        self.stop_one(c.id.as_str(), None, Stop::Fenced);
                        let (stop, stop_rx) = watch::channel(None);
                        self.attempts.lock().insert(c.fence, AttemptHandle { execution: c.id.to_string(), stop });
                        let engine = self.clone();
                        tokio::spawn(async move { engine.run_attempt(c, stop_rx).await });
                    }
                }
            }
            if !noops.is_empty() {
                // No process: all of a batch's no-op attempts end in one transaction.
                self.finish_with_retry(noops).await;
            }
        }
        Ok(any)
    }

    /// After an outage: stops every attempt here that the store does not say runs here with
    /// that token (the server that came back lost the commit that claimed it, and another node
    /// may claim the execution again). Fenced: nothing of it is written.
    async fn verify_own_attempts(&self) -> Result<(), StoreError> {
        let current: std::collections::HashSet<(String, FencingToken)> = self
            .store
            .attempts_running_on(&self.cfg.node_id)
            .await?
            .into_iter()
            .map(|(id, fence)| (id.to_string(), fence))
            .collect();
        let lost: Vec<(String, FencingToken)> = self
            .attempts
            .lock()
            .iter()
            .filter(|(fence, a)| !current.contains(&(a.execution.clone(), **fence)))
            .map(|(fence, a)| (a.execution.clone(), *fence))
            .collect();
        for (id, fence) in lost {
            tracing::error!(execution = %id, %fence, "after the store outage, the store does not know this attempt: the server that came back lost its claim; stopping it");
            self.stop_one(&id, Some(fence), Stop::Fenced);
        }
        self.verify_after_outage.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// After a claim whose commit is unknown: the attempts the store says run here that do not
    /// (made by that claim, never started) are handed back, to run again. Called only by the
    /// dispatcher between claims, so no claim of this node is under way, and every attempt it
    /// did start is in `attempts` until its end is stored.
    async fn hand_back_unstarted(&self) -> Result<(), StoreError> {
        let running: Vec<FencingToken> = self.attempts.lock().keys().copied().collect();
        let handed = self.store.hand_back_unstarted(&self.cfg.node_id, &running).await?;
        self.claim_unsure.store(false, Ordering::SeqCst);
        if !handed.is_empty() {
            tracing::warn!(
                attempts = handed.len(),
                "a claim told it had failed had committed all the same; its attempts, never started, were handed back"
            );
        }
        Ok(())
    }

    async fn run_attempt(self: Arc<Self>, c: Claimed, stop_rx: watch::Receiver<Option<Stop>>) {
        // Never two live attempts of one execution, even on one node.
        while self.older_attempt_alive(c.id.as_str(), c.fence) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (end, logs, fenced) = self.execute(&c, stop_rx).await;
        if !fenced {
            self.finish_with_retry(vec![Finish { id: c.id.clone(), fence: c.fence, attempt: c.attempt, end, logs }])
                .await;
        } else {
            self.metrics.attempts_fenced.fetch_add(1, Ordering::Relaxed);
        }
        self.attempts.lock().remove(&c.fence);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Writes attempt ends, retrying while the store is unreachable. Gives up only when the
    /// node is stopping and the store stays away; then the lease expires and the attempt is
    /// taken over like any lost one (never reported as succeeded).
    async fn finish_with_retry(&self, items: Vec<Finish>) {
        let mut delay = Duration::from_millis(100);
        let mut tries = 0u32;
        loop {
            tries += 1;
            match self.store.finish(&items).await {
                Ok(results) => {
                    for (item, r) in items.iter().zip(results) {
                        self.logs.written(item.id.as_str());
                        match r {
                            FinishResult::Done(state) => {
                                self.metrics.attempts_finished.fetch_add(1, Ordering::Relaxed);
                                // The output not flushed yet is written with the end.
                                let bytes: usize = item.logs.iter().map(|l| l.data.len()).sum();
                                self.metrics.log_bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
                                tracing::debug!(execution = %item.id, attempt = item.attempt, state = %state, "attempt recorded");
                            }
                            FinishResult::Fenced => {
                                self.metrics.attempts_fenced.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(execution = %item.id, fence = %item.fence, "attempt end refused: its token is stale, another node owns the execution now");
                            }
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, tries, "cannot record attempt ends yet; retrying");
                    if self.life.get().stopping() && tries >= 20 {
                        tracing::error!(error = %e, "giving up recording attempt ends at shutdown; the lease expiry hands them to another node");
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The environment variables that name secrets, with the values in place, and the values
    /// (to mask). An error (a secret removed since the submission, a key this node lacks) is
    /// shown in the attempt's output and never holds a value.
    async fn open_secrets(&self, c: &Claimed) -> Result<(Vec<(String, String)>, Vec<String>), String> {
        if c.spec.secret_env.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let values =
            shoal_service::secrets::open_for_attempt(&self.store, &self.cfg.secrets, c.sandbox.as_deref(), &c.spec)
                .await?;
        let env = c.spec.render_secret_env(&values)?;
        Ok((env, values.into_values().collect()))
    }

    /// Resolves where and how an attempt runs; an error is shown in the attempt's output.
    async fn spawn_spec(&self, c: &Claimed) -> Result<SpawnSpec, String> {
        let JobKind::Process { command } = &c.spec.kind else {
            return Err("not a process".into());
        };
        let (root, sandbox_root) = match &c.sandbox {
            Some(name) => match self.store.get_sandbox(name).await {
                Ok(Some(s)) => (PathBuf::from(&s.root), Some(s.root)),
                Ok(None) => return Err(format!("sandbox `{name}` no longer exists")),
                Err(e) => return Err(format!("cannot look up sandbox `{name}`: {e}")),
            },
            None => {
                let dir = self.cfg.scratch_dir.clone();
                if let Err(e) = tokio::fs::create_dir_all(&dir).await {
                    return Err(format!("cannot create the scratch folder {}: {e}", dir.display()));
                }
                (dir, None)
            }
        };
        let cwd = match &c.spec.workdir {
            Some(w) => {
                let p = SandboxPath::parse(w).map_err(|e| format!("workdir: {e}"))?;
                root.join(p.to_relative())
            }
            None => root,
        };
        let mut env: Vec<(String, String)> = c.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("SHOAL_EXECUTION_ID".into(), c.id.to_string()));
        env.push(("SHOAL_ATTEMPT".into(), c.attempt.to_string()));
        env.push(("SHOAL_NODE_ID".into(), self.cfg.node_id.clone()));
        env.push(("SHOAL_FENCING_TOKEN".into(), c.fence.to_string()));
        // `shoal` inside the job talks to this node with the attempt's own token, which is
        // valid only while this attempt is the execution's current one.
        env.push(("SHOAL_SERVER".into(), self.cfg.url.clone()));
        env.push(("SHOAL_TOKEN".into(), c.token.text().to_owned()));
        if let Some(ca) = &self.cfg.ca_file {
            env.push(("SHOAL_CA_FILE".into(), ca.display().to_string()));
        }
        if let (Some(name), Some(root)) = (&c.sandbox, sandbox_root) {
            env.push(("SHOAL_SANDBOX".into(), name.clone()));
            env.push(("SHOAL_SANDBOX_ROOT".into(), root));
        }
        Ok(SpawnSpec {
            argv: command.clone(),
            cwd,
            env,
            kill_grace: self.cfg.kill_grace,
            deadline_file: Some(self.cfg.deadline_file.clone()),
        })
    }

    /// Runs one attempt to its end. Returns how it ended, the output not yet written, and
    /// whether the store refused its token (then nothing more may be written).
    async fn execute(
        &self,
        c: &Claimed,
        mut stop_rx: watch::Receiver<Option<Stop>>,
    ) -> (AttemptEnd, Vec<LogChunk>, bool) {
        let spawn_failed = |msg: String| {
            let line = format!("shoal: cannot start attempt {} on {}: {msg}\n", c.attempt, self.cfg.node_id);
            (
                AttemptEnd { outcome: Outcome::Exited(127), exit_code: Some(127), signal: None },
                vec![LogChunk { seq: 0, stream: 2, data: line.into_bytes() }],
                false,
            )
        };
        // Secrets are opened here, on the node that runs the attempt, and go only into the
        // child's environment; every value is masked in the output the store keeps.
        let (secret_env, mut masks) = match self.open_secrets(c).await {
            Ok(opened) => opened,
            Err(msg) => return spawn_failed(msg),
        };
        // The attempt's own token too: a job that prints its environment leaves no
        // credential in its stored output, even one that ends with the attempt.
        masks.push(c.token.text().to_owned());
        let mut spec = match self.spawn_spec(c).await {
            Ok(s) => s,
            Err(msg) => return spawn_failed(msg),
        };
        spec.env.extend(secret_env);
        let mut child = match self.launcher.spawn(spec).await {
            Ok(ch) => ch,
            Err(e) => return spawn_failed(e.to_string()),
        };
        tracing::info!(execution = %c.id, attempt = c.attempt, fence = %c.fence, pid = child.pid(), "attempt started");
        self.metrics.dispatch_latency.observe(c.runnable_for().as_secs_f64());
        let Some(output) = child.take_output() else {
            child.kill();
            return spawn_failed("no output pipes".into());
        };
        let (fenced_tx, mut fenced_rx) = watch::channel(false);
        let target = LogTarget {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            logs: self.logs.clone(),
            id: c.id.clone(),
            fence: c.fence,
            attempt: c.attempt,
            max_output: self.cfg.max_output_bytes,
            masks,
        };
        let writer = tokio::spawn(write_logs(target, output, fenced_tx));
        let deadline = c.spec.timeout().map(|t| tokio::time::Instant::now() + t);
        let mut stopped: Option<Stop> = None;
        let mut timed_out = false;
        let exit = loop {
            tokio::select! {
                exit = child.wait() => break exit,
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() && !timed_out && stopped.is_none() => {
                    timed_out = true;
                    tracing::info!(execution = %c.id, "attempt timed out; stopping its process tree");
                    child.terminate();
                }
                changed = stop_rx.changed(), if stopped.is_none() => {
                    if changed.is_err() { continue; }
                    let why = stop_rx.borrow().clone();
                    if let Some(why) = why {
                        tracing::info!(execution = %c.id, reason = ?why, "stopping attempt");
                        match why {
                            Stop::LeaseLost | Stop::Fenced => child.kill(),
                            Stop::Cancel { .. } | Stop::Shutdown => child.terminate(),
                        }
                        stopped = Some(why);
                    }
                }
                _ = fenced_rx.changed(), if stopped.is_none() => {
                    if *fenced_rx.borrow() {
                        tracing::warn!(execution = %c.id, "log write refused: another node owns this execution now; killing the attempt");
                        child.kill();
                        stopped = Some(Stop::Fenced);
                    }
                }
            }
        };
        let rest = writer.await.unwrap_or_default();
        let fenced = *fenced_rx.borrow() || stopped == Some(Stop::Fenced);
        let (exit_code, signal) = match &exit {
            Ok(Exit::Code(c)) => (Some(*c), None),
            Ok(Exit::Signal(s)) => (None, Some(*s)),
            Err(_) => (None, None),
        };
        let outcome = match (&stopped, timed_out, &exit) {
            (Some(Stop::Cancel { by }), _, _) => Outcome::Cancelled { by: by.clone() },
            (Some(Stop::Shutdown), _, _) => Outcome::HandedBack { node: self.cfg.node_id.clone() },
            (Some(Stop::LeaseLost | Stop::Fenced), _, _) => Outcome::NodeLost { node: self.cfg.node_id.clone() },
            (None, true, _) => Outcome::TimedOut,
            (None, false, Ok(Exit::Code(code))) => Outcome::Exited(*code),
            (None, false, Ok(Exit::Signal(sig))) if *sig == libc::SIGKILL && self.past_lease_deadline() => {
                Outcome::NodeLost { node: self.cfg.node_id.clone() }
            }
            (None, false, Ok(Exit::Signal(sig))) => Outcome::Signaled(*sig),
            (None, false, Err(e)) => {
                tracing::error!(execution = %c.id, error = %e, "lost track of the attempt's process");
                Outcome::NodeLost { node: self.cfg.node_id.clone() }
            }
        };
        tracing::info!(execution = %c.id, attempt = c.attempt, outcome = ?outcome, "attempt ended");
        (AttemptEnd { outcome, exit_code, signal }, rest, fenced)
    }
}

/// Where an attempt's output goes, and how much of it is kept.
struct LogTarget {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    logs: Arc<LogHub>,
    id: ExecutionId,
    fence: FencingToken,
    attempt: i64,
    max_output: u64,
    /// The secrets' values, each stored as `***`.
    masks: Vec<String>,
}

/// Pumps an attempt's output into the store, fenced, until the pipes close. Returns what it
/// could not write yet (the caller writes it with the attempt's end, in one transaction).
async fn write_logs(
    target: LogTarget,
    mut output: tokio::sync::mpsc::Receiver<shoal_runner::OutputChunk>,
    fenced: watch::Sender<bool>,
) -> Vec<LogChunk> {
    let LogTarget { store, metrics, logs, id, fence, attempt, max_output, masks } = target;
    // One masker per stream: a value split across two reads of one pipe is still masked.
    let (mut mask_out, mut mask_err) = (Masker::new(&masks), Masker::new(&masks));
    drop(masks);
    let mut pending: Vec<LogChunk> = Vec::new();
    // Output beyond `max_output` is counted, not kept: one runaway job must not fill the store.
    let mut kept: u64 = 0;
    let mut over_limit: u64 = 0;
    let mut buffered = 0usize;
    let mut dropped = 0usize;
    let mut seq = 0i64;
    let mut tick = tokio::time::interval(LOG_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    let mut refused = false;
    while open {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some(chunk) => {
                    if refused {
                        continue;
                    }
                    let stream = match chunk.stream { Stream::Stdout => 1, Stream::Stderr => 2 };
                    let mut data = match chunk.stream {
                        _ if mask_out.is_empty() => chunk.data,
                        Stream::Stdout => mask_out.feed(&chunk.data).into(),
                        Stream::Stderr => mask_err.feed(&chunk.data).into(),
                    };
                    if data.is_empty() {
                        continue;
                    }
                    let room = max_output.saturating_sub(kept) as usize;
                    if data.len() > room {
                        over_limit += (data.len() - room) as u64;
                        data.truncate(room);
                        if data.is_empty() {
                            continue;
                        }
                    }
                    kept += data.len() as u64;
                    let chunk = shoal_runner::OutputChunk { stream: chunk.stream, data };
                    if buffered + chunk.data.len() > MAX_BUFFERED_OUTPUT {
                        dropped += chunk.data.len();
                        continue;
                    }
                    if dropped > 0 {
                        let note = format!("\n[shoal: {dropped} bytes of output were dropped while the store was unreachable]\n");
                        buffered += note.len();
                        pending.push(LogChunk { seq, stream: 2, data: note.into_bytes() });
                        seq += 1;
                        dropped = 0;
                    }
                    buffered += chunk.data.len();
                    match pending.last_mut() {
                        // Merge into the last unwritten row of the same stream.
                        Some(last) if last.stream == stream && last.data.len() + chunk.data.len() <= MAX_LOG_ROW => {
                            last.data.extend_from_slice(&chunk.data);
                        }
                        _ => {
                            pending.push(LogChunk { seq, stream, data: chunk.data.to_vec() });
                            seq += 1;
                        }
                    }
                }
                None => {
                    open = false;
                    // What each masker held back, now that nothing can complete a value.
                    for (stream, rest) in [(1, mask_out.finish()), (2, mask_err.finish())] {
                        let room = max_output.saturating_sub(kept) as usize;
                        if refused || rest.is_empty() {
                            continue;
                        }
                        over_limit += rest.len().saturating_sub(room) as u64;
                        let rest = &rest[..rest.len().min(room)];
                        if rest.is_empty() {
                            continue;
                        }
                        kept += rest.len() as u64;
                        buffered += rest.len();
                        pending.push(LogChunk { seq, stream, data: rest.to_vec() });
                        seq += 1;
                    }
                }
            },
            _ = tick.tick() => {
                if pending.is_empty() || refused {
                    continue;
                }
                match store.append_logs(&id, fence, attempt, &pending).await {
                    Ok(()) => {
                        metrics.log_bytes_written.fetch_add(buffered as u64, Ordering::Relaxed);
                        logs.written(id.as_str());
                        pending.clear();
                        buffered = 0;
                    }
                    Err(StoreError::Fenced) => {
                        refused = true;
                        pending.clear();
                        let _ = fenced.send(true);
                    }
                    Err(e) => tracing::debug!(execution = %id, error = %e, "log write failed; keeping the output to retry"),
                }
            }
        }
    }
    if refused {
        return Vec::new();
    }
    if over_limit > 0 {
        let note = format!(
            "\n[shoal: output limit of {max_output} bytes reached; {over_limit} more bytes were not kept (executor.max_output_bytes)]\n"
        );
        pending.push(LogChunk { seq, stream: 2, data: note.into_bytes() });
        seq += 1;
    }
    if dropped > 0 {
        let note = format!("\n[shoal: {dropped} bytes of output were dropped while the store was unreachable]\n");
        pending.push(LogChunk { seq, stream: 2, data: note.into_bytes() });
    }
    pending
}

impl shoal_api::Engine for EngineHandle {
    fn triggers_changed(&self) {
        self.triggers.definitions_changed();
    }

    fn check_file_pattern(&self, pattern: &str) -> Result<(), (bool, String)> {
        use crate::filewatch::{Pattern, PatternError};
        Pattern::parse(pattern).map(|_| ()).map_err(|e| (matches!(e, PatternError::LeavesSandbox(_)), e.to_string()))
    }

    fn wake(&self) {
        self.engine.wake_in_turn();
        if self.engine.store.dialect() == shoal_store::Dialect::Sqlite {
            // PostgreSQL tells the other nodes itself (NOTIFY); SQLite cannot.
            self.cluster.announce_work();
        }
    }

    fn cancel_local(&self, execution: &str, by: &str) {
        self.engine.stop_one(execution, None, Stop::Cancel { by: by.to_owned() });
    }

    fn readiness(&self) -> Result<(), String> {
        self.engine.readiness()
    }

    fn running(&self) -> usize {
        self.engine.running()
    }

    fn workers(&self) -> Vec<WorkerStatus> {
        self.engine.workers.snapshot()
    }

    fn state(&self) -> NodeState {
        self.engine.state()
    }

    fn set_state(&self, state: NodeState) -> NodeState {
        let before = self.engine.set_state(state);
        // Peers see the change now rather than at the next publishing tick.
        self.cluster.publish(&self.engine);
        before
    }

    fn refusal(&self) -> Option<String> {
        self.engine.refusal().map(|r| r.to_string())
    }

    fn gossip(&self) -> Vec<(String, bool)> {
        self.cluster.membership.snapshot().into_iter().map(|p| (p.id, p.alive)).collect()
    }

    fn store_reports(&self) -> Vec<(String, String)> {
        let key = shoal_cluster::keys::STORE;
        self.cluster.membership.snapshot().into_iter().filter_map(|p| Some((p.id, p.keys.get(key)?.clone()))).collect()
    }

    fn rejected_gossip_packets(&self) -> u64 {
        self.cluster.membership.rejected_packets()
    }

    fn live_peer_url(&self, id: &str) -> Option<String> {
        self.cluster
            .membership
            .snapshot()
            .into_iter()
            .find(|p| p.id == id && p.alive && p.id != self.engine.cfg.node_id)
            .and_then(|p| p.keys.get(shoal_cluster::keys::URL).cloned())
    }
}

/// The engine as the API sees it.
pub struct EngineHandle {
    pub engine: Arc<Engine>,
    pub cluster: Arc<crate::cluster::Cluster>,
    pub triggers: Arc<crate::triggers::Triggers>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real engine on a fresh SQLite store; nothing runs in the background.
    async fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let store = Store::open(&format!("sqlite://{}", dir.join("shoal.db").display()), 2).await.unwrap();
        let launcher = Launcher::new(std::env::current_exe().unwrap()).unwrap();
        let cfg = EngineConfig {
            node_id: "node-a".into(),
            tags: Vec::new(),
            slots: 4,
            kill_grace: Duration::from_secs(1),
            max_output_bytes: 1024,
            lease_ttl: Duration::from_secs(10),
            scratch_dir: dir.join("scratch"),
            limits: Limits::default(),
            drain_deadline: Duration::from_secs(60),
            store_outage_grace: Duration::from_secs(120),
            deadline_file: dir.join("lease-deadline"),
            url: "http://127.0.0.1:1".into(),
            ca_file: None,
            secrets: {
                let key = dir.join("secrets.key");
                shoal_service::secrets::generate_key_file(&key).unwrap();
                Arc::new(shoal_service::secrets::Keyring::load(&key, &[]).unwrap())
            },
        };
        Arc::new(Engine::new(Arc::new(store), cfg, launcher, Arc::default(), Arc::default()))
    }

    /// Issue 10: readiness and claiming read one life-cycle snapshot, and say why in the order
    /// they always have: starting, superseded, shutting down, draining, cut off.
    #[tokio::test]
    async fn readiness_follows_the_life_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path()).await;
        assert_eq!(e.readiness(), Err("starting".to_owned()));
        assert!(!e.accepting());
        assert!(e.life.register());
        assert_eq!(e.readiness(), Ok(()));
        assert!(e.accepting());

        assert!(e.life.cut_off());
        let why = e.readiness().unwrap_err();
        assert!(why.starts_with("cut off from the store: no lease renewal has succeeded for"), "{why}");
        assert!(!e.accepting());
        e.set_state(NodeState::Draining);
        assert_eq!(e.readiness(), Err("draining: 0 attempts still running".to_owned()));
        assert!(e.life.stop());
        assert_eq!(e.readiness(), Err("shutting down".to_owned()));
        assert!(e.life.supersede());
        assert_eq!(
            e.readiness(),
            Err("another process registered this node id; this process no longer runs work".to_owned())
        );

        // Nothing brings a stopping node back to work.
        e.set_state(NodeState::Active);
        assert!(e.life.reconnect());
        assert!(!e.life.register());
        assert!(!e.accepting());
        assert_eq!(e.life.get().phase, Phase::Stopping);
    }

    /// Issue 10: a thread that panicked while holding the node state must not turn a draining
    /// node into an active one (the std lock was poisoned and read as `Active`).
    #[tokio::test]
    async fn a_panic_while_the_state_is_held_keeps_the_node_draining() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path()).await;
        assert!(e.life.register());
        assert_eq!(e.set_state(NodeState::Draining), NodeState::Active);

        let held = e.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = held.state.lock();
            panic!("a thread panics while holding the node state");
        })
        .join();
        assert!(panicked.is_err());

        assert_eq!(e.state(), NodeState::Draining);
        assert_eq!(e.refusal(), Some(Refusal::State(NodeState::Draining)));
        assert_eq!(e.readiness(), Err("draining: 0 attempts still running".to_owned()));
        // The state can still be changed, and says what it was.
        assert_eq!(e.set_state(NodeState::Active), NodeState::Draining);
        assert_eq!(e.state(), NodeState::Active);
        assert_eq!(e.refusal(), None);
    }
}
