//! The client commands of `shoal` (run, ps, logs, cancel, show, nodes, sandbox, and in
//! `client_sched` schedule, listener, hook): each one calls the HTTP API through
//! `shoal_client`, failing over between the `--server`s given.
//!
//! Output (see `output`): human tables and lines on stdout by default, the API's JSON (pretty)
//! with `--json`; progress notes and errors on stderr, so stdout stays usable in scripts
//! (`id=$(shoal run examples/jobs/hello.toml)`), with a spinner or bar there too while
//! `--wait` waits or a file moves, when stderr is a terminal.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success (with `--wait`/`--follow`: the execution succeeded) |
//! | 1 | the execution did not succeed (`failed`, `timed_out`, `cancelled`; with `--wait`/`--follow`), the server refused the request (a 4xx answer, such as an unknown sandbox, a missing parameter or cancelling a finished execution), a `hook` started no job (the listener skipped the event), or a local problem (a file that cannot be read or written) |
//! | 2 | usage error: bad arguments or options, or an invalid `--server` URL |
//! | 3 | no server could be reached, or a server error (a 5xx answer) |
//!
//! Errors are printed to stderr as `error: <message> (<code>)` with the API's message and
//! stable code, e.g. ``error: missing required parameter `day`; pass it as `-p day=VALUE` or
//! in `params` (missing_parameter)``; an invalid job file adds a `  --> FILE:LINE:COLUMN` line.

use crate::client_sched::{self, HookArgs, ListenerCmd, ScheduleCmd};
use crate::output::{
    clip, emit, fmt_ms, key_values, name, one_line, or_dash, pairs, print_json, progress_shown, rows_table, short_time,
    spinner, transfer, words, Row,
};
use futures::StreamExt;
use indicatif::ProgressBar;
use shoal_client::{ByteStream, Client, Error, ExecutionFilter, NodeAction};
use shoal_wire::{
    CreateSandboxRequest, ErrorCode, Execution, ExecutionState, FileEntry, FileKind, JobEntry, JobErrorDetails,
    LogStream, Node, Replica, Sandbox, SubmitRequest,
};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

pub(crate) const EXIT_OK: i32 = 0;
/// The execution did not succeed, the server refused the request, or a local problem.
pub(crate) const EXIT_FAILED: i32 = 1;
pub(crate) const EXIT_USAGE: i32 = 2;
/// No server reachable, or a server error.
const EXIT_UNAVAILABLE: i32 = 3;

/// How often `--wait` asks for the execution's state.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// How long `--wait` keeps trying while no server answers (a fail-over, a rolling restart)
/// before it gives up; the execution itself has no deadline.
const WAIT_OUTAGE: Duration = Duration::from_secs(60);

/// The options every client command takes. Its `Debug` shows no token.
#[derive(clap::Args, Clone)]
pub struct GlobalOpts {
    /// Server URL; repeat for fail-over (env SHOAL_SERVER, comma-separated)
    #[arg(
        long = "server",
        global = true,
        env = "SHOAL_SERVER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7700"
    )]
    pub servers: Vec<String>,
    /// API token (env SHOAL_TOKEN); else the file --token-file names, else .shoal/admin.token here
    #[arg(long, global = true, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API token (env SHOAL_TOKEN_FILE)
    #[arg(long, global = true, env = "SHOAL_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificates that https servers are verified against, instead of the system's roots
    #[arg(long = "ca-file", global = true, env = "SHOAL_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to keep trying a request that is safe to repeat while no server can serve it
    /// (a store failover: 503 store_unavailable everywhere), e.g. 2m; 0s: try each server once
    #[arg(long, global = true, env = "SHOAL_PATIENCE", default_value = "60s", value_parser = parse_patience)]
    pub patience: std::time::Duration,
}

fn parse_patience(text: &str) -> Result<std::time::Duration, String> {
    let d = shoal_core::duration::parse(text)?;
    if d > std::time::Duration::from_secs(3600) {
        return Err("at most 1h".into());
    }
    Ok(d)
}

