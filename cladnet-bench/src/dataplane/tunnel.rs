//! Setting up (and, on drop, tearing down) the overlay of one configuration between the two
//! hosts: none (`raw`), kernel VXLAN, a standard userspace WireGuard (wireguard-go or
//! boringtun, configured with `wg`), or CLADNet (a controller on host A and an agent on each
//! host, on the userspace or the eBPF engine).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;

use super::{
    Binaries, CladnetSetup, Config,
    testbed::{
        BPF_PIN_ROOT, COMMAND_TIMEOUT, Netns, RELAY_ADDR, Testbed, UNDERLAY_A, UNDERLAY_B,
        UNDERLAY_IFACE, UNDERLAY_MTU, WG_SOCKET_DIR, process_prefix,
    },
};
use crate::procs::ChildGuard;

/// The WireGuard rows' UDP port.
const WG_PORT: u16 = 51820;
/// The WireGuard rows' interface MTU (what wg-quick picks for a 1500-byte underlay).
const WG_MTU: u32 = 1420;
/// The WireGuard rows' overlay addresses (A, B) and prefix length.
const WG_OVERLAY: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2)];
const WG_PREFIX: u8 = 24;
/// The VXLAN row's device, VNI, UDP port and MTU (1500 − 50 bytes of outer headers).
const VXLAN_IFACE: &str = "vx0";
const VXLAN_ID: &str = "42";
const VXLAN_PORT: &str = "4789";
const VXLAN_MTU: u32 = 1450;
/// The VXLAN row's overlay addresses (A, B) and prefix length.
const VXLAN_OVERLAY: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 203, 0, 1), Ipv4Addr::new(10, 203, 0, 2)];
const VXLAN_PREFIX: u8 = 24;
/// The controller's port (gRPC, REST and the UDP reflector), on host A's underlay address.
const CONTROLLER_PORT: u16 = 8053;
/// The CLADNet rows' network.
const NETWORK: &str = "bench";
const NETWORK_CIDR: &str = "10.202.0.0/24";
/// The agents' overlay interface (the default; each lives in its own namespace).
const AGENT_IFACE: &str = "cladnet0";
/// The agents' tunnel port (their default), also given to `dataplane attach`.
const AGENT_PORT: &str = "8055";
/// Limit for a tunnel to come up (processes ready, peers up, first ping answered).
const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent gets to release and detach after SIGTERM before it is killed.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The dataplane one agent reports in `cladnet --json peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentDataplane {
    /// `a` or `b`.
    pub host: String,
    /// `dataplane`: `ebpf` or `userspace`.
    pub engine: String,
    /// The receive hook of the eBPF engine (`xdp-driver`, `xdp-generic`, `tc`: the first of
    /// the agent's reported capabilities), when it runs.
    pub hook: Option<String>,
    /// `dataplaneReason`, verbatim.
    pub reason: String,
}

/// One counter of `cladnet-agent dataplane stats --json` (the eBPF engine's `STATS` and
/// `DROPS` maps, summed over CPUs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KernelCounter {
    /// `rx_tunnel`, `rx_other`, `rx_to_socket`, `tx_to_userspace` or `drop_<reason>`.
    pub slot: String,
    /// Packets.
    pub packets: u64,
    /// Bytes (0 for drops).
    pub bytes: u64,
}

/// The eBPF engine's counters of one host at the end of a run (ping, TCP and UDP tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelCounters {
    /// `a` or `b`.
    pub host: String,
    /// Every counter.
    pub counters: Vec<KernelCounter>,
}

impl KernelCounters {
    /// Packets of `slot` (0 when absent).
    pub fn packets(&self, slot: &str) -> u64 {
        self.counters
            .iter()
            .find(|c| c.slot == slot)
            .map_or(0, |c| c.packets)
    }

    /// Packets of every `drop_*` counter.
    pub fn drops(&self) -> u64 {
        self.counters
            .iter()
            .filter(|c| c.slot.starts_with("drop_"))
            .map(|c| c.packets)
            .sum()
    }
}

/// A configured overlay between A and B. Dropping it stops its processes and removes what
/// they left.
#[derive(Debug)]
pub(crate) struct Tunnel {
    /// Host B's address on this overlay (the target of every measurement).
    pub(crate) dst: Ipv4Addr,
    /// The MTUs of host A's and host B's overlay interfaces.
    pub(crate) mtu: [u32; 2],
    /// What the CLADNet agents report (A, B), for the CLADNet rows.
    pub(crate) dataplane: Vec<AgentDataplane>,
    /// Agents and WireGuard daemons first, the controller last.
    procs: Vec<ChildGuard>,
    /// How many of `procs` (from the start) are agents, stopped with SIGTERM first so that
    /// they release and detach their eBPF programs.
    agents: usize,
    /// UAPI sockets to remove after the daemons are gone.
    sockets: Vec<PathBuf>,
    /// bpffs pin directories (host A, B) of the eBPF rows, removed after the agents are gone:
    /// removing the pinned links detaches the programs even after a SIGKILL.
    pin_dirs: Vec<PathBuf>,
    /// Devices `(namespace, name)` to delete.
    links: Vec<(String, String)>,
    /// Host B's agent's public key, for the CLADNet rows.
    b_public_key: Option<String>,
    /// The flooding namespace of `cladnet-sealed-flood` (deleted, with the flooder, after
    /// everything else).
    flooder: Option<Netns>,
    /// The flooder's output (`SENT COOKIE_REPLIES` totals, one line a second).
    flood_log: Option<PathBuf>,
    /// The pod rows' pods (A's as `a`, B's as `b`): the measurements run between them.
    pub(crate) pods: Option<Testbed>,
}

/// What the flooder of `cladnet-sealed-flood` did during one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FloodRate {
    /// The rate it was asked for, initiations per second.
    pub target_per_sec: u64,
    /// Initiations it sent per second (averaged over its whole run).
    pub sent_per_sec: u64,
    /// Cookie replies it received per second.
    pub cookie_replies_per_sec: u64,
}

impl Tunnel {
    fn new(dst: Ipv4Addr) -> Self {
        Self {
            dst,
            mtu: [0; 2],
            dataplane: Vec::new(),
            procs: Vec::new(),
            agents: 0,
            sockets: Vec::new(),
            pin_dirs: Vec::new(),
            links: Vec::new(),
            b_public_key: None,
            flooder: None,
            flood_log: None,
            pods: None,
        }
    }

    /// What the flooder did so far (`None` for the rows without one, or before its second
    /// report line).
    pub(crate) fn flood_rate(&self) -> Option<FloodRate> {
        let log = std::fs::read_to_string(self.flood_log.as_ref()?).ok()?;
        let totals: Vec<(u64, u64)> = log
            .lines()
            .filter_map(|l| {
                let mut n = l.split_whitespace().map(str::parse::<u64>);
                Some((n.next()?.ok()?, n.next()?.ok()?))
            })
            .collect();
        // One line a second: the first is after one second.
        let (first, last) = (totals.first()?, totals.last()?);
        let secs = u64::try_from(totals.len())
            .ok()?
            .checked_sub(1)
            .filter(|&s| s > 0)?;
        Some(FloodRate {
            target_per_sec: FLOOD_RATE,
            sent_per_sec: (last.0 - first.0) / secs,
            cookie_replies_per_sec: (last.1 - first.1) / secs,
        })
    }

    /// The processes that carry the traffic, whose CPU time counts: the agents of a CLADNet
    /// row, the WireGuard daemons (every process of a WireGuard row), none for raw and VXLAN.
    pub(crate) fn carriers(&self) -> Vec<u32> {
        let carriers = if self.agents > 0 {
            &self.procs[..self.agents]
        } else {
            &self.procs[..]
        };
        carriers
            .iter()
            .map(ChildGuard::pid)
            .filter(|&p| p != 0)
            .collect()
    }

    /// The eBPF engine's counters on both hosts (`cladnet-agent dataplane stats`), for the
    /// eBPF rows; empty for the others.
    pub(crate) fn kernel_counters(
        &self,
        tb: &Testbed,
        bins: &Binaries,
    ) -> anyhow::Result<Vec<KernelCounters>> {
        let agent = bins.agent.to_string_lossy().into_owned();
        let mut all = Vec::new();
        for ((ns, host), dir) in [(&tb.a, "a"), (&tb.b, "b")].into_iter().zip(&self.pin_dirs) {
            let out = ns.run(&[
                agent.as_str(),
                "dataplane",
                "stats",
                "--json",
                "--pin-dir",
                &dir.to_string_lossy(),
            ])?;
            let counters = serde_json::from_str(&out).with_context(|| {
                format!("parsing `cladnet-agent dataplane stats --json`: {out}")
            })?;
            all.push(KernelCounters {
                host: host.into(),
                counters,
            });
        }
        Ok(all)
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for p in &mut self.procs[..self.agents] {
            terminate(p, AGENT_STOP_TIMEOUT);
        }
        for p in &mut self.procs {
            p.stop();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        for d in &self.pin_dirs {
            remove_pin_dir(d);
        }
        for (ns, dev) in &self.links {
            let _ = Command::new("ip")
                .args(["-n", ns, "link", "del", dev])
                .output();
        }
    }
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit (it is reaped by
/// [`ChildGuard::stop`] afterwards).
fn terminate(child: &mut ChildGuard, within: Duration) {
    let pid = child.pid();
    if pid == 0 || child.ensure_running().is_err() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && child.ensure_running().is_ok() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes a bpffs pin directory and everything pinned in it (unpinning a link whose
/// process is gone detaches its program).
pub(crate) fn remove_pin_dir(dir: &Path) {
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        eprintln!("  could not remove {}: {e}", dir.display());
    }
}

/// Sets up `config` between the hosts; logs and state go to `dir`.
pub(crate) fn setup(
    config: Config,
    tb: &Testbed,
    bins: &Binaries,
    dir: &Path,
) -> anyhow::Result<Tunnel> {
    match config {
        Config::Raw => {
            let mut t = Tunnel::new(UNDERLAY_B);
            t.mtu = [UNDERLAY_MTU; 2];
            Ok(t)
        }
        Config::Vxlan => vxlan(tb),
        Config::WireguardGo | Config::Boringtun => wireguard(config, tb, bins, dir),
        Config::CladnetSealed
        | Config::CladnetPlain
        | Config::CladnetEbpfPlain
        | Config::CladnetEbpfPlainTc
        | Config::CladnetEbpfPlainMidhop
        | Config::CladnetEbpfPlainMidhopManual
        | Config::CladnetSealedMidhop
        | Config::CladnetSealedMidhopManual
        | Config::CladnetRelayed
        | Config::CladnetEbpfPods
        | Config::CladnetEbpfPodsVxlan
        | Config::CladnetEbpfPlainXdp
        | Config::CladnetEbpfPodsXdp => {
            let setup = config
                .cladnet()
                .with_context(|| format!("no CLADNet setup for {config}"))?;
            cladnet(config, setup, tb, bins, dir)
        }
        Config::CladnetSealedFlood => sealed_under_flood(tb, bins, dir),
    }
}

/// Host B's address on the flooder's link.
const FLOOD_TARGET: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
/// The flooder's address.
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The agents' tunnel port.
const TUNNEL_PORT: u16 = 8055;
/// Initiations per second the flooder sends: a thousand times what one source may get
/// through under load (20 a second), and more than B's handshake thread could answer with a
/// Diffie-Hellman each on this machine. A paced, fixed rate: unpaced, the flooder's own send
/// path (half of it the sender's side of the kernel, which an attacker on another host would
/// pay on its own CPU) took most of a core of the two the agents share, and its rate depended
/// on how busy the machine was. See docs/benchmarks.md, Handshake flood.
pub(crate) const FLOOD_RATE: u64 = 20_000;

/// `cladnet-sealed`, plus a third namespace `cnb-<pid>-x` linked to host B by a veth pair of
/// its own (`10.201.0.1` → `10.201.0.2`), from which `tests/scripts/attack.py flood` sends
/// handshake initiations with a correct mac1 for B's key to B's tunnel port, [`FLOOD_RATE`]
/// a second, until the tunnel is torn down. The link exists before the agents start, so that B's
/// agent does not see an address change during the measurement.
fn sealed_under_flood(tb: &Testbed, bins: &Binaries, dir: &Path) -> anyhow::Result<Tunnel> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/attack.py");
    ensure!(
        script.exists(),
        "the flooder {} is missing (run from a CLADNet checkout)",
        script.display()
    );
    let x = Netns::create(&format!("{}x", process_prefix()))?;
    super::testbed::run(
        Command::new("ip").args([
            "link",
            "add",
            "name",
            "flood",
            "netns",
            x.name(),
            "type",
            "veth",
            "peer",
            "name",
            "flood",
            "netns",
            tb.b.name(),
        ]),
        COMMAND_TIMEOUT,
    )?;
    for (ns, addr) in [(&x, FLOOD_SOURCE), (&tb.b, FLOOD_TARGET)] {
        ns.run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "flood"])?;
        ns.run(&["ip", "link", "set", "flood", "up"])?;
    }
    let setup = Config::CladnetSealedFlood
        .cladnet()
        .context("no CLADNet setup for the flood row")?;
    let mut tunnel = cladnet(Config::CladnetSealedFlood, setup, tb, bins, dir)?;
    let key = tunnel
        .b_public_key
        .clone()
        .context("host B's public key is not in `cladnet peers`")?;
    let mut cmd = x.command("python3");
    cmd.arg(&script).args([
        "flood",
        &FLOOD_TARGET.to_string(),
        &TUNNEL_PORT.to_string(),
        &key,
        "3600",
        &FLOOD_RATE.to_string(),
    ]);
    let log = dir.join("flooder.log");
    tunnel
        .procs
        .push(ChildGuard::spawn("handshake flooder", cmd, log.clone())?);
    tunnel.flooder = Some(x);
    tunnel.flood_log = Some(log);
    // Let the flood reach its pace (and B its under-load state) before anything is measured.
    std::thread::sleep(Duration::from_secs(2));
    Ok(tunnel)
}

/// Kernel VXLAN on the underlay veth: `vx0` (VNI 42, UDP 4789, the other host as the only
/// remote), overlay `10.203.0.{1,2}/24`, MTU 1450.
fn vxlan(tb: &Testbed) -> anyhow::Result<Tunnel> {
    let mut tunnel = Tunnel::new(VXLAN_OVERLAY[1]);
    let underlay = [UNDERLAY_A, UNDERLAY_B];
    for (i, ns) in [&tb.a, &tb.b].into_iter().enumerate() {
        ns.run(&[
            "ip",
            "link",
            "add",
            VXLAN_IFACE,
            "type",
            "vxlan",
            "id",
            VXLAN_ID,
            "local",
            &underlay[i].to_string(),
            "remote",
            &underlay[1 - i].to_string(),
            "dstport",
            VXLAN_PORT,
            "dev",
            UNDERLAY_IFACE,
        ])?;
        tunnel
            .links
            .push((ns.name().to_owned(), VXLAN_IFACE.to_owned()));
        ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/{VXLAN_PREFIX}", VXLAN_OVERLAY[i]),
            "dev",
            VXLAN_IFACE,
        ])?;
        ns.run(&[
            "ip",
            "link",
            "set",
            VXLAN_IFACE,
            "mtu",
            &VXLAN_MTU.to_string(),
            "up",
        ])?;
    }
    tunnel.mtu = [tb.a.mtu(VXLAN_IFACE)?, tb.b.mtu(VXLAN_IFACE)?];
    wait_for_ping(tb, &mut tunnel)?;
    Ok(tunnel)
}

/// A userspace WireGuard daemon on each host, configured with `wg set` like `wg-quick` would.
fn wireguard(config: Config, tb: &Testbed, bins: &Binaries, dir: &Path) -> anyhow::Result<Tunnel> {
    let daemon = bins
        .daemon(config)
        .with_context(|| format!("no binary for {config}"))?;
    let wg = bins.wg.to_string_lossy().into_owned();
    let hosts = [(&tb.a, "a"), (&tb.b, "b")];
    let underlay = [UNDERLAY_A, UNDERLAY_B];
    let mut tunnel = Tunnel::new(WG_OVERLAY[1]);
    let mut public = Vec::new();
    for (ns, side) in hosts {
        let iface = wg_iface(side);
        let key_file = dir.join(format!("wg-{side}.key"));
        let key = ns.run(&[wg.as_str(), "genkey"])?;
        std::fs::write(&key_file, &key)
            .with_context(|| format!("writing {}", key_file.display()))?;
        public.push(pubkey(ns, &wg, &key)?);
        let socket = Path::new(WG_SOCKET_DIR).join(format!("{iface}.sock"));
        let mut cmd = ns.command(daemon);
        match config {
            Config::Boringtun => {
                cmd.args([iface.as_str(), "--foreground", "--disable-drop-privileges"])
            }
            _ => cmd.args(["-f", iface.as_str()]),
        };
        let log = dir.join(format!("{config}-{side}.log"));
        tunnel
            .procs
            .push(ChildGuard::spawn(&config.to_string(), cmd, log)?);
        tunnel.sockets.push(socket.clone());
        let guard = tunnel.procs.last_mut().expect("just pushed");
        wait_until(
            guard,
            &format!("the UAPI socket {}", socket.display()),
            || socket.exists(),
        )?;
    }
    for (i, (ns, side)) in hosts.into_iter().enumerate() {
        let iface = wg_iface(side);
        let (peer_underlay, peer_overlay) = (underlay[1 - i], WG_OVERLAY[1 - i]);
        let key_file = dir.join(format!("wg-{side}.key"));
        ns.run(&[
            wg.as_str(),
            "set",
            &iface,
            "listen-port",
            &WG_PORT.to_string(),
            "private-key",
            &key_file.to_string_lossy(),
            "peer",
            &public[1 - i],
            "endpoint",
            &format!("{peer_underlay}:{WG_PORT}"),
            "allowed-ips",
            &format!("{peer_overlay}/32"),
        ])?;
        ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/{WG_PREFIX}", WG_OVERLAY[i]),
            "dev",
            &iface,
        ])?;
        ns.run(&[
            "ip",
            "link",
            "set",
            &iface,
            "mtu",
            &WG_MTU.to_string(),
            "up",
        ])?;
    }
    tunnel.mtu = [tb.a.mtu(&wg_iface("a"))?, tb.b.mtu(&wg_iface("b"))?];
    wait_for_ping(tb, &mut tunnel)?;
    Ok(tunnel)
}

/// The WireGuard interface of host `side`: `cnb-<pid>-<side>`, unique on the machine because
/// the UAPI socket `<interface>.sock` lives in the shared `/var/run/wireguard`.
fn wg_iface(side: &str) -> String {
    format!("{}{side}", process_prefix())
}

/// `wg pubkey` of `private` (on stdin).
fn pubkey(ns: &Netns, wg: &str, private: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = ns
        .command(wg)
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{wg} pubkey`"))?;
    child
        .stdin
        .take()
        .context("stdin of wg pubkey")?
        .write_all(private.as_bytes())
        .context("writing to `wg pubkey`")?;
    let out = child.wait_with_output().context("running `wg pubkey`")?;
    if !out.status.success() {
        bail!(
            "`{wg} pubkey` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A `cladnet-controller` on host A (embedded store in `dir`), network `bench` with the
/// setup's encryption, and `cladnet-agent run --dataplane <engine>` on both hosts; ready when
/// both peers are `up` in `cladnet --json peers` with a reported dataplane, every agent runs
/// the requested engine (and hook), and A pings B over the overlay.
///
/// On the relay test bed ([`Testbed::create_relayed`]) the controller runs on the relay host
/// instead (the one address A and B both reach), with a third agent there (`--relay true`,
/// counted with the others' CPU), and the tunnel is ready once host A's agent also reports
/// its path to B as `relay`.
fn cladnet(
    config: Config,
    setup: CladnetSetup,
    tb: &Testbed,
    bins: &Binaries,
    dir: &Path,
) -> anyhow::Result<Tunnel> {
    let admin_token = crate::control::random_token()?;
    // The controller's host and address: host A, or the relay host on the relay test bed.
    let (ctl_ns, ctl_addr) = match &tb.relay {
        Some(r) => (r, RELAY_ADDR),
        None => (&tb.a, UNDERLAY_A),
    };
    let url = format!("http://{ctl_addr}:{CONTROLLER_PORT}");
    let mut tunnel = Tunnel::new(UNDERLAY_B);
    let ebpf = setup.dataplane == "ebpf";
    if ebpf {
        for side in ["a", "b"] {
            let pin_dir = Path::new(BPF_PIN_ROOT).join(format!("{}{side}", process_prefix()));
            remove_pin_dir(&pin_dir);
            tunnel.pin_dirs.push(pin_dir);
        }
    }
    let mut ctl = ctl_ns.command(&bins.controller);
    ctl.args(["--listen", &format!("{ctl_addr}:{CONTROLLER_PORT}")])
        .arg("--store")
        .arg(format!(
            "embedded:{}",
            dir.join("controller.redb").display()
        ))
        .arg("--admin-token-file")
        .arg(dir.join("admin.token"))
        .env("CLADNET_ADMIN_TOKEN", &admin_token)
        .env("RUST_LOG", "info");
    for var in [
        "CLADNET_LISTEN",
        "CLADNET_STORE",
        "CLADNET_TLS_CERT",
        "CLADNET_TLS_KEY",
    ] {
        ctl.env_remove(var);
    }
    let mut controller = ChildGuard::spawn("cladnet-controller", ctl, dir.join("controller.log"))?;
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let mut cmd = ctl_ns.command(&bins.cli);
        cmd.args(["--controller", &url])
            .args(args)
            .env("CLADNET_TOKEN", &admin_token)
            .env_remove("CLADNET_TOKEN_FILE")
            .env_remove("CLADNET_CA_CERT");
        super::testbed::run(&mut cmd, COMMAND_TIMEOUT)
    };
    wait_until(&mut controller, "the controller's health check", || {
        cli(&["health"]).is_ok()
    })?;
    cli(&[
        "network",
        "create",
        NETWORK,
        "--id",
        NETWORK,
        "--cidr",
        NETWORK_CIDR,
        "--encryption",
        setup.encryption,
    ])?;
    let token: serde_json::Value =
        serde_json::from_str(&cli(&["--json", "token", "create", NETWORK])?)
            .context("parsing `cladnet --json token create`")?;
    let token = token["token"]
        .as_str()
        .context("no token in `cladnet --json token create`")?
        .to_owned();
    let hosts = [(&tb.a, "a"), (&tb.b, "b")];
    if let Some(hook) = setup.forced_hook {
        for ((ns, _), pin_dir) in hosts.into_iter().zip(&tunnel.pin_dirs) {
            pre_attach(ns, bins, pin_dir, hook)?;
        }
    }
    // The relay agent first, so that it is there when A and B give up on a direct path.
    let agents = tb
        .relay
        .iter()
        .map(|r| (r, "r"))
        .chain(hosts)
        .enumerate()
        .map(|(i, h)| (i.checked_sub(usize::from(tb.relay.is_some())), h));
    for (i, (ns, side)) in agents {
        let mut cmd = ns.command(&bins.agent);
        cmd.args(["run", "--controller", &url, "--network", NETWORK])
            .args(["--metrics-listen", "off", "--host-name", side])
            .args(["--dataplane", setup.dataplane])
            .arg("--data-dir")
            .arg(dir.join(side))
            .env("CLADNET_JOIN_TOKEN", &token)
            .env("RUST_LOG", "info");
        let Some(i) = i else {
            // The relay host: its route to the controller is its own loopback, whose MTU is
            // not the underlay's.
            cmd.args([
                "--relay",
                "true",
                "--underlay-mtu",
                &UNDERLAY_MTU.to_string(),
            ]);
            tunnel.procs.push(ChildGuard::spawn(
                "cladnet-agent (relay)",
                cmd,
                dir.join("agent-r.log"),
            )?);
            tunnel.agents += 1;
            continue;
        };
        if let Some(pin_dir) = tunnel.pin_dirs.get(i) {
            cmd.arg("--bpf-pin-dir").arg(pin_dir);
        }
        if let Some(mtu) = setup.underlay_mtu {
            cmd.args(["--underlay-mtu", &mtu.to_string()]);
        }
        if config.pods() == Some(super::pods::PodRouting::Prefixes) {
            cmd.args(["--advertise-routes", &super::pods::pod_network(i)]);
        }
        let log = dir.join(format!("agent-{side}.log"));
        tunnel.procs.push(ChildGuard::spawn(
            &format!("cladnet-agent ({side})"),
            cmd,
            log,
        )?);
        tunnel.agents += 1;
    }
    // The controller goes last: agents stop first.
    tunnel.procs.push(controller);
    let mut overlay = [None, None];
    let mut reported: [Option<AgentDataplane>; 2] = [None, None];
    let mut b_key = None;
    let mut b_id = None;
    let mut up = || -> bool {
        let Ok(out) = cli(&["--json", "peers", NETWORK]) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
            return false;
        };
        let peers = || v["peers"].as_array().into_iter().flatten();
        let is_up = |p: &serde_json::Value, side: &str| {
            p["hostName"].as_str() == Some(side) && p["state"].as_str() == Some("up")
        };
        if tb.relay.is_some() && !peers().any(|p| is_up(p, "r")) {
            return false;
        }
        for (i, side) in ["a", "b"].into_iter().enumerate() {
            let peer = v["peers"].as_array().into_iter().flatten().find(|p| {
                p["hostName"].as_str() == Some(side) && p["state"].as_str() == Some("up")
            });
            overlay[i] = peer.and_then(|p| p["ip"].as_str()?.parse().ok());
            if side == "b" {
                b_key = peer.and_then(|p| Some(p["publicKey"].as_str()?.to_owned()));
                b_id = peer.and_then(|p| Some(p["hostId"].as_str()?.to_owned()));
            }
            reported[i] = peer.and_then(|p| agent_dataplane(side, p));
        }
        overlay.iter().all(Option::is_some) && reported.iter().all(Option::is_some)
    };
    wait_all(
        &mut tunnel.procs,
        "both agents `up` with their dataplane in `cladnet peers`",
        &mut up,
    )?;
    tunnel.dst = overlay[1].context("B's overlay address")?;
    tunnel.b_public_key = b_key;
    tunnel.dataplane = reported.into_iter().flatten().collect();
    for d in &tunnel.dataplane {
        ensure!(
            d.engine == setup.dataplane,
            "{config}: agent {} reports dataplane {:?} ({}), not {:?}",
            d.host,
            d.engine,
            d.reason,
            setup.dataplane
        );
        if ebpf {
            ensure!(
                d.hook.is_some(),
                "{config}: agent {} runs the eBPF engine but reports no receive hook in its \
                 capabilities ({})",
                d.host,
                d.reason
            );
        }
        if let Some(hook) = setup.forced_hook {
            ensure!(
                d.hook.as_deref() == Some(hook),
                "{config}: agent {} took over the pinned {hook} hook but reports {:?} ({})",
                d.host,
                d.hook,
                d.reason
            );
        }
    }
    tunnel.mtu = [tb.a.mtu(AGENT_IFACE)?, tb.b.mtu(AGENT_IFACE)?];
    if let Err(e) = wait_for_ping(tb, &mut tunnel) {
        let peers = cli(&["--json", "peers", NETWORK]).unwrap_or_else(|e| format!("{e:#}"));
        return Err(e.context(format!("`cladnet --json peers {NETWORK}`: {peers}")));
    }
    if tb.relay.is_some() {
        let b_id = b_id.context("B's host id in `cladnet --json peers`")?;
        let agent = bins.agent.to_string_lossy().into_owned();
        let a_dir = dir.join("a").to_string_lossy().into_owned();
        let mut last = String::new();
        let relayed = wait_all(
            &mut tunnel.procs,
            "host A's path to B through the relay (`cladnet-agent status`)",
            || {
                last =
                    tb.a.run(&[&agent, "status", "--json", "--data-dir", &a_dir])
                        .unwrap_or_else(|e| format!("{e:#}"));
                path_to(&last, &b_id).as_deref() == Some("relay")
            },
        );
        relayed.with_context(|| format!("host A's status: {last}"))?;
        // A relayed peer's route carries the relayed path MTU (less the relay header): that
        // is what TCP sees, so it goes in the table instead of the device's.
        let peers = [
            (&tb.a, overlay[1].context("B's overlay address")?),
            (&tb.b, overlay[0].context("A's overlay address")?),
        ];
        let mut found = [None, None];
        wait_all(
            &mut tunnel.procs,
            "the relayed per-peer routes (with their MTU) on both hosts",
            || {
                for (slot, (ns, peer)) in found.iter_mut().zip(peers) {
                    *slot = peer_route_mtu(ns, peer);
                }
                found.iter().all(Option::is_some)
            },
        )?;
        tunnel.mtu = found.map(|m| m.unwrap_or(0));
    }
    if let Some(routing) = config.pods() {
        let overlay = [
            overlay[0].context("A's overlay address")?,
            overlay[1].context("B's overlay address")?,
        ];
        let (pods, dst, mtu) =
            super::pods::attach(routing, tb, overlay, tunnel.mtu[0], &mut tunnel.links)?;
        tunnel.pods = Some(pods);
        tunnel.dst = dst;
        tunnel.mtu = [mtu; 2];
    }
    if config.midhop_baseline().is_some() {
        // The agents found the path MTU when each has its per-peer route with `mtu`; its MTU
        // (what TCP sees towards the peer) goes in the table instead of the device's.
        let peers = [
            (&tb.a, overlay[1].context("B's overlay address")?),
            (&tb.b, overlay[0].context("A's overlay address")?),
        ];
        let mut found = [None, None];
        wait_all(
            &mut tunnel.procs,
            "the per-peer path MTU routes on both hosts",
            || {
                for (slot, (ns, peer)) in found.iter_mut().zip(peers) {
                    *slot = peer_route_mtu(ns, peer);
                }
                found.iter().all(Option::is_some)
            },
        )?;
        tunnel.mtu = found.map(|m| m.unwrap_or(0));
    }
    Ok(tunnel)
}

