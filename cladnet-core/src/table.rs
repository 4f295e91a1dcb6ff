//! The agent's peer table: network events in, dataplane commands out.
//!
//! Both dataplane engines (eBPF and userspace) consume the same [`Command`]s, so they cannot
//! drift. The table keeps what it last told the dataplane and emits only differences, in an
//! order that never leaves a route pointing at a half-configured peer: a peer is installed
//! before anything routes to it and withdrawn before it is forgotten.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use serde::{Deserialize, Serialize};

use crate::policy::{LinkMode, PeerView, Policy, PolicyParseError};

/// Bytes a SEALED (WireGuard) packet adds on an IPv4 underlay: IPv4 20 + UDP 8 + header 16 +
/// tag 16.
pub const SEALED_OVERHEAD: u32 = 60;

/// The overlay MTU for an underlay MTU: room for the WireGuard overhead, rounded down to a
/// multiple of 16 so WireGuard's padding never makes a full-size packet exceed the underlay.
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(SEALED_OVERHEAD) & !15
}

/// Lifecycle of a peer, as the controller stores and reports it.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Joined, dataplane coming up.
    Joining,
    /// Up.
    Up,
    /// Stopped by a `down` command; keeps its address.
    Down,
    /// Left gracefully; keeps its address until deleted.
    Released,
    /// Reported a failure.
    Failed,
}

impl PeerState {
    /// The API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Up => "up",
            Self::Down => "down",
            Self::Released => "released",
            Self::Failed => "failed",
        }
    }

    /// Parses the API name leniently (agents): unknown names count as `Failed`.
    pub fn from_api(s: &str) -> Self {
        s.parse().unwrap_or(Self::Failed)
    }

    /// Whether traffic should flow to a peer in this state (unlike cb-network, which kept
    /// sending to released peers).
    pub fn reachable(self) -> bool {
        matches!(self, Self::Joining | Self::Up)
    }
}

impl std::str::FromStr for PeerState {
    type Err = PolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Joining,
            Self::Up,
            Self::Down,
            Self::Released,
            Self::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| PolicyParseError {
            field: "state",
            value: s.to_owned(),
            allowed: "joining up down released failed",
        })
    }
}

/// What the table knows about a remote peer.
#[derive(Clone, Debug)]
pub struct RemotePeer {
    /// Node id.
    pub node_id: String,
    /// Index carried in CLAD headers.
    pub node_index: u32,
    /// Overlay address.
    pub overlay_ip: Ipv4Addr,
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// Endpoints and site.
    pub view: PeerView,
    /// State.
    pub state: PeerState,
}

/// This node.
#[derive(Clone, Debug)]
pub struct LocalNode {
    /// Node id.
    pub node_id: String,
    /// Node index (CLAD header sender id).
    pub node_index: u32,
    /// Overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Prefix length of the network.
    pub prefix_len: u8,
    /// Underlay MTU.
    pub underlay_mtu: u32,
    /// Endpoints and site.
    pub view: PeerView,
}

/// How the dataplane reaches one peer.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct PeerConfig {
    /// Node id.
    pub node_id: String,
    /// Index carried in CLAD headers.
    pub node_index: u32,
    /// Overlay address (routes to it go through this peer).
    pub overlay_ip: Ipv4Addr,
    /// X25519 public key (SEALED links).
    pub public_key: [u8; 32],
    /// Underlay endpoint; `None` until known (SEALED peers may still answer from roaming).
    pub endpoint: Option<SocketAddrV4>,
    /// PLAIN or SEALED.
    pub mode: LinkMode,
}

/// An instruction for the dataplane.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Command {
    /// Configure the overlay interface.
    SetInterface {
        /// Overlay address.
        ip: Ipv4Addr,
        /// Network prefix length (the route to the whole network goes to the interface).
        prefix_len: u8,
        /// Interface MTU.
        mtu: u32,
    },
    /// Install or replace a peer.
    UpsertPeer(PeerConfig),
    /// Remove a peer.
    RemovePeer {
        /// Node id.
        node_id: String,
        /// Its overlay address (to withdraw).
        overlay_ip: Ipv4Addr,
    },
}

/// The peer table.
#[derive(Debug, Default)]
pub struct PeerTable {
    policy: Policy,
    local: Option<LocalNode>,
    peers: BTreeMap<String, RemotePeer>,
    installed: BTreeMap<String, PeerConfig>,
    interface: Option<(Ipv4Addr, u8, u32)>,
    suspended: bool,
}

