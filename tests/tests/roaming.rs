//! Roaming of an idle host with default settings: its 1:1 public address moves at the gateway
//! (the host cannot see it), and traffic in both directions resumes within a second, for
//! SEALED and PLAIN links on the userspace engine and PLAIN links on the eBPF engine.

use std::{process::Stdio, thread, time::Duration};

use cladnet_tests::{Mesh, Nat, Topology, longest_outage, require_netns, site};

const UP: Duration = Duration::from_secs(30);
/// Ping interval: the outage is measured to this resolution.
const INTERVAL: f64 = 0.05;
/// The outage allowed after a move (issue 10, part 3).
const MAX_OUTAGE: f64 = 1.0;

/// `from` pings `to`'s overlay address every 50 ms for 8 s; `mover`'s public address moves
/// 2 s in. Returns the longest outage and the new address.
fn outage_across_move(mesh: &mut Mesh, from: &str, to: &str, mover: &str) -> (f64, String) {
    let dst = mesh.overlay_ip(to).to_string();
    let mut ping = mesh.topo.host(from).command("ping");
    ping.args(["-n", "-i", "0.05", "-w", "8", "-W", "1", &dst])
        .stdout(Stdio::piped());
    let ping = ping.spawn().expect("ping");
    thread::sleep(Duration::from_secs(2));
    let new = mesh
        .topo
        .move_public_ip(mover)
        .expect("move public address");
    let out = ping.wait_with_output().expect("ping output");
    let out = String::from_utf8_lossy(&out.stdout);
    (longest_outage(&out, INTERVAL), new.to_string())
}

/// Two agents behind 1:1 NAT with default settings; `g1` moves twice: once while `z1` pings
/// it (g1 idle but for its replies), once while g1 pings z1.
fn idle_host_moves(cidr: &str, encryption: &str, agent_flags: &[&str]) {
    let topo = Topology::builder()
        .cloud("gcp", "192.168.1.0/24", Nat::OneToOne)
        .host("gcp", "g1")
        .cloud("azure", "10.0.0.0/24", Nat::OneToOne)
        .host("azure", "z1")
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
        .build()
        .expect("topology");
    let mut mesh = Mesh::start(topo, "ctl", cidr, &["--encryption", encryption]);
    mesh.start_agent("g1", site("gcp", "vpc-g"), agent_flags);
    mesh.start_agent("z1", site("azure", "vpc-z"), agent_flags);
    mesh.wait_mesh(&["g1", "z1"], UP);
    // Quiet for a while: no traffic but keepalives, as an idle host.
    thread::sleep(Duration::from_secs(3));
    for (from, to) in [("z1", "g1"), ("g1", "z1")] {
        let (outage, new) = outage_across_move(&mut mesh, from, to, "g1");
        eprintln!(
            "encryption={encryption} {agent_flags:?}: {from} -> {to}, g1 moved to {new}: \
             longest outage {outage:.2} s"
        );
        assert!(
            outage <= MAX_OUTAGE,
            "encryption={encryption} {agent_flags:?}: {from} -> {to}: outage {outage:.2} s \
             after g1's public address moved (limit {MAX_OUTAGE} s)\n{}",
            mesh.logs()
        );
        let endpoint = mesh.peer("g1").expect("g1")["publicEndpoint"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            endpoint.starts_with(&format!("{new}:")),
            "the controller learnt g1's new endpoint {new}: {endpoint}"
        );
        thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn idle_host_moves_sealed_userspace() {
    require_netns!();
    idle_host_moves("10.91.0.0/24", "always", &["--dataplane", "userspace"]);
}

#[test]
fn idle_host_moves_plain_userspace() {
    require_netns!();
    idle_host_moves("10.92.0.0/24", "never", &["--dataplane", "userspace"]);
}

#[test]
fn idle_host_moves_plain_ebpf() {
    require_netns!();
    idle_host_moves("10.93.0.0/24", "never", &["--dataplane", "ebpf"]);
}
