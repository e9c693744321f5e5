//! The audit trail: who changed what, through which node, when (the store's clock) and how it
//! ended. Rows are written in batches by each node's `audit` worker (the API queues them), read
//! newest first with filters and keyset paging, and pruned past `audit.retention` in bounded
//! batches by every node (a delete is the same whoever makes it, so no node leads).

use crate::db::{Row, Value};
use crate::{Result, Store};
use shoal_core::AuditOutcome;
use std::time::Instant;

/// What one row says happened.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    /// `token:NAME`, `user:NAME` (for a login, the name tried).
    pub principal: String,
    /// The node the client sent the request to, which records it.
    pub node: String,
    /// The node that served it, when the request was forwarded to another.
    pub served_by: Option<String>,
    /// The API's operation id (`createSchedule`, `createSession` for a login).
    pub action: String,
    /// What it acted on (a sandbox, `SANDBOX/PATH` of a file, a schedule's id or name, an
    /// execution's id, ...); empty when nothing is named.
    pub target: String,
    pub outcome: AuditOutcome,
    /// The HTTP status answered.
    pub status: i64,
    /// The error code answered, if any.
    pub code: Option<String>,
}

/// A row to write. Its time is the store's clock at the insert minus its age, how long the row
/// waited in its node's queue (measured on the node's monotonic clock), so a row queued while
/// the store was away still gets the time of its request.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAudit {
    /// Unique (a UUIDv7); a batch written again after an uncertain commit changes nothing.
    pub id: String,
    /// How old it was when [`Store::insert_audit`] was called (its `measured` instant).
    pub age_ms: i64,
    pub record: AuditRecord,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AuditRow {
    pub id: String,
    /// Store milliseconds.
    pub at: i64,
    pub record: AuditRecord,
}

/// Which rows [`Store::list_audit`] answers; every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub principal: Option<String>,
    pub action: Option<String>,
    /// Rows whose target starts with this (case-sensitive).
    pub target_prefix: Option<String>,
    pub outcome: Option<AuditOutcome>,
    pub node: Option<String>,
    /// Store milliseconds, inclusive.
    pub since: Option<i64>,
    /// Store milliseconds, exclusive.
    pub until: Option<i64>,
    pub limit: i64,
    /// Only rows older than this one (its `at` and `id`): the last row of the page before.
    pub before: Option<(i64, String)>,
}

const COLUMNS: &str = "id, at, principal, node, served_by, action, target, outcome, status, code";

/// Parameters per row of an insert.
const PER_ROW: usize = 10;

/// Rows per insert statement (PostgreSQL takes 65535 parameters, SQLite 32766).
const MAX_BATCH: usize = 500;

fn audit_row(r: &Row) -> Result<AuditRow> {
    Ok(AuditRow {
        id: r.text(0)?,
        at: r.i64(1)?,
        record: AuditRecord {
            principal: r.text(2)?,
            node: r.text(3)?,
            served_by: r.opt_text(4)?,
            action: r.text(5)?,
            target: r.text(6)?,
            outcome: r.named(7, "audit outcome", AuditOutcome::parse)?,
            status: r.i64(8)?,
            code: r.opt_text(9)?,
        },
    })
}

impl Store {
    /// Writes these rows in one transaction; a row whose id is already stored is skipped.
    /// `measured` is when the rows' ages were taken: the time waited since for the store (a
    /// connection, the write lock) is added to them once the transaction has begun, so it
    /// does not shift their times, and rows keep the order they were queued in.
    pub async fn insert_audit(&self, rows: &[NewAudit], measured: Instant) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let waited = i64::try_from(measured.elapsed().as_millis()).unwrap_or(i64::MAX);
        for chunk in rows.chunks(MAX_BATCH) {
            let mut sql = format!("INSERT INTO audit ({COLUMNS}) VALUES ");
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * PER_ROW);
            for (i, row) in chunk.iter().enumerate() {
                let r = &row.record;
                let n = i * PER_ROW;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, {{now}} - ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6,
                    n + 7,
                    n + 8,
                    n + 9,
                    n + 10
                ));
                params.extend([
                    row.id.clone().into(),
                    row.age_ms.max(0).saturating_add(waited).into(),
                    r.principal.clone().into(),
                    r.node.clone().into(),
                    r.served_by.clone().into(),
                    r.action.clone().into(),
                    r.target.clone().into(),
                    r.outcome.as_str().into(),
                    r.status.into(),
                    r.code.clone().into(),
                ]);
            }
            sql.push_str(" ON CONFLICT (id) DO NOTHING");
            tx.execute(&sql, params).await?;
        }
        tx.commit().await
    }

    /// A page of rows, newest first (by time, then id).
    pub async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1 = 1");
        let mut params: Vec<Value> = Vec::new();
        // `$_` in a condition is its parameter's place.
        let mut add = |sql: &mut String, cond: &str, v: Value| {
            params.push(v);
            sql.push_str(&format!(" AND {}", cond.replace("$_", &format!("${}", params.len()))));
        };
        if let Some(p) = &f.principal {
            add(&mut sql, "principal = $_", p.into());
        }
        if let Some(a) = &f.action {
            add(&mut sql, "action = $_", a.into());
        }
        if let Some(t) = &f.target_prefix {
            // Not LIKE: SQLite's is case-insensitive, and `%` or `_` in a target would match
            // more than it says.
            add(&mut sql, "substr(target, 1, length(CAST($_ AS TEXT))) = CAST($_ AS TEXT)", t.into());
        }
        if let Some(o) = f.outcome {
            add(&mut sql, "outcome = $_", o.as_str().into());
        }
        if let Some(n) = &f.node {
            add(&mut sql, "node = $_", n.into());
        }
        if let Some(s) = f.since {
            add(&mut sql, "at >= $_", s.into());
        }
        if let Some(u) = f.until {
            add(&mut sql, "at < $_", u.into());
        }
        if let Some((at, id)) = &f.before {
            params.push((*at).into());
            params.push(id.into());
            let (a, i) = (params.len() - 1, params.len());
            sql.push_str(&format!(" AND (at < ${a} OR (at = ${a} AND id < ${i}))"));
        }
        params.push(f.limit.into());
        sql.push_str(&format!(" ORDER BY at DESC, id DESC LIMIT ${}", params.len()));
        self.view_rows(&sql, params, audit_row).await
    }

    /// Deletes up to `max` of the oldest rows older than `retention_ms` (store clock); says
    /// how many it deleted.
    pub async fn prune_audit(&self, retention_ms: i64, max: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let n = tx
            .execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < {now} - $1 ORDER BY at LIMIT $2)",
                vec![retention_ms.into(), max.into()],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}
