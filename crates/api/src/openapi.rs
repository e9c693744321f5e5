//! The OpenAPI document, generated: the paths, parameters, request bodies and success
//! responses come from the `#[utoipa::path]` of each handler, collected by the same router
//! that serves them (`utoipa_axum`), so a route cannot exist without its description; the
//! schemas come from the wire types (`shoal-wire`). This module adds what the handlers'
//! attributes do not say: which error codes each operation can answer ([`ERRORS`], in the
//! statuses of the one table, `shoal_wire::ErrorCode`), and the few constraints that serde's
//! types cannot express (which fields a create needs; job *or* command in a submission).

use crate::AppState;
use serde_json::{json, Value};
use shoal_wire::ErrorCode::{self, *};
use std::sync::{Arc, OnceLock};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Codes every operation under `/api/v1` can answer: a request carrying forwarding headers
/// whose signature does not verify.
const FORWARDED: &[ErrorCode] = &[InvalidSignature];
/// Codes of every operation but the health checks: a request from a web page of another
/// origin, or naming a host the node does not answer to (`browser.rs`).
const BROWSER: &[ErrorCode] = &[ForeignHost, ForeignOrigin];
/// Codes of every operation that needs a credential (all but the health checks and webhooks,
/// `auth::ACCESS`); and of every one but the health checks, a credential in the query string.
const AUTH: &[ErrorCode] = &[Unauthenticated, InvalidToken];
/// The operations a `viewer` may call that name a sandbox in their path, so a token without it
/// in scope is refused (`forbidden`); the others a viewer may call answer only what is in scope
/// (an execution, schedule or listener outside it is `404`, as if it did not exist). Every
/// operation that needs more than `viewer` can answer `forbidden`.
pub const SCOPED_READS: &[&str] =
    &["getSandbox", "listSandboxJobs", "listSandboxRoot", "listSandboxRootSlash", "getSandboxFile"];
/// The health checks, open to load balancers whatever `Host` they send.
const HEALTH: &[&str] = &["liveV1", "readyV1"];
/// Codes of every operation that reads a JSON body.
const JSON_BODY: &[ErrorCode] = &[InvalidJson, BadRequest, PayloadTooLarge, UnsupportedMediaType];
/// Codes of every operation that may be forwarded to the node holding a local sandbox.
const HOLDER: &[ErrorCode] = &[SandboxNotHere, NodeUnavailable];
/// Codes of binding a sandbox's job file with parameters.
const BIND: &[ErrorCode] =
    &[UnknownSandbox, UnknownJob, InvalidJob, MissingParameter, UnknownParameter, InvalidParameter, InvalidPath];

