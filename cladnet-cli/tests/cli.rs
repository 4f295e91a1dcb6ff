//! Runs the built `cladnet` binary against an in-process fake `NetworkService` (canned data,
//! bearer-token checks) and checks tables, `--json`, error messages and exit codes.

use std::{net::SocketAddr, process::Output};

use cladnet_proto::v1::{
    AddExternalPeerRequest, ConnectivityTest, CreateJoinTokenRequest, CreateJoinTokenResponse,
    DeleteNetworkResponse, DeletePeerResponse, ExternalPeerConfig, GetConnectivityTestRequest,
    GetNetworkRequest, GetPeerRequest, HealthRequest, HealthResponse, JoinToken,
    ListJoinTokensResponse, ListNetworksRequest, ListNetworksResponse, ListPeersRequest,
    ListPeersResponse, ListRoutesRequest, ListRoutesResponse, Network, PairResult, Peer,
    RecommendAddressSpaceRequest, RecommendAddressSpaceResponse, RevokeJoinTokenRequest,
    RevokeJoinTokenResponse, Route, RouteDecisionRequest, SendCommandRequest, SendCommandResponse,
    StartConnectivityTestRequest, UpdatePeerDetailsRequest,
    network_service_server::{NetworkService, NetworkServiceServer},
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// The fake controller's admin token.
const ADMIN: &str = "test-admin-token-0123456789";

type Reply<T> = Result<Response<T>, Status>;

/// Checks `authorization: Bearer <ADMIN>` like the controller does.
fn admin<T>(req: &Request<T>) -> Result<(), Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    match header.and_then(|h| h.strip_prefix("Bearer ")) {
        None => Err(Status::unauthenticated(
            "missing authorization: Bearer <token>",
        )),
        Some(t) if t == ADMIN => Ok(()),
        Some(_) => Err(Status::unauthenticated("invalid admin token")),
    }
}

fn networks() -> Vec<Network> {
    vec![
        Network {
            cladnet_id: "net-1".into(),
            name: "prod".into(),
            ipv4_address_space: "10.77.0.0/24".into(),
            description: "production".into(),
            rule_type: "basic".into(),
            encryption: "always".into(),
            revision: 7,
            route_approval: "manual".into(),
            exit_nodes: "deny".into(),
        },
        Network {
            cladnet_id: "lab".into(),
            name: "lab".into(),
            ipv4_address_space: "192.168.200.0/24".into(),
            description: String::new(),
            rule_type: "cost-prioritized".into(),
            encryption: "inter-site".into(),
            revision: 3,
            ..Default::default()
        },
    ]
}

fn peers() -> Vec<Peer> {
    vec![
        Peer {
            cladnet_id: "net-1".into(),
            host_id: "h-aaaa".into(),
            host_name: "vm-a".into(),
            ip: "10.77.0.1".into(),
            ipv4_cidr: "10.77.0.0/24".into(),
            state: "up".into(),
            public_endpoint: "203.0.113.5:8055".into(),
            private_endpoint: "192.168.1.10:8055".into(),
            dataplane: "xdp-driver".into(),
            ..Default::default()
        },
        Peer {
            cladnet_id: "net-1".into(),
            host_id: "h-b".into(),
            host_name: "vm-b".into(),
            ip: "10.77.0.2".into(),
            ipv4_cidr: "10.77.0.0/24".into(),
            state: "joining".into(),
            ..Default::default()
        },
    ]
}

fn routes() -> Vec<Route> {
    vec![
        Route {
            host_id: "h-aaaa".into(),
            prefix: "10.244.1.0/24".into(),
            state: "approved".into(),
            advertised_at: 1_700_000_000,
            decided_at: 1_700_000_000,
        },
        Route {
            host_id: "h-b".into(),
            prefix: "10.244.2.0/24".into(),
            state: "pending".into(),
            advertised_at: 1_700_000_000,
            decided_at: 0,
        },
    ]
}

