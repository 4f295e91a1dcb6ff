//! Agents on the userspace engine carry real traffic across the 3-cloud topology: two clouds
//! sharing 192.168.1.0/24 behind NAT and one on 10.0.0.0/24, a controller in a fourth.

use std::time::Duration;

use cladnet_tests::{Mesh, leftovers, longest_outage, require_netns, site, standard_clouds};

const UP: Duration = Duration::from_secs(30);
const TRANSFER: usize = 4 << 20;

/// Counts, on the wire, tunnel-port datagrams delivered to `host` by their first payload
/// byte: PLAIN (CLAD v1 data, 0x11) and WireGuard transport data (4). The counters sit on the
/// bridge of the host's cloud gateway (frames between hosts of the LAN, and frames the gateway
/// routes in), so what the hosts' XDP and TC programs do cannot hide anything.
fn count_link_modes(mesh: &Mesh, host: &str) {
    let h = mesh.topo.host(host);
    let dst = h.private_ip();
    let rule = |hook: &str| {
        format!(
            " chain {hook} {{\n  type filter hook {hook} priority 0;\n  \
             ip daddr {dst} udp dport 8055 @th,64,8 0x11 counter\n  \
             ip daddr {dst} udp dport 8055 @th,64,8 0x04 counter\n }}\n"
        )
    };
    let rules = format!(
        "table bridge modes_{host} {{\n{}{}}}\n",
        rule("forward"),
        rule("output")
    );
    mesh.topo
        .gateway(h.cloud())
        .load_nft(&rules)
        .expect("nft counters");
}

