//! Background work has one shape: a named loop that runs a step, reports whether it was busy,
//! idle or failing (with the last error, shown in `GET /api/v1/nodes/{id}`), backs off after
//! errors, and ends promptly when the node shuts down.

use parking_lot::Mutex;
use shoal_api::WorkerStatus;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Default)]
pub struct Workers {
    status: Mutex<BTreeMap<&'static str, WorkerStatus>>,
}

/// What one step of a worker did.
pub enum Step {
    /// Did something; run again soon.
    Busy,
    /// Nothing to do; wait for the interval (or a wake-up).
    Idle,
    /// Nothing to do until this much later (or a wake-up), if that is sooner than the interval.
    After(Duration),
}

impl Workers {
    pub fn snapshot(&self) -> Vec<WorkerStatus> {
        self.status.lock().values().cloned().collect()
    }

    /// Lists a worker before its first step, so status pages show it from the start.
    pub fn register(&self, name: &'static str) {
        self.status.lock().entry(name).or_insert_with(|| WorkerStatus {
            name: name.to_owned(),
            state: "starting".into(),
            last_error: None,
            errors: 0,
        });
    }

    fn report(&self, name: &'static str, result: &Result<Step, String>) {
        let mut s = self.status.lock();
        let entry = s.entry(name).or_insert_with(|| WorkerStatus {
            name: name.to_owned(),
            state: "idle".into(),
            last_error: None,
            errors: 0,
        });
        match result {
            Ok(Step::Busy) => entry.state = "busy".into(),
            Ok(Step::Idle | Step::After(_)) => entry.state = "idle".into(),
            Err(e) => {
                entry.state = "error".into();
                entry.errors += 1;
                entry.last_error = Some(e.clone());
            }
        }
    }
}

/// The longest a worker waits after failed steps, doubling from its interval (or its
/// interval, if that is longer).
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Runs `step` every `interval` (or when `wake` fires) until `shutdown` turns true; after a
/// failed step it waits twice as long each time, up to `max_backoff` (or `interval`).
#[allow(clippy::too_many_arguments)]
pub async fn run<F, Fut>(
    workers: &Workers,
    name: &'static str,
    interval: Duration,
    max_backoff: Duration,
    wake: Option<&tokio::sync::Notify>,
    mut shutdown: watch::Receiver<bool>,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Step, String>>,
{
    let mut backoff = interval;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = step().await;
        workers.report(name, &result);
        let wait = match &result {
            Ok(Step::Busy) => {
                backoff = interval;
                Duration::ZERO
            }
            Ok(Step::Idle) => {
                backoff = interval;
                interval
            }
            Ok(Step::After(d)) => {
                backoff = interval;
                (*d).min(interval).max(Duration::from_millis(1))
            }
            Err(e) => {
                tracing::warn!(worker = name, error = %e, "background worker step failed");
                backoff = (backoff * 2).min(interval.max(max_backoff));
                backoff
            }
        };
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = async { match wake { Some(w) => w.notified().await, None => std::future::pending().await } } => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: a thread that panicked while holding the status table must not empty the
    /// status pages nor stop the table from taking reports.
    #[test]
    fn a_panic_while_the_status_is_held_keeps_every_worker_listed() {
        let workers = std::sync::Arc::new(Workers::default());
        workers.register("dispatch");
        workers.report("dispatch", &Err("store down".into()));

        let held = workers.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = held.status.lock();
            panic!("a thread panics while holding the worker status");
        })
        .join();
        assert!(panicked.is_err());

        workers.register("reap");
        workers.report("dispatch", &Err("store still down".into()));
        let snapshot = workers.snapshot();
        let names: Vec<&str> = snapshot.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["dispatch", "reap"]);
        assert_eq!(snapshot[0].state, "error");
        assert_eq!(snapshot[0].errors, 2);
        assert_eq!(snapshot[0].last_error.as_deref(), Some("store still down"));
        assert_eq!(snapshot[1].state, "starting");
    }
}
