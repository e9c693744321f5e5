//! Listeners: define, change, delete and read their events; and webhooks, the one kind whose
//! events arrive through the API (`POST /hooks/{name}`). Job, file and cluster events are
//! watched by every node's listener workers (shoal-server's `triggers.rs`).

use crate::auth::Principal;
use crate::body;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::jobs;
use crate::triggers::{self, LimitQuery, StoreResult, Trigger};
use crate::State;
use axum::body::Body;
use axum::extract::{Path, Query, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use shoal_core::listener::{
    check_templates, event_params, payload_field, EventReason, ListenerKind, OnCluster, OnFile, OnJob, CLUSTER_EVENTS,
    FILE_EVENTS,
};
use shoal_core::{ExecState, Role};
use shoal_store::{EventRow, ListenerDef, ListenerRow, NewEvent, Origin, Store};
use shoal_wire as wire;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// How old a webhook signature's timestamp may be, either way, before it is refused.
pub const HOOK_TOLERANCE_S: i64 = 300;
/// The header a webhook is signed in: `t=<unix seconds>,v1=<hex HMAC-SHA256>` (see
/// [`sign_hook`] for what is signed).
pub const SIGNATURE_HEADER: &str = "x-shoal-hook-signature";
/// The header naming a delivery; one id starts one job however often it is sent.
pub const DELIVERY_HEADER: &str = "x-shoal-hook-delivery";
/// At most this many `v1=` signatures are considered in one header (more is refused).
pub const MAX_HOOK_SIGNATURES: usize = 4;
/// The longest signature header accepted, in bytes.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 1024;
/// Bodies larger than this have their signature checked on a blocking thread.
const HOOK_INLINE_MAC_BYTES: usize = 64 * 1024;
const MIN_SECRET_CHARS: usize = 16;
/// The default settle time of file listeners.
const DEFAULT_SETTLE_MS: u64 = 1000;

type Body_ = wire::ListenerRequest;
type OnJobBody = wire::OnJobRequest;
type OnFileBody = wire::OnFileRequest;
type OnClusterBody = wire::OnClusterRequest;

fn on_job(b: &OnJobBody) -> ApiResult<OnJob> {
    let mut states = Vec::new();
    for s in b.states.clone().unwrap_or_else(|| vec!["succeeded".into()]) {
        if s == "final" {
            states.extend(ExecState::ALL.iter().copied().filter(|s| s.is_final()));
            continue;
        }
        match ExecState::parse(&s) {
            Some(st) if st.is_final() => states.push(st),
            _ => {
                return Err(ApiError::invalid_request(format!(
                    "on_job.states: `{s}` is not a final state; use succeeded, failed, cancelled, timed_out or final"
                )))
            }
        }
    }
    states.sort_by_key(|s| s.as_str());
    states.dedup();
    if states.is_empty() {
        return Err(ApiError::invalid_request("on_job.states is empty; name at least one state, or `final`"));
    }
    Ok(OnJob { sandbox: b.sandbox.clone(), job: b.job.clone(), states })
}

fn on_file(b: &OnFileBody) -> ApiResult<OnFile> {
    let events = b.events.clone().unwrap_or_else(|| vec!["appeared".into()]);
    if let Some(e) = events.iter().find(|e| !FILE_EVENTS.contains(&e.as_str())) {
        return Err(ApiError::invalid_request(format!(
            "on_file.events: unknown event `{e}`; use appeared, changed or vanished"
        )));
    }
    if events.is_empty() {
        return Err(ApiError::invalid_request(
            "on_file.events is empty; name at least one of appeared, changed, vanished",
        ));
    }
    let settle_ms = match &b.settle {
        Some(t) => shoal_core::duration::parse(t)
            .map_err(|m| ApiError::invalid_request(format!("on_file.settle: {m}")))?
            .as_millis() as u64,
        None => DEFAULT_SETTLE_MS,
    };
    Ok(OnFile { sandbox: b.sandbox.clone(), pattern: b.pattern.clone(), events, settle_ms })
}

fn on_cluster(b: &OnClusterBody) -> ApiResult<OnCluster> {
    let events = b.events.clone().unwrap_or_else(|| vec!["node_died".into(), "node_joined".into()]);
    if let Some(e) = events.iter().find(|e| !CLUSTER_EVENTS.contains(&e.as_str())) {
        return Err(ApiError::invalid_request(format!(
            "on_cluster.events: unknown event `{e}`; use node_joined, node_left or node_died"
        )));
    }
    if events.is_empty() {
        return Err(ApiError::invalid_request("on_cluster.events is empty"));
    }
    Ok(OnCluster { events })
}

/// Checks a file listener's sandbox and pattern. The pattern's syntax is checked by the
/// server's file watcher through [`crate::Engine::check_file_pattern`].
async fn check_file_source(state: &crate::AppState, f: &OnFile) -> ApiResult<()> {
    shoal_service::jobs::sandbox(&state.store, &f.sandbox, "on_file").await?;
    state.engine.check_file_pattern(&f.pattern).map_err(|(leaves, m)| {
        if leaves {
            ApiError::invalid_path(format!("on_file.pattern: {m}"))
        } else {
            ApiError::invalid_pattern(format!("on_file.pattern: {m}"))
        }
    })
}

/// A validated definition.
/// A listener's definition from its body; `principal` must be able to read what it watches
/// (its events carry what happened there into its job's parameters).
async fn definition(
    state: &crate::AppState,
    principal: &Principal,
    b: &Body_,
    name: String,
    kind: ListenerKind,
    old_secret: Option<String>,
) -> ApiResult<ListenerDef> {
    let missing = |f: &str| ApiError::invalid_request(format!("`{f}` is required"));
    let given =
        [("on_job", b.on_job.is_some()), ("on_file", b.on_file.is_some()), ("on_cluster", b.on_cluster.is_some())];
    let wanted = match kind {
        ListenerKind::Job => Some("on_job"),
        ListenerKind::File => Some("on_file"),
        ListenerKind::Cluster => Some("on_cluster"),
        ListenerKind::Webhook => None,
    };
    if let Some((extra, _)) = given.iter().find(|(n, g)| *g && Some(*n) != wanted) {
        return Err(ApiError::invalid_request(format!("`{extra}` does not go with a {} listener", kind.as_str())));
    }
    let config = match kind {
        ListenerKind::Job => {
            let j = on_job(b.on_job.as_ref().ok_or_else(|| missing("on_job"))?)?;
            principal.require(Role::Viewer, Some(&j.sandbox), "watching a sandbox's executions")?;
            let s = shoal_service::jobs::sandbox(&state.store, &j.sandbox, "on_job").await?;
            shoal_core::SandboxPath::parse(&j.job).map_err(|e| ApiError::invalid_path(format!("on_job.job: {e}")))?;
            drop(s);
            serde_json::to_string(&j)
        }
        ListenerKind::File => {
            let f = on_file(b.on_file.as_ref().ok_or_else(|| missing("on_file"))?)?;
            principal.require(Role::Viewer, Some(&f.sandbox), "watching a sandbox's files")?;
            check_file_source(state, &f).await?;
            shoal_service::jobs::check_file_listener(&state.store, &f.sandbox, b.sandbox.as_deref()).await?;
            serde_json::to_string(&f)
        }
        ListenerKind::Cluster => {
            let c = on_cluster(b.on_cluster.as_ref().unwrap_or(&OnClusterBody { events: None }))?;
            principal.require(Role::Viewer, None, "watching the cluster's nodes")?;
            serde_json::to_string(&c)
        }
        ListenerKind::Webhook => Ok("{}".into()),
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let secret = match (kind, &b.secret) {
        (ListenerKind::Webhook, Some(s)) if s.chars().count() < MIN_SECRET_CHARS => {
            return Err(ApiError::invalid_request(format!(
                "secret: a webhook secret needs at least {MIN_SECRET_CHARS} characters; leave it out to have one generated"
            )))
        }
        (ListenerKind::Webhook, Some(s)) => Some(s.clone()),
        (ListenerKind::Webhook, None) => Some(old_secret.unwrap_or_else(|| {
            use rand::RngCore;
            let mut bytes = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut bytes);
            hex::encode(bytes)
        })),
        (_, Some(_)) => return Err(ApiError::invalid_request("`secret` goes with webhook listeners only")),
        (_, None) => None,
    };
    let sandbox = b.sandbox.clone().ok_or_else(|| missing("sandbox"))?;
    let job = b.job.clone().ok_or_else(|| missing("job"))?;
    if let Some(on) = b.on_job.as_ref().filter(|_| kind == ListenerKind::Job) {
        if on.sandbox == sandbox && on.job.trim_start_matches('/') == job.trim_start_matches('/') {
            return Err(ApiError::invalid_request(format!(
                "the listener would start `{job}` each time `{job}` ends, forever; chain it to another job"
            )));
        }
    }
    let params = jobs::params_from_json(&b.params.clone().unwrap_or_default())?;
    check_templates(kind, &params).map_err(ApiError::invalid_parameter)?;
    // Whoever creates or changes a listener owns it from then on: its jobs start with their rights.
    let owner = principal.owner();
    Ok(ListenerDef { name, kind, sandbox, job, params, config, secret, enabled: b.enabled.unwrap_or(true), owner })
}

/// A listener row as the API shows it (never with its secret).
pub fn listener(l: &ListenerRow) -> ApiResult<wire::Listener> {
    let kind = l.kind;
    let bad_config =
        |e: serde_json::Error| ApiError::internal(format!("listener `{}` has a bad stored config: {e}", l.name));
    let mut v = wire::Listener {
        id: l.id.clone(),
        name: l.name.clone(),
        kind,
        sandbox: l.sandbox.clone(),
        job: l.job.clone(),
        params: l.params.clone(),
        enabled: l.enabled,
        on_job: None,
        on_file: None,
        on_cluster: None,
        hook_url: None,
        secret: None,
        owner: l.owner.as_ref().map(|o| o.label.clone()),
        created_at: crate::rfc3339(l.created_at),
        updated_at: crate::rfc3339(l.updated_at),
    };
    match kind {
        wire::ListenerKind::Job => {
            let j: OnJob = serde_json::from_str(&l.config).map_err(bad_config)?;
            let states = j.states;
            v.on_job = Some(wire::OnJob { sandbox: j.sandbox, job: j.job, states });
        }
        wire::ListenerKind::File => {
            let f: OnFile = serde_json::from_str(&l.config).map_err(bad_config)?;
            let events = f.events.iter().map(|e| convert::named("file event", e)).collect::<ApiResult<_>>()?;
            v.on_file = Some(wire::OnFile { sandbox: f.sandbox, pattern: f.pattern, events, settle_ms: f.settle_ms });
        }
        wire::ListenerKind::Cluster => {
            let c: OnCluster = serde_json::from_str(&l.config).map_err(bad_config)?;
            let events = c.events.iter().map(|e| convert::named("cluster event", e)).collect::<ApiResult<_>>()?;
            v.on_cluster = Some(wire::OnCluster { events });
        }
        wire::ListenerKind::Webhook => v.hook_url = Some(format!("/api/v1/hooks/{}", l.name)),
    }
    Ok(v)
}

fn event(e: &EventRow) -> wire::ListenerEvent {
    wire::ListenerEvent {
        listener: e.listener_id.clone(),
        key: e.key.clone(),
        at: crate::rfc3339(e.at),
        node: e.node_id.clone(),
        outcome: e.outcome,
        reason: e.reason,
        message: e.message.clone(),
        execution: e.execution_id.clone(),
        payload: e.payload.clone(),
    }
}

/// The answer to a delivery seen before.
fn replayed(e: &EventRow) -> Response {
    let answer = wire::HookAnswer { event: event(e), execution: None, replayed: Some(true) };
    (StatusCode::OK, Json(answer)).into_response()
}

/// What is a listener's own in the handlers that [`triggers`] shares.
impl Trigger for ListenerRow {
    const NAME: &'static str = "listener";
    type Def = ListenerDef;
    type Wire = wire::Listener;
    fn unknown(message: String) -> ApiError {
        ApiError::unknown_listener(message)
    }
    fn job(def: &ListenerDef) -> (&str, &str, &BTreeMap<String, String>) {
        (&def.sandbox, &def.job, &def.params)
    }
    fn sandbox(&self) -> &str {
        &self.sandbox
    }
    async fn get(store: &Store, reference: &str) -> StoreResult<Option<Self>> {
        store.get_listener(reference).await
    }
    async fn list(store: &Store) -> StoreResult<Vec<Self>> {
        store.list_listeners().await
    }
    async fn create(store: &Store, def: &ListenerDef) -> StoreResult<Self> {
        store.create_listener(def).await
    }
    async fn update(store: &Store, id: &str, def: &ListenerDef) -> StoreResult<Self> {
        store.update_listener(id, def).await
    }
    async fn delete(store: &Store, reference: &str) -> StoreResult<()> {
        store.delete_listener(reference).await
    }
    fn show(&self) -> ApiResult<wire::Listener> {
        listener(self)
    }
    fn show_created(&self) -> ApiResult<wire::Listener> {
        let mut v = self.show()?;
        if self.kind == ListenerKind::Webhook {
            // Shown once: the API never returns it again.
            v.secret = self.secret.clone();
        }
        Ok(v)
    }
}

#[utoipa::path(get, path = "/listeners", operation_id = "listListeners", tag = "listeners", responses((status = 200, description = "Every listener, sorted by name.", body = wire::ListenerList)))]
pub async fn list(state: State, principal: Principal) -> ApiResult<Json<wire::ListenerList>> {
    Ok(Json(wire::ListenerList { listeners: triggers::list::<ListenerRow>(&state, &principal).await? }))
}

#[utoipa::path(get, path = "/listeners/{id}", operation_id = "getListener", tag = "listeners", params(("id" = String, Path, description = "Listener id or name.")), responses((status = 200, description = "The listener (without a webhook's secret).", body = wire::Listener)))]
pub async fn get(state: State, principal: Principal, Path(reference): Path<String>) -> ApiResult<Json<wire::Listener>> {
    Ok(Json(listener(&triggers::find(&state, &principal, Role::Viewer, &reference).await?)?))
}

#[utoipa::path(post, path = "/listeners", operation_id = "createListener", tag = "listeners", request_body = wire::ListenerRequest, responses((status = 201, description = "Defined; for a webhook, with its `secret` (shown this once).", body = wire::Listener)))]
pub async fn create(state: State, principal: Principal, request: Request) -> ApiResult<Response> {
    let (b, request) = triggers::receive::<Body_>(&state, request).await?;
    let name = triggers::new_name::<ListenerRow>(&b.name)?;
    let kind_name =
        b.kind.clone().ok_or_else(|| ApiError::invalid_request("`kind` is required: job, file, webhook or cluster"))?;
    let kind = ListenerKind::parse(&kind_name).ok_or_else(|| {
        ApiError::invalid_request(format!("unknown listener kind `{kind_name}`; use job, file, webhook or cluster"))
    })?;
    let def = definition(&state, &principal, &b, name, kind, None).await?;
    triggers::save::<ListenerRow>(&state, &principal, request, &def, None).await
}

#[utoipa::path(patch, path = "/listeners/{id}", operation_id = "patchListener", tag = "listeners", params(("id" = String, Path, description = "Listener id or name.")), request_body = wire::ListenerRequest, responses((status = 200, description = "The listener as changed (without a webhook's secret).", body = wire::Listener)))]
pub async fn patch(
    state: State,
    principal: Principal,
    Path(reference): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let (b, request) = triggers::receive::<Body_>(&state, request).await?;
    let old: ListenerRow = triggers::find(&state, &principal, Role::Editor, &reference).await?;
    if b.name.as_ref().is_some_and(|n| *n != old.name) || b.kind.as_ref().is_some_and(|k| k != old.kind.as_str()) {
        return Err(ApiError::conflict(format!(
            "listener `{}` is a {} listener; its name and kind cannot change: create a new listener instead",
            old.name,
            old.kind.as_str()
        )));
    }
    let kind = old.kind;
    let sources = [
        ("on_job", ListenerKind::Job, b.on_job.is_some()),
        ("on_file", ListenerKind::File, b.on_file.is_some()),
        ("on_cluster", ListenerKind::Cluster, b.on_cluster.is_some()),
        ("secret", ListenerKind::Webhook, b.secret.is_some()),
    ];
    if let Some((field, takes, _)) = sources.iter().find(|(_, k, given)| *given && *k != kind) {
        return Err(ApiError::conflict(format!(
            "listener `{}` is a {} listener; `{field}` goes with kind {} only",
            old.name,
            kind.as_str(),
            takes.as_str()
        )));
    }
    let config: Value = serde_json::from_str(&old.config).unwrap_or(Value::Null);
    let merged = Body_ {
        name: None,
        kind: None,
        sandbox: b.sandbox.or(Some(old.sandbox.clone())),
        job: b.job.or(Some(old.job.clone())),
        params: b.params.or_else(|| Some(old.params.iter().map(|(k, v)| (k.clone(), json!(v))).collect())),
        enabled: b.enabled.or(Some(old.enabled)),
        on_job: b.on_job.or_else(|| if kind == ListenerKind::Job { reparse(&config, "job") } else { None }),
        on_file: b.on_file.or_else(|| if kind == ListenerKind::File { reparse(&config, "file") } else { None }),
        on_cluster: b.on_cluster.or_else(|| {
            if kind == ListenerKind::Cluster {
                reparse(&config, "cluster")
            } else {
                None
            }
        }),
        secret: b.secret,
    };
    let def = definition(&state, &principal, &merged, old.name.clone(), kind, old.secret.clone()).await?;
    triggers::save::<ListenerRow>(&state, &principal, request, &def, Some(&old.id)).await
}

fn reparse<T: serde::de::DeserializeOwned>(config: &Value, kind: &str) -> Option<T> {
    serde_json::from_value(config_body(config, kind)).ok()
}

/// A stored config in the shape the request takes (for PATCH, which may leave it out).
fn config_body(config: &Value, kind: &str) -> Value {
    let mut v = config.clone();
    match kind {
        "job" => {}
        "file" => {
            if let Some(ms) = v.get("settle_ms").and_then(Value::as_u64) {
                v["settle"] = json!(format!("{ms}ms"));
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("settle_ms");
            }
        }
        _ => {}
    }
    v
}

#[utoipa::path(delete, path = "/listeners/{id}", operation_id = "deleteListener", tag = "listeners", params(("id" = String, Path, description = "Listener id or name.")), responses((status = 204, description = "Deleted, with its events.")))]
pub async fn delete(state: State, principal: Principal, Path(reference): Path<String>) -> ApiResult<StatusCode> {
    triggers::delete::<ListenerRow>(&state, &principal, &reference).await
}

#[utoipa::path(get, path = "/listeners/{id}/events", operation_id = "listListenerEvents", tag = "listeners", params(("id" = String, Path, description = "Listener id or name."), ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "How many entries, newest first (default 50).")), responses((status = 200, description = "The newest events.", body = wire::EventList)))]
pub async fn events(
    state: State,
    principal: Principal,
    Path(reference): Path<String>,
    q: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<wire::EventList>> {
    let (l, limit) = triggers::history::<ListenerRow>(&state, &principal, &reference, q).await?;
    let rows = state.store.list_events(&l.id, limit).await?;
    Ok(Json(wire::EventList { events: rows.iter().map(event).collect() }))
}

/// The signature of a delivery to the webhook `hook`: `t=<unix seconds>,v1=<hex MAC>`, the
/// MAC being HMAC-SHA256 with the hook's secret over exactly the bytes
/// `"<t>\n<hook>\n<delivery>\n"` followed by the raw body: `t` in decimal, the hook's name,
/// and the `X-Shoal-Hook-Delivery` value as sent (an empty line when none is sent). None of
/// the three lines can hold a newline, so no two deliveries share their signed bytes, and a
/// delivery signed for one hook does not verify for another with the same secret.
pub fn sign_hook(secret: &[u8], hook: &str, unix_s: i64, delivery: Option<&str>, body: &[u8]) -> String {
    format!("t={unix_s},v1={}", hex::encode(hook_mac(secret, hook, unix_s, delivery, body).finalize().into_bytes()))
}

/// The HMAC state over a delivery's signed content (see [`sign_hook`]).
fn hook_mac(secret: &[u8], hook: &str, t: i64, delivery: Option<&str>, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    for line in [t.to_string().as_str(), hook, delivery.unwrap_or("")] {
        mac.update(line.as_bytes());
        mac.update(b"\n");
    }
    mac.update(body);
    mac
}

/// A signature header that passed the cheap checks: its time (within the window) and its
/// `v1=` MACs, at most [`MAX_HOOK_SIGNATURES`].
#[derive(Debug)]
struct HookSignature {
    t: i64,
    macs: Vec<[u8; 32]>,
}

fn bad_signature(m: &str) -> ApiError {
    ApiError::invalid_signature(format!("webhook signature: {m}"))
}

/// Parses and bounds a webhook's signature header and checks its time, on the store's
/// clock; computes no MAC, so its cost does not depend on the body.
fn parse_hook_signature(headers: &HeaderMap, now_s: i64) -> ApiResult<HookSignature> {
    let bad = bad_signature;
    let mut all = headers.get_all(SIGNATURE_HEADER).iter();
    let header = all.next().ok_or_else(|| {
        bad("missing; send X-Shoal-Hook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 with the hook's secret of the bytes \"<t>\\n<hook name>\\n<X-Shoal-Hook-Delivery value, or nothing when not sent>\\n\" followed by the raw body>")
    })?;
    if all.next().is_some() {
        return Err(bad("sent more than once; send one X-Shoal-Hook-Signature header"));
    }
    if header.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(bad(&format!(
            "the header is {} bytes, more than {MAX_SIGNATURE_HEADER_BYTES}; send t= and at most {MAX_HOOK_SIGNATURES} v1= signatures",
            header.len()
        )));
    }
    let header = header.to_str().map_err(|_| bad("not readable text"))?;
    let mut t = None;
    let mut macs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => {
                if t.is_some() {
                    return Err(bad("t= given twice; send one"));
                }
                t = Some(v.parse::<i64>().map_err(|_| bad("t is not a whole number of Unix seconds"))?);
            }
            Some(("v1", v)) => {
                if macs.len() == MAX_HOOK_SIGNATURES {
                    return Err(bad(&format!(
                        "more than {MAX_HOOK_SIGNATURES} v1= signatures; send at most {MAX_HOOK_SIGNATURES} (one per secret in use)"
                    )));
                }
                let mut mac = [0u8; 32];
                hex::decode_to_slice(v, &mut mac).map_err(|_| bad("v1 is not 64 hex digits"))?;
                macs.push(mac);
            }
            _ => {}
        }
    }
    let t = t.ok_or_else(|| bad("no t=<unix seconds>"))?;
    // Saturating: no t, however far off, wraps into the window.
    if t < now_s.saturating_sub(HOOK_TOLERANCE_S) || t > now_s.saturating_add(HOOK_TOLERANCE_S) {
        return Err(bad(&format!(
            "its time t={t} is more than {HOOK_TOLERANCE_S} s from the server's; sign with the current time"
        )));
    }
    if macs.is_empty() {
        return Err(bad("no v1=<signature>"));
    }
    Ok(HookSignature { t, macs })
}

