//! The controller over TLS: a client trusting the certificate gets through, plaintext does not;
//! `--tls auto` keeps its key and shows its pin; idle connections are dropped; join tokens
//! with a use limit are counted atomically with the join.

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use cladnet_controller::{auth::AdminAuth, server, service::Controller};
use cladnet_proto::v1::{self as pb, network_service_client::NetworkServiceClient};
use cladnet_store::embedded::{EmbeddedOptions, EmbeddedStore};
use cladnet_tests::controller::{ADMIN_TOKEN, Bearer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    let store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default())
        .await
        .unwrap();
    let ctl = Arc::new(Controller::new(
        Arc::new(store),
        AdminAuth::new(ADMIN_TOKEN).unwrap(),
    ));
    let tls = server::tls_config(&cert, &key).expect("load certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve_tls(listener, ctl, tls, async {
        let _ = stopped.await;
    }));

    let ca = Certificate::from_pem(std::fs::read(&cert).unwrap());
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS connect");
    let mut admin = NetworkServiceClient::with_interceptor(channel, Bearer::new(ADMIN_TOKEN));
    let created = admin
        .create_network(pb::Network {
            cladnet_id: "tls".into(),
            ipv4_address_space: "10.9.0.0/24".into(),
            ..Default::default()
        })
        .await
        .expect("create over TLS");
    assert_eq!(created.into_inner().cladnet_id, "tls");

    // Plaintext gRPC to the TLS port fails.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = NetworkServiceClient::with_interceptor(channel, Bearer::new(ADMIN_TOKEN));
        assert!(
            client
                .list_networks(pb::ListNetworksRequest {})
                .await
                .is_err(),
            "plaintext must not be served"
        );
    }

    // A missing or bad key file is a clear error naming the file.
    let err = server::tls_config(&cert, &dir.path().join("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("private key") && err.contains("missing.pem"),
        "{err}"
    );
    let _ = stop.send(());
    let _ = task.await;
}

/// A `--tls auto` controller process on loopback.
struct AutoTlsController {
    child: std::process::Child,
    url: String,
}

impl AutoTlsController {
    fn start(dir: &std::path::Path, port: u16) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("controller.log"))
            .unwrap();
        let child = Command::new(cladnet_tests::bin_path("cladnet-controller"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--reflector-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
            ])
            .arg("--store")
            .arg(format!("embedded:{}", dir.join("s.redb").display()))
            .args(["--tls", "auto", "--tls-dir"])
            .arg(dir.join("tls"))
            .env("CLADNET_ADMIN_TOKEN", ADMIN_TOKEN)
            .stderr(log)
            .spawn()
            .expect("start cladnet-controller");
        let url = format!("https://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "controller did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url }
    }
}

impl Drop for AutoTlsController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(cladnet_tests::bin_path("cladnet"))
        .args(["--controller", url, "--token", ADMIN_TOKEN])
        .args(args)
        .env_remove("CLADNET_CA_CERT")
        .env_remove("CLADNET_CONTROLLER_PIN")
        .output()
        .expect("run cladnet")
}

