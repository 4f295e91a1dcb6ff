//! The dataplane scenario: two hosts in network namespaces joined by one veth pair (the
//! underlay, MTU 1500), and for each configuration — no tunnel, kernel VXLAN, wireguard-go,
//! boringtun, CLADNet SEALED, CLADNet PLAIN on the userspace engine, CLADNet PLAIN on the
//! eBPF engine (the hook the agent picks, and TC ingress forced) — set up and torn down in
//! turn:
//!
//! * single-stream TCP throughput and retransmits (`iperf3 -J`, A → B), with the busy CPU of
//!   the whole machine over the test (`/proc/stat`);
//! * the small-packet rate: 64-byte UDP datagrams sent as fast as iperf3 can, counted at the
//!   server;
//! * ping RTT (median and mean of 50 pings 20 ms apart);
//! * for raw, VXLAN, SEALED and the WireGuard rows also TCP over 4 parallel streams
//!   (`iperf3 -P 4`).
//!
//! The pod rows (`cladnet-ebpf-pods`, `cladnet-ebpf-pods-vxlan`) measure between a pod
//! namespace behind each host instead of between the hosts ([`pods`]).
//!
//! Each TCP test also counts the CPU time the tunnel costs: the user + system time of its
//! processes (both agents, or both WireGuard daemons, every thread; none for raw and VXLAN)
//! plus the machine's softirq time (where the kernel does its share, for every row), as a
//! share of one core, per Gbit/s.
//!
//! The `*-midhop1400` rows run on a test bed of their own, where a 1400-byte link between two
//! routers sits in the middle of the path (`A =1500= r1 =1400= r2 =1500= B`): once with the
//! agents finding the path MTU themselves, once with `--underlay-mtu 1400` given by hand, and
//! the first must reach 0.9x the second's TCP throughput.
//!
//! The `cladnet-relayed` row runs on a third test bed, where A and B reach each other only
//! through a relay host (`A — R — B`, R forwards nothing): the SEALED link goes through R's
//! agent (`relay = true`, issue 13), and its TCP throughput must reach 0.5x the direct
//! `cladnet-sealed` row's in the same run.
//!
//! Runs are interleaved (run 1 of every configuration, then run 2 ...), so that a change in
//! the machine's background load hits every configuration alike; the report takes the median
//! of each metric over the runs.
//!
//! Entry point: [`run_dataplane_bench`]. Everything runs as root in namespaces this process
//! creates (see [`testbed`] for the names and the cleanup); the machine's own interfaces are
//! never touched.

mod drops;
mod measure;
mod pods;
pub mod report;
pub mod testbed;
mod tunnel;

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, ensure};
use serde::Serialize;

pub use measure::{Background, Rtt, SmallPackets, Tcp};
pub use report::{DataplaneDocument, RunDataplane, RunMetrics};
use testbed::{Testbed, which};
pub use tunnel::{AgentDataplane, KernelCounter, KernelCounters};

