//! Executions, their attempts and their logs: submission, claiming, fenced completion,
//! cancellation, and taking over the attempts of nodes whose lease is gone.
//!
//! Fencing: claiming an execution gives its attempt a token from a store-wide sequence and
//! writes it to the execution row. Every later write by that attempt (log chunks, its end)
//! checks, inside the writing transaction and under a row lock, that the row still holds the
//! token and is still `running`. The reaper that hands an attempt to another node replaces
//! the state first, so a node that lost an attempt can never write over its successor.

use crate::db::{query_one, Dialect, Row, Tx, Value};
use crate::{Result, Store, StoreError};
use shoal_core::placement::{eligible, NodeView};
use shoal_core::state::{decide, Decision, Outcome};
use shoal_core::{ExecState, ExecutionId, FencingToken, ReasonCode, RunSpec, Trigger};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Debug)]
pub struct NewExecution {
    pub sandbox: Option<String>,
    pub job: Option<String>,
    pub params: BTreeMap<String, String>,
    pub spec: RunSpec,
    /// The node that must run it (the holder of a local sandbox).
    pub pinned_node: Option<String>,
    /// `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
    /// Not claimable before this store time (a schedule's firing claimed ahead of its time).
    pub run_after: Option<i64>,
    pub origin: Origin,
}

/// What created an execution, and whose rights it runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub trigger: Trigger,
    /// The schedule, listener or execution that created it.
    pub reference: Option<String>,
    /// Whom it runs for, as shown: `token:NAME` or `user:NAME`.
    pub principal: Option<String>,
    /// Whose rights it runs with: `token:ID` or `user:ID` (see [`crate::Store::rights_of`]).
    pub acts_as: Option<String>,
}

impl Origin {
    /// Made by `trigger` from `reference`, for the principal shown as `label` whose rights are
    /// `acts_as`.
    pub fn new(trigger: Trigger, reference: Option<String>, label: Option<String>, acts_as: Option<String>) -> Origin {
        Origin { trigger, reference, principal: label, acts_as }
    }
}

impl Origin {
    /// Made by a schedule's firing or a listener's event (`trigger`, from `reference`), for
    /// its owner.
    pub fn owned(trigger: Trigger, reference: &str, owner: Option<&crate::Owner>) -> Origin {
        Origin {
            trigger,
            reference: Some(reference.to_owned()),
            principal: owner.map(|o| o.label.clone()),
            acts_as: owner.map(|o| o.acts_as.clone()),
        }
    }
}

impl Default for Origin {
    /// Through the API, for nobody known (tests of the store alone).
    fn default() -> Origin {
        Origin { trigger: Trigger::Api, reference: None, principal: None, acts_as: None }
    }
}

#[derive(Clone, Debug)]
pub enum Submitted {
    Created(ExecutionRow),
    /// The idempotency key was seen before with the same request: this is that execution.
    Replayed(ExecutionRow),
}

#[derive(Clone, Debug)]
pub struct ExecutionRow {
    pub id: ExecutionId,
    pub sandbox: Option<String>,
    pub job: Option<String>,
    pub params: BTreeMap<String, String>,
    pub spec: RunSpec,
    pub state: ExecState,
    pub reason: ReasonCode,
    pub message: String,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub attempt: i64,
    pub node_id: Option<String>,
    pub fence: Option<FencingToken>,
    pub cancel_requested: Option<String>,
    pub created_at: i64,
    pub run_after: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    /// The partitioned execution this one is a child of.
    pub parent_id: Option<String>,
    /// The partition a child runs on.
    pub partition: Option<String>,
    pub origin: Origin,
}

/// One attempt of an execution, as recorded.
#[derive(Clone, Debug)]
pub struct AttemptRow {
    pub attempt: i64,
    pub fence: FencingToken,
    pub node_id: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
}

/// An attempt this node now owns.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: ExecutionId,
    pub fence: FencingToken,
    pub attempt: i64,
    pub sandbox: Option<String>,
    pub spec: RunSpec,
    /// The attempt's own token (`SHOAL_TOKEN` in its environment).
    pub token: crate::principals::AttemptToken,
    /// How long the execution had been runnable (since its `run_after`: its submission, or
    /// the time it was held or retried until) when this claim took it, on the store's clock.
    pub queued_for: std::time::Duration,
    /// When the claim returned, on this process's monotonic clock: with `queued_for`, the
    /// dispatch latency up to any later moment without comparing two machines' clocks.
    pub claimed_at: std::time::Instant,
}

impl Claimed {
    /// How long since the execution became runnable: its wait up to the claim on the
    /// store's clock, then the time since on this process's.
    pub fn runnable_for(&self) -> std::time::Duration {
        self.queued_for + self.claimed_at.elapsed()
    }
}

