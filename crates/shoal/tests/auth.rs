//! Access control: every route needs a credential but the health checks and webhooks; tokens'
//! roles and sandbox scopes are enforced on every operation, also when a request is forwarded;
//! a revoked or expired token is refused by every node within a second; credentials never go
//! in a URL nor in a log line.

#[macro_use]
mod common;

use common::{call, Backend, TestNode};
use serde_json::{json, Value};
use shoal_api::auth::{Access, ACCESS};
use shoal_wire::Role;
use std::time::{Duration, Instant};

/// Makes a token through the API (as the harness's admin) and answers its secret.
async fn token(n: &TestNode, name: &str, role: &str, sandboxes: Option<&[&str]>) -> String {
    let mut body = json!({"name": name, "role": role});
    if let Some(s) = sandboxes {
        body["sandboxes"] = json!(s);
    }
    let (status, v) = n.post("/api/v1/tokens", body).await;
    assert_eq!(status, 201, "{v}");
    v["secret"].as_str().unwrap().to_owned()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Every operation of the OpenAPI document, with its path's parameters filled in.
async fn operations(n: &TestNode) -> Vec<(String, String, String)> {
    let (status, doc) = n.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(id) = op["operationId"].as_str() else { continue };
            let filled: String =
                path.split('/').map(|seg| if seg.starts_with('{') { "x" } else { seg }).collect::<Vec<_>>().join("/");
            out.push((id.to_owned(), method.to_ascii_uppercase(), format!("/api/v1{filled}")));
        }
    }
    assert!(out.len() > 40, "{out:?}");
    out
}

fn access(op: &str) -> Access {
    ACCESS.iter().find(|(id, _)| *id == op).map(|(_, a)| *a).unwrap_or_else(|| panic!("{op} has no access entry"))
}

/// Deny by default: without a credential every operation but the health checks and webhooks
/// is 401 `unauthenticated` (with `WWW-Authenticate`), and changes nothing; a viewer is 403
/// `forbidden` on every operation that needs more, naming the role it needs.
async fn every_operation_needs_its_role(backend: Backend) {
    let n = TestNode::start(backend).await;
    let viewer = token(&n, "viewer", "viewer", None).await;
    let before = n.count_executions().await;
    for (op, method, path) in operations(&n).await {
        let body = matches!(method.as_str(), "POST" | "PUT" | "PATCH").then(|| json!({}));
        let (status, v) = call(&n, None, &method, &path, body.clone()).await;
        match access(&op) {
            Access::Public => assert_ne!(v["error"]["code"], "unauthenticated", "{op} is public: {v}"),
            Access::Role(_) | Access::Cluster => {
                let need = match access(&op) {
                    Access::Role(r) => r,
                    _ => Role::Admin,
                };
                assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{op}: {v}");
                let (status, v) = call(&n, Some(&bearer(&viewer)), &method, &path, body).await;
                if op == "deleteSession" {
                    // Logging out needs the session cookie, which a bearer token is not.
                    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{op}: {v}");
                    assert!(v["error"]["message"].as_str().unwrap().contains("cookie"), "{op}: {v}");
                } else if need > Role::Viewer {
                    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{op}: {v}");
                    let msg = v["error"]["message"].as_str().unwrap();
                    assert!(
                        msg.contains(&format!("needs role `{need}`")) && msg.contains("token:viewer"),
                        "{op}: {msg}"
                    );
                } else {
                    assert!(![401, 403].contains(&status), "{op} refused a viewer: {status} {v}");
                }
            }
        }
    }
    // Also for paths no route has: who asks must be someone before learning what exists.
    let (status, v) = call(&n, None, "GET", "/api/v1/no/such/thing", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");
    let resp = reqwest::get(format!("{}/api/v1/executions", n.url)).await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"shoal\"");
    assert_eq!(n.count_executions().await, before, "a refused request changed something");
}

