//! Transparent request forwarding between nodes, signed with the cluster secret.
//!
//! Any node serves any request (guarantee 1). A request that only another node can serve (a
//! `local` sandbox's files and job files; later a live log, or a node's own drain) is sent on
//! to that node, and its answer comes back unchanged: status, headers and body, streamed both
//! ways and never held whole, so uploads and downloads of any size pass through. A node whose
//! lease is gone is answered for at once with `503 node_unavailable` naming it, without
//! trying; one that refuses the connection, or does not accept it within a second, gets the
//! same answer. Neither ever hangs the client.
//!
//! # Signature
//!
//! A forwarded request carries `x-shoal-forwarded-by` (the sending node's id),
//! `x-shoal-timestamp` (Unix milliseconds), `x-shoal-nonce` (128 random bits, hex) and
//! `x-shoal-signature`: the hex HMAC-SHA256, keyed with the cluster secret, of
//! `METHOD \n PATH?QUERY \n TIMESTAMP \n NONCE \n FORWARDED-BY \n PRINCIPAL`, where
//! PRINCIPAL is `x-shoal-principal`: who the first node authenticated the request as (its
//! [`Principal`] in JSON; empty for the routes that need none). The client's own credential
//! (`Authorization`, `Cookie`) is not passed on: the next node acts for the signed principal,
//! and checks its permission again. The receiver compares in
//! constant time, accepts timestamps within ±30 s of its own clock ([`REPLAY_WINDOW`]), and
//! remembers every nonce it accepted for as long, so a captured request cannot be sent again.
//! This is the one place where node clocks matter, and only to within the window; nothing
//! about leases or firings depends on it.
//!
//! The body, and the headers other than these, are not covered. The body is streamed:
//! covering it would mean holding a whole upload before sending its first byte, or a signature
//! in a trailer, which clients and proxies do not reliably pass on. What the signature covers is
//! what makes a request pass as forwarded, and the nonce and window stop it from being replayed;
//! swapping the body of a request in flight takes a machine in the middle of the traffic
//! between nodes, which TLS between nodes (or a private network) rules out.
//!
//! # One hop
//!
//! A forwarded request is never forwarded again. When it reaches a node that still is not the
//! one to serve it (the two nodes read the store at different moments), that node answers
//! `409 sandbox_not_here` or `503 node_unavailable` instead of passing it on, so nodes that
//! disagree cannot bounce a request between them, and the client's retry sees a settled store.

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use anyhow::Context;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{OriginalUri, Request, State};
use axum::http::{header, Extensions, HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The node that forwarded a request (request header).
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-shoal-forwarded-by");
/// When the request was forwarded, in milliseconds since the Unix epoch (request header).
pub const TIMESTAMP: HeaderName = HeaderName::from_static("x-shoal-timestamp");
/// 128 random bits in hex, never used twice (request header).
pub const NONCE: HeaderName = HeaderName::from_static("x-shoal-nonce");
/// The request's HMAC-SHA256 in hex (request header).
pub const SIGNATURE: HeaderName = HeaderName::from_static("x-shoal-signature");
/// Who the request acts for, as the first node authenticated it: a [`Principal`] in JSON
/// (request header, signed).
pub const PRINCIPAL: HeaderName = HeaderName::from_static("x-shoal-principal");
/// The node that served a request, on every response: a forwarded one keeps its server's.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-shoal-served-by");

/// The headers that make a request a forwarded one; any one of them has it verified.
const SIGNED: [HeaderName; 4] = [FORWARDED_BY, TIMESTAMP, NONCE, SIGNATURE];

/// How far a forwarded request's timestamp may be from the receiver's clock.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);
const WINDOW_MS: i64 = REPLAY_WINDOW.as_millis() as i64;

/// A node that does not accept a connection within this is taken for down: on a LAN a live
/// node accepts in well under a millisecond.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a node may take to start answering once the whole request has reached it. There is
/// no overall timeout (a followed log or a large download streams for as long as it takes);
/// this only catches a node that accepts connections but no longer answers (stopped, or its
/// runtime wedged), which would otherwise hold the client forever. Every endpoint starts its
/// answer in far less time.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Nonces remembered at most. Forwarded requests are a fraction of all requests and the
/// window is 30 s, so this is room for over 3,000 forwarded requests a second (a few MB);
/// past it the oldest are forgotten and requests as old as those are refused (see
/// [`SeenNonces::insert`]), so a full cache never lets a replay through.
const MAX_NONCES: usize = 100_000;

/// A request another node forwarded here, with a verified signature: a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// The id of the node that forwarded it.
    pub from: String,
    /// Who it acts for; `None` on the routes that need no credential.
    pub principal: Option<Principal>,
}

