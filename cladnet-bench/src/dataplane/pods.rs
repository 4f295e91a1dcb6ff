//! The pod rows (issue 14): a pod namespace behind each host, on a bridge holding the host's
//! pod network (`10.244.1.0/24` on A, `10.244.2.0/24` on B), measured pod to pod over CLADNet
//! PLAIN links on the eBPF engine, in two ways:
//!
//! * [`PodRouting::Prefixes`]: each agent advertises its pod network (approval `auto`), so the
//!   agents route it: one CLAD header, encapsulated by the kernel (`cladnet-ebpf-pods`);
//! * [`PodRouting::Vxlan`]: no advertised prefixes; a kernel VXLAN device between the hosts'
//!   overlay addresses carries the pod traffic inside CLADNet's, as a cluster with its own
//!   encapsulating CNI does today (`cladnet-ebpf-pods-vxlan`).
//!
//! The pods get the MTU their path leaves: the overlay device's, or that less VXLAN's 50
//! bytes. The hosts forward (`net.ipv4.ip_forward=1`, left on for the rows after; it does not
//! change traffic the hosts terminate themselves).

use std::{net::Ipv4Addr, time::Duration};

use super::testbed::{Netns, Testbed, process_prefix};

/// How pod traffic crosses the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PodRouting {
    /// The agents route the advertised pod networks.
    Prefixes,
    /// A kernel VXLAN tunnel between the overlay addresses.
    Vxlan,
}

/// The bridge on each host.
const BRIDGE: &str = "cbr0";
/// The VXLAN device of [`PodRouting::Vxlan`].
const VXLAN: &str = "vxpods";
/// VXLAN's overhead over IPv4 (outer IPv4, UDP, VXLAN, inner Ethernet).
const VXLAN_OVERHEAD: u32 = 50;

/// Host `i`'s pod network (0: A, 1: B).
pub(crate) fn pod_network(i: usize) -> String {
    format!("10.244.{}.0/24", i + 1)
}

fn octet(i: usize) -> u8 {
    u8::try_from(i + 1).unwrap_or(u8::MAX)
}

/// Builds the pods once both agents are up and reach each other (`overlay`: A's and B's
/// overlay addresses, `overlay_mtu`: the overlay device's MTU); the devices it adds on the
/// hosts go to `links` (deleted at teardown). Returns the pods as a test bed (A's pod as `a`,
/// B's as `b`), B's pod address and the pods' MTU, once A's pod reaches B's.
pub(crate) fn attach(
    routing: PodRouting,
    tb: &Testbed,
    overlay: [Ipv4Addr; 2],
    overlay_mtu: u32,
    links: &mut Vec<(String, String)>,
) -> anyhow::Result<(Testbed, Ipv4Addr, u32)> {
    let mtu = match routing {
        PodRouting::Prefixes => overlay_mtu,
        PodRouting::Vxlan => overlay_mtu - VXLAN_OVERHEAD,
    };
    let hosts = [&tb.a, &tb.b];
    let mut pods = Vec::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let n = octet(i);
        host.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        host.run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        links.push((host.name().to_owned(), BRIDGE.to_owned()));
        host.run(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.{n}.1/24"),
            "dev",
            BRIDGE,
        ])?;
        host.run(&["ip", "link", "set", BRIDGE, "up"])?;
        let pod = Netns::create(&format!("{}p{}", process_prefix(), ["a", "b"][i]))?;
        let veth = format!("vpod{n}");
        let mtu = mtu.to_string();
        host.run(&[
            "ip",
            "link",
            "add",
            &veth,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "netns",
            pod.name(),
        ])?;
        host.run(&["ip", "link", "set", &veth, "master", BRIDGE, "up"])?;
        pod.run(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.{n}.2/24"),
            "dev",
            "eth0",
        ])?;
        pod.run(&["ip", "link", "set", "eth0", "up"])?;
        pod.run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{n}.1"),
        ])?;
        pods.push(pod);
    }
    if routing == PodRouting::Vxlan {
        for (i, host) in hosts.into_iter().enumerate() {
            let (me, peer) = (overlay[i], overlay[1 - i]);
            let vx_mtu = (overlay_mtu - VXLAN_OVERHEAD).to_string();
            host.run(&[
                "ip",
                "link",
                "add",
                VXLAN,
                "mtu",
                &vx_mtu,
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                &me.to_string(),
                "remote",
                &peer.to_string(),
                "dstport",
                "4789",
            ])?;
            links.push((host.name().to_owned(), VXLAN.to_owned()));
            let n = octet(i);
            host.run(&[
                "ip",
                "addr",
                "add",
                &format!("10.246.0.{n}/24"),
                "dev",
                VXLAN,
            ])?;
            host.run(&["ip", "link", "set", VXLAN, "up"])?;
            let other = octet(1 - i);
            host.run(&[
                "ip",
                "route",
                "add",
                &format!("10.244.{other}.0/24"),
                "via",
                &format!("10.246.0.{other}"),
            ])?;
        }
    }
    let mut pods = pods.into_iter();
    let (a, b) = (
        pods.next().expect("two pods"),
        pods.next().expect("two pods"),
    );
    let pods = Testbed::pair(a, b);
    let dst = Ipv4Addr::new(10, 244, 2, 2);
    tb.wait_for(
        &format!("pod ping {dst} ({routing:?})"),
        Duration::from_secs(20),
        || pods.a.pings(dst),
    )?;
    Ok((pods, dst, mtu))
}
