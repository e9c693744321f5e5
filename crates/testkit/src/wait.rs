//! Polling until a condition holds, with a deadline that names what was awaited.

use std::time::{Duration, Instant};

/// Longest pause between two polls. Short enough that tests waiting on a fast
/// event do not lose much time; the pause starts at 1 ms and doubles up to
/// this so that slow conditions (ones that spawn `psql`, say) are not hammered.
const MAX_PAUSE: Duration = Duration::from_millis(10);

fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_PAUSE)
}

/// Calls `f` until it returns `true`, panicking with `what` if that has not
/// happened within `timeout`.
///
/// `f` is always called at least once, and once more at the deadline, so a
/// condition that became true while the last pause was running still counts.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if f() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = next_pause(pause);
    }
}

/// Async twin of [`wait_until`]: awaits `f()` until it yields `true`,
/// sleeping on tokio's timer between polls so the runtime's thread stays free.
///
/// The deadline is measured on tokio's clock, so it behaves in tests that
/// pause or advance time the same way as the code under test does.
#[cfg(feature = "tokio")]
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if f().await {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = next_pause(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_once_the_condition_holds() {
        let calls = Cell::new(0);
        wait_until("three calls", Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        });
        assert_eq!(calls.get(), 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 20ms waiting for: never")]
    fn panics_with_what_on_timeout() {
        wait_until("never", Duration::from_millis(20), || false);
    }
}
