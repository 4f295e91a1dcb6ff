//! Two routers wired back to back, without sockets, given commands the way the Node gives
//! them.

use std::collections::BTreeSet;

use cladnet_core::node::LocalConfig;

use super::*;

const A_EP: &str = "192.0.2.1:8055";
const B_EP: &str = "198.51.100.2:8055";

pub(super) struct Node {
    pub(super) router: Router,
    pub(super) ip: Ipv4Addr,
    index: u32,
    key: PublicKey,
}

fn node(last: u8, seed: u8) -> Node {
    let key = PrivateKey::from_bytes([seed; 32]);
    let public = key.public_key();
    let ip = Ipv4Addr::new(10, 77, 0, last);
    let router = Router::new(key);
    let index = u32::from(ip);
    let local = LocalConfig {
        node_index: index,
        overlay_ip: ip,
        prefix_len: 24,
        mtu: 1420,
        underlay_ip: None,
        prefixes: Vec::new(),
    };
    router
        .apply(Instant::now(), &Command::SetLocal(local))
        .unwrap();
    Node {
        router,
        ip,
        index,
        key: public,
    }
}

fn config(of: &Node, endpoint: &str, mode: LinkMode) -> PeerConfig {
    PeerConfig {
        node_id: format!("node-{}", of.ip.octets()[3]),
        node_index: of.index,
        overlay_ip: of.ip,
        public_key: *of.key.as_bytes(),
        endpoint: Some(endpoint.parse().unwrap()),
        mode,
        slot: 0,
        prefixes: Vec::new(),
    }
}

/// Installs `peers` on `at` as the Node does: each peer, then the snapshot with all of them.
pub(super) fn install(at: &Router, index: u32, ip: Ipv4Addr, peers: &[PeerConfig]) {
    let now = Instant::now();
    for p in peers {
        at.apply(now, &Command::UpsertPeer(p.clone())).unwrap();
    }
    publish(at, index, ip, peers);
}

/// Publishes a snapshot of `peers`.
pub(super) fn publish(at: &Router, index: u32, ip: Ipv4Addr, peers: &[PeerConfig]) {
    let installed = peers
        .iter()
        .map(|p| (p.node_id.clone(), p.clone()))
        .collect();
    let fwd = Forwarding::new(Some((index, ip)), &installed);
    at.apply(Instant::now(), &Command::Publish(Arc::new(fwd)))
        .unwrap();
}

pub(super) fn pair(mode: LinkMode) -> (Node, Node) {
    let (a, b) = (node(1, 7), node(2, 9));
    install(&a.router, a.index, a.ip, &[config(&b, B_EP, mode)]);
    install(&b.router, b.index, b.ip, &[config(&a, A_EP, mode)]);
    (a, b)
}

/// An IPv4/UDP packet from `src` to `dst` with `payload`.
fn packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x1f, 0x90, 0x1f, 0x90]);
    p.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn send(from: &Node, p: &[u8]) -> Vec<u8> {
    let mut out = vec![0; out_len(p.len())];
    match from.router.outbound(Instant::now(), p, &mut out) {
        Outbound::Send { datagram, .. } => datagram.to_vec(),
        other => panic!("expected a datagram, got {other:?}"),
    }
}

