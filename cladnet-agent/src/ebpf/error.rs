//! Errors of the eBPF dataplane, each naming what was attempted on what.

use std::path::PathBuf;

/// An eBPF dataplane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The agent binary carries no eBPF object.
    #[error(
        "this cladnet-agent was built without the eBPF object: run `cargo xtask build-ebpf`, \
         then rebuild the agent (or use the userspace dataplane)"
    )]
    NoObject,
    /// bpffs is not where the pins go and could not be mounted.
    #[error("pin directory {path} is not on a bpf filesystem: {reason}")]
    NotBpffs {
        /// The pin directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Pins already exist: another agent instance owns this directory.
    #[error(
        "the eBPF dataplane is already attached with pins in {pin_dir}; run `cladnet-agent dataplane detach --pin-dir {pin_dir}` first"
    )]
    AlreadyAttached {
        /// The pin directory.
        pin_dir: PathBuf,
    },
    /// No pins to read.
    #[error("no eBPF dataplane is attached with pins in {pin_dir}")]
    NotAttached {
        /// The pin directory.
        pin_dir: PathBuf,
    },
    /// An argument was rejected before anything was changed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidInput {
        /// Which input (e.g. `counter slot`).
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A network interface does not exist (in the calling thread's namespace).
    #[error("no network interface {iface:?}")]
    NoInterface {
        /// The interface name.
        iface: String,
    },
    /// No receive hook attached; every attempt is listed.
    #[error("could not attach the underlay program to {iface:?}: {attempts}")]
    NoRxHook {
        /// The underlay interface.
        iface: String,
        /// `<hook> mode failed: error` for every hook tried.
        attempts: String,
    },
    /// Pinned maps do not match what this agent's programs expect (left by another version).
    #[error(
        "pinned map {path} does not match this agent ({reason}); run `cladnet-agent dataplane detach --pin-dir {pin_dir}` first"
    )]
    Incompatible {
        /// The pinned map.
        path: PathBuf,
        /// The pin directory.
        pin_dir: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The object could not be loaded.
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    /// The object lacks a map or program this agent expects (agent and object out of step).
    #[error("the eBPF object has no {kind} named {name}")]
    MissingItem {
        /// `map` or `program`.
        kind: &'static str,
        /// The name looked up.
        name: &'static str,
    },
    /// A program operation failed.
    #[error("{op} of program {prog} on interface {iface:?} failed")]
    Program {
        /// The operation.
        op: &'static str,
        /// The program name.
        prog: &'static str,
        /// The interface, empty when none is involved.
        iface: String,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("operation on map {name} failed")]
    Map {
        /// The map name.
        name: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A link could not be turned into a pinnable fd link.
    #[error("link for {path} cannot be pinned")]
    Link {
        /// Where it was to be pinned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// Pinning failed.
    #[error("pinning {path} failed")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: aya::pin::PinError,
    },
    /// A filesystem operation on the pin directory failed.
    #[error("{op} {path} failed")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl EbpfError {
    /// A failed program operation.
    pub(crate) fn program(
        op: &'static str,
        prog: &'static str,
        iface: &str,
        source: aya::programs::ProgramError,
    ) -> Self {
        Self::Program {
            op,
            prog,
            iface: iface.to_owned(),
            source: Box::new(source),
        }
    }

    /// A failed map operation.
    pub(crate) fn map(name: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            name,
            source: Box::new(source),
        }
    }
}
