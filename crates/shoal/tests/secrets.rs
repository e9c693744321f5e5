//! Job secrets end to end: a job reads its secret from its environment and its output is
//! stored with the value masked; an unknown secret is refused at submission; a sandbox's
//! secret wins over a cluster-wide one; who may set and remove them; rotating the key (a
//! previous key reads, rewrap seals again); a node with another key refuses to start; and the
//! value is in no API answer, no execution row and no line of a node's debug log.

#[macro_use]
mod common;

use common::{Backend, TestNode};
use serde_json::{json, Value};
use shoal_testkit::procs::{Server, Spec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const VALUE: &str = "pa55-w0rd-Xq9";

/// A job that prints its secret whole, then split across two writes on stdout and on stderr.
const PRINTS: &str = r#"
command = ["sh", "-c", "echo \"got $DB_PASS\"; printf 'half %.6s' \"$DB_PASS\"; sleep 0.3; printf '%s end\n' \"${{DB_PASS#??????}}\"; printf 'err %.4s' \"$DB_PASS\" >&2; sleep 0.3; printf '%s!\n' \"${{DB_PASS#????}}\" >&2"]
[env]
DB_PASS = "{secret.DB_PASS}"
"#;

fn key(dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(name);
    shoal_service::secrets::generate_key_file(&f).unwrap();
    f
}

/// The standard test configuration with these secrets keys.
fn with_keys(text: String, current: &Path, previous: &[&Path]) -> String {
    let previous: Vec<String> = previous.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    text.replace(
        "[cluster]\n",
        &format!(
            "[cluster]\nsecrets_key_file = {:?}\nsecrets_previous_key_files = [{}]\n",
            current.display().to_string(),
            previous.join(", ")
        ),
    )
}

async fn put(n: &TestNode, auth: Option<&str>, name: &str, sandbox: Option<&str>, value: &str) -> (u16, Value) {
    let query = sandbox.map(|s| format!("?sandbox={s}")).unwrap_or_default();
    let mut req = reqwest::Client::new()
        .put(format!("{}/api/v1/secrets/{name}{query}", n.url))
        .json(&json!({"value": value}))
        .header("authorization", format!("Bearer {}", auth.unwrap_or(common::test_token())));
    req = req.header("host", "localhost");
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn token(n: &TestNode, name: &str, role: &str, sandboxes: &[&str]) -> String {
    let (status, v) = n.post("/api/v1/tokens", json!({"name": name, "role": role, "sandboxes": sandboxes})).await;
    assert_eq!(status, 201, "{v}");
    v["secret"].as_str().unwrap().to_owned()
}

/// Runs `job` of `sandbox` to its end; its final execution and its logs.
async fn run(n: &TestNode, sandbox: &str, job: &str) -> (Value, String) {
    let id = n.submit(json!({"sandbox": sandbox, "job": job})).await;
    let e = n.wait_final(&id, Duration::from_secs(30)).await;
    let logs = n.logs(&id).await;
    (e, logs)
}

/// A job gets its secret in its environment; what it prints is stored as `***`, whole or
/// split across two writes, on both streams; nothing the API answers holds the value, nor any
/// execution row.
async fn a_job_reads_its_secret_and_its_output_is_masked(backend: Backend) {
    let n = TestNode::start(backend).await;
    n.sandbox("etl", &[("jobs/prints.toml", PRINTS)]).await;
    let (status, v) = put(&n, None, "DB_PASS", Some("etl"), VALUE).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!((v["name"].as_str(), v["sandbox"].as_str()), (Some("DB_PASS"), Some("etl")));
    let (e, logs) = run(&n, "etl", "jobs/prints.toml").await;
    assert_eq!(e["state"], "succeeded", "{e}\n{logs}");
    // Each stream alone (the two interleave in no fixed order).
    let id = e["id"].as_str().unwrap();
    let stream = |which: &'static str| {
        let url = format!("{}/api/v1/executions/{id}/logs?stream={which}", n.url);
        let http = n.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let (out, err) = (stream("stdout").await, stream("stderr").await);
    assert_eq!(out, "got ***\nhalf *** end\n", "a value split across writes is masked");
    assert_eq!(err, "err ***!\n", "on stderr too");
    assert!(!logs.contains(VALUE) && !logs.contains("pa55-w") && !logs.contains("0rd-Xq9"), "{logs}");

    // Replacing it: 200, the next run gets the new value.
    let (status, _) = put(&n, None, "DB_PASS", Some("etl"), "another-value").await;
    assert_eq!(status, 200);
    let (_, logs) = run(&n, "etl", "jobs/prints.toml").await;
    assert!(logs.contains("got ***\n") && !logs.contains("another-value"), "{logs}");

    // No answer holds a value: the list, the execution, its spec in the store.
    for path in [
        "/api/v1/secrets",
        "/api/v1/secrets?sandbox=etl",
        &format!("/api/v1/executions/{}", e["id"].as_str().unwrap()),
        "/api/v1/executions",
    ] {
        let (status, body) = n.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let text = body.to_string();
        assert!(!text.contains(VALUE) && !text.contains("another-value"), "{path}: {text}");
    }
    let row = n.store().get_execution(e["id"].as_str().unwrap()).await.unwrap().unwrap();
    let spec = serde_json::to_string(&row.spec).unwrap();
    assert!(spec.contains("{secret.DB_PASS}") && !spec.contains(VALUE), "{spec}");
    let mut n = n;
    n.stop().await;
}

/// A job file naming a secret nobody set: 422 `unknown_secret` naming the secret and the job
/// file, and nothing queued; one set cluster-wide serves every sandbox, and a sandbox's own
/// wins over it.
async fn unknown_secrets_are_refused_and_a_sandboxs_own_wins() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let shows = "command = [\"sh\", \"-c\", \"test \\\"$V\\\" = \\\"$EXPECT\\\" && echo same\"]\n[env]\nV = \"{secret.TOKEN}\"\nEXPECT = \"{want}\"\n[params.want]\n";
    n.sandbox("a", &[("jobs/shows.toml", shows)]).await;
    n.sandbox("b", &[("jobs/shows.toml", shows)]).await;
    let before = n.count_executions().await;
    let (status, v) =
        n.post("/api/v1/executions", json!({"sandbox": "a", "job": "jobs/shows.toml", "params": {"want": "x"}})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (422, Some("unknown_secret")), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`TOKEN`")
            && msg.contains("jobs/shows.toml")
            && msg.contains("shoal secret set TOKEN --sandbox a"),
        "{msg}"
    );
    assert_eq!(n.count_executions().await, before, "nothing was queued");

    assert_eq!(put(&n, None, "TOKEN", None, "cluster-wide-value").await.0, 201);
    assert_eq!(put(&n, None, "TOKEN", Some("b"), "sandbox-b-value").await.0, 201);
    for (sandbox, want) in [("a", "cluster-wide-value"), ("b", "sandbox-b-value")] {
        let id = n.submit(json!({"sandbox": sandbox, "job": "jobs/shows.toml", "params": {"want": want}})).await;
        let e = n.wait_final(&id, Duration::from_secs(30)).await;
        assert_eq!(e["state"], "succeeded", "{sandbox} got another value: {e}\n{}", n.logs(&id).await);
    }
    // A parameter's value cannot name a secret: it stays literal.
    let id = n.submit(json!({"sandbox": "a", "job": "jobs/shows.toml", "params": {"want": "{secret.TOKEN}"}})).await;
    assert_eq!(n.wait_final(&id, Duration::from_secs(30)).await["state"], "failed");

    // Removed between the submission and the start: that attempt fails, saying so.
    let (status, _) = n.post("/api/v1/nodes/n1/suspend", json!({})).await;
    assert_eq!(status, 200);
    let id = n.submit(json!({"sandbox": "b", "job": "jobs/shows.toml", "params": {"want": "x"}})).await;
    let (status, _) = n.request(reqwest::Method::DELETE, "/api/v1/secrets/TOKEN?sandbox=b", None).await;
    assert_eq!(status, 204);
    let (status, _) = n.request(reqwest::Method::DELETE, "/api/v1/secrets/TOKEN", None).await;
    assert_eq!(status, 204);
    let (status, v) = n.request(reqwest::Method::DELETE, "/api/v1/secrets/TOKEN", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let (status, _) = n.post("/api/v1/nodes/n1/resume", json!({})).await;
    assert_eq!(status, 200);
    let e = n.wait_final(&id, Duration::from_secs(30)).await;
    let logs = n.logs(&id).await;
    assert_eq!(e["state"], "failed", "{e}");
    assert!(logs.contains("secret `TOKEN` is no longer set"), "{logs}");
    n.stop().await;
}

/// Setting or removing a sandbox's secret needs `editor` there; a cluster-wide one `admin`
/// for every sandbox; a viewer lists names of what is in scope, never values.
async fn who_may_set_and_see_secrets() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    n.sandbox("team-a", &[]).await;
    n.sandbox("team-b", &[]).await;
    let viewer = token(&n, "viewer", "viewer", &["team-a"]).await;
    let editor = token(&n, "editor-a", "editor", &["team-a"]).await;
    let admin_a = token(&n, "admin-a", "admin", &["team-a"]).await;
    let forbidden = |(status, v): (u16, Value)| {
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
        v["error"]["message"].as_str().unwrap().to_owned()
    };
    let m = forbidden(put(&n, Some(&viewer), "K1", Some("team-a"), "value-1").await);
    assert!(m.contains("needs role `editor`"), "{m}");
    let m = forbidden(put(&n, Some(&editor), "K1", Some("team-b"), "value-1").await);
    assert!(m.contains("team-b"), "{m}");
    let m = forbidden(put(&n, Some(&editor), "K1", None, "value-1").await);
    assert!(m.contains("needs role `admin`"), "{m}");
    let m = forbidden(put(&n, Some(&admin_a), "K1", None, "value-1").await);
    assert!(m.contains("`*`"), "an admin of some sandboxes sets no cluster-wide secret: {m}");
    assert_eq!(put(&n, Some(&editor), "K1", Some("team-a"), "value-1").await.0, 201);
    assert_eq!(put(&n, None, "K2", Some("team-b"), "value-2").await.0, 201);
    assert_eq!(put(&n, None, "K3", None, "value-3").await.0, 201);
    // Bad names and values, an unknown sandbox: 422, nothing set.
    for (name, sandbox, value, code) in [
        ("9lives", Some("team-a"), "value", "invalid_request"),
        ("short", Some("team-a"), "abc", "invalid_request"),
        ("nul", Some("team-a"), "ab\u{0}cd", "invalid_request"),
        ("K4", Some("nope"), "value", "unknown_sandbox"),
    ] {
        let (status, v) = put(&n, None, name, sandbox, value).await;
        assert_eq!((status, v["error"]["code"].as_str()), (422, Some(code)), "{name}: {v}");
        assert!(!v.to_string().contains(value) || value == "value", "{v}");
    }

    let list = |t: String| {
        let url = format!("{}/api/v1/secrets", n.url);
        async move {
            let v: Value = reqwest::Client::new().get(url).bearer_auth(t).send().await.unwrap().json().await.unwrap();
            v["secrets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| format!("{}/{}", s["sandbox"].as_str().unwrap_or("*"), s["name"].as_str().unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(viewer.clone()).await, ["*/K3", "team-a/K1"]);
    assert_eq!(list(common::test_token().to_owned()).await, ["*/K3", "team-a/K1", "team-b/K2"]);
    for (query, want) in [("?sandbox=team-b", 403), ("?nope=1", 400)] {
        let url = format!("{}/api/v1/secrets{query}", n.url);
        let resp = reqwest::Client::new().get(url).bearer_auth(&viewer).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{query}");
    }

    let del = |t: &str, path: &str| {
        reqwest::Client::new().delete(format!("{}{path}", n.url)).bearer_auth(t.to_owned()).send()
    };
    assert_eq!(del(&viewer, "/api/v1/secrets/K1?sandbox=team-a").await.unwrap().status().as_u16(), 403);
    assert_eq!(del(&editor, "/api/v1/secrets/K3").await.unwrap().status().as_u16(), 403);
    assert_eq!(del(&editor, "/api/v1/secrets/K1?sandbox=team-a").await.unwrap().status().as_u16(), 204);
    n.stop().await;
}

/// Rotating the key: a node with the new key and the old one as previous runs jobs with the
/// old secrets; rewrap seals them all again with the new key; then the old key can go. A node
/// whose key sealed none of the store's secrets refuses to start, naming the key ids.
async fn the_key_rotates_and_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (old, new, wrong) = (key(keys.path(), "old.key"), key(keys.path(), "new.key"), key(keys.path(), "wrong.key"));
    let store = common::store_url(Backend::Sqlite, dir.path());
    let root = dir.path().join("sandboxes/etl");
    let mut n = TestNode::start_edited(dir, store.clone(), |t| with_keys(t, &old, &[])).await;
    n.sandbox("etl", &[("jobs/prints.toml", PRINTS)]).await;
    assert_eq!(put(&n, None, "DB_PASS", Some("etl"), VALUE).await.0, 201);
    let (_, v) = n.get("/api/v1/secrets").await;
    let old_id = v["secrets"][0]["key_id"].as_str().unwrap().to_owned();
    let dir = std::mem::replace(&mut n.dir, tempfile::tempdir().unwrap());
    n.stop().await;
    assert!(root.exists());

    // Another key alone: refused, clearly.
    let text = with_keys(common::config_text(dir.path(), &store, ""), &wrong, &[]);
    let config = shoal_server::Config::parse(&text, "test", Vec::<(String, String)>::new()).unwrap();
    let e = match shoal_server::start(config).await {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("a node with another key started"),
    };
    assert!(e.contains(&old_id) && e.contains("wrong.key") && e.contains("secrets_key_file"), "{e}");

    // The new key, the old one as previous: the old secret still opens.
    let mut n = TestNode::start_edited(dir, store.clone(), |t| with_keys(t, &new, &[&old])).await;
    let (e, logs) = run(&n, "etl", "jobs/prints.toml").await;
    assert_eq!(e["state"], "succeeded", "{e}\n{logs}");
    let (status, v) = n.post("/api/v1/secrets/_rewrap", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rewrapped"], 1, "{v}");
    let new_id = v["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    let (_, v) = n.get("/api/v1/secrets").await;
    assert_eq!(v["secrets"][0]["key_id"], new_id.as_str());
    let (_, v) = n.post("/api/v1/secrets/_rewrap", json!({})).await;
    assert_eq!(v["rewrapped"], 0, "{v}");
    let dir = std::mem::replace(&mut n.dir, tempfile::tempdir().unwrap());
    n.stop().await;

    // The old key retired: the node starts and the job still gets its secret.
    let mut n = TestNode::start_edited(dir, store, |t| with_keys(t, &new, &[])).await;
    let (e, logs) = run(&n, "etl", "jobs/prints.toml").await;
    assert_eq!(e["state"], "succeeded", "{e}\n{logs}");
    assert!(logs.contains("got ***"), "{logs}");
    n.stop().await;
}

/// Two nodes given different keys on one fresh store: the second cannot seal a secret the
/// first's secrets would not match (409 `secrets_key_mismatch`), nor rewrap what it cannot open.
async fn nodes_with_different_keys_refuse_to_mix() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_url(Backend::Sqlite, dir.path());
    let mut n1 = TestNode::start_on(tempfile::tempdir().unwrap(), store.clone(), "").await;
    let mut n2 = TestNode::start_named(dir, store, "n2").await;
    assert_eq!(put(&n1, None, "SHARED", None, "value-from-n1").await.0, 201);
    let (status, v) = put(&n2, None, "OTHER", None, "value-from-n2").await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("secrets_key_mismatch")), "{v}");
    let (status, v) = n2.post("/api/v1/secrets/_rewrap", json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (409, Some("secrets_key_mismatch")), "{v}");
    assert!(!v.to_string().contains("value-from-n1"), "{v}");
    n2.stop().await;
    n1.stop().await;
}

/// A real node at debug level: a secret set with the CLI (value on stdin), a job that prints
/// it, and not one line of the node's log nor of the CLI's output holds the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_holds_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = format!("sqlite://{}/shoal.db", dir.path().display());
    common::admit_test_token(&store).await;
    let text = common::config_text(dir.path(), &store, "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let cfg = dir.path().join("n1.toml");
    std::fs::write(&cfg, text).unwrap();
    let spec = Spec::server("n1", SHOAL, &cfg, dir.path().join("n1.log")).env("RUST_LOG", "debug,chitchat=info");
    let mut node = Server::spawn(spec).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://127.0.0.1:{port}");
    node.wait_ready(&url, Instant::now() + Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
    let key = dir.path().join("data/secrets.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600, "the generated key is readable by others");

    let root = dir.path().join("sandboxes/etl");
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    std::fs::write(root.join("jobs/prints.toml"), PRINTS).unwrap();
    let client = common::client(vec![url.clone()]);
    client
        .create_sandbox(&shoal_wire::CreateSandboxRequest {
            name: "etl".into(),
            kind: "shared".into(),
            root: Some(root.display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    let cli = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(SHOAL)
            .args(["--server", &url, "--token", common::test_token()])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
    };
    let (code, out) = cli(&["secret", "set", "DB_PASS", "--sandbox", "etl"], &format!("{VALUE}\n"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("DB_PASS") && !out.contains(VALUE), "{out}");
    let (code, out) = cli(&["secret", "ls"], "");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("DB_PASS") && out.contains("etl") && !out.contains(VALUE), "{out}");
    let (code, out) = cli(&["secret", "set", "EMPTY"], "");
    assert_eq!(code, Some(2), "an empty value is a usage error: {out}");

    let id = client
        .submit(&shoal_wire::SubmitRequest {
            sandbox: Some("etl".into()),
            job: Some("jobs/prints.toml".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .0
        .id;
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        let e = client.execution(&id).await.unwrap();
        if !matches!(e.state, shoal_wire::ExecutionState::Queued | shoal_wire::ExecutionState::Running) {
            break e;
        }
        assert!(Instant::now() < deadline, "{e:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, logs) = cli(&["logs", &id], "");
    assert_eq!(e.state, shoal_wire::ExecutionState::Succeeded, "{logs}");
    assert!(
        logs.contains("got ***") && logs.contains("***!") && !logs.contains(VALUE),
        "the CLI shows the value masked: {logs}"
    );
    // The value went through the node (set, sealed, opened, into a child, masked): it is in no
    // line of its debug log, which does say what happened.
    let log = node.logs();
    assert!(log.contains("secret set"), "the log is not at debug level, or secrets are not logged at all:\n{log}");
    for part in [VALUE, "pa55-w0rd"] {
        assert!(!log.contains(part), "a log line holds the value:\n{log}");
    }
    // The store has neither the value in the clear nor the key.
    let db = std::fs::read(dir.path().join("shoal.db")).unwrap();
    let key_text = std::fs::read_to_string(&key).unwrap();
    for needle in [VALUE.as_bytes(), key_text.trim().as_bytes()] {
        assert!(!db.windows(needle.len()).any(|w| w == needle), "the store holds a value or the key in the clear");
    }
    node.kill().unwrap();
}

on_both!(a_job_reads_its_secret_and_its_output_is_masked);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_secrets_and_precedence() {
    unknown_secrets_are_refused_and_a_sandboxs_own_wins().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions() {
    who_may_set_and_see_secrets().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_wrong_keys() {
    the_key_rotates_and_a_wrong_key_is_refused().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys() {
    nodes_with_different_keys_refuse_to_mix().await
}
