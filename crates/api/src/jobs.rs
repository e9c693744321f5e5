//! HTTP glue for the jobs that schedules and listeners start: the rules (the sandbox and job
//! must exist, the parameter names must fit) are `shoal_service::jobs`'s; this reads the
//! parameters of a request body and checks a definition's job as this node.

use crate::error::{ApiError, ApiResult};
use std::collections::BTreeMap;

/// Checks the sandbox and job a schedule or listener (`what`) names, and its parameter
/// names. `Ok(Some(holder))`: the job file is on another node, which must check it (the
/// request is forwarded there).
pub(crate) async fn check_job(
    state: &crate::AppState,
    sandbox: &str,
    job: &str,
    params: &BTreeMap<String, String>,
    what: &str,
) -> ApiResult<Option<String>> {
    Ok(shoal_service::jobs::check_job(&state.store, &state.node.id, sandbox, job, params, what).await?)
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
