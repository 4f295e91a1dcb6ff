//! `cargo xtask build-ebpf`.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::util::{cargo, root, run, target_dir};

/// Where the built object is placed; `cladnet-agent/build.rs` embeds it from here.
pub(crate) fn object_path() -> PathBuf {
    target_dir().join("bpf/cladnet.bpf.o")
}

/// Builds `cladnet-ebpf` (nightly, `-Z build-std=core`, bpf-linker; the crate's
/// `rust-toolchain.toml` and `.cargo/config.toml` select them) and copies the ELF object to
/// [`object_path`].
pub(crate) fn build() -> anyhow::Result<PathBuf> {
    let build_dir = target_dir().join("ebpf");
    let mut cmd = cargo();
    cmd.current_dir(root().join("cladnet-ebpf"))
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(&build_dir);
    // The eBPF crate's own rust-toolchain.toml picks nightly.
    run(&mut cmd).context(
        "building the eBPF programs; `cargo xtask setup` installs bpf-linker and rust-src",
    )?;
    let built = build_dir.join("bpfel-unknown-none/release/cladnet-ebpf");
    let object = object_path();
    std::fs::create_dir_all(object.parent().expect("has a parent"))?;
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    eprintln!("eBPF object: {}", object.display());
    Ok(object)
}
