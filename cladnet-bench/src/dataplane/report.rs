//! The dataplane results: per-run metrics, their median per configuration, ratios, the
//! plain-text table and the JSON document.

use std::{collections::HashMap, fmt::Write as _, path::Path};

use serde::Serialize;

use super::{
    Config, DataplaneOptions,
    measure::{Background, Rtt, SmallPackets, Tcp},
    testbed::{UNDERLAY_A, UNDERLAY_B, UNDERLAY_MTU},
};
use crate::{
    report::{Machine, align, write_json},
    stats::median,
};

/// The goal: CLADNet SEALED single-stream TCP at least this many times the faster of
/// wireguard-go and boringtun, in the same run.
pub const SEALED_VS_WIREGUARD_TARGET: f64 = 3.0;

/// The numbers of one run of one configuration (or their median, minimum or maximum over
/// runs, each field on its own).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunMetrics {
    /// MTU of host A's overlay interface.
    pub overlay_mtu_a: f64,
    /// MTU of host B's overlay interface.
    pub overlay_mtu_b: f64,
    /// Single-stream TCP throughput at the receiver, Gbit/s.
    pub tcp_gbps: f64,
    /// TCP retransmissions.
    pub tcp_retransmits: f64,
    /// 64-byte UDP datagrams received per second, thousands.
    pub udp_kpps: f64,
    /// 64-byte UDP datagrams sent per second, thousands.
    pub udp_sent_kpps: f64,
    /// Share of the datagrams lost, percent.
    pub udp_loss_percent: f64,
    /// Median ping RTT, milliseconds.
    pub rtt_median_ms: f64,
    /// Mean ping RTT, milliseconds.
    pub rtt_avg_ms: f64,
    /// Busy CPU of the whole machine during the TCP test, percent of all cores.
    pub cpu_percent: f64,
    /// `cpu_percent` per Gbit/s of TCP throughput.
    pub cpu_percent_per_gbps: f64,
    /// Busy CPU of the whole machine in the second before the measurements (other load on
    /// the machine), percent of all cores.
    pub background_cpu_percent: f64,
    /// Seconds spent waiting for the machine to quiet down before the measurements.
    pub waited_secs: f64,
}

impl RunMetrics {
    /// The metrics of one run.
    pub fn new(
        overlay_mtu: [u32; 2],
        background: Background,
        tcp: Tcp,
        udp: SmallPackets,
        rtt: Rtt,
    ) -> Self {
        Self {
            overlay_mtu_a: f64::from(overlay_mtu[0]),
            overlay_mtu_b: f64::from(overlay_mtu[1]),
            tcp_gbps: tcp.gbps,
            tcp_retransmits: tcp.retransmits as f64,
            udp_kpps: udp.received_pps / 1e3,
            udp_sent_kpps: udp.sent_pps / 1e3,
            udp_loss_percent: udp.loss_percent,
            rtt_median_ms: rtt.median_ms,
            rtt_avg_ms: rtt.avg_ms,
            cpu_percent: tcp.cpu_percent,
            cpu_percent_per_gbps: if tcp.gbps > 0.0 {
                tcp.cpu_percent / tcp.gbps
            } else {
                0.0
            },
            background_cpu_percent: background.cpu_percent,
            waited_secs: background.waited_secs,
        }
    }

    /// Each field aggregated over `runs` on its own with `agg`; `None` for no runs.
    fn combine(runs: &[Self], agg: fn(&[f64]) -> Option<f64>) -> Option<Self> {
        let f = |g: fn(&Self) -> f64| agg(&runs.iter().map(g).collect::<Vec<_>>());
        Some(Self {
            overlay_mtu_a: f(|m| m.overlay_mtu_a)?,
            overlay_mtu_b: f(|m| m.overlay_mtu_b)?,
            tcp_gbps: f(|m| m.tcp_gbps)?,
            tcp_retransmits: f(|m| m.tcp_retransmits)?,
            udp_kpps: f(|m| m.udp_kpps)?,
            udp_sent_kpps: f(|m| m.udp_sent_kpps)?,
            udp_loss_percent: f(|m| m.udp_loss_percent)?,
            rtt_median_ms: f(|m| m.rtt_median_ms)?,
            rtt_avg_ms: f(|m| m.rtt_avg_ms)?,
            cpu_percent: f(|m| m.cpu_percent)?,
            cpu_percent_per_gbps: f(|m| m.cpu_percent_per_gbps)?,
            background_cpu_percent: f(|m| m.background_cpu_percent)?,
            waited_secs: f(|m| m.waited_secs)?,
        })
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        format!(
            "background CPU {:.0} %; TCP {} Gbit/s ({:.0} retr), CPU {:.0} %, 64 B UDP {:.1} kpps \
             (loss {:.1} %), RTT {:.3} ms",
            self.background_cpu_percent,
            gbps(self.tcp_gbps),
            self.tcp_retransmits,
            self.cpu_percent,
            self.udp_kpps,
            self.udp_loss_percent,
            self.rtt_median_ms
        )
    }
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().min_by(f64::total_cmp)
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().max_by(f64::total_cmp)
}

