//! The running membership: chitchat on its own OS thread and runtime, the seeds it gossips with, and the
//! view of the cluster that other threads read without waiting on gossip.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::{MembershipConfig, Seed, SEED_RESOLVE_INTERVAL};
use crate::crypto::{self, Sealer};
use crate::multicast::{self, Discovery};
use crate::rejections::Rejections;
use crate::transport::SealedTransport;
use crate::ClusterError;

/// How long a dead node stays in the view (reported with `alive: false`) before it is forgotten.
pub const DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);

/// Seeds that are not live nodes are gossiped with this often, so that a cluster split in two (or a node
/// that started before its peers) joins up again.
const SEED_GOSSIP_INTERVAL: Duration = Duration::from_secs(1);

/// How long an address given to [`Membership::add_seeds`] or heard through multicast stays a seed unless
/// given again. Multicast repeats itself every second; the server feeds the registry's addresses on each
/// pass. Without it, addresses of nodes long gone would be gossiped with forever.
pub const DYNAMIC_SEED_TTL: Duration = Duration::from_secs(10 * 60);

/// The view is rebuilt at least this often (changes to live nodes rebuild it at once), to catch changes
/// chitchat does not signal, such as a node heard of but not yet alive. Short, because a node riding
/// through a store outage must hear within a bounded time that a peer reaches the store again.
const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// [`Membership::shutdown`] waits this long for the gossip thread to stop.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

/// A node as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Its node id.
    pub id: String,
    /// The incarnation heard of last: only the highest generation of a node id is reported.
    pub generation: u64,
    /// Where it gossips.
    pub gossip_addr: SocketAddr,
    /// Whether the failure detector considers it alive (always true for this node itself).
    pub alive: bool,
    /// The keys it published (see [`crate::keys`]).
    pub keys: BTreeMap<String, String>,
}

/// State shared between the handle and the gossip thread.
struct Shared {
    node_id: String,
    generation: u64,
    gossip_addr: SocketAddr,
    /// This node's keys, the source of truth for its own entry in snapshots.
    own_keys: Mutex<BTreeMap<String, String>>,
    /// Other nodes, by id, as of the last refresh.
    peers: RwLock<BTreeMap<String, Peer>>,
    changes: watch::Sender<u64>,
    rejections: Arc<Rejections>,
}

impl Shared {
    fn bump(&self) {
        self.changes.send_modify(|version| *version += 1);
    }
}

enum Command {
    Set(String, String),
    AddSeeds(Vec<SocketAddr>),
    Shutdown,
}

/// This node's membership of the cluster: gossip (chitchat, sealed with the cluster secret), discovery of
/// peers, and failure detection.
///
/// Gossip runs on its own OS thread with a single-threaded tokio runtime, so a busy server runtime cannot
/// starve it into declaring its peers (or being declared) dead. Every method here is cheap and callable
/// from any thread or runtime: reads come from a view the gossip thread keeps up to date, writes are
/// queued to it.
///
/// Failure detection: with the default 200 ms gossip interval and phi threshold, a node that stops is
/// reported not alive by its peers after 0.6 to 1.0 s on three nodes (see
/// [`crate::DEFAULT_PHI_THRESHOLD`]). A node that restarts with a higher generation replaces the old
/// incarnation as soon as its peers hear of it.
pub struct Membership {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    /// Behind a lock so [`Membership::leave`] works through a shared reference.
    thread: Mutex<Option<GossipThread>>,
}

struct GossipThread {
    handle: JoinHandle<()>,
    /// Disconnected when the thread ends, whichever way.
    done: std::sync::mpsc::Receiver<()>,
}