/// Checks the header's MACs against the delivery and body: one HMAC over the body, however
/// many signatures were sent. Answers the MAC that matched.
fn check_hook_mac(
    sig: &HookSignature,
    secret: &[u8],
    hook: &str,
    delivery: Option<&str>,
    body: &[u8],
) -> ApiResult<[u8; 32]> {
    let mac = hook_mac(secret, hook, sig.t, delivery, body);
    for given in &sig.macs {
        if mac.clone().verify_slice(given).is_ok() {
            return Ok(*given);
        }
    }
    let delivery_line = match delivery {
        Some(_) => "the X-Shoal-Hook-Delivery value as sent",
        None => "an empty line, as no X-Shoal-Hook-Delivery was sent",
    };
    Err(bad_signature(&format!(
        "does not match; sign with HMAC-SHA256 and the hook's secret exactly the bytes \"<t>\\n{hook}\\n<delivery>\\n\" followed by the raw body: t as in the header, the hook's name (`{hook}`), then {delivery_line}, each ended by a newline"
    )))
}

/// Checks a webhook's signature header against the delivery id and body, on the store's
/// clock; answers the MAC that matched.
#[cfg(test)]
fn verify_hook(
    headers: &HeaderMap,
    secret: &[u8],
    hook: &str,
    delivery: Option<&str>,
    body: &[u8],
    now_s: i64,
) -> ApiResult<[u8; 32]> {
    check_hook_mac(&parse_hook_signature(headers, now_s)?, secret, hook, delivery, body)
}

