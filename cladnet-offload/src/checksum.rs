//! The Internet checksum (RFC 1071): a one's complement sum of big-endian 16-bit words.
//!
//! Partial sums are carried as folded `u16` values, *not* complemented, so they combine with
//! [`add`] in any order (one's complement addition is associative and commutative). The
//! checksum placed in a header is the complement of the final sum: [`checksum`].
//!
//! The hot loop sums native-endian 32-bit words into 64-bit accumulators and swaps the folded
//! result once at the end (RFC 1071 §2(B): the sum is byte-order independent up to a final
//! swap), which the compiler vectorizes; there are no per-word byte swaps or carries.

/// Adds two folded one's complement sums.
#[inline]
pub fn add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    // At most 0x1_FFFE, so a single end-around carry suffices.
    ((s & 0xFFFF) + (s >> 16)) as u16
}

/// Folds a wide one's complement accumulator to 16 bits (end-around carry).
#[inline]
pub fn fold(acc: u64) -> u16 {
    let x = (acc & 0xFFFF_FFFF) + (acc >> 32); // <= 0x1_FFFF_FFFE
    let x = (x & 0xFFFF_FFFF) + (x >> 32); // <= 0xFFFF_FFFF
    let x = (x & 0xFFFF) + (x >> 16); // <= 0x1_FFFE
    ((x & 0xFFFF) + (x >> 16)) as u16
}

/// The folded one's complement sum of `data` (big-endian 16-bit words; an odd trailing byte
/// is padded with a zero byte) plus `initial`. Not complemented.
///
/// `data` is treated as starting at an even offset of the checksummed region: only the last
/// piece of a region split into several calls may have an odd length.
#[inline]
pub fn sum(data: &[u8], initial: u16) -> u16 {
    // Summing native-endian words yields the byte-swapped sum on little-endian hosts;
    // `from_be` swaps it back there and is the identity on big-endian hosts.
    add(initial, u16::from_be(fold(sum_native(data))))
}

/// The Internet checksum of `data` with a partial sum `initial` (such as a pseudo-header
/// sum) folded in: the value to store in a checksum field that was zero while summing.
#[inline]
pub fn checksum(data: &[u8], initial: u16) -> u16 {
    !sum(data, initial)
}

/// The sum of the TCP/UDP pseudo-header: source and destination addresses (4 or 16 bytes
/// each), the protocol number and the transport length. Not complemented.
///
/// Used both to compute a full checksum ([`checksum`] over the transport header and payload
/// with this as `initial`) and, as is, as the partial checksum a CHECKSUM_PARTIAL packet
/// carries in its checksum field.
#[inline]
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, transport_len: u32) -> u16 {
    let extra =
        u64::from(protocol) + u64::from(transport_len >> 16) + u64::from(transport_len & 0xFFFF);
    add(sum(src, 0), add(sum(dst, 0), fold(extra)))
}

/// RFC 1624 incremental update: the checksum `old_checksum` of a region after one 16-bit
/// word in it changes from `old` to `new` (`HC' = ~(~HC + ~m + m')`).
#[inline]
pub fn update16(old_checksum: u16, old: u16, new: u16) -> u16 {
    !add(add(!old_checksum, !old), new)
}

/// RFC 1624 incremental update for a 32-bit field (such as a TCP sequence number) changing
/// from `old` to `new`.
#[inline]
pub fn update32(old_checksum: u16, old: u32, new: u32) -> u16 {
    let c = update16(old_checksum, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

/// Whether `data`, including its checksum field, sums with `initial` to all ones: the
/// receiver's check.
#[inline]
pub fn verify(data: &[u8], initial: u16) -> bool {
    sum(data, initial) == 0xFFFF
}

/// Native-endian 32-bit word sum. A u64 absorbs 2^32 additions of u32 words, far more than
/// any packet (16 GiB), so there are no carries to propagate in the loop.
#[inline]
fn sum_native(data: &[u8]) -> u64 {
    #[inline(always)]
    fn w32(c: &[u8]) -> u64 {
        u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
    }
    let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
    let mut chunks = data.chunks_exact(32);
    for ch in &mut chunks {
        a += w32(&ch[0..4]) + w32(&ch[16..20]);
        b += w32(&ch[4..8]) + w32(&ch[20..24]);
        c += w32(&ch[8..12]) + w32(&ch[24..28]);
        d += w32(&ch[12..16]) + w32(&ch[28..32]);
    }
    let mut words = chunks.remainder().chunks_exact(4);
    for w in &mut words {
        a += w32(w);
    }
    // The tail keeps the same native-endian convention: a lone last byte is the high byte of
    // its big-endian word, i.e. the first byte of the pair.
    match *words.remainder() {
        [x] => b += u64::from(u16::from_ne_bytes([x, 0])),
        [x, y] => b += u64::from(u16::from_ne_bytes([x, y])),
        [x, y, z] => {
            b += u64::from(u16::from_ne_bytes([x, y])) + u64::from(u16::from_ne_bytes([z, 0]));
        }
        _ => {}
    }
    a + b + c + d
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The textbook RFC 1071 loop, as the reference.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
            while acc > 0xFFFF {
                acc = (acc & 0xFFFF) + (acc >> 16);
            }
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data, 0), 0xddf2);
        assert_eq!(checksum(&data, 0), !0xddf2);
    }

    #[test]
    fn ipv4_header_vector() {
        // The classic worked example (Wikipedia "IPv4 header checksum"): checksum 0xb861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr, 0), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(&hdr, 0));
    }

    #[test]
    fn odd_lengths_and_tails() {
        assert_eq!(sum(&[], 0), 0);
        assert_eq!(sum(&[0xAB], 0), 0xAB00);
        assert_eq!(sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
        assert_eq!(sum(&[0xFF; 64], 0), 0xFFFF);
    }

    #[test]
    fn pseudo_header_v4_vector() {
        // 10.0.0.1 -> 10.0.0.2, TCP, 20 bytes: 0x0a00+0x0001+0x0a00+0x0002+6+20.
        let s = pseudo_header(&[10, 0, 0, 1], &[10, 0, 0, 2], 6, 20);
        assert_eq!(s, 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 20);
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut data: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(37)).collect();
        let c0 = checksum(&data, 0);
        let old = u32::from_be_bytes(data[4..8].try_into().unwrap());
        let new: u32 = 0xDEAD_BEEF;
        data[4..8].copy_from_slice(&new.to_be_bytes());
        let c1 = checksum(&data, 0);
        // Both representations of zero are equivalent; compare through verification.
        let inc = update32(c0, old, new);
        assert!(inc == c1 || (inc == 0xFFFF && c1 == 0) || (inc == 0 && c1 == 0xFFFF));
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..2000), init in any::<u16>()) {
            prop_assert_eq!(sum(&data, 0), reference_sum(&data));
            let expect = add(reference_sum(&data), init);
            prop_assert_eq!(sum(&data, init), expect);
        }

        #[test]
        fn split_sums_combine(data in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..300) {
            let cut = (cut * 2).min(data.len() & !1);
            let whole = sum(&data, 0);
            let parts = add(sum(&data[..cut], 0), sum(&data[cut..], 0));
            // 0x0000 and 0xFFFF are both zero in one's complement.
            prop_assert!(whole == parts || ((whole | parts) == 0xFFFF && (whole & parts) == 0));
        }
    }
}
