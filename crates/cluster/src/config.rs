//! What a node needs to take part in gossip: its identity, the cluster secret, where to listen and how
//! to find its peers, validated once before anything is bound.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::ClusterError;

/// Gossip round interval unless configured: fast enough to notice a dead peer in about a
/// second (docs/design/failure-detection.md).
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(200);

/// Failure detector threshold unless configured.
///
/// chitchat's "phi" is the time since a node's heartbeat was last seen to advance, divided by the mean
/// interval between advances. With 200 ms rounds a peer sees another's heartbeat advance about every
/// 70 to 100 ms (through that node's own messages and through third parties), so 8 means 0.55 to 0.8 s
/// of silence; liveness is re-evaluated at the end of each round, which adds up to one round. Measured
/// on one host (`tests/membership.rs` prints it): a stopped node is reported not alive after 0.6 to
/// 1.0 s on 3 to 6 nodes, about 1.2 s on 10, with no false deaths, also with the CPUs saturated.
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;

/// Configuration of one node's membership. Build it with [`MembershipConfig::new`] and adjust the fields.
#[derive(Clone)]
pub struct MembershipConfig {
    /// The node's stable id, unique in the cluster.
    pub node_id: String,
    /// Incarnation of the node: a restart must use a higher value (the server passes its store
    /// generation). Peers then forget the older incarnation.
    pub generation: u64,
    /// The cluster secret. Every gossip packet and multicast announcement is sealed (authenticated and
    /// encrypted) with keys derived from it; it must not be empty.
    pub secret: Vec<u8>,
    /// Where the gossip UDP socket binds. Port 0 picks a free port: [`crate::Membership::gossip_addr`]
    /// reports the real one.
    pub listen: SocketAddr,
    /// The address peers should send gossip to, when it differs from `listen` (NAT, containers, or a
    /// wildcard `listen`). A port of 0 means "the port `listen` was bound to".
    pub advertise: Option<SocketAddr>,
    /// Well-known peers as `"host:port"` (an IP address or a host name). Host names are resolved again
    /// every [`SEED_RESOLVE_INTERVAL`], so a Kubernetes headless service keeps working as pods come and go.
    pub seeds: Vec<String>,
    /// UDP multicast discovery on a LAN, if wanted.
    pub multicast: Option<Multicast>,
    /// Interval between gossip rounds.
    pub gossip_interval: Duration,
    /// Failure detector threshold: see [`DEFAULT_PHI_THRESHOLD`]. Higher means slower detection and fewer
    /// false deaths under load.
    pub phi_threshold: f64,
    /// Keys published from the first packet on (see [`crate::keys`]).
    pub initial_keys: Vec<(String, String)>,
}

/// How often seed host names are resolved again.
pub const SEED_RESOLVE_INTERVAL: Duration = Duration::from_secs(10);

impl MembershipConfig {
    /// A configuration with the defaults: no advertise override, no seeds, no multicast, 200 ms gossip.
    pub fn new(
        node_id: impl Into<String>,
        generation: u64,
        secret: impl Into<Vec<u8>>,
        listen: SocketAddr,
    ) -> MembershipConfig {
        MembershipConfig {
            node_id: node_id.into(),
            generation,
            secret: secret.into(),
            listen,
            advertise: None,
            seeds: Vec::new(),
            multicast: None,
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            initial_keys: Vec::new(),
        }
    }

