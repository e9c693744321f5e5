//! Test harness: real nodes (in-process, on port 0) on a real store, and an HTTP client.
#![allow(dead_code)]

pub mod netns;
pub mod procs;
pub mod proxy;

/// Runs each named `async fn(Backend)` as two tests, `sqlite::NAME` and `postgres::NAME`
/// (use with `#[macro_use] mod common;`).
#[allow(unused_macros)]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

use serde_json::{json, Value};
use shoal_server::{Config, Node};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestNode {
    pub node: Option<Node>,
    pub url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub store_url: String,
}

/// The admin token the harness puts in every test store ([`admit_test_token`]) and every test
/// client sends ([`http`]): one fixed token, so that nodes on one store, real processes and the
/// CLI all take it.
pub fn test_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| shoal_wire::format_token(shoal_wire::TokenKind::Api, &[0x5a; shoal_wire::TOKEN_BYTES]))
}

/// An HTTP client that sends [`test_token`] on every request.
pub fn http() -> reqwest::Client {
    authorized(reqwest::Client::builder()).build().unwrap()
}

/// [`http`] with a timeout on every request.
pub fn http_with_timeout(timeout: Duration) -> reqwest::Client {
    authorized(reqwest::Client::builder()).timeout(timeout).build().unwrap()
}

pub fn authorized(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {}", test_token());
    headers.insert(reqwest::header::AUTHORIZATION, reqwest::header::HeaderValue::from_str(&value).unwrap());
    builder.default_headers(headers)
}

/// A `shoal_client::Client` for these servers, with [`test_token`].
pub fn client(servers: Vec<String>) -> shoal_client::Client {
    shoal_client::Client::new(servers).unwrap().with_token(test_token()).unwrap()
}

/// Makes the store at `store_url` hold [`test_token`] as an admin token (`test-admin`), once.
pub async fn admit_test_token(store_url: &str) {
    let store = shoal_store::Store::open(store_url, 1).await.unwrap();
    let hash = shoal_service::tokens::hash(test_token());
    if store.token_by_hash(&hash).await.unwrap().0.is_some() {
        return;
    }
    let token = shoal_store::NewToken {
        id: "test-admin".into(),
        name: "test-admin".into(),
        hash: hash.clone(),
        prefix: shoal_wire::shown_part(test_token()),
        role: shoal_wire::Role::Admin,
        sandboxes: vec!["*".into()],
        created_by: "test harness".into(),
        expires_in_ms: None,
    };
    // Nodes starting at once on one store race here: the loser finds the winner's row.
    if let Err(e) = store.create_token(&token).await {
        assert!(store.token_by_hash(&hash).await.unwrap().0.is_some(), "cannot admit the test token: {e}");
    }
}

/// [`admit_test_token`] for callers that are not async (or are, but may not block their
/// runtime): on a thread and runtime of its own.
pub fn admit_test_token_blocking(store_url: &str) {
    let url = store_url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(admit_test_token(&url))
    })
    .join()
    .unwrap();
}

pub fn store_url(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}/shoal.db", dir.display()),
        Backend::Postgres => shoal_testkit::postgres().fresh_database(),
    }
}

