//! A Linux TUN device (layer 3, no packet-info prefix), optionally multi-queue and with
//! `virtio_net_hdr` offload headers.
//!
//! The device is created non-persistent: it disappears when the last queue's file descriptor
//! closes, so a crashed agent leaves no interface behind.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, IoSlice, Read as _, Write as _},
    ops::BitOr,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd},
    sync::Arc,
    time::Duration,
};

use super::{SysError, cvt};

/// The `struct virtio_net_hdr` that precedes every packet in vnet_hdr mode (10 bytes, no
/// `num_buffers` field); the userspace engine's offload code owns its layout.
pub use cladnet_offload::{VNET_HDR_LEN, VirtioNetHdr};

const TUN_PATH: &str = "/dev/net/tun";

/// How to create the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunOptions {
    /// Prefix every packet with a [`VirtioNetHdr`] (`IFF_VNET_HDR`); required for
    /// [`Tun::set_offload`].
    pub vnet_hdr: bool,
    /// Number of queues (file descriptors); more than one sets `IFF_MULTI_QUEUE` and lets the
    /// kernel spread flows over the queues.
    pub queues: usize,
}

impl Default for TunOptions {
    fn default() -> Self {
        Self {
            vnet_hdr: false,
            queues: 1,
        }
    }
}

/// Upper bound on queues; the kernel's own limit (`MAX_TAP_QUEUES`) is 256.
pub const MAX_QUEUES: usize = 256;

/// A TUN interface and its queues.
///
/// Dropping the `Tun` closes only its own references: the interface lives until every
/// [`TunQueue`] handed out (and cloned) is dropped too.
#[derive(Debug)]
pub struct Tun {
    name: String,
    vnet_hdr: bool,
    queues: Vec<TunQueue>,
}

/// One queue of a [`Tun`]: a file descriptor that reads and writes whole IP packets.
///
/// Cheap to clone and usable from several threads at once (`read`/`write` take `&self`); the
/// descriptor is blocking unless [`super::set_nonblocking`] is called on it.
#[derive(Debug, Clone)]
pub struct TunQueue {
    file: Arc<File>,
    index: usize,
}

/// Checks an interface name the way the kernel's `dev_valid_name` does, plus `%` (a name
/// template would give the device another name than the one asked for).
pub fn validate_interface_name(name: &str) -> Result<(), SysError> {
    let invalid = |reason: &str| SysError::InvalidInput {
        field: "interface",
        value: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(invalid(&format!(
            "is {} bytes, at most {} are allowed",
            name.len(),
            libc::IFNAMSIZ - 1
        )));
    }
    if name == "." || name == ".." {
        return Err(invalid("must not be \".\" or \"..\""));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c == '%' || c == '\0' || c.is_whitespace())
    {
        return Err(invalid(&format!("must not contain {c:?}")));
    }
    Ok(())
}

/// `struct ifreq` as used by `TUNSETIFF`: the name and the `ifr_flags` member of the union.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    // Pads to sizeof(struct ifreq) = 40, which the kernel copies in and out.
    _pad: [u8; 22],
}

impl IfReqFlags {
    fn new(name: &str, flags: libc::c_short) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        // validate_interface_name guarantees len < IFNAMSIZ, so the name stays NUL-terminated.
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn name(&self) -> String {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }
}

const _: () = assert!(size_of::<IfReqFlags>() == 40);

impl Tun {
    /// Creates TUN interface `name`, or attaches to an existing TUN device of that name, with
    /// `opts.queues` queues. The interface starts down and without addresses (see
    /// [`crate::netconf::configure_interface`]).
    pub fn create(name: &str, opts: TunOptions) -> Result<Self, SysError> {
        validate_interface_name(name)?;
        if opts.queues == 0 || opts.queues > MAX_QUEUES {
            return Err(SysError::InvalidInput {
                field: "queues",
                value: opts.queues.to_string(),
                reason: format!("must be 1..={MAX_QUEUES}"),
            });
        }
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if opts.queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let existed = super::interface_index(name)?.is_some();
        let mut queues = Vec::with_capacity(opts.queues);
        let mut actual_name = name.to_owned();
        // On an error below, the queues opened so far close and a device we created vanishes.
        for index in 0..opts.queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(TUN_PATH)
                .map_err(|source| {
                    let action = if source.kind() == io::ErrorKind::NotFound {
                        "opening /dev/net/tun (is the tun module available?)"
                    } else {
                        "opening /dev/net/tun"
                    };
                    SysError::io(action, format!("interface {name:?}"), source)
                })?;
            // All flag values fit in the 16-bit ifr_flags field.
            let mut req = IfReqFlags::new(name, flags as libc::c_short);
            // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a live,
            // correctly sized and initialised `struct ifreq` on the stack.
            let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
            if let Err(source) = cvt(ret) {
                return Err(attach_error(name, index, existed, opts, source));
            }
            actual_name = req.name();
            queues.push(TunQueue {
                file: Arc::new(file),
                index,
            });
        }
        let tun = Self {
            name: actual_name,
            vnet_hdr: opts.vnet_hdr,
            queues,
        };
        if opts.vnet_hdr {
            // The header size is a device property; 10 = struct virtio_net_hdr without
            // num_buffers, which is what VNET_HDR_LEN and VirtioNetHdr assume.
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points to `size`.
            let ret = unsafe {
                libc::ioctl(
                    tun.queues[0].file.as_raw_fd(),
                    libc::TUNSETVNETHDRSZ,
                    &raw const size,
                )
            };
            cvt(ret).map_err(|source| {
                SysError::io(
                    format!("TUNSETVNETHDRSZ {VNET_HDR_LEN}"),
                    format!("interface {:?}", tun.name),
                    source,
                )
            })?;
        }
        Ok(tun)
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether packets carry a [`VirtioNetHdr`] prefix.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The queues, one per file descriptor.
    pub fn queues(&self) -> &[TunQueue] {
        &self.queues
    }

