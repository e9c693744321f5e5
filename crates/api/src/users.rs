//! `/api/v1/users`: the people who log in (`sessions.rs`), made, listed and deleted by an
//! admin for every sandbox (`auth.rs`'s table). A user's password is hashed here (Argon2id,
//! `shoal_service::passwords`) and only the hash stored; no answer ever holds either.

use crate::auth::{check_sandboxes, Principal};
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::State;
use axum::extract::{Path, Request};
use axum::http::StatusCode;
use axum::Json;
use rand::RngCore;
use shoal_store::{NewUser, StoreError, UserRow};
use shoal_wire as wire;

fn user(u: &UserRow) -> wire::User {
    wire::User {
        id: u.id.clone(),
        name: u.name.clone(),
        role: u.role,
        sandboxes: u.sandboxes.clone(),
        created_by: u.created_by.clone(),
        created_at: crate::rfc3339(u.created_at),
    }
}

fn check_name(name: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    // Deleting takes an id or a name: a name that could be another user's id is refused.
    if name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::invalid_request(format!(
            "user name `{name}` looks like a user id (16 hex digits); pick a name that does not"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_request(format!(
            "user name `{}` is invalid: use 1 to 64 letters, digits, `.`, `_`, `-` or `@`",
            name.chars().take(80).collect::<String>()
        )))
    }
}

#[utoipa::path(get, path = "/users", operation_id = "listUsers", tag = "users", responses((status = 200, description = "Every user, by name; never a password nor its hash.", body = wire::UserList)))]
pub async fn list(state: State) -> ApiResult<Json<wire::UserList>> {
    let rows = state.store.list_users().await?;
    Ok(Json(wire::UserList { users: rows.iter().map(user).collect() }))
}

#[utoipa::path(post, path = "/users", operation_id = "createUser", tag = "users", request_body = wire::UserRequest, responses((status = 201, description = "Created. The store keeps only the password's Argon2id hash (m=19456 KiB, t=2, p=1).", body = wire::User)))]
pub async fn create(state: State, principal: Principal, request: Request) -> ApiResult<(StatusCode, Json<wire::User>)> {
    let (parts, body) = request.into_parts();
    let (req, _): (wire::UserRequest, _) = body::json(&parts.headers, body, state.limits.max_request_bytes).await?;
    check_name(&req.name)?;
    shoal_service::passwords::check_new(&req.password).map_err(ApiError::invalid_request)?;
    let sandboxes = check_sandboxes(req.sandboxes)?;
    let password_hash = state.auth.passwords.hash(req.password).await?;
    let mut id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let new = NewUser {
        id: hex::encode(id),
        name: req.name,
        password_hash,
        role: req.role,
        sandboxes,
        created_by: principal.label(),
    };
    let row = state.store.create_user(&new).await.map_err(|e| match e {
        StoreError::Conflict(m) => ApiError::already_exists(m),
        other => other.into(),
    })?;
    tracing::info!(user = %row.id, name = %row.name, role = %row.role, by = %principal.label(), "user created");
    Ok((StatusCode::CREATED, Json(user(&row))))
}

#[utoipa::path(delete, path = "/users/{name}", operation_id = "deleteUser", tag = "users", params(("name" = String, Path, description = "The user's name, or id.")), responses((status = 204, description = "Deleted, with every session of theirs: every node refuses those within a second.")))]
pub async fn delete(state: State, principal: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let row = state.store.delete_user(&name).await?;
    state.auth.forget_user(&row.id);
    tracing::info!(user = %row.id, name = %row.name, by = %principal.label(), "user deleted");
    Ok(StatusCode::NO_CONTENT)
}
