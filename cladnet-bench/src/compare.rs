//! Ratios of one set of runs against a reference measured in the same invocation, paired run
//! by run: the controller under test against a baseline controller binary
//! (`--baseline-controller-bin`), or the controller path against agents that watch etcd
//! directly (`--store etcd-direct`, the seed's design).
//!
//! The machine's speed changes from day to day, so absolute times from different days cannot
//! be compared; runs interleaved in one invocation share the conditions, and their ratios can.
//! Every ratio is *run ÷ reference*: below 1 means the run under test is faster or cheaper.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    control::{ControlReport, StoreKind},
    report::align,
    stats::median,
};

/// One pair of runs (or the medians of the pairs), as ratios run ÷ reference. `None` where
/// one side lacks the measure (e.g. no controller when agents watch etcd directly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ratios {
    /// Full convergence time.
    pub convergence: Option<f64>,
    /// Controller CPU per peer message delivered in the convergence phase.
    pub controller_cpu_per_peer: Option<f64>,
    /// Controller plus etcd CPU per peer message delivered in the convergence phase.
    pub total_cpu_per_peer: Option<f64>,
    /// The controller's peak RSS.
    pub controller_peak_rss: Option<f64>,
    /// 99th percentile of the change fan-out.
    pub fanout_p99: Option<f64>,
    /// etcd CPU over the whole run.
    pub etcd_cpu: Option<f64>,
    /// Watch events etcd sent.
    pub etcd_watch_events: Option<f64>,
    /// Bytes etcd sent to its clients.
    pub etcd_sent: Option<f64>,
}

/// `a / b` when both are known and `b` is positive.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

/// Controller CPU per peer message, when a controller ran.
fn controller_cpu(r: &ControlReport) -> Option<f64> {
    (r.store != StoreKind::EtcdDirect).then(|| r.controller_us_per_peer())
}

/// Controller plus etcd CPU per peer message.
fn total_cpu(r: &ControlReport) -> f64 {
    controller_cpu(r).unwrap_or(0.0) + r.etcd_us_per_peer().unwrap_or(0.0)
}

impl Ratios {
    /// The ratios of `run` against `reference`.
    pub fn of(run: &ControlReport, reference: &ControlReport) -> Self {
        let etcd_cpu = |r: &ControlReport| r.etcd.map(|e| e.cpu_convergence_s + e.cpu_fanout_s);
        let counters = |r: &ControlReport, f: fn(&crate::procs::EtcdCounters) -> f64| {
            r.etcd_counters.as_ref().map(f)
        };
        let rss = |r: &ControlReport| {
            (r.store != StoreKind::EtcdDirect).then_some(r.controller.peak_rss_mib)
        };
        Self {
            convergence: ratio(Some(run.convergence_ms), Some(reference.convergence_ms)),
            controller_cpu_per_peer: ratio(controller_cpu(run), controller_cpu(reference)),
            total_cpu_per_peer: ratio(Some(total_cpu(run)), Some(total_cpu(reference))),
            controller_peak_rss: ratio(rss(run), rss(reference)),
            fanout_p99: ratio(
                run.fanout.map(|f| f.p99_ms),
                reference.fanout.map(|f| f.p99_ms),
            ),
            etcd_cpu: ratio(etcd_cpu(run), etcd_cpu(reference)),
            etcd_watch_events: ratio(
                counters(run, |c| c.watch_events_sent),
                counters(reference, |c| c.watch_events_sent),
            ),
            etcd_sent: ratio(
                counters(run, |c| c.client_sent_mib),
                counters(reference, |c| c.client_sent_mib),
            ),
        }
    }

    /// The per-field median of several ratio sets (fields missing everywhere stay `None`).
    pub fn median_of(all: &[Self]) -> Self {
        let m = |f: fn(&Self) -> Option<f64>| median(&all.iter().filter_map(f).collect::<Vec<_>>());
        Self {
            convergence: m(|r| r.convergence),
            controller_cpu_per_peer: m(|r| r.controller_cpu_per_peer),
            total_cpu_per_peer: m(|r| r.total_cpu_per_peer),
            controller_peak_rss: m(|r| r.controller_peak_rss),
            fanout_p99: m(|r| r.fanout_p99),
            etcd_cpu: m(|r| r.etcd_cpu),
            etcd_watch_events: m(|r| r.etcd_watch_events),
            etcd_sent: m(|r| r.etcd_sent),
        }
    }
}

/// The runs of one store under test against a reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// What the runs are compared with, e.g. `baseline controller` or `etcd-direct`.
    pub against: String,
    /// The store of the runs under test.
    pub store: Option<StoreKind>,
    /// The store of the reference runs.
    pub reference_store: Option<StoreKind>,
    /// One entry per pair of runs (run k against reference run k).
    pub pairs: Vec<Ratios>,
    /// The per-field median of the pairs.
    pub median: Ratios,
}

