//! Serving gRPC and REST on one listener, in plain TCP or TLS (rustls), with a TLS handshake
//! timeout and a header read timeout so idle connections cannot pile up.

use std::{
    future::Future,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::{console, grpc::Grpc, metrics, rest, service::Controller};

/// The whole HTTP surface: REST routes, the web console's static files and both gRPC
/// services. HTTP/1.1 requests and HTTP/2 (gRPC) are told apart per connection.
pub fn app(ctl: Arc<Controller>) -> Router {
    let metrics = ctl.metrics().clone();
    rest::router(ctl.clone())
        .merge(console::router())
        .merge(Grpc::new(ctl).routes().into_axum_router())
        // After routing, so REST requests are labelled with their route template.
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
}

/// A connection that has not completed its TLS handshake within this time is dropped, so
/// idle or trickling sockets cannot pile up (slowloris).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection must send its first request head (HTTP/1.1 headers, or the HTTP/2 connection
/// preface) within this time after it is accepted (after the TLS handshake with TLS).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app(ctl)` in plain TCP on an already bound listener until `shutdown` completes
/// (open connections are then dropped).
pub async fn serve(
    listener: TcpListener,
    ctl: Arc<Controller>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    accept_loop(listener, ctl, None, shutdown).await
}

/// A TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS {what} {path}: {reason}")]
pub struct TlsError {
    what: &'static str,
    path: String,
    reason: String,
}

/// Loads a PEM certificate chain and private key into a server configuration that offers
/// HTTP/2 (gRPC) and HTTP/1.1 by ALPN.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let err = |what, path: &Path, reason: String| TlsError {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err("certificate", cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(err("certificate", cert, "no PEM certificate found".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| err("private key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("configuration", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| err("certificate/key pair", cert, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app(ctl)` over TLS until `shutdown` completes (open connections are then dropped).
pub async fn serve_tls(
    listener: TcpListener,
    ctl: Arc<Controller>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    accept_loop(listener, ctl, Some(TlsAcceptor::from(tls)), shutdown).await
}

async fn accept_loop(
    listener: TcpListener,
    ctl: Arc<Controller>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = TowerToHyperService::new(app(ctl));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: back off instead of spinning or dying.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let (tls, service) = (tls.clone(), service.clone());
        tokio::spawn(async move {
            let result = match tls {
                None => serve_connection(HeadDeadline::new(tcp), service).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp).into_fallible();
                    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err((e, tcp))) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            linger(tcp).await;
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out; connection dropped");
                            return;
                        }
                    };
                    serve_connection(HeadDeadline::new(stream), service).await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Closes a connection whose TLS handshake failed without resetting it: the alert already
/// sent is followed by a FIN, and what the client still sends (e.g. the HTTP/2 preface of an
/// `http://` client) is read and dropped for a moment. Closing with unread data would send a
/// RST, which can reach the client before it reads the alert, so it would report a broken
/// pipe instead of "the controller answered with TLS".
async fn linger(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0;
        while total < 64 * 1024 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

type AppService = TowerToHyperService<Router>;

async fn serve_connection<I>(
    io: I,
    service: AppService,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
}

/// Length of the HTTP/2 client connection preface: a client must have sent this much (or an
/// HTTP/1.1 request line) before [`HEADER_READ_TIMEOUT`].
const PREFACE_LEN: usize = 24;

/// A stream whose reads fail with `TimedOut` when fewer than [`PREFACE_LEN`] bytes arrived
/// within [`HEADER_READ_TIMEOUT`]: hyper's protocol detection and the HTTP/2 handshake wait
/// for the client without a limit of their own. HTTP/1.1 headers are further bounded by
/// hyper's `header_read_timeout`.
struct HeadDeadline<I> {
    io: I,
    received: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> HeadDeadline<I> {
    fn new(io: I) -> Self {
        Self {
            io,
            received: 0,
            deadline: Some(Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.received += buf.filled().len() - before;
                if this.received >= PREFACE_LEN {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    /// Forwarded (the default would write the first slice only and hide the capability):
    /// HTTP/2 writes a DATA frame's head and its payload in one `writev` instead of two
    /// `send`s, one syscall and one loopback segment less per Watch message.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
