//! The agent's eBPF attach/stats/detach commands: modes, failure paths, bad input.

use std::{path::Path, process::Output};

use cladnet_tests::{Host, Nat, Topology, bin_path, leftovers, require_netns};

fn one_host() -> Topology {
    Topology::builder()
        .cloud("c", "10.1.0.0/24", Nat::OneToOne)
        .host("c", "h1")
        .build()
        .expect("build topology")
}

fn agent(host: &Host, args: &[&str]) -> Output {
    let mut cmd = host.command(bin_path("cladnet-agent").to_str().expect("utf-8 path"));
    cmd.arg("dataplane")
        .args(args)
        .output()
        .expect("run cladnet-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn failed_attach_names_the_cause_and_leaves_nothing() {
    require_netns!();
    let mut topo = one_host();
    let pins = topo.bpf_pin_dir("h1");
    let pins = pins.to_str().unwrap();
    let h1 = topo.host("h1");

    let out = agent(h1, &["attach", "--iface", "nope0", "--pin-dir", pins]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("nope0"), "error names the interface: {err}");
    assert!(!Path::new(pins).exists(), "a failed attach leaves no pins");

    let out = agent(
        h1,
        &["attach", "--iface", "eth0", "--pin-dir", "/tmp/not-bpffs"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not on a bpf filesystem"),
        "{}",
        stderr(&out)
    );

    let out = agent(
        h1,
        &[
            "attach",
            "--iface",
            "eth0",
            "--tunnel-port",
            "0",
            "--pin-dir",
            pins,
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--tunnel-port"), "{}", stderr(&out));

    let out = agent(h1, &["stats", "--pin-dir", pins]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no eBPF dataplane is attached"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn generic_mode_and_double_attach() {
    require_netns!();
    let mut topo = one_host();
    let prefix = topo.prefix().to_owned();
    let pins = topo.bpf_pin_dir("h1");
    let pins = pins.to_str().unwrap().to_owned();
    let h1 = topo.host("h1");

    let out = agent(
        h1,
        &[
            "attach",
            "--iface",
            "eth0",
            "--xdp-mode",
            "generic",
            "--json",
            "--pin-dir",
            &pins,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let attached: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(attached["xdp_mode"], "generic");
    let link = h1.exec(["ip", "link", "show", "eth0"]).unwrap();
    assert!(link.contains("xdpgeneric"), "{link}");

    let again = agent(h1, &["attach", "--iface", "eth0", "--pin-dir", &pins]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already attached"),
        "{}",
        stderr(&again)
    );
    // The failed second attach did not disturb the first.
    assert!(
        h1.exec(["ip", "link", "show", "eth0"])
            .unwrap()
            .contains("xdpgeneric")
    );

    let out = agent(h1, &["detach", "--pin-dir", &pins]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !h1.exec(["ip", "link", "show", "eth0"])
            .unwrap()
            .contains("xdp")
    );
    let out = agent(h1, &["detach", "--pin-dir", &pins]);
    assert!(
        out.status.success(),
        "detach is idempotent: {}",
        stderr(&out)
    );

    drop(topo);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}