/// The error codes of each operation (by operation id), beyond [`FORWARDED`], [`BROWSER`] (all but the health checks) and `store_unavailable` for those that read the store (every one but
/// `live`, `ready` and `getOpenApi`).
pub const ERRORS: &[(&str, &[&[ErrorCode]])] = &[
    ("listNodes", &[]),
    ("getNode", &[&[NotFound]]),
    ("drainNode", &[&[NotFound, NodeUnavailable]]),
    ("suspendNode", &[&[NotFound, NodeUnavailable]]),
    ("resumeNode", &[&[NotFound, NodeUnavailable]]),
    ("listSandboxes", &[]),
    (
        "createSandbox",
        &[JSON_BODY, HOLDER, &[AlreadyExists, InvalidRequest, InvalidPartitions, UnknownNode, RootNotAllowed]],
    ),
    ("getSandbox", &[&[NotFound]]),
    ("deleteSandbox", &[&[NotFound, Conflict]]),
    ("listSandboxJobs", &[HOLDER, &[NotFound, InvalidPath]]),
    ("listSandboxRoot", &[HOLDER, &[NotFound, InvalidQuery]]),
    ("listSandboxRootSlash", &[HOLDER, &[NotFound, InvalidQuery]]),
    ("getSandboxFile", &[HOLDER, &[NotFound, InvalidPath, InvalidQuery]]),
    ("putSandboxFile", &[HOLDER, &[NotFound, InvalidPath, InvalidQuery, BadRequest, PayloadTooLarge, Conflict]]),
    ("deleteSandboxFile", &[HOLDER, &[NotFound, InvalidPath, InvalidQuery, Conflict]]),
    ("listExecutions", &[&[InvalidQuery]]),
    (
        "submitExecution",
        &[JSON_BODY, HOLDER, BIND, &[InvalidRequest, IdempotencyKeyReused, UnknownNode, UnknownTag, UnknownSecret]],
    ),
    ("getExecution", &[&[NotFound]]),
    ("getExecutionLogs", &[&[NotFound, InvalidQuery]]),
    ("cancelExecution", &[&[NotFound, ExecutionFinished]]),
    ("listSchedules", &[]),
    ("createSchedule", &[JSON_BODY, HOLDER, BIND, &[AlreadyExists, InvalidRequest, InvalidCron, UnknownTimeZone]]),
    ("previewCron", &[JSON_BODY, &[InvalidQuery, InvalidCron, UnknownTimeZone]]),
    ("getSchedule", &[&[UnknownSchedule]]),
    (
        "patchSchedule",
        &[JSON_BODY, HOLDER, BIND, &[UnknownSchedule, Conflict, InvalidRequest, InvalidCron, UnknownTimeZone]],
    ),
    ("deleteSchedule", &[&[UnknownSchedule]]),
    ("listScheduleFirings", &[&[UnknownSchedule, InvalidQuery]]),
    ("previewSchedule", &[&[UnknownSchedule, InvalidQuery]]),
    ("listListeners", &[]),
    ("createListener", &[JSON_BODY, HOLDER, BIND, &[AlreadyExists, InvalidRequest, InvalidPattern]]),
    ("getListener", &[&[UnknownListener]]),
    ("patchListener", &[JSON_BODY, HOLDER, BIND, &[UnknownListener, Conflict, InvalidRequest, InvalidPattern]]),
    ("deleteListener", &[&[UnknownListener]]),
    ("listListenerEvents", &[&[UnknownListener, InvalidQuery]]),
    ("deliverHook", &[HOLDER, BIND, &[InvalidJson, BadRequest, PayloadTooLarge, UnknownHook]]),
    ("listTokens", &[]),
    ("createToken", &[JSON_BODY, &[AlreadyExists, InvalidRequest]]),
    ("revokeToken", &[&[NotFound, Conflict]]),
    ("createSession", &[JSON_BODY, &[InvalidCredentials, TooManyAttempts]]),
    ("deleteSession", &[]),
    ("listUsers", &[]),
    ("createUser", &[JSON_BODY, &[AlreadyExists, InvalidRequest]]),
    ("deleteUser", &[&[NotFound]]),
    ("listSecrets", &[&[InvalidQuery]]),
    ("putSecret", &[JSON_BODY, &[InvalidQuery, InvalidRequest, UnknownSandbox, SecretsKeyMismatch]]),
    ("deleteSecret", &[&[NotFound, InvalidQuery]]),
    ("rewrapSecrets", &[&[SecretsKeyMismatch]]),
    ("listAudit", &[&[InvalidQuery]]),
    ("getOpenApi", &[]),
    ("liveV1", &[]),
    ("readyV1", &[&[NotReady]]),
    ("metrics", &[]),
];

/// Operations that never fail for want of the store (every other one reads it, if only to
/// look its caller's token up).
const STORELESS: &[&str] = &["liveV1", "readyV1"];