impl std::fmt::Debug for GlobalOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalOpts")
            .field("servers", &self.servers)
            .field("token", &self.token.as_ref().map(|_| "(given)"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("json", &self.json)
            .field("patience", &self.patience)
            .finish()
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Start an execution of a sandbox's job file, or of an inline command
    Run(RunArgs),
    /// List executions, newest first
    Ps(PsArgs),
    /// Print an execution's output (stdout and stderr as they were written)
    Logs(LogsArgs),
    /// Cancel an execution (a running one is stopped, with its child processes)
    Cancel(IdArgs),
    /// Show one execution
    Show(IdArgs),
    /// List the cluster's nodes
    Nodes,
    /// Drain a node: it takes no new work, lets running attempts finish (handing them back
    /// after cluster.drain_deadline) and reports not ready, so it can be stopped
    Drain(NodeArgs),
    /// Suspend a node: it takes no new work until resumed, but keeps serving requests
    Suspend(NodeArgs),
    /// Resume a drained or suspended node
    Resume(NodeArgs),
    /// Manage sandboxes and their files
    #[command(subcommand)]
    Sandbox(SandboxCmd),
    /// Manage schedules: jobs started at the times a cron expression names
    // Boxed, as is `Listener`: their creation options would make every command this large.
    #[command(subcommand)]
    Schedule(Box<ScheduleCmd>),
    /// Manage listeners: jobs started by events (a job finishing, a file appearing, a
    /// webhook, a node joining or dying)
    #[command(subcommand)]
    Listener(Box<ListenerCmd>),
    /// Deliver a signed webhook to a webhook listener, as an outside service would, and print
    /// the id of the execution it started
    Hook(HookArgs),
    /// Make, list and revoke API tokens (admin)
    #[command(subcommand)]
    Token(crate::client_tokens::TokenCmd),
    /// Make, list and delete users, the people who log in with a password (admin)
    #[command(subcommand)]
    User(crate::client_users::UserCmd),
    /// Set, list and remove job secrets (`{secret.NAME}` in a job file's env); values from
    /// standard input, never shown
    #[command(subcommand)]
    Secret(crate::client_secrets::SecretCmd),
    /// Show the audit trail, newest first: every change made through the API and every login,
    /// with who, through which node, on what and how it ended (admin)
    Audit(crate::client_audit::AuditArgs),
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The node's id (see `shoal nodes`); any server forwards the request to it
    pub node: String,
}

// The command-only options conflict with the target rather than `requires = "command"`:
// clap counts a flag's default `false` as present for `requires`. Exactly one of the target
// and --command is given, so "no target" means "--command".
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The sandbox, a slash, and the job file's path in it, e.g. examples/jobs/hello.toml
    #[arg(
        value_name = "SANDBOX/JOB",
        value_parser = parse_target,
        required_unless_present = "command",
        conflicts_with = "command"
    )]
    pub target: Option<(String, String)>,
    /// A job parameter; repeat for several
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value, conflicts_with = "command")]
    pub params: Vec<(String, String)>,
    /// Wait until the execution has finished; exit 0 only if it succeeded
    #[arg(long)]
    pub wait: bool,
    /// Print the execution's output while it runs, then wait as --wait does
    #[arg(long)]
    pub follow: bool,
    /// Priority (higher runs first); overrides the job file's
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Run the program given after `--` instead of a job file
    #[arg(long, requires = "argv")]
    pub command: bool,
    /// Sandbox the command runs in (its working directory); default: the node's scratch folder
    #[arg(long, conflicts_with = "target")]
    pub sandbox: Option<String>,
    /// Stop the command after this long, e.g. 30s or 10m
    #[arg(long, conflicts_with = "target")]
    pub timeout: Option<String>,
    /// Run the command again this many times if it fails
    #[arg(long, conflicts_with = "target")]
    pub retries: Option<u32>,
    /// An environment variable for the command; repeat for several
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value, conflicts_with = "target")]
    pub env: Vec<(String, String)>,
    /// The program and its arguments (after `--`, with --command)
    #[arg(last = true, value_name = "PROGRAM", conflicts_with = "target")]
    pub argv: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Only executions in this state (queued, running, succeeded, failed, cancelled, timed_out)
    #[arg(long, value_parser = parse_state)]
    pub state: Option<ExecutionState>,
    /// Only executions of this sandbox
    #[arg(long)]
    pub sandbox: Option<String>,
    /// Only executions of this job file (its path in the sandbox)
    #[arg(long)]
    pub job: Option<String>,
    /// Only executions that ran on this node
    #[arg(long)]
    pub node: Option<String>,
    /// How many executions to list (per page with --all); the server's default is 50
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// List every matching execution, page after page
    #[arg(long)]
    pub all: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The execution's id
    pub id: String,
    /// Keep printing output until the execution has finished
    #[arg(short, long)]
    pub follow: bool,
    /// Only one of the streams
    #[arg(long, value_parser = ["stdout", "stderr"])]
    pub stream: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct IdArgs {
    /// The execution's id
    pub id: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum SandboxCmd {
    /// Register a sandbox: a folder that holds job files (under jobs/) and their data
    Create {
        /// The sandbox's name
        name: String,
        /// The folder, on the node(s) that hold it; a relative path is taken from the current folder
        #[arg(long)]
        root: PathBuf,
        /// shared: the same folder on every node; local: on one node only
        #[arg(long, default_value = "shared", value_parser = ["shared", "local"])]
        kind: String,
        /// The node holding a local sandbox (default: the node that answers)
        #[arg(long)]
        node: Option<String>,
    },
    /// List sandboxes
    Ls,
    /// Show one sandbox
    Show {
        /// The sandbox's name
        name: String,
    },
    /// Unregister a sandbox (its files are left alone)
    Rm {
        /// The sandbox's name
        name: String,
    },
    /// List a sandbox's job files and whether each is valid
    Jobs {
        /// The sandbox's name
        name: String,
    },
    /// List a folder of a sandbox
    Files {
        /// The sandbox's name
        name: String,
        /// The folder's path in the sandbox (default: its root)
        path: Option<String>,
    },
    /// Upload a file into a sandbox
    Put {
        /// The sandbox's name
        name: String,
        /// The local file to upload
        local: PathBuf,
        /// Its path in the sandbox (default: the local file's name; ending in / means into that folder)
        remote: Option<String>,
    },
    /// Download a file from a sandbox (to stdout unless -o is given)
    Get {
        /// The sandbox's name
        name: String,
        /// The file's path in the sandbox
        remote: String,
        /// Where to write it (a file, or a folder to write into; - for stdout)
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Delete a file, or an empty folder, from a sandbox
    RmFile {
        /// The sandbox's name
        name: String,
        /// The path in the sandbox
        path: String,
    },
}

/// Runs one client command and answers the process exit code.
pub async fn run(cmd: ClientCommand, opts: &GlobalOpts) -> i32 {
    let ca = match &opts.ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                eprintln!("error: cannot read the CA file {} (--ca-file, SHOAL_CA_FILE): {e}", path.display());
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    let client = match Client::with_ca(opts.servers.clone(), ca.as_deref()) {
        Ok(c) => c.with_patience(opts.patience),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let client = match crate::client_tokens::authenticated(client, opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let carried = crate::positions::positions_dir(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
        .map(|dir| crate::positions::Carried::load(&client, dir));
    let json = opts.json;
    let result = match cmd {
        ClientCommand::Run(args) => cmd_run(&client, args, json).await,
        ClientCommand::Ps(args) => cmd_ps(&client, args, json).await,
        ClientCommand::Logs(args) => cmd_logs(&client, args).await,
        ClientCommand::Cancel(args) => cmd_cancel(&client, &args.id, json).await,
        ClientCommand::Show(args) => cmd_show(&client, &args.id, json).await,
        ClientCommand::Nodes => cmd_nodes(&client, json).await,
        ClientCommand::Drain(a) => cmd_node_action(&client, &a.node, NodeAction::Drain, json).await,
        ClientCommand::Suspend(a) => cmd_node_action(&client, &a.node, NodeAction::Suspend, json).await,
        ClientCommand::Resume(a) => cmd_node_action(&client, &a.node, NodeAction::Resume, json).await,
        ClientCommand::Sandbox(cmd) => cmd_sandbox(&client, cmd, json).await,
        ClientCommand::Schedule(cmd) => client_sched::cmd_schedule(&client, *cmd, json).await,
        ClientCommand::Listener(cmd) => client_sched::cmd_listener(&client, *cmd, json).await,
        ClientCommand::Hook(args) => client_sched::cmd_hook(&client, args, json).await,
        ClientCommand::Token(cmd) => crate::client_tokens::cmd_token(&client, cmd, json).await,
        ClientCommand::User(cmd) => crate::client_users::cmd_user(&client, cmd, json).await,
        ClientCommand::Secret(cmd) => crate::client_secrets::cmd_secret(&client, cmd, json).await,
        ClientCommand::Audit(args) => crate::client_audit::cmd_audit(&client, args, json).await,
    };
    // Failed commands too: a `run --wait` whose job failed has still submitted it.
    if let Some(carried) = carried {
        carried.save(&client);
    }
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

pub type CmdResult = Result<i32, Error>;

/// Prints an error and answers its exit code.
fn report(e: &Error) -> i32 {
    match e {
        Error::Api { status, code, raw_code, message, details } => {
            eprintln!("error: {message} ({raw_code})");
            if *code == Some(ErrorCode::InvalidJob) {
                let at = details.clone().and_then(|d| serde_json::from_value::<JobErrorDetails>(d).ok());
                if let Some(at) = at {
                    eprintln!("  --> {}:{}:{}", at.file, at.line, at.column);
                }
            }
            if *status >= 500 {
                EXIT_UNAVAILABLE
            } else {
                EXIT_FAILED
            }
        }
        Error::Unreachable { .. } => {
            eprintln!("error: {e}");
            EXIT_UNAVAILABLE
        }
        Error::Other(message) => {
            eprintln!("error: {message}");
            EXIT_FAILED
        }
    }
}

// ---- run, ps, logs, cancel, show ----

async fn cmd_run(client: &Client, args: RunArgs, json: bool) -> CmdResult {
    let mut request = SubmitRequest { priority: args.priority, ..SubmitRequest::default() };
    let label = if args.command {
        // clap already requires the program with --command; this guards the invariant.
        if args.argv.is_empty() {
            eprintln!("error: --command needs the program after `--`, e.g. `shoal run --command -- echo hi`");
            return Ok(EXIT_USAGE);
        }
        request.command = Some(args.argv.clone());
        request.sandbox = args.sandbox.clone();
        request.timeout = args.timeout.clone();
        request.retries = args.retries;
        request.env = args.env.iter().cloned().collect();
        args.argv.join(" ")
    } else {
        let Some((sandbox, job)) = &args.target else {
            eprintln!("error: give the job to run as SANDBOX/JOB, or --command -- PROGRAM ARGS...");
            return Ok(EXIT_USAGE);
        };
        request.sandbox = Some(sandbox.clone());
        request.job = Some(job.clone());
        request.params = args.params.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        format!("{sandbox}/{job}")
    };
    let (execution, _replayed) = client.submit(&request).await?;
    let id = execution.id.clone();
    if !(args.wait || args.follow) {
        if json {
            print_json(&execution);
        } else {
            emit(&format!("{id}\n"));
            eprintln!("{}: {label}", execution.state);
        }
        return Ok(EXIT_OK);
    }
    if args.follow {
        // stdout carries the job's output, so the id goes to stderr.
        eprintln!("{id} {}: {label}", execution.state);
        follow_logs(client, &id).await;
    } else if !json {
        emit(&format!("{id}\n"));
    }
    let finished = wait_final(client, &execution, progress_shown(json)).await?;
    if json {
        print_json(&finished);
    }
    eprintln!("{}", final_line(&finished));
    Ok(if finished.state == ExecutionState::Succeeded { EXIT_OK } else { EXIT_FAILED })
}

/// Copies an execution's output to stdout until it has finished. A broken log stream is not
/// the execution failing: it is reported, and the caller goes on to wait for the state.
async fn follow_logs(client: &Client, id: &str) {
    let result = match client.logs(id, true, None).await {
        Ok(stream) => copy_to_stdout(stream, &ProgressBar::hidden()).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("warning: the output could not be followed to the end: {e}; waiting for the execution to finish");
    }
}

/// Polls the execution until it is in a final state, with a spinner saying where it is when
/// `shown`.
async fn wait_final(client: &Client, execution: &Execution, shown: bool) -> Result<Execution, Error> {
    let id = &execution.id;
    let progress = spinner(shown, waiting_line(execution));
    let mut failing_since: Option<Instant> = None;
    let result = loop {
        match client.execution(id).await {
            Ok(e) => {
                if e.state.is_final() {
                    break Ok(e);
                }
                progress.set_message(waiting_line(&e));
                failing_since = None;
            }
            Err(e @ Error::Api { status, .. }) if status < 500 => break Err(e),
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= WAIT_OUTAGE {
                    break Err(e);
                }
                progress.set_message(format!("{id}: no server answers, trying again ({e})"));
            }
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    progress.finish_and_clear();
    result
}

/// What `--wait` shows while it waits: `0190... running on n2 (attempt 1)`.
fn waiting_line(e: &Execution) -> String {
    match &e.node {
        Some(node) if e.state == ExecutionState::Running => {
            format!("{} running on {node} (attempt {})", e.id, e.attempt)
        }
        _ => format!("{} {}: {}", e.id, e.state, e.message),
    }
}

/// `ID STATE: MESSAGE`, e.g. `0190... failed: exit code 3`.
fn final_line(execution: &Execution) -> String {
    let mut line = format!("{} {}", execution.id, execution.state);
    let why = if execution.message.is_empty() { name(&execution.reason) } else { execution.message.clone() };
    if !why.is_empty() {
        line.push_str(": ");
        line.push_str(&why);
    }
    line
}

impl Row for Execution {
    const HEADERS: &'static [&'static str] = &["ID", "STATE", "JOB", "NODE", "ATTEMPT", "CREATED", "REASON"];

    fn cells(&self) -> Vec<String> {
        let job = match &self.job {
            Some(job) => format!("{}/{job}", or_dash(self.sandbox.as_deref())),
            None => self.command.as_deref().map_or_else(|| "-".into(), words),
        };
        let reason = name(&self.reason);
        let reason = if self.message.is_empty() { reason } else { format!("{reason}: {}", self.message) };
        vec![
            self.id.clone(),
            self.state.to_string(),
            clip(&job, 40),
            or_dash(self.node.as_deref()),
            self.attempt.to_string(),
            short_time(Some(&self.created_at)),
            clip(&reason, 50),
        ]
    }
}

async fn cmd_ps(client: &Client, args: PsArgs, json: bool) -> CmdResult {
    let mut filter = ExecutionFilter {
        state: args.state,
        sandbox: args.sandbox,
        job: args.job,
        node: args.node,
        limit: args.limit,
        cursor: None,
    };
    let mut list = client.executions(&filter).await?;
    while let (Some(cursor), true) = (list.next_cursor.take(), args.all) {
        filter.cursor = Some(cursor);
        let page = client.executions(&filter).await?;
        list.executions.extend(page.executions);
        list.next_cursor = page.next_cursor;
    }
    if json {
        print_json(&list);
        return Ok(EXIT_OK);
    }
    emit(&rows_table(&list.executions));
    if list.next_cursor.is_some() {
        eprintln!("(more executions match: add --all to list them all)");
    }
    Ok(EXIT_OK)
}

async fn cmd_logs(client: &Client, args: LogsArgs) -> CmdResult {
    let stream = match args.stream.as_deref() {
        Some("stdout") => Some(LogStream::Stdout),
        Some("stderr") => Some(LogStream::Stderr),
        _ => None,
    };
    let stream = client.logs(&args.id, args.follow, stream).await?;
    copy_to_stdout(stream, &ProgressBar::hidden()).await?;
    Ok(EXIT_OK)
}

async fn cmd_cancel(client: &Client, id: &str, json: bool) -> CmdResult {
    let execution = client.cancel(id).await?;
    if json {
        print_json(&execution);
    } else if execution.state.is_final() {
        emit(&format!("{} {}\n", execution.id, execution.state));
    } else {
        emit(&format!(
            "{} {}: cancel requested; node {} is stopping it\n",
            execution.id,
            execution.state,
            or_dash(execution.node.as_deref())
        ));
    }
    Ok(EXIT_OK)
}

/// An execution as `key: value` lines, every field of the wire type.
fn execution_fields(e: &Execution) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", e.id.clone()),
        ("state", e.state.to_string()),
        ("reason", name(&e.reason)),
        ("message", e.message.clone()),
        ("exit_code", or_dash(e.exit_code)),
        ("signal", or_dash(e.signal)),
        ("sandbox", or_dash(e.sandbox.as_deref())),
        ("job", or_dash(e.job.as_deref())),
        ("kind", name(&e.kind)),
        ("command", e.command.as_deref().map_or_else(|| "-".into(), words)),
        ("params", pairs(&e.params)),
        ("node", or_dash(e.node.as_deref())),
        ("attempt", e.attempt.to_string()),
        ("priority", e.priority.to_string()),
        ("timeout_ms", or_dash(e.timeout_ms)),
        ("retries", e.retries.to_string()),
        ("trigger", e.trigger.as_str().to_owned()),
        ("trigger_ref", or_dash(e.trigger_ref.as_deref())),
        ("principal", or_dash(e.principal.as_deref())),
        ("cancel_requested_by", or_dash(e.cancel_requested_by.as_deref())),
        ("created_at", e.created_at.clone()),
        ("started_at", or_dash(e.started_at.as_deref())),
        ("finished_at", or_dash(e.finished_at.as_deref())),
        ("updated_at", e.updated_at.clone()),
        ("parent", or_dash(e.parent.as_deref())),
        ("partition", or_dash(e.partition.as_deref())),
    ];
    if let Some(attempts) = &e.attempts {
        let shown: Vec<String> = attempts
            .iter()
            .map(|a| {
                let outcome = a.outcome.as_deref().unwrap_or("running");
                format!("#{} ({}) on {}: {outcome}", a.attempt, name(&a.cause), a.node)
            })
            .collect();
        fields.push(("attempts", if shown.is_empty() { "-".into() } else { shown.join(", ") }));
    }
    if let Some(children) = &e.children {
        let shown: Vec<String> =
            children.iter().map(|c| format!("{} {} {}", or_dash(c.partition.as_deref()), c.id, c.state)).collect();
        fields.push(("children", if shown.is_empty() { "-".into() } else { shown.join(", ") }));
    }
    fields
}

async fn cmd_show(client: &Client, id: &str, json: bool) -> CmdResult {
    let execution = client.execution(id).await?;
    if json {
        print_json(&execution);
    } else {
        emit(&key_values(&execution_fields(&execution)));
    }
    Ok(EXIT_OK)
}

impl Row for Node {
    const HEADERS: &'static [&'static str] =
        &["ID", "STATE", "GOSSIP", "STORE", "URL", "RUNNING/SLOTS", "CPU", "MEM", "LEASE AGE", "LEASE", "VERSION"];

    fn cells(&self) -> Vec<String> {
        let ms = self.lease_expires_in_ms;
        let lease = if ms > 0 { format!("in {}", fmt_ms(ms)) } else { format!("expired {} ago", fmt_ms(-ms)) };
        vec![
            self.id.clone(),
            self.state.to_string(),
            name(&self.gossip),
            name(&self.store),
            self.url.clone(),
            format!("{}/{}", self.running, self.slots),
            format!("{:.0}%", self.load.cpu_percent),
            format!("{:.0}%", self.load.memory_percent),
            fmt_ms(self.lease_age_ms),
            lease,
            self.version.clone(),
        ]
    }
}

impl Row for Replica {
    const HEADERS: &'static [&'static str] = &["REPLICA", "STATE", "LAG", "LAG BYTES", "READS", "ERROR"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.address.clone(),
            self.state.to_string(),
            self.lag_ms.map_or("-".into(), |ms| fmt_ms(ms as i64)),
            self.lag_bytes.map_or("-".into(), |b| b.to_string()),
            self.reads.to_string(),
            self.error.as_deref().map_or("-".into(), |e| clip(e, 60)),
        ]
    }
}

async fn cmd_nodes(client: &Client, json: bool) -> CmdResult {
    let list = client.nodes().await?;
    if json {
        print_json(&list);
        return Ok(EXIT_OK);
    }
    let mut out = rows_table(&list.nodes);
    // The read replicas as the node that answered sees them.
    if let Some(me) = list.nodes.iter().find(|n| n.is_self == Some(true)) {
        if let Some(replicas) = me.replicas.as_deref().filter(|r| !r.is_empty()) {
            out.push_str(&format!("\nread replicas, as {} sees them:\n", me.id));
            out.push_str(&rows_table(replicas));
        }
    }
    emit(&out);
    Ok(EXIT_OK)
}

async fn cmd_node_action(client: &Client, id: &str, action: NodeAction, json: bool) -> CmdResult {
    let node = client.node_action(id, action).await?;
    if json {
        print_json(&node);
        return Ok(EXIT_OK);
    }
    let mut out = format!("node {id}: {} (was {})\n", node.state, or_dash(node.previous_state));
    if let Some(why) = &node.not_accepting_because {
        out.push_str(&format!("not taking new work: {why}\n"));
    }
    emit(&out);
    Ok(EXIT_OK)
}

// ---- sandboxes ----

impl Row for Sandbox {
    const HEADERS: &'static [&'static str] = &["NAME", "KIND", "NODE", "CREATED", "ROOT"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            name(&self.kind),
            or_dash(self.node.as_deref()),
            short_time(Some(&self.created_at)),
            self.root.clone(),
        ]
    }
}

