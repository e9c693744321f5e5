//! Schedules: define, change, delete, preview, and read their firing history. Firing itself
//! is done by every node's scheduler worker (shoal-server's `triggers.rs`); the API only
//! keeps definitions valid and tells the local workers that they changed.

use crate::auth::Principal;
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::triggers::{self, LimitQuery, StoreResult, Trigger};
use crate::State;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_core::schedule::{CronSpec, Misfire, Overlap, ScheduleError, DEFAULT_MISFIRE_THRESHOLD_MS, MAX_PREVIEW};
use shoal_core::Role;
use shoal_store::{FiringRow, Owner, ScheduleDef, ScheduleRow, Store};
use shoal_wire as wire;
use std::collections::BTreeMap;

type Body_ = wire::ScheduleRequest;

pub(crate) fn schedule_error(e: ScheduleError) -> ApiError {
    match &e {
        ScheduleError::UnknownTimeZone { .. } => ApiError::unknown_time_zone(e.to_string()),
        _ => match e.field() {
            Some((field, position)) => ApiError::invalid_cron(e.to_string())
                .with_details(json!({ "field": field.as_str(), "position": position })),
            None => ApiError::invalid_cron(e.to_string()),
        },
    }
}

/// A validated definition, and the parsed expression.
fn definition(b: &Body_, name: String, owner: Owner) -> ApiResult<(ScheduleDef, CronSpec)> {
    let missing = |f: &str| ApiError::invalid_request(format!("`{f}` is required"));
    let cron = b.cron.clone().ok_or_else(|| missing("cron"))?;
    let timezone = b.timezone.clone().unwrap_or_else(|| "UTC".into());
    let spec = CronSpec::parse(&cron, &timezone).map_err(schedule_error)?;
    let misfire_name = b.misfire.clone().unwrap_or_else(|| "once".into());
    if b.misfire_max.is_some() && misfire_name != "all" {
        return Err(ApiError::invalid_request("`misfire_max` goes with misfire policy `all` only"));
    }
    let misfire = Misfire::parse(&misfire_name, b.misfire_max).map_err(|e| ApiError::invalid_request(e.to_string()))?;
    let overlap = Overlap::parse(b.overlap.as_deref().unwrap_or("allow"))
        .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    let threshold = match &b.misfire_threshold {
        Some(t) => {
            let d = shoal_core::duration::parse(t)
                .map_err(|m| ApiError::invalid_request(format!("misfire_threshold: {m}")))?;
            if d.is_zero() {
                return Err(ApiError::invalid_request(
                    "misfire_threshold must be more than zero: it is how late a firing may be and still count as on time",
                ));
            }
            d.as_millis() as i64
        }
        None => DEFAULT_MISFIRE_THRESHOLD_MS,
    };
    let params = jobs::params_from_json(&b.params.clone().unwrap_or_default())?;
    let def = ScheduleDef {
        name,
        sandbox: b.sandbox.clone().ok_or_else(|| missing("sandbox"))?,
        job: b.job.clone().ok_or_else(|| missing("job"))?,
        params,
        cron: spec.expr().to_owned(),
        timezone: spec.tz_name().to_owned(),
        enabled: b.enabled.unwrap_or(true),
        misfire,
        misfire_threshold_ms: threshold,
        overlap,
        owner,
    };
    Ok((def, spec))
}

