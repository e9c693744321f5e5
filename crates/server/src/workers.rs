//! Background work has one shape (Garage's `Worker`): a [`Worker`] gives its name once and
//! runs one step at a time; [`Workers::spawn`] lists it and runs it in a loop that waits after
//! each step as the step asks (not at all, its interval or new work, a given time, a backoff
//! after errors), and keeps its state, its last error with the time, and its error counts for
//! `GET /api/v1/nodes/{id}`. Every step and every wait is raced against the node's
//! cancellation token, so a step that hangs never holds up shutdown, and
//! [`Workers::shutdown`] aborts, by name, any worker still running past its deadline.

use async_trait::async_trait;
use parking_lot::Mutex;
use shoal_api::{WorkerState, WorkerStatus};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What one step of a worker did.
pub enum Step {
    /// Did something; run again at once.
    Busy,
    /// Nothing to do; wait for the interval (or a wake-up).
    Idle,
    /// Nothing to do until this much later (or a wake-up), if that is sooner than the interval.
    After(Duration),
}

/// How a worker waits after failed steps.
#[derive(Clone, Copy, Debug)]
pub enum Backoff {
    /// Twice as long after each failed step in a row, from the interval up to `cap` (or the
    /// interval, if that is longer).
    Doubling { cap: Duration },
    /// Retried at its interval however often it fails.
    Never,
}

/// The longest a worker waits after failed steps by default (see [`Backoff::Doubling`]).
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// One background loop of a node.
#[async_trait]
pub trait Worker: Send + 'static {
    /// Its name in logs and in the node's status; unique in a node.
    fn name(&self) -> &'static str;
    /// How long it waits after an idle step.
    fn interval(&self) -> Duration;
    /// How it waits after failed steps.
    fn backoff(&self) -> Backoff {
        Backoff::Doubling { cap: BACKOFF_CAP }
    }
    /// What ends its wait early (work announced, definitions changed), if anything does.
    fn wake(&self) -> Option<&Notify> {
        None
    }
    /// Waits for work besides the interval: by default for [`Worker::wake`]. Workers fed by a
    /// channel (the relays) receive from it here and handle what came in their next step, so
    /// they show idle while they wait. Raced against the interval and cancellation: it must
    /// lose nothing when dropped.
    async fn wait_for_work(&mut self) {
        match self.wake() {
            Some(wake) => wake.notified().await,
            None => std::future::pending().await,
        }
    }
    /// One step. It may be dropped at any await when the node stops (store futures are
    /// cancellation-safe: docs/design/cancellation-safety.md).
    async fn step(&mut self) -> Result<Step, String>;
}

/// A worker whose state lives elsewhere: a step over a shared context `C` (an `Arc`, or a
/// tuple of them), cloned into each step.
pub struct Periodic<C, F> {
    name: &'static str,
    interval: Duration,
    backoff: Backoff,
    wake: Option<fn(&C) -> &Notify>,
    ctx: C,
    step: F,
}

impl<C, F, Fut> Periodic<C, F>
where
    // Bounds here too, so the step closure's argument needs no annotation.
    F: Fn(C) -> Fut,
    Fut: Future<Output = Result<Step, String>>,
{
    pub fn new(name: &'static str, interval: Duration, ctx: C, step: F) -> Self {
        Periodic { name, interval, backoff: Backoff::Doubling { cap: BACKOFF_CAP }, wake: None, ctx, step }
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Also runs at once when this notification (found in the context) fires.
    pub fn woken_by(mut self, wake: fn(&C) -> &Notify) -> Self {
        self.wake = Some(wake);
        self
    }
}

#[async_trait]
impl<C, F, Fut> Worker for Periodic<C, F>
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Step, String>> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn backoff(&self) -> Backoff {
        self.backoff
    }

    fn wake(&self) -> Option<&Notify> {
        self.wake.map(|w| w(&self.ctx))
    }

    async fn step(&mut self) -> Result<Step, String> {
        (self.step)(self.ctx.clone()).await
    }
}

type StatusTable = Arc<Mutex<BTreeMap<&'static str, WorkerStatus>>>;

/// A node's workers: their status, the token that stops them and the tasks that run them.
#[derive(Default)]
pub struct Workers {
    status: StatusTable,
    cancel: CancellationToken,
    tracker: TaskTracker,
    tasks: Mutex<Vec<(&'static str, AbortHandle)>>,
}

impl Workers {
    pub fn snapshot(&self) -> Vec<WorkerStatus> {
        self.status.lock().values().cloned().collect()
    }

