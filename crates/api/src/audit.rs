//! The audit trail: every change made through the API (any method but GET, HEAD and OPTIONS,
//! on a route of the API) and every login, recorded in one place, [`record`], a layer around
//! authentication and the handlers; `GET /api/v1/audit` reads it.
//!
//! A change is recorded when its credential was valid (the principal is known: `auth.rs`
//! writes it on the request's [`Note`]), whether it was allowed or not (a 403 is `denied`); a
//! login under the name tried (`sessions.rs` writes it), ok or not, unless the address was
//! throttled. A request with no valid credential is not recorded: anyone could send those, and
//! fill the store. A forwarded request is recorded once, by the node the client sent it to
//! (with the node that served it): that node authenticated it, and sees its end even when the
//! other node is down; the node it is forwarded to records nothing.
//!
//! The handler runs in a task of its own, so that a client that goes away after sending a
//! change cannot drop the handler between the change's commit and its record: the task runs on
//! to its end and queues the row. Rows wait in a bounded queue of this node's memory
//! ([`AuditLog`]) for the `audit` worker, which writes them in batches and retries while the
//! store is away; past [`QUEUE_CAPACITY`] rows new ones are dropped, counted and logged. What
//! is queued when the node is killed is lost.

use crate::auth::{Principal, Routes};
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::{AppState, State};
use axum::extract::{MatchedPath, Query, RawPathParams, Request};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, RequestExt};
use parking_lot::Mutex;
use serde::Deserialize;
use shoal_store::{AuditFilter, AuditRecord, AuditRow, NewAudit, Store, StoreError};
use shoal_wire::{self as wire, AuditOutcome};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// Rows this node keeps waiting for the store at most (a few MB); past it, new ones are
/// dropped (`shoal_audit_dropped_total`), so a store away for long cannot eat the node's memory.
pub const QUEUE_CAPACITY: usize = 10_000;

/// Rows written by one step of the `audit` worker at most.
const BATCH: usize = 500;

/// Changes a node runs at once. Each runs on a task of its own, which a client that goes away
/// does not stop; without a bound, clients that send changes and hang up while the store is
/// slow would pile up tasks. Past it, a change waits for a turn before it starts, and one
/// whose client leaves while it waits never starts: hyper drops it once it reads the hang-up,
/// which it does for a request that arrived whole (one whose body never did starts, and fails
/// reading it). `tests/audit.rs`: `changes_beyond_the_bound_wait_and_never_start_...`.
pub const MAX_CHANGES_IN_FLIGHT: usize = 1024;

/// The largest answer whose body is read for its error code or for what a create made.
const READ_BODY: usize = 64 * 1024;

/// Changes by their method that change nothing: they are not recorded.
const READS: &[&str] = &["previewCron"];

/// What a create's answer names, by operation: where in its JSON body the target is.
const CREATED: &[(&str, &str)] = &[
    ("createSandbox", "/name"),
    ("submitExecution", "/id"),
    ("createSchedule", "/name"),
    ("createListener", "/name"),
    ("createToken", "/name"),
    ("createUser", "/name"),
];

/// Who a request acts for, as far as the audit trail is concerned: written by authentication
/// (or by a login, with the name tried) on the request, read by [`record`] at its end. Empty
/// for a request that had no valid credential, which is not recorded.
#[derive(Clone, Default)]
pub struct Note(Arc<Mutex<Option<String>>>);

impl Note {
    fn set(&self, principal: String) {
        *self.0.lock() = Some(principal);
    }
}

/// Notes the principal a request was authenticated as.
pub(crate) fn note_principal(req: &Request, principal: &Principal) {
    if let Some(note) = req.extensions().get::<Note>() {
        note.set(principal.label());
    }
}

/// Notes the user name a login tried (never its password).
pub(crate) fn note_login(extensions: &axum::http::Extensions, name: &str) {
    if let Some(note) = extensions.get::<Note>() {
        let name: String = name.chars().take(128).collect();
        note.set(format!("user:{name}"));
    }
}

struct Queued {
    row: NewAudit,
    at: Instant,
}

/// This node's rows waiting for the store, and the worker's wake-up.
pub struct AuditLog {
    node: String,
    queue: Mutex<VecDeque<Queued>>,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// Whether rows are being dropped (logged once when it starts).
    dropping: AtomicBool,
    /// Turns for changes running on their own task ([`MAX_CHANGES_IN_FLIGHT`]).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Changes waiting for a turn.
    waiting: AtomicUsize,
}

