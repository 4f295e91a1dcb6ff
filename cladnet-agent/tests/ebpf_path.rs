//! The kernel PLAIN path end to end: two network namespaces joined by a veth pair (the
//! underlay), a TUN `cladnet0` in each (the overlay), the programs attached through
//! `KernelDataplane` and each side's peer installed as PLAIN. Ping and an iperf3 TCP stream
//! cross the overlay; the per-CPU counters must match what was sent; removing a peer stops
//! traffic; a dropped handle (agent restart) keeps forwarding; detach leaves nothing behind.
//!
//! Needs root, `ip`, `ping` and `iperf3`; without them the tests print why and pass, unless
//! `CI=true`, where they fail. The tests take a lock so their throughput numbers do not
//! disturb each other on small machines; run with `--nocapture` to see them.

mod support;

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use cladnet_agent::{
    ebpf::{AttachConfig, EbpfError, KernelDataplane, RxHook, sysctl},
    sys::tun::{Tun, TunOptions},
};
use cladnet_common::maps::{DEFAULT_MAX_PEERS, KernelDrop, PeerCounters};
use cladnet_core::{
    node::{PeerConfig, table::overlay_mtu},
    policy::LinkMode,
};
use support::{NamedNetns, NetnsThread, PinDir, may_run, privilege_problem};

/// One test at a time: the throughput numbers are only meaningful alone on the machine.
static SERIAL: Mutex<()> = Mutex::new(());

const PORT: u16 = 8055;
const SLOT: u32 = 1;

/// One side of the pair: its namespace, overlay/underlay addresses and node index.
#[derive(Clone, Copy)]
struct Addr {
    node: u32,
    underlay: Ipv4Addr,
    overlay: Ipv4Addr,
}

const A: Addr = Addr {
    node: 0x0a5a_0001,
    underlay: Ipv4Addr::new(192, 168, 77, 1),
    overlay: Ipv4Addr::new(10, 90, 0, 1),
};
const B: Addr = Addr {
    node: 0x0a5a_0002,
    underlay: Ipv4Addr::new(192, 168, 77, 2),
    overlay: Ipv4Addr::new(10, 90, 0, 2),
};

/// What lives on a side's namespace thread: the TUN (kept open: it is the overlay device)
/// and the dataplane handle.
struct Side {
    runtime: tokio::runtime::Runtime,
    tun: Option<Tun>,
    dp: Option<KernelDataplane>,
}

fn peer_config(of: Addr) -> PeerConfig {
    PeerConfig {
        node_id: format!("node-{:x}", of.node),
        node_index: of.node,
        overlay_ip: of.overlay,
        public_key: [0; 32],
        endpoint: Some(SocketAddrV4::new(of.underlay, PORT)),
        mode: LinkMode::Plain,
        slot: SLOT,
        prefixes: Vec::new(),
    }
}

