//! Schedules and listeners at work: every node runs a scheduler and a listener worker, and
//! none is in charge.
//!
//! **Spread.** Each schedule and listener has one preferred node: the highest rendezvous
//! score of its id among the nodes gossip reports alive (a local sandbox's work goes to its
//! holder, the only node that can read it). When a node dies, gossip drops it within about
//! a second and its share moves to the others with no hand-over. Every node also fires any
//! schedule more than [`BACKSTOP`] late, whoever prefers it, so two nodes that disagree
//! about membership cost lateness, never a missed firing.
//!
//! **Correctness** does not depend on the spread: firings and events are claimed by unique
//! rows in the store, in the transaction that enqueues their executions
//! (`Store::fire_schedules`, `Store::record_events`), and every decision there is made on
//! the store's clock. A node's own clock only decides when it wakes up to look.

use crate::cluster::Cluster;
use crate::filewatch::{self, FileEventKind, Pattern, Settler};
use crate::workers::Step;
use parking_lot::Mutex;
use shoal_cluster::keys;
use shoal_core::listener::{event_params, EventReason, ListenerKind, OnCluster, OnFile, OnJob};
use shoal_core::schedule::{due_firings, on_overlap, CronSpec, FiringReason, Overlap, OverlapDecision, SkipReason};
use shoal_core::Trigger;
use shoal_service::jobs::{self, JobRef};
use shoal_service::rights;
use shoal_store::{
    CursorMove, FireContext, FireDecision, FiringOutcome, ListenerRow, NewEvent, NewFiring, Origin, SandboxRow,
    ScheduleRow, Store,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// A schedule this late is fired by whichever node notices, not only by its preferred one.
pub const BACKSTOP: Duration = Duration::from_secs(2);
/// Definitions are read again at least this often (and at once when a node says they changed).
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Definitions are not read again when one of this node's firings is due within this many
/// milliseconds: the firing comes first.
const RELOAD_SLACK_MS: i64 = 150;
/// How far ahead of its time a firing is claimed (its execution waits for the time): the
/// claim's cost, a few milliseconds per hundred schedules, is paid before the firing time.
pub const FIRE_AHEAD: Duration = Duration::from_millis(500);
/// Schedules fired per transaction.
const FIRE_BATCH: usize = 500;
/// How often listeners look for events.
pub const LISTEN_EVERY: Duration = Duration::from_millis(250);
/// Job and cluster events are looked for this far behind the listener's cursor: an
/// execution's `finished_at` is stamped before its transaction commits, so one may become
/// visible after a later one. The event's unique key keeps the overlap from repeating.
const LOOKBACK_MS: i64 = 10_000;
/// Events read per listener per look.
const EVENT_BATCH: i64 = 500;
/// A file listener refuses folders with more matching files than this.
const MAX_WATCHED_FILES: usize = 100_000;

pub struct Triggers {
    store: Arc<Store>,
    /// The local engine, woken when firings claimed ahead become claimable.
    engine: Arc<crate::engine::Engine>,
    metrics: Arc<shoal_api::Metrics>,
    node: String,
    cluster: Arc<Cluster>,
    /// Woken when definitions change through this node.
    pub changed: Notify,
    /// This node's definitions counter (`keys::TRIGGERS`), and the peers' as last seen.
    version: AtomicU64,
    peers_version: Mutex<HashMap<String, String>>,
    /// The store's clock minus this node's, in ms, as last measured.
    offset_ms: AtomicI64,
    sched: tokio::sync::Mutex<SchedState>,
    listen: tokio::sync::Mutex<ListenState>,
    /// Definitions changed: both workers read them again at their next look.
    sched_stale: std::sync::atomic::AtomicBool,
    listen_stale: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct SchedState {
    schedules: Vec<Entry>,
    /// Schedule id → index in `schedules`.
    index: HashMap<String, usize>,
    sandboxes: HashMap<String, SandboxRow>,
    queued: HashSet<String>,
    loaded: Option<Instant>,
    /// The membership `Entry::mine` was computed for.
    live: Vec<String>,
    /// Firing times claimed ahead whose executions become claimable then: at each, this
    /// node tells every node to look for work.
    announce: std::collections::BTreeSet<i64>,
}

/// A schedule as the scheduler keeps it between looks: what is computed once per change
/// rather than at every look (a look can come every few milliseconds around a second).
struct Entry {
    row: ScheduleRow,
    spec: Option<CronSpec>,
    /// The first firing time after `row.last_fire_at`.
    next: Option<i64>,
    /// This node can read the job (its sandbox is shared, or local here).
    readable: bool,
    /// This node is the schedule's preferred one.
    mine: bool,
}

#[derive(Default)]
struct ListenState {
    listeners: Vec<ListenerRow>,
    sandboxes: HashMap<String, SandboxRow>,
    loaded: Option<Instant>,
    files: HashMap<String, FileWatch>,
    deaths_recorded: Option<Instant>,
}

struct FileWatch {
    /// The definition this state was built for; a changed one starts afresh.
    config: String,
    pattern: Pattern,
    settler: Settler,
}

fn local_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A stable 64-bit hash, the same on every node and every build: FNV-1a, then the
/// SplitMix64 finaliser so that similar keys (`n1`, `n2`) get unrelated scores.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node that prefers `key`: the highest rendezvous score among `live`.
pub fn owner<'a>(live: &'a [String], key: &str) -> Option<&'a str> {
    live.iter().max_by_key(|n| (fnv(&[n, key]), n.as_str())).map(String::as_str)
}

