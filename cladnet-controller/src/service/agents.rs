//! The agent side: Join (address allocation), Report, and session checks.

use cladnet_proto::v1 as pb;
use cladnet_store::{Compare, CompareOp, KeyValue, Txn, TxnOp};
use tracing::info;

use super::Controller;
use crate::{
    auth::{self, new_session_token, sha256_hex},
    error::{ControllerError, Result},
    keys,
    model::{
        self, EXTERNAL_HOST_PREFIX, InterfaceRecord, PairRecord, PeerRecord, PeerState,
        ResultRecord, SCHEMA, SiteRecord, TestRecord, now_unix,
    },
    validate,
};

impl Controller {
    /// Authenticates a join token of network `net` (it exists and its secret matches);
    /// expiry and use limits are checked in the Join transaction (`join_token_use`), where a
    /// re-join of an already bound node is told apart.
    pub async fn check_join_token(&self, net: &str, bearer: &str) -> Result<()> {
        self.join_token_use(net, bearer, true).await.map(|_| ())
    }

    /// Checks the session token of node `node` in network `net`.
    pub async fn check_session(&self, net: &str, node: &str, bearer: &str) -> Result<()> {
        if !bearer.starts_with(auth::SESSION_PREFIX) {
            return Err(ControllerError::PermissionDenied(
                "Watch and Report need the session token Join returned".into(),
            ));
        }
        let stored = self.store.get(&keys::session(net, node)).await?;
        match stored {
            Some(kv) if kv.value == sha256_hex(bearer).as_bytes() => Ok(()),
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
        let facts = req.facts.unwrap_or_default();
        validate::text("facts.hostName", &facts.host_name, 253)?;
        let interfaces = interfaces(&facts)?;
        let host_private_cidr = match req.host_private_ipv4_cidr.as_str() {
            "" => None,
            s => Some(validate::host_cidr("hostPrivateIpv4Cidr", s)?),
        };
        let private_endpoint = host_private_cidr
            .map(|c| std::net::SocketAddrV4::new(c.addr(), req.listen_port as u16));
        let site = SiteRecord::from_proto(&req.details.unwrap_or_default());
        validate::site("details", &site)?;
        let net = req.cladnet_id.as_str();
        let node = req.host_id.as_str();
        self.check_join_token(net, bearer).await?;

        let lock = self.alloc_lock(net).await;
        let _serialized = lock.lock().await;
        let (session, session_hash) = new_session_token();
        let (peer, network, revision) = self
            .retry("join", || async {
                let (network, net_kv) = self.network(net).await?;
                let existing = self.store.get(&keys::peer(net, node)).await?;
                let reservation = self.reserve_address(net, &network, node, None).await?;
                let ip = reservation.addr();
                let now = now_unix();
                let previous: Option<PeerRecord> =
                    existing.as_ref().map(model::decode).transpose()?;
                // A restarted node (same host id, same key) re-joins without using up the
                // token; anything else counts one use, in this transaction.
                let rejoin = previous
                    .as_ref()
                    .is_some_and(|p| p.public_key == req.public_key);
                let token_use = self.join_token_use(net, bearer, rejoin).await?;
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
                let mut ops = vec![
                    TxnOp::put(keys::peer(net, node), model::encode(&record)),
                    TxnOp::put(keys::session(net, node), session_hash.clone().into_bytes()),
                ];
                compares.extend(reservation.compares);
                ops.extend(reservation.ops);
                compares.extend(token_use.compares);
                ops.extend(token_use.ops);
                let res = self
                    .store
                    .txn(Txn::new().when(compares).and_then(ops))
                    .await?;
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

    /// Applies an agent's report: state, endpoint, facts, dataplane, test results, traffic
    /// statistics (stored apart from the watched keys, see `service/stats.rs`).
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
        validate::text("dataplane", &req.dataplane, 64)?;
        validate::text("dataplaneReason", &req.dataplane_reason, 512)?;
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
            let revision = match stats_revision {
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
        if results.len() > 4096 {
            return Err(ControllerError::invalid(
                "testResults",
                "more than 4096 entries",
            ));
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
            let cidrs = iface
                .ipv4_cidrs
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    validate::host_cidr(&format!("facts.interfaces[{i}].ipv4Cidrs[{j}]"), c)
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
