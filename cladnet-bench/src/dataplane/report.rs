//! The dataplane results: per-run metrics, their median per configuration, ratios, the
//! plain-text table and the JSON document.

use std::{collections::HashMap, fmt::Write as _, path::Path};

use serde::Serialize;

use super::{
    Config, DataplaneOptions,
    drops::LossSites,
    measure::{Background, Rtt, SmallPackets, Tcp},
    testbed::{UNDERLAY_A, UNDERLAY_B, UNDERLAY_MTU},
    tunnel::{AgentDataplane, FloodRate, KernelCounters},
};
use crate::{
    report::{Machine, align, write_json},
    stats::median,
};

/// The goal: CLADNet SEALED single-stream TCP at least this many times the faster of
/// wireguard-go and boringtun, in the same run.
pub const SEALED_VS_WIREGUARD_TARGET: f64 = 3.0;
/// The goals for PLAIN on the eBPF engine, in the same run: single-stream TCP at
/// least this many times kernel VXLAN's ...
pub const EBPF_VS_VXLAN_TARGET: f64 = 1.0;
/// ... and at least this many times raw veth's (0.8 when the eBPF engine was built; issue 15
/// holds it at 0.9) ...
pub const EBPF_VS_RAW_TARGET: f64 = 0.9;
/// ... with less CPU per Gbit/s than PLAIN on the userspace engine (`cladnet-plain`): the
/// ratio of the two must be below this.
pub const EBPF_CPU_PER_GBPS_VS_USERSPACE_TARGET: f64 = 1.0;
/// Issue 11's goal for SEALED links under a handshake flood: `cladnet-sealed-flood` TCP at
/// least this share of `cladnet-sealed` in the same run.
pub const FLOOD_VS_SEALED_TARGET: f64 = 0.8;

/// Issue 13's goal for a relayed SEALED link: `cladnet-relayed` TCP (A → relay → B) at least
/// this share of the direct `cladnet-sealed` in the same run.
pub const RELAYED_VS_SEALED_TARGET: f64 = 0.5;

/// Issue 10's goal for a 1400-byte hop in the middle of the path: TCP over the link whose
/// agents find the path MTU themselves at least this share of the same link with
/// `--underlay-mtu 1400` set by hand, in the same run.
pub const MIDHOP_VS_MANUAL_TARGET: f64 = 0.9;

/// Issue 14's goal for pod traffic over advertised prefixes: `cladnet-ebpf-pods` TCP at least
/// this share of the host-to-host `cladnet-ebpf-plain` in the same run.
pub const PODS_VS_HOST_TARGET: f64 = 0.9;

/// Issue 15's goal for SEALED over several streams: `cladnet-sealed` TCP with
/// [`super::PARALLEL_STREAMS`] streams at least this share of raw's, in the same run.
pub const SEALED_PARALLEL_VS_RAW_TARGET: f64 = 0.3;

/// Issue 15's goals for `cladnet-sealed` against the anchors of the same run (medians):
/// single-stream TCP at least this share of raw's ...
pub const SEALED_VS_RAW_TARGET: f64 = 0.25;
/// ... a median RTT at most this many microseconds above raw's ...
pub const SEALED_ADDED_RTT_US_TARGET: f64 = 150.0;
/// ... and below boringtun's (the ratio of the two added RTTs under this) ...
pub const SEALED_ADDED_RTT_VS_BORINGTUN_TARGET: f64 = 1.0;
/// ... and at least this many times boringtun's 64-byte UDP packets received.
pub const SEALED_SMALL_PACKETS_VS_BORINGTUN_TARGET: f64 = 2.0;

/// What a CLADNet row's agents reported in one run, and the eBPF engine's counters after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunDataplane {
    /// The run (1-based).
    pub run: u32,
    /// Host A's and host B's agent, from `cladnet --json peers`.
    pub agents: Vec<AgentDataplane>,
    /// `cladnet-agent dataplane stats` of both hosts after the tests (eBPF rows only).
    pub kernel: Vec<KernelCounters>,
    /// What the flooder sent and got back (`cladnet-sealed-flood` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodRate>,
}

/// One goal of an issue, judged for one row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// The row it is about.
    pub config: Config,
    /// What is compared, e.g. `TCP vs vxlan`.
    pub metric: &'static str,
    /// The measured value (medians): a ratio, or microseconds when the metric says `us`.
    pub value: Option<f64>,
    /// `>=` or `<`.
    pub op: &'static str,
    /// The goal for `value`.
    pub goal: f64,
    /// Whether it was met (unknown when a row is missing).
    pub met: Option<bool>,
    /// `PASS`, `MISS` or `not measured`.
    pub verdict: &'static str,
}

impl TargetCheck {
    /// `value op goal` judged for `config`'s `metric` (`op` is `>=`, `<=` or `<`).
    fn new(
        config: Config,
        metric: &'static str,
        value: Option<f64>,
        op: &'static str,
        goal: f64,
    ) -> Self {
        let met = value.map(|v| match op {
            "<" => v < goal,
            "<=" => v <= goal,
            _ => v >= goal,
        });
        Self {
            config,
            metric,
            value,
            op,
            goal,
            met,
            verdict: verdict(met),
        }
    }
}

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
    /// CPU of the tunnel's processes (agents or WireGuard daemons, user + system) during the
    /// single-stream TCP test, percent of one core; 0 for raw and VXLAN.
    pub tunnel_process_cpu_percent: f64,
    /// The machine's softirq time during the single-stream TCP test, percent of one core.
    pub softirq_cpu_percent: f64,
    /// (`tunnel_process_cpu_percent` + `softirq_cpu_percent`) per Gbit/s of single-stream TCP:
    /// the CPU the tunnel costs, in percent of one core.
    pub tunnel_cpu_percent_per_gbps: f64,
    /// The parallel-stream test (`iperf3 -P 4`), for the rows that run it.
    pub parallel: Option<ParallelTcp>,
    /// Where the 64-byte test's lost datagrams were dropped, when the counters could be read.
    pub udp_drops: Option<UdpDrops>,
    /// Busy CPU of the whole machine in the second before the measurements (other load on
    /// the machine), percent of all cores.
    pub background_cpu_percent: f64,
    /// Seconds spent waiting for the machine to quiet down before the measurements.
    pub waited_secs: f64,
}

