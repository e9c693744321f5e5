//! Every status and error code the OpenAPI document lists for an operation can occur: this
//! test makes each one happen on a real node (PostgreSQL behind a breakable proxy, so that the
//! store can be taken away), records what every answer was, and then holds the document to
//! it both ways:
//! - every (operation, status, code) the document lists was seen;
//! - every answer seen is one the document lists for its operation.
//!
//! Most cases are written out, including a second node that holds a local sandbox (requests
//! it forwarded itself: 409 `sandbox_not_here`; with it stopped: 503 `node_unavailable`);
//! six kinds run over every operation of the document: a forged forwarding header (401
//! `invalid_signature`), an `X-Shoal-Position` that is not a WAL position (400
//! `invalid_position`), a foreign `Host` or `Origin` (403 `foreign_host`, `foreign_origin`;
//! not on the health checks), a body that is not JSON, too large, of another type, or cut short
//! (400, 413, 415, 400 `bad_request`), and the store cut off (503 `store_unavailable`).

mod common;

use common::proxy::Proxy;
use common::{copy_examples, TestNode};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::time::Duration;

/// The status an error code always comes with.
fn status_of(code: &str) -> u16 {
    shoal_wire::ErrorCode::parse(code).unwrap_or_else(|| panic!("no code `{code}`")).status()
}

/// `base` with the fields of `extra` added or replaced.
fn merged(base: &Value, extra: Value) -> Value {
    let mut v = base.clone();
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

/// What a request was sent with.
enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

struct Probe {
    url: String,
    http: reqwest::Client,
    seen: BTreeSet<(String, u16, String)>,
    /// The headers of the last answer.
    headers: reqwest::header::HeaderMap,
}

impl Probe {
    async fn hit(
        &mut self,
        op: &str,
        method: Method,
        path: &str,
        body: Body,
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}/api/v1{path}", self.url));
        // The harness's admin token, unless the request says which (an empty one: none).
        if !headers.iter().any(|(k, _)| *k == "authorization") {
            req = req.bearer_auth(common::test_token());
        }
        for (k, v) in headers.iter().filter(|(_, v)| !v.is_empty()) {
            req = req.header(*k, v);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(ct, bytes) => req.header("content-type", ct).body(bytes),
        };
        let resp = req.send().await.unwrap_or_else(|e| panic!("{op}: {e}"));
        let status = resp.status().as_u16();
        self.headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
        self.seen.insert((op.to_owned(), status, code));
        (status, v)
    }

    /// A request announcing a body of `length` bytes, more than the node takes, of which none
    /// is sent: it must be refused with 413 from its head alone. Over a raw socket, because a
    /// client still writing a large body when the early answer comes and the node closes may
    /// see only the reset and never the answer.
    async fn too_large(&mut self, op: &str, method: Method, path: &str, length: usize, headers: &[(&str, String)]) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.url.trim_start_matches("http://").to_owned();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut head = format!(
            "{method} /api/v1{path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-length: {length}\r\n",
            common::test_token()
        );
        let ct = if op == "putSandboxFile" { "application/octet-stream" } else { "application/json" };
        head.push_str(&format!("content-type: {ct}\r\n"));
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let code = text.split("\"code\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_owned();
        assert_eq!((status, code.as_str()), (413, "payload_too_large"), "{op}: {method} {path} answered {text}");
        self.seen.insert((op.to_owned(), status, code));
    }

    /// Sends a request and insists on its status (and code, for an error).
    async fn expect(&mut self, op: &str, method: Method, path: &str, body: Body, want: (u16, &str)) -> Value {
        self.expect_with(op, method, path, body, &[], want).await
    }

    async fn expect_with(
        &mut self,
        op: &str,
        method: Method,
        path: &str,
        body: Body,
        headers: &[(&str, String)],
        want: (u16, &str),
    ) -> Value {
        let (status, v) = self.hit(op, method.clone(), path, body, headers).await;
        let code = v["error"]["code"].as_str().unwrap_or("");
        assert_eq!((status, code), want, "{op}: {method} {path} answered {v}");
        v
    }

    /// What a schedule and a listener answer alike: `kind` as the operations name it
    /// (`Schedule`, `Listener`), `name` one that exists, `history` its firings or events, and
    /// `patch` a change it takes.
    async fn definition_reads(&mut self, kind: &str, name: &str, history: &str, patch: Value) {
        let collection = format!("/{}s", kind.to_lowercase());
        let (named, nope) = (format!("{collection}/{name}"), format!("{collection}/nope"));
        let unknown = format!("unknown_{}", kind.to_lowercase());
        let unknown = (404, unknown.as_str());
        let (get, patch_op, list) = (format!("get{kind}"), format!("patch{kind}"), format!("list{kind}{history}"));
        self.expect(&get, Method::GET, &named, Body::None, (200, "")).await;
        self.expect(&get, Method::GET, &nope, Body::None, unknown).await;
        self.expect(&patch_op, Method::PATCH, &named, Body::Json(patch.clone()), (200, "")).await;
        self.expect(&patch_op, Method::PATCH, &nope, Body::Json(patch), unknown).await;
        let history = history.to_lowercase();
        self.expect(&list, Method::GET, &format!("{named}/{history}"), Body::None, (200, "")).await;
        let bad_limit = format!("{named}/{history}?limit=0");
        self.expect(&list, Method::GET, &bad_limit, Body::None, (400, "invalid_query")).await;
        self.expect(&list, Method::GET, &format!("{nope}/{history}"), Body::None, unknown).await;
    }
}

/// The forwarding headers node `from` would send, signed with the cluster secret.
fn forwarded_by(secret: &[u8], from: &str, method: &Method, path: &str) -> Vec<(&'static str, String)> {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let nonce = format!("{t:016x}{:016x}", rand_u32());
    let principal = r#"{"kind":"token","id":"t","name":"ops","role":"admin","sandboxes":["*"]}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{method}\n/api/v1{path}\n{t}\n{nonce}\n{from}\n{principal}").as_bytes());
    vec![
        ("x-shoal-forwarded-by", from.to_owned()),
        ("x-shoal-timestamp", t.to_string()),
        ("x-shoal-nonce", nonce),
        ("x-shoal-signature", hex::encode(mac.finalize().into_bytes())),
        ("x-shoal-principal", principal.to_owned()),
    ]
}

