//! `cladnet-bench`: CLADNet benchmarks from the command line.
//!
//! ```text
//! cladnet-bench control [--agents N] [--changes K] [--store embedded,etcd,etcd-direct|both]
//!                       [--runs R] [--baseline-controller-bin PATH] [--json PATH]
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
    /// The agent's peer table at N peers (its own code, no network): CPU per Watch event and
    /// memory; `--sweep` runs several sizes (one process each) and can plot them as SVG.
    AgentTable(AgentTableArgs),
    /// Failover storm: three controllers on a three-member etcd, agent i on controller i % 3;
    /// after convergence controller 0 is killed and K changes are made through the others:
    /// time until its agents resumed, missed and out-of-order events, tables against the store.
    Failover(FailoverArgs),
    /// How the control plane's cost grows: reads several `control --json` files (one fleet
    /// size each), prints one store's medians as a Markdown table and plots them as SVG.
    ControlGrowth(ControlGrowthArgs),
}

#[derive(Debug, clap::Args)]
struct ControlGrowthArgs {
    /// The `control --json` files, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    json: Vec<PathBuf>,
    /// The store whose medians are read (embedded, etcd or etcd-direct).
    #[arg(long, default_value = "etcd")]
    store: String,
    /// Write the plot here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// The plot's caption (e.g. the commands and the date).
    #[arg(long, default_value = "")]
    caption: String,
}

#[derive(Debug, clap::Args)]
struct FailoverArgs {
    /// Simulated agents (N).
    #[arg(long, default_value_t = 300)]
    agents: usize,
    /// Changes made right after the kill (K).
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Limit in seconds of the convergence and of the failover.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// The controller binary [default: cladnet-controller next to this binary].
    #[arg(long, env = "CLADNET_CONTROLLER_BIN")]
    controller_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, env = "CLADNET_ETCD_BIN", default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Keep the temporary directory (controller and etcd logs).
    #[arg(long)]
    keep_temp: bool,
    /// Agents read each Watch message's bytes in place (see `control --help`).
    #[arg(long)]
    light_decode: bool,
    /// Agents keep endpoint hashes instead of strings (see `control --help`).
    #[arg(long)]
    compact_tables: bool,
}

#[derive(Debug, clap::Args)]
struct AgentTableArgs {
    /// Peers in the table.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Measure these sizes instead (comma-separated), each in a process of its own.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// Write the plot of the sweep here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print one size's result as JSON on stdout (used by --sweep).
    #[arg(long, hide = true)]
    json_stdout: bool,
}

/// Which stores to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stores {
    Embedded,
    Etcd,
    /// Embedded and etcd.
    Both,
    /// No controller: every agent on its own etcd watch (the seed's design).
    EtcdDirect,
}

