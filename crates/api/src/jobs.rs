//! A sandbox's job made ready to start by something other than a request: a schedule's
//! firing or a listener's event. The API checks the job when the schedule or listener is
//! defined (so a missing sandbox or job is a 422 then, not a silent failure later), and
//! each node's trigger workers read it again at every firing, so an edited job file is
//! picked up without touching the schedule.

use crate::error::{ApiError, ApiResult};
use crate::executions::load_job;
use shoal_core::{Allocation, JobSpec, ParamError, SandboxKind, SandboxPath};
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

/// The sandbox named by a schedule or listener, which must exist and hold job files.
pub async fn sandbox(store: &Store, name: &str, what: &str) -> ApiResult<SandboxRow> {
    let s = store.get_sandbox(name).await?.ok_or_else(|| {
        ApiError::unknown_sandbox(format!(
            "{what} names sandbox `{name}`, which does not exist; create it first or check the name"
        ))
    })?;
    if s.kind == SandboxKind::Partitioned {
        return Err(ApiError::invalid_request(format!(
            "sandbox `{name}` is partitioned and holds no job files; name the shared sandbox that holds the job"
        )));
    }
    Ok(s)
}

/// Reads a job file of `sandbox`, which this node must be able to read ([`readable_here`]).
pub async fn load(sandbox: SandboxRow, job: &str) -> ApiResult<JobRef> {
    let path = SandboxPath::parse(job).map_err(|e| ApiError::invalid_path(format!("job: {e}")))?;
    let spec = load_job(&sandbox.root, &path).await?;
    if matches!(spec.allocation, Allocation::Partitioned { .. }) {
        return Err(ApiError::invalid_request(format!(
            "job `{path}` has a partitioned allocation; schedules and listeners cannot start partitioned jobs yet, submit it through the API instead"
        )));
    }
    Ok(JobRef { sandbox, path, spec })
}

impl JobRef {
    /// Checks parameter names against the job's (values may still hold templates).
    pub fn check_params(&self, params: &BTreeMap<String, String>) -> ApiResult<()> {
        self.spec.bind_params(params).map(|_| ()).map_err(param_error)
    }

    /// The execution to enqueue with these parameter values.
    pub fn execution(&self, params: &BTreeMap<String, String>) -> ApiResult<NewExecution> {
        let bound = self.spec.bind_params(params).map_err(param_error)?;
        let spec = self.spec.resolve(&bound);
        // A value substituted from an event (a file name, a webhook's payload) may carry what
        // no process can take (a NUL byte, a path out of the sandbox): refuse it here, as a
        // submission through the API is, rather than fail at spawn.
        spec.validate()
            .map_err(|m| ApiError::invalid_parameter(format!("job `{}` with these parameters: {m}", self.path)))?;
        let pinned_node = match self.sandbox.kind {
            SandboxKind::Local => self.sandbox.node_id.clone(),
            SandboxKind::Shared | SandboxKind::Partitioned => None,
        };
        Ok(NewExecution {
            sandbox: Some(self.sandbox.name.clone()),
            job: Some(self.path.to_string()),
            params: bound,
            spec,
            pinned_node,
            idempotency: None,
            run_after: None,
        })
    }
}

fn param_error(e: ParamError) -> ApiError {
    match &e {
        ParamError::Missing(_) => ApiError::missing_parameter(e.to_string()),
        ParamError::Unknown { .. } => ApiError::unknown_parameter(e.to_string()),
    }
}

/// Checks the sandbox and job a schedule or listener (`what`) names, and its parameter
/// names. `Ok(Some(holder))`: the job file is on another node, which must check it.
pub(crate) async fn check_job(
    state: &crate::AppState,
    sandbox_name: &str,
    job: &str,
    params: &BTreeMap<String, String>,
    what: &str,
) -> ApiResult<Option<String>> {
    let s = sandbox(&state.store, sandbox_name, what).await?;
    if !readable_here(&s, &state.node.id) {
        return Ok(s.node_id.clone());
    }
    let job = load(s, job).await.map_err(|e| {
        if e.code == "unknown_job" {
            ApiError::unknown_job(format!("{what} names a job that does not exist: {}", e.message))
        } else {
            e
        }
    })?;
    job.check_params(params)?;
    Ok(None)
}

/// Parameters of a request body: strings, numbers and booleans, as strings.
pub fn params_from_json(params: &BTreeMap<String, serde_json::Value>) -> ApiResult<BTreeMap<String, String>> {
    params
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
            serde_json::Value::Number(n) => Ok((k.clone(), n.to_string())),
            serde_json::Value::Bool(b) => Ok((k.clone(), b.to_string())),
            _ => Err(ApiError::invalid_parameter(format!("parameter `{k}` must be a string, number or boolean"))),
        })
        .collect()
}
