//! Wire format of the four WireGuard messages (whitepaper section 5.4).
//!
//! Every message starts with a little-endian 32-bit type: one type byte and three zero bytes.
//! Indexes are little-endian 32-bit, the transport counter little-endian 64-bit.
//!
//! | type | length | layout after the 4-byte type |
//! |---|---|---|
//! | 1 initiation | 148 | sender (4), ephemeral (32), encrypted static (32+16), encrypted timestamp (12+16), mac1 (16), mac2 (16) |
//! | 2 response | 92 | sender (4), receiver (4), ephemeral (32), encrypted nothing (0+16), mac1 (16), mac2 (16) |
//! | 3 cookie reply | 64 | receiver (4), nonce (24), encrypted cookie (16+16) |
//! | 4 transport | 32 + n | receiver (4), counter (8), encrypted padded packet (n+16) |

use crate::constants::{
    COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TAG_LEN, TRANSPORT_HEADER_LEN,
};
use crate::error::Error;

/// The four WireGuard message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Handshake initiation (type 1).
    Initiation,
    /// Handshake response (type 2).
    Response,
    /// Cookie reply (type 3).
    CookieReply,
    /// Transport data (type 4).
    Transport,
}

impl MessageType {
    /// The value of the type field.
    #[must_use]
    pub const fn wire_value(self) -> u8 {
        match self {
            Self::Initiation => 1,
            Self::Response => 2,
            Self::CookieReply => 3,
            Self::Transport => 4,
        }
    }
}

/// Classifies a datagram by its 4-byte type field (a type 1..=4 followed by three zero bytes),
/// without checking lengths or cryptography. Useful to demultiplex a shared UDP port.
#[must_use]
pub fn message_type(datagram: &[u8]) -> Option<MessageType> {
    match datagram.get(..4)? {
        [1, 0, 0, 0] => Some(MessageType::Initiation),
        [2, 0, 0, 0] => Some(MessageType::Response),
        [3, 0, 0, 0] => Some(MessageType::CookieReply),
        [4, 0, 0, 0] => Some(MessageType::Transport),
        _ => None,
    }
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut le = [0_u8; 4];
    le.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(le)
}

pub(crate) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0_u8; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

/// Byte offsets inside a handshake initiation.
pub(crate) mod initiation {
    pub(crate) const SENDER: usize = 4;
    /// Start of the Noise part (ephemeral, encrypted static, encrypted timestamp).
    pub(crate) const NOISE: usize = 8;
    pub(crate) const NOISE_LEN: usize = 32 + (32 + 16) + (12 + 16);
    pub(crate) const MAC1: usize = NOISE + NOISE_LEN;
    pub(crate) const MAC2: usize = MAC1 + 16;
}

/// Byte offsets inside a handshake response.
pub(crate) mod response {
    pub(crate) const SENDER: usize = 4;
    pub(crate) const RECEIVER: usize = 8;
    pub(crate) const NOISE: usize = 12;
    pub(crate) const NOISE_LEN: usize = 32 + 16;
    pub(crate) const MAC1: usize = NOISE + NOISE_LEN;
    pub(crate) const MAC2: usize = MAC1 + 16;
}

/// Byte offsets inside a cookie reply.
pub(crate) mod cookie_reply {
    pub(crate) const RECEIVER: usize = 4;
    pub(crate) const NONCE: usize = 8;
    pub(crate) const COOKIE: usize = NONCE + 24;
}

const _: () = assert!(initiation::MAC2 + 16 == INITIATION_LEN);
const _: () = assert!(response::MAC2 + 16 == RESPONSE_LEN);
const _: () = assert!(cookie_reply::COOKIE + 32 == COOKIE_REPLY_LEN);

/// A handshake message (initiation or response) with its two trailing MACs.
#[derive(Clone, Copy)]
pub(crate) struct HandshakeMessage<'a> {
    pub(crate) bytes: &'a [u8],
}

