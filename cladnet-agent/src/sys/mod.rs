//! Thin, checked wrappers over the Linux syscalls and ioctls the agent needs: the TUN device
//! ([`tun`]) and socket options std does not expose ([`udp`]).
//!
//! This is the only module of the agent allowed to use `unsafe`: every call is a plain syscall
//! on a file descriptor we own, with arguments built from checked Rust values, so the
//! `// SAFETY:` notes stay short and local.
#![allow(unsafe_code, reason = "the agent's syscalls and ioctls live here")]

use std::{ffi::CString, io};

pub mod epoll;
pub mod tun;
pub mod udp;

/// A system call failed or was refused before it was made.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// An argument was rejected before reaching the kernel.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidInput {
        /// Which input (e.g. `interface`).
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The kernel refused an operation.
    #[error("{action} on {target}: {source}")]
    Io {
        /// What was attempted (e.g. `TUNSETIFF (create/attach TUN queue 0)`).
        action: String,
        /// The object it was attempted on (e.g. `interface "cln0"`).
        target: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A TUN device could not be attached because the interface exists and is not a TUN
    /// device we may attach to.
    #[error(
        "interface {interface:?} exists and is not a TUN device we can attach to: {reason}: {source}"
    )]
    NotAttachable {
        /// The interface.
        interface: String,
        /// The likely cause.
        reason: &'static str,
        /// The kernel's answer to `TUNSETIFF`.
        #[source]
        source: io::Error,
    },
}

impl SysError {
    /// The OS error number behind this error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } | Self::NotAttachable { source, .. } => source.raw_os_error(),
            Self::InvalidInput { .. } => None,
        }
    }

    fn io(action: impl Into<String>, target: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            action: action.into(),
            target: target.into(),
            source,
        }
    }
}

/// Waits until `fd` is readable (`POLLIN`) or writable (`POLLOUT`) or `timeout` passes
/// (`None`: forever). Returns whether it became ready; a signal counts as not ready.
pub fn wait_ready(
    fd: std::os::fd::BorrowedFd<'_>,
    writable: bool,
    timeout: Option<std::time::Duration>,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    let timeout_ms = match timeout {
        None => -1,
        // Round up so a short non-zero timeout does not turn into a busy poll.
        Some(t) => {
            libc::c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
        }
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: if writable {
            libc::POLLOUT
        } else {
            libc::POLLIN
        },
        revents: 0,
    };
    // SAFETY: poll reads and writes exactly one `pollfd`, which `pfd` is.
    let ret = unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
    match cvt(ret) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

/// Puts `fd` in non-blocking mode (the status flag is the open file's: every clone of the
/// descriptor sees it).
pub fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL takes no argument and only returns the status flags.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: F_SETFL takes an int of status flags by value.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Lowers the scheduling priority of the calling thread by `niceness` (Linux threads have a
/// nice value of their own). Used for work that must yield to the packet threads, such as
/// answering a flood of handshake messages.
pub fn lower_thread_priority(niceness: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    let who = libc::id_t::try_from(tid).map_err(|_| io::Error::other("negative thread id"))?;
    // SAFETY: getpriority/setpriority only read their integer arguments; errno distinguishes a
    // legitimate -1 priority from an error, so it is cleared first.
    let current = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, who)
    };
    if current == -1 && io::Error::last_os_error().raw_os_error() != Some(0) {
        return Err(io::Error::last_os_error());
    }
    let target = current.saturating_add(niceness).min(19);
    // SAFETY: as above.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, who, target) }).map(drop)
}

/// Converts a `-1`-on-error syscall return value into an `io::Result`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The name of the interface with `index` in the calling thread's network namespace, `None` if
/// there is none.
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes (NUL included) into `buf`, which
    // lives until the CStr built from it is copied out.
    let ret = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ret.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The index of interface `name` in the calling thread's network namespace, `None` if there is
/// no such interface.
pub fn interface_index(name: &str) -> Result<Option<u32>, SysError> {
    tun::validate_interface_name(name)?;
    let c_name = CString::new(name).expect("validated names contain no NUL");
    // SAFETY: if_nametoindex only reads the NUL-terminated string, which outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index != 0 {
        return Ok(Some(index));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO) => Ok(None),
        _ => Err(SysError::io(
            "if_nametoindex",
            format!("interface {name:?}"),
            err,
        )),
    }
}
