//! Proof that the pieces fit: a 3-cloud topology with overlapping private subnets, underlay
//! reachability through NAT, and the agent's eBPF receive program classifying and counting
//! real packets (WireGuard-shaped datagrams pass to the socket, garbage is dropped).

use std::net::Ipv4Addr;

use cladnet_tests::{Host, Nat, Topology, bin_path, leftovers, require_netns};
use serde::Deserialize;

const TUNNEL_PORT: u16 = 8055;
/// Payload of each counted datagram, as a `printf` format: a WireGuard-shaped message (type
/// 4, three zero bytes, 18 more bytes), which the receive program passes to the agent socket.
const PAYLOAD: &str = r"\004\000\000\000counting-probe-wg!";
/// Bytes `printf` writes for [`PAYLOAD`].
const PAYLOAD_LEN: u64 = 4 + 18;
/// A datagram that is neither WireGuard nor CLAD: the receive program drops it.
const GARBAGE: &str = "cladnet-counting-probe";
/// Ethernet + IPv4 + UDP headers around the payload, as XDP on eth0 sees the frame.
const FRAME_LEN: u64 = 14 + 20 + 8 + PAYLOAD_LEN;

#[derive(Debug, Deserialize)]
struct Attached {
    xdp_mode: String,
}

#[derive(Debug, Deserialize)]
struct StatRow {
    slot: String,
    packets: u64,
    bytes: u64,
}

fn three_clouds() -> Topology {
    Topology::builder()
        .cloud("aws", "192.168.1.0/24", Nat::Masquerade)
        .host("aws", "a1")
        .cloud("gcp", "192.168.1.0/24", Nat::OneToOne)
        .host("gcp", "g1")
        .cloud("azure", "10.0.0.0/24", Nat::OneToOne)
        .host("azure", "z1")
        .build()
        .expect("build the 3-cloud topology")
}

fn agent(host: &Host, args: &[&str]) -> String {
    let mut cmd = host.command(bin_path("cladnet-agent").to_str().expect("utf-8 path"));
    cmd.args(["dataplane"]).args(args);
    cladnet_tests::run_checked(&mut cmd).unwrap_or_else(|e| panic!("agent on {}: {e}", host.name()))
}

fn stats(host: &Host, pin_dir: &str) -> Vec<StatRow> {
    serde_json::from_str(&agent(host, &["stats", "--json", "--pin-dir", pin_dir]))
        .expect("stats JSON")
}

fn counter(rows: &[StatRow], slot: &str) -> (u64, u64) {
    let row = rows
        .iter()
        .find(|r| r.slot == slot)
        .unwrap_or_else(|| panic!("no counter {slot}"));
    (row.packets, row.bytes)
}

/// Sends `n` datagrams from `from` to `to:TUNNEL_PORT`, each its own socket, with the
/// payload `printf` writes for `format`.
fn send_datagrams(from: &Host, to: Ipv4Addr, n: u32, format: &str) {
    let script =
        format!("for i in $(seq {n}); do printf '{format}' > /dev/udp/{to}/{TUNNEL_PORT}; done");
    from.exec(["bash", "-c", &script]).expect("send datagrams");
}

/// Installs an nftables counter on `host` for tunnel-port datagrams whose source is `src`.
fn count_arrivals_from(host: &Host, src: Ipv4Addr) {
    let rules = format!(
        "table ip probe {{\n chain input {{\n  type filter hook input priority 0;\n  \
         ip saddr {src} udp dport {TUNNEL_PORT} counter\n }}\n}}\n"
    );
    host.netns().load_nft(&rules).expect("install nft counter");
}

