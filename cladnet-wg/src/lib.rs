//! A sans-IO implementation of the standard WireGuard protocol, for CLADNet's SEALED links.
//!
//! It speaks the exact wire format of the Linux kernel module, wireguard-go and boringtun
//! (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake, mac1/mac2 and cookie replies, transport
//! messages with a receiver index and a 64-bit counter), with their timers and limits.
//!
//! Sans-IO means the crate owns no socket, TUN device, thread or clock: the caller passes in
//! datagrams, inner packets and the current [`Instant`](std::time::Instant), gets back an
//! [`Action`] naming its next step, and services timers through `poll_timeout` /
//! `update_timers`. Randomness comes from a caller-supplied [`CryptoRandom`]; wall-clock time for
//! handshake timestamps from a [`WallClock`] anchored by the caller. Transport packets are
//! encrypted and decrypted straight into caller buffers, without allocation.
//!
//! - [`Device`]: our static key and the table of allowed peers; demultiplexes datagrams by
//!   receiver index, identifies initiators by their static key, sends cookie replies under load.
//! - [`Peer`]: the same for a single peer.
//!
//! ```
//! use std::time::{Instant, SystemTime};
//! use cladnet_wg::{Action, Device, PeerConfig, PrivateKey, WallClock};
//! use rand::SeedableRng as _;
//!
//! let now = Instant::now();
//! let clock = WallClock::new(now, SystemTime::now());
//! let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(1);
//! let (a_key, b_key) = (PrivateKey::generate(&mut rng), PrivateKey::generate(&mut rng));
//! let (a_addr, b_addr) = ("192.0.2.1:8055".parse().unwrap(), "192.0.2.2:8055".parse().unwrap());
//!
//! let mut a = Device::new(a_key.clone(), rand::rngs::ChaCha20Rng::seed_from_u64(2), clock);
//! let mut b = Device::new(b_key.clone(), rand::rngs::ChaCha20Rng::seed_from_u64(3), clock);
//! let mut b_config = PeerConfig::new(b_key.public_key());
//! b_config.endpoint = Some(b_addr);
//! let b_on_a = a.add_peer(now, b_config).unwrap();
//! b.add_peer(now, PeerConfig::new(a_key.public_key())).unwrap();
//!
//! // An IPv4 packet from 10.0.0.1 to 10.0.0.2: no session yet, so A queues it and initiates.
//! let mut packet = [0_u8; 20];
//! packet[0] = 0x45;
//! packet[3] = 20;
//! packet[12..16].copy_from_slice(&[10, 0, 0, 1]);
//! packet[16..20].copy_from_slice(&[10, 0, 0, 2]);
//! let (mut buf_a, mut buf_b) = ([0_u8; 1500], [0_u8; 1500]);
//! let Action::WriteToNetwork { datagram, .. } = a.encapsulate(now, b_on_a, &packet, &mut buf_a) else { panic!() };
//! // B answers the initiation; A completes the handshake and sends the queued packet.
//! let (_, Action::WriteToNetwork { datagram, .. }) = b.decapsulate(now, a_addr, datagram, &mut buf_b) else { panic!() };
//! let (_, Action::WriteToNetwork { datagram, .. }) = a.decapsulate(now, b_addr, datagram, &mut buf_a) else { panic!() };
//! let (_, Action::WriteToTunnel { packet: inner, source }) = b.decapsulate(now, a_addr, datagram, &mut buf_b) else { panic!() };
//! assert_eq!(inner, &packet[..]);
//! assert_eq!(source, std::net::Ipv4Addr::new(10, 0, 0, 1));
//! ```
#![forbid(unsafe_code)]

mod action;
pub mod constants;
mod cookie;
mod data;
mod device;
mod error;
mod handshake;
mod inner;
mod keys;
mod messages;
mod peer;
mod ratelimit;
mod replay;
mod rng;
mod session;
mod single;
mod time;
mod timers;

#[cfg(test)]
extern crate self as cladnet_wg;
#[cfg(test)]
mod tests;

pub use action::{Action, Event};
pub use data::{PeerData, receiver_slot};
pub use device::{Device, PeerId};
pub use error::{ConfigError, Error};
pub use keys::{KEY_LEN, KeyParseError, PresharedKey, PrivateKey, PublicKey};
pub use messages::{MessageType, message_type};
pub use peer::{PeerConfig, PeerStats};
pub use ratelimit::{GateVerdict, HandshakeGate, LoadTracker, ReadInitiation};
pub use rng::CryptoRandom;
pub use single::Peer;
pub use time::WallClock;

/// The agent moves devices and peers between threads.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Device>();
    assert_send::<Peer>();
    const fn assert_sync<T: Send + Sync>() {}
    assert_sync::<PeerData>();
};
