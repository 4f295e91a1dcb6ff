//! Advertised prefixes ("routes") through the real controller API: validation errors naming
//! the field, approval by network policy, decisions, distribution in the Watch stream,
//! withdrawal, removal with the peer, the advertise-routes command and wg-config AllowedIPs.
//! Part of [`crate::api_checks::all`], so it runs on every store backend.

use cladnet_proto::v1::{self as pb, watch_event::Event};
use tonic::Code;

use crate::{
    api_checks::{assert_code, join, join_token, network, next_event, watch},
    controller::{ADMIN_TOKEN, AgentClient, TestController, http},
};

/// A report carrying only an advertisement.
fn advertise(net: &str, node: &str, prefixes: &[&str]) -> pb::ReportRequest {
    pb::ReportRequest {
        cladnet_id: net.into(),
        host_id: node.into(),
        advertised_routes: Some(pb::RouteAdvertisement {
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        }),
        ..Default::default()
    }
}

/// `prefix=state` of each route of a peer record, in order.
fn shown(routes: &[pb::Route]) -> Vec<String> {
    routes
        .iter()
        .map(|r| format!("{}={}", r.prefix, r.state))
        .collect()
}

/// Waits for the next upsert of `node` on `stream` and returns its routes.
async fn next_routes(stream: &mut tonic::Streaming<pb::WatchEvent>, node: &str) -> Vec<String> {
    loop {
        if let Some(Event::PeerUpserted(p)) = next_event(stream).await.event
            && p.host_id == node
        {
            return shown(&p.routes);
        }
    }
}

async fn list(ctl: &TestController, net: &str) -> Vec<String> {
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let routes = admin
        .list_routes(pb::ListRoutesRequest {
            cladnet_id: net.into(),
            host_id: String::new(),
        })
        .await
        .expect("list routes")
        .into_inner()
        .routes;
    routes
        .iter()
        .map(|r| format!("{} {}={}", r.host_id, r.prefix, r.state))
        .collect()
}

async fn refused(agent: &mut AgentClient, req: pb::ReportRequest, what: &str) -> String {
    assert_code(agent.report(req).await, Code::InvalidArgument, what)
}

