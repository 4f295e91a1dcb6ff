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
