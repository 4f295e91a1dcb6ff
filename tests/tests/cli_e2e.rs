//! The `cladnet` CLI against a real controller (in-process, embedded store).

use std::{process::Output, sync::Arc};

use cladnet_store::embedded::{EmbeddedOptions, EmbeddedStore};
use cladnet_tests::{
    api_checks, bin_path,
    controller::{ADMIN_TOKEN, TestController},
};

async fn cli(ctl: &TestController, token: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(bin_path("cladnet"));
    cmd.arg("--controller")
        .arg(ctl.url())
        .args(args)
        .env_remove("CLADNET_TOKEN_FILE");
    if token.is_empty() {
        cmd.env_remove("CLADNET_TOKEN");
    } else {
        cmd.env("CLADNET_TOKEN", token);
    }
    cmd.output().await.expect("run cladnet")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "cladnet failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_networks_peers_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default())
        .await
        .unwrap();
    let ctl = TestController::start(Arc::new(store)).await;

    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &[
                "network",
                "recommend",
                "--cidr",
                "192.168.1.0/24",
                "--cidr",
                "10.0.0.0/24",
            ],
        )
        .await,
    );
    assert!(out.contains("172.16.0.0/24"), "{out}");
    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &[
                "network", "create", "prod", "--id", "prod", "--cidr", "auto",
            ],
        )
        .await,
    );
    assert!(out.contains("prod"), "{out}");
    let out = stdout(&cli(&ctl, ADMIN_TOKEN, &["--json", "network", "show", "prod"]).await);
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["cladnetId"], "prod");
    assert_eq!(json["encryption"], "always");

    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &["--json", "token", "create", "prod", "--ttl", "1h"],
        )
        .await,
    );
    let token: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let join_token = token["token"].as_str().expect("token").to_owned();
    api_checks::join(&ctl, &join_token, "prod", "vm-1").await;
    api_checks::join(&ctl, &join_token, "prod", "vm-2").await;
    let table = stdout(&cli(&ctl, ADMIN_TOKEN, &["peers", "prod"]).await);
    assert!(
        table.contains("vm-1") && table.contains("vm-2") && table.contains("joining"),
        "{table}"
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.len() >= 3, "header + two rows: {table}");

    // An external WireGuard peer and its configuration listing both agents.
    let key = api_checks::public_key("laptop");
    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &[
                "--json",
                "peer",
                "add-external",
                "prod",
                "--name",
                "laptop",
                "--public-key",
                &key,
                "--endpoint",
                "198.51.100.20:51820",
            ],
        )
        .await,
    );
    let peer: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (&peer["hostId"], &peer["external"], &peer["state"]),
        (&"ext-laptop".into(), &true.into(), &"up".into()),
        "{out}"
    );
    let config = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &["peer", "wg-config", "prod", "ext-laptop"],
        )
        .await,
    );
    let prefix = peer["ipv4Cidr"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap();
    let address = format!("Address = {}/{prefix}\n", peer["ip"].as_str().unwrap());
    assert!(config.contains(&address), "{address} in {config}");
    assert_eq!(config.matches("[Peer]").count(), 2, "{config}");
    for agent in ["vm-1", "vm-2"] {
        assert!(
            config.contains(&format!("PublicKey = {}\n", api_checks::public_key(agent))),
            "{config}"
        );
    }
    let out = cli(
        &ctl,
        ADMIN_TOKEN,
        &[
            "peer",
            "add-external",
            "prod",
            "--name",
            "again",
            "--public-key",
            &key,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(6), "a key already used conflicts");

    // Without --id a network whose name is a valid id gets it as its id, so commands taking
    // the id work with the name.
    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &["network", "create", "stage", "--cidr", "10.91.0.0/24"],
        )
        .await,
    );
    assert!(out.starts_with("Created network stage.\n"), "{out}");
    let out = stdout(&cli(&ctl, ADMIN_TOKEN, &["peers", "stage"]).await);
    assert!(out.starts_with("HOST ID"), "an empty listing: {out}");
    // A name that is no id gets a generated one, printed.
    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &[
                "--json",
                "network",
                "create",
                "Web Tier",
                "--cidr",
                "10.92.0.0/24",
            ],
        )
        .await,
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let generated = json["cladnetId"].as_str().expect("id").to_owned();
    assert!(generated.starts_with("cn-"), "{out}");
    stdout(&cli(&ctl, ADMIN_TOKEN, &["peers", &generated]).await);

    let out = cli(&ctl, "wrong-token-wrong-token", &["network", "list"]).await;
    assert_eq!(out.status.code(), Some(4), "auth failures exit 4");
    let out = cli(&ctl, ADMIN_TOKEN, &["network", "show", "nope"]).await;
    assert_eq!(out.status.code(), Some(3), "not found exits 3");
    let out = cli(
        &ctl,
        ADMIN_TOKEN,
        &["network", "create", "x", "--cidr", "10.0.0.1/24"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    stdout(&cli(&ctl, ADMIN_TOKEN, &["peer", "delete", "prod", "vm-1"]).await);
    stdout(&cli(&ctl, ADMIN_TOKEN, &["network", "delete", "prod"]).await);
    let out = stdout(&cli(&ctl, ADMIN_TOKEN, &["--json", "network", "list"]).await);
    assert!(!out.contains("\"prod\""), "{out}");
}

/// `cladnet route` and the route settings of `cladnet network` against a real controller: a
/// prefix an agent advertises under manual approval is pending until `route approve`, and the
/// controller's refusals come back with the field named and the right exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_approves_and_rejects_routes() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default())
        .await
        .unwrap();
    let ctl = TestController::start(Arc::new(store)).await;
    let create = [
        "network",
        "create",
        "k8s",
        "--cidr",
        "10.80.0.0/24",
        "--route-approval",
        "manual",
    ];
    let out = stdout(&cli(&ctl, ADMIN_TOKEN, &create).await);
    assert!(out.contains("Route approval:  manual\n"), "{out}");
    let token = api_checks::join_token(&ctl, "k8s").await;
    let node = api_checks::join(&ctl, &token, "k8s", "node-1").await;
    let mut agent = ctl.agent(&node.session_token).await;
    agent
        .report(cladnet_proto::v1::ReportRequest {
            cladnet_id: "k8s".into(),
            host_id: "node-1".into(),
            advertised_routes: Some(cladnet_proto::v1::RouteAdvertisement {
                prefixes: vec!["10.244.1.0/24".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("advertise a podCIDR");

    let table = stdout(&cli(&ctl, ADMIN_TOKEN, &["route", "list", "k8s"]).await);
    assert!(table.contains("node-1   10.244.1.0/24  pending"), "{table}");
    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &["route", "approve", "k8s", "node-1", "10.244.1.0/24"],
        )
        .await,
    );
    assert_eq!(out, "Route 10.244.1.0/24 of peer node-1 is approved.\n");
    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &["--json", "peer", "show", "k8s", "node-1"],
        )
        .await,
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["routes"][0]["state"], "approved", "{out}");
    let out = stdout(&cli(&ctl, ADMIN_TOKEN, &["peer", "show", "k8s", "node-1"]).await);
    assert!(out.contains("10.244.1.0/24 (approved)"), "{out}");

    let out = cli(
        &ctl,
        ADMIN_TOKEN,
        &["route", "reject", "k8s", "node-1", "10.244.7.0/24"],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "not advertised: not found");
    let out = cli(
        &ctl,
        ADMIN_TOKEN,
        &[
            "command",
            "k8s",
            "advertise-routes",
            "--host",
            "node-1",
            "--routes",
            "10.80.0.0/25",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "invalid argument");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0]: 10.80.0.0/25 overlaps the network's address space"),
        "{err}"
    );
    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &["network", "update", "k8s", "--exit-nodes", "allow"],
        )
        .await,
    );
    assert!(out.contains("Exit nodes:      allow\n"), "{out}");
}

