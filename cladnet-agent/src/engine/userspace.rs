//! The userspace engine's IO driver: threads that move bytes between the TUN device, the
//! tunnel UDP socket and the [`Router`].
//!
//! - `tun→udp`: reads inner packets from the TUN device, routes and seals/frames them.
//! - `udp→tun`: reads datagrams from the tunnel port (WireGuard, CLAD and reflector answers
//!   share it, demultiplexed by the first byte) and delivers inner packets.
//! - `timers`: WireGuard handshakes, keepalives and rekeys; peer events for the control loop.
//!
//! Probes of the controller's reflector go out of the tunnel socket itself, so the public
//! endpoint learnt is the NAT mapping tunnel traffic really gets.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::router::{Inbound, Outbound, PeerEvent, Router, out_len};
use crate::probe::ProbeError;
use cladnet_core::reflector;

/// How often the timer thread runs WireGuard timers (they have second granularity).
const TIMER_TICK: Duration = Duration::from_millis(50);

/// How often PLAIN peers get a keepalive probe (NAT mappings for UDP last 30 s or more).
const PLAIN_KEEPALIVE: Duration = Duration::from_secs(10);

/// Largest packet read from the TUN device or the socket.
const MAX_PACKET: usize = 65_535;

/// A TUN queue the engine reads inner packets from and writes them to.
pub trait TunIo: Send + Sync + 'static {
    /// Reads one packet (blocking).
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one packet.
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<SocketAddrV4>>>>;

/// A running userspace engine.
#[derive(Debug)]
pub struct Userspace {
    router: Arc<Router>,
    socket: Arc<UdpSocket>,
    waiters: Waiters,
}

impl Userspace {
    /// Starts the packet threads over `tun` and the bound tunnel `socket`. Peer events
    /// (handshakes, roaming) arrive on the returned receiver.
    pub fn start(
        router: Arc<Router>,
        tun: Arc<dyn TunIo>,
        socket: UdpSocket,
    ) -> io::Result<(Self, mpsc::UnboundedReceiver<PeerEvent>)> {
        let socket = Arc::new(socket);
        let waiters = Waiters::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        {
            let (router, tun, socket) = (router.clone(), tun.clone(), socket.clone());
            thread::Builder::new()
                .name("tun->udp".into())
                .spawn(move || tun_to_udp(&router, &*tun, &socket))?;
        }
        {
            let (router, socket, waiters) = (router.clone(), socket.clone(), waiters.clone());
            thread::Builder::new()
                .name("udp->tun".into())
                .spawn(move || udp_to_tun(&router, &*tun, &socket, &waiters))?;
        }
        {
            let (router, socket) = (router.clone(), socket.clone());
            thread::Builder::new()
                .name("wg-timers".into())
                .spawn(move || timers(&router, &socket, &events_tx))?;
        }
        Ok((
            Self {
                router,
                socket,
                waiters,
            },
            events,
        ))
    }

    /// The packet logic (peers, counters).
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Re-opens the NAT paths to every peer now (see [`Router::punch`]).
    pub fn punch(&self) {
        self.router.punch(|d, to| send(&self.socket, d, to));
    }

    /// The tunnel socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Asks `reflector` which endpoint it sees for the tunnel socket, sending up to
    /// `attempts` probes `wait` apart.
    pub async fn probe(
        &self,
        reflector: SocketAddr,
        attempts: u32,
        wait: Duration,
    ) -> Result<SocketAddrV4, ProbeError> {
        for _ in 0..attempts {
            let mut nonce = [0u8; 8];
            getrandom::fill(&mut nonce).expect("the OS random source works");
            let nonce = u64::from_be_bytes(nonce);
            let (tx, rx) = oneshot::channel();
            self.lock_waiters().insert(nonce, tx);
            let sent = self.socket.send_to(&reflector::request(nonce), reflector);
            let answer = match sent {
                Ok(_) => tokio::time::timeout(wait, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(source) => {
                    self.lock_waiters().remove(&nonce);
                    return Err(ProbeError::Io { reflector, source });
                }
            };
            self.lock_waiters().remove(&nonce);
            if let Some(seen) = answer {
                return Ok(seen);
            }
        }
        Err(ProbeError::NoAnswer {
            reflector,
            attempts,
        })
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<SocketAddrV4>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(error) = socket.send_to(datagram, to) {
        // Unreachable peers and full buffers are routine on an overlay; never fatal.
        debug!(%to, %error, "send failed");
    }
}

fn tun_to_udp(router: &Router, tun: &dyn TunIo, socket: &UdpSocket) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; out_len(MAX_PACKET)];
    loop {
        let len = match tun.read(&mut buf) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                warn!(%error, "reading the TUN device failed; stopping tun->udp");
                return;
            }
        };
        if let Outbound::Send { datagram, to } =
            router.outbound(Instant::now(), &buf[..len], &mut out)
        {
            send(socket, datagram, to);
        }
    }
}

fn udp_to_tun(router: &Router, tun: &dyn TunIo, socket: &UdpSocket, waiters: &Waiters) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; out_len(MAX_PACKET)];
    loop {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            // ICMP errors for earlier sends surface here; they say nothing about this read.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                ) =>
            {
                continue;
            }
            Err(error) => {
                warn!(%error, "reading the tunnel socket failed; stopping udp->tun");
                return;
            }
        };
        match router.inbound(Instant::now(), from, &buf[..len], &mut out) {
            Inbound::Deliver(packet) => {
                if let Err(error) = tun.write(packet) {
                    debug!(%error, "writing to the TUN device failed");
                }
            }
            Inbound::Reply { datagram, to } => send(socket, datagram, to),
            Inbound::Reflected { nonce, seen } => {
                let waiter = waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&nonce);
                if let Some(w) = waiter {
                    let _ = w.send(seen);
                }
            }
            Inbound::Nothing | Inbound::Dropped(_) => {}
        }
    }
}

fn timers(router: &Router, socket: &UdpSocket, events: &mpsc::UnboundedSender<PeerEvent>) {
    let mut out = vec![0u8; out_len(MAX_PACKET)];
    let mut next_probe = Instant::now();
    loop {
        thread::sleep(TIMER_TICK);
        if Instant::now() >= next_probe {
            router.probe_plain_peers(|d, to| send(socket, d, to));
            next_probe = Instant::now() + PLAIN_KEEPALIVE;
        }
        for event in router.timers(Instant::now(), &mut out, |d, to| send(socket, d, to)) {
            if events.send(event).is_err() {
                return;
            }
        }
    }
}

impl TunIo for crate::sys::tun::TunQueue {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Self::read(self, buf)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        Self::write(self, buf)
    }
}
