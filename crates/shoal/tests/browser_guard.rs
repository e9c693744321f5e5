//! A web page in the user's browser cannot drive a node: a foreign `Host` (DNS rebinding) is
//! 403 `foreign_host`, a foreign `Origin` (a cross-site page) 403 `foreign_origin`, and a
//! JSON body that does not say `Content-Type: application/json` (a "simple" cross-site
//! request, sent without a CORS preflight) 415. Each refusal changes nothing. Tools, which
//! send neither a foreign `Host` nor an `Origin`, are not affected, and neither are the
//! health checks of load balancers.

mod common;

use common::{Backend, TestNode};
use serde_json::Value;

async fn send(
    n: &TestNode,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = n.http.request(method, format!("{}{path}", n.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_sites_and_rebound_names_are_refused() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let own = n.url.trim_start_matches("http://").to_owned();
    let submit = r#"{"command": ["true"]}"#;
    let json_type = ("content-type", "application/json");
    let before = n.count_executions().await;

    // DNS rebinding: the page's origin is `evil.example`, resolved to this node.
    for path in ["/api/v1/executions", "/api/v1/nodes", "/api/v1/openapi.json", "/metrics", "/openapi.json"] {
        let (status, body) = send(&n, reqwest::Method::GET, path, &[("host", "evil.example:7700")], None).await;
        assert_eq!((status, code(&body)), (403, "foreign_host"), "GET {path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("http.hosts"), "{body}");
    }
    let (status, body) =
        send(&n, reqwest::Method::POST, "/api/v1/executions", &[("host", "evil.example"), json_type], Some(submit))
            .await;
    assert_eq!((status, code(&body)), (403, "foreign_host"), "{body}");

    // A cross-site page: its Origin is not the node's.
    for origin in ["http://evil.example", "null", &format!("http://{own}0"), &format!("https://{own}")] {
        let h = [("origin", origin), json_type];
        let (status, body) = send(&n, reqwest::Method::POST, "/api/v1/executions", &h, Some(submit)).await;
        assert_eq!((status, code(&body)), (403, "foreign_origin"), "Origin {origin}: {body}");
        let (status, body) = send(&n, reqwest::Method::POST, "/api/v1/nodes/n1/drain", &h, None).await;
        assert_eq!((status, code(&body)), (403, "foreign_origin"), "Origin {origin}: {body}");
    }

    // A JSON body sent as a form or as text (what a page can send with no preflight), or
    // with no type at all.
    for ct in [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/jsonp"), None] {
        let h: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let (status, body) = send(&n, reqwest::Method::POST, "/api/v1/executions", &h, Some(submit)).await;
        assert_eq!((status, code(&body)), (415, "unsupported_media_type"), "{ct:?}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("application/json"), "{body}");
    }
    assert_eq!(n.count_executions().await, before, "a refused request created an execution");
    let (_, node) = n.get("/api/v1/nodes/n1").await;
    assert_eq!(node["state"], "active", "a refused drain drained the node: {node}");

    // Load balancers' health checks may send any Host.
    for path in ["/health/live", "/health/ready", "/api/v1/health/live"] {
        let (status, body) = send(&n, reqwest::Method::GET, path, &[("host", "lb.example")], None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The node's own pages, addresses, localhost and tools are served.
    let h = [("origin", &*format!("http://{own}")), json_type];
    let (status, body) = send(&n, reqwest::Method::POST, "/api/v1/executions", &h, Some(submit)).await;
    assert_eq!(status, 201, "{body}");
    let port = own.rsplit(':').next().unwrap();
    for host in [format!("localhost:{port}"), format!("[::1]:{port}"), "10.0.0.7".to_owned()] {
        let (status, body) = send(&n, reqwest::Method::GET, "/api/v1/nodes", &[("host", &host)], None).await;
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    n.stop().await;
}

/// A name given in `http.hosts` (a load balancer's, say) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_names_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(Backend::Sqlite, dir.path());
    let mut n =
        TestNode::start_edited(dir, url, |t| t.replace("[http]\n", "[http]\nhosts = [\"shoal.example.com\"]\n")).await;
    for host in ["shoal.example.com", "SHOAL.example.com:8080"] {
        let (status, body) = send(&n, reqwest::Method::GET, "/api/v1/nodes", &[("host", host)], None).await;
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    let (status, body) = send(&n, reqwest::Method::GET, "/api/v1/nodes", &[("host", "example.com")], None).await;
    assert_eq!((status, code(&body)), (403, "foreign_host"), "{body}");
    n.stop().await;
}
