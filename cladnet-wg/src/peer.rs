//! One remote peer: handshake state, keypairs, timers and the queue of packets waiting for a
//! session. [`Peer`] is the standalone, single-peer API; a [`crate::Device`] holds many.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use snow::HandshakeState;
use snow::params::NoiseParams;

use crate::action::{Action, Event, Outcome};
use crate::constants::{
    INITIATIONS_PER_SECOND, KEEPALIVE_TIMEOUT, MAX_QUEUED_PACKETS, MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, RESPONSE_LEN,
};
use crate::cookie::PeerCookie;
use crate::device::{Device, PeerId};
use crate::error::{ConfigError, Error};
use crate::handshake::{self, ConsumedInitiation};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::HandshakeMessage;
use crate::rng::{CryptoRandom, jitter};
use crate::session::{Keypair, Keypairs, Slot};
use crate::time::{Tai64N, WallClock};
use crate::timers::{Timers, expired};

/// Configuration of one remote peer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerConfig {
    /// The peer's static public key: its identity.
    pub public_key: PublicKey,
    /// Optional preshared key; `None` means all zeros, as in WireGuard.
    pub preshared_key: Option<PresharedKey>,
    /// Where to send to the peer until it is heard from (it then follows the peer's packets).
    pub endpoint: Option<SocketAddr>,
    /// Send a keepalive after this much silence in either direction (useful behind NAT).
    /// `None` or zero disables it.
    pub persistent_keepalive: Option<Duration>,
    /// Maximum packets queued while waiting for a handshake (default `MAX_QUEUED_PACKETS`).
    pub max_queued_packets: usize,
}

impl PeerConfig {
    /// A peer identified by `public_key`, with no preshared key, endpoint or keepalive.
    #[must_use]
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            max_queued_packets: MAX_QUEUED_PACKETS,
        }
    }
}

/// Counters for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Bytes of WireGuard messages sent (handshakes included).
    pub tx_bytes: u64,
    /// Bytes of authenticated WireGuard messages received.
    pub rx_bytes: u64,
    /// When the last handshake completed.
    pub last_handshake: Option<Instant>,
    /// Packets dropped because the handshake queue was full or the handshake timed out.
    pub queue_dropped: u64,
}

/// What a peer needs from its owner for one call.
pub(crate) struct Ctx<'a> {
    pub(crate) params: &'a NoiseParams,
    pub(crate) local: &'a PrivateKey,
    pub(crate) rng: &'a mut dyn CryptoRandom,
    pub(crate) wall: WallClock,
    /// Tunnel MTU, capping the padding of transport messages.
    pub(crate) mtu: Option<usize>,
}

/// Bounded FIFO of packets waiting for a session; buffers are recycled.
struct PacketQueue {
    packets: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    capacity: usize,
}

