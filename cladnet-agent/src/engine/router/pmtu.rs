//! Per-peer path MTU discovery (see `cladnet_core::pmtu`) driven by the userspace engine for
//! both engines: probes leave the tunnel socket (so they take the data's path and NAT
//! mapping), acknowledgements and the peers' probes arrive on it (the eBPF receive program
//! passes them to the socket). What it finds becomes a route MTU on the overlay device
//! (applied by the daemon, see [`Router::path_mtu_changes`]) and the limit above which the
//! userspace engine answers a DF packet with ICMP "fragmentation needed".

use std::{
    collections::HashSet,
    io,
    sync::atomic::{AtomicU32, Ordering::Relaxed},
};

use cladnet_common::pmtu::{self as frame, MtuMessage, PROBE_IP_OVERHEAD};
use cladnet_core::{
    pmtu::{PathMtu, State, Timing},
    table::overlay_mtu,
};

use super::*;

/// How long a peer counts as busy after it last sent a packet: confirmations of its path MTU
/// are then frequent (black holes found within about a second).
const BUSY_FOR: Duration = Duration::from_secs(2);

/// A route MTU to apply on the overlay device for one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathMtuChange {
    /// Node id.
    pub node_id: String,
    /// The peer's overlay address (the route's destination, /32).
    pub overlay_ip: Ipv4Addr,
    /// The route MTU (largest inner packet), or `None` to remove the route (peer gone).
    pub route_mtu: Option<u32>,
    /// The path MTU found (outer IPv4 packets).
    pub path_mtu: u32,
}

/// A peer's path MTU as status and metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PathMtuStatus {
    /// Largest outer IPv4 packet known to get through.
    pub path_mtu: u32,
    /// Largest inner packet routed to the peer (route MTU on the overlay device); `None`
    /// until the first search completed.
    pub route_mtu: Option<u32>,
    /// Search state: base, searching, search_complete, error.
    pub state: &'static str,
}

struct PeerPath {
    pm: PathMtu,
    endpoint: SocketAddr,
    overlay_ip: Ipv4Addr,
    mode: LinkMode,
    counters: Arc<PeerCounters>,
    last_tx: u64,
    busy_until: Option<Instant>,
    /// A search completed at least once: until then the route is left alone (optimistic
    /// start, so that connections opened meanwhile advertise the full MSS).
    found: bool,
    /// Route MTU last handed to the daemon.
    applied: Option<u32>,
    /// Last MTU the kernel's route cache reported (hints count only when it changes).
    last_hint: Option<u32>,
}

/// Path MTU state of every peer.
#[derive(Default)]
pub(super) struct PathMtus {
    peers: Mutex<HashMap<String, PeerPath>>,
    changes: Mutex<Vec<PathMtuChange>>,
    /// Peers (overlay addresses) the kernel path saw traffic for lately.
    kernel_busy: Mutex<HashSet<Ipv4Addr>>,
    /// The first hop's MTU (bound of every search); 0 = not known yet.
    first_hop: AtomicU32,
    /// The overlay device's MTU (no route MTU goes above it).
    overlay: AtomicU32,
    /// This node's overlay address (source of the ICMP errors the engine writes).
    pub(super) local_ip: AtomicU32,
}

impl PathMtus {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, PeerPath>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_overlay(&self, mtu: u32, ip: Ipv4Addr) {
        self.overlay.store(mtu, Relaxed);
        self.local_ip.store(u32::from(ip), Relaxed);
    }
}

/// The largest inner packet a peer's link carries over a path of `path_mtu`: PLAIN adds
/// 36 bytes; SEALED adds 60 plus WireGuard's padding to 16 bytes, hence the rounding.
pub fn route_mtu(mode: LinkMode, path_mtu: u32) -> u32 {
    match mode {
        LinkMode::Plain => path_mtu.saturating_sub(wire::PLAIN_OVERHEAD_V4 as u32),
        LinkMode::Sealed => overlay_mtu(path_mtu),
    }
}