/// Signs and sends requests to other nodes, and verifies the ones they send here.
pub struct Forwarder {
    node_id: String,
    secret: Vec<u8>,
    client: reqwest::Client,
    seen: Mutex<SeenNonces>,
    response_timeout: Duration,
}

/// Nonces accepted within the replay window; also by timestamp, to prune old ones in order.
struct SeenNonces {
    nonces: HashSet<u128>,
    by_time: BTreeSet<(i64, u128)>,
    capacity: usize,
    /// Requests dated at or before this were forgotten to keep within `capacity`: they can no
    /// longer be checked for replay, so they are refused.
    floor: i64,
}

impl SeenNonces {
    fn new(capacity: usize) -> SeenNonces {
        SeenNonces { nonces: HashSet::new(), by_time: BTreeSet::new(), capacity, floor: i64::MIN }
    }

    /// Records a request's nonce; refuses one that was already received. `timestamp` is within
    /// the window of `now` (checked before).
    fn insert(&mut self, timestamp: i64, nonce: u128, now: i64) -> ApiResult<()> {
        // A nonce only needs remembering while its timestamp is in the window; later it is
        // refused as stale anyway.
        let recent = self.by_time.split_off(&(now - WINDOW_MS, 0));
        for (_, old) in std::mem::replace(&mut self.by_time, recent) {
            self.nonces.remove(&old);
        }
        if timestamp <= self.floor {
            return Err(ApiError::invalid_signature(format!(
                "forwarded request is older than any this node can still check for replay (more than {} forwarded requests in {} s); send it again",
                self.capacity,
                REPLAY_WINDOW.as_secs()
            )));
        }
        if !self.nonces.insert(nonce) {
            return Err(ApiError::invalid_signature("forwarded request was already received (replayed nonce)"));
        }
        self.by_time.insert((timestamp, nonce));
        while self.by_time.len() > self.capacity {
            if let Some((oldest, old)) = self.by_time.pop_first() {
                self.nonces.remove(&old);
                self.floor = self.floor.max(oldest);
            }
        }
        Ok(())
    }
}

/// The node a request is forwarded to, and what it is there for, to name it in errors.
struct Target<'a> {
    id: &'a str,
    url: &'a str,
    /// Why this node, as a clause: "which holds sandbox `x`".
    role: Option<&'a str>,
}

impl Target<'_> {
    fn unavailable(&self, why: &str) -> ApiError {
        let who = match self.role {
            Some(role) => format!("node {}, {role},", self.id),
            None => format!("node {}", self.id),
        };
        ApiError::node_unavailable(format!("{who} is unavailable: {why}; retry when it is back"))
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The path and query the client asked for: nested routers see the path without its
/// `/api/v1` prefix, but the signature covers the whole of it.
fn path_and_query(uri: &Uri, extensions: &Extensions) -> String {
    let uri = extensions.get::<OriginalUri>().map_or(uri, |o| &o.0);
    uri.path_and_query().map_or("/", |p| p.as_str()).to_owned()
}

/// The headers that travel end to end: all but the hop-by-hop ones (RFC 9110 section 7.6.1),
/// `Host` (the target's is not the client's), `Expect` (this node already answered the
/// client's `100-continue` by reading the body) and any forwarding headers a client sent.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let hop_by_hop = matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "host"
                | "expect"
                // The node the client reached checked it against its own host; the next
                // node's `Host` is not the client's.
                | "origin"
                // The next node acts for the signed principal, never for a credential passed on.
                | "authorization"
                | "cookie"
        ) || named_by_connection.iter().any(|t| t == name.as_str())
            || SIGNED.contains(name)
            || name == PRINCIPAL;
        if !hop_by_hop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// What a failed send says about the node, for the error message.