fn sandbox_fields(s: &Sandbox) -> Vec<(&'static str, String)> {
    let parts: Vec<String> = s.partitions.iter().map(|p| format!("{}={}:{}", p.name, p.node, p.root)).collect();
    vec![
        ("name", s.name.clone()),
        ("kind", name(&s.kind)),
        ("root", s.root.clone()),
        ("node", or_dash(s.node.as_deref())),
        ("created_at", s.created_at.clone()),
        ("partitions", words(&parts)),
    ]
}

impl Row for JobEntry {
    const HEADERS: &'static [&'static str] = &["PATH", "VALID", "DESCRIPTION"];

    fn cells(&self) -> Vec<String> {
        let about = if self.valid { self.description.as_deref() } else { self.error.as_deref() };
        vec![self.path.clone(), if self.valid { "yes" } else { "no" }.into(), one_line(&or_dash(about))]
    }
}

impl Row for FileEntry {
    const HEADERS: &'static [&'static str] = &["TYPE", "SIZE", "PATH"];

    fn cells(&self) -> Vec<String> {
        let folder = self.kind == FileKind::Folder;
        let shown = if folder { format!("{}/", self.path) } else { self.path.clone() };
        let size = if folder { "-".into() } else { self.size.to_string() };
        vec![name(&self.kind), size, shown]
    }
}

