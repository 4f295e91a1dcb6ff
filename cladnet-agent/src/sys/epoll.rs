//! One `epoll` instance shared by the userspace engine's packet threads.
//!
//! Every descriptor is registered level-triggered with `EPOLLONESHOT`: a readiness report
//! hands the descriptor to exactly one thread, which owns it until it re-arms it with
//! [`Epoll::rearm`]. That is what keeps one TUN queue's (one flow's) packets, and one
//! socket's (one peer's) datagrams, in order although any thread may serve any descriptor.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::Duration,
};

use super::cvt;

/// An `epoll` instance (closed on drop).
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// What [`Epoll::wait`] reported for one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The token the descriptor was registered with.
    pub token: u64,
    /// `EPOLLERR` or `EPOLLHUP`: the descriptor failed or its other end went away (a read
    /// will say why).
    pub failed: bool,
}

impl Epoll {
    /// A new instance (close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes a flag word and returns a new descriptor or -1.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Registers `fd` for readability, reported once (to one waiter) until re-armed.
    pub fn add_oneshot(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token)
    }

    /// Re-arms `fd` after its owner has served it; if it is still readable, the next wait
    /// (of any thread) reports it at once.
    pub fn rearm(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token)
    }

    /// Stops reporting `fd`, readable or not, until [`Self::rearm`]: the thread that disarms
    /// it serves it meanwhile, and no sleeping thread is woken for what it is about to read.
    pub fn disarm(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.ctl_events(libc::EPOLL_CTL_MOD, fd, token, 0)
    }

    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        #[allow(
            clippy::cast_sign_loss,
            reason = "the flag constants are small positive ints"
        )]
        let events = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;
        self.ctl_events(op, fd, token, events)
    }

    fn ctl_events(
        &self,
        op: libc::c_int,
        fd: BorrowedFd<'_>,
        token: u64,
        events: u32,
    ) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: epoll_ctl reads one `epoll_event`, which lives across the call; both
        // descriptors are borrowed, so open.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &raw mut event) })
            .map(drop)
    }

    /// Waits until one registered descriptor is ready, or `timeout` passes (`None`: forever).
    /// One at a time, so a thread never takes a descriptor it cannot serve at once while
    /// another thread sleeps. `Ok(None)` on timeout or a signal.
    pub fn wait_one(&self, timeout: Option<Duration>) -> io::Result<Option<Ready>> {
        let timeout_ms = timeout.map_or(-1, |t| {
            // Round up so a short non-zero timeout does not turn into a busy poll.
            libc::c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
        });
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: epoll_wait writes at most `maxevents` (1) entries into `event`.
        let ret = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), &raw mut event, 1, timeout_ms) };
        match cvt(ret) {
            Ok(0) => Ok(None),
            Ok(_) => {
                #[allow(
                    clippy::cast_sign_loss,
                    reason = "the flag constants are small positive ints"
                )]
                let failed = event.events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
                Ok(Some(Ready {
                    token: event.u64,
                    failed,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsFd as _, os::unix::net::UnixDatagram};

    use super::*;

    #[test]
    fn a_oneshot_descriptor_is_reported_once_until_rearmed() {
        let epoll = Epoll::new().unwrap();
        let (a, b) = UnixDatagram::pair().unwrap();
        epoll.add_oneshot(b.as_fd(), 7).unwrap();
        let short = Some(Duration::from_millis(20));
        assert_eq!(epoll.wait_one(short).unwrap(), None, "nothing to read yet");
        a.send(b"x").unwrap();
        let ready = epoll.wait_one(short).unwrap();
        assert_eq!(
            ready,
            Some(Ready {
                token: 7,
                failed: false
            })
        );
        // Still readable, but handed out already: nobody else gets it.
        assert_eq!(epoll.wait_one(short).unwrap(), None);
        epoll.rearm(b.as_fd(), 7).unwrap();
        assert_eq!(epoll.wait_one(short).unwrap().map(|r| r.token), Some(7));
        drop(a);
        epoll.rearm(b.as_fd(), 7).unwrap();
        assert!(epoll.wait_one(short).unwrap().is_some());
    }

    #[test]
    fn a_disarmed_descriptor_is_not_reported_until_rearmed() {
        let epoll = Epoll::new().unwrap();
        let (a, b) = UnixDatagram::pair().unwrap();
        epoll.add_oneshot(b.as_fd(), 3).unwrap();
        epoll.disarm(b.as_fd(), 3).unwrap();
        a.send(b"x").unwrap();
        let short = Some(Duration::from_millis(20));
        assert_eq!(
            epoll.wait_one(short).unwrap(),
            None,
            "readable but disarmed"
        );
        // Re-arming a descriptor that is still readable reports it at once: nothing that
        // arrived while it was disarmed is lost.
        epoll.rearm(b.as_fd(), 3).unwrap();
        assert_eq!(epoll.wait_one(short).unwrap().map(|r| r.token), Some(3));
    }

    #[test]
    fn nonblocking_reads_say_would_block() {
        let (_a, b) = UnixDatagram::pair().unwrap();
        super::super::set_nonblocking(b.as_fd()).unwrap();
        let err = b.recv(&mut [0; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
