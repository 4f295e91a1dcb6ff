//! The agent side: Join (address allocation), Report, and session checks.

use cladnet_proto::v1 as pb;
use cladnet_store::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResult};
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

/// The records a Join checks and compares against.
struct JoinRead {
    network: (NetworkRecord, KeyValue),
    peer: Option<KeyValue>,
    /// The record of the public-key index: which node holds the key.
    holder: Option<KeyValue>,
    token: Option<KeyValue>,
}

impl Controller {
    /// Checks the session token of node `node` in network `net`; returns the store revision
    /// the session was written at (only later session changes can revoke it).
    pub async fn check_session(&self, net: &str, node: &str, bearer: &str) -> Result<i64> {
        if !bearer.starts_with(auth::SESSION_PREFIX) {
            return Err(ControllerError::PermissionDenied(
                "Watch and Report need the session token Join returned".into(),
            ));
        }
        let stored = self.store.get(&keys::session(net, node)).await?;
        match stored {
            Some(kv) if kv.value == sha256_hex(bearer).as_bytes() => Ok(kv.mod_revision),
            Some(_) => Err(ControllerError::Unauthenticated(format!(
                "invalid session token for peer {node:?}; join again"
            ))),
            None => Err(ControllerError::Unauthenticated(format!(
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
        // Everything the Join checks, in one round trip; the first attempt of the transaction
        // below uses it too (its compares catch any change made meanwhile: a retry reads
        // again).
        let first = self.join_read(net, node, &key_index, &token_key).await?;
        token_use(net, bearer, first.token.clone(), true)?;
        // After the token: strangers do not get to make the controller compute X25519.
        self.check_join_proof(&req).await?;
        let network = &first.network.0;
        self.check_endpoints(net, node, network, &site, public_endpoint, private_endpoint)
            .await?;

        let lock = self.alloc_lock(net).await;
        let _serialized = lock.lock().await;
        let (session, session_hash) = new_session_token();
        let first = std::sync::Mutex::new(Some(first));
        let (peer, network, revision) = self
            .retry("join", || async {
                let taken = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                let read = match taken {
                    Some(read) => read,
                    None => self.join_read(net, node, &key_index, &token_key).await?,
                };
                let JoinRead {
                    network: (network, net_kv),
                    peer: existing,
                    holder,
                    token,
                } = read;
                let reservation = self.reserve_address(net, &network, node, None).await?;
                let ip = reservation.addr();
                let now = now_unix();
                let previous: Option<PeerRecord> =
                    existing.as_ref().map(model::decode).transpose()?;
                // A host id is bound to the key it first joined with: another key is a
                // takeover attempt (or a reinstalled host, which an admin deletes first).
                if let Some(p) = &previous
                    && p.public_key != req.public_key
                {
                    return Err(ControllerError::PermissionDenied(format!(
                        "hostId: {node:?} is registered with another public key; an admin must \
                         delete the peer (`cladnet peer delete`) before it can join with a new key"
                    )));
                }
                if let Some(kv) = &holder
                    && kv.value != node.as_bytes()
                {
                    return Err(ControllerError::PermissionDenied(
                        "publicKey: registered to another peer of this network".into(),
                    ));
                }
                // A restarted node (same host id, same key) re-joins without using up the
                // token; anything else counts one use, in this transaction.
                let rejoin = previous
                    .as_ref()
                    .is_some_and(|p| p.public_key == req.public_key);
                let token_use = token_use(net, bearer, token, rejoin)?;
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
                    public_endpoint: public_endpoint
                        .or(previous.as_ref().and_then(|p| p.public_endpoint)),
                    private_endpoint,
                    host_private_cidr,
                    interfaces: interfaces.clone(),
                    capabilities: facts.capabilities.clone(),
                    site: site.clone(),
                    dataplane: String::new(),
                    dataplane_reason: String::new(),
                    joined_at: previous.as_ref().map_or(now, |p| p.joined_at),
                    updated_at: now,
                    external: false,
                    // A re-joining agent reports its routes again after the join.
                    routes: previous
                        .as_ref()
                        .map(|p| p.routes.clone())
                        .unwrap_or_default(),
                };
                let mut compares = vec![
                    Compare::mod_revision(
                        keys::network(net),
                        CompareOp::Equal,
                        net_kv.mod_revision,
                    ),
                    Compare::mod_revision(
                        keys::peer(net, node),
                        CompareOp::Equal,
                        existing.as_ref().map_or(0, |kv: &KeyValue| kv.mod_revision),
                    ),
                ];
                compares.push(Compare::mod_revision(
                    &key_index,
                    CompareOp::Equal,
                    holder.as_ref().map_or(0, |kv| kv.mod_revision),
                ));
                let mut ops = vec![
                    TxnOp::put(keys::peer(net, node), model::encode(&record)),
                    TxnOp::put(keys::session(net, node), session_hash.clone().into_bytes()),
                ];
                if holder.is_none() {
                    ops.push(TxnOp::put(&key_index, node.as_bytes().to_vec()));
                }
                compares.extend(reservation.compares);
                ops.extend(reservation.ops);
                compares.extend(token_use.compares);
                ops.extend(token_use.ops);
                let res = self
                    .store
                    .txn(Txn::new().when(compares).and_then(ops))
                    .await?;
                if res.succeeded {
                    self.ipam_cache.keep(net, reservation.pending, res.revision);
                }
                Ok(res.succeeded.then_some((record, network, res.revision)))
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
                None => self.store.range(&keys::session(net, node)).await?.revision,
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
            .txn(Txn::new().and_then([
                TxnOp::get(keys::network(net)),
                TxnOp::get(keys::peer(net, node)),
                TxnOp::get(key_index),
                TxnOp::get(token_key),
            ]))
            .await?;
        let mut gets = res.results.into_iter().map(|r| match r {
            TxnOpResult::Get(kv) => Ok(kv),
            _ => Err(ControllerError::Aborted(
                "store answered a read with the wrong results".into(),
            )),
        });
        let mut next = || gets.next().unwrap_or(Ok(None));
        let (network, peer, holder, token) = (next()?, next()?, next()?, next()?);
        let network =
            network.ok_or_else(|| ControllerError::not_found(format!("network {net:?}")))?;
        Ok(JoinRead {
            network: (model::decode(&network)?, network),
            peer,
            holder,
            token,
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
        // The watch hub's table when it runs (no read and decode of every peer per Join); the
        // check is a read before the write either way, not part of the transaction.
        let found = match self.hubs.with_peers(net, clash).await {
            Some(found) => found,
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
