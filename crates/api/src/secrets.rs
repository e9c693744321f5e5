//! `/api/v1/secrets`: job secrets set, listed and removed, and sealed again under the current
//! key. No route returns a value, not even to an admin: a value goes from the request, sealed
//! (`shoal_service::secrets`), into the store, and out only into a job's environment.
//!
//! Who may: setting or removing a sandbox's secret needs `editor` there (who can write that
//! sandbox's job files can print the value anyway); a cluster-wide one `admin` for every
//! sandbox. Listing needs `viewer` and shows the cluster-wide secrets and those of the
//! sandboxes in scope.

use crate::auth::Principal;
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::triggers::query;
use crate::State;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use shoal_core::{Role, SandboxName};
use shoal_store::SecretRow;
use shoal_wire as wire;

fn secret(r: &SecretRow) -> wire::Secret {
    wire::Secret {
        name: r.name.clone(),
        sandbox: r.sandbox.clone(),
        key_id: r.key_id.clone(),
        created_by: r.created_by.clone(),
        created_at: crate::rfc3339(r.created_at),
        updated_by: r.updated_by.clone(),
        updated_at: crate::rfc3339(r.updated_at),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    sandbox: Option<String>,
}

/// A change to a sandbox's secret needs `editor` there, to a cluster-wide one `admin` for `*`.
fn may_change(principal: &Principal, sandbox: Option<&str>, what: &str) -> ApiResult<()> {
    match sandbox {
        Some(s) => principal.require(Role::Editor, Some(s), what),
        None => principal.require(Role::Admin, None, &format!("{what} (cluster-wide)")),
    }
}

#[utoipa::path(put, path = "/secrets/{name}", operation_id = "putSecret", tag = "secrets", params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$", description = "The secret's name, as a job file's `env` names it (`{secret.NAME}`): 1 to 64 letters, digits, `_` and `-`, starting with a letter."), ("sandbox" = Option<String>, Query, description = "The sandbox whose jobs see it (needs `editor` there); leave out for a cluster-wide secret (needs `admin` for every sandbox).")), request_body = wire::SecretRequest, responses((status = 201, description = "Made. The value is sealed (XChaCha20-Poly1305) by this node before the store sees it, and never answered.", body = wire::Secret), (status = 200, description = "Replaced: jobs started from now on get the new value.", body = wire::Secret)))]
pub async fn put(
    state: State,
    principal: Principal,
    Path(name): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
    request: Request,
) -> ApiResult<(StatusCode, Json<wire::Secret>)> {
    let q = query(q, "`sandbox`")?;
    let sandbox = q.sandbox.as_deref();
    may_change(&principal, sandbox, &format!("setting secret `{name}`"))?;
    shoal_service::secrets::check_name(&name)?;
    if let Some(s) = sandbox {
        let unknown =
            || ApiError::unknown_sandbox(format!("no sandbox named `{s}`; create it first or check the name"));
        SandboxName::parse(s).map_err(|_| unknown())?;
        state.store.get_sandbox(s).await?.ok_or_else(unknown)?;
    }
    let (parts, body) = request.into_parts();
    let (req, _): (wire::SecretRequest, _) = body::json(&parts.headers, body, state.limits.max_request_bytes).await?;
    let (row, made) =
        shoal_service::secrets::set(&state.store, &state.secrets, sandbox, &name, &req.value, &principal.label())
            .await?;
    tracing::info!(secret = %row.name, sandbox = row.sandbox.as_deref().unwrap_or(""), key_id = %row.key_id, made, by = %principal.label(), "secret set");
    Ok((if made { StatusCode::CREATED } else { StatusCode::OK }, Json(secret(&row))))
}

#[utoipa::path(get, path = "/secrets", operation_id = "listSecrets", tag = "secrets", params(("sandbox" = Option<String>, Query, description = "Only this sandbox's secrets.")), responses((status = 200, description = "The cluster-wide secrets and those of the sandboxes in the credential's scope (with `sandbox`: that sandbox's), by sandbox and name; never a value.", body = wire::SecretList)))]
pub async fn list(
    state: State,
    principal: Principal,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> ApiResult<Json<wire::SecretList>> {
    let q = query(q, "`sandbox`")?;
    if let Some(s) = &q.sandbox {
        principal.require(Role::Viewer, Some(s), "listing secrets")?;
    }
    let rows = state.store.list_secrets().await?;
    let shown = rows.iter().filter(|r| match (&q.sandbox, &r.sandbox) {
        (Some(wanted), Some(s)) => wanted == s,
        (Some(_), None) => false,
        (None, Some(s)) => principal.covers(Some(s)),
        (None, None) => true,
    });
    Ok(Json(wire::SecretList { secrets: shown.map(secret).collect() }))
}

#[utoipa::path(delete, path = "/secrets/{name}", operation_id = "deleteSecret", tag = "secrets", params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$", description = "The secret's name."), ("sandbox" = Option<String>, Query, description = "The sandbox it belongs to; leave out for the cluster-wide one.")), responses((status = 204, description = "Removed. An attempt that starts later and names it fails, saying so in its output.")))]
pub async fn delete(
    state: State,
    principal: Principal,
    Path(name): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let q = query(q, "`sandbox`")?;
    let sandbox = q.sandbox.as_deref();
    may_change(&principal, sandbox, &format!("removing secret `{name}`"))?;
    let row = state.store.delete_secret(sandbox, &name).await?;
    tracing::info!(secret = %row.name, sandbox = row.sandbox.as_deref().unwrap_or(""), by = %principal.label(), "secret removed");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/secrets/_rewrap", operation_id = "rewrapSecrets", tag = "secrets", responses((status = 200, description = "Every secret sealed with another key is now sealed with this node's current key (`cluster.secrets_key_file`); the previous key can then be retired (docs/security.md, rotating the secrets key).", body = wire::Rewrap)))]
pub async fn rewrap(state: State, principal: Principal) -> ApiResult<Json<wire::Rewrap>> {
    let done = shoal_service::secrets::rewrap(&state.store, &state.secrets).await?;
    let key_id = state.secrets.current_id().to_owned();
    tracing::info!(key_id = %key_id, rewrapped = done.rewrapped, skipped = done.skipped, by = %principal.label(), "secrets sealed again under the current key");
    Ok(Json(wire::Rewrap { key_id, rewrapped: done.rewrapped, skipped: done.skipped }))
}
