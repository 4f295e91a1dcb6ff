//! Routed prefixes end to end (issue 14): pod namespaces behind real agents, a real controller,
//! each host advertising its podCIDR. Pods reach pods across clouds with their own addresses
//! (no NAT, no second encapsulation): PLAIN in the kernel (eBPF) inside a VPC, SEALED in the
//! userspace engine across clouds. A pod source outside its node's approved prefixes is
//! dropped and counted by both engines; a pending prefix is not routed; a rejected or
//! withdrawn one stops being routed within about a second. A subnet router makes a VM without
//! an agent reachable from another cloud.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use cladnet_tests::{
    Mesh, Nat, Pod, Topology, metric_sum, pod_network, require_netns, site, standard_clouds,
    verified_tcp,
};

const UP: Duration = Duration::from_secs(30);
const METRICS: &str = "127.0.0.1:9412";

/// The podCIDR of host number `n`: 10.244.n.0/24, gateway .1.
fn pod_cidr(n: u8) -> String {
    format!("10.244.{n}.0/24")
}

/// Bridges `host`'s pod network 10.244.n.0/24 and one pod at 10.244.n.2 with the overlay MTU.
fn pod(mesh: &Mesh, host: &str, n: u8) -> Pod {
    let gw = Ipv4Addr::new(10, 244, n, 1);
    pod_network(&mesh.topo, host, gw, 24).expect("pod network");
    let mtu = overlay_mtu(mesh, host);
    Pod::attach(
        &mesh.topo,
        host,
        &format!("{host}p"),
        Ipv4Addr::new(10, 244, n, 2),
        24,
        gw,
        mtu,
    )
    .expect("pod")
}

/// The MTU of `host`'s overlay device.
fn overlay_mtu(mesh: &Mesh, host: &str) -> u32 {
    // `ip`, not /sys: sysfs shows the test's own namespace.
    let out = mesh
        .topo
        .host(host)
        .exec(["ip", "-o", "link", "show", "cladnet0"])
        .expect("overlay device");
    out.split(" mtu ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no MTU in {out}"))
}

