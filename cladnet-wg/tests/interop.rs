//! A second, deliberately naive implementation of the WireGuard handshake, written directly from
//! the whitepaper's formulas with primitive crates (x25519-dalek, blake2 + HMAC,
//! chacha20poly1305). It plays the responder against our `Device`: it decrypts our initiation,
//! checks mac1, builds a response by hand and exchanges transport data. If `snow` and our framing
//! deviated from the whitepaper anywhere (field order, hashing order, KDF, labels, nonces), these
//! tests would fail.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use blake2::digest::consts::U16;
use blake2::digest::{Digest, Mac as _};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, XChaCha20Poly1305, XNonce};
use cladnet_wg::{Action, Device, PeerConfig, PresharedKey, PrivateKey, WallClock};
use hmac::SimpleHmac;
use rand::SeedableRng as _;
use rand::rngs::ChaCha20Rng;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <SimpleHmac<Blake2s256> as hmac::Mac>::new_from_slice(key).unwrap();
    for p in parts {
        hmac::Mac::update(&mut m, p);
    }
    hmac::Mac::finalize(m).into_bytes().into()
}

/// KDF_n from the whitepaper: HMAC-BLAKE2s based HKDF returning n 32-byte values.
fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [[u8; 32]; N] {
    let t0 = hmac(key, &[input]);
    let mut out = [[0_u8; 32]; N];
    let mut prev: Vec<u8> = Vec::new();
    for (i, slot) in out.iter_mut().enumerate() {
        let counter = [u8::try_from(i + 1).unwrap()];
        *slot = hmac(&t0, &[&prev, &counter]);
        prev = slot.to_vec();
    }
    out
}

fn mac16(key: &[u8], msg: &[u8]) -> [u8; 16] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().into()
}

