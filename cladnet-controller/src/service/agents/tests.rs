//! The Join path's store traffic: with the network's watch hub running and its IPAM cache
//! warm, a Join is one read transaction and one write transaction.

use std::sync::Arc;

use base64::Engine as _;
use cladnet_proto::v1 as pb;

use crate::{auth::AdminAuth, service::Controller};

const NET: &str = "net";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Store operations so far, by operation (the controller's `store_latency` counts).
fn store_ops(ctl: &Controller) -> std::collections::BTreeMap<String, u64> {
    ctl.metrics()
        .encode()
        .lines()
        .filter_map(|line| {
            let rest = line.split_once("store_latency_seconds_count{op=\"")?.1;
            let (op, count) = rest.split_once("\"} ")?;
            Some((op.to_owned(), count.trim().parse().ok()?))
        })
        .collect()
}

/// Joins node `i` with a valid proof; returns its session token.
async fn join(ctl: &Controller, token: &str, i: u8) -> String {
    let private = [i + 1; 32];
    let public_key = b64().encode(cladnet_proto::join::public_key(&private));
    let challenge = ctl.join_challenge().await.unwrap();
    let controller: [u8; 32] = b64()
        .decode(&challenge.controller_public_key)
        .unwrap()
        .try_into()
        .unwrap();
    let nonce = b64().decode(&challenge.nonce).unwrap();
    let host_id = format!("n{i}");
    let proof =
        cladnet_proto::join::proof(&private, &controller, &nonce, NET, &host_id, &public_key)
            .unwrap();
    let req = pb::JoinRequest {
        cladnet_id: NET.into(),
        host_id,
        public_key,
        public_endpoint: format!("198.18.0.{i}:8055"),
        listen_port: 8055,
        nonce: challenge.nonce,
        proof: b64().encode(proof),
        ..Default::default()
    };
    ctl.join(token, req).await.unwrap().session_token
}

#[tokio::test]
async fn a_join_is_one_read_and_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().join("s.redb").display());
    let store = cladnet_store::connect(&url.parse().unwrap()).await.unwrap();
    let ctl = Arc::new(Controller::new(
        store,
        AdminAuth::new("0123456789abcdef").unwrap(),
    ));
    ctl.create_network(pb::Network {
        cladnet_id: NET.into(),
        ipv4_address_space: "10.9.0.0/24".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let token = ctl
        .create_join_token(pb::CreateJoinTokenRequest {
            cladnet_id: NET.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .token;
    // The first Join fills the IPAM cache; its Watch starts the network's hub.
    let session = join(&ctl, &token, 1).await;
    let watch = pb::WatchRequest {
        cladnet_id: NET.into(),
        host_id: "n1".into(),
        ..Default::default()
    };
    let _stream = ctl.watch(&session, watch).await.unwrap();

    let before = store_ops(&ctl);
    join(&ctl, &token, 2).await;
    let after = store_ops(&ctl);
    let delta: Vec<_> = after
        .iter()
        .map(|(op, n)| (op.as_str(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(delta, [("txn", 2)], "store operations of one Join");
}