/// The packet count of the counter installed by [`count_arrivals_from`].
fn arrivals_from(host: &Host) -> u64 {
    let out = host
        .exec(["nft", "list", "table", "ip", "probe"])
        .expect("list nft counter");
    let packets = out
        .split("packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next());
    packets
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

#[test]
fn three_clouds_underlay_and_ebpf_counters() {
    require_netns!();
    let mut topo = three_clouds();
    let prefix = topo.prefix().to_owned();
    let (a1, g1, z1) = (topo.host("a1"), topo.host("g1"), topo.host("z1"));

    // Overlapping private space: two hosts in different clouds hold the same address.
    assert_eq!(a1.private_ip(), g1.private_ip());
    assert_eq!(a1.private_ip(), Ipv4Addr::new(192, 168, 1, 10));
    assert_eq!(z1.private_ip(), Ipv4Addr::new(10, 0, 0, 10));

    // Underlay: every host reaches the 1:1-mapped public addresses; private addresses are not
    // routed across the internet.
    for from in [a1, g1, z1] {
        for to in [g1, z1] {
            assert!(
                from.pings(to.public_ip(), 2),
                "{} -> {} ({})",
                from.name(),
                to.name(),
                to.public_ip()
            );
        }
    }
    assert!(
        !z1.pings(a1.private_ip(), 1),
        "a private address must not be reachable from another cloud"
    );
    count_arrivals_from(z1, a1.public_ip());

    let (z1_pins, a1_pins) = (topo.bpf_pin_dir("z1"), topo.bpf_pin_dir("a1"));
    let (z1_pins, a1_pins) = (
        z1_pins.to_str().unwrap().to_owned(),
        a1_pins.to_str().unwrap().to_owned(),
    );
    let (a1, g1, z1) = (topo.host("a1"), topo.host("g1"), topo.host("z1"));
    for (host, pins) in [(z1, &z1_pins), (a1, &a1_pins)] {
        let out = agent(
            host,
            &["attach", "--iface", "eth0", "--json", "--pin-dir", pins],
        );
        let attached: Attached = serde_json::from_str(&out).expect("attach JSON");
        assert_eq!(attached.xdp_mode, "driver", "veth supports native XDP");
        let link = host.exec(["ip", "link", "show", "eth0"]).unwrap();
        assert!(
            link.contains("xdp"),
            "XDP program visible on {}: {link}",
            host.name()
        );
    }

    // a1 (behind masquerade NAT) and g1 (1:1) send to z1's public address; the NAT gateways
    // rewrite addresses, XDP on z1's eth0 sees every datagram and passes the WireGuard-shaped
    // ones on to the socket (where nftables counts a1's).
    let (from_a1, from_g1) = (17, 11);
    send_datagrams(a1, z1.public_ip(), from_a1, PAYLOAD);
    send_datagrams(g1, z1.public_ip(), from_g1, PAYLOAD);
    let total = u64::from(from_a1 + from_g1);
    assert!(
        g1.pings(z1.public_ip(), 3),
        "pings still flow with the programs attached"
    );

    let z1_stats = stats(z1, &z1_pins);
    assert_eq!(
        counter(&z1_stats, "rx_tunnel"),
        (total, total * FRAME_LEN),
        "{z1_stats:?}"
    );
    assert_eq!(
        counter(&z1_stats, "rx_to_socket"),
        (total, total * FRAME_LEN),
        "{z1_stats:?}"
    );
    let a1_stats = stats(a1, &a1_pins);
    assert_eq!(counter(&a1_stats, "rx_tunnel"), (0, 0), "{a1_stats:?}");
    assert!(
        counter(&z1_stats, "rx_other").0 >= 3,
        "pings are counted as other traffic"
    );
    // a1's datagrams arrived from its NAT gateway's public address, not its private one.
    assert_eq!(arrivals_from(z1), u64::from(from_a1));

    // Garbage at the tunnel port is dropped in XDP and counted: nftables never sees it.
    send_datagrams(a1, z1.public_ip(), 5, GARBAGE);
    let z1_stats = stats(z1, &z1_pins);
    assert_eq!(
        counter(&z1_stats, "drop_unknown_message").0,
        5,
        "{z1_stats:?}"
    );
    assert_eq!(counter(&z1_stats, "rx_tunnel").0, total + 5, "{z1_stats:?}");
    assert_eq!(arrivals_from(z1), u64::from(from_a1));

    // Detach removes the programs and pins.
    agent(z1, &["detach", "--pin-dir", &z1_pins]);
    let link = z1.exec(["ip", "link", "show", "eth0"]).unwrap();
    assert!(
        !link.contains("xdp"),
        "XDP still attached after detach: {link}"
    );
    assert!(!std::path::Path::new(&z1_pins).exists());

    // Dropping the topology removes everything, including a1's still-pinned programs.
    drop(topo);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}
