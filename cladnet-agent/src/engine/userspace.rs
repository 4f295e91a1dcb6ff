//! The userspace engine's IO driver: threads that move bytes between the TUN device, the
//! tunnel UDP sockets and the [`Router`].
//!
//! The packet work is spread over N workers (one per core by default): worker `i` is TUN
//! queue `i` (a multiqueue TUN: the kernel picks a queue per flow) and UDP socket `i` (one
//! `SO_REUSEPORT` group on the tunnel port: the kernel picks a socket per 4-tuple, i.e. per
//! peer). Every queue and socket is registered, one-shot, with one `epoll` instance, and 2N
//! packet threads (`packets/k`) serve whichever is readable, one thread per descriptor at a
//! time ([`packet_thread`]):
//!
//! - a TUN queue: read inner packets, route and seal/frame them, send from the socket of the
//!   same index;
//! - a socket (WireGuard, CLAD and reflector answers share the port, demultiplexed by the
//!   first byte): receive datagrams in batches and deliver inner packets, each to the TUN
//!   queue its flow hashes to ([`flow_queue`]): the TUN device then sends that flow's replies
//!   out of the same queue (its automatic steering remembers the queue a flow was written
//!   to), so one peer's flows are sealed on several workers even though all its datagrams
//!   arrive on one socket.
//!
//! A thread that writes a lone packet (or a few) to the TUN device reads, right after, the
//! answer the kernel queued during that write (an echo reply, an ACK), if no other thread is
//! reading that queue ([`deliver_lone`]): the answer does not wait for a sleeping thread to be
//! woken and scheduled on another core, and, as the queue is disarmed in `epoll` for the
//! write, no sleeping thread is woken for it either.
//!
//! Per-peer order: one flow is always read from one TUN queue and one peer's datagrams always
//! arrive on one socket, and a descriptor is served by one thread at a time, which flushes
//! everything it read before handing the descriptor back; WireGuard's replay window accepts
//! the reordering between flows of one peer sealed on different workers. The limit: one
//! peer's receive side (decryption) runs on one thread at a time, whatever the number of
//! flows.
//!
//! A `wg-handshake` thread takes WireGuard handshake messages, which the packet threads only
//! queue (bounded): the Diffie-Hellman they cost never runs on the transport path, and the
//! queue's length tells when we are under load (cookie replies and per-source rate limits, as
//! the Linux module). What passes goes to the Node, an initiation already read.
//!
//! What needs the WireGuard control side (handshakes, a packet while no session can send)
//! goes to the Node as a [`ForNode`]; the Node's IO loop runs WireGuard's timers.
//!
//! Probes of the controller's reflector go out of the tunnel socket itself, so the public
//! endpoint learnt is the NAT mapping tunnel traffic really gets.

use std::{
    collections::HashMap,
    io::{self, IoSliceMut},
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsFd,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel},
    },
    thread,
    time::{Duration, Instant},
};

use cladnet_common::reflector;
use cladnet_offload::{self as offload, VNET_HDR_LEN, VirtioNetHdr};
use cladnet_wg::{ReadInitiation, constants::INITIATION_LEN};
use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{
    counters::Drop,
    relay::{Incoming, RelayIo},
    router::{Handshake, Inbound, Outbound, Router, out_len},
};
use crate::{probe::ProbeError, sys};

/// Inputs waiting for the Node (PLAIN datagrams from unknown endpoints, handshake messages,
/// packets waiting for a session); more are dropped and counted.
const FOR_NODE_QUEUE: usize = 1024;

/// Largest packet read from the TUN device or the socket.
const MAX_PACKET: usize = 65_535;

/// How much lower than the packet threads the handshake thread runs (nice increment).
const HANDSHAKE_NICENESS: i32 = 10;

/// How long the handshake thread pauses, under load, once it has drained its queue: at a
/// flood of 20 000 messages a second, 40 messages a wakeup. Well below the queue's capacity
/// (4096) at any rate a socket delivers, and a legitimate handshake under load waits at most
/// this long more.
const UNDER_LOAD_PAUSE: Duration = Duration::from_millis(2);

/// Queue `q`'s bit in [`TunWriter`]'s set of queues written (0 past queue 63, which the set
/// does not track; `MAX_PACKET_WORKERS` is 64).
fn queue_bit(q: usize) -> u64 {
    u32::try_from(q)
        .ok()
        .and_then(|q| 1u64.checked_shl(q))
        .unwrap_or(0)
}

/// Most packets a socket turn may write to the TUN device for its thread to take their
/// answers itself ([`deliver_lone`]).
const LONE_TURN: usize = 4;

/// Decrypted packets gathered before a GRO pass over them.
const GRO_BATCH: usize = 64;

/// Most packet workers the engine runs when not told otherwise (one per core up to this).
pub const MAX_DEFAULT_WORKERS: usize = 8;

/// The number of packet workers for this machine: its available parallelism, at most
/// [`MAX_DEFAULT_WORKERS`].
pub fn default_workers() -> usize {
    thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_DEFAULT_WORKERS)
}

/// What one packet worker has carried (see [`Userspace::worker_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Reads from the worker's TUN queue (one read may be a TSO super-packet).
    pub tun_reads: u64,
    /// Datagrams received on the worker's socket (a GRO buffer counts for its datagrams).
    pub datagrams: u64,
}

/// A worker's live counters, written by its two threads only.
#[derive(Debug, Default)]
struct WorkerCounters {
    tun_reads: AtomicU64,
    datagrams: AtomicU64,
}

/// The packet workers' counters, for metrics (cheap to clone).
#[derive(Clone, Debug)]
pub struct Workers(Arc<[WorkerCounters]>);

