//! `GET /nodes`: every node the store knows, with its lease measured on the store's clock, its
//! load, and what this node's gossip says of it; `POST /nodes/{id}/drain|suspend|resume`,
//! served by that node (forwarded there from any other).

use crate::error::{ApiError, ApiResult};
use crate::State;
use axum::extract::{Path, Request};
use axum::response::{IntoResponse, Response};
use axum::Json;
use shoal_core::placement::{NodeState, RegistryState};
use shoal_store::NodeRow;
use shoal_wire as wire;
use std::collections::HashMap;

/// What this node's gossip says of every node, read once per answer.
struct Seen {
    alive: HashMap<String, bool>,
    store: HashMap<String, String>,
}

fn seen(state: &crate::AppState) -> Seen {
    Seen {
        alive: state.engine.gossip().into_iter().collect(),
        store: state.engine.store_reports().into_iter().collect(),
    }
}

fn node(state: &crate::AppState, n: &NodeRow, seen: &Seen) -> wire::Node {
    let live = n.lease_expires_at > n.now && !matches!(n.state, RegistryState::Stopped | RegistryState::Lost);
    // A node whose lease ran out without a clean stop is lost, whatever it last published.
    let shown = if live || n.state == RegistryState::Stopped { n.state } else { RegistryState::Lost };
    let mut v = wire::Node {
        id: n.id.clone(),
        url: n.url.clone(),
        state: shown,
        running: n.running,
        slots: n.slots,
        free_slots: if live { (n.slots - n.running).max(0) } else { 0 },
        load: wire::Load {
            slots: if n.slots > 0 { n.running as f64 / n.slots as f64 } else { 0.0 },
            cpu_percent: n.cpu_permille as f64 / 10.0,
            memory_percent: n.memory_permille as f64 / 10.0,
        },
        tags: n.tags.clone(),
        version: n.version.clone(),
        generation: n.generation,
        gossip_addr: n.gossip_addr.clone(),
        gossip: match seen.alive.get(&n.id) {
            Some(true) => wire::GossipView::Alive,
            Some(false) => wire::GossipView::Dead,
            None => wire::GossipView::Unknown,
        },
        store: match seen.store.get(&n.id).map(String::as_str) {
            Some("reachable") => wire::StoreView::Reachable,
            Some("unreachable") => wire::StoreView::Unreachable,
            _ => wire::StoreView::Unknown,
        },
        lease_expires_in_ms: n.lease_expires_at - n.now,
        lease_age_ms: n.now - n.renewed_at,
        started_at: crate::rfc3339(n.started_at),
        is_self: None,
        accepting_work: None,
        not_accepting_because: None,
        workers: None,
        rejected_gossip_packets: None,
        replicas: None,
        previous_state: None,
    };
    if n.id == state.node.id {
        let refusal = state.engine.refusal();
        v.is_self = Some(true);
        v.state = state.engine.state().into();
        v.running = state.engine.running() as i64;
        v.accepting_work = Some(refusal.is_none());
        v.not_accepting_because = refusal;
        v.workers = Some(state.engine.workers());
        v.rejected_gossip_packets = Some(state.engine.rejected_gossip_packets());
        if state.store.has_replicas() {
            v.replicas = Some(state.store.replica_views());
        }
    }
    v
}

#[utoipa::path(get, path = "/nodes", operation_id = "listNodes", tag = "nodes", responses((status = 200, description = "Every node the store knows, with leases measured on the store's clock.", body = wire::NodeList)))]
pub async fn list(state: State) -> ApiResult<Json<wire::NodeList>> {
    let nodes = state.store.list_nodes().await?;
    let seen = seen(&state);
    Ok(Json(wire::NodeList { nodes: nodes.iter().map(|n| node(&state, n, &seen)).collect() }))
}

#[utoipa::path(get, path = "/nodes/{id}", operation_id = "getNode", tag = "nodes", params(("id" = String, Path, description = "Node id.")), responses((status = 200, description = "The node.", body = wire::Node)))]
pub async fn get(state: State, Path(id): Path<String>) -> ApiResult<Json<wire::Node>> {
    let nodes = state.store.list_nodes().await?;
    let n = nodes.iter().find(|n| n.id == id).ok_or_else(|| ApiError::not_found(format!("no node with id `{id}`")))?;
    let seen = seen(&state);
    Ok(Json(node(&state, n, &seen)))
}

/// Sets this node's state, or forwards the request to the node it names.
async fn set_state(state: State, id: String, req: Request, to: NodeState) -> ApiResult<Response> {
    if id != state.node.id {
        let nodes = state.store.list_nodes().await?;
        if !nodes.iter().any(|n| n.id == id) {
            return Err(ApiError::not_found(format!("no node with id `{id}`; `shoal nodes` lists them")));
        }
        return crate::forward::forward_to_node(&state, &id, req).await;
    }
    let before = state.engine.set_state(to);
    let nodes = state.store.list_nodes().await?;
    let seen = seen(&state);
    let n = nodes.iter().find(|n| n.id == id).ok_or_else(|| {
        ApiError::internal(format!("node {id} is not in the store's registry while it runs; it is stopping"))
    })?;
    let mut v = node(&state, n, &seen);
    v.previous_state = Some(before.into());
    Ok(Json(v).into_response())
}

#[utoipa::path(post, path = "/nodes/{id}/drain", operation_id = "drainNode", tag = "nodes", params(("id" = String, Path, description = "Node id.")), responses((status = 200, description = "The node, draining, with `previous_state`. Served by that node (forwarded there from any other).", body = wire::Node)))]
pub async fn drain(state: State, Path(id): Path<String>, req: Request) -> ApiResult<Response> {
    set_state(state, id, req, NodeState::Draining).await
}

#[utoipa::path(post, path = "/nodes/{id}/suspend", operation_id = "suspendNode", tag = "nodes", params(("id" = String, Path, description = "Node id.")), responses((status = 200, description = "The node, suspended, with `previous_state`.", body = wire::Node)))]
pub async fn suspend(state: State, Path(id): Path<String>, req: Request) -> ApiResult<Response> {
    set_state(state, id, req, NodeState::Suspended).await
}

#[utoipa::path(post, path = "/nodes/{id}/resume", operation_id = "resumeNode", tag = "nodes", params(("id" = String, Path, description = "Node id.")), responses((status = 200, description = "The node, active again, with `previous_state`.", body = wire::Node)))]
pub async fn resume(state: State, Path(id): Path<String>, req: Request) -> ApiResult<Response> {
    set_state(state, id, req, NodeState::Active).await
}
