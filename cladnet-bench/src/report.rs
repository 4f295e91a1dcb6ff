//! Presenting results: a plain-text table with the targets, and a JSON document.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

pub use crate::compare::Comparison;
use crate::{
    control::{ControlOptions, ControlReport, EventCounts, ProcessUse},
    error::{BenchError, Result},
    procs::EtcdCounters,
    stats::{Summary, median},
};

/// The goals the control plane is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Targets {
    /// Full convergence of the fleet (stated for 1000 agents), milliseconds.
    pub convergence_ms: f64,
    /// 99th percentile of the change fan-out latency, milliseconds.
    pub fanout_p99_ms: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            convergence_ms: 10_000.0,
            fanout_p99_ms: 500.0,
        }
    }
}

impl Targets {
    /// Whether `r` converged within the target.
    pub fn convergence_met(&self, r: &ControlReport) -> bool {
        r.convergence_ms < self.convergence_ms
    }

    /// Whether every fan-out event arrived and the p99 is within the target.
    pub fn fanout_met(&self, r: &ControlReport) -> bool {
        r.fanout_received == r.fanout_expected
            && r.fanout.is_none_or(|f| f.p99_ms < self.fanout_p99_ms)
    }

    /// Whether `r` meets both targets.
    pub fn met(&self, r: &ControlReport) -> bool {
        self.convergence_met(r) && self.fanout_met(r)
    }
}

/// Facts about the machine a benchmark ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal`, MiB.
    pub memory_mib: u64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
}

impl Machine {
    /// Reads the facts of this machine (unknown values are left empty or zero).
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let field = |text: &str, name: &str| -> String {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let memory_kib: u64 = field(&meminfo, "MemTotal")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: field(&cpuinfo, "model name"),
            memory_mib: memory_kib / 1024,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

/// The runs of one store and their median.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreResults {
    /// Which controller ran: empty for the one under test, `baseline` for
    /// `--baseline-controller-bin`.
    pub controller: String,
    /// Every run, in order.
    pub runs: Vec<ControlReport>,
    /// Per-field median of the runs (each number on its own, so it may mix runs).
    pub median: ControlReport,
    /// Whether the median meets both targets.
    pub targets_met: bool,
}

/// The whole control-plane benchmark, as written with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlDocument {
    /// Always `"control"`.
    pub scenario: &'static str,
    /// The command line that produced it.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// The goals.
    pub targets: Targets,
    /// Agents (N).
    pub agents: usize,
    /// Changes (K).
    pub changes: usize,
    /// Pause between changes, milliseconds.
    pub change_interval_ms: u64,
    /// Agents per HTTP/2 connection.
    pub agents_per_channel: usize,
    /// Join calls in flight at once.
    pub join_concurrency: usize,
    /// One entry per store (and controller).
    pub stores: Vec<StoreResults>,
    /// Ratios of the runs under test against a reference measured in the same invocation
    /// (a baseline controller, or agents watching etcd directly).
    pub comparisons: Vec<Comparison>,
}

impl ControlDocument {
    /// A document for `opts` with no results yet.
    pub fn new(opts: &ControlOptions, command: String, targets: Targets) -> Self {
        Self {
            scenario: "control",
            command,
            machine: Machine::current(),
            targets,
            agents: opts.agents,
            changes: opts.changes,
            change_interval_ms: u64::try_from(opts.change_interval.as_millis()).unwrap_or(0),
            agents_per_channel: opts.agents_per_channel,
            join_concurrency: opts.join_concurrency,
            stores: Vec::new(),
            comparisons: Vec::new(),
        }
    }

    /// Adds the runs of one store (at least one) of the controller under test.
    pub fn add_store(&mut self, runs: Vec<ControlReport>) {
        self.add_runs(String::new(), runs);
    }

    /// Adds the runs of one store of the controller labelled `controller`.
    pub fn add_runs(&mut self, controller: String, runs: Vec<ControlReport>) {
        if let Some(median) = median_report(&runs) {
            let targets_met = self.targets.met(&median);
            self.stores.push(StoreResults {
                controller,
                runs,
                median,
                targets_met,
            });
        }
    }

