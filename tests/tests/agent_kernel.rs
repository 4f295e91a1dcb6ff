//! The kernel (eBPF) dataplane in full agents: a mixed fleet (eBPF and userspace engines on
//! one network exchange identical PLAIN bytes), a TCP stream that survives an agent crash and
//! restart (pinned programs keep forwarding), full-size TCP at underlay MTU 1400, and a removed
//! peer whose traffic stops.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use cladnet_tests::{Mesh, Process, metric_sum, require_netns, site, standard_clouds};

const UP: Duration = Duration::from_secs(30);
const METRICS: [&str; 2] = ["--metrics-listen", "127.0.0.1:9412"];

fn dataplane(mesh: &Mesh, host: &str) -> String {
    mesh.peer(host).expect("peer")["dataplane"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Sum of `metric` over the lines of the agent's /metrics (127.0.0.1:9412 in `host`) whose
/// labels contain every one of `labels`.
fn metric(mesh: &Mesh, host: &str, metric: &str, labels: &[&str]) -> u64 {
    metric_sum(&mesh.scrape(host, 9412), metric, labels) as u64
}

/// An iperf3 run from `from` to `to`'s overlay address: (server, client) still running.
fn start_iperf(mesh: &Mesh, from: &str, to: &str, secs: u32) -> (Process, Child) {
    let dst = mesh.overlay_ip(to);
    let mut server = mesh.topo.host(to).command("iperf3");
    server.args(["-s", "-1"]).stdout(Stdio::null());
    let server = Process::spawn(&mut server).expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let mut client = mesh.topo.host(from).command("iperf3");
    client
        .args(["-c", &dst.to_string(), "-t", &secs.to_string(), "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    (server, client.spawn().expect("iperf3 client"))
}

/// Waits for the client; returns (Gbit/s, retransmits).
fn finish_iperf(mesh: &Mesh, client: Child) -> (f64, u64) {
    let out = client.wait_with_output().expect("iperf3 output");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && json["error"].is_null(),
        "iperf3 failed: {}\n{}",
        json["error"],
        mesh.logs()
    );
    let sent = &json["end"]["sum_sent"];
    (
        sent["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        sent["retransmits"].as_u64().unwrap_or(0),
    )
}

/// Three clouds, PLAIN links everywhere (`encryption = never`), a1 and g1 on the eBPF engine and
/// z1 on `z1_engine`: every pair moves verified bytes, and a1's kernel counters saw them.
fn plain_fleet(cidr: &str, z1_engine: &str) {
    let mut mesh = Mesh::start(
        standard_clouds(&["a1"])
            .mtu(1500)
            .build()
            .expect("topology"),
        "ctl",
        cidr,
        &["--encryption", "never"],
    );
    let hosts = ["a1", "g1", "z1"];
    let ebpf = ["--dataplane", "ebpf", METRICS[0], METRICS[1]];
    mesh.start_agent("a1", site("aws", "vpc-a"), &ebpf);
    mesh.start_agent("g1", site("gcp", "vpc-g"), &ebpf);
    mesh.start_agent("z1", site("azure", "vpc-z"), &["--dataplane", z1_engine]);
    mesh.wait_mesh(&hosts, UP);
    assert_eq!(dataplane(&mesh, "a1"), "ebpf");
    assert_eq!(dataplane(&mesh, "g1"), "ebpf");
    assert_eq!(dataplane(&mesh, "z1"), z1_engine);
    let mut port = 5600;
    for from in hosts {
        for to in hosts.iter().filter(|t| **t != from) {
            port += 1;
            mesh.verified_transfer(from, to, port, 2 << 20);
        }
    }
    // The kernel carried a1's PLAIN links, to the eBPF peer and to z1 alike: its per-CPU
    // counters saw both transfers' bytes.
    for peer in ["g1", "z1"] {
        let overlay = format!("overlay_ip=\"{}\"", mesh.overlay_ip(peer));
        let labels = [overlay.as_str(), "engine=\"ebpf\""];
        let sent = metric(&mesh, "a1", "cladnet_peer_tx_bytes_total", &labels);
        let received = metric(&mesh, "a1", "cladnet_peer_rx_bytes_total", &labels);
        assert!(
            sent >= 2 << 20,
            "a1 -> {peer}: {sent} bytes counted by the kernel"
        );
        assert!(
            received >= 2 << 20,
            "{peer} -> a1: {received} bytes counted by the kernel"
        );
    }
}

#[test]
fn every_host_on_the_kernel_path_moves_verified_bytes() {
    require_netns!();
    plain_fleet("10.87.0.0/24", "ebpf");
}

#[test]
fn mixed_fleet_ebpf_and_userspace_exchange_plain_packets() {
    require_netns!();
    plain_fleet("10.84.0.0/24", "userspace");
}

#[test]
fn tcp_stream_survives_an_agent_crash_and_restart_on_the_kernel_path() {
    require_netns!();
    let mut mesh = Mesh::start(
        standard_clouds(&["a1"])
            .mtu(1500)
            .build()
            .expect("topology"),
        "ctl",
        "10.85.0.0/24",
        &["--encryption", "never"],
    );
    let ebpf = ["--dataplane", "ebpf"];
    mesh.start_agent("a1", site("aws", "vpc-a"), &ebpf);
    mesh.start_agent("g1", site("gcp", "vpc-g"), &ebpf);
    mesh.wait_mesh(&["a1", "g1"], UP);
    // a1 streams to g1 for 8 s; 2 s in, g1's agent is killed (no goodbye) and started again.
    // Its pinned XDP program keeps receiving; its replies (ACKs) resume as soon as the new
    // agent has its TUN and has taken over the pinned programs.
    let (_server, client) = start_iperf(&mesh, "a1", "g1", 8);
    std::thread::sleep(Duration::from_secs(2));
    mesh.signal_agent("g1", "KILL");
    mesh.start_agent("g1", site("gcp", "vpc-g"), &ebpf);
    let (gbps, retransmits) = finish_iperf(&mesh, client);
    eprintln!("across the restart: {gbps:.2} Gbit/s, {retransmits} retransmits");
    assert!(gbps > 0.05, "the stream survived: {gbps:.2} Gbit/s");
    mesh.wait_mesh(&["a1", "g1"], UP);
}

#[test]
fn full_size_tcp_at_underlay_mtu_1400_and_removed_peers_stop() {
    require_netns!();
    let mut mesh = Mesh::start(
        standard_clouds(&["a1"])
            .mtu(1400)
            .build()
            .expect("topology"),
        "ctl",
        "10.86.0.0/24",
        &["--encryption", "never"],
    );
    let ebpf = ["--dataplane", "ebpf", METRICS[0], METRICS[1]];
    mesh.start_agent("a1", site("aws", "vpc-a"), &ebpf);
    mesh.start_agent("g1", site("gcp", "vpc-g"), &ebpf);
    mesh.start_agent("z1", site("azure", "vpc-z"), &ebpf);
    mesh.wait_mesh(&["a1", "g1", "z1"], UP);
    // Full-size segments (MSS from the overlay MTU 1328) fit the 1400-byte underlay after
    // encapsulation: no oversize drops, and the stream moves.
    let (_server, client) = start_iperf(&mesh, "z1", "g1", 3);
    let (gbps, retransmits) = finish_iperf(&mesh, client);
    eprintln!("MTU 1400: {gbps:.2} Gbit/s, {retransmits} retransmits");
    assert!(gbps > 0.1, "{gbps:.2} Gbit/s");
    let oversize = metric(&mesh, "z1", "cladnet_drops_total", &["reason=\"oversize\""]);
    assert_eq!(oversize, 0, "no packet too large for the underlay");
    mesh.verified_transfer("g1", "z1", 5701, 2 << 20);

    // A deleted peer is withdrawn from every agent's maps: its traffic stops.
    let g1_ip = mesh.overlay_ip("g1");
    let g1_id = mesh.peer("g1").unwrap()["hostId"]
        .as_str()
        .unwrap()
        .to_owned();
    mesh.signal_agent("g1", "KILL");
    mesh.cli(&["peer", "delete", "mesh", &g1_id]);
    mesh.wait("g1 withdrawn from z1", UP, |m| {
        metric(m, "z1", "cladnet_peers", &[]) == 1
    });
    assert!(
        !mesh.topo.host("z1").pings(g1_ip, 1),
        "no route to a deleted peer"
    );
    assert!(mesh.topo.host("z1").pings(mesh.overlay_ip("a1"), 1));
}