async fn cmd_sandbox(client: &Client, cmd: SandboxCmd, json: bool) -> CmdResult {
    match cmd {
        SandboxCmd::Create { name, root, kind, node } => {
            // The server needs an absolute path; a relative one means "here" to the person typing.
            let root = std::path::absolute(&root)
                .map_err(|e| Error::Other(format!("cannot make `{}` absolute: {e}", root.display())))?;
            let root = root
                .to_str()
                .ok_or_else(|| Error::Other(format!("sandbox root `{}` is not valid UTF-8", root.display())))?;
            let request = CreateSandboxRequest {
                name,
                kind,
                root: Some(root.to_owned()),
                node,
                ..CreateSandboxRequest::default()
            };
            let created = client.create_sandbox(&request).await?;
            if json {
                print_json(&created);
            } else {
                emit(&format!(
                    "created {} sandbox {} at {}\n",
                    crate::output::name(&created.kind),
                    created.name,
                    created.root
                ));
            }
        }
        SandboxCmd::Ls => {
            let list = client.sandboxes().await?;
            if json {
                print_json(&list);
            } else {
                emit(&rows_table(&list.sandboxes));
            }
        }
        SandboxCmd::Show { name } => {
            let sandbox = client.sandbox(&name).await?;
            if json {
                print_json(&sandbox);
            } else {
                emit(&key_values(&sandbox_fields(&sandbox)));
            }
        }
        SandboxCmd::Rm { name } => {
            client.delete_sandbox(&name).await?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }));
            } else {
                emit(&format!("deleted sandbox {name}\n"));
            }
        }
        SandboxCmd::Jobs { name } => {
            let jobs = client.jobs(&name).await?;
            if json {
                print_json(&jobs);
            } else {
                emit(&rows_table(&jobs.jobs));
            }
        }
        SandboxCmd::Files { name, path } => {
            let listing = client.list_files(&name, path.as_deref().unwrap_or("")).await?;
            if json {
                print_json(&listing);
            } else {
                emit(&rows_table(&listing.entries));
            }
        }
        SandboxCmd::Put { name, local, remote } => {
            let remote = remote_path(&local, remote.as_deref())?;
            let len = std::fs::metadata(&local).ok().map(|m| m.len());
            let progress = transfer(progress_shown(json), len, format!("uploading {}", local.display()));
            let told: shoal_client::Progress = {
                let progress = progress.clone();
                Arc::new(move |sent| progress.set_position(sent))
            };
            let stored = client.upload_with_progress(&name, &remote, &local, Some(told)).await;
            progress.finish_and_clear();
            let stored = stored?;
            if json {
                print_json(&stored);
            } else {
                emit(&format!("uploaded {} to {name}:{} ({} bytes)\n", local.display(), stored.path, stored.size));
            }
        }
        SandboxCmd::Get { name, remote, output } => {
            let download = client.download(&name, &remote).await?;
            let message = format!("downloading {name}:{remote}");
            match output {
                Some(p) if p.as_os_str() != "-" => {
                    let target = if p.is_dir() { p.join(file_name_of(&remote)?) } else { p };
                    let progress = transfer(progress_shown(json), download.size, message);
                    let written = save(download.stream, &target, &progress).await;
                    progress.finish_and_clear();
                    eprintln!("wrote {} bytes to {}", written?, target.display());
                }
                _ => {
                    // A bar beside the file's own bytes on one terminal would garble both.
                    let shown = progress_shown(json) && !std::io::stdout().is_terminal();
                    let progress = transfer(shown, download.size, message);
                    let copied = copy_to_stdout(download.stream, &progress).await;
                    progress.finish_and_clear();
                    copied?;
                }
            }
        }
        SandboxCmd::RmFile { name, path } => {
            client.delete_file(&name, &path).await?;
            if json {
                print_json(&serde_json::json!({ "deleted": path, "sandbox": name }));
            } else {
                emit(&format!("deleted {name}:{path}\n"));
            }
        }
    }
    Ok(EXIT_OK)
}

