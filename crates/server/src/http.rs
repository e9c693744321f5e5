//! The node's HTTP server: the accept loop, the connection cap and the timeouts that keep a
//! slow or silent client from holding a connection.
//!
//! Each connection is served by hyper's HTTP/1 connection with a watchdog beside it, which
//! knows at any moment which of three states the connection is in:
//!
//! - **reading a head**: from accept, or from the first byte of a later request on a kept-alive
//!   connection, until the request head is complete. Closed (without an answer) after
//!   `http.header_read_timeout`.
//! - **busy**: a request is in flight, from its complete head until its response body has been
//!   written out or dropped. Not closed for its length, however long the response streams (a
//!   followed log can last hours); the request body has its own limit, below.
//! - **idle**: no request in flight and no byte of the next one yet. Closed after
//!   `http.idle_timeout`.
//!
//! In every state, a write to the socket that has made no progress for `http.write_timeout`
//! (the client stopped reading, or vanished with the socket's buffers full) closes the
//! connection: the socket wrapper records when a write or flush became pending and the watchdog
//! acts on it. A response with nothing to send (a quiet followed log) has no write pending, so
//! it is never cut by this.
//!
//! hyper's own `header_read_timeout` is not used: it starts as soon as a kept-alive connection
//! goes idle, so it would make the idle timeout the shorter of the two.
//!
//! Accepted sockets get TCP keepalive ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`],
//! [`KEEPALIVE_PROBES`]) and, on Linux, `TCP_USER_TIMEOUT` (the longer of
//! [`MIN_USER_TIMEOUT`] and `http.write_timeout`), so that a peer gone without a FIN is noticed
//! on a quiet connection, and unacknowledged data to it fails, instead of holding a connection.
//!
//! hyper buffers at most [`MAX_BUF_SIZE`] of a connection's input (and queued output): a request
//! head larger than that is answered `431 Request Header Fields Too Large` (by hyper, without a
//! body) and the connection closed after a short drain of what the client still sends, so that
//! the close does not reset the answer away.
//!
//! A request body must arrive within `http.body_read_timeout` of the handler's first read of it
//! (a body of up to [`BODY_GRACE_BYTES`]); each further [`BODY_GRACE_BYTES`] that arrive earn as
//! long again, so an upload needs about 1 MiB per `body_read_timeout`, and a body trickled a byte
//! at a time cannot hold a connection. When it expires, the handler's read fails, it answers
//! 400, and hyper closes the connection (the rest of the body was never read).
//!
//! Beyond `http.max_connections` connections at once, a new connection is answered 503
//! `too_many_connections` with `Retry-After` at once, without reading its request or reaching
//! the router, and closed.
//!
//! With `http.tls`, every connection is TLS (rustls, through [`TlsAcceptor`]; the certificate
//! comes from `tls.rs`, which swaps it when its files change). The handshake runs in the
//! connection's own task, never on the accept loop, and under the same watchdog as the first
//! request's head: the handshake and that head together must be done within
//! `http.header_read_timeout` of accept, so a client that opens a socket and never starts (or
//! never finishes) its handshake holds its connection slot no longer than one that sends no
//! head. The watchdog sees the socket beneath TLS, so a write stalled in TLS is a stalled
//! write too. A refused connection beyond the cap gets its 503 through TLS as well, once its
//! request begins, the handshake included in [`REFUSE_TIME`]. A client that speaks plain HTTP
//! to a TLS port fails its handshake and is closed.

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

/// A request body earns another `body_read_timeout` each time this much more of it arrives.
pub const BODY_GRACE_BYTES: u64 = 1024 * 1024;

/// Refused connections being answered at once; beyond it a refused connection is closed
/// without an answer, so a flood costs no more than this many tasks.
const MAX_REFUSING: usize = 128;

/// How long answering a refused connection may take, its lingering close included; also how
/// long a connection answered with a parse error (431, 400) is drained before it is closed.
const REFUSE_TIME: Duration = Duration::from_secs(1);

/// The most hyper buffers of one connection: the largest request head it accepts, start line
/// and headers (431 beyond), and the bound on its read and write buffers, so that
/// `http.max_connections` connections cost at most a few times this each.
pub const MAX_BUF_SIZE: usize = 64 * 1024;