fn receive(at: &Node, from: &str, d: &[u8]) -> Result<Vec<u8>, Inbound<'static>> {
    let mut out = vec![0; out_len(d.len())];
    match at.router.inbound(Instant::now(), ep(from), d, &mut out) {
        Inbound::Deliver(p) => Ok(p.to_vec()),
        Inbound::Dropped(r) => Err(Inbound::Dropped(r)),
        Inbound::Nothing => Err(Inbound::Nothing),
        Inbound::ToNode => Err(Inbound::ToNode),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn plain_packets_cross_and_every_forgery_is_dropped_and_counted() {
    let (a, b) = pair(LinkMode::Plain);
    let p = packet(a.ip, b.ip, b"hello");
    let d = send(&a, &p);
    assert_eq!(&d[..2], &[0x11, 0]);
    assert_eq!(receive(&b, A_EP, &d).unwrap(), p);

    let drop = |r| Err(Inbound::Dropped(Drop::Plain(r)));
    // From an address that is no PLAIN peer: the Node decides (and refuses it, see
    // cladnet_core::node).
    assert_eq!(receive(&b, "203.0.113.9:8055", &d), Err(Inbound::ToNode));
    // Inner source that is not the peer's.
    let spoofed = send(&a, &packet(Ipv4Addr::new(10, 77, 0, 99), b.ip, b"x"));
    assert_eq!(
        receive(&b, A_EP, &spoofed),
        drop(plain::DropReason::SpoofedSource)
    );
    // Another node id in the header.
    let mut wrong = d.clone();
    wrong[4] ^= 1;
    assert_eq!(
        receive(&b, A_EP, &wrong),
        drop(plain::DropReason::WrongNode)
    );
    // Truncated.
    assert_eq!(
        receive(&b, A_EP, &d[..5]),
        drop(plain::DropReason::Truncated)
    );
    assert_eq!(
        b.router
            .drops()
            .get(Drop::Plain(plain::DropReason::WrongNode)),
        1
    );
    let status = b.router.status(Instant::now());
    assert_eq!(status[0].traffic.rx_packets, 1);
    assert_eq!(status[0].mode, "plain");
}

/// The handshake thread's path: the gate reads the initiation (its Diffie-Hellman outside the
/// WireGuard lock), the device answers it, the handshake completes.
#[test]
fn handshakes_through_the_gate_complete() {
    let (a, b) = pair(LinkMode::Sealed);
    let p = packet(a.ip, b.ip, b"secret");
    let init = send(&a, &p);
    let mut gate = b.router.handshake_gate();
    let mut out = vec![0; 2048];
    let now = Instant::now();
    let response = match b
        .router
        .handshake(now, &mut gate, false, ep(A_EP), &init, &mut out)
    {
        Inbound::Reply { datagram, to } => {
            assert_eq!(to, ep(A_EP));
            datagram.to_vec()
        }
        other => panic!("{other:?}"),
    };
    let mut out2 = vec![0; 2048];
    let first = match a
        .router
        .inbound(Instant::now(), ep(B_EP), &response, &mut out2)
    {
        Inbound::Reply { datagram, .. } => datagram.to_vec(),
        other => panic!("{other:?}"),
    };
    assert_eq!(receive(&b, A_EP, &first).unwrap(), p);
}

/// A's first packet `p` for B waits behind a handshake initiation; B answers; the response
/// completes A's handshake and the queued packet leaves as the first data, returned here.
fn handshake(a: &Node, b: &Node, p: &[u8]) -> Vec<u8> {
    // The first packet is queued behind a handshake initiation.
    let init = send(a, p);
    assert_eq!(init[0], 1);
    let mut out = vec![0; 2048];
    let response = match b.router.inbound(Instant::now(), ep(A_EP), &init, &mut out) {
        Inbound::Reply { datagram, to } => {
            assert_eq!(to, ep(A_EP));
            datagram.to_vec()
        }
        other => panic!("{other:?}"),
    };
    // The response completes the handshake; the queued packet leaves as the first data.
    let mut out2 = vec![0; 2048];
    match a
        .router
        .inbound(Instant::now(), ep(B_EP), &response, &mut out2)
    {
        Inbound::Reply { datagram, .. } => datagram.to_vec(),
        other => panic!("{other:?}"),
    }
}

/// Once a session is up, SEALED packets are sealed and opened on the peer's data side: they
/// cross both ways while another thread holds both routers' WireGuard devices (the control
/// side's lock, which the packet threads took per packet before).
#[test]
fn sealed_data_crosses_while_the_devices_are_locked() {
    let (a, b) = pair(LinkMode::Sealed);
    let p = packet(a.ip, b.ip, b"first");
    assert_eq!(receive(&b, A_EP, &handshake(&a, &b, &p)).unwrap(), p);
    let (held_a, held_b) = (a.router.device(), b.router.device());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let there = packet(a.ip, b.ip, b"there");
            let back = packet(b.ip, a.ip, b"back");
            let ok = receive(&b, A_EP, &send(&a, &there)).unwrap() == there
                && receive(&a, B_EP, &send(&b, &back)).unwrap() == back;
            tx.send(ok).unwrap();
        });
        let crossed = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop((held_a, held_b));
        assert_eq!(
            crossed,
            Ok(true),
            "the packet path waited for a device lock"
        );
    });
}