/// With `SHOAL_TEST_LOG` set (a filter such as `warn` or `shoal_server=debug`), the nodes of
/// a test print their logs to its output, for finding out why a test failed.
fn log_if_asked() {
    if let Ok(filter) = std::env::var("SHOAL_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// The configuration every test node starts from: port 0, short lease, fast polls.
pub fn config_text(dir: &Path, store_url: &str, extra: &str) -> String {
    format!(
        r#"
node_id = "n1"
data_dir = "{dir}"
[sandboxes]
allowed_roots = ["{tmp}"]
[http]
listen = "127.0.0.1:0"
max_request_bytes = 65536
max_upload_bytes = 1048576
[store]
url = "{store_url}"
pool_size = 4
[cluster]
lease_ttl = "2s"
[executor]
slots = 4
kill_grace = "1s"
poll_interval = "50ms"
supervisor = "{supervisor}"
{extra}
"#,
        dir = dir.join("data").display(),
        tmp = std::fs::canonicalize(std::env::temp_dir()).unwrap().display(),
        supervisor = env!("CARGO_BIN_EXE_shoal"),
    )
}

impl TestNode {
    pub async fn start(backend: Backend) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let url = store_url(backend, dir.path());
        Self::start_on(dir, url, "").await
    }

    pub async fn start_on(dir: tempfile::TempDir, store_url: String, extra: &str) -> TestNode {
        let text = config_text(dir.path(), &store_url, extra);
        Self::start_with_text(dir, store_url, text).await
    }

    /// A node with id `id` (the others are `n1` unless said otherwise).
    pub async fn start_named(dir: tempfile::TempDir, store_url: String, id: &str) -> TestNode {
        Self::start_edited(dir, store_url, |t| t.replace("node_id = \"n1\"", &format!("node_id = \"{id}\""))).await
    }

    /// A node whose configuration is the standard one changed by `edit`.
    pub async fn start_edited(
        dir: tempfile::TempDir,
        store_url: String,
        edit: impl FnOnce(String) -> String,
    ) -> TestNode {
        let text = edit(config_text(dir.path(), &store_url, ""));
        Self::start_with_text(dir, store_url, text).await
    }

    async fn start_with_text(dir: tempfile::TempDir, store_url: String, text: String) -> TestNode {
        log_if_asked();
        let config = Config::parse(&text, "test", Vec::<(String, String)>::new()).unwrap();
        admit_test_token(&store_url).await;
        let node = shoal_server::start(config).await.unwrap();
        let url = node.url().to_owned();
        TestNode { node: Some(node), url, http: http(), dir, store_url }
    }

    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }

    pub fn store(&self) -> std::sync::Arc<shoal_store::Store> {
        self.node.as_ref().unwrap().store()
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        exchange(self.http.request(method, format!("{}{}", self.url, path)), body).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    /// Registers a shared sandbox whose folder holds the example files, plus `files`.
    pub async fn sandbox(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.dir.path().join("sandboxes").join(name);
        copy_examples(&root);
        for (rel, text) in files {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let (status, body) = self
            .post("/api/v1/sandboxes", json!({"name": name, "kind": "shared", "root": root.display().to_string()}))
            .await;
        assert_eq!(status, 201, "{body}");
        root
    }

    pub async fn submit(&self, body: Value) -> String {
        let (status, resp) = self.post("/api/v1/executions", body.clone()).await;
        assert_eq!(status, 201, "submitting {body}: {resp}");
        resp["id"].as_str().unwrap().to_owned()
    }

    pub async fn execution(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/executions/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits for an execution to reach a final state and returns it.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let e = self.execution(id).await;
            let state = e["state"].as_str().unwrap().to_owned();
            if !matches!(state.as_str(), "queued" | "running") {
                return e;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("execution {id} still {state} after {timeout:?}: {e}\nlogs:\n{}", self.logs(id).await);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_state(&self, id: &str, want: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let e = self.execution(id).await;
            if e["state"] == want {
                return e;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("execution {id} not {want} after {timeout:?}: {e}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn logs(&self, id: &str) -> String {
        self.http.get(format!("{}/api/v1/executions/{id}/logs", self.url)).send().await.unwrap().text().await.unwrap()
    }

    pub async fn count_executions(&self) -> usize {
        let (_, body) = self.get("/api/v1/executions?limit=1000").await;
        body["executions"].as_array().unwrap().len()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if self.node.is_some() {
            eprintln!("note: test node dropped without stop(); its tasks end with the runtime");
        }
    }
}

/// `(status, body)` of a request with this `Authorization` (none when `None`).
pub async fn call(n: &TestNode, auth: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), format!("{}{path}", n.url));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    exchange(req, body).await
}

/// Sends `req` with `body` as JSON, if any: `(status, body)`, the body as JSON or else text.
async fn exchange(mut req: reqwest::RequestBuilder, body: Option<Value>) -> (u16, Value) {
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Copies the repository's example sandbox into `root`.
pub fn copy_examples(root: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sandbox");
    copy_dir(&src, root);
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Reads a pid a job wrote to a file, waiting for it to appear.
pub async fn read_pid(path: &Path) -> i32 {
    let mut pid = 0;
    shoal_testkit::wait_until_async(&format!("{} to hold a pid", path.display()), Duration::from_secs(10), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pid = text.trim().parse().unwrap_or(0);
        let ok = pid > 0;
        async move { ok }
    })
    .await;
    pid
}

/// The value of a Prometheus metric in `/metrics` text (the first series of that name).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            // After the name: labels in braces, if any, then the value.
            let value = if rest.starts_with('{') { rest.split_once('}')?.1 } else { rest };
            value.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Every series of metric `name` in `/metrics` text: its labels (`key`, `value`) and value.
pub fn series(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            // Label values may hold braces (`route="/executions/{id}"`); the value holds none.
            Some(inner) => match inner.rsplit_once('}') {
                Some((labels, value)) => (parse_labels(labels), value),
                None => continue,
            },
            None if rest.starts_with(' ') => (Vec::new(), rest),
            None => continue, // another metric whose name starts with `name`
        };
        if let Ok(v) = value.trim().parse() {
            out.push((labels, v));
        }
    }
    out
}

/// `a="x",b="y"` (values escaped as the text format escapes them) as pairs.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        pairs.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    pairs
}

/// The value of the series of `name` whose labels include all of `labels`, if there is one.
pub fn metric_where(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(text, name).into_iter().find_map(|(have, v)| {
        labels.iter().all(|(k, want)| have.iter().any(|(hk, hv)| hk == k && hv == want)).then_some(v)
    })
}

/// A histogram's count and sum for the series whose labels include all of `labels`
/// (0 and 0 when it has none yet).
pub fn histogram(text: &str, name: &str, labels: &[(&str, &str)]) -> (u64, f64) {
    let count = metric_where(text, &format!("{name}_count"), labels).unwrap_or(0.0) as u64;
    let sum = metric_where(text, &format!("{name}_sum"), labels).unwrap_or(0.0);
    (count, sum)
}

/// A node's `/metrics` text.
pub async fn metrics_text(n: &TestNode) -> String {
    n.http.get(format!("{}/metrics", n.url)).send().await.unwrap().text().await.unwrap()
}
