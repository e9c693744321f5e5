//! How a job attempt ended: an exit code or a fatal signal, with a human-readable form.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How a job attempt ended.
///
/// The supervisor mirrors its job's ending, so this is the job's own exit code or signal.
/// A program that could not be started shows up as `Code(127)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// The job exited with this code.
    Code(i32),
    /// The job was killed by this signal number.
    Signal(i32),
}

impl Exit {
    /// Converts a wait status; `None` for statuses that are neither (stopped, continued),
    /// which a plain wait never returns.
    pub fn from_status(status: ExitStatus) -> Option<Exit> {
        match (status.code(), status.signal()) {
            (Some(code), _) => Some(Exit::Code(code)),
            (None, Some(sig)) => Some(Exit::Signal(sig)),
            (None, None) => None,
        }
    }

    /// True for exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(sig) => match signal_name(sig) {
                Some(name) => write!(f, "signal {sig} ({name})"),
                None => write!(f, "signal {sig}"),
            },
        }
    }
}

/// The conventional name of a signal number, for the ones a job is likely to die of.
pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        assert_eq!(Exit::Code(3).to_string(), "exit code 3");
        assert_eq!(Exit::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert_eq!(Exit::Signal(15).to_string(), "signal 15 (SIGTERM)");
        assert_eq!(Exit::Signal(63).to_string(), "signal 63");
    }

    #[test]
    fn from_status() {
        // Raw wait statuses: code in the high byte, signal in the low bits.
        assert_eq!(Exit::from_status(ExitStatus::from_raw(3 << 8)), Some(Exit::Code(3)));
        assert_eq!(Exit::from_status(ExitStatus::from_raw(9)), Some(Exit::Signal(9)));
        assert!(Exit::Code(0).success());
        assert!(!Exit::Signal(9).success());
    }
}
