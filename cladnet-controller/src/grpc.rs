//! The gRPC services: authenticate, then call the [`Controller`].

use std::sync::Arc;

use cladnet_proto::v1::{
    self as pb,
    agent_service_server::{AgentService, AgentServiceServer},
    network_service_server::{NetworkService, NetworkServiceServer},
};
use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::{auth::bearer_grpc, service::Controller};

mod watch;

/// Both gRPC services over one controller.
#[derive(Clone, Debug)]
pub struct Grpc {
    ctl: Arc<Controller>,
}

impl Grpc {
    /// The services for `ctl`.
    pub fn new(ctl: Arc<Controller>) -> Self {
        Self { ctl }
    }

    /// The tonic routes of both services.
    pub fn routes(self) -> tonic::service::Routes {
        let agent =
            watch::AgentRoutes::new(self.ctl.clone(), AgentServiceServer::new(self.clone()));
        tonic::service::Routes::new(NetworkServiceServer::new(self)).add_service(agent)
    }

    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        Ok(self.ctl.check_admin(bearer_grpc(req.metadata())?)?)
    }
}

type Reply<T> = Result<Response<T>, Status>;

macro_rules! admin_call {
    ($self:ident, $req:ident, |$msg:ident| $call:expr) => {{
        $self.admin(&$req)?;
        let $msg = $req.into_inner();
        Ok(Response::new($call.await?))
    }};
}

#[tonic::async_trait]
impl NetworkService for Grpc {
    async fn create_network(&self, req: Request<pb::Network>) -> Reply<pb::Network> {
        admin_call!(self, req, |m| self.ctl.create_network(m))
    }

    async fn get_network(&self, req: Request<pb::GetNetworkRequest>) -> Reply<pb::Network> {
        admin_call!(self, req, |m| self.ctl.get_network(&m.cladnet_id))
    }

    async fn list_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Reply<pb::ListNetworksResponse> {
        admin_call!(self, req, |_m| self.ctl.list_networks())
    }

    async fn update_network(&self, req: Request<pb::Network>) -> Reply<pb::Network> {
        admin_call!(self, req, |m| self.ctl.update_network(m))
    }

    async fn delete_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Reply<pb::DeleteNetworkResponse> {
        admin_call!(self, req, |m| self.ctl.delete_network(&m.cladnet_id))
    }

    async fn list_peers(&self, req: Request<pb::ListPeersRequest>) -> Reply<pb::ListPeersResponse> {
        admin_call!(self, req, |m| self.ctl.list_peers(&m.cladnet_id))
    }

    async fn get_peer(&self, req: Request<pb::GetPeerRequest>) -> Reply<pb::Peer> {
        admin_call!(self, req, |m| self.ctl.get_peer(&m.cladnet_id, &m.host_id))
    }

    async fn update_peer_details(
        &self,
        req: Request<pb::UpdatePeerDetailsRequest>,
    ) -> Reply<pb::Peer> {
        admin_call!(self, req, |m| self.ctl.update_peer_details(m))
    }

    async fn delete_peer(&self, req: Request<pb::GetPeerRequest>) -> Reply<pb::DeletePeerResponse> {
        admin_call!(self, req, |m| self
            .ctl
            .delete_peer(&m.cladnet_id, &m.host_id))
    }

    async fn add_external_peer(&self, req: Request<pb::AddExternalPeerRequest>) -> Reply<pb::Peer> {
        admin_call!(self, req, |m| self.ctl.add_external_peer(m))
    }

    async fn get_external_peer_config(
        &self,
        req: Request<pb::GetPeerRequest>,
    ) -> Reply<pb::ExternalPeerConfig> {
        admin_call!(self, req, |m| self
            .ctl
            .external_peer_config(&m.cladnet_id, &m.host_id))
    }

