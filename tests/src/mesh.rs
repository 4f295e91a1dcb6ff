//! A controller and agents running as real processes in a [`Topology`]: the controller on a
//! host of its own (reached through its cloud's 1:1 NAT), one `cladnet-agent run` per host,
//! administration through the `cladnet` CLI on the controller's host.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Host, Nat, Process, Topology, TopologyBuilder, bin_path};

/// The admin token of mesh controllers.
pub const ADMIN_TOKEN: &str = "mesh-test-admin-token-0123456789";
/// Controller port (gRPC, REST and the UDP reflector).
pub const CONTROLLER_PORT: u16 = 8053;

/// Site labels an agent reports.
#[derive(Clone, Copy, Debug)]
pub struct SiteLabels<'a> {
    /// Provider.
    pub provider: &'a str,
    /// VPC.
    pub vpc: &'a str,
}

/// Site labels with provider `provider` and VPC `vpc`.
pub const fn site(provider: &'static str, vpc: &'static str) -> SiteLabels<'static> {
    SiteLabels { provider, vpc }
}

/// The clouds the agent tests share: aws (masquerade NAT, 192.168.1.0/24) with `aws_hosts`,
/// gcp (1:1 NAT, the same 192.168.1.0/24) with `g1`, azure (1:1, 10.0.0.0/24) with `z1`, and
/// ops (1:1, 172.16.0.0/24) with the controller host `ctl`. Add clouds or set the MTU, then
/// build.
pub fn standard_clouds(aws_hosts: &[&str]) -> TopologyBuilder {
    let mut b = Topology::builder().cloud("aws", "192.168.1.0/24", Nat::Masquerade);
    for h in aws_hosts {
        b = b.host("aws", h);
    }
    b.cloud("gcp", "192.168.1.0/24", Nat::OneToOne)
        .host("gcp", "g1")
        .cloud("azure", "10.0.0.0/24", Nat::OneToOne)
        .host("azure", "z1")
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
}

/// Controller + agents in a topology.
#[derive(Debug)]
pub struct Mesh {
    // Field order is drop order: agents and controller die before the topology goes.
    agents: BTreeMap<String, Process>,
    controller: Option<Process>,
    /// The topology (public so tests can reach hosts and gateways).
    pub topo: Topology,
    ctl_host: String,
    dir: tempfile::TempDir,
    /// The network id.
    pub net: String,
    token: String,
    /// Serve the controller with `--tls auto` (agents trust the pin in their join token; the
    /// CLI trusts the certificate file as its CA).
    tls: bool,
    /// Overlay addresses seen so far (they are stable; tests use them with the controller down).
    overlay: std::cell::RefCell<BTreeMap<String, Ipv4Addr>>,
}

impl Mesh {
    /// Starts the controller on `ctl_host` and creates network `mesh` with the given policy.
    pub fn start(topo: Topology, ctl_host: &str, cidr: &str, policy: &[&str]) -> Self {
        let mut mesh = Self::with_controller(topo, ctl_host);
        mesh.create_network("mesh", cidr, policy);
        mesh
    }

    /// Starts the controller on `ctl_host`, with no network yet.
    pub fn with_controller(topo: Topology, ctl_host: &str) -> Self {
        Self::new(topo, ctl_host, false)
    }

    /// Starts the controller on `ctl_host` with `--tls auto`, with no network yet.
    pub fn with_tls_controller(topo: Topology, ctl_host: &str) -> Self {
        Self::new(topo, ctl_host, true)
    }

    fn new(topo: Topology, ctl_host: &str, tls: bool) -> Self {
        let mut mesh = Self {
            agents: BTreeMap::new(),
            controller: None,
            topo,
            ctl_host: ctl_host.to_owned(),
            dir: tempfile::tempdir().expect("temp dir"),
            net: String::new(),
            token: String::new(),
            tls,
            overlay: std::cell::RefCell::default(),
        };
        mesh.start_controller();
        mesh
    }

    /// Creates network `id` (agents started afterwards join it) and a join token for it.
    pub fn create_network(&mut self, id: &str, cidr: &str, policy: &[&str]) {
        let mut args = vec!["network", "create", id, "--id", id, "--cidr", cidr];
        args.extend_from_slice(policy);
        self.cli(&args);
        let token: serde_json::Value =
            serde_json::from_str(&self.cli(&["--json", "token", "create", id]))
                .expect("token JSON");
        self.token = token["token"].as_str().expect("token").to_owned();
        self.net = id.to_owned();
    }

    /// The join token of the current network (what every VM holds; with TLS it carries the
    /// controller's pin).
    pub fn join_token(&self) -> &str {
        &self.token
    }