fn nonce() -> u64 {
    let mut n = [0u8; 8];
    getrandom::fill(&mut n).expect("the OS random source works");
    u64::from_ne_bytes(n)
}

impl Router {
    /// Sets the first hop's MTU, which bounds every search (the underlay MTU of the route
    /// out, or `--underlay-mtu`).
    pub fn set_first_hop_mtu(&self, mtu: u32) {
        self.pmtu.first_hop.store(mtu, Relaxed);
    }

    /// Marks peers (by overlay address) as carrying traffic in the kernel path, whose packets
    /// the userspace counters do not see.
    pub fn mark_busy(&self, ips: impl IntoIterator<Item = Ipv4Addr>) {
        *self
            .pmtu
            .kernel_busy
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = ips.into_iter().collect();
    }

    /// Runs the path MTU searches: follows the peer set, handles lost probes and sends the
    /// probes that are due through `send` (the tunnel socket, which sets DF on everything it
    /// sends and ignores the kernel's cached path MTU).
    pub fn path_mtu_tick(
        &self,
        now: Instant,
        buf: &mut [u8],
        mut send: impl FnMut(&[u8], SocketAddr) -> io::Result<()>,
    ) {
        let first_hop = self.pmtu.first_hop.load(Relaxed);
        if first_hop == 0 {
            return;
        }
        // The peer map's read lock is released before the WireGuard device's lock is taken
        // (the timer path takes them in the other order).
        let entries: Vec<Arc<Entry>> = self.read_peers().by_id.values().cloned().collect();
        let targets: Vec<(String, SocketAddr, Ipv4Addr, LinkMode, Arc<PeerCounters>)> = {
            let dev = self.device();
            entries
                .iter()
                .filter_map(|e| {
                    let ep =
                        e.wg.and_then(|id| dev.endpoint(id))
                            .or(e.config.endpoint.map(SocketAddr::V4))?;
                    Some((
                        e.config.node_id.clone(),
                        ep,
                        e.config.overlay_ip,
                        e.config.mode,
                        e.counters.clone(),
                    ))
                })
                .collect()
        };
        let kernel_busy = self
            .pmtu
            .kernel_busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let local_index = self.local_index.load(Relaxed);
        let mut changes = Vec::new();
        let mut paths = self.pmtu.lock();
        // Peers gone: their routes go too.
        let live: HashSet<&str> = targets.iter().map(|t| t.0.as_str()).collect();
        paths.retain(|id, p| {
            let keep = live.contains(id.as_str());
            if !keep && p.applied.is_some() {
                changes.push(PathMtuChange {
                    node_id: id.clone(),
                    overlay_ip: p.overlay_ip,
                    route_mtu: None,
                    path_mtu: p.pm.mtu(),
                });
            }
            keep
        });
        for (node_id, endpoint, overlay_ip, mode, counters) in targets {
            let p = paths.entry(node_id.clone()).or_insert_with(|| PeerPath {
                pm: PathMtu::new(now, first_hop, Timing::default()),
                endpoint,
                overlay_ip,
                mode,
                counters: counters.clone(),
                last_tx: 0,
                busy_until: None,
                found: false,
                applied: None,
                last_hint: None,
            });
            if p.endpoint != endpoint
                || p.pm.max() != first_hop.max(cladnet_core::pmtu::BASE_PLPMTU)
            {
                // Another path (roaming, a new NAT mapping) or another first hop: search
                // again; the route keeps the old value until the new search completes.
                debug!(node_id, %endpoint, "path MTU: new path, searching again");
                p.pm = PathMtu::new(now, first_hop, Timing::default());
                p.endpoint = endpoint;
                p.last_hint = None;
            }
            p.mode = mode;
            p.overlay_ip = overlay_ip;
            p.counters = counters;
            let tx = p.counters.snapshot().tx_packets;
            if tx != p.last_tx || kernel_busy.contains(&overlay_ip) {
                p.last_tx = tx;
                p.busy_until = Some(now + BUSY_FOR);
            }
            let busy = p.busy_until.is_some_and(|t| now < t);
            let before = p.pm.state();
            if let Some(probe) = p.pm.poll(now, busy, nonce()) {
                let len = probe.size as usize - PROBE_IP_OVERHEAD;
                if let Some(datagram) = frame::probe(local_index, probe.nonce, len, buf) {
                    match send(datagram, endpoint) {
                        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                            // Larger than the first hop carries: a hint, not a confirmation.
                            p.pm.on_hint(now, probe.size - 1);
                        }
                        Err(error) => debug!(node_id, %error, "path MTU probe not sent"),
                        Ok(()) => {}
                    }
                }
            }
            if p.pm.state() != before {
                debug!(
                    node_id,
                    state = p.pm.state().name(),
                    mtu = p.pm.mtu(),
                    "path MTU state"
                );
            }
            if let Some(change) = Self::route_change(&self.pmtu, &node_id, p) {
                changes.push(change);
            }
        }
        drop(paths);
        if !changes.is_empty() {
            self.pmtu
                .changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(changes);
        }
    }

    fn route_change(mtus: &PathMtus, node_id: &str, p: &mut PeerPath) -> Option<PathMtuChange> {
        let state = p.pm.state();
        // Found once, or lowered by a black hole or a hint since: the route follows.
        p.found |= state == State::SearchComplete;
        if !p.found {
            return None;
        }
        let overlay = mtus.overlay.load(Relaxed);
        let mut route = route_mtu(p.mode, p.pm.mtu());
        if overlay > 0 {
            route = route.min(overlay);
        }
        // While a search above the size in use runs, the size in use stays.
        if p.applied == Some(route) {
            return None;
        }
        p.applied = Some(route);
        p.counters.set_mtu_limit(route);
        info!(
            node_id,
            path_mtu = p.pm.mtu(),
            route_mtu = route,
            state = state.name(),
            "path MTU"
        );
        Some(PathMtuChange {
            node_id: node_id.to_owned(),
            overlay_ip: p.overlay_ip,
            route_mtu: Some(route),
            path_mtu: p.pm.mtu(),
        })
    }

    /// Route MTU changes since the last call, for the daemon to apply on the overlay device.
    pub fn path_mtu_changes(&self) -> Vec<PathMtuChange> {
        std::mem::take(&mut *self.pmtu.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Peers' underlay addresses, for the daemon to look up the kernel's cached path MTU
    /// (learnt from ICMP) towards them.
    pub fn path_mtu_endpoints(&self) -> Vec<(String, SocketAddr)> {
        self.pmtu
            .lock()
            .iter()
            .map(|(id, p)| (id.clone(), p.endpoint))
            .collect()
    }

    /// A path MTU towards `node_id` reported from outside the search (ICMP "fragmentation
    /// needed", as the kernel's route cache shows it). Counts only when it differs from the
    /// last report (a cached value outlives the path change it came from by minutes); only
    /// lowers (see [`PathMtu::on_hint`]).
    pub fn path_mtu_hint(&self, now: Instant, node_id: &str, mtu: u32) {
        let mut paths = self.pmtu.lock();
        let Some(p) = paths.get_mut(node_id) else {
            return;
        };
        if p.last_hint == Some(mtu) {
            return;
        }
        p.last_hint = Some(mtu);
        if mtu < p.pm.mtu() {
            debug!(node_id, mtu, "path MTU hint from the kernel's route cache");
            p.pm.on_hint(now, mtu);
            p.found = true;
            if let Some(change) = Self::route_change(&self.pmtu, node_id, p) {
                drop(paths);
                self.pmtu
                    .changes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(change);
            }
        }
    }

    /// A peer's path MTU, once a search ran.
    pub fn path_mtu(&self, node_id: &str) -> Option<PathMtuStatus> {
        self.pmtu.lock().get(node_id).map(|p| PathMtuStatus {
            path_mtu: p.pm.mtu(),
            route_mtu: p.applied,
            state: p.pm.state().name(),
        })
    }

    /// A path MTU probe or acknowledgement from `from`: probes of known peers get an
    /// acknowledgement (never larger than the probe), acknowledgements feed the search.
    pub(super) fn inbound_mtu<'a>(
        &self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Inbound<'a> {
        let Ok(msg) = frame::decode(datagram) else {
            return self.drop_in(Drop::Plain(plain::DropReason::BadHeader));
        };
        let (MtuMessage::Probe { node_index, .. } | MtuMessage::Ack { node_index, .. }) = msg;
        let Some(node_id) = self.peer_at(from, node_index) else {
            return self.drop_in(Drop::Plain(plain::DropReason::UnknownPeer));
        };
        match msg {
            MtuMessage::Probe { nonce, len, .. } => {
                let ack = frame::ack(self.local_index.load(Relaxed), nonce, len);
                let Some(buf) = out.get_mut(..ack.len()) else {
                    return Inbound::Nothing;
                };
                buf.copy_from_slice(&ack);
                Inbound::Reply {
                    datagram: buf,
                    to: from,
                }
            }
            MtuMessage::Ack { nonce, len, .. } => {
                let size = len + PROBE_IP_OVERHEAD as u32;
                if let Some(p) = self.pmtu.lock().get_mut(&node_id) {
                    p.pm.on_ack(now, nonce, size);
                }
                Inbound::Nothing
            }
        }
    }

    /// The peer with node index `node_index` whose underlay endpoint is `from`.
    fn peer_at(&self, from: SocketAddr, node_index: u32) -> Option<String> {
        let e = self
            .read_peers()
            .by_id
            .values()
            .find(|e| e.config.node_index == node_index)?
            .clone();
        let known = e.config.endpoint.map(SocketAddr::V4) == Some(from)
            || e.wg
                .is_some_and(|id| self.device().endpoint(id) == Some(from));
        known.then(|| e.config.node_id.clone())
    }
}

