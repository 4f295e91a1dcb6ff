//! The agent's session with the controllers: join (retried while none is reachable), the
//! Watch stream (re-opened from the last revision when it breaks), reports (kept until a
//! controller acknowledges them) and re-joins when the session is refused (revoked or
//! replaced). It knows nothing of peers: Watch events go to the caller as they come.

use std::time::Duration;

use anyhow::Context as _;
use cladnet_proto::v1 as pb;
use tokio::time::{Instant, sleep};
use tonic::Code;
use tracing::{debug, error, info, warn};

use crate::control::{ControlClient, ControlError};

/// Backoff bounds for reconnecting to the controllers.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A re-join this long after the previous one starts again from the shortest backoff.
const REJOIN_CALM: Duration = Duration::from_secs(60);

/// What [`ControlSession::next`] hands over.
#[derive(Debug)]
pub(super) enum Next {
    /// A Watch event.
    Event(Box<pb::WatchEvent>),
    /// The session is gone and a re-join is due: call [`ControlSession::join`].
    Rejoin,
    /// The Watch stream is due to be opened again: call [`ControlSession::prepare`].
    Reopen,
}

/// One network membership, across controller restarts and failovers.
pub(super) struct ControlSession {
    client: ControlClient,
    network: String,
    node_id: String,
    token: String,
    /// The session token of the last join.
    session: String,
    /// A Watch or Report was refused as Unauthenticated: join again.
    lost: bool,
    revision: i64,
    /// A report the controller has not acknowledged yet (sent again until it is).
    pending: Option<pb::ReportRequest>,
    /// The advertised prefixes not delivered yet: a report of their own (the API's rule),
    /// sent again until acknowledged, dropped when refused (the set has to change first).
    routes: Option<pb::ReportRequest>,
    watch: Option<tonic::Streaming<pb::WatchEvent>>,
    backoff: Duration,
    retry_watch_at: Instant,
    /// Re-joins are spaced out (doubling up to BACKOFF_MAX), so two hosts sharing one
    /// identity by mistake do not take the session from each other in a tight loop.
    rejoin_at: Instant,
    rejoin_backoff: Duration,
}

impl ControlSession {
    /// A session for `node_id` in `network`, not joined yet.
    pub(super) fn new(client: ControlClient, network: &str, node_id: &str, token: &str) -> Self {
        Self {
            client,
            network: network.to_owned(),
            node_id: node_id.to_owned(),
            token: token.to_owned(),
            session: String::new(),
            lost: false,
            revision: 0,
            pending: None,
            routes: None,
            watch: None,
            backoff: BACKOFF_MIN,
            retry_watch_at: Instant::now(),
            rejoin_at: Instant::now(),
            rejoin_backoff: BACKOFF_MIN,
        }
    }

    /// The controller in use.
    pub(super) fn controller(&self) -> &str {
        self.client.current()
    }

    /// Joins, retrying while no controller is reachable; refusals are fatal (bad token,
    /// unknown network). The Watch stream starts over from a snapshot.
    pub(super) async fn join(
        &mut self,
        private_key: &[u8; 32],
        req: pb::JoinRequest,
    ) -> anyhow::Result<pb::JoinResponse> {
        let mut backoff = BACKOFF_MIN;
        let resp = loop {
            match self
                .client
                .join(&self.token, private_key, req.clone())
                .await
            {
                Ok(resp) => break resp,
                Err(ControlError::Unreachable { last, .. }) => {
                    warn!(error = %last, retry_in = ?backoff, "join: no controller reachable");
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e).context("joining the network"),
            }
        };
        self.session.clone_from(&resp.session_token);
        self.revision = 0;
        self.lost = false;
        self.watch = None;
        self.retry_watch_at = Instant::now();
        self.backoff = BACKOFF_MIN;
        Ok(resp)
    }