impl PacketQueue {
    fn new(capacity: usize) -> Self {
        Self {
            packets: VecDeque::new(),
            spare: Vec::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends a copy of `packet`; returns whether the oldest packet had to be dropped.
    fn push(&mut self, packet: &[u8]) -> bool {
        let dropped = self.packets.len() >= self.capacity;
        if dropped && let Some(old) = self.packets.pop_front() {
            self.recycle(old);
        }
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(packet);
        self.packets.push_back(buffer);
        dropped
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        self.packets.pop_front()
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < 16 {
            self.spare.push(buffer);
        }
    }

    /// Drops everything; returns how many packets were dropped.
    fn clear(&mut self) -> usize {
        let n = self.packets.len();
        while let Some(buffer) = self.packets.pop_front() {
            self.recycle(buffer);
        }
        n
    }

    fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

/// Our initiation waiting for its response.
struct PendingInitiation {
    state: Box<HandshakeState>,
    local_index: u32,
}

const MAX_EVENTS: usize = 64;

/// The protocol state of one remote peer. Owned by a [`Device`].
pub(crate) struct PeerCore {
    remote: PublicKey,
    psk: PresharedKey,
    cookie: PeerCookie,
    endpoint: Option<SocketAddr>,
    /// Upper 24 bits of every local index of this peer (the device slot).
    index_prefix: u32,
    index_low: u8,
    pending: Option<PendingInitiation>,
    last_timestamp: Option<Tai64N>,
    last_initiation_consumed: Option<Instant>,
    last_sent_handshake: Option<Instant>,
    keypairs: Keypairs,
    timers: Timers,
    queue: PacketQueue,
    events: VecDeque<Event>,
    /// An initiation should be attempted at the next `update_timers` (`true`: as a retry).
    want_initiation: Option<bool>,
    want_keepalive: bool,
    last_now: Instant,
    stats: PeerStats,
}

impl PeerCore {
    pub(crate) fn new(
        config: &PeerConfig,
        index_prefix: u32,
        index_seed: u8,
        now: Instant,
    ) -> Self {
        let timers = Timers::new(config.persistent_keepalive);
        // As `wg set ... persistent-keepalive` does, bring the tunnel up at once.
        let want_keepalive = timers.persistent_interval.is_some() && config.endpoint.is_some();
        Self {
            remote: config.public_key,
            psk: config.preshared_key.clone().unwrap_or_default(),
            cookie: PeerCookie::new(&config.public_key),
            endpoint: config.endpoint,
            index_prefix,
            index_low: index_seed,
            pending: None,
            last_timestamp: None,
            last_initiation_consumed: None,
            last_sent_handshake: None,
            keypairs: Keypairs::default(),
            timers,
            queue: PacketQueue::new(config.max_queued_packets),
            events: VecDeque::new(),
            want_initiation: None,
            want_keepalive,
            last_now: now,
            stats: PeerStats::default(),
        }
    }

    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.remote
    }

    /// Asks for a keepalive (or, without a session, a handshake) at the next `update_timers`.
    pub(crate) fn request_keepalive(&mut self) {
        self.want_keepalive = true;
    }

    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    pub(crate) fn stats(&self) -> PeerStats {
        self.stats
    }

    /// Sets the endpoint from configuration; queued packets get a handshake attempt.
    pub(crate) fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
        if !self.queue.is_empty() && self.want_initiation.is_none() {
            self.want_initiation = Some(false);
        }
    }

    /// Follows the peer to the source of an authenticated packet.
    fn roam(&mut self, src: SocketAddr) {
        if self.endpoint != Some(src) {
            self.endpoint = Some(src);
            self.push_event(Event::EndpointChanged { endpoint: src });
        }
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether `index` is one of ours (pending handshake or keypair).
    pub(crate) fn owns_index(&self, index: u32) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.local_index == index)
            || self.keypairs.uses_index(index)
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            self.index_low = self.index_low.wrapping_add(1);
            let index = self.index_prefix | u32::from(self.index_low);
            if !self.owns_index(index) {
                return index;
            }
        }
    }

    fn can_send(&self, now: Instant) -> bool {
        self.keypairs
            .current
            .as_ref()
            .is_some_and(|k| k.can_send(now))
    }

    fn can_flush(&self, now: Instant) -> bool {
        !self.queue.is_empty() && self.endpoint.is_some() && self.can_send(now)
    }

    fn request_initiation(&mut self) {
        if self.want_initiation.is_none() {
            self.want_initiation = Some(false);
        }
    }

    /// Encrypts one inner packet for the peer, or queues it and starts a handshake.
    pub(crate) fn encapsulate(
        &mut self,
        ctx: &mut Ctx<'_>,
        now: Instant,
        packet: &[u8],
        out: &mut [u8],
    ) -> Outcome {
        self.last_now = now;
        if packet.is_empty() {
            return Error::InvalidInnerPacket.into();
        }
        if self.queue.is_empty() && self.can_send(now) {
            return self.send_packet(ctx, now, packet, out);
        }
        if self.queue.push(packet) {
            self.stats.queue_dropped += 1;
        }
        if self.can_flush(now) {
            return self.flush_one(ctx, now, out);
        }
        self.initiate(ctx, now, false, out)
    }

    /// Seals `packet` (empty: a keepalive) with the current keypair.
    fn send_packet(
        &mut self,
        ctx: &mut Ctx<'_>,
        now: Instant,
        packet: &[u8],
        out: &mut [u8],
    ) -> Outcome {
        let Some(to) = self.endpoint else {
            return Error::NoEndpoint.into();
        };
        let Some(keypair) = self
            .keypairs
            .current
            .as_deref_mut()
            .filter(|k| k.can_send(now))
        else {
            return Error::KeypairExpired.into();
        };
        let len = match keypair.seal(packet, ctx.mtu, out) {
            Ok(len) => len,
            Err(error) => return error.into(),
        };
        let rekey = keypair.wants_rekey_on_send(now);
        self.timers.packet_traversal(now);
        self.timers.packet_sent();
        if !packet.is_empty() && self.timers.new_handshake.is_none() {
            self.timers
                .data_sent(now, jitter(ctx.rng, REKEY_TIMEOUT_JITTER_MAX));
        }
        if rekey {
            self.request_initiation();
        }
        self.stats.tx_bytes += len as u64;
        Outcome::Network { len, to }
    }

    fn flush_one(&mut self, ctx: &mut Ctx<'_>, now: Instant, out: &mut [u8]) -> Outcome {
        let Some(packet) = self.queue.pop() else {
            return Outcome::Done;
        };
        let outcome = self.send_packet(ctx, now, &packet, out);
        self.queue.recycle(packet);
        outcome
    }

    /// Sends an initiation unless one went out less than `REKEY_TIMEOUT` ago.
    fn initiate(
        &mut self,
        ctx: &mut Ctx<'_>,
        now: Instant,
        is_retry: bool,
        out: &mut [u8],
    ) -> Outcome {
        if !is_retry {
            self.timers.handshake_attempts = 0;
        }
        if self
            .last_sent_handshake
            .is_some_and(|at| now.saturating_duration_since(at) < REKEY_TIMEOUT)
        {
            return Outcome::Done;
        }
        let Some(to) = self.endpoint else {
            return Error::NoEndpoint.into();
        };
        let local_index = self.alloc_index();
        let timestamp = Tai64N::from_unix(ctx.wall.unix_time(now));
        let state = match handshake::write_initiation(
            ctx.params,
            ctx.rng,
            ctx.local,
            &self.remote,
            &self.psk,
            local_index,
            timestamp,
            out,
        ) {
            Ok(state) => state,
            Err(error) => return error.into(),
        };
        let len = crate::constants::INITIATION_LEN;
        self.cookie.stamp(now, &mut out[..len]);
        self.pending = Some(PendingInitiation { state, local_index });
        self.last_sent_handshake = Some(now);
        self.timers.packet_traversal(now);
        self.timers.packet_sent();
        self.timers
            .handshake_initiated(now, jitter(ctx.rng, REKEY_TIMEOUT_JITTER_MAX));
        self.stats.tx_bytes += len as u64;
        tracing::debug!(peer = %self.remote, retry = is_retry, "sending handshake initiation");
        Outcome::Network { len, to }
    }

    /// Answers an initiation that authenticated with this peer's static key.
    pub(crate) fn on_initiation(
        &mut self,
        now: Instant,
        src: SocketAddr,
        mut consumed: ConsumedInitiation,
        out: &mut [u8],
    ) -> Outcome {
        self.last_now = now;
        if self
            .last_timestamp
            .is_some_and(|last| consumed.timestamp <= last)
        {
            return Error::TimestampReplay.into();
        }
        let min_interval = Duration::from_secs(1) / INITIATIONS_PER_SECOND;
        if self
            .last_initiation_consumed
            .is_some_and(|at| now.saturating_duration_since(at) < min_interval)
        {
            return Error::InitiationFlood.into();
        }
        if out.len() < RESPONSE_LEN {
            return Error::BufferTooSmall.into();
        }
        let local_index = self.alloc_index();
        let keys = match handshake::write_response(&mut consumed, &self.psk, local_index, out) {
            Ok(keys) => keys,
            Err(error) => return error.into(),
        };
        self.cookie.stamp(now, &mut out[..RESPONSE_LEN]);
        self.last_timestamp = Some(consumed.timestamp);
        self.last_initiation_consumed = Some(now);
        // A pending initiation of ours stays pending: when both sides initiate at once, their
        // initiations cross, and each side answers the other's. Were our own handshake dropped
        // here (the kernel keeps one handshake state per peer, which the peer's initiation
        // overwrites), the peer's response to it would find nothing, both sides would hold
        // only an unconfirmed responder keypair, and the pair would stay dark until a
        // retransmission 5 s later. Kept, that response completes our handshake as initiator;
        // the peer's keypair for its own handshake moves to `previous`, where it still
        // decrypts what the peer sends on it. Data flows after one round trip.
        self.keypairs.insert(Keypair::new(
            &keys,
            local_index,
            consumed.sender_index,
            now,
            false,
        ));
        self.roam(src);
        self.last_sent_handshake = Some(now);
        self.timers.packet_received();
        self.timers.packet_traversal(now);
        self.timers.session_derived(now);
        self.timers.packet_sent();
        self.stats.rx_bytes += crate::constants::INITIATION_LEN as u64;
        self.stats.tx_bytes += RESPONSE_LEN as u64;
        tracing::debug!(peer = %self.remote, "answered handshake initiation");
        Outcome::Network {
            len: RESPONSE_LEN,
            to: src,
        }
    }

    /// Completes our handshake with a response addressed to our pending initiation.
    pub(crate) fn on_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        now: Instant,
        src: SocketAddr,
        msg: HandshakeMessage<'_>,
        out: &mut [u8],
    ) -> Outcome {
        self.last_now = now;
        let receiver = handshake::response_receiver(msg);
        let Some(pending) = self.pending.as_mut().filter(|p| p.local_index == receiver) else {
            return Error::UnknownReceiverIndex.into();
        };
        let keys = match handshake::read_response(&mut pending.state, msg) {
            Ok(keys) => keys,
            Err(error) => return error.into(),
        };
        let local_index = pending.local_index;
        self.pending = None;
        self.keypairs
            .insert(Keypair::new(&keys, local_index, msg.sender(), now, true));
        self.roam(src);
        self.timers.packet_received();
        self.timers.packet_traversal(now);
        self.timers.session_derived(now);
        self.timers.handshake_complete();
        self.stats.last_handshake = Some(now);
        self.stats.rx_bytes += RESPONSE_LEN as u64;
        self.push_event(Event::HandshakeCompleted { initiator: true });
        tracing::debug!(peer = %self.remote, "handshake completed as initiator");
        // Confirm the session to the responder: with queued data, else a keepalive.
        if self.can_flush(now) {
            self.flush_one(ctx, now, out)
        } else {
            self.send_packet(ctx, now, &[], out)
        }
    }

    /// Takes the cookie from a reply to one of our handshake messages.
    pub(crate) fn on_cookie_reply(
        &mut self,
        now: Instant,
        receiver: u32,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Outcome {
        if !self.owns_index(receiver) {
            return Error::UnknownReceiverIndex.into();
        }
        match self.cookie.consume_reply(now, nonce, sealed) {
            Ok(()) => Outcome::Done,
            Err(error) => error.into(),
        }
    }

    /// Decrypts a transport message addressed to one of our keypairs.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of a parsed transport message"
    )]
    pub(crate) fn on_transport(
        &mut self,
        now: Instant,
        src: SocketAddr,
        receiver: u32,
        counter: u64,
        sealed: &[u8],
        datagram_len: usize,
        out: &mut [u8],
    ) -> Outcome {
        self.last_now = now;
        let Some((slot, keypair)) = self.keypairs.find(receiver) else {
            return Error::UnknownReceiverIndex.into();
        };
        if !keypair.can_receive(now) {
            return Error::KeypairExpired.into();
        }
        let len = match keypair.open(counter, sealed, out) {
            Ok(len) => len,
            Err(error) => return error.into(),
        };
        if slot == Slot::Next {
            self.keypairs.confirm_next();
            self.timers.handshake_complete();
            self.stats.last_handshake = Some(now);
            self.push_event(Event::HandshakeCompleted { initiator: false });
            tracing::debug!(peer = %self.remote, "handshake completed as responder");
        }
        // The initiator renews a keypair that will soon be rejected, if traffic still flows.
        let last_minute = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        if !self.timers.sent_lastminute_handshake
            && self
                .keypairs
                .current
                .as_ref()
                .is_some_and(|k| k.initiator && k.can_send(now) && k.age(now) >= last_minute)
        {
            self.timers.sent_lastminute_handshake = true;
            self.request_initiation();
        }
        self.timers.packet_received();
        self.timers.packet_traversal(now);
        self.roam(src);
        self.stats.rx_bytes += datagram_len as u64;
        if len == 0 {
            return Outcome::Done;
        }
        self.timers.data_received(now);
        match inner_packet(&out[..len]) {
            Some((len, source)) => Outcome::Tunnel { len, source },
            None => Error::InvalidInnerPacket.into(),
        }
    }

    /// Runs expired timers and returns the next datagram to send, if any.
    pub(crate) fn update_timers(
        &mut self,
        ctx: &mut Ctx<'_>,
        now: Instant,
        out: &mut [u8],
    ) -> Outcome {
        self.last_now = now;
        if expired(&mut self.timers.zero_key_material, now) {
            self.keypairs.clear();
            self.pending = None;
            self.push_event(Event::KeysErased);
            tracing::debug!(peer = %self.remote, "erased session keys");
        }
        if expired(&mut self.timers.retransmit_handshake, now) {
            if self.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
                self.timers.send_keepalive = None;
                self.stats.queue_dropped += self.queue.clear() as u64;
                if self.timers.zero_key_material.is_none() {
                    self.timers.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
                }
                self.push_event(Event::HandshakeTimedOut);
                tracing::debug!(peer = %self.remote, "handshake timed out, giving up");
            } else {
                self.timers.handshake_attempts += 1;
                self.want_initiation = Some(true);
            }
        }
        if expired(&mut self.timers.send_keepalive, now) {
            self.want_keepalive = true;
            if self.timers.need_another_keepalive {
                self.timers.need_another_keepalive = false;
                self.timers.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
            }
        }
        if expired(&mut self.timers.new_handshake, now) {
            self.request_initiation();
        }
        if expired(&mut self.timers.persistent_keepalive, now) {
            self.want_keepalive = true;
        }

        if let Some(is_retry) = self.want_initiation.take() {
            let outcome = self.initiate(ctx, now, is_retry, out);
            if outcome != Outcome::Done {
                return outcome;
            }
        }
        if self.can_flush(now) {
            return self.flush_one(ctx, now, out);
        }
        if std::mem::take(&mut self.want_keepalive) {
            return if self.can_send(now) {
                self.send_packet(ctx, now, &[], out)
            } else {
                self.initiate(ctx, now, false, out)
            };
        }
        Outcome::Done
    }

    /// When `update_timers` should next be called: the last `now` seen if work is pending,
    /// else the earliest timer.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.want_initiation.is_some() || self.want_keepalive || self.can_flush(self.last_now) {
            Some(self.last_now)
        } else {
            self.timers.next_deadline()
        }
    }

    /// Test hook: the current keypair.
    #[cfg(test)]
    pub(crate) fn current_keypair(&mut self) -> Option<&mut Keypair> {
        self.keypairs.current.as_deref_mut()
    }
}

