//! One store test suite, run against both backends: SQLite in a temporary file and a
//! throwaway PostgreSQL server started by the test harness, reached directly and through
//! PgBouncer in transaction pooling mode (node sessions past it, on `store.session_url`).

use shoal_core::placement::NodeView;
use shoal_core::state::Outcome;
use shoal_core::{Allocation, ExecState, FencingToken, OnNodeLoss, RunSpec, SandboxKind};
use shoal_store::{
    AttemptEnd, CancelResult, Dialect, ExecutionFilter, Finish, FinishResult, LogChunk, NewExecution, NodeRegistration,
    NodeStatus, SessionEvent, Store, StoreError, Submitted,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// A store for one test, and whatever keeps it alive.
struct Fixture {
    store: Arc<Store>,
    url: String,
    /// Where node sessions connect when not to `url`.
    session_url: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// Another handle on the same store, as another node opens it.
    async fn open_again(&self, pool_size: usize) -> shoal_store::Result<Store> {
        Store::open_with_session(&self.url, pool_size, self.session_url.as_deref()).await
    }
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shoal.db", dir.path().display());
    Fixture { store: Arc::new(Store::open(&url, 4).await.unwrap()), url, session_url: None, _dir: Some(dir) }
}

async fn postgres() -> Fixture {
    let url = shoal_testkit::postgres().fresh_database();
    Fixture { store: Arc::new(Store::open(&url, 8).await.unwrap()), url, session_url: None, _dir: None }
}

/// The test process's PgBouncer in transaction mode, in front of its PostgreSQL.
fn bouncer() -> &'static shoal_testkit::PgBouncer {
    static BOUNCER: std::sync::OnceLock<shoal_testkit::PgBouncer> = std::sync::OnceLock::new();
    BOUNCER.get_or_init(|| {
        shoal_testkit::PgBouncer::start(shoal_testkit::postgres().port(), shoal_testkit::PoolMode::Transaction)
    })
}

async fn postgres_pooled() -> Fixture {
    let direct = shoal_testkit::postgres().fresh_database();
    let db = direct.rsplit('/').next().unwrap().to_owned();
    let url = bouncer().url_for(&db);
    let store = Store::open_with_session(&url, 8, Some(&direct)).await.unwrap();
    Fixture { store: Arc::new(store), url, session_url: Some(direct), _dir: None }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::sqlite().await).await })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::postgres().await).await })*
        }
        mod on_postgres_through_pgbouncer_in_transaction_mode {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::postgres_pooled().await).await })*
        }
    };
}

suite!(
    migrations_are_idempotent_and_refuse_newer_schemas,
    store_clock_is_sane,
    sandboxes_crud,
    submit_get_list_and_page,
    idempotency_keys,
    claim_respects_allocation_and_fences,
    max_concurrent_is_cluster_wide,
    stale_tokens_change_nothing,
    retries_wait_for_backoff,
    cancel_rules,
    leases_and_takeover,
    the_first_write_after_an_outage_gives_back_the_leases_that_ran_out_in_it,
    recover_own_attempts_after_restart,
    attempts_a_node_does_not_run_are_handed_back,
    logs_read_in_order,
    concurrent_claimers_never_share_an_execution,
    group_commit_keeps_every_submission_apart,
    a_dead_node_is_ended_early_only_when_its_session_has_ended,
    a_partitioned_execution_ends_with_its_children,
    a_firing_time_is_claimed_once_however_many_nodes_try,
    an_event_is_recorded_once_and_its_cursor_moves_by_compare_and_set,
    definitions_are_found_by_id_or_name_and_deleted_with_what_they_own,
    an_attempt_token_is_valid_only_while_its_attempt_is_current,
    rights_are_read_again_and_end_with_their_token_or_user,
    secrets_are_kept_sealed_by_sandbox_and_name,
    audit_rows_are_listed_newest_first_filtered_paged_and_pruned,
);

fn node(id: &str) -> NodeRegistration {
    NodeRegistration {
        id: id.into(),
        url: format!("http://{id}"),
        state: shoal_core::placement::RegistryState::Active,
        tags: vec![],
        slots: 8,
        version: "test".into(),
        gossip_addr: String::new(),
        session_key: 0,
    }
}

fn status(running: i64) -> NodeStatus {
    NodeStatus {
        state: shoal_core::placement::RegistryState::Active,
        running,
        cpu_permille: 0,
        memory_permille: 0,
        failing_ms: 0,
    }
}

fn new_exec(spec: RunSpec) -> NewExecution {
    NewExecution {
        sandbox: None,
        job: None,
        params: BTreeMap::new(),
        spec,
        pinned_node: None,
        idempotency: None,
        run_after: None,
        origin: Default::default(),
    }
}

fn inline() -> RunSpec {
    RunSpec::inline(vec!["true".into()])
}

async fn submit(store: &Store, new: NewExecution) -> shoal_store::ExecutionRow {
    match store.submit(&new).await.unwrap() {
        Submitted::Created(r) => r,
        Submitted::Replayed(r) => panic!("unexpected replay of {}", r.id),
    }
}

const NO_TAGS: &[String] = &[];

fn view(id: &str) -> NodeView<'_> {
    NodeView { id, tags: NO_TAGS }
}

fn exited(code: i32) -> AttemptEnd {
    AttemptEnd { outcome: Outcome::Exited(code), exit_code: Some(code), signal: None }
}

async fn migrations_are_idempotent_and_refuse_newer_schemas(f: Fixture) {
    assert_eq!(f.store.schema_version().await.unwrap(), shoal_store::schema::LATEST);
    // A second node opening the same store migrates nothing and works.
    let again = f.open_again(2).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), shoal_store::schema::LATEST);
    f.store.force_schema_version(shoal_store::schema::LATEST + 1).await.unwrap();
    match f.open_again(2).await {
        Err(e @ StoreError::SchemaTooNew { .. }) => assert!(e.to_string().contains("upgrade this node"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a store with a newer schema"),
    }
}

async fn store_clock_is_sane(f: Fixture) {
    let a = f.store.now_ms().await.unwrap();
    let b = f.store.now_ms().await.unwrap();
    assert!(b >= a);
    let local = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((local - a).abs() < 60_000, "store clock {a} vs local {local}");
}

async fn sandboxes_crud(f: Fixture) {
    let s = &f.store;
    let row = s.create_sandbox("demo", SandboxKind::Shared, "/srv/demo", None, &[]).await.unwrap();
    assert_eq!(row.kind, SandboxKind::Shared);
    assert!(matches!(
        s.create_sandbox("demo", SandboxKind::Local, "/x", Some("n1"), &[]).await,
        Err(StoreError::Conflict(_))
    ));
    s.create_sandbox("local1", SandboxKind::Local, "/data/l", Some("n1"), &[]).await.unwrap();
    let names: Vec<_> = s.list_sandboxes().await.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["demo", "local1"]);
    assert_eq!(s.get_sandbox("local1").await.unwrap().unwrap().node_id.as_deref(), Some("n1"));
    // A sandbox with a live execution cannot be deleted.
    let mut new = new_exec(inline());
    new.sandbox = Some("demo".into());
    submit(s, new).await;
    assert!(matches!(s.delete_sandbox("demo").await, Err(StoreError::Conflict(_))));
    s.delete_sandbox("local1").await.unwrap();
    assert!(s.get_sandbox("local1").await.unwrap().is_none());
    assert!(matches!(s.delete_sandbox("local1").await, Err(StoreError::NotFound(_))));
}

