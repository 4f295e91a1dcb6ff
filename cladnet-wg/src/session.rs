//! Transport keypairs: encryption and decryption of type-4 messages (whitepaper 5.4.6), and the
//! previous/current/next slots that keep in-flight packets decrypting across a rekey.
//!
//! A keypair is the data side of one session: it is shared (`Arc`) between the control side
//! (the [`crate::Device`]) and any number of packet threads, which seal and open through `&self`
//! at once. The send counter is an atomic, so concurrent senders never reuse a nonce; the replay
//! window has a lock of its own, held only to check and record a counter (never while
//! decrypting), as the kernel's per-keypair counter lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::constants::{
    PADDING_MULTIPLE, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME, TAG_LEN, TRANSPORT_HEADER_LEN,
};
use crate::error::Error;
use crate::handshake::SessionKeys;
use crate::messages::{self, MessageType};
use crate::replay::ReplayWindow;

/// The AEAD nonce: four zero bytes followed by the little-endian counter.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0_u8; 12];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    // Unique: every counter is used once per key (the send counter is taken atomically; a
    // received counter is checked against the replay window only after decryption, which
    // never reuses a nonce for sealing).
    Nonce::assume_unique_for_key(bytes)
}

/// A ChaCha20-Poly1305 key for transport messages (ring's implementation: its assembly is
/// 3x RustCrypto's at 1440 bytes and 10x at 64 on this machine, see `examples/aead_speed.rs`).
fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key"))
}

/// One session's keys and counters. The keys live inside the ciphers (ring's, which do not
/// zero their copy on drop; the handshake's own copies are zeroized).
pub(crate) struct Keypair {
    send: LessSafeKey,
    receive: LessSafeKey,
    /// Our index: peers put it in the receiver field of packets for this session.
    pub(crate) local_index: u32,
    /// The peer's index, written in the receiver field of our packets.
    pub(crate) remote_index: u32,
    /// Counter of the next message to send (may pass `REJECT_AFTER_MESSAGES`: such counters are
    /// never used).
    send_counter: AtomicU64,
    replay: Mutex<ReplayWindow>,
    created: Instant,
    /// Whether we sent the initiation of the handshake that created this keypair.
    pub(crate) initiator: bool,
}

