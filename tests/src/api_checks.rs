//! Checks of the controller API that every store backend must pass. Each takes a running
//! [`TestController`] and panics with a message on failure.

use std::{collections::HashSet, time::Duration};

use base64::Engine as _;
use cladnet_proto::v1::{self as pb, watch_event::Event};
use futures::StreamExt as _;
use tonic::Code;

use crate::controller::{ADMIN_TOKEN, AgentClient, TestController, http};

/// Runs every check, each on its own network.
pub async fn all(ctl: &TestController) {
    auth_is_enforced(ctl).await;
    networks_crud_and_validation(ctl).await;
    join_allocates_stable_addresses(ctl).await;
    exhaustion_and_reuse(ctl).await;
    watch_snapshot_deltas_resume(ctl).await;
    rest_paths(ctl).await;
    commands_and_tests(ctl).await;
    external_peers(ctl).await;
    join_identity(ctl).await;
    sessions_end_with_credentials(ctl).await;
    crate::route_checks::routes(ctl).await;
}

/// A test X25519 private key derived from `seed` (not secret: tests only).
pub fn private_key(seed: &str) -> [u8; 32] {
    // Bytes 1..=30 only: X25519 clamping changes bits of bytes 0 and 31, which would make
    // seeds differing there share a key.
    let mut key = [0u8; 32];
    for (i, b) in seed.bytes().enumerate() {
        key[1 + i % 30] ^= b.wrapping_add(i as u8);
    }
    key
}

/// The base64 public key of [`private_key`]`(seed)`.
pub fn public_key(seed: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(cladnet_proto::join::public_key(&private_key(seed)))
}

/// Fills in `req`'s nonce and proof from a fresh JoinChallenge, proving with `private`.
pub async fn prove_with(
    agent: &mut AgentClient,
    mut req: pb::JoinRequest,
    private: &[u8; 32],
) -> pb::JoinRequest {
    let b64 = base64::engine::general_purpose::STANDARD;
    let challenge = agent
        .join_challenge(pb::JoinChallengeRequest {})
        .await
        .expect("join challenge")
        .into_inner();
    let controller: [u8; 32] = b64
        .decode(&challenge.controller_public_key)
        .expect("base64 controller key")
        .try_into()
        .expect("32-byte controller key");
    let nonce = b64.decode(&challenge.nonce).expect("base64 nonce");
    let proof = cladnet_proto::join::proof(
        private,
        &controller,
        &nonce,
        &req.cladnet_id,
        &req.host_id,
        &req.public_key,
    )
    .expect("contributory controller key");
    req.nonce = challenge.nonce;
    req.proof = b64.encode(proof);
    req
}

/// Joins with `req`, proving the key of `private_key(req.host_id)` (what [`join_request`]
/// registers).
pub async fn join_signed(
    agent: &mut AgentClient,
    req: pb::JoinRequest,
) -> Result<tonic::Response<pb::JoinResponse>, tonic::Status> {
    let private = private_key(&req.host_id);
    let req = prove_with(agent, req, &private).await;
    agent.join(req).await
}

/// Creates a network.
pub async fn network(ctl: &TestController, id: &str, cidr: &str) -> String {
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let n = pb::Network {
        cladnet_id: id.into(),
        ipv4_address_space: cidr.into(),
        ..Default::default()
    };
    admin
        .create_network(n)
        .await
        .unwrap_or_else(|e| panic!("create network {id}: {e}"))
        .into_inner()
        .cladnet_id
}

/// Mints a join token.
pub async fn join_token(ctl: &TestController, net: &str) -> String {
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let req = pb::CreateJoinTokenRequest {
        cladnet_id: net.into(),
        ..Default::default()
    };
    admin
        .create_join_token(req)
        .await
        .expect("create join token")
        .into_inner()
        .token
}

/// `node`'s tunnel port in [`join_request`]: distinct per node (endpoints are unique in a
/// network), all behind one public address as with a masquerading NAT.
pub fn port(node: &str) -> u16 {
    let h = node.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    10_000 + (h % 50_000) as u16
}

/// `node`'s public endpoint in [`join_request`].
pub fn endpoint(node: &str) -> String {
    format!("198.18.1.2:{}", port(node))
}

/// A join request for `node`.
pub fn join_request(net: &str, node: &str) -> pb::JoinRequest {
    pb::JoinRequest {
        cladnet_id: net.into(),
        host_id: node.into(),
        public_key: public_key(node),
        listen_port: u32::from(port(node)),
        public_endpoint: endpoint(node),
        host_private_ipv4_cidr: "192.168.1.10/24".into(),
        facts: Some(pb::HostFacts {
            host_name: format!("{node}.example"),
            interfaces: vec![pb::NetworkInterface {
                name: "eth0".into(),
                ipv4_cidrs: vec!["192.168.1.10/24".into()],
                mtu: 1500,
            }],
            capabilities: vec!["userspace".into()],
        }),
        ..Default::default()
    }
}

/// Joins `node` and returns the response.
pub async fn join(ctl: &TestController, token: &str, net: &str, node: &str) -> pb::JoinResponse {
    let mut agent = ctl.agent(token).await;
    join_signed(&mut agent, join_request(net, node))
        .await
        .unwrap_or_else(|e| panic!("join {node}: {e}"))
        .into_inner()
}