/// The path (`direct`, `relay`, ...) to node `node_id` in `cladnet-agent status --json`.
fn path_to(status: &str, node_id: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(status).ok()?;
    let p = v["paths"]
        .as_array()?
        .iter()
        .find(|p| p["node_id"].as_str() == Some(node_id))?;
    Some(p["path"].as_str()?.to_owned())
}

/// The `mtu` of the agent's route to `peer` on the overlay device (`ip route show
/// <peer>/32 dev cladnet0`), once path MTU discovery has set it.
fn peer_route_mtu(ns: &Netns, peer: Ipv4Addr) -> Option<u32> {
    let out = ns
        .run(&[
            "ip",
            "route",
            "show",
            &format!("{peer}/32"),
            "dev",
            AGENT_IFACE,
        ])
        .ok()?;
    let mut words = out.split_whitespace();
    words.find(|w| *w == "mtu")?;
    let value = words
        .next()
        .filter(|w| *w != "lock")
        .or_else(|| words.next())?;
    value.parse().ok()
}

/// The dataplane of one peer of `cladnet --json peers`, once the agent reported it.
fn agent_dataplane(host: &str, peer: &serde_json::Value) -> Option<AgentDataplane> {
    let engine = peer["dataplane"].as_str().filter(|e| !e.is_empty())?;
    let hook = peer["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .find(|c| matches!(*c, "xdp-driver" | "xdp-generic" | "tc"))
        .map(str::to_owned);
    Some(AgentDataplane {
        host: host.to_owned(),
        engine: engine.to_owned(),
        hook: if engine == "ebpf" { hook } else { None },
        reason: peer["dataplaneReason"].as_str().unwrap_or("").to_owned(),
    })
}

/// Attaches the receive program on `hook` to the underlay into `pin_dir` with
/// `cladnet-agent dataplane attach`, for the agent to take over: the agent's `auto` keeps a
/// pinned hook it finds on the same device (swapping its own program into the link), which
/// forces the hook without an agent option for it.
fn pre_attach(ns: &Netns, bins: &Binaries, pin_dir: &Path, hook: &str) -> anyhow::Result<()> {
    let agent = bins.agent.to_string_lossy().into_owned();
    let out = ns.run(&[
        agent.as_str(),
        "dataplane",
        "attach",
        "--iface",
        UNDERLAY_IFACE,
        "--xdp-mode",
        hook,
        "--pin-dir",
        &pin_dir.to_string_lossy(),
        "--tunnel-port",
        AGENT_PORT,
        "--json",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `cladnet-agent dataplane attach --json`: {out}"))?;
    // `--xdp-mode xdp-driver` reports the mode as `driver` (the capability's name is
    // `xdp-driver`).
    ensure!(
        v["xdp_mode"].as_str() == Some(hook.strip_prefix("xdp-").unwrap_or(hook)),
        "`cladnet-agent dataplane attach --xdp-mode {hook}` in {} attached {out}",
        ns.name()
    );
    Ok(())
}

/// Waits until A pings B over the tunnel (the first ping may start a handshake).
fn wait_for_ping(tb: &Testbed, tunnel: &mut Tunnel) -> anyhow::Result<()> {
    let dst = tunnel.dst;
    wait_all(
        &mut tunnel.procs,
        &format!("a ping over the overlay to {dst}"),
        || tb.a.pings(dst),
    )
}

/// Polls `ok` until it holds, failing with `child`'s log when the child exits or after
/// [`UP_TIMEOUT`].
fn wait_until(child: &mut ChildGuard, what: &str, ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    wait_all(std::slice::from_mut(child), what, ok)
}

/// Polls `ok` every 200 ms until it holds; fails with the log of a child that exited, or with
/// the logs of all `children` after [`UP_TIMEOUT`].
fn wait_all(
    children: &mut [ChildGuard],
    what: &str,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        for c in children.iter_mut() {
            c.ensure_running()
                .with_context(|| format!("while waiting for {what}"))?;
        }
        if ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = children
                .iter()
                .map(|c| c.failure("still running").to_string())
                .collect();
            bail!(
                "timed out after {UP_TIMEOUT:?} waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
