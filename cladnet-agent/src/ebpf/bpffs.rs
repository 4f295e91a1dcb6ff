//! Making sure the pin directory lives on a bpf filesystem.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tracing::info;

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

/// The filesystem type of the longest mount point that is a prefix of `path`, from the text of
/// `/proc/self/mountinfo`.
fn fs_type_of(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(PathBuf, String)> = None;
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mountpoint options [optional...] - fstype source ...
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        let Some(fs_type) = line.split(" - ").nth(1).and_then(|s| s.split(' ').next()) else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
        let longer = best
            .as_ref()
            .is_none_or(|(b, _)| mount_point.as_os_str().len() >= b.as_os_str().len());
        if path.starts_with(&mount_point) && longer {
            best = Some((mount_point, fs_type.to_owned()));
        }
    }
    best.map(|(_, t)| t)
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
}