/// Validates a decrypted inner packet and returns its IP length and source address.
fn inner_packet(plain: &[u8]) -> Option<(usize, IpAddr)> {
    match plain.first()? >> 4 {
        4 if plain.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([plain[2], plain[3]]));
            let source: [u8; 4] = plain[12..16].try_into().ok()?;
            (20..=plain.len())
                .contains(&total)
                .then_some((total, IpAddr::V4(Ipv4Addr::from(source))))
        }
        6 if plain.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([plain[4], plain[5]]));
            let source: [u8; 16] = plain[8..24].try_into().ok()?;
            (total <= plain.len()).then_some((total, IpAddr::V6(Ipv6Addr::from(source))))
        }
        _ => None,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_packet_lengths() {
        let mut v4 = [0_u8; 48];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&40_u16.to_be_bytes());
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            inner_packet(&v4),
            Some((40, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))))
        );
        v4[2..4].copy_from_slice(&49_u16.to_be_bytes());
        assert_eq!(inner_packet(&v4), None);
        v4[2..4].copy_from_slice(&19_u16.to_be_bytes());
        assert_eq!(inner_packet(&v4), None);

        let mut v6 = [0_u8; 64];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8_u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(
            inner_packet(&v6),
            Some((48, IpAddr::V6(Ipv6Addr::LOCALHOST)))
        );
        assert_eq!(inner_packet(&v6[..47]), None);
        assert_eq!(inner_packet(&[0x10; 40]), None);
        assert_eq!(inner_packet(&[]), None);
    }
}
