//! Counting and reporting packets that fail authentication, without letting a noisy sender flood the log.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one log line per sender in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Senders remembered at most; beyond this, senders not logged within [`LOG_INTERVAL`] are forgotten.
const MAX_SENDERS: usize = 1024;

/// Why a packet was dropped, which decides the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// A gossip packet that did not open with this cluster's key.
    Gossip,
    /// A gossip packet that opened but is not a chitchat message this node can decode.
    Undecodable,
    /// A multicast announcement that did not open with this cluster's key.
    Announcement,
    /// A multicast announcement that opened, but was sent too long ago (or too far in the future): a
    /// replay, or clocks far apart.
    StaleAnnouncement { age_secs: i64 },
}

/// The rejected-packet counter and a per-sender rate limit for the warnings.
#[derive(Default)]
pub(crate) struct Rejections {
    count: AtomicU64,
    last_logged: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Rejections {
    /// How many packets were rejected so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Counts a rejected packet and logs why, unless this sender was logged less than [`LOG_INTERVAL`] ago.
    pub(crate) fn reject(&self, from: SocketAddr, why: Rejection) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if !self.should_log(from, Instant::now()) {
            return;
        }
        match why {
            Rejection::Gossip => tracing::warn!(
                %from,
                "gossip packet from {from} rejected: not sealed with this cluster's secret \
                 (a node with a different cluster.secret, or not shoal)"
            ),
            Rejection::Undecodable => tracing::warn!(
                %from,
                "gossip packet from {from} rejected: sealed with this cluster's secret but not a chitchat message \
                 this node understands (a node running an incompatible shoal version?)"
            ),
            Rejection::Announcement => tracing::warn!(
                %from,
                "multicast announcement from {from} rejected: not sealed with this cluster's secret \
                 (a node with a different cluster.secret, or not shoal)"
            ),
            Rejection::StaleAnnouncement { age_secs } => tracing::warn!(
                %from,
                age_secs,
                "multicast announcement from {from} rejected: sent {age_secs} s from now by its clock \
                 (a replayed packet, or clocks far apart: check time synchronisation)"
            ),
        }
    }

    fn should_log(&self, from: SocketAddr, now: Instant) -> bool {
        let mut last_logged = self.last_logged.lock();
        if last_logged.get(&from).is_some_and(|at| now.duration_since(*at) < LOG_INTERVAL) {
            return false;
        }
        if last_logged.len() >= MAX_SENDERS {
            last_logged.retain(|_, at| now.duration_since(*at) < LOG_INTERVAL);
            if last_logged.len() >= MAX_SENDERS {
                // Flooded from many addresses at once: keep counting, stop logging until they age out.
                return false;
            }
        }
        last_logged.insert(from, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_sender_per_interval_and_counts_everything() {
        let rejections = Rejections::default();
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let start = Instant::now();
        assert!(rejections.should_log(a, start));
        assert!(!rejections.should_log(a, start + Duration::from_secs(1)));
        assert!(rejections.should_log(b, start + Duration::from_secs(1)));
        assert!(rejections.should_log(a, start + LOG_INTERVAL));

        rejections.reject(a, Rejection::Gossip);
        rejections.reject(a, Rejection::Announcement);
        assert_eq!(rejections.count(), 2);
    }

    #[test]
    fn the_sender_table_is_bounded() {
        let rejections = Rejections::default();
        let now = Instant::now();
        for port in 0..MAX_SENDERS as u16 {
            assert!(rejections.should_log(SocketAddr::from(([10, 0, 0, 1], port)), now));
        }
        assert!(!rejections.should_log("10.0.0.2:1".parse().unwrap(), now));
        assert!(rejections.should_log("10.0.0.2:1".parse().unwrap(), now + LOG_INTERVAL));
        assert!(rejections.last_logged.lock().len() <= MAX_SENDERS);
    }
}