/// Malformed, mistyped, unknown and wrongly sent credentials: 401 `invalid_token` (a token in
/// the query string: 400 `token_in_query`), each saying what is wrong.
async fn bad_credentials_are_refused_with_what_is_wrong(backend: Backend) {
    let n = TestNode::start(backend).await;
    let good = common::test_token();
    let mut typo = good.to_owned();
    typo.replace_range(20..21, if &good[20..21] == "2" { "3" } else { "2" });
    let unknown = shoal_wire::format_token(shoal_wire::TokenKind::Api, &[1; 32]);
    for (auth, want) in [
        ("Bearer nonsense".to_owned(), "not a shoal token"),
        (bearer(&typo), "mistyped"),
        (bearer(&good[..good.len() - 3]), "truncated"),
        (bearer(&unknown), "not known to the cluster"),
        (format!("Basic {good}"), "must be `Bearer TOKEN`"),
    ] {
        let (status, v) = call(&n, Some(&auth), "GET", "/api/v1/executions", None).await;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("invalid_token")), "{auth}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(want), "{auth}: {v}");
        assert!(!v.to_string().contains(good), "the answer repeats the token: {v}");
    }
    // Two Authorization headers.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/executions", n.url))
        .header("authorization", bearer(good))
        .header("authorization", bearer(good))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // In the URL, even with a valid header beside it, and on a webhook too.
    for path in [format!("/api/v1/executions?access_token={good}"), format!("/api/v1/nodes?x={good}")] {
        let (status, v) = call(&n, Some(&bearer(good)), "GET", &path, None).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("token_in_query")), "{path}: {v}");
    }
    let (status, v) = call(&n, None, "POST", "/api/v1/hooks/x?token=abc", Some(json!({}))).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("token_in_query")), "{v}");
    // The health checks stay open, whatever is sent.
    let (status, _) = call(&n, Some("Bearer nonsense"), "GET", "/health/ready", None).await;
    assert_eq!(status, 200);
}