/// A schedule row as the API shows it.
pub fn schedule(s: &ScheduleRow) -> ApiResult<wire::Schedule> {
    let spec = CronSpec::parse(&s.cron, &s.timezone).ok();
    let next = spec.as_ref().filter(|_| s.enabled).and_then(|c| c.next_after(s.last_fire_at));
    Ok(wire::Schedule {
        id: s.id.clone(),
        name: s.name.clone(),
        sandbox: s.sandbox.clone(),
        job: s.job.clone(),
        params: s.params.clone(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        enabled: s.enabled,
        misfire: crate::convert::misfire(s.misfire).0,
        misfire_max: crate::convert::misfire(s.misfire).1,
        misfire_threshold_ms: s.misfire_threshold_ms,
        overlap: crate::convert::overlap(s.overlap),
        last_fire_time: (s.last_fire_at > s.created_at).then(|| crate::rfc3339(s.last_fire_at)),
        next_fire_time: next.map(crate::rfc3339),
        last_execution: s.last_execution_id.clone(),
        owner: s.owner.as_ref().map(|o| o.label.clone()),
        created_at: crate::rfc3339(s.created_at),
        updated_at: crate::rfc3339(s.updated_at),
    })
}

fn firing(f: &FiringRow) -> wire::Firing {
    wire::Firing {
        schedule: f.schedule_id.clone(),
        fire_time: crate::rfc3339(f.fire_at),
        outcome: f.outcome,
        reason: f.reason,
        message: f.message.clone(),
        execution: f.execution_id.clone(),
        node: f.node_id.clone(),
        claimed_at: crate::rfc3339(f.claimed_at),
        lateness_ms: f.claimed_at - f.fire_at,
    }
}

/// What is a schedule's own in the handlers that [`triggers`] shares.
impl Trigger for ScheduleRow {
    const NAME: &'static str = "schedule";
    type Def = ScheduleDef;
    type Wire = wire::Schedule;
    fn unknown(message: String) -> ApiError {
        ApiError::unknown_schedule(message)
    }
    fn job(def: &ScheduleDef) -> (&str, &str, &BTreeMap<String, String>) {
        (&def.sandbox, &def.job, &def.params)
    }
    fn sandbox(&self) -> &str {
        &self.sandbox
    }
    async fn get(store: &Store, reference: &str) -> StoreResult<Option<Self>> {
        store.get_schedule(reference).await
    }
    async fn list(store: &Store) -> StoreResult<Vec<Self>> {
        store.list_schedules().await
    }
    async fn create(store: &Store, def: &ScheduleDef) -> StoreResult<Self> {
        store.create_schedule(def).await
    }
    async fn update(store: &Store, id: &str, def: &ScheduleDef) -> StoreResult<Self> {
        store.update_schedule(id, def).await
    }
    async fn delete(store: &Store, reference: &str) -> StoreResult<()> {
        store.delete_schedule(reference).await
    }
    fn show(&self) -> ApiResult<wire::Schedule> {
        schedule(self)
    }
}

#[utoipa::path(get, path = "/schedules", operation_id = "listSchedules", tag = "schedules", responses((status = 200, description = "Every schedule, sorted by name.", body = wire::ScheduleList)))]
pub async fn list(state: State, principal: Principal) -> ApiResult<Json<wire::ScheduleList>> {
    Ok(Json(wire::ScheduleList { schedules: triggers::list::<ScheduleRow>(&state, &principal).await? }))
}

#[utoipa::path(get, path = "/schedules/{id}", operation_id = "getSchedule", tag = "schedules", params(("id" = String, Path, description = "Schedule id or name.")), responses((status = 200, description = "The schedule.", body = wire::Schedule)))]
pub async fn get(state: State, principal: Principal, Path(reference): Path<String>) -> ApiResult<Json<wire::Schedule>> {
    Ok(Json(schedule(&triggers::find(&state, &principal, Role::Viewer, &reference).await?)?))
}

#[utoipa::path(post, path = "/schedules", operation_id = "createSchedule", tag = "schedules", request_body = wire::ScheduleRequest, responses((status = 201, description = "Defined.", body = wire::Schedule)))]
pub async fn create(state: State, principal: Principal, request: Request) -> ApiResult<Response> {
    let (b, request) = triggers::receive::<Body_>(&state, request).await?;
    let (def, _) = definition(&b, triggers::new_name::<ScheduleRow>(&b.name)?, principal.owner())?;
    triggers::save::<ScheduleRow>(&state, &principal, request, &def, None).await
}

#[utoipa::path(patch, path = "/schedules/{id}", operation_id = "patchSchedule", tag = "schedules", params(("id" = String, Path, description = "Schedule id or name.")), request_body = wire::ScheduleRequest, responses((status = 200, description = "The schedule as changed.", body = wire::Schedule)))]
pub async fn patch(
    state: State,
    principal: Principal,
    Path(reference): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let (b, request) = triggers::receive::<Body_>(&state, request).await?;
    let old: ScheduleRow = triggers::find(&state, &principal, Role::Editor, &reference).await?;
    if b.name.as_ref().is_some_and(|n| *n != old.name) {
        return Err(ApiError::conflict(format!(
            "schedule `{}` cannot be renamed to `{}`; create a new schedule instead",
            old.name,
            b.name.as_deref().unwrap_or_default()
        )));
    }
    if b.misfire_max.is_some() && b.misfire.is_none() && !matches!(old.misfire, Misfire::All { .. }) {
        return Err(ApiError::conflict(format!(
            "schedule `{}` has misfire policy `{}`; `misfire_max` goes with `all` only: send `\"misfire\": \"all\"` with it",
            old.name,
            old.misfire.as_str()
        )));
    }
    let misfire_changed = b.misfire.is_some();
    let merged = Body_ {
        name: None,
        sandbox: b.sandbox.or(Some(old.sandbox.clone())),
        job: b.job.or(Some(old.job.clone())),
        params: b.params.or_else(|| Some(old.params.iter().map(|(k, v)| (k.clone(), json!(v))).collect())),
        cron: b.cron.or(Some(old.cron.clone())),
        timezone: b.timezone.or(Some(old.timezone.clone())),
        enabled: b.enabled.or(Some(old.enabled)),
        misfire: b.misfire.or(Some(old.misfire.as_str().to_owned())),
        misfire_max: b.misfire_max.or(match old.misfire {
            Misfire::All { max } if !misfire_changed => Some(max),
            _ => None,
        }),
        misfire_threshold: b.misfire_threshold.or(Some(format!("{}ms", old.misfire_threshold_ms))),
        overlap: b.overlap.or(Some(old.overlap.as_str().to_owned())),
    };
    // Whoever changes a schedule owns it from then on: it fires with their rights.
    let (def, _) = definition(&merged, old.name.clone(), principal.owner())?;
    triggers::save::<ScheduleRow>(&state, &principal, request, &def, Some(&old.id)).await
}

#[utoipa::path(delete, path = "/schedules/{id}", operation_id = "deleteSchedule", tag = "schedules", params(("id" = String, Path, description = "Schedule id or name.")), responses((status = 204, description = "Deleted, with its firing history.")))]
pub async fn delete(state: State, principal: Principal, Path(reference): Path<String>) -> ApiResult<StatusCode> {
    triggers::delete::<ScheduleRow>(&state, &principal, &reference).await
}

#[utoipa::path(get, path = "/schedules/{id}/firings", operation_id = "listScheduleFirings", tag = "schedules", params(("id" = String, Path, description = "Schedule id or name."), ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "How many entries, newest first (default 50).")), responses((status = 200, description = "The newest firings.", body = wire::FiringList)))]
pub async fn firings(
    state: State,
    principal: Principal,
    Path(reference): Path<String>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Json<wire::FiringList>> {
    let (s, limit) = triggers::history::<ScheduleRow>(&state, &principal, &reference, q).await?;
    let rows = state.store.list_firings(&s.id, limit).await?;
    Ok(Json(wire::FiringList { firings: rows.iter().map(firing).collect() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountQuery {
    count: Option<usize>,
}

fn preview_of(spec: &CronSpec, after: i64, count: usize) -> ApiResult<Json<wire::Preview>> {
    if !(1..=MAX_PREVIEW).contains(&count) {
        return Err(ApiError::invalid_query(format!("count must be between 1 and {MAX_PREVIEW}")));
    }
    let times: Vec<String> = spec.preview(after, count).into_iter().map(|t| spec.format_local(t)).collect();
    Ok(Json(wire::Preview { cron: spec.expr().to_owned(), timezone: spec.tz_name().to_owned(), firings: times }))
}

#[utoipa::path(get, path = "/schedules/{id}/preview", operation_id = "previewSchedule", tag = "schedules", params(("id" = String, Path, description = "Schedule id or name."), ("count" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "How many firing times (default 10).")), responses((status = 200, description = "The next firing times.", body = wire::Preview)))]
pub async fn preview(
    state: State,
    principal: Principal,
    Path(reference): Path<String>,
    q: Result<Query<CountQuery>, QueryRejection>,
) -> ApiResult<Json<wire::Preview>> {
    let q = triggers::query(q, "count (1 to 1000)")?;
    let s: ScheduleRow = triggers::find(&state, &principal, Role::Viewer, &reference).await?;
    let spec = CronSpec::parse(&s.cron, &s.timezone).map_err(schedule_error)?;
    let now = state.store.now_ms().await?;
    preview_of(&spec, s.last_fire_at.max(now), q.count.unwrap_or(10))
}

#[utoipa::path(post, path = "/schedules/preview", operation_id = "previewCron", tag = "schedules", request_body = wire::PreviewRequest, responses((status = 200, description = "The next firing times from now.", body = wire::Preview)))]
pub async fn preview_expression(state: State, request: Request) -> ApiResult<Json<wire::Preview>> {
    let (parts, body) = request.into_parts();
    let (b, _): (wire::PreviewRequest, Value) =
        body::json(&parts.headers, body, state.limits.max_request_bytes).await?;
    let spec = CronSpec::parse(&b.cron, b.timezone.as_deref().unwrap_or("UTC")).map_err(schedule_error)?;
    let now = state.store.now_ms().await?;
    preview_of(&spec, now, b.count.map_or(10, |c| c as usize))
}
