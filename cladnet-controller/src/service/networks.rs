//! Network create/get/list/update/delete, health and the address-space recommender.

use cladnet_proto::v1 as pb;
use cladnet_store::{Compare, CompareOp, Txn, TxnOp};
use tracing::{info, warn};

use super::Controller;
use crate::{
    auth::random_hex,
    error::{ControllerError, Result},
    keys,
    model::{self, NetworkRecord, PeerRecord, SCHEMA, now_unix},
    recommend::{self, RecommendError},
    validate,
};

/// Default number of hosts an `auto` address space is sized for.
const AUTO_HOSTS: u32 = 254;

impl Controller {
    /// Creates a network. `ipv4AddressSpace = "auto"` picks one with the recommender, avoiding
    /// every host CIDR any peer of any network reported.
    pub async fn create_network(&self, req: pb::Network) -> Result<pb::Network> {
        let id = if req.cladnet_id.is_empty() {
            format!("cn-{}", random_hex(5))
        } else {
            req.cladnet_id.clone()
        };
        validate::network_id("cladnetId", &id)?;
        validate::text("name", &req.name, 128)?;
        validate::text("description", &req.description, 1024)?;
        let rule_type = validate::policy_enum("ruleType", &req.rule_type)?;
        let encryption = validate::policy_enum("encryption", &req.encryption)?;
        let cidr = match req.ipv4_address_space.as_str() {
            "auto" => {
                self.recommend_from(&self.all_host_cidrs().await?, AUTO_HOSTS)?
                    .recommended
            }
            s => validate::overlay_cidr(
                "ipv4AddressSpace",
                validate::required("ipv4AddressSpace", s)?,
            )?,
        };
        let name = if req.name.is_empty() {
            id.clone()
        } else {
            req.name
        };
        let record = NetworkRecord {
            schema: SCHEMA,
            id: id.clone(),
            name,
            cidr,
            description: req.description,
            rule_type,
            encryption,
            created_at: now_unix(),
            route_approval: validate::policy_enum("routeApproval", &req.route_approval)?,
            exit_nodes: validate::policy_enum("exitNodes", &req.exit_nodes)?,
        };
        let key = keys::network(&id);
        let res = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::absent(&key)])
                    .and_then([TxnOp::put(&key, model::encode(&record))]),
            )
            .await?;
        if !res.succeeded {
            return Err(ControllerError::AlreadyExists {
                what: format!("network {id:?}"),
            });
        }
        info!(network = %id, cidr = %cidr, "network created");
        Ok(record.to_proto(res.revision))
    }

    /// One network.
    pub async fn get_network(&self, net: &str) -> Result<pb::Network> {
        validate::network_id("cladnetId", net)?;
        let (record, kv) = self.network(net).await?;
        Ok(record.to_proto(kv.mod_revision))
    }

    /// Every network, sorted by id.
    pub async fn list_networks(&self) -> Result<pb::ListNetworksResponse> {
        let range = self.store.range(keys::watched_root()).await?;
        let cladnet_specifications = range
            .kvs
            .iter()
            .filter(|kv| keys::network_of_record(&kv.key).is_some())
            .map(|kv| Ok(model::decode::<NetworkRecord>(kv)?.to_proto(kv.mod_revision)))
            .collect::<Result<_>>()?;
        Ok(pb::ListNetworksResponse {
            cladnet_specifications,
        })
    }

    /// Updates name, description, rule type, encryption and the route settings (and the
    /// address space while no peer holds an address). A non-zero `revision` must match the stored one.
    pub async fn update_network(&self, req: pb::Network) -> Result<pb::Network> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        validate::text("name", &req.name, 128)?;
        validate::text("description", &req.description, 1024)?;
        let net = req.cladnet_id.as_str();
        let (mut record, kv) = self.network(net).await?;
        if req.revision != 0 && req.revision != kv.mod_revision {
            return Err(ControllerError::Aborted(format!(
                "network {net:?} changed since revision {} (now {}); read it again",
                req.revision, kv.mod_revision
            )));
        }
        if !req.name.is_empty() {
            record.name = req.name;
        }
        record.description = req.description;
        if !req.rule_type.is_empty() {
            record.rule_type = validate::policy_enum("ruleType", &req.rule_type)?;
        }
        if !req.encryption.is_empty() {
            record.encryption = validate::policy_enum("encryption", &req.encryption)?;
        }
        let mut compares = vec![Compare::mod_revision(
            keys::network(net),
            CompareOp::Equal,
            kv.mod_revision,
        )];
        self.update_route_settings(
            &req.route_approval,
            &req.exit_nodes,
            &mut record,
            &mut compares,
        )
        .await?;
        if !req.ipv4_address_space.is_empty() {
            let cidr = validate::overlay_cidr("ipv4AddressSpace", &req.ipv4_address_space)?;
            if cidr != record.cidr {
                // Allocations bump the generation key: compare it so none slips in between
                // the emptiness check and the write.
                let generation = self
                    .store
                    .get(&keys::alloc_generation(net))
                    .await?
                    .map_or(0, |kv| kv.mod_revision);
                if !self.store.range(&keys::ipam(net)).await?.kvs.is_empty() {
                    return Err(ControllerError::FailedPrecondition(format!(
                        "ipv4AddressSpace: network {net:?} has peers holding addresses in {}; delete them first",
                        record.cidr
                    )));
                }
                compares.push(Compare::mod_revision(
                    keys::alloc_generation(net),
                    CompareOp::Equal,
                    generation,
                ));
                record.cidr = cidr;
            }
        }
        let res = self
            .store
            .txn(
                Txn::new()
                    .when(compares)
                    .and_then([TxnOp::put(keys::network(net), model::encode(&record))]),
            )
            .await?;
        if !res.succeeded {
            return Err(ControllerError::Aborted(format!(
                "network {net:?} changed concurrently; read it again"
            )));
        }
        info!(network = %net, "network updated");
        Ok(record.to_proto(res.revision))
    }

    /// Deletes a network with everything under it (peers, addresses, tokens, tests) and its
    /// traffic statistics.
    pub async fn delete_network(&self, net: &str) -> Result<pb::DeleteNetworkResponse> {
        validate::network_id("cladnetId", net)?;
        let (record, kv) = self.network(net).await?;
        let res = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        keys::network(net),
                        CompareOp::Equal,
                        kv.mod_revision,
                    )])
                    // The record first: watchers see the network go before its parts, and stop.
                    .and_then([
                        TxnOp::delete(keys::network(net)),
                        TxnOp::delete_prefix(keys::watched(net)),
                        TxnOp::delete_prefix(keys::internal(net)),
                        TxnOp::delete_prefix(keys::stats(net)),
                    ]),
            )
            .await?;
        if !res.succeeded {
            return Err(ControllerError::Aborted(format!(
                "network {net:?} changed concurrently; retry"
            )));
        }
        info!(network = %net, "network deleted");
        Ok(pb::DeleteNetworkResponse {
            is_succeeded: true,
            message: format!("network {net} deleted"),
            cladnet_specification: Some(record.to_proto(kv.mod_revision)),
        })
    }

    /// Recommends an address space for the given host CIDRs, or for the CIDRs the peers of
    /// `cladnetId` reported when none are given.
    pub async fn recommend(
        &self,
        req: pb::RecommendAddressSpaceRequest,
    ) -> Result<pb::RecommendAddressSpaceResponse> {
        let cidrs = if req.ipv4_cidrs.is_empty() && !req.cladnet_id.is_empty() {
            validate::network_id("cladnetId", &req.cladnet_id)?;
            self.network(&req.cladnet_id).await?;
            let peers = self.peers(&req.cladnet_id).await?;
            host_cidrs(peers.iter().map(|(p, _)| p))
        } else {
            req.ipv4_cidrs
                .iter()
                .enumerate()
                .map(|(i, c)| validate::host_cidr(&format!("ipv4Cidrs[{i}]"), c))
                .collect::<Result<Vec<_>>>()?
        };
        let hosts = if req.hosts == 0 {
            (cidrs.len() as u32).max(1)
        } else {
            req.hosts
        };
        let r = self.recommend_from(&cidrs, hosts)?;
        let show = |v: &[ipnet::Ipv4Net]| v.iter().map(ToString::to_string).collect();
        Ok(pb::RecommendAddressSpaceResponse {
            recommended_ipv4_private_address_space: r.recommended.to_string(),
            address_space10s: show(&r.address_spaces_10),
            address_space172s: show(&r.address_spaces_172),
            address_space192s: show(&r.address_spaces_192),
        })
    }

    fn recommend_from(
        &self,
        cidrs: &[ipnet::Ipv4Net],
        hosts: u32,
    ) -> Result<recommend::Recommendation> {
        recommend::recommend_nets(cidrs, hosts).map_err(|e| match e {
            RecommendError::NoFreeSpace { .. } => {
                ControllerError::FailedPrecondition(e.to_string())
            }
            RecommendError::NoHosts | RecommendError::TooManyHosts { .. } => {
                ControllerError::invalid("hosts", e.to_string())
            }
            other => ControllerError::invalid("ipv4Cidrs", other.to_string()),
        })
    }

    /// Host CIDRs reported by every peer of every network.
    async fn all_host_cidrs(&self) -> Result<Vec<ipnet::Ipv4Net>> {
        let range = self.store.range(keys::watched_root()).await?;
        let peers: Vec<PeerRecord> = range
            .kvs
            .iter()
            .filter(|kv| kv.key.contains("/peers/"))
            .map(model::decode)
            .collect::<Result<_>>()?;
        Ok(host_cidrs(peers.iter()))
    }

    /// Liveness of the controller and its store.
    pub async fn health(&self) -> pb::HealthResponse {
        match self.store.range("/cladnet/v1/health/").await {
            Ok(r) => pb::HealthResponse {
                status: "healthy".into(),
                store: "ok".into(),
                revision: r.revision,
                message: String::new(),
            },
            Err(e) => unhealthy(&e),
        }
    }
}

