//! Sandboxes: registering the folders that hold job files and data, and listing their jobs.

use crate::auth::Principal;
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::files::{open_root, resolve_error};
use crate::forward;
use crate::State;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use shoal_core::{JobSpec, Role, SandboxKind, SandboxName};
use shoal_store::SandboxRow;
use shoal_wire as wire;

type RawPartition = wire::PartitionRequest;

/// Checks a partitioned sandbox's parts (422 for a missing field, an overlap, a duplicate name,
/// or a node that has never joined).
async fn partitions(state: &crate::AppState, raw: Option<Vec<RawPartition>>) -> ApiResult<Vec<shoal_core::Partition>> {
    let raw = raw.ok_or_else(|| {
        ApiError::invalid_partitions(
            "a partitioned sandbox needs `partitions`: a list of {\"name\", \"node\", \"root\"}, one per part",
        )
    })?;
    let mut parts = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let missing = |field: &str| {
            ApiError::invalid_partitions(format!(
                "partition {} has no `{field}`; each needs name, node and root",
                i + 1
            ))
        };
        parts.push(shoal_core::Partition {
            name: p.name.ok_or_else(|| missing("name"))?,
            node: p.node.ok_or_else(|| missing("node"))?,
            root: p.root.ok_or_else(|| missing("root"))?,
        });
    }
    shoal_core::validate_partitions(&parts).map_err(ApiError::invalid_partitions)?;
    // Checked against this node's allowed folders, resolved on this machine: the nodes of a
    // cluster are meant to share `sandboxes.allowed_roots` (docs/configuration.md).
    let (roots, given) = (state.roots.clone(), parts.iter().map(|p| p.root.clone()).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || given.iter().try_for_each(|r| roots.check(r).map(|_| ())))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let known = state.store.list_nodes().await?;
    if let Some(p) = parts.iter().find(|p| !known.iter().any(|k| k.id == p.node)) {
        return Err(ApiError::unknown_node(format!(
            "partition `{}` is on node `{}`, which has never joined the cluster; start that node first or fix the id",
            p.name, p.node
        )));
    }
    Ok(parts)
}

/// A sandbox row as the API shows it.
pub fn sandbox(s: &SandboxRow) -> wire::Sandbox {
    wire::Sandbox {
        name: s.name.clone(),
        kind: s.kind,
        root: s.root.clone(),
        node: s.node_id.clone(),
        partitions: s
            .partitions
            .iter()
            .map(|p| wire::Partition { name: p.name.clone(), node: p.node.clone(), root: p.root.clone() })
            .collect(),
        created_at: crate::rfc3339(s.created_at),
    }
}

#[utoipa::path(get, path = "/sandboxes", operation_id = "listSandboxes", tag = "sandboxes", responses((status = 200, description = "Every sandbox.", body = wire::SandboxList)))]
pub async fn list(state: State, principal: Principal) -> ApiResult<Json<wire::SandboxList>> {
    let rows = state.store.list_sandboxes().await?;
    let shown = rows.iter().filter(|s| principal.covers(Some(&s.name)));
    Ok(Json(wire::SandboxList { sandboxes: shown.map(sandbox).collect() }))
}

/// Looks a sandbox up by name, answering 404 for a bad or unknown name.
pub async fn find(state: &crate::AppState, name: &str) -> ApiResult<SandboxRow> {
    SandboxName::parse(name).map_err(|_| ApiError::not_found(format!("no sandbox named `{name}`")))?;
    state.store.get_sandbox(name).await?.ok_or_else(|| ApiError::not_found(format!("no sandbox named `{name}`")))
}

/// The other node that holds `s`, if any: a local sandbox's files are only on its holder, so
/// requests that read or write them are forwarded there ([`forward::to_sandbox_holder`])
/// rather than answered from an empty folder here.
/// The files a request is about: a partitioned sandbox's files are those of one partition,
/// chosen with `?partition=NAME`, and behave like a local sandbox on the partition's node.
pub fn locate(s: SandboxRow, query: Option<&str>) -> ApiResult<SandboxRow> {
    if s.kind != SandboxKind::Partitioned {
        return Ok(s);
    }
    let names = || s.partitions.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let wanted =
        query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("partition=")).ok_or_else(|| {
            ApiError::invalid_query(format!(
                "sandbox `{}` is partitioned: say which partition with ?partition=NAME (one of {})",
                s.name,
                names()
            ))
        })?;
    let part = s.partitions.iter().find(|p| p.name == wanted).ok_or_else(|| {
        ApiError::not_found(format!("sandbox `{}` has no partition `{wanted}` (it has {})", s.name, names()))
    })?;
    Ok(SandboxRow {
        kind: SandboxKind::Local,
        root: part.root.clone(),
        node_id: Some(part.node.clone()),
        name: s.name.clone(),
        created_at: s.created_at,
        partitions: Vec::new(),
    })
}

