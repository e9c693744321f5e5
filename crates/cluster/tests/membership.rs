//! Real memberships on 127.0.0.1 (port 0, real UDP): forming a cluster by each discovery path, keeping a
//! node with the wrong secret out, and noticing deaths and restarts.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_cluster::{keys, Membership, MembershipConfig, Multicast, Peer};

const SECRET: &[u8] = b"test cluster secret";

/// Deadline for a cluster to form or a change to spread: generous, as tests share two cores.
const FORM: Duration = Duration::from_secs(10);

/// Deadline for a death to be noticed: the point is about one second; this only catches "never".
const DETECT: Duration = Duration::from_secs(5);

fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "shoal_cluster=info,chitchat=warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

fn config(node_id: &str) -> MembershipConfig {
    MembershipConfig::new(node_id, 1, SECRET, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

fn start(config: MembershipConfig) -> Membership {
    Membership::start(config).expect("membership starts")
}

/// Polls `condition` until it holds and returns how long that took; panics with `what` and `context()`
/// after `timeout`.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn alive(membership: &Membership) -> BTreeSet<String> {
    membership.snapshot().into_iter().filter(|peer| peer.alive).map(|peer| peer.id).collect()
}

fn views(nodes: &[&Membership]) -> String {
    nodes.iter().map(|node| format!("{} sees {:#?}\n", node.node_id(), node.snapshot())).collect()
}

fn ids(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// Waits until every node sees exactly `expected` alive.
fn wait_for_cluster(nodes: &[&Membership], expected: &[&str]) -> Duration {
    let expected = ids(expected);
    wait_until(
        &format!("every node to see {expected:?} alive"),
        FORM,
        || nodes.iter().all(|node| alive(node) == expected),
        || views(nodes),
    )
}

fn peer(membership: &Membership, id: &str) -> Option<Peer> {
    membership.snapshot().into_iter().find(|peer| peer.id == id)
}

#[test]
fn seeds_form_a_cluster_and_keys_spread() {
    init_tracing();
    let a = start(config("a"));
    let mut b_config = config("b");
    b_config.seeds = vec![a.gossip_addr().to_string()];
    b_config.initial_keys = vec![(keys::STATE.into(), "joining".into())];
    let b = start(b_config);
    let mut c_config = config("c");
    c_config.seeds = vec![format!("localhost:{}", a.gossip_addr().port())];
    let c = start(c_config);

    let formed = wait_for_cluster(&[&a, &b, &c], &["a", "b", "c"]);
    println!("three nodes formed a cluster from seeds in {formed:?}");
    assert_eq!(peer(&a, "b").unwrap().keys.get(keys::STATE).map(String::as_str), Some("joining"));

    let mut changes = c.subscribe();
    changes.mark_unchanged();
    a.set(keys::URL, "http://127.0.0.1:7700");
    b.set(keys::STATE, "active");
    let url_seen = |node: &Membership| peer(node, "a").and_then(|a| a.keys.get(keys::URL).cloned());
    let state_seen = |node: &Membership| peer(node, "b").and_then(|b| b.keys.get(keys::STATE).cloned());
    wait_until(
        "the keys set on a and b to reach the others",
        FORM,
        || {
            [&b, &c].iter().all(|node| url_seen(node).as_deref() == Some("http://127.0.0.1:7700"))
                && [&a, &c].iter().all(|node| state_seen(node).as_deref() == Some("active"))
        },
        || views(&[&a, &b, &c]),
    );
    assert!(changes.has_changed().unwrap(), "c's subscribers hear of the new keys");
    // Subscribers wait on their own runtime, whatever the gossip thread runs.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    changes.mark_unchanged();
    a.set(keys::CPU, "12.5");
    let heard = runtime.block_on(async {
        let cpu_seen = |_: &u64| peer(&c, "a").is_some_and(|a| a.keys.contains_key(keys::CPU));
        tokio::time::timeout(FORM, changes.wait_for(cpu_seen)).await
    });
    assert!(heard.is_ok_and(|ok| ok.is_ok()), "c's subscribers hear of a's new key\n{}", views(&[&c]));
    assert_eq!(a.snapshot().iter().find(|p| p.id == "a").unwrap().keys[keys::URL], "http://127.0.0.1:7700");
    assert_eq!(a.is_alive("b"), Some(true));
    assert_eq!(a.is_alive("nobody"), None);
    assert_eq!(a.rejected_packets() + b.rejected_packets() + c.rejected_packets(), 0);
}

#[test]
fn multicast_alone_forms_a_cluster() {
    init_tracing();
    let mut rng = rand::thread_rng();
    let group = SocketAddrV4::new(
        Ipv4Addr::new(239, rng.gen(), rng.gen(), rng.gen_range(1..255)),
        rng.gen_range(20_000..60_000),
    );
    let multicast = Multicast { group, interface: Ipv4Addr::LOCALHOST };
    let nodes: Vec<Membership> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let mut config = config(id);
            config.multicast = Some(multicast);
            start(config)
        })
        .collect();
    let refs: Vec<&Membership> = nodes.iter().collect();
    let formed = wait_for_cluster(&refs, &["a", "b", "c"]);
    println!("three nodes formed a cluster through multicast group {group} in {formed:?}");
    assert!(nodes.iter().all(|node| node.rejected_packets() == 0));

    // A node of another cluster on the same group: its announcements are refused, it never gets in.
    let mut intruder_config = config("intruder");
    intruder_config.secret = b"another secret".to_vec();
    intruder_config.multicast = Some(multicast);
    let intruder = start(intruder_config);
    wait_until(
        "the intruder's announcements to be rejected (and the cluster's by the intruder)",
        FORM,
        || nodes.iter().all(|node| node.rejected_packets() >= 2) && intruder.rejected_packets() >= 2,
        || format!("rejected: {:?}", nodes.iter().map(Membership::rejected_packets).collect::<Vec<_>>()),
    );
    assert!(nodes.iter().all(|node| peer(node, "intruder").is_none()), "{}", views(&refs));
    assert_eq!(intruder.snapshot().len(), 1, "{}", views(&[&intruder]));
}