impl AuditLog {
    pub fn new(node: String, metrics: Arc<Metrics>) -> AuditLog {
        AuditLog {
            node,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_CHANGES_IN_FLIGHT)),
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            metrics,
            dropping: AtomicBool::new(false),
        }
    }

    /// Fires when a row is queued.
    pub fn wake(&self) -> &Notify {
        &self.wake
    }

    /// Rows waiting for the store.
    pub fn queued(&self) -> usize {
        self.queue.lock().len()
    }

    /// Changes running on their own task now, and changes waiting for a turn to.
    pub fn changes(&self) -> (usize, usize) {
        (MAX_CHANGES_IN_FLIGHT - self.in_flight.available_permits(), self.waiting.load(Ordering::Relaxed))
    }

    fn push(&self, row: NewAudit) {
        let mut queue = self.queue.lock();
        if queue.len() >= QUEUE_CAPACITY {
            drop(queue);
            self.metrics.audit_dropped.inc();
            if !self.dropping.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    capacity = QUEUE_CAPACITY,
                    "the audit queue is full (the store has not taken its rows): changes are being made without their audit rows"
                );
            }
            return;
        }
        queue.push_back(Queued { row, at: Instant::now() });
        drop(queue);
        self.wake.notify_one();
    }

    /// Writes up to one batch of the queued rows; says how many. Rows the store did not take
    /// go back to the head of the queue, for the next try.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let batch: Vec<Queued> = {
            let mut queue = self.queue.lock();
            let n = queue.len().min(BATCH);
            queue.drain(..n).collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let now = Instant::now();
        let rows: Vec<NewAudit> = batch
            .iter()
            .map(|q| {
                let age = now.saturating_duration_since(q.at);
                NewAudit { age_ms: i64::try_from(age.as_millis()).unwrap_or(i64::MAX), ..q.row.clone() }
            })
            .collect();
        // Dropped (the node stopping) or failed: the rows go back. A batch whose commit was
        // made but not confirmed is written again, and its ids make that change nothing.
        let mut back = PutBack { log: self, batch: Some(batch) };
        store.insert_audit(&rows, now).await?;
        back.batch = None;
        if self.dropping.swap(false, Ordering::Relaxed) {
            tracing::info!("the audit queue has room again");
        }
        self.metrics.audit_recorded.inc_by(rows.len() as u64);
        Ok(rows.len())
    }

    /// Writes every queued row, batch after batch, until none is left or the store fails.
    pub async fn flush_all(&self, store: &Store) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            match self.flush(store).await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }
}

/// Puts a batch back at the head of the queue unless it was written.
struct PutBack<'a> {
    log: &'a AuditLog,
    batch: Option<Vec<Queued>>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            let mut queue = self.log.queue.lock();
            for q in batch.into_iter().rev() {
                queue.push_front(q);
            }
            // Taken back whatever came in meanwhile; what is over the capacity goes, newest first.
            while queue.len() > QUEUE_CAPACITY {
                queue.pop_back();
                self.log.metrics.audit_dropped.inc();
            }
        }
    }
}

/// The layer that records changes; see the module's text.
pub(crate) async fn record(
    axum::extract::State((state, routes)): axum::extract::State<(Arc<AppState>, Arc<Routes>)>,
    mut req: Request,
    next: Next,
) -> Response {
    // A request with forwarding headers was recorded by the node that forwarded it, if they
    // verify; if not, it is refused (401) before it changes anything.
    let forwarded = crate::forward::claims_forwarded(req.headers());
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) || forwarded {
        return next.run(req).await;
    }
    let op = req.extensions().get::<MatchedPath>().and_then(|m| routes.get(req.method(), m.as_str()));
    let Some((op, _)) = op.filter(|(op, _)| !READS.contains(op)) else {
        return next.run(req).await;
    };
    // What the path names: a sandbox, `SANDBOX/PATH` of a file, an id.
    let target = match req.extract_parts::<RawPathParams>().await {
        Ok(params) => params.iter().map(|(_, v)| v).collect::<Vec<_>>().join("/"),
        Err(_) => String::new(),
    };
    let note = Note::default();
    req.extensions_mut().insert(note.clone());
    // On a task of its own: a client gone away drops this future, never the handler's. The
    // turn is taken first, here, so waiting for one is dropped with the client.
    let turn = match state.audit.in_flight.clone().try_acquire_owned() {
        Ok(turn) => turn,
        // Every turn taken: wait for one (no await otherwise, so a free turn is never lost to
        // a client that has already gone).
        Err(_) => {
            // Counted as waiting until it has its turn or its client has gone and dropped it.
            let _waiting = shoal_core::held::Held::new(&state.audit.waiting);
            match state.audit.in_flight.clone().acquire_owned().await {
                Ok(turn) => turn,
                Err(_) => return ApiError::internal("the node is shutting down").into_response(),
            }
        }
    };
    let task = tokio::spawn(async move {
        let res = next.run(req).await;
        let res = finish(&state, op, target, &note, res).await;
        drop(turn);
        res
    });
    match task.await {
        Ok(res) => res,
        Err(e) => ApiError::internal(format!("the request's handler failed: {e}")).into_response(),
    }
}

