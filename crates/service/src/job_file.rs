//! A job file read from its sandbox: a size-bounded read confined to the sandbox folder
//! (cap-std), parsed and validated with the line and column of any problem; and the check
//! that a working directory does not lead out of its sandbox through a symlink.

use crate::{DomainError, Result};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use shoal_core::job::MAX_JOB_FILE_BYTES;
use shoal_core::{JobSpec, SandboxPath};
use std::io::Read;
use std::path::Path;

/// Reads and validates job file `job` of the sandbox whose folder is `root`.
pub async fn load(root: &str, job: &SandboxPath) -> Result<JobSpec> {
    let root = root.to_owned();
    let shown = job.to_string();
    let rel = job.to_relative();
    let text = tokio::task::spawn_blocking(move || {
        let unreadable = |source| DomainError::JobUnreadable { file: shown.clone(), source };
        let dir = Dir::open_ambient_dir(&root, ambient_authority())
            .map_err(|source| DomainError::SandboxFolder { root: root.clone(), source })?;
        let meta = dir.metadata(&rel).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DomainError::UnknownJob(format!("no job file `{shown}` in this sandbox")),
            _ => unreadable(e),
        })?;
        let too_large = || DomainError::JobTooLarge { file: shown.clone(), limit: MAX_JOB_FILE_BYTES };
        if meta.len() > MAX_JOB_FILE_BYTES as u64 {
            return Err(too_large());
        }
        // Bounded: the file may have grown since its size was read.
        read_text(&dir, &rel).map_err(unreadable)?.ok_or_else(too_large)
    })
    .await
    .map_err(|e| DomainError::Internal(e.to_string()))??;
    JobSpec::parse(&text).map_err(|e| DomainError::InvalidJob {
        file: job.to_string(),
        line: e.line,
        column: e.column,
        message: e.message,
    })
}

/// Reads a job file of at most [`MAX_JOB_FILE_BYTES`] bytes; `None` if it is larger. Never
/// reads more than one byte past the limit, whatever the file's size, so a huge file (or one
/// that grows while it is read) costs no memory.
pub fn read_text(dir: &Dir, rel: &Path) -> std::io::Result<Option<String>> {
    let mut bytes = Vec::new();
    dir.open(rel)?.into_std().take(MAX_JOB_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_JOB_FILE_BYTES {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "the job file is not valid UTF-8"))
}

/// Refuses a workdir that resolves outside the sandbox root through a symlink. The lexical
/// check (no `..`, not absolute) is the core's; this one reads the folder, so it is made
/// where the folder is (the runner checks again right before the job starts, which also
/// catches a symlink swapped in after submission). A workdir that does not exist yet is
/// checked as far as it exists. `Err` says why it is refused.
pub async fn check_workdir_resolves_inside(root: &str, workdir: &str) -> Result<(), String> {
    let (root, workdir) = (std::path::PathBuf::from(root), workdir.to_owned());
    tokio::task::spawn_blocking(move || {
        let Ok(real_root) = std::fs::canonicalize(&root) else {
            // No folder to escape from; the attempt fails at start with a clear message.
            return Ok(());
        };
        let rel = SandboxPath::parse(&workdir).map_err(|e| format!("workdir: {e}"))?;
        let (mut path, mut existing) = (root.clone(), None);
        for part in rel.parts() {
            path.push(part);
            if std::fs::symlink_metadata(&path).is_err() {
                break;
            }
            existing = Some(path.clone());
        }
        let Some(existing) = existing else { return Ok(()) };
        match std::fs::canonicalize(&existing) {
            Ok(real) if real.starts_with(&real_root) => Ok(()),
            Ok(real) => Err(format!(
                "workdir `{workdir}` resolves to {} through a symlink, outside the sandbox root; it is refused",
                real.display()
            )),
            Err(e) => Err(format!("workdir `{workdir}` cannot be resolved inside the sandbox ({e}); it is refused")),
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("cannot check workdir: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> SandboxPath {
        SandboxPath::parse(p).unwrap()
    }

    #[tokio::test]
    async fn a_job_file_is_read_checked_and_placed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        std::fs::create_dir(dir.path().join("jobs")).unwrap();
        std::fs::write(dir.path().join("jobs/ok.toml"), "command = [\"true\"]\n").unwrap();
        std::fs::write(dir.path().join("jobs/bad.toml"), "command = [\"true\"]\nnope = 1\n").unwrap();
        std::fs::write(dir.path().join("jobs/big.toml"), vec![b'#'; MAX_JOB_FILE_BYTES + 1]).unwrap();
        assert!(load(root, &path("jobs/ok.toml")).await.is_ok());
        match load(root, &path("jobs/bad.toml")).await {
            Err(DomainError::InvalidJob { file, line, .. }) => assert_eq!((file.as_str(), line), ("jobs/bad.toml", 2)),
            other => panic!("expected InvalidJob, got {other:?}"),
        }
        assert!(matches!(load(root, &path("jobs/none.toml")).await, Err(DomainError::UnknownJob(_))));
        assert!(matches!(load(root, &path("jobs/big.toml")).await, Err(DomainError::JobTooLarge { .. })));
        assert!(matches!(load(root, &path("jobs")).await, Err(DomainError::JobUnreadable { .. })));
    }

    #[tokio::test]
    async fn a_workdir_may_not_lead_out_through_a_symlink() {
        let (sandbox, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::os::unix::fs::symlink(outside.path(), sandbox.path().join("out")).unwrap();
        std::fs::create_dir(sandbox.path().join("in")).unwrap();
        let root = sandbox.path().to_str().unwrap();
        assert_eq!(check_workdir_resolves_inside(root, "in/not-yet").await, Ok(()));
        let refused = check_workdir_resolves_inside(root, "out/deeper").await.unwrap_err();
        assert!(refused.contains("outside the sandbox root"), "{refused}");
    }
}
