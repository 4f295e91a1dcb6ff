//! Connecting to a controller, in plain TCP (`http://`) or TLS (`https://`), shared by the
//! agent and the `cladnet` CLI.
//!
//! An `https://` controller is trusted in one of three ways, first match wins:
//!
//! 1. a **pin**: the SHA-256 of the controller certificate's SubjectPublicKeyInfo, usually
//!    carried in the join token (`cnj.<id>.<secret>.<pin>`), as kubeadm's
//!    `--discovery-token-ca-cert-hash` does. Exactly that key is accepted, whatever signed the
//!    certificate and whatever names it lists, so a fresh VM needs nothing but the token;
//! 2. a **CA file** (PEM): the certificate must chain to it and name the URL's host;
//! 3. the **system roots** (`rustls-native-certs`).
//!
//! Failures say what is wrong (a wrong pin, an unknown CA, a plain-HTTP controller behind an
//! `https://` URL or the reverse) instead of tonic's generic "transport error": see
//! [`describe`].

use std::{
    fmt, io,
    path::{Path, PathBuf},
    pin::Pin as StdPin,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    CertificateError, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use sha2::{Digest as _, Sha256};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The text after the URL of [`ConnectError::TlsOnPlainUrl`]; h2 passes the error on to the
/// failed call as (kind, text) only, so it is recognised by this text.
const TLS_ON_PLAIN_URL: &str =
    ": the controller answered with TLS; use https:// instead of http://";

/// Prefix of join tokens (`cnj.<id>.<secret>[.<pin>]`).
pub const JOIN_PREFIX: &str = "cnj.";

/// The SHA-256 of a certificate's DER SubjectPublicKeyInfo: what a client pins. Written
/// `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Self(Sha256::digest(spki_der).into())
    }

    /// The pin of a DER X.509 certificate's public key.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, PinError> {
        let der = CertificateDer::from(cert_der);
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| PinError(format!("not an X.509 certificate: {e}")))?;
        Ok(Self::of_spki(cert.subject_public_key_info().as_ref()))
    }

    /// The pin of the first certificate in a PEM file.
    pub fn of_pem_file(path: &Path) -> Result<Self, PinError> {
        let cert = CertificateDer::from_pem_file(path)
            .map_err(|e| PinError(format!("{}: {e}", path.display())))?;
        Self::of_certificate(&cert)
    }

    /// The 64 hex digits (as they appear in a join token).
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A pin or a join token's pin field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PinError(String);

impl FromStr for Pin {
    type Err = PinError;

    /// `sha256:<64 hex>` or the bare 64 hex digits.
    fn from_str(s: &str) -> Result<Self, PinError> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PinError(format!(
                "{s:?} is not a pin (sha256:<64 hex digits>)"
            )));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(Self(out))
    }
}

/// The parts of a join token: `cnj.<id>.<secret>` (before TLS pins) or
/// `cnj.<id>.<secret>.<pin>` (the pin as 64 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinTokenParts<'a> {
    /// Public id (names the stored record).
    pub id: &'a str,
    /// The secret (checked against its stored hash).
    pub secret: &'a str,
    /// The controller certificate's pin, when the controller served TLS at minting time.
    pub pin: Option<Pin>,
}

/// Splits a join token; `None` when it is not shaped like one.
pub fn parse_join_token(token: &str) -> Option<JoinTokenParts<'_>> {
    let rest = token.strip_prefix(JOIN_PREFIX)?;
    let mut fields = rest.split('.');
    let (id, secret) = (fields.next()?, fields.next()?);
    let pin = fields.next().map(str::parse::<Pin>);
    if id.is_empty() || secret.is_empty() || fields.next().is_some() {
        return None;
    }
    let pin = match pin {
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return None,
        None => None,
    };
    Some(JoinTokenParts { id, secret, pin })
}

/// How to trust an `https://` controller.
#[derive(Clone)]
pub struct ClientTls {
    pin: Option<Pin>,
    ca: Option<(PathBuf, Arc<rustls::RootCertStore>)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("pin", &self.pin)
            .field("ca", &self.ca.as_ref().map(|(p, _)| p))
            .finish()
    }
}

/// A CA file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("CA certificate {path}: {reason}")]
pub struct CaError {
    path: String,
    reason: String,
}

