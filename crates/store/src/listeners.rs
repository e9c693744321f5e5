//! Listeners, their events, the cursors of file listeners, and the node events cluster
//! listeners start jobs from.
//!
//! Exactly once (guarantee 5 of docs/guarantees.md): an event is a row keyed by (listener, event key),
//! inserted in the transaction that inserts its execution, like a schedule's firing. The
//! key names the event itself (the execution that finished, the file with its size and
//! modification time, the webhook delivery, the node generation), so any node that sees
//! the same event computes the same key and only one of them starts a job.

use crate::db::{query_one, Row, Tx, Value};
use crate::definitions::{job_fields, stored_params, Definitions, Owner};
use crate::executions::insert_executions;
use crate::{NewExecution, Result, Store, StoreError};
use shoal_core::listener::{EventOutcome, EventReason, ListenerKind};
use shoal_core::{ExecState, ExecutionId};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug, PartialEq)]
pub struct ListenerRow {
    pub id: String,
    pub name: String,
    pub kind: ListenerKind,
    pub sandbox: String,
    pub job: String,
    pub params: BTreeMap<String, String>,
    /// The kind's own settings, as JSON.
    pub config: String,
    /// A webhook's signing secret.
    pub secret: Option<String>,
    pub enabled: bool,
    /// Job and cluster listeners: events up to this store time have been looked at.
    pub cursor_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Whose rights its events start jobs with; `None` for one made before owners were
    /// recorded.
    pub owner: Option<Owner>,
}

#[derive(Clone, Debug)]
pub struct ListenerDef {
    pub name: String,
    pub kind: ListenerKind,
    pub sandbox: String,
    pub job: String,
    pub params: BTreeMap<String, String>,
    pub config: String,
    pub secret: Option<String>,
    pub enabled: bool,
    /// Who creates or replaces it, and so owns it from then on.
    pub owner: Owner,
}

#[derive(Clone, Debug)]
pub struct EventRow {
    pub listener_id: String,
    pub key: String,
    pub at: i64,
    pub node_id: String,
    pub outcome: EventOutcome,
    pub reason: Option<EventReason>,
    pub message: Option<String>,
    pub execution_id: Option<String>,
    pub payload: BTreeMap<String, String>,
}

/// One event to record.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub key: String,
    pub payload: BTreeMap<String, String>,
    /// The execution to start (`None`: record the event as skipped, with `reason`).
    pub execution: Option<NewExecution>,
    pub reason: Option<EventReason>,
    /// What the reason means here, when it has more to say.
    pub message: Option<String>,
    /// File listeners: the cursor entry this event moves from (`None`: the path was not in
    /// the cursor) and to (`None`: remove it). The event is recorded only if the cursor
    /// still holds `from`, so a node working from an old scan cannot move it backwards.
    pub cursor: Option<CursorMove>,
    /// Only move the cursor: the listener does not watch this kind of event (a file that
    /// changed, for a listener of new files), so nothing is recorded or started.
    pub silent: bool,
}

#[derive(Clone, Debug)]
pub struct CursorMove {
    pub path: String,
    pub from: Option<(i64, i64)>,
    pub to: Option<(i64, i64)>,
}

/// An event this call recorded, with the execution it started.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub key: String,
    pub execution: Option<ExecutionId>,
}

/// A node joining, leaving or dying, for cluster listeners.
#[derive(Clone, Debug)]
pub struct NodeEventRow {
    pub node_id: String,
    pub generation: i64,
    pub kind: String,
    pub at: i64,
}

/// A finished execution, for job-event listeners.
#[derive(Clone, Debug)]
pub struct FinishedExecution {
    pub id: String,
    pub sandbox: Option<String>,
    pub job: Option<String>,
    pub state: ExecState,
    pub exit_code: Option<i64>,
    pub node_id: Option<String>,
    pub params: BTreeMap<String, String>,
    pub finished_at: i64,
}

const COLUMNS: &str =
    "id, name, kind, sandbox, job, params, config, secret, enabled, cursor_at, created_at, updated_at, owner, owner_name";

