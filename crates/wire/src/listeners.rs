//! Listeners: event-driven starts of jobs, their events, and webhook deliveries.

use crate::{Execution, ExecutionState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// An execution of a job reached a final state.
    Job,
    /// Files matching a pattern appeared, changed or vanished in a sandbox folder.
    File,
    /// A signed HTTP POST to `/api/v1/hooks/{name}`.
    Webhook,
    /// A node joined, left or died.
    Cluster,
}

names!(ListenerKind { Job => "job", File => "file", Webhook => "webhook", Cluster => "cluster" });

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileEvent {
    Appeared,
    Changed,
    Vanished,
}

/// A final state a `job` listener watches for, or `final` for all four.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WatchedState {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Final,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterEvent {
    NodeJoined,
    NodeLeft,
    NodeDied,
}

/// A `job` listener's source: executions of this job reaching one of these states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OnJob {
    pub sandbox: String,
    /// Path of the watched job file inside the sandbox.
    pub job: String,
    /// Final states, sorted.
    pub states: Vec<ExecutionState>,
}

/// A `file` listener's source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OnFile {
    pub sandbox: String,
    /// Glob relative to the sandbox root.
    pub pattern: String,
    pub events: Vec<FileEvent>,
    /// How long a file's size and modification time must hold still before it counts.
    pub settle_ms: u64,
}

/// A `cluster` listener's source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OnCluster {
    pub events: Vec<ClusterEvent>,
}

