//! Whether a PostgreSQL URL's connections keep session state: what a node finds out before it
//! opens anything else on the store, so that a pooler between it and PostgreSQL is either one
//! it can run behind or a refusal to start that says what to change, never an error at run
//! time (docs/configuration.md, "Behind a pooler").
//!
//! The pool's statements need no session (each is sent whole on the unnamed statement:
//! `postgres.rs`), but a node's session does (`session.rs`): an advisory lock that must last
//! as long as the node's process and end with it, and `LISTEN`. Through a pooler in
//! transaction mode (PgBouncer's `pool_mode = transaction`) the lock would stay on whichever
//! server connection took it, held by nobody, and notifications would go to whichever client
//! that server connection serves next. So the session then needs `store.session_url`, a URL
//! past the pooler; in statement mode nothing works, since every change is a transaction.
//!
//! How it is found out: two connections of the URL, A and B. A sets a setting of its session
//! and reads its backend's pid; B, inside a transaction (which pins it to one server
//! connection), reads the pid and the setting; then A reads them again while B still holds its
//! server connection. With session state kept, A's backend is A's alone: B sees another pid and
//! not A's setting, and A sees its own pid and setting again. A pooler in transaction mode
//! gave A's server connection back after A's statement, so B gets it (an idle one is taken
//! before a new one is opened, and PgBouncer hands out the last one given back first) or A
//! moves to another. A pooler in statement mode refuses B's transaction. Five rounds, in case
//! other clients take the server connections in between.

use crate::pgtls::PgTls;
use crate::postgres::with_causes;
use crate::{Result, StoreError};
use std::time::Duration;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

/// The rounds of the probe; see the module's comment.
const ROUNDS: usize = 5;
/// How long A's read may wait while B holds its transaction. A pooler with no other server
/// connection free makes A wait for B's: that wait is itself a sign of per-transaction pooling.
const PINNED_WAIT: Duration = Duration::from_secs(3);
/// The whole probe, connections included, before it gives up as unreachable.
const PROBE_LIMIT: Duration = Duration::from_secs(30);
/// What PgBouncer says when it ends a client that opened a transaction in statement mode.
const STATEMENT_MODE: &str = "transaction blocks not allowed in statement pool";
/// The custom setting A sets for its session.
const SETTING: &str = "shoal.pooling_probe";
/// The first key of the two-key advisory lock that checks `store.session_url` reaches the same
/// database as `store.url` (apart from the node sessions' class in `session.rs`).
const CHECK_LOCK_CLASS: i32 = 0x5350;

/// How a URL's connections hold on to their server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pooling {
    /// For the connection's life: directly to PostgreSQL, or a pooler in session mode.
    Session,
    /// For one transaction at a time.
    Transaction,
    /// For one statement at a time: the pooler refused a transaction, saying this.
    Statement(String),
}

/// One connection for the probe, its connection task running until the client is dropped.
async fn connect(config: &Config, tls: &PgTls, what: &str) -> Result<Client> {
    let mut config = config.clone();
    config.application_name("shoal pooling probe");
    let (client, connection) = config
        .connect(tls.clone())
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to {what}: {}", with_causes(&e))))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The first row of a simple query's answer, each column as text (`None` for NULL).
async fn first_row(client: &Client, sql: &str) -> std::result::Result<Vec<Option<String>>, tokio_postgres::Error> {
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            return Ok((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
        }
    }
    Ok(Vec::new())
}

fn probe_failed(what: &str, e: &tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot probe {what}: {}", with_causes(e)))
}

/// How the connections of `config` hold on to their server connection; see the module's
/// comment. `what` names the URL in messages (`store.url`).
pub(crate) async fn probe(config: &Config, tls: &PgTls, what: &str) -> Result<Pooling> {
    tokio::time::timeout(PROBE_LIMIT, probe_rounds(config, tls, what)).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!("cannot probe {what}: no answer within {PROBE_LIMIT:?}")))
    })
}

