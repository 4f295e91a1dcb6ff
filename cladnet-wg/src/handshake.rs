//! The Noise_IKpsk2 handshake (whitepaper 5.4.2, 5.4.3), driven through `snow`.
//!
//! `snow` runs the Noise state machine: with the protocol name
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` and WireGuard's identifier as prologue it computes
//! exactly the chaining key, hash and AEAD fields the whitepaper specifies. This module places
//! the Noise bytes inside WireGuard's framing (type, indexes; mac1/mac2 are added by the
//! caller), and feeds `snow` with the caller's randomness and a Diffie-Hellman that refuses
//! all-zero results (low-order points), as the kernel and wireguard-go do.

use std::cell::RefCell;

use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::constants::{CONSTRUCTION, IDENTIFIER, INITIATION_LEN, RESPONSE_LEN};
use crate::error::Error;
use crate::keys::{KEY_LEN, PresharedKey, PrivateKey, PublicKey};
use crate::messages::{self, HandshakeMessage, MessageType, initiation, response};
use crate::rng::CryptoRandom;
use crate::time::Tai64N;

/// Location of the preshared key in the IKpsk2 pattern.
const PSK_LOCATION: u8 = 2;

/// The parsed Noise parameters for WireGuard.
pub(crate) fn noise_params() -> NoiseParams {
    CONSTRUCTION
        .parse()
        .unwrap_or_else(|_| unreachable!("snow supports Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"))
}

/// Transport keys that came out of a handshake.
pub(crate) struct SessionKeys {
    pub(crate) send: Zeroizing<[u8; KEY_LEN]>,
    pub(crate) receive: Zeroizing<[u8; KEY_LEN]>,
}

/// Randomness for exactly one ephemeral key, drawn from the caller's RNG up front.
struct EphemeralSeed(Zeroizing<[u8; KEY_LEN]>, bool);

impl Random for EphemeralSeed {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        if self.1 || dest.len() != KEY_LEN {
            return Err(snow::Error::Rng);
        }
        dest.copy_from_slice(&*self.0);
        self.1 = true;
        Ok(())
    }
}

/// Wraps snow's X25519 and rejects all-zero shared secrets.
struct CheckedDh(Box<dyn Dh>);

impl Dh for CheckedDh {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn pub_len(&self) -> usize {
        self.0.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.0.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.0.set(privkey);
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.0.generate(rng)
    }
    fn pubkey(&self) -> &[u8] {
        self.0.pubkey()
    }
    fn privkey(&self) -> &[u8] {
        self.0.privkey()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        self.0.dh(pubkey, out)?;
        let len = self.dh_len().min(out.len());
        if bool::from(out[..len].ct_eq(&[0_u8; KEY_LEN][..len])) {
            return Err(snow::Error::Dh);
        }
        Ok(())
    }
    fn dh_len(&self) -> usize {
        self.0.dh_len()
    }
}

/// snow's pure-Rust primitives, with our RNG and checked DH.
struct WgResolver {
    seed: RefCell<Option<EphemeralSeed>>,
}

impl CryptoResolver for WgResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let seed = self.seed.borrow_mut().take()?;
        Some(Box::new(seed))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver
            .resolve_dh(choice)
            .map(|dh| Box::new(CheckedDh(dh)) as Box<dyn Dh>)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn builder<'a>(params: &NoiseParams, rng: &mut dyn CryptoRandom) -> Builder<'a> {
    let mut seed = Zeroizing::new([0_u8; KEY_LEN]);
    rng.fill_bytes(&mut *seed);
    let resolver = WgResolver {
        seed: RefCell::new(Some(EphemeralSeed(seed, false))),
    };
    Builder::with_resolver(params.clone(), Box::new(resolver))
}

fn handshake_error(_: snow::Error) -> Error {
    Error::HandshakeFailed
}

/// Splits the final chaining key into (initiator→responder, responder→initiator) keys.
fn split(state: &mut HandshakeState, initiator: bool) -> SessionKeys {
    let (first, second) = state.dangerously_get_raw_split();
    let (first, second) = (Zeroizing::new(first), Zeroizing::new(second));
    if initiator {
        SessionKeys {
            send: first,
            receive: second,
        }
    } else {
        SessionKeys {
            send: second,
            receive: first,
        }
    }
}

/// Writes an initiation (without mac1/mac2) into `out[..148]` and returns the handshake state
/// that will consume the response.
#[expect(
    clippy::too_many_arguments,
    reason = "each input is a distinct protocol field"
)]
pub(crate) fn write_initiation(
    params: &NoiseParams,
    rng: &mut dyn CryptoRandom,
    local: &PrivateKey,
    remote: &PublicKey,
    psk: &PresharedKey,
    sender_index: u32,
    timestamp: Tai64N,
    out: &mut [u8],
) -> Result<Box<HandshakeState>, Error> {
    let out = out.get_mut(..INITIATION_LEN).ok_or(Error::BufferTooSmall)?;
    let mut state = builder(params, rng)
        .local_private_key(local.as_bytes())
        .and_then(|b| b.remote_public_key(remote.as_bytes()))
        .and_then(|b| b.prologue(IDENTIFIER))
        .and_then(|b| b.psk(PSK_LOCATION, psk.as_bytes()))
        .and_then(Builder::build_initiator)
        .map_err(handshake_error)?;
    messages::write_type(out, MessageType::Initiation);
    out[initiation::SENDER..initiation::NOISE].copy_from_slice(&sender_index.to_le_bytes());
    let written = state
        .write_message(&timestamp.0, &mut out[initiation::NOISE..initiation::MAC1])
        .map_err(handshake_error)?;
    if written != initiation::NOISE_LEN {
        return Err(Error::HandshakeFailed);
    }
    Ok(Box::new(state))
}

/// An initiation that decrypted and authenticated against our static key.
pub(crate) struct ConsumedInitiation {
    pub(crate) state: Box<HandshakeState>,
    pub(crate) initiator_static: PublicKey,
    pub(crate) timestamp: Tai64N,
    pub(crate) sender_index: u32,
}

/// Decrypts an initiation addressed to `local`, revealing the initiator's static key. The
/// caller still has to check that key against its peers, and the timestamp for replays.
pub(crate) fn read_initiation(
    params: &NoiseParams,
    rng: &mut dyn CryptoRandom,
    local: &PrivateKey,
    msg: HandshakeMessage<'_>,
) -> Result<ConsumedInitiation, Error> {
    let mut state = builder(params, rng)
        .local_private_key(local.as_bytes())
        .and_then(|b| b.prologue(IDENTIFIER))
        .and_then(Builder::build_responder)
        .map_err(handshake_error)?;
    let mut timestamp = [0_u8; 12];
    let read = state
        .read_message(
            &msg.bytes[initiation::NOISE..initiation::MAC1],
            &mut timestamp,
        )
        .map_err(handshake_error)?;
    if read != timestamp.len() {
        return Err(Error::HandshakeFailed);
    }
    let initiator_static = state
        .get_remote_static()
        .and_then(|key| <[u8; KEY_LEN]>::try_from(key).ok())
        .map(PublicKey::from_bytes)
        .ok_or(Error::HandshakeFailed)?;
    Ok(ConsumedInitiation {
        state: Box::new(state),
        initiator_static,
        timestamp: Tai64N(timestamp),
        sender_index: msg.sender(),
    })
}

/// Writes the response to a consumed initiation (without mac1/mac2) into `out[..92]` and
/// derives the responder's transport keys.
pub(crate) fn write_response(
    consumed: &mut ConsumedInitiation,
    psk: &PresharedKey,
    sender_index: u32,
    out: &mut [u8],
) -> Result<SessionKeys, Error> {
    let out = out.get_mut(..RESPONSE_LEN).ok_or(Error::BufferTooSmall)?;
    let state = &mut consumed.state;
    state
        .set_psk(usize::from(PSK_LOCATION), psk.as_bytes())
        .map_err(handshake_error)?;
    messages::write_type(out, MessageType::Response);
    out[response::SENDER..response::RECEIVER].copy_from_slice(&sender_index.to_le_bytes());
    out[response::RECEIVER..response::NOISE].copy_from_slice(&consumed.sender_index.to_le_bytes());
    let written = state
        .write_message(&[], &mut out[response::NOISE..response::MAC1])
        .map_err(handshake_error)?;
    if written != response::NOISE_LEN || !state.is_handshake_finished() {
        return Err(Error::HandshakeFailed);
    }
    Ok(split(state, false))
}

/// Consumes a response with the state kept from our initiation and derives the initiator's
/// transport keys. On failure the state is unchanged and may consume another response.
pub(crate) fn read_response(
    state: &mut HandshakeState,
    msg: HandshakeMessage<'_>,
) -> Result<SessionKeys, Error> {
    let mut empty = [0_u8; 0];
    let read = state
        .read_message(&msg.bytes[response::NOISE..response::MAC1], &mut empty)
        .map_err(handshake_error)?;
    if read != 0 || !state.is_handshake_finished() {
        return Err(Error::HandshakeFailed);
    }
    Ok(split(state, true))
}

/// Receiver index of a response.
pub(crate) fn response_receiver(msg: HandshakeMessage<'_>) -> u32 {
    messages::read_u32(msg.bytes, response::RECEIVER)
}
