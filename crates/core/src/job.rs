//! Job files: parsing and validating the TOML a sandbox holds, and resolving a job with its
//! parameters into the [`RunSpec`] an execution keeps for all its attempts.
//!
//! Every validation error carries the line and column it is about, so a user can fix a job
//! file without guessing. A `RunSpec` is a snapshot: editing the job file later changes no
//! execution that was already accepted, and every retry runs exactly what was accepted.

use crate::duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use toml::Spanned;

/// Default delay before the first retry; later retries double it.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait between two retries, however many there were.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(3600);
/// Limit on a job file's size, so a runaway file cannot be loaded into memory.
pub const MAX_JOB_FILE_BYTES: usize = 256 * 1024;
/// Most retries a job may ask for (`retries`), so a typo cannot retry forever.
pub const MAX_RETRIES: u32 = 100;

/// What a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobKind {
    /// A child process: program and arguments, `{param}` placeholders not yet substituted.
    Process { command: Vec<String> },
    /// Built in: succeeds at once without starting a process (benchmarks, smoke tests).
    Noop,
}

/// What happens to a running attempt whose node dies, and where an execution may run: the
/// wire's enums, carried unchanged from a request to the stored spec.
pub use shoal_wire::{Allocation, OnNodeLoss};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// `None` means the parameter is required.
    pub default: Option<String>,
    pub description: Option<String>,
}

/// A validated job file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub description: Option<String>,
    pub kind: JobKind,
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub on_node_loss: OnNodeLoss,
    pub max_concurrent: Option<u32>,
    pub priority: i32,
    pub params: BTreeMap<String, ParamSpec>,
    pub allocation: Allocation,
    /// Queue even when no node known to the cluster matches the allocation yet (it runs when
    /// one joins); otherwise such a submission is refused as a likely typo.
    pub allow_pending: bool,
}

/// Everything an execution needs to run any of its attempts, parameters already substituted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub kind: JobKind,
    /// Working directory relative to the sandbox root (`None`: the root itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables whose values name secrets (`{secret.NAME}`): templates in which everything
    /// but those placeholders is literal (`{{` and `}}` for braces, parameters already
    /// substituted), rendered only by the node that starts an attempt, into the child's
    /// environment. So the stored spec, and every answer made from it, holds the placeholder,
    /// never the value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default = "default_backoff_ms")]
    pub retry_backoff_ms: u64,
    #[serde(default)]
    pub on_node_loss: OnNodeLoss,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub allocation: Allocation,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_pending: bool,
}

fn default_backoff_ms() -> u64 {
    DEFAULT_RETRY_BACKOFF.as_millis() as u64
}

/// A problem in a job file, at a line and column (both 1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for JobFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for JobFileError {}