impl Comparison {
    /// Pairs `runs` with `reference` run by run (the shorter list decides how many pairs).
    pub fn of(against: &str, runs: &[ControlReport], reference: &[ControlReport]) -> Self {
        let pairs: Vec<Ratios> = runs
            .iter()
            .zip(reference)
            .map(|(r, b)| Ratios::of(r, b))
            .collect();
        Self {
            against: against.to_owned(),
            store: runs.first().map(|r| r.store),
            reference_store: reference.first().map(|r| r.store),
            median: Ratios::median_of(&pairs),
            pairs,
        }
    }

    /// The ratios as a plain-text table.
    pub fn table(&self) -> String {
        let name = |s: Option<StoreKind>| s.map_or("-".to_owned(), |s| s.to_string());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Ratios {} ÷ {} ({}), run by run (below 1: the run under test is faster or cheaper):",
            name(self.store),
            self.against,
            name(self.reference_store)
        );
        let mut rows = vec![
            [
                "pair",
                "converged",
                "ctl CPU/peer",
                "ctl+etcd CPU/peer",
                "ctl peak RSS",
                "fan-out p99",
                "etcd CPU",
                "etcd watch events",
                "etcd sent",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let x = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}x"));
        let mut add = |label: String, r: &Ratios| {
            rows.push(vec![
                label,
                x(r.convergence),
                x(r.controller_cpu_per_peer),
                x(r.total_cpu_per_peer),
                x(r.controller_peak_rss),
                x(r.fanout_p99),
                x(r.etcd_cpu),
                x(r.etcd_watch_events),
                x(r.etcd_sent),
            ]);
        };
        for (i, p) in self.pairs.iter().enumerate() {
            add((i + 1).to_string(), p);
        }
        if self.pairs.len() > 1 {
            add("median".into(), &self.median);
        }
        out.push_str(&align(&rows));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{Comparison, Ratios};
    use crate::control::{ControlReport, ProcessUse, StoreKind};

    fn report(store: StoreKind, convergence_ms: f64, ctl_cpu_s: f64) -> ControlReport {
        ControlReport {
            store,
            agents: 10,
            changes: 0,
            all_joined_ms: 0.0,
            all_watching_ms: 0.0,
            convergence_ms,
            join_latency: None,
            report_latency: None,
            fanout: None,
            fanout_expected: 0,
            fanout_received: 0,
            controller: ProcessUse {
                peak_rss_mib: 100.0,
                cpu_convergence_s: ctl_cpu_s,
                ..ProcessUse::default()
            },
            etcd: None,
            etcd_counters: None,
            bench: ProcessUse::default(),
            events: Default::default(),
            delivered_convergence: 1000,
            table_check: Default::default(),
        }
    }

    #[test]
    fn ratios_are_run_over_reference() {
        let r = Ratios::of(
            &report(StoreKind::Embedded, 2_000.0, 0.5),
            &report(StoreKind::Embedded, 8_000.0, 2.0),
        );
        assert_eq!(r.convergence, Some(0.25));
        assert_eq!(r.controller_cpu_per_peer, Some(0.25));
        assert_eq!(r.controller_peak_rss, Some(1.0));
        assert_eq!(r.fanout_p99, None, "no fan-out measured");
        assert_eq!(r.etcd_cpu, None);
    }

    #[test]
    fn etcd_direct_has_no_controller_ratio() {
        let r = Ratios::of(
            &report(StoreKind::Etcd, 3_000.0, 1.0),
            &report(StoreKind::EtcdDirect, 6_000.0, 0.0),
        );
        assert_eq!(r.convergence, Some(0.5));
        assert_eq!(r.controller_cpu_per_peer, None);
        assert_eq!(r.controller_peak_rss, None);
    }

    #[test]
    fn median_over_pairs_and_table() {
        let runs = [
            report(StoreKind::Etcd, 1_000.0, 1.0),
            report(StoreKind::Etcd, 3_000.0, 1.0),
            report(StoreKind::Etcd, 2_000.0, 1.0),
        ];
        let reference = [
            report(StoreKind::Etcd, 4_000.0, 2.0),
            report(StoreKind::Etcd, 4_000.0, 2.0),
            report(StoreKind::Etcd, 4_000.0, 2.0),
        ];
        let c = Comparison::of("baseline controller", &runs, &reference);
        assert_eq!(c.pairs.len(), 3);
        assert_eq!(c.median.convergence, Some(0.5));
        let t = c.table();
        assert!(t.contains("median"), "{t}");
        assert!(t.contains("0.50x"), "{t}");
    }
}
