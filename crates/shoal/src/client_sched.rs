//! The client commands for jobs that start by themselves: `schedule` (cron), `listener`
//! (events: a job finishing, files, webhooks, the cluster) and `hook` (deliver a signed
//! webhook, as an outside service would). Output and exit codes as for the other client
//! commands (see `client_cmds`).

use crate::client_cmds::{parse_key_value, parse_target, CmdResult, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::output::{
    clip, emit, fmt_ms, key_values, name, name_or_dash, or_dash, pairs, print_answer, print_json, rows_table,
    short_time, yes_no, Row,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_client::{Client, Definitions, Error, Listeners, Schedules};
use shoal_wire::{
    Firing, HookAnswer, Listener, ListenerEvent, ListenerKind, ListenerList, ListenerRequest, OnClusterRequest,
    OnFileRequest, OnJobRequest, ParamValues, PreviewRequest, Schedule, ScheduleList, ScheduleRequest,
};
use std::path::PathBuf;
use tokio::io::AsyncReadExt;

/// The shortest webhook secret the server accepts.
const MIN_SECRET_CHARS: usize = 16;

const FILE_EVENTS: [&str; 3] = ["appeared", "changed", "vanished"];
/// The cluster events a listener hears when none are named.
const DEFAULT_CLUSTER_EVENTS: [&str; 2] = ["node_died", "node_joined"];

// ---- schedules: arguments ----

#[derive(clap::Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Create a schedule: start a job at the times a cron expression names
    Create(ScheduleCreateArgs),
    /// List schedules
    #[command(visible_alias = "ls")]
    List,
    /// Show one schedule
    Show(RefArgs),
    /// Enable a schedule: it fires again from its next fire time
    Enable(RefArgs),
    /// Disable a schedule: it fires no more until enabled
    Disable(RefArgs),
    /// Change a schedule; only the options given change
    Edit(ScheduleEditArgs),
    /// Delete a schedule (executions it started are left alone)
    #[command(visible_alias = "rm")]
    Delete(RefArgs),
    /// List a schedule's recent firings, newest first: what each fire time did and why
    Firings {
        /// The schedule's name or id
        #[arg(value_name = "REF")]
        reference: String,
        /// How many firings to list; the server's default is 50
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Print a schedule's next fire times, or those of a cron expression (--cron), one a line
    Preview(PreviewArgs),
}

#[derive(clap::Args, Debug)]
pub struct RefArgs {
    /// The name or id
    #[arg(value_name = "REF")]
    pub reference: String,
}

#[derive(clap::Args, Debug)]
pub struct ScheduleCreateArgs {
    /// The schedule's name: 1 to 64 letters, digits, `.`, `_` or `-`
    pub name: String,
    /// The job to start: the sandbox, a slash, and the job file's path in it, e.g.
    /// examples/jobs/greet.toml
    #[arg(value_name = "SANDBOX/JOB", value_parser = parse_target)]
    pub target: (String, String),
    /// When to fire: a cron expression of 5 fields (minute first) or 6 (second first), or
    /// @hourly, @daily, ...; quote it, e.g. --cron '0 2 * * *'
    #[arg(long, value_name = "EXPR")]
    pub cron: String,
    #[command(flatten)]
    pub common: ScheduleOpts,
    /// Create it disabled: it fires only once enabled
    #[arg(long)]
    pub disabled: bool,
}

/// The options `schedule create` and `schedule edit` share.
#[derive(clap::Args, Debug)]
pub struct ScheduleOpts {
    /// The time zone the cron expression is read in, e.g. Europe/Berlin (default UTC)
    #[arg(long = "tz", value_name = "ZONE")]
    pub timezone: Option<String>,
    /// A job parameter; repeat for several. Values may use {fire_time}, {fire_date},
    /// {fire_unix} and {fire_unix_ms}, e.g. -p day={fire_date}
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// Fire times missed while no node could fire them: skip drops them, once fires once for
    /// all of them, all fires each (default once)
    #[arg(long, value_parser = ["skip", "once", "all"])]
    pub misfire: Option<String>,
    /// With --misfire all: fire at most this many of the missed times (default 1000)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub misfire_max: Option<u32>,
    /// How late a fire time may be fired and still count as on time rather than missed,
    /// e.g. 30s or 5m (default 1m)
    #[arg(long, value_name = "DURATION")]
    pub misfire_threshold: Option<String>,
    /// A fire time that comes while the previous execution still runs: allow starts another,
    /// skip drops it, queue starts it once the previous one has finished, replace cancels
    /// the previous one (default allow)
    #[arg(long, value_parser = ["allow", "skip", "queue", "replace"])]
    pub overlap: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ScheduleEditArgs {
    /// The schedule's name or id
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Start another job: SANDBOX/JOB
    #[arg(long = "job", value_name = "SANDBOX/JOB", value_parser = parse_target)]
    pub target: Option<(String, String)>,
    /// A new cron expression
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    #[command(flatten)]
    pub common: ScheduleOpts,
    /// Remove every job parameter (-p replaces them all)
    #[arg(long, conflicts_with = "params")]
    pub clear_params: bool,
}

#[derive(clap::Args, Debug)]
pub struct PreviewArgs {
    /// The schedule's name or id
    #[arg(value_name = "REF", required_unless_present = "cron", conflicts_with = "cron")]
    pub reference: Option<String>,
    /// Preview this cron expression instead of a schedule's
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    /// With --cron: the time zone to read it in (default UTC)
    // `requires = "cron"` alone lets `REF --tz` through: clap excuses a missing requirement
    // that conflicts with an argument given (REF conflicts with --cron).
    #[arg(long = "tz", value_name = "ZONE", requires = "cron", conflicts_with = "reference")]
    pub timezone: Option<String>,
    /// How many fire times to print; the server's default is 10
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: Option<u32>,
}

// ---- listeners and hooks: arguments ----

#[derive(clap::Subcommand, Debug)]
pub enum ListenerCmd {
    /// Create a listener: start a job each time an event happens
    ///
    /// Give exactly one of --on-job, --on-file, --webhook and --on-cluster.
    ///
    /// Parameter values (-p) may use the event's fields as {event.X}: for --on-job execution,
    /// sandbox, job, state, exit_code, node and param.NAME (the finished execution's
    /// parameters); for --on-file path, name, size and kind; for --webhook delivery and
    /// payload.A.B (a field of the delivered JSON); for --on-cluster node, kind and generation.
    Create(ListenerCreateArgs),
    /// List listeners
    #[command(visible_alias = "ls")]
    List,
    /// Show one listener
    Show(RefArgs),
    /// Enable a listener: events start jobs again
    Enable(RefArgs),
    /// Disable a listener: events are recorded as skipped and start no job
    Disable(RefArgs),
    /// Change a listener's job, parameters or webhook secret; only the options given change
    Edit(ListenerEditArgs),
    /// Delete a listener (executions it started are left alone)
    #[command(visible_alias = "rm")]
    Delete(RefArgs),
    /// List the events a listener received, newest first, and what each one started
    Events {
        /// The listener's name or id
        #[arg(value_name = "REF")]
        reference: String,
        /// How many events to list; the server's default is 50
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
}

// The kind-specific options conflict with the other kinds rather than `requires` the flag of
// their own: clap counts a flag's default `false` as present for `requires`.
#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("trigger").required(true).args(["on_job", "on_file", "webhook", "on_cluster"])
))]
pub struct ListenerCreateArgs {
    /// The listener's name (for a webhook, the last part of its URL)
    pub name: String,
    /// The job to start: the sandbox, a slash, and the job file's path in it, e.g.
    /// examples/jobs/greet.toml
    #[arg(value_name = "SANDBOX/JOB", value_parser = parse_target)]
    pub target: (String, String),
    /// Start the job when an execution of this job (SANDBOX/JOB) finishes
    #[arg(long, value_name = "SANDBOX/JOB", value_parser = parse_target)]
    pub on_job: Option<(String, String)>,
    /// With --on-job: the final states that count, comma-separated: succeeded, failed,
    /// cancelled, timed_out, or final for any (default succeeded)
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = ["succeeded", "failed", "cancelled", "timed_out", "final"],
        conflicts_with_all = ["on_file", "webhook", "on_cluster"]
    )]
    pub states: Vec<String>,
    /// Start the job when a file matching PATTERN (a glob, e.g. incoming/*.csv) changes in
    /// SANDBOX
    #[arg(long, value_name = "SANDBOX:PATTERN", value_parser = parse_file_trigger)]
    pub on_file: Option<(String, String)>,
    /// The events that count, comma-separated. With --on-file: appeared, changed, vanished
    /// (default appeared); with --on-cluster: node_died, node_joined, node_left (default
    /// node_died and node_joined)
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = ["appeared", "changed", "vanished", "node_died", "node_joined", "node_left"],
        conflicts_with_all = ["on_job", "webhook"]
    )]
    pub events: Vec<String>,
    /// With --on-file: how long a file must stay unchanged before it counts, so a file still
    /// being written is not taken half-way, e.g. 5s (default 1s)
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["on_job", "webhook", "on_cluster"])]
    pub settle: Option<String>,
    /// Start the job when a signed webhook is delivered to /api/v1/hooks/NAME
    #[arg(long)]
    pub webhook: bool,
    /// With --webhook: the secret deliveries are signed with, at least 16 characters
    /// (default: the server makes one and shows it once)
    #[arg(long, conflicts_with_all = ["on_job", "on_file", "on_cluster"])]
    pub secret: Option<String>,
    /// Start the job when a node of the cluster dies or joins
    #[arg(long)]
    pub on_cluster: bool,
    /// A job parameter; repeat for several. Values may use {event.X} (see above)
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// Create it disabled: events start no job until it is enabled
    #[arg(long)]
    pub disabled: bool,
}