impl PeerTable {
    /// An empty table with the given policy.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// The current policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Sets this node; returns the resulting commands.
    pub fn set_local(&mut self, local: LocalNode) -> Vec<Command> {
        self.local = Some(local);
        self.reconcile()
    }

    /// Changes the network policy (applies live).
    pub fn set_policy(&mut self, policy: Policy) -> Vec<Command> {
        self.policy = policy;
        self.reconcile()
    }

    /// Suspends (a remote `down` command: every peer is withdrawn, the table keeps them) or
    /// resumes the dataplane's peers.
    pub fn set_suspended(&mut self, suspended: bool) -> Vec<Command> {
        self.suspended = suspended;
        self.reconcile()
    }

    /// Whether the peers are suspended.
    pub fn suspended(&self) -> bool {
        self.suspended
    }

    /// Replaces the whole peer set (a Watch snapshot).
    pub fn replace_all(&mut self, peers: Vec<RemotePeer>) -> Vec<Command> {
        self.peers = peers.into_iter().map(|p| (p.node_id.clone(), p)).collect();
        self.reconcile()
    }

    /// Adds or updates one peer.
    pub fn upsert(&mut self, peer: RemotePeer) -> Vec<Command> {
        self.peers.insert(peer.node_id.clone(), peer);
        self.reconcile()
    }

    /// Forgets one peer.
    pub fn remove(&mut self, node_id: &str) -> Vec<Command> {
        self.peers.remove(node_id);
        self.reconcile()
    }

    /// A known peer.
    pub fn peer(&self, node_id: &str) -> Option<&RemotePeer> {
        self.peers.get(node_id)
    }

    /// What the dataplane currently has, by node id.
    pub fn installed(&self) -> &BTreeMap<String, PeerConfig> {
        &self.installed
    }