/// A problem with the parameters given for a run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("missing required parameter `{0}`; pass it as `-p {0}=VALUE` or in `params`")]
    Missing(String),
    #[error("unknown parameter `{name}`; this job takes {known}")]
    Unknown { name: String, known: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    description: Option<String>,
    kind: Option<Spanned<RawKind>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    workdir: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    retry_backoff: Option<Spanned<String>>,
    on_node_loss: Option<OnNodeLoss>,
    max_concurrent: Option<Spanned<u32>>,
    priority: Option<i32>,
    #[serde(default)]
    params: BTreeMap<Spanned<String>, RawParam>,
    allocation: Option<Spanned<RawAllocation>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    Process,
    Noop,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    default: Option<String>,
    description: Option<String>,
    required: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawAllocKind {
    Any,
    Nodes,
    Tags,
    Partitioned,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllocation {
    kind: RawAllocKind,
    nodes: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    sandbox: Option<String>,
    #[serde(default)]
    allow_pending: bool,
}

/// Converts a byte offset into a 1-based line and column (columns count characters).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

struct Ctx<'a> {
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> JobFileError {
        let (line, column) = line_col(self.text, span.start);
        JobFileError { line, column, message: message.into() }
    }
}

fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `name` can name a secret (`{secret.NAME}`): 1 to 64 ASCII letters, digits, `_` and
/// `-`, starting with a letter.
pub fn is_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What comes before a secret's name in a placeholder.
const SECRET_PREFIX: &str = "secret.";

/// One piece of a template: literal text, a `{name}` placeholder or a `{secret.NAME}` one.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(std::borrow::Cow<'a, str>),
    Param(&'a str),
    Secret(&'a str),
}

/// Splits a template into pieces. `{{` and `}}` stand for literal braces.
fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => {
                literal.push('{');
                i += 2;
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => {
                literal.push('}');
                i += 2;
            }
            b'{' => {
                let Some(end) = template[i + 1..].find('}') else {
                    return Err(format!("unclosed `{{` in `{template}`; write `{{{{` for a literal brace"));
                };
                let name = &template[i + 1..i + 1 + end];
                let piece = match name.strip_prefix(SECRET_PREFIX) {
                    Some(secret) if is_secret_name(secret) => Piece::Secret(secret),
                    Some(_) => {
                        return Err(format!(
                            "`{{{name}}}` in `{template}` names no valid secret; secret names are 1 to 64 letters, digits, `_` and `-`, starting with a letter"
                        ))
                    }
                    None if is_param_name(name) => Piece::Param(name),
                    None => {
                        return Err(format!(
                            "`{{{name}}}` in `{template}` is not a parameter placeholder; names use letters, digits, `_` and `-`, and `{{{{` writes a literal brace"
                        ))
                    }
                };
                if !literal.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut literal).into()));
                }
                out.push(piece);
                i += end + 2;
            }
            b'}' => {
                return Err(format!("stray `}}` in `{template}`; write `}}}}` for a literal brace"));
            }
            _ => {
                let next = template[i..].find(['{', '}']).map_or(template.len(), |n| i + n);
                literal.push_str(&template[i..next]);
                i = next;
            }
        }
    }
    if !literal.is_empty() {
        out.push(Piece::Text(literal.into()));
    }
    Ok(out)
}

/// Substitutes `{name}` placeholders; every name must be in `values`.
pub fn substitute(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Param(name) => match values.get(name) {
                Some(v) => out.push_str(v),
                None => return Err(format!("no parameter `{name}`")),
            },
            Piece::Secret(name) => {
                return Err(format!("`{{secret.{name}}}` is a secret; only `env` values may name secrets"))
            }
        }
    }
    Ok(out)
}

/// Doubles the braces of `text`, so that a template holds it literally.
fn escape_braces(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

/// An `env` value with its parameters substituted.
enum EnvValue {
    /// No secret in it: the value itself.
    Plain(String),
    /// A template that keeps the secrets' placeholders and holds everything else literally
    /// (the parameters' values escaped, so a parameter's value cannot name a secret).
    WithSecrets(String),
}

fn substitute_env(template: &str, values: &BTreeMap<String, String>) -> EnvValue {
    let pieces = pieces(template).unwrap_or_default();
    if !pieces.iter().any(|p| matches!(p, Piece::Secret(_))) {
        return EnvValue::Plain(substitute(template, values).unwrap_or_else(|_| template.to_owned()));
    }
    let mut out = String::with_capacity(template.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&escape_braces(&t)),
            Piece::Param(name) => out.push_str(&escape_braces(values.get(name).map_or("", String::as_str))),
            Piece::Secret(name) => {
                out.push_str("{secret.");
                out.push_str(name);
                out.push('}');
            }
        }
    }
    EnvValue::WithSecrets(out)
}

/// Names of the parameter placeholders (or, with `secrets`, the secret ones) in a template,
/// in order.
fn placeholder_names(template: &str, secrets: bool) -> Result<Vec<&str>, String> {
    Ok(pieces(template)?
        .into_iter()
        .filter_map(|p| match (p, secrets) {
            (Piece::Param(n), false) | (Piece::Secret(n), true) => Some(n),
            _ => None,
        })
        .collect())
}

fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    placeholder_names(template, false)
}

fn secret_placeholders(template: &str) -> Result<Vec<&str>, String> {
    placeholder_names(template, true)
}

