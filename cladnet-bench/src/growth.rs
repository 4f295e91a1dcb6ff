//! How the control plane's cost grows with the fleet: `cladnet-bench control-growth` reads
//! the JSON of several `cladnet-bench control --json` runs (one size each), takes one store's
//! median from each, and prints a Markdown table and an SVG plot of convergence time, CPU
//! (controller, etcd, the simulated agents), CPU per delivered peer message and memory
//! against the number of agents.

use std::path::Path;

use serde_json::Value;

use crate::{
    agent_table::{Series, chart},
    error::{BenchError, Result},
};

/// One size's figures (the median of a store's runs in one document).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Agents (N).
    pub agents: usize,
    /// Runs the median is of.
    pub runs: usize,
    /// Seconds until every Join returned.
    pub joined_s: f64,
    /// Seconds until every agent held all N peers.
    pub converged_s: f64,
    /// Controller CPU seconds in the convergence phase.
    pub controller_cpu_s: f64,
    /// etcd CPU seconds in the convergence phase (0 without etcd).
    pub etcd_cpu_s: f64,
    /// The simulated agents' (this process's) CPU seconds in the convergence phase.
    pub agents_cpu_s: f64,
    /// Peer messages delivered until convergence (snapshot peers and `peerUpserted`).
    pub delivered: f64,
    /// Watch messages over the run.
    pub messages: f64,
    /// Controller peak RSS, MiB.
    pub controller_rss_mib: f64,
    /// etcd peak RSS, MiB (0 without etcd).
    pub etcd_rss_mib: f64,
    /// The load generator's peak RSS, MiB.
    pub agents_rss_mib: f64,
    /// Fan-out p99, ms.
    pub fanout_p99_ms: f64,
    /// Agents whose table equalled the store's.
    pub tables_equal: usize,
}

impl Point {
    /// Controller CPU per delivered peer message, µs.
    pub fn controller_us(&self) -> f64 {
        per(self.controller_cpu_s, self.delivered)
    }

    /// etcd CPU per delivered peer message, µs.
    pub fn etcd_us(&self) -> f64 {
        per(self.etcd_cpu_s, self.delivered)
    }

    /// The agents' CPU per delivered peer message, µs.
    pub fn agents_us(&self) -> f64 {
        per(self.agents_cpu_s, self.delivered)
    }
}

fn per(cpu_s: f64, n: f64) -> f64 {
    if n > 0.0 { cpu_s * 1e6 / n } else { 0.0 }
}

/// The median of `store` in one `control --json` document.
pub fn point(doc: &Value, store: &str) -> Result<Point> {
    let bad = |m: &str| BenchError::Options(format!("control JSON: {m}"));
    let stores = doc["stores"].as_array().ok_or_else(|| bad("no stores"))?;
    let entry = stores
        .iter()
        .find(|s| s["controller"].as_str() == Some("") && s["runs"][0]["store"] == store)
        .ok_or_else(|| bad(&format!("no {store} runs")))?;
    let runs = entry["runs"].as_array().map_or(0, Vec::len);
    let m = if entry["median"].is_object() {
        &entry["median"]
    } else {
        &entry["runs"][0]
    };
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    Ok(Point {
        agents: m["agents"].as_u64().ok_or_else(|| bad("no agents"))? as usize,
        runs,
        joined_s: f(&m["all_joined_ms"]) / 1e3,
        converged_s: f(&m["convergence_ms"]) / 1e3,
        controller_cpu_s: f(&m["controller"]["cpu_convergence_s"]),
        etcd_cpu_s: f(&m["etcd"]["cpu_convergence_s"]),
        agents_cpu_s: f(&m["bench"]["cpu_convergence_s"]),
        delivered: f(&m["delivered_convergence"]),
        messages: f(&m["events"]["messages"]),
        controller_rss_mib: f(&m["controller"]["peak_rss_mib"]),
        etcd_rss_mib: f(&m["etcd"]["peak_rss_mib"]),
        agents_rss_mib: f(&m["bench"]["peak_rss_mib"]),
        fanout_p99_ms: f(&m["fanout"]["p99_ms"]),
        tables_equal: m["table_check"]["agents_equal"].as_u64().unwrap_or(0) as usize,
    })
}

/// Reads `store`'s median from each file, sorted by the number of agents.
pub fn read(paths: &[impl AsRef<Path>], store: &str) -> Result<Vec<Point>> {
    let mut points = Vec::with_capacity(paths.len());
    for p in paths {
        let p = p.as_ref();
        let text = std::fs::read_to_string(p)
            .map_err(|e| BenchError::io(format!("reading {}", p.display()), e))?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| BenchError::Options(format!("{}: {e}", p.display())))?;
        points.push(point(&doc, store)?);
    }
    points.sort_by_key(|p| p.agents);
    Ok(points)
}

