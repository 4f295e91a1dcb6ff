//! Relay frames: WireGuard messages carried through a third node of the same network when two
//! peers cannot reach each other directly (both behind endpoint-dependent NAT, for example).
//!
//! A relay frame is a CLAD message of type [`CladType::Relay`] whose flag byte says which leg
//! it is on, followed by the node id of the other end and one opaque WireGuard message:
//!
//! ```text
//!  0               1               2               3
//! +-------+-------+---------------+-------------------------------+
//! |  1    |  6    |     kind      |           reserved (0)        |
//! +-------+-------+---------------+-------------------------------+
//! |                 sender node id (big endian)                   |
//! +---------------------------------------------------------------+
//! |   peer node id: SEND = destination, DELIVER = original sender |
//! +---------------------------------------------------------------+
//! |        one WireGuard message (opaque to the relay)            |
//! ```
//!
//! * `SEND` (kind 1) goes from a member to the relay; the header's node id is the member's,
//!   the peer field names the destination.
//! * `DELIVER` (kind 2) goes from the relay to the destination; the header's node id is the
//!   relay's, the peer field names the original sender. The relay makes it from the `SEND` in
//!   place ([`to_deliver`]): same length, so relaying never amplifies.
//!
//! Only WireGuard messages of their exact sizes are carried (a relayed link is always SEALED:
//! the relay can neither read nor forge what it forwards, and PLAIN is never relayed). Who may
//! send and where a frame may go is the relay's decision (`cladnet_core::relay`), not the
//! decoder's.

use crate::wire::{self, CLAD_HDR_LEN, CladHeader, CladType, Demux, WireError};

/// Length of the relay header: the CLAD header and the peer node id.
pub const RELAY_HDR_LEN: usize = CLAD_HDR_LEN + 4;
/// Bytes a relayed WireGuard datagram carries beyond a direct one.
pub const RELAY_OVERHEAD: usize = RELAY_HDR_LEN;
/// WireGuard handshake initiation length.
pub const WG_INITIATION_LEN: usize = 148;
/// WireGuard handshake response length.
pub const WG_RESPONSE_LEN: usize = 92;
/// WireGuard cookie reply length.
pub const WG_COOKIE_LEN: usize = 64;
/// Shortest WireGuard transport message (16-byte header, empty payload, 16-byte tag).
pub const WG_MIN_TRANSPORT_LEN: usize = 32;

/// Which leg of the relayed path a frame is on (the flag byte of its CLAD header).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u8)]
pub enum RelayKind {
    /// Member to relay: "forward this to the peer named".
    Send = 1,
    /// Relay to member: "the peer named sent you this".
    Deliver = 2,
}

impl RelayKind {
    /// Parses the flag byte.
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Send),
            2 => Some(Self::Deliver),
            _ => None,
        }
    }
}

/// A decoded relay frame, borrowing the datagram.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct RelayFrame<'a> {
    /// Which leg.
    pub kind: RelayKind,
    /// The node id in the CLAD header: the member (`Send`) or the relay (`Deliver`).
    pub sender: u32,
    /// The other end: destination (`Send`) or original sender (`Deliver`).
    pub peer: u32,
    /// The WireGuard message.
    pub message: &'a [u8],
}

/// Why a relay frame was rejected.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RelayError {
    /// The CLAD header is invalid.
    Header(WireError),
    /// A valid CLAD message of another type.
    NotRelay,
    /// The flag byte is not a [`RelayKind`].
    BadKind(u8),
    /// Shorter than [`RELAY_HDR_LEN`].
    Truncated,
    /// Sender and peer are the same node.
    SelfAddressed,
    /// The payload is not a WireGuard message (PLAIN is never relayed).
    NotWireGuard,
    /// A WireGuard message of the wrong length for its type.
    BadWireGuardLength,
}

impl From<WireError> for RelayError {
    fn from(e: WireError) -> Self {
        Self::Header(e)
    }
}

/// Whether `message` has the shape of a WireGuard message: a type 1..=4 with three zero bytes
/// and the length that type has (transport data: at least [`WG_MIN_TRANSPORT_LEN`]).
pub fn check_wireguard(message: &[u8]) -> Result<(), RelayError> {
    let Demux::WireGuard(ty) = wire::demux(message) else {
        return Err(RelayError::NotWireGuard);
    };
    let ok = match ty {
        1 => message.len() == WG_INITIATION_LEN,
        2 => message.len() == WG_RESPONSE_LEN,
        3 => message.len() == WG_COOKIE_LEN,
        _ => message.len() >= WG_MIN_TRANSPORT_LEN,
    };
    if ok {
        Ok(())
    } else {
        Err(RelayError::BadWireGuardLength)
    }
}

/// Decodes and validates a relay frame.
pub fn decode(datagram: &[u8]) -> Result<RelayFrame<'_>, RelayError> {
    let h = CladHeader::decode(datagram)?;
    if h.ty() != Some(CladType::Relay) {
        return Err(RelayError::NotRelay);
    }
    let kind = RelayKind::from_byte(h.flags()).ok_or(RelayError::BadKind(h.flags()))?;
    let Some(&[p0, p1, p2, p3]) = datagram[CLAD_HDR_LEN..].first_chunk::<4>() else {
        return Err(RelayError::Truncated);
    };
    let peer = u32::from_be_bytes([p0, p1, p2, p3]);
    if peer == h.node_id() {
        return Err(RelayError::SelfAddressed);
    }
    let message = &datagram[RELAY_HDR_LEN..];
    check_wireguard(message)?;
    Ok(RelayFrame {
        kind,
        sender: h.node_id(),
        peer,
        message,
    })
}

