//! Request bodies: JSON with the API's own errors (unknown fields named, sizes limited).

use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// Reads a whole body of at most `limit` bytes; 413 when it is larger.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let too_large = || ApiError::payload_too_large(format!("request body is larger than the limit of {limit} bytes"));
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.to_string().contains("length limit") {
                return too_large();
            }
            source = s.source();
        }
        ApiError::bad_request(format!("cannot read the request body: {e}"))
    })
}

/// A JSON body must say so: `Content-Type: application/json` (parameters such as `charset`
/// allowed). A missing or other type is 415, so that a web page cannot send a JSON body as
/// `text/plain`, a "simple" request a browser sends cross-site without asking the server
/// first (no CORS preflight).
fn check_json_type(headers: &HeaderMap) -> ApiResult<()> {
    let want = "send JSON with `Content-Type: application/json`";
    let mut values = headers.get_all(axum::http::header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ApiError::unsupported_media_type(format!("the request has no single Content-Type header; {want}")));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    match text.parse::<mime::Mime>() {
        Ok(m) if m.essence_str() == "application/json" => Ok(()),
        _ => Err(ApiError::unsupported_media_type(format!(
            "content type `{}` is not accepted here; {want}",
            text.chars().take(100).collect::<String>()
        ))),
    }
}

/// Parses a JSON body; unknown fields, wrong types and syntax errors are 400 with the place.
pub async fn json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<(T, serde_json::Value)> {
    check_json_type(headers)?;
    let bytes = read_limited(headers, body, limit).await?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_json(format!("request body is not valid JSON: {e}")))?;
    let parsed = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::invalid_json(format!("request body does not match what this endpoint takes: {e}")))?;
    Ok((parsed, value))
}