impl Workers {
    /// What each packet worker has carried, by worker (= TUN queue and socket) index.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.0
            .iter()
            .map(|w| WorkerStats {
                tun_reads: w.tun_reads.load(Ordering::Relaxed),
                datagrams: w.datagrams.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// How the engine's TUN device was set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunFeatures {
    /// Created with virtio headers (`IFF_VNET_HDR`): reads may carry offloaded super-packets
    /// to segment, and writes of TCP segments are merged (GRO).
    pub vnet: bool,
    /// The device accepted UDP segmentation offload (`TUN_F_USO4`/`6`, Linux 6.2+): a flow's
    /// UDP datagrams are merged into one write too. Needs `vnet`.
    pub uso: bool,
}

/// A TUN queue the engine reads inner packets from and writes them to. Its descriptor is
/// put in non-blocking mode and served from the packet threads' `epoll` loop.
pub trait TunIo: AsFd + Send + Sync + 'static {
    /// Reads one packet; `WouldBlock` when none is queued.
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
    /// Where it went: only an answer from that address counts (or, for a probe asking for
    /// the answer from another port, only one from that IP and another port).
    reflector: SocketAddr,
    /// Whether it asked for the answer from another port.
    other_port: bool,
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

/// What the engine's threads hand to the Node.
#[derive(Debug)]
pub enum ForNode {
    /// A datagram for [`Node::handle_datagram`]: a PLAIN one from an unknown endpoint
    /// ([`Inbound::ToNode`]), a path MTU probe, a WireGuard response or cookie reply.
    ///
    /// [`Node::handle_datagram`]: cladnet_core::node::Node::handle_datagram
    Datagram {
        /// Where from (a relay address for a relayed WireGuard message).
        from: SocketAddr,
        /// The UDP payload.
        datagram: Vec<u8>,
    },
    /// A WireGuard initiation the handshake gate read, for
    /// [`Node::handle_initiation`](cladnet_core::node::Node::handle_initiation).
    Initiation {
        /// Where from.
        from: SocketAddr,
        /// The initiation.
        initiation: ReadInitiation,
    },
    /// A packet from the TUN device for a SEALED peer no session can send to yet
    /// ([`Outbound::ToNode`]), for `Node::handle_tun_packet`.
    Packet(Vec<u8>),
}

/// What the engine's threads hand to the daemon.
#[derive(Debug)]
pub struct EngineOutputs {
    /// Inputs for the Node.
    pub for_node: mpsc::Receiver<ForNode>,
}

/// A running userspace engine.
pub struct Userspace {
    router: Arc<Router>,
    /// The TUN queues, worker `i` reading queue `i`.
    tuns: Arc<[Arc<dyn TunIo>]>,
    vnet: bool,
    /// Socket 0 of the group: the Node's transmits and the reflector probes leave from it
    /// (every socket of the group has the same port, so for peers they are one endpoint).
    socket: Arc<UdpSocket>,
    waiters: Waiters,
    workers: Workers,
}

impl std::fmt::Debug for Userspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Userspace")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Userspace {
    /// Starts the packet workers, worker `i` over TUN queue `tuns[i]` and the bound tunnel
    /// socket `sockets[i]` (one `SO_REUSEPORT` group, see
    /// [`crate::sys::udp::bind_reuseport`]; one of each for a single worker). Peer events
    /// (handshakes, roaming) and datagrams for the Node arrive on the returned receivers.
    ///
    /// `features` says how the device was set up (virtio headers, which offloads).
    pub fn start(
        router: Arc<Router>,
        tuns: Vec<Arc<dyn TunIo>>,
        features: TunFeatures,
        sockets: Vec<UdpSocket>,
    ) -> io::Result<(Self, EngineOutputs)> {
        let TunFeatures { vnet, uso } = features;
        if tuns.is_empty() || tuns.len() != sockets.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a worker needs one TUN queue and one socket: {} queues, {} sockets",
                    tuns.len(),
                    sockets.len()
                ),
            ));
        }
        let tuns: Arc<[Arc<dyn TunIo>]> = tuns.into();
        let mut sockets_and_states = Vec::with_capacity(sockets.len());
        for socket in sockets {
            // Non-blocking from here on; enables UDP GRO and learns whether GSO works.
            let state = Arc::new(UdpSocketState::new((&socket).into())?);
            sockets_and_states.push((Arc::new(socket), state));
        }
        let (socket, state) = sockets_and_states[0].clone();
        info!(
            workers = tuns.len(),
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            vnet,
            "userspace engine offloads"
        );
        let workers: Arc<[WorkerCounters]> =
            (0..tuns.len()).map(|_| WorkerCounters::default()).collect();
        let waiters = Waiters::default();
        let (node_tx, for_node) = mpsc::channel(FOR_NODE_QUEUE);
        let (handshakes, queued) = HandshakeQueue::new();
        let epoll = sys::epoll::Epoll::new()?;
        for (i, tun) in tuns.iter().enumerate() {
            sys::set_nonblocking(tun.as_fd())?;
            epoll.add_oneshot(tun.as_fd(), Source::Tun(i).token())?;
        }
        for (i, (socket, _)) in sockets_and_states.iter().enumerate() {
            epoll.add_oneshot(socket.as_fd(), Source::Socket(i).token())?;
        }
        let packets = Arc::new(Packets {
            router: router.clone(),
            tuns: tuns.clone(),
            sockets: sockets_and_states,
            counters: workers.clone(),
            tun_reading: (0..tuns.len()).map(|_| Mutex::new(())).collect(),
            epoll,
            vnet,
            uso,
            waiters: waiters.clone(),
            handshakes,
            node: node_tx.clone(),
        });
        // As many threads as descriptors: every queue and socket can be served at once, as
        // with a thread per direction and worker.
        for k in 0..2 * tuns.len() {
            let packets = packets.clone();
            thread::Builder::new()
                .name(format!("packets/{k}"))
                .spawn(move || packet_thread(&packets))?;
        }
        {
            let (router, socket) = (router.clone(), socket.clone());
            thread::Builder::new()
                .name("wg-handshake".into())
                .spawn(move || handshake_worker(&router, &socket, queued, &node_tx))?;
        }
        Ok((
            Self {
                router,
                tuns,
                vnet,
                socket,
                waiters,
                workers: Workers(workers),
            },
            EngineOutputs { for_node },
        ))
    }

    /// The packet logic (peers, counters).
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Sends a datagram from the tunnel socket (the Node's transmits), through its relay
    /// when `to` is a relay address. The socket sets DF and ignores the kernel's cached path
    /// MTU, so a datagram above the first hop's MTU fails with EMSGSIZE (which the Node's
    /// path MTU search takes as a hint).
    pub fn send(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        if cladnet_core::relay::relay_node(to).is_some() {
            send_wg(&self.router, &self.socket, datagram, to);
            return Ok(());
        }
        self.socket.send_to(datagram, to).map(|_| ())
    }

    /// Writes an inner packet to the TUN device (the Node's deliveries).
    pub fn write_tun(&self, packet: &[u8]) {
        write_unoffloaded(
            &*self.tuns[flow_queue(packet, self.tuns.len())],
            self.vnet,
            packet,
        );
    }

    /// What each packet worker has carried, by worker (= TUN queue and socket) index.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.workers.stats()
    }

    /// The workers' counters, to read after the engine is borrowed elsewhere.
    pub fn workers(&self) -> Workers {
        self.workers.clone()
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
                    other_port: false,
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

    /// The filtering test of `relay = "auto"`: asks `reflector` to answer from another port
    /// and waits up to `wait` for that answer. `Ok(true)` when it came, i.e. this node's
    /// endpoint takes datagrams from a source it never sent to (a 1:1 NAT or a public
    /// address); `Ok(false)` when it did not (a masquerading NAT, a firewall, or a
    /// controller without a second reflector port).
    pub async fn probe_other_port(
        &self,
        reflector: SocketAddr,
        wait: Duration,
    ) -> Result<bool, ProbeError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let nonce = u64::from_be_bytes(nonce);
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().insert(
            nonce,
            Waiter {
                reflector,
                other_port: true,
                sent: Instant::now(),
                reply: Reply::Once(tx),
            },
        );
        let sent = self
            .socket
            .send_to(&reflector::request_other_port(nonce), reflector);
        if let Err(source) = sent {
            self.lock_waiters().remove(&nonce);
            return Err(ProbeError::Io { reflector, source });
        }
        let answered = tokio::time::timeout(wait, rx)
            .await
            .is_ok_and(|r| r.is_ok());
        self.lock_waiters().remove(&nonce);
        Ok(answered)
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
                    other_port: false,
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

    fn lock_waiters(&self) -> MutexGuard<'_, HashMap<u64, Waiter>> {
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
    let expected = |w: &&Waiter| {
        if w.other_port {
            w.reflector.ip() == from.ip() && w.reflector.port() != from.port()
        } else {
            w.reflector == from
        }
    };
    let Some(waiter) = waiters.get(&nonce).filter(expected) else {
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

/// Sends a datagram WireGuard produced: through a relay when `to` is a relay address.
fn send_wg(router: &Router, socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    let mut buf = Vec::new();
    router
        .relay()
        .outgoing(Instant::now(), datagram, to, &mut buf, |d, to| {
            send(socket, d, to)
        });
}

/// How long a sender waits for room in the socket buffer before dropping a batch (a full
/// buffer means the link is saturated; TCP above will back off).
const SEND_WAIT: Duration = Duration::from_millis(100);

/// The most bytes one GSO send carries (the kernel's limit is 64 KiB of UDP payload).
const BATCH_BYTES: usize = MAX_PACKET - 1024;

/// Consecutive datagrams to one destination, sent with one `sendmsg` and UDP GSO when the
/// kernel supports it (all segments the same size, only the last one shorter).
///
/// The router seals or frames a packet straight into the batch's free end ([`Self::spare`],
/// then [`Self::commit`]), so a datagram is not copied between sealing and sending.
struct TxBatch<'s> {
    socket: &'s UdpSocket,
    state: &'s UdpSocketState,
    /// Datagrams to relay addresses go through it.
    relay: &'s RelayIo,
    relay_buf: Vec<u8>,
    /// A datagram for a relay, taken out of `buf` to be framed.
    relay_in: Vec<u8>,
    /// The batch (`buf[..len]`), then room for one more datagram.
    buf: Box<[u8]>,
    len: usize,
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    closed: bool,
}

impl<'s> TxBatch<'s> {
    fn new(socket: &'s UdpSocket, state: &'s UdpSocketState, relay: &'s RelayIo) -> Self {
        Self {
            socket,
            state,
            relay,
            relay_buf: Vec::new(),
            relay_in: Vec::new(),
            // A batch holds at most `out_len(MAX_PACKET)` bytes (up to BATCH_BYTES of joined
            // datagrams, or one datagram alone), so the free end always has room for the
            // largest datagram too.
            buf: vec![0u8; 2 * out_len(MAX_PACKET)].into_boxed_slice(),
            len: 0,
            to: None,
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    /// Room for the next datagram (at least [`out_len`]`(MAX_PACKET)` bytes), for the router
    /// to seal or frame into; [`Self::commit`] adds what it wrote at the start.
    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Adds the datagram written at the start of [`Self::spare`], `len` bytes, to the batch.
    fn commit(&mut self, len: usize, to: SocketAddr) {
        if cladnet_core::relay::relay_node(to).is_some() {
            let mut datagram = std::mem::take(&mut self.relay_in);
            datagram.clear();
            datagram.extend_from_slice(&self.buf[self.len..self.len + len]);
            self.push_relayed(&datagram, to);
            self.relay_in = datagram;
            return;
        }
        self.commit_direct(len, to);
    }

    /// Adds a copy of `datagram` to the batch.
    fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        if cladnet_core::relay::relay_node(to).is_some() {
            self.push_relayed(datagram, to);
        } else {
            self.push_direct(datagram, to);
        }
    }

    /// Adds `datagram`, for the relay address `to`, framed for its relay.
    fn push_relayed(&mut self, datagram: &[u8], to: SocketAddr) {
        let mut buf = std::mem::take(&mut self.relay_buf);
        let relay = self.relay;
        relay.outgoing(Instant::now(), datagram, to, &mut buf, |d, to| {
            self.push_direct(d, to);
        });
        self.relay_buf = buf;
    }

    fn push_direct(&mut self, datagram: &[u8], to: SocketAddr) {
        self.spare()[..datagram.len()].copy_from_slice(datagram);
        self.commit_direct(datagram.len(), to);
    }

    fn commit_direct(&mut self, len: usize, to: SocketAddr) {
        let fits = self.to == Some(to)
            && !self.closed
            && len <= self.segment
            && self.count < self.state.max_gso_segments()
            && self.len + len <= BATCH_BYTES;
        if !fits {
            // The datagram starts a batch of its own: it moves to the front once the batch
            // before it is sent.
            let at = self.len;
            self.flush();
            self.buf.copy_within(at..at + len, 0);
            self.to = Some(to);
            self.segment = len;
        }
        // A shorter datagram can only be the last segment of a GSO send.
        self.closed |= len < self.segment;
        self.len += len;
        self.count += 1;
    }

    fn flush(&mut self) {
        let Some(to) = self.to.take() else {
            return;
        };
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: &self.buf[..self.len],
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        };
        // The clock is read only once the buffer is full: a send that goes through at once (a
        // lone ping, most batches) costs no `clock_gettime`.
        let mut deadline = None;
        loop {
            match self.state.try_send(self.socket.into(), &transmit) {
                Ok(()) => break,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && Instant::now()
                            < *deadline.get_or_insert_with(|| Instant::now() + SEND_WAIT) =>
                {
                    let _ = sys::wait_ready(self.socket.as_fd(), true, Some(SEND_WAIT));
                }
                Err(error) => {
                    debug!(%to, %error, datagrams = self.count, "send failed");
                    break;
                }
            }
        }
        self.len = 0;
        self.count = 0;
        self.closed = false;
    }
}

/// What the packet threads share: every TUN queue and socket, registered with one `epoll`
/// instance (one-shot: a descriptor is served by one thread at a time, see [`sys::epoll`]).
struct Packets {
    router: Arc<Router>,
    tuns: Arc<[Arc<dyn TunIo>]>,
    sockets: Vec<(Arc<UdpSocket>, Arc<UdpSocketState>)>,
    /// By worker index (= TUN queue and socket index).
    counters: Arc<[WorkerCounters]>,
    /// Held while a TUN queue is read and what was read is sent: by the thread epoll handed
    /// the queue to, or by a thread that just wrote a lone packet and takes its answer
    /// ([`deliver_lone`]). Keeps a flow's packets in order whoever reads them.
    tun_reading: Vec<Mutex<()>>,
    epoll: sys::epoll::Epoll,
    vnet: bool,
    /// Merge UDP datagrams into USO writes too.
    uso: bool,
    /// Where datagrams not written to the TUN device go.
    waiters: Waiters,
    handshakes: HandshakeQueue,
    node: mpsc::Sender<ForNode>,
}

/// A descriptor registered with the packet threads' `epoll`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// TUN queue `i`.
    Tun(usize),
    /// Tunnel socket `i`.
    Socket(usize),
}