/// Idle time before the first TCP keepalive probe on an accepted socket.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between TCP keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered keepalive probes before the socket is dropped by the kernel.
pub const KEEPALIVE_PROBES: u32 = 3;
/// The shortest `TCP_USER_TIMEOUT` set on accepted sockets (Linux): how long sent data may stay
/// unacknowledged before the kernel fails the connection. It is at least `http.write_timeout`.
pub const MIN_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`spawn`] needs of `[http]`.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

impl From<&crate::config::HttpConfig> for HttpLimits {
    fn from(c: &crate::config::HttpConfig) -> HttpLimits {
        HttpLimits {
            header_read_timeout: c.header_read_timeout,
            body_read_timeout: c.body_read_timeout,
            idle_timeout: c.idle_timeout,
            write_timeout: c.write_timeout,
            max_connections: c.max_connections,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true; then stops accepting, closes idle
/// connections, lets each busy one finish its request in flight (a kept-alive one is closed
/// after it), and returns when all have closed.
///
/// That can take as long as the longest response still streaming: a followed log lasts as long
/// as its execution, so the task may never return on its own while one is open. The timeouts
/// still apply meanwhile (a stalled write is closed after `http.write_timeout`), but nothing
/// here bounds a live stream; a caller that must stop on time bounds the wait and aborts the
/// task, which drops every connection left (as `Node::shutdown` does after 2 s).
pub fn spawn(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: HttpLimits,
    node_id: &str,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    warn_if_descriptors_are_short(limits.max_connections);
    let refusal = Arc::new(refusal(node_id, limits.max_connections));
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
        let limits = Arc::new(limits);
        let mut connections = JoinSet::new();
        let mut refused = Refused::default();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to close rather than spin.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            // Small answers (a file, a JSON body) must not wait for a delayed ACK.
            let _ = tcp.set_nodelay(true);
            set_keepalive(&tcp, limits.write_timeout);
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (app, limits, shutdown, tls) = (app.clone(), limits.clone(), shutdown.clone(), tls.clone());
                    connections.spawn(async move {
                        serve_connection(tcp, peer, tls, app, &limits, shutdown).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    refused.note(limits.max_connections);
                    match refusing.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (refusal, tls) = (refusal.clone(), tls.clone());
                            connections.spawn(async move {
                                refuse(tcp, tls, &refusal).await;
                                drop(permit);
                            });
                        }
                        Err(_) => drop(tcp),
                    }
                }
            }
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    })
}

/// Counts refused connections for the log: the first at once, then at most one line a minute.
#[derive(Default)]
struct Refused {
    count: u64,
    logged: Option<Instant>,
}

impl Refused {
    fn note(&mut self, max: usize) {
        self.count += 1;
        if self.logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(
                refused = self.count,
                max_connections = max,
                "HTTP connections refused with 503: this node serves http.max_connections already"
            );
            self.count = 0;
            self.logged = Some(Instant::now());
        }
    }
}

/// TCP keepalive and (Linux) `TCP_USER_TIMEOUT` on an accepted socket, so that a peer that
/// vanished without a FIN does not hold the connection: a quiet one is probed, and data sent to
/// it fails once unacknowledged for the user timeout. Best effort: a socket that refuses is
/// served all the same, under the watchdog's timeouts.
fn set_keepalive(tcp: &TcpStream, write_timeout: Duration) {
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let keepalive = keepalive.with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive on an HTTP connection");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some(write_timeout.max(MIN_USER_TIMEOUT))) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT on an HTTP connection");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = write_timeout;
}

/// Errors of one connection that the listener survives untouched.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

fn warn_if_descriptors_are_short(max_connections: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let (open_files, wanted) = (limit.rlim_cur, max_connections as libc::rlim_t + 256);
    if open_files < wanted {
        tracing::warn!(
            open_files,
            max_connections,
            "the open-file limit is below http.max_connections plus what the node needs besides; raise it (ulimit -n, LimitNOFILE=) or lower http.max_connections"
        );
    }
}

/// The whole answer to a connection beyond the cap, as bytes on the wire: the API's error
/// shape with the code and status of its table.
fn refusal(node_id: &str, max: usize) -> Vec<u8> {
    let error = shoal_api::ApiError::too_many_connections(format!(
        "this node already serves {max} connections (http.max_connections); retry in a moment or use another node"
    ));
    let body = serde_json::to_string(&error.body()).unwrap_or_default();
    let served_by = HeaderValue::from_str(node_id).map(|_| node_id).unwrap_or("");
    format!(
        "HTTP/1.1 {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n{}: {served_by}\r\n\r\n{body}",
        error.status,
        body.len(),
        shoal_api::SERVED_BY.as_str(),
    )
    .into_bytes()
}

