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
        batches: false,
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

/// A small failover storm: three controllers on one etcd, agents spread over them, one
/// controller killed while peers keep joining. Every agent of the dead controller resumes on
/// another with the revision it processed last (one store watch per network on each survivor),
/// and every agent ends with exactly the store's peers, no event applied out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_storm_every_agent_resumes_and_misses_nothing() {
    use std::{
        collections::{BTreeMap, HashMap},
        sync::{Arc, Mutex},
        time::Duration,
    };

    const AGENTS: usize = 30;
    let Some(etcd) = Etcd::start("failover_storm", 1).await else {
        return;
    };
    let mut ctls = Vec::new();
    for _ in 0..3 {
        ctls.push(TestController::start(etcd.client().await).await);
    }
    let urls: Vec<String> = ctls.iter().map(TestController::url).collect();
    let net = api_checks::network(&ctls[0], "storm", "10.93.0.0/24").await;
    let token = api_checks::join_token(&ctls[0], &net).await;

    /// What one agent holds: host id → overlay address, the last revision, its controller.
    #[derive(Default)]
    struct View {
        peers: BTreeMap<String, String>,
        revision: i64,
        controller: String,
        out_of_order: Vec<String>,
    }
    let views: Arc<Mutex<HashMap<usize, View>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..AGENTS {
        let home = i % 3;
        let node = format!("a{i}");
        let joined = api_checks::join(&ctls[home], &token, &net, &node).await;
        // The agent's own controller first, then the others, as an agent configured with
        // every controller would try them.
        let mut order = urls.clone();
        order.rotate_left(home);
        let mut client = ControlClient::new(order, ClientTls::new(None, None).unwrap()).unwrap();
        let (net, views) = (net.clone(), views.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            loop {
                let req = pb::WatchRequest {
                    cladnet_id: net.clone(),
                    host_id: node.clone(),
                    from_revision: last,
                    batches: true,
                };
                let Ok(mut stream) = client.watch(&joined.session_token, req).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while let Some(Ok(message)) = stream.next().await {
                    // A batch is its changes, each at its own revision.
                    let events = match message.event {
                        Some(Event::Batch(batch)) => batch.events,
                        event => vec![pb::WatchEvent { event, ..message }],
                    };
                    for ev in events {
                        let mut views = views.lock().unwrap();
                        let view = views.entry(i).or_default();
                        view.controller = client.current().to_owned();
                        let snapshot = matches!(ev.event, Some(Event::Snapshot(_)));
                        if ev.revision < view.revision && !snapshot {
                            view.out_of_order
                                .push(format!("{} after {}", ev.revision, view.revision));
                        }
                        match ev.event {
                            Some(Event::Snapshot(s)) => {
                                view.peers =
                                    s.peers.into_iter().map(|p| (p.host_id, p.ip)).collect();
                            }
                            Some(Event::PeerUpserted(p)) => {
                                view.peers.insert(p.host_id, p.ip);
                            }
                            Some(Event::PeerRemoved(id)) => {
                                view.peers.remove(&id);
                            }
                            _ => {}
                        }
                        view.revision = ev.revision;
                        last = ev.revision;
                    }
                }
                // The stream broke: back off as an agent does, so the changes made meanwhile
                // come from the new controller's history.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    // Every agent has its first view before the storm.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while views.lock().unwrap().len() < AGENTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents never watched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dead = ctls.remove(0);
    let dead_url = dead.url();
    dead.stop().await;
    // Peers keep joining through the survivors while the dead controller's agents resume.
    for i in 0..10 {
        api_checks::join(&ctls[i % 2], &token, &net, &format!("late{i}")).await;
    }

    let want: BTreeMap<String, String> = ctls[0]
        .admin(cladnet_tests::controller::ADMIN_TOKEN)
        .await
        .list_peers(pb::ListPeersRequest {
            cladnet_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .peers
        .into_iter()
        .map(|p| (p.host_id, p.ip))
        .collect();
    assert_eq!(want.len(), AGENTS + 10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let behind: Vec<usize> = {
            let views = views.lock().unwrap();
            views
                .iter()
                .filter(|(_, v)| v.peers != want || v.controller == dead_url)
                .map(|(i, _)| *i)
                .collect()
        };
        if behind.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents {behind:?} never caught up on a live controller"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, view) in views.lock().unwrap().iter() {
        assert!(
            view.out_of_order.is_empty(),
            "agent {i}: {:?}",
            view.out_of_order
        );
    }
    for t in tasks {
        t.abort();
    }
}