impl Membership {
    /// Binds the gossip socket (and the multicast one), starts gossip on its own thread, and returns once
    /// gossip is running (a millisecond or so, during which the calling thread blocks). Fails if the
    /// configuration is invalid or a socket cannot be bound.
    pub fn start(config: MembershipConfig) -> Result<Membership, ClusterError> {
        let seeds = config.validate()?;
        let socket = std::net::UdpSocket::bind(config.listen)
            .map_err(|source| ClusterError::Bind { addr: config.listen, source })?;
        let bound = socket.local_addr().map_err(|source| ClusterError::Bind { addr: config.listen, source })?;
        let gossip_addr = match config.advertise {
            Some(mut advertise) => {
                if advertise.port() == 0 {
                    advertise.set_port(bound.port());
                }
                advertise
            }
            None => bound,
        };
        let multicast_socket = config.multicast.as_ref().map(multicast::bind).transpose()?;

        let rejections = Arc::new(Rejections::default());
        let shared = Arc::new(Shared {
            node_id: config.node_id.clone(),
            generation: config.generation,
            gossip_addr,
            own_keys: Mutex::new(config.initial_keys.iter().cloned().collect()),
            peers: RwLock::default(),
            changes: watch::Sender::new(0),
            rejections: rejections.clone(),
        });
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_id.as_str(), config.generation, gossip_addr),
            cluster_id: crypto::cluster_id(&config.secret),
            gossip_interval: config.gossip_interval,
            listen_addr: bound,
            // Seeds are ours to gossip with (see `Driver::gossip_with_seeds`): chitchat's list is fixed
            // at start, and the registry and multicast find peers later.
            seed_nodes: Vec::new(),
            failure_detector_config: failure_detector_config(&config),
            marked_for_deletion_grace_period: DEAD_NODE_GRACE_PERIOD,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // Every shoal node speaks V1 (compressed digests) from the first release on.
            protocol_version: ProtocolVersion::V1,
        };
        let transport = SealedTransport::new(
            socket,
            Arc::new(Sealer::new(&config.secret, crypto::GOSSIP_LABEL)),
            rejections.clone(),
        );
        let (found_tx, found_rx) = mpsc::unbounded_channel();
        let discovery = multicast_socket.zip(config.multicast).map(|(socket, multicast)| {
            let discovery = Discovery {
                group: multicast.group,
                node_id: config.node_id.clone(),
                generation: config.generation,
                gossip_addr,
                sealer: Sealer::new(&config.secret, crypto::MULTICAST_LABEL),
                rejections: rejections.clone(),
                found: found_tx,
            };
            (discovery, socket)
        });
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            shared: shared.clone(),
            commands: commands_rx,
            found: found_rx,
            literal_seeds: seeds
                .iter()
                .filter_map(|seed| match seed {
                    Seed::Addr(addr) => Some(*addr),
                    Seed::Host(_) => None,
                })
                .collect(),
            seed_hosts: seeds
                .into_iter()
                .filter_map(|seed| match seed {
                    Seed::Host(host) => Some(host),
                    Seed::Addr(_) => None,
                })
                .collect(),
            resolved_seeds: HashSet::new(),
            dynamic_seeds: HashMap::new(),
            bound,
        };

        let (ready_tx, ready_rx) = sync_channel(1);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let initial_keys = config.initial_keys;
        let handle = std::thread::Builder::new()
            .name("shoal-gossip".into())
            .spawn(move || {
                let _done = done_tx;
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ =
                            ready_tx.send(Err(ClusterError::Start(format!("cannot build the gossip runtime: {err}"))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let Some(handle) = start_chitchat(chitchat_config, initial_keys, &transport, ready_tx).await else {
                        return;
                    };
                    if let Some((discovery, socket)) = discovery {
                        tokio::spawn(discovery.run(socket));
                    }
                    driver.run(handle).await;
                });
                runtime.shutdown_timeout(Duration::from_millis(500));
            })
            .map_err(|err| ClusterError::Start(format!("cannot spawn the gossip thread: {err}")))?;

        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let _ = handle.join();
                return Err(err);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(ClusterError::Start("the gossip thread stopped while starting".into()));
            }
        }
        tracing::info!(node_id = %shared.node_id, generation = shared.generation, %gossip_addr, "gossip started");
        Ok(Membership {
            shared,
            commands: commands_tx,
            thread: Mutex::new(Some(GossipThread { handle, done: done_rx })),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The address peers gossip with this node at (the advertised one, with the real port when `listen`
    /// asked for port 0).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.shared.gossip_addr
    }

    /// Publishes (or replaces) one of this node's keys. Peers see it within a gossip round or two.
    pub fn set(&self, key: &str, value: impl Into<String>) {
        let value = value.into();
        let mut own_keys = self.shared.own_keys.lock();
        if own_keys.get(key) == Some(&value) {
            return;
        }
        own_keys.insert(key.to_owned(), value.clone());
        // Queued under the lock, so chitchat receives concurrent writes of a key in the order of `own_keys`.
        let _ = self.commands.send(Command::Set(key.to_owned(), value));
        drop(own_keys);
        self.shared.bump();
    }

    /// Gossips with these addresses (found elsewhere, e.g. the node registry in the store) until they are
    /// live nodes; each is kept as a seed for [`DYNAMIC_SEED_TTL`] after the last time it was given.
    pub fn add_seeds(&self, addrs: Vec<SocketAddr>) {
        let _ = self.commands.send(Command::AddSeeds(addrs));
    }

    /// Every node known, this one included (alive), sorted by id: for each node id, its highest
    /// generation. Dead nodes are listed (`alive: false`) for [`DEAD_NODE_GRACE_PERIOD`].
    pub fn snapshot(&self) -> Vec<Peer> {
        let me = Peer {
            id: self.shared.node_id.clone(),
            generation: self.shared.generation,
            gossip_addr: self.shared.gossip_addr,
            alive: true,
            keys: self.shared.own_keys.lock().clone(),
        };
        let peers = self.shared.peers.read();
        let mut nodes: Vec<Peer> = peers.values().cloned().collect();
        let at = nodes.partition_point(|peer| peer.id < me.id);
        nodes.insert(at, me);
        nodes
    }

    /// A counter that increases whenever a node joins, dies, comes back or changes a key (this node's
    /// included). Usable from any runtime.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Whether the node is alive, or `None` if it was never heard of (or forgotten after
    /// [`DEAD_NODE_GRACE_PERIOD`]).
    pub fn is_alive(&self, node_id: &str) -> Option<bool> {
        if node_id == self.shared.node_id {
            return Some(true);
        }
        let peers = self.shared.peers.read();
        peers.get(node_id).map(|peer| peer.alive)
    }

    /// Packets dropped because they failed authentication (sealed with another secret, not shoal, garbage)
    /// or could not be decoded, gossip and multicast together.
    pub fn rejected_packets(&self) -> u64 {
        self.shared.rejections.count()
    }

    /// Stops gossip and waits for the thread to end (blocking the caller: a few milliseconds, at most about
    /// two seconds). Peers then see this node die like any other, and this node's view marks every peer
    /// not alive. Dropping the membership does the same.
    pub fn shutdown(self) {
        self.stop();
    }

    /// Like [`Membership::shutdown`], through a shared reference (a node that leaves while other
    /// tasks still hold its membership). Later calls do nothing.
    pub fn leave(&self) {
        self.stop();
    }

    fn stop(&self) {
        let thread = self.thread.lock().take();
        let Some(thread) = thread else { return };
        let _ = self.commands.send(Command::Shutdown);
        match thread.done.recv_timeout(SHUTDOWN_DEADLINE) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if thread.handle.join().is_err() {
                    tracing::error!(node_id = %self.shared.node_id, "the gossip thread panicked");
                }
                tracing::info!(node_id = %self.shared.node_id, "gossip stopped");
            }
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(node_id = %self.shared.node_id, "the gossip thread did not stop in time; leaving it");
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node_id", &self.shared.node_id)
            .field("generation", &self.shared.generation)
            .field("gossip_addr", &self.shared.gossip_addr)
            .finish_non_exhaustive()
    }
}

