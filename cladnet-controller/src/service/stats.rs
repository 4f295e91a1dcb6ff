//! Agents' traffic statistics (per-peer bytes, packets, handshake age), for the web console.
//!
//! Each agent reports its per-peer counters every 10 s. The controller keeps the last report of
//! each node under `/cladnet/v1/stats/{net}/{node}`: in the store, so every controller of an HA
//! group serves the same numbers whichever one the agent reports to, but *outside*
//! `/cladnet/v1/watched/{net}/`, the prefix the watch hub follows; otherwise every report would
//! be fanned out to every agent's Watch stream (n agents × n streams). The keys are attached
//! to a lease, so a node that stops reporting (crashed, released, deleted) disappears 20-30 s
//! later without anyone cleaning up.
//!
//! One lease per controller serves all nodes: granted with a 30 s TTL and replaced by a fresh
//! one every 10 s, so a key written with it lives at least 20 s (two report intervals) and at
//! most 30 s after its last write, at the cost of one lease grant per 10 s per controller, not
//! one per report, and no keep-alives.

use std::time::{Duration, Instant};

use cladnet_proto::v1 as pb;
use cladnet_store::{Error as StoreError, LeaseId};
use serde::{Deserialize, Serialize};

use super::Controller;
use tracing::{info, warn};

use crate::{
    auth::random_hex,
    error::{ControllerError, Result},
    keys,
    model::{self, ProbeRecord, SCHEMA, Versioned},
    validate,
};

/// How long a report outlives its lease's grant.
const STATS_TTL: Duration = Duration::from_secs(30);
/// A fresh lease is granted this often: reports written with it live `STATS_TTL` minus this,
/// at least.
const LEASE_ROTATION: Duration = Duration::from_secs(10);
/// More peers than this in one report is refused.
const MAX_PEER_STATS: usize = 4096;
/// At most this many of a report's non-direct peers are checked for a coordinated probe (the
/// other side's report is read for each); the rest wait for the next report.
const MAX_PROBES_PER_REPORT: usize = 64;

/// The shared lease of this controller's statistics keys and when it was granted.
pub(super) type StatsLease = tokio::sync::Mutex<Option<(LeaseId, Instant)>>;

/// A node's last report, as stored.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct StatsRecord {
    schema: u32,
    node_id: String,
    /// Unix milliseconds (controller clock) of the report.
    reported_at_ms: i64,
    peers: Vec<PeerStatsRecord>,
}

