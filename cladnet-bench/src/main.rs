//! `cladnet-bench`: CLADNet benchmarks from the command line.
//!
//! ```text
//! cladnet-bench control [--agents N] [--changes K] [--store embedded|etcd|both] [--runs R] [--json PATH]
//! cladnet-bench dataplane [--secs N] [--runs N] [--only raw,wireguard-go,...] [--out PATH]
//! ```
//!
//! Prints a table with the targets and PASS/FAIL next to them. `cargo xtask bench control`
//! (or `dataplane`) builds what the scenario needs and this binary in release mode and runs it.
#![forbid(unsafe_code)]

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use cladnet_bench::{
    ControlOptions, StoreKind,
    dataplane::{self, Binaries, Config, DataplaneOptions},
    report::{ControlDocument, Targets},
};
use clap::{Parser, Subcommand, ValueEnum};

/// CLADNet benchmarks.
#[derive(Debug, Parser)]
#[command(about, version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Control plane: N agents join one network and watch it; measures full convergence,
    /// change fan-out latency (p50/p99/max) and the controller's peak RSS.
    Control(ControlArgs),
    /// Dataplane: two hosts in network namespaces over one veth pair; single-stream TCP,
    /// 64-byte UDP rate, ping RTT and CPU with no tunnel, kernel VXLAN, wireguard-go, boringtun
    /// and CLADNet (SEALED; PLAIN on the userspace and the eBPF engine). Needs root.
    Dataplane(DataplaneArgs),
}

/// Which stores to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stores {
    Embedded,
    Etcd,
    Both,
}

impl Stores {
    fn kinds(self) -> Vec<StoreKind> {
        match self {
            Self::Embedded => vec![StoreKind::Embedded],
            Self::Etcd => vec![StoreKind::Etcd],
            Self::Both => vec![StoreKind::Embedded, StoreKind::Etcd],
        }
    }
}

#[derive(Debug, clap::Args)]
struct ControlArgs {
    /// Simulated agents (N).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Changes after convergence (K): each a Report of a new public endpoint by one agent.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Milliseconds between two changes.
    #[arg(long, default_value_t = 100)]
    change_interval_ms: u64,
    /// The controller's store.
    #[arg(long, value_enum, default_value = "both")]
    store: Stores,
    /// Runs per store; the table adds their median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// Agents sharing one HTTP/2 connection to the controller.
    #[arg(long, default_value_t = 50)]
    agents_per_channel: usize,
    /// Join calls in flight at once.
    #[arg(long, default_value_t = 64)]
    join_concurrency: usize,
    /// Limit in seconds of the convergence phase and of the fan-out wait.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The controller binary [default: cladnet-controller next to this binary].
    #[arg(long, env = "CLADNET_CONTROLLER_BIN")]
    controller_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, env = "CLADNET_ETCD_BIN", default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep each run's temporary directory (store, controller and etcd logs).
    #[arg(long)]
    keep_temp: bool,
    /// Diagnostic: agents only Join (no Watch, no changes), to time the join pipeline alone;
    /// "converged" then means "every Join returned".
    #[arg(long)]
    join_only: bool,
    /// Exit with status 2 when a store's (median) result misses a target.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, clap::Args)]
struct DataplaneArgs {
    /// Seconds of each iperf3 test (TCP, then 64-byte UDP).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    secs: u32,
    /// Runs of every configuration (interleaved); the table shows their median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// Only these configurations (comma-separated): raw, vxlan, wireguard-go, boringtun,
    /// cladnet-sealed, cladnet-plain, cladnet-ebpf-plain, cladnet-ebpf-plain-tc.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Config>,
    /// Pings per run (20 ms apart).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    ping_count: u32,
    /// Before each configuration's measurements, wait until the machine's busy CPU (other
    /// builds and tests; sampled over one second) is at most this percent of all cores ...
    #[arg(long, default_value_t = 25.0)]
    quiet_cpu: f64,
    /// ... for at most this many seconds, then measure anyway (0: never wait).
    #[arg(long, default_value_t = 120)]
    quiet_wait_secs: u64,
    /// Write the results as JSON here [default: <target>/bench/dataplane.json, next to the
    /// directory of this binary].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of cladnet-controller, cladnet and cladnet-agent [default: this binary's].
    #[arg(long, env = "CLADNET_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// The boringtun-cli binary [default: on the PATH or in ~/.cargo/bin].
    #[arg(long, env = "CLADNET_BORINGTUN_BIN")]
    boringtun_bin: Option<PathBuf>,
    /// The wireguard-go binary.
    #[arg(long, env = "CLADNET_WIREGUARD_GO_BIN", default_value = "wireguard-go")]
    wireguard_go_bin: PathBuf,
    /// Keep each setup's directory (logs, keys, the controller's store); failed setups are
    /// always kept.
    #[arg(long)]
    keep_temp: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Control(args) => {
            if !control(args).await? {
                std::process::exit(2);
            }
        }
        Scenario::Dataplane(args) => dataplane(args).await?,
    }
    Ok(())
}