#[derive(Clone, Debug)]
pub struct AttemptEnd {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// One attempt's end, with the last of its output.
#[derive(Clone, Debug)]
pub struct Finish {
    pub id: ExecutionId,
    pub fence: FencingToken,
    pub attempt: i64,
    pub end: AttemptEnd,
    pub logs: Vec<LogChunk>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishResult {
    /// Recorded; the execution is now in this state.
    Done(ExecState),
    /// The token was stale: nothing was written.
    Fenced,
}

#[derive(Clone, Debug)]
pub struct LogChunk {
    /// Position within the attempt's output; chunks are numbered by the writer from 0.
    pub seq: i64,
    /// 1 for stdout, 2 for stderr.
    pub stream: i64,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct LogRow {
    pub attempt: i64,
    pub seq: i64,
    pub stream: i64,
    pub data: Vec<u8>,
    pub at: i64,
}

#[derive(Clone, Debug, Default)]
pub struct ExecutionFilter {
    pub state: Option<ExecState>,
    pub sandbox: Option<String>,
    pub job: Option<String>,
    pub node: Option<String>,
    /// Only executions in a sandbox matching one of these `LIKE` patterns (escape `\`); `None`:
    /// any, inline commands outside a sandbox too.
    pub sandboxes_like: Option<Vec<String>>,
    pub limit: i64,
    /// Return executions older than this id (ids sort by creation).
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelResult {
    /// It was queued and is now cancelled.
    Cancelled,
    /// It is running; its node has been asked to stop it.
    Requested { node: Option<String> },
}

const COLUMNS: &str =
    "id, sandbox, job, params, spec, state, reason, message, exit_code, signal, attempt, node_id, fence,
    cancel_requested, created_at, run_after, started_at, finished_at, updated_at, parent_id, partition,
    origin, origin_ref, principal, acts_as";

/// The index of the first column a query selects after [`COLUMNS`].
const AFTER: usize = 25;

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("stored JSON is invalid: {e}"))
}

fn execution_row(r: &Row) -> Result<ExecutionRow> {
    let state = r.text(5)?;
    Ok(ExecutionRow {
        id: ExecutionId::from_trusted(r.text(0)?),
        sandbox: r.opt_text(1)?,
        job: r.opt_text(2)?,
        params: serde_json::from_str(&r.text(3)?).map_err(json_err)?,
        spec: serde_json::from_str(&r.text(4)?).map_err(json_err)?,
        state: ExecState::parse(&state).ok_or_else(|| StoreError::Internal(format!("unknown state {state}")))?,
        reason: r.named(6, "execution reason", ReasonCode::parse)?,
        message: r.text(7)?,
        exit_code: r.opt_i64(8)?,
        signal: r.opt_i64(9)?,
        attempt: r.i64(10)?,
        node_id: r.opt_text(11)?,
        fence: r.opt_i64(12)?.map(FencingToken),
        cancel_requested: r.opt_text(13)?,
        created_at: r.i64(14)?,
        run_after: r.i64(15)?,
        started_at: r.opt_i64(16)?,
        finished_at: r.opt_i64(17)?,
        updated_at: r.i64(18)?,
        parent_id: r.opt_text(19)?,
        partition: r.opt_text(20)?,
        origin: Origin {
            trigger: r.named(21, "execution trigger", Trigger::parse)?,
            reference: r.opt_text(22)?,
            principal: r.opt_text(23)?,
            acts_as: r.opt_text(24)?,
        },
    })
}

async fn get_in(tx: &mut dyn Tx, id: &str) -> Result<Option<ExecutionRow>> {
    let row = query_one(tx, &format!("SELECT {COLUMNS} FROM executions WHERE id = $1"), vec![id.into()]).await?;
    row.as_ref().map(execution_row).transpose()
}

/// Draws `n` fencing tokens from SQLite's counter row (PostgreSQL draws them from its
/// sequence inside the claim's UPDATE).
async fn sqlite_fences(tx: &mut dyn Tx, n: usize) -> Result<Vec<FencingToken>> {
    let row = query_one(
        tx,
        "UPDATE counters SET value = value + $1 WHERE name = 'fence' RETURNING value",
        vec![(n as i64).into()],
    )
    .await?
    .ok_or_else(|| StoreError::Internal("fence counter missing".into()))?;
    let last = row.i64(0)?;
    Ok((0..n as i64).map(|i| FencingToken(last - n as i64 + 1 + i)).collect())
}

/// Placeholders `($a, $b, ...), (...)` for `rows` rows of `width` values, numbered from `first`,
/// with optional casts per column (`None`: none) so PostgreSQL knows the types.
pub(crate) fn values_list(rows: usize, casts: &[Option<&str>], first: usize) -> String {
    let width = casts.len();
    let mut out = String::new();
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for (c, cast) in casts.iter().enumerate() {
            if c > 0 {
                out.push_str(", ");
            }
            let n = first + r * width + c;
            match cast {
                Some(t) => out.push_str(&format!("CAST(${n} AS {t})")),
                None => out.push_str(&format!("${n}")),
            }
        }
        out.push(')');
    }
    out
}

/// `$a, $b, ...` for an `IN (...)` list.
fn in_list(n: usize, first: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Rows per multi-row statement: well under SQLite's and PostgreSQL's parameter limits.
pub(crate) const BATCH_ROWS: usize = 500;

async fn insert_logs(tx: &mut dyn Tx, logs: &[(&str, i64, &LogChunk)]) -> Result<()> {
    for part in logs.chunks(BATCH_ROWS) {
        let sql = format!(
            "INSERT INTO logs (execution_id, attempt, seq, stream, data, at) SELECT v.column1, v.column2, v.column3, v.column4, v.column5, {{now}}
             FROM (VALUES {}) AS v WHERE 1 = 1
             ON CONFLICT (execution_id, attempt, seq) DO NOTHING",
            values_list(part.len(), &[None, Some("BIGINT"), Some("BIGINT"), Some("BIGINT"), Some("{blob}")], 1)
        );
        let mut params = Vec::with_capacity(part.len() * 5);
        for (id, attempt, chunk) in part {
            params.extend([
                (*id).into(),
                (*attempt).into(),
                chunk.seq.into(),
                chunk.stream.into(),
                Value::Bytes(chunk.data.clone()),
            ]);
        }
        // ON CONFLICT: a chunk re-sent after a store error whose commit did in fact land.
        // (`WHERE 1 = 1` lets SQLite's parser tell ON CONFLICT from a join constraint.)
        tx.execute(&sql, params).await?;
    }
    Ok(())
}

/// Locks execution rows and returns those still running with the given tokens, by id.
async fn lock_fenced(tx: &mut dyn Tx, wanted: &[(&str, FencingToken)]) -> Result<HashMap<String, (ExecutionRow, i64)>> {
    let mut out = HashMap::new();
    for part in wanted.chunks(BATCH_ROWS) {
        let sql = format!(
            "SELECT {COLUMNS}, node_losses FROM executions WHERE id IN ({}) ORDER BY id {{for_update}}",
            in_list(part.len(), 1)
        );
        let rows = tx.query(&sql, part.iter().map(|(id, _)| (*id).into()).collect()).await?;
        let tokens: HashMap<&str, FencingToken> = part.iter().copied().collect();
        for row in rows {
            let losses = row.i64(AFTER)?;
            let exec = execution_row(&row)?;
            let token = tokens.get(exec.id.as_str()).copied();
            if exec.state == ExecState::Running && exec.fence.is_some() && exec.fence == token {
                out.insert(exec.id.to_string(), (exec, losses));
            }
        }
    }
    Ok(out)
}

/// Finishes the partitioned executions among `parents` whose children have all finished,
/// with the state `core::state::derive_parent` gives, in the caller's transaction.
async fn settle_parents(tx: &mut dyn Tx, parents: &[&str]) -> Result<()> {
    let mut unique: Vec<&str> = parents.to_vec();
    unique.sort_unstable();
    unique.dedup();
    for parent in unique {
        let rows =
            tx.query("SELECT state FROM executions WHERE parent_id = $1 {for_update}", vec![parent.into()]).await?;
        let states: Vec<ExecState> =
            rows.iter().filter_map(|r| r.text(0).ok().and_then(|s| ExecState::parse(&s))).collect();
        if let Some((state, message)) = shoal_core::state::derive_parent(&states) {
            tx.execute(
                "UPDATE executions SET state = $2, reason = 'partitions', message = $3, finished_at = {now}, updated_at = {now}
                 WHERE id = $1 AND state = 'running'",
                vec![parent.into(), state.as_str().into(), message.into()],
            )
            .await?;
        }
    }
    Ok(())
}

/// Executions that end the same way: final state (`None`: back to the queue), reason,
/// message, exit code, signal, node losses to add, and retry delay in milliseconds.
type EndGroup = (Option<ExecState>, String, String, Option<i64>, Option<i64>, i64, i64);

/// Records attempt ends on rows already locked and checked by [`lock_fenced`]: logs, the
/// attempt rows, and each execution's next state as `core::state::decide` says, with one
/// statement per group of executions that end the same way.
async fn apply_ends(
    tx: &mut dyn Tx,
    ends: &[(&ExecutionRow, i64, &AttemptEnd, &[LogChunk])],
) -> Result<Vec<ExecState>> {
    let logs: Vec<(&str, i64, &LogChunk)> =
        ends.iter().flat_map(|(row, _, _, logs)| logs.iter().map(move |c| (row.id.as_str(), row.attempt, c))).collect();
    insert_logs(tx, &logs).await?;
    for part in ends.chunks(BATCH_ROWS) {
        let sql = format!(
            "UPDATE attempts SET finished_at = {{now}}, outcome = v.column3 FROM (VALUES {}) AS v
             WHERE attempts.execution_id = v.column1 AND attempts.attempt = v.column2",
            values_list(part.len(), &[None, Some("BIGINT"), None], 1)
        );
        let mut params = Vec::with_capacity(part.len() * 3);
        for (row, _, end, _) in part {
            let outcome = match &end.outcome {
                Outcome::Exited(c) => format!("exited {c}"),
                Outcome::Signaled(s) => format!("signal {s}"),
                Outcome::TimedOut => "timed_out".into(),
                Outcome::Cancelled { .. } => "cancelled".into(),
                Outcome::NodeLost { .. } => "node_lost".into(),
                Outcome::HandedBack { .. } => "handed_back".into(),
            };
            params.extend([row.id.as_str().into(), row.attempt.into(), outcome.into()]);
        }
        tx.execute(&sql, params).await?;
    }
    // Group executions by the exact update they need, so a batch of equal endings (the common
    // case: many successes) is one statement.
    let mut groups: BTreeMap<EndGroup, Vec<&str>> = BTreeMap::new();
    let mut states = Vec::with_capacity(ends.len());
    for (row, losses, end, _) in ends {
        let node_lost = i64::from(matches!(end.outcome, Outcome::NodeLost { .. } | Outcome::HandedBack { .. }));
        let decision = decide(&row.spec, row.attempt.max(0) as u32, (*losses + node_lost).max(0) as u32, &end.outcome);
        let exit = end.exit_code.map(i64::from);
        let signal = end.signal.map(i64::from);
        let key = match decision {
            Decision::Finish { state, reason, message } => {
                states.push(state);
                (Some(state), reason.as_str().to_owned(), message, exit, signal, node_lost, 0)
            }
            Decision::Retry { after, reason, message } => {
                states.push(ExecState::Queued);
                (None, reason.as_str().to_owned(), message, exit, signal, node_lost, after.as_millis() as i64)
            }
        };
        groups.entry(key).or_default().push(row.id.as_str());
    }
    for ((state, reason, message, exit, signal, node_lost, after), ids) in groups {
        for part in ids.chunks(BATCH_ROWS) {
            let mut params: Vec<Value> =
                vec![reason.as_str().into(), message.as_str().into(), exit.into(), signal.into(), node_lost.into()];
            let sql = match state {
                Some(state) => {
                    params.push(state.as_str().into());
                    format!(
                        "UPDATE executions SET state = $6, reason = $1, message = $2, exit_code = $3, signal = $4,
                             node_losses = node_losses + $5, finished_at = {{now}}, updated_at = {{now}}
                         WHERE id IN ({})",
                        in_list(part.len(), 7)
                    )
                }
                None => {
                    params.push(after.into());
                    format!(
                        "UPDATE executions SET state = 'queued', reason = $1, message = $2, exit_code = $3, signal = $4,
                             node_losses = node_losses + $5, node_id = NULL, run_after = {{now}} + $6, updated_at = {{now}}
                         WHERE id IN ({})",
                        in_list(part.len(), 7)
                    )
                }
            };
            params.extend(part.iter().map(|id| (*id).into()));
            tx.execute(&sql, params).await?;
        }
    }
    let parents: Vec<&str> = ends
        .iter()
        .zip(&states)
        .filter(|(_, s)| s.is_final())
        .filter_map(|((row, ..), _)| row.parent_id.as_deref())
        .collect();
    settle_parents(tx, &parents).await?;
    Ok(states)
}

/// Inserts new queued executions with the ids given, in the caller's transaction, and
/// returns them as stored when `returning` (an empty map otherwise: schedules and listeners
/// need only the ids they chose). The caller announces the work (`Store::notify_work`).
pub(crate) async fn insert_executions(
    tx: &mut dyn Tx,
    inserts: &[(String, &NewExecution)],
    returning: bool,
) -> Result<HashMap<String, ExecutionRow>> {
    let mut created: HashMap<String, ExecutionRow> = HashMap::new();
    for part in inserts.chunks(BATCH_ROWS / 2) {
        let sql = format!(
                "INSERT INTO executions (id, sandbox, job, params, spec, state, reason, message, priority, pinned_node,
                     concurrency_key, max_concurrent, idempotency_key, request_hash, created_at, run_after, updated_at,
                     origin, origin_ref, principal, acts_as)
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, 'queued', 'submitted', 'waiting for a free slot',
                     v.column6, v.column7, v.column8, v.column9, v.column10, v.column11, {{now}},
                     COALESCE(v.column12, {{now}}), {{now}}, v.column13, v.column14, v.column15, v.column16
                 FROM (VALUES {}) AS v
                 {}",
                values_list(
                    part.len(),
                    &[
                        None,
                        None,
                        None,
                        None,
                        None,
                        Some("BIGINT"),
                        None,
                        None,
                        Some("BIGINT"),
                        None,
                        None,
                        Some("BIGINT"),
                        None,
                        None,
                        None,
                        None
                    ],
                    1
                ),
                if returning { format!("RETURNING {COLUMNS}") } else { String::new() }
            );
        let mut params = Vec::with_capacity(part.len() * 12);
        for (id, new) in part {
            let concurrency_key = match (&new.sandbox, &new.job) {
                (Some(s), Some(j)) if new.spec.max_concurrent.is_some() => Some(format!("{s}/{j}")),
                _ => None,
            };
            let (key, hash) = new.idempotency.clone().unzip();
            params.extend([
                id.as_str().into(),
                new.sandbox.clone().into(),
                new.job.clone().into(),
                serde_json::to_string(&new.params).map_err(json_err)?.into(),
                serde_json::to_string(&new.spec).map_err(json_err)?.into(),
                i64::from(new.spec.priority).into(),
                new.pinned_node.clone().into(),
                concurrency_key.into(),
                new.spec.max_concurrent.map(i64::from).into(),
                key.into(),
                hash.into(),
                new.run_after.into(),
                new.origin.trigger.as_str().into(),
                new.origin.reference.clone().into(),
                new.origin.principal.clone().into(),
                new.origin.acts_as.clone().into(),
            ]);
        }
        if !returning {
            tx.execute(&sql, params).await?;
            continue;
        }
        // RETURNING: the rows as stored (created_at and the rest), without a read back.
        for r in tx.query(&sql, params).await? {
            let row = execution_row(&r)?;
            created.insert(row.id.to_string(), row);
        }
    }
    Ok(created)
}

impl Store {
    /// Accepts a new execution. Once this returns, the execution will reach a final state.
    pub async fn submit(&self, new: &NewExecution) -> Result<Submitted> {
        match self.submit_one(new).await {
            // Two submissions with one key raced and the other insert won: now it is visible.
            Err(StoreError::Conflict(_)) if new.idempotency.is_some() => self.submit_one(new).await,
            other => other,
        }
    }

