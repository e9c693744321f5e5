//! Read routing (PostgreSQL read replicas, `store.replicas`): which requests' reads may go to
//! a replica, read-your-writes by WAL position, and the headers that say where a request read.
//!
//! A request's reads may go to a replica when its method reads (GET, HEAD, OPTIONS) or when
//! `store.route_to_replica` matches its `"METHOD /api/v1/path"`, unless
//! `store.route_to_primary` matches it too; the store then picks a fit replica (see
//! `crates/store/src/replicas.rs`). The layer sits inside authentication, so who asks is
//! always looked up on the primary: a token revoked a moment ago is never taken as valid
//! because a replica has not replayed its revocation yet.
//!
//! Read-your-writes: the answer to every other request carries `X-Shoal-Position`, the
//! primary's WAL position once it has been handled (so after its commits); a request that sends
//! a position back reads only from a replica that had replayed that far, else from the primary.

use crate::{ApiError, AppState};
use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shoal_store::{Lsn, Route, Store};
use std::sync::Arc;

/// Sent on answers to writes, and taken on any request: a WAL position, `X/Y` in hex.
pub const POSITION: &str = "x-shoal-position";
/// On every answer of a node with replicas: `primary`, or `replica:HOST:PORT`.
pub const READ_FROM: &str = "x-shoal-read-from";

/// Which requests' reads are forced one way or the other (`store.route_to_primary`,
/// `store.route_to_replica`), matched against `"METHOD /api/v1/path"`.
#[derive(Clone, Debug, Default)]
pub struct ReadRouting {
    pub to_primary: regex::RegexSet,
    pub to_replica: regex::RegexSet,
}

impl ReadRouting {
    /// Whether the reads of a request with this method and path may go to a replica.
    pub fn replica_wanted(&self, method: &Method, path: &str) -> bool {
        let line = format!("{method} {path}");
        if self.to_primary.is_match(&line) {
            return false;
        }
        matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || self.to_replica.is_match(&line)
    }
}

/// The position a request asks to read at least, from its one `X-Shoal-Position` header.
fn position(req: &Request) -> Result<Option<Lsn>, ApiError> {
    let mut values = req.headers().get_all(POSITION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::invalid_position("X-Shoal-Position is given more than once; send it once"));
    }
    // Empty is not given, as for the query's filters.
    if value.is_empty() {
        return Ok(None);
    }
    value.to_str().ok().and_then(Lsn::parse).map(Some).ok_or_else(|| {
        ApiError::invalid_position(format!(
            "X-Shoal-Position `{}` is not a WAL position: send back the value of an answer's X-Shoal-Position, such as `0/16B3748`",
            String::from_utf8_lossy(value.as_bytes()).chars().take(64).collect::<String>()
        ))
    })
}

/// The layer around each handler: see the module's text.
pub(crate) async fn route(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let at_least = match position(&req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !state.store.has_replicas() {
        return next.run(req).await;
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let route = Route::new(state.reads.replica_wanted(req.method(), req.uri().path()), at_least);
    let mut res = Store::routed(route.clone(), next.run(req)).await;
    let headers = res.headers_mut();
    if !headers.contains_key(READ_FROM) {
        if let Ok(v) = HeaderValue::from_str(&state.store.read_from(&route)) {
            headers.insert(READ_FROM, v);
        }
    }
    // A forwarded request's answer carries the serving node's position already.
    if writes && !res.headers().contains_key(POSITION) {
        match state.store.wal_position().await {
            Ok(Some(p)) => {
                if let Ok(v) = HeaderValue::from_str(&p.to_string()) {
                    res.headers_mut().insert(POSITION, v);
                }
            }
            Ok(None) => {}
            // The answer stands; only its position is missing (a later read may then not see it).
            Err(e) => tracing::warn!(error = %e, "cannot read the WAL position for X-Shoal-Position"),
        }
    }
    res
}

/// On answers made before any handler ran (a refused credential, say): they read from the
/// primary, if at all.
pub(crate) async fn read_from_primary(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    mut res: Response,
) -> Response {
    if state.store.has_replicas() && !res.headers().contains_key(READ_FROM) {
        res.headers_mut().insert(READ_FROM, HeaderValue::from_static("primary"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_to_replicas_unless_a_list_says_otherwise() {
        let r = ReadRouting {
            to_primary: regex::RegexSet::new([r"^GET /api/v1/executions/[^/]+$"]).unwrap(),
            to_replica: regex::RegexSet::new([r"^POST /api/v1/schedules/preview$", r"^GET /api/v1/executions/"])
                .unwrap(),
        };
        assert!(r.replica_wanted(&Method::GET, "/api/v1/executions"));
        assert!(r.replica_wanted(&Method::HEAD, "/api/v1/sandboxes/s/files/a"));
        assert!(r.replica_wanted(&Method::OPTIONS, "/api/v1/executions"));
        assert!(!r.replica_wanted(&Method::POST, "/api/v1/executions"));
        assert!(!r.replica_wanted(&Method::DELETE, "/api/v1/schedules/x"));
        assert!(r.replica_wanted(&Method::POST, "/api/v1/schedules/preview"));
        // The primary list wins over the replica list and over the method.
        assert!(!r.replica_wanted(&Method::GET, "/api/v1/executions/0193"));
        assert!(r.replica_wanted(&Method::GET, "/api/v1/executions/0193/logs"));
    }
}
