//! Declaring and building a multi-cloud topology in network namespaces.
//!
//! ```text
//!  host ns (eth0) ─┐                                         ┌─ host ns (eth0)
//!  host ns (eth0) ─┤ br0 [gw-<cloud>] wan ── c-<cloud> [inet] c-<cloud> ── wan [gw-<cloud>] br0 ┤
//!    private CIDR    NAT gateway      198.18.<i>.2   .1   internet router    ...            │
//! ```
//!
//! Cloud `i` (1-based, in declaration order) reaches the internet router over the transit
//! subnet `198.18.<i>.0/24` (RFC 2544 benchmarking space, never routed on the real internet):
//! the router holds `.1`, the gateway's WAN side `.2`. Host `k` (0-based) of a cloud gets the
//! private address `<cidr network> + 10 + k`. With [`Nat::OneToOne`] host `k` owns the public
//! address `198.18.<i>.<10 + k>`, mapped both ways as clouds map elastic/external IPs; with every
//! other [`Nat`] all hosts share the gateway's public address `198.18.<i>.2`.
//!
//! The NAT types follow Tailscale's natlab (`tstest/natlab/vnet`: One2One, EasyNAT, HardNAT),
//! built from netfilter rules on the gateway, plus a cloud that blocks UDP. Each one's mapping
//! behaviour is proven with real datagrams in `tests/tests/nat_types.rs`
//! ([`Topology::udp_mappings`]).

use std::{fmt, net::Ipv4Addr, path::PathBuf, process::Command};

use ipnet::Ipv4Net;

use crate::{
    cleanup::{next_prefix, sweep_stale},
    netns::Netns,
};

mod natlab;

/// How a cloud's gateway translates addresses between its private subnet and the internet.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Nat {
    /// Source NAT of every host to the gateway's one public address (like a cloud NAT
    /// gateway); hosts cannot be reached from outside unless they sent first. Plain Linux
    /// masquerade: it keeps a flow's source port when it can; unsolicited inbound datagrams
    /// are tracked and answered by the gateway itself (ICMP port unreachable).
    Masquerade,
    /// Each host owns a public address, translated both ways (like an elastic/external IP).
    OneToOne,
    /// natlab's EasyNAT: endpoint-independent, port-preserving mapping (a socket keeps its
    /// port towards every destination, as long as no other host behind the gateway uses the
    /// same port towards the same destination) and endpoint-dependent filtering: unsolicited
    /// inbound datagrams are dropped silently, before connection tracking keeps them (as cloud
    /// NAT gateways do).
    Easy,
    /// natlab's HardNAT: a new random public port for every destination address and port
    /// (endpoint-dependent mapping: nftables `masquerade fully-random`, iptables
    /// `--random-fully`), endpoint-dependent filtering. Two hosts behind such NATs can never
    /// reach each other directly.
    Hard,
    /// A cloud whose firewall drops every UDP datagram except those to and from the hosts
    /// named with [`TopologyBuilder::allow_udp_to`] (the controller, for its reflector);
    /// otherwise [`Nat::Easy`]. TCP passes.
    UdpBlocked,
}

impl Nat {
    /// Whether the cloud's hosts share the gateway's public address.
    pub fn shares_gateway_address(self) -> bool {
        self != Self::OneToOne
    }
}

/// One cloud: a private subnet of hosts behind a NAT gateway.
#[derive(Clone, Debug)]
pub struct CloudSpec {
    /// Short name (also used in namespace and interface names).
    pub name: String,
    /// The private subnet. Several clouds may use the same one.
    pub cidr: Ipv4Net,
    /// The gateway's NAT behaviour.
    pub nat: Nat,
    /// MTU of the links inside the cloud (hosts to gateway) and of its internet link.
    pub mtu: u32,
    /// Host names, in order.
    pub hosts: Vec<String>,
}

/// An error building a topology: what was attempted and why it failed.
#[derive(Debug)]
pub struct TopologyError(pub String);

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TopologyError {}

impl From<String> for TopologyError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Declares a topology; [`TopologyBuilder::build`] creates it.
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    clouds: Vec<CloudSpec>,
    mtu: Option<u32>,
    udp_allowed: Vec<String>,
    errors: Vec<String>,
}