    async fn submit_one(&self, new: &NewExecution) -> Result<Submitted> {
        self.submit_batch(std::slice::from_ref(new))
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Internal("a batch of one gave no result".into())))
    }

    /// Accepts several executions in one transaction (group commit). The outer error fails
    /// them all (nothing was written); an inner one concerns its item only.
    pub async fn submit_batch(&self, items: &[NewExecution]) -> Result<Vec<Result<Submitted>>> {
        let mut tx = self.begin_write().await?;
        let results = submit_in(tx.as_mut(), items).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// Accepts an execution that a running attempt asks for with its own token: only while
    /// that attempt (`parent` with fencing token `fence`) is still the execution's current
    /// one, checked under a row lock in the same transaction ([`StoreError::Fenced`] if not).
    pub async fn submit_for_attempt(&self, parent: &str, fence: FencingToken, new: &NewExecution) -> Result<Submitted> {
        let mut tx = self.begin_write().await?;
        let current = query_one(
            tx.as_mut(),
            "SELECT state, fence FROM executions WHERE id = $1 {for_share}",
            vec![parent.into()],
        )
        .await?;
        let live = match &current {
            Some(r) => r.text(0)? == ExecState::Running.as_str() && r.opt_i64(1)? == Some(fence.0),
            None => false,
        };
        if !live {
            tx.rollback().await?;
            return Err(StoreError::Fenced);
        }
        let result = submit_in(tx.as_mut(), std::slice::from_ref(new)).await?.pop();
        tx.commit().await?;
        result.unwrap_or_else(|| Err(StoreError::Internal("a batch of one gave no result".into())))
    }
}

