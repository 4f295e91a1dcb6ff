//! The controller API end to end over gRPC and REST on one loopback port, against the
//! embedded store (the etcd runs are in controller_etcd.rs and share these checks).

use std::sync::Arc;

use cladnet_store::embedded::{EmbeddedOptions, EmbeddedStore};
use cladnet_tests::{api_checks, controller::TestController};

async fn embedded(dir: &std::path::Path) -> Arc<dyn cladnet_store::Store> {
    Arc::new(
        EmbeddedStore::open(&dir.join("store.redb"), EmbeddedOptions::default())
            .await
            .expect("open store"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = TestController::start(embedded(dir.path()).await).await;
    api_checks::all(&ctl).await;
}

/// Two controllers on one embedded store (one process, one handle): 500 concurrent joins,
/// never one address twice (the etcd run is in controller_etcd.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_five_hundred_concurrent_joins_no_duplicate_address() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(dir.path()).await;
    let one = TestController::start(store.clone()).await;
    let two = TestController::start(store).await;
    api_checks::two_controllers_concurrent_joins(&one, &two, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_state_across_controller_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (net, ip) = {
        let ctl = TestController::start(embedded(dir.path()).await).await;
        let net = api_checks::network(&ctl, "persist", "10.70.0.0/24").await;
        let token = api_checks::join_token(&ctl, &net).await;
        let joined = api_checks::join(&ctl, &token, &net, "node-a").await;
        ctl.stop().await;
        (net, joined.peer.unwrap().ip)
    };
    // A new controller process on the same file: same network, same peer, same address.
    let ctl = TestController::start(embedded(dir.path()).await).await;
    let mut admin = ctl.admin(cladnet_tests::controller::ADMIN_TOKEN).await;
    let peers = admin
        .list_peers(cladnet_proto::v1::ListPeersRequest {
            cladnet_id: net.clone(),
        })
        .await
        .expect("list peers after restart")
        .into_inner()
        .peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].ip, ip);
    let token = api_checks::join_token(&ctl, &net).await;
    let again = api_checks::join(&ctl, &token, &net, "node-a").await;
    assert_eq!(
        again.peer.unwrap().ip,
        ip,
        "re-join after restart keeps the address"
    );
}

/// Runs the controller binary on the embedded store at `path` until a stderr line contains
/// `until` (then kills it) or it exits; returns its stderr and exit status (`None`: killed).
fn run_controller(
    dir: &std::path::Path,
    path: &std::path::Path,
    until: &str,
) -> (String, Option<std::process::ExitStatus>) {
    use std::io::BufRead as _;
    let bin = cladnet_tests::bin_path("cladnet-controller");
    assert!(
        bin.exists(),
        "{} missing: cargo build -p cladnet-controller --bins",
        bin.display()
    );
    let mut child = std::process::Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--store",
        ])
        .arg(format!("embedded:{}", path.display()))
        .arg("--admin-token-file")
        .arg(dir.join("admin.token"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the controller");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains(until) {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    return (log, None);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return (log, Some(child.wait().unwrap()));
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    panic!("controller neither logged {until:?} nor exited within 30 s:\n{log}");
}

/// The controller binary checks the store's key layout before it serves: a store a layout-1
/// controller wrote is migrated (docs/store.md, "Layout versions"), a store marked with a
/// layout it does not know is refused with a message saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_migrates_layout_1_and_refuses_an_unknown_layout() {
    use cladnet_controller::{keys, model};

    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.redb");
    {
        let store = embedded_at(&old).await;
        let network = model::NetworkRecord {
            schema: model::SCHEMA,
            id: "legacy".into(),
            name: "legacy".into(),
            cidr: "10.71.0.0/24".parse().unwrap(),
            description: String::new(),
            rule_type: Default::default(),
            encryption: Default::default(),
            route_approval: Default::default(),
            exit_nodes: Default::default(),
            created_at: 1,
        };
        store
            .put("/cladnet/v1/networks/legacy", model::encode(&network), None)
            .await
            .unwrap();
        store
            .put(
                "/cladnet/v1/networks/legacy/ipam/10.71.0.2",
                b"a".to_vec(),
                None,
            )
            .await
            .unwrap();
    }
    let (log, exited) = run_controller(dir.path(), &old, "store layout migrated");
    assert!(exited.is_none(), "{log}");
    assert!(
        log.contains("store in layout 1: migrating to layout 2"),
        "{log}"
    );
    let store = embedded_at(&old).await;
    let marker = store.get(keys::layout()).await.unwrap().unwrap();
    assert_eq!(marker.value, b"2");
    assert!(store.get(&keys::network("legacy")).await.unwrap().is_some());
    let ip = std::net::Ipv4Addr::new(10, 71, 0, 2);
    assert!(
        store
            .get(&keys::ipam_addr("legacy", ip))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .range("/cladnet/v1/networks/")
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
    drop(store);

    let newer = dir.path().join("newer.redb");
    {
        let store = embedded_at(&newer).await;
        store
            .put(keys::layout(), b"3".to_vec(), None)
            .await
            .unwrap();
    }
    let (log, exited) = run_controller(dir.path(), &newer, "\u{0}never");
    let status = exited.expect("the controller exits");
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("says layout \"3\"") && log.contains("written by a newer controller"),
        "{log}"
    );
}

async fn embedded_at(path: &std::path::Path) -> Arc<dyn cladnet_store::Store> {
    Arc::new(
        EmbeddedStore::open(path, EmbeddedOptions::default())
            .await
            .expect("open store"),
    )
}