#[test]
fn memberships_can_be_shared_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<Membership>();
}

#[test]
fn added_seeds_alone_form_a_cluster() {
    init_tracing();
    let a = start(config("a"));
    let b = start(config("b"));
    let c = start(config("c"));
    // As the server does with the node registry: each node learns one other address from the store.
    b.add_seeds(vec![a.gossip_addr()]);
    c.add_seeds(vec![b.gossip_addr()]);
    let formed = wait_for_cluster(&[&a, &b, &c], &["a", "b", "c"]);
    println!("three nodes formed a cluster from added seeds in {formed:?}");
}

#[test]
fn a_node_with_another_secret_stays_out_and_is_counted() {
    init_tracing();
    let a = start(config("a"));
    let mut b_config = config("b");
    b_config.seeds = vec![a.gossip_addr().to_string()];
    let b = start(b_config);
    let mut intruder_config = config("intruder");
    intruder_config.secret = b"another secret".to_vec();
    intruder_config.seeds = vec![a.gossip_addr().to_string(), b.gossip_addr().to_string()];
    let intruder = start(intruder_config);
    a.add_seeds(vec![intruder.gossip_addr()]);

    wait_for_cluster(&[&a, &b], &["a", "b"]);
    // Whatever else lands on the gossip port is dropped and counted too.
    let stranger = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let before = b.rejected_packets();
    stranger.send_to(b"GET / HTTP/1.1\r\n\r\n", b.gossip_addr()).unwrap();
    wait_until("b to count the stranger's packet", FORM, || b.rejected_packets() > before, String::new);
    // Each side keeps trying the other (seed rounds every second): wait for several rejected packets
    // everywhere, then check nobody got in.
    wait_until(
        "packets between the intruder and the cluster to be rejected on both sides",
        FORM,
        || a.rejected_packets() >= 3 && b.rejected_packets() >= 3 && intruder.rejected_packets() >= 3,
        || {
            format!(
                "rejected: a {}, b {}, intruder {}",
                a.rejected_packets(),
                b.rejected_packets(),
                intruder.rejected_packets()
            )
        },
    );
    for node in [&a, &b] {
        assert!(peer(node, "intruder").is_none(), "{}", views(&[node]));
        assert_eq!(node.is_alive("intruder"), None);
    }
    assert_eq!(alive(&intruder), ids(&["intruder"]), "{}", views(&[&intruder]));
    assert_eq!(intruder.snapshot().len(), 1);
}

