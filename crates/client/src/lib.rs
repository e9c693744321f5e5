//! HTTP client for shoal's API, failing over between several servers.
//!
//! Every node serves every request, so a client is given several base URLs and tries them in
//! turn: on a connection error, or on a `503` that says the node cannot serve now
//! (`node_unavailable`, `not_ready`, `store_unavailable`), it moves to the next one, and it
//! remembers the last one that answered so later calls go there first. A server that answered
//! anything else (a `4xx`, a `500`) has decided; asking another node would get the same answer
//! or, worse, do the thing twice.
//!
//! Only requests that are safe to repeat are sent again after they may have reached a server
//! (the connection broke after sending): reads, uploads (the server writes them atomically),
//! submissions, which carry an `Idempotency-Key` that stays the same across the retries so the
//! store creates at most one execution, webhook deliveries, which carry a delivery id for the
//! same purpose, `PATCH`es (they set fields to given values) and cron previews. Others (cancel,
//! create, delete) move on only when the connection could not be made at all.
//!
//! When every server says it cannot serve now (a store failover, say: every node answers `503
//! store_unavailable`), a call that is safe to repeat is tried again round after round, with
//! a pause doubling from 250 ms to 2 s, for as long as [`Client::with_patience`] allows
//! (none by default; the `shoal` CLI waits a minute, `--patience`). A submission keeps its
//! idempotency key through every round.
//!
//! Reads see the client's own writes even when the node serves them from a PostgreSQL read
//! replica, which may lag behind the primary. The answer to every write carries the WAL
//! position after it (`X-Shoal-Position: X/Y`); the client keeps the highest position any
//! answer has carried, shared by its clones, and sends it on every request after, so a node
//! serves the read only from a replica that has replayed that far, or from the primary.
//! [`Client::observe_position`] hands it a position from elsewhere: the `shoal` CLI, whose
//! every command is a new process, keeps the last one in
//! `$XDG_CACHE_HOME/shoal/positions/<hash of the servers>` (else under `~/.cache`), so that
//! `shoal run ... && shoal show ID` reads the execution the first command wrote.

mod error;
mod logs;
mod urls;

pub use error::{Error, Result, UNEXPECTED_RESPONSE};
pub use shoal_wire::Lsn;
pub use urls::{file_path, segment, API_PREFIX};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
pub use shoal_wire::{
    AuditEntry, AuditList, AuditOutcome, CreatedToken, LoginRequest, Rewrap, Secret, SecretList, SecretRequest,
    Session, Token, TokenList, TokenRequest, User, UserList, UserRequest,
};
use shoal_wire::{
    CreateSandboxRequest, ErrorCode, EventList, Execution, ExecutionList, ExecutionState, FiringList, FolderListing,
    HookAnswer, JobList, Listener, ListenerList, ListenerRequest, LogStream, Node, NodeList, Preview, PreviewRequest,
    Ready, Sandbox, SandboxList, Schedule, ScheduleList, ScheduleRequest, SubmitRequest, Upload,
};
use std::marker::PhantomData;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A response body read as it arrives, so large files and live logs are never held whole.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Told the bytes of a file sent so far while it uploads (from 0 again when the upload moves
/// to another server).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Carries a WAL position: on answers to writes, the position after the write; on requests,
/// the position a replica must have replayed to serve them.
const POSITION_HEADER: &str = "x-shoal-position";

/// How long to wait for a TCP connection before trying the next server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The whole-request deadline of calls that answer with a small JSON document. Streaming
/// calls (logs, downloads, uploads) have none: a followed log may rightly last for hours.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Filters of `GET /executions`; `None` leaves a filter out.
#[derive(Clone, Debug, Default)]
pub struct ExecutionFilter {
    pub state: Option<ExecutionState>,
    pub sandbox: Option<String>,
    pub job: Option<String>,
    pub node: Option<String>,
    /// Page size, 1 to 1000 (the server's default is 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Filters of `GET /audit`; `None` leaves a filter out.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// `token:NAME` or `user:NAME`.
    pub principal: Option<String>,
    /// An operation id (`createSchedule`; `createSession` for logins).
    pub action: Option<String>,
    /// A prefix of the target.
    pub target: Option<String>,
    pub outcome: Option<AuditOutcome>,
    /// The node that recorded it.
    pub node: Option<String>,
    /// RFC 3339, or a duration before now on the store's clock (`1h`).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Page size, 1 to 1000 (the server's default is 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// What `POST /nodes/{id}/{action}` asks of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAction {
    /// Take no new work, let running attempts finish, report not ready.
    Drain,
    /// Take no new work until resumed, keep serving requests.
    Suspend,
    /// Take work again after a drain or a suspension.
    Resume,
}

impl NodeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Drain => "drain",
            NodeAction::Suspend => "suspend",
            NodeAction::Resume => "resume",
        }
    }
}

/// A file being downloaded.
pub struct Download {
    /// Its length, when the server said it (`Content-Length`).
    pub size: Option<u64>,
    pub stream: ByteStream,
}

/// A client for one cluster. Cheap to clone; clones share the memory of which server works
/// and of the WAL position seen. Its `Debug` shows no token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    servers: Arc<[String]>,
    /// Index of the server that answered last, tried first next time.
    preferred: Arc<AtomicUsize>,
    request_timeout: Duration,
    /// Sent as `Authorization: Bearer ...` on every request.
    token: Option<String>,
    /// The highest WAL position an answer carried (an [`Lsn`]'s number), sent on every
    /// request. 0 stands for none: `0/0` is PostgreSQL's invalid position, never a real one.
    position: Arc<AtomicU64>,
    /// How long a call safe to repeat goes on being tried while every server is unavailable.
    patience: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.servers)
            .field("request_timeout", &self.request_timeout)
            .field("token", &self.token.as_ref().map(|t| shoal_wire::shown_part(t) + "..."))
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

