//! What a member does with a `DELIVER` frame before its WireGuard sees the message.

use std::net::SocketAddrV4;

use cladnet_common::relay::{self as frame, RelayError, RelayKind};

use super::forward::Refusal;

/// A relayed WireGuard message a member accepted.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Delivered<'a> {
    /// The relay it came through.
    pub via: u32,
    /// The peer that sent it: the caller's WireGuard must find the message sealed by this
    /// peer's session (else drop it), and must not move this peer's direct endpoint to the
    /// relay's address (a relayed packet is not a roam).
    pub from_node: u32,
    /// The WireGuard message.
    pub message: &'a [u8],
}

/// Accepts a `DELIVER` received from `from` when it comes from the endpoint this node's own
/// WireGuard session with the relay it names authenticated (`relay_endpoint(id)`: `None` when
/// `id` is not a relay this node uses), and carries a WireGuard message. Anything else is
/// refused with the reason the relay would count it under.
pub fn accept_deliver(
    datagram: &[u8],
    from: SocketAddrV4,
    relay_endpoint: impl Fn(u32) -> Option<SocketAddrV4>,
) -> Result<Delivered<'_>, Refusal> {
    let f = match frame::decode(datagram) {
        Ok(f) if f.kind == RelayKind::Deliver => f,
        Ok(_) => return Err(Refusal::Malformed),
        Err(RelayError::NotWireGuard | RelayError::BadWireGuardLength) => {
            return Err(Refusal::NotWireGuard);
        }
        Err(_) => return Err(Refusal::Malformed),
    };
    match relay_endpoint(f.sender) {
        None => Err(Refusal::NotMember),
        Some(ep) if ep != from => Err(Refusal::WrongEndpoint),
        Some(_) => Ok(Delivered {
            via: f.sender,
            from_node: f.peer,
            message: f.message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use cladnet_common::relay::{RELAY_HDR_LEN, encode};

    use super::*;

    fn ep(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, last), 8055)
    }

    fn frame(kind: RelayKind, sender: u32, peer: u32, first: u8) -> Vec<u8> {
        let mut msg = [7u8; 40];
        msg[..4].copy_from_slice(&[first, 0, 0, 0]);
        let mut out = vec![0; RELAY_HDR_LEN + msg.len()];
        encode(kind, sender, peer, &msg, &mut out).unwrap();
        out
    }

    #[test]
    fn accepts_only_deliveries_from_a_relay_it_uses() {
        let relays = |id| (id == 10).then_some(ep(10));
        let ok = frame(RelayKind::Deliver, 10, 1, 4);
        let d = accept_deliver(&ok, ep(10), relays).unwrap();
        assert_eq!((d.via, d.from_node), (10, 1));
        assert_eq!(d.message, &ok[RELAY_HDR_LEN..]);
        assert_eq!(
            accept_deliver(&ok, ep(11), relays),
            Err(Refusal::WrongEndpoint),
            "relay 10's id from elsewhere"
        );
        let other = frame(RelayKind::Deliver, 12, 1, 4);
        assert_eq!(
            accept_deliver(&other, ep(12), relays),
            Err(Refusal::NotMember)
        );
        let send = frame(RelayKind::Send, 10, 1, 4);
        assert_eq!(
            accept_deliver(&send, ep(10), relays),
            Err(Refusal::Malformed)
        );
        let plain = frame(RelayKind::Deliver, 10, 1, 0x11);
        assert_eq!(
            accept_deliver(&plain, ep(10), relays),
            Err(Refusal::NotWireGuard)
        );
    }
}
