//! The agent's Prometheus endpoint: per-peer traffic, handshake age and drops by reason,
//! read from the engine's counters at scrape time (nothing is kept twice).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{Router as Http, http::header, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tracing::{info, warn};

use super::{dataplane::Dataplane, status::AgentInfo};
use crate::engine::router::PeerStatus;

#[derive(Debug)]
struct EngineCollector {
    dp: Arc<Dataplane>,
    /// The agent's network, node id and state, as `cladnet-agent status` shows them.
    info: Arc<Mutex<AgentInfo>>,
}

type Labels = Vec<(&'static str, String)>;

impl EngineCollector {
    fn peer_labels(&self, network: &str, p: &PeerStatus) -> Labels {
        vec![
            ("network", network.to_owned()),
            ("peer", p.node_id.clone()),
            ("overlay_ip", p.overlay_ip.to_string()),
            ("mode", p.mode.to_owned()),
            ("engine", p.engine.to_owned()),
        ]
    }
}

fn family<T: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, T)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let peers = self.dp.peers(Instant::now());
        let info = self.info.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let net = info.network.as_str();
        let counter = |f: fn(&PeerStatus) -> u64| {
            peers
                .iter()
                .map(move |p| (self.peer_labels(net, p), ConstCounter::new(f(p))))
                .collect::<Vec<_>>()
        };
        let e = &mut encoder;
        family(
            e,
            "cladnet_peer_tx_bytes",
            "Inner bytes sent to the peer.",
            MetricType::Counter,
            counter(|p| p.traffic.tx_bytes),
        )?;
        family(
            e,
            "cladnet_peer_tx_packets",
            "Packets sent to the peer.",
            MetricType::Counter,
            counter(|p| p.traffic.tx_packets),
        )?;
        family(
            e,
            "cladnet_peer_rx_bytes",
            "Inner bytes received from the peer and delivered.",
            MetricType::Counter,
            counter(|p| p.traffic.rx_bytes),
        )?;
        family(
            e,
            "cladnet_peer_rx_packets",
            "Packets received from the peer and delivered.",
            MetricType::Counter,
            counter(|p| p.traffic.rx_packets),
        )?;
        family(
            e,
            "cladnet_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with the peer (SEALED links).",
            MetricType::Gauge,
            peers.iter().filter_map(|p| {
                Some((
                    self.peer_labels(net, p),
                    ConstGauge::new(i64::try_from(p.handshake_age_secs?).unwrap_or(i64::MAX)),
                ))
            }),
        )?;
        family(
            e,
            "cladnet_peer_path_mtu",
            "Largest outer IPv4 packet the path to the peer carries, as path MTU discovery found it.",
            MetricType::Gauge,
            peers.iter().filter_map(|p| {
                Some((
                    self.peer_labels(net, p),
                    ConstGauge::new(i64::from(p.path_mtu?.path_mtu)),
                ))
            }),
        )?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        family(
            e,
            "cladnet_peer_last_receive_age_seconds",
            "Seconds since the last packet from the peer was delivered.",
            MetricType::Gauge,
            peers.iter().filter(|p| p.traffic.last_rx_ms > 0).map(|p| {
                let age = now_ms.saturating_sub(u128::from(p.traffic.last_rx_ms)) as f64 / 1000.0;
                (self.peer_labels(net, p), ConstGauge::new(age))
            }),
        )?;
        family(
            e,
            "cladnet_drops",
            "Packets dropped by the dataplane, by reason.",
            MetricType::Counter,
            self.dp.drops().into_iter().map(|(engine, reason, n)| {
                (
                    vec![("reason", reason.to_owned()), ("engine", engine.to_owned())],
                    ConstCounter::new(n),
                )
            }),
        )?;
        let workers = self.dp.workers.stats();
        family(
            e,
            "cladnet_userspace_worker_packets",
            "What each packet worker of the userspace engine read: TUN reads (tun, a TSO \
             super-packet counts once) and datagrams received on its socket (udp).",
            MetricType::Counter,
            workers.iter().enumerate().flat_map(|(i, w)| {
                [("tun", w.tun_reads), ("udp", w.datagrams)].map(|(from, n)| {
                    (
                        vec![("worker", i.to_string()), ("from", from.to_owned())],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        family(
            e,
            "cladnet_peer_rtt_seconds",
            "Average round-trip time to the peer over the overlay, from the last connectivity test.",
            MetricType::Gauge,
            peers.iter().filter_map(|p| {
                Some((
                    self.peer_labels(net, p),
                    ConstGauge::new(self.dp.rtt(&p.node_id)?),
                ))
            }),
        )?;
        family(
            e,
            "cladnet_agent_info",
            "The agent's network, node id, state and dataplane engine (value 1).",
            MetricType::Gauge,
            [(
                vec![
                    ("network", info.network.clone()),
                    ("node_id", info.node_id.clone()),
                    ("state", info.state.clone()),
                    ("engine", self.dp.engine.to_owned()),
                ],
                ConstGauge::new(1_i64),
            )],
        )?;
        family(
            e,
            "cladnet_agent_watch_records_rejected",
            "Watch records the agent could not use (logged and skipped, never fatal).",
            MetricType::Counter,
            [(
                vec![("network", info.network.clone())],
                ConstCounter::new(info.rejected_watch_records),
            )],
        )?;
        let relay = self.dp.router.relay();
        family(
            e,
            "cladnet_peer_path",
            "The path to each peer (value 1): direct, relay (via names the relay), \
             connecting or unreachable; PLAIN links are always direct.",
            MetricType::Gauge,
            peers.iter().filter_map(|p| {
                let labels = vec![
                    ("network", net.to_owned()),
                    ("peer", p.node_id.clone()),
                    ("path", p.path.clone()?),
                    ("via", p.via.clone().unwrap_or_default()),
                ];
                Some((labels, ConstGauge::new(1_i64)))
            }),
        )?;
        let counters = relay.counters();
        family(
            e,
            "cladnet_relay_forwarded_bytes",
            "Bytes this node forwarded as a relay.",
            MetricType::Counter,
            [(Labels::new(), ConstCounter::new(counters.forwarded.1))],
        )?;
        family(
            e,
            "cladnet_relay_forwarded_frames",
            "Frames this node forwarded as a relay.",
            MetricType::Counter,
            [(Labels::new(), ConstCounter::new(counters.forwarded.0))],
        )?;
        let limits = counters.limits.map(|l| {
            [
                ("packets_per_sec", l.packets_per_sec),
                ("packet_burst", l.packet_burst),
                ("bytes_per_sec", l.bytes_per_sec),
                ("byte_burst", l.byte_burst),
            ]
        });
        family(
            e,
            "cladnet_relay_limit",
            "The per-member limits this node applies as a relay (absent when not serving).",
            MetricType::Gauge,
            limits.into_iter().flatten().map(|(kind, v)| {
                (
                    vec![("limit", kind.to_owned())],
                    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
                )
            }),
        )?;
        family(
            e,
            "cladnet_relay_refused",
            "Relay frames this node refused as a relay, by reason.",
            MetricType::Counter,
            counters
                .refused
                .into_iter()
                .map(|(reason, n)| (vec![("reason", reason)], ConstCounter::new(n))),
        )?;
        family(
            e,
            "cladnet_relay_coordinated_probes",
            "Coordinated probe attempts (the controller told this node and a peer on a \
             non-direct path to probe each other at once) that sent probes, by outcome: \
             direct (the path was direct after the burst) or not_direct.",
            MetricType::Counter,
            [
                ("direct", counters.coordinated_direct),
                (
                    "not_direct",
                    counters
                        .coordinated_probes
                        .saturating_sub(counters.coordinated_direct),
                ),
            ]
            .map(|(outcome, n)| (vec![("outcome", outcome.to_owned())], ConstCounter::new(n))),
        )?;
        family(
            e,
            "cladnet_peers",
            "Peers installed in the dataplane.",
            MetricType::Gauge,
            [(
                Labels::new(),
                ConstGauge::new(i64::try_from(peers.len()).unwrap_or(i64::MAX)),
            )],
        )
    }
}

/// Binds `addr` (a taken port is a start-up error, not a silent gap in monitoring) and
/// serves `/metrics` there in the background.
pub async fn start(
    addr: SocketAddr,
    dp: Arc<Dataplane>,
    info: Arc<Mutex<AgentInfo>>,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector { dp, info }));
    let registry = Arc::new(registry);
    let app = Http::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                if let Err(error) = encode(&mut body, &registry) {
                    warn!(%error, "encoding metrics failed");
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics endpoint {addr}: {e}"))?;
    info!(%addr, "metrics at /metrics");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "metrics endpoint stopped");
        }
    });
    Ok(())
}
