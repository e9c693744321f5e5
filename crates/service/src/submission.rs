//! A submission checked and made ready to enqueue: a job file of a sandbox with its
//! parameters bound, or an inline command with its settings checked; where it may run (an
//! allocation no node of the cluster could take is refused); and a partitioned job fanned
//! out into one child per partition.

use crate::job_file::{self, check_workdir_resolves_inside};
use crate::{DomainError, Result};
use shoal_core::{
    Allocation, FencingToken, OnNodeLoss, Partition, RunSpec, SandboxKind, SandboxName, SandboxPath, Trigger,
};
use shoal_store::{NewExecution, Origin, SandboxRow, Store, StoreError, Submitted, Submitter};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a client asks to run, its values already read from the request.
#[derive(Clone, Debug, Default)]
pub struct Submission {
    pub sandbox: Option<String>,
    /// A job file of `sandbox`.
    pub job: Option<String>,
    /// Or a command to run as it is.
    pub command: Option<Vec<String>>,
    pub params: BTreeMap<String, String>,
    /// Settings of an inline command; a job file sets its own.
    pub inline: InlineSettings,
    pub priority: Option<i32>,
    /// `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
    /// Who asks, and through what.
    pub origin: Origin,
}

/// An inline command's settings, as given (durations still text).
#[derive(Clone, Debug, Default)]
pub struct InlineSettings {
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub retry_backoff: Option<String>,
    pub on_node_loss: Option<OnNodeLoss>,
    pub allocation: Option<Allocation>,
    pub allow_pending: Option<bool>,
}

impl InlineSettings {
    fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.workdir.is_none()
            && self.timeout.is_none()
            && self.retries.is_none()
            && self.retry_backoff.is_none()
            && self.on_node_loss.is_none()
            && self.allocation.is_none()
            && self.allow_pending.is_none()
    }
}

/// What to do with a submission.
#[derive(Debug)]
pub enum Prepared {
    /// The job file is only on `holder`, which holds local sandbox `sandbox`: that node
    /// must read it and enqueue.
    Elsewhere { sandbox: String, holder: String },
    /// Checked: enqueue it.
    Ready(Box<Plan>),
}

/// The rows a submission enqueues.
#[derive(Debug)]
pub enum Plan {
    One(NewExecution),
    /// A partitioned job: the parent and one child per partition (named), pinned to the
    /// partition's node.
    Partitioned {
        parent: NewExecution,
        children: Vec<(String, NewExecution)>,
    },
}

impl Plan {
    /// Enqueues the plan: a single execution through group commit, a partitioned one with
    /// its children in one transaction. Asked for by a running attempt (`attempt`: its
    /// execution and fencing token), it is fenced as the attempt's other writes are: accepted
    /// only while that attempt is current, checked in the inserting transaction
    /// ([`shoal_store::StoreError::Fenced`] if not).
    pub async fn submit(
        &self,
        store: &Store,
        submitter: &Submitter,
        attempt: Option<(&str, FencingToken)>,
    ) -> Result<Submitted> {
        Ok(match (self, attempt) {
            (Plan::One(new), Some((parent, fence))) => store.submit_for_attempt(parent, fence, new).await?,
            (Plan::One(new), None) => submitter.submit(new.clone()).await?,
            (Plan::Partitioned { .. }, Some(_)) => {
                return Err(invalid("a running attempt cannot start a partitioned job; submit it with an API token"))
            }
            (Plan::Partitioned { parent, children }, None) => store.submit_partitioned(parent, children).await?,
        })
    }
}

