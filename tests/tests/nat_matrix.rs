//! Which pairs of NAT types CLADNet connects, and how, with a real controller and agents
//! (default settings: every link SEALED, public endpoints from the reflector): two hosts per
//! NAT type, each in a cloud of its own, all in one network, so every pair of types (and two
//! of the same type) is tried at once. The two 1:1 hosts serve as relays (`relay = true`).
//!
//! For one host pair of every connectable pair of NAT types, a verified TCP transfer runs
//! both ways. Counters on the internet router show a direct pair's bytes went straight
//! between the two hosts' public addresses, and a relayed pair's did not (the relays'
//! counters show they carried them); the agents' status names the path, and so does the
//! controller (`cladnet peer show --json`, from the agents' reports). UDP-blocked hosts
//! reach nobody (there is no TCP relay path) and their peers' status (and the controller)
//! says `unreachable`.

use std::{thread, time::Duration};

use cladnet_tests::{Mesh, Nat, SiteLabels, Topology, require_netns};

const UP: Duration = Duration::from_secs(30);
/// Bytes of each verified transfer.
const TRANSFER: usize = 1 << 20;

/// Host, its cloud, the cloud's NAT, and the site labels it reports (each host its own site, so
/// every link uses public endpoints).
const HOSTS: [(&str, &str, Nat, SiteLabels<'static>); 8] = [
    ("one1", "c1", Nat::OneToOne, cladnet_tests::site("p1", "v1")),
    ("one2", "c2", Nat::OneToOne, cladnet_tests::site("p2", "v2")),
    ("easy1", "c3", Nat::Easy, cladnet_tests::site("p3", "v3")),
    ("easy2", "c4", Nat::Easy, cladnet_tests::site("p4", "v4")),
    ("hard1", "c5", Nat::Hard, cladnet_tests::site("p5", "v5")),
    ("hard2", "c6", Nat::Hard, cladnet_tests::site("p6", "v6")),
    (
        "noudp1",
        "c7",
        Nat::UdpBlocked,
        cladnet_tests::site("p7", "v7"),
    ),
    (
        "noudp2",
        "c8",
        Nat::UdpBlocked,
        cladnet_tests::site("p8", "v8"),
    ),
];

/// The hosts that serve as relays.
const RELAYS: [&str; 2] = ["one1", "one2"];

/// How two hosts reach each other.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Reach {
    Direct,
    Relay,
    Unreachable,
}

/// How two hosts behind NATs `a` and `b` reach each other.
fn expected(a: Nat, b: Nat) -> Reach {
    match (a, b) {
        // No UDP path at all, not even to a relay: needs a TCP/TLS relay path (not built).
        (Nat::UdpBlocked, _) | (_, Nat::UdpBlocked) => Reach::Unreachable,
        // Each side's NAT picks a new port towards the other, so neither side's datagrams
        // match a mapping the other opened: through a relay both reach directly.
        (Nat::Hard, Nat::Hard | Nat::Easy) | (Nat::Easy, Nat::Hard) => Reach::Relay,
        // A 1:1 side is reachable at its public endpoint; the other side's first handshake
        // opens its own NAT and the answer follows it back. Two easy NATs keep their ports,
        // so the endpoints the reflector saw are the ones both sides punch.
        _ => Reach::Direct,
    }
}

