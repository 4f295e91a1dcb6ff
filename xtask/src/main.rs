//! Developer tasks for CLADNet: `cargo xtask <task>`.
//!
//! * `setup`      — install every prerequisite of a fresh Debian 12 machine (idempotent).
//! * `build-ebpf` — build the eBPF object into `<target>/bpf/cladnet.bpf.o`.
//! * `lint`       — rustfmt check and clippy with `-D warnings`.
//! * `test`       — setup, build, lint and run every test; prints the runner's summary.
//! * `smoke`      — the 3-cloud smoke check: topology, underlay, eBPF counters.
//! * `bench`      — benchmarks in release mode: `bench control [args...]` (control plane).

mod bench;
mod ebpf;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "CLADNet developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites (apt packages, nightly rust-src, bpf-linker, bpffs mount).
    Setup,
    /// Build the eBPF programs (nightly, build-std, bpf-linker).
    BuildEbpf,
    /// rustfmt --check and clippy -D warnings on the workspace and the eBPF crate.
    Lint,
    /// Setup, build everything, lint, run all tests.
    Test {
        /// Skip `setup` (prerequisites already installed).
        #[arg(long)]
        no_setup: bool,
        /// Extra arguments for the test runner (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the 3-cloud smoke check with its output.
    Smoke,
    /// The multi-cloud demo: clouds with overlapping subnets behind NAT in namespaces, a
    /// controller on the embedded store, one agent per host, the latency matrix; runs until
    /// Ctrl-C, then removes everything.
    Demo {
        /// Exit after printing the matrix (non-interactive, for CI).
        #[arg(long)]
        once: bool,
        /// Pings per pair in the connectivity test (1..=100).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        trials: u32,
    },
    /// Build in release mode and run a benchmark (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        scenario: bench::Scenario,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::install(),
        Task::BuildEbpf => ebpf::build().map(drop),
        Task::Lint => test::lint(),
        Task::Test { no_setup, args } => test::all(!no_setup, &args),
        Task::Smoke => test::smoke(),
        Task::Demo { once, trials } => test::demo(once, trials),
        Task::Bench { scenario } => bench::run_scenario(&scenario),
    }
}