/// What the scheduler does with one schedule's due firings, decided in the firing
/// transaction with the schedule locked (see `Store::fire_schedules`).
pub fn decide(
    ctx: &FireContext<'_>,
    spec: &CronSpec,
    job: Result<&JobRef, (FiringReason, &str)>,
    lead_ms: i64,
) -> FireDecision {
    let s = ctx.schedule;
    let (misfire, overlap) = (s.misfire, s.overlap);
    let plan = due_firings(spec, Some(s.last_fire_at), ctx.now, s.misfire_threshold_ms, misfire);
    let mut d = FireDecision { covered_to: plan.last_covered(), ..FireDecision::default() };
    let origin = || Origin::owned(Trigger::Schedule, &s.id, s.owner.as_ref());
    let execution = |fire_at: i64| match job {
        Ok(j) => {
            j.execution(&spec.firing_params(&s.params, fire_at), origin()).map_err(|e| e.to_string()).map(|mut e| {
                // Claimed ahead: not claimable by any node before its firing time.
                if fire_at > ctx.now {
                    e.run_after = Some(fire_at);
                }
                e
            })
        }
        Err((_, m)) => Err(m.to_owned()),
    };
    // Why a firing that should start cannot: its owner may not, or its job does not load.
    let unstartable = match job {
        Err((reason, _)) => reason,
        Ok(_) => FiringReason::JobError,
    };
    let skipped = |fire_at, reason: FiringReason| NewFiring {
        fire_at,
        outcome: FiringOutcome::Skipped,
        reason: Some(reason),
        message: None,
        execution: None,
    };

    let mut running = ctx.previous.is_some_and(|p| !p.is_final());
    let mut waiting = ctx.queued.is_some();
    if let Some(queued_at) = ctx.queued {
        if !running {
            match execution(queued_at) {
                Ok(e) => {
                    d.release_queued = Some(e);
                    running = true;
                    waiting = false;
                }
                Err(m) => tracing::warn!(schedule = %s.name, error = %m, "cannot start the queued firing"),
            }
        }
    }
    let mut events: Vec<(i64, Option<SkipReason>)> = plan.run.iter().map(|f| (*f, None)).collect();
    events.extend(plan.skipped.iter().map(|k| (k.fire_ms, Some(k.reason))));
    events.sort_by_key(|(f, _)| *f);
    // With `replace`, of several firings due at once only the newest starts.
    let last_run = plan.run.last().copied();
    for (fire_at, skip) in events {
        if !s.enabled {
            d.firings.push(skipped(fire_at, FiringReason::Disabled));
            continue;
        }
        if let Some(reason) = skip {
            d.firings.push(skipped(fire_at, reason.into()));
            continue;
        }
        let start = match on_overlap(overlap, running) {
            OverlapDecision::Start => true,
            OverlapDecision::Skip => false,
            OverlapDecision::QueueAfterPrevious => {
                if !waiting {
                    d.firings.push(NewFiring {
                        fire_at,
                        outcome: FiringOutcome::Queued,
                        reason: Some(FiringReason::Overlap),
                        message: None,
                        execution: None,
                    });
                    waiting = true;
                    continue;
                }
                // One firing waits at most; later ones are skipped until it has started.
                false
            }
            OverlapDecision::CancelPreviousThenStart => {
                if Some(fire_at) == last_run {
                    d.cancel_previous = true;
                    true
                } else {
                    false
                }
            }
        };
        if !start {
            d.firings.push(skipped(fire_at, FiringReason::Overlap));
            continue;
        }
        match execution(fire_at) {
            Ok(e) => {
                d.firings.push(NewFiring {
                    fire_at,
                    outcome: FiringOutcome::Started,
                    reason: None,
                    message: None,
                    execution: Some(e),
                });
                running = true;
            }
            Err(m) => {
                tracing::warn!(schedule = %s.name, error = %m, reason = %unstartable, "a firing could not start its job");
                d.firings.push(NewFiring { message: Some(m), ..skipped(fire_at, unstartable) });
            }
        }
    }
    // Firings due within the lead are claimed now, with executions not claimable before their
    // time: the claim's cost is paid before the firing time, not after it. Only where nothing
    // could change the decision meanwhile: an enabled schedule whose overlap policy is
    // `allow` (a change of definition withdraws them; see `Store::update_schedule`).
    if lead_ms > 0 && plan.complete && s.enabled && overlap == Overlap::Allow && job.is_ok() {
        let mut t = d.covered_to.unwrap_or(s.last_fire_at).max(s.last_fire_at);
        while let Some(f) = spec.next_after(t).filter(|f| *f <= ctx.now + lead_ms && d.firings.len() < 100) {
            match execution(f) {
                Ok(e) => d.firings.push(NewFiring {
                    fire_at: f,
                    outcome: FiringOutcome::Started,
                    reason: None,
                    message: None,
                    execution: Some(e),
                }),
                Err(_) => break,
            }
            d.covered_to = Some(f);
            t = f;
        }
    }
    d
}