fn tool_problem() -> Option<String> {
    for tool in ["ip", "ping", "iperf3"] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "-h" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Two namespaces, the veth underlay, a TUN and an attached dataplane on each side. Fields
/// drop in order: threads (TUN, handles), pins, namespaces.
struct Pair {
    a: NetnsThread<Side>,
    b: NetnsThread<Side>,
    pins_a: PinDir,
    pins_b: PinDir,
    ns_a: NamedNetns,
    ns_b: NamedNetns,
    report_a: String,
    hook: RxHook,
    hooks: &'static [RxHook],
}

impl Pair {
    /// Builds the pair; `None` when the agent has no eBPF object (skip).
    fn new(tag: &str, underlay_mtu: u32, hooks: &'static [RxHook]) -> Option<Self> {
        let pid = std::process::id();
        let ns_a = NamedNetns::create(&format!("cnebpf-{pid}-{tag}-a"));
        let ns_b = NamedNetns::create(&format!("cnebpf-{pid}-{tag}-b"));
        ns_a.exec(&[
            "ip",
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            ns_b.name(),
        ]);
        let mtu = underlay_mtu.to_string();
        for (ns, addr) in [(&ns_a, A), (&ns_b, B)] {
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", addr.underlay),
                "dev",
                "ul0",
            ]);
            ns.exec(&["ip", "link", "set", "ul0", "mtu", &mtu, "up"]);
        }
        // Trap 2: strict reverse-path filtering drops decapsulated packets unless the attach
        // loosens it; host-wide (`all`) strictness must stay as it is.
        for ns in [&ns_a, &ns_b] {
            ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"]);
            ns.exec(&["sysctl", "-qw", "net.ipv4.conf.ul0.rp_filter=1"]);
        }

        let pins_a = PinDir::new(&format!("{tag}-a"));
        let pins_b = PinDir::new(&format!("{tag}-b"));
        let overlay_mtu = overlay_mtu(underlay_mtu);
        let a = side(&ns_a, A, overlay_mtu);
        let b = side(&ns_b, B, overlay_mtu);
        let mut reports = Vec::new();
        for (thread, me, other, pins) in [(&a, A, B, &pins_a), (&b, B, A, &pins_b)] {
            let pin_dir = pins.0.clone();
            let attached = thread.run(move |s| {
                let cfg = attach_config(&pin_dir, hooks, me, "cladnet0");
                let (mut dp, report) = match KernelDataplane::attach(&cfg) {
                    Ok(r) => r,
                    Err(EbpfError::NoObject) => return None,
                    Err(e) => panic!("attach: {}", chain(&e)),
                };
                dp.set_local(me.node, me.underlay).unwrap();
                dp.upsert_peer(&peer_config(other)).unwrap();
                s.dp = Some(dp);
                Some(report)
            });
            let report = attached?;
            reports.push(report);
        }
        for (r, thread) in reports.iter().zip([&a, &b]) {
            assert_eq!(
                r.rp_filter_changed,
                ["net.ipv4.conf.ul0.rp_filter"],
                "{r:?}"
            );
            assert_eq!(
                thread.run(|_| sysctl::rp_filter("ul0").unwrap()),
                [1, 2],
                "only the underlay's own rp_filter is loosened; `all` stays strict"
            );
        }
        // Every hook works on veth: the first one tried is the one attached.
        let want = hooks[0];
        assert!(reports.iter().all(|r| r.mode == want), "{reports:?}");
        Some(Self {
            a,
            b,
            pins_a,
            pins_b,
            ns_a,
            ns_b,
            report_a: format!("{} ({})", reports[0].mode.name(), reports[0].reason),
            hook: want,
            hooks,
        })
    }

    fn counters(thread: &NetnsThread<Side>) -> PeerCounters {
        thread.run(|s| s.dp.as_ref().unwrap().slot_counters(SLOT).unwrap())
    }

    fn drops(thread: &NetnsThread<Side>) -> Vec<(KernelDrop, u64)> {
        thread.run(|s| {
            s.dp.as_ref()
                .unwrap()
                .drops()
                .unwrap()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect()
        })
    }
}

fn attach_config(
    pin_dir: &std::path::Path,
    hooks: &'static [RxHook],
    me: Addr,
    overlay: &str,
) -> AttachConfig {
    AttachConfig {
        pin_dir: pin_dir.to_owned(),
        hooks,
        tunnel_port: PORT,
        local_underlay_ip: Some(me.underlay),
        ..AttachConfig::new("ul0", Some(overlay.to_owned()))
    }
}

