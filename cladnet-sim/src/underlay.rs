//! The virtual underlay: hosts with private addresses, each behind its own NAT (or none),
//! sites whose hosts reach each other privately, and impairments on every datagram (loss,
//! duplication, reordering through random extra delay). Addresses change when a host roams.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use crate::rng::Rng;

/// The tunnel port every host uses.
pub const TUNNEL_PORT: u16 = 8055;

/// The controller's reflector on the public underlay.
pub const REFLECTOR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 8053);

/// How a host reaches the public underlay.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Nat {
    /// The host's address is public.
    Public,
    /// A 1:1 NAT (a cloud's elastic address): the public address maps to the host, ports are
    /// kept, and anyone may send to it.
    OneToOne,
    /// A port-translating NAT: every remote *address* the host sends to gets its own public
    /// port (address-dependent mapping), so a peer sees another port than the reflector
    /// did; inbound datagrams to a mapped port pass from anyone (endpoint-independent
    /// filtering). Peers must learn the port from the host's packets.
    PortTranslating,
}

/// Impairments applied to every datagram on the public underlay.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairments {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back 20–80 ms (later ones overtake it).
    pub reorder: f64,
}

/// One simulated host.
#[derive(Clone, Debug)]
struct Host {
    private: SocketAddrV4,
    site: u16,
    nat: Nat,
    public_ip: Ipv4Addr,
    /// Port-translating NAT: remote address → public port, and back.
    mapped: BTreeMap<Ipv4Addr, u16>,
    by_port: BTreeMap<u16, Ipv4Addr>,
    up: bool,
}

/// A datagram in flight: `from` is the source as the receiver sees it (after NAT).
#[derive(Clone, Debug)]
pub struct Datagram {
    /// Source address and port after any NAT on the way out.
    pub from: SocketAddrV4,
    /// Destination as the sender addressed it.
    pub to: SocketAddrV4,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// Who a datagram reaches.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Receiver {
    /// A host (by index).
    Host(usize),
    /// The controller's reflector.
    Reflector,
}

/// Counters, for traces and for tests that check the impairments were applied.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct UnderlayStats {
    /// Datagrams sent.
    pub sent: u64,
    /// Dropped by the loss impairment.
    pub lost: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams held back.
    pub reordered: u64,
    /// Arrived where no host listens (an old address, an unmapped port, a stopped host).
    pub unroutable: u64,
}

/// The virtual underlay.
#[derive(Debug)]
pub struct Underlay {
    hosts: Vec<Host>,
    impairments: Impairments,
    rng: Rng,
    next_public: u32,
    next_port: u16,
    stats: UnderlayStats,
}

impl Underlay {
    /// An empty underlay drawing its randomness from `rng`.
    pub fn new(rng: Rng, impairments: Impairments) -> Self {
        Self {
            hosts: Vec::new(),
            impairments,
            rng,
            next_public: u32::from(Ipv4Addr::new(198, 18, 0, 1)),
            next_port: 20_000,
            stats: UnderlayStats::default(),
        }
    }

    /// Changes the impairments from now on.
    pub fn set_impairments(&mut self, impairments: Impairments) {
        self.impairments = impairments;
    }

    /// Adds a host in `site` behind `nat`; returns its index.
    pub fn add_host(&mut self, site: u16, nat: Nat) -> usize {
        let i = self.hosts.len();
        let [_, _, hi, lo] = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
        let public_ip = self.fresh_public();
        let private = match nat {
            Nat::Public => public_ip,
            Nat::OneToOne | Nat::PortTranslating => Ipv4Addr::new(172, 16, hi, lo),
        };
        self.hosts.push(Host {
            private: SocketAddrV4::new(private, TUNNEL_PORT),
            site,
            nat,
            public_ip,
            mapped: BTreeMap::new(),
            by_port: BTreeMap::new(),
            up: true,
        });
        i
    }

    fn fresh_public(&mut self) -> Ipv4Addr {
        self.next_public += 1;
        Ipv4Addr::from(self.next_public)
    }

