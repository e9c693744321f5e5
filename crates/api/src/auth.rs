//! Who is asking, and whether they may: every route needs a credential but the health checks
//! and the webhooks (which carry their own signature), and `/metrics` unless
//! `http.metrics_public` is set.
//!
//! A request carries `Authorization: Bearer TOKEN`, or a person's `shoal_session` cookie (a
//! login, `sessions.rs`; a request with both is taken by its token). The token's text is
//! checked offline first (prefix and checksum, `shoal_wire::parse_token`), then hashed
//! (SHA-256) and looked up in the store through a cache of this node's: an entry is trusted for
//! [`REVALIDATE`] at most, so a token revoked through any node is refused by every node within
//! that and one store read. A session is looked up the same way (its text's SHA-256, a cache
//! trusted as long), so a logout or a user's deletion is seen by every node within a second
//! too; a change it makes (any method but GET, HEAD and OPTIONS) must carry its CSRF token in
//! `X-CSRF-Token` (403 `csrf_failed`). A token or session found makes a [`Principal`], its role
//! and sandbox scopes, which the middleware checks against the operation's role ([`ACCESS`])
//! and hands to the handler as a request extension; handlers check the sandbox they act on
//! ([`Principal::require`]). A forwarded request carries the principal its first node
//! authenticated inside its signed part (`forward.rs`), and the node that serves it checks the
//! permission again.

use crate::error::{ApiError, ApiResult};
use crate::forward::Forwarded;
use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use shoal_service::rights::{glob_matches, globs_cover};
use shoal_store::{Origin, SessionRow, Store, TokenRow};
use shoal_wire::{Role, Trigger};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long this node trusts what the store said of a token. A revocation is seen by every
/// node within this plus one store read (the target is one second).
pub const REVALIDATE: Duration = Duration::from_millis(500);

/// Tokens remembered at most, and apart from them unknown hashes (so that a flood of made-up
/// tokens, which anyone can write, never pushes a real one out): past it, the stale ones go,
/// then the rest of that kind.
const MAX_CACHED: usize = 10_000;

/// Store reads of tokens this node does not hold in its cache, at once; more wait their turn,
/// so a flood of made-up tokens takes this much of the store at most.
const MAX_LOOKUPS: usize = 8;

/// A token's `last_used_at` is written again only once it is this old.
const TOUCH_EVERY_MS: i64 = 60_000;

/// What an operation needs, beside the sandbox it acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credential: the health checks, and webhooks (HMAC-signed).
    Public,
    /// At least this role.
    Role(Role),
    /// `admin` for every sandbox (globs including `*`): what acts on the whole cluster (nodes,
    /// tokens), which a token scoped to some sandboxes must not reach.
    Cluster,
}

use Access::{Cluster, Public, Role as R};
use Role::{Admin, Editor, Runner, Viewer};

/// What each operation (by operation id) needs. An operation missing here needs `admin` for
/// every sandbox (deny by default); a test holds the table and the router equal.
pub const ACCESS: &[(&str, Access)] = &[
    ("listNodes", R(Viewer)),
    ("getNode", R(Viewer)),
    ("drainNode", Cluster),
    ("suspendNode", Cluster),
    ("resumeNode", Cluster),
    ("listSandboxes", R(Viewer)),
    ("createSandbox", R(Admin)),
    ("getSandbox", R(Viewer)),
    ("deleteSandbox", R(Admin)),
    ("listSandboxJobs", R(Viewer)),
    ("listSandboxRoot", R(Viewer)),
    ("listSandboxRootSlash", R(Viewer)),
    ("getSandboxFile", R(Viewer)),
    ("putSandboxFile", R(Editor)),
    ("deleteSandboxFile", R(Editor)),
    ("listExecutions", R(Viewer)),
    // An inline command needs `admin`: the handler checks.
    ("submitExecution", R(Runner)),
    ("getExecution", R(Viewer)),
    ("getExecutionLogs", R(Viewer)),
    ("cancelExecution", R(Runner)),
    ("listSchedules", R(Viewer)),
    ("createSchedule", R(Editor)),
    ("previewCron", R(Viewer)),
    ("getSchedule", R(Viewer)),
    ("patchSchedule", R(Editor)),
    ("deleteSchedule", R(Editor)),
    ("listScheduleFirings", R(Viewer)),
    ("previewSchedule", R(Viewer)),
    ("listListeners", R(Viewer)),
    ("createListener", R(Editor)),
    ("getListener", R(Viewer)),
    ("patchListener", R(Editor)),
    ("deleteListener", R(Editor)),
    ("listListenerEvents", R(Viewer)),
    ("deliverHook", Public),
    ("listTokens", Cluster),
    ("createToken", Cluster),
    ("revokeToken", Cluster),
    // Logging in is how a person gets a credential; it is throttled per address instead.
    ("createSession", Public),
    // Any user may log out; the handler needs the session cookie itself.
    ("deleteSession", R(Viewer)),
    ("listUsers", Cluster),
    ("listAudit", Cluster),
    ("createUser", Cluster),
    ("deleteUser", Cluster),
    // A sandbox's secret needs `editor` there, a cluster-wide one `admin` for `*`: the
    // handlers check. Listing shows names, never values.
    ("listSecrets", R(Viewer)),
    ("putSecret", R(Editor)),
    ("deleteSecret", R(Editor)),
    ("rewrapSecrets", Cluster),
    ("getOpenApi", R(Viewer)),
    ("getOpenApiRoot", R(Viewer)),
    ("liveV1", Public),
    ("readyV1", Public),
    ("live", Public),
    ("ready", Public),
    ("metrics", R(Viewer)),
];

