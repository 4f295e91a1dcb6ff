//! The node's dataplane as one thing: the userspace engine (always there: it seals SEALED
//! links and carries everything when the kernel path is off) and, when attached, the eBPF
//! engine carrying PLAIN links. [`Dataplane::apply`] is the one place a Node command reaches
//! the engines; metrics, status and the stats report read peers and drops from here.

use std::{sync::Arc, time::Instant};

use cladnet_core::{node::Command, policy::LinkMode};
use cladnet_proto::v1 as pb;
use tracing::{debug, warn};

use super::{
    config::{AgentConfig, DataplaneChoice},
    host::HostFacts,
    kernel::Kernel,
};
use crate::{
    ebpf::RxHook,
    engine::{
        Engine,
        relay::PathStatus,
        router::{PathMtuStatus, PeerStatus, Router},
        userspace::Workers,
    },
    netconf,
};

/// The engines of this node.
#[derive(Debug)]
pub struct Dataplane {
    /// The userspace engine's packet logic.
    pub router: Arc<Router>,
    /// The userspace engine's packet workers (what each carried).
    pub workers: Workers,
    /// The kernel path, when attached.
    pub kernel: Option<Kernel>,
    /// `ebpf` or `userspace`: what carries PLAIN links.
    pub engine: &'static str,
    /// Why this engine (the attach mode, or why the kernel path is off).
    pub reason: String,
    /// Average RTT to each peer (by node id) from the last connectivity test, in seconds.
    pub rtt: std::sync::Mutex<std::collections::HashMap<String, f64>>,
    /// Each peer's path MTU search as the Node last reported it ([`Event::PathMtu`]), for
    /// status and metrics.
    ///
    /// [`Event::PathMtu`]: cladnet_core::node::Event::PathMtu
    path_mtus: std::sync::Mutex<std::collections::HashMap<String, PathMtuStatus>>,
}

impl Dataplane {
    /// Applies a Node command to every engine. A kernel map update that fails leaves the
    /// peer to the userspace engine (its packets then reach the TUN reader).
    pub fn apply(&self, now: Instant, cmd: &Command) {
        let kernel = self.kernel.as_ref().map(|k| k as &dyn Engine);
        for engine in std::iter::once(&*self.router as &dyn Engine).chain(kernel) {
            if let Err(error) = engine.apply(now, cmd) {
                warn!(%error, ?cmd, "command not applied; the userspace engine carries the peer");
            }
        }
    }

    /// Every peer with its traffic and path; peers the kernel carries show the kernel's
    /// counters added to what the userspace engine saw (packets in flight while a peer was
    /// installed).
    pub fn peers(&self, now: Instant) -> Vec<PeerStatus> {
        let mut peers = self.router.status(now);
        {
            let mtus = self.path_mtus.lock().unwrap_or_else(|e| e.into_inner());
            for p in &mut peers {
                p.path_mtu = mtus.get(&p.node_id).copied();
            }
        }
        // SEALED links run in the userspace engine with either engine, so its relay paths
        // know every SEALED peer's path. A PLAIN link is never relayed (a relayed link is
        // always SEALED): it goes direct to the peer's endpoint, in whichever engine.
        let mut paths: std::collections::HashMap<String, PathStatus> = self
            .router
            .relay()
            .paths(&self.router)
            .into_iter()
            .map(|p| (p.node_id.clone(), p))
            .collect();
        for p in &mut peers {
            if p.mode == LinkMode::Plain.as_str() {
                p.path = Some("direct".to_owned());
            } else if let Some(s) = paths.remove(&p.node_id) {
                p.path = Some(s.path);
                p.via = s.via;
            }
        }
        if let Some(k) = &self.kernel {
            let counters = k.counters();
            for p in &mut peers {
                if let Some(c) = counters.get(&p.overlay_ip) {
                    p.engine = "ebpf";
                    p.traffic.tx_packets += c.tx_packets;
                    p.traffic.tx_bytes += c.tx_bytes;
                    p.traffic.rx_packets += c.rx_packets;
                    p.traffic.rx_bytes += c.rx_bytes;
                }
            }
        }
        peers
    }

