//! Feeds arbitrary datagrams to a WireGuard device that has one configured peer.
//!
//! Input layout: byte 0 picks the options (bit 0: under load, bit 1: use the device with an
//! established session, bits 2..: output buffer size class); the rest is the datagram. After
//! each datagram the device's timers run, with the clock moved by an input-dependent amount,
//! so that state changes triggered by the datagram are exercised too.

#![no_main]

use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use cladnet_wg::{Action, Device, PeerConfig, PeerId, PrivateKey, WallClock};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng as _;
use rand::rngs::ChaCha20Rng;

struct Target {
    device: Device,
    now: Instant,
}

fn device(seed: u64, peer_key: &PrivateKey, start: Instant) -> (Device, PeerId) {
    let clock = WallClock::new(start, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let own = PrivateKey::from_bytes([u8::try_from(seed).unwrap_or(0).wrapping_add(1); 32]);
    let mut device = Device::new(own, ChaCha20Rng::seed_from_u64(seed), clock);
    let mut config = PeerConfig::new(peer_key.public_key());
    config.endpoint = Some("192.0.2.1:8055".parse().unwrap());
    let id = device.add_peer(start, config).unwrap();
    (device, id)
}

/// A device with one peer and no session.
static FRESH: LazyLock<Mutex<Target>> = LazyLock::new(|| {
    let start = Instant::now();
    let (device, _) = device(1, &PrivateKey::from_bytes([0x42; 32]), start);
    Mutex::new(Target { device, now: start })
});

/// A device with one peer and an established session (negotiated with an in-process twin).
static LIVE: LazyLock<Mutex<Target>> = LazyLock::new(|| {
    let start = Instant::now();
    let key_b = PrivateKey::from_bytes([3; 32]);
    let key_a = PrivateKey::from_bytes([2; 32]);
    let (mut b, _) = device(2, &key_a, start);
    let (mut a, b_on_a) = device(1, &key_b, start);
    let addr_a: SocketAddr = "192.0.2.1:8055".parse().unwrap();
    let addr_b: SocketAddr = "192.0.2.2:8055".parse().unwrap();
    let packet = [0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    let (mut buf_a, mut buf_b) = ([0_u8; 256], [0_u8; 256]);
    let Action::WriteToNetwork { datagram, .. } = a.encapsulate(start, b_on_a, &packet, &mut buf_a) else {
        unreachable!()
    };
    let (_, Action::WriteToNetwork { datagram, .. }) = b.decapsulate(start, addr_a, datagram, &mut buf_b) else {
        unreachable!()
    };
    let (_, Action::WriteToNetwork { datagram, .. }) = a.decapsulate(start, addr_b, datagram, &mut buf_a) else {
        unreachable!()
    };
    let _ = b.decapsulate(start, addr_a, datagram, &mut buf_b);
    Mutex::new(Target { device: b, now: start })
});

fuzz_target!(|data: &[u8]| {
    let Some((&options, datagram)) = data.split_first() else {
        return;
    };
    let target = if options & 2 == 0 { &FRESH } else { &LIVE };
    let mut target = target.lock().unwrap_or_else(PoisonError::into_inner);
    let Target { device, now } = &mut *target;
    device.set_under_load(options & 1 == 1);
    let out_len = [0, 16, 64, 92, 148, 256, 1500, 4096][usize::from(options >> 2) & 7];
    let mut out = vec![0_u8; out_len];
    let src: SocketAddr = if options & 0x20 == 0 { "192.0.2.1:8055" } else { "[2001:db8::1]:9" }.parse().unwrap();
    let _ = device.decapsulate(*now, src, datagram, &mut out);
    *now += Duration::from_millis(u64::from(options) * 97);
    let mut out = [0_u8; 256];
    for _ in 0..8 {
        if device.update_timers(*now, &mut out).1 == Action::Done {
            break;
        }
    }
    while device.poll_event().is_some() {}
});