/// The failure detector's settings: see [`crate::config::DEFAULT_PHI_THRESHOLD`] for the threshold.
fn failure_detector_config(config: &MembershipConfig) -> FailureDetectorConfig {
    FailureDetectorConfig {
        phi_threshold: config.phi_threshold,
        // About a minute of heartbeat intervals at a few per gossip round: long enough to ride out a
        // burst, short enough to follow a change of cluster size.
        sampling_window_size: 1000,
        // A gap longer than this is a death (or a pause) and must not count as a normal interval.
        max_interval: config.gossip_interval * 10,
        // Prior mean interval (weighted as five samples) until real intervals are in. A peer's heartbeat
        // is seen to advance about twice per round (its SYN to us, our SYN's reply), so half a round is
        // what will be measured, and nodes that just joined are judged like the others.
        initial_interval: config.gossip_interval / 2,
        dead_node_grace_period: DEAD_NODE_GRACE_PERIOD,
    }
}

/// Spawns chitchat and tells `start` whether it worked.
async fn start_chitchat(
    config: ChitchatConfig,
    initial_keys: Vec<(String, String)>,
    transport: &SealedTransport,
    ready: SyncSender<Result<(), ClusterError>>,
) -> Option<ChitchatHandle> {
    match spawn_chitchat(config, initial_keys, transport).await {
        Ok(handle) => {
            let _ = ready.send(Ok(()));
            Some(handle)
        }
        Err(err) => {
            let _ = ready.send(Err(ClusterError::Start(format!("chitchat did not start: {err:#}"))));
            None
        }
    }
}

