//! Guarantee 1 across nodes: a request for a `local` sandbox held by another node is forwarded
//! to it, signed with the cluster secret, and streamed back, so the client cannot tell; a holder
//! that is down is a prompt `503 node_unavailable` naming it; and a node refuses forwarded
//! requests whose signature is forged, stale, replayed or incomplete, changing nothing.

#[macro_use]
mod common;

use common::{Backend, TestNode};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const T: Duration = Duration::from_secs(30);

on_both!(
    files_jobs_and_submissions_of_another_nodes_sandbox_go_through_any_node,
    a_large_upload_streams_through_byte_identical,
    a_holder_that_is_down_is_a_prompt_503_naming_it,
    bad_signatures_are_refused_and_change_nothing,
    a_forwarded_request_is_never_forwarded_again,
);

/// Two nodes' worth of setup: a store every node of the test shares.
struct Cluster {
    /// Holds the SQLite file; the nodes' own folders are theirs.
    _db: tempfile::TempDir,
    store_url: String,
}

impl Cluster {
    fn new(backend: Backend) -> Cluster {
        let db = tempfile::tempdir().unwrap();
        let store_url = common::store_url(backend, db.path());
        Cluster { _db: db, store_url }
    }

    /// Starts node `id` on the shared store; `cluster` and `http` are extra lines for those
    /// sections of its configuration. Uploads of up to 64 MiB are allowed.
    async fn node(&self, id: &str, cluster: &str, http: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let text = common::config_text(dir.path(), &self.store_url, "")
            .replace("node_id = \"n1\"", &format!("node_id = \"{id}\""))
            .replace("max_upload_bytes = 1048576", "max_upload_bytes = 67108864")
            .replace("[cluster]\n", &format!("[cluster]\n{cluster}\n"))
            .replace("[http]\n", &format!("[http]\n{http}\n"));
        let config = shoal_server::Config::parse(&text, "test", Vec::<(String, String)>::new()).unwrap();
        common::admit_test_token(&config.store.url).await;
        let node = shoal_server::start(config).await.unwrap();
        let url = node.url().to_owned();
        TestNode { node: Some(node), url, http: common::http(), dir, store_url: self.store_url.clone() }
    }
}

/// One HTTP exchange, kept whole so that two can be compared.
#[derive(Debug)]
struct Reply {
    status: u16,
    served_by: String,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Status, content type and body: what a client sees, whichever node served it.
    fn seen(&self) -> (u16, &str, &[u8]) {
        (self.status, &self.content_type, &self.body)
    }
}

async fn call(node: &TestNode, method: &str, path: &str, body: Option<Vec<u8>>, headers: &[(&str, String)]) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = node.http.request(method, format!("{}{path}", node.url));
    if let Some(b) = body {
        req = req.body(b);
    }
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let (status, served_by, content_type) =
        (resp.status().as_u16(), header("x-shoal-served-by"), header("content-type"));
    let body = resp.bytes().await.unwrap().to_vec();
    Reply { status, served_by, content_type, body }
}

/// Registers, through `via`, sandbox `name` local to `holder`, rooted in the holder's folder.
async fn local_sandbox(via: &TestNode, holder: &TestNode, holder_id: &str, name: &str) -> PathBuf {
    let root = holder.dir.path().join("sandboxes").join(name);
    let body = json!({"name": name, "kind": "local", "root": root.display().to_string(), "node": holder_id});
    let r = call(via, "POST", "/api/v1/sandboxes", Some(body.to_string().into_bytes()), &json_type()).await;
    assert_eq!((r.status, r.served_by.as_str()), (201, holder_id), "{:?}", r.json());
    root
}

fn json_type() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/json".to_owned())]
}

/// A nonce no other request of this test run uses.
fn fresh_nonce() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{:016x}{:016x}", now_ms(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The forwarding headers a node would send, computed here from the wire format's definition.
fn signed(
    secret: &[u8],
    method: &str,
    path: &str,
    timestamp: i64,
    nonce: &str,
    from: &str,
) -> Vec<(&'static str, String)> {
    // The principal the first node authenticated: an admin, for every sandbox.
    let principal = r#"{"kind":"token","id":"t","name":"ops","role":"admin","sandboxes":["*"]}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{method}\n{path}\n{timestamp}\n{nonce}\n{from}\n{principal}").as_bytes());
    vec![
        ("x-shoal-forwarded-by", from.to_owned()),
        ("x-shoal-timestamp", timestamp.to_string()),
        ("x-shoal-nonce", nonce.to_owned()),
        ("x-shoal-signature", hex::encode(mac.finalize().into_bytes())),
        ("x-shoal-principal", principal.to_owned()),
    ]
}

