//! Pod-like namespaces behind a host (issue 14): each host gets a bridge holding the gateway
//! address of its pod network (its podCIDR, as a no-encapsulation CNI sets it up) and pods,
//! each a namespace with one veth on the bridge and a default route to the gateway. The host
//! forwards between the bridge and the overlay device; nothing is masqueraded, so a receiver
//! sees the real pod source.

use std::{
    io::BufRead as _,
    net::Ipv4Addr,
    process::Stdio,
    time::{Duration, Instant},
};

use crate::{Netns, Process, Topology, test_script};

/// The bridge on each host.
const BRIDGE: &str = "cbr0";

/// One pod: a namespace behind a host's bridge (deleted on drop).
#[derive(Debug)]
pub struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
}

/// Gives `host` a pod network: bridge `cbr0` with `gateway/len`, forwarding on, reverse path
/// filtering off (so a test can forward a spoofed source, as a compromised node would).
pub fn pod_network(topo: &Topology, host: &str, gateway: Ipv4Addr, len: u8) -> Result<(), String> {
    let h = topo.host(host);
    h.exec(["ip", "link", "add", BRIDGE, "type", "bridge"])?;
    h.exec([
        "ip",
        "addr",
        "add",
        &format!("{gateway}/{len}"),
        "dev",
        BRIDGE,
    ])?;
    h.exec(["ip", "link", "set", BRIDGE, "up"])?;
    h.netns().sysctl("net.ipv4.ip_forward", "1")?;
    for scope in ["all", "default", BRIDGE] {
        h.netns()
            .sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
    }
    Ok(())
}

impl Pod {
    /// Creates pod `name` with address `ip/len` on `host`'s bridge (see [`pod_network`]),
    /// default route via `gateway`, MTU `mtu` (the overlay's: a no-encap CNI sets the pod MTU
    /// to the overlay device's).
    pub fn attach(
        topo: &Topology,
        host: &str,
        name: &str,
        ip: Ipv4Addr,
        len: u8,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> Result<Self, String> {
        let ns = Netns::create(&format!("{}pod-{name}", topo.prefix()))?;
        let h = topo.host(host);
        let veth = format!("v{name}");
        if veth.len() > 15 {
            return Err(format!("pod name {name:?} too long for a veth name"));
        }
        let mtu = mtu.to_string();
        h.exec([
            "ip",
            "link",
            "add",
            &veth,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "netns",
            ns.name(),
        ])?;
        h.exec(["ip", "link", "set", &veth, "master", BRIDGE, "up"])?;
        ns.exec(["ip", "addr", "add", &format!("{ip}/{len}"), "dev", "eth0"])?;
        ns.exec(["ip", "link", "set", "eth0", "up"])?;
        ns.exec(["ip", "route", "add", "default", "via", &gateway.to_string()])?;
        Ok(Self { ns, ip })
    }

    /// The pod's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Whether `count` pings to `dst` get at least one answer (1 s timeout each).
    pub fn pings(&self, dst: Ipv4Addr, count: u32) -> bool {
        self.ns
            .exec([
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-W",
                "1",
                &dst.to_string(),
            ])
            .is_ok()
    }

    /// Moves `bytes` over TCP from this pod to `to` and checks that exactly those bytes
    /// arrived. Returns the seconds it took.
    pub fn transfer(&self, to: &Self, port: u16, bytes: usize) -> Result<f64, String> {
        verified_tcp(&self.ns, &to.ns, to.ip, port, bytes)
    }

    /// Sends one UDP datagram from this pod (from source `src`, an address of this pod) to
    /// `to`, port `port`, and returns the source `to` saw, or `None` if nothing arrived
    /// within `wait`.
    pub fn udp_source_seen(
        &self,
        src: Ipv4Addr,
        to: &Self,
        port: u16,
        wait: Duration,
    ) -> Result<Option<Ipv4Addr>, String> {
        let listen = format!(
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0',{port}))\ns.settimeout({})\nprint('listening',flush=True)\n\
             try:\n  d,a=s.recvfrom(2048)\n  print(a[0],flush=True)\n\
             except socket.timeout:\n  print('none',flush=True)\n",
            wait.as_secs_f64()
        );
        let mut server = to.ns.command("python3");
        server
            .args(["-c", &listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut server = Process::spawn(&mut server)?;
        let mut out = std::io::BufReader::new(server.0.stdout.take().ok_or("listener stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let send = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('{src}',0))\ns.sendto(b'pod',('{}',{port}))\n",
            to.ip
        );
        self.ns.exec(["python3", "-c", &send])?;
        line.clear();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        match line.trim() {
            "none" => Ok(None),
            seen => seen
                .parse()
                .map(Some)
                .map_err(|_| format!("listener said {seen:?}")),
        }
    }
}

/// Moves `bytes` over TCP from namespace `from` to `to_ip:port` served in namespace `to`, and
/// checks that exactly those bytes arrived (the harness's `tcp_verify.py`). Returns the seconds
/// it took.
pub fn verified_tcp(
    from: &Netns,
    to: &Netns,
    to_ip: Ipv4Addr,
    port: u16,
    bytes: usize,
) -> Result<f64, String> {
    let script = test_script("tcp_verify.py");
    let script = script.to_str().ok_or("script path")?;
    let mut server = to.command("python3");
    server
        .args([script, "server", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = Process::spawn(&mut server)?;
    let mut out = std::io::BufReader::new(server.0.stdout.take().ok_or("server stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "listening" {
        return Err(format!("server said {line:?}"));
    }
    let start = Instant::now();
    let sent = from.exec([
        "python3",
        script,
        "client",
        &to_ip.to_string(),
        &port.to_string(),
        &bytes.to_string(),
    ])?;
    let secs = start.elapsed().as_secs_f64();
    line.clear();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if sent.trim() != line.trim() || !sent.starts_with(&format!("{bytes} ")) {
        return Err(format!("sent {sent:?}, received {line:?}"));
    }
    Ok(secs)
}
