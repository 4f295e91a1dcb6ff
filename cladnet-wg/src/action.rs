//! What the caller must do after each call, and the events it may want to observe.

use std::net::{IpAddr, SocketAddr};

use crate::error::Error;

/// The caller's next step after `encapsulate`, `decapsulate` or `update_timers`.
///
/// The slices point into the caller's output buffer.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Action<'a> {
    /// Send `datagram` over UDP to `to`.
    WriteToNetwork {
        /// The complete WireGuard message.
        datagram: &'a mut [u8],
        /// Destination: the peer's endpoint, or the source of the datagram being answered.
        to: SocketAddr,
    },
    /// Write the decrypted inner IP `packet` (trimmed to its IP length) to the TUN device.
    ///
    /// Before doing so the caller must check that `source` belongs to the peer's allowed
    /// prefixes (cryptokey routing); otherwise drop the packet.
    WriteToTunnel {
        /// The inner IPv4 or IPv6 packet.
        packet: &'a mut [u8],
        /// The inner packet's source address.
        source: IpAddr,
    },
    /// Nothing to do (a packet was queued, a keepalive or cookie reply was absorbed, or no timer
    /// had work).
    Done,
    /// The input was dropped for this reason.
    Err(Error),
}

/// Something that happened to a peer, reported through `poll_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new session is usable for sending. `initiator` tells whether we initiated it.
    HandshakeCompleted {
        /// Whether we sent the initiation.
        initiator: bool,
    },
    /// An authenticated packet arrived from a new address, which is now the peer's endpoint
    /// (roaming). The caller may persist or report it.
    EndpointChanged {
        /// The new endpoint.
        endpoint: SocketAddr,
    },
    /// The handshake did not complete within `REKEY_ATTEMPT_TIME` of retries; queued packets
    /// were dropped. A new packet for the peer starts over.
    HandshakeTimedOut,
    /// No new session for `3 * REJECT_AFTER_TIME`: all session keys were erased.
    KeysErased,
}

/// Borrow-free result of internal operations, turned into an [`Action`] at the API boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Network { len: usize, to: SocketAddr },
    Tunnel { len: usize, source: IpAddr },
    Done,
    Err(Error),
}

impl Outcome {
    pub(crate) fn into_action(self, out: &mut [u8]) -> Action<'_> {
        match self {
            Self::Network { len, to } => Action::WriteToNetwork {
                datagram: &mut out[..len],
                to,
            },
            Self::Tunnel { len, source } => Action::WriteToTunnel {
                packet: &mut out[..len],
                source,
            },
            Self::Done => Action::Done,
            Self::Err(error) => Action::Err(error),
        }
    }
}

impl From<Error> for Outcome {
    fn from(error: Error) -> Self {
        Self::Err(error)
    }
}
