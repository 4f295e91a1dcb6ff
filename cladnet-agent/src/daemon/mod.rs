//! `cladnet-agent run`: join a network and carry its packets until told to stop.
//!
//! Start: identity → TUN device and tunnel socket → public endpoint probe (through the tunnel
//! socket) → Join → interface address, MTU and peers from the Watch snapshot → report `up`.
//! Then the Watch stream drives the peer table; the commands it emits drive the engine. The
//! dataplane never depends on the controller being reachable: when the stream breaks, the
//! agent keeps forwarding with what it has and resumes the stream from the last revision.
//!
//! SIGTERM or SIGINT: report `released` and exit (the TUN device goes with the process). A
//! crash or `kill -9` needs nothing special: the next start joins again with the same node
//! id, gets the same overlay address, and the snapshot replaces whatever was stale.

pub mod config;
pub mod conntest;
pub mod convert;
pub mod dataplane;
pub mod host;
pub mod kernel;
pub mod metrics;
mod node_io;
mod pmtu;
mod public;
mod remote;
mod session;
pub mod status;
mod watch;

use std::{net::SocketAddrV4, sync::Arc, time::Duration};

use anyhow::Context as _;
use cladnet_core::node::{Node, NodeConfig, SelfRecord, WatchEvent};
use cladnet_proto::v1 as pb;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tracing::{debug, info, warn};

use crate::{
    control::ControlClient,
    engine::{
        OsRandom,
        router::Router,
        userspace::{EngineOutputs, TunFeatures, Userspace},
    },
    identity::Identity,
    netconf,
    sys::tun::{Offload, Tun, TunOptions},
};
pub use config::{AgentConfig, DataplaneChoice, RelayMode, Settings};
use dataplane::Dataplane;
use host::HostFacts;
use session::{BACKOFF_MAX, BACKOFF_MIN, ControlSession, Next};

/// How often per-peer traffic statistics are reported (shown by the controller's web console).
const STATS_INTERVAL: Duration = Duration::from_secs(10);

/// How often the reflector is asked, without waiting, which public endpoint it sees: an idle
/// host whose public address moves (re-associated 1:1 NAT address, resume in another network)
/// sends nothing that would tell its peers, so this is how it notices within a second. One
/// 24-byte probe and a 22-byte answer per period: 3.3 probes/s per agent, 33 000 probes/s
/// (about 14 Mbit/s each way with IP/UDP headers) at the reflector for 10 000 agents.
const REFLECTOR_KEEPALIVE: Duration = Duration::from_millis(300);

/// What the agent asks for each tunnel socket's receive and send buffer, as wireguard-go
/// and Tailscale do. The kernel's default (`net.core.rmem_default`, 208 KiB here) holds
/// about 270 small datagrams: a burst that arrives while the packet threads wait for a core
/// (a 64-byte flood, a TCP window) overflowed it, and the kernel dropped the rest before the
/// agent saw them (9 000 datagrams and 120 000 TCP retransmissions in a 4-second bench test).
const SOCKET_BUFFER_BYTES: usize = 7 << 20;