/// The `X-Shoal-Hook-Delivery` header, when sent: 1 to 200 printable ASCII characters (space
/// to `~`). No newline or other control character (a tab is one), so it is one line of the
/// signed content; an empty value is refused, so "no header" is the only empty line.
fn hook_delivery(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(DELIVERY_HEADER) else { return Ok(None) };
    let d = v.as_bytes();
    if d.is_empty() || d.len() > 200 || !d.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(ApiError::bad_request(
            "X-Shoal-Hook-Delivery must be 1 to 200 printable ASCII characters (no control characters)",
        ));
    }
    Ok(Some(String::from_utf8_lossy(d).into_owned()))
}

/// `POST /hooks/{name}`: a signed delivery starts the hook's job once.
#[utoipa::path(post, path = "/hooks/{name}", operation_id = "deliverHook", tag = "listeners", params(("name" = String, Path, description = "Name of a webhook listener (its id is accepted too)."), ("X-Shoal-Hook-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256>`: the MAC, with the hook's secret, of the bytes `<t>\\n<hook name>\\n<delivery id or empty>\\n` followed by the body. At most 1 KiB and four `v1=` entries; `t` within 300 s of the store's clock."), ("X-Shoal-Hook-Delivery" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$", description = "Names the delivery: one id starts one job however often it is sent (1 to 255 visible ASCII characters).")), request_body(content = Object, content_type = "application/json", description = "Any JSON value; its fields are the templates' `{event.payload.FIELD}`."), responses((status = 201, description = "A new delivery: its event, and the execution it started (null when the listener is disabled).", body = wire::HookAnswer), (status = 200, description = "A delivery seen before: the first delivery's event, with `replayed: true`; nothing was started.", body = wire::HookAnswer)))]
pub async fn hook(state: State, Path(name): Path<String>, request: Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let bytes = body::read_limited(&parts.headers, body, state.limits.max_request_bytes).await?;
    let listener = state
        .store
        .get_listener(&name)
        .await?
        .filter(|l| l.kind == ListenerKind::Webhook && l.name == name)
        .ok_or_else(|| ApiError::unknown_hook(format!("no webhook named `{name}`")))?;
    let now = state.store.now_ms().await?;
    let delivery = hook_delivery(&parts.headers)?;
    // Bounded before any MAC: one header of at most 1 KiB, at most 4 signatures.
    let sig = parse_hook_signature(&parts.headers, now.div_euclid(1000))?;
    let secret = listener.secret.clone().unwrap_or_default();
    // The hook's name is signed: a delivery for another hook with the same secret fails.
    let mac = if bytes.len() > HOOK_INLINE_MAC_BYTES {
        // A large body's MAC runs off the async workers (it would hold up /health and leases).
        let (body, d, hook) = (bytes.clone(), delivery.clone(), listener.name.clone());
        tokio::task::spawn_blocking(move || check_hook_mac(&sig, secret.as_bytes(), &hook, d.as_deref(), &body))
            .await
            .map_err(|e| ApiError::internal(format!("checking the webhook signature: {e}")))??
    } else {
        check_hook_mac(&sig, secret.as_bytes(), &listener.name, delivery.as_deref(), &bytes)?
    };
    let payload: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid_json(format!("webhook payload is not valid JSON: {e}")))?
    };
    // The delivery id is signed (on its own line), so a captured request replays only as
    // itself; without one, the signature names the delivery (the same bytes again are the
    // same delivery).
    let (delivery, key) = match delivery {
        Some(d) => (d.clone(), format!("delivery:{d}")),
        None => {
            let sig = format!("sig:{}", hex::encode(mac));
            (sig.clone(), sig)
        }
    };
    if let Some(seen) = state.store.get_event(&listener.id, &key).await? {
        return Ok(replayed(&seen));
    }
    let s = shoal_service::jobs::sandbox(&state.store, &listener.sandbox, "the webhook").await?;
    if !shoal_service::jobs::readable_here(&s, &state.node.id) {
        let holder = s.node_id.clone().unwrap_or_default();
        let request = Request::from_parts(parts, Body::from(bytes));
        return crate::forward::to_sandbox_holder(&state, &s.name, &holder, request).await;
    }
    let values: BTreeMap<String, String> =
        [("delivery".to_owned(), delivery.clone()), ("hook".to_owned(), listener.name.clone())].into();
    let mut stored_payload = values.clone();
    stored_payload.insert("payload".into(), payload.to_string());
    let allowed =
        shoal_service::rights::owner_may_run(&state.store, listener.owner.as_ref(), &listener.sandbox, &[]).await?;
    let (execution, reason, message) = match allowed {
        _ if !listener.enabled => (None, Some(EventReason::Disabled), None),
        Err(why) => {
            tracing::warn!(listener = %listener.name, reason = %why, "a webhook delivery starts nothing: its owner may not run its job");
            (None, Some(EventReason::NotPermitted), Some(why))
        }
        Ok(()) => {
            let params = event_params(&listener.params, &values, &|n| payload_field(&payload, n))
                .map_err(|m| ApiError::invalid_parameter(format!("webhook `{name}`: {m}")))?;
            let job = shoal_service::jobs::load(s, &listener.job).await?;
            let origin = Origin::owned(shoal_wire::Trigger::Listener, &listener.id, listener.owner.as_ref());
            (Some(job.execution(&params, origin)?), None, None)
        }
    };
    let new =
        NewEvent { key: key.clone(), payload: stored_payload, execution, reason, message, cursor: None, silent: false };
    let recorded = state.store.record_events(&listener.id, &state.node.id, &[new], None).await?;
    let row = state
        .store
        .get_event(&listener.id, &key)
        .await?
        .ok_or_else(|| ApiError::internal("the webhook's event vanished"))?;
    if recorded.is_empty() {
        // The same delivery raced in through another node and won.
        return Ok(replayed(&row));
    }
    state.engine.wake();
    state.metrics.events_recorded.fetch_add(1, Ordering::Relaxed);
    let execution = match &row.execution_id {
        Some(id) => {
            state.metrics.executions_submitted.fetch_add(1, Ordering::Relaxed);
            state.store.get_execution(id).await?.map(|e| crate::executions::execution(&e)).transpose()?
        }
        None => None,
    };
    let answer = wire::HookAnswer { event: event(&row), execution: Some(execution), replayed: None };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &[u8] = b"0123456789abcdef";
    const NOW: i64 = 1_700_000_010;

    fn signed(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h
    }

    fn refusal(r: ApiResult<impl std::fmt::Debug>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code, "invalid_signature", "{}", e.message);
        e.message
    }

    #[test]
    fn a_signature_is_checked_against_body_secret_and_time() {
        let body = br#"{"a":1}"#;
        let h = signed(&sign_hook(SECRET, "h", 1_700_000_000, None, body));
        assert!(verify_hook(&h, SECRET, "h", None, body, NOW).is_ok());
        // Another body, another secret, a stale time, no header: all 401.
        refusal(verify_hook(&h, SECRET, "h", None, b"{}", NOW));
        refusal(verify_hook(&h, b"fedcba9876543210", "h", None, body, NOW));
        refusal(verify_hook(&h, SECRET, "h", None, body, 1_700_001_000));
        refusal(verify_hook(&HeaderMap::new(), b"x", "h", None, body, 0));
    }

    #[test]
    fn the_delivery_id_is_signed() {
        let body = br#"{"a":1}"#;
        let h = signed(&sign_hook(SECRET, "h", NOW, Some("d-1"), body));
        let mac = verify_hook(&h, SECRET, "h", Some("d-1"), body, NOW).unwrap();
        assert_eq!(format!("t={NOW},v1={}", hex::encode(mac)), sign_hook(SECRET, "h", NOW, Some("d-1"), body));
        // The captured request with another delivery id, or with none, fails.
        let m = refusal(verify_hook(&h, SECRET, "h", Some("d-2"), body, NOW));
        assert!(m.contains("\"<t>\\nh\\n<delivery>\\n\" followed by the raw body"), "{m}");
        assert!(m.contains("X-Shoal-Hook-Delivery value as sent"), "{m}");
        refusal(verify_hook(&h, SECRET, "h", None, body, NOW));
        // A signature made without a delivery id does not take one.
        let h = signed(&sign_hook(SECRET, "h", NOW, None, body));
        let m = refusal(verify_hook(&h, SECRET, "h", Some("d-1"), body, NOW));
        assert!(m.contains("X-Shoal-Hook-Delivery value as sent"), "{m}");
        // ...and the message for one sent without an id says the line is empty.
        let m = refusal(verify_hook(&h, SECRET, "h", None, b"{}", NOW));
        assert!(m.contains("an empty line, as no X-Shoal-Hook-Delivery was sent"), "{m}");
        // The signed content, exactly: "<t>\n<hook>\n<delivery>\n<body>".
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(format!("{NOW}\nh\nd-1\n{{\"a\":1}}").as_bytes());
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sign_hook(SECRET, "h", NOW, Some("d-1"), body), format!("t={NOW},v1={want}"));
        // A delivery id is one line: no control character (a tab is one), not empty; a `.`
        // or a space is fine.
        let mut h = HeaderMap::new();
        for bad in [&b"a\tb"[..], b"", &[b'a'; 201]] {
            h.insert(DELIVERY_HEADER, HeaderValue::from_bytes(bad).unwrap());
            assert_eq!(hook_delivery(&h).unwrap_err().code, "bad_request", "{bad:?}");
        }
        assert!(HeaderValue::from_bytes(b"a\nb").is_err(), "a header value cannot hold a newline");
        for good in ["a-b", "a.b", "12.5", "a b", &"x".repeat(200)] {
            h.insert(DELIVERY_HEADER, HeaderValue::from_str(good).unwrap());
            assert_eq!(hook_delivery(&h).unwrap().as_deref(), Some(good));
        }
    }

    #[test]
    fn too_many_signatures_are_refused_before_any_mac() {
        let body = br#"{"a":1}"#;
        let good = sign_hook(SECRET, "h", NOW, None, body);
        let v1 = good.split_once(",v1=").unwrap().1;
        let other = "ab".repeat(32);
        // Four are considered (the good one last)...
        let four = format!("t={NOW},v1={other},v1={other},v1={other},v1={v1}");
        assert!(four.len() <= MAX_SIGNATURE_HEADER_BYTES);
        assert!(verify_hook(&signed(&four), SECRET, "h", None, body, NOW).is_ok());
        // ...five are refused by the parse, which takes no body and computes no MAC.
        let five = format!("t={NOW},v1={other},v1={other},v1={other},v1={other},v1={v1}");
        assert!(five.len() <= MAX_SIGNATURE_HEADER_BYTES);
        assert!(refusal(parse_hook_signature(&signed(&five), NOW)).contains("at most 4"));
        refusal(verify_hook(&signed(&five), SECRET, "h", None, body, NOW));
        // A v1 that is not a SHA-256 MAC is refused as such.
        assert!(refusal(parse_hook_signature(&signed(&format!("t={NOW},v1=abcd")), NOW)).contains("64 hex"));
        // Two signature headers are refused too.
        let mut h = signed(&good);
        h.append(SIGNATURE_HEADER, HeaderValue::from_str(&good).unwrap());
        assert!(refusal(parse_hook_signature(&h, NOW)).contains("more than once"));
    }

    #[test]
    fn a_long_signature_header_is_refused() {
        let body = br#"{"a":1}"#;
        // Valid, but padded past the bound with entries that are ignored.
        let padded = format!("{},{}", sign_hook(SECRET, "h", NOW, None, body), "x=y,".repeat(300));
        assert!(padded.len() > MAX_SIGNATURE_HEADER_BYTES);
        assert!(refusal(parse_hook_signature(&signed(&padded), NOW)).contains("more than 1024"));
        // 5 000 v1= entries: refused by length, whatever the body.
        let many = format!("t={NOW},{}", format!("v1={},", "ab".repeat(32)).repeat(5000));
        assert!(refusal(parse_hook_signature(&signed(&many), NOW)).contains("more than 1024"));
    }

    #[test]
    fn far_off_times_are_refused_without_wrapping() {
        let body = br#"{"a":1}"#;
        for now in [NOW, 0, i64::MAX, i64::MIN] {
            for t in [
                i64::MIN,
                i64::MAX,
                now.wrapping_sub(i64::MIN), // now - 2^63, wrapped as the old check computed it
                now.wrapping_add(i64::MIN),
                now.saturating_sub(HOOK_TOLERANCE_S + 1),
                now.saturating_add(HOOK_TOLERANCE_S + 1),
            ] {
                if (now.saturating_sub(HOOK_TOLERANCE_S)..=now.saturating_add(HOOK_TOLERANCE_S)).contains(&t) {
                    continue; // at the clock's ends some of these are within the window
                }
                let h = signed(&sign_hook(SECRET, "h", t, None, body));
                let m = refusal(verify_hook(&h, SECRET, "h", None, body, now));
                assert!(m.contains("more than 300 s"), "t={t}, now={now}: {m}");
            }
        }
        // The window's edges are inside it.
        for t in [NOW - HOOK_TOLERANCE_S, NOW + HOOK_TOLERANCE_S] {
            assert!(verify_hook(&signed(&sign_hook(SECRET, "h", t, None, body)), SECRET, "h", None, body, NOW).is_ok());
        }
    }

    fn sign_for(hook: &str, t: i64, delivery: Option<&str>, body: &[u8]) -> String {
        sign_hook(SECRET, hook, t, delivery, body)
    }

    fn verify_for(h: &HeaderMap, hook: &str, delivery: Option<&str>, body: &[u8]) -> ApiResult<[u8; 32]> {
        verify_hook(h, SECRET, hook, delivery, body, NOW)
    }

    #[test]
    fn a_shifted_body_does_not_verify() {
        // No id and body `12.5`, re-sent as id `12` and body `5`: refused.
        let h = signed(&sign_for("h", NOW, None, b"12.5"));
        assert!(verify_for(&h, "h", None, b"12.5").is_ok());
        refusal(verify_for(&h, "h", Some("12"), b"5"));
        // And the reverse.
        let h = signed(&sign_for("h", NOW, Some("12"), b"5"));
        assert!(verify_for(&h, "h", Some("12"), b"5").is_ok());
        refusal(verify_for(&h, "h", None, b"12.5"));
        // Nor does a delivery id shift into the hook name or the time.
        let h = signed(&sign_for("h", NOW, Some("x"), b"{}"));
        refusal(verify_for(&h, "h\nx", None, b"{}"));
    }

    #[test]
    fn a_delivery_for_one_hook_does_not_verify_for_another() {
        let body = br#"{"a":1}"#;
        for delivery in [Some("d-1"), None] {
            let h = signed(&sign_for("a", NOW, delivery, body));
            assert!(verify_for(&h, "a", delivery, body).is_ok());
            let m = refusal(verify_for(&h, "b", delivery, body));
            assert!(m.contains("`b`"), "{m}");
        }
    }

    #[test]
    fn the_signed_bytes_are_time_hook_delivery_and_body_on_lines() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"0123456789abcdef", b"1700000010\ndeploy\nd-1\n{\"a\":1}", hashlib.sha256).hexdigest())'
        // and the same over b"1700000010\ndeploy\n\n{\"a\":1}" (no delivery id: an empty line).
        let body = br#"{"a":1}"#;
        assert_eq!(
            sign_for("deploy", NOW, Some("d-1"), body),
            "t=1700000010,v1=dcda030e92268144b1ad40ac348c8b9da7c1a31f29bc4901ac15b448516735dc"
        );
        assert_eq!(
            sign_for("deploy", NOW, None, body),
            "t=1700000010,v1=0937dc69578d105be9983c6e8befccf2be819d94727d3bd4786a708578ea4290"
        );
    }
}
