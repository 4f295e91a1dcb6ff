//! Path MTU probes on the tunnel port (packetization-layer PMTUD in the manner of RFC 8899).
//!
//! An agent finds how large a datagram reaches a peer by sending it padded CLAD datagrams of
//! chosen sizes with DF set; the peer answers each one it receives with a small
//! acknowledgement. Both are CLAD messages, whatever the link mode (a SEALED link's packets
//! take the same path as its probes; the WireGuard session is not needed to measure it).
//!
//! ```text
//! MTU_PROBE (type 4): CLAD header | nonce (8, big endian) | padding (zeros) up to the size probed
//! MTU_ACK   (type 5): CLAD header | nonce (8, big endian) | probe payload length (4, big endian)
//! ```
//!
//! The acknowledgement is [`ACK_LEN`] bytes and a probe is at least that long, so answering
//! can never amplify. The length in the acknowledgement is the UDP payload length the peer
//! received; the prober matches the nonce and checks the length.

use crate::wire::{CLAD_HDR_LEN, CladHeader, CladType, IPV4_HDR_LEN, UDP_HDR_LEN, WireError};

/// Length of an acknowledgement, and the smallest probe.
pub const ACK_LEN: usize = CLAD_HDR_LEN + 8 + 4;
/// Smallest probe payload (no shorter than the acknowledgement it asks for).
pub const MIN_PROBE_LEN: usize = ACK_LEN;
/// Bytes the outer IPv4 and UDP headers add to a probe payload: a probe of payload `n` tests an
/// IPv4 path MTU of `n + PROBE_IP_OVERHEAD`.
pub const PROBE_IP_OVERHEAD: usize = IPV4_HDR_LEN + UDP_HDR_LEN;

/// A decoded path MTU message.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum MtuMessage {
    /// A probe: answer it with [`ack`].
    Probe {
        /// Sender's node index.
        node_index: u32,
        /// The probe's nonce.
        nonce: u64,
        /// UDP payload length received.
        len: u32,
    },
    /// An acknowledgement of one of our probes.
    Ack {
        /// Sender's node index.
        node_index: u32,
        /// The probe's nonce.
        nonce: u64,
        /// UDP payload length of the probe as the peer received it.
        len: u32,
    },
}

/// Why a path MTU message was rejected.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum MtuError {
    /// The CLAD header is invalid.
    Header(WireError),
    /// A valid CLAD message of another type.
    NotMtu,
    /// A probe shorter than [`MIN_PROBE_LEN`], or an acknowledgement not [`ACK_LEN`] long.
    BadLength,
    /// An acknowledgement claiming a probe length below [`MIN_PROBE_LEN`].
    BadAckedLength,
}

/// Decodes a path MTU probe or acknowledgement.
pub fn decode(datagram: &[u8]) -> Result<MtuMessage, MtuError> {
    let h = CladHeader::decode(datagram).map_err(MtuError::Header)?;
    let body = &datagram[CLAD_HDR_LEN..];
    let nonce = |b: &[u8]| b.first_chunk::<8>().map(|n| u64::from_be_bytes(*n));
    match h.ty() {
        Some(CladType::MtuProbe) => {
            if datagram.len() < MIN_PROBE_LEN {
                return Err(MtuError::BadLength);
            }
            Ok(MtuMessage::Probe {
                node_index: h.node_id(),
                nonce: nonce(body).ok_or(MtuError::BadLength)?,
                len: u32::try_from(datagram.len()).map_err(|_| MtuError::BadLength)?,
            })
        }
        Some(CladType::MtuAck) => {
            let Some(&[n0, n1, n2, n3, n4, n5, n6, n7, l0, l1, l2, l3]) = body
                .first_chunk::<12>()
                .filter(|_| datagram.len() == ACK_LEN)
            else {
                return Err(MtuError::BadLength);
            };
            let len = u32::from_be_bytes([l0, l1, l2, l3]);
            if (len as usize) < MIN_PROBE_LEN {
                return Err(MtuError::BadAckedLength);
            }
            Ok(MtuMessage::Ack {
                node_index: h.node_id(),
                nonce: u64::from_be_bytes([n0, n1, n2, n3, n4, n5, n6, n7]),
                len,
            })
        }
        _ => Err(MtuError::NotMtu),
    }
}

