//! A node's session with the store: something the store side holds for exactly as long as the
//! node's process lives, so other nodes can tell "dead" from "slow" without waiting for a lease.
//!
//! - PostgreSQL: a dedicated connection (outside the pool) holding a session-level advisory
//!   lock on the node's random `session_key`. When the process dies, the kernel closes the
//!   socket, the backend exits at once and the lock is free. The same connection LISTENs on
//!   [`WORK_CHANNEL`], so new work reaches idle nodes without waiting for a poll. It also ends
//!   when one of the pool's connections finds its server read-only (a demoted primary, which
//!   the session itself, never writing, would not notice): opened again, it lands where writes
//!   go, beside the others' locks and their notifications.
//! - SQLite (nodes on one machine): an exclusive `flock` on a lock file beside the database,
//!   named by the session key. The kernel drops it when the process dies.
//!
//! A free session lock is only evidence: a node is taken over early only when gossip also says
//! it is dead (see `docs/design/failure-detection.md`). A node cut off by the network keeps its
//! lock (the server sees no FIN), so then only the lease decides.

use crate::{Backend, Result, Store, StoreError};
use futures::StreamExt;
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_postgres::types::Type;

/// The PostgreSQL NOTIFY channel that says "new work may be claimable".
pub const WORK_CHANNEL: &str = "shoal_work";
/// The first key of the two-key advisory locks that hold node sessions; the two-key space
/// never overlaps the one-key locks used for `max_concurrent`.
const SESSION_LOCK_CLASS: i32 = 0x5348;

/// What a session tells its node.
#[derive(Debug)]
pub enum SessionEvent {
    /// Another node committed work this node may claim.
    Work,
    /// The session ended (connection lost). The node opens a new one.
    Lost(String),
}

/// Held by a live node; dropping it ends the session.
pub struct NodeSession {
    pub key: i64,
    inner: Inner,
}

enum Inner {
    Sqlite { _file: std::fs::File, path: PathBuf },
    Postgres { _client: tokio_postgres::Client },
}

impl Drop for NodeSession {
    fn drop(&mut self) {
        if let Inner::Sqlite { path, .. } = &self.inner {
            // Clean exit: nobody needs the file to tell we are gone.
            let _ = std::fs::remove_file(path);
        }
    }
}

fn lock_dir(db: &std::path::Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-sessions");
    db.with_file_name(name)
}

fn lock_path(db: &std::path::Path, key: i64) -> PathBuf {
    lock_dir(db).join(format!("{key:016x}.lock"))
}