    /// Queue 0, shared: a convenience for single-queue users that want an `Arc` (e.g. an
    /// `Arc<dyn Trait>`).
    pub fn queue(&self) -> Arc<TunQueue> {
        Arc::new(self.queues[0].clone())
    }

    /// Gives up the `Tun`, keeping the queues (the interface lives while any is open).
    pub fn into_queues(self) -> Vec<TunQueue> {
        self.queues
    }

    /// Enables checksum/segmentation offloads (`TUNSETOFFLOAD`) and returns what the kernel
    /// accepted: if `wanted` includes UDP segmentation (USO, Linux 6.2+) and the kernel
    /// refuses it, the call is retried without USO. With offloads on, the kernel may hand
    /// [`TunQueue::read`] packets up to 64 KiB that still need checksum completion or
    /// segmentation, as the [`VirtioNetHdr`] in front of them says.
    pub fn set_offload(&self, wanted: Offload) -> Result<Offload, SysError> {
        let invalid = |reason: &str| SysError::InvalidInput {
            field: "offload",
            value: wanted.to_string(),
            reason: reason.to_owned(),
        };
        if !self.vnet_hdr && wanted != Offload::NONE {
            return Err(invalid("offloads need a TUN created with vnet_hdr"));
        }
        if !wanted.contains(Offload::CSUM) && wanted != Offload::NONE {
            return Err(invalid("segmentation offloads need csum"));
        }
        if wanted.contains(Offload::USO4) != wanted.contains(Offload::USO6) {
            return Err(invalid("the kernel takes uso4 and uso6 only together"));
        }
        match self.try_set_offload(wanted) {
            Err(source)
                if source.raw_os_error() == Some(libc::EINVAL)
                    && wanted.intersects(Offload::USO4 | Offload::USO6) =>
            {
                let fallback = wanted.difference(Offload::USO4 | Offload::USO6);
                self.try_set_offload(fallback).map_err(|source| {
                    SysError::io(
                        format!("TUNSETOFFLOAD {fallback} (after {wanted} was refused)"),
                        format!("interface {:?}", self.name),
                        source,
                    )
                })?;
                Ok(fallback)
            }
            Err(source) => Err(SysError::io(
                format!("TUNSETOFFLOAD {wanted}"),
                format!("interface {:?}", self.name),
                source,
            )),
            Ok(()) => Ok(wanted),
        }
    }

    fn try_set_offload(&self, flags: Offload) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of TUN_F_*
        // flags); no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.queues[0].file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags.bits()),
            )
        };
        cvt(ret).map(drop)
    }
}

/// Explains a failed `TUNSETIFF`, naming the likely cause.
fn attach_error(
    name: &str,
    queue: usize,
    existed: bool,
    opts: TunOptions,
    source: io::Error,
) -> SysError {
    let reason = match source.raw_os_error() {
        Some(libc::EINVAL) if existed => Some(
            "it is another kind of device, or a TUN with other flags (multi-queue, vnet_hdr, \
             tap) than requested",
        ),
        Some(libc::EBUSY) if existed && queue == 0 => {
            Some("it is a single-queue TUN already attached by another process")
        }
        Some(libc::EPERM) if existed => {
            Some("it is a persistent TUN owned by another user or group")
        }
        _ => None,
    };
    match reason {
        Some(reason) => SysError::NotAttachable {
            interface: name.to_owned(),
            reason,
            source,
        },
        None => SysError::io(
            format!(
                "TUNSETIFF (create/attach TUN queue {queue} of {}, vnet_hdr {})",
                opts.queues, opts.vnet_hdr
            ),
            format!("interface {name:?}"),
            source,
        ),
    }
}