/// Listeners as definitions: their events and file cursor go with them.
const LISTENERS: Definitions<ListenerRow> = Definitions {
    table: "listeners",
    noun: "listener",
    columns: COLUMNS,
    parse: listener_row,
    owned: &["DELETE FROM events WHERE listener_id = $1", "DELETE FROM file_cursors WHERE listener_id = $1"],
};

fn listener_row(r: &Row) -> Result<ListenerRow> {
    Ok(ListenerRow {
        id: r.text(0)?,
        name: r.text(1)?,
        kind: r.named(2, "listener kind", ListenerKind::parse)?,
        sandbox: r.text(3)?,
        job: r.text(4)?,
        params: stored_params(r, 5, "listener")?,
        config: r.text(6)?,
        secret: r.opt_text(7)?,
        enabled: r.i64(8)? != 0,
        cursor_at: r.i64(9)?,
        created_at: r.i64(10)?,
        updated_at: r.i64(11)?,
        owner: Owner::read(r, 12)?,
    })
}

/// A definition's columns after its kind, `sandbox` to `enabled`, as created and replaced.
fn def_fields(def: &ListenerDef) -> Result<Vec<Value>> {
    let mut fields = job_fields(&def.sandbox, &def.job, &def.params)?;
    fields.extend([def.config.as_str().into(), def.secret.clone().into(), i64::from(def.enabled).into()]);
    Ok(fields)
}

fn event_row(r: &Row) -> Result<EventRow> {
    Ok(EventRow {
        listener_id: r.text(0)?,
        key: r.text(1)?,
        at: r.i64(2)?,
        node_id: r.text(3)?,
        outcome: r.named(4, "event outcome", EventOutcome::parse)?,
        reason: r.opt_named(5, "event reason", EventReason::parse)?,
        execution_id: r.opt_text(6)?,
        payload: serde_json::from_str(&r.text(7)?).unwrap_or_default(),
        message: r.opt_text(8)?,
    })
}

const EVENT_COLUMNS: &str = "listener_id, key, at, node_id, outcome, reason, execution_id, payload, message";

impl Store {
    /// Creates a listener. Job and cluster events from now on (the store's clock) are its.
    pub async fn create_listener(&self, def: &ListenerDef) -> Result<ListenerRow> {
        let mut fields = vec![def.kind.as_str().into()];
        fields.extend(def_fields(def)?);
        let fields = def.owner.with(fields);
        LISTENERS
            .insert(self, &def.name, "$1, $2, $3, $4, $5, $6, $7, $8, $9, {now}, {now}, {now}, $10, $11", fields)
            .await
    }

    /// Replaces a listener's definition (name and kind stay).
    pub async fn update_listener(&self, reference: &str, def: &ListenerDef) -> Result<ListenerRow> {
        let fields = def.owner.with(def_fields(def)?);
        let (tx, old) = LISTENERS.lock(self, reference).await?;
        LISTENERS
            .update(
                tx,
                &old.id,
                "sandbox = $2, job = $3, params = $4, config = $5, secret = $6, enabled = $7, updated_at = {now},
                 owner = $8, owner_name = $9",
                fields,
            )
            .await
    }

    /// Deletes a listener with its events and cursor. Executions it started are kept.
    pub async fn delete_listener(&self, reference: &str) -> Result<()> {
        let (tx, old) = LISTENERS.lock(self, reference).await?;
        LISTENERS.delete(tx, &old.id).await
    }

    pub async fn get_listener(&self, reference: &str) -> Result<Option<ListenerRow>> {
        LISTENERS.get(self, reference).await
    }

    pub async fn list_listeners(&self) -> Result<Vec<ListenerRow>> {
        LISTENERS.list(self).await
    }

    /// A listener's events, newest first.
    pub async fn list_events(&self, listener_id: &str, limit: i64) -> Result<Vec<EventRow>> {
        self.read_rows(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE listener_id = $1 ORDER BY at DESC, key DESC LIMIT $2"),
            vec![listener_id.into(), limit.into()],
            event_row,
        )
        .await
    }

    /// One event by key.
    pub async fn get_event(&self, listener_id: &str, key: &str) -> Result<Option<EventRow>> {
        let mut c = self.read().await?;
        let row = query_one(
            c.as_mut(),
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE listener_id = $1 AND key = $2"),
            vec![listener_id.into(), key.into()],
        )
        .await?;
        row.as_ref().map(event_row).transpose()
    }

