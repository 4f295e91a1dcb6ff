//! `cladnet-agent status`: the running agent answers on a unix socket in its data directory
//! (mode 0600, like WireGuard's UAPI socket) with a JSON snapshot of its state; the command
//! prints it the way `wg show` does.

use std::{
    fmt::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt as _, net::UnixListener};
use tracing::{debug, warn};

use super::dataplane::Dataplane;
use crate::engine::relay::{PathStatus, RelayCounters};

/// Name of the socket in the data directory.
pub const SOCKET: &str = "agent.sock";

/// The agent's own facts, updated by the main loop.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct AgentInfo {
    /// Network id.
    pub network: String,
    /// Node id.
    pub node_id: String,
    /// Public key (base64).
    pub public_key: String,
    /// Overlay interface.
    pub interface: String,
    /// Overlay address with prefix, once joined.
    pub overlay: String,
    /// Tunnel UDP port.
    pub listen_port: u16,
    /// Public endpoint as the reflector saw it.
    pub public_endpoint: String,
    /// Dataplane engine and why.
    pub engine: String,
    /// Controller currently used.
    pub controller: String,
    /// `up`, `down`, `joining`.
    pub state: String,
    /// Watch records the agent could not use (logged and skipped).
    #[serde(default)]
    pub rejected_watch_records: u64,
}

/// What the socket returns.
#[derive(Debug, Deserialize, Serialize)]
pub struct Status {
    /// The agent.
    pub agent: AgentInfo,
    /// Its peers.
    pub peers: Vec<PeerLine>,
    /// Non-zero drop counters by engine and reason.
    pub drops: Vec<DropLine>,
    /// Every SEALED peer's path: direct, through a relay, or neither.
    #[serde(default)]
    pub paths: Vec<PathStatus>,
    /// What this node did as a relay.
    #[serde(default)]
    pub relay: RelayCounters,
}

/// A non-zero drop counter, labelled like `cladnet_drops_total`.
#[derive(Debug, Deserialize, Serialize)]
pub struct DropLine {
    /// `ebpf` or `userspace`.
    pub engine: String,
    /// Why the packets were dropped, e.g. `wg_replay`.
    pub reason: String,
    /// Packets dropped.
    pub count: u64,
}

/// One peer (a serializable copy of [`crate::engine::router::PeerStatus`]).
#[derive(Debug, Deserialize, Serialize)]
pub struct PeerLine {
    /// Node id.
    pub node_id: String,
    /// Overlay address.
    pub overlay_ip: String,
    /// `plain` or `sealed` (the metrics' `mode` label).
    pub mode: String,
    /// The engine carrying the link, `ebpf` or `userspace` (the metrics' `engine` label).
    pub engine: String,
    /// Current endpoint.
    pub endpoint: Option<String>,
    /// Seconds since the last handshake.
    pub handshake_age_secs: Option<u64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Path MTU towards the peer (largest outer IPv4 packet known to get through), once
    /// path MTU discovery probed it.
    #[serde(default)]
    pub path_mtu: Option<u32>,
    /// Route MTU on the overlay device for the peer (largest inner packet), once a search
    /// completed.
    #[serde(default)]
    pub route_mtu: Option<u32>,
    /// Path MTU search state (base, searching, search_complete, error).
    #[serde(default)]
    pub path_mtu_state: Option<String>,
    /// `direct`, `relay`, `connecting` or `unreachable` (PLAIN links: always `direct`); none
    /// for a SEALED peer not looked at yet.
    #[serde(default)]
    pub path: Option<String>,
    /// The relay's node id while relayed.
    #[serde(default)]
    pub via: Option<String>,
}

/// Serves status snapshots on `<data_dir>/agent.sock` in the background.
pub fn start(
    data_dir: &Path,
    dp: Arc<Dataplane>,
    info: Arc<Mutex<AgentInfo>>,
) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(SOCKET);
    // A socket left by a crashed agent would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("binding the status socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let status = snapshot(&dp, &info);
            let body = serde_json::to_vec(&status).unwrap_or_default();
            if let Err(error) = conn.write_all(&body).await {
                debug!(%error, "status client went away");
            }
        }
    });
    Ok(path)
}