/// Writes into `out` the ICMP "fragmentation needed" (type 3, code 4) that tells the sender
/// of `packet` (an IPv4 packet with DF, too big for its peer's path) to send at most `mtu`
/// bytes; it comes from `from` (the destination the packet was for, so that reverse-path
/// filtering on the overlay device accepts it). Returns its length, or `None` for packets
/// that get no ICMP error (no DF, fragments, ICMP errors).
pub fn frag_needed(packet: &[u8], mtu: u32, from: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet.len() < ihl.max(20) || packet[0] >> 4 != 4 {
        return None;
    }
    let df = packet[6] & 0x40 != 0;
    let frag_offset = u16::from_be_bytes([packet[6] & 0x1f, packet[7]]);
    if !df || frag_offset != 0 {
        return None;
    }
    // Never an ICMP error about an ICMP error (RFC 1122 3.2.2).
    if packet[9] == 1 && matches!(packet.get(ihl), Some(3 | 4 | 5 | 11 | 12) | None) {
        return None;
    }
    let quoted = &packet[..(ihl + 8).min(packet.len())];
    let len = 20 + 8 + quoted.len();
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&packet[12..16]);
    let hdr: [u8; 20] = out[..20].try_into().ok()?;
    out[10..12].copy_from_slice(&cladnet_common::encap::ipv4_checksum(&hdr));
    let icmp = &mut out[20..];
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[6..8].copy_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
    icmp[8..].copy_from_slice(quoted);
    let sum = internet_checksum(icmp);
    icmp[2..4].copy_from_slice(&sum);
    Some(len)
}

