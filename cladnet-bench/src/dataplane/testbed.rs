//! The two hosts: network namespaces `cnb-<pid>-a` and `cnb-<pid>-b` joined by one veth pair
//! (the underlay), and running commands inside them.
//!
//! Every name this benchmark creates outside its namespaces starts with `cnb-<pid>-`: the
//! namespaces, the WireGuard UAPI sockets in `/var/run/wireguard`, the eBPF engine's pin
//! directories in `/sys/fs/bpf` and the temporary directories. A name whose process no longer exists is stale: [`sweep_stale`] removes it
//! (killing every process left in such a namespace) at the start of a run, and
//! [`remove_own`] removes this process's names after a Ctrl-C. The namespaces are also
//! removed when the [`Testbed`] is dropped (on errors and on panics, which unwind).

use std::{
    ffi::OsStr,
    fs::File,
    io::Read as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Where wireguard-go and boringtun put their UAPI sockets (`<interface>.sock`).
pub(crate) const WG_SOCKET_DIR: &str = "/var/run/wireguard";
/// The bpffs where the eBPF rows' agents pin their programs and maps (one directory each).
pub(crate) const BPF_PIN_ROOT: &str = "/sys/fs/bpf";
/// The first part of every name.
const PREFIX: &str = "cnb-";

/// Host A's underlay address.
pub(crate) const UNDERLAY_A: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// Host B's underlay address.
pub(crate) const UNDERLAY_B: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// Prefix length of the underlay subnet.
const UNDERLAY_PREFIX: u8 = 24;
/// MTU of the veth pair.
pub(crate) const UNDERLAY_MTU: u32 = 1500;
/// The veth end's name in each namespace.
pub(crate) const UNDERLAY_IFACE: &str = "underlay";

/// Limit for short administrative commands (`ip`, `wg`, `cladnet`).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `cnb-<pid>-`: the prefix of every name this process creates.
pub(crate) fn process_prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

/// Removes namespaces (killing their processes), WireGuard sockets and temporary directories
/// left by benchmark processes that no longer exist.
pub fn sweep_stale() {
    sweep("stale ", |pid| !Path::new(&format!("/proc/{pid}")).exists());
}

/// Removes everything this process created (after an interrupt, when the guards could not
/// run).
pub fn remove_own() {
    let me = std::process::id();
    sweep("", |pid| pid == me);
}

fn sweep(what: &str, remove: impl Fn(u32) -> bool) {
    let ours = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(&remove)
    };
    for name in entries(Path::new(NETNS_DIR)).filter(|n| ours(n)) {
        eprintln!("dataplane: removing {what}namespace {name}");
        kill_all_and_delete(&name);
    }
    for name in entries(Path::new(WG_SOCKET_DIR)).filter(|n| ours(n)) {
        let _ = std::fs::remove_file(Path::new(WG_SOCKET_DIR).join(name));
    }
    // Unpinning the links of an agent that is gone detaches its programs.
    for name in entries(Path::new(BPF_PIN_ROOT)).filter(|n| ours(n)) {
        eprintln!("dataplane: removing {what}eBPF pins {BPF_PIN_ROOT}/{name}");
        let _ = std::fs::remove_dir_all(Path::new(BPF_PIN_ROOT).join(name));
    }
    let tmp = std::env::temp_dir();
    for name in entries(&tmp).filter(|n| ours(n)) {
        eprintln!(
            "dataplane: removing {what}directory {}",
            tmp.join(&name).display()
        );
        let _ = std::fs::remove_dir_all(tmp.join(name));
    }
}

fn entries(dir: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
}