#[derive(clap::Args, Debug)]
pub struct ListenerEditArgs {
    /// The listener's name or id
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Start another job: SANDBOX/JOB
    #[arg(long = "job", value_name = "SANDBOX/JOB", value_parser = parse_target)]
    pub target: Option<(String, String)>,
    /// A job parameter; repeat for several. Replaces all of the listener's parameters
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// Remove every job parameter
    #[arg(long, conflicts_with = "params")]
    pub clear_params: bool,
    /// A webhook listener's new secret, at least 16 characters; deliveries signed with the
    /// old one are refused from then on
    #[arg(long)]
    pub secret: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct HookArgs {
    /// The webhook listener's name
    pub name: String,
    /// The listener's secret, to sign the delivery with (env SHOAL_HOOK_SECRET keeps it out
    /// of the shell's history)
    #[arg(long, env = "SHOAL_HOOK_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The JSON payload, e.g. '{"order": 42}' (default {})
    #[arg(long, value_name = "JSON", conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Read the JSON payload from a file (- for stdin)
    #[arg(long, value_name = "PATH")]
    pub data_file: Option<PathBuf>,
    /// The delivery's id, signed with the hook's name and the payload: a delivery sent again
    /// with the same id starts no second job (1 to 200 printable ASCII characters, no space at
    /// either end; default: a new id)
    #[arg(long, value_name = "ID", value_parser = delivery_id)]
    pub delivery: Option<String>,
}

/// A `--delivery` id as the server takes it: 1 to 200 printable ASCII characters, no control
/// character (it is one line of the signed "<t>\n<hook>\n<delivery>\n<body>"), and no space
/// at either end (HTTP drops it there, so the id signed would not be the id received).
fn delivery_id(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 200
        || !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        || s.starts_with(' ')
        || s.ends_with(' ')
    {
        return Err("a delivery id is 1 to 200 printable ASCII characters, with no space at either end".into());
    }
    Ok(s.to_owned())
}

// ---- request bodies ----

fn params(params: &[(String, String)]) -> ParamValues {
    params.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect()
}

/// Sets the options `schedule create` and `schedule edit` share, those given.
fn set_schedule_opts(request: &mut ScheduleRequest, opts: &ScheduleOpts) {
    request.timezone = opts.timezone.clone();
    if !opts.params.is_empty() {
        request.params = Some(params(&opts.params));
    }
    request.misfire = opts.misfire.clone();
    request.misfire_max = opts.misfire_max;
    request.misfire_threshold = opts.misfire_threshold.clone();
    request.overlap = opts.overlap.clone();
}

/// The body of `POST /schedules`; an error is a usage error.
fn schedule_body(args: &ScheduleCreateArgs) -> Result<ScheduleRequest, String> {
    if args.common.misfire_max.is_some() && args.common.misfire.as_deref() != Some("all") {
        return Err("--misfire-max goes with --misfire all: it caps how many missed fire times are fired".into());
    }
    let (sandbox, job) = &args.target;
    let mut request = ScheduleRequest {
        name: Some(args.name.clone()),
        sandbox: Some(sandbox.clone()),
        job: Some(job.clone()),
        cron: Some(args.cron.clone()),
        ..ScheduleRequest::default()
    };
    set_schedule_opts(&mut request, &args.common);
    if args.disabled {
        request.enabled = Some(false);
    }
    Ok(request)
}

/// The body of `PATCH /schedules/{ref}`; an error is a usage error.
fn schedule_patch(args: &ScheduleEditArgs) -> Result<ScheduleRequest, String> {
    let mut request = ScheduleRequest::default();
    if let Some((sandbox, job)) = &args.target {
        request.sandbox = Some(sandbox.clone());
        request.job = Some(job.clone());
    }
    request.cron = args.cron.clone();
    set_schedule_opts(&mut request, &args.common);
    if args.clear_params {
        request.params = Some(ParamValues::new());
    }
    if request == ScheduleRequest::default() {
        return Err(format!(
            "nothing to change: give what to change, e.g. `shoal schedule edit {} --cron '0 3 * * *'`; \
             see `shoal schedule edit --help`",
            args.reference
        ));
    }
    Ok(request)
}

/// `SANDBOX:PATTERN`, split at the first `:`.
fn parse_file_trigger(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((sandbox, pattern)) if !sandbox.is_empty() && !pattern.is_empty() => {
            Ok((sandbox.to_owned(), pattern.to_owned()))
        }
        _ => Err(format!(
            "`{s}` is not SANDBOX:PATTERN: give the sandbox's name, a colon, and a file pattern in it, e.g. data:incoming/*.csv"
        )),
    }
}

