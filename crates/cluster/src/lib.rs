//! Gossip membership for shoal nodes: who is in the cluster, who is alive, and what each node publishes
//! about itself (URL, state, load, slots, tags, sandboxes), over chitchat's scuttlebutt gossip with a phi
//! accrual failure detector.
//!
//! - Gossip runs on its own OS thread and tokio runtime ([`Membership::start`]), so a busy server cannot
//!   starve it into false deaths.
//! - Every gossip packet is sealed (ChaCha20-Poly1305) with a key derived from the cluster secret: a node
//!   with another secret cannot join, read or disturb the cluster, and the others log why its packets are
//!   dropped ([`Membership::rejected_packets`]).
//! - Peers are found through any mix of well-known seeds (host names re-resolved), UDP multicast on a LAN,
//!   and addresses handed in at run time ([`Membership::add_seeds`], fed from the node registry in the
//!   store).
//!
//! Gossip is advisory: it notices deaths fast and spreads load figures. Ownership of work is decided in the
//! store, never here.

mod config;
mod crypto;
mod membership;
mod multicast;
mod rejections;
mod transport;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

pub use config::{MembershipConfig, Multicast, DEFAULT_GOSSIP_INTERVAL, DEFAULT_PHI_THRESHOLD, SEED_RESOLVE_INTERVAL};
pub use membership::{Membership, Peer, DEAD_NODE_GRACE_PERIOD, DYNAMIC_SEED_TTL};
pub use multicast::ANNOUNCE_INTERVAL;

/// The gossip keys a shoal node publishes about itself. Values are text; the format of each is part of the
/// contract between nodes, so it is given here.
pub mod keys {
    /// The node's advertised HTTP URL, e.g. `http://10.0.0.5:7700`.
    pub const URL: &str = "url";
    /// Lifecycle state: `joining`, `active`, `draining` or `suspended`.
    pub const STATE: &str = "state";
    /// Attempts running on the node, a decimal integer.
    pub const RUNNING: &str = "running";
    /// Slots free for new attempts, a decimal integer.
    pub const FREE_SLOTS: &str = "free_slots";
    /// Total slots (`executor.slots`), a decimal integer.
    pub const SLOTS: &str = "slots";
    /// CPU load in percent of the machine, a decimal number such as `37.5`.
    pub const CPU: &str = "cpu";
    /// Memory in use in percent of the machine, a decimal number.
    pub const MEMORY: &str = "memory";
    /// The node's tags, a JSON array of strings.
    pub const TAGS: &str = "tags";
    /// Names of the sandboxes held locally (local sandboxes and partitions), a JSON array of strings.
    pub const SANDBOXES: &str = "sandboxes";
    /// The shoal version the node runs.
    pub const VERSION: &str = "version";
    /// A counter the node bumps when it accepts new work, so peers look for work without
    /// waiting for their poll (stores without notifications: SQLite).
    pub const WORK: &str = "work";
    /// Whether the node's lease renewals succeed: `reachable` or `unreachable` (from its first
    /// failed renewal on). A node keeps its attempts through a store outage only while every
    /// member says `unreachable` (docs/design/store-outage.md in the shoal repository).
    pub const STORE: &str = "store";
    /// A counter the node bumps when a schedule or listener is defined, changed or deleted
    /// through it, so peers reload definitions without waiting for their next look.
    pub const TRIGGERS: &str = "triggers";
}

/// What can go wrong starting a [`Membership`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration cannot work; the message names the setting.
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    /// The gossip socket could not be bound.
    #[error("cannot bind the gossip socket to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The multicast socket could not be set up (bound, joined to the group, configured).
    #[error("cannot join multicast group {group} on interface {interface}: {source}")]
    Multicast {
        /// The group asked for.
        group: SocketAddrV4,
        /// The interface asked for.
        interface: Ipv4Addr,
        /// Why.
        source: std::io::Error,
    },
    /// The gossip thread, its runtime or chitchat did not start.
    #[error("cannot start gossip: {0}")]
    Start(String),
}

/// Result with [`ClusterError`].
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
