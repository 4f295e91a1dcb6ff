//! The Node's peer table: network events in, dataplane commands out.
//!
//! Both dataplane engines (eBPF and userspace) consume the same [`Command`]s, so they cannot
//! drift. The table keeps what it last told the dataplane and emits only differences, in an
//! order that never leaves a route pointing at a half-configured peer: a peer is installed
//! before anything routes to it and withdrawn before it is forgotten. It is the one place
//! that knows what is installed: endpoints learnt from packets and counter slots live here
//! too, so no engine keeps a copy that could go stale.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use cladnet_common::{maps::MAX_PEERS_LIMIT, wire::SEALED_OVERHEAD_V4};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{
    command::{Command, LocalConfig, PeerConfig},
    forward::Forwarding,
};
use crate::policy::{LinkMode, PeerView, Policy, PolicyParseError};

/// The overlay MTU for an underlay MTU: room for the WireGuard overhead
/// ([`SEALED_OVERHEAD_V4`]), rounded down to a multiple of 16 so WireGuard's padding never
/// makes a full-size packet exceed the underlay.
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(SEALED_OVERHEAD_V4 as u32) & !15
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
    /// Its approved prefixes (the controller's `routes` in state `approved`).
    pub prefixes: Vec<Ipv4Net>,
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
    /// This host's underlay address, when known.
    pub underlay_ip: Option<Ipv4Addr>,
    /// Endpoints and site.
    pub view: PeerView,
    /// Its own approved prefixes.
    pub prefixes: Vec<Ipv4Net>,
}

/// The prefixes of `p` the dataplane routes through it, sorted: its approved ones except any
/// that holds this host's underlay address (routing those into the overlay would cut the
/// host off from its own network, and from the peers it reaches through it).
fn routed_prefixes(local: &LocalNode, p: &RemotePeer) -> Vec<Ipv4Net> {
    let mut out: Vec<Ipv4Net> = p
        .prefixes
        .iter()
        .filter(|n| !local.underlay_ip.is_some_and(|ip| n.contains(&ip)))
        .map(Ipv4Net::trunc)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The prefixes in `old` but not in `new` (both sorted).
fn withdrawn(old: &[Ipv4Net], new: &[Ipv4Net]) -> Vec<Ipv4Net> {
    old.iter()
        .filter(|n| new.binary_search(n).is_err())
        .copied()
        .collect()
}

/// The commands that withdraw an installed peer: its prefixes, then the peer.
fn remove_commands(c: PeerConfig, out: &mut Vec<Command>) {
    if !c.prefixes.is_empty() {
        out.push(Command::RemovePrefixes {
            node_index: c.node_index,
            local: false,
            prefixes: c.prefixes,
        });
    }
    out.push(Command::RemovePeer {
        node_id: c.node_id,
        overlay_ip: c.overlay_ip,
        slot: c.slot,
    });
}

/// A port learnt from a PLAIN peer's packets, valid while the controller's endpoint for the
/// peer is still the one it replaced.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct Learned {
    /// The endpoint the policy chose when the port was learnt.
    policy: SocketAddrV4,
    /// Where the peer's packets come from.
    seen: SocketAddrV4,
}

/// Counter slots: one per installed peer, reused after removal.
#[derive(Debug, Default)]
struct Slots {
    by_node: BTreeMap<String, u32>,
    free: Vec<u32>,
    next: u32,
    /// Fewer slots than [`MAX_PEERS_LIMIT`], so tests can run out of them.
    #[cfg(test)]
    cap: Option<u32>,
}

impl Slots {
    fn get(&mut self, node_id: &str) -> Option<u32> {
        if let Some(s) = self.by_node.get(node_id) {
            return Some(*s);
        }
        let limit = self.limit();
        let slot = self.free.pop().or_else(|| {
            (self.next < limit).then(|| {
                self.next += 1;
                self.next - 1
            })
        })?;
        self.by_node.insert(node_id.to_owned(), slot);
        Some(slot)
    }

