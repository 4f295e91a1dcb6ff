//! One remote peer: handshake state, keypairs, timers and the queue of packets waiting for a
//! session. A [`crate::Device`] holds many; [`crate::Peer`] (in `single.rs`) is the standalone,
//! single-peer API built on a one-peer device.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use snow::HandshakeState;
use snow::params::NoiseParams;

use crate::action::{Event, Outcome};
use crate::constants::{
    INITIATIONS_PER_SECOND, KEEPALIVE_TIMEOUT, MAX_QUEUED_PACKETS, MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, RESPONSE_LEN,
};
use crate::cookie::PeerCookie;
use crate::data::{PeerData, Transport};
use crate::error::Error;
use crate::handshake::{self, ConsumedInitiation};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::HandshakeMessage;
use crate::rng::{CryptoRandom, jitter};
use crate::session::{Keypair, Keypairs};
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

/// The protocol state of one remote peer: the control side, owned by a [`crate::Device`]. Its
/// data side ([`PeerData`]: keypairs, endpoint, the timers packets move, counters) is shared
/// with the packet threads; every call here first takes over what they left (`sync`).
pub(crate) struct PeerCore {
    remote: PublicKey,
    psk: PresharedKey,
    cookie: PeerCookie,
    data: Arc<PeerData>,
    /// Upper 24 bits of every local index of this peer (the device slot).
    index_prefix: u32,
    index_low: u8,
    pending: Option<PendingInitiation>,
    last_timestamp: Option<Tai64N>,
    last_initiation_consumed: Option<Instant>,
    last_sent_handshake: Option<Instant>,
    timers: Timers,
    queue: PacketQueue,
    events: VecDeque<Event>,
    /// An initiation should be attempted at the next `update_timers` (`true`: as a retry).
    want_initiation: Option<bool>,
    want_keepalive: bool,
    last_now: Instant,
    queue_dropped: u64,
}

impl PeerCore {
    pub(crate) fn new(
        config: &PeerConfig,
        index_prefix: u32,
        index_seed: u8,
        jitter_seed: u64,
        mtu: Option<usize>,
        now: Instant,
    ) -> Self {
        let interval = config.persistent_keepalive.filter(|d| !d.is_zero());
        // As `wg set ... persistent-keepalive` does, bring the tunnel up at once.
        let want_keepalive = interval.is_some() && config.endpoint.is_some();
        Self {
            remote: config.public_key,
            psk: config.preshared_key.clone().unwrap_or_default(),
            cookie: PeerCookie::new(&config.public_key),
            data: Arc::new(PeerData::new(
                now,
                config.endpoint,
                interval,
                jitter_seed,
                mtu,
            )),
            index_prefix,
            index_low: index_seed,
            pending: None,
            last_timestamp: None,
            last_initiation_consumed: None,
            last_sent_handshake: None,
            timers: Timers::default(),
            queue: PacketQueue::new(config.max_queued_packets),
            events: VecDeque::new(),
            want_initiation: None,
            want_keepalive,
            last_now: now,
            queue_dropped: 0,
        }
    }

    pub(crate) fn public_key(&self) -> &PublicKey {
        &self.remote
    }

    /// The data side, for packet threads.
    pub(crate) fn data(&self) -> &Arc<PeerData> {
        &self.data
    }

