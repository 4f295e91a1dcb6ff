//! Public endpoint discovery through real NAT: the controller (on a host with a 1:1 public
//! address) reflects what it sees; hosts behind masquerade and 1:1 NAT learn their public
//! endpoints from their tunnel port.

use std::{process::Stdio, time::Duration};

use cladnet_tests::{Nat, Process, Topology, bin_path, require_netns};

#[test]
fn hosts_learn_their_public_endpoint_through_nat() {
    require_netns!();
    let topo = Topology::builder()
        .cloud("aws", "192.168.1.0/24", Nat::Masquerade)
        .host("aws", "a1")
        .cloud("gcp", "192.168.1.0/24", Nat::OneToOne)
        .host("gcp", "g1")
        .cloud("azure", "10.0.0.0/24", Nat::OneToOne)
        .host("azure", "ctl")
        .build()
        .expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let ctl = topo.host("ctl");
    let _controller = Process::spawn(
        ctl.command(bin_path("cladnet-controller").to_str().unwrap())
            .args(["--listen", "0.0.0.0:8053", "--store"])
            .arg(format!("embedded:{}", dir.path().join("s.redb").display()))
            .env("CLADNET_ADMIN_TOKEN", "reflector-test-admin-token")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start controller");
    let reflector = format!("{}:8053", ctl.public_ip());

    for (host, expected_ip) in [
        ("a1", topo.host("a1").public_ip()),
        ("g1", topo.host("g1").public_ip()),
    ] {
        let h = topo.host(host);
        let mut answer = None;
        for _ in 0..20 {
            match h.exec([
                bin_path("cladnet-agent").to_str().unwrap(),
                "probe",
                "--json",
                "--reflector",
                &reflector,
            ]) {
                Ok(out) => {
                    answer = Some(out);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
        let out = answer.unwrap_or_else(|| panic!("{host} got no reflector answer"));
        let json: serde_json::Value = serde_json::from_str(&out).expect("probe JSON");
        let seen = json["publicEndpoint"]
            .as_str()
            .expect("endpoint")
            .to_owned();
        assert!(
            seen.starts_with(&format!("{expected_ip}:")),
            "{host} sees itself as {seen}, expected {expected_ip}"
        );
        assert_ne!(
            expected_ip,
            h.private_ip(),
            "the answer is the NAT's address, not the private one"
        );
    }
    // Garbage at the reflector gets no answer (and the reflector keeps working).
    topo.host("g1")
        .exec([
            "bash",
            "-c",
            &format!("printf 'garbage' > /dev/udp/{}/8053", ctl.public_ip()),
        ])
        .unwrap();
    let again = topo.host("g1").exec([
        bin_path("cladnet-agent").to_str().unwrap(),
        "probe",
        "--reflector",
        &reflector,
    ]);
    assert!(again.is_ok(), "reflector still answers: {again:?}");
}
