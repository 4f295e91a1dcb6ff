//! External peers: standard WireGuard clients registered by an admin, and their wg-quick
//! configuration.

use cladnet_proto::v1 as pb;
use cladnet_store::{Compare, CompareOp, Txn, TxnOp};
use ipnet::Ipv4Net;
use tracing::info;

use super::Controller;
use crate::{
    error::{ControllerError, Result},
    keys,
    model::{self, PeerRecord, PeerState, SCHEMA, SiteRecord, external_host_id, now_unix},
    routes::RouteState,
    validate,
    wgconfig::{AgentPeer, ExternalPeerConfig},
};

impl Controller {
    /// Registers a standard WireGuard client as peer `ext-<name>`: state `up` (there is no
    /// agent to report), its endpoint as the public one, an overlay address allocated like an
    /// agent's or the one requested. Agents see it through Watch as any other peer.
    pub async fn add_external_peer(&self, req: pb::AddExternalPeerRequest) -> Result<pb::Peer> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        validate::peer_name("name", &req.name)?;
        validate::public_key("publicKey", &req.public_key)?;
        let endpoint = validate::endpoint("endpoint", &req.endpoint)?;
        let requested = validate::optional_ipv4("ip", &req.ip)?;
        let net = req.cladnet_id.as_str();
        let node = external_host_id(&req.name);
        let key = keys::peer(net, &node);

        let lock = self.alloc_lock(net).await;
        let _serialized = lock.lock().await;
        let (record, network, revision) = self
            .retry("add external peer", || async {
                let (network, net_kv) = self.network(net).await?;
                if self.store.get(&key).await?.is_some() {
                    return Err(ControllerError::AlreadyExists {
                        what: format!("name: peer {node:?} of network {net:?}"),
                    });
                }
                let reservation = self
                    .reserve_address(net, &network, &node, requested.map(|ip| ("ip", ip)))
                    .await?;
                if !reservation.allocation.is_new() {
                    return Err(ControllerError::Corrupt {
                        key: keys::ipam_addr(net, reservation.addr()),
                        reason: format!("held by {node:?}, which has no peer record"),
                    });
                }
                // Peers are read after the reservation: an external peer added since then
                // bumped the allocation generation the reservation compares, so this key
                // check cannot miss it.
                if let Some((other, _)) = self
                    .peers(net)
                    .await?
                    .into_iter()
                    .find(|(p, _)| p.public_key == req.public_key)
                {
                    return Err(ControllerError::AlreadyExists {
                        what: format!("publicKey: peer {:?} with this key", other.node_id),
                    });
                }
                let now = now_unix();
                let record = PeerRecord {
                    schema: SCHEMA,
                    node_id: node.clone(),
                    host_name: req.name.clone(),
                    overlay_ip: reservation.addr(),
                    state: PeerState::Up,
                    public_key: req.public_key.clone(),
                    public_endpoint: endpoint,
                    private_endpoint: None,
                    host_private_cidr: None,
                    interfaces: Vec::new(),
                    capabilities: Vec::new(),
                    site: SiteRecord::default(),
                    dataplane: String::new(),
                    dataplane_reason: String::new(),
                    joined_at: now,
                    updated_at: now,
                    external: true,
                    routes: Vec::new(),
                    session_sha256: None,
                };
                let mut compares = vec![
                    Compare::mod_revision(
                        keys::network(net),
                        CompareOp::Equal,
                        net_kv.mod_revision,
                    ),
                    Compare::absent(&key),
                    Compare::absent(keys::pubkey(net, &req.public_key)),
                ];
                compares.extend(reservation.compares);
                let mut ops = vec![
                    TxnOp::put(&key, model::encode(&record)),
                    TxnOp::put(keys::pubkey(net, &req.public_key), node.as_bytes().to_vec()),
                ];
                ops.extend(reservation.ops);
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
        info!(network = %net, node = %node, ip = %record.overlay_ip, "external peer added");
        let others: Vec<PeerRecord> = self.peers(net).await?.into_iter().map(|(p, _)| p).collect();
        Ok(record.to_proto_with_links(&network, revision, &others))
    }

    /// The wg-quick configuration of external peer `node`: its address, and every agent of
    /// the network that is joining or up and has a public endpoint, with the agent's approved
    /// prefixes in its AllowedIPs (wg-quick routes them to the agent).
    pub async fn external_peer_config(
        &self,
        net: &str,
        node: &str,
    ) -> Result<pb::ExternalPeerConfig> {
        validate::network_id("cladnetId", net)?;
        validate::host_id("hostId", node)?;
        let (network, _) = self.network(net).await?;
        let (peer, _) = self.peer(net, node).await?;
        if !peer.external {
            return Err(ControllerError::FailedPrecondition(format!(
                "hostId: peer {node:?} is a CLADNet agent, not an external WireGuard peer"
            )));
        }
        let agents = self
            .peers(net)
            .await?
            .into_iter()
            .filter_map(|(p, _)| reachable_agent(&p))
            .collect();
        let address = Ipv4Net::new(peer.overlay_ip, network.cidr.prefix_len())
            .expect("the network's prefix length is valid");
        let config = ExternalPeerConfig {
            network: net.to_owned(),
            host_id: node.to_owned(),
            address,
            agents,
        };
        Ok(pb::ExternalPeerConfig {
            config: config.render(),
        })
    }
}

/// An agent a WireGuard client can talk to: joining or up, with a public endpoint. Other
/// external peers are left out: clients talk to agents only.
fn reachable_agent(p: &PeerRecord) -> Option<AgentPeer> {
    let reachable = matches!(p.state, PeerState::Joining | PeerState::Up);
    if p.external || !reachable {
        return None;
    }
    Some(AgentPeer {
        host_id: p.node_id.clone(),
        public_key: p.public_key.clone(),
        endpoint: p.public_endpoint?,
        overlay_ip: p.overlay_ip,
        routes: p
            .routes
            .iter()
            .filter(|r| r.state == RouteState::Approved)
            .map(|r| r.prefix)
            .collect(),
    })
}