/// Where `sandbox put` stores a file: the name given, or the local name (inside the folder
/// given when it ends with `/`).
fn remote_path(local: &Path, remote: Option<&str>) -> Result<String, Error> {
    let local_name =
        || {
            local.file_name().and_then(|n| n.to_str()).map(str::to_owned).ok_or_else(|| {
                Error::Other(format!("`{}` has no usable file name; give the remote path", local.display()))
            })
        };
    match remote {
        None | Some("") => local_name(),
        Some(r) if r.ends_with('/') => Ok(format!("{r}{}", local_name()?)),
        Some(r) => Ok(r.to_owned()),
    }
}

fn file_name_of(remote: &str) -> Result<&str, Error> {
    remote
        .rsplit('/')
        .find(|p| !p.is_empty())
        .ok_or_else(|| Error::Other(format!("`{remote}` names no file; give a file path")))
}

/// Streams a download into a file, counting it on `progress`. It is written beside the target
/// and renamed into place, so a broken download never leaves half a file where the old one was.
async fn save(mut stream: ByteStream, target: &Path, progress: &ProgressBar) -> Result<u64, Error> {
    let local = |e: std::io::Error, what: &str| Error::Other(format!("cannot {what} `{}`: {e}", target.display()));
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("download");
    let partial = target.with_file_name(format!(".{name}.shoal-partial"));
    let mut file = tokio::fs::File::create(&partial).await.map_err(|e| local(e, "create a file beside"))?;
    let mut written = 0u64;
    let result = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            file.write_all(&chunk).await.map_err(|e| local(e, "write"))?;
            written += chunk.len() as u64;
            progress.set_position(written);
        }
        file.flush().await.map_err(|e| local(e, "write"))?;
        file.sync_all().await.map_err(|e| local(e, "write"))?;
        tokio::fs::rename(&partial, target).await.map_err(|e| local(e, "write"))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result.map(|()| written)
}