impl Source {
    fn token(self) -> u64 {
        match self {
            Self::Tun(i) => 2 * i as u64,
            Self::Socket(i) => 2 * i as u64 + 1,
        }
    }

    fn from_token(token: u64) -> Self {
        let i = usize::try_from(token / 2).unwrap_or(usize::MAX);
        if token.is_multiple_of(2) {
            Self::Tun(i)
        } else {
            Self::Socket(i)
        }
    }
}

/// Reads from one TUN queue before handing it back (re-arming it) while packets keep coming.
/// A descriptor is drained before it is handed back whenever it can be: re-arming one that is
/// still readable wakes a sleeping thread for it, which costs a context switch, and under a
/// flood of small packets those spurious wakeups took a quarter of the agents' CPU with a turn
/// of 16 reads. There are as many threads as descriptors, so a long turn starves nobody; the
/// bound only caps a turn's latency for the rest of its batch.
const TUN_READS_PER_TURN: usize = 256;

/// `recvmmsg` calls (of up to [`BATCH_SIZE`] datagrams) on one socket before handing it back
/// (see [`TUN_READS_PER_TURN`]).
const SOCKET_BATCHES_PER_TURN: usize = 64;

/// One packet thread: waits for any TUN queue or socket to be readable, serves it (reads,
/// routes, seals or opens, sends or writes, flushes every batch), hands it back, and waits
/// again.
///
/// Why one loop over both kinds of descriptor rather than a thread per direction: a thread
/// that has just delivered a lone packet can read its answer itself ([`deliver_lone`]), and
/// the thread count follows the descriptors, not the directions.
fn packet_thread(p: &Packets) {
    let mut txs: Vec<TxBatch<'_>> = p
        .sockets
        .iter()
        .map(|(socket, state)| TxBatch::new(socket, state, p.router.relay()))
        .collect();
    let mut tun_bufs = TunBufs::new();
    let mut rx = RxBufs::new(&p.tuns, p.vnet, p.uso);
    loop {
        let ready = match p.epoll.wait_one(None) {
            Ok(Some(ready)) => ready,
            Ok(None) => continue,
            Err(error) => {
                warn!(%error, "waiting for packets failed; stopping a packet thread");
                return;
            }
        };
        let source = Source::from_token(ready.token);
        let (fd, served) = match source {
            Source::Tun(i) if i < p.tuns.len() => (
                p.tuns[i].as_fd(),
                serve_tun(p, i, &mut tun_bufs, &mut txs[i]),
            ),
            Source::Socket(i) if i < p.sockets.len() => (
                p.sockets[i].0.as_fd(),
                serve_socket(p, i, &mut rx, &mut tun_bufs, &mut txs),
            ),
            _ => continue,
        };
        if !served {
            // Not re-armed: no thread serves it again.
            warn!(?source, "no longer serving this descriptor");
            continue;
        }
        if let Err(error) = p.epoll.rearm(fd, ready.token) {
            warn!(?source, %error, "re-arming a descriptor failed; no longer serving it");
        }
    }
}

