//! Light decoding of Watch messages for the simulated agents (`--light-decode`).
//!
//! With prost, every Watch message is decoded into full `WatchEvent`s: a snapshot of N peers
//! is a `Vec<Peer>` of N messages with some twenty fields each (strings, nested messages,
//! repeated fields), all allocated, moved into the agent's table (two of them) and freed. At
//! thousands of agents this decoding, its allocations and the page faults of its large
//! vectors took most of the two cores the load generator shares with the controller and etcd
//! (docs/benchmarks.md, "The load generator's own cost").
//!
//! Here the agents receive each message as its raw bytes ([`RawWatchCodec`]: the gRPC
//! message as it arrived, not copied) and [`walk`] reads the protobuf wire format in place,
//! keeping only what the table check needs: each event's revision, and for each peer its node
//! id (`host_id`, field 2) and public endpoint (field 12). Every other field is skipped by its
//! length, without being decoded or allocated. The strings are borrowed from the message, so
//! with compact tables applying a snapshot allocates nothing.
//!
//! Semantics are prost's for the fields read: a missing string is `""`, a repeated scalar
//! field keeps its last value, the last `event` field of a `WatchEvent` wins (the controller
//! sends one), unknown fields and events are skipped. The tests encode full messages with the
//! generated types and check that [`walk`] yields exactly what prost decodes.

use std::str;

use bytes::{Buf as _, Bytes};
use cladnet_proto::v1::WatchRequest;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// The gRPC path of `AgentService.Watch`.
pub(crate) const WATCH_PATH: &str = "/cladnet.v1.AgentService/Watch";

/// What a Watch message tells an agent's table, item by item, in the order of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A snapshot begins: the table is replaced by the [`Item::SnapshotPeer`]s that follow.
    Snapshot,
    /// One peer of the snapshot.
    SnapshotPeer {
        /// Its node id (`host_id`).
        node: &'a str,
        /// Its public endpoint.
        endpoint: &'a str,
    },
    /// `peerUpserted`.
    Upserted {
        /// Its node id (`host_id`).
        node: &'a str,
        /// Its public endpoint.
        endpoint: &'a str,
    },
    /// `peerRemoved`: the node id.
    Removed(&'a str),
    /// `networkDeleted`.
    NetworkDeleted,
    /// Any other event (or a message without one).
    Other,
}

/// Reads `msg` (one encoded `WatchEvent`) and calls `f(revision, item)` for everything it
/// tells the table; a batch yields its events in order, each with its own revision.
pub fn walk<'a>(
    msg: &'a [u8],
    f: &mut dyn FnMut(i64, Item<'a>) -> Result<(), String>,
) -> Result<(), String> {
    walk_event(msg, f, 0)
}

/// Nesting depth at which a message is refused (a batch holds events, not batches).
const MAX_DEPTH: u32 = 4;

fn walk_event<'a>(
    msg: &'a [u8],
    f: &mut dyn FnMut(i64, Item<'a>) -> Result<(), String>,
    depth: u32,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("Watch message nested too deeply".into());
    }
    // The revision may follow the event on the wire: find both first.
    let (mut revision, mut event) = (0i64, None);
    let mut r = Reader(msg);
    while let Some((tag, value)) = r.field()? {
        match (tag, value) {
            (1, Value::Varint(v)) => revision = v as i64,
            (2..=10, Value::Bytes(b)) => event = Some((tag, b)),
            (1..=10, _) => return Err(wire_type("WatchEvent", tag)),
            _ => {}
        }
    }
    let Some((tag, body)) = event else {
        return f(revision, Item::Other);
    };
    match tag {
        2 => {
            f(revision, Item::Snapshot)?;
            let mut r = Reader(body);
            while let Some((tag, value)) = r.field()? {
                match (tag, value) {
                    (2, Value::Bytes(peer)) => {
                        let (node, endpoint) = peer_fields(peer)?;
                        f(revision, Item::SnapshotPeer { node, endpoint })?;
                    }
                    (2, _) => return Err(wire_type("Snapshot", tag)),
                    _ => {}
                }
            }
            Ok(())
        }
        3 => {
            let (node, endpoint) = peer_fields(body)?;
            f(revision, Item::Upserted { node, endpoint })
        }
        4 => f(revision, Item::Removed(utf8(body)?)),
        8 => f(revision, Item::NetworkDeleted),
        9 => {
            let mut r = Reader(body);
            while let Some((tag, value)) = r.field()? {
                match (tag, value) {
                    (1, Value::Bytes(event)) => walk_event(event, f, depth + 1)?,
                    (1, _) => return Err(wire_type("WatchBatch", tag)),
                    _ => {}
                }
            }
            Ok(())
        }
        _ => f(revision, Item::Other),
    }
}

