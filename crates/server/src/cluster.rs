//! This node's place in the cluster: its gossip membership (published figures, peers found
//! through the store's node registry), its store session, and early takeover of dead nodes.
//!
//! Gossip only notices; the store decides. A node is taken over before its lease runs out
//! only when gossip has lost it *and* its store session has ended, checked by the store
//! (`Store::end_dead_node_lease`); see docs/design/failure-detection.md.

use crate::engine::{Engine, PeerLoad};
use crate::workers::{Backoff, Periodic, Step, Worker, Workers};
use parking_lot::Mutex;
use shoal_cluster::{keys, Membership};
use shoal_core::placement::NodeState;
use shoal_store::{NodeSession, SessionEvent};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// The membership and session of a node, shared by its background tasks.
pub struct Cluster {
    pub membership: Membership,
    pub session: Mutex<Option<NodeSession>>,
    sampler: Mutex<crate::load::Sampler>,
    /// Dead gossip incarnations (id, gossip generation) whose registry lease is known gone:
    /// nothing left to do for them, so the store is not asked again. Dropped once gossip
    /// no longer calls them dead.
    settled: Mutex<HashSet<(String, u64)>>,
    /// This node's work counter (see `keys::WORK`), and the peers' as last seen.
    work: std::sync::atomic::AtomicU64,
    peers_work: Mutex<std::collections::HashMap<String, String>>,
    /// Gossip's membership changed: wakes the failure detector.
    changed: Notify,
}

impl Cluster {
    pub fn new(membership: Membership, session: NodeSession) -> Arc<Cluster> {
        Arc::new(Cluster {
            membership,
            session: Mutex::new(Some(session)),
            sampler: Mutex::new(crate::load::Sampler::default()),
            settled: Mutex::new(HashSet::new()),
            work: std::sync::atomic::AtomicU64::new(0),
            peers_work: Mutex::new(std::collections::HashMap::new()),
            changed: Notify::new(),
        })
    }

    /// Samples load and publishes this node's figures; refreshes the peers the engine uses
    /// to decide its turn in the claim order.
    pub fn publish(&self, e: &Engine) {
        let load = self.sampler.lock().sample();
        *e.load.lock() = load;
        let running = e.running();
        let state = if e.life.get().stopping() { NodeState::Draining } else { e.state() };
        let m = &self.membership;
        m.set(keys::STATE, state.as_str());
        m.set(keys::RUNNING, running.to_string());
        m.set(
            keys::FREE_SLOTS,
            if e.refusal().is_some() { 0 } else { e.cfg.slots.saturating_sub(running) }.to_string(),
        );
        m.set(keys::CPU, format!("{:.1}", load.cpu));
        m.set(keys::MEMORY, format!("{:.1}", load.memory));
        self.publish_store(e);
        let peers = m
            .snapshot()
            .into_iter()
            .filter(|p| p.alive && p.id != e.cfg.node_id)
            .filter(|p| p.keys.get(keys::STATE).map(String::as_str) == Some("active"))
            .map(|p| {
                let num = |k: &str| p.keys.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                PeerLoad {
                    id: p.id.clone(),
                    free: num(keys::FREE_SLOTS) as usize,
                    slots: num(keys::SLOTS) as usize,
                    cpu: num(keys::CPU),
                }
            })
            .collect();
        *e.peers.lock() = peers;
    }

    /// Tells peers whether this node's lease renewals succeed (`keys::STORE`). Called by the
    /// lease worker after each renewal, and with the other figures.
    pub fn publish_store(&self, e: &Engine) {
        self.membership.set(keys::STORE, if e.store_failing() { "unreachable" } else { "reachable" });
    }

