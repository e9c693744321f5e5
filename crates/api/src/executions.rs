//! Executions: submit (from a sandbox job or an inline command), list, get, cancel, and logs
//! (`?follow=true` streams them while the attempt runs, from whichever node is asked).

use crate::auth::Principal;
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::State;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use shoal_core::{Allocation, ExecState, ExecutionId, JobKind, Role};
use shoal_service::submission::{self, InlineSettings, Plan, Prepared, Submission};
use shoal_store::{CancelResult, ExecutionFilter, ExecutionRow, Submitted};
use shoal_wire as wire;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// An execution row as the API shows it.
pub fn execution(e: &ExecutionRow) -> ApiResult<wire::Execution> {
    let (kind, command) = match &e.spec.kind {
        JobKind::Process { command } => (wire::JobKind::Process, Some(command.clone())),
        JobKind::Noop => (wire::JobKind::Noop, None),
    };
    Ok(wire::Execution {
        id: e.id.to_string(),
        sandbox: e.sandbox.clone(),
        job: e.job.clone(),
        kind,
        command,
        state: e.state,
        reason: e.reason,
        message: e.message.clone(),
        exit_code: e.exit_code,
        signal: e.signal,
        attempt: e.attempt,
        node: e.node_id.clone(),
        params: e.params.clone(),
        priority: e.spec.priority,
        timeout_ms: e.spec.timeout_ms,
        retries: e.spec.retries,
        trigger: e.origin.trigger,
        trigger_ref: e.origin.reference.clone(),
        principal: e.origin.principal.clone(),
        cancel_requested_by: e.cancel_requested.clone(),
        created_at: crate::rfc3339(e.created_at),
        started_at: e.started_at.map(crate::rfc3339),
        finished_at: e.finished_at.map(crate::rfc3339),
        updated_at: crate::rfc3339(e.updated_at),
        parent: e.parent_id.clone(),
        partition: e.partition.clone(),
        attempts: None,
        children: None,
    })
}