/// One logical request, which [`Client::execute`] may send to several servers.
struct Call<'a> {
    method: Method,
    /// Encoded, after the API prefix, starting with `/`.
    path: String,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    /// A JSON body, sent as exactly these bytes (a signed webhook: the signature covers them).
    json: Option<Bytes>,
    upload: Option<&'a Path>,
    /// Told how much of the upload has gone.
    progress: Option<Progress>,
    /// Safe to send to another server after it may already have reached one.
    idempotent: bool,
    /// Hand the response body to the caller unread.
    streaming: bool,
    /// Apply the request deadline (not for streams and uploads, whose length is unbounded).
    deadline: bool,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: String) -> Call<'a> {
        let idempotent = method == Method::GET;
        Call {
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            json: None,
            upload: None,
            progress: None,
            idempotent,
            streaming: false,
            deadline: true,
        }
    }

    /// A call with `body` encoded as its JSON body.
    fn with_json(method: Method, path: String, body: &impl Serialize) -> Result<Call<'a>> {
        let mut call = Call::new(method, path);
        let bytes =
            serde_json::to_vec(body).map_err(|e| Error::Other(format!("cannot encode the request as JSON: {e}")))?;
        call.json = Some(bytes.into());
        Ok(call)
    }
}

enum Reply {
    Whole { status: StatusCode, headers: HeaderMap, body: Bytes },
    Stream { base: String, response: reqwest::Response },
}

impl Client {
    /// A client for the servers at these base URLs (`http://host:port`, optionally with a path
    /// prefix; a bare `host:port` means http), tried in this order. `https://` servers are
    /// verified against the system's roots.
    pub fn new(servers: Vec<String>) -> Result<Client> {
        Client::with_ca(servers, None)
    }

    /// As [`Client::new`], but `https://` servers are verified against the CA certificates of
    /// `ca_pem` (a PEM bundle, such as the nodes' `cluster.tls_ca`) instead of the system's roots.
    pub fn with_ca(servers: Vec<String>, ca_pem: Option<&[u8]>) -> Result<Client> {
        let servers = servers.iter().map(|s| urls::parse_server(s)).collect::<Result<Vec<_>>>()?;
        if servers.is_empty() {
            return Err(Error::Other("no server URL was given; pass at least one with --server".into()));
        }
        let mut http = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Other(format!("the CA file is not a PEM bundle: {e}")))?;
            if roots.is_empty() {
                return Err(Error::Other("the CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
            }
            http = roots.into_iter().fold(http.tls_built_in_root_certs(false), |b, r| b.add_root_certificate(r));
        }
        let http = http
            .connect_timeout(CONNECT_TIMEOUT)
            // Well before a server's idle timeout (60 s by default) closes an idle connection.
            .pool_idle_timeout(Duration::from_secs(20))
            .user_agent(concat!("shoal-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Other(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            servers: servers.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            token: None,
            position: Arc::new(AtomicU64::new(0)),
            patience: Duration::ZERO,
        })
    }

    /// How long a call that is safe to repeat (see the module's text) is tried again, round
    /// after round over the servers, while every one of them is unreachable or says it cannot
    /// serve now. Zero (the default): one round.
    pub fn with_patience(mut self, patience: Duration) -> Client {
        self.patience = patience;
        self
    }

