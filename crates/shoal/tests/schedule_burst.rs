//! A burst of schedules never starves the lease renewal.
//!
//! Two nodes sharing one SQLite file fire hundreds of every-second schedules (each batch a
//! transaction, each execution a claim and an end) while the test watches their readiness;
//! in its own test binary, so nothing else of the suite runs beside it.

mod common;

use common::{Backend, TestNode};
use serde_json::json;
use std::time::{Duration, Instant};

/// Every-second schedules, and for how long they fire while the test watches.
const SCHEDULES: usize = 1000;
const WATCH: Duration = Duration::from_secs(6);

/// A burst of schedules never starves the lease renewal: two nodes on one SQLite file fire
/// hundreds of every-second schedules (each firing a transaction of its batch, each execution
/// a claim and an end) and stay ready throughout, without one failed renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_schedules_never_starves_the_lease_renewal() {
    let first = tempfile::tempdir().unwrap();
    let store_url = common::store_url(Backend::Sqlite, first.path());
    let mut nodes = vec![
        TestNode::start_named(first, store_url.clone(), "n1").await,
        TestNode::start_named(tempfile::tempdir().unwrap(), store_url.clone(), "n2").await,
    ];
    nodes[0].sandbox("s", &[("noop.toml", "kind = \"noop\"\n")]).await;
    for i in 0..SCHEDULES {
        let (status, body) = nodes[i % 2]
            .post(
                "/api/v1/schedules",
                json!({"name": format!("tick-{i}"), "sandbox": "s", "job": "noop.toml", "cron": "* * * * * *"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let fired_before: f64 = [common::metrics_text(&nodes[0]).await, common::metrics_text(&nodes[1]).await]
        .iter()
        .map(|m| common::metric(m, "shoal_schedule_firings_started_total"))
        .sum();
    let until = Instant::now() + WATCH;
    let (mut checks, mut slowest) = (0, Duration::ZERO);
    // Paced, so the watching does not itself load the nodes.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    while Instant::now() < until {
        pace.tick().await;
        for n in &nodes {
            let asked = Instant::now();
            let (status, body) = n.get("/health/ready").await;
            slowest = slowest.max(asked.elapsed());
            assert_eq!(status, 200, "{} not ready under {SCHEDULES} every-second schedules: {body}", n.url);
            checks += 1;
        }
    }
    let mut fired = -fired_before;
    for (n, id) in nodes.iter().zip(["n1", "n2"]) {
        let text = common::metrics_text(n).await;
        let (_, me) = n.get(&format!("/api/v1/nodes/{id}")).await;
        let lease = me["workers"].as_array().unwrap().iter().find(|w| w["name"] == "lease").unwrap().clone();
        let failures = common::metric(&text, "shoal_lease_renewal_failures_total");
        assert_eq!(failures, 0.0, "{} missed lease renewals: {lease}", n.url);
        fired += common::metric(&text, "shoal_schedule_firings_started_total");
        assert_eq!(lease["errors"], 0, "{lease}");
    }
    eprintln!("{checks} ready checks, slowest {slowest:?}; {fired} firings in {WATCH:?}");
    // The schedules really fired meanwhile: most of every second's firings, on the two nodes.
    let expected = (SCHEDULES as f64) * (WATCH.as_secs_f64() - 2.0);
    assert!(fired >= expected, "only {fired} firings in {WATCH:?} of {SCHEDULES} every-second schedules");
    for n in &mut nodes {
        n.stop().await;
    }
}
