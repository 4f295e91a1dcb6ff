//! The agent side: Join (address allocation), Report, and session checks.

use cladnet_proto::v1 as pb;
use std::collections::HashMap;

use cladnet_store::{Compare, CompareOp, KeyValue, Revision, Txn, TxnOp, TxnOpResult};
use tracing::info;

use super::{Controller, tokens::token_use};
use crate::{
    auth::{self, new_session_token, sha256_hex},
    error::{ControllerError, Result},
    keys,
    model::{
        self, EXTERNAL_HOST_PREFIX, InterfaceRecord, NetworkRecord, PairRecord, PeerRecord,
        PeerState, ResultRecord, SCHEMA, SiteRecord, TestRecord, now_unix,
    },
    validate,
};

/// The records a Join checks and compares against: read from the store, or taken from this
/// controller's memory (the join cache and the watch hub's table), which the Join's
/// transaction checks with a compare on each.
struct JoinRead {
    /// The network record and its mod revision.
    network: (NetworkRecord, Revision),
    /// The node's peer record and its mod revision, if it has one.
    peer: Option<(PeerRecord, Revision)>,
    /// The public-key index entry's value: which node holds the key, if any.
    holder: Option<Vec<u8>>,
    /// The join token record.
    token: Option<KeyValue>,
    /// Taken from memory: a refusal is checked against a fresh read first.
    cached: bool,
}

/// Network and join-token records as this controller last read or wrote them, keyed by store
/// key. A Join uses them without reading and compares their mod revisions in its transaction:
/// a record changed elsewhere fails the transaction, whose failure branch reads it afresh.
#[derive(Debug, Default)]
pub(super) struct JoinCache(std::sync::Mutex<HashMap<String, KeyValue>>);

impl JoinCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyValue>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        self.lock().get(key).cloned()
    }

    /// Records what the store holds at `key` (`None`: nothing).
    fn set(&self, key: &str, kv: Option<&KeyValue>) {
        let mut map = self.lock();
        match kv {
            Some(kv) => {
                map.insert(key.to_owned(), kv.clone());
            }
            None => {
                map.remove(key);
            }
        }
    }
}

impl Controller {
    /// Checks the session token of node `node` in network `net` (its hash is in the peer
    /// record); returns the record's store revision (only later changes of the record can
    /// revoke the session).
    pub async fn check_session(&self, net: &str, node: &str, bearer: &str) -> Result<i64> {
        if !bearer.starts_with(auth::SESSION_PREFIX) {
            return Err(ControllerError::PermissionDenied(
                "Watch and Report need the session token Join returned".into(),
            ));
        }
        let stored = self.store.get(&keys::peer(net, node)).await?;
        let stored = match stored {
            Some(kv) => Some((model::decode::<PeerRecord>(&kv)?.session_sha256, kv)),
            None => None,
        };
        match stored {
            Some((Some(hash), kv)) if hash == sha256_hex(bearer) => Ok(kv.mod_revision),
            Some((Some(_), _)) => Err(ControllerError::Unauthenticated(format!(
                "invalid session token for peer {node:?}; join again"
            ))),
            Some((None, _)) | None => Err(ControllerError::Unauthenticated(format!(
                "peer {node:?} has no session in network {net:?}; join again"
            ))),
        }
    }

