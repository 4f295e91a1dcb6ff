//! The CLADNet integration-test harness.
//!
//! Tests declare a topology of "clouds" (private subnets behind NAT gateways, overlapping
//! CIDRs allowed) joined by an "internet" router, build it in network namespaces with names
//! unique to the test process, run commands and processes inside its hosts, and tear it all
//! down when the [`Topology`] is dropped, also when the test panics. Leftovers of a crashed
//! run (namespaces and bpffs pins whose owning process is gone) are removed the first time a
//! topology is built.
//!
//! Every test that needs root and namespaces starts with [`require_netns!`]: without them it
//! prints why it skips, except under CI (`CI=true`) where a skip is a failure.
#![forbid(unsafe_code)]

pub mod api_checks;
mod cleanup;
pub mod controller;
pub mod etcd;
pub mod external;
mod mesh;
mod netns;
mod pods;
mod privilege;
pub mod route_checks;
mod topology;

pub use cleanup::{leftovers, sweep_stale};
pub use mesh::{
    ADMIN_TOKEN as MESH_ADMIN_TOKEN, CONTROLLER_PORT, Mesh, SiteLabels, Transfer, metric_sum, site,
    standard_clouds, test_script,
};
pub use netns::{Netns, Process, run_checked};
pub use pods::{Pod, pod_network, verified_tcp};
pub use privilege::{netns_unavailable, skip_or_fail};
pub use topology::{CloudSpec, Host, Nat, Topology, TopologyBuilder, TopologyError};

use std::path::PathBuf;

/// Path of a workspace binary (`cladnet-agent`, `cladnet-controller`, ...) built next to the
/// running test executable, or in `$CLADNET_BIN_DIR`.
///
/// # Panics
/// If the binary is missing, with the command that builds it.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CLADNET_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // Test executables live in target/<profile>/deps; binaries (the demo among them)
            // in target/<profile>.
            let exe = std::env::current_exe().expect("current executable");
            let dir = exe.parent().expect("executable has a directory");
            match dir.file_name() {
                Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_owned(),
                _ => dir.to_owned(),
            }
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace binaries first (`cargo build --workspace`, which \
         `cargo xtask test` runs), or set CLADNET_BIN_DIR",
        path.display()
    );
    path
}

/// Returns early from a test (after printing why) when root and network namespaces are
/// unavailable; under `CI=true` it panics instead, so no test passes by not running.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(reason) = $crate::netns_unavailable() {
            $crate::skip_or_fail(module_path!(), &reason);
            return;
        }
    };
}

/// Longest stretch without replies in `ping -i <interval>` output (including a silent tail),
/// in seconds.
pub fn longest_outage(ping_output: &str, interval: f64) -> f64 {
    let mut seqs: Vec<u64> = ping_output
        .lines()
        .filter_map(|l| {
            l.split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let sent: u64 = ping_output
        .lines()
        .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
        .unwrap_or(0);
    seqs.insert(0, 0);
    seqs.push(sent + 1);
    seqs.sort_unstable();
    let gap = seqs
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0);
    gap.saturating_sub(1) as f64 * interval
}
