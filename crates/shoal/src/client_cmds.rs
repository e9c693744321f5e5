//! The client commands of `shoal` (run, ps, logs, cancel, show, nodes, sandbox, and in
//! `client_sched` schedule, listener, hook): each one calls the HTTP API through
//! `shoal_client`, failing over between the `--server`s given.
//!
//! Output: human tables and lines on stdout by default, the API's JSON (pretty) with
//! `--json`; progress notes and errors on stderr, so stdout stays usable in scripts
//! (`id=$(shoal run examples/jobs/hello.toml)`).
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
use futures::StreamExt;
use serde_json::{json, Map, Value};
use shoal_client::{ByteStream, Client, Error, ExecutionFilter};
use std::io::Write;
use std::path::{Path, PathBuf};
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

const FINAL_STATES: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];

#[derive(clap::Args, Clone, Debug)]
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
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
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
    #[arg(long)]
    pub state: Option<String>,
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
    let client = match Client::new(opts.servers.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    // Recorded by the server as who cancelled an execution.
    let client = match std::env::var("USER") {
        Ok(user) if !user.is_empty() => client.with_user(user),
        _ => client,
    };
    let json = opts.json;
    let result = match cmd {
        ClientCommand::Run(args) => cmd_run(&client, args, json).await,
        ClientCommand::Ps(args) => cmd_ps(&client, args, json).await,
        ClientCommand::Logs(args) => cmd_logs(&client, args).await,
        ClientCommand::Cancel(args) => cmd_cancel(&client, &args.id, json).await,
        ClientCommand::Show(args) => cmd_show(&client, &args.id, json).await,
        ClientCommand::Nodes => cmd_nodes(&client, json).await,
        ClientCommand::Drain(a) => cmd_node_action(&client, &a.node, "drain", json).await,
        ClientCommand::Suspend(a) => cmd_node_action(&client, &a.node, "suspend", json).await,
        ClientCommand::Resume(a) => cmd_node_action(&client, &a.node, "resume", json).await,
        ClientCommand::Sandbox(cmd) => cmd_sandbox(&client, cmd, json).await,
        ClientCommand::Schedule(cmd) => client_sched::cmd_schedule(&client, *cmd, json).await,
        ClientCommand::Listener(cmd) => client_sched::cmd_listener(&client, *cmd, json).await,
        ClientCommand::Hook(args) => client_sched::cmd_hook(&client, args, json).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

pub(crate) type CmdResult = Result<i32, Error>;

/// Prints an error and answers its exit code.
fn report(e: &Error) -> i32 {
    match e {
        Error::Api { status, code, message, details } => {
            eprintln!("error: {message} ({code})");
            if code == "invalid_job" {
                if let Some(d) = details {
                    eprintln!("  --> {}:{}:{}", text(&d["file"]), text(&d["line"]), text(&d["column"]));
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
    let mut body = Map::new();
    let label = if args.command {
        // clap already requires the program with --command; this guards the invariant.
        if args.argv.is_empty() {
            eprintln!("error: --command needs the program after `--`, e.g. `shoal run --command -- echo hi`");
            return Ok(EXIT_USAGE);
        }
        body.insert("command".into(), json!(args.argv));
        if let Some(s) = &args.sandbox {
            body.insert("sandbox".into(), json!(s));
        }
        if let Some(t) = &args.timeout {
            body.insert("timeout".into(), json!(t));
        }
        if let Some(r) = args.retries {
            body.insert("retries".into(), json!(r));
        }
        if !args.env.is_empty() {
            let env: Map<String, Value> = args.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            body.insert("env".into(), Value::Object(env));
        }
        args.argv.join(" ")
    } else {
        let Some((sandbox, job)) = &args.target else {
            eprintln!("error: give the job to run as SANDBOX/JOB, or --command -- PROGRAM ARGS...");
            return Ok(EXIT_USAGE);
        };
        body.insert("sandbox".into(), json!(sandbox));
        body.insert("job".into(), json!(job));
        if !args.params.is_empty() {
            let params: Map<String, Value> = args.params.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            body.insert("params".into(), Value::Object(params));
        }
        format!("{sandbox}/{job}")
    };
    if let Some(p) = args.priority {
        body.insert("priority".into(), json!(p));
    }
    let (execution, _replayed) = client.submit(Value::Object(body)).await?;
    let id = text(&execution["id"]);
    let state = text(&execution["state"]);
    if !(args.wait || args.follow) {
        if json {
            print_json(&execution);
        } else {
            emit(&format!("{id}\n"));
            eprintln!("{state}: {label}");
        }
        return Ok(EXIT_OK);
    }
    if args.follow {
        // stdout carries the job's output, so the id goes to stderr.
        eprintln!("{id} {state}: {label}");
        follow_logs(client, &id).await;
    } else if !json {
        emit(&format!("{id}\n"));
    }
    let finished = wait_final(client, &id).await?;
    if json {
        print_json(&finished);
    }
    eprintln!("{}", final_line(&finished));
    Ok(if finished["state"] == "succeeded" { EXIT_OK } else { EXIT_FAILED })
}

/// Copies an execution's output to stdout until it has finished. A broken log stream is not
/// the execution failing: it is reported, and the caller goes on to wait for the state.
async fn follow_logs(client: &Client, id: &str) {
    let result = match client.logs(id, true, None).await {
        Ok(stream) => copy_to_stdout(stream).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("warning: the output could not be followed to the end: {e}; waiting for the execution to finish");
    }
}

/// Polls the execution until it is in a final state.
async fn wait_final(client: &Client, id: &str) -> Result<Value, Error> {
    let mut failing_since: Option<Instant> = None;
    loop {
        match client.execution(id).await {
            Ok(e) => {
                if is_final(&e) {
                    return Ok(e);
                }
                failing_since = None;
            }
            Err(e @ Error::Api { status, .. }) if status < 500 => return Err(e),
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= WAIT_OUTAGE {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn is_final(execution: &Value) -> bool {
    execution["state"].as_str().is_some_and(|s| FINAL_STATES.contains(&s))
}

/// `ID STATE: MESSAGE`, e.g. `0190... failed: exit code 3`.
fn final_line(execution: &Value) -> String {
    let mut line = format!("{} {}", text(&execution["id"]), text(&execution["state"]));
    let why = [&execution["message"], &execution["reason"]]
        .into_iter()
        .filter_map(Value::as_str)
        .find(|s| !s.is_empty())
        .map(str::to_owned);
    if let Some(why) = why {
        line.push_str(": ");
        line.push_str(&why);
    }
    line
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
    let mut executions = Vec::new();
    let next = loop {
        let page = client.executions(&filter).await?;
        if let Some(rows) = page["executions"].as_array() {
            executions.extend(rows.iter().cloned());
        }
        let next = page["next_cursor"].as_str().map(str::to_owned);
        match next {
            Some(cursor) if args.all => filter.cursor = Some(cursor),
            other => break other,
        }
    };
    if json {
        print_json(&json!({ "executions": executions, "next_cursor": next }));
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = executions
        .iter()
        .map(|e| {
            let job = match e["job"].as_str() {
                Some(job) => format!("{}/{job}", text(&e["sandbox"])),
                None => text_list(&e["command"]),
            };
            let reason = match (e["reason"].as_str(), e["message"].as_str()) {
                (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
                (Some(r), _) => r.to_owned(),
                (None, Some(m)) => m.to_owned(),
                (None, None) => "-".into(),
            };
            vec![
                text(&e["id"]),
                text(&e["state"]),
                clip(&job, 40),
                text(&e["node"]),
                text(&e["attempt"]),
                short_time(&e["created_at"]),
                clip(&reason, 50),
            ]
        })
        .collect();
    emit(&table(&["ID", "STATE", "JOB", "NODE", "ATTEMPT", "CREATED", "REASON"], &rows));
    if next.is_some() {
        eprintln!("(more executions match: add --all to list them all)");
    }
    Ok(EXIT_OK)
}

async fn cmd_logs(client: &Client, args: LogsArgs) -> CmdResult {
    let stream = client.logs(&args.id, args.follow, args.stream.as_deref()).await?;
    copy_to_stdout(stream).await?;
    Ok(EXIT_OK)
}

async fn cmd_cancel(client: &Client, id: &str, json: bool) -> CmdResult {
    let execution = client.cancel(id).await?;
    if json {
        print_json(&execution);
    } else if is_final(&execution) {
        emit(&format!("{} {}\n", text(&execution["id"]), text(&execution["state"])));
    } else {
        emit(&format!(
            "{} {}: cancel requested; node {} is stopping it\n",
            text(&execution["id"]),
            text(&execution["state"]),
            text(&execution["node"])
        ));
    }
    Ok(EXIT_OK)
}

async fn cmd_show(client: &Client, id: &str, json: bool) -> CmdResult {
    let execution = client.execution(id).await?;
    if json {
        print_json(&execution);
    } else {
        let order = [
            "id",
            "state",
            "reason",
            "message",
            "exit_code",
            "signal",
            "sandbox",
            "job",
            "kind",
            "command",
            "params",
            "node",
            "attempt",
            "priority",
            "timeout_ms",
            "retries",
            "cancel_requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "updated_at",
        ];
        emit(&key_values(&execution, &order));
    }
    Ok(EXIT_OK)
}

async fn cmd_nodes(client: &Client, json: bool) -> CmdResult {
    let nodes = client.nodes().await?;
    if json {
        print_json(&nodes);
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = nodes["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let lease = match n["lease_expires_in_ms"].as_i64() {
                Some(ms) if ms > 0 => format!("in {}", fmt_ms(ms)),
                Some(ms) => format!("expired {} ago", fmt_ms(-ms)),
                None => "-".into(),
            };
            let pct = |v: &Value| v.as_f64().map_or_else(|| "-".into(), |l| format!("{l:.0}%"));
            let age = n["lease_age_ms"].as_i64().map_or_else(|| "-".into(), fmt_ms);
            vec![
                text(&n["id"]),
                text(&n["state"]),
                text(&n["gossip"]),
                text(&n["url"]),
                format!("{}/{}", text(&n["running"]), text(&n["slots"])),
                pct(&n["load"]["cpu_percent"]),
                pct(&n["load"]["memory_percent"]),
                age,
                lease,
                text(&n["version"]),
            ]
        })
        .collect();
    emit(&table(
        &["ID", "STATE", "GOSSIP", "URL", "RUNNING/SLOTS", "CPU", "MEM", "LEASE AGE", "LEASE", "VERSION"],
        &rows,
    ));
    Ok(EXIT_OK)
}

async fn cmd_node_action(client: &Client, id: &str, action: &str, json: bool) -> CmdResult {
    let node = client.node_action(id, action).await?;
    if json {
        print_json(&node);
        return Ok(EXIT_OK);
    }
    println!("node {id}: {} (was {})", text(&node["state"]), text(&node["previous_state"]));
    if let Some(why) = node["not_accepting_because"].as_str() {
        println!("not taking new work: {why}");
    }
    Ok(EXIT_OK)
}

// ---- sandboxes ----

async fn cmd_sandbox(client: &Client, cmd: SandboxCmd, json: bool) -> CmdResult {
    let sandbox_order = ["name", "kind", "root", "node", "created_at"];
    match cmd {
        SandboxCmd::Create { name, root, kind, node } => {
            // The server needs an absolute path; a relative one means "here" to the person typing.
            let root = std::path::absolute(&root)
                .map_err(|e| Error::Other(format!("cannot make `{}` absolute: {e}", root.display())))?;
            let root = root
                .to_str()
                .ok_or_else(|| Error::Other(format!("sandbox root `{}` is not valid UTF-8", root.display())))?;
            let created = client.create_sandbox(&name, &kind, root, node.as_deref()).await?;
            if json {
                print_json(&created);
            } else {
                emit(&format!(
                    "created {} sandbox {} at {}\n",
                    text(&created["kind"]),
                    text(&created["name"]),
                    text(&created["root"])
                ));
            }
        }
        SandboxCmd::Ls => {
            let list = client.sandboxes().await?;
            if json {
                print_json(&list);
            } else {
                let rows: Vec<Vec<String>> = list["sandboxes"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| {
                        vec![
                            text(&s["name"]),
                            text(&s["kind"]),
                            text(&s["node"]),
                            short_time(&s["created_at"]),
                            text(&s["root"]),
                        ]
                    })
                    .collect();
                emit(&table(&["NAME", "KIND", "NODE", "CREATED", "ROOT"], &rows));
            }
        }
        SandboxCmd::Show { name } => {
            let sandbox = client.sandbox(&name).await?;
            if json {
                print_json(&sandbox);
            } else {
                emit(&key_values(&sandbox, &sandbox_order));
            }
        }
        SandboxCmd::Rm { name } => {
            client.delete_sandbox(&name).await?;
            if json {
                print_json(&json!({ "deleted": name }));
            } else {
                emit(&format!("deleted sandbox {name}\n"));
            }
        }
        SandboxCmd::Jobs { name } => {
            let jobs = client.jobs(&name).await?;
            if json {
                print_json(&jobs);
            } else {
                let rows: Vec<Vec<String>> = jobs["jobs"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|j| {
                        let valid = j["valid"].as_bool().unwrap_or(false);
                        let about = if valid { text(&j["description"]) } else { text(&j["error"]) };
                        vec![text(&j["path"]), if valid { "yes" } else { "no" }.into(), one_line(&about)]
                    })
                    .collect();
                emit(&table(&["PATH", "VALID", "DESCRIPTION"], &rows));
            }
        }
        SandboxCmd::Files { name, path } => {
            let listing = client.list_files(&name, path.as_deref().unwrap_or("")).await?;
            if json {
                print_json(&listing);
            } else {
                let rows: Vec<Vec<String>> = listing["entries"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| {
                        let kind = text(&f["kind"]);
                        let mut shown = text(&f["path"]);
                        if kind == "folder" {
                            shown.push('/');
                        }
                        let size = if kind == "folder" { "-".into() } else { text(&f["size"]) };
                        vec![kind, size, shown]
                    })
                    .collect();
                emit(&table(&["TYPE", "SIZE", "PATH"], &rows));
            }
        }
        SandboxCmd::Put { name, local, remote } => {
            let remote = remote_path(&local, remote.as_deref())?;
            let stored = client.upload(&name, &remote, &local).await?;
            if json {
                print_json(&stored);
            } else {
                emit(&format!(
                    "uploaded {} to {name}:{} ({} bytes)\n",
                    local.display(),
                    text(&stored["path"]),
                    text(&stored["size"])
                ));
            }
        }
        SandboxCmd::Get { name, remote, output } => {
            let stream = client.download(&name, &remote).await?;
            match output {
                None => {
                    copy_to_stdout(stream).await?;
                }
                Some(p) if p.as_os_str() == "-" => {
                    copy_to_stdout(stream).await?;
                }
                Some(p) => {
                    let target = if p.is_dir() { p.join(file_name_of(&remote)?) } else { p };
                    let written = save(stream, &target).await?;
                    eprintln!("wrote {written} bytes to {}", target.display());
                }
            }
        }
        SandboxCmd::RmFile { name, path } => {
            client.delete_file(&name, &path).await?;
            if json {
                print_json(&json!({ "deleted": path, "sandbox": name }));
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

/// Streams a download into a file. It is written beside the target and renamed into place,
/// so a broken download never leaves half a file where the old one was.
async fn save(mut stream: ByteStream, target: &Path) -> Result<u64, Error> {
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

/// Writes a byte stream to stdout as it arrives. A reader that went away (`| head`) ends the
/// copy quietly, as it does for other command-line tools.
async fn copy_to_stdout(mut stream: ByteStream) -> Result<u64, Error> {
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
    }
    Ok(written)
}

// ---- formatting ----

/// Writes to stdout, ignoring a closed pipe (`shoal ps | head -1`) instead of panicking as
/// `println!` would.
pub(crate) fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

pub(crate) fn print_json(value: &Value) {
    let pretty = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    emit(&format!("{pretty}\n"));
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A list as words, an object as `k=v` pairs, anything else as [`text`].
pub(crate) fn text_list(value: &Value) -> String {
    match value {
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
        Value::Object(map) if map.is_empty() => "-".into(),
        Value::Object(map) => map.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(" "),
        other => text(other),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts a cell to `max` characters, marking the cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An RFC 3339 time to the second: `2024-05-01T10:00:00.123Z` becomes `2024-05-01T10:00:00Z`.
pub(crate) fn short_time(value: &Value) -> String {
    match value.as_str() {
        Some(t) => match t.split_once('.') {
            Some((seconds, rest)) if rest.ends_with('Z') => format!("{seconds}Z"),
            _ => t.to_owned(),
        },
        None => text(value),
    }
}

/// A duration in milliseconds, briefly: `850ms`, `4.2s`, `3m20s`, `2h05m`.
pub(crate) fn fmt_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// Plain aligned columns, two spaces apart; the last column is not padded.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.push_str(&" ".repeat(w.saturating_sub(cell.chars().count())));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `key: value` lines, keys aligned: the keys in `order` first, then any others.
pub(crate) fn key_values(value: &Value, order: &[&str]) -> String {
    let Some(map) = value.as_object() else { return format!("{}\n", text(value)) };
    let mut keys: Vec<&str> = order.iter().copied().filter(|k| map.contains_key(*k)).collect();
    keys.extend(map.keys().map(String::as_str).filter(|k| !order.contains(k)));
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for k in keys {
        out.push_str(&format!("{:width$} {}\n", format!("{k}:"), text_list(&map[k])));
    }
    out
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

    #[test]
    fn tables_align_and_clip() {
        let t = table(&["ID", "STATE"], &[vec!["abc".into(), "running".into()], vec!["a".into(), "x".into()]]);
        assert_eq!(t, "ID   STATE\nabc  running\na    x\n");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("a\nb", 10), "a b");
    }

    #[test]
    fn values_format_briefly() {
        assert_eq!(short_time(&json!("2024-05-01T10:00:00.123Z")), "2024-05-01T10:00:00Z");
        assert_eq!(short_time(&Value::Null), "-");
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(4200), "4.2s");
        assert_eq!(fmt_ms(200_000), "3m20s");
        assert_eq!(text_list(&json!(["echo", "hi"])), "echo hi");
        assert_eq!(text_list(&json!({"day": "mon", "n": 3})), "day=mon n=3");
        let kv = key_values(&json!({"state": "queued", "id": "x", "extra": null}), &["id", "state"]);
        assert_eq!(kv, "id:    x\nstate: queued\nextra: -\n");
        let line = final_line(&json!({"id": "e1", "state": "failed", "reason": "exited", "message": "exit code 3"}));
        assert_eq!(line, "e1 failed: exit code 3");
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
        let api = |status| Error::Api { status, code: "c".into(), message: "m".into(), details: None };
        assert_eq!(report(&api(422)), EXIT_FAILED);
        assert_eq!(report(&api(503)), EXIT_UNAVAILABLE);
        assert_eq!(report(&Error::Unreachable { tried: vec![], last: String::new() }), EXIT_UNAVAILABLE);
        assert_eq!(report(&Error::Other("x".into())), EXIT_FAILED);
    }
}
