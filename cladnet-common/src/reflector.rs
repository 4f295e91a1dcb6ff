//! The endpoint reflector's wire format: an agent asks the controller "what address do you see
//! me as?" from its tunnel socket, so the answer is the NAT mapping its tunnel traffic really
//! gets.
//!
//! ```text
//! request  (24 bytes): "CLADRFL1" | nonce (8) | flags (1) | zero (7)
//! response (22 bytes): "CLADRFL1" | nonce (8) | IPv4 (4) | port (2, big endian)
//! ```
//!
//! Flags: 0, or [`FLAG_OTHER_PORT`]: "answer from another port than the one asked", the
//! filtering test of `relay = "auto"` (STUN's change-port request): the answer reaches the
//! agent only if its NAT and firewalls let in a datagram from a source it never sent to, as
//! a 1:1 NAT or a public address does and a masquerading NAT does not. Such a request is
//! answered from the other port only (still one response, shorter than the request).
//!
//! The request is longer than the response, so the reflector cannot amplify spoofed traffic.
//! The first byte, `C` (0x43), is neither a WireGuard type (1..=4) nor a CLAD version-1 byte
//! (0x1_), so replies share the tunnel port with both; the eBPF receive hook passes them to
//! the agent's socket by [`MAGIC`] (see [`crate::rx::classify`]).

use core::net::{Ipv4Addr, SocketAddrV4};

/// Magic prefix of both messages.
pub const MAGIC: [u8; 8] = *b"CLADRFL1";
/// Request length.
pub const REQUEST_LEN: usize = 24;
/// Response length.
pub const RESPONSE_LEN: usize = 22;
/// Request flag: answer from another port (see the module documentation).
pub const FLAG_OTHER_PORT: u8 = 1;

/// Whether a datagram starts like a reflector message.
pub fn is_reflector(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

/// A request carrying `nonce`.
pub fn request(nonce: u64) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[..8].copy_from_slice(&MAGIC);
    r[8..16].copy_from_slice(&nonce.to_be_bytes());
    r
}

/// A request carrying `nonce` that asks for the answer from another port.
pub fn request_other_port(nonce: u64) -> [u8; REQUEST_LEN] {
    let mut r = request(nonce);
    r[16] = FLAG_OTHER_PORT;
    r
}

/// The nonce of a well-formed request without flags.
pub fn parse_request(datagram: &[u8]) -> Option<u64> {
    parse_any_request(datagram).and_then(|(nonce, flags)| (flags == 0).then_some(nonce))
}

/// The nonce and flags (0 or [`FLAG_OTHER_PORT`]) of a well-formed request.
pub fn parse_any_request(datagram: &[u8]) -> Option<(u64, u8)> {
    let r: &[u8; REQUEST_LEN] = datagram.try_into().ok()?;
    (r[..8] == MAGIC && r[16] <= FLAG_OTHER_PORT && r[17..].iter().all(|b| *b == 0)).then(|| {
        (
            u64::from_be_bytes(r[8..16].try_into().expect("8 bytes")),
            r[16],
        )
    })
}

/// The response telling the requester it was seen as `seen`.
pub fn response(nonce: u64, seen: SocketAddrV4) -> [u8; RESPONSE_LEN] {
    let mut r = [0u8; RESPONSE_LEN];
    r[..8].copy_from_slice(&MAGIC);
    r[8..16].copy_from_slice(&nonce.to_be_bytes());
    r[16..20].copy_from_slice(&seen.ip().octets());
    r[20..22].copy_from_slice(&seen.port().to_be_bytes());
    r
}

/// The (nonce, observed endpoint) of a well-formed response.
pub fn parse_response(datagram: &[u8]) -> Option<(u64, SocketAddrV4)> {
    let r: &[u8; RESPONSE_LEN] = datagram.try_into().ok()?;
    if r[..8] != MAGIC {
        return None;
    }
    let nonce = u64::from_be_bytes(r[8..16].try_into().expect("8 bytes"));
    let ip = Ipv4Addr::new(r[16], r[17], r[18], r[19]);
    Some((
        nonce,
        SocketAddrV4::new(ip, u16::from_be_bytes([r[20], r[21]])),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_no_amplification() {
        let req = request(42);
        assert_eq!(parse_request(&req), Some(42));
        let seen: SocketAddrV4 = "198.18.1.2:40000".parse().unwrap();
        assert_eq!(parse_response(&response(42, seen)), Some((42, seen)));
        const { assert!(RESPONSE_LEN < REQUEST_LEN) };
        assert!(is_reflector(&req) && !matches!(req[0], 1..=4) && req[0] >> 4 != 1);
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let mut req = request(1);
        req[20] = 1;
        assert_eq!(parse_request(&req), None, "padding must be zero");
        assert_eq!(parse_request(&req[..23]), None);
        let other = request_other_port(7);
        assert_eq!(
            parse_request(&other),
            None,
            "a flagged request is not a plain one"
        );
        assert_eq!(parse_any_request(&other), Some((7, FLAG_OTHER_PORT)));
        assert_eq!(parse_any_request(&request(7)), Some((7, 0)));
        let mut unknown = request(7);
        unknown[16] = 2;
        assert_eq!(parse_any_request(&unknown), None, "unknown flags");
        assert_eq!(parse_response(&[0u8; RESPONSE_LEN]), None);
        assert_eq!(
            parse_response(&response(1, "1.2.3.4:5".parse().unwrap())[..21]),
            None
        );
    }

    #[test]
    fn parsers_never_panic_and_responses_round_trip() {
        // The fuzz target `decoders` covers the same parsers without bounds.
        let mut next = crate::test_rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let mut buf = [0u8; 32];
            let len = (next() % 33) as usize;
            if next().is_multiple_of(2) {
                buf[..8].copy_from_slice(&MAGIC);
            }
            for b in &mut buf[8..] {
                *b = if next().is_multiple_of(3) {
                    0
                } else {
                    next() as u8
                };
            }
            let d = &buf[..len];
            if let Some(nonce) = parse_request(d) {
                assert_eq!(&request(nonce)[..], d);
            }
            match parse_any_request(d) {
                Some((nonce, 0)) => assert_eq!(&request(nonce)[..], d),
                Some((nonce, _)) => assert_eq!(&request_other_port(nonce)[..], d),
                None => {}
            }
            if let Some((nonce, seen)) = parse_response(d) {
                assert_eq!(&response(nonce, seen)[..], d);
            }
        }
    }
}