/// One configuration's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowResult {
    /// The configuration.
    pub config: Config,
    /// Why it did not run, when it did not.
    pub skipped: Option<String>,
    /// The runs that succeeded, in order.
    pub runs: Vec<RunMetrics>,
    /// The runs that failed: `run N: error`.
    pub errors: Vec<String>,
    /// Per-field median of `runs`.
    pub median: Option<RunMetrics>,
    /// Per-field minimum of `runs`.
    pub min: Option<RunMetrics>,
    /// Per-field maximum of `runs`.
    pub max: Option<RunMetrics>,
    /// Median TCP throughput over raw's median.
    pub tcp_vs_raw: Option<f64>,
    /// Median TCP throughput over the faster WireGuard implementation's median.
    pub tcp_vs_best_wireguard: Option<f64>,
}

impl RowResult {
    fn new(config: Config) -> Self {
        Self {
            config,
            skipped: None,
            runs: Vec::new(),
            errors: Vec::new(),
            median: None,
            min: None,
            max: None,
            tcp_vs_raw: None,
            tcp_vs_best_wireguard: None,
        }
    }

    fn tcp_median(&self) -> Option<f64> {
        self.median.map(|m| m.tcp_gbps)
    }
}

/// The underlay between the two namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Underlay {
    /// Host A's address (clients, the controller).
    pub a: String,
    /// Host B's address (servers).
    pub b: String,
    /// The veth pair's MTU.
    pub mtu: u32,
}

/// The whole dataplane benchmark, as written to `--out`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataplaneDocument {
    /// Always `"dataplane"`.
    pub scenario: &'static str,
    /// The command line that produced it.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// `/proc/loadavg` when the run started.
    pub load_average: String,
    /// Seconds of each iperf3 test.
    pub secs: u32,
    /// Runs per configuration.
    pub runs: u32,
    /// Pings per run.
    pub ping_count: u32,
    /// The underlay.
    pub underlay: Underlay,
    /// The goal for `cladnet-sealed` over the faster WireGuard implementation.
    pub sealed_vs_wireguard_target: f64,
    /// One entry per configuration, in table order.
    pub rows: Vec<RowResult>,
    /// The faster of wireguard-go and boringtun (by median TCP throughput).
    pub best_wireguard: Option<Config>,
    /// Whether `cladnet-sealed` met the goal (unknown when a row is missing).
    pub target_met: Option<bool>,
}

impl DataplaneDocument {
    /// A document for `opts` with no results yet.
    pub fn new(opts: &DataplaneOptions, command: String) -> Self {
        Self {
            scenario: "dataplane",
            command,
            machine: Machine::current(),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            secs: opts.secs,
            runs: opts.runs,
            ping_count: opts.ping_count,
            underlay: Underlay {
                a: format!("{UNDERLAY_A}/24"),
                b: format!("{UNDERLAY_B}/24"),
                mtu: UNDERLAY_MTU,
            },
            sealed_vs_wireguard_target: SEALED_VS_WIREGUARD_TARGET,
            rows: opts.configs.iter().map(|&c| RowResult::new(c)).collect(),
            best_wireguard: None,
            target_met: None,
        }
    }

