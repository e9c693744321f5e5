//! Users and their login sessions: a session made through one node works on every node (the
//! store keeps its hash, no sticky sessions); changes made with the cookie need its CSRF
//! token; logout, a user's deletion and expiry are seen by every node within a second; wrong
//! passwords are refused alike for known and unknown names, and slowed per address after five;
//! passwords never come back in an answer.

mod common;

use common::TestNode;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ANN_PASSWORD: &str = "correct horse battery staple";
const VIC_PASSWORD: &str = "viewer's long passphrase";

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

/// Sends a request with no credential but what `headers` carry, from `from` (a loopback
/// address; the node counts failed logins by it) when given.
async fn send(
    n: &TestNode,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Value>,
    from: Option<IpAddr>,
) -> Answer {
    let client = reqwest::Client::builder().local_address(from).build().unwrap();
    let mut req = client.request(method, format!("{}{path}", n.url));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, headers, body, text }
}

/// A logged-in session: the cookie's value and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    fn cookie(&self) -> (&'static str, String) {
        ("cookie", format!("shoal_session={}", self.cookie))
    }

    fn with_csrf(&self) -> Vec<(&'static str, String)> {
        vec![self.cookie(), ("x-csrf-token", self.csrf.clone())]
    }
}

async fn login_answer(n: &TestNode, name: &str, password: &str, from: Option<IpAddr>) -> Answer {
    send(n, Method::POST, "/api/v1/sessions", &[], Some(json!({"name": name, "password": password})), from).await
}

async fn login(n: &TestNode, name: &str, password: &str) -> (Session, Answer) {
    let a = login_answer(n, name, password, None).await;
    assert_eq!(a.status, 201, "logging in as {name}: {}", a.text);
    let set = a.headers["set-cookie"].to_str().unwrap().to_owned();
    let value = set.split(';').next().unwrap().strip_prefix("shoal_session=").unwrap().to_owned();
    let csrf = a.body["csrf_token"].as_str().unwrap().to_owned();
    (Session { cookie: value, csrf }, a)
}

/// Makes a user through `n` as the harness's admin.
async fn user(n: &TestNode, name: &str, password: &str, role: &str, sandboxes: Option<&[&str]>) -> Value {
    let mut body = json!({"name": name, "password": password, "role": role});
    if let Some(s) = sandboxes {
        body["sandboxes"] = json!(s);
    }
    let (status, v) = n.post("/api/v1/users", body).await;
    assert_eq!(status, 201, "{v}");
    v
}

fn no_password(text: &str) {
    for secret in [ANN_PASSWORD, VIC_PASSWORD, "argon2"] {
        assert!(!text.contains(secret), "an answer holds a password or its hash: {text}");
    }
}