    /// The host roams: it gets a new public address (behind a NAT, the NAT's; a public host
    /// its own) and every NAT mapping is gone.
    pub fn move_host(&mut self, h: usize) {
        let ip = self.fresh_public();
        let host = &mut self.hosts[h];
        host.public_ip = ip;
        if host.nat == Nat::Public {
            host.private = SocketAddrV4::new(ip, host.private.port());
        }
        host.mapped.clear();
        host.by_port.clear();
    }

    /// The host's NAT.
    pub fn nat(&self, h: usize) -> Nat {
        self.hosts[h].nat
    }

    /// The host stops: nothing reaches it any more.
    pub fn stop_host(&mut self, h: usize) {
        self.hosts[h].up = false;
    }

    /// The host's private endpoint and site.
    pub fn private(&self, h: usize) -> (SocketAddrV4, u16) {
        (self.hosts[h].private, self.hosts[h].site)
    }

    /// The host behind a NAT whose private endpoint `to` is, when it shares host `h`'s site:
    /// such datagrams take the site's private network, without NAT or impairments. (A public
    /// host's address is reached over the public underlay, even from its own site.)
    fn site_peer(&self, h: usize, to: SocketAddrV4) -> Option<usize> {
        let site = self.hosts[h].site;
        self.hosts
            .iter()
            .position(|g| g.nat != Nat::Public && g.private == to && g.site == site)
    }

    /// Where datagrams from host `h` to `to` come from, as the receiver sees them; creates the
    /// NAT mapping if there is none.
    fn source_towards(&mut self, h: usize, to: SocketAddrV4) -> (SocketAddrV4, bool) {
        if self.site_peer(h, to).is_some() {
            return (self.hosts[h].private, true);
        }
        let host = &self.hosts[h];
        let from = match host.nat {
            Nat::Public => host.private,
            Nat::OneToOne => SocketAddrV4::new(host.public_ip, host.private.port()),
            Nat::PortTranslating => {
                let port = match host.mapped.get(to.ip()) {
                    Some(p) => *p,
                    None => {
                        let p = self.next_port;
                        self.next_port = self.next_port.checked_add(1).unwrap_or(20_000);
                        let host = &mut self.hosts[h];
                        host.mapped.insert(*to.ip(), p);
                        host.by_port.insert(p, *to.ip());
                        p
                    }
                };
                SocketAddrV4::new(self.hosts[h].public_ip, port)
            }
        };
        (from, false)
    }

    /// Where a receiver at address `at` sees host `h`'s datagrams come from, if the host has
    /// sent any there (for the staleness check of learnt ports).
    pub fn seen_at(&self, h: usize, at: Ipv4Addr) -> Option<SocketAddrV4> {
        let host = &self.hosts[h];
        match host.nat {
            Nat::Public => Some(host.private),
            Nat::OneToOne => Some(SocketAddrV4::new(host.public_ip, host.private.port())),
            Nat::PortTranslating => host
                .mapped
                .get(&at)
                .map(|p| SocketAddrV4::new(host.public_ip, *p)),
        }
    }

    /// Sends `payload` from host `h` (or from the reflector, `h` = `None`) to `to`: returns the
    /// copies that arrive and after how long (none when lost, two when duplicated).
    pub fn send(
        &mut self,
        h: Option<usize>,
        to: SocketAddrV4,
        payload: Vec<u8>,
    ) -> Vec<(Duration, Datagram)> {
        self.stats.sent += 1;
        let (from, private) = match h {
            Some(h) if to.ip().is_private() && self.site_peer(h, to).is_none() => {
                // Another site's private address: not routed on the public underlay.
                self.stats.unroutable += 1;
                return Vec::new();
            }
            Some(h) => self.source_towards(h, to),
            None => (REFLECTOR, false),
        };
        let d = Datagram { from, to, payload };
        if private {
            return vec![(Duration::from_micros(200), d)];
        }
        if self.rng.chance(self.impairments.loss) {
            self.stats.lost += 1;
            return Vec::new();
        }
        let first = self.delay();
        if self.rng.chance(self.impairments.duplicate) {
            self.stats.duplicated += 1;
            return vec![(first, d.clone()), (self.delay(), d)];
        }
        vec![(first, d)]
    }