/// The fake's approve/reject: the route must exist, as the controller checks.
fn decide(r: RouteDecisionRequest, state: &str) -> Reply<Route> {
    let route = routes()
        .into_iter()
        .find(|x| x.host_id == r.host_id && x.prefix == r.prefix)
        .ok_or_else(|| {
            Status::not_found(format!(
                "route {} of peer {:?} not found",
                r.prefix, r.host_id
            ))
        })?;
    Ok(Response::new(Route {
        state: state.into(),
        decided_at: 1_700_000_060,
        ..route
    }))
}

fn find_network(id: &str) -> Result<Network, Status> {
    networks()
        .into_iter()
        .find(|n| n.cladnet_id == id)
        .ok_or_else(|| Status::not_found(format!("network {id} not found")))
}

/// A fake controller with canned data.
struct Fake;

#[tonic::async_trait]
impl NetworkService for Fake {
    async fn create_network(&self, req: Request<Network>) -> Reply<Network> {
        admin(&req)?;
        let mut n = req.into_inner();
        if n.name.is_empty() {
            return Err(Status::invalid_argument("name: must not be empty"));
        }
        if find_network(&n.cladnet_id).is_ok() {
            return Err(Status::already_exists(format!(
                "network {} already exists",
                n.cladnet_id
            )));
        }
        if n.ipv4_address_space == "auto" {
            n.ipv4_address_space = "10.0.0.0/24".into();
        }
        if n.cladnet_id.is_empty() {
            n.cladnet_id = "gen-1".into();
        }
        n.revision = 11;
        Ok(Response::new(n))
    }

    async fn get_network(&self, req: Request<GetNetworkRequest>) -> Reply<Network> {
        admin(&req)?;
        find_network(&req.get_ref().cladnet_id).map(Response::new)
    }

    async fn list_networks(
        &self,
        req: Request<ListNetworksRequest>,
    ) -> Reply<ListNetworksResponse> {
        admin(&req)?;
        Ok(Response::new(ListNetworksResponse {
            cladnet_specifications: networks(),
        }))
    }

    async fn update_network(&self, req: Request<Network>) -> Reply<Network> {
        admin(&req)?;
        let mut n = req.into_inner();
        let current = find_network(&n.cladnet_id)?;
        if n.revision != current.revision {
            return Err(Status::aborted("revision changed"));
        }
        if n.ipv4_address_space != current.ipv4_address_space {
            return Err(Status::failed_precondition("address space changed"));
        }
        n.revision += 1;
        Ok(Response::new(n))
    }

    async fn delete_network(
        &self,
        req: Request<GetNetworkRequest>,
    ) -> Reply<DeleteNetworkResponse> {
        admin(&req)?;
        let n = find_network(&req.get_ref().cladnet_id)?;
        Ok(Response::new(DeleteNetworkResponse {
            is_succeeded: true,
            message: String::new(),
            cladnet_specification: Some(n),
        }))
    }

    async fn list_peers(&self, req: Request<ListPeersRequest>) -> Reply<ListPeersResponse> {
        admin(&req)?;
        find_network(&req.get_ref().cladnet_id)?;
        Ok(Response::new(ListPeersResponse { peers: peers() }))
    }

