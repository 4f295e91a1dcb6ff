//! `cladnet network ...`: recommend an address space; create, list, show, update and delete
//! networks.

use cladnet_proto::v1::{
    GetNetworkRequest, ListNetworksRequest, ListNetworksResponse, Network,
    RecommendAddressSpaceRequest, RecommendAddressSpaceResponse,
};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use super::Ctx;
use crate::{
    output::{Table, key_values, list},
    parse,
};

/// `cladnet network` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum NetworkCmd {
    /// Recommend a private address space that overlaps none of the hosts' CIDRs.
    Recommend(RecommendArgs),
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "ls")]
    List,
    /// Show one network.
    #[command(visible_alias = "get")]
    Show {
        /// Network id.
        id: String,
    },
    /// Change a network's name, description, rule type, encryption or route settings.
    Update(UpdateArgs),
    /// Delete a network with its peers, addresses, join tokens and tests.
    #[command(visible_alias = "rm")]
    Delete {
        /// Network id.
        id: String,
    },
}

/// `cladnet network recommend`.
#[derive(Debug, Args)]
pub(crate) struct RecommendArgs {
    /// A host CIDR to avoid, e.g. 192.168.1.10/24 (repeatable). Without any and with
    /// --network, the CIDRs the network's peers reported are used.
    #[arg(long = "cidr", value_name = "CIDR", value_parser = parse::ipv4_cidr)]
    cidrs: Vec<String>,
    /// Number of hosts the space must fit (default: the number of CIDRs, at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    hosts: Option<u32>,
    /// Network whose peers' CIDRs to avoid.
    #[arg(long, value_name = "ID")]
    network: Option<String>,
}

/// `cladnet network create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Name of the network.
    name: String,
    /// Overlay address space (a private IPv4 CIDR such as 10.77.0.0/24), or `auto` to let the
    /// controller recommend one.
    #[arg(long, value_name = "CIDR|auto", value_parser = parse::address_space)]
    cidr: String,
    /// Network id (a-z, 0-9, -; 1..=63 characters). Defaults to NAME when NAME is a valid id,
    /// else the controller generates one.
    #[arg(long, value_name = "ID", value_parser = parse::network_id)]
    id: Option<String>,
    /// Free-text description.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// Endpoint rule (default basic).
    #[arg(long, value_enum)]
    rule_type: Option<RuleType>,
    /// Link encryption (default always).
    #[arg(long, value_enum)]
    encryption: Option<Encryption>,
    /// How prefixes peers advertise are admitted (default auto).
    #[arg(long, value_enum)]
    route_approval: Option<RouteApproval>,
    /// Whether a peer may advertise 0.0.0.0/0 as an exit node (default deny).
    #[arg(long, value_enum)]
    exit_nodes: Option<ExitNodes>,
}

/// `cladnet network update`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("changes").required(true).multiple(true)))]
pub(crate) struct UpdateArgs {
    /// Network id.
    id: String,
    /// New name.
    #[arg(long, group = "changes")]
    name: Option<String>,
    /// New description (an empty string clears it).
    #[arg(long, value_name = "TEXT", group = "changes")]
    description: Option<String>,
    /// New endpoint rule.
    #[arg(long, value_enum, group = "changes")]
    rule_type: Option<RuleType>,
    /// New link encryption.
    #[arg(long, value_enum, group = "changes")]
    encryption: Option<Encryption>,
    /// How prefixes peers advertise are admitted from now on (pending ones stay pending).
    #[arg(long, value_enum, group = "changes")]
    route_approval: Option<RouteApproval>,
    /// Whether a peer may advertise 0.0.0.0/0 (deny is refused while one does).
    #[arg(long, value_enum, group = "changes")]
    exit_nodes: Option<ExitNodes>,
}

/// How a network admits advertised prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RouteApproval {
    /// Every valid prefix is routed as soon as it is advertised.
    Auto,
    /// A prefix waits until `cladnet route approve`.
    Manual,
}

impl RouteApproval {
    /// The API value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
        }
    }
}

/// Whether a network admits an exit node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExitNodes {
    /// 0.0.0.0/0 is refused.
    Deny,
    /// One peer may advertise 0.0.0.0/0.
    Allow,
}

impl ExitNodes {
    /// The API value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// Which underlay endpoint peers use to reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RuleType {
    /// Public endpoints.
    Basic,
    /// The private underlay address between peers of one site, public ones across sites.
    CostPrioritized,
}

