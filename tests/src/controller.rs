//! An in-process controller on a loopback port, with authenticated gRPC clients and a minimal
//! HTTP/1.1 client for the REST side.

use std::{net::SocketAddr, sync::Arc};

use cladnet_controller::{auth::AdminAuth, server, service::Controller};
use cladnet_proto::v1::{
    agent_service_client::AgentServiceClient, network_service_client::NetworkServiceClient,
};
use cladnet_store::Store;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// The admin token of every [`TestController`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A bearer credential, or none for `""`.
    pub fn new(token: &str) -> Self {
        Self((!token.is_empty()).then(|| format!("Bearer {token}").parse().expect("ASCII token")))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// An authenticated admin client.
pub type AdminClient = NetworkServiceClient<InterceptedService<Channel, Bearer>>;
/// An authenticated agent client.
pub type AgentClient = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// A controller served in this process on `127.0.0.1:<ephemeral>`, on a runtime of its own so
/// that [`TestController::stop`] ends it like a process exit: every connection and stream is
/// cut at once.
#[derive(Debug)]
pub struct TestController {
    addr: SocketAddr,
    controller: Arc<Controller>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestController {
    /// Serves a controller on `store`.
    pub async fn start(store: Arc<dyn Store>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        cladnet_controller::layout::ensure(store.as_ref())
            .await
            .expect("store key layout");
        let controller = Arc::new(Controller::new(
            store,
            AdminAuth::new(ADMIN_TOKEN).expect("admin token"),
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-controller")
            .enable_all()
            .build()
            .expect("controller runtime");
        let served = controller.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            server::serve(listener, served, std::future::pending()).await
        });
        Self {
            addr,
            controller,
            runtime: Some(runtime),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The controller behind the server.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The `http://` URL of the server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to the controller")
    }

    /// An admin client presenting `token` (use [`ADMIN_TOKEN`], or a wrong one to test auth).
    pub async fn admin(&self, token: &str) -> AdminClient {
        NetworkServiceClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    /// An agent client presenting `token` (a join or session token).
    pub async fn agent(&self, token: &str) -> AgentClient {
        AgentServiceClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    /// Stops serving as a crashed process would: listener, connections and streams all end.
    pub async fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One HTTP/1.1 request; returns (status, body). `token` adds a bearer header when not empty.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Chunked bodies: keep only the chunk payloads.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