fn rand_u32() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Sends a request whose body ends before its `Content-Length` (the client closes its side),
/// over a raw socket; answers the status and the error code.
async fn interrupted(url: &str, method: &Method, path: &str, content_type: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} /api/v1{path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: {content_type}\r\ncontent-length: 1000\r\n\r\n{{\"a\"",
        common::test_token()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let code = body.split("\"code\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_owned();
    (status, code)
}

/// Each operation of the document: (id, method, path template, takes a JSON body).
fn operations(doc: &Value) -> Vec<(String, Method, String, bool)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(id) = op["operationId"].as_str() else { continue };
            let json_body = op["requestBody"]["content"].get("application/json").is_some();
            out.push((id.to_owned(), method.to_uppercase().parse().unwrap(), path.clone(), json_body));
        }
    }
    out
}

/// Every (operation, status, code) the document lists; a success status has code "".
fn listed(doc: &Value) -> BTreeSet<(String, u16, String)> {
    let mut out = BTreeSet::new();
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            let Some(id) = op["operationId"].as_str() else { continue };
            for (status, r) in op["responses"].as_object().unwrap() {
                let status: u16 = status.parse().unwrap();
                let schema = &r["content"]["application/json"]["schema"];
                match schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"].as_array() {
                    Some(codes) => {
                        for c in codes {
                            out.insert((id.to_owned(), status, c.as_str().unwrap().to_owned()));
                        }
                    }
                    None => {
                        out.insert((id.to_owned(), status, String::new()));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_and_code_the_document_lists_happens() {
    let pg = shoal_testkit::postgres();
    let db_url = pg.fresh_database();
    let proxy = Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let via_proxy = db_url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let n = TestNode::start_on(tempfile::tempdir().unwrap(), via_proxy, "").await;
    n.sandbox("examples", &[]).await;
    // A second node holding a local sandbox, a schedule and a webhook there; it is stopped
    // later, so that requests only it can serve find it down.
    let mut n2 = TestNode::start_named(tempfile::tempdir().unwrap(), db_url.clone(), "n2").await;
    let remote_root = n2.dir.path().join("remote");
    copy_examples(&remote_root);
    let remote = json!({"name": "remote", "kind": "local", "root": remote_root.display().to_string()});
    assert_eq!(n2.post("/api/v1/sandboxes", remote).await.0, 201);
    let rsched = json!({"name": "rsched", "sandbox": "remote", "job": "jobs/greet.toml", "cron": "0 3 * * *", "params": {"name": "n"}});
    assert_eq!(n2.post("/api/v1/schedules", rsched).await.0, 201);
    let rhook = json!({"name": "rhook", "kind": "webhook", "sandbox": "remote", "job": "jobs/greet.toml", "params": {"name": "n"}, "secret": "0123456789abcdef0123"});
    assert_eq!(n2.post("/api/v1/listeners", rhook).await.0, 201);
    let cluster_secret = n.store().cluster_secret().await.unwrap();
    let mut p =
        Probe { url: n.url.clone(), http: reqwest::Client::new(), seen: BTreeSet::new(), headers: Default::default() };
    let (_, doc) = n.get("/api/v1/openapi.json").await;
    use Method as M;
    let j = Body::Json;

    // Nodes.
    p.expect("listNodes", M::GET, "/nodes", Body::None, (200, "")).await;
    p.expect("getNode", M::GET, "/nodes/n1", Body::None, (200, "")).await;
    p.expect("getNode", M::GET, "/nodes/n9", Body::None, (404, "not_found")).await;
    p.expect("suspendNode", M::POST, "/nodes/n1/suspend", Body::None, (200, "")).await;
    p.expect("resumeNode", M::POST, "/nodes/n1/resume", Body::None, (200, "")).await;
    p.expect("drainNode", M::POST, "/nodes/n1/drain", Body::None, (200, "")).await;
    p.expect("resumeNode", M::POST, "/nodes/n1/resume", Body::None, (200, "")).await;
    for op in ["drain", "suspend", "resume"] {
        let id = format!("{op}Node");
        p.expect(&id, M::POST, &format!("/nodes/n9/{op}"), Body::None, (404, "not_found")).await;
    }

    // Sandboxes.
    let root = n.dir.path().join("sandboxes").join("spare");
    let spare = json!({"name": "spare", "kind": "shared", "root": root.display().to_string()});
    p.expect("listSandboxes", M::GET, "/sandboxes", Body::None, (200, "")).await;
    p.expect("createSandbox", M::POST, "/sandboxes", j(spare.clone()), (201, "")).await;
    p.expect("createSandbox", M::POST, "/sandboxes", j(spare), (409, "already_exists")).await;
    p.expect(
        "createSandbox",
        M::POST,
        "/sandboxes",
        j(json!({"name": "BAD", "kind": "shared", "root": "/x"})),
        (422, "invalid_request"),
    )
    .await;
    let everything = j(json!({"name": "everything", "kind": "shared", "root": "/"}));
    p.expect("createSandbox", M::POST, "/sandboxes", everything, (422, "root_not_allowed")).await;
    let parts = json!({"name": "parts", "kind": "partitioned", "partitions": [{"name": "a", "node": "n1", "root": "/tmp/a"}, {"name": "a", "node": "n1", "root": "/tmp/b"}]});
    p.expect("createSandbox", M::POST, "/sandboxes", j(parts), (422, "invalid_partitions")).await;
    let ghost =
        json!({"name": "ghost", "kind": "partitioned", "partitions": [{"name": "a", "node": "n9", "root": "/tmp/a"}]});
    p.expect("createSandbox", M::POST, "/sandboxes", j(ghost), (422, "unknown_node")).await;
    p.expect("getSandbox", M::GET, "/sandboxes/spare", Body::None, (200, "")).await;
    p.expect("getSandbox", M::GET, "/sandboxes/nope", Body::None, (404, "not_found")).await;
    p.expect("listSandboxJobs", M::GET, "/sandboxes/examples/jobs", Body::None, (200, "")).await;
    p.expect("listSandboxJobs", M::GET, "/sandboxes/nope/jobs", Body::None, (404, "not_found")).await;

    // Files.
    p.expect("listSandboxRoot", M::GET, "/sandboxes/examples/files", Body::None, (200, "")).await;
    p.expect("listSandboxRootSlash", M::GET, "/sandboxes/examples/files/", Body::None, (200, "")).await;
    p.expect("listSandboxRoot", M::GET, "/sandboxes/nope/files", Body::None, (404, "not_found")).await;
    p.expect("listSandboxRootSlash", M::GET, "/sandboxes/nope/files/", Body::None, (404, "not_found")).await;
    p.expect("getSandboxFile", M::GET, "/sandboxes/examples/files/jobs/greet.toml", Body::None, (200, "")).await;
    p.expect("getSandboxFile", M::GET, "/sandboxes/examples/files/jobs", Body::None, (200, "")).await;
    p.expect("getSandboxFile", M::GET, "/sandboxes/examples/files/missing", Body::None, (404, "not_found")).await;
    p.expect("getSandboxFile", M::GET, "/sandboxes/examples/files/a%00b", Body::None, (400, "invalid_path")).await;
    let bytes = || Body::Raw("application/octet-stream", b"hello\n".to_vec());
    p.expect("putSandboxFile", M::PUT, "/sandboxes/examples/files/data/x.txt", bytes(), (201, "")).await;
    p.expect("putSandboxFile", M::PUT, "/sandboxes/examples/files/data/x.txt", bytes(), (200, "")).await;
    p.expect("putSandboxFile", M::PUT, "/sandboxes/nope/files/x.txt", bytes(), (404, "not_found")).await;
    // A folder is not a file to replace, nor is a path through a file a folder.
    p.expect("putSandboxFile", M::PUT, "/sandboxes/examples/files/data", bytes(), (409, "conflict")).await;
    p.expect("putSandboxFile", M::PUT, "/sandboxes/examples/files/a%00b", bytes(), (400, "invalid_path")).await;
    p.too_large("putSandboxFile", M::PUT, "/sandboxes/examples/files/big.bin", 2 * 1024 * 1024, &[]).await;
    p.expect("deleteSandboxFile", M::DELETE, "/sandboxes/examples/files/data/x.txt", Body::None, (204, "")).await;
    p.expect("deleteSandboxFile", M::DELETE, "/sandboxes/examples/files/data/x.txt", Body::None, (404, "not_found"))
        .await;
    p.expect("deleteSandboxFile", M::DELETE, "/sandboxes/examples/files/a%00b", Body::None, (400, "invalid_path"))
        .await;
    p.expect("deleteSandboxFile", M::DELETE, "/sandboxes/examples/files/jobs", Body::None, (409, "conflict")).await;
    let part_root = n.dir.path().join("parts-a");
    let parts = json!({"name": "parts", "kind": "partitioned", "partitions": [{"name": "a", "node": "n1", "root": part_root.display().to_string()}]});
    p.expect("createSandbox", M::POST, "/sandboxes", j(parts), (201, "")).await;
    for (op, method, path) in [
        ("listSandboxRoot", M::GET, "/sandboxes/parts/files"),
        ("listSandboxRootSlash", M::GET, "/sandboxes/parts/files/"),
        ("getSandboxFile", M::GET, "/sandboxes/parts/files/x"),
        ("putSandboxFile", M::PUT, "/sandboxes/parts/files/x"),
        ("deleteSandboxFile", M::DELETE, "/sandboxes/parts/files/x"),
    ] {
        p.expect(op, method, path, Body::None, (400, "invalid_query")).await;
    }
    let linky = n.sandbox("linky", &[]).await;
    std::fs::remove_dir_all(linky.join("jobs")).unwrap();
    std::os::unix::fs::symlink("/etc", linky.join("jobs")).unwrap();
    p.expect("listSandboxJobs", M::GET, "/sandboxes/linky/jobs", Body::None, (400, "invalid_path")).await;

    // Executions.
    let done = p.expect("submitExecution", M::POST, "/executions", j(json!({"command": ["true"]})), (201, "")).await;
    let done = done["id"].as_str().unwrap().to_owned();
    n.wait_final(&done, Duration::from_secs(30)).await;
    let key = [("idempotency-key", "k1".to_owned())];
    let once = json!({"command": ["echo", "once"]});
    p.expect_with("submitExecution", M::POST, "/executions", j(once.clone()), &key, (201, "")).await;
    p.expect_with("submitExecution", M::POST, "/executions", j(once), &key, (200, "")).await;
    let other = j(json!({"command": ["echo", "other"]}));
    p.expect_with("submitExecution", M::POST, "/executions", other, &key, (422, "idempotency_key_reused")).await;
    let cases = [
        (json!({"sandbox": "examples", "job": "jobs/greet.toml"}), "missing_parameter"),
        (
            json!({"sandbox": "examples", "job": "jobs/greet.toml", "params": {"name": "a", "zzz": "b"}}),
            "unknown_parameter",
        ),
        (json!({"sandbox": "nope", "job": "jobs/greet.toml"}), "unknown_sandbox"),
        (json!({"sandbox": "examples", "job": "jobs/none.toml"}), "unknown_job"),
        (json!({"sandbox": "examples", "job": "../x.toml"}), "invalid_path"),
        (json!({"command": ["true"], "allocation": {"kind": "nodes", "nodes": ["n9"]}}), "unknown_node"),
        (json!({"command": ["true"], "allocation": {"kind": "tags", "tags": ["gpu"]}}), "unknown_tag"),
        (json!({"command": ["true"], "env": {"A": "x\u{0}y"}}), "invalid_request"),
        (json!({"sandbox": "examples", "job": "jobs/greet.toml", "params": {"name": {"no": 1}}}), "invalid_parameter"),
    ];
    for (body, code) in cases {
        p.expect("submitExecution", M::POST, "/executions", j(body), (status_of(code), code)).await;
    }
    n.sandbox("broken", &[("jobs/bad.toml", "command = 3\n")]).await;
    let bad = j(json!({"sandbox": "broken", "job": "jobs/bad.toml"}));
    p.expect("submitExecution", M::POST, "/executions", bad, (422, "invalid_job")).await;
    let needs = "command = [\"true\"]\n[env]\nX = \"{secret.NOBODY_SET}\"\n";
    n.sandbox("needy", &[("jobs/needs.toml", needs)]).await;
    let needs = j(json!({"sandbox": "needy", "job": "jobs/needs.toml"}));
    p.expect("submitExecution", M::POST, "/executions", needs, (422, "unknown_secret")).await;

    // Secrets. n1 and n2 made keys of their own on this empty store: once n1 sealed one, n2's
    // key does not match (n2 is stopped below and never started again).
    let value = || j(json!({"value": "a value"}));
    p.expect("listSecrets", M::GET, "/secrets", Body::None, (200, "")).await;
    p.expect("listSecrets", M::GET, "/secrets?bogus=1", Body::None, (400, "invalid_query")).await;
    p.expect("putSecret", M::PUT, "/secrets/S1", value(), (201, "")).await;
    p.expect("putSecret", M::PUT, "/secrets/S1", value(), (200, "")).await;
    p.expect("putSecret", M::PUT, "/secrets/S1?sandbox=examples", value(), (201, "")).await;
    p.expect("putSecret", M::PUT, "/secrets/S1?bogus=1", value(), (400, "invalid_query")).await;
    p.expect("putSecret", M::PUT, "/secrets/S1?sandbox=nope", value(), (422, "unknown_sandbox")).await;
    p.expect("putSecret", M::PUT, "/secrets/S1", j(json!({"value": "abc"})), (422, "invalid_request")).await;
    p.expect("rewrapSecrets", M::POST, "/secrets/_rewrap", Body::None, (200, "")).await;
    p.expect("deleteSecret", M::DELETE, "/secrets/S1?sandbox=examples", Body::None, (204, "")).await;
    p.expect("deleteSecret", M::DELETE, "/secrets/S1?sandbox=examples", Body::None, (404, "not_found")).await;
    p.expect("deleteSecret", M::DELETE, "/secrets/S1?bogus=1", Body::None, (400, "invalid_query")).await;
    let n1_url = std::mem::replace(&mut p.url, n2.url.clone());
    p.expect("putSecret", M::PUT, "/secrets/S2", value(), (409, "secrets_key_mismatch")).await;
    p.expect("rewrapSecrets", M::POST, "/secrets/_rewrap", Body::None, (409, "secrets_key_mismatch")).await;
    p.url = n1_url;
    p.expect("listExecutions", M::GET, "/executions", Body::None, (200, "")).await;
    p.expect("listExecutions", M::GET, "/executions?state=bogus", Body::None, (400, "invalid_query")).await;
    p.expect("getExecution", M::GET, &format!("/executions/{done}"), Body::None, (200, "")).await;
    p.expect("getExecution", M::GET, "/executions/nope", Body::None, (404, "not_found")).await;
    p.expect("getExecutionLogs", M::GET, &format!("/executions/{done}/logs"), Body::None, (200, "")).await;
    let bad_stream = format!("/executions/{done}/logs?stream=sideways");
    p.expect("getExecutionLogs", M::GET, &bad_stream, Body::None, (400, "invalid_query")).await;
    p.expect("getExecutionLogs", M::GET, "/executions/nope/logs", Body::None, (404, "not_found")).await;
    p.expect(
        "cancelExecution",
        M::POST,
        &format!("/executions/{done}/cancel"),
        Body::None,
        (409, "execution_finished"),
    )
    .await;
    p.expect("cancelExecution", M::POST, "/executions/nope/cancel", Body::None, (404, "not_found")).await;
    let waiting = json!({"command": ["true"], "allocation": {"kind": "nodes", "nodes": ["n9"]}, "allow_pending": true});
    let waiting = p.expect("submitExecution", M::POST, "/executions", j(waiting), (201, "")).await;
    let waiting = waiting["id"].as_str().unwrap().to_owned();
    p.expect("cancelExecution", M::POST, &format!("/executions/{waiting}/cancel"), Body::None, (200, "")).await;
    let running = n.submit(json!({"command": ["sleep", "30"]})).await;
    n.wait_state(&running, "running", Duration::from_secs(20)).await;
    p.expect("cancelExecution", M::POST, &format!("/executions/{running}/cancel"), Body::None, (202, "")).await;

    // Schedules.
    let nightly = json!({"name": "nightly", "sandbox": "examples", "job": "jobs/greet.toml", "cron": "0 3 * * *", "params": {"name": "n"}});
    p.expect("listSchedules", M::GET, "/schedules", Body::None, (200, "")).await;
    p.expect("createSchedule", M::POST, "/schedules", j(nightly.clone()), (201, "")).await;
    p.expect("createSchedule", M::POST, "/schedules", j(nightly), (409, "already_exists")).await;
    let other = json!({"name": "other", "sandbox": "examples", "job": "jobs/greet.toml", "cron": "0 3 * * *", "params": {"name": "n"}});
    let with = |extra: Value| merged(&other, extra);
    let schedule_cases = [
        (json!({"cron": "61 * * * *"}), "invalid_cron"),
        (json!({"timezone": "Mars/Olympus"}), "unknown_time_zone"),
        (json!({"name": "bad name"}), "invalid_request"),
        (json!({"sandbox": "nope"}), "unknown_sandbox"),
        (json!({"job": "jobs/none.toml"}), "unknown_job"),
        (json!({"job": "../x.toml"}), "invalid_path"),
        (json!({"params": {}}), "missing_parameter"),
        (json!({"params": {"name": "a", "zzz": "b"}}), "unknown_parameter"),
        (json!({"params": {"name": {"no": 1}}}), "invalid_parameter"),
        (json!({"sandbox": "broken", "job": "jobs/bad.toml"}), "invalid_job"),
    ];
    for (extra, code) in &schedule_cases {
        let want = (status_of(code), *code);
        p.expect("createSchedule", M::POST, "/schedules", j(with(extra.clone())), want).await;
        // A name that is not the schedule's is a rename, refused whatever the name.
        let patched = if extra.get("name").is_some() { (409, "conflict") } else { want };
        p.expect("patchSchedule", M::PATCH, "/schedules/nightly", j(extra.clone()), patched).await;
    }
    let rename = j(json!({"name": "renamed"}));
    p.expect("patchSchedule", M::PATCH, "/schedules/nightly", rename, (409, "conflict")).await;
    let late = j(json!({"misfire_threshold": "soon"}));
    p.expect("patchSchedule", M::PATCH, "/schedules/nightly", late, (422, "invalid_request")).await;
    // `misfire_max` without `misfire`, on a schedule whose policy is not `all`.
    p.expect("patchSchedule", M::PATCH, "/schedules/nightly", j(json!({"misfire_max": 5})), (409, "conflict")).await;
    p.definition_reads("Schedule", "nightly", "Firings", json!({"enabled": false})).await;
    p.expect("previewSchedule", M::GET, "/schedules/nightly/preview", Body::None, (200, "")).await;
    p.expect("previewSchedule", M::GET, "/schedules/nightly/preview?count=0", Body::None, (400, "invalid_query")).await;
    p.expect("previewSchedule", M::GET, "/schedules/nope/preview", Body::None, (404, "unknown_schedule")).await;
    p.expect("previewCron", M::POST, "/schedules/preview", j(json!({"cron": "@daily"})), (200, "")).await;
    p.expect(
        "previewCron",
        M::POST,
        "/schedules/preview",
        j(json!({"cron": "@daily", "count": 0})),
        (400, "invalid_query"),
    )
    .await;
    p.expect("previewCron", M::POST, "/schedules/preview", j(json!({"cron": "61 * * * *"})), (422, "invalid_cron"))
        .await;
    p.expect(
        "previewCron",
        M::POST,
        "/schedules/preview",
        j(json!({"cron": "@daily", "timezone": "Mars/Olympus"})),
        (422, "unknown_time_zone"),
    )
    .await;
    p.expect("deleteSchedule", M::DELETE, "/schedules/nightly", Body::None, (204, "")).await;
    p.expect("deleteSchedule", M::DELETE, "/schedules/nightly", Body::None, (404, "unknown_schedule")).await;

    // Listeners and webhooks.
    let secret = "0123456789abcdef0123";
    let hook = json!({"name": "deploy", "kind": "webhook", "sandbox": "examples", "job": "jobs/greet.toml", "params": {"name": "{event.hook}"}, "secret": secret});
    p.expect("listListeners", M::GET, "/listeners", Body::None, (200, "")).await;
    p.expect("createListener", M::POST, "/listeners", j(hook.clone()), (201, "")).await;
    p.expect("createListener", M::POST, "/listeners", j(hook), (409, "already_exists")).await;
    let other_hook = json!({"name": "other", "kind": "webhook", "sandbox": "examples", "job": "jobs/greet.toml", "params": {"name": "n"}});
    let listener = |extra: Value| merged(&other_hook, extra);
    let listener_cases = [
        (json!({"kind": "file", "on_file": {"sandbox": "examples", "pattern": "a[b"}}), "invalid_pattern"),
        (json!({"name": "bad name"}), "invalid_request"),
        (json!({"sandbox": "nope"}), "unknown_sandbox"),
        (json!({"job": "jobs/none.toml"}), "unknown_job"),
        (json!({"job": "../x.toml"}), "invalid_path"),
        (json!({"params": {}}), "missing_parameter"),
        (json!({"params": {"name": "a", "zzz": "b"}}), "unknown_parameter"),
        (json!({"params": {"name": "{event.nope}"}}), "invalid_parameter"),
        (json!({"sandbox": "broken", "job": "jobs/bad.toml"}), "invalid_job"),
    ];
    for (extra, code) in &listener_cases {
        let want = (status_of(code), *code);
        p.expect("createListener", M::POST, "/listeners", j(listener(extra.clone())), want).await;
        let mut patch = extra.clone();
        patch.as_object_mut().unwrap().remove("kind");
        patch.as_object_mut().unwrap().remove("on_file");
        if patch.as_object().unwrap().is_empty() {
            continue;
        }
        let patched = if patch.get("name").is_some() { (409, "conflict") } else { want };
        p.expect("patchListener", M::PATCH, "/listeners/deploy", j(patch), patched).await;
    }
    // A webhook listener takes no other kind's source, nor another kind.
    let on_job = j(json!({"on_job": {"sandbox": "examples", "job": "jobs/report.toml"}}));
    p.expect("patchListener", M::PATCH, "/listeners/deploy", on_job, (409, "conflict")).await;
    p.expect("patchListener", M::PATCH, "/listeners/deploy", j(json!({"kind": "file"})), (409, "conflict")).await;
    let file = json!({"name": "files", "kind": "file", "sandbox": "examples", "job": "jobs/greet.toml", "params": {"name": "n"}, "on_file": {"sandbox": "examples", "pattern": "in/*.csv"}});
    p.expect("createListener", M::POST, "/listeners", j(file), (201, "")).await;
    let bad_pattern = j(json!({"on_file": {"sandbox": "examples", "pattern": "a[b"}}));
    p.expect("patchListener", M::PATCH, "/listeners/files", bad_pattern, (422, "invalid_pattern")).await;
    let bad_settle = j(json!({"on_file": {"sandbox": "examples", "pattern": "in/*.csv", "settle": "soon"}}));
    p.expect("patchListener", M::PATCH, "/listeners/files", bad_settle, (422, "invalid_request")).await;
    p.definition_reads("Listener", "deploy", "Events", json!({"enabled": true})).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let delivery = br#"{"user": "ann"}"#.to_vec();
    let signed = |hook: &str, body: &[u8], id: &str| {
        vec![
            ("x-shoal-hook-signature", shoal_api::listeners::sign_hook(secret.as_bytes(), hook, now, Some(id), body)),
            ("x-shoal-hook-delivery", id.to_owned()),
        ]
    };
    let raw = |b: &[u8]| Body::Raw("application/json", b.to_vec());
    let h = signed("deploy", &delivery, "d-1");
    p.expect_with("deliverHook", M::POST, "/hooks/deploy", raw(&delivery), &h, (201, "")).await;
    p.expect_with("deliverHook", M::POST, "/hooks/deploy", raw(&delivery), &h, (200, "")).await;
    p.expect("deliverHook", M::POST, "/hooks/deploy", raw(&delivery), (401, "invalid_signature")).await;
    p.expect_with("deliverHook", M::POST, "/hooks/nope", raw(&delivery), &h, (404, "unknown_hook")).await;
    let not_json = b"not json".to_vec();
    let h = signed("deploy", &not_json, "d-2");
    p.expect_with("deliverHook", M::POST, "/hooks/deploy", raw(&not_json), &h, (400, "invalid_json")).await;
    let big = vec![b' '; 128 * 1024];
    let h = signed("deploy", &big, "d-3");
    p.too_large("deliverHook", M::POST, "/hooks/deploy", big.len(), &h).await;
    let bad_id = vec![("x-shoal-hook-delivery", "x".repeat(300))];
    p.expect_with("deliverHook", M::POST, "/hooks/deploy", raw(&delivery), &bad_id, (400, "bad_request")).await;
    // A hook whose job changed after it was defined.
    let hooked = n.sandbox("hooked", &[("jobs/h.toml", "command = [\"true\"]\n[params.name]\n")]).await;
    let def = json!({"name": "late", "kind": "webhook", "sandbox": "hooked", "job": "jobs/h.toml", "params": {"name": "{event.payload.user}"}, "secret": secret});
    p.expect("createListener", M::POST, "/listeners", j(def), (201, "")).await;
    let late = |body: &[u8], id: &str| signed("late", body, id);
    let no_user = br#"{"who": "ann"}"#.to_vec();
    let h = late(&no_user, "l-1");
    p.expect_with("deliverHook", M::POST, "/hooks/late", raw(&no_user), &h, (422, "invalid_parameter")).await;
    let rewrites = [
        ("command = [\"true\"]\n[params.name]\n[params.more]\n", "missing_parameter"),
        ("command = [\"true\"]\n", "unknown_parameter"),
        ("command = 3\n", "invalid_job"),
    ];
    for (i, (text, code)) in rewrites.iter().enumerate() {
        std::fs::write(hooked.join("jobs/h.toml"), text).unwrap();
        let id = format!("l-r{i}");
        p.expect_with("deliverHook", M::POST, "/hooks/late", raw(&delivery), &late(&delivery, &id), (422, code)).await;
    }
    std::fs::remove_file(hooked.join("jobs/h.toml")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", hooked.join("jobs/h.toml")).unwrap();
    let h = late(&delivery, "l-s");
    p.expect_with("deliverHook", M::POST, "/hooks/late", raw(&delivery), &h, (400, "invalid_path")).await;
    std::fs::remove_file(hooked.join("jobs/h.toml")).unwrap();
    let h = late(&delivery, "l-g");
    p.expect_with("deliverHook", M::POST, "/hooks/late", raw(&delivery), &h, (422, "unknown_job")).await;
    p.expect("deleteSandbox", M::DELETE, "/sandboxes/hooked", Body::None, (204, "")).await;
    let h = late(&delivery, "l-u");
    p.expect_with("deliverHook", M::POST, "/hooks/late", raw(&delivery), &h, (422, "unknown_sandbox")).await;
    p.expect("deleteListener", M::DELETE, "/listeners/deploy", Body::None, (204, "")).await;
    p.expect("deleteListener", M::DELETE, "/listeners/deploy", Body::None, (404, "unknown_listener")).await;

    // Health and the document itself.
    p.expect("getOpenApi", M::GET, "/openapi.json", Body::None, (200, "")).await;
    p.expect("liveV1", M::GET, "/health/live", Body::None, (200, "")).await;
    p.expect("readyV1", M::GET, "/health/ready", Body::None, (200, "")).await;
    p.expect("metrics", M::GET, "/metrics", Body::None, (200, "")).await;
    let pending = json!({"sandbox": "spare", "command": ["true"], "allocation": {"kind": "nodes", "nodes": ["n9"]}, "allow_pending": true});
    let pending = p.expect("submitExecution", M::POST, "/executions", j(pending), (201, "")).await;
    p.expect("deleteSandbox", M::DELETE, "/sandboxes/spare", Body::None, (409, "conflict")).await;
    let pending = pending["id"].as_str().unwrap().to_owned();
    p.expect("cancelExecution", M::POST, &format!("/executions/{pending}/cancel"), Body::None, (200, "")).await;
    p.expect("deleteSandbox", M::DELETE, "/sandboxes/spare", Body::None, (204, "")).await;
    p.expect("deleteSandbox", M::DELETE, "/sandboxes/spare", Body::None, (404, "not_found")).await;

    // Requests only n2 can serve: forwarded to n1 by n2 itself (409 `sandbox_not_here`: never
    // forwarded twice), then with n2 stopped (503 `node_unavailable`).
    let rsecret = "0123456789abcdef0123";
    let remote_job = json!({"sandbox": "remote", "job": "jobs/greet.toml", "params": {"name": "n"}});
    let enable = Some(json!({"enabled": true}));
    let remote2 = json!({"name": "remote2", "kind": "local", "node": "n2", "root": "/tmp/remote2"});
    let holder_cases = [
        ("createSandbox", M::POST, "/sandboxes", Some(remote2)),
        ("createSchedule", M::POST, "/schedules", Some(merged(&remote_job, json!({"name": "r2", "cron": "@daily"})))),
        ("patchSchedule", M::PATCH, "/schedules/rsched", enable.clone()),
        ("createListener", M::POST, "/listeners", Some(merged(&remote_job, json!({"name": "r2", "kind": "webhook"})))),
        ("patchListener", M::PATCH, "/listeners/rhook", enable),
        ("submitExecution", M::POST, "/executions", Some(remote_job.clone())),
        ("listSandboxJobs", M::GET, "/sandboxes/remote/jobs", None),
        ("listSandboxRoot", M::GET, "/sandboxes/remote/files", None),
        ("listSandboxRootSlash", M::GET, "/sandboxes/remote/files/", None),
        ("getSandboxFile", M::GET, "/sandboxes/remote/files/jobs/greet.toml", None),
        ("putSandboxFile", M::PUT, "/sandboxes/remote/files/x.txt", None),
        ("deleteSandboxFile", M::DELETE, "/sandboxes/remote/files/x.txt", None),
        ("deliverHook", M::POST, "/hooks/rhook", None),
    ];
    let hook_headers = |id: &str| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        vec![
            (
                "x-shoal-hook-signature",
                shoal_api::listeners::sign_hook(rsecret.as_bytes(), "rhook", now, Some(id), b"{}"),
            ),
            ("x-shoal-hook-delivery", id.to_owned()),
        ]
    };
    // With n2 up, each request comes as n2 forwards it; then, with n2 stopped, as a client
    // sends it. Each phase signs its hook deliveries with ids of its own.
    for (n2_up, deliveries, want) in [(true, "f", (409, "sandbox_not_here")), (false, "d", (503, "node_unavailable"))] {
        if !n2_up {
            n2.stop().await;
        }
        for (i, (op, method, path, body)) in holder_cases.iter().enumerate() {
            let mut headers = if n2_up { forwarded_by(&cluster_secret, "n2", method, path) } else { Vec::new() };
            let body = match body {
                _ if *op == "deliverHook" => {
                    headers.extend(hook_headers(&format!("{deliveries}-{i}")));
                    Body::Raw("application/json", b"{}".to_vec())
                }
                Some(v) => j(v.clone()),
                None => Body::None,
            };
            p.expect_with(op, method.clone(), path, body, &headers, want).await;
        }
    }
    for op in ["drain", "suspend", "resume"] {
        p.expect(&format!("{op}Node"), M::POST, &format!("/nodes/n2/{op}"), Body::None, (503, "node_unavailable"))
            .await;
    }

    // Over every operation: a concrete path for its template.
    let concrete = |path: &str| {
        path.replace(
            "{id}",
            if path.starts_with("/nodes") {
                "n1"
            } else if path.starts_with("/executions") {
                &done
            } else {
                "files"
            },
        )
        .replace("{name}", if path.starts_with("/hooks") { "files" } else { "examples" })
        .replace("{path}", "jobs/greet.toml")
    };
    let forged = [("x-shoal-forwarded-by", "n9".to_owned())];
    // Tokens.
    p.expect("listTokens", M::GET, "/tokens", Body::None, (200, "")).await;
    let spare_token = json!({"name": "spare", "role": "runner", "expires_in": "1d"});
    let made = p.expect("createToken", M::POST, "/tokens", j(spare_token.clone()), (201, "")).await;
    p.expect("createToken", M::POST, "/tokens", j(spare_token), (409, "already_exists")).await;
    let bad_glob = json!({"name": "g", "role": "viewer", "sandboxes": ["Team/*"]});
    p.expect("createToken", M::POST, "/tokens", j(bad_glob), (422, "invalid_request")).await;
    let spare_id = made["id"].as_str().unwrap().to_owned();
    p.expect("revokeToken", M::DELETE, &format!("/tokens/{spare_id}"), Body::None, (200, "")).await;
    p.expect("revokeToken", M::DELETE, "/tokens/nope", Body::None, (404, "not_found")).await;
    // The harness's token is the only admin token for every sandbox: it is kept.
    p.expect("revokeToken", M::DELETE, "/tokens/test-admin", Body::None, (409, "conflict")).await;

    // Users and sessions.
    p.expect("listUsers", M::GET, "/users", Body::None, (200, "")).await;
    let password = "a password long enough";
    let ann = json!({"name": "ann", "password": password, "role": "admin"});
    p.expect("createUser", M::POST, "/users", j(ann.clone()), (201, "")).await;
    p.expect("createUser", M::POST, "/users", j(ann), (409, "already_exists")).await;
    let short = json!({"name": "bo", "password": "short", "role": "viewer"});
    p.expect("createUser", M::POST, "/users", j(short), (422, "invalid_request")).await;
    let gone = json!({"name": "gone", "password": password, "role": "viewer"});
    p.expect("createUser", M::POST, "/users", j(gone), (201, "")).await;
    p.expect("deleteUser", M::DELETE, "/users/gone", Body::None, (204, "")).await;
    p.expect("deleteUser", M::DELETE, "/users/gone", Body::None, (404, "not_found")).await;
    // The audit trail.
    p.expect("listAudit", M::GET, "/audit?limit=5", Body::None, (200, "")).await;
    p.expect("listAudit", M::GET, "/audit?outcome=maybe", Body::None, (400, "invalid_query")).await;
    let credentials = |password: &str| j(json!({"name": "ann", "password": password}));
    // Logged in twice: one session to log out of, one kept for the CSRF cases below.
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let v = p.expect("createSession", M::POST, "/sessions", credentials(password), (201, "")).await;
        let set = p.headers["set-cookie"].to_str().unwrap();
        let cookie = set.split(';').next().unwrap().to_owned();
        sessions.push((cookie, v["csrf_token"].as_str().unwrap().to_owned()));
    }
    let (cookie, csrf) = sessions.pop().unwrap();
    let by_cookie = [("authorization", String::new()), ("cookie", cookie), ("x-csrf-token", csrf)];
    p.expect_with("deleteSession", M::DELETE, "/sessions", Body::None, &by_cookie, (204, "")).await;
    let (cookie, _) = sessions.pop().unwrap();
    let cookie_only = [("authorization", String::new()), ("cookie", cookie)];
    // Failed logins, from an address of their own so that the others are not slowed: five,
    // then the sixth is refused before its password is checked.
    let from_elsewhere = reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap());
    let main_client = std::mem::replace(&mut p.http, from_elsewhere.build().unwrap());
    for _ in 0..5 {
        p.expect("createSession", M::POST, "/sessions", credentials("wrong"), (401, "invalid_credentials")).await;
    }
    p.expect("createSession", M::POST, "/sessions", credentials(password), (429, "too_many_attempts")).await;
    assert!(p.headers.contains_key("retry-after"), "{:?}", p.headers);
    p.http = main_client;

    // Credentials: none, a bad one, one in the URL, and a viewer's where more is needed.
    let mint = |body: Value| {
        let n = &n;
        async move {
            let (status, v) = n.post("/api/v1/tokens", body).await;
            assert_eq!(status, 201, "{v}");
            format!("Bearer {}", v["secret"].as_str().unwrap())
        }
    };
    let viewer = [("authorization", mint(json!({"name": "viewer", "role": "viewer"})).await)];
    let elsewhere =
        [("authorization", mint(json!({"name": "elsewhere", "role": "viewer", "sandboxes": ["remote"]})).await)];
    let scoped_schedule = json!({"name": "scoped", "sandbox": "examples", "job": "jobs/greet.toml", "cron": "0 3 * * *", "params": {"name": "n"}});
    assert_eq!(n.post("/api/v1/schedules", scoped_schedule).await.0, 201);
    let none = [("authorization", String::new())];
    let bad = [("authorization", "Bearer shoal_api_x".to_owned())];
    for (id, method, path, _) in operations(&doc) {
        if id == "liveV1" || id == "readyV1" {
            continue;
        }
        let path = concrete(&path);
        let sep = if path.contains('?') { '&' } else { '?' };
        let in_url = format!("{path}{sep}access_token=x");
        p.expect(&id, method.clone(), &in_url, Body::None, (400, "token_in_query")).await;
        let need = shoal_api::auth::ACCESS.iter().find(|(op, _)| *op == id).map(|(_, a)| *a);
        if need == Some(shoal_api::auth::Access::Public) {
            continue;
        }
        // A change made with a session cookie and no CSRF token.
        if !matches!(method, M::GET | M::HEAD) {
            p.expect_with(&id, method.clone(), &path, Body::None, &cookie_only, (403, "csrf_failed")).await;
        }
        p.expect_with(&id, method.clone(), &path, Body::None, &none, (401, "unauthenticated")).await;
        p.expect_with(&id, method.clone(), &path, Body::None, &bad, (401, "invalid_token")).await;
        if need != Some(shoal_api::auth::Access::Role(shoal_wire::Role::Viewer)) {
            // More than a viewer's role, or admin for every sandbox.
            p.expect_with(&id, method.clone(), &path, Body::None, &viewer, (403, "forbidden")).await;
        }
    }
    for (id, path) in [
        ("getSandbox", "/sandboxes/examples".to_owned()),
        ("listSandboxJobs", "/sandboxes/examples/jobs".to_owned()),
        ("listSandboxRoot", "/sandboxes/examples/files".to_owned()),
        ("listSandboxRootSlash", "/sandboxes/examples/files/".to_owned()),
        ("getSandboxFile", "/sandboxes/examples/files/jobs/greet.toml".to_owned()),
    ] {
        p.expect_with(id, M::GET, &path, Body::None, &elsewhere, (403, "forbidden")).await;
    }
    // What is addressed by id outside the token's sandboxes does not exist for it.
    for (id, path, want) in [
        ("getExecution", format!("/executions/{done}"), "not_found"),
        ("getExecutionLogs", format!("/executions/{done}/logs"), "not_found"),
        ("getSchedule", "/schedules/scoped".to_owned(), "unknown_schedule"),
        ("listScheduleFirings", "/schedules/scoped/firings".to_owned(), "unknown_schedule"),
        ("getListener", "/listeners/files".to_owned(), "unknown_listener"),
        ("listListenerEvents", "/listeners/files/events".to_owned(), "unknown_listener"),
    ] {
        p.expect_with(id, M::GET, &path, Body::None, &elsewhere, (404, want)).await;
    }
    for (id, method, path, json_body) in operations(&doc) {
        let path = concrete(&path);
        p.expect_with(&id, method.clone(), &path, Body::None, &forged, (401, "invalid_signature")).await;
        // A read-your-writes position that is not one, on any operation, before anything is read.
        let nonsense = [("x-shoal-position", "yesterday".to_owned())];
        p.expect_with(&id, method.clone(), &path, Body::None, &nonsense, (400, "invalid_position")).await;
        // A rebound name and a page of another site, refused before anything is read; the
        // health checks take any Host.
        if id != "liveV1" && id != "readyV1" {
            let rebound = [("host", "evil.example".to_owned())];
            p.expect_with(&id, method.clone(), &path, Body::None, &rebound, (403, "foreign_host")).await;
            let page = [("origin", "http://evil.example".to_owned())];
            p.expect_with(&id, method.clone(), &path, Body::None, &page, (403, "foreign_origin")).await;
        }
        if json_body && id != "deliverHook" {
            p.expect(&id, method.clone(), &path, Body::Raw("application/json", b"{".to_vec()), (400, "invalid_json"))
                .await;
            p.expect(
                &id,
                method.clone(),
                &path,
                Body::Raw("text/plain", b"{}".to_vec()),
                (415, "unsupported_media_type"),
            )
            .await;
            p.too_large(&id, method.clone(), &path, 128 * 1024, &[]).await;
        }
        if json_body || id == "putSandboxFile" {
            let ct = if json_body { "application/json" } else { "application/octet-stream" };
            let (status, code) = interrupted(&n.url, &method, &path, ct).await;
            assert_eq!((status, code.as_str()), (400, "bad_request"), "{id}: an interrupted body");
            p.seen.insert((id.clone(), status, code));
        }
    }

    // The store cut off: every operation that reads it answers 503 `store_unavailable`, and
    // readiness says the node is not ready.
    proxy.cut();
    shoal_testkit::wait_until_async("readiness to fail", Duration::from_secs(20), || {
        let n = &n;
        async move { n.get("/api/v1/health/ready").await.0 == 503 }
    })
    .await;
    p.expect("readyV1", M::GET, "/health/ready", Body::None, (503, "not_ready")).await;
    // Until its cache entry is older than it trusts (500 ms), a node takes a token it just
    // saw without asking the store; after that, the store's absence shows.
    shoal_testkit::wait_until_async("the token to be asked of the store", Duration::from_secs(5), || {
        let n = &n;
        async move { n.get("/api/v1/openapi.json").await.0 == 503 }
    })
    .await;
    let listed_now = listed(&doc);
    for (id, method, path, _) in operations(&doc) {
        if !listed_now.contains(&(id.clone(), 503, "store_unavailable".to_owned())) {
            continue;
        }
        let body = match (id.as_str(), method.as_str()) {
            ("submitExecution", _) => j(json!({"command": ["true"]})),
            ("createSchedule", _) => j(with(json!({}))),
            ("createListener", _) => j(listener(json!({}))),
            ("createSandbox", _) => j(json!({"name": "later", "kind": "shared", "root": "/tmp/later"})),
            ("previewCron", _) => j(json!({"cron": "@daily"})),
            ("createSession", _) => credentials(password),
            (_, "PATCH") => j(json!({"enabled": true})),
            ("putSandboxFile", _) => bytes(),
            ("deliverHook", _) => raw(&delivery),
            _ => Body::None,
        };
        let path = concrete(&path);
        let headers = if id == "deliverHook" { signed("files", &delivery, "d-9") } else { Vec::new() };
        p.expect_with(&id, method, &path, body, &headers, (503, "store_unavailable")).await;
    }
    proxy.restore();

    // The document against what happened, both ways.
    let missing: Vec<_> = listed_now.difference(&p.seen).collect();
    let unlisted: Vec<_> = p.seen.difference(&listed_now).collect();
    assert!(missing.is_empty(), "the document lists answers no request made happen: {missing:#?}");
    assert!(unlisted.is_empty(), "answers the document does not list: {unlisted:#?}");
}
