//! Protocol constants, as fixed by the WireGuard whitepaper (sections 5 and 6) and used by the
//! Linux kernel module, wireguard-go and boringtun. Changing any of them breaks interoperability.

use std::time::Duration;

/// Noise protocol name; `HASH(CONSTRUCTION)` is the initial chaining key.
pub const CONSTRUCTION: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Noise prologue, mixed into the initial handshake hash.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label for the mac1 key: `HASH(LABEL_MAC1 || receiver static public key)`.
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Label for the cookie key: `HASH(LABEL_COOKIE || static public key)`.
pub const LABEL_COOKIE: &[u8] = b"cookie--";

/// A sending keypair asks for a new handshake after this many messages.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted with a counter at or above this value: 2^64 - 2^13 - 1, the
/// whitepaper's and wireguard-go's value (the Linux module uses 2^64 - 8130; the difference only
/// decides when each side gives up on a keypair).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator of a session starts a new handshake when sending on a keypair this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair is never used (send or receive) once this old.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Handshake retries stop after this long (expressed, as in the kernel, as
/// `REKEY_ATTEMPT_TIME / REKEY_TIMEOUT` retransmissions).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Minimum interval between two initiations to the same peer, and the retransmission interval.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound (exclusive) of the random jitter added to `REKEY_TIMEOUT` (one third of a second,
/// the kernel's `HZ / 3`).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Passive keepalive: after receiving data, send an empty packet if nothing was sent for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Number of handshake retransmissions before giving up (`REKEY_ATTEMPT_TIME / REKEY_TIMEOUT`,
/// i.e. 18).
pub const MAX_TIMER_HANDSHAKES: u32 =
    (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
/// How long the responder's cookie secret lives before it is regenerated.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// Slack subtracted from `COOKIE_SECRET_MAX_AGE` when deciding whether a received cookie may
/// still be used for mac2.
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);
/// Initiations accepted per second and per peer (the kernel's `INITIATIONS_PER_SECOND`):
/// an initiation arriving less than `1 s / 50` after the last accepted one is dropped.
pub const INITIATIONS_PER_SECOND: u32 = 50;
/// Capacity of the queue of incoming handshake messages in the kernel module
/// (`MAX_QUEUED_INCOMING_HANDSHAKES`); a receiver counts itself under load while an eighth of
/// it is used (see [`crate::LoadTracker`]).
pub const MAX_QUEUED_INCOMING_HANDSHAKES: usize = 4096;
/// How long a receiver stays under load after its handshake queue was last over the threshold.
pub const UNDER_LOAD_LINGER: Duration = Duration::from_secs(1);
/// Under load, handshake messages with a valid mac2 accepted per second from one source
/// address (the kernel's ratelimiter: `PACKETS_PER_SECOND`).
pub const HANDSHAKES_PER_SECOND_PER_SOURCE: u64 = 20;
/// Burst of such messages accepted from one source address (`PACKETS_BURST`).
pub const HANDSHAKE_BURST_PER_SOURCE: u64 = 5;
/// Under load, cookie replies sent per second to one source address (not in the kernel,
/// which answers every message without mac2; see [`crate::HandshakeGate`]).
pub const COOKIE_REPLIES_PER_SECOND_PER_SOURCE: u64 = 20;
/// Burst of cookie replies to one source address.
pub const COOKIE_REPLY_BURST_PER_SOURCE: u64 = 5;
/// Under load, cookie replies sent per second to all sources together.
pub const COOKIE_REPLIES_PER_SECOND: u64 = 2_000;
/// Burst of cookie replies to all sources together.
pub const COOKIE_REPLY_BURST: u64 = 200;
/// Maximum number of packets queued per peer while waiting for a handshake (the kernel's
/// `MAX_STAGED_PACKETS`); the oldest packet is dropped when the queue is full.
pub const MAX_QUEUED_PACKETS: usize = 128;

/// Size of the transport header: type (4), receiver index (4), counter (8).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Size of the Poly1305 authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes added to an inner packet by the transport encapsulation (header and tag), padding
/// excluded. The outer IP and UDP headers come on top of this (28 bytes for IPv4, 48 for IPv6).
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// Plaintext is zero-padded to a multiple of this many bytes before encryption (but not beyond
/// the tunnel MTU, when the caller sets one).
pub const PADDING_MULTIPLE: usize = 16;
/// Size of a handshake initiation message (type 1).
pub const INITIATION_LEN: usize = 148;
/// Size of a handshake response message (type 2).
pub const RESPONSE_LEN: usize = 92;
/// Size of a cookie reply message (type 3).
pub const COOKIE_REPLY_LEN: usize = 64;
/// Size of an empty transport message (a keepalive).
pub const KEEPALIVE_LEN: usize = TRANSPORT_OVERHEAD;
/// Smallest output buffer that every operation accepts for handshake messages.
pub const MIN_BUFFER_LEN: usize = INITIATION_LEN;

/// Length of a datagram produced by encapsulating `plaintext_len` bytes of inner packet
/// (header, plaintext padded to 16 bytes, tag) when no tunnel MTU is set; an upper bound
/// otherwise.
#[must_use]
pub const fn encapsulated_len(plaintext_len: usize) -> usize {
    TRANSPORT_OVERHEAD + plaintext_len.next_multiple_of(PADDING_MULTIPLE)
}

/// Output buffer size that `encapsulate` needs for a plaintext of `plaintext_len` bytes: enough
/// for the data message and for a handshake initiation, which may be produced instead.
#[must_use]
pub const fn encapsulate_buffer_len(plaintext_len: usize) -> usize {
    let data = encapsulated_len(plaintext_len);
    if data > MIN_BUFFER_LEN {
        data
    } else {
        MIN_BUFFER_LEN
    }
}

#[cfg(test)]
mod tests {
    use cladnet_common::wire::{IPV4_HDR_LEN, SEALED_OVERHEAD_V4, UDP_HDR_LEN};

    use super::TRANSPORT_OVERHEAD;

    /// `cladnet-common` (no_std, read by the eBPF programs) cannot depend on this crate, so it
    /// spells the SEALED overhead out; this ties the two together.
    #[test]
    fn sealed_overhead_is_outer_headers_plus_transport_overhead() {
        assert_eq!(
            SEALED_OVERHEAD_V4,
            IPV4_HDR_LEN + UDP_HDR_LEN + TRANSPORT_OVERHEAD
        );
    }
}