fn describe(e: &reqwest::Error, url: &str) -> String {
    let mut innermost = e.to_string();
    let mut io_kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        innermost = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => format!("connection refused at {url}"),
            _ if e.is_timeout() => {
                format!("no connection to {url} within {} s", CONNECT_TIMEOUT.as_secs())
            }
            _ => format!("cannot connect to {url}: {innermost}"),
        }
    } else {
        format!("the request to {url} failed: {innermost}")
    }
}

impl Forwarder {
    /// A forwarder for node `node_id`, signing with `secret` (`cluster.secret`, or the one kept
    /// in the store). Nodes reached over https must present a certificate for their host that
    /// chains to `ca_pem` (`cluster.tls_ca`: a PEM bundle, the only roots trusted then), or
    /// without one to the system's roots.
    pub fn new(
        node_id: impl Into<String>,
        secret: impl Into<Vec<u8>>,
        ca_pem: Option<&[u8]>,
    ) -> anyhow::Result<Forwarder> {
        const POOL_IDLE: Duration = Duration::from_secs(20);
        let secret = secret.into();
        if secret.is_empty() {
            anyhow::bail!(
                "the cluster secret is empty; set cluster.secret to a long random string, or leave it out to use the one kept in the store"
            );
        }
        let mut client = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem).context("cluster.tls_ca is not a PEM bundle")?;
            anyhow::ensure!(!roots.is_empty(), "cluster.tls_ca holds no PEM certificate");
            client = roots.into_iter().fold(client.tls_built_in_root_certs(false), |c, r| c.add_root_certificate(r));
        }
        let client = client
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Idle connections are given up well before the other node's `http.idle_timeout`
            // (60 s by default) closes them, so a request never lands on one being closed.
            .pool_idle_timeout(POOL_IDLE)
            // Answers pass through as they are; and nodes talk directly, never through a proxy
            // from the environment.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .context("cannot build the HTTP client that forwards requests to other nodes")?;
        Ok(Forwarder {
            node_id: node_id.into(),
            secret,
            client,
            seen: Mutex::new(SeenNonces::new(MAX_NONCES)),
            response_timeout: RESPONSE_TIMEOUT,
        })
    }

    fn mac(
        &self,
        method: &str,
        path_and_query: &str,
        timestamp: &str,
        nonce: &str,
        from: &str,
        principal: &str,
    ) -> Hmac<Sha256> {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(method.as_bytes());
        for part in [path_and_query, timestamp, nonce, from, principal] {
            mac.update(b"\n");
            mac.update(part.as_bytes());
        }
        mac
    }

    /// The forwarding headers for a request sent now on behalf of `principal` (JSON, or empty).
    fn sign(&self, method: &Method, path_and_query: &str, now_ms: i64, principal: &str) -> Vec<(HeaderName, String)> {
        let timestamp = now_ms.to_string();
        let nonce = format!("{:032x}", rand::random::<u128>());
        let mac = self.mac(method.as_str(), path_and_query, &timestamp, &nonce, &self.node_id, principal);
        let signature = hex::encode(mac.finalize().into_bytes());
        let mut headers =
            vec![(FORWARDED_BY, self.node_id.clone()), (TIMESTAMP, timestamp), (NONCE, nonce), (SIGNATURE, signature)];
        if !principal.is_empty() {
            headers.push((PRINCIPAL, principal.to_owned()));
        }
        headers
    }

    /// Checks a forwarded request's signature, age and nonce; `now_ms` is this node's clock.
    pub fn verify(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        now_ms: i64,
    ) -> ApiResult<Forwarded> {
        let get = |name: &HeaderName| -> ApiResult<&str> {
            let value = headers.get(name).ok_or_else(|| {
                ApiError::invalid_signature(format!(
                    "forwarded request lacks the `{name}` header; a forwarding node sends all of {}, and a client none of them",
                    SIGNED.iter().map(HeaderName::as_str).collect::<Vec<_>>().join(", ")
                ))
            })?;
            value
                .to_str()
                .map_err(|_| ApiError::invalid_signature(format!("forwarded request's `{name}` header is not text")))
        };
        let (from, timestamp, nonce, signature) =
            (get(&FORWARDED_BY)?, get(&TIMESTAMP)?, get(&NONCE)?, get(&SIGNATURE)?);
        let principal = match headers.get(PRINCIPAL) {
            None => "",
            Some(v) => v.to_str().map_err(|_| {
                ApiError::invalid_signature("forwarded request's `x-shoal-principal` header is not text")
            })?,
        };
        let signature = hex::decode(signature).map_err(|_| {
            ApiError::invalid_signature(
                "forwarded request's `x-shoal-signature` is not hex; it is an HMAC-SHA256 in hex",
            )
        })?;
        self.mac(method.as_str(), path_and_query, timestamp, nonce, from, principal).verify_slice(&signature).map_err(
            |_| {
                ApiError::invalid_signature(
                    "forwarded request signature does not match: the sending node has a different cluster.secret",
                )
            },
        )?;
        // Signed, so these come from a node with the secret; malformed ones are its bug.
        let sent: i64 = timestamp.parse().map_err(|_| {
            ApiError::invalid_signature(format!("forwarded request's timestamp `{timestamp}` is not a whole number"))
        })?;
        let nonce_bits =
            (nonce.len() == 32).then(|| u128::from_str_radix(nonce, 16).ok()).flatten().ok_or_else(|| {
                ApiError::invalid_signature(format!("forwarded request's nonce `{nonce}` is not 32 hex digits"))
            })?;
        let age = now_ms.saturating_sub(sent);
        let window = REPLAY_WINDOW.as_secs();
        if age > WINDOW_MS {
            return Err(ApiError::invalid_signature(format!(
                "forwarded request is {} s old; the replay window is {window} s: check the nodes' clocks",
                age.unsigned_abs().div_ceil(1000)
            )));
        }
        if age < -WINDOW_MS {
            return Err(ApiError::invalid_signature(format!(
                "forwarded request is dated {} s ahead of this node's clock; the replay window is {window} s: check the nodes' clocks",
                age.unsigned_abs().div_ceil(1000)
            )));
        }
        self.seen.lock().insert(sent, nonce_bits, now_ms)?;
        let principal = (!principal.is_empty())
            .then(|| serde_json::from_str::<Principal>(principal))
            .transpose()
            .map_err(|e| ApiError::invalid_signature(format!("forwarded request's principal cannot be read: {e}")))?;
        Ok(Forwarded { from: from.to_owned(), principal })
    }

    /// Sends `req` to node `node_id` at `node_url`, signed, keeping its method, path, query,
    /// end-to-end headers and body, and streams the node's answer back. A node that cannot be
    /// reached gives `503 node_unavailable` naming it.
    pub async fn forward(&self, node_id: &str, node_url: &str, req: Request) -> Response {
        self.send(&Target { id: node_id, url: node_url, role: None }, req).await
    }

    async fn send(&self, target: &Target<'_>, req: Request) -> Response {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        match self.try_send(target.url, req).await {
            Ok(response) => {
                tracing::debug!(
                    to = target.id,
                    %method,
                    status = response.status().as_u16(),
                    head_ms = started.elapsed().as_millis() as u64,
                    "forwarded a request"
                );
                response
            }
            Err(why) => target.unavailable(&why).into_response(),
        }
    }

    async fn try_send(&self, url: &str, req: Request) -> Result<Response, String> {
        let (parts, body) = req.into_parts();
        let path_and_query = path_and_query(&parts.uri, &parts.extensions);
        let target = format!("{}{path_and_query}", url.trim_end_matches('/'));
        let mut headers = end_to_end(&parts.headers);
        let principal = match parts.extensions.get::<Principal>() {
            Some(p) => serde_json::to_string(p).map_err(|e| format!("cannot sign the request: {e}"))?,
            None => String::new(),
        };
        for (name, value) in self.sign(&parts.method, &path_and_query, now_ms(), &principal) {
            headers.insert(name, HeaderValue::try_from(value).map_err(|e| format!("cannot sign the request: {e}"))?);
        }
        // A body that knows its length (one rebuilt from parsed JSON) says it best.
        if let Some(len) = body.size_hint().exact().filter(|_| !body.is_end_stream()) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let mut request = self.client.request(parts.method, &target).headers(headers);
        // The response timeout runs from when the last byte of the body went out.
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<()>();
        if body.is_end_stream() {
            let _ = sent_tx.send(());
        } else {
            let mut sent = Some(sent_tx);
            let end = futures::stream::poll_fn(move |_| {
                if let Some(tx) = sent.take() {
                    let _ = tx.send(());
                }
                Poll::<Option<Result<Bytes, axum::Error>>>::Ready(None)
            });
            request = request.body(reqwest::Body::wrap_stream(body.into_data_stream().chain(end)));
        }
        let silence = async {
            let _ = sent_rx.await;
            tokio::time::sleep(self.response_timeout).await;
        };
        let response = tokio::select! {
            r = request.send() => r.map_err(|e| describe(&e, url))?,
            () = silence => {
                return Err(format!(
                    "it took the request at {url} but did not start answering within {} s",
                    self.response_timeout.as_secs_f64()
                ))
            }
        };
        let mut out = Response::new(Body::empty());
        *out.status_mut() = response.status();
        *out.headers_mut() = end_to_end(response.headers());
        *out.body_mut() = Body::from_stream(response.bytes_stream());
        Ok(out)
    }
}

