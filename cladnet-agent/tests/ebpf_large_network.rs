//! A network larger than the old 4096-peer limit of the eBPF maps, on the kernel path: the
//! real programs and maps (loaded, verified, not attached) sized through the agent's
//! `ebpf_max_peers` setting, 10 000 PLAIN peers installed through the agent's own table code,
//! every lookup checked, and the programs run on packets to and from the last peer.
//!
//! No agent per peer: the peers are map entries, as the agent would install them from its
//! peer table. Needs root; without it the tests print why and pass, unless `CI=true`.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use cladnet_agent::ebpf::{
    EbpfError,
    testrun::{Hook, ProgramTester},
};
use cladnet_common::{
    maps::{Config, DEFAULT_MAX_PEERS},
    plain,
};
use cladnet_core::{node::PeerConfig, policy::LinkMode};
use support::{NetnsThread, eth, icmp_echo, ipv4, may_run, privilege_problem, udp, underlay_veth};

const XDP_PASS: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const PORT: u16 = 8055;
const LOCAL_NODE: u32 = 0x0a50_0000;
const LOCAL_UL: [u8; 4] = [192, 0, 2, 1];
const LOCAL_OVERLAY: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 1);

/// Peers installed: well past the old limit of 4096.
const PEERS: u32 = 10_000;
/// What the maps are sized for (`ebpf_max_peers`).
const MAX_PEERS: u32 = 12_288;

/// Peer `i`: node index, overlay address, PLAIN endpoint, counter slot `i`.
/// Peer `i`, in counter slot `i` (the Node gives slots in order).
fn peer(i: u32) -> PeerConfig {
    in_slot(i, i)
}

/// Peer `i` in counter slot `slot`.
fn in_slot(i: u32, slot: u32) -> PeerConfig {
    PeerConfig {
        node_id: format!("peer-{i:05}"),
        node_index: LOCAL_NODE + 1 + i,
        overlay_ip: Ipv4Addr::from(u32::from(LOCAL_OVERLAY) + 1 + i),
        public_key: [0; 32],
        endpoint: Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i),
            PORT,
        )),
        mode: LinkMode::Plain,
        slot,
        prefixes: Vec::new(),
    }
}

/// Runs `body` with the programs loaded, maps sized for `max_peers`, in a fresh namespace
/// holding an underlay veth `ul0` (MTU 1500).
fn with_tester(
    test: &'static str,
    max_peers: u32,
    body: impl FnOnce(&mut ProgramTester) + Send + 'static,
) {
    if !may_run(test, privilege_problem()) {
        return;
    }
    let thread = NetnsThread::spawn(None, || ());
    thread.run(move |()| {
        let ul0 = underlay_veth();
        let mut config = Config::new(PORT);
        config.local_node_index = LOCAL_NODE;
        config.set_local_underlay_ip(LOCAL_UL);
        config.set_local_overlay_ip(LOCAL_OVERLAY.octets());
        config.underlay_ifindex = ul0;
        let mut tester = match ProgramTester::load_sized(config, max_peers) {
            Ok(t) => t,
            Err(EbpfError::NoObject) => {
                may_run(
                    test,
                    Some("the agent was built without the eBPF object".into()),
                );
                return;
            }
            Err(e) => panic!("loading the programs: {e:#}"),
        };
        body(&mut tester);
    });
}