fn check_secret(secret: &str) -> Result<(), String> {
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(format!(
            "the webhook secret must be at least {MIN_SECRET_CHARS} characters long (or leave --secret out and the server makes one)"
        ));
    }
    Ok(())
}

/// Refuses events of the other kind (`--events` is shared by --on-file and --on-cluster).
fn check_events(events: &[String], allowed: &[&str], trigger: &str) -> Result<(), String> {
    match events.iter().find(|e| !allowed.contains(&e.as_str())) {
        Some(bad) => Err(format!("`{bad}` is not an event of {trigger}; it takes {}", allowed.join(", "))),
        None => Ok(()),
    }
}

/// `None` for an empty list: the server's default applies.
fn given(items: &[String]) -> Option<Vec<String>> {
    (!items.is_empty()).then(|| items.to_vec())
}

/// The body of `POST /listeners`; an error is a usage error.
fn listener_body(args: &ListenerCreateArgs) -> Result<ListenerRequest, String> {
    let (sandbox, job) = &args.target;
    let mut request = ListenerRequest {
        name: Some(args.name.clone()),
        sandbox: Some(sandbox.clone()),
        job: Some(job.clone()),
        params: (!args.params.is_empty()).then(|| params(&args.params)),
        enabled: args.disabled.then_some(false),
        ..ListenerRequest::default()
    };
    let kind = if let Some((on_sandbox, on_job)) = &args.on_job {
        if args.states.len() > 1 && args.states.iter().any(|s| s == "final") {
            return Err("`final` already means every final state; give it alone".into());
        }
        request.on_job =
            Some(OnJobRequest { sandbox: on_sandbox.clone(), job: on_job.clone(), states: given(&args.states) });
        ListenerKind::Job
    } else if let Some((on_sandbox, pattern)) = &args.on_file {
        check_events(&args.events, &FILE_EVENTS, "--on-file")?;
        request.on_file = Some(OnFileRequest {
            sandbox: on_sandbox.clone(),
            pattern: pattern.clone(),
            events: given(&args.events),
            settle: args.settle.clone(),
        });
        ListenerKind::File
    } else if args.webhook {
        if let Some(secret) = &args.secret {
            check_secret(secret)?;
            request.secret = Some(secret.clone());
        }
        ListenerKind::Webhook
    } else if args.on_cluster {
        check_events(&args.events, &shoal_core::listener::CLUSTER_EVENTS, "--on-cluster")?;
        // Spelled out, so the object is there even when no event was chosen.
        let events = if args.events.is_empty() {
            DEFAULT_CLUSTER_EVENTS.map(String::from).to_vec()
        } else {
            args.events.clone()
        };
        request.on_cluster = Some(OnClusterRequest { events: Some(events) });
        ListenerKind::Cluster
    } else {
        // clap's group requires one of them.
        return Err("give what the listener listens to: --on-job, --on-file, --webhook or --on-cluster".into());
    };
    request.kind = Some(kind.as_str().to_owned());
    Ok(request)
}

/// The body of `PATCH /listeners/{ref}`; an error is a usage error.
fn listener_patch(args: &ListenerEditArgs) -> Result<ListenerRequest, String> {
    let mut request = ListenerRequest::default();
    if let Some((sandbox, job)) = &args.target {
        request.sandbox = Some(sandbox.clone());
        request.job = Some(job.clone());
    }
    if !args.params.is_empty() {
        request.params = Some(params(&args.params));
    }
    if args.clear_params {
        request.params = Some(ParamValues::new());
    }
    if let Some(secret) = &args.secret {
        check_secret(secret)?;
        request.secret = Some(secret.clone());
    }
    if request == ListenerRequest::default() {
        return Err(format!(
            "nothing to change: give --job, -p, --clear-params or --secret, e.g. `shoal listener edit {} -p day=mon`",
            args.reference
        ));
    }
    Ok(request)
}

/// The payload of `shoal hook`, as the bytes to send: checked to be JSON, otherwise sent as
/// given (the signature covers these exact bytes). `Err(Ok(message))` is a usage error,
/// `Err(Err(e))` a file that cannot be read.
async fn hook_payload(args: &HookArgs) -> Result<Vec<u8>, Result<String, Error>> {
    let (bytes, source) = match (&args.data, &args.data_file) {
        (Some(data), _) => (data.clone().into_bytes(), "--data".to_owned()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut buf)
                .await
                .map_err(|e| Err(Error::Other(format!("cannot read the payload from stdin: {e}"))))?;
            (buf, "stdin".to_owned())
        }
        (None, Some(path)) => {
            let buf = tokio::fs::read(path)
                .await
                .map_err(|e| Err(Error::Other(format!("cannot read `{}`: {e}", path.display()))))?;
            (buf, format!("`{}`", path.display()))
        }
        (None, None) => (b"{}".to_vec(), String::new()),
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .map_err(|e| Ok(format!("the payload in {source} is not valid JSON: {e}")))?;
    Ok(bytes)
}

// ---- answers ----

/// API names, comma-separated.
fn names<T: serde::Serialize>(items: &[T]) -> String {
    items.iter().map(name).collect::<Vec<_>>().join(",")
}

/// What starts a listener's job, briefly: `examples/jobs/load.toml succeeded`,
/// `data:incoming/*.csv appeared`, the hook URL, or the cluster's events.
fn trigger_text(listener: &Listener) -> String {
    match listener.kind {
        ListenerKind::Job => match &listener.on_job {
            Some(on) => format!("{}/{} {}", on.sandbox, on.job, names(&on.states)),
            None => "-".into(),
        },
        ListenerKind::File => match &listener.on_file {
            Some(on) => format!("{}:{} {}", on.sandbox, on.pattern, names(&on.events)),
            None => "-".into(),
        },
        ListenerKind::Webhook => or_dash(listener.hook_url.as_deref()),
        ListenerKind::Cluster => match &listener.on_cluster {
            Some(on) => names(&on.events),
            None => DEFAULT_CLUSTER_EVENTS.join(","),
        },
    }
}

