//! Feeds arbitrary datagrams to every decoder that sees bytes from the tunnel port: the
//! first-byte demultiplexer, the CLAD header and the reflector messages. None may panic, and a
//! decoded CLAD header must re-encode to the bytes it came from.
#![no_main]

use cladnet_common::wire::{CLAD_HDR_LEN, CladHeader, Demux, demux};
use cladnet_core::reflector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if demux(data) == Demux::Clad
        && let Ok(h) = CladHeader::decode(data)
    {
        assert_eq!(&h.to_bytes()[..], &data[..CLAD_HDR_LEN]);
    }
    let _ = reflector::parse_request(data);
    if let Some((nonce, seen)) = reflector::parse_response(data) {
        assert_eq!(&reflector::response(nonce, seen)[..], data);
    }
});
