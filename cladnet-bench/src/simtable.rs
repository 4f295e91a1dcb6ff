//! The peer table of a simulated agent: node id → public endpoint, what the end-of-run check
//! ([`crate::check`]) compares with the store.
//!
//! Full tables hold the strings: about 100 bytes per entry, so N agents × N peers is 100 MB at
//! 1000 agents but 10 GB at 10 000. Compact tables (`--compact-tables`) hold a 32-bit hash of
//! the endpoint per peer in a vector indexed by the peer's number in its node id
//! (`bench-00042` → 42): 4 bytes per entry, 400 MB at 10 000 agents, still checked entry by
//! entry (a stale endpoint is found unless its hash collides, odds 2^-31 per entry).

use std::collections::HashMap;

/// Node ids of the simulated agents: this prefix and the agent's number.
const HOST_PREFIX: &str = "bench-";

/// One agent's peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// Node id → endpoint.
    Full(HashMap<String, String>),
    /// Endpoint hashes by peer number (0: absent), and peers whose ids carry no number.
    Compact {
        /// `slots[k]`: [`endpoint_hash`] of `bench-{k}`, or 0.
        slots: Vec<u32>,
        /// Non-zero slots.
        len: usize,
        /// Peers outside the numbered ids.
        other: HashMap<String, u32>,
    },
}

/// What a table holds for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held<'a> {
    /// The endpoint.
    Endpoint(&'a str),
    /// Its hash (compact tables).
    Hash(u32),
}

impl Held<'_> {
    /// Whether this is what the store holds.
    pub fn matches(self, want: &str) -> bool {
        match self {
            Self::Endpoint(e) => e == want,
            Self::Hash(h) => h == endpoint_hash(want),
        }
    }

    /// As shown in a difference.
    pub fn show(self) -> String {
        match self {
            Self::Endpoint(e) => e.to_owned(),
            Self::Hash(h) => format!("hash {h:08x}"),
        }
    }
}

/// FNV-1a of the endpoint with the low bit set (so that 0 means absent).
pub fn endpoint_hash(endpoint: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in endpoint.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h | 1
}

/// The number in a simulated agent's node id.
fn number(node: &str) -> Option<usize> {
    node.strip_prefix(HOST_PREFIX)?.parse().ok()
}

impl Table {
    /// An empty table, compact or full, for a network of about `peers` peers.
    pub fn new(compact: bool, peers: usize) -> Self {
        if compact {
            Self::Compact {
                slots: vec![0; peers],
                len: 0,
                other: HashMap::new(),
            }
        } else {
            Self::Full(HashMap::with_capacity(peers))
        }
    }

    /// Forgets every peer.
    pub fn clear(&mut self) {
        match self {
            Self::Full(m) => m.clear(),
            Self::Compact { slots, len, other } => {
                slots.fill(0);
                *len = 0;
                other.clear();
            }
        }
    }

    /// Adds or replaces a peer.
    pub fn insert(&mut self, node: String, endpoint: String) {
        match self {
            Self::Full(m) => {
                m.insert(node, endpoint);
            }
            Self::Compact { slots, len, other } => match number(&node) {
                Some(k) => {
                    if k >= slots.len() {
                        slots.resize(k + 1, 0);
                    }
                    if slots[k] == 0 {
                        *len += 1;
                    }
                    slots[k] = endpoint_hash(&endpoint);
                }
                None => {
                    other.insert(node, endpoint_hash(&endpoint));
                }
            },
        }
    }

    /// Adds or replaces a peer from borrowed strings (light decoding): compact tables
    /// allocate nothing, full ones only what they keep.
    pub fn insert_str(&mut self, node: &str, endpoint: &str) {
        match self {
            Self::Full(m) => match m.get_mut(node) {
                Some(held) => endpoint.clone_into(held),
                None => {
                    m.insert(node.to_owned(), endpoint.to_owned());
                }
            },
            Self::Compact { slots, len, other } => match number(node) {
                Some(k) => {
                    if k >= slots.len() {
                        slots.resize(k + 1, 0);
                    }
                    if slots[k] == 0 {
                        *len += 1;
                    }
                    slots[k] = endpoint_hash(endpoint);
                }
                None => {
                    other.insert(node.to_owned(), endpoint_hash(endpoint));
                }
            },
        }
    }

