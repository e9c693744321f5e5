//! A sandbox's job made ready to start by something other than a request: a schedule's
//! firing or a listener's event. The API checks the job when the schedule or listener is
//! defined (so a missing sandbox or job is refused then, not a silent failure later), and
//! each node's trigger workers read it again at every firing, so an edited job file is
//! picked up without touching the schedule.

use crate::{job_file, DomainError, Result};
use shoal_core::{Allocation, JobSpec, SandboxKind, SandboxPath};
use shoal_store::{NewExecution, Origin, SandboxRow, Store};
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

/// A file listener's rule: one node must both see the watched folder (of sandbox `watched`)
/// and read the job file it starts (of sandbox `job_sandbox`, when the definition names
/// one), so two local sandboxes must be held by the same node.
pub async fn check_file_listener(store: &Store, watched: &str, job_sandbox: Option<&str>) -> Result<()> {
    let watched = sandbox(store, watched, "on_file").await?;
    let Some(job_sandbox) = job_sandbox else { return Ok(()) };
    let runs = sandbox(store, job_sandbox, "the listener").await?;
    if let (Some(a), Some(b)) = (crate::pinned_node(&watched), crate::pinned_node(&runs)) {
        if a != b {
            return Err(DomainError::InvalidRequest(format!(
                "the watched sandbox `{}` is local to node {a} but the job's sandbox `{}` is local to node {b}; no node can do both, so keep the job in a shared sandbox or on {a}",
                watched.name, runs.name
            )));
        }
    }
    Ok(())
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

    /// The execution to enqueue with these parameter values, for `origin`.
    pub fn execution(&self, params: &BTreeMap<String, String>, origin: Origin) -> Result<NewExecution> {
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
            origin,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file listener cannot watch a folder on one node and start a job on another.
    #[tokio::test]
    async fn a_file_listener_needs_one_node_for_its_folder_and_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("shoal.db").display()), 1).await.unwrap();
        for (name, kind, node) in [
            ("on-n1", SandboxKind::Local, Some("n1")),
            ("also-n1", SandboxKind::Local, Some("n1")),
            ("on-n2", SandboxKind::Local, Some("n2")),
            ("shared", SandboxKind::Shared, None),
        ] {
            store.create_sandbox(name, kind, "/srv", node, &[]).await.unwrap();
        }
        for (watched, runs) in
            [("on-n1", None), ("on-n1", Some("also-n1")), ("on-n1", Some("shared")), ("shared", Some("on-n2"))]
        {
            check_file_listener(&store, watched, runs).await.unwrap_or_else(|e| panic!("{watched} {runs:?}: {e}"));
        }
        match check_file_listener(&store, "on-n1", Some("on-n2")).await {
            Err(DomainError::InvalidRequest(m)) => assert_eq!(
                m,
                "the watched sandbox `on-n1` is local to node n1 but the job's sandbox `on-n2` is local to node n2; \
                 no node can do both, so keep the job in a shared sandbox or on n1"
            ),
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
        assert!(matches!(
            check_file_listener(&store, "on-n1", Some("none")).await,
            Err(DomainError::UnknownSandbox(_))
        ));
    }
}
