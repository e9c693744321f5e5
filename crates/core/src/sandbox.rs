//! Sandbox kinds: where a sandbox's files live and so which nodes can use them; the
//! partitions of a partitioned sandbox.

use serde::{Deserialize, Serialize};

/// Where a sandbox's files live, and so which nodes can use them (the wire's enum).
pub use shoal_wire::SandboxKind;

/// One part of a partitioned sandbox: a folder on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Unique within the sandbox; children of a partitioned execution are named after it.
    pub name: String,
    /// The node that holds this part.
    pub node: String,
    /// The part's folder on that node (absolute).
    pub root: String,
}

/// Checks a partitioned sandbox's parts: at least one; names valid and unique; every part
/// with a node and an absolute folder; no two parts on one node whose folders are the same or
/// nested (they would hold the same data twice).
pub fn validate_partitions(parts: &[Partition]) -> Result<(), String> {
    if parts.is_empty() {
        return Err("a partitioned sandbox needs at least one partition in `partitions`".into());
    }
    for (i, p) in parts.iter().enumerate() {
        crate::SandboxName::parse(&p.name).map_err(|e| format!("partition {}: name: {e}", i + 1))?;
        crate::NodeId::parse(&p.node).map_err(|e| format!("partition `{}`: node: {e}", p.name))?;
        if !p.root.starts_with('/') {
            return Err(format!("partition `{}`: root `{}` is not an absolute path", p.name, p.root));
        }
        for q in &parts[..i] {
            if q.name == p.name {
                return Err(format!("two partitions are named `{}`; names must be unique", p.name));
            }
            if q.node == p.node && nested(&q.root, &p.root) {
                return Err(format!(
                    "partitions `{}` and `{}` overlap: both on node {} at {} and {}",
                    q.name, p.name, p.node, q.root, p.root
                ));
            }
        }
    }
    Ok(())
}

/// Whether one folder is the other or inside it (by path components, ignoring a trailing `/`).
fn nested(a: &str, b: &str) -> bool {
    let parts = |s: &str| s.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_owned).collect::<Vec<_>>();
    let (a, b) = (parts(a), parts(b));
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, node: &str, root: &str) -> Partition {
        Partition { name: name.into(), node: node.into(), root: root.into() }
    }

    #[test]
    fn partitions_are_checked() {
        assert!(validate_partitions(&[p("a", "n1", "/d/a"), p("b", "n2", "/d/a"), p("c", "n1", "/d/c")]).is_ok());
        for (parts, needle) in [
            (vec![], "at least one"),
            (vec![p("a", "n1", "/d/a"), p("a", "n2", "/d/b")], "unique"),
            (vec![p("a", "n1", "/d"), p("b", "n1", "/d/b")], "overlap"),
            (vec![p("a", "n1", "/d/b/"), p("b", "n1", "/d/b")], "overlap"),
            (vec![p("a", "n1", "d/a")], "absolute"),
            (vec![p("a", "Bad Node", "/d/a")], "node"),
            (vec![p("", "n1", "/d/a")], "name"),
        ] {
            let e = validate_partitions(&parts).unwrap_err();
            assert!(e.contains(needle), "{parts:?}: {e}");
        }
    }
}