    /// Removes a peer.
    pub fn remove(&mut self, node: &str) {
        match self {
            Self::Full(m) => {
                m.remove(node);
            }
            Self::Compact { slots, len, other } => match number(node) {
                Some(k) if slots.get(k).is_some_and(|&h| h != 0) => {
                    slots[k] = 0;
                    *len -= 1;
                }
                Some(_) => {}
                None => {
                    other.remove(node);
                }
            },
        }
    }

    /// Peers held.
    pub fn len(&self) -> usize {
        match self {
            Self::Full(m) => m.len(),
            Self::Compact { len, other, .. } => len + other.len(),
        }
    }

    /// Whether no peer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What is held for `node`.
    pub fn get(&self, node: &str) -> Option<Held<'_>> {
        match self {
            Self::Full(m) => m.get(node).map(|e| Held::Endpoint(e)),
            Self::Compact { slots, other, .. } => {
                let h = match number(node) {
                    Some(k) => slots.get(k).copied().filter(|&h| h != 0),
                    None => other.get(node).copied(),
                }?;
                Some(Held::Hash(h))
            }
        }
    }

    /// Every node id held.
    pub fn nodes(&self) -> Vec<String> {
        match self {
            Self::Full(m) => m.keys().cloned().collect(),
            Self::Compact { slots, other, .. } => slots
                .iter()
                .enumerate()
                .filter(|(_, h)| **h != 0)
                .map(|(k, _)| format!("{HOST_PREFIX}{k:05}"))
                .chain(other.keys().cloned())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Held, Table, endpoint_hash};

    #[test]
    fn compact_and_full_tables_agree() {
        for compact in [false, true] {
            let mut t = Table::new(compact, 4);
            t.insert("bench-00001".into(), "1.1.1.1:1".into());
            t.insert("bench-00007".into(), "7.7.7.7:7".into());
            t.insert("ext-x".into(), "9.9.9.9:9".into());
            t.insert("bench-00001".into(), "1.1.1.2:1".into());
            assert_eq!(t.len(), 3, "compact {compact}");
            assert!(t.get("bench-00001").unwrap().matches("1.1.1.2:1"));
            assert!(!t.get("bench-00001").unwrap().matches("1.1.1.1:1"));
            assert!(t.get("ext-x").unwrap().matches("9.9.9.9:9"));
            assert_eq!(t.get("bench-00002"), None);
            t.remove("bench-00007");
            t.remove("bench-00007");
            assert_eq!(t.len(), 2);
            let mut nodes = t.nodes();
            nodes.sort();
            assert_eq!(nodes, ["bench-00001", "ext-x"]);
            t.clear();
            assert!(t.is_empty());
        }
    }

    #[test]
    fn insert_str_is_insert() {
        for compact in [false, true] {
            let (mut a, mut b) = (Table::new(compact, 4), Table::new(compact, 4));
            for (node, endpoint) in [
                ("bench-00001", "1.1.1.1:1"),
                ("bench-00009", "9.9.9.9:9"),
                ("ext-x", "2.2.2.2:2"),
                ("bench-00001", "1.1.1.2:1"),
                ("ext-x", "2.2.2.3:2"),
            ] {
                a.insert(node.into(), endpoint.into());
                b.insert_str(node, endpoint);
            }
            assert_eq!(a, b, "compact {compact}");
            assert_eq!(b.len(), 3);
        }
    }

    #[test]
    fn hashes_are_never_zero_and_shown() {
        assert_ne!(endpoint_hash(""), 0);
        assert_ne!(endpoint_hash("1.1.1.1:1"), endpoint_hash("1.1.1.1:2"));
        assert!(Held::Hash(0xab).show().contains("000000ab"));
        assert_eq!(Held::Endpoint("x").show(), "x");
    }
}