/// The access of each route, by method and route template (as axum matched it).
#[derive(Debug, Default)]
pub struct Routes {
    by_route: HashMap<(Method, String), (&'static str, Access)>,
}

impl Routes {
    /// From the OpenAPI description of the routers (`openapi::router`, `root_router`), before
    /// its paths are made relative; `/metrics` at the root is `metrics`.
    pub(crate) fn new(docs: &[serde_json::Value]) -> Routes {
        let mut by_route = HashMap::new();
        for doc in docs {
            let Some(paths) = doc["paths"].as_object() else { continue };
            for (path, item) in paths {
                let Some(item) = item.as_object() else { continue };
                for (method, op) in item {
                    let (Ok(method), Some(id)) =
                        (method.to_ascii_uppercase().parse::<Method>(), op["operationId"].as_str())
                    else {
                        continue;
                    };
                    let (id, access) = access_of(id);
                    by_route.insert((method, path.clone()), (id, access));
                }
            }
        }
        by_route.insert((Method::GET, "/metrics".to_owned()), access_of("metrics"));
        Routes { by_route }
    }

    pub(crate) fn get(&self, method: &Method, route: &str) -> Option<(&'static str, Access)> {
        // HEAD is served by the GET route.
        let method = if method == Method::HEAD { &Method::GET } else { method };
        self.by_route.get(&(method.clone(), route.to_owned())).copied()
    }
}

fn access_of(id: &str) -> (&'static str, Access) {
    ACCESS.iter().find(|(op, _)| *op == id).map_or(("(unlisted)", Cluster), |(op, a)| (*op, *a))
}

/// What a principal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// An API token.
    Token,
    /// A person logged in (a user's session).
    User,
    /// One attempt of an execution, with the token in its environment (`SHOAL_TOKEN`).
    Attempt,
}

/// What an attempt's token acts for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptOf {
    pub execution: String,
    pub attempt: i64,
    /// The attempt's fencing token: what it submits is accepted only while it is current.
    pub fence: i64,
    /// Whom the execution runs for (`token:NAME`), and whose rights those are (`token:ID`).
    pub principal: String,
    pub acts_as: String,
}

/// The operations an attempt's token may call: reading its own execution and those it
/// started (with their logs), cancelling those, and submitting jobs of its sandbox.
const ATTEMPT_OPERATIONS: &[&str] = &["getExecution", "getExecutionLogs", "cancelExecution", "submitExecution"];

/// Who a request acts for, as authenticated by the node it reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The token's or the user's id.
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Sandbox-name globs (`*` and `?`) it may act on.
    pub sandboxes: Vec<String>,
    /// Only for [`PrincipalKind::Attempt`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<AttemptOf>,
}

impl Principal {
    /// How the principal is recorded and named in messages: `token:NAME`, `user:NAME` or
    /// `attempt:EXECUTION/N`.
    pub fn label(&self) -> String {
        match self.kind {
            PrincipalKind::Token => format!("token:{}", self.name),
            PrincipalKind::User => format!("user:{}", self.name),
            PrincipalKind::Attempt => format!("attempt:{}", self.name),
        }
    }

    /// What it creates records as its origin: through the API for itself, or, for an
    /// attempt, as a job of its execution for whom that runs for.
    pub fn origin(&self) -> Origin {
        match &self.attempt {
            Some(a) => {
                Origin::new(Trigger::Job, Some(a.execution.clone()), Some(a.principal.clone()), Some(a.acts_as.clone()))
            }
            None => Origin::new(Trigger::Api, None, Some(self.label()), Some(self.acts_as())),
        }
    }

