//! What the agent does on the controller's behalf besides forwarding: remote commands, the
//! connectivity test and traffic statistics for the console.

use cladnet_core::node::WatchEvent;
use cladnet_proto::v1 as pb;
use tracing::{debug, info, warn};

use super::{Agent, conntest};

impl Agent {
    /// Sends the per-peer traffic counters (best effort: the next round replaces a lost one).
    pub(super) async fn report_stats(&mut self) {
        let peers = self.dp.peers(std::time::Instant::now());
        if peers.is_empty() {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let peer_stats = peers
            .into_iter()
            .map(|p| pb::PeerStats {
                host_id: p.node_id,
                mode: p.mode.into(),
                // A relayed peer's endpoint is its relay address (240.0.0.0/4), which means
                // nothing outside this agent: the path and `via` say where it goes.
                endpoint: crate::engine::relay::real(p.endpoint)
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                tx_bytes: p.traffic.tx_bytes,
                rx_bytes: p.traffic.rx_bytes,
                tx_packets: p.traffic.tx_packets,
                rx_packets: p.traffic.rx_packets,
                handshake_age_seconds: p
                    .handshake_age_secs
                    .map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)),
                last_rx_age_seconds: match p.traffic.last_rx_ms {
                    0 => -1,
                    at => i64::try_from(now_ms.saturating_sub(at) / 1000).unwrap_or(i64::MAX),
                },
                path_mtu: p.path_mtu.map_or(0, |m| m.path_mtu),
                path: p.path.unwrap_or_default(),
                via: p.via.unwrap_or_default(),
            })
            .collect();
        let req = self.session.report(|r| r.peer_stats = peer_stats);
        if let Err(error) = self.session.send(req).await {
            debug!(%error, "traffic statistics not delivered");
        }
    }

    /// Remote commands (cb-network's): `down` withdraws every peer from the dataplane (the
    /// interface keeps its address) and reports `down`; `up` restores them. Encryption is a
    /// network policy both ends of a link must agree on: the controller turns the encryption
    /// commands into a policy change and never sends them; should one arrive it is refused
    /// with a pointer to the policy.
    pub(super) fn on_command(&mut self, c: &pb::Command) -> Option<WatchEvent> {
        info!(
            command = c.command_type,
            id = c.command_id,
            "remote command"
        );
        match c.command_type.as_str() {
            "down" | "up" => {
                let down = c.command_type == "down";
                self.update_info(|i| i.state.clone_from(&c.command_type));
                let report = self.session.report(|r| r.state.clone_from(&c.command_type));
                self.session.set_pending(report);
                Some(WatchEvent::Suspend(down))
            }
            "advertise-routes" => {
                match self.advertiser.apply_command(c) {
                    Ok(_) => {}
                    Err(reason) => {
                        warn!(id = c.command_id, %reason, "advertise-routes command refused");
                    }
                }
                None
            }
            other => {
                warn!(
                    command = other,
                    "encryption is the network's policy (cladnet network update --encryption); ignoring"
                );
                None
            }
        }
    }

    /// A coordinated probe (the controller saw this node and `p.host_id` both on a non-direct
    /// path to each other): a burst of direct probes at the start time, converted to this
    /// agent's clock. The outcome is logged (info) and counted when the burst is over.
    pub(super) fn on_probe(&mut self, p: &pb::ProbeRequest) {
        let now = std::time::Instant::now();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let Some(at) = crate::engine::relay::start_instant(now, now_ms, p.start_at_ms) else {
            debug!(
                peer = p.host_id,
                id = p.probe_id,
                start_at_ms = p.start_at_ms,
                "stale coordinated probe request ignored"
            );
            return;
        };
        let endpoints: Vec<std::net::SocketAddrV4> =
            p.endpoints.iter().filter_map(|e| e.parse().ok()).collect();
        let relay = self.dp.router.relay();
        if relay.coordinate(&self.dp.router, &p.host_id, at, &endpoints) {
            debug!(
                peer = p.host_id,
                id = p.probe_id,
                in_ms = at.saturating_duration_since(now).as_millis() as u64,
                endpoints = ?endpoints,
                "coordinated probe scheduled"
            );
        } else {
            debug!(
                peer = p.host_id,
                id = p.probe_id,
                "coordinated probe request for a peer without a SEALED path here; ignored"
            );
        }
    }

    /// Runs a connectivity test this node is part of, in the background; the results come
    /// back through `tests` and are reported from the main loop.
    pub(super) fn start_test(&mut self, t: pb::ConnectivityTest) {
        let me = self.identity.node_id.clone();
        if !t.host_ids.contains(&me) {
            return;
        }
        let Some(source) = self.overlay_ip else {
            return;
        };
        let targets: Vec<conntest::Target> = t
            .host_ids
            .iter()
            .filter(|h| **h != me)
            .filter_map(|h| {
                Some(conntest::Target {
                    host_id: h.clone(),
                    ip: self.dp.router.forwarding().peer(h)?.overlay_ip,
                })
            })
            .collect();
        info!(
            test_id = t.test_id,
            peers = targets.len(),
            trials = t.trial_count,
            "connectivity test"
        );
        let tx = self.tests.0.clone();
        tokio::spawn(async move {
            let results = conntest::run(&me, source, targets, t.trial_count.max(1)).await;
            let _ = tx.send((t.test_id, results));
        });
    }
}
