//! Overlay IPv4 address management (IPAM) for one network.
//!
//! The controller gives every peer of a network one overlay address from the network's CIDR.
//! This module is the pure part of that: a [`Pool`] (the validated CIDR and its address rules)
//! and an [`Ipam`] built from a snapshot of the current allocations (node id → address) read from
//! the store. The controller builds an [`Ipam`] from what it read, calls [`Ipam::allocate`] or
//! [`Ipam::release`], and writes the change in the same compare-and-swap transaction; on a
//! conflict it reads again and retries. Nothing here does IO or keeps state between calls.
//!
//! # Rules
//!
//! * **Reserved addresses.** The network address, the broadcast address and the *first host
//!   address* (network + 1, kept for a future gateway/DNS service on the overlay) are never
//!   assigned: [`RESERVED_ADDRESSES`] = 3. The first peer therefore gets network + 2, as in
//!   cb-network.
//! * **Pool size.** A pool must leave room for at least two peers after the reservations, so the
//!   prefix length is at most [`MAX_POOL_PREFIX_LEN`] (/29, five peers); /30, /31 and /32 are
//!   rejected with [`IpamError::PoolTooSmall`]. A CIDR with host bits set (`10.0.0.5/24`) is
//!   rejected with [`IpamError::HostBitsSet`] rather than silently truncated.
//! * **Stability.** Asking for a node that already holds an address returns that address
//!   ([`Allocation::Existing`]), so a restarting agent keeps its overlay IP.
//! * **Choice.** A new node gets the *lowest free* assignable address. The choice depends on the
//!   snapshot only, so every controller computes the same answer and no cursor has to be stored
//!   and kept consistent next to the allocations.
//! * **Reuse.** [`Ipam::release`] frees a node's address (peer delete); it is reusable at once
//!   and is the next one handed out if it is the lowest free address.
//! * **Exhaustion.** When all [`Pool::capacity`] addresses are held, allocating for a new node
//!   fails with [`IpamError::Exhausted`]; existing nodes still get their address.
//! * **Requested addresses.** [`Ipam::allocate_at`] gives a node one particular address (an
//!   external WireGuard peer registered with a fixed IP), if it is assignable and free.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Addresses of every pool that are never assigned to a peer: the network address, the first
/// host address (reserved for a gateway/DNS service) and the broadcast address.
pub const RESERVED_ADDRESSES: u32 = 3;

/// Longest accepted pool prefix length: a /29 holds 8 − [`RESERVED_ADDRESSES`] = 5 peers.
pub const MAX_POOL_PREFIX_LEN: u8 = 29;

/// Identity of a peer for address allocation (the agent's persistent node id).
///
/// The format of node ids is decided by the agent's identity; IPAM only compares them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Wraps a node id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The node id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an address is with respect to a [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKind {
    /// Outside the pool's CIDR.
    Outside,
    /// The network address (all host bits zero).
    Network,
    /// The first host address, reserved for a gateway/DNS service.
    Gateway,
    /// The broadcast address (all host bits one).
    Broadcast,
    /// An address that can be assigned to a peer.
    Assignable,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Outside => "outside the network",
            Self::Network => "the network address",
            Self::Gateway => "the reserved gateway address",
            Self::Broadcast => "the broadcast address",
            Self::Assignable => "assignable",
        })
    }
}