    /// Lists the worker (state `starting`, so status pages show it from the start) and runs it
    /// until [`Workers::shutdown`]. Two workers of one name are a bug.
    pub fn spawn(&self, worker: impl Worker) {
        let name = worker.name();
        let fresh = WorkerStatus {
            name: name.to_owned(),
            state: WorkerState::Starting,
            last_error: None,
            last_error_at: None,
            consecutive_errors: 0,
            errors: 0,
        };
        let listed = self.status.lock().insert(name, fresh).is_none();
        assert!(listed, "two background workers are named {name}");
        let report = Report { status: self.status.clone(), name };
        let task = self.tracker.spawn(run(worker, report, self.cancel.clone()));
        self.tasks.lock().push((name, task.abort_handle()));
    }

    /// Stops every worker: each ends at its next await, inside a step or between steps. Those
    /// still running at `deadline` (a step that blocks its thread) are aborted and named.
    pub async fn shutdown(&self, deadline: Instant) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait()).await.is_ok() {
            return;
        }
        let late: Vec<&'static str> = {
            let tasks = self.tasks.lock();
            tasks
                .iter()
                .filter(|(_, task)| !task.is_finished())
                .map(|(name, task)| {
                    task.abort();
                    *name
                })
                .collect()
        };
        for name in late {
            tracing::warn!(worker = name, "background worker did not stop in time; aborted");
            Report { status: self.status.clone(), name }.set(WorkerState::Stopped);
        }
    }
}

/// A worker's entry in the status table.
struct Report {
    status: StatusTable,
    name: &'static str,
}