#[test]
fn sealed_packets_need_a_handshake_then_cross() {
    let (a, b) = pair(LinkMode::Sealed);
    let p = packet(a.ip, b.ip, b"secret");
    let first = handshake(&a, &b, &p);
    assert_eq!(receive(&b, A_EP, &first).unwrap(), p);

    // Replayed: dropped.
    assert_eq!(
        receive(&b, A_EP, &first),
        Err(Inbound::Dropped(Drop::WgReplay))
    );
    // Forged (bad tag): dropped.
    let mut forged = send(&a, &p);
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    assert_eq!(
        receive(&b, A_EP, &forged),
        Err(Inbound::Dropped(Drop::WgDecrypt))
    );
    // Authentic but with an inner source the peer does not own: cryptokey routing drops it.
    let spoofed = send(&a, &packet(Ipv4Addr::new(10, 77, 0, 99), b.ip, b"x"));
    assert_eq!(
        receive(&b, A_EP, &spoofed),
        Err(Inbound::Dropped(Drop::WgSpoofedSource))
    );
    // A fresh authentic packet still gets through, and from a new address the peer roams.
    let again = send(&a, &p);
    assert_eq!(receive(&b, "203.0.113.50:4000", &again).unwrap(), p);
    let mut out = vec![0; 2048];
    let events = b.router.timers(Instant::now(), &mut out, |_, _| {});
    assert!(
        events.contains(&PeerEvent::EndpointChanged {
            node_id: "node-1".into(),
            endpoint: ep("203.0.113.50:4000")
        }),
        "{events:?}"
    );
    let st = b.router.status(Instant::now());
    assert_eq!(st[0].endpoint, Some(ep("203.0.113.50:4000")));
    assert_eq!(st[0].traffic.rx_packets, 2);
    assert!(st[0].handshake_age_secs.is_some());
}

#[test]
fn unroutable_and_unknown_traffic_is_dropped() {
    let (a, b) = pair(LinkMode::Plain);
    let mut out = vec![0; 256];
    let p = packet(a.ip, Ipv4Addr::new(10, 77, 0, 200), b"x");
    assert_eq!(
        a.router.outbound(Instant::now(), &p, &mut out),
        Outbound::Dropped(Drop::NoRoute)
    );
    let v6 = [0x60u8; 40];
    assert_eq!(
        a.router.outbound(Instant::now(), &v6, &mut out),
        Outbound::Dropped(Drop::NotIpv4)
    );
    assert_eq!(
        receive(&b, A_EP, &[0xff; 32]),
        Err(Inbound::Dropped(Drop::UnknownMessage))
    );
    assert_eq!(
        receive(&b, A_EP, &[]),
        Err(Inbound::Dropped(Drop::UnknownMessage))
    );
    // A malformed WireGuard message.
    assert_eq!(
        receive(&b, A_EP, &[4, 0, 0, 0, 1]),
        Err(Inbound::Dropped(Drop::WgInvalid))
    );
}

#[test]
fn removing_a_peer_stops_traffic_both_ways_and_mode_changes_apply() {
    let (a, b) = pair(LinkMode::Plain);
    let d = send(&a, &packet(a.ip, b.ip, b"x"));
    let remove = Command::RemovePeer {
        node_id: "node-1".into(),
        overlay_ip: a.ip,
        slot: 0,
    };
    b.router.apply(Instant::now(), &remove).unwrap();
    publish(&b.router, b.index, b.ip, &[]);
    assert_eq!(receive(&b, A_EP, &d), Err(Inbound::ToNode));
    let mut out = vec![0; 256];
    assert_eq!(
        b.router
            .outbound(Instant::now(), &packet(b.ip, a.ip, b"x"), &mut out),
        Outbound::Dropped(Drop::NoRoute)
    );
    // PLAIN -> SEALED live: the next packet starts a handshake.
    install(
        &a.router,
        a.index,
        a.ip,
        &[config(&b, B_EP, LinkMode::Sealed)],
    );
    assert_eq!(send(&a, &packet(a.ip, b.ip, b"x"))[0], 1);
}