/// Runs the control-plane scenario on every store asked for; `false` when `--check` was
/// given and a target was missed.
async fn control(args: ControlArgs) -> anyhow::Result<bool> {
    match cladnet_bench::raise_fd_limit() {
        Ok(limit) if limit < 4096 => {
            eprintln!("warning: only {limit} open files allowed; raise it with `ulimit -n`");
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not raise the open files limit: {e}"),
    }
    let controller_bin = match args.controller_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("cladnet-controller"),
    };
    anyhow::ensure!(
        controller_bin.is_file(),
        "no controller binary at {} (build it with `cargo build --release -p cladnet-controller` \
         or pass --controller-bin)",
        controller_bin.display()
    );
    let base = ControlOptions {
        agents: args.agents,
        changes: args.changes,
        change_interval: Duration::from_millis(args.change_interval_ms),
        agents_per_channel: args.agents_per_channel,
        join_concurrency: args.join_concurrency,
        controller_bin,
        etcd_bin: args.etcd_bin,
        timeout: Duration::from_secs(args.timeout_secs),
        keep_temp: args.keep_temp,
        join_only: args.join_only,
        ..ControlOptions::default()
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut doc = ControlDocument::new(&base, command, Targets::default());
    for store in args.store.kinds() {
        let opts = ControlOptions {
            store,
            ..base.clone()
        };
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            eprintln!(
                "control: {store} store, run {run}/{}: {} agents, {} changes ...",
                args.runs, opts.agents, opts.changes
            );
            let report = cladnet_bench::run_control_bench(&opts)
                .await
                .with_context(|| format!("{store} store, run {run}"))?;
            eprintln!(
                "  converged in {:.2} s; fan-out p99 {}",
                report.convergence_ms / 1e3,
                report
                    .fanout
                    .map_or("-".into(), |f| format!("{:.1} ms", f.p99_ms))
            );
            runs.push(report);
        }
        doc.add_store(runs);
    }
    println!("{}", doc.table());
    if let Some(path) = &args.json {
        doc.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(doc.targets_met() || !args.check)
}

/// Runs the dataplane scenario on a blocking thread. On Ctrl-C (or SIGTERM, SIGHUP) it asks
/// the run to stop, gives it a few seconds to unwind (its guards remove the namespaces), then
/// removes whatever this process created and exits with status 130.
async fn dataplane(args: DataplaneArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => exe.parent().context("this binary's directory")?.to_owned(),
    };
    let mut bins = Binaries::in_dir(&bin_dir);
    bins.wireguard_go = args.wireguard_go_bin;
    if let Some(b) = args.boringtun_bin {
        bins.boringtun = b;
    }
    let out = match args.out {
        Some(p) => p,
        // <target>/release/cladnet-bench -> <target>/bench/dataplane.json
        None => bin_dir
            .parent()
            .unwrap_or(&bin_dir)
            .join("bench/dataplane.json"),
    };
    let mut configs = Config::ALL.to_vec();
    if !args.only.is_empty() {
        configs.retain(|c| args.only.contains(c));
    }
    let opts = DataplaneOptions {
        secs: args.secs,
        runs: args.runs,
        configs,
        ping_count: args.ping_count,
        quiet_cpu_percent: args.quiet_cpu,
        quiet_patience: Duration::from_secs(args.quiet_wait_secs),
        bins,
        keep_temp: args.keep_temp,
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let stop = Arc::new(AtomicBool::new(false));
    let mut task = tokio::task::spawn_blocking({
        let stop = Arc::clone(&stop);
        move || dataplane::run_dataplane_bench(&opts, command, &stop)
    });
    let outcome = tokio::select! {
        r = &mut task => r,
        signal = termination() => {
            eprintln!("dataplane: {signal}: stopping and removing the namespaces");
            stop.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut task).await;
            dataplane::testbed::remove_own();
            std::process::exit(130);
        }
    };
    // The guards have run (also on a panic, which unwinds); this catches what they could not.
    dataplane::testbed::remove_own();
    let doc = match outcome {
        Ok(result) => result?,
        Err(e) if e.is_panic() => anyhow::bail!("the dataplane benchmark panicked"),
        Err(e) => anyhow::bail!("the dataplane benchmark task failed: {e}"),
    };
    println!("{}", doc.table());
    doc.write_json(&out)?;
    eprintln!("wrote {}", out.display());
    anyhow::ensure!(
        !doc.any_failed(),
        "some runs failed (see the errors above; their logs were kept)"
    );
    Ok(())
}

/// Resolves on the first SIGINT, SIGTERM or SIGHUP, naming it.
async fn termination() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
        _ = hup.recv() => "hung up",
    }
}
