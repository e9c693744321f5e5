//! The engine's life cycle: one phase that only moves forward, and the two conditions that can
//! hold beside it, kept together in one atomic byte so that every reader sees one consistent
//! snapshot and every move is a compare-and-set that states what it may move from.
//!
//! What is exclusive is the [`Phase`]: starting, running, stopping, in that order and never
//! back (a stopping node can never be made to run work again). The two conditions are flags
//! because they are genuinely independent of the phase and of each other:
//!
//! - *cut off*: the lease watchdog found the lease about to run out without a renewal. It is
//!   set and cleared again as the store comes and goes, while running and while stopping
//!   alike (a stopping node still renews its lease until its attempts have ended).
//! - *superseded*: another process registered this node id, so this one must never run work
//!   again. It is never cleared, and it can come before or during a shutdown.
//!
//! The operator's state (active, draining, suspended: `Engine::set_state`) is another matter,
//! set through the API and able to move both ways; it stays beside this, in the engine.

use std::sync::atomic::{AtomicU8, Ordering};

/// Where the engine is in its life. Moves only forward: [`LifeCycle::register`] from
/// `Starting` to `Running`, [`LifeCycle::stop`] from either to `Stopping`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not registered in the store yet: not ready, takes no work.
    Starting,
    /// Registered with a lease: takes work unless a condition, the operator's state or the
    /// free slots and load say no.
    Running,
    /// `Node::shutdown` has begun: takes no work, hands its attempts back, and gives up on a
    /// store that stays away after a while rather than retrying for ever.
    Stopping,
}

/// One snapshot of the life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life {
    pub phase: Phase,
    /// The lease watchdog killed the attempts: no renewal succeeded in time. Cleared by the
    /// next renewal that succeeds.
    pub cut_off: bool,
    /// Another process registered this node id; this one never runs work again.
    pub superseded: bool,
}

impl Life {
    /// Whether the life cycle lets this node claim work (the operator's state, free slots and
    /// load are asked separately).
    pub fn accepting(self) -> bool {
        self.phase == Phase::Running && !self.cut_off && !self.superseded
    }

    pub fn stopping(self) -> bool {
        self.phase == Phase::Stopping
    }
}

const PHASE: u8 = 0b0011;
const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;
const CUT_OFF: u8 = 0b0100;
const SUPERSEDED: u8 = 0b1000;

/// The engine's [`Life`], shared between its workers, the API and shutdown.
#[derive(Debug)]
pub struct LifeCycle(AtomicU8);

impl Default for LifeCycle {
    fn default() -> Self {
        LifeCycle(AtomicU8::new(STARTING))
    }
}

impl LifeCycle {
    pub fn get(&self) -> Life {
        decode(self.0.load(Ordering::SeqCst))
    }

    /// `Starting` → `Running`, once the node is registered in the store. Returns false, and
    /// changes nothing, from any other phase: above all, a stopping node never runs again.
    pub fn register(&self) -> bool {
        self.move_phase(|p| p == STARTING, RUNNING)
    }

    /// `Starting` or `Running` → `Stopping`. Returns whether this call made the move (false
    /// when the node was stopping already).
    pub fn stop(&self) -> bool {
        self.move_phase(|p| p != STOPPING, STOPPING)
    }

    /// Marks the node cut off from the store. Returns whether it was not already.
    pub fn cut_off(&self) -> bool {
        self.0.fetch_or(CUT_OFF, Ordering::SeqCst) & CUT_OFF == 0
    }

    /// A renewal succeeded: the node is no longer cut off. Returns whether it was.
    pub fn reconnect(&self) -> bool {
        self.0.fetch_and(!CUT_OFF, Ordering::SeqCst) & CUT_OFF != 0
    }

    /// Another process registered this node id. Returns whether this is the first time it was
    /// noticed. There is no way back.
    pub fn supersede(&self) -> bool {
        self.0.fetch_or(SUPERSEDED, Ordering::SeqCst) & SUPERSEDED == 0
    }

    /// Moves the phase to `to` if `from` allows the current one, keeping the conditions.
    fn move_phase(&self, from: impl Fn(u8) -> bool, to: u8) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| from(b & PHASE).then_some((b & !PHASE) | to))
            .is_ok()
    }
}

fn decode(b: u8) -> Life {
    let phase = match b & PHASE {
        STARTING => Phase::Starting,
        RUNNING => Phase::Running,
        STOPPING => Phase::Stopping,
        other => unreachable!("life-cycle phase {other} is never written"),
    };
    Life { phase, cut_off: b & CUT_OFF != 0, superseded: b & SUPERSEDED != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_only_moves_forward() {
        let l = LifeCycle::default();
        assert_eq!(l.get(), Life { phase: Phase::Starting, cut_off: false, superseded: false });
        assert!(!l.get().accepting());
        assert!(l.register());
        assert!(!l.register(), "registered twice");
        assert_eq!(l.get().phase, Phase::Running);
        assert!(l.get().accepting());
        assert!(l.stop());
        assert!(!l.stop(), "stopped twice");
        assert!(!l.register(), "a stopping node was made to run again");
        assert_eq!(l.get().phase, Phase::Stopping);
        assert!(!l.get().accepting());
    }

    #[test]
    fn a_node_can_stop_before_it_registered() {
        let l = LifeCycle::default();
        assert!(l.stop());
        assert!(!l.register());
        assert_eq!(l.get().phase, Phase::Stopping);
    }

    #[test]
    fn cut_off_comes_and_goes_in_any_phase() {
        let l = LifeCycle::default();
        l.register();
        assert!(!l.reconnect(), "was not cut off");
        assert!(l.cut_off());
        assert!(!l.cut_off(), "cut off twice");
        assert_eq!(l.get(), Life { phase: Phase::Running, cut_off: true, superseded: false });
        assert!(!l.get().accepting());
        assert!(l.reconnect());
        assert!(l.get().accepting());

        // Stopping keeps the condition, and the condition keeps the phase.
        l.cut_off();
        l.stop();
        assert_eq!(l.get(), Life { phase: Phase::Stopping, cut_off: true, superseded: false });
        assert!(l.reconnect());
        assert_eq!(l.get(), Life { phase: Phase::Stopping, cut_off: false, superseded: false });
    }

    #[test]
    fn superseded_is_for_good() {
        let l = LifeCycle::default();
        l.register();
        assert!(l.supersede());
        assert!(!l.supersede(), "noticed twice");
        l.cut_off();
        l.reconnect();
        assert_eq!(l.get(), Life { phase: Phase::Running, cut_off: false, superseded: true });
        assert!(!l.get().accepting());
        l.stop();
        assert_eq!(l.get(), Life { phase: Phase::Stopping, cut_off: false, superseded: true });
    }

    #[test]
    fn racing_moves_each_happen_once() {
        let l = std::sync::Arc::new(LifeCycle::default());
        let wins: usize = (0..8)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || usize::from(l.register()) + usize::from(l.stop()))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        // One register and one stop won, or only the stop when it came first.
        assert!(wins == 2 || wins == 1, "{wins}");
        assert_eq!(l.get().phase, Phase::Stopping);
    }
}
