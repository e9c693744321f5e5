//! shoal's pure core: the job model, validation, parameter substitution, sandbox paths,
//! placement and the execution state machine.
//!
//! Nothing here does IO, reads a clock or knows JSON or SQL: callers pass plain values
//! (a `now` in store milliseconds, a node's view of itself) and get decisions back.
//! That is what lets this crate be property-tested.

pub mod duration;
pub mod held;
pub mod ids;
pub mod job;
pub mod listener;
pub mod mask;
pub mod path;
pub mod placement;
pub mod sandbox;
pub mod schedule;
pub mod state;

pub use ids::{ExecutionId, FencingToken, NodeId, SandboxName};
pub use job::{Allocation, JobFileError, JobKind, JobSpec, OnNodeLoss, ParamError, RunSpec};
pub use path::{PathError, SandboxPath};
pub use sandbox::{validate_partitions, Partition, SandboxKind};
/// How a change recorded in the audit trail ended (the wire's enum).
pub use shoal_wire::AuditOutcome;
/// What a token or user may do (the wire's enum).
pub use shoal_wire::{Role, Trigger};
pub use state::{Decision, ExecState, Outcome, ReasonCode};