impl TopologyBuilder {
    /// Adds a cloud with the private subnet `cidr` behind a gateway doing `nat`.
    pub fn cloud(mut self, name: &str, cidr: &str, nat: Nat) -> Self {
        match cidr.parse::<Ipv4Net>() {
            Ok(cidr) => self.clouds.push(CloudSpec {
                name: name.to_owned(),
                cidr: cidr.trunc(),
                nat,
                mtu: 0,
                hosts: vec![],
            }),
            Err(e) => self
                .errors
                .push(format!("cloud {name}: cidr {cidr:?}: {e}")),
        }
        self
    }

    /// Adds a host to an already declared cloud.
    pub fn host(mut self, cloud: &str, name: &str) -> Self {
        match self.clouds.iter_mut().find(|c| c.name == cloud) {
            Some(c) => c.hosts.push(name.to_owned()),
            None => self.errors.push(format!(
                "host {name}: no cloud named {cloud:?} declared before it"
            )),
        }
        self
    }

    /// Sets the MTU of every link (default 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Sets the MTU of one cloud's links, overriding [`TopologyBuilder::mtu`].
    pub fn cloud_mtu(mut self, cloud: &str, mtu: u32) -> Self {
        match self.clouds.iter_mut().find(|c| c.name == cloud) {
            Some(c) => c.mtu = mtu,
            None => self
                .errors
                .push(format!("cloud_mtu: no cloud named {cloud:?}")),
        }
        self
    }

    /// Lets UDP to and from `host` (declared anywhere in the topology) through the
    /// [`Nat::UdpBlocked`] clouds' firewalls: the controller's host, whose reflector answers
    /// on UDP while every other UDP path out of such a cloud is closed.
    pub fn allow_udp_to(mut self, host: &str) -> Self {
        self.udp_allowed.push(host.to_owned());
        self
    }

    /// Creates the namespaces, links, addresses, routes and NAT rules. On error everything
    /// created so far is removed.
    pub fn build(mut self) -> Result<Topology, TopologyError> {
        let default_mtu = self.mtu.unwrap_or(1500);
        for c in &mut self.clouds {
            if c.mtu == 0 {
                c.mtu = default_mtu;
            }
        }
        self.validate()?;
        sweep_stale();
        let prefix = next_prefix();
        let mut topo = Topology {
            prefix,
            hosts: vec![],
            gateways: vec![],
            internet: None,
            pin_dirs: vec![],
            udp_allowed: vec![],
        };
        let inet = Netns::create(&topo.ns_name("inet"))?;
        inet.sysctl("net.ipv4.ip_forward", "1")?;
        topo.internet = Some(inet);
        for (i, cloud) in self.clouds.iter().enumerate() {
            topo.add_cloud(i as u8 + 1, cloud)?;
        }
        topo.udp_allowed = self
            .udp_allowed
            .iter()
            .map(|h| topo.host(h).public_ip)
            .collect();
        for cloud in self.clouds.iter().filter(|c| c.nat == Nat::UdpBlocked) {
            topo.gateway(&cloud.name)
                .load_nft(&natlab::block_udp_rules(&topo.udp_allowed))?;
        }
        Ok(topo)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let mut errors = self.errors.clone();
        if self.clouds.is_empty() {
            errors.push("a topology needs at least one cloud".into());
        }
        if self.clouds.len() > 250 {
            errors.push("at most 250 clouds".into());
        }
        let mut names: Vec<&str> = vec!["inet"];
        for c in &self.clouds {
            let usable = (1u64 << (32 - c.cidr.prefix_len())).saturating_sub(12);
            if c.hosts.len() as u64 > usable.min(240) {
                errors.push(format!(
                    "cloud {}: {} hosts do not fit in {}",
                    c.name,
                    c.hosts.len(),
                    c.cidr
                ));
            }
            if !(576..=9000).contains(&c.mtu) {
                errors.push(format!(
                    "cloud {}: mtu {} outside 576..=9000",
                    c.name, c.mtu
                ));
            }
            for n in std::iter::once(&c.name).chain(&c.hosts) {
                if n.is_empty()
                    || n.len() > 12
                    || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    errors.push(format!("name {n:?}: use 1-12 characters [A-Za-z0-9-] (it becomes an interface name)"));
                }
                if names.contains(&n.as_str()) || n.starts_with("gw-") {
                    errors.push(format!("name {n:?} is used twice or reserved"));
                }
                names.push(n);
            }
        }
        for h in &self.udp_allowed {
            if !self.clouds.iter().any(|c| c.hosts.contains(h)) {
                errors.push(format!("allow_udp_to: no host named {h:?}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(TopologyError(errors.join("; ")))
        }
    }
}

/// A host: one network namespace with `eth0` in a cloud's private subnet.
#[derive(Debug)]
pub struct Host {
    name: String,
    cloud: String,
    private_ip: Ipv4Addr,
    prefix_len: u8,
    public_ip: Ipv4Addr,
    ns: Netns,
}

impl Host {
    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cloud it lives in.
    pub fn cloud(&self) -> &str {
        &self.cloud
    }

    /// Its address on `eth0`.
    pub fn private_ip(&self) -> Ipv4Addr {
        self.private_ip
    }

    /// Its private subnet's prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The address the internet sees it as (its own with 1:1 NAT, the gateway's with
    /// masquerade).
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    /// The underlay interface.
    pub fn iface(&self) -> &'static str {
        "eth0"
    }

    /// The host's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// A command that runs `program` on this host.
    pub fn command(&self, program: &str) -> Command {
        self.ns.command(program)
    }

    /// Runs `argv` on this host; `Err` carries the command and its stderr.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(
        &self,
        argv: impl IntoIterator<Item = S>,
    ) -> Result<String, String> {
        self.ns.exec(argv)
    }

