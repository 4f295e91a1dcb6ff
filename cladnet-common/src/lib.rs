//! Types shared by the CLADNet eBPF programs (`cladnet-ebpf`) and userspace.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of implicit padding, so the kernel and
//! userspace read the same bytes. Multi-byte fields that mirror packet bytes are stored in
//! network byte order as byte arrays and read through accessors, so eBPF code can copy them
//! straight from a packet. The `user` feature implements `aya::Pod` for the map types.
#![no_std]
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]

pub mod encap;
pub mod maps;
pub mod plain;
pub mod pmtu;
pub mod reflector;
pub mod relay;
pub mod rx;
pub mod wire;

#[cfg(feature = "user")]
mod pod;

/// A small xorshift for the decoders' randomised tests: reproducible, and no dev-dependency
/// for a crate the eBPF build also compiles.
#[cfg(test)]
fn test_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