/// Whether a request carries any of the forwarding headers, and so is verified as forwarded.
pub(crate) fn claims_forwarded(headers: &HeaderMap) -> bool {
    SIGNED.iter().chain([&PRINCIPAL]).any(|h| headers.contains_key(h))
}

/// Middleware on `/api/v1`: verifies requests that carry forwarding headers, and marks the good
/// ones with [`Forwarded`]; a bad one is refused with `401 invalid_signature` and changes
/// nothing. Requests without these headers (from clients) pass untouched.
pub(crate) async fn verify(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if !claims_forwarded(req.headers()) {
        return next.run(req).await;
    }
    let path_and_query = path_and_query(req.uri(), req.extensions());
    match state.forwarder.verify(req.method(), &path_and_query, req.headers(), now_ms()) {
        Ok(forwarded) => {
            req.extensions_mut().insert(forwarded);
            next.run(req).await
        }
        Err(e) => {
            // The path only: a query string could hold what must not be logged.
            tracing::warn!(method = %req.method(), path = %req.uri().path(), reason = %e.message, "refused a forwarded request");
            e.into_response()
        }
    }
}

/// Middleware on every response: says which node served it, unless a node it was forwarded to
/// already did.
pub(crate) async fn served_by(State(state): State<Arc<AppState>>, mut res: Response) -> Response {
    if !res.headers().contains_key(SERVED_BY) {
        if let Ok(v) = HeaderValue::from_str(&state.node.id) {
            res.headers_mut().insert(SERVED_BY, v);
        }
    }
    res
}