/// The task on the gossip thread that applies commands, gossips with seeds and keeps the view current.
struct Driver {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Gossip addresses heard through multicast.
    found: mpsc::UnboundedReceiver<SocketAddr>,
    literal_seeds: HashSet<SocketAddr>,
    seed_hosts: Vec<String>,
    resolved_seeds: HashSet<SocketAddr>,
    /// Seeds from `add_seeds` and multicast, with when they were last given.
    dynamic_seeds: HashMap<SocketAddr, Instant>,
    /// The address the gossip socket is bound to.
    bound: SocketAddr,
}

impl Driver {
    async fn run(mut self, handle: ChitchatHandle) {
        let chitchat = handle.chitchat();
        let mut live_nodes = chitchat.lock().await.live_nodes_watcher();
        let mut resolved = resolve_seed_hosts(std::mem::take(&mut self.seed_hosts));
        let termination = handle.termination_watcher();
        tokio::pin!(termination);
        let mut seed_tick = tokio::time::interval(SEED_GOSSIP_INTERVAL);
        let mut refresh_tick = tokio::time::interval(REFRESH_INTERVAL);
        for tick in [&mut seed_tick, &mut refresh_tick] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Set(key, value)) => chitchat.lock().await.self_node_state().set(key, value),
                    Some(Command::AddSeeds(addrs)) => self.add_dynamic_seeds(&handle, addrs),
                    Some(Command::Shutdown) | None => break,
                },
                Some(addr) = self.found.recv() => self.add_dynamic_seeds(&handle, vec![addr]),
                Ok(()) = resolved.changed() => {
                    let addrs = resolved.borrow_and_update().clone();
                    for addr in addrs.difference(&self.resolved_seeds) {
                        if self.worth_gossiping(addr) {
                            let _ = handle.gossip(*addr);
                        }
                    }
                    self.resolved_seeds = addrs;
                }
                Ok(()) = live_nodes.changed() => self.refresh(&handle).await,
                _ = refresh_tick.tick() => self.refresh(&handle).await,
                _ = seed_tick.tick() => self.gossip_with_seeds(&handle).await,
                result = &mut termination => {
                    tracing::error!(node_id = %self.shared.node_id, result = ?result, "chitchat stopped on its own");
                    break;
                }
            }
        }
        if let Err(err) = handle.shutdown().await {
            tracing::warn!(error = %err, "chitchat did not shut down cleanly");
        }
        // Without gossip nothing is known to be alive any more: say so rather than freeze the last view.
        let mut peers = self.shared.peers.write();
        peers.values_mut().for_each(|peer| peer.alive = false);
        drop(peers);
        self.shared.bump();
    }

    /// Rebuilds the view of the other nodes and signals subscribers if it changed.
    async fn refresh(&self, handle: &ChitchatHandle) {
        let chitchat = handle.chitchat();
        let chitchat = chitchat.lock().await;
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        for (id, state) in chitchat.node_states() {
            if *id.node_id == *self.shared.node_id {
                continue;
            }
            if peers.get(&*id.node_id).is_some_and(|known| known.generation >= id.generation_id) {
                continue;
            }
            let peer = Peer {
                id: id.node_id.to_string(),
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr,
                alive: live.contains(id),
                keys: state.key_values().map(|(key, value)| (key.to_owned(), value.to_owned())).collect(),
            };
            peers.insert(peer.id.clone(), peer);
        }
        drop(live);
        drop(chitchat);

        let mut current = self.shared.peers.write();
        if *current == peers {
            return;
        }
        log_liveness_changes(&current, &peers);
        *current = peers;
        drop(current);
        self.shared.bump();
    }

    /// Sends a SYN to every seed that is not a live node, so that it learns about us and we about it.
    async fn gossip_with_seeds(&mut self, handle: &ChitchatHandle) {
        let now = Instant::now();
        self.dynamic_seeds.retain(|_, given| now.duration_since(*given) < DYNAMIC_SEED_TTL);
        let live: HashSet<SocketAddr> = {
            let chitchat = handle.chitchat();
            let chitchat = chitchat.lock().await;
            chitchat.live_nodes().map(|id| id.gossip_advertise_addr).collect()
        };
        let seeds: HashSet<&SocketAddr> =
            self.literal_seeds.iter().chain(&self.resolved_seeds).chain(self.dynamic_seeds.keys()).collect();
        for addr in seeds {
            if !live.contains(addr) && self.worth_gossiping(addr) {
                let _ = handle.gossip(*addr);
            }
        }
    }

    fn add_dynamic_seeds(&mut self, handle: &ChitchatHandle, addrs: Vec<SocketAddr>) {
        let now = Instant::now();
        for addr in addrs {
            if !self.worth_gossiping(&addr) {
                continue;
            }
            if self.dynamic_seeds.insert(addr, now).is_none() {
                // New: gossip at once rather than at the next seed round.
                let _ = handle.gossip(addr);
            }
        }
    }

    /// Not ourselves, and reachable from our socket's address family.
    fn worth_gossiping(&self, addr: &SocketAddr) -> bool {
        *addr != self.shared.gossip_addr && *addr != self.bound && addr.is_ipv4() == self.bound.is_ipv4()
    }
}