fn side(ns: &NamedNetns, me: Addr, mtu: u32) -> NetnsThread<Side> {
    NetnsThread::spawn(Some(ns.name()), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tun = Tun::create("cladnet0", TunOptions::default()).expect("TUN");
        runtime
            .block_on(cladnet_agent::netconf::configure_interface(
                "cladnet0", me.overlay, 24, mtu,
            ))
            .expect("configure cladnet0");
        Side {
            runtime,
            tun: Some(tun),
            dp: None,
        }
    })
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    s
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Pings `to` from `ns`; returns how many of `n` replies came back.
fn ping(ns: &NamedNetns, to: Ipv4Addr, n: u32, size: usize, dont_fragment: bool) -> u32 {
    let mut c = ns.command("ping");
    c.args(["-n", "-q", "-c", &n.to_string(), "-i", "0.2", "-W", "1"])
        .args(["-s", &size.to_string()]);
    if dont_fragment {
        c.args(["-M", "do"]);
    }
    let out = c.arg(to.to_string()).output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(", ")
        .find_map(|p| {
            p.strip_suffix(" received")
                .or(p.strip_suffix(" packets received"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Kills a child process on drop.
struct ChildGuard(Child);

impl ChildGuard {
    /// Waits for the child and returns its standard output.
    fn wait_output(mut self) -> String {
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            use std::io::Read as _;
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = self.0.wait();
        out
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Result of one iperf3 run.
#[derive(Debug)]
struct Iperf {
    gbits: f64,
    retransmits: u64,
    bytes: u64,
}

/// A TCP stream of `secs` seconds from `from` to `server_ip` (an iperf3 server in `server`).
fn iperf(from: &NamedNetns, server: &NamedNetns, server_ip: Ipv4Addr, secs: u32) -> Iperf {
    let _server = ChildGuard(
        server
            .command("iperf3")
            .args(["-s", "-1", "-p", "5201", "-B", &server_ip.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.exec(&["ss", "-ltn"]).contains(":5201") {
        assert!(Instant::now() < deadline, "iperf3 server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = from
        .command("iperf3")
        .args(["-c", &server_ip.to_string(), "-p", "5201", "-J", "-t"])
        .arg(secs.to_string())
        .output()
        .expect("iperf3 client");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let sent = &json["end"]["sum_sent"];
    assert!(
        sent.is_object(),
        "iperf3 failed: {}",
        json["error"].as_str().unwrap_or("no summary")
    );
    Iperf {
        gbits: sent["bits_per_second"].as_f64().unwrap() / 1e9,
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
        bytes: sent["bytes"].as_u64().unwrap(),
    }
}

fn diff(after: PeerCounters, before: PeerCounters) -> PeerCounters {
    PeerCounters {
        tx_packets: after.tx_packets - before.tx_packets,
        tx_bytes: after.tx_bytes - before.tx_bytes,
        rx_packets: after.rx_packets - before.rx_packets,
        rx_bytes: after.rx_bytes - before.rx_bytes,
        tx_drops: after.tx_drops - before.tx_drops,
        rx_drops: after.rx_drops - before.rx_drops,
    }
}

fn skip_reason() -> Option<String> {
    privilege_problem().or_else(tool_problem)
}

/// Ping both ways, with exact per-peer counters on both sides.
fn ping_both_ways(p: &Pair) {
    let (a0, b0) = (Pair::counters(&p.a), Pair::counters(&p.b));
    assert_eq!(
        ping(&p.ns_a, B.overlay, 3, 56, false),
        3,
        "A -> B over the overlay"
    );
    let (a1, b1) = (Pair::counters(&p.a), Pair::counters(&p.b));
    // Three echo requests (84-byte IPv4 packets) A -> B, three replies back.
    let want = |tx, rx| PeerCounters {
        tx_packets: tx,
        tx_bytes: tx * 84,
        rx_packets: rx,
        rx_bytes: rx * 84,
        ..PeerCounters::default()
    };
    assert_eq!(diff(a1, a0), want(3, 3), "A's counters for B");
    assert_eq!(diff(b1, b0), want(3, 3), "B's counters for A");
    assert_eq!(
        ping(&p.ns_b, A.overlay, 3, 56, false),
        3,
        "B -> A over the overlay"
    );
}

/// An iperf3 stream A -> B; checks throughput, retransmits and that both sides' counters saw
/// the stream. Returns the result for the log.
fn stream(p: &Pair, secs: u32) -> Iperf {
    let (a0, b0) = (Pair::counters(&p.a), Pair::counters(&p.b));
    let r = iperf(&p.ns_a, &p.ns_b, B.overlay, secs);
    let (a1, b1) = (Pair::counters(&p.a), Pair::counters(&p.b));
    let (a, b) = (diff(a1, a0), diff(b1, b0));
    // A sent the stream (payload + 40-52 bytes of headers per segment) and B received what A
    // sent; B's acks went the other way.
    assert!(
        a.tx_bytes >= r.bytes && a.tx_bytes < r.bytes + r.bytes / 20 + 1_000_000,
        "A tx {a:?} vs iperf3 {r:?}"
    );
    if p.hook == RxHook::XdpGeneric {
        // Generic XDP cannot see GSO: a super-packet that crossed the veth unsegmented counts
        // once, with one set of inner headers (A counted each segment's).
        assert!(
            b.rx_bytes <= a.tx_bytes && b.rx_bytes >= a.tx_bytes / 100 * 95,
            "B received {b:?} of A's {a:?}"
        );
    } else {
        let lost = a.tx_packets.abs_diff(b.rx_packets);
        assert!(
            lost <= a.tx_packets / 100 + 10,
            "B received {b:?} of A's {a:?}"
        );
    }
    assert!(b.tx_packets > 0 && a.rx_packets.abs_diff(b.tx_packets) <= b.tx_packets / 100 + 10);
    assert_eq!(Pair::drops(&p.a), [], "A dropped nothing");
    assert_eq!(Pair::drops(&p.b), [], "B dropped nothing");
    assert!(r.gbits > 0.2, "throughput {r:?}");
    // Few retransmits: under 1% of the segments sent.
    assert!(
        r.retransmits <= a.tx_packets / 100 + 5,
        "{} retransmits for {} segments",
        r.retransmits,
        a.tx_packets
    );
    r
}

/// The underlay alone, for comparison (same veth, no overlay).
fn baseline(p: &Pair, secs: u32) -> Iperf {
    iperf(&p.ns_a, &p.ns_b, B.underlay, secs)
}

fn path_test(test: &str, tag: &str, underlay_mtu: u32, hooks: &'static [RxHook], full: bool) {
    if !may_run(test, skip_reason()) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(p) = Pair::new(tag, underlay_mtu, hooks) else {
        may_run(
            test,
            Some("the agent was built without the eBPF object".into()),
        );
        return;
    };
    ping_both_ways(&p);
    let secs = if full { 4 } else { 2 };
    let r = stream(&p, secs);
    let raw = baseline(&p, secs);
    say(&format!(
        "{test}: underlay MTU {underlay_mtu}, overlay MTU {}, receive hook {}: \
         overlay {:.2} Gbit/s ({} retransmits), underlay alone {:.2} Gbit/s ({} retransmits), \
         ratio {:.0}%",
        overlay_mtu(underlay_mtu),
        p.report_a,
        r.gbits,
        r.retransmits,
        raw.gbits,
        raw.retransmits,
        100.0 * r.gbits / raw.gbits
    ));
    if full {
        lifecycle(p, underlay_mtu);
    }
}

/// Oversize, peer removal, handle drop (restart), re-open and detach.
fn lifecycle(p: Pair, underlay_mtu: u32) {
    // An overlay MTU too big for the underlay: the kernel drops and counts what does not fit
    // (the overlay route MTU is what normally prevents it).
    let big = underlay_mtu as usize - 36 + 4;
    p.a.run(move |s| {
        s.runtime
            .block_on(cladnet_agent::netconf::configure_interface(
                "cladnet0",
                A.overlay,
                24,
                u32::try_from(big).unwrap(),
            ))
            .unwrap();
    });
    let before = Pair::counters(&p.a);
    assert_eq!(ping(&p.ns_a, B.overlay, 2, big - 28, true), 0);
    let d = diff(Pair::counters(&p.a), before);
    // ping retries a send the device refused (TC_ACT_SHOT reaches the sender as ENOBUFS), so
    // there are at least two drops, all of them oversize and charged to B.
    assert!(d.tx_drops >= 2 && d.tx_packets == 0, "{d:?}");
    assert_eq!(Pair::drops(&p.a), [(KernelDrop::Oversize, d.tx_drops)]);
    assert_eq!(
        ping(&p.ns_a, B.overlay, 2, big - 28 - 8, true),
        2,
        "8 bytes less fits"
    );
    let mtu = overlay_mtu(underlay_mtu);
    p.a.run(move |s| {
        s.runtime
            .block_on(cladnet_agent::netconf::configure_interface(
                "cladnet0", A.overlay, 24, mtu,
            ))
            .unwrap();
    });

    // Removing B on A stops A's traffic to B (it goes to the TUN reader instead).
    let removed =
        p.a.run(|s| s.dp.as_mut().unwrap().remove_peer(B.overlay).unwrap());
    assert!(removed);
    assert_eq!(
        ping(&p.ns_a, B.overlay, 2, 56, false),
        0,
        "no path after removal"
    );
    p.a.run(|s| s.dp.as_mut().unwrap().upsert_peer(&peer_config(B)).unwrap());
    assert_eq!(
        ping(&p.ns_a, B.overlay, 2, 56, false),
        2,
        "back after re-insert"
    );

    // An agent restart: the handle goes, the pinned programs keep forwarding, and a new
    // handle finds the maps and the installed peer again.
    let pin_dir = p.pins_a.0.clone();
    let counted = Pair::counters(&p.a);
    p.a.run(|s| drop(s.dp.take()));
    assert_eq!(
        ping(&p.ns_a, B.overlay, 2, 56, false),
        2,
        "forwarding survives the handle"
    );
    let reopened = pin_dir.clone();
    let peers = p.a.run(move |s| {
        let dp = KernelDataplane::open_pinned(&reopened).unwrap();
        let peers = dp.peer_counters().unwrap();
        s.dp = Some(dp);
        peers
    });
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        (peers[0].node_index, peers[0].overlay_ip),
        (B.node, B.overlay)
    );
    assert!(peers[0].in_kernel);
    assert_eq!(peers[0].tx_packets, counted.tx_packets + 2);
    // A prefix the previous process installed is not carried over (it may have been withdrawn
    // since, and nothing would withdraw it again): the take-over drops it, the /32s stay.
    let pod = Ipv4Addr::new(10, 244, 7, 1);
    let with_pods = PeerConfig {
        prefixes: vec!["10.244.7.0/24".parse().unwrap()],
        ..peer_config(B)
    };
    let installed = p.a.run(move |s| {
        let dp = s.dp.as_mut().unwrap();
        dp.upsert_peer(&with_pods).unwrap();
        dp.peer_entry(pod).unwrap()
    });
    assert_eq!(installed.map(|e| e.node_index), Some(B.node));
    // A new agent attaches over the pins: the maps stay, the programs are swapped inside the
    // pinned links, and a ping flood running meanwhile loses nothing.
    let flood = ChildGuard(
        p.ns_a
            .command("ping")
            .args(["-n", "-q", "-i", "0.01", "-c", "200", "-W", "1"])
            .arg(B.overlay.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ping flood"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (hooks, takeover_dir) = (p.hooks, pin_dir.clone());
    let report = p.a.run(move |s| {
        // Set to another map size: the pinned maps keep theirs (and their peers) until the
        // dataplane is detached.
        let cfg = AttachConfig {
            max_peers: 5000,
            ..attach_config(&takeover_dir, hooks, A, "cladnet0")
        };
        let (dp, report) =
            KernelDataplane::attach(&cfg).unwrap_or_else(|e| panic!("take-over: {}", chain(&e)));
        assert_eq!(dp.capacity(), DEFAULT_MAX_PEERS, "the pinned maps' size");
        s.dp = Some(dp);
        report
    });
    assert!(
        report.reason.contains("took over") && report.reason.contains("replaced in place"),
        "{report:?}"
    );
    let out = flood.wait_output();
    assert!(
        out.contains("200 received"),
        "flood during the take-over: {out}"
    );
    let peers = p.a.run(|s| s.dp.as_ref().unwrap().peer_counters().unwrap());
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert!(peers[0].tx_packets >= counted.tx_packets + 202, "{peers:?}");
    let (pod_entry, peer_entry) = p.a.run(move |s| {
        let dp = s.dp.as_ref().unwrap();
        (
            dp.peer_entry(pod).unwrap(),
            dp.peer_entry(B.overlay).unwrap(),
        )
    });
    assert_eq!(pod_entry, None, "the old process's prefix is gone");
    assert!(peer_entry.is_some(), "the peer stays");

    // A restarted agent brings a new TUN: the transmit program moves to it (a new link,
    // pinned in place of the old one).
    let takeover_dir = pin_dir.clone();
    p.a.run(move |s| {
        drop(s.tun.take());
        let tun = Tun::create("cladnet1", TunOptions::default()).expect("TUN");
        s.runtime
            .block_on(cladnet_agent::netconf::delete_link("cladnet0"))
            .unwrap();
        s.runtime
            .block_on(cladnet_agent::netconf::configure_interface(
                "cladnet1", A.overlay, 24, mtu,
            ))
            .unwrap();
        s.tun = Some(tun);
        drop(s.dp.take());
        let (dp, _) = KernelDataplane::attach(&attach_config(&takeover_dir, hooks, A, "cladnet1"))
            .unwrap_or_else(|e| panic!("take-over with a new TUN: {}", chain(&e)));
        s.dp = Some(dp);
    });
    assert_eq!(
        ping(&p.ns_a, B.overlay, 2, 56, false),
        2,
        "the new TUN forwards"
    );
    p.a.run(|s| s.dp.as_mut().unwrap().attach_overlay("cladnet1").unwrap());
    assert_eq!(
        ping(&p.ns_a, B.overlay, 2, 56, false),
        2,
        "attach_overlay to the same TUN keeps forwarding"
    );

    // Detach: no pins, no XDP, no tcx program, and no more kernel forwarding.
    let pins_b = p.pins_b.0.clone();
    for (thread, ns, dir) in [(&p.a, &p.ns_a, pin_dir), (&p.b, &p.ns_b, pins_b)] {
        thread.run(|s| s.dp.take().unwrap().detach().unwrap());
        assert!(!dir.exists(), "{} still exists", dir.display());
        // A (taken over twice since its attach) and B both restore what they loosened.
        assert_eq!(
            thread.run(|_| sysctl::rp_filter("ul0").unwrap()),
            [1, 1],
            "detach restores the underlay's rp_filter"
        );
        let link = support::until_gone("xdp", || ns.exec(&["ip", "link", "show", "ul0"]));
        assert!(!link.contains("xdp"), "XDP still attached: {link}");
        let net = support::until_gone("cladnet", || ns.exec(&["bpftool", "net", "show"]));
        assert!(!net.contains("cladnet"), "programs still attached: {net}");
    }
    assert_eq!(
        ping(&p.ns_a, B.overlay, 1, 56, false),
        0,
        "nothing forwards any more"
    );
}

#[test]
fn plain_path_xdp_driver_mtu_1500() {
    path_test(
        "plain_path_xdp_driver_mtu_1500",
        "d15",
        1500,
        RxHook::order(None, false),
        true,
    );
}

#[test]
fn plain_path_xdp_driver_mtu_1400() {
    path_test(
        "plain_path_xdp_driver_mtu_1400",
        "d14",
        1400,
        RxHook::order(Some(RxHook::XdpDriver), false),
        true,
    );
}

#[test]
fn plain_path_xdp_generic() {
    path_test(
        "plain_path_xdp_generic",
        "gen",
        1500,
        RxHook::order(Some(RxHook::XdpGeneric), false),
        false,
    );
}

#[test]
fn plain_path_tc_ingress() {
    path_test(
        "plain_path_tc_ingress",
        "tci",
        1500,
        RxHook::order(Some(RxHook::TcIngress), false),
        false,
    );
}

/// A failed attach leaves nothing behind, and `auto` falls back from XDP to TC ingress when
/// XDP is taken.
#[test]
fn failed_attach_rolls_back_and_auto_falls_back() {
    let test = "failed_attach_rolls_back_and_auto_falls_back";
    if !may_run(test, privilege_problem()) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (first, second) = (PinDir::new("rb-1"), PinDir::new("rb-2"));
    let (p1, p2) = (first.0.clone(), second.0.clone());
    let thread = NetnsThread::spawn(None, || ());
    thread.run(move |()| {
        support::ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
        support::ip(&["link", "set", "ul0", "up"]);
        let cfg = |dir: &std::path::Path, hooks, overlay: Option<&str>| AttachConfig {
            pin_dir: dir.to_owned(),
            hooks,
            ..AttachConfig::new("ul0", overlay.map(str::to_owned))
        };

        // A missing overlay device is found before anything is created.
        let err = KernelDataplane::attach(&cfg(&p1, RxHook::order(None, false), Some("nope0")))
            .unwrap_err();
        match err {
            EbpfError::NoObject => {
                may_run(
                    test,
                    Some("the agent was built without the eBPF object".into()),
                );
                return;
            }
            EbpfError::NoInterface { ref iface } => assert_eq!(iface, "nope0"),
            other => panic!("unexpected {}", chain(&other)),
        }
        assert!(!p1.exists());

        let (dp1, r1) = KernelDataplane::attach(&cfg(
            &p1,
            RxHook::order(Some(RxHook::XdpDriver), false),
            None,
        ))
        .unwrap();
        assert_eq!(r1.mode, RxHook::XdpDriver);

        // XDP is taken: driver mode alone fails, after maps were already pinned; all undone.
        let err = KernelDataplane::attach(&cfg(
            &p2,
            RxHook::order(Some(RxHook::XdpDriver), false),
            None,
        ))
        .unwrap_err();
        assert!(matches!(err, EbpfError::NoRxHook { .. }), "{}", chain(&err));
        assert!(err.to_string().contains("driver mode failed"), "{err}");
        assert!(!p2.exists(), "a failed attach left {}", p2.display());

        // Auto: driver and generic fail, TC ingress works, and the report says why.
        let (dp2, r2) =
            KernelDataplane::attach(&cfg(&p2, RxHook::order(None, false), None)).unwrap();
        assert_eq!(r2.mode, RxHook::TcIngress, "{r2:?}");
        assert!(
            r2.reason.contains("driver mode failed") && r2.reason.contains("generic mode failed"),
            "{r2:?}"
        );
        dp2.detach().unwrap();
        dp1.detach().unwrap();
        assert!(!p1.exists() && !p2.exists());
        let link = support::until_gone("xdp", || support::ip(&["link", "show", "ul0"]));
        assert!(
            !link.contains("xdp"),
            "XDP still attached 2 s after detach: {link}"
        );
    });
}
