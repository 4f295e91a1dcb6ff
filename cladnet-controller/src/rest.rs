//! REST/JSON on the gRPC port, with cb-network's paths. Bodies are the proto messages in the
//! proto3 JSON mapping (lowerCamelCase), so REST and gRPC cannot drift.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use cladnet_proto::v1 as pb;
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    auth::bearer,
    error::{ControllerError, Result},
    service::Controller,
};

/// The OpenAPI document of the REST API.
pub const OPENAPI: &str = include_str!("openapi.json");

type Ctl = State<Arc<Controller>>;

/// The REST routes.
pub fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/cladnet", get(list_networks).post(create_network))
        .route("/v1/cladnet/availableIPv4AddressSpaces", post(recommend))
        .route(
            "/v1/cladnet/{id}",
            get(get_network).put(update_network).delete(delete_network),
        )
        .route("/v1/cladnet/{id}/peer", get(list_peers))
        .route(
            "/v1/cladnet/{id}/peer/{host}",
            get(get_peer).delete(delete_peer),
        )
        .route(
            "/v1/cladnet/{id}/peer/{host}/details",
            axum::routing::put(update_peer_details),
        )
        .route("/v1/cladnet/{id}/peer/{host}/networkingRule", get(get_peer))
        .route(
            "/v1/cladnet/{id}/peer/{host}/wireguardConfig",
            get(external_peer_config),
        )
        .route("/v1/cladnet/{id}/externalPeer", post(add_external_peer))
        .route("/v1/cladnet/{id}/route", get(list_routes))
        .route("/v1/cladnet/{id}/route/approve", post(approve_route))
        .route("/v1/cladnet/{id}/route/reject", post(reject_route))
        .route("/v1/cladnet/{id}/stats", get(network_stats))
        .route(
            "/v1/cladnet/{id}/token",
            get(list_tokens).post(create_token),
        )
        .route(
            "/v1/cladnet/{id}/token/{token}",
            axum::routing::delete(revoke_token),
        )
        // cb-network used GET for commands; POST is the right verb, GET stays for old clients.
        .route(
            "/v1/control/cladnet/{id}/command/{command}",
            post(command).get(command),
        )
        .route("/v1/test/cladnet/{id}/type/{kind}", post(start_test))
        .route("/v1/test/cladnet/{id}/result/{test}", get(get_test))
        .route("/v1/test/cladnet/{id}/latest", get(latest_test))
        .with_state(ctl)
}

/// A JSON reply of a proto message, or an error with its HTTP status.
struct Json<T>(Result<T>);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(body) => json(StatusCode::OK, &body),
            Err(e) => error_response(&e),
        }
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Serialize)]
struct ErrorBody {
    code: String,
    message: String,
}

fn error_response(e: &ControllerError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(
        status,
        &ErrorBody {
            code: format!("{:?}", e.code()),
            message: e.to_string(),
        },
    )
}

fn admin(ctl: &Controller, headers: &HeaderMap) -> Result<()> {
    let value = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    ctl.check_admin(bearer(value)?)
}

fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ControllerError::invalid("body", e.to_string()))
}

async fn health(State(ctl): Ctl) -> Response {
    let h = ctl.health().await;
    let status = if h.status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &h)
}

async fn list_networks(State(ctl): Ctl, headers: HeaderMap) -> Json<pb::ListNetworksResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.list_networks().await
        }
        .await,
    )
}

async fn create_network(State(ctl): Ctl, headers: HeaderMap, bytes: Bytes) -> Json<pb::Network> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.create_network(body(&bytes)?).await
        }
        .await,
    )
}

async fn get_network(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Json<pb::Network> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.get_network(&id).await
        }
        .await,
    )
}

async fn update_network(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Json<pb::Network> {
    Json(
        async {
            admin(&ctl, &headers)?;
            let mut n: pb::Network = body(&bytes)?;
            if !n.cladnet_id.is_empty() && n.cladnet_id != id {
                return Err(ControllerError::invalid(
                    "cladnetId",
                    format!("{:?} differs from the path's {id:?}", n.cladnet_id),
                ));
            }
            n.cladnet_id = id;
            ctl.update_network(n).await
        }
        .await,
    )
}

async fn delete_network(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Json<pb::DeleteNetworkResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.delete_network(&id).await
        }
        .await,
    )
}

async fn recommend(
    State(ctl): Ctl,
    headers: HeaderMap,
    bytes: Bytes,
) -> Json<pb::RecommendAddressSpaceResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.recommend(body(&bytes)?).await
        }
        .await,
    )
}

async fn list_peers(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Json<pb::ListPeersResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.list_peers(&id).await
        }
        .await,
    )
}

