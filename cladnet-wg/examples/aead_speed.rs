//! The AEAD's own speed on one core: how fast the ChaCha20-Poly1305 implementation WireGuard's
//! transport messages use here seals and opens packets of a given size. An upper bound for
//! SEALED links per core (docs/benchmarks.md, "What bounds SEALED on this machine").
//!
//! `cargo run --release -p cladnet-wg --example aead_speed -- [bytes] [seconds]`

use std::time::{Duration, Instant};

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{AeadInPlace, Tag},
};

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1440);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
    let mut buf = vec![0x5au8; size];
    let run = Duration::from_secs(secs);

    let (mut n, start) = (0u64, Instant::now());
    let mut tag = Tag::<ChaCha20Poly1305>::default();
    while start.elapsed() < run {
        for _ in 0..1000 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_le_bytes());
            tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut buf)
                .expect("seal");
            n += 1;
        }
    }
    let seal = start.elapsed();

    // Open what was sealed last, over and over (the tag check fails after the first time
    // without changing the work: decryption and the MAC are computed either way).
    let (mut m, start) = (0u64, Instant::now());
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&(n - 1).to_le_bytes());
    let sealed = buf.clone();
    while start.elapsed() < run {
        for _ in 0..1000 {
            buf.copy_from_slice(&sealed);
            let _ =
                cipher.decrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut buf, &tag);
            m += 1;
        }
    }
    let open = start.elapsed();
    // ring's implementation of the same AEAD.
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &[7u8; 32]).expect("key"),
    );
    let (mut r, start) = (0u64, Instant::now());
    while start.elapsed() < run {
        for _ in 0..1000 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&r.to_le_bytes());
            let _tag = key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::empty(),
                    &mut buf,
                )
                .expect("seal");
            r += 1;
        }
    }
    let ring_seal = start.elapsed();
    let gbps = |count: u64, t: Duration| count as f64 * size as f64 * 8.0 / t.as_secs_f64() / 1e9;
    println!(
        "chacha20poly1305 (RustCrypto) {size} B: seal {:.2} Gbit/s ({:.0} k packets/s), open {:.2} Gbit/s ({:.0} k packets/s) on one core",
        gbps(n, seal),
        n as f64 / seal.as_secs_f64() / 1e3,
        gbps(m, open),
        m as f64 / open.as_secs_f64() / 1e3,
    );
    println!(
        "chacha20poly1305 (ring) {size} B: seal {:.2} Gbit/s ({:.0} k packets/s) on one core",
        gbps(r, ring_seal),
        r as f64 / ring_seal.as_secs_f64() / 1e3,
    );
}
