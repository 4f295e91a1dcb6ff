//! The TUN device (`sys::tun`) and interface/route configuration (`netconf`) against a real
//! kernel. Each test runs on its own thread inside a fresh network namespace
//! (`unshare(CLONE_NEWNET)`), so it never sees or touches the machine's interfaces, and
//! everything it creates vanishes with the namespace when the thread ends, pass or fail.
//!
//! Needs root; without it the tests print why and pass, unless `CI=true`, where they fail.
// unshare(2) has no safe wrapper in std; it is the only unsafe call here.
#![allow(unsafe_code, reason = "unshare(2) to enter a fresh network namespace")]

use std::{
    future::Future,
    io::IoSlice,
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use cladnet_agent::{
    netconf::{self, NetconfError},
    sys::{
        self, SysError,
        tun::{Offload, Tun, TunOptions, TunQueue, VNET_HDR_LEN, VirtioNetHdr},
    },
};
use cladnet_offload as offload;
use ipnet::Ipv4Net;
use serde_json::Value;

mod support;
use support::{may_run, privilege_problem};

const TUN: &str = "cnt0";
const TUN_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const WAIT: Duration = Duration::from_secs(5);

/// Runs `body` on a dedicated thread that first moves into a new, empty network namespace,
/// with a current-thread Tokio runtime (so every socket it opens lives in that namespace).
fn in_netns<F, Fut>(test: &'static str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !may_run(test, privilege_problem()) {
        return;
    }
    let thread = std::thread::Builder::new()
        .name(format!("netns-{test}"))
        .spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) only swaps this thread's network namespace; it
            // touches no memory. Every socket and device made afterwards on this thread
            // belongs to the new namespace, which the kernel frees when they are all gone.
            let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            if ret != 0 {
                let err = std::io::Error::last_os_error();
                return may_run(test, Some(format!("unshare(CLONE_NEWNET): {err}")));
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(body());
            true
        })
        .expect("spawning the namespace thread");
    match thread.join() {
        Ok(_) => {}
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `ip -j ARGS` (inheriting the calling thread's namespace) and parses its output.
fn ip_json(args: &[&str]) -> Value {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ip -j prints JSON")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

// ----- packets -----

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo request; with `icmp_csum` false its ICMP checksum is left zero.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, icmp_csum: bool) -> Vec<u8> {
    let payload = b"cladnet sys test";
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64; // TTL
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_csum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    p[20] = 8; // echo request
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[28..].copy_from_slice(payload);
    if icmp_csum {
        let c = checksum(&p[20..]);
        p[22..24].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// Whether `p` is the echo reply from `from` to `to` with this id and sequence number.
fn is_echo_reply(p: &[u8], from: Ipv4Addr, to: Ipv4Addr, id: u16, seq: u16) -> bool {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 1 {
        return false;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let icmp = &p[ihl..];
    p[12..16] == from.octets()
        && p[16..20] == to.octets()
        && icmp.len() >= 8
        && icmp[0] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
        && checksum(icmp) == 0
}

/// Reads packets from any of `queues` until one satisfies `want` (others, e.g. IPv6 router
/// solicitations, are skipped) or `WAIT` passes.
fn read_matching(queues: &[TunQueue], want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        for q in queues {
            if !q.poll_readable(Some(Duration::from_millis(20))).unwrap() {
                continue;
            }
            let n = q.read(&mut buf).unwrap();
            if want(&buf[..n]) {
                return buf[..n].to_vec();
            }
            seen.push(n);
        }
    }
    panic!("no matching packet within {WAIT:?}; skipped packets of lengths {seen:?}");
}

/// Asserts that no packet satisfying `unwanted` arrives on `queue` within `wait`.
fn assert_none_matching(queue: &TunQueue, wait: Duration, unwanted: impl Fn(&[u8]) -> bool) {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if queue.poll_readable(Some(left)).unwrap() {
            let n = queue.read(&mut buf).unwrap();
            assert!(!unwanted(&buf[..n]), "unexpected packet {:?}", &buf[..n]);
        }
    }
}

async fn configured_tun(opts: TunOptions) -> Tun {
    let tun = Tun::create(TUN, opts).expect("creating the TUN");
    assert_eq!(tun.name(), TUN);
    netconf::configure_interface(TUN, TUN_IP, 24, 1400)
        .await
        .expect("configuring the TUN");
    tun
}

// ----- tests -----

#[test]
fn names_are_validated_before_the_kernel_sees_them() {
    for bad in ["", "sixteen-chars-xx", "a/b", "a b", "a\0b"] {
        let err = Tun::create(bad, TunOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                SysError::InvalidInput {
                    field: "interface",
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("invalid interface"), "{err}");
    }
}

#[test]
fn tun_is_configured_and_answers_ping() {
    in_netns("tun_is_configured_and_answers_ping", || async {
        // With 127.0.0.1 on an up loopback, ipv4_interfaces has something to skip.
        ip(&["link", "set", "lo", "up"]);
        let tun = configured_tun(TunOptions::default()).await;
        assert!(!tun.vnet_hdr());
        assert_eq!(tun.queues().len(), 1);

        // netlink's view
        let ifaces = netconf::ipv4_interfaces().await.unwrap();
        assert!(ifaces.iter().all(|i| i.name != "lo"), "{ifaces:?}");
        let info = ifaces.iter().find(|i| i.name == TUN).expect("TUN listed");
        assert_eq!(info.cidrs, vec![(TUN_IP, 24)]);
        assert_eq!(info.mtu, 1400);
        assert!(info.up, "{info:?}");
        assert_eq!(Some(info.index), sys::interface_index(TUN).unwrap());

        // iproute2's view
        let link = &ip_json(&["addr", "show", "dev", TUN])[0];
        assert_eq!(link["mtu"], 1400);
        assert!(
            link["flags"]
                .as_array()
                .unwrap()
                .contains(&Value::from("UP"))
        );
        let v4: Vec<&Value> = link["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .collect();
        assert_eq!(v4.len(), 1, "{link}");
        assert_eq!(v4[0]["local"], "10.99.0.1");
        assert_eq!(v4[0]["prefixlen"], 24);
        let routes = ip_json(&["route", "show", "dev", TUN]);
        assert!(
            routes
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == "10.99.0.0/24"),
            "connected route missing: {routes}"
        );

        // Re-running is a no-op; another address replaces the old one.
        netconf::configure_interface(TUN, TUN_IP, 24, 1400)
            .await
            .unwrap();
        let new_ip = Ipv4Addr::new(10, 99, 1, 1);
        netconf::configure_interface(TUN, new_ip, 24, 1380)
            .await
            .unwrap();
        let info = netconf::ipv4_interfaces().await.unwrap();
        let info = info.iter().find(|i| i.name == TUN).unwrap();
        assert_eq!(info.cidrs, vec![(new_ip, 24)]);
        assert_eq!(info.mtu, 1380);
        netconf::configure_interface(TUN, TUN_IP, 24, 1400)
            .await
            .unwrap();

        // The kernel answers an echo request injected from a peer on the overlay prefix.
        let q = &tun.queues()[0];
        let request = echo_request(PEER_IP, TUN_IP, 0x1234, 1, true);
        assert_eq!(q.write(&request).unwrap(), request.len());
        read_matching(tun.queues(), |p| {
            is_echo_reply(p, TUN_IP, PEER_IP, 0x1234, 1)
        });

        // Same with the packet gathered from two slices.
        let request = echo_request(PEER_IP, TUN_IP, 0x1234, 2, true);
        let (head, body) = request.split_at(20);
        let n = q.writev(&[IoSlice::new(head), IoSlice::new(body)]).unwrap();
        assert_eq!(n, request.len());
        read_matching(tun.queues(), |p| {
            is_echo_reply(p, TUN_IP, PEER_IP, 0x1234, 2)
        });

        // Without a vnet header the kernel checks the ICMP checksum: a zero one gets no
        // answer (which is what makes the NEEDS_CSUM case of the vnet_hdr test meaningful).
        q.write(&echo_request(PEER_IP, TUN_IP, 0x1234, 3, false))
            .unwrap();
        assert_none_matching(q, Duration::from_millis(300), |p| {
            is_echo_reply(p, TUN_IP, PEER_IP, 0x1234, 3)
        });

        // Offloads need vnet_hdr.
        let err = tun.set_offload(Offload::TCP).unwrap_err();
        assert!(err.to_string().contains("vnet_hdr"), "{err}");
    });
}

#[test]
fn vnet_hdr_mode_reads_and_writes_the_header() {
    in_netns("vnet_hdr_mode_reads_and_writes_the_header", || async {
        let opts = TunOptions {
            vnet_hdr: true,
            queues: 1,
        };
        let tun = configured_tun(opts).await;
        assert!(tun.vnet_hdr());
        let accepted = tun.set_offload(Offload::ALL).expect("TUNSETOFFLOAD");
        eprintln!("offloads accepted: {accepted}");
        assert!(accepted.contains(Offload::TCP), "{accepted}");
        let q = &tun.queues()[0];

        // A plain header: no offload, complete checksums.
        let request = echo_request(PEER_IP, TUN_IP, 7, 1, true);
        let hdr = VirtioNetHdr::NONE.encode();
        let n = q
            .writev(&[IoSlice::new(&hdr), IoSlice::new(&request)])
            .unwrap();
        assert_eq!(n, VNET_HDR_LEN + request.len());
        let reply = read_matching(tun.queues(), |p| {
            p.len() > VNET_HDR_LEN && is_echo_reply(&p[VNET_HDR_LEN..], TUN_IP, PEER_IP, 7, 1)
        });
        let got = VirtioNetHdr::parse(&reply).unwrap();
        assert_eq!(got.gso_type, offload::VIRTIO_NET_HDR_GSO_NONE, "{got:?}");

        // NEEDS_CSUM with the ICMP checksum left zero: only a kernel that honours the header
        // accepts the packet (it is then trusted as checksum-offloaded) and answers it.
        let request = echo_request(PEER_IP, TUN_IP, 7, 2, false);
        let hdr = VirtioNetHdr {
            flags: offload::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 2,
            ..VirtioNetHdr::NONE
        };
        let mut packet = hdr.encode().to_vec();
        packet.extend_from_slice(&request);
        q.write(&packet).unwrap();
        read_matching(tun.queues(), |p| {
            p.len() > VNET_HDR_LEN && is_echo_reply(&p[VNET_HDR_LEN..], TUN_IP, PEER_IP, 7, 2)
        });

        // The header is rejected when inconsistent (checksum offset past the packet).
        let bad = VirtioNetHdr {
            flags: offload::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 2000,
            csum_offset: 2,
            ..VirtioNetHdr::NONE
        };
        let mut packet = bad.encode().to_vec();
        packet.extend_from_slice(&request);
        assert!(
            q.write(&packet).is_err(),
            "kernel accepted a bad vnet header"
        );
    });
}

#[test]
fn multi_queue_tun_spreads_over_queues() {
    in_netns("multi_queue_tun_spreads_over_queues", || async {
        let opts = TunOptions {
            vnet_hdr: false,
            queues: 3,
        };
        let tun = configured_tun(opts).await;
        assert_eq!(tun.queues().len(), 3);
        let indices: Vec<usize> = tun.queues().iter().map(TunQueue::index).collect();
        assert_eq!(indices, [0, 1, 2]);
        // Every queue writes into the same device; replies come back on some queue.
        for (seq, q) in (1u16..).zip(tun.queues()) {
            q.write(&echo_request(PEER_IP, TUN_IP, 9, seq, true))
                .unwrap();
            read_matching(tun.queues(), |p| is_echo_reply(p, TUN_IP, PEER_IP, 9, seq));
        }
        // A single-queue attach to the multi-queue device is refused clearly.
        let err = Tun::create(TUN, TunOptions::default()).unwrap_err();
        assert!(matches!(err, SysError::NotAttachable { .. }), "{err}");
    });
}

#[test]
fn attaching_to_something_else_fails_clearly() {
    in_netns("attaching_to_something_else_fails_clearly", || async {
        ip(&["link", "set", "lo", "up"]);
        let err = Tun::create("lo", TunOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SysError::NotAttachable { .. }), "{text}");
        assert!(
            text.contains("\"lo\" exists and is not a TUN device"),
            "{text}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));

        let _tun = Tun::create(TUN, TunOptions::default()).unwrap();
        let err = Tun::create(TUN, TunOptions::default()).unwrap_err();
        assert!(err.to_string().contains("already attached"), "{err}");

        // A persistent TUN made by someone else can be attached to.
        ip(&["tuntap", "add", "dev", "cnp0", "mode", "tun"]);
        let attached = Tun::create("cnp0", TunOptions::default()).unwrap();
        drop(attached);
        assert!(
            sys::interface_index("cnp0").unwrap().is_some(),
            "persistent TUN survives"
        );
        netconf::delete_link("cnp0").await.unwrap();
        assert_eq!(sys::interface_index("cnp0").unwrap(), None);
        netconf::delete_link("cnp0")
            .await
            .expect("missing link is fine");
    });
}

fn route_json(dest: &str) -> Vec<Value> {
    ip_json(&["route", "show", dest])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn routes_are_replaced_looked_up_and_deleted() {
    in_netns("routes_are_replaced_looked_up_and_deleted", || async {
        let _tun = configured_tun(TunOptions::default()).await;
        let dest = net("10.98.0.0/16");

        netconf::replace_route(dest, TUN, Some(1300)).await.unwrap();
        let routes = route_json("10.98.0.0/16");
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0]["dev"], TUN);
        assert_eq!(routes[0]["metrics"][0]["mtu"], 1300, "{routes:?}");

        // Replace, not add: still one route, new MTU. Host bits are ignored.
        netconf::replace_route(net("10.98.7.7/16"), TUN, Some(1200))
            .await
            .unwrap();
        let routes = route_json("10.98.0.0/16");
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0]["metrics"][0]["mtu"], 1200, "{routes:?}");

        let found = netconf::route_interface(Ipv4Addr::new(10, 98, 3, 4))
            .await
            .unwrap()
            .expect("route found");
        assert_eq!(found.interface, TUN);
        assert_eq!(Some(found.index), sys::interface_index(TUN).unwrap());
        assert_eq!(found.mtu, 1200);
        assert_eq!(found.source, Some(TUN_IP));
        assert_eq!(found.gateway, None);

        // Without an MTU the route's metric goes and the interface MTU applies.
        netconf::replace_route(dest, TUN, None).await.unwrap();
        let routes = route_json("10.98.0.0/16");
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert!(routes[0].get("metrics").is_none(), "{routes:?}");
        let found = netconf::route_interface(Ipv4Addr::new(10, 98, 3, 4))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.mtu, 1400);

        // The connected route of the overlay prefix.
        let found = netconf::route_interface(PEER_IP).await.unwrap().unwrap();
        assert_eq!(
            (found.interface.as_str(), found.source),
            (TUN, Some(TUN_IP))
        );

        netconf::delete_route(dest, TUN).await.unwrap();
        assert!(route_json("10.98.0.0/16").is_empty());
        netconf::delete_route(dest, TUN)
            .await
            .expect("missing route is fine");
        netconf::delete_route(dest, "cnx9")
            .await
            .expect("missing device is fine");

        // Nothing routes there: the namespace has no default route.
        let none = netconf::route_interface(Ipv4Addr::new(198, 51, 100, 1))
            .await
            .unwrap();
        assert_eq!(none, None);

        let err = netconf::replace_route(dest, "cnx9", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NetconfError::NoSuchInterface { ref interface } if interface == "cnx9"),
            "{err}"
        );
    });
}