impl Keypair {
    pub(crate) fn new(
        keys: &SessionKeys,
        local_index: u32,
        remote_index: u32,
        now: Instant,
        initiator: bool,
    ) -> Self {
        Self {
            send: aead_key(&keys.send),
            receive: aead_key(&keys.receive),
            local_index,
            remote_index,
            send_counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::default()),
            created: now,
            initiator,
        }
    }

    /// Time since the handshake that created this keypair.
    pub(crate) fn age(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.created)
    }

    /// Whether the keypair may still encrypt: younger than `REJECT_AFTER_TIME` and with its
    /// counter below `REJECT_AFTER_MESSAGES`.
    pub(crate) fn can_send(&self, now: Instant) -> bool {
        self.age(now) < REJECT_AFTER_TIME && self.send_counter.load(Relaxed) < REJECT_AFTER_MESSAGES
    }

    /// Decrypts a transport message body (`sealed` = ciphertext and tag) into `out` and returns
    /// the plaintext length (padding included), if the keypair may still decrypt (younger than
    /// `REJECT_AFTER_TIME`, counter window below `REJECT_AFTER_MESSAGES`; else
    /// `KeypairExpired`). The counter is checked against the replay window before decrypting
    /// and recorded only once the packet authenticated: the replay lock is taken once before
    /// and once after, never while decrypting.
    pub(crate) fn open(
        &self,
        now: Instant,
        counter: u64,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        if self.age(now) >= REJECT_AFTER_TIME {
            return Err(Error::KeypairExpired);
        }
        {
            let window = self.replay();
            if window.next_expected() >= REJECT_AFTER_MESSAGES {
                return Err(Error::KeypairExpired);
            }
            if !window.would_accept(counter) {
                return Err(Error::Replay);
            }
        }
        self.decrypt_and_record(counter, sealed, out)
    }

    /// Whether the keypair may still decrypt.
    #[cfg(test)]
    pub(crate) fn can_receive(&self, now: Instant) -> bool {
        self.age(now) < REJECT_AFTER_TIME && self.replay().next_expected() < REJECT_AFTER_MESSAGES
    }

    // A poisoned window is still a consistent one (every update completes or does nothing).
    fn replay(&self) -> MutexGuard<'_, ReplayWindow> {
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether sending on this keypair should start a new handshake: too many messages, or (for
    /// the initiator only, to avoid both sides rekeying at once) too old.
    pub(crate) fn wants_rekey_on_send(&self, now: Instant) -> bool {
        self.send_counter.load(Relaxed) > REKEY_AFTER_MESSAGES
            || (self.initiator && self.age(now) >= REKEY_AFTER_TIME)
    }

    /// Encrypts `plaintext` into a complete transport message in `out` and returns its length.
    ///
    /// The plaintext is zero-padded to a multiple of 16 bytes, but not beyond `mtu` (the tunnel
    /// MTU, when known) for packets that fit in it, as the kernel does. Fails with
    /// [`Error::KeypairExpired`] once the counter reached `REJECT_AFTER_MESSAGES` (the caller
    /// checks the age) and with [`Error::BufferTooSmall`] without touching the counter.
    pub(crate) fn seal(
        &self,
        plaintext: &[u8],
        mtu: Option<usize>,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let mut padded = plaintext.len().next_multiple_of(PADDING_MULTIPLE);
        if let Some(mtu) = mtu.filter(|mtu| plaintext.len() <= *mtu) {
            padded = padded.min(mtu);
        }
        let total = TRANSPORT_HEADER_LEN + padded + TAG_LEN;
        let out = out.get_mut(..total).ok_or(Error::BufferTooSmall)?;
        // Taken atomically: concurrent senders each get their own nonce.
        let counter = self.send_counter.fetch_add(1, Relaxed);
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(Error::KeypairExpired);
        }

        messages::write_type(out, MessageType::Transport);
        out[4..8].copy_from_slice(&self.remote_index.to_le_bytes());
        out[8..16].copy_from_slice(&counter.to_le_bytes());
        let (body, tag_out) = out[TRANSPORT_HEADER_LEN..].split_at_mut(padded);
        body[..plaintext.len()].copy_from_slice(plaintext);
        body[plaintext.len()..].fill(0);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), body)
            .map_err(|_| Error::BufferTooSmall)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Decrypts and, once authenticated, records the counter in the replay window.
    fn decrypt_and_record(
        &self,
        counter: u64,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let len = sealed
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(Error::MalformedMessage)?;
        // Ciphertext and tag, opened in place; the plaintext is the first `len` bytes.
        let out = out.get_mut(..sealed.len()).ok_or(Error::BufferTooSmall)?;
        out.copy_from_slice(sealed);
        self.receive
            .open_in_place(nonce(counter), Aad::empty(), out)
            .map_err(|_| Error::DecryptionFailed)?;
        if !self.replay().accept(counter) {
            return Err(Error::Replay);
        }
        Ok(len)
    }

    /// Test hook: moves the send counter (to exercise the message limits).
    #[cfg(test)]
    pub(crate) fn set_send_counter(&self, counter: u64) {
        self.send_counter.store(counter, Relaxed);
    }
}

/// Which keypair slot a packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Current,
    Previous,
    Next,
}

/// The keypairs of one peer: an immutable set, replaced as a whole (see `PeerData`), so a
/// packet thread reads all three slots from one consistent snapshot.
///
/// - `current` encrypts everything we send;
/// - `previous` (the keypair `current` replaced) keeps decrypting packets still in flight;
/// - `next` is a responder's fresh keypair, unusable for sending until the initiator proves it
///   derived the same keys by sending the first packet with it.
#[derive(Default, Clone)]
pub(crate) struct Keypairs {
    pub(crate) current: Option<Arc<Keypair>>,
    pub(crate) previous: Option<Arc<Keypair>>,
    pub(crate) next: Option<Arc<Keypair>>,
}

impl Keypairs {
    /// Installs a keypair from a handshake we completed.
    pub(crate) fn insert(&mut self, keypair: Keypair) {
        let keypair = Some(Arc::new(keypair));
        if keypair.as_ref().is_some_and(|k| k.initiator) {
            // The response proved the peer has the keys: use them at once. An unconfirmed
            // `next` becomes `previous` (as the kernel does), else the old current.
            self.previous = match self.next.take() {
                Some(next) => Some(next),
                None => self.current.take(),
            };
            self.current = keypair;
        } else {
            // Responder: wait for confirmation. Dropping `previous` lets the first packet on any
            // keypair tell which one the peer uses.
            self.next = keypair;
            self.previous = None;
        }
    }

    /// Promotes `next` to `current` after the first packet arrived on it.
    pub(crate) fn confirm_next(&mut self) {
        if let Some(next) = self.next.take() {
            self.previous = self.current.take();
            self.current = Some(next);
        }
    }

    pub(crate) fn find(&self, local_index: u32) -> Option<(Slot, &Arc<Keypair>)> {
        [
            (Slot::Current, &self.current),
            (Slot::Previous, &self.previous),
            (Slot::Next, &self.next),
        ]
        .into_iter()
        .find_map(|(slot, keypair)| {
            keypair
                .as_ref()
                .filter(|k| k.local_index == local_index)
                .map(|k| (slot, k))
        })
    }

