//! CLADNet benchmarks.
//!
//! * [`control`]: the control-plane scenario — N simulated agents join one network through a
//!   real `cladnet-controller` process (embedded store or etcd) and keep a Watch open; it
//!   measures full convergence, the fan-out latency of changes and the controller's peak RSS.
//!   Entry point: [`run_control_bench`].
//! * [`dataplane`]: the dataplane scenario — two hosts in network namespaces over one veth
//!   pair; single-stream TCP, small-packet rate, ping RTT and CPU use with no tunnel,
//!   wireguard-go, boringtun and CLADNet (SEALED and PLAIN). Entry point:
//!   [`dataplane::run_dataplane_bench`].
//! * [`procs`]: guards for the child processes (controller, etcd) and `/proc` readings.
//! * [`stats`]: percentiles and summaries.
//! * [`report`]: the table and the JSON document.
//!
//! The binary `cladnet-bench` runs these from the command line; `cargo xtask bench control` (or
//! `dataplane`) builds everything in release mode and runs it (see `docs/benchmarks.md`).
#![forbid(unsafe_code)]

pub mod control;
pub mod dataplane;
pub mod error;
pub mod procs;
pub mod report;
pub mod stats;

pub use control::{ControlOptions, ControlReport, StoreKind, raise_fd_limit, run_control_bench};
pub use error::{BenchError, Result};
