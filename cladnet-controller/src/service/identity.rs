//! The controller's join key: an X25519 key pair and a nonce secret, kept in the store so that
//! every controller of one store proves and checks the same way (see `cladnet_proto::join` and
//! docs/security.md, "Join and node identity").
//!
//! Nonces are stateless: `expiry (8 bytes) | random (16) | tag (16)`, the tag a BLAKE2s-MAC of
//! the rest under the nonce secret. Any controller can check a nonce another one issued
//! without a store write.

use base64::Engine as _;
use blake2::{
    Blake2sMac256,
    digest::{FixedOutput as _, KeyInit, Mac},
};
use cladnet_proto::{join, v1 as pb};
use cladnet_store::{Compare, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tracing::info;

use super::Controller;
use crate::{
    error::{ControllerError, Result},
    keys,
    model::{self, SCHEMA, now_unix},
};

/// How long a nonce is accepted after it was issued.
const NONCE_LIFETIME_SECS: i64 = 60;
const NONCE_LEN: usize = 8 + 16 + 16;
const NONCE_LABEL: &[u8] = b"cladnet-join-nonce-v1";

/// The stored join key record.
#[derive(Clone, Deserialize, Serialize)]
pub(super) struct JoinKeyRecord {
    schema: u32,
    /// X25519 private key, base64.
    private_key: String,
    /// Key of the nonce MAC, base64.
    nonce_secret: String,
    created_at: i64,
}

impl model::Versioned for JoinKeyRecord {
    fn schema(&self) -> u32 {
        self.schema
    }
}

/// The join key in memory.
pub(super) struct JoinKey {
    private: [u8; join::LEN],
    public: [u8; join::LEN],
    nonce_secret: [u8; join::LEN],
}

impl std::fmt::Debug for JoinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinKey(..)")
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn random32() -> [u8; join::LEN] {
    let mut b = [0u8; join::LEN];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

fn decode32(what: &str, s: &str) -> Result<[u8; join::LEN]> {
    b64()
        .decode(s)
        .ok()
        .and_then(|v| <[u8; join::LEN]>::try_from(v).ok())
        .ok_or_else(|| ControllerError::Corrupt {
            key: keys::join_key().into(),
            reason: format!("{what} is not 32 bytes of base64"),
        })
}

impl JoinKey {
    fn from_record(r: &JoinKeyRecord) -> Result<Self> {
        let private = decode32("private_key", &r.private_key)?;
        Ok(Self {
            public: join::public_key(&private),
            private,
            nonce_secret: decode32("nonce_secret", &r.nonce_secret)?,
        })
    }

    fn tag(&self, head: &[u8]) -> [u8; 16] {
        let mut mac = <Blake2sMac256 as KeyInit>::new_from_slice(&self.nonce_secret)
            .expect("32 bytes is a valid BLAKE2s key");
        Mac::update(&mut mac, NONCE_LABEL);
        Mac::update(&mut mac, head);
        let full = mac.finalize_fixed();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// A fresh nonce valid until `expires_at`.
    fn nonce(&self, expires_at: i64) -> Vec<u8> {
        let mut n = Vec::with_capacity(NONCE_LEN);
        n.extend_from_slice(&expires_at.to_be_bytes());
        n.extend_from_slice(&random32()[..16]);
        let tag = self.tag(&n);
        n.extend_from_slice(&tag);
        n
    }

    /// Checks that `nonce` was issued by a controller of this store and has not expired.
    fn check_nonce(&self, nonce: &[u8], now: i64) -> Result<()> {
        let refused = |why: &str| {
            ControllerError::PermissionDenied(format!(
                "nonce: {why}; ask JoinChallenge for a new one"
            ))
        };
        if nonce.len() != NONCE_LEN {
            return Err(refused("not a nonce of this controller"));
        }
        let (head, tag) = nonce.split_at(24);
        if !bool::from(self.tag(head).ct_eq(tag)) {
            return Err(refused("not a nonce of this controller"));
        }
        let expires = i64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        if expires < now {
            return Err(refused("expired"));
        }
        Ok(())
    }
}

impl Controller {
    /// The join key, read from the store or created there once (the first controller to
    /// create it wins; the others read the winner's).
    pub(super) async fn join_key(&self) -> Result<&JoinKey> {
        self.join_key
            .get_or_try_init(|| async {
                let key = keys::join_key();
                if let Some(kv) = self.store.get(key).await? {
                    return JoinKey::from_record(&model::decode(&kv)?);
                }
                let record = JoinKeyRecord {
                    schema: SCHEMA,
                    private_key: b64().encode(random32()),
                    nonce_secret: b64().encode(random32()),
                    created_at: now_unix(),
                };
                let res = self
                    .store
                    .txn(
                        Txn::new()
                            .when([Compare::absent(key)])
                            .and_then([TxnOp::put(key, model::encode(&record))]),
                    )
                    .await?;
                if res.succeeded {
                    info!("created the controller's join key");
                    return JoinKey::from_record(&record);
                }
                let kv = self.store.get(key).await?.ok_or_else(|| {
                    ControllerError::Aborted("join key deleted while created; retry".into())
                })?;
                JoinKey::from_record(&model::decode(&kv)?)
            })
            .await
    }

    /// The controller's join key and a fresh nonce.
    pub async fn join_challenge(&self) -> Result<pb::JoinChallengeResponse> {
        let key = self.join_key().await?;
        let expires_at = now_unix() + NONCE_LIFETIME_SECS;
        Ok(pb::JoinChallengeResponse {
            controller_public_key: b64().encode(key.public),
            nonce: b64().encode(key.nonce(expires_at)),
            expires_at,
        })
    }

    /// Checks a Join's proof of possession of the private key of `req.public_key`.
    pub(super) async fn check_join_proof(&self, req: &pb::JoinRequest) -> Result<()> {
        if req.nonce.is_empty() || req.proof.is_empty() {
            return Err(ControllerError::invalid(
                if req.nonce.is_empty() {
                    "nonce"
                } else {
                    "proof"
                },
                "is required: call JoinChallenge and prove the key (agent too old?)",
            ));
        }
        let nonce = b64()
            .decode(&req.nonce)
            .map_err(|_| ControllerError::invalid("nonce", "not base64"))?;
        let proof = b64()
            .decode(&req.proof)
            .map_err(|_| ControllerError::invalid("proof", "not base64"))?;
        let agent = decode32("publicKey", &req.public_key)
            .map_err(|_| ControllerError::invalid("publicKey", "not 32 bytes of base64"))?;
        let key = self.join_key().await?;
        key.check_nonce(&nonce, now_unix())?;
        if join::verify(
            &key.private,
            &agent,
            &nonce,
            &req.cladnet_id,
            &req.host_id,
            &req.public_key,
            &proof,
        ) {
            Ok(())
        } else {
            Err(ControllerError::PermissionDenied(
                "proof: does not prove possession of the private key of publicKey".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> JoinKey {
        JoinKey::from_record(&JoinKeyRecord {
            schema: SCHEMA,
            private_key: b64().encode([3u8; 32]),
            nonce_secret: b64().encode([4u8; 32]),
            created_at: 0,
        })
        .unwrap()
    }

    #[test]
    fn nonces_are_checked_for_origin_and_age() {
        let k = key();
        let n = k.nonce(1000);
        k.check_nonce(&n, 999).unwrap();
        k.check_nonce(&n, 1000).unwrap();
        let msg = k.check_nonce(&n, 1001).unwrap_err().to_string();
        assert!(msg.contains("nonce: expired"), "{msg}");
        // A forged expiry breaks the tag.
        let mut forged = n.clone();
        forged[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        assert!(k.check_nonce(&forged, 1001).is_err());
        assert!(k.check_nonce(&n[..39], 999).is_err());
        // Another store's controller key does not accept it.
        let other = JoinKey::from_record(&JoinKeyRecord {
            schema: SCHEMA,
            private_key: b64().encode([3u8; 32]),
            nonce_secret: b64().encode([5u8; 32]),
            created_at: 0,
        })
        .unwrap();
        assert!(other.check_nonce(&n, 999).is_err());
    }
}
