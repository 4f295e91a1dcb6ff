//! Delivery: inner packets from every node to every other, through the Nodes and the
//! underlay, and the record of which arrived.

use std::{net::Ipv4Addr, time::Duration};

use cladnet_core::{node::Dropped, policy::LinkMode};

use crate::{
    controller::Controller,
    harness::{Member, Sim},
};

impl Sim {
    /// An inner packet the Node wrote to node `i`'s TUN device.
    pub(crate) fn on_tun_write(&mut self, i: usize, packet: &[u8]) {
        let Some((src, dst, round)) = parse_probe(packet) else {
            self.note(&format!("tun {i} unknown packet"));
            return;
        };
        let from = self
            .members
            .iter()
            .position(|m| m.alive && overlay_ip(m, &self.controller) == Some(src));
        let to_me = overlay_ip(&self.members[i], &self.controller) == Some(dst);
        self.note(&format!(
            "tun {i} {src} -> {dst} round {round} {from:?} {to_me}"
        ));
        if let (Some(from), true) = (from, to_me) {
            self.delivered.insert((from, i, round));
        }
    }

    /// Sends an inner packet from every running, joined node to every other, through each
    /// Node (`handle_tun_packet` → transmits → underlay → `handle_datagram` →
    /// `poll_tun_packet`), up to `tries` rounds one second apart (a lost packet is sent again,
    /// as a ping would). SEALED pairs go through each Node's WireGuard sessions the same way
    /// (the first packet waits for a handshake). Returns the pairs that failed.
    pub fn all_pairs_deliver(&mut self, tries: u32) -> Vec<(usize, usize)> {
        let up: Vec<usize> = self
            .alive()
            .into_iter()
            .filter(|i| self.members[*i].joined)
            .collect();
        let mut pending: Vec<(usize, usize)> = up
            .iter()
            .flat_map(|a| up.iter().filter(move |b| *b != a).map(move |b| (*a, *b)))
            .collect();
        let first = self.rounds;
        for _ in 0..tries {
            let round = self.rounds;
            self.rounds += 1;
            for &(a, b) in &pending {
                if let Err(reason) = self.send_probe(a, b, round) {
                    self.count_drop("tx", reason);
                }
            }
            self.run_for(Duration::from_secs(1));
            pending.retain(|&(a, b)| {
                self.delivered
                    .range((a, b, first)..=(a, b, round))
                    .next()
                    .is_none()
            });
            if pending.is_empty() {
                break;
            }
        }
        pending
    }

    /// How many running pairs the controller's records and policy make SEALED.
    pub fn sealed_pairs(&self) -> usize {
        let up = self.alive();
        up.iter()
            .flat_map(|a| up.iter().filter(move |b| *b != a).map(move |b| (*a, *b)))
            .filter(|&(a, b)| self.link_mode(a, b) == Some(LinkMode::Sealed))
            .count()
    }

    /// The mode of the link from `a` to `b` as the controller's records and policy make it.
    fn link_mode(&self, a: usize, b: usize) -> Option<LinkMode> {
        let records = self.controller.records();
        let (ra, rb) = (
            records.get(&self.members[a].id)?,
            records.get(&self.members[b].id)?,
        );
        Some(self.controller.policy().link(&ra.view, &rb.view).mode)
    }

    /// Node `a` reads a probe packet for node `b` from its TUN device.
    fn send_probe(&mut self, a: usize, b: usize, round: u32) -> Result<(), Dropped> {
        let (Some(src), Some(dst)) = (
            overlay_ip(&self.members[a], &self.controller),
            overlay_ip(&self.members[b], &self.controller),
        ) else {
            return Err(Dropped::NoEndpoint);
        };
        let now = self.clock.now();
        let result = self.members[a]
            .node
            .handle_tun_packet(now, &probe_packet(src, dst, round));
        self.drive(a);
        result
    }
}

/// A node's overlay address, from its own record at the controller.
fn overlay_ip(m: &Member, controller: &Controller) -> Option<Ipv4Addr> {
    controller.records().get(&m.id).map(|r| r.overlay_ip)
}

/// Protocol number 253 (experimental): the simulator's own probe packets.
const PROBE_PROTO: u8 = 253;

/// An IPv4 packet from `src` to `dst` carrying `round`.
pub fn probe_packet(src: Ipv4Addr, dst: Ipv4Addr, round: u32) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&24u16.to_be_bytes());
    p[8] = 64;
    p[9] = PROBE_PROTO;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..24].copy_from_slice(&round.to_be_bytes());
    p
}

fn parse_probe(p: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u32)> {
    let p: &[u8; 24] = p.try_into().ok()?;
    (p[9] == PROBE_PROTO).then(|| {
        let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
        (
            ip(12),
            ip(16),
            u32::from_be_bytes([p[20], p[21], p[22], p[23]]),
        )
    })
}
