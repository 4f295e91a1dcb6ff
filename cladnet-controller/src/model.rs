//! Records as stored (JSON with a schema version), and their API views.

use std::net::{Ipv4Addr, SocketAddrV4};

use cladnet_core::policy::{Encryption, PeerView, Policy, RuleType, Site};
use cladnet_proto::v1 as pb;
use cladnet_store::KeyValue;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    error::{ControllerError, Result},
    routes::{ExitNodes, RouteApproval, RouteRecord},
};

/// Schema version written into every record.
pub const SCHEMA: u32 = 1;

/// Decodes a stored JSON record, refusing unknown schema versions.
pub fn decode<T: DeserializeOwned + Versioned>(kv: &KeyValue) -> Result<T> {
    let record: T = serde_json::from_slice(&kv.value).map_err(|e| ControllerError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })?;
    if record.schema() != SCHEMA {
        return Err(ControllerError::Corrupt {
            key: kv.key.clone(),
            reason: format!(
                "schema {} is not {SCHEMA}: written by another controller version",
                record.schema()
            ),
        });
    }
    Ok(record)
}

/// Encodes a record for the store.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialize")
}

/// Records carry their schema version.
pub trait Versioned {
    /// The record's schema version.
    fn schema(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),+) => { $(impl Versioned for $t { fn schema(&self) -> u32 { self.schema } })+ };
}
versioned!(
    NetworkRecord,
    PeerRecord,
    TokenRecord,
    CommandRecord,
    TestRecord,
    ResultRecord,
    ProbeRecord
);

/// A network.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NetworkRecord {
    /// Schema version.
    pub schema: u32,
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Overlay CIDR.
    pub cidr: Ipv4Net,
    /// Free text.
    pub description: String,
    /// Endpoint rule.
    pub rule_type: RuleType,
    /// Encryption rule.
    pub encryption: Encryption,
    /// Unix seconds.
    pub created_at: i64,
    /// How advertised prefixes are admitted (records from before routes: `auto`).
    #[serde(default)]
    pub route_approval: RouteApproval,
    /// Whether a peer may advertise `0.0.0.0/0` (records from before routes: `deny`).
    #[serde(default)]
    pub exit_nodes: ExitNodes,
}

impl NetworkRecord {
    /// The link policy.
    pub fn policy(&self) -> Policy {
        Policy {
            rule: self.rule_type,
            encryption: self.encryption,
        }
    }

    /// The API view, at the record's store revision.
    pub fn to_proto(&self, revision: i64) -> pb::Network {
        pb::Network {
            cladnet_id: self.id.clone(),
            name: self.name.clone(),
            ipv4_address_space: self.cidr.to_string(),
            description: self.description.clone(),
            rule_type: self.rule_type.to_string(),
            encryption: self.encryption.to_string(),
            revision,
            route_approval: self.route_approval.to_string(),
            exit_nodes: self.exit_nodes.to_string(),
        }
    }
}

pub use cladnet_core::node::table::PeerState;

/// A host interface as reported.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct InterfaceRecord {
    /// Name.
    pub name: String,
    /// Addresses with prefix.
    pub cidrs: Vec<Ipv4Net>,
    /// MTU.
    pub mtu: u32,
}

/// Site labels (cb-network's CloudInformation).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SiteRecord {
    /// Provider.
    pub provider: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// VPC / virtual network.
    pub vpc: String,
    /// Subnet.
    pub subnet: String,
}

impl SiteRecord {
    /// From the API message.
    pub fn from_proto(c: &pb::CloudInformation) -> Self {
        Self {
            provider: c.provider_name.clone(),
            region: c.region_id.clone(),
            zone: c.availability_zone_id.clone(),
            vpc: c.virtual_network_id.clone(),
            subnet: c.subnet_id.clone(),
        }
    }

    /// The API message.
    pub fn to_proto(&self) -> pb::CloudInformation {
        pb::CloudInformation {
            provider_name: self.provider.clone(),
            region_id: self.region.clone(),
            availability_zone_id: self.zone.clone(),
            virtual_network_id: self.vpc.clone(),
            subnet_id: self.subnet.clone(),
        }
    }

    pub(crate) fn to_site(&self) -> Site {
        Site {
            provider: self.provider.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            vpc: self.vpc.clone(),
            subnet: self.subnet.clone(),
        }
    }
}

