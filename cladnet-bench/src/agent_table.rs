//! `cladnet-bench agent-table`: what one agent's peer table costs for a network of N peers.
//!
//! The table is the agent's own code, `cladnet_core::node::table::PeerTable`, which every agent runs
//! on every Watch event: a snapshot replaces the whole peer set, a `peerUpserted` event upserts
//! one peer, and each call reconciles the desired dataplane state with what is installed and
//! returns the commands for the engines. Measured for one size per process (so the peak RSS
//! is that size's):
//!
//! * `snapshot_ms`: the snapshot of N peers into an empty table (`replace_all`);
//! * `change_us`: one peer's endpoint change at N peers (median of [`SAMPLES`]), and
//!   `change_cpu_us` its CPU time (mean over the samples, from the thread's
//!   `/proc/thread-self/schedstat`, so that a busy machine's preemption does not count);
//! * `new_peer_us` / `new_peer_cpu_us`: one new peer joining at N peers, the event every agent
//!   handles once per joining peer while a fleet boots;
//! * `lookup_ns`: one packet-path lookup in the forwarding snapshot at N peers (the peer an
//!   inner packet's destination belongs to, [`LOOKUPS`] of them over every peer);
//! * `table_mib`: resident memory the table of N peers adds (`VmRSS` after minus before);
//! * `peak_rss_mib`: the process's peak (`VmHWM`).
//!
//! [`sweep`] runs the sizes as child processes and [`svg`] plots the growth.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use cladnet_core::{
    node::{
        Command,
        table::{LocalNode, PeerState, PeerTable, RemotePeer},
    },
    policy::{PeerView, Policy, Site},
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{BenchError, Result},
    procs::ProcStats,
    stats::median,
};

/// Events timed per size for the per-event costs.
pub const SAMPLES: usize = 200;

/// Packet-path lookups timed per size.
pub const LOOKUPS: usize = 1_000_000;

/// The cost of one table size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TableCost {
    /// Peers in the table (N).
    pub peers: usize,
    /// A snapshot of N peers into an empty table, milliseconds.
    pub snapshot_ms: f64,
    /// Commands the snapshot produced (one interface, N peers).
    pub snapshot_commands: usize,
    /// One endpoint change at N peers, microseconds (median).
    pub change_us: f64,
    /// CPU time of one endpoint change at N peers, microseconds (mean).
    pub change_cpu_us: f64,
    /// One new peer at N peers, microseconds (median).
    pub new_peer_us: f64,
    /// CPU time of one new peer at N peers, microseconds (mean).
    pub new_peer_cpu_us: f64,
    /// One forwarding-snapshot lookup by inner destination at N peers, nanoseconds (mean).
    #[serde(default)]
    pub lookup_ns: f64,
    /// Resident memory the table added, MiB.
    pub table_mib: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Peer `i` of the simulated network: a PLAIN-capable agent in one of four regions.
fn remote(i: usize, endpoint_port: u16) -> RemotePeer {
    let ip = |base: Ipv4Addr| Ipv4Addr::from(u32::from(base).wrapping_add(i as u32));
    let mut key = [0x5a_u8; 32];
    key[..8].copy_from_slice(&(i as u64).to_le_bytes());
    RemotePeer {
        node_id: format!("bench-{i:05}"),
        node_index: 0x0a40_0002 + i as u32,
        overlay_ip: ip(Ipv4Addr::new(10, 64, 0, 2)),
        public_key: key,
        view: PeerView {
            site: Site {
                provider: "bench".into(),
                region: format!("region-{}", i % 4),
                ..Site::default()
            },
            public: Some(SocketAddrV4::new(
                ip(Ipv4Addr::new(198, 18, 0, 2)),
                endpoint_port,
            )),
            private: Some(SocketAddrV4::new(ip(Ipv4Addr::new(172, 16, 0, 11)), 8055)),
            external: false,
        },
        state: PeerState::from_api("up"),
        prefixes: Vec::new(),
    }
}