/// Where the 64-byte test's lost datagrams were dropped (see [`LossSites`]), of one run or
/// aggregated over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UdpDrops {
    /// At the device host A routes B through (its queue overflowed: the sender outran the
    /// tunnel).
    pub sender_device: f64,
    /// At the tunnel's own sockets on host B.
    pub tunnel_sockets: f64,
    /// At the receiving iperf3's socket.
    pub receiver_app: f64,
}

impl UdpDrops {
    fn combine(runs: &[Self], agg: fn(&[f64]) -> Option<f64>) -> Option<Self> {
        let f = |g: fn(&Self) -> f64| agg(&runs.iter().map(g).collect::<Vec<_>>());
        Some(Self {
            sender_device: f(|m| m.sender_device)?,
            tunnel_sockets: f(|m| m.tunnel_sockets)?,
            receiver_app: f(|m| m.receiver_app)?,
        })
    }
}

impl From<LossSites> for UdpDrops {
    fn from(l: LossSites) -> Self {
        Self {
            sender_device: l.sender_device as f64,
            tunnel_sockets: l.tunnel_sockets as f64,
            receiver_app: l.receiver_app as f64,
        }
    }
}

/// The parallel-stream TCP test of one run (or the median, minimum or maximum over runs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ParallelTcp {
    /// Parallel streams (`iperf3 -P`).
    pub streams: f64,
    /// Throughput at the receiver, all streams, Gbit/s.
    pub gbps: f64,
    /// TCP retransmissions.
    pub retransmits: f64,
    /// Busy CPU of the whole machine, percent of all cores.
    pub cpu_percent: f64,
    /// CPU of the tunnel's processes, percent of one core.
    pub tunnel_process_cpu_percent: f64,
    /// The machine's softirq time, percent of one core.
    pub softirq_cpu_percent: f64,
    /// (`tunnel_process_cpu_percent` + `softirq_cpu_percent`) per Gbit/s.
    pub tunnel_cpu_percent_per_gbps: f64,
}

impl ParallelTcp {
    fn new(streams: u32, tcp: Tcp) -> Self {
        Self {
            streams: f64::from(streams),
            gbps: tcp.gbps,
            retransmits: tcp.retransmits as f64,
            cpu_percent: tcp.cpu_percent,
            tunnel_process_cpu_percent: tcp.tunnel_process_cpu_percent,
            softirq_cpu_percent: tcp.softirq_cpu_percent,
            tunnel_cpu_percent_per_gbps: tunnel_cpu_per_gbps(&tcp),
        }
    }

    fn combine(runs: &[Self], agg: fn(&[f64]) -> Option<f64>) -> Option<Self> {
        let f = |g: fn(&Self) -> f64| agg(&runs.iter().map(g).collect::<Vec<_>>());
        Some(Self {
            streams: f(|m| m.streams)?,
            gbps: f(|m| m.gbps)?,
            retransmits: f(|m| m.retransmits)?,
            cpu_percent: f(|m| m.cpu_percent)?,
            tunnel_process_cpu_percent: f(|m| m.tunnel_process_cpu_percent)?,
            softirq_cpu_percent: f(|m| m.softirq_cpu_percent)?,
            tunnel_cpu_percent_per_gbps: f(|m| m.tunnel_cpu_percent_per_gbps)?,
        })
    }
}

/// The tunnel's CPU (its processes + softirq, percent of one core) per Gbit/s; 0 when
/// nothing went through.
fn tunnel_cpu_per_gbps(tcp: &Tcp) -> f64 {
    if tcp.gbps > 0.0 {
        (tcp.tunnel_process_cpu_percent + tcp.softirq_cpu_percent) / tcp.gbps
    } else {
        0.0
    }
}