    /// Joins (or re-joins) a peer: validates its facts, allocates its overlay address (the
    /// same one again for a known node id), writes the peer record and a new session.
    pub async fn join(&self, bearer: &str, req: pb::JoinRequest) -> Result<pb::JoinResponse> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        validate::host_id("hostId", &req.host_id)?;
        if req.host_id.starts_with(EXTERNAL_HOST_PREFIX) {
            return Err(ControllerError::invalid(
                "hostId",
                format!(
                    "{:?}: ids starting with {EXTERNAL_HOST_PREFIX:?} are reserved for external WireGuard peers",
                    req.host_id
                ),
            ));
        }
        validate::public_key("publicKey", &req.public_key)?;
        let public_endpoint = validate::endpoint("publicEndpoint", &req.public_endpoint)?;
        if req.listen_port == 0 || req.listen_port > u32::from(u16::MAX) {
            return Err(ControllerError::invalid("listenPort", "must be 1..=65535"));
        }
        let facts = req.facts.clone().unwrap_or_default();
        validate::text("facts.hostName", &facts.host_name, 253)?;
        validate::capabilities("facts.capabilities", &facts.capabilities)?;
        let interfaces = interfaces(&facts)?;
        let host_private_cidr = match req.host_private_ipv4_cidr.as_str() {
            "" => None,
            s => Some(validate::reported_cidr("hostPrivateIpv4Cidr", s)?),
        };
        let private_endpoint = host_private_cidr
            .map(|c| std::net::SocketAddrV4::new(c.addr(), req.listen_port as u16));
        if let Some(e) = private_endpoint {
            validate::unicast("hostPrivateIpv4Cidr", e)?;
        }
        let site = SiteRecord::from_proto(&req.details.clone().unwrap_or_default());
        validate::site("details", &site)?;
        let net = req.cladnet_id.as_str();
        let node = req.host_id.as_str();
        let key_index = keys::pubkey(net, &req.public_key);
        let (token_id, _) = auth::parse_join_token(bearer)?;
        let token_key = keys::token(net, token_id);
        // Everything the Join checks: from memory when this controller knows it (the common
        // case: no store read at all), else read in one round trip. The transaction below
        // compares every record it relies on, and its failure branch reads them afresh for
        // the retry.
        let first = match self
            .cached_join_read(net, node, &req.public_key, &token_key)
            .await
        {
            Some(read) => read,
            None => self.join_read(net, node, &key_index, &token_key).await?,
        };
        token_use(net, bearer, first.token.clone(), true)?;
        // After the token: strangers do not get to make the controller compute X25519.
        self.check_join_proof(&req).await?;
        let network = &first.network.0;
        self.check_endpoints(net, node, network, &site, public_endpoint, private_endpoint)
            .await?;

