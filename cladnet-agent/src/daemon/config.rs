//! Agent configuration: a TOML file, overridden field by field by command-line flags.
//!
//! ```toml
//! controllers = ["https://ctl-1.example:8053", "https://ctl-2.example:8053"]
//! network = "prod"
//! join_token_file = "/etc/cladnet/join.token"
//! interface = "cladnet0"
//! listen_port = 8055
//! data_dir = "/var/lib/cladnet-agent"
//! metrics_listen = "127.0.0.1:9412"
//! # Forward relayed WireGuard traffic for members that cannot reach each other directly
//! # (true, false, or "auto": while this host's endpoint is 1:1 or public).
//! relay = true
//! # Per-member limits of the relay (defaults: 250000 packets/s, burst 25000; 312500000
//! # bytes/s, burst 31250000). A member over them has its frames refused and counted.
//! relay_packets_per_sec = 20000
//! relay_bytes_per_sec = 25000000
//! # Prefixes routed through this host (a pod network, a subnet behind it); the file holds
//! # more (e.g. the Kubernetes node's podCIDR) and is re-read when it changes.
//! advertise_routes = ["192.168.50.0/24"]
//! advertise_routes_file = "/run/cladnet/podcidr"
//!
//! [site]
//! provider = "aws"
//! region = "ap-northeast-2"
//! vpc = "vpc-0a1b"
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use cladnet_common::wire::TUNNEL_PORT;
use cladnet_core::relay::Limits;
use cladnet_proto::tls::{ClientTls, Pin};

use crate::ebpf::RxHook;
use serde::Deserialize;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("config {field}: {reason}")]
pub struct ConfigError {
    /// The field (file key or flag name).
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

/// Site labels (cb-network's cloud information); empty = unknown.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Cloud provider, e.g. `aws`.
    #[serde(default)]
    pub provider: String,
    /// Region.
    #[serde(default)]
    pub region: String,
    /// Availability zone.
    #[serde(default)]
    pub zone: String,
    /// VPC / VNet id.
    #[serde(default)]
    pub vpc: String,
    /// Subnet id.
    #[serde(default)]
    pub subnet: String,
}

