//! Credentials: the admin token, per-network join tokens and per-node session tokens.
//!
//! Every secret is stored and compared only as a SHA-256 hash. Tokens carry a prefix that
//! says what they are, so a token presented to the wrong kind of call is refused with
//! PermissionDenied rather than looked up.
//!
//! - admin:   any string of 16+ characters, from the admin token file
//! - join:    `cnj.<id>.<secret>[.<pin>]` — `id` names the stored record, `secret` is
//!   checked; `pin` (64 hex digits, when the controller serves TLS) is the SHA-256 of the
//!   controller certificate's public key, for the agent (see `cladnet_proto::tls`)
//! - session: `cns.<secret>` — issued by Join, checked against the node's stored hash

use cladnet_proto::tls::Pin;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::error::{ControllerError, Result};

/// Prefix of join tokens.
pub const JOIN_PREFIX: &str = "cnj.";
/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "cns.";
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Hex SHA-256 of `s`.
pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// `n` random bytes from the OS, hex encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the OS random source works");
    hex(&buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bearer token of a gRPC call.
pub fn bearer_grpc(md: &MetadataMap) -> Result<&str> {
    let value = md.get("authorization").map(|v| v.to_str().unwrap_or(""));
    bearer(value)
}

/// The bearer token in an `authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str> {
    let header = header.ok_or_else(|| {
        ControllerError::Unauthenticated("missing authorization: Bearer <token>".into())
    })?;
    match header.strip_prefix("Bearer ").map(str::trim) {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(ControllerError::Unauthenticated(
            "authorization must be `Bearer <token>`".into(),
        )),
    }
}

/// Checks admin credentials.
#[derive(Clone)]
pub struct AdminAuth {
    sha256: String,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth(..)")
    }
}

impl AdminAuth {
    /// Accepts `token`.
    pub fn new(token: &str) -> Result<Self> {
        let token = token.trim();
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(ControllerError::invalid(
                "admin token",
                format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
            ));
        }
        Ok(Self {
            sha256: sha256_hex(token),
        })
    }

    /// Ok if `token` is the admin token.
    pub fn check(&self, token: &str) -> Result<()> {
        if token.starts_with(JOIN_PREFIX) || token.starts_with(SESSION_PREFIX) {
            return Err(ControllerError::PermissionDenied(
                "agent credentials cannot make admin calls".into(),
            ));
        }
        if sha256_hex(token) == self.sha256 {
            Ok(())
        } else {
            Err(ControllerError::Unauthenticated(
                "invalid admin token".into(),
            ))
        }
    }
}

/// A freshly minted join token.
pub struct NewJoinToken {
    /// Public id (the store key).
    pub id: String,
    /// The whole token to hand to agents.
    pub token: String,
    /// Hash of the secret part, to store.
    pub secret_sha256: String,
}

/// Mints a join token; with `pin`, the token carries the controller certificate's pin.
pub fn new_join_token(pin: Option<Pin>) -> NewJoinToken {
    let id = random_hex(6);
    let secret = random_hex(24);
    let token = match pin {
        Some(p) => format!("{JOIN_PREFIX}{id}.{secret}.{}", p.hex()),
        None => format!("{JOIN_PREFIX}{id}.{secret}"),
    };
    NewJoinToken {
        token,
        secret_sha256: sha256_hex(&secret),
        id,
    }
}

/// Splits a join token into (id, secret); the pin, if any, is the agent's business.
pub fn parse_join_token(token: &str) -> Result<(&str, &str)> {
    if token.starts_with(SESSION_PREFIX) {
        return Err(ControllerError::PermissionDenied(
            "session tokens cannot join; use a join token".into(),
        ));
    }
    cladnet_proto::tls::parse_join_token(token)
        .map(|p| (p.id, p.secret))
        .ok_or_else(|| {
            ControllerError::Unauthenticated("not a join token (cnj.<id>.<secret>[.<pin>])".into())
        })
}

/// Mints a session token; returns (token, hash to store).
pub fn new_session_token() -> (String, String) {
    let token = format!("{SESSION_PREFIX}{}", random_hex(24));
    let hash = sha256_hex(&token);
    (token, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_checks() {
        let auth = AdminAuth::new("0123456789abcdef").unwrap();
        auth.check("0123456789abcdef").unwrap();
        assert!(matches!(
            auth.check("wrong-token-value"),
            Err(ControllerError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.check("cnj.a.b"),
            Err(ControllerError::PermissionDenied(_))
        ));
        assert!(AdminAuth::new("short").is_err());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        assert!(matches!(
            bearer(None),
            Err(ControllerError::Unauthenticated(_))
        ));
        assert!(matches!(
            bearer(Some("Basic abc")),
            Err(ControllerError::Unauthenticated(_))
        ));
        assert!(matches!(
            bearer(Some("Bearer ")),
            Err(ControllerError::Unauthenticated(_))
        ));
    }

    #[test]
    fn join_tokens_round_trip() {
        let t = new_join_token(None);
        let (id, secret) = parse_join_token(&t.token).unwrap();
        assert_eq!(id, t.id);
        assert_eq!(sha256_hex(secret), t.secret_sha256);
        // With a pin: a fourth field, ignored by the controller, read by the agent.
        let pin = Pin::of_spki(b"spki");
        let t = new_join_token(Some(pin));
        let (id, secret) = parse_join_token(&t.token).unwrap();
        assert_eq!(id, t.id);
        assert_eq!(sha256_hex(secret), t.secret_sha256);
        assert_eq!(
            cladnet_proto::tls::parse_join_token(&t.token).unwrap().pin,
            Some(pin)
        );
        assert!(t.token.ends_with(&pin.hex()));
        assert!(parse_join_token("cnj.nodot").is_err());
        assert!(matches!(
            parse_join_token("cns.x"),
            Err(ControllerError::PermissionDenied(_))
        ));
        let (s, h) = new_session_token();
        assert!(s.starts_with(SESSION_PREFIX));
        assert_eq!(sha256_hex(&s), h);
    }
}
