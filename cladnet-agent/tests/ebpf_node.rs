//! The kernel maps hold what the Node's table says, and nothing else: a real Node's commands
//! drive the real maps (loaded, not attached, in a fresh network namespace) through endpoint
//! learning, controller moves, removals, address changes and a policy flip, and after every
//! step the maps are compared with the Node's table (every installed peer present as
//! configured, no other peer, no endpoint of a former configuration left). The eBPF tables
//! keep no index of their own to fall out of step with.
//!
//! Needs root; without it the test prints why and passes, unless `CI=true`, where it fails.

mod support;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use cladnet_agent::ebpf::{EbpfError, KernelDataplane, testrun::ProgramTester};
use cladnet_common::maps::Config;
use cladnet_core::{
    node::{
        Command, Node, NodeConfig, SelfRecord, WatchEvent,
        table::{PeerState, RemotePeer},
    },
    policy::{Encryption, LinkMode, PeerView, Policy, RuleType, Site},
};
use support::{NetnsThread, may_run, privilege_problem, underlay_veth};

fn endpoint(last: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, last), 8055)
}

fn view(public: SocketAddrV4) -> PeerView {
    PeerView {
        site: Site {
            provider: "aws".into(),
            vpc: "v1".into(),
            ..Site::default()
        },
        public: Some(public),
        private: None,
        external: false,
    }
}

fn remote(last: u8) -> RemotePeer {
    RemotePeer {
        node_id: format!("n{last}"),
        node_index: u32::from(last),
        overlay_ip: Ipv4Addr::new(10, 77, 0, last),
        public_key: [last; 32],
        view: view(endpoint(last)),
        state: PeerState::Up,
        prefixes: Vec::new(),
    }
}

fn policy(encryption: Encryption) -> Policy {
    Policy {
        rule: RuleType::Basic,
        encryption,
    }
}

fn node(me: u8, peers: &[u8], now: Instant) -> Node {
    let mut node = Node::new(NodeConfig {
        node_id: format!("n{me}"),
        underlay_mtu: 1500,
        underlay_ip: Some(*endpoint(me).ip()),
    });
    node.handle_watch_event(
        now,
        WatchEvent::Snapshot {
            policy: Some(policy(Encryption::Never)),
            local: Some(SelfRecord {
                node_index: u32::from(me),
                overlay_ip: Ipv4Addr::new(10, 77, 0, me),
                prefix_len: 24,
                view: view(endpoint(me)),
                prefixes: Vec::new(),
            }),
            peers: peers.iter().map(|p| remote(*p)).collect(),
        },
    );
    node
}

/// Applies the Node's pending commands to the maps as the eBPF engine does; remembers every
/// endpoint ever installed.
fn apply(node: &mut Node, dp: &mut KernelDataplane, seen: &mut BTreeSet<SocketAddrV4>) {
    while let Some(cmd) = node.poll_command() {
        match cmd {
            Command::UpsertPeer(p) => {
                seen.extend(p.endpoint);
                dp.upsert_peer(&p).unwrap();
            }
            Command::RemovePeer { overlay_ip, .. } => {
                dp.remove_peer(overlay_ip).unwrap();
            }
            Command::RemovePrefixes {
                node_index,
                prefixes,
                ..
            } => dp.remove_prefixes(node_index, &prefixes).unwrap(),
            Command::SetLocal(_)
            | Command::Publish(_)
            | Command::SetRouteMtu { .. }
            | Command::SealedPeer { .. } => {}
        }
    }
    while node.poll_transmit().is_some() {}
    while node.poll_event().is_some() {}
}

/// The maps equal the Node's table: each installed peer as configured, nothing else, and no
/// endpoint but the installed PLAIN ones.
fn assert_maps_match(node: &Node, dp: &KernelDataplane, seen: &BTreeSet<SocketAddrV4>, step: &str) {
    let installed = node.table().installed();
    let mut live = BTreeSet::new();
    for c in installed.values() {
        let e = dp
            .peer_entry(c.overlay_ip)
            .unwrap()
            .unwrap_or_else(|| panic!("{step}: {} missing from PEERS", c.node_id));
        assert_eq!((e.node_index, e.slot), (c.node_index, c.slot), "{step}");
        match (c.mode, c.endpoint) {
            (LinkMode::Plain, Some(ep)) => {
                assert!(
                    e.is_plain(),
                    "{step}: {} not PLAIN in the kernel",
                    c.node_id
                );
                assert_eq!(
                    (Ipv4Addr::from(e.underlay_ip()), e.underlay_port()),
                    (*ep.ip(), ep.port()),
                    "{step}: {} endpoint",
                    c.node_id
                );
                let by_ep = dp.endpoint_entry(ep).unwrap().expect("ENDPOINTS entry");
                assert_eq!(
                    (
                        by_ep.node_index,
                        Ipv4Addr::from(by_ep.overlay_ip),
                        by_ep.slot
                    ),
                    (c.node_index, c.overlay_ip, c.slot),
                    "{step}"
                );
                live.insert(ep);
            }
            _ => assert!(!e.is_plain(), "{step}: {} carried by the kernel", c.node_id),
        }
    }
    for ep in seen.difference(&live) {
        assert_eq!(
            dp.endpoint_entry(*ep).unwrap(),
            None,
            "{step}: stale endpoint {ep}"
        );
    }
    let in_kernel: BTreeSet<(u32, Ipv4Addr, u32)> = dp
        .peer_counters()
        .unwrap()
        .into_iter()
        .map(|s| (s.node_index, s.overlay_ip, s.slot))
        .collect();
    let want: BTreeSet<_> = installed
        .values()
        .map(|c| (c.node_index, c.overlay_ip, c.slot))
        .collect();
    assert_eq!(in_kernel, want, "{step}: peers in the maps");
}

