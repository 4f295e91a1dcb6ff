//! The dataplane scenario: two hosts in network namespaces joined by one veth pair (the
//! underlay, MTU 1500), and for each configuration — no tunnel, wireguard-go, boringtun,
//! CLADNet SEALED, CLADNet PLAIN — set up and torn down in turn:
//!
//! * single-stream TCP throughput and retransmits (`iperf3 -J`, A → B), with the busy CPU of
//!   the whole machine over the test (`/proc/stat`);
//! * the small-packet rate: 64-byte UDP datagrams sent as fast as iperf3 can, counted at the
//!   server;
//! * ping RTT (median and mean of 50 pings 20 ms apart).
//!
//! Runs are interleaved (run 1 of every configuration, then run 2 ...), so that a change in
//! the machine's background load hits every configuration alike; the report takes the median
//! of each metric over the runs.
//!
//! Entry point: [`run_dataplane_bench`]. Everything runs as root in namespaces this process
//! creates (see [`testbed`] for the names and the cleanup); the machine's own interfaces are
//! never touched.

mod measure;
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
pub use report::{DataplaneDocument, RunMetrics};
use testbed::{Testbed, which};

/// One configuration (a row of the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// Directly on the underlay addresses.
    Raw,
    /// Debian's `wireguard-go` on both hosts, configured with `wg`.
    WireguardGo,
    /// Cloudflare's `boringtun-cli` on both hosts, configured with `wg`.
    Boringtun,
    /// CLADNet agents on a network with `--encryption always` (WireGuard links).
    CladnetSealed,
    /// CLADNet agents on a network with `--encryption never` (PLAIN links).
    CladnetPlain,
}

impl Config {
    /// Every configuration, in table order.
    pub const ALL: [Self; 5] = [
        Self::Raw,
        Self::WireguardGo,
        Self::Boringtun,
        Self::CladnetSealed,
        Self::CladnetPlain,
    ];

    /// The row's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun => "boringtun",
            Self::CladnetSealed => "cladnet-sealed",
            Self::CladnetPlain => "cladnet-plain",
        }
    }

    /// Whether this is one of the standard WireGuard implementations CLADNet is compared with.
    pub fn is_wireguard(self) -> bool {
        matches!(self, Self::WireguardGo | Self::Boringtun)
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
            Config::Raw => None,
            Config::WireguardGo | Config::Boringtun if missing(&self.wg) => {
                Some("wg not installed (cargo xtask setup)".into())
            }
            Config::WireguardGo => missing(&self.wireguard_go)
                .then(|| "wireguard-go not installed (cargo xtask setup)".into()),
            Config::Boringtun => missing(&self.boringtun)
                .then(|| "boringtun-cli not installed (cargo xtask setup)".into()),
            Config::CladnetSealed | Config::CladnetPlain => {
                [&self.controller, &self.cli, &self.agent]
                    .into_iter()
                    .find(|p| !p.is_file())
                    .map(|p| release(p))
            }
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
    for run in 1..=opts.runs {
        for &config in &opts.configs {
            if doc.row_mut(config).skipped.is_some() {
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            eprintln!("dataplane: run {run}/{}: {config} ...", opts.runs);
            match measure_once(config, &tb, opts) {
                Ok(m) => {
                    eprintln!("  {}", m.summary());
                    doc.row_mut(config).runs.push(m);
                }
                Err(e) => {
                    let e = format!("run {run}: {e:#}");
                    eprintln!("  {config} FAILED: {e}");
                    doc.row_mut(config).errors.push(e);
                }
            }
        }
    }
    drop(tb);
    doc.finish();
    Ok(doc)
}

/// Sets `config` up, measures it once and tears it down.
fn measure_once(
    config: Config,
    tb: &Testbed,
    opts: &DataplaneOptions,
) -> anyhow::Result<RunMetrics> {
    let dir = testbed::temp_dir(config.name())?;
    let result = (|| {
        let tunnel = tunnel::setup(config, tb, &opts.bins, dir.path())?;
        std::thread::sleep(SETTLE);
        let background = measure::wait_for_quiet(opts.quiet_cpu_percent, opts.quiet_patience)?;
        let rtt = measure::ping(tb, tunnel.dst, opts.ping_count, PING_INTERVAL)?;
        std::thread::sleep(SETTLE);
        let tcp = measure::tcp(tb, tunnel.dst, opts.secs, dir.path())?;
        std::thread::sleep(SETTLE);
        let udp = measure::small_packets(tb, tunnel.dst, opts.secs, dir.path())?;
        Ok(RunMetrics::new(tunnel.mtu, background, tcp, udp, rtt))
    })();
    if opts.keep_temp || result.is_err() {
        let kept = testbed::keep(dir);
        eprintln!("  logs kept in {}", kept.display());
    }
    result
}