/// Binds the tunnel port's `SO_REUSEPORT` group, one socket per packet worker, and sizes
/// their buffers ([`SOCKET_BUFFER_BYTES`]; with CAP_NET_ADMIN past `net.core.rmem_max`).
fn tunnel_sockets(port: u16, workers: usize) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    let sockets =
        crate::sys::udp::bind_reuseport(std::net::SocketAddr::from(([0, 0, 0, 0], port)), workers)
            .with_context(|| format!("binding the tunnel port udp/{port}"))?;
    let mut applied = None;
    for socket in &sockets {
        applied = Some(
            crate::sys::udp::set_socket_buffers(socket, SOCKET_BUFFER_BYTES)
                .with_context(|| format!("sizing the buffers of the tunnel port udp/{port}"))?,
        );
    }
    if let Some(got) = applied {
        // The kernel reports twice the size it was given (it counts its bookkeeping).
        let (recv, send) = (got.recv / 2, got.send / 2);
        if recv < SOCKET_BUFFER_BYTES || send < SOCKET_BUFFER_BYTES {
            warn!(
                wanted = SOCKET_BUFFER_BYTES,
                recv,
                send,
                "tunnel socket buffers capped by net.core.rmem_max/wmem_max (no CAP_NET_ADMIN); \
                 bursts may be dropped before the agent reads them"
            );
        } else {
            debug!(recv, send, forced = got.forced, "tunnel socket buffers");
        }
    }
    Ok(sockets)
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let identity = Identity::load_or_create(&cfg.data_dir)
        .with_context(|| format!("loading the identity in {}", cfg.data_dir.display()))?;
    info!(node_id = identity.node_id, public_key = %identity.public_key(), "identity");
    let tun = create_tun(&cfg.interface, cfg.packet_workers)?;
    let workers = tun.queues().len();
    // TSO/USO: the kernel hands over 64 KiB super-packets that the engine segments, which
    // saves a trip through the stack per MTU-size packet. Without them, plain packets.
    // With USO accepted (Linux 6.2+) the engine also writes a flow's UDP datagrams in one go.
    let uso = match tun
        .set_offload(Offload::CSUM | Offload::TSO4 | Offload::TSO6 | Offload::USO4 | Offload::USO6)
    {
        Ok(got) => {
            info!(offloads = %got, "TUN offloads");
            got.contains(Offload::USO4 | Offload::USO6)
        }
        Err(error) => {
            warn!(%error, "TUN offloads unavailable; one packet per read");
            false
        }
    };
    // The overlay is IPv4; without this the kernel sends router solicitations and MLD
    // reports into the device, which the engine can only count as drops.
    let ipv6_off = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", cfg.interface);
    if let Err(error) = std::fs::write(&ipv6_off, "1") {
        debug!(%error, path = ipv6_off, "could not disable IPv6 on the overlay device");
    }
    let sockets = tunnel_sockets(cfg.listen_port, workers)?;
    // One wall-clock anchor for the Node's WireGuard timestamps and the engine's counters.
    let wall = cladnet_wg::WallClock::new(std::time::Instant::now(), std::time::SystemTime::now());
    let router = Arc::new(Router::new(identity.private_key.clone(), wall));
    if cfg.relay == RelayMode::On {
        router.relay().serve(cfg.relay_limits);
    }
    let queues = tun
        .queues()
        .iter()
        .map(|q| Arc::new(q.clone()) as Arc<dyn crate::engine::userspace::TunIo>)
        .collect();
    let features = TunFeatures { vnet: true, uso };
    let (engine, outputs) = Userspace::start(router, queues, features, sockets)
        .context("starting the userspace engine")?;
    let engine = Arc::new(engine);
    let reflector = resolve_with_retry(&cfg.reflector).await;
    let facts = HostFacts::gather(
        reflector,
        &cfg.interface,
        cfg.host_name.as_deref(),
        cfg.underlay_mtu,
    )
    .await
    .context("reading the host's interfaces")?;
    info!(
        private = ?facts.private_cidr,
        underlay = ?facts.underlay_iface,
        underlay_mtu = facts.underlay_mtu,
        "host facts"
    );
    let rx_hooks = dataplane::rx_hook_order(cfg.rx_hook, facts.underlay_iface.as_deref()).await;
    let dp = Arc::new(dataplane::select_engine(
        &cfg,
        &facts,
        rx_hooks,
        engine.router().clone(),
        engine.workers(),
    )?);
    info!(engine = dp.engine, reason = dp.reason, "dataplane");
    let info = Arc::new(std::sync::Mutex::new(status::AgentInfo {
        network: cfg.network.clone(),
        node_id: identity.node_id.clone(),
        public_key: identity.public_key().to_base64(),
        interface: cfg.interface.clone(),
        listen_port: cfg.listen_port,
        engine: dp.engine.into(),
        state: "joining".into(),
        ..status::AgentInfo::default()
    }));
    if let Some(addr) = cfg.metrics_listen {
        metrics::start(addr, dp.clone(), info.clone()).await?;
    }
    status::start(&cfg.data_dir, dp.clone(), info.clone())?;
    let public = match engine.probe(reflector, 3, Duration::from_secs(1)).await {
        Ok(seen) => Some(seen),
        Err(error) => {
            warn!(%error, "public endpoint unknown for now; will keep probing");
            None
        }
    };
    // The advertised prefixes (reported after every join and when they change); the
    // `advertise-routes` command changes them.
    let advertiser = crate::routes::start(&cfg);
    let mut node = Node::new(NodeConfig {
        node_id: identity.node_id.clone(),
        underlay_mtu: facts.underlay_mtu,
        underlay_ip: facts.private_cidr.map(|(ip, _)| ip),
    })
    .with_wireguard(identity.private_key.clone(), OsRandom, wall);
    node.enable_path_mtu(random_u64());
    let node = Arc::new(node_io::NodeIo::new(
        node,
        cfg.interface.clone(),
        dp.clone(),
        engine.clone(),
    ));
    let EngineOutputs { for_node } = outputs;
    tokio::spawn(node.clone().run(for_node));
    let cfg_relay = cfg.relay;
    let mut agent = Agent {
        node,
        session: ControlSession::new(
            ControlClient::new(cfg.controllers.clone(), cfg.tls.clone())?,
            &cfg.network,
            &identity.node_id,
            &cfg.join_token,
        ),
        cfg,
        identity,
        engine,
        dp,
        facts,
        public,
        last_reflection: None,
        overlay_ip: None,
        reflector,
        info,
        tests: tokio::sync::mpsc::unbounded_channel(),
        advertiser,
        auto_relay: (cfg_relay == RelayMode::Auto).then(cladnet_core::relay::AutoRelay::new),
        pmtu: pmtu::PathMtuIo::new(),
        _tun: tun,
    };
    if let Some(p) = public {
        agent.update_info(|i| i.public_endpoint = p.to_string());
    }
    agent.join().await?;
    agent.serve(shutdown).await
}