    /// Remembers a peer's path MTU status from the Node (`None`: its path is gone).
    pub fn set_path_mtu(&self, node_id: String, status: Option<PathMtuStatus>) {
        let mut mtus = self.path_mtus.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            Some(s) => {
                debug!(
                    node_id,
                    path_mtu = s.path_mtu,
                    state = s.state,
                    "path MTU state"
                );
                mtus.insert(node_id, s);
            }
            None => {
                mtus.remove(&node_id);
            }
        }
    }

    /// Remembers the RTTs a connectivity test measured (peers that answered nothing are
    /// forgotten rather than shown with a stale value).
    pub fn record_rtts(&self, results: &[pb::PairResult]) {
        let mut rtt = self.rtt.lock().unwrap_or_else(|e| e.into_inner());
        for r in results {
            if r.packets_received > 0 {
                rtt.insert(r.destination_host_id.clone(), r.avg_rtt_ms / 1000.0);
            } else {
                rtt.remove(&r.destination_host_id);
            }
        }
    }

    /// The last measured RTT to `node_id`, in seconds.
    pub fn rtt(&self, node_id: &str) -> Option<f64> {
        self.rtt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
    }

    /// Drop counters of both engines: (engine, reason, count), zeros included.
    pub fn drops(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out: Vec<_> = self
            .router
            .drops()
            .all()
            .into_iter()
            .map(|(r, n)| ("userspace", r.name(), n))
            .collect();
        if let Some(k) = &self.kernel {
            out.extend(k.drops().into_iter().map(|(r, n)| ("ebpf", r, n)));
        }
        out
    }
}

/// Chooses the engine for PLAIN links: the kernel path where it attaches (unless configured
/// off), else userspace. `--dataplane ebpf` makes a failed attach fatal; `auto` falls back and
/// says why.
pub(super) fn select_engine(
    cfg: &AgentConfig,
    facts: &HostFacts,
    rx_hooks: &'static [RxHook],
    router: Arc<Router>,
    workers: Workers,
) -> anyhow::Result<Dataplane> {
    let userspace = |reason: String| Dataplane {
        router: router.clone(),
        workers: workers.clone(),
        kernel: None,
        engine: "userspace",
        reason,
        rtt: std::sync::Mutex::default(),
        path_mtus: std::sync::Mutex::default(),
    };
    if cfg.dataplane == DataplaneChoice::Userspace {
        return Ok(userspace("configured: dataplane = userspace".into()));
    }
    let attempt = match &facts.underlay_iface {
        None => Err(anyhow::anyhow!(
            "no underlay interface (no route towards the controller)"
        )),
        Some(underlay) => Kernel::attach(
            underlay,
            &cfg.interface,
            &cfg.bpf_pin_dir,
            rx_hooks,
            cfg.listen_port,
            facts.private_cidr.map(|(ip, _)| ip),
            cfg.ebpf_max_peers,
        )
        .map_err(anyhow::Error::from),
    };
    match attempt {
        Ok(k) => {
            let reason = format!(
                "PLAIN links in the kernel: {} on {} ({}), TC egress on {}; SEALED links in userspace",
                k.report.mode.describe(),
                k.report.underlay,
                k.report.reason,
                cfg.interface
            );
            Ok(Dataplane {
                router,
                workers,
                kernel: Some(k),
                engine: "ebpf",
                reason,
                rtt: std::sync::Mutex::default(),
                path_mtus: std::sync::Mutex::default(),
            })
        }
        Err(error) if cfg.dataplane == DataplaneChoice::Auto => {
            warn!(%error, "eBPF dataplane unavailable; using the userspace engine");
            Ok(userspace(format!("eBPF unavailable: {error:#}")))
        }
        Err(error) => Err(error.context("dataplane = ebpf")),
    }
}

/// The receive hooks to try for the configured one; `auto` (`None`) puts TC ingress first on
/// veth devices (see [`RxHook::order`]).
pub(super) async fn rx_hook_order(
    choice: Option<RxHook>,
    underlay: Option<&str>,
) -> &'static [RxHook] {
    let veth = match (choice, underlay) {
        (None, Some(iface)) => match netconf::link_kind(iface).await {
            Ok(kind) => kind.as_deref() == Some("veth"),
            Err(error) => {
                debug!(%error, iface, "link kind unknown; XDP first");
                false
            }
        },
        _ => false,
    };
    RxHook::order(choice, veth)
}
