//! A sandbox's job made ready to start by something other than a request: a schedule's
//! firing or a listener's event. The API checks the job when the schedule or listener is
//! defined (so a missing sandbox or job is refused then, not a silent failure later), and
//! each node's trigger workers read it again at every firing, so an edited job file is
//! picked up without touching the schedule.

use crate::{job_file, DomainError, Result};
use shoal_core::{Allocation, JobSpec, SandboxKind, SandboxPath};
use shoal_store::{NewExecution, SandboxRow, Store};
use std::collections::BTreeMap;

/// A job file read and checked.
#[derive(Clone, Debug)]
pub struct JobRef {
    pub sandbox: SandboxRow,
    pub path: SandboxPath,
    pub spec: JobSpec,
}

/// Whether node `node` can read the job files of `sandbox`: every node for a shared one, the
/// holder only for a local one.
pub fn readable_here(sandbox: &SandboxRow, node: &str) -> bool {
    match sandbox.kind {
        SandboxKind::Shared => true,
        SandboxKind::Local => sandbox.node_id.as_deref() == Some(node),
        SandboxKind::Partitioned => false,
    }
}

/// The sandbox named by a schedule or listener (`what`), which must exist and hold job files.
pub async fn sandbox(store: &Store, name: &str, what: &str) -> Result<SandboxRow> {
    let s = store.get_sandbox(name).await?.ok_or_else(|| {
        DomainError::UnknownSandbox(format!(
            "{what} names sandbox `{name}`, which does not exist; create it first or check the name"
        ))
    })?;
    if s.kind == SandboxKind::Partitioned {
        return Err(DomainError::InvalidRequest(format!(
            "sandbox `{name}` is partitioned and holds no job files; name the shared sandbox that holds the job"
        )));
    }
    Ok(s)
}

/// Reads a job file of `sandbox`, which this node must be able to read ([`readable_here`]).
pub async fn load(sandbox: SandboxRow, job: &str) -> Result<JobRef> {
    let path = SandboxPath::parse(job).map_err(|e| DomainError::InvalidPath(format!("job: {e}")))?;
    let spec = job_file::load(&sandbox.root, &path).await?;
    if matches!(spec.allocation, Allocation::Partitioned { .. }) {
        return Err(DomainError::InvalidRequest(format!(
            "job `{path}` has a partitioned allocation; schedules and listeners cannot start partitioned jobs yet, submit it through the API instead"
        )));
    }
    Ok(JobRef { sandbox, path, spec })
}

impl JobRef {
    /// Checks parameter names against the job's (values may still hold templates).
    pub fn check_params(&self, params: &BTreeMap<String, String>) -> Result<()> {
        self.spec.bind_params(params)?;
        Ok(())
    }

    /// The execution to enqueue with these parameter values.
    pub fn execution(&self, params: &BTreeMap<String, String>) -> Result<NewExecution> {
        let bound = self.spec.bind_params(params)?;
        let spec = self.spec.resolve(&bound);
        // A value substituted from an event (a file name, a webhook's payload) may carry what
        // no process can take (a NUL byte, a path out of the sandbox): refuse it here, as a
        // submission through the API is, rather than fail at spawn.
        spec.validate()
            .map_err(|m| DomainError::InvalidParameter(format!("job `{}` with these parameters: {m}", self.path)))?;
        Ok(NewExecution {
            sandbox: Some(self.sandbox.name.clone()),
            job: Some(self.path.to_string()),
            params: bound,
            spec,
            pinned_node: crate::pinned_node(&self.sandbox),
            idempotency: None,
            run_after: None,
        })
    }
}

/// Checks the sandbox and job a schedule or listener (`what`) names, and its parameter
/// names, as node `here`. `Ok(Some(holder))`: the job file is on another node, which must
/// check it.
pub async fn check_job(
    store: &Store,
    here: &str,
    sandbox_name: &str,
    job: &str,
    params: &BTreeMap<String, String>,
    what: &str,
) -> Result<Option<String>> {
    let s = sandbox(store, sandbox_name, what).await?;
    if !readable_here(&s, here) {
        return Ok(s.node_id.clone());
    }
    let job = load(s, job).await.map_err(|e| match e {
        DomainError::UnknownJob(m) => DomainError::UnknownJob(format!("{what} names a job that does not exist: {m}")),
        other => other,
    })?;
    job.check_params(params)?;
    Ok(None)
}