#[test]
fn garbage_never_panics() {
    let (_, b) = pair(LinkMode::Sealed);
    let mut out = vec![0; 4096];
    let mut seed = 0x1234_5678_u32;
    for len in 0..600 {
        let d: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        for first in [1u8, 2, 3, 4, 0x11, 0x13, 0x43] {
            let mut d = d.clone();
            if let Some(b0) = d.first_mut() {
                *b0 = first;
            }
            let _ = b.router.inbound(Instant::now(), ep(A_EP), &d, &mut out);
        }
    }
}

#[test]
fn punch_sends_wireguard_keepalives() {
    let (a, b) = pair(LinkMode::Sealed);
    let p = packet(a.ip, b.ip, b"x");
    let init = send(&a, &p);
    let mut out = vec![0; 2048];
    let response = match b.router.inbound(Instant::now(), ep(A_EP), &init, &mut out) {
        Inbound::Reply { datagram, .. } => datagram.to_vec(),
        other => panic!("{other:?}"),
    };
    let mut out2 = vec![0; 2048];
    let _ = a
        .router
        .inbound(Instant::now(), ep(B_EP), &response, &mut out2);
    let mut sent = Vec::new();
    a.router.timers(Instant::now(), &mut out, |d, to| {
        sent.push((d.to_vec(), to))
    });
    sent.clear();
    a.router.punch();
    a.router.timers(Instant::now(), &mut out, |d, to| {
        sent.push((d.to_vec(), to))
    });
    assert_eq!(sent.len(), 1, "one keepalive");
    assert_eq!(
        (sent[0].0[0], sent[0].0.len(), sent[0].1),
        (4, 32, ep(B_EP))
    );
}

#[test]
fn a_plain_peer_seen_on_another_port_goes_to_the_node_and_its_commands_follow_it() {
    let (a, b) = pair(LinkMode::Plain);
    let p = packet(a.ip, b.ip, b"nat");
    let d = send(&a, &p);
    // a's NAT gave this flow port 40000 instead of 8055: the Node decides, data or probe.
    assert_eq!(receive(&b, "192.0.2.1:40000", &d), Err(Inbound::ToNode));
    let probe = wire::CladHeader::new(wire::CladType::Probe, 0, a.index).to_bytes();
    assert_eq!(receive(&b, "192.0.2.1:40000", &probe), Err(Inbound::ToNode));
    assert_eq!(receive(&b, A_EP, &probe), Err(Inbound::Nothing));
    // The Node's commands move the peer: replies go to the port that works, and datagrams
    // from it are delivered on the packet path.
    let mut moved = config(&a, "192.0.2.1:40000", LinkMode::Plain);
    moved.slot = 0;
    install(&b.router, b.index, b.ip, &[moved]);
    assert_eq!(receive(&b, "192.0.2.1:40000", &d).unwrap(), p);
    let reply = packet(b.ip, a.ip, b"back");
    let mut out = vec![0; 256];
    match b.router.outbound(Instant::now(), &reply, &mut out) {
        Outbound::Send { to, .. } => assert_eq!(to, ep("192.0.2.1:40000")),
        other => panic!("{other:?}"),
    }
    let status = b.router.status(Instant::now());
    assert_eq!(
        status[0].traffic.rx_packets, 1,
        "counters kept across the move"
    );
}

#[test]
fn plain_packets_for_another_destination_are_dropped_and_counted() {
    let (a, b) = pair(LinkMode::Plain);
    // a's packets may only be for b: not for another overlay node, an underlay host, or
    // broadcast (b would forward them, with a's overlay source, wherever its routes reach).
    for dst in [
        Ipv4Addr::new(10, 77, 0, 9),
        Ipv4Addr::new(192, 168, 1, 1),
        Ipv4Addr::BROADCAST,
    ] {
        let mut d = send(&a, &packet(a.ip, b.ip, b"relay"));
        d[wire::CLAD_HDR_LEN + 16..wire::CLAD_HDR_LEN + 20].copy_from_slice(&dst.octets());
        assert_eq!(
            receive(&b, A_EP, &d),
            Err(Inbound::Dropped(Drop::Plain(
                plain::DropReason::WrongDestination
            ))),
            "{dst}"
        );
    }
    assert_eq!(
        b.router
            .drops()
            .get(Drop::Plain(plain::DropReason::WrongDestination)),
        3
    );
    let p = packet(a.ip, b.ip, b"for b");
    assert_eq!(receive(&b, A_EP, &send(&a, &p)).unwrap(), p);
}

