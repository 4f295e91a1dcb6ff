//! Scenario tests that need to reach inside a session (counter limits), using the same
//! two-device harness as the integration tests.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Delivery, Net, Side, ipv4_packet};

use crate::constants::{REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES};
use crate::{MessageType, message_type};

fn packet(i: u8) -> Vec<u8> {
    ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[i; 8])
}

fn set_a_send_counter(net: &mut Net, counter: u64) {
    let id = net.a.peer;
    net.a
        .device
        .peer_core_mut(id)
        .and_then(|peer| peer.current_keypair())
        .expect("A has a current keypair")
        .set_send_counter(counter);
}

#[test]
fn rekey_after_messages_triggers_a_handshake() {
    let mut net = Net::new();
    net.establish();
    net.advance(Duration::from_secs(11));

    // Nonce 2^60 - 1 leaves the counter at 2^60: not yet past REKEY_AFTER_MESSAGES.
    set_a_send_counter(&mut net, REKEY_AFTER_MESSAGES - 1);
    net.send(Side::A, &packet(1));
    assert_eq!(net.wire.len(), 1, "at the threshold: no rekey yet");
    net.deliver_all();

    // Nonce 2^60 takes the counter past REKEY_AFTER_MESSAGES: an initiation follows.
    net.send(Side::A, &packet(2));
    let kinds: Vec<_> = net.wire.iter().map(|d| message_type(&d.bytes)).collect();
    assert_eq!(
        kinds,
        vec![Some(MessageType::Transport), Some(MessageType::Initiation)]
    );
    net.deliver_all();
    assert_eq!(net.b.tun, vec![packet(1), packet(2)]);
    let completed = net
        .a
        .events
        .iter()
        .filter(|e| matches!(e, crate::Event::HandshakeCompleted { initiator: true }))
        .count();
    assert_eq!(completed, 2, "a new session was negotiated");
}

#[test]
fn counter_exhaustion_forces_a_new_session() {
    let mut net = Net::new();
    net.establish();
    net.advance(Duration::from_secs(11));

    set_a_send_counter(&mut net, REJECT_AFTER_MESSAGES - 1);
    net.send(Side::A, &packet(1));
    let last = net.take_wire();
    assert_eq!(
        last.len(),
        2,
        "last usable counter, plus a rekey initiation"
    );
    assert_eq!(
        &last[0].bytes[8..16],
        &(REJECT_AFTER_MESSAGES - 1).to_le_bytes()
    );
    // The receiver accepts the very last counter.
    assert_eq!(net.deliver(&last[0]), Delivery::Tunnel(packet(1)));

    // The initiation was lost. Nothing more can be sent on this keypair: packets wait.
    net.send(Side::A, &packet(2));
    assert!(
        net.wire.is_empty(),
        "no counter left and the initiation is rate limited"
    );
    net.advance(Duration::from_secs(6)); // retransmission → new session → queued packet
    assert_eq!(net.b.tun.last(), Some(&packet(2)));
}

#[test]
fn receiver_rejects_counters_at_the_limit() {
    let mut net = Net::new();
    net.establish();
    set_a_send_counter(&mut net, REJECT_AFTER_MESSAGES);
    // A refuses to use the counter: the packet is queued instead (and an initiation is
    // rate-limited right after the handshake).
    net.send(Side::A, &packet(1));
    assert!(net.wire.is_empty());
    // A forged message with that counter is refused by B before any decryption.
    net.jump(Duration::from_secs(1));
    set_a_send_counter(&mut net, 5);
    net.send(Side::A, &packet(2));
    let mut datagram = net.take_wire().remove(0);
    datagram.bytes[8..16].copy_from_slice(&REJECT_AFTER_MESSAGES.to_le_bytes());
    assert_eq!(net.deliver(&datagram), Delivery::Err(crate::Error::Replay));
}