    /// One datagram's delay: 2–10 ms, sometimes 20–80 ms more.
    fn delay(&mut self) -> Duration {
        let base = self.rng.millis(2, 10);
        if self.rng.chance(self.impairments.reorder) {
            self.stats.reordered += 1;
            return base + self.rng.millis(20, 80);
        }
        base
    }

    /// Who receives `d` now (after any address change since it was sent), and its source.
    pub fn receiver(&mut self, d: &Datagram) -> Option<Receiver> {
        if d.to == REFLECTOR {
            return Some(Receiver::Reflector);
        }
        let found = self.hosts.iter().position(|g| {
            g.up && match g.nat {
                _ if g.private == d.to => true,
                Nat::Public => false,
                Nat::OneToOne => d.to == SocketAddrV4::new(g.public_ip, g.private.port()),
                Nat::PortTranslating => {
                    *d.to.ip() == g.public_ip && g.by_port.contains_key(&d.to.port())
                }
            }
        });
        if found.is_none() {
            self.stats.unroutable += 1;
        }
        found.map(Receiver::Host)
    }

    /// The counters so far.
    pub fn stats(&self) -> UnderlayStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn nats_translate_and_roaming_drops_old_addresses() {
        let mut u = Underlay::new(Rng::new(1), Impairments::default());
        let one = u.add_host(0, Nat::OneToOne);
        let pt = u.add_host(1, Nat::PortTranslating);
        let public = u.add_host(2, Nat::Public);
        let to_public = u.private(public).0;
        let [(_, d)] = &u.send(Some(one), to_public, vec![1])[..] else {
            panic!()
        };
        assert_eq!(d.from.port(), TUNNEL_PORT, "1:1 keeps the port");
        assert_eq!(u.receiver(d), Some(Receiver::Host(public)));
        // The port-translating NAT gives the reflector and the peer different ports.
        let [(_, r)] = &u.send(Some(pt), REFLECTOR, vec![2])[..] else {
            panic!()
        };
        let [(_, p)] = &u.send(Some(pt), to_public, vec![3])[..] else {
            panic!()
        };
        assert_eq!(r.from.ip(), p.from.ip());
        assert_ne!(r.from.port(), p.from.port());
        assert_eq!(u.seen_at(pt, *to_public.ip()), Some(p.from));
        // Replies to either mapping reach the host, from anyone.
        for to in [r.from, p.from] {
            let [(_, back)] = &u.send(Some(one), to, vec![4])[..] else {
                panic!()
            };
            assert_eq!(u.receiver(back), Some(Receiver::Host(pt)));
        }
        u.move_host(pt);
        let [(_, stale)] = &u.send(Some(one), p.from, vec![5])[..] else {
            panic!()
        };
        assert_eq!(u.receiver(stale), None, "old address after a move");
        assert_eq!(u.stats().unroutable, 1);
        assert!(
            u.send(Some(public), ep("172.16.0.0:8055"), vec![6])
                .is_empty(),
            "another site's private address"
        );
        assert_eq!(u.stats().unroutable, 2);
    }

    #[test]
    fn impairments_lose_duplicate_and_reorder() {
        let impairments = Impairments {
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.2,
        };
        let mut u = Underlay::new(Rng::new(3), impairments);
        let a = u.add_host(0, Nat::Public);
        let b = u.add_host(1, Nat::Public);
        let to = u.private(b).0;
        let arrived: usize = (0..10_000)
            .map(|_| u.send(Some(a), to, vec![0]).len())
            .sum();
        let s = u.stats();
        assert!((800..1200).contains(&s.lost), "{s:?}");
        assert!(s.duplicated > 300 && s.reordered > 1500, "{s:?}");
        assert_eq!(arrived as u64, 10_000 - s.lost + s.duplicated);
    }
}