    async fn get_peer(&self, req: Request<GetPeerRequest>) -> Reply<Peer> {
        admin(&req)?;
        let r = req.into_inner();
        peers()
            .into_iter()
            .find(|p| p.cladnet_id == r.cladnet_id && p.host_id == r.host_id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("peer {} not found", r.host_id)))
    }

    async fn update_peer_details(&self, _: Request<UpdatePeerDetailsRequest>) -> Reply<Peer> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn delete_peer(&self, _: Request<GetPeerRequest>) -> Reply<DeletePeerResponse> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn add_external_peer(&self, req: Request<AddExternalPeerRequest>) -> Reply<Peer> {
        admin(&req)?;
        let r = req.into_inner();
        find_network(&r.cladnet_id)?;
        if r.name == "vm-a" {
            return Err(Status::already_exists(
                "name: peer \"ext-vm-a\" already exists",
            ));
        }
        Ok(Response::new(Peer {
            cladnet_id: r.cladnet_id,
            host_id: format!("ext-{}", r.name),
            host_name: r.name,
            ip: if r.ip.is_empty() {
                "10.77.0.3".into()
            } else {
                r.ip
            },
            ipv4_cidr: "10.77.0.0/24".into(),
            state: "up".into(),
            public_key: r.public_key,
            public_endpoint: r.endpoint,
            external: true,
            ..Default::default()
        }))
    }

    async fn get_external_peer_config(
        &self,
        req: Request<GetPeerRequest>,
    ) -> Reply<ExternalPeerConfig> {
        admin(&req)?;
        let r = req.into_inner();
        if !r.host_id.starts_with("ext-") {
            return Err(Status::failed_precondition(format!(
                "hostId: peer {:?} is a CLADNet agent, not an external WireGuard peer",
                r.host_id
            )));
        }
        Ok(Response::new(ExternalPeerConfig {
            config: format!("[Interface]\nAddress = 10.77.0.3/24\n# {}\n", r.host_id),
        }))
    }

    async fn recommend_address_space(
        &self,
        req: Request<RecommendAddressSpaceRequest>,
    ) -> Reply<RecommendAddressSpaceResponse> {
        admin(&req)?;
        let r = req.into_inner();
        if r.ipv4_cidrs.iter().any(|c| c.starts_with("10.")) {
            return Err(Status::invalid_argument(
                "ipv4_cidrs: fake only avoids 192.168",
            ));
        }
        Ok(Response::new(RecommendAddressSpaceResponse {
            recommended_ipv4_private_address_space: "10.0.0.0/28".into(),
            address_space10s: vec!["10.0.0.0/28".into()],
            address_space172s: vec!["172.16.0.0/28".into()],
            address_space192s: vec![],
        }))
    }

    async fn list_routes(&self, req: Request<ListRoutesRequest>) -> Reply<ListRoutesResponse> {
        admin(&req)?;
        let r = req.into_inner();
        find_network(&r.cladnet_id)?;
        Ok(Response::new(ListRoutesResponse {
            routes: routes()
                .into_iter()
                .filter(|x| r.host_id.is_empty() || x.host_id == r.host_id)
                .collect(),
        }))
    }

    async fn approve_route(&self, req: Request<RouteDecisionRequest>) -> Reply<Route> {
        admin(&req)?;
        decide(req.into_inner(), "approved")
    }

    async fn reject_route(&self, req: Request<RouteDecisionRequest>) -> Reply<Route> {
        admin(&req)?;
        decide(req.into_inner(), "rejected")
    }

    async fn send_command(&self, req: Request<SendCommandRequest>) -> Reply<SendCommandResponse> {
        admin(&req)?;
        let r = req.into_inner();
        if r.command_type == "advertise-routes" {
            // Echoes what it got, so the test sees the prefixes the CLI sent.
            return Ok(Response::new(SendCommandResponse {
                is_succeeded: true,
                message: format!("routes: {}", r.routes.join(" ")),
                host_ids: vec![r.host_id],
            }));
        }
        let host_ids = if r.host_id.is_empty() {
            peers().into_iter().map(|p| p.host_id).collect()
        } else {
            vec![r.host_id]
        };
        Ok(Response::new(SendCommandResponse {
            is_succeeded: r.command_type == "up",
            message: if r.command_type == "up" {
                String::new()
            } else {
                format!("fake refuses {}", r.command_type)
            },
            host_ids,
        }))
    }

    async fn start_connectivity_test(
        &self,
        _: Request<StartConnectivityTestRequest>,
    ) -> Reply<ConnectivityTest> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn get_connectivity_test(
        &self,
        req: Request<GetConnectivityTestRequest>,
    ) -> Reply<ConnectivityTest> {
        admin(&req)?;
        let r = req.into_inner();
        Ok(Response::new(ConnectivityTest {
            cladnet_id: r.cladnet_id,
            test_id: r.test_id,
            trial_count: 3,
            host_ids: vec!["h-aaaa".into(), "h-b".into()],
            reported_host_ids: vec!["h-aaaa".into(), "h-b".into()],
            results: vec![PairResult {
                source_host_id: "h-aaaa".into(),
                source_ip: "10.77.0.1".into(),
                destination_host_id: "h-b".into(),
                destination_ip: "10.77.0.2".into(),
                min_rtt_ms: 1.0,
                avg_rtt_ms: 1.5,
                max_rtt_ms: 2.0,
                stddev_rtt_ms: 0.5,
                packets_sent: 3,
                packets_received: 3,
                packet_loss: 0.0,
            }],
            complete: true,
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Reply<CreateJoinTokenResponse> {
        admin(&req)?;
        let r = req.into_inner();
        find_network(&r.cladnet_id)?;
        let created_at = 1_700_000_000;
        let ttl = i64::try_from(r.ttl_seconds).map_err(|_| Status::invalid_argument("ttl"))?;
        Ok(Response::new(CreateJoinTokenResponse {
            info: Some(JoinToken {
                token_id: "tok1".into(),
                cladnet_id: r.cladnet_id,
                description: r.description,
                created_at,
                expires_at: if ttl == 0 { 0 } else { created_at + ttl },
                max_uses: r.max_uses,
                uses: 0,
            }),
            token: "cnj.tok1.s3cr3t".into(),
            controller_pin: String::new(),
        }))
    }

    async fn list_join_tokens(
        &self,
        _: Request<GetNetworkRequest>,
    ) -> Reply<ListJoinTokensResponse> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn revoke_join_token(
        &self,
        _: Request<RevokeJoinTokenRequest>,
    ) -> Reply<RevokeJoinTokenResponse> {
        Err(Status::permission_denied("not an admin"))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Reply<HealthResponse> {
        Ok(Response::new(HealthResponse {
            status: "healthy".into(),
            store: "embedded".into(),
            revision: 42,
            message: String::new(),
        }))
    }
}

/// Starts the fake on 127.0.0.1 (an ephemeral port); returns its URL.
async fn start_fake() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .serve_with_incoming(NetworkServiceServer::new(Fake), TcpIncoming::from(listener))
            .await
            .expect("fake server");
    });
    format!("http://{addr}")
}

/// Runs `cladnet` with a clean environment (no CLADNET_* from the caller).
async fn cladnet(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cladnet"));
    for var in [
        "CLADNET_CONTROLLER",
        "CLADNET_TOKEN",
        "CLADNET_TOKEN_FILE",
        "CLADNET_CA_CERT",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).output().await.expect("run cladnet")
}

/// `cladnet --controller URL --token ADMIN args...`.
async fn admin_cli(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["--controller", url, "--token", ADMIN];
    all.extend_from_slice(args);
    cladnet(&all).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

#[tokio::test]
async fn peers_table() {
    let url = start_fake().await;
    let o = admin_cli(&url, &["peers", "net-1"]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "\
HOST ID  NAME  OVERLAY IP  STATE    PUBLIC ENDPOINT   PRIVATE ENDPOINT   DATAPLANE
h-aaaa   vm-a  10.77.0.1   up       203.0.113.5:8055  192.168.1.10:8055  xdp-driver
h-b      vm-b  10.77.0.2   joining  -                 -                  -
"
    );
}

#[tokio::test]
async fn external_peers_add_and_wg_config() {
    let url = start_fake().await;
    let key = "q3Vh0e9y1xVvM8nH0y8o5b0P1o3F5w9J2zWmC2Kp3Ek=";
    let add = |name: &'static str, extra: &'static [&'static str]| {
        let mut args = vec![
            "peer",
            "add-external",
            "net-1",
            "--name",
            name,
            "--public-key",
            key,
        ];
        args.extend_from_slice(extra);
        args
    };
    let o = admin_cli(&url, &add("laptop", &["--endpoint", "198.51.100.20:51820"])).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("Host ID:           ext-laptop\n"), "{out}");
    assert!(
        out.contains("Kind:              external WireGuard peer\n"),
        "{out}"
    );
    assert!(
        out.contains("Overlay IP:        10.77.0.3 in 10.77.0.0/24\n"),
        "{out}"
    );
    assert!(
        out.contains("Public endpoint:   198.51.100.20:51820\n"),
        "{out}"
    );
    assert_eq!(
        stderr(&o),
        "Its WireGuard configuration: cladnet peer wg-config net-1 ext-laptop\n"
    );

    let o = admin_cli(&url, &add("phone", &["--ip", "10.77.0.50", "--json"])).await;
    assert_ok(&o);
    let p: Peer = serde_json::from_slice(&o.stdout).expect("a Peer");
    assert_eq!(
        (p.host_id.as_str(), p.ip.as_str()),
        ("ext-phone", "10.77.0.50")
    );
    assert!(p.external);
    let value: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(value["external"], true);
    assert!(o.stderr.is_empty(), "{}", stderr(&o));

    // A conflict, and bad flags rejected before any call.
    let o = admin_cli(&url, &add("vm-a", &[])).await;
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "error: adding external peer vm-a to network net-1: name: peer \"ext-vm-a\" already exists\n"
    );
    let o = admin_cli(
        &url,
        &add("laptop", &["--endpoint", "laptop.example:51820"]),
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--endpoint"), "{}", stderr(&o));

    // The configuration text as is, or as ExternalPeerConfig JSON.
    let o = admin_cli(&url, &["peer", "wg-config", "net-1", "ext-laptop"]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "[Interface]\nAddress = 10.77.0.3/24\n# ext-laptop\n"
    );
    let o = admin_cli(
        &url,
        &["--json", "peer", "wg-config", "net-1", "ext-laptop"],
    )
    .await;
    assert_ok(&o);
    let c: ExternalPeerConfig = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(c.config.starts_with("[Interface]\n"));
    let o = admin_cli(&url, &["peer", "wg-config", "net-1", "h-aaaa"]).await;
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains(": hostId: "), "{}", stderr(&o));
}

