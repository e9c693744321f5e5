//! `GET /nodes`: every node the store knows, with its lease measured on the store's clock, its
//! load, and what this node's gossip says of it; `POST /nodes/{id}/drain|suspend|resume`,
//! served by that node (forwarded there from any other).

use crate::error::{ApiError, ApiResult};
use crate::State;
use axum::extract::{Path, Request};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use shoal_core::placement::NodeState;
use shoal_store::NodeRow;
use std::collections::HashMap;

fn node_json(state: &crate::AppState, n: &NodeRow, gossip: &HashMap<String, bool>) -> Value {
    let live = n.lease_expires_at > n.now && n.state != "stopped" && n.state != "lost";
    let shown = if live {
        n.state.as_str()
    } else if n.state == "stopped" {
        "stopped"
    } else {
        "lost"
    };
    let mut v = json!({
        "id": n.id,
        "url": n.url,
        "state": shown,
        "running": n.running,
        "slots": n.slots,
        "free_slots": if live { (n.slots - n.running).max(0) } else { 0 },
        "load": {
            "slots": if n.slots > 0 { n.running as f64 / n.slots as f64 } else { 0.0 },
            "cpu_percent": n.cpu_permille as f64 / 10.0,
            "memory_percent": n.memory_permille as f64 / 10.0,
        },
        "tags": n.tags,
        "version": n.version,
        "generation": n.generation,
        "gossip_addr": n.gossip_addr,
        "gossip": match gossip.get(&n.id) { Some(true) => "alive", Some(false) => "dead", None => "unknown" },
        "lease_expires_in_ms": n.lease_expires_at - n.now,
        "lease_age_ms": n.now - n.renewed_at,
        "started_at": crate::rfc3339(n.started_at),
    });
    if n.id == state.node.id {
        v["self"] = json!(true);
        v["state"] = json!(state.engine.state().as_str());
        v["running"] = json!(state.engine.running());
        v["accepting_work"] = json!(state.engine.refusal().is_none());
        if let Some(why) = state.engine.refusal() {
            v["not_accepting_because"] = json!(why);
        }
        v["workers"] = json!(state.engine.workers());
        v["rejected_gossip_packets"] = json!(state.engine.rejected_gossip_packets());
    }
    v
}

pub async fn list(state: State) -> ApiResult<Json<Value>> {
    let nodes = state.store.list_nodes().await?;
    let gossip: HashMap<String, bool> = state.engine.gossip().into_iter().collect();
    Ok(Json(json!({ "nodes": nodes.iter().map(|n| node_json(&state, n, &gossip)).collect::<Vec<_>>() })))
}

pub async fn get(state: State, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let nodes = state.store.list_nodes().await?;
    let n = nodes.iter().find(|n| n.id == id).ok_or_else(|| ApiError::not_found(format!("no node with id `{id}`")))?;
    let gossip: HashMap<String, bool> = state.engine.gossip().into_iter().collect();
    Ok(Json(node_json(&state, n, &gossip)))
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
    let gossip: HashMap<String, bool> = state.engine.gossip().into_iter().collect();
    let mut v = match nodes.iter().find(|n| n.id == id) {
        Some(n) => node_json(&state, n, &gossip),
        None => json!({ "id": id, "state": to.as_str() }),
    };
    v["previous_state"] = json!(before.as_str());
    Ok(Json(v).into_response())
}

pub async fn drain(state: State, Path(id): Path<String>, req: Request) -> ApiResult<Response> {
    set_state(state, id, req, NodeState::Draining).await
}

pub async fn suspend(state: State, Path(id): Path<String>, req: Request) -> ApiResult<Response> {
    set_state(state, id, req, NodeState::Suspended).await
}

pub async fn resume(state: State, Path(id): Path<String>, req: Request) -> ApiResult<Response> {
    set_state(state, id, req, NodeState::Active).await
}
