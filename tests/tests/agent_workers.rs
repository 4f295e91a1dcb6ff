//! The userspace engine's packet workers (issue 15, crypto on every core): two agents on a
//! SEALED network, each with two workers (a two-queue TUN device and a two-socket
//! `SO_REUSEPORT` group on the tunnel port), carry 16 TCP connections at once, and on both
//! hosts more than one worker reads packets from the TUN device (the transmit side of one
//! peer's flows is spread over the workers), counted by `cladnet_userspace_worker_packets`.

use std::time::Duration;

use cladnet_tests::{Mesh, Nat, Topology, metric_sum, require_netns, site};

const UP: Duration = Duration::from_secs(30);
/// Concurrent TCP connections: all on one worker's queue has probability 2^-15.
const FLOWS: u16 = 16;

#[test]
fn several_workers_seal_one_peers_flows() {
    require_netns!();
    let topo = Topology::builder()
        .cloud("gcp", "192.168.1.0/24", Nat::OneToOne)
        .host("gcp", "g1")
        .cloud("azure", "10.0.0.0/24", Nat::OneToOne)
        .host("azure", "z1")
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
        .build()
        .expect("topology");
    let mut mesh = Mesh::start(topo, "ctl", "10.86.0.0/24", &["--encryption", "always"]);
    let flags = [
        "--packet-workers",
        "2",
        "--metrics-listen",
        "127.0.0.1:9412",
    ];
    mesh.start_agent("g1", site("gcp", "vpc-g"), &flags);
    mesh.start_agent("z1", site("azure", "vpc-z"), &flags);
    mesh.wait_mesh(&["g1", "z1"], UP);
    let transfers: Vec<_> = (0..FLOWS)
        .map(|i| mesh.start_transfer("z1", "g1", 5600 + i, 256 * 1024))
        .collect();
    for t in transfers {
        t.finish(&mesh);
    }
    for host in ["z1", "g1"] {
        let metrics = mesh.scrape(host, 9412);
        let tun = |worker: &str| {
            metric_sum(
                &metrics,
                "cladnet_userspace_worker_packets_total",
                &[&format!("worker=\"{worker}\""), "from=\"tun\""],
            )
        };
        let udp = metric_sum(
            &metrics,
            "cladnet_userspace_worker_packets_total",
            &["from=\"udp\""],
        );
        let (w0, w1) = (tun("0"), tun("1"));
        eprintln!("{host}: TUN reads by worker 0: {w0}, worker 1: {w1}; datagrams {udp}");
        assert!(w0 > 0.0 && w1 > 0.0, "{host}: both workers seal\n{metrics}");
        assert!(udp > 0.0, "{host}: datagrams received\n{metrics}");
        assert_eq!(tun("2"), 0.0, "{host}: two workers only\n{metrics}");
    }
}
