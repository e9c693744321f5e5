//! What the handlers of schedules and listeners share: finding a definition by id or name
//! (404 with the kind's code), storing one here or forwarding the request to the node that
//! holds its job file, deleting, listing, and reading a history's `limit`. Each kind says
//! only what is its own through [`Trigger`]; its module keeps its definition's rules and the
//! handlers, with their `#[utoipa::path]`.

use crate::auth::Principal;
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_core::Role;
pub(crate) use shoal_store::Result as StoreResult;
use shoal_store::{Store, StoreError};
use std::collections::BTreeMap;
use std::future::Future;

/// A kind of definition (a schedule or a listener, as its row): how the store keeps it and
/// how the API shows it.
pub(crate) trait Trigger: Sized + Send + Sync {
    /// What messages call it: `schedule`, `listener`.
    const NAME: &'static str;
    /// A definition as the store takes it.
    type Def: Send + Sync;
    /// The row as the API shows it.
    type Wire: Serialize;
    /// `404` with the kind's code: `unknown_schedule`, `unknown_listener`.
    fn unknown(message: String) -> ApiError;
    /// The sandbox, job and parameters a definition starts.
    fn job(def: &Self::Def) -> (&str, &str, &BTreeMap<String, String>);
    /// The sandbox of a stored one's job: what a principal must have in scope.
    fn sandbox(&self) -> &str;
    fn get(store: &Store, reference: &str) -> impl Future<Output = StoreResult<Option<Self>>> + Send;
    fn list(store: &Store) -> impl Future<Output = StoreResult<Vec<Self>>> + Send;
    fn create(store: &Store, def: &Self::Def) -> impl Future<Output = StoreResult<Self>> + Send;
    fn update(store: &Store, id: &str, def: &Self::Def) -> impl Future<Output = StoreResult<Self>> + Send;
    fn delete(store: &Store, reference: &str) -> impl Future<Output = StoreResult<()>> + Send;
    fn show(&self) -> ApiResult<Self::Wire>;
    /// The answer to the request that created it (a webhook's shows its secret, once).
    fn show_created(&self) -> ApiResult<Self::Wire> {
        self.show()
    }
}

fn store_error<T: Trigger>(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::already_exists(m),
        StoreError::NotFound(m) => T::unknown(m),
        other => other.into(),
    }
}

/// The definition `reference` (its id or its name) names, or 404 (also when it is outside
/// `principal`'s sandboxes); 403 unless `principal` has `need`.
pub(crate) async fn find<T: Trigger>(
    state: &crate::AppState,
    principal: &Principal,
    need: Role,
    reference: &str,
) -> ApiResult<T> {
    let unknown = || T::unknown(format!("no {} with id or name `{reference}`", T::NAME));
    let row = T::get(&state.store, reference).await?.ok_or_else(unknown)?;
    // One outside the principal's sandboxes does not exist for it (nothing is learnt of them).
    if !principal.covers(Some(row.sandbox())) {
        return Err(unknown());
    }
    principal.require(need, Some(row.sandbox()), &format!("changing a {}", T::NAME))?;
    Ok(row)
}

/// Every definition of the kind the principal may read, sorted by name.
pub(crate) async fn list<T: Trigger>(state: &crate::AppState, principal: &Principal) -> ApiResult<Vec<T::Wire>> {
    T::list(&state.store).await?.iter().filter(|r| principal.covers(Some(r.sandbox()))).map(T::show).collect()
}

/// Deletes a definition (with its history) and tells the trigger workers: 204.
pub(crate) async fn delete<T: Trigger>(
    state: &crate::AppState,
    principal: &Principal,
    reference: &str,
) -> ApiResult<StatusCode> {
    find::<T>(state, principal, Role::Editor, reference).await?;
    T::delete(&state.store, reference).await.map_err(store_error::<T>)?;
    state.engine.triggers_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// A definition request as it came, kept to forward it to the node holding its job file.
pub(crate) struct Received {
    parts: Parts,
    raw: Value,
}

/// Reads a definition request's JSON body.
pub(crate) async fn receive<B: DeserializeOwned>(
    state: &crate::AppState,
    request: Request,
) -> ApiResult<(B, Received)> {
    let (parts, body) = request.into_parts();
    let (b, raw) = body::json(&parts.headers, body, state.limits.max_request_bytes).await?;
    Ok((b, Received { parts, raw }))
}

/// The name a new definition's body gives: required, and 1 to 64 letters, digits, `.`, `_`
/// or `-`.
pub(crate) fn new_name<T: Trigger>(name: &Option<String>) -> ApiResult<String> {
    let name = name.clone().ok_or_else(|| ApiError::invalid_request("`name` is required"))?;
    check_name(&name, T::NAME)?;
    Ok(name)
}

/// Names of schedules and listeners: 1 to 64 letters, digits, `.`, `_` and `-`.
fn check_name(name: &str, what: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_request(format!(
            "invalid {what} name `{name}`: use 1 to 64 letters, digits, `.`, `_` or `-`"
        )))
    }
}

/// Stores a valid definition, new (201) or in place of the one whose id is `replaces` (200),
/// tells the trigger workers, and answers with the row. When the job file is on another node
/// only, that node must check it: the request is forwarded there instead, and its answer is
/// this one.
pub(crate) async fn save<T: Trigger>(
    state: &crate::AppState,
    principal: &Principal,
    request: Received,
    def: &T::Def,
    replaces: Option<&str>,
) -> ApiResult<Response> {
    let (sandbox, job, params) = T::job(def);
    principal.require(Role::Editor, Some(sandbox), &format!("defining a {} that runs a job", T::NAME))?;
    if let Some(holder) = jobs::check_job(state, sandbox, job, params, &format!("the {}", T::NAME)).await? {
        let request = Request::from_parts(request.parts, Body::from(request.raw.to_string()));
        return crate::forward::to_sandbox_holder(state, sandbox, &holder, request).await;
    }
    let (row, status) = match replaces {
        None => (T::create(&state.store, def).await, StatusCode::CREATED),
        Some(id) => (T::update(&state.store, id, def).await, StatusCode::OK),
    };
    let row = row.map_err(store_error::<T>)?;
    state.engine.triggers_changed();
    let answer = if replaces.is_none() { row.show_created()? } else { row.show()? };
    Ok((status, Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    pub limit: Option<i64>,
}

/// A query string the API's way: a bad one is `400 invalid_query` saying what is accepted.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>, accepted: &str) -> ApiResult<T> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid_query(format!("{}; this endpoint takes {accepted}", e.body_text())))
}

/// The definition whose history (firings, events) is asked for, and how many entries: a
/// `limit` of 1 to 10000, default 50. A bad query is refused before the definition is looked
/// up, a `limit` out of range after.
pub(crate) async fn history<T: Trigger>(
    state: &crate::AppState,
    principal: &Principal,
    reference: &str,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<(T, i64)> {
    let q = query(q, "limit (1 to 10000)")?;
    let row = find(state, principal, Role::Viewer, reference).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid_query("limit must be between 1 and 10000"));
    }
    Ok((row, limit))
}