/// One configuration (a row of the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// Directly on the underlay addresses.
    Raw,
    /// The kernel's VXLAN on the underlay veth (the kernel baseline for a plain overlay).
    Vxlan,
    /// Debian's `wireguard-go` on both hosts, configured with `wg`.
    WireguardGo,
    /// Cloudflare's `boringtun-cli` on both hosts, configured with `wg`.
    Boringtun,
    /// CLADNet agents on a network with `--encryption always` (WireGuard links), userspace
    /// engine.
    CladnetSealed,
    /// CLADNet agents on a network with `--encryption never` (PLAIN links), userspace engine
    /// (`--dataplane userspace`).
    CladnetPlain,
    /// PLAIN links on the eBPF engine (`--dataplane ebpf`), on the receive hook the agent
    /// picks itself (XDP driver → XDP generic → TC ingress).
    CladnetEbpfPlain,
    /// PLAIN links on the eBPF engine with the receive hook forced to TC ingress: the receive
    /// program is attached with `cladnet-agent dataplane attach --xdp-mode tc` into the
    /// agent's pin directory before the agent starts, and the agent takes it over in place
    /// (a take-over keeps the pinned hook when `auto` allows it).
    CladnetEbpfPlainTc,
    /// `cladnet-sealed` while a third namespace, linked to host B only, floods B's agent with
    /// WireGuard handshake initiations (correct mac1, random contents; `tests/scripts/attack.py
    /// flood`) for the whole measurement. Compared with `cladnet-sealed` of the same run.
    CladnetSealedFlood,
    /// `cladnet-sealed` between two hosts that cannot reach each other (see
    /// [`testbed::Testbed::create_relayed`]): the controller and a third agent with
    /// `--relay true` run on the relay host between them, and the pair's link goes A → relay →
    /// B (checked in host A's `cladnet-agent status`). Compared with `cladnet-sealed` of the
    /// same run.
    CladnetRelayed,
    /// `cladnet-ebpf-plain` on the mid-path MTU test bed (`A =1500= r1 =1400= r2 =1500= B`,
    /// see [`testbed::Testbed::create_midhop`]) with the agents' defaults: they find the
    /// 1400-byte hop themselves (per-peer path MTU discovery).
    #[serde(rename = "cladnet-ebpf-plain-midhop1400")]
    CladnetEbpfPlainMidhop,
    /// The same link with `--underlay-mtu 1400` given to both agents by hand: the baseline
    /// [`Config::CladnetEbpfPlainMidhop`] is compared with.
    #[serde(rename = "cladnet-ebpf-plain-midhop1400-manual")]
    CladnetEbpfPlainMidhopManual,
    /// `cladnet-sealed` on the mid-path MTU test bed, path MTU found by the agents.
    #[serde(rename = "cladnet-sealed-midhop1400")]
    CladnetSealedMidhop,
    /// `cladnet-sealed` on the mid-path MTU test bed with `--underlay-mtu 1400` by hand.
    #[serde(rename = "cladnet-sealed-midhop1400-manual")]
    CladnetSealedMidhopManual,
    /// `cladnet-ebpf-plain` measured between a pod namespace behind each host, the agents
    /// routing the pod networks they advertise (one CLAD header, in the kernel).
    CladnetEbpfPods,
    /// The same pods with a kernel VXLAN tunnel between the hosts' overlay addresses instead
    /// of advertised prefixes: what a cluster with an encapsulating CNI pays on CLADNet.
    CladnetEbpfPodsVxlan,
    /// `cladnet-ebpf-plain` with the receive hook forced to driver-mode XDP (compared with
    /// [`Config::CladnetEbpfPodsXdp`]: which hook suits forwarded traffic).
    CladnetEbpfPlainXdp,
    /// `cladnet-ebpf-pods` with the receive hook forced to driver-mode XDP: decapsulated
    /// frames are built into new packets after XDP and merged by GRO, so the host forwards
    /// them to its pods without the tunnel marks a TC decapsulation leaves on a GSO packet.
    CladnetEbpfPodsXdp,
}

/// How a CLADNet configuration runs its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CladnetSetup {
    /// `cladnet network create --encryption`.
    pub(crate) encryption: &'static str,
    /// `cladnet-agent run --dataplane`, and the engine the agents must then report.
    pub(crate) dataplane: &'static str,
    /// The receive hook to pre-attach (`dataplane attach --xdp-mode`) and to require.
    pub(crate) forced_hook: Option<&'static str>,
    /// `cladnet-agent run --underlay-mtu`, when set by hand.
    pub(crate) underlay_mtu: Option<u32>,
}

impl Config {
    /// Every configuration, in table order.
    pub const ALL: [Self; 18] = [
        Self::Raw,
        Self::Vxlan,
        Self::WireguardGo,
        Self::Boringtun,
        Self::CladnetSealed,
        Self::CladnetPlain,
        Self::CladnetEbpfPlain,
        Self::CladnetEbpfPlainTc,
        Self::CladnetSealedFlood,
        Self::CladnetRelayed,
        Self::CladnetEbpfPlainMidhop,
        Self::CladnetEbpfPlainMidhopManual,
        Self::CladnetSealedMidhop,
        Self::CladnetSealedMidhopManual,
        Self::CladnetEbpfPods,
        Self::CladnetEbpfPodsVxlan,
        Self::CladnetEbpfPlainXdp,
        Self::CladnetEbpfPodsXdp,
    ];

