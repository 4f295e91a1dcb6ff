//! A rogue agent holding a valid join token (what every VM has) attacks the control plane:
//! node takeover, key squatting, endpoint hijack, forged connectivity-test results, oversized
//! and hostile reports, a stale session and a cloned identity. Every attempt is refused or has
//! no effect, while a verified TCP transfer between two honest agents keeps running with every
//! byte intact. See docs/security.md, "Join and node identity" and "Agent-reported data".

use std::{
    io::BufRead as _,
    process::Stdio,
    time::{Duration, Instant},
};

use cladnet_tests::{
    Mesh, Nat, Process, SiteLabels, Topology, bin_path, require_netns, test_script,
};
use serde_json::Value;

const UP: Duration = Duration::from_secs(30);
/// The transfer: 48 MiB at 3 MiB/s, long enough to span every attack below.
const TRANSFER_BYTES: usize = 48 << 20;
const TRANSFER_RATE: usize = 3 << 20;

/// Runs one rogue attempt on the rogue's host and returns its JSON answer.
fn rogue(mesh: &Mesh, token: &str, args: &[&str]) -> Value {
    let mut cmd = mesh
        .topo
        .host("evil")
        .command(bin_path("cladnet-rogue").to_str().unwrap());
    cmd.args([&mesh.controller_url(), &mesh.net, token])
        .args(args);
    let out = cladnet_tests::run_checked(&mut cmd)
        .unwrap_or_else(|e| panic!("cladnet-rogue {args:?}: {e}"));
    serde_json::from_str(out.lines().last().unwrap_or("")).expect("rogue JSON")
}

/// Asserts a refusal with `code` whose message contains `needle`.
fn refused(v: &Value, code: &str, needle: &str, what: &str) {
    assert_eq!(v["code"], code, "{what}: {v}");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(needle),
        "{what}: message names {needle:?}: {v}"
    );
}

