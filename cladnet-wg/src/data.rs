//! The data side of one peer: what sealing and opening transport messages needs, shared
//! (`Arc`) between the control side (the [`crate::Device`], `&mut`, single owner) and any
//! number of packet threads, which use it through `&self` without the device.
//!
//! What the packet path observes that the timers need (data sent or received, any packet
//! sent or received, a rekey due by counter or age, an authenticated packet from a new
//! source, a responder's session confirmed) is recorded here in atomics, or for the rare
//! events in a small queue, and the control side takes it over at its next call
//! (`PeerCore::sync`). The timer deadlines the packet path arms and disarms are atomics
//! themselves, with the kernel's rules (timers.c): a deadline armed "if not armed" is a
//! compare-and-swap from disarmed. Driven from one thread through the device, the sequence of
//! timer changes is exactly that of the single-owner design; from several threads, each
//! change is atomic, as the kernel's `mod_timer` calls from its packet paths are.
//!
//! Jitter for the new-handshake timer armed on the send path comes from a per-peer SplitMix64
//! sequence seeded from the device's CSPRNG when the peer is added: no OS randomness per
//! packet. The jitter only spreads retries apart (it protects nothing), so a fast generator
//! seeded once is enough.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::action::{Action, Event, Outcome};
use crate::constants::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};
use crate::error::Error;
use crate::messages::{self, Message};
use crate::session::{Keypairs, Slot};

/// Events the packet path queues for the control side, at most (roaming and confirmations
/// are rare; a flood of roams keeps the newest).
const MAX_DATA_EVENTS: usize = 16;

/// A deadline shared between threads: nanoseconds after the peer's epoch plus one, 0 when
/// disarmed.
#[derive(Debug, Default)]
pub(crate) struct Deadline(AtomicU64);

/// Converts between `Instant`s and a peer's atomic time encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(Instant);

impl Epoch {
    fn new(now: Instant) -> Self {
        // An hour of slack before the first `now`: a packet thread's clock read can precede
        // the moment the peer was added.
        Self(now.checked_sub(Duration::from_secs(3600)).unwrap_or(now))
    }

    fn encode(self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn decode(self, raw: u64) -> Option<Instant> {
        (raw != 0).then(|| self.0 + Duration::from_nanos(raw - 1))
    }
}

impl Deadline {
    pub(crate) fn get(&self, epoch: Epoch) -> Option<Instant> {
        epoch.decode(self.0.load(Relaxed))
    }

    pub(crate) fn set(&self, epoch: Epoch, at: Option<Instant>) {
        self.0.store(at.map_or(0, |at| epoch.encode(at)), Relaxed);
    }

    pub(crate) fn is_armed(&self) -> bool {
        self.0.load(Relaxed) != 0
    }

    /// Arms the deadline unless it is armed; returns whether it was armed here.
    fn arm_if_disarmed(&self, epoch: Epoch, at: Instant) -> bool {
        self.0
            .compare_exchange(0, epoch.encode(at), Relaxed, Relaxed)
            .is_ok()
    }

    /// Takes a deadline that has passed, disarming it.
    pub(crate) fn take_expired(&self, epoch: Epoch, now: Instant) -> bool {
        let raw = self.0.load(Relaxed);
        raw != 0
            && raw <= epoch.encode(now)
            && self.0.compare_exchange(raw, 0, Relaxed, Relaxed).is_ok()
    }
}

/// The timers the packet path arms and disarms (whitepaper section 6; see `timers.rs` for the
/// table of rules). The others (handshake retransmission, key erasure) are the control side's.
#[derive(Debug)]
pub(crate) struct DataTimers {
    pub(crate) epoch: Epoch,
    pub(crate) send_keepalive: Deadline,
    pub(crate) new_handshake: Deadline,
    pub(crate) persistent_keepalive: Deadline,
    /// Data arrived while the keepalive timer was already armed.
    pub(crate) need_another_keepalive: AtomicBool,
    /// Persistent keepalive interval, if configured.
    pub(crate) persistent_interval: Option<Duration>,
    /// SplitMix64 state for the new-handshake jitter.
    jitter: AtomicU64,
}

impl DataTimers {
    /// Any authenticated packet (handshake, data or keepalive) was sent.
    pub(crate) fn packet_sent(&self) {
        self.send_keepalive.set(self.epoch, None);
    }

    /// Any authenticated packet was received.
    pub(crate) fn packet_received(&self) {
        self.new_handshake.set(self.epoch, None);
    }

    /// Any authenticated packet went either way.
    pub(crate) fn packet_traversal(&self, now: Instant) {
        if let Some(interval) = self.persistent_interval {
            self.persistent_keepalive
                .set(self.epoch, Some(now + interval));
        }
    }

