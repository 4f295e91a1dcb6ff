//! `cladnet route list|approve|reject`: the prefixes peers advertise (pod networks, subnets
//! behind a host) and the admin's decisions on them.

use cladnet_proto::v1::{ListRoutesRequest, ListRoutesResponse, Route, RouteDecisionRequest};
use clap::Subcommand;

use super::Ctx;
use crate::{
    output::{Table, unix_time},
    parse,
};

/// `cladnet route` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RouteCmd {
    /// List the prefixes the peers of a network advertise, with their approval state.
    #[command(visible_alias = "ls")]
    List {
        /// Network id.
        network: String,
        /// Only this peer's routes.
        #[arg(long, value_name = "HOST_ID")]
        host: Option<String>,
    },
    /// Approve a prefix a peer advertises: every peer routes it to that peer from now on.
    Approve {
        /// Network id.
        network: String,
        /// Host id of the advertising peer.
        host_id: String,
        /// The prefix, e.g. 10.244.3.0/24.
        #[arg(value_parser = parse::ipv4_cidr)]
        prefix: String,
    },
    /// Reject a prefix a peer advertises: it is not routed (and no longer reserved).
    Reject {
        /// Network id.
        network: String,
        /// Host id of the advertising peer.
        host_id: String,
        /// The prefix, e.g. 10.244.3.0/24.
        #[arg(value_parser = parse::ipv4_cidr)]
        prefix: String,
    },
}

/// Runs a `cladnet route` subcommand.
pub(crate) async fn run(cmd: RouteCmd, ctx: &mut Ctx) -> anyhow::Result<()> {
    let (approve, network, host_id, prefix) = match cmd {
        RouteCmd::List { network, host } => {
            let fail = ctx
                .client
                .fail(format!("listing the routes of network {network}"));
            let resp = ctx
                .client
                .api
                .list_routes(ListRoutesRequest {
                    cladnet_id: network,
                    host_id: host.unwrap_or_default(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            return ctx.emit(&resp, render_list);
        }
        RouteCmd::Approve {
            network,
            host_id,
            prefix,
        } => (true, network, host_id, prefix),
        RouteCmd::Reject {
            network,
            host_id,
            prefix,
        } => (false, network, host_id, prefix),
    };
    let verb = if approve { "approving" } else { "rejecting" };
    let fail = ctx.client.fail(format!(
        "{verb} route {prefix} of peer {host_id} in network {network}"
    ));
    let req = RouteDecisionRequest {
        cladnet_id: network,
        host_id,
        prefix,
    };
    let route = if approve {
        ctx.client.api.approve_route(req).await
    } else {
        ctx.client.api.reject_route(req).await
    }
    .map_err(fail)?
    .into_inner();
    ctx.emit(&route, render_decision)
}

/// The outcome of an approval or rejection.
pub(crate) fn render_decision(r: &Route) -> String {
    format!("Route {} of peer {} is {}.\n", r.prefix, r.host_id, r.state)
}

/// Routes as a table.
pub(crate) fn render_list(resp: &ListRoutesResponse) -> String {
    let mut t = Table::new(["HOST ID", "PREFIX", "STATE", "ADVERTISED", "DECIDED"]);
    for r in &resp.routes {
        t.row([
            r.host_id.clone(),
            r.prefix.clone(),
            r.state.clone(),
            unix_time(r.advertised_at, "-"),
            unix_time(r.decided_at, "-"),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_routes_and_decisions() {
        let resp = ListRoutesResponse {
            routes: vec![
                Route {
                    host_id: "node-a".into(),
                    prefix: "10.244.1.0/24".into(),
                    state: "approved".into(),
                    advertised_at: 1_700_000_000,
                    decided_at: 1_700_000_000,
                },
                Route {
                    host_id: "node-b".into(),
                    prefix: "10.244.2.0/24".into(),
                    state: "pending".into(),
                    advertised_at: 1_700_000_000,
                    decided_at: 0,
                },
            ],
        };
        assert_eq!(
            render_list(&resp),
            "\
HOST ID  PREFIX         STATE     ADVERTISED            DECIDED
node-a   10.244.1.0/24  approved  2023-11-14T22:13:20Z  2023-11-14T22:13:20Z
node-b   10.244.2.0/24  pending   2023-11-14T22:13:20Z  -
"
        );
        assert_eq!(
            render_decision(&resp.routes[1]),
            "Route 10.244.2.0/24 of peer node-b is pending.\n"
        );
    }
}