    fn limit(&self) -> u32 {
        #[cfg(test)]
        if let Some(cap) = self.cap {
            return cap;
        }
        MAX_PEERS_LIMIT
    }

    /// Whether [`Self::get`] would find a slot for a peer that has none.
    fn any_free(&self) -> bool {
        !self.free.is_empty() || self.next < self.limit()
    }

    fn release(&mut self, node_id: &str) {
        if let Some(s) = self.by_node.remove(node_id) {
            self.free.push(s);
        }
    }
}

/// The peer table.
#[derive(Debug, Default)]
pub struct PeerTable {
    policy: Policy,
    local: Option<LocalNode>,
    peers: BTreeMap<String, RemotePeer>,
    installed: BTreeMap<String, PeerConfig>,
    set_local: Option<LocalConfig>,
    suspended: bool,
    learned: BTreeMap<String, Learned>,
    slots: Slots,
    /// Peers that should be installed but got no counter slot, in the order they get one.
    waiting: BTreeSet<String>,
    forwarding: Arc<Forwarding>,
    /// Tests: reconcile every peer on every event, the reference the incremental path must
    /// match.
    #[cfg(test)]
    full_only: bool,
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

    /// This node, once known.
    pub fn local(&self) -> Option<&LocalNode> {
        self.local.as_ref()
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
        let id = peer.node_id.clone();
        self.peers.insert(id.clone(), peer);
        self.reconcile_peer(&id)
    }

    /// Forgets one peer.
    pub fn remove(&mut self, node_id: &str) -> Vec<Command> {
        self.peers.remove(node_id);
        self.reconcile_peer(node_id)
    }

    /// Moves an installed PLAIN peer to `seen`, a port of its address its packets come from
    /// (see [`Node::handle_datagram`](super::Node::handle_datagram)).
    pub fn learn_port(&mut self, node_id: &str, seen: SocketAddrV4) -> Vec<Command> {
        let Some(policy) = self
            .local
            .as_ref()
            .zip(self.peers.get(node_id))
            .and_then(|(l, p)| self.policy.link(&l.view, &p.view).endpoint)
        else {
            return Vec::new();
        };
        self.learned
            .insert(node_id.to_owned(), Learned { policy, seen });
        self.reconcile_peer(node_id)
    }

    /// A known peer.
    pub fn peer(&self, node_id: &str) -> Option<&RemotePeer> {
        self.peers.get(node_id)
    }

    /// What the dataplane currently has, by node id.
    pub fn installed(&self) -> &BTreeMap<String, PeerConfig> {
        &self.installed
    }

    /// The forwarding snapshot of what is installed.
    pub fn forwarding(&self) -> &Arc<Forwarding> {
        &self.forwarding
    }

    /// This node's prefixes as last sent in [`Command::SetLocal`].
    fn local_prefixes(&self) -> Vec<Ipv4Net> {
        self.set_local
            .as_ref()
            .map(|l| l.prefixes.clone())
            .unwrap_or_default()
    }

    /// The link to a peer: the policy's, with a port learnt from its packets while the
    /// policy's endpoint is still the one the port replaced.
    fn desired(&self, local: &LocalNode, p: &RemotePeer) -> (LinkMode, Option<SocketAddrV4>) {
        let link = self.policy.link(&local.view, &p.view);
        let endpoint = match (link.mode, link.endpoint, self.learned.get(&p.node_id)) {
            (LinkMode::Plain, Some(ep), Some(l)) if l.policy == ep => Some(l.seen),
            _ => link.endpoint,
        };
        (link.mode, endpoint)
    }