impl RunMetrics {
    /// The metrics of one run; `parallel` is the `iperf3 -P streams` test, when it ran.
    pub fn new(
        overlay_mtu: [u32; 2],
        background: Background,
        tcp: Tcp,
        parallel: Option<(u32, Tcp)>,
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
            tunnel_process_cpu_percent: tcp.tunnel_process_cpu_percent,
            softirq_cpu_percent: tcp.softirq_cpu_percent,
            tunnel_cpu_percent_per_gbps: tunnel_cpu_per_gbps(&tcp),
            parallel: parallel.map(|(streams, t)| ParallelTcp::new(streams, t)),
            udp_drops: udp.drops.map(UdpDrops::from),
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
            tunnel_process_cpu_percent: f(|m| m.tunnel_process_cpu_percent)?,
            softirq_cpu_percent: f(|m| m.softirq_cpu_percent)?,
            tunnel_cpu_percent_per_gbps: f(|m| m.tunnel_cpu_percent_per_gbps)?,
            parallel: ParallelTcp::combine(
                &runs.iter().filter_map(|m| m.parallel).collect::<Vec<_>>(),
                agg,
            ),
            udp_drops: UdpDrops::combine(
                &runs.iter().filter_map(|m| m.udp_drops).collect::<Vec<_>>(),
                agg,
            ),
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

/// `PASS`, `MISS` or `not measured`.
fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "not measured",
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
    /// Median TCP throughput over kernel VXLAN's median.
    pub tcp_vs_vxlan: Option<f64>,
    /// Median parallel-stream TCP throughput over raw's parallel-stream median.
    pub parallel_vs_raw: Option<f64>,
    /// Median CPU %/Gbit/s over `cladnet-plain`'s (PLAIN on the userspace engine); below 1
    /// is cheaper.
    pub cpu_per_gbps_vs_userspace_plain: Option<f64>,
    /// CLADNet rows: the dataplane the agents reported, per successful run.
    pub dataplane: Vec<RunDataplane>,
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
            tcp_vs_vxlan: None,
            parallel_vs_raw: None,
            cpu_per_gbps_vs_userspace_plain: None,
            dataplane: Vec::new(),
        }
    }

    fn tcp_median(&self) -> Option<f64> {
        self.median.map(|m| m.tcp_gbps)
    }

    /// The engines (and eBPF receive hooks) the agents reported over all runs, e.g.
    /// `ebpf/tc` or `userspace`; `-` for the other rows.
    pub fn dataplane_label(&self) -> String {
        let mut labels: Vec<String> = Vec::new();
        for a in self.dataplane.iter().flat_map(|d| &d.agents) {
            let label = match &a.hook {
                Some(h) => format!("{}/{h}", a.engine),
                None => a.engine.clone(),
            };
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        if labels.is_empty() {
            "-".into()
        } else {
            labels.join(", ")
        }
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
    /// The eBPF PLAIN targets (TCP vs vxlan and vs raw, CPU per Gbit/s vs the userspace
    /// engine) for `cladnet-ebpf-plain` (the hook the agent picks) and
    /// `cladnet-ebpf-plain-tc` (TC ingress forced).
    pub ebpf_targets: Vec<TargetCheck>,
    /// `cladnet-sealed-flood` TCP over `cladnet-sealed` TCP (medians), against
    /// [`FLOOD_VS_SEALED_TARGET`].
    pub flood_target: Option<TargetCheck>,
    /// `cladnet-relayed` TCP over `cladnet-sealed` TCP (medians), against
    /// [`RELAYED_VS_SEALED_TARGET`], when `cladnet-relayed` ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relayed_target: Option<TargetCheck>,
    /// Each mid-path MTU row whose agents find the path MTU, TCP over its hand-set baseline
    /// (medians), against [`MIDHOP_VS_MANUAL_TARGET`].
    pub midhop_targets: Vec<TargetCheck>,
    /// `cladnet-ebpf-pods` TCP over `cladnet-ebpf-plain` TCP (medians), against
    /// [`PODS_VS_HOST_TARGET`], when `cladnet-ebpf-pods` ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods_target: Option<TargetCheck>,
    /// `cladnet-sealed` parallel-stream TCP over raw's (medians), against
    /// [`SEALED_PARALLEL_VS_RAW_TARGET`], when `cladnet-sealed` ran.
    pub parallel_target: Option<TargetCheck>,
    /// Issue 15's other goals for `cladnet-sealed` (TCP vs raw, RTT added over raw's and vs
    /// boringtun's, 64-byte packets vs boringtun), when `cladnet-sealed` ran.
    pub sealed_targets: Vec<TargetCheck>,
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
            ebpf_targets: Vec::new(),
            flood_target: None,
            relayed_target: None,
            pods_target: None,
            midhop_targets: Vec::new(),
            parallel_target: None,
            sealed_targets: Vec::new(),
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
        let vxlan = tcp.get(&Config::Vxlan).copied();
        let userspace_cpu = self
            .rows
            .iter()
            .find(|r| r.config == Config::CladnetPlain)
            .and_then(|r| r.median)
            .map(|m| m.cpu_percent_per_gbps);
        let best = tcp
            .iter()
            .filter(|(c, _)| c.is_wireguard())
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(&c, &g)| (c, g));
        self.best_wireguard = best.map(|(c, _)| c);
        let ratio = |num: f64, den: Option<f64>| den.filter(|d| *d > 0.0).map(|d| num / d);
        let parallel = |r: &RowResult| r.median.and_then(|m| m.parallel).map(|p| p.gbps);
        let raw_parallel = self
            .rows
            .iter()
            .find(|r| r.config == Config::Raw)
            .and_then(parallel);
        for row in &mut self.rows {
            row.parallel_vs_raw = parallel(row).and_then(|g| ratio(g, raw_parallel));
            if let Some(g) = row.tcp_median() {
                row.tcp_vs_raw = ratio(g, raw);
                row.tcp_vs_best_wireguard = ratio(g, best.map(|b| b.1));
                row.tcp_vs_vxlan = ratio(g, vxlan);
            }
            if let Some(m) = row.median {
                row.cpu_per_gbps_vs_userspace_plain = ratio(m.cpu_percent_per_gbps, userspace_cpu);
            }
        }
        self.ebpf_targets = self
            .rows
            .iter()
            // The forced-XDP row is a diagnostic (which hook suits forwarded pod traffic on a
            // veth test bed), not a hook the agent would pick there.
            .filter(|r| {
                r.config.is_ebpf()
                    && !r.config.is_midhop()
                    && r.config.pods().is_none()
                    && r.config != Config::CladnetEbpfPlainXdp
            })
            .flat_map(|r| {
                [
                    ("TCP vs vxlan", r.tcp_vs_vxlan, ">=", EBPF_VS_VXLAN_TARGET),
                    ("TCP vs raw", r.tcp_vs_raw, ">=", EBPF_VS_RAW_TARGET),
                    (
                        "CPU %/Gbit/s vs cladnet-plain (userspace)",
                        r.cpu_per_gbps_vs_userspace_plain,
                        "<",
                        EBPF_CPU_PER_GBPS_VS_USERSPACE_TARGET,
                    ),
                ]
                .map(|(metric, value, op, goal)| {
                    TargetCheck::new(r.config, metric, value, op, goal)
                })
            })
            .collect();
        let flood = ratio(
            tcp.get(&Config::CladnetSealedFlood).copied().unwrap_or(0.0),
            tcp.get(&Config::CladnetSealed).copied(),
        )
        .filter(|_| tcp.contains_key(&Config::CladnetSealedFlood));
        self.flood_target = self
            .rows
            .iter()
            .any(|r| r.config == Config::CladnetSealedFlood)
            .then(|| {
                TargetCheck::new(
                    Config::CladnetSealedFlood,
                    "TCP vs cladnet-sealed",
                    flood,
                    ">=",
                    FLOOD_VS_SEALED_TARGET,
                )
            });
        self.relayed_target = self
            .rows
            .iter()
            .any(|r| r.config == Config::CladnetRelayed)
            .then(|| {
                let value = tcp
                    .get(&Config::CladnetRelayed)
                    .and_then(|&relayed| ratio(relayed, tcp.get(&Config::CladnetSealed).copied()));
                TargetCheck::new(
                    Config::CladnetRelayed,
                    "TCP vs cladnet-sealed",
                    value,
                    ">=",
                    RELAYED_VS_SEALED_TARGET,
                )
            });
        self.pods_target = tcp.get(&Config::CladnetEbpfPods).map(|&pods| {
            let value = ratio(pods, tcp.get(&Config::CladnetEbpfPlain).copied());
            TargetCheck::new(
                Config::CladnetEbpfPods,
                "TCP vs cladnet-ebpf-plain",
                value,
                ">=",
                PODS_VS_HOST_TARGET,
            )
        });
        self.midhop_targets = self
            .rows
            .iter()
            .filter_map(|r| {
                let baseline = r.config.midhop_baseline()?;
                let value = tcp
                    .get(&r.config)
                    .and_then(|&g| ratio(g, tcp.get(&baseline).copied()));
                Some(TargetCheck::new(
                    r.config,
                    baseline.midhop_metric(),
                    value,
                    ">=",
                    MIDHOP_VS_MANUAL_TARGET,
                ))
            })
            .collect();
        self.parallel_target = self
            .rows
            .iter()
            .find(|r| r.config == Config::CladnetSealed)
            .map(|r| {
                TargetCheck::new(
                    r.config,
                    "4-stream TCP vs raw 4-stream",
                    r.parallel_vs_raw,
                    ">=",
                    SEALED_PARALLEL_VS_RAW_TARGET,
                )
            });
        self.sealed_targets = self.sealed_targets();
        self.target_met = self
            .rows
            .iter()
            .find(|r| r.config == Config::CladnetSealed)
            .and_then(|r| r.tcp_vs_best_wireguard)
            .map(|r| r >= self.sealed_vs_wireguard_target);
    }

    /// Issue 15's goals for `cladnet-sealed` besides the 4-stream one, against raw and
    /// boringtun in the same run; empty when `cladnet-sealed` did not run.
    fn sealed_targets(&self) -> Vec<TargetCheck> {
        let row = |c: Config| self.rows.iter().find(|r| r.config == c);
        let Some((sealed, tcp_vs_raw)) =
            row(Config::CladnetSealed).and_then(|r| Some((r.median?, r.tcp_vs_raw)))
        else {
            return Vec::new();
        };
        let median = |c: Config| row(c).and_then(|r| r.median);
        let (raw, boringtun) = (median(Config::Raw), median(Config::Boringtun));
        let added_us = |m: RunMetrics| raw.map(|r| (m.rtt_median_ms - r.rtt_median_ms) * 1e3);
        let rtt_vs_boringtun = added_us(sealed)
            .zip(boringtun.and_then(added_us))
            .filter(|(_, b)| *b > 0.0)
            .map(|(s, b)| s / b);
        let small_vs_boringtun = boringtun
            .filter(|b| b.udp_kpps > 0.0)
            .map(|b| sealed.udp_kpps / b.udp_kpps);
        let sealed_check = |metric, value, op, goal| {
            TargetCheck::new(Config::CladnetSealed, metric, value, op, goal)
        };
        vec![
            sealed_check("TCP vs raw", tcp_vs_raw, ">=", SEALED_VS_RAW_TARGET),
            sealed_check(
                "RTT added over raw, us",
                added_us(sealed),
                "<=",
                SEALED_ADDED_RTT_US_TARGET,
            ),
            sealed_check(
                "RTT added over raw vs boringtun's",
                rtt_vs_boringtun,
                "<",
                SEALED_ADDED_RTT_VS_BORINGTUN_TARGET,
            ),
            sealed_check(
                "64 B UDP received vs boringtun",
                small_vs_boringtun,
                ">=",
                SEALED_SMALL_PACKETS_VS_BORINGTUN_TARGET,
            ),
        ]
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
        if self.rows.iter().any(|r| r.config.is_relayed()) {
            let _ = writeln!(
                out,
                "cladnet-relayed: A =1500= relay host =1500= B (same addresses; the relay host \
                 forwards nothing), A -> B through the relay host's agent (relay = true)"
            );
        }
        if self.rows.iter().any(|r| r.config.is_midhop()) {
            let _ = writeln!(
                out,
                "*-midhop1400 rows: A =1500= router =1400= router =1500= B (same addresses); \
                 MTU A/B = the agents' per-peer route MTU when they find the path MTU, the \
                 device MTU with --underlay-mtu 1400 (-manual)"
            );
        }
        let _ = writeln!(
            out,
            "CPU % = busy time of the whole machine over the TCP test (100 % = all {} CPUs); \
             tunnel CPU1 = user + system time of the tunnel's processes (both agents or both \
             WireGuard daemons, all threads; none for raw/vxlan) + the machine's softirq time, \
             in % of ONE core\n",
            m.cpus
        );
        let mut rows = vec![
            [
                "config",
                "dataplane",
                "MTU A/B",
                "TCP Gbit/s",
                "(min-max)",
                "retr",
                "x raw",
                "x vxlan",
                "x best WG",
                "64 B UDP kpps",
                "loss %",
                "RTT ms med/avg",
                "CPU %",
                "CPU %/Gbit/s",
                "tunnel CPU1 %/Gbit/s",
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
                let mut row = vec![
                    r.config.to_string(),
                    r.dataplane_label(),
                    "-".into(),
                    what.into(),
                ];
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
                r.dataplane_label(),
                format!("{:.0}/{:.0}", med.overlay_mtu_a, med.overlay_mtu_b),
                gbps(med.tcp_gbps),
                format!("{}-{}", gbps(lo.tcp_gbps), gbps(hi.tcp_gbps)),
                format!("{:.0}", med.tcp_retransmits),
                times(r.tcp_vs_raw),
                times(r.tcp_vs_vxlan),
                times(r.tcp_vs_best_wireguard),
                format!("{:.1}", med.udp_kpps),
                format!("{:.1}", med.udp_loss_percent),
                format!("{:.3} / {:.3}", med.rtt_median_ms, med.rtt_avg_ms),
                format!("{:.0}", med.cpu_percent),
                format!("{:.1}", med.cpu_percent_per_gbps),
                format!("{:.1}", med.tunnel_cpu_percent_per_gbps),
            ]);
        }
        out.push_str(&align(&rows));
        out.push_str(&notes);
        out.push_str(&self.parallel_section());
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
                "tunnel CPU1 %",
                "-P 4 Gbit/s",
                "-P 4 tunnel CPU1 %",
                "64 B drops: device/tunnel/app",
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
                    format!(
                        "{:.0}",
                        m.tunnel_process_cpu_percent + m.softirq_cpu_percent
                    ),
                    m.parallel.map_or("-".into(), |p| gbps(p.gbps)),
                    m.parallel.map_or("-".into(), |p| {
                        format!(
                            "{:.0}",
                            p.tunnel_process_cpu_percent + p.softirq_cpu_percent
                        )
                    }),
                    m.udp_drops.map_or("-".into(), |d| {
                        format!(
                            "{:.0}/{:.0}/{:.0}",
                            d.sender_device, d.tunnel_sockets, d.receiver_app
                        )
                    }),
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
        if let Some(t) = &self.flood_target {
            let sent: Vec<u64> = self
                .rows
                .iter()
                .filter(|r| r.config == t.config)
                .flat_map(|r| &r.dataplane)
                .filter_map(|d| d.flood.map(|f| f.sent_per_sec))
                .collect();
            let _ = write!(
                out,
                "Target: {} {} {} {:.1} (handshake flood at host B, {} initiations/s)",
                t.config,
                t.metric,
                t.op,
                t.goal,
                median(&sent.iter().map(|&n| n as f64).collect::<Vec<_>>())
                    .map_or_else(|| "?".into(), |m| format!("{m:.0}"))
            );
            match t.value {
                Some(v) => {
                    let _ = writeln!(out, ": {v:.2}x {}", t.verdict);
                }
                None => out.push_str(": not measured (needs cladnet-sealed in the same run)\n"),
            }
        }
        if let Some(t) = &self.relayed_target {
            let value = t.value.map_or_else(
                || "not measured (needs both rows in the same run)".into(),
                |v| format!("{v:.2}x"),
            );
            let rtt = |c: Config| {
                self.rows
                    .iter()
                    .find(|r| r.config == c)
                    .and_then(|r| r.median)
                    .map_or_else(|| "?".into(), |m| format!("{:.3} ms", m.rtt_median_ms))
            };
            let _ = writeln!(
                out,
                "Target: {} (A -> relay -> B) {} {} {:.1}x: {value} {} (RTT {} relayed, {} \
                 direct)",
                t.config,
                t.metric,
                t.op,
                t.goal,
                t.verdict,
                rtt(Config::CladnetRelayed),
                rtt(Config::CladnetSealed)
            );
        }
        if let Some(t) = &self.pods_target {
            let value = t.value.map_or_else(
                || "not measured (needs cladnet-ebpf-plain in the same run)".into(),
                |v| format!("{v:.2}x"),
            );
            let _ = writeln!(
                out,
                "Target: {} (pod to pod) {} {} {:.1}x: {value} {}",
                t.config, t.metric, t.op, t.goal, t.verdict
            );
        }
        for t in self.parallel_target.iter().chain(&self.sealed_targets) {
            // An RTT in microseconds, every other value a ratio.
            let unit = if t.metric.ends_with(" us") { "" } else { "x" };
            let value = t.value.map_or_else(
                || "not measured (needs raw, and boringtun for its rows, in the same run)".into(),
                |v| format!("{v:.2}{unit}"),
            );
            let _ = writeln!(
                out,
                "Target: {} {} {} {:.2}{unit}: {value} {}",
                t.config, t.metric, t.op, t.goal, t.verdict
            );
        }
        for t in &self.midhop_targets {
            let value = t.value.map_or_else(
                || "not measured (needs both rows in the same run)".into(),
                |v| format!("{v:.2}x"),
            );
            let _ = writeln!(
                out,
                "Target: {} (1400-byte hop mid-path, path MTU found by the agents) {} {} {:.1}x: \
                 {value} {}",
                t.config, t.metric, t.op, t.goal, t.verdict
            );
        }
        out.push_str(&self.ebpf_section());
        for r in &self.rows {
            for e in &r.errors {
                let _ = writeln!(out, "\n{} {e}", r.config);
            }
        }
        out
    }
}