    /// Whether the loss of the store is shared by the whole cluster, as far as this node can
    /// tell: every other member (a live lease at this node's last renewal, or alive in gossip)
    /// is alive in gossip and says it cannot reach the store either. See
    /// docs/design/store-outage.md.
    pub fn shared_loss(&self, e: &Engine) -> Loss {
        let me = e.cfg.node_id.as_str();
        let peers = self.membership.snapshot();
        let registry = e.members.lock().clone();
        let mut members: std::collections::BTreeSet<&str> = registry.iter().map(String::as_str).collect();
        members.extend(peers.iter().filter(|p| p.alive).map(|p| p.id.as_str()));
        members.remove(me);
        let mut reached = None;
        for id in members {
            let Some(p) = peers.iter().find(|p| p.id == id) else {
                return Loss::Unheard(format!("member {id} is not heard of in gossip"));
            };
            if !p.alive {
                return Loss::Unheard(format!("member {id} is not alive in gossip"));
            }
            match p.keys.get(keys::STORE).map(String::as_str) {
                Some("unreachable") => {}
                Some("reachable") => reached = reached.or(Some(format!("member {id} reaches the store"))),
                Some(other) => return Loss::Unheard(format!("member {id} says the store is {other}")),
                None => return Loss::Unheard(format!("member {id} says nothing of the store")),
            }
        }
        reached.map_or(Loss::Shared, Loss::Reached)
    }

    /// Tells peers through gossip that this node accepted work (for stores that cannot notify).
    pub fn announce_work(&self) {
        let n = self.work.fetch_add(1, Ordering::Relaxed) + 1;
        self.membership.set(keys::WORK, n.to_string());
    }

    /// Whether a peer announced work since the last call.
    fn peers_announced_work(&self, me: &str) -> bool {
        let mut seen = self.peers_work.lock();
        let mut any = false;
        for p in self.membership.snapshot() {
            if p.id == me || !p.alive {
                continue;
            }
            if let Some(w) = p.keys.get(keys::WORK) {
                if seen.get(&p.id) != Some(w) {
                    // A first sighting counts too: a spare wake-up costs one empty claim.
                    any = true;
                    seen.insert(p.id.clone(), w.clone());
                }
            }
        }
        any
    }

    /// Feeds gossip the addresses of nodes the store's registry knows, so the loss of every
    /// well-known address never splits the cluster.
    pub async fn discover(&self, e: &Engine) -> Result<Step, String> {
        let nodes = e.store.list_nodes().await.map_err(|err| err.to_string())?;
        let known: HashSet<String> = self.membership.snapshot().into_iter().filter(|p| p.alive).map(|p| p.id).collect();
        let addrs: Vec<SocketAddr> = nodes
            .iter()
            .filter(|n| n.id != e.cfg.node_id && n.lease_expires_at > n.now && !known.contains(&n.id))
            .filter_map(|n| n.gossip_addr.parse().ok())
            .collect();
        if !addrs.is_empty() {
            self.membership.add_seeds(addrs);
        }
        // What this node holds: local sandboxes and partitions (as `sandbox/partition`).
        let sandboxes = e.store.list_sandboxes().await.map_err(|err| err.to_string())?;
        let held = held_by(&e.cfg.node_id, &sandboxes);
        self.membership.set(keys::SANDBOXES, serde_json::to_string(&held).unwrap_or_default());
        Ok(Step::Idle)
    }

