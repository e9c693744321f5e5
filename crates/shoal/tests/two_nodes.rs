//! Two in-process nodes on one store: work placed by allocation runs where it must, a cancel
//! sent to one node stops an attempt running on the other, and each sees the other.

mod common;

use common::{alive, read_pid, TestNode};
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_and_cancel_across_two_nodes() {
    let url = shoal_testkit::postgres().fresh_database();
    let mut n1 = TestNode::start_on(tempfile::tempdir().unwrap(), url.clone(), "").await;
    let dir2 = tempfile::tempdir().unwrap();
    let text =
        common::config_text(dir2.path(), &url, "").replace("node_id = \"n1\"", "node_id = \"n2\"\ntags = [\"gpu\"]");
    let config = shoal_server::Config::parse(&text, "test", Vec::<(String, String)>::new()).unwrap();
    common::admit_test_token(&config.store.url).await;
    let node2 = shoal_server::start(config).await.unwrap();
    let url2 = node2.url().to_owned();
    let root = n1.sandbox("sb", &[("jobs/long.toml", "command = [\"sh\", \"-c\", \"echo $$ > pid-$SHOAL_NODE_ID; sleep 600\"]\n[allocation]\nkind = \"nodes\"\nnodes = [\"n2\"]\n")]).await;

    // Both nodes list both.
    let (_, nodes) = n1.get("/api/v1/nodes").await;
    let ids: Vec<_> = nodes["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["n1", "n2"]);

    // Placed by node list and by tag, submitted to n1: they run on n2.
    let id = n1.submit(json!({"sandbox": "sb", "job": "jobs/long.toml"})).await;
    let tagged = n1
        .submit(
            json!({"command": ["sh", "-c", "echo $SHOAL_NODE_ID"], "allocation": {"kind": "tags", "tags": ["gpu"]}}),
        )
        .await;
    let e = n1.wait_final(&tagged, T).await;
    assert_eq!((e["state"].as_str(), e["node"].as_str()), (Some("succeeded"), Some("n2")), "{e}");
    assert_eq!(n1.logs(&tagged).await, "n2\n");
    let pid = read_pid(&root.join("pid-n2")).await;
    assert_eq!(n1.execution(&id).await["node"], "n2");

    // Cancelled through n1, stopped on n2 (its cancel watcher sees the request in the store).
    let (status, _) = n1.post(&format!("/api/v1/executions/{id}/cancel"), json!({})).await;
    assert_eq!(status, 202);
    let e = n1.wait_final(&id, T).await;
    assert_eq!(e["state"], "cancelled", "{e}");
    shoal_testkit::wait_until_async("the attempt on n2 to die", Duration::from_secs(5), || async move { !alive(pid) })
        .await;
    // And the execution is visible, the same, from n2.
    let from_n2: serde_json::Value =
        common::http().get(format!("{url2}/api/v1/executions/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(from_n2["state"], "cancelled");

    // Guarantee 7: a submission retried against the other node with the same key is the
    // same execution.
    let body = json!({"command": ["true"]});
    let first: serde_json::Value = n1
        .http
        .post(format!("{}/api/v1/executions", n1.url))
        .header("Idempotency-Key", "retry-1")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let retried = n1
        .http
        .post(format!("{url2}/api/v1/executions"))
        .header("Idempotency-Key", "retry-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 200);
    assert_eq!(retried.headers()["idempotent-replayed"], "true");
    let retried: serde_json::Value = retried.json().await.unwrap();
    assert_eq!(first["id"], retried["id"]);

    node2.shutdown().await;
    n1.stop().await;
}