/// A `Peer`'s `host_id` (2) and `public_endpoint` (12).
fn peer_fields(peer: &[u8]) -> Result<(&str, &str), String> {
    let (mut node, mut endpoint): (&[u8], &[u8]) = (b"", b"");
    let mut r = Reader(peer);
    while let Some((tag, value)) = r.field()? {
        match (tag, value) {
            (2, Value::Bytes(b)) => node = b,
            (12, Value::Bytes(b)) => endpoint = b,
            (2 | 12, _) => return Err(wire_type("Peer", tag)),
            _ => {}
        }
    }
    Ok((utf8(node)?, utf8(endpoint)?))
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    str::from_utf8(b).map_err(|e| format!("Watch message: a string is not UTF-8: {e}"))
}

fn wire_type(message: &str, tag: u32) -> String {
    format!("Watch message: field {tag} of {message} has the wrong wire type")
}

/// A field's value as the wire carries it (groups are refused; fixed-size values skipped).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The protobuf wire format, field by field.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for (k, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * k);
            if b & 0x80 == 0 {
                self.0 = &self.0[k + 1..];
                return Ok(v);
            }
        }
        Err("Watch message: truncated or invalid varint".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err("Watch message: truncated".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// The next field's number and value; `None` at the end.
    fn field(&mut self) -> Result<Option<(u32, Value<'a>)>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "Watch message: field number too large")?;
        if tag == 0 {
            return Err("Watch message: field number 0".into());
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| "Watch message: length too large")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            w => return Err(format!("Watch message: unsupported wire type {w}")),
        };
        Ok(Some((tag, value)))
    }
}

/// The Watch call's codec for light decoding: the request encoded by prost as usual, each
/// response message handed over as its bytes (a view of tonic's buffer, not a copy).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawWatchCodec;

/// Decodes a message into its bytes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = buf.remaining();
        Ok(Some(buf.copy_to_bytes(len)))
    }
}

impl Codec for RawWatchCodec {
    type Encode = WatchRequest;
    type Decode = Bytes;
    type Encoder = ProstEncoder<WatchRequest>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

#[cfg(test)]
mod tests {
    use cladnet_proto::v1::{
        CloudInformation, Link, Network, Peer, Route, Snapshot, WatchBatch, WatchEvent,
        watch_event::Event,
    };
    use prost::Message as _;

    use super::{Item, walk};

