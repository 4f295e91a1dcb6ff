//! Feeds arbitrary datagrams to the path MTU probe/acknowledgement decoder
//! (`cladnet_common::pmtu`), which sees bytes from anyone on the tunnel port. It may not panic;
//! an answer to a probe is never longer than the probe (no amplification); and a decoded
//! message re-encodes to the bytes it came from (when they are in canonical form: flags zero,
//! padding zero).
#![no_main]

use cladnet_common::pmtu::{self, ACK_LEN, MtuMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let canonical = data.get(1) == Some(&0);
    match pmtu::decode(data) {
        Ok(MtuMessage::Probe {
            node_index,
            nonce,
            len,
        }) => {
            assert_eq!(len as usize, data.len());
            let ack = pmtu::ack(7, nonce, len);
            assert!(ack.len() <= data.len(), "an answer larger than the probe");
            assert_eq!(pmtu::decode(&ack), Ok(MtuMessage::Ack { node_index: 7, nonce, len }));
            if canonical && data[16..].iter().all(|&b| b == 0) {
                let mut buf = vec![0u8; data.len()];
                let again = pmtu::probe(node_index, nonce, data.len(), &mut buf).unwrap();
                assert_eq!(again, data);
            }
        }
        Ok(MtuMessage::Ack {
            node_index,
            nonce,
            len,
        }) => {
            assert_eq!(data.len(), ACK_LEN);
            if canonical {
                assert_eq!(&pmtu::ack(node_index, nonce, len)[..], data);
            }
        }
        Err(_) => {}
    }
});
