//! `cargo xtask bench <scenario> [args...]`: builds what a benchmark needs in release mode and
//! runs it, forwarding the arguments; the benchmark prints its table.
//!
//! Each scenario is a variant of [`Scenario`] with its own build list and binary invocation;
//! add a variant (and a match arm in [`run`]) for a new one.

use std::process::Command;

use clap::Subcommand;

use crate::{
    ebpf,
    util::{cargo, run, target_dir},
};

/// A benchmark scenario.
#[derive(Subcommand)]
pub(crate) enum Scenario {
    /// Control plane: N simulated agents join one network through a real controller (embedded
    /// store and etcd) and watch it; convergence, change fan-out p50/p99/max, controller RSS.
    /// Arguments go to `cladnet-bench control` (see `cargo xtask bench control --help`), e.g.
    /// `--agents 1000 --changes 50 --store both --runs 3 --json bench.json`.
    #[command(disable_help_flag = true)]
    Control {
        /// Arguments for `cladnet-bench control`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Dataplane: two hosts in network namespaces over one veth pair; single-stream TCP,
    /// 64-byte UDP rate, ping RTT and CPU with no tunnel, kernel VXLAN, wireguard-go,
    /// boringtun, CLADNet SEALED, PLAIN on the userspace engine and PLAIN on the eBPF engine.
    /// Needs root. Builds the eBPF object first (the release agent embeds it). Arguments go
    /// to `cladnet-bench dataplane` (see `cargo xtask bench dataplane --help`), e.g. `--secs 5
    /// --runs 3 --only raw,vxlan,cladnet-ebpf-plain`.
    #[command(disable_help_flag = true)]
    Dataplane {
        /// Arguments for `cladnet-bench dataplane`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs one scenario.
pub(crate) fn run_scenario(scenario: &Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Control { args } => control(args),
        Scenario::Dataplane { args } => dataplane(args),
    }
}

/// `cargo build --release` of `packages`.
fn build_release(packages: &[&str]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--locked"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)
}

/// A binary of the release build.
fn release_bin(name: &str) -> std::path::PathBuf {
    target_dir().join("release").join(name)
}

/// The control-plane benchmark: the real controller binary, started by `cladnet-bench`.
fn control(args: &[String]) -> anyhow::Result<()> {
    build_release(&["cladnet-controller", "cladnet-bench"])?;
    run(Command::new(release_bin("cladnet-bench"))
        .arg("control")
        .args(args)
        .env("CLADNET_CONTROLLER_BIN", release_bin("cladnet-controller")))
}

/// The dataplane benchmark: the release controller, CLI and agent, started in namespaces by
/// `cladnet-bench`, which finds them next to itself. The eBPF object is built first
/// (`cargo xtask build-ebpf`): `cladnet-agent/build.rs` embeds it into the release agent,
/// which cannot load the eBPF rows' programs without it. Writes
/// `<target>/bench/dataplane.json` unless `--out` says otherwise.
fn dataplane(args: &[String]) -> anyhow::Result<()> {
    ebpf::build()?;
    build_release(&[
        "cladnet-controller",
        "cladnet-cli",
        "cladnet-agent",
        "cladnet-bench",
    ])?;
    run(Command::new(release_bin("cladnet-bench"))
        .arg("dataplane")
        .args(args))
}
