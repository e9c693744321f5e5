//! Log followers are woken by the writes they wait for, not by a poll per follower.
//!
//! A hundred clients follow one job's log. While the job is silent, the node reads nothing
//! for them (each follower used to poll the store every 100 ms: some 2 000 reads a second
//! for this test); when it prints again, every follower gets the output at once and its
//! stream ends with the job.

#[macro_use]
mod common;

use common::{Backend, TestNode};
use futures::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};

const FOLLOWERS: usize = 100;

on_both!(
    idle_followers_cost_no_store_reads_and_see_output_at_once,
    a_follower_of_work_another_node_runs_sees_it_all_and_ends
);

async fn follow_reads(n: &TestNode) -> u64 {
    common::metric(&common::metrics_text(n).await, "shoal_log_follow_reads_total") as u64
}

async fn idle_followers_cost_no_store_reads_and_see_output_at_once(backend: Backend) {
    let mut n = TestNode::start(backend).await;
    let go = n.dir.path().join("go");
    let script = format!("echo start; while [ ! -e {} ]; do sleep 0.02; done; echo end", go.display());
    let id = n.submit(json!({"command": ["sh", "-c", script]})).await;
    n.wait_state(&id, "running", Duration::from_secs(10)).await;

    // Every follower has seen "start" before the quiet part begins.
    let mut streams = Vec::new();
    for _ in 0..FOLLOWERS {
        let resp = n.http.get(format!("{}/api/v1/executions/{id}/logs?follow=true", n.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.contains("start") {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, body.next()).await.expect("a follower saw no output").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        streams.push((body, seen));
    }

    // Observation windows, not waits for a condition. The node's first background read of
    // the followed execution wakes its followers once each (it cannot know whether anything
    // moved between their own reads and its look); after that, how many reads do a hundred
    // idle followers cost in one second? Nothing is written, so nothing should wake them.
    let first_look = follow_reads(&n).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = follow_reads(&n).await;
    assert!(before - first_look <= FOLLOWERS as u64 + 5, "{} reads around the first look", before - first_look);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = follow_reads(&n).await - before;
    assert!(idle <= 5, "{FOLLOWERS} idle followers made {idle} store reads in one second");

    // Output arrives at every follower promptly, and every stream ends with the job.
    let written = Instant::now();
    std::fs::write(&go, "").unwrap();
    let mut slowest = Duration::ZERO;
    for (mut body, mut seen) in streams {
        let deadline = written + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, body.next()).await.expect("a follower's stream did not end with the job") {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
                None => break,
            }
            if seen.contains("end") {
                slowest = slowest.max(written.elapsed());
            }
        }
        assert_eq!(seen, "start\nend\n");
    }
    eprintln!("the slowest of {FOLLOWERS} followers saw the output {slowest:?} after the job was told to go on");
    assert_eq!(n.wait_final(&id, Duration::from_secs(10)).await["state"], "succeeded");
    n.stop().await;
}

/// A follower that started while its execution was still queued follows it on its own node
/// (nothing runs there to forward to); another node then runs it, quickly, and nothing on
/// the follower's node writes its output. The node's background read of followed executions
/// must still wake it, with the output and the end, however soon after the follower's own
/// first read the other node finished.
async fn a_follower_of_work_another_node_runs_sees_it_all_and_ends(backend: Backend) {
    let first = tempfile::tempdir().unwrap();
    let store_url = common::store_url(backend, first.path());
    let mut nodes = vec![
        TestNode::start_named(first, store_url.clone(), "n1").await,
        TestNode::start_named(tempfile::tempdir().unwrap(), store_url.clone(), "n2").await,
    ];
    // n2 takes no work until told; the job may only run there.
    let (status, body) = nodes[0].post("/api/v1/nodes/n2/suspend", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let id = nodes[0]
        .submit(json!({"command": ["sh", "-c", "echo from-n2"], "allocation": {"kind": "nodes", "nodes": ["n2"]}}))
        .await;
    let resp =
        nodes[0].http.get(format!("{}/api/v1/executions/{id}/logs?follow=true", nodes[0].url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (status, body) = nodes[0].post("/api/v1/nodes/n2/resume", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let text = tokio::time::timeout(Duration::from_secs(15), resp.text())
        .await
        .expect("the follower neither saw the output nor ended")
        .unwrap();
    assert_eq!(text, "from-n2\n");
    let e = nodes[0].wait_final(&id, Duration::from_secs(5)).await;
    assert_eq!((e["state"].as_str(), e["node"].as_str()), (Some("succeeded"), Some("n2")), "{e}");
    for n in &mut nodes {
        n.stop().await;
    }
}

/// Output written with an attempt's end (a short job's only output is) counts in
/// `shoal_log_bytes_written_total` like output flushed while the job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_with_the_end_is_counted() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let id = n.submit(json!({"command": ["sh", "-c", "printf 0123456789"]})).await;
    assert_eq!(n.wait_final(&id, Duration::from_secs(20)).await["state"], "succeeded");
    assert_eq!(n.logs(&id).await, "0123456789");
    let written = common::metric(&common::metrics_text(&n).await, "shoal_log_bytes_written_total");
    assert_eq!(written, 10.0, "ten bytes of output were stored");
    n.stop().await;
}