    /// Computes the desired state and emits the differences: this node first, then removals
    /// (so an address that moved between peers is withdrawn before it is re-added), then
    /// upserts, then the forwarding snapshot that reflects them.
    fn reconcile(&mut self) -> Vec<Command> {
        let Some(local) = self.local.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut prefixes = local
            .prefixes
            .iter()
            .map(Ipv4Net::trunc)
            .collect::<Vec<_>>();
        prefixes.sort();
        prefixes.dedup();
        let set_local = LocalConfig {
            node_index: local.node_index,
            overlay_ip: local.overlay_ip,
            prefix_len: local.prefix_len,
            mtu: overlay_mtu(local.underlay_mtu),
            underlay_ip: local.underlay_ip,
            prefixes,
        };
        if self.set_local.as_ref() != Some(&set_local) {
            if let Some(old) = &self.set_local {
                // The old index owned them; a new index means new entries anyway.
                let gone = if old.node_index == set_local.node_index {
                    withdrawn(&old.prefixes, &set_local.prefixes)
                } else {
                    old.prefixes.clone()
                };
                if !gone.is_empty() {
                    out.push(Command::RemovePrefixes {
                        node_index: old.node_index,
                        local: true,
                        prefixes: gone,
                    });
                }
            }
            self.set_local = Some(set_local.clone());
            out.push(Command::SetLocal(set_local));
        }
        let desired: BTreeMap<String, (RemotePeer, LinkMode, Option<SocketAddrV4>)> = self
            .peers
            .values()
            .filter(|p| {
                !self.suspended
                    && p.node_id != local.node_id
                    && p.state.reachable()
                    && p.overlay_ip != local.overlay_ip
            })
            .map(|p| {
                let (mode, endpoint) = self.desired(&local, p);
                (p.node_id.clone(), (p.clone(), mode, endpoint))
            })
            .collect();
        // Learnt ports of peers that left, or whose controller endpoint changed, are forgotten.
        self.learned.retain(|id, l| {
            desired.get(id).is_some_and(|(p, ..)| {
                self.policy.link(&local.view, &p.view).endpoint == Some(l.policy)
            })
        });
        let gone: Vec<PeerConfig> = self
            .installed
            .iter()
            .filter(|(id, c)| {
                desired
                    .get(*id)
                    .is_none_or(|(p, ..)| p.overlay_ip != c.overlay_ip)
            })
            .map(|(_, c)| c.clone())
            .collect();
        for c in gone {
            self.installed.remove(&c.node_id);
            self.slots.release(&c.node_id);
            remove_commands(c, &mut out);
        }
        let mut changed = !out.is_empty();
        self.waiting.clear();
        for (id, (p, mode, endpoint)) in desired {
            let Some(slot) = self.slots.get(&id) else {
                // More peers than counter slots: the rest wait for one to free up.
                self.waiting.insert(id);
                continue;
            };
            if self
                .install(&local, p, mode, endpoint, slot, &mut out)
                .is_some()
            {
                changed = true;
            }
        }
        if changed {
            self.forwarding = Arc::new(
                Forwarding::new(Some((local.node_index, local.overlay_ip)), &self.installed)
                    .with_local_prefixes(self.local_prefixes()),
            );
            out.push(Command::Publish(self.forwarding.clone()));
        }
        out
    }

    /// Whether a peer should be installed, and how: its link unless the dataplane is
    /// suspended or the record is this node's (by id or address) or unreachable.
    /// Installs peer `p` as `mode` via `endpoint` in counter `slot` unless exactly that is
    /// installed already; the new config if it changed (its `UpsertPeer` is in `out`).
    fn install(
        &mut self,
        local: &LocalNode,
        p: RemotePeer,
        mode: LinkMode,
        endpoint: Option<SocketAddrV4>,
        slot: u32,
        out: &mut Vec<Command>,
    ) -> Option<PeerConfig> {
        let config = PeerConfig {
            prefixes: routed_prefixes(local, &p),
            node_id: p.node_id,
            node_index: p.node_index,
            overlay_ip: p.overlay_ip,
            public_key: p.public_key,
            endpoint,
            mode,
            slot,
        };
        let old = self.installed.get(&config.node_id);
        if old == Some(&config) {
            return None;
        }
        if let Some(old) = old {
            let gone = if old.node_index == config.node_index {
                withdrawn(&old.prefixes, &config.prefixes)
            } else {
                old.prefixes.clone()
            };
            if !gone.is_empty() {
                out.push(Command::RemovePrefixes {
                    node_index: old.node_index,
                    local: false,
                    prefixes: gone,
                });
            }
        }
        self.installed
            .insert(config.node_id.clone(), config.clone());
        out.push(Command::UpsertPeer(config.clone()));
        Some(config)
    }

