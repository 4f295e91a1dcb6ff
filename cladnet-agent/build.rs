//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is looked up at `$CLADNET_EBPF_OBJECT`, else at
//! `<target dir>/bpf/cladnet.bpf.o`. When it is missing the agent still builds (so `cargo
//! check` and clippy need no bpf-linker) with an empty object, prints a build warning, and
//! refuses to load the eBPF dataplane at run time with a message naming the command to run.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CLADNET_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_relative() {
                manifest_dir.join("..").join(p)
            } else {
                p
            }
        })
        .unwrap_or_else(|| manifest_dir.join("../target"));
    let object = env::var_os("CLADNET_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir.join("bpf/cladnet.bpf.o"));
    println!("cargo:rerun-if-changed={}", object.display());

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("cladnet.bpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write embedded eBPF object"),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found; building cladnet-agent without the \
                 eBPF dataplane. Run `cargo xtask build-ebpf` and build again.",
                object.display()
            );
            fs::write(&out, []).expect("write empty eBPF object");
        }
    }
}