/// [`Store::submit_batch`] in the caller's transaction, which commits it.
async fn submit_in(tx: &mut dyn Tx, items: &[NewExecution]) -> Result<Vec<Result<Submitted>>> {
    {
        // Earlier submissions with the same idempotency keys.
        let keys: Vec<&str> = items.iter().filter_map(|n| n.idempotency.as_ref().map(|(k, _)| k.as_str())).collect();
        let mut seen: HashMap<String, (ExecutionRow, Option<String>)> = HashMap::new();
        for part in keys.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT {COLUMNS}, request_hash, idempotency_key FROM executions WHERE idempotency_key IN ({})",
                in_list(part.len(), 1)
            );
            for r in tx.query(&sql, part.iter().map(|k| (*k).into()).collect()).await? {
                seen.insert(r.text(AFTER + 1)?, (execution_row(&r)?, r.opt_text(AFTER)?));
            }
        }
        enum Plan {
            Insert(String),
            Replay(String),
            Mismatch,
        }
        let mut plans = Vec::with_capacity(items.len());
        let mut inserts: Vec<(String, &NewExecution)> = Vec::new();
        let mut batch_keys: HashMap<&str, (&str, String)> = HashMap::new();
        for new in items {
            if let Some((key, hash)) = &new.idempotency {
                if let Some((row, stored)) = seen.get(key) {
                    plans.push(if stored.as_deref() == Some(hash.as_str()) {
                        Plan::Replay(row.id.to_string())
                    } else {
                        Plan::Mismatch
                    });
                    continue;
                }
                if let Some((stored, id)) = batch_keys.get(key.as_str()) {
                    plans.push(if *stored == hash.as_str() { Plan::Replay(id.clone()) } else { Plan::Mismatch });
                    continue;
                }
            }
            let id = uuid::Uuid::now_v7().to_string();
            if let Some((key, hash)) = &new.idempotency {
                batch_keys.insert(key.as_str(), (hash.as_str(), id.clone()));
            }
            plans.push(Plan::Insert(id.clone()));
            inserts.push((id, new));
        }
        let created = insert_executions(tx, &inserts, true).await?;
        if !created.is_empty() {
            Store::notify_work(tx).await?;
        }
        let lookup = |id: &str| {
            created
                .get(id)
                .or_else(|| seen.values().find(|(r, _)| r.id.as_str() == id).map(|(r, _)| r))
                .cloned()
                .ok_or_else(|| StoreError::Internal(format!("execution {id} vanished")))
        };
        Ok(plans
            .into_iter()
            .map(|p| match p {
                Plan::Insert(id) => lookup(&id).map(Submitted::Created),
                Plan::Replay(id) => lookup(&id).map(Submitted::Replayed),
                Plan::Mismatch => Err(StoreError::IdempotencyMismatch),
            })
            .collect())
    }
}

