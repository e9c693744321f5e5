//! The HTTP server's limits against real sockets: a stalled head, a stalled or trickled body and
//! an idle kept-alive connection are closed on time, connections beyond `http.max_connections`
//! are refused with 503 `too_many_connections`, a followed log outlives the idle timeout, a
//! client that stops reading a response is closed after the write timeout (freeing its slot)
//! while a quiet followed log is not, and an oversized request head is answered 431.

#[macro_use]
mod common;

use common::{Backend, TestNode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Time allowed beyond a timeout for the server to act on it.
const MARGIN: Duration = Duration::from_millis(1500);

async fn node(http: &str) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(Backend::Sqlite, dir.path());
    let http = http.to_owned();
    TestNode::start_edited(dir, url, move |t| {
        t.replace("max_upload_bytes = 1048576\n", &format!("max_upload_bytes = 1048576\n{http}\n"))
    })
    .await
}

async fn connect(n: &TestNode) -> TcpStream {
    let addr = n.url.strip_prefix("http://").unwrap();
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the server closes the connection (EOF or reset), failing if it is still open at
/// `deadline`; returns what arrived.
async fn read_until_closed(s: &mut TcpStream, deadline: Instant, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: the connection is still open; got {:?}", String::from_utf8_lossy(&got)),
            Ok(Ok(0)) => return got,
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Ok(Err(e)) => panic!("{what}: {e}"),
        }
    }
}

/// Asserts that nothing arrives and the connection stays open for `d`.
async fn stays_open(s: &mut TcpStream, d: Duration, what: &str) {
    let mut buf = [0u8; 64];
    if let Ok(r) = tokio::time::timeout(d, s.read(&mut buf)).await {
        panic!("{what}: expected the connection to stay open and quiet, read {r:?}");
    }
}

/// Reads one response with a `content-length` body; returns its head and body.
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("a content-length");
            if got.len() >= end + 4 + len {
                return (head, String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string());
            }
        }
        let k = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("a response in time").unwrap();
        assert!(k > 0, "closed before a whole response: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
}

