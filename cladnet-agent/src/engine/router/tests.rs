//! Two routers wired back to back, without sockets, given commands the way the Node gives
//! them. Each has a WireGuard device standing in for the Node's control side (cladnet-core's
//! `node::sealed` does the same with it): it gets what the router hands over
//! ([`Outbound::ToNode`], [`Handshake`]) and sends [`Command::SealedPeer`]. The userspace
//! engine's tests put such a router behind real sockets.

use std::collections::{BTreeMap, BTreeSet};

use cladnet_core::node::{Forwarding, LocalConfig};
use cladnet_wg::{Device, PeerId, PublicKey};

use super::*;

const A_EP: &str = "192.0.2.1:8055";
const B_EP: &str = "198.51.100.2:8055";

pub(crate) struct Node {
    pub(crate) router: Arc<Router>,
    /// The Node's WireGuard control side, and its peers by counter slot.
    wg: Mutex<Device>,
    wg_slots: Mutex<BTreeMap<u32, PeerId>>,
    pub(crate) ip: Ipv4Addr,
    index: u32,
    key: PublicKey,
}

impl Node {
    fn device(&self) -> MutexGuard<'_, Device> {
        self.wg.lock().unwrap()
    }

    /// The WireGuard id of the SEALED peer at slot 0.
    fn peer(&self) -> PeerId {
        *self
            .wg_slots
            .lock()
            .unwrap()
            .get(&0)
            .expect("a SEALED peer")
    }
}

/// A node `10.77.0.{last}` whose keys come from `seed`, without peers.
pub(crate) fn node(last: u8, seed: u8) -> Node {
    let key = PrivateKey::from_bytes([seed; 32]);
    let public = key.public_key();
    let ip = Ipv4Addr::new(10, 77, 0, last);
    let wall = WallClock::new(Instant::now(), std::time::SystemTime::now());
    let wg = Mutex::new(Device::new(key.clone(), crate::engine::OsRandom, wall));
    let router = Arc::new(Router::new(key, wall));
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
        wg,
        wg_slots: Mutex::default(),
        ip,
        index,
        key: public,
    }
}