    /// Ends the leases of nodes gossip has lost whose store session has ended, and takes
    /// their attempts over at once.
    pub async fn take_over_dead(&self, e: &Arc<Engine>) -> Result<Step, String> {
        // Right after a store outage every store session is gone: a peer alive but cut off
        // from gossip would look dead. Nothing is ended until this node has renewed for a lease.
        if e.recovered_lately() {
            return Ok(Step::Idle);
        }
        let dead: HashSet<(String, u64)> = self
            .membership
            .snapshot()
            .into_iter()
            .filter(|p| !p.alive && p.id != e.cfg.node_id)
            .map(|p| (p.id, p.generation))
            .collect();
        {
            // Gossip keeps a dead node listed for a long while: read the store only for
            // incarnations not settled yet.
            let mut settled = self.settled.lock();
            settled.retain(|d| dead.contains(d));
            if dead.iter().all(|d| settled.contains(d)) {
                return Ok(Step::Idle);
            }
        }
        let nodes = e.store.list_nodes().await.map_err(|err| err.to_string())?;
        let mut ended_any = false;
        for (id, incarnation) in &dead {
            // No row: it died before registering, so it owns nothing.
            let n = nodes.iter().find(|n| n.id == *id);
            let live = n.is_some_and(|n| n.lease_expires_at > n.now && n.session_key != 0);
            // Gossip may still call an old incarnation dead while a new one runs: act only
            // while gossip calls the id dead, on the generation the registry holds.
            if let Some(n) = n.filter(|_| live && self.membership.is_alive(id) == Some(false)) {
                match e.store.end_dead_node_lease(id, n.generation, n.session_key).await {
                    Ok(true) => {
                        tracing::warn!(node = %id, generation = n.generation, "node is dead (gossip lost it and its store session ended); taking its attempts over");
                        ended_any = true;
                    }
                    // Its session still holds: look again at the next check.
                    Ok(false) => continue,
                    Err(err) => return Err(err.to_string()),
                }
            } else if live {
                continue;
            }
            self.settled.lock().insert((id.clone(), *incarnation));
        }
        if ended_any {
            e.clone().reap().await?;
            return Ok(Step::Busy);
        }
        Ok(Step::Idle)
    }
}

/// What [`Cluster::shared_loss`] finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Every other member is alive in gossip and cannot reach the store.
    Shared,
    /// A member reaches the store (the first one named): the store is back, and that member's
    /// first renewal gave this node's lease back for a whole lease, counted from before it
    /// said so; this node must renew or kill within that.
    Reached(String),
    /// A member cannot be heard, or says something else: it might reach the store and take
    /// this node's attempts over at any moment.
    Unheard(String),
}

/// The local sandboxes and the partitions (`sandbox/partition`) that `node` holds.
pub fn held_by(node: &str, sandboxes: &[shoal_store::SandboxRow]) -> Vec<String> {
    let mut held = Vec::new();
    for s in sandboxes {
        if s.node_id.as_deref() == Some(node) {
            held.push(s.name.clone());
        }
        for p in s.partitions.iter().filter(|p| p.node == node) {
            held.push(format!("{}/{}", s.name, p.name));
        }
    }
    held
}

/// Relays session events: work notifications wake the dispatcher (in this node's turn); a
/// lost session is opened again (with the worker's backoff while that fails) and its new key
/// written to the registry. SQLite sessions send nothing (their channel is closed: the poll
/// and local wakes do the work), and the relay stays idle.
struct SessionRelay {
    cluster: Arc<Cluster>,
    engine: Arc<Engine>,
    /// `None` while the session is lost.
    events: Option<mpsc::UnboundedReceiver<SessionEvent>>,
    /// What the last wait received (`Some(None)`: the channel closed).
    received: Option<Option<SessionEvent>>,
    /// The session's channel closed: nothing will come.
    closed: bool,
}

#[async_trait::async_trait]
impl Worker for SessionRelay {
    fn name(&self) -> &'static str {
        "session-relay"
    }

    fn interval(&self) -> Duration {
        SESSION_RETRY
    }

    fn backoff(&self) -> Backoff {
        Backoff::Doubling { cap: SESSION_RETRY_CAP }
    }

    async fn wait_for_work(&mut self) {
        match &mut self.events {
            Some(events) if self.received.is_none() && !self.closed => self.received = Some(events.recv().await),
            _ => std::future::pending().await,
        }
    }

    async fn step(&mut self) -> Result<Step, String> {
        if self.events.is_none() {
            let rx = reopen(&self.cluster, &self.engine)
                .await
                .map_err(|err| format!("cannot open a new store session yet: {err}"))?;
            self.events = Some(rx);
            return Ok(Step::Idle);
        }
        match self.received.take() {
            None => Ok(Step::Idle),
            Some(Some(SessionEvent::Work)) => {
                self.engine.wake_in_turn();
                Ok(Step::Idle)
            }
            Some(Some(SessionEvent::Lost(why))) => {
                self.events = None;
                Err(format!("store session lost ({why}); opening a new one"))
            }
            Some(None) => {
                self.closed = true;
                Ok(Step::Idle)
            }
        }
    }
}