    /// It, as the owner of a schedule or listener it creates or changes.
    pub fn owner(&self) -> shoal_store::Owner {
        shoal_store::Owner { acts_as: self.acts_as(), label: self.label() }
    }

    /// Whose rights it has: `token:ID` or `user:ID` (an attempt's, whom its execution runs for).
    pub fn acts_as(&self) -> String {
        match (&self.kind, &self.attempt) {
            (PrincipalKind::User, _) => format!("user:{}", self.id),
            (PrincipalKind::Attempt, Some(a)) => a.acts_as.clone(),
            _ => format!("token:{}", self.id),
        }
    }

    /// Whether it may see this execution: one in its sandboxes; for an attempt, only its own
    /// execution and those it started.
    pub fn sees(&self, e: &shoal_store::ExecutionRow) -> bool {
        match &self.attempt {
            Some(a) => {
                e.id.as_str() == a.execution
                    || (e.origin.trigger == Trigger::Job && e.origin.reference.as_deref() == Some(a.execution.as_str()))
            }
            None => self.covers(e.sandbox.as_deref()),
        }
    }

    /// Whether every sandbox is in scope.
    pub fn unscoped(&self) -> bool {
        self.sandboxes.iter().any(|g| g == "*")
    }

    /// Whether it may act on `sandbox`; `None` (an inline command outside any sandbox) only
    /// when every sandbox is in scope.
    pub fn covers(&self, sandbox: Option<&str>) -> bool {
        globs_cover(&self.sandboxes, sandbox)
    }

    /// Refuses (403 `forbidden`) unless the principal has `need` and `sandbox` in scope;
    /// `what` says what it is for ("running jobs", "deleting schedule `x`").
    pub fn require(&self, need: Role, sandbox: Option<&str>, what: &str) -> ApiResult<()> {
        if self.role < need {
            return Err(ApiError::forbidden(format!(
                "{} has role `{}`; {what} needs role `{}` or above ({}); use a credential that has it",
                self.label(),
                self.role,
                need,
                need.grants()
            )));
        }
        if !self.covers(sandbox) {
            return Err(ApiError::forbidden(match sandbox {
                Some(s) => format!(
                    "{} may act only on sandboxes {}; {what} in sandbox `{s}` is outside them",
                    self.label(),
                    self.scope_list()
                ),
                None => format!(
                    "{} may act only on sandboxes {}; {what} needs a credential for every sandbox (`*`)",
                    self.label(),
                    self.scope_list()
                ),
            }));
        }
        Ok(())
    }

    /// LIKE patterns (escape `\`) matching the sandboxes in scope; `None` when unscoped.
    pub fn like_patterns(&self) -> Option<Vec<String>> {
        (!self.unscoped()).then(|| self.sandboxes.iter().map(|g| like_pattern(g)).collect())
    }

    fn scope_list(&self) -> String {
        self.sandboxes.iter().map(|g| format!("`{g}`")).collect::<Vec<_>>().join(", ")
    }
}

/// Handlers take the request's principal as an argument; a route outside authentication
/// (a public one) has none, which is a bug: 500.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Principal, ApiError> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::internal("this route has no authenticated principal (a public route asked for one)")
        })
    }
}

/// Checks a sandbox glob: sandbox-name characters (lowercase letters, digits, `-`, `_`) and
/// the wildcards `*` (any run) and `?` (one character).
pub fn check_glob(glob: &str) -> Result<(), String> {
    let ok = !glob.is_empty()
        && glob.len() <= 64
        && glob.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '*' | '?'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "sandbox glob `{}` is invalid: use 1 to 64 lowercase letters, digits, `-`, `_`, and the wildcards `*` and `?`",
            glob.chars().take(80).collect::<String>()
        ))
    }
}

/// A credential's sandbox globs as a request gives them: `None` is every sandbox (`*`); 1 to
/// 64 globs, each checked ([`check_glob`]).
pub(crate) fn check_sandboxes(globs: Option<Vec<String>>) -> ApiResult<Vec<String>> {
    let sandboxes = globs.unwrap_or_else(|| vec!["*".into()]);
    if sandboxes.is_empty() {
        return Err(ApiError::invalid_request(
            "`sandboxes` is empty, which would allow nothing; leave it out for every sandbox, or list globs",
        ));
    }
    if sandboxes.len() > 64 {
        return Err(ApiError::invalid_request("`sandboxes` lists more than 64 globs; use wildcards"));
    }
    for g in &sandboxes {
        check_glob(g).map_err(ApiError::invalid_request)?;
    }
    Ok(sandboxes)
}