/// Writes a byte stream to stdout as it arrives, counting it on `progress`. A reader that went
/// away (`| head`) ends the copy quietly, as it does for other command-line tools.
async fn copy_to_stdout(mut stream: ByteStream, progress: &ProgressBar) -> Result<u64, Error> {
    let mut out = tokio::io::stdout();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let wrote = async {
            out.write_all(&chunk).await?;
            out.flush().await
        }
        .await;
        match wrote {
            Ok(()) => written += chunk.len() as u64,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(written),
            Err(e) => return Err(Error::Other(format!("cannot write to stdout: {e}"))),
        }
        progress.set_position(written);
    }
    Ok(written)
}

// ---- argument parsers ----

/// `SANDBOX/JOB`, split at the first `/`: `examples/jobs/hello.toml` is job
/// `jobs/hello.toml` of sandbox `examples`.
pub(crate) fn parse_target(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((sandbox, job)) if !sandbox.is_empty() && !job.is_empty() => Ok((sandbox.to_owned(), job.to_owned())),
        _ => Err(format!(
            "`{s}` is not SANDBOX/JOB: give the sandbox's name, a slash, and the job file's path in it, e.g. examples/jobs/hello.toml"
        )),
    }
}

pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn parse_state(s: &str) -> Result<ExecutionState, String> {
    ExecutionState::parse(s).ok_or_else(|| {
        let all: Vec<&str> = ExecutionState::ALL.iter().map(|s| s.as_str()).collect();
        format!("`{s}` is not an execution state; give one of {}", all.join(", "))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    pub(crate) struct Cli {
        #[command(flatten)]
        pub(crate) global: GlobalOpts,
        #[command(subcommand)]
        pub(crate) cmd: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shoal").chain(args.iter().copied()))
    }

    #[test]
    fn run_splits_the_target_at_the_first_slash() {
        let cli = parse(&["run", "examples/jobs/nightly/load.toml", "-p", "day=2024-01-01", "-p", "x=a=b"]).unwrap();
        let ClientCommand::Run(args) = cli.cmd else { panic!("not run") };
        assert_eq!(args.target, Some(("examples".into(), "jobs/nightly/load.toml".into())));
        assert_eq!(args.params, vec![("day".into(), "2024-01-01".into()), ("x".into(), "a=b".into())]);
        for bad in ["hello.toml", "/jobs/x.toml", "examples/"] {
            assert!(parse(&["run", bad]).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn run_takes_an_inline_command() {
        let cli =
            parse(&["run", "--command", "--timeout", "30s", "--env", "A=1", "--", "sh", "-c", "echo hi"]).unwrap();
        let ClientCommand::Run(args) = cli.cmd else { panic!("not run") };
        assert!(args.command && args.target.is_none());
        assert_eq!(args.argv, vec!["sh", "-c", "echo hi"]);
        assert_eq!(args.env, vec![("A".into(), "1".into())]);
        assert!(parse(&["run", "--command"]).is_err(), "--command without a program");
        assert!(parse(&["run"]).is_err(), "nothing to run");
        for (args, why) in [
            (&["run", "a/b.toml", "--", "echo"][..], "a program without --command"),
            (&["run", "--", "echo"][..], "a program without --command"),
            (&["run", "a/b.toml", "--timeout", "3s"][..], "--timeout is for commands"),
            (&["run", "a/b.toml", "--env", "A=1"][..], "--env is for commands"),
            (&["run", "a/b.toml", "--sandbox", "x"][..], "--sandbox is for commands"),
        ] {
            assert!(parse(args).is_err(), "{why}: {args:?}");
        }
        assert!(parse(&["run", "--command", "-p", "a=1", "--", "echo"]).is_err(), "params are for jobs");
    }

    #[test]
    fn servers_repeat_or_split_at_commas() {
        let cli = parse(&["ps", "--server", "http://a:1,http://b:2", "--server", "http://c:3"]).unwrap();
        assert_eq!(cli.global.servers, vec!["http://a:1", "http://b:2", "http://c:3"]);
        let cli = parse(&["nodes", "--json"]).unwrap();
        assert!(cli.global.json);
        assert!(matches!(cli.cmd, ClientCommand::Nodes));
        let cli = parse(&["run", "--priority", "-5", "a/b.toml"]).unwrap();
        let ClientCommand::Run(args) = cli.cmd else { panic!("not run") };
        assert_eq!(args.priority, Some(-5));
    }

    #[test]
    fn sandbox_subcommands_parse() {
        let cli = parse(&["sandbox", "rm-file", "sb", "data/x.csv"]).unwrap();
        assert!(matches!(cli.cmd, ClientCommand::Sandbox(SandboxCmd::RmFile { .. })));
        let cli = parse(&["sandbox", "create", "sb", "--root", "rel/dir", "--kind", "local"]).unwrap();
        assert!(matches!(cli.cmd, ClientCommand::Sandbox(SandboxCmd::Create { .. })));
        assert!(parse(&["sandbox", "create", "sb", "--root", "x", "--kind", "weird"]).is_err());
        assert!(parse(&["ps", "--limit", "0"]).is_err());
    }

    /// An execution as a server sends it, from the client's fixture.
    pub(crate) fn execution() -> Execution {
        serde_json::from_str(include_str!("../../client/tests/fixtures/execution.json")).unwrap()
    }

    #[test]
    fn executions_are_summarised() {
        let mut e = execution();
        e.state = ExecutionState::Failed;
        e.reason = shoal_wire::ExecutionReason::Exited;
        e.message = "exit code 3".into();
        assert_eq!(final_line(&e), "e1 failed: exit code 3");
        e.message.clear();
        assert_eq!(final_line(&e), "e1 failed: exited");
        let row = execution().cells();
        assert_eq!(row[..5], ["e1", "queued", "true", "-", "0"]);
        assert_eq!(row[5..], ["2026-12-01T10:00:00Z", "submitted: waiting for a free slot"]);
        let shown = key_values(&execution_fields(&execution()));
        assert!(shown.starts_with("id:                  e1\nstate:               queued\n"), "{shown}");
        assert!(
            shown.contains("\nparams:              -\n") && shown.contains("\ncommand:             true\n"),
            "{shown}"
        );
        assert!(parse(&["ps", "--state", "timed_out"]).is_ok());
        assert!(parse(&["ps", "--state", "done"]).unwrap_err().to_string().contains("timed_out"));
    }

    #[test]
    fn put_names_the_remote_file() {
        let local = Path::new("/tmp/data/in.csv");
        assert_eq!(remote_path(local, None).unwrap(), "in.csv");
        assert_eq!(remote_path(local, Some("data/")).unwrap(), "data/in.csv");
        assert_eq!(remote_path(local, Some("data/x.csv")).unwrap(), "data/x.csv");
        assert_eq!(file_name_of("data/x.csv").unwrap(), "x.csv");
        assert!(file_name_of("/").is_err());
    }

    #[test]
    fn errors_map_to_exit_codes() {
        let api = |status| Error::Api { status, code: None, raw_code: "c".into(), message: "m".into(), details: None };
        assert_eq!(report(&api(422)), EXIT_FAILED);
        assert_eq!(report(&api(503)), EXIT_UNAVAILABLE);
        assert_eq!(report(&Error::Unreachable { tried: vec![], last: String::new() }), EXIT_UNAVAILABLE);
        assert_eq!(report(&Error::Other("x".into())), EXIT_FAILED);
    }
}
