//! Userspace dataplane counters: per peer and per drop reason, updated lock-free from the
//! packet threads and read by the metrics endpoint and `cladnet-agent status`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use cladnet_common::plain;
use cladnet_core::node::{Dropped, RouteMiss};
use cladnet_wg::Error as WgError;

/// Why the userspace engine dropped a packet. Names are stable metric labels.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Drop {
    /// A PLAIN datagram failed validation.
    Plain(plain::DropReason),
    /// A WireGuard message was malformed or failed its MAC, or named an unknown index or key.
    WgInvalid,
    /// A WireGuard transport message failed authentication (forged or corrupted).
    WgDecrypt,
    /// A WireGuard transport message was a replay.
    WgReplay,
    /// A handshake message was refused (timestamp replay, flood, bad cookie).
    WgHandshake,
    /// A decrypted packet's inner source is not the sending peer's address (cryptokey routing).
    WgSpoofedSource,
    /// A decrypted packet is not a valid IP packet.
    WgBadInner,
    /// The first byte names neither WireGuard nor CLAD.
    UnknownMessage,
    /// An outgoing packet's destination is no peer.
    NoRoute,
    /// The peer has no known underlay endpoint yet.
    NoEndpoint,
    /// An outgoing packet is not IPv4.
    NotIpv4,
    /// The handshake queue overflowed or the session is unusable.
    WgNoSession,
    /// The TUN device handed over a packet its offload metadata does not describe.
    BadTunPacket,
    /// A reflector answer from another address than the probed reflector, or with the nonce
    /// of no probe in flight.
    UnsolicitedReflector,
    /// A PLAIN peer seen on yet another port of its address within a second of the last
    /// change (see `Node::handle_datagram`).
    PlainPortChangeLimited,
    /// An outgoing packet is larger than its peer's path carries (a DF packet is answered
    /// with ICMP "fragmentation needed").
    TooBig,
    /// Under load, a handshake message with a valid cookie came from a source address over
    /// its rate (20 per second, bursts of 5).
    WgRateLimited,
    /// The queue of handshake messages waiting for the handshake thread was full.
    WgHandshakeQueueFull,
    /// Under load, a handshake message without a valid cookie got no cookie reply: its source
    /// address (20 per second, bursts of 5) or everyone together (2000 per second) had
    /// their share.
    WgCookieLimited,
}

impl Drop {
    /// Every reason, in counter order.
    pub const ALL: [Self; 26] = [
        Self::Plain(plain::DropReason::Truncated),
        Self::Plain(plain::DropReason::BadVersion),
        Self::Plain(plain::DropReason::BadHeader),
        Self::Plain(plain::DropReason::UnknownPeer),
        Self::Plain(plain::DropReason::WrongNode),
        Self::Plain(plain::DropReason::SpoofedSource),
        Self::Plain(plain::DropReason::BadInner),
        Self::Plain(plain::DropReason::WrongDestination),
        Self::WgInvalid,
        Self::WgDecrypt,
        Self::WgReplay,
        Self::WgHandshake,
        Self::WgSpoofedSource,
        Self::WgBadInner,
        Self::UnknownMessage,
        Self::NoRoute,
        Self::NoEndpoint,
        Self::NotIpv4,
        Self::WgNoSession,
        Self::BadTunPacket,
        Self::UnsolicitedReflector,
        Self::PlainPortChangeLimited,
        Self::TooBig,
        Self::WgRateLimited,
        Self::WgHandshakeQueueFull,
        Self::WgCookieLimited,
    ];

    /// Counter slot.
    fn index(self) -> usize {
        match self {
            Self::Plain(r) => r as usize,
            Self::WgInvalid => 8,
            Self::WgDecrypt => 9,
            Self::WgReplay => 10,
            Self::WgHandshake => 11,
            Self::WgSpoofedSource => 12,
            Self::WgBadInner => 13,
            Self::UnknownMessage => 14,
            Self::NoRoute => 15,
            Self::NoEndpoint => 16,
            Self::NotIpv4 => 17,
            Self::WgNoSession => 18,
            Self::BadTunPacket => 19,
            Self::UnsolicitedReflector => 20,
            Self::PlainPortChangeLimited => 21,
            Self::TooBig => 22,
            Self::WgRateLimited => 23,
            Self::WgHandshakeQueueFull => 24,
            Self::WgCookieLimited => 25,
        }
    }

    /// The reason for a datagram or packet the Node refused.
    pub fn from_node(d: Dropped) -> Self {
        match d {
            Dropped::Plain(r) => Self::Plain(r),
            Dropped::PortChangeLimited => Self::PlainPortChangeLimited,
            Dropped::Route(RouteMiss::NotIpv4) => Self::NotIpv4,
            Dropped::Route(RouteMiss::NoRoute) => Self::NoRoute,
            Dropped::NoEndpoint => Self::NoEndpoint,
            Dropped::Sealed => Self::WgNoSession,
            Dropped::WireGuard(e) => Self::from_wg(e).unwrap_or(Self::WgInvalid),
            Dropped::SpoofedSource => Self::WgSpoofedSource,
            Dropped::UnknownMessage => Self::UnknownMessage,
        }
    }