/// Every setting, each optional: what a file or the flags give.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Controller endpoint (http:// or https:// URL); repeat for failover.
    #[arg(long = "controller", value_name = "URL")]
    #[serde(default)]
    pub controllers: Vec<String>,
    /// Network (cladnet id) to join.
    #[arg(long)]
    pub network: Option<String>,
    /// Join token (prefer --join-token-file: command lines are visible to other users).
    #[arg(long, env = "CLADNET_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// File holding the join token.
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// CA certificate (PEM) an `https://` controller's certificate must chain to, instead of
    /// the system roots. Not needed when the join token carries a pin.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Pin (`sha256:<hex>`, from `cladnet-controller show-pin`) of the controller's key, for a
    /// join token without one; overrides the token's.
    #[arg(long)]
    pub controller_pin: Option<String>,
    /// Overlay interface name.
    #[arg(long)]
    pub interface: Option<String>,
    /// Tunnel UDP port (WireGuard and PLAIN share it).
    #[arg(long)]
    pub listen_port: Option<u16>,
    /// Data directory (identity: node id and private key, mode 0600).
    #[arg(long, env = "CLADNET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for the Prometheus /metrics endpoint ("off" disables it).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Reflector address (UDP); default: the first controller's host and port.
    #[arg(long)]
    pub reflector: Option<String>,
    /// Seconds between public endpoint probes (also re-probed on address changes).
    #[arg(long)]
    pub probe_interval_secs: Option<u64>,
    /// Underlay MTU; default: the MTU of the route towards the controller.
    #[arg(long)]
    pub underlay_mtu: Option<u32>,
    /// Host name reported to the controller; default: the system's.
    #[arg(long)]
    pub host_name: Option<String>,
    /// Dataplane engine: auto (eBPF for PLAIN links where it attaches, else userspace),
    /// ebpf (fail if it cannot attach) or userspace.
    #[arg(long)]
    pub dataplane: Option<String>,
    /// bpffs directory for the eBPF engine's pinned programs and maps (one per agent).
    #[arg(long)]
    pub bpf_pin_dir: Option<PathBuf>,
    /// Where the eBPF receive program runs: auto (XDP driver, else XDP generic, else TC
    /// ingress; TC first on veth devices), xdp-driver, xdp-generic or tc.
    #[arg(long)]
    pub rx_hook: Option<String>,
    /// Peers the eBPF maps hold (default 16384; a network with more peers leaves the rest to
    /// the userspace engine, with an error in the log). Maps pinned by an earlier agent process
    /// keep their size until the dataplane is detached.
    #[arg(long)]
    pub ebpf_max_peers: Option<u32>,
    /// Serve as a relay for this network's members that cannot reach each other directly:
    /// true (give it to hosts with a public, 1:1 endpoint), false, or auto (serve while the
    /// reflector's other-port test shows this host's endpoint takes datagrams from anywhere,
    /// as a 1:1 NAT or a public address does).
    #[arg(long, value_name = "true|false|auto")]
    pub relay: Option<RelayMode>,
    /// As a relay: packets per second each member may send through it (default 250000).
    #[arg(long)]
    pub relay_packets_per_sec: Option<u64>,
    /// As a relay: packets a member that was quiet may send at once (default 25000).
    #[arg(long)]
    pub relay_packet_burst: Option<u64>,
    /// As a relay: bytes per second each member may send through it (default 312500000,
    /// 2.5 Gbit/s).
    #[arg(long)]
    pub relay_bytes_per_sec: Option<u64>,
    /// As a relay: bytes a member that was quiet may send at once (default 31250000; at least
    /// 65535, one largest datagram).
    #[arg(long)]
    pub relay_byte_burst: Option<u64>,
    /// Packet workers of the userspace engine (each a TUN queue and a tunnel socket with a
    /// thread per direction); default: one per core, at most 8.
    #[arg(long)]
    pub packet_workers: Option<usize>,
    /// Site: cloud provider.
    #[arg(long = "provider")]
    #[serde(skip)]
    pub provider: Option<String>,
    /// Site: region.
    #[arg(long = "region")]
    #[serde(skip)]
    pub region: Option<String>,
    /// Site: availability zone.
    #[arg(long = "zone")]
    #[serde(skip)]
    pub zone: Option<String>,
    /// Site: VPC / VNet id.
    #[arg(long = "vpc")]
    #[serde(skip)]
    pub vpc: Option<String>,
    /// Site: subnet id.
    #[arg(long = "subnet")]
    #[serde(skip)]
    pub subnet: Option<String>,
    /// Site labels (file only; flags: --provider, --region, --zone, --vpc, --subnet).
    #[arg(skip)]
    #[serde(default)]
    pub site: SiteConfig,
    /// IPv4 prefix to route through this host, e.g. a Kubernetes node's podCIDR or a subnet
    /// behind it (comma-separated or repeated; replaces the file's list). The controller
    /// validates and approves it.
    #[arg(
        long = "advertise-routes",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub advertise_routes: Vec<String>,
    /// File of more prefixes to advertise (whitespace- or comma-separated, `#` comments),
    /// re-read when it changes: e.g. the node's podCIDR written by a script (docs/kubernetes.md).
    #[arg(long, value_name = "PATH")]
    pub advertise_routes_file: Option<PathBuf>,
}