/// The relay header of a frame of `kind` from `sender` about `peer`.
pub const fn header(kind: RelayKind, sender: u32, peer: u32) -> [u8; RELAY_HDR_LEN] {
    let c = CladHeader::new(CladType::Relay, kind as u8, sender).to_bytes();
    let p = peer.to_be_bytes();
    [
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], p[0], p[1], p[2], p[3],
    ]
}

/// Writes a frame (header and `message`) into `out`; returns it, or `None` if `out` is too
/// short. The caller passes a WireGuard message; [`decode`] rejects anything else.
pub fn encode<'a>(
    kind: RelayKind,
    sender: u32,
    peer: u32,
    message: &[u8],
    out: &'a mut [u8],
) -> Option<&'a [u8]> {
    let out = out.get_mut(..RELAY_HDR_LEN + message.len())?;
    out[..RELAY_HDR_LEN].copy_from_slice(&header(kind, sender, peer));
    out[RELAY_HDR_LEN..].copy_from_slice(message);
    Some(out)
}

/// Turns a valid `Send` frame into the `Deliver` frame the relay `relay` forwards, in place
/// (same length). Returns the decoded `Send` (its sender and destination), or why the frame is
/// not a valid `Send` (a `Send` claiming to come from the relay itself is [`RelayError::SelfAddressed`]).
pub fn to_deliver(frame: &mut [u8], relay: u32) -> Result<(u32, u32), RelayError> {
    let f = decode(frame)?;
    if f.kind != RelayKind::Send {
        return Err(RelayError::BadKind(f.kind as u8));
    }
    if f.sender == relay {
        return Err(RelayError::SelfAddressed);
    }
    let (sender, dst) = (f.sender, f.peer);
    frame[..RELAY_HDR_LEN].copy_from_slice(&header(RelayKind::Deliver, relay, sender));
    Ok((sender, dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WireGuard transport message of up to 64 bytes (slice it).
    fn transport() -> [u8; 64] {
        let mut m = [0xabu8; 64];
        m[..4].copy_from_slice(&[4, 0, 0, 0]);
        m
    }

    #[test]
    fn send_round_trips_and_becomes_deliver_in_place() {
        let msg = transport();
        let mut buf = [0u8; 128];
        let n = encode(RelayKind::Send, 7, 9, &msg[..48], &mut buf)
            .unwrap()
            .len();
        assert_eq!(n, 48 + RELAY_HDR_LEN);
        assert_eq!(buf[..4], [0x16, 1, 0, 0]);
        let f = decode(&buf[..n]).unwrap();
        assert_eq!(
            (f.kind, f.sender, f.peer, f.message),
            (RelayKind::Send, 7, 9, &msg[..48])
        );
        assert_eq!(to_deliver(&mut buf[..n], 3), Ok((7, 9)));
        let d = decode(&buf[..n]).unwrap();
        assert_eq!(
            (d.kind, d.sender, d.peer, d.message),
            (RelayKind::Deliver, 3, 7, &msg[..48])
        );
        assert_eq!(
            to_deliver(&mut buf[..n], 3),
            Err(RelayError::BadKind(2)),
            "a DELIVER is never forwarded again"
        );
        let n = encode(RelayKind::Send, 3, 9, &msg[..48], &mut buf)
            .unwrap()
            .len();
        assert_eq!(
            to_deliver(&mut buf[..n], 3),
            Err(RelayError::SelfAddressed),
            "no frame claims to come from the relay itself"
        );
    }

    #[test]
    fn only_wireguard_messages_of_their_sizes_are_carried() {
        let mut buf = [0u8; 200];
        for (ty, len, ok) in [
            (1u8, WG_INITIATION_LEN, true),
            (1, WG_INITIATION_LEN - 1, false),
            (2, WG_RESPONSE_LEN, true),
            (2, WG_RESPONSE_LEN + 1, false),
            (3, WG_COOKIE_LEN, true),
            (4, WG_MIN_TRANSPORT_LEN, true),
            (4, WG_MIN_TRANSPORT_LEN - 1, false),
        ] {
            let mut msg = [0u8; 160];
            msg[0] = ty;
            let f = encode(RelayKind::Send, 1, 2, &msg[..len], &mut buf).unwrap();
            let want = if ok {
                Ok(())
            } else {
                Err(RelayError::BadWireGuardLength)
            };
            assert_eq!(decode(f).map(drop), want, "type {ty} length {len}");
        }
        // A PLAIN datagram (CLAD DATA_PLAIN) inside a relay frame is refused.
        let plain = CladHeader::new(CladType::DataPlain, 0, 1).to_bytes();
        let f = encode(RelayKind::Send, 1, 2, &plain, &mut buf).unwrap();
        assert_eq!(decode(f), Err(RelayError::NotWireGuard));
    }

    #[test]
    fn rejects_malformed_frames() {
        let msg = transport();
        let mut buf = [0u8; 64];
        let n = encode(RelayKind::Send, 1, 2, &msg[..32], &mut buf)
            .unwrap()
            .len();
        assert_eq!(decode(&buf[..10]), Err(RelayError::Truncated));
        assert_eq!(
            decode(&buf[..3]),
            Err(RelayError::Header(WireError::Truncated))
        );
        let mut bad = buf;
        bad[1] = 3;
        assert_eq!(decode(&bad[..n]), Err(RelayError::BadKind(3)));
        let mut bad = buf;
        bad[2] = 1;
        assert_eq!(
            decode(&bad[..n]),
            Err(RelayError::Header(WireError::ReservedNotZero))
        );
        let f = encode(RelayKind::Send, 5, 5, &msg[..32], &mut buf).unwrap();
        assert_eq!(decode(f), Err(RelayError::SelfAddressed));
        let probe = CladHeader::new(CladType::Probe, 0, 1).to_bytes();
        assert_eq!(decode(&probe), Err(RelayError::NotRelay));
    }
}
