//! `pooler`: what a node pays for its store being behind PgBouncer in transaction pooling
//! mode, and what the unnamed statements cost against named prepared ones. One throwaway
//! PostgreSQL server of the bench's own (`shoal_testkit`), a PgBouncer in transaction mode in
//! front of it, and two in-process nodes, each alone on a database of its own:
//!
//! - `direct` on the server itself;
//! - `pooled` on the pooler, with `store.session_url` past it for its session.
//!
//! Measured in one run, interleaved so that both see the same machine:
//!
//! - executions per second, `--count` `noop` executions from `--concurrency` clients to one
//!   node until the store counts them final, `--rounds` times per node in alternating order;
//! - `GET /api/v1/executions/{id}` one request at a time, alternating between the nodes;
//! - one statement at a time on one driver connection (`tokio-postgres`, as the store uses):
//!   a row by its key and a page of 50 rows, shaped like the store's (its tables and filters,
//!   though `SELECT *` and with typed parameters), each sent as a named statement prepared
//!   once and timed without its preparation (how the store sent them before issue 13: the
//!   best case, one text reused), as the unnamed statement (parsed by the server every time:
//!   how the store sends them now), and as the unnamed statement through the pooler;
//! - with `--baseline`, a `shoal-bench` built from before issue 13 (which prepared every
//!   statement by name and had no pooler probe): its `throughput` on PostgreSQL directly
//!   against this build's, each run a child process on a fresh database of the same server,
//!   taking turns.
//!
//! The executions of a throughput round are counted final through a store of the bench's own
//! on each database directly, not through the node's, so that the counting does not go
//! through the pooler being measured.

use crate::nodes::{self, InProcess};
use crate::stats::{percentile, sort, summary_to};
use anyhow::{ensure, Context, Result};
use shoal_server::Node;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};

#[derive(clap::Args, Debug)]
pub(crate) struct PoolerArgs {
    /// Executions per throughput round
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// Concurrent submitting clients in a throughput round
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Throughput rounds per node (and per build against `--baseline`), taking turns
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Sequential `GET /api/v1/executions/{id}` per node
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Statements of each kind on the driver connections
    #[arg(long, default_value_t = 5000)]
    statements: usize,
    /// A `shoal-bench` built from before issue 13 (named prepared statements): its
    /// `throughput` and this build's, on fresh databases of the same server, taking turns
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Executions per `throughput` run against the baseline
    #[arg(long, default_value_t = 10000)]
    baseline_count: usize,
}

/// The two statements of the driver comparison, shaped as the store's reads of an execution
/// and of a page of a sandbox's executions (`crates/store/src/executions.rs`).
const BY_ID: &str = "SELECT * FROM executions WHERE id = $1";
const PAGE: &str = "SELECT * FROM executions WHERE 1 = 1 AND sandbox = $1 ORDER BY id DESC LIMIT $2";
/// The page's length (`$2` of [`PAGE`]).
const PAGE_ROWS: i64 = 50;

/// A statement's arguments.
type Args<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// A node, the sandbox its `noop` job is in, its executions so far, and a store of the
/// bench's own on its database directly, to count them.
struct Subject {
    name: &'static str,
    node: Node,
    sandbox: String,
    ids: Vec<String>,
    counter: shoal_store::Store,
}

