//! Setting up (and, on drop, tearing down) the overlay of one configuration between the two
//! hosts: none (`raw`), a standard userspace WireGuard (wireguard-go or boringtun, configured
//! with `wg`), or CLADNet (a controller on host A and an agent on each host).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    Binaries, Config,
    testbed::{
        Netns, Testbed, UNDERLAY_A, UNDERLAY_B, UNDERLAY_MTU, WG_SOCKET_DIR, process_prefix,
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
/// The controller's port (gRPC, REST and the UDP reflector), on host A's underlay address.
const CONTROLLER_PORT: u16 = 8053;
/// The CLADNet rows' network.
const NETWORK: &str = "bench";
const NETWORK_CIDR: &str = "10.202.0.0/24";
/// The agents' overlay interface (the default; each lives in its own namespace).
const AGENT_IFACE: &str = "cladnet0";
/// Limit for a tunnel to come up (processes ready, peers up, first ping answered).
const UP_TIMEOUT: Duration = Duration::from_secs(30);

/// A configured overlay between A and B. Dropping it stops its processes and removes what
/// they left.
#[derive(Debug)]
pub(crate) struct Tunnel {
    /// Host B's address on this overlay (the target of every measurement).
    pub(crate) dst: Ipv4Addr,
    /// The MTUs of host A's and host B's overlay interfaces.
    pub(crate) mtu: [u32; 2],
    /// Agents and WireGuard daemons first, the controller last.
    procs: Vec<ChildGuard>,
    /// UAPI sockets to remove after the daemons are gone.
    sockets: Vec<PathBuf>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stop();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
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
        Config::Raw => Ok(Tunnel {
            dst: UNDERLAY_B,
            mtu: [UNDERLAY_MTU; 2],
            procs: Vec::new(),
            sockets: Vec::new(),
        }),
        Config::WireguardGo | Config::Boringtun => wireguard(config, tb, bins, dir),
        Config::CladnetSealed => cladnet(tb, bins, dir, "always"),
        Config::CladnetPlain => cladnet(tb, bins, dir, "never"),
    }
}

/// A userspace WireGuard daemon on each host, configured with `wg set` like `wg-quick` would.
fn wireguard(config: Config, tb: &Testbed, bins: &Binaries, dir: &Path) -> anyhow::Result<Tunnel> {
    let daemon = bins
        .daemon(config)
        .with_context(|| format!("no binary for {config}"))?;
    let wg = bins.wg.to_string_lossy().into_owned();
    let hosts = [(&tb.a, "a"), (&tb.b, "b")];
    let underlay = [UNDERLAY_A, UNDERLAY_B];
    let mut tunnel = Tunnel {
        dst: WG_OVERLAY[1],
        mtu: [0; 2],
        procs: Vec::new(),
        sockets: Vec::new(),
    };
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

/// A `cladnet-controller` on host A (embedded store in `dir`), network `bench` with the given
/// encryption, and `cladnet-agent run` on both hosts; ready when both peers are `up` and A
/// pings B over the overlay.
fn cladnet(tb: &Testbed, bins: &Binaries, dir: &Path, encryption: &str) -> anyhow::Result<Tunnel> {
    let admin_token = crate::control::random_token()?;
    let url = format!("http://{UNDERLAY_A}:{CONTROLLER_PORT}");
    let mut tunnel = Tunnel {
        dst: UNDERLAY_B,
        mtu: [0; 2],
        procs: Vec::new(),
        sockets: Vec::new(),
    };
    let mut ctl = tb.a.command(&bins.controller);
    ctl.args(["--listen", &format!("{UNDERLAY_A}:{CONTROLLER_PORT}")])
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
        let mut cmd = tb.a.command(&bins.cli);
        cmd.args(["--controller", &url])
            .args(args)
            .env("CLADNET_TOKEN", &admin_token)
            .env_remove("CLADNET_TOKEN_FILE")
            .env_remove("CLADNET_CA_CERT");
        super::testbed::run(&mut cmd, super::testbed::COMMAND_TIMEOUT)
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
        encryption,
    ])?;
    let token: serde_json::Value =
        serde_json::from_str(&cli(&["--json", "token", "create", NETWORK])?)
            .context("parsing `cladnet --json token create`")?;
    let token = token["token"]
        .as_str()
        .context("no token in `cladnet --json token create`")?
        .to_owned();
    for (ns, side) in [(&tb.a, "a"), (&tb.b, "b")] {
        let mut cmd = ns.command(&bins.agent);
        cmd.args(["run", "--controller", &url, "--network", NETWORK])
            .args(["--metrics-listen", "off", "--host-name", side])
            .arg("--data-dir")
            .arg(dir.join(side))
            .env("CLADNET_JOIN_TOKEN", &token)
            .env("RUST_LOG", "info");
        let log = dir.join(format!("agent-{side}.log"));
        tunnel.procs.push(ChildGuard::spawn(
            &format!("cladnet-agent ({side})"),
            cmd,
            log,
        )?);
    }
    // The controller goes last: agents stop first.
    tunnel.procs.push(controller);
    let mut overlay = [None, None];
    let up = |overlay: &mut [Option<Ipv4Addr>; 2]| -> bool {
        let Ok(out) = cli(&["--json", "peers", NETWORK]) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
            return false;
        };
        for (i, side) in ["a", "b"].into_iter().enumerate() {
            overlay[i] = v["peers"].as_array().into_iter().flatten().find_map(|p| {
                (p["hostName"].as_str() == Some(side) && p["state"].as_str() == Some("up"))
                    .then(|| p["ip"].as_str()?.parse().ok())?
            });
        }
        overlay.iter().all(Option::is_some)
    };
    wait_all(
        &mut tunnel.procs,
        "both agents `up` in `cladnet peers`",
        || up(&mut overlay),
    )?;
    tunnel.dst = overlay[1].context("B's overlay address")?;
    tunnel.mtu = [tb.a.mtu(AGENT_IFACE)?, tb.b.mtu(AGENT_IFACE)?];
    wait_for_ping(tb, &mut tunnel)?;
    Ok(tunnel)
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
    let deadline = std::time::Instant::now() + UP_TIMEOUT;
    loop {
        for c in children.iter_mut() {
            c.ensure_running()
                .with_context(|| format!("while waiting for {what}"))?;
        }
        if ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
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
