//! Where a sandbox's folder may be: under one of the node's `sandboxes.allowed_roots` (by
//! default its data directory), and never a folder that holds the data directory or the
//! store file. Without this rule anyone allowed to create a sandbox could root one at `/`
//! or at the data directory and read every file of the machine, or the store with the
//! cluster secret, through the files API.
//!
//! Paths are compared after resolving symlinks: the longest part of the root that exists is
//! canonicalized and the rest appended, so a symlink inside an allowed folder that points
//! out of it does not let a root escape. (A symlink created between this check and the
//! folder's use is not caught here; the files API resolves every path beneath the root.)

use crate::{DomainError, Result};
use std::path::{Component, Path, PathBuf};

/// The rule of one node.
#[derive(Clone, Debug)]
pub struct RootPolicy {
    /// Canonical where they exist.
    allowed: Vec<PathBuf>,
    /// Folders and files a root may not contain: the data directory, the store file.
    protected: Vec<PathBuf>,
}

impl RootPolicy {
    /// `allowed` and `protected` must be absolute; they are resolved now (blocking).
    pub fn new(allowed: &[PathBuf], protected: &[PathBuf]) -> RootPolicy {
        RootPolicy {
            allowed: allowed.iter().map(|p| resolve(p)).collect(),
            protected: protected.iter().map(|p| resolve(p)).collect(),
        }
    }

    /// The folders roots may lie under, as resolved.
    pub fn allowed(&self) -> &[PathBuf] {
        &self.allowed
    }

    /// Checks `root` (blocking: it reads the file system) and answers it resolved.
    pub fn check(&self, root: &str) -> Result<PathBuf> {
        let path = Path::new(root);
        if !path.is_absolute() {
            return Err(DomainError::InvalidRequest(format!(
                "root `{root}` is not an absolute path; give the sandbox folder's full path on the node"
            )));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(DomainError::RootNotAllowed(format!(
                "root `{root}` contains `..`; give the folder's path without it"
            )));
        }
        let resolved = resolve(path);
        if !self.allowed.iter().any(|a| resolved.starts_with(a)) {
            let shown: Vec<String> = self.allowed.iter().map(|a| format!("`{}`", a.display())).collect();
            return Err(DomainError::RootNotAllowed(format!(
                "root `{root}` is not under a folder this node allows sandboxes in ({}); put the sandbox there, or add its folder to `sandboxes.allowed_roots` in the node's configuration",
                shown.join(", ")
            )));
        }
        if let Some(p) = self.protected.iter().find(|p| p.starts_with(&resolved)) {
            return Err(DomainError::RootNotAllowed(format!(
                "root `{root}` holds `{}`, the node's own data, which no sandbox may contain; give a folder beside it or below it",
                p.display()
            )));
        }
        Ok(resolved)
    }
}

/// `path` with symlinks resolved as far as it exists, the rest appended as written (`.`
/// dropped).
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(&existing) {
            let mut out = canonical;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.file_name().map(|n| n.to_owned()), existing.parent().map(Path::to_path_buf)) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return path.components().filter(|c| !matches!(c, Component::CurDir)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<PathBuf>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(DomainError::RootNotAllowed(_)) => "root_not_allowed",
            Err(DomainError::InvalidRequest(_)) => "invalid_request",
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn roots_stay_under_the_allowed_folders_and_off_the_nodes_data() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let allowed = base.join("sandboxes");
        let data = base.join("sandboxes/node-data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(base.join("elsewhere")).unwrap();
        let policy = RootPolicy::new(std::slice::from_ref(&allowed), std::slice::from_ref(&data));
        let s = |p: PathBuf| p.display().to_string();
        assert_eq!(code(policy.check(&s(allowed.join("a")))), "ok");
        assert_eq!(code(policy.check(&s(allowed.join("not/yet/made")))), "ok");
        assert_eq!(code(policy.check(&s(data.join("inside")))), "ok");
        assert_eq!(code(policy.check(&s(base.join("elsewhere")))), "root_not_allowed");
        assert_eq!(code(policy.check("/")), "root_not_allowed");
        assert_eq!(code(policy.check(&s(allowed.join("../elsewhere")))), "root_not_allowed");
        // Holding the data directory, or being it.
        assert_eq!(code(policy.check(&s(allowed.clone()))), "root_not_allowed");
        assert_eq!(code(policy.check(&s(data.clone()))), "root_not_allowed");
        assert_eq!(code(policy.check("relative/path")), "invalid_request");
        // A symlink inside the allowed folder that leads out of it.
        std::os::unix::fs::symlink(base.join("elsewhere"), allowed.join("link")).unwrap();
        let e = policy.check(&s(allowed.join("link/deeper"))).unwrap_err().to_string();
        assert!(e.contains("sandboxes.allowed_roots"), "{e}");
    }
}
