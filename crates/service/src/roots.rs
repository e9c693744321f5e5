//! Where a sandbox's folder may be: under one of the node's `sandboxes.allowed_roots` (by
//! default its data directory); inside the data directory only under its `sandboxes`
//! folder (the rest is the node's own: the scratch folder, the lease deadline, the session
//! lock files); never a folder that holds the data directory or the store's files, nor one
//! inside those. Without this rule anyone allowed to create a sandbox could root one at `/`
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
    /// The node's data directory: a root may not hold it, and lies inside it only under
    /// `sandboxes/`.
    data_dir: PathBuf,
    /// The store's files and folders (a SQLite file, its `-wal`, `-shm` and `-sessions`): a
    /// root may neither hold them nor lie inside them.
    protected: Vec<PathBuf>,
}

impl RootPolicy {
    /// The paths must be absolute; they are resolved now (blocking). `store_file`: a SQLite
    /// store's file, if the store is one.
    pub fn new(allowed: &[PathBuf], data_dir: &Path, store_file: Option<&Path>) -> RootPolicy {
        let protected = store_file
            .into_iter()
            .flat_map(|f| {
                ["", "-wal", "-shm", "-sessions"].map(|suffix| {
                    let mut name = f.as_os_str().to_owned();
                    name.push(suffix);
                    resolve(Path::new(&name))
                })
            })
            .collect();
        RootPolicy { allowed: allowed.iter().map(|p| resolve(p)).collect(), data_dir: resolve(data_dir), protected }
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
        let own = std::iter::once(&self.data_dir).chain(&self.protected);
        if let Some(p) = own.clone().find(|p| p.starts_with(&resolved)) {
            return Err(DomainError::RootNotAllowed(format!(
                "root `{root}` holds `{}`, the node's own data, which no sandbox may contain; give a folder beside it",
                p.display()
            )));
        }
        if let Some(p) = self.protected.iter().find(|p| resolved.starts_with(p)) {
            return Err(DomainError::RootNotAllowed(format!(
                "root `{root}` is inside `{}`, the store's own files; give a folder elsewhere",
                p.display()
            )));
        }
        let sandboxes = self.data_dir.join("sandboxes");
        if resolved.starts_with(&self.data_dir) && (!resolved.starts_with(&sandboxes) || resolved == sandboxes) {
            return Err(DomainError::RootNotAllowed(format!(
                "root `{root}` is inside the node's data directory, whose folders are its own; inside it, sandboxes go under `{}`",
                sandboxes.display()
            )));
        }
        Ok(resolved)
    }
}

impl RootPolicy {
    /// Refuses a root that is, holds or lies inside the folder of another sandbox on this
    /// machine (`others`: name and root): one sandbox's scope would reach the other's files.
    pub fn check_apart(&self, root: &Path, others: &[(String, String)]) -> Result<()> {
        for (name, other) in others {
            let theirs = resolve(Path::new(other));
            if root.starts_with(&theirs) || theirs.starts_with(root) {
                return Err(DomainError::RootNotAllowed(format!(
                    "root `{}` overlaps the folder of sandbox `{name}` ({other}); each sandbox needs a folder of its own",
                    root.display()
                )));
            }
        }
        Ok(())
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
        let db = allowed.join("db/shoal.db");
        std::fs::create_dir_all(allowed.join("db/shoal.db-sessions")).unwrap();
        let policy = RootPolicy::new(std::slice::from_ref(&allowed), &data, Some(&db));
        let s = |p: PathBuf| p.display().to_string();
        assert_eq!(code(policy.check(&s(allowed.join("a")))), "ok");
        assert_eq!(code(policy.check(&s(allowed.join("not/yet/made")))), "ok");
        assert_eq!(code(policy.check(&s(data.join("sandboxes/inside")))), "ok");
        // The rest of the data directory is the node's own; so are the store's files.
        assert_eq!(code(policy.check(&s(data.join("scratch")))), "root_not_allowed");
        assert_eq!(code(policy.check(&s(data.join("sandboxes-not")))), "root_not_allowed");
        assert_eq!(code(policy.check(&s(allowed.join("db")))), "root_not_allowed");
        assert_eq!(code(policy.check(&s(allowed.join("db/shoal.db-sessions")))), "root_not_allowed");
        assert_eq!(code(policy.check(&s(allowed.join("db/shoal.db-sessions/x")))), "root_not_allowed");
        assert_eq!(code(policy.check(&s(allowed.join("db/other")))), "ok");
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
