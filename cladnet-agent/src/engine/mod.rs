//! The dataplane engines and what they have in common.
//!
//! [`router`] holds the userspace engine's packet logic without sockets; [`userspace`] drives
//! it with threads over a TUN device and the tunnel UDP socket. The eBPF engine lives in
//! [`crate::daemon::kernel`]. Both are [`Engine`]s: the Node's commands are the only way
//! their peers change.

use std::time::Instant;

use cladnet_core::node::Command;

pub mod counters;
pub mod relay;
pub mod router;
pub mod userspace;

/// A dataplane engine: it applies the [`Node`](cladnet_core::node::Node)'s commands, in
/// order, and keeps no peer state of its own beyond what it needs to carry packets
/// (counters, WireGuard sessions, kernel maps) by the Node's counter slot.
pub trait Engine: Send + Sync {
    /// `userspace` or `ebpf` (logs, metrics).
    fn name(&self) -> &'static str;

    /// Applies one command. An error leaves this engine without the change; the caller logs
    /// it (the userspace engine still carries what the kernel path does not).
    fn apply(&self, now: Instant, cmd: &Command) -> Result<(), EngineError>;
}

/// The operating system's random source: the Node's WireGuard ephemeral keys and the
/// handshake gate's cookie secrets (the sans-IO parts take their randomness from outside).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl cladnet_wg::CryptoRandom for OsRandom {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        getrandom::fill(dest).expect("the OS random source works");
    }
}

/// An engine could not apply a command.
#[derive(Debug, thiserror::Error)]
#[error("{engine} engine: {source}")]
pub struct EngineError {
    /// The engine.
    pub engine: &'static str,
    /// What failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}
