//! The userspace engine's IO driver: threads that move bytes between the TUN device, the
//! tunnel UDP socket and the [`Router`].
//!
//! - `tun→udp`: reads inner packets from the TUN device, routes and seals/frames them.
//! - `udp→tun`: reads datagrams from the tunnel port (WireGuard, CLAD and reflector answers
//!   share it, demultiplexed by the first byte) and delivers inner packets.
//! - `wg-handshake`: WireGuard handshake messages, which `udp→tun` only queues (bounded): the
//!   Diffie-Hellman they cost never runs on the transport path, and the queue's length tells
//!   when we are under load (cookie replies and per-source rate limits, as the Linux module).
//! - `timers`: WireGuard handshakes, keepalives and rekeys; peer events for the control loop.
//!
//! Probes of the controller's reflector go out of the tunnel socket itself, so the public
//! endpoint learnt is the NAT mapping tunnel traffic really gets.

use std::{
    collections::HashMap,
    io::{self, IoSliceMut},
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread,
    time::{Duration, Instant},
};

use cladnet_core::{
    offload::{self, VNET_HDR_LEN, VirtioNetHdr},
    reflector,
};
use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{
    counters::Drop,
    router::{Inbound, Outbound, PeerEvent, Router, out_len},
};
use crate::{probe::ProbeError, sys};

/// How often the timer thread runs WireGuard timers (they have second granularity).
const TIMER_TICK: Duration = Duration::from_millis(50);

/// How often PLAIN peers get a keepalive probe (NAT mappings for UDP last 30 s or more).
const PLAIN_KEEPALIVE: Duration = Duration::from_secs(10);

/// Largest packet read from the TUN device or the socket.
const MAX_PACKET: usize = 65_535;

/// How much lower than the packet threads the handshake thread runs (nice increment).
const HANDSHAKE_NICENESS: i32 = 10;

/// Decrypted packets gathered before a GRO pass over them.
const GRO_BATCH: usize = 64;

/// A TUN queue the engine reads inner packets from and writes them to.
pub trait TunIo: Send + Sync + 'static {
    /// Reads one packet (blocking).
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one packet.
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
}

/// Reflector probes waiting for their answers, by nonce.
type Waiters = Arc<Mutex<HashMap<u64, Waiter>>>;

/// How long an unanswered keepalive probe's nonce is remembered.
const WAITER_TTL: Duration = Duration::from_secs(10);

/// A reflector probe in flight.
#[derive(Debug)]
struct Waiter {
    /// Where it went: only an answer from that address counts.
    reflector: SocketAddr,
    /// When it was sent.
    sent: Instant,
    /// Where the answer goes.
    reply: Reply,
}

#[derive(Debug)]
enum Reply {
    /// [`Userspace::probe`] waits for this one.
    Once(oneshot::Sender<SocketAddrV4>),
    /// A [`Userspace::keepalive`] probe.
    Keepalive(mpsc::UnboundedSender<Reflection>),
}

