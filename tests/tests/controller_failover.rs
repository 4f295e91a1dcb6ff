//! Agents fail over between controllers sharing one etcd: calls move to the next endpoint when
//! one is down, and a Watch resumed there continues without loss.

use cladnet_agent::control::ControlClient;
use cladnet_proto::{
    tls::ClientTls,
    v1::{self as pb, watch_event::Event},
};
use cladnet_tests::{api_checks, controller::TestController, etcd::Etcd};
use futures::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fails_over_between_controllers() {
    let Some(etcd) = Etcd::start("controller_failover", 1).await else {
        return;
    };
    let first = TestController::start(etcd.client().await).await;
    let second = TestController::start(etcd.client().await).await;
    let net = api_checks::network(&first, "failover", "10.92.0.0/24").await;
    let token = api_checks::join_token(&first, &net).await;

    // A dead endpoint first in the list: the client moves on.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut client = ControlClient::new(
        vec![dead_url, first.url(), second.url()],
        ClientTls::new(None, None).unwrap(),
    )
    .unwrap();
    let joined = client
        .join(
            &token,
            &api_checks::private_key("roamer"),
            api_checks::join_request(&net, "roamer"),
        )
        .await
        .expect("join via a live controller");
    assert_eq!(client.current(), first.url());

    let watch = |from| pb::WatchRequest {
        cladnet_id: net.clone(),
        host_id: "roamer".into(),
        from_revision: from,
    };
    let mut stream = client
        .watch(&joined.session_token, watch(0))
        .await
        .expect("watch");
    let snapshot = stream.next().await.unwrap().expect("snapshot");
    let mut last = snapshot.revision;

    first.stop().await;
    // The stream breaks (or ends) with its controller.
    while let Some(Ok(ev)) = stream.next().await {
        last = ev.revision;
    }
    // Meanwhile another peer joins through the surviving controller.
    api_checks::join(&second, &token, &net, "newcomer").await;

    let mut resumed = client
        .watch(&joined.session_token, watch(last))
        .await
        .expect("watch resumes on another controller");
    assert_eq!(client.current(), second.url());
    let ev = tokio::time::timeout(std::time::Duration::from_secs(10), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&ev.event, Some(Event::PeerUpserted(p)) if p.host_id == "newcomer"),
        "{ev:?}"
    );
    let report = pb::ReportRequest {
        cladnet_id: net.clone(),
        host_id: "roamer".into(),
        state: "up".into(),
        ..Default::default()
    };
    client
        .report(&joined.session_token, report)
        .await
        .expect("report via the surviving controller");

    // Refusals are not failures of reachability: they come back as they are.
    let err = client
        .report(
            "cns.wrong",
            pb::ReportRequest {
                cladnet_id: net.clone(),
                host_id: "roamer".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(
            err,
            Err(cladnet_agent::control::ControlError::Refused { .. })
        ),
        "{err:?}"
    );
    assert!(ControlClient::new(vec![], ClientTls::new(None, None).unwrap()).is_err());
    assert!(
        ControlClient::new(
            vec!["not a url".into()],
            ClientTls::new(None, None).unwrap()
        )
        .is_err()
    );
}