/// Relays gossip's membership changes: wakes the failure detector, and the dispatcher (in
/// this node's turn) when a peer announced work.
struct MembershipRelay {
    cluster: Arc<Cluster>,
    engine: Arc<Engine>,
    changes: watch::Receiver<u64>,
    /// What the last wait saw: a change (`true`), or gossip stopped (`false`).
    received: Option<bool>,
    /// Gossip has stopped: nothing will come.
    stopped: bool,
}

#[async_trait::async_trait]
impl Worker for MembershipRelay {
    fn name(&self) -> &'static str {
        "membership-relay"
    }

    fn interval(&self) -> Duration {
        PUBLISH_EVERY
    }

    async fn wait_for_work(&mut self) {
        if self.received.is_some() || self.stopped {
            return std::future::pending().await;
        }
        self.received = Some(self.changes.changed().await.is_ok());
    }

    async fn step(&mut self) -> Result<Step, String> {
        match self.received.take() {
            None => Ok(Step::Idle),
            Some(false) => {
                self.stopped = true;
                Ok(Step::Idle)
            }
            Some(true) => {
                self.cluster.changed.notify_one();
                if self.cluster.peers_announced_work(&self.engine.cfg.node_id) {
                    self.engine.wake_in_turn();
                }
                Ok(Step::Idle)
            }
        }
    }
}

async fn reopen(
    cluster: &Cluster,
    e: &Engine,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<SessionEvent>, shoal_store::StoreError> {
    let (session, rx) = e.store.open_session(&e.cfg.node_id).await?;
    let generation = e.generation.load(Ordering::SeqCst);
    e.store.set_session_key(&e.cfg.node_id, generation, session.key).await?;
    if let Some(r) = e.registration.lock().as_mut() {
        r.session_key = session.key;
    }
    *cluster.session.lock() = Some(session);
    Ok(rx)
}

/// How often this node publishes its figures and samples load.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How often the store's registry is read for peers gossip has not found.
const DISCOVER_EVERY: Duration = Duration::from_secs(2);
/// How often dead nodes are checked for besides membership changes (a session can take a
/// moment to end after its process died).
const CHECK_DEAD_EVERY: Duration = Duration::from_millis(200);
/// A lost store session is opened again after twice this, doubling while that fails, up to
/// `SESSION_RETRY_CAP` (a store that is back gets the node's session within that).
const SESSION_RETRY: Duration = Duration::from_millis(100);
const SESSION_RETRY_CAP: Duration = Duration::from_secs(2);

/// The cluster's background workers: publishing, discovery through the store, the failure
/// detector that acts on gossip's verdicts, and the relays of gossip's changes and of the
/// store session's events.
pub fn spawn_workers(cluster: &Arc<Cluster>, e: &Arc<Engine>, session_events: mpsc::UnboundedReceiver<SessionEvent>) {
    let w: &Workers = &e.workers;
    let ctx = || (cluster.clone(), e.clone());
    let changes = cluster.membership.subscribe();
    w.spawn(MembershipRelay { cluster: cluster.clone(), engine: e.clone(), changes, received: None, stopped: false });
    w.spawn(SessionRelay {
        cluster: cluster.clone(),
        engine: e.clone(),
        events: Some(session_events),
        received: None,
        closed: false,
    });
    w.spawn(Periodic::new("membership", PUBLISH_EVERY, ctx(), |(c, e)| async move {
        c.publish(&e);
        Ok(Step::Idle)
    }));
    w.spawn(Periodic::new("discovery", DISCOVER_EVERY, ctx(), |(c, e)| async move { c.discover(&e).await }));
    w.spawn(
        Periodic::new("failure-detector", CHECK_DEAD_EVERY, ctx(), |(c, e)| async move { c.take_over_dead(&e).await })
            .woken_by(|(c, _)| &c.changed),
    );
}