/// The answer to a keepalive probe of the reflector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reflection {
    /// When the probe was sent (answers may arrive out of order; the newest probe wins).
    pub sent: Instant,
    /// This node's endpoint as the reflector saw it.
    pub seen: SocketAddrV4,
}

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
    ///
    /// `vnet` says whether the device was created with virtio headers (`IFF_VNET_HDR`): reads
    /// then carry offloaded super-packets to segment, and writes are merged (GRO).
    pub fn start(
        router: Arc<Router>,
        tun: Arc<dyn TunIo>,
        vnet: bool,
        socket: UdpSocket,
    ) -> io::Result<(Self, mpsc::UnboundedReceiver<PeerEvent>)> {
        // Non-blocking from here on; enables UDP GRO and learns whether GSO works.
        let state = Arc::new(UdpSocketState::new((&socket).into())?);
        info!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            vnet,
            "userspace engine offloads"
        );
        let socket = Arc::new(socket);
        let waiters = Waiters::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        {
            let (router, tun, socket, state) =
                (router.clone(), tun.clone(), socket.clone(), state.clone());
            thread::Builder::new()
                .name("tun->udp".into())
                .spawn(move || tun_to_udp(&router, &*tun, &socket, &state, vnet))?;
        }
        let (handshakes, queued) = HandshakeQueue::new();
        {
            let (router, socket, waiters) = (router.clone(), socket.clone(), waiters.clone());
            thread::Builder::new()
                .name("udp->tun".into())
                .spawn(move || {
                    udp_to_tun(&router, &*tun, &socket, &state, vnet, &waiters, &handshakes);
                })?;
        }
        {
            let (router, socket) = (router.clone(), socket.clone());
            thread::Builder::new()
                .name("wg-handshake".into())
                .spawn(move || handshake_worker(&router, &socket, queued))?;
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
            self.lock_waiters().insert(
                nonce,
                Waiter {
                    reflector,
                    sent: Instant::now(),
                    reply: Reply::Once(tx),
                },
            );
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

    /// Sends one probe to `reflector` without waiting for it: the answer, if one comes from
    /// that address with the probe's nonce, arrives on `answers`. Cheap enough to run several
    /// times a second, so an idle host notices at once that its public address moved.
    pub fn keepalive(
        &self,
        reflector: SocketAddr,
        answers: &mpsc::UnboundedSender<Reflection>,
    ) -> Result<(), ProbeError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let nonce = u64::from_be_bytes(nonce);
        let now = Instant::now();
        {
            let mut waiters = self.lock_waiters();
            // Unanswered probes (lost on the way) are forgotten after a while.
            waiters.retain(|_, w| now.saturating_duration_since(w.sent) < WAITER_TTL);
            waiters.insert(
                nonce,
                Waiter {
                    reflector,
                    sent: now,
                    reply: Reply::Keepalive(answers.clone()),
                },
            );
        }
        if let Err(source) = self.socket.send_to(&reflector::request(nonce), reflector) {
            self.lock_waiters().remove(&nonce);
            return Err(ProbeError::Io { reflector, source });
        }
        Ok(())
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands a reflector answer from `from` to the probe it answers. Answers from anywhere but
/// the reflector that probe went to, or with a nonce no probe in flight carries, are dropped
/// and counted: anyone can send this node a datagram claiming to be the reflector.
fn deliver_reflection(
    router: &Router,
    waiters: &Waiters,
    from: SocketAddr,
    nonce: u64,
    seen: SocketAddrV4,
) {
    let mut waiters = waiters.lock().unwrap_or_else(|e| e.into_inner());
    let Some(waiter) = waiters.get(&nonce).filter(|w| w.reflector == from) else {
        drop(waiters);
        router.drops().add(Drop::UnsolicitedReflector);
        debug!(%from, "reflector answer from an unexpected source or with an unknown nonce");
        return;
    };
    let sent = waiter.sent;
    match waiters.remove(&nonce).map(|w| w.reply) {
        Some(Reply::Once(tx)) => {
            let _ = tx.send(seen);
        }
        Some(Reply::Keepalive(tx)) => {
            let _ = tx.send(Reflection { sent, seen });
        }
        None => {}
    }
}

fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(error) = socket.send_to(datagram, to) {
        // Unreachable peers and full buffers are routine on an overlay; never fatal.
        debug!(%to, %error, "send failed");
    }
}

/// How long a sender waits for room in the socket buffer before dropping a batch (a full
/// buffer means the link is saturated; TCP above will back off).
const SEND_WAIT: Duration = Duration::from_millis(100);

/// Consecutive datagrams to one destination, sent with one `sendmsg` and UDP GSO when the
/// kernel supports it (all segments the same size, only the last one shorter).
struct TxBatch<'s> {
    socket: &'s UdpSocket,
    state: &'s UdpSocketState,
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    closed: bool,
}