/// The agent's resolved configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Controller endpoints, in failover order.
    pub controllers: Vec<String>,
    /// Network id.
    pub network: String,
    /// Join token.
    pub join_token: String,
    /// How `https://` controllers are trusted (pin, CA file or system roots).
    pub tls: ClientTls,
    /// Overlay interface name.
    pub interface: String,
    /// Tunnel UDP port.
    pub listen_port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Metrics listen address, if enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Reflector `host:port` (resolved at start).
    pub reflector: String,
    /// Probe interval.
    pub probe_interval: Duration,
    /// Underlay MTU override.
    pub underlay_mtu: Option<u32>,
    /// Host name override.
    pub host_name: Option<String>,
    /// Site labels.
    pub site: SiteConfig,
    /// Requested dataplane engine.
    pub dataplane: DataplaneChoice,
    /// bpffs pin directory of the eBPF engine.
    pub bpf_pin_dir: PathBuf,
    /// The eBPF engine's receive hook; `None` (`auto`): XDP driver → XDP generic → TC
    /// ingress, or TC first on veth devices.
    pub rx_hook: Option<RxHook>,
    /// Peers the eBPF maps hold.
    pub ebpf_max_peers: u32,
    /// Whether to serve as a relay for the network (`relay = true`, `false` or `"auto"`).
    pub relay: RelayMode,
    /// The per-member limits of the relay (when it serves as one).
    pub relay_limits: Limits,
    /// Packet workers of the userspace engine.
    pub packet_workers: usize,
    /// Prefixes to advertise (checked for shape; the controller validates them further).
    pub advertise_routes: Vec<ipnet::Ipv4Net>,
    /// File of more prefixes to advertise, followed while the agent runs.
    pub advertise_routes_file: Option<PathBuf>,
}

/// Whether an agent serves as a relay (`relay`).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum RelayMode {
    /// Never (`false`, the default).
    #[default]
    Off,
    /// Always (`true`).
    On,
    /// While this host's endpoint takes datagrams from sources it never sent to (`"auto"`;
    /// the rule is `cladnet_core::relay::AutoRelay`).
    Auto,
}

impl std::str::FromStr for RelayMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "true" => Ok(Self::On),
            "false" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            other => Err(format!("{other:?} is not one of true, false, auto")),
        }
    }
}

impl<'de> Deserialize<'de> for RelayMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::On),
            Raw::Bool(false) => Ok(Self::Off),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Which dataplane engine to run.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum DataplaneChoice {
    /// The kernel path where it attaches (XDP driver, XDP generic, TC), else userspace.
    #[default]
    Auto,
    /// The kernel path, or fail.
    Ebpf,
    /// Userspace only.
    Userspace,
}

/// Most packet workers a configuration may ask for (each holds a TUN queue, a socket and two
/// threads; the kernel allows 256 TUN queues).
pub const MAX_PACKET_WORKERS: usize = 64;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cladnet-agent";
/// Default metrics address.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9412";
/// Default overlay interface.
pub const DEFAULT_INTERFACE: &str = "cladnet0";