    /// Whether every store's median of the controller under test meets both targets.
    pub fn targets_met(&self) -> bool {
        self.stores
            .iter()
            .filter(|s| s.controller.is_empty())
            .all(|s| s.targets_met)
    }

    /// Adds the ratios of `runs` against `reference` (paired run by run).
    pub fn add_comparison(
        &mut self,
        against: &str,
        runs: &[ControlReport],
        reference: &[ControlReport],
    ) {
        self.comparisons
            .push(Comparison::of(against, runs, reference));
    }

    /// Writes the document as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(self, path)
    }

    /// The results as a plain-text table: one line per run, a median line per store when it
    /// ran more than once, the targets, and where the CPU time went.
    pub fn table(&self) -> String {
        let t = &self.targets;
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Control plane: {} agents, {} changes {} ms apart, {} agents per HTTP/2 connection, {} joins in flight",
            self.agents,
            self.changes,
            self.change_interval_ms,
            self.agents_per_channel,
            self.join_concurrency
        );
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {} MiB, Linux {}",
            m.cpus, m.cpu_model, m.memory_mib, m.kernel
        );
        let _ = writeln!(
            out,
            "Targets: full convergence < {}, fan-out p99 < {}\n",
            secs(t.convergence_ms),
            millis(t.fanout_p99_ms)
        );
        let mut rows = vec![
            [
                "store",
                "run",
                "all joined",
                "converged",
                "",
                "fan-out p50",
                "p99",
                "",
                "max",
                "received",
                "ctl peak RSS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for store in &self.stores {
            let mut add = |label: String, r: &ControlReport| {
                let f = r.fanout;
                let ms = |g: fn(&Summary) -> f64| f.as_ref().map_or("-".into(), |f| millis(g(f)));
                rows.push(vec![
                    store_label(store, r),
                    label,
                    secs(r.all_joined_ms),
                    secs(r.convergence_ms),
                    verdict(t.convergence_met(r)).into(),
                    ms(|f| f.p50_ms),
                    ms(|f| f.p99_ms),
                    verdict(t.fanout_met(r)).into(),
                    ms(|f| f.max_ms),
                    format!("{}/{}", r.fanout_received, r.fanout_expected),
                    no_controller(r, format!("{:.1} MiB", r.controller.peak_rss_mib)),
                ]);
            };
            for (i, r) in store.runs.iter().enumerate() {
                add((i + 1).to_string(), r);
            }
            if store.runs.len() > 1 {
                add("median".into(), &store.median);
            }
        }
        out.push_str(&align(&rows));
        out.push_str("\nCPU seconds (convergence / fan-out) and event volume:\n");
        let mut rows = vec![
            [
                "store",
                "run",
                "controller",
                "etcd",
                "agents (bench)",
                "join p50/p99",
                "snapshot peers",
                "peerUpserted",
                "Watch messages",
                "ctl µs/peer",
                "table check",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for store in &self.stores {
            let mut add = |label: String, r: &ControlReport| {
                let join = r.join_latency.as_ref().map_or("-".into(), |j| {
                    format!("{} / {}", millis(j.p50_ms), millis(j.p99_ms))
                });
                rows.push(vec![
                    store_label(store, r),
                    label,
                    no_controller(r, cpu(&r.controller)),
                    r.etcd.as_ref().map_or("-".into(), cpu),
                    cpu(&r.bench),
                    join,
                    r.events.snapshot_peers.to_string(),
                    r.events.peer_upserted.to_string(),
                    r.events.messages.to_string(),
                    no_controller(r, format!("{:.2}", r.controller_us_per_peer())),
                    format!(
                        "{}/{} equal",
                        r.table_check.agents_equal, r.table_check.agents
                    ),
                ]);
            };
            for (i, r) in store.runs.iter().enumerate() {
                add((i + 1).to_string(), r);
            }
            if store.runs.len() > 1 {
                add("median".into(), &store.median);
            }
        }
        out.push_str(&align(&rows));
        let etcd: Vec<(String, String, &ControlReport)> = self
            .stores
            .iter()
            .flat_map(|s| {
                let runs = s
                    .runs
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (store_label(s, r), (i + 1).to_string(), r));
                let median = (s.runs.len() > 1)
                    .then(|| (store_label(s, &s.median), "median".to_owned(), &s.median));
                runs.chain(median)
            })
            .filter(|(_, _, r)| r.etcd_counters.is_some())
            .collect();
        if !etcd.is_empty() {
            out.push_str("\netcd, whole run:\n");
            let mut rows = vec![
                [
                    "store",
                    "run",
                    "watch events sent",
                    "watch streams",
                    "Range calls (mean)",
                    "Txn calls (mean)",
                    "sent to clients",
                    "WAL fsyncs (mean)",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for (store, label, r) in etcd {
                let Some(c) = r.etcd_counters else { continue };
                rows.push(vec![
                    store,
                    label,
                    format!("{:.0}", c.watch_events_sent),
                    format!("{:.0}", c.watch_streams),
                    format!("{:.0} ({})", c.range_calls, millis(c.range_mean_ms)),
                    format!("{:.0} ({})", c.txn_calls, millis(c.txn_mean_ms)),
                    format!("{:.1} MiB", c.client_sent_mib),
                    format!("{:.0} ({})", c.wal_fsyncs, millis(c.wal_fsync_mean_ms)),
                ]);
            }
            out.push_str(&align(&rows));
        }
        for c in &self.comparisons {
            out.push('\n');
            out.push_str(&c.table());
        }
        out
    }
}

/// `text`, or `-` for a run without a controller (`etcd-direct`).
fn no_controller(r: &ControlReport, text: String) -> String {
    if r.store == crate::control::StoreKind::EtcdDirect {
        "-".into()
    } else {
        text
    }
}

/// `etcd`, or `etcd (baseline)` for a labelled controller.
fn store_label(results: &StoreResults, r: &ControlReport) -> String {
    if results.controller.is_empty() {
        r.store.to_string()
    } else {
        format!("{} ({})", r.store, results.controller)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

pub(crate) fn secs(ms: f64) -> String {
    format!("{:.2} s", ms / 1e3)
}

fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn cpu(u: &ProcessUse) -> String {
    format!("{:.2} / {:.2}", u.cpu_convergence_s, u.cpu_fanout_s)
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub(crate) fn write_json(value: &impl Serialize, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| BenchError::io("serializing the report", std::io::Error::other(e)))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::write(path, json + "\n")
        .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
}

/// Left-aligned columns separated by two spaces.
pub(crate) fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The per-field median of several runs of one store. `None` if `runs` is empty.
pub fn median_report(runs: &[ControlReport]) -> Option<ControlReport> {
    let first = runs.first()?;
    let med = |f: fn(&ControlReport) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    let med_u64 = |f: fn(&ControlReport) -> u64| {
        median(&runs.iter().map(|r| f(r) as f64).collect::<Vec<_>>()).unwrap_or(0.0) as u64
    };
    let med_summary = |f: fn(&ControlReport) -> Option<Summary>| {
        Summary::median_of(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let med_use = |f: fn(&ControlReport) -> Option<ProcessUse>| {
        let uses: Vec<ProcessUse> = runs.iter().filter_map(f).collect();
        let m = |g: fn(&ProcessUse) -> f64| median(&uses.iter().map(g).collect::<Vec<_>>());
        Some(ProcessUse {
            peak_rss_mib: m(|u| u.peak_rss_mib)?,
            end_rss_mib: m(|u| u.end_rss_mib)?,
            cpu_convergence_s: m(|u| u.cpu_convergence_s)?,
            cpu_fanout_s: m(|u| u.cpu_fanout_s)?,
        })
    };
    Some(ControlReport {
        store: first.store,
        agents: first.agents,
        changes: first.changes,
        all_joined_ms: med(|r| r.all_joined_ms),
        all_watching_ms: med(|r| r.all_watching_ms),
        convergence_ms: med(|r| r.convergence_ms),
        join_latency: med_summary(|r| r.join_latency),
        report_latency: med_summary(|r| r.report_latency),
        fanout: med_summary(|r| r.fanout),
        fanout_expected: first.fanout_expected,
        fanout_received: med(|r| r.fanout_received as f64) as usize,
        controller: med_use(|r| Some(r.controller)).unwrap_or_default(),
        etcd: med_use(|r| r.etcd),
        etcd_counters: median_counters(runs),
        bench: med_use(|r| Some(r.bench)).unwrap_or_default(),
        events: EventCounts {
            snapshots: med_u64(|r| r.events.snapshots),
            snapshot_peers: med_u64(|r| r.events.snapshot_peers),
            peer_upserted: med_u64(|r| r.events.peer_upserted),
            other: med_u64(|r| r.events.other),
            messages: med_u64(|r| r.events.messages),
        },
        delivered_convergence: med_u64(|r| r.delivered_convergence),
        table_check: first.table_check.clone(),
    })
}

/// The per-field median of the etcd counters of the runs that have them.
fn median_counters(runs: &[ControlReport]) -> Option<EtcdCounters> {
    let all: Vec<EtcdCounters> = runs.iter().filter_map(|r| r.etcd_counters).collect();
    let m = |f: fn(&EtcdCounters) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
    Some(EtcdCounters {
        watch_events_sent: m(|c| c.watch_events_sent)?,
        watch_streams: m(|c| c.watch_streams)?,
        range_calls: m(|c| c.range_calls)?,
        txn_calls: m(|c| c.txn_calls)?,
        client_sent_mib: m(|c| c.client_sent_mib)?,
        range_mean_ms: m(|c| c.range_mean_ms)?,
        txn_mean_ms: m(|c| c.txn_mean_ms)?,
        wal_fsyncs: m(|c| c.wal_fsyncs)?,
        wal_fsync_mean_ms: m(|c| c.wal_fsync_mean_ms)?,
    })
}

#[cfg(test)]
mod tests {
    use super::{ControlDocument, Targets, median_report};
    use crate::{
        control::{ControlOptions, ControlReport, EventCounts, ProcessUse, StoreKind},
        stats::Summary,
    };

    fn run(convergence_ms: f64, p99: u64) -> ControlReport {
        let mut sample: Vec<_> = (1..=p99).map(std::time::Duration::from_millis).collect();
        ControlReport {
            store: StoreKind::Embedded,
            agents: 1000,
            changes: 50,
            all_joined_ms: convergence_ms / 2.0,
            all_watching_ms: convergence_ms / 2.0,
            convergence_ms,
            join_latency: None,
            report_latency: None,
            fanout: Summary::of(&mut sample),
            fanout_expected: sample.len(),
            fanout_received: sample.len(),
            controller: ProcessUse::default(),
            etcd: None,
            etcd_counters: None,
            bench: ProcessUse::default(),
            events: EventCounts::default(),
            delivered_convergence: 0,
            table_check: Default::default(),
        }
    }

    #[test]
    fn targets_pass_and_fail() {
        let t = Targets::default();
        assert!(t.met(&run(3_000.0, 100)));
        assert!(!t.convergence_met(&run(12_000.0, 100)));
        assert!(!t.fanout_met(&run(3_000.0, 1_000)));
        let mut missing = run(3_000.0, 100);
        missing.fanout_received -= 1;
        assert!(!t.fanout_met(&missing));
    }

    #[test]
    fn median_of_three_runs() {
        let m = median_report(&[run(5_000.0, 100), run(9_000.0, 100), run(4_000.0, 100)]).unwrap();
        assert_eq!(m.convergence_ms, 5_000.0);
        assert!(median_report(&[]).is_none());
    }

    #[test]
    fn table_shows_verdicts_and_median() {
        let mut doc = ControlDocument::new(
            &ControlOptions::default(),
            "cladnet-bench control".into(),
            Targets::default(),
        );
        doc.add_store(vec![
            run(5_000.0, 100),
            run(11_000.0, 100),
            run(4_000.0, 100),
        ]);
        let table = doc.table();
        assert!(table.contains("median"), "{table}");
        assert!(table.contains("PASS"), "{table}");
        assert!(table.contains("FAIL"), "{table}");
        assert!(doc.targets_met());
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["stores"][0]["runs"].as_array().unwrap().len(), 3);
        assert_eq!(json["stores"][0]["median"]["store"], "embedded");
    }
}
