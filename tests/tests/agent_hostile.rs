//! Hostile traffic at an agent's tunnel port: malformed, truncated, forged, replayed and
//! spoofed datagrams are dropped, counted by reason in the agent's metrics, and nothing else
//! happens: the agent keeps running and its links keep working.

use std::{collections::BTreeMap, net::Ipv4Addr, process::Stdio, time::Duration};

use cladnet_tests::{Mesh, Nat, Process, SiteLabels, Topology, require_netns, test_script};

const UP: Duration = Duration::from_secs(30);

/// An inner IPv4/UDP packet from `src` to `dst` (version nibble `version`).
fn inner(src: Ipv4Addr, dst: Ipv4Addr, version: u8) -> Vec<u8> {
    let mut p = vec![version << 4 | 5, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x1f, 0x90, 0x1f, 0x90, 0, 12, 0, 0, b'e', b'v', b'i', b'l']);
    p
}

/// A DATA_PLAIN datagram claiming to come from node `index`.
fn plain(index: u32, inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0x11, 0, 0, 0];
    d.extend_from_slice(&index.to_be_bytes());
    d.extend_from_slice(inner);
    d
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The drop counters of the agent listening for metrics on 127.0.0.1:9412 in `host`.
fn drops(mesh: &Mesh, host: &str) -> BTreeMap<String, u64> {
    let text = mesh.scrape(host, 9412);
    // Summed over engines: PLAIN datagrams are judged by the XDP program when the kernel path
    // is attached, WireGuard ones by the userspace engine; both use the same reason names.
    let mut out = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("cladnet_drops_total{"))
    {
        let reason = l
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let value = l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok());
        if let (Some(reason), Some(value)) = (reason, value) {
            *out.entry(reason.to_owned()).or_default() += value;
        }
    }
    out
}

