//! The inner packet a transport message decrypts to: its IP length (the rest is WireGuard's
//! padding) and source address (for cryptokey routing). Used by the data side only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Validates a decrypted inner packet and returns its IP length and source address.
pub(crate) fn inner_packet(plain: &[u8]) -> Option<(usize, IpAddr)> {
    match plain.first()? >> 4 {
        4 if plain.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([plain[2], plain[3]]));
            let source: [u8; 4] = plain[12..16].try_into().ok()?;
            (20..=plain.len())
                .contains(&total)
                .then_some((total, IpAddr::V4(Ipv4Addr::from(source))))
        }
        6 if plain.len() >= 40 => {
            let total = 40 + usize::from(u16::from_be_bytes([plain[4], plain[5]]));
            let source: [u8; 16] = plain[8..24].try_into().ok()?;
            (total <= plain.len()).then_some((total, IpAddr::V6(Ipv6Addr::from(source))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_packet_lengths() {
        let mut v4 = [0_u8; 48];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&40_u16.to_be_bytes());
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            inner_packet(&v4),
            Some((40, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))))
        );
        v4[2..4].copy_from_slice(&49_u16.to_be_bytes());
        assert_eq!(inner_packet(&v4), None);
        v4[2..4].copy_from_slice(&19_u16.to_be_bytes());
        assert_eq!(inner_packet(&v4), None);

        let mut v6 = [0_u8; 64];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8_u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(
            inner_packet(&v6),
            Some((48, IpAddr::V6(Ipv6Addr::LOCALHOST)))
        );
        assert_eq!(inner_packet(&v6[..47]), None);
        assert_eq!(inner_packet(&[0x10; 40]), None);
        assert_eq!(inner_packet(&[]), None);
    }
}
