//! mac1, mac2 and cookie replies: WireGuard's denial-of-service protection (whitepaper 5.3, 5.4.4,
//! 5.4.7).
//!
//! - `mac1 = MAC(HASH(LABEL_MAC1 || receiver's static public key), message up to mac1)` on every
//!   handshake message; it proves the sender knows whom it talks to and is always checked first.
//! - Under load, the receiver also requires `mac2 = MAC(cookie, message up to mac2)`, where the
//!   cookie is `MAC(secret, source IP || source port)` and the secret changes every two minutes.
//!   Without a valid mac2 it answers with a cookie reply instead of doing any Diffie-Hellman.
//! - The cookie travels encrypted with XChaCha20-Poly1305 under
//!   `HASH(LABEL_COOKIE || replier's static public key)`, with the mac1 of the message being
//!   answered as associated data, so only the real sender of that message can use it.
//!
//! `HASH` is BLAKE2s-256; `MAC(key, input)` is keyed BLAKE2s with a 16-byte output.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::constants::{
    COOKIE_REPLY_LEN, COOKIE_SECRET_LATENCY, COOKIE_SECRET_MAX_AGE, LABEL_COOKIE, LABEL_MAC1,
};
use crate::error::Error;
use crate::keys::PublicKey;
use crate::messages::{self, MessageType, cookie_reply};
use crate::rng::CryptoRandom;

/// Length of mac1, mac2 and the cookie.
pub(crate) const MAC_LEN: usize = 16;

/// `HASH(a || b)`: BLAKE2s-256.
pub(crate) fn hash(a: &[u8], b: &[u8]) -> [u8; 32] {
    let mut hasher = Blake2s256::new();
    hasher.update(a);
    hasher.update(b);
    hasher.finalize().into()
}

/// `MAC(key, input)`: keyed BLAKE2s with a 16-byte digest (keys of 16 or 32 bytes).
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut state = <Blake2sMac<U16> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("BLAKE2s accepts keys up to 32 bytes"));
    for part in parts {
        state.update(part);
    }
    state.finalize().into_bytes().into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Address bytes a cookie is bound to: the IP address followed by the big-endian port.
fn address_bytes(src: SocketAddr, out: &mut [u8; 18]) -> &[u8] {
    let len = match src.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[len..len + 2].copy_from_slice(&src.port().to_be_bytes());
    &out[..len + 2]
}

/// The receiving side, keyed by our own static public key: checks mac1 and mac2 and makes
/// cookie replies.
pub(crate) struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: Zeroizing<[u8; 32]>,
    secret: Zeroizing<[u8; 32]>,
    secret_born: Option<Instant>,
}

impl CookieChecker {
    pub(crate) fn new(local_public: &PublicKey) -> Self {
        Self {
            mac1_key: hash(LABEL_MAC1, local_public.as_bytes()),
            cookie_key: Zeroizing::new(hash(LABEL_COOKIE, local_public.as_bytes())),
            secret: Zeroizing::new([0; 32]),
            secret_born: None,
        }
    }

    /// Whether `mac1` is the MAC of `covered` under our mac1 key (constant time).
    pub(crate) fn mac1_valid(&self, covered: &[u8], mac1: &[u8]) -> bool {
        ct_eq(&mac(&self.mac1_key, &[covered]), mac1)
    }

    /// The cookie for `src`, regenerating the secret when it is older than two minutes.
    fn cookie(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRandom,
        src: SocketAddr,
    ) -> [u8; MAC_LEN] {
        let fresh = self
            .secret_born
            .is_some_and(|born| now.saturating_duration_since(born) < COOKIE_SECRET_MAX_AGE);
        if !fresh {
            rng.fill_bytes(&mut *self.secret);
            self.secret_born = Some(now);
        }
        let mut addr = [0_u8; 18];
        mac(&*self.secret, &[address_bytes(src, &mut addr)])
    }

