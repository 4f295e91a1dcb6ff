//! A rogue agent for the hostile-agent tests (tests/rogue_agent.rs): a client that holds a
//! valid join token and tries what a compromised VM could. Each run makes one attempt and
//! prints one JSON line: `{"code": "<gRPC code>", "message": ..., ...}`.
//!
//! ```text
//! cladnet-rogue URL NET TOKEN join HOST [key=SEED] [register=SEED|pubkey=B64] [keyfile=PATH]
//!                                       [endpoint=IP:PORT] [port=N]
//! cladnet-rogue URL NET SESSION report HOST [endpoint=IP:PORT] [test=ID source=H dest=H]
//!                                           [interfaces=N] [caps=A,B] [hostname=TEXT]
//!                                           [pad=BYTES]
//! cladnet-rogue URL NET SESSION watch HOST secs=N
//! ```
//!
//! `key` is the seed of the private key the Join proves (default: HOST), `register` the seed of
//! the public key it registers (default: `key`) or `pubkey` that key in base64, `keyfile` a base64 private key file (an
//! agent's `private.key`) to use instead of a seed. `watch` holds a stream open and prints how
//! it ended and when (`ended_ms`, Unix milliseconds).

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use base64::Engine as _;
use cladnet_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use cladnet_tests::{
    api_checks::{private_key, prove_with},
    controller::{AgentClient, Bearer},
};
use futures::StreamExt as _;
use serde_json::json;

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn outcome<T>(r: &Result<T, tonic::Status>) -> serde_json::Value {
    match r {
        Ok(_) => json!({"code": "Ok", "message": ""}),
        Err(s) => json!({"code": format!("{:?}", s.code()), "message": s.message()}),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: cladnet-rogue URL NET TOKEN join|report|watch HOST [k=v ...]");
        return ExitCode::from(2);
    }
    let (url, net, token, cmd, host) = (&args[0], &args[1], &args[2], &args[3], &args[4]);
    let opts: BTreeMap<&str, &str> = args[5..].iter().filter_map(|a| a.split_once('=')).collect();
    let channel = match tonic::transport::Endpoint::from_shared(url.clone())
        .expect("URL")
        .connect()
        .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connecting to {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut agent: AgentClient = AgentServiceClient::with_interceptor(channel, Bearer::new(token));
    let out = match cmd.as_str() {
        "join" => join(&mut agent, net, host, &opts).await,
        "report" => report(&mut agent, net, host, &opts).await,
        "watch" => watch(&mut agent, net, host, &opts).await,
        other => {
            eprintln!("unknown command {other:?}");
            return ExitCode::from(2);
        }
    };
    println!("{out}");
    ExitCode::SUCCESS
}

async fn join(
    agent: &mut AgentClient,
    net: &str,
    host: &str,
    opts: &BTreeMap<&str, &str>,
) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let private: [u8; 32] = match opts.get("keyfile") {
        Some(path) => {
            let text = std::fs::read_to_string(path).expect("key file");
            b64.decode(text.trim())
                .expect("base64 key")
                .try_into()
                .expect("32 bytes")
        }
        None => private_key(opts.get("key").copied().unwrap_or(host)),
    };
    let register = match (opts.get("pubkey"), opts.get("register")) {
        (Some(key), _) => b64
            .decode(key)
            .expect("base64 pubkey")
            .try_into()
            .expect("32 bytes"),
        (None, Some(seed)) => cladnet_proto::join::public_key(&private_key(seed)),
        (None, None) => cladnet_proto::join::public_key(&private),
    };
    let port: u32 = opts.get("port").map_or(51999, |p| p.parse().expect("port"));
    let req = pb::JoinRequest {
        cladnet_id: net.into(),
        host_id: host.into(),
        public_key: b64.encode(register),
        listen_port: port,
        public_endpoint: opts.get("endpoint").copied().unwrap_or("").into(),
        facts: Some(pb::HostFacts {
            host_name: host.into(),
            capabilities: vec!["userspace".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = prove_with(agent, req, &private).await;
    let r = agent.join(req).await;
    let mut out = outcome(&r);
    if let Ok(resp) = r {
        let resp = resp.into_inner();
        out["session"] = json!(resp.session_token);
        out["ip"] = json!(resp.peer.map(|p| p.ip).unwrap_or_default());
    }
    out
}

async fn report(
    agent: &mut AgentClient,
    net: &str,
    host: &str,
    opts: &BTreeMap<&str, &str>,
) -> serde_json::Value {
    let mut req = pb::ReportRequest {
        cladnet_id: net.into(),
        host_id: host.into(),
        public_endpoint: opts.get("endpoint").copied().unwrap_or("").into(),
        ..Default::default()
    };
    if let Some(test) = opts.get("test") {
        req.test_id = (*test).into();
        req.test_results = vec![pb::PairResult {
            source_host_id: opts.get("source").copied().unwrap_or(host).into(),
            destination_host_id: opts.get("dest").copied().unwrap_or("").into(),
            min_rtt_ms: 0.1,
            avg_rtt_ms: 0.1,
            max_rtt_ms: 0.1,
            packets_sent: 3,
            packets_received: 3,
            ..Default::default()
        }];
    }
    let interfaces: usize = opts.get("interfaces").map_or(0, |n| n.parse().expect("n"));
    let caps = opts.get("caps");
    let hostname = opts.get("hostname");
    if interfaces > 0 || caps.is_some() || hostname.is_some() {
        req.facts = Some(pb::HostFacts {
            host_name: hostname.copied().unwrap_or("").into(),
            interfaces: (0..interfaces)
                .map(|i| pb::NetworkInterface {
                    name: format!("eth{i}"),
                    ipv4_cidrs: vec![format!("192.168.{}.{}/24", i / 250, i % 250 + 1)],
                    mtu: 1500,
                })
                .collect(),
            capabilities: caps.map_or(Vec::new(), |c| c.split(',').map(String::from).collect()),
        });
    }
    if let Some(pad) = opts.get("pad") {
        req.dataplane_reason = "x".repeat(pad.parse().expect("bytes"));
        req.dataplane = "userspace".into();
    }
    outcome(&agent.report(req).await)
}

async fn watch(
    agent: &mut AgentClient,
    net: &str,
    host: &str,
    opts: &BTreeMap<&str, &str>,
) -> serde_json::Value {
    let secs: u64 = opts.get("secs").map_or(10, |s| s.parse().expect("secs"));
    let req = pb::WatchRequest {
        cladnet_id: net.into(),
        host_id: host.into(),
        from_revision: 0,
        batches: false,
    };
    let mut stream = match agent.watch(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return outcome::<()>(&Err(s)),
    };
    // Ready: the test acts once it sees this line.
    println!("{}", json!({"watching": true}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(s))) => {
                let mut out = outcome::<()>(&Err(s));
                out["ended_ms"] = json!(now_ms().to_string());
                return out;
            }
            Ok(None) => {
                return json!({"code": "Ended", "message": "", "ended_ms": now_ms().to_string()});
            }
            Err(_) => return json!({"code": "StillOpen", "message": ""}),
        }
    }
}