impl JobSpec {
    /// Parses and validates a job file.
    pub fn parse(text: &str) -> Result<JobSpec, JobFileError> {
        let ctx = Ctx { text };
        if text.len() > MAX_JOB_FILE_BYTES {
            return Err(ctx.err(0..0, format!("job file is over {MAX_JOB_FILE_BYTES} bytes")));
        }
        let raw: RawJob = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ctx.err(span, e.message().trim().to_owned())
        })?;

        let mut params = BTreeMap::new();
        for (name, p) in raw.params {
            if !is_param_name(name.get_ref()) {
                return Err(ctx.err(
                    name.span(),
                    format!("invalid parameter name `{}`; use letters, digits, `_` and `-`", name.get_ref()),
                ));
            }
            if p.required == Some(true) && p.default.is_some() {
                return Err(ctx.err(
                    name.span(),
                    format!("parameter `{}` is required and has a default; keep one of the two", name.get_ref()),
                ));
            }
            params.insert(name.into_inner(), ParamSpec { default: p.default, description: p.description });
        }
        let check_params = |s: &Spanned<String>| -> Result<(), JobFileError> {
            for name in placeholders(s.get_ref()).map_err(|m| ctx.err(s.span(), m))? {
                if !params.contains_key(name) {
                    return Err(
                        ctx.err(s.span(), format!("`{{{name}}}` names no parameter; declare it as [params.{name}]"))
                    );
                }
            }
            Ok(())
        };
        // Secrets go only into the environment: an argument shows in `ps`, a folder in paths.
        let check_template = |s: &Spanned<String>| -> Result<(), JobFileError> {
            check_params(s)?;
            if let Some(name) = secret_placeholders(s.get_ref()).map_err(|m| ctx.err(s.span(), m))?.first() {
                return Err(ctx.err(
                    s.span(),
                    format!("`{{secret.{name}}}`: only `env` values may name secrets (an argument shows in `ps`); pass it as an environment variable"),
                ));
            }
            Ok(())
        };

        let kind = raw.kind.as_ref().map_or(RawKind::Process, |k| *k.get_ref());
        let kind = match (kind, raw.command) {
            (RawKind::Process, None) => {
                return Err(ctx.err(0..0, "missing `command`; give the program and its arguments, like command = [\"sh\", \"-c\", \"echo hi\"]"));
            }
            (RawKind::Process, Some(cmd)) => {
                if cmd.get_ref().is_empty() || cmd.get_ref()[0].get_ref().is_empty() {
                    return Err(ctx.err(cmd.span(), "`command` is empty; its first element is the program to run"));
                }
                for arg in cmd.get_ref() {
                    check_template(arg)?;
                    if arg.get_ref().contains('\0') {
                        return Err(ctx.err(
                            arg.span(),
                            "a `command` element contains a NUL byte, which no program argument can hold",
                        ));
                    }
                }
                JobKind::Process { command: cmd.into_inner().into_iter().map(Spanned::into_inner).collect() }
            }
            (RawKind::Noop, Some(cmd)) => {
                return Err(ctx.err(cmd.span(), "a `noop` job runs no command; remove `command`"));
            }
            (RawKind::Noop, None) => JobKind::Noop,
        };

        let mut env = BTreeMap::new();
        for (k, v) in raw.env {
            let key_ok =
                !k.get_ref().is_empty() && !k.get_ref().contains(['=', '\0']) && !k.get_ref().starts_with("SHOAL_");
            if !key_ok {
                return Err(ctx.err(
                    k.span(),
                    format!("invalid environment variable name `{}`; names may not be empty, contain `=`, or start with `SHOAL_` (shoal sets those)", k.get_ref()),
                ));
            }
            check_params(&v)?;
            if v.get_ref().contains('\0') {
                return Err(ctx.err(
                    v.span(),
                    format!(
                        "environment variable `{}` contains a NUL byte, which no environment value can hold",
                        k.get_ref()
                    ),
                ));
            }
            env.insert(k.into_inner(), v.into_inner());
        }

        let workdir = match raw.workdir {
            Some(w) => {
                check_template(&w)?;
                if let Err(e) = crate::path::SandboxPath::parse(w.get_ref()) {
                    return Err(ctx.err(w.span(), format!("workdir: {e}")));
                }
                Some(w.into_inner())
            }
            None => None,
        };

        let parse_duration = |d: &Spanned<String>, what: &str| {
            duration::parse(d.get_ref()).map_err(|m| ctx.err(d.span(), format!("{what}: {m}")))
        };
        let timeout = match &raw.timeout {
            Some(t) => {
                let d = parse_duration(t, "timeout")?;
                if d.is_zero() {
                    return Err(ctx.err(t.span(), "timeout must be more than zero; leave it out for no timeout"));
                }
                Some(d)
            }
            None => None,
        };
        let retry_backoff = match &raw.retry_backoff {
            Some(b) => parse_duration(b, "retry_backoff")?,
            None => DEFAULT_RETRY_BACKOFF,
        };
        if let Some(r) = &raw.retries {
            if *r.get_ref() > MAX_RETRIES {
                return Err(ctx.err(r.span(), format!("retries is {}; the most allowed is {MAX_RETRIES}", r.get_ref())));
            }
        }
        if let Some(m) = &raw.max_concurrent {
            if *m.get_ref() == 0 {
                return Err(ctx.err(m.span(), "max_concurrent must be at least 1; leave it out for no limit"));
            }
        }

        let mut allow_pending = false;
        let allocation = match raw.allocation {
            None => Allocation::Any,
            Some(a) => {
                let span = a.span();
                let a = a.into_inner();
                allow_pending = a.allow_pending;
                match a.kind {
                    _ if a.sandbox.is_some() && !matches!(a.kind, RawAllocKind::Partitioned) => {
                        return Err(ctx.err(span, "`sandbox` belongs to allocation kind `partitioned`"));
                    }
                    RawAllocKind::Any => {
                        if a.nodes.is_some() || a.tags.is_some() {
                            return Err(ctx.err(span, "allocation kind `any` takes no `nodes` or `tags`"));
                        }
                        Allocation::Any
                    }
                    RawAllocKind::Nodes => match (a.nodes, a.tags) {
                        (Some(nodes), None) if !nodes.is_empty() => {
                            for n in &nodes {
                                crate::ids::NodeId::parse(n).map_err(|m| ctx.err(span.clone(), m))?;
                            }
                            Allocation::Nodes { nodes }
                        }
                        _ => {
                            return Err(
                                ctx.err(span, "allocation kind `nodes` needs a non-empty `nodes` list and no `tags`")
                            )
                        }
                    },
                    RawAllocKind::Tags => match (a.tags, a.nodes) {
                        (Some(tags), None) if !tags.is_empty() => Allocation::Tags { tags },
                        _ => {
                            return Err(
                                ctx.err(span, "allocation kind `tags` needs a non-empty `tags` list and no `nodes`")
                            )
                        }
                    },
                    RawAllocKind::Partitioned => match (a.sandbox, a.nodes, a.tags) {
                        (Some(sandbox), None, None) => {
                            crate::SandboxName::parse(&sandbox).map_err(|m| ctx.err(span.clone(), m))?;
                            Allocation::Partitioned { sandbox }
                        }
                        _ => {
                            return Err(ctx.err(
                                span,
                                "allocation kind `partitioned` needs `sandbox`, the partitioned sandbox whose partitions it runs on, and no `nodes` or `tags`",
                            ))
                        }
                    },
                }
            }
        };

        Ok(JobSpec {
            description: raw.description,
            kind,
            workdir,
            env,
            timeout,
            retries: raw.retries.map_or(0, Spanned::into_inner),
            retry_backoff,
            on_node_loss: raw.on_node_loss.unwrap_or_default(),
            max_concurrent: raw.max_concurrent.map(Spanned::into_inner),
            priority: raw.priority.unwrap_or(0),
            params,
            allocation,
            allow_pending,
        })
    }

    /// Checks the given parameters against the declared ones and fills in defaults.
    pub fn bind_params(&self, given: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ParamError> {
        if let Some(name) = given.keys().find(|k| !self.params.contains_key(*k)) {
            let known = if self.params.is_empty() {
                "no parameters".to_owned()
            } else {
                self.params.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            };
            return Err(ParamError::Unknown { name: name.clone(), known });
        }
        let mut bound = BTreeMap::new();
        for (name, spec) in &self.params {
            let value = match (given.get(name), &spec.default) {
                (Some(v), _) => v.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) => return Err(ParamError::Missing(name.clone())),
            };
            bound.insert(name.clone(), value);
        }
        Ok(bound)
    }

    /// Resolves the job with bound parameters into what every attempt will run.
    pub fn resolve(&self, bound: &BTreeMap<String, String>) -> RunSpec {
        // Templates were checked against the declared parameters at parse time and `bound`
        // holds every declared parameter, so substitution cannot fail here.
        let sub = |t: &String| substitute(t, bound).unwrap_or_else(|_| t.clone());
        let kind = match &self.kind {
            JobKind::Process { command } => JobKind::Process { command: command.iter().map(sub).collect() },
            JobKind::Noop => JobKind::Noop,
        };
        let (mut env, mut secret_env) = (BTreeMap::new(), BTreeMap::new());
        for (k, v) in &self.env {
            match substitute_env(v, bound) {
                EnvValue::Plain(value) => env.insert(k.clone(), value),
                EnvValue::WithSecrets(template) => secret_env.insert(k.clone(), template),
            };
        }
        RunSpec {
            kind,
            workdir: self.workdir.as_ref().map(sub),
            env,
            secret_env,
            timeout_ms: self.timeout.map(|d| d.as_millis() as u64),
            retries: self.retries,
            retry_backoff_ms: self.retry_backoff.as_millis() as u64,
            on_node_loss: self.on_node_loss,
            max_concurrent: self.max_concurrent,
            priority: self.priority,
            allocation: self.allocation.clone(),
            allow_pending: self.allow_pending,
        }
    }
}

