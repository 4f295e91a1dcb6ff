//! `cladnet peers NETWORK` and `cladnet peer show|delete|add-external|wg-config`.

use cladnet_proto::v1::{
    AddExternalPeerRequest, GetPeerRequest, Link, ListPeersRequest, ListPeersResponse, Peer,
};
use clap::Subcommand;

use super::Ctx;
use crate::{
    output::{Table, key_values, list},
    parse,
};

/// `cladnet peer` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum PeerCmd {
    /// Show one peer with its links to every other peer.
    #[command(visible_alias = "get")]
    Show {
        /// Network id.
        network: String,
        /// Host id of the peer.
        host_id: String,
    },
    /// Remove a peer and free its address (an agent that comes back joins again).
    #[command(visible_alias = "rm")]
    Delete {
        /// Network id.
        network: String,
        /// Host id of the peer.
        host_id: String,
    },
    /// Register a standard WireGuard client (wg-quick, wireguard-go, boringtun) as peer
    /// ext-NAME; then `cladnet peer wg-config` gives its configuration.
    AddExternal {
        /// Network id.
        network: String,
        /// Name of the client; its host id becomes ext-NAME.
        #[arg(long, value_name = "NAME", value_parser = parse::peer_name)]
        name: String,
        /// The client's WireGuard public key (base64, as `wg pubkey` prints it).
        #[arg(long, value_name = "KEY", value_parser = parse::public_key)]
        public_key: String,
        /// Where the client listens, if agents can reach it; omit for a roaming client behind
        /// NAT (it starts the handshakes).
        #[arg(long, value_name = "IP:PORT", value_parser = parse::endpoint)]
        endpoint: Option<String>,
        /// Overlay address to give the client (free, inside the network); allocated if omitted.
        #[arg(long, value_name = "IP", value_parser = parse::ipv4)]
        ip: Option<String>,
    },
    /// Print the wg-quick configuration of an external peer (fill in its private key).
    WgConfig {
        /// Network id.
        network: String,
        /// Host id of the external peer (ext-NAME).
        host_id: String,
    },
}

/// `cladnet peers NETWORK`: lists the peers of a network.
pub(crate) async fn list_peers(network: String, ctx: &mut Ctx) -> anyhow::Result<()> {
    let fail = ctx
        .client
        .fail(format!("listing the peers of network {network}"));
    let resp = ctx
        .client
        .api
        .list_peers(ListPeersRequest {
            cladnet_id: network,
        })
        .await
        .map_err(fail)?
        .into_inner();
    ctx.emit(&resp, render_peers)
}

