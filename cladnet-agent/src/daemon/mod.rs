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
mod pmtu;
mod remote;
pub mod status;

use std::{net::SocketAddrV4, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use cladnet_core::table::{Command, LocalNode, PeerTable};
use cladnet_proto::v1::{self as pb, watch_event::Event as WatchEv};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};
use tonic::Code;
use tracing::{debug, info, warn};

use crate::{
    control::{ControlClient, ControlError},
    engine::{
        router::{PeerEvent, Router},
        userspace::{Reflection, Userspace},
    },
    identity::Identity,
    netconf,
    sys::tun::{Offload, Tun, TunOptions},
};
pub use config::{AgentConfig, DataplaneChoice, Settings};
use dataplane::Dataplane;
use host::HostFacts;

/// How often per-peer traffic statistics are reported (shown by the controller's web console).
const STATS_INTERVAL: Duration = Duration::from_secs(10);

/// How often the reflector is asked, without waiting, which public endpoint it sees: an idle
/// host whose public address moves (re-associated 1:1 NAT address, resume in another network)
/// sends nothing that would tell its peers, so this is how it notices within a second. One
/// 24-byte probe and a 22-byte answer per period: 3.3 probes/s per agent, 33 000 probes/s
/// (about 14 Mbit/s each way with IP/UDP headers) at the reflector for 10 000 agents.
const REFLECTOR_KEEPALIVE: Duration = Duration::from_millis(300);

/// A wall clock running ahead of the monotonic clock by more than this between two
/// keepalives means the host was suspended (or its clock jumped): NAT mappings may be gone.
const RESUME_GAP: Duration = Duration::from_secs(2);

/// Backoff bounds for reconnecting to the controllers.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A re-join this long after the previous one starts again from the shortest backoff.
const REJOIN_CALM: Duration = Duration::from_secs(60);

/// Runs the agent until `shutdown` resolves.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let identity = Identity::load_or_create(&cfg.data_dir)
        .with_context(|| format!("loading the identity in {}", cfg.data_dir.display()))?;
    info!(node_id = identity.node_id, public_key = %identity.public_key(), "identity");
    let tun = Tun::create(
        &cfg.interface,
        TunOptions {
            vnet_hdr: true,
            queues: 1,
        },
    )
    .with_context(|| format!("creating TUN device {}", cfg.interface))?;
    // TSO/USO: the kernel hands over 64 KiB super-packets that the engine segments, which
    // saves a trip through the stack per MTU-size packet. Without them, plain packets.
    match tun
        .set_offload(Offload::CSUM | Offload::TSO4 | Offload::TSO6 | Offload::USO4 | Offload::USO6)
    {
        Ok(got) => info!(offloads = %got, "TUN offloads"),
        Err(error) => warn!(%error, "TUN offloads unavailable; one packet per read"),
    }
    // The overlay is IPv4; without this the kernel sends router solicitations and MLD
    // reports into the device, which the engine can only count as drops.
    let ipv6_off = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", cfg.interface);
    if let Err(error) = std::fs::write(&ipv6_off, "1") {
        debug!(%error, path = ipv6_off, "could not disable IPv6 on the overlay device");
    }
    let socket = std::net::UdpSocket::bind(("0.0.0.0", cfg.listen_port))
        .with_context(|| format!("binding the tunnel port udp/{}", cfg.listen_port))?;
    let router = Arc::new(Router::new(identity.private_key.clone()));
    let (engine, peer_events) =
        Userspace::start(router, Arc::new(tun.queues()[0].clone()), true, socket)
            .context("starting the userspace engine")?;
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
    let rx_mode = dataplane::rx_attach_mode(cfg.rx_hook, facts.underlay_iface.as_deref()).await;
    let dp = Arc::new(dataplane::select_engine(
        &cfg,
        &facts,
        rx_mode,
        engine.router().clone(),
    )?);
    info!(engine = dp.engine, reason = dp.reason, "dataplane");
    pmtu::start(dp.clone(), cfg.interface.clone(), facts.underlay_mtu);
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
    let mut agent = Agent {
        client: ControlClient::new(cfg.controllers.clone(), cfg.tls.clone())?,
        cfg,
        identity,
        engine,
        dp,
        facts,
        public,
        last_reflection: None,
        table: PeerTable::default(),
        local_index: 0,
        session: String::new(),
        session_lost: false,
        revision: 0,
        pending: None,
        overlay_ip: None,
        reflector,
        info,
        tests: tokio::sync::mpsc::unbounded_channel(),
        _tun: tun,
    };
    if let Some(p) = public {
        agent.update_info(|i| i.public_endpoint = p.to_string());
    }
    agent.join().await?;
    agent.serve(peer_events, shutdown).await
}