/// The answer when the store fails. Health needs no credentials, so the store's error (etcd
/// addresses, file paths) goes to the log only.
fn unhealthy(e: &cladnet_store::Error) -> pb::HealthResponse {
    warn!(error = %e, "health check: store unavailable");
    pb::HealthResponse {
        status: "unhealthy".into(),
        store: "error".into(),
        revision: 0,
        message: "store unavailable".into(),
    }
}

/// Every interface CIDR of the given peers, deduplicated.
/// CIDRs too large to be a host subnet (stored before reports were validated) are left out:
/// one `0.0.0.0/0` would leave the recommender no room in any network.
fn host_cidrs<'a>(peers: impl Iterator<Item = &'a PeerRecord>) -> Vec<ipnet::Ipv4Net> {
    let mut cidrs: Vec<_> = peers
        .flat_map(|p| p.interfaces.iter().flat_map(|i| i.cidrs.iter().copied()))
        .filter(|c| c.prefix_len() >= validate::MIN_HOST_PREFIX_LEN)
        .collect();
    cidrs.sort();
    cidrs.dedup();
    cidrs
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use cladnet_store::{
        DeleteResult, KeyValue, LeaseId, RangeResult, Revision, Store, Txn, TxnResult, WatchStream,
    };

    use crate::{auth::AdminAuth, service::Controller};

    /// A store whose every call fails with an error naming an etcd member, as a real
    /// outage does.
    #[derive(Debug)]
    struct DownStore;

    fn down<T>() -> cladnet_store::Result<T> {
        Err(cladnet_store::Error::Unavailable {
            op: cladnet_store::Op::Range,
            target: "/cladnet/v1/health/".into(),
            endpoints: "http://10.1.2.3:2379".into(),
            source: "connection refused".into(),
        })
    }

    #[async_trait::async_trait]
    impl Store for DownStore {
        async fn get(&self, _: &str) -> cladnet_store::Result<Option<KeyValue>> {
            down()
        }
        async fn range(&self, _: &str) -> cladnet_store::Result<RangeResult> {
            down()
        }
        async fn put(
            &self,
            _: &str,
            _: Vec<u8>,
            _: Option<LeaseId>,
        ) -> cladnet_store::Result<Revision> {
            down()
        }
        async fn delete(&self, _: &str) -> cladnet_store::Result<DeleteResult> {
            down()
        }
        async fn delete_prefix(&self, _: &str) -> cladnet_store::Result<DeleteResult> {
            down()
        }
        async fn txn(&self, _: Txn) -> cladnet_store::Result<TxnResult> {
            down()
        }
        async fn watch(&self, _: &str, _: Option<Revision>) -> cladnet_store::Result<WatchStream> {
            down()
        }
        async fn compact(&self, _: Revision) -> cladnet_store::Result<()> {
            down()
        }
        async fn lease_grant(&self, _: Duration) -> cladnet_store::Result<LeaseId> {
            down()
        }
        async fn lease_keep_alive(&self, _: LeaseId) -> cladnet_store::Result<Duration> {
            down()
        }
        async fn lease_revoke(&self, _: LeaseId) -> cladnet_store::Result<()> {
            down()
        }
    }

    #[tokio::test]
    async fn health_does_not_leak_store_errors() {
        let ctl = Controller::new(
            Arc::new(DownStore),
            AdminAuth::new("0123456789abcdef").unwrap(),
        );
        let h = ctl.health().await;
        assert_eq!(h.status, "unhealthy");
        assert_eq!(h.message, "store unavailable");
        assert!(!format!("{h:?}").contains("10.1.2.3"), "{h:?}");
    }
}