/// Errors of overlay address management. Each names the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// The network CIDR string does not parse.
    #[error("network CIDR {input:?} is not an IPv4 CIDR like 10.0.0.0/24: {reason}")]
    InvalidCidr {
        /// The string given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The network CIDR has host bits set, so its network is ambiguous.
    #[error("network CIDR {cidr} has host bits set (did you mean {network}?)")]
    HostBitsSet {
        /// The CIDR given.
        cidr: Ipv4Net,
        /// The CIDR with the host bits cleared.
        network: Ipv4Net,
    },
    /// The network CIDR leaves room for fewer than two peers.
    #[error(
        "network CIDR {cidr} is too small: the prefix length must be at most /{max_prefix_len} \
         (network, gateway and broadcast addresses are reserved)"
    )]
    PoolTooSmall {
        /// The CIDR given.
        cidr: Ipv4Net,
        /// The longest accepted prefix length, [`MAX_POOL_PREFIX_LEN`].
        max_prefix_len: u8,
    },
    /// Every assignable address of the network is held.
    #[error("network {cidr} is exhausted: all {capacity} assignable addresses are allocated")]
    Exhausted {
        /// The network's CIDR.
        cidr: Ipv4Net,
        /// How many addresses the network can assign.
        capacity: u32,
    },
    /// A snapshot entry holds an address that cannot be assigned in this network.
    #[error(
        "allocation snapshot: node {:?} holds {addr}, which is {kind} of {cidr}",
        .node.as_str()
    )]
    NotAssignable {
        /// The node holding the address.
        node: NodeId,
        /// The address it holds.
        addr: Ipv4Addr,
        /// The network's CIDR.
        cidr: Ipv4Net,
        /// Why the address is not assignable.
        kind: AddressKind,
    },
    /// Two nodes of a snapshot hold the same address.
    #[error(
        "allocation snapshot: address {addr} is held by both {:?} and {:?}",
        .first.as_str(),
        .second.as_str()
    )]
    DuplicateAddress {
        /// The address held twice.
        addr: Ipv4Addr,
        /// The first holder seen.
        first: NodeId,
        /// The second holder seen.
        second: NodeId,
    },
    /// One node of a snapshot holds two different addresses.
    #[error(
        "allocation snapshot: node {:?} holds both {first} and {second}",
        .node.as_str()
    )]
    DuplicateNode {
        /// The node.
        node: NodeId,
        /// The first address seen.
        first: Ipv4Addr,
        /// The second address seen.
        second: Ipv4Addr,
    },
    /// A requested address cannot be assigned in this network.
    #[error("{addr} cannot be assigned in {cidr}: it is {kind}")]
    Unassignable {
        /// The address requested.
        addr: Ipv4Addr,
        /// The network's CIDR.
        cidr: Ipv4Net,
        /// Why the address is not assignable.
        kind: AddressKind,
    },
    /// A requested address is held by another node.
    #[error("{addr} is already held by {:?}", .holder.as_str())]
    AddressTaken {
        /// The address requested.
        addr: Ipv4Addr,
        /// The node holding it.
        holder: NodeId,
    },
    /// A node asked for an address while it holds another one.
    #[error("node {:?} already holds {held}, not {requested}", .node.as_str())]
    NodeHoldsAnother {
        /// The node.
        node: NodeId,
        /// The address it holds.
        held: Ipv4Addr,
        /// The address it asked for.
        requested: Ipv4Addr,
    },
}

/// A network's CIDR, validated, with its address rules (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool {
    cidr: Ipv4Net,
}

impl Pool {
    /// Validates a network CIDR as an address pool.
    ///
    /// # Errors
    ///
    /// [`IpamError::HostBitsSet`] if `cidr` is not a network address,
    /// [`IpamError::PoolTooSmall`] if its prefix is longer than [`MAX_POOL_PREFIX_LEN`].
    pub fn new(cidr: Ipv4Net) -> Result<Self, IpamError> {
        if cidr.prefix_len() > MAX_POOL_PREFIX_LEN {
            return Err(IpamError::PoolTooSmall {
                cidr,
                max_prefix_len: MAX_POOL_PREFIX_LEN,
            });
        }
        if cidr.trunc() != cidr {
            return Err(IpamError::HostBitsSet {
                cidr,
                network: cidr.trunc(),
            });
        }
        Ok(Self { cidr })
    }

    /// The network's CIDR.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The reserved first host address (network + 1), kept for a gateway/DNS service.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 1)
    }

    /// The lowest assignable address (network + 2).
    pub fn first_assignable(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first())
    }

    /// The highest assignable address (broadcast − 1).
    pub fn last_assignable(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.last())
    }

    /// How many addresses can be assigned to peers: the CIDR's size minus
    /// [`RESERVED_ADDRESSES`].
    pub fn capacity(&self) -> u32 {
        self.last() - self.first() + 1
    }

    /// Classifies `addr` with respect to this pool.
    pub fn classify(&self, addr: Ipv4Addr) -> AddressKind {
        if !self.cidr.contains(&addr) {
            AddressKind::Outside
        } else if addr == self.cidr.network() {
            AddressKind::Network
        } else if addr == self.cidr.broadcast() {
            AddressKind::Broadcast
        } else if addr == self.gateway() {
            AddressKind::Gateway
        } else {
            AddressKind::Assignable
        }
    }

    /// Whether `addr` may be assigned to a peer.
    pub fn is_assignable(&self, addr: Ipv4Addr) -> bool {
        self.classify(addr) == AddressKind::Assignable
    }

    fn base(&self) -> u32 {
        u32::from(self.cidr.network())
    }

    fn first(&self) -> u32 {
        self.base() + 2
    }

    fn last(&self) -> u32 {
        u32::from(self.cidr.broadcast()) - 1
    }
}