impl DataplaneDocument {
    /// The parallel-stream table (medians), when a row ran it.
    fn parallel_section(&self) -> String {
        let mut rows = vec![
            [
                "config",
                "streams",
                "TCP Gbit/s",
                "(min-max)",
                "retr",
                "x raw -P",
                "agents/daemons CPU1 %",
                "softirq CPU1 %",
                "tunnel CPU1 %/Gbit/s",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for r in &self.rows {
            let (Some(med), Some(lo), Some(hi)) = (
                r.median.and_then(|m| m.parallel),
                r.min.and_then(|m| m.parallel),
                r.max.and_then(|m| m.parallel),
            ) else {
                continue;
            };
            rows.push(vec![
                r.config.to_string(),
                format!("{:.0}", med.streams),
                gbps(med.gbps),
                format!("{}-{}", gbps(lo.gbps), gbps(hi.gbps)),
                format!("{:.0}", med.retransmits),
                r.parallel_vs_raw.map_or("-".into(), |v| format!("{v:.2}x")),
                format!("{:.0}", med.tunnel_process_cpu_percent),
                format!("{:.0}", med.softirq_cpu_percent),
                format!("{:.1}", med.tunnel_cpu_percent_per_gbps),
            ]);
        }
        if rows.len() == 1 {
            return String::new();
        }
        format!(
            "\nParallel TCP streams (iperf3 -P {}), medians:\n{}",
            super::PARALLEL_STREAMS,
            align(&rows)
        )
    }

    /// The eBPF PLAIN targets with PASS/MISS, then what the CLADNet agents reported about
    /// their dataplane and the eBPF engine's counters per run.
    fn ebpf_section(&self) -> String {
        let mut out = String::new();
        for t in &self.ebpf_targets {
            let label = match t.config {
                Config::CladnetEbpfPlainTc => "TC ingress forced",
                _ => "the hook the agent picks",
            };
            let hook = self
                .rows
                .iter()
                .find(|r| r.config == t.config)
                .map_or_else(|| "-".into(), RowResult::dataplane_label);
            let value = t.value.map_or("-".into(), |v| format!("{v:.2}x"));
            let _ = writeln!(
                out,
                "Target: {} ({label}, {hook}) {} {} {:.1}x: {value} {}",
                t.config, t.metric, t.op, t.goal, t.verdict
            );
        }
        let cladnet: Vec<&RowResult> = self
            .rows
            .iter()
            .filter(|r| !r.dataplane.is_empty())
            .collect();
        if cladnet.is_empty() {
            return out;
        }
        out.push_str(
            "\nDataplane the agents reported (cladnet --json peers: dataplane, the hook from \
             capabilities, dataplaneReason):\n",
        );
        for r in cladnet {
            let mut seen: Vec<&AgentDataplane> = Vec::new();
            for a in r.dataplane.iter().flat_map(|d| &d.agents) {
                if !seen.contains(&a) {
                    seen.push(a);
                    let hook = a.hook.as_deref().map_or(String::new(), |h| format!("/{h}"));
                    let _ = writeln!(
                        out,
                        "  {} host {}: {}{hook}: {}",
                        r.config, a.host, a.engine, a.reason
                    );
                }
            }
            for d in &r.dataplane {
                for k in &d.kernel {
                    let _ = writeln!(
                        out,
                        "  {} run {} host {}: eBPF counters rx_tunnel {} pkts (to socket {}), \
                         tx_to_userspace {}, drops {}",
                        r.config,
                        d.run,
                        k.host,
                        k.packets("rx_tunnel"),
                        k.packets("rx_to_socket"),
                        k.packets("tx_to_userspace"),
                        k.drops()
                    );
                }
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
    use super::{Config, DataplaneDocument, LossSites, RunDataplane, RunMetrics};
    use crate::dataplane::{
        AgentDataplane, Binaries, DataplaneOptions, KernelCounter, KernelCounters,
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
                tunnel_process_cpu_percent: 80.0,
                softirq_cpu_percent: 20.0,
            },
            Some((
                4,
                Tcp {
                    gbps: gbps * 2.0,
                    retransmits: 0,
                    cpu_percent: 100.0,
                    tunnel_process_cpu_percent: 150.0,
                    softirq_cpu_percent: 50.0,
                },
            )),
            SmallPackets {
                received_pps: 50_000.0,
                sent_pps: 100_000.0,
                loss_percent: 50.0,
                drops: Some(LossSites {
                    sender_device: 400_000,
                    tunnel_sockets: 0,
                    receiver_app: 100_000,
                }),
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
        let sealed = &d.rows[4];
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
        assert_eq!(json["rows"][2]["config"], "wireguard-go");
        assert_eq!(json["best_wireguard"], "wireguard-go");
        assert_eq!(json["rows"][0]["runs"].as_array().unwrap().len(), 3);
    }

    /// `metrics(gbps)` with this RTT median and 64-byte rate.
    fn with(gbps: f64, rtt_ms: f64, small_kpps: f64) -> RunMetrics {
        RunMetrics {
            rtt_median_ms: rtt_ms,
            udp_kpps: small_kpps,
            ..metrics(gbps)
        }
    }

    #[test]
    fn sealed_targets_judge_against_raw_and_boringtun_of_the_same_run() {
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![with(16.0, 0.050, 250.0)];
        d.row_mut(Config::Boringtun).runs = vec![with(0.5, 0.250, 60.0)];
        d.row_mut(Config::CladnetSealed).runs = vec![with(4.2, 0.240, 110.0)];
        d.finish();
        let got: Vec<_> = d
            .sealed_targets
            .iter()
            .map(|t| (t.metric, (t.value.unwrap() * 1e3).round() / 1e3, t.verdict))
            .collect();
        assert_eq!(
            got,
            [
                ("TCP vs raw", 0.263, "PASS"),
                ("RTT added over raw, us", 190.0, "MISS"),
                ("RTT added over raw vs boringtun's", 0.95, "PASS"),
                ("64 B UDP received vs boringtun", 1.833, "MISS"),
            ]
        );
        let table = d.table();
        for want in [
            "cladnet-sealed TCP vs raw >= 0.25x: 0.26x PASS",
            "cladnet-sealed RTT added over raw, us <= 150.00: 190.00 MISS",
            "cladnet-sealed RTT added over raw vs boringtun's < 1.00x: 0.95x PASS",
            "cladnet-sealed 64 B UDP received vs boringtun >= 2.00x: 1.83x MISS",
        ] {
            assert!(table.contains(want), "{want:?} not in\n{table}");
        }
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["sealed_targets"][1]["op"], "<=");

        // Without boringtun only the goals against raw are judged.
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![with(16.0, 0.050, 250.0)];
        d.row_mut(Config::CladnetSealed).runs = vec![with(3.2, 0.180, 110.0)];
        d.finish();
        let verdicts: Vec<_> = d.sealed_targets.iter().map(|t| t.verdict).collect();
        assert_eq!(verdicts, ["MISS", "PASS", "not measured", "not measured"]);
        // Without cladnet-sealed, nothing.
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![with(16.0, 0.050, 250.0)];
        d.finish();
        assert!(d.sealed_targets.is_empty());
    }

    #[test]
    fn parallel_streams_tunnel_cpu_and_their_target() {
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![metrics(10.0), metrics(12.0), metrics(11.0)];
        // SEALED's 4-stream median 2 x 2.0 = 4.0 Gbit/s against raw's 2 x 11 = 22: 0.18x.
        d.row_mut(Config::CladnetSealed).runs = vec![metrics(2.0), metrics(1.0), metrics(3.0)];
        let mut no_parallel = metrics(5.0);
        no_parallel.parallel = None;
        d.row_mut(Config::CladnetPlain).runs = vec![no_parallel];
        d.finish();
        let sealed = d
            .rows
            .iter()
            .find(|r| r.config == Config::CladnetSealed)
            .unwrap();
        let med = sealed.median.unwrap();
        // (80 % agents + 20 % softirq) of one core over 2 Gbit/s.
        assert!((med.tunnel_cpu_percent_per_gbps - 50.0).abs() < 1e-9);
        let p = med.parallel.unwrap();
        assert_eq!((p.streams, p.gbps), (4.0, 4.0));
        assert!((p.tunnel_cpu_percent_per_gbps - 200.0 / 4.0).abs() < 1e-9);
        assert!((sealed.parallel_vs_raw.unwrap() - 4.0 / 22.0).abs() < 1e-9);
        let t = d.parallel_target.as_ref().unwrap();
        assert_eq!((t.goal, t.met, t.verdict), (0.3, Some(false), "MISS"));
        let plain = d
            .rows
            .iter()
            .find(|r| r.config == Config::CladnetPlain)
            .unwrap();
        assert_eq!(plain.median.unwrap().parallel, None);
        assert_eq!(plain.parallel_vs_raw, None);
        let table = d.table();
        for want in [
            "Parallel TCP streams (iperf3 -P 4)",
            "cladnet-sealed 4-stream TCP vs raw 4-stream >= 0.30x: 0.18x MISS",
            "tunnel CPU1 %/Gbit/s",
            "64 B drops: device/tunnel/app",
            "400000/0/100000",
        ] {
            assert!(table.contains(want), "{want:?} not in\n{table}");
        }
        // Every run is in the JSON, with its own parallel-stream test and drop sites.
        let json = serde_json::to_value(&d).unwrap();
        let runs = json["rows"][4]["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[1]["parallel"]["gbps"], 2.0);
        assert_eq!(runs[1]["udp_drops"]["sender_device"], 400_000.0);
        assert_eq!(json["parallel_target"]["verdict"], "MISS");
    }

    fn agents(engine: &str, hook: Option<&str>) -> Vec<AgentDataplane> {
        ["a", "b"]
            .map(|host| AgentDataplane {
                host: host.into(),
                engine: engine.into(),
                hook: hook.map(str::to_owned),
                reason: format!("{engine} because"),
            })
            .to_vec()
    }

    #[test]
    fn ebpf_targets_pass_and_miss() {
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![metrics(18.0)];
        d.row_mut(Config::Vxlan).runs = vec![metrics(10.0)];
        // userspace PLAIN: 100 % CPU at 5 Gbit/s = 20 %/Gbit/s.
        d.row_mut(Config::CladnetPlain).runs = vec![metrics(5.0)];
        d.row_mut(Config::CladnetPlain).dataplane = vec![RunDataplane {
            run: 1,
            agents: agents("userspace", None),
            kernel: Vec::new(),
            flood: None,
        }];
        // XDP driver: 4 Gbit/s: below vxlan and raw, 25 %/Gbit/s: more CPU per Gbit/s.
        d.row_mut(Config::CladnetEbpfPlain).runs = vec![metrics(4.0)];
        d.row_mut(Config::CladnetEbpfPlain).dataplane = vec![RunDataplane {
            run: 1,
            agents: agents("ebpf", Some("xdp-driver")),
            kernel: vec![KernelCounters {
                host: "b".into(),
                counters: vec![KernelCounter {
                    slot: "rx_tunnel".into(),
                    packets: 1234,
                    bytes: 99,
                }],
            }],
            flood: None,
        }];
        // TC ingress: 17 Gbit/s: 1.7x vxlan, 0.94x raw, 5.9 %/Gbit/s.
        d.row_mut(Config::CladnetEbpfPlainTc).runs = vec![metrics(17.0)];
        d.row_mut(Config::CladnetEbpfPlainTc).dataplane = vec![RunDataplane {
            run: 1,
            agents: agents("ebpf", Some("tc")),
            kernel: Vec::new(),
            flood: None,
        }];
        d.finish();
        let verdicts: Vec<(Config, &str, &str)> = d
            .ebpf_targets
            .iter()
            .map(|t| (t.config, t.metric, t.verdict))
            .collect();
        assert_eq!(verdicts.len(), 6, "{verdicts:?}");
        for (config, _, verdict) in &verdicts {
            let want = if *config == Config::CladnetEbpfPlainTc {
                "PASS"
            } else {
                "MISS"
            };
            assert_eq!(*verdict, want, "{verdicts:?}");
        }
        let tc = d
            .rows
            .iter()
            .find(|r| r.config == Config::CladnetEbpfPlainTc);
        let tc = tc.unwrap();
        assert!((tc.tcp_vs_vxlan.unwrap() - 1.7).abs() < 1e-9);
        assert!((tc.cpu_per_gbps_vs_userspace_plain.unwrap() - 5.0 / 17.0).abs() < 1e-9);
        assert_eq!(tc.dataplane_label(), "ebpf/tc");
        let table = d.table();
        for want in [
            "cladnet-ebpf-plain-tc (TC ingress forced, ebpf/tc) TCP vs vxlan >= 1.0x: 1.70x PASS",
            "cladnet-ebpf-plain (the hook the agent picks, ebpf/xdp-driver) TCP vs raw >= 0.9x: \
             0.22x MISS",
            "CPU %/Gbit/s vs cladnet-plain (userspace) < 1.0x: 1.25x MISS",
            "cladnet-plain host a: userspace: userspace because",
            "cladnet-ebpf-plain host b: ebpf/xdp-driver: ebpf because",
            "run 1 host b: eBPF counters rx_tunnel 1234 pkts (to socket 0)",
        ] {
            assert!(table.contains(want), "{want:?} not in\n{table}");
        }
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["ebpf_targets"][0]["verdict"], "MISS");
        assert_eq!(json["ebpf_targets"][3]["config"], "cladnet-ebpf-plain-tc");
        assert_eq!(json["rows"][7]["dataplane"][0]["agents"][1]["hook"], "tc");
    }

    #[test]
    fn no_verdict_without_the_rows() {
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![metrics(16.0)];
        d.finish();
        assert_eq!(d.target_met, None);
        assert!(d.table().contains("not measured"), "{}", d.table());
        assert!(d.ebpf_targets.iter().all(|t| t.met.is_none()));
        assert_eq!(d.ebpf_targets.len(), 6);
        assert!(!d.any_failed());
    }

    #[test]
    fn pod_rows_are_compared_with_the_host_row() {
        let mut d = doc();
        d.row_mut(Config::CladnetEbpfPlain).runs = vec![metrics(10.0)];
        d.row_mut(Config::CladnetEbpfPods).runs = vec![metrics(9.5), metrics(9.0)];
        d.row_mut(Config::CladnetEbpfPodsVxlan).runs = vec![metrics(5.0)];
        d.finish();
        let t = d.pods_target.as_ref().expect("pods target");
        assert_eq!(t.verdict, "PASS");
        assert!((t.value.unwrap() - 0.925).abs() < 1e-9);
        assert!(d.ebpf_targets.iter().all(|t| t.config.pods().is_none()));
        let table = d.table();
        let want = "cladnet-ebpf-pods (pod to pod) TCP vs cladnet-ebpf-plain >= 0.9x: 0.93x PASS";
        assert!(table.contains(want), "{want:?} not in\n{table}");
        let mut d = doc();
        d.finish();
        assert!(d.pods_target.is_none(), "no pod row, no pod target");
    }

    #[test]
    fn midhop_rows_are_compared_with_their_hand_set_baseline() {
        let mut d = doc();
        d.row_mut(Config::Raw).runs = vec![metrics(16.0)];
        d.row_mut(Config::CladnetEbpfPlainMidhop).runs = vec![metrics(4.4), metrics(4.6)];
        d.row_mut(Config::CladnetEbpfPlainMidhopManual).runs = vec![metrics(5.0)];
        d.row_mut(Config::CladnetSealedMidhop).runs = vec![metrics(0.8)];
        d.row_mut(Config::CladnetSealedMidhopManual).runs = vec![metrics(1.0)];
        d.finish();
        let got: Vec<_> = d
            .midhop_targets
            .iter()
            .map(|t| (t.config, t.verdict))
            .collect();
        assert_eq!(
            got,
            [
                (Config::CladnetEbpfPlainMidhop, "PASS"),
                (Config::CladnetSealedMidhop, "MISS"),
            ]
        );
        assert!((d.midhop_targets[0].value.unwrap() - 0.9).abs() < 1e-9);
        // The mid-path rows are not held to the eBPF rows' targets against raw and vxlan.
        assert!(d.ebpf_targets.iter().all(|t| !t.config.is_midhop()));
        let table = d.table();
        for want in [
            "cladnet-ebpf-plain-midhop1400 (1400-byte hop mid-path, path MTU found by the \
             agents) TCP vs cladnet-ebpf-plain-midhop1400-manual >= 0.9x: 0.90x PASS",
            "TCP vs cladnet-sealed-midhop1400-manual >= 0.9x: 0.80x MISS",
            "A =1500= router =1400= router =1500= B",
        ] {
            assert!(table.contains(want), "{want:?} not in\n{table}");
        }
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json["midhop_targets"][0]["config"],
            "cladnet-ebpf-plain-midhop1400"
        );
        let mut d = doc();
        d.row_mut(Config::CladnetSealedMidhop).runs = vec![metrics(0.8)];
        d.finish();
        assert_eq!(d.midhop_targets[1].verdict, "not measured");
    }

    #[test]
    fn relayed_row_is_compared_with_direct_sealed() {
        let mut d = doc();
        d.row_mut(Config::CladnetSealed).runs = vec![metrics(1.0), metrics(1.2)];
        d.row_mut(Config::CladnetRelayed).runs = vec![metrics(0.6), metrics(0.7)];
        d.finish();
        let t = d.relayed_target.as_ref().expect("relayed target");
        assert!((t.value.unwrap() - 0.65 / 1.1).abs() < 1e-9);
        assert_eq!((t.met, t.verdict), (Some(true), "PASS"));
        let table = d.table();
        assert!(
            table.contains("Target: cladnet-relayed (A -> relay -> B) TCP vs cladnet-sealed >= 0.5x: 0.59x PASS (RTT"),
            "{table}"
        );
        assert!(table.contains("relay host forwards nothing"), "{table}");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["relayed_target"]["config"], "cladnet-relayed");
        let mut d = doc();
        d.row_mut(Config::CladnetSealed).runs = vec![metrics(2.0)];
        d.row_mut(Config::CladnetRelayed).runs = vec![metrics(0.9)];
        d.finish();
        assert_eq!(d.relayed_target.as_ref().unwrap().verdict, "MISS");
        let mut d = doc();
        d.row_mut(Config::CladnetRelayed).runs = vec![metrics(0.9)];
        d.finish();
        assert_eq!(d.relayed_target.as_ref().unwrap().verdict, "not measured");
        let cfg = Config::CladnetRelayed.cladnet().unwrap();
        assert_eq!((cfg.encryption, cfg.dataplane), ("always", "userspace"));
        assert!(Config::CladnetRelayed.is_relayed() && !Config::CladnetSealed.is_relayed());
    }

    #[test]
    fn midhop_configs() {
        for c in Config::ALL {
            assert_eq!(c.name().parse::<Config>(), Ok(c));
            if let Some(b) = c.midhop_baseline() {
                assert!(c.is_midhop() && b.is_midhop());
                assert_eq!(c.cladnet().unwrap().underlay_mtu, None);
                assert_eq!(b.cladnet().unwrap().underlay_mtu, Some(1400));
                assert_eq!(
                    c.cladnet().unwrap().encryption,
                    b.cladnet().unwrap().encryption
                );
                assert_eq!(
                    c.cladnet().unwrap().dataplane,
                    b.cladnet().unwrap().dataplane
                );
            }
        }
        assert!(!Config::CladnetEbpfPlain.is_midhop());
    }
}