/// (plain, sealed) bytes counted by [`count_link_modes`], both hooks summed.
fn link_modes(mesh: &Mesh, host: &str) -> (u64, u64) {
    let h = mesh.topo.host(host);
    let out = mesh
        .topo
        .gateway(h.cloud())
        .exec(["nft", "list", "table", "bridge", &format!("modes_{host}")])
        .expect("nft list");
    let counts: Vec<u64> = out
        .split("bytes ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    (counts[0] + counts[2], counts[1] + counts[3])
}

#[test]
fn encryption_always_every_pair_pings_and_moves_verified_bytes() {
    require_netns!();
    let mut mesh = Mesh::start(
        standard_clouds(&["a1"]).build().expect("topology"),
        "ctl",
        "10.77.0.0/24",
        &[],
    );
    let prefix = mesh.topo.prefix().to_owned();
    let hosts = ["a1", "g1", "z1"];
    mesh.start_agent("a1", site("aws", "vpc-a"), &[]);
    mesh.start_agent("g1", site("gcp", "vpc-g"), &[]);
    mesh.start_agent("z1", site("azure", "vpc-z"), &[]);
    count_link_modes(&mesh, "z1");
    mesh.wait_mesh(&hosts, UP);
    // Overlapping underlays, one overlay: a1 and g1 share 192.168.1.10 yet reach each other.
    assert_eq!(
        mesh.topo.host("a1").private_ip(),
        mesh.topo.host("g1").private_ip()
    );
    let mut port = 5201;
    for from in hosts {
        for to in hosts.iter().filter(|t| **t != from) {
            port += 1;
            let secs = mesh.verified_transfer(from, to, port, TRANSFER);
            eprintln!("{from} -> {to}: {TRANSFER} bytes verified in {secs:.2} s");
        }
    }
    let (plain, sealed) = link_modes(&mesh, "z1");
    assert_eq!(plain, 0, "encryption=always sends nothing in the clear");
    assert!(sealed > 2 * TRANSFER as u64, "sealed bytes: {sealed}");
    drop(mesh);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn inter_site_is_plain_inside_a_site_and_sealed_across() {
    require_netns!();
    let mut mesh = Mesh::start(
        standard_clouds(&["a1", "a2"]).build().expect("topology"),
        "ctl",
        "10.78.0.0/24",
        &[
            "--encryption",
            "inter-site",
            "--rule-type",
            "cost-prioritized",
        ],
    );
    let hosts = ["a1", "a2", "g1"];
    mesh.start_agent("a1", site("aws", "vpc-a"), &[]);
    mesh.start_agent("a2", site("aws", "vpc-a"), &[]);
    mesh.start_agent("g1", site("gcp", "vpc-g"), &[]);
    count_link_modes(&mesh, "a2");
    mesh.wait_mesh(&hosts, UP);
    let links = mesh.peer("a1").expect("a1")["links"].clone();
    eprintln!("links of a1: {links}");

    let (plain0, sealed0) = link_modes(&mesh, "a2");
    mesh.verified_transfer("a1", "a2", 5301, TRANSFER);
    let (plain, sealed) = link_modes(&mesh, "a2");
    assert!(
        plain - plain0 > TRANSFER as u64,
        "a1 -> a2 stays inside the site: PLAIN (plain {plain0} -> {plain})"
    );
    assert!(
        sealed - sealed0 < 5000,
        "a1 -> a2 was sealed: {sealed0} -> {sealed}"
    );
    mesh.verified_transfer("g1", "a2", 5302, TRANSFER);
    let (plain_after, sealed_after) = link_modes(&mesh, "a2");
    assert!(
        sealed_after - sealed > TRANSFER as u64,
        "g1 -> a2 crosses sites: SEALED ({sealed} -> {sealed_after})"
    );
    assert!(
        plain_after - plain < 5000,
        "the cross-site transfer was not PLAIN"
    );
    mesh.verified_transfer("a2", "a1", 5303, TRANSFER);
    mesh.verified_transfer("a2", "g1", 5304, TRANSFER);

    // A policy change applies live: encryption always seals the in-site link too.
    mesh.cli(&["network", "update", "mesh", "--encryption", "always"]);
    let (plain, sealed) = link_modes(&mesh, "a2");
    mesh.wait("a1 -> a2 sealed after the policy change", UP, |m| {
        m.topo.host("a1").pings(m.overlay_ip("a2"), 1) && link_modes(m, "a2").1 > sealed
    });
    mesh.verified_transfer("a1", "a2", 5305, TRANSFER);
    let (plain_now, _) = link_modes(&mesh, "a2");
    assert!(
        plain_now - plain < 5000,
        "PLAIN kept flowing after encryption=always: {plain} -> {plain_now}"
    );

    // cb-network's remote commands switch the same policy, for the whole network only.
    let a2_id = mesh.peer("a2").unwrap()["hostId"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = mesh
        .try_cli(&["command", "mesh", "disable-encryption", "--host", &a2_id])
        .expect_err("encryption for one host is refused");
    assert!(
        refused.contains("hostId") && refused.contains("network update mesh --encryption"),
        "{refused}"
    );
    let out = mesh.cli(&["command", "mesh", "disable-encryption"]);
    assert!(out.contains("encryption always -> never"), "{out}");
    let (plain, sealed) = link_modes(&mesh, "a2");
    mesh.wait("g1 -> a2 plain after disable-encryption", UP, |m| {
        m.topo.host("g1").pings(m.overlay_ip("a2"), 1) && link_modes(m, "a2").0 > plain
    });
    mesh.verified_transfer("g1", "a2", 5306, TRANSFER);
    let (plain_now, sealed_now) = link_modes(&mesh, "a2");
    assert!(
        plain_now - plain > TRANSFER as u64 && sealed_now - sealed < 5000,
        "g1 -> a2 after disable-encryption: plain {plain} -> {plain_now}, sealed {sealed} -> {sealed_now}"
    );
    mesh.cli(&["command", "mesh", "enable-encryption"]);
    mesh.wait("g1 -> a2 sealed after enable-encryption", UP, |m| {
        m.topo.host("g1").pings(m.overlay_ip("a2"), 1) && link_modes(m, "a2").1 > sealed_now
    });
    mesh.verified_transfer("g1", "a2", 5307, TRANSFER);
    let (plain_end, sealed_end) = link_modes(&mesh, "a2");
    assert!(
        sealed_end - sealed_now > TRANSFER as u64 && plain_end - plain_now < 5000,
        "g1 -> a2 after enable-encryption: plain {plain_now} -> {plain_end}, sealed {sealed_now} -> {sealed_end}"
    );
    let policy: serde_json::Value =
        serde_json::from_str(&mesh.cli(&["--json", "network", "show", "mesh"])).unwrap();
    assert_eq!(policy["encryption"], "always");
}

#[test]
fn agents_survive_crashes_and_controller_outages() {
    require_netns!();
    let mut mesh = Mesh::start(
        standard_clouds(&["a1"]).build().expect("topology"),
        "ctl",
        "10.79.0.0/24",
        &[],
    );
    let hosts = ["a1", "g1", "z1"];
    mesh.start_agent("a1", site("aws", "vpc-a"), &[]);
    mesh.start_agent("g1", site("gcp", "vpc-g"), &[]);
    mesh.start_agent("z1", site("azure", "vpc-z"), &[]);
    mesh.wait_mesh(&hosts, UP);
    let before = mesh.overlay_ip("g1");

    // kill -9: no goodbye. The restarted agent joins again with the same identity, gets the
    // same address, and its peers reconnect (new WireGuard sessions with the same keys).
    mesh.signal_agent("g1", "KILL");
    mesh.start_agent("g1", site("gcp", "vpc-g"), &[]);
    mesh.wait_mesh(&hosts, UP);
    let fresh = |m: &Mesh, h: &str| m.peer(h).expect("peer")["ip"].as_str().unwrap().to_owned();
    assert_eq!(
        fresh(&mesh, "g1"),
        before.to_string(),
        "same overlay address after a crash"
    );
    mesh.verified_transfer("a1", "g1", 5401, TRANSFER);

    // Controller down: established traffic keeps flowing, in both directions.
    let (a1, z1) = (mesh.overlay_ip("a1"), mesh.overlay_ip("z1"));
    mesh.stop_controller();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        mesh.topo.host("g1").pings(a1, 3),
        "g1 -> a1 with the controller down"
    );
    assert!(
        mesh.topo.host("a1").pings(z1, 3),
        "a1 -> z1 with the controller down"
    );
    mesh.verified_transfer("z1", "g1", 5402, TRANSFER);

    // Back up: agents resync. A change made now (z1 leaves gracefully) reaches everyone.
    mesh.start_controller();
    let status = mesh.signal_agent("z1", "TERM");
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    mesh.wait("z1 released", UP, |m| {
        m.peer("z1")
            .is_some_and(|p| p["state"].as_str() == Some("released"))
    });
    assert!(
        !mesh.topo.host("a1").pings(z1, 1),
        "a released peer is no longer reachable"
    );
    // A released peer comes back with its address.
    mesh.start_agent("z1", site("azure", "vpc-z"), &[]);
    mesh.wait_mesh(&hosts, UP);
    assert_eq!(
        fresh(&mesh, "z1"),
        z1.to_string(),
        "same overlay address after a release"
    );
}

#[test]
fn a_peer_whose_public_address_changes_is_reachable_again_within_5s() {
    require_netns!();
    for encryption in ["always", "never"] {
        let mut mesh = Mesh::start(
            standard_clouds(&["a1"]).build().expect("topology"),
            "ctl",
            "10.80.0.0/24",
            &["--encryption", encryption],
        );
        let hosts = ["a1", "g1"];
        mesh.start_agent("a1", site("aws", "vpc-a"), &[]);
        mesh.start_agent("g1", site("gcp", "vpc-g"), &[]);
        mesh.wait_mesh(&hosts, UP);
        let a1 = mesh.overlay_ip("a1");
        // g1 pings a1 for 12 s; a1's NAT gateway changes its public address 3 s in.
        let mut ping = mesh.topo.host("g1").command("ping");
        ping.args(["-n", "-i", "0.1", "-w", "12", "-W", "1", &a1.to_string()])
            .stdout(std::process::Stdio::piped());
        let ping = ping.spawn().expect("ping");
        std::thread::sleep(Duration::from_secs(3));
        let old = mesh.topo.host("a1").public_ip();
        let new = mesh.topo.readdress_gateway("aws").expect("re-address");
        let out = ping.wait_with_output().expect("ping output");
        let out = String::from_utf8_lossy(&out.stdout);
        let outage = longest_outage(&out, 0.1);
        eprintln!("encryption={encryption}: {old} -> {new}, longest outage {outage:.1} s");
        assert!(
            outage <= 5.0,
            "encryption={encryption}: outage {outage:.1} s after the public address moved\n{}",
            mesh.logs()
        );
        let endpoint = mesh.peer("a1").expect("a1")["publicEndpoint"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            endpoint.starts_with(&format!("{new}:")),
            "the controller learnt the new endpoint: {endpoint}"
        );
        mesh.verified_transfer("g1", "a1", 5501, TRANSFER);
        mesh.verified_transfer("a1", "g1", 5502, TRANSFER);
    }
}

#[test]
fn connectivity_test_matrix_and_remote_up_down() {
    require_netns!();
    let mut mesh = Mesh::start(
        standard_clouds(&["a1"]).build().expect("topology"),
        "ctl",
        "10.82.0.0/24",
        &[],
    );
    let hosts = ["a1", "g1", "z1"];
    mesh.start_agent(
        "a1",
        site("aws", "vpc-a"),
        &["--metrics-listen", "127.0.0.1:9412"],
    );
    mesh.start_agent("g1", site("gcp", "vpc-g"), &[]);
    mesh.start_agent("z1", site("azure", "vpc-z"), &[]);
    mesh.wait_mesh(&hosts, UP);

    let started: serde_json::Value =
        serde_json::from_str(&mesh.cli(&["--json", "test", "start", "mesh", "--trials", "5"]))
            .expect("test JSON");
    let id = started["testId"].as_str().expect("test id").to_owned();
    let mut result = serde_json::Value::Null;
    mesh.wait("connectivity test complete", UP, |m| {
        result = serde_json::from_str(&m.cli(&["--json", "test", "show", "mesh", &id])).unwrap();
        result["complete"].as_bool() == Some(true)
    });
    let pairs = result["results"].as_array().expect("results");
    assert_eq!(pairs.len(), 6, "every ordered pair: {result}");
    for p in pairs {
        assert_eq!(p["packetsSent"], 5, "{p}");
        assert_eq!(p["packetsReceived"], 5, "{p}");
        let (min, avg, max) = (
            p["minRttMs"].as_f64().unwrap(),
            p["avgRttMs"].as_f64().unwrap(),
            p["maxRttMs"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= avg && avg <= max && max < 1000.0, "{p}");
    }

    // a1 exports the RTT it measured to each peer, and its state.
    let agent_metrics = mesh.scrape("a1", 9412);
    let rtts: Vec<f64> = agent_metrics
        .lines()
        .filter(|l| l.starts_with("cladnet_peer_rtt_seconds{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(rtts.len(), 2, "{agent_metrics}");
    assert!(rtts.iter().all(|r| *r > 0.0 && *r < 1.0), "{rtts:?}");
    assert!(agent_metrics.contains("state=\"up\""), "{agent_metrics}");

    // The controller's metrics moved with real work: three connected agents, events sent,
    // Join calls by gRPC code, store latency observed.
    let metrics = mesh.scrape("ctl", 9413);
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value("cladnet_controller_connected_agents "),
        3.0,
        "{metrics}"
    );
    assert!(
        value("cladnet_controller_watch_events_sent_total") >= 6.0,
        "{metrics}"
    );
    assert!(
        value(
            "cladnet_controller_api_requests_total{method=\"/cladnet.v1.AgentService/Join\",code=\"0\"}"
        ) >= 3.0,
        "{metrics}"
    );
    assert!(
        value("cladnet_controller_store_latency_seconds_count") > 0.0,
        "{metrics}"
    );

    // `cladnet-agent status` shows the interface and its peers like `wg show`.
    let status = mesh
        .topo
        .host("a1")
        .exec([
            cladnet_tests::bin_path("cladnet-agent").to_str().unwrap(),
            "status",
            "--data-dir",
            mesh.data_dir("a1").to_str().unwrap(),
        ])
        .expect("status");
    assert!(status.contains("interface: cladnet0 (ebpf)"), "{status}");
    assert_eq!(status.matches("\npeer: ").count(), 2, "{status}");
    assert!(status.contains("latest handshake"), "{status}");
    assert!(status.contains("state: up"), "{status}");
    assert!(status.contains(", sealed, userspace engine)"), "{status}");
    // `--json`: each peer's link mode and engine are separate fields, like the metrics' labels
    // (encryption=always: every link sealed, carried by the userspace engine).
    let json = mesh
        .topo
        .host("a1")
        .exec([
            cladnet_tests::bin_path("cladnet-agent").to_str().unwrap(),
            "status",
            "--json",
            "--data-dir",
            mesh.data_dir("a1").to_str().unwrap(),
        ])
        .expect("status --json");
    let json: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    let peers = json["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{json}");
    for p in peers {
        assert_eq!(
            (&p["mode"], &p["engine"]),
            (&"sealed".into(), &"userspace".into()),
            "{json}"
        );
    }

    // `down` withdraws g1's peers (it stays joined, state down); `up` brings them back.
    let g1_id = mesh.peer("g1").unwrap()["hostId"]
        .as_str()
        .unwrap()
        .to_owned();
    let g1 = mesh.overlay_ip("g1");
    mesh.cli(&["command", "mesh", "down", "--host", &g1_id]);
    mesh.wait("g1 down", UP, |m| {
        m.peer("g1").unwrap()["state"].as_str() == Some("down")
    });
    mesh.wait("g1 unreachable", UP, |m| !m.topo.host("a1").pings(g1, 1));
    mesh.cli(&["command", "mesh", "up", "--host", &g1_id]);
    mesh.wait_mesh(&hosts, UP);
}