#[tokio::test]
async fn network_list_table_and_json() {
    let url = start_fake().await;
    let o = admin_cli(&url, &["network", "list"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("ID     NAME  ADDRESS SPACE"), "{out}");
    assert!(out.contains("\nnet-1  prod  10.77.0.0/24 "), "{out}");

    let o = admin_cli(&url, &["network", "list", "--json"]).await;
    assert_ok(&o);
    let value: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(value["cladnetSpecifications"][0]["cladnetId"], "net-1");
    assert_eq!(
        value["cladnetSpecifications"][0]["ipv4AddressSpace"],
        "10.77.0.0/24"
    );
    assert_eq!(value["cladnetSpecifications"][0]["revision"], "7");
    // And it decodes back into the message (proto3 JSON both ways).
    let back: ListNetworksResponse = serde_json::from_slice(&o.stdout).expect("decodes");
    assert_eq!(back.cladnet_specifications, networks());
}

#[tokio::test]
async fn show_create_update_and_recommend() {
    let url = start_fake().await;
    let o = admin_cli(&url, &["network", "show", "net-1"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains("Address space:   10.77.0.0/24\n"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("Route approval:  manual\nExit nodes:      deny\n"),
        "{}",
        stdout(&o)
    );

    let o = admin_cli(
        &url,
        &["network", "create", "new", "--cidr", "auto", "--json"],
    )
    .await;
    assert_ok(&o);
    let n: Network = serde_json::from_slice(&o.stdout).expect("decodes");
    assert_eq!(n.ipv4_address_space, "10.0.0.0/24");
    assert_eq!(n.cladnet_id, "new", "a valid name is the default id");

    // A name that is no id: the controller generates one, and the output says to use it.
    let o = admin_cli(&url, &["network", "create", "Web Tier", "--cidr", "auto"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).starts_with(
            "Created network gen-1 (name \"Web Tier\"); other commands take the id: cladnet peers gen-1\nID:              gen-1\n"
        ),
        "{}",
        stdout(&o)
    );
    let o = admin_cli(&url, &["network", "create", "new", "--cidr", "auto"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).starts_with("Created network new.\nID:              new\n"),
        "{}",
        stdout(&o)
    );

    // Update sends the revision it read; the fake rejects any other.
    let o = admin_cli(
        &url,
        &[
            "network",
            "update",
            "net-1",
            "--encryption",
            "never",
            "--json",
        ],
    )
    .await;
    assert_ok(&o);
    let n: Network = serde_json::from_slice(&o.stdout).expect("decodes");
    assert_eq!((n.encryption.as_str(), n.revision), ("never", 8));
    assert_eq!(n.name, "prod");

    let o = admin_cli(
        &url,
        &[
            "network",
            "recommend",
            "--cidr",
            "192.168.1.10/24",
            "--hosts",
            "5",
        ],
    )
    .await;
    assert_ok(&o);
    assert!(
        stdout(&o).starts_with("Recommended:        10.0.0.0/28\n"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn token_test_command_and_health() {
    let url = start_fake().await;
    let o = admin_cli(&url, &["token", "create", "net-1", "--ttl", "1h"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains("Token:        cnj.tok1.s3cr3t\n"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("Expires:      2023-11-14T23:13:20Z\n"));
    assert!(stderr(&o).contains("not shown again"));

    let o = admin_cli(&url, &["test", "show", "net-1", "t-1"]).await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains("10.77.0.1  -          1.50\n"),
        "{}",
        stdout(&o)
    );

    let o = admin_cli(&url, &["command", "net-1", "up"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "Command up sent to 2 peers: h-aaaa, h-b\n");

    // The controller says it did not succeed: exit 1 with its message.
    let o = admin_cli(&url, &["command", "net-1", "down", "--host", "h-b"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: sending down to peer h-b of network net-1: fake refuses down\n"
    );

    // Health needs no token.
    let o = cladnet(&["--controller", &url, "health"]).await;
    assert_ok(&o);
    assert!(stdout(&o).starts_with("Status:    healthy\n"));
}

#[tokio::test]
async fn routes_list_approve_reject_and_advertise() {
    let url = start_fake().await;
    let o = admin_cli(&url, &["route", "list", "net-1"]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "\
HOST ID  PREFIX         STATE     ADVERTISED            DECIDED
h-aaaa   10.244.1.0/24  approved  2023-11-14T22:13:20Z  2023-11-14T22:13:20Z
h-b      10.244.2.0/24  pending   2023-11-14T22:13:20Z  -
"
    );
    let o = admin_cli(&url, &["--json", "route", "list", "net-1", "--host", "h-b"]).await;
    assert_ok(&o);
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(json["routes"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["routes"][0]["state"], "pending");

    let o = admin_cli(&url, &["route", "approve", "net-1", "h-b", "10.244.2.0/24"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "Route 10.244.2.0/24 of peer h-b is approved.\n");
    let o = admin_cli(
        &url,
        &["route", "reject", "net-1", "h-aaaa", "10.244.1.0/24"],
    )
    .await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "Route 10.244.1.0/24 of peer h-aaaa is rejected.\n"
    );

    // Unknown route: not-found exit code, with the action named.
    let o = admin_cli(&url, &["route", "approve", "net-1", "h-b", "10.9.0.0/16"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("error: approving route 10.9.0.0/16 of peer h-b in network net-1:"),
        "{}",
        stderr(&o)
    );
    // A malformed prefix is a usage error, before any call.
    let o = admin_cli(&url, &["route", "reject", "net-1", "h-b", "10.9.0.0"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("expected an IPv4 CIDR"),
        "{}",
        stderr(&o)
    );

    let o = admin_cli(
        &url,
        &[
            "command",
            "net-1",
            "advertise-routes",
            "--host",
            "h-b",
            "--routes",
            "10.244.2.0/24,192.168.50.0/24",
        ],
    )
    .await;
    assert_ok(&o);
    assert!(
        stdout(&o).contains("routes: 10.244.2.0/24 192.168.50.0/24\n"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn token_file_is_used() {
    let url = start_fake().await;
    let dir = std::env::temp_dir().join(format!("cladnet-cli-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("admin.token");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    let path = file.to_str().unwrap();
    let o = cladnet(&["--controller", &url, "--token-file", path, "peers", "net-1"]).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_ok(&o);
    assert!(stdout(&o).starts_with("HOST ID"));
}

#[tokio::test]
async fn error_classes_and_exit_codes() {
    let url = start_fake().await;

    // Wrong token: auth exit code and the controller's message.
    let o = cladnet(&[
        "--controller",
        &url,
        "--token",
        "wrong-token-xxxxxxxx",
        "network",
        "list",
    ])
    .await;
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(stderr(&o), "error: listing networks: invalid admin token\n");
    assert!(o.stdout.is_empty());

    // No token at all: refused before any call (unless this machine has a controller's
    // default admin token file, which the fake does not accept: exit 4 as well).
    let o = cladnet(&["--controller", &url, "network", "list"]).await;
    assert_eq!(o.status.code(), Some(4));
    if std::fs::read_to_string("/var/lib/cladnet/admin.token").is_err() {
        assert!(
            stderr(&o).starts_with("error: no admin token"),
            "{}",
            stderr(&o)
        );
    }

    // PermissionDenied is an auth failure too.
    let o = admin_cli(&url, &["token", "revoke", "net-1", "tok1"]).await;
    assert_eq!(o.status.code(), Some(4));

    // Not found.
    let o = admin_cli(&url, &["network", "show", "nope"]).await;
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        stderr(&o),
        "error: reading network nope: network nope not found\n"
    );

    // Invalid argument from the controller.
    let o = admin_cli(&url, &["network", "recommend", "--cidr", "10.1.0.0/16"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(": ipv4_cidrs: "), "{}", stderr(&o));

    // Conflict.
    let o = admin_cli(
        &url,
        &["network", "create", "x", "--id", "lab", "--cidr", "auto"],
    )
    .await;
    assert_eq!(o.status.code(), Some(6));
    assert_eq!(
        stderr(&o),
        "error: creating network \"x\": network lab already exists\n"
    );

    // Rejected by the parser before any call, naming the flag.
    let o = admin_cli(&url, &["network", "recommend", "--hosts", "0"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--hosts"), "{}", stderr(&o));
}

#[tokio::test]
async fn unreachable_controller() {
    // A port that was just free: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let o = cladnet(&[
        "--controller",
        &url,
        "--token",
        ADMIN,
        "--timeout",
        "2",
        "network",
        "list",
    ])
    .await;
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!("error: cannot reach the controller at {url}: ")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

#[tokio::test]
async fn https_with_ca_cert() {
    use tonic::transport::{Identity, ServerTlsConfig};

    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("tls config")
            .serve_with_incoming(NetworkServiceServer::new(Fake), TcpIncoming::from(listener))
            .await
            .expect("fake server");
    });
    let dir = std::env::temp_dir().join(format!("cladnet-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let url = format!("https://{addr}");
    let ca_path = ca.to_str().unwrap();

    let o = cladnet(&["--controller", &url, "--ca-cert", ca_path, "health"]).await;
    assert_ok(&o);
    assert!(stdout(&o).starts_with("Status:    healthy\n"));

    // --ca-cert with a plain http:// URL is a usage error.
    let plain = format!("http://{addr}");
    let o = cladnet(&["--controller", &plain, "--ca-cert", ca_path, "health"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // The pin of the certificate's key is enough; a wrong one fails saying so.
    let pin = cladnet_proto::tls::Pin::of_certificate(certified.cert.der()).unwrap();
    let o = cladnet(&["--controller", &url, "--pin", &pin.to_string(), "health"]).await;
    assert_ok(&o);
    let wrong = format!("sha256:{}", "00".repeat(32));
    let o = cladnet(&["--controller", &url, "--pin", &wrong, "health"]).await;
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("wrong pin") && err.contains(&pin.to_string()) && err.contains(&wrong),
        "{err}"
    );
    // Neither pin nor CA: the system roots do not know this certificate.
    let o = cladnet(&["--controller", &url, "health"]).await;
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    // http:// to the TLS port.
    let o = cladnet(&["--controller", &plain, "health"]).await;
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("answered with TLS; use https://"), "{err}");
    // https:// to a plain port.
    let plain_fake = start_fake().await.replace("http://", "https://");
    let o = cladnet(&["--controller", &plain_fake, "--pin", &wrong, "health"]).await;
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("did not answer with TLS"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