    pub(crate) fn uses_index(&self, local_index: u32) -> bool {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .any(|k| k.local_index == local_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn pair(now: Instant) -> (Keypair, Keypair) {
        let a = SessionKeys {
            send: Zeroizing::new([1; 32]),
            receive: Zeroizing::new([2; 32]),
        };
        let b = SessionKeys {
            send: Zeroizing::new([2; 32]),
            receive: Zeroizing::new([1; 32]),
        };
        (
            Keypair::new(&a, 10, 20, now, true),
            Keypair::new(&b, 20, 10, now, false),
        )
    }

    #[test]
    fn seal_pads_and_open_round_trips() {
        let now = Instant::now();
        let (alice, bob) = pair(now);
        let mut wire = [0_u8; 128];
        let n = alice.seal(b"hello", None, &mut wire).unwrap();
        assert_eq!(n, 16 + 16 + 16);
        assert_eq!(
            &wire[..16],
            &[4, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let mut plain = [0_u8; 128];
        let m = bob.open(now, 0, &wire[16..n], &mut plain).unwrap();
        assert_eq!(m, 16);
        assert_eq!(&plain[..5], b"hello");
        assert_eq!(&plain[5..16], &[0; 11]);
        // Same packet again: replay.
        assert_eq!(
            bob.open(now, 0, &wire[16..n], &mut plain),
            Err(Error::Replay)
        );
        // With a tunnel MTU, padding never goes past it.
        assert_eq!(
            alice.seal(&[0x45; 30], Some(30), &mut wire),
            Ok(16 + 30 + 16)
        );
        assert_eq!(
            alice.seal(&[0x45; 30], Some(40), &mut wire),
            Ok(16 + 32 + 16)
        );
        assert_eq!(
            alice.seal(&[0x45; 50], Some(40), &mut wire),
            Ok(16 + 64 + 16)
        );
        let n = alice.seal(b"x", None, &mut wire).unwrap();
        assert!(bob.open(now, 4, &wire[16..n], &mut plain).is_ok());
        // Tampered: authentication failure, and the window is not moved.
        let n2 = alice.seal(b"again", None, &mut wire).unwrap();
        wire[20] ^= 1;
        assert_eq!(
            bob.open(now, 5, &wire[16..n2], &mut plain),
            Err(Error::DecryptionFailed)
        );
        wire[20] ^= 1;
        assert!(bob.open(now, 5, &wire[16..n2], &mut plain).is_ok());
    }

    #[test]
    fn counter_limits() {
        let now = Instant::now();
        let (alice, bob) = pair(now);
        let mut wire = [0_u8; 64];
        let mut plain = [0_u8; 64];

        alice.set_send_counter(REKEY_AFTER_MESSAGES);
        assert!(!alice.wants_rekey_on_send(now));
        alice.set_send_counter(REKEY_AFTER_MESSAGES + 1);
        assert!(alice.wants_rekey_on_send(now));

        alice.set_send_counter(REJECT_AFTER_MESSAGES - 1);
        assert!(alice.can_send(now));
        let n = alice.seal(b"", None, &mut wire).unwrap();
        assert_eq!(&wire[8..16], &(REJECT_AFTER_MESSAGES - 1).to_le_bytes());
        assert!(!alice.can_send(now));
        assert_eq!(alice.seal(b"", None, &mut wire), Err(Error::KeypairExpired));

        // The receiver accepts the last valid counter, then nothing at or beyond the limit.
        assert_eq!(
            bob.open(now, REJECT_AFTER_MESSAGES - 1, &wire[16..n], &mut plain),
            Ok(0)
        );
        assert!(!bob.can_receive(now));
        // The window reached the limit: the keypair is done, whatever the counter.
        assert_eq!(
            bob.open(now, REJECT_AFTER_MESSAGES, &wire[16..n], &mut plain),
            Err(Error::KeypairExpired)
        );
    }

    #[test]
    fn time_limits() {
        let now = Instant::now();
        let (alice, bob) = pair(now);
        assert!(
            !alice
                .wants_rekey_on_send(now + REKEY_AFTER_TIME - std::time::Duration::from_millis(1))
        );
        assert!(alice.wants_rekey_on_send(now + REKEY_AFTER_TIME));
        assert!(
            !bob.wants_rekey_on_send(now + REKEY_AFTER_TIME),
            "responders do not rekey on time"
        );
        assert!(alice.can_send(now + REJECT_AFTER_TIME - std::time::Duration::from_millis(1)));
        assert!(!alice.can_send(now + REJECT_AFTER_TIME));
        assert!(!bob.can_receive(now + REJECT_AFTER_TIME));
    }
}
