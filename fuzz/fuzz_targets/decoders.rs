//! Feeds arbitrary datagrams to every decoder that sees bytes from the tunnel port: the
//! first-byte demultiplexer, the CLAD header, PLAIN validation and the reflector messages. None may panic, and a
//! decoded CLAD header must re-encode to the bytes it came from.
#![no_main]

use cladnet_common::{
    plain::{self, KnownPeer},
    reflector,
    wire::{CLAD_HDR_LEN, CladHeader, Demux, demux},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if demux(data) == Demux::Clad
        && let Ok(h) = CladHeader::decode(data)
    {
        assert_eq!(&h.to_bytes()[..], &data[..CLAD_HDR_LEN]);
    }
    let peer = KnownPeer {
        node_index: 0x0a4d_0003,
        overlay_ip: [10, 77, 0, 3],
    };
    if let Ok(inner) = plain::decapsulate(data, Some(peer)) {
        assert_eq!(inner[12..16], peer.overlay_ip);
    }
    let _ = reflector::parse_request(data);
    let _ = reflector::parse_any_request(data);
    if let Some((nonce, seen)) = reflector::parse_response(data) {
        assert_eq!(&reflector::response(nonce, seen)[..], data);
    }
});
