//! Packet tables for the eBPF programs, run by the kernel through `BPF_PROG_TEST_RUN`: each row
//! is an input frame, the verdict, the exact output bytes and the exact counter changes.
//! The programs and maps are the real ones (loaded, verified, not attached), driven through
//! the agent's own map API, inside a fresh network namespace.
//!
//! Needs root; without it the tests print why and pass, unless `CI=true`, where they fail.

mod support;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use cladnet_agent::ebpf::{
    EbpfError,
    testrun::{Hook, ProgramTester},
};
use cladnet_common::{
    maps::{Config, DEFAULT_MAX_PEERS, PeerEntry},
    plain, relay, rx,
    wire::{CladHeader, CladType},
};
use cladnet_core::{node::PeerConfig, policy::LinkMode};
use support::{
    NetnsThread, checksum, eth, icmp_echo, ipv4, may_run, privilege_problem, udp, underlay_veth,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const PORT: u16 = 8055;
const LOCAL_NODE: u32 = 0x0a4d_0001;
const LOCAL_UL: [u8; 4] = [192, 0, 2, 1];
const LOCAL_OVERLAY: [u8; 4] = [10, 77, 0, 1];
const LOCAL_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// A PLAIN peer the receive tables validate against.
const B_NODE: u32 = 0x0a4d_0002;
const B_OVERLAY: [u8; 4] = [10, 77, 0, 2];
const B_UL: [u8; 4] = [198, 51, 100, 2];
const B_SLOT: u32 = 2;
/// A SEALED peer.
const C_OVERLAY: [u8; 4] = [10, 77, 0, 3];
/// A PLAIN peer without an endpoint yet.
const D_OVERLAY: [u8; 4] = [10, 77, 0, 4];
/// A PLAIN peer on another port (transmit tables).
const E_NODE: u32 = 0x0a4d_0005;
const E_OVERLAY: [u8; 4] = [10, 77, 0, 5];
const E_UL: [u8; 4] = [203, 0, 113, 5];
const E_PORT: u16 = 40000;
const E_SLOT: u32 = 5;

fn peer(
    node: u32,
    overlay: [u8; 4],
    endpoint: Option<([u8; 4], u16)>,
    mode: LinkMode,
    slot: u32,
) -> PeerConfig {
    PeerConfig {
        slot,
        node_id: format!("node-{node:x}"),
        node_index: node,
        overlay_ip: Ipv4Addr::from(overlay),
        public_key: [0; 32],
        endpoint: endpoint.map(|(ip, port)| SocketAddrV4::new(Ipv4Addr::from(ip), port)),
        mode,
        prefixes: Vec::new(),
    }
}

/// Runs `body` with the programs loaded in a fresh namespace holding an underlay veth
/// `ul0` (MTU 1500), the peers above installed.
fn with_tester(test: &'static str, body: impl FnOnce(&mut ProgramTester) + Send + 'static) {
    if !may_run(test, privilege_problem()) {
        return;
    }
    let thread = NetnsThread::spawn(None, || ());
    thread.run(move |()| {
        let ul0 = underlay_veth();
        let mut config = Config::new(PORT);
        config.local_node_index = LOCAL_NODE;
        config.set_local_underlay_ip(LOCAL_UL);
        config.set_local_overlay_ip(LOCAL_OVERLAY);
        config.underlay_ifindex = ul0;
        let mut tester = match ProgramTester::load(config) {
            Ok(t) => t,
            Err(EbpfError::NoObject) => {
                may_run(
                    test,
                    Some("the agent was built without the eBPF object".into()),
                );
                return;
            }
            Err(e) => panic!("loading the programs: {}", chain(&e)),
        };
        let dp = tester.dataplane();
        dp.upsert_peer(&peer(
            B_NODE,
            B_OVERLAY,
            Some((B_UL, PORT)),
            LinkMode::Plain,
            B_SLOT,
        ))
        .unwrap();
        dp.upsert_peer(&peer(
            0x0a4d_0003,
            C_OVERLAY,
            Some(([198, 51, 100, 3], PORT)),
            LinkMode::Sealed,
            3,
        ))
        .unwrap();
        dp.upsert_peer(&peer(0x0a4d_0004, D_OVERLAY, None, LinkMode::Plain, 4))
            .unwrap();
        dp.upsert_peer(&peer(
            E_NODE,
            E_OVERLAY,
            Some((E_UL, E_PORT)),
            LinkMode::Plain,
            E_SLOT,
        ))
        .unwrap();
        body(&mut tester);
    });
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    s
}

/// Every counter, flattened: `rx_tunnel.packets`, `drop_plain_truncated`, `peer2.rx_bytes`...
fn counters(t: &mut ProgramTester) -> BTreeMap<String, u64> {
    let dp = t.dataplane();
    let mut m = BTreeMap::new();
    for (slot, c) in dp.stats().unwrap() {
        m.insert(format!("{}.packets", slot.name()), c.packets);
        m.insert(format!("{}.bytes", slot.name()), c.bytes);
    }
    for (reason, n) in dp.drops().unwrap() {
        m.insert(format!("drop_{}", reason.name()), n);
    }
    for slot in [B_SLOT, 3, 4, E_SLOT] {
        let c = dp.slot_counters(slot).unwrap();
        for (k, v) in [
            ("tx_packets", c.tx_packets),
            ("tx_bytes", c.tx_bytes),
            ("rx_packets", c.rx_packets),
            ("rx_bytes", c.rx_bytes),
            ("tx_drops", c.tx_drops),
            ("rx_drops", c.rx_drops),
        ] {
            m.insert(format!("peer{slot}.{k}"), v);
        }
    }
    m
}

/// The counters that changed between two snapshots.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d != 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn expect<K: AsRef<str>>(pairs: &[(K, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_ref().to_owned(), *v))
        .collect()
}