/// The kernel route to `prefix` on `host`, if any.
fn kernel_route(mesh: &Mesh, host: &str, prefix: &str) -> String {
    mesh.topo
        .host(host)
        .exec(["ip", "-4", "route", "show", prefix])
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn host_id(mesh: &Mesh, host: &str) -> String {
    mesh.peer(host).expect("listed")["hostId"]
        .as_str()
        .expect("host id")
        .to_owned()
}

fn drops(mesh: &Mesh, host: &str, engine: &str, reason: &str) -> f64 {
    metric_sum(
        &mesh.scrape(host, 9412),
        "cladnet_drops_total",
        &[
            &format!("engine=\"{engine}\""),
            &format!("reason=\"{reason}\""),
        ],
    )
}

#[test]
fn pods_reach_pods_across_clouds_on_both_engines() {
    require_netns!();
    let topo = standard_clouds(&["a1", "a2"]).build().expect("topology");
    let mut mesh = Mesh::start(
        topo,
        "ctl",
        "10.86.0.0/24",
        &[
            "--encryption",
            "inter-site",
            "--rule-type",
            "cost-prioritized",
        ],
    );
    // Every agent starts at once, each advertising its podCIDR (approval: auto).
    for (host, site, n) in [
        ("a1", site("aws", "vpc-a"), 1),
        ("a2", site("aws", "vpc-a"), 2),
        ("g1", site("gcp", "vpc-g"), 3),
    ] {
        let cidr = pod_cidr(n);
        mesh.start_agent(
            host,
            site,
            &["--advertise-routes", &cidr, "--metrics-listen", METRICS],
        );
    }
    mesh.wait_mesh(&["a1", "a2", "g1"], UP);
    let (p1, p2, p3) = (
        pod(&mesh, "a1", 1),
        pod(&mesh, "a2", 2),
        pod(&mesh, "g1", 3),
    );
    for h in ["a1", "a2"] {
        assert_eq!(
            metric_sum(
                &mesh.scrape(h, 9412),
                "cladnet_agent_info",
                &["engine=\"ebpf\""]
            ),
            1.0,
            "{h} carries PLAIN links in the kernel"
        );
    }
    let start = Instant::now();
    for (from, to, what) in [
        (&p1, &p2, "a1 pod -> a2 pod (PLAIN, eBPF)"),
        (&p2, &p1, "a2 pod -> a1 pod (PLAIN, eBPF)"),
        (&p1, &p3, "a1 pod -> g1 pod (SEALED)"),
        (&p3, &p2, "g1 pod -> a2 pod (SEALED)"),
    ] {
        mesh.wait(what, UP, |_| from.pings(to.ip(), 1));
    }
    println!("pods reach each other {:?} after the mesh", start.elapsed());

    // Full-size TCP, verified byte for byte, on both engines.
    let bytes = 8 << 20;
    let plain = p1.transfer(&p2, 5201, bytes).expect("a1 pod -> a2 pod");
    let sealed = p1.transfer(&p3, 5202, bytes).expect("a1 pod -> g1 pod");
    println!("8 MiB pod to pod: PLAIN {plain:.2} s, SEALED {sealed:.2} s");
    // The kernel carried the PLAIN one: a2's eBPF counters for a1 hold the transfer.
    let a2_ebpf_rx = metric_sum(
        &mesh.scrape("a2", 9412),
        "cladnet_peer_rx_bytes_total",
        &["engine=\"ebpf\""],
    );
    assert!(a2_ebpf_rx >= bytes as f64, "a2 eBPF rx bytes {a2_ebpf_rx}");
    // The receiver sees the real pod address (no NAT on the way).
    for to in [&p2, &p3] {
        let seen = p1
            .udp_source_seen(p1.ip(), to, 7001, Duration::from_secs(5))
            .expect("udp");
        assert_eq!(seen, Some(p1.ip()));
    }

    // Spoofing: a1's pod sends from sources a1 does not own (nobody's, a2's pods). The host
    // forwards them; the receivers drop and count them: a2 in the kernel (PLAIN), g1 in the
    // userspace engine (SEALED, WireGuard AllowedIPs).
    let (kernel_before, wg_before) = (
        drops(&mesh, "a2", "ebpf", "plain_spoofed_source"),
        drops(&mesh, "g1", "userspace", "wg_spoofed_source"),
    );
    let spoofed = [Ipv4Addr::new(10, 244, 9, 5), Ipv4Addr::new(10, 244, 2, 77)];
    for src in spoofed {
        p1.netns()
            .exec(["ip", "addr", "add", &format!("{src}/32"), "dev", "eth0"])
            .expect("extra pod address");
    }
    for (src, to) in spoofed.iter().flat_map(|s| [(s, &p2), (s, &p3)]) {
        let seen = p1
            .udp_source_seen(*src, to, 7002, Duration::from_secs(2))
            .expect("udp");
        assert_eq!(seen, None, "{src} -> {} delivered", to.ip());
    }
    mesh.wait("spoofs counted", Duration::from_secs(5), |m| {
        drops(m, "a2", "ebpf", "plain_spoofed_source") >= kernel_before + 2.0
            && drops(m, "g1", "userspace", "wg_spoofed_source") >= wg_before + 2.0
    });
    // The pod's own address still gets through after the spoofs.
    assert!(p1.pings(p3.ip(), 2));

    // Pod prefixes carry their peer's route MTU from path MTU discovery, as the peer's own
    // /32 does, so pod traffic fits the path too.
    let g1 = mesh.overlay_ip("g1").to_string();
    mesh.wait("a1's route to g1's pods carries g1's route MTU", UP, |m| {
        let (peer, pods) = (
            kernel_route(m, "a1", &g1),
            kernel_route(m, "a1", &pod_cidr(3)),
        );
        route_mtu(&peer).is_some() && route_mtu(&peer) == route_mtu(&pods)
    });
}

/// The `mtu` of a route as `ip route show` prints it.
fn route_mtu(route: &str) -> Option<u32> {
    route.split(" mtu ").nth(1)?.split(' ').next()?.parse().ok()
}

/// PLAIN links on the userspace engine (`--dataplane userspace`): the forwarding snapshot
/// routes pod traffic by prefix, and the receive check drops and counts a pod source the
/// sender does not own.
#[test]
fn pods_on_the_userspace_plain_engine() {
    require_netns!();
    let topo = standard_clouds(&["a1", "a2"]).build().expect("topology");
    let mut mesh = Mesh::start(
        topo,
        "ctl",
        "10.89.0.0/24",
        &["--encryption", "never", "--rule-type", "cost-prioritized"],
    );
    for (host, n) in [("a1", 1), ("a2", 2)] {
        let cidr = pod_cidr(n);
        mesh.start_agent(
            host,
            site("aws", "vpc-a"),
            &[
                "--advertise-routes",
                &cidr,
                "--dataplane",
                "userspace",
                "--metrics-listen",
                METRICS,
            ],
        );
    }
    mesh.wait_mesh(&["a1", "a2"], UP);
    let (p1, p2) = (pod(&mesh, "a1", 1), pod(&mesh, "a2", 2));
    mesh.wait("a1 pod -> a2 pod", UP, |_| p1.pings(p2.ip(), 1));
    let secs = p1.transfer(&p2, 5204, 8 << 20).expect("a1 pod -> a2 pod");
    println!("8 MiB pod to pod, PLAIN userspace: {secs:.2} s");
    let before = drops(&mesh, "a2", "userspace", "plain_spoofed_source");
    let spoofed = Ipv4Addr::new(10, 244, 9, 5);
    p1.netns()
        .exec(["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"])
        .expect("extra pod address");
    let seen = p1
        .udp_source_seen(spoofed, &p2, 7003, Duration::from_secs(2))
        .expect("udp");
    assert_eq!(seen, None, "a spoofed pod source was delivered");
    mesh.wait("the spoof counted", Duration::from_secs(5), |m| {
        drops(m, "a2", "userspace", "plain_spoofed_source") > before
    });
}

#[test]
fn pending_prefixes_wait_and_withdrawn_ones_stop_within_a_second() {
    require_netns!();
    let topo = standard_clouds(&["a1"]).build().expect("topology");
    let mut mesh = Mesh::start(topo, "ctl", "10.87.0.0/24", &["--route-approval", "manual"]);
    let (c1, c3) = (pod_cidr(1), pod_cidr(3));
    mesh.start_agent("a1", site("aws", "vpc-a"), &["--advertise-routes", &c1]);
    mesh.start_agent("g1", site("gcp", "vpc-g"), &["--advertise-routes", &c3]);
    mesh.wait_mesh(&["a1", "g1"], UP);
    let (p1, p3) = (pod(&mesh, "a1", 1), pod(&mesh, "g1", 3));
    let (a1, g1) = (host_id(&mesh, "a1"), host_id(&mesh, "g1"));

    // Pending: reported, not routed.
    mesh.wait("both prefixes pending", UP, |m| {
        let out = m.cli(&["--json", "route", "list", &m.net]);
        out.matches("\"pending\"").count() == 2
    });
    assert!(!p1.pings(p3.ip(), 2), "a pending prefix is not routed");
    assert_eq!(kernel_route(&mesh, "a1", &c3), "");
    assert_eq!(kernel_route(&mesh, "g1", &c1), "");

    mesh.cli(&["route", "approve", &mesh.net, &a1, &c1]);
    mesh.cli(&["route", "approve", &mesh.net, &g1, &c3]);
    mesh.wait("pods reach each other once approved", UP, |_| {
        p1.pings(p3.ip(), 1) && p3.pings(p1.ip(), 1)
    });
    assert!(
        kernel_route(&mesh, "g1", &c1).contains("dev cladnet0"),
        "{}",
        kernel_route(&mesh, "g1", &c1)
    );

    // The operator rejects a1's prefix: g1 stops routing it.
    let start = Instant::now();
    mesh.cli(&["route", "reject", &mesh.net, &a1, &c1]);
    mesh.wait("g1 withdraws a1's prefix", Duration::from_secs(5), |m| {
        kernel_route(m, "g1", &c1).is_empty()
    });
    let rejected = start.elapsed();
    assert!(!p3.pings(p1.ip(), 2), "a rejected prefix is not routed");
    assert!(
        !p1.pings(p3.ip(), 2),
        "nor are its pods' packets accepted as a1's"
    );

    // g1's agent stops advertising (the remote command): a1 stops routing it.
    let start = Instant::now();
    mesh.cli(&["command", &mesh.net, "advertise-routes", "--host", &g1]);
    mesh.wait("a1 withdraws g1's prefix", Duration::from_secs(5), |m| {
        kernel_route(m, "a1", &c3).is_empty()
    });
    let withdrawn = start.elapsed();
    assert!(!p1.pings(p3.ip(), 2), "a withdrawn prefix is not routed");
    println!(
        "rejected -> route gone in {rejected:?}; withdrawn by the agent -> gone in {withdrawn:?}"
    );
    // Measured from the CLI's start (a process and a TLS-less gRPC call included).
    assert!(rejected < Duration::from_millis(1500), "{rejected:?}");
    assert!(withdrawn < Duration::from_millis(2500), "{withdrawn:?}");
    assert!(
        mesh.agent_log("g1").contains("advertise-routes command"),
        "the command reached g1's advertiser"
    );
}

/// A subnet router: z1 advertises its VPC subnet, so z2, a VM there without an agent, is
/// reached from a1 in another cloud (SEALED). z2 routes the overlay back through z1 (no
/// masquerade), so it sees a1's own overlay address.
#[test]
fn a_subnet_router_reaches_an_agentless_vm() {
    require_netns!();
    let topo = Topology::builder()
        .cloud("aws", "192.168.1.0/24", Nat::Masquerade)
        .host("aws", "a1")
        .cloud("azure", "10.0.0.0/24", Nat::OneToOne)
        .host("azure", "z1")
        .host("azure", "z2")
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
        .build()
        .expect("topology");
    let overlay = "10.88.0.0/24";
    let mut mesh = Mesh::start(topo, "ctl", overlay, &[]);
    let (z1_ip, vm) = (
        mesh.topo.host("z1").private_ip(),
        mesh.topo.host("z2").private_ip(),
    );
    let subnet = format!("{}/{}", Ipv4Addr::from(u32::from(vm) & !0xff), 24);
    mesh.start_agent("a1", site("aws", "vpc-a"), &[]);
    mesh.start_agent(
        "z1",
        site("azure", "vnet-z"),
        &["--advertise-routes", &subnet],
    );
    mesh.wait_mesh(&["a1", "z1"], UP);
    let z1 = mesh.topo.host("z1");
    z1.netns()
        .sysctl("net.ipv4.ip_forward", "1")
        .expect("forwarding on the router");
    // The VM sends overlay traffic to its router (a VPC route table entry, in a cloud).
    mesh.topo
        .host("z2")
        .exec(["ip", "route", "add", overlay, "via", &z1_ip.to_string()])
        .expect("route back");
    assert!(
        kernel_route(&mesh, "a1", &subnet).contains("dev cladnet0"),
        "a1 routes {subnet}: {:?}",
        kernel_route(&mesh, "a1", &subnet)
    );
    let a1 = mesh.topo.host("a1");
    mesh.wait("a1 pings the agent-less VM", UP, |_| a1.pings(vm, 1));
    let secs = verified_tcp(a1.netns(), mesh.topo.host("z2").netns(), vm, 5203, 4 << 20)
        .expect("a1 -> VM");
    println!("4 MiB a1 -> agent-less VM through the subnet router in {secs:.2} s");
    // The VM reaches a1's overlay address back, with nothing but its route.
    let a1_overlay = mesh.overlay_ip("a1");
    assert!(mesh.topo.host("z2").pings(a1_overlay, 2), "VM -> a1");
}