    fn wanted(
        &self,
        local: &LocalNode,
        node_id: &str,
    ) -> Option<(&RemotePeer, LinkMode, Option<SocketAddrV4>)> {
        let p = self.peers.get(node_id)?;
        (!self.suspended
            && p.node_id != local.node_id
            && p.state.reachable()
            && p.overlay_ip != local.overlay_ip)
            .then(|| {
                let (mode, endpoint) = self.desired(local, p);
                (p, mode, endpoint)
            })
    }

    /// [`Self::reconcile`] after a change to one peer's record or learnt port: the same
    /// commands, computed for that peer (and the peers waiting for a counter slot) only, since
    /// no other peer's desired state depends on it. The local node, policy and suspension
    /// change every peer and go through [`Self::reconcile`].
    fn reconcile_peer(&mut self, node_id: &str) -> Vec<Command> {
        #[cfg(test)]
        if self.full_only {
            return self.reconcile();
        }
        let Some(local) = self.local.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let wanted = self
            .wanted(&local, node_id)
            .map(|(p, mode, endpoint)| (p.clone(), mode, endpoint));
        let keep_learned = wanted.as_ref().is_some_and(|(p, ..)| {
            let endpoint = self.policy.link(&local.view, &p.view).endpoint;
            self.learned
                .get(node_id)
                .is_some_and(|l| endpoint == Some(l.policy))
        });
        if !keep_learned {
            self.learned.remove(node_id);
        }
        let mut removed = Vec::new();
        if let Some(c) = self.installed.get(node_id)
            && wanted
                .as_ref()
                .is_none_or(|(p, ..)| p.overlay_ip != c.overlay_ip)
        {
            let c = self.installed.remove(node_id).expect("just found");
            self.slots.release(node_id);
            removed.push(c.node_id.clone());
            remove_commands(c, &mut out);
        }
        self.waiting.remove(node_id);
        // The peers a full reconcile would (re)install, in its order (node id): this one,
        // and those waiting for a slot if one is free.
        let slot_free = self.slots.any_free();
        let mut candidates: Vec<String> = if slot_free {
            self.waiting.iter().cloned().collect()
        } else {
            Vec::new()
        };
        if wanted.is_some() {
            let at = candidates.partition_point(|id| id.as_str() < node_id);
            candidates.insert(at, node_id.to_owned());
        }
        let mut upserted = Vec::new();
        for id in candidates {
            let Some((p, mode, endpoint)) = (if id == node_id {
                wanted.clone()
            } else {
                self.wanted(&local, &id)
                    .map(|(p, mode, endpoint)| (p.clone(), mode, endpoint))
            }) else {
                continue;
            };
            let Some(slot) = self.slots.get(&id) else {
                self.waiting.insert(id);
                continue;
            };
            self.waiting.remove(&id);
            if let Some(config) = self.install(&local, p, mode, endpoint, slot, &mut out) {
                upserted.push(config);
            }
        }
        if !out.is_empty() {
            let removed: Vec<&str> = removed.iter().map(String::as_str).collect();
            self.forwarding = Arc::new(self.forwarding.apply(&removed, &upserted));
            out.push(Command::Publish(self.forwarding.clone()));
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
            underlay_ip: None,
            view: view("v1", "198.18.1.2:8055", "192.168.1.10:8055"),
            prefixes: Vec::new(),
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
            prefixes: Vec::new(),
        }
    }

