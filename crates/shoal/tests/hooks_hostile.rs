//! Hostile webhook deliveries on an in-process node: captured requests replayed as they are,
//! with another delivery id, re-framed (part of the body moved into the delivery id) or sent
//! to another hook with the same secret, and signature headers built to burn the node's CPU.

#[macro_use]
mod common;

use common::{Backend, TestNode};
use serde_json::{json, Value};
use shoal_api::listeners::sign_hook;
use std::time::{Duration, Instant};

const NOOP_JOB: &str = "command = [\"true\"]\n";

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The signature of a delivery to hook `hook` (the hook's name is signed too).
fn sign(secret: &str, hook: &str, t: i64, delivery: Option<&str>, body: &[u8]) -> String {
    sign_hook(secret.as_bytes(), hook, t, delivery, body)
}

/// A webhook listener `h` starting `noop.toml`; answers its URL and secret.
async fn webhook(t: &TestNode) -> (String, String) {
    t.sandbox("s", &[("noop.toml", NOOP_JOB)]).await;
    let (status, l) =
        t.post("/api/v1/listeners", json!({"name": "h", "kind": "webhook", "sandbox": "s", "job": "noop.toml"})).await;
    assert_eq!(status, 201, "{l}");
    (format!("{}/api/v1/hooks/h", t.url), l["secret"].as_str().unwrap().to_owned())
}

/// Sends one delivery exactly as given.
async fn deliver(http: &reqwest::Client, url: &str, sig: &str, delivery: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut r = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-shoal-hook-signature", sig)
        .body(body.to_vec());
    if let Some(d) = delivery {
        r = r.header("x-shoal-hook-delivery", d);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

async fn events(t: &TestNode) -> Vec<Value> {
    let (status, body) = t.get("/api/v1/listeners/h/events?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// A captured delivery, sent again as it is (in a row or all at once), starts one execution,
/// with or without a delivery id; relabelled with another delivery id (or none) it is 401.
async fn a_captured_delivery_starts_one_execution(b: Backend) {
    let mut t = TestNode::start(b).await;
    let (url, secret) = webhook(&t).await;
    let body = br#"{"order": 42}"#;
    let now = unix_now();
    let with_id = sign(&secret, "h", now, Some("d-1"), body);
    let without_id = sign(&secret, "h", now, None, body);
    let mut started = Vec::new();
    for (sig, delivery) in [(&with_id, Some("d-1")), (&without_id, None)] {
        let (status, first) = deliver(&t.http, &url, sig, delivery, body).await;
        assert_eq!(status, 201, "{delivery:?}: {first}");
        let id = first["execution"]["id"].as_str().unwrap().to_owned();
        for _ in 0..5 {
            let (status, again) = deliver(&t.http, &url, sig, delivery, body).await;
            assert_eq!((status, again["replayed"].as_bool()), (200, Some(true)), "{delivery:?}: {again}");
            assert_eq!(again["event"]["execution"], id.as_str());
        }
        started.push(id);
    }
    // Without an id the delivery is named by its signature.
    let keys: Vec<String> = events(&t).await.iter().map(|e| e["key"].as_str().unwrap().to_owned()).collect();
    assert!(keys.contains(&"delivery:d-1".to_owned()), "{keys:?}");
    let mac = without_id.split_once(",v1=").unwrap().1;
    assert!(keys.contains(&format!("sig:{mac}")), "{keys:?}");

    // The same bytes sent eight times at once: one 201, seven replays.
    let body2 = br#"{"order": 43}"#;
    let sig2 = sign(&secret, "h", unix_now(), None, body2);
    let answers = futures_join((0..8).map(|_| {
        let (http, url, sig2) = (t.http.clone(), url.clone(), sig2.clone());
        tokio::spawn(async move { deliver(&http, &url, &sig2, None, body2).await })
    }))
    .await;
    let created: Vec<_> = answers.iter().filter(|(s, _)| *s == 201).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    assert!(answers.iter().all(|(s, a)| *s == 201 || (*s == 200 && a["replayed"] == true)), "{answers:?}");

    // Relabelled: another delivery id, none, or one added to a request signed without.
    for (sig, delivery) in [(&with_id, Some("d-2")), (&with_id, None), (&without_id, Some("d-3"))] {
        let (status, resp) = deliver(&t.http, &url, sig, delivery, body).await;
        assert_eq!((status, resp["error"]["code"].as_str()), (401, Some("invalid_signature")), "{delivery:?}: {resp}");
    }
    assert_eq!(t.count_executions().await, 3, "two captured deliveries and one concurrent burst");
    assert_eq!(events(&t).await.len(), 3);
    for id in &started {
        assert_eq!(t.wait_final(id, Duration::from_secs(10)).await["state"], "succeeded");
    }
    t.stop().await;
}

/// Awaits every task, in order.
async fn futures_join<T: Send + 'static>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.unwrap());
    }
    out
}

on_both!(a_captured_delivery_starts_one_execution, a_shifted_body_is_not_a_new_delivery);

/// 5 000 `v1=` entries over a ~1 MB body are refused at once, and several such requests at a
/// time leave the node answering `/health/ready` promptly; an honest ~1 MB delivery still
/// starts its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_floods_are_refused_cheaply() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_url(Backend::Sqlite, dir.path());
    let mut t = TestNode::start_edited(dir, store, |c| {
        c.replace("max_request_bytes = 65536", &format!("max_request_bytes = {}", 2 * 1024 * 1024))
    })
    .await;
    let (url, secret) = webhook(&t).await;
    let body = serde_json::to_vec(&json!({"pad": "x".repeat(1_000_000)})).unwrap();
    // 5 000 entries (340 KB) do not even reach the handler: a request head over 64 KiB is
    // answered 431 by the HTTP layer. 900 entries (61 KB) fit in a head and meet the hook's
    // own limits.
    let entries = |n: usize| format!("t={},{}", unix_now(), vec![format!("v1={}", "ab".repeat(32)); n].join(","));
    let started = Instant::now();
    let (status, _) = deliver(&t.http, &url, &entries(5000), None, &body).await;
    assert_eq!(status, 431, "a 340 KB signature header");
    assert!(started.elapsed() < Duration::from_secs(2), "refusing a huge head took {:?}", started.elapsed());
    let flood = entries(900);

    let started = Instant::now();
    let (status, resp) = deliver(&t.http, &url, &flood, None, &body).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (401, Some("invalid_signature")), "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("at most 4 v1="), "{resp}");
    assert!(started.elapsed() < Duration::from_secs(2), "one flood took {:?}", started.elapsed());

    // Four senders, five floods each, while readiness is checked until they are done.
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, flood, body) = (common::http(), url.clone(), flood.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    let (status, resp) = deliver(&http, &url, &flood, None, &body).await;
                    assert_eq!(status, 401, "{resp}");
                }
            })
        })
        .collect();
    let ready_url = format!("{}/health/ready", t.url);
    let mut checks = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !senders.iter().all(|s| s.is_finished()) || checks == 0 {
        assert!(Instant::now() < deadline, "the floods did not end within a minute");
        let asked = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(1), t.http.get(&ready_url).send()).await;
        let took = asked.elapsed();
        let status =
            answer.unwrap_or_else(|_| panic!("/health/ready took over 1 s during the floods")).unwrap().status();
        assert_eq!(status.as_u16(), 200);
        assert!(took < Duration::from_secs(1), "/health/ready took {took:?} during the floods");
        checks += 1;
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(t.count_executions().await, 0, "refused floods started nothing");

    // An honest delivery of the same size: its MAC is checked off the async workers.
    let sig = sign(&secret, "h", unix_now(), Some("big-1"), &body);
    let (status, resp) = deliver(&t.http, &url, &sig, Some("big-1"), &body).await;
    assert_eq!(status, 201, "{resp}");
    let (status, resp) = deliver(&t.http, &url, &sig, Some("big-1"), &body).await;
    assert_eq!((status, resp["replayed"].as_bool()), (200, Some(true)), "{resp}");
    assert_eq!(t.count_executions().await, 1);
    t.stop().await;
}

