//! The staleness check: every copy of a fact must agree. For each running node it compares
//! what the engine holds (every copy it keeps) with what the Node owns, the Node's forwarding
//! snapshot with its table, the Node's peers with what the controller says under the policy,
//! and the controller's endpoints with where the underlay really puts each node. A learnt
//! port counts as current only when it is the port the peer's NAT really uses towards this
//! node. The WireGuard control side inside the Node holds exactly the SEALED peers of its
//! table, with their keys. This is the class of bug issue 12 calls "four copies".

use std::collections::{BTreeMap, BTreeSet};

use cladnet_core::{
    node::{LocalConfig, PeerConfig},
    policy::LinkMode,
};

use crate::harness::Sim;

/// One disagreement between two copies of the same fact.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Stale {
    /// The node whose state disagrees.
    pub node: String,
    /// Which copy, against which.
    pub copy: String,
    /// What differs.
    pub detail: String,
}

impl Sim {
    /// Every stale copy now (empty when all agree). Call it after the network settled: a
    /// Watch event in flight is not stale, only late.
    pub fn stale(&self) -> Vec<Stale> {
        let mut out = Vec::new();
        let policy = self.controller.policy();
        let records = self.controller.records();
        for m in self.members.iter().filter(|m| m.alive && m.joined) {
            let mut push = |copy: &str, detail: String| {
                out.push(Stale {
                    node: m.id.clone(),
                    copy: copy.to_owned(),
                    detail,
                });
            };
            let installed = m.node.table().installed();
            // Engine copies against the Node.
            for (name, copy) in m.engine.copies() {
                diff(&copy, installed, |d| push(&format!("{name} vs node"), d));
            }
            let snapshot: BTreeMap<String, PeerConfig> = m
                .node
                .forwarding()
                .peers()
                .map(|p| (p.node_id.clone(), PeerConfig::clone(p)))
                .collect();
            diff(&snapshot, installed, |d| {
                push("node snapshot vs node table", d)
            });
            // The WireGuard control side against the Node's table: one WireGuard peer, with
            // the peer's key, for every SEALED peer and for nothing else.
            let sealed: BTreeMap<&String, [u8; 32]> = installed
                .iter()
                .filter(|(_, p)| p.mode == LinkMode::Sealed)
                .map(|(id, p)| (id, p.public_key))
                .collect();
            let held = m.node.sealed_peers();
            let held: BTreeMap<&String, [u8; 32]> =
                held.iter().map(|(id, (key, _))| (id, *key)).collect();
            if sealed != held {
                push(
                    "wireguard peers vs node table",
                    format!(
                        "{:?} != {:?}",
                        held.keys().collect::<Vec<_>>(),
                        sealed.keys().collect::<Vec<_>>()
                    ),
                );
            }
            // The Node against the controller.
            let Some(me) = records.get(&m.id) else {
                push("node vs controller", "no record".into());
                continue;
            };
            let want_local = (me.node_index(), me.overlay_ip);
            let local = m
                .engine
                .local()
                .map(|l: &LocalConfig| (l.node_index, l.overlay_ip));
            if local != Some(want_local) {
                push(
                    "engine local vs controller",
                    format!("{local:?} != {want_local:?}"),
                );
            }
            if !self.controller.connected(&m.id) {
                push("stream", "watch stream not open".into());
            }
            let want: BTreeSet<&String> = records
                .values()
                .filter(|r| r.node_id != m.id && r.state.reachable())
                .map(|r| &r.node_id)
                .collect();
            let have: BTreeSet<&String> = installed.keys().collect();
            if want != have {
                let extra: Vec<_> = have.difference(&want).collect();
                let missing: Vec<_> = want.difference(&have).collect();
                push(
                    "node vs controller",
                    format!("extra {extra:?} missing {missing:?}"),
                );
            }
            for (id, p) in installed {
                let Some(r) = records.get(id) else { continue };
                let link = policy.link(&me.view, &r.view);
                if (p.node_index, p.overlay_ip, p.mode) != (r.node_index(), r.overlay_ip, link.mode)
                {
                    push(
                        "node vs controller",
                        format!("{id}: {p:?} vs {r:?} {link:?}"),
                    );
                }
                let learnt = || {
                    let peer = &self.members[self.member(id)?];
                    let at = *me.view.public?.ip();
                    self.underlay.seen_at(peer.host, at)
                };
                if p.endpoint != link.endpoint && !(p.endpoint.is_some() && p.endpoint == learnt())
                {
                    push(
                        "node endpoint vs controller and underlay",
                        format!(
                            "{id}: {:?}, policy {:?}, seen {:?}",
                            p.endpoint,
                            link.endpoint,
                            learnt()
                        ),
                    );
                }
            }
            // The controller against the underlay: the endpoint it hands out is the node's.
            let (private, _) = self.underlay.private(m.host);
            let real = self
                .underlay
                .seen_at(m.host, *crate::underlay::REFLECTOR.ip());
            if me.view.public != real || me.view.private != Some(private) {
                push(
                    "controller vs underlay",
                    format!("{:?} != {real:?}", me.view.public),
                );
            }
        }
        out
    }

    /// How many installed peers, over all running nodes, use a port learnt from packets
    /// rather than the endpoint the controller handed out.
    pub fn learnt_endpoints(&self) -> usize {
        let records = self.controller.records();
        let policy = self.controller.policy();
        self.members
            .iter()
            .filter(|m| m.alive)
            .filter_map(|m| Some((m, records.get(&m.id)?)))
            .flat_map(|(m, me)| {
                m.node.table().installed().iter().filter(move |(id, p)| {
                    records
                        .get(*id)
                        .is_some_and(|r| policy.link(&me.view, &r.view).endpoint != p.endpoint)
                })
            })
            .count()
    }

    fn member(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }
}

/// Reports every peer whose config differs between `copy` and `node`.
fn diff(
    copy: &BTreeMap<String, PeerConfig>,
    node: &BTreeMap<String, PeerConfig>,
    mut report: impl FnMut(String),
) {
    let ids: BTreeSet<&String> = copy.keys().chain(node.keys()).collect();
    for id in ids {
        let (a, b) = (copy.get(id), node.get(id));
        if a != b {
            report(format!("{id}: {a:?} != {b:?}"));
        }
    }
}
