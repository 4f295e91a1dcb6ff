//! Overlay address reservation, shared by Join and AddExternalPeer.

use std::net::Ipv4Addr;

use cladnet_store::{Compare, CompareOp, TxnOp};

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
        let generation = self.store.get(&keys::alloc_generation(net)).await?;
        let allocations = self.store.range(&keys::ipam(net)).await?;
        let pool = Pool::new(network.cidr)
            .map_err(|e| ControllerError::FailedPrecondition(e.to_string()))?;
        let snapshot = allocations.kvs.iter().filter_map(|kv| {
            let ip: Ipv4Addr = kv.key.rsplit('/').next()?.parse().ok()?;
            Some((
                NodeId::new(String::from_utf8_lossy(&kv.value).into_owned()),
                ip,
            ))
        });
        let mut ipam =
            Ipam::from_snapshot(pool, snapshot).map_err(|e| ControllerError::Corrupt {
                key: keys::ipam(net),
                reason: e.to_string(),
            })?;
        let id = NodeId::new(node);
        let allocation = match requested {
            None => ipam.allocate(&id),
            Some((_, addr)) => ipam.allocate_at(&id, addr),
        }
        .map_err(|e| allocation_error(net, requested.map(|(field, _)| field), e))?;
        let addr = allocation.addr();
        let key = keys::ipam_addr(net, addr);
        let (compares, ops) = if allocation.is_new() {
            // Every allocation bumps the generation key, so a change of the address space
            // (and any check made on a read before this one) can exclude it with one compare.
            let generation = generation.map_or(0, |kv| kv.mod_revision);
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
            )
        } else {
            (
                vec![Compare::value(
                    &key,
                    CompareOp::Equal,
                    node.as_bytes().to_vec(),
                )],
                Vec::new(),
            )
        };
        Ok(Reservation {
            allocation,
            compares,
            ops,
        })
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
