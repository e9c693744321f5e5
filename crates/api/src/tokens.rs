//! `/api/v1/tokens`: API tokens made, listed and revoked (admin only, `auth.rs`'s table).

use crate::auth::{check_sandboxes, Principal};
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::State;
use axum::extract::{Path, Request};
use axum::http::StatusCode;
use axum::Json;
use shoal_store::{StoreError, TokenRow};
use shoal_wire as wire;

fn token(t: &TokenRow) -> wire::Token {
    wire::Token {
        id: t.id.clone(),
        name: t.name.clone(),
        prefix: t.prefix.clone(),
        role: t.role,
        sandboxes: t.sandboxes.clone(),
        created_by: t.created_by.clone(),
        created_at: crate::rfc3339(t.created_at),
        last_used_at: t.last_used_at.map(crate::rfc3339),
        expires_at: t.expires_at.map(crate::rfc3339),
        revoked_at: t.revoked_at.map(crate::rfc3339),
    }
}

fn check_name(name: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    // Revoking takes an id or a name: a name that could be another token's id is refused.
    if name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::invalid_request(format!(
            "token name `{name}` looks like a token id (16 hex digits); pick a name that does not"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_request(format!(
            "token name `{}` is invalid: use 1 to 64 letters, digits, `.`, `_`, `-` or `@`",
            name.chars().take(80).collect::<String>()
        )))
    }
}

#[utoipa::path(get, path = "/tokens", operation_id = "listTokens", tag = "tokens", responses((status = 200, description = "Every token, revoked ones too, oldest first; never a secret.", body = wire::TokenList)))]
pub async fn list(state: State) -> ApiResult<Json<wire::TokenList>> {
    let rows = state.store.list_tokens().await?;
    Ok(Json(wire::TokenList { tokens: rows.iter().map(token).collect() }))
}

#[utoipa::path(post, path = "/tokens", operation_id = "createToken", tag = "tokens", request_body = wire::TokenRequest, responses((status = 201, description = "Created. The answer holds the token's secret, this once: the store keeps only its SHA-256.", body = wire::CreatedToken)))]
pub async fn create(
    state: State,
    principal: Principal,
    request: Request,
) -> ApiResult<(StatusCode, Json<wire::CreatedToken>)> {
    let (parts, body) = request.into_parts();
    let (req, _): (wire::TokenRequest, _) = body::json(&parts.headers, body, state.limits.max_request_bytes).await?;
    check_name(&req.name)?;
    let sandboxes = check_sandboxes(req.sandboxes)?;
    let expires_in_ms = match &req.expires_in {
        None => None,
        Some(text) => {
            let d = shoal_core::duration::parse(text)
                .map_err(|m| ApiError::invalid_request(format!("`expires_in`: {m}")))?;
            if d.is_zero() {
                return Err(ApiError::invalid_request("`expires_in` must be more than zero"));
            }
            Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
    };
    let (secret, mut new) =
        shoal_service::tokens::generate(shoal_wire::TokenKind::Api, &req.name, req.role, sandboxes, &principal.label());
    new.expires_in_ms = expires_in_ms;
    let row = state.store.create_token(&new).await.map_err(|e| match e {
        StoreError::Conflict(m) => ApiError::already_exists(m),
        other => other.into(),
    })?;
    tracing::info!(token = %row.id, name = %row.name, role = %row.role, by = %principal.label(), "token created");
    Ok((StatusCode::CREATED, Json(wire::CreatedToken { token: token(&row), secret })))
}

#[utoipa::path(delete, path = "/tokens/{id}", operation_id = "revokeToken", tag = "tokens", params(("id" = String, Path, description = "The token's id, or the name of a token not revoked.")), responses((status = 200, description = "Revoked (or already revoked): every node refuses it within a second.", body = wire::Token)))]
pub async fn revoke(state: State, principal: Principal, Path(id): Path<String>) -> ApiResult<Json<wire::Token>> {
    // The last admin token for every sandbox is kept: revoking it would leave nobody able to
    // make tokens until a node restarts and makes a new one.
    let tokens = state.store.list_tokens().await?;
    let now = state.store.now_ms().await?;
    let full_admin =
        |t: &TokenRow| t.live_at(now) && t.role == shoal_wire::Role::Admin && t.sandboxes.iter().any(|g| g == "*");
    let target =
        tokens.iter().find(|t| t.id == id).or_else(|| tokens.iter().find(|t| t.name == id && t.revoked_at.is_none()));
    if let Some(t) = target.filter(|t| full_admin(t)) {
        if !tokens.iter().any(|o| o.id != t.id && full_admin(o)) {
            return Err(ApiError::conflict(format!(
                "token `{}` is the last admin token for every sandbox; make another (`shoal token create NAME --role admin`) before revoking it",
                t.name
            )));
        }
    }
    let row = state.store.revoke_token(&id).await?;
    state.auth.forget(&row.id);
    tracing::info!(token = %row.id, name = %row.name, by = %principal.label(), "token revoked");
    Ok(Json(token(&row)))
}