/// Sends `req` to node `node_id` (another node) and streams its answer back, for endpoints
/// that only that node can serve (a node's own drain, a live log on the node running an
/// attempt).
///
/// The node is looked up in the store first: if its lease is gone (it stopped, or stopped
/// renewing) the answer is `503 node_unavailable` at once, without trying to reach it. A
/// request that was itself forwarded here is not forwarded again (one hop at most): it gets
/// `503 node_unavailable` too, and the client's retry goes through a store that has settled.
pub async fn forward_to_node(state: &AppState, node_id: &str, req: Request) -> ApiResult<Response> {
    if let Some(f) = req.extensions().get::<Forwarded>() {
        return Err(ApiError::node_unavailable(format!(
            "node {} forwarded this request here, but node {node_id} serves it; requests are forwarded once at most, so retry it (the nodes saw the cluster change in between)",
            f.from
        )));
    }
    route(state, node_id, None, req).await
}

/// Sends a request about sandbox `sandbox` to `holder`, the other node that holds it.
///
/// A request that was itself forwarded here is not forwarded again: `409 sandbox_not_here`.
pub(crate) async fn to_sandbox_holder(
    state: &AppState,
    sandbox: &str,
    holder: &str,
    req: Request,
) -> ApiResult<Response> {
    if let Some(f) = req.extensions().get::<Forwarded>() {
        return Err(ApiError::sandbox_not_here(format!(
            "sandbox `{sandbox}` is local to node {holder}, and node {} already forwarded this request here; requests are forwarded once at most, so send it to node {holder} or retry",
            f.from
        )));
    }
    route(state, holder, Some(&format!("which holds sandbox `{sandbox}`")), req).await
}

