//! A small run of the control-plane scenario against the real controller binary of this build
//! (20 agents, 3 changes), on the embedded store and on etcd: every agent converges and every
//! watcher sees every change.
//!
//! Needs `cladnet-controller` built in the same profile (`cargo build -p cladnet-controller`,
//! which `cargo xtask test` does) or `CLADNET_CONTROLLER_BIN`, and `etcd` on the PATH (or
//! `CLADNET_ETCD_BIN`) for the etcd case. Skipped when they are missing, except under
//! `CI=true`, where that is a failure.

use std::{path::PathBuf, time::Duration};

use cladnet_bench::{ControlOptions, StoreKind, run_control_bench};

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips (or fails under CI) with `why`.
fn unavailable(test: &str, why: &str) {
    assert!(!under_ci(), "{test}: {why} (required under CI=true)");
    eprintln!("SKIPPED {test}: {why}");
}

/// The controller binary next to this test's profile directory.
fn controller_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CLADNET_CONTROLLER_BIN") {
        return Some(PathBuf::from(bin));
    }
    // <target>/<profile>/deps/control_smoke-<hash>
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("cladnet-controller");
    bin.is_file().then_some(bin)
}

fn etcd_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CLADNET_ETCD_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

async fn small_run(test: &str, store: StoreKind) {
    let Some(controller_bin) = controller_bin() else {
        return unavailable(
            test,
            "no cladnet-controller binary (run `cargo build -p cladnet-controller`)",
        );
    };
    let etcd_bin = match (store, etcd_bin()) {
        (StoreKind::Etcd, None) => return unavailable(test, "no etcd binary on the PATH"),
        (_, bin) => bin.unwrap_or_else(|| PathBuf::from("etcd")),
    };
    let opts = ControlOptions {
        agents: 20,
        changes: 3,
        change_interval: Duration::from_millis(20),
        store,
        agents_per_channel: 8,
        join_concurrency: 4,
        controller_bin,
        etcd_bin,
        timeout: Duration::from_secs(60),
        ..ControlOptions::default()
    };
    let report = run_control_bench(&opts).await.expect("the run succeeds");
    assert_eq!(report.store, store);
    assert_eq!(report.events.snapshots, 20, "one snapshot per agent");
    assert_eq!(report.fanout_expected, 60);
    assert_eq!(report.fanout_received, 60, "every watcher saw every change");
    let fanout = report.fanout.expect("fan-out latencies");
    assert_eq!(fanout.count, 60);
    assert!(fanout.min_ms > 0.0 && fanout.max_ms >= fanout.p99_ms);
    assert!(report.convergence_ms >= report.all_joined_ms);
    assert!(report.controller.peak_rss_mib > 1.0);
    assert_eq!(report.join_latency.map(|j| j.count), Some(20));
    match store {
        StoreKind::Etcd => {
            let counters = report.etcd_counters.expect("etcd counters");
            assert!(counters.watch_events_sent > 0.0 && counters.txn_calls >= 20.0);
        }
        StoreKind::Embedded => assert!(report.etcd.is_none()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_converges_on_embedded_store() {
    small_run(
        "small_fleet_converges_on_embedded_store",
        StoreKind::Embedded,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_converges_on_etcd() {
    small_run("small_fleet_converges_on_etcd", StoreKind::Etcd).await;
}
