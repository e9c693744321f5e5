//! shoal's wire model: the request, response and error bodies of the HTTP API under
//! `/api/v1`, as serde types.
//!
//! The server's handlers return these types, the client (`shoal-client`) returns them, and the
//! CLI reads their fields; the OpenAPI document served at `/api/v1/openapi.json` is generated
//! from them (their doc comments are its descriptions). A field is spelled once, here.
//!
//! Times are RFC 3339 strings in UTC with milliseconds (`2026-12-01T10:00:00.000Z`), except
//! where a field says it is in another zone. Ids are UUIDv7 strings, so they sort by creation.

mod error;
mod executions;
mod listeners;
mod nodes;
mod sandboxes;
mod schedules;

pub use error::*;
pub use executions::*;
pub use listeners::*;
pub use nodes::*;
pub use sandboxes::*;
pub use schedules::*;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A job parameter's value in a request: strings are taken as they are; numbers and booleans
/// are turned into strings. Anything else is refused (422 `invalid_parameter`).
pub type ParamValues = std::collections::BTreeMap<String, serde_json::Value>;

/// `GET /health/live`: the process answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Live {
    /// Always `live`.
    #[schema(value_type = String, pattern = "^live$")]
    pub status: String,
}

/// `GET /health/ready`: the node takes traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(value_type = String, pattern = "^ready$")]
    pub status: String,
    /// This node's id.
    pub node: String,
}

/// A job parameter's value in a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ParamValue {
    String(String),
    #[schema(value_type = f64)]
    Number(serde_json::Number),
    Bool(bool),
}

/// Reads `null` as the type's default, so optional maps may be sent as `null`.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads an optional whole number that JSON may spell as `3` or `3.0` (JSON Schema's
/// `integer` admits both); a fraction or a number out of range is refused.
pub(crate) fn whole_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let whole = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => Some(i),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
        _ => None,
    };
    let whole = whole.ok_or_else(|| D::Error::custom(format!("invalid value `{n}`, expected a whole number")))?;
    T::try_from(whole).map(Some).map_err(|_| D::Error::custom(format!("number `{n}` is out of range")))
}
