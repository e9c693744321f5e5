//! Sandbox files: list a folder, download, upload and delete, confined to the sandbox root.
//!
//! Confinement has two halves. [`SandboxPath`] refuses absolute paths and `..` before any IO.
//! Then every file operation goes through a `cap_std` directory handle on the sandbox root,
//! which refuses to resolve a path (including through symlinks) to anything outside it.
//! Uploads are written to a temporary file beside the target and renamed into place, so a
//! failed or oversized upload leaves nothing behind and readers never see half a file.
//! Those temporaries (`.shoal-upload-*`, [`shoal_core::path::UPLOAD_TEMP_PREFIX`]) are never
//! listed, downloaded or deleted here (404), nor uploaded to (400 `invalid_path`); a node
//! removes the ones a crash left in its local sandboxes when it starts.
//!
//! The files of a `local` sandbox held by another node are served by that node: each handler
//! forwards such a request before it reads the body, so an upload streams straight through.

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::forward;
use crate::sandboxes::{find, held_elsewhere};
use crate::State;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use futures::StreamExt;
use shoal_core::{Role, SandboxPath};
use shoal_wire as wire;
use std::io;
use tokio::io::AsyncWriteExt;

pub fn open_root(root: &str) -> ApiResult<Dir> {
    Dir::open_ambient_dir(root, ambient_authority())
        .map_err(|e| ApiError::internal(format!("cannot open the sandbox folder {root}: {e}")))
}

/// Maps an IO error on a sandbox path to the API's errors.
pub fn resolve_error(path: &str, e: io::Error) -> ApiError {
    let text = e.to_string();
    if text.contains("outside of the filesystem") || text.contains("escape") {
        return ApiError::invalid_path(format!(
            "path `{path}` leads outside the sandbox (through a symlink); it is refused"
        ));
    }
    match e.kind() {
        io::ErrorKind::NotFound => ApiError::not_found(format!("no file or folder `{path}` in this sandbox")),
        io::ErrorKind::IsADirectory => ApiError::conflict(format!("`{path}` is a folder")),
        io::ErrorKind::NotADirectory => ApiError::conflict(format!("a part of `{path}` is a file, not a folder")),
        io::ErrorKind::AlreadyExists => ApiError::conflict(format!("`{path}` already exists as a folder")),
        io::ErrorKind::DirectoryNotEmpty => {
            ApiError::conflict(format!("folder `{path}` is not empty; delete its files first"))
        }
        io::ErrorKind::PermissionDenied => ApiError::invalid_path(format!("path `{path}` is not accessible: {e}")),
        io::ErrorKind::InvalidFilename => ApiError::invalid_path(format!("path `{path}` is refused: {e}")),
        _ => ApiError::internal(format!("file operation on `{path}` failed: {e}")),
    }
}

