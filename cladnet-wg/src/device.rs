//! Many peers behind one static key and one UDP socket: receiver-index dispatch, identification
//! of initiators by their static key, and the cookie mechanism under load.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use snow::params::NoiseParams;

use crate::action::{Action, Event, Outcome};
use crate::constants::{INITIATION_LEN, REKEY_TIMEOUT};
use crate::data::{PeerData, Transport};
use crate::error::{ConfigError, Error};
use crate::handshake;
use crate::keys::{PrivateKey, PublicKey};
use crate::messages::{self, HandshakeMessage, Message};
use crate::peer::{Ctx, PeerConfig, PeerCore, PeerStats};
use crate::ratelimit::{MacCheck, ReadInitiation};
use crate::rng::CryptoRandom;
use crate::time::WallClock;

/// Local indexes are `slot << 8 | rolling byte`, so a device holds at most 2^24 peers.
const MAX_SLOTS: usize = 1 << 24;

/// Initiations from static keys that are not (yet) peers, kept at most.
const MAX_EARLY_INITIATIONS: usize = 64;

/// An authenticated initiation from a static key that was no peer when it arrived. When both
/// ends of a new link are configured at nearly the same moment, one end's initiation can
/// arrive just before the other end knows it; if that end adds the peer within
/// `REKEY_TIMEOUT`, the initiation is answered then instead of being lost until the
/// retransmission 5 s later. (Behind a NAT that maps each destination to its own port, that
/// initiation's source is also the only address where the peer can be reached.)
struct EarlyInitiation {
    key: PublicKey,
    src: SocketAddr,
    at: Instant,
    bytes: [u8; INITIATION_LEN],
}

/// Handle of a peer inside a [`Device`]. Stays unique: a removed peer's id never names a later
/// peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    slot: u32,
    generation: u32,
}

impl PeerId {
    /// The peer's slot in its device: the upper 24 bits of every receiver index its sessions
    /// use (see [`crate::receiver_slot`]). Unique among the device's current peers.
    #[must_use]
    pub fn slot(self) -> u32 {
        self.slot
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}.{}", self.slot, self.generation)
    }
}

struct Slot {
    generation: u32,
    peer: Option<PeerCore>,
}

/// A WireGuard interface: our static key and the table of allowed peers.
///
/// Sans-IO: the caller reads datagrams and TUN packets, passes them in with the current time,
/// and performs the returned [`Action`]s. All randomness comes from the RNG given to
/// [`Device::new`]; time only from the `now` arguments and the [`WallClock`].
///
/// Driving loop, for every input and whenever [`Device::poll_timeout`] is reached:
///
/// ```no_run
/// # use cladnet_wg::{Action, Device};
/// # fn send(_: &[u8], _: std::net::SocketAddr) {}
/// # fn drive(device: &mut Device, buf: &mut [u8]) {
/// let now = std::time::Instant::now();
/// loop {
///     match device.update_timers(now, buf) {
///         (_, Action::WriteToNetwork { datagram, to }) => send(datagram, to),
///         (_, Action::Done) => break,
///         (_, _) => {} // an error is only informative here
///     }
/// }
/// # }
/// ```
pub struct Device {
    local: PrivateKey,
    local_public: PublicKey,
    params: NoiseParams,
    macs: MacCheck,
    rng: Box<dyn CryptoRandom>,
    wall: WallClock,
    under_load: bool,
    mtu: Option<usize>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    by_key: HashMap<PublicKey, PeerId>,
    /// Recent initiations from unknown static keys (see [`EarlyInitiation`]).
    early: std::collections::VecDeque<EarlyInitiation>,
    /// Early initiations of peers added since, to answer at the next `update_timers`.
    replay: Vec<EarlyInitiation>,
    timer_cursor: usize,
    event_cursor: usize,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("public_key", &self.local_public)
            .field("peers", &self.by_key.len())
            .field("under_load", &self.under_load)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Creates a device with static key `local_key`, drawing randomness from `rng`.
    pub fn new(
        local_key: PrivateKey,
        rng: impl CryptoRandom + 'static,
        wall_clock: WallClock,
    ) -> Self {
        let local_public = local_key.public_key();
        Self {
            macs: MacCheck::new(&local_public),
            local: local_key,
            local_public,
            params: handshake::noise_params(),
            rng: Box::new(rng),
            wall: wall_clock,
            under_load: false,
            mtu: None,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_key: HashMap::new(),
            early: std::collections::VecDeque::new(),
            replay: Vec::new(),
            timer_cursor: 0,
            event_cursor: 0,
        }
    }

