//! Advertised prefixes in the store: an agent's advertisement (Report), the admin's decisions
//! (ApproveRoute, RejectRoute), the list, and the network settings that govern them.
//!
//! Routes live in their peer's record, so the Watch stream distributes them with the peer and
//! they go with it when it is deleted. A change must not overlap another peer's prefixes:
//! every change bumps the network's routes generation key and compares it, with the peer
//! record and the network record, so two peers cannot claim overlapping prefixes at once, on
//! one controller or several.

use cladnet_proto::v1 as pb;
use cladnet_store::{Compare, CompareOp, Txn, TxnOp};
use ipnet::Ipv4Net;
use tracing::info;

use super::Controller;
use crate::{
    error::{ControllerError, Result},
    keys,
    model::{self, NetworkRecord, PeerRecord, now_unix},
    routes::{self, DEFAULT_ROUTE, ExitNodes, HeldPrefix, RouteRecord, RouteRules, RouteState},
    validate,
};

/// What a change of one peer's routes is decided on.
struct RouteContext<'a> {
    network: &'a NetworkRecord,
    /// Prefixes the other peers hold (pending or approved).
    held: Vec<HeldPrefix<'a>>,
}

impl RouteContext<'_> {
    fn rules(&self) -> RouteRules {
        RouteRules {
            cidr: self.network.cidr,
            exit_nodes: self.network.exit_nodes,
        }
    }
}

impl Controller {
    /// Replaces the prefixes peer `node` advertises with `prefixes` (validated; errors name
    /// `advertisedRoutes.prefixes[i]`). Returns the store revision after the change.
    pub(super) async fn advertise_routes(
        &self,
        net: &str,
        node: &str,
        prefixes: &[String],
    ) -> Result<i64> {
        let (revision, routes) = self
            .change_routes("advertise routes", net, node, |current, ctx| {
                let valid = routes::advertised(
                    "advertisedRoutes.prefixes",
                    prefixes,
                    ctx.rules(),
                    &ctx.held,
                )?;
                Ok(routes::merge(
                    current,
                    &valid,
                    ctx.network.route_approval,
                    now_unix(),
                ))
            })
            .await?;
        info!(network = %net, node = %node, routes = routes.len(), "routes advertised");
        Ok(revision)
    }

    /// The prefixes of an `advertise-routes` command to `node`, checked as its agent's report
    /// of them will be, so a bad set is refused before it reaches the agent.
    pub(super) async fn command_routes(
        &self,
        net: &str,
        node: &str,
        prefixes: &[String],
    ) -> Result<Vec<Ipv4Net>> {
        let (network, _) = self.network(net).await?;
        let peers = self.peers(net).await?;
        let ctx = context(&network, &peers, node);
        routes::advertised("routes", prefixes, ctx.rules(), &ctx.held)
    }

