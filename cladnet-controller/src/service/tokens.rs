//! Join tokens: minted per network, stored hashed, listed, revoked.

use cladnet_proto::v1 as pb;
use cladnet_store::{Compare, CompareOp, KeyValue, Txn, TxnOp};
use tracing::info;

use super::Controller;
use crate::{
    auth::{new_join_token, parse_join_token, sha256_hex},
    error::{ControllerError, Result},
    keys,
    model::{self, SCHEMA, TokenRecord, now_unix},
    validate,
};

/// What a Join's transaction adds to count a join token's use: a compare that the token
/// record is unchanged since it was checked, and the record with one more use.
#[derive(Debug, Default)]
pub(crate) struct TokenUse {
    /// Compares to add to the Join's transaction.
    pub(crate) compares: Vec<Compare>,
    /// Operations to add to it.
    pub(crate) ops: Vec<TxnOp>,
}

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
        let minted = new_join_token(self.tls_pin);
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
            max_uses: req.max_uses,
            uses: 0,
        };
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
        info!(network = %net, token_id = %minted.id, max_uses = record.max_uses, "join token created");
        Ok(pb::CreateJoinTokenResponse {
            info: Some(record.to_proto(net)),
            token: minted.token,
            controller_pin: self.tls_pin.map(|p| p.to_string()).unwrap_or_default(),
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

/// Checks join token `bearer` of network `net` for a Join, against its record `kv` (`None`:
/// absent) as the Join read it, and returns what the Join's store transaction must add so the
/// token's use is counted atomically with the join.
///
/// `rejoin`: the joining host id is already bound to the very public key it presents (a
/// restarted agent). A re-join uses up nothing and is admitted by an expired or used-up
/// token (but not a revoked one or a wrong secret): expiry and use limits bound how many
/// *new* nodes a token admits, as Tailscale's auth keys do; a node keeps its identity.
///
/// Add the returned compares and ops to the Join's transaction: a lost race (the record
/// changed since `kv` was read) fails it, and the retry reads the token afresh.
pub(crate) fn token_use(
    net: &str,
    bearer: &str,
    kv: Option<KeyValue>,
    rejoin: bool,
) -> Result<TokenUse> {
    let (id, secret) = parse_join_token(bearer)?;
    let key = keys::token(net, id);
    let kv = kv.ok_or_else(|| {
        ControllerError::Unauthenticated(format!(
            "unknown or revoked join token for network {net:?}"
        ))
    })?;
    let mut token: TokenRecord = model::decode(&kv)?;
    if sha256_hex(secret) != token.secret_sha256 {
        return Err(ControllerError::Unauthenticated(
            "invalid join token".into(),
        ));
    }
    if rejoin {
        return Ok(TokenUse::default());
    }
    if token.expires_at != 0 && token.expires_at <= now_unix() {
        return Err(ControllerError::PermissionDenied(format!(
            "join token {id} expired"
        )));
    }
    if token.max_uses == 0 {
        // Unlimited tokens are not counted: a write per join would make every concurrent
        // join with one token race on one record.
        return Ok(TokenUse::default());
    }
    if token.uses >= token.max_uses {
        return Err(ControllerError::PermissionDenied(format!(
            "join token {id} is used up ({} of {} joins); create a new one",
            token.uses, token.max_uses
        )));
    }
    token.uses += 1;
    Ok(TokenUse {
        compares: vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            kv.mod_revision,
        )],
        ops: vec![TxnOp::put(key, model::encode(&token))],
    })
}
