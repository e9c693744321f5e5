//! Schedules and their firings.
//!
//! Exactly once (guarantee 4 of docs/guarantees.md): a firing is a row keyed by (schedule, firing time),
//! inserted in the transaction that inserts its execution. Every node's scheduler may try
//! to fire any schedule; the schedule row is locked while the firings are decided, on the
//! store's clock, and the primary key refuses a second row for one firing time even if two
//! transactions got past the lock's view of `last_fire_at` at once. Which node fires what
//! only spreads the work (see shoal-server's `triggers.rs`); it never decides correctness.

use crate::db::{query_one, Row, Tx, Value};
use crate::definitions::{job_fields, stored_params, Definitions, Owner};
use crate::executions::{insert_executions, values_list, BATCH_ROWS};
use crate::{NewExecution, Result, Store, StoreError};
use shoal_core::schedule::{FiringReason, Misfire, Overlap};
use shoal_core::{ExecState, ExecutionId};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The stored `misfire_max` column: `all`'s count, else NULL.
fn misfire_max(m: Misfire) -> Option<i64> {
    match m {
        Misfire::All { max } => Some(i64::from(max)),
        Misfire::Skip | Misfire::Once => None,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRow {
    pub id: String,
    pub name: String,
    pub sandbox: String,
    pub job: String,
    pub params: BTreeMap<String, String>,
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
    /// The misfire policy, with `all`'s count.
    pub misfire: Misfire,
    pub misfire_threshold_ms: i64,
    pub overlap: Overlap,
    /// The newest firing time recorded (run or skipped), or the time the schedule was
    /// created: firings after it are due.
    pub last_fire_at: i64,
    pub last_execution_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Whose rights it fires with; `None` for one made before owners were recorded.
    pub owner: Option<Owner>,
}

/// A schedule's definition, as created or replaced by the API.
#[derive(Clone, Debug)]
pub struct ScheduleDef {
    pub name: String,
    pub sandbox: String,
    pub job: String,
    pub params: BTreeMap<String, String>,
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
    pub misfire: Misfire,
    pub misfire_threshold_ms: i64,
    pub overlap: Overlap,
    /// Who creates or replaces it, and so owns it from then on.
    pub owner: Owner,
}

/// What became of a firing time (the wire's enum, through the core).
pub use shoal_core::schedule::FiringOutcome;

#[derive(Clone, Debug)]
pub struct FiringRow {
    pub schedule_id: String,
    pub fire_at: i64,
    pub outcome: FiringOutcome,
    pub reason: Option<FiringReason>,
    pub message: Option<String>,
    pub execution_id: Option<String>,
    pub node_id: String,
    pub claimed_at: i64,
}

/// One firing time to record.
#[derive(Clone, Debug)]
pub struct NewFiring {
    pub fire_at: i64,
    pub outcome: FiringOutcome,
    pub reason: Option<FiringReason>,
    /// What the reason means here, when it has more to say.
    pub message: Option<String>,
    /// The execution to enqueue with it (for [`FiringOutcome::Started`]).
    pub execution: Option<NewExecution>,
}

/// What the scheduler knows when it decides a schedule's firings, read in the firing
/// transaction with the schedule row locked.
#[derive(Debug)]
pub struct FireContext<'a> {
    pub schedule: &'a ScheduleRow,
    /// The store's clock.
    pub now: i64,
    /// The state of the schedule's newest execution, if it has one.
    pub previous: Option<ExecState>,
    /// The firing time waiting for the previous run to finish, if one waits.
    pub queued: Option<i64>,
}

/// What the scheduler decided for one schedule.
#[derive(Debug, Default)]
pub struct FireDecision {
    pub firings: Vec<NewFiring>,
    /// Start the waiting firing now with this execution.
    pub release_queued: Option<NewExecution>,
    /// Cancel the previous run (overlap policy `replace`).
    pub cancel_previous: bool,
    /// The newest firing time this decision covers: the schedule's next `last_fire_at`.
    pub covered_to: Option<i64>,
}

/// What one firing transaction did to one schedule.
#[derive(Clone, Debug, Default)]
pub struct Fired {
    pub schedule_id: String,
    /// Firing times recorded by this call, with the execution each started.
    pub recorded: Vec<(i64, FiringOutcome, Option<ExecutionId>)>,
    /// Firing times another node had recorded first (the unique claim refused them).
    pub already_claimed: usize,
    /// The schedule's `last_fire_at` after the call.
    pub last_fire_at: i64,
}

const COLUMNS: &str =
    "id, name, sandbox, job, params, cron, timezone, enabled, misfire, misfire_max, misfire_threshold_ms,
    overlap, last_fire_at, last_execution_id, created_at, updated_at, owner, owner_name";

/// The index of the first column a query selects after [`COLUMNS`].
const AFTER: usize = 18;

/// Schedules as definitions: their firing history goes with them.
const SCHEDULES: Definitions<ScheduleRow> = Definitions {
    table: "schedules",
    noun: "schedule",
    columns: COLUMNS,
    parse: schedule_row,
    owned: &["DELETE FROM firings WHERE schedule_id = $1"],
};

fn schedule_row(r: &Row) -> Result<ScheduleRow> {
    Ok(ScheduleRow {
        id: r.text(0)?,
        name: r.text(1)?,
        sandbox: r.text(2)?,
        job: r.text(3)?,
        params: stored_params(r, 4, "schedule")?,
        cron: r.text(5)?,
        timezone: r.text(6)?,
        enabled: r.i64(7)? != 0,
        misfire: {
            let (name, max) = (r.text(8)?, r.opt_i64(9)?);
            Misfire::parse(&name, max.map(|m| m.clamp(0, i64::from(u32::MAX)) as u32))
                .map_err(|e| StoreError::Internal(format!("stored schedule has {e}")))?
        },
        misfire_threshold_ms: r.i64(10)?,
        overlap: Overlap::parse(&r.text(11)?).map_err(|e| StoreError::Internal(format!("stored schedule has {e}")))?,
        last_fire_at: r.i64(12)?,
        last_execution_id: r.opt_text(13)?,
        created_at: r.i64(14)?,
        updated_at: r.i64(15)?,
        owner: Owner::read(r, 16)?,
    })
}

fn firing_row(r: &Row) -> Result<FiringRow> {
    Ok(FiringRow {
        schedule_id: r.text(0)?,
        fire_at: r.i64(1)?,
        outcome: r.named(2, "firing outcome", FiringOutcome::parse)?,
        reason: r.opt_named(3, "firing reason", FiringReason::parse)?,
        execution_id: r.opt_text(4)?,
        node_id: r.text(5)?,
        claimed_at: r.i64(6)?,
        message: r.opt_text(7)?,
    })
}

/// A definition's columns after its name, `sandbox` to `overlap`, as created and replaced.
fn def_fields(def: &ScheduleDef) -> Result<Vec<Value>> {
    let mut fields = job_fields(&def.sandbox, &def.job, &def.params)?;
    fields.extend([
        def.cron.as_str().into(),
        def.timezone.as_str().into(),
        i64::from(def.enabled).into(),
        def.misfire.as_str().into(),
        misfire_max(def.misfire).into(),
        def.misfire_threshold_ms.into(),
        def.overlap.as_str().into(),
    ]);
    Ok(fields)
}

impl Store {
    /// Creates a schedule. Firing times after now (the store's clock) are due from then on.
    pub async fn create_schedule(&self, def: &ScheduleDef) -> Result<ScheduleRow> {
        SCHEDULES
            .insert(
                self,
                &def.name,
                "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, {now}, NULL, {now}, {now}, $13, $14",
                def.owner.with(def_fields(def)?),
            )
            .await
    }

    /// Replaces a schedule's definition (the name stays). A schedule enabled again counts
    /// its firings from now: the time it was off is recorded as nothing, not as misfires.
    pub async fn update_schedule(&self, reference: &str, def: &ScheduleDef) -> Result<ScheduleRow> {
        let mut fields = def_fields(def)?;
        let (mut tx, old) = SCHEDULES.lock(self, reference).await?;
        // Firings claimed ahead were decided under the old definition.
        if let Some(earliest) = withdraw_future_firings(tx.as_mut(), &old.id).await? {
            tx.execute(
                "UPDATE schedules SET last_fire_at = $2 WHERE id = $1",
                vec![old.id.as_str().into(), (earliest - 1).min(old.last_fire_at).into()],
            )
            .await?;
        }
        // A new expression or time zone starts from now too: the old one's due firings are
        // not the new one's.
        fields.push(
            i64::from((def.enabled && !old.enabled) || def.cron != old.cron || def.timezone != old.timezone).into(),
        );
        let fields = def.owner.with(fields);
        SCHEDULES
            .update(
                tx,
                &old.id,
                "sandbox = $2, job = $3, params = $4, cron = $5, timezone = $6, enabled = $7,
                 misfire = $8, misfire_max = $9, misfire_threshold_ms = $10, overlap = $11, updated_at = {now},
                 last_fire_at = CASE WHEN $12 = 1 THEN {now} ELSE last_fire_at END, owner = $13, owner_name = $14",
                fields,
            )
            .await
    }

    /// Deletes a schedule and its firing history. Executions it started are kept.
    pub async fn delete_schedule(&self, reference: &str) -> Result<()> {
        let (mut tx, old) = SCHEDULES.lock(self, reference).await?;
        withdraw_future_firings(tx.as_mut(), &old.id).await?;
        SCHEDULES.delete(tx, &old.id).await
    }

    pub async fn get_schedule(&self, reference: &str) -> Result<Option<ScheduleRow>> {
        SCHEDULES.get(self, reference).await
    }

    pub async fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        SCHEDULES.list(self).await
    }

    /// Schedules with a firing waiting for their previous run (overlap policy `queue`).
    pub async fn schedules_with_queued_firings(&self) -> Result<Vec<String>> {
        self.read_rows("SELECT DISTINCT schedule_id FROM firings WHERE outcome = 'queued'", vec![], |r| r.text(0)).await
    }

    /// A schedule's firings, newest first.
    pub async fn list_firings(&self, schedule_id: &str, limit: i64) -> Result<Vec<FiringRow>> {
        self.read_rows(
            "SELECT schedule_id, fire_at, outcome, reason, execution_id, node_id, claimed_at, message FROM firings
             WHERE schedule_id = $1 ORDER BY fire_at DESC LIMIT $2",
            vec![schedule_id.into(), limit.into()],
            firing_row,
        )
        .await
    }

    /// Every firing of a schedule in `[from, to]`, oldest first (for tests and audits).
    pub async fn firings_between(&self, schedule_id: &str, from: i64, to: i64) -> Result<Vec<FiringRow>> {
        self.read_rows(
            "SELECT schedule_id, fire_at, outcome, reason, execution_id, node_id, claimed_at, message FROM firings
             WHERE schedule_id = $1 AND fire_at >= $2 AND fire_at <= $3 ORDER BY fire_at",
            vec![schedule_id.into(), from.into(), to.into()],
            firing_row,
        )
        .await
    }

    /// Every firing in `[from, to]` across all schedules with its claim time and its
    /// execution's start (for benchmarks): (schedule, fire_at, claimed_at, started_at).
    pub async fn firing_report(&self, from: i64, to: i64) -> Result<Vec<(String, i64, i64, Option<i64>)>> {
        self.read_rows(
            "SELECT f.schedule_id, f.fire_at, f.claimed_at, e.started_at FROM firings f
             LEFT JOIN executions e ON e.id = f.execution_id
             WHERE f.fire_at >= $1 AND f.fire_at <= $2 ORDER BY f.schedule_id, f.fire_at",
            vec![from.into(), to.into()],
            |r| Ok((r.text(0)?, r.i64(1)?, r.i64(2)?, r.opt_i64(3)?)),
        )
        .await
    }

    /// Decides and records the due firings of several schedules in one transaction.
    ///
    /// The schedule rows are locked and the store's clock read first; `decide` is then
    /// called once per schedule with what it needs ([`FireContext`]) and says which firing
    /// times to record, with which executions. Each firing row is inserted with `ON CONFLICT
    /// DO NOTHING`, and only the firings whose row this transaction inserted get their
    /// execution: that row is the exactly-once claim.
    pub async fn fire_schedules<F>(&self, ids: &[String], node: &str, mut decide: F) -> Result<(i64, Vec<Fired>)>
    where
        F: FnMut(&FireContext<'_>) -> FireDecision,
    {
        let mut tx = self.begin_write().await?;
        let now = query_one(tx.as_mut(), "SELECT {now}", vec![])
            .await?
            .ok_or_else(|| StoreError::Internal("no row from SELECT now".into()))?
            .i64(0)?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok((now, Vec::new()));
        }
        // Locked in id order, so two nodes firing overlapping sets cannot deadlock.
        let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let placeholders = (1..=sorted.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        // The rows, locked, with the state of each one's newest execution and the firing
        // waiting for it, in one statement.
        let mut previous: HashMap<String, ExecState> = HashMap::new();
        let mut queued: HashMap<String, i64> = HashMap::new();
        let mut schedules: Vec<ScheduleRow> = Vec::with_capacity(sorted.len());
        for r in tx
            .query(
                &format!(
                    "SELECT {COLUMNS},
                         (SELECT e.state FROM executions e WHERE e.id = schedules.last_execution_id),
                         (SELECT MIN(f.fire_at) FROM firings f WHERE f.schedule_id = schedules.id AND f.outcome = 'queued')
                     FROM schedules WHERE id IN ({placeholders}) ORDER BY id {{for_update}}"
                ),
                sorted.iter().map(|s| (*s).into()).collect(),
            )
            .await?
        {
            let s = schedule_row(&r)?;
            if let Some(state) = r.opt_text(AFTER)?.and_then(|t| ExecState::parse(&t)) {
                if let Some(id) = &s.last_execution_id {
                    previous.insert(id.clone(), state);
                }
            }
            if let Some(at) = r.opt_i64(AFTER + 1)? {
                queued.insert(s.id.clone(), at);
            }
            schedules.push(s);
        }
        let mut out = Vec::with_capacity(schedules.len());
        let mut any_work = false;
        // Every schedule's decision first; then one multi-row insert of all the firing rows,
        // one of the executions whose rows were inserted, and one update of the schedules:
        // a batch of schedules due at the same second costs a few statements, not a few per
        // schedule.
        let mut rows: Vec<(usize, NewFiring, Option<String>)> = Vec::new();
        let mut newest: Vec<Option<String>> = vec![None; schedules.len()];
        let mut covered: Vec<i64> = Vec::with_capacity(schedules.len());
        for (i, s) in schedules.iter().enumerate() {
            let ctx = FireContext {
                schedule: s,
                now,
                previous: s.last_execution_id.as_ref().and_then(|id| previous.get(id).copied()),
                queued: queued.get(&s.id).copied(),
            };
            let decision = decide(&ctx);
            let mut fired = Fired { schedule_id: s.id.clone(), last_fire_at: s.last_fire_at, ..Fired::default() };
            if decision.cancel_previous {
                if let Some(prev) = &s.last_execution_id {
                    cancel_for_replace(tx.as_mut(), prev, &s.name).await?;
                }
            }
            if let (Some(exec), Some(fire_at)) = (decision.release_queued, ctx.queued) {
                let id = uuid::Uuid::now_v7().to_string();
                let n = tx
                    .execute(
                        "UPDATE firings SET outcome = 'started', execution_id = $3
                         WHERE schedule_id = $1 AND fire_at = $2 AND outcome = 'queued'",
                        vec![s.id.as_str().into(), fire_at.into(), id.as_str().into()],
                    )
                    .await?;
                if n == 1 {
                    insert_executions(tx.as_mut(), &[(id.clone(), &exec)], false).await?;
                    any_work = true;
                    fired.recorded.push((fire_at, FiringOutcome::Started, Some(ExecutionId::from_trusted(id.clone()))));
                    newest[i] = Some(id);
                }
            }
            for f in decision.firings {
                let exec_id = f.execution.as_ref().map(|_| uuid::Uuid::now_v7().to_string());
                rows.push((i, f, exec_id));
            }
            covered.push(decision.covered_to.map_or(s.last_fire_at, |c| c.max(s.last_fire_at)));
            out.push(fired);
        }
        let mut inserted: HashSet<(usize, i64)> = HashSet::new();
        let index: HashMap<&str, usize> = schedules.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
        for part in rows.chunks(BATCH_ROWS) {
            let sql = format!(
                "INSERT INTO firings (schedule_id, fire_at, outcome, reason, execution_id, node_id, claimed_at, message)
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, $1, {{now}}, v.column6 FROM (VALUES {}) AS v
                 WHERE 1 = 1
                 ON CONFLICT (schedule_id, fire_at) DO NOTHING RETURNING schedule_id, fire_at",
                values_list(part.len(), &[None, Some("BIGINT"), None, Some("TEXT"), Some("TEXT"), Some("TEXT")], 2)
            );
            let mut params: Vec<Value> = Vec::with_capacity(1 + part.len() * 6);
            params.push(node.into());
            for (i, f, exec_id) in part {
                params.extend([
                    schedules[*i].id.as_str().into(),
                    f.fire_at.into(),
                    f.outcome.as_str().into(),
                    f.reason.map(FiringReason::as_str).into(),
                    exec_id.clone().into(),
                    f.message.clone().into(),
                ]);
            }
            for r in tx.query(&sql, params).await? {
                if let Some(i) = index.get(r.text(0)?.as_str()) {
                    inserted.insert((*i, r.i64(1)?));
                }
            }
        }
        let mut executions: Vec<(String, &NewExecution)> = Vec::new();
        for (i, f, exec_id) in &rows {
            if !inserted.contains(&(*i, f.fire_at)) {
                out[*i].already_claimed += 1;
                continue;
            }
            if let (Some(id), Some(exec)) = (exec_id, &f.execution) {
                executions.push((id.clone(), exec));
                newest[*i] = Some(id.clone());
            }
            out[*i].recorded.push((f.fire_at, f.outcome, exec_id.clone().map(ExecutionId::from_trusted)));
        }
        if !executions.is_empty() {
            insert_executions(tx.as_mut(), &executions, false).await?;
            any_work = true;
        }
        let changed: Vec<usize> =
            (0..schedules.len()).filter(|&i| covered[i] != schedules[i].last_fire_at || newest[i].is_some()).collect();
        for part in changed.chunks(BATCH_ROWS) {
            let sql = format!(
                "UPDATE schedules SET last_fire_at = v.column2, last_execution_id = COALESCE(v.column3, schedules.last_execution_id)
                 FROM (VALUES {}) AS v WHERE schedules.id = v.column1",
                values_list(part.len(), &[None, Some("BIGINT"), Some("TEXT")], 1)
            );
            let mut params: Vec<Value> = Vec::with_capacity(part.len() * 3);
            for &i in part {
                params.extend([schedules[i].id.as_str().into(), covered[i].into(), newest[i].clone().into()]);
            }
            tx.execute(&sql, params).await?;
        }
        for (i, f) in out.iter_mut().enumerate() {
            f.last_fire_at = covered[i];
        }
        if any_work {
            Store::notify_work(tx.as_mut()).await?;
        }
        tx.commit().await?;
        Ok((now, out))
    }
}

/// Withdraws the firings claimed ahead of their time (after now): their queued executions
/// are cancelled and their rows deleted, so a changed, disabled or deleted schedule never
/// runs a firing decided under its old definition. Returns the earliest withdrawn time.
async fn withdraw_future_firings(tx: &mut dyn Tx, schedule_id: &str) -> Result<Option<i64>> {
    let rows = tx
        .query(
            "SELECT fire_at, execution_id FROM firings WHERE schedule_id = $1 AND fire_at > {now}",
            vec![schedule_id.into()],
        )
        .await?;
    let mut earliest: Option<i64> = None;
    for r in &rows {
        let at = r.i64(0)?;
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
        if let Some(e) = r.opt_text(1)? {
            tx.execute(
                "UPDATE executions SET state = 'cancelled', reason = 'cancelled', finished_at = {now}, updated_at = {now},
                     message = 'withdrawn before its firing time: the schedule was changed, disabled or deleted'
                 WHERE id = $1 AND state = 'queued'",
                vec![e.into()],
            )
            .await?;
        }
    }
    if !rows.is_empty() {
        tx.execute("DELETE FROM firings WHERE schedule_id = $1 AND fire_at > {now}", vec![schedule_id.into()]).await?;
    }
    Ok(earliest)
}

/// Overlap policy `replace`: a queued previous run is cancelled at once, a running one is
/// asked to stop (its node sees the request as for any cancel).
async fn cancel_for_replace(tx: &mut dyn Tx, execution: &str, schedule: &str) -> Result<()> {
    let by = format!("schedule {schedule} (overlap policy replace)");
    tx.execute(
        "UPDATE executions SET state = 'cancelled', reason = 'cancelled', message = $2, finished_at = {now},
             updated_at = {now}, node_id = NULL
         WHERE id = $1 AND state = 'queued'",
        vec![execution.into(), format!("cancelled by {by} before it started").into()],
    )
    .await?;
    tx.execute(
        "UPDATE executions SET cancel_requested = $2, updated_at = {now}
         WHERE id = $1 AND state = 'running' AND cancel_requested IS NULL",
        vec![execution.into(), Value::Text(by)],
    )
    .await?;
    Ok(())
}
