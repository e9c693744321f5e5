//! From the domain's types (core and store) to the wire model (`shoal-wire`). Every match
//! here is exhaustive, so a state, policy or kind added to the domain does not compile until
//! the wire says how it is shown.

use crate::error::{ApiError, ApiResult};
use shoal_core::ExecState;
use shoal_wire as wire;

pub fn exec_state(s: ExecState) -> wire::ExecutionState {
    match s {
        ExecState::Queued => wire::ExecutionState::Queued,
        ExecState::Running => wire::ExecutionState::Running,
        ExecState::Succeeded => wire::ExecutionState::Succeeded,
        ExecState::Failed => wire::ExecutionState::Failed,
        ExecState::Cancelled => wire::ExecutionState::Cancelled,
        ExecState::TimedOut => wire::ExecutionState::TimedOut,
    }
}

pub fn node_state(s: shoal_core::placement::NodeState) -> wire::NodeState {
    use shoal_core::placement::NodeState as N;
    match s {
        N::Joining => wire::NodeState::Joining,
        N::Active => wire::NodeState::Active,
        N::Draining => wire::NodeState::Draining,
        N::Suspended => wire::NodeState::Suspended,
    }
}

pub fn sandbox_kind(k: shoal_core::SandboxKind) -> wire::SandboxKind {
    use shoal_core::SandboxKind as K;
    match k {
        K::Shared => wire::SandboxKind::Shared,
        K::Local => wire::SandboxKind::Local,
        K::Partitioned => wire::SandboxKind::Partitioned,
    }
}

/// A value the store keeps as its wire name (a reason, an outcome, a node's state), read
/// into its wire enum. A name the wire does not know is a row written by a newer version or
/// a bug: it is answered 500 naming the value, never shown as something else.
pub fn named<T: serde::de::DeserializeOwned>(what: &str, name: &str) -> ApiResult<T> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| ApiError::internal(format!("the store holds {what} `{name}`, which this version does not know")))
}

pub fn on_node_loss(p: wire::OnNodeLoss) -> shoal_core::OnNodeLoss {
    match p {
        wire::OnNodeLoss::Retry => shoal_core::OnNodeLoss::Retry,
        wire::OnNodeLoss::Fail => shoal_core::OnNodeLoss::Fail,
    }
}

pub fn allocation(a: wire::Allocation) -> shoal_core::Allocation {
    use shoal_core::Allocation as A;
    match a {
        wire::Allocation::Any => A::Any,
        wire::Allocation::Nodes { nodes } => A::Nodes { nodes },
        wire::Allocation::Tags { tags } => A::Tags { tags },
        wire::Allocation::Partitioned { sandbox } => A::Partitioned { sandbox },
    }
}