async fn route(state: &AppState, node_id: &str, role: Option<&str>, req: Request) -> ApiResult<Response> {
    if node_id == state.node.id {
        return Err(ApiError::internal(format!("a request was to be forwarded to node {node_id}, this node itself")));
    }
    // Gossip knows every live peer's URL: no store read on the common path. The store's
    // registry is asked when gossip does not vouch for the node, to say why it is unavailable.
    if let Some(url) = state.engine.live_peer_url(node_id) {
        let target = Target { id: node_id, url: &url, role };
        return Ok(state.forwarder.send(&target, req).await);
    }
    let nodes = state.store.list_nodes().await?;
    let Some(node) = nodes.iter().find(|n| n.id == node_id) else {
        let target = Target { id: node_id, url: "", role };
        return Err(target.unavailable("it has never joined the cluster (it is not in the store's node registry)"));
    };
    let target = Target { id: node_id, url: &node.url, role };
    let ago = (node.now - node.lease_expires_at).max(0).unsigned_abs().div_ceil(1000);
    if node.state == "stopped" {
        return Err(target.unavailable(&format!("it stopped {ago} s ago")));
    }
    if node.lease_expires_at <= node.now {
        return Err(target
            .unavailable(&format!("its lease ran out {ago} s ago (it crashed, hangs, or cannot reach the store)")));
    }
    Ok(state.forwarder.send(&target, req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder(id: &str, secret: &str) -> Forwarder {
        Forwarder::new(id, secret.as_bytes(), None).unwrap()
    }

    fn headers(signed: Vec<(HeaderName, String)>) -> HeaderMap {
        signed.into_iter().map(|(n, v)| (n, HeaderValue::try_from(v).unwrap())).collect()
    }

    const NOW: i64 = 1_780_000_000_000;
    const PATH: &str = "/api/v1/sandboxes/sb/files/a.txt?x=1";

    #[test]
    fn signed_requests_verify_once() {
        let (n1, n2) = (forwarder("n1", "s3cret"), forwarder("n2", "s3cret"));
        let h = headers(n1.sign(&Method::PUT, PATH, NOW, ""));
        assert_eq!(
            n2.verify(&Method::PUT, PATH, &h, NOW + 10).unwrap(),
            Forwarded { from: "n1".into(), principal: None }
        );
        let again = n2.verify(&Method::PUT, PATH, &h, NOW + 20).unwrap_err();
        assert_eq!(
            (again.code.as_str(), again.message.as_str()),
            ("invalid_signature", "forwarded request was already received (replayed nonce)")
        );
        // A new request (new nonce) at the same moment is fine.
        n2.verify(&Method::PUT, PATH, &headers(n1.sign(&Method::PUT, PATH, NOW, "")), NOW).unwrap();
    }

    #[test]
    fn the_signature_covers_method_path_query_time_nonce_and_sender() {
        let (n1, n2) = (forwarder("n1", "s3cret"), forwarder("n2", "s3cret"));
        let h = headers(n1.sign(&Method::GET, PATH, NOW, ""));
        let mismatch = |e: ApiError| {
            assert_eq!(e.code, "invalid_signature");
            assert!(e.message.contains("signature does not match"), "{}", e.message);
        };
        mismatch(n2.verify(&Method::DELETE, PATH, &h, NOW).unwrap_err());
        mismatch(n2.verify(&Method::GET, "/api/v1/sandboxes/sb/files/a.txt?x=2", &h, NOW).unwrap_err());
        for (name, value) in [(TIMESTAMP, (NOW - 1).to_string()), (NONCE, "0".repeat(32)), (FORWARDED_BY, "n3".into())]
        {
            let mut changed = h.clone();
            changed.insert(name, HeaderValue::try_from(value).unwrap());
            mismatch(n2.verify(&Method::GET, PATH, &changed, NOW).unwrap_err());
        }
        // The principal is signed: one changed, added or dropped is refused.
        let who = |role: shoal_wire::Role| {
            serde_json::to_string(&Principal {
                kind: crate::auth::PrincipalKind::Token,
                id: "t1".into(),
                name: "ci".into(),
                role,
                sandboxes: vec!["*".into()],
                attempt: None,
            })
            .unwrap()
        };
        let signed = headers(n1.sign(&Method::GET, PATH, NOW, &who(shoal_wire::Role::Viewer)));
        let mut forged = signed.clone();
        forged.insert(PRINCIPAL, HeaderValue::try_from(who(shoal_wire::Role::Admin)).unwrap());
        mismatch(n2.verify(&Method::GET, PATH, &forged, NOW).unwrap_err());
        let mut dropped = signed.clone();
        dropped.remove(PRINCIPAL);
        mismatch(n2.verify(&Method::GET, PATH, &dropped, NOW).unwrap_err());
        let mut added = h.clone();
        added.insert(PRINCIPAL, HeaderValue::try_from(who(shoal_wire::Role::Admin)).unwrap());
        mismatch(n2.verify(&Method::GET, PATH, &added, NOW).unwrap_err());
        let verified = n2.verify(&Method::GET, PATH, &signed, NOW).unwrap();
        assert_eq!(verified.principal.map(|p| p.role), Some(shoal_wire::Role::Viewer));
        // Another secret.
        let other = headers(forwarder("n1", "not-the-secret").sign(&Method::GET, PATH, NOW, ""));
        let e = n2.verify(&Method::GET, PATH, &other, NOW).unwrap_err();
        assert_eq!(
            e.message,
            "forwarded request signature does not match: the sending node has a different cluster.secret"
        );
        // None of the refused ones used up the nonce.
        n2.verify(&Method::GET, PATH, &h, NOW).unwrap();
    }

    #[test]
    fn timestamps_outside_the_window_are_refused() {
        let (n1, n2) = (forwarder("n1", "k"), forwarder("n2", "k"));
        let old = headers(n1.sign(&Method::GET, PATH, NOW - 45_000, ""));
        let e = n2.verify(&Method::GET, PATH, &old, NOW).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.message.as_str()),
            (401, "forwarded request is 45 s old; the replay window is 30 s: check the nodes' clocks")
        );
        let ahead = headers(n1.sign(&Method::GET, PATH, NOW + 31_000, ""));
        let e = n2.verify(&Method::GET, PATH, &ahead, NOW).unwrap_err();
        assert!(e.message.starts_with("forwarded request is dated 31 s ahead"), "{}", e.message);
        // The edges of the window are in.
        n2.verify(&Method::GET, PATH, &headers(n1.sign(&Method::GET, PATH, NOW - 30_000, "")), NOW).unwrap();
        n2.verify(&Method::GET, PATH, &headers(n1.sign(&Method::GET, PATH, NOW + 30_000, "")), NOW).unwrap();
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        let (n1, n2) = (forwarder("n1", "k"), forwarder("n2", "k"));
        let full = headers(n1.sign(&Method::GET, PATH, NOW, ""));
        for name in SIGNED {
            let mut h = full.clone();
            h.remove(&name);
            let e = n2.verify(&Method::GET, PATH, &h, NOW).unwrap_err();
            assert_eq!(e.code, "invalid_signature");
            assert!(e.message.contains(&format!("lacks the `{name}` header")), "{}", e.message);
        }
        let mut h = full.clone();
        h.insert(SIGNATURE, HeaderValue::from_static("zz"));
        assert!(n2.verify(&Method::GET, PATH, &h, NOW).unwrap_err().message.contains("not hex"));
    }

    #[test]
    fn nonces_are_forgotten_after_the_window_and_the_cache_is_bounded() {
        let mut seen = SeenNonces::new(3);
        seen.insert(NOW, 1, NOW).unwrap();
        seen.insert(NOW, 2, NOW).unwrap();
        assert!(seen.insert(NOW, 1, NOW + 1).is_err());
        // A nonce is used once, whatever the timestamp sent with it.
        assert!(seen.insert(NOW + 5, 2, NOW + 5).is_err());
        // Past the window the old ones are pruned (and would be refused as stale anyway).
        seen.insert(NOW + 40_000, 3, NOW + 40_000).unwrap();
        assert_eq!((seen.by_time.len(), seen.nonces.len()), (1, 1));
        // Over capacity: the oldest is forgotten, and requests as old as it are refused rather
        // than risk a replay.
        for (ts, nonce) in [(NOW + 40_001, 4), (NOW + 40_002, 5), (NOW + 40_003, 6)] {
            seen.insert(ts, nonce, NOW + 40_003).unwrap();
        }
        assert_eq!((seen.by_time.len(), seen.nonces.len()), (3, 3));
        assert_eq!(seen.floor, NOW + 40_000);
        let e = seen.insert(NOW + 40_000, 7, NOW + 40_003).unwrap_err();
        assert!(e.message.contains("older than any this node can still check"), "{}", e.message);
        seen.insert(NOW + 40_001, 8, NOW + 40_003).unwrap();
    }

    #[test]
    fn hop_by_hop_headers_and_client_forwarding_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("host", "n1:7700"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("x-shoal-nonce", "00"),
            ("content-type", "application/json"),
            ("idempotency-key", "k1"),
            ("content-length", "12"),
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let forwarded = end_to_end(&h);
        let kept: Vec<&str> = forwarded.keys().map(HeaderName::as_str).collect();
        assert_eq!(kept, ["content-type", "idempotency-key", "content-length"]);
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let e = Forwarder::new("n1", Vec::new(), None).err().unwrap();
        assert!(e.to_string().contains("cluster secret is empty"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_node_is_a_prompt_503_naming_it() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let req = Request::builder().uri("/api/v1/sandboxes/sb/files/x").body(Body::empty()).unwrap();
        let started = std::time::Instant::now();
        let resp = forwarder("n1", "k").forward("n2", &url, req).await;
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_eq!(resp.status(), 503);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "node_unavailable");
        assert_eq!(
            v["error"]["message"],
            format!("node n2 is unavailable: connection refused at {url}; retry when it is back")
        );
    }

    #[tokio::test]
    async fn a_node_that_takes_the_connection_but_never_answers_is_a_503_too() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Accepts and holds connections, reads nothing, answers nothing.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut f = forwarder("n1", "k");
        f.response_timeout = Duration::from_millis(200);
        let req = Request::builder().uri("/api/v1/executions/x/logs").body(Body::empty()).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), f.forward("n2", &url, req)).await.unwrap();
        assert_eq!(resp.status(), 503);
        holder.abort();
    }
}
