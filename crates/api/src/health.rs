//! Health endpoints for load balancers, the OpenAPI document, and the API's fallbacks.

use crate::error::ApiError;
use crate::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Liveness: the process answers. Restarting it would not help anything else.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

/// Readiness: false while the node cannot take work (cut off from the store, draining,
/// starting), so a load balancer sends requests elsewhere.
pub async fn ready(state: State) -> Response {
    match state.engine.readiness() {
        Ok(()) => Json(json!({ "status": "ready", "node": state.node.id })).into_response(),
        Err(why) => ApiError::not_ready(format!("node {} is not ready: {why}", state.node.id)).into_response(),
    }
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("../openapi.json")).into_response()
}

pub async fn api_not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint at {}; see /api/v1/openapi.json for the API", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let mut r = ApiError::method_not_allowed(format!("{method} is not supported on {}", uri.path())).into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}
