//! Executions: submit (from a sandbox job or an inline command), list, get, cancel, and logs
//! (`?follow=true` streams them while the attempt runs, from whichever node is asked).

use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::files::{open_root, resolve_error};
use crate::sandboxes::{find, held_elsewhere};
use crate::State;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shoal_core::{Allocation, ExecState, ExecutionId, JobKind, JobSpec, ParamError, RunSpec, SandboxKind, SandboxPath};
use shoal_store::{CancelResult, ExecutionFilter, ExecutionRow, NewExecution, Submitted};
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
        state: crate::convert::exec_state(e.state),
        reason: crate::convert::named("execution reason", &e.reason)?,
        message: e.message.clone(),
        exit_code: e.exit_code,
        signal: e.signal,
        attempt: e.attempt,
        node: e.node_id.clone(),
        params: e.params.clone(),
        priority: e.spec.priority,
        timeout_ms: e.spec.timeout_ms,
        retries: e.spec.retries,
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

fn duration_field(name: &str, v: &Option<String>) -> ApiResult<Option<Duration>> {
    v.as_ref()
        .map(|t| shoal_core::duration::parse(t).map_err(|m| ApiError::invalid_request(format!("{name}: {m}"))))
        .transpose()
}

/// Reads and validates a job file from a sandbox.
pub(crate) async fn load_job(root: &str, job: &SandboxPath) -> ApiResult<JobSpec> {
    let root = root.to_owned();
    let shown = job.to_string();
    let rel = job.to_relative();
    let text = tokio::task::spawn_blocking(move || {
        let dir = open_root(&root)?;
        let meta = dir.metadata(&rel).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::unknown_job(format!("no job file `{shown}` in this sandbox")),
            _ => resolve_error(&shown, e),
        })?;
        if meta.len() > shoal_core::job::MAX_JOB_FILE_BYTES as u64 {
            return Err(ApiError::invalid_job(format!(
                "job file `{shown}` is over {} bytes",
                shoal_core::job::MAX_JOB_FILE_BYTES
            )));
        }
        // Bounded: the file may have grown since its size was read.
        crate::sandboxes::read_job_text(&dir, &rel)
            .map_err(|e| resolve_error(&shown, e))?
            .ok_or_else(|| job_too_large(&shown))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    JobSpec::parse(&text).map_err(|e| {
        ApiError::invalid_job(format!("{}: {}", job, e)).with_details(json!({
            "file": job.to_string(), "line": e.line, "column": e.column, "message": e.message,
        }))
    })
}

fn job_too_large(shown: &str) -> ApiError {
    ApiError::invalid_job(format!("job file `{shown}` is over {} bytes", shoal_core::job::MAX_JOB_FILE_BYTES))
}