pub fn held_elsewhere<'a>(state: &crate::AppState, s: &'a SandboxRow) -> Option<&'a str> {
    match (&s.kind, &s.node_id) {
        (SandboxKind::Local, Some(node)) if *node != state.node.id => Some(node),
        _ => None,
    }
}

#[utoipa::path(get, path = "/sandboxes/{name}", operation_id = "getSandbox", tag = "sandboxes", params(("name" = String, Path, description = "Sandbox name.")), responses((status = 200, description = "The sandbox.", body = wire::Sandbox)))]
pub async fn get(state: State, principal: Principal, Path(name): Path<String>) -> ApiResult<Json<wire::Sandbox>> {
    principal.require(Role::Viewer, Some(&name), "reading a sandbox")?;
    Ok(Json(sandbox(&find(&state, &name).await?)))
}

#[utoipa::path(post, path = "/sandboxes", operation_id = "createSandbox", tag = "sandboxes", request_body = wire::CreateSandboxRequest, responses((status = 201, description = "Registered; a `local` sandbox by its holder (the request is forwarded there).", body = wire::Sandbox)))]
pub async fn create(state: State, principal: Principal, request: Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let (req, raw): (wire::CreateSandboxRequest, Value) =
        body::json(&parts.headers, body, state.limits.max_request_bytes).await?;
    principal.require(Role::Admin, Some(&req.name), "registering a sandbox")?;
    let name = SandboxName::parse(&req.name).map_err(ApiError::invalid_request)?;
    let kind = SandboxKind::parse(&req.kind).map_err(ApiError::invalid_request)?;
    if kind == SandboxKind::Partitioned {
        if req.root.is_some() || req.node.is_some() {
            return Err(ApiError::invalid_partitions(
                "a partitioned sandbox has no `root` or `node` of its own; give each partition its node and root",
            ));
        }
        let parts = partitions(&state, req.partitions).await?;
        let row = state.store.create_sandbox(name.as_str(), kind, "", None, &parts).await.map_err(|e| match e {
            shoal_store::StoreError::Conflict(m) => ApiError::already_exists(m),
            other => other.into(),
        })?;
        return Ok((StatusCode::CREATED, Json(sandbox(&row))).into_response());
    }
    if req.partitions.is_some() {
        return Err(ApiError::invalid_request("`partitions` is only for sandboxes of kind `partitioned`"));
    }
    let root_text = req.root.clone().ok_or_else(|| {
        ApiError::invalid_request("`root` is missing: the absolute path of the sandbox's folder on the node")
    })?;
    if !std::path::Path::new(&root_text).is_absolute() {
        return Err(ApiError::invalid_request(format!(
            "root `{root_text}` is not an absolute path; give the sandbox folder's full path on the node"
        )));
    }
    let node = match kind {
        SandboxKind::Shared => {
            if req.node.is_some() {
                return Err(ApiError::invalid_request(
                    "a shared sandbox is on every node; `node` is only for local sandboxes",
                ));
            }
            None
        }
        SandboxKind::Local => {
            if let Some(n) = &req.node {
                shoal_core::NodeId::parse(n).map_err(|m| {
                    ApiError::invalid_request(format!("`node` must be the id of the node that holds the sandbox: {m}"))
                })?;
            }
            Some(req.node.unwrap_or_else(|| state.node.id.clone()))
        }
        SandboxKind::Partitioned => None,
    };
    if let Some(holder) = node.as_deref().filter(|n| *n != state.node.id) {
        // A holder that is down is a reason to retry (503); one that never joined is a mistake.
        if !state.store.list_nodes().await?.iter().any(|k| k.id == holder) {
            return Err(ApiError::unknown_node(format!(
                "node `{holder}` has never joined the cluster, so it cannot hold sandbox `{}`; start that node first or fix the id",
                name.as_str()
            )));
        }
        // The folder is created on the holder, so the holder registers the sandbox.
        let request = Request::from_parts(parts, Body::from(raw.to_string()));
        return forward::to_sandbox_holder(&state, name.as_str(), holder, request).await;
    }
    // The holder checks the root against its own allowed folders and the other sandboxes'
    // folders on this machine, and creates it.
    let here = &state.node.id;
    let mut others = Vec::new();
    // One of the same name is answered `already_exists` by the store.
    for s in state.store.list_sandboxes().await?.into_iter().filter(|s| s.name != name.as_str()) {
        match s.kind {
            SandboxKind::Shared => others.push((s.name.clone(), s.root.clone())),
            SandboxKind::Local if s.node_id.as_deref() == Some(here.as_str()) => {
                others.push((s.name.clone(), s.root.clone()))
            }
            _ => {}
        }
        for p in s.partitions.iter().filter(|p| p.node == *here) {
            others.push((format!("{} (partition {})", s.name, p.name), p.root.clone()));
        }
    }
    let (roots, shown) = (state.roots.clone(), root_text.clone());
    tokio::task::spawn_blocking(move || -> ApiResult<()> {
        let root = roots.check(&shown)?;
        roots.check_apart(&root, &others)?;
        std::fs::create_dir_all(&root)
            .map_err(|e| ApiError::invalid_request(format!("cannot create the sandbox folder {shown}: {e}")))?;
        // Made now, it resolves fully: check again (a symlink among the new folders).
        roots.check(&shown)?;
        Ok(())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let row =
        state.store.create_sandbox(name.as_str(), kind, &root_text, node.as_deref(), &[]).await.map_err(
            |e| match e {
                shoal_store::StoreError::Conflict(m) => ApiError::already_exists(m),
                other => other.into(),
            },
        )?;
    Ok((StatusCode::CREATED, Json(sandbox(&row))).into_response())
}

#[utoipa::path(delete, path = "/sandboxes/{name}", operation_id = "deleteSandbox", tag = "sandboxes", params(("name" = String, Path, description = "Sandbox name.")), responses((status = 204, description = "Unregistered; its folder is left as it is.")))]
pub async fn delete(state: State, principal: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    principal.require(Role::Admin, Some(&name), "deleting a sandbox")?;
    find(&state, &name).await?;
    state.store.delete_sandbox(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every `*.toml` under the sandbox's `jobs/` folder, and whether it is a valid job. A file
/// over the size limit is listed as invalid without being read.
#[utoipa::path(get, path = "/sandboxes/{name}/jobs", operation_id = "listSandboxJobs", tag = "sandboxes", params(("name" = String, Path, description = "Sandbox name.")), responses((status = 200, description = "The `*.toml` files under the sandbox's `jobs/` folder.", body = wire::JobList)))]
pub async fn jobs(
    state: State,
    principal: Principal,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    principal.require(Role::Viewer, Some(&name), "listing a sandbox's jobs")?;
    let sandbox = find(&state, &name).await?;
    if let Some(holder) = held_elsewhere(&state, &sandbox) {
        return forward::to_sandbox_holder(&state, &sandbox.name, holder, request).await;
    }
    let root = sandbox.root.clone();
    let jobs = tokio::task::spawn_blocking(move || -> ApiResult<Vec<wire::JobEntry>> {
        let dir = open_root(&root)?;
        let mut out = Vec::new();
        let mut stack = vec![std::path::PathBuf::from("jobs")];
        while let Some(folder) = stack.pop() {
            let entries = match dir.read_dir(&folder) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(resolve_error(&folder.display().to_string(), e)),
            };
            for entry in entries.flatten() {
                let path = folder.join(entry.file_name());
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() && path.extension().is_some_and(|e| e == "toml") {
                    let shown = path.display().to_string();
                    let limit = shoal_core::job::MAX_JOB_FILE_BYTES;
                    let too_large = |size: Option<u64>| {
                        let size = size.map(|n| format!(" ({n} bytes)")).unwrap_or_default();
                        format!("the job file is too large{size}; the limit is {limit} bytes, so it was not read")
                    };
                    let text = match entry.metadata() {
                        Ok(m) if m.len() > limit as u64 => Err(too_large(Some(m.len()))),
                        Ok(_) => match shoal_service::job_file::read_text(&dir, &path) {
                            Ok(Some(t)) => Ok(t),
                            Ok(None) => Err(too_large(None)),
                            Err(e) => Err(e.to_string()),
                        },
                        Err(e) => Err(e.to_string()),
                    };
                    out.push(match text.and_then(|t| JobSpec::parse(&t).map_err(|e| e.to_string())) {
                        Ok(job) => wire::JobEntry {
                            path: shown,
                            valid: true,
                            description: job.description,
                            params: Some(
                                job.params
                                    .iter()
                                    .map(|(k, p)| wire::JobParam {
                                        name: k.clone(),
                                        default: p.default.clone(),
                                        required: p.default.is_none(),
                                        description: p.description.clone(),
                                    })
                                    .collect(),
                            ),
                            error: None,
                        },
                        Err(e) => wire::JobEntry {
                            path: shown,
                            valid: false,
                            description: None,
                            params: None,
                            error: Some(e),
                        },
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(wire::JobList { sandbox: name, jobs }).into_response())
}