#[test]
fn rogue_agent_gains_nothing() {
    require_netns!();
    let topo = Topology::builder()
        .cloud("aws", "192.168.1.0/24", Nat::Masquerade)
        .host("aws", "a1")
        .cloud("gcp", "192.168.2.0/24", Nat::OneToOne)
        .host("gcp", "g1")
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
        // The rogue: a VM of its own that was given the network's join token.
        .cloud("dmz", "10.9.0.0/24", Nat::OneToOne)
        .host("dmz", "evil")
        .build()
        .expect("topology");
    let mut mesh = Mesh::start(topo, "ctl", "10.83.0.0/24", &[]);
    mesh.start_agent(
        "a1",
        SiteLabels {
            provider: "aws",
            vpc: "vpc-a",
        },
        &[],
    );
    mesh.start_agent(
        "g1",
        SiteLabels {
            provider: "gcp",
            vpc: "vpc-g",
        },
        &[],
    );
    mesh.wait_mesh(&["a1", "g1"], UP);
    let token = mesh.join_token().to_owned();
    let victim = mesh.peer("a1").expect("a1's record");
    let other = mesh.peer("g1").expect("g1's record");
    let (a1, g1) = (
        victim["hostId"].as_str().unwrap().to_owned(),
        other["hostId"].as_str().unwrap().to_owned(),
    );
    let a1_endpoint = victim["publicEndpoint"].as_str().unwrap().to_owned();
    let a1_key = victim["publicKey"].as_str().unwrap().to_owned();
    assert!(
        !a1_endpoint.is_empty(),
        "a1 has a public endpoint: {victim}"
    );

    // The honest transfer g1 <- a1, running through everything below.
    let script = test_script("tcp_verify.py");
    let g1_ip = mesh.overlay_ip("g1").to_string();
    let mut server = mesh.topo.host("g1").command("python3");
    server
        .arg(&script)
        .args(["server", "5301"])
        .stdout(Stdio::piped());
    let mut server = Process::spawn(&mut server).expect("server");
    let mut server_out = std::io::BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    server_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let mut client = mesh.topo.host("a1").command("python3");
    client
        .arg(&script)
        .args([
            "client",
            &g1_ip,
            "5301",
            &TRANSFER_BYTES.to_string(),
            &TRANSFER_RATE.to_string(),
        ])
        .stdout(Stdio::piped());
    let mut client = Process::spawn(&mut client).expect("client");
    let started = Instant::now();

    // Takeover: a1's host id with the rogue's own (proven) key.
    let v = rogue(&mesh, &token, &["join", &a1, "key=evil"]);
    refused(&v, "PermissionDenied", "hostId", "takeover");
    // Key squatting: a1's public key without its private key.
    let pubkey = format!("pubkey={a1_key}");
    let v = rogue(&mesh, &token, &["join", "evil-2", "key=evil", &pubkey]);
    refused(&v, "PermissionDenied", "proof", "key squatting");
    // Endpoint hijack at join, then a legitimate join of the rogue's own node.
    let hijack = format!("endpoint={a1_endpoint}");
    let v = rogue(&mesh, &token, &["join", "evil", "key=evil", &hijack]);
    refused(
        &v,
        "InvalidArgument",
        "publicEndpoint",
        "endpoint hijack at join",
    );
    let v = rogue(
        &mesh,
        &token,
        &["join", "evil", "key=evil", "endpoint=198.51.100.7:51999"],
    );
    assert_eq!(v["code"], "Ok", "the rogue's own node joins: {v}");
    let session = v["session"].as_str().unwrap().to_owned();
    // Endpoint hijack, loopback and overlay endpoints by report.
    let overlay_endpoint = format!("endpoint={g1_ip}:8055");
    for (endpoint, what) in [
        (hijack.as_str(), "a1's endpoint"),
        ("endpoint=127.0.0.1:8055", "loopback"),
        ("endpoint=169.254.169.254:80", "link-local"),
        (overlay_endpoint.as_str(), "inside the overlay"),
    ] {
        let v = rogue(&mesh, &session, &["report", "evil", endpoint]);
        refused(&v, "InvalidArgument", "publicEndpoint", what);
    }
    // Forged connectivity-test results: speaking for a1, about a pair the rogue is not in.
    let test: Value =
        serde_json::from_str(&mesh.cli(&["--json", "test", "start", "mesh", "--trials", "1"]))
            .unwrap();
    let test_id = format!("test={}", test["testId"].as_str().unwrap());
    let (source, dest) = (format!("source={a1}"), format!("dest={g1}"));
    let v = rogue(
        &mesh,
        &session,
        &["report", "evil", &test_id, &source, &dest],
    );
    assert_ne!(v["code"], "Ok", "forged results: {v}");
    // Oversized and hostile reports.
    let v = rogue(&mesh, &session, &["report", "evil", "interfaces=65"]);
    refused(&v, "InvalidArgument", "facts.interfaces", "65 interfaces");
    let v = rogue(
        &mesh,
        &session,
        &["report", "evil", "caps=userspace,rm -rf"],
    );
    refused(
        &v,
        "InvalidArgument",
        "facts.capabilities[1]",
        "unknown capability",
    );
    let v = rogue(&mesh, &session, &["report", "evil", "pad=100000"]);
    refused(&v, "InvalidArgument", "dataplaneReason", "long reason");
    let v = rogue(&mesh, &session, &["report", "evil", "pad=8000000"]);
    assert_ne!(v["code"], "Ok", "an 8 MB report: {v}");

    // Stale session: the admin deletes the rogue's node; its open stream ends within a
    // second and its session no longer reports.
    let mut watch = mesh
        .topo
        .host("evil")
        .command(bin_path("cladnet-rogue").to_str().unwrap());
    watch
        .args([&mesh.controller_url(), &mesh.net, &session])
        .args(["watch", "evil", "secs=20"])
        .stdout(Stdio::piped());
    let mut watch = Process::spawn(&mut watch).expect("rogue watch");
    let mut watch_out = std::io::BufReader::new(watch.0.stdout.take().unwrap());
    line.clear();
    watch_out.read_line(&mut line).unwrap();
    assert!(line.contains("watching"), "{line}");
    let deleted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    mesh.cli(&["peer", "delete", "mesh", "evil"]);
    line.clear();
    watch_out.read_line(&mut line).unwrap();
    let ended: Value = serde_json::from_str(&line).expect("watch result");
    assert_eq!(ended["code"], "Unauthenticated", "{ended}");
    let ended_ms: u128 = ended["ended_ms"].as_str().unwrap().parse().unwrap();
    let took = ended_ms.saturating_sub(deleted_ms);
    assert!(took < 1000, "stream ended {took} ms after the delete");
    let v = rogue(&mesh, &session, &["report", "evil"]);
    refused(&v, "Unauthenticated", "evil", "stale session");

    // A cloned identity (a1's real key, as a copied disk image would have): the join is
    // legitimate, but a1's agent notices its session was replaced and joins again by itself,
    // which in turn makes the clone's session stale.
    let keyfile = format!(
        "keyfile={}",
        mesh.data_dir("a1").join("private.key").display()
    );
    let v = rogue(&mesh, &token, &["join", &a1, &keyfile]);
    assert_eq!(v["code"], "Ok", "a holder of a1's key may join as a1: {v}");
    let clone = v["session"].as_str().unwrap().to_owned();
    mesh.wait(
        "a1's agent re-joins by itself",
        Duration::from_secs(10),
        |m| rogue(m, &clone, &["report", &a1])["code"] == "Unauthenticated",
    );
    let log = std::fs::read_to_string(mesh.log_dir().join("agent-a1.log")).unwrap();
    assert!(
        log.contains("joining again with this node's identity"),
        "a1 logs its re-join"
    );
    mesh.wait("a1 up again", UP, |m| {
        m.peer("a1").is_some_and(|p| p["state"] == "up")
    });

    // Nothing the rogue did changed a1's identity, address or endpoint.
    let after = mesh.peer("a1").unwrap();
    for field in ["hostId", "ip", "publicKey", "publicEndpoint"] {
        assert_eq!(after[field], victim[field], "a1's {field}");
    }
    assert!(
        client.0.try_wait().unwrap().is_none(),
        "the transfer spans every attack ({:?} so far)",
        started.elapsed()
    );
    let status = client.0.wait().unwrap();
    assert!(
        status.success(),
        "transfer client: {status}\n{}",
        mesh.logs()
    );
    let mut sent = String::new();
    std::io::Read::read_to_string(client.0.stdout.as_mut().unwrap(), &mut sent).unwrap();
    line.clear();
    server_out.read_line(&mut line).unwrap();
    assert_eq!(sent.trim(), line.trim(), "every byte arrived intact");
    assert!(sent.starts_with(&format!("{TRANSFER_BYTES} ")), "{sent}");
}
