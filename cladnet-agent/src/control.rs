//! The agent's controller client: a list of controller endpoints with failover.
//!
//! Calls go to the current controller; when it is unreachable (transport error or
//! `Unavailable`), the client moves to the next endpoint and retries, once around the list.
//! Controllers are stateless over a shared store, so any of them can serve any call; a Watch
//! resumed on another controller with `fromRevision` continues exactly where it stopped.
//!
//! `https://` controllers are trusted by the pin of the join token, a CA file or the system
//! roots (see `cladnet_proto::tls`). A controller that answers but cannot be trusted (wrong
//! pin, unknown CA, TLS against plain HTTP or the reverse) is a configuration error: when no
//! endpoint works and one failed that way, the call fails with [`ControlError::Tls`] instead
//! of being retried as unreachable.

use std::time::Duration;

use cladnet_proto::{
    tls::{self, ClientTls, ConnectError},
    v1::{self as pb, agent_service_client::AgentServiceClient},
};
use tonic::{Code, Request, Status, Streaming, transport::Channel};
use tracing::{info, warn};

/// The largest message the agent accepts from a controller. A Watch snapshot carries every
/// peer of the network in one message: about 620 bytes a peer with full cloud details and two
/// routes (see the test below), so tonic's default of 4 MiB ends near 6 700 peers. 64 MiB
/// leaves room for about 100 000.
pub const MAX_MESSAGE: usize = 64 << 20;

/// A controller call failed on every endpoint, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// An endpoint is not a valid URL.
    #[error("controller endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// No endpoint could be reached.
    #[error("{call}: no controller reachable (tried {tried}): {last}")]
    Unreachable {
        /// The call.
        call: &'static str,
        /// Endpoints tried.
        tried: String,
        /// The last error.
        last: String,
    },
    /// A controller's JoinChallenge answer is unusable.
    #[error("JoinChallenge answer of {endpoint}: {reason}")]
    BadChallenge {
        /// Which controller.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A controller was reached but could not be trusted, or speaks the other protocol.
    #[error("{call}: {reason}")]
    Tls {
        /// The call.
        call: &'static str,
        /// What is wrong, naming the endpoint.
        reason: String,
    },
    /// A controller answered with an error (not a reachability problem).
    #[error("{call} refused by {endpoint}: {status}")]
    Refused {
        /// The call.
        call: &'static str,
        /// Which controller.
        endpoint: String,
        /// Its answer.
        status: Status,
    },
}

impl ControlError {
    /// The controller refused the credentials: the session was revoked (peer deleted) or
    /// replaced (the node joined again elsewhere). The remedy is to join again.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if status.code() == Code::Unauthenticated)
    }
}

/// A client over several controller endpoints.
#[derive(Debug)]
pub struct ControlClient {
    endpoints: Vec<String>,
    current: usize,
    channel: Option<Channel>,
    connect_timeout: Duration,
    tls: ClientTls,
}

impl ControlClient {
    /// A client for `endpoints` (`http://` or `https://` URLs), tried in order; `tls` says
    /// how an `https://` controller is trusted.
    pub fn new(endpoints: Vec<String>, tls: ClientTls) -> Result<Self, ControlError> {
        if endpoints.is_empty() {
            return Err(ControlError::BadEndpoint {
                endpoint: String::new(),
                reason: "at least one controller is needed".into(),
            });
        }
        for e in &endpoints {
            tls::check_url(e).map_err(|err| ControlError::BadEndpoint {
                endpoint: e.clone(),
                reason: err.to_string(),
            })?;
        }
        Ok(Self {
            endpoints,
            current: 0,
            channel: None,
            connect_timeout: Duration::from_secs(3),
            tls,
        })
    }

    /// The endpoint calls currently go to.
    pub fn current(&self) -> &str {
        &self.endpoints[self.current]
    }

