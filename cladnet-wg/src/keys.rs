//! Curve25519 static keys and the optional preshared key, in WireGuard's base64 text form.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::rng::CryptoRandom;

/// Length of every key in bytes.
pub const KEY_LEN: usize = 32;

/// A key could not be parsed from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a WireGuard key is 32 bytes in standard base64 (44 characters)")]
pub struct KeyParseError;

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyParseError> {
    let mut out = Zeroizing::new([0_u8; KEY_LEN]);
    let decoded = Zeroizing::new(BASE64.decode(text.trim()).map_err(|_| KeyParseError)?);
    if decoded.len() != KEY_LEN {
        return Err(KeyParseError);
    }
    out.copy_from_slice(&decoded);
    Ok(out)
}

/// A Curve25519 private key. Zeroed on drop; `Debug` never prints it.
///
/// Keep it in the agent's data directory with mode 0600; it never leaves the host.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Wraps raw key bytes (as stored by `wg genkey`, clamped or not: clamping happens on use).
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Generates a new key from `rng`, clamped as `wg genkey` does.
    pub fn generate(rng: &mut dyn CryptoRandom) -> Self {
        let mut bytes = [0_u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        bytes[0] &= 248;
        bytes[31] = (bytes[31] & 127) | 64;
        Self(bytes)
    }

    /// Parses the base64 form used by `wg` configuration files.
    ///
    /// # Errors
    /// [`KeyParseError`] when the text is not 32 bytes of standard base64.
    pub fn from_base64(text: &str) -> Result<Self, KeyParseError> {
        Ok(Self(*decode_key(text)?))
    }

    /// The base64 form, in a buffer that is zeroed on drop.
    #[must_use]
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0))
    }

    /// The matching public key.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Diffie-Hellman with `public`; `None` when the result is all zeros (low-order point).
    pub(crate) fn shared_secret(&self, public: &PublicKey) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(public.0));
        shared
            .was_contributory()
            .then(|| Zeroizing::new(shared.to_bytes()))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A Curve25519 public key: the identity of a peer. Displayed in base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the base64 form used by `wg`.
    ///
    /// # Errors
    /// [`KeyParseError`] when the text is not 32 bytes of standard base64.
    pub fn from_base64(text: &str) -> Result<Self, KeyParseError> {
        Ok(Self(*decode_key(text)?))
    }

    /// The base64 form used by `wg`.
    #[must_use]
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// The optional symmetric preshared key mixed into the handshake (`psk2`). The default is all
/// zeros, which is what WireGuard uses when no preshared key is configured. Zeroed on drop.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// Wraps raw key bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Generates a random preshared key (as `wg genpsk`).
    pub fn generate(rng: &mut dyn CryptoRandom) -> Self {
        let mut bytes = [0_u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses the base64 form used by `wg`.
    ///
    /// # Errors
    /// [`KeyParseError`] when the text is not 32 bytes of standard base64.
    pub fn from_base64(text: &str) -> Result<Self, KeyParseError> {
        Ok(Self(*decode_key(text)?))
    }

    /// The base64 form, in a buffer that is zeroed on drop.
    #[must_use]
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_redaction() {
        let private = PrivateKey::from_bytes([7; 32]);
        let text = private.to_base64();
        assert_eq!(text.len(), 44);
        let parsed = PrivateKey::from_base64(&text).unwrap();
        assert_eq!(parsed.as_bytes(), private.as_bytes());
        assert_eq!(format!("{private:?}"), "PrivateKey(<redacted>)");
        let public = private.public_key();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        assert!(PublicKey::from_base64("AAAA").is_err());
        assert_eq!(
            format!("{:?}", PresharedKey::default()),
            "PresharedKey(<redacted>)"
        );
    }

    #[test]
    fn rfc7748_public_key_vector() {
        // RFC 7748 section 6.1: Alice's private key and public key.
        let private: [u8; 32] =
            hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(
            PrivateKey::from_bytes(private).public_key().as_bytes(),
            &public
        );
    }

    #[test]
    fn low_order_point_is_rejected() {
        let private = PrivateKey::from_bytes([9; 32]);
        assert!(
            private
                .shared_secret(&PublicKey::from_bytes([0; 32]))
                .is_none()
        );
        assert!(private.shared_secret(&private.public_key()).is_some());
    }

    fn hex32(text: &str) -> [u8; 32] {
        let mut out = [0_u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