/// A value a delivery puts into the job's command that no process can take (a NUL byte) is
/// refused with 422 when the delivery arrives, and starts nothing, rather than failing at
/// spawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_no_process_can_take_is_refused_at_delivery() {
    let mut t = TestNode::start(Backend::Sqlite).await;
    t.sandbox("s", &[("echo.toml", "command = [\"echo\", \"{what}\"]\n[params.what]\n")]).await;
    let (status, l) = t
        .post(
            "/api/v1/listeners",
            json!({"name": "h", "kind": "webhook", "sandbox": "s", "job": "echo.toml",
                   "params": {"what": "{event.payload.what}"}}),
        )
        .await;
    assert_eq!(status, 201, "{l}");
    let (url, secret) = (format!("{}/api/v1/hooks/h", t.url), l["secret"].as_str().unwrap().to_owned());
    let body = br#"{"what": "a\u0000b"}"#;
    let sig = sign(&secret, "h", unix_now(), Some("nul-1"), body);
    let (status, answer) = deliver(&t.http, &url, &sig, Some("nul-1"), body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_parameter", "{answer}");
    assert_eq!(t.count_executions().await, 0, "a refused delivery started a job");
    // An ordinary value still works.
    let body = br#"{"what": "ab"}"#;
    let sig = sign(&secret, "h", unix_now(), Some("ok-1"), body);
    let (status, answer) = deliver(&t.http, &url, &sig, Some("ok-1"), body).await;
    assert_eq!(status, 201, "{answer}");
    t.stop().await;
}

