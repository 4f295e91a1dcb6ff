//! The connectivity test (cb-network's CONNECTIVITY test, done properly): ping every peer over
//! the overlay and report min/avg/max/stddev RTT and loss per pair.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use cladnet_proto::v1 as pb;
use socket2::{Domain, Protocol, Socket, Type};

/// Time between echo requests to one peer.
const INTERVAL: Duration = Duration::from_millis(200);
/// How long to wait for the last reply.
const TIMEOUT: Duration = Duration::from_secs(1);

/// One peer to ping.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its node id.
    pub host_id: String,
    /// Its overlay address.
    pub ip: Ipv4Addr,
}

/// Pings every target `count` times (all targets at once) from `source`, this node's overlay
/// address, and returns one result per target.
pub async fn run(
    source_id: &str,
    source: Ipv4Addr,
    targets: Vec<Target>,
    count: u32,
) -> Vec<pb::PairResult> {
    let tasks: Vec<_> = targets
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            // A distinct echo identifier per target keeps concurrent raw sockets apart.
            let ident = (std::process::id() as u16).wrapping_add(i as u16);
            tokio::task::spawn_blocking(move || {
                let rtts = ping(source, t.ip, ident, count).unwrap_or_else(|error| {
                    tracing::warn!(peer = %t.ip, %error, "connectivity test: ping failed");
                    Vec::new()
                });
                (t, rtts)
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        if let Ok((t, rtts)) = task.await {
            out.push(summarize(source_id, source, &t, count, &rtts));
        }
    }
    out
}

/// RTT statistics in milliseconds.
fn summarize(
    source_id: &str,
    source: Ipv4Addr,
    t: &Target,
    sent: u32,
    rtts: &[Duration],
) -> pb::PairResult {
    let ms: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let n = ms.len() as f64;
    let avg = if ms.is_empty() {
        0.0
    } else {
        ms.iter().sum::<f64>() / n
    };
    let var = if ms.is_empty() {
        0.0
    } else {
        ms.iter().map(|x| (x - avg).powi(2)).sum::<f64>() / n
    };
    let received = u32::try_from(ms.len()).unwrap_or(u32::MAX);
    pb::PairResult {
        source_host_id: source_id.to_owned(),
        source_ip: source.to_string(),
        destination_host_id: t.host_id.clone(),
        destination_ip: t.ip.to_string(),
        min_rtt_ms: ms.iter().copied().fold(f64::INFINITY, f64::min).min(avg),
        avg_rtt_ms: avg,
        max_rtt_ms: ms.iter().copied().fold(0.0, f64::max),
        stddev_rtt_ms: var.sqrt(),
        packets_sent: sent,
        packets_received: received,
        packet_loss: if sent == 0 {
            0.0
        } else {
            f64::from(sent - received.min(sent)) / f64::from(sent)
        },
    }
}

/// ICMP echo request `seq` with identifier `ident`.
fn echo_request(ident: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"cladnet!");
    let sum = p.chunks(2).fold(0u32, |acc, w| {
        acc + u32::from(u16::from_be_bytes([w[0], w[1]]))
    });
    let folded = (sum & 0xffff) + (sum >> 16);
    p[2..4].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    p
}

/// Sends `count` echo requests to `dst` and collects the RTTs of the replies.
fn ping(source: Ipv4Addr, dst: Ipv4Addr, ident: u16, count: u32) -> io::Result<Vec<Duration>> {
    // A raw socket: the agent holds CAP_NET_RAW; unprivileged ICMP sockets depend on a sysctl.
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    socket.bind(&SocketAddrV4::new(source, 0).into())?;
    // std's datagram calls work on any datagram-like descriptor (the port is ignored for raw
    // sockets) and read into initialised buffers.
    let socket = UdpSocket::from(socket);
    let mut sent_at = vec![None; count as usize];
    let mut rtts = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    for seq in 0..count {
        let due = start + INTERVAL * seq;
        wait_replies(&socket, dst, ident, due, &mut sent_at, &mut rtts, &mut buf)?;
        // Stamped before sending: on a busy machine the thread may be descheduled after the
        // send for longer than the round trip.
        sent_at[seq as usize] = Some(Instant::now());
        socket.send_to(&echo_request(ident, seq as u16), SocketAddrV4::new(dst, 0))?;
    }
    let done = Instant::now() + TIMEOUT;
    while rtts.len() < count as usize && Instant::now() < done {
        wait_replies(&socket, dst, ident, done, &mut sent_at, &mut rtts, &mut buf)?;
    }
    Ok(rtts)
}

/// Reads echo replies until `until`.
fn wait_replies(
    socket: &UdpSocket,
    dst: Ipv4Addr,
    ident: u16,
    until: Instant,
    sent_at: &mut [Option<Instant>],
    rtts: &mut Vec<Duration>,
    buf: &mut [u8],
) -> io::Result<()> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        socket.set_read_timeout(Some(left))?;
        let (len, from) = match socket.recv_from(buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let bytes = &buf[..len];
        if from.ip() != std::net::IpAddr::V4(dst) {
            continue;
        }
        // Raw IPv4 sockets deliver the IP header too.
        let ihl = usize::from(bytes.first().map_or(0, |b| b & 0x0f)) * 4;
        let Some(icmp) = bytes.get(ihl..ihl + 8) else {
            continue;
        };
        let (id, seq) = (
            u16::from_be_bytes([icmp[4], icmp[5]]),
            usize::from(u16::from_be_bytes([icmp[6], icmp[7]])),
        );
        if icmp[0] == 0
            && id == ident
            && let Some(at) = sent_at.get_mut(seq).and_then(Option::take)
        {
            rtts.push(at.elapsed());
        }
    }
}
