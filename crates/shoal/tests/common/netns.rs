//! A network namespace of a test's own, joined to this one by a veth pair: a node started in
//! it (`ip netns exec`) can be cut off from every other node by taking the link down, while it
//! still reaches the store over a Unix socket, which no network cut touches.
//!
//! Needs root and `ip` (Debian's iproute2, installed by scripts/install-test-deps.sh). The
//! namespace and its link are deleted when the value is dropped.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    /// The namespace's name, for `ip netns exec`.
    pub name: String,
    /// This side's address on the link, and the namespace's.
    pub host_ip: String,
    pub inner_ip: String,
    /// This side's end of the veth pair.
    link: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
}

impl Netns {
    /// A new namespace with its end of a /30 link up, on a subnet of 10.231.0.0/16 picked by
    /// this process's pid and a counter (tests of other processes may run beside it).
    pub fn create() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("shoal-test-{pid}-{n}");
        // At most 15 characters.
        let link = format!("st{}o{n}", pid % 1_000_000);
        let inner = format!("st{}i{n}", pid % 1_000_000);
        let (third, fourth) = (pid % 256, (n % 63) * 4);
        let host_ip = format!("10.231.{third}.{}", fourth + 1);
        let inner_ip = format!("10.231.{third}.{}", fourth + 2);
        ip(&["netns", "add", &name]);
        let ns = Netns { name: name.clone(), host_ip: host_ip.clone(), inner_ip: inner_ip.clone(), link: link.clone() };
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &inner]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        let inner_net = format!("{inner_ip}/30");
        for args in [
            ["addr", "add", &inner_net, "dev", &inner],
            ["link", "set", &inner, "up", ""],
            ["link", "set", "lo", "up", ""],
        ] {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend(args.into_iter().filter(|a| !a.is_empty()));
            ip(&all);
        }
        ns
    }

    /// Takes the link down: nothing crosses between the namespace and this side.
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]);
    }

    pub fn restore(&self) {
        ip(&["link", "set", &self.link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it this one.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.link]).output();
    }
}
