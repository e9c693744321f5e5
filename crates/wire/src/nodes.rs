//! Nodes: the cluster's members as the store and gossip see them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A node's state. `active`, `draining`, `suspended` and `stopping` hold while its lease is
/// live; `stopped` after a clean stop; `lost` when its lease ran out or the cluster found it
/// dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Joining,
    Active,
    Draining,
    Suspended,
    Stopping,
    Stopped,
    Lost,
}

names!(NodeState {
    Joining => "joining",
    Active => "active",
    Draining => "draining",
    Suspended => "suspended",
    Stopping => "stopping",
    Stopped => "stopped",
    Lost => "lost",
});

/// What the answering node's gossip says of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GossipView {
    Alive,
    Dead,
    Unknown,
}

/// Whether a node reaches the store, as it says through gossip (its lease renewals succeed
/// or fail), seen from the answering node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreView {
    Reachable,
    Unreachable,
    /// Not heard of in gossip, or it said nothing of the store.
    Unknown,
}

names!(StoreView { Reachable => "reachable", Unreachable => "unreachable", Unknown => "unknown" });

/// Machine load a node last published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Load {
    /// `running / slots` (0 with no slots).
    pub slots: f64,
    /// Machine CPU use.
    pub cpu_percent: f64,
    /// Machine memory use.
    pub memory_percent: f64,
}

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub url: String,
    pub state: NodeState,
    /// Attempts running on the node.
    pub running: i64,
    /// Concurrent attempts the node allows.
    pub slots: i64,
    /// Slots free while the lease is live.
    pub free_slots: i64,
    pub load: Load,
    pub tags: Vec<String>,
    pub version: String,
    /// Bumped each time the node registers.
    pub generation: i64,
    /// Where the node gossips (UDP).
    pub gossip_addr: String,
    pub gossip: GossipView,
    /// Whether it reaches the store, as it says through gossip: a node whose renewals fail
    /// says `unreachable` at once (and rides through an outage only while every member does).
    pub store: StoreView,
    /// On the store's clock; negative once expired.
    pub lease_expires_in_ms: i64,
    /// Time since the last lease renewal, on the store's clock.
    pub lease_age_ms: i64,
    #[schema(format = DateTime)]
    pub started_at: String,
    /// Present (and true) only on the node answering the request.
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub is_self: Option<bool>,
    /// Only on the answering node: whether it takes new work now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepting_work: Option<bool>,
    /// Only on the answering node, when it takes no work: why (state, slots, CPU or memory
    /// limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_accepting_because: Option<String>,
    /// Only on the answering node: its background workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<WorkerStatus>>,
    /// Only on the answering node: gossip packets it dropped because they were not sealed
    /// with this cluster's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_gossip_packets: Option<u64>,
    /// Only on the answering node, when it has read replicas (`store.replicas`): each as its
    /// last health check found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<Replica>>,
    /// Only in answers to drain, suspend and resume: the state before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<NodeState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

/// What a background worker is doing, as its last step left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Not through its first step yet.
    Starting,
    /// Its last step did work; it runs again at once.
    Busy,
    /// Its last step found nothing to do; it waits for its interval or a wake-up.
    Idle,
    /// Its last step failed; it waits out its backoff before the next.
    Error,
    /// Ended by the node's shutdown.
    Stopped,
}

/// A read replica as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    /// `host:port`, as `X-Shoal-Read-From: replica:HOST:PORT` names it.
    pub address: String,
    pub state: ReplicaState,
    /// Replay lag behind the primary at the last check, in milliseconds (0 when it had
    /// replayed everything the primary had written); absent while it is down.
    pub lag_ms: Option<u64>,
    /// The same lag in bytes of WAL.
    pub lag_bytes: Option<u64>,
    /// Reads it served for this node since the node started.
    pub reads: u64,
    /// Why it is down, when it is.
    pub error: Option<String>,
}

/// Whether a read replica takes reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Not checked yet: takes no reads.
    Unknown,
    /// Answering and within both lag limits (`store.replica_max_lag`,
    /// `store.replica_max_lag_bytes`): takes reads.
    Ok,
    /// Answering, but further behind than a limit allows: takes no reads.
    Lagging,
    /// Not answering, or no longer a replica (promoted): takes no reads.
    Down,
}

names!(ReplicaState { Unknown => "unknown", Ok => "ok", Lagging => "lagging", Down => "down" });

/// How a background worker of the answering node is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerStatus {
    pub name: String,
    pub state: WorkerState,
    /// The message of the last failed step, kept after later successes.
    pub last_error: Option<String>,
    /// When the last step failed (RFC 3339, UTC, on this node's clock).
    #[schema(format = DateTime)]
    pub last_error_at: Option<String>,
    /// Failed steps since the last one that succeeded.
    pub consecutive_errors: u64,
    /// Failed steps since the node started.
    pub errors: u64,
}