/// A connectivity test id and this node's results.
type TestResults = (String, Vec<pb::PairResult>);

struct Agent {
    cfg: AgentConfig,
    identity: Identity,
    client: ControlClient,
    engine: Userspace,
    /// Both engines, as commands, metrics and status see them.
    dp: Arc<Dataplane>,
    facts: HostFacts,
    public: Option<SocketAddrV4>,
    /// When the probe behind the last accepted reflector answer was sent.
    last_reflection: Option<std::time::Instant>,
    table: PeerTable,
    local_index: u32,
    session: String,
    /// A Watch or Report was refused as Unauthenticated: the session is gone (revoked or
    /// replaced) and the agent joins again with its identity.
    session_lost: bool,
    revision: i64,
    /// A report the controller has not acknowledged yet (sent again until it is).
    pending: Option<pb::ReportRequest>,
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
    /// Keeps the device alive.
    _tun: Tun,
}

impl Agent {
    /// Dataplane capabilities reported as host facts.
    fn capabilities(&self) -> Vec<&'static str> {
        match &self.dp.kernel {
            Some(k) => vec![
                match k.report.mode.name() {
                    "driver" => "xdp-driver",
                    "generic" => "xdp-generic",
                    _ => "tc",
                },
                "userspace",
            ],
            None => vec!["userspace"],
        }
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
        let mut backoff = BACKOFF_MIN;
        let resp = loop {
            let private = self.identity.private_key_bytes();
            match self
                .client
                .join(&self.cfg.join_token, &private, req.clone())
                .await
            {
                Ok(resp) => break resp,
                Err(ControlError::Unreachable { last, .. }) => {
                    warn!(error = %last, retry_in = ?backoff, "join: no controller reachable");
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e).context("joining the network"),
            }
        };
        let peer = resp.peer.context("join answer without the peer record")?;
        let network = resp.network.context("join answer without the network")?;
        self.session = resp.session_token;
        info!(
            network = network.cladnet_id,
            overlay_ip = peer.ip,
            cidr = network.ipv4_address_space,
            "joined"
        );
        self.revision = 0;
        let mut cmds = self.table.set_policy(convert::policy(&network));
        cmds.extend(self.set_self(&peer)?);
        self.apply(cmds).await
    }

    /// Our own record changed (first join, endpoints, site): the table recomputes links.
    fn set_self(&mut self, p: &pb::Peer) -> anyhow::Result<Vec<Command>> {
        let me = convert::remote(p)?;
        let prefix_len = p
            .ipv4_cidr
            .split_once('/')
            .and_then(|(_, l)| l.parse().ok())
            .with_context(|| format!("own record: bad ipv4Cidr {:?}", p.ipv4_cidr))?;
        let local = LocalNode {
            node_id: me.node_id,
            node_index: me.node_index,
            overlay_ip: me.overlay_ip,
            prefix_len,
            underlay_mtu: self.facts.underlay_mtu,
            view: me.view,
        };
        self.local_index = local.node_index;
        self.overlay_ip = Some(local.overlay_ip);
        self.update_info(|i| i.overlay = format!("{}/{}", local.overlay_ip, local.prefix_len));
        Ok(self.table.set_local(local))
    }

    /// Hands table commands to the dataplane; the interface itself is configured here.
    async fn apply(&mut self, cmds: Vec<Command>) -> anyhow::Result<()> {
        let mut punch = false;
        for cmd in cmds {
            if let Command::SetInterface {
                ip,
                prefix_len,
                mtu,
            } = cmd
            {
                netconf::configure_interface(&self.cfg.interface, ip, prefix_len, mtu)
                    .await
                    .with_context(|| {
                        format!(
                            "configuring {} with {ip}/{prefix_len} mtu {mtu}",
                            self.cfg.interface
                        )
                    })?;
                info!(interface = self.cfg.interface, %ip, prefix_len, mtu, "overlay interface up");
            }
            punch |= matches!(cmd, Command::UpsertPeer(_));
            let underlay_ip = self.facts.private_cidr.map(|(ip, _)| ip);
            self.dp.apply(&cmd, self.local_index, underlay_ip);
        }
        if punch {
            self.engine.punch();
        }
        Ok(())
    }

    /// The main loop: Watch events, endpoint probes, reports, peer events, shutdown.
    async fn serve(
        mut self,
        mut peer_events: tokio::sync::mpsc::UnboundedReceiver<PeerEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.update_info(|i| i.state = "up".into());
        self.pending = Some(self.up_report());
        let mut probe_tick = interval(self.cfg.probe_interval);
        probe_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Started at a random offset, so agents started together do not probe in step.
        let offset = REFLECTOR_KEEPALIVE.mul_f64(f64::from(random_u16()) / f64::from(u16::MAX));
        let mut keepalive_tick =
            tokio::time::interval_at(Instant::now() + offset, REFLECTOR_KEEPALIVE);
        keepalive_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (reflections_tx, mut reflections) = tokio::sync::mpsc::unbounded_channel();
        let mut clocks = Clocks::now();
        let mut report_tick = interval(Duration::from_secs(1));
        report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stats_tick =
            tokio::time::interval_at(Instant::now() + STATS_INTERVAL, STATS_INTERVAL);
        stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut addr_changes =
            netconf::address_changes().context("subscribing to address changes")?;
        let mut watch = None;
        let mut backoff = BACKOFF_MIN;
        let mut retry_watch_at = Instant::now();
        // Re-joins are spaced out (doubling up to BACKOFF_MAX), so two hosts sharing one
        // identity by mistake do not take the session from each other in a tight loop.
        let mut rejoin_at = Instant::now();
        let mut rejoin_backoff = BACKOFF_MIN;
        tokio::pin!(shutdown);
        loop {
            if self.session_lost && Instant::now() >= rejoin_at {
                warn!(
                    node_id = self.identity.node_id,
                    "session no longer valid (revoked or replaced); joining again with this node's identity"
                );
                self.session_lost = false;
                self.join().await?;
                self.pending = Some(self.up_report());
                watch = None;
                retry_watch_at = Instant::now();
                backoff = BACKOFF_MIN;
                rejoin_at = Instant::now() + rejoin_backoff;
                rejoin_backoff = (rejoin_backoff * 2).min(BACKOFF_MAX);
            } else if !self.session_lost && Instant::now() >= rejoin_at + REJOIN_CALM {
                rejoin_backoff = BACKOFF_MIN;
            }
            if watch.is_none() && Instant::now() >= retry_watch_at {
                match self.open_watch().await {
                    Ok(stream) => {
                        watch = Some(stream);
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) if e.is_unauthenticated() => {
                        warn!(error = %e, "watch refused: session no longer valid");
                        self.session_lost = true;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?backoff, "watch: controller unavailable; forwarding continues");
                        retry_watch_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            let retry_at = [
                watch.is_none().then_some(retry_watch_at),
                self.session_lost.then_some(rejoin_at),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                () = &mut shutdown => break,
                msg = next_event(&mut watch) => match msg {
                    Ok(Some(ev)) => self.on_event(ev).await?,
                    Ok(None) | Err(_) => {
                        if let Err(status) = msg {
                            if status.code() == Code::Unauthenticated {
                                warn!(%status, "watch ended: session no longer valid");
                                self.session_lost = true;
                            } else {
                                warn!(%status, "watch stream broken; resuming");
                            }
                        } else {
                            warn!("watch stream ended; resuming");
                        }
                        watch = None;
                        retry_watch_at = Instant::now() + backoff;
                    }
                },
                () = sleep_until_opt(retry_at) => {}
                _ = probe_tick.tick() => self.probe().await,
                _ = keepalive_tick.tick() => {
                    if clocks.resumed() {
                        info!("clock jump or resume from suspend: re-opening every peer path");
                        self.engine.punch();
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
                _ = report_tick.tick() => self.flush_report().await,
                _ = stats_tick.tick() => self.report_stats().await,
                Some(ev) = peer_events.recv() => {
                    on_peer_event(&ev);
                    self.follow_learned_endpoint(&ev);
                }
                Some((test_id, results)) = self.tests.1.recv() => {
                    self.dp.record_rtts(&results);
                    let req = self.report(|r| {
                        r.test_id = test_id;
                        r.test_results = results;
                    });
                    if let Err(error) = self.client.report(&self.session, req).await {
                        warn!(%error, "could not report connectivity test results");
                        self.session_lost |= error.is_unauthenticated();
                    }
                }
            }
        }
        info!("stopping: releasing this peer");
        let release = self.report(|r| r.state = "released".into());
        match tokio::time::timeout(
            Duration::from_secs(3),
            self.client.report(&self.session, release),
        )
        .await
        {
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

    fn report(&self, f: impl FnOnce(&mut pb::ReportRequest)) -> pb::ReportRequest {
        let mut r = pb::ReportRequest {
            cladnet_id: self.cfg.network.clone(),
            host_id: self.identity.node_id.clone(),
            ..pb::ReportRequest::default()
        };
        f(&mut r);
        r
    }

    /// Sends the pending report, if any; keeps it when the controller is unreachable.
    async fn flush_report(&mut self) {
        let Some(req) = self.pending.clone() else {
            return;
        };
        match self.client.report(&self.session, req).await {
            Ok(_) => self.pending = None,
            Err(e) if e.is_unauthenticated() => {
                warn!(error = %e, "report refused: session no longer valid");
                self.session_lost = true;
            }
            Err(e) => debug!(error = %e, "report pending"),
        }
    }

    /// The report that says this node is up, with its dataplane (after every join).
    fn up_report(&self) -> pb::ReportRequest {
        self.report(|r| {
            r.state = "up".into();
            r.dataplane = self.dp.engine.into();
            r.dataplane_reason.clone_from(&self.dp.reason);
        })
    }

    async fn probe(&mut self) {
        match self
            .engine
            .probe(self.reflector, 2, Duration::from_millis(700))
            .await
        {
            Ok(seen) => {
                self.last_reflection = Some(std::time::Instant::now());
                self.set_public(seen).await;
            }
            Err(error) => debug!(%error, "probe failed"),
        }
    }

    /// A keepalive answer: only the newest probe's answer counts (a late answer to an older
    /// probe may carry the endpoint from before a move).
    async fn on_reflection(&mut self, r: Reflection) {
        if self.last_reflection.is_some_and(|last| r.sent < last) {
            return;
        }
        self.last_reflection = Some(r.sent);
        self.set_public(r.seen).await;
    }

    /// The reflector saw us as `seen`: if that is new, report it at once and punch every peer.
    async fn set_public(&mut self, seen: SocketAddrV4) {
        if Some(seen) == self.public {
            return;
        }
        info!(old = ?self.public, new = %seen, "public endpoint changed");
        self.public = Some(seen);
        self.update_info(|i| i.public_endpoint = seen.to_string());
        let mut r = self.pending.take().unwrap_or_else(|| self.report(|_| {}));
        r.public_endpoint = seen.to_string();
        self.pending = Some(r);
        // Our NAT mappings changed: open new ones towards every peer before they learn the
        // new endpoint from the controller.
        self.engine.punch();
        self.flush_report().await;
        if self.pending.is_some() {
            // The control connection went through the old mapping too: the first call finds
            // it reset, and the channel connects again for the second.
            self.flush_report().await;
        }
    }

    async fn open_watch(&mut self) -> Result<tonic::Streaming<pb::WatchEvent>, ControlError> {
        let req = pb::WatchRequest {
            cladnet_id: self.cfg.network.clone(),
            host_id: self.identity.node_id.clone(),
            from_revision: self.revision,
        };
        let stream = self.client.watch(&self.session, req).await?;
        let controller = self.client.current().to_owned();
        self.update_info(|i| i.controller = controller);
        info!(
            controller = self.client.current(),
            from_revision = self.revision,
            "watching"
        );
        Ok(stream)
    }

    async fn on_event(&mut self, ev: pb::WatchEvent) -> anyhow::Result<()> {
        self.revision = self.revision.max(ev.revision);
        let me = self.identity.node_id.clone();
        let cmds = match ev.event {
            Some(WatchEv::Snapshot(s)) => {
                let mut cmds = Vec::new();
                if let Some(n) = &s.network {
                    cmds.extend(self.table.set_policy(convert::policy(n)));
                }
                let mut remotes = Vec::new();
                for p in &s.peers {
                    if p.host_id == me {
                        cmds.extend(self.set_self(p)?);
                    } else {
                        match convert::remote(p) {
                            Ok(r) => remotes.push(r),
                            Err(e) => warn!(error = %e, "ignoring peer"),
                        }
                    }
                }
                info!(peers = remotes.len(), revision = ev.revision, "snapshot");
                cmds.extend(self.table.replace_all(remotes));
                cmds
            }
            Some(WatchEv::PeerUpserted(p)) if p.host_id == me => self.set_self(&p)?,
            Some(WatchEv::PeerUpserted(p)) => match convert::remote(&p) {
                Ok(r) => self.table.upsert(r),
                Err(e) => {
                    warn!(error = %e, "ignoring peer");
                    Vec::new()
                }
            },
            Some(WatchEv::PeerRemoved(id)) if id == me => {
                bail!(
                    "this peer was deleted from network {:?}; not rejoining on my own",
                    self.cfg.network
                )
            }
            Some(WatchEv::PeerRemoved(id)) => self.table.remove(&id),
            Some(WatchEv::NetworkUpdated(n)) => {
                info!(
                    encryption = n.encryption,
                    rule = n.rule_type,
                    "network policy updated"
                );
                self.table.set_policy(convert::policy(&n))
            }
            Some(WatchEv::NetworkDeleted(id)) => bail!("network {id:?} was deleted"),
            Some(WatchEv::Command(c)) => self.on_command(&c),
            Some(WatchEv::TestRequested(t)) => {
                self.start_test(t);
                Vec::new()
            }
            None => Vec::new(),
        };
        self.apply(cmds).await
    }
}

/// Resolves the reflector, retrying while name resolution fails (at boot the resolver may not
/// be up yet).
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

/// The monotonic clock stops while the host is suspended; the wall clock does not.
struct Clocks {
    mono: std::time::Instant,
    wall: std::time::SystemTime,
}

impl Clocks {
    fn now() -> Self {
        Self {
            mono: std::time::Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }

    /// Whether the wall clock ran ahead of the monotonic one by [`RESUME_GAP`] since the last
    /// call (a resume from suspend, or a clock step).
    fn resumed(&mut self) -> bool {
        let now = Self::now();
        let mono = now.mono.saturating_duration_since(self.mono);
        let wall = now.wall.duration_since(self.wall).unwrap_or_default();
        *self = now;
        wall.saturating_sub(mono) > RESUME_GAP
    }
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("the OS random source works");
    u16::from_be_bytes(b)
}

async fn next_event(
    watch: &mut Option<tonic::Streaming<pb::WatchEvent>>,
) -> Result<Option<pb::WatchEvent>, tonic::Status> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn on_peer_event(ev: &PeerEvent) {
    match ev {
        PeerEvent::HandshakeCompleted { node_id } => debug!(node_id, "handshake completed"),
        PeerEvent::EndpointChanged { node_id, endpoint } => {
            info!(node_id, %endpoint, "peer roamed to a new endpoint");
        }
        PeerEvent::HandshakeTimedOut { node_id } => warn!(node_id, "handshake timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_ahead_of_the_monotonic_one_is_a_resume() {
        let mut clocks = Clocks::now();
        assert!(!clocks.resumed(), "no time passed");
        // As after 10 s of suspend: the wall clock moved on, the monotonic one did not.
        clocks.wall -= Duration::from_secs(10);
        assert!(clocks.resumed());
        assert!(!clocks.resumed(), "reported once");
        // A wall clock stepped back is no resume.
        clocks.wall += Duration::from_secs(3600);
        assert!(!clocks.resumed());
    }
}
