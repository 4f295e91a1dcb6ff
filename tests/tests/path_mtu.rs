//! Path MTU beyond the first hop (issue 10, part 1): the azure cloud reaches the internet over
//! a 1400-byte link between its NAT gateway and the internet router, while every host's own
//! link carries 1500 (so the agents' underlay MTU, and the overlay MTU of 1440 they derive
//! from it, are too big for any path into azure). Full-size TCP must get through both ways,
//! on PLAIN links of each engine and on SEALED links, whether the routers on the way send
//! ICMP "fragmentation needed" or it is filtered; and a path MTU that drops and comes back
//! during a transfer must never stall it for 2 s.

use std::{
    io::BufRead as _,
    net::Ipv4Addr,
    process::Stdio,
    time::{Duration, Instant},
};

use cladnet_tests::{
    Mesh, Process, bin_path, leftovers, metric_sum, require_netns, site, standard_clouds,
    test_script,
};

const UP: Duration = Duration::from_secs(30);
const TRANSFER: usize = 8 << 20;
/// The mid-path hop's MTU.
const HOP: u32 = 1400;

/// Where a1's agent serves metrics (inside its namespace).
const METRICS: &str = "127.0.0.1:9464";

const PLAIN: &[&str] = &["--encryption", "never"];
const SEALED: &[&str] = &["--encryption", "always"];

/// Controller on ctl; agents on a1 (aws) and z1 (azure, behind the small hop), on `engine`.
fn mesh(cidr: &str, policy: &[&str], engine: &str, hop: Option<u32>, filtered: bool) -> Mesh {
    let topo = standard_clouds(&["a1"]).build().expect("topology");
    if let Some(mtu) = hop {
        topo.set_wan_mtu("azure", mtu).expect("mid-path MTU");
    }
    if filtered {
        topo.filter_frag_needed("azure").expect("ICMP filter");
    }
    let mut mesh = Mesh::start(topo, "ctl", cidr, policy);
    mesh.start_agent(
        "a1",
        site("aws", "vpc-a"),
        &["--dataplane", engine, "--metrics-listen", METRICS],
    );
    mesh.start_agent("z1", site("azure", "vpc-z"), &["--dataplane", engine]);
    mesh.wait_mesh(&["a1", "z1"], UP);
    mesh
}