impl Store {
    pub async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRow>> {
        let mut c = self.view().await?;
        get_in(c.as_mut(), id).await
    }

    /// Submits a partitioned execution: the parent (running from the start, never claimed)
    /// and one queued child per partition, pinned to the partition's node, in one transaction.
    /// The parent's idempotency key, if any, covers the whole.
    pub async fn submit_partitioned(
        &self,
        parent: &NewExecution,
        children: &[(String, NewExecution)],
    ) -> Result<Submitted> {
        let mut tx = self.begin_write().await?;
        if let Some((key, hash)) = &parent.idempotency {
            let sql = format!("SELECT {COLUMNS}, request_hash FROM executions WHERE idempotency_key = $1");
            if let Some(r) = query_one(tx.as_mut(), &sql, vec![key.as_str().into()]).await? {
                tx.rollback().await?;
                return if r.opt_text(AFTER)?.as_deref() == Some(hash.as_str()) {
                    Ok(Submitted::Replayed(execution_row(&r)?))
                } else {
                    Err(StoreError::IdempotencyMismatch)
                };
            }
        }
        let parent_id = uuid::Uuid::now_v7().to_string();
        let (key, hash) = parent.idempotency.clone().unzip();
        let row = query_one(
            tx.as_mut(),
            &format!(
                "INSERT INTO executions (id, sandbox, job, params, spec, state, reason, message, priority,
                     idempotency_key, request_hash, created_at, run_after, started_at, updated_at,
                     origin, origin_ref, principal, acts_as)
                 VALUES ($1, $2, $3, $4, $5, 'running', 'partitions', $6, $7, $8, $9, {{now}}, {{now}}, {{now}}, {{now}},
                     $10, $11, $12, $13)
                 RETURNING {COLUMNS}"
            ),
            vec![
                parent_id.as_str().into(),
                parent.sandbox.clone().into(),
                parent.job.clone().into(),
                serde_json::to_string(&parent.params).map_err(json_err)?.into(),
                serde_json::to_string(&parent.spec).map_err(json_err)?.into(),
                format!("waiting for {} partition(s)", children.len()).into(),
                i64::from(parent.spec.priority).into(),
                key.into(),
                hash.into(),
                parent.origin.trigger.as_str().into(),
                parent.origin.reference.clone().into(),
                parent.origin.principal.clone().into(),
                parent.origin.acts_as.clone().into(),
            ],
        )
        .await?
        .ok_or_else(|| StoreError::Internal("partitioned execution insert returned no row".into()))?;
        for (partition, child) in children {
            let concurrency_key = match (&child.sandbox, &child.job) {
                (Some(s), Some(j)) if child.spec.max_concurrent.is_some() => Some(format!("{s}/{j}")),
                _ => None,
            };
            tx.execute(
                "INSERT INTO executions (id, sandbox, job, params, spec, state, reason, message, priority, pinned_node,
                     concurrency_key, max_concurrent, parent_id, partition, created_at, run_after, updated_at,
                     origin, origin_ref, principal, acts_as)
                 VALUES ($1, $2, $3, $4, $5, 'queued', 'submitted', 'waiting for a free slot', $6, $7, $8, $9, $10, $11,
                     {now}, {now}, {now}, 'partition', $10, $12, $13)",
                vec![
                    uuid::Uuid::now_v7().to_string().into(),
                    child.sandbox.clone().into(),
                    child.job.clone().into(),
                    serde_json::to_string(&child.params).map_err(json_err)?.into(),
                    serde_json::to_string(&child.spec).map_err(json_err)?.into(),
                    i64::from(child.spec.priority).into(),
                    child.pinned_node.clone().into(),
                    concurrency_key.into(),
                    child.spec.max_concurrent.map(i64::from).into(),
                    parent_id.as_str().into(),
                    partition.as_str().into(),
                    parent.origin.principal.clone().into(),
                    parent.origin.acts_as.clone().into(),
                ],
            )
            .await?;
        }
        Store::notify_work(tx.as_mut()).await?;
        tx.commit().await?;
        Ok(Submitted::Created(execution_row(&row)?))
    }

    /// The children of a partitioned execution, by partition name.
    pub async fn list_children(&self, parent: &str) -> Result<Vec<ExecutionRow>> {
        self.read_rows(
            &format!("SELECT {COLUMNS} FROM executions WHERE parent_id = $1 ORDER BY partition"),
            vec![parent.into()],
            execution_row,
        )
        .await
    }

    /// Every attempt of an execution, oldest first: where each ran, with which token, and how
    /// it ended (`None` while it runs).
    pub async fn list_attempts(&self, id: &str) -> Result<Vec<AttemptRow>> {
        self.view_rows(
            "SELECT attempt, fence, node_id, started_at, finished_at, outcome FROM attempts
             WHERE execution_id = $1 ORDER BY attempt",
            vec![id.into()],
            |r| {
                Ok(AttemptRow {
                    attempt: r.i64(0)?,
                    fence: FencingToken(r.i64(1)?),
                    node_id: r.text(2)?,
                    started_at: r.i64(3)?,
                    finished_at: r.opt_i64(4)?,
                    outcome: r.opt_text(5)?,
                })
            },
        )
        .await
    }

    pub async fn list_executions(&self, f: &ExecutionFilter) -> Result<Vec<ExecutionRow>> {
        let mut sql = format!("SELECT {COLUMNS} FROM executions WHERE 1 = 1");
        let mut params: Vec<Value> = Vec::new();
        let mut add = |sql: &mut String, cond: &str, v: Value| {
            params.push(v);
            sql.push_str(&format!(" AND {cond} ${}", params.len()));
        };
        if let Some(s) = f.state {
            add(&mut sql, "state =", s.as_str().into());
        }
        if let Some(s) = &f.sandbox {
            add(&mut sql, "sandbox =", s.into());
        }
        if let Some(j) = &f.job {
            add(&mut sql, "job =", j.into());
        }
        if let Some(n) = &f.node {
            add(&mut sql, "node_id =", n.into());
        }
        if let Some(c) = &f.cursor {
            add(&mut sql, "id <", c.into());
        }
        if let Some(patterns) = &f.sandboxes_like {
            let mut any = Vec::with_capacity(patterns.len());
            for p in patterns {
                params.push(p.into());
                any.push(format!("sandbox LIKE ${} ESCAPE '\\'", params.len()));
            }
            sql.push_str(&format!(" AND ({})", if any.is_empty() { "1 = 0".to_owned() } else { any.join(" OR ") }));
        }
        params.push(f.limit.into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        self.view_rows(&sql, params, execution_row).await
    }

    /// Claims up to `max` queued executions this node may run, highest priority first,
    /// honouring each job's cluster-wide `max_concurrent`.
    pub async fn claim(&self, node: &NodeView<'_>, max: usize) -> Result<Vec<Claimed>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let scan = (max * 4 + 16) as i64;
        let rows = tx
            .query(
                "SELECT id, sandbox, spec, pinned_node, concurrency_key, max_concurrent, run_after FROM executions
                 WHERE state = 'queued' AND run_after <= {now}
                 ORDER BY priority DESC, id LIMIT $1 {skip_locked}",
                vec![scan.into()],
            )
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let mut running_by_key: HashMap<String, i64> = HashMap::new();
        let mut chosen: Vec<(String, Option<String>, RunSpec, i64)> = Vec::new();
        for r in &rows {
            if chosen.len() >= max {
                break;
            }
            let spec: RunSpec = serde_json::from_str(&r.text(2)?).map_err(json_err)?;
            if !eligible(&spec.allocation, r.opt_text(3)?.as_deref(), node) {
                continue;
            }
            if let (Some(key), Some(limit)) = (r.opt_text(4)?, r.opt_i64(5)?) {
                if !running_by_key.contains_key(&key) {
                    if tx.dialect() == Dialect::Postgres {
                        // Serialise claims of one limited job across nodes: without it two
                        // nodes could each count the same running total and both start one.
                        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", vec![key.as_str().into()]).await?;
                    }
                    let n = query_one(
                        tx.as_mut(),
                        "SELECT COUNT(*) FROM executions WHERE state = 'running' AND concurrency_key = $1",
                        vec![key.as_str().into()],
                    )
                    .await?
                    .map(|r| r.i64(0))
                    .transpose()?
                    .unwrap_or(0);
                    running_by_key.insert(key.clone(), n);
                }
                let running = running_by_key.get_mut(&key).expect("inserted above");
                if *running >= limit {
                    continue;
                }
                *running += 1;
            }
            chosen.push((r.text(0)?, r.opt_text(1)?, spec, r.i64(6)?));
        }
        if chosen.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        // One statement moves the whole batch to `running`, each row with its own token:
        // PostgreSQL draws them from its sequence in the statement itself; SQLite takes a
        // range from its counter row first (its writers are serialised anyway).
        let (token, casts, fences): (&str, &[Option<&str>], Vec<FencingToken>) = match tx.dialect() {
            Dialect::Postgres => ("nextval('fence_seq')", &[None], Vec::new()),
            Dialect::Sqlite => ("v.column2", &[None, Some("BIGINT")], sqlite_fences(tx.as_mut(), chosen.len()).await?),
        };
        let sql = format!(
            "UPDATE executions SET state = 'running', node_id = $1, attempt = executions.attempt + 1,
                 fence = {token}, started_at = COALESCE(executions.started_at, {{now}}), reason = 'started',
                 message = $2, updated_at = {{now}}
             FROM (VALUES {}) AS v
             WHERE executions.id = v.column1 AND executions.state = 'queued'
             RETURNING executions.id, executions.attempt, executions.fence, executions.updated_at",
            values_list(chosen.len(), casts, 3)
        );
        let mut params: Vec<Value> = vec![node.id.into(), format!("running on {}", node.id).into()];
        for (i, (id, _, _, _)) in chosen.iter().enumerate() {
            params.push(id.as_str().into());
            if let Some(fence) = fences.get(i) {
                params.push(fence.0.into());
            }
        }
        let updated = tx.query(&sql, params).await?;
        // `updated_at` is now the claim's time on the store's clock.
        let mut attempts: HashMap<String, (i64, i64, i64)> = HashMap::new();
        for r in &updated {
            attempts.insert(r.text(0)?, (r.i64(1)?, r.i64(2)?, r.i64(3)?));
        }
        let mut claimed = Vec::with_capacity(updated.len());
        for (id, sandbox, spec, run_after) in chosen {
            if let Some((attempt, fence, now)) = attempts.get(&id) {
                claimed.push(Claimed {
                    id: ExecutionId::from_trusted(id),
                    fence: FencingToken(*fence),
                    attempt: *attempt,
                    sandbox,
                    spec,
                    token: crate::principals::AttemptToken::mint(),
                    queued_for: std::time::Duration::from_millis((now - run_after).max(0) as u64),
                    claimed_at: std::time::Instant::now(),
                });
            }
        }
        if !claimed.is_empty() {
            let sql = format!(
                "INSERT INTO attempts (execution_id, attempt, fence, node_id, started_at, token_hash)
                 SELECT v.column1, v.column2, v.column3, $1, {{now}}, v.column4 FROM (VALUES {}) AS v",
                values_list(claimed.len(), &[None, Some("BIGINT"), Some("BIGINT"), None], 2)
            );
            let mut params: Vec<Value> = vec![node.id.into()];
            for c in &claimed {
                params.extend([c.id.as_str().into(), c.attempt.into(), c.fence.0.into(), c.token.hash.clone().into()]);
            }
            tx.execute(&sql, params).await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Appends output of a running attempt; [`StoreError::Fenced`] if it is no longer current.
    pub async fn append_logs(
        &self,
        id: &ExecutionId,
        fence: FencingToken,
        attempt: i64,
        logs: &[LogChunk],
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // FOR SHARE: a takeover (which updates the row) waits for this write, and this write
        // sees the takeover if it came first.
        let row = query_one(
            tx.as_mut(),
            "SELECT fence, state FROM executions WHERE id = $1 {for_share}",
            vec![id.as_str().into()],
        )
        .await?;
        let current = match row {
            Some(r) => r.opt_i64(0)? == Some(fence.0) && r.text(1)? == "running",
            None => false,
        };
        if !current {
            tx.rollback().await?;
            return Err(StoreError::Fenced);
        }
        let rows: Vec<_> = logs.iter().map(|c| (id.as_str(), attempt, c)).collect();
        insert_logs(tx.as_mut(), &rows).await?;
        tx.commit().await
    }

    /// Records the end of attempts (with their last output) in one transaction, each checked
    /// against its fencing token.
    pub async fn finish(&self, items: &[Finish]) -> Result<Vec<FinishResult>> {
        let mut tx = self.begin_write().await?;
        let wanted: Vec<(&str, FencingToken)> = items.iter().map(|i| (i.id.as_str(), i.fence)).collect();
        let mut locked = lock_fenced(tx.as_mut(), &wanted).await?;
        let mut ends = Vec::new();
        let mut slots = Vec::with_capacity(items.len());
        for item in items {
            // `remove`: an execution listed twice is recorded once; the second is stale.
            match locked.remove(item.id.as_str()) {
                Some(found) => {
                    slots.push(Some(ends.len()));
                    ends.push((found, item));
                }
                None => slots.push(None),
            }
        }
        let args: Vec<_> =
            ends.iter().map(|((row, losses), item)| (row, *losses, &item.end, item.logs.as_slice())).collect();
        let states = apply_ends(tx.as_mut(), &args).await?;
        tx.commit().await?;
        Ok(slots.into_iter().map(|s| s.map_or(FinishResult::Fenced, |i| FinishResult::Done(states[i]))).collect())
    }

    /// Cancels a queued execution at once, or asks the node running it to stop it.
    pub async fn request_cancel(&self, id: &str, by: &str) -> Result<CancelResult> {
        let mut tx = self.begin_write().await?;
        let row = query_one(
            tx.as_mut(),
            "SELECT state, node_id, parent_id, fence, spec FROM executions WHERE id = $1 {for_update}",
            vec![id.into()],
        )
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(StoreError::NotFound(format!("no execution with id {id}")));
        };
        let state = ExecState::parse(&row.text(0)?).ok_or_else(|| StoreError::Internal("bad state".into()))?;
        let result = match state {
            s if s.is_final() => {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "execution {id} already finished ({s}); there is nothing to cancel"
                )));
            }
            ExecState::Queued => {
                tx.execute(
                    "UPDATE executions SET state = 'cancelled', reason = 'cancelled', message = $2, finished_at = {now},
                         updated_at = {now}, node_id = NULL, cancel_requested = $3
                     WHERE id = $1",
                    vec![id.into(), format!("cancelled by {by} before it started").into(), by.into()],
                )
                .await?;
                if let Some(parent) = row.opt_text(2)? {
                    settle_parents(tx.as_mut(), &[parent.as_str()]).await?;
                }
                CancelResult::Cancelled
            }
            ExecState::Running if row.opt_i64(3)?.is_none() && row.opt_text(1)?.is_none() => {
                // A partitioned execution: cancel its children; it ends when they all have.
                tx.execute(
                    "UPDATE executions SET state = 'cancelled', reason = 'cancelled', message = $2, finished_at = {now},
                         updated_at = {now}, cancel_requested = $3
                     WHERE parent_id = $1 AND state = 'queued'",
                    vec![
                        id.into(),
                        format!("cancelled by {by} (with its partitioned execution) before it started").into(),
                        by.into(),
                    ],
                )
                .await?;
                tx.execute(
                    "UPDATE executions SET cancel_requested = $2, updated_at = {now} WHERE parent_id = $1 AND state = 'running'",
                    vec![id.into(), by.into()],
                )
                .await?;
                settle_parents(tx.as_mut(), &[id]).await?;
                CancelResult::Requested { node: None }
            }
            _ => {
                tx.execute(
                    "UPDATE executions SET cancel_requested = $2, updated_at = {now} WHERE id = $1",
                    vec![id.into(), by.into()],
                )
                .await?;
                CancelResult::Requested { node: row.opt_text(1)? }
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    /// Running attempts on this node that someone asked to cancel: (id, token, by whom).
    pub async fn cancel_requests(&self, node: &str) -> Result<Vec<(ExecutionId, FencingToken, String)>> {
        self.read_rows(
            "SELECT id, fence, cancel_requested FROM executions
             WHERE node_id = $1 AND state = 'running' AND cancel_requested IS NOT NULL",
            vec![node.into()],
            |r| Ok((ExecutionId::from_trusted(r.text(0)?), FencingToken(r.i64(1)?), r.text(2)?)),
        )
        .await
    }

    /// Takes over the attempts of nodes whose lease has run out (or that have no row at all),
    /// following each job's `on_node_loss`. Returns the executions it touched.
    pub async fn reap_lost_attempts(&self) -> Result<Vec<ExecutionId>> {
        self.take_over(
            "SELECT e.id, e.fence, e.node_id FROM executions e LEFT JOIN nodes n ON n.id = e.node_id
             WHERE e.state = 'running' AND e.fence IS NOT NULL AND (n.id IS NULL OR n.lease_expires_at <= {now})
             LIMIT 500",
            vec![],
            &[],
            |node| Outcome::NodeLost { node },
        )
        .await
    }

    /// At start-up: attempts recorded as running on this node id belong to an earlier
    /// process (whose children died with it), so they are lost.
    pub async fn recover_node(&self, node: &str) -> Result<Vec<ExecutionId>> {
        self.take_over(
            "SELECT id, fence, node_id FROM executions WHERE state = 'running' AND node_id = $1 LIMIT 10000",
            vec![node.into()],
            &[],
            |node| Outcome::NodeLost { node },
        )
        .await
    }

    /// Hands back the attempts recorded as running on `node` that it does not run (`running`:
    /// the tokens of those it does): ones made by a claim the node was told had failed, whose
    /// commit reached the store all the same (its connection was lost with the commit in
    /// flight, as when a primary crashes while its standby already has the claim). Nothing
    /// started them, so they run again whatever their `on_node_loss` says. Only the node
    /// itself may call this, between its claims: another claim of its own under way would
    /// look the same.
    /// The attempts the store says run on `node` now: (execution, fencing token). A node that
    /// rode through a store outage compares them with what it runs (the promoted server may
    /// have lost a commit that made one of them).
    pub async fn attempts_running_on(&self, node: &str) -> Result<Vec<(ExecutionId, FencingToken)>> {
        let mut c = self.read().await?;
        let rows = c
            .query(
                "SELECT id, fence FROM executions WHERE state = 'running' AND node_id = $1 AND fence IS NOT NULL",
                vec![node.into()],
            )
            .await?;
        rows.iter().map(|r| Ok((ExecutionId::from_trusted(r.text(0)?), FencingToken(r.i64(1)?)))).collect()
    }

    pub async fn hand_back_unstarted(&self, node: &str, running: &[FencingToken]) -> Result<Vec<ExecutionId>> {
        self.take_over(
            "SELECT id, fence, node_id FROM executions WHERE state = 'running' AND node_id = $1 LIMIT 10000",
            vec![node.into()],
            running,
            |node| Outcome::HandedBack { node },
        )
        .await
    }

    /// Ends the attempts `select` finds (`id, fence, node_id`), but those whose token is in
    /// `keep`, with the outcome `why` gives for their node, if they are still current.
    async fn take_over(
        &self,
        select: &str,
        params: Vec<Value>,
        keep: &[FencingToken],
        why: fn(String) -> Outcome,
    ) -> Result<Vec<ExecutionId>> {
        let candidates = {
            let mut c = self.read().await?;
            c.query(select, params).await?
        };
        let mut wanted = Vec::with_capacity(candidates.len());
        let mut nodes = HashMap::new();
        for r in &candidates {
            if let Some(fence) = r.opt_i64(1)?.map(FencingToken).filter(|f| !keep.contains(f)) {
                let id = r.text(0)?;
                nodes.insert(id.clone(), r.opt_text(2)?.unwrap_or_default());
                wanted.push((id, fence));
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        // Re-checked under the row locks: an attempt may have finished meanwhile.
        let refs: Vec<(&str, FencingToken)> = wanted.iter().map(|(id, f)| (id.as_str(), *f)).collect();
        let locked = lock_fenced(tx.as_mut(), &refs).await?;
        let ends: Vec<(ExecutionRow, i64, AttemptEnd)> = locked
            .into_values()
            .map(|(row, losses)| {
                let node = nodes.get(row.id.as_str()).cloned().unwrap_or_default();
                (row, losses, AttemptEnd { outcome: why(node), exit_code: None, signal: None })
            })
            .collect();
        let args: Vec<_> = ends.iter().map(|(row, losses, end)| (row, *losses, end, &[][..])).collect();
        let states = apply_ends(tx.as_mut(), &args).await?;
        Store::notify_work(tx.as_mut()).await?;
        tx.commit().await?;
        let mut touched = Vec::with_capacity(ends.len());
        for ((row, _, end), state) in ends.into_iter().zip(states) {
            match &end.outcome {
                Outcome::HandedBack { node } => {
                    tracing::warn!(execution = %row.id, node = %node, attempt = row.attempt, new_state = %state, "handed back an attempt a claim made though the node was told it failed; it never started")
                }
                Outcome::NodeLost { node } => {
                    tracing::warn!(execution = %row.id, node = %node, attempt = row.attempt, new_state = %state, "took over an attempt from a lost node")
                }
                _ => {}
            }
            touched.push(row.id);
        }
        Ok(touched)
    }

    /// Log chunks of an execution after position (`attempt`, `seq`), in order.
    pub async fn read_logs(&self, id: &str, after: (i64, i64), limit: i64) -> Result<Vec<LogRow>> {
        self.view_rows(
            "SELECT attempt, seq, stream, data, at FROM logs
             WHERE execution_id = $1 AND (attempt > $2 OR (attempt = $2 AND seq > $3))
             ORDER BY attempt, seq LIMIT $4",
            vec![id.into(), after.0.into(), after.1.into(), limit.into()],
            |r| Ok(LogRow { attempt: r.i64(0)?, seq: r.i64(1)?, stream: r.i64(2)?, data: r.bytes(3)?, at: r.i64(4)? }),
        )
        .await
    }

    /// Where each of these executions' logs stand: its state and its last log row as
    /// `attempt:seq` (empty before the first). Log followers are woken when this changes for
    /// theirs, by one such read per node rather than a poll per follower.
    pub async fn log_marks(&self, ids: &[String]) -> Result<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(BATCH_ROWS) {
            let mut c = self.read().await?;
            let rows = c
                .query(
                    &format!(
                        "SELECT e.id, e.state || '/' || COALESCE((SELECT l.attempt || ':' || l.seq FROM logs l
                           WHERE l.execution_id = e.id ORDER BY l.attempt DESC, l.seq DESC LIMIT 1), '')
                         FROM executions e WHERE e.id IN ({})",
                        in_list(part.len(), 1)
                    ),
                    part.iter().map(Value::from).collect(),
                )
                .await?;
            for r in rows {
                out.push((r.text(0)?, r.text(1)?));
            }
        }
        Ok(out)
    }

    /// Number of executions per state (for metrics and `shoal ps` summaries).
    pub async fn count_by_state(&self) -> Result<Vec<(ExecState, i64)>> {
        let mut c = self.read().await?;
        let rows = c.query("SELECT state, COUNT(*) FROM executions GROUP BY state", vec![]).await?;
        rows.iter()
            .filter_map(|r| match (r.text(0), r.i64(1)) {
                (Ok(s), Ok(n)) => ExecState::parse(&s).map(|s| Ok((s, n))),
                (Err(e), _) | (_, Err(e)) => Some(Err(e)),
            })
            .collect()
    }
}
