//! Proof of possession for Join: an agent shows it holds the private key of the public key it
//! registers, without sending it anywhere.
//!
//! The controller has one persistent X25519 key pair (kept in the store, so every controller
//! of one store has the same one) and hands out its public key with a short-lived nonce
//! (`JoinChallenge`). The agent computes
//!
//! ```text
//! shared = X25519(agent private, controller public)
//! k      = BLAKE2s-MAC(key = shared, "cladnet-join-key-v1" | controller public | agent public)
//! proof  = BLAKE2s-MAC(key = k, "cladnet-join-v1" | nonce | network | host id | public key)
//! ```
//!
//! (`|` concatenates fields each prefixed with its length as a big-endian `u32`) and sends it
//! in the Join. The controller computes the same `shared` as X25519(controller private, agent
//! public) and compares in constant time. Only the holders of one of the two private keys can
//! produce the proof; binding the network, host id and key stops a proof from being moved to
//! another Join, and the nonce stops it from being kept for later.

use blake2::{
    Blake2sMac256,
    digest::{FixedOutput as _, KeyInit, Mac},
};
use x25519_dalek::{PublicKey, StaticSecret};

/// Length of a proof, a key and a shared secret in bytes.
pub const LEN: usize = 32;

const KEY_LABEL: &[u8] = b"cladnet-join-key-v1";
const PROOF_LABEL: &[u8] = b"cladnet-join-v1";

/// The X25519 public key of `private` (clamped on use, as `wg genkey` keys are).
#[must_use]
pub fn public_key(private: &[u8; LEN]) -> [u8; LEN] {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

/// The proof an agent holding `agent_private` sends in a Join of `host_id` into `network`
/// registering `public_key` (the base64 text as sent), for the controller key
/// `controller_public` and challenge `nonce`. `None` when the controller key is a low-order
/// point (no shared secret).
#[must_use]
pub fn proof(
    agent_private: &[u8; LEN],
    controller_public: &[u8; LEN],
    nonce: &[u8],
    network: &str,
    host_id: &str,
    public_key: &str,
) -> Option<[u8; LEN]> {
    let secret = StaticSecret::from(*agent_private);
    let agent_public = PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&PublicKey::from(*controller_public));
    if !shared.was_contributory() {
        return None;
    }
    let mac = proof_mac(
        shared.as_bytes(),
        controller_public,
        &agent_public,
        nonce,
        network,
        host_id,
        public_key,
    );
    Some(mac.finalize_fixed().into())
}

/// Whether `proof` is the proof of a Join with these fields by the holder of the private key
/// of `agent_public`, checked with the controller's private key. Constant time in the proof.
#[must_use]
pub fn verify(
    controller_private: &[u8; LEN],
    agent_public: &[u8; LEN],
    nonce: &[u8],
    network: &str,
    host_id: &str,
    public_key: &str,
    proof: &[u8],
) -> bool {
    let secret = StaticSecret::from(*controller_private);
    let controller_public = PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&PublicKey::from(*agent_public));
    if !shared.was_contributory() {
        return false;
    }
    proof_mac(
        shared.as_bytes(),
        &controller_public,
        agent_public,
        nonce,
        network,
        host_id,
        public_key,
    )
    .verify_slice(proof)
    .is_ok()
}

/// The MAC over the Join's fields under the key derived from `shared`.
fn proof_mac(
    shared: &[u8; LEN],
    controller_public: &[u8; LEN],
    agent_public: &[u8; LEN],
    nonce: &[u8],
    network: &str,
    host_id: &str,
    public_key: &str,
) -> Blake2sMac256 {
    let mut kdf = <Blake2sMac256 as KeyInit>::new_from_slice(shared)
        .expect("32 bytes is a valid BLAKE2s key");
    for field in [KEY_LABEL, controller_public, agent_public] {
        framed(&mut kdf, field);
    }
    let k = kdf.finalize_fixed();
    let mut mac =
        <Blake2sMac256 as KeyInit>::new_from_slice(&k).expect("32 bytes is a valid BLAKE2s key");
    for field in [
        PROOF_LABEL,
        nonce,
        network.as_bytes(),
        host_id.as_bytes(),
        public_key.as_bytes(),
    ] {
        framed(&mut mac, field);
    }
    mac
}

/// Feeds `field` prefixed with its length, so no two field lists hash alike.
fn framed(mac: &mut Blake2sMac256, field: &[u8]) {
    let len = u32::try_from(field.len()).expect("fields are far below 4 GiB");
    Mac::update(mac, &len.to_be_bytes());
    Mac::update(mac, field);
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: [u8; LEN] = [7; LEN];
    const CONTROLLER: [u8; LEN] = [9; LEN];

    fn sign(nonce: &[u8], net: &str, host: &str, key: &str) -> [u8; LEN] {
        proof(&AGENT, &public_key(&CONTROLLER), nonce, net, host, key).unwrap()
    }

    #[test]
    fn proofs_verify_with_the_controller_key() {
        let p = sign(b"n1", "net", "host", "key");
        assert!(verify(
            &CONTROLLER,
            &public_key(&AGENT),
            b"n1",
            "net",
            "host",
            "key",
            &p
        ));
    }

    #[test]
    fn proofs_bind_every_field_and_key() {
        let p = sign(b"n1", "net", "host", "key");
        let check = |private: &[u8; LEN], agent: [u8; LEN], nonce: &[u8], net, host, key| {
            verify(private, &agent, nonce, net, host, key, &p)
        };
        let agent = public_key(&AGENT);
        assert!(!check(&CONTROLLER, agent, b"n2", "net", "host", "key"));
        assert!(!check(&CONTROLLER, agent, b"n1", "net2", "host", "key"));
        assert!(!check(&CONTROLLER, agent, b"n1", "net", "host2", "key"));
        assert!(!check(&CONTROLLER, agent, b"n1", "net", "host", "key2"));
        // Another agent key (a squatter registering someone else's public key).
        assert!(!check(
            &CONTROLLER,
            public_key(&[8; LEN]),
            b"n1",
            "net",
            "host",
            "key"
        ));
        // Another controller key.
        assert!(!check(&[10; LEN], agent, b"n1", "net", "host", "key"));
        // Framing: moving bytes between fields changes the proof.
        assert!(!check(&CONTROLLER, agent, b"n1", "ne", "thost", "key"));
        assert!(!verify(
            &CONTROLLER,
            &agent,
            b"n1",
            "net",
            "host",
            "key",
            &p[..31]
        ));
    }

    #[test]
    fn low_order_keys_give_no_proof() {
        assert!(proof(&AGENT, &[0; LEN], b"n", "a", "b", "c").is_none());
        assert!(!verify(
            &CONTROLLER,
            &[0; LEN],
            b"n",
            "a",
            "b",
            "c",
            &[0; LEN]
        ));
    }
}