/// `cladnet-agent status --json` of `host`'s agent.
fn status(mesh: &Mesh, host: &str) -> serde_json::Value {
    let dir = mesh.data_dir(host);
    let out = mesh
        .topo
        .host(host)
        .exec([
            bin_path("cladnet-agent").to_str().unwrap(),
            "status",
            "--json",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("status of {host}: {e}"));
    serde_json::from_str(&out).expect("status JSON")
}

/// (path MTU, route MTU, engine/mode) `from`'s agent shows for the peer whose overlay address is
/// `to`'s.
fn path_mtu(mesh: &Mesh, from: &str, to: &str) -> (Option<u64>, Option<u64>, String) {
    let ip = mesh.overlay_ip(to).to_string();
    let s = status(mesh, from);
    let p = s["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["overlay_ip"] == ip.as_str()).cloned())
        .unwrap_or_else(|| panic!("{from} has no peer {to}: {s}"));
    (
        p["path_mtu"].as_u64(),
        p["route_mtu"].as_u64(),
        format!(
            "{}, {}",
            p["mode"].as_str().unwrap_or_default(),
            p["engine"].as_str().unwrap_or_default()
        ),
    )
}

fn wait_path_mtu(mesh: &Mesh, from: &str, to: &str, want: u64, within: Duration) {
    mesh.wait(&format!("{from} -> {to}: path MTU {want}"), within, |m| {
        path_mtu(m, from, to).0 == Some(want)
    });
}

/// The route MTU of a link kind over a path of `path`.
fn inner(policy: &[&str], path: u32) -> u32 {
    if policy == PLAIN {
        path - 36
    } else {
        (path - 60) & !15
    }
}

fn full_size_tcp_both_ways(cidr: &str, policy: &[&str], engine: &str, filtered: bool) {
    require_netns!();
    let mesh = mesh(cidr, policy, engine, Some(HOP), filtered);
    let prefix = mesh.topo.prefix().to_owned();
    // Full-size TCP right away (the overlay MTU is 1440): verified bytes both ways.
    let secs = mesh.verified_transfer("a1", "z1", 5201, TRANSFER);
    eprintln!("a1 -> z1: {TRANSFER} bytes verified in {secs:.2} s");
    let secs = mesh.verified_transfer("z1", "a1", 5202, TRANSFER);
    eprintln!("z1 -> a1: {TRANSFER} bytes verified in {secs:.2} s");
    // Both ends found the hop, whatever the ICMP filter did.
    for (from, to) in [("a1", "z1"), ("z1", "a1")] {
        wait_path_mtu(&mesh, from, to, u64::from(HOP), Duration::from_secs(10));
        let (_, route, mode) = path_mtu(&mesh, from, to);
        eprintln!("{from} -> {to}: path MTU {HOP}, route MTU {route:?} ({mode})");
        assert_eq!(route, Some(u64::from(inner(policy, HOP))), "{mode}");
        assert!(mode.contains(engine_of(policy, engine)), "{mode}");
    }
    // DF pings: the largest inner packet the path carries gets through; one byte more is
    // refused at once with the path's MTU, never silently lost.
    let h = mesh.topo.host("a1");
    let dst = mesh.overlay_ip("z1").to_string();
    let fits = (inner(policy, HOP) - 28).to_string();
    h.exec([
        "ping", "-n", "-q", "-M", "do", "-c", "3", "-i", "0.2", "-W", "1", "-s", &fits, &dst,
    ])
    .unwrap_or_else(|e| panic!("DF ping of the route MTU: {e}\n{}", mesh.logs()));
    let too_big = (inner(policy, HOP) - 27).to_string();
    let err = h
        .exec([
            "ping", "-n", "-M", "do", "-c", "1", "-W", "1", "-s", &too_big, &dst,
        ])
        .expect_err("a DF ping above the path MTU");
    let mtu = inner(policy, HOP).to_string();
    assert!(
        err.contains(&format!("mtu={mtu}")) || err.contains(&format!("mtu = {mtu}")),
        "{err}"
    );
    // The metric, and the controller (from the agents' statistics reports, every 10 s).
    let metrics = mesh.scrape("a1", 9464);
    assert_eq!(
        metric_sum(&metrics, "cladnet_peer_path_mtu", &[]),
        f64::from(HOP),
        "{metrics}"
    );
    // The path: direct, whatever the engine (PLAIN links are never relayed; a SEALED one
    // between two public endpoints needs no relay).
    assert_eq!(
        metric_sum(&metrics, "cladnet_peer_path", &["path=\"direct\""]),
        1.0,
        "{metrics}"
    );
    let a1 = mesh.peer("a1").expect("a1")["hostId"]
        .as_str()
        .expect("host id")
        .to_owned();
    let z1 = mesh.peer("z1").expect("z1")["hostId"]
        .as_str()
        .expect("host id")
        .to_owned();
    mesh.wait(
        "peer show: a1's link to z1 has path MTU 1400 and goes direct",
        Duration::from_secs(25),
        |m| {
            let shown: serde_json::Value =
                serde_json::from_str(&m.cli(&["--json", "peer", "show", &m.net, &a1]))
                    .expect("peer JSON");
            shown["links"]
                .as_array()
                .and_then(|ls| ls.iter().find(|l| l["hostId"] == z1.as_str()))
                .is_some_and(|l| {
                    l["pathMtu"].as_u64() == Some(u64::from(HOP))
                        && l["path"] == "direct"
                        && l.get("via").is_none()
                })
        },
    );
    let table = mesh.cli(&["peer", "show", &mesh.net, &a1]);
    assert!(table.contains("PATH MTU"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with(z1.as_str()) && l.contains(" direct ")),
        "{table}"
    );
    drop(mesh);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

/// The engine a peer's status names for a link kind (SEALED links are always in userspace).
fn engine_of<'a>(policy: &[&str], engine: &'a str) -> &'a str {
    if policy == PLAIN { engine } else { "userspace" }
}

#[test]
fn plain_userspace_mid_path_hop() {
    full_size_tcp_both_ways("10.81.0.0/24", PLAIN, "userspace", false);
}

#[test]
fn plain_userspace_mid_path_hop_icmp_filtered() {
    full_size_tcp_both_ways("10.81.1.0/24", PLAIN, "userspace", true);
}

#[test]
fn plain_ebpf_mid_path_hop() {
    full_size_tcp_both_ways("10.81.2.0/24", PLAIN, "ebpf", false);
}

#[test]
fn plain_ebpf_mid_path_hop_icmp_filtered() {
    full_size_tcp_both_ways("10.81.3.0/24", PLAIN, "ebpf", true);
}

#[test]
fn sealed_mid_path_hop() {
    full_size_tcp_both_ways("10.81.4.0/24", SEALED, "userspace", false);
}

#[test]
fn sealed_mid_path_hop_icmp_filtered() {
    full_size_tcp_both_ways("10.81.5.0/24", SEALED, "userspace", true);
}

/// How long the mid-transfer stream runs.
const STREAM: Duration = Duration::from_secs(32);

/// A stream a1 -> z1 over a path whose MTU drops to 1400 (ICMP filtered) after 4 s and comes
/// back to 1500 after 12 s: the longest gap between two reads stays under 2 s, and the path
/// MTU shown follows both changes.
fn follows_changes_mid_transfer(cidr: &str, policy: &[&str], engine: &str) {
    require_netns!();
    let mesh = mesh(cidr, policy, engine, None, true);
    let prefix = mesh.topo.prefix().to_owned();
    wait_path_mtu(&mesh, "a1", "z1", 1500, Duration::from_secs(10));
    let script = test_script("tcp_stall.py");
    let dst: Ipv4Addr = mesh.overlay_ip("z1");
    let mut server = mesh.topo.host("z1").command("python3");
    server
        .arg(&script)
        .args(["server", "5301"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Process::spawn(&mut server).expect("server");
    let mut out = std::io::BufReader::new(server.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("server ready");
    assert_eq!(line.trim(), "listening");
    let mut client = mesh.topo.host("a1").command("python3");
    client
        .arg(&script)
        .args([
            "client",
            &dst.to_string(),
            "5301",
            &STREAM.as_secs().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut client = Process::spawn(&mut client).expect("client");
    let at = |t: u64| {
        let until = start + Duration::from_secs(t);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    };
    at(4);
    mesh.topo.set_wan_mtu("azure", HOP).expect("lower the hop");
    eprintln!("t=4: mid-path hop lowered to {HOP}");
    at(11);
    let low = path_mtu(&mesh, "a1", "z1");
    eprintln!("t=11: a1 -> z1 {low:?}");
    at(12);
    mesh.topo.set_wan_mtu("azure", 1500).expect("raise the hop");
    eprintln!("t=12: mid-path hop back to 1500");
    let mut sent = String::new();
    std::io::Read::read_to_string(&mut client.0.stdout.take().expect("stdout"), &mut sent)
        .expect("client output");
    let _ = client.0.wait();
    let sent = sent.trim().to_owned();
    line.clear();
    out.read_line(&mut line).expect("server result");
    let mut fields = line.split_whitespace();
    let received: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let gap: f64 = fields
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::MAX);
    let high = path_mtu(&mesh, "a1", "z1");
    eprintln!(
        "stream: sent {sent} B, received {received} B, longest gap {gap:.3} s; path MTU at the end {high:?}"
    );
    assert_eq!(sent, received.to_string(), "{}", mesh.logs());
    assert_eq!(low.0, Some(u64::from(HOP)), "path MTU after the drop");
    assert_eq!(high.0, Some(1500), "path MTU after the rise");
    assert!(
        gap < 2.0,
        "the stream stalled for {gap:.3} s\n{}",
        mesh.logs()
    );
    drop(mesh);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn plain_userspace_follows_changes_mid_transfer() {
    follows_changes_mid_transfer("10.81.6.0/24", PLAIN, "userspace");
}

#[test]
fn plain_ebpf_follows_changes_mid_transfer() {
    follows_changes_mid_transfer("10.81.7.0/24", PLAIN, "ebpf");
}

#[test]
fn sealed_follows_changes_mid_transfer() {
    follows_changes_mid_transfer("10.81.8.0/24", SEALED, "userspace");
}