impl FromStr for Pool {
    type Err = IpamError;

    /// Parses and validates a network CIDR such as `10.77.0.0/24`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cidr = s
            .trim()
            .parse::<Ipv4Net>()
            .map_err(|e| IpamError::InvalidCidr {
                input: s.to_owned(),
                reason: e.to_string(),
            })?;
        Self::new(cidr)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cidr.fmt(f)
    }
}

/// Result of [`Ipam::allocate`]: the node's address, and whether it is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum Allocation {
    /// The node already held this address; nothing has to be written.
    Existing(Ipv4Addr),
    /// The address was just allocated to the node; the controller must persist it.
    New(Ipv4Addr),
}

impl Allocation {
    /// The node's address.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Self::Existing(addr) | Self::New(addr) => addr,
        }
    }

    /// Whether the address was newly allocated.
    pub fn is_new(self) -> bool {
        matches!(self, Self::New(_))
    }
}

/// The allocations of one network: a snapshot of node id → overlay address, plus the rules of
/// its [`Pool`].
///
/// Invariants (checked by [`Ipam::from_snapshot`], kept by every method): each node holds at most
/// one address, each address is held by at most one node, every held address is assignable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipam {
    pool: Pool,
    by_node: BTreeMap<NodeId, Ipv4Addr>,
    by_addr: BTreeMap<u32, NodeId>,
}

