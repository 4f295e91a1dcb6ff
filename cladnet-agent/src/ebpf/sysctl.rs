//! Reverse-path filtering on the underlay device.
//!
//! A decapsulated packet enters the stack on the underlay device with an overlay source
//! address, whose route points at the overlay device. Strict reverse-path filtering
//! (`rp_filter = 1`) drops it; loose (2) accepts it because the source is routable at all.
//! The kernel applies the larger of `conf/all` and `conf/<dev>`, so both must be at most 2.
//! These sysctls belong to the network namespace of the calling thread.

use std::path::PathBuf;

use tracing::info;

use super::EbpfError;

const STRICT: &str = "1";
const LOOSE: &str = "2";

fn rp_filter_path(scope: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{scope}/rp_filter"))
}

/// The current `rp_filter` values of `all` and `iface`.
pub fn rp_filter(iface: &str) -> Result<[u8; 2], EbpfError> {
    let read = |scope: &str| -> Result<u8, EbpfError> {
        let path = rp_filter_path(scope);
        let text = std::fs::read_to_string(&path).map_err(|source| EbpfError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| EbpfError::InvalidInput {
            field: "rp_filter value",
            value: text.trim().to_owned(),
            reason: format!("{} does not hold a number", path.display()),
        })
    };
    Ok([read("all")?, read(iface)?])
}

/// Sets `rp_filter` of `all` and of `iface` from strict (1) to loose (2), leaving 0 and 2
/// alone; returns the sysctl names it changed.
pub(super) fn loosen_rp_filter(iface: &str) -> Result<Vec<String>, EbpfError> {
    let mut changed = Vec::new();
    for scope in ["all", iface] {
        let path = rp_filter_path(scope);
        let current = std::fs::read_to_string(&path).map_err(|source| EbpfError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        if current.trim() != STRICT {
            continue;
        }
        std::fs::write(&path, LOOSE).map_err(|source| EbpfError::Io {
            op: "write 2 (loose) to",
            path: path.clone(),
            source,
        })?;
        let name = format!("net.ipv4.conf.{scope}.rp_filter");
        info!(
            sysctl = %name,
            "reverse-path filter set from strict to loose: decapsulated packets arrive on the \
             underlay device with overlay source addresses"
        );
        changed.push(name);
    }
    Ok(changed)
}
