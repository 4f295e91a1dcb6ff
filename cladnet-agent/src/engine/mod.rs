//! The userspace dataplane: TUN + UDP, PLAIN framing and standard WireGuard.
//!
//! [`router`] holds the packet logic without sockets; [`userspace`] drives it with threads
//! over a TUN device and the tunnel UDP socket.

pub mod counters;
pub mod router;
pub mod userspace;