impl ClientTls {
    /// Trust `pin` when given, else the CA certificates in the PEM file `ca_cert`, else the
    /// system roots. The CA file is read and checked now, so a bad one fails at start.
    pub fn new(pin: Option<Pin>, ca_cert: Option<&Path>) -> Result<Self, CaError> {
        let ca = ca_cert.map(|path| load_ca(path).map(|s| (path.to_owned(), Arc::new(s))));
        Ok(Self {
            pin,
            ca: ca.transpose()?,
        })
    }

    /// The pin, if any.
    pub fn pin(&self) -> Option<Pin> {
        self.pin
    }

    /// What an `https://` controller is trusted by, in words (`the pin sha256:…`, `the CA file
    /// …`, `the system's root CAs`).
    pub fn trusted(&self) -> String {
        match (&self.pin, &self.ca) {
            (Some(p), _) => format!("the pin {p}"),
            (None, Some((path, _))) => format!("the CA file {}", path.display()),
            (None, None) => "the system's root CAs".into(),
        }
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if let Some(pin) = self.pin {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, provider }))
                .with_no_client_auth()
        } else {
            let roots = match &self.ca {
                Some((_, roots)) => roots.clone(),
                None => Arc::new(system_roots()?),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn load_ca(path: &Path) -> Result<rustls::RootCertStore, CaError> {
    let err = |reason: String| CaError {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no system root CA certificates found ({} errors); give a CA file or a pin",
            found.errors.len()
        ));
    }
    Ok(roots)
}

/// Accepts exactly one public key, the pinned one; the handshake signature is still verified,
/// so the server proves it holds the matching private key.
#[derive(Debug)]
struct PinVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

/// The certificate's key does not match the pin.
#[derive(Debug, thiserror::Error)]
#[error("the controller's certificate key is {got}, not the pinned {want}")]
struct PinMismatch {
    got: Pin,
    want: Pin,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Pin::of_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch {
                    got,
                    want: self.pin,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a connection to a controller failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be used.
    #[error("controller URL {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The certificate's key is not the pinned one.
    #[error(
        "TLS to {url}: wrong pin: {detail}; this is another server or the controller's key \
         changed (check `cladnet-controller show-pin` and use a token created since)"
    )]
    WrongPin {
        /// The URL.
        url: String,
        /// Both pins.
        detail: String,
    },
    /// The certificate does not chain to a trusted CA.
    #[error(
        "TLS to {url}: the controller's certificate is not signed by a trusted CA (trusting \
         {trusted}); give its CA with ca_cert / --ca-cert, or use a join token with a pin"
    )]
    UnknownCa {
        /// The URL.
        url: String,
        /// What was trusted.
        trusted: String,
    },
    /// The certificate was rejected for another reason (expired, wrong name, ...).
    #[error("TLS to {url}: the controller's certificate is not accepted: {reason}")]
    BadCertificate {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// `https://` to a port that does not speak TLS.
    #[error(
        "TLS to {url}: the controller did not answer with TLS ({reason}); if it serves plain \
         HTTP, use an http:// URL"
    )]
    NotTls {
        /// The URL.
        url: String,
        /// What came back.
        reason: String,
    },
    /// `http://` to a port that speaks TLS.
    #[error("{url}{TLS_ON_PLAIN_URL}")]
    TlsOnPlainUrl {
        /// The URL.
        url: String,
    },
    /// Another TLS failure.
    #[error("TLS to {url}: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// TCP connect failed.
    #[error("connecting to {url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The error.
        source: io::Error,
    },
    /// Anything else (HTTP/2 setup, timeouts).
    #[error("connecting to {url}: {reason}")]
    Other {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl ConnectError {
    /// Whether the controller was reached but could not be trusted or spoke the other
    /// protocol (a configuration problem, unlike an unreachable host).
    pub fn is_tls_failure(&self) -> bool {
        matches!(
            self,
            Self::WrongPin { .. }
                | Self::UnknownCa { .. }
                | Self::BadCertificate { .. }
                | Self::NotTls { .. }
                | Self::TlsOnPlainUrl { .. }
                | Self::Tls { .. }
        )
    }

    /// A copy (an `io::Error` source becomes its kind and text).
    fn clone_lossy(&self) -> Self {
        match self {
            Self::Io { url, source } => Self::Io {
                url: url.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            Self::BadUrl { url, reason } => Self::BadUrl {
                url: url.clone(),
                reason: reason.clone(),
            },
            Self::WrongPin { url, detail } => Self::WrongPin {
                url: url.clone(),
                detail: detail.clone(),
            },
            Self::UnknownCa { url, trusted } => Self::UnknownCa {
                url: url.clone(),
                trusted: trusted.clone(),
            },
            Self::BadCertificate { url, reason } => Self::BadCertificate {
                url: url.clone(),
                reason: reason.clone(),
            },
            Self::NotTls { url, reason } => Self::NotTls {
                url: url.clone(),
                reason: reason.clone(),
            },
            Self::TlsOnPlainUrl { url } => Self::TlsOnPlainUrl { url: url.clone() },
            Self::Tls { url, reason } => Self::Tls {
                url: url.clone(),
                reason: reason.clone(),
            },
            Self::Other { url, reason } => Self::Other {
                url: url.clone(),
                reason: reason.clone(),
            },
        }
    }
}

/// The most useful message of a failed connect or call: a [`ConnectError`] anywhere in the
/// source chain (also inside an `io::Error`), else the innermost error's text (e.g.
/// `Connection refused (os error 111)` rather than `transport error`).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    if let Some(c) = find_connect_error(err) {
        return c.to_string();
    }
    let mut last = err;
    while let Some(e) = last.source() {
        last = e;
    }
    last.to_string()
}