    /// The row of `config` (added if missing).
    pub fn row_mut(&mut self, config: Config) -> &mut RowResult {
        let i = match self.rows.iter().position(|r| r.config == config) {
            Some(i) => i,
            None => {
                self.rows.push(RowResult::new(config));
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// Computes the medians, spreads, ratios and the verdict from the runs.
    pub fn finish(&mut self) {
        for row in &mut self.rows {
            row.median = RunMetrics::combine(&row.runs, median);
            row.min = RunMetrics::combine(&row.runs, min);
            row.max = RunMetrics::combine(&row.runs, max);
        }
        let tcp: HashMap<Config, f64> = self
            .rows
            .iter()
            .filter_map(|r| Some((r.config, r.tcp_median()?)))
            .collect();
        let raw = tcp.get(&Config::Raw).copied();
        let best = tcp
            .iter()
            .filter(|(c, _)| c.is_wireguard())
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(&c, &g)| (c, g));
        self.best_wireguard = best.map(|(c, _)| c);
        let ratio = |num: f64, den: Option<f64>| den.filter(|d| *d > 0.0).map(|d| num / d);
        for row in &mut self.rows {
            if let Some(g) = row.tcp_median() {
                row.tcp_vs_raw = ratio(g, raw);
                row.tcp_vs_best_wireguard = ratio(g, best.map(|b| b.1));
            }
        }
        self.target_met = self
            .rows
            .iter()
            .find(|r| r.config == Config::CladnetSealed)
            .and_then(|r| r.tcp_vs_best_wireguard)
            .map(|r| r >= self.sealed_vs_wireguard_target);
    }

    /// Whether any configuration had a failed run.
    pub fn any_failed(&self) -> bool {
        self.rows.iter().any(|r| !r.errors.is_empty())
    }

    /// Writes the document as pretty JSON (creating the directory).
    pub fn write_json(&self, path: &Path) -> crate::Result<()> {
        write_json(self, path)
    }

    /// The results as plain-text tables: the medians with ratios, every run, the verdict and
    /// the errors.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Dataplane: two namespaces over one veth pair ({} <-> {}, MTU {}); {} s per iperf3 \
             test, {} pings, {} run(s) per configuration (interleaved), medians",
            self.underlay.a,
            self.underlay.b,
            self.underlay.mtu,
            self.secs,
            self.ping_count,
            self.runs
        );
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {} MiB, Linux {}; load average at start {}",
            m.cpus, m.cpu_model, m.memory_mib, m.kernel, self.load_average
        );
        let _ = writeln!(
            out,
            "CPU % = busy time of the whole machine over the TCP test (100 % = all {} CPUs)\n",
            m.cpus
        );
        let mut rows = vec![
            [
                "config",
                "MTU A/B",
                "TCP Gbit/s",
                "(min-max)",
                "retr",
                "x raw",
                "x best WG",
                "64 B UDP kpps",
                "loss %",
                "RTT ms med/avg",
                "CPU %",
                "CPU %/Gbit/s",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let mut notes = String::new();
        for r in &self.rows {
            let (Some(med), Some(lo), Some(hi)) = (r.median, r.min, r.max) else {
                let (what, why) = match &r.skipped {
                    Some(s) => ("skipped", s.clone()),
                    None => (
                        "failed",
                        format!("{} failed run(s), errors below", r.errors.len()),
                    ),
                };
                let mut row = vec![r.config.to_string(), "-".into(), what.into()];
                row.resize(rows[0].len(), "-".into());
                rows.push(row);
                let _ = writeln!(notes, "{}: {what}: {why}", r.config);
                continue;
            };
            let times = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
            let ok = if r.errors.is_empty() {
                String::new()
            } else {
                format!(" ({}/{} runs)", r.runs.len(), r.runs.len() + r.errors.len())
            };
            rows.push(vec![
                format!("{}{ok}", r.config),
                format!("{:.0}/{:.0}", med.overlay_mtu_a, med.overlay_mtu_b),
                gbps(med.tcp_gbps),
                format!("{}-{}", gbps(lo.tcp_gbps), gbps(hi.tcp_gbps)),
                format!("{:.0}", med.tcp_retransmits),
                times(r.tcp_vs_raw),
                times(r.tcp_vs_best_wireguard),
                format!("{:.1}", med.udp_kpps),
                format!("{:.1}", med.udp_loss_percent),
                format!("{:.3} / {:.3}", med.rtt_median_ms, med.rtt_avg_ms),
                format!("{:.0}", med.cpu_percent),
                format!("{:.1}", med.cpu_percent_per_gbps),
            ]);
        }
        out.push_str(&align(&rows));
        out.push_str(&notes);
        out.push_str("\nEvery run:\n");
        let mut rows = vec![
            [
                "config",
                "run",
                "TCP Gbit/s",
                "retr",
                "64 B UDP kpps",
                "sent kpps",
                "loss %",
                "RTT ms med",
                "CPU %",
                "background CPU % (waited)",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for r in &self.rows {
            for (i, m) in r.runs.iter().enumerate() {
                rows.push(vec![
                    r.config.to_string(),
                    (i + 1).to_string(),
                    gbps(m.tcp_gbps),
                    format!("{:.0}", m.tcp_retransmits),
                    format!("{:.1}", m.udp_kpps),
                    format!("{:.1}", m.udp_sent_kpps),
                    format!("{:.1}", m.udp_loss_percent),
                    format!("{:.3}", m.rtt_median_ms),
                    format!("{:.0}", m.cpu_percent),
                    if m.waited_secs >= 0.5 {
                        format!("{:.0} ({:.0} s)", m.background_cpu_percent, m.waited_secs)
                    } else {
                        format!("{:.0}", m.background_cpu_percent)
                    },
                ]);
            }
        }
        out.push_str(&align(&rows));
        let _ = write!(
            out,
            "\nTarget: cladnet-sealed TCP >= {:.1}x the faster of wireguard-go/boringtun",
            self.sealed_vs_wireguard_target
        );
        let sealed = self
            .rows
            .iter()
            .find(|r| r.config == Config::CladnetSealed)
            .and_then(|r| r.tcp_vs_best_wireguard);
        match (self.best_wireguard, sealed, self.target_met) {
            (Some(best), Some(ratio), Some(met)) => {
                let _ = writeln!(
                    out,
                    " ({best}): {ratio:.2}x {}",
                    if met { "PASS" } else { "FAIL" }
                );
            }
            _ => out.push_str(": not measured (needs cladnet-sealed and a WireGuard row)\n"),
        }
        for r in &self.rows {
            for e in &r.errors {
                let _ = writeln!(out, "\n{} {e}", r.config);
            }
        }
        out
    }
}

/// Gbit/s with two decimals below 10, one above.
fn gbps(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::{Config, DataplaneDocument, RunMetrics};
    use crate::dataplane::{
        Binaries, DataplaneOptions,
        measure::{Background, Rtt, SmallPackets, Tcp},
    };

    fn metrics(gbps: f64) -> RunMetrics {
        RunMetrics::new(
            [1420, 1420],
            Background {
                cpu_percent: 5.0,
                waited_secs: 0.0,
            },
            Tcp {
                gbps,
                retransmits: 3,
                cpu_percent: 100.0,
            },
            SmallPackets {
                received_pps: 50_000.0,
                sent_pps: 100_000.0,
                loss_percent: 50.0,
            },
            Rtt {
                median_ms: 0.2,
                avg_ms: 0.25,
                replies: 50,
                sent: 50,
            },
        )
    }

    fn doc() -> DataplaneDocument {
        let opts = DataplaneOptions {
            secs: 5,
            runs: 3,
            configs: Config::ALL.to_vec(),
            ping_count: 50,
            quiet_cpu_percent: 25.0,
            quiet_patience: std::time::Duration::from_secs(60),
            bins: Binaries::in_dir(std::path::Path::new("/nonexistent")),
            keep_temp: false,
        };
        DataplaneDocument::new(&opts, "cladnet-bench dataplane".into())
    }

    #[test]
    fn medians_ratios_and_verdict() {
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![metrics(16.0), metrics(15.0), metrics(17.0)];
        d.row_mut(Config::WireguardGo).runs = vec![metrics(0.3), metrics(0.4), metrics(0.35)];
        d.row_mut(Config::Boringtun).skipped = Some("boringtun-cli not installed".into());
        d.row_mut(Config::CladnetSealed).runs = vec![metrics(1.4), metrics(1.0)];
        d.row_mut(Config::CladnetSealed).errors = vec!["run 3: boom".into()];
        d.row_mut(Config::CladnetPlain).errors = vec!["run 1: boom".into()];
        d.finish();
        let sealed = &d.rows[3];
        assert_eq!(sealed.median.unwrap().tcp_gbps, 1.2);
        assert_eq!(sealed.min.unwrap().tcp_gbps, 1.0);
        assert_eq!(sealed.max.unwrap().tcp_gbps, 1.4);
        assert!((sealed.tcp_vs_best_wireguard.unwrap() - 1.2 / 0.35).abs() < 1e-9);
        assert!((sealed.tcp_vs_raw.unwrap() - 1.2 / 16.0).abs() < 1e-9);
        assert_eq!(d.best_wireguard, Some(Config::WireguardGo));
        assert_eq!(d.target_met, Some(true));
        assert!((d.rows[0].median.unwrap().cpu_percent_per_gbps - 100.0 / 16.0).abs() < 1e-9);
        assert!(d.any_failed());
        let table = d.table();
        for want in [
            "boringtun: skipped: boringtun-cli not installed",
            "cladnet-sealed (2/3 runs)",
            "cladnet-plain: failed: 1 failed run(s), errors below",
            "(wireguard-go): 3.43x PASS",
            "cladnet-sealed run 3: boom",
            "0.30-0.40",
        ] {
            assert!(table.contains(want), "{want:?} not in\n{table}");
        }
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["rows"][1]["config"], "wireguard-go");
        assert_eq!(json["best_wireguard"], "wireguard-go");
        assert_eq!(json["rows"][0]["runs"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn no_verdict_without_the_rows() {
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![metrics(16.0)];
        d.finish();
        assert_eq!(d.target_met, None);
        assert!(d.table().contains("not measured"), "{}", d.table());
        assert!(!d.any_failed());
    }
}