    /// The row's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Vxlan => "vxlan",
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun => "boringtun",
            Self::CladnetSealed => "cladnet-sealed",
            Self::CladnetPlain => "cladnet-plain",
            Self::CladnetEbpfPlain => "cladnet-ebpf-plain",
            Self::CladnetEbpfPlainTc => "cladnet-ebpf-plain-tc",
            Self::CladnetSealedFlood => "cladnet-sealed-flood",
            Self::CladnetRelayed => "cladnet-relayed",
            Self::CladnetEbpfPlainMidhop => "cladnet-ebpf-plain-midhop1400",
            Self::CladnetEbpfPlainMidhopManual => "cladnet-ebpf-plain-midhop1400-manual",
            Self::CladnetSealedMidhop => "cladnet-sealed-midhop1400",
            Self::CladnetSealedMidhopManual => "cladnet-sealed-midhop1400-manual",
            Self::CladnetEbpfPods => "cladnet-ebpf-pods",
            Self::CladnetEbpfPodsVxlan => "cladnet-ebpf-pods-vxlan",
            Self::CladnetEbpfPlainXdp => "cladnet-ebpf-plain-xdp",
            Self::CladnetEbpfPodsXdp => "cladnet-ebpf-pods-xdp",
        }
    }

    /// Whether this is one of the standard WireGuard implementations CLADNet is compared with.
    pub fn is_wireguard(self) -> bool {
        matches!(self, Self::WireguardGo | Self::Boringtun)
    }

    /// Whether this row also runs the parallel-stream TCP test ([`PARALLEL_STREAMS`]): the
    /// physical limit, the kernel's tunnel, SEALED and the WireGuard implementations.
    pub fn runs_parallel_streams(self) -> bool {
        matches!(
            self,
            Self::Raw | Self::Vxlan | Self::CladnetSealed | Self::WireguardGo | Self::Boringtun
        )
    }

    /// Whether this row runs PLAIN links on the eBPF engine.
    pub fn is_ebpf(self) -> bool {
        matches!(
            self,
            Self::CladnetEbpfPlain
                | Self::CladnetEbpfPlainTc
                | Self::CladnetEbpfPlainMidhop
                | Self::CladnetEbpfPlainMidhopManual
                | Self::CladnetEbpfPods
                | Self::CladnetEbpfPodsVxlan
                | Self::CladnetEbpfPlainXdp
                | Self::CladnetEbpfPodsXdp
        )
    }

    /// How the pod rows carry pod traffic (`None`: a host-to-host row).
    pub(crate) fn pods(self) -> Option<pods::PodRouting> {
        match self {
            Self::CladnetEbpfPods | Self::CladnetEbpfPodsXdp => Some(pods::PodRouting::Prefixes),
            Self::CladnetEbpfPodsVxlan => Some(pods::PodRouting::Vxlan),
            _ => None,
        }
    }

    /// Whether this row runs on the relay test bed (A and B reach each other only through a
    /// relay agent).
    pub fn is_relayed(self) -> bool {
        self == Self::CladnetRelayed
    }

    /// Whether this row runs on the mid-path MTU test bed (a 1400-byte hop between two
    /// routers, not on either host's link).
    pub fn is_midhop(self) -> bool {
        self.midhop_baseline().is_some() || self.is_midhop_baseline()
    }

    /// For a mid-path row whose agents find the path MTU themselves: the row of the same link
    /// with `--underlay-mtu 1400` by hand, which it must come close to.
    pub fn midhop_baseline(self) -> Option<Self> {
        match self {
            Self::CladnetEbpfPlainMidhop => Some(Self::CladnetEbpfPlainMidhopManual),
            Self::CladnetSealedMidhop => Some(Self::CladnetSealedMidhopManual),
            _ => None,
        }
    }

    /// The mid-path target's metric, named after this baseline row.
    pub(crate) fn midhop_metric(self) -> &'static str {
        match self {
            Self::CladnetSealedMidhopManual => "TCP vs cladnet-sealed-midhop1400-manual",
            _ => "TCP vs cladnet-ebpf-plain-midhop1400-manual",
        }
    }

    fn is_midhop_baseline(self) -> bool {
        matches!(
            self,
            Self::CladnetEbpfPlainMidhopManual | Self::CladnetSealedMidhopManual
        )
    }

    /// How the agents run, for the CLADNet rows.
    pub(crate) fn cladnet(self) -> Option<CladnetSetup> {
        let (encryption, dataplane, forced_hook) = match self {
            Self::CladnetSealed
            | Self::CladnetSealedFlood
            | Self::CladnetRelayed
            | Self::CladnetSealedMidhop
            | Self::CladnetSealedMidhopManual => ("always", "userspace", None),
            Self::CladnetPlain => ("never", "userspace", None),
            Self::CladnetEbpfPlain
            | Self::CladnetEbpfPlainMidhop
            | Self::CladnetEbpfPlainMidhopManual
            | Self::CladnetEbpfPods
            | Self::CladnetEbpfPodsVxlan => ("never", "ebpf", None),
            Self::CladnetEbpfPlainTc => ("never", "ebpf", Some("tc")),
            Self::CladnetEbpfPlainXdp | Self::CladnetEbpfPodsXdp => {
                ("never", "ebpf", Some("xdp-driver"))
            }
            _ => return None,
        };
        Some(CladnetSetup {
            encryption,
            dataplane,
            forced_hook,
            underlay_mtu: self.is_midhop_baseline().then_some(testbed::MIDHOP_MTU),
        })
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Config {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
                format!("unknown configuration {s:?}: use {}", names.join(", "))
            })
    }
}