#[test]
fn hostile_datagrams_are_dropped_and_counted() {
    require_netns!();
    let topo = Topology::builder()
        .cloud("aws", "192.168.1.0/24", Nat::Masquerade)
        .host("aws", "a1")
        .host("aws", "a2")
        .cloud("gcp", "192.168.1.0/24", Nat::OneToOne)
        .host("gcp", "g1")
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
        .build()
        .expect("topology");
    let mut mesh = Mesh::start(
        topo,
        "ctl",
        "10.81.0.0/24",
        &[
            "--encryption",
            "inter-site",
            "--rule-type",
            "cost-prioritized",
        ],
    );
    let aws = SiteLabels {
        provider: "aws",
        vpc: "vpc-a",
    };
    mesh.start_agent("a1", aws, &[]);
    mesh.start_agent("a2", aws, &["--metrics-listen", "127.0.0.1:9412"]);
    mesh.start_agent(
        "g1",
        SiteLabels {
            provider: "gcp",
            vpc: "vpc-g",
        },
        &[],
    );
    mesh.wait_mesh(&["a1", "a2", "g1"], UP);
    let (a1_ip, a2_ip, g1_ip) = (
        mesh.overlay_ip("a1"),
        mesh.overlay_ip("a2"),
        mesh.overlay_ip("g1"),
    );
    let ctl_public = mesh.topo.host("ctl").public_ip().to_string();
    let a1_index = u32::from(a1_ip);
    let (a1, a2, g1) = (
        mesh.topo.host("a1"),
        mesh.topo.host("a2"),
        mesh.topo.host("g1"),
    );
    let (a1_priv, a2_priv) = (a1.private_ip().to_string(), a2.private_ip().to_string());
    let before = drops(&mesh, "a2");

    let attack = |src: &str, sport: u16, payload: &[u8]| {
        a1.exec([
            "python3",
            test_script("attack.py").to_str().unwrap(),
            "raw",
            src,
            &sport.to_string(),
            &a2_priv,
            "8055",
            &hex(payload),
        ])
        .expect("send attack datagram");
    };
    let good = inner(a1_ip, a2_ip, 4);
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    let mut expect = |reason| *expected.entry(reason).or_default() += 1;
    // Neither WireGuard nor CLAD.
    attack(&a1_priv, 4444, &[0xff; 32]);
    expect("unknown_message");
    // A CLAD header cut short.
    attack(&a1_priv, 8055, &[0x11, 0, 0, 0, 0]);
    expect("plain_truncated");
    // Well-formed PLAIN, but from an address that is no peer's (another port of a peer's own
    // address would be taken as that peer's NAT mapping; see docs/agent.md).
    attack("192.168.1.99", 8055, &plain(a1_index, &good));
    expect("plain_unknown_peer");
    // From a1's endpoint, claiming another node id.
    attack(&a1_priv, 8055, &plain(a1_index ^ 0x55, &good));
    expect("plain_wrong_node");
    // From a1's endpoint and id, with an inner source that is not a1's (spoofing).
    attack(
        &a1_priv,
        8055,
        &plain(a1_index, &inner(Ipv4Addr::new(10, 81, 0, 99), a2_ip, 4)),
    );
    expect("plain_spoofed_source");
    // An inner packet that is not IPv4.
    attack(&a1_priv, 8055, &plain(a1_index, &inner(a1_ip, a2_ip, 6)));
    expect("plain_bad_inner");
    // A valid PLAIN datagram from a1 whose inner packet is for another node (or a host on
    // a2's underlay): a2 is no relay.
    for dst in [g1_ip, Ipv4Addr::new(192, 168, 1, 1)] {
        attack(&a1_priv, 8055, &plain(a1_index, &inner(a1_ip, dst, 4)));
        expect("plain_wrong_destination");
    }
    // Forged reflector answers claiming a2 is at 203.0.113.66:6666: from the reflector's own
    // address with a nonce no probe of a2 carries, and from elsewhere.
    let mut forged = b"CLADRFL1".to_vec();
    forged.extend_from_slice(&0x5eed_u64.to_be_bytes());
    forged.extend_from_slice(&[203, 0, 113, 66, 0x1a, 0x0a]);
    attack(&ctl_public, 8053, &forged);
    expect("reflector_unsolicited");
    attack(&a1_priv, 8053, &forged);
    expect("reflector_unsolicited");
    // WireGuard transport data for a session that does not exist.
    let mut transport = vec![4, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    transport.extend_from_slice(&[0; 8 + 32]);
    attack(&a1_priv, 4444, &transport);
    expect("wg_invalid");
    // A handshake initiation with garbage (mac1 does not verify).
    let mut initiation = vec![1, 0, 0, 0];
    initiation.extend((0..144).map(|i| i as u8));
    attack(&a1_priv, 4444, &initiation);
    expect("wg_invalid");

    // Replay and forgery of a real sealed message: capture one g1 -> a2 data message on a2's
    // interface while g1 pings a2, then send it again as is and with its tag flipped, from
    // g1's address as a2 sees it.
    let g1_public = g1.public_ip().to_string();
    let mut capture = a2.command("python3");
    capture
        .arg(test_script("attack.py"))
        .args(["capture", "eth0", &g1_public, "8055"])
        .stdout(Stdio::piped());
    let capture = Process::spawn(&mut capture).expect("capture");
    std::thread::sleep(Duration::from_millis(300));
    assert!(g1.pings(a2_ip, 2), "g1 reaches a2");
    let mut capture = capture;
    let status = capture.0.wait().expect("capture ends");
    assert!(status.success(), "captured a sealed message");
    let mut line = String::new();
    std::io::Read::read_to_string(capture.0.stdout.as_mut().unwrap(), &mut line).unwrap();
    let (sport, payload) = line.trim().split_once(' ').expect("SPORT HEX");
    let mut sealed: Vec<u8> = (0..payload.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&payload[i..i + 2], 16).unwrap())
        .collect();
    let sport: u16 = sport.parse().unwrap();
    attack(&g1_public, sport, &sealed);
    expect("wg_replay");
    let last = sealed.len() - 1;
    sealed[last] ^= 0x80;
    // A forged message with a fresh counter: the tag check, not the replay window, rejects it.
    sealed[8..16].copy_from_slice(&(u64::MAX >> 2).to_le_bytes());
    attack(&g1_public, sport, &sealed);
    expect("wg_decrypt_failed");

    let mut after = BTreeMap::new();
    for _ in 0..20 {
        after = drops(&mesh, "a2");
        let done = expected.iter().all(|(r, n)| {
            after.get(*r).copied().unwrap_or(0) >= before.get(*r).copied().unwrap_or(0) + n
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Outbound reasons (IPv6 router solicitations the kernel sends on the TUN device count as
    // not_ipv4) are not this test's business.
    let outbound = [
        "not_ipv4",
        "no_route",
        "no_endpoint",
        "bad_tun_packet",
        "oversize",
        "encap_failed",
    ];
    for (reason, n) in after
        .iter()
        .filter(|(r, _)| !outbound.contains(&r.as_str()))
    {
        let delta = n - before.get(reason).copied().unwrap_or(0);
        assert_eq!(
            delta,
            expected.get(reason.as_str()).copied().unwrap_or(0),
            "drops for {reason}: before {before:?}, after {after:?}"
        );
    }
    for reason in expected.keys() {
        assert!(after.contains_key(*reason), "metric for {reason} exported");
    }
    let endpoint = mesh.peer("a2").expect("a2")["publicEndpoint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !endpoint.starts_with("203.0.113.66"),
        "a forged reflector answer moved a2: {endpoint}"
    );

    // Someone sharing a1's address flaps a1's port at a2: the first datagram moves a1 (a
    // NAT port change looks the same), the next 50 within the second are dropped and
    // counted, and a1's own traffic takes its port back a second later.
    let limited =
        |d: &BTreeMap<String, u64>| d.get("plain_port_change_limited").copied().unwrap_or(0);
    let flap_before = limited(&drops(&mesh, "a2"));
    a1.exec([
        "python3",
        test_script("attack.py").to_str().unwrap(),
        "raw",
        &a1_priv,
        "40000",
        &a2_priv,
        "8055",
        &hex(&plain(a1_index, &good)),
        "51",
    ])
    .expect("send the port flap");
    let mut flapped = 0;
    for _ in 0..20 {
        flapped = limited(&drops(&mesh, "a2")) - flap_before;
        if flapped >= 50 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // a1's own keepalive probe may fall into the same second (one more).
    assert!(
        (50..=51).contains(&flapped),
        "port changes within a second dropped: {flapped} of 50"
    );
    std::thread::sleep(Duration::from_millis(1100));
    // Nothing crashed, nothing stopped working.
    assert!(mesh.topo.host("a1").pings(a2_ip, 2), "a1 -> a2 still works");
    assert!(mesh.topo.host("g1").pings(a2_ip, 2), "g1 -> a2 still works");
}