#[test]
fn ten_thousand_peers_fit_and_are_found() {
    with_tester("ten_thousand_peers_fit_and_are_found", MAX_PEERS, |t| {
        let dp = t.dataplane();
        assert_eq!(dp.capacity(), MAX_PEERS);
        for i in 0..PEERS {
            dp.upsert_peer(&peer(i))
                .unwrap_or_else(|e| panic!("installing peer {i}: {e}"));
        }
        // Every peer is found by both maps: where to send (TX) and whom to accept (RX).
        for i in 0..PEERS {
            let p = peer(i);
            let entry = dp.peer_entry(p.overlay_ip).unwrap();
            let entry = entry.unwrap_or_else(|| panic!("no PEERS entry for peer {i}"));
            assert!(entry.is_plain(), "peer {i}");
            assert_eq!(
                (entry.node_index, entry.slot),
                (p.node_index, i),
                "peer {i}"
            );
            let ep = p.endpoint.unwrap();
            let accepted = dp.endpoint_entry(ep).unwrap();
            let accepted = accepted.unwrap_or_else(|| panic!("no ENDPOINTS entry for peer {i}"));
            assert_eq!(
                (accepted.node_index, accepted.slot, accepted.overlay_ip),
                (p.node_index, i, p.overlay_ip.octets()),
                "peer {i}"
            );
        }
        assert_eq!(dp.peer_counters().unwrap().len(), PEERS as usize);

        // The last peer (slot 9999) on the kernel path: transmit encapsulates to its endpoint...
        let last = peer(PEERS - 1);
        let ep = last.endpoint.unwrap();
        let inner = ipv4(
            LOCAL_OVERLAY.octets(),
            last.overlay_ip.octets(),
            1,
            &icmp_echo(9, 1, 56),
        );
        let tx = t
            .run(Hook::TcOverlayEgress, &eth([0; 6], [0; 6], 0x0800, &inner))
            .unwrap();
        assert_eq!(tx.verdict, TC_ACT_REDIRECT, "PLAIN peer {}", PEERS - 1);
        // Ethernet (14), IPv4 destination at 16..20, UDP destination port at 22..24.
        assert_eq!(tx.data[14 + 16..14 + 20], ep.ip().octets());
        assert_eq!(tx.data[14 + 22..14 + 24], ep.port().to_be_bytes());
        // ... and receive decapsulates what comes from it.
        let back = ipv4(
            last.overlay_ip.octets(),
            LOCAL_OVERLAY.octets(),
            1,
            &icmp_echo(9, 1, 56),
        );
        let mut payload_back = vec![0u8; 8 + back.len()];
        plain::encapsulate(last.node_index, &back, &mut payload_back).unwrap();
        let frame = eth(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            0x0800,
            &ipv4(
                ep.ip().octets(),
                LOCAL_UL,
                17,
                &udp(PORT, PORT, &payload_back),
            ),
        );
        let rx = t.run(Hook::XdpUnderlay, &frame).unwrap();
        assert_eq!(rx.verdict, XDP_PASS);
        assert_eq!(rx.data[14..], back[..], "decapsulated inner packet");
        let c = t.dataplane().slot_counters(PEERS - 1).unwrap();
        assert_eq!((c.tx_packets, c.rx_packets), (1, 1), "counted in slot 9999");

        // Beyond the maps' size: refused with the setting named, nothing installed.
        let over = peer(MAX_PEERS);
        let err = t.dataplane().upsert_peer(&over).unwrap_err();
        assert!(err.to_string().contains("ebpf_max_peers"), "{err}");
        assert_eq!(t.dataplane().peer_entry(over.overlay_ip).unwrap(), None);
    });
}

#[test]
fn default_maps_hold_a_ten_thousand_peer_network() {
    const { assert!(DEFAULT_MAX_PEERS >= PEERS) };
    with_tester(
        "default_maps_hold_a_ten_thousand_peer_network",
        DEFAULT_MAX_PEERS,
        |t| {
            assert_eq!(t.dataplane().capacity(), DEFAULT_MAX_PEERS);
            // The last slot is usable, the next one is not.
            let p = in_slot(PEERS, DEFAULT_MAX_PEERS - 1);
            t.dataplane().upsert_peer(&p).unwrap();
            assert!(t.dataplane().peer_entry(p.overlay_ip).unwrap().is_some());
            assert!(
                t.dataplane()
                    .upsert_peer(&in_slot(0, DEFAULT_MAX_PEERS))
                    .is_err()
            );
        },
    );
}

#[test]
fn a_map_size_out_of_range_is_refused() {
    for bad in [0, cladnet_common::maps::MAX_PEERS_LIMIT + 1] {
        let Err(err) = ProgramTester::load_sized(Config::new(PORT), bad) else {
            panic!("ebpf_max_peers = {bad} was accepted");
        };
        assert!(err.to_string().contains("ebpf_max_peers"), "{bad}: {err}");
    }
}