/// The programs a run starts.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `cladnet-controller` (release build).
    pub controller: PathBuf,
    /// The `cladnet` CLI.
    pub cli: PathBuf,
    /// `cladnet-agent` (release build).
    pub agent: PathBuf,
    /// `wireguard-go`.
    pub wireguard_go: PathBuf,
    /// `boringtun-cli`.
    pub boringtun: PathBuf,
    /// `wg` (wireguard-tools).
    pub wg: PathBuf,
}

impl Binaries {
    /// The CLADNet binaries in `dir`, the others from the `PATH`; `boringtun-cli` also from
    /// `$CARGO_HOME/bin` or `~/.cargo/bin`, where `cargo install` puts it.
    pub fn in_dir(dir: &Path) -> Self {
        let cargo_bin = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .map(|d| d.join("bin/boringtun-cli"));
        let boringtun = which(Path::new("boringtun-cli"))
            .or(cargo_bin)
            .unwrap_or_else(|| PathBuf::from("boringtun-cli"));
        Self {
            controller: dir.join("cladnet-controller"),
            cli: dir.join("cladnet"),
            agent: dir.join("cladnet-agent"),
            wireguard_go: PathBuf::from("wireguard-go"),
            boringtun,
            wg: PathBuf::from("wg"),
        }
    }

    /// The WireGuard daemon of a WireGuard configuration.
    fn daemon(&self, config: Config) -> Option<&Path> {
        match config {
            Config::WireguardGo => Some(&self.wireguard_go),
            Config::Boringtun => Some(&self.boringtun),
            _ => None,
        }
    }

