//! Socket options for the dataplane's UDP socket that std does not expose.

use std::{
    io,
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
