//! The UDP endpoint reflector: answers each probe with the address it came from, so agents
//! behind NAT learn their public endpoint from their own tunnel socket.

use std::{future::Future, net::SocketAddr};

use cladnet_common::reflector::{FLAG_OTHER_PORT, parse_any_request, response};
use tokio::net::UdpSocket;
use tracing::debug;

/// Serves probes on `socket` until `shutdown` completes. Malformed datagrams and IPv6 senders
/// are ignored (never answered, so the reflector cannot be used to bounce garbage). A probe
/// asking for the answer from another port (`relay = "auto"`'s filtering test) is answered
/// from `other` only (a socket on another port), or not at all without one.
pub async fn serve(
    socket: UdpSocket,
    other: Option<UdpSocket>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    tokio::pin!(shutdown);
    loop {
        let (len, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => r?,
            () = &mut shutdown => return Ok(()),
        };
        let (Some((nonce, flags)), SocketAddr::V4(from)) = (parse_any_request(&buf[..len]), from)
        else {
            debug!(%from, len, "ignored a datagram that is not a reflector probe");
            continue;
        };
        let answer_from = if flags == FLAG_OTHER_PORT {
            match &other {
                Some(o) => o,
                None => continue,
            }
        } else {
            &socket
        };
        if let Err(e) = answer_from.send_to(&response(nonce, from), from).await {
            debug!(%from, error = %e, "reflector reply failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cladnet_common::reflector::{parse_response, request, request_other_port};

    use super::*;

    #[tokio::test]
    async fn answers_a_flagged_probe_from_the_other_port_only() {
        let main = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (main_addr, other_addr) = (main.local_addr().unwrap(), other.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(main, Some(other), async {
            let _ = stopped.await;
        }));
        let agent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = agent.local_addr().unwrap();
        let mut buf = [0u8; 64];
        let ask = |req: [u8; 24]| {
            let agent = &agent;
            async move {
                agent.send_to(&req, main_addr).await.unwrap();
                let mut buf = [0u8; 64];
                let (n, from) =
                    tokio::time::timeout(Duration::from_secs(5), agent.recv_from(&mut buf))
                        .await
                        .expect("an answer")
                        .unwrap();
                (parse_response(&buf[..n]), from)
            }
        };
        let SocketAddr::V4(me4) = me else { panic!() };
        assert_eq!(ask(request(1)).await, (Some((1, me4)), main_addr));
        assert_eq!(
            ask(request_other_port(2)).await,
            (Some((2, me4)), other_addr)
        );
        // Exactly one answer each: nothing else is queued.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), agent.recv_from(&mut buf))
                .await
                .is_err()
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