fn local() -> LocalNode {
    LocalNode {
        node_id: "bench-local".into(),
        node_index: 0x0a40_0001,
        overlay_ip: Ipv4Addr::new(10, 64, 0, 1),
        prefix_len: 15,
        underlay_mtu: 1500,
        underlay_ip: None,
        view: PeerView {
            site: Site {
                provider: "bench".into(),
                region: "region-0".into(),
                ..Site::default()
            },
            public: Some(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 8055)),
            private: Some(SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 10), 8055)),
            external: false,
        },
        prefixes: Vec::new(),
    }
}

fn rss() -> Result<ProcStats> {
    ProcStats::read("self").map_err(|e| BenchError::io("reading /proc/self", e))
}

/// CPU time this thread has run, nanoseconds (`CLOCK_THREAD_CPUTIME_ID`; the scheduler's
/// statistics in `/proc/thread-self/schedstat` advance only at ticks, so a short loop could
/// read no CPU at all).
fn thread_cpu_ns() -> Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_err(|e| {
        BenchError::io(
            "reading the thread's CPU clock",
            std::io::Error::from_raw_os_error(e as i32),
        )
    })?;
    Ok(u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(t.tv_nsec()).unwrap_or(0))
}

/// Mean CPU microseconds per sample between two [`thread_cpu_ns`] readings.
fn cpu_per_sample(start_ns: u64, end_ns: u64) -> f64 {
    end_ns.saturating_sub(start_ns) as f64 / 1e3 / SAMPLES as f64
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Measures the table at `peers` peers in this process.
pub fn measure(peers: usize) -> Result<TableCost> {
    if peers == 0 || peers > crate::control::MAX_AGENTS {
        return Err(BenchError::Options(format!(
            "peers must be 1..={}",
            crate::control::MAX_AGENTS
        )));
    }
    let before = rss()?;
    let mut table = PeerTable::new(Policy::default());
    drop(table.set_local(local()));
    let snapshot: Vec<RemotePeer> = (0..peers).map(|i| remote(i, 8055)).collect();
    let start = Instant::now();
    let commands = table.replace_all(snapshot);
    let snapshot_ms = start.elapsed().as_secs_f64() * 1e3;
    let snapshot_commands = commands.len();
    drop(commands);
    let after = rss()?;

    let mut change = Vec::with_capacity(SAMPLES);
    let cpu_start = thread_cpu_ns()?;
    for k in 0..SAMPLES {
        let peer = remote(k * peers / SAMPLES, 9000 + k as u16);
        let start = Instant::now();
        let commands = table.upsert(peer);
        change.push(micros(start.elapsed()));
        // One peer's update, then the new forwarding snapshot that publishes it.
        let updates = commands
            .iter()
            .filter(|c| matches!(c, Command::UpsertPeer(_)))
            .count();
        if updates != 1 {
            return Err(BenchError::Check(format!(
                "an endpoint change gave {updates} peer updates, not 1 ({} commands)",
                commands.len()
            )));
        }
    }
    let change_cpu_us = cpu_per_sample(cpu_start, thread_cpu_ns()?);
    let mut new_peer = Vec::with_capacity(SAMPLES);
    let cpu_start = thread_cpu_ns()?;
    for k in 0..SAMPLES {
        let peer = remote(peers + k, 8055);
        let node = peer.node_id.clone();
        let start = Instant::now();
        let commands = table.upsert(peer);
        new_peer.push(micros(start.elapsed()));
        drop(commands);
        drop(table.remove(&node));
    }
    // Includes the removal that follows each new peer (an event of the same cost).
    let new_peer_cpu_us = cpu_per_sample(cpu_start, thread_cpu_ns()?) / 2.0;
    let lookup_ns = lookup_ns(&table, peers)?;
    let end = rss()?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(TableCost {
        peers,
        snapshot_ms,
        snapshot_commands,
        change_us: median(&change).unwrap_or(0.0),
        change_cpu_us,
        new_peer_us: median(&new_peer).unwrap_or(0.0),
        new_peer_cpu_us,
        lookup_ns,
        table_mib: mib(after.rss_kib.saturating_sub(before.rss_kib)),
        peak_rss_mib: mib(end.peak_rss_kib),
    })
}

/// Mean time of one packet-path lookup ([`Forwarding::route`]) by inner destination, over
/// every peer in turn.
///
/// [`Forwarding::route`]: cladnet_core::node::Forwarding::route
fn lookup_ns(table: &PeerTable, peers: usize) -> Result<f64> {
    let fwd = table.forwarding().clone();
    let packets: Vec<[u8; 20]> = (0..peers)
        .map(|i| {
            let mut p = [0u8; 20];
            p[0] = 0x45;
            let dst = remote(i, 8055).overlay_ip;
            p[16..20].copy_from_slice(&dst.octets());
            p
        })
        .collect();
    let start = Instant::now();
    let mut found = 0usize;
    for k in 0..LOOKUPS {
        found += usize::from(fwd.route(std::hint::black_box(&packets[k % peers])).is_ok());
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / LOOKUPS as f64;
    if found != LOOKUPS {
        return Err(BenchError::Check(format!(
            "{} of {LOOKUPS} lookups found no peer",
            LOOKUPS - found
        )));
    }
    Ok(ns)
}

/// Runs `exe agent-table --peers N --json` for every size, each in its own process.
pub fn sweep(exe: &std::path::Path, sizes: &[usize]) -> Result<Vec<TableCost>> {
    let mut out = Vec::with_capacity(sizes.len());
    for &n in sizes {
        let output = std::process::Command::new(exe)
            .args(["agent-table", "--peers", &n.to_string(), "--json-stdout"])
            .output()
            .map_err(|e| BenchError::io(format!("running {}", exe.display()), e))?;
        if !output.status.success() {
            return Err(BenchError::Check(format!(
                "agent-table --peers {n}: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let cost: TableCost = serde_json::from_slice(&output.stdout)
            .map_err(|e| BenchError::Check(format!("agent-table --peers {n} output: {e}")))?;
        out.push(cost);
    }
    Ok(out)
}

/// The costs as a plain-text table, with the growth against the first size.
pub fn table(costs: &[TableCost]) -> String {
    let mut rows = vec![
        [
            "peers",
            "snapshot",
            "endpoint change (CPU)",
            "new peer (CPU)",
            "lookup",
            "table memory",
            "peak RSS",
            "change CPU vs first",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let first = costs.first();
    for c in costs {
        let growth = first.map_or(1.0, |f| c.change_cpu_us / f.change_cpu_us.max(1e-9));
        rows.push(vec![
            c.peers.to_string(),
            format!("{:.1} ms", c.snapshot_ms),
            format!("{:.1} µs ({:.1} µs)", c.change_us, c.change_cpu_us),
            format!("{:.1} µs ({:.1} µs)", c.new_peer_us, c.new_peer_cpu_us),
            format!("{:.1} ns", c.lookup_ns),
            format!("{:.1} MiB", c.table_mib),
            format!("{:.1} MiB", c.peak_rss_mib),
            format!("{growth:.1}x"),
        ]);
    }
    crate::report::align(&rows)
}

/// One series of a chart: a name, a colour and its points.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) colour: &'a str,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A line chart (linear axes from 0) as an SVG group at (`x0`, `y0`), `w` × `h` pixels.
pub(crate) fn chart(
    out: &mut String,
    at: (f64, f64),
    size: (f64, f64),
    title: &str,
    (xlabel, unit): (&str, &str),
    series: &[Series<'_>],
) {
    use std::fmt::Write as _;
    let ((x0, y0), (w, h)) = (at, size);
    let (left, bottom, top, right) = (75.0, 40.0, 30.0, 15.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let all = series.iter().flat_map(|s| s.points.iter());
    let xmax = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let ymax = all.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let px = |x: f64| x0 + left + x / xmax * pw;
    let py = |y: f64| y0 + top + ph - y / ymax * ph;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold">{title}</text>"#,
        x0 + left,
        y0 + 18.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{:.1}" y="{:.1}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#999"/>"##,
        x0 + left,
        y0 + top
    );
    for t in 0..=4 {
        let (xv, yv) = (xmax * t as f64 / 4.0, ymax * t as f64 / 4.0);
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{xv:.0}</text>"#,
            px(xv),
            y0 + h - bottom + 16.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
            x0 + left - 5.0,
            py(yv) + 4.0,
            if ymax >= 100.0 {
                format!("{yv:.0}")
            } else {
                format!("{yv:.1}")
            }
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{xlabel}</text>"#,
        x0 + left + pw / 2.0,
        y0 + h - 5.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" transform="rotate(-90 {:.1} {:.1})" text-anchor="middle">{unit}</text>"#,
        x0 + 14.0,
        y0 + top + ph / 2.0,
        x0 + 14.0,
        y0 + top + ph / 2.0
    );
    for (k, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.colour,
            points.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                s.colour
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" fill="{}">{}</text>"#,
            x0 + left + 10.0,
            y0 + top + 16.0 + 15.0 * k as f64,
            s.colour,
            s.name
        );
    }
}

/// The growth as an SVG: per-event CPU and memory against the number of peers.
pub fn svg(costs: &[TableCost], caption: &str) -> String {
    let pts = |f: fn(&TableCost) -> f64| -> Vec<(f64, f64)> {
        costs.iter().map(|c| (c.peers as f64, f(c))).collect()
    };
    let (w, h) = (900.0, 340.0);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
"#,
        h + 20.0
    );
    chart(
        &mut out,
        (0.0, 0.0),
        (w / 2.0, h),
        "Agent peer table: CPU per Watch event",
        ("peers in the table", "CPU microseconds"),
        &[
            Series {
                name: "endpoint change",
                colour: "#1f77b4",
                points: pts(|c| c.change_cpu_us),
            },
            Series {
                name: "new peer",
                colour: "#d62728",
                points: pts(|c| c.new_peer_cpu_us),
            },
        ],
    );
    chart(
        &mut out,
        (w / 2.0, 0.0),
        (w / 2.0, h),
        "Agent memory",
        ("peers in the table", "MiB"),
        &[
            Series {
                name: "table (RSS growth)",
                colour: "#2ca02c",
                points: pts(|c| c.table_mib),
            },
            Series {
                name: "process peak RSS",
                colour: "#9467bd",
                points: pts(|c| c.peak_rss_mib),
            },
        ],
    );
    out.push_str(&format!(
        "<text x=\"10\" y=\"{:.0}\" font-size=\"11\" fill=\"#555\">{}</text>\n</svg>\n",
        h + 12.0,
        caption.replace('&', "&amp;").replace('<', "&lt;")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::{measure, svg, table};

    #[test]
    fn a_small_table_is_measured() {
        let c = measure(300).unwrap();
        assert_eq!(c.peers, 300);
        assert!(
            c.snapshot_commands >= 300,
            "every peer: {}",
            c.snapshot_commands
        );
        assert!(c.change_us > 0.0 && c.new_peer_us > 0.0);
        assert!(c.change_cpu_us > 0.0 && c.new_peer_cpu_us > 0.0);
        assert!(measure(0).is_err());
        let t = table(&[c, c]);
        assert!(t.contains("1.0x"), "{t}");
        let s = svg(&[c, c], "test <caption>");
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{s}"
        );
        assert!(s.contains("&lt;caption>"));
        assert_eq!(s.matches("<polyline").count(), 4);
    }
}
