//! The controller's Prometheus metrics: API requests by method and code, connected agents
//! (open Watch streams), events sent to them, and store latency by operation.
//!
//! Served on their own listener (`--metrics-listen`, loopback by default), unauthenticated as
//! Prometheus expects: they carry counts and method names, no network or peer data.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use cladnet_store::{
    DeleteResult, KeyValue, LeaseId, RangeResult, Result as StoreResult, Revision, Store, Txn,
    TxnResult, WatchStream,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
}

/// The controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    events: Counter,
    streams: Gauge,
    store: Family<OpLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cladnet_controller");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests by method (gRPC path or REST route) and code (gRPC status or HTTP status)",
            requests.clone(),
        );
        let events = Counter::default();
        registry.register(
            "watch_events_sent",
            "Events sent to agents on their Watch streams",
            events.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "connected_agents",
            "Open Watch streams (agents connected to this controller)",
            streams.clone(),
        );
        let store = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~3 s: the embedded store answers in microseconds, etcd in milliseconds.
            Histogram::new([0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
        });
        registry.register_with_unit(
            "store_latency",
            "Store operation latency by operation",
            prometheus_client::registry::Unit::Seconds,
            store.clone(),
        );
        Self {
            registry,
            requests,
            events,
            streams,
            store,
        }
    }
}

/// Counts an open Watch stream until dropped.
#[derive(Debug)]
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = encode(&mut out, &self.registry) {
            warn!(%error, "encoding metrics failed");
        }
        out
    }

    /// Counts a Watch stream for as long as the guard lives.
    pub fn stream_opened(&self) -> StreamGuard {
        self.streams.inc();
        StreamGuard(self.streams.clone())
    }

    /// Counts one event sent to an agent.
    pub fn event_sent(&self) {
        self.events.inc();
    }

    fn store_op(&self, op: &str, since: Instant) {
        self.store
            .get_or_create(&OpLabels { op: op.to_owned() })
            .observe(since.elapsed().as_secs_f64());
    }
}

/// Axum middleware counting every API request. REST requests are labelled with their route
/// template (`GET /v1/cladnet/{cladnetId}`), gRPC ones with their path; the code is the gRPC
/// status when the response carries one in its headers (errors; successful unary calls carry
/// it in trailers and count as `0`), else the HTTP status.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let method = if grpc {
        req.uri().path().to_owned()
    } else {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        format!("{} {route}", req.method())
    };
    let resp = next.run(req).await;
    let code = if grpc {
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned()
    } else {
        resp.status().as_u16().to_string()
    };
    m.requests
        .get_or_create(&RequestLabels { method, code })
        .inc();
    resp
}

/// Serves `/metrics` on `addr` in the background; a taken port is a start-up error.
pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = metrics.encode();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "metrics at /metrics");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "metrics endpoint stopped");
        }
    });
    Ok(())
}

/// A store that times every operation into [`Metrics`].
#[derive(Debug)]
pub struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl TimedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let start = Instant::now();
        let out = $call.await;
        $self.metrics.store_op($op, start);
        out
    }};
}

#[async_trait::async_trait]
impl Store for TimedStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        timed!(self, "get", self.inner.get(key))
    }

    async fn range(&self, prefix: &str) -> StoreResult<RangeResult> {
        timed!(self, "range", self.inner.range(prefix))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Revision> {
        timed!(self, "put", self.inner.put(key, value, lease))
    }

    async fn delete(&self, key: &str) -> StoreResult<DeleteResult> {
        timed!(self, "delete", self.inner.delete(key))
    }

    async fn delete_prefix(&self, prefix: &str) -> StoreResult<DeleteResult> {
        timed!(self, "delete_prefix", self.inner.delete_prefix(prefix))
    }

    async fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        timed!(self, "txn", self.inner.txn(txn))
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> StoreResult<WatchStream> {
        timed!(self, "watch", self.inner.watch(prefix, start_revision))
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        timed!(self, "compact", self.inner.compact(revision))
    }

    async fn lease_grant(&self, ttl: Duration) -> StoreResult<LeaseId> {
        timed!(self, "lease_grant", self.inner.lease_grant(ttl))
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> StoreResult<Duration> {
        timed!(self, "lease_keep_alive", self.inner.lease_keep_alive(id))
    }

    async fn lease_revoke(&self, id: LeaseId) -> StoreResult<()> {
        timed!(self, "lease_revoke", self.inner.lease_revoke(id))
    }
}