/// Executions per second: `count` submissions from `concurrency` clients to `s`, until its
/// store counts them all final.
async fn burst(s: &mut Subject, count: usize, concurrency: usize) -> Result<f64> {
    let store = &s.counter;
    let before = nodes::count_final(store).await?;
    let body = nodes::job(&s.sandbox, "jobs/noop.toml");
    let clients = (0..concurrency).map(|_| nodes::client(s.node.url())).collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    s.ids.extend(nodes::submit_spread(&clients, &body, count, concurrency).await?);
    let deadline = Instant::now() + Duration::from_secs(300);
    while nodes::count_final(store).await? - before < count as i64 {
        ensure!(Instant::now() < deadline, "{}: {count} executions not final within 300 s", s.name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(count as f64 / t0.elapsed().as_secs_f64())
}

/// How one statement is sent on the driver connection.
#[derive(Clone, Copy)]
enum Way {
    Prepared,
    Unnamed,
}

/// Milliseconds of one statement `sql` with `args` of `types`, sent `how`; checks it found
/// rows.
async fn statement(
    c: &tokio_postgres::Client,
    prepared: &tokio_postgres::Statement,
    sql: &str,
    (args, types): (&[&(dyn ToSql + Sync)], &[Type]),
    how: Way,
) -> Result<f64> {
    let t = Instant::now();
    let rows = match how {
        Way::Prepared => c.query(prepared, args).await?,
        Way::Unnamed => {
            let typed: Vec<_> = args.iter().zip(types).map(|(a, t)| (*a, t.clone())).collect();
            c.query_typed(sql, &typed).await?
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(!rows.is_empty(), "`{sql}` found no row");
    Ok(ms)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    sort(&mut v);
    percentile(&v, 0.5)
}

/// The end-to-end rate `bench throughput` printed (`=> N executions/s end to end`).
fn throughput_of(bench: &Path, args: &[&str]) -> Result<f64> {
    let out = Command::new(bench).args(args).output().with_context(|| format!("cannot run {}", bench.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{} {args:?} failed: {text}{}",
        bench.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!text.contains("did not succeed"), "{} {args:?}: executions failed: {text}", bench.display());
    let rate = text
        .split("=> ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no rate in the output of {}: {text}", bench.display()))?;
    Ok(rate)
}

/// This build's `throughput` against `baseline`'s, on fresh databases of `pg`, taking turns.
fn against_baseline(pg: &shoal_testkit::PgServer, baseline: &Path, a: &PoolerArgs) -> Result<()> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    let count = a.baseline_count.to_string();
    let builds = [("before issue 13", baseline), ("this build", me.as_path())];
    println!(
        "throughput --kind noop --count {count} --concurrency 32 --slots 64, one node direct on PostgreSQL, {} rounds per build, taking turns:",
        a.rounds
    );
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..a.rounds {
        for k in 0..2 {
            let i = (round + k) % 2;
            let db = format!("throughput_{round}_{i}");
            shoal_testkit::psql(&pg.admin_url(), &format!("CREATE DATABASE {db}")).map_err(anyhow::Error::msg)?;
            let url = pg.url_for(&db);
            let args = ["throughput", "--kind", "noop", "--count", &count, "--concurrency", "32", "--slots", "64"];
            rates[i].push(throughput_of(builds[i].1, &[&args[..], &["--store", &url]].concat())?);
        }
    }
    let base = median(&rates[0]);
    for ((name, _), r) in builds.iter().zip(&rates) {
        println!(
            "  {:<36} median {:.0} executions/s over rounds ({}), {:.2}x before",
            name,
            median(r),
            r.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", "),
            median(r) / base
        );
    }
    Ok(())
}

pub(crate) async fn run(shoal: &Path, a: PoolerArgs) -> Result<()> {
    ensure!(
        a.count >= 1 && a.concurrency >= 1 && a.rounds >= 1,
        "--count, --concurrency and --rounds must be at least 1"
    );
    let pg = shoal_testkit::PgServer::start_private();
    for db in ["direct", "pooled"] {
        shoal_testkit::psql(&pg.admin_url(), &format!("CREATE DATABASE {db}")).map_err(anyhow::Error::msg)?;
    }
    let bouncer = shoal_testkit::PgBouncer::start(pg.port(), shoal_testkit::PoolMode::Transaction);
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let (direct_url, pooled_url, session_url) = (pg.url_for("direct"), bouncer.url_for("pooled"), pg.url_for("pooled"));
    let direct =
        InProcess { id: "direct", dir: dir.path(), store: &direct_url, pool: 16, slots: 16, lease: None, shoal }
            .start()
            .await?;
    let pooled =
        InProcess { id: "pooled", dir: dir.path(), store: &pooled_url, pool: 16, slots: 16, lease: None, shoal }
            .start_pooled(&session_url)
            .await?;
    let root = dir.path().join("sandbox");
    std::fs::create_dir_all(root.join("jobs")).context("cannot create the sandbox folder")?;
    std::fs::write(root.join("jobs/noop.toml"), "kind = \"noop\"\n").context("cannot write a job file")?;
    let mut subjects = Vec::new();
    for (name, node, db) in [("direct", direct, &direct_url), ("through PgBouncer (transaction)", pooled, &session_url)]
    {
        let sandbox = format!("bench-{}", node.id());
        nodes::shared_sandbox(&nodes::client(node.url())?, &sandbox, &root).await?;
        let counter = shoal_store::Store::open(db, 1).await.with_context(|| format!("cannot open {db}"))?;
        subjects.push(Subject { name, node, sandbox, ids: Vec::new(), counter });
    }

    println!(
        "noop executions, {} per round from {} clients to one node, {} rounds per node, taking turns:",
        a.count, a.concurrency, a.rounds
    );
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..a.rounds {
        for k in 0..2 {
            let i = (round + k) % 2;
            rates[i].push(burst(&mut subjects[i], a.count, a.concurrency).await?);
        }
    }
    let base = median(&rates[0]);
    for (s, r) in subjects.iter().zip(&rates) {
        println!(
            "  {:<32} median {:.0} executions/s over rounds ({}), {:.2}x direct",
            s.name,
            median(r),
            r.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", "),
            median(r) / base
        );
    }

    println!("GET /api/v1/executions/{{id}}, one at a time, {} per node, alternating:", a.requests);
    let clients = [nodes::client(subjects[0].node.url())?, nodes::client(subjects[1].node.url())?];
    let mut took = [Vec::new(), Vec::new()];
    for r in 0..a.requests {
        for (i, c) in clients.iter().enumerate() {
            let id = &subjects[i].ids[r % subjects[i].ids.len()];
            let t = Instant::now();
            c.execution(id).await?;
            took[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let base = median(&took[0]);
    for (s, t) in subjects.iter().zip(&mut took) {
        let m = median(t);
        println!("  {:<32} {}; median {:.2}x direct", s.name, summary_to(t, 3), m / base);
    }

    // The nodes stop here: the driver's figures are the statements' own.
    let keys = [subjects[0].ids[0].clone(), subjects[1].ids[0].clone()];
    let sandboxes = [subjects[0].sandbox.clone(), subjects[1].sandbox.clone()];
    for s in subjects {
        s.node.shutdown().await;
    }
    // Fresh statistics, so that both databases plan the page the same way throughout.
    for db in ["direct", "pooled"] {
        shoal_testkit::psql(&pg.url_for(db), "ANALYZE executions").map_err(anyhow::Error::msg)?;
    }
    let direct_db = connect(&direct_url).await?;
    let pooled_db = connect(&pooled_url).await?;
    let by_id = |db: usize| -> Args { vec![&keys[db]] };
    let page = |db: usize| -> Args { vec![&sandboxes[db], &PAGE_ROWS] };
    let statements: [(&str, &str, Vec<Type>, [Args; 2]); 2] = [
        ("a row by its key", BY_ID, vec![Type::TEXT], [by_id(0), by_id(1)]),
        ("a page of 50 rows", PAGE, vec![Type::TEXT, Type::INT8], [page(0), page(1)]),
    ];
    for (label, sql, types, args) in &statements {
        let prepared = direct_db.prepare_typed(sql, types).await?;
        let kinds: [(&str, &tokio_postgres::Client, usize, Way); 3] = [
            ("named, prepared once (as before 13)", &direct_db, 0, Way::Prepared),
            ("unnamed, parsed each time (direct)", &direct_db, 0, Way::Unnamed),
            ("unnamed, through PgBouncer", &pooled_db, 1, Way::Unnamed),
        ];
        let mut took = [Vec::new(), Vec::new(), Vec::new()];
        for i in 0..a.statements {
            // Rotated, so that no kind always follows the same one.
            for k in 0..3 {
                let j = (i + k) % 3;
                let (_, c, db, how) = kinds[j];
                took[j].push(statement(c, &prepared, sql, (&args[db], types), how).await?);
            }
        }
        println!("`{sql}` ({label}), {} of each, one at a time, rotated:", a.statements);
        let base = median(&took[0]);
        for (kind, t) in kinds.iter().zip(took.iter_mut()) {
            let (name, m) = (kind.0, median(t));
            println!("  {:<36} {}; median {:.2}x prepared, {:+.3} ms", name, summary_to(t, 3), m / base, m - base);
        }
    }
    drop(bouncer);
    if let Some(baseline) = &a.baseline {
        tokio::task::block_in_place(|| against_baseline(&pg, baseline, &a))?;
    }
    Ok(())
}
