//! Peer reads (with their links), cloud details and deletion.

use cladnet_proto::v1 as pb;
use cladnet_store::{Compare, CompareOp, Txn, TxnOp};
use tracing::info;

use super::Controller;
use crate::{
    error::{ControllerError, Result},
    keys,
    model::{PeerRecord, SiteRecord},
    validate,
};

impl Controller {
    /// Every peer of a network, each with its links to the others.
    pub async fn list_peers(&self, net: &str) -> Result<pb::ListPeersResponse> {
        validate::network_id("cladnetId", net)?;
        let (network, _) = self.network(net).await?;
        let peers = self.peers(net).await?;
        let records: Vec<PeerRecord> = peers.iter().map(|(p, _)| p.clone()).collect();
        Ok(pb::ListPeersResponse {
            peers: peers
                .iter()
                .map(|(p, rev)| p.to_proto_with_links(&network, *rev, &records))
                .collect(),
        })
    }

    /// One peer with its links.
    pub async fn get_peer(&self, net: &str, node: &str) -> Result<pb::Peer> {
        validate::network_id("cladnetId", net)?;
        validate::host_id("hostId", node)?;
        let (network, _) = self.network(net).await?;
        let (peer, kv) = self.peer(net, node).await?;
        let others: Vec<PeerRecord> = self.peers(net).await?.into_iter().map(|(p, _)| p).collect();
        let mut peer = peer.to_proto_with_links(&network, kv.mod_revision, &others);
        let reported = self.reported_links(net, node).await;
        for l in &mut peer.links {
            if let Some(r) = reported.get(&l.host_id) {
                l.path_mtu = r.path_mtu;
                l.path.clone_from(&r.path);
                l.via.clone_from(&r.via);
            }
        }
        Ok(peer)
    }

    /// Sets a peer's cloud details (site labels), as cb-network's UpdateDetailsOfPeer.
    pub async fn update_peer_details(&self, req: pb::UpdatePeerDetailsRequest) -> Result<pb::Peer> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        validate::host_id("hostId", &req.host_id)?;
        let info = req
            .cloud_information
            .ok_or_else(|| ControllerError::invalid("cloudInformation", "is required"))?;
        let site = SiteRecord::from_proto(&info);
        validate::site("cloudInformation", &site)?;
        let (net, node) = (req.cladnet_id.as_str(), req.host_id.as_str());
        self.update_peer("update peer details", net, node, |peer| {
            peer.site = site.clone()
        })
        .await?;
        self.get_peer(net, node).await
    }

    /// Removes a peer and frees its address, session (in the record), pending command and statistics.
    pub async fn delete_peer(&self, net: &str, node: &str) -> Result<pb::DeletePeerResponse> {
        validate::network_id("cladnetId", net)?;
        validate::host_id("hostId", node)?;
        let (peer, kv) = self.peer(net, node).await?;
        let res = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        keys::peer(net, node),
                        CompareOp::Equal,
                        kv.mod_revision,
                    )])
                    .and_then([
                        TxnOp::delete(keys::peer(net, node)),
                        TxnOp::delete(keys::ipam_addr(net, peer.overlay_ip)),
                        TxnOp::delete(keys::pubkey(net, &peer.public_key)),
                        TxnOp::delete(keys::command(net, node)),
                        TxnOp::delete(keys::node_stats(net, node)),
                        // Other controllers' cached allocations are stale now (see
                        // `service/alloc.rs`).
                        TxnOp::put(
                            keys::alloc_generation(net),
                            format!("-{}", peer.overlay_ip).into_bytes(),
                        ),
                    ]),
            )
            .await?;
        self.ipam_cache.forget(net);
        if !res.succeeded {
            return Err(ControllerError::Aborted(format!(
                "peer {node:?} changed concurrently; retry"
            )));
        }
        info!(network = %net, node = %node, ip = %peer.overlay_ip, "peer deleted");
        Ok(pb::DeletePeerResponse {
            is_succeeded: true,
            message: format!("peer {node} deleted, {} freed", peer.overlay_ip),
        })
    }
}