/// Waits until every node refuses `session` (401 `invalid_token`, the message holding
/// `want`), at most a second after `since`.
async fn refused_everywhere(nodes: &[TestNode], session: &Session, since: Instant, want: &str) {
    for n in nodes {
        loop {
            let a = send(n, Method::GET, "/api/v1/nodes", &[session.cookie()], None, None).await;
            if a.status == 401 {
                assert_eq!(a.code(), "invalid_token", "{}", a.text);
                assert!(a.message().contains(want), "{}", a.text);
                break;
            }
            assert_eq!(a.status, 200, "{}", a.text);
            assert!(since.elapsed() < Duration::from_secs(1), "{} still takes the session", n.url);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Logged in through n1, the session acts through n2 and n3 (a read with the cookie alone, a
/// change only with its CSRF token); logging out through n2 ends it on all three within a
/// second, and so does deleting its user; a session past its time is refused everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_node_works_on_every_node_until_it_ends() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(TestNode::start_named(tempfile::tempdir().unwrap(), db.clone(), id).await);
    }
    let made = user(&nodes[0], "ann", ANN_PASSWORD, "admin", None).await;
    no_password(&made.to_string());
    assert_eq!((made["role"].as_str(), made["created_by"].as_str()), (Some("admin"), Some("token:test-admin")));
    let (_, listed) = nodes[1].get("/api/v1/users").await;
    no_password(&listed.to_string());
    assert_eq!(listed["users"][0]["name"], "ann", "{listed}");

    let (ann, answer) = login(&nodes[0], "ann", ANN_PASSWORD).await;
    no_password(&answer.text);
    assert_eq!(answer.body["user"], "ann");
    assert_eq!(answer.body["role"], "admin");
    assert_eq!(answer.body["sandboxes"], json!(["*"]));
    assert!(answer.body["expires_at"].is_string(), "{}", answer.text);
    assert_eq!(answer.headers["cache-control"], "no-store");
    // The cookie: HttpOnly, SameSite=Strict, the whole site, for the TTL (12 h by default),
    // and not Secure over plain HTTP.
    let set = answer.headers["set-cookie"].to_str().unwrap();
    let attributes: Vec<&str> = set.split(';').skip(1).map(str::trim).collect();
    assert_eq!(attributes, ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"], "{set}");
    assert!(ann.cookie.starts_with("shoal_ses_"), "{set}");
    assert_eq!(answer.headers.get_all("set-cookie").iter().count(), 1);

    for n in &nodes[1..] {
        // A read needs the cookie only.
        let a = send(n, Method::GET, "/api/v1/executions", &[ann.cookie()], None, None).await;
        assert_eq!(a.status, 200, "{}: {}", n.url, a.text);
        // A change needs the CSRF token too: missing, wrong, then right.
        let name = format!("made-on-{}", &n.url[n.url.len() - 5..]);
        let body = json!({"name": name, "role": "viewer"});
        let a = send(n, Method::POST, "/api/v1/tokens", &[ann.cookie()], Some(body.clone()), None).await;
        assert_eq!((a.status, a.code()), (403, "csrf_failed"), "{}", a.text);
        assert!(a.message().contains("X-CSRF-Token"), "{}", a.text);
        let wrong = [ann.cookie(), ("x-csrf-token", "0".repeat(64))];
        let a = send(n, Method::POST, "/api/v1/tokens", &wrong, Some(body.clone()), None).await;
        assert_eq!((a.status, a.code()), (403, "csrf_failed"), "{}", a.text);
        let a = send(n, Method::POST, "/api/v1/tokens", &ann.with_csrf(), Some(body), None).await;
        assert_eq!(a.status, 201, "{}", a.text);
        // It acted as the user.
        assert_eq!(a.body["created_by"], "user:ann", "{}", a.text);
    }
    let (_, tokens) = nodes[0].get("/api/v1/tokens").await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 3, "nothing made without the CSRF token: {tokens}");

    // A bearer token wins over a cookie, and needs no CSRF token: a made-up cookie beside it
    // changes nothing.
    let junk = ("cookie", "shoal_session=nonsense".to_owned());
    let both = [("authorization", format!("Bearer {}", common::test_token())), junk.clone()];
    let a = send(&nodes[1], Method::POST, "/api/v1/tokens", &both, Some(json!({"name": "b", "role": "viewer"})), None)
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["created_by"], "token:test-admin", "{}", a.text);
    // Cookies that are no session: 401, and the browser is told to drop them.
    let twice = ("cookie", format!("shoal_session={0}; shoal_session={0}", ann.cookie));
    let unknown = ("cookie", format!("shoal_session={}", shoal_service::sessions::generate().0));
    for (cookie, want) in [
        (junk, "not a shoal token"),
        (("cookie", format!("shoal_session={}", common::test_token())), "holds no session"),
        (twice, "2 `shoal_session` cookies"),
        (unknown, "has ended"),
    ] {
        let a = send(&nodes[2], Method::GET, "/api/v1/nodes", std::slice::from_ref(&cookie), None, None).await;
        assert_eq!((a.status, a.code()), (401, "invalid_token"), "{cookie:?}: {}", a.text);
        assert!(a.message().contains(want), "{cookie:?}: {}", a.text);
        assert!(!a.text.contains(&ann.cookie), "the answer repeats the cookie: {}", a.text);
    }
    // A session is no bearer token.
    let a = send(
        &nodes[0],
        Method::GET,
        "/api/v1/nodes",
        &[("authorization", format!("Bearer {}", ann.cookie))],
        None,
        None,
    )
    .await;
    assert_eq!((a.status, a.code()), (401, "invalid_token"), "{}", a.text);
    assert!(a.message().contains("cookie"), "{}", a.text);

    // Logout through n2 (a change: CSRF token needed); every node refuses the cookie within
    // a second, and the answer clears it.
    let a = send(&nodes[1], Method::DELETE, "/api/v1/sessions", &[ann.cookie()], None, None).await;
    assert_eq!((a.status, a.code()), (403, "csrf_failed"), "{}", a.text);
    let a = send(&nodes[1], Method::DELETE, "/api/v1/sessions", &ann.with_csrf(), None, None).await;
    let ended = Instant::now();
    assert_eq!(a.status, 204, "{}", a.text);
    let cleared = a.headers["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with("shoal_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    refused_everywhere(&nodes, &ann, ended, "has ended").await;
    let a = send(&nodes[1], Method::GET, "/api/v1/nodes", &[ann.cookie()], None, None).await;
    assert!(a.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"), "a refused cookie is cleared");
    // Logging out with no cookie, or a bearer token alone: nothing to log out of.
    let a = send(&nodes[0], Method::DELETE, "/api/v1/sessions", &[], None, None).await;
    assert_eq!((a.status, a.code()), (401, "unauthenticated"), "{}", a.text);
    let (status, v) = nodes[0].request(Method::DELETE, "/api/v1/sessions", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("cookie"), "{v}");

    // Deleting a user ends their sessions on every node within a second.
    let (again, _) = login(&nodes[2], "ann", ANN_PASSWORD).await;
    for n in &nodes {
        assert_eq!(send(n, Method::GET, "/api/v1/nodes", &[again.cookie()], None, None).await.status, 200);
    }
    let (status, v) = nodes[0].request(Method::DELETE, "/api/v1/users/ann", None).await;
    let deleted = Instant::now();
    assert_eq!(status, 204, "{v}");
    refused_everywhere(&nodes, &again, deleted, "has ended").await;
    let (status, v) = nodes[0].request(Method::DELETE, "/api/v1/users/ann", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let a = login_answer(&nodes[1], "ann", ANN_PASSWORD, None).await;
    assert_eq!((a.status, a.code()), (401, "invalid_credentials"), "{}", a.text);

    // Expiry: a session stored to last 300 ms (the store takes any TTL; `http.session_ttl` is
    // at least 5 minutes) works, then every node refuses it as expired.
    user(&nodes[0], "bea", ANN_PASSWORD, "viewer", None).await;
    let bea = nodes[0].store().user_by_name("bea").await.unwrap().unwrap();
    let (text, hash) = shoal_service::sessions::generate();
    let made = Instant::now();
    nodes[0].store().create_session(&hash, &bea.id, 300).await.unwrap();
    let brief = Session { csrf: shoal_service::sessions::csrf_token(&text), cookie: text };
    let first = send(&nodes[1], Method::GET, "/api/v1/nodes", &[brief.cookie()], None, None).await;
    assert!(
        first.status == 200 || made.elapsed() >= Duration::from_millis(300),
        "a fresh session is refused: {}",
        first.text
    );
    for n in &nodes {
        shoal_testkit::wait_until_async("the session to expire", Duration::from_secs(5), || async {
            let a = send(n, Method::GET, "/api/v1/nodes", &[brief.cookie()], None, None).await;
            a.status == 401 && a.message().contains("expired")
        })
        .await;
    }
    for mut n in nodes {
        n.stop().await;
    }
}

/// A wrong password and an unknown name get the same 401; five failures from one address
/// within a minute make the sixth attempt a 429 with `Retry-After`, the right password too,
/// on that node only, and other addresses are not slowed; a success clears the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_refused_alike_and_slowed() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut n1 = TestNode::start_named(tempfile::tempdir().unwrap(), db.clone(), "n1").await;
    let mut n2 = TestNode::start_named(tempfile::tempdir().unwrap(), db, "n2").await;
    user(&n1, "ann", ANN_PASSWORD, "editor", None).await;
    let here: Option<IpAddr> = Some("127.0.0.2".parse().unwrap());
    let elsewhere: Option<IpAddr> = Some("127.0.0.3".parse().unwrap());

    let wrong = login_answer(&n1, "ann", "not the password at all", here).await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_credentials"), "{}", wrong.text);
    let unknown = login_answer(&n1, "nobody", "not the password at all", here).await;
    assert_eq!((unknown.status, unknown.code()), (401, "invalid_credentials"), "{}", unknown.text);
    assert_eq!(wrong.message(), unknown.message(), "a wrong password and an unknown name must read the same");
    assert!(wrong.headers.get("set-cookie").is_none());
    // A success clears the count: two failures, then two successes, and still five to go.
    assert_eq!(login_answer(&n1, "ann", ANN_PASSWORD, here).await.status, 201);
    for i in 0..5 {
        let a = login_answer(&n1, if i % 2 == 0 { "ann" } else { "nobody" }, "wrong password here", here).await;
        assert_eq!((a.status, a.code()), (401, "invalid_credentials"), "failure {}: {}", i + 1, a.text);
    }
    let started = Instant::now();
    for password in ["wrong password here", ANN_PASSWORD] {
        let a = login_answer(&n1, "ann", password, here).await;
        assert_eq!((a.status, a.code()), (429, "too_many_attempts"), "{}", a.text);
        let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After: {retry}");
        assert!(a.message().contains(&format!("try again in {retry} s")), "{}", a.text);
        assert!(a.headers.get("set-cookie").is_none());
    }
    // Refused before any password is checked: quickly (a check takes tens of milliseconds).
    assert!(started.elapsed() < Duration::from_secs(2));
    // Another address, and the same address on another node (each node counts its own).
    assert_eq!(login_answer(&n1, "ann", ANN_PASSWORD, elsewhere).await.status, 201);
    assert_eq!(login_answer(&n2, "ann", ANN_PASSWORD, here).await.status, 201);
    // Bad bodies are refused before the count, and count for nothing.
    let a = send(&n2, Method::POST, "/api/v1/sessions", &[], Some(json!({"name": "ann"})), elsewhere).await;
    assert_eq!((a.status, a.code()), (400, "invalid_json"), "{}", a.text);
    let long = "x".repeat(2000);
    let a = login_answer(&n2, "ann", &long, elsewhere).await;
    assert_eq!((a.status, a.code()), (401, "invalid_credentials"), "{}", a.text);
    n1.stop().await;
    n2.stop().await;
}

/// What a user may do is their role and sandboxes: a viewer makes no users, an admin for some
/// sandboxes manages no users (that is the whole cluster's); users are made with a valid name,
/// a long enough password and their globs, once per name; no answer holds a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_act_with_their_role_and_scope() {
    let mut n = TestNode::start(common::Backend::Sqlite).await;
    n.sandbox("team-a", &[]).await;
    n.sandbox("team-b", &[]).await;
    user(&n, "vic", VIC_PASSWORD, "viewer", None).await;
    let scoped = user(&n, "sam", ANN_PASSWORD, "admin", Some(&["team-*"])).await;
    assert_eq!(scoped["sandboxes"], json!(["team-*"]), "{scoped}");
    user(&n, "rita", ANN_PASSWORD, "runner", Some(&["team-a"])).await;

    let (vic, _) = login(&n, "vic", VIC_PASSWORD).await;
    let new_user = json!({"name": "eve", "password": "a password long enough", "role": "admin"});
    let a = send(&n, Method::POST, "/api/v1/users", &vic.with_csrf(), Some(new_user.clone()), None).await;
    assert_eq!((a.status, a.code()), (403, "forbidden"), "{}", a.text);
    assert!(a.message().contains("user:vic") && a.message().contains("`admin`"), "{}", a.text);
    assert_eq!(send(&n, Method::GET, "/api/v1/executions", &[vic.cookie()], None, None).await.status, 200);

    let (sam, _) = login(&n, "sam", ANN_PASSWORD).await;
    for (method, path, body) in [
        (Method::POST, "/api/v1/users", Some(new_user.clone())),
        (Method::GET, "/api/v1/users", None),
        (Method::DELETE, "/api/v1/users/vic", None),
    ] {
        let a = send(&n, method, path, &sam.with_csrf(), body, None).await;
        assert_eq!((a.status, a.code()), (403, "forbidden"), "{path}: {}", a.text);
        assert!(a.message().contains("`*`"), "{path}: {}", a.text);
    }
    // Within its sandboxes, a scoped user acts; outside them, not.
    let (rita, _) = login(&n, "rita", ANN_PASSWORD).await;
    let (_, v) = {
        let a = send(&n, Method::GET, "/api/v1/sandboxes", &[rita.cookie()], None, None).await;
        (a.status, a.body)
    };
    let names: Vec<&str> = v["sandboxes"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["team-a"], "{v}");
    let run = |sandbox: &str| json!({"sandbox": sandbox, "job": "jobs/noop.toml"});
    let a = send(&n, Method::POST, "/api/v1/executions", &rita.with_csrf(), Some(run("team-a")), None).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = send(&n, Method::POST, "/api/v1/executions", &rita.with_csrf(), Some(run("team-b")), None).await;
    assert_eq!((a.status, a.code()), (403, "forbidden"), "{}", a.text);
    assert!(a.message().contains("user:rita") && a.message().contains("`team-b`"), "{}", a.text);

    // Bad users are refused, saying what is wrong, and nothing is made.
    for (body, want, says) in [
        (json!({"name": "eve", "password": "short", "role": "viewer"}), "invalid_request", "shorter than 12"),
        (json!({"name": "eve", "password": "x".repeat(1025), "role": "viewer"}), "invalid_request", "over 1024 bytes"),
        (json!({"name": "bad name", "password": VIC_PASSWORD, "role": "viewer"}), "invalid_request", "is invalid"),
        (
            json!({"name": "0123456789abcdef", "password": VIC_PASSWORD, "role": "viewer"}),
            "invalid_request",
            "looks like",
        ),
        (json!({"name": "eve", "password": VIC_PASSWORD, "role": "root"}), "invalid_json", "unknown variant"),
        (
            json!({"name": "eve", "password": VIC_PASSWORD, "role": "viewer", "sandboxes": []}),
            "invalid_request",
            "empty",
        ),
        (json!({"name": "vic", "password": VIC_PASSWORD, "role": "viewer"}), "already_exists", "`vic` exists"),
    ] {
        let (_, v) = n.post("/api/v1/users", body.clone()).await;
        assert_eq!(v["error"]["code"], want, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{body}: {v}");
        no_password(&v.to_string());
    }
    let (_, listed) = n.get("/api/v1/users").await;
    let names: Vec<&str> = listed["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["rita", "sam", "vic"], "{listed}");
    no_password(&listed.to_string());
    n.stop().await;
}

/// `shoal user create` reads the password from standard input (never an argument); `ls` and
/// `rm` list and delete; the user made logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_lists_and_deletes_users() {
    let mut n = TestNode::start(common::Backend::Sqlite).await;
    let shoal = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--server")
            .arg(&n.url)
            .args(args)
            .env("SHOAL_TOKEN", common::test_token())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, out) =
        shoal(&["user", "create", "cli-user", "--role", "runner", "--sandbox", "etl-*"], &format!("{ANN_PASSWORD}\n"));
    assert_eq!(code, Some(0), "{out}");
    no_password(&out);
    assert!(out.contains("cli-user") && out.contains("etl-*"), "{out}");
    let (code, out) = shoal(&["user", "create", "empty", "--role", "viewer"], "\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("the password is empty"), "{out}");
    let (code, out) = shoal(&["user", "create", "short", "--role", "viewer"], "tiny\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("shorter than 12") && out.contains("invalid_request"), "{out}");
    let (code, out) = shoal(&["user", "ls"], "");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("cli-user") && out.contains("runner") && !out.contains("short"), "{out}");
    no_password(&out);
    let (code, out) = shoal(&["--json", "user", "ls"], "");
    assert_eq!(code, Some(0), "{out}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["users"][0]["sandboxes"], json!(["etl-*"]), "{out}");
    let (session, _) = login(&n, "cli-user", ANN_PASSWORD).await;
    assert_eq!(send(&n, Method::GET, "/api/v1/executions", &[session.cookie()], None, None).await.status, 200);
    let (code, out) = shoal(&["user", "rm", "cli-user"], "");
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = shoal(&["user", "rm", "cli-user"], "");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not_found"), "{out}");
    n.stop().await;
}