/// A connectivity test id and this node's results.
type TestResults = (String, Vec<pb::PairResult>);

struct Agent {
    cfg: AgentConfig,
    identity: Identity,
    /// Join, Watch, reports.
    session: ControlSession,
    engine: Arc<Userspace>,
    /// Both engines, as commands, metrics and status see them.
    dp: Arc<Dataplane>,
    facts: HostFacts,
    public: Option<SocketAddrV4>,
    /// When the probe behind the last accepted reflector answer was sent.
    last_reflection: Option<std::time::Instant>,
    /// Every fact about this node's peers (the Node, shared with its own task); the engines
    /// only apply its commands.
    node: Arc<node_io::NodeIo>,
    /// This node's overlay address, once joined.
    overlay_ip: Option<std::net::Ipv4Addr>,
    /// The controller's endpoint reflector.
    reflector: std::net::SocketAddr,
    /// What `cladnet-agent status` shows.
    info: Arc<std::sync::Mutex<status::AgentInfo>>,
    /// Connectivity test results on their way to the controller.
    tests: (
        tokio::sync::mpsc::UnboundedSender<TestResults>,
        tokio::sync::mpsc::UnboundedReceiver<TestResults>,
    ),
    /// The prefixes this node advertises.
    advertiser: crate::routes::Advertiser,
    /// Path MTU inputs for the Node (counters, the kernel's route cache).
    pmtu: pmtu::PathMtuIo,
    /// `relay = "auto"`: the decision from the reflector's other-port tests.
    auto_relay: Option<cladnet_core::relay::AutoRelay>,
    /// Keeps the device alive.
    _tun: Tun,
}