/// Scopes: a token for some sandboxes lists, reads and runs only in them; 403 elsewhere, naming
/// the sandbox; an inline command needs `admin` and every sandbox.
async fn roles_and_scopes_limit_what_a_token_does(backend: Backend) {
    let n = TestNode::start(backend).await;
    n.sandbox("team-a", &[]).await;
    n.sandbox("team-b", &[]).await;
    let run_a = token(&n, "run-a", "runner", Some(&["team-a*"])).await;
    let edit_a = token(&n, "edit-a", "editor", Some(&["team-a"])).await;
    let in_b = n.submit(json!({"sandbox": "team-b", "job": "jobs/noop.toml"})).await;
    let inline = n.submit(json!({"command": ["true"]})).await;
    let a = Some(bearer(&run_a));

    // Lists show what is in scope only.
    let (_, v) = call(&n, a.as_deref(), "GET", "/api/v1/sandboxes", None).await;
    let names: Vec<&str> = v["sandboxes"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["team-a"], "{v}");
    let ran = call(
        &n,
        a.as_deref(),
        "POST",
        "/api/v1/executions",
        Some(json!({"sandbox": "team-a", "job": "jobs/noop.toml"})),
    )
    .await;
    assert_eq!(ran.0, 201, "{}", ran.1);
    let (_, v) = call(&n, a.as_deref(), "GET", "/api/v1/executions", None).await;
    let ids: Vec<&str> = v["executions"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [ran.1["id"].as_str().unwrap()], "only team-a's execution: {v}");

    // What is addressed by id outside its sandboxes does not exist for it: 404, nothing learnt.
    for (method, path) in [
        ("GET", format!("/api/v1/executions/{in_b}")),
        ("GET", format!("/api/v1/executions/{in_b}/logs")),
        ("POST", format!("/api/v1/executions/{in_b}/cancel")),
        ("GET", format!("/api/v1/executions/{inline}")),
    ] {
        let (status, v) = call(&n, a.as_deref(), method, &path, None).await;
        assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{path}: {v}");
    }
    // A request that names a sandbox outside them: 403 naming it.
    for (method, path, body) in [
        ("GET", "/api/v1/sandboxes/team-b/files/jobs/noop.toml".to_owned(), None),
        ("POST", "/api/v1/executions".to_owned(), Some(json!({"sandbox": "team-b", "job": "jobs/noop.toml"}))),
    ] {
        let (status, v) = call(&n, a.as_deref(), method, &path, body).await;
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("`team-b`"), "{path}: {v}");
    }
    // Running an inline command is arbitrary code: admin only.
    let (status, v) =
        call(&n, a.as_deref(), "POST", "/api/v1/executions", Some(json!({"command": ["id"], "sandbox": "team-a"})))
            .await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("needs role `admin`"), "{v}");
    // A runner writes no files; an editor does, in its scope only.
    let put = |who: String, sandbox: &'static str| {
        let url = format!("{}/api/v1/sandboxes/{sandbox}/files/new.txt", n.url);
        async move { reqwest::Client::new().put(url).header("authorization", who).body("x").send().await.unwrap() }
    };
    assert_eq!(put(bearer(&run_a), "team-a").await.status(), 403);
    assert_eq!(put(bearer(&edit_a), "team-a").await.status(), 201);
    assert_eq!(put(bearer(&edit_a), "team-b").await.status(), 403);
    // Schedules: an editor defines them in scope only; a scoped token lists its own only.
    let sched = |sandbox: &str| json!({"name": format!("s-{sandbox}"), "sandbox": sandbox, "job": "jobs/noop.toml", "cron": "0 3 * * *"});
    let (status, v) = call(&n, Some(&bearer(&edit_a)), "POST", "/api/v1/schedules", Some(sched("team-a"))).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(&n, Some(&bearer(&edit_a)), "POST", "/api/v1/schedules", Some(sched("team-b"))).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(n.post("/api/v1/schedules", sched("team-b")).await.0, 201);
    let (_, v) = call(&n, a.as_deref(), "GET", "/api/v1/schedules", None).await;
    assert_eq!(v["schedules"].as_array().unwrap().len(), 1, "{v}");
    let (status, v) = call(&n, Some(&bearer(&edit_a)), "DELETE", "/api/v1/schedules/s-team-b", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("unknown_schedule")), "{v}");
    assert_eq!(n.get("/api/v1/schedules/s-team-b").await.0, 200, "it is still there");
    // A listener in scope may not watch what is outside it (its events would carry it in).
    for (kind, source) in [
        ("job", json!({"on_job": {"sandbox": "team-b", "job": "jobs/noop.toml"}})),
        ("file", json!({"on_file": {"sandbox": "team-b", "pattern": "in/*"}})),
        ("cluster", json!({})),
    ] {
        let mut body =
            json!({"name": format!("watch-{kind}"), "kind": kind, "sandbox": "team-a", "job": "jobs/noop.toml"});
        body.as_object_mut().unwrap().extend(source.as_object().unwrap().clone());
        let (status, v) = call(&n, Some(&bearer(&edit_a)), "POST", "/api/v1/listeners", Some(body)).await;
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{kind}: {v}");
    }
    // An admin for some sandboxes reaches nothing of the whole cluster: tokens, nodes, inline
    // commands (any program, as the node's user).
    let some_admin = Some(bearer(&token(&n, "admin-a", "admin", Some(&["team-a"])).await));
    for (method, path, body) in [
        ("POST", "/api/v1/tokens", Some(json!({"name": "escalated", "role": "admin"}))),
        ("GET", "/api/v1/tokens", None),
        ("POST", "/api/v1/nodes/n1/drain", None),
        ("POST", "/api/v1/executions", Some(json!({"command": ["id"], "sandbox": "team-a"}))),
    ] {
        let (status, v) = call(&n, some_admin.as_deref(), method, path, body).await;
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("`*`"), "{path}: {v}");
    }
    // Cancel records who asked, as authenticated (no client-sent name).
    let long = n.sandbox("team-a2", &[("jobs/long.toml", "command = [\"sleep\", \"30\"]\n")]).await;
    drop(long);
    let id = call(
        &n,
        a.as_deref(),
        "POST",
        "/api/v1/executions",
        Some(json!({"sandbox": "team-a2", "job": "jobs/long.toml"})),
    )
    .await;
    let id = id.1["id"].as_str().unwrap().to_owned();
    let (status, v) = call(&n, a.as_deref(), "POST", &format!("/api/v1/executions/{id}/cancel"), None).await;
    assert!([200, 202].contains(&status), "{v}");
    assert_eq!(v["cancel_requested_by"], "token:run-a", "{v}");
}

