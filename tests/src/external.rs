//! Standard WireGuard clients as CLADNet external peers: a userspace WireGuard daemon
//! (wireguard-go or boringtun-cli) in a topology host, configured with `wg` (wireguard-tools)
//! through its UAPI socket in `/var/run/wireguard/`, exactly as a user would from the
//! wg-quick text `cladnet peer wg-config` prints.
//!
//! Socket paths live in the shared filesystem, not in the namespace, so every client gets an
//! interface name unique on the machine (`wg<pid>-<n>`).

use std::{
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::Ipv4Net;

use crate::{Host, Process, run_checked};

/// Directory of the userspace implementations' UAPI sockets.
const SOCKET_DIR: &str = "/var/run/wireguard";

/// A userspace WireGuard implementation.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Implementation {
    /// wireguard-go (the Debian package `wireguard-go`).
    WireguardGo,
    /// Cloudflare's boringtun (`boringtun-cli` from crates.io, installed by `cargo xtask setup`).
    Boringtun,
}

impl Implementation {
    /// The executable's name.
    pub fn program(self) -> &'static str {
        match self {
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun => "boringtun-cli",
        }
    }

    /// The executable: on `PATH`, else (boringtun-cli) in cargo's bin directory. `Err` says
    /// what is missing and how to install it.
    pub fn binary(self) -> Result<PathBuf, String> {
        let program = self.program();
        let mut candidates = vec![PathBuf::from(program)];
        if let Some(home) = std::env::var_os("CARGO_HOME") {
            candidates.push(Path::new(&home).join("bin").join(program));
        }
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(Path::new(&home).join(".cargo/bin").join(program));
        }
        candidates
            .into_iter()
            .find(|c| {
                Command::new(c)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .ok_or_else(|| format!("`{program}` is not installed (run `cargo xtask setup`)"))
    }

    /// What `wg show <iface> latest-handshakes` reports as an age. wireguard-go reports a
    /// UNIX timestamp as the protocol says; boringtun reports the seconds *since* the
    /// handshake (cloudflare/boringtun#447), so `wg` shows "55 years ago" for it.
    fn handshake_age(self, value: u64) -> Option<Duration> {
        match (self, value) {
            (Self::WireguardGo, 0) => None,
            (Self::WireguardGo, ts) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Some(Duration::from_secs(now.saturating_sub(ts)))
            }
            // 0 is "never" or "less than a second ago": callers retry.
            (Self::Boringtun, 0) => None,
            (Self::Boringtun, age) => Some(Duration::from_secs(age)),
        }
    }
}

/// A WireGuard key pair, base64 as `wg` prints it.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// `wg genkey`.
    pub private: String,
    /// `wg pubkey` of it.
    pub public: String,
}

impl KeyPair {
    /// A fresh pair from `wg genkey` and `wg pubkey`.
    pub fn generate() -> Self {
        let private = run_checked(Command::new("wg").arg("genkey"))
            .expect("wg genkey")
            .trim()
            .to_owned();
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(private.as_bytes())
            .expect("write the private key to wg pubkey");
        let out = child.wait_with_output().expect("wg pubkey");
        assert!(out.status.success(), "wg pubkey failed");
        let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Self { private, public }
    }
}

/// One `[Peer]` of a wg-quick file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSection {
    /// The comment line right above the section (the agent's host id in CLADNet's files).
    pub comment: String,
    /// `PublicKey`.
    pub public_key: String,
    /// `Endpoint`.
    pub endpoint: Option<SocketAddrV4>,
    /// `AllowedIPs`.
    pub allowed_ips: Vec<Ipv4Net>,
    /// `PersistentKeepalive`.
    pub persistent_keepalive: Option<u16>,
}

/// The parts of a wg-quick file a client applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WgQuick {
    /// `Address` of `[Interface]` (wg-quick's own key, applied with `ip addr`).
    pub addresses: Vec<Ipv4Net>,
    /// `PrivateKey` of `[Interface]` when present (CLADNet leaves it as a comment).
    pub private_key: Option<String>,
    /// The peers, in file order.
    pub peers: Vec<PeerSection>,
}