    /// Changes the deadline of non-streaming calls.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = timeout;
        self
    }

    /// The API token every request carries (`Authorization: Bearer TOKEN`). Its form is
    /// checked here, so a mistyped or truncated one is refused before anything is sent.
    pub fn with_token(mut self, token: impl Into<String>) -> Result<Client> {
        let token = token.into();
        let token = token.trim();
        shoal_wire::parse_token(token).map_err(|m| Error::Other(format!("the API token is refused: {m}")))?;
        self.token = Some(token.to_owned());
        Ok(self)
    }

    /// The normalised base URLs, in the order given.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The server the next request goes to first: the last one that answered.
    pub fn current_server(&self) -> &str {
        &self.servers[self.preferred.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// The highest WAL position an answer has carried (or [`Client::observe_position`] was
    /// given), as `X/Y`; every request carries it. `None` until there is one.
    pub fn position(&self) -> Option<String> {
        match self.position.load(Ordering::Relaxed) {
            0 => None,
            p => Some(Lsn(p).to_string()),
        }
    }

    /// Takes `text` (`X/Y`) as a position seen, if it is higher than the one kept. Anything
    /// that is not a position is ignored: the worst that comes of that is a later read
    /// served by a replica that has not caught up with it.
    pub fn observe_position(&self, text: &str) {
        if let Some(lsn) = Lsn::parse(text) {
            self.position.fetch_max(lsn.0, Ordering::Relaxed);
        }
    }

    // ---- nodes and health ----

    pub async fn nodes(&self) -> Result<NodeList> {
        self.get("/nodes".into(), Vec::new()).await
    }

    pub async fn node(&self, id: &str) -> Result<Node> {
        self.get(format!("/nodes/{}", segment(id)?), Vec::new()).await
    }

    /// Drains, suspends or resumes node `id`; any node forwards the request to `id`. Answers
    /// the node with its `previous_state`.
    pub async fn node_action(&self, id: &str, action: NodeAction) -> Result<Node> {
        let call = Call::new(Method::POST, format!("/nodes/{}/{}", segment(id)?, action.as_str()));
        decode(self.execute(call).await?)
    }

    /// Readiness of the first server that is ready (a `503 not_ready` moves on to the next).
    pub async fn health_ready(&self) -> Result<Ready> {
        self.get("/health/ready".into(), Vec::new()).await
    }

    // ---- tokens ----

    /// Every token, revoked ones too (never their secrets).
    pub async fn tokens(&self) -> Result<TokenList> {
        self.get("/tokens".into(), Vec::new()).await
    }

    /// Makes a token; the answer holds its secret, this once.
    pub async fn create_token(&self, request: &TokenRequest) -> Result<CreatedToken> {
        let call = Call::with_json(Method::POST, "/tokens".into(), request)?;
        decode(self.execute(call).await?)
    }

    /// Revokes the token with this id (or the one not revoked with this name).
    pub async fn revoke_token(&self, reference: &str) -> Result<Token> {
        let call = Call::new(Method::DELETE, format!("/tokens/{}", segment(reference)?));
        decode(self.execute(call).await?)
    }

    // ---- users ----

    /// Every user, by name (never a password nor its hash).
    pub async fn users(&self) -> Result<UserList> {
        self.get("/users".into(), Vec::new()).await
    }

    /// Logs a user in and answers the session (its CSRF token, its end). The session's cookie
    /// is not kept: this client authenticates with its token.
    pub async fn login(&self, request: &LoginRequest) -> Result<Session> {
        let call = Call::with_json(Method::POST, "/sessions".into(), request)?;
        decode(self.execute(call).await?)
    }

    /// Makes a user who logs in with `request.password` (the server keeps only its hash).
    pub async fn create_user(&self, request: &UserRequest) -> Result<User> {
        let call = Call::with_json(Method::POST, "/users".into(), request)?;
        decode(self.execute(call).await?)
    }

    /// Deletes the user with this name (or id), and ends their sessions.
    pub async fn delete_user(&self, reference: &str) -> Result<()> {
        self.execute(Call::new(Method::DELETE, format!("/users/{}", segment(reference)?))).await.map(drop)
    }

    // ---- job secrets ----

    /// The secrets this client's credential may see (cluster-wide ones and those of its
    /// sandboxes; with `sandbox`, that sandbox's): names and times, never a value.
    pub async fn secrets(&self, sandbox: Option<&str>) -> Result<SecretList> {
        self.get("/secrets".into(), sandbox.map(|s| ("sandbox", s.to_owned())).into_iter().collect()).await
    }

    /// Sets secret `name` of `sandbox` (cluster-wide without one) to `request.value`; the
    /// answer says who set it and when, never the value.
    pub async fn set_secret(&self, name: &str, sandbox: Option<&str>, request: &SecretRequest) -> Result<Secret> {
        let mut call = Call::with_json(Method::PUT, format!("/secrets/{}", segment(name)?), request)?;
        call.query.extend(sandbox.map(|s| ("sandbox", s.to_owned())));
        decode(self.execute(call).await?)
    }

    /// Removes secret `name` of `sandbox` (the cluster-wide one without).
    pub async fn delete_secret(&self, name: &str, sandbox: Option<&str>) -> Result<()> {
        let mut call = Call::new(Method::DELETE, format!("/secrets/{}", segment(name)?));
        call.query.extend(sandbox.map(|s| ("sandbox", s.to_owned())));
        self.execute(call).await.map(drop)
    }

    /// Seals every secret again under the current key of the node that answers.
    pub async fn rewrap_secrets(&self) -> Result<Rewrap> {
        decode(self.execute(Call::new(Method::POST, "/secrets/_rewrap".into())).await?)
    }

    // ---- sandboxes and their files ----

    pub async fn sandboxes(&self) -> Result<SandboxList> {
        self.get("/sandboxes".into(), Vec::new()).await
    }

    pub async fn sandbox(&self, name: &str) -> Result<Sandbox> {
        self.get(format!("/sandboxes/{}", segment(name)?), Vec::new()).await
    }

    /// Registers a sandbox. `root` must be absolute on the node(s); `node` only for `local`.
    pub async fn create_sandbox(&self, request: &CreateSandboxRequest) -> Result<Sandbox> {
        let call = Call::with_json(Method::POST, "/sandboxes".into(), request)?;
        decode(self.execute(call).await?)
    }

    pub async fn delete_sandbox(&self, name: &str) -> Result<()> {
        self.execute(Call::new(Method::DELETE, format!("/sandboxes/{}", segment(name)?))).await.map(drop)
    }

    /// The sandbox's job files and whether each is valid.
    pub async fn jobs(&self, sandbox: &str) -> Result<JobList> {
        self.get(format!("/sandboxes/{}/jobs", segment(sandbox)?), Vec::new()).await
    }

    /// Lists a folder of the sandbox (`""` for its root).
    pub async fn list_files(&self, sandbox: &str, path: &str) -> Result<FolderListing> {
        let mut call = Call::new(Method::GET, files_path(sandbox, path)?);
        // Streaming, so that naming a large file by mistake does not download it.
        call.streaming = true;
        call.deadline = true;
        let Reply::Stream { base, response } = self.execute(call).await? else {
            return Err(Error::Other("internal: expected a streaming reply".into()));
        };
        if !is_json(response.headers()) {
            return Err(Error::Other(format!("`{path}` is a file, not a folder; download it to read it")));
        }
        let body = response.bytes().await.map_err(|e| lost(&base, &e))?;
        parse_json(&body)
    }

    /// Downloads a file as a stream of chunks.
    pub async fn download(&self, sandbox: &str, path: &str) -> Result<Download> {
        let mut call = Call::new(Method::GET, files_path(sandbox, path)?);
        call.streaming = true;
        call.deadline = false;
        let Reply::Stream { base, response } = self.execute(call).await? else {
            return Err(Error::Other("internal: expected a streaming reply".into()));
        };
        if is_json(response.headers()) {
            return Err(Error::Other(format!("`{path}` is a folder, not a file; list it instead")));
        }
        Ok(Download { size: response.content_length(), stream: byte_stream(base, response) })
    }

    /// Uploads a local file to `path` in the sandbox, streaming it (it is opened again for
    /// each server tried).
    pub async fn upload(&self, sandbox: &str, path: &str, local: &Path) -> Result<Upload> {
        self.upload_with_progress(sandbox, path, local, None).await
    }

    /// Like [`Client::upload`], telling `progress` how many bytes have gone as they go.
    pub async fn upload_with_progress(
        &self,
        sandbox: &str,
        path: &str,
        local: &Path,
        progress: Option<Progress>,
    ) -> Result<Upload> {
        let mut call = Call::new(Method::PUT, files_path(sandbox, path)?);
        call.upload = Some(local);
        call.progress = progress;
        // The server writes uploads to a temporary file and renames it into place.
        call.idempotent = true;
        call.deadline = false;
        decode(self.execute(call).await?)
    }

    /// Deletes a file, or an empty folder.
    pub async fn delete_file(&self, sandbox: &str, path: &str) -> Result<()> {
        self.execute(Call::new(Method::DELETE, files_path(sandbox, path)?)).await.map(drop)
    }

    // ---- executions ----

    /// Submits an execution (a sandbox's job, or an inline command), with a fresh idempotency
    /// key. Answers the execution and whether the server replayed an earlier submission
    /// instead of creating one.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<(Execution, bool)> {
        self.submit_with_key(request, &uuid::Uuid::new_v4().to_string()).await
    }

    /// Like [`Client::submit`] with the caller's key, to make a submission safe to repeat
    /// across separate runs of a script.
    pub async fn submit_with_key(&self, request: &SubmitRequest, key: &str) -> Result<(Execution, bool)> {
        let mut call = Call::with_json(Method::POST, "/executions".into(), request)?;
        call.headers.push(("idempotency-key", key.to_owned()));
        // The key makes a repeat harmless: the store answers with the execution it made.
        call.idempotent = true;
        match self.execute(call).await? {
            Reply::Whole { status, headers, body } => {
                let replayed = status == StatusCode::OK
                    || headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()) == Some("true");
                Ok((parse_json(&body)?, replayed))
            }
            Reply::Stream { .. } => Err(Error::Other("internal: unexpected streaming reply".into())),
        }
    }

    /// One page of executions, newest first.
    pub async fn executions(&self, filter: &ExecutionFilter) -> Result<ExecutionList> {
        let mut query = Vec::new();
        if let Some(state) = filter.state {
            query.push(("state", state.as_str().to_owned()));
        }
        let fields =
            [("sandbox", &filter.sandbox), ("job", &filter.job), ("node", &filter.node), ("cursor", &filter.cursor)];
        for (k, v) in fields {
            if let Some(v) = v {
                query.push((k, v.clone()));
            }
        }
        if let Some(l) = filter.limit {
            query.push(("limit", l.to_string()));
        }
        self.get("/executions".into(), query).await
    }

    /// A page of the audit trail, newest first (needs `admin` for every sandbox).
    pub async fn audit(&self, filter: &AuditFilter) -> Result<AuditList> {
        let f = filter;
        let query = [
            ("principal", f.principal.clone()),
            ("action", f.action.clone()),
            ("target", f.target.clone()),
            ("outcome", f.outcome.map(|o| o.as_str().to_owned())),
            ("node", f.node.clone()),
            ("since", f.since.clone()),
            ("until", f.until.clone()),
            ("limit", f.limit.map(|l| l.to_string())),
            ("cursor", f.cursor.clone()),
        ];
        self.get("/audit".into(), query.into_iter().filter_map(|(k, v)| Some((k, v?))).collect()).await
    }

    pub async fn execution(&self, id: &str) -> Result<Execution> {
        self.get(format!("/executions/{}", segment(id)?), Vec::new()).await
    }

    /// Asks for an execution to stop; answers it as it is after the request (already
    /// `cancelled` if it was queued, still `running` with `cancel_requested_by` if it runs).
    pub async fn cancel(&self, id: &str) -> Result<Execution> {
        let call = Call::new(Method::POST, format!("/executions/{}/cancel", segment(id)?));
        decode(self.execute(call).await?)
    }

    /// An execution's output (`stream`: one of them, or both when `None`); with `follow`,
    /// until the execution has finished. If the connection breaks (the serving node died), the
    /// stream reopens on another server and skips what was already delivered.
    pub async fn logs(&self, id: &str, follow: bool, stream: Option<LogStream>) -> Result<ByteStream> {
        let (base, first) = self.open_logs(id, follow, stream).await?;
        Ok(logs::resumable(self.clone(), id.to_owned(), follow, stream, base, first))
    }

    /// Opens a log stream; answers the server serving it too, so a break can be blamed on it.
    async fn open_logs(&self, id: &str, follow: bool, stream: Option<LogStream>) -> Result<(String, ByteStream)> {
        let mut call = Call::new(Method::GET, format!("/executions/{}/logs", segment(id)?));
        if follow {
            call.query.push(("follow", "true".into()));
        }
        if let Some(s) = stream {
            call.query.push(("stream", wire_name(&s)?));
        }
        call.streaming = true;
        call.deadline = false;
        match self.execute(call).await? {
            Reply::Stream { base, response } => Ok((base.clone(), byte_stream(base, response))),
            Reply::Whole { .. } => Err(Error::Other("internal: expected a streaming reply".into())),
        }
    }

    // ---- schedules, listeners and webhooks ----

    /// The schedules: start a job at the times a cron expression names.
    pub fn schedules(&self) -> Schedules<'_> {
        Definitions { client: self, collection: "/schedules", kind: PhantomData }
    }

    /// The listeners: start a job when an event happens.
    pub fn listeners(&self) -> Listeners<'_> {
        Definitions { client: self, collection: "/listeners", kind: PhantomData }
    }

    /// Delivers a webhook to the webhook listener `name`, as an outside service would: `body`
    /// (JSON) is sent as exactly these bytes, signed with `secret` together with the time, the
    /// hook's name and the delivery id (see [`hook_signature`]). A delivery sent again with the
    /// same `delivery` id (1 to 200 printable ASCII characters, no control characters) starts
    /// no second job; without an id a fresh one is
    /// made, which also makes the request safe to send to another server after a broken
    /// connection. Answers the event and the execution, and whether the server had already
    /// received this delivery (the answer then has the first event only).
    pub async fn hook(
        &self,
        name: &str,
        secret: &str,
        body: &[u8],
        delivery: Option<&str>,
    ) -> Result<(HookAnswer, bool)> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Other("the system clock is set before 1970; cannot sign the webhook".into()))?;
        let mut call = Call::new(Method::POST, format!("/hooks/{}", segment(name)?));
        call.json = Some(Bytes::copy_from_slice(body));
        let delivery = delivery.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        // The hook's name and the delivery id are signed with the body: a changed id, or the
        // request sent to another hook with the same secret, does not verify.
        let signature = hook_signature(secret.as_bytes(), name, now.as_secs(), Some(&delivery), body);
        call.headers.push(("x-shoal-hook-signature", signature));
        call.headers.push(("x-shoal-hook-delivery", delivery));
        // The delivery id makes a repeat harmless: the server answers with the first event.
        call.idempotent = true;
        match self.execute(call).await? {
            Reply::Whole { status, body, .. } => {
                let mut answer: HookAnswer = parse_json(&body)?;
                // A new delivery's answer always has `execution`, null when the listener is
                // disabled; serde reads that null as "absent", which would drop it from the
                // answer shown again (`shoal --json hook`).
                if status == StatusCode::CREATED && answer.execution.is_none() {
                    answer.execution = Some(None);
                }
                Ok((answer, status == StatusCode::OK))
            }
            Reply::Stream { .. } => Err(Error::Other("internal: unexpected streaming reply".into())),
        }
    }

    /// Stops preferring a server whose answer broke off, so that the next request tries the
    /// others first: it answered, then failed, and may be going down.
    fn demote(&self, base: &str) {
        let n = self.servers.len();
        let current = self.preferred.load(Ordering::Relaxed) % n;
        if self.servers[current] == base {
            // Only moves it if no other request has moved it meanwhile.
            let _ = self.preferred.compare_exchange(current, (current + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    // ---- the fail-over loop ----

    async fn get<T: DeserializeOwned>(&self, path: String, query: Vec<(&'static str, String)>) -> Result<T> {
        let mut call = Call::new(Method::GET, path);
        call.query = query;
        decode(self.execute(call).await?)
    }

    /// A `PATCH` that sets the given fields: sending it twice leaves the same result, so it
    /// may go to another server after a broken connection.
    async fn patch<T: DeserializeOwned>(&self, path: String, patch: &impl Serialize) -> Result<T> {
        let mut call = Call::with_json(Method::PATCH, path, patch)?;
        call.idempotent = true;
        decode(self.execute(call).await?)
    }

    async fn execute(&self, call: Call<'_>) -> Result<Reply> {
        let until = tokio::time::Instant::now() + self.patience;
        let mut pause = Duration::from_millis(250);
        loop {
            match self.one_round(&call).await {
                Err(Error::Unreachable { tried, last }) if call.idempotent && call.upload.is_none() => {
                    let now = tokio::time::Instant::now();
                    if now >= until {
                        return Err(Error::Unreachable { tried, last });
                    }
                    tokio::time::sleep(pause.min(until - now)).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// One try of every server in turn; see the module's text.
    async fn one_round(&self, call: &Call<'_>) -> Result<Reply> {
        let n = self.servers.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut tried = Vec::with_capacity(n);
        let mut last = String::new();
        for i in 0..n {
            let index = (start + i) % n;
            let base = &self.servers[index];
            tried.push(base.clone());
            let mut req = self.http.request(call.method.clone(), urls::endpoint(base, &call.path, &call.query)?);
            if let Some(token) = &self.token {
                req = req.bearer_auth(token);
            }
            if let Some(position) = self.position() {
                req = req.header(POSITION_HEADER, position);
            }
            for (k, v) in &call.headers {
                req = req.header(*k, v);
            }
            if let Some(body) = &call.json {
                req = req.header(CONTENT_TYPE, "application/json").body(body.clone());
            }
            if let Some(local) = call.upload {
                let (body, len) = file_body(local, call.progress.clone()).await?;
                // A known length lets the server refuse an oversized upload before it is sent.
                req = req.header(CONTENT_LENGTH, len).body(body);
            }
            if call.deadline {
                req = req.timeout(self.request_timeout);
            }
            let response = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let why = describe(&e);
                    if e.is_connect() || call.idempotent {
                        last = format!("{base}: {why}");
                        continue;
                    }
                    return Err(Error::Unreachable {
                        tried,
                        last: format!(
                            "{base}: {why}; the request may have been carried out, check before repeating it"
                        ),
                    });
                }
            };
            // From any answer, not only successes: a position is a floor for later reads, so
            // keeping one that is higher than needed costs at most a read from the primary.
            if let Some(position) = response.headers().get(POSITION_HEADER).and_then(|v| v.to_str().ok()) {
                self.observe_position(position);
            }
            let status = response.status();
            if status.is_success() {
                if call.streaming {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(Reply::Stream { base: base.clone(), response });
                }
                let headers = response.headers().clone();
                match response.bytes().await {
                    Ok(body) => {
                        self.preferred.store(index, Ordering::Relaxed);
                        return Ok(Reply::Whole { status, headers, body });
                    }
                    Err(e) if call.idempotent => {
                        last = format!("{base}: {}", describe(&e));
                        continue;
                    }
                    Err(e) => return Err(lost(base, &e)),
                }
            }
            // An unreadable error body still yields an error, described by its status.
            let body = response.bytes().await.unwrap_or_default();
            let error = Error::from_response(status.as_u16(), &body);
            if unavailable(status, &error) {
                last = format!("{base}: {error}");
                continue;
            }
            self.preferred.store(index, Ordering::Relaxed);
            return Err(error);
        }
        Err(Error::Unreachable { tried, last })
    }
}

/// The definitions the API keeps in one collection, each named by its id or its name:
/// schedules or listeners. `T` is a definition, `R` the request that creates or changes one,
/// `L` the list of them all. Got from [`Client::schedules`] or [`Client::listeners`].
pub struct Definitions<'a, T, R, L> {
    client: &'a Client,
    /// Encoded, after the API prefix.
    collection: &'static str,
    kind: PhantomData<Kinds<T, R, L>>,
}

/// Carries the types without owning values of them (so `Definitions` is `Send` and `Sync`).
type Kinds<T, R, L> = fn() -> (T, R, L);

pub type Schedules<'a> = Definitions<'a, Schedule, ScheduleRequest, ScheduleList>;
pub type Listeners<'a> = Definitions<'a, Listener, ListenerRequest, ListenerList>;

impl<T: DeserializeOwned, R: Serialize, L: DeserializeOwned> Definitions<'_, T, R, L> {
    fn path(&self, reference: &str, rest: &str) -> Result<String> {
        Ok(format!("{}/{}{rest}", self.collection, segment(reference)?))
    }

    /// Every definition, sorted by name.
    pub async fn list(&self) -> Result<L> {
        self.client.get(self.collection.into(), Vec::new()).await
    }

    /// One definition, by id or name.
    pub async fn get(&self, reference: &str) -> Result<T> {
        self.client.get(self.path(reference, "")?, Vec::new()).await
    }

    /// Creates a definition; answers it as stored (a schedule with its `next_fire_time`; a
    /// webhook listener with its `secret`, the only time the server ever shows it).
    pub async fn create(&self, request: &R) -> Result<T> {
        let call = Call::with_json(Method::POST, self.collection.into(), request)?;
        decode(self.client.execute(call).await?)
    }

    /// Changes the fields `patch` gives (those left `None` keep their values; names and
    /// kinds cannot change); answers the definition as it is now.
    pub async fn update(&self, reference: &str, patch: &R) -> Result<T> {
        self.client.patch(self.path(reference, "")?, patch).await
    }

    /// Deletes a definition; the executions it started are left alone.
    pub async fn delete(&self, reference: &str) -> Result<()> {
        self.client.execute(Call::new(Method::DELETE, self.path(reference, "")?)).await.map(drop)
    }

    /// The newest `limit` entries of a definition's history (`rest`: its path there).
    async fn history<H: DeserializeOwned>(&self, reference: &str, rest: &str, limit: Option<u32>) -> Result<H> {
        let query = limit.map(|l| ("limit", l.to_string())).into_iter().collect();
        self.client.get(self.path(reference, rest)?, query).await
    }
}

impl Schedules<'_> {
    /// A schedule's recent firings, newest first (`limit`: the server's default is 50).
    pub async fn firings(&self, reference: &str, limit: Option<u32>) -> Result<FiringList> {
        self.history(reference, "/firings", limit).await
    }

    /// A schedule's next `count` fire times (the server's default is 10, at most 1000), in its
    /// time zone.
    pub async fn preview(&self, reference: &str, count: Option<u32>) -> Result<Preview> {
        let query = count.map(|c| ("count", c.to_string())).into_iter().collect();
        self.client.get(self.path(reference, "/preview")?, query).await
    }

    /// The next fire times of a cron expression, without creating a schedule.
    pub async fn preview_cron(&self, request: &PreviewRequest) -> Result<Preview> {
        let mut call = Call::with_json(Method::POST, "/schedules/preview".into(), request)?;
        // A computation that changes nothing.
        call.idempotent = true;
        decode(self.client.execute(call).await?)
    }
}

impl Listeners<'_> {
    /// The events a listener received, newest first (`limit`: the server's default is 50).
    pub async fn events(&self, reference: &str, limit: Option<u32>) -> Result<EventList> {
        self.history(reference, "/events", limit).await
    }
}

/// The `X-Shoal-Hook-Signature` header of a delivery to the webhook `hook` made at `timestamp`
/// (Unix seconds): `t=<timestamp>,v1=<hex MAC>`, the MAC being HMAC-SHA256 with `secret` over
/// exactly the bytes `"<timestamp>\n<hook>\n<delivery>\n"` followed by the raw body, where
/// `<delivery>` is the `X-Shoal-Hook-Delivery` value sent (1 to 200 printable ASCII
/// characters) or nothing when that header is not sent.
pub fn hook_signature(secret: &[u8], hook: &str, timestamp: u64, delivery: Option<&str>, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let d = delivery.unwrap_or("");
    let mac = hmac_sha256_hex(secret, &[t.as_bytes(), b"\n", hook.as_bytes(), b"\n", d.as_bytes(), b"\n", body]);
    format!("t={t},v1={mac}")
}

/// The hex HMAC-SHA256 of the concatenated `parts`.
fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Whether an error answer means "this node cannot serve now, another may".
fn unavailable(status: StatusCode, error: &Error) -> bool {
    // Not the API's error shape: a proxy or load balancer in front of a node that is down.
    let foreign = error.raw_code() == Some(UNEXPECTED_RESPONSE);
    match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            foreign
                || matches!(
                    error.code(),
                    Some(ErrorCode::NodeUnavailable | ErrorCode::NotReady | ErrorCode::StoreUnavailable)
                )
        }
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => foreign,
        _ => false,
    }
}