/// Tokens through the API: made (the secret shown once, never listed), used, revoked; a revoked
/// one is refused by each of three nodes within a second, and an expired one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_node_within_a_second() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(TestNode::start_named(tempfile::tempdir().unwrap(), db.clone(), id).await);
    }
    let secret = token(&nodes[0], "ci", "viewer", None).await;
    let (_, list) = nodes[1].get("/api/v1/tokens").await;
    assert!(!list.to_string().contains(&secret), "a listing shows a secret: {list}");
    let ci = list["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "ci").unwrap().clone();
    assert_eq!((ci["role"].as_str(), ci["created_by"].as_str()), (Some("viewer"), Some("token:test-admin")), "{ci}");
    assert!(secret.starts_with(ci["prefix"].as_str().unwrap()), "{ci}");
    // Every node takes it (and caches it).
    for n in &nodes {
        assert_eq!(call(n, Some(&bearer(&secret)), "GET", "/api/v1/nodes", None).await.0, 200);
    }
    let id = ci["id"].as_str().unwrap();
    let revoked_at = Instant::now();
    let (status, v) = nodes[2].request(reqwest::Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["revoked_at"].is_string(), "{v}");
    for n in &nodes {
        loop {
            let (status, v) = call(n, Some(&bearer(&secret)), "GET", "/api/v1/nodes", None).await;
            if status == 401 {
                assert!(v["error"]["message"].as_str().unwrap().contains("revoked"), "{v}");
                break;
            }
            assert!(revoked_at.elapsed() < Duration::from_secs(1), "{} still takes a revoked token", n.url);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Expiry: a token valid for one second is refused after it, by every node.
    let (status, v) =
        nodes[0].post("/api/v1/tokens", json!({"name": "brief", "role": "viewer", "expires_in": "1s"})).await;
    assert_eq!(status, 201, "{v}");
    let brief = v["secret"].as_str().unwrap().to_owned();
    assert_eq!(call(&nodes[1], Some(&bearer(&brief)), "GET", "/api/v1/nodes", None).await.0, 200);
    for n in &nodes {
        shoal_testkit::wait_until_async("the token to expire", Duration::from_secs(5), || async {
            let (status, v) = call(n, Some(&bearer(&brief)), "GET", "/api/v1/nodes", None).await;
            status == 401 && v["error"]["message"].as_str().unwrap_or("").contains("expired")
        })
        .await;
    }
    // Bad requests change nothing.
    for (body, want) in [
        (json!({"name": "bad name", "role": "viewer"}), "invalid_request"),
        (json!({"name": "x", "role": "root"}), "invalid_json"),
        (json!({"name": "x", "role": "viewer", "sandboxes": ["Team"]}), "invalid_request"),
        (json!({"name": "x", "role": "viewer", "sandboxes": []}), "invalid_request"),
        (json!({"name": "x", "role": "viewer", "expires_in": "soon"}), "invalid_request"),
        (json!({"name": "brief", "role": "viewer"}), "already_exists"),
    ] {
        let (_, v) = nodes[0].post("/api/v1/tokens", body.clone()).await;
        assert_eq!(v["error"]["code"], want, "{body}: {v}");
    }
    let (_, after) = nodes[0].get("/api/v1/tokens").await;
    assert_eq!(after["tokens"].as_array().unwrap().len(), 3, "test-admin, ci, brief: {after}");
    let (status, v) = nodes[0].request(reqwest::Method::DELETE, "/api/v1/tokens/nope", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
}

/// A request that reaches a node as forwarded acts for the principal in its signed part, and
/// that node checks the permission again; a principal header a client adds is refused.
async fn forwarded_requests_carry_a_checked_principal(backend: Backend) {
    let n = TestNode::start(backend).await;
    n.sandbox("sb", &[]).await;
    let (status, v) = call(&n, Some(&bearer(common::test_token())), "GET", "/api/v1/nodes", None).await;
    assert_eq!(status, 200, "{v}");
    // A client cannot claim a principal.
    let forged = json!({"kind": "token", "id": "x", "name": "x", "role": "admin", "sandboxes": ["*"]}).to_string();
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/tokens", n.url))
        .header("x-shoal-principal", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_signature", "{v}");
    // Signed by a node with the secret on behalf of a viewer: the serving node refuses a change.
    let secret = n.store().cluster_secret().await.unwrap();
    let forwarder = shoal_api::Forwarder::new("n9", secret, None).unwrap();
    let send = |role: Role, method: &str, path: &str| {
        let mut req = axum::http::Request::builder().method(method).uri(path).body(axum::body::Body::empty()).unwrap();
        req.extensions_mut().insert(shoal_api::auth::Principal {
            kind: shoal_api::auth::PrincipalKind::Token,
            id: "t".into(),
            name: "someone".into(),
            role,
            sandboxes: vec!["*".into()],
            attempt: None,
        });
        let forwarder = &forwarder;
        let url = n.url.clone();
        async move { forwarder.forward("n1", &url, req).await }
    };
    let resp = send(Role::Viewer, "DELETE", "/api/v1/sandboxes/sb").await;
    assert_eq!(resp.status(), 403);
    let resp = send(Role::Viewer, "GET", "/api/v1/sandboxes/sb").await;
    assert_eq!(resp.status(), 200);
    let resp = send(Role::Admin, "DELETE", "/api/v1/sandboxes/sb").await;
    assert_eq!(resp.status(), 204);
}

on_both!(
    every_operation_needs_its_role,
    bad_credentials_are_refused_with_what_is_wrong,
    roles_and_scopes_limit_what_a_token_does,
    forwarded_requests_carry_a_checked_principal,
);
