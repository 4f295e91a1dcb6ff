//! Watches of the embedded store: history replay, then live events, without gap or duplicate.
//!
//! Each watch is a task that feeds a bounded channel (the [`WatchStream`]). It tracks `next`,
//! the first revision it has not delivered yet, and repeats:
//!
//! 1. subscribe to the live broadcast *first*;
//! 2. replay the history from `next` in chunks, each read from a consistent snapshot, up to the
//!    snapshot's current revision; `next` becomes that revision + 1;
//! 3. follow the live broadcast: revisions below `next` were already replayed and are skipped;
//!    a revision above `next` (a gap) or a lag notice sends it back to step 1.
//!
//! Every commit after the subscription reaches the broadcast, and every commit before the last
//! snapshot is in the history, so the union covers every revision; `next` removes the overlap.

use std::sync::{Arc, Weak};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::Inner;
use super::engine::{self, Committed};
use crate::error::{Error, Op, prefix_target};
use crate::types::{Revision, WatchEvent, WatchStream};

/// Events buffered between a watch task and its consumer.
const CHANNEL: usize = 256;
/// History entries read per snapshot while replaying.
const CHUNK: usize = 512;

type Sender = mpsc::Sender<crate::Result<WatchEvent>>;

/// Starts a watch task and returns its stream.
pub(super) fn spawn(inner: &Arc<Inner>, prefix: String, start: Option<Revision>) -> WatchStream {
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(run(Arc::downgrade(inner), prefix, start, tx));
    Box::pin(ReceiverStream::new(rx))
}

/// How following the live events ended.
enum Follow {
    /// The consumer dropped the stream.
    Gone,
    /// The store was dropped.
    Closed,
    /// Events were missed: catch up from the history starting at this revision.
    CatchUp(Revision),
}

async fn run(store: Weak<Inner>, prefix: String, start: Option<Revision>, tx: Sender) {
    let mut next = start;
    loop {
        let Some(inner) = store.upgrade() else {
            return closed(&tx, &prefix).await;
        };
        let mut live = inner.events.subscribe();
        let from = match catch_up(&inner, &prefix, next, &tx).await {
            Ok(Some(from)) => from,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        // Hold no strong reference while idle, so that dropping the store closes it.
        drop(inner);
        match follow(&mut live, &prefix, from, &tx).await {
            Follow::Gone => return,
            Follow::Closed => return closed(&tx, &prefix).await,
            Follow::CatchUp(rev) => {
                tracing::debug!(
                    prefix,
                    revision = rev,
                    "embedded watch fell behind, replaying history"
                );
                next = Some(rev);
            }
        }
    }
}

/// Replays the history from `next`; returns the first revision not replayed, or `None` if the
/// consumer is gone.
async fn catch_up(
    inner: &Arc<Inner>,
    prefix: &str,
    mut next: Option<Revision>,
    tx: &Sender,
) -> crate::Result<Option<Revision>> {
    loop {
        let reader = Arc::clone(inner);
        let p = prefix.to_owned();
        let chunk =
            tokio::task::spawn_blocking(move || engine::history(&reader.db, &p, next, CHUNK))
                .await
                .map_err(|e| Error::Backend {
                    op: Op::Watch,
                    target: prefix_target(prefix),
                    backend: inner.label.clone(),
                    source: Box::new(e),
                })?
                .map_err(|f| f.into_error(Op::Watch, prefix_target(prefix), &inner.label))?;
        for event in chunk.events {
            if tx.send(Ok(event)).await.is_err() {
                return Ok(None);
            }
        }
        next = Some(chunk.next);
        if chunk.complete {
            return Ok(next);
        }
    }
}

/// Forwards live events from revision `next` on.
async fn follow(
    live: &mut broadcast::Receiver<Arc<Committed>>,
    prefix: &str,
    mut next: Revision,
    tx: &Sender,
) -> Follow {
    loop {
        let batch = tokio::select! {
            () = tx.closed() => return Follow::Gone,
            received = live.recv() => match received {
                Ok(batch) => batch,
                Err(broadcast::error::RecvError::Lagged(_)) => return Follow::CatchUp(next),
                Err(broadcast::error::RecvError::Closed) => return Follow::Closed,
            },
        };
        if batch.revision < next {
            continue;
        }
        if batch.revision > next {
            return Follow::CatchUp(next);
        }
        for event in batch.events.iter().filter(|e| e.key().starts_with(prefix)) {
            if tx.send(Ok(event.clone())).await.is_err() {
                return Follow::Gone;
            }
        }
        next = batch.revision + 1;
    }
}

async fn closed(tx: &Sender, prefix: &str) {
    let _ = tx
        .send(Err(Error::Closed {
            op: Op::Watch,
            target: prefix_target(prefix),
            reason: "the embedded store was closed".into(),
        }))
        .await;
}
