//! The end-of-run table check: every simulated agent's peer table against the store.
//!
//! Convergence counts peers; it cannot see an agent that holds N entries of which one is stale
//! (a missed change), nor say which peer a never-converging agent lacks. After each run the
//! bench therefore reads the network's peer records straight from the store (the controller
//! stopped, so the store is quiescent and an embedded file is free to open) and compares every
//! agent's table, peer by peer. A difference fails the run and names the agents and peers.
//!
//! The store is read through `cladnet-store` without the controller's key layout: a peer record
//! is any JSON object stored under a key of the network ending in `/{node_id}` that carries that
//! `node_id`, an `overlay_ip` and a `public_endpoint`. Both the layout of today and one that
//! moves peer records to another prefix of the network are read alike, and so is the store of a
//! baseline controller built from an older commit.

use std::{collections::BTreeMap, fmt::Write as _, sync::Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
pub use crate::simtable::Table;

/// Every agent's table, shared between the agent tasks (each locks only its own slot while it
/// applies an event) and the coordinator (which reads them all once the run is over).
#[derive(Debug)]
pub struct Tables {
    slots: Vec<Mutex<Option<Table>>>,
    /// Whether new tables are compact ([`Table::Compact`]).
    compact: bool,
}

impl Tables {
    /// `agents` empty slots (`None`: no snapshot received yet); `compact` tables hold endpoint
    /// hashes instead of strings.
    pub fn new(agents: usize, compact: bool) -> Self {
        Self {
            slots: (0..agents).map(|_| Mutex::new(None)).collect(),
            compact,
        }
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no agents.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Runs `f` on agent `i`'s table (created empty on first use).
    pub fn with<T>(&self, i: usize, f: impl FnOnce(&mut Table) -> T) -> T {
        let mut slot = self.slots[i].lock().unwrap_or_else(|e| e.into_inner());
        let peers = self.slots.len();
        f(slot.get_or_insert_with(|| Table::new(self.compact, peers)))
    }

    /// Takes every table out (the agents must be stopped).
    pub fn take(&self) -> Vec<Option<Table>> {
        self.slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect()
    }
}

/// The fields of a peer record the check needs.
#[derive(Debug, Deserialize)]
struct PeerFields {
    node_id: String,
    #[serde(rename = "overlay_ip")]
    _overlay_ip: String,
    public_endpoint: Option<String>,
}

/// The peers of network `net` in a store, as read by [`read_store`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorePeers {
    /// Node id → public endpoint.
    pub peers: BTreeMap<String, String>,
    /// Records of one node under several keys that disagree (a store inconsistency).
    pub conflicts: Vec<String>,
}

/// Picks the peer records of network `net` out of `(key, value)` pairs.
pub fn peers_from_records<'a>(
    net: &str,
    records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> StorePeers {
    let marker = format!("/{net}/");
    let mut out = StorePeers::default();
    for (key, value) in records {
        if !key.contains(&marker) || value.first() != Some(&b'{') {
            continue;
        }
        let Ok(p) = serde_json::from_slice::<PeerFields>(value) else {
            continue;
        };
        if key.rsplit('/').next() != Some(p.node_id.as_str()) {
            continue;
        }
        let endpoint = p.public_endpoint.unwrap_or_default();
        match out.peers.get(&p.node_id) {
            Some(other) if *other != endpoint => out.conflicts.push(format!(
                "{}: {key} says {endpoint:?}, another record {other:?}",
                p.node_id
            )),
            Some(_) => {}
            None => {
                out.peers.insert(p.node_id, endpoint);
            }
        }
    }
    out
}

/// Reads the peers of network `net` from the store at `url` (for an embedded store, the
/// controller must have stopped: the file is locked while it runs).
pub async fn read_store(url: &str, net: &str) -> Result<StorePeers> {
    let parsed: cladnet_store::StoreUrl = url
        .parse()
        .map_err(|e| BenchError::Check(format!("store URL {url}: {e}")))?;
    let store = cladnet_store::connect(&parsed)
        .await
        .map_err(|e| BenchError::Check(format!("opening the store {url}: {e}")))?;
    let range = store
        .range("/")
        .await
        .map_err(|e| BenchError::Check(format!("reading the store {url}: {e}")))?;
    let found = peers_from_records(
        net,
        range
            .kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
    );
    if found.peers.is_empty() {
        return Err(BenchError::Check(format!(
            "no peer record of network {net:?} in the store {url} ({} keys): did the record \
             format change? (cladnet-bench/src/check.rs reads JSON records with node_id, \
             overlay_ip, public_endpoint)",
            range.kvs.len()
        )));
    }
    Ok(found)
}

/// How one agent's table differs from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentDiff {
    /// The agent's node id.
    pub agent: String,
    /// The agent never received a snapshot.
    pub no_table: bool,
    /// Peers in the store the agent lacks.
    pub missing: Vec<String>,
    /// Peers the agent holds with another endpoint than the store: (node, agent's, store's).
    pub stale: Vec<(String, String, String)>,
    /// Peers the agent holds that the store does not.
    pub extra: Vec<String>,
}

