//! `cargo xtask test`, `lint` and `smoke`.

use std::process::Command;

use crate::{
    ebpf, setup,
    util::{cargo, root, run, succeeds, target_dir},
};

/// rustfmt in check mode over the workspace and the eBPF crate, then clippy with warnings as
/// errors over every target of the workspace.
pub(crate) fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo()
        .current_dir(root().join("cladnet-ebpf"))
        .args(["fmt", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Builds the eBPF object and every workspace binary the integration tests start.
fn build_all() -> anyhow::Result<()> {
    ebpf::build()?;
    run(cargo().args(["build", "--workspace", "--bins", "--locked"]))
}

/// The test runner: cargo-nextest when installed (it runs each test in its own process and
/// prints a summary), else `cargo test`.
fn test_runner() -> Command {
    let mut cmd = cargo();
    if succeeds("cargo", &["nextest", "--version"]) {
        cmd.args([
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ]);
    } else {
        cmd.args(["test", "--workspace", "--locked", "--no-fail-fast"]);
    }
    cmd
}

/// Everything CI checks: setup, build, lint, all tests.
pub(crate) fn all(with_setup: bool, extra: &[String]) -> anyhow::Result<()> {
    if with_setup {
        setup::install()?;
    }
    build_all()?;
    lint()?;
    run(test_runner().args(extra))
}

/// The 3-cloud smoke check, with its output shown.
pub(crate) fn smoke() -> anyhow::Result<()> {
    setup::install()?;
    build_all()?;
    let mut cmd = cargo();
    if succeeds("cargo", &["nextest", "--version"]) {
        cmd.args([
            "nextest",
            "run",
            "--locked",
            "-p",
            "cladnet-tests",
            "--test",
            "three_clouds",
            "--no-capture",
        ]);
    } else {
        cmd.args([
            "test",
            "--locked",
            "-p",
            "cladnet-tests",
            "--test",
            "three_clouds",
            "--",
            "--nocapture",
        ]);
    }
    run(&mut cmd)
}

/// What `cargo xtask demo` builds: release binaries (debug ones make the RTTs across clouds
/// several times longer), the demo among them, so it starts its siblings in `target/release`.
const DEMO_BUILD: [&str; 12] = [
    "build",
    "--release",
    "--locked",
    "-p",
    "cladnet-agent",
    "-p",
    "cladnet-controller",
    "-p",
    "cladnet-cli",
    "-p",
    "cladnet-tests",
    "--bins",
];

/// `cargo xtask demo`: setup, the eBPF object, a release build, then the demo binary (it needs
/// root for namespaces).
pub(crate) fn demo(once: bool, trials: u32) -> anyhow::Result<()> {
    setup::install()?;
    ebpf::build()?;
    run(cargo().args(DEMO_BUILD))?;
    let mut cmd = Command::new(target_dir().join("release").join("cladnet-demo"));
    cmd.args(["--trials", &trials.to_string()]);
    if once {
        cmd.arg("--once");
    }
    run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_is_a_release_build_of_every_binary_it_starts() {
        assert!(DEMO_BUILD.contains(&"--release"));
        for package in [
            "cladnet-agent",
            "cladnet-controller",
            "cladnet-cli",
            "cladnet-tests",
        ] {
            assert!(DEMO_BUILD.contains(&package), "{package}");
        }
    }
}