fn snapshot(dp: &Dataplane, info: &Mutex<AgentInfo>) -> Status {
    let agent = info.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Status {
        agent,
        peers: dp
            .peers(Instant::now())
            .into_iter()
            .map(|p| PeerLine {
                node_id: p.node_id,
                overlay_ip: p.overlay_ip.to_string(),
                mode: p.mode.to_owned(),
                engine: p.engine.to_owned(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                handshake_age_secs: p.handshake_age_secs,
                rx_bytes: p.traffic.rx_bytes,
                tx_bytes: p.traffic.tx_bytes,
                path_mtu: p.path_mtu.map(|m| m.path_mtu),
                route_mtu: p.path_mtu.and_then(|m| m.route_mtu),
                path_mtu_state: p.path_mtu.map(|m| m.state.to_owned()),
                path: p.path,
                via: p.via,
            })
            .collect(),
        drops: dp
            .drops()
            .into_iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(engine, reason, count)| DropLine {
                engine: engine.to_owned(),
                reason: reason.to_owned(),
                count,
            })
            .collect(),
        paths: dp.router.relay().paths(&dp.router),
        relay: dp.router.relay().counters(),
    }
}

/// Reads the status of the agent whose data directory is `data_dir`.
pub fn query(data_dir: &Path) -> anyhow::Result<Status> {
    use std::io::Read as _;
    let path = data_dir.join(SOCKET);
    let mut conn = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "no agent answers on {} ({e}); is `cladnet-agent run` running with this --data-dir?",
            path.display()
        )
    })?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| {
        warn!(%e, "bad status answer");
        anyhow::anyhow!("unreadable answer from {}: {e}", path.display())
    })
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// `wg show`-style text.
pub fn render(s: &Status) -> String {
    let a = &s.agent;
    let mut out = String::new();
    let _ = writeln!(out, "interface: {} ({})", a.interface, a.engine);
    let rows = [
        ("network", &a.network),
        ("node id", &a.node_id),
        ("public key", &a.public_key),
        ("overlay", &a.overlay),
        ("public endpoint", &a.public_endpoint),
        ("controller", &a.controller),
        ("state", &a.state),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "  {k}: {}", if v.is_empty() { "-" } else { v });
    }
    let _ = writeln!(out, "  listening port: {}", a.listen_port);
    for p in &s.peers {
        let _ = writeln!(
            out,
            "\npeer: {} ({}, {}, {} engine)",
            p.node_id, p.overlay_ip, p.mode, p.engine
        );
        let _ = writeln!(
            out,
            "  endpoint: {}",
            p.endpoint.as_deref().unwrap_or("(none)")
        );
        if let Some(age) = p.handshake_age_secs {
            let _ = writeln!(out, "  latest handshake: {age} seconds ago");
        }
        let _ = writeln!(
            out,
            "  transfer: {} received, {} sent",
            bytes(p.rx_bytes),
            bytes(p.tx_bytes)
        );
        match (&p.path, &p.via) {
            (Some(path), Some(via)) => {
                let _ = writeln!(out, "  path: {path} via {via}");
            }
            (Some(path), None) => {
                let _ = writeln!(out, "  path: {path}");
            }
            (None, _) => {}
        }
        if let Some(mtu) = p.path_mtu {
            let route = p.route_mtu.map_or("-".to_owned(), |r| r.to_string());
            let _ = writeln!(
                out,
                "  path MTU: {mtu} (inner {route}, {})",
                p.path_mtu_state.as_deref().unwrap_or("-")
            );
        }
    }
    if s.relay.serving {
        let (frames, bytes_fwd) = s.relay.forwarded;
        let _ = writeln!(
            out,
            "\nrelay: serving, {frames} frames ({}) forwarded",
            bytes(bytes_fwd)
        );
        if let Some(l) = s.relay.limits {
            let _ = writeln!(
                out,
                "  limits per member: {} packets/s (burst {}), {}/s (burst {})",
                l.packets_per_sec,
                l.packet_burst,
                bytes(l.bytes_per_sec),
                bytes(l.byte_burst)
            );
        }
        for (reason, n) in s.relay.refused.iter().filter(|r| r.1 > 0) {
            let _ = writeln!(out, "  refused {reason}: {n}");
        }
    }
    if s.relay.coordinated_probes > 0 {
        let _ = writeln!(
            out,
            "\ncoordinated probes: {} attempt(s), {} direct after",
            s.relay.coordinated_probes, s.relay.coordinated_direct
        );
    }
    if !s.drops.is_empty() {
        let _ = writeln!(out, "\ndrops:");
        for d in &s.drops {
            let _ = writeln!(out, "  {} ({}): {}", d.reason, d.engine, d.count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_wg_show() {
        let s = Status {
            agent: AgentInfo {
                interface: "cladnet0".into(),
                engine: "userspace".into(),
                listen_port: 8055,
                ..AgentInfo::default()
            },
            peers: vec![PeerLine {
                node_id: "n1".into(),
                overlay_ip: "10.0.0.2".into(),
                mode: "sealed".into(),
                engine: "userspace".into(),
                endpoint: Some("192.0.2.1:8055".into()),
                handshake_age_secs: Some(3),
                rx_bytes: 1536,
                tx_bytes: 10,
                path_mtu: Some(1400),
                route_mtu: Some(1328),
                path_mtu_state: Some("search_complete".into()),
                path: Some("relay".into()),
                via: Some("r1".into()),
            }],
            drops: vec![DropLine {
                engine: "userspace".into(),
                reason: "wg_replay".into(),
                count: 2,
            }],
            paths: vec![PathStatus {
                node_id: "n1".into(),
                path: "relay".into(),
                via: Some("r1".into()),
            }],
            relay: RelayCounters {
                serving: true,
                limits: Some(cladnet_core::relay::Limits {
                    packets_per_sec: 300,
                    packet_burst: 50,
                    bytes_per_sec: 70_000,
                    byte_burst: 102_400,
                }),
                forwarded: (3, 300),
                refused: vec![("not_member".into(), 4), ("byte_limit".into(), 0)],
                refused_deliveries: vec![],
                coordinated_probes: 3,
                coordinated_direct: 1,
            },
        };
        let text = render(&s);
        assert!(text.contains("interface: cladnet0 (userspace)"), "{text}");
        assert!(
            text.contains("peer: n1 (10.0.0.2, sealed, userspace engine)"),
            "{text}"
        );
        assert!(text.contains("latest handshake: 3 seconds ago"), "{text}");
        assert!(text.contains("1.50 KiB received, 10 B sent"), "{text}");
        assert!(text.contains("wg_replay (userspace): 2"), "{text}");
        assert!(text.contains("\n  path: relay via r1\n"), "{text}");
        assert!(
            text.contains("\ncoordinated probes: 3 attempt(s), 1 direct after\n"),
            "{text}"
        );
        assert!(
            text.contains("relay: serving, 3 frames (300 B) forwarded"),
            "{text}"
        );
        assert!(
            text.contains(
                "\n  limits per member: 300 packets/s (burst 50), 68.36 KiB/s (burst 100.00 KiB)\n"
            ),
            "{text}"
        );
        assert!(text.contains("refused not_member: 4"), "{text}");
        assert!(!text.contains("byte_limit"), "{text}");
        // --json: mode and engine are separate fields, as in the metrics' labels.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["peers"][0]["mode"], "sealed");
        assert_eq!(json["peers"][0]["engine"], "userspace");
        assert_eq!(json["drops"][0]["reason"], "wg_replay");
        assert!(
            text.contains("path MTU: 1400 (inner 1328, search_complete)"),
            "{text}"
        );
    }
}
