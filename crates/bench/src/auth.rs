//! `auth`: what access control costs and how fast a revocation spreads.
//!
//! - Overhead: one `shoal server` of this build and one of a baseline build from before access
//!   control (`--baseline PATH`), each on its own SQLite store, asked the same request
//!   (`GET /api/v1/executions/{id}`, one store read) in turns, one at a time, the order
//!   alternating; this build's requests carry a token, which the baseline ignores. The
//!   difference of the medians (and of the p99s) is the price of authenticating a request.
//! - Revocation: three nodes of this build on one store; a token is used on each (so each
//!   holds it in its cache), revoked through one, and each is asked again until it refuses:
//!   the time until the last of the three refuses.
//! - Login: a user's password checked by Argon2id (m = 19 MiB, t = 2, p = 1), one login at a
//!   time through the API: the time of `POST /api/v1/sessions`.

use crate::nodes::{self, Procs};
use crate::stats::{percentile, sort, summary_to};
use anyhow::{ensure, Context, Result};
use shoal_client::{Client, Error, LoginRequest, TokenRequest, UserRequest};
use shoal_wire::Role;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub(crate) struct AuthArgs {
    /// A `shoal` binary from before access control (say, built at 5213513), for the overhead
    #[arg(long, value_name = "PATH")]
    baseline: PathBuf,
    /// Requests to each node
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// Revocations to time
    #[arg(long, default_value_t = 30)]
    revocations: usize,
}

const LEASE: Duration = Duration::from_secs(5);

pub(crate) async fn run(shoal: &Path, a: AuthArgs) -> Result<()> {
    let baseline =
        std::fs::canonicalize(&a.baseline).with_context(|| format!("no baseline at {}", a.baseline.display()))?;
    overhead(shoal, &baseline, a.count).await?;
    revocation(shoal, a.revocations).await
}

/// An execution to read, on the node `c` talks to.
async fn one_execution(c: &Client) -> Result<String> {
    let id = nodes::submit(c, &nodes::command(&["true"])).await?;
    nodes::wait_final(c, &id, Duration::from_secs(30)).await?;
    Ok(id)
}

async fn overhead(shoal: &Path, baseline: &Path, count: usize) -> Result<()> {
    let (dir_new, dir_old) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store = |d: &tempfile::TempDir| format!("sqlite://{}/shoal.db", d.path().display());
    let mut new = Procs::start(shoal, &store(&dir_new), 1, LEASE, 4).await?;
    // The baseline knows no tokens (its schema has none): it is given none.
    let mut old = Procs::start_as(baseline, &store(&dir_old), 1, LEASE, 4, false).await?;
    let (c_new, c_old) = (nodes::client(&new.urls()[0])?, nodes::client(&old.urls()[0])?);
    let (id_new, id_old) = (one_execution(&c_new).await?, one_execution(&c_old).await?);
    // Warm both: connections, caches.
    for _ in 0..200 {
        c_new.execution(&id_new).await?;
        c_old.execution(&id_old).await?;
    }
    let (mut with, mut without) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for i in 0..count {
        let time = |c: &Client, id: &str| {
            let (c, id) = (c.clone(), id.to_owned());
            async move {
                let t = Instant::now();
                c.execution(&id).await?;
                Ok::<f64, Error>(t.elapsed().as_secs_f64() * 1e3)
            }
        };
        if i % 2 == 0 {
            with.push(time(&c_new, &id_new).await?);
            without.push(time(&c_old, &id_old).await?);
        } else {
            without.push(time(&c_old, &id_old).await?);
            with.push(time(&c_new, &id_new).await?);
        }
    }
    sort(&mut with);
    sort(&mut without);
    let (m1, m0) = (percentile(&with, 0.5), percentile(&without, 0.5));
    let (p1, p0) = (percentile(&with, 0.99), percentile(&without, 0.99));
    println!("auth overhead, GET /api/v1/executions/{{id}}, {count} requests each, interleaved, SQLite:");
    println!("  with a token (this build):       {}", summary_to(&mut with, 3));
    println!("  no access control (baseline):    {}", summary_to(&mut without, 3));
    println!(
        "  difference: median {:+.3} ms (ratio {:.3}), p99 {:+.3} ms (ratio {:.3})",
        m1 - m0,
        m1 / m0,
        p1 - p0,
        p1 / p0
    );
    new.stop_all().await?;
    old.stop_all().await
}

async fn revocation(shoal: &Path, rounds: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}/shoal.db", dir.path().display());
    let mut c = Procs::start(shoal, &store, 3, LEASE, 4).await?;
    let urls = c.urls();
    let admin = nodes::client(&urls[0])?;
    let mut all = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let made = admin
            .create_token(&TokenRequest {
                name: format!("r{r}"),
                role: Role::Viewer,
                sandboxes: None,
                expires_in: None,
            })
            .await?;
        let users: Vec<Client> = urls
            .iter()
            .map(|u| Client::new(vec![u.clone()]).and_then(|c| c.with_token(&made.secret)))
            .collect::<Result<_, _>>()?;
        for u in &users {
            u.nodes().await?;
        }
        let through = nodes::client(&urls[r % urls.len()])?;
        let revoked = Instant::now();
        through.revoke_token(&made.token.id).await?;
        let mut last = 0.0f64;
        for u in &users {
            loop {
                match u.nodes().await {
                    Err(Error::Api { status: 401, .. }) => break,
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                }
                ensure!(revoked.elapsed() < Duration::from_secs(10), "a node takes a revoked token after 10 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last = last.max(revoked.elapsed().as_secs_f64() * 1e3);
        }
        all.push(last);
    }
    println!("revocation seen by all of 3 nodes (poll every 5 ms), {rounds} revocations: {}", summary_to(&mut all, 1));
    login(&admin).await?;
    c.stop_all().await
}

/// One login at a time, the password checked by Argon2id on the node.
async fn login(admin: &Client) -> Result<()> {
    const LOGINS: usize = 30;
    let password = "bench-password-0123";
    admin
        .create_user(&UserRequest {
            name: "bench-user".into(),
            password: password.into(),
            role: Role::Viewer,
            sandboxes: None,
        })
        .await?;
    let mut took = Vec::with_capacity(LOGINS);
    for _ in 0..LOGINS {
        let t = Instant::now();
        admin.login(&LoginRequest { name: "bench-user".into(), password: password.into() }).await?;
        took.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("login (Argon2id m=19456 KiB, t=2, p=1), {LOGINS} one at a time: {}", summary_to(&mut took, 1));
    Ok(())
}