    /// Stable snake_case name (metrics label); PLAIN reasons are prefixed `plain_`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain(r) => match r {
                plain::DropReason::Truncated => "plain_truncated",
                plain::DropReason::BadVersion => "plain_bad_version",
                plain::DropReason::BadHeader => "plain_bad_header",
                plain::DropReason::UnknownPeer => "plain_unknown_peer",
                plain::DropReason::WrongNode => "plain_wrong_node",
                plain::DropReason::SpoofedSource => "plain_spoofed_source",
                plain::DropReason::BadInner => "plain_bad_inner",
                plain::DropReason::WrongDestination => "plain_wrong_destination",
            },
            Self::WgInvalid => "wg_invalid",
            Self::WgDecrypt => "wg_decrypt_failed",
            Self::WgReplay => "wg_replay",
            Self::WgHandshake => "wg_handshake_refused",
            Self::WgSpoofedSource => "wg_spoofed_source",
            Self::WgBadInner => "wg_bad_inner",
            Self::UnknownMessage => "unknown_message",
            Self::NoRoute => "no_route",
            Self::NoEndpoint => "no_endpoint",
            Self::NotIpv4 => "not_ipv4",
            Self::WgNoSession => "wg_no_session",
            Self::BadTunPacket => "bad_tun_packet",
            Self::UnsolicitedReflector => "reflector_unsolicited",
            Self::PlainPortChangeLimited => "plain_port_change_limited",
            Self::TooBig => "too_big",
            Self::WgRateLimited => "wg_rate_limited",
            Self::WgHandshakeQueueFull => "wg_handshake_queue_full",
            Self::WgCookieLimited => "wg_cookie_limited",
        }
    }

    /// The drop class of a WireGuard error; `None` for errors that are not drops of a
    /// received packet (configuration and buffer errors).
    pub fn from_wg(e: WgError) -> Option<Self> {
        Some(match e {
            WgError::MalformedMessage
            | WgError::InvalidMac
            | WgError::UnknownReceiverIndex
            | WgError::UnknownPeer
            | WgError::HandshakeFailed => Self::WgInvalid,
            WgError::TimestampReplay | WgError::InitiationFlood | WgError::InvalidCookieReply => {
                Self::WgHandshake
            }
            WgError::RateLimited => Self::WgRateLimited,
            WgError::CookieRateLimited => Self::WgCookieLimited,
            WgError::DecryptionFailed => Self::WgDecrypt,
            WgError::Replay => Self::WgReplay,
            WgError::InvalidInnerPacket => Self::WgBadInner,
            WgError::KeypairExpired => Self::WgNoSession,
            WgError::NoEndpoint => Self::NoEndpoint,
            WgError::NoSession => Self::WgNoSession,
            _ => return None,
        })
    }
}

/// Counts by drop reason.
#[derive(Debug, Default)]
pub struct DropCounters([AtomicU64; Drop::ALL.len()]);

impl DropCounters {
    /// Counts one drop.
    pub fn add(&self, reason: Drop) {
        self.0[reason.index()].fetch_add(1, Relaxed);
    }

    /// Current count for `reason`.
    pub fn get(&self, reason: Drop) -> u64 {
        self.0[reason.index()].load(Relaxed)
    }

    /// Every reason with its count, zeros included (metrics show the full set).
    pub fn all(&self) -> Vec<(Drop, u64)> {
        Drop::ALL.iter().map(|&r| (r, self.get(r))).collect()
    }

    /// All non-zero counts.
    pub fn snapshot(&self) -> Vec<(Drop, u64)> {
        Drop::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

/// Traffic of one peer (inner packet bytes, as the overlay sees them).
#[derive(Debug, Default)]
pub struct PeerCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    /// Unix milliseconds of the last packet received; 0 = never.
    last_rx_ms: AtomicU64,
    /// Largest inner packet the peer's path carries (its route MTU); 0 = not known.
    mtu_limit: AtomicU32,
}

/// A copy of one peer's counters.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Serialize)]
pub struct PeerTraffic {
    /// Packets sent.
    pub tx_packets: u64,
    /// Inner bytes sent.
    pub tx_bytes: u64,
    /// Packets received and delivered.
    pub rx_packets: u64,
    /// Inner bytes received and delivered.
    pub rx_bytes: u64,
    /// Unix milliseconds of the last packet received; 0 = never.
    pub last_rx_ms: u64,
}

impl PeerCounters {
    /// Counts a packet sent.
    pub fn sent(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Counts a packet delivered, at `now_ms` (Unix milliseconds).
    pub fn received(&self, bytes: usize, now_ms: u64) {
        self.rx_packets.fetch_add(1, Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Relaxed);
        self.last_rx_ms.store(now_ms, Relaxed);
    }

    /// Records the largest inner packet the peer's path carries (path MTU discovery).
    pub fn set_mtu_limit(&self, mtu: u32) {
        self.mtu_limit.store(mtu, Relaxed);
    }

    /// The largest inner packet the peer's path carries; 0 = not known.
    pub fn mtu_limit(&self) -> u32 {
        self.mtu_limit.load(Relaxed)
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> PeerTraffic {
        PeerTraffic {
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            last_rx_ms: self.last_rx_ms.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let mut slots: Vec<usize> = Drop::ALL.iter().map(|r| r.index()).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..Drop::ALL.len()).collect::<Vec<_>>());
        let mut names: Vec<&str> = Drop::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Drop::ALL.len());
    }

    #[test]
    fn counters_add_up() {
        let d = DropCounters::default();
        d.add(Drop::WgReplay);
        d.add(Drop::WgReplay);
        d.add(Drop::Plain(plain::DropReason::WrongNode));
        assert_eq!(d.get(Drop::WgReplay), 2);
        assert_eq!(d.snapshot().len(), 2);
        let p = PeerCounters::default();
        p.sent(100);
        p.received(60, 7);
        assert_eq!(
            p.snapshot(),
            PeerTraffic {
                tx_packets: 1,
                tx_bytes: 100,
                rx_packets: 1,
                rx_bytes: 60,
                last_rx_ms: 7
            }
        );
    }
}