trigger_struct! {
    response
    /// A listener.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
    pub struct Listener {
        /// UUIDv7.
        id,
        name,
        pub kind: ListenerKind,
        /// The sandbox holding the job the listener starts.
        sandbox,
        /// Path of that job file inside the sandbox.
        job,
        /// Parameter templates, as strings.
        params,
        enabled,
        /// Only on `job` listeners.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub on_job: Option<OnJob>,
        /// Only on `file` listeners.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub on_file: Option<OnFile>,
        /// Only on `cluster` listeners.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub on_cluster: Option<OnCluster>,
        /// Only on `webhook` listeners: where deliveries go, `/api/v1/hooks/{name}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(example = "/api/v1/hooks/deploy")]
        pub hook_url: Option<String>,
        /// Only in the answer that created a `webhook` listener (or gave it a new secret): the
        /// signing secret. It is never shown again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub secret: Option<String>,
        /// Whose rights it starts its job with (`token:NAME` or `user:NAME`): whoever created or last
        /// changed it. Each time, the owner must still exist and have role `runner` in the
        /// sandbox, and `viewer` where it watches; else nothing starts and the event is recorded
        /// `skipped` with reason `not_permitted`. Null for one made before owners were recorded,
        /// which starts nothing until someone changes it.
        owner,
        created_at,
        updated_at,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListenerList {
    /// Sorted by name.
    pub listeners: Vec<Listener>,
}

trigger_struct! {
    request
    /// Defines a listener (`POST /listeners`), or changes one (`PATCH /listeners/{id}`: every
    /// field optional there, and those left out or `null` keep their values; `name` and `kind`,
    /// if given, must be the listener's (409 `conflict`); `on_job`, `on_file` and `on_cluster` replace the stored
    /// one whole; a `secret` given replaces the webhook's). Unknown fields and wrong types are
    /// answered 400 `invalid_json`; missing or mismatched fields 422 `invalid_request`. Optional
    /// fields may also be sent as `null`.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ListenerRequest {
        /// 1 to 64 letters, digits, `.`, `_` or `-`; unique among listeners. A webhook is
        /// delivered to `/hooks/{name}`. Required to create.
        name,
        /// Required to create.
        #[schema(value_type = Option<ListenerKind>)]
        pub kind: Option<String>,
        /// The sandbox holding the job the listener starts; it must exist and not be
        /// partitioned. Required to create.
        sandbox,
        /// Path of the job file to start, inside the sandbox. Required to create.
        job,
        /// Job parameters; numbers and booleans are turned into strings. In values,
        /// `{event.NAME}` is replaced by the event's value: `job` events `execution`, `sandbox`,
        /// `job`, `state`, `exit_code`, `node`, `param.NAME` (the finished execution's
        /// parameters); `file` events `path`, `name`, `size`, `kind` (`appeared`, `changed` or
        /// `vanished`), `sandbox`; `webhook` deliveries `delivery`, `hook`, `payload` and
        /// `payload.FIELD`; `cluster` events `node`, `kind` (`node_joined`, `node_left` or
        /// `node_died`), `generation`. Naming another is refused (`invalid_parameter`);
        /// `{{event.x}}` is literal.
        params,
        /// A disabled listener records its events as skipped (`disabled`). Default true.
        enabled,
        /// Required with kind `job`, refused with the others.
        pub on_job: Option<OnJobRequest>,
        /// Required with kind `file`, refused with the others.
        pub on_file: Option<OnFileRequest>,
        /// Kind `cluster` only (default: `node_died` and `node_joined`); refused with the others.
        pub on_cluster: Option<OnClusterRequest>,
        /// Kind `webhook` only: the signing secret, at least 16 characters. Left out, one is
        /// generated (48 hex digits) and shown in the answer.
        #[schema(min_length = 16)]
        pub secret: Option<String>,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnJobRequest {
    /// The sandbox of the watched job; it must exist and not be partitioned.
    pub sandbox: String,
    /// Path of the watched job file inside that sandbox; it need not exist yet. It may not
    /// be the job the listener starts (same sandbox and path): that would start itself
    /// forever (`invalid_request`).
    pub job: String,
    /// Final states that count; `final` means all four. Default `["succeeded"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, value_type = Option<Vec<WatchedState>>)]
    pub states: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnFileRequest {
    /// The sandbox whose folder is watched; it must exist and not be partitioned.
    pub sandbox: String,
    /// Glob relative to the sandbox root, folders separated by `/` (`*`, `?` and `[...]`
    /// stay within one folder, `**` crosses folders, `{a,b}` alternatives). Absolute or with
    /// `..`: 400 `invalid_path`. Empty, with a backslash, an empty or `.` folder, or not a
    /// valid glob: 422 `invalid_pattern`. Symlinks are not followed.
    #[schema(example = "data/in/*.csv")]
    pub pattern: String,
    /// Default `["appeared"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, value_type = Option<Vec<FileEvent>>)]
    pub events: Option<Vec<String>>,
    /// Duration such as `500ms` or `2s`: how long a file's size and modification time must
    /// hold still before it counts (answered as `settle_ms`). Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "500ms")]
    pub settle: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnClusterRequest {
    /// Default `["node_died", "node_joined"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, value_type = Option<Vec<ClusterEvent>>)]
    pub events: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    Started,
    Skipped,
}

/// Why an event started nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventReason {
    /// The listener was disabled.
    Disabled,
    /// The job could not be started (file missing or invalid, parameters do not bind).
    JobError,
    /// The listener's owner no longer exists or no longer may run its job or read what it
    /// watches (`message` says why).
    NotPermitted,
}

names!(EventOutcome { Started => "started", Skipped => "skipped" });
names!(EventReason { Disabled => "disabled", JobError => "job_error", NotPermitted => "not_permitted" });

/// One event a listener recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListenerEvent {
    /// The listener's id.
    #[schema(format = "uuid")]
    pub listener: String,
    /// Identifies the event within the listener, so each is recorded, and starts its job,
    /// once: a job event's is the finished execution's id; a file event's
    /// `<kind>:<size>:<mtime_ns>:<path>`; a cluster event's `<kind>:<node>:<generation>`; a
    /// webhook delivery's `delivery:<id>`.
    pub key: String,
    /// When the event was recorded.
    #[schema(format = DateTime)]
    pub at: String,
    /// The node that recorded it.
    pub node: String,
    pub outcome: EventOutcome,
    /// Null when started.
    pub reason: Option<EventReason>,
    /// What `reason` means for this event, when it has more to say (a `not_permitted` one
    /// names the owner and what it lacks).
    pub message: Option<String>,
    #[schema(format = "uuid")]
    pub execution: Option<String>,
    /// The event's values, as `{event.NAME}` sees them. A webhook's are `delivery`, `hook`
    /// and `payload`, the body as JSON text.
    pub payload: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// Newest first.
    pub events: Vec<ListenerEvent>,
}

/// The answer to a webhook delivery: a new delivery (201) has `event` and `execution`; a
/// replayed one (200) `event` and `replayed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HookAnswer {
    pub event: ListenerEvent,
    /// 201 only: the execution the delivery started; null when the listener is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Option<Execution>>,
    /// 200 only: always true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
}