impl<'s> TxBatch<'s> {
    fn new(socket: &'s UdpSocket, state: &'s UdpSocketState) -> Self {
        Self {
            socket,
            state,
            buf: Vec::with_capacity(MAX_PACKET),
            to: None,
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        let fits = self.to == Some(to)
            && !self.closed
            && datagram.len() <= self.segment
            && self.count < self.state.max_gso_segments()
            && self.buf.len() + datagram.len() <= MAX_PACKET - 1024;
        if !fits {
            self.flush();
            self.to = Some(to);
            self.segment = datagram.len();
        }
        // A shorter datagram can only be the last segment of a GSO send.
        self.closed |= datagram.len() < self.segment;
        self.buf.extend_from_slice(datagram);
        self.count += 1;
    }

    fn flush(&mut self) {
        let Some(to) = self.to.take() else {
            return;
        };
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: &self.buf,
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        };
        let deadline = Instant::now() + SEND_WAIT;
        loop {
            match self.state.try_send(self.socket.into(), &transmit) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    let _ = sys::wait_ready(self.socket.as_fd(), true, Some(SEND_WAIT));
                }
                Err(error) => {
                    debug!(%to, %error, datagrams = self.count, "send failed");
                    break;
                }
            }
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

fn tun_to_udp(
    router: &Router,
    tun: &dyn TunIo,
    socket: &UdpSocket,
    state: &UdpSocketState,
    vnet: bool,
) {
    let mut buf = vec![0u8; MAX_PACKET + VNET_HDR_LEN];
    let mut segment = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; out_len(MAX_PACKET)];
    let mut tx = TxBatch::new(socket, state);
    loop {
        let len = match tun.read(&mut buf) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                warn!(%error, "reading the TUN device failed; stopping tun->udp");
                return;
            }
        };
        let now = Instant::now();
        let mut route = |packet: &[u8]| match router.outbound(now, packet, &mut out) {
            Outbound::Send { datagram, to } => tx.push(datagram, to),
            Outbound::ToTun(icmp) => write_unoffloaded(tun, vnet, icmp),
            Outbound::Queued | Outbound::Dropped(_) => {}
        };
        if !vnet {
            route(&buf[..len]);
        } else if let Err(error) = segment_read(&mut buf[..len], &mut segment, &mut route) {
            router.drops().add(Drop::BadTunPacket);
            debug!(%error, "unusable packet from the TUN device");
        }
        tx.flush();
    }
}

/// Writes one packet the engine made itself (an ICMP error) to the TUN device.
fn write_unoffloaded(tun: &dyn TunIo, vnet: bool, packet: &[u8]) {
    let mut buf = Vec::with_capacity(VNET_HDR_LEN + packet.len());
    if vnet {
        buf.extend_from_slice(&VirtioNetHdr::NONE.encode());
    }
    buf.extend_from_slice(packet);
    if let Err(error) = tun.write(&buf) {
        debug!(%error, "writing an ICMP error to the TUN device failed");
    }
}

/// Splits one offloaded TUN read (virtio header + packet, possibly a 64 KiB TSO/USO
/// super-packet) into wire-size packets with complete checksums.
fn segment_read(
    read: &mut [u8],
    scratch: &mut [u8],
    route: &mut impl FnMut(&[u8]),
) -> Result<(), offload::OffloadError> {
    let hdr = VirtioNetHdr::parse(read)?;
    let packet = &mut read[VNET_HDR_LEN..];
    if !hdr.is_gso() {
        offload::complete_checksum(&hdr, packet)?;
        route(packet);
        return Ok(());
    }
    let mut segments = offload::Segmenter::new(&hdr, packet)?;
    while let Some(len) = segments.next_into(scratch)? {
        route(&scratch[..len]);
    }
    Ok(())
}

/// Decrypted packets waiting to be written to the TUN device, merged into TCP super-packets
/// (GRO) when the device takes virtio headers.
struct TunWriter<'t> {
    tun: &'t dyn TunIo,
    vnet: bool,
    bufs: Vec<Vec<u8>>,
    used: usize,
    coalescer: offload::Coalescer,
    to_write: Vec<usize>,
}

impl<'t> TunWriter<'t> {
    fn new(tun: &'t dyn TunIo, vnet: bool) -> Self {
        Self {
            tun,
            vnet,
            bufs: (0..GRO_BATCH)
                .map(|_| Vec::with_capacity(VNET_HDR_LEN + MAX_PACKET))
                .collect(),
            used: 0,
            coalescer: offload::Coalescer::new(),
            to_write: Vec::with_capacity(GRO_BATCH),
        }
    }