/// What a code means, for the response descriptions.
fn meaning(code: ErrorCode) -> &'static str {
    match code {
        BadRequest => "the request could not be read (a malformed header, an interrupted body)",
        InvalidJson => "the body is not valid JSON, has unknown fields or wrong types",
        InvalidPosition => "the `X-Shoal-Position` header is not one WAL position (`X/Y` in hex) as a write's answer gave it",
        InvalidQuery => "a query parameter is unknown or out of range (for a partitioned sandbox's files: `?partition=NAME` is missing)",
        InvalidPath => "a path is refused (absolute, `..`, NUL, too long, or leading out of the sandbox)",
        Unauthorized => "the webhook signature is missing, malformed, wrong, or its time is over 300 s off",
        TokenInQuery => "a credential was sent in the query string; send it as `Authorization: Bearer TOKEN` (and revoke it, URLs are logged)",
        Unauthenticated => "no credential: send `Authorization: Bearer TOKEN`, or log in and send the `shoal_session` cookie (logging out needs the cookie)",
        InvalidToken => "the token or session cookie is malformed, mistyped, unknown, expired, revoked or logged out (the message says which)",
        InvalidCredentials => "the user name or the password is wrong (the same answer for either)",
        CsrfFailed => "a change made with a session cookie lacks `X-CSRF-Token`, or it is not the session's (`csrf_token` of the login's answer)",
        TooManyAttempts => "too many failed logins from this address (5 within 60 s on this node); `Retry-After` says in how many seconds to try again",
        Forbidden => "the credential's role or sandboxes do not allow this (the message names the role needed and the sandbox)",
        InvalidSignature => "forwarding headers (`x-shoal-*`) whose signature is missing, forged, stale or replayed; for a webhook, its `X-Shoal-Hook-Signature` is missing, malformed, wrong, or its time over 300 s off",
        NotFound => "no such resource",
        UnknownSchedule => "no schedule with this id or name",
        UnknownListener => "no listener with this id or name",
        UnknownHook => "no webhook listener with this name",
        MethodNotAllowed => "the method is not supported on this path",
        AlreadyExists => "one with this name exists",
        Conflict => "the change conflicts with the current state (executions still use it, a folder is not empty, a schedule's or listener's name or a listener's kind would change, the last admin token would be revoked)",
        ExecutionFinished => "the execution already finished",
        SandboxNotHere => "the request was already forwarded here, and the sandbox is local to another node (requests are forwarded once at most)",
        PayloadTooLarge => "the body is over the size limit; nothing was written",
        UnsupportedMediaType => "`Content-Type` is not `application/json`",
        InvalidRequest => "a field is missing, invalid or does not go with the others; the message names it",
        InvalidJob => "the job file is invalid (`details` locates the problem)",
        UnknownSandbox => "no sandbox with this name",
        UnknownJob => "no such job file in the sandbox",
        MissingParameter => "a required job parameter is missing",
        UnknownParameter => "a parameter the job does not declare",
        InvalidParameter => "a parameter value or template is invalid",
        IdempotencyKeyReused => "the `Idempotency-Key` was used with another body",
        UnknownNode => "a node that has never joined the cluster",
        UnknownTag => "no node carries these tags",
        UnknownSecret => "the job file names a secret (`{secret.NAME}`) that neither its sandbox nor the cluster has (the message names it and the job file)",
        SecretsKeyMismatch => "the store holds secrets sealed with a key this node does not have (the message names the key ids); every node needs the same `cluster.secrets_key_file`",
        InvalidPartitions => "the partitions are missing, overlap, or repeat a name",
        InvalidCron => "the cron expression is wrong (`details` names the field when one is: `CronErrorDetails`)",
        UnknownTimeZone => "not an IANA time zone name",
        InvalidPattern => "not a valid file pattern",
        ForeignHost => "the `Host` header names a host this node does not answer to (neither an IP address, `localhost`, the advertised host nor one of `http.hosts`)",
        ForeignOrigin => "the request comes from a web page of another origin than the node's own",
        RootNotAllowed => "the sandbox folder is not under one of the node's `sandboxes.allowed_roots`, or holds the node's data directory or store file",
        Internal => "an unexpected server error",
        StoreUnavailable => "the store is unreachable; the request changed nothing, retry it later",
        NodeUnavailable => "the node that must serve this is down (the message names it and says why)",
        NotReady => "the node is not ready (the message says why)",
        TooManyConnections => "the node serves its maximum of connections",
    }
}

/// Every route of the API and its description, in one router.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    use crate::{executions, files, health, listeners, nodes, sandboxes, schedules, secrets, sessions, tokens, users};
    let api = OpenApiRouter::new()
        .routes(routes!(nodes::list))
        .routes(routes!(nodes::get))
        .routes(routes!(nodes::drain))
        .routes(routes!(nodes::suspend))
        .routes(routes!(nodes::resume))
        .routes(routes!(sandboxes::list, sandboxes::create))
        .routes(routes!(sandboxes::get, sandboxes::delete))
        .routes(routes!(sandboxes::jobs))
        .routes(routes!(files::get_root))
        .routes(routes!(files::get_root_slash))
        .routes(routes!(files::get, files::put, files::delete))
        .routes(routes!(executions::list, executions::submit))
        .routes(routes!(executions::get))
        .routes(routes!(executions::logs))
        .routes(routes!(executions::cancel))
        .routes(routes!(schedules::list, schedules::create))
        .routes(routes!(schedules::preview_expression))
        .routes(routes!(schedules::get, schedules::patch, schedules::delete))
        .routes(routes!(schedules::firings))
        .routes(routes!(schedules::preview))
        .routes(routes!(listeners::list, listeners::create))
        .routes(routes!(listeners::get, listeners::patch, listeners::delete))
        .routes(routes!(listeners::events))
        .routes(routes!(listeners::hook))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(sessions::login, sessions::logout))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::delete))
        .routes(routes!(secrets::list))
        .routes(routes!(secrets::put, secrets::delete))
        .routes(routes!(secrets::rewrap))
        .routes(routes!(crate::audit::list))
        .routes(routes!(health::openapi))
        .routes(routes!(health::live_v1))
        .routes(routes!(health::ready_v1))
        .routes(routes!(crate::metrics_route));
    OpenApiRouter::with_openapi(Doc::openapi()).nest("/api/v1", api)
}

