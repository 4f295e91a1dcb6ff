//! Applies what path MTU discovery (`engine::router`, probes on the tunnel socket) finds: a
//! route per peer on the overlay device (`<peer>/32 dev <overlay> mtu <route mtu>`), so TCP's
//! MSS follows at once, local UDP senders get EMSGSIZE and forwarded DF packets an ICMP
//! "fragmentation needed" from the kernel itself. Also feeds the searches what only the daemon
//! sees: the kernel's cached path MTU towards each peer's underlay address (learnt from ICMP,
//! a hint) and which peers the eBPF path carries traffic for (their confirmations are more
//! frequent).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use ipnet::Ipv4Net;
use tokio::time::{MissedTickBehavior, interval};
use tracing::{debug, warn};

use super::dataplane::Dataplane;
use crate::netconf;

/// How often route changes are applied (the searches run on the engine's 50 ms timer).
const APPLY_EVERY: Duration = Duration::from_millis(50);
/// How often the eBPF counters are read (which peers carry traffic in the kernel path).
const BUSY_EVERY: Duration = Duration::from_millis(250);
/// How often the kernel's route cache is read for ICMP-learnt path MTUs (one route lookup per
/// peer address: cheap, but not free with many peers).
const HINT_EVERY: Duration = Duration::from_secs(1);

/// Starts the task; it runs as long as the process.
pub(super) fn start(dp: Arc<Dataplane>, interface: String, first_hop_mtu: u32) {
    dp.router.set_first_hop_mtu(first_hop_mtu);
    tokio::spawn(async move {
        let mut apply = interval(APPLY_EVERY);
        apply.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut hints = interval(HINT_EVERY);
        hints.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut busy = interval(BUSY_EVERY);
        busy.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut kernel_tx: HashMap<std::net::Ipv4Addr, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = apply.tick() => apply_changes(&dp, &interface).await,
                _ = hints.tick() => read_hints(&dp).await,
                _ = busy.tick() => mark_kernel_busy(&dp, &mut kernel_tx),
            }
        }
    });
}

async fn apply_changes(dp: &Dataplane, interface: &str) {
    for change in dp.router.path_mtu_changes() {
        let dest = Ipv4Net::from(change.overlay_ip);
        let result = match change.route_mtu {
            Some(mtu) => netconf::replace_route(dest, interface, Some(mtu)).await,
            None => netconf::delete_route(dest, interface).await,
        };
        match result {
            Ok(()) => debug!(
                node_id = change.node_id,
                %dest,
                route_mtu = ?change.route_mtu,
                "overlay route for the path MTU"
            ),
            Err(error) => {
                warn!(node_id = change.node_id, %error, "cannot apply the path MTU route")
            }
        }
    }
}

/// The kernel's route towards a peer's underlay address carries the path MTU an ICMP
/// "fragmentation needed" taught it (a cached exception); the search takes it as a hint.
async fn read_hints(dp: &Dataplane) {
    // One lookup per underlay address (peers behind one NAT share it).
    let mut by_ip: HashMap<std::net::Ipv4Addr, Vec<String>> = HashMap::new();
    for (node_id, endpoint) in dp.router.path_mtu_endpoints() {
        if let SocketAddr::V4(ep) = endpoint {
            by_ip.entry(*ep.ip()).or_default().push(node_id);
        }
    }
    for (ip, nodes) in by_ip {
        match netconf::route_interface(ip).await {
            Ok(Some(route)) if route.mtu > 0 => {
                for node_id in nodes {
                    dp.router
                        .path_mtu_hint(std::time::Instant::now(), &node_id, route.mtu);
                }
            }
            Ok(_) => {}
            Err(error) => debug!(%error, peer = %IpAddr::V4(ip), "route lookup failed"),
        }
    }
}

/// Peers whose kernel-path transmit counters moved since the last look.
fn mark_kernel_busy(dp: &Dataplane, last: &mut HashMap<std::net::Ipv4Addr, u64>) {
    let Some(k) = &dp.kernel else {
        return;
    };
    let now: HashMap<_, _> = k
        .counters()
        .into_iter()
        .map(|(ip, c)| (ip, c.tx_packets))
        .collect();
    let busy: Vec<_> = now
        .iter()
        .filter(|(ip, tx)| last.get(*ip).is_some_and(|l| l != *tx))
        .map(|(ip, _)| *ip)
        .collect();
    *last = now;
    dp.router.mark_busy(busy);
}