/// A packet thread's buffers for TUN reads.
struct TunBufs {
    read: Vec<u8>,
    segment: Vec<u8>,
}

impl TunBufs {
    fn new() -> Self {
        Self {
            read: vec![0u8; MAX_PACKET + VNET_HDR_LEN],
            segment: vec![0u8; MAX_PACKET],
        }
    }
}

/// Serves TUN queue `i` for one turn: reads inner packets until none is left (or the turn
/// ends), routes and seals or frames them, sends them from socket `i`. `false` when the queue
/// failed and must not be served again.
fn serve_tun(p: &Packets, i: usize, bufs: &mut TunBufs, tx: &mut TxBatch<'_>) -> bool {
    let _reading = p.tun_reading[i].lock().unwrap_or_else(|e| e.into_inner());
    read_tun(p, i, bufs, tx)
}

/// Writes a lone packet or a few (a ping, a request: the whole of a socket turn) to the TUN
/// device and reads `queues` right after, if no other thread is reading them: the queues of
/// the packets the kernel answers within the TUN `write` that delivers them (an echo reply, a
/// TCP ACK), so the answer is waiting already, and taking it here saves the wakeup of another
/// thread, on another core, for it (25–45 µs on this project's 2-core VM). Those queues are disarmed in `epoll` around the write, so that
/// the answer does not wake a sleeping thread either, which would cost an interrupt to an
/// idle core and find nothing to read. Bulk turns leave the answers to the other threads,
/// which seal them in parallel.
fn deliver_lone<'s>(
    p: &'s Packets,
    i: usize,
    queues: u64,
    writer: &mut TunWriter<'_>,
    bufs: &mut TunBufs,
    txs: &mut [TxBatch<'s>],
) {
    let mut taken: [Option<(usize, MutexGuard<'_, ()>)>; LONE_TURN] = Default::default();
    let free = (0..p.tuns.len()).filter(|&q| queues & queue_bit(q) != 0);
    for (slot, q) in taken.iter_mut().zip(free) {
        let Ok(reading) = p.tun_reading[q].try_lock() else {
            continue;
        };
        // Only a queue this thread will read is disarmed, and it is re-armed below.
        if p.epoll
            .disarm(p.tuns[q].as_fd(), Source::Tun(q).token())
            .is_ok()
        {
            *slot = Some((q, reading));
        }
    }
    writer.flush();
    txs[i].flush();
    for (q, _reading) in taken.into_iter().flatten() {
        if !read_tun(p, q, bufs, &mut txs[q]) {
            warn!(queue = q, "no longer serving this TUN queue");
            continue;
        }
        // Re-armed with the lock still held, after the queue read empty: what came since is
        // reported at once.
        if let Err(error) = p.epoll.rearm(p.tuns[q].as_fd(), Source::Tun(q).token()) {
            warn!(queue = q, %error, "re-arming a TUN queue failed; no longer serving it");
        }
    }
}

/// Reads TUN queue `i` (its reading lock held) until it is empty or the turn ends.
fn read_tun(p: &Packets, i: usize, bufs: &mut TunBufs, tx: &mut TxBatch<'_>) -> bool {
    let (router, tun, vnet) = (&*p.router, &*p.tuns[i], p.vnet);
    let mut alive = true;
    for n in 0..TUN_READS_PER_TURN {
        let len = match tun.read(&mut bufs.read) {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                warn!(queue = i, %error, "reading the TUN queue failed");
                alive = false;
                break;
            }
        };
        p.counters[i].tun_reads.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut route = |packet: &[u8]| match router.outbound(now, packet, tx.spare()) {
            // Sealed or framed in place, at the batch's end.
            Outbound::Send { datagram, to } => {
                let len = datagram.len();
                tx.commit(len, to);
            }
            Outbound::ToTun(icmp) => write_unoffloaded(tun, vnet, icmp),
            Outbound::ToNode => {
                if p.node.try_send(ForNode::Packet(packet.to_vec())).is_err() {
                    router.drops().add(Drop::WgNoSession);
                }
            }
            Outbound::Dropped(_) => {}
        };
        if !vnet {
            route(&bufs.read[..len]);
        } else if let Err(error) =
            segment_read(&mut bufs.read[..len], &mut bufs.segment, &mut route)
        {
            router.drops().add(Drop::BadTunPacket);
            debug!(%error, "unusable packet from the TUN device");
        }
        // The turn's first read goes out at once: a lone packet (a ping) does not wait for the
        // read that finds the queue empty. The rest of a long turn (a flood) is batched.
        if n == 0 {
            tx.flush();
        }
    }
    tx.flush();
    alive
}

/// Writes one packet outside the batches (an ICMP error, a packet the Node delivers) to the
/// TUN device.
fn write_unoffloaded(tun: &dyn TunIo, vnet: bool, packet: &[u8]) {
    let mut buf = Vec::with_capacity(VNET_HDR_LEN + packet.len());
    if vnet {
        buf.extend_from_slice(&VirtioNetHdr::NONE.encode());
    }
    buf.extend_from_slice(packet);
    if let Err(error) = tun.write(&buf) {
        debug!(%error, "writing a packet to the TUN device failed");
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
    /// Every TUN queue: a packet goes to the one its flow hashes to ([`flow_queue`]).
    tuns: &'t [Arc<dyn TunIo>],
    vnet: bool,
    bufs: Vec<Vec<u8>>,
    used: usize,
    coalescer: offload::Coalescer,
    to_write: Vec<usize>,
}

impl<'t> TunWriter<'t> {
    fn new(tuns: &'t [Arc<dyn TunIo>], vnet: bool, uso: bool) -> Self {
        Self {
            tuns,
            vnet,
            bufs: (0..GRO_BATCH)
                .map(|_| Vec::with_capacity(VNET_HDR_LEN + MAX_PACKET))
                .collect(),
            used: 0,
            coalescer: if uso {
                offload::Coalescer::with_udp()
            } else {
                offload::Coalescer::new()
            },
            to_write: Vec::with_capacity(GRO_BATCH),
        }
    }

    /// The virtio header's length when the device takes one, else 0.
    fn header_len(&self) -> usize {
        if self.vnet { VNET_HDR_LEN } else { 0 }
    }

    /// Packets waiting for [`Self::flush`].
    fn pending(&self) -> usize {
        self.used
    }

    /// The queues (bit `q`; queues past 63 are not tracked) of the waiting packets the kernel
    /// may answer within the `write` that delivers them ([`answered_in_write`]). Other packets
    /// are answered, if at all, by an application that must first be woken, so the answer
    /// comes after the write and a woken thread takes it anyway.
    fn answer_queues(&self) -> u64 {
        let header = self.header_len();
        self.bufs[..self.used]
            .iter()
            .map(|b| &b[header..])
            .filter(|packet| answered_in_write(packet))
            .map(|packet| queue_bit(flow_queue(packet, self.tuns.len())))
            .fold(0, |set, bit| set | bit)
    }

    /// Room for the next packet, `len` bytes, for the router to open a datagram into;
    /// [`Self::commit`] adds what it wrote at the start.
    fn spare(&mut self, len: usize) -> &mut [u8] {
        let header = self.header_len();
        let buf = &mut self.bufs[self.used];
        // Shrinks, or zeroes only what grows: no clearing of what will be overwritten.
        buf.resize(header + len, 0);
        &mut buf[header..]
    }

    /// Adds the packet written at the start of [`Self::spare`], `len` bytes, to the batch.
    fn commit(&mut self, len: usize) {
        let header = self.header_len();
        let buf = &mut self.bufs[self.used];
        buf.truncate(header + len);
        if self.vnet {
            buf[..VNET_HDR_LEN].copy_from_slice(&VirtioNetHdr::NONE.encode());
        }
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
        if !self.vnet {
            self.to_write.extend(0..self.used);
        } else if self
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
        let packet = bytes.get(self.header_len()..).unwrap_or_default();
        let tun = &self.tuns[flow_queue(packet, self.tuns.len())];
        if let Err(error) = tun.write(bytes) {
            debug!(%error, "writing to the TUN device failed");
        }
    }
}

/// Whether an inner IPv4 packet is one the kernel may answer within the TUN `write` that
/// delivers it: an ICMP echo request (the echo reply) or a TCP segment (a SYN-ACK, an
/// immediate ACK, a RST).
fn answered_in_write(packet: &[u8]) -> bool {
    const ICMP: u8 = 1;
    const TCP: u8 = 6;
    const ECHO_REQUEST: u8 = 8;
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return false;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    match packet[9] {
        TCP => true,
        ICMP => packet.get(header) == Some(&ECHO_REQUEST),
        _ => false,
    }
}

/// The TUN queue (of `queues`) an inner IPv4 packet is written to: a hash of its flow
/// (addresses, protocol and, for TCP and UDP, ports), so that all of one flow's packets take
/// one queue (the kernel keeps their order) and the flow's packets the other way are steered
/// to that queue's worker by the TUN device's automatic queue selection, which remembers the
/// queue a flow was last written to. Different flows of one peer thus spread over the
/// workers for sealing, although that peer's datagrams all arrive on one socket. Anything
/// that is not IPv4 goes to queue 0.
fn flow_queue(packet: &[u8], queues: usize) -> usize {
    if queues <= 1 || packet.len() < 20 || packet[0] >> 4 != 4 {
        return 0;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let proto = packet[9];
    let word = |at: usize| {
        packet
            .get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let ports = match proto {
        6 | 17 => word(header),
        _ => 0,
    };
    // Fibonacci hashing over the words of the flow key; the high bits are the best mixed.
    let mut h: u64 = u64::from(proto);
    for w in [word(12), word(16), ports] {
        h = (h ^ u64::from(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    // Lossless: the product of a 32-bit value and `queues` shifted right by 32 is < `queues`.
    (((h >> 32) * queues as u64) >> 32) as usize
}

/// A handshake message in the queue, copied into a fixed-size buffer: queueing allocates
/// nothing (the channel's slots are allocated once), so a flood costs no allocator work.
struct Queued {
    from: SocketAddr,
    len: usize,
    bytes: [u8; INITIATION_LEN],
}

impl Queued {
    fn datagram(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Handshake messages between the `udp→tun` thread and the handshake thread. Bounded like the
/// kernel's queue (`MAX_QUEUED_INCOMING_HANDSHAKES`): when it is full, messages are dropped,
/// never blocking the transport path.
struct HandshakeQueue {
    tx: SyncSender<Queued>,
    len: Arc<AtomicUsize>,
}

/// The handshake thread's end of the queue.
struct QueuedHandshakes {
    rx: Receiver<Queued>,
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

    /// Queues a copy of `datagram`, or tells why not: the queue is full, or the datagram is
    /// longer than any handshake message (an initiation, the longest, is 148 bytes).
    fn push(&self, from: SocketAddr, datagram: &[u8]) -> Result<(), Drop> {
        if datagram.len() > INITIATION_LEN {
            return Err(Drop::WgInvalid);
        }
        // Full: refuse before copying anything (a flood must cost as little as possible here).
        // Counted before sending so the worker never sees the length below zero.
        if self.len.fetch_add(1, Ordering::Relaxed)
            >= cladnet_wg::constants::MAX_QUEUED_INCOMING_HANDSHAKES
        {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return Err(Drop::WgHandshakeQueueFull);
        }
        let mut queued = Queued {
            from,
            len: datagram.len(),
            bytes: [0; INITIATION_LEN],
        };
        queued.bytes[..datagram.len()].copy_from_slice(datagram);
        match self.tx.try_send(queued) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                Err(Drop::WgHandshakeQueueFull)
            }
        }
    }
}

/// Processes queued handshake messages one by one, deciding from the queue's length whether
/// we are under load (see [`cladnet_wg::LoadTracker`]).
///
/// Under load the thread does not sleep on the queue: it drains it, then pauses for
/// [`UNDER_LOAD_PAUSE`]. Asleep on the queue, every message of a flood would wake it (a futex
/// wake in the `udp→tun` thread and a context switch, several microseconds of the cores the
/// packet threads need, for a message whose own cost is three BLAKE2s); paused, a flood is
/// taken in batches of a pause's worth of messages, for at most one wakeup per pause.
fn handshake_worker(
    router: &Router,
    socket: &UdpSocket,
    queue: QueuedHandshakes,
    node: &mpsc::Sender<ForNode>,
) {
    // Under a flood this thread could use a core answering it; transport packets go first.
    if let Err(error) = sys::lower_thread_priority(HANDSHAKE_NICENESS) {
        debug!(%error, "cannot lower the handshake thread's priority");
    }
    let mut load = cladnet_wg::LoadTracker::default();
    let mut gate = router.handshake_gate(super::OsRandom);
    let mut out = vec![0u8; out_len(MAX_PACKET)];
    let mut under_load = false;
    loop {
        let queued = if under_load {
            match queue.rx.try_recv() {
                Ok(queued) => queued,
                Err(TryRecvError::Empty) => {
                    thread::sleep(UNDER_LOAD_PAUSE);
                    // Nothing waiting: the state ends once the linger has passed.
                    under_load = load_changed(under_load, load.update(Instant::now(), 0), 0);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            }
        } else {
            match queue.rx.recv() {
                Ok(queued) => queued,
                Err(_) => break,
            }
        };
        let (from, datagram) = (queued.from, queued.datagram());
        let waiting = queue.len.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let now = Instant::now();
        under_load = load_changed(under_load, load.update(now, waiting), waiting);
        let for_node = match router.handshake(now, &mut gate, under_load, from, datagram, &mut out)
        {
            Handshake::Reply { datagram, to } => {
                send_wg(router, socket, datagram, to);
                continue;
            }
            Handshake::Initiation(initiation) => ForNode::Initiation { from, initiation },
            Handshake::ToNode => ForNode::Datagram {
                from,
                datagram: datagram.to_vec(),
            },
            // Refused a cookie: a flood is on, even if refusing it keeps the queue short.
            Handshake::Dropped(Drop::WgCookieLimited) => {
                load.sustain(now);
                continue;
            }
            Handshake::Dropped(_) => continue,
        };
        if node.try_send(for_node).is_err() {
            router.drops().add(Drop::WgHandshakeQueueFull);
        }
    }
}

/// Logs a change of the handshake load state; returns the new state.
fn load_changed(was: bool, under_load: bool, queued: usize) -> bool {
    if under_load != was {
        // At most one line per second: the state lingers a second once set (and holds while a
        // flood goes on, see `LoadTracker::sustain`).
        info!(
            under_load,
            queued, "WireGuard handshake load changed (under load, handshakes need a cookie)"
        );
    }
    under_load
}

/// A packet thread's buffers for socket reads.
struct RxBufs<'t> {
    bufs: Vec<Vec<u8>>,
    metas: [RecvMeta; BATCH_SIZE],
    deliver: DeliverBufs<'t>,
}

/// A relay frame's unwrapped datagram, and the batch of writes to the TUN device (whose
/// buffers received datagrams are opened into).
struct DeliverBufs<'t> {
    relay: Vec<u8>,
    writer: TunWriter<'t>,
}

impl<'t> RxBufs<'t> {
    fn new(tuns: &'t [Arc<dyn TunIo>], vnet: bool, uso: bool) -> Self {
        Self {
            bufs: (0..BATCH_SIZE).map(|_| vec![0u8; MAX_PACKET]).collect(),
            metas: [RecvMeta::default(); BATCH_SIZE],
            deliver: DeliverBufs {
                relay: Vec::with_capacity(MAX_PACKET),
                writer: TunWriter::new(tuns, vnet, uso),
            },
        }
    }
}

/// Serves socket `i` for one turn: receives datagrams in batches until a batch comes back
/// short (the socket is empty) or the turn ends, and delivers what they carry. `false` when
/// the socket failed and must not be served again.
fn serve_socket<'s>(
    p: &'s Packets,
    i: usize,
    rx: &mut RxBufs<'_>,
    tun_bufs: &mut TunBufs,
    txs: &mut [TxBatch<'s>],
) -> bool {
    let (socket, state) = &p.sockets[i];
    let mut alive = true;
    for batch in 0..SOCKET_BATCHES_PER_TURN {
        let count = {
            let mut iov: Vec<IoSliceMut<'_>> =
                rx.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match state.recv(socket.as_ref().into(), &mut iov, &mut rx.metas) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
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
                    warn!(socket = i, %error, "reading the tunnel socket failed");
                    alive = false;
                    break;
                }
            }
        };
        let now = Instant::now();
        for (meta, buf) in rx.metas[..count].iter().zip(&rx.bufs) {
            // With GRO, one buffer holds several datagrams of `stride` bytes from one sender.
            for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                p.counters[i].datagrams.fetch_add(1, Ordering::Relaxed);
                deliver(p, now, meta.addr, datagram, &mut rx.deliver, &mut txs[i]);
            }
        }
        // A short batch: the socket was empty (no `recvmmsg` that would only say EAGAIN).
        let last = count < rx.metas.len();
        let writer = &mut rx.deliver.writer;
        if last && batch == 0 && (1..=LONE_TURN).contains(&writer.pending()) {
            let queues = writer.answer_queues();
            if queues != 0 {
                deliver_lone(p, i, queues, writer, tun_bufs, txs);
                break;
            }
        }
        // What one batch delivered goes out before the next `recvmmsg`: under a flood a turn
        // lasts up to 64 batches, and a ping among them must not wait for its end.
        rx.deliver.writer.flush();
        txs[i].flush();
        if last {
            break;
        }
    }
    alive
}

/// Delivers one datagram received from `addr`: to the TUN device, back out (a reply, a
/// relayed frame), to the handshake thread, to a reflector probe or to the Node.
fn deliver(
    p: &Packets,
    now: Instant,
    addr: SocketAddr,
    datagram: &[u8],
    rx: &mut DeliverBufs<'_>,
    tx: &mut TxBatch<'_>,
) {
    let router = &*p.router;
    let (from, datagram) = match router.relay().incoming(now, addr, datagram, &mut rx.relay) {
        Incoming::NotRelay => (addr, datagram),
        Incoming::Forward(to) => {
            tx.push(&rx.relay, to);
            return;
        }
        Incoming::Deliver { from, offset } => (from, &rx.relay[offset..]),
        Incoming::Dropped => return,
    };
    if Router::is_handshake(datagram) {
        if let Err(reason) = p.handshakes.push(from, datagram) {
            router.drops().add(reason);
        }
        return;
    }
    // Opened (or unframed) straight into the TUN batch's next buffer.
    match router.inbound(now, from, datagram, rx.writer.spare(datagram.len())) {
        Inbound::Deliver(packet) => {
            let len = packet.len();
            rx.writer.commit(len);
        }
        Inbound::Reply { datagram, to } => tx.push(datagram, to),
        Inbound::Reflected { nonce, seen } => {
            deliver_reflection(router, &p.waiters, from, nonce, seen);
        }
        Inbound::ToNode => {
            let input = ForNode::Datagram {
                from,
                datagram: datagram.to_vec(),
            };
            if p.node.try_send(input).is_err() {
                router
                    .drops()
                    .add(Drop::Plain(cladnet_common::plain::DropReason::UnknownPeer));
            }
        }
        Inbound::Dropped(_) if from != addr => {
            router.relay().refused_by_wireguard(from, datagram.len());
        }
        Inbound::Nothing | Inbound::Dropped(_) => {}
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
    use std::os::unix::net::UnixDatagram;

    use super::*;

    /// Datagrams written in place (`spare` + `commit`) and copied in (`push`) reach their
    /// destinations whole and in order, whatever ends a GSO batch: a shorter datagram, a
    /// longer one (which moves to the front of the next batch), another destination.
    #[test]
    fn a_batch_sends_what_was_written_into_it_in_order() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = UdpSocketState::new((&socket).into()).unwrap();
        let relay = RelayIo::default();
        let receivers: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let to: Vec<SocketAddr> = receivers.iter().map(|r| r.local_addr().unwrap()).collect();
        let sent: Vec<(usize, Vec<u8>)> = [(0, 100), (0, 100), (0, 60), (0, 100), (0, 200)]
            .into_iter()
            .chain([(1, 200), (0, 200)])
            .enumerate()
            .map(|(n, (dest, len))| (dest, vec![n as u8 + 1; len]))
            .collect();
        let mut tx = TxBatch::new(&socket, &state, &relay);
        for (n, (dest, datagram)) in sent.iter().enumerate() {
            if n % 2 == 0 {
                tx.spare()[..datagram.len()].copy_from_slice(datagram);
                tx.commit(datagram.len(), to[*dest]);
            } else {
                tx.push(datagram, to[*dest]);
            }
        }
        tx.flush();
        for (dest, receiver) in receivers.iter().enumerate() {
            receiver
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            for (_, datagram) in sent.iter().filter(|(d, _)| *d == dest) {
                let mut buf = [0u8; 512];
                let n = receiver.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &datagram[..], "at receiver {dest}");
            }
        }
    }

    /// The largest datagrams, each alone in its batch, one after the other: the free end of
    /// the batch always has room for the next one.
    #[test]
    fn a_batch_takes_the_largest_datagrams_back_to_back() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = UdpSocketState::new((&socket).into()).unwrap();
        let relay = RelayIo::default();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let mut tx = TxBatch::new(&socket, &state, &relay);
        let big = vec![7u8; MAX_PACKET];
        for _ in 0..3 {
            tx.push(&big, to);
            assert!(tx.spare().len() >= out_len(MAX_PACKET));
        }
        tx.flush();
    }

    fn wall() -> cladnet_wg::WallClock {
        cladnet_wg::WallClock::new(Instant::now(), std::time::SystemTime::now())
    }

    /// A TUN stand-in, one end of a datagram socket pair; the test holds the other end, the
    /// "kernel": what the engine writes arrives there, what is sent from there the engine
    /// reads. `answer`, if set, is sent to the engine within its first write, as the kernel
    /// answers a ping within the TUN write that delivers it.
    struct StandIn {
        engine_end: UnixDatagram,
        kernel: UnixDatagram,
        answer: Mutex<Option<Vec<u8>>>,
    }

    impl StandIn {
        /// `left` copies of `packet` waiting to be read.
        fn new(packet: &[u8], left: usize) -> Self {
            let (engine_end, kernel) = UnixDatagram::pair().unwrap();
            for _ in 0..left {
                kernel.send(packet).unwrap();
            }
            Self {
                engine_end,
                kernel,
                answer: Mutex::default(),
            }
        }

        /// A TUN queue that never produces a packet.
        fn idle() -> Self {
            Self::new(&[], 0)
        }

        /// Answers the first write with `answer`.
        fn answering(answer: Vec<u8>) -> Self {
            let tun = Self::idle();
            *tun.answer.lock().unwrap() = Some(answer);
            tun
        }
    }

    impl AsFd for StandIn {
        fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            self.engine_end.as_fd()
        }
    }

    impl TunIo for StandIn {
        fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            self.engine_end.recv(buf)
        }

        fn write(&self, buf: &[u8]) -> io::Result<usize> {
            let written = self.engine_end.send(buf)?;
            if let Some(answer) = self.answer.lock().unwrap().take() {
                self.kernel.send(&answer)?;
            }
            Ok(written)
        }
    }

    /// A lone packet from a peer is delivered; the answer queued during that write goes back
    /// to the peer; and the TUN queue, which the lone turn disarmed in `epoll` for its write,
    /// is served again afterwards: a packet the host sends later, on its own, reaches the peer.
    #[test]
    fn a_lone_packets_answer_goes_back_and_its_queue_is_served_again() {
        use super::super::router::tests as rt;
        let wait = Some(Duration::from_secs(5));
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(wait).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (peer_ep, engine_ep) = (peer.local_addr().unwrap(), socket.local_addr().unwrap());
        let (a, b) = (rt::node(1, 7), rt::node(2, 9));
        let plain = cladnet_core::policy::LinkMode::Plain;
        rt::install(&a, &[rt::config(&b, &engine_ep.to_string(), plain)]);
        rt::install(&b, &[rt::config(&a, &peer_ep.to_string(), plain)]);
        // An echo request (the kernel answers it within the write): IPv4 protocol 1, type 8.
        let mut ping = rt::packet(a.ip, b.ip, b"ping");
        (ping[9], ping[20]) = (1, 8);
        let answer = rt::packet(b.ip, a.ip, b"answer");
        let later = rt::packet(b.ip, a.ip, b"later");
        let tun = StandIn::answering(answer.clone());
        let kernel = tun.kernel.try_clone().unwrap();
        kernel.set_read_timeout(wait).unwrap();
        let (_engine, _outputs) = Userspace::start(
            b.router.clone(),
            vec![Arc::new(tun)],
            TunFeatures::default(),
            vec![socket],
        )
        .unwrap();
        let mut buf = [0u8; 2048];
        let mut from_engine = || {
            let (n, _) = peer
                .recv_from(&mut buf)
                .expect("a datagram from the engine");
            rt::receive(&a, &engine_ep.to_string(), &buf[..n]).unwrap()
        };
        peer.send_to(&rt::send(&a, &ping), engine_ep).unwrap();
        let mut written = [0u8; 2048];
        let n = kernel
            .recv(&mut written)
            .expect("the ping written to the TUN");
        assert_eq!(written[..n], ping[..]);
        assert_eq!(from_engine(), answer);
        // Long after the lone turn ended: only a re-armed queue is read again.
        thread::sleep(Duration::from_millis(100));
        kernel.send(&later).unwrap();
        assert_eq!(from_engine(), later);
    }

    /// An engine over one idle TUN stand-in and one loopback socket.
    fn idle_engine(router: &Arc<Router>) -> Userspace {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (engine, _outputs) = Userspace::start(
            router.clone(),
            vec![Arc::new(StandIn::idle())],
            TunFeatures::default(),
            vec![socket],
        )
        .unwrap();
        engine
    }

    /// An IPv4/UDP header from `src:sport` to `dst:dport` (checksums are not looked at).
    fn udp_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[24..26].copy_from_slice(&8u16.to_be_bytes());
        p
    }

    #[test]
    fn only_echo_requests_and_tcp_are_answered_within_the_write() {
        let udp = udp_packet([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        let with = |proto: u8, first: u8| {
            let mut p = udp.clone();
            (p[9], p[20]) = (proto, first);
            p
        };
        assert!(answered_in_write(&with(1, 8)), "echo request");
        assert!(!answered_in_write(&with(1, 0)), "echo reply");
        assert!(!answered_in_write(&with(1, 3)), "destination unreachable");
        assert!(answered_in_write(&with(6, 0)), "TCP");
        assert!(!answered_in_write(&udp));
        // Options move the ICMP header: its type is read past them.
        let mut options = with(1, 0);
        options[0] = 0x46;
        options.splice(20..20, [0, 0, 0, 0]);
        options[24] = 8;
        assert!(answered_in_write(&options));
        assert!(!answered_in_write(&[0x45; 19]));
        assert!(!answered_in_write(&[0x60; 40]));
        assert!(!answered_in_write(&with(1, 8)[..20]), "no ICMP header");
    }

    #[test]
    fn a_flow_keeps_its_queue_and_flows_spread_over_queues() {
        let flow = |sport| udp_packet([10, 0, 0, 1], [10, 0, 0, 2], sport, 5201);
        for sport in 0..64 {
            assert_eq!(flow_queue(&flow(sport), 4), flow_queue(&flow(sport), 4));
            assert!(flow_queue(&flow(sport), 4) < 4);
            assert_eq!(flow_queue(&flow(sport), 1), 0);
        }
        let mut used = [0usize; 4];
        for sport in 40_000..40_256 {
            used[flow_queue(&flow(sport), 4)] += 1;
        }
        // 256 flows over 4 queues: each gets a fair share, none is left out.
        assert!(used.iter().all(|&n| n > 32), "{used:?}");
        // The payload past the ports does not matter; anything not IPv4 takes queue 0.
        let mut longer = flow(7);
        longer.extend_from_slice(&[1, 2, 3]);
        assert_eq!(flow_queue(&longer, 4), flow_queue(&flow(7), 4));
        assert_eq!(flow_queue(&[0x60; 40], 4), 0);
        assert_eq!(flow_queue(&[0x45; 10], 4), 0);
    }

    /// Two workers over two TUN queues and a two-socket `SO_REUSEPORT` group on loopback:
    /// each worker reads its own queue, and datagrams from many senders spread over both
    /// sockets, each socket read by its own worker.
    #[tokio::test]
    async fn two_workers_each_carry_traffic() {
        let router = Arc::new(Router::new(
            cladnet_wg::PrivateKey::from_bytes([3; 32]),
            wall(),
        ));
        let sockets = sys::udp::bind_reuseport("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let port = sockets[0].local_addr().unwrap();
        let queue = |reads| -> Arc<dyn TunIo> {
            Arc::new(StandIn::new(
                &udp_packet([10, 0, 0, 1], [10, 9, 9, 9], 1000, 2000),
                reads,
            ))
        };
        let (engine, _outputs) = Userspace::start(
            router,
            vec![queue(3), queue(5)],
            TunFeatures::default(),
            sockets,
        )
        .unwrap();
        // 64 senders (64 source ports): the kernel hashes each 4-tuple to one socket.
        const SENDERS: u64 = 64;
        for _ in 0..SENDERS {
            let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
            // Not WireGuard, CLAD or a reflector answer: counted as a drop after the read.
            sender.send_to(&[0xee; 32], port).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let stats = loop {
            let stats = engine.worker_stats();
            let datagrams: u64 = stats.iter().map(|s| s.datagrams).sum();
            if datagrams == SENDERS && stats[0].tun_reads == 3 && stats[1].tun_reads == 5 {
                break stats;
            }
            assert!(
                Instant::now() < deadline,
                "not every packet was read: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // With 64 4-tuples, both sockets got some (all on one: probability 2^-63).
        assert!(stats.iter().all(|s| s.datagrams > 0), "{stats:?}");
    }

    /// Loopback only: the engine's tunnel socket, a reflector and a forger.
    #[tokio::test]
    async fn reflector_answers_count_only_from_the_probed_reflector_with_its_nonce() {
        let router = Arc::new(Router::new(
            cladnet_wg::PrivateKey::from_bytes([3; 32]),
            wall(),
        ));
        let engine = idle_engine(&router);
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

    /// Loopback only: `relay = "auto"`'s filtering test counts an answer from the reflector's
    /// IP on another port, and nothing else.
    #[tokio::test]
    async fn the_other_port_probe_counts_only_an_answer_from_another_port() {
        let router = Arc::new(Router::new(
            cladnet_wg::PrivateKey::from_bytes([4; 32]),
            wall(),
        ));
        let engine = idle_engine(&router);
        let reflector = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let elsewhere = UdpSocket::bind("127.0.0.2:0").unwrap();
        let reflector_addr = reflector.local_addr().unwrap();
        let seen: SocketAddrV4 = "198.18.1.10:8055".parse().unwrap();
        // First probe: answered from the probed port and from another IP (both refused);
        // second: from another port of the reflector's IP (counted).
        let server = thread::spawn(move || {
            let mut buf = [0u8; 64];
            for round in 0..2 {
                let (n, agent) = reflector.recv_from(&mut buf).unwrap();
                let (nonce, flags) = reflector::parse_any_request(&buf[..n]).unwrap();
                assert_eq!(flags, reflector::FLAG_OTHER_PORT);
                let answer = reflector::response(nonce, seen);
                if round == 0 {
                    reflector.send_to(&answer, agent).unwrap();
                    elsewhere.send_to(&answer, agent).unwrap();
                } else {
                    other.send_to(&answer, agent).unwrap();
                }
            }
        });
        let wait = Duration::from_millis(500);
        assert!(!engine.probe_other_port(reflector_addr, wait).await.unwrap());
        assert!(
            engine
                .probe_other_port(reflector_addr, Duration::from_secs(5))
                .await
                .unwrap()
        );
        server.join().unwrap();
        assert_eq!(router.drops().get(Drop::UnsolicitedReflector), 2);
    }
}