const GET_LIVE: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_head_is_closed_after_header_read_timeout() {
    let mut n = node("header_read_timeout = \"300ms\"\nidle_timeout = \"30s\"").await;

    // Half a head, then nothing.
    let started = Instant::now();
    let mut s = connect(&n).await;
    s.write_all(b"GET /health/live HTTP/1.1\r\nHost: loca").await.unwrap();
    let got = read_until_closed(&mut s, started + Duration::from_millis(300) + MARGIN, "half a head").await;
    assert!(got.is_empty(), "closed without an answer: {:?}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", started.elapsed());

    // A connection that never sends a byte is held no longer.
    let started = Instant::now();
    let mut s = connect(&n).await;
    read_until_closed(&mut s, started + Duration::from_millis(300) + MARGIN, "a silent connection").await;

    // On a kept-alive connection, the next request's first byte starts the header timeout.
    let mut s = connect(&n).await;
    s.write_all(GET_LIVE).await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started = Instant::now();
    s.write_all(b"GET /hea").await.unwrap();
    read_until_closed(&mut s, started + Duration::from_millis(300) + MARGIN, "a second head stalled").await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_trickled_body_is_answered_and_closed_after_body_read_timeout() {
    let mut n = node("body_read_timeout = \"500ms\"\nidle_timeout = \"30s\"").await;
    let head = format!(
        "POST /api/v1/executions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n",
        common::test_token()
    );

    // A tenth of the body, then nothing.
    let mut s = connect(&n).await;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"{\"command\": [\"true\"").await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut s, started + Duration::from_millis(500) + MARGIN, "a stalled body").await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("body_read_timeout"), "the answer names the setting: {got}");
    assert!(started.elapsed() >= Duration::from_millis(400), "answered too early: {:?}", started.elapsed());

    // A byte every 100 ms never waits 500 ms between reads, and is still cut off on time.
    let mut s = connect(&n).await;
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let deadline = started + Duration::from_millis(500) + MARGIN;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => panic!("a trickled body: still open; got {:?}", String::from_utf8_lossy(&got)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400") && got.contains("body_read_timeout"), "{got}");
    trickle.abort();
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_idle_connection_is_closed_after_idle_timeout() {
    let mut n = node("header_read_timeout = \"300ms\"\nidle_timeout = \"1s\"").await;
    let mut s = connect(&n).await;
    for _ in 0..2 {
        s.write_all(GET_LIVE).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let idle_from = Instant::now();
    // Well past the header timeout: an idle connection is not reading a head.
    stays_open(&mut s, Duration::from_millis(700), "idle past header_read_timeout").await;
    let got = read_until_closed(&mut s, idle_from + Duration::from_secs(1) + MARGIN, "idle past idle_timeout").await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(idle_from.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", idle_from.elapsed());
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_get_503_until_others_close() {
    let mut n = node("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&n).await;
        s.write_all(GET_LIVE).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(s);
    }

    let mut extra = connect(&n).await;
    extra.write_all(GET_LIVE).await.unwrap();
    let got = read_until_closed(&mut extra, Instant::now() + Duration::from_secs(5), "the refused connection").await;
    let got = String::from_utf8_lossy(&got).to_string();
    let (head, body) = got.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not a response: {got:?}"));
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nretry-after: "), "{head}");
    assert!(lower.contains("\r\nconnection: close"), "{head}");
    assert!(lower.contains("\r\ncontent-type: application/json"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("http.max_connections"), "{body}");

    // The connections served are untouched by the refusal.
    held[0].write_all(GET_LIVE).await.unwrap();
    let (head, _) = read_response(&mut held[0]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Once they close, new connections are served again.
    drop(held);
    let node = &n;
    shoal_testkit::wait_until_async(
        "a new connection served after the others closed",
        Duration::from_secs(5),
        move || async move {
            let mut s = connect(node).await;
            s.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
            let got = read_until_closed(&mut s, Instant::now() + Duration::from_secs(2), "a new connection").await;
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200")
        },
    )
    .await;
    n.stop().await;
}

/// Follows an execution's log until its stream ends (with the job), within 20 s.
async fn follow_to_end(n: &TestNode, id: &str) -> String {
    let mut resp = n.http.get(format!("{}/api/v1/executions/{id}/logs?follow=true", n.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // An error here would be the stream cut short; `None` is its proper end with the job's.
    while let Some(chunk) = tokio::time::timeout_at(deadline, resp.chunk()).await.expect("stream in time").unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_log_streams_well_past_idle_timeout() {
    let mut n = node("header_read_timeout = \"300ms\"\nidle_timeout = \"300ms\"").await;
    let id = n.submit(json!({"command": ["sh", "-c", "echo one; sleep 1; echo two; sleep 1; echo three"]})).await;
    let started = Instant::now();
    let seen = follow_to_end(&n, &id).await;
    assert_eq!(seen, "one\ntwo\nthree\n");
    assert!(started.elapsed() >= Duration::from_millis(1800), "{:?}", started.elapsed());
    assert_eq!(n.execution(&id).await["state"], "succeeded");
    n.stop().await;
}

/// Sends one `Connection: close` request on a new connection and returns the whole answer.
async fn one_request(n: &TestNode, head: &str) -> String {
    let mut s = connect(n).await;
    s.write_all(head.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s, Instant::now() + Duration::from_secs(3), head).await;
    String::from_utf8_lossy(&got).to_string()
}

const GET_LIVE_CLOSE: &str = "GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_write_timeout_and_frees_its_slot() {
    let mut n = node("write_timeout = \"500ms\"\nmax_connections = 1").await;
    const SIZE: usize = 20 << 20;
    let root = n.sandbox("big", &[]).await;
    std::fs::write(root.join("big.bin"), vec![b'x'; SIZE]).unwrap();

    // The harness's client keeps its connection alive in its pool, in the only slot: drop it.
    n.http = common::http();
    let addr = n.url.strip_prefix("http://").unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut stalled, first) = loop {
        // A small receive buffer, so that the server's writes stall well before the file is sent.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        let get = format!(
            "GET /api/v1/sandboxes/big/files/big.bin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
            common::test_token()
        );
        s.write_all(get.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let k = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("an answer in time").unwrap();
        if buf[..k].starts_with(b"HTTP/1.1 200") {
            break (s, buf[..k].to_vec());
        }
        // 503 while the pooled connection's close is not yet seen by the server.
        assert!(Instant::now() < deadline, "the big file was never served: {:?}", String::from_utf8_lossy(&buf[..k]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // From here on the client reads nothing.
    let sent = Instant::now();

    // It holds the only connection slot...
    let got = one_request(&n, GET_LIVE_CLOSE).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    // ...until its stalled write times out.
    let node = &n;
    shoal_testkit::wait_until_async(
        "a new connection served once the stalled one is closed",
        Duration::from_millis(500) + MARGIN + Duration::from_secs(2),
        move || async move { one_request(node, GET_LIVE_CLOSE).await.starts_with("HTTP/1.1 200") },
    )
    .await;
    assert!(sent.elapsed() >= Duration::from_millis(450), "freed too early: {:?}", sent.elapsed());

    // The stalled client, reading at last, finds its response cut short and the connection closed.
    let rest =
        read_until_closed(&mut stalled, Instant::now() + Duration::from_secs(10), "the stalled connection").await;
    let got = first.len() + rest.len();
    assert!(got < SIZE, "the whole file arrived ({got} bytes): the connection was not cut");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_followed_log_is_not_cut_by_write_timeout() {
    let mut n = node("write_timeout = \"500ms\"\nidle_timeout = \"300ms\"\nheader_read_timeout = \"300ms\"").await;
    let id = n.submit(json!({"command": ["sh", "-c", "sleep 3; echo done"]})).await;
    let started = Instant::now();
    let seen = follow_to_end(&n, &id).await;
    assert_eq!(seen, "done\n");
    assert!(started.elapsed() >= Duration::from_millis(2500), "{:?}", started.elapsed());
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_buffer_limit_is_answered_431_and_closed() {
    let mut n = node("").await;
    let head = |padding: usize| {
        format!("GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n", "a".repeat(padding))
    };

    // Just over the limit, and far over it (the server stops reading at the limit).
    for padding in [80 * 1024, 1024 * 1024] {
        let mut s = connect(&n).await;
        s.write_all(head(padding).as_bytes()).await.unwrap();
        let got = read_until_closed(
            &mut s,
            Instant::now() + Duration::from_secs(5),
            &format!("a head with {padding} bytes of padding"),
        )
        .await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 431"), "{padding}: {got}");
    }

    // A large head within it is served, on a connection kept alive.
    let mut s = connect(&n).await;
    s.write_all(head(16 * 1024).as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    n.stop().await;
}