#[utoipa::path(post, path = "/executions", operation_id = "submitExecution", tag = "executions", request_body = wire::SubmitRequest, params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "1 to 255 visible ASCII characters. A request repeated with the same key and body answers the execution the first created (200); with another body 422 `idempotency_key_reused`.")), responses((status = 201, description = "Queued: the execution's row is committed.", body = wire::Execution), (status = 200, description = "Replayed: an earlier request with the same `Idempotency-Key` and body created this execution.", body = wire::Execution)))]
pub async fn submit(state: State, principal: Principal, request: axum::extract::Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let (req, raw): (wire::SubmitRequest, Value) = body::json(headers, body, state.limits.max_request_bytes).await?;
    if req.command.is_some() {
        // Any program, as the node's user: as much as the whole cluster.
        principal.require(Role::Admin, None, "running an inline command")?;
    } else {
        principal.require(Role::Runner, req.sandbox.as_deref(), "running a job")?;
    }
    let idempotency = match headers.get("idempotency-key") {
        Some(k) => {
            let key =
                k.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
                    ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
                })?;
            // serde_json's maps are sorted, so equal requests hash equally whatever the key order.
            let hash = hex::encode(Sha256::digest(raw.to_string().as_bytes()));
            Some((key.to_owned(), hash))
        }
        None => None,
    };
    let submission = Submission {
        params: crate::jobs::params_from_json(&req.params)?,
        sandbox: req.sandbox,
        job: req.job,
        command: req.command,
        inline: InlineSettings {
            env: req.env,
            workdir: req.workdir,
            timeout: req.timeout,
            retries: req.retries,
            retry_backoff: req.retry_backoff,
            on_node_loss: req.on_node_loss,
            allocation: req.allocation,
            allow_pending: req.allow_pending,
        },
        priority: req.priority,
        idempotency,
        origin: principal.origin(),
    };
    let plan = match submission::prepare(&state.store, &state.node.id, submission).await? {
        Prepared::Ready(plan) => {
            // A job fanned out over a partitioned sandbox runs in that sandbox's folders too.
            if let Plan::Partitioned { parent, .. } = &*plan {
                if let Allocation::Partitioned { sandbox } = &parent.spec.allocation {
                    principal.require(Role::Runner, Some(sandbox), "running a job over a partitioned sandbox")?;
                }
            }
            plan
        }
        Prepared::Elsewhere { sandbox, holder } => {
            // The job file is only on its holder: that node reads it and enqueues.
            let request = axum::extract::Request::from_parts(parts, Body::from(raw.to_string()));
            return crate::forward::to_sandbox_holder(&state, &sandbox, &holder, request).await;
        }
    };
    let attempt = principal.attempt.as_ref().map(|a| (a.execution.as_str(), shoal_core::FencingToken(a.fence)));
    let submitted = plan.submit(&state.store, &state.submitter, attempt).await.map_err(|e| match e {
        shoal_service::DomainError::Store(shoal_store::StoreError::Fenced) => ApiError::invalid_token(format!(
            "{} has ended or moved to another attempt: nothing it asks for is accepted any more",
            principal.label()
        )),
        other => other.into(),
    })?;
    state.engine.wake();
    match submitted {
        Submitted::Created(row) => {
            state.metrics.executions_submitted.fetch_add(1, Ordering::Relaxed);
            let location = format!("/api/v1/executions/{}", row.id);
            let mut r = (StatusCode::CREATED, Json(execution(&row)?)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Ok(r)
        }
        Submitted::Replayed(row) => {
            let mut r = (StatusCode::OK, Json(execution(&row)?)).into_response();
            r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(r)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    sandbox: Option<String>,
    job: Option<String>,
    node: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/executions", operation_id = "listExecutions", tag = "executions", params(("state" = Option<wire::ExecutionState>, Query, description = "Only executions in this state."), ("sandbox" = Option<String>, Query, description = "Only executions in this sandbox."), ("job" = Option<String>, Query, description = "Only executions of this job file."), ("node" = Option<String>, Query, description = "Only executions whose current or last attempt ran on this node."), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)."), ("cursor" = Option<String>, Query, format = "uuid", description = "`next_cursor` of the previous page.")), responses((status = 200, description = "A page of executions, newest first.", body = wire::ExecutionList)))]
pub async fn list(
    state: State,
    principal: Principal,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<wire::ExecutionList>> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid_query(format!("{}; filters are state, sandbox, job, node, limit and cursor", e.body_text()))
    })?;
    let st = crate::query::named("state", q.state.as_deref(), ExecState::parse, &ExecState::ALL.map(|s| s.as_str()))?;
    let limit = crate::query::page_limit(q.limit.as_deref())?;
    if let Some(c) = &q.cursor {
        ExecutionId::parse(c)
            .ok_or_else(|| ApiError::invalid_query(format!("cursor `{c}` is not one this API returned")))?;
    }
    let rows = state
        .store
        .list_executions(&ExecutionFilter {
            state: st,
            sandbox: q.sandbox,
            job: q.job,
            node: q.node,
            // A token for some sandboxes sees their executions only.
            sandboxes_like: principal.like_patterns(),
            limit,
            cursor: q.cursor,
        })
        .await?;
    let next = if rows.len() as i64 == limit { rows.last().map(|r| r.id.to_string()) } else { None };
    let executions = rows.iter().map(execution).collect::<ApiResult<_>>()?;
    Ok(Json(wire::ExecutionList { executions, next_cursor: next }))
}

/// The execution `id`, if it is in `principal`'s sandboxes; one outside them is answered as
/// one that does not exist, so that a token learns nothing of other sandboxes (the role was
/// checked before, by the operation).
async fn find_execution(state: &crate::AppState, principal: &Principal, id: &str) -> ApiResult<ExecutionRow> {
    let not_found = || ApiError::not_found(format!("no execution with id `{id}`"));
    let id = ExecutionId::parse(id).ok_or_else(not_found)?;
    let row = state.store.get_execution(id.as_str()).await?.ok_or_else(not_found)?;
    if !principal.sees(&row) {
        return Err(not_found());
    }
    Ok(row)
}