    async fn list_routes(
        &self,
        req: Request<pb::ListRoutesRequest>,
    ) -> Reply<pb::ListRoutesResponse> {
        admin_call!(self, req, |m| self.ctl.list_routes(m))
    }

    async fn approve_route(&self, req: Request<pb::RouteDecisionRequest>) -> Reply<pb::Route> {
        admin_call!(self, req, |m| self.ctl.approve_route(m))
    }

    async fn reject_route(&self, req: Request<pb::RouteDecisionRequest>) -> Reply<pb::Route> {
        admin_call!(self, req, |m| self.ctl.reject_route(m))
    }

    async fn recommend_address_space(
        &self,
        req: Request<pb::RecommendAddressSpaceRequest>,
    ) -> Reply<pb::RecommendAddressSpaceResponse> {
        admin_call!(self, req, |m| self.ctl.recommend(m))
    }

    async fn send_command(
        &self,
        req: Request<pb::SendCommandRequest>,
    ) -> Reply<pb::SendCommandResponse> {
        admin_call!(self, req, |m| self.ctl.send_command(m))
    }

    async fn start_connectivity_test(
        &self,
        req: Request<pb::StartConnectivityTestRequest>,
    ) -> Reply<pb::ConnectivityTest> {
        admin_call!(self, req, |m| self.ctl.start_connectivity_test(m))
    }

    async fn get_connectivity_test(
        &self,
        req: Request<pb::GetConnectivityTestRequest>,
    ) -> Reply<pb::ConnectivityTest> {
        admin_call!(self, req, |m| self
            .ctl
            .get_connectivity_test(&m.cladnet_id, &m.test_id))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Reply<pb::CreateJoinTokenResponse> {
        admin_call!(self, req, |m| self.ctl.create_join_token(m))
    }

    async fn list_join_tokens(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Reply<pb::ListJoinTokensResponse> {
        admin_call!(self, req, |m| self.ctl.list_join_tokens(&m.cladnet_id))
    }

    async fn revoke_join_token(
        &self,
        req: Request<pb::RevokeJoinTokenRequest>,
    ) -> Reply<pb::RevokeJoinTokenResponse> {
        admin_call!(self, req, |m| self
            .ctl
            .revoke_join_token(&m.cladnet_id, &m.token_id))
    }

    async fn health(&self, _req: Request<pb::HealthRequest>) -> Reply<pb::HealthResponse> {
        Ok(Response::new(self.ctl.health().await))
    }
}

/// The server stream type of Watch.
pub type WatchResponseStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Grpc {
    async fn join_challenge(
        &self,
        _req: Request<pb::JoinChallengeRequest>,
    ) -> Reply<pb::JoinChallengeResponse> {
        Ok(Response::new(self.ctl.join_challenge().await?))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Reply<pb::JoinResponse> {
        let bearer = bearer_grpc(req.metadata())?.to_owned();
        Ok(Response::new(
            self.ctl.join(&bearer, req.into_inner()).await?,
        ))
    }

    type WatchStream = WatchResponseStream;

    /// Not reached through [`Grpc::routes`] (which sends the encoded events as they are, see
    /// [`watch::AgentRoutes`]); decodes them for other users of the generated service.
    async fn watch(&self, req: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        use prost::Message as _;
        let bearer = bearer_grpc(req.metadata())?.to_owned();
        let stream = self.ctl.watch(&bearer, req.into_inner()).await?;
        Ok(Response::new(Box::pin(stream.map(|item| {
            let bytes = item.map_err(Status::from)?;
            pb::WatchEvent::decode(crate::service::event_of(&bytes))
                .map_err(|e| Status::internal(e.to_string()))
        }))))
    }

    async fn report(&self, req: Request<pb::ReportRequest>) -> Reply<pb::ReportResponse> {
        let bearer = bearer_grpc(req.metadata())?.to_owned();
        Ok(Response::new(
            self.ctl.report(&bearer, req.into_inner()).await?,
        ))
    }
}
