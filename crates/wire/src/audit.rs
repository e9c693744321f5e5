//! The audit trail: one entry per change made through the API (and per login), as
//! `GET /api/v1/audit` answers them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a recorded request ended: `ok` (a 2xx or 3xx answer), `denied` (401, 403 or 429: the
/// credential, its role or its sandboxes did not allow it, or a login was refused) or `failed`
/// (any other error: invalid input, a conflict, the store or a node away).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Ok,
    Denied,
    Failed,
}

names!(AuditOutcome {
    Ok => "ok",
    Denied => "denied",
    Failed => "failed",
});

impl AuditOutcome {
    /// The outcome of an answer with this HTTP status.
    pub fn of_status(status: u16) -> AuditOutcome {
        match status {
            200..=399 => AuditOutcome::Ok,
            401 | 403 | 429 => AuditOutcome::Denied,
            _ => AuditOutcome::Failed,
        }
    }
}

/// One recorded change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    /// When the request was answered, on the store's clock.
    #[schema(format = DateTime)]
    pub at: String,
    /// Who: `token:NAME` or `user:NAME`; for a login, the user name that was tried.
    pub principal: String,
    /// The node the client sent the request to, which recorded it.
    pub node: String,
    /// The node that served it, when it was forwarded to another (a local sandbox's holder, the
    /// node running an execution, the node drained).
    pub served_by: Option<String>,
    /// The API's operation id: `createSchedule`, `putSandboxFile`, `cancelExecution`,
    /// `drainNode`, `createSession` (a login), ...
    pub action: String,
    /// What it acted on: a sandbox's name, `SANDBOX/PATH` of a file, a schedule's or listener's
    /// id or name, an execution's id, a token's id or name, a user's name, a node's id; empty
    /// when the request named nothing (a login, a create that failed).
    pub target: String,
    pub outcome: AuditOutcome,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code answered, if it was an error.
    pub code: Option<String>,
}

/// A page of the audit trail, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; null when this page was not full.
    pub next_cursor: Option<String>,
}
