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
