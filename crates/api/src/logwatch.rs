//! Wakes log followers when what they wait for is written, instead of each one polling.
//!
//! A follower (`GET /executions/{id}/logs?follow=true`) registers its execution here and
//! sleeps until told. Two things tell it: the engine of this node, right after it stores a
//! piece of an attempt's output or an attempt's end ([`LogHub::written`]); and, for output
//! written elsewhere (an attempt on another node whose forwarding failed, an execution still
//! queued), one background read per node of every followed execution's state and last log
//! row ([`LogHub::followed`], [`LogHub::observe`]), which wakes only the followers whose
//! execution changed (or was seen for the first time, or is gone). So a thousand idle followers cost one small query per look, not a
//! thousand.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Default)]
pub struct LogHub {
    followed: Mutex<HashMap<String, Followed>>,
}

struct Followed {
    wake: watch::Sender<()>,
    followers: usize,
    /// The last state and log position the background read saw.
    mark: Option<String>,
}

/// One follower's registration; dropping it (the client went away) unregisters it.
pub struct Follow {
    hub: Arc<LogHub>,
    id: String,
    woken: watch::Receiver<()>,
}

impl LogHub {
    /// Registers a follower of `execution`. Anything written after this call wakes it, even
    /// if the write happens before the follower starts waiting.
    pub fn follow(self: &Arc<Self>, execution: &str) -> Follow {
        let mut followed = self.followed.lock();
        let entry = followed.entry(execution.to_owned()).or_insert_with(|| Followed {
            wake: watch::Sender::new(()),
            followers: 0,
            mark: None,
        });
        entry.followers += 1;
        Follow { hub: self.clone(), id: execution.to_owned(), woken: entry.wake.subscribe() }
    }

    /// This node stored output of `execution`, or its attempt's end: wake its followers.
    pub fn written(&self, execution: &str) {
        let followed = self.followed.lock();
        if let Some(f) = followed.get(execution) {
            f.wake.send_replace(());
        }
    }

    /// The executions someone follows here, for the background read.
    pub fn followed(&self) -> Vec<String> {
        self.followed.lock().keys().cloned().collect()
    }

    /// What the background read of `asked` found (execution, state and last log row):
    /// wakes the followers of each execution whose mark moved since the last read, or that
    /// was read for the first time (it may have moved between the follower's own read and
    /// this one), or that is gone.
    pub fn observe(&self, asked: &[String], marks: &[(String, String)]) {
        let found: HashMap<&str, &str> = marks.iter().map(|(id, m)| (id.as_str(), m.as_str())).collect();
        let mut followed = self.followed.lock();
        for id in asked {
            let Some(f) = followed.get_mut(id) else { continue };
            let mark = found.get(id.as_str()).copied().unwrap_or("gone");
            if f.mark.as_deref() != Some(mark) {
                f.wake.send_replace(());
                f.mark = Some(mark.to_owned());
            }
        }
    }

    /// How many followers are registered here.
    pub fn followers(&self) -> usize {
        self.followed.lock().values().map(|f| f.followers).sum()
    }
}

impl Follow {
    /// Waits until something was written for this execution since the last wake.
    pub async fn changed(&mut self) {
        // The sender lives as long as any follower of this execution, so this only returns
        // early if the hub itself is gone, and then the caller reads and finds out.
        let _ = self.woken.changed().await;
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let mut followed = self.hub.followed.lock();
        if let Some(f) = followed.get_mut(&self.id) {
            f.followers -= 1;
            if f.followers == 0 {
                followed.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(f: &mut Follow) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn followers_are_woken_by_their_execution_only() {
        let hub = Arc::new(LogHub::default());
        let (mut a, mut b) = (hub.follow("a"), hub.follow("b"));
        hub.written("a");
        assert!(woken(&mut a).await);
        assert!(!woken(&mut b).await, "a write of another execution woke b");
        assert!(!woken(&mut a).await, "one write wakes once");
        // Marks: the first one wakes (the follower cannot know whether it moved since its
        // own read), a moved one wakes, an unchanged one does not, a vanished one does.
        let asked = vec!["b".to_owned()];
        hub.observe(&asked, &[("b".into(), "running/".into())]);
        assert!(woken(&mut b).await);
        hub.observe(&asked, &[("b".into(), "running/1:0".into())]);
        assert!(woken(&mut b).await);
        hub.observe(&asked, &[("b".into(), "running/1:0".into())]);
        assert!(!woken(&mut b).await);
        hub.observe(&asked, &[]);
        assert!(woken(&mut b).await, "a follower of an execution that is gone was not told");
        assert_eq!(hub.followers(), 2);
        drop(a);
        drop(b);
        assert!(hub.followed().is_empty(), "followers that went away stay registered");
    }

    #[tokio::test]
    async fn a_write_between_registering_and_waiting_is_not_missed() {
        let hub = Arc::new(LogHub::default());
        let mut f = hub.follow("x");
        hub.written("x");
        assert!(woken(&mut f).await);
    }
}
