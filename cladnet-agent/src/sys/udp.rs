//! Socket options for the dataplane's UDP socket that std does not expose.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsFd, AsRawFd as _},
};

use super::{SysError, cvt};

/// The buffer sizes a socket ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// `SO_RCVBUF` as the kernel reports it (twice the usable size: it counts bookkeeping).
    pub recv: usize,
    /// `SO_SNDBUF` as the kernel reports it.
    pub send: usize,
    /// Whether the `*FORCE` options were allowed (CAP_NET_ADMIN), so the sizes are not capped
    /// by `net.core.rmem_max`/`wmem_max`.
    pub forced: bool,
}

/// Sets a socket's receive and send buffers to `bytes` each: first with `SO_RCVBUFFORCE` /
/// `SO_SNDBUFFORCE`, which ignore the sysctl caps but need CAP_NET_ADMIN, falling back to the
/// capped `SO_RCVBUF` / `SO_SNDBUF`. Returns the sizes the kernel applied.
pub fn set_socket_buffers(socket: &impl AsFd, bytes: usize) -> Result<SocketBuffers, SysError> {
    let value = libc::c_int::try_from(bytes)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| SysError::InvalidInput {
            field: "socket buffer size",
            value: bytes.to_string(),
            reason: format!("must be 1..={}", libc::c_int::MAX),
        })?;
    let fd = socket.as_fd();
    let mut forced = true;
    for (force, plain, name) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF"),
    ] {
        match setsockopt_int(&fd, libc::SOL_SOCKET, force, value) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                forced = false;
                setsockopt_int(&fd, libc::SOL_SOCKET, plain, value).map_err(|source| {
                    SysError::io(format!("setsockopt {name} {bytes}"), "udp socket", source)
                })?;
            }
            Err(source) => {
                return Err(SysError::io(
                    format!("setsockopt {name}FORCE {bytes}"),
                    "udp socket",
                    source,
                ));
            }
        }
    }
    let get = |opt, name: &str| {
        getsockopt_int(&fd, libc::SOL_SOCKET, opt)
            .map(|v| usize::try_from(v).unwrap_or(0))
            .map_err(|source| SysError::io(format!("getsockopt {name}"), "udp socket", source))
    };
    Ok(SocketBuffers {
        recv: get(libc::SO_RCVBUF, "SO_RCVBUF")?,
        send: get(libc::SO_SNDBUF, "SO_SNDBUF")?,
        forced,
    })
}

/// Sets or clears the IPv4 Don't-Fragment bit on everything the socket sends
/// (`IP_MTU_DISCOVER` = `IP_PMTUDISC_DO` / `IP_PMTUDISC_DONT`): tunnel packets too big for the
/// path then fail with `EMSGSIZE` instead of being fragmented.
pub fn set_dont_fragment(socket: &impl AsFd, on: bool) -> Result<(), SysError> {
    let mode = if on {
        libc::IP_PMTUDISC_DO
    } else {
        libc::IP_PMTUDISC_DONT
    };
    setsockopt_int(
        &socket.as_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        mode,
    )
    .map_err(|source| {
        SysError::io(
            format!("setsockopt IP_MTU_DISCOVER {mode}"),
            "udp socket",
            source,
        )
    })
}

/// Binds `count` UDP sockets to `addr` as one `SO_REUSEPORT` group: the kernel spreads
/// incoming datagrams over them by a hash of the 4-tuple (so one sender's datagrams always
/// reach the same socket, in order), and any of them sends from the shared port.
///
/// A plain bind comes first and is closed again: it fails with `EADDRINUSE` while another
/// process holds the port (with or without `SO_REUSEPORT`), which a group bind alone would
/// not detect when that process also set the option (say, an agent that is still running).
/// Port 0 is resolved by the first socket of the group; the others take the same port.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> Result<Vec<UdpSocket>, SysError> {
    let target = || format!("udp {addr}");
    if count == 0 {
        return Err(SysError::InvalidInput {
            field: "socket count",
            value: count.to_string(),
            reason: "must be at least 1".into(),
        });
    }
    if addr.port() != 0 {
        drop(UdpSocket::bind(addr).map_err(|source| SysError::io("bind", target(), source))?);
    }
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(|source| SysError::io("socket", target(), source))?;
        setsockopt_int(&socket, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
            .map_err(|source| SysError::io("setsockopt SO_REUSEPORT", target(), source))?;
        socket
            .bind(&addr.into())
            .map_err(|source| SysError::io("bind (SO_REUSEPORT)", target(), source))?;
        let socket = UdpSocket::from(socket);
        if addr.port() == 0 {
            addr = socket
                .local_addr()
                .map_err(|source| SysError::io("getsockname", target(), source))?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

fn setsockopt_int(
    fd: &impl AsFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is one int read from `value`, whose size is passed along.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

fn getsockopt_int(fd: &impl AsFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes (one int) to `value` and updates `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    cvt(ret).map(|_| value)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn buffers_grow_or_fall_back() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let got = set_socket_buffers(&socket, 1 << 20).unwrap();
        // Either forced to (twice) the request or capped by the sysctl; never zero.
        assert!(got.recv > 0 && got.send > 0, "{got:?}");
        if got.forced {
            assert!(got.recv >= 1 << 20, "{got:?}");
        }
        let err = set_socket_buffers(&socket, 0).unwrap_err();
        assert!(err.to_string().contains("socket buffer size"), "{err}");
    }

    #[test]
    fn a_reuseport_group_shares_one_port_and_refuses_a_taken_one() {
        let sockets = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = sockets[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for s in &sockets {
            assert_eq!(s.local_addr().unwrap().port(), port);
            assert_eq!(
                getsockopt_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT).unwrap(),
                1
            );
        }
        // The port is taken by the group: a second group on it fails, as a plain bind does.
        let err = bind_reuseport(sockets[0].local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE), "{err}");
        assert!(bind_reuseport("127.0.0.1:0".parse().unwrap(), 0).is_err());
    }

    #[test]
    fn dont_fragment_toggles() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_dont_fragment(&socket, true).unwrap();
        let mode = getsockopt_int(&socket, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap();
        assert_eq!(mode, libc::IP_PMTUDISC_DO);
        set_dont_fragment(&socket, false).unwrap();
        let mode = getsockopt_int(&socket, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap();
        assert_eq!(mode, libc::IP_PMTUDISC_DONT);
    }
}
