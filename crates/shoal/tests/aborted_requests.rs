//! Clients that hang up mid-request never wedge the cluster.
//!
//! hyper drops a request's handler when its client closes the connection, so every store
//! future a handler awaits can be dropped at any await point. Two nodes on one store take
//! thousands of requests whose clients close their socket within a couple of milliseconds
//! (some before the body is complete), while an attempt runs; afterwards both nodes are
//! ready, never missed a lease renewal, take writes at once, and the attempt was never
//! killed or run again.

#[macro_use]
mod common;

use common::{Backend, TestNode};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Requests sent and abandoned, over both nodes, and how many are in flight at once.
const ABORTS: u64 = 3000;
const CONCURRENCY: usize = 24;

on_both!(thousands_of_abandoned_requests_leave_every_node_ready);

/// The requests sent and abandoned: each is one a handler serves (a known host, the harness's
/// token), so that they reach the store, which is the point.
fn requests() -> Vec<Vec<u8>> {
    let submit = json!({"command": ["true"]}).to_string();
    let head = |line: &str| {
        format!("{line} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n", common::test_token())
    };
    let json_head = |line: &str, len: usize| {
        format!("{}content-type: application/json\r\ncontent-length: {len}\r\n\r\n", head(line))
    };
    vec![
        format!("{}\r\n", head("DELETE /api/v1/listeners/nonexistent")).into_bytes(),
        format!("{}\r\n", head("DELETE /api/v1/schedules/nonexistent")).into_bytes(),
        format!("{}{submit}", json_head("POST /api/v1/executions", submit.len())).into_bytes(),
        // Headers promise a body that never comes whole.
        format!("{}{}", json_head("POST /api/v1/executions", submit.len()), &submit[..submit.len() / 2]).into_bytes(),
        format!("{}\r\n", head("GET /api/v1/executions?limit=50")).into_bytes(),
        format!("{}\r\n", head("GET /api/v1/nodes")).into_bytes(),
        format!("{}content-length: 0\r\n\r\n", head("POST /api/v1/nodes/n1/resume")).into_bytes(),
    ]
}

/// Each whole request (all but the one whose body never completes) reaches its handler: no
/// guard in front answers it, so the abandoned ones reach the store too.
async fn reach_their_handlers(addr: std::net::SocketAddr) {
    use tokio::io::AsyncReadExt;
    for (i, r) in requests().iter().enumerate().filter(|(i, _)| *i != 3) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(r).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        let status: u16 = String::from_utf8_lossy(&head[9..12]).parse().unwrap();
        assert!([200, 201, 202, 204, 404].contains(&status), "request {i} was answered {status} before its handler");
    }
}

/// Sends a request and closes the socket after 0 to 2 ms, without reading the answer.
async fn abandon(addr: std::net::SocketAddr, request: &[u8]) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return };
    let _ = s.write_all(request).await;
    let wait = Duration::from_micros(rand::random::<u64>() % 2_000);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    drop(s);
}

async fn thousands_of_abandoned_requests_leave_every_node_ready(backend: Backend) {
    let first = tempfile::tempdir().unwrap();
    let store_url = common::store_url(backend, first.path());
    let mut nodes = vec![
        TestNode::start_named(first, store_url.clone(), "n1").await,
        TestNode::start_named(tempfile::tempdir().unwrap(), store_url.clone(), "n2").await,
    ];
    let long = nodes[0].submit(json!({"command": ["sleep", "60"]})).await;
    let running = nodes[0].wait_state(&long, "running", Duration::from_secs(10)).await;

    let addrs: Vec<std::net::SocketAddr> =
        nodes.iter().map(|n| n.url.trim_start_matches("http://").parse().unwrap()).collect();
    reach_their_handlers(addrs[0]).await;
    let requests = Arc::new(requests());
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CONCURRENCY {
        let (addrs, requests, sent) = (addrs.clone(), requests.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while sent.fetch_add(1, Ordering::Relaxed) < ABORTS {
                abandon(addrs[i % addrs.len()], &requests[(i / addrs.len()) % requests.len()]).await;
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    eprintln!("{ABORTS} abandoned requests in {took:?}");

    for (n, id) in nodes.iter().zip(["n1", "n2"]) {
        // Ready, and a write goes through at once.
        let (status, body) = n.get("/health/ready").await;
        assert_eq!(status, 200, "{} not ready after the aborted requests: {body}", n.url);
        let wrote = Instant::now();
        let quick = n.submit(json!({"command": ["true"]})).await;
        assert!(wrote.elapsed() < Duration::from_secs(2), "a submission took {:?}", wrote.elapsed());
        assert_eq!(n.wait_final(&quick, Duration::from_secs(20)).await["state"], "succeeded");
        // No lease renewal failed, and the lease worker never reported an error.
        let metrics = common::metrics_text(n).await;
        assert_eq!(
            common::metric(&metrics, "shoal_lease_renewal_failures_total"),
            0.0,
            "{} missed lease renewals",
            n.url
        );
        let (_, me) = n.get(&format!("/api/v1/nodes/{id}")).await;
        let lease = me["workers"].as_array().unwrap().iter().find(|w| w["name"] == "lease").unwrap().clone();
        assert_eq!(lease["errors"], 0, "{lease}");
    }
    // The attempt that ran throughout was never stopped or handed on.
    let now = nodes[1].execution(&long).await;
    assert_eq!(now["state"], "running", "{now}");
    assert_eq!(now["attempts"].as_array().unwrap().len(), 1, "{now}");
    assert_eq!(now["attempts"][0]["fencing_token"], running["attempts"][0]["fencing_token"], "{now}");
    let (status, body) = nodes[1].post(&format!("/api/v1/executions/{long}/cancel"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    nodes[0].wait_final(&long, Duration::from_secs(10)).await;
    for n in &mut nodes {
        n.stop().await;
    }
}
