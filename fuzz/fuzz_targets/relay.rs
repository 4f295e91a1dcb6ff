//! Feeds arbitrary datagrams to the relay frame decoder (`cladnet_common::relay`), which sees
//! bytes from anyone on the tunnel port, and to the relay's in-place SEND -> DELIVER rewrite.
//! Neither may panic; a decoded frame re-encodes to its bytes; the rewrite keeps the length
//! (relaying never amplifies), keeps the WireGuard message byte for byte and names the original
//! sender; and a frame that does not decode is never rewritten.
#![no_main]

use cladnet_common::relay::{self, RELAY_HDR_LEN, RelayKind};
use libfuzzer_sys::fuzz_target;

const RELAY_ID: u32 = 0x00c0_ffee;

fuzz_target!(|data: &[u8]| {
    let decoded = relay::decode(data);
    if let Ok(f) = decoded {
        let mut again = vec![0u8; data.len()];
        let out = relay::encode(f.kind, f.sender, f.peer, f.message, &mut again).unwrap();
        assert_eq!(out, data);
    }
    let mut buf = data.to_vec();
    match relay::to_deliver(&mut buf, RELAY_ID) {
        Ok((sender, dst)) => {
            let f = decoded.expect("a rewritten frame decoded");
            assert_eq!((f.kind, f.sender, f.peer), (RelayKind::Send, sender, dst));
            assert_eq!(buf.len(), data.len());
            assert_eq!(buf[RELAY_HDR_LEN..], data[RELAY_HDR_LEN..]);
            let d = relay::decode(&buf).expect("a DELIVER decodes");
            assert_eq!((d.kind, d.sender, d.peer), (RelayKind::Deliver, RELAY_ID, sender));
        }
        Err(_) => assert_eq!(buf, data, "a refused frame is left as it was"),
    }
});