impl Settings {
    /// Reads a TOML file; unknown keys are errors (a typo must not silently fall back to a
    /// default).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("config", format!("reading {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| bad("config", format!("{}: {e}", path.display())))
    }

    /// `self` with every field that `over` sets replaced.
    pub fn overridden_by(self, over: Self) -> Self {
        let site_field = |flag: Option<String>, file: String| flag.unwrap_or(file);
        Self {
            controllers: if over.controllers.is_empty() {
                self.controllers
            } else {
                over.controllers
            },
            network: over.network.or(self.network),
            join_token: over.join_token.or(self.join_token),
            join_token_file: over.join_token_file.or(self.join_token_file),
            ca_cert: over.ca_cert.or(self.ca_cert),
            controller_pin: over.controller_pin.or(self.controller_pin),
            interface: over.interface.or(self.interface),
            listen_port: over.listen_port.or(self.listen_port),
            data_dir: over.data_dir.or(self.data_dir),
            metrics_listen: over.metrics_listen.or(self.metrics_listen),
            reflector: over.reflector.or(self.reflector),
            probe_interval_secs: over.probe_interval_secs.or(self.probe_interval_secs),
            underlay_mtu: over.underlay_mtu.or(self.underlay_mtu),
            host_name: over.host_name.or(self.host_name),
            dataplane: over.dataplane.or(self.dataplane),
            bpf_pin_dir: over.bpf_pin_dir.or(self.bpf_pin_dir),
            rx_hook: over.rx_hook.or(self.rx_hook),
            ebpf_max_peers: over.ebpf_max_peers.or(self.ebpf_max_peers),
            relay: over.relay.or(self.relay),
            relay_packets_per_sec: over.relay_packets_per_sec.or(self.relay_packets_per_sec),
            relay_packet_burst: over.relay_packet_burst.or(self.relay_packet_burst),
            relay_bytes_per_sec: over.relay_bytes_per_sec.or(self.relay_bytes_per_sec),
            relay_byte_burst: over.relay_byte_burst.or(self.relay_byte_burst),
            packet_workers: over.packet_workers.or(self.packet_workers),
            advertise_routes: if over.advertise_routes.is_empty() {
                self.advertise_routes
            } else {
                over.advertise_routes
            },
            advertise_routes_file: over.advertise_routes_file.or(self.advertise_routes_file),
            provider: None,
            region: None,
            zone: None,
            vpc: None,
            subnet: None,
            site: SiteConfig {
                provider: site_field(over.provider, self.site.provider),
                region: site_field(over.region, self.site.region),
                zone: site_field(over.zone, self.site.zone),
                vpc: site_field(over.vpc, self.site.vpc),
                subnet: site_field(over.subnet, self.site.subnet),
            },
        }
    }

    /// Checks every field and fills in defaults.
    pub fn resolve(self) -> Result<AgentConfig, ConfigError> {
        if self.controllers.is_empty() {
            return Err(bad("controllers", "at least one controller URL is needed"));
        }
        for c in &self.controllers {
            if !(c.starts_with("http://") || c.starts_with("https://")) {
                return Err(bad(
                    "controllers",
                    format!("{c:?} is not an http:// or https:// URL"),
                ));
            }
        }
        let network = self
            .network
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("network", "the network (cladnet id) to join is required"))?;
        let join_token = match (self.join_token, &self.join_token_file) {
            (Some(t), _) if !t.trim().is_empty() => t.trim().to_owned(),
            (_, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    bad(
                        "join_token_file",
                        format!("reading {}: {e}", path.display()),
                    )
                })?
                .trim()
                .to_owned(),
            _ => {
                return Err(bad(
                    "join_token",
                    "a join token (or join_token_file) is required",
                ));
            }
        };
        if join_token.is_empty() {
            return Err(bad("join_token", "is empty"));
        }
        let tls = client_tls(
            &self.controllers,
            self.controller_pin.as_deref(),
            self.ca_cert.as_deref(),
            &join_token,
        )?;
        let interface = self
            .interface
            .unwrap_or_else(|| DEFAULT_INTERFACE.to_owned());
        if interface.is_empty()
            || interface.len() > 15
            || interface
                .bytes()
                .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(bad(
                "interface",
                format!("{interface:?}: 1 to 15 bytes without '/', spaces or NUL"),
            ));
        }
        let listen_port = self.listen_port.unwrap_or(TUNNEL_PORT);
        if listen_port == 0 {
            return Err(bad("listen_port", "must be 1..=65535"));
        }
        let metrics_listen =
            match self.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS) {
                "off" | "" => None,
                s => Some(s.parse().map_err(|_| {
                    bad("metrics_listen", format!("{s:?} is not ip:port or \"off\""))
                })?),
            };
        // Checked for shape only: names are resolved when the agent starts (and retried), so
        // a VM booting before its resolver is ready does not fail on configuration.
        let reflector = match &self.reflector {
            Some(r) => check_host_port("reflector", r)?,
            None => check_host_port("controllers", authority(&self.controllers[0]))?,
        };
        let probe_interval = Duration::from_secs(self.probe_interval_secs.unwrap_or(5));
        if probe_interval.is_zero() || probe_interval > Duration::from_secs(3600) {
            return Err(bad("probe_interval_secs", "must be 1..=3600"));
        }
        if let Some(m) = self.underlay_mtu
            && !(576..=65535).contains(&m)
        {
            return Err(bad("underlay_mtu", format!("{m} is not in 576..=65535")));
        }
        let dataplane = match self.dataplane.as_deref().unwrap_or("auto") {
            "auto" => DataplaneChoice::Auto,
            "ebpf" => DataplaneChoice::Ebpf,
            "userspace" => DataplaneChoice::Userspace,
            other => {
                return Err(bad(
                    "dataplane",
                    format!("{other:?} is not one of auto, ebpf, userspace"),
                ));
            }
        };
        let bpf_pin_dir = self
            .bpf_pin_dir
            .unwrap_or_else(|| PathBuf::from(cladnet_common::maps::PIN_ROOT));
        if !bpf_pin_dir.is_absolute() {
            return Err(bad(
                "bpf_pin_dir",
                format!("{} is not an absolute path", bpf_pin_dir.display()),
            ));
        }
        let rx_hook = RxHook::parse_choice(self.rx_hook.as_deref().unwrap_or("auto"))
            .map_err(|e| bad("rx_hook", e))?;
        let ebpf_max_peers = self
            .ebpf_max_peers
            .unwrap_or(cladnet_common::maps::DEFAULT_MAX_PEERS);
        let limit = cladnet_common::maps::MAX_PEERS_LIMIT;
        if !(1..=limit).contains(&ebpf_max_peers) {
            return Err(bad(
                "ebpf_max_peers",
                format!("{ebpf_max_peers} is not in 1..={limit}"),
            ));
        }
        let packet_workers = self
            .packet_workers
            .unwrap_or_else(crate::engine::userspace::default_workers);
        if !(1..=MAX_PACKET_WORKERS).contains(&packet_workers) {
            return Err(bad(
                "packet_workers",
                format!("{packet_workers} is not in 1..={MAX_PACKET_WORKERS}"),
            ));
        }
        let relay_limits = relay_limits(
            self.relay_packets_per_sec,
            self.relay_packet_burst,
            self.relay_bytes_per_sec,
            self.relay_byte_burst,
        )?;
        let advertise_routes =
            crate::routes::parse_list("advertise_routes", &self.advertise_routes)?;
        Ok(AgentConfig {
            advertise_routes,
            advertise_routes_file: self.advertise_routes_file,
            rx_hook,
            ebpf_max_peers,
            relay: self.relay.unwrap_or_default(),
            relay_limits,
            packet_workers,
            bpf_pin_dir,
            dataplane,
            controllers: self.controllers,
            network,
            join_token,
            tls,
            interface,
            listen_port,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            metrics_listen,
            reflector,
            probe_interval,
            underlay_mtu: self.underlay_mtu,
            host_name: self.host_name,
            site: self.site,
        })
    }
}

