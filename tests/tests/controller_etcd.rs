//! The controller on real etcd: the same API checks as on the embedded store, two
//! controllers sharing one etcd under 500 concurrent joins, and a 3-member cluster losing a
//! member while the API keeps working.

use cladnet_proto::v1 as pb;
use cladnet_tests::{
    api_checks,
    controller::{ADMIN_TOKEN, TestController},
    etcd::Etcd,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_etcd() {
    let Some(etcd) = Etcd::start("api_on_etcd", 1).await else {
        return;
    };
    let ctl = TestController::start(etcd.client().await).await;
    api_checks::all(&ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_five_hundred_concurrent_joins_no_duplicate_address() {
    let Some(etcd) = Etcd::start("two_controllers", 1).await else {
        return;
    };
    let one = TestController::start(etcd.client().await).await;
    let two = TestController::start(etcd.client().await).await;
    api_checks::two_controllers_concurrent_joins(&one, &two, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_survives_losing_an_etcd_member() {
    let Some(mut etcd) = Etcd::start("etcd_member_loss", 3).await else {
        return;
    };
    let ctl = TestController::start(etcd.client().await).await;
    let net = api_checks::network(&ctl, "ha", "10.91.0.0/24").await;
    let token = api_checks::join_token(&ctl, &net).await;
    api_checks::join(&ctl, &token, &net, "before").await;

    let victim = etcd.leader().unwrap_or(0);
    etcd.kill(victim);

    // A new leader is elected within seconds; the API keeps serving reads and writes.
    let mut joined = false;
    for _ in 0..40 {
        let mut agent = ctl.agent(&token).await;
        if api_checks::join_signed(&mut agent, api_checks::join_request(&net, "after"))
            .await
            .is_ok()
        {
            joined = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(joined, "joins work again after losing member {victim}");
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let peers = admin
        .list_peers(pb::ListPeersRequest {
            cladnet_id: net.clone(),
        })
        .await
        .expect("list after loss");
    assert_eq!(peers.into_inner().peers.len(), 2);
    let health = admin
        .health(pb::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, "healthy");
}