async fn submit_get_list_and_page(f: Fixture) {
    let s = &f.store;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut new = new_exec(inline());
        new.sandbox = Some("sb".into());
        new.job = Some(format!("jobs/{}.toml", i % 2));
        new.params.insert("i".into(), i.to_string());
        ids.push(submit(s, new).await.id);
    }
    let got = s.get_execution(ids[2].as_str()).await.unwrap().unwrap();
    assert_eq!(got.state, ExecState::Queued);
    assert_eq!(got.params["i"], "2");
    assert!(s.get_execution("00000000-0000-7000-8000-000000000000").await.unwrap().is_none());

    let page1 = s.list_executions(&ExecutionFilter { limit: 3, ..Default::default() }).await.unwrap();
    assert_eq!(page1.len(), 3);
    assert_eq!(page1[0].id, ids[4], "newest first");
    let page2 = s
        .list_executions(&ExecutionFilter { limit: 3, cursor: Some(page1[2].id.to_string()), ..Default::default() })
        .await
        .unwrap();
    let all: Vec<_> = page1.iter().chain(page2.iter()).map(|r| r.id.clone()).collect();
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(all, expected);
    let job0 = s
        .list_executions(&ExecutionFilter { limit: 10, job: Some("jobs/0.toml".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(job0.len(), 3);
    let running = s
        .list_executions(&ExecutionFilter { limit: 10, state: Some(ExecState::Running), ..Default::default() })
        .await
        .unwrap();
    assert!(running.is_empty());
}

async fn idempotency_keys(f: Fixture) {
    let s = &f.store;
    let mut new = new_exec(inline());
    new.idempotency = Some(("key-1".into(), "hash-a".into()));
    let first = submit(s, new.clone()).await;
    match s.submit(&new).await.unwrap() {
        Submitted::Replayed(r) => assert_eq!(r.id, first.id),
        Submitted::Created(_) => panic!("a retried submission created a second execution"),
    }
    new.idempotency = Some(("key-1".into(), "hash-b".into()));
    assert!(matches!(s.submit(&new).await, Err(StoreError::IdempotencyMismatch)));
    let all = s.list_executions(&ExecutionFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 1);
}

async fn claim_respects_allocation_and_fences(f: Fixture) {
    let s = &f.store;
    let mut tagged = inline();
    tagged.allocation = Allocation::Tags { tags: vec!["gpu".into()] };
    let t = submit(s, new_exec(tagged)).await;
    let mut on_n2 = inline();
    on_n2.allocation = Allocation::Nodes { nodes: vec!["n2".into()] };
    let n2 = submit(s, new_exec(on_n2)).await;
    let mut pinned = new_exec(inline());
    pinned.pinned_node = Some("n3".into());
    let p = submit(s, pinned).await;
    let any = submit(s, new_exec(inline())).await;

    let c1 = s.claim(&view("n1"), 10).await.unwrap();
    assert_eq!(c1.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![any.id.clone()]);
    let gpu_tags = vec!["gpu".to_string()];
    let c2 = s.claim(&NodeView { id: "n2", tags: &gpu_tags }, 10).await.unwrap();
    let got: HashSet<_> = c2.iter().map(|c| c.id.clone()).collect();
    assert_eq!(got, HashSet::from([t.id.clone(), n2.id.clone()]));
    let c3 = s.claim(&view("n3"), 10).await.unwrap();
    assert_eq!(c3[0].id, p.id);
    // Tokens are unique and increase.
    let mut fences: Vec<_> = c1.iter().chain(&c2).chain(&c3).map(|c| c.fence).collect();
    let n = fences.len();
    fences.dedup();
    assert_eq!(fences.len(), n);
    assert!(c3[0].fence > c1[0].fence);
    let row = s.get_execution(any.id.as_str()).await.unwrap().unwrap();
    assert_eq!(row.state, ExecState::Running);
    assert_eq!(row.node_id.as_deref(), Some("n1"));
    assert_eq!(row.attempt, 1);
    assert!(s.claim(&view("n1"), 10).await.unwrap().is_empty());
}

async fn max_concurrent_is_cluster_wide(f: Fixture) {
    let s = &f.store;
    let mut spec = inline();
    spec.max_concurrent = Some(2);
    for _ in 0..5 {
        let mut new = new_exec(spec.clone());
        new.sandbox = Some("sb".into());
        new.job = Some("jobs/limited.toml".into());
        submit(s, new).await;
    }
    let a = s.claim(&view("n1"), 10).await.unwrap();
    let b = s.claim(&view("n2"), 10).await.unwrap();
    assert_eq!(a.len() + b.len(), 2, "max_concurrent = 2 across two nodes");
    let done = &a[0];
    let r = s
        .finish(&[Finish {
            id: done.id.clone(),
            fence: done.fence,
            attempt: done.attempt,
            end: exited(0),
            logs: vec![],
        }])
        .await
        .unwrap();
    assert_eq!(r, vec![FinishResult::Done(ExecState::Succeeded)]);
    assert_eq!(s.claim(&view("n2"), 10).await.unwrap().len(), 1, "a finished run frees one place");
}

async fn stale_tokens_change_nothing(f: Fixture) {
    let s = &f.store;
    let e = submit(s, new_exec(inline())).await;
    let c = s.claim(&view("n1"), 1).await.unwrap().remove(0);
    let chunk = |seq| LogChunk { seq, stream: 1, data: b"hello\n".to_vec() };
    s.append_logs(&c.id, c.fence, c.attempt, &[chunk(0)]).await.unwrap();
    let stale = FencingToken(c.fence.0 - 1);
    assert!(matches!(s.append_logs(&c.id, stale, c.attempt, &[chunk(1)]).await, Err(StoreError::Fenced)));
    let r = s
        .finish(&[Finish { id: c.id.clone(), fence: stale, attempt: c.attempt, end: exited(0), logs: vec![chunk(2)] }])
        .await
        .unwrap();
    assert_eq!(r, vec![FinishResult::Fenced]);
    let row = s.get_execution(e.id.as_str()).await.unwrap().unwrap();
    assert_eq!(row.state, ExecState::Running, "a stale token changed the state");
    assert_eq!(s.read_logs(e.id.as_str(), (0, -1), 100).await.unwrap().len(), 1, "a stale token wrote logs");
    // The real token still works, once; afterwards it is stale too.
    let done = Finish { id: c.id.clone(), fence: c.fence, attempt: c.attempt, end: exited(3), logs: vec![chunk(1)] };
    assert_eq!(s.finish(std::slice::from_ref(&done)).await.unwrap(), vec![FinishResult::Done(ExecState::Failed)]);
    assert_eq!(s.finish(&[done]).await.unwrap(), vec![FinishResult::Fenced]);
    let row = s.get_execution(e.id.as_str()).await.unwrap().unwrap();
    assert_eq!((row.state, row.exit_code, row.reason.as_str()), (ExecState::Failed, Some(3), "exited"));
    assert!(row.finished_at.is_some());
    assert!(matches!(s.append_logs(&c.id, c.fence, c.attempt, &[chunk(9)]).await, Err(StoreError::Fenced)));
}

async fn retries_wait_for_backoff(f: Fixture) {
    let s = &f.store;
    let mut spec = inline();
    spec.retries = 2;
    spec.retry_backoff_ms = 3_600_000;
    let e = submit(s, new_exec(spec)).await;
    let c = s.claim(&view("n1"), 1).await.unwrap().remove(0);
    let r = s.finish(&[Finish { id: c.id, fence: c.fence, attempt: 1, end: exited(1), logs: vec![] }]).await.unwrap();
    assert_eq!(r, vec![FinishResult::Done(ExecState::Queued)]);
    let row = s.get_execution(e.id.as_str()).await.unwrap().unwrap();
    assert_eq!(row.reason, "retry_scheduled");
    assert!(row.message.contains("retry 1 of 2"), "{}", row.message);
    assert!(s.claim(&view("n1"), 1).await.unwrap().is_empty(), "claimed before its backoff passed");

    let mut spec = inline();
    spec.retries = 1;
    spec.retry_backoff_ms = 0;
    let e = submit(s, new_exec(spec)).await;
    for (attempt, expect) in [(1, ExecState::Queued), (2, ExecState::Failed)] {
        let c = s.claim(&view("n1"), 1).await.unwrap().remove(0);
        assert_eq!(c.id, e.id);
        assert_eq!(c.attempt, attempt);
        let r = s.finish(&[Finish { id: c.id, fence: c.fence, attempt, end: exited(1), logs: vec![] }]).await.unwrap();
        assert_eq!(r, vec![FinishResult::Done(expect)]);
    }
}

async fn cancel_rules(f: Fixture) {
    let s = &f.store;
    let queued = submit(s, new_exec(inline())).await;
    assert_eq!(s.request_cancel(queued.id.as_str(), "api").await.unwrap(), CancelResult::Cancelled);
    let row = s.get_execution(queued.id.as_str()).await.unwrap().unwrap();
    assert_eq!(row.state, ExecState::Cancelled);
    assert!(matches!(s.request_cancel(queued.id.as_str(), "api").await, Err(StoreError::Conflict(_))));
    assert!(matches!(
        s.request_cancel("00000000-0000-7000-8000-000000000000", "api").await,
        Err(StoreError::NotFound(_))
    ));
    let running = submit(s, new_exec(inline())).await;
    let c = s.claim(&view("n1"), 1).await.unwrap().remove(0);
    assert_eq!(
        s.request_cancel(running.id.as_str(), "alice").await.unwrap(),
        CancelResult::Requested { node: Some("n1".into()) }
    );
    let reqs = s.cancel_requests("n1").await.unwrap();
    assert_eq!(reqs, vec![(c.id.clone(), c.fence, "alice".to_string())]);
    assert!(s.cancel_requests("n2").await.unwrap().is_empty());
    let end = AttemptEnd { outcome: Outcome::Cancelled { by: "alice".into() }, exit_code: None, signal: Some(15) };
    let r = s.finish(&[Finish { id: c.id, fence: c.fence, attempt: 1, end, logs: vec![] }]).await.unwrap();
    assert_eq!(r, vec![FinishResult::Done(ExecState::Cancelled)]);
}

async fn leases_and_takeover(f: Fixture) {
    let s = &f.store;
    let l1 = s.register_node(&node("n1"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(l1.generation, 1);
    s.register_node(&node("n2"), Duration::from_secs(60)).await.unwrap();
    let renewed = s.renew_lease("n1", 1, Duration::from_secs(60), &status(3)).await.unwrap();
    assert!(!renewed.had_expired);
    let nodes = s.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].running, 3);
    assert!(nodes[0].lease_expires_at - nodes[0].now > 50_000);

    let mut fail_spec = inline();
    fail_spec.on_node_loss = OnNodeLoss::Fail;
    let retry = submit(s, new_exec(inline())).await;
    let fail = submit(s, new_exec(fail_spec)).await;
    let claimed = s.claim(&view("n1"), 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // Nothing is taken over while n1's lease is live.
    assert!(s.reap_lost_attempts().await.unwrap().is_empty());
    // n1 stops cleanly (lease released): its attempts are taken over at once.
    s.release_lease("n1", 1).await.unwrap();
    let touched: HashSet<_> = s.reap_lost_attempts().await.unwrap().into_iter().collect();
    assert_eq!(touched, HashSet::from([retry.id.clone(), fail.id.clone()]));
    let r = s.get_execution(retry.id.as_str()).await.unwrap().unwrap();
    assert_eq!((r.state, r.reason.as_str()), (ExecState::Queued, "node_lost"));
    let r = s.get_execution(fail.id.as_str()).await.unwrap().unwrap();
    assert_eq!((r.state, r.reason.as_str()), (ExecState::Failed, "node_lost"));
    // The old attempt's token is now stale.
    let old = claimed.iter().find(|c| c.id == retry.id).unwrap();
    assert!(matches!(
        s.append_logs(&old.id, old.fence, old.attempt, &[LogChunk { seq: 0, stream: 1, data: vec![1] }]).await,
        Err(StoreError::Fenced)
    ));
    // And n2 runs it again as attempt 2.
    let again = s.claim(&view("n2"), 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.clone(), again[0].attempt), (retry.id.clone(), 2));
    assert!(again[0].fence > old.fence);
    // A second process registering n1 pushes the first out.
    let l2 = s.register_node(&node("n1"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(l2.generation, 2);
    assert!(matches!(s.renew_lease("n1", 1, Duration::from_secs(60), &status(0)).await, Err(StoreError::LeaseLost(2))));
    // An expired lease is reported as such on renewal.
    s.register_node(&node("n3"), Duration::ZERO).await.unwrap();
    shoal_testkit::wait_until_async("n3's zero lease to expire", Duration::from_secs(5), || async {
        s.list_nodes().await.unwrap().iter().any(|n| n.id == "n3" && n.lease_expires_at < n.now)
    })
    .await;
    assert!(s.renew_lease("n3", 1, Duration::from_secs(60), &status(0)).await.unwrap().had_expired);
}

/// The store's half of riding through an outage (docs/design/store-outage.md).
async fn the_first_write_after_an_outage_gives_back_the_leases_that_ran_out_in_it(f: Fixture) {
    let s = &f.store;
    let ttl = Duration::from_millis(300);
    let live = |id: &'static str| async move {
        let nodes = s.list_nodes().await.unwrap();
        let n = nodes.iter().find(|n| n.id == id).unwrap();
        n.lease_expires_at > n.now
    };
    // Whether `id` last renewed more than `ms` ago, on the store's clock.
    let quiet = |id: &'static str, ms: i64| async move {
        let nodes = s.list_nodes().await.unwrap();
        let n = nodes.iter().find(|n| n.id == id).unwrap();
        n.now - n.renewed_at > ms
    };
    let failing = |ms: i64| NodeStatus { failing_ms: ms, ..status(0) };
    // n3's lease runs out before the others renew last: it was gone while they still renewed.
    s.register_node(&node("n3"), Duration::ZERO).await.unwrap();
    s.register_node(&node("n1"), ttl).await.unwrap();
    s.register_node(&node("n2"), ttl).await.unwrap();
    // A renewal by a node that never failed gives nothing back.
    let r = s.renew_lease("n1", 1, ttl, &status(0)).await.unwrap();
    assert_eq!((r.extended, r.members.clone()), (0, vec!["n2".to_owned()]));
    // Nobody renews for longer than a lease: n1 and n2 run out.
    shoal_testkit::wait_until_async("a gap of 400 ms", Duration::from_secs(5), || async { quiet("n1", 400).await })
        .await;
    // n1 comes back after failing: n2's lease, which ran out after the last renewal by
    // anyone, gets a whole lease from now; n3's, gone before it, does not.
    let r = s.renew_lease("n1", 1, ttl, &failing(350)).await.unwrap();
    assert!(r.had_expired);
    assert_eq!(r.extended, 1);
    assert_eq!(r.members, vec!["n2".to_owned()], "n2 is live again, n3 is not");
    assert!(live("n2").await && !live("n3").await);
    // A failing renewal just after another node renewed finds nothing run out to give back.
    s.renew_lease("n2", 1, ttl, &status(0)).await.unwrap();
    assert_eq!(s.renew_lease("n1", 1, ttl, &failing(10_000)).await.unwrap().extended, 0);
    // A released lease is never given back, however long the gap.
    s.release_lease("n2", 1).await.unwrap();
    shoal_testkit::wait_until_async("n1's lease to run out", Duration::from_secs(5), || async { !live("n1").await })
        .await;
    assert_eq!(s.renew_lease("n1", 1, ttl, &failing(60_000)).await.unwrap().extended, 0);
    assert!(!live("n2").await && !live("n3").await);
    // A node that joins gives back what ran out since the last renewal (n1's lease) before
    // its reaper can run.
    shoal_testkit::wait_until_async("a gap of a whole lease", Duration::from_secs(5), || async {
        quiet("n1", 2 * 300).await
    })
    .await;
    s.register_node(&node("n4"), ttl).await.unwrap();
    assert!(live("n1").await && !live("n2").await && !live("n3").await);
}

async fn recover_own_attempts_after_restart(f: Fixture) {
    let s = &f.store;
    s.register_node(&node("n1"), Duration::from_secs(60)).await.unwrap();
    let e = submit(s, new_exec(inline())).await;
    s.claim(&view("n1"), 1).await.unwrap();
    // The lease is live, but the process restarted: its attempts died with it.
    assert_eq!(s.recover_node("n1").await.unwrap(), vec![e.id.clone()]);
    let r = s.get_execution(e.id.as_str()).await.unwrap().unwrap();
    assert_eq!(r.state, ExecState::Queued);
    assert!(s.recover_node("n1").await.unwrap().is_empty());
}

/// A claim whose answer was lost (its commit reached the store all the same) made attempts
/// the node never started: handed back, they run again; the ones it runs are kept.
async fn attempts_a_node_does_not_run_are_handed_back(f: Fixture) {
    let s = &f.store;
    s.register_node(&node("n1"), Duration::from_secs(60)).await.unwrap();
    s.register_node(&node("n2"), Duration::from_secs(60)).await.unwrap();
    let (kept, lost, other) =
        (submit(s, new_exec(inline())).await, submit(s, new_exec(inline())).await, submit(s, new_exec(inline())).await);
    let claimed = s.claim(&view("n1"), 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(s.claim(&view("n2"), 1).await.unwrap()[0].id, other.id);
    let runs = claimed.iter().find(|c| c.id == kept.id).unwrap().fence;
    assert!(claimed.iter().any(|c| c.id == lost.id));

    assert_eq!(s.hand_back_unstarted("n1", &[runs]).await.unwrap(), vec![lost.id.clone()]);
    let r = s.get_execution(lost.id.as_str()).await.unwrap().unwrap();
    assert_eq!((r.state, r.reason), (ExecState::Queued, shoal_core::ReasonCode::HandedBack), "{r:?}");
    for id in [&kept.id, &other.id] {
        assert_eq!(s.get_execution(id.as_str()).await.unwrap().unwrap().state, ExecState::Running);
    }
    assert!(s.hand_back_unstarted("n1", &[runs]).await.unwrap().is_empty());
    // Claimed again, it runs once more as the next attempt.
    let again = s.claim(&view("n1"), 1).await.unwrap();
    assert_eq!((again[0].id.as_str(), again[0].attempt), (lost.id.as_str(), 2));
}

async fn logs_read_in_order(f: Fixture) {
    let s = &f.store;
    let e = submit(s, new_exec(inline())).await;
    let c = s.claim(&view("n1"), 1).await.unwrap().remove(0);
    let chunks: Vec<_> =
        (0..10).map(|i| LogChunk { seq: i, stream: 1 + (i % 2), data: format!("line {i}\n").into_bytes() }).collect();
    s.append_logs(&c.id, c.fence, c.attempt, &chunks[..4]).await.unwrap();
    // Re-sending a chunk (after an ambiguous failure) does not duplicate it.
    s.append_logs(&c.id, c.fence, c.attempt, &chunks[3..7]).await.unwrap();
    s.finish(&[Finish { id: c.id.clone(), fence: c.fence, attempt: 1, end: exited(0), logs: chunks[7..].to_vec() }])
        .await
        .unwrap();
    let first = s.read_logs(e.id.as_str(), (0, -1), 4).await.unwrap();
    assert_eq!(first.len(), 4);
    let last = first.last().unwrap();
    let rest = s.read_logs(e.id.as_str(), (last.attempt, last.seq), 100).await.unwrap();
    let text: String = first.iter().chain(&rest).map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect();
    let expected: String = (0..10).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text, expected);
    assert_eq!(rest.iter().filter(|r| r.stream == 2).count(), 3);
}

async fn concurrent_claimers_never_share_an_execution(f: Fixture) {
    // Two handles on one store, as two nodes (or two processes on one SQLite file) have.
    let other = Arc::new(f.open_again(4).await.unwrap());
    for _ in 0..120 {
        submit(&f.store, new_exec(inline())).await;
    }
    let mut tasks = Vec::new();
    for (i, store) in [f.store.clone(), other.clone(), f.store.clone(), other].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let id = format!("n{i}");
            let mut mine = Vec::new();
            loop {
                let batch = store.claim(&NodeView { id: &id, tags: NO_TAGS }, 7).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                mine.extend(batch.into_iter().map(|c| c.id));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for id in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "{id} claimed twice");
        }
    }
    assert_eq!(total, 120);
}

