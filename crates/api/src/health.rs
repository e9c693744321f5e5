//! Health endpoints for load balancers, the OpenAPI document, and the API's fallbacks.

use crate::error::ApiError;
use crate::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shoal_wire as wire;

/// Liveness: the process answers. Restarting it would not help anything else.
#[utoipa::path(get, path = "/health/live", operation_id = "live", tag = "health", responses((status = 200, description = "The process answers.", body = wire::Live)))]
pub async fn live() -> Json<wire::Live> {
    Json(wire::Live { status: "live".into() })
}

/// Readiness: false while the node cannot take work (cut off from the store, draining,
/// starting), so a load balancer sends requests elsewhere.
#[utoipa::path(get, path = "/health/ready", operation_id = "ready", tag = "health", responses((status = 200, description = "Ready: the node holds its lease and takes traffic.", body = wire::Ready)))]
pub async fn ready(state: State) -> Response {
    match state.engine.readiness() {
        Ok(()) => Json(wire::Ready { status: "ready".into(), node: state.node.id.clone() }).into_response(),
        Err(why) => ApiError::not_ready(format!("node {} is not ready: {why}", state.node.id)).into_response(),
    }
}

#[utoipa::path(get, path = "/openapi.json", operation_id = "getOpenApi", tag = "health", responses((status = 200, description = "This document. Also served at `/openapi.json`, outside `/api/v1`.", body = Object)))]
pub async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

#[utoipa::path(get, path = "/openapi.json", operation_id = "getOpenApiRoot", tag = "health", responses((status = 200, description = "This document (as at `/api/v1/openapi.json`).", body = Object)))]
pub async fn openapi_root() -> Response {
    openapi().await
}

#[utoipa::path(get, path = "/health/live", operation_id = "liveV1", tag = "health", responses((status = 200, description = "The process answers. Also served at `/health/live`, outside `/api/v1`.", body = wire::Live)))]
pub async fn live_v1() -> Json<wire::Live> {
    live().await
}

#[utoipa::path(get, path = "/health/ready", operation_id = "readyV1", tag = "health", responses((status = 200, description = "Ready: the node holds its lease and takes traffic. Also served at `/health/ready`, outside `/api/v1`.", body = wire::Ready)))]
pub async fn ready_v1(state: State) -> Response {
    ready(state).await
}

pub async fn api_not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint at {}; see /api/v1/openapi.json for the API", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let mut r = ApiError::method_not_allowed(format!("{method} is not supported on {}", uri.path())).into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}
