//! The client's errors: what the API answered, that no server could be reached, or a local problem.

use serde_json::Value;
use shoal_wire::{ErrorCode, ErrorResponse};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The code an error answer gets when its body is not the API's error shape (a proxy's page,
/// an empty body): no server sends it, so it never collides with an [`ErrorCode`].
pub const UNEXPECTED_RESPONSE: &str = "unexpected_response";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server answered with the API's error shape (or, from something in front of it, a
    /// status without that shape, then with `raw_code` [`UNEXPECTED_RESPONSE`] and no `code`).
    #[error("{message} ({raw_code})")]
    Api {
        status: u16,
        /// The stable code, when it is one this client knows; `None` for a code a newer server
        /// added, and for an answer without the API's error shape.
        code: Option<ErrorCode>,
        /// The code as the server sent it, known or not.
        raw_code: String,
        message: String,
        details: Option<Value>,
    },
    /// Every server was tried and none gave an answer; `last` says why the last one failed.
    #[error("no server could be reached (tried {}): {last}", tried.join(", "))]
    Unreachable { tried: Vec<String>, last: String },
    /// A problem on this side: a bad server URL, a path the API cannot express, a local file.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The API's stable error code, if a server answered with one this client knows.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => *code,
            _ => None,
        }
    }

    /// The error code as a server sent it (or [`UNEXPECTED_RESPONSE`]), if a server answered.
    pub fn raw_code(&self) -> Option<&str> {
        match self {
            Error::Api { raw_code, .. } => Some(raw_code),
            _ => None,
        }
    }

    /// The HTTP status, if a server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's message, if a server answered.
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Reads an error response body. Anything that is not the API's shape (a proxy's HTML
    /// page, an empty body) still becomes an `Api` error, so callers have one case to handle.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> Error {
        if let Ok(ErrorResponse { error }) = serde_json::from_slice::<ErrorResponse>(body) {
            return Error::Api {
                status,
                code: ErrorCode::parse(&error.code),
                raw_code: error.code,
                message: error.message,
                details: error.details.filter(|d| !d.is_null()),
            };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let excerpt: String = text.chars().take(200).collect();
        let message = if excerpt.is_empty() {
            format!("the server answered HTTP {status} with no error description")
        } else {
            format!("the server answered HTTP {status}: {excerpt}")
        };
        Error::Api { status, code: None, raw_code: UNEXPECTED_RESPONSE.into(), message, details: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_api_error_shape() {
        let body =
            br#"{"error":{"code":"invalid_job","message":"jobs/x.toml: line 2, column 1: bad","details":{"line":2}}}"#;
        match Error::from_response(422, body) {
            Error::Api { status, code, raw_code, message, details } => {
                assert_eq!((status, code, raw_code.as_str()), (422, Some(ErrorCode::InvalidJob), "invalid_job"));
                assert_eq!(message, "jobs/x.toml: line 2, column 1: bad");
                assert_eq!(details, Some(serde_json::json!({"line": 2})));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_code_from_a_newer_server_is_kept_as_sent() {
        let e = Error::from_response(409, br#"{"error":{"code":"quota_exceeded","message":"too many"}}"#);
        assert_eq!((e.code(), e.raw_code(), e.message()), (None, Some("quota_exceeded"), Some("too many")));
        assert_eq!(e.to_string(), "too many (quota_exceeded)");
    }

    #[test]
    fn other_bodies_become_unexpected_response() {
        let e = Error::from_response(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.raw_code(), Some("unexpected_response"));
        assert_eq!(e.code(), None);
        assert!(e.to_string().contains("HTTP 502"), "{e}");
        assert_eq!(Error::from_response(500, b"").raw_code(), Some("unexpected_response"));
    }
}
