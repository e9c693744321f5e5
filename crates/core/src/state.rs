//! The execution state machine: what an attempt's outcome means for its execution.

use crate::job::{OnNodeLoss, RunSpec};
use std::time::Duration;

/// Attempts lost to dead nodes that are re-run before an execution fails anyway; guards
/// against a job that takes down every node it lands on.
pub const MAX_NODE_LOSS_RETRIES: u32 = 20;

/// Why an execution is in its state: a stable code for scripts, beside a human message (the
/// wire's `ExecutionReason`).
pub use shoal_wire::ExecutionReason as ReasonCode;
/// Where an execution is in its life: the wire's enum (`shoal_wire::ExecutionState`), so the
/// state a row holds is the state the API shows, one type from store to client.
pub use shoal_wire::ExecutionState as ExecState;

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Cancelled {
        by: String,
    },
    NodeLost {
        node: String,
    },
    /// The node gave the attempt back on purpose (drain deadline, shutdown, or an attempt a
    /// claim made though the node was told it failed, which it never started): it runs again
    /// whatever `on_node_loss` says, since no node failed.
    HandedBack {
        node: String,
    },
}

/// What happens to the execution after an attempt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Finish { state: ExecState, reason: ReasonCode, message: String },
    Retry { after: Duration, reason: ReasonCode, message: String },
}

/// Decides the execution's next step from the outcome of attempt number `attempt`
/// (1-based) and how many of its attempts so far were lost with their node.
pub fn decide(spec: &RunSpec, attempt: u32, node_losses: u32, outcome: &Outcome) -> Decision {
    // Retries count the attempts that failed on their own merits, not those lost to nodes.
    let failed_attempts = attempt.saturating_sub(node_losses);
    let retry_or_fail = |message: String, reason: ReasonCode| {
        if failed_attempts <= spec.retries {
            let after = spec.backoff_before_retry(failed_attempts);
            Decision::Retry {
                after,
                reason: ReasonCode::RetryScheduled,
                message: format!(
                    "{message}; retry {failed_attempts} of {} in {}",
                    spec.retries,
                    crate::duration::format(after)
                ),
            }
        } else {
            Decision::Finish { state: ExecState::Failed, reason, message }
        }
    };
    match outcome {
        Outcome::Exited(0) => {
            Decision::Finish { state: ExecState::Succeeded, reason: ReasonCode::Exited, message: "exit code 0".into() }
        }
        Outcome::Exited(code) => retry_or_fail(format!("exit code {code}"), ReasonCode::Exited),
        Outcome::Signaled(sig) => retry_or_fail(format!("killed by signal {sig}"), ReasonCode::Signaled),
        Outcome::TimedOut => Decision::Finish {
            state: ExecState::TimedOut,
            reason: ReasonCode::Timeout,
            message: match spec.timeout() {
                Some(t) => format!("ran longer than its timeout of {}", crate::duration::format(t)),
                None => "timed out".into(),
            },
        },
        Outcome::Cancelled { by } => Decision::Finish {
            state: ExecState::Cancelled,
            reason: ReasonCode::Cancelled,
            message: format!("cancelled by {by}"),
        },
        Outcome::NodeLost { node } => {
            let message = format!("node {node} was lost while running attempt {attempt}");
            match spec.on_node_loss {
                OnNodeLoss::Retry if node_losses <= MAX_NODE_LOSS_RETRIES => Decision::Retry {
                    after: Duration::ZERO,
                    reason: ReasonCode::NodeLost,
                    message: format!("{message}; running it again"),
                },
                _ => Decision::Finish { state: ExecState::Failed, reason: ReasonCode::NodeLost, message },
            }
        }
        Outcome::HandedBack { node } => {
            let message = format!("node {node} handed attempt {attempt} back");
            if node_losses <= MAX_NODE_LOSS_RETRIES {
                Decision::Retry {
                    after: Duration::ZERO,
                    reason: ReasonCode::HandedBack,
                    message: format!("{message}; running it again"),
                }
            } else {
                Decision::Finish { state: ExecState::Failed, reason: ReasonCode::HandedBack, message }
            }
        }
    }
}