impl Stores {
    fn kinds(self) -> Vec<StoreKind> {
        match self {
            Self::Embedded => vec![StoreKind::Embedded],
            Self::Etcd => vec![StoreKind::Etcd],
            Self::Both => vec![StoreKind::Embedded, StoreKind::Etcd],
            Self::EtcdDirect => vec![StoreKind::EtcdDirect],
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
    /// The controller's stores, comma-separated; `etcd-direct` adds the seed's design (no
    /// controller, an etcd watch per agent) and the ratios of the controller runs against it.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "both")]
    store: Vec<Stores>,
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
    /// A second controller binary (e.g. built from an earlier commit): every run is repeated
    /// with it, interleaved run by run, and the table adds the ratios under test ÷ baseline.
    #[arg(long)]
    baseline_controller_bin: Option<PathBuf>,
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
    /// Agents keep a 32-bit hash of each peer's endpoint instead of the strings (4 bytes per
    /// peer entry instead of ~100): for 10 000 agents, whose full tables would need ~10 GB.
    /// The end-of-run check compares the hashes.
    #[arg(long)]
    compact_tables: bool,
    /// Agents do not ask for batched Watch messages (as agents before batching): one change
    /// per message. Compare a run with and without it to see what batching saves.
    #[arg(long)]
    unbatched: bool,
    /// Agents read each Watch message's bytes in place, keeping only each event's revision and
    /// each peer's node id and endpoint (every other field skipped by its length, nothing
    /// allocated but what the tables keep), instead of decoding it with prost into full
    /// messages. Cuts the load generator's CPU (it shares the cores with the controller and
    /// etcd); the tables and the end-of-run check against the store are the same.
    #[arg(long)]
    light_decode: bool,
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
    /// cladnet-sealed, cladnet-plain, cladnet-ebpf-plain, cladnet-ebpf-plain-tc,
    /// cladnet-sealed-flood, cladnet-relayed, ... (docs/benchmarks.md lists every row).
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
        Scenario::AgentTable(args) => agent_table(args)?,
        Scenario::Failover(args) => failover(args).await?,
        Scenario::ControlGrowth(args) => control_growth(&args)?,
    }
    Ok(())
}

/// Runs the control-plane scenario on every store asked for; `false` when `--check` was
/// given and a target was missed.
async fn control(args: ControlArgs) -> anyhow::Result<bool> {
    cladnet_bench::ensure_fd_limit(cladnet_bench::fds_needed(
        args.agents,
        args.agents_per_channel,
    ))?;
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
        compact_tables: args.compact_tables,
        unbatched: args.unbatched,
        light_decode: args.light_decode,
        ..ControlOptions::default()
    };
    if let Some(bin) = &args.baseline_controller_bin {
        anyhow::ensure!(
            bin.is_file(),
            "--baseline-controller-bin: no file at {}",
            bin.display()
        );
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut doc = ControlDocument::new(&base, command, Targets::default());
    let mut stores: Vec<StoreKind> = Vec::new();
    for kind in args.store.iter().flat_map(|s| s.kinds()) {
        if !stores.contains(&kind) {
            stores.push(kind);
        }
    }
    // Every (store, controller) pair, run by run: run 1 of each, then run 2 of each, ... so
    // that the machine's drift over the invocation falls on all of them alike.
    let mut sets: Vec<(StoreKind, Option<PathBuf>)> = Vec::new();
    for &store in &stores {
        sets.push((store, None));
        if store != StoreKind::EtcdDirect
            && let Some(bin) = &args.baseline_controller_bin
        {
            sets.push((store, Some(bin.clone())));
        }
    }
    let mut results: Vec<Vec<cladnet_bench::ControlReport>> = vec![Vec::new(); sets.len()];
    // A failed run is reported and the others go on (e.g. etcd-direct failing at a size where
    // the controller path succeeds); the invocation fails at the end.
    let mut failures: Vec<String> = Vec::new();
    for run in 1..=args.runs {
        for ((store, baseline), runs) in sets.iter().zip(&mut results) {
            let opts = ControlOptions {
                store: *store,
                controller_bin: baseline.clone().unwrap_or(base.controller_bin.clone()),
                ..base.clone()
            };
            let who = if baseline.is_some() {
                " (baseline)"
            } else {
                ""
            };
            eprintln!(
                "control: {store} store{who}, run {run}/{}: {} agents, {} changes ...",
                args.runs, opts.agents, opts.changes
            );
            let report = match cladnet_bench::run_control_bench(&opts)
                .await
                .with_context(|| format!("{store} store{who}, run {run}"))
            {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("  FAILED: {e:#}");
                    failures.push(format!("{store} store{who}, run {run}"));
                    continue;
                }
            };
            eprintln!(
                "  converged in {:.2} s; fan-out p99 {}; {}",
                report.convergence_ms / 1e3,
                report
                    .fanout
                    .map_or("-".into(), |f| format!("{:.1} ms", f.p99_ms)),
                report.table_check.describe()
            );
            runs.push(report);
        }
    }
    let runs_of = |store: StoreKind, baseline: bool| {
        sets.iter()
            .zip(&results)
            .find(|((s, b), _)| *s == store && b.is_some() == baseline)
            .map(|(_, r)| r.as_slice())
            .filter(|r| !r.is_empty())
    };
    for ((store, baseline), runs) in sets.iter().zip(&results) {
        if runs.is_empty() {
            continue;
        }
        let label = if baseline.is_some() { "baseline" } else { "" };
        doc.add_runs(label.into(), runs.clone());
        if baseline.is_some()
            && let Some(under_test) = runs_of(*store, false)
        {
            doc.add_comparison("baseline controller", under_test, runs);
        }
    }
    if let Some(direct) = runs_of(StoreKind::EtcdDirect, false) {
        for &store in stores.iter().filter(|&&s| s != StoreKind::EtcdDirect) {
            if let Some(under_test) = runs_of(store, false) {
                doc.add_comparison("agents watching etcd directly", under_test, direct);
            }
        }
    }
    println!("{}", doc.table());
    if let Some(path) = &args.json {
        doc.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} run(s) failed (errors above): {}",
        failures.len(),
        failures.join(", ")
    );
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

