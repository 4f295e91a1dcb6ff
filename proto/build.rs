//! Generates the tonic client/server and prost types from `cladnet/v1/cladnet.proto`, plus
//! proto3-JSON serde impls (pbjson) so REST speaks the same messages.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("cladnet_descriptor.bin");
    let proto = "cladnet/v1/cladnet.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&[proto], &["."])
        .map_err(|e| format!("compiling {proto} (needs protoc: `cargo xtask setup`): {e}"))?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .build(&[".cladnet.v1"])?;
    Ok(())
}
