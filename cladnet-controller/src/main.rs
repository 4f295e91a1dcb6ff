//! `cladnet-controller`: the CLADNet control plane server.
#![forbid(unsafe_code)]

use std::{
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use cladnet_controller::{
    auth::{AdminAuth, random_hex},
    selfsigned, server,
    service::Controller,
};
use cladnet_proto::tls::Pin;
use cladnet_store::StoreUrl;
use clap::Parser;
use tokio::net::TcpListener;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// CLADNet controller: shares every peer's reachability ahead of time.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address for gRPC and REST (one port).
    #[arg(long, env = "CLADNET_LISTEN", default_value = "0.0.0.0:8053")]
    listen: SocketAddr,
    /// UDP address of the endpoint reflector agents probe to learn their public endpoint
    /// (default: the --listen address, over UDP).
    #[arg(long, env = "CLADNET_REFLECTOR_LISTEN")]
    reflector_listen: Option<SocketAddr>,
    /// State store: `embedded:PATH` (single node, default) or `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(
        long,
        env = "CLADNET_STORE",
        default_value = "embedded:/var/lib/cladnet/controller.redb"
    )]
    store: StoreUrl,
    /// File holding the admin token; created with a random token (mode 0600) if missing.
    /// Controllers sharing one etcd must be given the same file.
    #[arg(
        long,
        env = "CLADNET_ADMIN_TOKEN_FILE",
        default_value = "/var/lib/cladnet/admin.token"
    )]
    admin_token_file: PathBuf,
    /// TLS: `auto` serves with a self-signed certificate created on first start in --tls-dir
    /// and kept (join tokens then carry its pin, so agents need nothing else); `off` serves
    /// plain HTTP (only for a controller reachable on one host or a trusted network). Giving
    /// --tls-cert and --tls-key serves with those instead.
    #[arg(long, env = "CLADNET_TLS", value_enum, default_value = "off")]
    tls: TlsMode,
    /// Directory of the `--tls auto` certificate and key (`controller.crt`, `controller.key`,
    /// mode 0600). Controllers sharing one etcd behind one address should share these files.
    #[arg(long, env = "CLADNET_TLS_DIR", default_value = "/var/lib/cladnet/tls")]
    tls_dir: PathBuf,
    /// Extra names (DNS names or IP addresses) the `--tls auto` certificate lists, besides
    /// localhost, 127.0.0.1, ::1, the host name and the --listen address. Comma separated or
    /// repeated. Only clients trusting the certificate as a CA check names; pinned clients
    /// (agents with a token) do not.
    #[arg(long, env = "CLADNET_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// PEM certificate chain: serve gRPC and REST over TLS (needs --tls-key).
    #[arg(
        long,
        env = "CLADNET_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "tls"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CLADNET_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Address of the Prometheus /metrics endpoint (unauthenticated: keep it on a private
    /// address), or "off".
    #[arg(long, env = "CLADNET_METRICS_LISTEN", default_value = "127.0.0.1:9413")]
    metrics_listen: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the pin (`sha256:<hex>` of the certificate's public key) of --tls-cert, or of the
    /// `--tls auto` certificate in --tls-dir, and exit.
    ShowPin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TlsMode {
    Off,
    Auto,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::ShowPin) = cli.command {
        let cert = cli
            .tls_cert
            .clone()
            .unwrap_or_else(|| cli.tls_dir.join(selfsigned::CERT_FILE));
        let pin = Pin::of_pem_file(&cert).with_context(|| {
            format!(
                "reading the controller certificate {} (start the controller with --tls auto \
                 once, or give --tls-cert)",
                cert.display()
            )
        })?;
        println!("{pin}");
        return Ok(());
    }
    init_tracing(cli.log_format);
    let admin = admin_auth(&cli.admin_token_file)?;
    let (tls, pin) = match (&cli.tls_cert, &cli.tls_key, cli.tls) {
        (Some(cert), Some(key), _) => (
            Some(server::tls_config(cert, key)?),
            Some(Pin::of_pem_file(cert).context("--tls-cert")?),
        ),
        (_, _, TlsMode::Auto) => {
            let mut extra = cli.tls_san.clone();
            if !cli.listen.ip().is_unspecified() {
                extra.push(cli.listen.ip().to_string());
            }
            let auto = selfsigned::ensure(&cli.tls_dir, &selfsigned::default_names(&extra))?;
            (
                Some(server::tls_config(&auto.cert, &auto.key)?),
                Some(auto.pin),
            )
        }
        _ => (None, None),
    };
    match pin {
        Some(pin) => info!(%pin, "serving TLS; join tokens carry this pin"),
        None if !cli.listen.ip().is_loopback() => warn!(
            listen = %cli.listen,
            "serving plain HTTP on a non-loopback address: join and session tokens travel in \
             clear; use --tls auto"
        ),
        None => {}
    }
    if let StoreUrl::Embedded { path } = &cli.store
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = cladnet_store::connect(&cli.store)
        .await
        .with_context(|| format!("opening store {}", cli.store))?;
    cladnet_controller::layout::ensure(store.as_ref())
        .await
        .with_context(|| format!("checking the key layout of store {}", cli.store))?;
    let metrics_addr: Option<SocketAddr> =
        match cli.metrics_listen.as_str() {
            "off" | "" => None,
            s => Some(s.parse().map_err(|_| {
                anyhow::anyhow!("--metrics-listen: {s:?} is not ip:port or \"off\"")
            })?),
        };
    let ctl = Arc::new(Controller::new(store, admin).with_tls_pin(pin));
    if let Some(addr) = metrics_addr {
        cladnet_controller::metrics::start(addr, ctl.metrics().clone())
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    }
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    info!(listen = %listener.local_addr()?, store = %cli.store, tls = tls.is_some(), "controller serving gRPC and REST");
    let reflector_addr = cli.reflector_listen.unwrap_or(cli.listen);
    let reflector = tokio::net::UdpSocket::bind(reflector_addr)
        .await
        .with_context(|| format!("binding the reflector on udp {reflector_addr}"))?;
    // The filtering test of `relay = "auto"` agents is answered from a second port (any free
    // one on the same address).
    let other_addr = SocketAddr::new(reflector.local_addr()?.ip(), 0);
    let other = match tokio::net::UdpSocket::bind(other_addr).await {
        Ok(s) => Some(s),
        Err(error) => {
            warn!(%error, "no second reflector port: relay = \"auto\" agents will not relay");
            None
        }
    };
    info!(
        listen = %reflector.local_addr()?,
        other_port = ?other.as_ref().and_then(|s| s.local_addr().ok()),
        "endpoint reflector serving"
    );
    let (reflector_stop, reflector_stopped) = tokio::sync::oneshot::channel::<()>();
    let reflector = tokio::spawn(cladnet_controller::reflector::serve(
        reflector,
        other,
        async {
            let _ = reflector_stopped.await;
        },
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stop_rx.await;
    };
    let server = match tls {
        Some(tls) => tokio::spawn(server::serve_tls(listener, ctl, tls, stopped)),
        None => tokio::spawn(server::serve(listener, ctl, stopped)),
    };
    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(());
    let _ = reflector_stop.send(());
    let _ = reflector.await;
    // Watch streams stay open until their agents go; do not wait for them forever.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(joined) => joined.context("server task")?.context("serving")?,
        Err(_) => warn!("open streams did not close within 5 s; exiting anyway"),
    }
    Ok(())
}

/// Reads the admin token file, creating it with a fresh token if it does not exist.
fn admin_auth(path: &Path) -> anyhow::Result<AdminAuth> {
    if let Ok(token) = std::env::var("CLADNET_ADMIN_TOKEN") {
        return AdminAuth::new(&token).context("CLADNET_ADMIN_TOKEN");
    }
    let token = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let token = random_hex(24);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating admin token file {}", path.display()))?;
            writeln!(f, "{token}")?;
            info!(path = %path.display(), "created a new admin token");
            token
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading admin token file {}", path.display()));
        }
    };
    if token.trim().is_empty() {
        bail!("admin token file {} is empty", path.display());
    }
    AdminAuth::new(&token).with_context(|| format!("admin token in {}", path.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
