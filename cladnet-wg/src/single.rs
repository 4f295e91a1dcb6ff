//! The standalone, single-peer API: a [`Device`] holding exactly one peer. It lives apart from
//! `peer.rs` (the per-peer protocol state a device owns) so that the device depends on the
//! peer state and not the other way round.

use std::net::SocketAddr;
use std::time::Instant;

use crate::action::{Action, Event};
use crate::device::{Device, PeerId};
use crate::error::ConfigError;
use crate::keys::{PrivateKey, PublicKey};
use crate::peer::{PeerConfig, PeerStats};
use crate::rng::CryptoRandom;
use crate::time::WallClock;

/// A WireGuard session with a single remote peer.
///
/// This is a [`Device`] holding exactly one peer; use [`Device`] directly to serve many peers
/// from one socket. See the crate documentation for the driving loop.
pub struct Peer {
    device: Device,
    id: PeerId,
}

impl Peer {
    /// Creates the session state for one peer.
    ///
    /// # Errors
    /// [`ConfigError`] when the peer's key is ours or a low-order point.
    pub fn new(
        now: Instant,
        local_key: PrivateKey,
        config: PeerConfig,
        rng: impl CryptoRandom + 'static,
        wall_clock: WallClock,
    ) -> Result<Self, ConfigError> {
        let mut device = Device::new(local_key, rng, wall_clock);
        let id = device.add_peer(now, config)?;
        Ok(Self { device, id })
    }

    /// Encrypts an inner IP packet read from the TUN device. See [`Device::encapsulate`].
    pub fn encapsulate<'a>(
        &mut self,
        now: Instant,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        self.device.encapsulate(now, self.id, packet, out)
    }

    /// Processes a datagram received from `src`. See [`Device::decapsulate`].
    pub fn decapsulate<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        self.device.decapsulate(now, src, datagram, out).1
    }

    /// Runs due timers; call until it returns [`Action::Done`]. See [`Device::update_timers`].
    pub fn update_timers<'a>(&mut self, now: Instant, out: &'a mut [u8]) -> Action<'a> {
        self.device.update_timers(now, out).1
    }

    /// When to call [`Peer::update_timers`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.device.poll_timeout()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.device.poll_event().map(|(_, event)| event)
    }

    /// The peer's static public key.
    #[must_use]
    pub fn remote_public_key(&self) -> PublicKey {
        *self
            .device
            .peer_public_key(self.id)
            .unwrap_or_else(|| unreachable!("the peer exists"))
    }

    /// Our static public key.
    #[must_use]
    pub fn local_public_key(&self) -> PublicKey {
        self.device.public_key()
    }

    /// The peer's current endpoint.
    #[must_use]
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.device.endpoint(self.id)
    }

    /// Sets the peer's endpoint.
    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        // The id is valid for the lifetime of the single-peer device.
        let _ = self.device.set_endpoint(self.id, endpoint);
    }

    /// Traffic counters.
    #[must_use]
    pub fn stats(&self) -> PeerStats {
        self.device.stats(self.id).unwrap_or_default()
    }

    /// Tells whether we are under load (see [`Device::set_under_load`]).
    pub fn set_under_load(&mut self, under_load: bool) {
        self.device.set_under_load(under_load);
    }

    /// Sets the tunnel MTU (see [`Device::set_tunnel_mtu`]).
    pub fn set_tunnel_mtu(&mut self, mtu: Option<usize>) {
        self.device.set_tunnel_mtu(mtu);
    }

    /// Re-anchors the wall clock (see [`WallClock`]).
    pub fn set_wall_clock(&mut self, wall_clock: WallClock) {
        self.device.set_wall_clock(wall_clock);
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("remote", &self.remote_public_key())
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}