fn internet_checksum(data: &[u8]) -> [u8; 2] {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_EP: &str = "192.0.2.1:8055";
    const B_EP: &str = "198.51.100.2:8055";

    fn router(last: u8, seed: u8) -> (Router, PeerConfig) {
        let key = PrivateKey::from_bytes([seed; 32]);
        let public = key.public_key();
        let ip = Ipv4Addr::new(10, 77, 0, last);
        let r = Router::new(key);
        r.apply(
            Instant::now(),
            u32::from(ip),
            &Command::SetInterface {
                ip,
                prefix_len: 24,
                mtu: 1440,
            },
        );
        r.set_first_hop_mtu(1500);
        let config = PeerConfig {
            node_id: format!("node-{last}"),
            node_index: u32::from(ip),
            overlay_ip: ip,
            public_key: *public.as_bytes(),
            endpoint: None,
            mode: LinkMode::Plain,
        };
        (r, config)
    }

    /// a and b know each other as `mode` peers at A_EP / B_EP.
    fn pair(mode: LinkMode) -> (Router, Router) {
        let (a, mut ca) = router(1, 7);
        let (b, mut cb) = router(2, 9);
        ca.endpoint = Some(A_EP.parse().unwrap());
        cb.endpoint = Some(B_EP.parse().unwrap());
        ca.mode = mode;
        cb.mode = mode;
        let now = Instant::now();
        a.apply(now, ca.node_index, &Command::UpsertPeer(cb));
        b.apply(now, cb_index(), &Command::UpsertPeer(ca));
        (a, b)
    }

    fn cb_index() -> u32 {
        u32::from(Ipv4Addr::new(10, 77, 0, 2))
    }

    /// Runs a's probes over a path carrying `path_mtu` bytes to b and back, for `steps` ticks
    /// of 10 ms.
    fn run(a: &Router, b: &Router, path_mtu: usize, start: Instant, steps: u32) -> Instant {
        let mut now = start;
        let mut buf = vec![0u8; 2000];
        let mut out = vec![0u8; 2000];
        let mut out2 = vec![0u8; 2000];
        for _ in 0..steps {
            let mut sent = Vec::new();
            a.path_mtu_tick(now, &mut buf, |d, to| {
                sent.push((d.to_vec(), to));
                Ok(())
            });
            for (d, to) in sent {
                assert_eq!(to, B_EP.parse().unwrap());
                if d.len() + PROBE_IP_OVERHEAD > path_mtu {
                    continue;
                }
                let Inbound::Reply { datagram, to } =
                    b.inbound(now, A_EP.parse().unwrap(), &d, &mut out)
                else {
                    panic!("probe not answered");
                };
                assert_eq!(to, A_EP.parse().unwrap());
                assert!(datagram.len() <= d.len(), "amplification");
                let ack = datagram.to_vec();
                assert_eq!(
                    a.inbound(now, B_EP.parse().unwrap(), &ack, &mut out2),
                    Inbound::Nothing
                );
            }
            now += Duration::from_millis(10);
        }
        now
    }

    #[test]
    fn plain_and_sealed_links_find_the_path_and_emit_routes() {
        for (mode, route) in [(LinkMode::Plain, 1364), (LinkMode::Sealed, 1328)] {
            let (a, b) = pair(mode);
            let now = run(&a, &b, 1400, Instant::now(), 300);
            let st = a.path_mtu("node-2").unwrap();
            assert_eq!(
                (st.path_mtu, st.state),
                (1400, "search_complete"),
                "{mode:?}"
            );
            assert_eq!(st.route_mtu, Some(route));
            let changes = a.path_mtu_changes();
            assert_eq!(
                changes.last().map(|c| (c.overlay_ip, c.route_mtu)),
                Some((Ipv4Addr::new(10, 77, 0, 2), Some(route)))
            );
            // A full path is capped at the device MTU.
            run(&a, &b, 1500, now, 1700);
            let st = a.path_mtu("node-2").unwrap();
            assert_eq!((st.path_mtu, st.route_mtu), (1500, Some(1440)), "{mode:?}");
            // The peer goes: so does its route.
            a.apply(
                now,
                1,
                &Command::RemovePeer {
                    node_id: "node-2".into(),
                    overlay_ip: Ipv4Addr::new(10, 77, 0, 2),
                },
            );
            let _ = a.path_mtu_changes();
            run(&a, &b, 1500, now, 1);
            assert_eq!(a.path_mtu_changes().last().map(|c| c.route_mtu), Some(None));
        }
    }

    #[test]
    fn strangers_get_no_answer() {
        let (_a, b) = pair(LinkMode::Plain);
        let mut buf = [0u8; 100];
        let mut out = [0u8; 100];
        // The right node id from the wrong address, and a stranger's id from a peer's address.
        let probe = frame::probe(u32::from(Ipv4Addr::new(10, 77, 0, 1)), 5, 64, &mut buf)
            .unwrap()
            .to_vec();
        assert_eq!(
            b.inbound(
                Instant::now(),
                "203.0.113.9:8055".parse().unwrap(),
                &probe,
                &mut out
            ),
            Inbound::Dropped(Drop::Plain(plain::DropReason::UnknownPeer))
        );
        let probe = frame::probe(99, 5, 64, &mut buf).unwrap().to_vec();
        assert_eq!(
            b.inbound(Instant::now(), A_EP.parse().unwrap(), &probe, &mut out),
            Inbound::Dropped(Drop::Plain(plain::DropReason::UnknownPeer))
        );
        // A truncated probe.
        assert_eq!(
            b.inbound(
                Instant::now(),
                A_EP.parse().unwrap(),
                &probe[..12],
                &mut out
            ),
            Inbound::Dropped(Drop::Plain(plain::DropReason::BadHeader))
        );
    }

    fn tcp(len: usize, df: bool) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 77, 0, 1]);
        p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        p
    }

    #[test]
    fn df_packets_too_big_for_the_path_get_frag_needed() {
        let (a, b) = pair(LinkMode::Plain);
        run(&a, &b, 1400, Instant::now(), 300);
        let mut out = vec![0u8; 4000];
        // Fits: sent.
        let ok = tcp(1364, true);
        assert!(matches!(
            a.outbound(Instant::now(), &ok, &mut out),
            Outbound::Send { .. }
        ));
        // One byte more with DF: ICMP back to the sender.
        let big = tcp(1365, true);
        let Outbound::ToTun(icmp) = a.outbound(Instant::now(), &big, &mut out) else {
            panic!("no ICMP");
        };
        let icmp = icmp.to_vec();
        assert_eq!(icmp.len(), 20 + 8 + 28);
        assert_eq!(&icmp[12..16], &[10, 77, 0, 2], "from the peer's address");
        assert_eq!(&icmp[16..20], &[10, 77, 0, 1], "to the sender");
        let hdr: [u8; 20] = icmp[..20].try_into().unwrap();
        assert_eq!(cladnet_common::encap::ipv4_checksum(&hdr), [0, 0]);
        assert_eq!((icmp[20], icmp[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1364);
        assert_eq!(internet_checksum(&icmp[20..]), [0, 0]);
        assert_eq!(&icmp[28..], &big[..28]);
        // Without DF: dropped and counted, no ICMP.
        assert_eq!(
            a.outbound(Instant::now(), &tcp(1365, false), &mut out),
            Outbound::Dropped(Drop::TooBig)
        );
        assert_eq!(a.drops().get(Drop::TooBig), 2);
    }

    #[test]
    fn no_icmp_error_about_an_icmp_error() {
        let mut p = tcp(1400, true);
        p[9] = 1;
        p[20] = 3;
        assert_eq!(
            frag_needed(&p, 1300, Ipv4Addr::LOCALHOST, &mut [0u8; 100]),
            None
        );
        p[20] = 8; // echo request: answered
        assert!(frag_needed(&p, 1300, Ipv4Addr::LOCALHOST, &mut [0u8; 100]).is_some());
    }
}