impl Ipam {
    /// An empty allocation table for `pool`.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            by_node: BTreeMap::new(),
            by_addr: BTreeMap::new(),
        }
    }

    /// Builds the table from a snapshot of the current allocations (for example the IPAM keys
    /// read from the store). A pair repeated exactly is accepted once.
    ///
    /// # Errors
    ///
    /// [`IpamError::NotAssignable`] if an entry's address is outside the pool or reserved,
    /// [`IpamError::DuplicateAddress`] / [`IpamError::DuplicateNode`] if the snapshot is not a
    /// one-to-one mapping.
    pub fn from_snapshot<I, N>(pool: Pool, allocations: I) -> Result<Self, IpamError>
    where
        I: IntoIterator<Item = (N, Ipv4Addr)>,
        N: Into<NodeId>,
    {
        let mut ipam = Self::new(pool);
        for (node, addr) in allocations {
            let node = node.into();
            let kind = pool.classify(addr);
            if kind != AddressKind::Assignable {
                return Err(IpamError::NotAssignable {
                    node,
                    addr,
                    cidr: pool.cidr(),
                    kind,
                });
            }
            if let Some(&held) = ipam.by_node.get(&node) {
                if held == addr {
                    continue;
                }
                return Err(IpamError::DuplicateNode {
                    node,
                    first: held,
                    second: addr,
                });
            }
            if let Some(holder) = ipam.by_addr.get(&u32::from(addr)) {
                return Err(IpamError::DuplicateAddress {
                    addr,
                    first: holder.clone(),
                    second: node,
                });
            }
            ipam.insert(node, addr);
        }
        Ok(ipam)
    }

    /// The pool the addresses come from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Returns `node`'s address, allocating the lowest free one if it holds none.
    ///
    /// # Errors
    ///
    /// [`IpamError::Exhausted`] if `node` holds no address and none is free.
    pub fn allocate(&mut self, node: &NodeId) -> Result<Allocation, IpamError> {
        if let Some(&addr) = self.by_node.get(node) {
            return Ok(Allocation::Existing(addr));
        }
        let addr = self.lowest_free().ok_or(IpamError::Exhausted {
            cidr: self.pool.cidr(),
            capacity: self.pool.capacity(),
        })?;
        self.insert(node.clone(), addr);
        Ok(Allocation::New(addr))
    }

    /// Gives `node` the address `addr`: [`Allocation::Existing`] if it holds it already,
    /// [`Allocation::New`] if it was free.
    ///
    /// # Errors
    ///
    /// [`IpamError::Unassignable`] if `addr` is outside the pool or reserved,
    /// [`IpamError::AddressTaken`] if another node holds it, [`IpamError::NodeHoldsAnother`]
    /// if `node` holds a different address.
    pub fn allocate_at(&mut self, node: &NodeId, addr: Ipv4Addr) -> Result<Allocation, IpamError> {
        let kind = self.pool.classify(addr);
        if kind != AddressKind::Assignable {
            return Err(IpamError::Unassignable {
                addr,
                cidr: self.pool.cidr(),
                kind,
            });
        }
        match (self.by_node.get(node), self.holder(addr)) {
            (Some(&held), _) if held == addr => Ok(Allocation::Existing(addr)),
            (Some(&held), _) => Err(IpamError::NodeHoldsAnother {
                node: node.clone(),
                held,
                requested: addr,
            }),
            (None, Some(holder)) => Err(IpamError::AddressTaken {
                addr,
                holder: holder.clone(),
            }),
            (None, None) => {
                self.insert(node.clone(), addr);
                Ok(Allocation::New(addr))
            }
        }
    }

    /// Frees `node`'s address (peer delete) and returns it, or `None` if it held none.
    pub fn release(&mut self, node: &NodeId) -> Option<Ipv4Addr> {
        let addr = self.by_node.remove(node)?;
        self.by_addr.remove(&u32::from(addr));
        Some(addr)
    }

    /// The address `node` holds, if any.
    pub fn get(&self, node: &NodeId) -> Option<Ipv4Addr> {
        self.by_node.get(node).copied()
    }

    /// The node holding `addr`, if any.
    pub fn holder(&self, addr: Ipv4Addr) -> Option<&NodeId> {
        self.by_addr.get(&u32::from(addr))
    }

    /// The lowest address that the next new node would get, if any is free.
    pub fn next_free(&self) -> Option<Ipv4Addr> {
        self.lowest_free()
    }

    /// How many addresses are held.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether no address is held.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// How many addresses are still free.
    pub fn available(&self) -> u32 {
        // `len() <= capacity()` by the invariants, and capacity fits in u32.
        self.pool.capacity() - u32::try_from(self.len()).unwrap_or(u32::MAX)
    }

    /// The allocations, ordered by address.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, Ipv4Addr)> + '_ {
        self.by_addr
            .iter()
            .map(|(&addr, node)| (node, Ipv4Addr::from(addr)))
    }

    fn insert(&mut self, node: NodeId, addr: Ipv4Addr) {
        self.by_addr.insert(u32::from(addr), node.clone());
        self.by_node.insert(node, addr);
    }

    /// The lowest assignable address not held: walk the held addresses in order until the
    /// first gap. `by_addr` holds only assignable addresses, all `<= last() < u32::MAX`.
    fn lowest_free(&self) -> Option<Ipv4Addr> {
        let mut candidate = self.pool.first();
        for &held in self.by_addr.keys() {
            if held != candidate {
                break;
            }
            candidate += 1;
        }
        (candidate <= self.pool.last()).then_some(Ipv4Addr::from(candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn node(s: &str) -> NodeId {
        NodeId::from(s)
    }

    #[test]
    fn reserved_addresses_and_capacity() {
        let p = pool("10.77.0.0/24");
        assert_eq!(p.gateway(), ip("10.77.0.1"));
        assert_eq!(p.first_assignable(), ip("10.77.0.2"));
        assert_eq!(p.last_assignable(), ip("10.77.0.254"));
        assert_eq!(p.capacity(), 253);
        assert_eq!(p.classify(ip("10.77.0.0")), AddressKind::Network);
        assert_eq!(p.classify(ip("10.77.0.1")), AddressKind::Gateway);
        assert_eq!(p.classify(ip("10.77.0.255")), AddressKind::Broadcast);
        assert_eq!(p.classify(ip("10.77.1.0")), AddressKind::Outside);
        assert_eq!(p.classify(ip("10.77.0.254")), AddressKind::Assignable);
    }

    #[test]
    fn smallest_pool_is_a_slash_29() {
        assert_eq!(pool("10.0.0.0/29").capacity(), 5);
        for s in ["10.0.0.0/30", "10.0.0.0/31", "10.0.0.1/32"] {
            let err = s.parse::<Pool>().unwrap_err();
            assert!(
                matches!(
                    err,
                    IpamError::PoolTooSmall {
                        max_prefix_len: 29,
                        ..
                    }
                ),
                "{s}"
            );
            assert!(err.to_string().contains(s), "{err}");
        }
    }

    #[test]
    fn whole_ipv4_space_is_a_valid_pool() {
        let p = pool("0.0.0.0/0");
        assert_eq!(p.capacity(), u32::MAX - 2);
        assert_eq!(p.last_assignable(), ip("255.255.255.254"));
        let mut ipam = Ipam::new(p);
        assert_eq!(ipam.allocate(&node("a")).unwrap().addr(), ip("0.0.0.2"));
    }

    #[test]
    fn rejects_host_bits_and_garbage() {
        let err = "10.0.0.5/24".parse::<Pool>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "network CIDR 10.0.0.5/24 has host bits set (did you mean 10.0.0.0/24?)"
        );
        let err = "10.0.0.0".parse::<Pool>().unwrap_err();
        assert!(matches!(err, IpamError::InvalidCidr { ref input, .. } if input == "10.0.0.0"));
        assert!(err.to_string().contains("\"10.0.0.0\""), "{err}");
        assert!("fd00::/64".parse::<Pool>().is_err());
    }

    #[test]
    fn first_peer_gets_network_plus_two_then_consecutive() {
        let mut ipam = Ipam::new(pool("10.77.0.0/24"));
        assert_eq!(
            ipam.allocate(&node("a")).unwrap(),
            Allocation::New(ip("10.77.0.2"))
        );
        assert_eq!(
            ipam.allocate(&node("b")).unwrap(),
            Allocation::New(ip("10.77.0.3"))
        );
        assert_eq!(
            ipam.allocate(&node("c")).unwrap(),
            Allocation::New(ip("10.77.0.4"))
        );
    }

    #[test]
    fn stable_per_node_across_restarts() {
        let p = pool("10.77.0.0/24");
        let mut ipam = Ipam::new(p);
        let a = ipam.allocate(&node("a")).unwrap().addr();
        let _ = ipam.allocate(&node("b")).unwrap();
        assert_eq!(ipam.allocate(&node("a")).unwrap(), Allocation::Existing(a));
        // A controller restart: the table is rebuilt from the store's snapshot.
        let snapshot: Vec<(NodeId, Ipv4Addr)> = ipam.iter().map(|(n, a)| (n.clone(), a)).collect();
        let mut again = Ipam::from_snapshot(p, snapshot).unwrap();
        assert_eq!(again, ipam);
        assert_eq!(again.allocate(&node("a")).unwrap(), Allocation::Existing(a));
    }

    #[test]
    fn released_address_is_reused_lowest_first() {
        let mut ipam = Ipam::new(pool("10.77.0.0/24"));
        for n in ["a", "b", "c"] {
            let _ = ipam.allocate(&node(n)).unwrap();
        }
        assert_eq!(ipam.release(&node("b")), Some(ip("10.77.0.3")));
        assert_eq!(ipam.release(&node("b")), None);
        assert_eq!(ipam.holder(ip("10.77.0.3")), None);
        assert_eq!(ipam.next_free(), Some(ip("10.77.0.3")));
        assert_eq!(
            ipam.allocate(&node("d")).unwrap(),
            Allocation::New(ip("10.77.0.3"))
        );
        assert_eq!(
            ipam.allocate(&node("e")).unwrap(),
            Allocation::New(ip("10.77.0.5"))
        );
    }

    #[test]
    fn exhausted_exactly_at_capacity() {
        let p = pool("192.168.7.0/29");
        let mut ipam = Ipam::new(p);
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&node(&format!("n{i}"))).unwrap().addr())
            .collect();
        assert_eq!(
            got,
            [
                "192.168.7.2",
                "192.168.7.3",
                "192.168.7.4",
                "192.168.7.5",
                "192.168.7.6"
            ]
            .map(ip)
        );
        assert_eq!(ipam.available(), 0);
        let err = ipam.allocate(&node("late")).unwrap_err();
        assert_eq!(
            err,
            IpamError::Exhausted {
                cidr: p.cidr(),
                capacity: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "network 192.168.7.0/29 is exhausted: all 5 assignable addresses are allocated"
        );
        // Existing nodes still get their address, and a release makes room.
        assert!(!ipam.allocate(&node("n3")).unwrap().is_new());
        let freed = ipam.release(&node("n3")).unwrap();
        assert_eq!(
            ipam.allocate(&node("late")).unwrap(),
            Allocation::New(freed)
        );
    }

    #[test]
    fn snapshot_validation_names_the_entry() {
        let p = pool("10.77.0.0/24");
        let err = Ipam::from_snapshot(p, [("gw", ip("10.77.0.1"))]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "allocation snapshot: node \"gw\" holds 10.77.0.1, which is the reserved gateway \
             address of 10.77.0.0/24"
        );
        let err = Ipam::from_snapshot(p, [("x", ip("10.78.0.9"))]).unwrap_err();
        assert!(matches!(
            err,
            IpamError::NotAssignable {
                kind: AddressKind::Outside,
                ..
            }
        ));
        let err =
            Ipam::from_snapshot(p, [("a", ip("10.77.0.2")), ("b", ip("10.77.0.2"))]).unwrap_err();
        assert_eq!(
            err,
            IpamError::DuplicateAddress {
                addr: ip("10.77.0.2"),
                first: node("a"),
                second: node("b")
            }
        );
        let err =
            Ipam::from_snapshot(p, [("a", ip("10.77.0.2")), ("a", ip("10.77.0.3"))]).unwrap_err();
        assert!(matches!(err, IpamError::DuplicateNode { .. }), "{err}");
        // The same pair twice is harmless.
        let ipam =
            Ipam::from_snapshot(p, [("a", ip("10.77.0.2")), ("a", ip("10.77.0.2"))]).unwrap();
        assert_eq!(ipam.len(), 1);
    }

    #[test]
    fn lowest_free_skips_a_sparse_snapshot() {
        let p = pool("10.77.0.0/24");
        let mut ipam = Ipam::from_snapshot(
            p,
            [
                ("x", ip("10.77.0.2")),
                ("y", ip("10.77.0.3")),
                ("z", ip("10.77.0.200")),
            ],
        )
        .unwrap();
        assert_eq!(ipam.allocate(&node("n")).unwrap().addr(), ip("10.77.0.4"));
    }

    #[test]
    fn requested_address_must_be_assignable_and_free() {
        let p = pool("10.77.0.0/24");
        let mut ipam = Ipam::from_snapshot(p, [("a", ip("10.77.0.2"))]).unwrap();
        assert_eq!(
            ipam.allocate_at(&node("b"), ip("10.77.0.9")).unwrap(),
            Allocation::New(ip("10.77.0.9"))
        );
        assert_eq!(ipam.holder(ip("10.77.0.9")), Some(&node("b")));
        assert_eq!(
            ipam.allocate_at(&node("b"), ip("10.77.0.9")).unwrap(),
            Allocation::Existing(ip("10.77.0.9"))
        );
        let err = ipam.allocate_at(&node("c"), ip("10.77.0.2")).unwrap_err();
        assert_eq!(err.to_string(), "10.77.0.2 is already held by \"a\"");
        let err = ipam.allocate_at(&node("b"), ip("10.77.0.10")).unwrap_err();
        assert!(matches!(err, IpamError::NodeHoldsAnother { .. }), "{err}");
        for (addr, kind) in [
            ("10.77.0.0", AddressKind::Network),
            ("10.77.0.1", AddressKind::Gateway),
            ("10.77.0.255", AddressKind::Broadcast),
            ("10.78.0.5", AddressKind::Outside),
        ] {
            let err = ipam.allocate_at(&node("c"), ip(addr)).unwrap_err();
            assert_eq!(
                err,
                IpamError::Unassignable {
                    addr: ip(addr),
                    cidr: p.cidr(),
                    kind
                }
            );
        }
        assert_eq!(
            ipam.allocate_at(&node("c"), ip("10.77.0.1"))
                .unwrap_err()
                .to_string(),
            "10.77.0.1 cannot be assigned in 10.77.0.0/24: it is the reserved gateway address"
        );
        // The lowest-free rule skips requested addresses like any other held one.
        assert_eq!(ipam.allocate(&node("d")).unwrap().addr(), ip("10.77.0.3"));
    }

    #[test]
    fn node_id_serializes_as_a_plain_string() {
        assert_eq!(
            serde_json::to_string(&node("host-1")).unwrap(),
            "\"host-1\""
        );
        assert_eq!(node("host-1").to_string(), "host-1");
    }
}
