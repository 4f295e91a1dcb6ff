//! The harness's NAT types (in the manner of Tailscale's natlab), each proven with real
//! datagrams: one socket on a host sends to several destinations, and the source address each
//! destination saw shows the mapping the gateway made.

use std::net::{Ipv4Addr, SocketAddrV4};

use cladnet_tests::{Nat, Topology, require_netns};

/// One cloud per NAT type, a host in each, and a controller host `ctl` the blocked-UDP cloud
/// may send UDP to.
fn every_nat() -> Topology {
    Topology::builder()
        .cloud("one", "192.168.1.0/24", Nat::OneToOne)
        .host("one", "o1")
        .cloud("masq", "192.168.1.0/24", Nat::Masquerade)
        .host("masq", "m1")
        .cloud("easy", "192.168.1.0/24", Nat::Easy)
        .host("easy", "e1")
        .cloud("hard", "192.168.1.0/24", Nat::Hard)
        .host("hard", "h1")
        .cloud("noudp", "192.168.1.0/24", Nat::UdpBlocked)
        .host("noudp", "u1")
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
        .allow_udp_to("ctl")
        .build()
        .expect("build the NAT topology")
}

/// Destinations on the internet router that differ by address and by port.
fn destinations(topo: &Topology) -> Vec<SocketAddrV4> {
    let r = topo.router_ips();
    vec![
        SocketAddrV4::new(r[0], 3478),
        SocketAddrV4::new(r[1], 3478),
        SocketAddrV4::new(r[0], 3479),
        SocketAddrV4::new(r[2], 3479),
    ]
}

/// The source addresses `host`'s socket on `port` showed the internet router's destinations.
fn mappings(topo: &Topology, host: &str, port: u16) -> Vec<SocketAddrV4> {
    let dests = destinations(topo);
    let seen = topo
        .udp_mappings(topo.host(host).netns(), port, topo.internet(), &dests)
        .expect("observe mappings");
    seen.into_iter()
        .zip(&dests)
        .map(|(s, d)| s.unwrap_or_else(|| panic!("{host}:{port} -> {d} did not arrive")))
        .collect()
}

#[test]
fn one_to_one_nat_maps_a_host_to_its_own_address_and_port() {
    require_netns!();
    let topo = every_nat();
    let o1 = topo.host("o1");
    assert_eq!(o1.public_ip(), Ipv4Addr::new(198, 18, 1, 10));
    for seen in mappings(&topo, "o1", 40001) {
        assert_eq!(seen, SocketAddrV4::new(o1.public_ip(), 40001));
    }
}

#[test]
fn easy_nat_keeps_the_port_towards_every_destination() {
    require_netns!();
    let topo = every_nat();
    let e1 = topo.host("e1");
    assert_eq!(
        e1.public_ip(),
        Ipv4Addr::new(198, 18, 3, 2),
        "the gateway's address"
    );
    for seen in mappings(&topo, "e1", 40002) {
        assert_eq!(
            seen,
            SocketAddrV4::new(e1.public_ip(), 40002),
            "endpoint-independent, port-preserving"
        );
    }
}

#[test]
fn hard_nat_gives_every_destination_another_port() {
    require_netns!();
    let topo = every_nat();
    let h1 = topo.host("h1");
    let seen = mappings(&topo, "h1", 40003);
    assert!(seen.iter().all(|s| *s.ip() == h1.public_ip()), "{seen:?}");
    let mut ports: Vec<u16> = seen.iter().map(SocketAddrV4::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        seen.len(),
        "one socket, four destinations, four public ports: {seen:?}"
    );
}

