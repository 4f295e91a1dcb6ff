//! `cargo xtask setup`: installs what a fresh Debian 12 machine of the project's kind lacks.
//! Every step checks first, so a second run takes about a second.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::util::{root, run, succeeds};

/// Debian packages the build and the tests use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",       // bpf-linker links against LLVM 22
    "protobuf-compiler", // tonic/prost code generation
    "libprotobuf-dev",   // well-known .proto files etcd-client compiles against
    "iproute2",          // ip netns, veth, tc
    "iputils-ping",
    "iperf3",
    "etcd-server", // real etcd for store tests
    "etcd-client",
    "nftables", // NAT gateways in the test topologies
    "iptables",
    "wireguard-go", // interop peers
    "wireguard-tools",
    "bpftool",
    "ethtool",
    "tcpdump",
    "util-linux", // nsenter
    "procps",     // sysctl
    "chromium",   // the web console's browser tests (headless)
    "chromium-driver",
    "curl",    // WebDriver and REST calls from the console tests
    "python3", // tests/scripts: verified TCP transfers, hostile datagrams
    "systemd", // systemd-analyze verify/security for the packaged units
    "openssl", // certificates for the TLS tests
];

/// bpf-linker release built against LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// boringtun-cli release the WireGuard interop tests run as an external peer.
const BORINGTUN_VERSION: &str = "0.7.1";
/// The nightly that builds the eBPF crate (see TOOLCHAIN.md).
const NIGHTLY: &str = "nightly";

/// Entry point of `cargo xtask setup`.
pub(crate) fn install() -> anyhow::Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    boringtun_cli()?;
    bpffs()?;
    if !succeeds("cargo", &["nextest", "--version"]) {
        eprintln!(
            "note: cargo-nextest is not installed; `cargo xtask test` falls back to `cargo test`"
        );
    }
    eprintln!("setup: all prerequisites present");
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(APT_PACKAGES)
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !listed
                .lines()
                .any(|l| l.starts_with(&format!("{p} ")) && l.ends_with("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        // --no-install-recommends: wireguard-tools recommends a whole kernel image.
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
    .context("installing Debian packages (needs root)")
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
        _ => {
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
            ]))
            .context("installing the nightly toolchain the eBPF crate needs")?;
            nightly_sysroot()
        }
    }
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let rustlib = sysroot.join("lib/rustlib");
    let marker = rustlib.join("src/rust/library/core/Cargo.toml");
    if marker.exists() {
        return Ok(());
    }
    if run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .is_ok()
        && marker.exists()
    {
        return Ok(());
    }
    let tarball = rust_src_tarball().context(
        "rust-src for nightly could not be downloaded and no local copy was found; set \
         CLADNET_RUST_SRC_TARBALL to a rust-src-nightly-*.tar.xz",
    )?;
    eprintln!(
        "setup: unpacking {} into {}",
        tarball.display(),
        rustlib.display()
    );
    run(Command::new("tar")
        .arg("-xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(&rustlib))?;
    if !marker.exists() {
        bail!("{} did not provide {}", tarball.display(), marker.display());
    }
    Ok(())
}

/// The offline copy of rust-src: `$CLADNET_RUST_SRC_TARBALL`, else the shared toolchain
/// folder next to the checkout.
fn rust_src_tarball() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CLADNET_RUST_SRC_TARBALL") {
        return Some(PathBuf::from(p));
    }
    [
        root().join("../shared/toolchain"),
        PathBuf::from("/work/shared/toolchain"),
    ]
    .into_iter()
    .filter_map(|dir| std::fs::read_dir(dir).ok())
    .flatten()
    .filter_map(Result::ok)
    .map(|e| e.path())
    .find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("rust-src-nightly"))
    })
}

fn bpf_linker() -> anyhow::Result<()> {
    if succeeds("bpf-linker", &["--version"]) {
        return Ok(());
    }
    run(Command::new("cargo")
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"]))
    .context("building bpf-linker against LLVM 22 (needs llvm-22-dev)")
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
fn cargo_bin_dir() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// The version `boringtun-cli --version` reports (`boringtun 0.7.1`), looked up on `PATH`
/// and in cargo's bin directory (the tests look in both).
fn installed_boringtun_version() -> Option<String> {
    let candidates = std::iter::once(PathBuf::from("boringtun-cli"))
        .chain(cargo_bin_dir().map(|d| d.join("boringtun-cli")));
    candidates
        .filter_map(|bin| Command::new(bin).arg("--version").output().ok())
        .filter(|o| o.status.success())
        .find_map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            Some(text.split_whitespace().nth(1)?.to_owned())
        })
}

/// boringtun-cli (crates.io), a second userspace WireGuard the interop tests run as an
/// external peer, installed into cargo's bin directory when missing or of another version.
fn boringtun_cli() -> anyhow::Result<()> {
    let installed = installed_boringtun_version();
    if installed.as_deref() == Some(BORINGTUN_VERSION) {
        return Ok(());
    }
    match &installed {
        Some(v) => eprintln!("setup: boringtun-cli {v} found, installing {BORINGTUN_VERSION}"),
        None => eprintln!("setup: installing boringtun-cli {BORINGTUN_VERSION}"),
    }
    run(Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        // A scratch target directory of its own, not the workspace's (CI points
        // CARGO_TARGET_DIR at a shared cache).
        .env_remove("CARGO_TARGET_DIR")
        .args(["install", "--locked", "--force", "boringtun-cli"])
        .args(["--version", BORINGTUN_VERSION]))
    .context("installing boringtun-cli from crates.io")
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.split(' ').nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs (needs root)")
}
