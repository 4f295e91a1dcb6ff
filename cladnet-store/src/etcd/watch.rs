//! Watches of the etcd backend, resumed transparently when their stream breaks.
//!
//! Each watch is a task that reads an etcd watch stream and feeds a bounded channel (the
//! [`WatchStream`]). It keeps a cursor: the revision to resume from and how many events of
//! that revision it already delivered. When the stream breaks (member killed, connection lost,
//! member lost its leader), the task opens a new etcd watch from the cursor's revision through
//! the client's balanced channel (so on another member), skips the events it already
//! delivered, and goes on. Progress notifications move the cursor forward on idle watches.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::{EtcdStore, classify, convert_kv, header_revision, prefix_range};
use crate::error::{Error, Op, Result, prefix_target};
use crate::types::{Revision, WatchEvent, WatchStream};

/// Events buffered between a watch task and its consumer.
const CHANNEL: usize = 256;
/// Longest pause between two attempts to resume a broken watch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

type Sender = mpsc::Sender<Result<WatchEvent>>;

/// Opens the watch (errors other than compaction are returned directly) and starts its task.
pub(super) async fn start(
    store: &EtcdStore,
    prefix: &str,
    start: Option<Revision>,
) -> Result<WatchStream> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let mut watcher = Watcher {
        client: store.client.clone(),
        endpoints: store.endpoints.clone(),
        prefix: prefix.to_owned(),
        open_timeout: store.options.request_timeout,
        reconnect_timeout: store.options.watch_reconnect_timeout,
        tx,
        cursor: Cursor {
            rev: start.unwrap_or(0),
            delivered: 0,
        },
        skip: 0,
    };
    // Creating a watch is idempotent: retry it on another member if etcd is unavailable.
    match store.call(true, || watcher.open(start)).await {
        Ok((stream, next)) => {
            watcher.cursor.rev = next;
            tokio::spawn(watcher.run(stream));
        }
        Err(e @ Error::Compacted { .. }) => {
            // Reported through the stream, as the embedded store does.
            let _ = watcher.tx.send(Err(e)).await;
        }
        Err(e) => return Err(e),
    }
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Where a watch resumes: at `rev`, skipping the first `delivered` events of `rev`.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    rev: Revision,
    delivered: usize,
}

/// Why pumping a stream stopped.
enum Ended {
    /// The consumer dropped the stream.
    Gone,
    /// A final error for the consumer.
    Failed(Error),
    /// The etcd stream broke; resume it.
    Broken(String),
}

struct Watcher {
    client: Client,
    endpoints: String,
    prefix: String,
    open_timeout: Duration,
    reconnect_timeout: Duration,
    tx: Sender,
    cursor: Cursor,
    /// Events of `cursor.rev` still to skip after a resume.
    skip: usize,
}

impl Watcher {
    fn error(&self, e: etcd_client::Error) -> Error {
        classify(
            Op::Watch,
            prefix_target(&self.prefix),
            None,
            &self.endpoints,
            e,
        )
    }

    /// Opens an etcd watch from `from` (or from now) and waits for its creation; returns the
    /// stream and the first revision it will deliver.
    async fn open(&self, from: Option<Revision>) -> Result<(etcd_client::WatchStream, Revision)> {
        let attempt = async {
            let (key, end) = prefix_range(&self.prefix);
            let mut options = WatchOptions::new().with_range(end).with_progress_notify();
            if let Some(rev) = from {
                options = options.with_start_revision(rev);
            }
            let mut stream = self
                .client
                .watch_client()
                .max_decoding_message_size(super::MAX_RESPONSE)
                .watch(key, Some(options))
                .await
                .map_err(|e| self.error(e))?;
            match stream.message().await.map_err(|e| self.error(e))? {
                Some(resp) if resp.compact_revision() > 0 => Err(Error::Compacted {
                    requested: from.unwrap_or(0),
                    compacted: resp.compact_revision(),
                }),
                Some(resp) if resp.created() && !resp.canceled() => {
                    let next = from.unwrap_or_else(|| header_revision(resp.header()) + 1);
                    Ok((stream, next))
                }
                Some(resp) => Err(Error::Closed {
                    op: Op::Watch,
                    target: prefix_target(&self.prefix),
                    reason: format!("etcd refused the watch: {:?}", resp.cancel_reason()),
                }),
                None => Err(self.unavailable("watch stream closed before it was created")),
            }
        };
        match tokio::time::timeout(self.open_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(self.unavailable("timed out creating the watch")),
        }
    }