#[utoipa::path(get, path = "/executions/{id}", operation_id = "getExecution", tag = "executions", params(("id" = String, Path, description = "Execution id (a UUID). Anything else is answered 404.")), responses((status = 200, description = "The execution, with its attempts (and a partitioned one's children).", body = wire::Execution)))]
pub async fn get(state: State, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<wire::Execution>> {
    let row = find_execution(&state, &principal, &id).await?;
    let mut v = execution(&row)?;
    let attempts = state.store.list_attempts(row.id.as_str()).await?;
    v.attempts = Some(
        attempts
            .iter()
            .enumerate()
            .map(|(i, a)| wire::Attempt {
                attempt: a.attempt,
                cause: cause(i.checked_sub(1).and_then(|p| attempts[p].outcome.as_deref())),
                node: a.node_id.clone(),
                fencing_token: a.fence.0,
                started_at: crate::rfc3339(a.started_at),
                finished_at: a.finished_at.map(crate::rfc3339),
                outcome: a.outcome.clone(),
            })
            .collect(),
    );
    if matches!(row.spec.allocation, Allocation::Partitioned { .. }) && row.parent_id.is_none() {
        let children = state.store.list_children(row.id.as_str()).await?;
        v.children = Some(children.iter().map(execution).collect::<ApiResult<_>>()?);
    }
    Ok(Json(v))
}

#[utoipa::path(post, path = "/executions/{id}/cancel", operation_id = "cancelExecution", tag = "executions", params(("id" = String, Path, description = "Execution id (a UUID). Anything else is answered 404.")), responses((status = 200, description = "Cancelled: it had not started.", body = wire::Execution), (status = 202, description = "Cancellation requested: the node running it stops it.", body = wire::Execution)))]
pub async fn cancel(
    state: State,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<wire::Execution>)> {
    let row = find_execution(&state, &principal, &id).await?;
    // Who asked, as authenticated (`token:NAME`), recorded in `cancel_requested_by`.
    let by = principal.label();
    let result = state.store.request_cancel(row.id.as_str(), &by).await.map_err(|e| match e {
        shoal_store::StoreError::Conflict(m) => ApiError::execution_finished(m),
        other => other.into(),
    })?;
    let status = match result {
        CancelResult::Cancelled => StatusCode::OK,
        CancelResult::Requested { node } => {
            if node.as_deref() == Some(state.node.id.as_str()) {
                state.engine.cancel_local(row.id.as_str(), &by);
            }
            StatusCode::ACCEPTED
        }
    };
    let row = find_execution(&state, &principal, &id).await?;
    Ok((status, Json(execution(&row)?)))
}

/// Why an attempt started, from how the one before it ended (`None`: it is the first).
fn cause(previous: Option<&str>) -> wire::AttemptCause {
    match previous {
        None => wire::AttemptCause::First,
        Some("node_lost") => wire::AttemptCause::NodeLost,
        Some("handed_back") => wire::AttemptCause::HandedBack,
        Some(_) => wire::AttemptCause::Retry,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    follow: Option<bool>,
    stream: Option<String>,
}

#[utoipa::path(get, path = "/executions/{id}/logs", operation_id = "getExecutionLogs", tag = "executions", params(("id" = String, Path, description = "Execution id (a UUID). Anything else is answered 404."), ("follow" = Option<bool>, Query, description = "Keep the response open and stream new output until the execution ends."), ("stream" = Option<wire::LogStream>, Query, description = "Which output (default both).")), responses((status = 200, description = "The output bytes. If reading fails part-way, a line `[shoal: log stream ended: ...]` ends the body.", body = String, content_type = "text/plain; charset=utf-8")))]
pub async fn logs(
    state: State,
    principal: Principal,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid_query(format!("{}; options are follow=true|false and stream=stdout|stderr", e.body_text()))
    })?;
    let want: Option<i64> = match q.stream.as_deref() {
        None | Some("both") => None,
        Some("stdout") => Some(1),
        Some("stderr") => Some(2),
        Some(other) => {
            return Err(ApiError::invalid_query(format!("unknown stream `{other}`; use stdout, stderr or both")))
        }
    };
    let row = find_execution(&state, &principal, &id).await?;
    let follow = q.follow.unwrap_or(false);
    // A live log is followed on the node that runs the attempt, which hands its followers
    // each piece of output as soon as it is stored. If that node cannot be reached, the log
    // is in the store all the same: follow it from here.
    if let Some(runner) =
        row.node_id.as_deref().filter(|n| follow && row.state == ExecState::Running && *n != state.node.id)
    {
        if request.extensions().get::<crate::forward::Forwarded>().is_none() {
            match crate::forward::forward_to_node(&state, runner, request).await {
                Ok(response) if !response.status().is_server_error() => return Ok(response),
                Ok(response) => {
                    tracing::debug!(node = runner, status = %response.status(), "following the log here instead")
                }
                Err(e) => tracing::debug!(node = runner, error = %e.message, "following the log here instead"),
            }
        }
    }
    let store = state.store.clone();
    let id = row.id.to_string();
    // Registered before the first read, so output written in between wakes it.
    let watch = follow.then(|| state.logs.follow(&id));
    // One page is read before answering, so a store error becomes a proper error response.
    let first = store.read_logs(&id, (0, -1), 256).await?;
    let stream = async_stream(store, state.metrics.clone(), id, want, watch, first);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// How long a follower waits after a failed store read before it tries again.
const FOLLOW_RETRY: Duration = Duration::from_millis(200);

fn async_stream(
    store: std::sync::Arc<shoal_store::Store>,
    metrics: std::sync::Arc<crate::Metrics>,
    id: String,
    want: Option<i64>,
    watch: Option<crate::Follow>,
    first: Vec<shoal_store::LogRow>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    struct S {
        store: std::sync::Arc<shoal_store::Store>,
        id: String,
        pos: (i64, i64),
        pending: Vec<shoal_store::LogRow>,
        done: bool,
        errors: u32,
        metrics: std::sync::Arc<crate::Metrics>,
        /// `Some` when following: woken by writes of this execution's output or end.
        watch: Option<crate::Follow>,
    }
    let follow = watch.is_some();
    let s = S { store, id, pos: (0, -1), pending: first, done: false, errors: 0, metrics, watch };
    futures::stream::unfold(s, move |mut s| async move {
        loop {
            if !s.pending.is_empty() {
                let mut out = Vec::new();
                for r in s.pending.drain(..) {
                    s.pos = (r.attempt, r.seq);
                    if want.is_none_or(|w| w == r.stream) {
                        out.extend_from_slice(&r.data);
                    }
                }
                if !out.is_empty() {
                    return Some((Ok(bytes::Bytes::from(out)), s));
                }
                continue;
            }
            if s.done {
                return None;
            }
            // Decide whether more can come *before* reading, so that output written just
            // before the execution finished is never skipped.
            if follow {
                s.metrics.log_follow_reads.fetch_add(1, Ordering::Relaxed);
            }
            let finished = if follow {
                match s.store.get_execution(&s.id).await {
                    Ok(Some(r)) => r.state.is_final(),
                    Ok(None) => true,
                    Err(_) => false,
                }
            } else {
                true
            };
            match s.store.read_logs(&s.id, s.pos, 256).await {
                Ok(rows) => {
                    s.errors = 0;
                    if rows.is_empty() {
                        if finished {
                            return None;
                        }
                        // Until this execution's output or end is written (by this node's
                        // engine, or seen by the node's one background read of all followed
                        // executions): no timer per follower.
                        if let Some(w) = s.watch.as_mut() {
                            w.changed().await;
                        }
                    } else {
                        s.pending = rows;
                    }
                }
                Err(e) => {
                    s.errors += 1;
                    if s.errors > 50 || !follow {
                        s.done = true;
                        return Some((Ok(bytes::Bytes::from(format!("\n[shoal: log stream ended: {e}]\n"))), s));
                    }
                    tokio::time::sleep(FOLLOW_RETRY).await;
                }
            }
        }
    })
}