    /// Every advertised prefix of a network (or of one peer), by peer then prefix.
    pub async fn list_routes(&self, req: pb::ListRoutesRequest) -> Result<pb::ListRoutesResponse> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        let net = req.cladnet_id.as_str();
        self.network(net).await?;
        let peers = if req.host_id.is_empty() {
            self.peers(net).await?.into_iter().map(|(p, _)| p).collect()
        } else {
            validate::host_id("hostId", &req.host_id)?;
            vec![self.peer(net, &req.host_id).await?.0]
        };
        Ok(pb::ListRoutesResponse {
            routes: peers
                .iter()
                .flat_map(|p| p.routes.iter().map(|r| r.to_proto(&p.node_id)))
                .collect(),
        })
    }

    /// Approves a prefix a peer advertises: it is routed from now on. A rejected prefix is
    /// checked again, as another peer may hold an overlapping one by now.
    pub async fn approve_route(&self, req: pb::RouteDecisionRequest) -> Result<pb::Route> {
        self.decide(req, RouteState::Approved).await
    }

    /// Rejects a prefix a peer advertises: agents stop routing it, and it no longer reserves
    /// its space. It stays rejected while the peer advertises it.
    pub async fn reject_route(&self, req: pb::RouteDecisionRequest) -> Result<pb::Route> {
        self.decide(req, RouteState::Rejected).await
    }

    async fn decide(&self, req: pb::RouteDecisionRequest, state: RouteState) -> Result<pb::Route> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        validate::host_id("hostId", &req.host_id)?;
        let (net, node) = (req.cladnet_id.as_str(), req.host_id.as_str());
        let prefix: Ipv4Net = req.prefix.trim().parse().map_err(|_| {
            ControllerError::invalid(
                "prefix",
                format!("{:?} is not an IPv4 prefix like 10.244.3.0/24", req.prefix),
            )
        })?;
        let (_, routes) = self
            .change_routes("decide on a route", net, node, |current, ctx| {
                let mut next = current.to_vec();
                let route = next
                    .iter_mut()
                    .find(|r| r.prefix == prefix)
                    .ok_or_else(|| {
                        ControllerError::not_found(format!(
                            "route {prefix} of peer {node:?} (it advertises {})",
                            shown(current)
                        ))
                    })?;
                if route.state == state {
                    return Ok(next);
                }
                if state.reserves() && !route.state.reserves() {
                    routes::prefix("prefix", &prefix.to_string(), ctx.rules())?;
                    routes::not_held("prefix", prefix, &ctx.held)?;
                }
                route.state = state;
                route.decided_at = now_unix();
                Ok(next)
            })
            .await?;
        info!(network = %net, node = %node, %prefix, state = %state, "route decided");
        let route = routes
            .iter()
            .find(|r| r.prefix == prefix)
            .expect("the decided route is in the peer's routes");
        Ok(route.to_proto(node))
    }

    /// Read-modify-writes peer `node`'s routes with `change` (given its current routes and the
    /// network and other peers), comparing the network, the peer and the routes generation.
    /// Writes nothing when the routes stay the same. Returns the revision and the new routes.
    async fn change_routes(
        &self,
        what: &str,
        net: &str,
        node: &str,
        change: impl Fn(&[RouteRecord], &RouteContext<'_>) -> Result<Vec<RouteRecord>>,
    ) -> Result<(i64, Vec<RouteRecord>)> {
        let generation_key = keys::routes_generation(net);
        let peer_key = keys::peer(net, node);
        self.retry(what, || async {
            let (network, net_kv) = self.network(net).await?;
            // The generation before the peers: a change between the two reads bumps it, and the
            // compare below catches it.
            let generation = self.store.get(&generation_key).await?;
            let peers = self.peers(net).await?;
            let Some((me, peer_revision)) = peers.iter().find(|(p, _)| p.node_id == node) else {
                return Err(ControllerError::not_found(format!(
                    "peer {node:?} of network {net:?}"
                )));
            };
            let ctx = context(&network, &peers, node);
            let routes = change(&me.routes, &ctx)?;
            if routes == me.routes {
                return Ok(Some((peer_revision.to_owned(), routes)));
            }
            let mut record = me.clone();
            record.routes.clone_from(&routes);
            record.updated_at = now_unix();
            let res = self
                .store
                .txn(
                    Txn::new()
                        .when([
                            Compare::mod_revision(
                                keys::network(net),
                                CompareOp::Equal,
                                net_kv.mod_revision,
                            ),
                            Compare::mod_revision(&peer_key, CompareOp::Equal, *peer_revision),
                            Compare::mod_revision(
                                &generation_key,
                                CompareOp::Equal,
                                generation.as_ref().map_or(0, |kv| kv.mod_revision),
                            ),
                        ])
                        .and_then([
                            TxnOp::put(&peer_key, model::encode(&record)),
                            TxnOp::put(&generation_key, node.as_bytes().to_vec()),
                        ]),
                )
                .await?;
            Ok(res.succeeded.then_some((res.revision, routes)))
        })
        .await
    }

    /// Applies `routeApproval` and `exitNodes` of a network update (empty: unchanged) to
    /// `record`. Denying exit
    /// nodes is refused while a peer holds 0.0.0.0/0; the routes generation joins `compares`
    /// so none is advertised between the check and the write.
    pub(super) async fn update_route_settings(
        &self,
        route_approval: &str,
        exit_nodes: &str,
        record: &mut NetworkRecord,
        compares: &mut Vec<Compare>,
    ) -> Result<()> {
        if !route_approval.is_empty() {
            record.route_approval = validate::policy_enum("routeApproval", route_approval)?;
        }
        if exit_nodes.is_empty() {
            return Ok(());
        }
        let exit_nodes: ExitNodes = validate::policy_enum("exitNodes", exit_nodes)?;
        if exit_nodes == ExitNodes::Deny && record.exit_nodes == ExitNodes::Allow {
            let net = record.id.as_str();
            let generation = self
                .store
                .get(&keys::routes_generation(net))
                .await?
                .map_or(0, |kv| kv.mod_revision);
            let holder = self.peers(net).await?.into_iter().find(|(p, _)| {
                p.routes
                    .iter()
                    .any(|r| r.prefix == DEFAULT_ROUTE && r.state.reserves())
            });
            if let Some((p, _)) = holder {
                return Err(ControllerError::FailedPrecondition(format!(
                    "exitNodes: peer {:?} advertises 0.0.0.0/0; reject the route \
                     (`cladnet route reject {net} {} 0.0.0.0/0`) or withdraw it first",
                    p.node_id, p.node_id
                )));
            }
            compares.push(Compare::mod_revision(
                keys::routes_generation(net),
                CompareOp::Equal,
                generation,
            ));
        }
        record.exit_nodes = exit_nodes;
        Ok(())
    }
}

/// The network and the prefixes every peer but `node` holds.
fn context<'a>(
    network: &'a NetworkRecord,
    peers: &'a [(PeerRecord, i64)],
    node: &str,
) -> RouteContext<'a> {
    let held = peers
        .iter()
        .filter(|(p, _)| p.node_id != node)
        .flat_map(|(p, _)| {
            p.routes
                .iter()
                .filter(|r| r.state.reserves())
                .map(|r| HeldPrefix {
                    node: &p.node_id,
                    prefix: r.prefix,
                })
        })
        .collect();
    RouteContext { network, held }
}

/// A peer's prefixes for an error message.
fn shown(routes: &[RouteRecord]) -> String {
    if routes.is_empty() {
        return "none".into();
    }
    routes
        .iter()
        .map(|r| r.prefix.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
