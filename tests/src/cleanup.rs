//! Naming of everything the harness creates, and removal of what a crashed run left behind.
//!
//! Every namespace and bpffs pin directory the harness creates is named
//! `cn-<pid>-<seq>-<role>`, where `<pid>` is the test process. A name whose process no longer
//! exists is stale and is removed by [`sweep_stale`].

use std::{
    path::Path,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::netns::kill_all_and_delete;

const NETNS_DIR: &str = "/run/netns";
const BPFFS_DIR: &str = "/sys/fs/bpf";

/// `cn-<pid>-`: the prefix of every name this test process creates.
pub(crate) fn process_prefix() -> String {
    format!("cn-{}-", std::process::id())
}

/// A fresh prefix `cn-<pid>-<seq>-` for one topology.
pub(crate) fn next_prefix() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}-",
        process_prefix(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes namespaces (killing their processes) and bpffs pin directories left by test
/// processes that no longer exist. Runs once per process; safe to call again.
pub fn sweep_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for name in entries(NETNS_DIR).into_iter().filter(|n| is_stale(n)) {
            eprintln!("harness: removing stale namespace {name}");
            kill_all_and_delete(&name);
        }
        for name in entries(BPFFS_DIR).into_iter().filter(|n| is_stale(n)) {
            eprintln!("harness: removing stale bpffs pins {BPFFS_DIR}/{name}");
            let _ = std::fs::remove_dir_all(Path::new(BPFFS_DIR).join(name));
        }
    });
}

/// Namespaces and bpffs entries whose names start with `prefix`: what a torn-down topology
/// must not leave behind.
pub fn leftovers(prefix: &str) -> Vec<String> {
    [NETNS_DIR, BPFFS_DIR]
        .iter()
        .flat_map(|dir| {
            entries(dir)
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .map(move |n| format!("{dir}/{n}"))
        })
        .collect()
}

fn entries(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A harness name whose creating process is gone.
fn is_stale(name: &str) -> bool {
    let Some(pid) = name.strip_prefix("cn-").and_then(|r| r.split('-').next()) else {
        return false;
    };
    pid.parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_harness_names_of_dead_processes_are_stale() {
        let me = std::process::id();
        assert!(!is_stale(&format!("cn-{me}-0-inet")));
        assert!(is_stale("cn-999999999-3-gw-aws"));
        assert!(!is_stale("cladnet"));
        assert!(!is_stale("cn-notapid-1"));
        assert!(!is_stale("my-netns"));
    }

    #[test]
    fn prefixes_are_unique_within_a_process() {
        assert_ne!(next_prefix(), next_prefix());
        assert!(next_prefix().starts_with(&process_prefix()));
    }
}
