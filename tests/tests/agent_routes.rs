//! Advertised prefixes from a real agent to a real controller (issue 14, the agent's reporting
//! side): the configured list and the routes file reach the controller after the join, manual
//! approval holds them back until `cladnet route approve`, a rewrite of the file (a node's new
//! podCIDR) replaces the prefix at the controller within a few seconds, a broken file keeps
//! the last good list and a removed one withdraws its prefixes. Forwarding the prefixes is the
//! dataplane's part (after the agent's sans-IO Node) and not tested here.

use std::time::{Duration, Instant};

use cladnet_tests::{Mesh, require_netns, site, standard_clouds};

/// `host prefix=state` of every route the controller lists.
fn routes(mesh: &Mesh) -> Vec<String> {
    let out = mesh.cli(&["--json", "route", "list", &mesh.net]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("route list JSON");
    json["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    format!(
                        "{} {}={}",
                        r["hostId"].as_str().unwrap_or(""),
                        r["prefix"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `within` for the controller's route list (host ids replaced by `host`) to be
/// `want`; returns how long it took.
fn wait_routes(mesh: &Mesh, node: &str, host: &str, want: &[&str], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got: Vec<String> = routes(mesh)
            .into_iter()
            .map(|r| r.replacen(node, host, 1))
            .collect();
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "routes {got:?}, want {want:?}\nagent log:\n{}",
            mesh.agent_log(host)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_reports_configured_and_file_routes() {
    require_netns!();
    let topo = standard_clouds(&["a1"]).build().expect("topology");
    let mut mesh = Mesh::start(topo, "ctl", "10.84.0.0/24", &["--route-approval", "manual"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("podcidr");
    std::fs::write(&file, "10.244.1.0/24").expect("write the podCIDR file");
    let file_arg = file.to_str().expect("UTF-8 path");
    mesh.start_agent(
        "a1",
        site("aws", "vpc-a"),
        &[
            "--advertise-routes",
            "192.168.50.0/24",
            "--advertise-routes-file",
            file_arg,
        ],
    );
    mesh.start_agent("g1", site("gcp", "vpc-g"), &[]);
    mesh.wait_mesh(&["a1", "g1"], Duration::from_secs(30));
    let node = mesh.peer("a1").expect("a1 listed")["hostId"]
        .as_str()
        .expect("host id")
        .to_owned();

    wait_routes(
        &mesh,
        &node,
        "a1",
        &["a1 10.244.1.0/24=pending", "a1 192.168.50.0/24=pending"],
        Duration::from_secs(10),
    );
    mesh.cli(&["route", "approve", &mesh.net, &node, "10.244.1.0/24"]);
    let peer = mesh.peer("a1").expect("a1 listed");
    let shown: Vec<String> = peer["routes"]
        .as_array()
        .expect("routes in the peer record")
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r["prefix"].as_str().unwrap(),
                r["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(shown, ["10.244.1.0/24=approved", "192.168.50.0/24=pending"]);

    // The node got another podCIDR: the file changes, the controller follows.
    std::fs::write(&file, "10.244.7.0/24\n").expect("rewrite the podCIDR file");
    let took = wait_routes(
        &mesh,
        &node,
        "a1",
        &["a1 10.244.7.0/24=pending", "a1 192.168.50.0/24=pending"],
        Duration::from_secs(10),
    );
    println!("podCIDR change reached the controller in {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // A broken file keeps the last good list; a removed file withdraws its prefixes.
    std::fs::write(&file, "10.244.8.1/24").expect("write a bad podCIDR");
    std::thread::sleep(Duration::from_secs(2));
    wait_routes(
        &mesh,
        &node,
        "a1",
        &["a1 10.244.7.0/24=pending", "a1 192.168.50.0/24=pending"],
        Duration::from_secs(1),
    );
    assert!(
        mesh.agent_log("a1").contains("routes file unusable"),
        "the agent says why"
    );
    std::fs::remove_file(&file).expect("remove the podCIDR file");
    wait_routes(
        &mesh,
        &node,
        "a1",
        &["a1 192.168.50.0/24=pending"],
        Duration::from_secs(5),
    );
}
