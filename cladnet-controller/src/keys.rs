//! The store key layout (documented in docs/store.md, "Key layout"), version [`LAYOUT`].
//!
//! ```text
//! /cladnet/v1/layout                                 layout version ("2"), see crate::layout
//! /cladnet/v1/watched/{net}/network                  Network record
//! /cladnet/v1/watched/{net}/peers/{node}             Peer record (with its session hash)
//! /cladnet/v1/watched/{net}/commands/{node}          last remote command for the node
//! /cladnet/v1/watched/{net}/tests/{id}               connectivity test request
//! /cladnet/v1/internal/{net}/ipam/{ip}               node id holding the overlay address
//! /cladnet/v1/internal/{net}/ipam-generation         bumped by every allocation
//! /cladnet/v1/internal/{net}/routes-generation       bumped by every change of routes
//! /cladnet/v1/internal/{net}/pubkeys/{key hex}       node id holding the public key
//! /cladnet/v1/internal/{net}/tokens/{token_id}       Join token record (secret hashed)
//! /cladnet/v1/internal/{net}/results/{id}/{node}     one node's results of a test
//! /cladnet/v1/stats/{net}/{node}                     a node's last traffic report (leased)
//! /cladnet/v1/controller/join-key                    the controllers' X25519 join key
//! ```
//!
//! What agents consume (the records their Watch streams carry) sits under
//! `/cladnet/v1/watched/{net}/`, and nothing else does: the network's watch hub follows that
//! one prefix (with its trailing separator, so network `n1` never sees `n10`), and the
//! allocation, key-index, token and generation writes of a Join never reach it. A Join is one
//! event for watchers. The rest of a network's state is under `/cladnet/v1/internal/{net}/`;
//! deleting a network deletes both prefixes (and the statistics) in one transaction. Traffic
//! statistics change every few seconds and no agent needs them: they live under a prefix of
//! their own and vanish by lease when their agent stops reporting.

/// The key layout version this controller writes ([`layout`] holds it in the store).
pub const LAYOUT: u32 = 2;

const WATCHED: &str = "/cladnet/v1/watched/";
const INTERNAL: &str = "/cladnet/v1/internal/";
const STATS_ROOT: &str = "/cladnet/v1/stats/";

/// The layout marker: the version of the key layout the store is in.
pub fn layout() -> &'static str {
    "/cladnet/v1/layout"
}

/// Prefix of every network's agent-visible records (network records, peers, commands,
/// tests).
pub fn watched_root() -> &'static str {
    WATCHED
}

/// Whether `key` (under [`watched_root`]) is a network record; returns its network id.
pub fn network_of_record(key: &str) -> Option<&str> {
    let net = key.strip_prefix(WATCHED)?.strip_suffix("/network")?;
    (!net.is_empty() && !net.contains('/')).then_some(net)
}

/// Prefix of everything of network `net` that agents consume: the one prefix its watch hub
/// follows (with the trailing separator).
pub fn watched(net: &str) -> String {
    format!("{WATCHED}{net}/")
}

/// Prefix of network `net`'s state that no agent consumes (addresses, tokens, key index,
/// generations, test results).
pub fn internal(net: &str) -> String {
    format!("{INTERNAL}{net}/")
}

/// The network record.
pub fn network(net: &str) -> String {
    format!("{WATCHED}{net}/network")
}

/// Prefix of a network's peers.
pub fn peers(net: &str) -> String {
    format!("{WATCHED}{net}/peers/")
}

/// One peer.
pub fn peer(net: &str, node: &str) -> String {
    format!("{WATCHED}{net}/peers/{node}")
}

/// Prefix of a network's address allocations.
pub fn ipam(net: &str) -> String {
    format!("{INTERNAL}{net}/ipam/")
}

/// One address allocation.
pub fn ipam_addr(net: &str, ip: std::net::Ipv4Addr) -> String {
    format!("{INTERNAL}{net}/ipam/{ip}")
}

/// Bumped by every address allocation, so a change of the address space can exclude
/// concurrent allocations with one compare.
pub fn alloc_generation(net: &str) -> String {
    format!("{INTERNAL}{net}/ipam-generation")
}

/// Bumped by every change of a network's advertised prefixes (they live in the peer
/// records), so a change that must not overlap other peers' prefixes excludes concurrent ones
/// with one compare.
pub fn routes_generation(net: &str) -> String {
    format!("{INTERNAL}{net}/routes-generation")
}

/// The public key index: which node holds public key `key` (base64) in network `net`. The
/// key is hex encoded (base64 has '/').
pub fn pubkey(net: &str, key: &str) -> String {
    use base64::Engine as _;
    let hex: String = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap_or_else(|_| key.as_bytes().to_vec())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{INTERNAL}{net}/pubkeys/{hex}")
}