/// Refuses a workdir that resolves outside the sandbox root through a symlink. The lexical
/// check (no `..`, not absolute) is the core's; this one reads the folder, so it is made
/// where the folder is (the runner checks again right before the job starts, which also
/// catches a symlink swapped in after submission). A workdir that does not exist yet is
/// checked as far as it exists.
async fn check_workdir_resolves_inside(root: &str, workdir: &str) -> Result<(), String> {
    let (root, workdir) = (std::path::PathBuf::from(root), workdir.to_owned());
    tokio::task::spawn_blocking(move || {
        let Ok(real_root) = std::fs::canonicalize(&root) else {
            // No folder to escape from; the attempt fails at start with a clear message.
            return Ok(());
        };
        let rel = SandboxPath::parse(&workdir).map_err(|e| format!("workdir: {e}"))?;
        let (mut path, mut existing) = (root.clone(), None);
        for part in rel.parts() {
            path.push(part);
            if std::fs::symlink_metadata(&path).is_err() {
                break;
            }
            existing = Some(path.clone());
        }
        let Some(existing) = existing else { return Ok(()) };
        match std::fs::canonicalize(&existing) {
            Ok(real) if real.starts_with(&real_root) => Ok(()),
            Ok(real) => Err(format!(
                "workdir `{workdir}` resolves to {} through a symlink, outside the sandbox root; it is refused",
                real.display()
            )),
            Err(e) => Err(format!("workdir `{workdir}` cannot be resolved inside the sandbox ({e}); it is refused")),
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("cannot check workdir: {e}")))
}

#[utoipa::path(post, path = "/executions", operation_id = "submitExecution", tag = "executions", request_body = wire::SubmitRequest, params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "1 to 255 visible ASCII characters. A request repeated with the same key and body answers the execution the first created (200); with another body 422 `idempotency_key_reused`.")), responses((status = 201, description = "Queued: the execution's row is committed.", body = wire::Execution), (status = 200, description = "Replayed: an earlier request with the same `Idempotency-Key` and body created this execution.", body = wire::Execution)))]
pub async fn submit(state: State, request: axum::extract::Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let (req, raw): (wire::SubmitRequest, Value) = body::json(headers, body, state.limits.max_request_bytes).await?;
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
    let mut params = crate::jobs::params_from_json(&req.params)?;
    let sandbox = match &req.sandbox {
        Some(name) => Some(find(&state, name).await.map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::unknown_sandbox(format!("no sandbox named `{name}`; create it first or check the name"))
            } else {
                e
            }
        })?),
        None => None,
    };
    let pinned_node = sandbox.as_ref().and_then(|s| match s.kind {
        SandboxKind::Local => s.node_id.clone(),
        SandboxKind::Shared | SandboxKind::Partitioned => None,
    });
    if let Some(s) = sandbox.as_ref().filter(|s| s.kind == SandboxKind::Partitioned) {
        return Err(ApiError::invalid_request(format!(
            "sandbox `{}` is partitioned: keep job files in a shared sandbox and run them with allocation kind `partitioned` and sandbox = \"{}\"",
            s.name, s.name
        )));
    }
    let (job_path, mut spec) = match (&req.job, &req.command) {
        (Some(_), Some(_)) => return Err(ApiError::invalid_request("give either `job` or `command`, not both")),
        (None, None) => {
            return Err(ApiError::invalid_request(
                "give `job` (with `sandbox`) to run a job file, or `command` to run a command",
            ))
        }
        (Some(job), None) => {
            let Some(sandbox) = &sandbox else {
                return Err(ApiError::invalid_request("`job` needs `sandbox`: the sandbox that holds the job file"));
            };
            let inline_only = req.env.is_empty()
                && req.workdir.is_none()
                && req.timeout.is_none()
                && req.retries.is_none()
                && req.retry_backoff.is_none()
                && req.on_node_loss.is_none()
                && req.allocation.is_none()
                && req.allow_pending.is_none();
            if !inline_only {
                return Err(ApiError::invalid_request(
                    "`env`, `workdir`, `timeout`, `retries`, `retry_backoff`, `on_node_loss`, `allocation` and `allow_pending` are set in the job file, not in the request; only `params` and `priority` go with `job`",
                ));
            }
            if let Some(holder) = held_elsewhere(&state, sandbox) {
                // The job file is only on its holder: that node reads it and enqueues.
                let request = axum::extract::Request::from_parts(parts, Body::from(raw.to_string()));
                return crate::forward::to_sandbox_holder(&state, &sandbox.name, holder, request).await;
            }
            let path = SandboxPath::parse(job).map_err(|e| ApiError::invalid_path(e.to_string()))?;
            let spec = load_job(&sandbox.root, &path).await?;
            let bound = spec.bind_params(&params).map_err(|e| match &e {
                ParamError::Missing(_) => ApiError::missing_parameter(e.to_string()),
                ParamError::Unknown { .. } => ApiError::unknown_parameter(e.to_string()),
            })?;
            params = bound.clone();
            let resolved = spec.resolve(&bound);
            // The file was valid, so anything wrong now came in through a parameter value.
            resolved
                .validate()
                .map_err(|m| ApiError::invalid_parameter(format!("job `{path}` with these parameters: {m}")))?;
            if let Some(w) = &resolved.workdir {
                check_workdir_resolves_inside(&sandbox.root, w)
                    .await
                    .map_err(|m| ApiError::invalid_job(format!("job `{path}`: {m}")))?;
            }
            (Some(path.to_string()), resolved)
        }
        (None, Some(command)) => {
            if command.is_empty() || command[0].is_empty() {
                return Err(ApiError::invalid_request("`command` is empty; its first element is the program to run"));
            }
            if !params.is_empty() {
                return Err(ApiError::unknown_parameter(
                    "an inline command takes no `params`; put the values in `command` or `env`",
                ));
            }
            if let Some(k) = req.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0']) || k.starts_with("SHOAL_"))
            {
                return Err(ApiError::invalid_request(format!("invalid environment variable name `{}`; names may not be empty, contain `=` or a NUL byte, or start with `SHOAL_`", k.escape_debug())));
            }
            if let Some(w) = &req.workdir {
                SandboxPath::parse(w).map_err(|e| ApiError::invalid_path(format!("workdir: {e}")))?;
                if sandbox.is_none() {
                    return Err(ApiError::invalid_request("`workdir` is relative to a sandbox; give `sandbox` too"));
                }
            }
            let mut spec = RunSpec::inline(command.clone());
            spec.env = req.env.clone();
            spec.workdir = req.workdir.clone();
            spec.timeout_ms = duration_field("timeout", &req.timeout)?.map(|d| d.as_millis() as u64);
            if spec.timeout_ms == Some(0) {
                return Err(ApiError::invalid_request("timeout must be more than zero; leave it out for no timeout"));
            }
            spec.retries = req.retries.unwrap_or(0);
            if spec.retries > shoal_core::job::MAX_RETRIES {
                return Err(ApiError::invalid_request(format!(
                    "retries is {}; the most allowed is {}",
                    spec.retries,
                    shoal_core::job::MAX_RETRIES
                )));
            }
            if let Some(b) = duration_field("retry_backoff", &req.retry_backoff)? {
                spec.retry_backoff_ms = b.as_millis() as u64;
            }
            spec.on_node_loss = req.on_node_loss.map(crate::convert::on_node_loss).unwrap_or_default();
            spec.allocation = req.allocation.clone().map(crate::convert::allocation).unwrap_or_default();
            spec.allow_pending = req.allow_pending.unwrap_or(false);
            spec.validate().map_err(ApiError::invalid_request)?;
            if let (Some(w), Some(s)) = (&spec.workdir, &sandbox) {
                // A local sandbox held elsewhere is checked by its holder's runner at start.
                if held_elsewhere(&state, s).is_none() {
                    check_workdir_resolves_inside(&s.root, w).await.map_err(ApiError::invalid_request)?;
                }
            }
            (None, spec)
        }
    };
    if let Some(p) = req.priority {
        spec.priority = p;
    }
    if let Allocation::Nodes { nodes } = &spec.allocation {
        if nodes.is_empty() {
            return Err(ApiError::invalid_request("allocation `nodes` needs at least one node id"));
        }
    }
    if !spec.allow_pending {
        check_allocation_targets(&state, &spec.allocation).await?;
    }
    let partitioned = match &spec.allocation {
        Allocation::Partitioned { sandbox: parts } => Some(partitions_of(&state, parts).await?),
        _ => None,
    };
    let new = NewExecution {
        sandbox: req.sandbox.clone(),
        job: job_path,
        params,
        spec,
        pinned_node,
        idempotency,
        run_after: None,
    };
    let submitted = match partitioned {
        None => state.submitter.submit(new).await?,
        Some((parts, list)) => {
            if new.pinned_node.is_some() {
                return Err(ApiError::invalid_request(
                    "a job of a local sandbox runs on its holder only and cannot be partitioned; keep it in a shared sandbox",
                ));
            }
            let children: Vec<(String, NewExecution)> = list
                .iter()
                .map(|p| {
                    let mut spec = new.spec.clone();
                    spec.allocation = Allocation::Any;
                    spec.env.insert("SHOAL_PARTITION".into(), p.name.clone());
                    spec.env.insert("SHOAL_PARTITION_ROOT".into(), p.root.clone());
                    spec.env.insert("SHOAL_PARTITIONED_SANDBOX".into(), parts.clone());
                    let child = NewExecution {
                        sandbox: new.sandbox.clone(),
                        job: new.job.clone(),
                        params: new.params.clone(),
                        spec,
                        pinned_node: Some(p.node.clone()),
                        idempotency: None,
                        run_after: None,
                    };
                    (p.name.clone(), child)
                })
                .collect();
            state.store.submit_partitioned(&new, &children).await?
        }
    };
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

