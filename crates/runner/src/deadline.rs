//! The node's lease deadline, shared with every supervisor through a small file, so a job
//! dies before its node's lease can run out even when the node itself cannot act: frozen by
//! SIGSTOP, a debugger, or a paused VM. (A dead node is covered by PR_SET_PDEATHSIG; a node
//! that is merely slow or cut off kills its children itself; this covers the rest.)
//!
//! The file holds one number: the deadline in milliseconds of `CLOCK_BOOTTIME`, a clock every
//! process on the machine shares, that never jumps with wall-clock changes and keeps counting
//! through a suspend. The node rewrites it (atomically, by rename) after each lease renewal;
//! a supervisor that finds the deadline passed kills its job's process group.

use std::io::Write;
use std::path::Path;

/// Now, in milliseconds of `CLOCK_BOOTTIME`.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every supported
    // Linux kernel.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Publishes a new deadline. Written to a temporary file and renamed over the old one, so a
/// reader never sees half a number.
pub fn write(path: &Path, deadline_ms: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{deadline_ms}")?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The published deadline; `None` when there is none (yet) or it cannot be read.
pub fn read(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_a_clock_that_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease-deadline");
        assert_eq!(read(&path), None);
        let now = boottime_ms();
        write(&path, now + 5000).unwrap();
        assert_eq!(read(&path), Some(now + 5000));
        write(&path, now + 6000).unwrap();
        assert_eq!(read(&path), Some(now + 6000));
        assert!(boottime_ms() >= now);
    }
}
