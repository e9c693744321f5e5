//! The one error shape of the API and its stable codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! codes {
    ($($variant:ident => ($status:literal, $code:literal)),* $(,)?) => {
        /// Stable error code. Each code always comes with the same HTTP status. Scripts match
        /// on it; `message` says what to fix.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($variant),*
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code as it is sent.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code),* }
            }

            /// The HTTP status this code always comes with.
            pub fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status),* }
            }

            /// The code of this name, if the API has it.
            pub fn parse(s: &str) -> Option<ErrorCode> {
                match s { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    BadRequest => (400, "bad_request"),
    InvalidJson => (400, "invalid_json"),
    InvalidQuery => (400, "invalid_query"),
    InvalidPath => (400, "invalid_path"),
    TokenInQuery => (400, "token_in_query"),
    InvalidPosition => (400, "invalid_position"),
    Unauthenticated => (401, "unauthenticated"),
    InvalidToken => (401, "invalid_token"),
    Unauthorized => (401, "unauthorized"),
    InvalidSignature => (401, "invalid_signature"),
    InvalidCredentials => (401, "invalid_credentials"),
    ForeignHost => (403, "foreign_host"),
    ForeignOrigin => (403, "foreign_origin"),
    Forbidden => (403, "forbidden"),
    CsrfFailed => (403, "csrf_failed"),
    NotFound => (404, "not_found"),
    UnknownSchedule => (404, "unknown_schedule"),
    UnknownListener => (404, "unknown_listener"),
    UnknownHook => (404, "unknown_hook"),
    MethodNotAllowed => (405, "method_not_allowed"),
    AlreadyExists => (409, "already_exists"),
    Conflict => (409, "conflict"),
    ExecutionFinished => (409, "execution_finished"),
    SandboxNotHere => (409, "sandbox_not_here"),
    SecretsKeyMismatch => (409, "secrets_key_mismatch"),
    PayloadTooLarge => (413, "payload_too_large"),
    UnsupportedMediaType => (415, "unsupported_media_type"),
    InvalidRequest => (422, "invalid_request"),
    InvalidJob => (422, "invalid_job"),
    UnknownSandbox => (422, "unknown_sandbox"),
    UnknownJob => (422, "unknown_job"),
    MissingParameter => (422, "missing_parameter"),
    UnknownParameter => (422, "unknown_parameter"),
    InvalidParameter => (422, "invalid_parameter"),
    UnknownNode => (422, "unknown_node"),
    UnknownTag => (422, "unknown_tag"),
    UnknownSecret => (422, "unknown_secret"),
    InvalidPartitions => (422, "invalid_partitions"),
    InvalidCron => (422, "invalid_cron"),
    UnknownTimeZone => (422, "unknown_time_zone"),
    InvalidPattern => (422, "invalid_pattern"),
    RootNotAllowed => (422, "root_not_allowed"),
    IdempotencyKeyReused => (422, "idempotency_key_reused"),
    TooManyAttempts => (429, "too_many_attempts"),
    Internal => (500, "internal"),
    StoreUnavailable => (503, "store_unavailable"),
    NodeUnavailable => (503, "node_unavailable"),
    NotReady => (503, "not_ready"),
    TooManyConnections => (503, "too_many_connections"),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one error shape of the API: `{"error": {"code", "message", "details"?}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable error code; see `ErrorCode` for the status each comes with. A client should
    /// accept codes it does not know (a newer server may add some).
    #[schema(value_type = ErrorCode)]
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// Machine-readable context, only on some errors. For `invalid_job`: `JobErrorDetails`.
    /// For `invalid_cron` caused by one field: `CronErrorDetails`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// `details` of an `invalid_job` error: where in the job file the problem is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobErrorDetails {
    /// The job file's path inside the sandbox.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    pub message: String,
}

/// `details` of an `invalid_cron` error that one field caused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CronErrorDetails {
    pub field: CronField,
    /// 1-based position of the field in the expression as written (the minute is field 1 of
    /// five, field 2 of six).
    #[schema(minimum = 1)]
    pub position: u32,
}

/// A field of a cron expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CronField {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

// In the order of a six-field expression.
names!(CronField {
    Second => "second",
    Minute => "minute",
    Hour => "hour",
    DayOfMonth => "day-of-month",
    Month => "month",
    DayOfWeek => "day-of-week",
});

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