    /// Checks everything that can be checked before binding, and parses the seeds.
    pub(crate) fn validate(&self) -> Result<Vec<Seed>, ClusterError> {
        let invalid = |message: String| Err(ClusterError::Config(message));
        if self.node_id.is_empty() {
            return invalid("the node id is empty".into());
        }
        if self.secret.is_empty() {
            return invalid("cluster.secret is empty; set the same secret on every node".into());
        }
        if self.gossip_interval.is_zero() {
            return invalid("the gossip interval must be more than zero".into());
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return invalid(format!("phi threshold {} must be a positive number", self.phi_threshold));
        }
        if self.advertise.is_none() && self.listen.ip().is_unspecified() {
            return invalid(format!(
                "gossip listen address {} is a wildcard; set an advertise address peers can reach",
                self.listen
            ));
        }
        if let Some(advertise) = self.advertise {
            if advertise.ip().is_unspecified() {
                return invalid(format!(
                    "gossip advertise address {advertise} is a wildcard; give one peers can reach"
                ));
            }
        }
        if let Some(multicast) = &self.multicast {
            if !multicast.group.ip().is_multicast() {
                return invalid(format!(
                    "multicast group {} is not a multicast address (224.0.0.0/4, e.g. 239.7.7.7:7799)",
                    multicast.group
                ));
            }
            if multicast.group.port() == 0 {
                return invalid(format!("multicast group {} needs a port", multicast.group));
            }
        }
        self.seeds.iter().map(|seed| Seed::parse(seed)).collect()
    }
}

impl fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipConfig")
            .field("node_id", &self.node_id)
            .field("generation", &self.generation)
            .field("secret", &"<redacted>")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .field("multicast", &self.multicast)
            .field("gossip_interval", &self.gossip_interval)
            .field("phi_threshold", &self.phi_threshold)
            .field("initial_keys", &self.initial_keys)
            .finish()
    }
}

/// UDP multicast discovery: nodes announce their gossip address to `group` every second on `interface`,
/// with a TTL of 1 (the announcement never leaves the local network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Multicast {
    /// Group address and port, e.g. `239.7.7.7:7799`. Every node of one cluster uses the same.
    pub group: SocketAddrV4,
    /// Address of the local interface to send and receive on.
    pub interface: Ipv4Addr,
}

/// A parsed seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seed {
    /// A literal address, used as is.
    Addr(SocketAddr),
    /// `host:port`, resolved periodically.
    Host(String),
}

impl Seed {
    fn parse(text: &str) -> Result<Seed, ClusterError> {
        if let Ok(addr) = text.parse() {
            return Ok(Seed::Addr(addr));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0) => {
                Ok(Seed::Host(text.to_owned()))
            }
            _ => Err(ClusterError::Config(format!("seed {text:?} must be host:port, e.g. node-a:7800"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MembershipConfig {
        MembershipConfig::new("n1", 1, b"secret".to_vec(), "127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn seeds_are_addresses_or_host_and_port() {
        let mut cfg = config();
        cfg.seeds = vec!["127.0.0.1:7800".into(), "[::1]:7800".into(), "node-a.svc:7800".into()];
        assert_eq!(
            cfg.validate().unwrap(),
            vec![
                Seed::Addr("127.0.0.1:7800".parse().unwrap()),
                Seed::Addr("[::1]:7800".parse().unwrap()),
                Seed::Host("node-a.svc:7800".into()),
            ]
        );
        for bad in ["node-a", ":7800", "node-a:", "node-a:port", "node-a:0", "node-a:70000"] {
            cfg.seeds = vec![bad.into()];
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("must be host:port"), "{bad}: {err}");
        }
    }

    #[test]
    fn invalid_settings_are_named() {
        type Change = fn(&mut MembershipConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.secret.clear(), "secret is empty"),
            (|c| c.node_id.clear(), "node id is empty"),
            (|c| c.gossip_interval = Duration::ZERO, "gossip interval"),
            (|c| c.phi_threshold = f64::NAN, "phi threshold"),
            (|c| c.listen = "0.0.0.0:7800".parse().unwrap(), "set an advertise address"),
            (
                |c| {
                    c.multicast =
                        Some(Multicast { group: "10.0.0.1:7799".parse().unwrap(), interface: Ipv4Addr::LOCALHOST })
                },
                "not a multicast address",
            ),
        ];
        for (change, expected) in cases {
            let mut cfg = config();
            change(&mut cfg);
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let mut cfg = config();
        cfg.listen = "0.0.0.0:7800".parse().unwrap();
        cfg.advertise = Some("10.1.2.3:7800".parse().unwrap());
        cfg.validate().unwrap();
    }

    #[test]
    fn debug_hides_the_secret() {
        let text = format!("{:?}", config());
        assert!(text.contains("secret: \"<redacted>\"") && !text.contains("115"), "{text}");
    }
}