    fn push(&mut self, packet: &[u8]) {
        if !self.vnet {
            self.write(packet);
            return;
        }
        let buf = &mut self.bufs[self.used];
        buf.clear();
        buf.resize(VNET_HDR_LEN, 0);
        buf.extend_from_slice(packet);
        self.used += 1;
        if self.used == self.bufs.len() {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.used == 0 {
            return;
        }
        self.to_write.clear();
        let batch = &mut self.bufs[..self.used];
        if self
            .coalescer
            .coalesce(batch, VNET_HDR_LEN, &mut self.to_write)
            .is_err()
        {
            // Only a too-small offset fails, which cannot happen here; write them unmerged.
            self.to_write.extend(0..self.used);
            for b in batch.iter_mut() {
                b[..VNET_HDR_LEN].copy_from_slice(&VirtioNetHdr::NONE.encode());
            }
        }
        for i in std::mem::take(&mut self.to_write) {
            let bytes = std::mem::take(&mut self.bufs[i]);
            self.write(&bytes);
            self.bufs[i] = bytes;
        }
        self.used = 0;
    }

    fn write(&self, bytes: &[u8]) {
        if let Err(error) = self.tun.write(bytes) {
            debug!(%error, "writing to the TUN device failed");
        }
    }
}

/// Handshake messages between the `udp→tun` thread and the handshake thread. Bounded like the
/// kernel's queue (`MAX_QUEUED_INCOMING_HANDSHAKES`): when it is full, messages are dropped,
/// never blocking the transport path.
struct HandshakeQueue {
    tx: SyncSender<(SocketAddr, Vec<u8>)>,
    len: Arc<AtomicUsize>,
}

/// The handshake thread's end of the queue.
struct QueuedHandshakes {
    rx: Receiver<(SocketAddr, Vec<u8>)>,
    len: Arc<AtomicUsize>,
}

impl HandshakeQueue {
    fn new() -> (Self, QueuedHandshakes) {
        let (tx, rx) = sync_channel(cladnet_wg::constants::MAX_QUEUED_INCOMING_HANDSHAKES);
        let len = Arc::new(AtomicUsize::new(0));
        (
            Self {
                tx,
                len: len.clone(),
            },
            QueuedHandshakes { rx, len },
        )
    }