/// An IPv4/UDP packet from 10.77.0.`src` to 10.77.0.`dst`.
fn packet(src: u8, dst: u8) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 77, 0, src]);
    p[16..20].copy_from_slice(&[10, 77, 0, dst]);
    p
}

#[test]
fn the_kernel_maps_follow_the_nodes_table_through_every_change() {
    const TEST: &str = "the_kernel_maps_follow_the_nodes_table_through_every_change";
    if !may_run(TEST, privilege_problem()) {
        return;
    }
    let thread = NetnsThread::spawn(None, || ());
    thread.run(move |()| {
        let mut config = Config::new(8055);
        config.local_node_index = 1;
        config.set_local_underlay_ip(endpoint(1).ip().octets());
        config.set_local_overlay_ip([10, 77, 0, 1]);
        config.underlay_ifindex = underlay_veth();
        let mut tester = match ProgramTester::load(config) {
            Ok(t) => t,
            Err(EbpfError::NoObject) => {
                may_run(
                    TEST,
                    Some("the agent was built without the eBPF object".into()),
                );
                return;
            }
            Err(e) => panic!("loading the programs: {e}"),
        };
        let dp = tester.dataplane();
        let mut seen = BTreeSet::new();
        let now = Instant::now();
        let mut b = node(1, &[2, 4], now);
        apply(&mut b, dp, &mut seen);
        assert_maps_match(&b, dp, &seen, "joined");

        // n2's NAT gave it another port: the Node learns it from a datagram, and the kernel's
        // maps get it from the Node (no daemon-built copy).
        let mut a = node(2, &[1], now);
        a.handle_tun_packet(now, &packet(2, 1)).unwrap();
        let datagram = a.poll_transmit().unwrap().payload;
        let moved = SocketAddrV4::new(*endpoint(2).ip(), 40000);
        b.handle_datagram(now, SocketAddr::V4(moved), &datagram)
            .expect("learnt");
        apply(&mut b, dp, &mut seen);
        assert_maps_match(&b, dp, &seen, "port learnt");
        assert_eq!(dp.endpoint_entry(endpoint(2)).unwrap(), None);
        assert!(dp.endpoint_entry(moved).unwrap().is_some());

        // The controller moves n2; n4 leaves and n5 joins.
        let mut n2 = remote(2);
        n2.view.public = Some(SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, 2), 8055));
        let later = now + Duration::from_secs(2);
        b.handle_watch_event(later, WatchEvent::PeerUpserted(n2.clone()));
        b.handle_watch_event(later, WatchEvent::PeerRemoved("n4".into()));
        b.handle_watch_event(later, WatchEvent::PeerUpserted(remote(5)));
        apply(&mut b, dp, &mut seen);
        assert_maps_match(&b, dp, &seen, "controller changes");

        // n2 gets another overlay address: its old /32 goes.
        n2.overlay_ip = Ipv4Addr::new(10, 77, 0, 9);
        b.handle_watch_event(later, WatchEvent::PeerUpserted(n2));
        apply(&mut b, dp, &mut seen);
        assert_maps_match(&b, dp, &seen, "address change");
        assert_eq!(dp.peer_entry(Ipv4Addr::new(10, 77, 0, 2)).unwrap(), None);

        // Every link SEALED, then PLAIN again.
        b.handle_watch_event(later, WatchEvent::PolicyChanged(policy(Encryption::Always)));
        apply(&mut b, dp, &mut seen);
        assert_maps_match(&b, dp, &seen, "sealed");
        b.handle_watch_event(later, WatchEvent::PolicyChanged(policy(Encryption::Never)));
        apply(&mut b, dp, &mut seen);
        assert_maps_match(&b, dp, &seen, "plain again");
    });
}
