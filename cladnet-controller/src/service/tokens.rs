//! Join tokens: minted per network, stored hashed, listed, revoked.

use cladnet_proto::v1 as pb;
use cladnet_store::{Compare, Txn, TxnOp};
use tracing::info;

use super::Controller;
use crate::{
    auth::new_join_token,
    error::{ControllerError, Result},
    keys,
    model::{self, SCHEMA, TokenRecord, now_unix},
    validate,
};

/// Longest join-token lifetime accepted: ten years.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

impl Controller {
    /// Mints a join token for a network; the secret is returned once and stored hashed.
    pub async fn create_join_token(
        &self,
        req: pb::CreateJoinTokenRequest,
    ) -> Result<pb::CreateJoinTokenResponse> {
        validate::network_id("cladnetId", &req.cladnet_id)?;
        validate::text("description", &req.description, 256)?;
        if req.ttl_seconds > MAX_TTL_SECONDS {
            return Err(ControllerError::invalid(
                "ttlSeconds",
                format!("at most {MAX_TTL_SECONDS} (10 years); 0 = never expires"),
            ));
        }
        let net = req.cladnet_id.as_str();
        let (_, net_kv) = self.network(net).await?;
        let minted = new_join_token();
        let now = now_unix();
        let record = TokenRecord {
            schema: SCHEMA,
            id: minted.id.clone(),
            secret_sha256: minted.secret_sha256,
            description: req.description,
            created_at: now,
            expires_at: if req.ttl_seconds == 0 {
                0
            } else {
                now + req.ttl_seconds as i64
            },
        };
        let res = self
            .store
            .txn(
                Txn::new()
                    .when([
                        Compare::mod_revision(
                            keys::network(net),
                            cladnet_store::CompareOp::Equal,
                            net_kv.mod_revision,
                        ),
                        Compare::absent(keys::token(net, &minted.id)),
                    ])
                    .and_then([TxnOp::put(
                        keys::token(net, &minted.id),
                        model::encode(&record),
                    )]),
            )
            .await?;
        if !res.succeeded {
            return Err(ControllerError::Aborted(format!(
                "network {net:?} changed while minting a token; retry"
            )));
        }
        info!(network = %net, token_id = %minted.id, "join token created");
        Ok(pb::CreateJoinTokenResponse {
            info: Some(record.to_proto(net)),
            token: minted.token,
        })
    }

    /// The join tokens of a network (without secrets).
    pub async fn list_join_tokens(&self, net: &str) -> Result<pb::ListJoinTokensResponse> {
        validate::network_id("cladnetId", net)?;
        self.network(net).await?;
        let range = self.store.range(&keys::tokens(net)).await?;
        let tokens = range
            .kvs
            .iter()
            .map(|kv| Ok(model::decode::<TokenRecord>(kv)?.to_proto(net)))
            .collect::<Result<_>>()?;
        Ok(pb::ListJoinTokensResponse { tokens })
    }

    /// Revokes a join token: agents can no longer join with it (joined peers keep their
    /// sessions).
    pub async fn revoke_join_token(
        &self,
        net: &str,
        id: &str,
    ) -> Result<pb::RevokeJoinTokenResponse> {
        validate::network_id("cladnetId", net)?;
        validate::host_id("tokenId", id)?;
        let res = self.store.delete(&keys::token(net, id)).await?;
        if res.deleted == 0 {
            return Err(ControllerError::not_found(format!(
                "join token {id:?} of network {net:?}"
            )));
        }
        info!(network = %net, token_id = %id, "join token revoked");
        Ok(pb::RevokeJoinTokenResponse { is_succeeded: true })
    }
}
