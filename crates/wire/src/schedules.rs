//! Schedules: cron definitions and their firing history.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// What to do with firing times missed by more than `misfire_threshold` (every node was
/// down): run none (`skip`), the newest (`once`), or the newest `misfire_max` (`all`); the
/// others are recorded as skipped (`misfire`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    Skip,
    Once,
    All,
}

/// When a firing comes while the schedule's previous run still goes: start anyway (`allow`),
/// record it as skipped (`skip`), let one wait for the previous run to end (`queue`), or
/// cancel the previous run and start (`replace`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    Allow,
    Skip,
    Queue,
    Replace,
}

trigger_struct! {
    response
    /// A schedule.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
    pub struct Schedule {
        /// UUIDv7.
        id,
        name,
        sandbox,
        /// Path of the job file inside the sandbox.
        job,
        /// Parameter templates, as strings; the firing placeholders are filled in at each firing.
        params,
        /// The expression as given (trimmed).
        pub cron: String,
        /// IANA zone name.
        pub timezone: String,
        enabled,
        pub misfire: MisfirePolicy,
        /// With `all`: how many missed firings run; null otherwise.
        pub misfire_max: Option<i64>,
        #[schema(minimum = 1)]
        pub misfire_threshold_ms: i64,
        pub overlap: OverlapPolicy,
        /// The newest firing time recorded (started or skipped); null until the first. After
        /// `cron` or `timezone` changed or the schedule was enabled again, the time of that change,
        /// from which firing times count.
        #[schema(format = DateTime)]
        pub last_fire_time: Option<String>,
        /// The first firing time after `last_fire_time` (or creation), which may be due now; null
        /// while disabled.
        #[schema(format = DateTime)]
        pub next_fire_time: Option<String>,
        /// The execution the newest started firing created.
        #[schema(format = "uuid")]
        pub last_execution: Option<String>,
        /// Whose rights it fires with (`token:NAME` or `user:NAME`): whoever created or last
        /// changed it. Each time, the owner must still exist and have role `runner` in the
        /// sandbox; else nothing starts and the firing is recorded
        /// `skipped` with reason `not_permitted`. Null for one made before owners were recorded,
        /// which starts nothing until someone changes it.
        owner,
        created_at,
        updated_at,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    /// Sorted by name.
    pub schedules: Vec<Schedule>,
}

trigger_struct! {
    request
    /// Defines a schedule (`POST /schedules`), or changes one (`PATCH /schedules/{id}`: every
    /// field optional there, and those left out or `null` keep their values; `name`, if given,
    /// must be the schedule's: names cannot change (409 `conflict`); `misfire` given without `misfire_max` resets
    /// it). Unknown fields and wrong types are answered 400 `invalid_json`; missing or invalid
    /// values 422. Optional fields may also be sent as `null`.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ScheduleRequest {
        /// 1 to 64 letters, digits, `.`, `_` or `-`; unique among schedules. Required to create.
        name,
        /// The sandbox holding the job file; it must exist and not be partitioned. Required to
        /// create.
        sandbox,
        /// Path of the job file inside the sandbox. Required to create.
        job,
        /// Job parameters; numbers and booleans are turned into strings. In values,
        /// `{fire_time}` (RFC 3339 in the schedule's zone), `{fire_date}` (`YYYY-MM-DD` there),
        /// `{fire_unix}` and `{fire_unix_ms}` are replaced at each firing; `{{` and `}}` are
        /// literal braces.
        params,
        /// Five fields (`minute hour day-of-month month day-of-week`) or six with a leading
        /// `second` field: `*`, lists `a,b`, ranges `a-b`, steps `*/n` and `a-b/n`, names
        /// `JAN`-`DEC` and `SUN`-`SAT`, `L`, `W`, `#` and `?`; or a macro: `@yearly`
        /// (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`. Day of month
        /// and day of week combine as in Vixie cron: when either field starts with `*` a day must
        /// match both, else either. `@reboot` and expressions that never fire are refused
        /// (`invalid_cron`). Required to create.
        #[schema(example = "30 6 * * MON-FRI")]
        pub cron: Option<String>,
        /// IANA time zone name, such as `Europe/Berlin` (default `UTC`).
        pub timezone: Option<String>,
        /// A disabled schedule records its firing times as skipped (`disabled`). Default true.
        enabled,
        /// Default `once`.
        #[schema(value_type = Option<MisfirePolicy>)]
        pub misfire: Option<String>,
        /// With `misfire: all` only: how many missed firings to run (default 1000).
        #[serde(deserialize_with = "crate::whole_number")]
        #[schema(minimum = 1, maximum = 1000)]
        pub misfire_max: Option<u32>,
        /// How late a firing may be and still count as on time: a duration such as `30s` or
        /// `5m`, more than zero (default `1m`).
        #[schema(example = "5m")]
        pub misfire_threshold: Option<String>,
        /// Default `allow`.
        #[schema(value_type = Option<OverlapPolicy>)]
        pub overlap: Option<String>,
    }
}

/// What became of a firing time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FiringOutcome {
    /// Its execution was enqueued.
    Started,
    /// Nothing was started (see `reason`).
    Skipped,
    /// It waits for the previous run to end (overlap `queue`), then becomes `started`.
    Queued,
}

/// Why a firing started nothing (or, for `overlap` on a started firing, why it waited).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FiringReason {
    /// Missed while every node was down and not run by the misfire policy.
    Misfire,
    /// The previous run still went (also kept on a queued firing once it starts).
    Overlap,
    /// The schedule was disabled.
    Disabled,
    /// The job could not be started (file missing or invalid, parameters do not bind).
    JobError,
    /// The schedule's owner no longer exists or no longer may run its job (`message` says
    /// why).
    NotPermitted,
}

names!(FiringOutcome { Started => "started", Skipped => "skipped", Queued => "queued" });
names!(FiringReason {
    Misfire => "misfire",
    Overlap => "overlap",
    Disabled => "disabled",
    JobError => "job_error",
    NotPermitted => "not_permitted",
});

/// One firing time of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Firing {
    /// The schedule's id.
    #[schema(format = "uuid")]
    pub schedule: String,
    /// The firing time (UTC).
    #[schema(format = DateTime)]
    pub fire_time: String,
    pub outcome: FiringOutcome,
    pub reason: Option<FiringReason>,
    /// What `reason` means for this firing, when it has more to say (a `not_permitted` one
    /// names the owner and what it lacks).
    pub message: Option<String>,
    #[schema(format = "uuid")]
    pub execution: Option<String>,
    /// The node that claimed the firing time.
    pub node: String,
    #[schema(format = DateTime)]
    pub claimed_at: String,
    /// `claimed_at - fire_time`.
    pub lateness_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FiringList {
    /// Newest firing time first.
    pub firings: Vec<Firing>,
}

/// The coming firing times of an expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Preview {
    pub cron: String,
    /// IANA zone name.
    pub timezone: String,
    /// Firing times, oldest first, in RFC 3339 in the zone (with its offset); fewer than
    /// asked when the expression has no more.
    pub firings: Vec<String>,
}

/// Previews an expression without defining a schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// As in `ScheduleRequest`.
    #[schema(example = "*/15 * * * *")]
    pub cron: String,
    /// IANA time zone name (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// How many firing times, 1 to 1000 (default 10; else 400 `invalid_query`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::whole_number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub count: Option<u32>,
}