async fn group_commit_keeps_every_submission_apart(f: Fixture) {
    let submitter = shoal_store::Submitter::spawn(f.store.clone());
    let mut tasks = Vec::new();
    for i in 0..300 {
        let submitter = submitter.clone();
        tasks.push(tokio::spawn(async move {
            let mut new = new_exec(inline());
            new.params.insert("i".into(), i.to_string());
            // Every third submission reuses a key: ten keys, each used ten times; key 0 comes
            // with two different requests, five times each.
            if i % 3 == 0 {
                let k = (i / 3) % 10;
                let hash = if k == 0 && (i / 30) % 2 == 1 { "other" } else { "same" };
                new.params.clear();
                new.idempotency = Some((format!("key-{k}"), hash.into()));
            }
            submitter.submit(new).await
        }));
    }
    let (mut created, mut replayed, mut mismatched) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Submitted::Created(_)) => created += 1,
            Ok(Submitted::Replayed(_)) => replayed += 1,
            Err(StoreError::IdempotencyMismatch) => mismatched += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // 200 without a key, plus one per key; key 0's five requests that differ from the
    // first one it saw are refused.
    assert_eq!(created, 210);
    assert_eq!(mismatched, 5);
    assert_eq!(created + replayed + mismatched, 300);
    let all = f.store.list_executions(&ExecutionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 210);
}