/// The relay's per-member limits: the defaults with what the configuration sets, each checked
/// against [`Limits::RANGE_PACKETS`] or [`Limits::RANGE_BYTES`].
fn relay_limits(
    packets_per_sec: Option<u64>,
    packet_burst: Option<u64>,
    bytes_per_sec: Option<u64>,
    byte_burst: Option<u64>,
) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let check = |field: &'static str,
                 value: Option<u64>,
                 default: u64,
                 range: std::ops::RangeInclusive<u64>| {
        let v = value.unwrap_or(default);
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(bad(
                field,
                format!("{v} is not in {}..={}", range.start(), range.end()),
            ))
        }
    };
    Ok(Limits {
        packets_per_sec: check(
            "relay_packets_per_sec",
            packets_per_sec,
            d.packets_per_sec,
            Limits::RANGE_PACKETS,
        )?,
        packet_burst: check(
            "relay_packet_burst",
            packet_burst,
            d.packet_burst,
            Limits::RANGE_PACKETS,
        )?,
        bytes_per_sec: check(
            "relay_bytes_per_sec",
            bytes_per_sec,
            d.bytes_per_sec,
            Limits::RANGE_BYTES,
        )?,
        byte_burst: check(
            "relay_byte_burst",
            byte_burst,
            d.byte_burst,
            Limits::RANGE_BYTES,
        )?,
    })
}