impl Triggers {
    pub fn new(
        store: Arc<Store>,
        engine: Arc<crate::engine::Engine>,
        node: String,
        cluster: Arc<Cluster>,
        metrics: Arc<shoal_api::Metrics>,
    ) -> Arc<Triggers> {
        Arc::new(Triggers {
            store,
            engine,
            metrics,
            node,
            cluster,
            changed: Notify::new(),
            version: AtomicU64::new(0),
            peers_version: Mutex::new(HashMap::new()),
            offset_ms: AtomicI64::new(0),
            sched: tokio::sync::Mutex::new(SchedState::default()),
            listen: tokio::sync::Mutex::new(ListenState::default()),
            sched_stale: std::sync::atomic::AtomicBool::new(true),
            listen_stale: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Definitions changed through this node: look again here, and tell the peers.
    pub fn definitions_changed(&self) {
        let n = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        self.cluster.membership.set(keys::TRIGGERS, n.to_string());
        self.mark_stale();
        self.changed.notify_waiters();
    }

    fn mark_stale(&self) {
        self.sched_stale.store(true, Ordering::SeqCst);
        self.listen_stale.store(true, Ordering::SeqCst);
    }

    /// Nodes gossip reports alive (this one included), and whether a peer's definitions
    /// counter moved since the last look.
    fn membership(&self) -> (Vec<String>, bool) {
        let mut live = vec![self.node.clone()];
        let mut moved = false;
        let mut seen = self.peers_version.lock();
        for p in self.cluster.membership.snapshot() {
            if p.id == self.node || !p.alive {
                continue;
            }
            if let Some(v) = p.keys.get(keys::TRIGGERS) {
                if seen.get(&p.id) != Some(v) {
                    moved = true;
                    seen.insert(p.id.clone(), v.clone());
                }
            }
            live.push(p.id);
        }
        live.sort();
        live.dedup();
        (live, moved)
    }

    /// Whether this node should do the work of `key`, whose job lives in `sandbox`.
    fn mine(&self, live: &[String], key: &str, sandbox: Option<&SandboxRow>) -> bool {
        match sandbox {
            Some(s) if s.kind == shoal_core::SandboxKind::Local => s.node_id.as_deref() == Some(self.node.as_str()),
            _ => owner(live, key) == Some(self.node.as_str()),
        }
    }

    /// Every sandbox by name.
    async fn sandboxes(&self) -> Result<HashMap<String, SandboxRow>, String> {
        let rows = self.store.list_sandboxes().await.map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    fn store_now_estimate(&self) -> i64 {
        local_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    fn measured(&self, store_now: i64, local_before: i64, local_after: i64) {
        self.offset_ms.store(store_now - (local_before + local_after) / 2, Ordering::Relaxed);
    }

    /// One look of the scheduler: fires what is due, and says when to look again.
    pub async fn schedule_step(&self) -> Result<Step, String> {
        let (live, moved) = self.membership();
        let mut st = self.sched.lock().await;
        let stale = self.sched_stale.swap(false, Ordering::SeqCst);
        let due_soon = {
            // Reading 1000 definitions takes a while: not when a firing is about to be due.
            let soon = self.store_now_estimate() + RELOAD_SLACK_MS;
            st.loaded.is_some()
                && st.schedules.iter().any(|e| e.mine && e.readable && e.next.is_some_and(|n| n <= soon))
        };
        if (stale || moved || st.loaded.is_none_or(|t| t.elapsed() >= RELOAD_EVERY)) && !due_soon {
            let before = local_ms();
            let now = self.store.now_ms().await.map_err(|e| e.to_string())?;
            self.measured(now, before, local_ms());
            let rows = self.store.list_schedules().await.map_err(|e| e.to_string())?;
            st.sandboxes = self.sandboxes().await?;
            st.queued =
                self.store.schedules_with_queued_firings().await.map_err(|e| e.to_string())?.into_iter().collect();
            // Keep what was computed for definitions that did not change.
            let mut old: HashMap<String, Entry> =
                std::mem::take(&mut st.schedules).into_iter().map(|e| (e.row.id.clone(), e)).collect();
            let entries: Vec<Entry> = rows
                .into_iter()
                .map(|row| {
                    let kept = old.remove(&row.id).filter(|e| e.row.updated_at == row.updated_at);
                    let readable = st.sandboxes.get(&row.sandbox).is_some_and(|s| jobs::readable_here(s, &self.node));
                    match kept {
                        Some(mut e) => {
                            if e.row.last_fire_at != row.last_fire_at {
                                e.next = e.spec.as_ref().and_then(|s| s.next_after(row.last_fire_at));
                            }
                            e.row = row;
                            e.readable = readable;
                            e
                        }
                        None => {
                            let spec = CronSpec::parse(&row.cron, &row.timezone).ok();
                            let next = spec.as_ref().and_then(|s| s.next_after(row.last_fire_at));
                            Entry { row, spec, next, readable, mine: false }
                        }
                    }
                })
                .collect();
            st.index = entries.iter().enumerate().map(|(i, e)| (e.row.id.clone(), i)).collect();
            st.schedules = entries;
            st.live.clear();
            st.loaded = Some(Instant::now());
        } else if moved || stale {
            // Look again as soon as the firing is done.
            self.sched_stale.store(true, Ordering::SeqCst);
        }
        if st.live != live {
            let SchedState { schedules, sandboxes, .. } = &mut *st;
            for e in schedules.iter_mut() {
                e.mine = self.mine(&live, &e.row.id, sandboxes.get(&e.row.sandbox));
            }
            st.live = live;
        }
        let now = self.store_now_estimate();
        let backstop = BACKSTOP.as_millis() as i64;
        let lead = FIRE_AHEAD.as_millis() as i64;
        let mut wait_ms = RELOAD_EVERY.as_millis() as i64;
        // Firing times claimed ahead that have come: every node may claim their executions now.
        let came: Vec<i64> = st.announce.range(..=now).copied().collect();
        if !came.is_empty() {
            for t in &came {
                st.announce.remove(t);
            }
            self.engine.wake_in_turn();
            self.cluster.announce_work();
            if let Err(e) = self.store.announce_work().await {
                tracing::warn!(error = %e, "cannot announce executions whose firing time came");
            }
        }
        if let Some(t) = st.announce.iter().next() {
            wait_ms = wait_ms.min(t - now);
        }
        let mut due: Vec<usize> = Vec::new();
        for (i, e) in st.schedules.iter().enumerate() {
            if !e.readable {
                continue;
            }
            if e.mine && st.queued.contains(&e.row.id) {
                due.push(i);
                wait_ms = wait_ms.min(LISTEN_EVERY.as_millis() as i64);
                continue;
            }
            let Some(next) = e.next else { continue };
            let ahead = e.row.enabled && e.row.overlap == Overlap::Allow;
            let at = match (e.mine, ahead) {
                (true, true) => next - lead,
                (true, false) => next,
                (false, _) => next + backstop,
            };
            if at <= now {
                due.push(i);
            } else {
                wait_ms = wait_ms.min(at - now);
            }
        }
        if due.is_empty() {
            return Ok(Step::After(Duration::from_millis(wait_ms.max(1) as u64)));
        }
        // Read each job file once per look; an unreadable one is recorded on its firings.
        let mut jobs_cache: HashMap<(&str, &str), Result<JobRef, String>> = HashMap::new();
        for &i in &due {
            let row = &st.schedules[i].row;
            if jobs_cache.contains_key(&(row.sandbox.as_str(), row.job.as_str())) {
                continue;
            }
            let loaded = match st.sandboxes.get(&row.sandbox) {
                Some(s) => jobs::load(s.clone(), &row.job).await.map_err(|e| e.to_string()),
                None => Err(format!("sandbox `{}` no longer exists", row.sandbox)),
            };
            jobs_cache.insert((row.sandbox.as_str(), row.job.as_str()), loaded);
        }
        // Each firing starts its job with its owner's rights, checked now, at each look: an
        // owner revoked, deleted or out of scope starts nothing (`not_permitted`).
        // One read per owner and sandbox, however many of its schedules are due.
        let mut by_owner: HashMap<(Option<&str>, &str), Result<(), String>> = HashMap::new();
        let mut allowed: HashMap<&str, Result<(), String>> = HashMap::new();
        for &i in &due {
            let row = &st.schedules[i].row;
            let key = (row.owner.as_ref().map(|o| o.acts_as.as_str()), row.sandbox.as_str());
            let may = match by_owner.get(&key) {
                Some(may) => may.clone(),
                None => {
                    let may = rights::owner_may_run(&self.store, row.owner.as_ref(), &row.sandbox, &[])
                        .await
                        .map_err(|e| e.to_string())?;
                    by_owner.insert(key, may.clone());
                    may
                }
            };
            allowed.insert(row.id.as_str(), may);
        }
        let ids: Vec<String> = due.iter().map(|&i| st.schedules[i].row.id.clone()).collect();
        let mut outcomes = Vec::new();
        for chunk in ids.chunks(FIRE_BATCH) {
            let before = local_ms();
            let (store_now, fired) = self
                .store
                .fire_schedules(chunk, &self.node, |ctx| {
                    let Some(e) = st.index.get(&ctx.schedule.id).map(|&i| &st.schedules[i]) else {
                        return FireDecision::default();
                    };
                    let Some(spec) = &e.spec else { return FireDecision::default() };
                    let job = match (
                        allowed.get(e.row.id.as_str()),
                        jobs_cache.get(&(e.row.sandbox.as_str(), e.row.job.as_str())),
                    ) {
                        (Some(Err(why)), _) => Err((FiringReason::NotPermitted, why.as_str())),
                        (_, Some(Ok(j))) => Ok(j),
                        (_, Some(Err(m))) => Err((FiringReason::JobError, m.as_str())),
                        (_, None) => Err((FiringReason::JobError, "the job was not read")),
                    };
                    decide(ctx, spec, job, lead)
                })
                .await
                .map_err(|e| e.to_string())?;
            self.measured(store_now, before, local_ms());
            outcomes.push((store_now, fired));
        }
        drop(jobs_cache);
        drop(allowed);
        let mut recorded = 0usize;
        let mut soonest: Option<i64> = None;
        let mut latest_now = 0;
        for (store_now, fired) in outcomes {
            latest_now = latest_now.max(store_now);
            for f in fired {
                for (at, o, _) in &f.recorded {
                    if *o == FiringOutcome::Started && *at > store_now {
                        st.announce.insert(*at);
                    }
                }
                recorded += f.recorded.len();
                let started = f.recorded.iter().filter(|(_, o, _)| *o == FiringOutcome::Started).count() as u64;
                self.metrics.firings_started.fetch_add(started, Ordering::Relaxed);
                self.metrics.firings_skipped.fetch_add(f.recorded.len() as u64 - started, Ordering::Relaxed);
                self.metrics.claims_lost.fetch_add(f.already_claimed as u64, Ordering::Relaxed);
                for (at, _, _) in f.recorded.iter().filter(|(_, o, _)| *o == FiringOutcome::Started) {
                    // Claimed ahead of its time (then held until it), a firing is not late.
                    self.metrics.firing_lateness.observe((store_now - at).max(0) as f64 / 1000.0);
                }
                if f.recorded.iter().any(|(_, o, _)| *o == FiringOutcome::Queued) {
                    st.queued.insert(f.schedule_id.clone());
                } else if f.recorded.iter().any(|(_, o, _)| *o == FiringOutcome::Started) {
                    st.queued.remove(&f.schedule_id);
                }
                if let Some(&i) = st.index.get(&f.schedule_id) {
                    let e = &mut st.schedules[i];
                    e.row.last_fire_at = f.last_fire_at;
                    e.next = e.spec.as_ref().and_then(|s| s.next_after(f.last_fire_at));
                    if let Some(n) = e.next {
                        soonest = Some(soonest.map_or(n, |s: i64| s.min(n)));
                    }
                }
            }
        }
        if recorded > 0 || soonest.is_some_and(|n| n <= latest_now) {
            // More may be due at once (a catch-up cut into batches, or another second).
            Ok(Step::Busy)
        } else {
            // Woken a little before the store's clock reached the firing time: wait for it.
            let wait = soonest.map_or(1, |n| (n - latest_now).clamp(1, RELOAD_EVERY.as_millis() as i64));
            Ok(Step::After(Duration::from_millis(wait as u64)))
        }
    }

    /// One look of the listener worker over every job, file and cluster listener.
    pub async fn listen_step(&self) -> Result<Step, String> {
        let (live, moved) = self.membership();
        let mut st = self.listen.lock().await;
        let stale = self.listen_stale.swap(false, Ordering::SeqCst);
        if stale || moved || st.loaded.is_none_or(|t| t.elapsed() >= RELOAD_EVERY) {
            st.listeners = self.store.list_listeners().await.map_err(|e| e.to_string())?;
            st.sandboxes = self.sandboxes().await?;
            st.loaded = Some(Instant::now());
            let ids: HashSet<String> = st.listeners.iter().map(|l| l.id.clone()).collect();
            st.files.retain(|id, _| ids.contains(id));
        }
        let listeners = st.listeners.clone();
        let mut busy = false;
        for l in &listeners {
            let kind = l.kind;
            let job_sandbox = st.sandboxes.get(&l.sandbox).cloned();
            let readable = job_sandbox.as_ref().is_some_and(|s| jobs::readable_here(s, &self.node));
            let result = match kind {
                ListenerKind::Webhook => continue,
                ListenerKind::Job => {
                    if !readable || !self.mine(&live, &l.id, job_sandbox.as_ref()) {
                        continue;
                    }
                    self.job_events(l, job_sandbox).await
                }
                ListenerKind::Cluster => {
                    if !readable || !self.mine(&live, &l.id, job_sandbox.as_ref()) {
                        continue;
                    }
                    if st.deaths_recorded.is_none_or(|t| t.elapsed() >= LISTEN_EVERY) {
                        self.store.record_node_deaths().await.map_err(|e| e.to_string())?;
                        st.deaths_recorded = Some(Instant::now());
                    }
                    self.cluster_events(l, job_sandbox).await
                }
                ListenerKind::File => {
                    let Ok(cfg) = serde_json::from_str::<OnFile>(&l.config) else { continue };
                    let watched = st.sandboxes.get(&cfg.sandbox).cloned();
                    let watch_here = watched.as_ref().is_some_and(|s| jobs::readable_here(s, &self.node));
                    // A local watched folder (or job) decides the node; otherwise the spread does.
                    let decider =
                        watched.as_ref().filter(|s| s.kind == shoal_core::SandboxKind::Local).or(job_sandbox.as_ref());
                    if !readable || !watch_here || !self.mine(&live, &l.id, decider) {
                        st.files.remove(&l.id);
                        continue;
                    }
                    let Some(watched) = watched else { continue };
                    self.file_events(&mut st.files, l, cfg, watched, job_sandbox).await
                }
            };
            match result {
                Ok(n) => busy |= n > 0,
                Err(e) => tracing::warn!(listener = %l.name, error = %e, "listener step failed"),
            }
        }
        Ok(if busy { Step::Busy } else { Step::Idle })
    }

    fn count_events(&self, tried: usize, recorded: usize) {
        self.metrics.events_recorded.fetch_add(recorded as u64, Ordering::Relaxed);
        self.metrics.claims_lost.fetch_add(tried.saturating_sub(recorded) as u64, Ordering::Relaxed);
    }

    /// The job a listener's events start, or why they start none: its owner may not (now:
    /// run jobs of its sandbox, and read what it watches, `reads`), or the job does not load.
    async fn job_of(
        &self,
        l: &ListenerRow,
        sandbox: Option<SandboxRow>,
        reads: &[Option<&str>],
    ) -> Result<Result<JobRef, (EventReason, String)>, String> {
        let may =
            rights::owner_may_run(&self.store, l.owner.as_ref(), &l.sandbox, reads).await.map_err(|e| e.to_string())?;
        if let Err(why) = may {
            return Ok(Err((EventReason::NotPermitted, why)));
        }
        Ok(match sandbox {
            Some(s) => jobs::load(s, &l.job).await.map_err(|e| (EventReason::JobError, e.to_string())),
            None => Err((EventReason::JobError, format!("sandbox `{}` no longer exists", l.sandbox))),
        })
    }

    /// The event to record: with the execution it starts, or why it starts none.
    fn event(
        l: &ListenerRow,
        job: &Result<JobRef, (EventReason, String)>,
        key: String,
        values: BTreeMap<String, String>,
        cursor: Option<CursorMove>,
    ) -> NewEvent {
        let skipped = |reason: EventReason, message: Option<String>| (None, Some(reason), message);
        let (execution, reason, message) = match job {
            _ if !l.enabled => skipped(EventReason::Disabled, None),
            Err((reason, m)) => {
                tracing::warn!(listener = %l.name, error = %m, reason = %reason, "an event could not start its job");
                skipped(*reason, Some(m.clone()))
            }
            Ok(job) => {
                let origin = Origin::owned(Trigger::Listener, &l.id, l.owner.as_ref());
                match event_params(&l.params, &values, &|_| None)
                    .and_then(|p| job.execution(&p, origin).map_err(|e| e.to_string()))
                {
                    Ok(e) => (Some(e), None, None),
                    Err(m) => {
                        tracing::warn!(listener = %l.name, error = %m, "an event could not start its job");
                        skipped(EventReason::JobError, Some(m))
                    }
                }
            }
        };
        NewEvent { key, payload: values, execution, reason, message, cursor, silent: false }
    }

    async fn job_events(&self, l: &ListenerRow, sandbox: Option<SandboxRow>) -> Result<usize, String> {
        let Ok(cfg) = serde_json::from_str::<OnJob>(&l.config) else { return Ok(0) };
        let since = (l.cursor_at - LOOKBACK_MS).max(l.created_at);
        let rows = self
            .store
            .finished_executions_for(&l.id, &cfg.sandbox, &cfg.job, &cfg.states, since, EVENT_BATCH)
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(0);
        }
        let job = self.job_of(l, sandbox, &[Some(&cfg.sandbox)]).await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut cursor = l.cursor_at;
        for r in &rows {
            cursor = cursor.max(r.finished_at);
            let mut values: BTreeMap<String, String> = [
                ("execution", r.id.clone()),
                ("sandbox", r.sandbox.clone().unwrap_or_default()),
                ("job", r.job.clone().unwrap_or_default()),
                ("state", r.state.as_str().to_owned()),
                ("exit_code", r.exit_code.map(|c| c.to_string()).unwrap_or_default()),
                ("node", r.node_id.clone().unwrap_or_default()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            for (k, v) in &r.params {
                values.insert(format!("param.{k}"), v.clone());
            }
            events.push(Self::event(l, &job, r.id.clone(), values, None));
        }
        let recorded =
            self.store.record_events(&l.id, &self.node, &events, Some(cursor)).await.map_err(|e| e.to_string())?;
        self.count_events(events.len(), recorded.len());
        Ok(recorded.len())
    }

    async fn cluster_events(&self, l: &ListenerRow, sandbox: Option<SandboxRow>) -> Result<usize, String> {
        let Ok(cfg) = serde_json::from_str::<OnCluster>(&l.config) else { return Ok(0) };
        let since = (l.cursor_at - LOOKBACK_MS).max(l.created_at);
        let rows = self.store.node_events_for(&l.id, since, EVENT_BATCH).await.map_err(|e| e.to_string())?;
        let wanted: Vec<_> = rows.iter().filter(|r| cfg.events.contains(&r.kind)).collect();
        let cursor = rows.iter().map(|r| r.at).max();
        if wanted.is_empty() {
            if let Some(c) = cursor.filter(|c| *c > l.cursor_at) {
                self.store.record_events(&l.id, &self.node, &[], Some(c)).await.map_err(|e| e.to_string())?;
            }
            return Ok(0);
        }
        let job = self.job_of(l, sandbox, &[None]).await?;
        let events: Vec<NewEvent> = wanted
            .iter()
            .map(|r| {
                let values: BTreeMap<String, String> =
                    [("node", r.node_id.clone()), ("kind", r.kind.clone()), ("generation", r.generation.to_string())]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect();
                Self::event(l, &job, format!("{}:{}:{}", r.kind, r.node_id, r.generation), values, None)
            })
            .collect();
        let recorded = self.store.record_events(&l.id, &self.node, &events, cursor).await.map_err(|e| e.to_string())?;
        self.count_events(events.len(), recorded.len());
        Ok(recorded.len())
    }

    async fn file_events(
        &self,
        files: &mut HashMap<String, FileWatch>,
        l: &ListenerRow,
        cfg: OnFile,
        watched: SandboxRow,
        job_sandbox: Option<SandboxRow>,
    ) -> Result<usize, String> {
        let fresh = files.get(&l.id).is_none_or(|w| w.config != l.config);
        if fresh {
            let pattern = Pattern::parse(&cfg.pattern).map_err(|e| e.to_string())?;
            files.insert(
                l.id.clone(),
                FileWatch {
                    config: l.config.clone(),
                    pattern,
                    settler: Settler::new(Duration::from_millis(cfg.settle_ms)),
                },
            );
        }
        let w = files.get_mut(&l.id).expect("inserted above");
        let root = std::path::PathBuf::from(&watched.root);
        let pattern = w.pattern.clone();
        let present = tokio::task::spawn_blocking(move || filewatch::scan(&root, &pattern, MAX_WATCHED_FILES))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot scan sandbox `{}`: {e}", watched.name))?;
        let settled = w.settler.observe(Instant::now(), &present);
        let cursor: HashMap<String, (u64, i64)> = self
            .store
            .file_cursor(&l.id)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(p, (size, mtime))| (p, (size.max(0) as u64, mtime)))
            .collect();
        let found = filewatch::diff(&cursor, &present, &settled);
        if found.is_empty() {
            return Ok(0);
        }
        let wanted: Vec<FileEventKind> = cfg.events.iter().filter_map(|e| FileEventKind::parse(e)).collect();
        let job = self.job_of(l, job_sandbox, &[Some(&watched.name)]).await?;
        let mut events = Vec::with_capacity(found.len());
        for ev in &found {
            let from = cursor.get(&ev.path).map(|(s, m)| (*s as i64, *m));
            let to = match ev.kind {
                FileEventKind::Vanished => None,
                _ => Some((ev.size as i64, ev.mtime_ns)),
            };
            let cursor_move = Some(CursorMove { path: ev.path.clone(), from, to });
            let name = ev.path.rsplit('/').next().unwrap_or(&ev.path).to_owned();
            let values: BTreeMap<String, String> = [
                ("path", ev.path.clone()),
                ("name", name),
                ("size", ev.size.to_string()),
                ("kind", ev.kind.as_str().to_owned()),
                ("sandbox", watched.name.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            if !ev.wanted(&wanted) {
                events.push(NewEvent {
                    key: ev.key(),
                    payload: values,
                    execution: None,
                    reason: None,
                    message: None,
                    cursor: cursor_move,
                    silent: true,
                });
                continue;
            }
            events.push(Self::event(l, &job, ev.key(), values, cursor_move));
        }
        let mut recorded = 0;
        for chunk in events.chunks(FIRE_BATCH) {
            let n = self.store.record_events(&l.id, &self.node, chunk, None).await.map_err(|e| e.to_string())?.len();
            self.count_events(chunk.iter().filter(|e| !e.silent).count(), n);
            recorded += n;
        }
        Ok(recorded)
    }
}

/// The scheduler and the listener worker of this node.
pub fn spawn_workers(triggers: &Arc<Triggers>, workers: &crate::workers::Workers) {
    use crate::workers::Periodic;
    workers.spawn(
        Periodic::new("scheduler", RELOAD_EVERY, triggers.clone(), |t| async move { t.schedule_step().await })
            .woken_by(|t| &t.changed),
    );
    workers.spawn(
        Periodic::new("listeners", LISTEN_EVERY, triggers.clone(), |t| async move { t.listen_step().await })
            .woken_by(|t| &t.changed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::schedule::Misfire;
    use shoal_core::ExecState;

    fn schedule(overlap: &str, misfire: &str, enabled: bool) -> ScheduleRow {
        ScheduleRow {
            id: "s1".into(),
            name: "s".into(),
            sandbox: "sb".into(),
            job: "j.toml".into(),
            params: BTreeMap::new(),
            cron: "* * * * * *".into(),
            timezone: "UTC".into(),
            enabled,
            misfire: Misfire::parse(misfire, None).unwrap(),
            misfire_threshold_ms: 60_000,
            overlap: Overlap::parse(overlap).unwrap(),
            last_fire_at: 1_000_000,
            last_execution_id: Some("e0".into()),
            created_at: 0,
            updated_at: 0,
            owner: None,
        }
    }

    fn outcomes(d: &FireDecision) -> Vec<(i64, &'static str, Option<&'static str>)> {
        d.firings.iter().map(|f| (f.fire_at, f.outcome.as_str(), f.reason.map(FiringReason::as_str))).collect()
    }

    #[test]
    fn overlap_policies_decide_on_the_previous_runs_state() {
        let spec = CronSpec::parse("* * * * * *", "UTC").unwrap();
        fn ctx(s: &ScheduleRow, previous: Option<ExecState>, queued: Option<i64>) -> FireContext<'_> {
            FireContext { schedule: s, now: 1_002_005, previous, queued }
        }
        // The job cannot be read here: started firings become `job_error`, which shows the
        // decision to start without a sandbox on disk.
        let s = schedule("replace", "once", true);
        let d = decide(&ctx(&s, Some(ExecState::Running), None), &spec, Err((FiringReason::JobError, "no job")), 0);
        assert!(d.cancel_previous);
        assert_eq!(
            outcomes(&d),
            vec![(1_001_000, "skipped", Some("overlap")), (1_002_000, "skipped", Some("job_error"))]
        );
        let s = schedule("skip", "once", true);
        let d = decide(&ctx(&s, Some(ExecState::Running), None), &spec, Err((FiringReason::JobError, "no job")), 0);
        assert_eq!(
            outcomes(&d),
            vec![(1_001_000, "skipped", Some("overlap")), (1_002_000, "skipped", Some("overlap"))]
        );
        let d = decide(&ctx(&s, Some(ExecState::Succeeded), None), &spec, Err((FiringReason::JobError, "no job")), 0);
        assert_eq!(d.firings[0].reason.map(FiringReason::as_str), Some("job_error"));
        let s = schedule("queue", "once", true);
        let d = decide(&ctx(&s, Some(ExecState::Running), None), &spec, Err((FiringReason::JobError, "no job")), 0);
        assert_eq!(outcomes(&d), vec![(1_001_000, "queued", Some("overlap")), (1_002_000, "skipped", Some("overlap"))]);
        let d = decide(
            &ctx(&s, Some(ExecState::Running), Some(999_000)),
            &spec,
            Err((FiringReason::JobError, "no job")),
            0,
        );
        assert!(d.release_queued.is_none(), "the previous run still goes");
        assert_eq!(outcomes(&d)[0], (1_001_000, "skipped", Some("overlap")));
        assert_eq!(d.covered_to, Some(1_002_000));
        let s = schedule("allow", "once", false);
        let d = decide(&ctx(&s, None, None), &spec, Err((FiringReason::JobError, "no job")), 0);
        assert_eq!(
            outcomes(&d),
            vec![(1_001_000, "skipped", Some("disabled")), (1_002_000, "skipped", Some("disabled"))]
        );
        // Nothing is claimed ahead for a schedule whose job cannot be read, or that is disabled.
        let d = decide(&ctx(&s, None, None), &spec, Err((FiringReason::JobError, "no job")), 1_500);
        assert_eq!(
            outcomes(&d),
            vec![(1_001_000, "skipped", Some("disabled")), (1_002_000, "skipped", Some("disabled"))]
        );
    }

    #[test]
    fn rendezvous_spreads_and_moves_only_the_dead_nodes_share() {
        let three: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = ["n1", "n3"].iter().map(|s| s.to_string()).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for i in 0..3000 {
            let key = format!("schedule-{i}");
            let before = owner(&three, &key).unwrap();
            *counts.entry(before).or_default() += 1;
            let after = owner(&two, &key).unwrap();
            if before != "n2" {
                assert_eq!(before, after, "{key} moved although its node lives");
            }
        }
        for n in ["n1", "n2", "n3"] {
            assert!((800..1200).contains(&counts[n]), "uneven spread: {counts:?}");
        }
    }
}