    /// Whether `mac2` is valid for a message from `src` (constant time).
    pub(crate) fn mac2_valid(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRandom,
        src: SocketAddr,
        covered: &[u8],
        mac2: &[u8],
    ) -> bool {
        let cookie = self.cookie(now, rng, src);
        ct_eq(&mac(&cookie, &[covered]), mac2)
    }

    /// Writes a cookie reply to the message with sender index `receiver` and mac1 `mac1` into
    /// `out` and returns its length.
    pub(crate) fn write_reply(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRandom,
        src: SocketAddr,
        receiver: u32,
        mac1: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let out = out
            .get_mut(..COOKIE_REPLY_LEN)
            .ok_or(Error::BufferTooSmall)?;
        let cookie = self.cookie(now, rng, src);
        messages::write_type(out, MessageType::CookieReply);
        out[cookie_reply::RECEIVER..cookie_reply::NONCE].copy_from_slice(&receiver.to_le_bytes());
        let (head, sealed) = out.split_at_mut(cookie_reply::COOKIE);
        let nonce = &mut head[cookie_reply::NONCE..];
        rng.fill_bytes(nonce);
        sealed[..MAC_LEN].copy_from_slice(&cookie);
        let cipher = XChaCha20Poly1305::new(self.cookie_key.as_ref().into());
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(nonce), mac1, &mut sealed[..MAC_LEN])
            .map_err(|_| Error::BufferTooSmall)?;
        sealed[MAC_LEN..].copy_from_slice(&tag);
        Ok(COOKIE_REPLY_LEN)
    }
}

/// The sending side for one remote peer: stamps mac1/mac2 on our handshake messages and keeps
/// the cookie the peer sent us.
pub(crate) struct PeerCookie {
    /// `HASH(LABEL_MAC1 || peer's static public key)`.
    mac1_key: [u8; 32],
    /// `HASH(LABEL_COOKIE || peer's static public key)`.
    cookie_key: [u8; 32],
    /// mac1 of the last handshake message sent, until a cookie reply consumed it.
    last_mac1: Option<[u8; MAC_LEN]>,
    cookie: Option<(Zeroizing<[u8; MAC_LEN]>, Instant)>,
}

impl PeerCookie {
    pub(crate) fn new(remote: &PublicKey) -> Self {
        Self {
            mac1_key: hash(LABEL_MAC1, remote.as_bytes()),
            cookie_key: hash(LABEL_COOKIE, remote.as_bytes()),
            last_mac1: None,
            cookie: None,
        }
    }