/// The id of the execution a webhook delivery started: the answer's `execution`, or the
/// event's when the server answered a repeated delivery with the first event only.
fn started_execution(answer: &HookAnswer) -> Option<String> {
    let started = answer.execution.as_ref().and_then(Option::as_ref).map(|e| e.id.clone());
    started.or_else(|| answer.event.execution.clone())
}

/// A hook URL as the answering server serves it (the API gives it as a path).
fn full_hook_url(client: &Client, hook_url: Option<&str>) -> String {
    match hook_url {
        Some(path) if path.starts_with('/') => format!("{}{path}", client.current_server()),
        other => or_dash(other),
    }
}

fn usage(message: &str) -> CmdResult {
    eprintln!("error: {message}");
    Ok(EXIT_USAGE)
}

/// The first cells of a row of a schedule's firings or a listener's events: when, what came
/// of it and why, the execution it started, the node that claimed it.
fn what_happened(
    at: &str,
    outcome: &impl serde::Serialize,
    reason: Option<&impl serde::Serialize>,
    execution: Option<&str>,
    node: &str,
) -> Vec<String> {
    vec![short_time(Some(at)), name(outcome), name_or_dash(reason), or_dash(execution), node.to_owned()]
}

// ---- what schedules and listeners share ----

/// A kind of definition the API keeps in one collection (schedules, listeners): what the
/// commands they share (list, show, edit, enable, disable, delete) need to know of it. What
/// differs between them (creating one, their history, what an edit says) stays in
/// `cmd_schedule` and `cmd_listener`.
trait Definition: Row + Serialize + DeserializeOwned {
    /// The word for one, as messages say it.
    const NOUN: &'static str;
    /// The body that creates or changes one.
    type Request: Serialize + Default;
    /// The answer that lists them all.
    type List: Serialize + DeserializeOwned;

    /// Its collection in the typed client.
    fn collection(client: &Client) -> Definitions<'_, Self, Self::Request, Self::List>;
    fn listed(list: &Self::List) -> &[Self];
    fn name(&self) -> &str;
    /// As `key: value` lines show it.
    fn fields(&self) -> Vec<(&'static str, String)>;
    /// The patch that enables or disables one.
    fn enabling(enabled: bool) -> Self::Request;
    /// What `enable` says after its name.
    fn when_enabled(&self) -> String {
        String::new()
    }
}

async fn list<D: Definition>(client: &Client, json: bool) -> CmdResult {
    let list = D::collection(client).list().await?;
    print_answer(&list, json, |list| rows_table(D::listed(list)));
    Ok(EXIT_OK)
}

async fn show<D: Definition>(client: &Client, reference: &str, json: bool) -> CmdResult {
    let definition = D::collection(client).get(reference).await?;
    print_answer(&definition, json, |d| key_values(&d.fields()));
    Ok(EXIT_OK)
}

/// Sends `patch` (an `Err` is a usage error: nothing is sent) and says what the definition
/// is now, as `text` puts it.
async fn edit<D: Definition>(
    client: &Client,
    reference: &str,
    patch: Result<D::Request, String>,
    json: bool,
    text: impl FnOnce(&D) -> String,
) -> CmdResult {
    let patch = match patch {
        Ok(p) => p,
        Err(message) => return usage(&message),
    };
    let definition = D::collection(client).update(reference, &patch).await?;
    print_answer(&definition, json, text);
    Ok(EXIT_OK)
}

async fn set_enabled<D: Definition>(client: &Client, reference: &str, enabled: bool, json: bool) -> CmdResult {
    let what = if enabled { "enabled" } else { "disabled" };
    edit(client, reference, Ok(D::enabling(enabled)), json, |d: &D| {
        let note = if enabled { d.when_enabled() } else { String::new() };
        format!("{what} {} {}{note}\n", D::NOUN, d.name())
    })
    .await
}

async fn delete<D: Definition>(client: &Client, reference: &str, json: bool) -> CmdResult {
    D::collection(client).delete(reference).await?;
    print_answer(&serde_json::json!({ "deleted": reference }), json, |_| format!("deleted {} {reference}\n", D::NOUN));
    Ok(EXIT_OK)
}

// ---- schedules ----

impl Row for Schedule {
    const HEADERS: &'static [&'static str] = &["NAME", "ENABLED", "CRON", "TZ", "JOB", "NEXT", "LAST"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            yes_no(self.enabled),
            self.cron.clone(),
            self.timezone.clone(),
            clip(&format!("{}/{}", self.sandbox, self.job), 40),
            short_time(self.next_fire_time.as_deref()),
            short_time(self.last_fire_time.as_deref()),
        ]
    }
}

impl Definition for Schedule {
    const NOUN: &'static str = "schedule";
    type Request = ScheduleRequest;
    type List = ScheduleList;

    fn collection(client: &Client) -> Schedules<'_> {
        client.schedules()
    }

    fn listed(list: &ScheduleList) -> &[Schedule] {
        &list.schedules
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Every field of the wire type.
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("enabled", self.enabled.to_string()),
            ("sandbox", self.sandbox.clone()),
            ("job", self.job.clone()),
            ("params", pairs(&self.params)),
            ("cron", self.cron.clone()),
            ("timezone", self.timezone.clone()),
            ("next_fire_time", or_dash(self.next_fire_time.as_deref())),
            ("last_fire_time", or_dash(self.last_fire_time.as_deref())),
            ("last_execution", or_dash(self.last_execution.as_deref())),
            ("owner", or_dash(self.owner.as_deref())),
            ("misfire", name(&self.misfire)),
            ("misfire_max", or_dash(self.misfire_max)),
            ("misfire_threshold_ms", self.misfire_threshold_ms.to_string()),
            ("overlap", name(&self.overlap)),
            ("created_at", self.created_at.clone()),
            ("updated_at", self.updated_at.clone()),
        ]
    }

    fn enabling(enabled: bool) -> ScheduleRequest {
        ScheduleRequest { enabled: Some(enabled), ..ScheduleRequest::default() }
    }

    fn when_enabled(&self) -> String {
        format!(": {}", next_fire(self))
    }
}

impl Row for Firing {
    const HEADERS: &'static [&'static str] = &["FIRE TIME", "OUTCOME", "REASON", "EXECUTION", "NODE", "LATENESS"];

    fn cells(&self) -> Vec<String> {
        let execution = self.execution.as_deref();
        let mut cells = what_happened(&self.fire_time, &self.outcome, self.reason.as_ref(), execution, &self.node);
        cells.push(fmt_ms(self.lateness_ms));
        cells
    }
}