/// The state of a partitioned execution from its children's: `None` while any child is not
/// final; then succeeded if all succeeded, else failed if any failed, else timed out if any
/// timed out, else cancelled. With a message counting the children by state.
pub fn derive_parent(children: &[ExecState]) -> Option<(ExecState, String)> {
    if children.is_empty() || children.iter().any(|s| !s.is_final()) {
        return None;
    }
    let count = |want: ExecState| children.iter().filter(|s| **s == want).count();
    let state = if count(ExecState::Succeeded) == children.len() {
        ExecState::Succeeded
    } else if count(ExecState::Failed) > 0 {
        ExecState::Failed
    } else if count(ExecState::TimedOut) > 0 {
        ExecState::TimedOut
    } else {
        ExecState::Cancelled
    };
    let parts: Vec<String> = [ExecState::Succeeded, ExecState::Failed, ExecState::TimedOut, ExecState::Cancelled]
        .into_iter()
        .filter(|s| count(*s) > 0)
        .map(|s| format!("{} {}", count(s), s.as_str()))
        .collect();
    Some((state, format!("{} partition(s): {}", children.len(), parts.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_partitioned_execution_ends_when_all_its_children_have() {
        use ExecState::*;
        assert_eq!(derive_parent(&[]), None);
        assert_eq!(derive_parent(&[Succeeded, Running]), None);
        assert_eq!(derive_parent(&[Succeeded, Succeeded]).unwrap().0, Succeeded);
        assert_eq!(derive_parent(&[Succeeded, Failed, Cancelled]).unwrap().0, Failed);
        assert_eq!(derive_parent(&[TimedOut, Cancelled]).unwrap().0, TimedOut);
        assert_eq!(derive_parent(&[Cancelled, Succeeded]).unwrap().0, Cancelled);
        assert_eq!(derive_parent(&[Succeeded, Failed]).unwrap().1, "2 partition(s): 1 succeeded, 1 failed");
    }

    proptest! {
        #[test]
        fn the_parent_succeeds_only_if_every_child_did(states in proptest::collection::vec(0usize..6, 1..8)) {
            let states: Vec<ExecState> = states.into_iter().map(|i| ExecState::ALL[i]).collect();
            match derive_parent(&states) {
                None => prop_assert!(states.iter().any(|s| !s.is_final())),
                Some((s, _)) => {
                    prop_assert!(s.is_final());
                    prop_assert_eq!(s == ExecState::Succeeded, states.iter().all(|c| *c == ExecState::Succeeded));
                }
            }
        }
    }

    fn spec(retries: u32) -> RunSpec {
        let mut s = RunSpec::inline(vec!["x".into()]);
        s.retries = retries;
        s.retry_backoff_ms = 100;
        s
    }

    #[test]
    fn success_and_failure() {
        assert!(matches!(
            decide(&spec(0), 1, 0, &Outcome::Exited(0)),
            Decision::Finish { state: ExecState::Succeeded, .. }
        ));
        assert!(matches!(
            decide(&spec(0), 1, 0, &Outcome::Exited(3)),
            Decision::Finish { state: ExecState::Failed, .. }
        ));
        assert!(matches!(decide(&spec(1), 1, 0, &Outcome::Exited(3)), Decision::Retry { .. }));
        assert!(matches!(
            decide(&spec(1), 2, 0, &Outcome::Exited(3)),
            Decision::Finish { state: ExecState::Failed, .. }
        ));
        assert!(matches!(
            decide(&spec(5), 1, 0, &Outcome::TimedOut),
            Decision::Finish { state: ExecState::TimedOut, .. }
        ));
    }

    #[test]
    fn a_handed_back_attempt_runs_again_whatever_the_policy() {
        let mut s = spec(0);
        s.on_node_loss = OnNodeLoss::Fail;
        let d = decide(&s, 1, 1, &Outcome::HandedBack { node: "n1".into() });
        assert!(matches!(d, Decision::Retry { reason: ReasonCode::HandedBack, .. }), "{d:?}");
        let d = decide(&s, 30, MAX_NODE_LOSS_RETRIES + 1, &Outcome::HandedBack { node: "n1".into() });
        assert!(matches!(d, Decision::Finish { state: ExecState::Failed, .. }), "{d:?}");
    }

    #[test]
    fn node_loss_follows_policy() {
        let mut s = spec(0);
        assert!(matches!(
            decide(&s, 1, 1, &Outcome::NodeLost { node: "n1".into() }),
            Decision::Retry { after: Duration::ZERO, .. }
        ));
        s.on_node_loss = OnNodeLoss::Fail;
        assert!(matches!(
            decide(&s, 1, 1, &Outcome::NodeLost { node: "n1".into() }),
            Decision::Finish { state: ExecState::Failed, reason: ReasonCode::NodeLost, .. }
        ));
    }

    proptest! {
        // An execution is never retried more often than its job allows, and the total
        // number of attempts is bounded whatever happens.
        #[test]
        fn retries_are_bounded(retries in 0u32..10, outcomes in proptest::collection::vec(0u8..4, 1..60)) {
            let s = spec(retries);
            let mut attempt = 0;
            let mut losses = 0;
            for o in outcomes {
                attempt += 1;
                let outcome = match o {
                    0 => Outcome::Exited(1),
                    1 => Outcome::Signaled(9),
                    2 => { losses += 1; Outcome::NodeLost { node: "n".into() } }
                    _ => Outcome::Exited(2),
                };
                match decide(&s, attempt, losses, &outcome) {
                    Decision::Finish { state, .. } => { prop_assert!(state.is_final()); break; }
                    Decision::Retry { .. } => {
                        prop_assert!(attempt - losses <= retries);
                        prop_assert!(losses <= MAX_NODE_LOSS_RETRIES + 1);
                    }
                }
            }
        }
    }

    #[test]
    fn states_round_trip() {
        for s in ExecState::ALL {
            assert_eq!(ExecState::parse(s.as_str()), Some(s));
        }
    }
}