    fn unavailable(&self, reason: &str) -> Error {
        Error::Unavailable {
            op: Op::Watch,
            target: prefix_target(&self.prefix),
            endpoints: self.endpoints.clone(),
            source: reason.into(),
        }
    }

    async fn run(mut self, mut stream: etcd_client::WatchStream) {
        loop {
            match self.pump(&mut stream).await {
                Ended::Gone => return,
                Ended::Failed(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
                Ended::Broken(reason) => {
                    tracing::warn!(
                        prefix = self.prefix,
                        revision = self.cursor.rev,
                        reason,
                        "etcd watch stream broke, resuming"
                    );
                    match self.resume().await {
                        Some(s) => stream = s,
                        None => return,
                    }
                }
            }
        }
    }

    /// Forwards the events of one etcd stream.
    async fn pump(&mut self, stream: &mut etcd_client::WatchStream) -> Ended {
        loop {
            let message = tokio::select! {
                () = self.tx.closed() => return Ended::Gone,
                message = stream.message() => message,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => return Ended::Broken("stream closed by the server".into()),
                Err(e) => return Ended::Broken(e.to_string()),
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return Ended::Failed(Error::Compacted {
                        requested: self.cursor.rev,
                        compacted: resp.compact_revision(),
                    });
                }
                return Ended::Broken(format!("canceled by etcd: {:?}", resp.cancel_reason()));
            }
            if resp.events().is_empty() {
                // A progress notification: every event up to the header revision was sent.
                let rev = header_revision(resp.header());
                if rev >= self.cursor.rev {
                    self.cursor = Cursor {
                        rev: rev + 1,
                        delivered: 0,
                    };
                    self.skip = 0;
                }
                continue;
            }
            for ev in resp.events() {
                let event = match self.convert(ev) {
                    Ok(event) => event,
                    Err(e) => return Ended::Failed(e),
                };
                let rev = event.revision();
                if self.skip > 0 && rev == self.cursor.rev {
                    self.skip -= 1;
                    continue;
                }
                self.skip = 0;
                if self.tx.send(Ok(event)).await.is_err() {
                    return Ended::Gone;
                }
                if rev == self.cursor.rev {
                    self.cursor.delivered += 1;
                } else {
                    self.cursor = Cursor { rev, delivered: 1 };
                }
            }
        }
    }

    /// Reopens the watch from the cursor, retrying while etcd is unavailable.
    async fn resume(&mut self) -> Option<etcd_client::WatchStream> {
        let deadline = Instant::now() + self.reconnect_timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            match self.open(Some(self.cursor.rev)).await {
                Ok((stream, _)) => {
                    self.skip = self.cursor.delivered;
                    tracing::info!(
                        prefix = self.prefix,
                        revision = self.cursor.rev,
                        "etcd watch resumed"
                    );
                    return Some(stream);
                }
                Err(e) if e.is_retryable() && Instant::now() + delay < deadline => {
                    tracing::debug!(error = %e, "etcd watch resume failed, retrying");
                    tokio::select! {
                        () = self.tx.closed() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return None;
                }
            }
        }
    }

    fn convert(&self, ev: &etcd_client::Event) -> Result<WatchEvent> {
        let Some(kv) = ev.kv() else {
            return Err(Error::Corrupt {
                op: Op::Watch,
                target: prefix_target(&self.prefix),
                backend: format!("etcd {}", self.endpoints),
                reason: "event without key".into(),
            });
        };
        let converted = convert_kv(Op::Watch, &self.endpoints, kv)?;
        Ok(match ev.event_type() {
            EventType::Put => WatchEvent::Put(converted),
            EventType::Delete => WatchEvent::Delete {
                key: converted.key,
                revision: kv.mod_revision(),
            },
        })
    }
}