/// Answers 503 and closes, draining what the client sends meanwhile so that the close is a
/// FIN, not a reset that could destroy the answer before the client reads it. With TLS, the
/// handshake comes first, within the same time.
async fn refuse(tcp: TcpStream, tls: Option<TlsAcceptor>, answer: &[u8]) {
    async fn answer_and_drain(mut s: impl AsyncRead + AsyncWrite + Unpin, answer: &[u8]) -> io::Result<()> {
        s.write_all(answer).await?;
        s.shutdown().await?;
        let mut sink = [0u8; 4096];
        while s.read(&mut sink).await? > 0 {}
        Ok(())
    }
    let _ = tokio::time::timeout(REFUSE_TIME, async {
        match tls {
            None => answer_and_drain(tcp, answer).await,
            Some(acceptor) => {
                let mut tls = acceptor.accept(tcp).await?;
                // An answer right after the handshake could reach the client before it has
                // sent its request, which HTTP clients take for a broken server: wait for the
                // request to begin.
                let mut first = [0u8; 4096];
                if tls.read(&mut first).await? == 0 {
                    return Ok(());
                }
                answer_and_drain(tls, answer).await
            }
        }
    })
    .await;
}

/// A connection's socket as hyper gets it: plain, or TLS over it. Either way the TCP socket
/// can be taken back to drain it.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn into_tcp(self) -> TcpStream;
}

impl Transport for Watched {
    fn into_tcp(self) -> TcpStream {
        self.tcp
    }
}