    /// Queues a copy of `datagram`; returns `false` when the queue is full.
    fn push(&self, from: SocketAddr, datagram: &[u8]) -> bool {
        // Full: refuse before copying anything (a flood must cost as little as possible here).
        // Counted before sending so the worker never sees the length below zero.
        if self.len.fetch_add(1, Ordering::Relaxed)
            >= cladnet_wg::constants::MAX_QUEUED_INCOMING_HANDSHAKES
        {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        match self.tx.try_send((from, datagram.to_vec())) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Processes queued handshake messages one by one, deciding from the queue's length whether
/// we are under load (see [`cladnet_wg::LoadTracker`]).
fn handshake_worker(router: &Router, socket: &UdpSocket, queue: QueuedHandshakes) {
    // Under a flood this thread could use a core answering it; transport packets go first.
    if let Err(error) = sys::lower_thread_priority(HANDSHAKE_NICENESS) {
        debug!(%error, "cannot lower the handshake thread's priority");
    }
    let mut load = cladnet_wg::LoadTracker::default();
    let mut gate = router.handshake_gate();
    let mut out = vec![0u8; out_len(MAX_PACKET)];
    let mut was_under_load = false;
    while let Ok((from, datagram)) = queue.rx.recv() {
        let waiting = queue.len.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let now = Instant::now();
        let under_load = load.update(now, waiting);
        if under_load != was_under_load {
            // At most one line per second: the state lingers a second once set.
            info!(
                under_load,
                queued = waiting,
                "WireGuard handshake load changed (under load, handshakes need a cookie)"
            );
            was_under_load = under_load;
        }
        if let Inbound::Reply { datagram, to } =
            router.handshake(now, &mut gate, under_load, from, &datagram, &mut out)
        {
            send(socket, datagram, to);
        }
    }
}

fn udp_to_tun(
    router: &Router,
    tun: &dyn TunIo,
    socket: &UdpSocket,
    state: &UdpSocketState,
    vnet: bool,
    waiters: &Waiters,
    handshakes: &HandshakeQueue,
) {
    let mut bufs: Vec<Vec<u8>> = (0..BATCH_SIZE).map(|_| vec![0u8; MAX_PACKET]).collect();
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    let mut out = vec![0u8; out_len(MAX_PACKET)];
    let mut writer = TunWriter::new(tun, vnet);
    let mut tx = TxBatch::new(socket, state);
    loop {
        let count = {
            let mut iov: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match state.recv(socket.into(), &mut iov, &mut metas) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = sys::wait_ready(socket.as_fd(), false, None);
                    continue;
                }
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
            }
        };
        let now = Instant::now();
        for (meta, buf) in metas[..count].iter().zip(&bufs) {
            // With GRO, one buffer holds several datagrams of `stride` bytes from one sender.
            for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                if Router::is_handshake(datagram) {
                    if !handshakes.push(meta.addr, datagram) {
                        router.drops().add(Drop::WgHandshakeQueueFull);
                    }
                    continue;
                }
                match router.inbound(now, meta.addr, datagram, &mut out) {
                    Inbound::Deliver(packet) => writer.push(packet),
                    Inbound::Reply { datagram, to } => tx.push(datagram, to),
                    Inbound::Reflected { nonce, seen } => {
                        deliver_reflection(router, waiters, meta.addr, nonce, seen);
                    }
                    Inbound::Nothing | Inbound::Dropped(_) => {}
                }
            }
        }
        writer.flush();
        tx.flush();
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
        router.path_mtu_tick(Instant::now(), &mut out, |d, to| {
            socket.send_to(d, to).map(|_| ())
        });
        for event in router.timers(Instant::now(), &mut out, |d, to| send(socket, d, to)) {
            if events.send(event).is_err() {
                return;
            }
        }
    }
}

impl TunIo for sys::tun::TunQueue {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Self::read(self, buf)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        Self::write(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TUN stand-in that never produces a packet.
    struct Idle;

    impl TunIo for Idle {
        fn read(&self, _: &mut [u8]) -> io::Result<usize> {
            loop {
                thread::park();
            }
        }

        fn write(&self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
    }

    /// Loopback only: the engine's tunnel socket, a reflector and a forger.
    #[tokio::test]
    async fn reflector_answers_count_only_from_the_probed_reflector_with_its_nonce() {
        let router = Arc::new(Router::new(cladnet_wg::PrivateKey::from_bytes([3; 32])));
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (engine, _events) =
            Userspace::start(router.clone(), Arc::new(Idle), false, socket).unwrap();
        let reflector = UdpSocket::bind("127.0.0.1:0").unwrap();
        let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let reflector_addr = reflector.local_addr().unwrap();
        let genuine: SocketAddrV4 = "198.18.1.10:8055".parse().unwrap();
        let forged: SocketAddrV4 = "203.0.113.66:6666".parse().unwrap();
        let (answers_tx, mut answers) = mpsc::unbounded_channel();
        let server = thread::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..2 {
                let (n, agent) = reflector.recv_from(&mut buf).unwrap();
                let nonce = reflector::parse_request(&buf[..n]).unwrap();
                // Another source with the right nonce (an on-path observer) and with a wrong
                // one, then the reflector itself with a wrong nonce: all three refused.
                forger
                    .send_to(&reflector::response(nonce, forged), agent)
                    .unwrap();
                forger
                    .send_to(&reflector::response(nonce ^ 1, forged), agent)
                    .unwrap();
                reflector
                    .send_to(&reflector::response(nonce ^ 1, forged), agent)
                    .unwrap();
                reflector
                    .send_to(&reflector::response(nonce, genuine), agent)
                    .unwrap();
            }
        });
        let seen = engine
            .probe(reflector_addr, 1, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(seen, genuine);
        engine.keepalive(reflector_addr, &answers_tx).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.seen, genuine);
        server.join().unwrap();
        assert_eq!(router.drops().get(Drop::UnsolicitedReflector), 6);
        // Nothing else arrived on the keepalive channel.
        assert!(answers.try_recv().is_err());
    }
}
