//! The one error shape of the API, and the one table from domain errors to HTTP statuses and
//! stable codes. Scripts match on `code`; people read `message`, which says what to fix.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shoal_service::DomainError;
use shoal_store::StoreError;
pub use shoal_wire::ErrorCode;

/// An error answer: its code (which fixes the status, see [`ErrorCode`]), a message saying
/// what to fix, and optional machine-readable details.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

macro_rules! constructors {
    ($($fn:ident => $code:ident),* $(,)?) => {
        impl ApiError {
            $(pub fn $fn(message: impl Into<String>) -> ApiError {
                ApiError::new(ErrorCode::$code, message)
            })*
        }
    };
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code, message: message.into(), details: None }
    }
}

// The table of codes and statuses is `shoal_wire::ErrorCode`; these are its constructors.
constructors! {
    invalid_position => InvalidPosition,
    bad_request => BadRequest,
    invalid_json => InvalidJson,
    invalid_query => InvalidQuery,
    invalid_path => InvalidPath,
    token_in_query => TokenInQuery,
    unauthenticated => Unauthenticated,
    invalid_token => InvalidToken,
    forbidden => Forbidden,
    unauthorized => Unauthorized,
    invalid_signature => InvalidSignature,
    invalid_credentials => InvalidCredentials,
    csrf_failed => CsrfFailed,
    too_many_attempts => TooManyAttempts,
    not_found => NotFound,
    unknown_schedule => UnknownSchedule,
    unknown_listener => UnknownListener,
    unknown_hook => UnknownHook,
    method_not_allowed => MethodNotAllowed,
    already_exists => AlreadyExists,
    conflict => Conflict,
    execution_finished => ExecutionFinished,
    sandbox_not_here => SandboxNotHere,
    secrets_key_mismatch => SecretsKeyMismatch,
    payload_too_large => PayloadTooLarge,
    unsupported_media_type => UnsupportedMediaType,
    invalid_request => InvalidRequest,
    invalid_job => InvalidJob,
    unknown_sandbox => UnknownSandbox,
    unknown_job => UnknownJob,
    missing_parameter => MissingParameter,
    unknown_parameter => UnknownParameter,
    invalid_parameter => InvalidParameter,
    unknown_node => UnknownNode,
    unknown_tag => UnknownTag,
    unknown_secret => UnknownSecret,
    invalid_partitions => InvalidPartitions,
    invalid_cron => InvalidCron,
    unknown_time_zone => UnknownTimeZone,
    invalid_pattern => InvalidPattern,
    foreign_host => ForeignHost,
    foreign_origin => ForeignOrigin,
    root_not_allowed => RootNotAllowed,
    idempotency_key_reused => IdempotencyKeyReused,
    internal => Internal,
    store_unavailable => StoreUnavailable,
    node_unavailable => NodeUnavailable,
    not_ready => NotReady,
    too_many_connections => TooManyConnections,
}

impl ApiError {
    pub fn with_details(mut self, details: impl serde::Serialize) -> ApiError {
        self.details = serde_json::to_value(details).ok();
        self
    }

    /// The body this error is answered with.
    pub fn body(&self) -> shoal_wire::ErrorResponse {
        shoal_wire::ErrorResponse {
            error: shoal_wire::ErrorBody {
                code: self.code.as_str().to_owned(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code.as_str(), status = self.status.as_u16(), message = %self.message, "request failed");
        }
        let mut response = (self.status, axum::Json(self.body())).into_response();
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

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> ApiError {
        let message = e.to_string();
        match e {
            DomainError::UnknownSandbox(_) => ApiError::unknown_sandbox(message),
            DomainError::UnknownJob(_) => ApiError::unknown_job(message),
            DomainError::InvalidJob { file, line, column, message: problem } => ApiError::invalid_job(message)
                .with_details(serde_json::json!({
                    "file": file, "line": line, "column": column, "message": problem,
                })),
            DomainError::JobTooLarge { .. } | DomainError::JobWorkdirOutside { .. } => ApiError::invalid_job(message),
            DomainError::JobUnreadable { file, source } => crate::files::resolve_error(&file, source),
            DomainError::MissingParameter(_) => ApiError::missing_parameter(message),
            DomainError::UnknownParameter(_) => ApiError::unknown_parameter(message),
            DomainError::InvalidParameter(_) => ApiError::invalid_parameter(message),
            DomainError::InvalidRequest(_) => ApiError::invalid_request(message),
            DomainError::InvalidPath(_) => ApiError::invalid_path(message),
            DomainError::UnknownNode(_) => ApiError::unknown_node(message),
            DomainError::RootNotAllowed(_) => ApiError::root_not_allowed(message),
            DomainError::UnknownTag(_) => ApiError::unknown_tag(message),
            DomainError::UnknownSecret(_) => ApiError::unknown_secret(message),
            DomainError::SecretsKey(_) => ApiError::secrets_key_mismatch(message),
            DomainError::Store(e) => e.into(),
            DomainError::SandboxFolder { .. } | DomainError::Internal(_) => ApiError::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_keep_their_codes_messages_and_details() {
        let e = ApiError::from(DomainError::InvalidJob {
            file: "jobs/a.toml".into(),
            line: 2,
            column: 1,
            message: "unknown field `nope`".into(),
        });
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::InvalidJob, "jobs/a.toml: line 2, column 1: unknown field `nope`")
        );
        assert_eq!(
            e.details,
            Some(serde_json::json!({"file": "jobs/a.toml", "line": 2, "column": 1, "message": "unknown field `nope`"}))
        );
        let e = ApiError::from(DomainError::JobTooLarge { file: "jobs/a.toml".into(), limit: 10 });
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::InvalidJob, "job file `jobs/a.toml` is over 10 bytes"));
        // An unreadable job file is worded as any sandbox file is.
        let io = std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory");
        let e = ApiError::from(DomainError::JobUnreadable { file: "jobs".into(), source: io });
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::Conflict, "`jobs` is a folder"));
        let e = ApiError::from(DomainError::Store(StoreError::Unavailable("the store is down".into())));
        assert_eq!(e.code, ErrorCode::StoreUnavailable);
        for (domain, code) in [
            (DomainError::UnknownSandbox("m".into()), ErrorCode::UnknownSandbox),
            (DomainError::UnknownJob("m".into()), ErrorCode::UnknownJob),
            (DomainError::MissingParameter("m".into()), ErrorCode::MissingParameter),
            (DomainError::UnknownParameter("m".into()), ErrorCode::UnknownParameter),
            (DomainError::InvalidParameter("m".into()), ErrorCode::InvalidParameter),
            (DomainError::InvalidRequest("m".into()), ErrorCode::InvalidRequest),
            (DomainError::InvalidPath("m".into()), ErrorCode::InvalidPath),
            (DomainError::UnknownNode("m".into()), ErrorCode::UnknownNode),
            (DomainError::RootNotAllowed("m".into()), ErrorCode::RootNotAllowed),
            (DomainError::UnknownTag("m".into()), ErrorCode::UnknownTag),
            (DomainError::UnknownSecret("m".into()), ErrorCode::UnknownSecret),
            (DomainError::SecretsKey("m".into()), ErrorCode::SecretsKeyMismatch),
        ] {
            let e = ApiError::from(domain);
            assert_eq!((e.code, e.message.as_str()), (code, "m"));
        }
    }
}