    /// Why `config` cannot run here (a missing program), if it cannot.
    fn missing(&self, config: Config) -> Option<String> {
        let missing = |p: &Path| which(p).is_none();
        let release = |p: &Path| {
            format!(
                "{} not built (cargo build --release -p cladnet-controller -p cladnet-cli -p \
                 cladnet-agent)",
                p.display()
            )
        };
        match config {
            Config::Raw | Config::Vxlan => None,
            Config::WireguardGo | Config::Boringtun if missing(&self.wg) => {
                Some("wg not installed (cargo xtask setup)".into())
            }
            Config::WireguardGo => missing(&self.wireguard_go)
                .then(|| "wireguard-go not installed (cargo xtask setup)".into()),
            Config::Boringtun => missing(&self.boringtun)
                .then(|| "boringtun-cli not installed (cargo xtask setup)".into()),
            Config::CladnetSealedFlood if missing(Path::new("python3")) => {
                Some("python3 not installed (cargo xtask setup), needed by the flooder".into())
            }
            Config::CladnetSealed
            | Config::CladnetPlain
            | Config::CladnetEbpfPlain
            | Config::CladnetEbpfPlainTc
            | Config::CladnetSealedFlood
            | Config::CladnetRelayed
            | Config::CladnetEbpfPlainMidhop
            | Config::CladnetEbpfPlainMidhopManual
            | Config::CladnetSealedMidhop
            | Config::CladnetSealedMidhopManual
            | Config::CladnetEbpfPods
            | Config::CladnetEbpfPodsVxlan
            | Config::CladnetEbpfPlainXdp
            | Config::CladnetEbpfPodsXdp => [&self.controller, &self.cli, &self.agent]
                .into_iter()
                .find(|p| !p.is_file())
                .map(|p| release(p)),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DataplaneOptions {
    /// Seconds of each iperf3 test.
    pub secs: u32,
    /// Runs of every configuration.
    pub runs: u32,
    /// The configurations, in table order.
    pub configs: Vec<Config>,
    /// Pings per run.
    pub ping_count: u32,
    /// Before measuring, wait until the machine's busy CPU (other builds and tests) is at most
    /// this share of all cores, percent ...
    pub quiet_cpu_percent: f64,
    /// ... for at most this long.
    pub quiet_patience: Duration,
    /// The programs.
    pub bins: Binaries,
    /// Keep each setup's directory (logs, keys, the controller's store).
    pub keep_temp: bool,
}

/// Streams of the parallel TCP test (`iperf3 -P`), on the rows of
/// [`Config::runs_parallel_streams`].
pub const PARALLEL_STREAMS: u32 = 4;
/// Pause between two pings.
const PING_INTERVAL: Duration = Duration::from_millis(20);
/// Pause after a tunnel comes up and between the tests, so that one test's tail (queues,
/// TIME_WAIT, a busy daemon) does not leak into the next.
const SETTLE: Duration = Duration::from_millis(500);

/// Runs every configuration `opts.runs` times and returns the document (also when some runs
/// failed: their errors are in it). `stop` set (by a signal handler) ends the run early with
/// an error.
pub fn run_dataplane_bench(
    opts: &DataplaneOptions,
    command: String,
    stop: &AtomicBool,
) -> anyhow::Result<DataplaneDocument> {
    ensure!(
        opts.secs > 0 && opts.runs > 0,
        "--secs and --runs must be at least 1"
    );
    ensure!(
        testbed::is_root(),
        "the dataplane benchmark creates network namespaces: run it as root"
    );
    for tool in ["ip", "nsenter", "iperf3", "ping", "ss"] {
        ensure!(
            which(Path::new(tool)).is_some(),
            "{tool} is not installed (cargo xtask setup installs it)"
        );
    }
    testbed::sweep_stale();
    let mut doc = DataplaneDocument::new(opts, command);
    for &config in &opts.configs {
        if let Some(why) = opts.bins.missing(config) {
            eprintln!("dataplane: {config}: skipped: {why}");
            doc.row_mut(config).skipped = Some(why);
        }
    }
    let tb = Testbed::create()?;
    // The mid-path MTU rows' own test bed, only when one of them runs.
    let midhop = opts
        .configs
        .iter()
        .any(|&c| c.is_midhop() && doc.row_mut(c).skipped.is_none())
        .then(Testbed::create_midhop)
        .transpose()?;
    // The relayed row's own test bed, only when it runs.
    let relayed = opts
        .configs
        .iter()
        .any(|&c| c.is_relayed() && doc.row_mut(c).skipped.is_none())
        .then(Testbed::create_relayed)
        .transpose()?;
    for run in 1..=opts.runs {
        for &config in &opts.configs {
            if doc.row_mut(config).skipped.is_some() {
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            eprintln!("dataplane: run {run}/{}: {config} ...", opts.runs);
            let bed = match (&midhop, &relayed) {
                (Some(m), _) if config.is_midhop() => m,
                (_, Some(r)) if config.is_relayed() => r,
                _ => &tb,
            };
            match measure_once(config, bed, opts) {
                Ok((m, dataplane)) => {
                    eprintln!("  {}", m.summary());
                    for d in &dataplane.agents {
                        eprintln!("  agent {}: {} ({})", d.host, d.engine, d.reason);
                    }
                    let row = doc.row_mut(config);
                    row.runs.push(m);
                    if config.cladnet().is_some() {
                        row.dataplane.push(RunDataplane { run, ..dataplane });
                    }
                }
                Err(e) => {
                    let e = format!("run {run}: {e:#}");
                    eprintln!("  {config} FAILED: {e}");
                    doc.row_mut(config).errors.push(e);
                }
            }
        }
    }
    drop(relayed);
    drop(midhop);
    drop(tb);
    doc.finish();
    Ok(doc)
}

/// Sets `config` up, measures it once and tears it down; for the CLADNet rows also what the
/// agents report about their dataplane and, for the eBPF rows, the kernel counters.
fn measure_once(
    config: Config,
    tb: &Testbed,
    opts: &DataplaneOptions,
) -> anyhow::Result<(RunMetrics, RunDataplane)> {
    let dir = testbed::temp_dir(config.name())?;
    let result = (|| {
        // An eBPF row's XDP program left on the veth would slow down every other row.
        tb.ensure_no_xdp()?;
        let tunnel = tunnel::setup(config, tb, &opts.bins, dir.path())?;
        // The pod rows measure between their pods; the kernel counters stay the hosts'.
        let (hosts, tb) = (tb, tunnel.pods.as_ref().unwrap_or(tb));
        std::thread::sleep(SETTLE);
        let background = measure::wait_for_quiet(opts.quiet_cpu_percent, opts.quiet_patience)?;
        let rtt = measure::ping(tb, tunnel.dst, opts.ping_count, PING_INTERVAL)?;
        std::thread::sleep(SETTLE);
        let carriers = measure::Carriers(&tunnel.carriers());
        let tcp = measure::tcp(tb, tunnel.dst, opts.secs, 1, carriers, dir.path())?;
        std::thread::sleep(SETTLE);
        let parallel = if config.runs_parallel_streams() {
            let p = measure::tcp(
                tb,
                tunnel.dst,
                opts.secs,
                PARALLEL_STREAMS,
                carriers,
                dir.path(),
            )?;
            std::thread::sleep(SETTLE);
            Some((PARALLEL_STREAMS, p))
        } else {
            None
        };
        let udp = measure::small_packets(tb, tunnel.dst, opts.secs, dir.path())?;
        let kernel = if config.is_ebpf() {
            tunnel
                .kernel_counters(hosts, &opts.bins)
                .unwrap_or_else(|e| {
                    eprintln!("  could not read the eBPF counters: {e:#}");
                    Vec::new()
                })
        } else {
            Vec::new()
        };
        let flood = tunnel.flood_rate();
        if let Some(f) = flood {
            eprintln!(
                "  flood: {} initiations/s sent (paced at {}), {} cookie replies/s back",
                f.sent_per_sec, f.target_per_sec, f.cookie_replies_per_sec
            );
        }
        let dataplane = RunDataplane {
            run: 0,
            agents: tunnel.dataplane.clone(),
            kernel,
            flood,
        };
        Ok((
            RunMetrics::new(tunnel.mtu, background, tcp, parallel, udp, rtt),
            dataplane,
        ))
    })();
    if opts.keep_temp || result.is_err() {
        let kept = testbed::keep(dir);
        eprintln!("  logs kept in {}", kept.display());
    }
    result
}