async fn a_dead_node_is_ended_early_only_when_its_session_has_ended(f: Fixture) {
    let s = &f.store;
    let (session, mut events) = s.open_session("n1").await.unwrap();
    let reg = NodeRegistration { session_key: session.key, ..node("n1") };
    let lease = s.register_node(&reg, Duration::from_secs(60)).await.unwrap();
    let (_other, _) = s.open_session("n2").await.unwrap();
    s.register_node(&node("n2"), Duration::from_secs(60)).await.unwrap();
    let e = submit(s, new_exec(inline())).await;
    if s.dialect() == Dialect::Postgres {
        // The submission was announced to listening sessions.
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("a work notification");
        assert!(matches!(ev, Some(SessionEvent::Work)), "{ev:?}");
    } else {
        assert!(events.recv().await.is_none(), "SQLite sessions send no events");
    }
    s.claim(&view("n1"), 1).await.unwrap();
    // Alive: the session holds, so nothing is ended however loudly gossip might suspect it.
    assert!(!s.session_ended(session.key).await.unwrap());
    assert!(!s.end_dead_node_lease("n1", lease.generation, session.key).await.unwrap());
    assert!(s.reap_lost_attempts().await.unwrap().is_empty());
    let key = session.key;
    drop(session);
    shoal_testkit::wait_until_async("n1's session to end", Duration::from_secs(10), || async {
        s.session_ended(key).await.unwrap()
    })
    .await;
    // A stale generation or key ends nothing.
    assert!(!s.end_dead_node_lease("n1", lease.generation + 1, key).await.unwrap());
    assert!(s.end_dead_node_lease("n1", lease.generation, key).await.unwrap());
    assert_eq!(s.reap_lost_attempts().await.unwrap(), vec![e.id.clone()]);
    // If n1 was in fact alive, its next renewal tells it to stop and register again.
    assert!(matches!(
        s.renew_lease("n1", lease.generation, Duration::from_secs(60), &status(0)).await,
        Err(StoreError::LeaseEnded)
    ));
    let again = s.register_node(&reg, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again.generation, lease.generation + 1);
    s.renew_lease("n1", again.generation, Duration::from_secs(60), &status(0)).await.unwrap();
}