/// The same as [`describe`] for a call's status: its message, with the cause when the call
/// failed on the connection.
pub fn describe_status(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => {
            let d = describe(source);
            if status.message().is_empty() || d.contains(status.message()) {
                d
            } else {
                format!("{}: {d}", status.message())
            }
        }
        None => status.message().to_owned(),
    }
}

/// Where a channel connects: host, port, TLS or not.
#[derive(Clone, Debug)]
struct Target {
    url: String,
    host: String,
    port: u16,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>, String)>,
}

/// Connects a tonic channel to `url` (`http://` or `https://`), trusting `tls` for https.
/// The TCP and TLS handshakes happen now, so a wrong pin or CA fails here; each call is
/// bounded by `timeout` when given.
pub async fn connect(
    url: &str,
    tls: &ClientTls,
    connect_timeout: Duration,
    timeout: Option<Duration>,
) -> Result<Channel, ConnectError> {
    let (endpoint, target) = endpoint(url, tls, connect_timeout, timeout)?;
    endpoint
        .connect_with_connector(Connector(target))
        .await
        .map_err(|e| match find_connect_error(&e) {
            Some(c) => c,
            None => ConnectError::Other {
                url: url.to_owned(),
                reason: describe(&e),
            },
        })
}

/// Like [`connect`] but connects on first use.
pub fn connect_lazy(
    url: &str,
    tls: &ClientTls,
    connect_timeout: Duration,
    timeout: Option<Duration>,
) -> Result<Channel, ConnectError> {
    let (endpoint, target) = endpoint(url, tls, connect_timeout, timeout)?;
    Ok(endpoint.connect_with_connector_lazy(Connector(target)))
}

/// The [`ConnectError`] in an error's source chain, also inside an `io::Error` (a copy: the
/// chain only lends it). For a failed call, pass `std::error::Error::source(&status)`.
pub fn find_connect_error(err: &(dyn std::error::Error + 'static)) -> Option<ConnectError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c.clone_lossy());
        }
        // `io::Error` and h2's I/O errors skip themselves in `source()`: look inside.
        let io = e
            .downcast_ref::<io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(c) = io
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<ConnectError>())
        {
            return Some(c.clone_lossy());
        }
        if let Some(url) = io.and_then(|io| {
            io.to_string()
                .strip_suffix(TLS_ON_PLAIN_URL)
                .map(str::to_owned)
        }) {
            return Some(ConnectError::TlsOnPlainUrl { url });
        }
        cur = e.source();
    }
    None
}

