//! Fail-over against in-process stand-ins for nodes: dead ports, nodes that answer `503`,
//! nodes that refuse, and log streams that break off half-way.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use shoal_client::{Client, Error};
use shoal_wire::{ErrorCode, NodeList, Sandbox, SandboxKind, SubmitRequest, Upload};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy)]
enum Mode {
    /// Answers as a healthy node.
    Serve,
    /// Answers every request with this status and code.
    Fail(u16, &'static str),
    /// Healthy, but log streams break after their first chunk.
    BreakLogs,
}

#[derive(Default)]
struct Seen {
    hits: usize,
    /// Idempotency keys of every request that reached the node, whatever it answered.
    arrived_keys: Vec<String>,
    /// Idempotency keys of the submissions it accepted.
    keys: Vec<String>,
    uploads: Vec<(Option<String>, Vec<u8>)>,
}

struct Node {
    mode: Mode,
    seen: Mutex<Seen>,
}

type Shared = Arc<Node>;

fn error(status: u16, code: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("a valid status");
    (status, Json(json!({"error": {"code": code, "message": format!("stand-in says {code}")}}))).into_response()
}

async fn gate(State(node): State<Shared>, req: Request, next: Next) -> Response {
    {
        let mut seen = node.seen.lock().unwrap();
        seen.hits += 1;
        if let Some(key) = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()) {
            seen.arrived_keys.push(key.to_owned());
        }
    }
    match node.mode {
        Mode::Fail(status, code) => error(status, code),
        _ => next.run(req).await,
    }
}

async fn submit(State(node): State<Shared>, headers: HeaderMap) -> Response {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut seen = node.seen.lock().unwrap();
    let replay = seen.keys.contains(&key);
    seen.keys.push(key);
    let body = Json(execution());
    if replay {
        (StatusCode::OK, [("idempotent-replayed", "true")], body).into_response()
    } else {
        (StatusCode::CREATED, body).into_response()
    }
}

async fn logs(State(node): State<Shared>) -> Response {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = match node.mode {
        Mode::BreakLogs => vec![Ok("hello ".into()), Err(std::io::Error::other("the node died"))],
        _ => vec![Ok("hello ".into()), Ok("world\n".into())],
    };
    Body::from_stream(futures::stream::iter(chunks)).into_response()
}