/// What the published routes hold, and what a rebuild from the Node's snapshot and the
/// staged state would hold: (slot, node id, WireGuard peer) and (WireGuard slot, node id).
type RouteView = (
    BTreeSet<(u32, String, Option<PeerId>)>,
    BTreeSet<(u32, String)>,
);

fn published(r: &Router) -> RouteView {
    let routes = r.routes.load();
    let by_slot = routes
        .by_slot
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let e = e.as_ref()?;
            Some((u32::try_from(i).unwrap(), e.config.node_id.clone(), e.wg))
        })
        .collect();
    let by_wg = routes
        .by_wg_slot
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            Some((
                u32::try_from(i).unwrap(),
                e.as_ref()?.config.node_id.clone(),
            ))
        })
        .collect();
    (by_slot, by_wg)
}

fn rebuilt(r: &Router) -> RouteView {
    let routes = r.routes.load();
    let staged = r.stage();
    let mut view = RouteView::default();
    for config in routes.fwd.peers() {
        let Some(state) = staged.slots.get(&config.slot) else {
            continue;
        };
        let wg = state.wg.as_ref().map(|(id, ..)| *id);
        view.0.insert((config.slot, config.node_id.clone(), wg));
        if let Some(id) = wg {
            view.1.insert((id.slot(), config.node_id.clone()));
        }
    }
    view
}

/// A `Publish` rebuilds only the slots the commands since the last one touched; the result
/// equals a rebuild of every entry from the Node's snapshot, through removals, slot reuse,
/// mode flips and key changes.
#[test]
fn publish_updates_only_changed_slots_and_matches_a_full_rebuild() {
    let a = node(1, 7);
    let others: Vec<Node> = (2..8).map(|i| node(i, 20 + i)).collect();
    let cfg = |i: usize, slot: u32, mode: LinkMode| PeerConfig {
        slot,
        ..config(&others[i], B_EP, mode)
    };
    let mut peers = vec![
        cfg(0, 0, LinkMode::Sealed),
        cfg(1, 1, LinkMode::Sealed),
        cfg(2, 2, LinkMode::Plain),
        cfg(3, 3, LinkMode::Sealed),
        cfg(4, 4, LinkMode::Plain),
    ];
    install(&a.router, a.index, a.ip, &peers);
    assert_eq!(published(&a.router), rebuilt(&a.router));
    assert_eq!(published(&a.router).1.len(), 3);
    let untouched = a.router.routes.load().by_slot[0].clone().unwrap();
    let now = Instant::now();
    // Peer 1 leaves; peer 5 (SEALED) takes its slot; peer 2 turns SEALED; peer 3 gets a new key.
    let gone = peers.remove(1);
    a.router
        .apply(
            now,
            &Command::RemovePeer {
                node_id: gone.node_id,
                overlay_ip: gone.overlay_ip,
                slot: 1,
            },
        )
        .unwrap();
    let mut changed = vec![cfg(5, 1, LinkMode::Sealed), cfg(2, 2, LinkMode::Sealed)];
    let mut rekeyed = cfg(3, 3, LinkMode::Sealed);
    rekeyed.public_key = *PrivateKey::from_bytes([99; 32]).public_key().as_bytes();
    changed.push(rekeyed);
    for c in &changed {
        a.router
            .apply(now, &Command::UpsertPeer(c.clone()))
            .unwrap();
    }
    peers.retain(|p| !changed.iter().any(|c| c.node_id == p.node_id));
    peers.extend(changed);
    publish(&a.router, a.index, a.ip, &peers);
    assert_eq!(published(&a.router), rebuilt(&a.router));
    assert_eq!(published(&a.router).1.len(), 4);
    let routes = a.router.routes.load();
    assert!(
        Arc::ptr_eq(routes.by_slot[0].as_ref().unwrap(), &untouched),
        "an unchanged peer's entry is shared, not rebuilt"
    );
    drop(routes);
    // Everyone leaves.
    for p in peers.drain(..) {
        let cmd = Command::RemovePeer {
            node_id: p.node_id,
            overlay_ip: p.overlay_ip,
            slot: p.slot,
        };
        a.router.apply(now, &cmd).unwrap();
    }
    publish(&a.router, a.index, a.ip, &[]);
    assert_eq!(published(&a.router), RouteView::default());
}
