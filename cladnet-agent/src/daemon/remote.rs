//! What the agent does on the controller's behalf besides forwarding: remote commands, the
//! connectivity test, traffic statistics for the console, and kernel updates for endpoints
//! learnt from packets.

use cladnet_core::table::Command;
use cladnet_proto::v1 as pb;
use tracing::{debug, info, warn};

use super::{Agent, conntest};
use crate::engine::router::PeerEvent;

impl Agent {
    /// A PLAIN peer's port learnt from its packets (see `Router::learn_plain_port`) goes into
    /// the kernel maps too, so the kernel sends there and accepts from there.
    pub(super) fn follow_learned_endpoint(&self, ev: &PeerEvent) {
        let PeerEvent::EndpointChanged { node_id, .. } = ev else {
            return;
        };
        if let Some(config) = self.dp.router.peer_config(node_id)
            && config.mode == cladnet_core::policy::LinkMode::Plain
            && let Some(k) = &self.dp.kernel
        {
            let underlay_ip = self.facts.private_cidr.map(|(ip, _)| ip);
            if let Err(error) = k.apply(&Command::UpsertPeer(config), self.local_index, underlay_ip)
            {
                warn!(%error, node_id, "updating the kernel with a learnt endpoint failed");
            }
        }
    }

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
                endpoint: p.endpoint.map(|e| e.to_string()).unwrap_or_default(),
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
            })
            .collect();
        let req = self.report(|r| r.peer_stats = peer_stats);
        if let Err(error) = self.client.report(&self.session, req).await {
            debug!(%error, "traffic statistics not delivered");
            self.session_lost |= error.is_unauthenticated();
        }
    }

    /// Remote commands (cb-network's): `down` withdraws every peer from the dataplane (the
    /// interface keeps its address) and reports `down`; `up` restores them. Encryption is a
    /// network policy both ends of a link must agree on: the controller turns the encryption
    /// commands into a policy change and never sends them; should one arrive it is refused
    /// with a pointer to the policy.
    pub(super) fn on_command(&mut self, c: &pb::Command) -> Vec<Command> {
        info!(
            command = c.command_type,
            id = c.command_id,
            "remote command"
        );
        match c.command_type.as_str() {
            "down" | "up" => {
                let down = c.command_type == "down";
                self.update_info(|i| i.state.clone_from(&c.command_type));
                self.pending = Some(self.report(|r| {
                    r.state = c.command_type.clone();
                }));
                self.table.set_suspended(down)
            }
            other => {
                warn!(
                    command = other,
                    "encryption is the network's policy (cladnet network update --encryption); ignoring"
                );
                Vec::new()
            }
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
                    ip: self.table.peer(h)?.overlay_ip,
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
