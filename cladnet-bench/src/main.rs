//! `cladnet-bench`: CLADNet benchmarks from the command line.
//!
//! ```text
//! cladnet-bench control [--agents N] [--changes K] [--store embedded|etcd|both] [--runs R] [--json PATH]
//! ```
//!
//! Prints a table with the targets and PASS/FAIL next to them. `cargo xtask bench control`
//! builds the controller and this binary in release mode and runs it.
#![forbid(unsafe_code)]

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use cladnet_bench::{
    ControlOptions, StoreKind,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Scenario::Control(args) = Cli::parse().scenario;
    let met = control(args).await?;
    if !met {
        std::process::exit(2);
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