// ----- receive side -----

fn inner_from_b() -> Vec<u8> {
    ipv4(B_OVERLAY, LOCAL_OVERLAY, 1, &icmp_echo(7, 1, 56))
}

fn clad(node: u32, inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 8 + inner.len()];
    let n = plain::encapsulate(node, inner, &mut d).unwrap();
    assert_eq!(n, d.len());
    d
}

fn underlay_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    eth(
        LOCAL_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(src, dst, 17, &udp(sport, dport, payload)),
    )
}

fn from_b(payload: &[u8]) -> Vec<u8> {
    underlay_frame(B_UL, PORT, LOCAL_UL, PORT, payload)
}

/// What should happen to a received frame.
#[derive(Clone, Copy, Debug)]
enum Rx {
    /// Decapsulated: the inner packet behind the same Ethernet addresses, counted for B.
    Decap,
    /// Passed unchanged to the agent's socket.
    ToSocket,
    /// Not a tunnel datagram: passed unchanged.
    Other,
    /// Dropped with this reason, charged to B when `peer` is set.
    Drop(&'static str, bool),
}

struct RxRow {
    name: &'static str,
    frame: Vec<u8>,
    want: Rx,
}

fn rx_rows() -> Vec<RxRow> {
    let inner = inner_from_b();
    let good = clad(B_NODE, &inner);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = good.clone();
        f(&mut p);
        p
    };
    let mut rows = vec![
        RxRow {
            name: "valid PLAIN datagram",
            frame: from_b(&good),
            want: Rx::Decap,
        },
        RxRow {
            name: "WireGuard handshake initiation",
            frame: from_b(&[&[1u8, 0, 0, 0][..], &[0x5a; 144]].concat()),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "WireGuard transport data",
            frame: from_b(&[&[4u8, 0, 0, 0][..], &[0x33; 60]].concat()),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "reflector answer",
            frame: from_b(&[&cladnet_common::reflector::MAGIC[..], &[9; 14]].concat()),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "CLAD probe",
            frame: from_b(&CladHeader::new(CladType::Probe, 0, B_NODE).to_bytes()),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "relay frame (a WireGuard message through a relay)",
            frame: from_b(
                &[
                    &relay::header(relay::RelayKind::Deliver, B_NODE, LOCAL_NODE)[..],
                    &[4u8, 0, 0, 0][..],
                    &[0x33; 44],
                ]
                .concat(),
            ),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "inner shorter than the datagram (GRO batch or trailing bytes)",
            frame: from_b(&[&good[..], &[0u8; 8]].concat()),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "first fragment",
            frame: {
                let mut f = from_b(&good);
                f[14 + 6] |= 0x20;
                f
            },
            want: Rx::ToSocket,
        },
        RxRow {
            name: "non-first fragment",
            frame: {
                let mut f = from_b(&good);
                f[14 + 7] = 0x10;
                f
            },
            want: Rx::Other,
        },
        RxRow {
            name: "other UDP port",
            frame: underlay_frame(B_UL, PORT, LOCAL_UL, PORT + 1, &good),
            want: Rx::Other,
        },
        RxRow {
            name: "other destination address",
            frame: underlay_frame(B_UL, PORT, [192, 0, 2, 99], PORT, &good),
            want: Rx::Other,
        },
        RxRow {
            name: "TCP",
            frame: eth(
                LOCAL_MAC,
                PEER_MAC,
                0x0800,
                &ipv4(B_UL, LOCAL_UL, 6, &[0; 40]),
            ),
            want: Rx::Other,
        },
        RxRow {
            name: "ARP",
            frame: eth(LOCAL_MAC, PEER_MAC, 0x0806, &[0; 28]),
            want: Rx::Other,
        },
        RxRow {
            name: "IPv6",
            frame: eth(LOCAL_MAC, PEER_MAC, 0x86dd, &[0x60; 60]),
            want: Rx::Other,
        },
        RxRow {
            name: "outer IPv4 with options",
            frame: {
                let mut f = from_b(&good);
                f[14] = 0x46;
                f
            },
            want: Rx::Other,
        },
        RxRow {
            name: "IPv4 header cut short",
            frame: eth(LOCAL_MAC, PEER_MAC, 0x0800, &[0x45, 0, 0, 40, 0, 0]),
            want: Rx::Other,
        },
        RxRow {
            name: "UDP length past the datagram",
            frame: {
                let mut f = from_b(&good);
                let l = u16::from_be_bytes([f[38], f[39]]) + 10;
                f[38..40].copy_from_slice(&l.to_be_bytes());
                f
            },
            want: Rx::Drop("plain_truncated", false),
        },
        RxRow {
            name: "IPv4 length past the frame",
            frame: {
                let mut f = from_b(&good);
                let l = u16::from_be_bytes([f[16], f[17]]) + 10;
                f[16..18].copy_from_slice(&l.to_be_bytes());
                f
            },
            want: Rx::Drop("plain_truncated", false),
        },
        RxRow {
            name: "CLAD header cut short",
            frame: from_b(&good[..5]),
            want: Rx::Drop("plain_truncated", false),
        },
        RxRow {
            name: "bad version (not CLAD for the demultiplexer)",
            frame: from_b(&with(&|p| p[0] = 0x21)),
            want: Rx::Drop("unknown_message", false),
        },
        RxRow {
            name: "unknown CLAD type",
            frame: from_b(&with(&|p| p[0] = 0x12)),
            want: Rx::Drop("plain_bad_header", false),
        },
        RxRow {
            name: "reserved bytes set",
            frame: from_b(&with(&|p| p[3] = 1)),
            want: Rx::Drop("plain_bad_header", false),
        },
        RxRow {
            name: "garbage",
            frame: from_b(b"cladnet-counting-probe"),
            want: Rx::Drop("unknown_message", false),
        },
        RxRow {
            name: "empty datagram",
            frame: from_b(&[]),
            want: Rx::Drop("unknown_message", false),
        },
        RxRow {
            name: "unknown peer address",
            frame: underlay_frame([198, 51, 100, 9], PORT, LOCAL_UL, PORT, &good),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "unknown peer port",
            frame: underlay_frame(B_UL, PORT + 7, LOCAL_UL, PORT, &good),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "SEALED peer's endpoint",
            frame: underlay_frame([198, 51, 100, 3], PORT, LOCAL_UL, PORT, &good),
            want: Rx::ToSocket,
        },
        RxRow {
            name: "wrong node id",
            frame: from_b(&clad(0x0a4d_0009, &inner)),
            want: Rx::Drop("plain_wrong_node", true),
        },
        RxRow {
            name: "spoofed inner source",
            frame: from_b(&clad(
                B_NODE,
                &ipv4([10, 77, 0, 9], LOCAL_OVERLAY, 1, &icmp_echo(7, 1, 56)),
            )),
            want: Rx::Drop("plain_spoofed_source", true),
        },
        RxRow {
            name: "inner destination: another overlay node",
            frame: from_b(&clad(
                B_NODE,
                &ipv4(B_OVERLAY, [10, 77, 0, 9], 1, &icmp_echo(7, 1, 56)),
            )),
            want: Rx::Drop("plain_wrong_destination", true),
        },
        RxRow {
            name: "inner destination: a host on the underlay",
            frame: from_b(&clad(
                B_NODE,
                &ipv4(B_OVERLAY, [192, 168, 1, 1], 1, &icmp_echo(7, 1, 56)),
            )),
            want: Rx::Drop("plain_wrong_destination", true),
        },
        RxRow {
            name: "inner destination: broadcast",
            frame: from_b(&clad(
                B_NODE,
                &ipv4(B_OVERLAY, [255, 255, 255, 255], 1, &icmp_echo(7, 1, 56)),
            )),
            want: Rx::Drop("plain_wrong_destination", true),
        },
        RxRow {
            name: "inner not IPv4",
            frame: from_b(&with(&|p| p[8] = 0x60)),
            want: Rx::Drop("plain_bad_inner", true),
        },
        RxRow {
            name: "inner longer than the datagram",
            frame: from_b(&with(&|p| {
                let l = u16::from_be_bytes([p[10], p[11]]) + 4;
                p[10..12].copy_from_slice(&l.to_be_bytes());
            })),
            want: Rx::Drop("plain_bad_inner", true),
        },
        RxRow {
            name: "inner header cut short",
            frame: from_b(&good[..8 + 12]),
            want: Rx::Drop("plain_bad_inner", true),
        },
        RxRow {
            name: "inner cut to three bytes",
            frame: from_b(&good[..8 + 3]),
            want: Rx::Drop("plain_truncated", true),
        },
    ];
    // The kernel and the userspace decoder agree on every PLAIN row they both judge.
    for r in &mut rows {
        if let Rx::Drop(reason, _) = r.want
            && let Some(name) = reason.strip_prefix("plain_")
            && r.name != "UDP length past the datagram"
            && r.name != "IPv4 length past the frame"
            && !r.name.starts_with("unknown peer")
            && r.name != "SEALED peer's endpoint"
        {
            let payload = &r.frame[42..];
            let known = plain::KnownPeer {
                node_index: B_NODE,
                overlay_ip: B_OVERLAY,
            };
            let got = plain::decapsulate(payload, Some(known))
                .and_then(|inner| {
                    let hdr = inner.first_chunk().expect("a whole IPv4 header");
                    rx::check_destination(hdr, LOCAL_OVERLAY)
                })
                .unwrap_err();
            assert_eq!(got.name(), name, "{}: userspace says {got:?}", r.name);
        }
    }
    rows
}

