//! Two in-memory WireGuard devices joined by a lossless virtual network, with a virtual clock.
//! Shared by the integration tests (and, through `#[path]`, by the crate's unit tests).

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the harness"
)]
#![allow(unreachable_pub, reason = "test helper module")]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use cladnet_wg::{
    Action, Device, Error, Event, PeerConfig, PeerId, PresharedKey, PrivateKey, WallClock,
};
use rand::SeedableRng as _;
use rand::rngs::ChaCha20Rng;

/// One side of the virtual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// A datagram in flight.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub from: Side,
    pub bytes: Vec<u8>,
}

pub struct Node {
    pub device: Device,
    pub key: PrivateKey,
    /// The other side, as a peer of this device.
    pub peer: PeerId,
    pub addr: SocketAddr,
    /// Inner packets written to this node's TUN.
    pub tun: Vec<Vec<u8>>,
    /// Errors returned by decapsulate.
    pub errors: Vec<Error>,
    pub events: Vec<Event>,
}

pub struct Net {
    pub start: Instant,
    pub now: Instant,
    pub a: Node,
    pub b: Node,
    /// Datagrams sent and not yet delivered, in order.
    pub wire: Vec<Datagram>,
}

pub const BUF: usize = 2048;

pub fn addr_a() -> SocketAddr {
    "198.51.100.1:8055".parse().unwrap()
}

pub fn addr_b() -> SocketAddr {
    "198.51.100.2:8055".parse().unwrap()
}

/// Options for building a pair.
#[derive(Default)]
pub struct Options {
    pub seed: u64,
    pub psk_a: Option<[u8; 32]>,
    pub psk_b: Option<[u8; 32]>,
    /// Whether B knows A's endpoint in advance (A always knows B's).
    pub b_knows_a: bool,
    pub keepalive_a: Option<Duration>,
}

impl Net {
    pub fn new() -> Self {
        Self::with(Options {
            seed: 7,
            ..Options::default()
        })
    }