fn error(r: &Reply) -> (u16, String, String) {
    let v = r.json();
    (
        r.status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn files_jobs_and_submissions_of_another_nodes_sandbox_go_through_any_node(b: Backend) {
    let cluster = Cluster::new(b);
    let mut n1 = cluster.node("n1", "", "").await;
    let mut n2 = cluster.node("n2", "", "").await;

    // Registered through n1, the sandbox is created by its holder, in the holder's folder.
    let root = local_sandbox(&n1, &n2, "n2", "loc").await;
    assert!(root.is_dir());

    // Upload through n1: written on n2.
    let put = call(&n1, "PUT", "/api/v1/sandboxes/loc/files/data/a.txt", Some(b"first\n".to_vec()), &[]).await;
    assert_eq!((put.status, put.served_by.as_str()), (201, "n2"), "{:?}", put.json());
    assert_eq!(put.json(), json!({"path": "data/a.txt", "size": 6}));
    assert_eq!(std::fs::read(root.join("data/a.txt")).unwrap(), b"first\n");
    let put = call(&n1, "PUT", "/api/v1/sandboxes/loc/files/data/a.txt", Some(b"second\n".to_vec()), &[]).await;
    assert_eq!((put.status, put.served_by.as_str()), (200, "n2"));
    let job = "command = [\"sh\", \"-c\", \"echo hello from $SHOAL_NODE_ID\"]\n";
    let put = call(&n1, "PUT", "/api/v1/sandboxes/loc/files/jobs/hello.toml", Some(job.into()), &[]).await;
    assert_eq!(put.status, 201);

    // Reads through n1 are what n2 answers itself, down to the bytes; n2 served both.
    for path in [
        "/api/v1/sandboxes/loc/files/data/a.txt",
        "/api/v1/sandboxes/loc/files",
        "/api/v1/sandboxes/loc/files/data?x=1",
        "/api/v1/sandboxes/loc/jobs",
        "/api/v1/sandboxes/loc/files/missing.txt",
        "/api/v1/sandboxes/loc/files/data/a.txt/under-a-file",
    ] {
        let (via_n1, direct) = (call(&n1, "GET", path, None, &[]).await, call(&n2, "GET", path, None, &[]).await);
        assert_eq!(via_n1.seen(), direct.seen(), "GET {path}");
        assert_eq!((via_n1.served_by.as_str(), direct.served_by.as_str()), ("n2", "n2"), "GET {path}");
    }
    let file = call(&n1, "GET", "/api/v1/sandboxes/loc/files/data/a.txt", None, &[]).await;
    assert_eq!(file.seen(), (200, "application/octet-stream", &b"second\n"[..]));
    // A page n1 serves may ask n1; n2, reached by forwarding, does not see n1's Origin as a
    // foreign one (n1 checked it), while a foreign Origin stops at n1.
    let own = vec![("origin", n1.url.clone())];
    let file = call(&n1, "GET", "/api/v1/sandboxes/loc/files/data/a.txt", None, &own).await;
    assert_eq!((file.status, file.served_by.as_str()), (200, "n2"), "{:?}", file.json());
    let foreign = vec![("origin", "http://evil.example".to_owned())];
    let file = call(&n1, "GET", "/api/v1/sandboxes/loc/files/data/a.txt", None, &foreign).await;
    assert_eq!((file.status, file.served_by.as_str()), (403, "n1"), "{:?}", file.json());
    assert_eq!(call(&n1, "GET", "/api/v1/sandboxes/loc/jobs", None, &[]).await.json()["jobs"][0]["valid"], true);

    // What n1 serves itself says so: the sandbox registry is in the store, and so are errors.
    assert_eq!(call(&n1, "GET", "/api/v1/sandboxes/loc", None, &[]).await.served_by, "n1");
    assert_eq!(call(&n1, "GET", "/api/v1/nope", None, &[]).await.served_by, "n1");
    assert_eq!(call(&n1, "GET", "/health/live", None, &[]).await.served_by, "n1");

    // A submission of the sandbox's job through n1 is validated and enqueued by n2, and an
    // idempotent retry through n1 finds the same execution.
    let submit = json!({"sandbox": "loc", "job": "jobs/hello.toml"}).to_string().into_bytes();
    let mut headers = json_type();
    headers.push(("idempotency-key", "fwd-1".to_owned()));
    let first = call(&n1, "POST", "/api/v1/executions", Some(submit.clone()), &headers).await;
    assert_eq!((first.status, first.served_by.as_str()), (201, "n2"), "{:?}", first.json());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let retried = call(&n1, "POST", "/api/v1/executions", Some(submit), &headers).await;
    assert_eq!((retried.status, retried.json()["id"].as_str()), (200, Some(id.as_str())));
    let e = n1.wait_final(&id, T).await;
    assert_eq!((e["state"].as_str(), e["node"].as_str()), (Some("succeeded"), Some("n2")), "{e}");
    assert_eq!(n1.logs(&id).await, "hello from n2\n");
    // Bad input is still judged by the holder, and answered the same.
    let bad = json!({"sandbox": "loc", "job": "jobs/missing.toml"}).to_string().into_bytes();
    let (via_n1, direct) = (
        call(&n1, "POST", "/api/v1/executions", Some(bad.clone()), &json_type()).await,
        call(&n2, "POST", "/api/v1/executions", Some(bad), &json_type()).await,
    );
    assert_eq!(via_n1.seen(), direct.seen());
    assert_eq!(error(&via_n1).1, "unknown_job");

    // Delete through n1.
    let del = call(&n1, "DELETE", "/api/v1/sandboxes/loc/files/data/a.txt", None, &[]).await;
    assert_eq!((del.status, del.served_by.as_str(), del.body.len()), (204, "n2", 0));
    assert!(!root.join("data/a.txt").exists());
    let del = call(&n1, "DELETE", "/api/v1/sandboxes/loc/files/data/a.txt", None, &[]).await;
    assert_eq!(error(&del).1, "not_found");

    n1.stop().await;
    n2.stop().await;
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn a_large_upload_streams_through_byte_identical(b: Backend) {
    let cluster = Cluster::new(b);
    let mut n1 = cluster.node("n1", "", "").await;
    let mut n2 = cluster.node("n2", "", "").await;
    let root = local_sandbox(&n1, &n2, "n2", "big").await;

    // 32 MiB: 512 times http.max_request_bytes, half of max_upload_bytes; not all one byte, so
    // a chunk lost, doubled or reordered on the way changes the hash.
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let started = Instant::now();
    let put = call(&n1, "PUT", "/api/v1/sandboxes/big/files/blob.bin", Some(data.clone()), &[]).await;
    let took = started.elapsed();
    assert_eq!((put.status, put.served_by.as_str()), (201, "n2"), "{:?}", put.json());
    assert_eq!(put.json()["size"], data.len());
    assert_eq!(sha256(&std::fs::read(root.join("blob.bin")).unwrap()), sha256(&data));
    let got = call(&n1, "GET", "/api/v1/sandboxes/big/files/blob.bin", None, &[]).await;
    assert_eq!((got.status, got.served_by.as_str()), (200, "n2"));
    assert_eq!(sha256(&got.body), sha256(&data));
    eprintln!("32 MiB upload through n1 to n2: {took:?}");

    // An upload the client gives up halfway leaves nothing behind on the holder.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![1; 1 << 20]), Ok(vec![2; 1 << 20]), Err(std::io::Error::other("the client gave up"))];
    let sent = n1
        .http
        .put(format!("{}/api/v1/sandboxes/big/files/partial.bin", n1.url))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    assert!(sent.is_err(), "the upload failed on the client's side: {sent:?}");
    let leftovers = || {
        let names: Vec<String> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        async move { names == ["blob.bin"] }
    };
    shoal_testkit::wait_until_async("the holder to drop the half upload", T, leftovers).await;

    n1.stop().await;
    n2.stop().await;
}

/// Asserts a prompt `503 node_unavailable` naming `node` and saying `why`.
async fn assert_unavailable(via: &TestNode, method: &str, path: &str, node: &str, why: &str) {
    let started = Instant::now();
    let body = (method == "PUT").then(|| b"content".to_vec());
    let r = call(via, method, path, body, &[]).await;
    let took = started.elapsed();
    let (status, code, message) = error(&r);
    assert_eq!((status, code.as_str()), (503, "node_unavailable"), "{method} {path}: {message}");
    assert!(message.starts_with(&format!("node {node}, which holds sandbox `")), "{message}");
    assert!(message.contains(why), "{message} (wanted: {why})");
    assert!(message.ends_with("; retry when it is back"), "{message}");
    assert!(took < Duration::from_secs(2), "{method} {path} took {took:?}");
}

async fn a_holder_that_is_down_is_a_prompt_503_naming_it(b: Backend) {
    let cluster = Cluster::new(b);
    let mut n1 = cluster.node("n1", "", "").await;
    let mut n2 = cluster.node("n2", "", "").await;
    let root = local_sandbox(&n1, &n2, "n2", "loc").await;

    // Stopped cleanly: its lease is released, so n1 does not even try.
    n2.stop().await;
    for method in ["GET", "PUT", "DELETE"] {
        assert_unavailable(&n1, method, "/api/v1/sandboxes/loc/files/a.txt", "n2", "is unavailable: it stopped").await;
    }
    assert!(!root.join("a.txt").exists());

    // Its lease is live but nothing answers at its URL (here: a closed port it advertises).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}");
    let mut n3 = cluster.node("n3", "", &format!("advertise = \"{url}\"")).await;
    let root3 = n3.dir.path().join("far");
    std::fs::create_dir_all(&root3).unwrap();
    n1.store()
        .create_sandbox("far", shoal_core::SandboxKind::Local, &root3.display().to_string(), Some("n3"), &[])
        .await
        .unwrap();
    for method in ["GET", "PUT"] {
        let why = format!("is unavailable: connection refused at {url}");
        assert_unavailable(&n1, method, "/api/v1/sandboxes/far/files/a.txt", "n3", &why).await;
    }
    let submit = json!({"sandbox": "far", "job": "jobs/x.toml"}).to_string().into_bytes();
    let r = call(&n1, "POST", "/api/v1/executions", Some(submit), &json_type()).await;
    assert_eq!(error(&r).1, "node_unavailable");
    assert_eq!(n1.count_executions().await, 0, "nothing was accepted");

    // A holder that never joined.
    n1.store().create_sandbox("ghost", shoal_core::SandboxKind::Local, "/nonexistent", Some("n9"), &[]).await.unwrap();
    assert_unavailable(&n1, "GET", "/api/v1/sandboxes/ghost/files", "n9", "it has never joined the cluster").await;

    n3.stop().await;
    n1.stop().await;
}

async fn bad_signatures_are_refused_and_change_nothing(b: Backend) {
    let cluster = Cluster::new(b);
    let mut n1 = cluster.node("n1", "", "").await;
    let mut n2 = cluster.node("n2", "", "").await;
    let root = local_sandbox(&n1, &n2, "n2", "loc").await;
    // No node sets cluster.secret, so they share the one kept in the store.
    let secret = n2.store().cluster_secret().await.unwrap();
    let path = "/api/v1/sandboxes/loc/files/f.txt";
    let nonce = |i: u8| format!("{i:032x}");

    let refused = |r: Reply, want: &str| {
        let (status, code, message) = error(&r);
        assert_eq!((status, code.as_str(), r.served_by.as_str()), (401, "invalid_signature", "n2"), "{message}");
        assert!(message.contains(want), "{message} (wanted: {want})");
    };
    let put = |headers: Vec<(&'static str, String)>| {
        let n2 = &n2;
        async move { call(n2, "PUT", path, Some(b"forged".to_vec()), &headers).await }
    };

    // Forged: signed with another secret.
    refused(
        put(signed(b"guess", "PUT", path, now_ms(), &nonce(1), "n1")).await,
        "signature does not match: the sending node has a different cluster.secret",
    );
    // Signed for another path, method or sender than the request.
    refused(
        put(signed(&secret, "PUT", "/api/v1/sandboxes/loc/files/other.txt", now_ms(), &nonce(2), "n1")).await,
        "does not match",
    );
    refused(put(signed(&secret, "GET", path, now_ms(), &nonce(3), "n1")).await, "does not match");
    let mut other_sender = signed(&secret, "PUT", path, now_ms(), &nonce(4), "n1");
    other_sender[0].1 = "n7".into();
    refused(put(other_sender).await, "does not match");
    // Stale, and from the future.
    refused(
        put(signed(&secret, "PUT", path, now_ms() - 45_000, &nonce(5), "n1")).await,
        "s old; the replay window is 30 s: check the nodes' clocks",
    );
    refused(put(signed(&secret, "PUT", path, now_ms() + 45_000, &nonce(6), "n1")).await, "ahead of this node's clock");
    // A signature without the rest.
    for missing in 0..3 {
        let mut headers = signed(&secret, "PUT", path, now_ms(), &nonce(7 + missing as u8), "n1");
        let gone = headers.remove(missing).0;
        refused(put(headers).await, &format!("lacks the `{gone}` header"));
    }
    // Any forwarding header alone makes the request a forwarded one, to be verified.
    refused(put(vec![("x-shoal-forwarded-by", "n1".into())]).await, "lacks the `x-shoal-timestamp` header");
    assert!(!root.join("f.txt").exists(), "a refused request wrote nothing");

    // A good one is served, once; sent again it is refused and changes nothing.
    let good = signed(&secret, "PUT", path, now_ms(), &nonce(20), "n1");
    let r = call(&n2, "PUT", path, Some(b"original".to_vec()), &good).await;
    assert_eq!((r.status, r.served_by.as_str()), (201, "n2"), "{:?}", r.json());
    let again = call(&n2, "PUT", path, Some(b"replayed".to_vec()), &good).await;
    refused(again, "forwarded request was already received (replayed nonce)");
    assert_eq!(std::fs::read(root.join("f.txt")).unwrap(), b"original");
    // Its nonce cannot be used again either, even in an otherwise new request.
    let del = call(&n2, "DELETE", path, None, &signed(&secret, "DELETE", path, now_ms() + 1, &nonce(20), "n1")).await;
    refused(del, "replayed nonce");
    assert!(root.join("f.txt").exists());

    // A node configured with another cluster.secret refuses what the others forward, and the
    // client learns why.
    let mut n3 = cluster.node("n3", "secret = \"not-the-stored-one\"", "").await;
    local_sandbox(&n3, &n3, "n3", "n3box").await;
    let r = call(&n1, "GET", "/api/v1/sandboxes/n3box/files", None, &[]).await;
    let (status, code, message) = error(&r);
    assert_eq!((status, code.as_str(), r.served_by.as_str()), (401, "invalid_signature", "n3"));
    assert!(message.contains("different cluster.secret"), "{message}");

    n3.stop().await;
    n1.stop().await;
    n2.stop().await;
}

async fn a_forwarded_request_is_never_forwarded_again(b: Backend) {
    let cluster = Cluster::new(b);
    let mut n1 = cluster.node("n1", "", "").await;
    let mut n2 = cluster.node("n2", "", "").await;
    let root = local_sandbox(&n1, &n2, "n2", "loc").await;
    let secret = n1.store().cluster_secret().await.unwrap();

    // A request n2 forwarded to n1 about n2's own sandbox (say the nodes disagreed about the
    // holder): n1 answers rather than sending it on.
    for (method, path) in [
        ("PUT", "/api/v1/sandboxes/loc/files/a.txt"),
        ("GET", "/api/v1/sandboxes/loc/files"),
        ("GET", "/api/v1/sandboxes/loc/jobs"),
        ("DELETE", "/api/v1/sandboxes/loc/files/a.txt"),
    ] {
        let headers = signed(&secret, method, path, now_ms(), &fresh_nonce(), "n2");
        let r = call(&n1, method, path, Some(Vec::new()).filter(|_| method == "PUT"), &headers).await;
        let (status, code, message) = error(&r);
        assert_eq!((status, code.as_str(), r.served_by.as_str()), (409, "sandbox_not_here", "n1"), "{method} {path}");
        assert!(message.contains("forwarded once at most"), "{message}");
        assert!(message.contains("node n2 already forwarded this request here"), "{message}");
    }
    let submit = "/api/v1/executions";
    let headers: Vec<_> =
        signed(&secret, "POST", submit, now_ms(), &fresh_nonce(), "n2").into_iter().chain(json_type()).collect();
    let body = json!({"sandbox": "loc", "job": "jobs/x.toml"}).to_string().into_bytes();
    let r = call(&n1, "POST", submit, Some(body), &headers).await;
    assert_eq!((error(&r).1.as_str(), r.served_by.as_str()), ("sandbox_not_here", "n1"));
    assert!(!root.join("a.txt").exists());

    // While a forwarded request for the node's own sandbox is served as usual.
    let path = "/api/v1/sandboxes/loc/files/b.txt";
    let r = call(&n2, "PUT", path, Some(b"b".to_vec()), &signed(&secret, "PUT", path, now_ms(), &fresh_nonce(), "n1"))
        .await;
    assert_eq!((r.status, r.served_by.as_str()), (201, "n2"));

    n1.stop().await;
    n2.stop().await;
}
