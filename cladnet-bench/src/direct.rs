//! `--store etcd-direct`: the seed's design (cb-network) as the side-by-side anchor of the
//! controller path. No controller runs; the simulated agents are the same, but
//!
//! * a Join is one etcd transaction that creates the agent's peer record (create-if-absent,
//!   as an allocation would be guarded) under [`PREFIX`];
//! * each agent then reads the network's peers (`range`) and keeps **its own etcd watch** on
//!   them from the next revision, decoding every record itself;
//! * a change (the Report of a new public endpoint) is a put of the agent's updated record.
//!
//! Clients share connections as the controller path's agents do (one per
//! `agents_per_channel` agents); every watch is its own etcd watch stream on them. The records
//! are JSON of the size and shape of the controller's peer records, so the end-of-run table
//! check ([`crate::check`]) reads them like the controller's.

use std::{
    net::Ipv4Addr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use cladnet_store::{
    Compare, Store, StoreUrl, Txn, TxnOp, WatchEvent,
    etcd::{EtcdOptions, EtcdStore},
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tonic::metadata::AsciiMetadataValue;

use crate::{
    control::{
        ControlOptions, Fanout, NETWORK_ID, Observation, Shared, change_endpoint, changer, host_id,
        join_endpoint, offset, private_key,
    },
    error::{BenchError, Result},
};

/// Where the peer records live (under the network's name, as the table check expects).
pub(crate) const PREFIX: &str = "/direct/bench/peers/";

const _: () = assert!(matches!(NETWORK_ID.as_bytes(), b"bench"));

/// The simulated agents' etcd client timeouts: unary requests and the HTTP/2 keep-alive
/// ping. The store's defaults (10 s each) suit one client per host; here 50 agents share a
/// connection that carries 50 watch streams, in a load generator that shares 2 cores with
/// etcd, so a Join's transaction or a ping's answer can wait behind megabytes of watch events
/// the process has not read yet. With the defaults, 3 of 4 runs at 5000 agents failed on a
/// Join ("Timeout expired" or the connection closed: "broken pipe").
const DIRECT_TIMEOUT: Duration = Duration::from_secs(60);

/// `count` etcd clients (each its own connection).
pub(crate) async fn connect(url: &str, count: usize) -> Result<Vec<Arc<dyn Store>>> {
    let parsed: StoreUrl = url
        .parse()
        .map_err(|e| BenchError::Options(format!("etcd URL {url}: {e}")))?;
    let StoreUrl::Etcd { endpoints } = &parsed else {
        return Err(BenchError::Options(format!("{url} is not an etcd URL")));
    };
    let options = EtcdOptions {
        request_timeout: DIRECT_TIMEOUT,
        keep_alive: DIRECT_TIMEOUT,
        ..EtcdOptions::default()
    };
    let mut clients: Vec<Arc<dyn Store>> = Vec::with_capacity(count);
    for _ in 0..count {
        let store = EtcdStore::connect(endpoints, options.clone())
            .await
            .map_err(|e| BenchError::Check(format!("connecting to etcd at {url}: {e}")))?;
        clients.push(Arc::new(store));
    }
    Ok(clients)
}

/// Agent `i`'s record with public endpoint `endpoint`: the fields of a controller peer record.
fn record(i: usize, endpoint: &str) -> Vec<u8> {
    use base64::Engine as _;
    let key = cladnet_proto::join::public_key(&private_key(i));
    let private = offset(Ipv4Addr::new(172, 16, 0, 10), i);
    let value = serde_json::json!({
        "schema": 1,
        "node_id": host_id(i),
        "host_name": host_id(i),
        "overlay_ip": offset(Ipv4Addr::new(10, 64, 0, 1), i).to_string(),
        "state": "up",
        "public_key": base64::engine::general_purpose::STANDARD.encode(key),
        "public_endpoint": endpoint,
        "private_endpoint": format!("{private}:8055"),
        "host_private_cidr": format!("{private}/12"),
        "interfaces": [{"name": "eth0", "ipv4_cidrs": [format!("{private}/12")], "mtu": 1500}],
        "capabilities": ["userspace"],
        "site": {"provider": "bench", "region": format!("region-{}", i % 4), "zone": ""},
        "dataplane": "",
        "dataplane_reason": "",
        "joined_at": 0,
        "updated_at": 0,
        "external": false,
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The fields an agent keeps.
#[derive(Deserialize)]
struct Peer {
    node_id: String,
    public_endpoint: Option<String>,
}

fn decode(value: &[u8]) -> std::result::Result<Peer, String> {
    serde_json::from_slice(value).map_err(|e| format!("a peer record: {e}"))
}

/// One simulated agent on its own etcd watch; reports a failure to the coordinator and ends.
pub(crate) async fn agent(
    shared: Arc<Shared>,
    i: usize,
    store: Arc<dyn Store>,
    tx: mpsc::UnboundedSender<Observation>,
) {
    if let Err(message) = agent_run(&shared, i, &*store, &tx).await {
        let _ = tx.send(Observation::Failed { agent: i, message });
    }
}

async fn agent_run(
    shared: &Shared,
    i: usize,
    store: &dyn Store,
    tx: &mpsc::UnboundedSender<Observation>,
) -> std::result::Result<(), String> {
    let key = format!("{PREFIX}{}", host_id(i));
    let permit = shared
        .join_gate
        .acquire()
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let joined = store
        .txn(
            Txn::new()
                .when([Compare::absent(&key)])
                .and_then([TxnOp::put(&key, record(i, &join_endpoint(i)))]),
        )
        .await
        .map_err(|e| format!("join: {e}"))?;
    if !joined.succeeded {
        return Err(format!("join: {key} exists already"));
    }
    let at = Instant::now();
    drop(permit);
    let _ = tx.send(Observation::Joined {
        agent: i,
        at,
        latency: at - started,
        session: AsciiMetadataValue::from_static("direct"),
    });
    let snapshot = store
        .range(PREFIX)
        .await
        .map_err(|e| format!("range: {e}"))?;
    let mut stream = store
        .watch(PREFIX, Some(snapshot.revision + 1))
        .await
        .map_err(|e| format!("watch: {e}"))?;
    let _ = tx.send(Observation::Watching { at: Instant::now() });
    shared.snapshots.fetch_add(1, Ordering::Relaxed);
    shared
        .snapshot_peers
        .fetch_add(snapshot.kvs.len() as u64, Ordering::Relaxed);
    let peers = snapshot
        .kvs
        .iter()
        .map(|kv| decode(&kv.value).map(|p| (p.node_id, p.public_endpoint.unwrap_or_default())))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut converged = false;
    let mut held = shared.tables.with(i, |t| {
        t.clear();
        for (node, endpoint) in peers {
            t.insert(node, endpoint);
        }
        t.len()
    });
    loop {
        if !converged && held == shared.agents {
            converged = true;
            let _ = tx.send(Observation::Converged { at: Instant::now() });
        }
        let event = match stream.next().await {
            Some(Ok(event)) => event,
            Some(Err(e)) => return Err(format!("watch: {e}")),
            None => return Err("the etcd watch ended".into()),
        };
        let at = Instant::now();
        match event {
            WatchEvent::Put(kv) => {
                shared.peer_upserted.fetch_add(1, Ordering::Relaxed);
                let peer = decode(&kv.value)?;
                let endpoint = peer.public_endpoint.unwrap_or_default();
                if let Some(&change) = shared.changes.get(&endpoint) {
                    let _ = tx.send(Observation::Received {
                        agent: i,
                        change,
                        at,
                    });
                }
                held = shared.tables.with(i, |t| {
                    t.insert(peer.node_id, endpoint);
                    t.len()
                });
            }
            WatchEvent::Delete { key, .. } => {
                shared.other.fetch_add(1, Ordering::Relaxed);
                let node = key.rsplit('/').next().unwrap_or_default().to_owned();
                held = shared.tables.with(i, |t| {
                    t.remove(&node);
                    t.len()
                });
            }
        }
    }
}

/// Makes `fanout.changes` changes as the controller path does, each a put of one agent's
/// record with a new public endpoint.
pub(crate) async fn make_changes(
    opts: &ControlOptions,
    store: &Arc<dyn Store>,
    fanout: &mut Fanout,
) -> Result<()> {
    let n = opts.agents;
    let mut ticker = tokio::time::interval(opts.change_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for k in 0..fanout.changes {
        ticker.tick().await;
        let who = changer(k, n, fanout.changes);
        let key = format!("{PREFIX}{}", host_id(who));
        let start = Instant::now();
        fanout.sent_at.push(start);
        store
            .put(&key, record(who, &change_endpoint(k)), None)
            .await
            .map_err(|e| BenchError::Check(format!("change {k} by agent {who}: {e}")))?;
        fanout.report_latency.push(start.elapsed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{PREFIX, record};
    use crate::check::peers_from_records;

    #[test]
    fn records_read_as_peer_records() {
        let a = record(3, "198.18.0.4:8055");
        let key = format!("{PREFIX}bench-00003");
        let found = peers_from_records("bench", [(key.as_str(), a.as_slice())]);
        assert_eq!(found.peers["bench-00003"], "198.18.0.4:8055");
        assert!(a.len() > 300, "about the size of a controller record");
    }
}