impl RunSpec {
    /// A spec for an inline command submitted through the API (no job file).
    pub fn inline(command: Vec<String>) -> RunSpec {
        RunSpec {
            kind: JobKind::Process { command },
            workdir: None,
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            timeout_ms: None,
            retries: 0,
            retry_backoff_ms: default_backoff_ms(),
            on_node_loss: OnNodeLoss::Retry,
            max_concurrent: None,
            priority: 0,
            allocation: Allocation::Any,
            allow_pending: false,
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// The secrets the attempt's environment names, each once.
    pub fn secret_names(&self) -> std::collections::BTreeSet<String> {
        self.secret_env.values().flat_map(|t| secret_placeholders(t).unwrap_or_default()).map(str::to_owned).collect()
    }

    /// The variables of [`RunSpec::secret_env`] with the secrets' `values` in place; a secret
    /// missing from `values` is an error naming it.
    pub fn render_secret_env(&self, values: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::with_capacity(self.secret_env.len());
        for (k, template) in &self.secret_env {
            let mut value = String::new();
            for piece in pieces(template).map_err(|m| format!("environment variable `{k}`: {m}"))? {
                match piece {
                    Piece::Text(t) => value.push_str(&t),
                    Piece::Secret(name) => match values.get(name) {
                        Some(v) => value.push_str(v),
                        None => {
                            return Err(format!("environment variable `{k}` names secret `{name}`, which is not set"))
                        }
                    },
                    Piece::Param(name) => {
                        return Err(format!("environment variable `{k}` holds an unsubstituted `{{{name}}}`"))
                    }
                }
            }
            out.push((k.clone(), value));
        }
        Ok(out)
    }

    /// Checks what an attempt would run, after parameters were substituted: a program to
    /// run, no NUL byte in any argument, variable or workdir (no process could be started
    /// with one), variable names that are not empty and hold no `=`, a workdir that stays in
    /// the sandbox (lexically; the resolved path is checked by whoever can read the
    /// folder), retries within [`MAX_RETRIES`] and a timeout above zero.
    ///
    /// The message names what is wrong and is fit to show to a user.
    pub fn validate(&self) -> Result<(), String> {
        if let JobKind::Process { command } = &self.kind {
            if command.first().is_none_or(|p| p.is_empty()) {
                return Err("`command` is empty; its first element is the program to run".into());
            }
            if let Some(i) = command.iter().position(|a| a.contains('\0')) {
                return Err(format!(
                    "`command` element {} contains a NUL byte, which no program argument can hold",
                    i + 1
                ));
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(format!(
                    "invalid environment variable name `{}`; names may not be empty or contain `=` or a NUL byte",
                    k.escape_debug()
                ));
            }
            if v.contains('\0') {
                return Err(format!(
                    "environment variable `{k}` contains a NUL byte, which no environment value can hold"
                ));
            }
        }
        for (k, v) in &self.secret_env {
            if k.is_empty() || k.contains(['=', '\0']) || self.env.contains_key(k) {
                return Err(format!("invalid environment variable name `{}`", k.escape_debug()));
            }
            if v.contains('\0') {
                return Err(format!(
                    "environment variable `{k}` contains a NUL byte, which no environment value can hold"
                ));
            }
            if let Some(name) = secret_placeholders(v)
                .map_err(|m| format!("environment variable `{k}`: {m}"))?
                .iter()
                .find(|n| !is_secret_name(n))
            {
                return Err(format!("environment variable `{k}` names `{name}`, which is no secret name"));
            }
        }
        if let Some(w) = &self.workdir {
            crate::path::SandboxPath::parse(w).map_err(|e| format!("workdir: {e}"))?;
        }
        if self.retries > MAX_RETRIES {
            return Err(format!("retries is {}; the most allowed is {MAX_RETRIES}", self.retries));
        }
        if self.timeout_ms == Some(0) {
            return Err("timeout must be more than zero; leave it out for no timeout".into());
        }
        Ok(())
    }

    /// Delay before retry number `retry` (1 for the first retry): the backoff doubles each
    /// time, capped at [`MAX_RETRY_BACKOFF`].
    pub fn backoff_before_retry(&self, retry: u32) -> Duration {
        let base = Duration::from_millis(self.retry_backoff_ms);
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        base.checked_mul(factor).unwrap_or(MAX_RETRY_BACKOFF).min(MAX_RETRY_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOAD: &str = r#"
description = "load the day's orders"
command = ["python3", "scripts/load.py", "--day", "{day}"]
timeout = "30m"
retries = 2
retry_backoff = "10s"
on_node_loss = "retry"
max_concurrent = 1
[params.day]
default = "today"
[allocation]
kind = "any"
"#;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_the_design_example() {
        let job = JobSpec::parse(LOAD).unwrap();
        assert_eq!(job.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(job.retries, 2);
        assert_eq!(job.max_concurrent, Some(1));
        let run = job.resolve(&job.bind_params(&params(&[("day", "2026-01-02")])).unwrap());
        assert_eq!(
            run.kind,
            JobKind::Process {
                command: vec!["python3".into(), "scripts/load.py".into(), "--day".into(), "2026-01-02".into()]
            }
        );
        let run = job.resolve(&job.bind_params(&BTreeMap::new()).unwrap());
        let JobKind::Process { command } = run.kind else { panic!() };
        assert_eq!(command[3], "today");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let e = JobSpec::parse("command = [\"true\"]\nretries = \"two\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 11), "{e}");
        let e = JobSpec::parse("command = [\"true\"]\ncolour = 1\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("colour"), "{e}");
        let e = JobSpec::parse("command = [\"echo\", \"{who}\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 20), "{e}");
        assert!(e.message.contains("[params.who]"), "{e}");
        let e = JobSpec::parse("command = [\"true\"\n").unwrap_err();
        assert!(e.line >= 1 && !e.message.is_empty());
        let e = JobSpec::parse("command = [\"true\"]\ntimeout = \"soon\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 11), "{e}");
        let e = JobSpec::parse("command = [\"true\"]\non_node_loss = \"maybe\"\n").unwrap_err();
        assert!(e.message.contains("retry"), "{e}");
    }

    #[test]
    fn kinds_and_allocation() {
        assert_eq!(JobSpec::parse("kind = \"noop\"").unwrap().kind, JobKind::Noop);
        assert!(JobSpec::parse("kind = \"noop\"\ncommand=[\"x\"]").is_err());
        assert!(JobSpec::parse("description = \"x\"").unwrap_err().message.contains("missing `command`"));
        let j = JobSpec::parse("command=[\"x\"]\n[allocation]\nkind=\"tags\"\ntags=[\"etl\"]").unwrap();
        assert_eq!(j.allocation, Allocation::Tags { tags: vec!["etl".into()] });
        assert!(JobSpec::parse("command=[\"x\"]\n[allocation]\nkind=\"nodes\"").is_err());
        assert!(JobSpec::parse("command=[\"x\"]\n[allocation]\nkind=\"partitioned\"").is_err());
        let j = JobSpec::parse("command=[\"x\"]\n[allocation]\nkind=\"partitioned\"\nsandbox=\"parts\"").unwrap();
        assert_eq!(j.allocation, Allocation::Partitioned { sandbox: "parts".into() });
        assert!(JobSpec::parse("command=[\"x\"]\n[allocation]\nkind=\"any\"\nsandbox=\"parts\"").is_err());
        assert!(JobSpec::parse("command=[\"x\"]\nmax_concurrent = 0").is_err());
        assert!(JobSpec::parse("command=[\"x\"]\n[env]\nSHOAL_X = \"1\"").is_err());
    }

    #[test]
    fn hostile_values_are_refused_with_their_position() {
        let e = JobSpec::parse("command = [\"true\"]\ntimeout = \"18446744073709551s 616ms\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 11), "{e}");
        assert!(e.message.contains("too long"), "{e}");
        let e = JobSpec::parse("command = [\"true\"]\nretry_backoff = \"18446744073709551616s\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = JobSpec::parse("command = [\"true\"]\nretries = 4294967295\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 11), "{e}");
        assert!(e.message.contains("at most") || e.message.contains("most allowed is 100"), "{e}");
        assert_eq!(JobSpec::parse("command = [\"true\"]\nretries = 100\n").unwrap().retries, MAX_RETRIES);
        let e = JobSpec::parse("command = [\"echo\", \"a\\u0000b\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 20), "{e}");
        assert!(e.message.contains("NUL"), "{e}");
        let e = JobSpec::parse("command = [\"true\"]\n[env]\nA = \"x\\u0000\"\n").unwrap_err();
        assert!(e.message.contains("NUL"), "{e}");
        assert!(JobSpec::parse("command = [\"true\"]\n[env]\n\"A\\u0000\" = \"x\"\n").is_err());
        assert!(JobSpec::parse("command = [\"true\"]\n[env]\n\"A=B\" = \"x\"\n").is_err());
        assert!(JobSpec::parse("command = [\"true\"]\n[env]\n\"\" = \"x\"\n").is_err());
        for w in ["../x", "/etc", "a\\u0000b"] {
            assert!(JobSpec::parse(&format!("command = [\"true\"]\nworkdir = \"{w}\"\n")).is_err(), "{w}");
        }
    }

    #[test]
    fn resolved_specs_are_validated() {
        // Templates are fine; the values substituted into them are not.
        let job = JobSpec::parse(
            "command = [\"echo\", \"{a}\"]\nworkdir = \"{w}\"\n[env]\nX = \"{a}\"\n[params.a]\ndefault = \"ok\"\n[params.w]\ndefault = \"sub\"\n",
        )
        .unwrap();
        let run = |pairs: &[(&str, &str)]| job.resolve(&job.bind_params(&params(pairs)).unwrap());
        assert_eq!(run(&[]).validate(), Ok(()));
        assert!(run(&[("a", "x\0y")]).validate().unwrap_err().contains("NUL"));
        for w in ["../x", "/etc", "a/../../b", "a\0b"] {
            assert!(run(&[("w", w)]).validate().unwrap_err().starts_with("workdir"), "{w}");
        }
        let mut r = RunSpec::inline(vec!["true".into()]);
        assert_eq!(r.validate(), Ok(()));
        r.retries = MAX_RETRIES + 1;
        assert!(r.validate().is_err());
        r.retries = 0;
        r.timeout_ms = Some(0);
        assert!(r.validate().is_err());
        r.timeout_ms = None;
        for k in ["", "A=B", "A\0"] {
            let mut r = r.clone();
            r.env.insert(k.into(), "v".into());
            assert!(r.validate().is_err(), "{k:?}");
        }
        r.kind = JobKind::Process { command: vec!["sh".into(), "\0".into()] };
        assert!(r.validate().is_err());
        r.kind = JobKind::Process { command: vec![String::new()] };
        assert!(r.validate().is_err());
    }

    #[test]
    fn params_missing_and_unknown() {
        let job = JobSpec::parse("command=[\"echo\",\"{a}\"]\n[params.a]\nrequired = true\n").unwrap();
        assert_eq!(job.bind_params(&BTreeMap::new()), Err(ParamError::Missing("a".into())));
        let e = job.bind_params(&params(&[("a", "1"), ("b", "2")])).unwrap_err();
        assert!(e.to_string().contains("`b`") && e.to_string().contains("`a`"), "{e}");
    }

    /// Secrets are named in `env` values only, kept as placeholders through parameter
    /// substitution (a parameter's value never names one), and rendered by the node.
    #[test]
    fn secrets_stay_placeholders_until_the_node_renders_them() {
        let text = "command = [\"sh\"]\n[env]\nDB = \"postgres://u:{secret.DB_PASS}@{host}/x\"\nPLAIN = \"{host}\"\nLIT = \"{{secret.NO}}\"\n[params.host]\ndefault = \"h\"\n";
        let spec = JobSpec::parse(text).unwrap();
        let r = spec.resolve(&params(&[("host", "{secret.OTHER}")]));
        assert_eq!(r.env.get("PLAIN").map(String::as_str), Some("{secret.OTHER}"));
        assert_eq!(r.env.get("LIT").map(String::as_str), Some("{secret.NO}"));
        assert_eq!(
            r.secret_env.get("DB").map(String::as_str),
            Some("postgres://u:{secret.DB_PASS}@{{secret.OTHER}}/x")
        );
        assert_eq!(r.secret_names().into_iter().collect::<Vec<_>>(), ["DB_PASS"]);
        r.validate().unwrap();
        let values: BTreeMap<String, String> = [("DB_PASS".to_owned(), "p{w}".to_owned())].into();
        assert_eq!(
            r.render_secret_env(&values).unwrap(),
            [("DB".to_owned(), "postgres://u:p{w}@{secret.OTHER}/x".to_owned())]
        );
        let e = r.render_secret_env(&BTreeMap::new()).unwrap_err();
        assert!(e.contains("`DB_PASS`"), "{e}");
        // A stored spec without secrets reads and writes as before.
        let json = serde_json::to_string(&RunSpec::inline(vec!["x".into()])).unwrap();
        assert!(!json.contains("secret_env"), "{json}");

        // Not in arguments or folders, and names are checked, with their position.
        let e = JobSpec::parse("command = [\"echo\", \"{secret.A}\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 20));
        assert!(e.message.contains("only `env` values may name secrets"), "{e}");
        assert!(JobSpec::parse("command = [\"true\"]\nworkdir = \"{secret.A}\"\n").is_err());
        let e = JobSpec::parse("command = [\"true\"]\n[env]\nA = \"{secret.9x}\"\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("names no valid secret"), "{e}");
        assert!(JobSpec::parse("command = [\"true\"]\n[env]\nA = \"{secret.}\"\n").is_err());
        assert!(is_secret_name("Db_pass-2") && !is_secret_name("_x") && !is_secret_name(&"a".repeat(65)));
    }

    #[test]
    fn braces_escape() {
        let v = params(&[("x", "1")]);
        assert_eq!(substitute("{{x}} {x}", &v).unwrap(), "{x} 1");
        assert!(substitute("{x", &v).is_err());
        assert!(substitute("x}", &v).is_err());
        assert!(substitute("{y}", &v).is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut r = RunSpec::inline(vec!["x".into()]);
        r.retry_backoff_ms = 1000;
        assert_eq!(r.backoff_before_retry(1), Duration::from_secs(1));
        assert_eq!(r.backoff_before_retry(3), Duration::from_secs(4));
        assert_eq!(r.backoff_before_retry(64), MAX_RETRY_BACKOFF);
    }

    proptest! {
        // Substituting values that themselves contain braces never re-expands them.
        #[test]
        fn substitution_is_one_pass(v in ".{0,20}") {
            let vals = params(&[("a", &v)]);
            prop_assert_eq!(substitute("<{a}>", &vals).unwrap(), format!("<{v}>"));
        }

        // The parser never panics, and every error has a position inside the text.
        #[test]
        fn parse_never_panics(text in "[a-z_=\\[\\]\"{}\\n .0-9]{0,80}") {
            if let Err(e) = JobSpec::parse(&text) {
                prop_assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1);
            }
        }

        #[test]
        fn line_col_agrees_with_lines(text in "[a-z\\n]{0,40}", off in 0usize..40) {
            let off = off.min(text.len());
            let (line, col) = line_col(&text, off);
            let prefix = &text[..off];
            prop_assert_eq!(line, prefix.split('\n').count());
            prop_assert_eq!(col, prefix.split('\n').next_back().unwrap().len() + 1);
        }
    }
}