impl TunQueue {
    /// Reads one packet (with its [`VirtioNetHdr`] prefix in vnet_hdr mode) into `buf`;
    /// a packet longer than `buf` is truncated.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.file).read(buf)
    }

    /// Writes one packet (with its [`VirtioNetHdr`] prefix in vnet_hdr mode).
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        (&*self.file).write(packet)
    }

    /// Writes one packet gathered from several slices (e.g. header + payload) with one
    /// `writev`, so the parts need not be copied together.
    pub fn writev(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self.file).write_vectored(parts)
    }

    /// Waits until a packet can be read, for at most `timeout` (`None`: forever). Returns
    /// `false` on timeout or when a signal interrupted the wait.
    pub fn poll_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        super::wait_ready(self.file.as_fd(), false, timeout)
    }

    /// Position of this queue in [`Tun::queues`].
    pub fn index(&self) -> usize {
        self.index
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A set of `TUN_F_*` offload flags for [`Tun::set_offload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Offload(u32);

impl Offload {
    /// No offloads.
    pub const NONE: Self = Self(0);
    /// The kernel may hand over packets with a partial checksum (`TUN_F_CSUM`).
    pub const CSUM: Self = Self(libc::TUN_F_CSUM);
    /// TCP/IPv4 segmentation (`TUN_F_TSO4`).
    pub const TSO4: Self = Self(libc::TUN_F_TSO4);
    /// TCP/IPv6 segmentation (`TUN_F_TSO6`).
    pub const TSO6: Self = Self(libc::TUN_F_TSO6);
    /// UDP/IPv4 segmentation (`TUN_F_USO4`, Linux 6.2+).
    pub const USO4: Self = Self(libc::TUN_F_USO4);
    /// UDP/IPv6 segmentation (`TUN_F_USO6`, Linux 6.2+).
    pub const USO6: Self = Self(libc::TUN_F_USO6);
    /// Checksum and TCP segmentation offloads.
    pub const TCP: Self = Self(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6);
    /// Everything the agent can use: [`Self::TCP`] plus UDP segmentation.
    pub const ALL: Self = Self(Self::TCP.0 | libc::TUN_F_USO4 | libc::TUN_F_USO6);

    /// The raw `TUN_F_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// These flags without those of `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl BitOr for Offload {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Offload, &str); 5] = [
            (Offload::CSUM, "csum"),
            (Offload::TSO4, "tso4"),
            (Offload::TSO6, "tso6"),
            (Offload::USO4, "uso4"),
            (Offload::USO6, "uso6"),
        ];
        let mut rest = *self;
        let mut sep = "";
        for (flag, name) in NAMES {
            if self.contains(flag) {
                write!(f, "{sep}{name}")?;
                sep = "|";
                rest = rest.difference(flag);
            }
        }
        if rest != Self::NONE {
            write!(f, "{sep}{:#x}", rest.0)?;
        } else if sep.is_empty() {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: SysError) -> (&'static str, String) {
        match err {
            SysError::InvalidInput { field, reason, .. } => (field, reason),
            other => panic!("expected InvalidInput, got {other}"),
        }
    }

    #[test]
    fn interface_names_are_validated() {
        for ok in ["cln0", "a", "cladnet-0123456", "tun_x.y-z"] {
            validate_interface_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("cladnet-01234567", "16 bytes"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("a\tb", "'\\t'"),
            ("a\0b", "'\\0'"),
            ("a:1", "':'"),
            ("tun%d", "'%'"),
            (".", "\".\""),
            ("..", "\"..\""),
        ] {
            let err = validate_interface_name(bad).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("invalid interface "), "{text}");
            let (field, reason) = field_of(err);
            assert_eq!(field, "interface");
            assert!(reason.contains(why), "{bad:?}: {reason}");
        }
    }

    #[test]
    fn create_rejects_bad_input_before_any_syscall() {
        let err = Tun::create("bad/name", TunOptions::default()).unwrap_err();
        assert_eq!(field_of(err).0, "interface");
        let opts = TunOptions {
            queues: 0,
            ..TunOptions::default()
        };
        assert_eq!(field_of(Tun::create("cln0", opts).unwrap_err()).0, "queues");
        let opts = TunOptions {
            queues: MAX_QUEUES + 1,
            ..TunOptions::default()
        };
        assert_eq!(field_of(Tun::create("cln0", opts).unwrap_err()).0, "queues");
    }

    #[test]
    fn ifreq_carries_name_and_flags() {
        let req = IfReqFlags::new("cln0", 0x1001);
        assert_eq!(req.name(), "cln0");
        assert_eq!(&req.name[..5], b"cln0\0");
        assert_eq!(req.flags, 0x1001);
    }

    #[test]
    fn offload_flags() {
        assert_eq!(Offload::ALL.to_string(), "csum|tso4|tso6|uso4|uso6");
        assert_eq!(Offload::NONE.to_string(), "none");
        assert_eq!((Offload::CSUM | Offload(0x100)).to_string(), "csum|0x100");
        assert!(Offload::ALL.contains(Offload::TCP));
        assert!(!Offload::TCP.intersects(Offload::USO4 | Offload::USO6));
        assert_eq!(
            Offload::ALL.difference(Offload::USO4 | Offload::USO6),
            Offload::TCP
        );
        assert_eq!(Offload::TCP.bits(), 0x07);
    }
}
