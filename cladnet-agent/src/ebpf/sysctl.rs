//! Reverse-path filtering on the underlay device.
//!
//! A decapsulated packet enters the stack on the underlay device with an overlay source
//! address, whose route points at the overlay device. Strict reverse-path filtering
//! (`rp_filter = 1`) drops it; loose (2) accepts it because the source is routable at all.
//! The kernel applies the larger of `conf/all` and `conf/<dev>` to the device a packet arrives
//! on, so raising the underlay device's own value to 2 is enough whatever `all` says: `all`
//! (every other device of the host) is never touched. The overlay device needs nothing: what
//! arrives there has an overlay source, routed back through it. These sysctls belong to the
//! network namespace of the calling thread.

use std::path::PathBuf;

use tracing::{info, warn};

use super::EbpfError;

const STRICT: u8 = 1;
const LOOSE: u8 = 2;

fn rp_filter_path(scope: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{scope}/rp_filter"))
}

fn read(scope: &str) -> Result<u8, EbpfError> {
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
}

fn write(scope: &str, value: u8) -> Result<(), EbpfError> {
    let path = rp_filter_path(scope);
    std::fs::write(&path, value.to_string()).map_err(|source| EbpfError::Io {
        op: "write",
        path,
        source,
    })
}

/// The current `rp_filter` values of `all` and `iface`.
pub fn rp_filter(iface: &str) -> Result<[u8; 2], EbpfError> {
    Ok([read("all")?, read(iface)?])
}

/// Makes reverse-path filtering on `iface` loose (2) when it is strict (the larger of `all`
/// and the device's own value is 1), by raising the device's own value only. Returns the
/// device's previous value when it changed it, for [`restore_rp_filter`].
pub(super) fn loosen_rp_filter(iface: &str) -> Result<Option<u8>, EbpfError> {
    let [all, own] = rp_filter(iface)?;
    if all.max(own) != STRICT {
        return Ok(None);
    }
    write(iface, LOOSE)?;
    info!(
        sysctl = %format!("net.ipv4.conf.{iface}.rp_filter"),
        was = own,
        all,
        "reverse-path filter of the underlay device set to loose (2) until detach: decapsulated \
         packets arrive on it with overlay source addresses"
    );
    Ok(Some(own))
}

/// Puts back the device's own `rp_filter` value saved by [`loosen_rp_filter`], unless someone
/// changed it from loose since (their setting wins). A device that is gone needs nothing.
pub(super) fn restore_rp_filter(iface: &str, value: u8) {
    match read(iface) {
        Ok(LOOSE) => match write(iface, value) {
            Ok(()) => info!(
                sysctl = %format!("net.ipv4.conf.{iface}.rp_filter"),
                value,
                "reverse-path filter of the underlay device restored"
            ),
            Err(error) => warn!(%error, "restoring the underlay's reverse-path filter failed"),
        },
        Ok(now) => info!(
            iface,
            now, "rp_filter changed by someone else since attach; left alone"
        ),
        Err(error) => warn!(%error, "reading the underlay's reverse-path filter failed"),
    }
}