    /// Whether `count` pings to `dst` (200 ms apart, 1 s timeout each) all got replies.
    pub fn pings(&self, dst: Ipv4Addr, count: u32) -> bool {
        let (count, dst) = (count.to_string(), dst.to_string());
        self.exec([
            "ping", "-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", &dst,
        ])
        .is_ok()
    }
}

/// A built topology. Dropping it kills every process in its namespaces, removes the bpffs pin
/// directories it handed out and deletes the namespaces (which removes their links).
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    // Field order is drop order: pins first (detaching eBPF), then hosts, gateways, internet.
    pin_dirs: Vec<PathBuf>,
    hosts: Vec<Host>,
    gateways: Vec<(String, Netns)>,
    internet: Option<Netns>,
    /// Public addresses [`Nat::UdpBlocked`] clouds pass UDP to and from.
    udp_allowed: Vec<Ipv4Addr>,
}

impl Topology {
    /// Starts declaring a topology.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The prefix of every namespace and pin directory name of this topology.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The host called `name`.
    ///
    /// # Panics
    /// If there is none (a typo in the test).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host named {name:?}"))
    }

    /// All hosts, in declaration order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The internet router's namespace.
    pub fn internet(&self) -> &Netns {
        self.internet
            .as_ref()
            .expect("built topologies have an internet router")
    }

    /// The NAT gateway namespace of `cloud`.
    ///
    /// # Panics
    /// If there is no such cloud.
    pub fn gateway(&self, cloud: &str) -> &Netns {
        self.gateways
            .iter()
            .find(|(c, _)| c == cloud)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("no cloud {cloud:?}"))
    }

    /// Gives the masquerading gateway of `cloud` a new public address (as when a NAT gateway
    /// or a suspended VM comes back with another IP): the old address and every NAT mapping
    /// through it disappear. Returns the new address, which the cloud's hosts now share.
    ///
    /// # Panics
    /// If `cloud` does not masquerade.
    pub fn readdress_gateway(&mut self, cloud: &str) -> Result<Ipv4Addr, String> {
        let old = self
            .hosts
            .iter()
            .find(|h| h.cloud == cloud)
            .map(|h| h.public_ip)
            .ok_or_else(|| format!("no host in cloud {cloud:?}"))?;
        let [a, b, c, d] = old.octets();
        assert_eq!(d, 2, "readdress_gateway needs a masquerading cloud");
        let new = Ipv4Addr::new(a, b, c, d + 1);
        let gw = self.gateway(cloud);
        gw.exec(["ip", "addr", "flush", "dev", "wan"])?;
        gw.exec(["ip", "addr", "add", &format!("{new}/24"), "dev", "wan"])?;
        gw.exec([
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &Ipv4Addr::new(a, b, c, 1).to_string(),
        ])?;
        // Removing the address also makes the kernel drop the masquerade mappings through it.
        for h in self.hosts.iter_mut().filter(|h| h.cloud == cloud) {
            h.public_ip = new;
        }
        Ok(new)
    }

    /// Moves the 1:1 public address of `host` to a fresh one at its gateway (as when a cloud
    /// re-associates an elastic IP, or a suspended VM comes back with another): nothing on the
    /// host changes, so it cannot see the move. The translation becomes stateless (`notrack`
    /// and address rewrites, as a cloud's 1:1 NAT is), so no connection-tracking entry of
    /// the old mapping survives; traffic to every earlier address of the host is dropped.
    /// Returns the new address. Can be called again (each move takes another address).
    ///
    /// # Panics
    /// If `host` is not behind 1:1 NAT.
    pub fn move_public_ip(&mut self, host: &str) -> Result<Ipv4Addr, String> {
        let h = self.host(host);
        let (old, private, cloud) = (h.public_ip, h.private_ip, h.cloud.clone());
        let [a, b, c, d] = old.octets();
        assert!(d >= 10 && d != 2, "move_public_ip needs a 1:1 NAT host");
        // Hosts own .10+k; moved addresses live at .110 and up (never an earlier one).
        let new = Ipv4Addr::new(a, b, c, if d < 110 { d + 100 } else { d + 1 });
        // The address the host started with: `.10+k` for private address `<cidr>+10+k`.
        let offset = u32::from(private) & (u32::MAX >> h.prefix_len);
        let original = Ipv4Addr::new(a, b, c, u8::try_from(offset).expect("host offset < 256"));
        let gw = self.gateway(&cloud);
        let table = format!("move_{host}");
        let rules = format!(
            "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n \
             chain pre {{ type filter hook prerouting priority raw;\n  \
             iifname \"wan\" ip daddr {{ {original}, {a}.{b}.{c}.110-{a}.{b}.{c}.255 }} ip daddr != {new} drop\n  \
             iifname \"wan\" ip daddr {new} notrack ip daddr set {private}\n  \
             iifname \"br0\" ip saddr {private} notrack\n }}\n \
             chain post {{ type filter hook postrouting priority srcnat;\n  \
             oifname \"wan\" ip saddr {private} ip saddr set {new}\n }}\n}}\n"
        );
        // The new address answers ARP before anything is sent from it (as a cloud routes it
        // at once); the rules then switch both directions in one transaction.
        gw.exec(["ip", "addr", "add", &format!("{new}/32"), "dev", "wan"])?;
        gw.load_nft(&rules)?;
        gw.exec(["ip", "addr", "del", &format!("{old}/32"), "dev", "wan"])?;
        self.hosts
            .iter_mut()
            .find(|h| h.name == host)
            .expect("host exists")
            .public_ip = new;
        Ok(new)
    }

    /// Sets the MTU of `cloud`'s internet link (its gateway's WAN side and the internet
    /// router's side): a hop in the middle of every path into or out of the cloud, beyond the
    /// hosts' own links (whose MTU the agents see).
    pub fn set_wan_mtu(&self, cloud: &str, mtu: u32) -> Result<(), String> {
        let mtu = mtu.to_string();
        self.gateway(cloud)
            .exec(["ip", "link", "set", "wan", "mtu", &mtu])?;
        self.internet()
            .exec(["ip", "link", "set", &format!("c-{cloud}"), "mtu", &mtu])?;
        Ok(())
    }

    /// Makes `cloud`'s gateway and the internet router drop every ICMP "fragmentation needed"
    /// they send or forward, as firewalls on real paths do: a packet too big for
    /// [`Topology::set_wan_mtu`]'s hop then vanishes without a word.
    pub fn filter_frag_needed(&self, cloud: &str) -> Result<(), String> {
        let rules = "table ip no_frag_needed {\n\
                     chain output { type filter hook output priority 0;\n\
                      icmp type destination-unreachable icmp code frag-needed drop\n }\n\
                     chain forward { type filter hook forward priority 0;\n\
                      icmp type destination-unreachable icmp code frag-needed drop\n }\n}\n";
        self.gateway(cloud).load_nft(rules)?;
        self.internet().load_nft(rules)?;
        Ok(())
    }

    /// A bpffs directory (not yet created) for `host`'s pins, removed when the topology drops.
    pub fn bpf_pin_dir(&mut self, host: &str) -> PathBuf {
        let dir = PathBuf::from(format!("/sys/fs/bpf/{}{host}", self.prefix));
        self.pin_dirs.push(dir.clone());
        dir
    }

    fn ns_name(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn add_cloud(&mut self, index: u8, cloud: &CloudSpec) -> Result<(), TopologyError> {
        let gw = Netns::create(&self.ns_name(&format!("gw-{}", cloud.name)))?;
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        let inet = self.internet();
        let mtu = cloud.mtu.to_string();
        let router_if = format!("c-{}", cloud.name);
        veth(&gw, "wan", inet, &router_if, &mtu)?;
        let transit = |host: u8| Ipv4Addr::new(198, 18, index, host);
        inet.exec([
            "ip",
            "addr",
            "add",
            &format!("{}/24", transit(1)),
            "dev",
            &router_if,
        ])?;
        gw.exec([
            "ip",
            "addr",
            "add",
            &format!("{}/24", transit(2)),
            "dev",
            "wan",
        ])?;
        gw.exec([
            "ip",
            "route",
            "add",
            "default",
            "via",
            &transit(1).to_string(),
        ])?;

        let lan_gw = nth_addr(cloud.cidr, 1);
        gw.exec(["ip", "link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
        gw.exec([
            "ip",
            "addr",
            "add",
            &format!("{lan_gw}/{}", cloud.cidr.prefix_len()),
            "dev",
            "br0",
        ])?;
        gw.exec(["ip", "link", "set", "br0", "up"])?;

        let mut one_to_one = vec![];
        for (k, name) in cloud.hosts.iter().enumerate() {
            let ns = Netns::create(&self.ns_name(name))?;
            let port = format!("h-{name}");
            veth(&ns, "eth0", &gw, &port, &mtu)?;
            gw.exec(["ip", "link", "set", &port, "master", "br0"])?;
            let private_ip = nth_addr(cloud.cidr, 10 + k as u32);
            ns.exec([
                "ip",
                "addr",
                "add",
                &format!("{private_ip}/{}", cloud.cidr.prefix_len()),
                "dev",
                "eth0",
            ])?;
            ns.exec(["ip", "route", "add", "default", "via", &lan_gw.to_string()])?;
            let public_ip = match cloud.nat {
                Nat::Masquerade | Nat::Easy | Nat::Hard | Nat::UdpBlocked => transit(2),
                Nat::OneToOne => {
                    let public = transit(10 + k as u8);
                    gw.exec(["ip", "addr", "add", &format!("{public}/32"), "dev", "wan"])?;
                    one_to_one.push((public, private_ip));
                    public
                }
            };
            self.hosts.push(Host {
                name: name.clone(),
                cloud: cloud.name.clone(),
                private_ip,
                prefix_len: cloud.cidr.prefix_len(),
                public_ip,
                ns,
            });
        }
        gw.load_nft(&natlab::nat_rules(cloud.cidr, cloud.nat, &one_to_one))?;
        self.gateways.push((cloud.name.clone(), gw));
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for dir in &self.pin_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Creates a veth pair with `a_if` in `a` and `b_if` in `b`, both up with `mtu`. The pair is
/// created directly inside the namespaces, so it never appears in the host's namespace.
fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str, mtu: &str) -> Result<(), String> {
    crate::run_checked(Command::new("ip").args([
        "link",
        "add",
        "name",
        a_if,
        "netns",
        a.name(),
        "mtu",
        mtu,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
        "mtu",
        mtu,
    ]))?;
    a.exec(["ip", "link", "set", a_if, "up"])?;
    b.exec(["ip", "link", "set", b_if, "up"])?;
    Ok(())
}

fn nth_addr(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}