/// What agents report about each link's path (direct, relay via whom) is validated, stored and
/// shown: `cladnet peer show` (table and `--json`) and REST `GET .../peer/{host}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_show_has_the_paths_agents_report() {
    use cladnet_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default())
        .await
        .unwrap();
    let ctl = TestController::start(Arc::new(store)).await;
    let net = api_checks::network(&ctl, "relays", "10.82.0.0/24").await;
    let token = api_checks::join_token(&ctl, &net).await;
    let a = api_checks::join(&ctl, &token, &net, "node-a").await;
    for node in ["node-b", "node-c", "node-r"] {
        api_checks::join(&ctl, &token, &net, node).await;
    }
    let link = |host: &str, path: &str, via: &str| pb::PeerStats {
        host_id: host.into(),
        mode: "sealed".into(),
        handshake_age_seconds: 2,
        last_rx_age_seconds: 1,
        path: path.into(),
        via: via.into(),
        ..Default::default()
    };
    let report = |stats: Vec<pb::PeerStats>| pb::ReportRequest {
        cladnet_id: net.clone(),
        host_id: "node-a".into(),
        peer_stats: stats,
        ..Default::default()
    };
    let mut agent = ctl.agent(&a.session_token).await;
    // node-c as an agent before relays reports it: no path.
    agent
        .report(report(vec![
            link("node-b", "relay", "node-r"),
            link("node-c", "", ""),
            link("node-r", "direct", ""),
        ]))
        .await
        .expect("a report with paths");

    let out = stdout(&cli(&ctl, ADMIN_TOKEN, &["peer", "show", &net, "node-a"]).await);
    let row = |host: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(host))
            .unwrap_or_else(|| panic!("no link to {host}: {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(out.contains(" PATH "), "a PATH column: {out}");
    assert!(row("node-b").contains(" relay via node-r "), "{out}");
    assert!(row("node-r").contains(" direct "), "{out}");
    assert!(
        !row("node-c").contains("direct") && !row("node-c").contains("relay"),
        "{out}"
    );
    let out = stdout(
        &cli(
            &ctl,
            ADMIN_TOKEN,
            &["--json", "peer", "show", &net, "node-a"],
        )
        .await,
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let links = json["links"].as_array().expect("links");
    let of = |host: &str| links.iter().find(|l| l["hostId"] == host).expect("link");
    assert_eq!(of("node-b")["path"], "relay", "{out}");
    assert_eq!(of("node-b")["via"], "node-r", "{out}");
    assert_eq!(of("node-r")["path"], "direct", "{out}");
    assert_eq!(of("node-r").get("via"), None, "{out}");
    assert_eq!(of("node-c").get("path"), None, "not known: {out}");
    let (status, body) = cladnet_tests::controller::http(
        ctl.addr(),
        "GET",
        &format!("/v1/cladnet/{net}/peer/node-a"),
        ADMIN_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""path":"relay","via":"node-r""#),
        "REST shows the relay: {body}"
    );

    // Bad values are refused, naming the field, and the last good report stays.
    for (stats, field) in [
        (
            vec![link("node-r", "direct", ""), link("node-b", "relayed", "")],
            "peerStats[1].path",
        ),
        (vec![link("node-b", "relay", "node-x")], "peerStats[0].via"),
        (vec![link("node-b", "direct", "node-r")], "peerStats[0].via"),
        (vec![link("node-b", "relay", "a/b")], "peerStats[0].via"),
    ] {
        let e = agent
            .report(report(stats.clone()))
            .await
            .expect_err("a bad path is refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{stats:?}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {e:?}");
    }
    let out = stdout(&cli(&ctl, ADMIN_TOKEN, &["peer", "show", &net, "node-a"]).await);
    assert!(out.contains(" relay via node-r "), "{out}");

    // A relay that leaves the network is no longer accepted as one.
    stdout(&cli(&ctl, ADMIN_TOKEN, &["peer", "delete", &net, "node-r"]).await);
    let e = agent
        .report(report(vec![link("node-b", "relay", "node-r")]))
        .await
        .expect_err("a deleted relay");
    assert!(e.message().starts_with("peerStats[0].via"), "{e:?}");
}