/// The trust for `https://` controllers: `controller_pin`, else the join token's pin, else
/// `ca_cert`, else the system roots. A pin or CA file with an `http://` controller is refused:
/// it says the controller serves TLS, so the URL is wrong.
fn client_tls(
    controllers: &[String],
    controller_pin: Option<&str>,
    ca_cert: Option<&Path>,
    join_token: &str,
) -> Result<ClientTls, ConfigError> {
    // Other shapes are left to the controller to refuse; only a pin field that is not a
    // pin is caught here, as it would otherwise silently fall back to the system roots.
    let token_pin = match cladnet_proto::tls::parse_join_token(join_token) {
        Some(parts) => parts.pin,
        None if join_token.split('.').count() == 4 => {
            return Err(bad(
                "join_token",
                "its fourth field is not a pin (cnj.<id>.<secret>.<64 hex digits>)",
            ));
        }
        None => None,
    };
    let pin = match &controller_pin {
        Some(p) => Some(
            p.parse::<Pin>()
                .map_err(|e| bad("controller_pin", e.to_string()))?,
        ),
        None => token_pin,
    };
    let tls = ClientTls::new(pin, ca_cert).map_err(|e| bad("ca_cert", e.to_string()))?;
    if let Some(plain) = controllers.iter().find(|c| c.starts_with("http://"))
        && (pin.is_some() || ca_cert.is_some())
    {
        let (field, what) = match (&controller_pin, token_pin, &ca_cert) {
            (Some(_), _, _) => ("controller_pin", "controller_pin is set"),
            (None, Some(_), _) => (
                "controllers",
                "the join token pins the controller's TLS key",
            ),
            _ => ("ca_cert", "ca_cert is set"),
        };
        return Err(bad(
            field,
            format!("{what}, but {plain} is not TLS; use https://"),
        ));
    }
    Ok(tls)
}

/// `host:port` of a URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

fn check_host_port(field: &'static str, s: &str) -> Result<String, ConfigError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad(field, format!("{s:?} is not host:port")))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad(field, format!("{s:?} is not host:port")));
    }
    Ok(s.to_owned())
}

