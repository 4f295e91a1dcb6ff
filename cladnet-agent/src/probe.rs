//! Public endpoint discovery: probe the controller's reflector from the tunnel port, so the
//! answer is the NAT mapping that tunnel traffic really gets.

use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use cladnet_common::reflector;

/// Probing failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The local socket could not be set up.
    #[error("binding udp port {port} for the probe: {source}")]
    Bind {
        /// Local port.
        port: u16,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("probing reflector {reflector}: {source}")]
    Io {
        /// Reflector address.
        reflector: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No valid answer in time.
    #[error("no answer from reflector {reflector} after {attempts} probes")]
    NoAnswer {
        /// Reflector address.
        reflector: SocketAddr,
        /// Probes sent.
        attempts: u32,
    },
}

/// Asks `reflector` which endpoint it sees for local UDP port `local_port` (0 = any), sending
/// up to `attempts` probes `wait` apart. Answers with another nonce or from another address are
/// ignored.
pub fn probe(
    reflector: SocketAddr,
    local_port: u16,
    attempts: u32,
    wait: Duration,
) -> Result<SocketAddrV4, ProbeError> {
    let socket = UdpSocket::bind(("0.0.0.0", local_port)).map_err(|source| ProbeError::Bind {
        port: local_port,
        source,
    })?;
    let io = |source| ProbeError::Io { reflector, source };
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).expect("the OS random source works");
    let nonce = u64::from_be_bytes(nonce);
    let mut buf = [0u8; 64];
    for _ in 0..attempts {
        socket
            .send_to(&reflector::request(nonce), reflector)
            .map_err(io)?;
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            socket.set_read_timeout(Some(left)).map_err(io)?;
            match socket.recv_from(&mut buf) {
                Ok((len, from)) if from == reflector => {
                    if let Some((n, seen)) = reflector::parse_response(&buf[..len])
                        && n == nonce
                    {
                        return Ok(seen);
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(io(e)),
            }
        }
    }
    Err(ProbeError::NoAnswer {
        reflector,
        attempts,
    })
}
