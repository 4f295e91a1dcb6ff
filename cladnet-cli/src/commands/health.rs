//! `cladnet health`: liveness of the controller and its store (needs no token).

use cladnet_proto::v1::{HealthRequest, HealthResponse};

use super::Ctx;
use crate::{error::CliError, output::key_values};

/// Checks the controller's health; an unhealthy controller exits with the unavailable code.
pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let fail = ctx.client.fail("checking the controller's health");
    let resp = ctx
        .client
        .api
        .health(HealthRequest {})
        .await
        .map_err(fail)?
        .into_inner();
    ctx.emit(&resp, render)?;
    if resp.status != "healthy" {
        return Err(CliError::Unhealthy {
            status: if resp.status.is_empty() {
                "unhealthy".into()
            } else {
                resp.status.clone()
            },
            message: if resp.message.is_empty() {
                "no details".into()
            } else {
                resp.message
            },
        }
        .into());
    }
    Ok(())
}

/// Health as a `key: value` block.
pub(crate) fn render(h: &HealthResponse) -> String {
    key_values(&[
        ("Status", h.status.clone()),
        ("Store", h.store.clone()),
        ("Revision", h.revision.to_string()),
        ("Message", h.message.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_health() {
        let h = HealthResponse {
            status: "healthy".into(),
            store: "embedded".into(),
            revision: 42,
            message: String::new(),
        };
        assert_eq!(
            render(&h),
            "Status:    healthy\nStore:     embedded\nRevision:  42\nMessage:   -\n"
        );
    }
}
