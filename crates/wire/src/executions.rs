//! Executions: submissions, their state, their attempts.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Where an execution is in its life. `queued` and `running` are not final; the others are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

names!(ExecutionState {
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
    TimedOut => "timed_out",
});

impl ExecutionState {
    pub fn is_final(self) -> bool {
        !matches!(self, ExecutionState::Queued | ExecutionState::Running)
    }
}

/// What created an execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A request to the API, with a token or a user's session (`principal`).
    Api,
    /// A schedule's firing (`trigger_ref` is the schedule's id; `principal` its owner).
    Schedule,
    /// A listener's event (`trigger_ref` is the listener's id; `principal` its owner).
    Listener,
    /// A partitioned execution, for one of its partitions (`trigger_ref` is the parent).
    Partition,
    /// A running attempt, with its own token (`trigger_ref` is that execution; `principal`
    /// the one it ran for).
    Job,
}

names!(Trigger {
    Api => "api",
    Schedule => "schedule",
    Listener => "listener",
    Partition => "partition",
    Job => "job",
});

/// Why an attempt was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptCause {
    /// The execution's first attempt, started for its `trigger`.
    First,
    /// The previous attempt failed (exited non-zero, was signalled or timed out) and the
    /// job has retries left.
    Retry,
    /// The node of the previous attempt died or lost its lease.
    NodeLost,
    /// The node of the previous attempt stopped or drained and gave it back.
    HandedBack,
}

/// Why an execution is in its state (`message` explains it to people).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionReason {
    /// Waiting for a slot.
    Submitted,
    /// Waiting for its retry backoff to pass.
    RetryScheduled,
    /// Started on a node.
    Started,
    /// The process exited with a code (0 for success).
    Exited,
    /// The process was killed by a signal shoal did not send.
    Signaled,
    Timeout,
    Cancelled,
    /// The node running the attempt died or lost its lease.
    NodeLost,
    /// The node stopped or drained past its deadline and gave the attempt back.
    HandedBack,
    /// A partitioned execution ended with its children.
    Partitions,
}

names!(ExecutionReason {
    Submitted => "submitted",
    RetryScheduled => "retry_scheduled",
    Started => "started",
    Exited => "exited",
    Signaled => "signaled",
    Timeout => "timeout",
    Cancelled => "cancelled",
    NodeLost => "node_lost",
    HandedBack => "handed_back",
    Partitions => "partitions",
});

/// What an execution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A child process.
    Process,
    /// Built in: succeeds at once without a process.
    Noop,
}

/// What happens to a running attempt whose node dies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnNodeLoss {
    /// Run it again on another eligible node (the default).
    #[default]
    Retry,
    /// Fail the execution with reason `node_lost`.
    Fail,
}

/// Where an execution may run. Defaults to `{"kind": "any"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Allocation {
    /// Any node with a free slot.
    #[default]
    Any,
    /// One of these nodes.
    Nodes {
        #[schema(min_items = 1)]
        nodes: Vec<String>,
    },
    /// A node carrying every one of these tags.
    Tags { tags: Vec<String> },
    /// One child execution per partition of this partitioned sandbox, each on the partition's
    /// node; the execution ends when all children have (succeeded only if all did).
    Partitioned { sandbox: String },
}

/// Either `job` (with `sandbox`) to run a job file, or `command` to run an inline command.
/// With `job`, only `params` and `priority` may be added (the job file carries the other
/// settings); an inline command takes no `params`. Violations of these rules are answered 422
/// `invalid_request` (or `unknown_parameter`); unknown fields and wrong types 400
/// `invalid_json`. Optional fields may also be sent as `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Sandbox name. Required with `job`; for a command, the folder it runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Path of a job file inside the sandbox, e.g. `jobs/report.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Job parameters; numbers and booleans are turned into strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "crate::null_as_default")]
    #[schema(value_type = Option<BTreeMap<String, crate::ParamValue>>)]
    pub params: crate::ParamValues,
    /// Inline command: program and arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1)]
    pub command: Option<Vec<String>>,
    /// Inline command only. Names may not be empty, contain `=` or start with `SHOAL_`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "crate::null_as_default")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub env: BTreeMap<String, String>,
    /// Inline command only: folder relative to the sandbox root; needs `sandbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Inline command only: duration such as `30s` or `1h 30m`, more than zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "30s")]
    pub timeout: Option<String>,
    /// Inline command only (default 0, at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::whole_number")]
    #[schema(maximum = 100)]
    pub retries: Option<u32>,
    /// Inline command only: duration such as `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<String>,
    /// Inline command only: rerun elsewhere (`retry`, the default) or fail when the node dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_node_loss: Option<OnNodeLoss>,
    /// Inline command only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// Inline command only: queue even if no node known to the cluster matches `allocation`
    /// (else `unknown_node` or `unknown_tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_pending: Option<bool>,
    /// Overrides the job's priority (higher runs first).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::whole_number")]
    pub priority: Option<i32>,
}

/// One execution of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Execution {
    /// UUIDv7, so ids sort by creation time.
    #[schema(format = "uuid")]
    pub id: String,
    /// The sandbox it runs in; null for an inline command without one.
    pub sandbox: Option<String>,
    /// Path of the job file inside the sandbox; null for an inline command.
    pub job: Option<String>,
    pub kind: JobKind,
    /// Program and arguments; null for `noop`.
    pub command: Option<Vec<String>>,
    pub state: ExecutionState,
    pub reason: ExecutionReason,
    /// Human-readable explanation of `reason`.
    pub message: String,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    /// Attempts started so far (0 while never started).
    #[schema(minimum = 0)]
    pub attempt: i64,
    /// Node of the current or last attempt.
    pub node: Option<String>,
    /// Bound job parameters, as strings.
    pub params: BTreeMap<String, String>,
    /// Higher runs first.
    pub priority: i32,
    /// Per-attempt timeout; null for none.
    #[schema(minimum = 0)]
    pub timeout_ms: Option<u64>,
    #[schema(minimum = 0)]
    pub retries: u32,
    /// What created it.
    pub trigger: Trigger,
    /// The schedule, listener or execution that created it; null for `api`.
    pub trigger_ref: Option<String>,
    /// Whose rights it runs with, as authenticated (`token:NAME` or `user:NAME`): who asked
    /// through the API, a schedule's or listener's owner, or what its parent or creating
    /// attempt ran with. Null only for executions made before this was recorded.
    pub principal: Option<String>,
    /// Who asked to cancel the execution, as authenticated (`token:NAME`), once asked: for a
    /// running one, it is being stopped; for one that had not started, it was cancelled so.
    pub cancel_requested_by: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The partitioned execution this one is a child of.
    pub parent: Option<String>,
    /// The partition a child runs on.
    pub partition: Option<String>,
    /// Only in `GET /executions/{id}`: every attempt, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<Attempt>>,
    /// Only in `GET /executions/{id}` of a partitioned execution: one child per partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub children: Option<Vec<Execution>>,
}

/// One attempt of an execution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub attempt: i64,
    /// Why it was started.
    pub cause: AttemptCause,
    pub node: String,
    /// Orders the attempts of one execution; a write carrying an older token is refused.
    pub fencing_token: i64,
    #[schema(format = DateTime)]
    pub started_at: String,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// `exited N`, `signal N`, `timed_out`, `cancelled`, `node_lost` or `handed_back`; null
    /// while it runs.
    pub outcome: Option<String>,
}

/// A page of executions, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<Execution>,
    /// Pass as `cursor` for the next page; null when this page was not full.
    pub next_cursor: Option<String>,
}

/// Which output stream of an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    Both,
}
