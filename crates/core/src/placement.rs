//! Placement: which executions a node may take, whether it takes work at all, and how a
//! node holds back so that the least loaded node claims first, decided from plain values.

use crate::job::Allocation;
use std::time::Duration;

/// A node's administrative state, as gossiped and shown by `GET /nodes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Started, not yet holding its lease and membership.
    Joining,
    Active,
    /// Takes no new work, lets running attempts finish (handing them back after a deadline),
    /// and reports not ready, so it can be stopped.
    Draining,
    /// Takes no new work until resumed, but stays ready and serves requests.
    Suspended,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Suspended => "suspended",
        }
    }

    pub fn parse(text: &str) -> Option<NodeState> {
        [NodeState::Joining, NodeState::Active, NodeState::Draining, NodeState::Suspended]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A node's state as its registry row holds it and `GET /nodes` shows it: the wire's
/// `NodeState`. Not [`NodeState`]: a node that runs holds one of the four administrative
/// states (or `stopping`, while it stops) and publishes it with its lease; `stopped` and
/// `lost` are only ever set by the store, for nodes that no longer run.
pub use shoal_wire::NodeState as RegistryState;

impl From<NodeState> for RegistryState {
    fn from(s: NodeState) -> RegistryState {
        match s {
            NodeState::Joining => RegistryState::Joining,
            NodeState::Active => RegistryState::Active,
            NodeState::Draining => RegistryState::Draining,
            NodeState::Suspended => RegistryState::Suspended,
        }
    }
}

/// Machine load, in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub cpu: f64,
    pub memory: f64,
}

/// Per-node thresholds (in the spirit of CloverDX's `cluster.lb.*`): at or above either, the
/// node takes no new work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
}

/// Why a node takes no new work right now.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    State(NodeState),
    NoFreeSlot,
    Cpu { load: f64, limit: f64 },
    Memory { load: f64, limit: f64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::State(s) => write!(f, "node is {}", s.as_str()),
            Refusal::NoFreeSlot => f.write_str("every slot is busy"),
            Refusal::Cpu { load, limit } => write!(f, "CPU at {load:.0}%, limit {limit:.0}%"),
            Refusal::Memory { load, limit } => write!(f, "memory at {load:.0}%, limit {limit:.0}%"),
        }
    }
}

/// Whether a node in `state`, with `free` slots and `load`, takes new work.
pub fn admits_work(state: NodeState, free: usize, load: Load, limits: Limits) -> Result<(), Refusal> {
    if state != NodeState::Active {
        return Err(Refusal::State(state));
    }
    if free == 0 {
        return Err(Refusal::NoFreeSlot);
    }
    if let Some(limit) = limits.cpu.filter(|l| load.cpu >= *l) {
        return Err(Refusal::Cpu { load: load.cpu, limit });
    }
    if let Some(limit) = limits.memory.filter(|l| load.memory >= *l) {
        return Err(Refusal::Memory { load: load.memory, limit });
    }
    Ok(())
}

/// One live, active node as the load balancer sees it (from gossip).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub free: usize,
    pub slots: usize,
    pub cpu: f64,
}

/// How long a node waits before claiming newly announced work: nodes rank by free share of
/// their slots (then CPU, then id) and each rank waits one `step` longer, so the least busy
/// node usually wins the claim race and work spreads without anyone assigning it. Only a
/// preference: every node still claims after its delay, so nothing depends on gossip being
/// right.
pub fn claim_delay(me: &str, candidates: &[Candidate<'_>], step: Duration, max: Duration) -> Duration {
    let key = |c: &Candidate<'_>| {
        let busy = if c.slots == 0 { 1.0 } else { 1.0 - c.free as f64 / c.slots as f64 };
        (busy, c.cpu)
    };
    let Some(mine) = candidates.iter().find(|c| c.id == me) else { return Duration::ZERO };
    let ahead = candidates
        .iter()
        .filter(|c| c.id != me && c.free > 0)
        .filter(|c| {
            let (a, b) = (key(c), key(mine));
            a.0 < b.0 || (a.0 == b.0 && (a.1 < b.1 || (a.1 == b.1 && c.id < mine.id)))
        })
        .count() as u32;
    (step * ahead).min(max)
}

/// What a node knows about itself when it looks for work.
#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    pub id: &'a str,
    pub tags: &'a [String],
}