    /// Computes the desired state and emits the differences: interface first, then removals
    /// (so an address that moved between peers is withdrawn before it is re-added), then
    /// upserts.
    fn reconcile(&mut self) -> Vec<Command> {
        let Some(local) = &self.local else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let iface = (
            local.overlay_ip,
            local.prefix_len,
            overlay_mtu(local.underlay_mtu),
        );
        if self.interface != Some(iface) {
            self.interface = Some(iface);
            out.push(Command::SetInterface {
                ip: iface.0,
                prefix_len: iface.1,
                mtu: iface.2,
            });
        }
        let desired: BTreeMap<String, PeerConfig> = self
            .peers
            .values()
            .filter(|p| {
                !self.suspended
                    && p.node_id != local.node_id
                    && p.state.reachable()
                    && p.overlay_ip != local.overlay_ip
            })
            .map(|p| {
                let link = self.policy.link(&local.view, &p.view);
                let config = PeerConfig {
                    node_id: p.node_id.clone(),
                    node_index: p.node_index,
                    overlay_ip: p.overlay_ip,
                    public_key: p.public_key,
                    endpoint: link.endpoint,
                    mode: link.mode,
                };
                (p.node_id.clone(), config)
            })
            .collect();
        let gone: Vec<PeerConfig> = self
            .installed
            .iter()
            .filter(|(id, _)| !desired.contains_key(*id))
            .map(|(_, c)| c.clone())
            .collect();
        let moved: Vec<PeerConfig> = self
            .installed
            .iter()
            .filter(|(id, c)| {
                desired
                    .get(*id)
                    .is_some_and(|d| d.overlay_ip != c.overlay_ip)
            })
            .map(|(_, c)| c.clone())
            .collect();
        for c in gone.into_iter().chain(moved) {
            self.installed.remove(&c.node_id);
            out.push(Command::RemovePeer {
                node_id: c.node_id,
                overlay_ip: c.overlay_ip,
            });
        }
        for (id, config) in desired {
            if self.installed.get(&id) != Some(&config) {
                self.installed.insert(id, config.clone());
                out.push(Command::UpsertPeer(config));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Encryption, RuleType, Site};

    fn view(vpc: &str, public: &str, private: &str) -> PeerView {
        PeerView {
            site: Site {
                provider: "aws".into(),
                vpc: vpc.into(),
                ..Site::default()
            },
            public: public.parse().ok(),
            private: private.parse().ok(),
            external: false,
        }
    }

    fn local() -> LocalNode {
        LocalNode {
            node_id: "me".into(),
            node_index: 2,
            overlay_ip: Ipv4Addr::new(10, 77, 0, 2),
            prefix_len: 24,
            underlay_mtu: 1500,
            view: view("v1", "198.18.1.2:8055", "192.168.1.10:8055"),
        }
    }

    fn remote(id: &str, last: u8, vpc: &str, state: PeerState) -> RemotePeer {
        RemotePeer {
            node_id: id.into(),
            node_index: u32::from(last),
            overlay_ip: Ipv4Addr::new(10, 77, 0, last),
            public_key: [last; 32],
            view: view(
                vpc,
                &format!("198.18.2.{last}:8055"),
                &format!("192.168.1.{last}:8055"),
            ),
            state,
        }
    }

    #[test]
    fn mtu_leaves_room_for_wireguard_padding() {
        assert_eq!(overlay_mtu(1500), 1440);
        assert_eq!(overlay_mtu(1400), 1328);
        assert_eq!(
            overlay_mtu(1400).next_multiple_of(16) + SEALED_OVERHEAD,
            1388
        );
        assert_eq!(overlay_mtu(40), 0);
    }

    #[test]
    fn snapshot_installs_reachable_peers_only_and_skips_self() {
        let mut t = PeerTable::new(Policy::default());
        assert!(
            t.replace_all(vec![remote("a", 3, "v1", PeerState::Up)])
                .is_empty(),
            "nothing before local is known"
        );
        let cmds = t.set_local(local());
        assert!(matches!(
            cmds[0],
            Command::SetInterface {
                mtu: 1440,
                prefix_len: 24,
                ..
            }
        ));
        assert_eq!(cmds.len(), 2);
        let cmds = t.replace_all(vec![
            remote("a", 3, "v1", PeerState::Up),
            remote("b", 4, "v2", PeerState::Released),
            RemotePeer {
                node_id: "me".into(),
                ..remote("me", 2, "v1", PeerState::Up)
            },
        ]);
        assert!(
            cmds.is_empty(),
            "a unchanged, b released, self skipped: {cmds:?}"
        );
        assert_eq!(t.installed().len(), 1);
    }

    #[test]
    fn changes_emit_minimal_ordered_commands() {
        let mut t = PeerTable::new(Policy {
            rule: RuleType::CostPrioritized,
            encryption: Encryption::InterSite,
        });
        t.set_local(local());
        let cmds = t.upsert(remote("a", 3, "v1", PeerState::Joining));
        let Command::UpsertPeer(c) = &cmds[0] else {
            panic!("{cmds:?}")
        };
        assert_eq!(
            (c.mode, c.endpoint.unwrap().to_string().as_str()),
            (LinkMode::Plain, "192.168.1.3:8055")
        );
        assert!(
            t.upsert(remote("a", 3, "v1", PeerState::Up)).is_empty(),
            "state change within reachable: no-op"
        );
        // Policy change applies live.
        let cmds = t.set_policy(Policy {
            rule: RuleType::Basic,
            encryption: Encryption::Always,
        });
        let Command::UpsertPeer(c) = &cmds[0] else {
            panic!("{cmds:?}")
        };
        assert_eq!(
            (c.mode, c.endpoint.unwrap().to_string().as_str()),
            (LinkMode::Sealed, "198.18.2.3:8055")
        );
        // Address moved to another peer: the old holder is withdrawn before the new one.
        t.upsert(remote("b", 4, "v2", PeerState::Up));
        let cmds = t.replace_all(vec![remote("b", 3, "v2", PeerState::Up)]);
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert!(matches!(&cmds[0], Command::RemovePeer { node_id, .. } if node_id == "a"));
        assert!(matches!(&cmds[1], Command::RemovePeer { node_id, .. } if node_id == "b"));
        assert!(
            matches!(&cmds[2], Command::UpsertPeer(c) if c.node_id == "b" && c.overlay_ip == Ipv4Addr::new(10, 77, 0, 3))
        );
        let cmds = t.upsert(remote("b", 3, "v2", PeerState::Down));
        assert!(
            matches!(&cmds[..], [Command::RemovePeer { .. }]),
            "down peers get no traffic"
        );
    }

    #[test]
    fn suspend_withdraws_every_peer_and_resume_restores_them() {
        let mut t = PeerTable::default();
        t.set_local(local());
        t.upsert(remote("a", 3, "v1", PeerState::Up));
        t.upsert(remote("b", 4, "v1", PeerState::Up));
        let cmds = t.set_suspended(true);
        assert_eq!(cmds.len(), 2);
        assert!(cmds.iter().all(|c| matches!(c, Command::RemovePeer { .. })));
        assert!(
            t.upsert(remote("c", 5, "v1", PeerState::Up)).is_empty(),
            "nothing while down"
        );
        let cmds = t.set_suspended(false);
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert!(cmds.iter().all(|c| matches!(c, Command::UpsertPeer(_))));
    }
}