/// Writes a probe of `len` payload bytes from `node_index` into `out`; returns the slice, or
/// `None` when `len` is below [`MIN_PROBE_LEN`] or `out` is shorter than `len`.
pub fn probe(node_index: u32, nonce: u64, len: usize, out: &mut [u8]) -> Option<&[u8]> {
    if len < MIN_PROBE_LEN {
        return None;
    }
    let out = out.get_mut(..len)?;
    out[..CLAD_HDR_LEN]
        .copy_from_slice(&CladHeader::new(CladType::MtuProbe, 0, node_index).to_bytes());
    out[CLAD_HDR_LEN..CLAD_HDR_LEN + 8].copy_from_slice(&nonce.to_be_bytes());
    out[CLAD_HDR_LEN + 8..].fill(0);
    Some(out)
}

/// The acknowledgement from `node_index` of a probe with `nonce` received with `len` payload
/// bytes.
pub fn ack(node_index: u32, nonce: u64, len: u32) -> [u8; ACK_LEN] {
    let mut out = [0u8; ACK_LEN];
    out[..CLAD_HDR_LEN]
        .copy_from_slice(&CladHeader::new(CladType::MtuAck, 0, node_index).to_bytes());
    out[CLAD_HDR_LEN..CLAD_HDR_LEN + 8].copy_from_slice(&nonce.to_be_bytes());
    out[CLAD_HDR_LEN + 8..].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_and_ack_round_trip() {
        let mut buf = [0xffu8; 1500];
        let p = probe(7, 0x0102_0304_0506_0708, 1372, &mut buf).unwrap();
        assert_eq!(p.len(), 1372);
        assert_eq!(p[0], 0x14);
        assert!(p[16..].iter().all(|&b| b == 0));
        assert_eq!(
            decode(p),
            Ok(MtuMessage::Probe {
                node_index: 7,
                nonce: 0x0102_0304_0506_0708,
                len: 1372
            })
        );
        let a = ack(9, 0x0102_0304_0506_0708, 1372);
        assert_eq!(a[0], 0x15);
        assert_eq!(
            decode(&a),
            Ok(MtuMessage::Ack {
                node_index: 9,
                nonce: 0x0102_0304_0506_0708,
                len: 1372
            })
        );
    }

    #[test]
    fn acks_never_exceed_probes() {
        let mut buf = [0u8; 64];
        assert!(probe(1, 1, MIN_PROBE_LEN - 1, &mut buf).is_none());
        let p = probe(1, 1, MIN_PROBE_LEN, &mut buf).unwrap();
        assert!(decode(p).is_ok());
        assert_eq!(decode(&p[..MIN_PROBE_LEN - 1]), Err(MtuError::BadLength));
        assert!(ack(1, 1, MIN_PROBE_LEN as u32).len() <= MIN_PROBE_LEN);
    }

    #[test]
    fn rejects_malformed_messages() {
        let a = ack(1, 2, 1400);
        assert_eq!(decode(&a[..ACK_LEN - 1]), Err(MtuError::BadLength));
        let mut long = [0u8; ACK_LEN + 1];
        long[..ACK_LEN].copy_from_slice(&a);
        assert_eq!(decode(&long), Err(MtuError::BadLength));
        assert_eq!(decode(&ack(1, 2, 3)), Err(MtuError::BadAckedLength));
        let keepalive = CladHeader::new(CladType::Probe, 0, 1).to_bytes();
        assert_eq!(decode(&keepalive), Err(MtuError::NotMtu));
        assert_eq!(
            decode(&[0x14, 0, 0]),
            Err(MtuError::Header(WireError::Truncated))
        );
    }
}