async fn upload(
    State(node): State<Shared>,
    Path((_, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<Value> {
    let len = headers.get("content-length").and_then(|v| v.to_str().ok()).map(str::to_owned);
    node.seen.lock().unwrap().uploads.push((len, body.to_vec()));
    Json(json!({"path": path, "size": body.len()}))
}

/// The execution every stand-in submission answers: `e1`, queued, as a server sends it.
fn execution() -> Value {
    serde_json::from_str(include_str!("fixtures/execution.json")).unwrap()
}

fn sandbox(name: String) -> Sandbox {
    Sandbox {
        name,
        kind: SandboxKind::Shared,
        root: "/srv/sb".into(),
        node: None,
        partitions: Vec::new(),
        created_at: "2026-12-01T10:00:00.000Z".into(),
    }
}

fn command(argv: &[&str]) -> SubmitRequest {
    SubmitRequest { command: Some(argv.iter().map(|a| a.to_string()).collect()), ..SubmitRequest::default() }
}

/// Starts a stand-in node; answers its URL and what it saw.
async fn start(mode: Mode) -> (String, Shared) {
    let node = Arc::new(Node { mode, seen: Mutex::default() });
    let api = Router::new()
        .route("/nodes", get(|| async { Json(json!({"nodes": []})) }))
        .route("/sandboxes/{name}", get(|Path(name): Path<String>| async move { Json(sandbox(name)) }))
        .route("/sandboxes/{name}/files/{*path}", put(upload))
        .route("/executions", post(submit))
        .route("/executions/{id}/logs", get(logs))
        .route("/executions/{id}", get(|| async { error(404, "not_found") }));
    let app = Router::new()
        .nest("/api/v1", api)
        .layer(axum::middleware::from_fn_with_state(node.clone(), gate))
        .with_state(node.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, node)
}

/// A URL nothing listens on: a port bound, then released.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

fn hits(node: &Shared) -> usize {
    node.seen.lock().unwrap().hits
}

#[tokio::test]
async fn a_dead_server_is_skipped_and_the_live_one_remembered() {
    let dead = dead_url();
    let (live, node) = start(Mode::Serve).await;
    let client = Client::new(vec![dead.clone(), live.clone()]).unwrap();
    assert_eq!(client.nodes().await.unwrap(), NodeList { nodes: vec![] });
    assert_eq!(client.current_server(), live);
    client.nodes().await.unwrap();
    assert_eq!(hits(&node), 2);
}

#[tokio::test]
async fn all_dead_is_unreachable_and_names_every_server() {
    let (a, b) = (dead_url(), dead_url());
    let client = Client::new(vec![a.clone(), b.clone()]).unwrap();
    match client.nodes().await {
        Err(Error::Unreachable { tried, last }) => {
            assert_eq!(tried, vec![a.clone(), b.clone()]);
            assert!(last.starts_with(&b), "{last}");
            let shown = Error::Unreachable { tried, last }.to_string();
            assert!(shown.contains(&a) && shown.contains(&b), "{shown}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_that_cannot_serve_now_is_passed_over() {
    for code in ["not_ready", "store_unavailable", "node_unavailable"] {
        let (a, node_a) = start(Mode::Fail(503, code)).await;
        let (b, node_b) = start(Mode::Serve).await;
        let client = Client::new(vec![a, b.clone()]).unwrap();
        client.nodes().await.unwrap();
        client.nodes().await.unwrap();
        assert_eq!((hits(&node_a), hits(&node_b)), (1, 2), "{code}: the second call goes straight to b");
        assert_eq!(client.current_server(), b);
    }
}

#[tokio::test]
async fn a_refusal_or_server_error_is_not_retried_elsewhere() {
    for (status, code) in [(404, "not_found"), (422, "unknown_sandbox"), (500, "internal")] {
        let (a, node_a) = start(Mode::Fail(status, code)).await;
        let (b, node_b) = start(Mode::Serve).await;
        let client = Client::new(vec![a, b]).unwrap();
        match client.nodes().await {
            Err(Error::Api { status: s, code: c, raw_code, message, .. }) => {
                assert_eq!((s, raw_code.as_str()), (status, code));
                assert_eq!(c, ErrorCode::parse(code));
                assert!(c.is_some(), "{code} is a code of the API");
                assert_eq!(message, format!("stand-in says {code}"));
            }
            other => panic!("expected the API error, got {other:?}"),
        }
        assert_eq!((hits(&node_a), hits(&node_b)), (1, 0));
    }
}

#[tokio::test]
async fn a_submission_keeps_its_idempotency_key_across_fail_over() {
    let (a, node_a) = start(Mode::Fail(503, "store_unavailable")).await;
    let (b, node_b) = start(Mode::Serve).await;
    let client = Client::new(vec![a, b]).unwrap();
    let (execution, replayed) = client.submit(&command(&["true"])).await.unwrap();
    assert_eq!(execution.id, "e1");
    assert_eq!(serde_json::to_value(&execution).unwrap(), self::execution(), "read whole, as sent");
    assert!(!replayed);
    // Both nodes were sent the same key: had a's store committed before answering, b would
    // have replayed a's execution instead of creating a second.
    let first = node_b.seen.lock().unwrap().keys.clone();
    assert_eq!(first.len(), 1);
    assert!(!first[0].is_empty());
    assert_eq!(node_a.seen.lock().unwrap().arrived_keys, first);

    // A new submission gets a new key; the same key again is a replay.
    client.submit(&command(&["true"])).await.unwrap();
    let (_, replayed) = client.submit_with_key(&command(&["true"]), &first[0]).await.unwrap();
    assert!(replayed);
    let keys = node_b.seen.lock().unwrap().keys.clone();
    assert_ne!(keys[0], keys[1]);
    assert_eq!(keys[0], keys[2]);
}

#[tokio::test]
async fn a_submission_passes_over_a_dead_server() {
    let (a, node_a) = start(Mode::Serve).await;
    let dead = dead_url();
    let client = Client::new(vec![dead, a]).unwrap();
    client.submit(&command(&["true"])).await.unwrap();
    assert_eq!(node_a.seen.lock().unwrap().keys.len(), 1);
}

#[tokio::test]
async fn a_broken_log_stream_resumes_on_another_server_without_repeating() {
    let (a, node_a) = start(Mode::BreakLogs).await;
    let (b, node_b) = start(Mode::Serve).await;
    let client = Client::new(vec![a, b]).unwrap();
    let mut stream = client.logs("e1", true, None).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), "hello world\n");
    // The stream was reopened once, on the other server.
    assert_eq!((hits(&node_a), hits(&node_b)), (1, 1));
}

#[tokio::test]
async fn uploads_stream_a_file_with_its_length() {
    let (a, node) = start(Mode::Serve).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.csv");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let client = Client::new(vec![dead_url(), a]).unwrap();
    let answer = client.upload("sb", "data/in put.csv", &file).await.unwrap();
    assert_eq!(answer, Upload { path: "data/in put.csv".into(), size: 200_000 });
    let uploads = node.seen.lock().unwrap().uploads.clone();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].0.as_deref(), Some("200000"));
    assert!(uploads[0].1 == content);

    // Progress is told as the bytes go, ending at the file's length.
    let told = Arc::new(Mutex::new(Vec::new()));
    let progress: shoal_client::Progress = {
        let told = told.clone();
        Arc::new(move |sent| told.lock().unwrap().push(sent))
    };
    client.upload_with_progress("sb", "again.csv", &file, Some(progress)).await.unwrap();
    let told = told.lock().unwrap().clone();
    assert_eq!((told.first(), told.last()), (Some(&0), Some(&200_000)), "{told:?}");
    assert!(told.windows(2).all(|w| w[0] <= w[1]), "{told:?}");

    let missing = client.upload("sb", "x", &dir.path().join("nope")).await;
    assert!(matches!(missing, Err(Error::Other(m)) if m.contains("nope")));
}

#[tokio::test]
async fn names_are_percent_encoded_on_the_way() {
    let (a, _) = start(Mode::Serve).await;
    let client = Client::new(vec![a]).unwrap();
    for name in ["a b", "x?y#z", "100%", "é/slash"] {
        assert_eq!(client.sandbox(name).await.unwrap(), sandbox(name.to_owned()));
    }
    assert!(matches!(client.sandbox("..").await, Err(Error::Other(_))));
    assert!(matches!(client.download("sb", "../x").await, Err(Error::Other(_))));
}

#[test]
fn bad_server_urls_are_refused() {
    assert!(matches!(Client::new(vec![]), Err(Error::Other(_))));
    assert!(matches!(Client::new(vec!["ftp://x".into()]), Err(Error::Other(_))));
    let c = Client::new(vec!["127.0.0.1:7700/".into()]).unwrap();
    assert_eq!(c.servers(), ["http://127.0.0.1:7700"]);
}