impl Report {
    fn record(&self, result: &Result<Step, String>) {
        let at = result.is_err().then(|| humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        let mut table = self.status.lock();
        let Some(s) = table.get_mut(self.name) else { return };
        match result {
            Ok(step) => {
                s.state = match step {
                    Step::Busy => WorkerState::Busy,
                    Step::Idle | Step::After(_) => WorkerState::Idle,
                };
                s.consecutive_errors = 0;
            }
            Err(e) => {
                s.state = WorkerState::Error;
                s.errors += 1;
                s.consecutive_errors += 1;
                s.last_error = Some(e.clone());
                s.last_error_at = at;
            }
        }
    }

    fn set(&self, state: WorkerState) {
        if let Some(s) = self.status.lock().get_mut(self.name) {
            s.state = state;
        }
    }
}

/// Runs `worker` step after step until `cancel` fires.
async fn run<W: Worker>(mut worker: W, report: Report, cancel: CancellationToken) {
    let name = worker.name();
    let interval = worker.interval();
    let cap = match worker.backoff() {
        Backoff::Doubling { cap } => interval.max(cap),
        Backoff::Never => interval,
    };
    let mut backoff = interval;
    loop {
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            r = worker.step() => r,
        };
        report.record(&result);
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
                backoff = (backoff * 2).min(cap);
                backoff
            }
        };
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            () = worker.wait_for_work() => {}
        }
    }
    report.set(WorkerState::Stopped);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_testkit::wait_until_async;
    use tokio::sync::mpsc;

    const T: Duration = Duration::from_secs(10);

    fn status(workers: &Workers, name: &str) -> WorkerStatus {
        workers.snapshot().into_iter().find(|w| w.name == name).unwrap()
    }

    /// A step that never returns.
    struct Hangs;

    #[async_trait]
    impl Worker for Hangs {
        fn name(&self) -> &'static str {
            "hangs"
        }
        fn interval(&self) -> Duration {
            Duration::from_millis(10)
        }
        async fn step(&mut self) -> Result<Step, String> {
            std::future::pending().await
        }
    }

    /// A step that blocks its thread (so it cannot see cancellation) until let go.
    struct Blocks {
        inside: Arc<std::sync::Barrier>,
        release: Arc<std::sync::Barrier>,
    }

    #[async_trait]
    impl Worker for Blocks {
        fn name(&self) -> &'static str {
            "blocks"
        }
        fn interval(&self) -> Duration {
            Duration::from_millis(10)
        }
        async fn step(&mut self) -> Result<Step, String> {
            self.inside.wait();
            self.release.wait();
            tokio::task::yield_now().await;
            Ok(Step::Idle)
        }
    }

    /// Issue 10: shutdown ends by its deadline whatever the steps do: a step that never
    /// returns is dropped at once, and one that blocks its thread is aborted at the deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_step_does_not_hold_up_shutdown_past_its_deadline() {
        let workers = Workers::default();
        let inside = Arc::new(std::sync::Barrier::new(2));
        let release = Arc::new(std::sync::Barrier::new(2));
        workers.spawn(Hangs);
        workers.spawn(Blocks { inside: inside.clone(), release: release.clone() });
        // The blocking worker is inside its step, holding its thread.
        tokio::task::spawn_blocking(move || inside.wait()).await.unwrap();

        let started = Instant::now();
        workers.shutdown(started + Duration::from_millis(300)).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "shutdown took {took:?} with a deadline of 300 ms");
        assert_eq!(status(&workers, "hangs").state, WorkerState::Stopped);
        assert_eq!(status(&workers, "blocks").state, WorkerState::Stopped);

        // Once let go, the aborted worker ends at its next await and runs no other step.
        tokio::task::spawn_blocking(move || release.wait()).await.unwrap();
        wait_until_async("the aborted worker to end", T, || async {
            workers.tasks.lock().iter().all(|(_, t)| t.is_finished())
        })
        .await;
        assert_eq!(status(&workers, "blocks").state, WorkerState::Stopped);
    }

    /// Each step takes its outcome from the test.
    struct Scripted(mpsc::UnboundedReceiver<Result<Step, String>>);

    #[async_trait]
    impl Worker for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn interval(&self) -> Duration {
            Duration::from_millis(1)
        }
        fn backoff(&self) -> Backoff {
            Backoff::Never
        }
        async fn step(&mut self) -> Result<Step, String> {
            match self.0.recv().await {
                Some(outcome) => outcome,
                None => std::future::pending().await,
            }
        }
    }

    /// Issue 10: consecutive errors count up and a success resets them (the total and the
    /// last error stay); each failure records when it happened.
    #[tokio::test]
    async fn consecutive_errors_count_and_reset_after_a_success() {
        let workers = Workers::default();
        let (outcomes, rx) = mpsc::unbounded_channel();
        workers.spawn(Scripted(rx));
        let before = SystemTime::now() - Duration::from_secs(1);
        for n in 0..3 {
            outcomes.send(Err(format!("store down ({n})"))).unwrap();
        }
        wait_until_async("three failed steps", T, || async { status(&workers, "scripted").errors == 3 }).await;
        let s = status(&workers, "scripted");
        assert_eq!((s.state, s.consecutive_errors), (WorkerState::Error, 3), "{s:?}");
        assert_eq!(s.last_error.as_deref(), Some("store down (2)"));
        let at = humantime::parse_rfc3339(s.last_error_at.as_deref().unwrap()).unwrap();
        assert!(at >= before && at <= SystemTime::now() + Duration::from_secs(1), "{s:?}");

        outcomes.send(Ok(Step::Idle)).unwrap();
        wait_until_async("a step that succeeds", T, || async {
            status(&workers, "scripted").state == WorkerState::Idle
        })
        .await;
        let s = status(&workers, "scripted");
        assert_eq!((s.consecutive_errors, s.errors), (0, 3), "{s:?}");
        assert_eq!(s.last_error.as_deref(), Some("store down (2)"), "the last error stays shown");

        outcomes.send(Err("store down again".into())).unwrap();
        wait_until_async("one more failed step", T, || async { status(&workers, "scripted").errors == 4 }).await;
        let s = status(&workers, "scripted");
        assert_eq!((s.state, s.consecutive_errors), (WorkerState::Error, 1), "{s:?}");
        assert_eq!(s.last_error.as_deref(), Some("store down again"));

        workers.shutdown(Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(status(&workers, "scripted").state, WorkerState::Stopped);
    }

    /// Issue 10: a thread that panicked while holding the status table must not empty the
    /// status pages nor stop the table from taking reports.
    #[tokio::test]
    async fn a_panic_while_the_status_is_held_keeps_every_worker_listed() {
        let workers = Arc::new(Workers::default());
        let (outcomes, rx) = mpsc::unbounded_channel();
        workers.spawn(Scripted(rx));
        outcomes.send(Err("store down".into())).unwrap();
        wait_until_async("a failed step", T, || async { status(&workers, "scripted").errors == 1 }).await;

        let held = workers.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = held.status.lock();
            panic!("a thread panics while holding the worker status");
        })
        .join();
        assert!(panicked.is_err());

        workers.spawn(Hangs);
        outcomes.send(Err("store still down".into())).unwrap();
        wait_until_async("a second failed step", T, || async { status(&workers, "scripted").errors == 2 }).await;
        let snapshot = workers.snapshot();
        let names: Vec<&str> = snapshot.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["hangs", "scripted"]);
        assert_eq!(snapshot[1].state, WorkerState::Error);
        assert_eq!(snapshot[1].last_error.as_deref(), Some("store still down"));
        assert_eq!(snapshot[0].state, WorkerState::Starting);
        workers.shutdown(Instant::now() + Duration::from_secs(1)).await;
    }

    /// A name is given once: a second worker of the same name is a bug, caught at start.
    #[tokio::test]
    #[should_panic(expected = "two background workers are named hangs")]
    async fn two_workers_of_one_name_are_refused() {
        let workers = Workers::default();
        workers.spawn(Hangs);
        workers.spawn(Hangs);
    }
}