impl<'a> HandshakeMessage<'a> {
    fn mac1_offset(&self) -> usize {
        self.bytes.len() - 32
    }
    /// Everything mac1 covers: the message up to mac1.
    pub(crate) fn mac1_input(&self) -> &'a [u8] {
        &self.bytes[..self.mac1_offset()]
    }
    pub(crate) fn mac1(&self) -> &'a [u8] {
        &self.bytes[self.mac1_offset()..self.mac1_offset() + 16]
    }
    /// Everything mac2 covers: the message up to mac2 (so including mac1).
    pub(crate) fn mac2_input(&self) -> &'a [u8] {
        &self.bytes[..self.mac1_offset() + 16]
    }
    pub(crate) fn mac2(&self) -> &'a [u8] {
        &self.bytes[self.mac1_offset() + 16..]
    }
    /// The sender index (same offset in both handshake messages).
    pub(crate) fn sender(&self) -> u32 {
        read_u32(self.bytes, 4)
    }
}

/// A parsed datagram; the slices borrow from it.
pub(crate) enum Message<'a> {
    Initiation(HandshakeMessage<'a>),
    Response(HandshakeMessage<'a>),
    CookieReply {
        receiver: u32,
        nonce: &'a [u8],
        encrypted_cookie: &'a [u8],
    },
    Transport {
        receiver: u32,
        counter: u64,
        /// Ciphertext followed by the 16-byte tag.
        sealed: &'a [u8],
    },
}

/// Checks the type field and the length of a datagram and splits it into fields.
pub(crate) fn parse(datagram: &[u8]) -> Result<Message<'_>, Error> {
    let kind = message_type(datagram).ok_or(Error::MalformedMessage)?;
    match kind {
        MessageType::Initiation if datagram.len() == INITIATION_LEN => {
            Ok(Message::Initiation(HandshakeMessage { bytes: datagram }))
        }
        MessageType::Response if datagram.len() == RESPONSE_LEN => {
            Ok(Message::Response(HandshakeMessage { bytes: datagram }))
        }
        MessageType::CookieReply if datagram.len() == COOKIE_REPLY_LEN => {
            Ok(Message::CookieReply {
                receiver: read_u32(datagram, cookie_reply::RECEIVER),
                nonce: &datagram[cookie_reply::NONCE..cookie_reply::COOKIE],
                encrypted_cookie: &datagram[cookie_reply::COOKIE..],
            })
        }
        MessageType::Transport if datagram.len() >= TRANSPORT_HEADER_LEN + TAG_LEN => {
            Ok(Message::Transport {
                receiver: read_u32(datagram, 4),
                counter: read_u64(datagram, 8),
                sealed: &datagram[TRANSPORT_HEADER_LEN..],
            })
        }
        _ => Err(Error::MalformedMessage),
    }
}

/// Writes the 4-byte type field.
pub(crate) fn write_type(out: &mut [u8], kind: MessageType) {
    out[..4].copy_from_slice(&[kind.wire_value(), 0, 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_checks_type_and_length() {
        let mut init = [0_u8; INITIATION_LEN];
        write_type(&mut init, MessageType::Initiation);
        init[4..8].copy_from_slice(&0x0102_0304_u32.to_le_bytes());
        match parse(&init) {
            Ok(Message::Initiation(m)) => {
                assert_eq!(m.sender(), 0x0102_0304);
                assert_eq!(m.mac1_input().len(), 116);
                assert_eq!(m.mac2_input().len(), 132);
            }
            _ => panic!("initiation not recognised"),
        }
        assert_eq!(parse(&init[..147]).err(), Some(Error::MalformedMessage));
        init[1] = 1; // reserved byte must be zero
        assert_eq!(parse(&init).err(), Some(Error::MalformedMessage));

        let mut data = [0_u8; 32];
        write_type(&mut data, MessageType::Transport);
        data[8..16].copy_from_slice(&7_u64.to_le_bytes());
        assert!(matches!(
            parse(&data),
            Ok(Message::Transport { counter: 7, .. })
        ));
        assert!(parse(&data[..31]).is_err());
        assert!(parse(&[]).is_err());
        assert_eq!(
            message_type(&[3, 0, 0, 0, 9]),
            Some(MessageType::CookieReply)
        );
        assert_eq!(message_type(&[0x14, 0, 0, 0]), None);
    }
}
