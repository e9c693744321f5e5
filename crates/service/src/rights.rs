//! Whose rights work runs with when nobody is asking: a schedule's or listener's owner is
//! looked up again at each firing or event ([`Store::rights_of`]), so a token revoked or a
//! user deleted stops what ran in its name, and what it may no longer do is skipped with the
//! reason, not run. Sandbox globs are matched here for the API too.

use crate::Result;
use shoal_core::Role;
use shoal_store::{Owner, Store};

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    // Iterative match with one backtracking point (the last `*`).
    let (mut gi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ni;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

/// Whether sandbox globs cover `sandbox`; `None` (no sandbox, or the whole cluster) only with
/// `*`.
pub fn globs_cover(globs: &[String], sandbox: Option<&str>) -> bool {
    match sandbox {
        None => globs.iter().any(|g| g == "*"),
        Some(name) => globs.iter().any(|g| glob_matches(g, name)),
    }
}

/// Whether `owner` may now start a job of `sandbox` (role `runner` there) and read each of
/// `reads` (role `viewer`; `None` is the whole cluster, a cluster listener's nodes). `Ok(Err)`
/// says why not, naming the owner.
pub async fn owner_may_run(
    store: &Store,
    owner: Option<&Owner>,
    sandbox: &str,
    reads: &[Option<&str>],
) -> Result<std::result::Result<(), String>> {
    let Some(owner) = owner else {
        return Ok(Err(
            "it has no owner (it was made before owners were recorded); change it (`edit`, or disable and enable it) to own it"
                .into(),
        ));
    };
    let rights = match store.rights_of(&owner.acts_as).await? {
        Ok(r) => r,
        Err(why) => return Ok(Err(format!("its owner {} may no longer act: {why}", owner.label))),
    };
    if rights.role < Role::Runner || !globs_cover(&rights.sandboxes, Some(sandbox)) {
        return Ok(Err(format!(
            "its owner {} ({}, sandboxes {}) may not run jobs in sandbox `{sandbox}`",
            rights.label,
            rights.role,
            rights.sandboxes.join(", ")
        )));
    }
    if let Some(scope) = reads.iter().find(|s| !globs_cover(&rights.sandboxes, **s)) {
        return Ok(Err(format!(
            "its owner {} may not read {}",
            rights.label,
            scope.map_or("the cluster's nodes".to_owned(), |s| format!("sandbox `{s}`"))
        )));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_cover_names_and_star_covers_no_sandbox() {
        let g = vec!["team-*".to_owned()];
        assert!(globs_cover(&g, Some("team-a")));
        assert!(!globs_cover(&g, Some("other")));
        assert!(!globs_cover(&g, None));
        assert!(globs_cover(&["*".to_owned()], None));
    }
}