impl RuleType {
    /// The API value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::CostPrioritized => "cost-prioritized",
        }
    }
}

/// When links are encrypted (WireGuard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Encryption {
    /// Every link.
    Always,
    /// Links between different sites only.
    InterSite,
    /// No link.
    Never,
}

impl Encryption {
    /// The API value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::InterSite => "inter-site",
            Self::Never => "never",
        }
    }
}

/// Runs a `cladnet network` subcommand.
pub(crate) async fn run(cmd: NetworkCmd, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Recommend(args) => recommend(args, ctx).await,
        NetworkCmd::Create(args) => create(args, ctx).await,
        NetworkCmd::List => {
            let fail = ctx.client.fail("listing networks");
            let resp = ctx
                .client
                .api
                .list_networks(ListNetworksRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            ctx.emit(&resp, render_list)
        }
        NetworkCmd::Show { id } => {
            let network = get(&id, ctx).await?;
            ctx.emit(&network, render_network)
        }
        NetworkCmd::Update(args) => update(args, ctx).await,
        NetworkCmd::Delete { id } => {
            let action = format!("deleting network {id}");
            let fail = ctx.client.fail(&action);
            let resp = ctx
                .client
                .api
                .delete_network(GetNetworkRequest {
                    cladnet_id: id.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.ensure_succeeded(resp.is_succeeded, &action, &resp.message, &resp)?;
            ctx.emit(&resp, |r| {
                let mut s = format!("Deleted network {id}.\n");
                if !r.message.is_empty() {
                    s.push_str(&r.message);
                    s.push('\n');
                }
                s
            })
        }
    }
}

async fn recommend(args: RecommendArgs, ctx: &mut Ctx) -> anyhow::Result<()> {
    let fail = ctx.client.fail("recommending an address space");
    let resp = ctx
        .client
        .api
        .recommend_address_space(RecommendAddressSpaceRequest {
            ipv4_cidrs: args.cidrs,
            hosts: args.hosts.unwrap_or(0),
            cladnet_id: args.network.unwrap_or_default(),
        })
        .await
        .map_err(fail)?
        .into_inner();
    ctx.emit(&resp, render_recommendation)
}

async fn create(args: CreateArgs, ctx: &mut Ctx) -> anyhow::Result<()> {
    let fail = ctx.client.fail(format!("creating network {:?}", args.name));
    let network = Network {
        cladnet_id: args
            .id
            .or_else(|| default_id(&args.name))
            .unwrap_or_default(),
        name: args.name,
        ipv4_address_space: args.cidr,
        description: args.description.unwrap_or_default(),
        rule_type: args
            .rule_type
            .map(RuleType::as_str)
            .unwrap_or_default()
            .into(),
        encryption: args
            .encryption
            .map(Encryption::as_str)
            .unwrap_or_default()
            .into(),
        revision: 0,
        route_approval: args
            .route_approval
            .map(RouteApproval::as_str)
            .unwrap_or_default()
            .into(),
        exit_nodes: args
            .exit_nodes
            .map(ExitNodes::as_str)
            .unwrap_or_default()
            .into(),
    };
    let created = ctx
        .client
        .api
        .create_network(network)
        .await
        .map_err(fail)?
        .into_inner();
    ctx.emit(&created, |n| {
        // Every other command takes the id, not the name: say which one to use.
        let id = &n.cladnet_id;
        let first = if *id == n.name {
            format!("Created network {id}.\n")
        } else {
            format!(
                "Created network {id} (name {:?}); other commands take the id: cladnet peers {id}\n",
                n.name
            )
        };
        first + &render_network(n)
    })
}

/// The id a network created without `--id` gets: its name when that is a valid id (so
/// `cladnet peers NAME` works), else none and the controller generates one.
fn default_id(name: &str) -> Option<String> {
    // A network id follows the rules of an external peer's name (a DNS label), which the
    // controller checks too.
    parse::peer_name(name).ok()
}

/// Reads one network.
async fn get(id: &str, ctx: &mut Ctx) -> anyhow::Result<Network> {
    let fail = ctx.client.fail(format!("reading network {id}"));
    Ok(ctx
        .client
        .api
        .get_network(GetNetworkRequest {
            cladnet_id: id.to_owned(),
        })
        .await
        .map_err(fail)?
        .into_inner())
}

/// Reads the network, applies the changes and writes it back with the revision read, so a
/// concurrent change makes the update fail rather than be lost.
async fn update(args: UpdateArgs, ctx: &mut Ctx) -> anyhow::Result<()> {
    let mut network = get(&args.id, ctx).await?;
    if let Some(name) = args.name {
        network.name = name;
    }
    if let Some(description) = args.description {
        network.description = description;
    }
    if let Some(rule_type) = args.rule_type {
        network.rule_type = rule_type.as_str().into();
    }
    if let Some(encryption) = args.encryption {
        network.encryption = encryption.as_str().into();
    }
    if let Some(approval) = args.route_approval {
        network.route_approval = approval.as_str().into();
    }
    if let Some(exit_nodes) = args.exit_nodes {
        network.exit_nodes = exit_nodes.as_str().into();
    }
    let fail = ctx.client.fail(format!("updating network {}", args.id));
    let updated = ctx
        .client
        .api
        .update_network(network)
        .await
        .map_err(fail)?
        .into_inner();
    ctx.emit(&updated, render_network)
}

/// A network as a `key: value` block.
pub(crate) fn render_network(n: &Network) -> String {
    key_values(&[
        ("ID", n.cladnet_id.clone()),
        ("Name", n.name.clone()),
        ("Address space", n.ipv4_address_space.clone()),
        ("Description", n.description.clone()),
        ("Rule type", n.rule_type.clone()),
        ("Encryption", n.encryption.clone()),
        ("Route approval", n.route_approval.clone()),
        ("Exit nodes", n.exit_nodes.clone()),
        ("Revision", n.revision.to_string()),
    ])
}

/// Networks as a table.
pub(crate) fn render_list(resp: &ListNetworksResponse) -> String {
    let mut t = Table::new([
        "ID",
        "NAME",
        "ADDRESS SPACE",
        "RULE TYPE",
        "ENCRYPTION",
        "DESCRIPTION",
    ]);
    for n in &resp.cladnet_specifications {
        t.row([
            n.cladnet_id.as_str(),
            &n.name,
            &n.ipv4_address_space,
            &n.rule_type,
            &n.encryption,
            &n.description,
        ]);
    }
    t.render()
}

/// A recommendation as a `key: value` block.
pub(crate) fn render_recommendation(r: &RecommendAddressSpaceResponse) -> String {
    key_values(&[
        (
            "Recommended",
            r.recommended_ipv4_private_address_space.clone(),
        ),
        ("In 10.0.0.0/8", list(&r.address_space10s)),
        ("In 172.16.0.0/12", list(&r.address_space172s)),
        ("In 192.168.0.0/16", list(&r.address_space192s)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_network_list() {
        let resp = ListNetworksResponse {
            cladnet_specifications: vec![
                Network {
                    cladnet_id: "net-1".into(),
                    name: "prod".into(),
                    ipv4_address_space: "10.77.0.0/24".into(),
                    rule_type: "basic".into(),
                    encryption: "always".into(),
                    ..Default::default()
                },
                Network {
                    cladnet_id: "lab".into(),
                    name: "lab network".into(),
                    ipv4_address_space: "192.168.200.0/24".into(),
                    rule_type: "cost-prioritized".into(),
                    encryption: "inter-site".into(),
                    description: "tests".into(),
                    revision: 4,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            render_list(&resp),
            "\
ID     NAME         ADDRESS SPACE     RULE TYPE         ENCRYPTION  DESCRIPTION
net-1  prod         10.77.0.0/24      basic             always      -
lab    lab network  192.168.200.0/24  cost-prioritized  inter-site  tests
"
        );
    }

    #[test]
    fn the_name_is_the_default_id_when_valid() {
        assert_eq!(default_id("prod").as_deref(), Some("prod"));
        assert_eq!(default_id("web-2").as_deref(), Some("web-2"));
        for not_an_id in ["Prod", "web tier", "-x", "x-", "", &"n".repeat(64)] {
            assert_eq!(default_id(not_an_id), None, "{not_an_id:?}");
        }
    }

    #[test]
    fn renders_recommendation() {
        let r = RecommendAddressSpaceResponse {
            recommended_ipv4_private_address_space: "10.0.0.0/28".into(),
            address_space10s: vec!["10.0.0.0/28".into(), "10.0.0.16/28".into()],
            address_space172s: vec![],
            address_space192s: vec!["192.168.0.0/28".into()],
        };
        assert_eq!(
            render_recommendation(&r),
            "\
Recommended:        10.0.0.0/28
In 10.0.0.0/8:      10.0.0.0/28, 10.0.0.16/28
In 172.16.0.0/12:   -
In 192.168.0.0/16:  192.168.0.0/28
"
        );
    }
}