fn files_path(sandbox: &str, path: &str) -> Result<String> {
    Ok(format!("/sandboxes/{}/files/{}", segment(sandbox)?, file_path(path)?))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

fn decode<T: DeserializeOwned>(reply: Reply) -> Result<T> {
    match reply {
        Reply::Whole { body, .. } => parse_json(&body),
        Reply::Stream { .. } => Err(Error::Other("internal: unexpected streaming reply".into())),
    }
}

/// Reads an answer as its wire type. One that does not fit (a field missing, a state this
/// client does not know) is named as such: it is most likely a server of another version.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::Other(format!(
            "the server's answer is not what this client expects ({e}); is the server of another shoal version?"
        ))
    })
}

/// How a wire enum is spelled in JSON, for a query string.
fn wire_name(value: &impl Serialize) -> Result<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        _ => Err(Error::Other("internal: a query value that is not a name".into())),
    }
}

async fn file_body(local: &Path, progress: Option<Progress>) -> Result<(reqwest::Body, u64)> {
    let shown = local.display();
    let file = tokio::fs::File::open(local).await.map_err(|e| Error::Other(format!("cannot open `{shown}`: {e}")))?;
    let meta = file.metadata().await.map_err(|e| Error::Other(format!("cannot read `{shown}`: {e}")))?;
    if !meta.is_file() {
        return Err(Error::Other(format!("`{shown}` is not a file")));
    }
    let chunks = tokio_util::io::ReaderStream::new(file);
    let body = match progress {
        None => reqwest::Body::wrap_stream(chunks),
        Some(progress) => {
            progress(0);
            let mut sent = 0u64;
            reqwest::Body::wrap_stream(chunks.inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    sent += chunk.len() as u64;
                    progress(sent);
                }
            }))
        }
    };
    Ok((body, meta.len()))
}