fn like_pattern(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// SHA-256 of a token's text, as the store keeps it.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What this node heard from the store about credentials, by their text's SHA-256, each
/// value trusted for [`REVALIDATE`] after it was read; at most [`MAX_CACHED`] of them (past
/// that, the stale ones go, then the rest).
struct Fresh<V> {
    map: Mutex<HashMap<[u8; 32], (Instant, V)>>,
}

impl<V: Clone> Fresh<V> {
    fn new() -> Fresh<V> {
        Fresh { map: Mutex::new(HashMap::new()) }
    }

    /// The value for `hash`, if it was read less than [`REVALIDATE`] ago.
    fn get(&self, hash: &[u8; 32]) -> Option<V> {
        self.map.lock().get(hash).filter(|(at, _)| at.elapsed() < REVALIDATE).map(|(_, v)| v.clone())
    }

    fn put(&self, hash: [u8; 32], value: V) {
        let mut map = self.map.lock();
        if map.len() >= MAX_CACHED {
            map.retain(|_, (at, _)| at.elapsed() < REVALIDATE);
            if map.len() >= MAX_CACHED {
                map.clear();
            }
        }
        map.insert(hash, (Instant::now(), value));
    }

    /// Drops the values `drop` says to, and answers their hashes.
    fn remove_where(&self, drop: impl Fn(&V) -> bool) -> Vec<[u8; 32]> {
        let mut gone = Vec::new();
        self.map.lock().retain(|hash, (_, v)| {
            let d = drop(v);
            if d {
                gone.push(*hash);
            }
            !d
        });
        gone
    }
}

struct Entry {
    principal: Principal,
    row: TokenRow,
    /// The store's clock minus this node's when the row was read, to judge expiry between reads.
    offset_ms: i64,
}

struct SessionEntry {
    principal: Principal,
    expires_at: i64,
    /// The store's clock minus this node's when the row was read.
    offset_ms: i64,
}

/// Authenticates requests: the token and session caches and the record of use; and what
/// logging in needs (the password hasher, the throttle of failed logins, the session TTL).
pub struct Authenticator {
    store: Arc<Store>,
    cache: Fresh<Arc<Entry>>,
    /// Sessions by their text's SHA-256, as tokens are.
    sessions: Fresh<Arc<SessionEntry>>,
    /// Attempts' tokens, as tokens are: what each may do, or why it may not.
    attempts: Fresh<Arc<Result<Principal, String>>>,
    /// Hashes the store did not know (kept apart, so made-up ones never push a real one out).
    unknown: Fresh<()>,
    lookups: tokio::sync::Semaphore,
    /// Tokens used since their `last_used_at` was last written, written by [`Self::flush_usage`].
    used: Mutex<HashSet<String>>,
    metrics_public: bool,
    /// How long a login lasts (`http.session_ttl`).
    pub(crate) session_ttl: Duration,
    pub(crate) passwords: shoal_service::passwords::Passwords,
    pub(crate) throttle: crate::sessions::Throttle,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Authenticator {
    pub fn new(store: Arc<Store>, metrics_public: bool, session_ttl: Duration) -> Authenticator {
        Authenticator {
            store,
            cache: Fresh::new(),
            sessions: Fresh::new(),
            attempts: Fresh::new(),
            unknown: Fresh::new(),
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
            used: Mutex::new(HashSet::new()),
            metrics_public,
            session_ttl,
            passwords: shoal_service::passwords::Passwords::new(),
            throttle: crate::sessions::Throttle::default(),
        }
    }

    /// The principal of an API token's text, or 401 `invalid_token` saying why not.
    pub async fn token(&self, text: &str) -> ApiResult<Principal> {
        match shoal_wire::parse_token(text).map_err(ApiError::invalid_token)? {
            shoal_wire::TokenKind::Session => return Err(ApiError::invalid_token(
                "a login session is not a bearer token: it goes in the `shoal_session` cookie; use an API token here",
            )),
            shoal_wire::TokenKind::Attempt => return self.attempt(text).await,
            shoal_wire::TokenKind::Api => {}
        }
        let hash = token_hash(text);
        let cached = self.cache.get(&hash);
        let known_unknown = cached.is_none() && self.unknown.get(&hash).is_some();
        let entry = match cached {
            Some(entry) => Some(entry),
            None if known_unknown => None,
            None => self.fetch(hash).await?,
        };
        let Some(entry) = entry else {
            return Err(ApiError::invalid_token(
                "this token is not known to the cluster (never created, or its store was replaced); use another, or create one with `shoal token create`",
            ));
        };
        let now = wall_ms() + entry.offset_ms;
        if let Some(at) = entry.row.revoked_at {
            return Err(ApiError::invalid_token(format!(
                "token `{}` ({}) was revoked at {}; use another",
                entry.row.name,
                entry.row.prefix,
                crate::rfc3339(at)
            )));
        }
        if let Some(at) = entry.row.expires_at.filter(|&e| e <= now) {
            return Err(ApiError::invalid_token(format!(
                "token `{}` ({}) expired at {}; create a new one with `shoal token create`",
                entry.row.name,
                entry.row.prefix,
                crate::rfc3339(at)
            )));
        }
        if entry.row.last_used_at.is_none_or(|t| now - t >= TOUCH_EVERY_MS) {
            self.used.lock().insert(entry.row.id.clone());
        }
        Ok(entry.principal.clone())
    }

    async fn fetch(&self, hash: [u8; 32]) -> ApiResult<Option<Arc<Entry>>> {
        // Dropped with the request: the permit goes back.
        let _turn = self.lookups.acquire().await.map_err(|_| ApiError::internal("the token lookups were closed"))?;
        let (row, store_now) = self.store.token_by_hash(&hex::encode(hash)).await?;
        let entry = row.map(|row| {
            Arc::new(Entry {
                principal: Principal {
                    kind: PrincipalKind::Token,
                    id: row.id.clone(),
                    name: row.name.clone(),
                    role: row.role,
                    sandboxes: row.sandboxes.clone(),
                    attempt: None,
                },
                offset_ms: store_now - wall_ms(),
                row,
            })
        });
        match &entry {
            Some(e) => self.cache.put(hash, e.clone()),
            None => self.unknown.put(hash, ()),
        }
        Ok(entry)
    }

    /// The principal of an attempt's token (`SHOAL_TOKEN` in its environment), or 401
    /// `invalid_token` saying why not: the attempt has ended or been superseded, or whom its
    /// execution runs for has lost its rights.
    async fn attempt(&self, text: &str) -> ApiResult<Principal> {
        let hash = token_hash(text);
        if self.unknown.get(&hash).is_some() {
            return Err(unknown_attempt());
        }
        let found = match self.attempts.get(&hash) {
            Some(found) => found,
            None => {
                let _turn =
                    self.lookups.acquire().await.map_err(|_| ApiError::internal("the token lookups were closed"))?;
                let Some(row) = self.store.attempt_by_token(&hex::encode(hash)).await? else {
                    self.unknown.put(hash, ());
                    return Err(unknown_attempt());
                };
                let found = Arc::new(self.attempt_principal(row).await?);
                self.attempts.put(hash, found.clone());
                found
            }
        };
        found.as_ref().clone().map_err(ApiError::invalid_token)
    }

    /// What an attempt's token may do: at most `runner`, in its own sandbox, and only if whom
    /// its execution runs for still may.
    async fn attempt_principal(&self, row: shoal_store::AttemptTokenRow) -> ApiResult<Result<Principal, String>> {
        let what = format!("execution {} attempt {}", row.execution_id, row.attempt);
        if !row.live {
            return Ok(Err(format!(
                "this token was given to {what}, which has ended or moved to another attempt; an attempt's token is valid only while it runs"
            )));
        }
        let (Some(label), Some(acts_as)) = (row.principal, row.acts_as) else {
            return Ok(Err(format!(
                "{what} records no principal to act for (it was made before principals were recorded)"
            )));
        };
        let rights = match self.store.rights_of(&acts_as).await? {
            Ok(r) => r,
            Err(why) => return Ok(Err(format!("{what} runs for {label}, which may no longer act: {why}"))),
        };
        let sandboxes = row.sandbox.into_iter().filter(|s| globs_cover(&rights.sandboxes, Some(s))).collect();
        Ok(Ok(Principal {
            kind: PrincipalKind::Attempt,
            id: row.execution_id.clone(),
            name: format!("{}/{}", row.execution_id, row.attempt),
            role: rights.role.min(Role::Runner),
            sandboxes,
            attempt: Some(AttemptOf {
                execution: row.execution_id,
                attempt: row.attempt,
                fence: row.fence,
                principal: rights.label,
                acts_as,
            }),
        }))
    }

    /// The principal of a session cookie's text, or 401 `invalid_token` saying why not.
    pub async fn session(&self, text: &str) -> ApiResult<Principal> {
        if shoal_wire::parse_token(text)
            .map_err(|m| ApiError::invalid_token(format!("the `shoal_session` cookie: {m}")))?
            != shoal_wire::TokenKind::Session
        {
            return Err(ApiError::invalid_token(
                "the `shoal_session` cookie holds no session (`shoal_ses_...`); log in again with POST /api/v1/sessions",
            ));
        }
        let hash = token_hash(text);
        let cached = self.sessions.get(&hash);
        let known_unknown = cached.is_none() && self.unknown.get(&hash).is_some();
        let entry = match cached {
            Some(entry) => Some(entry),
            None if known_unknown => None,
            None => self.fetch_session(hash).await?,
        };
        let Some(entry) = entry else {
            return Err(ApiError::invalid_token(
                "this session has ended (logged out, or its user was deleted) or was never made; log in again with POST /api/v1/sessions",
            ));
        };
        if entry.expires_at <= wall_ms() + entry.offset_ms {
            return Err(ApiError::invalid_token(format!(
                "the session of user `{}` expired at {}; log in again with POST /api/v1/sessions",
                entry.principal.name,
                crate::rfc3339(entry.expires_at)
            )));
        }
        Ok(entry.principal.clone())
    }

    async fn fetch_session(&self, hash: [u8; 32]) -> ApiResult<Option<Arc<SessionEntry>>> {
        let _turn = self.lookups.acquire().await.map_err(|_| ApiError::internal("the token lookups were closed"))?;
        let row = self.store.session_by_hash(&hex::encode(hash)).await?;
        let entry = row.map(|SessionRow { user, expires_at, now, .. }| {
            Arc::new(SessionEntry {
                principal: Principal {
                    kind: PrincipalKind::User,
                    id: user.id,
                    name: user.name,
                    role: user.role,
                    sandboxes: user.sandboxes,
                    attempt: None,
                },
                expires_at,
                offset_ms: now - wall_ms(),
            })
        });
        match &entry {
            Some(e) => self.sessions.put(hash, e.clone()),
            None => self.unknown.put(hash, ()),
        }
        Ok(entry)
    }

    /// Forgets one session (this node just ended it): refused here from now on.
    pub(crate) fn forget_session(&self, text: &str) {
        let hash = token_hash(text);
        self.sessions.map.lock().remove(&hash);
        self.unknown.put(hash, ());
    }

    /// Forgets every cached session of one user (this node just deleted them).
    pub(crate) fn forget_user(&self, user_id: &str) {
        for hash in self.sessions.remove_where(|e| e.principal.id == user_id) {
            self.unknown.put(hash, ());
        }
    }

    /// Forgets what the cache holds of one token (this node just revoked it).
    pub fn forget(&self, token_id: &str) {
        self.cache.remove_where(|e| e.row.id == token_id);
    }

    /// Writes `last_used_at` of the tokens used since the last call.
    pub async fn flush_usage(&self) -> Result<usize, shoal_store::StoreError> {
        let ids: Vec<String> = std::mem::take(&mut *self.used.lock()).into_iter().collect();
        if ids.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.touch_tokens(&ids).await {
            // Kept for the next try.
            self.used.lock().extend(ids);
            return Err(e);
        }
        // The cached rows still hold the old time: drop them so they are not queued again.
        let ids: HashSet<String> = ids.into_iter().collect();
        self.cache.remove_where(|e| ids.contains(&e.row.id));
        Ok(ids.len())
    }
}

fn unknown_attempt() -> ApiError {
    ApiError::invalid_token(
        "this attempt token is not known to the cluster: an attempt's token (`SHOAL_TOKEN`) works only inside the attempt it was given to",
    )
}

/// Query parameters under which a credential might be sent (refused: URLs end up in logs,
/// proxies' records and browser history).
const CREDENTIAL_PARAMS: &[&str] = &["access_token", "token", "api_key", "apikey", "auth", "authorization", "bearer"];

/// Refuses a credential in the query string (400 `token_in_query`).
fn check_query(query: Option<&str>) -> ApiResult<()> {
    let Some(query) = query else { return Ok(()) };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy().to_ascii_lowercase();
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        let looks_like_token = shoal_wire::TokenKind::ALL.iter().any(|k| value.contains(k.prefix()));
        if CREDENTIAL_PARAMS.contains(&name.as_str()) || looks_like_token {
            return Err(ApiError::token_in_query(
                "credentials are never taken from the URL (URLs end up in logs and browser history): send `Authorization: Bearer TOKEN` instead; if this was a real token, revoke it",
            ));
        }
    }
    Ok(())
}

/// The bearer token of a request; `None` when it sends no `Authorization`.
fn bearer(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return match headers.contains_key(header::AUTHORIZATION) {
            true => Err(ApiError::invalid_token("the request has more than one Authorization header; send one")),
            false => Ok(None),
        };
    };
    let text = value.to_str().map_err(|_| ApiError::invalid_token("the Authorization header is not text"))?;
    let (scheme, token) = text.trim().split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::invalid_token(
            "the Authorization header must be `Bearer TOKEN`; other schemes (Basic, ...) are not taken",
        ));
    }
    Ok(Some(token.trim()))
}

