//! shoal's HTTP API: the routes under `/api/v1`, health, metrics and the OpenAPI document.
//!
//! Handlers turn requests into store calls and engine nudges; they never run jobs or hold
//! cluster state themselves. The engine (in `shoal-server`) is reached through [`Engine`],
//! so this crate does not depend on how nodes run work.

pub mod audit;
pub mod auth;
mod body;
pub mod browser;
mod convert;
mod error;
mod executions;
mod files;
mod forward;
mod health;
pub mod jobs;
pub mod listeners;
mod logwatch;
mod metrics;
mod nodes;
mod openapi;
mod query;
pub mod replicas;
mod sandboxes;
pub mod schedules;
mod secrets;
mod sessions;
mod tokens;
mod triggers;
mod users;

pub use error::{ApiError, ApiResult, ErrorCode};
pub use forward::{forward_to_node, Forwarded, Forwarder, REPLAY_WINDOW, SERVED_BY};
pub use logwatch::{Follow, LogHub};
pub use metrics::Metrics;

use axum::middleware;
use axum::Router;
use shoal_store::Store;
use std::sync::Arc;

/// What the API needs from the node it runs in.
pub trait Engine: Send + Sync + 'static {
    /// New work may be claimable: look now rather than at the next poll.
    fn wake(&self);
    /// Stop a running attempt on this node at once, if it runs here.
    fn cancel_local(&self, execution: &str, by: &str);
    /// Whether the node should receive traffic from a load balancer, and if not, why.
    fn readiness(&self) -> Result<(), String>;
    /// Attempts running on this node.
    fn running(&self) -> usize;
    /// The background workers and how they are doing.
    fn workers(&self) -> Vec<WorkerStatus>;
    /// Active, draining or suspended.
    fn state(&self) -> shoal_core::placement::NodeState;
    /// Drains, suspends or resumes this node; returns the state before.
    fn set_state(&self, state: shoal_core::placement::NodeState) -> shoal_core::placement::NodeState;
    /// Why this node takes no new work now, if it takes none.
    fn refusal(&self) -> Option<String>;
    /// What this node's gossip says of each node it has heard of: (id, alive).
    fn gossip(&self) -> Vec<(String, bool)>;
    /// Whether each node heard of in gossip (this one included) says it reaches the store:
    /// (id, `reachable` or `unreachable`).
    fn store_reports(&self) -> Vec<(String, String)>;
    /// Gossip packets dropped because they failed authentication.
    fn rejected_gossip_packets(&self) -> u64;
    /// The URL of another node that gossip currently reports alive, if it does.
    fn live_peer_url(&self, id: &str) -> Option<String>;
    /// A schedule or listener was defined, changed or deleted: the trigger workers look
    /// again now, here and (through gossip) on the other nodes.
    fn triggers_changed(&self);
    /// Checks a file listener's pattern; the error says whether the pattern would leave the
    /// sandbox (`true`) or is otherwise invalid, and what to fix.
    fn check_file_pattern(&self, pattern: &str) -> Result<(), (bool, String)>;
}

/// How a background worker of this node is doing (`GET /api/v1/nodes/{id}`).
pub use shoal_wire::{WorkerState, WorkerStatus};

/// This node, as the API describes it.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub id: String,
    pub url: String,
    pub version: &'static str,
    pub tags: Vec<String>,
    pub slots: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest JSON request body.
    pub max_request_bytes: usize,
    /// Largest file upload.
    pub max_upload_bytes: u64,
}

pub struct AppState {
    pub store: Arc<Store>,
    /// Submissions go through group commit.
    pub submitter: shoal_store::Submitter,
    pub node: NodeIdentity,
    pub engine: Arc<dyn Engine>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Wakes log followers when their execution's output is written.
    pub logs: Arc<LogHub>,
    /// Sends requests that only another node can serve on to it, and verifies the ones other
    /// nodes send here.
    pub forwarder: Arc<Forwarder>,
    /// Where sandbox folders may be (`sandboxes.allowed_roots`).
    pub roots: Arc<shoal_service::roots::RootPolicy>,
    /// The host names this node answers to (`http.hosts`, the advertised host).
    pub hosts: browser::HostPolicy,
    /// Who is asking: the token cache.
    pub auth: Arc<auth::Authenticator>,
    /// The keys that seal and open job secrets (`cluster.secrets_key_file`).
    pub secrets: Arc<shoal_service::secrets::Keyring>,
    /// The audit rows waiting for the store.
    pub audit: Arc<audit::AuditLog>,
    /// Which requests' reads are forced to the primary or to a replica.
    pub reads: replicas::ReadRouting,
}

pub type State = axum::extract::State<Arc<AppState>>;

/// The whole HTTP surface of a node: the routes of [`openapi::router`] (each described in the
/// OpenAPI document by its handler) behind the API's fallbacks and layers.
pub fn router(state: Arc<AppState>) -> Router {
    let (api, api_doc) = openapi::router().split_for_parts();
    let (root, root_doc) = openapi::root_router().split_for_parts();
    let docs = [api_doc, root_doc].map(|d| serde_json::to_value(d).unwrap_or_default());
    let routes = Arc::new(auth::Routes::new(&docs));
    let api = api.fallback(health::api_not_found).method_not_allowed_fallback(health::method_not_allowed);
    // Innermost first: a forwarded request's signature is verified, then who asks is
    // authenticated (a forwarded request's principal is the signed one). Changes are recorded
    // around all of that, with their answers in the one error shape.
    root.merge(api)
        .fallback(health::api_not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), replicas::route))
        .layer(middleware::from_fn_with_state((state.clone(), routes.clone()), auth::authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), forward::verify))
        .layer(middleware::map_response(error::shape_rejections))
        .layer(middleware::from_fn_with_state((state.clone(), routes), audit::record))
        .layer(middleware::from_fn_with_state(state.clone(), browser::guard))
        .layer(middleware::map_response_with_state(state.clone(), forward::served_by))
        .layer(middleware::map_response_with_state(state.clone(), replicas::read_from_primary))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::time_requests))
        .with_state(state)
}

/// `GET /metrics`, described for the OpenAPI document.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health", responses((status = 200, description = "Prometheus metrics of this node, in the text exposition format. Also served at `/metrics`, outside `/api/v1`.", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics_route(state: State) -> axum::response::Response {
    metrics::render(state).await
}

/// Formats a store timestamp (milliseconds since the epoch) as RFC 3339.
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