/// The points as a Markdown table, with each row's cost per peer message against the first.
pub fn table(points: &[Point]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "| agents | runs | joined | converged | ctl CPU | etcd CPU | agents' CPU | peer messages | ctl µs / msg | etcd µs / msg | agents' µs / msg | Watch messages | ctl peak RSS | etcd peak RSS | agents' peak RSS | fan-out p99 | tables equal |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in points {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.1} M | {:.2} | {:.2} | {:.2} | {:.0} k | {:.1} MiB | {:.1} MiB | {:.0} MiB | {:.1} ms | {}/{} |",
            p.agents,
            p.runs,
            p.joined_s,
            p.converged_s,
            p.controller_cpu_s,
            p.etcd_cpu_s,
            p.agents_cpu_s,
            p.delivered / 1e6,
            p.controller_us(),
            p.etcd_us(),
            p.agents_us(),
            p.messages / 1e3,
            p.controller_rss_mib,
            p.etcd_rss_mib,
            p.agents_rss_mib,
            p.fanout_p99_ms,
            p.tables_equal,
            p.agents
        );
    }
    out
}

/// The growth as an SVG: time and CPU seconds, CPU per peer message, peak RSS.
pub fn svg(points: &[Point], title: &str, caption: &str) -> String {
    use std::fmt::Write as _;
    let pts = |f: &dyn Fn(&Point) -> f64| -> Vec<(f64, f64)> {
        points.iter().map(|p| (p.agents as f64, f(p))).collect()
    };
    let (w, h) = (1200.0, 360.0);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="18" font-size="15" font-weight="bold">{}</text>
"#,
        h + 50.0,
        escape(title)
    );
    let third = w / 3.0;
    let x = "agents";
    let (ctl, etcd, agents, time) = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728");
    chart(
        &mut out,
        (0.0, 25.0),
        (third, h),
        "Convergence time and CPU",
        (x, "seconds"),
        &[
            Series {
                name: "converged (wall)",
                colour: time,
                points: pts(&|p| p.converged_s),
            },
            Series {
                name: "controller CPU",
                colour: ctl,
                points: pts(&|p| p.controller_cpu_s),
            },
            Series {
                name: "etcd CPU",
                colour: etcd,
                points: pts(&|p| p.etcd_cpu_s),
            },
            Series {
                name: "simulated agents' CPU",
                colour: agents,
                points: pts(&|p| p.agents_cpu_s),
            },
        ],
    );
    chart(
        &mut out,
        (third, 25.0),
        (third, h),
        "CPU per delivered peer message",
        (x, "microseconds"),
        &[
            Series {
                name: "controller",
                colour: ctl,
                points: pts(&|p| p.controller_us()),
            },
            Series {
                name: "etcd",
                colour: etcd,
                points: pts(&|p| p.etcd_us()),
            },
            Series {
                name: "simulated agents",
                colour: agents,
                points: pts(&|p| p.agents_us()),
            },
        ],
    );
    chart(
        &mut out,
        (2.0 * third, 25.0),
        (third, h),
        "Peak RSS",
        (x, "MiB"),
        &[
            Series {
                name: "controller",
                colour: ctl,
                points: pts(&|p| p.controller_rss_mib),
            },
            Series {
                name: "etcd",
                colour: etcd,
                points: pts(&|p| p.etcd_rss_mib),
            },
        ],
    );
    let _ = write!(
        out,
        "<text x=\"10\" y=\"{:.0}\" font-size=\"11\" fill=\"#555\">{}</text>\n</svg>\n",
        h + 42.0,
        escape(caption)
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{point, svg, table};

    fn doc(agents: u64, converged_ms: f64) -> serde_json::Value {
        let run = json!({
            "store": "etcd", "agents": agents, "all_joined_ms": converged_ms - 100.0,
            "convergence_ms": converged_ms,
            "controller": {"peak_rss_mib": 20.0, "cpu_convergence_s": 1.0},
            "etcd": {"peak_rss_mib": 30.0, "cpu_convergence_s": 0.5},
            "bench": {"peak_rss_mib": 300.0, "cpu_convergence_s": 2.0},
            "events": {"messages": 20000},
            "delivered_convergence": 1_000_000,
            "fanout": {"p99_ms": 25.0},
            "table_check": {"agents_equal": agents},
        });
        json!({"stores": [
            {"controller": "", "runs": [{"store": "embedded", "agents": agents}]},
            {"controller": "", "runs": [run.clone(), run.clone()], "median": run},
        ]})
    }

    #[test]
    fn a_store_median_is_read_and_plotted() {
        let p = point(&doc(1000, 2500.0), "etcd").unwrap();
        assert_eq!((p.agents, p.runs, p.tables_equal), (1000, 2, 1000));
        assert!((p.controller_us() - 1.0).abs() < 1e-9);
        assert!((p.etcd_us() - 0.5).abs() < 1e-9);
        assert!((p.converged_s - 2.5).abs() < 1e-9);
        assert!(point(&doc(1000, 1.0), "etcd-direct").is_err());
        let q = point(&doc(2000, 9000.0), "etcd").unwrap();
        let t = table(&[p.clone(), q.clone()]);
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.contains("| 2000 | 2 |"), "{t}");
        let s = svg(&[p, q], "growth <test>", "a & b");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("&lt;test&gt;") && s.contains("a &amp; b"));
    }
}