impl Transport for tokio_rustls::server::TlsStream<Watched> {
    fn into_tcp(self) -> TcpStream {
        self.into_inner().0.tcp
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: &HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let watched = Watched { tcp, activity: activity.clone(), write_pending: false };
    let Some(acceptor) = tls else {
        return serve_http(watched, peer, activity, app, limits, shutdown).await;
    };
    // The handshake is the start of the first request's head: the watchdog that times the
    // head from accept times it too (and a write of it that stalls).
    let handshake = {
        let watchdog = activity.watch(limits);
        tokio::select! {
            handshake = acceptor.accept(watched) => handshake,
            why = watchdog => {
                tracing::debug!(reason = why, "closing an HTTPS connection whose TLS handshake did not end in time");
                return;
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    };
    match handshake {
        Ok(stream) => serve_http(stream, peer, activity, app, limits, shutdown).await,
        // A scanner, a client that does not trust this certificate, or plain HTTP sent to the
        // TLS port: nothing for the node's log above debug.
        Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
    }
}

async fn serve_http(
    io: impl Transport,
    peer: SocketAddr,
    activity: Arc<Activity>,
    app: Router,
    limits: &HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let io = TokioIo::new(io);
    let service = ConnService { app, peer, activity: activity.clone(), body_read_timeout: limits.body_read_timeout };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(MAX_BUF_SIZE)
        // `max_buf_size` alone bounds only a head that is still incomplete when the buffer
        // fills; one read into a larger allocation could complete a longer one.
        .max_header_size(MAX_BUF_SIZE);
    // Unpinned (it is `Unpin`) so that its socket can be taken back after a parse error.
    let mut conn = builder.serve_connection(io, service);
    let watchdog = activity.watch(limits);
    tokio::pin!(watchdog);
    let mut stopping = false;
    let ended = loop {
        tokio::select! {
            result = &mut conn => break result,
            why = &mut watchdog => {
                // Dropping the connection closes the socket, and drops a response in flight
                // (only a stalled write closes a busy connection).
                tracing::debug!(reason = why, "closing an HTTP connection");
                return;
            }
            _ = shutdown.wait_for(|s| *s), if !stopping => {
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
        if e.is_parse() {
            // hyper has answered (431, 400) and shut its side down; what the client is still
            // sending would make the close a reset that can destroy that answer.
            drain_and_close(conn.into_parts().io.into_inner().into_tcp()).await;
        }
    }
}

/// Reads and discards what the client still sends, for at most [`REFUSE_TIME`], then closes.
async fn drain_and_close(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(REFUSE_TIME, async {
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// What a connection is doing, shared by its socket, its service and its watchdog.
struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    in_flight: usize,
    /// No request in flight, and bytes of the next one (or of nothing yet, on a new
    /// connection) are awaited under the header timeout.
    reading_head: bool,
    since: Instant,
    /// Since when a write (or flush) to the socket has been pending, without progress since.
    write_pending_since: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                reading_head: true,
                since: Instant::now(),
                write_pending_since: None,
            }),
            changed: Notify::new(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut State) -> bool) {
        let changed = f(&mut self.state.lock());
        if changed {
            // One waiter, the watchdog; a permit is kept if it is not waiting right now.
            self.changed.notify_one();
        }
    }

    /// Bytes arrived on the socket.
    fn read_some(&self) {
        self.update(|s| {
            if s.in_flight == 0 && !s.reading_head {
                s.reading_head = true;
                s.since = Instant::now();
                true
            } else {
                false
            }
        });
    }

    /// A write to the socket could not proceed (`true`), or proceeded after that (`false`).
    fn write_pending(&self, pending: bool) {
        self.update(|s| {
            s.write_pending_since = pending.then(Instant::now);
            // The watchdog needs to arm its timer, not to hear that a write went through: it
            // looks again when the timer fires.
            pending
        });
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.update(|s| {
            s.in_flight += 1;
            true
        });
        InFlight(self.clone())
    }

    /// Completes with the reason when the connection has outlived its state's timeout, or a
    /// write has been pending for longer than `write_timeout`.
    async fn watch(&self, limits: &HttpLimits) -> &'static str {
        loop {
            let due = {
                let s = self.state.lock();
                let state = if s.in_flight > 0 {
                    None
                } else if s.reading_head {
                    Some((s.since + limits.header_read_timeout, "header_read_timeout"))
                } else {
                    Some((s.since + limits.idle_timeout, "idle_timeout"))
                };
                let write = s.write_pending_since.map(|t| (t + limits.write_timeout, "write_timeout"));
                match (state, write) {
                    (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
                    (a, b) => a.or(b),
                }
            };
            match due {
                None => self.changed.notified().await,
                Some((at, why)) if Instant::now() >= at => return why,
                Some((at, _)) => {
                    tokio::select! {
                        _ = self.changed.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

/// A request in flight, until its response body is done with.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.reading_head = false;
                s.since = Instant::now();
            }
            true
        });
    }
}

/// The socket, telling the watchdog when bytes arrive and when a write is stuck.
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
    /// The last write or flush returned `Pending` (mirrored in the activity's state, which is
    /// only locked when this changes).
    write_pending: bool,
}

impl Watched {
    fn note_write<T>(&mut self, polled: &Poll<T>) {
        let pending = polled.is_pending();
        if pending != self.write_pending {
            self.write_pending = pending;
            self.activity.write_pending(pending);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.tcp).poll_flush(cx);
        self.note_write(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.tcp).poll_shutdown(cx);
        self.note_write(&polled);
        polled
    }
}

/// One connection's requests into the router: each counted in flight while it lasts, with its
/// body under the body-read deadline.
#[derive(Clone)]
struct ConnService {
    app: Router,
    /// The client's address, for handlers that count by it (failed logins): each request
    /// carries it as `axum::extract::ConnectInfo`.
    peer: SocketAddr,
    activity: Arc<Activity>,
    body_read_timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Tracked>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.request_started();
        let timeout = self.body_read_timeout;
        let mut req = req.map(|body| Body::new(Deadline { inner: body, timeout, sleep: None, since_grace: 0 }));
        req.extensions_mut().insert(axum::extract::ConnectInfo(self.peer));
        let app = self.app.clone();
        Box::pin(async move {
            use tower::ServiceExt;
            let response = match app.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(response.map(|body| Tracked { inner: body, _in_flight: in_flight }))
        })
    }
}

/// A response body that keeps its request in flight until hyper is done with it.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body under the body-read deadline.
struct Deadline {
    inner: Incoming,
    timeout: Duration,
    /// Set at the first read that has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
    since_grace: u64,
}

/// The error a late body's reader sees (and the 400 it answers names).
#[derive(Debug)]
pub struct BodyTimeout(Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive in time: http.body_read_timeout allows {} per MiB",
            humantime::format_duration(self.0)
        )
    }
}

impl std::error::Error for BodyTimeout {}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.sleep.is_none() {
            this.sleep = Some(Box::pin(tokio::time::sleep(this.timeout)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.since_grace += data.len() as u64;
                    if this.since_grace >= BODY_GRACE_BYTES {
                        this.since_grace = 0;
                        if let Some(sleep) = this.sleep.as_mut() {
                            sleep.as_mut().reset(Instant::now() + this.timeout);
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