    /// Our static public key.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.local_public
    }

    /// Adds a peer to the table of allowed peers.
    ///
    /// # Errors
    /// [`ConfigError`] when the key is ours, already present, a low-order point, or the table is
    /// full.
    pub fn add_peer(&mut self, now: Instant, config: PeerConfig) -> Result<PeerId, ConfigError> {
        if config.public_key == self.local_public {
            return Err(ConfigError::PeerIsSelf);
        }
        if self.by_key.contains_key(&config.public_key) {
            return Err(ConfigError::DuplicatePeer);
        }
        if self.local.shared_secret(&config.public_key).is_none() {
            return Err(ConfigError::InvalidPublicKey);
        }
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots.push(Slot {
                    generation: 0,
                    peer: None,
                });
                u32::try_from(self.slots.len() - 1).map_err(|_| ConfigError::TooManyPeers)?
            }
            None => return Err(ConfigError::TooManyPeers),
        };
        let mut seed = [0_u8; 9];
        self.rng.fill_bytes(&mut seed);
        let jitter_seed = u64::from_le_bytes(seed[1..].try_into().unwrap_or_default());
        let entry = &mut self.slots[slot as usize];
        entry.peer = Some(PeerCore::new(
            &config,
            slot << 8,
            seed[0],
            jitter_seed,
            self.mtu,
            now,
        ));
        let id = PeerId {
            slot,
            generation: entry.generation,
        };
        self.by_key.insert(config.public_key, id);
        if let Some(at) = self.early.iter().position(|e| e.key == config.public_key)
            && let Some(early) = self.early.remove(at)
            && now.saturating_duration_since(early.at) < REKEY_TIMEOUT
        {
            self.replay.push(EarlyInitiation { at: now, ..early });
        }
        Ok(id)
    }

    /// Removes a peer, erasing its keys. Returns whether it existed.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        let Some(peer) = self.peer_mut(id) else {
            return false;
        };
        let key = *peer.public_key();
        self.by_key.remove(&key);
        let entry = &mut self.slots[id.slot as usize];
        entry.peer = None;
        entry.generation = entry.generation.wrapping_add(1);
        self.free_slots.push(id.slot);
        true
    }

    /// The peer with static key `key`, if configured.
    #[must_use]
    pub fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    /// Ids of all peers.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.by_key.values().copied()
    }

    /// The static public key of a peer.
    #[must_use]
    pub fn peer_public_key(&self, id: PeerId) -> Option<&PublicKey> {
        self.peer(id).map(PeerCore::public_key)
    }

    /// The current endpoint of a peer (configured, or learnt from its authenticated packets).
    #[must_use]
    pub fn endpoint(&self, id: PeerId) -> Option<SocketAddr> {
        self.peer(id).and_then(PeerCore::endpoint)
    }

    /// Sets a peer's endpoint.
    ///
    /// # Errors
    /// [`Error::NoSuchPeer`] for an unknown id.
    pub fn set_endpoint(&mut self, id: PeerId, endpoint: SocketAddr) -> Result<(), Error> {
        self.peer_mut(id)
            .ok_or(Error::NoSuchPeer)?
            .set_endpoint(endpoint);
        Ok(())
    }

    /// Traffic counters of a peer.
    #[must_use]
    pub fn stats(&self, id: PeerId) -> Option<PeerStats> {
        self.peer(id).map(PeerCore::stats)
    }

    /// Makes the next [`Device::update_timers`] send peer `id` a keepalive, or a handshake
    /// initiation when no session is usable. Used after our own public address changed, so
    /// NAT mappings towards the peer are re-created at once instead of at the next persistent
    /// keepalive. Returns `false` for an unknown peer.
    pub fn request_keepalive(&mut self, id: PeerId) -> bool {
        self.peer_mut(id).map(PeerCore::request_keepalive).is_some()
    }

    /// Tells whether we are under load. While it is set, handshake messages without a valid
    /// mac2 are answered with a cookie reply instead of being processed, which costs the sender
    /// a round trip and proves it owns its source address; those with a valid mac2 are limited
    /// per source address (20 per second, bursts of 5; [`Error::RateLimited`] beyond). Cookie
    /// replies themselves are limited to 20 per second per source address (bursts of 5) and
    /// 2000 per second in total ([`Error::CookieRateLimited`] beyond). The kernel sets this when its handshake queue is more than 1/8 full; the caller decides
    /// here, for instance with a [`crate::LoadTracker`] over its own queue.
    pub fn set_under_load(&mut self, under_load: bool) {
        self.under_load = under_load;
    }

    /// Sets the MTU of the tunnel device. Inner packets are zero-padded to a multiple of 16
    /// bytes, but, as in the kernel, never beyond this MTU, so that a full-size inner packet
    /// produces a datagram of exactly `MTU + 32` bytes plus the outer headers. `None` (the
    /// default) always pads to 16.
    pub fn set_tunnel_mtu(&mut self, mtu: Option<usize>) {
        self.mtu = mtu;
        for peer in self.slots.iter().filter_map(|s| s.peer.as_ref()) {
            peer.set_mtu(mtu);
        }
    }

    /// The data side of peer `id`: what packet threads seal and open its transport messages
    /// with, without this device (see [`PeerData`]). The same `Arc` while the peer exists.
    #[must_use]
    pub fn peer_data(&self, id: PeerId) -> Option<Arc<PeerData>> {
        self.peer(id).map(|p| p.data().clone())
    }

    /// Re-anchors the wall clock used for handshake timestamps.
    pub fn set_wall_clock(&mut self, wall_clock: WallClock) {
        self.wall = wall_clock;
    }

    fn peer(&self, id: PeerId) -> Option<&PeerCore> {
        let slot = self.slots.get(id.slot as usize)?;
        (slot.generation == id.generation)
            .then_some(slot.peer.as_ref())
            .flatten()
    }

    /// What a peer call needs from the device, next to the peer table and the timer cursor
    /// (borrowed apart, so a peer can be used with the context at once).
    fn split(&mut self) -> (Ctx<'_>, &mut [Slot], &mut usize) {
        let Self {
            local,
            params,
            rng,
            wall,
            slots,
            timer_cursor,
            ..
        } = self;
        let ctx = Ctx {
            params,
            local,
            rng: &mut **rng,
            wall: *wall,
        };
        (ctx, slots, timer_cursor)
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut PeerCore> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.peer.as_mut()
    }

    /// The peer that owns local index `index`.
    /// Runs `f` on the peer owning local index `receiver`; unknown indexes are an error.
    fn with_receiver<T: From<Error>>(
        &mut self,
        receiver: u32,
        f: impl FnOnce(&mut PeerCore) -> T,
    ) -> (Option<PeerId>, T) {
        let Some(id) = self.peer_for_index(receiver) else {
            return (None, Error::UnknownReceiverIndex.into());
        };
        match self.peer_mut(id) {
            Some(p) => (Some(id), f(p)),
            None => (Some(id), Error::UnknownReceiverIndex.into()),
        }
    }

    fn peer_for_index(&self, index: u32) -> Option<PeerId> {
        let slot = index >> 8;
        let entry = self.slots.get(slot as usize)?;
        entry.peer.as_ref().filter(|p| p.owns_index(index))?;
        Some(PeerId {
            slot,
            generation: entry.generation,
        })
    }

    /// Encrypts an inner IP packet (read from the TUN device) for peer `id`.
    ///
    /// Returns [`Action::WriteToNetwork`] with the transport message, or — when no session is
    /// usable — queues the packet and returns a handshake initiation, or [`Action::Done`] when a
    /// handshake is already under way. `out` needs
    /// [`encapsulate_buffer_len`](crate::constants::encapsulate_buffer_len)`(packet.len())`
    /// bytes. Afterwards, check [`Device::poll_timeout`]: a rekey may be due.
    pub fn encapsulate<'a>(
        &mut self,
        now: Instant,
        id: PeerId,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        let (mut ctx, slots, _) = self.split();
        let Some(peer) = slots
            .get_mut(id.slot as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.peer.as_mut())
        else {
            return Action::Err(Error::NoSuchPeer);
        };
        peer.encapsulate(&mut ctx, now, packet, out)
            .into_action(out)
    }

    /// Processes one datagram received from `src`, and tells which peer it belonged to.
    ///
    /// - Transport data: [`Action::WriteToTunnel`] with the inner packet (keepalives give
    ///   [`Action::Done`]).
    /// - Initiation: the initiator is identified by its static key among the configured peers;
    ///   the answer is [`Action::WriteToNetwork`] with the response (or, under load and without
    ///   valid mac2, a cookie reply, with no peer).
    /// - Response: completes our handshake and returns the first transport message (queued data
    ///   or a keepalive confirming the session).
    /// - Cookie reply: stored for the next handshake message; [`Action::Done`].
    ///
    /// Any authenticated packet from a new source address moves the peer's endpoint there and
    /// queues [`Event::EndpointChanged`]. After a response, more queued packets may wait:
    /// check [`Device::poll_timeout`]. `out` must hold at least `datagram.len()` bytes and at
    /// least [`MIN_BUFFER_LEN`](crate::constants::MIN_BUFFER_LEN).
    pub fn decapsulate<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> (Option<PeerId>, Action<'a>) {
        let (peer, outcome) = self.receive(now, src, datagram, out);
        if let Outcome::Err(error) = outcome {
            tracing::trace!(%src, ?peer, %error, "dropped datagram");
        }
        (peer, outcome.into_action(out))
    }

    fn receive(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> (Option<PeerId>, Outcome) {
        let message = match messages::parse(datagram) {
            Ok(message) => message,
            Err(error) => return (None, error.into()),
        };
        match message {
            Message::Initiation(msg) => self.receive_initiation(now, src, msg, out),
            Message::Response(msg) => {
                if let Some(outcome) = self.check_handshake_macs(now, src, msg, out) {
                    return (None, outcome);
                }
                let Some(id) = self.peer_for_index(handshake::response_receiver(msg)) else {
                    return (None, Error::UnknownReceiverIndex.into());
                };
                let Some(peer) = self.peer_mut(id) else {
                    return (None, Error::UnknownReceiverIndex.into());
                };
                (Some(id), peer.on_response(now, src, msg, out))
            }
            Message::CookieReply {
                receiver,
                nonce,
                encrypted_cookie,
            } => self.with_receiver(receiver, |p| {
                p.on_cookie_reply(now, receiver, nonce, encrypted_cookie)
            }),
            Message::Transport {
                receiver,
                counter,
                sealed,
            } => {
                let message = Transport {
                    receiver,
                    counter,
                    sealed,
                    len: datagram.len(),
                };
                self.with_receiver(receiver, |p| p.on_transport(now, src, &message, out))
            }
        }
    }

    /// mac1 always, and mac2 under load. Returns the outcome when the message stops here.
    fn check_handshake_macs(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: HandshakeMessage<'_>,
        out: &mut [u8],
    ) -> Option<Outcome> {
        self.macs
            .check(now, &mut *self.rng, self.under_load, src, msg, out)
    }

    fn receive_initiation(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: HandshakeMessage<'_>,
        out: &mut [u8],
    ) -> (Option<PeerId>, Outcome) {
        if let Some(outcome) = self.check_handshake_macs(now, src, msg, out) {
            return (None, outcome);
        }
        let consumed =
            match handshake::read_initiation(&self.params, &mut *self.rng, &self.local, msg) {
                Ok(consumed) => consumed,
                Err(error) => return (None, error.into()),
            };
        let Ok(bytes) = <[u8; INITIATION_LEN]>::try_from(msg.bytes) else {
            return (None, Error::MalformedMessage.into());
        };
        self.initiation_read(now, src, ReadInitiation { consumed, bytes }, out)
    }

    /// Processes an initiation from `src` that a [`HandshakeGate`](crate::HandshakeGate)
    /// checked and read (see [`crate::HandshakeGate::read_initiation`]): its initiator is
    /// looked up among the peers, and the answer is a handshake response, as from
    /// [`Device::decapsulate`]. The gate's key must be this device's.
    pub fn accept_initiation<'a>(
        &mut self,
        now: Instant,
        src: SocketAddr,
        initiation: ReadInitiation,
        out: &'a mut [u8],
    ) -> (Option<PeerId>, Action<'a>) {
        let (peer, outcome) = self.initiation_read(now, src, initiation, out);
        if let Outcome::Err(error) = outcome {
            tracing::trace!(%src, ?peer, %error, "dropped initiation");
        }
        (peer, outcome.into_action(out))
    }

    fn initiation_read(
        &mut self,
        now: Instant,
        src: SocketAddr,
        ReadInitiation { consumed, bytes }: ReadInitiation,
        out: &mut [u8],
    ) -> (Option<PeerId>, Outcome) {
        let Some(id) = self.peer_by_key(&consumed.initiator_static) else {
            tracing::debug!(%src, key = %consumed.initiator_static, "initiation from unknown static key");
            let key = consumed.initiator_static;
            self.early.retain(|e| e.key != key);
            if self.early.len() >= MAX_EARLY_INITIATIONS {
                self.early.pop_front();
            }
            self.early.push_back(EarlyInitiation {
                key,
                src,
                at: now,
                bytes,
            });
            return (None, Error::UnknownPeer.into());
        };
        let outcome = self.peer_mut(id).map_or(Error::UnknownPeer.into(), |peer| {
            peer.on_initiation(now, src, consumed, out)
        });
        (Some(id), outcome)
    }

    /// Runs the timers of peers that are due and returns the next datagram to send.
    ///
    /// Call it whenever [`Device::poll_timeout`] is reached, and repeat until it returns
    /// [`Action::Done`]: one call produces at most one datagram (handshake retries, keepalives,
    /// rekeys, packets that were queued while waiting for a handshake). Errors returned here are
    /// informative (for instance [`Error::NoEndpoint`]). Cost: one pass over the peers.
    pub fn update_timers<'a>(
        &mut self,
        now: Instant,
        out: &'a mut [u8],
    ) -> (Option<PeerId>, Action<'a>) {
        while let Some(early) = self.replay.pop() {
            let (peer, outcome) = self.receive(now, early.src, &early.bytes, out);
            if matches!(outcome, Outcome::Network { .. }) {
                tracing::debug!(src = %early.src, "answered an initiation that arrived before its peer was added");
                return (peer, outcome.into_action(out));
            }
        }
        let (mut ctx, slots, timer_cursor) = self.split();
        let count = slots.len();
        for step in 0..count {
            let index = (*timer_cursor + step) % count;
            let entry = &mut slots[index];
            let Some(peer) = entry.peer.as_mut() else {
                continue;
            };
            if peer.poll_timeout().is_none_or(|at| at > now) {
                continue;
            }
            let outcome = peer.update_timers(&mut ctx, now, out);
            if outcome != Outcome::Done {
                *timer_cursor = index;
                let id = PeerId {
                    slot: u32::try_from(index).unwrap_or(u32::MAX),
                    generation: entry.generation,
                };
                return (Some(id), outcome.into_action(out));
            }
        }
        *timer_cursor = 0;
        (None, Action::Done)
    }

    /// The earliest time at which [`Device::update_timers`] has work (possibly already past:
    /// call it at once). `None` when no timer is armed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.peer.as_ref()?.poll_timeout())
            .chain(self.replay.iter().map(|e| e.at))
            .min()
    }

    /// The next event of any peer.
    pub fn poll_event(&mut self) -> Option<(PeerId, Event)> {
        let count = self.slots.len();
        for step in 0..count {
            let index = (self.event_cursor + step) % count;
            let entry = &mut self.slots[index];
            if let Some(event) = entry.peer.as_mut().and_then(PeerCore::poll_event) {
                self.event_cursor = index;
                let id = PeerId {
                    slot: u32::try_from(index).unwrap_or(u32::MAX),
                    generation: entry.generation,
                };
                return Some((id, event));
            }
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn peer_core_mut(&mut self, id: PeerId) -> Option<&mut PeerCore> {
        self.peer_mut(id)
    }
}
