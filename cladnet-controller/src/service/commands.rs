//! Remote commands and connectivity tests.

use cladnet_proto::v1 as pb;
use cladnet_store::{MAX_TXN_OPS, Txn, TxnOp};
use tracing::info;

use super::Controller;
use crate::{
    auth::random_hex,
    error::{ControllerError, Result},
    keys,
    model::{self, CommandRecord, PeerState, ResultRecord, SCHEMA, TestRecord, now_unix},
    validate,
};

impl Controller {
    /// Sends a command to one agent or to every agent of a network (external WireGuard peers
    /// have no agent to obey it). Each target's command key is written; its agent receives it
    /// on its Watch stream.
    ///
    /// `advertise-routes` (one `hostId`) replaces the prefixes that agent advertises with
    /// `routes`, checked now as its report of them will be.
    ///
    /// `enable-encryption` / `disable-encryption` (cb-network's) switch the network's encryption
    /// policy to `always` / `never` instead: both ends of a link must agree on its mode, so
    /// encryption cannot be a per-agent setting, and a command for one `hostId` is refused.
    pub async fn send_command(
        &self,
        req: pb::SendCommandRequest,
    ) -> Result<pb::SendCommandResponse> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        let command_type = validate::command_type("commandType", &req.command_type)?;
        let net = req.cladnet_id.as_str();
        self.network(net).await?;
        let advertise = command_type == "advertise-routes";
        if !advertise && !req.routes.is_empty() {
            return Err(ControllerError::invalid(
                "routes",
                format!("only for advertise-routes, not {command_type}"),
            ));
        }
        if advertise && req.host_id.is_empty() {
            return Err(ControllerError::invalid(
                "hostId",
                "advertise-routes sets one agent's prefixes: name its hostId",
            ));
        }
        let encryption = match command_type.as_str() {
            "enable-encryption" => Some("always"),
            "disable-encryption" => Some("never"),
            _ => None,
        };
        if let Some(encryption) = encryption {
            if !req.host_id.is_empty() {
                return Err(ControllerError::invalid(
                    "hostId",
                    format!(
                        "{command_type} applies to the whole network: both ends of a link must \
                         agree on encryption, so it is the network's policy; omit hostId, or use \
                         `cladnet network update {net} --encryption always|inter-site|never`"
                    ),
                ));
            }
            return self.switch_encryption(net, encryption).await;
        }
        let targets: Vec<String> = if req.host_id.is_empty() {
            self.peers(net)
                .await?
                .into_iter()
                .filter(|(p, _)| !p.external)
                .map(|(p, _)| p.node_id)
                .collect()
        } else {
            validate::host_id("hostId", &req.host_id)?;
            if self.peer(net, &req.host_id).await?.0.external {
                return Err(ControllerError::FailedPrecondition(format!(
                    "hostId: peer {:?} is an external WireGuard peer; it has no agent to take commands",
                    req.host_id
                )));
            }
            vec![req.host_id.clone()]
        };
        let routes = if advertise {
            self.command_routes(net, &req.host_id, &req.routes).await?
        } else {
            Vec::new()
        };
        let record = CommandRecord {
            schema: SCHEMA,
            command_type: command_type.clone(),
            command_id: random_hex(8),
            issued_at: now_unix(),
            routes,
        };
        for chunk in targets.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|n| TxnOp::put(keys::command(net, n), model::encode(&record)));
            self.store.txn(Txn::new().and_then(ops)).await?;
        }
        info!(network = %net, command = %command_type, targets = targets.len(), "command sent");
        Ok(pb::SendCommandResponse {
            is_succeeded: true,
            message: format!("{command_type} sent to {} peer(s)", targets.len()),
            host_ids: targets,
        })
    }

    /// Sets the network's encryption policy (checked against the revision read, like an
    /// update); every agent applies it from its Watch stream and re-derives its links.
    async fn switch_encryption(
        &self,
        net: &str,
        encryption: &str,
    ) -> Result<pb::SendCommandResponse> {
        let current = self.get_network(net).await?;
        let was = current.encryption.clone();
        self.update_network(pb::Network {
            encryption: encryption.to_owned(),
            ..current
        })
        .await?;
        let agents: Vec<String> = self
            .peers(net)
            .await?
            .into_iter()
            .filter(|(p, _)| !p.external)
            .map(|(p, _)| p.node_id)
            .collect();
        info!(network = %net, from = %was, to = %encryption, "encryption policy switched by command");
        Ok(pb::SendCommandResponse {
            is_succeeded: true,
            message: format!(
                "network {net}: encryption {was} -> {encryption}; its agents re-derive their links"
            ),
            host_ids: agents,
        })
    }

    /// Starts a connectivity test among the agents that are up (external WireGuard peers cannot
    /// run one).
    pub async fn start_connectivity_test(
        &self,
        req: pb::StartConnectivityTestRequest,
    ) -> Result<pb::ConnectivityTest> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        let trial_count = match req.trial_count {
            0 => 3,
            n @ 1..=100 => n,
            _ => return Err(ControllerError::invalid("trialCount", "must be 1..=100")),
        };
        let net = req.cladnet_id.as_str();
        self.network(net).await?;
        let host_ids: Vec<String> = self
            .peers(net)
            .await?
            .into_iter()
            .filter(|(p, _)| p.state == PeerState::Up && !p.external)
            .map(|(p, _)| p.node_id)
            .collect();
        if host_ids.is_empty() {
            return Err(ControllerError::FailedPrecondition(format!(
                "no peer of network {net:?} is up"
            )));
        }
        let record = TestRecord {
            schema: SCHEMA,
            id: random_hex(6),
            trial_count,
            host_ids,
            started_at: now_unix(),
        };
        self.store
            .put(&keys::test(net, &record.id), model::encode(&record), None)
            .await?;
        info!(network = %net, test_id = %record.id, peers = record.host_ids.len(), "connectivity test started");
        Ok(test_view(net, &record, Vec::new()))
    }

    /// A connectivity test with the results reported so far.
    pub async fn get_connectivity_test(
        &self,
        net: &str,
        test_id: &str,
    ) -> Result<pb::ConnectivityTest> {
        validate::network_id("cladnetId", net)?;
        validate::host_id("testId", test_id)?;
        let kv = self
            .store
            .get(&keys::test(net, test_id))
            .await?
            .ok_or_else(|| {
                ControllerError::not_found(format!(
                    "connectivity test {test_id:?} of network {net:?}"
                ))
            })?;
        let record: TestRecord = model::decode(&kv)?;
        self.test_with_results(net, record).await
    }

    /// The connectivity test of a network started last (the one whose record the store
    /// created last), with the results reported so far.
    pub async fn latest_connectivity_test(&self, net: &str) -> Result<pb::ConnectivityTest> {
        validate::network_id("cladnetId", net)?;
        self.network(net).await?;
        let tests = self.store.range(&keys::tests(net)).await?;
        let kv = tests
            .kvs
            .iter()
            .max_by_key(|kv| kv.create_revision)
            .ok_or_else(|| {
                ControllerError::not_found(format!("connectivity test of network {net:?}"))
            })?;
        self.test_with_results(net, model::decode(kv)?).await
    }

    async fn test_with_results(
        &self,
        net: &str,
        record: TestRecord,
    ) -> Result<pb::ConnectivityTest> {
        let test_id = record.id.as_str();
        let results = self.store.range(&keys::results(net, test_id)).await?;
        let results = results
            .kvs
            .iter()
            .map(model::decode::<ResultRecord>)
            .collect::<Result<Vec<_>>>()?;
        Ok(test_view(net, &record, results))
    }
}

/// The API view of a test.
pub(crate) fn test_view(
    net: &str,
    record: &TestRecord,
    results: Vec<ResultRecord>,
) -> pb::ConnectivityTest {
    let reported_host_ids: Vec<String> = results.iter().map(|r| r.node_id.clone()).collect();
    let complete = record
        .host_ids
        .iter()
        .all(|h| reported_host_ids.contains(h));
    pb::ConnectivityTest {
        cladnet_id: net.to_owned(),
        test_id: record.id.clone(),
        trial_count: record.trial_count,
        host_ids: record.host_ids.clone(),
        reported_host_ids,
        results: results
            .iter()
            .flat_map(|r| r.results.iter().map(model::PairRecord::to_proto))
            .collect(),
        complete,
    }
}