/// Queues the row of a request that had a principal, and gives its answer back.
async fn finish(state: &AppState, op: &'static str, mut target: String, note: &Note, res: Response) -> Response {
    let Some(principal) = note.0.lock().take() else { return res };
    let status = res.status().as_u16();
    let served_by = res
        .headers()
        .get(crate::forward::SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v != state.node.id)
        .map(str::to_owned);
    let created = CREATED.iter().find(|(o, _)| *o == op).map(|(_, p)| *p);
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // Its length, known in memory, or (an answer streamed from another node) as sent.
    let length = axum::body::HttpBody::size_hint(res.body()).exact().or_else(|| {
        res.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
    });
    let small = length.is_some_and(|n| n <= READ_BODY as u64);
    let wanted = status >= 400 || (created.is_some() && target.is_empty() && res.status().is_success());
    let (res, body) = if json && small && wanted {
        let (parts, body) = res.into_parts();
        match axum::body::to_bytes(body, READ_BODY).await {
            Ok(bytes) => {
                let value = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                (Response::from_parts(parts, axum::body::Body::from(bytes)), value)
            }
            Err(e) => (ApiError::internal(format!("cannot read the answer: {e}")).into_response(), None),
        }
    } else {
        (res, None)
    };
    let code = body.as_ref().and_then(|b| b["error"]["code"].as_str()).map(str::to_owned);
    if let (Some(pointer), Some(body), true) = (created, &body, target.is_empty()) {
        if let Some(name) = body.pointer(pointer).and_then(|v| v.as_str()) {
            target = name.to_owned();
        }
    }
    state.audit.push(NewAudit {
        id: uuid::Uuid::now_v7().to_string(),
        age_ms: 0,
        record: AuditRecord {
            principal,
            node: state.audit.node.clone(),
            served_by,
            action: op.to_owned(),
            target,
            outcome: AuditOutcome::of_status(status),
            status: i64::from(status),
            code,
        },
    });
    res
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    principal: Option<String>,
    action: Option<String>,
    target: Option<String>,
    outcome: Option<String>,
    node: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A row's place in the order, as the `cursor` of the next page.
fn cursor(r: &AuditRow) -> String {
    format!("{}.{}", r.at, r.id)
}

fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (at, id) = c.split_once('.')?;
    let id = uuid::Uuid::parse_str(id).ok()?;
    Some((at.parse().ok()?, id.to_string()))
}

/// A time of a query: RFC 3339, or a duration before now on the store's clock (`90m`, `7d`).
async fn time_of(state: &AppState, name: &str, text: &str) -> ApiResult<i64> {
    if let Ok(ago) = shoal_core::duration::parse(text) {
        let now = state.store.now_ms().await?;
        return Ok(now.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)));
    }
    let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| {
        if shoal_core::duration::well_formed(text) {
            // A duration, but one the parser refused (too long): say that.
            if let Err(e) = shoal_core::duration::parse(text) {
                return ApiError::invalid_query(format!("`{name}`: {e}"));
            }
        }
        ApiError::invalid_query(format!(
            "`{name}` `{text}` is neither a time (RFC 3339 with its offset, e.g. 2026-01-31T08:00:00Z or \
             2026-01-31T09:00:00+01:00) nor a duration before now (e.g. 90m, 7d)"
        ))
    })?;
    // Store times are milliseconds since 1970; an earlier time is the same as 1970.
    Ok(at.timestamp_millis().max(0))
}

fn entry(row: AuditRow) -> wire::AuditEntry {
    let r = row.record;
    wire::AuditEntry {
        at: crate::rfc3339(row.at),
        id: row.id,
        principal: r.principal,
        node: r.node,
        served_by: r.served_by,
        action: r.action,
        target: r.target,
        outcome: r.outcome,
        status: u16::try_from(r.status).unwrap_or(0),
        code: r.code,
    }
}

#[utoipa::path(get, path = "/audit", operation_id = "listAudit", tag = "audit",
    params(
        ("principal" = Option<String>, Query, description = "Only entries of this principal (`token:NAME`, `user:NAME`)."),
        ("action" = Option<String>, Query, description = "Only entries of this operation id (`createSchedule`, `createSession` for logins, ...)."),
        ("target" = Option<String>, Query, description = "Only entries whose target starts with this (a sandbox's name finds its files too)."),
        ("outcome" = Option<wire::AuditOutcome>, Query, description = "Only entries with this outcome."),
        ("node" = Option<String>, Query, description = "Only entries recorded by this node (the one the client sent the request to)."),
        ("since" = Option<String>, Query, description = "Only entries at or after this time: RFC 3339, or a duration before now on the store's clock (`90m`, `7d`)."),
        ("until" = Option<String>, Query, description = "Only entries before this time: RFC 3339, or a duration before now."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)."),
        ("cursor" = Option<String>, Query, pattern = "^-?[0-9]{1,18}\\.[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "`next_cursor` of the previous page.")),
    responses((status = 200, description = "A page of the audit trail, newest first: every change made through the API and every login, with who, through which node, on what and how it ended. Needs `admin` for every sandbox.", body = wire::AuditList)))]