    /// A non-empty data packet was sent: expect to hear back. The jitter is drawn only when
    /// the timer is disarmed.
    pub(crate) fn data_sent(&self, now: Instant) {
        if !self.new_handshake.is_armed() {
            let at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter();
            self.new_handshake.arm_if_disarmed(self.epoch, at);
        }
    }

    /// A non-empty data packet was received: answer with a keepalive if we stay silent.
    pub(crate) fn data_received(&self, now: Instant) {
        if !self
            .send_keepalive
            .arm_if_disarmed(self.epoch, now + KEEPALIVE_TIMEOUT)
        {
            self.need_another_keepalive.store(true, Relaxed);
        }
    }

    /// The earliest armed deadline of these timers.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            &self.send_keepalive,
            &self.new_handshake,
            &self.persistent_keepalive,
        ]
        .into_iter()
        .filter_map(|d| d.get(self.epoch))
        .min()
    }

    /// A uniformly distributed duration in `[0, REKEY_TIMEOUT_JITTER_MAX)`, millisecond
    /// granularity, as `rng::jitter` draws it.
    fn jitter(&self) -> Duration {
        // SplitMix64 (Steele, Lea, Flood 2014): the increment is atomic, the mix is pure.
        let mut z = self
            .jitter
            .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let max_ms = u64::try_from(REKEY_TIMEOUT_JITTER_MAX.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(z % max_ms)
    }
}

/// The data side of one WireGuard peer: its sessions (keypairs), endpoint, the timers its
/// packets move and its traffic counters. Get it with [`crate::Device::peer_data`]; it stays
/// valid (and the same) while the peer is configured, across handshakes and roaming.
///
/// [`PeerData::encapsulate`] and [`PeerData::decapsulate`] take `&self`: any number of
/// threads seal and open at once, without the device. What only the control side can do
/// (queue a packet while no session can send, handshakes, timers) is left to the device:
/// [`Error::NoSession`] tells the caller to hand the packet to [`crate::Device::encapsulate`],
/// and handshake messages go to [`crate::Device::decapsulate`]. Run the device's timers as
/// before (`poll_timeout` / `update_timers`): they see what the packet threads did.
pub struct PeerData {
    keypairs: ArcSwap<Keypairs>,
    /// Serializes replacements of `keypairs` (the control side's handshakes, a packet thread
    /// confirming a responder's session); readers never take it.
    rotate: Mutex<()>,
    endpoint: ArcSwapOption<SocketAddr>,
    pub(crate) timers: DataTimers,
    /// Tunnel MTU capping the padding (0: none).
    mtu: AtomicUsize,
    /// The control side holds packets waiting for a session: new ones queue behind them.
    pub(crate) queued: AtomicBool,
    /// A new handshake is wanted (rekey by counter or age): for the control side.
    pub(crate) want_initiation: AtomicBool,
    /// The initiator asked for a handshake because its keypair nears `REJECT_AFTER_TIME`.
    pub(crate) sent_lastminute_handshake: AtomicBool,
    /// When control work was first asked for since the control side last looked (0: none).
    wake: AtomicU64,
    /// When a responder's session was last confirmed by its first packet (0: not since the
    /// control side last looked).
    confirmed_at: AtomicU64,
    /// When the last handshake completed (0: none yet), for status.
    handshake_at: AtomicU64,
    events: Mutex<Vec<Event>>,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
}

impl std::fmt::Debug for PeerData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerData")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

/// A transport message addressed to us: its receiver index, counter and sealed body.
pub(crate) struct Transport<'d> {
    pub(crate) receiver: u32,
    pub(crate) counter: u64,
    pub(crate) sealed: &'d [u8],
    pub(crate) len: usize,
}

impl PeerData {
    pub(crate) fn new(
        now: Instant,
        endpoint: Option<SocketAddr>,
        persistent_interval: Option<Duration>,
        jitter_seed: u64,
        mtu: Option<usize>,
    ) -> Self {
        Self {
            keypairs: ArcSwap::default(),
            rotate: Mutex::new(()),
            endpoint: ArcSwapOption::new(endpoint.map(Arc::new)),
            timers: DataTimers {
                epoch: Epoch::new(now),
                send_keepalive: Deadline::default(),
                new_handshake: Deadline::default(),
                persistent_keepalive: Deadline::default(),
                need_another_keepalive: AtomicBool::new(false),
                persistent_interval,
                jitter: AtomicU64::new(jitter_seed),
            },
            mtu: AtomicUsize::new(mtu.unwrap_or(0)),
            queued: AtomicBool::new(false),
            want_initiation: AtomicBool::new(false),
            sent_lastminute_handshake: AtomicBool::new(false),
            wake: AtomicU64::new(0),
            confirmed_at: AtomicU64::new(0),
            handshake_at: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
        }
    }

