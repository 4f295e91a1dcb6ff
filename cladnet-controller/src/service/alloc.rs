//! Overlay address reservation, shared by Join and AddExternalPeer.
//!
//! Each controller keeps every network's allocations in memory, valid as long as the
//! allocation-generation key has the revision it last saw: every allocation (and every peer
//! delete) rewrites that key, and a new address is committed only with a compare on it. So a
//! Join reads nothing for its address in the common case; when another controller allocated
//! (or freed) meanwhile, the transaction fails, the cache is dropped and the retry reads the
//! allocations again.

use std::{collections::HashMap, net::Ipv4Addr, sync::Mutex};

use cladnet_store::{Compare, CompareOp, Revision, Txn, TxnOp, TxnOpResult};

use super::Controller;
use crate::{
    error::{ControllerError, Result},
    ipam::{Allocation, Ipam, IpamError, NodeId, Pool},
    keys,
    model::NetworkRecord,
};

/// An overlay address chosen from one read of a network's allocations, with the compares and
/// writes that commit it in the caller's transaction (next to the peer record).
#[derive(Debug)]
pub(super) struct Reservation {
    /// The node's address, new or the one it held.
    pub(super) allocation: Allocation,
    /// Hold only if the allocations did not change since the read.
    pub(super) compares: Vec<Compare>,
    /// Write the allocation (nothing for an address the node already held).
    pub(super) ops: Vec<TxnOp>,
    /// The allocations with this one, to keep once the transaction succeeded.
    pub(super) pending: Pending,
}

/// A network's allocations after a reservation, kept by [`IpamCache::keep`] if it commits.
#[derive(Debug)]
pub(super) struct Pending {
    ipam: Ipam,
    /// The generation revision the reservation compared with (`None`: it wrote a new one).
    generation: Option<Revision>,
}

/// A network's allocations as last known.
#[derive(Debug)]
struct Cached {
    ipam: Ipam,
    /// The allocation-generation key's mod revision they are valid at.
    generation: Revision,
}

/// Every network's allocations as this controller last knew them.
#[derive(Debug, Default)]
pub(super) struct IpamCache(Mutex<HashMap<String, Cached>>);

impl IpamCache {
    fn take(&self, net: &str) -> Option<Cached> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(net)
    }

    /// Keeps a committed reservation's allocations; `revision` is its transaction's.
    pub(super) fn keep(&self, net: &str, pending: Pending, revision: Revision) {
        let cached = Cached {
            ipam: pending.ipam,
            generation: pending.generation.unwrap_or(revision),
        };
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(net.to_owned(), cached);
    }

    /// Drops a network's allocations (they changed here in a way the cache does not follow).
    pub(super) fn forget(&self, net: &str) {
        self.take(net);
    }
}

impl Reservation {
    /// The node's address.
    pub(super) fn addr(&self) -> Ipv4Addr {
        self.allocation.addr()
    }
}