async fn update(
    ctl: &TestController,
    net: &str,
    approval: &str,
    exit: &str,
) -> Result<pb::Network, tonic::Status> {
    ctl.admin(ADMIN_TOKEN)
        .await
        .update_network(pb::Network {
            cladnet_id: net.into(),
            route_approval: approval.into(),
            exit_nodes: exit.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

fn decision(net: &str, node: &str, prefix: &str) -> pb::RouteDecisionRequest {
    pb::RouteDecisionRequest {
        cladnet_id: net.into(),
        host_id: node.into(),
        prefix: prefix.into(),
    }
}

/// The whole life of advertised prefixes in one network.
pub async fn routes(ctl: &TestController) {
    let net = network(ctl, "routes", "10.70.0.0/24").await;
    let token = join_token(ctl, &net).await;
    let a = join(ctl, &token, &net, "ra").await;
    let b = join(ctl, &token, &net, "rb").await;
    let mut as_a = ctl.agent(&a.session_token).await;
    let mut as_b = ctl.agent(&b.session_token).await;
    let mut stream = watch(&mut as_b, &net, "rb", 0).await;
    next_event(&mut stream).await; // snapshot

    // Auto approval (the default): routed at once, and every agent hears of it.
    as_a.report(advertise(&net, "ra", &["10.244.1.0/24"]))
        .await
        .expect("advertise");
    assert_eq!(
        next_routes(&mut stream, "ra").await,
        ["10.244.1.0/24=approved"]
    );

    // Refusals name the entry and change nothing.
    let msg = refused(
        &mut as_a,
        advertise(&net, "ra", &["10.244.1.0/24", "10.70.0.128/25"]),
        "overlay",
    )
    .await;
    assert!(
        msg.starts_with("advertisedRoutes.prefixes[1]: ")
            && msg.contains("address space 10.70.0.0/24"),
        "{msg}"
    );
    let msg = refused(
        &mut as_b,
        advertise(&net, "rb", &["10.244.0.0/16"]),
        "another peer's",
    )
    .await;
    assert!(
        msg.starts_with("advertisedRoutes.prefixes[0]: ")
            && msg.contains("advertised by peer \"ra\""),
        "{msg}"
    );
    let msg = refused(
        &mut as_b,
        advertise(&net, "rb", &["0.0.0.0/0"]),
        "exit node",
    )
    .await;
    assert!(
        msg.contains("exit node") && msg.contains("--exit-nodes allow"),
        "{msg}"
    );
    let msg = refused(
        &mut as_b,
        advertise(&net, "rb", &["10.250.0.1/16"]),
        "host bits",
    )
    .await;
    assert!(msg.contains("did you mean 10.250.0.0/16"), "{msg}");
    let many: Vec<String> = (0..17).map(|i| format!("10.{}.0.0/16", 100 + i)).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let msg = refused(&mut as_b, advertise(&net, "rb", &many), "too many").await;
    assert!(msg.starts_with("advertisedRoutes.prefixes: "), "{msg}");
    assert_eq!(list(ctl, &net).await, ["ra 10.244.1.0/24=approved"]);

    // An exit node needs the network's setting; denying it again is refused while one exists.
    let n = update(ctl, &net, "", "allow")
        .await
        .expect("allow exit nodes");
    assert_eq!(
        (n.exit_nodes.as_str(), n.route_approval.as_str()),
        ("allow", "auto")
    );
    as_b.report(advertise(&net, "rb", &["0.0.0.0/0"]))
        .await
        .expect("advertise an exit node");
    assert_eq!(next_routes(&mut stream, "rb").await, ["0.0.0.0/0=approved"]);
    let msg = assert_code(
        update(ctl, &net, "", "deny").await,
        Code::FailedPrecondition,
        "deny with an exit node",
    );
    assert!(msg.starts_with("exitNodes: peer \"rb\""), "{msg}");

    // Manual approval holds a new prefix back; the approval distributes it.
    update(ctl, &net, "manual", "")
        .await
        .expect("manual approval");
    as_b.report(advertise(&net, "rb", &["0.0.0.0/0", "10.244.2.0/24"]))
        .await
        .expect("advertise under manual approval");
    assert_eq!(
        next_routes(&mut stream, "rb").await,
        ["0.0.0.0/0=approved", "10.244.2.0/24=pending"],
        "the earlier approval stands; the new prefix waits"
    );
    let body = r#"{"hostId":"rb","prefix":"10.244.2.0/24"}"#;
    let path = format!("/v1/cladnet/{net}/route/approve");
    let (status, reply) = http(ctl.addr(), "POST", &path, ADMIN_TOKEN, body).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains(r#""state":"approved""#), "{reply}");
    assert_eq!(
        next_routes(&mut stream, "rb").await,
        ["0.0.0.0/0=approved", "10.244.2.0/24=approved"]
    );
    let (status, reply) = http(
        ctl.addr(),
        "GET",
        &format!("/v1/cladnet/{net}/route?hostId=rb"),
        ADMIN_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        reply.contains("10.244.2.0/24") && !reply.contains("10.244.1.0/24"),
        "{reply}"
    );

    // Every agent's WireGuard-client view routes the approved prefixes to their peer.
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    admin
        .add_external_peer(pb::AddExternalPeerRequest {
            cladnet_id: net.clone(),
            name: "laptop".into(),
            public_key: crate::api_checks::public_key("route-laptop"),
            ..Default::default()
        })
        .await
        .expect("add external peer");
    let config = admin
        .get_external_peer_config(pb::GetPeerRequest {
            cladnet_id: net.clone(),
            host_id: "ext-laptop".into(),
        })
        .await
        .expect("wg-config")
        .into_inner()
        .config;
    let b_ip = b.peer.as_ref().expect("peer").ip.clone();
    let a_ip = a.peer.as_ref().expect("peer").ip.clone();
    assert!(
        config.contains(&format!(
            "AllowedIPs = {b_ip}/32, 0.0.0.0/0, 10.244.2.0/24\n"
        )),
        "{config}"
    );
    assert!(
        config.contains(&format!("AllowedIPs = {a_ip}/32, 10.244.1.0/24\n")),
        "{config}"
    );

    // A rejection stops the routing and frees the space; approving it again re-checks.
    let r = admin
        .reject_route(decision(&net, "ra", "10.244.1.0/24"))
        .await
        .expect("reject")
        .into_inner();
    assert_eq!(r.state, "rejected");
    assert_eq!(
        next_routes(&mut stream, "ra").await,
        ["10.244.1.0/24=rejected"]
    );
    as_b.report(advertise(
        &net,
        "rb",
        &["0.0.0.0/0", "10.244.2.0/24", "10.244.1.128/25"],
    ))
    .await
    .expect("a rejected prefix reserves nothing");
    let msg = assert_code(
        admin
            .approve_route(decision(&net, "ra", "10.244.1.0/24"))
            .await,
        Code::InvalidArgument,
        "approve an overlapping rejected prefix",
    );
    assert!(
        msg.starts_with("prefix: ") && msg.contains("peer \"rb\""),
        "{msg}"
    );
    assert_code(
        admin
            .approve_route(decision(&net, "ra", "10.9.0.0/16"))
            .await,
        Code::NotFound,
        "approve a prefix not advertised",
    );
    let msg = assert_code(
        admin.approve_route(decision(&net, "ra", "banana")).await,
        Code::InvalidArgument,
        "approve garbage",
    );
    assert!(msg.starts_with("prefix: "), "{msg}");

    // A re-join keeps the routes (the agent reports them again anyway); withdrawal removes.
    join(ctl, &token, &net, "ra").await;
    assert!(
        list(ctl, &net)
            .await
            .contains(&"ra 10.244.1.0/24=rejected".to_owned())
    );
    let a2 = join(ctl, &token, &net, "ra").await;
    let mut as_a = ctl.agent(&a2.session_token).await;
    as_a.report(advertise(&net, "ra", &[]))
        .await
        .expect("withdraw");
    assert_eq!(
        list(ctl, &net).await,
        [
            "rb 0.0.0.0/0=approved",
            "rb 10.244.1.128/25=pending",
            "rb 10.244.2.0/24=approved"
        ]
    );

    // The advertise-routes command: checked, then delivered to its agent only.
    let command = |host: &str, kind: &str, routes: &[&str]| pb::SendCommandRequest {
        cladnet_id: net.clone(),
        host_id: host.into(),
        command_type: kind.into(),
        routes: routes.iter().map(|r| (*r).to_owned()).collect(),
    };
    let msg = assert_code(
        admin
            .send_command(command("ra", "advertise-routes", &["10.244.2.0/24"]))
            .await,
        Code::InvalidArgument,
        "command with another peer's prefix",
    );
    assert!(
        msg.starts_with("routes[0]: ") && msg.contains("peer \"rb\""),
        "{msg}"
    );
    let msg = assert_code(
        admin
            .send_command(command("", "advertise-routes", &[]))
            .await,
        Code::InvalidArgument,
        "no host",
    );
    assert!(msg.starts_with("hostId: "), "{msg}");
    let msg = assert_code(
        admin
            .send_command(command("ra", "up", &["10.1.0.0/16"]))
            .await,
        Code::InvalidArgument,
        "routes on up",
    );
    assert!(msg.starts_with("routes: "), "{msg}");
    let mut stream_a = watch(&mut as_a, &net, "ra", 0).await;
    next_event(&mut stream_a).await; // snapshot
    admin
        .send_command(command("ra", "ADVERTISE_ROUTES", &["10.244.9.0/24"]))
        .await
        .expect("advertise-routes command");
    let got = loop {
        if let Some(Event::Command(c)) = next_event(&mut stream_a).await.event {
            break c;
        }
    };
    assert_eq!(
        (got.command_type.as_str(), got.routes.as_slice()),
        ("advertise-routes", &["10.244.9.0/24".to_owned()][..])
    );

    // Deleting a peer takes its routes along, and frees their space.
    admin
        .delete_peer(pb::GetPeerRequest {
            cladnet_id: net.clone(),
            host_id: "rb".into(),
        })
        .await
        .expect("delete peer");
    assert!(list(ctl, &net).await.is_empty());
    as_a.report(advertise(&net, "ra", &["10.244.2.0/24"]))
        .await
        .expect("the deleted peer's prefix is free");
    assert_eq!(list(ctl, &net).await, ["ra 10.244.2.0/24=pending"]);
}