impl WgQuick {
    /// Parses wg-quick text. Unknown keys are errors, so a rendering change is noticed.
    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(PartialEq)]
        enum Section {
            None,
            Interface,
            Peer,
        }
        let mut cfg = Self::default();
        let mut section = Section::None;
        let mut comment = String::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let bad = |what: &str| format!("line {}: {what}: {raw:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix('#') {
                comment = c.trim().to_owned();
                continue;
            }
            match line {
                "[Interface]" => {
                    section = Section::Interface;
                    continue;
                }
                "[Peer]" => {
                    section = Section::Peer;
                    cfg.peers.push(PeerSection {
                        comment: std::mem::take(&mut comment),
                        ..PeerSection::default()
                    });
                    continue;
                }
                _ => {}
            }
            let (key, value) = line.split_once('=').ok_or_else(|| bad("not key = value"))?;
            let (key, value) = (key.trim(), value.trim());
            let list = || value.split(',').map(str::trim).filter(|v| !v.is_empty());
            match (&section, key) {
                (Section::Interface, "Address") => {
                    for a in list() {
                        cfg.addresses
                            .push(a.parse().map_err(|e| bad(&format!("{e}")))?);
                    }
                }
                (Section::Interface, "PrivateKey") => cfg.private_key = Some(value.to_owned()),
                (Section::Peer, _) => {
                    let peer = cfg.peers.last_mut().expect("a [Peer] was opened");
                    match key {
                        "PublicKey" => peer.public_key = value.to_owned(),
                        "Endpoint" => {
                            peer.endpoint = Some(value.parse().map_err(|e| bad(&format!("{e}")))?);
                        }
                        "AllowedIPs" => {
                            for a in list() {
                                peer.allowed_ips
                                    .push(a.parse().map_err(|e| bad(&format!("{e}")))?);
                            }
                        }
                        "PersistentKeepalive" => {
                            peer.persistent_keepalive =
                                Some(value.parse().map_err(|e| bad(&format!("{e}")))?);
                        }
                        _ => return Err(bad("unexpected key in [Peer]")),
                    }
                }
                _ => return Err(bad("unexpected key")),
            }
        }
        Ok(cfg)
    }

    /// The same configuration as `wg setconf` reads it (`wg-quick strip` plus the key and
    /// port): wg-quick's `Address` is left out, `PrivateKey` and `ListenPort` are set.
    pub fn setconf_text(&self, private_key: &str, listen_port: u16) -> String {
        let mut out =
            format!("[Interface]\nPrivateKey = {private_key}\nListenPort = {listen_port}\n");
        for p in &self.peers {
            out += &format!("\n[Peer]\nPublicKey = {}\n", p.public_key);
            if let Some(ep) = p.endpoint {
                out += &format!("Endpoint = {ep}\n");
            }
            if !p.allowed_ips.is_empty() {
                let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
                out += &format!("AllowedIPs = {}\n", ips.join(", "));
            }
            if let Some(k) = p.persistent_keepalive {
                out += &format!("PersistentKeepalive = {k}\n");
            }
        }
        out
    }
}

