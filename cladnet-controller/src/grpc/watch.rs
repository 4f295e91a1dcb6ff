//! Watch over gRPC with events encoded once: the controller's streams carry encoded
//! `WatchEvent`s already framed as gRPC messages (the same bytes for every agent of a network),
//! which the response body hands to HTTP/2 as they are: not decoded and encoded again per
//! stream, not even copied (tonic's encoder would copy every message into a buffer of its
//! own, and in a boot storm that copy, into fresh pages, cost more than the rest of the
//! stream's work). Every other AgentService method goes to the generated server.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use cladnet_proto::v1::{self as pb, agent_service_server::AgentServiceServer};
use http_body::Frame;
use prost::Message as _;
use tonic::{
    Status,
    body::Body,
    codec::{DecodeBuf, Decoder, Streaming},
    metadata::MetadataMap,
    server::NamedService,
};

use tonic::codegen::http;

use super::Grpc;
use crate::{
    auth::bearer_grpc,
    service::{Controller, WatchStream},
};

const WATCH_PATH: &str = "/cladnet.v1.AgentService/Watch";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The AgentService with Watch served from encoded events.
#[derive(Clone, Debug)]
pub(super) struct AgentRoutes {
    ctl: Arc<Controller>,
    generated: AgentServiceServer<Grpc>,
}

impl AgentRoutes {
    /// Watch on `ctl`, everything else on `generated`.
    pub(super) fn new(ctl: Arc<Controller>, generated: AgentServiceServer<Grpc>) -> Self {
        Self { ctl, generated }
    }
}

impl NamedService for AgentRoutes {
    const NAME: &'static str = <AgentServiceServer<Grpc> as NamedService>::NAME;
}

impl tonic::codegen::Service<http::Request<Body>> for AgentRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != WATCH_PATH {
            return self.generated.call(req);
        }
        let ctl = self.ctl.clone();
        Box::pin(async move { Ok(watch(ctl, req).await) })
    }
}