/// The name of the cookie that carries a login session.
pub const SESSION_COOKIE: &str = "shoal_session";

/// The header a change made with a session cookie carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The `shoal_session` cookie of a request; `None` when it sends none, 401 `invalid_token`
/// when it sends more than one (which one would count is a browser's guess).
pub(crate) fn session_cookie(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let mut found = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let (name, value) = pair.trim().split_once('=').unwrap_or((pair.trim(), ""));
            if name == SESSION_COOKIE {
                found.push(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(ApiError::invalid_token(format!(
            "the request carries {n} `{SESSION_COOKIE}` cookies; send one (log out, or clear this site's cookies, and log in again)"
        ))),
    }
}

/// The `Set-Cookie` that ends a session in the browser.
pub(crate) fn clearing_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"))
        .expect("the cookie is ASCII")
}

/// 403 `csrf_failed` unless a change (any method but GET, HEAD and OPTIONS) made with the
/// session `session` carries its CSRF token.
fn check_csrf(method: &Method, headers: &HeaderMap, session: &str) -> ApiResult<()> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let Some(sent) = headers.get(CSRF_HEADER) else {
        return Err(ApiError::csrf_failed(
            "a change made with a session cookie needs the `X-CSRF-Token` header: send the `csrf_token` the login answered",
        ));
    };
    let sent = sent.to_str().unwrap_or("").trim();
    if !shoal_service::sessions::csrf_matches(session, sent) {
        return Err(ApiError::csrf_failed(
            "the `X-CSRF-Token` header is not this session's CSRF token: send the `csrf_token` its login answered",
        ));
    }
    Ok(())
}

