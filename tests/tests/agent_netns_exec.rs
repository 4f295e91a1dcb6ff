//! An agent on the eBPF engine started with `ip netns exec` (which gives it a private mount
//! namespace with a fresh /sys, hence a private bpffs) warns that its pins will not survive it
//! and names `nsenter --net`; one started with `nsenter --net` (the harness's way) does not.

use std::{process::Command, time::Duration};

use cladnet_tests::{Host, Mesh, require_netns, site, standard_clouds};

const UP: Duration = Duration::from_secs(30);
const WARNING: &str = "nsenter --net";

/// `ip netns exec <host's namespace> program`, as an operator might start an agent.
fn ip_netns_exec(h: &Host, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", h.netns().name(), program]);
    cmd
}

#[test]
fn an_agent_under_ip_netns_exec_warns_that_its_pins_are_private() {
    require_netns!();
    let mut mesh = Mesh::start(
        standard_clouds(&["a1"]).build().expect("topology"),
        "ctl",
        "10.87.0.0/24",
        &["--encryption", "never"],
    );
    let ebpf = ["--dataplane", "ebpf"];
    let (url, token) = (mesh.controller_url(), mesh.join_token().to_owned());
    mesh.start_agent_launched(
        "a1",
        site("aws", "vpc-a"),
        &url,
        &token,
        &ebpf,
        ip_netns_exec,
    );
    mesh.start_agent("g1", site("gcp", "vpc-g"), &ebpf);
    // Both work: the warning is about restarts, not about forwarding.
    mesh.wait_mesh(&["a1", "g1"], UP);
    assert!(mesh.topo.host("g1").pings(mesh.overlay_ip("a1"), 3));
    let log = |h: &str| std::fs::read_to_string(mesh.log_file(&format!("agent-{h}"))).unwrap();
    let a1 = log("a1");
    let warning = a1
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_else(|| panic!("no warning naming `{WARNING}` in a1's log:\n{a1}"));
    assert!(
        warning.contains("WARN") && warning.contains("ip netns"),
        "{warning}"
    );
    assert!(!log("g1").contains(WARNING), "g1 shares the host's bpffs");
    // The premise: a1's pins live in its private bpffs, invisible from here (the harness's
    // mount namespace, the host's), while g1's are on the host's.
    let pins = |h: &str| std::path::PathBuf::from(format!("/sys/fs/bpf/{}{h}", mesh.topo.prefix()));
    assert!(pins("g1").exists(), "g1 pins on the host's bpffs");
    assert!(!pins("a1").exists(), "a1 pins on a private bpffs");
}