        let lock = self.alloc_lock(net).await;
        let _serialized = lock.lock().await;
        let (session, session_hash) = new_session_token();
        let read = std::sync::Mutex::new(Some(first));
        let (peer, network, revision) = self
            .retry("join", || async {
                let taken = read.lock().unwrap_or_else(|e| e.into_inner()).take();
                let current = match taken {
                    Some(current) => current,
                    None => self.join_read(net, node, &key_index, &token_key).await?,
                };
                let JoinRead {
                    network: (network, network_revision),
                    peer: existing,
                    holder,
                    token,
                    cached,
                } = current;
                let now = now_unix();
                let previous = existing.as_ref().map(|(p, _)| p);
                let refused = previous.is_some_and(|p| p.public_key != req.public_key)
                    || holder.as_ref().is_some_and(|h| h != node.as_bytes());
                if refused && cached {
                    // The hub's table may be a few changes behind (the peer deleted a moment
                    // ago): refuse only on what the store says.
                    return Ok(None);
                }
                // A host id is bound to the key it first joined with: another key is a
                // takeover attempt (or a reinstalled host, which an admin deletes first).
                if let Some(p) = previous
                    && p.public_key != req.public_key
                {
                    return Err(ControllerError::PermissionDenied(format!(
                        "hostId: {node:?} is registered with another public key; an admin must \
                         delete the peer (`cladnet peer delete`) before it can join with a new key"
                    )));
                }
                if let Some(h) = &holder
                    && h != node.as_bytes()
                {
                    return Err(ControllerError::PermissionDenied(
                        "publicKey: registered to another peer of this network".into(),
                    ));
                }
                // A restarted node (same host id, same key) re-joins without using up the
                // token; anything else counts one use, in this transaction.
                let rejoin = previous.is_some_and(|p| p.public_key == req.public_key);
                let token_revision = token.as_ref().map(|kv| kv.mod_revision);
                let token_use = match token_use(net, bearer, token, rejoin) {
                    // A use count from memory may be behind: refuse on a fresh read.
                    Err(_) if cached => return Ok(None),
                    other => other?,
                };
                let reservation = self.reserve_address(net, &network, node, None).await?;
                let ip = reservation.addr();
                let record = PeerRecord {
                    schema: SCHEMA,
                    node_id: node.to_owned(),
                    host_name: if facts.host_name.is_empty() {
                        node.to_owned()
                    } else {
                        facts.host_name.clone()
                    },
                    overlay_ip: ip,
                    state: PeerState::Joining,
                    public_key: req.public_key.clone(),
                    public_endpoint: public_endpoint.or(previous.and_then(|p| p.public_endpoint)),
                    private_endpoint,
                    host_private_cidr,
                    interfaces: interfaces.clone(),
                    capabilities: facts.capabilities.clone(),
                    site: site.clone(),
                    dataplane: String::new(),
                    dataplane_reason: String::new(),
                    joined_at: previous.map_or(now, |p| p.joined_at),
                    updated_at: now,
                    external: false,
                    // A re-joining agent reports its routes again after the join.
                    routes: previous.map(|p| p.routes.clone()).unwrap_or_default(),
                    session_sha256: Some(session_hash.clone()),
                };
                let mut compares = vec![
                    Compare::mod_revision(keys::network(net), CompareOp::Equal, network_revision),
                    Compare::mod_revision(
                        keys::peer(net, node),
                        CompareOp::Equal,
                        existing.as_ref().map_or(0, |(_, r)| *r),
                    ),
                    match &holder {
                        Some(h) => Compare::value(&key_index, CompareOp::Equal, h.clone()),
                        None => Compare::absent(&key_index),
                    },
                ];
                // The token as checked (it may come from memory): unchanged, not revoked.
                if token_use.compares.is_empty()
                    && let Some(r) = token_revision
                {
                    compares.push(Compare::mod_revision(&token_key, CompareOp::Equal, r));
                }
                // One watched write (the peer record, with its session); the rest is internal.
                let mut ops = vec![TxnOp::put(keys::peer(net, node), model::encode(&record))];
                if holder.is_none() {
                    ops.push(TxnOp::put(&key_index, node.as_bytes().to_vec()));
                }
                compares.extend(reservation.compares);
                ops.extend(reservation.ops);
                compares.extend(token_use.compares);
                let token_written = token_use.ops.iter().find_map(|op| match op {
                    TxnOp::Put { key, value, .. } if *key == token_key => Some(value.clone()),
                    _ => None,
                });
                ops.extend(token_use.ops);
                let res = self
                    .store
                    .txn(
                        Txn::new()
                            .when(compares)
                            .and_then(ops)
                            .or_else(join_reads(net, node, &key_index, &token_key)),
                    )
                    .await?;
                if !res.succeeded {
                    // Another controller changed something this Join relied on: retry with
                    // what the failure branch read (the IPAM cache was dropped and reloads).
                    let fresh = self.join_read_results(net, &token_key, res.results)?;
                    *read.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
                    return Ok(None);
                }
                self.ipam_cache.keep(net, reservation.pending, res.revision);
                if let Some(value) = token_written {
                    let kv = KeyValue {
                        key: token_key.clone(),
                        value,
                        create_revision: 0,
                        mod_revision: res.revision,
                        version: 0,
                        lease: None,
                    };
                    self.join_cache.set(&token_key, Some(&kv));
                }
                Ok(Some((record, network, res.revision)))
            })
            .await?;
        info!(network = %net, node = %node, ip = %peer.overlay_ip, "peer joined");
        Ok(pb::JoinResponse {
            peer: Some(peer.to_proto(&network, revision)),
            network: Some(network.to_proto(revision)),
            session_token: session,
        })
    }

    /// Applies an agent's report: advertised routes (`service/routes.rs`), state, endpoint,
    /// facts, dataplane, test results, traffic statistics (stored apart from the watched keys,
    /// see `service/stats.rs`).
    pub async fn report(&self, bearer: &str, req: pb::ReportRequest) -> Result<pb::ReportResponse> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        validate::host_id("hostId", &req.host_id)?;
        let (net, node) = (req.cladnet_id.as_str(), req.host_id.as_str());
        self.check_session(net, node, bearer).await?;
        let state = match req.state.as_str() {
            "" => None,
            s => Some(
                s.parse::<PeerState>()
                    .map_err(|e| ControllerError::invalid("state", e.to_string()))?,
            ),
        };
        let public_endpoint = validate::endpoint("publicEndpoint", &req.public_endpoint)?;
        let interfaces = req.facts.as_ref().map(interfaces).transpose()?;
        if let Some(f) = &req.facts {
            validate::capabilities("facts.capabilities", &f.capabilities)?;
        }
        if public_endpoint.is_some() {
            let (me, _) = self.peer(net, node).await?;
            let (network, _) = self.network(net).await?;
            self.check_endpoints(net, node, &network, &me.site, public_endpoint, None)
                .await?;
        }
        validate::text("dataplane", &req.dataplane, 64)?;
        validate::text("dataplaneReason", &req.dataplane_reason, 512)?;
        // First: an invalid set refuses the report before anything of it is applied.
        let routes_revision = match &req.advertised_routes {
            Some(a) => Some(self.advertise_routes(net, node, &a.prefixes).await?),
            None => None,
        };
        if !req.test_id.is_empty() {
            self.store_results(net, node, &req.test_id, &req.test_results)
                .await?;
        }
        let stats_revision = if req.peer_stats.is_empty() {
            None
        } else {
            Some(self.store_stats(net, node, &req.peer_stats).await?)
        };
        let changes_peer = state.is_some()
            || public_endpoint.is_some()
            || interfaces.is_some()
            || !req.dataplane.is_empty();
        if !changes_peer {
            let revision = match stats_revision.max(routes_revision) {
                Some(r) => r,
                None => self.store.range(&keys::peer(net, node)).await?.revision,
            };
            return Ok(pb::ReportResponse { revision });
        }
        let revision = self
            .update_peer("report", net, node, |peer| {
                if let Some(s) = state {
                    peer.state = s;
                }
                if let Some(e) = public_endpoint {
                    peer.public_endpoint = Some(e);
                }
                if let Some(i) = &interfaces {
                    peer.interfaces.clone_from(i);
                }
                if let Some(f) = &req.facts {
                    peer.capabilities.clone_from(&f.capabilities);
                }
                if !req.dataplane.is_empty() {
                    peer.dataplane.clone_from(&req.dataplane);
                    peer.dataplane_reason.clone_from(&req.dataplane_reason);
                }
            })
            .await?;
        Ok(pb::ReportResponse { revision })
    }

    /// What a Join of node `node` needs, from memory: the network and join token as this
    /// controller last saw them, the node's peer record and the holder of its public key from
    /// the network's watch hub (if it runs; else assumed absent, as for a new node). `None`
    /// when the network or the token is not cached. The Join's transaction compares all of
    /// it.
    async fn cached_join_read(
        &self,
        net: &str,
        node: &str,
        public_key: &str,
        token_key: &str,
    ) -> Option<JoinRead> {
        let network_kv = self.join_cache.get(&keys::network(net))?;
        let token = self.join_cache.get(token_key)?;
        let network = model::decode(&network_kv).ok()?;
        let (peer, holder) = self
            .hubs
            .join_view(net, node, public_key)
            .await
            .unwrap_or_default();
        Some(JoinRead {
            network: (network, network_kv.mod_revision),
            peer,
            holder,
            token: Some(token),
            cached: true,
        })
    }

    /// What a Join of node `node` needs from the store, read in one transaction: the
    /// network, the node's peer record, the holder of its public key (`key_index`) and its
    /// join token (`token_key`).
    async fn join_read(
        &self,
        net: &str,
        node: &str,
        key_index: &str,
        token_key: &str,
    ) -> Result<JoinRead> {
        let res = self
            .store
            .txn(Txn::new().and_then(join_reads(net, node, key_index, token_key)))
            .await?;
        self.join_read_results(net, token_key, res.results)
    }

    /// The [`JoinRead`] from the results of [`join_reads`]; remembers the network and token
    /// records for the next Join.
    fn join_read_results(
        &self,
        net: &str,
        token_key: &str,
        results: Vec<TxnOpResult>,
    ) -> Result<JoinRead> {
        let mut gets = results.into_iter().map(|r| match r {
            TxnOpResult::Get(kv) => Ok(kv),
            _ => Err(ControllerError::Aborted(
                "store answered a read with the wrong results".into(),
            )),
        });
        let mut next = || gets.next().unwrap_or(Ok(None));
        let (network, peer, holder, token) = (next()?, next()?, next()?, next()?);
        self.join_cache.set(&keys::network(net), network.as_ref());
        self.join_cache.set(token_key, token.as_ref());
        let network =
            network.ok_or_else(|| ControllerError::not_found(format!("network {net:?}")))?;
        let peer = match peer {
            Some(kv) => Some((model::decode(&kv)?, kv.mod_revision)),
            None => None,
        };
        Ok(JoinRead {
            network: (model::decode(&network)?, network.mod_revision),
            peer,
            holder: holder.map(|kv| kv.value),
            token,
            cached: false,
        })
    }

    /// Refuses endpoints another peer of the network already has (they would take over that
    /// peer's PLAIN links on every node) or inside the overlay. Private endpoints only clash
    /// within one site: other sites' private addresses are not reachable anyway, and clouds
    /// hand out the same private addresses in every VPC.
    async fn check_endpoints(
        &self,
        net: &str,
        node: &str,
        network: &NetworkRecord,
        site: &SiteRecord,
        public: Option<std::net::SocketAddrV4>,
        private: Option<std::net::SocketAddrV4>,
    ) -> Result<()> {
        if public.is_none() && private.is_none() {
            return Ok(());
        }
        if let Some(e) = public {
            validate::outside_overlay("publicEndpoint", e, network.cidr)?;
        }
        if let Some(e) = private {
            validate::outside_overlay("hostPrivateIpv4Cidr", e, network.cidr)?;
        }
        let mine = site.to_site();
        let clash = |others: &mut dyn Iterator<Item = &PeerRecord>| {
            others.filter(|o| o.node_id != node).find_map(|other| {
                if let Some(e) = public
                    && other.public_endpoint == Some(e)
                {
                    return Some(ControllerError::invalid(
                        "publicEndpoint",
                        format!("{e} is another peer's endpoint"),
                    ));
                }
                (private.is_some()
                    && other.private_endpoint == private
                    && other.site.to_site().same_as(&mine))
                .then(|| {
                    ControllerError::invalid(
                        "hostPrivateIpv4Cidr",
                        "with listenPort, another peer's private endpoint in the same site",
                    )
                })
            })
        };
        // The watch hub's table when it runs (no read and decode of every peer per Join, and
        // only the peers holding one of the endpoints: the first clash in node order is the
        // one a scan of every peer finds); the check is a read before the write either way,
        // not part of the transaction.
        let endpoints: Vec<_> = public.into_iter().chain(private).collect();
        let found = match self.hubs.endpoint_holders(net, &endpoints).await {
            Some(holders) => clash(&mut holders.iter()),
            None => {
                let peers = self.peers(net).await?;
                clash(&mut peers.iter().map(|(p, _)| p))
            }
        };
        found.map_or(Ok(()), Err)
    }

    async fn store_results(
        &self,
        net: &str,
        node: &str,
        test_id: &str,
        results: &[pb::PairResult],
    ) -> Result<()> {
        validate::host_id("testId", test_id)?;
        let kv = self
            .store
            .get(&keys::test(net, test_id))
            .await?
            .ok_or_else(|| ControllerError::not_found(format!("connectivity test {test_id:?}")))?;
        let test: TestRecord = model::decode(&kv)?;
        if !test.host_ids.iter().any(|h| h == node) {
            return Err(ControllerError::PermissionDenied(format!(
                "peer {node:?} is not part of test {test_id:?}"
            )));
        }
        // One result per other participant, each from the reporter: a peer cannot speak for
        // pairs it is not in.
        if results.len() >= test.host_ids.len().max(1) {
            return Err(ControllerError::invalid(
                "testResults",
                format!(
                    "{} entries for a test of {} peers (one per other peer at most)",
                    results.len(),
                    test.host_ids.len()
                ),
            ));
        }
        for (i, r) in results.iter().enumerate() {
            pair_result(i, r, node, &test.host_ids)?;
        }
        let record = ResultRecord {
            schema: SCHEMA,
            node_id: node.to_owned(),
            results: results.iter().map(PairRecord::from_proto).collect(),
        };
        self.store
            .put(
                &keys::result(net, test_id, node),
                model::encode(&record),
                None,
            )
            .await?;
        Ok(())
    }
}

