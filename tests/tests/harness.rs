//! Tests of the netns harness itself: isolation, MTU, cleanup on panic, stale sweep.

use std::{net::Ipv4Addr, panic, process::Command, time::Duration};

use cladnet_tests::{Nat, Topology, leftovers, require_netns};

fn two_clouds(mtu: u32) -> Topology {
    Topology::builder()
        .mtu(mtu)
        .cloud("east", "172.16.0.0/24", Nat::OneToOne)
        .host("east", "e1")
        .host("east", "e2")
        .cloud("west", "172.16.0.0/24", Nat::Masquerade)
        .host("west", "w1")
        .build()
        .expect("build topology")
}

#[test]
fn parallel_topologies_do_not_collide() {
    require_netns!();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                let topo = two_clouds(1500);
                let (e1, e2, w1) = (topo.host("e1"), topo.host("e2"), topo.host("w1"));
                assert!(
                    e1.pings(e2.private_ip(), 1),
                    "same-subnet hosts reach each other"
                );
                assert!(
                    w1.pings(e1.public_ip(), 1),
                    "masqueraded host reaches a public address"
                );
                topo.prefix().to_owned()
            })
        })
        .collect();
    let prefixes: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("topology thread"))
        .collect();
    for p in &prefixes {
        assert_eq!(leftovers(p), Vec::<String>::new());
    }
    assert_ne!(prefixes[0], prefixes[1]);
}

#[test]
fn link_mtu_is_enforced_end_to_end() {
    require_netns!();
    let topo = two_clouds(1400);
    let (w1, e1) = (topo.host("w1"), topo.host("e1"));
    let df_ping = |size: u32| {
        let size = size.to_string();
        let dst = e1.public_ip().to_string();
        w1.exec([
            "ping", "-n", "-q", "-c", "1", "-W", "1", "-M", "do", "-s", &size, &dst,
        ])
        .is_ok()
    };
    // 1400 - 20 (IPv4) - 8 (ICMP) = 1372 bytes of payload fit; one more does not.
    assert!(df_ping(1372), "a 1400-byte packet crosses the path");
    assert!(
        !df_ping(1373),
        "a 1401-byte packet with DF set must not cross a 1400 MTU path"
    );
}

#[test]
fn teardown_happens_on_panic_and_kills_processes() {
    require_netns!();
    let result = panic::catch_unwind(|| {
        let topo = two_clouds(1500);
        // A daemon detached from the harness (its parent exits at once): only the namespace
        // teardown can stop it.
        let out = topo
            .host("e1")
            .exec(["bash", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"])
            .expect("start sleep");
        let pid: u32 = out.trim().parse().expect("pid");
        panic::panic_any((topo.prefix().to_owned(), pid));
    });
    let payload = result.expect_err("the closure panics");
    let (prefix, pid) = payload
        .downcast_ref::<(String, u32)>()
        .expect("payload")
        .clone();
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} survived teardown"
    );
}

#[test]
fn stale_leftovers_of_dead_processes_are_swept() {
    require_netns!();
    // A pid that does not exist stands for a crashed test process.
    let dead = (100_000..4_000_000)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let name = format!("cn-{dead}-0-stale");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success()
    );
    let pins = format!("/sys/fs/bpf/cn-{dead}-0-stale");
    std::fs::create_dir_all(&pins).expect("bpffs is mounted (cargo xtask setup)");
    // The sweep runs once per process, at the first build; this test process has not built
    // a topology yet, as nextest runs each test in its own process.
    let topo = two_clouds(1500);
    assert_eq!(leftovers(&format!("cn-{dead}-")), Vec::<String>::new());
    assert!(topo.host("e1").pings(Ipv4Addr::new(127, 0, 0, 1), 1));
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn bad_declarations_are_rejected_with_reasons() {
    let err = Topology::builder()
        .cloud("x", "10.0.0.0/33", Nat::OneToOne)
        .host("nope", "h1")
        .cloud("this-name-is-too-long", "10.0.0.0/24", Nat::Masquerade)
        .build()
        .expect_err("invalid topology");
    let msg = err.to_string();
    assert!(msg.contains("10.0.0.0/33"), "{msg}");
    assert!(msg.contains("no cloud named \"nope\""), "{msg}");
    assert!(msg.contains("this-name-is-too-long"), "{msg}");
}