    /// Where the controller's and agents' logs are.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    fn ctl(&self) -> &Host {
        self.topo.host(&self.ctl_host)
    }

    /// The controller's URL as agents see it.
    pub fn controller_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{CONTROLLER_PORT}", self.ctl().public_ip())
    }

    /// The `--tls auto` directory of the controller (certificate and key).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("ctl-tls")
    }

    /// Starts (or restarts) the controller on its durable store.
    pub fn start_controller(&mut self) {
        let log = self.log("controller");
        let store = format!("embedded:{}", self.dir.path().join("ctl.redb").display());
        let mut cmd = self
            .ctl()
            .command(bin_path("cladnet-controller").to_str().unwrap());
        cmd.args([
            "--listen",
            &format!("0.0.0.0:{CONTROLLER_PORT}"),
            "--store",
            &store,
        ])
        .env("CLADNET_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(log);
        if self.tls {
            cmd.args(["--tls", "auto", "--tls-dir"]).arg(self.tls_dir());
        }
        self.controller = Some(Process::spawn(&mut cmd).expect("start controller"));
        self.wait("controller healthy", Duration::from_secs(20), |m| {
            m.try_cli(&["health"]).is_ok()
        });
    }

    /// Kills the controller (SIGKILL: no goodbye to anyone).
    pub fn stop_controller(&mut self) {
        self.controller = None;
    }

    fn log(&self, name: &str) -> Stdio {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .expect("log file");
        Stdio::from(f)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Runs the `cladnet` CLI on the controller's host.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.ctl().command(bin_path("cladnet").to_str().unwrap());
        if self.tls {
            cmd.args([
                "--controller",
                &format!("https://127.0.0.1:{CONTROLLER_PORT}"),
                "--ca-cert",
            ])
            .arg(self.tls_dir().join("controller.crt"));
        } else {
            cmd.args([
                "--controller",
                &format!("http://127.0.0.1:{CONTROLLER_PORT}"),
            ]);
        }
        cmd.args(args).env("CLADNET_TOKEN", ADMIN_TOKEN);
        crate::run_checked(&mut cmd)
    }

    /// Runs the `cladnet` CLI; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("cladnet {args:?}: {e}"))
    }

    /// The data directory of `host`'s agent (kept across restarts).
    pub fn data_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("agent-{host}"))
    }

    /// Starts the agent on `host` with extra flags and otherwise default settings.
    pub fn start_agent(&mut self, host: &str, site: SiteLabels<'_>, extra: &[&str]) {
        let (url, token) = (self.controller_url(), self.token.clone());
        self.start_agent_with(host, site, &url, &token, extra);
    }

    /// Starts the agent on `host` against controller `url` with join token `token`.
    pub fn start_agent_with(
        &mut self,
        host: &str,
        site: SiteLabels<'_>,
        url: &str,
        token: &str,
        extra: &[&str],
    ) {
        self.start_agent_launched(host, site, url, token, extra, Host::command);
    }

    /// Starts the agent like [`Mesh::start_agent_with`], launched by `launch(host, program)`
    /// (e.g. through `ip netns exec` instead of the harness's `nsenter --net`).
    pub fn start_agent_launched(
        &mut self,
        host: &str,
        site: SiteLabels<'_>,
        url: &str,
        token: &str,
        extra: &[&str],
        launch: impl FnOnce(&Host, &str) -> Command,
    ) {
        let data_dir = self.data_dir(host);
        // One pin directory per agent (they share the machine's bpffs); the topology removes
        // it on teardown.
        let pins = self.topo.bpf_pin_dir(host);
        let log = self.log(&format!("agent-{host}"));
        let h = self.topo.host(host);
        let mut cmd = launch(h, bin_path("cladnet-agent").to_str().unwrap());
        cmd.args(["run", "--controller", url, "--network", &self.net])
            .args([
                "--host-name",
                host,
                "--provider",
                site.provider,
                "--vpc",
                site.vpc,
            ])
            .args(if extra.contains(&"--metrics-listen") {
                &[][..]
            } else {
                &["--metrics-listen", "off"][..]
            })
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--bpf-pin-dir")
            .arg(&pins)
            .args(extra)
            .env("CLADNET_JOIN_TOKEN", token)
            .env(
                "RUST_LOG",
                std::env::var("CLADNET_TEST_AGENT_LOG")
                    .unwrap_or_else(|_| "info,cladnet_agent=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(log);
        let p = Process::spawn(&mut cmd).expect("start agent");
        self.agents.insert(host.to_owned(), p);
    }

    /// Waits up to `within` for `host`'s agent to exit by itself; its exit status, or `None`
    /// if it is still running.
    pub fn wait_agent_exit(
        &mut self,
        host: &str,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let p = self.agents.get_mut(host).expect("agent started");
        loop {
            if let Some(status) = p.0.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log of `host`'s agent.
    pub fn agent_log(&self, host: &str) -> String {
        fs::read_to_string(self.log_path(&format!("agent-{host}"))).unwrap_or_default()
    }

    /// Sends `signal` to the agents of all `hosts` at once, then waits for each to exit.
    pub fn signal_agents(&mut self, hosts: &[&str], signal: &str) {
        let pids: Vec<String> = hosts
            .iter()
            .map(|h| self.agents[*h].0.id().to_string())
            .collect();
        Command::new("kill")
            .args(["-s", signal])
            .args(&pids)
            .status()
            .expect("kill");
        for host in hosts {
            let mut p = self.agents.remove(*host).expect("agent running");
            let deadline = Instant::now() + Duration::from_secs(10);
            while p.0.try_wait().expect("wait").is_none() {
                assert!(
                    Instant::now() < deadline,
                    "agent on {host} ignored {signal}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The process id of `host`'s agent (to kill it while `&self` is shared, e.g. by a
    /// transfer running in another thread).
    pub fn agent_pid(&self, host: &str) -> u32 {
        self.agents[host].0.id()
    }

    /// Sends `signal` to `host`'s agent and waits for it to exit (SIGKILL for a crash).
    pub fn signal_agent(&mut self, host: &str, signal: &str) -> std::process::ExitStatus {
        let mut p = self.agents.remove(host).expect("agent running");
        let pid = p.0.id().to_string();
        Command::new("kill")
            .args(["-s", signal, &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = p.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent on {host} ignored {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `/metrics` text served on `127.0.0.1:port` inside `host`.
    pub fn scrape(&self, host: &str, port: u16) -> String {
        self.topo
            .host(host)
            .exec(["curl", "-sf", &format!("http://127.0.0.1:{port}/metrics")])
            .unwrap_or_else(|e| panic!("scraping {host}:{port}: {e}"))
    }

    /// The peers as the controller lists them.
    pub fn peers(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.cli(&["--json", "peers", &self.net])).expect("peers JSON");
        v["peers"].as_array().cloned().unwrap_or_default()
    }

    /// The controller's record of `host` (its host name).
    pub fn peer(&self, host: &str) -> Option<serde_json::Value> {
        self.peers()
            .into_iter()
            .find(|p| p["hostName"].as_str() == Some(host))
    }

    /// `host`'s link to `peer` (both host names) as the controller shows it (`cladnet --json
    /// peer show`: mode, endpoint, and the path, relay and path MTU from `host`'s last
    /// statistics report).
    pub fn link(&self, host: &str, peer: &str) -> serde_json::Value {
        let id = |h: &str| {
            self.peer(h).unwrap_or_else(|| panic!("no peer {h}"))["hostId"]
                .as_str()
                .expect("hostId")
                .to_owned()
        };
        let (host_id, peer_id) = (id(host), id(peer));
        let shown: serde_json::Value =
            serde_json::from_str(&self.cli(&["--json", "peer", "show", &self.net, &host_id]))
                .expect("peer JSON");
        shown["links"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["hostId"] == peer_id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{host} has no link to {peer}: {shown}"))
    }

    /// The overlay address of `host` (remembered once seen, so it also answers while the
    /// controller is down).
    pub fn overlay_ip(&self, host: &str) -> Ipv4Addr {
        if let Some(ip) = self.overlay.borrow().get(host) {
            return *ip;
        }
        let ip = self
            .peer(host)
            .and_then(|p| p["ip"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("{host} has no overlay address"));
        self.overlay.borrow_mut().insert(host.to_owned(), ip);
        ip
    }

    /// Waits until every host in `hosts` is `up` and every pair pings over the overlay.
    pub fn wait_mesh(&self, hosts: &[&str], within: Duration) {
        self.wait("agents up", within, |m| {
            hosts
                .iter()
                .all(|h| m.peer(h).is_some_and(|p| p["state"].as_str() == Some("up")))
        });
        for a in hosts {
            for b in hosts.iter().filter(|b| *b != a) {
                let dst = self.overlay_ip(b);
                self.wait(&format!("{a} pings {b} ({dst})"), within, |m| {
                    m.topo.host(a).pings(dst, 1)
                });
            }
        }
    }

    /// Polls `ok` every 200 ms until it holds; panics with the agents' logs after `within`.
    pub fn wait(&self, what: &str, within: Duration, mut ok: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !ok(self) {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tail of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<PathBuf> = fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        names.sort();
        for path in names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out += &format!("--- {} ---\n", path.display());
            for l in tail.iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// Moves `bytes` over TCP from `from` to `to`'s overlay address and checks that exactly
    /// those bytes arrived. Returns the seconds it took.
    pub fn verified_transfer(&self, from: &str, to: &str, port: u16, bytes: usize) -> f64 {
        self.start_transfer(from, to, port, bytes).finish(self)
    }

    /// Starts a [`Mesh::verified_transfer`] in the background (one TCP connection), for a
    /// test that changes the network while it runs; [`Transfer::finish`] checks it.
    pub fn start_transfer(&self, from: &str, to: &str, port: u16, bytes: usize) -> Transfer {
        self.start_paced_transfer(from, to, port, bytes, 0)
    }

    /// [`Mesh::start_transfer`] sending at most `rate` bytes a second (0: as fast as TCP
    /// goes), so the transfer is still running when a test changes the path under it.
    pub fn start_paced_transfer(
        &self,
        from: &str,
        to: &str,
        port: u16,
        bytes: usize,
        rate: usize,
    ) -> Transfer {
        let script = script_path();
        let mut server = self.topo.host(to).command("python3");
        server
            .arg(&script)
            .args(["server", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut server = Process::spawn(&mut server).expect("server");
        let mut server_out = std::io::BufReader::new(server.0.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut server_out, &mut line).expect("server ready");
        assert_eq!(line.trim(), "listening");
        let mut client = self.topo.host(from).command("python3");
        client
            .arg(&script)
            .args([
                "client",
                &self.overlay_ip(to).to_string(),
                &port.to_string(),
                &bytes.to_string(),
                &rate.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Transfer {
            _server: server,
            server_out,
            client: Process::spawn(&mut client).expect("client"),
            what: format!("transfer {from} -> {to}"),
            bytes,
            start: Instant::now(),
        }
    }

    /// `cladnet-agent status --json` of `host`'s agent.
    pub fn agent_status(&self, host: &str) -> serde_json::Value {
        let out = self
            .topo
            .host(host)
            .exec([
                bin_path("cladnet-agent").to_str().unwrap(),
                "status",
                "--json",
                "--data-dir",
                self.data_dir(host).to_str().unwrap(),
            ])
            .expect("status --json");
        serde_json::from_str(&out).expect("status JSON")
    }

    /// A log file in the mesh's directory (for processes a test starts itself, such as
    /// external WireGuard clients): [`Mesh::logs`] shows its tail with the others.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_path(name)
    }

    /// Registers an external WireGuard peer `name` (host id `ext-<name>`, host name `name`,
    /// so [`Mesh::overlay_ip`] and [`Mesh::verified_transfer`] find it by `name`) with
    /// `cladnet peer add-external`; returns the peer JSON the CLI prints.
    pub fn add_external_peer(
        &self,
        name: &str,
        public_key: &str,
        endpoint: Option<std::net::SocketAddrV4>,
    ) -> serde_json::Value {
        let endpoint = endpoint.map(|e| e.to_string());
        let mut args = vec![
            "--json",
            "peer",
            "add-external",
            &self.net,
            "--name",
            name,
            "--public-key",
            public_key,
        ];
        if let Some(e) = &endpoint {
            args.extend(["--endpoint", e]);
        }
        serde_json::from_str(&self.cli(&args)).expect("peer JSON")
    }

    /// The wg-quick configuration of external peer `name`, as `cladnet peer wg-config` prints
    /// it.
    pub fn external_wg_config(&self, name: &str) -> String {
        self.cli(&["peer", "wg-config", &self.net, &format!("ext-{name}")])
    }
}

fn script_path() -> PathBuf {
    test_script("tcp_verify.py")
}

/// A verified TCP transfer running in the background ([`Mesh::start_transfer`]).
#[derive(Debug)]
pub struct Transfer {
    _server: Process,
    server_out: std::io::BufReader<std::process::ChildStdout>,
    client: Process,
    what: String,
    bytes: usize,
    start: Instant,
}

impl Transfer {
    /// Waits for the transfer and checks that exactly the bytes sent arrived, on one
    /// connection. Returns the seconds since it started.
    pub fn finish(mut self, mesh: &Mesh) -> f64 {
        let mut sent = String::new();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut self.client.0.stdout.take().expect("stdout"), &mut sent)
            .expect("client output");
        if let Some(mut e) = self.client.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let done = self.client.0.wait().expect("client");
        assert!(done.success(), "{}: {err}\n{}", self.what, mesh.logs());
        let secs = self.start.elapsed().as_secs_f64();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.server_out, &mut line).expect("server result");
        assert_eq!(
            sent.trim(),
            line.trim(),
            "{}: the bytes received differ from those sent",
            self.what
        );
        assert!(sent.starts_with(&format!("{} ", self.bytes)), "{sent}");
        secs
    }
}

/// Sum of the samples of `metric` in a Prometheus text exposition whose labels contain every
/// one of `labels` (e.g. `engine="ebpf"`).
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Path of a helper script in tests/scripts.
pub fn test_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}