    /// Joins with a join token, proving possession of `private_key` (the key of
    /// `req.public_key`) against a fresh JoinChallenge (`cladnet_proto::join`).
    pub async fn join(
        &mut self,
        join_token: &str,
        private_key: &[u8; 32],
        mut req: pb::JoinRequest,
    ) -> Result<pb::JoinResponse, ControlError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let challenge = self
            .call("JoinChallenge", join_token, pb::JoinChallengeRequest {}, |mut c, r| async move {
                c.join_challenge(r).await.map(tonic::Response::into_inner)
            })
            .await?;
        let bad = |reason: &str| ControlError::BadChallenge {
            endpoint: self.current().to_owned(),
            reason: reason.to_owned(),
        };
        let controller: [u8; 32] = b64
            .decode(&challenge.controller_public_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| bad("controller key is not 32 bytes of base64"))?;
        let nonce = b64
            .decode(&challenge.nonce)
            .map_err(|_| bad("nonce is not base64"))?;
        let proof = cladnet_proto::join::proof(
            private_key,
            &controller,
            &nonce,
            &req.cladnet_id,
            &req.host_id,
            &req.public_key,
        )
        .ok_or_else(|| bad("controller key is a low-order point"))?;
        req.nonce = challenge.nonce;
        req.proof = b64.encode(proof);
        self.call("Join", join_token, req, |mut c, r| async move {
            c.join(r).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Opens a Watch with the session token.
    pub async fn watch(
        &mut self,
        session: &str,
        req: pb::WatchRequest,
    ) -> Result<Streaming<pb::WatchEvent>, ControlError> {
        self.call("Watch", session, req, |mut c, r| async move {
            c.watch(r).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Reports with the session token.
    pub async fn report(
        &mut self,
        session: &str,
        req: pb::ReportRequest,
    ) -> Result<pb::ReportResponse, ControlError> {
        self.call("Report", session, req, |mut c, r| async move {
            c.report(r).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Runs one call with failover across the endpoints, starting at the current one.
    async fn call<M, T, F, Fut>(
        &mut self,
        name: &'static str,
        token: &str,
        msg: M,
        f: F,
    ) -> Result<T, ControlError>
    where
        M: Clone,
        F: Fn(AgentServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let bearer = format!("Bearer {token}")
            .parse::<tonic::metadata::MetadataValue<_>>()
            .map_err(|_| ControlError::BadEndpoint {
                endpoint: self.current().to_owned(),
                reason: "token is not ASCII".into(),
            })?;
        let mut last = String::new();
        let mut tls_failure = None;
        for _ in 0..self.endpoints.len() {
            let result = match self.channel().await {
                Ok(channel) => {
                    let mut req = Request::new(msg.clone());
                    req.metadata_mut().insert("authorization", bearer.clone());
                    let client =
                        AgentServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
                    f(client, req).await.map_err(Some)
                }
                Err(e) => {
                    if e.is_tls_failure() {
                        tls_failure = Some(e.to_string());
                    }
                    last = e.to_string();
                    Err(None)
                }
            };
            match result {
                Ok(v) => return Ok(v),
                // `http://` to a TLS port connects, then the first call fails on the answer.
                Err(Some(status))
                    if let Some(e) = std::error::Error::source(&status)
                        .and_then(tls::find_connect_error)
                        .filter(ConnectError::is_tls_failure) =>
                {
                    last = e.to_string();
                    tls_failure = Some(last.clone());
                }
                // A call that failed on the connection (not an answer of the controller): an
                // `http://` URL for a TLS port whose alert lost the race against the close
                // shows up as a bare "connection closed". Look once more on a fresh
                // connection, then fail over like any other unreachable controller.
                Err(Some(status)) if failed_on_connection(&status) => {
                    last = tls::describe_status(&status);
                    if let Some(e) = tls::sniff_tls_on_plain_url(self.current()).await {
                        last = e.to_string();
                        tls_failure = Some(last.clone());
                    }
                }
                Err(Some(status)) if status.code() != Code::Unavailable => {
                    return Err(ControlError::Refused {
                        call: name,
                        endpoint: self.current().to_owned(),
                        status,
                    });
                }
                Err(Some(status)) => last = tls::describe_status(&status),
                Err(None) => {}
            }
            warn!(call = name, endpoint = self.current(), error = %last, "controller unreachable, failing over");
            self.fail_over();
        }
        if let Some(reason) = tls_failure {
            return Err(ControlError::Tls { call: name, reason });
        }
        Err(ControlError::Unreachable {
            call: name,
            tried: self.endpoints.join(", "),
            last,
        })
    }

    async fn channel(&mut self) -> Result<Channel, ConnectError> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let channel = tls::connect(self.current(), &self.tls, self.connect_timeout, None).await?;
        info!(endpoint = self.current(), "connected to controller");
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    fn fail_over(&mut self) {
        self.channel = None;
        self.current = (self.current + 1) % self.endpoints.len();
    }
}

/// Whether a call failed on its connection (tonic attaches the transport error as the
/// status's source) rather than being answered by the controller.
fn failed_on_connection(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        && matches!(
            status.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal
        )
}

#[cfg(test)]
mod tests {
    use cladnet_proto::prost::Message as _;

    use super::*;

    /// A peer record as large as a real one gets: every string at a realistic length, two
    /// endpoints, cloud details, the capabilities an agent reports, and two routes.
    fn peer(i: u32) -> pb::Peer {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        pb::Peer {
            cladnet_id: "production-multicloud".into(),
            host_id: format!("{i:08x}-6a1f-4c3e-9a57-2b8e4f1d9c30"),
            host_name: format!(
                "ip-172-31-{}-{}.eu-central-1.compute.internal",
                i >> 8,
                i & 0xff
            ),
            host_private_ipv4_cidr: "172.31.255.254/20".into(),
            host_private_ip: "172.31.255.254".into(),
            host_public_ip: "203.255.113.254".into(),
            ipv4_cidr: "10.0.0.0/8".into(),
            ip,
            state: "up".into(),
            details: Some(pb::CloudInformation {
                provider_name: "aws".into(),
                region_id: "ap-southeast-2".into(),
                availability_zone_id: "ap-southeast-2c".into(),
                virtual_network_id: "vpc-0a1b2c3d4e5f67890".into(),
                subnet_id: "subnet-0a1b2c3d4e5f67890".into(),
            }),
            public_key: "Xf1WQkvAh1Vn5IBhNZpD0dH2tx6RxgGMZbT0DvyR2Xo=".into(),
            public_endpoint: "203.255.113.254:51820".into(),
            private_endpoint: "172.31.255.254:51820".into(),
            capabilities: ["xdp-driver", "tc", "userspace", "relay"]
                .map(Into::into)
                .into(),
            dataplane: "xdp-driver".into(),
            dataplane_reason: "native XDP on the underlay device".into(),
            links: Vec::new(),
            revision: i64::from(i) + 1_000_000,
            node_index: i,
            external: false,
            routes: (0..2)
                .map(|r| pb::Route {
                    host_id: format!("{i:08x}-6a1f-4c3e-9a57-2b8e4f1d9c30"),
                    prefix: format!("10.{}.{}.0/24", 200 + r, i & 0xff),
                    state: "approved".into(),
                    advertised_at: 1_796_000_000,
                    decided_at: 1_796_000_001,
                })
                .collect(),
        }
    }

    /// A 10 000-peer network's snapshot is above tonic's default limit (which would make every
    /// agent of such a network fail its Watch) and well within the agent's.
    #[test]
    fn a_ten_thousand_peer_snapshot_fits_the_agents_message_limit() {
        let snapshot = pb::WatchEvent {
            revision: 1,
            event: Some(pb::watch_event::Event::Snapshot(pb::Snapshot {
                network: None,
                peers: (0..10_000).map(peer).collect(),
            })),
        };
        let len = snapshot.encoded_len();
        assert!(len > 4 << 20, "{len} bytes: the default limit would do");
        assert!(
            len * 8 < MAX_MESSAGE,
            "{len} bytes: too close to the agent's limit"
        );
    }
}