/// A captured delivery cannot be re-framed: sent without an id and with body `12.5`, it is
/// refused as id `12` with body `5`, and the reverse; neither starts anything.
async fn a_shifted_body_is_not_a_new_delivery(b: Backend) {
    let mut t = TestNode::start(b).await;
    let (url, secret) = webhook(&t).await;
    let now = unix_now();
    let without_id = sign(&secret, "h", now, None, b"12.5");
    let (status, resp) = deliver(&t.http, &url, &without_id, Some("12"), b"5").await;
    assert_eq!((status, resp["error"]["code"].as_str()), (401, Some("invalid_signature")), "{resp}");
    let with_id = sign(&secret, "h", now, Some("12"), b"5");
    let (status, resp) = deliver(&t.http, &url, &with_id, None, b"12.5").await;
    assert_eq!((status, resp["error"]["code"].as_str()), (401, Some("invalid_signature")), "{resp}");
    assert_eq!(t.count_executions().await, 0, "a re-framed delivery started a job");
    assert_eq!(events(&t).await.len(), 0);
    // Each, as signed, is accepted.
    assert_eq!(deliver(&t.http, &url, &without_id, None, b"12.5").await.0, 201);
    assert_eq!(deliver(&t.http, &url, &with_id, Some("12"), b"5").await.0, 201);
    assert_eq!(t.count_executions().await, 2);
    t.stop().await;
}

/// Two webhooks given the same secret: a delivery signed for one is refused by the other,
/// either way, with a delivery id and without, and starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_sharing_a_secret_refuse_each_others_deliveries() {
    let mut t = TestNode::start(Backend::Sqlite).await;
    t.sandbox("s", &[("noop.toml", NOOP_JOB)]).await;
    let secret = "one-secret-for-two-hooks";
    for name in ["a", "b"] {
        let (status, l) = t
            .post(
                "/api/v1/listeners",
                json!({"name": name, "kind": "webhook", "sandbox": "s", "job": "noop.toml", "secret": secret}),
            )
            .await;
        assert_eq!(status, 201, "{l}");
    }
    let url = |name: &str| format!("{}/api/v1/hooks/{name}", t.url);
    let body = br#"{"order": 42}"#;
    let mut started = 0;
    for (signed_for, sent_to) in [("a", "b"), ("b", "a")] {
        for delivery in [Some("d-1"), None] {
            let sig = sign(secret, signed_for, unix_now(), delivery, body);
            let (status, resp) = deliver(&t.http, &url(sent_to), &sig, delivery, body).await;
            let what = format!("signed for {signed_for}, sent to {sent_to}, delivery {delivery:?}");
            assert_eq!((status, resp["error"]["code"].as_str()), (401, Some("invalid_signature")), "{what}: {resp}");
            let message = resp["error"]["message"].as_str().unwrap();
            assert!(message.contains(&format!("`{sent_to}`")), "{what}: {message}");
            assert_eq!(t.count_executions().await, started, "{what}: started a job");
            // Sent where it was signed for, it is accepted.
            let (status, resp) = deliver(&t.http, &url(signed_for), &sig, delivery, body).await;
            assert_eq!(status, 201, "{what}: {resp}");
            started += 1;
        }
    }
    assert_eq!(t.count_executions().await, 4);
    t.stop().await;
}