#[test]
fn udp_blocked_cloud_passes_udp_only_to_the_controller() {
    require_netns!();
    let topo = every_nat();
    let (u1, ctl) = (topo.host("u1"), topo.host("ctl"));
    let dests = destinations(&topo);
    let seen = topo
        .udp_mappings(u1.netns(), 40004, topo.internet(), &dests)
        .expect("observe");
    assert_eq!(
        seen,
        vec![None; dests.len()],
        "UDP to the internet is dropped"
    );
    let to_ctl = [SocketAddrV4::new(ctl.public_ip(), 8053)];
    let seen = topo
        .udp_mappings(u1.netns(), 40004, ctl.netns(), &to_ctl)
        .expect("observe");
    assert_eq!(seen, vec![Some(SocketAddrV4::new(u1.public_ip(), 40004))]);
    // The controller's answer comes back through the mapping.
    let back = topo
        .udp_mappings(
            ctl.netns(),
            8053,
            u1.netns(),
            &[SocketAddrV4::new(u1.public_ip(), 40004)],
        )
        .expect("observe");
    assert_eq!(back, vec![Some(SocketAddrV4::new(ctl.public_ip(), 8053))]);
    assert!(u1.pings(ctl.public_ip(), 1), "only UDP is blocked");
    // The same host's packets also do not get out to a 1:1 host other than the controller.
    let o1 = topo.host("o1");
    let seen = topo
        .udp_mappings(
            u1.netns(),
            40004,
            o1.netns(),
            &[SocketAddrV4::new(o1.public_ip(), 9999)],
        )
        .expect("observe");
    assert_eq!(seen, vec![None]);
}

/// An unsolicited datagram from the router to the gateway's port 40005, then the host's socket
/// on 40005 sends to that same router address and port: the public port it gets.
fn port_after_unsolicited_knock(topo: &Topology, host: &str) -> u16 {
    let h = topo.host(host);
    let router = topo.router_ips()[0];
    topo.udp_send(
        topo.internet(),
        3478,
        &[SocketAddrV4::new(h.public_ip(), 40005)],
    )
    .expect("knock");
    let seen = topo
        .udp_mappings(
            h.netns(),
            40005,
            topo.internet(),
            &[SocketAddrV4::new(router, 3478)],
        )
        .expect("observe");
    let seen = seen[0].unwrap_or_else(|| panic!("{host}'s datagram did not arrive"));
    assert_eq!(*seen.ip(), h.public_ip());
    seen.port()
}

#[test]
fn easy_nat_keeps_the_port_after_an_unsolicited_datagram() {
    require_netns!();
    let topo = every_nat();
    assert_eq!(
        port_after_unsolicited_knock(&topo, "e1"),
        40005,
        "the knock is dropped without taking the port the host's flow then gets"
    );
}

#[test]
fn a_cloud_nat_can_change_and_old_translations_end() {
    require_netns!();
    let mut topo = every_nat();
    let before = mappings(&topo, "h1", 40010);
    assert!(
        before
            .iter()
            .all(|s| s.port() != 40010 || before.len() == 1)
    );
    // An elastic IP for the hard-NAT host: its own address and port, for every destination,
    // also for the flows its socket already had (their old translations are gone).
    let new = topo.set_nat("hard", Nat::OneToOne).expect("set_nat");
    assert_eq!(new, vec![Ipv4Addr::new(198, 18, 4, 10)]);
    assert_eq!(topo.host("h1").public_ip(), new[0]);
    for seen in mappings(&topo, "h1", 40010) {
        assert_eq!(seen, SocketAddrV4::new(new[0], 40010));
    }
    // And back behind a NAT that keeps ports.
    let new = topo.set_nat("hard", Nat::Easy).expect("set_nat");
    assert_eq!(new, vec![Ipv4Addr::new(198, 18, 4, 2)]);
    for seen in mappings(&topo, "h1", 40011) {
        assert_eq!(seen, SocketAddrV4::new(new[0], 40011));
    }
    // The easy cloud loses UDP: nothing gets out but to the controller.
    topo.set_nat("easy", Nat::UdpBlocked).expect("set_nat");
    let dests = destinations(&topo);
    let seen = topo
        .udp_mappings(topo.host("e1").netns(), 40012, topo.internet(), &dests)
        .expect("observe");
    assert_eq!(seen, vec![None; dests.len()]);
}