/// The result of the check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableCheck {
    /// Agents checked.
    pub agents: usize,
    /// Peers in the store.
    pub store_peers: usize,
    /// Agents whose table equals the store's peers.
    pub agents_equal: usize,
    /// Peer entries missing over all agents.
    pub missing: usize,
    /// Peer entries with a stale endpoint over all agents.
    pub stale: usize,
    /// Peer entries the store does not have, over all agents.
    pub extra: usize,
    /// Records the store holds twice with different values.
    pub store_conflicts: Vec<String>,
    /// The agents that differ (all of them; the text shows the first few).
    pub differing: Vec<AgentDiff>,
}

/// Agents and peers named in the text of a failed check (the JSON holds them all).
const SHOWN_AGENTS: usize = 20;
const SHOWN_PEERS: usize = 8;

impl TableCheck {
    /// Whether every agent's table equals the store's peers and the store is consistent.
    pub fn passed(&self) -> bool {
        self.differing.is_empty() && self.store_conflicts.is_empty()
    }

    /// One line when it passed; otherwise the differing agents and their peers.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{}/{} agents hold exactly the store's {} peers",
            self.agents_equal, self.agents, self.store_peers
        );
        if self.passed() {
            return out;
        }
        let _ = write!(
            out,
            "; {} differ ({} missing, {} stale, {} extra peer entries)",
            self.differing.len(),
            self.missing,
            self.stale,
            self.extra
        );
        for c in self.store_conflicts.iter().take(SHOWN_PEERS) {
            let _ = write!(out, "\n  store conflict: {c}");
        }
        for d in self.differing.iter().take(SHOWN_AGENTS) {
            let _ = write!(out, "\n  {}:", d.agent);
            if d.no_table {
                out.push_str(" no snapshot received");
                continue;
            }
            let list = |v: &mut String, what: &str, items: &[String]| {
                if items.is_empty() {
                    return;
                }
                let shown: Vec<&str> = items.iter().take(SHOWN_PEERS).map(String::as_str).collect();
                let more = items.len().saturating_sub(SHOWN_PEERS);
                let _ = write!(v, " {what} {}", shown.join(", "));
                if more > 0 {
                    let _ = write!(v, " (+{more} more)");
                }
                v.push(';');
            };
            list(&mut out, "lacks", &d.missing);
            let stale: Vec<String> = d
                .stale
                .iter()
                .map(|(n, have, want)| format!("{n} at {have:?} (store {want:?})"))
                .collect();
            list(&mut out, "stale", &stale);
            list(&mut out, "extra", &d.extra);
        }
        if self.differing.len() > SHOWN_AGENTS {
            let _ = write!(
                out,
                "\n  ... and {} more agents (see --json)",
                self.differing.len() - SHOWN_AGENTS
            );
        }
        out
    }
}