async fn a_partitioned_execution_ends_with_its_children(f: Fixture) {
    let s = &f.store;
    let mut spec = inline();
    spec.allocation = Allocation::Partitioned { sandbox: "parts".into() };
    let parent = new_exec(spec.clone());
    let child = |node: &str| {
        let mut c = new_exec(RunSpec { allocation: Allocation::Any, ..spec.clone() });
        c.pinned_node = Some(node.into());
        c
    };
    let submit_parts = || async {
        match s.submit_partitioned(&parent, &[("a".into(), child("n1")), ("b".into(), child("n2"))]).await.unwrap() {
            Submitted::Created(r) => r,
            Submitted::Replayed(r) => panic!("replayed {}", r.id),
        }
    };
    s.register_node(&node("n1"), Duration::from_secs(60)).await.unwrap();
    s.register_node(&node("n2"), Duration::from_secs(60)).await.unwrap();
    let p = submit_parts().await;
    assert_eq!(p.state, ExecState::Running);
    // The parent itself is never claimed; each child only by its partition's node.
    let on_n1 = s.claim(&view("n1"), 10).await.unwrap();
    assert_eq!(on_n1.len(), 1);
    let on_n2 = s.claim(&view("n2"), 10).await.unwrap();
    assert_eq!(on_n2.len(), 1);
    assert!(s.claim(&view("n3"), 10).await.unwrap().is_empty());
    assert!(s.reap_lost_attempts().await.unwrap().is_empty(), "a parent has no attempt to take over");
    let fin = |c: &shoal_store::Claimed, code| Finish {
        id: c.id.clone(),
        fence: c.fence,
        attempt: c.attempt,
        end: exited(code),
        logs: vec![],
    };
    s.finish(&[fin(&on_n1[0], 0)]).await.unwrap();
    assert_eq!(s.get_execution(p.id.as_str()).await.unwrap().unwrap().state, ExecState::Running);
    s.finish(&[fin(&on_n2[0], 3)]).await.unwrap();
    let done = s.get_execution(p.id.as_str()).await.unwrap().unwrap();
    assert_eq!((done.state, done.reason.as_str()), (ExecState::Failed, "partitions"), "{done:?}");
    let children = s.list_children(p.id.as_str()).await.unwrap();
    assert_eq!(children.iter().map(|c| c.partition.as_deref().unwrap()).collect::<Vec<_>>(), ["a", "b"]);

    // Cancelling the parent cancels its queued children, and it ends with them.
    let p2 = submit_parts().await;
    assert_eq!(s.request_cancel(p2.id.as_str(), "alice").await.unwrap(), CancelResult::Requested { node: None });
    let done = s.get_execution(p2.id.as_str()).await.unwrap().unwrap();
    assert_eq!(done.state, ExecState::Cancelled, "{done:?}");
    assert!(s.list_children(p2.id.as_str()).await.unwrap().iter().all(|c| c.state == ExecState::Cancelled));
}

fn schedule_def(name: &str) -> shoal_store::ScheduleDef {
    shoal_store::ScheduleDef {
        name: name.into(),
        sandbox: "s".into(),
        job: "j.toml".into(),
        params: BTreeMap::new(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        enabled: true,
        misfire: shoal_core::schedule::Misfire::Once,
        misfire_threshold_ms: 60_000,
        overlap: shoal_core::schedule::Overlap::Allow,
        owner: owner(),
    }
}

fn owner() -> shoal_store::Owner {
    shoal_store::Owner { acts_as: "token:t-owner".into(), label: "token:owner".into() }
}

/// Guarantee 4 at the store: four handles (as four nodes) fire the same 20 firing times of
/// one schedule at once, each deciding to start every one of them. The firing rows are the
/// claim: 20 firings, 20 executions, whatever each caller decided.
async fn a_firing_time_is_claimed_once_however_many_nodes_try(f: Fixture) {
    let s = f.store.create_schedule(&schedule_def("tick")).await.unwrap();
    let base = (s.created_at / 1000 + 100) * 1000;
    let times: Vec<i64> = (0..20).map(|i| base + i * 1000).collect();
    let other = Arc::new(f.open_again(4).await.unwrap());
    let mut tasks = Vec::new();
    for (i, store) in [f.store.clone(), other.clone(), f.store.clone(), other].into_iter().enumerate() {
        let (id, times) = (s.id.clone(), times.clone());
        tasks.push(tokio::spawn(async move {
            let (_, fired) = store
                .fire_schedules(&[id], &format!("n{i}"), |_| shoal_store::FireDecision {
                    firings: times
                        .iter()
                        .map(|t| shoal_store::NewFiring {
                            fire_at: *t,
                            outcome: shoal_store::FiringOutcome::Started,
                            reason: None,
                            message: None,
                            execution: Some(new_exec(inline())),
                        })
                        .collect(),
                    covered_to: times.last().copied(),
                    ..Default::default()
                })
                .await
                .unwrap();
            fired
        }));
    }
    let (mut recorded, mut lost) = (0, 0);
    for t in tasks {
        for fired in t.await.unwrap() {
            recorded += fired.recorded.len();
            lost += fired.already_claimed;
        }
    }
    assert_eq!((recorded, lost), (20, 60), "each firing time recorded once, refused three times");
    let firings = f.store.firings_between(&s.id, base, base + 19_000).await.unwrap();
    assert_eq!(firings.len(), 20);
    let execs: HashSet<String> = firings.iter().map(|x| x.execution_id.clone().unwrap()).collect();
    assert_eq!(execs.len(), 20);
    let all = f.store.list_executions(&ExecutionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 20, "an execution only where the firing row was inserted");
    assert_eq!(f.store.get_schedule("tick").await.unwrap().unwrap().last_fire_at, base + 19_000);
}

fn listener_def(name: &str) -> shoal_store::ListenerDef {
    shoal_store::ListenerDef {
        name: name.into(),
        kind: shoal_core::listener::ListenerKind::File,
        sandbox: "s".into(),
        job: "j.toml".into(),
        params: BTreeMap::new(),
        config: "{}".into(),
        secret: None,
        enabled: true,
        owner: owner(),
    }
}

/// Guarantee 5 at the store: an event key records once; a file cursor moves only from the
/// value the caller read.
async fn an_event_is_recorded_once_and_its_cursor_moves_by_compare_and_set(f: Fixture) {
    let l = f.store.create_listener(&listener_def("files")).await.unwrap();
    let event = |key: &str, from: Option<(i64, i64)>, to: Option<(i64, i64)>| shoal_store::NewEvent {
        key: key.into(),
        payload: BTreeMap::new(),
        execution: Some(new_exec(inline())),
        reason: None,
        message: None,
        cursor: Some(shoal_store::CursorMove { path: "in/a.csv".into(), from, to }),
        silent: false,
    };
    let record = |node: &'static str, ev: shoal_store::NewEvent| {
        let (store, id) = (f.store.clone(), l.id.clone());
        async move { store.record_events(&id, node, &[ev], None).await.unwrap().len() }
    };
    assert_eq!(record("n1", event("appeared:1:10:in/a.csv", None, Some((1, 10)))).await, 1);
    // The same event from another node: nothing.
    assert_eq!(record("n2", event("appeared:1:10:in/a.csv", None, Some((1, 10)))).await, 0);
    // A node that read the cursor before the first event (`None`) cannot move it now.
    assert_eq!(record("n2", event("appeared:2:20:in/a.csv", None, Some((2, 20)))).await, 0);
    assert_eq!(record("n2", event("changed:2:20:in/a.csv", Some((1, 10)), Some((2, 20)))).await, 1);
    assert_eq!(f.store.file_cursor(&l.id).await.unwrap()["in/a.csv"], (2, 20));
    assert_eq!(f.store.all_events(&l.id).await.unwrap().len(), 2);
    let all = f.store.list_executions(&ExecutionFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 2);
}

