//! The client's errors: what the API answered, that no server could be reached, or a local problem.

use serde_json::Value;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server answered with the API's error shape (or, from something in front of it, a
    /// status without that shape, then with code `unexpected_response`).
    #[error("{message} ({code})")]
    Api { status: u16, code: String, message: String, details: Option<Value> },
    /// Every server was tried and none gave an answer; `last` says why the last one failed.
    #[error("no server could be reached (tried {}): {last}", tried.join(", "))]
    Unreachable { tried: Vec<String>, last: String },
    /// A problem on this side: a bad server URL, a path the API cannot express, a local file.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The API's stable error code, if a server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
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

    /// Reads an error response body. Anything that is not the API's shape (a proxy's HTML
    /// page, an empty body) still becomes an `Api` error, so callers have one case to handle.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> Error {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let code = error.and_then(|e| e.get("code")).and_then(Value::as_str);
        let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
        match (code, message) {
            (Some(code), Some(message)) => Error::Api {
                status,
                code: code.to_owned(),
                message: message.to_owned(),
                details: error.and_then(|e| e.get("details")).filter(|d| !d.is_null()).cloned(),
            },
            _ => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let excerpt: String = text.chars().take(200).collect();
                let message = if excerpt.is_empty() {
                    format!("the server answered HTTP {status} with no error description")
                } else {
                    format!("the server answered HTTP {status}: {excerpt}")
                };
                Error::Api { status, code: "unexpected_response".into(), message, details: None }
            }
        }
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
            Error::Api { status, code, message, details } => {
                assert_eq!((status, code.as_str()), (422, "invalid_job"));
                assert_eq!(message, "jobs/x.toml: line 2, column 1: bad");
                assert_eq!(details, Some(serde_json::json!({"line": 2})));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn other_bodies_become_unexpected_response() {
        let e = Error::from_response(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.code(), Some("unexpected_response"));
        assert!(e.to_string().contains("HTTP 502"), "{e}");
        assert_eq!(Error::from_response(500, b"").code(), Some("unexpected_response"));
    }
}