#[test]
fn a_stopped_node_is_reported_dead_in_about_a_second() {
    init_tracing();
    let mut detections = Vec::new();
    for round in 0..5 {
        let a = start(config("a"));
        let mut b_config = config("b");
        b_config.seeds = vec![a.gossip_addr().to_string()];
        let b = start(b_config);
        let mut c_config = config("c");
        c_config.seeds = vec![a.gossip_addr().to_string()];
        let c = start(c_config);
        wait_for_cluster(&[&a, &b, &c], &["a", "b", "c"]);

        c.shutdown();
        let stopped = Instant::now();
        let mut seen_by = Vec::new();
        wait_until(
            "a and b to report c not alive",
            DETECT,
            || {
                // Healthy nodes must stay alive to each other all along: no false deaths.
                assert_eq!(a.is_alive("b"), Some(true), "false death of b\n{}", views(&[&a]));
                assert_eq!(b.is_alive("a"), Some(true), "false death of a\n{}", views(&[&b]));
                for (name, node) in [("a", &a), ("b", &b)] {
                    if node.is_alive("c") == Some(false) && !seen_by.iter().any(|(seen, _)| *seen == name) {
                        seen_by.push((name, stopped.elapsed()));
                    }
                }
                seen_by.len() == 2
            },
            || views(&[&a, &b]),
        );
        println!("round {round}: c reported not alive by {seen_by:?} after it stopped");
        detections.extend(seen_by.into_iter().map(|(_, elapsed)| elapsed));
    }
    detections.sort();
    println!(
        "failure detection over {} observations: min {:?}, median {:?}, max {:?}",
        detections.len(),
        detections[0],
        detections[detections.len() / 2],
        detections[detections.len() - 1]
    );
}

#[test]
fn a_restart_with_a_higher_generation_replaces_the_old_one() {
    init_tracing();
    let a = start(config("a"));
    let mut b_config = config("b");
    b_config.seeds = vec![a.gossip_addr().to_string()];
    let b = start(b_config);
    let mut c_config = config("c");
    c_config.seeds = vec![a.gossip_addr().to_string()];
    c_config.initial_keys = vec![(keys::STATE.into(), "old".into())];
    let c = start(c_config.clone());
    wait_for_cluster(&[&a, &b, &c], &["a", "b", "c"]);

    // Restart at once, on the same address, before the old incarnation could be declared dead.
    let c_addr = c.gossip_addr();
    c.shutdown();
    c_config.generation = 2;
    c_config.listen = c_addr;
    c_config.initial_keys = vec![(keys::STATE.into(), "new".into())];
    let c = start(c_config);

    let replaced = |node: &Membership| {
        let cs: Vec<Peer> = node.snapshot().into_iter().filter(|peer| peer.id == "c").collect();
        cs.len() == 1
            && cs[0].generation == 2
            && cs[0].alive
            && cs[0].keys.get(keys::STATE).map(String::as_str) == Some("new")
    };
    let took = wait_until(
        "a and b to see generation 2 of c, alive, in place of generation 1",
        FORM,
        || {
            for node in [&a, &b] {
                // One entry per node id all along: once generation 2 is heard of, generation 1 is gone.
                let cs: Vec<Peer> = node.snapshot().into_iter().filter(|peer| peer.id == "c").collect();
                assert_eq!(cs.len(), 1, "{cs:?}");
            }
            [&a, &b].iter().all(|node| replaced(node))
        },
        || views(&[&a, &b, &c]),
    );
    println!("generation 2 of c replaced generation 1 in {took:?}");
    assert_eq!(a.is_alive("c"), Some(true));
    wait_for_cluster(&[&a, &b, &c], &["a", "b", "c"]);
}