/// Runs the failover storm once and prints what it measured.
async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    // Three controllers, each with its share of the connections: as many as one.
    cladnet_bench::ensure_fd_limit(cladnet_bench::fds_needed(
        args.agents,
        ControlOptions::default().agents_per_channel,
    ))?;
    let controller_bin = match args.controller_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("cladnet-controller"),
    };
    let opts = ControlOptions {
        agents: args.agents,
        changes: args.changes,
        controller_bin,
        etcd_bin: args.etcd_bin,
        timeout: Duration::from_secs(args.timeout_secs),
        keep_temp: args.keep_temp,
        light_decode: args.light_decode,
        compact_tables: args.compact_tables,
        ..ControlOptions::default()
    };
    let r = cladnet_bench::failover::run_failover_bench(&opts).await?;
    println!(
        "Failover storm: {} agents on 3 controllers (3-member etcd), controller 0 killed with {} agents, {} changes at once",
        r.agents, r.affected, r.changes
    );
    println!(
        "  converged before the kill in {:.2} s; {}/{} agents resumed on another controller, the last {:.0} ms after the kill",
        r.convergence_ms / 1e3,
        r.resumed,
        r.affected,
        r.failover_ms
    );
    println!(
        "  fan-out {}/{} received (p99 {}), out of order: {}; {}",
        r.fanout_received,
        r.fanout_expected,
        r.fanout
            .map_or("-".into(), |f| format!("{:.1} ms", f.p99_ms)),
        r.out_of_order,
        r.table_check.describe()
    );
    anyhow::ensure!(
        r.out_of_order == 0,
        "{} events out of order",
        r.out_of_order
    );
    Ok(())
}

/// Measures the agent's peer table at one size, or at several (`--sweep`).
fn agent_table(args: AgentTableArgs) -> anyhow::Result<()> {
    use cladnet_bench::agent_table;
    let costs = if args.sweep.is_empty() {
        vec![agent_table::measure(args.peers)?]
    } else {
        let exe = std::env::current_exe().context("locating this binary")?;
        agent_table::sweep(&exe, &args.sweep)?
    };
    if args.json_stdout {
        println!("{}", serde_json::to_string(&costs[0])?);
        return Ok(());
    }
    println!("{}", agent_table::table(&costs));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&costs)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let machine = cladnet_bench::report::Machine::current();
        let caption = format!(
            "cladnet-bench agent-table --sweep {}: cladnet_core::node::table::PeerTable, thread CPU time per event (mean of {}); {} CPUs ({}), Linux {}",
            args.sweep
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            agent_table::SAMPLES,
            machine.cpus,
            machine.cpu_model,
            machine.kernel
        );
        std::fs::write(path, agent_table::svg(&costs, &caption))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Prints the growth table of `control --json` files and writes the plot.
fn control_growth(args: &ControlGrowthArgs) -> anyhow::Result<()> {
    use cladnet_bench::growth;
    let points = growth::read(&args.json, &args.store)?;
    print!("{}", growth::table(&points));
    if let Some(path) = &args.svg {
        let title = format!(
            "Control plane ({}): cost from {} to {} agents",
            args.store,
            points.first().map_or(0, |p| p.agents),
            points.last().map_or(0, |p| p.agents)
        );
        std::fs::write(path, growth::svg(&points, &title, &args.caption))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
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
