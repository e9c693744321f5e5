//! The one error shape of the API, and the one table from domain errors to HTTP statuses and
//! stable codes. Scripts match on `code`; people read `message`, which says what to fix.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shoal_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

macro_rules! codes {
    ($($fn:ident => ($status:ident, $code:literal)),* $(,)?) => {
        impl ApiError {
            $(pub fn $fn(message: impl Into<String>) -> ApiError {
                ApiError { status: StatusCode::$status, code: $code, message: message.into(), details: None }
            })*
        }
        /// Every code the API can answer with, for the OpenAPI document and the docs test.
        pub const ALL_CODES: &[(&str, u16)] = &[$(($code, StatusCode::$status.as_u16())),*];
    };
}

codes! {
    bad_request => (BAD_REQUEST, "bad_request"),
    invalid_json => (BAD_REQUEST, "invalid_json"),
    invalid_query => (BAD_REQUEST, "invalid_query"),
    invalid_path => (BAD_REQUEST, "invalid_path"),
    unauthorized => (UNAUTHORIZED, "unauthorized"),
    invalid_signature => (UNAUTHORIZED, "invalid_signature"),
    not_found => (NOT_FOUND, "not_found"),
    unknown_schedule => (NOT_FOUND, "unknown_schedule"),
    unknown_listener => (NOT_FOUND, "unknown_listener"),
    unknown_hook => (NOT_FOUND, "unknown_hook"),
    method_not_allowed => (METHOD_NOT_ALLOWED, "method_not_allowed"),
    already_exists => (CONFLICT, "already_exists"),
    conflict => (CONFLICT, "conflict"),
    execution_finished => (CONFLICT, "execution_finished"),
    sandbox_not_here => (CONFLICT, "sandbox_not_here"),
    payload_too_large => (PAYLOAD_TOO_LARGE, "payload_too_large"),
    unsupported_media_type => (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
    invalid_request => (UNPROCESSABLE_ENTITY, "invalid_request"),
    invalid_job => (UNPROCESSABLE_ENTITY, "invalid_job"),
    unknown_sandbox => (UNPROCESSABLE_ENTITY, "unknown_sandbox"),
    unknown_job => (UNPROCESSABLE_ENTITY, "unknown_job"),
    missing_parameter => (UNPROCESSABLE_ENTITY, "missing_parameter"),
    unknown_parameter => (UNPROCESSABLE_ENTITY, "unknown_parameter"),
    invalid_parameter => (UNPROCESSABLE_ENTITY, "invalid_parameter"),
    unknown_node => (UNPROCESSABLE_ENTITY, "unknown_node"),
    unknown_tag => (UNPROCESSABLE_ENTITY, "unknown_tag"),
    invalid_partitions => (UNPROCESSABLE_ENTITY, "invalid_partitions"),
    invalid_cron => (UNPROCESSABLE_ENTITY, "invalid_cron"),
    unknown_time_zone => (UNPROCESSABLE_ENTITY, "unknown_time_zone"),
    invalid_pattern => (UNPROCESSABLE_ENTITY, "invalid_pattern"),
    idempotency_key_reused => (UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
    internal => (INTERNAL_SERVER_ERROR, "internal"),
    store_unavailable => (SERVICE_UNAVAILABLE, "store_unavailable"),
    node_unavailable => (SERVICE_UNAVAILABLE, "node_unavailable"),
    not_ready => (SERVICE_UNAVAILABLE, "not_ready"),
    too_many_connections => (SERVICE_UNAVAILABLE, "too_many_connections"),
}

impl ApiError {
    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, status = self.status.as_u16(), message = %self.message, "request failed");
        }
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read: the connection cannot carry another
            // request, so say so rather than let the client reuse it and fail.
            response
                .headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}

/// Puts an error that did not come from [`ApiError`] into the API's error shape: axum answers
/// a path, query or body its extractors cannot decode (a path segment that is not UTF-8
/// once percent-decoded, say) with a plain-text 4xx before any handler runs. Applied to
/// every response; JSON responses and statuses without a code of their own pass unchanged.
pub(crate) async fn shape_rejections(response: Response) -> Response {
    let (status, is_json) = (
        response.status(),
        response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
    );
    if is_json || !status.is_client_error() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("bad request").to_owned() } else { text };
    let error = match status {
        StatusCode::BAD_REQUEST if message.starts_with("Invalid URL") => ApiError::invalid_path(message),
        StatusCode::BAD_REQUEST if message.contains("query string") => ApiError::invalid_query(message),
        StatusCode::BAD_REQUEST if message.contains("JSON") => ApiError::invalid_json(message),
        StatusCode::BAD_REQUEST => ApiError::bad_request(message),
        StatusCode::UNAUTHORIZED => ApiError::unauthorized(message),
        StatusCode::NOT_FOUND => ApiError::not_found(message),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(message),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(message),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media_type(message),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::invalid_request(message),
        _ => return Response::from_parts(parts, axum::body::Body::from(message)),
    };
    let mut shaped = error.into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(m) => {
                ApiError::store_unavailable(format!("{m}; the request changed nothing, retry it later"))
            }
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::IdempotencyMismatch => ApiError::idempotency_key_reused(e.to_string()),
            StoreError::Fenced
            | StoreError::SchemaTooNew { .. }
            | StoreError::LeaseLost(_)
            | StoreError::LeaseEnded
            | StoreError::Config(_)
            | StoreError::Internal(_) => ApiError::internal(e.to_string()),
        }
    }
}