/// Compares every agent's table (`tables[i]` belongs to `names[i]`) with the store's peers.
pub fn compare(names: &[String], tables: &[Option<Table>], store: &StorePeers) -> TableCheck {
    let mut check = TableCheck {
        agents: tables.len(),
        store_peers: store.peers.len(),
        store_conflicts: store.conflicts.clone(),
        ..TableCheck::default()
    };
    for (name, table) in names.iter().zip(tables) {
        let mut d = AgentDiff {
            agent: name.clone(),
            ..AgentDiff::default()
        };
        match table {
            None => d.no_table = true,
            Some(t) => {
                for (node, want) in &store.peers {
                    match t.get(node) {
                        None => d.missing.push(node.clone()),
                        Some(have) if !have.matches(want) => {
                            d.stale.push((node.clone(), have.show(), want.clone()));
                        }
                        Some(_) => {}
                    }
                }
                d.extra = t
                    .nodes()
                    .into_iter()
                    .filter(|n| !store.peers.contains_key(n))
                    .collect();
                d.extra.sort();
            }
        }
        check.missing += d.missing.len();
        check.stale += d.stale.len();
        check.extra += d.extra.len();
        if d.no_table || !d.missing.is_empty() || !d.stale.is_empty() || !d.extra.is_empty() {
            check.differing.push(d);
        } else {
            check.agents_equal += 1;
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::{StorePeers, Table, compare, peers_from_records};

    fn store(peers: &[(&str, &str)]) -> StorePeers {
        StorePeers {
            peers: peers
                .iter()
                .map(|(n, e)| (n.to_string(), e.to_string()))
                .collect(),
            conflicts: Vec::new(),
        }
    }

    fn table(peers: &[(&str, &str)]) -> Option<Table> {
        Some(Table::Full(
            peers
                .iter()
                .map(|(n, e)| (n.to_string(), e.to_string()))
                .collect(),
        ))
    }

    #[test]
    fn equal_tables_pass() {
        let s = store(&[("a", "1.1.1.1:1"), ("b", "2.2.2.2:2")]);
        let names = vec!["a".to_owned(), "b".to_owned()];
        let t = table(&[("a", "1.1.1.1:1"), ("b", "2.2.2.2:2")]);
        let check = compare(&names, &[t.clone(), t], &s);
        assert!(check.passed(), "{}", check.describe());
        assert_eq!(check.agents_equal, 2);
        assert_eq!(
            check.describe(),
            "2/2 agents hold exactly the store's 2 peers"
        );
    }

    #[test]
    fn a_missed_peer_is_named_with_its_agent() {
        let s = store(&[("a", "1.1.1.1:1"), ("b", "2.2.2.2:2"), ("c", "3.3.3.3:3")]);
        let names = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let full = table(&[("a", "1.1.1.1:1"), ("b", "2.2.2.2:2"), ("c", "3.3.3.3:3")]);
        let lacking = table(&[("a", "1.1.1.1:1"), ("b", "2.2.2.2:2")]);
        let stale = table(&[("a", "1.1.1.1:1"), ("b", "9.9.9.9:9"), ("c", "3.3.3.3:3")]);
        let check = compare(&names, &[full, lacking, stale], &s);
        assert!(!check.passed());
        assert_eq!((check.missing, check.stale, check.extra), (1, 1, 0));
        let text = check.describe();
        assert!(text.contains("1/3 agents"), "{text}");
        assert!(text.contains("b: lacks c;"), "{text}");
        assert!(
            text.contains("c: stale b at \"9.9.9.9:9\" (store \"2.2.2.2:2\")"),
            "{text}"
        );
    }

    #[test]
    fn no_snapshot_and_extra_peers_fail() {
        let s = store(&[("a", "1.1.1.1:1")]);
        let names = vec!["a".to_owned(), "b".to_owned()];
        let extra = table(&[("a", "1.1.1.1:1"), ("ghost", "")]);
        let check = compare(&names, &[extra, None], &s);
        assert_eq!(check.differing.len(), 2);
        let text = check.describe();
        assert!(text.contains("a: extra ghost;"), "{text}");
        assert!(text.contains("b: no snapshot received"), "{text}");
    }

    /// The whole path on a real (embedded) store: records written with the controller's key
    /// layout, the store closed, read back by URL, compared; a missed peer fails and is named.
    #[tokio::test]
    async fn a_store_is_read_and_a_missed_peer_named() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("embedded:{}", dir.path().join("store.redb").display());
        {
            let store = cladnet_store::connect(&url.parse().unwrap()).await.unwrap();
            for (node, ep) in [
                ("bench-00000", "198.18.0.1:8055"),
                ("bench-00001", "100.64.0.1:8056"),
            ] {
                let value = format!(
                    r#"{{"node_id":"{node}","overlay_ip":"10.64.0.1","public_endpoint":"{ep}"}}"#
                );
                store
                    .put(
                        &format!("/cladnet/v1/watched/bench/peers/{node}"),
                        value.into_bytes(),
                        None,
                    )
                    .await
                    .unwrap();
            }
            store
                .put(
                    "/cladnet/v1/internal/bench/ipam/10.64.0.1",
                    b"x".to_vec(),
                    None,
                )
                .await
                .unwrap();
        }
        let found = super::read_store(&url, "bench").await.unwrap();
        assert_eq!(found.peers.len(), 2);
        let names = vec!["bench-00000".to_owned(), "bench-00001".to_owned()];
        let full = table(&[
            ("bench-00000", "198.18.0.1:8055"),
            ("bench-00001", "100.64.0.1:8056"),
        ]);
        let missed_change = table(&[
            ("bench-00000", "198.18.0.1:8055"),
            ("bench-00001", "198.18.0.2:8055"),
        ]);
        assert!(compare(&names, &[full.clone(), full.clone()], &found).passed());
        let check = compare(&names, &[full, missed_change], &found);
        assert!(!check.passed());
        assert!(
            check.describe().contains("bench-00001: stale bench-00001"),
            "{}",
            check.describe()
        );
        let none = super::read_store(&url, "other").await.unwrap_err();
        assert!(none.to_string().contains("no peer record"), "{none}");
    }

    #[test]
    fn peer_records_are_found_whatever_the_prefix() {
        let rec = |node: &str, ep: &str| {
            format!(
                r#"{{"schema":1,"node_id":"{node}","overlay_ip":"10.0.0.1","public_endpoint":{ep}}}"#
            )
        };
        let a = rec("a", "\"1.1.1.1:1\"");
        let b = rec("b", "null");
        let b_twin = rec("b", "\"5.5.5.5:5\"");
        let other_net = rec("c", "\"3.3.3.3:3\"");
        let records = [
            (
                "/cladnet/v1/networks/bench",
                br#"{"cladnet_id":"bench"}"#.as_slice(),
            ),
            ("/cladnet/v1/networks/bench/peers/a", a.as_bytes()),
            ("/cladnet/v2/bench/agents/b", b.as_bytes()),
            ("/cladnet/v1/networks/bench/peers/b", b_twin.as_bytes()),
            ("/cladnet/v1/networks/other/peers/c", other_net.as_bytes()),
            (
                "/cladnet/v1/networks/bench/sessions/a",
                b"0123abcd".as_slice(),
            ),
            ("/cladnet/v1/networks/bench/ipam/10.0.0.1", b"a".as_slice()),
        ];
        let found = peers_from_records("bench", records);
        assert_eq!(found.peers.len(), 2);
        assert_eq!(found.peers["a"], "1.1.1.1:1");
        assert_eq!(found.peers["b"], "");
        assert_eq!(found.conflicts.len(), 1, "{:?}", found.conflicts);
    }
}