/// Checks `sub` as node `here` and says what to enqueue, or which node must.
pub async fn prepare(store: &Store, here: &str, sub: Submission) -> Result<Prepared> {
    let Submission { sandbox: sandbox_name, job, command, mut params, inline, priority, idempotency, origin } = sub;
    let sandbox = match &sandbox_name {
        Some(name) => Some(named_sandbox(store, name).await?),
        None => None,
    };
    let pinned_node = sandbox.as_ref().and_then(crate::pinned_node);
    if let Some(s) = sandbox.as_ref().filter(|s| s.kind == SandboxKind::Partitioned) {
        return Err(DomainError::InvalidRequest(format!(
            "sandbox `{}` is partitioned: keep job files in a shared sandbox and run them with allocation kind `partitioned` and sandbox = \"{}\"",
            s.name, s.name
        )));
    }
    let (job_path, mut spec) = match (job, command) {
        (Some(_), Some(_)) => return Err(invalid("give either `job` or `command`, not both")),
        (None, None) => {
            return Err(invalid("give `job` (with `sandbox`) to run a job file, or `command` to run a command"))
        }
        (Some(job), None) => {
            let Some(sandbox) = &sandbox else {
                return Err(invalid("`job` needs `sandbox`: the sandbox that holds the job file"));
            };
            if !inline.is_empty() {
                return Err(invalid(
                    "`env`, `workdir`, `timeout`, `retries`, `retry_backoff`, `on_node_loss`, `allocation` and `allow_pending` are set in the job file, not in the request; only `params` and `priority` go with `job`",
                ));
            }
            if let Some(holder) = held_elsewhere(sandbox, here) {
                return Ok(Prepared::Elsewhere { sandbox: sandbox.name.clone(), holder: holder.to_owned() });
            }
            let path = SandboxPath::parse(&job).map_err(|e| DomainError::InvalidPath(e.to_string()))?;
            let spec = job_file::load(&sandbox.root, &path).await?;
            let bound = spec.bind_params(&params)?;
            let resolved = spec.resolve(&bound);
            params = bound;
            // The file was valid, so anything wrong now came in through a parameter value.
            resolved
                .validate()
                .map_err(|m| DomainError::InvalidParameter(format!("job `{path}` with these parameters: {m}")))?;
            if let Some(w) = &resolved.workdir {
                check_workdir_resolves_inside(&sandbox.root, w)
                    .await
                    .map_err(|message| DomainError::JobWorkdirOutside { job: path.to_string(), message })?;
            }
            crate::secrets::check_known(store, Some(&sandbox.name), &path.to_string(), &resolved).await?;
            (Some(path.to_string()), resolved)
        }
        (None, Some(command)) => {
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err(invalid("`command` is empty; its first element is the program to run"));
            }
            if !params.is_empty() {
                return Err(DomainError::UnknownParameter(
                    "an inline command takes no `params`; put the values in `command` or `env`".into(),
                ));
            }
            let spec = inline_spec(command, inline, sandbox.as_ref())?;
            if let (Some(w), Some(s)) = (&spec.workdir, &sandbox) {
                // A local sandbox held elsewhere is checked by its holder's runner at start.
                if held_elsewhere(s, here).is_none() {
                    check_workdir_resolves_inside(&s.root, w).await.map_err(DomainError::InvalidRequest)?;
                }
            }
            (None, spec)
        }
    };
    if let Some(p) = priority {
        spec.priority = p;
    }
    if let Allocation::Nodes { nodes } = &spec.allocation {
        if nodes.is_empty() {
            return Err(invalid("allocation `nodes` needs at least one node id"));
        }
    }
    if !spec.allow_pending {
        check_allocation_targets(store, &spec.allocation).await?;
    }
    let partitioned = match &spec.allocation {
        Allocation::Partitioned { sandbox: parts } => Some(partitions_of(store, parts).await?),
        _ => None,
    };
    let new = NewExecution {
        sandbox: sandbox_name,
        job: job_path,
        params,
        spec,
        pinned_node,
        idempotency,
        run_after: None,
        origin,
    };
    let Some((parts, list)) = partitioned else { return Ok(Prepared::Ready(Box::new(Plan::One(new)))) };
    if new.pinned_node.is_some() {
        return Err(invalid(
            "a job of a local sandbox runs on its holder only and cannot be partitioned; keep it in a shared sandbox",
        ));
    }
    let children = fan_out(&new, &parts, &list);
    Ok(Prepared::Ready(Box::new(Plan::Partitioned { parent: new, children })))
}

fn invalid(message: &str) -> DomainError {
    DomainError::InvalidRequest(message.to_owned())
}

/// The sandbox a submission names.
async fn named_sandbox(store: &Store, name: &str) -> Result<SandboxRow> {
    let unknown =
        || DomainError::UnknownSandbox(format!("no sandbox named `{name}`; create it first or check the name"));
    SandboxName::parse(name).map_err(|_| unknown())?;
    match store.get_sandbox(name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) | Err(StoreError::NotFound(_)) => Err(unknown()),
        Err(e) => Err(e.into()),
    }
}

/// The other node that holds `s`, if any: a local sandbox's files are only on its holder.
fn held_elsewhere<'a>(s: &'a SandboxRow, here: &str) -> Option<&'a str> {
    match (&s.kind, &s.node_id) {
        (SandboxKind::Local, Some(node)) if node != here => Some(node),
        _ => None,
    }
}

/// An inline command's run spec, its settings checked.
fn inline_spec(command: Vec<String>, inline: InlineSettings, sandbox: Option<&SandboxRow>) -> Result<RunSpec> {
    if let Some(k) = inline.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0']) || k.starts_with("SHOAL_")) {
        return Err(DomainError::InvalidRequest(format!(
            "invalid environment variable name `{}`; names may not be empty, contain `=` or a NUL byte, or start with `SHOAL_`",
            k.escape_debug()
        )));
    }
    if let Some(w) = &inline.workdir {
        SandboxPath::parse(w).map_err(|e| DomainError::InvalidPath(format!("workdir: {e}")))?;
        if sandbox.is_none() {
            return Err(invalid("`workdir` is relative to a sandbox; give `sandbox` too"));
        }
    }
    let mut spec = RunSpec::inline(command);
    spec.env = inline.env;
    spec.workdir = inline.workdir;
    spec.timeout_ms = duration("timeout", &inline.timeout)?.map(|d| d.as_millis() as u64);
    if spec.timeout_ms == Some(0) {
        return Err(invalid("timeout must be more than zero; leave it out for no timeout"));
    }
    spec.retries = inline.retries.unwrap_or(0);
    if spec.retries > shoal_core::job::MAX_RETRIES {
        return Err(DomainError::InvalidRequest(format!(
            "retries is {}; the most allowed is {}",
            spec.retries,
            shoal_core::job::MAX_RETRIES
        )));
    }
    if let Some(b) = duration("retry_backoff", &inline.retry_backoff)? {
        spec.retry_backoff_ms = b.as_millis() as u64;
    }
    spec.on_node_loss = inline.on_node_loss.unwrap_or_default();
    spec.allocation = inline.allocation.unwrap_or_default();
    spec.allow_pending = inline.allow_pending.unwrap_or(false);
    spec.validate().map_err(DomainError::InvalidRequest)?;
    Ok(spec)
}