impl Agent {
    /// Dataplane capabilities reported as host facts.
    fn capabilities(&self) -> Vec<&'static str> {
        let mut caps = match &self.dp.kernel {
            Some(k) => vec![k.report.mode.config_name(), "userspace"],
            None => vec!["userspace"],
        };
        // `relay = "auto"` reports it only while it serves (and reports the change).
        if self.dp.router.relay().serving() {
            caps.push(crate::engine::relay::CAPABILITY);
        }
        caps
    }

    /// Joins, retrying while no controller is reachable; refusals are fatal (bad token,
    /// unknown network).
    async fn join(&mut self) -> anyhow::Result<()> {
        let req = pb::JoinRequest {
            cladnet_id: self.cfg.network.clone(),
            host_id: self.identity.node_id.clone(),
            public_key: self.identity.public_key().to_base64(),
            facts: Some(self.facts.to_proto(&self.capabilities())),
            details: Some(pb::CloudInformation {
                provider_name: self.cfg.site.provider.clone(),
                region_id: self.cfg.site.region.clone(),
                availability_zone_id: self.cfg.site.zone.clone(),
                virtual_network_id: self.cfg.site.vpc.clone(),
                subnet_id: self.cfg.site.subnet.clone(),
            }),
            public_endpoint: self.public.map(|p| p.to_string()).unwrap_or_default(),
            listen_port: u32::from(self.cfg.listen_port),
            host_private_ipv4_cidr: self
                .facts
                .private_cidr
                .map(|(a, l)| format!("{a}/{l}"))
                .unwrap_or_default(),
            // Filled in by the client from a fresh JoinChallenge.
            nonce: String::new(),
            proof: String::new(),
        };
        let private = self.identity.private_key_bytes();
        let resp = self.session.join(&private, req).await?;
        // The set goes again with every session (the controller keeps it, but it may have
        // changed meanwhile).
        self.session.set_routes(&self.advertiser.current());
        let peer = resp.peer.context("join answer without the peer record")?;
        let network = resp.network.context("join answer without the network")?;
        info!(
            network = network.cladnet_id,
            overlay_ip = peer.ip,
            cidr = network.ipv4_address_space,
            "joined"
        );
        let policy = convert::policy(&network);
        self.node
            .with(|node, now| node.handle_watch_event(now, WatchEvent::PolicyChanged(policy)))
            .await?;
        let me = convert::self_record(&peer).context("the join answer's own record")?;
        self.note_self(&me);
        self.node
            .with(|node, now| node.handle_watch_event(now, WatchEvent::LocalUpdated(me)))
            .await
    }

    /// Our own record (first join, endpoints, site) as status shows it; the Node gets it as
    /// a [`WatchEvent::LocalUpdated`] and recomputes links.
    fn note_self(&mut self, me: &SelfRecord) {
        self.overlay_ip = Some(me.overlay_ip);
        self.update_info(|i| i.overlay = format!("{}/{}", me.overlay_ip, me.prefix_len));
    }

    /// Re-opens every peer path now: PLAIN probes from the Node, WireGuard keepalives.
    async fn punch(&mut self) -> anyhow::Result<()> {
        self.node.with(|node, _| node.punch()).await
    }

    /// The main loop: Watch events, endpoint probes, reports, peer events, shutdown.
    async fn serve(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.update_info(|i| i.state = "up".into());
        self.session.set_pending(self.up_report());
        let mut probe_tick = interval(self.cfg.probe_interval);
        probe_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Started at a random offset, so agents started together do not probe in step.
        let offset = REFLECTOR_KEEPALIVE.mul_f64(f64::from(random_u16()) / f64::from(u16::MAX));
        let mut keepalive_tick =
            tokio::time::interval_at(Instant::now() + offset, REFLECTOR_KEEPALIVE);
        keepalive_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (reflections_tx, mut reflections) = tokio::sync::mpsc::unbounded_channel();
        let mut clocks = public::Clocks::now();
        let mut report_tick = interval(Duration::from_secs(1));
        report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stats_tick =
            tokio::time::interval_at(Instant::now() + STATS_INTERVAL, STATS_INTERVAL);
        stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut addr_changes =
            netconf::address_changes().context("subscribing to address changes")?;
        let mut routes = self.advertiser.subscribe();
        tokio::pin!(shutdown);
        loop {
            self.session.prepare().await;
            let controller = self.session.controller().to_owned();
            self.update_info(|i| i.controller = controller);
            tokio::select! {
                () = &mut shutdown => break,
                next = self.session.next() => match next {
                    Next::Event(ev) => self.on_event(*ev).await?,
                    Next::Rejoin => {
                        self.join().await?;
                        self.session.set_pending(self.up_report());
                    }
                    Next::Reopen => {}
                },
                _ = probe_tick.tick() => self.probe().await,
                _ = keepalive_tick.tick() => {
                    if clocks.resumed() {
                        info!("clock jump or resume from suspend: re-opening every peer path");
                        self.punch().await?;
                    }
                    if let Err(error) = self.engine.keepalive(self.reflector, &reflections_tx) {
                        debug!(%error, "reflector keepalive not sent");
                    }
                }
                Some(r) = reflections.recv() => self.on_reflection(r).await,
                Some(()) = addr_changes.recv() => {
                    debug!("address change: probing the public endpoint again");
                    self.probe().await;
                }
                _ = report_tick.tick() => self.session.flush_report().await,
                Ok(()) = routes.changed() => {
                    self.session.set_routes(&self.advertiser.current());
                    self.session.flush_report().await;
                }
                _ = stats_tick.tick() => self.report_stats().await,
                input = self.pmtu.next() => {
                    let (pmtu, dp) = (&mut self.pmtu, &self.dp);
                    self.node.with(|node, now| pmtu.feed(input, node, dp, now)).await?;
                }
                Some((test_id, results)) = self.tests.1.recv() => {
                    self.dp.record_rtts(&results);
                    let req = self.session.report(|r| {
                        r.test_id = test_id;
                        r.test_results = results;
                    });
                    if let Err(error) = self.session.send(req).await {
                        warn!(%error, "could not report connectivity test results");
                    }
                }
            }
        }
        info!("stopping: releasing this peer");
        let release = self.session.report(|r| r.state = "released".into());
        match tokio::time::timeout(Duration::from_secs(3), self.session.send(release)).await {
            Ok(Ok(_)) => info!("released"),
            Ok(Err(e)) => warn!(error = %e, "could not report the release"),
            Err(_) => warn!("could not report the release: controller did not answer in time"),
        }
        // Leaving the network: the kernel path goes too (a crash leaves it pinned, and the
        // next start takes it over without a gap).
        if let Some(k) = &self.dp.kernel {
            match k.detach() {
                Ok(()) => info!("eBPF dataplane detached"),
                Err(error) => warn!(%error, "detaching the eBPF dataplane failed"),
            }
        }
        Ok(())
    }

    fn update_info(&self, f: impl FnOnce(&mut status::AgentInfo)) {
        f(&mut self.info.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The report that says this node is up, with its dataplane (after every join).
    fn up_report(&self) -> pb::ReportRequest {
        self.session.report(|r| {
            r.state = "up".into();
            r.dataplane = self.dp.engine.into();
            r.dataplane_reason.clone_from(&self.dp.reason);
        })
    }
}

/// Resolves the reflector, retrying while name resolution fails (at boot the resolver may not
/// be up yet).
/// Creates (or attaches to) the overlay TUN device with one queue per packet worker. A device
/// that exists as a single-queue TUN (made by hand or by an older agent) refuses more queues:
/// then the engine runs one worker over one queue, as before multiqueue.
fn create_tun(interface: &str, workers: usize) -> anyhow::Result<Tun> {
    let opts = |queues| TunOptions {
        vnet_hdr: true,
        queues,
    };
    match Tun::create(interface, opts(workers)) {
        Ok(tun) => Ok(tun),
        Err(error) if workers > 1 => {
            warn!(%error, workers, "no multiqueue TUN device; one packet worker");
            Tun::create(interface, opts(1))
                .with_context(|| format!("creating TUN device {interface}"))
        }
        Err(error) => {
            Err(anyhow::Error::new(error).context(format!("creating TUN device {interface}")))
        }
    }
}

async fn resolve_with_retry(host_port: &str) -> std::net::SocketAddr {
    let mut backoff = BACKOFF_MIN;
    loop {
        match config::resolve_ipv4(host_port).await {
            Ok(addr) => return addr,
            Err(error) => {
                warn!(reflector = host_port, %error, retry_in = ?backoff, "cannot resolve the reflector");
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    u64::from_ne_bytes(b)
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("the OS random source works");
    u16::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::tunnel_sockets;

    /// Sends `count` 64-byte datagrams over loopback to `receiver` while nobody reads, then
    /// counts what its buffer kept.
    fn burst_kept(receiver: &UdpSocket, count: usize) -> usize {
        let to =
            std::net::SocketAddr::from(([127, 0, 0, 1], receiver.local_addr().unwrap().port()));
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..count {
            sender.send_to(&[7u8; 64], to).unwrap();
        }
        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 128];
        std::iter::from_fn(|| receiver.recv_from(&mut buf).ok()).count()
    }

    /// A burst that the kernel's default socket buffer drops (what a 64-byte flood or a TCP
    /// window does while the packet threads wait for a core) stays whole in a tunnel socket.
    #[test]
    fn a_tunnel_socket_keeps_a_burst_the_default_buffer_drops() {
        const BURST: usize = 2000;
        let default = UdpSocket::bind("127.0.0.1:0").unwrap();
        let kept = burst_kept(&default, BURST);
        assert!(
            kept < BURST,
            "the default buffer kept all {BURST}: the burst proves nothing"
        );
        let tunnel = tunnel_sockets(0, 1).unwrap().remove(0);
        assert_eq!(
            burst_kept(&tunnel, BURST),
            BURST,
            "the default buffer kept {kept}"
        );
    }
}