    #[test]
    fn mtu_leaves_room_for_wireguard_padding() {
        assert_eq!(overlay_mtu(1500), 1440);
        assert_eq!(overlay_mtu(1400), 1328);
        assert_eq!(
            overlay_mtu(1400).next_multiple_of(16) + SEALED_OVERHEAD_V4 as u32,
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
            &cmds[0],
            Command::SetLocal(LocalConfig {
                mtu: 1440,
                prefix_len: 24,
                node_index: 2,
                ..
            })
        ));
        assert!(matches!(&cmds[1], Command::UpsertPeer(c) if c.slot == 0));
        assert!(
            matches!(&cmds[2], Command::Publish(f) if f.peers().count() == 1),
            "{cmds:?}"
        );
        assert_eq!(cmds.len(), 3);
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
        assert_eq!(cmds.len(), 4, "{cmds:?}");
        assert!(matches!(&cmds[0], Command::RemovePeer { node_id, .. } if node_id == "a"));
        assert!(matches!(&cmds[1], Command::RemovePeer { node_id, .. } if node_id == "b"));
        assert!(
            matches!(&cmds[2], Command::UpsertPeer(c) if c.node_id == "b" && c.overlay_ip == Ipv4Addr::new(10, 77, 0, 3))
        );
        let cmds = t.upsert(remote("b", 3, "v2", PeerState::Down));
        assert!(
            matches!(&cmds[..], [Command::RemovePeer { .. }, Command::Publish(_)]),
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
        assert_eq!(cmds.len(), 3);
        assert!(
            cmds[..2]
                .iter()
                .all(|c| matches!(c, Command::RemovePeer { .. }))
        );
        assert!(
            t.upsert(remote("c", 5, "v1", PeerState::Up)).is_empty(),
            "nothing while down"
        );
        let cmds = t.set_suspended(false);
        assert_eq!(cmds.len(), 4, "{cmds:?}");
        assert!(
            cmds[..3]
                .iter()
                .all(|c| matches!(c, Command::UpsertPeer(_)))
        );
        assert!(matches!(&cmds[3], Command::Publish(f) if f.peers().count() == 3));
    }

    #[test]
    fn prefixes_that_hold_the_underlay_are_not_routed_and_removal_withdraws_them_first() {
        let mut t = PeerTable::default();
        t.set_local(LocalNode {
            underlay_ip: Some(Ipv4Addr::new(192, 168, 1, 10)),
            ..local()
        });
        let mut a = remote("a", 3, "v1", PeerState::Up);
        a.prefixes = ["192.168.0.0/16", "10.244.3.0/24", "10.244.3.0/24"]
            .map(|n| n.parse().unwrap())
            .to_vec();
        let cmds = t.upsert(a);
        assert!(
            matches!(&cmds[0], Command::UpsertPeer(c)
                if c.prefixes == ["10.244.3.0/24".parse::<Ipv4Net>().unwrap()]),
            "the subnet of this host's underlay stays out, repeats go: {cmds:?}"
        );
        let cmds = t.remove("a");
        assert!(
            matches!(&cmds[..], [
                Command::RemovePrefixes { node_index: 3, local: false, prefixes },
                Command::RemovePeer { .. },
                Command::Publish(f),
            ] if prefixes.len() == 1 && f.peer_for(Ipv4Addr::new(10, 244, 3, 1)).is_none()),
            "{cmds:?}"
        );
    }

    /// One event of the reconciliation proptest.
    #[derive(Clone, Debug)]
    enum Event {
        Upsert(Box<RemotePeer>),
        Remove(u8),
        Learn(u8, u16),
        Policy(Policy),
        Suspend(bool),
        Local(u8, bool, bool),
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        let state = prop_oneof![
            Just(PeerState::Joining),
            Just(PeerState::Up),
            Just(PeerState::Down),
            Just(PeerState::Released),
        ];
        let policy = (0..2u8, 0..3u8).prop_map(|(r, e)| Policy {
            rule: [RuleType::Basic, RuleType::CostPrioritized][usize::from(r)],
            encryption: [Encryption::Always, Encryption::InterSite, Encryption::Never]
                [usize::from(e)],
        });
        // Few ids and addresses, so addresses and endpoints collide and move between peers.
        prop_oneof![
            4 => (0..6u8, 2..6u8, any::<bool>(), 0..2u16, state, 0..8u8).prop_map(
                |(id, last, vpc, port, state, routes)| {
                    let mut p = remote(
                        &format!("p{id}"),
                        last,
                        if vpc { "v1" } else { "v2" },
                        state,
                    );
                    p.view.private = format!("192.168.1.{last}:{}", 8055 + port).parse().ok();
                    // Few prefixes, so they move between peers and nest.
                    p.prefixes = [(0, "10.244.1.0/24"), (1, "10.244.2.0/24"), (2, "10.244.0.0/16")]
                        .into_iter()
                        .filter(|(bit, _)| routes & (1 << bit) != 0)
                        .map(|(_, n)| n.parse().unwrap())
                        .collect();
                    Event::Upsert(Box::new(p))
                }
            ),
            2 => (0..6u8).prop_map(Event::Remove),
            2 => (0..6u8, 0..3u16).prop_map(|(id, port)| Event::Learn(id, port)),
            1 => policy.prop_map(Event::Policy),
            1 => any::<bool>().prop_map(Event::Suspend),
            1 => (2..4u8, any::<bool>(), any::<bool>())
                .prop_map(|(last, vpc, pods)| Event::Local(last, vpc, pods)),
        ]
    }