impl Versioned for StatsRecord {
    fn schema(&self) -> u32 {
        self.schema
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct PeerStatsRecord {
    node_id: String,
    mode: String,
    endpoint: String,
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
    /// As reported (at `reported_at_ms`); -1 = none.
    handshake_age_secs: i64,
    /// As reported; -1 = none.
    last_rx_age_secs: i64,
    /// Path MTU towards the peer; 0 = not known (and in records from older agents).
    #[serde(default)]
    path_mtu: u32,
    /// `direct`, `relay`, `connecting` or `unreachable`; empty = not known (and in records
    /// from older agents).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    path: String,
    /// The relay's node id while `path` is `relay`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    via: String,
}

/// What an agent last reported about its link to one peer, for GetPeer's links.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub(super) struct ReportedLink {
    /// Path MTU; 0 = not known.
    pub path_mtu: u32,
    /// Path (`direct`, `relay`, ...); empty = not known.
    pub path: String,
    /// The relay's node id while relayed.
    pub via: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An age reported at `reported_at_ms`, as of `now_ms` (-1 stays -1).
fn aged(age_secs: i64, reported_at_ms: i64, now_ms: i64) -> i64 {
    if age_secs < 0 {
        -1
    } else {
        age_secs.saturating_add((now_ms - reported_at_ms).max(0) / 1000)
    }
}

fn validate_peer(i: usize, p: &pb::PeerStats) -> Result<PeerStatsRecord> {
    let field = |name: &str| format!("peerStats[{i}].{name}");
    validate::host_id(&field("hostId"), &p.host_id)?;
    if !matches!(p.mode.as_str(), "" | "plain" | "sealed") {
        return Err(ControllerError::invalid(
            field("mode"),
            format!("{:?} is not plain or sealed", p.mode),
        ));
    }
    if !p.endpoint.is_empty() && p.endpoint.parse::<std::net::SocketAddr>().is_err() {
        return Err(ControllerError::invalid(
            field("endpoint"),
            format!("{:?} is not an ip:port", p.endpoint),
        ));
    }
    for (name, age) in [
        ("handshakeAgeSeconds", p.handshake_age_seconds),
        ("lastRxAgeSeconds", p.last_rx_age_seconds),
    ] {
        if age < -1 {
            return Err(ControllerError::invalid(
                field(name),
                "must be -1 (none) or a number of seconds",
            ));
        }
    }
    if p.path_mtu != 0 && !(68..=65_535).contains(&p.path_mtu) {
        return Err(ControllerError::invalid(
            field("pathMtu"),
            format!(
                "{} is not 0 (unknown) or an IPv4 MTU (68..=65535)",
                p.path_mtu
            ),
        ));
    }
    validate::link_path(&field("path"), &p.path, &field("via"), &p.via)?;
    Ok(PeerStatsRecord {
        node_id: p.host_id.clone(),
        mode: p.mode.clone(),
        endpoint: p.endpoint.clone(),
        tx_bytes: p.tx_bytes,
        rx_bytes: p.rx_bytes,
        tx_packets: p.tx_packets,
        rx_packets: p.rx_packets,
        handshake_age_secs: p.handshake_age_seconds,
        last_rx_age_secs: p.last_rx_age_seconds,
        path_mtu: p.path_mtu,
        path: p.path.clone(),
        via: p.via.clone(),
    })
}

impl Controller {
    /// Stores node `node`'s per-peer statistics (its session was checked). Returns the store
    /// revision of the write.
    pub(super) async fn store_stats(
        &self,
        net: &str,
        node: &str,
        stats: &[pb::PeerStats],
    ) -> Result<i64> {
        if stats.len() > MAX_PEER_STATS {
            return Err(ControllerError::invalid(
                "peerStats",
                format!("more than {MAX_PEER_STATS} entries"),
            ));
        }
        let peers: Vec<PeerStatsRecord> = stats
            .iter()
            .enumerate()
            .map(|(i, p)| validate_peer(i, p))
            .collect::<Result<_>>()?;
        self.check_relays(net, &peers).await?;
        let record = StatsRecord {
            schema: SCHEMA,
            node_id: node.to_owned(),
            reported_at_ms: now_ms(),
            peers,
        };
        let key = keys::node_stats(net, node);
        let value = model::encode(&record);
        // A lease can vanish under us (etcd lost it, the store was restored): one retry with a
        // fresh one.
        let lease = self.stats_lease(false).await?;
        let revision = match self.store.put(&key, value.clone(), Some(lease)).await {
            Err(StoreError::LeaseNotFound { .. }) => {
                let lease = self.stats_lease(true).await?;
                self.store.put(&key, value, Some(lease)).await?
            }
            other => other?,
        };
        self.coordinate_probes(net, node, &record.peers).await;
        Ok(revision)
    }

    /// Tells both agents of every pair that is not connecting to probe each other at once
    /// (see [`super::probes`]): `node` just reported `peers`. Best effort: a store error is
    /// logged, not returned (the report itself was stored).
    async fn coordinate_probes(&self, net: &str, node: &str, peers: &[PeerStatsRecord]) {
        let now = Instant::now();
        let stuck: Vec<String> = {
            let mut c = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            c.prune(now);
            for p in peers {
                c.observe(now, net, node, &p.node_id, &p.path);
            }
            let listed: Vec<&str> = peers.iter().map(|p| p.node_id.as_str()).collect();
            c.retain_reported(net, node, &listed);
            peers
                .iter()
                .filter(|p| c.stuck(now, net, node, &p.node_id))
                .map(|p| p.node_id.clone())
                .take(MAX_PROBES_PER_REPORT)
                .collect()
        };
        for peer in stuck {
            // The other side's view, from its last report (whichever controller took it).
            let theirs = self
                .reported_links(net, &peer)
                .await
                .remove(node)
                .map(|l| l.path)
                .unwrap_or_default();
            let due = {
                let mut c = self.probes.lock().unwrap_or_else(|e| e.into_inner());
                c.observe(now, net, &peer, node, &theirs);
                c.due(now, net, node, &peer)
            };
            if due && let Err(error) = self.send_probes(net, node, &peer).await {
                warn!(network = %net, node, peer, %error, "coordinated probe not sent");
            }
        }
    }

    /// Writes a probe request for each of `a` and `b` naming the other, with one start time.
    async fn send_probes(&self, net: &str, a: &str, b: &str) -> Result<()> {
        let (ra, _) = self.peer(net, a).await?;
        let (rb, _) = self.peer(net, b).await?;
        let start_at_ms = now_ms() + super::probes::PROBE_LEAD.as_millis() as i64;
        let probe_id = random_hex(6);
        let lease = self.stats_lease(false).await?;
        for (to, other) in [(&ra, &rb), (&rb, &ra)] {
            let endpoints = [other.public_endpoint, other.private_endpoint]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .collect();
            let record = ProbeRecord {
                schema: SCHEMA,
                peer: other.node_id.clone(),
                start_at_ms,
                endpoints,
                probe_id: probe_id.clone(),
            };
            self.store
                .put(
                    &keys::probe(net, &to.node_id),
                    model::encode(&record),
                    Some(lease),
                )
                .await?;
        }
        info!(network = %net, a, b, probe_id, "pair not connecting directly: coordinated probe requested");
        Ok(())
    }

    /// Refuses a report naming a relay (`via`) that is not a peer of the network, naming the
    /// first entry that does. One read per distinct relay (a network has few), not a read of
    /// every peer per report.
    async fn check_relays(&self, net: &str, peers: &[PeerStatsRecord]) -> Result<()> {
        let mut checked: Vec<&str> = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            if p.via.is_empty() || checked.contains(&p.via.as_str()) {
                continue;
            }
            if self.store.get(&keys::peer(net, &p.via)).await?.is_none() {
                return Err(ControllerError::invalid(
                    format!("peerStats[{i}].via"),
                    format!("{:?} is not a peer of network {net:?}", p.via),
                ));
            }
            checked.push(&p.via);
        }
        Ok(())
    }

    /// The path MTU, path and relay towards each peer (by node id) in node `node`'s last
    /// statistics report; empty when there is none (statistics are best effort, so a read
    /// error is no error).
    pub(super) async fn reported_links(
        &self,
        net: &str,
        node: &str,
    ) -> std::collections::HashMap<String, ReportedLink> {
        let Ok(Some(kv)) = self.store.get(&keys::node_stats(net, node)).await else {
            return Default::default();
        };
        let Ok(record) = model::decode::<StatsRecord>(&kv) else {
            return Default::default();
        };
        record
            .peers
            .into_iter()
            .map(|p| {
                let link = ReportedLink {
                    path_mtu: p.path_mtu,
                    path: p.path,
                    via: p.via,
                };
                (p.node_id, link)
            })
            .collect()
    }

    /// The lease statistics keys are written with: the current one while it is younger than
    /// [`LEASE_ROTATION`] (unless `fresh`), else a newly granted one.
    async fn stats_lease(&self, fresh: bool) -> Result<LeaseId> {
        let mut held = self.stats_lease.lock().await;
        if let Some((id, granted)) = *held
            && !fresh
            && granted.elapsed() < LEASE_ROTATION
        {
            return Ok(id);
        }
        let id = self.store.lease_grant(STATS_TTL).await?;
        *held = Some((id, Instant::now()));
        Ok(id)
    }

    /// The last statistics of every node of a network that reported in the last 20-30 s,
    /// sorted by node id; ages are as of now.
    pub async fn network_stats(&self, net: &str) -> Result<pb::NetworkStats> {
        validate::network_id("cladnetId", net)?;
        self.network(net).await?;
        let range = self.store.range(&keys::stats(net)).await?;
        let now = now_ms();
        let nodes = range
            .kvs
            .iter()
            .map(|kv| {
                let r: StatsRecord = model::decode(kv)?;
                Ok(pb::NodeStats {
                    host_id: r.node_id,
                    reported_at: r.reported_at_ms / 1000,
                    peers: r
                        .peers
                        .into_iter()
                        .map(|p| pb::PeerStats {
                            host_id: p.node_id,
                            mode: p.mode,
                            endpoint: p.endpoint,
                            tx_bytes: p.tx_bytes,
                            rx_bytes: p.rx_bytes,
                            tx_packets: p.tx_packets,
                            rx_packets: p.rx_packets,
                            handshake_age_seconds: aged(
                                p.handshake_age_secs,
                                r.reported_at_ms,
                                now,
                            ),
                            last_rx_age_seconds: aged(p.last_rx_age_secs, r.reported_at_ms, now),
                            path_mtu: p.path_mtu,
                            path: p.path,
                            via: p.via,
                        })
                        .collect(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(pb::NetworkStats {
            cladnet_id: net.to_owned(),
            nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_grow_with_the_time_since_the_report() {
        assert_eq!(aged(-1, 0, 50_000), -1);
        assert_eq!(aged(3, 10_000, 10_999), 3);
        assert_eq!(aged(3, 10_000, 15_000), 8);
        // A clock that stepped back does not make ages negative or smaller.
        assert_eq!(aged(3, 10_000, 9_000), 3);
    }

    #[test]
    fn bad_entries_name_their_field() {
        let ok = pb::PeerStats {
            host_id: "node-b".into(),
            mode: "sealed".into(),
            endpoint: "198.51.100.2:8055".into(),
            handshake_age_seconds: 4,
            last_rx_age_seconds: -1,
            ..Default::default()
        };
        assert!(validate_peer(0, &ok).is_ok());
        let bad_mode = pb::PeerStats {
            mode: "clear".into(),
            ..ok.clone()
        };
        let e = validate_peer(2, &bad_mode).unwrap_err().to_string();
        assert!(e.starts_with("peerStats[2].mode: "), "{e}");
        let bad_age = pb::PeerStats {
            handshake_age_seconds: -5,
            ..ok.clone()
        };
        let e = validate_peer(0, &bad_age).unwrap_err().to_string();
        assert!(e.starts_with("peerStats[0].handshakeAgeSeconds: "), "{e}");
        let mtu = pb::PeerStats {
            path_mtu: 1400,
            ..ok.clone()
        };
        assert_eq!(validate_peer(0, &mtu).unwrap().path_mtu, 1400);
        let bad_mtu = pb::PeerStats {
            path_mtu: 40,
            ..ok.clone()
        };
        let e = validate_peer(1, &bad_mtu).unwrap_err().to_string();
        assert!(e.starts_with("peerStats[1].pathMtu: "), "{e}");
        let relayed = pb::PeerStats {
            path: "relay".into(),
            via: "node-r".into(),
            ..ok.clone()
        };
        let r = validate_peer(0, &relayed).unwrap();
        assert_eq!((r.path.as_str(), r.via.as_str()), ("relay", "node-r"));
        let bad_path = pb::PeerStats {
            path: "relayed".into(),
            ..ok.clone()
        };
        let e = validate_peer(3, &bad_path).unwrap_err().to_string();
        assert!(e.starts_with("peerStats[3].path: "), "{e}");
        let direct_via = pb::PeerStats {
            path: "direct".into(),
            via: "node-r".into(),
            ..ok.clone()
        };
        let e = validate_peer(4, &direct_via).unwrap_err().to_string();
        assert!(e.starts_with("peerStats[4].via: "), "{e}");
        let bad_id = pb::PeerStats {
            host_id: "a/b".into(),
            ..ok
        };
        assert!(validate_peer(0, &bad_id).is_err());
    }
}
