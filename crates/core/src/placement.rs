//! Placement: which executions a node may take, decided from plain values.

use crate::job::Allocation;

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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
