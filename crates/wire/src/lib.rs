//! shoal's wire model: the request, response and error bodies of the HTTP API under
//! `/api/v1`, as serde types.
//!
//! The server's handlers return these types, the client (`shoal-client`) returns them, and the
//! CLI reads their fields; the OpenAPI document served at `/api/v1/openapi.json` is generated
//! from them (their doc comments are its descriptions). A field is spelled once, here.
//!
//! Times are RFC 3339 strings in UTC with milliseconds (`2026-12-01T10:00:00.000Z`), except
//! where a field says it is in another zone. Ids are UUIDv7 strings, so they sort by creation.

/// The names of an enum whose values the store keeps as text and the API sends: `ALL`,
/// `as_str` (the serde name, spelled again so that it is a `&'static str`; a test holds the
/// two equal), `parse`, `Display`, and comparison with a name.
macro_rules! names {
    ($t:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $t {
            pub const ALL: [$t; [$($name),+].len()] = [$($t::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($t::$variant => $name),+ }
            }

            pub fn parse(s: &str) -> Option<$t> {
                match s { $($name => Some($t::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: Serialize + Copy + PartialEq + std::fmt::Debug>(
        all: &[T],
        as_str: fn(T) -> &'static str,
        parse: fn(&str) -> Option<T>,
    ) {
        for &v in all {
            assert_eq!(serde_json::to_value(v).unwrap(), as_str(v), "{v:?}");
            assert_eq!(parse(as_str(v)), Some(v));
        }
    }

    /// A name the store keeps is the name the API sends.
    #[test]
    fn names_are_the_serde_names() {
        check(&ExecutionState::ALL, ExecutionState::as_str, ExecutionState::parse);
        check(&ExecutionReason::ALL, ExecutionReason::as_str, ExecutionReason::parse);
        check(&FiringOutcome::ALL, FiringOutcome::as_str, FiringOutcome::parse);
        check(&FiringReason::ALL, FiringReason::as_str, FiringReason::parse);
        check(&EventOutcome::ALL, EventOutcome::as_str, EventOutcome::parse);
        check(&EventReason::ALL, EventReason::as_str, EventReason::parse);
        check(&ListenerKind::ALL, ListenerKind::as_str, ListenerKind::parse);
        check(&NodeState::ALL, NodeState::as_str, NodeState::parse);
        check(&CronField::ALL, CronField::as_str, CronField::parse);
        assert_eq!(FiringReason::parse("bogus"), None);
    }
}
