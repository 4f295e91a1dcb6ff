//! The node's dataplane as one thing: the userspace engine (always there: it seals SEALED
//! links and carries everything when the kernel path is off) and, when attached, the eBPF
//! engine carrying PLAIN links. Both get every command; metrics, status and the stats report
//! read peers and drops from here.

use std::{net::Ipv4Addr, sync::Arc, time::Instant};

use cladnet_proto::v1 as pb;

use cladnet_core::table::Command;
use tracing::{debug, warn};

use super::{
    config::{self, AgentConfig, DataplaneChoice},
    host::HostFacts,
    kernel::Kernel,
};
use crate::{
    ebpf::AttachMode,
    engine::router::{PeerStatus, Router},
    netconf,
};

/// The engines of this node.
#[derive(Debug)]
pub struct Dataplane {
    /// The userspace engine's packet logic.
    pub router: Arc<Router>,
    /// The kernel path, when attached.
    pub kernel: Option<Kernel>,
    /// `ebpf` or `userspace`: what carries PLAIN links.
    pub engine: &'static str,
    /// Why this engine (the attach mode, or why the kernel path is off).
    pub reason: String,
    /// Average RTT to each peer (by node id) from the last connectivity test, in seconds.
    pub rtt: std::sync::Mutex<std::collections::HashMap<String, f64>>,
}

impl Dataplane {
    /// Applies a peer-table command to both engines. A kernel map update that fails leaves
    /// the peer to the userspace engine (its packets then reach the TUN reader).
    pub fn apply(&self, cmd: &Command, local_index: u32, underlay_ip: Option<Ipv4Addr>) {
        self.router.apply(Instant::now(), local_index, cmd);
        if let Some(k) = &self.kernel
            && let Err(error) = k.apply(cmd, local_index, underlay_ip)
        {
            warn!(%error, ?cmd, "eBPF map update failed; the userspace engine carries the peer");
        }
    }

    /// Every peer with its traffic; peers the kernel carries show the kernel's counters
    /// added to what the userspace engine saw (packets in flight while a peer was installed).
    pub fn peers(&self, now: Instant) -> Vec<PeerStatus> {
        let mut peers = self.router.status(now);
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
    rx_mode: AttachMode,
    router: Arc<Router>,
) -> anyhow::Result<Dataplane> {
    let userspace = |reason: String| Dataplane {
        router: router.clone(),
        kernel: None,
        engine: "userspace",
        reason,
        rtt: std::sync::Mutex::default(),
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
            rx_mode,
            cfg.listen_port,
            facts.private_cidr.map(|(ip, _)| ip),
        )
        .map_err(anyhow::Error::from),
    };
    match attempt {
        Ok(k) => {
            let reason = format!(
                "PLAIN links in the kernel: {} on {} ({}), TC egress on {}; SEALED links in userspace",
                match k.report.mode.name() {
                    "tc" => "TC ingress",
                    "driver" => "XDP driver mode",
                    _ => "XDP generic mode",
                },
                k.report.underlay,
                k.report.reason,
                cfg.interface
            );
            Ok(Dataplane {
                router,
                kernel: Some(k),
                engine: "ebpf",
                reason,
                rtt: std::sync::Mutex::default(),
            })
        }
        Err(error) if cfg.dataplane == DataplaneChoice::Auto => {
            warn!(%error, "eBPF dataplane unavailable; using the userspace engine");
            Ok(userspace(format!("eBPF unavailable: {error:#}")))
        }
        Err(error) => Err(error.context("dataplane = ebpf")),
    }
}

/// The receive hook order for the configured choice; `auto` puts TC ingress first on veth
/// devices (see [`AttachMode::AutoTcFirst`]).
pub(super) async fn rx_attach_mode(
    choice: config::RxHookChoice,
    underlay: Option<&str>,
) -> AttachMode {
    match choice {
        config::RxHookChoice::XdpDriver => AttachMode::Driver,
        config::RxHookChoice::XdpGeneric => AttachMode::Generic,
        config::RxHookChoice::Tc => AttachMode::Tc,
        config::RxHookChoice::Auto => match underlay {
            Some(iface) => match netconf::link_kind(iface).await {
                Ok(Some(kind)) if kind == "veth" => AttachMode::AutoTcFirst,
                Ok(_) => AttachMode::Auto,
                Err(error) => {
                    debug!(%error, iface, "link kind unknown; XDP first");
                    AttachMode::Auto
                }
            },
            None => AttachMode::Auto,
        },
    }
}