    /// Every event of a listener, oldest first (for tests and audits).
    pub async fn all_events(&self, listener_id: &str) -> Result<Vec<EventRow>> {
        self.read_rows(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE listener_id = $1 ORDER BY at, key"),
            vec![listener_id.into()],
            event_row,
        )
        .await
    }

    /// Records events and starts their executions, in one transaction: an event whose key
    /// the listener already has (another node recorded it) or whose cursor move no longer
    /// applies is left out. `cursor_at`, if given, moves the listener's cursor forward.
    /// Returns the events this call recorded.
    pub async fn record_events(
        &self,
        listener_id: &str,
        node: &str,
        events: &[NewEvent],
        cursor_at: Option<i64>,
    ) -> Result<Vec<Recorded>> {
        let mut tx = self.begin_write().await?;
        let mut out = Vec::new();
        let mut any_work = false;
        for ev in events {
            if let Some(m) = &ev.cursor {
                let current = query_one(
                    tx.as_mut(),
                    "SELECT size, mtime_ns FROM file_cursors WHERE listener_id = $1 AND path = $2 {for_update}",
                    vec![listener_id.into(), m.path.as_str().into()],
                )
                .await?
                .map(|r| Ok::<_, StoreError>((r.i64(0)?, r.i64(1)?)))
                .transpose()?;
                if current != m.from {
                    continue;
                }
            }
            if ev.silent {
                if let Some(m) = &ev.cursor {
                    move_cursor(tx.as_mut(), listener_id, m).await?;
                }
                continue;
            }
            let exec_id = ev.execution.as_ref().map(|_| uuid::Uuid::now_v7().to_string());
            let payload = serde_json::to_string(&ev.payload).map_err(|e| StoreError::Internal(e.to_string()))?;
            let inserted = tx
                .query(
                    "INSERT INTO events (listener_id, key, at, node_id, outcome, reason, execution_id, payload, message)
                     VALUES ($1, $2, {now}, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (listener_id, key) DO NOTHING RETURNING key",
                    vec![
                        listener_id.into(),
                        ev.key.as_str().into(),
                        node.into(),
                        if ev.execution.is_some() { EventOutcome::Started } else { EventOutcome::Skipped }
                            .as_str()
                            .into(),
                        ev.reason.map(EventReason::as_str).into(),
                        exec_id.clone().into(),
                        payload.into(),
                        ev.message.clone().into(),
                    ],
                )
                .await?;
            if inserted.is_empty() {
                continue;
            }
            if let Some(m) = &ev.cursor {
                move_cursor(tx.as_mut(), listener_id, m).await?;
            }
            if let (Some(id), Some(exec)) = (&exec_id, &ev.execution) {
                insert_executions(tx.as_mut(), &[(id.clone(), exec)], false).await?;
                any_work = true;
            }
            out.push(Recorded { key: ev.key.clone(), execution: exec_id.map(ExecutionId::from_trusted) });
        }
        if let Some(at) = cursor_at {
            tx.execute(
                "UPDATE listeners SET cursor_at = $2 WHERE id = $1 AND cursor_at < $2",
                vec![listener_id.into(), at.into()],
            )
            .await?;
        }
        if any_work {
            Store::notify_work(tx.as_mut()).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// A file listener's cursor: path → (size, modification time in ns).
    pub async fn file_cursor(&self, listener_id: &str) -> Result<HashMap<String, (i64, i64)>> {
        let mut c = self.read().await?;
        let rows = c
            .query("SELECT path, size, mtime_ns FROM file_cursors WHERE listener_id = $1", vec![listener_id.into()])
            .await?;
        rows.iter().map(|r| Ok((r.text(0)?, (r.i64(1)?, r.i64(2)?)))).collect()
    }

    /// Executions of one job that finished at or after `since` (store time) in one of
    /// `states` and that this listener has no event for yet, oldest first.
    pub async fn finished_executions_for(
        &self,
        listener_id: &str,
        sandbox: &str,
        job: &str,
        states: &[ExecState],
        since: i64,
        limit: i64,
    ) -> Result<Vec<FinishedExecution>> {
        let mut c = self.read().await?;
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let ph = (0..names.len()).map(|i| format!("${}", i + 6)).collect::<Vec<_>>().join(", ");
        let mut params: Vec<Value> = vec![listener_id.into(), sandbox.into(), job.into(), since.into(), limit.into()];
        params.extend(names.iter().map(|n| (*n).into()));
        let rows = c
            .query(
                &format!(
                    "SELECT e.id, e.sandbox, e.job, e.state, e.exit_code, e.node_id, e.params, e.finished_at
                     FROM executions e
                     WHERE e.finished_at >= $4 AND e.sandbox = $2 AND e.job = $3 AND e.state IN ({ph})
                       AND NOT EXISTS (SELECT 1 FROM events v WHERE v.listener_id = $1 AND v.key = e.id)
                     ORDER BY e.finished_at, e.id LIMIT $5"
                ),
                params,
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(FinishedExecution {
                    id: r.text(0)?,
                    sandbox: r.opt_text(1)?,
                    job: r.opt_text(2)?,
                    state: ExecState::parse(&r.text(3)?)
                        .ok_or_else(|| StoreError::Internal("unknown execution state".into()))?,
                    exit_code: r.opt_i64(4)?,
                    node_id: r.opt_text(5)?,
                    params: serde_json::from_str(&r.text(6)?).unwrap_or_default(),
                    finished_at: r.i64(7)?,
                })
            })
            .collect()
    }

    /// Node events at or after `since` this listener has no event for yet, oldest first.
    /// The event key a cluster listener uses is `kind:node:generation`.
    pub async fn node_events_for(&self, listener_id: &str, since: i64, limit: i64) -> Result<Vec<NodeEventRow>> {
        self.read_rows(
            "SELECT n.node_id, n.generation, n.kind, n.at FROM node_events n
             WHERE n.at >= $2 AND NOT EXISTS (
                 SELECT 1 FROM events v WHERE v.listener_id = $1
                   AND v.key = n.kind || ':' || n.node_id || ':' || CAST(n.generation AS TEXT))
             ORDER BY n.at, n.node_id LIMIT $3",
            vec![listener_id.into(), since.into(), limit.into()],
            |r| Ok(NodeEventRow { node_id: r.text(0)?, generation: r.i64(1)?, kind: r.text(2)?, at: r.i64(3)? }),
        )
        .await
    }

    /// Records that nodes whose lease has run out (without a graceful stop) died. Called
    /// by every node's cluster-listener worker; the primary key keeps one row per death.
    pub async fn record_node_deaths(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.execute(
            "INSERT INTO node_events (node_id, generation, kind, at)
             SELECT id, generation, 'node_died', {now} FROM nodes WHERE lease_expires_at <= {now} AND state <> 'stopped'
             ON CONFLICT (node_id, generation, kind) DO NOTHING",
            vec![],
        )
        .await?;
        tx.commit().await
    }
}

async fn move_cursor(tx: &mut dyn Tx, listener_id: &str, m: &CursorMove) -> Result<()> {
    match m.to {
        Some((size, mtime)) => {
            tx.execute(
                "INSERT INTO file_cursors (listener_id, path, size, mtime_ns) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (listener_id, path) DO UPDATE SET size = $3, mtime_ns = $4",
                vec![listener_id.into(), m.path.as_str().into(), size.into(), mtime.into()],
            )
            .await?;
        }
        None => {
            tx.execute(
                "DELETE FROM file_cursors WHERE listener_id = $1 AND path = $2",
                vec![listener_id.into(), m.path.as_str().into()],
            )
            .await?;
        }
    }
    Ok(())
}

/// Records a node event in the caller's transaction (registration and graceful stop).
pub(crate) async fn insert_node_event(tx: &mut dyn Tx, node: &str, generation: i64, kind: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO node_events (node_id, generation, kind, at) VALUES ($1, $2, $3, {now})
         ON CONFLICT (node_id, generation, kind) DO NOTHING",
        vec![node.into(), generation.into(), kind.into()],
    )
    .await?;
    Ok(())
}