impl Store {
    /// Opens a new session for `node`. Events arrive on the returned receiver; `Lost` is the
    /// last one a session sends.
    pub async fn open_session(&self, node: &str) -> Result<(NodeSession, mpsc::UnboundedReceiver<SessionEvent>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        match &self.backend {
            Backend::Sqlite(pool) => {
                let dir = lock_dir(&pool.path);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create the session directory {}: {e}", dir.display()))
                })?;
                loop {
                    let key = rand::random::<i64>() & i64::MAX;
                    let path = lock_path(&pool.path, key);
                    let file = std::fs::OpenOptions::new().create_new(true).write(true).open(&path);
                    let file = match file {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => {
                            return Err(StoreError::Unavailable(format!("cannot create {}: {e}", path.display())))
                        }
                    };
                    file.try_lock()
                        .map_err(|e| StoreError::Internal(format!("cannot lock {}: {e}", path.display())))?;
                    let _ = std::io::Write::write_all(&mut &file, format!("{node}\n").as_bytes());
                    // SQLite has no notifications; the poll and in-process wakes do that work.
                    drop(tx);
                    return Ok((NodeSession { key, inner: Inner::Sqlite { _file: file, path } }, rx));
                }
            }
            Backend::Postgres(pool) => {
                let mut cfg = pool.session.config.clone();
                cfg.application_name(format!("shoal session {node}"));
                // A session may be opened on a primary that is demoted later: it never writes
                // to find out, so it ends when any of the pool's connections finds out.
                let demoted = pool.demotion.watch();
                let opened = std::time::Instant::now();
                let (client, mut conn) = cfg.connect(pool.session.tls.clone()).await.map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot open a session connection: {}",
                        crate::postgres::with_causes(&e)
                    ))
                })?;
                let events = tx.clone();
                tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    let demotion = crate::postgres::Demotion::after(demoted, opened);
                    tokio::pin!(demotion);
                    let why = loop {
                        let message = tokio::select! {
                            m = messages.next() => m,
                            () = &mut demotion => break "its server may be the one found read-only (a demoted primary)".to_owned(),
                        };
                        match message {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                let _ = events.send(SessionEvent::Work);
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break e.to_string(),
                            None => break "connection closed".to_owned(),
                        }
                    };
                    // The connection closes here, before the node hears: its lock is let go.
                    drop(messages);
                    let _ = events.send(SessionEvent::Lost(why));
                });
                let key = loop {
                    let key = i64::from(rand::random::<i32>());
                    // On the unnamed statement, as every other: a name prepared here could be
                    // left on a session pooler's server connection by a killed process.
                    let (class, key32) = (SESSION_LOCK_CLASS, key as i32);
                    let rows = client
                        .query_typed(
                            "SELECT pg_try_advisory_lock($1, $2)",
                            &[(&class, Type::INT4), (&key32, Type::INT4)],
                        )
                        .await
                        .map_err(|e| StoreError::Unavailable(format!("cannot take the session lock: {e}")))?;
                    let row =
                        rows.first().ok_or_else(|| StoreError::Internal("no row from pg_try_advisory_lock".into()))?;
                    if row.get::<_, bool>(0) {
                        break key;
                    }
                };
                client
                    .batch_execute(&format!("LISTEN {WORK_CHANNEL}"))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("cannot LISTEN for work: {e}")))?;
                Ok((NodeSession { key, inner: Inner::Postgres { _client: client } }, rx))
            }
        }
    }

    /// Whether the session `key` has ended: its holder's process is gone (or closed it).
    pub async fn session_ended(&self, key: i64) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(pool) => {
                let path = lock_path(&pool.path, key);
                let file = match std::fs::OpenOptions::new().write(true).open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
                    Err(e) => return Err(StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))),
                };
                match file.try_lock() {
                    Ok(()) => {
                        // Its holder is gone: tidy its file up (a new session never reuses a key).
                        let _ = std::fs::remove_file(&path);
                        Ok(true)
                    }
                    Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                    Err(std::fs::TryLockError::Error(e)) => {
                        Err(StoreError::Unavailable(format!("cannot check {}: {e}", path.display())))
                    }
                }
            }
            Backend::Postgres(_) => {
                // CASE fixes the order: unlock only what this call just took.
                let mut c = self.read().await?;
                let row = crate::db::query_one(
                    c.as_mut(),
                    "SELECT CASE WHEN pg_try_advisory_lock(CAST($1 AS INT), CAST($2 AS INT))
                            THEN pg_advisory_unlock(CAST($1 AS INT), CAST($2 AS INT)) ELSE false END",
                    vec![i64::from(SESSION_LOCK_CLASS).into(), key.into()],
                )
                .await?
                .ok_or_else(|| StoreError::Internal("no row from the session check".into()))?;
                Ok(row.i64(0)? != 0)
            }
        }
    }

    /// Tells nodes listening for work (PostgreSQL) that work became claimable without a new
    /// row: executions queued ahead whose `run_after` has come. A no-op on SQLite.
    pub async fn announce_work(&self) -> Result<()> {
        if self.dialect() != crate::Dialect::Postgres {
            return Ok(());
        }
        let mut c = self.read().await?;
        Store::notify_work(c.as_mut()).await
    }

    /// Tells nodes listening for work (PostgreSQL) that something became claimable.
    pub(crate) async fn notify_work(tx: &mut dyn crate::db::Tx) -> Result<()> {
        if tx.dialect() == crate::Dialect::Postgres {
            tx.execute(&format!("SELECT pg_notify('{WORK_CHANNEL}', '')"), vec![]).await?;
        }
        Ok(())
    }
}
