//! `GET /nodes`: every node the store knows, with its lease measured on the store's clock.

use crate::error::{ApiError, ApiResult};
use crate::State;
use axum::extract::Path;
use axum::Json;
use serde_json::{json, Value};
use shoal_store::NodeRow;

fn node_json(state: &crate::AppState, n: &NodeRow) -> Value {
    let live = n.lease_expires_at > n.now && n.state != "stopped";
    let mut v = json!({
        "id": n.id,
        "url": n.url,
        "state": if live { n.state.as_str() } else if n.state == "stopped" { "stopped" } else { "lost" },
        "running": n.running,
        "slots": n.slots,
        "load": if n.slots > 0 { n.running as f64 / n.slots as f64 } else { 0.0 },
        "tags": n.tags,
        "version": n.version,
        "generation": n.generation,
        "lease_expires_in_ms": n.lease_expires_at - n.now,
        "lease_age_ms": n.now - n.renewed_at,
        "started_at": crate::rfc3339(n.started_at),
    });
    if n.id == state.node.id {
        v["self"] = json!(true);
        v["workers"] = json!(state.engine.workers());
    }
    v
}

pub async fn list(state: State) -> ApiResult<Json<Value>> {
    let nodes = state.store.list_nodes().await?;
    Ok(Json(json!({ "nodes": nodes.iter().map(|n| node_json(&state, n)).collect::<Vec<_>>() })))
}

pub async fn get(state: State, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let nodes = state.store.list_nodes().await?;
    let n = nodes.iter().find(|n| n.id == id).ok_or_else(|| ApiError::not_found(format!("no node with id `{id}`")))?;
    Ok(Json(node_json(&state, n)))
}