pub(crate) fn assert_code<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    what: &str,
) -> String {
    match r {
        Err(s) if s.code() == code => s.message().to_owned(),
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// Admin calls need the admin token; agent calls need the right kind of token.
pub async fn auth_is_enforced(ctl: &TestController) {
    let net = network(ctl, "auth", "10.61.0.0/24").await;
    let list = || pb::ListNetworksRequest {};
    assert_code(
        ctl.admin("").await.list_networks(list()).await,
        Code::Unauthenticated,
        "no token",
    );
    assert_code(
        ctl.admin("not-the-admin-token")
            .await
            .list_networks(list())
            .await,
        Code::Unauthenticated,
        "wrong token",
    );
    let token = join_token(ctl, &net).await;
    assert_code(
        ctl.admin(&token).await.list_networks(list()).await,
        Code::PermissionDenied,
        "join token on admin call",
    );
    // Health needs no credentials.
    let h = ctl
        .admin("")
        .await
        .health(pb::HealthRequest {})
        .await
        .expect("health")
        .into_inner();
    assert_eq!(h.status, "healthy");

    let mut bad = ctl.agent("cnj.nope.secret").await;
    assert_code(
        join_signed(&mut bad, join_request(&net, "a")).await,
        Code::Unauthenticated,
        "unknown join token",
    );
    assert_code(
        join_signed(&mut ctl.agent(ADMIN_TOKEN).await, join_request(&net, "a")).await,
        Code::Unauthenticated,
        "admin token on join",
    );
    let a = join(ctl, &token, &net, "a").await;
    // A session token authorizes its own node only.
    let mut as_a = ctl.agent(&a.session_token).await;
    let watch_b = pb::WatchRequest {
        cladnet_id: net.clone(),
        host_id: "b".into(),
        from_revision: 0,
        batches: false,
    };
    assert_code(
        as_a.watch(watch_b).await.map(|_| ()),
        Code::Unauthenticated,
        "a's session for b",
    );
    assert_code(
        ctl.agent(&token).await.report(report(&net, "a")).await,
        Code::PermissionDenied,
        "join token on report",
    );
    as_a.report(report(&net, "a")).await.expect("own report");

    // Revoked tokens no longer join; joined peers keep working.
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let tokens = admin
        .list_join_tokens(pb::GetNetworkRequest {
            cladnet_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokens.tokens.len(), 1);
    let revoke = pb::RevokeJoinTokenRequest {
        cladnet_id: net.clone(),
        token_id: tokens.tokens[0].token_id.clone(),
    };
    admin
        .revoke_join_token(revoke.clone())
        .await
        .expect("revoke");
    assert_code(
        admin.revoke_join_token(revoke).await,
        Code::NotFound,
        "revoke twice",
    );
    assert_code(
        join_signed(&mut ctl.agent(&token).await, join_request(&net, "c")).await,
        Code::Unauthenticated,
        "revoked token",
    );
    as_a.report(report(&net, "a"))
        .await
        .expect("session survives token revocation");
}

fn report(net: &str, node: &str) -> pb::ReportRequest {
    pb::ReportRequest {
        cladnet_id: net.into(),
        host_id: node.into(),
        state: "up".into(),
        ..Default::default()
    }
}

/// Create/get/list/update/delete, with field-naming validation errors.
pub async fn networks_crud_and_validation(ctl: &TestController) {
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let bad = |id: &str, cidr: &str, rule: &str| pb::Network {
        cladnet_id: id.into(),
        ipv4_address_space: cidr.into(),
        rule_type: rule.into(),
        ..Default::default()
    };
    for (req, field) in [
        (bad("UPPER", "10.0.0.0/24", ""), "cladnetId"),
        (bad("ok-id", "10.0.0.1/24", ""), "ipv4AddressSpace"),
        (bad("ok-id", "8.8.8.0/24", ""), "ipv4AddressSpace"),
        (bad("ok-id", "", ""), "ipv4AddressSpace"),
        (bad("ok-id", "10.0.0.0/24", "fastest"), "ruleType"),
    ] {
        let msg = assert_code(
            admin.create_network(req).await,
            Code::InvalidArgument,
            field,
        );
        assert!(msg.starts_with(field), "{msg:?} names {field}");
    }
    let list = admin
        .list_networks(pb::ListNetworksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        !list
            .cladnet_specifications
            .iter()
            .any(|n| n.cladnet_id == "ok-id"),
        "nothing half-written"
    );

    let created = admin
        .create_network(pb::Network {
            cladnet_id: "crud".into(),
            name: "CRUD net".into(),
            ipv4_address_space: "10.62.0.0/24".into(),
            encryption: "inter-site".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        (created.rule_type.as_str(), created.encryption.as_str()),
        ("basic", "inter-site")
    );
    let dup = pb::Network {
        cladnet_id: "crud".into(),
        ipv4_address_space: "10.62.0.0/24".into(),
        ..Default::default()
    };
    assert_code(
        admin.create_network(dup).await,
        Code::AlreadyExists,
        "duplicate id",
    );

    let mut update = created.clone();
    update.rule_type = "cost-prioritized".into();
    let updated = admin
        .update_network(update.clone())
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.rule_type, "cost-prioritized");
    assert!(updated.revision > created.revision);
    assert_code(
        admin.update_network(update).await,
        Code::Aborted,
        "stale revision",
    );

    let auto = admin
        .create_network(pb::Network {
            cladnet_id: "auto".into(),
            ipv4_address_space: "auto".into(),
            ..Default::default()
        })
        .await
        .expect("auto address space")
        .into_inner();
    assert!(auto.ipv4_address_space.contains('/'), "{auto:?}");

    let deleted = admin
        .delete_network(pb::GetNetworkRequest {
            cladnet_id: "crud".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.is_succeeded);
    assert_code(
        admin
            .get_network(pb::GetNetworkRequest {
                cladnet_id: "crud".into(),
            })
            .await,
        Code::NotFound,
        "deleted",
    );
}

/// Addresses are unique, skip reserved ones, and stay with their node across re-joins.
pub async fn join_allocates_stable_addresses(ctl: &TestController) {
    let net = network(ctl, "alloc", "10.63.0.0/24").await;
    let token = join_token(ctl, &net).await;
    let mut ips = HashSet::new();
    for node in ["n1", "n2", "n3"] {
        let r = join(ctl, &token, &net, node).await;
        let peer = r.peer.unwrap();
        assert!(!r.session_token.is_empty());
        assert_eq!(peer.state, "joining");
        assert!(ips.insert(peer.ip.clone()), "duplicate {}", peer.ip);
        assert!(
            !["10.63.0.0", "10.63.0.1", "10.63.0.255"].contains(&peer.ip.as_str()),
            "reserved {}",
            peer.ip
        );
    }
    let again = join(ctl, &token, &net, "n2").await.peer.unwrap();
    assert!(ips.contains(&again.ip), "n2 keeps its address");
    let mut agent = ctl.agent(&token).await;
    let mut req = join_request(&net, "n4");
    req.public_key = "short".into();
    let msg = assert_code(agent.join(req).await, Code::InvalidArgument, "bad key");
    assert!(msg.starts_with("publicKey"), "{msg}");
    let mut req = join_request(&net, "n4");
    req.facts.as_mut().unwrap().interfaces[0].ipv4_cidrs[0] = "300.1.1.1/24".into();
    let msg = assert_code(
        join_signed(&mut agent, req).await,
        Code::InvalidArgument,
        "bad cidr",
    );
    assert!(msg.starts_with("facts.interfaces[0].ipv4Cidrs[0]"), "{msg}");

    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let peer = admin
        .get_peer(pb::GetPeerRequest {
            cladnet_id: net.clone(),
            host_id: "n1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(peer.links.len(), 2, "a link to each other peer");
    assert!(
        peer.links
            .iter()
            .all(|l| l.mode == "sealed" && l.selected_endpoint == endpoint(&l.host_id)),
        "{:?}",
        peer.links
    );
}

/// A /29 holds five peers; a sixth gets FailedPrecondition; deleting one frees its address.
pub async fn exhaustion_and_reuse(ctl: &TestController) {
    let net = network(ctl, "small", "10.64.0.0/29").await;
    let token = join_token(ctl, &net).await;
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(
            join(ctl, &token, &net, &format!("s{i}"))
                .await
                .peer
                .unwrap()
                .ip,
        );
    }
    let msg = assert_code(
        join_signed(&mut ctl.agent(&token).await, join_request(&net, "s5")).await,
        Code::FailedPrecondition,
        "full",
    );
    assert!(msg.contains("no free address"), "{msg}");
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    admin
        .delete_peer(pb::GetPeerRequest {
            cladnet_id: net.clone(),
            host_id: "s2".into(),
        })
        .await
        .expect("delete peer");
    let reused = join(ctl, &token, &net, "s5").await.peer.unwrap().ip;
    assert_eq!(reused, held[2], "the freed address is reused");
}

pub(crate) async fn next_event(stream: &mut tonic::Streaming<pb::WatchEvent>) -> pb::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("stream open")
        .expect("event, not error")
}

pub(crate) async fn watch(
    agent: &mut AgentClient,
    net: &str,
    node: &str,
    from: i64,
) -> tonic::Streaming<pb::WatchEvent> {
    let req = pb::WatchRequest {
        cladnet_id: net.into(),
        host_id: node.into(),
        from_revision: from,
        batches: false,
    };
    agent.watch(req).await.expect("open watch").into_inner()
}

/// A snapshot first, then ordered deltas; a resumed watch continues exactly after the last
/// revision seen.
pub async fn watch_snapshot_deltas_resume(ctl: &TestController) {
    let net = network(ctl, "watch", "10.65.0.0/24").await;
    let token = join_token(ctl, &net).await;
    let a = join(ctl, &token, &net, "wa").await;
    let mut as_a = ctl.agent(&a.session_token).await;
    let mut stream = watch(&mut as_a, &net, "wa", 0).await;
    let first = next_event(&mut stream).await;
    let Some(Event::Snapshot(snap)) = first.event else {
        panic!("first event is a snapshot: {first:?}")
    };
    assert_eq!(snap.peers.len(), 1);
    assert_eq!(snap.network.unwrap().cladnet_id, net);

    join(ctl, &token, &net, "wb").await;
    let ev = next_event(&mut stream).await;
    let Some(Event::PeerUpserted(p)) = &ev.event else {
        panic!("peer event: {ev:?}")
    };
    assert_eq!(p.host_id, "wb");
    assert!(ev.revision > first.revision);
    let seen = ev.revision;
    drop(stream);

    // While a is away: b reports up, c joins, b is deleted.
    let b_session = join(ctl, &token, &net, "wb").await.session_token;
    ctl.agent(&b_session)
        .await
        .report(report(&net, "wb"))
        .await
        .expect("b reports");
    join(ctl, &token, &net, "wc").await;
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    admin
        .delete_peer(pb::GetPeerRequest {
            cladnet_id: net.clone(),
            host_id: "wb".into(),
        })
        .await
        .unwrap();

    let mut resumed = watch(&mut as_a, &net, "wa", seen).await;
    let mut revisions = Vec::new();
    let mut summary = Vec::new();
    while summary.last().map(String::as_str) != Some("removed wb") {
        let ev = next_event(&mut resumed).await;
        revisions.push(ev.revision);
        summary.push(match ev.event.unwrap() {
            Event::PeerUpserted(p) => format!("{} {}", p.host_id, p.state),
            Event::PeerRemoved(n) => format!("removed {n}"),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        summary,
        ["wb joining", "wb up", "wc joining", "removed wb"],
        "no loss, no duplicate"
    );
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]) && revisions[0] > seen,
        "{revisions:?}"
    );

    // Network updates and deletion reach the stream; deletion ends it.
    let mut n = admin
        .get_network(pb::GetNetworkRequest {
            cladnet_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    n.encryption = "never".into();
    admin.update_network(n).await.unwrap();
    let ev = next_event(&mut resumed).await;
    assert!(
        matches!(&ev.event, Some(Event::NetworkUpdated(n)) if n.encryption == "never"),
        "{ev:?}"
    );
    admin
        .delete_network(pb::GetNetworkRequest {
            cladnet_id: net.clone(),
        })
        .await
        .unwrap();
    let ev = next_event(&mut resumed).await;
    assert!(
        matches!(&ev.event, Some(Event::NetworkDeleted(n)) if *n == net),
        "{ev:?}"
    );
}

/// cb-network's REST paths on the same port, proto3-JSON bodies, HTTP status per error.
pub async fn rest_paths(ctl: &TestController) {
    let addr = ctl.addr();
    let (s, body) = http(addr, "GET", "/health", "", "").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"healthy\""), "{body}");
    let (s, _) = http(addr, "GET", "/v1/cladnet", "", "").await;
    assert_eq!(s, 401);
    let (s, body) = http(
        addr,
        "POST",
        "/v1/cladnet",
        ADMIN_TOKEN,
        r#"{"cladnetId":"rest","ipv4AddressSpace":"10.66.0.0/24"}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains(r#""ipv4AddressSpace":"10.66.0.0/24""#),
        "{body}"
    );
    let (s, body) = http(
        addr,
        "POST",
        "/v1/cladnet",
        ADMIN_TOKEN,
        r#"{"cladnetId":"rest2","ipv4AddressSpace":"10.66.0.7/24"}"#,
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("ipv4AddressSpace"), "{body}");
    let (s, body) = http(addr, "GET", "/v1/cladnet", ADMIN_TOKEN, "").await;
    assert_eq!(s, 200);
    assert!(
        body.contains("cladnetSpecifications") && body.contains("\"rest\""),
        "{body}"
    );
    let (s, body) = http(addr, "GET", "/v1/cladnet/rest", ADMIN_TOKEN, "").await;
    assert_eq!(
        (s, body.contains("\"cladnetId\":\"rest\"")),
        (200, true),
        "{body}"
    );
    let (s, body) = http(
        addr,
        "PUT",
        "/v1/cladnet/rest",
        ADMIN_TOKEN,
        r#"{"description":"updated over REST"}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = http(
        addr,
        "POST",
        "/v1/cladnet/availableIPv4AddressSpaces",
        ADMIN_TOKEN,
        r#"{"ipv4Cidrs":["192.168.1.0/24","192.168.1.0/24","10.0.0.0/24"]}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    for name in [
        "recommendedIpv4PrivateAddressSpace",
        "addressSpace10s",
        "addressSpace172s",
        "addressSpace192s",
    ] {
        assert!(body.contains(name), "{name} in {body}");
    }
    let token = join_token(ctl, "rest").await;
    join(ctl, &token, "rest", "r1").await;
    let (s, body) = http(addr, "GET", "/v1/cladnet/rest/peer", ADMIN_TOKEN, "").await;
    assert_eq!(s, 200);
    assert!(body.contains("\"hostId\":\"r1\""), "{body}");
    let (s, body) = http(addr, "GET", "/v1/cladnet/rest/peer/r1", ADMIN_TOKEN, "").await;
    assert_eq!(
        (s, body.contains("\"ip\":\"10.66.0.2\"")),
        (200, true),
        "{body}"
    );
    let (s, _) = http(addr, "GET", "/v1/cladnet/rest/peer/nobody", ADMIN_TOKEN, "").await;
    assert_eq!(s, 404);
    let (s, body) = http(addr, "GET", "/openapi.json", "", "").await;
    assert_eq!(s, 200);
    assert!(
        body.contains("/v1/cladnet/{cladnetId}/peer"),
        "the OpenAPI document lists the peer path"
    );
    let (s, body) = http(addr, "DELETE", "/v1/cladnet/rest", ADMIN_TOKEN, "").await;
    assert_eq!(
        (s, body.contains("\"isSucceeded\":true")),
        (200, true),
        "{body}"
    );
    let (s, _) = http(addr, "GET", "/v1/cladnet/rest/peer", ADMIN_TOKEN, "").await;
    assert_eq!(s, 404, "delete really deletes");
}

/// Commands reach only their target's stream; tests reach every peer and collect results.
pub async fn commands_and_tests(ctl: &TestController) {
    let net = network(ctl, "cmd", "10.67.0.0/24").await;
    let token = join_token(ctl, &net).await;
    let a = join(ctl, &token, &net, "ca").await;
    let b = join(ctl, &token, &net, "cb").await;
    let mut as_a = ctl.agent(&a.session_token).await;
    let mut as_b = ctl.agent(&b.session_token).await;
    let mut stream_a = watch(&mut as_a, &net, "ca", 0).await;
    next_event(&mut stream_a).await; // snapshot
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let cmd = pb::SendCommandRequest {
        cladnet_id: net.clone(),
        host_id: "cb".into(),
        command_type: "DOWN".into(),
        routes: Vec::new(),
    };
    assert_eq!(
        admin.send_command(cmd).await.unwrap().into_inner().host_ids,
        ["cb"]
    );
    let cmd = pb::SendCommandRequest {
        cladnet_id: net.clone(),
        host_id: String::new(),
        command_type: "enable-encryption".into(),
        routes: Vec::new(),
    };
    // Encryption is the network's policy: the command switches it, and every agent hears of
    // it as a network update (a got no `down`: that was b's).
    let resp = admin.send_command(cmd).await.unwrap().into_inner();
    assert_eq!(resp.host_ids, ["ca", "cb"]);
    assert!(resp.message.contains("-> always"), "{}", resp.message);
    let ev = next_event(&mut stream_a).await;
    assert!(
        matches!(&ev.event, Some(Event::NetworkUpdated(n)) if n.encryption == "always"),
        "a got only the policy change: {ev:?}"
    );
    let one = pb::SendCommandRequest {
        cladnet_id: net.clone(),
        host_id: "cb".into(),
        command_type: "disable-encryption".into(),
        routes: Vec::new(),
    };
    let msg = assert_code(
        admin.send_command(one).await,
        Code::InvalidArgument,
        "encryption for one host",
    );
    assert!(
        msg.starts_with("hostId") && msg.contains("--encryption"),
        "{msg}"
    );
    let bad = pb::SendCommandRequest {
        cladnet_id: net.clone(),
        host_id: String::new(),
        command_type: "reboot".into(),
        routes: Vec::new(),
    };
    assert!(
        assert_code(
            admin.send_command(bad).await,
            Code::InvalidArgument,
            "bad command"
        )
        .starts_with("commandType")
    );

    let start = pb::StartConnectivityTestRequest {
        cladnet_id: net.clone(),
        trial_count: 2,
    };
    assert_code(
        admin.start_connectivity_test(start.clone()).await,
        Code::FailedPrecondition,
        "no peer up",
    );
    as_a.report(report(&net, "ca")).await.unwrap();
    as_b.report(report(&net, "cb")).await.unwrap();
    let test = admin
        .start_connectivity_test(start)
        .await
        .expect("start test")
        .into_inner();
    assert_eq!(test.host_ids.len(), 2);
    let ev = loop {
        let ev = next_event(&mut stream_a).await;
        if matches!(ev.event, Some(Event::TestRequested(_))) {
            break ev;
        }
    };
    let Some(Event::TestRequested(t)) = ev.event else {
        unreachable!()
    };
    assert_eq!(t.test_id, test.test_id);
    for (agent, from, to) in [(&mut as_a, "ca", "cb"), (&mut as_b, "cb", "ca")] {
        let result = pb::PairResult {
            source_host_id: from.into(),
            destination_host_id: to.into(),
            avg_rtt_ms: 0.5,
            packets_sent: 2,
            packets_received: 2,
            ..Default::default()
        };
        let r = pb::ReportRequest {
            cladnet_id: net.clone(),
            host_id: from.into(),
            test_id: test.test_id.clone(),
            test_results: vec![result],
            ..Default::default()
        };
        agent.report(r).await.expect("report results");
    }
    let get = pb::GetConnectivityTestRequest {
        cladnet_id: net.clone(),
        test_id: test.test_id.clone(),
    };
    let done = admin.get_connectivity_test(get).await.unwrap().into_inner();
    assert!(done.complete, "{done:?}");
    assert_eq!(done.results.len(), 2);
}

/// An AddExternalPeer request.
fn external(
    net: &str,
    name: &str,
    key: &str,
    endpoint: &str,
    ip: &str,
) -> pb::AddExternalPeerRequest {
    pb::AddExternalPeerRequest {
        cladnet_id: net.into(),
        name: name.into(),
        public_key: key.into(),
        endpoint: endpoint.into(),
        ip: ip.into(),
    }
}

/// `host_id state external` of a peer event, or `removed host_id`.
fn peer_event(ev: pb::WatchEvent) -> String {
    match ev.event {
        Some(Event::PeerUpserted(p)) => {
            format!("{} {} external={}", p.host_id, p.state, p.external)
        }
        Some(Event::PeerRemoved(n)) => format!("removed {n}"),
        other => format!("{other:?}"),
    }
}

/// External WireGuard peers: registration (allocated or requested address), validation and
/// conflicts that write nothing, always-sealed links, the wg-quick config, Watch events, REST,
/// and the `ext-` host ids agents cannot take.
pub async fn external_peers(ctl: &TestController) {
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let net = admin
        .create_network(pb::Network {
            cladnet_id: "ext".into(),
            ipv4_address_space: "10.71.0.0/24".into(),
            encryption: "never".into(),
            ..Default::default()
        })
        .await
        .expect("create network")
        .into_inner()
        .cladnet_id;
    let token = join_token(ctl, &net).await;
    // ea joining, eb up, ec down, ed without a public endpoint: only ea and eb are listed in
    // a client's config.
    let ea = join(ctl, &token, &net, "ea").await;
    let eb = join(ctl, &token, &net, "eb").await;
    let ec = join(ctl, &token, &net, "ec").await;
    let mut no_endpoint = join_request(&net, "ed");
    no_endpoint.public_endpoint = String::new();
    join_signed(&mut ctl.agent(&token).await, no_endpoint)
        .await
        .expect("join ed");
    ctl.agent(&eb.session_token)
        .await
        .report(report(&net, "eb"))
        .await
        .expect("eb up");
    let mut down = report(&net, "ec");
    down.state = "down".into();
    ctl.agent(&ec.session_token)
        .await
        .report(down)
        .await
        .expect("ec down");
    let mut as_a = ctl.agent(&ea.session_token).await;
    let mut stream = watch(&mut as_a, &net, "ea", 0).await;
    assert!(matches!(
        next_event(&mut stream).await.event,
        Some(Event::Snapshot(_))
    ));

    let laptop_key = public_key("laptop-key");
    let laptop = admin
        .add_external_peer(external(
            &net,
            "laptop",
            &laptop_key,
            "203.0.113.50:51820",
            "",
        ))
        .await
        .expect("add external peer")
        .into_inner();
    assert_eq!(
        (
            laptop.host_id.as_str(),
            laptop.host_name.as_str(),
            laptop.state.as_str()
        ),
        ("ext-laptop", "laptop", "up")
    );
    assert!(laptop.external, "{laptop:?}");
    assert_eq!(
        laptop.ip, "10.71.0.6",
        "the lowest free address after four agents"
    );
    assert_eq!(laptop.public_endpoint, "203.0.113.50:51820");
    assert_eq!(laptop.links.len(), 4, "a link to every agent");
    assert!(
        laptop.links.iter().all(|l| l.mode == "sealed"),
        "{:?}",
        laptop.links
    );

    let phone = admin
        .add_external_peer(external(
            &net,
            "phone",
            &public_key("phone-key"),
            "",
            "10.71.0.100",
        ))
        .await
        .expect("add external peer with an address")
        .into_inner();
    assert_eq!(
        (phone.ip.as_str(), phone.public_endpoint.as_str()),
        ("10.71.0.100", "")
    );

    // Seen from an agent, links to external peers are sealed on their endpoint although the
    // network never encrypts.
    let get = |host: &str| pb::GetPeerRequest {
        cladnet_id: net.clone(),
        host_id: host.into(),
    };
    let a = admin.get_peer(get("ea")).await.unwrap().into_inner();
    let link = |host: &str| {
        a.links
            .iter()
            .find(|l| l.host_id == host)
            .unwrap_or_else(|| panic!("a link to {host}: {:?}", a.links))
    };
    assert_eq!(
        (
            link("ext-laptop").mode.as_str(),
            link("ext-laptop").selected_endpoint.as_str()
        ),
        ("sealed", "203.0.113.50:51820")
    );
    assert_eq!(link("ext-phone").mode, "sealed");
    assert_eq!(link("eb").mode, "plain");

    // Invalid fields are named; conflicts are refused; neither writes anything.
    let before = admin
        .list_peers(pb::ListPeersRequest {
            cladnet_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .peers
        .len();
    let fresh = public_key("fresh");
    for (req, code, field) in [
        (
            external(&net, "x1", "short", "", ""),
            Code::InvalidArgument,
            "publicKey",
        ),
        (
            external(&net, "Bad_Name", &fresh, "", ""),
            Code::InvalidArgument,
            "name",
        ),
        (
            external(&net, "", &fresh, "", ""),
            Code::InvalidArgument,
            "name",
        ),
        (
            external(&net, "x1", &fresh, "203.0.113.9", ""),
            Code::InvalidArgument,
            "endpoint",
        ),
        (
            external(&net, "x1", &fresh, "", "10.71.0.300"),
            Code::InvalidArgument,
            "ip",
        ),
        (
            external(&net, "x1", &fresh, "", "10.99.0.5"),
            Code::InvalidArgument,
            "ip",
        ),
        (
            external(&net, "x1", &fresh, "", "10.71.0.1"),
            Code::InvalidArgument,
            "ip",
        ),
        (
            external(&net, "x1", &fresh, "", "10.71.0.255"),
            Code::InvalidArgument,
            "ip",
        ),
        (
            external(&net, "x1", &fresh, "", "10.71.0.2"),
            Code::FailedPrecondition,
            "ip",
        ),
        (
            external(&net, "laptop", &fresh, "", ""),
            Code::AlreadyExists,
            "name",
        ),
        (
            external(&net, "x1", &laptop_key, "", ""),
            Code::AlreadyExists,
            "publicKey",
        ),
        (
            external(&net, "x1", &public_key("ea"), "", ""),
            Code::AlreadyExists,
            "publicKey",
        ),
    ] {
        let what = format!("{} {:?} {:?}", req.name, req.public_key, req.ip);
        let msg = assert_code(admin.add_external_peer(req).await, code, &what);
        assert!(msg.starts_with(field), "{what}: {msg:?} names {field}");
    }
    let after = admin
        .list_peers(pb::ListPeersRequest {
            cladnet_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert_eq!(after.len(), before, "nothing half-written");

    // The client's config lists the reachable agents only, by overlay address.
    let config = admin
        .get_external_peer_config(get("ext-laptop"))
        .await
        .expect("wg config")
        .into_inner()
        .config;
    assert!(config.contains("[Interface]\n# PrivateKey = "), "{config}");
    assert!(config.contains("\nAddress = 10.71.0.6/24\n"), "{config}");
    assert_eq!(config.matches("[Peer]").count(), 2, "ea and eb: {config}");
    let (ip_a, ip_b) = (ea.peer.unwrap().ip, eb.peer.unwrap().ip);
    let section = |node: &str, ip: &str| {
        format!(
            "[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = {ip}/32\nPersistentKeepalive = 25\n",
            public_key(node),
            endpoint(node)
        )
    };
    let (at_a, at_b) = (
        config.find(&section("ea", &ip_a)),
        config.find(&section("eb", &ip_b)),
    );
    assert!(
        matches!((at_a, at_b), (Some(x), Some(y)) if x < y),
        "{config}"
    );
    for absent in [
        public_key("ec"),
        public_key("ed"),
        public_key("phone-key"),
        laptop_key.clone(),
    ] {
        assert!(!config.contains(&absent), "{absent} listed: {config}");
    }
    let msg = assert_code(
        admin.get_external_peer_config(get("ea")).await,
        Code::FailedPrecondition,
        "config of an agent",
    );
    assert!(msg.starts_with("hostId"), "{msg}");
    assert_code(
        admin.get_external_peer_config(get("ext-nobody")).await,
        Code::NotFound,
        "config of nobody",
    );

    // REST.
    let addr = ctl.addr();
    let body = format!(
        r#"{{"name":"rest-client","publicKey":"{}"}}"#,
        public_key("rest-key")
    );
    let (s, body) = http(
        addr,
        "POST",
        "/v1/cladnet/ext/externalPeer",
        ADMIN_TOKEN,
        &body,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains(r#""hostId":"ext-rest-client""#) && body.contains(r#""external":true"#),
        "{body}"
    );
    let (s, body) = http(
        addr,
        "POST",
        "/v1/cladnet/ext/externalPeer",
        ADMIN_TOKEN,
        r#"{"name":"r2","publicKey":"AAAA"}"#,
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("publicKey"), "{body}");
    let (s, body) = http(
        addr,
        "GET",
        "/v1/cladnet/ext/peer/ext-rest-client/wireguardConfig",
        ADMIN_TOKEN,
        "",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let config: pb::ExternalPeerConfig = serde_json::from_str(&body).expect("ExternalPeerConfig");
    assert!(config.config.contains("Address = 10.71.0.7/24"), "{body}");
    let (s, _) = http(
        addr,
        "GET",
        "/v1/cladnet/ext/peer/ea/wireguardConfig",
        ADMIN_TOKEN,
        "",
    )
    .await;
    assert_eq!(s, 412);
    let (s, _) = http(addr, "POST", "/v1/cladnet/ext/externalPeer", "", "{}").await;
    assert_eq!(s, 401);

    // Agents cannot take an external peer's host id.
    let msg = assert_code(
        join_signed(
            &mut ctl.agent(&token).await,
            join_request(&net, "ext-laptop"),
        )
        .await,
        Code::InvalidArgument,
        "join as ext-",
    );
    assert!(msg.starts_with("hostId"), "{msg}");

    // Commands go to agents only.
    let sent = admin
        .send_command(pb::SendCommandRequest {
            cladnet_id: net.clone(),
            host_id: "ext-phone".into(),
            command_type: "down".into(),
            routes: Vec::new(),
        })
        .await;
    assert_code(
        sent,
        Code::FailedPrecondition,
        "command to an external peer",
    );

    // DeletePeer removes it; the agent's stream saw each change, in order, and nothing else.
    admin
        .delete_peer(get("ext-laptop"))
        .await
        .expect("delete external peer");
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("removed ext-laptop") {
        seen.push(peer_event(next_event(&mut stream).await));
    }
    assert_eq!(
        seen,
        [
            "ext-laptop up external=true",
            "ext-phone up external=true",
            "ext-rest-client up external=true",
            "removed ext-laptop",
        ]
    );
    let mut snapshot = watch(&mut as_a, &net, "ea", 0).await;
    let Some(Event::Snapshot(snap)) = next_event(&mut snapshot).await.event else {
        panic!("a snapshot first")
    };
    let externals: Vec<_> = snap
        .peers
        .iter()
        .filter(|p| p.external)
        .map(|p| p.host_id.as_str())
        .collect();
    assert_eq!(externals, ["ext-phone", "ext-rest-client"]);
    let peers = admin
        .list_peers(pb::ListPeersRequest {
            cladnet_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert!(!peers.iter().any(|p| p.host_id == "ext-laptop"));
}

/// A host id is bound to its first key, a key to one host id, and a Join proves possession of
/// the private key it registers (docs/security.md, "Join and node identity").
pub async fn join_identity(ctl: &TestController) {
    let net = network(ctl, "identity", "10.69.0.0/24").await;
    let token = join_token(ctl, &net).await;
    let mut agent = ctl.agent(&token).await;
    let first = join(ctl, &token, &net, "victim").await.peer.unwrap();

    // Takeover: same host id, the attacker's own key (proven).
    let mut takeover = join_request(&net, "victim");
    takeover.public_key = public_key("attacker");
    let req = prove_with(&mut agent, takeover, &private_key("attacker")).await;
    let msg = assert_code(agent.join(req).await, Code::PermissionDenied, "takeover");
    assert!(msg.contains("hostId"), "{msg}");

    // Squatting the victim's key without its private key: the proof fails.
    let mut squat = join_request(&net, "squatter");
    squat.public_key = public_key("victim");
    let req = prove_with(&mut agent, squat.clone(), &private_key("squatter")).await;
    let msg = assert_code(
        agent.join(req).await,
        Code::PermissionDenied,
        "unproven key",
    );
    assert!(msg.contains("proof"), "{msg}");
    // ... and even with it, a key belongs to one host id.
    let req = prove_with(&mut agent, squat, &private_key("victim")).await;
    let msg = assert_code(agent.join(req).await, Code::PermissionDenied, "key squat");
    assert!(msg.contains("publicKey"), "{msg}");

    // No proof, a proof moved to another host id, a forged nonce.
    let msg = assert_code(
        agent.join(join_request(&net, "plain")).await,
        Code::InvalidArgument,
        "no proof",
    );
    assert!(msg.starts_with("nonce"), "{msg}");
    let mut moved = prove_with(&mut agent, join_request(&net, "x1"), &private_key("x1")).await;
    moved.host_id = "x2".into();
    moved.public_key = public_key("x1");
    let msg = assert_code(
        agent.join(moved).await,
        Code::PermissionDenied,
        "moved proof",
    );
    assert!(msg.contains("proof"), "{msg}");
    let mut forged = prove_with(&mut agent, join_request(&net, "x3"), &private_key("x3")).await;
    let mut nonce = base64::engine::general_purpose::STANDARD
        .decode(&forged.nonce)
        .unwrap();
    nonce[0] ^= 1;
    forged.nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
    let msg = assert_code(
        agent.join(forged).await,
        Code::PermissionDenied,
        "forged nonce",
    );
    assert!(msg.starts_with("permission denied: nonce"), "{msg}");

    // The victim itself re-joins: same address; the attempts changed nothing.
    let again = join(ctl, &token, &net, "victim").await.peer.unwrap();
    assert_eq!(again.ip, first.ip);
    assert_eq!(again.public_key, public_key("victim"));

    // The admin path: delete the peer, then the host joins with its new key, and the old key
    // is free again.
    ctl.admin(ADMIN_TOKEN)
        .await
        .delete_peer(pb::GetPeerRequest {
            cladnet_id: net.clone(),
            host_id: "victim".into(),
        })
        .await
        .expect("delete victim");
    let mut rekeyed = join_request(&net, "victim");
    rekeyed.public_key = public_key("victim-new");
    let req = prove_with(&mut agent, rekeyed, &private_key("victim-new")).await;
    let peer = agent
        .join(req)
        .await
        .expect("join after delete")
        .into_inner();
    assert_eq!(peer.peer.unwrap().public_key, public_key("victim-new"));
    let mut reuse = join_request(&net, "other");
    reuse.public_key = public_key("victim");
    let req = prove_with(&mut agent, reuse, &private_key("victim")).await;
    agent
        .join(req)
        .await
        .expect("a freed key can be used again");
}

/// Waits for `stream` to end with an error, skipping events; returns its code and how long it
/// took.
async fn stream_end(stream: &mut tonic::Streaming<pb::WatchEvent>) -> (Code, Duration) {
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(s))) => return (s.code(), started.elapsed()),
            Ok(None) => panic!("stream ended without an error"),
            Err(_) => panic!("stream still open after 5 s"),
        }
    }
}

/// A re-join or a deleted peer ends that node's open Watch streams (shared and resumed) as
/// Unauthenticated within a second, and its old session no longer reports; other nodes'
/// streams go on. `fromRevision` beyond the store is refused, naming the field.
pub async fn sessions_end_with_credentials(ctl: &TestController) {
    let net = network(ctl, "revoke", "10.72.0.0/24").await;
    let token = join_token(ctl, &net).await;
    let a = join(ctl, &token, &net, "ra").await;
    let b = join(ctl, &token, &net, "rb").await;
    let mut as_a = ctl.agent(&a.session_token).await;
    let mut stream = watch(&mut as_a, &net, "ra", 0).await;
    let snap = next_event(&mut stream).await;
    let mut resumed = watch(&mut as_a, &net, "ra", snap.revision).await;
    let mut as_b = ctl.agent(&b.session_token).await;
    let mut b_stream = watch(&mut as_b, &net, "rb", 0).await;
    next_event(&mut b_stream).await;

    // ra joins again (a reinstalled agent, or someone holding its key): the old session's
    // streams end.
    let again = join(ctl, &token, &net, "ra").await;
    for s in [&mut stream, &mut resumed] {
        let (code, took) = stream_end(s).await;
        assert_eq!(code, Code::Unauthenticated);
        assert!(took < Duration::from_secs(1), "stream ended after {took:?}");
    }
    assert_code(
        as_a.report(report(&net, "ra")).await,
        Code::Unauthenticated,
        "old session after re-join",
    );
    // rb's stream is untouched: it sees ra's new record.
    let ev = next_event(&mut b_stream).await;
    assert!(
        matches!(&ev.event, Some(Event::PeerUpserted(p)) if p.host_id == "ra"),
        "{ev:?}"
    );

    // A stream resumed from before two re-joins replays the older session change, which does
    // not revoke the newest session.
    let third = join(ctl, &token, &net, "ra").await;
    drop(again);
    let mut as_a = ctl.agent(&third.session_token).await;
    let mut replay = watch(&mut as_a, &net, "ra", snap.revision).await;
    for _ in 0..2 {
        let ev = next_event(&mut replay).await;
        assert!(
            matches!(&ev.event, Some(Event::PeerUpserted(p)) if p.host_id == "ra"),
            "{ev:?}"
        );
    }
    drop(replay);

    // Deleting the peer ends the new session's streams too.
    let mut stream = watch(&mut as_a, &net, "ra", 0).await;
    let snap = next_event(&mut stream).await;
    let mut resumed = watch(&mut as_a, &net, "ra", snap.revision).await;
    ctl.admin(ADMIN_TOKEN)
        .await
        .delete_peer(pb::GetPeerRequest {
            cladnet_id: net.clone(),
            host_id: "ra".into(),
        })
        .await
        .expect("delete ra");
    for s in [&mut stream, &mut resumed] {
        let (code, took) = stream_end(s).await;
        assert_eq!(code, Code::Unauthenticated);
        assert!(took < Duration::from_secs(1), "stream ended after {took:?}");
    }

    // fromRevision past the store, up to i64::MAX.
    for from in [snap.revision + 1_000_000, i64::MAX] {
        let req = pb::WatchRequest {
            cladnet_id: net.clone(),
            host_id: "rb".into(),
            from_revision: from,
            batches: false,
        };
        let msg = assert_code(
            as_b.watch(req).await.map(|_| ()),
            Code::InvalidArgument,
            "fromRevision",
        );
        assert!(msg.starts_with("fromRevision"), "{msg}");
    }
}

/// Two controllers on one store, `joins` concurrent joins spread over both (each controller's
/// Join works from its cached view of the network and the allocations; the other's joins make
/// its transactions fail and the cache reload, see cladnet-controller/src/service/alloc.rs):
/// every join succeeds, no address is handed out twice, and both list the same peers.
pub async fn two_controllers_concurrent_joins(
    one: &TestController,
    two: &TestController,
    joins: usize,
) {
    let net = network(one, "shared", "10.90.0.0/22").await;
    let token = join_token(two, &net).await;

    let mut tasks = Vec::new();
    for i in 0..joins {
        let ctl = if i % 2 == 0 { one } else { two };
        let mut agent = ctl.agent(&token).await;
        let net = net.clone();
        tasks.push(tokio::spawn(async move {
            join_signed(&mut agent, join_request(&net, &format!("node-{i}")))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut ips = HashSet::new();
    for t in tasks {
        let r = t.await.expect("join task").expect("every join succeeds");
        assert!(ips.insert(r.peer.unwrap().ip), "duplicate overlay address");
    }
    assert_eq!(ips.len(), joins);
    // Both controllers see the same peers with the same addresses.
    for ctl in [one, two] {
        // 500 peers, each listed with its links to the 499 others: about 21 MB.
        let peers = ctl
            .admin(ADMIN_TOKEN)
            .await
            .max_decoding_message_size(64 << 20)
            .list_peers(pb::ListPeersRequest {
                cladnet_id: net.clone(),
            })
            .await;
        let listed: HashSet<String> = peers
            .unwrap()
            .into_inner()
            .peers
            .into_iter()
            .map(|p| p.ip)
            .collect();
        assert_eq!(listed, ips);
    }
}
