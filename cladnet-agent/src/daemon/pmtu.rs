//! The IO side of path MTU discovery; the searches themselves are the Node's. This module
//! applies what they find ([`Command::SetRouteMtu`]: a route per peer on the overlay device,
//! `<peer>/32 dev <overlay> mtu <route mtu>`, so TCP's MSS follows at once, local UDP senders
//! get EMSGSIZE and forwarded DF packets an ICMP "fragmentation needed" from the kernel
//! itself) and feeds the Node what only the host sees: which peers carry traffic in either
//! engine (their confirmations are more frequent) and the kernel's cached path MTU towards
//! each probed underlay address (learnt from ICMP, a hint).

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use cladnet_core::node::{Command, Node};
use ipnet::Ipv4Net;
use tokio::{
    sync::mpsc,
    time::{Interval, MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use super::dataplane::Dataplane;
use crate::netconf;

/// How often the engines' counters are read (which peers carry traffic).
const BUSY_EVERY: Duration = Duration::from_millis(250);
/// How often the kernel's route cache is read for ICMP-learnt path MTUs (one route lookup per
/// peer address: cheap, but not free with many peers).
const HINT_EVERY: Duration = Duration::from_secs(1);

/// Path MTUs found in the kernel's route cache, by underlay address.
type Found = Vec<(Ipv4Addr, u32)>;

/// Path MTU inputs on their way to the Node.
pub(super) struct PathMtuIo {
    busy: Interval,
    hints: Interval,
    /// Transmit counters at the last look, by overlay address.
    last_tx: HashMap<Ipv4Addr, u64>,
    /// Route cache lookups run off the agent's loop and report here.
    found: (mpsc::UnboundedSender<Found>, mpsc::UnboundedReceiver<Found>),
}

/// What [`PathMtuIo::next`] woke up for.
pub(super) enum Input {
    /// Time to read the counters.
    Busy,
    /// Time to look up the route cache.
    LookUp,
    /// ICMP-learnt path MTUs by underlay address.
    Hints(Found),
}

impl PathMtuIo {
    pub(super) fn new() -> Self {
        let mut busy = interval(BUSY_EVERY);
        busy.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut hints = interval(HINT_EVERY);
        hints.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            busy,
            hints,
            last_tx: HashMap::new(),
            found: mpsc::unbounded_channel(),
        }
    }

    /// The next input (cancel-safe: for the agent's `select!`).
    pub(super) async fn next(&mut self) -> Input {
        tokio::select! {
            _ = self.busy.tick() => Input::Busy,
            _ = self.hints.tick() => Input::LookUp,
            Some(found) = self.found.1.recv() => Input::Hints(found),
        }
    }

    /// Hands `input` to the Node (a lookup is started in the background).
    pub(super) fn feed(&mut self, input: Input, node: &mut Node, dp: &Dataplane, now: Instant) {
        match input {
            Input::Busy => {
                let busy = self.busy_peers(dp, now);
                node.handle_peer_activity(now, &busy);
            }
            Input::LookUp => {
                let destinations = node.path_mtu_destinations();
                if !destinations.is_empty() {
                    tokio::spawn(look_up(destinations, self.found.0.clone()));
                }
            }
            Input::Hints(found) => {
                for (ip, mtu) in found {
                    node.handle_path_mtu_hint(now, ip, mtu);
                }
            }
        }
    }

    /// Peers whose transmit counters (the userspace engine's and the kernel path's) moved
    /// since the last look.
    fn busy_peers(&mut self, dp: &Dataplane, now: Instant) -> BTreeSet<Ipv4Addr> {
        let tx: HashMap<Ipv4Addr, u64> = dp
            .peers(now)
            .into_iter()
            .map(|p| (p.overlay_ip, p.traffic.tx_packets))
            .collect();
        let busy = tx
            .iter()
            .filter(|(ip, n)| self.last_tx.get(*ip).is_some_and(|l| l != *n))
            .map(|(ip, _)| *ip)
            .collect();
        self.last_tx = tx;
        busy
    }
}

/// The kernel's route towards a peer's underlay address carries the path MTU an ICMP
/// "fragmentation needed" taught it (a cached exception).
async fn look_up(ips: BTreeSet<Ipv4Addr>, to: mpsc::UnboundedSender<Found>) {
    let mut found = Vec::new();
    for ip in ips {
        match netconf::route_interface(ip).await {
            Ok(Some(route)) if route.mtu > 0 => found.push((ip, route.mtu)),
            Ok(_) => {}
            Err(error) => debug!(%error, peer = %IpAddr::V4(ip), "route lookup failed"),
        }
    }
    let _ = to.send(found);
}

/// Applies a [`Command::SetRouteMtu`] on the overlay device (other commands: nothing).
pub(super) async fn apply_route(interface: &str, cmd: &Command) {
    let Command::SetRouteMtu {
        node_id,
        overlay_ip,
        mtu,
        ..
    } = cmd
    else {
        return;
    };
    let dest = Ipv4Net::from(*overlay_ip);
    let result = match mtu {
        Some(mtu) => netconf::replace_route(dest, interface, Some(*mtu)).await,
        None => netconf::delete_route(dest, interface).await,
    };
    match result {
        Ok(()) => info!(node_id, %dest, route_mtu = ?mtu, "path MTU: overlay route"),
        Err(error) => warn!(node_id, %error, "cannot apply the path MTU route"),
    }
}