/// The routes outside `/api/v1`.
pub fn root_router() -> OpenApiRouter<Arc<AppState>> {
    use crate::health;
    OpenApiRouter::new()
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::openapi_root))
        .route("/metrics", axum::routing::get(crate::metrics::render))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "shoal",
        description = "The HTTP API of a shoal node. Every node serves the whole API. Every error is JSON of the shape `{\"error\": {\"code\", \"message\", \"details\"?}}` (`ErrorResponse`); each code always comes with the same status (`ErrorCode`). Unknown paths answer 404 `not_found` and unsupported methods 405 `method_not_allowed`; `internal` (500) is a bug. Any node serves any request: one that only another node can serve (the files and job files of a `local` sandbox, and the registration of such a sandbox) is forwarded to that node and its answer streamed back unchanged; if that node is down the answer is a prompt 503 `node_unavailable` naming it. Every response carries `x-shoal-served-by`: the id of the node that served it. Nodes sign the requests they forward with the cluster secret (`x-shoal-forwarded-by`, `x-shoal-timestamp`, `x-shoal-nonce`, `x-shoal-signature`); clients never send these, and a request that carries any of them with a missing, forged, stale (over 30 s) or replayed signature is refused with 401 `invalid_signature`. Optional fields of request bodies may be sent as `null`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(
        shoal_wire::ErrorResponse,
        shoal_wire::ErrorCode,
        shoal_wire::JobErrorDetails,
        shoal_wire::CronErrorDetails
    ))
)]
struct Doc;

/// The document served at `/api/v1/openapi.json` (and `/openapi.json`), built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, api) = router().split_for_parts();
        let (_, root) = root_router().split_for_parts();
        let mut doc = api.merge_from(root);
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        refine(serde_json::to_value(doc).expect("the OpenAPI document serializes"))
    })
}

/// A path inside a sandbox: relative, no `..` part, no NUL byte.
const INSIDE: &str = r"^(?!/)(?!(?:.*/)?\.\.(?:/|$))[^\u0000]*$";

