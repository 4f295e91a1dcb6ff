//! Making sure the pin directory lives on a bpf filesystem.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tracing::{debug, info, warn};

use super::EbpfError;

/// Where bpffs is conventionally mounted.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Ensures `pin_dir` is on bpffs. If it lies under `/sys/fs/bpf` and nothing is mounted there
/// yet, mounts bpffs (as Cilium and Calico agents do); otherwise explains what to do.
pub(super) fn ensure_mounted(pin_dir: &Path) -> Result<(), EbpfError> {
    let mounts =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| EbpfError::Io {
            op: "read",
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    match fs_type_of(&mounts, pin_dir).as_deref() {
        Some("bpf") => return Ok(()),
        _ if !pin_dir.starts_with(BPFFS_ROOT) => {
            return Err(EbpfError::NotBpffs {
                path: pin_dir.to_owned(),
                reason: format!("choose a directory under a bpffs mount such as {BPFFS_ROOT}"),
            });
        }
        _ => {}
    }
    info!(mountpoint = BPFFS_ROOT, "mounting bpffs");
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS_ROOT])
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(EbpfError::NotBpffs {
            path: pin_dir.to_owned(),
            reason: format!("`mount -t bpf bpf {BPFFS_ROOT}` exited with {s}"),
        }),
        Err(e) => Err(EbpfError::NotBpffs {
            path: pin_dir.to_owned(),
            reason: format!("could not run `mount -t bpf bpf {BPFFS_ROOT}`: {e}"),
        }),
    }
}

/// Warns when the bpffs holding `pin_dir` is mounted nowhere in PID 1's mount namespace: it then
/// exists only in this process's private mount namespace (`ip netns exec` makes one and mounts a
/// fresh sysfs on /sys, so the agent mounts a fresh bpffs under it), and its pins vanish when the
/// agent exits, so a restarted agent cannot take over the running dataplane.
///
/// Each bpffs mount is its own instance with its own device number, and a bind mount keeps the
/// device: comparing devices finds the same instance wherever PID 1 sees it (a container that
/// bind-mounts the host's /sys/fs/bpf is fine) and tells a private one from it, with no need to
/// compare namespace ids, which differ in every container.
pub(super) fn warn_if_private(pin_dir: &Path) {
    let read = |p: &str| std::fs::read_to_string(p);
    let (mine, init) = match (read("/proc/self/mountinfo"), read("/proc/1/mountinfo")) {
        (Ok(mine), Ok(init)) => (mine, init),
        (Err(error), _) | (_, Err(error)) => {
            debug!(%error, "cannot compare bpffs mounts with PID 1's");
            return;
        }
    };
    if let Some(device) = private_bpffs(&mine, &init, pin_dir) {
        warn!(
            pin_dir = %pin_dir.display(),
            %device,
            "the pin directory is on a bpffs only this process's mount namespace sees (`ip netns \
             exec` makes a private one and remounts /sys): the pins vanish when the agent exits \
             and a restart cannot take over the running dataplane; start the agent with \
             `nsenter --net=/run/netns/NAME` (network namespace only) instead"
        );
    }
}

/// The device (`major:minor`) of the bpffs holding `pin_dir` in `mine` (this process's
/// mountinfo) when `init` (PID 1's) mounts that bpffs nowhere.
fn private_bpffs(mine: &str, init: &str, pin_dir: &Path) -> Option<String> {
    let own = mount_of(mine, pin_dir).filter(|m| m.fs_type == "bpf")?;
    let seen_by_init = init
        .lines()
        .filter_map(parse_line)
        .any(|m| m.fs_type == "bpf" && m.device == own.device);
    (!seen_by_init).then_some(own.device)
}

/// One line of mountinfo.
struct Mount {
    device: String,
    mount_point: PathBuf,
    fs_type: String,
}

/// Parses `id parent major:minor root mountpoint options [optional...] - fstype source ...`.
fn parse_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let device = fields.nth(2)?.to_owned();
    let mount_point = fields.nth(1)?;
    let fs_type = line.split(" - ").nth(1)?.split(' ').next()?.to_owned();
    Some(Mount {
        device,
        mount_point: PathBuf::from(mount_point.replace("\\040", " ")),
        fs_type,
    })
}

/// The mount with the longest mount point that is a prefix of `path` (the last one wins on a
/// tie: it is mounted over the others), from the text of a mountinfo file.
fn mount_of(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for m in mountinfo.lines().filter_map(parse_line) {
        let longer = best
            .as_ref()
            .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if path.starts_with(&m.mount_point) && longer {
            best = Some(m);
        }
    }
    best
}

/// The filesystem type of the mount holding `path`, from the text of `/proc/self/mountinfo`.
fn fs_type_of(mountinfo: &str, path: &Path) -> Option<String> {
    mount_of(mountinfo, path).map(|m| m.fs_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /sys rw,nosuid shared:2 - sysfs sysfs rw
40 23 0:35 / /sys/fs/bpf rw,relatime shared:20 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_the_innermost_mount() {
        assert_eq!(
            fs_type_of(MOUNTINFO, Path::new("/sys/fs/bpf/cladnet")).as_deref(),
            Some("bpf")
        );
        assert_eq!(
            fs_type_of(MOUNTINFO, Path::new("/sys/class/net")).as_deref(),
            Some("sysfs")
        );
        assert_eq!(
            fs_type_of(MOUNTINFO, Path::new("/tmp/x")).as_deref(),
            Some("ext4")
        );
        // A sibling whose name merely starts with the mount point is not inside it.
        assert_eq!(
            fs_type_of(MOUNTINFO, Path::new("/sys/fs/bpfx")).as_deref(),
            Some("sysfs")
        );
    }

    #[test]
    fn tells_a_private_bpffs_from_the_hosts() {
        let pins = Path::new("/sys/fs/bpf/cladnet");
        // The same namespace, or a container bind-mounting the host's bpffs: same device.
        assert_eq!(private_bpffs(MOUNTINFO, MOUNTINFO, pins), None);
        let container = "\
900 800 0:90 / / rw - overlay overlay rw
901 900 0:91 / /sys rw - sysfs sysfs rw
902 901 0:35 / /sys/fs/bpf rw - bpf bpf rw
";
        assert_eq!(private_bpffs(container, MOUNTINFO, pins), None);
        // `ip netns exec`: a fresh sysfs on /sys and a fresh bpffs (0:77) under it, which
        // PID 1 does not have.
        let netns_exec = "\
22 1 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw
500 22 0:70 / /sys rw,relatime - sysfs NAME rw
501 500 0:77 / /sys/fs/bpf rw,relatime - bpf bpf rw
";
        assert_eq!(
            private_bpffs(netns_exec, MOUNTINFO, pins).as_deref(),
            Some("0:77")
        );
        // Pins not on bpffs at all are ensure_mounted's business, not this warning's.
        assert_eq!(
            private_bpffs(netns_exec, MOUNTINFO, Path::new("/tmp/x")),
            None
        );
    }
}