/// Whether a node may run an execution with this allocation. `pinned` is the node that must
/// run it regardless (the holder of a local sandbox).
pub fn eligible(allocation: &Allocation, pinned: Option<&str>, node: &NodeView<'_>) -> bool {
    if pinned.is_some_and(|p| p != node.id) {
        return false;
    }
    match allocation {
        Allocation::Any => true,
        Allocation::Nodes { nodes } => nodes.iter().any(|n| n == node.id),
        Allocation::Tags { tags } => tags.iter().all(|t| node.tags.contains(t)),
        // The parent of a partitioned execution never runs; its children do, pinned.
        Allocation::Partitioned { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_an_active_node_under_its_limits_takes_work() {
        let limits = Limits { cpu: Some(80.0), memory: Some(90.0) };
        let calm = Load { cpu: 10.0, memory: 10.0 };
        assert_eq!(admits_work(NodeState::Active, 1, calm, limits), Ok(()));
        assert_eq!(admits_work(NodeState::Active, 0, calm, limits), Err(Refusal::NoFreeSlot));
        for s in [NodeState::Joining, NodeState::Draining, NodeState::Suspended] {
            assert_eq!(admits_work(s, 4, calm, limits), Err(Refusal::State(s)));
        }
        let hot = Load { cpu: 80.0, memory: 10.0 };
        assert_eq!(admits_work(NodeState::Active, 4, hot, limits), Err(Refusal::Cpu { load: 80.0, limit: 80.0 }));
        let full = Load { cpu: 1.0, memory: 95.0 };
        assert!(matches!(admits_work(NodeState::Active, 4, full, limits), Err(Refusal::Memory { .. })));
        assert_eq!(admits_work(NodeState::Active, 4, Load { cpu: 100.0, memory: 100.0 }, Limits::default()), Ok(()));
    }

    #[test]
    fn the_least_busy_node_claims_first() {
        let c = |id, free, cpu| Candidate { id, free, slots: 8, cpu };
        let nodes = [c("a", 8, 50.0), c("b", 2, 1.0), c("c", 8, 10.0)];
        let step = Duration::from_millis(2);
        let max = Duration::from_millis(20);
        assert_eq!(claim_delay("c", &nodes, step, max), Duration::ZERO);
        assert_eq!(claim_delay("a", &nodes, step, max), step);
        assert_eq!(claim_delay("b", &nodes, step, max), step * 2);
        // A node the balancer does not know about claims at once rather than never.
        assert_eq!(claim_delay("z", &nodes, step, max), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn delays_are_bounded_and_exactly_one_node_goes_first(
            free in proptest::collection::vec((0usize..9, 0u8..100), 1..12)
        ) {
            let ids: Vec<String> = (0..free.len()).map(|i| format!("n{i}")).collect();
            let nodes: Vec<_> = free.iter().zip(&ids)
                .map(|((f, cpu), id)| Candidate { id, free: *f, slots: 8, cpu: f64::from(*cpu) })
                .collect();
            let step = Duration::from_millis(3);
            let max = Duration::from_millis(15);
            let delays: Vec<_> = nodes.iter().map(|n| claim_delay(n.id, &nodes, step, max)).collect();
            prop_assert!(delays.iter().all(|d| *d <= max));
            let with_free: Vec<_> = nodes.iter().zip(&delays).filter(|(n, _)| n.free > 0).collect();
            if !with_free.is_empty() {
                prop_assert_eq!(with_free.iter().filter(|(_, d)| d.is_zero()).count(), 1);
            }
        }
    }

    #[test]
    fn rules() {
        let tags = vec!["etl".to_string(), "big".to_string()];
        let me = NodeView { id: "n1", tags: &tags };
        assert!(eligible(&Allocation::Any, None, &me));
        assert!(!eligible(&Allocation::Any, Some("n2"), &me));
        assert!(eligible(&Allocation::Nodes { nodes: vec!["n2".into(), "n1".into()] }, None, &me));
        assert!(!eligible(&Allocation::Nodes { nodes: vec!["n2".into()] }, None, &me));
        assert!(eligible(&Allocation::Tags { tags: vec!["etl".into()] }, None, &me));
        assert!(!eligible(&Allocation::Tags { tags: vec!["etl".into(), "gpu".into()] }, None, &me));
    }
}