/// A failure of B's transaction: statement pooling when the pooler says so, else the error.
fn refused(what: &str, e: &tokio_postgres::Error) -> Result<Pooling> {
    let why = with_causes(e);
    if why.contains(STATEMENT_MODE) {
        Ok(Pooling::Statement(why))
    } else {
        Err(StoreError::Unavailable(format!("cannot probe {what}: {why}")))
    }
}

async fn probe_rounds(config: &Config, tls: &PgTls, what: &str) -> Result<Pooling> {
    let nonce = format!("{:016x}", rand::random::<u64>());
    let a = connect(config, tls, what).await?;
    let b = connect(config, tls, what).await?;
    let mine = format!("SELECT pg_backend_pid(), set_config('{SETTING}', '{nonce}', false)");
    let own = first_row(&a, &mine).await.map_err(|e| probe_failed(what, &e))?;
    let pid = own.first().cloned().flatten();
    let look = format!("SELECT pg_backend_pid(), current_setting('{SETTING}', true)");
    let expected = [pid.clone(), Some(nonce.clone())];
    let reset = format!("RESET {SETTING}");
    for _ in 0..ROUNDS {
        // PgBouncer in statement mode ends the client that opens a transaction.
        if let Err(e) = b.simple_query("BEGIN").await {
            return refused(what, &e);
        }
        let theirs = match first_row(&b, &look).await {
            Ok(row) => row,
            Err(e) => return refused(what, &e),
        };
        let again = match tokio::time::timeout(PINNED_WAIT, first_row(&a, &look)).await {
            Ok(row) => row.map_err(|e| probe_failed(what, &e))?,
            // Waiting for the server connection B holds: A has none of its own.
            Err(_) => return Ok(Pooling::Transaction),
        };
        let _ = b.simple_query("COMMIT").await;
        let shared = theirs.first() == Some(&pid) || theirs.get(1) == Some(&Some(nonce.clone()));
        if shared || again != expected {
            // Best effort: the setting may be on another server connection by now.
            let _ = b.simple_query(&reset).await;
            return Ok(Pooling::Transaction);
        }
    }
    let _ = a.simple_query(&reset).await;
    Ok(Pooling::Session)
}

/// Whether an advisory lock taken through `session` (`store.session_url`) is seen through
/// `pool` (`store.url`): both reach the same database of the same server, so the others' node
/// sessions, their locks and their notifications are where the pool's statements look.
pub(crate) async fn same_database(pool: (&Config, &PgTls), session: (&Config, &PgTls)) -> Result<bool> {
    let holder = connect(session.0, session.1, "store.session_url").await?;
    let checker = connect(pool.0, pool.1, "store.url").await?;
    for _ in 0..8 {
        let key = rand::random::<i32>();
        let took = first_row(&holder, &format!("SELECT pg_try_advisory_lock({CHECK_LOCK_CLASS}, {key})"))
            .await
            .map_err(|e| probe_failed("store.session_url", &e))?;
        if took.first() != Some(&Some("t".to_owned())) {
            // Held by another node's check at this moment: another key.
            continue;
        }
        // As `Store::session_ended` asks: unlock only what this statement took.
        let free = first_row(
            &checker,
            &format!(
                "SELECT CASE WHEN pg_try_advisory_lock({CHECK_LOCK_CLASS}, {key})
                        THEN pg_advisory_unlock({CHECK_LOCK_CLASS}, {key}) ELSE false END"
            ),
        )
        .await
        .map_err(|e| probe_failed("store.url", &e))?;
        // Let go at once rather than at disconnect: a session pooler may keep the server
        // connection, and a lock with it, when its reset does not unlock.
        let _ = holder.simple_query(&format!("SELECT pg_advisory_unlock({CHECK_LOCK_CLASS}, {key})")).await;
        return Ok(free.first() == Some(&Some("f".to_owned())));
    }
    Err(StoreError::Unavailable("cannot take a lock to check store.session_url: every key tried was held".into()))
}
