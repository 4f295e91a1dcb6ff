//! The CLADNet agent library: everything `cladnet-agent` runs, usable from tests.
// Unsafe code (syscalls, ioctls) is confined to `sys`, which opts back in.
#![deny(unsafe_code)]

pub mod control;
pub mod daemon;
pub mod ebpf;
pub mod engine;
pub mod identity;
pub mod netconf;
pub mod probe;
pub mod routes;
pub mod sys;
