//! Rough single-core throughput of the transport path. Ignored by default; run with
//! `cargo test --release -p cladnet-wg --test throughput -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use cladnet_wg::Action;
use common::{Net, ipv4_packet};

#[test]
#[ignore = "timing; run in release mode on demand"]
fn transport_throughput() {
    let mut net = Net::new();
    net.establish();
    let packet = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[0x5a; 1400]);
    let (mut wire, mut inner) = ([0_u8; 2048], [0_u8; 2048]);
    let count = 200_000_u32;
    let start = Instant::now();
    for _ in 0..count {
        let Action::WriteToNetwork { datagram, .. } = net
            .a
            .device
            .encapsulate(net.now, net.a.peer, &packet, &mut wire)
        else {
            panic!("encapsulate failed")
        };
        let (_, action) = net
            .b
            .device
            .decapsulate(net.now, common::addr_a(), datagram, &mut inner);
        assert!(matches!(action, Action::WriteToTunnel { .. }));
    }
    let elapsed = start.elapsed();
    let bits = f64::from(count) * packet.len() as f64 * 8.0;
    println!(
        "{count} packets of {} B sealed and opened in {elapsed:?}: {:.2} Gbit/s, {:.0} ns per packet (both directions of work on one core)",
        packet.len(),
        bits / elapsed.as_secs_f64() / 1e9,
        elapsed.as_nanos() as f64 / f64::from(count),
    );
}
