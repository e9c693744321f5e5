//! From the domain's types (core and store) to the wire model (`shoal-wire`), where they are
//! not the same type: an execution's state and reason, a sandbox's and a listener's kind, an
//! allocation and a node-loss policy, a firing's and an event's outcome and reason, a node's
//! registry state and a cron field are the wire's enums in the core already (the store parses
//! their names when it reads a row), and a node's administrative state becomes the wire's
//! through the core's `From`. Every match here is exhaustive, so a state added to the domain
//! does not compile until the wire says how it is shown.

use crate::error::{ApiError, ApiResult};
use shoal_wire as wire;

/// A name kept inside a listener's stored config (a file or cluster event), read into its
/// wire enum. A name the wire does not know is a row written by a newer version or a bug: it
/// is answered 500 naming the value, never shown as something else.
pub fn named<T: serde::de::DeserializeOwned>(what: &str, name: &str) -> ApiResult<T> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| ApiError::internal(format!("the store holds {what} `{name}`, which this version does not know")))
}

pub fn misfire(m: shoal_core::schedule::Misfire) -> (wire::MisfirePolicy, Option<i64>) {
    use shoal_core::schedule::Misfire as M;
    match m {
        M::Skip => (wire::MisfirePolicy::Skip, None),
        M::Once => (wire::MisfirePolicy::Once, None),
        M::All { max } => (wire::MisfirePolicy::All, Some(i64::from(max))),
    }
}

pub fn overlap(o: shoal_core::schedule::Overlap) -> wire::OverlapPolicy {
    use shoal_core::schedule::Overlap as O;
    match o {
        O::Allow => wire::OverlapPolicy::Allow,
        O::Skip => wire::OverlapPolicy::Skip,
        O::Queue => wire::OverlapPolicy::Queue,
        O::Replace => wire::OverlapPolicy::Replace,
    }
}