    /// The peer's current endpoint (configured, or where its last authenticated packet came
    /// from).
    #[must_use]
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.load().as_deref().copied()
    }

    /// When the last handshake with the peer completed (either side initiating).
    #[must_use]
    pub fn last_handshake(&self) -> Option<Instant> {
        self.timers.epoch.decode(self.handshake_at.load(Relaxed))
    }

    pub(crate) fn set_last_handshake(&self, at: Instant) {
        self.handshake_at
            .store(self.timers.epoch.encode(at), Relaxed);
    }

    pub(crate) fn set_endpoint(&self, endpoint: SocketAddr) {
        self.endpoint.store(Some(Arc::new(endpoint)));
    }

    pub(crate) fn set_mtu(&self, mtu: Option<usize>) {
        self.mtu.store(mtu.unwrap_or(0), Relaxed);
    }

    /// Whether the device has control work for this peer that a packet thread asked for (a
    /// handshake, a confirmed session, an endpoint change): when it came up, if so. The
    /// device's `poll_timeout` includes it.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.timers.epoch.decode(self.wake.load(Relaxed))
    }

    fn wake(&self, now: Instant) {
        let _ = self
            .wake
            .compare_exchange(0, self.timers.epoch.encode(now), Relaxed, Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn keypairs(&self) -> arc_swap::Guard<Arc<Keypairs>> {
        self.keypairs.load()
    }

    /// Replaces the keypair set with `f` applied to it (the control side's handshakes).
    pub(crate) fn update_keypairs(&self, f: impl FnOnce(&mut Keypairs)) {
        let _held = self.rotate.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keypairs = Keypairs::clone(&self.keypairs.load());
        f(&mut keypairs);
        self.keypairs.store(Arc::new(keypairs));
    }

    /// Whether `index` is one of our keypairs' local indexes.
    pub(crate) fn uses_index(&self, index: u32) -> bool {
        self.keypairs.load().uses_index(index)
    }

    /// Whether the current keypair may encrypt at `now`.
    pub(crate) fn can_send(&self, now: Instant) -> bool {
        self.keypairs
            .load()
            .current
            .as_ref()
            .is_some_and(|k| k.can_send(now))
    }

    pub(crate) fn request_initiation(&self, now: Instant) {
        self.want_initiation.store(true, Relaxed);
        self.wake(now);
    }

    fn push_event(&self, now: Instant, event: Event) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() >= MAX_DATA_EVENTS {
            events.remove(0);
        }
        events.push(event);
        drop(events);
        self.wake(now);
    }

    /// What the packet path left for the control side, in the order it happened: events
    /// (appended to `events`), when a responder's session was last confirmed, and whether a
    /// handshake is wanted. Clears the wake-up. Cheap when nothing happened (one atomic).
    pub(crate) fn take_for_control(
        &self,
        events: &mut impl Extend<Event>,
    ) -> Option<(Option<Instant>, bool)> {
        if self.wake.swap(0, Relaxed) == 0 {
            return None;
        }
        events.extend(
            self.events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..),
        );
        let confirmed = self.timers.epoch.decode(self.confirmed_at.swap(0, Relaxed));
        Some((confirmed, self.want_initiation.swap(false, Relaxed)))
    }

    /// Seals `packet` (empty: a keepalive) with the current keypair; returns the datagram's
    /// length and destination.
    pub(crate) fn seal(
        &self,
        now: Instant,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, SocketAddr), Error> {
        let to = self.endpoint().ok_or(Error::NoEndpoint)?;
        let keypairs = self.keypairs.load();
        let keypair = keypairs
            .current
            .as_ref()
            .filter(|k| k.can_send(now))
            .ok_or(Error::KeypairExpired)?;
        let mtu = Some(self.mtu.load(Relaxed)).filter(|m| *m != 0);
        let len = keypair.seal(packet, mtu, out)?;
        let rekey = keypair.wants_rekey_on_send(now);
        self.timers.packet_traversal(now);
        self.timers.packet_sent();
        if !packet.is_empty() {
            self.timers.data_sent(now);
        }
        if rekey {
            self.request_initiation(now);
        }
        self.tx_bytes.fetch_add(len as u64, Relaxed);
        Ok((len, to))
    }

    /// Encrypts one inner IP packet for this peer, from any thread.
    ///
    /// Returns [`Action::WriteToNetwork`], or [`Action::Err`] with [`Error::NoSession`] when
    /// no session can send or packets already wait for one: pass the packet to
    /// [`crate::Device::encapsulate`], which queues it and starts a handshake. Other errors
    /// as for the device's `encapsulate`.
    pub fn encapsulate<'a>(&self, now: Instant, packet: &[u8], out: &'a mut [u8]) -> Action<'a> {
        if packet.is_empty() {
            return Action::Err(Error::InvalidInnerPacket);
        }
        if self.queued.load(Relaxed) || !self.can_send(now) {
            return Action::Err(Error::NoSession);
        }
        match self.seal(now, packet, out) {
            Ok((len, to)) => Outcome::Network { len, to },
            Err(Error::KeypairExpired) => Outcome::Err(Error::NoSession),
            Err(error) => Outcome::Err(error),
        }
        .into_action(out)
    }

    /// Decrypts one transport message from `src` addressed to this peer (see
    /// [`crate::receiver_slot`] to find the peer), from any thread.
    ///
    /// Returns [`Action::WriteToTunnel`] with the inner packet (check its source against the
    /// peer's allowed addresses), [`Action::Done`] for a keepalive, or [`Action::Err`]. Any
    /// other message type is [`Error::MalformedMessage`] here: handshake messages are the
    /// device's. `out` must hold at least `datagram.len()` bytes.
    pub fn decapsulate<'a>(
        &self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Action<'a> {
        let Ok(Message::Transport {
            receiver,
            counter,
            sealed,
        }) = messages::parse(datagram)
        else {
            return Action::Err(Error::MalformedMessage);
        };
        let message = Transport {
            receiver,
            counter,
            sealed,
            len: datagram.len(),
        };
        self.open(now, src, &message, out).into_action(out)
    }

    /// Opens a transport message and moves the timers, endpoint and counters as the kernel's
    /// receive path does.
    pub(crate) fn open(
        &self,
        now: Instant,
        src: SocketAddr,
        message: &Transport<'_>,
        out: &mut [u8],
    ) -> Outcome {
        let fail = Outcome::Err;
        let keypairs = self.keypairs.load();
        let Some((slot, keypair)) = keypairs.find(message.receiver) else {
            return fail(Error::UnknownReceiverIndex);
        };
        let len = match keypair.open(now, message.counter, message.sealed, out) {
            Ok(len) => len,
            Err(error) => return fail(error),
        };
        if slot == Slot::Next {
            self.confirm(now, keypair);
        }
        // The initiator renews a keypair that will soon be rejected, if traffic still flows.
        let last_minute = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        if !self.sent_lastminute_handshake.load(Relaxed)
            && self
                .keypairs
                .load()
                .current
                .as_ref()
                .is_some_and(|k| k.initiator && k.can_send(now) && k.age(now) >= last_minute)
        {
            self.sent_lastminute_handshake.store(true, Relaxed);
            self.request_initiation(now);
        }
        self.timers.packet_received();
        self.timers.packet_traversal(now);
        self.roam(now, src);
        self.rx_bytes.fetch_add(message.len as u64, Relaxed);
        if len == 0 {
            return Outcome::Done;
        }
        self.timers.data_received(now);
        match inner_packet(&out[..len]) {
            Some((len, source)) => Outcome::Tunnel { len, source },
            None => Error::InvalidInnerPacket.into(),
        }
    }

    /// The first packet on a responder's keypair proves the initiator has it: it becomes
    /// current. The control side completes the handshake's bookkeeping at its next call.
    fn confirm(&self, now: Instant, keypair: &Arc<crate::session::Keypair>) {
        let mut confirmed = false;
        self.update_keypairs(|k| {
            if k.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, keypair)) {
                k.confirm_next();
                confirmed = true;
            }
        });
        if confirmed {
            self.confirmed_at
                .store(self.timers.epoch.encode(now), Relaxed);
            self.push_event(now, Event::HandshakeCompleted { initiator: false });
        }
    }

    /// Follows the peer to the source of an authenticated packet.
    pub(crate) fn roam(&self, now: Instant, src: SocketAddr) {
        if self.endpoint.load().as_deref() != Some(&src) {
            self.set_endpoint(src);
            self.push_event(now, Event::EndpointChanged { endpoint: src });
        }
    }
}

/// The device slot a transport message is addressed to: its receiver index (the local index
/// of one of our keypairs) names the slot of the peer it belongs to, which
/// [`crate::PeerId::slot`] gives for a peer. Lets packet threads find the [`PeerData`] to
/// open a datagram with in a table of their own. `None` for anything but a transport message.
#[must_use]
pub fn receiver_slot(datagram: &[u8]) -> Option<u32> {
    match messages::parse(datagram) {
        Ok(Message::Transport { receiver, .. }) => Some(receiver >> 8),
        _ => None,
    }
}

use crate::inner::inner_packet;
