//! The CLADNet agent library: everything `cladnet-agent` runs, usable from tests.
#![forbid(unsafe_code)]

pub mod control;
pub mod ebpf;
pub mod identity;
pub mod probe;