    /// Asks for a keepalive (or, without a session, a handshake) at the next `update_timers`.
    pub(crate) fn request_keepalive(&mut self) {
        self.want_keepalive = true;
    }

    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        self.data.endpoint()
    }

    pub(crate) fn stats(&self) -> PeerStats {
        PeerStats {
            tx_bytes: self.data.tx_bytes.load(Relaxed),
            rx_bytes: self.data.rx_bytes.load(Relaxed),
            last_handshake: self.data.last_handshake(),
            queue_dropped: self.queue_dropped,
        }
    }

    /// Sets the endpoint from configuration; queued packets get a handshake attempt.
    pub(crate) fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.sync();
        self.data.set_endpoint(endpoint);
        if !self.queue.is_empty() && self.want_initiation.is_none() {
            self.want_initiation = Some(false);
        }
    }

    pub(crate) fn set_mtu(&self, mtu: Option<usize>) {
        self.data.set_mtu(mtu);
    }

    /// Takes over what packet threads left in the data side: events (roaming, a responder's
    /// session confirmed by its first packet) and requests for a handshake (rekey due).
    pub(crate) fn sync(&mut self) {
        let mut events = Vec::new();
        let Some((confirmed, want_initiation)) = self.data.take_for_control(&mut events) else {
            return;
        };
        if let Some(at) = confirmed {
            self.timers.handshake_complete();
            self.data.sent_lastminute_handshake.store(false, Relaxed);
            self.data.set_last_handshake(at);
            tracing::debug!(peer = %self.remote, "handshake completed as responder");
        }
        for event in events {
            self.push_event(event);
        }
        if want_initiation {
            self.request_initiation();
        }
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.sync();
        self.events.pop_front()
    }

    /// Whether `index` is one of ours (pending handshake or keypair).
    pub(crate) fn owns_index(&self, index: u32) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.local_index == index)
            || self.data.uses_index(index)
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

    fn can_flush(&self, now: Instant) -> bool {
        !self.queue.is_empty() && self.data.endpoint().is_some() && self.data.can_send(now)
    }

    fn request_initiation(&mut self) {
        if self.want_initiation.is_none() {
            self.want_initiation = Some(false);
        }
    }

    /// Tells packet threads whether packets wait for a session (new ones queue behind them).
    fn queue_changed(&self) {
        self.data.queued.store(!self.queue.is_empty(), Relaxed);
    }

    /// Encrypts one inner packet for the peer, or queues it and starts a handshake.
    pub(crate) fn encapsulate(
        &mut self,
        ctx: &mut Ctx<'_>,
        now: Instant,
        packet: &[u8],
        out: &mut [u8],
    ) -> Outcome {
        self.sync();
        self.last_now = now;
        if packet.is_empty() {
            return Error::InvalidInnerPacket.into();
        }
        if self.queue.is_empty() && self.data.can_send(now) {
            return self.send_packet(now, packet, out);
        }
        if self.queue.push(packet) {
            self.queue_dropped += 1;
        }
        self.queue_changed();
        if self.can_flush(now) {
            return self.flush_one(now, out);
        }
        self.initiate(ctx, now, false, out)
    }

    /// Seals `packet` (empty: a keepalive) with the current keypair.
    fn send_packet(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Outcome {
        let outcome = match self.data.seal(now, packet, out) {
            Ok((len, to)) => Outcome::Network { len, to },
            Err(error) => error.into(),
        };
        self.sync();
        outcome
    }

    fn flush_one(&mut self, now: Instant, out: &mut [u8]) -> Outcome {
        let Some(packet) = self.queue.pop() else {
            return Outcome::Done;
        };
        self.queue_changed();
        let outcome = self.send_packet(now, &packet, out);
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
        let Some(to) = self.data.endpoint() else {
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
        self.data.timers.packet_traversal(now);
        self.data.timers.packet_sent();
        self.timers
            .handshake_initiated(now, jitter(ctx.rng, REKEY_TIMEOUT_JITTER_MAX));
        self.data.tx_bytes.fetch_add(len as u64, Relaxed);
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
        self.sync();
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
        let keypair = Keypair::new(&keys, local_index, consumed.sender_index, now, false);
        self.data.update_keypairs(|k| k.insert(keypair));
        self.data.roam(now, src);
        self.last_sent_handshake = Some(now);
        self.data.timers.packet_received();
        self.data.timers.packet_traversal(now);
        self.timers.session_derived(now);
        self.data.timers.packet_sent();
        self.data
            .rx_bytes
            .fetch_add(crate::constants::INITIATION_LEN as u64, Relaxed);
        self.data.tx_bytes.fetch_add(RESPONSE_LEN as u64, Relaxed);
        self.sync();
        tracing::debug!(peer = %self.remote, "answered handshake initiation");
        Outcome::Network {
            len: RESPONSE_LEN,
            to: src,
        }
    }

    /// Completes our handshake with a response addressed to our pending initiation.
    pub(crate) fn on_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: HandshakeMessage<'_>,
        out: &mut [u8],
    ) -> Outcome {
        self.sync();
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
        let keypair = Keypair::new(&keys, local_index, msg.sender(), now, true);
        self.data.update_keypairs(|k| k.insert(keypair));
        self.data.roam(now, src);
        self.sync();
        self.data.timers.packet_received();
        self.data.timers.packet_traversal(now);
        self.timers.session_derived(now);
        self.timers.handshake_complete();
        self.data.sent_lastminute_handshake.store(false, Relaxed);
        self.data.set_last_handshake(now);
        self.data.rx_bytes.fetch_add(RESPONSE_LEN as u64, Relaxed);
        self.push_event(Event::HandshakeCompleted { initiator: true });
        tracing::debug!(peer = %self.remote, "handshake completed as initiator");
        // Confirm the session to the responder: with queued data, else a keepalive.
        if self.can_flush(now) {
            self.flush_one(now, out)
        } else {
            self.send_packet(now, &[], out)
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

    /// Decrypts a transport message addressed to one of our keypairs (through the data side,
    /// as a packet thread would), then takes over what it observed.
    pub(crate) fn on_transport(
        &mut self,
        now: Instant,
        src: SocketAddr,
        message: &Transport<'_>,
        out: &mut [u8],
    ) -> Outcome {
        self.last_now = now;
        let outcome = self.data.open(now, src, message, out);
        self.sync();
        outcome
    }

    /// Runs expired timers and returns the next datagram to send, if any.
    pub(crate) fn update_timers(
        &mut self,
        ctx: &mut Ctx<'_>,
        now: Instant,
        out: &mut [u8],
    ) -> Outcome {
        self.sync();
        self.last_now = now;
        let data = self.data.clone();
        let (epoch, dt) = (data.timers.epoch, &data.timers);
        if expired(&mut self.timers.zero_key_material, now) {
            self.data.update_keypairs(|k| *k = Keypairs::default());
            self.pending = None;
            self.push_event(Event::KeysErased);
            tracing::debug!(peer = %self.remote, "erased session keys");
        }
        if expired(&mut self.timers.retransmit_handshake, now) {
            if self.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
                dt.send_keepalive.set(epoch, None);
                self.queue_dropped += self.queue.clear() as u64;
                self.queue_changed();
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
        if dt.send_keepalive.take_expired(epoch, now) {
            self.want_keepalive = true;
            if dt.need_another_keepalive.swap(false, Relaxed) {
                dt.send_keepalive.set(epoch, Some(now + KEEPALIVE_TIMEOUT));
            }
        }
        if dt.new_handshake.take_expired(epoch, now) {
            self.request_initiation();
        }
        if dt.persistent_keepalive.take_expired(epoch, now) {
            self.want_keepalive = true;
        }

        if let Some(is_retry) = self.want_initiation.take() {
            let outcome = self.initiate(ctx, now, is_retry, out);
            if outcome != Outcome::Done {
                return outcome;
            }
        }
        if self.can_flush(now) {
            return self.flush_one(now, out);
        }
        if std::mem::take(&mut self.want_keepalive) {
            return if self.data.can_send(now) {
                self.send_packet(now, &[], out)
            } else {
                self.initiate(ctx, now, false, out)
            };
        }
        Outcome::Done
    }

    /// When `update_timers` should next be called: the last `now` seen if work is pending
    /// (here or asked for by a packet thread), else the earliest timer.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.want_initiation.is_some() || self.want_keepalive || self.can_flush(self.last_now) {
            Some(self.last_now)
        } else if let Some(at) = self.data.wake_at() {
            Some(at.min(self.last_now))
        } else {
            [
                self.timers.next_deadline(),
                self.data.timers.next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min()
        }
    }

    /// Test hook: the current keypair.
    #[cfg(test)]
    pub(crate) fn current_keypair(&mut self) -> Option<Arc<Keypair>> {
        self.data.keypairs().current.clone()
    }
}