/// A peer of a network.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PeerRecord {
    /// Schema version.
    pub schema: u32,
    /// Node id.
    pub node_id: String,
    /// Host name.
    pub host_name: String,
    /// Overlay address.
    pub overlay_ip: Ipv4Addr,
    /// State.
    pub state: PeerState,
    /// X25519 public key, base64.
    pub public_key: String,
    /// Public endpoint as the reflector saw it.
    pub public_endpoint: Option<SocketAddrV4>,
    /// Private underlay endpoint.
    pub private_endpoint: Option<SocketAddrV4>,
    /// The host's main private address with prefix.
    pub host_private_cidr: Option<Ipv4Net>,
    /// Interfaces.
    pub interfaces: Vec<InterfaceRecord>,
    /// Dataplane capabilities.
    pub capabilities: Vec<String>,
    /// Site labels.
    pub site: SiteRecord,
    /// Engine in use.
    pub dataplane: String,
    /// Why that engine.
    pub dataplane_reason: String,
    /// Unix seconds of the first join.
    pub joined_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// A standard WireGuard client registered with AddExternalPeer, not an agent. Records
    /// written before external peers existed lack the field: they are agents.
    #[serde(default)]
    pub external: bool,
    /// The prefixes the peer advertises, sorted, with their approval state (see
    /// [`crate::routes`]); records from before routes have none.
    #[serde(default)]
    pub routes: Vec<RouteRecord>,
    /// SHA-256 (hex) of the session token the node's last Join returned (none for external
    /// peers). Kept in the peer record, so a Join is one watched write and a re-join (a new
    /// session) reaches the watch hub as the peer change it is anyway, revoking the node's
    /// streams opened with the old session. Never sent to agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sha256: Option<String>,
}

/// Host ids of external peers start with this; agents cannot join with such an id.
pub const EXTERNAL_HOST_PREFIX: &str = "ext-";

/// The host id of the external peer called `name`.
pub fn external_host_id(name: &str) -> String {
    format!("{EXTERNAL_HOST_PREFIX}{name}")
}

impl PeerRecord {
    /// What the link policy needs.
    pub fn view(&self) -> PeerView {
        PeerView {
            site: self.site.to_site(),
            public: self.public_endpoint,
            private: self.private_endpoint,
            external: self.external,
        }
    }

    /// The CLAD header node index: the overlay address, unique within a network.
    pub fn node_index(&self) -> u32 {
        u32::from(self.overlay_ip)
    }

    /// The API view without links.
    pub fn to_proto(&self, network: &NetworkRecord, revision: i64) -> pb::Peer {
        let show = |e: Option<SocketAddrV4>| e.map(|e| e.to_string()).unwrap_or_default();
        pb::Peer {
            cladnet_id: network.id.clone(),
            host_id: self.node_id.clone(),
            host_name: self.host_name.clone(),
            host_private_ipv4_cidr: self
                .host_private_cidr
                .map(|c| c.to_string())
                .unwrap_or_default(),
            host_private_ip: self
                .host_private_cidr
                .map(|c| c.addr().to_string())
                .unwrap_or_default(),
            host_public_ip: self
                .public_endpoint
                .map(|e| e.ip().to_string())
                .unwrap_or_default(),
            ipv4_cidr: network.cidr.to_string(),
            ip: self.overlay_ip.to_string(),
            state: self.state.as_str().to_owned(),
            details: Some(self.site.to_proto()),
            public_key: self.public_key.clone(),
            public_endpoint: show(self.public_endpoint),
            private_endpoint: show(self.private_endpoint),
            capabilities: self.capabilities.clone(),
            dataplane: self.dataplane.clone(),
            dataplane_reason: self.dataplane_reason.clone(),
            links: vec![],
            revision,
            node_index: self.node_index(),
            external: self.external,
            routes: self
                .routes
                .iter()
                .map(|r| r.to_proto(&self.node_id))
                .collect(),
        }
    }

    /// The API view with the link towards every other peer (cb-network's networking rule).
    pub fn to_proto_with_links(
        &self,
        network: &NetworkRecord,
        revision: i64,
        others: &[Self],
    ) -> pb::Peer {
        let policy = network.policy();
        let local = self.view();
        let mut peer = self.to_proto(network, revision);
        peer.links = others
            .iter()
            .filter(|o| o.node_id != self.node_id)
            .map(|o| {
                let link = policy.link(&local, &o.view());
                pb::Link {
                    host_id: o.node_id.clone(),
                    host_name: o.host_name.clone(),
                    peer_ip: o.overlay_ip.to_string(),
                    selected_endpoint: link.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                    mode: link.mode.as_str().to_owned(),
                    peer_scope: link.scope.as_str().to_owned(),
                    state: o.state.as_str().to_owned(),
                    // Filled by GetPeer from the agent's last statistics report.
                    path_mtu: 0,
                    path: String::new(),
                    via: String::new(),
                }
            })
            .collect();
        peer
    }
}