/// Per-peer state as `wg show` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: String,
    /// Time since the last completed handshake, `None` when there was none (or, for
    /// boringtun, less than a second ago).
    pub handshake_age: Option<Duration>,
    /// Bytes received from the peer (handshake messages included).
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// A userspace WireGuard client running in a topology host, killed when dropped.
#[derive(Debug)]
pub struct WgClient {
    // Drop order: the daemon first, then its files.
    daemon: Process,
    implementation: Implementation,
    netns: String,
    /// The interface name (also the UAPI socket's name).
    pub iface: String,
    /// Its keys.
    pub keys: KeyPair,
    /// The UDP port it listens on.
    pub listen_port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl WgClient {
    /// Starts `implementation` on `host` in the foreground with `log` as its output, and
    /// gives it a fresh key and `listen_port`. Peers come with [`WgClient::apply_wg_quick`].
    pub fn start(
        implementation: Implementation,
        host: &Host,
        listen_port: u16,
        log: &Path,
    ) -> Result<Self, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let binary = implementation.binary()?;
        let iface = format!(
            "wg{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        assert!(iface.len() <= 15, "interface name {iface} too long");
        let file = |what| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| format!("{what} log {}: {e}", log.display()))
        };
        let mut cmd = host.command(binary.to_str().expect("UTF-8 path"));
        match implementation {
            Implementation::WireguardGo => {
                cmd.arg("--foreground")
                    .arg(&iface)
                    .env("WG_PROCESS_FOREGROUND", "1")
                    .env("LOG_LEVEL", "debug");
            }
            Implementation::Boringtun => {
                cmd.args([
                    "--foreground",
                    "--disable-drop-privileges",
                    "--threads",
                    "2",
                    "--verbosity",
                    "debug",
                ])
                .arg(&iface)
                .env("WG_SUDO", "1")
                .env("NO_COLOR", "1");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(file("stdout")?)
            .stderr(file("stderr")?);
        let mut daemon = Process::spawn(&mut cmd)?;
        let socket = Path::new(SOCKET_DIR).join(format!("{iface}.sock"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = daemon.0.try_wait() {
                return Err(format!(
                    "{} {iface} on {} exited at start ({status}):\n{}",
                    implementation.program(),
                    host.name(),
                    tail(log)
                ));
            }
            if socket.exists() && host.exec(["wg", "show", &iface]).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} {iface} on {}: no UAPI socket {} after 10 s:\n{}",
                    implementation.program(),
                    host.name(),
                    socket.display(),
                    tail(log)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let client = Self {
            daemon,
            implementation,
            netns: host.netns().name().to_owned(),
            iface,
            keys: KeyPair::generate(),
            listen_port,
            log: log.to_owned(),
            dir,
        };
        let key_file = client.dir.path().join("private.key");
        fs::write(&key_file, format!("{}\n", client.keys.private))
            .map_err(|e| format!("key file: {e}"))?;
        client.wg([
            "set",
            &client.iface,
            "private-key",
            key_file.to_str().expect("UTF-8 path"),
            "listen-port",
            &listen_port.to_string(),
        ])?;
        Ok(client)
    }

    /// The implementation it runs.
    pub fn implementation(&self) -> Implementation {
        self.implementation
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `wg <args>` in the client's host.
    pub fn wg<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> Result<String, String> {
        run_checked(self.command("wg").args(args))
    }

    /// Runs `ip <args>` in the client's host.
    pub fn ip<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> Result<String, String> {
        run_checked(self.command("ip").args(args))
    }

    /// Applies a wg-quick file as `wg-quick up` would: the interface address(es), MTU 1420
    /// and link up, then `wg setconf` with the file's peers plus this client's key and port
    /// (so `PersistentKeepalive` starts on an interface that is up). `address` overrides the
    /// file's `Address` (for a client that pretends to be someone else). Returns the parsed
    /// file.
    pub fn apply_wg_quick(&self, text: &str, address: Option<Ipv4Net>) -> Result<WgQuick, String> {
        let cfg = WgQuick::parse(text)?;
        let addresses = address.map_or_else(|| cfg.addresses.clone(), |a| vec![a]);
        if addresses.is_empty() {
            return Err(format!("no Address in\n{text}"));
        }
        self.ip(["addr", "flush", "dev", &self.iface])?;
        for a in &addresses {
            self.ip(["addr", "add", &a.to_string(), "dev", &self.iface])?;
        }
        self.ip(["link", "set", &self.iface, "mtu", "1420", "up"])?;
        let path = self.dir.path().join("setconf.conf");
        fs::write(
            &path,
            cfg.setconf_text(&self.keys.private, self.listen_port),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        self.wg(["setconf", &self.iface, path.to_str().expect("UTF-8 path")])?;
        Ok(cfg)
    }

    /// Per-peer handshake ages and transfer counters from `wg show <iface> latest-handshakes`
    /// and `wg show <iface> transfer`.
    pub fn stats(&self) -> Result<Vec<PeerStats>, String> {
        let handshakes = self.wg(["show", &self.iface, "latest-handshakes"])?;
        let transfer = self.wg(["show", &self.iface, "transfer"])?;
        let mut out = Vec::new();
        for line in handshakes.lines() {
            let mut f = line.split_whitespace();
            let (Some(key), Some(ts)) = (f.next(), f.next()) else {
                continue;
            };
            let ts: u64 = ts.parse().map_err(|e| format!("{line:?}: {e}"))?;
            out.push(PeerStats {
                public_key: key.to_owned(),
                handshake_age: self.implementation.handshake_age(ts),
                rx_bytes: 0,
                tx_bytes: 0,
            });
        }
        for line in transfer.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [key, rx, tx] = f[..] else { continue };
            if let Some(p) = out.iter_mut().find(|p| p.public_key == key) {
                p.rx_bytes = rx.parse().map_err(|e| format!("{line:?}: {e}"))?;
                p.tx_bytes = tx.parse().map_err(|e| format!("{line:?}: {e}"))?;
            }
        }
        Ok(out)
    }

    /// `wg show <iface>` as text, for failure messages.
    pub fn show(&self) -> String {
        self.wg(["show", &self.iface])
            .unwrap_or_else(|e| format!("wg show failed: {e}"))
    }

    /// The tail of the daemon's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Whether the daemon is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.daemon.0.try_wait(), Ok(None))
    }
}

impl Drop for WgClient {
    fn drop(&mut self) {
        let _ = self.daemon.0.kill();
        let _ = self.daemon.0.wait();
        // A killed daemon leaves its socket behind; the next one of this name would clean it,
        // but names are per process, so do it now.
        let _ = fs::remove_file(Path::new(SOCKET_DIR).join(format!("{}.sock", self.iface)));
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The address `from_top` below `net`'s broadcast address: an overlay address that allocation
/// (lowest free first) has not handed out in a small test network.
pub fn high_address(net: Ipv4Net, from_top: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.broadcast()) - from_top)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLADNET_FILE: &str = "\
# CLADNet network prod, external peer ext-laptop
[Interface]
# PrivateKey = <the private key of this client; it never leaves the client>
Address = 10.77.0.9/24

# h-aaaa
[Peer]
PublicKey = q3Vh0e9y1xVvM8nH0y8o5b0P1o3F5w9J2zWmC2Kp3Ek=
Endpoint = 203.0.113.5:8055
AllowedIPs = 10.77.0.2/32
PersistentKeepalive = 25
";

    #[test]
    fn parses_the_file_cladnet_renders() {
        let cfg = WgQuick::parse(CLADNET_FILE).unwrap();
        assert_eq!(cfg.addresses, vec!["10.77.0.9/24".parse().unwrap()]);
        assert_eq!(cfg.private_key, None);
        assert_eq!(
            cfg.peers,
            vec![PeerSection {
                comment: "h-aaaa".into(),
                public_key: "q3Vh0e9y1xVvM8nH0y8o5b0P1o3F5w9J2zWmC2Kp3Ek=".into(),
                endpoint: Some("203.0.113.5:8055".parse().unwrap()),
                allowed_ips: vec!["10.77.0.2/32".parse().unwrap()],
                persistent_keepalive: Some(25),
            }]
        );
    }

    #[test]
    fn setconf_text_drops_address_and_adds_key_and_port() {
        let text = WgQuick::parse(CLADNET_FILE)
            .unwrap()
            .setconf_text("KEY=", 51820);
        assert_eq!(
            text,
            "[Interface]\nPrivateKey = KEY=\nListenPort = 51820\n\n[Peer]\nPublicKey = \
             q3Vh0e9y1xVvM8nH0y8o5b0P1o3F5w9J2zWmC2Kp3Ek=\nEndpoint = 203.0.113.5:8055\n\
             AllowedIPs = 10.77.0.2/32\nPersistentKeepalive = 25\n"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(WgQuick::parse("[Peer]\nPublicKey = x\nFoo = 1\n").is_err());
        assert!(WgQuick::parse("Address = 10.0.0.1/24\n").is_err());
    }

    #[test]
    fn handshake_values_become_ages() {
        assert_eq!(Implementation::WireguardGo.handshake_age(0), None);
        assert_eq!(Implementation::Boringtun.handshake_age(0), None);
        assert_eq!(
            Implementation::Boringtun.handshake_age(7),
            Some(Duration::from_secs(7))
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let age = Implementation::WireguardGo.handshake_age(now - 3).unwrap();
        assert!(age >= Duration::from_secs(3) && age < Duration::from_secs(10));
    }
}