/// Logs nodes that appeared, died or came back.
fn log_liveness_changes(before: &BTreeMap<String, Peer>, after: &BTreeMap<String, Peer>) {
    for peer in after.values() {
        let was = before.get(&peer.id).filter(|old| old.generation == peer.generation).map(|old| old.alive);
        match (was, peer.alive) {
            (Some(true), false) => {
                tracing::warn!(node = %peer.id, generation = peer.generation, gossip_addr = %peer.gossip_addr, "node is no longer alive");
            }
            (None | Some(false), true) => {
                tracing::info!(node = %peer.id, generation = peer.generation, gossip_addr = %peer.gossip_addr, "node is alive");
            }
            _ => {}
        }
    }
}

/// Resolves the seed host names now and every [`SEED_RESOLVE_INTERVAL`], publishing the addresses found.
fn resolve_seed_hosts(hosts: Vec<String>) -> watch::Receiver<HashSet<SocketAddr>> {
    let (tx, rx) = watch::channel(HashSet::new());
    if hosts.is_empty() {
        return rx;
    }
    tokio::spawn(async move {
        let mut failing = vec![false; hosts.len()];
        let mut tick = tokio::time::interval(SEED_RESOLVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut addrs = HashSet::new();
            for (host, failing) in hosts.iter().zip(&mut failing) {
                match tokio::net::lookup_host(host.as_str()).await {
                    Ok(found) => {
                        addrs.extend(found);
                        *failing = false;
                    }
                    // Warn when a name stops resolving, not every round while it stays so.
                    Err(err) if !std::mem::replace(failing, true) => {
                        tracing::warn!(seed = %host, error = %err, "cannot resolve gossip seed");
                    }
                    Err(err) => tracing::debug!(seed = %host, error = %err, "cannot resolve gossip seed"),
                }
            }
            tx.send_if_modified(|current| {
                let changed = *current != addrs;
                *current = std::mem::take(&mut addrs);
                changed
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}