#[test]
fn address_changes_fire_on_address_add() {
    in_netns("address_changes_fire_on_address_add", || async {
        let _tun = Tun::create(TUN, TunOptions::default()).unwrap();
        let mut changes = netconf::address_changes().unwrap();
        netconf::configure_interface(TUN, TUN_IP, 24, 1400)
            .await
            .unwrap();
        tokio::time::timeout(WAIT, changes.recv())
            .await
            .expect("a change within the wait")
            .expect("subscription alive");
        // Let the burst settle and drain it, then a lone address add fires again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(Some(())) =
            tokio::time::timeout(Duration::from_millis(50), changes.recv()).await
        {}
        ip(&["addr", "add", "10.97.0.1/32", "dev", TUN]);
        tokio::time::timeout(WAIT, changes.recv())
            .await
            .expect("a change after ip addr add")
            .expect("subscription alive");
    });
}

#[test]
fn tun_is_removed_when_the_last_queue_closes() {
    in_netns("tun_is_removed_when_the_last_queue_closes", || async {
        let tun = configured_tun(TunOptions::default()).await;
        let queue = tun.queue();
        drop(tun);
        assert!(
            sys::interface_index(TUN).unwrap().is_some(),
            "a queue is still open"
        );
        drop(queue);
        let deadline = Instant::now() + WAIT;
        while sys::interface_index(TUN).unwrap().is_some() {
            assert!(Instant::now() < deadline, "TUN still there after {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ifaces = netconf::ipv4_interfaces().await.unwrap();
        assert!(ifaces.iter().all(|i| i.name != TUN), "{ifaces:?}");
        netconf::delete_link(TUN)
            .await
            .expect("missing link is fine");
    });
}

/// A UDP datagram `src:sport → dst:dport` with full IPv4 and UDP checksums.
fn udp_datagram(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12 + total - 20);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&((total - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let c = match checksum(&pseudo) {
        0 => 0xFFFF,
        c => c,
    };
    p[26..28].copy_from_slice(&c.to_be_bytes());
    p
}

/// What the userspace engine does with a flow's UDP datagrams when the device accepted USO:
/// the coalescer merges them into one `GSO_UDP_L4` write, and the kernel hands a UDP socket
/// the original datagrams, in order, byte for byte.
#[test]
fn a_uso_write_reaches_a_socket_as_the_original_datagrams() {
    in_netns(
        "a_uso_write_reaches_a_socket_as_the_original_datagrams",
        || async {
            let tun = configured_tun(TunOptions {
                vnet_hdr: true,
                queues: 1,
            })
            .await;
            let accepted = tun.set_offload(Offload::ALL).expect("TUNSETOFFLOAD");
            if !accepted.contains(Offload::USO4) {
                eprintln!(
                    "skipping: this kernel refused USO ({accepted}); the agent does not merge UDP then"
                );
                return;
            }
            let socket =
                std::net::UdpSocket::bind((TUN_IP, 5555)).expect("binding in the namespace");
            socket.set_read_timeout(Some(WAIT)).unwrap();
            let payloads: Vec<Vec<u8>> = (0..10u8)
                .map(|k| vec![k.wrapping_mul(37); if k == 9 { 40 } else { 100 }])
                .collect();
            let mut bufs: Vec<Vec<u8>> = payloads
                .iter()
                .map(|p| {
                    let mut b = Vec::with_capacity(VNET_HDR_LEN + 65_535);
                    b.resize(VNET_HDR_LEN, 0);
                    b.extend_from_slice(&udp_datagram(PEER_IP, TUN_IP, 4000, 5555, p));
                    b
                })
                .collect();
            let mut to_write = Vec::new();
            let stats = offload::Coalescer::with_udp()
                .coalesce(&mut bufs, VNET_HDR_LEN, &mut to_write)
                .unwrap();
            assert_eq!((to_write.len(), stats.gso_writes), (1, 1), "{stats:?}");
            tun.queues()[0]
                .write(&bufs[to_write[0]])
                .expect("the kernel takes the USO write");
            let mut buf = [0u8; 2048];
            for (k, want) in payloads.iter().enumerate() {
                let (n, from) = socket
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("datagram {k}: {e}"));
                assert_eq!(from, std::net::SocketAddr::from((PEER_IP, 4000)));
                assert_eq!(&buf[..n], &want[..], "datagram {k}");
            }
        },
    );
}
