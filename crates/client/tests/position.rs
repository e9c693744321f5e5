//! Read-your-writes: the client keeps the highest `X-Shoal-Position` any answer carried and
//! sends it on every later request, against a stand-in node on port 0.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::Value;
use shoal_client::Client;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Node {
    /// The `X-Shoal-Position` of each request that arrived, by method, in order.
    arrived: Mutex<Vec<(Method, Option<String>)>>,
    /// What the answer to the next write carries.
    answer: Mutex<&'static str>,
}

type Shared = Arc<Node>;

/// Notes the position a request carried; puts `answer` on the answer to a write, as a server
/// does with the WAL position after it.
async fn positions(State(node): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let carried = req.headers().get("x-shoal-position").map(|v| v.to_str().unwrap().to_owned());
    node.arrived.lock().unwrap().push((method.clone(), carried));
    let mut response = next.run(req).await;
    if method != Method::GET {
        let answer = *node.answer.lock().unwrap();
        response.headers_mut().insert("x-shoal-position", HeaderValue::from_static(answer));
    }
    response
}

fn execution() -> Json<Value> {
    Json(serde_json::from_str(include_str!("fixtures/execution.json")).unwrap())
}

async fn start() -> (Client, Shared) {
    let node = Shared::default();
    let api = Router::new()
        .route("/executions/{id}", get(|| async { execution() }))
        .route("/executions/{id}/cancel", post(|| async { execution() }))
        .route("/executions/{id}/logs", get(|| async { "hello\n" }));
    let app = Router::new().nest("/api/v1", api).layer(axum::middleware::from_fn_with_state(node.clone(), positions));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (Client::new(vec![url]).unwrap(), node)
}

/// Writes (a cancel) answered with `answer`; answers the position the write itself carried.
async fn write(client: &Client, node: &Shared, answer: &'static str) -> Option<String> {
    *node.answer.lock().unwrap() = answer;
    client.cancel("e1").await.unwrap();
    last(node, Method::POST)
}

/// Reads the execution; answers the position the read carried.
async fn read(client: &Client, node: &Shared) -> Option<String> {
    client.execution("e1").await.unwrap();
    last(node, Method::GET)
}

fn last(node: &Shared, method: Method) -> Option<String> {
    let arrived = node.arrived.lock().unwrap();
    let (m, carried) = arrived.last().expect("a request arrived").clone();
    assert_eq!(m, method);
    carried
}

#[tokio::test]
async fn a_read_after_a_write_carries_the_highest_position_seen() {
    let (client, node) = start().await;
    assert_eq!(read(&client, &node).await, None, "nothing is sent before a position is seen");
    assert_eq!(client.position(), None);

    assert_eq!(write(&client, &node, "0/20").await, None);
    assert_eq!(client.position().as_deref(), Some("0/20"));
    assert_eq!(read(&client, &node).await.as_deref(), Some("0/20"));

    // A lower position (another node's answer, say) does not lower it; writes carry it too.
    assert_eq!(write(&client, &node, "0/10").await.as_deref(), Some("0/20"));
    assert_eq!(read(&client, &node).await.as_deref(), Some("0/20"));

    // Higher across the halves, though lower as text.
    assert_eq!(write(&client, &node, "1/0").await.as_deref(), Some("0/20"));
    assert_eq!(read(&client, &node).await.as_deref(), Some("1/0"));

    // An answer that is not a position is ignored.
    write(&client, &node, "junk").await;
    assert_eq!(read(&client, &node).await.as_deref(), Some("1/0"));
}

#[tokio::test]
async fn clones_and_streams_share_the_position() {
    let (client, node) = start().await;
    let clone = client.clone();
    write(&clone, &node, "0/16B3748").await;
    assert_eq!(read(&client, &node).await.as_deref(), Some("0/16B3748"));

    // One handed in from elsewhere (the CLI's cache), seen by every clone.
    client.observe_position("1A/FF00");
    client.observe_position("not a position");
    assert_eq!(clone.position().as_deref(), Some("1A/FF00"));

    let mut logs = clone.logs("e1", false, None).await.unwrap();
    assert_eq!(&logs.next().await.unwrap().unwrap()[..], b"hello\n");
    assert_eq!(last(&node, Method::GET).as_deref(), Some("1A/FF00"));
}