async fn get_peer(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path((id, host)): Path<(String, String)>,
) -> Json<pb::Peer> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.get_peer(&id, &host).await
        }
        .await,
    )
}

async fn delete_peer(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path((id, host)): Path<(String, String)>,
) -> Json<pb::DeletePeerResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.delete_peer(&id, &host).await
        }
        .await,
    )
}

async fn update_peer_details(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path((id, host)): Path<(String, String)>,
    bytes: Bytes,
) -> Json<pb::Peer> {
    Json(
        async {
            admin(&ctl, &headers)?;
            let mut req: pb::UpdatePeerDetailsRequest = body(&bytes)?;
            req.cladnet_id = id;
            req.host_id = host;
            ctl.update_peer_details(req).await
        }
        .await,
    )
}

async fn add_external_peer(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Json<pb::Peer> {
    Json(
        async {
            admin(&ctl, &headers)?;
            let mut req: pb::AddExternalPeerRequest = body(&bytes)?;
            req.cladnet_id = id;
            ctl.add_external_peer(req).await
        }
        .await,
    )
}

async fn external_peer_config(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path((id, host)): Path<(String, String)>,
) -> Json<pb::ExternalPeerConfig> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.external_peer_config(&id, &host).await
        }
        .await,
    )
}

async fn list_tokens(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Json<pb::ListJoinTokensResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.list_join_tokens(&id).await
        }
        .await,
    )
}

async fn create_token(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Json<pb::CreateJoinTokenResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            let mut req: pb::CreateJoinTokenRequest = body(&bytes)?;
            req.cladnet_id = id;
            ctl.create_join_token(req).await
        }
        .await,
    )
}

async fn revoke_token(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path((id, token)): Path<(String, String)>,
) -> Json<pb::RevokeJoinTokenResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.revoke_join_token(&id, &token).await
        }
        .await,
    )
}

#[derive(serde::Deserialize)]
struct RoutesQuery {
    #[serde(rename = "hostId", default)]
    host_id: String,
}

async fn list_routes(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RoutesQuery>,
) -> Json<pb::ListRoutesResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.list_routes(pb::ListRoutesRequest {
                cladnet_id: id,
                host_id: q.host_id,
            })
            .await
        }
        .await,
    )
}

async fn approve_route(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Json<pb::Route> {
    Json(decide_route(&ctl, &headers, id, &bytes, true).await)
}

async fn reject_route(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Json<pb::Route> {
    Json(decide_route(&ctl, &headers, id, &bytes, false).await)
}

async fn decide_route(
    ctl: &Controller,
    headers: &HeaderMap,
    id: String,
    bytes: &Bytes,
    approve: bool,
) -> Result<pb::Route> {
    admin(ctl, headers)?;
    let mut req: pb::RouteDecisionRequest = body(bytes)?;
    req.cladnet_id = id;
    if approve {
        ctl.approve_route(req).await
    } else {
        ctl.reject_route(req).await
    }
}

#[derive(serde::Deserialize)]
struct CommandQuery {
    #[serde(rename = "hostId", default)]
    host_id: String,
    /// `advertise-routes`: the prefixes, comma-separated.
    #[serde(default)]
    routes: String,
}

async fn command(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path((id, command)): Path<(String, String)>,
    Query(q): Query<CommandQuery>,
) -> Json<pb::SendCommandResponse> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.send_command(pb::SendCommandRequest {
                cladnet_id: id,
                host_id: q.host_id,
                command_type: command,
                routes: q
                    .routes
                    .split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
            .await
        }
        .await,
    )
}

async fn start_test(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path((id, kind)): Path<(String, String)>,
    bytes: Bytes,
) -> Json<pb::ConnectivityTest> {
    Json(
        async {
            admin(&ctl, &headers)?;
            if !kind.eq_ignore_ascii_case("connectivity") {
                return Err(ControllerError::invalid(
                    "testType",
                    format!("{kind:?} is not CONNECTIVITY"),
                ));
            }
            let mut req: pb::StartConnectivityTestRequest = body(&bytes)?;
            req.cladnet_id = id;
            ctl.start_connectivity_test(req).await
        }
        .await,
    )
}

async fn get_test(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path((id, test)): Path<(String, String)>,
) -> Json<pb::ConnectivityTest> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.get_connectivity_test(&id, &test).await
        }
        .await,
    )
}

async fn latest_test(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Json<pb::ConnectivityTest> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.latest_connectivity_test(&id).await
        }
        .await,
    )
}

async fn network_stats(
    State(ctl): Ctl,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Json<pb::NetworkStats> {
    Json(
        async {
            admin(&ctl, &headers)?;
            ctl.network_stats(&id).await
        }
        .await,
    )
}