fn show_pin(dir: &std::path::Path) -> String {
    let out = Command::new(cladnet_tests::bin_path("cladnet-controller"))
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .arg("show-pin")
        .output()
        .expect("show-pin");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// How long the server keeps a connection that sends nothing: seconds until it closes it.
fn idle_lifetime(port: u16) -> f64 {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    // Closed (0 bytes) or reset: either way the server dropped it. A read timeout is a
    // failure: the connection was kept.
    match s.read(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("idle connection still open after 30 s: {e}"),
    }
    start.elapsed().as_secs_f64()
}

#[test]
fn tls_auto_keeps_its_key_shows_its_pin_and_explains_failures() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ctl = AutoTlsController::start(dir.path(), port);
    let pin = show_pin(dir.path());
    assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
    let key = dir.path().join("tls/controller.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
    let cert_before = std::fs::read(dir.path().join("tls/controller.crt")).unwrap();

    // The CLI with the pin: works; the token it mints carries the pin (REST and gRPC share
    // the response message, so `--json` is the REST body too).
    let out = cli(
        &ctl.url,
        &[
            "--pin",
            &pin,
            "network",
            "create",
            "t",
            "--id",
            "t",
            "--cidr",
            "10.9.0.0/24",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = cli(
        &ctl.url,
        &[
            "--pin", &pin, "--json", "token", "create", "t", "--uses", "1",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["controllerPin"], pin.as_str());
    let token = created["token"].as_str().unwrap();
    assert!(token.ends_with(&pin["sha256:".len()..]), "{token}");
    assert_eq!(created["info"]["maxUses"], 1);
    // The certificate names 127.0.0.1, so it also serves as a CA file.
    let ca = dir.path().join("tls/controller.crt");
    let out = cli(&ctl.url, &["--ca-cert", ca.to_str().unwrap(), "health"]);
    assert!(out.status.success(), "{out:?}");

    // Clear failures: wrong pin, unknown CA, http:// to the TLS port.
    let wrong = format!("sha256:{}", "11".repeat(32));
    let out = cli(&ctl.url, &["--pin", &wrong, "health"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains(&format!(
            "wrong pin: the controller's certificate key is {pin}, not the pinned {wrong}"
        )),
        "{err}"
    );
    let out = cli(&ctl.url, &["health"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    let out = cli(&ctl.url.replace("https://", "http://"), &["health"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("answered with TLS; use https://"), "{err}");

    // Slowloris: a TCP connection that never starts its handshake is dropped after the
    // handshake timeout, while a real client is served at the same instant.
    let idle = std::thread::spawn(move || idle_lifetime(port));
    let out = cli(&ctl.url, &["--pin", &pin, "health"]);
    assert!(out.status.success(), "{out:?}");
    let secs = idle.join().unwrap();
    let limit = server::TLS_HANDSHAKE_TIMEOUT.as_secs_f64();
    assert!(
        (limit - 0.5..limit + 3.0).contains(&secs),
        "idle TLS connection lived {secs:.1} s (handshake timeout {limit} s)"
    );

    // Restart: the same key, pin and certificate.
    drop(ctl);
    let ctl = AutoTlsController::start(dir.path(), port);
    assert_eq!(show_pin(dir.path()), pin);
    assert_eq!(
        std::fs::read(dir.path().join("tls/controller.crt")).unwrap(),
        cert_before
    );
    let out = cli(&ctl.url, &["--pin", &pin, "health"]);
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_drops_connections_that_send_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default())
        .await
        .unwrap();
    let ctl = Arc::new(Controller::new(
        Arc::new(store),
        AdminAuth::new(ADMIN_TOKEN).unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(server::serve(listener, ctl, std::future::pending()));
    // Three idle connections and one that sends half an HTTP/1.1 request line, opened at the
    // same instant as a real client.
    let idle: Vec<_> = (0..3)
        .map(|_| tokio::task::spawn_blocking(move || idle_lifetime(port)))
        .collect();
    let partial = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /hea").unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 256];
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = std::io::Read::read(&mut s, &mut buf).expect("closed, not timed out");
        start.elapsed().as_secs_f64()
    });
    let url = format!("http://127.0.0.1:{port}");
    let out = tokio::task::spawn_blocking(move || cli(&url, &["health"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let limit = server::HEADER_READ_TIMEOUT.as_secs_f64();
    for h in idle {
        let secs = h.await.unwrap();
        assert!(
            (limit - 0.5..limit + 3.0).contains(&secs),
            "idle connection lived {secs:.1} s (header read timeout {limit} s)"
        );
    }
    let secs = partial.await.unwrap();
    assert!(secs < limit + 3.0, "partial request line kept {secs:.1} s");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_join_tokens() {
    use cladnet_tests::{api_checks, controller::TestController};
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default())
        .await
        .unwrap();
    let ctl = TestController::start(Arc::new(store)).await;
    let net = api_checks::network(&ctl, "once", "10.93.0.0/24").await;
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let minter = admin.clone();
    let mint = async |uses: u32| {
        minter
            .clone()
            .create_join_token(pb::CreateJoinTokenRequest {
                cladnet_id: net.clone(),
                max_uses: uses,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let once = mint(1).await;
    let id = once.info.as_ref().unwrap().token_id.clone();
    api_checks::join(&ctl, &once.token, &net, "node-a").await;
    // A restart of node-a (same host id, same key) uses nothing up.
    api_checks::join(&ctl, &once.token, &net, "node-a").await;
    let mut agent = ctl.agent(&once.token).await;
    let refused = api_checks::join_signed(&mut agent, api_checks::join_request(&net, "node-b"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("join token {id} is used up (1 of 1 joins)")),
        "{refused:?}"
    );
    // node-a under another key is a new registration: it would need a use too.
    let mut other_key = api_checks::join_request(&net, "node-a");
    other_key.public_key = api_checks::public_key("someone-else");
    let other_key = api_checks::prove_with(
        &mut agent,
        other_key,
        &api_checks::private_key("someone-else"),
    )
    .await;
    let refused = agent.join(other_key).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Two joins at the same instant with a fresh single-use token: exactly one gets in.
    let once = mint(1).await;
    let (mut c1, mut c2) = (ctl.agent(&once.token).await, ctl.agent(&once.token).await);
    let (r1, r2) = tokio::join!(
        api_checks::join_signed(&mut c1, api_checks::join_request(&net, "node-c")),
        api_checks::join_signed(&mut c2, api_checks::join_request(&net, "node-d")),
    );
    assert_eq!(
        [r1.is_ok(), r2.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{r1:?}\n{r2:?}"
    );
    let listed = admin
        .list_join_tokens(pb::GetNetworkRequest {
            cladnet_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let t = listed
        .tokens
        .iter()
        .find(|t| t.token_id == once.info.as_ref().unwrap().token_id)
        .unwrap();
    assert_eq!((t.uses, t.max_uses), (1, 1));

    // Unlimited tokens stay unlimited and uncounted.
    let many = mint(0).await;
    for n in ["node-e", "node-f", "node-g"] {
        api_checks::join(&ctl, &many.token, &net, n).await;
    }
    ctl.stop().await;
}