/// Refuses a path any of whose existing folders is a symlink that leads out of the sandbox.
/// cap-std already refuses to *follow* such links; this turns the refusal into a clear 400
/// even where an operation would otherwise fail another way (creating a folder over it).
fn check_escape(dir: &Dir, path: &SandboxPath, shown: &str) -> ApiResult<()> {
    let mut prefix = std::path::PathBuf::new();
    for part in path.parts() {
        prefix.push(part);
        match dir.symlink_metadata(&prefix) {
            Ok(m) if m.is_symlink() => {
                if let Err(e) = dir.metadata(&prefix) {
                    if e.kind() != io::ErrorKind::NotFound {
                        return Err(resolve_error(shown, e));
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

fn parse_path(raw: &str) -> ApiResult<SandboxPath> {
    SandboxPath::parse(raw).map_err(|e| ApiError::invalid_path(e.to_string()))
}

fn names_upload_temp(path: &SandboxPath) -> bool {
    path.parts().iter().any(|p| shoal_core::path::is_upload_temp(p))
}

/// A path that names an upload temporary is answered as if nothing were there.
fn hide_upload_temp(path: &SandboxPath) -> ApiResult<()> {
    if names_upload_temp(path) {
        return Err(ApiError::not_found(format!("no file or folder `{path}` in this sandbox")));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?
}

#[utoipa::path(get, path = "/sandboxes/{name}/files", operation_id = "listSandboxRoot", tag = "files", params(("name" = String, Path, description = "Sandbox name."), ("partition" = Option<String>, Query, description = "Partitioned sandboxes only, and required there: which partition's files.")), responses((status = 200, description = "The root folder's listing.", body = wire::FolderListing)))]
pub async fn get_root(
    state: State,
    principal: Principal,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    serve_get(state, principal, name, String::new(), request).await
}

#[utoipa::path(get, path = "/sandboxes/{name}/files/", operation_id = "listSandboxRootSlash", tag = "files", params(("name" = String, Path, description = "Sandbox name."), ("partition" = Option<String>, Query, description = "Partitioned sandboxes only, and required there: which partition's files.")), responses((status = 200, description = "The root folder's listing (as without the trailing slash).", body = wire::FolderListing)))]
pub async fn get_root_slash(
    state: State,
    principal: Principal,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    serve_get(state, principal, name, String::new(), request).await
}

#[utoipa::path(get, path = "/sandboxes/{name}/files/{*path}", operation_id = "getSandboxFile", tag = "files", params(("name" = String, Path, description = "Sandbox name."), ("path" = String, Path, allow_reserved, description = "Path inside the sandbox, relative to its root; may contain `/`. Absolute paths, `..`, NUL bytes, paths over 4096 bytes, names over 255 bytes and paths that are not UTF-8 once percent-decoded are refused (400 `invalid_path`), as are paths that lead outside the sandbox through a symlink. Upload temporaries (`.shoal-upload-*`) are never listed, downloaded or deleted (404 `not_found`) nor uploaded to (400 `invalid_path`)."), ("partition" = Option<String>, Query, description = "Partitioned sandboxes only, and required there: which partition's files.")), responses((status = 200, description = "A folder: its listing as JSON. A file: its bytes.", content((wire::FolderListing = "application/json"), (Vec<u8> = "application/octet-stream")))))]
pub async fn get(
    state: State,
    principal: Principal,
    Path((name, path)): Path<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    serve_get(state, principal, name, path, request).await
}

enum Found {
    Folder(Vec<wire::FileEntry>),
    File(std::fs::File, u64),
}

async fn serve_get(
    state: State,
    principal: Principal,
    name: String,
    raw: String,
    request: Request,
) -> ApiResult<Response> {
    principal.require(Role::Viewer, Some(&name), "reading files")?;
    let sandbox = crate::sandboxes::locate(find(&state, &name).await?, request.uri().query())?;
    if let Some(holder) = held_elsewhere(&state, &sandbox) {
        return forward::to_sandbox_holder(&state, &sandbox.name, holder, request).await;
    }
    let path = parse_path(&raw)?;
    hide_upload_temp(&path)?;
    let shown = path.to_string();
    let found = blocking(move || {
        let dir = open_root(&sandbox.root)?;
        check_escape(&dir, &path, &shown)?;
        let rel = path.to_relative();
        let meta = dir.metadata(&rel).map_err(|e| resolve_error(&shown, e))?;
        if meta.is_dir() {
            let sub = dir.open_dir(&rel).map_err(|e| resolve_error(&shown, e))?;
            let mut entries = Vec::new();
            for entry in sub.entries().map_err(|e| resolve_error(&shown, e))?.flatten() {
                let fname = entry.file_name().to_string_lossy().into_owned();
                if shoal_core::path::is_upload_temp(&fname) {
                    continue;
                }
                let Ok(m) = entry.metadata() else { continue };
                let child = if shown.is_empty() { fname.clone() } else { format!("{shown}/{fname}") };
                let kind = if m.is_dir() {
                    wire::FileKind::Folder
                } else if m.is_symlink() {
                    wire::FileKind::Symlink
                } else {
                    wire::FileKind::File
                };
                let size = if m.is_dir() { 0 } else { m.len() };
                entries.push(wire::FileEntry { name: fname, path: child, kind, size });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Found::Folder(entries))
        } else {
            let f = dir.open(&rel).map_err(|e| resolve_error(&shown, e))?;
            Ok(Found::File(f.into_std(), meta.len()))
        }
    })
    .await?;
    match found {
        Found::Folder(entries) => {
            Ok(Json(wire::FolderListing { path: raw.trim_matches('/').to_owned(), entries }).into_response())
        }
        Found::File(file, len) => {
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
            Ok((
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                Body::from_stream(stream),
            )
                .into_response())
        }
    }
}

#[utoipa::path(put, path = "/sandboxes/{name}/files/{*path}", operation_id = "putSandboxFile", tag = "files", params(("name" = String, Path, description = "Sandbox name."), ("path" = String, Path, allow_reserved, description = "Path inside the sandbox, relative to its root; may contain `/`. Absolute paths, `..`, NUL bytes, paths over 4096 bytes, names over 255 bytes and paths that are not UTF-8 once percent-decoded are refused (400 `invalid_path`), as are paths that lead outside the sandbox through a symlink. Upload temporaries (`.shoal-upload-*`) are never listed, downloaded or deleted (404 `not_found`) nor uploaded to (400 `invalid_path`)."), ("partition" = Option<String>, Query, description = "Partitioned sandboxes only, and required there: which partition's files.")), request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream", description = "The file's bytes (none: an empty file). Written to a temporary beside the target and renamed into place, so a reader never sees half a file."), responses((status = 200, description = "An existing file was replaced.", body = wire::Upload), (status = 201, description = "A new file was created.", body = wire::Upload)))]
pub async fn put(
    state: State,
    principal: Principal,
    Path((name, raw)): Path<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    principal.require(Role::Editor, Some(&name), "writing files")?;
    let sandbox = crate::sandboxes::locate(find(&state, &name).await?, request.uri().query())?;
    // Before the body is touched, so an upload streams through to the holder.
    if let Some(holder) = held_elsewhere(&state, &sandbox) {
        return forward::to_sandbox_holder(&state, &sandbox.name, holder, request).await;
    }
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let path = parse_path(&raw)?;
    if path.is_root() {
        return Err(ApiError::invalid_path("give a file path to upload to, not the sandbox root"));
    }
    if names_upload_temp(&path) {
        return Err(ApiError::invalid_path(format!(
            "names starting with `{}` are reserved for upload temporaries; choose another name",
            shoal_core::path::UPLOAD_TEMP_PREFIX
        )));
    }
    let limit = state.limits.max_upload_bytes;
    let too_large = || {
        ApiError::payload_too_large(format!("upload is larger than the limit of {limit} bytes; nothing was written"))
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(too_large());
    }
    let shown = path.to_string();
    let tmp_name = format!("{}{}", shoal_core::path::UPLOAD_TEMP_PREFIX, uuid::Uuid::new_v4());
    let (parent_rel, tmp_rel, final_rel) = {
        let parent = path.parent().to_relative();
        (parent.clone(), parent.join(&tmp_name), path.to_relative())
    };
    let root = sandbox.root.clone();
    let (shown2, tmp2, checked) = (shown.clone(), tmp_rel.clone(), path.clone());
    let (file, existed) = blocking(move || {
        // A partition's folder (or a sandbox folder removed by hand) is made on first upload.
        std::fs::create_dir_all(&root).map_err(|e| ApiError::internal(format!("cannot create {root}: {e}")))?;
        let dir = open_root(&root)?;
        check_escape(&dir, &checked, &shown2)?;
        dir.create_dir_all(&parent_rel).map_err(|e| resolve_error(&shown2, e))?;
        let existed = match dir.symlink_metadata(&final_rel) {
            Ok(m) if m.is_dir() => {
                return Err(ApiError::conflict(format!("`{shown2}` is a folder; upload to a file path")))
            }
            Ok(_) => true,
            Err(_) => false,
        };
        let f = dir.create(&tmp2).map_err(|e| resolve_error(&shown2, e))?;
        Ok((f.into_std(), existed))
    })
    .await?;
    let cleanup = |root: String, tmp: std::path::PathBuf| async move {
        let _ = blocking(move || {
            if let Ok(dir) = open_root(&root) {
                let _ = dir.remove_file(&tmp);
            }
            Ok(())
        })
        .await;
    };
    let mut out = tokio::fs::File::from_std(file);
    let mut written: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                cleanup(sandbox.root.clone(), tmp_rel).await;
                return Err(ApiError::bad_request(format!("upload interrupted: {e}; nothing was written")));
            }
        };
        written += chunk.len() as u64;
        if written > limit {
            cleanup(sandbox.root.clone(), tmp_rel).await;
            return Err(too_large());
        }
        if let Err(e) = out.write_all(&chunk).await {
            cleanup(sandbox.root.clone(), tmp_rel).await;
            return Err(ApiError::internal(format!("cannot write `{shown}`: {e}")));
        }
    }
    if let Err(e) = out.sync_all().await {
        cleanup(sandbox.root.clone(), tmp_rel).await;
        return Err(ApiError::internal(format!("cannot write `{shown}`: {e}")));
    }
    drop(out);
    let root = sandbox.root.clone();
    let (shown2, tmp2) = (shown.clone(), tmp_rel.clone());
    let renamed = blocking(move || {
        let dir = open_root(&root)?;
        dir.rename(&tmp2, &dir, path.to_relative()).map_err(|e| resolve_error(&shown2, e))
    })
    .await;
    if let Err(e) = renamed {
        cleanup(sandbox.root.clone(), tmp_rel).await;
        return Err(e);
    }
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(wire::Upload { path: shown, size: written })).into_response())
}

#[utoipa::path(delete, path = "/sandboxes/{name}/files/{*path}", operation_id = "deleteSandboxFile", tag = "files", params(("name" = String, Path, description = "Sandbox name."), ("path" = String, Path, allow_reserved, description = "Path inside the sandbox, relative to its root; may contain `/`. Absolute paths, `..`, NUL bytes, paths over 4096 bytes, names over 255 bytes and paths that are not UTF-8 once percent-decoded are refused (400 `invalid_path`), as are paths that lead outside the sandbox through a symlink. Upload temporaries (`.shoal-upload-*`) are never listed, downloaded or deleted (404 `not_found`) nor uploaded to (400 `invalid_path`)."), ("partition" = Option<String>, Query, description = "Partitioned sandboxes only, and required there: which partition's files.")), responses((status = 204, description = "Deleted.")))]
pub async fn delete(
    state: State,
    principal: Principal,
    Path((name, raw)): Path<(String, String)>,
    request: Request,
) -> ApiResult<Response> {
    principal.require(Role::Editor, Some(&name), "deleting files")?;
    let sandbox = crate::sandboxes::locate(find(&state, &name).await?, request.uri().query())?;
    if let Some(holder) = held_elsewhere(&state, &sandbox) {
        return forward::to_sandbox_holder(&state, &sandbox.name, holder, request).await;
    }
    let path = parse_path(&raw)?;
    if path.is_root() {
        return Err(ApiError::invalid_path(
            "the sandbox root cannot be deleted through the file API; delete the sandbox instead",
        ));
    }
    hide_upload_temp(&path)?;
    let shown = path.to_string();
    blocking(move || {
        let dir = open_root(&sandbox.root)?;
        check_escape(&dir, &path.parent(), &shown)?;
        let rel = path.to_relative();
        let meta = dir.symlink_metadata(&rel).map_err(|e| resolve_error(&shown, e))?;
        if meta.is_dir() {
            dir.remove_dir(&rel).map_err(|e| resolve_error(&shown, e))
        } else {
            dir.remove_file(&rel).map_err(|e| resolve_error(&shown, e))
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