/// `of` as a peer at `endpoint`.
pub(crate) fn config(of: &Node, endpoint: &str, mode: LinkMode) -> PeerConfig {
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

/// Installs `peers` on `at` as the Node does: each peer (a SEALED one with a new WireGuard
/// peer and its data side), then the snapshot with all of them.
pub(crate) fn install(at: &Node, peers: &[PeerConfig]) {
    for p in peers {
        upsert(at, p);
    }
    publish(&at.router, at.index, at.ip, peers);
}

/// One peer's commands as the Node sends them (without the snapshot).
fn upsert(at: &Node, p: &PeerConfig) {
    let now = Instant::now();
    at.router
        .apply(now, &Command::UpsertPeer(p.clone()))
        .unwrap();
    let mut dev = at.device();
    let mut slots = at.wg_slots.lock().unwrap();
    if let Some(old) = slots.remove(&p.slot) {
        dev.remove_peer(old);
    }
    if p.mode == LinkMode::Sealed {
        let mut wg = cladnet_wg::PeerConfig::new(PublicKey::from_bytes(p.public_key));
        wg.endpoint = p.endpoint.map(SocketAddr::V4);
        let id = dev.add_peer(now, wg).unwrap();
        slots.insert(p.slot, id);
        let data = dev.peer_data(id).unwrap();
        let cmd = Command::SealedPeer {
            slot: p.slot,
            id,
            data,
        };
        at.router.apply(now, &cmd).unwrap();
    }
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
    install(&a, &[config(&b, B_EP, mode)]);
    install(&b, &[config(&a, A_EP, mode)]);
    (a, b)
}

/// An IPv4/UDP packet from `src` to `dst` with `payload`.
pub(crate) fn packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
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

/// What `from` sends for `p`: sealed or framed by the router, or, while no WireGuard session
/// can send, by the Node (a handshake initiation then).
pub(crate) fn send(from: &Node, p: &[u8]) -> Vec<u8> {
    let mut out = vec![0; out_len(p.len())];
    let start = out.as_ptr();
    match from.router.outbound(Instant::now(), p, &mut out) {
        Outbound::Send { datagram, .. } => {
            // The engine sends it in place, from the start of its batch's free end.
            assert_eq!(
                datagram.as_ptr(),
                start,
                "a datagram not at the start of `out`"
            );
            datagram.to_vec()
        }
        Outbound::ToNode => {
            let id = from.peer();
            match from.device().encapsulate(Instant::now(), id, p, &mut out) {
                Action::WriteToNetwork { datagram, .. } => datagram.to_vec(),
                other => panic!("the Node sent nothing: {other:?}"),
            }
        }
        other => panic!("expected a datagram, got {other:?}"),
    }
}

/// A handshake message at `at` from `from`, as the driver hands it on: through the gate on
/// the handshake thread, then to the Node. What the Node answers.
fn handshake_message(at: &Node, from: &str, d: &[u8]) -> Vec<u8> {
    assert!(Router::is_handshake(d));
    let mut gate = at.router.handshake_gate(crate::engine::OsRandom);
    let mut out = vec![0; 2048];
    let now = Instant::now();
    let mut dev = at.device();
    let action = match at
        .router
        .handshake(now, &mut gate, false, ep(from), d, &mut out)
    {
        Handshake::Initiation(init) => dev.accept_initiation(now, ep(from), init, &mut out).1,
        Handshake::ToNode => dev.decapsulate(now, ep(from), d, &mut out).1,
        other => panic!("{other:?}"),
    };
    match action {
        Action::WriteToNetwork { datagram, to } => {
            assert_eq!(to, ep(from));
            datagram.to_vec()
        }
        other => panic!("{other:?}"),
    }
}

/// What `at` makes of datagram `d` from `from`: the inner packet it delivers, or why not.
pub(crate) fn receive(at: &Node, from: &str, d: &[u8]) -> Result<Vec<u8>, Inbound<'static>> {
    // As little room as the contract promises: the datagram's length.
    let mut out = vec![0; d.len()];
    let start = out.as_ptr();
    match at.router.inbound(Instant::now(), ep(from), d, &mut out) {
        Inbound::Deliver(p) => {
            // The engine writes it to the TUN device in place, from its batch's buffer.
            assert_eq!(
                p.as_ptr(),
                start,
                "an inner packet not at the start of `out`"
            );
            Ok(p.to_vec())
        }
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
/// Node), the Node answers it, the response completes the initiator's handshake and the
/// packet that waited for it leaves as the first data.
#[test]
fn handshakes_through_the_gate_complete() {
    let (a, b) = pair(LinkMode::Sealed);
    let p = packet(a.ip, b.ip, b"secret");
    assert_eq!(receive(&b, A_EP, &handshake(&a, &b, &p)).unwrap(), p);
    // Both data sides carry on without the Node.
    let back = packet(b.ip, a.ip, b"back");
    let mut out = vec![0; 2048];
    match b.router.outbound(Instant::now(), &back, &mut out) {
        Outbound::Send { datagram, .. } => {
            let d = datagram.to_vec();
            assert_eq!(receive(&a, B_EP, &d).unwrap(), back);
        }
        other => panic!("{other:?}"),
    }
    // The initiator's handshake completed with the response (the responder's when its
    // control side takes the first data packet's confirmation, at its next timeout).
    let st = a.router.status(Instant::now());
    assert!(st[0].handshake_age_secs.is_some(), "{st:?}");
}

/// A's first packet `p` for B waits behind a handshake initiation (the router hands it to the
/// Node); B answers; the response completes A's handshake and the queued packet leaves as the
/// first data, returned here.
fn handshake(a: &Node, b: &Node, p: &[u8]) -> Vec<u8> {
    let init = send(a, p);
    assert_eq!(init[0], 1);
    let response = handshake_message(b, A_EP, &init);
    handshake_message(a, B_EP, &response)
}

/// Once a session is up, SEALED packets are sealed and opened on the peer's data side: they
/// cross both ways while another thread holds both Nodes' WireGuard devices (the control side,
/// which the packet threads took per packet before).
#[test]
fn sealed_data_crosses_while_the_devices_are_locked() {
    let (a, b) = pair(LinkMode::Sealed);
    let p = packet(a.ip, b.ip, b"first");
    assert_eq!(receive(&b, A_EP, &handshake(&a, &b, &p)).unwrap(), p);
    let (held_a, held_b) = (a.device(), b.device());
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
    let mut dev = b.device();
    while !matches!(dev.update_timers(Instant::now(), &mut out).1, Action::Done) {}
    let events: Vec<_> = std::iter::from_fn(|| dev.poll_event()).collect();
    drop(dev);
    assert!(
        events.iter().any(|(_, e)| *e
            == cladnet_wg::Event::EndpointChanged {
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
    install(&a, &[config(&b, B_EP, LinkMode::Sealed)]);
    let mut out = vec![0; 256];
    assert_eq!(
        a.router
            .outbound(Instant::now(), &packet(a.ip, b.ip, b"x"), &mut out),
        Outbound::ToNode,
        "no session yet: the Node starts a handshake"
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
    install(&b, &[moved]);
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
    install(&a, &peers);
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
        upsert(&a, c);
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
