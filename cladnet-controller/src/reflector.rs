//! The UDP endpoint reflector: answers each probe with the address it came from, so agents
//! behind NAT learn their public endpoint from their own tunnel socket.

use std::{future::Future, net::SocketAddr};

use cladnet_common::reflector::{parse_request, response};
use tokio::net::UdpSocket;
use tracing::debug;

/// Serves probes on `socket` until `shutdown` completes. Malformed datagrams and IPv6 senders
/// are ignored (never answered, so the reflector cannot be used to bounce garbage).
pub async fn serve(socket: UdpSocket, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    tokio::pin!(shutdown);
    loop {
        let (len, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => r?,
            () = &mut shutdown => return Ok(()),
        };
        let (Some(nonce), SocketAddr::V4(from)) = (parse_request(&buf[..len]), from) else {
            debug!(%from, len, "ignored a datagram that is not a reflector probe");
            continue;
        };
        if let Err(e) = socket.send_to(&response(nonce, from), from).await {
            debug!(%from, error = %e, "reflector reply failed");
        }
    }
}