/// Runs a `cladnet peer` subcommand.
pub(crate) async fn run(cmd: PeerCmd, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        PeerCmd::Show { network, host_id } => {
            let fail = ctx
                .client
                .fail(format!("reading peer {host_id} of network {network}"));
            let peer = ctx
                .client
                .api
                .get_peer(GetPeerRequest {
                    cladnet_id: network,
                    host_id,
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.emit(&peer, render_peer)
        }
        PeerCmd::Delete { network, host_id } => {
            let action = format!("deleting peer {host_id} of network {network}");
            let fail = ctx.client.fail(&action);
            let resp = ctx
                .client
                .api
                .delete_peer(GetPeerRequest {
                    cladnet_id: network.clone(),
                    host_id: host_id.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.ensure_succeeded(resp.is_succeeded, &action, &resp.message, &resp)?;
            ctx.emit(&resp, |r| {
                let mut s = format!("Deleted peer {host_id} of network {network}.\n");
                if !r.message.is_empty() {
                    s.push_str(&r.message);
                    s.push('\n');
                }
                s
            })
        }
        PeerCmd::AddExternal {
            network,
            name,
            public_key,
            endpoint,
            ip,
        } => {
            let fail = ctx
                .client
                .fail(format!("adding external peer {name} to network {network}"));
            let peer = ctx
                .client
                .api
                .add_external_peer(AddExternalPeerRequest {
                    cladnet_id: network.clone(),
                    name,
                    public_key,
                    endpoint: endpoint.unwrap_or_default(),
                    ip: ip.unwrap_or_default(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.emit(&peer, render_peer)?;
            if !ctx.json {
                eprintln!(
                    "Its WireGuard configuration: cladnet peer wg-config {network} {}",
                    peer.host_id
                );
            }
            Ok(())
        }
        PeerCmd::WgConfig { network, host_id } => {
            let fail = ctx.client.fail(format!(
                "reading the WireGuard configuration of peer {host_id} of network {network}"
            ));
            let config = ctx
                .client
                .api
                .get_external_peer_config(GetPeerRequest {
                    cladnet_id: network,
                    host_id,
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.emit(&config, |c| c.config.clone())
        }
    }
}

/// Peers as a table.
pub(crate) fn render_peers(resp: &ListPeersResponse) -> String {
    let mut t = Table::new([
        "HOST ID",
        "NAME",
        "OVERLAY IP",
        "STATE",
        "PUBLIC ENDPOINT",
        "PRIVATE ENDPOINT",
        "DATAPLANE",
    ]);
    for p in &resp.peers {
        t.row([
            p.host_id.as_str(),
            &p.host_name,
            &p.ip,
            &p.state,
            &p.public_endpoint,
            &p.private_endpoint,
            if p.external { "external" } else { &p.dataplane },
        ]);
    }
    t.render()
}

/// What runs on a peer.
fn kind(p: &Peer) -> &'static str {
    if p.external {
        "external WireGuard peer"
    } else {
        "agent"
    }
}

/// A link's path as its agent reported it: `direct`, `relay via <host id>`, `connecting`,
/// `unreachable`; empty (shown `-`) when not known.
fn path(l: &Link) -> String {
    match (l.path.as_str(), l.via.as_str()) {
        (p, "") => p.to_owned(),
        (p, via) => format!("{p} via {via}"),
    }
}

/// A peer as a `key: value` block followed by its links table.
pub(crate) fn render_peer(p: &Peer) -> String {
    let dataplane = match (p.dataplane.as_str(), p.dataplane_reason.as_str()) {
        (d, "") => d.to_owned(),
        ("", r) => format!("- ({r})"),
        (d, r) => format!("{d} ({r})"),
    };
    let overlay = if p.ipv4_cidr.is_empty() {
        p.ip.clone()
    } else {
        format!("{} in {}", p.ip, p.ipv4_cidr)
    };
    let cloud = p.details.clone().unwrap_or_default();
    let location = [
        cloud.provider_name.as_str(),
        &cloud.region_id,
        &cloud.availability_zone_id,
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" / ");
    let mut out = key_values(&[
        ("Host ID", p.host_id.clone()),
        ("Name", p.host_name.clone()),
        ("Network", p.cladnet_id.clone()),
        ("Overlay IP", overlay),
        ("State", p.state.clone()),
        ("Kind", kind(p).to_owned()),
        ("Node index", p.node_index.to_string()),
        ("Public IP", p.host_public_ip.clone()),
        ("Public endpoint", p.public_endpoint.clone()),
        ("Private endpoint", p.private_endpoint.clone()),
        ("Private CIDR", p.host_private_ipv4_cidr.clone()),
        ("Public key", p.public_key.clone()),
        ("Dataplane", dataplane),
        ("Capabilities", list(&p.capabilities)),
        (
            "Routes",
            list(
                &p.routes
                    .iter()
                    .map(|r| format!("{} ({})", r.prefix, r.state))
                    .collect::<Vec<_>>(),
            ),
        ),
        ("Cloud", location),
        ("Virtual network", cloud.virtual_network_id),
        ("Subnet", cloud.subnet_id),
        ("Revision", p.revision.to_string()),
    ]);
    out.push('\n');
    if p.links.is_empty() {
        out.push_str("Links: none\n");
        return out;
    }
    out.push_str("Links:\n");
    let mut t = Table::new([
        "HOST ID", "NAME", "PEER IP", "ENDPOINT", "MODE", "SCOPE", "STATE", "PATH", "PATH MTU",
    ]);
    for l in &p.links {
        let mtu = match l.path_mtu {
            0 => "-".to_owned(),
            m => m.to_string(),
        };
        t.row([
            l.host_id.as_str(),
            &l.host_name,
            &l.peer_ip,
            &l.selected_endpoint,
            &l.mode,
            &l.peer_scope,
            &l.state,
            &path(l),
            &mtu,
        ]);
    }
    for line in t.render().lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cladnet_proto::v1::CloudInformation;

    fn peer(id: &str, name: &str, ip: &str, state: &str) -> Peer {
        Peer {
            cladnet_id: "net-1".into(),
            host_id: id.into(),
            host_name: name.into(),
            ip: ip.into(),
            ipv4_cidr: "10.77.0.0/24".into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn renders_peer_table() {
        let mut a = peer("h-aaaa", "vm-a", "10.77.0.1", "up");
        a.public_endpoint = "203.0.113.5:8055".into();
        a.private_endpoint = "192.168.1.10:8055".into();
        a.dataplane = "xdp-driver".into();
        let b = peer("h-b", "vm-b-long-name", "10.77.0.2", "joining");
        let mut ext = peer("ext-laptop", "laptop", "10.77.0.9", "up");
        ext.external = true;
        let out = render_peers(&ListPeersResponse {
            peers: vec![a, b, ext],
        });
        assert_eq!(
            out,
            "\
HOST ID     NAME            OVERLAY IP  STATE    PUBLIC ENDPOINT   PRIVATE ENDPOINT   DATAPLANE
h-aaaa      vm-a            10.77.0.1   up       203.0.113.5:8055  192.168.1.10:8055  xdp-driver
h-b         vm-b-long-name  10.77.0.2   joining  -                 -                  -
ext-laptop  laptop          10.77.0.9   up       -                 -                  external
"
        );
    }

    #[test]
    fn renders_peer_with_links() {
        let mut p = peer("h-a", "vm-a", "10.77.0.1", "up");
        p.dataplane = "userspace".into();
        p.dataplane_reason = "no XDP support".into();
        p.details = Some(CloudInformation {
            provider_name: "aws".into(),
            region_id: "us-east-1".into(),
            ..Default::default()
        });
        let b = Link {
            host_id: "h-b".into(),
            host_name: "vm-b".into(),
            peer_ip: "10.77.0.2".into(),
            selected_endpoint: "198.51.100.7:8055".into(),
            mode: "sealed".into(),
            peer_scope: "inter".into(),
            state: "up".into(),
            path_mtu: 1400,
            path: "direct".into(),
            via: String::new(),
        };
        let c = Link {
            host_id: "h-c".into(),
            host_name: "vm-c".into(),
            peer_ip: "10.77.0.3".into(),
            path: "relay".into(),
            via: "h-r".into(),
            ..b.clone()
        };
        // An agent that does not report paths.
        let d = Link {
            host_id: "h-d".into(),
            host_name: "vm-d".into(),
            peer_ip: "10.77.0.4".into(),
            path: String::new(),
            path_mtu: 0,
            ..b.clone()
        };
        p.links = vec![b, c, d];
        let out = render_peer(&p);
        assert!(
            out.contains("Overlay IP:        10.77.0.1 in 10.77.0.0/24\n"),
            "{out}"
        );
        assert!(out.contains("Dataplane:         userspace (no XDP support)\n"));
        assert!(out.contains("Kind:              agent\n"));
        assert!(out.contains("Cloud:             aws / us-east-1\n"));
        assert!(
            out.ends_with(
                "Links:\n\
                 \x20 HOST ID  NAME  PEER IP    ENDPOINT           MODE    SCOPE  STATE  PATH           PATH MTU\n\
                 \x20 h-b      vm-b  10.77.0.2  198.51.100.7:8055  sealed  inter  up     direct         1400\n\
                 \x20 h-c      vm-c  10.77.0.3  198.51.100.7:8055  sealed  inter  up     relay via h-r  1400\n\
                 \x20 h-d      vm-d  10.77.0.4  198.51.100.7:8055  sealed  inter  up     -              -\n"
            ),
            "{out}"
        );
        assert!(render_peer(&peer("x", "", "", "")).ends_with("Links: none\n"));
        let mut ext = peer("ext-x", "x", "10.77.0.9", "up");
        ext.external = true;
        assert!(render_peer(&ext).contains("Kind:              external WireGuard peer\n"));
    }
}
