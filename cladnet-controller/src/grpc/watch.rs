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
            let mut response = http::Response::new(Body::new(WatchBody {
                stream: Some(stream),
            }));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// The response body of a Watch: each stream item is a DATA frame as it is (a gRPC message
/// already), and the end of the stream the `grpc-status` trailers (the error's, if it ended
/// with one).
struct WatchBody {
    /// `None` once the trailers went out.
    stream: Option<WatchStream>,
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(None);
        };
        let status = match std::task::ready!(stream.as_mut().poll_next(cx)) {
            Some(Ok(message)) => return Poll::Ready(Some(Ok(Frame::data(message)))),
            Some(Err(e)) => Status::from(e),
            None => Status::ok(""),
        };
        self.stream = None;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(
            status
                .add_header(&mut trailers)
                .map(|()| Frame::trailers(trailers)),
        ))
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