fn check_rx(hook: Hook) {
    let (pass, drop) = match hook {
        Hook::XdpUnderlay => (XDP_PASS, XDP_DROP),
        _ => (TC_ACT_OK, TC_ACT_SHOT),
    };
    let test = match hook {
        Hook::XdpUnderlay => "xdp_receive_table",
        _ => "tc_ingress_receive_table",
    };
    with_tester(test, move |t| {
        let inner = inner_from_b();
        let mut failures = Vec::new();
        for row in rx_rows() {
            // The kernel refuses to build an skb from an IPv4 frame this short for a TC test
            // run (EINVAL); the stack would have dropped it before TC anyway.
            if hook != Hook::XdpUnderlay && row.name == "IPv4 header cut short" {
                continue;
            }
            let len = row.frame.len() as u64;
            let before = counters(t);
            let got = t
                .run(hook, &row.frame)
                .unwrap_or_else(|e| panic!("{}: {}", row.name, chain(&e)));
            let after = counters(t);
            let c = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
                let mut v = vec![
                    ("rx_tunnel.packets".to_owned(), 1),
                    ("rx_tunnel.bytes".to_owned(), len),
                ];
                v.extend(pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)));
                v
            };
            let (verdict, out, counts): (u32, Option<Vec<u8>>, Vec<(String, u64)>) = match row.want
            {
                Rx::Decap => (
                    pass,
                    Some(eth(LOCAL_MAC, PEER_MAC, 0x0800, &inner)),
                    c(&[
                        ("peer2.rx_packets", 1),
                        ("peer2.rx_bytes", inner.len() as u64),
                    ]),
                ),
                Rx::ToSocket => (
                    pass,
                    Some(row.frame.clone()),
                    c(&[("rx_to_socket.packets", 1), ("rx_to_socket.bytes", len)]),
                ),
                Rx::Other => (
                    pass,
                    Some(row.frame.clone()),
                    vec![
                        ("rx_other.packets".to_owned(), 1),
                        ("rx_other.bytes".to_owned(), len),
                    ],
                ),
                Rx::Drop(reason, charged) => {
                    let key = format!("drop_{reason}");
                    let mut v = c(&[(key.as_str(), 1)]);
                    if charged {
                        v.push(("peer2.rx_drops".to_owned(), 1));
                    }
                    (drop, None, v)
                }
            };
            let changed = delta(&before, &after);
            let mut problems = Vec::new();
            if got.verdict != verdict {
                problems.push(format!("verdict {} (want {verdict})", got.verdict));
            }
            if let Some(out) = out
                && got.data != out
            {
                problems.push(format!("output {:02x?}\n   want {out:02x?}", got.data));
            }
            if changed != expect(&counts) {
                problems.push(format!("counters {changed:?}, want {:?}", expect(&counts)));
            }
            if !problems.is_empty() {
                failures.push(format!("{}: {}", row.name, problems.join("; ")));
            }
        }
        assert!(failures.is_empty(), "{hook:?}:\n{}", failures.join("\n"));
    });
}