/// `next fire 2026-01-01T02:00:00Z`, or why there is none.
fn next_fire(schedule: &Schedule) -> String {
    match &schedule.next_fire_time {
        None if !schedule.enabled => "disabled, so it will not fire".into(),
        None => "no next fire time".into(),
        Some(t) => format!("next fire {}", short_time(Some(t))),
    }
}

pub async fn cmd_schedule(client: &Client, cmd: ScheduleCmd, json: bool) -> CmdResult {
    match cmd {
        ScheduleCmd::Create(args) => {
            let request = match schedule_body(&args) {
                Ok(b) => b,
                Err(message) => return usage(&message),
            };
            let created = client.schedules().create(&request).await?;
            print_answer(&created, json, |c| format!("created schedule {} ({}): {}\n", c.name, c.id, next_fire(c)));
        }
        ScheduleCmd::List => return list::<Schedule>(client, json).await,
        ScheduleCmd::Show(a) => return show::<Schedule>(client, &a.reference, json).await,
        ScheduleCmd::Enable(a) => return set_enabled::<Schedule>(client, &a.reference, true, json).await,
        ScheduleCmd::Disable(a) => return set_enabled::<Schedule>(client, &a.reference, false, json).await,
        ScheduleCmd::Edit(args) => {
            let updated = |s: &Schedule| format!("updated schedule {}: {}\n", s.name, next_fire(s));
            return edit(client, &args.reference, schedule_patch(&args), json, updated).await;
        }
        ScheduleCmd::Delete(a) => return delete::<Schedule>(client, &a.reference, json).await,
        ScheduleCmd::Firings { reference, limit } => {
            let firings = client.schedules().firings(&reference, limit).await?;
            print_answer(&firings, json, |f| rows_table(&f.firings));
        }
        ScheduleCmd::Preview(args) => {
            let preview = match (&args.reference, &args.cron) {
                (_, Some(cron)) => {
                    let request =
                        PreviewRequest { cron: cron.clone(), timezone: args.timezone.clone(), count: args.count };
                    client.schedules().preview_cron(&request).await?
                }
                (Some(reference), None) => client.schedules().preview(reference, args.count).await?,
                // clap requires one of them.
                (None, None) => return usage("give a schedule's name, or a cron expression with --cron"),
            };
            print_answer(&preview, json, |p| p.firings.iter().map(|t| format!("{t}\n")).collect());
        }
    }
    Ok(EXIT_OK)
}

// ---- listeners ----

impl Row for Listener {
    const HEADERS: &'static [&'static str] = &["NAME", "ENABLED", "KIND", "ON", "JOB"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            yes_no(self.enabled),
            self.kind.as_str().to_owned(),
            clip(&trigger_text(self), 50),
            clip(&format!("{}/{}", self.sandbox, self.job), 40),
        ]
    }
}

impl Definition for Listener {
    const NOUN: &'static str = "listener";
    type Request = ListenerRequest;
    type List = ListenerList;

    fn collection(client: &Client) -> Listeners<'_> {
        client.listeners()
    }

    fn listed(list: &ListenerList) -> &[Listener] {
        &list.listeners
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Its trigger as one line instead of the `on_*` objects, and the webhook's URL and
    /// secret only where it has them.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("kind", self.kind.as_str().to_owned()),
            ("enabled", self.enabled.to_string()),
            ("trigger", trigger_text(self)),
            ("sandbox", self.sandbox.clone()),
            ("job", self.job.clone()),
            ("params", pairs(&self.params)),
            ("owner", or_dash(self.owner.as_deref())),
        ];
        if let Some(url) = &self.hook_url {
            fields.push(("hook_url", url.clone()));
        }
        if let Some(secret) = &self.secret {
            fields.push(("secret", secret.clone()));
        }
        fields.push(("created_at", self.created_at.clone()));
        fields.push(("updated_at", self.updated_at.clone()));
        fields
    }

    fn enabling(enabled: bool) -> ListenerRequest {
        ListenerRequest { enabled: Some(enabled), ..ListenerRequest::default() }
    }
}

impl Row for ListenerEvent {
    const HEADERS: &'static [&'static str] = &["AT", "OUTCOME", "REASON", "EXECUTION", "NODE", "KEY"];

    fn cells(&self) -> Vec<String> {
        let execution = self.execution.as_deref();
        let mut cells = what_happened(&self.at, &self.outcome, self.reason.as_ref(), execution, &self.node);
        cells.push(clip(&self.key, 50));
        cells
    }
}

/// What `listener create` says of the listener it created: what it starts, and what starts
/// it (a webhook: its URL and, when the server made it, its secret).
fn created_text(client: &Client, created: &Listener) -> String {
    let mut out = format!(
        "created {} listener {} ({}): starts {}/{}\n",
        created.kind.as_str(),
        created.name,
        created.id,
        created.sandbox,
        created.job
    );
    if created.kind == ListenerKind::Webhook {
        out.push_str(&format!("hook URL: {}\n", full_hook_url(client, created.hook_url.as_deref())));
        if let Some(secret) = &created.secret {
            out.push_str(&format!("secret:   {secret}\n"));
        }
    } else {
        out.push_str(&format!("on:       {}\n", trigger_text(created)));
    }
    out
}

pub async fn cmd_listener(client: &Client, cmd: ListenerCmd, json: bool) -> CmdResult {
    match cmd {
        ListenerCmd::Create(args) => {
            let request = match listener_body(&args) {
                Ok(b) => b,
                Err(message) => return usage(&message),
            };
            let created = client.listeners().create(&request).await?;
            print_answer(&created, json, |c| created_text(client, c));
            if created.secret.is_some() && args.secret.is_none() {
                eprintln!(
                    "note: the secret is shown only once: store it now (`shoal listener edit {} --secret ...` sets a new one)",
                    created.name
                );
            }
        }
        ListenerCmd::List => return list::<Listener>(client, json).await,
        ListenerCmd::Show(a) => return show::<Listener>(client, &a.reference, json).await,
        ListenerCmd::Enable(a) => return set_enabled::<Listener>(client, &a.reference, true, json).await,
        ListenerCmd::Disable(a) => return set_enabled::<Listener>(client, &a.reference, false, json).await,
        ListenerCmd::Edit(args) => {
            let updated = |l: &Listener| {
                format!("updated listener {}: starts {}/{} with {}\n", l.name, l.sandbox, l.job, pairs(&l.params))
            };
            return edit(client, &args.reference, listener_patch(&args), json, updated).await;
        }
        ListenerCmd::Delete(a) => return delete::<Listener>(client, &a.reference, json).await,
        ListenerCmd::Events { reference, limit } => {
            let events = client.listeners().events(&reference, limit).await?;
            print_answer(&events, json, |e| rows_table(&e.events));
        }
    }
    Ok(EXIT_OK)
}