fn byte_stream(base: String, response: reqwest::Response) -> ByteStream {
    Box::pin(response.bytes_stream().map(move |r| r.map_err(|e| lost(&base, &e))))
}

/// A connection that broke after the server had started answering.
fn lost(base: &str, e: &reqwest::Error) -> Error {
    Error::Unreachable {
        tried: vec![base.to_owned()],
        last: format!("{base}: the connection broke while reading the answer: {}", describe(e)),
    }
}

/// The innermost cause of a transport error (reqwest's own text only repeats the URL).
fn describe(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    let root = inner.to_string();
    if e.is_connect() && e.is_timeout() {
        format!("cannot connect within {}s", CONNECT_TIMEOUT.as_secs())
    } else if e.is_connect() {
        format!("cannot connect: {root}")
    } else if e.is_timeout() {
        format!("no answer in time: {root}")
    } else {
        root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use std::sync::Mutex;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", &[b"what do ya ", b"want for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hook_signature_signs_timestamp_hook_delivery_and_body() {
        // Computed independently: python3 -c 'import hmac,hashlib; print(hmac.new(
        // b"whsec-0123456789abcdef", b"1700000000\norders\n\n{\"order\": 42}", hashlib.sha256).hexdigest())'
        // and the same with b"...\norders\nd-1\n..." for the delivery id.
        assert_eq!(
            hook_signature(b"whsec-0123456789abcdef", "orders", 1_700_000_000, None, br#"{"order": 42}"#),
            "t=1700000000,v1=d949533ebe5785538c61521bf417c51719814392fe866249334341560bed2c01"
        );
        assert_eq!(
            hook_signature(b"whsec-0123456789abcdef", "orders", 1_700_000_000, Some("d-1"), br#"{"order": 42}"#),
            "t=1700000000,v1=5ced600a19d13e3b43ac619833611215a9e92debb73eba40ba42f7346e881a77"
        );
        // The framing leaves nothing to shift: no id and body `12.5` is not id `12` and body `5`.
        assert_ne!(
            hook_signature(b"k", "orders", 1, None, b"12.5"),
            hook_signature(b"k", "orders", 1, Some("12"), b"5")
        );
        assert_ne!(hook_signature(b"k", "a", 1, None, b"{}"), hook_signature(b"k", "b", 1, None, b"{}"));
    }

    #[test]
    fn definitions_live_under_their_collection() {
        let client = Client::new(vec!["127.0.0.1:1".into()]).unwrap();
        assert_eq!(client.schedules().path("nightly", "").unwrap(), "/schedules/nightly");
        assert_eq!(client.schedules().path("a b", "/firings").unwrap(), "/schedules/a%20b/firings");
        assert_eq!(client.listeners().path("x?y", "/events").unwrap(), "/listeners/x%3Fy/events");
        assert!(client.listeners().path("..", "").is_err());
    }

    /// An execution as a server answers it (`e1`, queued).
    pub(crate) fn execution_fixture() -> serde_json::Value {
        serde_json::from_str(include_str!("../tests/fixtures/execution.json")).unwrap()
    }

    #[test]
    fn an_answer_read_and_written_again_is_the_servers_body() {
        let body = execution_fixture();
        let execution: Execution = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(execution.state, ExecutionState::Queued);
        assert_eq!(serde_json::to_value(&execution).unwrap(), body);
        // A state this client does not know is named as a version mismatch, not half-read.
        let mut newer = body;
        newer["state"] = "paused".into();
        let e = parse_json::<Execution>(newer.to_string().as_bytes()).unwrap_err();
        assert!(matches!(&e, Error::Other(m) if m.contains("another shoal version")), "{e}");
    }

    /// What the stand-in hook endpoint saw: signature header, delivery header, raw body.
    type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

    async fn hook_endpoint(
        axum::extract::State(seen): axum::extract::State<Seen>,
        axum::extract::Path(name): axum::extract::Path<String>,
        headers: AxumHeaders,
        body: Bytes,
    ) -> (AxumStatus, axum::Json<serde_json::Value>) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let (signature, delivery) = (header("x-shoal-hook-signature"), header("x-shoal-hook-delivery"));
        let t: u64 = signature.strip_prefix("t=").and_then(|r| r.split(',').next()).unwrap().parse().unwrap();
        // The hook's name (from the path) and the delivery id are part of what is signed.
        assert_eq!(name, "orders");
        assert_eq!(signature, hook_signature(b"a-secret-of-16-chars", &name, t, Some(&delivery), &body));
        assert_ne!(signature, hook_signature(b"a-secret-of-16-chars", &name, t, None, &body));
        assert_ne!(signature, hook_signature(b"a-secret-of-16-chars", "other", t, Some(&delivery), &body));
        assert_eq!(header("content-type"), "application/json");
        let mut seen = seen.lock().unwrap();
        let again = seen.iter().any(|(_, d, _)| *d == delivery);
        // An empty payload stands for a delivery to a disabled listener: it starts nothing.
        let disabled = &body[..] == b"{}";
        seen.push((signature, delivery.clone(), body.to_vec()));
        let event = serde_json::json!({
            "listener": "l1", "key": format!("delivery:{delivery}"), "at": "2026-12-01T10:00:00.000Z",
            "node": "n1", "outcome": if disabled { "skipped" } else { "started" },
            "reason": if disabled { Some("disabled") } else { None },
            "execution": if disabled { None } else { Some("e1") }, "payload": {},
        });
        if again {
            (AxumStatus::OK, axum::Json(serde_json::json!({"event": event, "replayed": true})))
        } else {
            let execution = if disabled { serde_json::Value::Null } else { execution_fixture() };
            (AxumStatus::CREATED, axum::Json(serde_json::json!({"event": event, "execution": execution})))
        }
    }

    #[tokio::test]
    async fn hooks_are_signed_over_the_exact_body_and_carry_a_delivery_id() {
        let seen = Seen::default();
        let app = axum::Router::new()
            .route("/api/v1/hooks/{name}", axum::routing::post(hook_endpoint))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::new(vec![url]).unwrap();
        // Spacing kept as typed: the signature covers these bytes.
        let body = br#"{ "order" :42 }"#;
        let (answer, replayed) = client.hook("orders", "a-secret-of-16-chars", body, Some("d-1")).await.unwrap();
        let started = answer.execution.as_ref().and_then(|e| e.as_ref()).map(|e| e.id.as_str());
        assert_eq!((started, replayed), (Some("e1"), false));
        let (again, replayed) = client.hook("orders", "a-secret-of-16-chars", body, Some("d-1")).await.unwrap();
        assert!(replayed, "a second delivery with one id is a replay");
        assert_eq!((again.event.execution.as_deref(), again.replayed), (Some("e1"), Some(true)));
        let (skipped, _) = client.hook("orders", "a-secret-of-16-chars", b"{}", None).await.unwrap();
        // The null execution of a new delivery that started nothing is kept, as the server sent it.
        assert_eq!(skipped.execution, Some(None));
        assert_eq!(serde_json::to_value(&skipped).unwrap()["execution"], serde_json::Value::Null);
        assert!(serde_json::to_value(&skipped).unwrap().as_object().unwrap().contains_key("execution"));
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].2, body);
        assert_eq!((seen[0].1.as_str(), seen[1].1.as_str()), ("d-1", "d-1"));
        assert!(!seen[2].1.is_empty(), "a delivery id is made when none is given");
    }
}
