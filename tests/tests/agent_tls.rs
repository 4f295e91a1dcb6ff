//! Agents and a `--tls auto` controller as real processes in namespaces: agents join with
//! nothing but their join token (it carries the controller's pin), a single-use token brings a
//! restarted node back but no second node, and a wrong pin, an unknown CA and `http://` to the
//! TLS port each stop the agent at start with a message saying what is wrong.

use std::{process::Command, time::Duration};

use cladnet_tests::{Mesh, bin_path, require_netns, site, standard_clouds};

const UP: Duration = Duration::from_secs(60);
const EXIT: Duration = Duration::from_secs(30);

#[test]
fn agents_join_a_tls_auto_controller_with_only_the_token() {
    require_netns!();
    let topo = standard_clouds(&["a1", "a2", "a3", "a4"])
        .build()
        .expect("topology");
    let mut mesh = Mesh::with_tls_controller(topo, "ctl");
    mesh.create_network("tls", "10.77.0.0/24", &[]);

    // The token carries the pin `show-pin` prints, and the CLI shows it.
    let shown = Command::new(bin_path("cladnet-controller"))
        .arg("--tls-dir")
        .arg(mesh.tls_dir())
        .arg("show-pin")
        .output()
        .expect("show-pin");
    assert!(shown.status.success(), "{shown:?}");
    let pin = String::from_utf8(shown.stdout).unwrap().trim().to_owned();
    let hex = pin.strip_prefix("sha256:").expect("sha256: pin");
    let token = mesh.join_token().to_owned();
    assert!(token.ends_with(&format!(".{hex}")), "{token} lacks {pin}");
    let created = mesh.cli(&["token", "create", "tls", "--uses", "1", "--ttl", "1h"]);
    assert!(
        created.contains(&format!("TLS pin:      {pin} (in the token)")),
        "{created}"
    );
    assert!(created.contains("Uses:         0/1"), "{created}");
    let single = created
        .lines()
        .find_map(|l| l.strip_prefix("Token:"))
        .expect("token line")
        .trim()
        .to_owned();

    // Only the token: an https:// URL, no CA, no pin flag.
    mesh.start_agent("a1", site("aws", "vpc-a"), &[]);
    let url = mesh.controller_url();
    assert!(url.starts_with("https://"), "{url}");
    mesh.start_agent_with("g1", site("gcp", "vpc-g"), &url, &single, &[]);
    mesh.wait_mesh(&["a1", "g1"], UP);
    mesh.verified_transfer("a1", "g1", 5201, 1 << 20);

    // A restarted node comes back with its used-up single-use token (same key: no use) ...
    mesh.signal_agent("g1", "TERM");
    mesh.start_agent_with("g1", site("gcp", "vpc-g"), &url, &single, &[]);
    mesh.wait_mesh(&["a1", "g1"], UP);
    // ... but a second node cannot join with it.
    mesh.start_agent_with("a4", site("aws", "vpc-a"), &url, &single, &[]);
    let status = mesh.wait_agent_exit("a4", EXIT).expect("a4 exits");
    assert!(!status.success());
    let log = mesh.agent_log("a4");
    assert!(log.contains("is used up (1 of 1 joins)"), "{log}");
    let listed = mesh.cli(&["token", "list", "tls"]);
    assert!(listed.contains("1/1"), "{listed}");

    // Failures, each at start with what is wrong.
    let wrong = format!("sha256:{}", "00".repeat(32));
    mesh.start_agent("a2", site("aws", "vpc-a"), &["--controller-pin", &wrong]);
    let without_pin = token.rsplit_once('.').unwrap().0.to_owned();
    let plain_url = url.replace("https://", "http://");
    mesh.start_agent_with("a3", site("aws", "vpc-a"), &plain_url, &without_pin, &[]);
    mesh.start_agent_with("z1", site("azure", "vnet-z"), &url, &without_pin, &[]);
    for (host, says) in [
        (
            "a2",
            format!("wrong pin: the controller's certificate key is {pin}, not the pinned {wrong}"),
        ),
        (
            "a3",
            "the controller answered with TLS; use https:// instead of http://".to_owned(),
        ),
        (
            "z1",
            "the controller's certificate is not signed by a trusted CA".to_owned(),
        ),
    ] {
        let status = mesh
            .wait_agent_exit(host, EXIT)
            .unwrap_or_else(|| panic!("{host} keeps running\n{}", mesh.logs()));
        assert!(!status.success(), "{host}: {status}");
        let log = mesh.agent_log(host);
        assert!(log.contains(&says), "{host} does not say {says:?}:\n{log}");
    }
    // The honest pair never noticed.
    mesh.verified_transfer("g1", "a1", 5202, 1 << 20);
}