/// A join token; the secret is kept only as a SHA-256 hash.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenRecord {
    /// Schema version.
    pub schema: u32,
    /// Token id (public part).
    pub id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Free text.
    pub description: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; 0 = never.
    pub expires_at: i64,
    /// Joins admitted; 0 = unlimited (records from before use limits have none).
    #[serde(default)]
    pub max_uses: u32,
    /// Joins used so far (counted when `max_uses` is set).
    #[serde(default)]
    pub uses: u32,
}

impl TokenRecord {
    /// The API view.
    pub fn to_proto(&self, net: &str) -> pb::JoinToken {
        pb::JoinToken {
            token_id: self.id.clone(),
            cladnet_id: net.to_owned(),
            description: self.description.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            max_uses: self.max_uses,
            uses: self.uses,
        }
    }
}

/// A coordinated-probe request for a node (see `service::probes`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ProbeRecord {
    /// Schema version.
    pub schema: u32,
    /// The peer to probe.
    pub peer: String,
    /// Unix milliseconds (controller clock) when to start.
    pub start_at_ms: i64,
    /// The peer's endpoints the controller knows (`ip:port`), public first.
    pub endpoints: Vec<String>,
    /// Unique id (for logs).
    pub probe_id: String,
}

impl ProbeRecord {
    /// The request as its agent receives it.
    pub fn to_proto(&self) -> pb::ProbeRequest {
        pb::ProbeRequest {
            host_id: self.peer.clone(),
            start_at_ms: self.start_at_ms,
            endpoints: self.endpoints.clone(),
            probe_id: self.probe_id.clone(),
        }
    }
}

/// The last command sent to a node.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CommandRecord {
    /// Schema version.
    pub schema: u32,
    /// `up`, `down`, `enable-encryption`, `disable-encryption`.
    pub command_type: String,
    /// Unique id, so an agent applies each command once.
    pub command_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// The prefixes of an `advertise-routes` command.
    #[serde(default)]
    pub routes: Vec<Ipv4Net>,
}

impl CommandRecord {
    /// The command as its agent receives it.
    pub fn to_proto(&self) -> pb::Command {
        pb::Command {
            command_type: self.command_type.clone(),
            command_id: self.command_id.clone(),
            routes: self.routes.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A connectivity test request.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TestRecord {
    /// Schema version.
    pub schema: u32,
    /// Id.
    pub id: String,
    /// Pings per pair.
    pub trial_count: u32,
    /// Peers asked to take part.
    pub host_ids: Vec<String>,
    /// Unix seconds.
    pub started_at: i64,
}

/// One pair's RTT statistics.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PairRecord {
    /// Source node.
    pub source_host_id: String,
    /// Source overlay address.
    pub source_ip: String,
    /// Destination node.
    pub destination_host_id: String,
    /// Destination overlay address.
    pub destination_ip: String,
    /// Milliseconds.
    pub min_rtt_ms: f64,
    /// Milliseconds.
    pub avg_rtt_ms: f64,
    /// Milliseconds.
    pub max_rtt_ms: f64,
    /// Milliseconds.
    pub stddev_rtt_ms: f64,
    /// Probes sent.
    pub packets_sent: u32,
    /// Replies.
    pub packets_received: u32,
    /// Fraction lost, 0..=1.
    pub packet_loss: f64,
}

impl PairRecord {
    /// From the API message.
    pub fn from_proto(p: &pb::PairResult) -> Self {
        Self {
            source_host_id: p.source_host_id.clone(),
            source_ip: p.source_ip.clone(),
            destination_host_id: p.destination_host_id.clone(),
            destination_ip: p.destination_ip.clone(),
            min_rtt_ms: p.min_rtt_ms,
            avg_rtt_ms: p.avg_rtt_ms,
            max_rtt_ms: p.max_rtt_ms,
            stddev_rtt_ms: p.stddev_rtt_ms,
            packets_sent: p.packets_sent,
            packets_received: p.packets_received,
            packet_loss: p.packet_loss,
        }
    }

    /// The API message.
    pub fn to_proto(&self) -> pb::PairResult {
        pb::PairResult {
            source_host_id: self.source_host_id.clone(),
            source_ip: self.source_ip.clone(),
            destination_host_id: self.destination_host_id.clone(),
            destination_ip: self.destination_ip.clone(),
            min_rtt_ms: self.min_rtt_ms,
            avg_rtt_ms: self.avg_rtt_ms,
            max_rtt_ms: self.max_rtt_ms,
            stddev_rtt_ms: self.stddev_rtt_ms,
            packets_sent: self.packets_sent,
            packets_received: self.packets_received,
            packet_loss: self.packet_loss,
        }
    }
}

/// One node's results of a test.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ResultRecord {
    /// Schema version.
    pub schema: u32,
    /// Reporting node.
    pub node_id: String,
    /// One entry per destination.
    pub results: Vec<PairRecord>,
}

/// Current Unix time in seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