/// The partitions a `partitioned` allocation runs on: its sandbox must exist and be partitioned.
async fn partitions_of(state: &crate::AppState, name: &str) -> ApiResult<(String, Vec<shoal_core::Partition>)> {
    let s = state.store.get_sandbox(name).await?.ok_or_else(|| {
        ApiError::unknown_sandbox(format!("allocation `partitioned` names sandbox `{name}`, which does not exist"))
    })?;
    if s.kind != SandboxKind::Partitioned {
        return Err(ApiError::invalid_request(format!(
            "allocation `partitioned` names sandbox `{name}`, which is {}, not partitioned",
            s.kind
        )));
    }
    Ok((s.name, s.partitions))
}

/// Refuses an allocation no node of the cluster could ever take (a misspelt node id or tag),
/// rather than queueing work that would wait forever. Nodes that are registered but down
/// count: their work waits for them.
async fn check_allocation_targets(state: &crate::AppState, allocation: &Allocation) -> ApiResult<()> {
    let known = || async { state.store.list_nodes().await.map_err(ApiError::from) };
    match allocation {
        Allocation::Any => Ok(()),
        Allocation::Partitioned { sandbox } => {
            let known = known().await?;
            let (_, parts) = partitions_of(state, sandbox).await?;
            match parts.iter().find(|p| !known.iter().any(|k| k.id == p.node)) {
                None => Ok(()),
                Some(p) => Err(ApiError::unknown_node(format!(
                    "partition `{}` of sandbox `{sandbox}` is on node `{}`, which has never joined the cluster; fix the sandbox, or set allow_pending = true to queue until it joins",
                    p.name, p.node
                ))),
            }
        }
        Allocation::Nodes { nodes } => {
            let known = known().await?;
            match nodes.iter().find(|n| !known.iter().any(|k| &k.id == *n)) {
                None => Ok(()),
                Some(missing) => Err(ApiError::unknown_node(format!(
                    "allocation names node `{missing}`, which has never joined the cluster (known nodes: {}); fix the id, or set allow_pending = true to queue until it joins",
                    known.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
        Allocation::Tags { tags } => {
            let known = known().await?;
            if known.iter().any(|k| tags.iter().all(|t| k.tags.contains(t))) {
                return Ok(());
            }
            let missing: Vec<&str> =
                tags.iter().filter(|t| !known.iter().any(|k| k.tags.contains(t))).map(String::as_str).collect();
            let what = if missing.is_empty() {
                format!("no node carries all of the tags {}", tags.join(", "))
            } else {
                format!("no node carries the tag `{}`", missing.join("`, `"))
            };
            Err(ApiError::unknown_tag(format!(
                "allocation needs {what}; fix the tags, or set allow_pending = true to queue until such a node joins"
            )))
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
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<wire::ExecutionList>> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid_query(format!("{}; filters are state, sandbox, job, node, limit and cursor", e.body_text()))
    })?;
    let st = match &q.state {
        Some(s) => Some(ExecState::parse(s).ok_or_else(|| {
            ApiError::invalid_query(format!(
                "unknown state `{s}`; use one of {}",
                ExecState::ALL.map(|s| s.as_str()).join(", ")
            ))
        })?),
        None => None,
    };
    let limit = match &q.limit {
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::invalid_query(format!("limit `{l}` must be a whole number from 1 to 1000")))?,
        None => 50,
    };
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
            limit,
            cursor: q.cursor,
        })
        .await?;
    let next = if rows.len() as i64 == limit { rows.last().map(|r| r.id.to_string()) } else { None };
    let executions = rows.iter().map(execution).collect::<ApiResult<_>>()?;
    Ok(Json(wire::ExecutionList { executions, next_cursor: next }))
}

async fn find_execution(state: &crate::AppState, id: &str) -> ApiResult<ExecutionRow> {
    let not_found = || ApiError::not_found(format!("no execution with id `{id}`"));
    let id = ExecutionId::parse(id).ok_or_else(not_found)?;
    state.store.get_execution(id.as_str()).await?.ok_or_else(not_found)
}

#[utoipa::path(get, path = "/executions/{id}", operation_id = "getExecution", tag = "executions", params(("id" = String, Path, description = "Execution id (a UUID). Anything else is answered 404.")), responses((status = 200, description = "The execution, with its attempts (and a partitioned one's children).", body = wire::Execution)))]
pub async fn get(state: State, Path(id): Path<String>) -> ApiResult<Json<wire::Execution>> {
    let row = find_execution(&state, &id).await?;
    let mut v = execution(&row)?;
    let attempts = state.store.list_attempts(row.id.as_str()).await?;
    v.attempts = Some(
        attempts
            .iter()
            .map(|a| wire::Attempt {
                attempt: a.attempt,
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

#[utoipa::path(post, path = "/executions/{id}/cancel", operation_id = "cancelExecution", tag = "executions", params(("id" = String, Path, description = "Execution id (a UUID). Anything else is answered 404."), ("X-Shoal-User" = Option<String>, Header, description = "Who asks, recorded in `cancel_requested_by` (default `api`).")), responses((status = 200, description = "Cancelled: it had not started.", body = wire::Execution), (status = 202, description = "Cancellation requested: the node running it stops it.", body = wire::Execution)))]
pub async fn cancel(
    state: State,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<wire::Execution>)> {
    let row = find_execution(&state, &id).await?;
    let by = headers
        .get("x-shoal-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() < 128)
        .unwrap_or("api")
        .to_owned();
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
    let row = find_execution(&state, &id).await?;
    Ok((status, Json(execution(&row)?)))
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
    let row = find_execution(&state, &id).await?;
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
