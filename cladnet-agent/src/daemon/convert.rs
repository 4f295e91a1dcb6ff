//! Controller records → the peer table's types.

use std::net::{Ipv4Addr, SocketAddrV4};

use cladnet_core::{
    node::{
        SelfRecord,
        table::{PeerState, RemotePeer},
    },
    policy::{Encryption, PeerView, Policy, RuleType, Site},
};
use cladnet_proto::v1 as pb;
use cladnet_wg::PublicKey;

/// A controller record the agent cannot use.
#[derive(Debug, thiserror::Error)]
#[error("peer {host_id:?} from the controller: {field}: {reason}")]
pub struct RecordError {
    /// The peer.
    pub host_id: String,
    /// The field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// The link policy of a network record. Unknown names fall back to the safest choice
/// (encryption always, basic endpoints) rather than failing the agent.
pub fn policy(n: &pb::Network) -> Policy {
    Policy {
        rule: n.rule_type.parse().unwrap_or(RuleType::Basic),
        encryption: n.encryption.parse().unwrap_or(Encryption::Always),
    }
}

/// The prefix length of a network's address space.
pub fn prefix_len(n: &pb::Network) -> Option<u8> {
    let (_, len) = n.ipv4_address_space.split_once('/')?;
    len.parse().ok().filter(|l| *l <= 32)
}

/// Site labels of a record.
pub fn site(c: Option<&pb::CloudInformation>) -> Site {
    let c = c.cloned().unwrap_or_default();
    Site {
        provider: c.provider_name,
        region: c.region_id,
        zone: c.availability_zone_id,
        vpc: c.virtual_network_id,
        subnet: c.subnet_id,
    }
}

/// What the link policy needs from a record.
pub fn view(p: &pb::Peer) -> PeerView {
    let endpoint = |s: &str| s.parse::<SocketAddrV4>().ok();
    PeerView {
        site: site(p.details.as_ref()),
        public: endpoint(&p.public_endpoint),
        private: endpoint(&p.private_endpoint),
        external: p.external,
    }
}

/// The approved prefixes of a record (pending and rejected ones are not routed).
fn approved_prefixes(p: &pb::Peer) -> Result<Vec<ipnet::Ipv4Net>, RecordError> {
    p.routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state == "approved")
        .map(|(i, r)| {
            r.prefix.parse::<ipnet::Ipv4Net>().map_err(|e| RecordError {
                host_id: p.host_id.clone(),
                field: "routes[].prefix",
                reason: format!("routes[{i}].prefix {:?}: {e}", r.prefix),
            })
        })
        .collect()
}

/// A remote peer from its record.
pub fn remote(p: &pb::Peer) -> Result<RemotePeer, RecordError> {
    let err = |field, reason: String| RecordError {
        host_id: p.host_id.clone(),
        field,
        reason,
    };
    let overlay_ip: Ipv4Addr =
        p.ip.parse()
            .map_err(|e| err("ip", format!("{:?}: {e}", p.ip)))?;
    let key = PublicKey::from_base64(&p.public_key)
        .map_err(|e| err("publicKey", format!("{:?}: {e}", p.public_key)))?;
    Ok(RemotePeer {
        node_id: p.host_id.clone(),
        node_index: p.node_index,
        overlay_ip,
        public_key: *key.as_bytes(),
        view: view(p),
        state: PeerState::from_api(&p.state),
        prefixes: approved_prefixes(p)?,
    })
}

/// This node's own record.
pub fn self_record(p: &pb::Peer) -> Result<SelfRecord, RecordError> {
    let me = remote(p)?;
    let prefix_len = p
        .ipv4_cidr
        .split_once('/')
        .and_then(|(_, l)| l.parse().ok())
        .filter(|l| *l <= 32)
        .ok_or_else(|| RecordError {
            host_id: p.host_id.clone(),
            field: "ipv4Cidr",
            reason: format!("{:?} has no prefix length", p.ipv4_cidr),
        })?;
    Ok(SelfRecord {
        node_index: me.node_index,
        overlay_ip: me.overlay_ip,
        prefix_len,
        view: me.view,
        prefixes: me.prefixes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_convert_and_bad_ones_name_the_field() {
        let key = cladnet_wg::PrivateKey::from_bytes([3; 32]).public_key();
        let mut p = pb::Peer {
            host_id: "h1".into(),
            ip: "10.77.0.5".into(),
            public_key: key.to_base64(),
            public_endpoint: "203.0.113.1:8055".into(),
            state: "up".into(),
            node_index: 7,
            ..pb::Peer::default()
        };
        let r = remote(&p).unwrap();
        assert_eq!(r.overlay_ip, Ipv4Addr::new(10, 77, 0, 5));
        assert_eq!(r.view.public, Some("203.0.113.1:8055".parse().unwrap()));
        assert_eq!(r.state, PeerState::Up);
        assert!(r.prefixes.is_empty());
        let route = |prefix: &str, state: &str| pb::Route {
            host_id: "h1".into(),
            prefix: prefix.into(),
            state: state.into(),
            ..pb::Route::default()
        };
        p.routes = vec![
            route("10.244.5.0/24", "approved"),
            route("10.244.6.0/24", "pending"),
            route("10.244.7.0/24", "rejected"),
        ];
        assert_eq!(
            remote(&p).unwrap().prefixes,
            ["10.244.5.0/24".parse::<ipnet::Ipv4Net>().unwrap()],
            "only approved prefixes are routed"
        );
        p.routes.push(route("10.244.8.0/33", "approved"));
        assert_eq!(remote(&p).unwrap_err().field, "routes[].prefix");
        p.routes.clear();
        p.public_key = "nope".into();
        assert_eq!(remote(&p).unwrap_err().field, "publicKey");
        p.ip = "10.77.0".into();
        assert_eq!(remote(&p).unwrap_err().field, "ip");
        let n = pb::Network {
            ipv4_address_space: "10.77.0.0/24".into(),
            encryption: "bogus".into(),
            ..pb::Network::default()
        };
        assert_eq!(prefix_len(&n), Some(24));
        assert_eq!(policy(&n).encryption, Encryption::Always);
    }
}
