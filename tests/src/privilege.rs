//! Deciding whether namespace tests can run here.

use std::{process::Command, sync::OnceLock};

/// Why namespace tests cannot run on this machine, or `None` when they can. Checked once.
pub fn netns_unavailable() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!("needs root (effective uid is {euid})"));
    }
    for tool in ["ip", "nsenter", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!(
                "`{tool}` is not installed (run `cargo xtask setup`)"
            ));
        }
    }
    let probe = format!("{}probe", crate::cleanup::process_prefix());
    let out = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "cannot create network namespaces: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip netns add`: {e}")),
    }
}

/// Reports a skipped test. Under CI (`CI=true`) a skip is a failure.
///
/// # Panics
/// When `CI` is `true` or `1`.
pub fn skip_or_fail(test: &str, reason: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: cannot run under CI: {reason}");
    eprintln!("SKIPPED {test}: {reason}");
}