/// Serves one Watch call: decodes the request, opens the stream and answers with its messages
/// (or, if it cannot be opened, with the error as a trailers-only response, as tonic does).
async fn watch(ctl: Arc<Controller>, req: http::Request<Body>) -> http::Response<Body> {
    let (parts, body) = req.into_parts();
    let opened = async {
        let metadata = MetadataMap::from_headers(parts.headers);
        let bearer = bearer_grpc(&metadata)?.to_owned();
        let mut requests = Streaming::new_request(RequestDecoder, body, None, None);
        let request = requests
            .message()
            .await?
            .ok_or_else(|| Status::internal("Missing request message."))?;
        Ok::<_, Status>(ctl.watch(&bearer, request).await?)
    };
    match opened.await {
        Ok(stream) => {
            let mut response = http::Response::new(Body::new(WatchBody::new(stream)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// Stream items smaller than this that are ready one after the other go out in one DATA frame
/// (copied together; tonic's encoder did the same): the changes of an agent that takes no
/// batches, one item each, would otherwise cost a frame and a write each. Larger items (a
/// batch, a snapshot) go out as they are.
const COALESCE_BELOW: usize = 4 << 10;
/// Largest DATA frame made of coalesced items.
const COALESCE_LIMIT: usize = 32 << 10;

/// The response body of a Watch: each stream item is a DATA frame as it is (a gRPC message
/// already; small ones ready together share one, see [`COALESCE_BELOW`]), and the end of the
/// stream the `grpc-status` trailers (the error's, if it ended with one).
struct WatchBody {
    /// `None` once the trailers went out.
    stream: Option<WatchStream>,
    /// An item that did not fit the last coalesced frame: the next frame.
    held: Option<Bytes>,
    /// How the stream ended, found while coalescing: the trailers after the held frames.
    end: Option<Status>,
}

impl WatchBody {
    fn new(stream: WatchStream) -> Self {
        Self {
            stream: Some(stream),
            held: None,
            end: None,
        }
    }

    /// The trailers for `status`; the body ends after them.
    fn trailers(&mut self, status: &Status) -> Result<Frame<Bytes>, Status> {
        self.stream = None;
        let mut trailers = http::HeaderMap::new();
        status
            .add_header(&mut trailers)
            .map(|()| Frame::trailers(trailers))
    }
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let first = match self.held.take() {
            Some(item) => item,
            None => {
                if let Some(status) = self.end.take() {
                    return Poll::Ready(Some(self.trailers(&status)));
                }
                let Some(stream) = self.stream.as_mut() else {
                    return Poll::Ready(None);
                };
                match std::task::ready!(stream.as_mut().poll_next(cx)) {
                    Some(Ok(item)) => item,
                    Some(Err(e)) => return Poll::Ready(Some(self.trailers(&Status::from(e)))),
                    None => return Poll::Ready(Some(self.trailers(&Status::ok("")))),
                }
            }
        };
        let this = &mut *self;
        let stream = match this.stream.as_mut() {
            Some(stream) if first.len() < COALESCE_BELOW && this.end.is_none() => stream,
            _ => return Poll::Ready(Some(Ok(Frame::data(first)))),
        };
        let mut joined: Option<bytes::BytesMut> = None;
        let (held, end) = loop {
            let size = joined.as_ref().map_or(first.len(), |j| j.len());
            match stream.as_mut().poll_next(cx) {
                Poll::Pending => break (None, None),
                Poll::Ready(Some(Ok(item)))
                    if item.len() < COALESCE_BELOW && size + item.len() <= COALESCE_LIMIT =>
                {
                    joined
                        .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                        .extend_from_slice(&item);
                }
                Poll::Ready(Some(Ok(item))) => break (Some(item), None),
                Poll::Ready(Some(Err(e))) => break (None, Some(Status::from(e))),
                Poll::Ready(None) => break (None, Some(Status::ok(""))),
            }
        };
        (this.held, this.end) = (held, end);
        Poll::Ready(Some(Ok(Frame::data(
            joined.map_or(first, bytes::BytesMut::freeze),
        ))))
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }
}

/// Decodes `WatchRequest`s.
#[derive(Clone, Copy, Debug, Default)]
struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::WatchRequest>, Status> {
        pb::WatchRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("WatchRequest: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use http_body::Body as _;

    use super::*;
    use crate::{auth::AdminAuth, error::ControllerError};

    /// The frames of `body` until its end.
    async fn frames(mut body: WatchBody) -> Vec<Frame<Bytes>> {
        let mut out = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            out.push(frame.unwrap());
        }
        assert!(body.is_end_stream());
        out
    }

    fn status(trailers: &http::HeaderMap) -> (&str, &str) {
        let get = |name| trailers.get(name).map_or("", |v| v.to_str().unwrap());
        (get("grpc-status"), get("grpc-message"))
    }

    /// Stream items go out as DATA frames as they are (the same bytes, not copied), and the
    /// end of the stream as `grpc-status` trailers: 0, or the error that ended it.
    #[tokio::test]
    async fn items_go_out_as_they_are_then_the_status() {
        let item = message(COALESCE_BELOW);
        let items = vec![Ok(item.clone()), Ok(item.clone())];
        let out = frames(WatchBody::new(Box::pin(futures::stream::iter(items)))).await;
        assert_eq!(out.len(), 3);
        for frame in &out[..2] {
            let data = frame.data_ref().expect("a DATA frame");
            assert_eq!(data, &item);
            assert_eq!(data.as_ptr(), item.as_ptr(), "copied");
        }
        assert_eq!(status(out[2].trailers_ref().unwrap()), ("0", ""));

        let items = vec![
            Ok(item.clone()),
            Err(ControllerError::Unauthenticated("session revoked".into())),
        ];
        let out = frames(WatchBody::new(Box::pin(futures::stream::iter(items)))).await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data_ref(), Some(&item));
        assert_eq!(
            status(out[1].trailers_ref().unwrap()),
            ("16", "unauthenticated:%20session%20revoked")
        );
    }

    /// A gRPC message of `len` bytes in all.
    fn message(len: usize) -> Bytes {
        let mut item = vec![0; len];
        item[1..5].copy_from_slice(&u32::try_from(len - 5).unwrap().to_be_bytes());
        Bytes::from(item)
    }

    /// Small items ready together go out in one DATA frame (their bytes in order, up to the
    /// limit); a large one after them goes out alone, as it is; then the status.
    #[tokio::test]
    async fn small_items_ready_together_share_a_frame() {
        let small: Vec<Bytes> = (0..12).map(|i| message(3000 + i)).collect();
        let large = message(COALESCE_BELOW + 1);
        let items: Vec<_> = small
            .iter()
            .chain([&large])
            .map(|b| Ok(b.clone()))
            .chain([Err(ControllerError::Aborted("hub failed".into()))])
            .collect();
        let out = frames(WatchBody::new(Box::pin(futures::stream::iter(items)))).await;
        let data: Vec<&Bytes> = out.iter().filter_map(Frame::data_ref).collect();
        // 3000-byte items, at most 32 KiB a frame: 10 in the first, 2 in the second (the one
        // that did not fit the first starts it).
        let joined = |items: &[Bytes]| items.concat();
        assert_eq!(
            data.len(),
            3,
            "{:?}",
            data.iter().map(|d| d.len()).collect::<Vec<_>>()
        );
        assert_eq!(data[0][..], joined(&small[..10])[..]);
        assert_eq!(data[1][..], joined(&small[10..])[..]);
        assert_eq!(data[2].as_ptr(), large.as_ptr(), "a large item is copied");
        let trailers = out.last().and_then(Frame::trailers_ref).expect("trailers");
        assert_eq!(status(trailers).0, "10");
        assert_eq!(out.len(), 4);
    }

    /// A Watch that cannot be opened (here: no token) answers with its status in the headers,
    /// without a body (a trailers-only response, as tonic answers).
    #[tokio::test]
    async fn a_watch_that_cannot_open_answers_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("embedded:{}", dir.path().join("s.redb").display());
        let store = cladnet_store::connect(&url.parse().unwrap()).await.unwrap();
        let ctl = Arc::new(Controller::new(
            store,
            AdminAuth::new("0123456789abcdef").unwrap(),
        ));
        let request = pb::WatchRequest {
            cladnet_id: "net".into(),
            host_id: "n1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(request.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(&request);
        let req = http::Request::builder()
            .method("POST")
            .uri(WATCH_PATH)
            .header("content-type", "application/grpc")
            .body(Body::new(axum::body::Body::from(framed)))
            .unwrap();
        let response = watch(ctl, req).await;
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(status(response.headers()).0, "16", "{response:?}");
        assert!(response.body().is_end_stream());
    }
}
