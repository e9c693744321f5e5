//! UDP multicast discovery on a LAN: every node announces its gossip address to a group every second, and
//! each valid announcement heard from another node makes its address a seed.
//!
//! Announcements are sealed with a key derived from the cluster secret (a different key from gossip's),
//! and carry the sender's clock so that a recorded announcement cannot be replayed for long. TTL is 1: an
//! announcement never leaves the local network.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::Multicast;
use crate::crypto::Sealer;
use crate::rejections::{Rejection, Rejections};
use crate::ClusterError;

/// How often a node announces itself.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

/// Announcements whose timestamp is further than this from our clock are refused: it bounds how long a
/// captured announcement can be replayed, and tolerates clocks that are off by less than this.
const MAX_CLOCK_DISTANCE: Duration = Duration::from_secs(300);

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Announcement {
    pub(crate) node_id: String,
    pub(crate) generation: u64,
    pub(crate) gossip_addr: SocketAddr,
    /// Sender's wall clock, milliseconds since the Unix epoch.
    pub(crate) sent_at_ms: u64,
}

/// Binds a socket to the group's port and joins the group on the interface, with the options every node
/// on one host needs to share the port (`SO_REUSEADDR`, `SO_REUSEPORT`).
pub(crate) fn bind(multicast: &Multicast) -> Result<std::net::UdpSocket, ClusterError> {
    let Multicast { group, interface } = *multicast;
    let socket = (|| {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        // Bound to the group address (not the wildcard), the socket receives this group's datagrams only.
        socket.bind(&SocketAddr::V4(group).into())?;
        socket.join_multicast_v4(group.ip(), &interface)?;
        socket.set_multicast_if_v4(&interface)?;
        socket.set_multicast_ttl_v4(1)?;
        // Nodes on the same host (and tests) hear each other only through the loopback of multicast.
        socket.set_multicast_loop_v4(true)?;
        socket.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(socket)
    })()
    .map_err(|source| ClusterError::Multicast { group, interface, source })?;
    Ok(socket.into())
}

/// Everything the discovery task needs.
pub(crate) struct Discovery {
    pub(crate) group: SocketAddrV4,
    pub(crate) node_id: String,
    pub(crate) generation: u64,
    pub(crate) gossip_addr: SocketAddr,
    pub(crate) sealer: Sealer,
    pub(crate) rejections: Arc<Rejections>,
    /// Where the gossip addresses of other nodes go.
    pub(crate) found: UnboundedSender<SocketAddr>,
}

impl Discovery {
    /// Announces this node on `socket` (from [`bind`]) every [`ANNOUNCE_INTERVAL`], the first time at once,
    /// and reports the others, until `found` is closed. Must run inside a tokio runtime.
    pub(crate) async fn run(self, socket: std::net::UdpSocket) {
        let socket = match UdpSocket::from_std(socket) {
            Ok(socket) => socket,
            Err(err) => {
                tracing::error!(error = %err, "multicast discovery cannot start");
                return;
            }
        };
        let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; 2048];
        let mut sealed = Vec::new();
        let mut send_failing = false;
        loop {
            tokio::select! {
                _ = announce.tick() => {
                    self.seal_announcement(&mut sealed);
                    match socket.send_to(&sealed, self.group).await {
                        Ok(_) => send_failing = false,
                        Err(err) if !send_failing => {
                            send_failing = true;
                            tracing::warn!(group = %self.group, error = %err, "cannot send multicast announcement");
                        }
                        Err(err) => tracing::debug!(group = %self.group, error = %err, "cannot send multicast announcement"),
                    }
                }
                received = socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        if let Some(addr) = self.open(&mut buf[..len], from) {
                            if self.found.send(addr).is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "multicast receive failed"),
                },
                _ = self.found.closed() => return,
            }
        }
    }

    fn seal_announcement(&self, out: &mut Vec<u8>) {
        let announcement = Announcement {
            node_id: self.node_id.clone(),
            generation: self.generation,
            gossip_addr: self.gossip_addr,
            sent_at_ms: now_ms(),
        };
        self.sealer.seal_with(out, |buf| serde_json::to_writer(buf, &announcement).expect("announcements serialize"));
    }

    /// The gossip address announced in a valid packet from another node, if that is what this is.
    fn open(&self, packet: &mut [u8], from: SocketAddr) -> Option<SocketAddr> {
        let Some(announcement) =
            self.sealer.open(packet).ok().and_then(|plain| serde_json::from_slice::<Announcement>(plain).ok())
        else {
            self.rejections.reject(from, Rejection::Announcement);
            return None;
        };
        let age_ms = now_ms() as i64 - announcement.sent_at_ms as i64;
        if age_ms.unsigned_abs() > MAX_CLOCK_DISTANCE.as_millis() as u64 {
            self.rejections.reject(from, Rejection::StaleAnnouncement { age_secs: age_ms / 1000 });
            return None;
        }
        if announcement.node_id == self.node_id {
            return None;
        }
        Some(announcement.gossip_addr)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MULTICAST_LABEL;

    fn discovery(node_id: &str, secret: &[u8]) -> Discovery {
        Discovery {
            group: "239.1.2.3:7799".parse().unwrap(),
            node_id: node_id.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:7800".parse().unwrap(),
            sealer: Sealer::new(secret, MULTICAST_LABEL),
            rejections: Arc::default(),
            found: tokio::sync::mpsc::unbounded_channel().0,
        }
    }

    fn sealed(secret: &[u8], announcement: &Announcement) -> Vec<u8> {
        let mut out = Vec::new();
        Sealer::new(secret, MULTICAST_LABEL).seal(&serde_json::to_vec(announcement).unwrap(), &mut out);
        out
    }

    #[test]
    fn announcements_of_other_nodes_with_the_secret_and_a_close_clock_are_accepted() {
        let me = discovery("a", b"secret");
        let from: SocketAddr = "127.0.0.1:7799".parse().unwrap();
        let mut other = Announcement {
            node_id: "b".into(),
            generation: 3,
            gossip_addr: "10.0.0.2:7800".parse().unwrap(),
            sent_at_ms: now_ms(),
        };
        assert_eq!(me.open(&mut sealed(b"secret", &other), from), Some(other.gossip_addr));

        // Our own announcement, looped back: ignored, not an error.
        let mut own = sealed(b"secret", &Announcement { node_id: "a".into(), ..other.clone() });
        assert_eq!(me.open(&mut own, from), None);
        assert_eq!(me.rejections.count(), 0);

        assert_eq!(me.open(&mut sealed(b"another secret", &other), from), None);
        assert_eq!(me.open(&mut b"hello".to_vec(), from), None);
        assert_eq!(me.rejections.count(), 2);

        other.sent_at_ms -= MAX_CLOCK_DISTANCE.as_millis() as u64 + 1_000;
        assert_eq!(me.open(&mut sealed(b"secret", &other), from), None, "a replay of an old announcement");
        assert_eq!(me.rejections.count(), 3);
    }

    #[test]
    fn sealed_announcements_open_as_sent() {
        let me = discovery("a", b"secret");
        let mut packet = Vec::new();
        me.seal_announcement(&mut packet);
        let plain = me.sealer.open(&mut packet).unwrap();
        let announcement: Announcement = serde_json::from_slice(plain).unwrap();
        assert_eq!((announcement.node_id.as_str(), announcement.generation), ("a", 1));
        assert_eq!(announcement.gossip_addr, me.gossip_addr);
    }
}
