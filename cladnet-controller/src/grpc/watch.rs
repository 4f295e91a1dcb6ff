//! Watch over gRPC with events encoded once: the controller's streams carry encoded
//! `WatchEvent`s (the same bytes for every agent of a network), which this codec writes as they
//! are instead of decoding and encoding them again per stream. Every other AgentService method
//! goes to the generated server.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{BufMut as _, Bytes};
use cladnet_proto::v1::{self as pb, agent_service_server::AgentServiceServer};
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use tonic::{
    Request, Response, Status,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::NamedService,
};

use tonic::codegen::http;

use super::Grpc;
use crate::{auth::bearer_grpc, service::Controller};

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
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(EncodedCodec);
            Ok(grpc.server_streaming(WatchSvc(ctl), req).await)
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

struct WatchSvc(Arc<Controller>);

impl tonic::server::ServerStreamingService<pb::WatchRequest> for WatchSvc {
    type Response = Bytes;
    type ResponseStream = EventStream;
    type Future = BoxFuture<Result<Response<EventStream>, Status>>;

    fn call(&mut self, req: Request<pb::WatchRequest>) -> Self::Future {
        let ctl = self.0.clone();
        Box::pin(async move {
            let bearer = bearer_grpc(req.metadata())?.to_owned();
            let stream = ctl.watch(&bearer, req.into_inner()).await?;
            let stream: EventStream = Box::pin(stream.map(|item| item.map_err(Status::from)));
            Ok(Response::new(stream))
        })
    }
}

/// Decodes `WatchRequest`s, writes encoded `WatchEvent`s as they are.
#[derive(Clone, Copy, Debug, Default)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = pb::WatchRequest;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::WatchRequest>, Status> {
        pb::WatchRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("WatchRequest: {e}")))
    }
}