/// Resolves `host:port` to its first IPv4 address.
pub async fn resolve_ipv4(s: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(s)
        .await?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| std::io::Error::other(format!("{s} has no IPv4 address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings {
            controllers: vec!["http://192.0.2.1:8053".into()],
            network: Some("net".into()),
            join_token: Some("cnj.a.b".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_fill_in() {
        let c = base().resolve().unwrap();
        assert_eq!(c.interface, "cladnet0");
        assert_eq!(c.listen_port, 8055);
        assert_eq!(
            c.packet_workers,
            crate::engine::userspace::default_workers()
        );
        assert_eq!(c.reflector, "192.0.2.1:8053");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9412".parse().unwrap()));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn a_file_is_parsed_and_flags_win() {
        let file: Settings = toml::from_str(
            r#"
            controllers = ["http://192.0.2.1:8053", "http://192.0.2.2:8053"]
            network = "prod"
            join_token = "cnj.x.y"
            listen_port = 9000
            metrics_listen = "off"
            [site]
            provider = "aws"
            vpc = "vpc-1"
            "#,
        )
        .unwrap();
        let flags = Settings {
            listen_port: Some(9100),
            vpc: Some("vpc-2".into()),
            ..Settings::default()
        };
        let c = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(c.controllers.len(), 2);
        assert_eq!(c.listen_port, 9100);
        assert_eq!(c.metrics_listen, None);
        assert_eq!(
            (c.site.provider.as_str(), c.site.vpc.as_str()),
            ("aws", "vpc-2")
        );
    }

    #[test]
    fn relay_is_true_false_or_auto() {
        let parse = |v: &str| toml::from_str::<Settings>(&format!("relay = {v}")).map(|s| s.relay);
        assert_eq!(parse("true").unwrap(), Some(RelayMode::On));
        assert_eq!(parse("false").unwrap(), Some(RelayMode::Off));
        assert_eq!(parse("\"auto\"").unwrap(), Some(RelayMode::Auto));
        let e = parse("\"sometimes\"").unwrap_err().to_string();
        assert!(e.contains("not one of true, false, auto"), "{e}");
        assert_eq!(base().resolve().unwrap().relay, RelayMode::Off);
        assert_eq!("auto".parse(), Ok(RelayMode::Auto));
        assert!("yes".parse::<RelayMode>().is_err());
    }

    #[test]
    fn relay_limits_from_file_and_flags() {
        assert_eq!(base().resolve().unwrap().relay_limits, Limits::default());
        let file: Settings = toml::from_str(
            r#"
            controllers = ["http://192.0.2.1:8053"]
            network = "net"
            join_token = "cnj.a.b"
            relay = true
            relay_packets_per_sec = 500
            relay_byte_burst = 100000
            "#,
        )
        .unwrap();
        let flags = Settings {
            relay_packets_per_sec: Some(300),
            relay_packet_burst: Some(50),
            relay_bytes_per_sec: Some(70_000),
            ..Settings::default()
        };
        let c = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(c.relay, RelayMode::On);
        assert_eq!(
            c.relay_limits,
            Limits {
                packets_per_sec: 300,
                packet_burst: 50,
                bytes_per_sec: 70_000,
                byte_burst: 100_000,
            }
        );
    }

    #[test]
    fn advertised_routes_from_file_and_flags() {
        let file: Settings = toml::from_str(
            r#"
            controllers = ["http://192.0.2.1:8053"]
            network = "net"
            join_token = "cnj.a.b"
            advertise_routes = ["192.168.50.0/24"]
            advertise_routes_file = "/run/cladnet/podcidr"
            "#,
        )
        .unwrap();
        let c = file.clone().resolve().unwrap();
        assert_eq!(c.advertise_routes, vec!["192.168.50.0/24".parse().unwrap()]);
        assert_eq!(
            c.advertise_routes_file.as_deref(),
            Some(Path::new("/run/cladnet/podcidr"))
        );
        let flags = Settings {
            advertise_routes: vec!["10.244.3.0/24".into()],
            ..Settings::default()
        };
        let c = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(c.advertise_routes, vec!["10.244.3.0/24".parse().unwrap()]);
        let e = Settings {
            advertise_routes: vec!["10.244.3.1/24".into()],
            ..base()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config advertise_routes: entry 1: ") && e.contains("did you mean"),
            "{e}"
        );
    }

    #[test]
    fn trust_comes_from_the_token_pin_the_flag_or_a_ca_file() {
        let hex = "ab".repeat(32);
        let https = vec!["https://192.0.2.1:8053".to_owned()];
        let pinned = Settings {
            controllers: https.clone(),
            join_token: Some(format!("cnj.a.b.{hex}")),
            ..base()
        };
        let c = pinned.clone().resolve().unwrap();
        assert_eq!(c.tls.pin().unwrap().hex(), hex);
        // The flag overrides the token's pin.
        let other = "cd".repeat(32);
        let c = Settings {
            controller_pin: Some(format!("sha256:{other}")),
            ..pinned.clone()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.tls.pin().unwrap().hex(), other);
        let err = |s: Settings| s.resolve().unwrap_err().to_string();
        let e = err(Settings {
            controller_pin: Some("sha256:zz".into()),
            ..pinned.clone()
        });
        assert!(e.starts_with("config controller_pin:"), "{e}");
        let e = err(Settings {
            join_token: Some("cnj.a.b.nothex".into()),
            ..pinned.clone()
        });
        assert!(e.starts_with("config join_token:"), "{e}");
        // A pinned token with an http:// controller: the URL is wrong.
        let e = err(Settings {
            controllers: vec!["http://192.0.2.1:8053".into()],
            ..pinned.clone()
        });
        assert!(e.contains("use https://"), "{e}");
        // The CA file is read at config check.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = err(Settings {
            controllers: https.clone(),
            ca_cert: Some(missing),
            ..base()
        });
        assert!(
            e.starts_with("config ca_cert:") && e.contains("missing.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = err(Settings {
            controllers: https,
            ca_cert: Some(empty),
            ..base()
        });
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = |s: Settings| s.resolve().unwrap_err().field;
        assert_eq!(
            err(Settings {
                controllers: vec![],
                ..base()
            }),
            "controllers"
        );
        assert_eq!(
            err(Settings {
                controllers: vec!["192.0.2.1:8053".into()],
                ..base()
            }),
            "controllers"
        );
        assert_eq!(
            err(Settings {
                network: None,
                ..base()
            }),
            "network"
        );
        assert_eq!(
            err(Settings {
                join_token: None,
                ..base()
            }),
            "join_token"
        );
        assert_eq!(
            err(Settings {
                interface: Some("way-too-long-name0".into()),
                ..base()
            }),
            "interface"
        );
        assert_eq!(
            err(Settings {
                listen_port: Some(0),
                ..base()
            }),
            "listen_port"
        );
        assert_eq!(
            err(Settings {
                metrics_listen: Some("nowhere".into()),
                ..base()
            }),
            "metrics_listen"
        );
        assert_eq!(
            err(Settings {
                underlay_mtu: Some(100),
                ..base()
            }),
            "underlay_mtu"
        );
        assert_eq!(
            err(Settings {
                probe_interval_secs: Some(0),
                ..base()
            }),
            "probe_interval_secs"
        );
        assert_eq!(
            err(Settings {
                dataplane: Some("dpdk".into()),
                ..base()
            }),
            "dataplane"
        );
        assert_eq!(
            err(Settings {
                rx_hook: Some("xdp".into()),
                ..base()
            }),
            "rx_hook"
        );
        assert_eq!(
            err(Settings {
                ebpf_max_peers: Some(0),
                ..base()
            }),
            "ebpf_max_peers"
        );
        assert_eq!(
            err(Settings {
                ebpf_max_peers: Some(cladnet_common::maps::MAX_PEERS_LIMIT + 1),
                ..base()
            }),
            "ebpf_max_peers"
        );
        assert_eq!(
            err(Settings {
                packet_workers: Some(0),
                ..base()
            }),
            "packet_workers"
        );
        assert_eq!(
            err(Settings {
                packet_workers: Some(MAX_PACKET_WORKERS + 1),
                ..base()
            }),
            "packet_workers"
        );
        for (field, s) in [
            (
                "relay_packets_per_sec",
                Settings {
                    relay_packets_per_sec: Some(0),
                    ..base()
                },
            ),
            (
                "relay_packet_burst",
                Settings {
                    relay_packet_burst: Some(100_000_001),
                    ..base()
                },
            ),
            (
                "relay_bytes_per_sec",
                Settings {
                    relay_bytes_per_sec: Some(0),
                    ..base()
                },
            ),
            (
                "relay_byte_burst",
                Settings {
                    relay_byte_burst: Some(1500),
                    ..base()
                },
            ),
            (
                "relay_bytes_per_sec",
                Settings {
                    relay_bytes_per_sec: Some(u64::MAX),
                    ..base()
                },
            ),
        ] {
            let e = s.resolve().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(" is not in "), "{e}");
        }
        let unknown = toml::from_str::<Settings>("netwrok = \"x\"").unwrap_err();
        assert!(unknown.to_string().contains("netwrok"), "{unknown}");
    }
}