    /// Fills the last 32 bytes of a handshake message `msg` with mac1 and mac2 (zeros when we
    /// hold no fresh cookie).
    pub(crate) fn stamp(&mut self, now: Instant, msg: &mut [u8]) {
        let mac1_at = msg.len() - 2 * MAC_LEN;
        let mac1 = mac(&self.mac1_key, &[&msg[..mac1_at]]);
        msg[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let mac2_at = mac1_at + MAC_LEN;
        let fresh = self.cookie.as_ref().filter(|(_, received)| {
            now.saturating_duration_since(*received) < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
        });
        let mac2 = match fresh {
            Some((cookie, _)) => mac(&**cookie, &[&msg[..mac2_at]]),
            None => [0; MAC_LEN],
        };
        msg[mac2_at..].copy_from_slice(&mac2);
    }

    /// Decrypts a cookie reply answering our last handshake message and keeps the cookie.
    pub(crate) fn consume_reply(
        &mut self,
        now: Instant,
        nonce: &[u8],
        encrypted_cookie: &[u8],
    ) -> Result<(), Error> {
        let last_mac1 = self.last_mac1.ok_or(Error::InvalidCookieReply)?;
        let mut cookie = Zeroizing::new([0_u8; MAC_LEN]);
        cookie.copy_from_slice(&encrypted_cookie[..MAC_LEN]);
        let cipher = XChaCha20Poly1305::new((&self.cookie_key).into());
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &last_mac1,
                &mut *cookie,
                encrypted_cookie[MAC_LEN..].into(),
            )
            .map_err(|_| Error::InvalidCookieReply)?;
        self.cookie = Some((cookie, now));
        self.last_mac1 = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::HandshakeMessage;
    use rand::SeedableRng as _;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Known answers computed outside Rust, with CPython's `hashlib.blake2s` (keyed mode,
    /// `digest_size=16`): an implementation independent of the blake2 crate.
    #[test]
    fn mac_known_answers_from_an_independent_blake2s() {
        let public = [9_u8; 32];
        let mac1_key = hash(LABEL_MAC1, &public);
        assert_eq!(
            mac1_key.to_vec(),
            hex("248139402e7359c192c496c58a8397a55274981f3bd3f714ac08105ee678c8c7")
        );
        assert_eq!(
            mac(&mac1_key, &[&[0xa5; 116]]).to_vec(),
            hex("e9734c773f4edbbda9f3ce3fdd5cf87d")
        );
        assert_eq!(
            hash(LABEL_COOKIE, &public).to_vec(),
            hex("1030827a08d835759b73ef5b8b35c67a34f8687612a96aefe1af01be3027f856")
        );
        let cookie: Vec<u8> = (0..16).collect();
        assert_eq!(
            mac(&cookie, &[&[0x5a; 100], &[0x5a; 32]]).to_vec(),
            hex("3e11f22fb7064a60c974337be80ae0df")
        );
    }

    #[test]
    fn mac1_covers_message_up_to_mac1() {
        let responder = PublicKey::from_bytes([5; 32]);
        let mut msg = [0xab_u8; 92];
        let mut stamper = PeerCookie::new(&responder);
        let now = Instant::now();
        stamper.stamp(now, &mut msg);
        let checker = CookieChecker::new(&responder);
        let parsed = HandshakeMessage { bytes: &msg };
        assert!(checker.mac1_valid(parsed.mac1_input(), parsed.mac1()));
        assert_eq!(parsed.mac2(), &[0; 16]);
        msg[10] ^= 1;
        let parsed = HandshakeMessage { bytes: &msg };
        assert!(!checker.mac1_valid(parsed.mac1_input(), parsed.mac1()));
    }

    #[test]
    fn cookie_reply_round_trip() {
        let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(1);
        let responder = PublicKey::from_bytes([5; 32]);
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let now = Instant::now();
        let mut initiator = PeerCookie::new(&responder);
        let mut checker = CookieChecker::new(&responder);

        let mut msg = [0x11_u8; 148];
        initiator.stamp(now, &mut msg);
        let parsed = HandshakeMessage { bytes: &msg };
        assert!(!checker.mac2_valid(now, &mut rng, src, parsed.mac2_input(), parsed.mac2()));

        let mut reply = [0_u8; 64];
        let n = checker
            .write_reply(now, &mut rng, src, 7, parsed.mac1(), &mut reply)
            .unwrap();
        assert_eq!(n, 64);
        assert_eq!(&reply[..8], &[3, 0, 0, 0, 7, 0, 0, 0]);
        initiator
            .consume_reply(now, &reply[8..32], &reply[32..])
            .unwrap();
        // A second reply for the same message is refused: the mac1 was consumed.
        assert!(
            initiator
                .consume_reply(now, &reply[8..32], &reply[32..])
                .is_err()
        );

        initiator.stamp(now, &mut msg);
        let parsed = HandshakeMessage { bytes: &msg };
        assert!(checker.mac2_valid(now, &mut rng, src, parsed.mac2_input(), parsed.mac2()));
        let other: SocketAddr = "192.0.2.1:51821".parse().unwrap();
        assert!(!checker.mac2_valid(now, &mut rng, other, parsed.mac2_input(), parsed.mac2()));
    }
}