pub async fn list(
    state: State,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<wire::AuditList>> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid_query(format!(
            "{}; filters are principal, action, target, outcome, node, since, until, limit and cursor",
            e.body_text()
        ))
    })?;
    let names = AuditOutcome::ALL.map(|o| o.as_str());
    let outcome = crate::query::named("outcome", q.outcome.as_deref(), AuditOutcome::parse, &names)?;
    let limit = crate::query::page_limit(q.limit.as_deref())?;
    let before = match &q.cursor {
        Some(c) => Some(
            parse_cursor(c)
                .ok_or_else(|| ApiError::invalid_query(format!("cursor `{c}` is not one this API returned")))?,
        ),
        None => None,
    };
    // Empty, as the other filters: not given.
    let since = match q.since.as_ref().filter(|t| !t.is_empty()) {
        Some(t) => Some(time_of(&state, "since", t).await?),
        None => None,
    };
    let until = match q.until.as_ref().filter(|t| !t.is_empty()) {
        Some(t) => Some(time_of(&state, "until", t).await?),
        None => None,
    };
    let rows = state
        .store
        .list_audit(&AuditFilter {
            principal: q.principal,
            action: q.action,
            target_prefix: q.target,
            outcome,
            node: q.node,
            since,
            until,
            limit,
            before,
        })
        .await?;
    let next = if rows.len() as i64 == limit { rows.last().map(cursor) } else { None };
    Ok(Json(wire::AuditList { entries: rows.into_iter().map(entry).collect(), next_cursor: next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            principal: "token:ci".into(),
            node: "n1".into(),
            served_by: None,
            action: "createSandbox".into(),
            target: "etl".into(),
            outcome: AuditOutcome::Ok,
            status: 201,
            code: None,
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_was_not_made_here() {
        let id = uuid::Uuid::now_v7().to_string();
        let row = AuditRow { id: id.clone(), at: 1_700_000_000_123, record: record() };
        assert_eq!(parse_cursor(&cursor(&row)), Some((1_700_000_000_123, id)));
        for bad in ["", "12", "x.y", "12.not-a-uuid", ".0191e0a0-0000-7000-8000-000000000000"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }

    /// Only the headers that have a request verified as forwarded keep it out of the trail;
    /// another `x-shoal-*` header a client sends does not.
    #[test]
    fn forwarding_headers_mark_a_forwarded_request_and_no_others_do() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(crate::forward::SERVED_BY, "n1".parse().unwrap());
        h.insert("x-shoal-position", "0/1".parse().unwrap());
        assert!(!crate::forward::claims_forwarded(&h));
        h.insert("x-shoal-forwarded-by", "n1".parse().unwrap());
        assert!(crate::forward::claims_forwarded(&h));
    }

    /// A queue that is full drops new rows and counts them; a flush that fails puts its batch
    /// back at the head.
    #[tokio::test]
    async fn the_queue_is_bounded_and_keeps_what_the_store_did_not_take() {
        let metrics = Arc::new(Metrics::default());
        let log = AuditLog::new("n1".into(), metrics.clone());
        let row = |i: usize| NewAudit { id: format!("r{i}"), age_ms: 0, record: record() };
        for i in 0..QUEUE_CAPACITY + 3 {
            log.push(row(i));
        }
        assert_eq!((log.queued(), metrics.audit_dropped.get()), (QUEUE_CAPACITY, 3));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display()), 2).await.unwrap();
        assert_eq!(log.flush(&store).await.unwrap(), BATCH);
        assert_eq!(log.queued(), QUEUE_CAPACITY - BATCH);
        // A batch taken and dropped before the store answered (polled once: SQLite answers
        // from its own thread) goes back first.
        let first = format!("r{BATCH}");
        let written = match tokio::time::timeout(std::time::Duration::ZERO, log.flush(&store)).await {
            Ok(n) => n.unwrap(),
            Err(_) => {
                assert_eq!(log.queue.lock().front().map(|q| q.row.id.clone()), Some(first));
                0
            }
        };
        assert_eq!(log.flush_all(&store).await.unwrap() + written, QUEUE_CAPACITY - BATCH);
        assert_eq!(metrics.audit_recorded.get(), QUEUE_CAPACITY as u64);
    }
}