// ---- hook ----

pub async fn cmd_hook(client: &Client, args: HookArgs, json: bool) -> CmdResult {
    let payload = match hook_payload(&args).await {
        Ok(p) => p,
        Err(Ok(message)) => return usage(&message),
        Err(Err(e)) => return Err(e),
    };
    let (answer, replayed) = client.hook(&args.name, &args.secret, &payload, args.delivery.as_deref()).await?;
    if json {
        print_json(&answer);
    }
    let Some(execution) = started_execution(&answer) else {
        let event = &answer.event;
        let why = match &event.reason {
            Some(reason) => format!("{} ({})", name(&event.outcome), name(reason)),
            None => name(&event.outcome),
        };
        eprintln!("error: listener {} received the delivery but started no job: {why}", args.name);
        return Ok(EXIT_FAILED);
    };
    if !json {
        emit(&format!("{execution}\n"));
    }
    if replayed {
        eprintln!("this delivery had already been received; {execution} is the execution it started then");
    } else if let Some(Some(started)) = &answer.execution {
        eprintln!("{}: started by listener {}", started.state, args.name);
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_cmds::tests::Cli;
    use crate::client_cmds::ClientCommand;
    use clap::Parser;
    use serde_json::{json, Value};

    /// A request body as it goes on the wire.
    fn wire(request: &impl serde::Serialize) -> Value {
        serde_json::to_value(request).unwrap()
    }

    /// The commands of this module, unboxed.
    #[derive(Debug)]
    enum Cmd {
        Schedule(ScheduleCmd),
        Listener(ListenerCmd),
        Hook(HookArgs),
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("shoal").chain(args.iter().copied())).map(|c| match c.cmd {
            ClientCommand::Schedule(cmd) => Cmd::Schedule(*cmd),
            ClientCommand::Listener(cmd) => Cmd::Listener(*cmd),
            ClientCommand::Hook(args) => Cmd::Hook(args),
            other => panic!("not a schedule, listener or hook command: {other:?}"),
        })
    }

    /// Parses the words of `command` followed by `args`.
    fn parse_with(command: &[&str], args: &[&str]) -> Result<Cmd, clap::Error> {
        parse(&command.iter().chain(args).copied().collect::<Vec<_>>())
    }

    fn schedule_create(args: &[&str]) -> ScheduleCreateArgs {
        match parse_with(&["schedule", "create"], args) {
            Ok(Cmd::Schedule(ScheduleCmd::Create(a))) => a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn listener_create(args: &[&str]) -> Result<ListenerCreateArgs, clap::Error> {
        parse_with(&["listener", "create", "l", "ex/jobs/a.toml"], args).map(|cmd| match cmd {
            Cmd::Listener(ListenerCmd::Create(a)) => a,
            other => panic!("{args:?}: {other:?}"),
        })
    }

    #[test]
    fn schedule_create_builds_the_body() {
        let args = schedule_create(&[
            "nightly",
            "examples/jobs/greet.toml",
            "--cron",
            "*/5 * * * * *",
            "--tz",
            "Europe/Berlin",
            "-p",
            "name={fire_date}",
            "--misfire",
            "all",
            "--misfire-max",
            "10",
            "--misfire-threshold",
            "30s",
            "--overlap",
            "skip",
            "--disabled",
        ]);
        assert_eq!(
            wire(&schedule_body(&args).unwrap()),
            json!({
                "name": "nightly", "sandbox": "examples", "job": "jobs/greet.toml",
                "cron": "*/5 * * * * *", "timezone": "Europe/Berlin", "params": {"name": "{fire_date}"},
                "misfire": "all", "misfire_max": 10, "misfire_threshold": "30s", "overlap": "skip",
                "enabled": false,
            })
        );
        // Only what was given: the server fills in the defaults.
        let args = schedule_create(&["n", "ex/jobs/a.toml", "--cron", "@hourly"]);
        assert_eq!(
            wire(&schedule_body(&args).unwrap()),
            json!({"name": "n", "sandbox": "ex", "job": "jobs/a.toml", "cron": "@hourly"})
        );
        let args = schedule_create(&["n", "ex/a.toml", "--cron", "@hourly", "--misfire", "once", "--misfire-max", "3"]);
        assert!(schedule_body(&args).unwrap_err().contains("--misfire all"));
    }

    #[test]
    fn schedule_create_refuses_bad_arguments() {
        for (args, why) in [
            (&["schedule", "create", "n", "ex/a.toml"][..], "no --cron"),
            (&["schedule", "create", "n", "a.toml", "--cron", "@daily"][..], "no sandbox"),
            (&["schedule", "create", "n", "ex/a.toml", "--cron", "@daily", "--misfire", "twice"][..], "bad misfire"),
            (&["schedule", "create", "n", "ex/a.toml", "--cron", "@daily", "--overlap", "x"][..], "bad overlap"),
            (&["schedule", "create", "n", "ex/a.toml", "--cron", "@daily", "--misfire-max", "0"][..], "max 0"),
            (&["schedule", "create", "n", "ex/a.toml", "--cron", "@daily", "--misfire-max", "1001"][..], "max 1001"),
            (&["schedule", "create", "n", "ex/a.toml", "--cron", "@daily", "-p", "novalue"][..], "bad param"),
        ] {
            assert!(parse(args).is_err(), "{why}: {args:?}");
        }
    }

    #[test]
    fn schedule_edit_sends_only_what_changes() {
        let edit = |args: &[&str]| match parse_with(&["schedule", "edit", "nightly"], args) {
            Ok(Cmd::Schedule(ScheduleCmd::Edit(a))) => schedule_patch(&a).map(|p| wire(&p)),
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(edit(&["--cron", "0 3 * * *"]).unwrap(), json!({"cron": "0 3 * * *"}));
        assert_eq!(
            edit(&["--tz", "UTC", "-p", "a=1", "--overlap", "queue", "--job", "ex/jobs/b.toml"]).unwrap(),
            json!({"timezone": "UTC", "params": {"a": "1"}, "overlap": "queue", "sandbox": "ex", "job": "jobs/b.toml"})
        );
        // The schedule may already be `all`: the server judges --misfire-max alone.
        assert_eq!(edit(&["--misfire-max", "5"]).unwrap(), json!({"misfire_max": 5}));
        assert_eq!(edit(&["--clear-params"]).unwrap(), json!({"params": {}}));
        assert!(edit(&[]).unwrap_err().contains("nothing to change"));
        assert!(parse(&["schedule", "edit", "n", "--clear-params", "-p", "a=1"]).is_err());
    }

    #[test]
    fn schedule_subcommands_parse() {
        assert!(matches!(parse(&["schedule", "ls"]), Ok(Cmd::Schedule(ScheduleCmd::List))));
        assert!(matches!(parse(&["schedule", "rm", "x"]), Ok(Cmd::Schedule(ScheduleCmd::Delete(_)))));
        assert!(matches!(parse(&["schedule", "disable", "x"]), Ok(Cmd::Schedule(ScheduleCmd::Disable(_)))));
        match parse(&["schedule", "firings", "x", "--limit", "5"]) {
            Ok(Cmd::Schedule(ScheduleCmd::Firings { reference, limit })) => {
                assert_eq!((reference.as_str(), limit), ("x", Some(5)));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["schedule", "firings", "x", "--limit", "0"]).is_err());
    }

    #[test]
    fn preview_takes_a_schedule_or_a_cron_expression() {
        let preview = |args: &[&str]| {
            parse_with(&["schedule", "preview"], args).map(|cmd| match cmd {
                Cmd::Schedule(ScheduleCmd::Preview(a)) => a,
                other => panic!("{other:?}"),
            })
        };
        let a = preview(&["nightly", "--count", "3"]).unwrap();
        assert_eq!((a.reference.as_deref(), a.cron, a.count), (Some("nightly"), None, Some(3)));
        let a = preview(&["--cron", "0 2 * * *", "--tz", "Europe/Berlin"]).unwrap();
        assert_eq!((a.cron.as_deref(), a.timezone.as_deref()), (Some("0 2 * * *"), Some("Europe/Berlin")));
        assert!(preview(&[]).is_err(), "neither a schedule nor --cron");
        assert!(preview(&["nightly", "--cron", "@daily"]).is_err(), "both");
        assert!(preview(&["nightly", "--tz", "UTC"]).is_err(), "--tz is for --cron");
        assert!(preview(&["--cron", "@daily", "--count", "1001"]).is_err());
    }

    #[test]
    fn listener_on_job_builds_the_body() {
        let a = listener_create(&[
            "--on-job",
            "ex/jobs/load.toml",
            "--states",
            "succeeded,failed",
            "-p",
            "up={event.execution}",
        ])
        .unwrap();
        assert_eq!(
            wire(&listener_body(&a).unwrap()),
            json!({
                "name": "l", "kind": "job", "sandbox": "ex", "job": "jobs/a.toml",
                "params": {"up": "{event.execution}"},
                "on_job": {"sandbox": "ex", "job": "jobs/load.toml", "states": ["succeeded", "failed"]},
            })
        );
        let a = listener_create(&["--on-job", "ex/jobs/load.toml", "--disabled"]).unwrap();
        assert_eq!(
            wire(&listener_body(&a).unwrap()),
            json!({
                "name": "l", "kind": "job", "sandbox": "ex", "job": "jobs/a.toml", "enabled": false,
                "on_job": {"sandbox": "ex", "job": "jobs/load.toml"},
            })
        );
        let a = listener_create(&["--on-job", "ex/b.toml", "--states", "final,failed"]).unwrap();
        assert!(listener_body(&a).unwrap_err().contains("final"));
        assert!(listener_create(&["--on-job", "ex/b.toml", "--states", "done"]).is_err());
    }

    #[test]
    fn listener_on_file_builds_the_body() {
        let a =
            listener_create(&["--on-file", "data:in/*.csv", "--events", "appeared,changed", "--settle", "5s"]).unwrap();
        assert_eq!(
            wire(&listener_body(&a).unwrap())["on_file"],
            json!({"sandbox": "data", "pattern": "in/*.csv", "events": ["appeared", "changed"], "settle": "5s"})
        );
        let a = listener_create(&["--on-file", "data:x:y"]).unwrap();
        assert_eq!(wire(&listener_body(&a).unwrap())["on_file"], json!({"sandbox": "data", "pattern": "x:y"}));
        let a = listener_create(&["--on-file", "data:x", "--events", "node_died"]).unwrap();
        assert!(listener_body(&a).unwrap_err().contains("node_died"));
        for bad in ["data", ":x", "data:"] {
            assert!(listener_create(&["--on-file", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn listener_webhook_and_cluster_build_the_body() {
        let a = listener_create(&["--webhook"]).unwrap();
        assert_eq!(
            wire(&listener_body(&a).unwrap()),
            json!({"name": "l", "kind": "webhook", "sandbox": "ex", "job": "jobs/a.toml"})
        );
        let a = listener_create(&["--webhook", "--secret", "0123456789abcdef"]).unwrap();
        assert_eq!(wire(&listener_body(&a).unwrap())["secret"], "0123456789abcdef");
        let a = listener_create(&["--webhook", "--secret", "short"]).unwrap();
        assert!(listener_body(&a).unwrap_err().contains("16"));
        let a = listener_create(&["--on-cluster"]).unwrap();
        assert_eq!(
            wire(&listener_body(&a).unwrap()),
            json!({
                "name": "l", "kind": "cluster", "sandbox": "ex", "job": "jobs/a.toml",
                "on_cluster": {"events": ["node_died", "node_joined"]},
            })
        );
        let a = listener_create(&["--on-cluster", "--events", "node_left"]).unwrap();
        assert_eq!(wire(&listener_body(&a).unwrap())["on_cluster"], json!({"events": ["node_left"]}));
        let a = listener_create(&["--on-cluster", "--events", "node_died"]).unwrap();
        assert_eq!(wire(&listener_body(&a).unwrap())["on_cluster"], json!({"events": ["node_died"]}));
        let a = listener_create(&["--on-cluster", "--events", "appeared"]).unwrap();
        assert!(listener_body(&a).unwrap_err().contains("--on-cluster"));
    }

    #[test]
    fn listener_takes_exactly_one_trigger_and_its_own_options() {
        for (args, why) in [
            (&[][..], "no trigger"),
            (&["--webhook", "--on-cluster"][..], "two triggers"),
            (&["--on-job", "ex/b.toml", "--webhook"][..], "two triggers"),
            (&["--on-job", "ex/b.toml", "--on-file", "d:x"][..], "two triggers"),
            (&["--webhook", "--states", "failed"][..], "--states is for --on-job"),
            (&["--on-file", "d:x", "--states", "failed"][..], "--states is for --on-job"),
            (&["--on-job", "ex/b.toml", "--events", "appeared"][..], "--events is not for --on-job"),
            (&["--webhook", "--events", "appeared"][..], "--events is not for --webhook"),
            (&["--on-cluster", "--settle", "1s"][..], "--settle is for --on-file"),
            (&["--on-cluster", "--secret", "0123456789abcdef"][..], "--secret is for --webhook"),
            (&["--on-file", "d:x", "--secret", "0123456789abcdef"][..], "--secret is for --webhook"),
        ] {
            assert!(listener_create(args).is_err(), "{why}: {args:?}");
        }
    }

    #[test]
    fn listener_edit_sends_only_what_changes() {
        let edit = |args: &[&str]| match parse_with(&["listener", "edit", "l"], args) {
            Ok(Cmd::Listener(ListenerCmd::Edit(a))) => listener_patch(&a).map(|p| wire(&p)),
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(
            edit(&["--job", "ex/jobs/b.toml", "-p", "a=1"]).unwrap(),
            json!({"sandbox": "ex", "job": "jobs/b.toml", "params": {"a": "1"}})
        );
        assert_eq!(edit(&["--secret", "0123456789abcdef"]).unwrap(), json!({"secret": "0123456789abcdef"}));
        assert!(edit(&["--secret", "short"]).is_err());
        assert!(edit(&[]).unwrap_err().contains("nothing to change"));
        assert!(matches!(parse(&["listener", "events", "l"]), Ok(Cmd::Listener(ListenerCmd::Events { .. }))));
    }

    #[tokio::test]
    async fn hook_payloads_are_checked_and_sent_as_given() {
        let hook = |args: &[&str]| match parse_with(&["hook", "orders", "--secret", "s"], args) {
            Ok(Cmd::Hook(a)) => a,
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(hook_payload(&hook(&[])).await.unwrap(), b"{}");
        assert_eq!(hook_payload(&hook(&["--data", r#"{ "a" : 1 }"#])).await.unwrap(), br#"{ "a" : 1 }"#);
        assert!(matches!(hook_payload(&hook(&["--data", "{nope"])).await, Err(Ok(m)) if m.contains("--data")));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, b"[1, 2]\n").unwrap();
        let a = hook(&["--data-file", file.to_str().unwrap(), "--delivery", "d-7"]);
        assert_eq!(a.delivery.as_deref(), Some("d-7"));
        assert_eq!(hook_payload(&a).await.unwrap(), b"[1, 2]\n");
        let missing = dir.path().join("missing.json");
        assert!(matches!(hook_payload(&hook(&["--data-file", missing.to_str().unwrap()])).await, Err(Err(_))));
        assert!(parse(&["hook", "orders", "--secret", "s", "--data", "{}", "--data-file", "x"]).is_err());
        // The delivery id is one line of "<t>\n<hook>\n<delivery>\n<body>": no control
        // character, and no space at the ends (HTTP would drop it); a `.` is fine.
        for bad in ["", "a\nb", "a\tb", " a", "a ", "\u{e9}t\u{e9}"] {
            assert!(parse(&["hook", "orders", "--secret", "s", "--delivery", bad]).is_err(), "{bad:?}");
        }
        let a = hook(&["--delivery", "12.5 x"]);
        assert_eq!(a.delivery.as_deref(), Some("12.5 x"));
    }

    /// A listener as a server sends it; `on` names its trigger object (or none).
    fn listener(kind: &str, on: Option<(&str, Value)>) -> Listener {
        let mut l = json!({
            "id": "l1", "name": "x", "kind": kind, "sandbox": "ex", "job": "jobs/a.toml", "params": {},
            "enabled": true, "created_at": "2026-12-01T10:00:00.000Z", "updated_at": "2026-12-01T10:00:00.000Z",
        });
        if let Some((key, value)) = on {
            l[key] = value;
        }
        serde_json::from_value(l).unwrap()
    }

    fn schedule(next_fire_time: Option<&str>, enabled: bool) -> Schedule {
        serde_json::from_value(json!({
            "id": "s1", "name": "n", "sandbox": "ex", "job": "jobs/a.toml", "params": {}, "cron": "0 2 * * *",
            "timezone": "UTC", "enabled": enabled, "misfire": "once", "misfire_max": null,
            "misfire_threshold_ms": 60000, "overlap": "allow", "last_fire_time": null,
            "next_fire_time": next_fire_time, "last_execution": null,
            "created_at": "2026-12-01T10:00:00.000Z", "updated_at": "2026-12-01T10:00:00.000Z",
        }))
        .unwrap()
    }

    fn hook_answer(execution: Option<Value>, event_execution: Option<&str>) -> HookAnswer {
        let event = json!({
            "listener": "l1", "key": "delivery:d", "at": "2026-12-01T10:00:00.000Z", "node": "n1",
            "outcome": "started", "reason": null, "execution": event_execution, "payload": {},
        });
        let mut answer = json!({ "event": event });
        if let Some(e) = execution {
            answer["execution"] = e;
        }
        serde_json::from_value(answer).unwrap()
    }

    #[test]
    fn answers_are_summarised() {
        let on = json!({"sandbox": "ex", "job": "jobs/load.toml", "states": ["succeeded", "failed"]});
        assert_eq!(trigger_text(&listener("job", Some(("on_job", on)))), "ex/jobs/load.toml succeeded,failed");
        let on = json!({"sandbox": "d", "pattern": "in/*.csv", "events": ["appeared"], "settle_ms": 1000});
        assert_eq!(trigger_text(&listener("file", Some(("on_file", on)))), "d:in/*.csv appeared");
        let hook = listener("webhook", Some(("hook_url", json!("/api/v1/hooks/orders"))));
        assert_eq!(trigger_text(&hook), "/api/v1/hooks/orders");
        assert_eq!(trigger_text(&listener("cluster", None)), "node_died,node_joined");
        let cluster = listener("cluster", Some(("on_cluster", json!({"events": ["node_died"]}))));
        let shown = cluster.fields();
        let keys: Vec<&str> = shown.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "id",
                "name",
                "kind",
                "enabled",
                "trigger",
                "sandbox",
                "job",
                "params",
                "owner",
                "created_at",
                "updated_at"
            ]
        );
        assert!(shown.contains(&("trigger", "node_died".into())) && shown.contains(&("kind", "cluster".into())));
        let shown = hook.fields();
        assert!(shown.contains(&("hook_url", "/api/v1/hooks/orders".into())), "{shown:?}");

        let execution = crate::client_cmds::tests::execution();
        let execution = serde_json::to_value(execution).unwrap();
        assert_eq!(started_execution(&hook_answer(Some(execution), None)).as_deref(), Some("e1"));
        assert_eq!(started_execution(&hook_answer(None, Some("e2"))).as_deref(), Some("e2"));
        assert_eq!(started_execution(&hook_answer(Some(Value::Null), None)), None);

        assert_eq!(next_fire(&schedule(Some("2026-01-01T02:00:00.000Z"), true)), "next fire 2026-01-01T02:00:00Z");
        assert_eq!(next_fire(&schedule(None, false)), "disabled, so it will not fire");
        let row = schedule(None, false).cells();
        assert_eq!(row, ["n", "no", "0 2 * * *", "UTC", "ex/jobs/a.toml", "-", "-"]);
    }
}
