//! A small run of the control-plane scenario against the real controller binary of this build
//! (20 agents, 3 changes), on the embedded store and on etcd: every agent converges, every
//! watcher sees every change, and every agent's final table equals the store's peers.
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
    small_run_with(test, store, false, false).await;
}

async fn small_run_with(test: &str, store: StoreKind, compact_tables: bool, light_decode: bool) {
    let Some(controller_bin) = controller_bin() else {
        return unavailable(
            test,
            "no cladnet-controller binary (run `cargo build -p cladnet-controller`)",
        );
    };
    let etcd_bin = match (store, etcd_bin()) {
        (StoreKind::Etcd | StoreKind::EtcdDirect, None) => {
            return unavailable(test, "no etcd binary on the PATH");
        }
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
        compact_tables,
        light_decode,
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
    if store != StoreKind::EtcdDirect {
        assert!(report.controller.peak_rss_mib > 1.0);
    }
    assert_eq!(report.join_latency.map(|j| j.count), Some(20));
    // The end-of-run check read the store and found every agent's table equal to it.
    assert_eq!(
        report.table_check.store_peers, 20,
        "peers read from the store"
    );
    assert_eq!(
        report.table_check.agents_equal,
        20,
        "{}",
        report.table_check.describe()
    );
    assert!(
        report.delivered_convergence >= 20 * 20,
        "each agent got all 20 peers"
    );
    match store {
        StoreKind::Etcd => {
            let counters = report.etcd_counters.expect("etcd counters");
            assert!(counters.watch_events_sent > 0.0 && counters.txn_calls >= 20.0);
        }
        StoreKind::EtcdDirect => {
            // One watch stream per agent, and every join a transaction of its own.
            let counters = report.etcd_counters.expect("etcd counters");
            assert!(counters.watch_streams >= 20.0, "{counters:?}");
            assert!(counters.txn_calls >= 20.0, "{counters:?}");
            assert_eq!(report.controller, Default::default(), "no controller ran");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_converges_on_etcd_direct() {
    small_run(
        "small_fleet_converges_on_etcd_direct",
        StoreKind::EtcdDirect,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_converges_with_compact_tables() {
    small_run_with(
        "small_fleet_converges_with_compact_tables",
        StoreKind::Embedded,
        true,
        false,
    )
    .await;
}

/// The agents read their Watch messages in place (`--light-decode`): same convergence, same
/// fan-out, every table equal to the store, with full and with compact tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_converges_with_light_decode() {
    let test = "small_fleet_converges_with_light_decode";
    small_run_with(test, StoreKind::Embedded, false, true).await;
    small_run_with(test, StoreKind::Embedded, true, true).await;
}

/// The failover storm, small: 30 agents on three controllers over a three-member etcd;
/// controller 0 is killed and 5 changes are made at once: its 10 agents resume on another
/// controller, no event is missed or out of order, and every table equals the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_storm_misses_nothing() {
    failover_storm("failover_storm_misses_nothing", false).await;
}

/// The same storm with agents that read their Watch messages in place (`--light-decode`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_storm_misses_nothing_with_light_decode() {
    failover_storm("failover_storm_misses_nothing_with_light_decode", true).await;
}

async fn failover_storm(test: &str, light_decode: bool) {
    let Some(controller_bin) = controller_bin() else {
        return unavailable(
            test,
            "no cladnet-controller binary (run `cargo build -p cladnet-controller`)",
        );
    };
    let Some(etcd_bin) = etcd_bin() else {
        return unavailable(test, "no etcd binary on the PATH");
    };
    let opts = ControlOptions {
        agents: 30,
        changes: 5,
        agents_per_channel: 8,
        join_concurrency: 4,
        controller_bin,
        etcd_bin,
        timeout: Duration::from_secs(60),
        light_decode,
        ..ControlOptions::default()
    };
    let r = cladnet_bench::failover::run_failover_bench(&opts)
        .await
        .expect("the storm succeeds");
    assert_eq!(
        (r.affected, r.resumed),
        (10, 10),
        "every agent of the killed controller resumed"
    );
    assert_eq!(r.fanout_expected, 150);
    assert_eq!(r.fanout_received, 150, "no change missed");
    assert_eq!(r.out_of_order, 0);
    assert_eq!(
        r.table_check.agents_equal,
        30,
        "{}",
        r.table_check.describe()
    );
    assert!(
        r.failover_ms > 0.0 && r.failover_ms < 60_000.0,
        "{}",
        r.failover_ms
    );
}