fn nonce(counter: u64) -> chacha20poly1305::Nonce {
    let mut n = [0_u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

fn aead_open(key: &[u8; 32], counter: u64, ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(
            &nonce(counter),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

fn aead_seal(key: &[u8; 32], counter: u64, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(
            &nonce(counter),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap()
}

fn dh(private: &[u8; 32], public: &[u8]) -> [u8; 32] {
    let public: [u8; 32] = public.try_into().unwrap();
    StaticSecret::from(*private)
        .diffie_hellman(&XPublic::from(public))
        .to_bytes()
}

fn public_of(private: &[u8; 32]) -> [u8; 32] {
    XPublic::from(&StaticSecret::from(*private)).to_bytes()
}

#[test]
fn initial_chaining_key_and_hash_match_published_constants() {
    // The values every implementation precomputes (they appear, for instance, as
    // INITIAL_CHAIN_KEY / INITIAL_CHAIN_HASH in boringtun).
    let ck = hash(&[CONSTRUCTION]);
    assert_eq!(&ck[..8], &[96, 226, 109, 174, 243, 39, 239, 192]);
    assert_eq!(&ck[24..], &[45, 56, 209, 152, 139, 120, 205, 54]);
    let h = hash(&[&ck, IDENTIFIER]);
    assert_eq!(&h[..8], &[34, 17, 179, 97, 8, 26, 197, 102]);
    assert_eq!(&h[24..], &[14, 225, 156, 101, 186, 7, 158, 243]);
}

struct Reference {
    responder_private: [u8; 32],
    psk: [u8; 32],
}

struct ReferenceSession {
    send: [u8; 32],
    receive: [u8; 32],
    local_index: u32,
    remote_index: u32,
}

impl Reference {
    /// Consumes an initiation, checking every field, and returns (response, session, initiator
    /// static, timestamp).
    fn respond(
        &self,
        msg: &[u8],
        ephemeral_private: [u8; 32],
    ) -> (Vec<u8>, ReferenceSession, [u8; 32], [u8; 12]) {
        assert_eq!(msg.len(), 148);
        assert_eq!(&msg[..4], &[1, 0, 0, 0]);
        let s_pub = public_of(&self.responder_private);

        // mac1 = MAC(HASH(LABEL_MAC1 || S_pub_r), msg[..116]); mac2 zero without a cookie.
        let mac1_key = hash(&[b"mac1----", &s_pub]);
        assert_eq!(mac16(&mac1_key, &msg[..116]), msg[116..132], "mac1");
        assert_eq!(&msg[132..148], &[0; 16], "mac2 without cookie");

        let sender = u32::from_le_bytes(msg[4..8].try_into().unwrap());
        let mut c = hash(&[CONSTRUCTION]);
        let mut h = hash(&[&c, IDENTIFIER]);
        h = hash(&[&h, &s_pub]);
        let e_i = &msg[8..40];
        c = kdf::<1>(&c, e_i)[0];
        h = hash(&[&h, e_i]);
        let [c1, k] = kdf::<2>(&c, &dh(&self.responder_private, e_i));
        c = c1;
        let static_i: [u8; 32] = aead_open(&k, 0, &msg[40..88], &h)
            .expect("static decrypts")
            .try_into()
            .unwrap();
        h = hash(&[&h, &msg[40..88]]);
        let [c2, k] = kdf::<2>(&c, &dh(&self.responder_private, &static_i));
        c = c2;
        let timestamp: [u8; 12] = aead_open(&k, 0, &msg[88..116], &h)
            .expect("timestamp decrypts")
            .try_into()
            .unwrap();
        h = hash(&[&h, &msg[88..116]]);

        // Response.
        let local_index = 0xdead_beef_u32;
        let e_r_pub = public_of(&ephemeral_private);
        let mut out = vec![0_u8; 92];
        out[0] = 2;
        out[4..8].copy_from_slice(&local_index.to_le_bytes());
        out[8..12].copy_from_slice(&sender.to_le_bytes());
        out[12..44].copy_from_slice(&e_r_pub);
        c = kdf::<1>(&c, &e_r_pub)[0];
        h = hash(&[&h, &e_r_pub]);
        c = kdf::<1>(&c, &dh(&ephemeral_private, e_i))[0];
        c = kdf::<1>(&c, &dh(&ephemeral_private, &static_i))[0];
        let [c3, tau, k] = kdf::<3>(&c, &self.psk);
        c = c3;
        h = hash(&[&h, &tau]);
        let empty = aead_seal(&k, 0, &[], &h);
        out[44..60].copy_from_slice(&empty);
        let mac1_key_i = hash(&[b"mac1----", &static_i]);
        let mac1 = mac16(&mac1_key_i, &out[..60]);
        out[60..76].copy_from_slice(&mac1);
        let [t_recv, t_send] = kdf::<2>(&c, &[]);
        (
            out,
            ReferenceSession {
                send: t_send,
                receive: t_recv,
                local_index,
                remote_index: sender,
            },
            static_i,
            timestamp,
        )
    }
}

fn device_with_peer(
    local: &PrivateKey,
    remote: [u8; 32],
    psk: Option<[u8; 32]>,
    endpoint: SocketAddr,
) -> (Device, cladnet_wg::PeerId, Instant) {
    let now = Instant::now();
    let clock = WallClock::new(
        now,
        SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
    );
    let mut device = Device::new(local.clone(), ChaCha20Rng::seed_from_u64(3), clock);
    let mut config = PeerConfig::new(cladnet_wg::PublicKey::from_bytes(remote));
    config.endpoint = Some(endpoint);
    config.preshared_key = psk.map(PresharedKey::from_bytes);
    let id = device.add_peer(now, config).unwrap();
    (device, id, now)
}

fn full_exchange(psk: Option<[u8; 32]>) {
    let responder_private = [0x21_u8; 32];
    let reference = Reference {
        responder_private,
        psk: psk.unwrap_or([0; 32]),
    };
    let endpoint: SocketAddr = "203.0.113.5:51820".parse().unwrap();
    let initiator_key = PrivateKey::from_bytes([0x12; 32]);
    let (mut device, _, now) =
        device_with_peer(&initiator_key, public_of(&responder_private), psk, endpoint);
    let peer = device.peers().next().unwrap();

    let packet = common::ipv4_packet([10, 1, 0, 1], [10, 1, 0, 2], b"interop payload");
    let mut out = [0_u8; 512];
    let Action::WriteToNetwork { datagram, to } = device.encapsulate(now, peer, &packet, &mut out)
    else {
        panic!("no initiation")
    };
    assert_eq!(to, endpoint);
    let initiation = datagram.to_vec();

    let (response, session, static_i, timestamp) = reference.respond(&initiation, [0x55; 32]);
    assert_eq!(
        static_i,
        *initiator_key.public_key().as_bytes(),
        "initiator static key"
    );
    // TAI64N: 2^62 + 10 + seconds, then whitened nanoseconds.
    assert_eq!(
        u64::from_be_bytes(timestamp[..8].try_into().unwrap()),
        (1 << 62) + 10 + 1_700_000_000
    );
    assert_eq!(
        u32::from_be_bytes(timestamp[8..].try_into().unwrap()),
        123_456_789 & !0x00ff_ffff
    );

    // Our device consumes the hand-made response and sends the queued packet with the new keys.
    let (from_peer, action) = device.decapsulate(now, endpoint, &response, &mut out);
    assert_eq!(from_peer, Some(peer));
    let Action::WriteToNetwork { datagram, .. } = action else {
        panic!("no data after response: {action:?}")
    };
    assert_eq!(&datagram[..4], &[4, 0, 0, 0]);
    assert_eq!(
        u32::from_le_bytes(datagram[4..8].try_into().unwrap()),
        session.local_index
    );
    assert_eq!(u64::from_le_bytes(datagram[8..16].try_into().unwrap()), 0);
    let plain = aead_open(&session.receive, 0, &datagram[16..], &[]).expect("transport decrypts");
    assert_eq!(plain.len() % 16, 0);
    assert_eq!(&plain[..packet.len()], &packet[..]);
    assert!(
        plain[packet.len()..].iter().all(|b| *b == 0),
        "zero padding"
    );

    // And decrypts what the reference sends with its keys (counter 0, then 1).
    for counter in 0..2_u64 {
        let reply = common::ipv4_packet([10, 1, 0, 2], [10, 1, 0, 1], &[counter as u8; 30]);
        let mut padded = reply.clone();
        padded.resize(reply.len().next_multiple_of(16), 0);
        let mut wire = vec![4, 0, 0, 0];
        wire.extend_from_slice(&session.remote_index.to_le_bytes());
        wire.extend_from_slice(&counter.to_le_bytes());
        wire.extend_from_slice(&aead_seal(&session.send, counter, &padded, &[]));
        let mut inner = [0_u8; 512];
        let (_, action) = device.decapsulate(now, endpoint, &wire, &mut inner);
        let Action::WriteToTunnel {
            packet: got,
            source,
        } = action
        else {
            panic!("{action:?}")
        };
        assert_eq!(got, &reply[..]);
        assert_eq!(source, std::net::Ipv4Addr::new(10, 1, 0, 2));
    }
}

#[test]
fn handshake_and_transport_match_whitepaper_formulas() {
    full_exchange(None);
}

#[test]
fn handshake_with_psk_matches_whitepaper_formulas() {
    full_exchange(Some([0x77; 32]));
}

#[test]
fn cookie_reply_matches_whitepaper_formulas() {
    // B (a Device) is under load; A's initiation is made by a Device too, but the cookie reply is
    // opened by hand: XChaCha20-Poly1305 under HASH("cookie--" || B's public key), with the
    // initiation's mac1 as associated data.
    let mut net = common::Net::new();
    net.b.device.set_under_load(true);
    net.send(
        common::Side::A,
        &common::ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"x"),
    );
    let initiation = net.take_wire().remove(0);
    let common::Delivery::Network(reply) = net.deliver(&initiation) else {
        panic!("no cookie reply")
    };
    assert_eq!(reply.len(), 64);
    assert_eq!(&reply[..4], &[3, 0, 0, 0]);
    assert_eq!(
        reply[4..8],
        initiation.bytes[4..8],
        "receiver = initiation's sender"
    );
    let key = hash(&[b"cookie--", net.b.key.public_key().as_bytes()]);
    let cookie = XChaCha20Poly1305::new((&key).into())
        .decrypt(
            XNonce::from_slice(&reply[8..32]),
            Payload {
                msg: &reply[32..],
                aad: &initiation.bytes[116..132],
            },
        )
        .expect("cookie decrypts");
    assert_eq!(cookie.len(), 16);

    // The initiator uses it for mac2 on its next initiation.
    net.take_wire();
    net.deliver(&common::Datagram {
        from: common::Side::B,
        bytes: reply,
    });
    net.jump(Duration::from_secs(6));
    net.drain_timers(common::Side::A);
    let retry = net.wire[0].bytes.clone();
    assert_eq!(&retry[..4], &[1, 0, 0, 0], "retransmitted initiation");
    // mac2 = MAC(cookie, message up to mac2).
    assert_eq!(mac16(&cookie, &retry[..132]), retry[132..148]);
    net.deliver_all();
    assert_eq!(
        net.b.tun.len(),
        1,
        "queued packet delivered after the cookie round trip"
    );
    assert!(
        net.a
            .events
            .contains(&cladnet_wg::Event::HandshakeCompleted { initiator: true })
    );
}
