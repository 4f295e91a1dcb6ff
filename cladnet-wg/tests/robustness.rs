//! Property tests: arbitrary input never panics, whatever the state and buffer sizes.

mod common;

use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};

use cladnet_wg::Action;
use common::{Net, Side, ipv4_packet};
use proptest::prelude::*;

fn src() -> SocketAddr {
    "192.0.2.200:1000".parse().unwrap()
}

/// Byte strings that often get past the type/length check.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        (1_u8..=4, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(kind, body)| {
            let len = match kind {
                1 => 148,
                2 => 92,
                3 => 64,
                _ => 32 + body.len(),
            };
            let mut bytes = vec![kind, 0, 0, 0];
            bytes.extend(body.iter().copied().cycle().take(len - 4));
            bytes.resize(len, 0);
            bytes
        }),
    ]
}

/// One established pair shared by all cases (a handshake per case is slow in debug builds);
/// its state keeps evolving, which only widens what is exercised.
static LIVE: LazyLock<Mutex<Net>> = LazyLock::new(|| {
    let mut net = Net::new();
    net.establish();
    Mutex::new(net)
});

/// A pair that never completed a handshake.
static FRESH: LazyLock<Mutex<Net>> = LazyLock::new(|| Mutex::new(Net::new()));

fn live() -> std::sync::MutexGuard<'static, Net> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fresh() -> std::sync::MutexGuard<'static, Net> {
    FRESH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decapsulate_never_panics(input in datagram(), out_len in 0_usize..300, under_load: bool) {
        let mut guard = fresh();
        let net = &mut *guard;
        let mut out = vec![0_u8; out_len];
        net.b.device.set_under_load(under_load);
        let (_, action) = net.b.device.decapsulate(net.now, src(), &input, &mut out);
        let delivered = matches!(action, Action::WriteToTunnel { .. });
        prop_assert!(!delivered, "random bytes authenticated");
    }

    #[test]
    fn decapsulate_never_panics_with_a_live_session(
        input in datagram(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        out_len in 0_usize..300,
    ) {
        let mut guard = live();
        let net = &mut *guard;
        // Random bytes, and a genuine transport message with random bit flips.
        let mut out = vec![0_u8; out_len];
        let _ = net.b.device.decapsulate(net.now, src(), &input, &mut out);
        net.send(Side::A, &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"genuine"));
        let mut genuine = net.take_wire().remove(0).bytes;
        for (at, mask) in &flips {
            let len = genuine.len();
            genuine[at % len] ^= mask;
        }
        let _ = net.b.device.decapsulate(net.now, src(), &genuine, &mut out);
        let mut out2 = vec![0_u8; out_len];
        let _ = net.b.device.update_timers(net.now, &mut out2);
    }

    #[test]
    fn encapsulate_never_panics(packet in proptest::collection::vec(any::<u8>(), 0..300), out_len in 0_usize..400) {
        let mut out = vec![0_u8; out_len];
        {
            let mut guard = fresh();
            let net = &mut *guard;
            let _ = net.a.device.encapsulate(net.now, net.a.peer, &packet, &mut out);
        }
        let mut net = live();
        let now = net.now;
        let peer = net.a.peer;
        let _ = net.a.device.encapsulate(now, peer, &packet, &mut out);
        net.take_wire();
    }
}