/// Adds the error responses, the constraints serde cannot state, and OpenAPI's path syntax for
/// the files wildcard (`{*path}` is axum's).
fn refine(mut doc: Value) -> Value {
    doc["components"]["securitySchemes"] = json!({"bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`shoal_api_...`): `shoal token create`, or the first admin token a node writes to `DATA_DIR/admin.token`. Its role (`viewer`, `runner`, `editor`, `admin`) and sandbox globs decide what it may do; docs/security.md."
    }, "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "shoal_session",
        "description": "A person's login session (`POST /sessions`), with the user's role and sandbox globs. A request that changes something (any method but GET, HEAD and OPTIONS) with it must also send the login's `csrf_token` as `X-CSRF-Token` (403 `csrf_failed`). A request with both a bearer token and the cookie is taken by its token."
    }});
    doc["servers"] =
        json!([{"url": "/api/v1", "description": "Every path is relative to `/api/v1`, except `/metrics`."}]);
    let paths = doc["paths"].as_object_mut().expect("paths");
    let mut renamed = serde_json::Map::new();
    for (p, v) in std::mem::take(paths) {
        let p = p.replace("{*path}", "{path}");
        // The root aliases (`/health/*`, `/metrics`, `/openapi.json`) are said in the
        // descriptions of their `/api/v1` routes.
        if let Some(rel) = p.strip_prefix("/api/v1") {
            renamed.insert(rel.to_owned(), v);
        }
    }
    *paths = renamed;
    for (_, item) in paths.iter_mut() {
        for (method, op) in item.as_object_mut().expect("path item").iter_mut().filter(|(k, _)| *k != "servers") {
            let Some(id) = op.get("operationId").and_then(Value::as_str).map(str::to_owned) else { continue };
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params.iter_mut().filter(|p| p["name"] == "path" && p["in"] == "path") {
                    p["schema"]["pattern"] = json!(INSIDE);
                }
                // The audit trail's times: RFC 3339, or a duration before now (`audit::time_of`);
                // empty is not given, as for the other filters.
                if id == "listAudit" {
                    for p in params.iter_mut().filter(|p| p["name"] == "since" || p["name"] == "until") {
                        p["schema"] = json!({"type": "string", "anyOf": [
                            {"format": "date-time"},
                            {"pattern": shoal_core::duration::pattern()},
                            {"maxLength": 0},
                        ]});
                    }
                }
            }
            // Read-your-writes, on any request (`replicas.rs`).
            let position = json!({
                "name": "X-Shoal-Position",
                "in": "header",
                "required": false,
                "description": "Read at least this far in the store's history: the `X-Shoal-Position` of an earlier write's answer (empty is not given). With read replicas, such a request reads only from a replica that has replayed that far, else from the primary.",
                "schema": {"type": "string", "pattern": "^([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})?$"},
            });
            match op.get_mut("parameters").and_then(Value::as_array_mut) {
                Some(params) => params.push(position),
                None => op["parameters"] = json!([position]),
            }
            // Who may call it: a bearer token, but for the health checks and webhooks.
            let public = crate::auth::ACCESS.iter().any(|(op, a)| *op == id && *a == crate::auth::Access::Public);
            op["security"] = if public { json!([]) } else { json!([{"bearer": []}, {"session": []}]) };
            let codes = codes_of(&id, method);
            let responses = op["responses"].as_object_mut().expect("responses");
            let mut by_status: std::collections::BTreeMap<u16, Vec<ErrorCode>> = Default::default();
            for c in codes {
                by_status.entry(c.status()).or_default().push(c);
            }
            for (status, codes) in by_status {
                let text = codes.iter().map(|c| format!("`{}`: {}", c.as_str(), meaning(*c))).collect::<Vec<_>>();
                responses.insert(
                    status.to_string(),
                    json!({
                        "description": text.join(". ") + ".",
                        "content": {"application/json": {"schema": {"allOf": [
                            {"$ref": "#/components/schemas/ErrorResponse"},
                            {"type": "object", "properties": {"error": {"type": "object", "properties": {
                                "code": {"type": "string", "enum": codes.iter().map(|c| c.as_str()).collect::<Vec<_>>()}
                            }}}}
                        ]}}}
                    }),
                );
            }
            // Required to create, and strings there, not `null` (the same type serves PATCH,
            // where every field is optional and may be `null`).
            let required = |fields: &[&str]| {
                let strings: serde_json::Map<String, Value> =
                    fields.iter().map(|f| (f.to_string(), json!({"type": "string"}))).collect();
                let body = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].clone();
                json!({"allOf": [{"$ref": body}, {"type": "object", "required": fields, "properties": strings}]})
            };
            let create = match id.as_str() {
                "createSchedule" => Some(required(&["name", "sandbox", "job", "cron"])),
                "createListener" => Some(required(&["name", "kind", "sandbox", "job"])),
                _ => None,
            };
            if let Some(mut schema) = create {
                let rules = schema["allOf"].as_array_mut().expect("allOf");
                if id == "createListener" {
                    rules.extend(listener_kinds());
                }
                if id == "createSchedule" {
                    // (On PATCH, `misfire_max` alone keeps the stored policy, which may be `all`.)
                    rules.push(json!({
                        "if": {"properties": {"misfire_max": {"type": "integer"}}, "required": ["misfire_max"]},
                        "then": {"properties": {"misfire": {"const": "all"}}, "required": ["misfire"]}
                    }));
                }
                op["requestBody"]["content"]["application/json"]["schema"] = schema;
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    // A submission names a job file or a command, never both (else 422 `invalid_request`).
    // (Both at once match both branches, which `oneOf` refuses.)
    let given = |f: &str, t: &str| json!({"type": "object", "required": [f], "properties": {f: {"type": t}}});
    // The first element of a command is the program: never empty.
    schemas["SubmitRequest"]["properties"]["command"]["prefixItems"] = json!([{"type": "string", "minLength": 1}]);
    // No argument, variable name or value can hold a NUL byte; a name is not empty, has no
    // `=`, and does not start with `SHOAL_` (shoal sets those).
    let no_nul = json!({"type": "string", "pattern": r"^[^\u0000]*$"});
    schemas["SubmitRequest"]["properties"]["command"]["items"] = no_nul.clone();
    schemas["SubmitRequest"]["properties"]["env"]["additionalProperties"] = no_nul;
    schemas["SubmitRequest"]["properties"]["env"]["propertyNames"] =
        json!({"type": "string", "pattern": r"^[^=\u0000]+$", "not": {"pattern": "^SHOAL_"}});
    // With `job`, the settings of an inline command are the job file's: left out or `null`
    // (an empty `env` is nothing set). An inline command takes no `params`, and its `workdir`
    // is relative to a sandbox, so it needs one.
    let unset = |fields: &[&str]| -> Value {
        let props: serde_json::Map<String, Value> =
            fields.iter().map(|f| (f.to_string(), json!({"type": "null"}))).collect();
        json!({"properties": props})
    };
    let mut with_job = unset(&[
        "command",
        "workdir",
        "timeout",
        "retries",
        "retry_backoff",
        "on_node_loss",
        "allocation",
        "allow_pending",
    ]);
    with_job["properties"]["env"] = json!({"oneOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]});
    schemas["SubmitRequest"]["oneOf"] = json!([
        {"allOf": [given("sandbox", "string"), given("job", "string"), with_job]},
        {"allOf": [
            given("command", "array"),
            {"properties": {
                "job": {"type": "null"},
                "params": {"oneOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}]}
            }},
            {"if": given("workdir", "string"), "then": given("sandbox", "string")}
        ]}
    ]);
    // What each sandbox kind takes: a root (absolute, no NUL byte) for `shared` and `local`,
    // a holder for `local` only, parts for `partitioned` only.
    let slug = schemas["CreateSandboxRequest"]["properties"]["name"]["pattern"].clone();
    let root = json!({"type": "string", "pattern": r"^/[^\u0000]*$"});
    let kind = when_kind;
    schemas["CreateSandboxRequest"]["properties"]["node"]["pattern"] = slug;
    schemas["CreateSandboxRequest"]["allOf"] = json!([
        kind(
            "shared",
            json!({"required": ["root"], "properties": {"root": root, "node": {"type": "null"}, "partitions": {"type": "null"}}})
        ),
        kind("local", json!({"required": ["root"], "properties": {"root": root, "partitions": {"type": "null"}}})),
        kind(
            "partitioned",
            json!({"required": ["partitions"], "properties": {"partitions": {"type": "array"}, "root": {"type": "null"}, "node": {"type": "null"}}})
        ),
    ]);
    // Paths inside a sandbox: relative, no `..` part, no NUL byte (their byte limits are in
    // the descriptions: a schema's lengths count characters). Durations: the syntax
    // `shoal_core::duration::parse` checks.
    let duration = shoal_core::duration::pattern();
    let patterns = [
        ("SubmitRequest", "job", INSIDE),
        ("SubmitRequest", "workdir", INSIDE),
        ("ScheduleRequest", "job", INSIDE),
        ("ListenerRequest", "job", INSIDE),
        ("OnJobRequest", "job", INSIDE),
        ("OnFileRequest", "pattern", INSIDE),
        ("SubmitRequest", "timeout", &duration),
        ("SubmitRequest", "retry_backoff", &duration),
        ("ScheduleRequest", "misfire_threshold", &duration),
        ("OnFileRequest", "settle", &duration),
        ("TokenRequest", "expires_in", &duration),
    ];
    for (body, field, pattern) in patterns {
        let property = &mut schemas[body]["properties"][field];
        assert!(property.is_object(), "{body}.{field} is in the document");
        property["pattern"] = json!(pattern);
    }
    // A credential's sandbox globs: sandbox-name characters and the wildcards
    // (`auth::check_glob`); its name never looks like an id (16 hex digits), since deleting
    // takes either.
    for body in ["TokenRequest", "UserRequest"] {
        schemas[body]["properties"]["sandboxes"]["items"]["pattern"] = json!("^[a-z0-9_*?-]{1,64}$");
        schemas[body]["properties"]["name"]["not"] = json!({"pattern": "^[0-9a-fA-F]{16}$"});
    }
    // Zones are the IANA names the server knows, spelled exactly.
    schemas["TimeZone"] = json!({
        "type": "string",
        "description": "An IANA time zone name, as spelled in the tz database (`UTC`, `Europe/Berlin`).",
        "enum": shoal_core::schedule::time_zone_names().collect::<Vec<_>>(),
    });
    for body in ["ScheduleRequest", "PreviewRequest"] {
        let field = &mut schemas[body]["properties"]["timezone"];
        let description = field["description"].clone();
        *field =
            json!({"description": description, "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/TimeZone"}]});
    }
    doc
}

/// Which source each listener kind takes (and needs), and that only webhooks take a secret:
/// the others' fields must be left out or `null`.
fn listener_kinds() -> Vec<Value> {
    let null = json!({"type": "null"});
    [("job", Some("on_job")), ("file", Some("on_file")), ("cluster", None), ("webhook", None)]
        .into_iter()
        .map(|(kind, needs)| {
            let mut then = json!({"properties": {}});
            for other in ["on_job", "on_file", "on_cluster", "secret"] {
                let takes = Some(other) == needs
                    || (kind == "cluster" && other == "on_cluster")
                    || (kind == "webhook" && other == "secret");
                if !takes {
                    then["properties"][other] = null.clone();
                }
            }
            if let Some(n) = needs {
                then["required"] = json!([n]);
                then["properties"][n] = json!({"type": "object"});
            }
            when_kind(kind, then)
        })
        .collect()
}

/// A rule that holds when a body's `kind` is `kind`.
fn when_kind(kind: &str, then: Value) -> Value {
    json!({"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": then})
}

/// Every error code an operation can answer; `method` (lowercase, as the document spells it)
/// says whether it changes something, which a session cookie does only with its CSRF token.
pub fn codes_of(operation: &str, method: &str) -> Vec<ErrorCode> {
    let mut out: Vec<ErrorCode> = ERRORS
        .iter()
        .filter(|(id, _)| *id == operation)
        .flat_map(|(_, groups)| groups.iter().flat_map(|g| g.iter().copied()))
        .collect();
    out.extend(FORWARDED);
    out.push(InvalidPosition);
    if !HEALTH.contains(&operation) {
        out.extend(BROWSER);
        out.push(TokenInQuery);
    }
    let access = crate::auth::ACCESS.iter().find(|(id, _)| *id == operation).map(|(_, a)| *a);
    if access != Some(crate::auth::Access::Public) && !matches!(method, "get" | "head" | "options") {
        out.push(CsrfFailed);
    }
    match access {
        Some(crate::auth::Access::Public) => {}
        Some(crate::auth::Access::Role(need)) => {
            out.extend(AUTH);
            if need > shoal_wire::Role::Viewer || SCOPED_READS.contains(&operation) {
                out.push(Forbidden);
            }
        }
        Some(crate::auth::Access::Cluster) => out.extend(AUTH.iter().chain([&Forbidden])),
        // Not in the table: it needs `admin` (auth.rs); a test keeps the table whole.
        None => out.extend(AUTH.iter().chain([&Forbidden])),
    }
    if !STORELESS.contains(&operation) {
        out.push(StoreUnavailable);
    }
    out.sort_by_key(|c| (c.status(), c.as_str()));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document builds, and every operation has an id the error table knows.
    #[test]
    fn every_operation_is_in_the_error_table() {
        let doc = document();
        if let Ok(path) = std::env::var("SHOAL_DUMP_OPENAPI") {
            std::fs::write(path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
        }
        let mut seen = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap().iter().filter(|(k, _)| *k != "servers") {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                assert!(ERRORS.iter().any(|(o, _)| *o == id), "{id} ({method} {path}) is not in ERRORS");
                seen.push(id.to_owned());
            }
        }
        for (id, _) in ERRORS {
            assert!(seen.iter().any(|s| s == id), "ERRORS names {id}, which is no operation");
        }
        // The access table says what each needs (the root's aliases, outside the document, too).
        for id in &seen {
            assert!(crate::auth::ACCESS.iter().any(|(o, _)| o == id), "{id} is not in auth::ACCESS");
        }
        let aliases = ["live", "ready", "getOpenApiRoot"];
        for (id, _) in crate::auth::ACCESS {
            assert!(seen.iter().any(|s| s == id) || aliases.contains(id), "ACCESS names {id}, which is no operation");
        }
        for id in SCOPED_READS {
            assert!(seen.iter().any(|s| s == id), "SCOPED_READS names {id}, which is no operation");
        }
    }
}