/// Tells whether an `http://` controller URL points at a TLS port, by sending the HTTP/2
/// preface on a fresh connection and looking at the first bytes of the answer (a TLS server
/// answers with an alert record). For diagnosing a call that failed with a bare transport
/// error: the TLS answer can lose the race against the server's close on the call's own
/// connection. `None` for `https://` URLs, unreachable hosts and non-TLS answers.
pub async fn sniff_tls_on_plain_url(url: &str) -> Option<ConnectError> {
    let (https, host, port) = parse_url(url).ok()?;
    if https {
        return None;
    }
    let probe = async {
        let mut tcp = TcpStream::connect((host.as_str(), port)).await.ok()?;
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 5];
        let mut got = 0;
        while got < 2 {
            match tcp.read(&mut head[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        looks_like_tls(&head[..got]).then(|| ConnectError::TlsOnPlainUrl {
            url: url.to_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
}

/// Checks a controller URL: `http://` or `https://` and a host.
pub fn check_url(url: &str) -> Result<(), ConnectError> {
    parse_url(url).map(|_| ())
}

fn parse_url(url: &str) -> Result<(bool, String, u16), ConnectError> {
    let bad = |reason: &str| ConnectError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let host = uri.host().ok_or_else(|| bad("has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((https, host, port))
}

fn endpoint(
    url: &str,
    tls: &ClientTls,
    connect_timeout: Duration,
    timeout: Option<Duration>,
) -> Result<(Endpoint, Target), ConnectError> {
    let (https, host, port) = parse_url(url)?;
    // tonic's own TLS layer would refuse an https:// URI with our connector, which does the
    // TLS itself; the URI tonic sees only sets the requests' authority.
    let plain_uri = match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_owned(),
    };
    let mut endpoint = Endpoint::from_shared(plain_uri)
        .map_err(|e| ConnectError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(connect_timeout);
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    let tls = if https {
        let config = tls.rustls_config().map_err(|reason| ConnectError::Tls {
            url: url.to_owned(),
            reason,
        })?;
        let name = ServerName::try_from(host.clone()).map_err(|_| ConnectError::BadUrl {
            url: url.to_owned(),
            reason: "host is not a valid TLS server name".into(),
        })?;
        Some((Arc::new(config), name, tls.trusted()))
    } else {
        None
    };
    Ok((
        endpoint,
        Target {
            url: url.to_owned(),
            host,
            port,
            tls,
        },
    ))
}

/// tonic connector: TCP, then TLS for https (our verifier, our error messages).
#[derive(Clone, Debug)]
struct Connector(Target);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future =
        StdPin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let t = self.0.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|source| ConnectError::Io {
                    url: t.url.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let Some((config, name, trusted)) = t.tls else {
                return Ok(TokioIo::new(Stream::Plain(Sniff::new(tcp, t.url))));
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            match connector.connect(name, tcp).await {
                Ok(s) => Ok(TokioIo::new(Stream::Tls(Box::new(s)))),
                Err(e) => Err(classify(&t.url, &trusted, e)),
            }
        })
    }
}

fn classify(url: &str, trusted: &str, e: io::Error) -> ConnectError {
    let url = url.to_owned();
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => ConnectError::NotTls {
                url,
                reason: format!("the connection closed during the handshake: {e}"),
            },
            _ => ConnectError::Io { url, source: e },
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(m) => ConnectError::WrongPin {
                    url,
                    detail: m.to_string(),
                },
                None => ConnectError::BadCertificate {
                    url,
                    reason: other.to_string(),
                },
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            ConnectError::UnknownCa {
                url,
                trusted: trusted.to_owned(),
            }
        }
        rustls::Error::InvalidCertificate(c) => ConnectError::BadCertificate {
            url,
            reason: format!("{c:?}"),
        },
        rustls::Error::InvalidMessage(_) => ConnectError::NotTls {
            url,
            reason: tls.to_string(),
        },
        other => ConnectError::Tls {
            url,
            reason: other.to_string(),
        },
    }
}

/// A controller connection.
#[derive(Debug)]
pub enum Stream {
    /// `http://`.
    Plain(Sniff),
    /// `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A plain-TCP stream that notices when the server answers with a TLS record (an `http://`
/// URL for a TLS port) and fails the read with [`ConnectError::TlsOnPlainUrl`] instead of
/// letting HTTP/2 report a bad frame.
#[derive(Debug)]
pub struct Sniff {
    tcp: TcpStream,
    url: String,
    first: bool,
}

impl Sniff {
    fn new(tcp: TcpStream, url: String) -> Self {
        Self {
            tcp,
            url,
            first: true,
        }
    }
}

/// Whether `data` starts like a TLS record: handshake (22) or alert (21), version 3.x. An
/// HTTP/2 server starts with a SETTINGS frame (a 3-byte length, first byte 0), HTTP/1 with
/// `HTTP`.
fn looks_like_tls(data: &[u8]) -> bool {
    matches!(data, [0x15 | 0x16, 0x03, ..])
}

impl AsyncRead for Stream {
    fn poll_read(
        self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => StdPin::new(s.as_mut()).poll_read(cx, buf),
            Self::Plain(s) => {
                let before = buf.filled().len();
                let res = StdPin::new(&mut s.tcp).poll_read(cx, buf);
                if let Poll::Ready(Ok(())) = res {
                    let new = &buf.filled()[before..];
                    if s.first && !new.is_empty() {
                        s.first = false;
                        if looks_like_tls(new) {
                            return Poll::Ready(Err(io::Error::other(
                                ConnectError::TlsOnPlainUrl { url: s.url.clone() },
                            )));
                        }
                    }
                }
                res
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tls(s) => StdPin::new(s.as_mut()).poll_write(cx, buf),
            Self::Plain(s) => match StdPin::new(&mut s.tcp).poll_write(cx, buf) {
                // A TLS server may answer the HTTP/2 preface with an alert and a reset before
                // the client reads: the write fails first. The alert may still be queued.
                Poll::Ready(Err(e)) if s.first => {
                    let mut head = [0u8; 5];
                    match s.tcp.try_read(&mut head) {
                        Ok(n) if looks_like_tls(&head[..n]) => {
                            Poll::Ready(Err(io::Error::other(ConnectError::TlsOnPlainUrl {
                                url: s.url.clone(),
                            })))
                        }
                        _ => Poll::Ready(Err(e)),
                    }
                }
                other => other,
            },
        }
    }

    fn poll_flush(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => StdPin::new(s.as_mut()).poll_flush(cx),
            Self::Plain(s) => StdPin::new(&mut s.tcp).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => StdPin::new(s.as_mut()).poll_shutdown(cx),
            Self::Plain(s) => StdPin::new(&mut s.tcp).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn pins_parse_and_print() {
        let p: Pin = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(p.to_string(), format!("sha256:{HEX}"));
        assert_eq!(HEX.parse::<Pin>().unwrap(), p);
        assert!("sha256:00".parse::<Pin>().is_err());
        assert!(format!("md5:{HEX}").parse::<Pin>().is_err());
        assert!(HEX.replace('0', "g").parse::<Pin>().is_err());
    }

    #[test]
    fn join_tokens_with_and_without_pin() {
        let old = parse_join_token("cnj.abc.def").unwrap();
        assert_eq!((old.id, old.secret, old.pin), ("abc", "def", None));
        let text = format!("cnj.abc.def.{HEX}");
        let new = parse_join_token(&text).unwrap();
        assert_eq!((new.id, new.secret), ("abc", "def"));
        assert_eq!(new.pin.unwrap().hex(), HEX);
        for bad in [
            "cnj.abc",
            "cnj..def",
            "cnj.abc.",
            "cns.abc.def",
            "cnj.abc.def.nothex",
            &format!("cnj.abc.def.{HEX}.more"),
        ] {
            assert!(parse_join_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tls_records_are_recognised() {
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        // An HTTP/2 SETTINGS frame and an HTTP/1 status line are not TLS.
        assert!(!looks_like_tls(&[0x00, 0x00, 0x12, 0x04]));
        assert!(!looks_like_tls(b"HTTP/1.1 400"));
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://ctl.example:8053").is_ok());
        assert!(check_url("http://[::1]:8053").is_ok());
        let err = check_url("ftp://x").unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn tls_answer_is_found_by_its_text_after_h2_copies_it() {
        let copied = io::Error::other(
            ConnectError::TlsOnPlainUrl {
                url: "http://h:1".into(),
            }
            .to_string(),
        );
        let outer = Outer(copied);
        let found = find_connect_error(&outer).expect("found");
        assert!(matches!(found, ConnectError::TlsOnPlainUrl { ref url } if url == "http://h:1"));
    }
}