/// SIGKILLs every process in namespace `name`, then deletes it. Errors are ignored: the
/// namespace may be gone already.
fn kill_all_and_delete(name: &str) {
    for _ in 0..50 {
        let pids: Vec<String> = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        let _ = Command::new("kill").arg("-9").args(&pids).output();
        thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// A temporary directory `cnb-<pid>-<what>-XXXX` (found by the sweeps if this process dies).
pub(crate) fn temp_dir(what: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{}{what}-", process_prefix()))
        .tempdir()
        .context("creating a temporary directory")
}

/// Keeps `dir`, renamed to `cladnet-bench-<pid>-...` so that the sweeps leave it alone.
pub(crate) fn keep(dir: tempfile::TempDir) -> PathBuf {
    let path = dir.keep();
    let renamed = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| path.with_file_name(n.replacen(PREFIX, "cladnet-bench-", 1)));
    match renamed {
        Some(to) if std::fs::rename(&path, &to).is_ok() => to,
        _ => path,
    }
}

/// One network namespace, deleted with every process inside it on drop.
#[derive(Debug)]
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    pub(crate) fn create(name: &str) -> anyhow::Result<Self> {
        run(
            Command::new("ip").args(["netns", "add", name]),
            COMMAND_TIMEOUT,
        )?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A command running `program` inside the namespace (only the network namespace is
    /// entered, so the file system, including `/var/run/wireguard`, stays shared).
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={NETNS_DIR}/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `argv` inside the namespace within [`COMMAND_TIMEOUT`]; its stdout.
    pub(crate) fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> anyhow::Result<String> {
        self.run_for(argv, COMMAND_TIMEOUT)
    }

    /// Runs `argv` inside the namespace within `timeout`; its stdout.
    pub(crate) fn run_for<S: AsRef<OsStr>>(
        &self,
        argv: &[S],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let (program, args) = argv.split_first().context("empty command")?;
        run(self.command(program).args(args), timeout)
    }

    /// Whether one ping to `dst` gets an answer within a second.
    pub(crate) fn pings(&self, dst: Ipv4Addr) -> bool {
        self.run(&["ping", "-n", "-q", "-c", "1", "-W", "1", &dst.to_string()])
            .is_ok()
    }

    /// Whether something listens on TCP `port` in the namespace.
    pub(crate) fn listens(&self, port: u16) -> bool {
        self.run(&["ss", "-Hltn", &format!("sport = :{port}")])
            .is_ok_and(|out| !out.trim().is_empty())
    }

    /// The XDP program attached to `iface` in the namespace, if any (`ip -j link`'s `xdp`
    /// object, as text).
    pub(crate) fn xdp(&self, iface: &str) -> anyhow::Result<Option<String>> {
        let out = self.run(&["ip", "-j", "link", "show", "dev", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j link show dev {iface}`: {out}"))?;
        Ok(v[0].get("xdp").map(ToString::to_string))
    }

    /// The MTU of `iface` in the namespace.
    pub(crate) fn mtu(&self, iface: &str) -> anyhow::Result<u32> {
        let out = self.run(&["ip", "-j", "link", "show", "dev", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j link show dev {iface}`: {out}"))?;
        v[0]["mtu"]
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .with_context(|| format!("no MTU in `ip -j link show dev {iface}`: {out}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_and_delete(&self.name);
    }
}

/// The two hosts and the veth pair between them.
#[derive(Debug)]
pub(crate) struct Testbed {
    /// Host A (`UNDERLAY_A`): clients, the controller.
    pub(crate) a: Netns,
    /// Host B (`UNDERLAY_B`): servers.
    pub(crate) b: Netns,
    /// The routers between A and B, for the mid-path MTU test bed (empty for the direct
    /// veth pair).
    routers: Vec<Netns>,
    /// The relay host between A and B, for the relay test bed: it reaches both and forwards
    /// nothing ([`RELAY_ADDR`]).
    pub(crate) relay: Option<Netns>,
}

/// The relay host's one address (on its loopback, reached from A and from B over their own
/// link to it), where the controller and the relay agent listen.
pub(crate) const RELAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 9, 9);

/// The mid-path MTU test bed's hop: the link between its two routers.
pub(crate) const MIDHOP_MTU: u32 = 1400;
/// The routers' addresses: towards A (r1), towards B (r2), and on the 1400-byte link between
/// them (r1, r2). Hosts keep `UNDERLAY_A` and `UNDERLAY_B`, so that every row reaches the
/// other host the same way.
const R1_TO_A: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const R2_TO_B: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
const R1_MID: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 1);
const R2_MID: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);

impl Testbed {
    /// Creates both namespaces and the veth pair (created directly inside them, so it never
    /// appears among the machine's own interfaces), and checks the underlay with a ping.
    pub(crate) fn create() -> anyhow::Result<Self> {
        let prefix = process_prefix();
        let a = Netns::create(&format!("{prefix}a"))?;
        let b = Netns::create(&format!("{prefix}b"))?;
        run(
            Command::new("ip").args([
                "link",
                "add",
                UNDERLAY_IFACE,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_IFACE,
                "netns",
                b.name(),
            ]),
            COMMAND_TIMEOUT,
        )?;
        for (ns, ip) in [(&a, UNDERLAY_A), (&b, UNDERLAY_B)] {
            let cidr = format!("{ip}/{UNDERLAY_PREFIX}");
            let mtu = UNDERLAY_MTU.to_string();
            ns.run(&["ip", "addr", "add", &cidr, "dev", UNDERLAY_IFACE])?;
            ns.run(&["ip", "link", "set", UNDERLAY_IFACE, "mtu", &mtu, "up"])?;
        }
        let tb = Self {
            a,
            b,
            routers: Vec::new(),
            relay: None,
        };
        tb.wait_for(
            &format!("underlay ping {UNDERLAY_B}"),
            Duration::from_secs(5),
            || tb.a.pings(UNDERLAY_B),
        )?;
        Ok(tb)
    }

    /// The mid-path MTU test bed: hosts `cnb-<pid>-ma` and `cnb-<pid>-mb` (same addresses as
    /// [`Testbed::create`]'s, on a 1500-byte link each) joined through two router namespaces
    /// `cnb-<pid>-r1` and `cnb-<pid>-r2` whose link to each other carries only
    /// [`MIDHOP_MTU`] bytes:
    ///
    /// `A =1500= r1 =1400= r2 =1500= B`
    ///
    /// Every link is point-to-point (`ip addr add X peer Y`); each host has a default route
    /// via its router (so the agent's route lookup finds the 1500-byte first hop, as on a
    /// cloud VM), and the routers forward. The small hop is on neither host's own link, so a
    /// host learns of it only from the routers' ICMP "fragmentation needed" or by probing.
    pub(crate) fn create_midhop() -> anyhow::Result<Self> {
        let prefix = process_prefix();
        let a = Netns::create(&format!("{prefix}ma"))?;
        let b = Netns::create(&format!("{prefix}mb"))?;
        let r1 = Netns::create(&format!("{prefix}r1"))?;
        let r2 = Netns::create(&format!("{prefix}r2"))?;
        // (namespace, device, address, peer address, MTU), both ends of each veth pair.
        let links = [
            [
                (&a, UNDERLAY_IFACE, UNDERLAY_A, R1_TO_A, UNDERLAY_MTU),
                (&r1, "host", R1_TO_A, UNDERLAY_A, UNDERLAY_MTU),
            ],
            [
                (&r1, "mid", R1_MID, R2_MID, MIDHOP_MTU),
                (&r2, "mid", R2_MID, R1_MID, MIDHOP_MTU),
            ],
            [
                (&r2, "host", R2_TO_B, UNDERLAY_B, UNDERLAY_MTU),
                (&b, UNDERLAY_IFACE, UNDERLAY_B, R2_TO_B, UNDERLAY_MTU),
            ],
        ];
        for [x, y] in &links {
            run(
                Command::new("ip").args([
                    "link",
                    "add",
                    x.1,
                    "netns",
                    x.0.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    y.1,
                    "netns",
                    y.0.name(),
                ]),
                COMMAND_TIMEOUT,
            )?;
            for (ns, dev, addr, peer, mtu) in [x, y] {
                let (addr, peer, mtu) = (addr.to_string(), peer.to_string(), mtu.to_string());
                ns.run(&["ip", "addr", "add", &addr, "peer", &peer, "dev", dev])?;
                ns.run(&["ip", "link", "set", dev, "mtu", &mtu, "up"])?;
            }
        }
        a.run(&["ip", "route", "add", "default", "via", &R1_TO_A.to_string()])?;
        b.run(&["ip", "route", "add", "default", "via", &R2_TO_B.to_string()])?;
        let b_addr = UNDERLAY_B.to_string();
        r1.run(&["ip", "route", "add", &b_addr, "via", &R2_MID.to_string()])?;
        let a_addr = UNDERLAY_A.to_string();
        r2.run(&["ip", "route", "add", &a_addr, "via", &R1_MID.to_string()])?;
        for r in [&r1, &r2] {
            r.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        }
        let tb = Self {
            a,
            b,
            routers: vec![r1, r2],
            relay: None,
        };
        tb.wait_for(
            &format!("underlay ping {UNDERLAY_B} through the routers"),
            Duration::from_secs(5),
            || tb.a.pings(UNDERLAY_B),
        )?;
        // No DF ping across the hop here: it would teach host A's kernel the path MTU
        // before the agents start, which is not what a fresh host knows.
        for r in &tb.routers {
            let mtu = r.mtu("mid")?;
            ensure!(
                mtu == MIDHOP_MTU,
                "{}'s middle link has MTU {mtu}, not {MIDHOP_MTU}",
                r.name()
            );
        }
        Ok(tb)
    }

    /// The relay test bed: hosts `cnb-<pid>-la` and `cnb-<pid>-lb` (same addresses as
    /// [`Testbed::create`]'s) each linked only to the relay host `cnb-<pid>-lr`, which holds
    /// one address, [`RELAY_ADDR`], and does not forward:
    ///
    /// `A (10.200.0.1) =1500= R (10.200.9.9) =1500= B (10.200.0.2)`
    ///
    /// Every address is a /32 with a route to the other end of its link (R's routes to A and
    /// B carry `src` [`RELAY_ADDR`], so whatever R sends comes from the address both reach).
    /// A and B have a default route via R, so what one sends to the other reaches R and is
    /// dropped there, as a hard NAT or a firewall would: they cannot reach each other, which
    /// is checked, and their SEALED link can only go through a relay agent on R.
    pub(crate) fn create_relayed() -> anyhow::Result<Self> {
        let prefix = process_prefix();
        let a = Netns::create(&format!("{prefix}la"))?;
        let b = Netns::create(&format!("{prefix}lb"))?;
        let r = Netns::create(&format!("{prefix}lr"))?;
        // No forwarding on R, whatever the machine's default for new namespaces.
        r.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
        let relay = RELAY_ADDR.to_string();
        r.run(&["ip", "addr", "add", &format!("{relay}/32"), "dev", "lo"])?;
        for (host, addr, dev) in [(&a, UNDERLAY_A, "to-a"), (&b, UNDERLAY_B, "to-b")] {
            run(
                Command::new("ip").args([
                    "link",
                    "add",
                    UNDERLAY_IFACE,
                    "netns",
                    host.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    dev,
                    "netns",
                    r.name(),
                ]),
                COMMAND_TIMEOUT,
            )?;
            let (addr, mtu) = (addr.to_string(), UNDERLAY_MTU.to_string());
            host.run(&[
                "ip",
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                UNDERLAY_IFACE,
            ])?;
            host.run(&["ip", "link", "set", UNDERLAY_IFACE, "mtu", &mtu, "up"])?;
            host.run(&["ip", "route", "add", &relay, "dev", UNDERLAY_IFACE])?;
            host.run(&["ip", "route", "add", "default", "via", &relay])?;
            r.run(&["ip", "link", "set", dev, "mtu", &mtu, "up"])?;
            r.run(&["ip", "route", "add", &addr, "dev", dev, "src", &relay])?;
        }
        let tb = Self {
            a,
            b,
            routers: Vec::new(),
            relay: Some(r),
        };
        for (ns, name) in [(&tb.a, "A"), (&tb.b, "B")] {
            tb.wait_for(
                &format!("{name} pings the relay host {RELAY_ADDR}"),
                Duration::from_secs(5),
                || ns.pings(RELAY_ADDR),
            )?;
        }
        ensure!(
            !tb.a.pings(UNDERLAY_B),
            "host A reaches host B's {UNDERLAY_B} without the relay"
        );
        Ok(tb)
    }

    /// Fails when an XDP program is still attached to either end of the underlay (left by an
    /// eBPF row: driver-mode XDP on a veth also turns off GSO on its peer, which would slow
    /// down every later row).
    /// The kernel releases an unpinned link asynchronously, so this waits up to 3 s.
    pub(crate) fn ensure_no_xdp(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        for ns in [&self.a, &self.b] {
            while let Some(xdp) = ns.xdp(UNDERLAY_IFACE)? {
                if Instant::now() > deadline {
                    bail!(
                        "an XDP program is still attached to {UNDERLAY_IFACE} in {}: {xdp}",
                        ns.name()
                    );
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Two namespaces as a test bed of their own (the pod rows measure between pods).
    pub(crate) fn pair(a: Netns, b: Netns) -> Self {
        Self {
            a,
            b,
            routers: Vec::new(),
            relay: None,
        }
    }

    /// Polls `ok` every 100 ms until it holds; fails naming `what` after `within`.
    pub(crate) fn wait_for(
        &self,
        what: &str,
        within: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !ok() {
            if Instant::now() > deadline {
                bail!("timed out after {within:?} waiting for {what}");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// Runs `cmd` (stdin closed) to completion within `timeout`; its stdout. A failure names the
/// command line, the exit status and the command's stderr (or stdout when stderr is empty).
pub(crate) fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{line}`"))?
        {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    let detail = || {
        let text = if err.trim().is_empty() { &out } else { &err };
        tail(text.trim(), 2000)
    };
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => bail!("`{line}` failed ({s}): {}", detail()),
        None => bail!("`{line}` did not finish within {timeout:?}: {}", detail()),
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `max` bytes of `text` (on a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// `program` as found on the `PATH` (or the path itself when it contains a `/`).
pub(crate) fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether this process runs as root (effective uid 0, from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    let mut status = String::new();
    File::open("/proc/self/status")
        .and_then(|mut f| f.read_to_string(&mut status))
        .is_ok()
        && status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
}

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Duration};

    use super::{describe, run, tail};

    #[test]
    fn failures_name_the_command_and_its_stderr() {
        let err = run(
            Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`sh -c echo out; echo oops >&2; exit 3`"),
            "{err}"
        );
        assert!(err.contains("oops"), "{err}");
        assert!(!err.contains("out;\n"), "{err}");
    }

    #[test]
    fn stdout_of_a_success_and_timeouts() {
        let out = run(Command::new("echo").arg("hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(out, "hi\n");
        let err = run(Command::new("sleep").arg("5"), Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish"), "{err}");
    }

    #[test]
    fn helpers() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(describe(Command::new("ip").args(["a", "b"])), "ip a b");
    }
}