    pub fn with(options: Options) -> Self {
        let start = Instant::now();
        let clock = WallClock::new(
            start,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        let mut keys = ChaCha20Rng::seed_from_u64(options.seed);
        let key_a = PrivateKey::generate(&mut keys);
        let key_b = PrivateKey::generate(&mut keys);
        let mut dev_a = Device::new(
            key_a.clone(),
            ChaCha20Rng::seed_from_u64(options.seed + 1),
            clock,
        );
        let mut dev_b = Device::new(
            key_b.clone(),
            ChaCha20Rng::seed_from_u64(options.seed + 2),
            clock,
        );

        let mut b_on_a = PeerConfig::new(key_b.public_key());
        b_on_a.endpoint = Some(addr_b());
        b_on_a.preshared_key = options.psk_a.map(PresharedKey::from_bytes);
        b_on_a.persistent_keepalive = options.keepalive_a;
        let mut a_on_b = PeerConfig::new(key_a.public_key());
        a_on_b.endpoint = options.b_knows_a.then(addr_a);
        a_on_b.preshared_key = options.psk_b.map(PresharedKey::from_bytes);

        let peer_b = dev_a.add_peer(start, b_on_a).unwrap();
        let peer_a = dev_b.add_peer(start, a_on_b).unwrap();
        let node = |device, key, peer, addr| Node {
            device,
            key,
            peer,
            addr,
            tun: Vec::new(),
            errors: Vec::new(),
            events: Vec::new(),
        };
        Self {
            start,
            now: start,
            a: node(dev_a, key_a, peer_b, addr_a()),
            b: node(dev_b, key_b, peer_a, addr_b()),
            wire: Vec::new(),
        }
    }

    pub fn node(&mut self, side: Side) -> &mut Node {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Encapsulates `packet` on `side`; the datagrams it causes go on the wire (timers are
    /// drained too, so a rekey initiation follows the data packet).
    pub fn send(&mut self, side: Side, packet: &[u8]) -> Option<Error> {
        let now = self.now;
        let mut out = [0_u8; BUF];
        let node = self.node(side);
        let action = node.device.encapsulate(now, node.peer, packet, &mut out);
        let result = match action {
            Action::WriteToNetwork { datagram, .. } => {
                let bytes = datagram.to_vec();
                self.wire.push(Datagram { from: side, bytes });
                None
            }
            Action::Err(error) => Some(error),
            _ => None,
        };
        self.drain_timers(side);
        result
    }

    /// Runs `update_timers` on `side` while it has output at the current time.
    pub fn drain_timers(&mut self, side: Side) {
        let now = self.now;
        let mut out = [0_u8; BUF];
        loop {
            let node = self.node(side);
            if node.device.poll_timeout().is_none_or(|at| at > now) {
                break;
            }
            match node.device.update_timers(now, &mut out) {
                (_, Action::WriteToNetwork { datagram, .. }) => {
                    let bytes = datagram.to_vec();
                    self.wire.push(Datagram { from: side, bytes });
                }
                (_, Action::Done) => break,
                (_, _) => {}
            }
        }
        let node = self.node(side);
        while let Some((_, event)) = node.device.poll_event() {
            node.events.push(event);
        }
    }

    /// Delivers one datagram to the other side of its sender and returns the receiver's
    /// action as owned data.
    pub fn deliver(&mut self, datagram: &Datagram) -> Delivery {
        let now = self.now;
        let to = datagram.from.other();
        let src = self.node(datagram.from).addr;
        let mut out = [0_u8; BUF];
        let node = self.node(to);
        let (peer, action) = node.device.decapsulate(now, src, &datagram.bytes, &mut out);
        let delivery = match action {
            Action::WriteToNetwork { datagram, .. } => Delivery::Network(datagram.to_vec()),
            Action::WriteToTunnel { packet, .. } => {
                node.tun.push(packet.to_vec());
                Delivery::Tunnel(packet.to_vec())
            }
            Action::Done => Delivery::Done,
            Action::Err(error) => {
                node.errors.push(error);
                Delivery::Err(error)
            }
        };
        if let Delivery::Network(bytes) = &delivery {
            self.wire.push(Datagram {
                from: to,
                bytes: bytes.clone(),
            });
        }
        let _ = peer;
        self.drain_timers(to);
        delivery
    }

    /// Delivers everything on the wire, including what the deliveries cause.
    pub fn deliver_all(&mut self) {
        while !self.wire.is_empty() {
            let datagram = self.wire.remove(0);
            self.deliver(&datagram);
        }
    }

    /// Takes the datagrams on the wire without delivering them.
    pub fn take_wire(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.wire)
    }

    /// Moves the clock forward by `by`, firing timers at their deadlines on the way and
    /// delivering what they send.
    pub fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        loop {
            let next = [self.a.device.poll_timeout(), self.b.device.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|at| *at <= target)
                .min();
            let Some(next) = next else {
                break;
            };
            self.now = self.now.max(next);
            self.drain_timers(Side::A);
            self.drain_timers(Side::B);
            self.deliver_all();
        }
        self.now = target;
        self.drain_timers(Side::A);
        self.drain_timers(Side::B);
        self.deliver_all();
    }

    /// Moves the clock without running any timer.
    pub fn jump(&mut self, by: Duration) {
        self.now += by;
    }

    /// Sends a packet A→B and delivers everything: afterwards the session is up.
    pub fn establish(&mut self) {
        self.send(
            Side::A,
            &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"hello"),
        );
        self.deliver_all();
        assert_eq!(
            self.b.tun.len(),
            1,
            "handshake did not deliver the first packet"
        );
        self.b.tun.clear();
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

/// What a delivery produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Network(Vec<u8>),
    Tunnel(Vec<u8>),
    Done,
    Err(Error),
}

/// A minimal IPv4 packet (header with correct total length, no checksum) carrying `payload`.
pub fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut packet = vec![0_u8; total];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&src);
    packet[16..20].copy_from_slice(&dst);
    packet[20..].copy_from_slice(payload);
    packet
}

/// The message type byte of a datagram.
pub fn kind(datagram: &[u8]) -> u8 {
    datagram[0]
}
