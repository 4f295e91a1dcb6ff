//! `cladnet command NETWORK up|down|enable-encryption|disable-encryption [--host HOST_ID]`,
//! `cladnet command NETWORK advertise-routes --host HOST_ID [--routes PREFIX,...]`.

use cladnet_proto::v1::{SendCommandRequest, SendCommandResponse};
use clap::{Args, ValueEnum};

use super::{Ctx, plural};
use crate::{output::list, parse};

/// `cladnet command` arguments.
#[derive(Debug, Args)]
pub(crate) struct CommandArgs {
    /// Network id.
    network: String,
    /// What the agents should do.
    #[arg(value_enum)]
    command: RemoteCommand,
    /// Send to this peer only (default: every peer of the network).
    #[arg(long, value_name = "HOST_ID")]
    host: Option<String>,
    /// advertise-routes: the prefixes the agent advertises from now on (comma-separated or
    /// repeated; none withdraws every route).
    #[arg(
        long = "routes",
        value_name = "PREFIX",
        value_delimiter = ',',
        value_parser = parse::ipv4_cidr
    )]
    routes: Vec<String>,
}

/// A remote command to agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RemoteCommand {
    /// Bring the overlay interface up.
    Up,
    /// Bring the overlay interface down.
    Down,
    /// Seal every link of the network (WireGuard): sets its encryption policy to `always`.
    /// Whole network only (--host is refused).
    EnableEncryption,
    /// Send every link of the network in plain CLAD encapsulation: sets its encryption policy
    /// to `never`. Whole network only (--host is refused).
    DisableEncryption,
    /// Replace the prefixes one agent (--host) advertises with --routes, until it restarts
    /// (its configuration holds the lasting set).
    AdvertiseRoutes,
}

impl RemoteCommand {
    /// The API value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::EnableEncryption => "enable-encryption",
            Self::DisableEncryption => "disable-encryption",
            Self::AdvertiseRoutes => "advertise-routes",
        }
    }
}

/// Sends a remote command.
pub(crate) async fn run(args: CommandArgs, ctx: &mut Ctx) -> anyhow::Result<()> {
    let target = match &args.host {
        Some(h) => format!("peer {h} of network {}", args.network),
        None => format!("network {}", args.network),
    };
    let action = format!("sending {} to {target}", args.command.as_str());
    let fail = ctx.client.fail(&action);
    let resp = ctx
        .client
        .api
        .send_command(SendCommandRequest {
            cladnet_id: args.network,
            host_id: args.host.unwrap_or_default(),
            command_type: args.command.as_str().into(),
            routes: args.routes,
        })
        .await
        .map_err(fail)?
        .into_inner();
    ctx.ensure_succeeded(resp.is_succeeded, &action, &resp.message, &resp)?;
    let command = args.command.as_str();
    ctx.emit(&resp, |r| render(command, r))
}

/// The outcome of a command.
pub(crate) fn render(command: &str, r: &SendCommandResponse) -> String {
    let mut s = format!(
        "Command {command} sent to {}",
        plural(r.host_ids.len(), "peer")
    );
    if r.host_ids.is_empty() {
        s.push_str(".\n");
    } else {
        s.push_str(&format!(": {}\n", list(&r.host_ids)));
    }
    if !r.message.is_empty() {
        s.push_str(&r.message);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_outcome() {
        let r = SendCommandResponse {
            is_succeeded: true,
            message: String::new(),
            host_ids: vec!["h-a".into(), "h-b".into()],
        };
        assert_eq!(render("up", &r), "Command up sent to 2 peers: h-a, h-b\n");
        let r = SendCommandResponse {
            is_succeeded: true,
            message: "no peers".into(),
            host_ids: vec![],
        };
        assert_eq!(
            render("down", &r),
            "Command down sent to 0 peers.\nno peers\n"
        );
    }
}
