//! Keeps unreachable etcd members out of the client's load balancer.
//!
//! The etcd client balances requests over every endpoint it was given and does not stop
//! choosing an endpoint whose member is down: each request routed there fails with a connect
//! error. A background task therefore probes every endpoint (a TCP connect) every
//! [`EtcdOptions::health_check_interval`](super::EtcdOptions::health_check_interval), takes
//! unreachable ones out of rotation and puts them back once they answer. When every endpoint
//! is unreachable, all are kept in rotation, so that requests fail fast and the first member
//! to come back is used at once.

use std::time::Duration;

use etcd_client::Client;
use tokio::net::TcpStream;
use tokio::task::{AbortHandle, JoinSet};

use crate::url::EtcdEndpoint;

/// Stops the health task when the last store handle is dropped.
#[derive(Debug)]
pub(super) struct HealthTask(AbortHandle);

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which endpoints are in the client's rotation.
pub(super) struct Rotation {
    client: Client,
    endpoints: Vec<EtcdEndpoint>,
    in_rotation: Vec<bool>,
    probe_timeout: Duration,
}

impl Rotation {
    /// All endpoints start in rotation (the client was created with all of them).
    pub(super) fn new(
        client: Client,
        endpoints: Vec<EtcdEndpoint>,
        probe_timeout: Duration,
    ) -> Self {
        let in_rotation = vec![true; endpoints.len()];
        Self {
            client,
            endpoints,
            in_rotation,
            probe_timeout,
        }
    }

    /// Probes every endpoint and updates the rotation.
    pub(super) async fn check(&mut self) {
        let up = self.probe_all().await;
        let all_down = !up.iter().any(|u| *u);
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let want = up[i] || all_down;
            if want == self.in_rotation[i] {
                continue;
            }
            let url = endpoint.http_url();
            let result = if want {
                self.client.add_endpoint(&url).await
            } else {
                self.client.remove_endpoint(&url).await
            };
            match result {
                Ok(()) if want => {
                    tracing::info!(%endpoint, "etcd endpoint reachable, back in rotation");
                    self.in_rotation[i] = true;
                }
                Ok(()) => {
                    tracing::warn!(%endpoint, "etcd endpoint unreachable, taken out of rotation");
                    self.in_rotation[i] = false;
                }
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "cannot update the etcd endpoint rotation")
                }
            }
        }
    }

    async fn probe_all(&self) -> Vec<bool> {
        let mut probes = JoinSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let addr = (endpoint.host.clone(), endpoint.port);
            let timeout = self.probe_timeout;
            probes.spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                );
                (i, ok)
            });
        }
        let mut up = vec![false; self.endpoints.len()];
        while let Some(done) = probes.join_next().await {
            if let Ok((i, ok)) = done {
                up[i] = ok;
            }
        }
        up
    }

    /// Probes every `interval` until the returned guard is dropped.
    pub(super) fn spawn(mut self, interval: Duration) -> HealthTask {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.check().await;
            }
        });
        HealthTask(task.abort_handle())
    }
}
