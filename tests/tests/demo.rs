//! The README's main command, non-interactively: `cladnet-demo --once` builds the clouds,
//! joins every agent, prints the latency matrix and removes everything it created.

use std::process::Command;

use cladnet_tests::{bin_path, leftovers, require_netns};

#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    require_netns!();
    let child = Command::new(bin_path("cladnet-demo"))
        .args(["--once", "--trials", "3"])
        .output()
        .expect("run the demo");
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "demo failed:\n{out}\n{err}");
    for expected in [
        "[1/6] building the clouds",
        "recommended 10.",
        "Status:   complete",
        "Average RTT (ms)",
        "cleaned up.",
        // Checked by the demo through the forward before it prints it.
        "console:  https://127.0.0.1:",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // Every pair answered all pings.
    let pairs: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_end().ends_with("0%"))
        .collect();
    assert_eq!(
        pairs.len(),
        12,
        "4 hosts, 12 ordered pairs, no loss:\n{out}"
    );
    let prefix = format!("cn-{}-", child_pid_hint(&out));
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

/// The demo's namespace prefix, from the commands it prints (`ip netns exec cn-<pid>-...`).
fn child_pid_hint(out: &str) -> String {
    out.split("ip netns exec cn-")
        .nth(1)
        .and_then(|s| s.split('-').next())
        .expect("the demo prints its namespaces")
        .to_owned()
}