/// The controllers' join key (X25519 key pair and nonce secret), shared through the store.
pub fn join_key() -> &'static str {
    "/cladnet/v1/controller/join-key"
}

/// Prefix of a network's join tokens.
pub fn tokens(net: &str) -> String {
    format!("{INTERNAL}{net}/tokens/")
}

/// One join token.
pub fn token(net: &str, id: &str) -> String {
    format!("{INTERNAL}{net}/tokens/{id}")
}

/// A node's pending command.
pub fn command(net: &str, node: &str) -> String {
    format!("{WATCHED}{net}/commands/{node}")
}

/// A node's coordinated-probe request (written with the statistics lease: gone 20-30 s later).
pub fn probe(net: &str, node: &str) -> String {
    format!("{WATCHED}{net}/probes/{node}")
}

/// Prefix of a network's connectivity tests.
pub fn tests(net: &str) -> String {
    format!("{WATCHED}{net}/tests/")
}

/// A connectivity test.
pub fn test(net: &str, id: &str) -> String {
    format!("{WATCHED}{net}/tests/{id}")
}

/// Prefix of a test's results.
pub fn results(net: &str, id: &str) -> String {
    format!("{INTERNAL}{net}/results/{id}/")
}

/// One node's results of a test.
pub fn result(net: &str, id: &str, node: &str) -> String {
    format!("{INTERNAL}{net}/results/{id}/{node}")
}

/// Prefix of a network's traffic statistics (outside the network's watched prefix).
pub fn stats(net: &str) -> String {
    format!("{STATS_ROOT}{net}/")
}

/// One node's last traffic statistics.
pub fn node_stats(net: &str, node: &str) -> String {
    format!("{STATS_ROOT}{net}/{node}")
}

/// What a key under a network's watched prefix is.
#[derive(Debug, Eq, PartialEq)]
pub enum KeyKind<'a> {
    /// The network record.
    Network,
    /// A peer record.
    Peer(&'a str),
    /// A node's command.
    Command(&'a str),
    /// A test request.
    Test(&'a str),
    /// A node's coordinated-probe request.
    Probe(&'a str),
    /// Anything else.
    Other,
}

/// Classifies `key` relative to network `net`'s watched prefix; `None` if it is not under
/// it (another network's, or not agent-visible).
pub fn classify<'a>(net: &str, key: &'a str) -> Option<KeyKind<'a>> {
    let rest = key
        .strip_prefix(WATCHED)?
        .strip_prefix(net)?
        .strip_prefix('/')?;
    if rest == "network" {
        return Some(KeyKind::Network);
    }
    let (family, name) = rest.split_once('/').unwrap_or((rest, ""));
    Some(match family {
        "peers" => KeyKind::Peer(name),
        "commands" => KeyKind::Command(name),
        "tests" => KeyKind::Test(name),
        "probes" => KeyKind::Probe(name),
        _ => KeyKind::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_keeps_networks_apart() {
        assert_eq!(classify("n1", &network("n1")), Some(KeyKind::Network));
        assert_eq!(classify("n1", &peer("n1", "a")), Some(KeyKind::Peer("a")));
        assert_eq!(
            classify("n1", &command("n1", "a")),
            Some(KeyKind::Command("a"))
        );
        assert_eq!(classify("n1", &test("n1", "t")), Some(KeyKind::Test("t")));
        assert_eq!(classify("n1", &probe("n1", "a")), Some(KeyKind::Probe("a")));
        assert_eq!(classify("n1", &network("n10")), None);
        assert_eq!(classify("n1", &peer("n10", "a")), None);
        assert_eq!(network_of_record(&network("n1")), Some("n1"));
        assert_eq!(network_of_record(&peer("n1", "network")), None);
    }

    #[test]
    fn only_agent_records_are_under_the_watched_prefix() {
        let watched = watched("n1");
        for key in [
            network("n1"),
            peer("n1", "a"),
            command("n1", "a"),
            probe("n1", "a"),
            test("n1", "t"),
        ] {
            assert!(key.starts_with(&watched), "{key}");
        }
        let ip = std::net::Ipv4Addr::new(10, 0, 0, 1);
        for key in [
            ipam_addr("n1", ip),
            alloc_generation("n1"),
            routes_generation("n1"),
            pubkey("n1", "AAAA"),
            token("n1", "t"),
            result("n1", "t", "a"),
            node_stats("n1", "a"),
            network("n10"),
            peer("n10", "a"),
            layout().to_owned(),
            join_key().to_owned(),
        ] {
            assert!(!key.starts_with(&watched), "{key}");
            assert_eq!(classify("n1", &key), None, "{key}");
        }
    }
}