impl Controller {
    /// Reserves node `node`'s overlay address in network `net` (read as `network`): the one it
    /// holds, else `requested` (`(field, address)`, checked to be assignable and free), else
    /// the lowest free one. Writes nothing: commit the returned compares and ops.
    pub(super) async fn reserve_address(
        &self,
        net: &str,
        network: &NetworkRecord,
        node: &str,
        requested: Option<(&str, Ipv4Addr)>,
    ) -> Result<Reservation> {
        let id = NodeId::new(node);
        let allocate = |ipam: &mut Ipam| match requested {
            None => ipam.allocate(&id),
            Some((_, addr)) => ipam.allocate_at(&id, addr),
        };
        let cached = self
            .ipam_cache
            .take(net)
            .filter(|c| c.ipam.pool().cidr() == network.cidr);
        // A cached view may lack frees made by another controller: a new address it gives out
        // is checked by the transaction's generation compare, an address it says the node
        // holds by the compare that the address's entry still names the node (either fails
        // the transaction if the cache was wrong, and the retry reads afresh); a refusal is
        // checked against a fresh read.
        let (ipam, generation, allocation) = match cached.map(|mut c| {
            let a = allocate(&mut c.ipam);
            (c, a)
        }) {
            Some((c, Ok(allocation))) => (c.ipam, c.generation, allocation),
            _ => {
                let (mut ipam, generation) = self.read_allocations(net, network).await?;
                let allocation = allocate(&mut ipam)
                    .map_err(|e| allocation_error(net, requested.map(|(field, _)| field), e))?;
                (ipam, generation, allocation)
            }
        };
        let addr = allocation.addr();
        let key = keys::ipam_addr(net, addr);
        let (compares, ops, generation) = if allocation.is_new() {
            // Every allocation bumps the generation key, so a change of the address space
            // (and any check made on a read before this one) can exclude it with one compare.
            (
                vec![
                    Compare::absent(&key),
                    Compare::mod_revision(
                        keys::alloc_generation(net),
                        CompareOp::Equal,
                        generation,
                    ),
                ],
                vec![
                    TxnOp::put(&key, node.as_bytes().to_vec()),
                    TxnOp::put(keys::alloc_generation(net), addr.to_string().into_bytes()),
                ],
                None,
            )
        } else {
            (
                vec![Compare::value(
                    &key,
                    CompareOp::Equal,
                    node.as_bytes().to_vec(),
                )],
                Vec::new(),
                Some(generation),
            )
        };
        Ok(Reservation {
            allocation,
            compares,
            ops,
            // Held apart until the transaction succeeds: a failed one leaves nothing cached.
            pending: Pending { ipam, generation },
        })
    }

    /// Reads a network's allocations and the generation they are at.
    async fn read_allocations(
        &self,
        net: &str,
        network: &NetworkRecord,
    ) -> Result<(Ipam, Revision)> {
        // One transaction: the generation and the allocations at one revision.
        let res = self
            .store
            .txn(Txn::new().and_then([
                TxnOp::get(keys::alloc_generation(net)),
                TxnOp::range(keys::ipam(net)),
            ]))
            .await?;
        let mut results = res.results.into_iter();
        let (Some(TxnOpResult::Get(generation)), Some(TxnOpResult::Range(allocations))) =
            (results.next(), results.next())
        else {
            return Err(ControllerError::Aborted(
                "store answered a read with the wrong results".into(),
            ));
        };
        let pool = Pool::new(network.cidr)
            .map_err(|e| ControllerError::FailedPrecondition(e.to_string()))?;
        let snapshot = allocations.iter().filter_map(|kv| {
            let ip: Ipv4Addr = kv.key.rsplit('/').next()?.parse().ok()?;
            Some((
                NodeId::new(String::from_utf8_lossy(&kv.value).into_owned()),
                ip,
            ))
        });
        let ipam = Ipam::from_snapshot(pool, snapshot).map_err(|e| ControllerError::Corrupt {
            key: keys::ipam(net),
            reason: e.to_string(),
        })?;
        Ok((ipam, generation.map_or(0, |kv| kv.mod_revision)))
    }
}

/// The API error of a failed allocation; `field` names the requested address, if any.
fn allocation_error(net: &str, field: Option<&str>, e: IpamError) -> ControllerError {
    match (&e, field) {
        (IpamError::Exhausted { .. }, _) => ControllerError::FailedPrecondition(format!(
            "no free address in network {net:?}: {e}; delete unused peers or use a larger address space"
        )),
        (IpamError::Unassignable { .. }, Some(field)) => {
            ControllerError::invalid(field, e.to_string())
        }
        // Free it or ask for another: the request is fine, the network's state is not.
        (IpamError::AddressTaken { .. }, Some(field)) => ControllerError::FailedPrecondition(
            format!("{field}: {e}; leave it empty to get a free address"),
        ),
        _ => ControllerError::FailedPrecondition(e.to_string()),
    }
}