#[test]
fn xdp_receive_table() {
    check_rx(Hook::XdpUnderlay);
}

#[test]
fn tc_ingress_receive_table() {
    check_rx(Hook::TcUnderlayIngress);
}

// ----- transmit side -----

/// The frame the transmit program must produce for `inner` to `dst:dport`, built here from
/// the wire format (not from the code the program uses): Ethernet placeholder (zero
/// addresses), IPv4 (DF, TTL 64, checksum), UDP (our port, checksum 0), then exactly what the
/// userspace engine's `plain::encapsulate` produces.
fn expected_outer(inner: &[u8], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let payload = clad(LOCAL_NODE, inner);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + 8 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&LOCAL_UL);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&udp(PORT, dport, &payload));
    eth([0; 6], [0; 6], 0x0800, &ip)
}

fn to(dst: [u8; 4], icmp_payload: usize) -> Vec<u8> {
    ipv4(LOCAL_OVERLAY, dst, 1, &icmp_echo(9, 1, icmp_payload))
}

#[test]
fn tc_egress_transmit_table() {
    with_tester("tc_egress_transmit_table", |t| {
        struct TxRow {
            name: &'static str,
            frame: Vec<u8>,
            verdict: u32,
            out: Vec<u8>,
            counts: Vec<(&'static str, u64)>,
        }
        let tx = |inner: &[u8], slot: &'static str, dst: [u8; 4], port: u16| {
            let frame = eth([0; 6], [0; 6], 0x0800, inner);
            let counts = vec![
                (
                    if slot == "2" {
                        "peer2.tx_packets"
                    } else {
                        "peer5.tx_packets"
                    },
                    1,
                ),
                (
                    if slot == "2" {
                        "peer2.tx_bytes"
                    } else {
                        "peer5.tx_bytes"
                    },
                    inner.len() as u64,
                ),
            ];
            (frame, expected_outer(inner, dst, port), counts)
        };
        let userspace = |frame: Vec<u8>, name| {
            let len = frame.len() as u64;
            TxRow {
                name,
                out: frame.clone(),
                frame,
                verdict: TC_ACT_OK,
                counts: vec![
                    ("tx_to_userspace.packets", 1),
                    ("tx_to_userspace.bytes", len),
                ],
            }
        };
        let mut rows = Vec::new();
        for (name, inner, slot, dst, port) in [
            ("to a PLAIN peer", to(B_OVERLAY, 56), "2", B_UL, PORT),
            (
                "to a PLAIN peer on another port",
                to(E_OVERLAY, 100),
                "5",
                E_UL,
                E_PORT,
            ),
            // 1464 + 36 = 1500, the underlay MTU.
            (
                "largest packet that fits",
                to(B_OVERLAY, 1464 - 28),
                "2",
                B_UL,
                PORT,
            ),
        ] {
            let (frame, out, counts) = tx(&inner, slot, dst, port);
            rows.push(TxRow {
                name,
                frame,
                verdict: TC_ACT_REDIRECT,
                out,
                counts,
            });
        }
        rows.push(TxRow {
            name: "one byte over the underlay MTU",
            frame: eth([0; 6], [0; 6], 0x0800, &to(B_OVERLAY, 1465 - 28)),
            verdict: TC_ACT_SHOT,
            out: Vec::new(),
            counts: vec![("drop_oversize", 1), ("peer2.tx_drops", 1)],
        });
        rows.push(userspace(
            eth([0; 6], [0; 6], 0x0800, &to(C_OVERLAY, 56)),
            "to a SEALED peer",
        ));
        rows.push(userspace(
            eth([0; 6], [0; 6], 0x0800, &to(D_OVERLAY, 56)),
            "to a PLAIN peer without an endpoint",
        ));
        rows.push(userspace(
            eth([0; 6], [0; 6], 0x0800, &to([10, 77, 0, 99], 56)),
            "to no peer",
        ));
        rows.push(userspace(eth([0; 6], [0; 6], 0x86dd, &[0x60; 48]), "IPv6"));
        let mut failures = Vec::new();
        for row in rows {
            let before = counters(t);
            let got = t.run(Hook::TcOverlayEgress, &row.frame).unwrap();
            let changed = delta(&before, &counters(t));
            let mut problems = Vec::new();
            if got.verdict != row.verdict {
                problems.push(format!("verdict {} (want {})", got.verdict, row.verdict));
            }
            if row.verdict != TC_ACT_SHOT && got.data != row.out {
                problems.push(format!(
                    "output {:02x?}\n   want {:02x?}",
                    got.data, row.out
                ));
            }
            if changed != expect(&row.counts) {
                problems.push(format!(
                    "counters {changed:?}, want {:?}",
                    expect(&row.counts)
                ));
            }
            if !problems.is_empty() {
                failures.push(format!("{}: {}", row.name, problems.join("; ")));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    });
}

// ----- advertised prefixes -----

/// B's podCIDR, E's, and this node's own (approved prefixes, written through the agent's
/// dataplane API as the Node's commands do).
const B_PODS: [u8; 4] = [10, 244, 2, 0];
const E_PODS: [u8; 4] = [10, 244, 5, 0];
const LOCAL_PODS: [u8; 4] = [10, 244, 1, 0];

fn pod(net: [u8; 4], host: u8) -> [u8; 4] {
    [net[0], net[1], net[2], host]
}

fn install_pod_prefixes(t: &mut ProgramTester) {
    let net = |a: [u8; 4]| ipnet::Ipv4Net::new(Ipv4Addr::from(a), 24).unwrap();
    let dp = t.dataplane();
    for (mut p, pods) in [
        (
            peer(
                B_NODE,
                B_OVERLAY,
                Some((B_UL, PORT)),
                LinkMode::Plain,
                B_SLOT,
            ),
            B_PODS,
        ),
        (
            peer(
                E_NODE,
                E_OVERLAY,
                Some((E_UL, E_PORT)),
                LinkMode::Plain,
                E_SLOT,
            ),
            E_PODS,
        ),
    ] {
        p.prefixes = vec![net(pods)];
        dp.upsert_peer(&p).unwrap();
    }
    dp.set_local_prefixes(LOCAL_NODE, &[net(LOCAL_PODS)])
        .unwrap();
    assert_eq!(
        dp.peer_entry(Ipv4Addr::from(pod(LOCAL_PODS, 9))).unwrap(),
        Some(PeerEntry::local(LOCAL_NODE))
    );
}

/// The owner table of [`install_pod_prefixes`] plus the overlay /32s, for the userspace
/// decision.
fn owner(ip: [u8; 4]) -> rx::Owner {
    match ip {
        [10, 244, 2, _] | B_OVERLAY => rx::Owner::Peer(B_NODE),
        [10, 244, 5, _] | E_OVERLAY => rx::Owner::Peer(E_NODE),
        [10, 244, 1, _] => rx::Owner::Local,
        _ => rx::Owner::Nobody,
    }
}

/// Receive, both hooks: an inner source in B's prefix from B is delivered (to a local pod
/// too); one in another peer's prefix, this node's, or nobody's is dropped and counted as a
/// spoof, charged to B; a destination in another peer's prefix is refused. The userspace
/// decision with the same table agrees on every row.
#[test]
fn received_prefix_traffic_follows_allowed_ips() {
    for hook in [Hook::XdpUnderlay, Hook::TcUnderlayIngress] {
        let (pass, drop) = match hook {
            Hook::XdpUnderlay => (XDP_PASS, XDP_DROP),
            _ => (TC_ACT_OK, TC_ACT_SHOT),
        };
        with_tester("received_prefix_traffic_follows_allowed_ips", move |t| {
            let packet = |src: [u8; 4], dst: [u8; 4]| ipv4(src, dst, 1, &icmp_echo(7, 1, 56));
            let b_pod = pod(B_PODS, 7);
            // Before the prefixes are installed, B's pod address is nobody's: a spoof.
            let rows_before = [(b_pod, pod(LOCAL_PODS, 5), Some("plain_spoofed_source"))];
            let rows_after = [
                (b_pod, pod(LOCAL_PODS, 5), None),
                (b_pod, LOCAL_OVERLAY, None),
                (B_OVERLAY, pod(LOCAL_PODS, 5), None),
                (
                    pod(E_PODS, 7),
                    pod(LOCAL_PODS, 5),
                    Some("plain_spoofed_source"),
                ),
                (
                    pod(LOCAL_PODS, 7),
                    LOCAL_OVERLAY,
                    Some("plain_spoofed_source"),
                ),
                ([172, 16, 0, 1], LOCAL_OVERLAY, Some("plain_spoofed_source")),
                (b_pod, pod(E_PODS, 9), Some("plain_wrong_destination")),
            ];
            let mut failures = Vec::new();
            for (installed, rows) in [(false, &rows_before[..]), (true, &rows_after[..])] {
                if installed {
                    install_pod_prefixes(t);
                }
                for &(src, dst, want_drop) in rows {
                    let inner = packet(src, dst);
                    let frame = from_b(&clad(B_NODE, &inner));
                    let len = frame.len() as u64;
                    let before = counters(t);
                    let got = t.run(hook, &frame).unwrap();
                    let changed = delta(&before, &counters(t));
                    let mut want = vec![
                        ("rx_tunnel.packets".to_owned(), 1),
                        ("rx_tunnel.bytes".to_owned(), len),
                    ];
                    let (verdict, out) = match want_drop {
                        None => {
                            want.push(("peer2.rx_packets".into(), 1));
                            want.push(("peer2.rx_bytes".into(), inner.len() as u64));
                            (pass, Some(eth(LOCAL_MAC, PEER_MAC, 0x0800, &inner)))
                        }
                        Some(reason) => {
                            want.push((format!("drop_{reason}"), 1));
                            want.push(("peer2.rx_drops".into(), 1));
                            (drop, None)
                        }
                    };
                    let name = format!("{hook:?} {src:?} -> {dst:?} (prefixes {installed})");
                    if got.verdict != verdict {
                        failures.push(format!("{name}: verdict {} (want {verdict})", got.verdict));
                    }
                    if let Some(out) = out
                        && got.data != out
                    {
                        failures.push(format!("{name}: output {:02x?}", got.data));
                    }
                    if changed != expect(&want) {
                        failures.push(format!("{name}: counters {changed:?}, want {want:?}"));
                    }
                    if installed {
                        let known = plain::KnownPeer {
                            node_index: B_NODE,
                            overlay_ip: B_OVERLAY,
                        };
                        let userspace = plain::decapsulate_owned(&frame[42..], Some(known), owner)
                            .and_then(|inner| {
                                let hdr = inner.first_chunk().expect("a whole IPv4 header");
                                rx::check_destination_in(hdr, LOCAL_OVERLAY, owner)
                            })
                            .err()
                            .map(|r| format!("plain_{}", r.name()));
                        if userspace.as_deref() != want_drop {
                            failures.push(format!("{name}: userspace says {userspace:?}"));
                        }
                    }
                }
            }
            assert!(failures.is_empty(), "\n{}", failures.join("\n"));
        });
    }
}

/// Transmit: a packet to a pod in a peer's prefix is encapsulated in the kernel to the peer
/// that owns it (its endpoint and port); one to this node's own prefix is left alone.
#[test]
fn packets_to_a_pod_prefix_go_to_its_peer() {
    with_tester("packets_to_a_pod_prefix_go_to_its_peer", |t| {
        install_pod_prefixes(t);
        let from_pod = |dst: [u8; 4]| ipv4(pod(LOCAL_PODS, 5), dst, 1, &icmp_echo(9, 1, 56));
        let mut failures = Vec::new();
        for (dst, want) in [
            (pod(B_PODS, 9), Some((B_UL, PORT, "2"))),
            (pod(E_PODS, 9), Some((E_UL, E_PORT, "5"))),
            (pod(LOCAL_PODS, 9), None),
        ] {
            let inner = from_pod(dst);
            let frame = eth([0; 6], [0; 6], 0x0800, &inner);
            let before = counters(t);
            let got = t.run(Hook::TcOverlayEgress, &frame).unwrap();
            let changed = delta(&before, &counters(t));
            let (verdict, out, counts) = match want {
                Some((ul, port, slot)) => (
                    TC_ACT_REDIRECT,
                    expected_outer(&inner, ul, port),
                    vec![
                        (format!("peer{slot}.tx_packets"), 1),
                        (format!("peer{slot}.tx_bytes"), inner.len() as u64),
                    ],
                ),
                None => (
                    TC_ACT_OK,
                    frame.clone(),
                    vec![
                        ("tx_to_userspace.packets".to_owned(), 1),
                        ("tx_to_userspace.bytes".to_owned(), frame.len() as u64),
                    ],
                ),
            };
            if got.verdict != verdict || got.data != out || changed != expect(&counts) {
                failures.push(format!(
                    "to {dst:?}: verdict {} (want {verdict}), counters {changed:?} (want {counts:?}), output {:02x?}",
                    got.verdict, got.data
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    });
}

// ----- map updates -----

/// A peer's prefix entries follow its endpoint (each carries it), and a withdrawal deletes
/// only entries that still belong to the named node: then a packet to the withdrawn prefix
/// is no longer encapsulated.
#[test]
fn prefix_entries_follow_the_peer_and_go_when_withdrawn() {
    with_tester(
        "prefix_entries_follow_the_peer_and_go_when_withdrawn",
        |t| {
            install_pod_prefixes(t);
            let b_pods = ipnet::Ipv4Net::new(Ipv4Addr::from(B_PODS), 24).unwrap();
            let to_b_pod = Ipv4Addr::from(pod(B_PODS, 9));
            let moved = ([198, 51, 100, 22], 8099);
            let mut b = peer(B_NODE, B_OVERLAY, Some(moved), LinkMode::Plain, B_SLOT);
            b.prefixes = vec![b_pods];
            let dp = t.dataplane();
            dp.upsert_peer(&b).unwrap();
            let e = dp.peer_entry(to_b_pod).unwrap().expect("B's pods");
            assert_eq!((e.underlay_ip(), e.underlay_port()), moved);
            // Another node's withdrawal of the same prefix leaves B's entry alone.
            dp.remove_prefixes(E_NODE, &[b_pods]).unwrap();
            assert!(dp.peer_entry(to_b_pod).unwrap().is_some());
            dp.remove_prefixes(B_NODE, &[b_pods]).unwrap();
            assert_eq!(dp.peer_entry(to_b_pod).unwrap(), None);
            assert!(
                dp.peer_entry(Ipv4Addr::from(B_OVERLAY)).unwrap().is_some(),
                "the peer stays"
            );
            let inner = ipv4(pod(LOCAL_PODS, 5), pod(B_PODS, 9), 1, &icmp_echo(9, 1, 56));
            let frame = eth([0; 6], [0; 6], 0x0800, &inner);
            let got = t.run(Hook::TcOverlayEgress, &frame).unwrap();
            assert_eq!(
                got.verdict, TC_ACT_OK,
                "no owner: on to the userspace engine"
            );
        },
    );
}

#[test]
fn peer_updates_keep_the_maps_consistent() {
    with_tester("peer_updates_keep_the_maps_consistent", |t| {
        let b_ep = SocketAddrV4::new(Ipv4Addr::from(B_UL), PORT);
        let inner = inner_from_b();
        let frame = from_b(&clad(B_NODE, &inner));
        assert_eq!(t.run(Hook::XdpUnderlay, &frame).unwrap().verdict, XDP_PASS);
        let rx_before = t.dataplane().slot_counters(B_SLOT).unwrap().rx_packets;
        assert_eq!(rx_before, 1);

        // Same peer, same slot, new endpoint: the new one is accepted, the old one is gone,
        // the counters stay.
        let moved = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 22), 8099);
        let mut b = peer(
            B_NODE,
            B_OVERLAY,
            Some((moved.ip().octets(), moved.port())),
            LinkMode::Plain,
            B_SLOT,
        );
        let dp = t.dataplane();
        dp.upsert_peer(&b).unwrap();
        assert_eq!(dp.endpoint_entry(b_ep).unwrap(), None);
        let e = dp.endpoint_entry(moved).unwrap().expect("new endpoint");
        assert_eq!(
            (e.node_index, e.overlay_ip, e.slot),
            (B_NODE, B_OVERLAY, B_SLOT)
        );
        let p = dp.peer_entry(Ipv4Addr::from(B_OVERLAY)).unwrap().unwrap();
        assert_eq!(
            (p.underlay_ip(), p.underlay_port()),
            (moved.ip().octets(), moved.port())
        );
        assert_eq!(dp.slot_counters(B_SLOT).unwrap().rx_packets, 1);
        // The old endpoint is no longer one the kernel knows: its datagrams go to the agent,
        // which decides (it may learn a new port of a known address, or drop and count).
        let old = t.run(Hook::XdpUnderlay, &frame).unwrap();
        assert_eq!(
            (old.verdict, &old.data[..]),
            (XDP_PASS, &frame[..]),
            "the old endpoint is no longer decapsulated"
        );
        assert_eq!(t.dataplane().slot_counters(B_SLOT).unwrap().rx_packets, 1);
        let new = underlay_frame(
            moved.ip().octets(),
            moved.port(),
            LOCAL_UL,
            PORT,
            &clad(B_NODE, &inner),
        );
        assert_eq!(t.run(Hook::XdpUnderlay, &new).unwrap().verdict, XDP_PASS);

        // New overlay address: the old /32 goes.
        b.overlay_ip = Ipv4Addr::new(10, 77, 0, 22);
        let dp = t.dataplane();
        dp.upsert_peer(&b).unwrap();
        assert_eq!(dp.peer_entry(Ipv4Addr::from(B_OVERLAY)).unwrap(), None);
        assert!(dp.peer_entry(b.overlay_ip).unwrap().is_some());

        // PLAIN -> SEALED: no endpoint entry, and transmit passes to userspace.
        b.mode = LinkMode::Sealed;
        dp.upsert_peer(&b).unwrap();
        assert_eq!(dp.endpoint_entry(moved).unwrap(), None);
        assert!(!dp.peer_entry(b.overlay_ip).unwrap().unwrap().is_plain());

        // A new slot starts from zero.
        b.mode = LinkMode::Plain;
        b.slot = 7;
        dp.upsert_peer(&b).unwrap();
        assert_eq!(dp.slot_counters(7).unwrap(), Default::default());

        // Removal: both entries go; removing again is a no-op.
        assert!(dp.remove_peer(b.overlay_ip).unwrap());
        assert_eq!(dp.peer_entry(b.overlay_ip).unwrap(), None);
        assert_eq!(dp.endpoint_entry(moved).unwrap(), None);
        assert!(!dp.remove_peer(b.overlay_ip).unwrap());
        let tx = t
            .run(
                Hook::TcOverlayEgress,
                &eth([0; 6], [0; 6], 0x0800, &to([10, 77, 0, 22], 8)),
            )
            .unwrap();
        assert_eq!(tx.verdict, TC_ACT_OK, "no peer: on to userspace");

        // Out-of-range slots are refused before anything changes.
        b.slot = DEFAULT_MAX_PEERS;
        let err = t.dataplane().upsert_peer(&b).unwrap_err();
        assert!(err.to_string().contains("counter slot"), "{err}");
        assert_eq!(t.dataplane().peer_entry(b.overlay_ip).unwrap(), None);
    });
}
