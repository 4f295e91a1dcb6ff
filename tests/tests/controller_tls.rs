//! The controller over TLS: a client trusting the certificate gets through, plaintext does not.

use std::{process::Command, sync::Arc};

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