/// The reads of a Join: the network record, the node's peer record, the public-key index
/// entry and the join token (see [`Controller::join_read_results`]).
fn join_reads(net: &str, node: &str, key_index: &str, token_key: &str) -> [TxnOp; 4] {
    [
        TxnOp::get(keys::network(net)),
        TxnOp::get(keys::peer(net, node)),
        TxnOp::get(key_index),
        TxnOp::get(token_key),
    ]
}

/// Addresses one reported interface may carry.
const MAX_IFACE_CIDRS: usize = 32;

/// Checks result `i` of a connectivity test reported by `node`: from `node`, to another
/// participant, with plausible numbers.
fn pair_result(i: usize, r: &pb::PairResult, node: &str, hosts: &[String]) -> Result<()> {
    let field = |f: &str| format!("testResults[{i}].{f}");
    if r.source_host_id != node {
        return Err(ControllerError::invalid(
            field("sourceHostId"),
            format!("must be the reporting peer {node:?}"),
        ));
    }
    if r.destination_host_id == node || !hosts.contains(&r.destination_host_id) {
        return Err(ControllerError::invalid(
            field("destinationHostId"),
            "not another peer of this test",
        ));
    }
    validate::optional_ipv4(&field("sourceIp"), &r.source_ip)?;
    validate::optional_ipv4(&field("destinationIp"), &r.destination_ip)?;
    for (name, v) in [
        ("minRttMs", r.min_rtt_ms),
        ("avgRttMs", r.avg_rtt_ms),
        ("maxRttMs", r.max_rtt_ms),
        ("stddevRttMs", r.stddev_rtt_ms),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(ControllerError::invalid(
                field(name),
                "must be a non-negative number",
            ));
        }
    }
    if !(0.0..=1.0).contains(&r.packet_loss) {
        return Err(ControllerError::invalid(
            field("packetLoss"),
            "must be 0..=1",
        ));
    }
    if r.packets_received > r.packets_sent || r.packets_sent > 100 {
        return Err(ControllerError::invalid(
            field("packetsReceived"),
            "at most packetsSent, which is at most 100",
        ));
    }
    Ok(())
}

/// Validated interfaces from host facts.
fn interfaces(facts: &pb::HostFacts) -> Result<Vec<InterfaceRecord>> {
    if facts.interfaces.len() > 64 {
        return Err(ControllerError::invalid(
            "facts.interfaces",
            "more than 64 interfaces",
        ));
    }
    facts
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            validate::text(&format!("facts.interfaces[{i}].name"), &iface.name, 64)?;
            if iface.ipv4_cidrs.len() > MAX_IFACE_CIDRS {
                return Err(ControllerError::invalid(
                    format!("facts.interfaces[{i}].ipv4Cidrs"),
                    format!("more than {MAX_IFACE_CIDRS} addresses"),
                ));
            }
            let cidrs = iface
                .ipv4_cidrs
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    validate::reported_cidr(&format!("facts.interfaces[{i}].ipv4Cidrs[{j}]"), c)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(InterfaceRecord {
                name: iface.name.clone(),
                cidrs,
                mtu: iface.mtu,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
