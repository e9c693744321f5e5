//! Scratch directories for servers: `<temp>/shoal-test-pg/<pid>-<n>`, swept once their process is gone.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use super::proc::give_away;

fn base() -> PathBuf {
    std::env::temp_dir().join("shoal-test-pg")
}

/// A new, empty directory for one server, owned by the user it runs as.
///
/// The pid in its name lets later processes tell whose it is: directories of
/// processes that are gone (killed before they could clean up) are removed
/// the first time a process makes one.
pub(super) fn new_root() -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SWEEP: Once = Once::new();

    let base = base();
    match fs::create_dir(&base) {
        // World-writable and sticky like /tmp itself: test runs of different
        // users share it, and each may only remove its own directories.
        Ok(()) => {
            let _ = fs::set_permissions(&base, fs::Permissions::from_mode(0o1777));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", base.display())),
    }
    SWEEP.call_once(sweep_leftovers);

    let pid = std::process::id();
    let root = base.join(format!("{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    // A directory already there belongs to an earlier process that had our
    // pid; the sweep cannot tell it from ours, so it is cleared here.
    if root.exists() {
        let _ = fs::remove_dir_all(&root);
    }
    fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    give_away(&root)?;
    Ok(root)
}

fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir(base()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split_once('-')).and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_exists(pid) {
            // Failures are fine: another process may be sweeping too, or the
            // directory may be another user's.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists but belongs to someone else.
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
