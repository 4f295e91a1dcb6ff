//! The store key layout (documented in docs/store.md, "Key layout").
//!
//! ```text
//! /cladnet/v1/networks/{net}                         Network record
//! /cladnet/v1/networks/{net}/peers/{node}            Peer record
//! /cladnet/v1/networks/{net}/ipam/{ip}               node id holding the overlay address
//! /cladnet/v1/networks/{net}/ipam-generation         bumped by every allocation
//! /cladnet/v1/networks/{net}/routes-generation       bumped by every change of routes
//! /cladnet/v1/networks/{net}/sessions/{node}         SHA-256 of the node's session token
//! /cladnet/v1/networks/{net}/pubkeys/{key hex}       node id holding the public key
//! /cladnet/v1/networks/{net}/tokens/{token_id}       Join token record (secret hashed)
//! /cladnet/v1/networks/{net}/commands/{node}         last remote command for the node
//! /cladnet/v1/networks/{net}/tests/{id}              connectivity test request
//! /cladnet/v1/networks/{net}/results/{id}/{node}     one node's results of a test
//! /cladnet/v1/stats/{net}/{node}                     a node's last traffic report (leased)
//! /cladnet/v1/controller/join-key                    the controllers' X25519 join key
//! ```
//!
//! Everything of one network that agents follow sits under `/cladnet/v1/networks/{net}/`, so
//! deleting a network is one prefix delete and one watch follows it. Traffic statistics change
//! every few seconds and no agent needs them: they live under a prefix of their own, outside
//! every Watch stream, and vanish by lease when their agent stops reporting.

const ROOT: &str = "/cladnet/v1/networks/";
const STATS_ROOT: &str = "/cladnet/v1/stats/";

/// Prefix of every network record (and everything below them).
pub fn networks() -> &'static str {
    ROOT
}

/// The network record.
pub fn network(net: &str) -> String {
    format!("{ROOT}{net}")
}

/// Prefix of everything that belongs to a network (not the record itself).
pub fn network_dir(net: &str) -> String {
    format!("{ROOT}{net}/")
}

/// Prefix of a network's peers.
pub fn peers(net: &str) -> String {
    format!("{ROOT}{net}/peers/")
}

/// One peer.
pub fn peer(net: &str, node: &str) -> String {
    format!("{ROOT}{net}/peers/{node}")
}

/// Prefix of a network's address allocations.
pub fn ipam(net: &str) -> String {
    format!("{ROOT}{net}/ipam/")
}

/// One address allocation.
pub fn ipam_addr(net: &str, ip: std::net::Ipv4Addr) -> String {
    format!("{ROOT}{net}/ipam/{ip}")
}

/// Bumped by every address allocation, so a change of the address space can exclude
/// concurrent allocations with one compare.
pub fn alloc_generation(net: &str) -> String {
    format!("{ROOT}{net}/ipam-generation")
}

/// Bumped by every change of a network's advertised prefixes (they live in the peer
/// records), so a change that must not overlap other peers' prefixes excludes concurrent ones
/// with one compare.
pub fn routes_generation(net: &str) -> String {
    format!("{ROOT}{net}/routes-generation")
}

/// A node's session token hash.
pub fn session(net: &str, node: &str) -> String {
    format!("{ROOT}{net}/sessions/{node}")
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
    format!("{ROOT}{net}/pubkeys/{hex}")
}

/// The controllers' join key (X25519 key pair and nonce secret), shared through the store.
pub fn join_key() -> &'static str {
    "/cladnet/v1/controller/join-key"
}

/// Prefix of a network's join tokens.
pub fn tokens(net: &str) -> String {
    format!("{ROOT}{net}/tokens/")
}

/// One join token.
pub fn token(net: &str, id: &str) -> String {
    format!("{ROOT}{net}/tokens/{id}")
}

/// A node's pending command.
pub fn command(net: &str, node: &str) -> String {
    format!("{ROOT}{net}/commands/{node}")
}

/// A node's coordinated-probe request (written with the statistics lease: gone 20-30 s later).
pub fn probe(net: &str, node: &str) -> String {
    format!("{ROOT}{net}/probes/{node}")
}

/// Prefix of a network's connectivity tests.
pub fn tests(net: &str) -> String {
    format!("{ROOT}{net}/tests/")
}

/// A connectivity test.
pub fn test(net: &str, id: &str) -> String {
    format!("{ROOT}{net}/tests/{id}")
}

/// Prefix of a test's results.
pub fn results(net: &str, id: &str) -> String {
    format!("{ROOT}{net}/results/{id}/")
}

/// One node's results of a test.
pub fn result(net: &str, id: &str, node: &str) -> String {
    format!("{ROOT}{net}/results/{id}/{node}")
}

/// Prefix of a network's traffic statistics (outside the network's watched prefix).
pub fn stats(net: &str) -> String {
    format!("{STATS_ROOT}{net}/")
}

/// One node's last traffic statistics.
pub fn node_stats(net: &str, node: &str) -> String {
    format!("{STATS_ROOT}{net}/{node}")
}

/// What a key under a network's prefix is.
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
    /// A node's session token hash.
    Session(&'a str),
    /// Anything else (addresses, tokens, results, key index).
    Other,
}

/// Classifies `key` relative to network `net`; `None` if it belongs to another network.
pub fn classify<'a>(net: &str, key: &'a str) -> Option<KeyKind<'a>> {
    let rest = key.strip_prefix(ROOT)?.strip_prefix(net)?;
    if rest.is_empty() {
        return Some(KeyKind::Network);
    }
    let rest = rest.strip_prefix('/')?;
    let (family, name) = rest.split_once('/').unwrap_or((rest, ""));
    Some(match family {
        "peers" => KeyKind::Peer(name),
        "commands" => KeyKind::Command(name),
        "tests" => KeyKind::Test(name),
        "probes" => KeyKind::Probe(name),
        "sessions" => KeyKind::Session(name),
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
        assert_eq!(classify("n1", &token("n1", "t")), Some(KeyKind::Other));
        assert_eq!(classify("n1", &network("n10")), None);
        assert_eq!(classify("n1", &peer("n10", "a")), None);
    }

    #[test]
    fn stats_are_outside_every_watched_prefix() {
        let key = node_stats("n1", "a");
        assert_eq!(classify("n1", &key), None);
        assert!(!key.starts_with(&network("n1")));
        assert!(!key.starts_with(networks()));
        assert!(key.starts_with(&stats("n1")));
        assert!(!node_stats("n10", "a").starts_with(&stats("n1")));
    }
}
