//! Feeds arbitrary TUN reads and packet batches to the offload code the userspace engine runs
//! on every packet: virtio header parsing, TSO/USO segmentation and TCP GRO. None may panic;
//! every produced segment must carry valid checksums and coalesced output must re-segment into
//! the packets that went in (asserted inside `fuzz_offload`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cladnet_offload::fuzz_offload(data));