fn duration(name: &str, v: &Option<String>) -> Result<Option<Duration>> {
    v.as_ref()
        .map(|t| shoal_core::duration::parse(t).map_err(|m| DomainError::InvalidRequest(format!("{name}: {m}"))))
        .transpose()
}

/// One child of `parent` per partition of sandbox `sandbox`, pinned to the partition's node
/// and told its partition through `SHOAL_PARTITION*`.
pub fn fan_out(parent: &NewExecution, sandbox: &str, partitions: &[Partition]) -> Vec<(String, NewExecution)> {
    partitions
        .iter()
        .map(|p| {
            let mut spec = parent.spec.clone();
            spec.allocation = Allocation::Any;
            spec.env.insert("SHOAL_PARTITION".into(), p.name.clone());
            spec.env.insert("SHOAL_PARTITION_ROOT".into(), p.root.clone());
            spec.env.insert("SHOAL_PARTITIONED_SANDBOX".into(), sandbox.to_owned());
            let child = NewExecution {
                sandbox: parent.sandbox.clone(),
                job: parent.job.clone(),
                params: parent.params.clone(),
                spec,
                pinned_node: Some(p.node.clone()),
                idempotency: None,
                run_after: None,
                // As the store records it: for the parent's principal, from the parent.
                origin: Origin { trigger: Trigger::Partition, reference: None, ..parent.origin.clone() },
            };
            (p.name.clone(), child)
        })
        .collect()
}

/// The partitions a `partitioned` allocation runs on: its sandbox must exist and be partitioned.
async fn partitions_of(store: &Store, name: &str) -> Result<(String, Vec<Partition>)> {
    let s = store.get_sandbox(name).await?.ok_or_else(|| {
        DomainError::UnknownSandbox(format!("allocation `partitioned` names sandbox `{name}`, which does not exist"))
    })?;
    if s.kind != SandboxKind::Partitioned {
        return Err(DomainError::InvalidRequest(format!(
            "allocation `partitioned` names sandbox `{name}`, which is {}, not partitioned",
            s.kind
        )));
    }
    Ok((s.name, s.partitions))
}

/// Refuses an allocation no node of the cluster could ever take (a misspelt node id or tag),
/// rather than queueing work that would wait forever. Nodes that are registered but down
/// count: their work waits for them.
async fn check_allocation_targets(store: &Store, allocation: &Allocation) -> Result<()> {
    let known = || async { store.list_nodes().await.map_err(DomainError::from) };
    match allocation {
        Allocation::Any => Ok(()),
        Allocation::Partitioned { sandbox } => {
            let known = known().await?;
            let (_, parts) = partitions_of(store, sandbox).await?;
            match parts.iter().find(|p| !known.iter().any(|k| k.id == p.node)) {
                None => Ok(()),
                Some(p) => Err(DomainError::UnknownNode(format!(
                    "partition `{}` of sandbox `{sandbox}` is on node `{}`, which has never joined the cluster; fix the sandbox, or set allow_pending = true to queue until it joins",
                    p.name, p.node
                ))),
            }
        }
        Allocation::Nodes { nodes } => {
            let known = known().await?;
            match nodes.iter().find(|n| !known.iter().any(|k| &k.id == *n)) {
                None => Ok(()),
                Some(missing) => Err(DomainError::UnknownNode(format!(
                    "allocation names node `{missing}`, which has never joined the cluster (known nodes: {}); fix the id, or set allow_pending = true to queue until it joins",
                    known.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
        Allocation::Tags { tags } => {
            let known = known().await?;
            if known.iter().any(|k| tags.iter().all(|t| k.tags.contains(t))) {
                return Ok(());
            }
            let missing: Vec<&str> =
                tags.iter().filter(|t| !known.iter().any(|k| k.tags.contains(t))).map(String::as_str).collect();
            let what = if missing.is_empty() {
                format!("no node carries all of the tags {}", tags.join(", "))
            } else {
                format!("no node carries the tag `{}`", missing.join("`, `"))
            };
            Err(DomainError::UnknownTag(format!(
                "allocation needs {what}; fix the tags, or set allow_pending = true to queue until such a node joins"
            )))
        }
    }
}