    fn apply(t: &mut PeerTable, e: &Event) -> Vec<Command> {
        match e.clone() {
            Event::Upsert(p) => t.upsert(*p),
            Event::Remove(id) => t.remove(&format!("p{id}")),
            Event::Learn(id, port) => {
                let id = format!("p{id}");
                let Some(ep) = t.peer(&id).and_then(|p| p.view.private) else {
                    return Vec::new();
                };
                t.learn_port(&id, SocketAddrV4::new(*ep.ip(), 40000 + port))
            }
            Event::Policy(p) => t.set_policy(p),
            Event::Suspend(s) => t.set_suspended(s),
            Event::Local(last, vpc, pods) => t.set_local(LocalNode {
                overlay_ip: Ipv4Addr::new(10, 77, 0, last),
                prefixes: if pods {
                    vec!["10.244.9.0/24".parse().unwrap()]
                } else {
                    Vec::new()
                },
                view: view(
                    if vpc { "v1" } else { "v2" },
                    "198.18.1.2:8055",
                    "192.168.1.10:8055",
                ),
                ..local()
            }),
        }
    }

    /// Commands compared by value (a snapshot by its contents).
    fn same(a: &Command, b: &Command) -> bool {
        match (a, b) {
            (Command::Publish(x), Command::Publish(y)) => x == y,
            _ => format!("{a:?}") == format!("{b:?}"),
        }
    }

    proptest::proptest! {
        /// Reconciling only the changed peer emits exactly what reconciling every peer does,
        /// and leaves the same table and snapshot behind (which is a from-scratch one).
        #[test]
        fn incremental_reconcile_matches_a_full_one(
            events in proptest::collection::vec(event(), 1..60),
            cap in proptest::option::of(2..5u32),
        ) {
            // With a cap, peers run out of counter slots and wait for one.
            let slots = || Slots {
                cap,
                ..Slots::default()
            };
            let mut inc = PeerTable {
                slots: slots(),
                ..PeerTable::default()
            };
            let mut full = PeerTable {
                full_only: true,
                slots: slots(),
                ..PeerTable::default()
            };
            for e in &events {
                let (a, b) = (apply(&mut inc, e), apply(&mut full, e));
                proptest::prop_assert!(
                    a.len() == b.len() && a.iter().zip(&b).all(|(a, b)| same(a, b)),
                    "{e:?}: {a:?} != {b:?}"
                );
                proptest::prop_assert_eq!(&inc.installed, &full.installed);
                proptest::prop_assert_eq!(&inc.learned, &full.learned);
                proptest::prop_assert_eq!(&inc.waiting, &full.waiting);
                proptest::prop_assert_eq!(&inc.forwarding, &full.forwarding);
                let scratch = Forwarding::new(
                    inc.local.as_ref().map(|l| (l.node_index, l.overlay_ip)),
                    &inc.installed,
                )
                .with_local_prefixes(inc.local_prefixes());
                if inc.set_local.is_some() {
                    proptest::prop_assert_eq!(&*inc.forwarding, &scratch);
                }
            }
        }
    }
}