    /// A peer with every kind of field filled, so that skipping is exercised.
    fn peer(k: usize, endpoint: &str) -> Peer {
        Peer {
            cladnet_id: "bench".into(),
            host_id: format!("bench-{k:05}"),
            host_name: format!("host-{k}"),
            host_private_ipv4_cidr: "172.16.0.10/12".into(),
            ip: format!("10.64.0.{k}"),
            state: "up".into(),
            details: Some(CloudInformation {
                provider_name: "bench".into(),
                region_id: "region-1".into(),
                ..Default::default()
            }),
            public_key: "a".repeat(44),
            public_endpoint: endpoint.into(),
            private_endpoint: "172.16.0.10:8055".into(),
            capabilities: vec!["userspace".into(), "ebpf".into()],
            links: vec![Link::default(), Link::default()],
            revision: 1000 + k as i64,
            node_index: k as u32 + 1,
            external: k.is_multiple_of(2),
            routes: vec![Route {
                host_id: format!("bench-{k:05}"),
                prefix: "192.168.0.0/24".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn event(revision: i64, event: Event) -> WatchEvent {
        WatchEvent {
            revision,
            event: Some(event),
        }
    }

    /// What prost decodes, as the items [`walk`] must yield.
    fn reference(ev: WatchEvent, out: &mut Vec<(i64, String)>) {
        let rev = ev.revision;
        match ev.event {
            Some(Event::Batch(b)) => {
                for e in b.events {
                    reference(e, out);
                }
            }
            Some(Event::Snapshot(s)) => {
                out.push((rev, format!("{:?}", Item::Snapshot)));
                for p in s.peers {
                    out.push((
                        rev,
                        format!(
                            "{:?}",
                            Item::SnapshotPeer {
                                node: &p.host_id,
                                endpoint: &p.public_endpoint
                            }
                        ),
                    ));
                }
            }
            Some(Event::PeerUpserted(p)) => out.push((
                rev,
                format!(
                    "{:?}",
                    Item::Upserted {
                        node: &p.host_id,
                        endpoint: &p.public_endpoint
                    }
                ),
            )),
            Some(Event::PeerRemoved(n)) => out.push((rev, format!("{:?}", Item::Removed(&n)))),
            Some(Event::NetworkDeleted(_)) => {
                out.push((rev, format!("{:?}", Item::NetworkDeleted)))
            }
            _ => out.push((rev, format!("{:?}", Item::Other))),
        }
    }

    fn walked(bytes: &[u8]) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        walk(bytes, &mut |rev, item| {
            out.push((rev, format!("{item:?}")));
            Ok(())
        })
        .unwrap();
        out
    }

    fn messages() -> Vec<WatchEvent> {
        let snapshot = Snapshot {
            network: Some(Network {
                cladnet_id: "bench".into(),
                name: "n".into(),
                ..Default::default()
            }),
            peers: (0..50)
                .map(|k| peer(k, &format!("198.18.0.{k}:8055")))
                .collect(),
        };
        vec![
            event(7, Event::Snapshot(snapshot)),
            event(8, Event::PeerUpserted(peer(3, "100.64.0.1:8056"))),
            event(9, Event::PeerRemoved("bench-00004".into())),
            event(
                12,
                Event::Batch(WatchBatch {
                    events: vec![
                        event(10, Event::PeerUpserted(peer(60, "198.18.0.60:8055"))),
                        event(11, Event::NetworkUpdated(Network::default())),
                        event(12, Event::PeerUpserted(peer(3, "100.64.0.2:8056"))),
                        event(12, Event::PeerRemoved("bench-00060".into())),
                    ],
                }),
            ),
            event(13, Event::NetworkDeleted("bench".into())),
            WatchEvent {
                revision: 14,
                event: None,
            },
            // A peer without an endpoint, and an empty snapshot.
            event(15, Event::PeerUpserted(peer(61, ""))),
            event(16, Event::Snapshot(Snapshot::default())),
        ]
    }

    #[test]
    fn walk_yields_what_prost_decodes() {
        for m in messages() {
            let bytes = m.encode_to_vec();
            let mut want = Vec::new();
            reference(WatchEvent::decode(&bytes[..]).unwrap(), &mut want);
            assert!(!want.is_empty());
            assert_eq!(walked(&bytes), want, "message at revision {}", m.revision);
        }
    }

    #[test]
    fn a_missed_peer_or_endpoint_change_would_show() {
        // The snapshot: all 50 peers with their endpoints.
        let bytes = messages()[0].encode_to_vec();
        let items = walked(&bytes);
        assert_eq!(items.len(), 51);
        for k in 0..50 {
            let want = format!(
                "{:?}",
                Item::SnapshotPeer {
                    node: &format!("bench-{k:05}"),
                    endpoint: &format!("198.18.0.{k}:8055"),
                }
            );
            assert!(items.iter().any(|(r, i)| *r == 7 && *i == want), "{want}");
        }
        // The batch: the endpoint change of bench-00003 at revision 12, after the one at 8.
        let bytes = messages()[3].encode_to_vec();
        let items = walked(&bytes);
        let change = format!(
            "{:?}",
            Item::Upserted {
                node: "bench-00003",
                endpoint: "100.64.0.2:8056"
            }
        );
        assert_eq!(items[2], (12, change));
        assert_eq!(items.len(), 4);
    }

    #[test]
    fn the_revision_may_follow_the_event() {
        // Field 3 (peerUpserted) first, then field 1 (revision 42).
        let p = peer(5, "1.2.3.4:5").encode_to_vec();
        let mut bytes = vec![3 << 3 | 2];
        prost::encoding::encode_varint(p.len() as u64, &mut bytes);
        bytes.extend_from_slice(&p);
        bytes.extend_from_slice(&[1 << 3, 42]);
        let items = walked(&bytes);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].0, 42);
        assert!(items[0].1.contains("1.2.3.4:5"));
    }

    #[test]
    fn broken_messages_are_refused() {
        let bytes = messages()[1].encode_to_vec();
        for cut in [1, 3, bytes.len() - 1] {
            let r = walk(&bytes[..cut], &mut |_, _| Ok(()));
            assert!(r.is_err(), "cut at {cut}");
        }
        // peerRemoved (field 4) as a varint.
        let r = walk(&[4 << 3, 1], &mut |_, _| Ok(()));
        assert!(r.is_err());
        // A node id that is not UTF-8.
        let r = walk(&[4 << 3 | 2, 1, 0xff], &mut |_, _| Ok(()));
        assert!(r.is_err());
    }
}
