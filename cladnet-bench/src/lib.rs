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
//! * [`check`]: every agent's final peer table against the store, after every run.
//! * [`direct`]: `--store etcd-direct`, the seed's design (an etcd watch per agent, no
//!   controller) as the anchor the controller path is compared with.
//! * [`agent_table`]: the agent's peer table (its own code) at N peers: CPU per Watch event
//!   and memory, 1000 → 10 000 peers, plotted as SVG.
//! * [`failover`]: the failover storm, three controllers on a three-member etcd, one killed.
//! * [`procs`]: guards for the child processes (controller, etcd) and `/proc` readings.
//! * [`stats`]: percentiles and summaries.
//! * [`report`]: the table and the JSON document.
//!
//! The binary `cladnet-bench` runs these from the command line; `cargo xtask bench control` (or
//! `dataplane`) builds everything in release mode and runs it (see `docs/benchmarks.md`).
#![forbid(unsafe_code)]

pub mod agent_table;
pub mod check;
pub mod compare;
pub mod control;
pub mod dataplane;
pub mod direct;
pub mod error;
pub mod failover;
pub mod growth;
pub mod lightwatch;
pub mod procs;
pub mod report;
pub mod simtable;
pub mod stats;

pub use control::{
    ControlOptions, ControlReport, StoreKind, ensure_fd_limit, fds_needed, raise_fd_limit,
    run_control_bench,
};
pub use error::{BenchError, Result};