    /// Opens the Watch stream if it is due (outside any `select!`: opening may take a TLS
    /// handshake, which a busy loop must not cancel). Call before each [`ControlSession::next`].
    pub(super) async fn prepare(&mut self) {
        let now = Instant::now();
        if self.lost && now >= self.rejoin_at {
            return;
        }
        if !self.lost && now >= self.rejoin_at + REJOIN_CALM {
            self.rejoin_backoff = BACKOFF_MIN;
        }
        if self.watch.is_some() || self.lost || now < self.retry_watch_at {
            return;
        }
        let req = pb::WatchRequest {
            cladnet_id: self.network.clone(),
            host_id: self.node_id.clone(),
            from_revision: self.revision,
            batches: true,
        };
        match self.client.watch(&self.session, req).await {
            Ok(stream) => {
                info!(
                    controller = self.client.current(),
                    from_revision = self.revision,
                    "watching"
                );
                self.watch = Some(stream);
                self.backoff = BACKOFF_MIN;
            }
            Err(e) if e.is_unauthenticated() => {
                warn!(error = %e, "watch refused: session no longer valid");
                self.lose();
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?self.backoff, "watch: controller unavailable; forwarding continues");
                self.retry_watch_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// The next Watch event, or [`Next::Rejoin`] when a re-join is due. Cancel-safe: all
    /// state lives in `self`.
    pub(super) async fn next(&mut self) -> Next {
        loop {
            if self.lost && Instant::now() >= self.rejoin_at {
                warn!(
                    node_id = self.node_id,
                    "session no longer valid (revoked or replaced); joining again with this node's identity"
                );
                self.rejoin_at = Instant::now() + self.rejoin_backoff;
                self.rejoin_backoff = (self.rejoin_backoff * 2).min(BACKOFF_MAX);
                return Next::Rejoin;
            }
            let Some(watch) = &mut self.watch else {
                let at = if self.lost {
                    self.rejoin_at
                } else {
                    self.retry_watch_at
                };
                tokio::time::sleep_until(at).await;
                if self.lost {
                    continue;
                }
                return Next::Reopen;
            };
            match watch.message().await {
                Ok(Some(ev)) => {
                    self.revision = self.revision.max(ev.revision);
                    return Next::Event(Box::new(ev));
                }
                Ok(None) => warn!("watch stream ended; resuming"),
                Err(status) if status.code() == Code::Unauthenticated => {
                    warn!(%status, "watch ended: session no longer valid");
                    self.lose();
                }
                Err(status) => warn!(%status, "watch stream broken; resuming"),
            }
            self.watch = None;
            self.retry_watch_at = Instant::now() + self.backoff;
        }
    }

    fn lose(&mut self) {
        self.lost = true;
    }

    /// A report for this node, filled in by `f`.
    pub(super) fn report(&self, f: impl FnOnce(&mut pb::ReportRequest)) -> pb::ReportRequest {
        let mut r = pb::ReportRequest {
            cladnet_id: self.network.clone(),
            host_id: self.node_id.clone(),
            ..pb::ReportRequest::default()
        };
        f(&mut r);
        r
    }

    /// Makes `req` the report to deliver (replacing one not delivered yet).
    pub(super) fn set_pending(&mut self, req: pb::ReportRequest) {
        self.pending = Some(req);
    }

    /// The report waiting for delivery, taken out (to amend it).
    pub(super) fn take_pending(&mut self) -> Option<pb::ReportRequest> {
        self.pending.take()
    }

    /// Whether a report is waiting for delivery.
    pub(super) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Makes `prefixes` the advertised set to deliver (after every join, and when it
    /// changes).
    pub(super) fn set_routes(&mut self, prefixes: &[ipnet::Ipv4Net]) {
        self.routes = Some(self.report(|r| {
            r.advertised_routes = Some(pb::RouteAdvertisement {
                prefixes: prefixes.iter().map(ToString::to_string).collect(),
            });
        }));
    }

    /// Sends the pending reports, if any: the advertised prefixes, then the other one; keeps
    /// them when the controller is unreachable.
    pub(super) async fn flush_report(&mut self) {
        if let Some(req) = self.routes.clone() {
            let routes = req.advertised_routes.clone().unwrap_or_default().prefixes;
            match self.client.report(&self.session, req).await {
                Ok(_) => {
                    info!(?routes, "advertised routes reported");
                    self.routes = None;
                }
                Err(ControlError::Refused { status, .. })
                    if status.code() == Code::InvalidArgument =>
                {
                    error!(
                        ?routes,
                        refusal = status.message(),
                        "the controller refused the advertised routes"
                    );
                    self.routes = None;
                }
                Err(e) if e.is_unauthenticated() => {
                    warn!(error = %e, "report refused: session no longer valid");
                    self.lose();
                    return;
                }
                Err(e) => debug!(error = %e, "advertised routes pending"),
            }
        }
        let Some(req) = self.pending.clone() else {
            return;
        };
        match self.client.report(&self.session, req).await {
            Ok(_) => self.pending = None,
            Err(e) if e.is_unauthenticated() => {
                warn!(error = %e, "report refused: session no longer valid");
                self.lose();
            }
            Err(e) => debug!(error = %e, "report pending"),
        }
    }

    /// Sends a report once (statistics, test results): a refused session is noted.
    pub(super) async fn send(&mut self, req: pb::ReportRequest) -> Result<(), ControlError> {
        let result = self.client.report(&self.session, req).await.map(|_| ());
        if result.as_ref().is_err_and(ControlError::is_unauthenticated) {
            self.lose();
        }
        result
    }
}
