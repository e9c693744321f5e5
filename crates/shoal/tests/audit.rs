//! The audit trail on real nodes: every class of change is recorded with its principal, node,
//! action, target and outcome (denied ones too), logins with the name tried, reads and
//! requests without a valid credential not at all; a forwarded change once; a change whose
//! client went away still gets its row, and changes past the bound on those in flight wait
//! and never start once their client leaves; `GET /api/v1/audit` is admin-only, filters and pages;
//! `audit.retention` prunes; `shoal audit` prints it.

#[macro_use]
mod common;

use common::{call, Backend, TestNode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(20);

on_both!(
    every_class_of_change_is_recorded_with_who_what_and_how_it_ended,
    the_trail_is_for_admins_and_filters_and_pages
);

/// The entries `GET /api/v1/audit?QUERY` answers (one page of up to 1000).
async fn entries(n: &TestNode, query: &str) -> Vec<Value> {
    let (status, body) = n.get(&format!("/api/v1/audit?limit=1000&{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

/// Waits until `GET /api/v1/audit?QUERY` answers at least `count` entries, and answers them.
async fn wait_entries(n: &TestNode, query: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let found = entries(n, query).await;
        if found.len() >= count {
            return found;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{count} audit entries for `{query}` not written within {T:?}; found {found:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every entry `GET /api/v1/audit?QUERY` answers, page after page of `limit` by cursor.
async fn every_page(n: &TestNode, query: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = n.get(&format!("/api/v1/audit?{query}&limit={limit}{after}")).await;
        assert_eq!(status, 200, "{page}");
        all.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
}

/// The one entry of `action` on `target`, once it is written.
async fn entry(n: &TestNode, action: &str, target: &str) -> Value {
    let found = wait_entries(n, &format!("action={action}&target={target}"), 1).await;
    let exact: Vec<_> = found.into_iter().filter(|e| e["target"] == target).collect();
    assert_eq!(exact.len(), 1, "{action} on {target}: {exact:#?}");
    exact[0].clone()
}

/// (principal, node, action, target, outcome, status, code) of an entry.
fn summary(e: &Value) -> (String, String, String, String, String, u64, String) {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
    (s("principal"), s("node"), s("action"), s("target"), s("outcome"), e["status"].as_u64().unwrap(), s("code"))
}

fn row(
    principal: &str,
    action: &str,
    target: &str,
    outcome: &str,
    status: u64,
    code: &str,
) -> (String, String, String, String, String, u64, String) {
    let s = |v: &str| v.to_owned();
    (s(principal), s("n1"), s(action), s(target), s(outcome), status, s(code))
}

/// A whole HTTP/1.1 request posting `body` (JSON) to `path` with the harness's token, to send
/// on a socket of one's own and hang up.
fn raw_post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        common::test_token(),
        body.len()
    )
}

/// A token made through the API, with its `Authorization` value.
async fn mint(n: &TestNode, body: Value) -> String {
    let (status, v) = n.post("/api/v1/tokens", body).await;
    assert_eq!(status, 201, "{v}");
    format!("Bearer {}", v["secret"].as_str().unwrap())
}

async fn every_class_of_change_is_recorded_with_who_what_and_how_it_ended(backend: Backend) {
    let mut n = TestNode::start(backend).await;
    let admin = "token:test-admin";
    let m = reqwest::Method::PUT;
    // Sandboxes and files.
    n.sandbox("etl", &[]).await;
    assert_eq!(summary(&entry(&n, "createSandbox", "etl").await), row(admin, "createSandbox", "etl", "ok", 201, ""));
    let put = n.http.request(m, format!("{}/api/v1/sandboxes/etl/files/notes/a.txt", n.url)).body("hi\n");
    assert_eq!(put.send().await.unwrap().status(), 201);
    let (status, _) = n.request(reqwest::Method::DELETE, "/api/v1/sandboxes/etl/files/notes/a.txt", None).await;
    assert_eq!(status, 204);
    for action in ["putSandboxFile", "deleteSandboxFile"] {
        let e = entry(&n, action, "etl/notes/a.txt").await;
        assert_eq!((e["principal"].as_str(), e["outcome"].as_str()), (Some(admin), Some("ok")), "{e}");
    }
    // Schedules and listeners.
    let schedule = json!({"name": "nightly", "sandbox": "etl", "job": "jobs/greet.toml", "cron": "0 3 * * *", "params": {"name": "n"}});
    assert_eq!(n.post("/api/v1/schedules", schedule.clone()).await.0, 201);
    assert_eq!(n.post("/api/v1/schedules", schedule).await.0, 409);
    let (status, _) =
        n.request(reqwest::Method::PATCH, "/api/v1/schedules/nightly", Some(json!({"enabled": false}))).await;
    assert_eq!(status, 200);
    assert_eq!(n.request(reqwest::Method::DELETE, "/api/v1/schedules/nightly", None).await.0, 204);
    let created = wait_entries(&n, "action=createSchedule", 2).await;
    // The one that failed names nothing: its answer made nothing.
    assert_eq!(
        created.iter().map(summary).collect::<Vec<_>>(),
        [
            row(admin, "createSchedule", "", "failed", 409, "already_exists"),
            row(admin, "createSchedule", "nightly", "ok", 201, ""),
        ]
    );
    assert_eq!(
        summary(&entry(&n, "patchSchedule", "nightly").await),
        row(admin, "patchSchedule", "nightly", "ok", 200, "")
    );
    assert_eq!(entry(&n, "deleteSchedule", "nightly").await["status"], 204);
    let hook = json!({"name": "deploy", "kind": "webhook", "sandbox": "etl", "job": "jobs/greet.toml", "params": {"name": "x"}});
    assert_eq!(n.post("/api/v1/listeners", hook).await.0, 201);
    assert_eq!(n.request(reqwest::Method::DELETE, "/api/v1/listeners/deploy", None).await.0, 204);
    entry(&n, "createListener", "deploy").await;
    entry(&n, "deleteListener", "deploy").await;
    // Runs and cancels.
    let id = n.submit(json!({"command": ["sleep", "30"]})).await;
    n.wait_state(&id, "running", T).await;
    let (status, v) = n.post(&format!("/api/v1/executions/{id}/cancel"), json!({})).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(summary(&entry(&n, "submitExecution", &id).await), row(admin, "submitExecution", &id, "ok", 201, ""));
    assert_eq!(summary(&entry(&n, "cancelExecution", &id).await), row(admin, "cancelExecution", &id, "ok", 202, ""));
    // Drain, suspend and resume.
    for action in ["drain", "suspend", "resume"] {
        let (status, v) = n.post(&format!("/api/v1/nodes/n1/{action}"), json!({})).await;
        assert_eq!(status, 200, "{action}: {v}");
    }
    for action in ["drainNode", "suspendNode", "resumeNode"] {
        assert_eq!(summary(&entry(&n, action, "n1").await), row(admin, action, "n1", "ok", 200, ""));
    }
    // Tokens and users.
    mint(&n, json!({"name": "watcher", "role": "viewer"})).await;
    let made = entry(&n, "createToken", "watcher").await;
    assert_eq!(made["outcome"], "ok");
    let (status, revoked) = n.request(reqwest::Method::DELETE, "/api/v1/tokens/watcher", None).await;
    assert_eq!(status, 200, "{revoked}");
    entry(&n, "revokeToken", "watcher").await;
    let password = "a password long enough";
    assert_eq!(n.post("/api/v1/users", json!({"name": "ann", "password": password, "role": "admin"})).await.0, 201);
    // Logins: one that works, one with a wrong password, one for a user that does not exist.
    let login = |name: &str, password: &str| {
        let body = json!({"name": name, "password": password});
        let url = format!("{}/api/v1/sessions", n.url);
        async move { reqwest::Client::new().post(url).json(&body).send().await.unwrap() }
    };
    let ok = login("ann", password).await;
    assert_eq!(ok.status(), 201);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = ok.json::<Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(login("ann", "wrong password here").await.status(), 401);
    assert_eq!(login("mallory", "wrong password here").await.status(), 401);
    let logins = wait_entries(&n, "action=createSession", 3).await;
    assert_eq!(
        logins.iter().map(summary).collect::<Vec<_>>(),
        [
            row("user:mallory", "createSession", "", "denied", 401, "invalid_credentials"),
            row("user:ann", "createSession", "", "denied", 401, "invalid_credentials"),
            row("user:ann", "createSession", "", "ok", 201, ""),
        ]
    );
    // A change with the cookie but not its CSRF token is refused, and recorded as the user's.
    let no_csrf = reqwest::Client::new()
        .post(format!("{}/api/v1/sandboxes", n.url))
        .header("cookie", &cookie)
        .json(&json!({"name": "csrf", "kind": "shared", "root": "/tmp/csrf"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), 403);
    let refused = wait_entries(&n, "principal=user:ann&action=createSandbox", 1).await;
    assert_eq!(summary(&refused[0]), row("user:ann", "createSandbox", "", "denied", 403, "csrf_failed"));
    // The user's own changes are theirs; logging out is one.
    let by_user = reqwest::Client::new()
        .delete(format!("{}/api/v1/sessions", n.url))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(by_user.status(), 204);
    assert_eq!(wait_entries(&n, "principal=user:ann&action=deleteSession", 1).await[0]["outcome"], "ok");
    assert_eq!(n.request(reqwest::Method::DELETE, "/api/v1/users/ann", None).await.0, 204);
    entry(&n, "createUser", "ann").await;
    entry(&n, "deleteUser", "ann").await;

    // Denied: a role too low (refused before the handler), a sandbox out of scope (by it).
    let watcher = mint(&n, json!({"name": "viewer2", "role": "viewer"})).await;
    let body = json!({"name": "nope", "kind": "shared", "root": "/tmp/nope"});
    assert_eq!(call(&n, Some(&watcher), "POST", "/api/v1/sandboxes", Some(body.clone())).await.0, 403);
    let denied = wait_entries(&n, "principal=token:viewer2", 1).await;
    assert_eq!(summary(&denied[0]), row("token:viewer2", "createSandbox", "", "denied", 403, "forbidden"));
    let scoped = mint(&n, json!({"name": "team", "role": "editor", "sandboxes": ["team-*"]})).await;
    assert_eq!(call(&n, Some(&scoped), "DELETE", "/api/v1/sandboxes/etl/files/jobs/greet.toml", None).await.0, 403);
    let e = entry(&n, "deleteSandboxFile", "etl/jobs/greet.toml").await;
    assert_eq!(summary(&e), row("token:team", "deleteSandboxFile", "etl/jobs/greet.toml", "denied", 403, "forbidden"));

    // Not recorded: no credential, a credential that is not valid, and reads.
    assert_eq!(call(&n, None, "POST", "/api/v1/sandboxes", Some(body.clone())).await.0, 401);
    let forged =
        format!("Bearer {}", shoal_wire::format_token(shoal_wire::TokenKind::Api, &[7; shoal_wire::TOKEN_BYTES]));
    assert_eq!(call(&n, Some(&forged), "POST", "/api/v1/sandboxes", Some(body)).await.0, 401);
    let (status, _) = n.post("/api/v1/schedules/preview", json!({"cron": "@daily"})).await;
    assert_eq!(status, 200);
    n.get("/api/v1/executions").await;
    // A last change: once it is written, so is everything this node queued before it.
    assert_eq!(n.post("/api/v1/nodes/n1/resume", json!({})).await.0, 200);
    wait_entries(&n, "action=resumeNode", 2).await;
    let all = entries(&n, "").await;
    for e in &all {
        let action = e["action"].as_str().unwrap();
        assert!(!action.starts_with("list") && !action.starts_with("get") && action != "previewCron", "a read: {e}");
        assert!(e["status"] != 401 || action == "createSession", "no valid credential: {e}");
        assert_eq!((e["node"].as_str(), &e["served_by"]), (Some("n1"), &Value::Null), "{e}");
    }
    n.stop().await;
}

async fn the_trail_is_for_admins_and_filters_and_pages(backend: Backend) {
    let mut n = TestNode::start(backend).await;
    let viewer = mint(&n, json!({"name": "viewer", "role": "viewer"})).await;
    let team_admin = mint(&n, json!({"name": "team-admin", "role": "admin", "sandboxes": ["team-*"]})).await;
    for auth in [&viewer, &team_admin] {
        let (status, v) = call(&n, Some(auth), "GET", "/api/v1/audit", None).await;
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    }
    for i in 0..7 {
        n.sandbox(&format!("s{i}"), &[]).await;
    }
    let all = wait_entries(&n, "action=createSandbox", 7).await;
    assert_eq!(
        all.iter().map(|e| e["target"].as_str().unwrap()).collect::<Vec<_>>(),
        ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]
    );
    // Pages of three, by cursor, cover it once each.
    let seen: Vec<String> = every_page(&n, "action=createSandbox", 3)
        .await
        .iter()
        .map(|e| e["target"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]);
    // Filters: principal, target prefix, outcome, node, time.
    assert_eq!(entries(&n, "principal=token:test-admin&action=createSandbox").await.len(), 7);
    assert!(entries(&n, "principal=token:viewer").await.is_empty());
    assert_eq!(entries(&n, "target=s3").await.len(), 1);
    assert_eq!(entries(&n, "outcome=ok&action=createSandbox&node=n1").await.len(), 7);
    assert!(entries(&n, "outcome=denied").await.is_empty());
    assert!(entries(&n, "node=n9").await.is_empty());
    assert_eq!(entries(&n, "since=1h&action=createSandbox").await.len(), 7);
    assert!(entries(&n, "until=1h").await.is_empty());
    let first = &all[6]["at"];
    let since = entries(&n, &format!("since={}&action=createSandbox", first.as_str().unwrap())).await;
    assert_eq!(since.len(), 7, "since the first one's own time, inclusive");
    // The same instant written with another offset is the same filter (a `+` is `%2B` in a
    // query); a moment later leaves the first out.
    let at = chrono::DateTime::parse_from_rfc3339(first.as_str().unwrap()).unwrap();
    let elsewhere = at.with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 30 * 60).unwrap());
    let text = elsewhere.to_rfc3339_opts(chrono::SecondsFormat::Millis, false).replace('+', "%2B");
    assert!(text.ends_with("%2B05:30"), "{text}");
    assert_eq!(entries(&n, &format!("since={text}&action=createSandbox")).await.len(), 7, "{text}");
    let later = (at + chrono::Duration::milliseconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let after_first = entries(&n, &format!("since={later}&action=createSandbox")).await;
    assert!(after_first.len() < 7 && after_first.iter().all(|e| e["target"] != "s0"), "{later}: {after_first:#?}");
    assert!(entries(&n, "since=2000-01-01T00:00:00Z&until=2001-01-01T00:00:00Z").await.is_empty());
    // Bad queries say what is wrong.
    for (query, says) in [
        ("outcome=maybe", "unknown outcome `maybe`"),
        ("limit=0", "limit `0`"),
        ("limit=x", "limit `x`"),
        ("cursor=abc", "cursor `abc`"),
        ("since=yesterday", "`since` `yesterday`"),
        ("until=2026-01-31T08:00:00", "RFC 3339 with its offset"),
        ("since=101years", "`since`: duration `101years` is too long"),
        ("colour=red", "filters are principal"),
    ] {
        let (status, v) = n.get(&format!("/api/v1/audit?{query}")).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_query")), "{query}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{query}: {v}");
    }
    n.stop().await;
}

/// A change forwarded to the node that serves it is recorded once, by the node the client
/// sent it to, naming the node that served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_change_is_recorded_once_by_the_node_the_client_reached() {
    let db = tempfile::tempdir().unwrap();
    let store = common::store_url(Backend::Sqlite, db.path());
    let named = |id: &'static str| move |t: String| t.replace("node_id = \"n1\"", &format!("node_id = \"{id}\""));
    let mut n1 = TestNode::start_edited(tempfile::tempdir().unwrap(), store.clone(), named("n1")).await;
    let mut n2 = TestNode::start_edited(tempfile::tempdir().unwrap(), store.clone(), named("n2")).await;
    let (status, v) = n1.post("/api/v1/nodes/n2/drain", json!({})).await;
    assert_eq!(status, 200, "{v}");
    let drained = wait_entries(&n1, "action=drainNode", 1).await;
    assert_eq!(drained.len(), 1, "{drained:#?}");
    assert_eq!(
        (drained[0]["node"].as_str(), drained[0]["served_by"].as_str(), drained[0]["target"].as_str()),
        (Some("n1"), Some("n2"), Some("n2"))
    );
    // A sandbox local to n2, registered through n1 (n2 makes its folder): its name is read from
    // the answer n2 streamed back.
    let holder = tempfile::tempdir_in(std::fs::canonicalize(std::env::temp_dir()).unwrap()).unwrap();
    let root = holder.path().join("loc");
    let body = json!({"name": "loc", "kind": "local", "node": "n2", "root": root.display().to_string()});
    let (status, v) = n1.post("/api/v1/sandboxes", body).await;
    assert_eq!(status, 201, "{v}");
    let made = entry(&n1, "createSandbox", "loc").await;
    assert_eq!((made["node"].as_str(), made["served_by"].as_str()), (Some("n1"), Some("n2")), "{made}");
    // A change made on n2 itself: once its row is written, anything n2 queued before it is too.
    let (status, v) = n2.post("/api/v1/nodes/n2/resume", json!({})).await;
    assert_eq!(status, 200, "{v}");
    let by_n2 = wait_entries(&n2, "node=n2", 1).await;
    assert_eq!(by_n2.len(), 1, "n2 recorded only its own change: {by_n2:#?}");
    assert_eq!(by_n2[0]["action"], "resumeNode");
    assert_eq!(entries(&n2, "action=drainNode").await.len(), 1);
    n2.stop().await;
    n1.stop().await;
}

/// A client that sends a change and goes away at once (before the answer) still leaves its
/// row: the handler runs on to its end, and the row is queued after it. (A request hyper never
/// started, its client gone before, changes nothing and leaves none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_after_sending_a_change_still_gets_its_row() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let addr = n.url.trim_start_matches("http://").to_owned();
    // Making a user hashes its password (Argon2id, tens of milliseconds): the client is gone
    // long before the answer. A request whose client closes at once may also never be started
    // by hyper: then nothing is made and nothing recorded. So several are sent, and each one
    // made must have its row.
    // Sent 8 at a time, again while none was made (on a busy machine hyper may see every
    // hang-up before it starts the request), at most 10 times.
    const SENT: usize = 8;
    let mut sent = 0;
    let mut more = true;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if more && sent < SENT * 10 {
            for i in sent..sent + SENT {
                let body = json!({"name": format!("gone{i}"), "password": "a password long enough", "role": "viewer"});
                let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                stream.write_all(raw_post("/api/v1/users", &body.to_string()).as_bytes()).await.unwrap();
                drop(stream);
            }
            sent += SENT;
            more = false;
        }
        // Once nothing is in flight or queued, every user made has its row, and no row names
        // one not made (a row lost stays missing however long this waits).
        let text = common::metrics_text(&n).await;
        let settled = common::metric(&text, "shoal_changes_in_flight") == 0.0
            && common::metric(&text, "shoal_audit_queued") == 0.0;
        let (_, users) = n.get("/api/v1/users").await;
        let mut made: Vec<String> = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u["name"].as_str().filter(|n| n.starts_with("gone")).map(str::to_owned))
            .collect();
        made.sort();
        let rows = entries(&n, "action=createUser&target=gone").await;
        for e in &rows {
            assert_eq!((e["outcome"].as_str(), e["status"].as_u64()), (Some("ok"), Some(201)), "{e}");
        }
        let mut recorded: Vec<String> = rows.iter().map(|e| e["target"].as_str().unwrap().to_owned()).collect();
        recorded.sort();
        if settled && made == recorded {
            if !made.is_empty() {
                break;
            }
            more = true;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "of {sent} requests whose client left, users made {made:?}, rows {recorded:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.stop().await;
}

/// Changes run on their own task so a client's hang-up cannot stop them half done, but at
/// most `MAX_CHANGES_IN_FLIGHT` (1024) at once per node: clients that send changes and hang
/// up while the store is slow cannot pile tasks up. Past it a change waits for a turn, and
/// one whose client leaves meanwhile never starts: no change, no audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_beyond_the_bound_wait_and_never_start_once_their_client_leaves() {
    const BOUND: usize = 1024;
    const SENT: usize = BOUND + 76;
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(Backend::Sqlite, dir.path());
    let file = dir.path().join("shoal.db");
    // More connections than turns, so that it is the turns that run out; a lease long enough
    // that the store held below does not cut the node off.
    let mut n = TestNode::start_edited(dir, url, |t| {
        t.replace("max_request_bytes = 65536", "max_request_bytes = 65536\nmax_connections = 4096")
            .replace("lease_ttl = \"2s\"", "lease_ttl = \"60s\"")
    })
    .await;
    let addr = n.url.trim_start_matches("http://").to_owned();
    // Another process holds the store's write lock: every change that starts waits for it.
    let outside = rusqlite::Connection::open(&file).unwrap();
    outside.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut clients = Vec::with_capacity(SENT);
    for i in 0..SENT {
        let body = json!({"name": format!("t{i}"), "role": "viewer"}).to_string();
        let request = raw_post("/api/v1/tokens", &body);
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        clients.push(s);
    }
    let gauges = || {
        let n = n.url.clone();
        async move {
            let text = common::http().get(format!("{n}/metrics")).send().await.unwrap().text().await.unwrap();
            (common::metric(&text, "shoal_changes_in_flight"), common::metric(&text, "shoal_changes_waiting"))
        }
    };
    let until = |want: (f64, f64)| async move {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let (running, waiting) = gauges().await;
            assert!(running <= BOUND as f64, "{running} changes in flight, past the bound");
            if (running, waiting) == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "in flight {running}, waiting {waiting}; want {want:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    until((BOUND as f64, (SENT - BOUND) as f64)).await;
    // Every client hangs up: the changes under way go on, the waiting ones are dropped.
    drop(clients);
    until((BOUND as f64, 0.0)).await;
    // The store is back: the changes under way end, and no other starts.
    outside.execute_batch("ROLLBACK").unwrap();
    until((0.0, 0.0)).await;

    let deadline = tokio::time::Instant::now() + T;
    let rows = loop {
        let rows = every_page(&n, "action=createToken", 1000).await;
        if rows.len() >= BOUND || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rows.len(), BOUND, "createToken rows");
    assert!(rows.iter().all(|r| r["outcome"] == "ok" && r["status"] == 201), "{:#?}", rows.first());
    let (status, tokens) = n.get("/api/v1/tokens").await;
    assert_eq!(status, 200, "{tokens}");
    let ours = |name: &str| name.strip_prefix('t').is_some_and(|i| i.parse::<usize>().is_ok());
    let made = tokens["tokens"].as_array().unwrap().iter().filter(|t| ours(t["name"].as_str().unwrap())).count();
    assert_eq!(made, BOUND, "tokens made");
    n.stop().await;
}

/// With `audit.retention` short, rows go once they are older; newer ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_the_retention_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_url(Backend::Sqlite, dir.path());
    let mut n = TestNode::start_on(dir, store, "[audit]\nretention = \"2s\"").await;
    n.sandbox("old", &[]).await;
    wait_entries(&n, "target=old", 1).await;
    let deadline = tokio::time::Instant::now() + T;
    while !entries(&n, "target=old").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the row outlived its retention by {T:?}");
        // Something newer meanwhile, which must outlive the old one.
        n.post("/api/v1/nodes/n1/resume", json!({})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!entries(&n, "action=resumeNode").await.is_empty(), "the newest rows are kept");
    n.stop().await;
}

/// `shoal audit` prints the trail as a table (or JSON), with the filters of the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_audit_prints_the_trail() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    n.sandbox("cli", &[]).await;
    let viewer = mint(&n, json!({"name": "peeker", "role": "viewer"})).await;
    let body = json!({"name": "x", "kind": "shared", "root": "/tmp/x"});
    assert_eq!(call(&n, Some(&viewer), "POST", "/api/v1/sandboxes", Some(body)).await.0, 403);
    wait_entries(&n, "principal=token:peeker", 1).await;
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
                .args(args)
                .env_remove("SHOAL_SERVER")
                .output()
                .unwrap()
        })
    };
    let base = |extra: &[&str]| {
        let mut a =
            vec!["audit".to_owned(), "--server".into(), n.url.clone(), "--token".into(), common::test_token().into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let out = run(base(&["--action", "createSandbox"])).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TIME", "PRINCIPAL", "NODE", "ACTION", "TARGET", "OUTCOME", "STATUS"], "{text}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&cells[1..], ["token:peeker", "n1", "createSandbox", "-", "denied", "403", "forbidden"], "{text}");
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&cells[1..], ["token:test-admin", "n1", "createSandbox", "cli", "ok", "201"], "{text}");
    // JSON for scripts, one page at a time with the next page's cursor on stderr.
    let out = run(base(&["--json", "--outcome", "ok", "--since", "1h", "--limit", "1"])).await.unwrap();
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 1, "{page}");
    assert!(page["next_cursor"].is_string(), "{page}");
    let out = run(base(&["--limit", "1"])).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("more: shoal audit --cursor "), "{out:?}");
    // A bad outcome is a usage error; a viewer's token is refused.
    let out = run(base(&["--outcome", "maybe"])).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let secret = viewer.trim_start_matches("Bearer ").to_owned();
    let args = vec!["audit".to_owned(), "--server".into(), n.url.clone(), "--token".into(), secret];
    let out = run(args).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("(forbidden)"), "{out:?}");
    n.stop().await;
}

