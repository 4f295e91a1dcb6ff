//! `cladnet token create|list|revoke`: join tokens, the credentials agents join a network with.

use cladnet_proto::v1::{
    CreateJoinTokenRequest, CreateJoinTokenResponse, GetNetworkRequest, JoinToken,
    ListJoinTokensResponse, RevokeJoinTokenRequest,
};
use clap::Subcommand;

use super::Ctx;
use crate::{
    output::{Table, key_values, unix_time},
    parse,
};

/// `cladnet token` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCmd {
    /// Create a join token; the secret is printed once and cannot be shown again.
    Create {
        /// Network id.
        network: String,
        /// Free-text description, e.g. what the token is for.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Lifetime such as 30m, 1h, 7d or 1h30m (units s, m, h, d, w). Never expires when
        /// omitted.
        #[arg(long, value_name = "DURATION", value_parser = parse::duration_secs)]
        ttl: Option<u64>,
        /// Joins the token admits (a node re-joining with its own key uses none up); 0 or
        /// omitted = unlimited. Give each VM its own `--uses 1` token where you can.
        #[arg(long, value_name = "N")]
        uses: Option<u32>,
    },
    /// List a network's join tokens (ids and expiry; never the secrets).
    #[command(visible_alias = "ls")]
    List {
        /// Network id.
        network: String,
    },
    /// Revoke a join token (peers that already joined stay).
    Revoke {
        /// Network id.
        network: String,
        /// Token id (from `cladnet token list`).
        token_id: String,
    },
}

/// Runs a `cladnet token` subcommand.
pub(crate) async fn run(cmd: TokenCmd, ctx: &mut Ctx) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            network,
            description,
            ttl,
            uses,
        } => {
            let fail = ctx
                .client
                .fail(format!("creating a join token for network {network}"));
            let resp = ctx
                .client
                .api
                .create_join_token(CreateJoinTokenRequest {
                    cladnet_id: network,
                    description: description.unwrap_or_default(),
                    ttl_seconds: ttl.unwrap_or(0),
                    max_uses: uses.unwrap_or(0),
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.emit(&resp, render_created)?;
            if !ctx.json {
                eprintln!("Store the token now: it is not shown again.");
            }
            Ok(())
        }
        TokenCmd::List { network } => {
            let fail = ctx
                .client
                .fail(format!("listing the join tokens of network {network}"));
            let resp = ctx
                .client
                .api
                .list_join_tokens(GetNetworkRequest {
                    cladnet_id: network,
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.emit(&resp, render_list)
        }
        TokenCmd::Revoke { network, token_id } => {
            let action = format!("revoking join token {token_id} of network {network}");
            let fail = ctx.client.fail(&action);
            let resp = ctx
                .client
                .api
                .revoke_join_token(RevokeJoinTokenRequest {
                    cladnet_id: network.clone(),
                    token_id: token_id.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            ctx.ensure_succeeded(resp.is_succeeded, &action, "", &resp)?;
            ctx.emit(&resp, |_| {
                format!("Revoked join token {token_id} of network {network}.\n")
            })
        }
    }
}

/// A new token: its record and the secret.
pub(crate) fn render_created(r: &CreateJoinTokenResponse) -> String {
    let info = r.info.clone().unwrap_or_default();
    let mut pairs = info_pairs(&info);
    pairs.push((
        "TLS pin",
        if r.controller_pin.is_empty() {
            "none (the controller serves plain HTTP)".into()
        } else {
            format!("{} (in the token)", r.controller_pin)
        },
    ));
    pairs.push(("Token", r.token.clone()));
    key_values(&pairs)
}

/// `used/max`, or `unlimited`.
fn uses(t: &JoinToken) -> String {
    if t.max_uses == 0 {
        "unlimited".into()
    } else {
        format!("{}/{}", t.uses, t.max_uses)
    }
}

fn info_pairs(t: &JoinToken) -> Vec<(&'static str, String)> {
    vec![
        ("Token ID", t.token_id.clone()),
        ("Network", t.cladnet_id.clone()),
        ("Description", t.description.clone()),
        ("Created", unix_time(t.created_at, "-")),
        ("Expires", unix_time(t.expires_at, "never")),
        ("Uses", uses(t)),
    ]
}

/// Join tokens as a table.
pub(crate) fn render_list(r: &ListJoinTokensResponse) -> String {
    let mut t = Table::new(["TOKEN ID", "DESCRIPTION", "CREATED", "EXPIRES", "USES"]);
    for tok in &r.tokens {
        t.row([
            tok.token_id.clone(),
            tok.description.clone(),
            unix_time(tok.created_at, "-"),
            unix_time(tok.expires_at, "never"),
            uses(tok),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tokens() {
        let r = ListJoinTokensResponse {
            tokens: vec![
                JoinToken {
                    token_id: "t1".into(),
                    cladnet_id: "net-1".into(),
                    description: "ci runners".into(),
                    created_at: 1_700_000_000,
                    expires_at: 1_700_003_600,
                    max_uses: 1,
                    uses: 1,
                },
                JoinToken {
                    token_id: "t2".into(),
                    created_at: 1_700_000_000,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            render_list(&r),
            "\
TOKEN ID  DESCRIPTION  CREATED               EXPIRES               USES
t1        ci runners   2023-11-14T22:13:20Z  2023-11-14T23:13:20Z  1/1
t2        -            2023-11-14T22:13:20Z  never                 unlimited
"
        );
    }

    #[test]
    fn created_token_shows_secret() {
        let r = CreateJoinTokenResponse {
            info: Some(JoinToken {
                token_id: "t1".into(),
                cladnet_id: "net-1".into(),
                ..Default::default()
            }),
            token: "cnj.t1.s3cret".into(),
            controller_pin: String::new(),
        };
        let out = render_created(&r);
        assert!(out.contains("Token ID:     t1\n"), "{out}");
        assert!(out.contains("Expires:      never\n"));
        assert!(out.contains("Uses:         unlimited\n"), "{out}");
        assert!(out.contains("TLS pin:      none"), "{out}");
        assert!(out.ends_with("Token:        cnj.t1.s3cret\n"));
        let pinned = CreateJoinTokenResponse {
            controller_pin: format!("sha256:{}", "ab".repeat(32)),
            ..r
        };
        let out = render_created(&pinned);
        assert!(
            out.contains(&format!(
                "TLS pin:      sha256:{} (in the token)\n",
                "ab".repeat(32)
            )),
            "{out}"
        );
    }
}