/// `host`'s path to `peer` (`direct`, `relay`, ...) and the relay's node id, from its status.
fn path(mesh: &Mesh, host: &str, peer: &str) -> (String, Option<String>) {
    let id = mesh.peer(peer).expect("peer")["hostId"]
        .as_str()
        .expect("hostId")
        .to_owned();
    let s = mesh.agent_status(host);
    let p = s["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["node_id"] == id.as_str());
    match p {
        Some(p) => (
            p["path"].as_str().unwrap_or("?").to_owned(),
            p["via"].as_str().map(str::to_owned),
        ),
        None => ("none".into(), None),
    }
}

/// `host`'s path to `peer` and the relay's host id as the controller shows them
/// (`cladnet --json peer show`, from `host`'s last statistics report; empty when none yet).
fn controller_path(mesh: &Mesh, host: &str, peer: &str) -> (String, Option<String>) {
    let link = mesh.link(host, peer);
    (
        link["path"].as_str().unwrap_or_default().to_owned(),
        link["via"].as_str().map(str::to_owned),
    )
}

/// Waits until the controller shows `host`'s path to `peer` as `want` (agents report every
/// 10 s) and returns the relay it names.
fn wait_controller_path(mesh: &Mesh, host: &str, peer: &str, want: &str) -> Option<String> {
    let mut via = None;
    let since = std::time::Instant::now();
    mesh.wait(
        &format!("the controller shows {host}'s path to {peer} as {want}"),
        Duration::from_secs(25),
        |m| {
            let (path, v) = controller_path(m, host, peer);
            via = v;
            path == want
        },
    );
    eprintln!(
        "  the controller shows {host} -> {peer}: {want} via {via:?} (after {:.1} s)",
        since.elapsed().as_secs_f64()
    );
    via
}

/// Bytes the relays forwarded so far.
fn relayed_bytes(mesh: &Mesh) -> u64 {
    RELAYS
        .iter()
        .map(|r| {
            mesh.agent_status(r)["relay"]["forwarded"][1]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

fn nat_of(host: &str) -> Nat {
    HOSTS.iter().find(|h| h.0 == host).expect("host").2
}

/// Counts, on the internet router, the UDP bytes forwarded from each host's public address
/// straight to each other host's: traffic between two hosts that goes anywhere else (through
/// a relay) does not show up in their counter.
fn count_direct(topo: &Topology) {
    let mut rules = String::from("table ip direct {\n");
    let mut chain = String::from(" chain fwd_count { type filter hook forward priority 0;\n");
    for (a, ..) in HOSTS {
        for (b, ..) in HOSTS.iter().filter(|h| h.0 != a) {
            let (pa, pb) = (topo.host(a).public_ip(), topo.host(b).public_ip());
            rules += &format!(" counter d_{a}_{b} {{}}\n");
            chain +=
                &format!("  ip saddr {pa} ip daddr {pb} meta l4proto udp counter name d_{a}_{b}\n");
        }
    }
    rules += &chain;
    rules += " }\n}\n";
    topo.internet().load_nft(&rules).expect("direct counters");
}

/// Bytes counted by [`count_direct`] from `a` straight to `b`.
fn direct_bytes(topo: &Topology, a: &str, b: &str) -> u64 {
    let out = topo
        .internet()
        .exec([
            "nft",
            "list",
            "counter",
            "ip",
            "direct",
            &format!("d_{a}_{b}"),
        ])
        .expect("list counter");
    out.split("bytes ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {out}"))
}

#[test]
fn nat_pairs_connect_directly_or_through_a_relay() {
    require_netns!();
    let mut b = Topology::builder();
    for (host, cloud, nat, _) in HOSTS {
        b = b.cloud(cloud, "192.168.1.0/24", nat).host(cloud, host);
    }
    let topo = b
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
        .allow_udp_to("ctl")
        .build()
        .expect("topology");
    count_direct(&topo);
    let mut mesh = Mesh::start(topo, "ctl", "10.81.0.0/24", &[]);
    // Every agent at the same instant.
    for (host, _, _, site) in HOSTS {
        let relay: &[&str] = if RELAYS.contains(&host) {
            &["--relay", "true"]
        } else {
            &[]
        };
        mesh.start_agent(host, site, relay);
    }
    let started = std::time::Instant::now();
    mesh.wait("every agent joined", UP, |m| {
        HOSTS.iter().all(|h| {
            m.peer(h.0)
                .is_some_and(|p| p["state"].as_str() == Some("up"))
        })
    });
    for (a, _, _, _) in HOSTS {
        mesh.overlay_ip(a);
    }
    let pairs: Vec<(&str, &str)> = HOSTS
        .iter()
        .enumerate()
        .flat_map(|(i, a)| HOSTS[i + 1..].iter().map(move |b| (a.0, b.0)))
        .collect();
    let reach = |(a, b): &(&str, &str)| expected(nat_of(a), nat_of(b));
    let (reachable, unreachable): (Vec<_>, Vec<_>) =
        pairs.iter().partition(|p| reach(p) != Reach::Unreachable);

    for (a, b) in &reachable {
        let dst = mesh.overlay_ip(b);
        mesh.wait(&format!("{a} pings {b} ({dst})"), UP, |m| {
            m.topo.host(a).pings(dst, 1)
        });
        let back = mesh.overlay_ip(a);
        mesh.wait(&format!("{b} pings {a} ({back})"), UP, |m| {
            m.topo.host(b).pings(back, 1)
        });
    }
    // One host pair per connectable pair of NAT types moves verified bytes both ways: a direct
    // pair's straight between the two public addresses, a relayed pair's through a relay.
    let mut kinds_done = vec![];
    let mut port = 5400;
    for (a, b) in &reachable {
        let kinds = (nat_of(a), nat_of(b));
        if kinds_done.contains(&kinds) {
            continue;
        }
        kinds_done.push(kinds);
        let how = reach(&(*a, *b));
        for (from, to) in [(*a, *b), (*b, *a)] {
            let before = direct_bytes(&mesh.topo, from, to);
            let relayed_before = relayed_bytes(&mesh);
            port += 1;
            let secs = mesh.verified_transfer(from, to, port, TRANSFER);
            let direct = direct_bytes(&mesh.topo, from, to) - before;
            let relayed = relayed_bytes(&mesh) - relayed_before;
            let (seen, via) = path(&mesh, from, to);
            eprintln!(
                "{from} ({:?}) -> {to} ({:?}): {TRANSFER} bytes verified in {secs:.2} s, \
                 {direct} bytes direct, {relayed} bytes relayed; path {seen} via {via:?}",
                nat_of(from),
                nat_of(to)
            );
            match how {
                Reach::Direct => {
                    assert!(
                        direct > TRANSFER as u64,
                        "{from} -> {to} did not go direct: {direct} bytes between their public \
                         addresses"
                    );
                    assert_eq!(seen, "direct", "{from}'s path to {to}");
                    let via = wait_controller_path(&mesh, from, to, "direct");
                    assert_eq!(via, None, "{from} -> {to}: a direct path has no relay");
                }
                _ => {
                    // Direct probes (keepalives) may still leave; the transfer does not.
                    assert!(
                        direct < TRANSFER as u64 / 16,
                        "{from} -> {to} is relayed, yet {direct} bytes went between their \
                         public addresses"
                    );
                    assert!(
                        relayed > TRANSFER as u64,
                        "{from} -> {to}: the relays forwarded only {relayed} bytes"
                    );
                    assert_eq!(seen, "relay", "{from}'s path to {to}");
                    assert!(
                        via.as_deref().is_some_and(|v| RELAYS
                            .iter()
                            .any(|r| mesh.peer(r).unwrap()["hostId"] == v)),
                        "{from} -> {to} via {via:?}"
                    );
                    // The controller shows it too, with the relay's host id.
                    let shown = wait_controller_path(&mesh, from, to, "relay");
                    assert!(
                        shown.as_deref().is_some_and(|v| RELAYS
                            .iter()
                            .any(|r| mesh.peer(r).unwrap()["hostId"] == v)),
                        "the controller shows {from} -> {to} via {shown:?}"
                    );
                }
            }
        }
    }
    assert_eq!(
        kinds_done.len(),
        6,
        "1:1-1:1, 1:1-easy, 1:1-hard, easy-easy, easy-hard, hard-hard"
    );
    // Every connectable pair is up. Give the others at least 15 s (three WireGuard handshake
    // retries, and the 5 s after which a pair looks for a relay) since the agents started.
    thread::sleep(Duration::from_secs(15).saturating_sub(started.elapsed()));
    let topo = &mesh.topo;
    let results: Vec<((&str, &str), bool)> = thread::scope(|s| {
        let handles: Vec<_> = unreachable
            .iter()
            .map(|&(a, b)| {
                let dst = mesh.overlay_ip(b);
                s.spawn(move || {
                    let pinged = topo.host(a).pings(dst, 3) || topo.host(a).pings(dst, 3);
                    ((a, b), pinged)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect()
    });
    eprintln!(
        "links ({} reachable, {} not):",
        reachable.len(),
        results.len()
    );
    for p @ (a, b) in &reachable {
        eprintln!("  {a:>7} <-> {b:<7} {:?}", reach(p));
    }
    for ((a, b), pinged) in &results {
        eprintln!(
            "  {a:>7} <-> {b:<7} {}",
            if *pinged {
                "REACHABLE (expected not)"
            } else {
                "unreachable"
            }
        );
    }
    let surprises: Vec<String> = results
        .iter()
        .filter(|(_, pinged)| *pinged)
        .map(|((a, b), _)| format!("{a} ({:?}) <-> {b} ({:?})", nat_of(a), nat_of(b)))
        .collect();
    assert!(
        surprises.is_empty(),
        "pairs reachable that have no UDP path (update `expected`): {surprises:?}"
    );
    // The UDP-blocked hosts' peers say so: no direct path and no relay reaches them.
    for (a, b) in &unreachable {
        let (from, to) = if nat_of(a) == Nat::UdpBlocked && nat_of(b) != Nat::UdpBlocked {
            (*b, *a)
        } else {
            (*a, *b)
        };
        // (Every 30 s the relays are tried again, for a few seconds.)
        if nat_of(from) != Nat::UdpBlocked {
            mesh.wait(
                &format!("{from}'s path to {to} says unreachable"),
                Duration::from_secs(40),
                |m| path(m, from, to).0 == "unreachable",
            );
            wait_controller_path(&mesh, from, to, "unreachable");
        }
    }
}