/// Rows made while the store is away wait in the node's queue and are written once it is
/// back, with the time of their request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_made_while_the_store_is_away_are_written_when_it_is_back() {
    let pg = shoal_testkit::postgres();
    let db_url = pg.fresh_database();
    let proxy = common::proxy::Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let via_proxy = db_url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let mut n = TestNode::start_on(tempfile::tempdir().unwrap(), via_proxy, "").await;
    let watcher = shoal_store::Store::open(&db_url, 1).await.unwrap();
    // The token is now in the node's cache (trusted for 500 ms): the change below is
    // authenticated without the store, and its handler fails for want of it.
    assert_eq!(n.get("/api/v1/nodes").await.0, 200);
    proxy.cut();
    let (status, v) = n.post("/api/v1/nodes/n1/suspend", json!({})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("store_unavailable")), "{v}");
    let answered = watcher.now_ms().await.unwrap();
    // The `audit` worker, woken by the row, finds the store away and keeps it. The store
    // stays away for 400 ms on its own clock, so that the row's time tells its request's
    // (before `answered`) from its write's (after `answered + 400`) past any rounding.
    let away = Duration::from_millis(400);
    let deadline = tokio::time::Instant::now() + T;
    while watcher.now_ms().await.unwrap() < answered + away.as_millis() as i64 {
        assert!(tokio::time::Instant::now() < deadline, "the store's clock did not move for {T:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.restore();
    let filter = shoal_store::AuditFilter { action: Some("suspendNode".into()), limit: 10, ..Default::default() };
    let deadline = tokio::time::Instant::now() + T;
    let rows = loop {
        let rows = watcher.list_audit(&filter).await.unwrap();
        if !rows.is_empty() {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued row was not written within {T:?} of the store's return"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r = &rows[0];
    assert_eq!(
        (r.record.principal.as_str(), r.record.status, r.record.code.as_deref()),
        ("token:test-admin", 503, Some("store_unavailable"))
    );
    // Its age is counted in whole milliseconds, twice (queued, then waiting for its
    // transaction), so it may be a few ms late; a row with its write's time is 400 ms late.
    let slack = 50;
    assert!(
        r.at <= answered + slack,
        "the row has its request's time (at {}, answered at {answered}), not its write's (after {})",
        r.at,
        answered + away.as_millis() as i64
    );
    n.stop().await;
}