/// Fires one firing time of a schedule, starting an execution; returns the execution's id.
async fn fire_once(store: &Store, schedule: &str, fire_at: i64) -> String {
    let (_, fired) = store
        .fire_schedules(&[schedule.to_owned()], "n1", |_| shoal_store::FireDecision {
            firings: vec![shoal_store::NewFiring {
                fire_at,
                outcome: shoal_store::FiringOutcome::Started,
                reason: None,
                message: None,
                execution: Some(new_exec(inline())),
            }],
            covered_to: Some(fire_at),
            ..Default::default()
        })
        .await
        .unwrap();
    fired[0].recorded[0].2.clone().unwrap().as_str().to_owned()
}

/// Schedules and listeners as definitions, with the errors the API passes on: a name is
/// taken once, a definition is found by id or name, replaced with its name (and kind) kept,
/// listed by name, and deleted with the rows it owns (a schedule's firings, withdrawing those
/// claimed ahead; a listener's events and cursor), the executions they started kept.
async fn definitions_are_found_by_id_or_name_and_deleted_with_what_they_own(f: Fixture) {
    let s = &f.store;
    fn message<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
        match r {
            Err(e @ (StoreError::Conflict(_) | StoreError::NotFound(_))) => e.to_string(),
            other => panic!("expected a conflict or not found, got {other:?}"),
        }
    }
    s.create_schedule(&schedule_def("b")).await.unwrap();
    let a = s.create_schedule(&schedule_def("a")).await.unwrap();
    assert_eq!(
        message(s.create_schedule(&schedule_def("a")).await),
        "a schedule named `a` already exists; pick another name"
    );
    let names: Vec<_> = s.list_schedules().await.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(s.get_schedule(&a.id).await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.get_schedule("a").await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.get_schedule("c").await.unwrap(), None);

    // A firing claimed ahead is withdrawn by a change: its execution cancelled, its row gone,
    // and the schedule due again from just before it.
    let ahead = (s.now_ms().await.unwrap() / 1000 + 100) * 1000;
    let exec = fire_once(s, &a.id, ahead).await;
    let mut def = schedule_def("renamed");
    def.params.insert("k".into(), "v".into());
    def.misfire_threshold_ms = 5_000;
    let changed = s.update_schedule("a", &def).await.unwrap();
    assert_eq!((changed.id.as_str(), changed.name.as_str()), (a.id.as_str(), "a"), "the name stays");
    assert_eq!(
        (changed.params, changed.misfire_threshold_ms, changed.last_fire_at),
        (def.params.clone(), 5_000, ahead - 1)
    );
    let withdrawn = s.get_execution(&exec).await.unwrap().unwrap();
    assert_eq!(withdrawn.state, ExecState::Cancelled, "{withdrawn:?}");
    assert!(withdrawn.message.starts_with("withdrawn before its firing time"), "{}", withdrawn.message);
    assert!(s.firings_between(&a.id, 0, i64::MAX).await.unwrap().is_empty());

    // Deleting takes the firing history with it; the execution stays.
    let past = fire_once(s, &a.id, a.created_at).await;
    s.delete_schedule(&a.id).await.unwrap();
    assert_eq!(s.get_schedule("a").await.unwrap(), None);
    assert!(s.firings_between(&a.id, 0, i64::MAX).await.unwrap().is_empty());
    assert_eq!(s.get_execution(&past).await.unwrap().unwrap().state, ExecState::Queued);
    assert_eq!(message(s.update_schedule("a", &def).await), "no schedule `a`");
    assert_eq!(message(s.delete_schedule("a").await), "no schedule `a`");
    assert_eq!(s.list_schedules().await.unwrap().len(), 1);

    let l = s.create_listener(&listener_def("files")).await.unwrap();
    assert_eq!(
        message(s.create_listener(&listener_def("files")).await),
        "a listener named `files` already exists; pick another name"
    );
    assert_eq!(s.get_listener("files").await.unwrap().as_ref(), Some(&l));
    let mut def = listener_def("other");
    def.kind = shoal_core::listener::ListenerKind::Webhook;
    (def.config, def.secret, def.enabled) = (r#"{"glob":"*.csv"}"#.into(), Some("k".into()), false);
    let changed = s.update_listener(&l.id, &def).await.unwrap();
    assert_eq!((changed.name.as_str(), changed.kind), ("files", l.kind), "name and kind stay");
    assert_eq!((changed.config, changed.secret, changed.enabled), (def.config.clone(), def.secret.clone(), false));
    let event = shoal_store::NewEvent {
        key: "appeared:1:10:a.csv".into(),
        payload: BTreeMap::new(),
        execution: Some(new_exec(inline())),
        reason: None,
        message: None,
        cursor: Some(shoal_store::CursorMove { path: "a.csv".into(), from: None, to: Some((1, 10)) }),
        silent: false,
    };
    let recorded = s.record_events(&l.id, "n1", &[event], None).await.unwrap();
    let started = recorded[0].execution.clone().unwrap();
    s.delete_listener("files").await.unwrap();
    assert!(s.all_events(&l.id).await.unwrap().is_empty());
    assert!(s.file_cursor(&l.id).await.unwrap().is_empty());
    assert!(s.get_execution(started.as_str()).await.unwrap().is_some());
    assert_eq!(message(s.update_listener("files", &def).await), "no listener `files`");
    assert_eq!(message(s.delete_listener(&l.id).await), format!("no listener `{}`", l.id));
    assert!(s.list_listeners().await.unwrap().is_empty());
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Issue 11: each claim mints the attempt its own token (only its SHA-256 is stored), which
/// finds the attempt and its execution's principal while the attempt is current and not
/// after; a submission in its name is fenced like its other writes; executions keep what
/// created them.
async fn an_attempt_token_is_valid_only_while_its_attempt_is_current(f: Fixture) {
    let s = &f.store;
    let mut spec = inline();
    spec.retries = 1;
    let mut new = new_exec(spec);
    new.origin =
        shoal_store::Origin::new(shoal_core::Trigger::Api, None, Some("token:ci".into()), Some("token:t-ci".into()));
    let e = submit(s, new).await;
    assert_eq!(e.origin.principal.as_deref(), Some("token:ci"));
    let c = s.claim(&view("n1"), 1).await.unwrap().remove(0);
    assert!(c.token.text().starts_with("shoal_att_"));
    assert!(!format!("{c:?}").contains(c.token.text()), "a claim's Debug shows the attempt's token");
    let hash = sha256_hex(c.token.text());
    let row = s.attempt_by_token(&hash).await.unwrap().expect("the token finds its attempt");
    assert_eq!((row.execution_id.as_str(), row.attempt, row.fence, row.live), (e.id.as_str(), 1, c.fence.0, true));
    assert_eq!((row.principal.as_deref(), row.acts_as.as_deref()), (Some("token:ci"), Some("token:t-ci")));
    assert!(s.attempt_by_token(&sha256_hex("shoal_att_made-up")).await.unwrap().is_none());
    // A job it submits records what made it; it is accepted only while the attempt is current.
    let mut child = new_exec(inline());
    child.origin = shoal_store::Origin::new(
        shoal_core::Trigger::Job,
        Some(e.id.to_string()),
        Some("token:ci".into()),
        Some("token:t-ci".into()),
    );
    let made = match s.submit_for_attempt(e.id.as_str(), c.fence, &child).await.unwrap() {
        Submitted::Created(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(made.origin.trigger, shoal_core::Trigger::Job);
    assert_eq!(made.origin.reference.as_deref(), Some(e.id.as_str()));
    let stale = FencingToken(c.fence.0 - 1);
    assert!(matches!(s.submit_for_attempt(e.id.as_str(), stale, &child).await, Err(StoreError::Fenced)));
    // The attempt fails and is retried: its token is no longer live, the next one has its own.
    let end = Finish { id: c.id.clone(), fence: c.fence, attempt: 1, end: exited(1), logs: vec![] };
    assert_eq!(s.finish(&[end]).await.unwrap(), vec![FinishResult::Done(ExecState::Queued)]);
    assert!(!s.attempt_by_token(&hash).await.unwrap().unwrap().live, "a finished attempt's token is live");
    assert!(matches!(s.submit_for_attempt(e.id.as_str(), c.fence, &child).await, Err(StoreError::Fenced)));
    let c2 = s.claim(&view("n2"), 1).await.unwrap().remove(0);
    assert_ne!(c2.token.text(), c.token.text());
    assert!(s.attempt_by_token(&sha256_hex(c2.token.text())).await.unwrap().unwrap().live);
    assert!(!s.attempt_by_token(&hash).await.unwrap().unwrap().live, "the old attempt's token came back");
}

/// Issue 11: whose rights work runs with is read from the store each time: a token's until
/// it is revoked, a user's until they are deleted.
async fn rights_are_read_again_and_end_with_their_token_or_user(f: Fixture) {
    let s = &f.store;
    let token = s
        .create_token(&shoal_store::NewToken {
            id: "t-ci".into(),
            name: "ci".into(),
            hash: sha256_hex("x"),
            prefix: "shoal_api_x".into(),
            role: shoal_core::Role::Runner,
            sandboxes: vec!["team-*".into()],
            created_by: "test".into(),
            expires_in_ms: None,
        })
        .await
        .unwrap();
    let rights = s.rights_of(&format!("token:{}", token.id)).await.unwrap().unwrap();
    assert_eq!(
        (rights.label.as_str(), rights.role, rights.sandboxes),
        ("token:ci", shoal_core::Role::Runner, vec!["team-*".to_owned()])
    );
    s.revoke_token("ci").await.unwrap();
    let why = s.rights_of("token:t-ci").await.unwrap().unwrap_err();
    assert!(why.contains("`ci` was revoked"), "{why}");
    assert!(s.rights_of("token:nobody").await.unwrap().unwrap_err().contains("no longer exists"));
    assert!(s.rights_of("someone").await.unwrap().is_err());
    // A schedule keeps its owner through a change and shows the new one after it.
    let created = s.create_schedule(&schedule_def("owned")).await.unwrap();
    assert_eq!(created.owner, Some(owner()));
    let mut def = schedule_def("owned");
    def.owner = shoal_store::Owner { acts_as: "user:u1".into(), label: "user:ann".into() };
    let changed = s.update_schedule("owned", &def).await.unwrap();
    assert_eq!(changed.owner.unwrap().label, "user:ann");
    assert!(s.rights_of("user:u1").await.unwrap().unwrap_err().contains("deleted"));
}

fn sealed(sandbox: Option<&str>, name: &str, byte: u8, key: &str) -> shoal_store::SealedSecret {
    shoal_store::SealedSecret {
        sandbox: sandbox.map(str::to_owned),
        name: name.into(),
        ciphertext: vec![byte; 20],
        nonce: vec![byte; 12],
        key_id: key.into(),
    }
}

/// Secrets are set (made, then replaced) per sandbox and name, a cluster-wide one apart from a
/// sandbox's of the same name; found for a job of a sandbox with the cluster-wide ones; listed
/// without their bytes; sealed again only if unchanged since read; deleted alone or with their
/// sandbox.
async fn secrets_are_kept_sealed_by_sandbox_and_name(f: Fixture) {
    let s = &f.store;
    let (row, made) = s.put_secret(&sealed(None, "DB", 1, "k1"), "token:t").await.unwrap();
    assert!(made);
    assert_eq!((row.sandbox.clone(), row.name.as_str(), row.key_id.as_str()), (None, "DB", "k1"));
    assert!(row.updated_at >= row.created_at, "{row:?}");
    let (_, made) = s.put_secret(&sealed(Some("etl"), "DB", 2, "k1"), "token:t").await.unwrap();
    assert!(made, "a sandbox's secret is apart from the cluster-wide one of its name");
    s.put_secret(&sealed(Some("web"), "API", 3, "k1"), "token:t").await.unwrap();
    let (replaced, made) = s.put_secret(&sealed(Some("etl"), "DB", 4, "k2"), "user:ann").await.unwrap();
    assert!(!made);
    assert_eq!(
        (replaced.created_by.as_str(), replaced.updated_by.as_str(), replaced.key_id.as_str()),
        ("token:t", "user:ann", "k2")
    );
    assert!(replaced.updated_at >= replaced.created_at);

    let listed: Vec<(Option<String>, String)> =
        s.list_secrets().await.unwrap().into_iter().map(|r| (r.sandbox, r.name)).collect();
    assert_eq!(listed, [(None, "DB".into()), (Some("etl".into()), "DB".into()), (Some("web".into()), "API".into())]);

    let mut found = s.sealed_secrets(Some("etl"), &["DB".into(), "API".into(), "NONE".into()]).await.unwrap();
    found.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
    assert_eq!(found.len(), 2, "web's API is not etl's: {found:?}");
    assert_eq!((found[0].sandbox.as_deref(), found[0].ciphertext.clone()), (None, vec![1; 20]));
    assert_eq!((found[1].sandbox.as_deref(), found[1].nonce.clone()), (Some("etl"), vec![4; 12]));
    assert_eq!(s.sealed_secrets(None, &["API".into()]).await.unwrap(), vec![]);
    assert_eq!(s.secret_key_ids().await.unwrap(), [("k1".to_owned(), 2), ("k2".to_owned(), 1)]);

    // Sealing again: only what was read, only once.
    let old = s.sealed_secrets_not_under("k2").await.unwrap();
    assert_eq!(old.len(), 2);
    let resealed = shoal_store::SealedSecret {
        ciphertext: vec![9; 20],
        nonce: vec![9; 12],
        key_id: "k2".into(),
        ..old[0].clone()
    };
    assert!(s.reseal_secret(&old[0], &resealed).await.unwrap());
    assert!(!s.reseal_secret(&old[0], &resealed).await.unwrap(), "its nonce changed: not the value read");
    assert_eq!(s.sealed_secrets_not_under("k2").await.unwrap(), vec![old[1].clone()]);

    assert_eq!(s.delete_secret(None, "DB").await.unwrap().name, "DB");
    assert!(matches!(s.delete_secret(None, "DB").await, Err(StoreError::NotFound(_))));
    assert_eq!(s.sealed_secrets(Some("etl"), &["DB".into()]).await.unwrap().len(), 1);
    // Deleting a sandbox deletes its secrets: one made again under its name starts with none.
    s.create_sandbox("web", SandboxKind::Shared, "/srv/web", None, &[]).await.unwrap();
    s.delete_sandbox("web").await.unwrap();
    let left: Vec<String> = s.list_secrets().await.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(left, ["DB"]);
}

fn audit(id: &str, age_ms: i64, principal: &str, action: &str, target: &str, status: u16) -> shoal_store::NewAudit {
    let record = shoal_store::AuditRecord {
        principal: principal.into(),
        node: "n1".into(),
        served_by: (id == "a3").then(|| "n2".to_owned()),
        action: action.into(),
        target: target.into(),
        outcome: shoal_core::AuditOutcome::of_status(status),
        status: status.into(),
        code: (status >= 400).then(|| "forbidden".to_owned()),
    };
    shoal_store::NewAudit { id: id.into(), age_ms, record }
}

async fn audit_rows_are_listed_newest_first_filtered_paged_and_pruned(f: Fixture) {
    use shoal_core::AuditOutcome;
    use shoal_store::AuditFilter;
    let s = &f.store;
    let rows = [
        audit("a1", 50_000, "token:ci", "createSandbox", "etl", 201),
        audit("a2", 40_000, "token:ci", "putSandboxFile", "etl/jobs/x.toml", 200),
        audit("a3", 30_000, "user:ann", "drainNode", "n2", 200),
        audit("a4", 20_000, "user:ann", "putSandboxFile", "ETL/jobs/y.toml", 403),
        audit("a5", 10_000, "user:bob", "createSession", "", 401),
    ];
    s.insert_audit(&rows, std::time::Instant::now()).await.unwrap();
    // Written again (a commit whose answer was lost): nothing doubles.
    s.insert_audit(&rows[..2], std::time::Instant::now()).await.unwrap();
    let now = s.now_ms().await.unwrap();
    let ids = |rows: &[shoal_store::AuditRow]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let all = s.list_audit(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(ids(&all), ["a5", "a4", "a3", "a2", "a1"]);
    // The time is the store's at the insert less the time queued.
    let a1 = &all[4].record;
    assert!((now - 52_000..=now - 49_000).contains(&all[4].at), "{} vs now {now}", all[4].at);
    assert_eq!(
        (a1.principal.as_str(), a1.node.as_str(), a1.action.as_str(), a1.target.as_str()),
        ("token:ci", "n1", "createSandbox", "etl")
    );
    assert_eq!((a1.outcome, a1.status, a1.code.clone(), a1.served_by.clone()), (AuditOutcome::Ok, 201, None, None));
    assert_eq!(all[2].record.served_by.as_deref(), Some("n2"));
    assert_eq!((all[1].record.outcome, all[1].record.code.as_deref()), (AuditOutcome::Denied, Some("forbidden")));
    let page = |f: AuditFilter| async move { ids(&s.list_audit(&AuditFilter { limit: 10, ..f }).await.unwrap()) };
    assert_eq!(page(AuditFilter { principal: Some("user:ann".into()), ..Default::default() }).await, ["a4", "a3"]);
    assert_eq!(page(AuditFilter { action: Some("putSandboxFile".into()), ..Default::default() }).await, ["a4", "a2"]);
    // A prefix, case-sensitive, with no wildcards of its own.
    assert_eq!(page(AuditFilter { target_prefix: Some("etl".into()), ..Default::default() }).await, ["a2", "a1"]);
    assert_eq!(page(AuditFilter { target_prefix: Some("etl/".into()), ..Default::default() }).await, ["a2"]);
    assert!(page(AuditFilter { target_prefix: Some("e_l".into()), ..Default::default() }).await.is_empty());
    assert_eq!(page(AuditFilter { outcome: Some(AuditOutcome::Denied), ..Default::default() }).await, ["a5", "a4"]);
    assert_eq!(page(AuditFilter { node: Some("n1".into()), ..Default::default() }).await.len(), 5);
    assert_eq!(
        page(AuditFilter { since: Some(now - 35_000), until: Some(now - 15_000), ..Default::default() }).await,
        ["a4", "a3"]
    );
    // Keyset pages: two, two, one, and none after.
    let mut before = None;
    let mut seen = Vec::new();
    loop {
        let rows = s.list_audit(&AuditFilter { limit: 2, before: before.clone(), ..Default::default() }).await.unwrap();
        if rows.is_empty() {
            break;
        }
        before = rows.last().map(|r| (r.at, r.id.clone()));
        seen.push(ids(&rows));
    }
    assert_eq!(seen, [vec!["a5", "a4"], vec!["a3", "a2"], vec!["a1"]]);
    // Rows of one time are paged by id.
    let same: Vec<_> = (0..3).map(|i| audit(&format!("b{i}"), 90_000_000, "token:x", "x", "", 200)).collect();
    s.insert_audit(&same, std::time::Instant::now()).await.unwrap();
    let old = s
        .list_audit(&AuditFilter { principal: Some("token:x".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(ids(&old), ["b2", "b1", "b0"]);
    let mut f2 = AuditFilter { principal: Some("token:x".into()), limit: 1, ..Default::default() };
    f2.before = Some((old[0].at, old[0].id.clone()));
    // b0..b2 may differ by a millisecond (each row reads the clock): keyset still goes on.
    assert_eq!(ids(&s.list_audit(&f2).await.unwrap()), ["b1"]);
    // Pruned past the retention, in bounded batches, the newer rows kept.
    assert_eq!(s.prune_audit(60_000_000, 2).await.unwrap(), 2);
    assert_eq!(s.prune_audit(60_000_000, 2).await.unwrap(), 1);
    assert_eq!(s.prune_audit(60_000_000, 2).await.unwrap(), 0);
    assert_eq!(s.prune_audit(25_000, 100).await.unwrap(), 3);
    assert_eq!(ids(&s.list_audit(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap()), ["a5", "a4"]);
}