fn unauthenticated() -> Response {
    let mut res = ApiError::unauthenticated(
        "this request needs a credential: send `Authorization: Bearer TOKEN`, or log in (POST /api/v1/sessions) and send its cookie. A node writes the first admin token to DATA_DIR/admin.token when it starts on an empty store (`shoal up`: .shoal/admin.token, which the CLI reads by itself); `shoal token create` makes more",
    )
    .into_response();
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"shoal\""));
    res
}

/// Middleware on every route: authenticates the request and checks the operation's role;
/// see the module's text.
pub(crate) async fn authenticate(
    State((state, routes)): State<(Arc<AppState>, Arc<Routes>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let (op, access) = match route.as_deref().map(|r| routes.get(req.method(), r)) {
        Some(Some(found)) => found,
        // A route the table does not know (deny by default), or a method it does not serve.
        Some(None) => ("(unlisted)", Cluster),
        // An unknown path: the caller must still be someone before learning so.
        None => ("(no route)", R(Viewer)),
    };
    if matches!(op, "liveV1" | "readyV1" | "live" | "ready") {
        return next.run(req).await;
    }
    if let Err(e) = check_query(req.uri().query()) {
        return e.into_response();
    }
    let public = access == Public || (op == "metrics" && state.auth.metrics_public);
    if public {
        return next.run(req).await;
    }
    let principal = match req.extensions().get::<Forwarded>() {
        // A forwarded request: the principal its first node authenticated, signed.
        Some(f) => match &f.principal {
            Some(p) => p.clone(),
            None => {
                return ApiError::invalid_signature(
                    "forwarded request carries no principal; the forwarding node runs an older version",
                )
                .into_response()
            }
        },
        None => match bearer(req.headers()) {
            Err(e) => return e.into_response(),
            Ok(Some(token)) => match state.auth.token(token).await {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            },
            // No token: a person's session, if the request carries one.
            Ok(None) => {
                let session = match session_cookie(req.headers()) {
                    Ok(Some(s)) => s,
                    Ok(None) => return unauthenticated(),
                    Err(e) => return e.into_response(),
                };
                match state.auth.session(&session).await {
                    Ok(p) => {
                        // A change refused for its CSRF token is still one this session tried.
                        crate::audit::note_principal(&req, &p);
                        if let Err(e) = check_csrf(req.method(), req.headers(), &session) {
                            return e.into_response();
                        }
                        p
                    }
                    Err(e) => {
                        // A session that is over: the browser may as well drop the cookie.
                        let ended = e.code == shoal_wire::ErrorCode::InvalidToken;
                        let mut res = e.into_response();
                        if ended {
                            let secure = state.node.url.starts_with("https://");
                            res.headers_mut().insert(header::SET_COOKIE, clearing_cookie(secure));
                        }
                        return res;
                    }
                }
            }
        },
    };
    crate::audit::note_principal(&req, &principal);
    if principal.kind == PrincipalKind::Attempt && !ATTEMPT_OPERATIONS.contains(&op) {
        return ApiError::forbidden(format!(
            "{} is an attempt's token (`SHOAL_TOKEN`): it may only read its own execution and those it started, with their logs, cancel those, and submit jobs of its sandbox; `{op}` needs another credential",
            principal.label()
        ))
        .into_response();
    }
    match access {
        R(need) if principal.role < need => {
            return principal.require(need, None, &format!("`{op}`")).unwrap_err().into_response();
        }
        Cluster => {
            if let Err(e) = principal.require(Admin, None, &format!("`{op}`, which acts on the whole cluster,")) {
                return e.into_response();
            }
        }
        _ => {}
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        for (g, n, want) in [
            ("*", "anything", true),
            ("team-*", "team-a", true),
            ("team-*", "team-", true),
            ("team-*", "teamx", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*-prod", "etl-prod", true),
            ("*-prod", "etl-prod2", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_matches(g, n), want, "{g} ~ {n}");
        }
        assert_eq!(like_pattern("etl_*-?"), "etl\\_%-_");
        assert!(check_glob("team-*").is_ok());
        for bad in ["", "Team", "a/b", "[ab]", "x%"] {
            assert!(check_glob(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_in_the_query_are_refused() {
        for q in ["access_token=x", "a=1&TOKEN=y", "x=shoal_api_abc", "q=%73hoal_api_abc", "api_key"] {
            assert_eq!(check_query(Some(q)).unwrap_err().code, shoal_wire::ErrorCode::TokenInQuery, "{q}");
        }
        for q in ["limit=5", "state=running&cursor=abc", "path=tokens.txt"] {
            assert!(check_query(Some(q)).is_ok(), "{q}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_once_and_changes_need_the_csrf_token() {
        let mut h = HeaderMap::new();
        assert_eq!(session_cookie(&h).unwrap(), None);
        h.append(header::COOKIE, HeaderValue::from_static("theme=dark; shoal_session=shoal_ses_abc"));
        assert_eq!(session_cookie(&h).unwrap().as_deref(), Some("shoal_ses_abc"));
        // HTTP/2 may split cookies over several headers: all are read.
        h.append(header::COOKIE, HeaderValue::from_static("shoal_session=\"shoal_ses_def\""));
        assert!(session_cookie(&h).unwrap_err().message.contains("2 `shoal_session` cookies"));
        let (session, _) = shoal_service::sessions::generate();
        let csrf = shoal_service::sessions::csrf_token(&session);
        let mut h = HeaderMap::new();
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(check_csrf(&m, &h, &session).is_ok(), "{m}");
        }
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert_eq!(check_csrf(&m, &h, &session).unwrap_err().code, shoal_wire::ErrorCode::CsrfFailed, "{m}");
        }
        h.insert(CSRF_HEADER, HeaderValue::from_str(&csrf.to_uppercase()).unwrap());
        assert!(check_csrf(&Method::POST, &h, &session).is_err(), "hex is compared as sent");
        h.insert(CSRF_HEADER, HeaderValue::from_str(&csrf).unwrap());
        assert!(check_csrf(&Method::DELETE, &h, &session).is_ok());
        assert!(clearing_cookie(true).to_str().unwrap().ends_with("Max-Age=0; Secure"));
    }

    #[test]
    fn principals_check_role_and_scope() {
        let p = Principal {
            kind: PrincipalKind::Token,
            id: "t1".into(),
            name: "ci".into(),
            role: Role::Runner,
            sandboxes: vec!["team-*".into()],
            attempt: None,
        };
        assert!(p.require(Role::Runner, Some("team-a"), "running jobs").is_ok());
        let e = p.require(Role::Editor, Some("team-a"), "writing files").unwrap_err();
        assert!(e.message.contains("`runner`") && e.message.contains("`editor`"), "{}", e.message);
        let e = p.require(Role::Viewer, Some("other"), "reading files").unwrap_err();
        assert!(e.message.contains("`other`") && e.message.contains("`team-*`"), "{}", e.message);
        let e = p.require(Role::Viewer, None, "watching the cluster's nodes").unwrap_err();
        assert!(e.message.ends_with("needs a credential for every sandbox (`*`)"), "{}", e.message);
        assert_eq!(p.like_patterns(), Some(vec!["team-%".to_owned()]));
    }
}
