//! Request validation. Every check names the field by its API (JSON) name.

use std::net::{Ipv4Addr, SocketAddrV4};

use base64::Engine as _;
use ipnet::Ipv4Net;

use crate::{
    error::{ControllerError, Result},
    ipam::MAX_POOL_PREFIX_LEN,
    recommend::PRIVATE_RANGES,
};

/// A network id: 1..=63 of `[a-z0-9-]`, starting and ending with a letter or digit.
pub fn network_id(field: &str, s: &str) -> Result<()> {
    label(field, s)
}

/// An external peer's name, with the rules of a network id (it becomes host id `ext-<name>`).
pub fn peer_name(field: &str, s: &str) -> Result<()> {
    label(field, s)
}

/// 1..=63 of `[a-z0-9-]`, starting and ending with a letter or digit (a DNS label).
fn label(field: &str, s: &str) -> Result<()> {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if s.is_empty() || s.len() > 63 {
        return Err(ControllerError::invalid(
            field,
            "must be 1 to 63 characters",
        ));
    }
    if !s.bytes().all(ok_char) || s.starts_with('-') || s.ends_with('-') {
        return Err(ControllerError::invalid(
            field,
            format!("{s:?}: use lowercase letters, digits and '-', not at either end"),
        ));
    }
    Ok(())
}

/// A host (node) id: 1..=128 of `[A-Za-z0-9._-]`.
pub fn host_id(field: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ControllerError::invalid(
            field,
            format!("{s:?}: use 1 to 128 of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// Free text of at most `max` bytes without control characters (C0, DEL, C1) or the
/// invisible direction and zero-width marks that make a terminal show something else than what
/// is stored.
pub fn text(field: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(ControllerError::invalid(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    let invisible = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
    if s.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(ControllerError::invalid(
            field,
            "contains control characters",
        ));
    }
    Ok(())
}

/// An overlay CIDR: valid, no host bits, inside 10/8, 172.16/12 or 192.168/16, /8 to /29.
pub fn overlay_cidr(field: &str, s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        ControllerError::invalid(
            field,
            format!("{s:?} is not an IPv4 CIDR like 10.77.0.0/24"),
        )
    })?;
    if net.trunc() != net {
        return Err(ControllerError::invalid(
            field,
            format!("{s} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    if !PRIVATE_RANGES.iter().any(|r| r.contains(&net)) {
        return Err(ControllerError::invalid(
            field,
            format!(
                "{net} is not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"
            ),
        ));
    }
    if net.prefix_len() > MAX_POOL_PREFIX_LEN {
        return Err(ControllerError::invalid(
            field,
            format!("{net} is too small: use /{MAX_POOL_PREFIX_LEN} or larger"),
        ));
    }
    Ok(net)
}

/// Shortest prefix a host's own subnet may have: anything larger (0.0.0.0/0, 10.0.0.0/4, ...)
/// is not a subnet a host sits in, and would leave the recommender no room.
pub const MIN_HOST_PREFIX_LEN: u8 = 8;

/// A host CIDR an agent reports (host bits allowed): a real host subnet, /8 or smaller, not
/// unspecified, loopback or multicast.
pub fn reported_cidr(field: &str, s: &str) -> Result<Ipv4Net> {
    let net = host_cidr(field, s)?;
    if net.prefix_len() < MIN_HOST_PREFIX_LEN {
        return Err(ControllerError::invalid(
            field,
            format!("{net} is too large for a host subnet (/{MIN_HOST_PREFIX_LEN} at most)"),
        ));
    }
    let ip = net.addr();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err(ControllerError::invalid(
            field,
            format!("{net} is not a host address"),
        ));
    }
    Ok(net)
}

/// Capabilities an agent may report: its dataplanes, and `relay` when it serves as a relay
/// for its network (peers choose relays among the records that carry it).
pub const CAPABILITIES: [&str; 5] = ["xdp-driver", "xdp-generic", "tc", "userspace", "relay"];

/// Reported capabilities: known values, no repeats.
pub fn capabilities(field: &str, caps: &[String]) -> Result<()> {
    if caps.len() > CAPABILITIES.len() {
        return Err(ControllerError::invalid(
            field,
            format!("more than {} entries", CAPABILITIES.len()),
        ));
    }
    for (i, c) in caps.iter().enumerate() {
        if !CAPABILITIES.contains(&c.as_str()) {
            let shown: String = c.chars().take(32).collect();
            return Err(ControllerError::invalid(
                format!("{field}[{i}]"),
                format!("{shown:?} is not one of {}", CAPABILITIES.join(" ")),
            ));
        }
        if caps[..i].contains(c) {
            return Err(ControllerError::invalid(
                format!("{field}[{i}]"),
                format!("{c:?} repeated"),
            ));
        }
    }
    Ok(())
}

/// A host CIDR as reported or given to the recommender (host bits allowed).
pub fn host_cidr(field: &str, s: &str) -> Result<Ipv4Net> {
    s.parse().map_err(|_| {
        ControllerError::invalid(
            field,
            format!("{s:?} is not an IPv4 CIDR like 192.168.1.10/24"),
        )
    })
}

/// A base64 X25519 public key (32 bytes).
pub fn public_key(field: &str, s: &str) -> Result<()> {
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(k) if k.len() == 32 => Ok(()),
        Ok(k) => Err(ControllerError::invalid(
            field,
            format!("decodes to {} bytes, not 32", k.len()),
        )),
        Err(e) => Err(ControllerError::invalid(field, format!("not base64: {e}"))),
    }
}

/// An optional `ip:port` endpoint: empty means none.
pub fn endpoint(field: &str, s: &str) -> Result<Option<SocketAddrV4>> {
    if s.is_empty() {
        return Ok(None);
    }
    let e: SocketAddrV4 = s
        .parse()
        .map_err(|_| ControllerError::invalid(field, format!("{s:?} is not an IPv4 ip:port")))?;
    unicast(field, e)?;
    Ok(Some(e))
}

/// An endpoint a peer can be reached at: a port, and no loopback, link-local, unspecified
/// ("this network"), multicast or broadcast address.
pub fn unicast(field: &str, e: SocketAddrV4) -> Result<()> {
    let ip = e.ip();
    if e.port() == 0
        || ip.octets()[0] == 0
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_loopback()
        || ip.is_link_local()
    {
        return Err(ControllerError::invalid(
            field,
            format!(
                "{e} is not a usable unicast endpoint (loopback, link-local, unspecified, \
                 multicast and broadcast addresses are refused)"
            ),
        ));
    }
    Ok(())
}

/// An agent's endpoint must not sit inside the network's overlay: packets to it would be
/// routed into the tunnel they are supposed to carry.
pub fn outside_overlay(field: &str, e: SocketAddrV4, overlay: Ipv4Net) -> Result<()> {
    if overlay.contains(e.ip()) {
        return Err(ControllerError::invalid(
            field,
            format!("{e} is inside the network's address space {overlay}"),
        ));
    }
    Ok(())
}

/// An optional IPv4 address: empty means none.
pub fn optional_ipv4(field: &str, s: &str) -> Result<Option<Ipv4Addr>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| ControllerError::invalid(field, format!("{s:?} is not an IPv4 address")))
}

/// A field that must not be empty.
pub fn required<'a>(field: &str, s: &'a str) -> Result<&'a str> {
    if s.is_empty() {
        Err(ControllerError::invalid(field, "is required"))
    } else {
        Ok(s)
    }
}

/// A parsed policy enum, defaulting when empty.
pub fn policy_enum<T: std::str::FromStr<Err = cladnet_core::policy::PolicyParseError> + Default>(
    field: &str,
    s: &str,
) -> Result<T> {
    if s.is_empty() {
        return Ok(T::default());
    }
    s.parse()
        .map_err(|e: cladnet_core::policy::PolicyParseError| {
            ControllerError::invalid(
                field,
                format!("{:?} is not one of {}", e.value, e.allowed.trim_end()),
            )
        })
}

/// Site labels: each at most 128 bytes of text, named `{prefix}.providerName` etc.
pub fn site(prefix: &str, site: &crate::model::SiteRecord) -> Result<()> {
    for (field, value) in [
        ("providerName", &site.provider),
        ("regionId", &site.region),
        ("availabilityZoneId", &site.zone),
        ("virtualNetworkId", &site.vpc),
        ("subnetId", &site.subnet),
    ] {
        text(&format!("{prefix}.{field}"), value, 128)?;
    }
    Ok(())
}

/// Remote command names.
pub const COMMANDS: [&str; 5] = [
    "up",
    "down",
    "enable-encryption",
    "disable-encryption",
    "advertise-routes",
];

/// The paths an agent reports per peer (`PeerStats.path`; empty = not known).
pub const LINK_PATHS: &[&str] = &["direct", "relay", "connecting", "unreachable"];

/// A reported link path and its relay (`path` and `via` are the fields' API names): the path
/// empty (an agent that does not report paths) or one of [`LINK_PATHS`]; `via` empty, or a
/// host id when the path is `relay` (whether it is a member of the network is the caller's
/// check: it needs the store).
pub fn link_path(path_field: &str, path: &str, via_field: &str, via: &str) -> Result<()> {
    if !path.is_empty() && !LINK_PATHS.contains(&path) {
        return Err(ControllerError::invalid(
            path_field,
            format!("{path:?} is not one of {}", LINK_PATHS.join(" ")),
        ));
    }
    if via.is_empty() {
        return Ok(());
    }
    if path != "relay" {
        return Err(ControllerError::invalid(
            via_field,
            format!("{via:?}: only a relayed path (path \"relay\") has a relay, not {path:?}"),
        ));
    }
    host_id(via_field, via)
}

/// A remote command name (cb-network's upper-case names are accepted too).
pub fn command_type(field: &str, s: &str) -> Result<String> {
    let normalized = s.to_ascii_lowercase().replace('_', "-");
    if COMMANDS.contains(&normalized.as_str()) {
        Ok(normalized)
    } else {
        Err(ControllerError::invalid(
            field,
            format!("{s:?} is not one of {}", COMMANDS.join(" ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ControllerError) -> String {
        match e {
            ControllerError::InvalidArgument { field, .. } => field,
            other => panic!("not InvalidArgument: {other}"),
        }
    }

    #[test]
    fn link_paths() {
        for p in ["", "direct", "connecting", "unreachable", "relay"] {
            link_path("p", p, "v", "").unwrap();
        }
        link_path("p", "relay", "v", "node-3").unwrap();
        for (path, via, field) in [
            ("Direct", "", "p"),
            ("relayed", "", "p"),
            ("direct", "node-3", "v"),
            ("", "node-3", "v"),
            ("relay", "a/b", "v"),
        ] {
            assert_eq!(
                field_of(link_path("p", path, "v", via).unwrap_err()),
                field,
                "{path:?} via {via:?}"
            );
        }
    }

    #[test]
    fn network_ids() {
        network_id("cladnetId", "aws-gcp-1").unwrap();
        for bad in ["", "-a", "a-", "A", "a_b", &"x".repeat(64)] {
            assert_eq!(
                field_of(network_id("cladnetId", bad).unwrap_err()),
                "cladnetId",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn peer_names_and_addresses() {
        peer_name("name", "laptop-1").unwrap();
        for bad in ["", "-a", "Laptop", "a.b", &"x".repeat(64)] {
            assert_eq!(
                field_of(peer_name("name", bad).unwrap_err()),
                "name",
                "{bad:?}"
            );
        }
        assert_eq!(optional_ipv4("ip", "").unwrap(), None);
        assert_eq!(
            optional_ipv4("ip", "10.0.0.9").unwrap(),
            Some(Ipv4Addr::new(10, 0, 0, 9))
        );
        for bad in ["10.0.0", "10.0.0.9/32", "fd00::1"] {
            assert_eq!(
                field_of(optional_ipv4("ip", bad).unwrap_err()),
                "ip",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn overlay_cidrs() {
        assert_eq!(
            overlay_cidr("f", "10.77.0.0/24").unwrap().to_string(),
            "10.77.0.0/24"
        );
        let msg = overlay_cidr("ipv4AddressSpace", "10.77.0.1/24")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("did you mean 10.77.0.0/24"), "{msg}");
        assert!(
            overlay_cidr("f", "8.8.8.0/24")
                .unwrap_err()
                .to_string()
                .contains("private")
        );
        assert!(overlay_cidr("f", "10.0.0.0/30").is_err());
        assert!(overlay_cidr("f", "10.0.0.0/33").is_err());
        assert!(overlay_cidr("f", "nonsense").is_err());
    }

    #[test]
    fn keys_endpoints_commands() {
        public_key("publicKey", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        assert!(
            public_key("publicKey", "AAAA")
                .unwrap_err()
                .to_string()
                .contains("3 bytes")
        );
        assert!(public_key("publicKey", "!!").is_err());
        assert_eq!(endpoint("e", "").unwrap(), None);
        assert!(endpoint("e", "1.2.3.4:0").is_err());
        assert!(endpoint("e", "0.0.0.0:80").is_err());
        assert_eq!(endpoint("e", "1.2.3.4:8055").unwrap().unwrap().port(), 8055);
        assert_eq!(
            command_type("c", "ENABLE_ENCRYPTION").unwrap(),
            "enable-encryption"
        );
        assert!(command_type("c", "reboot").is_err());
        assert!(host_id("hostId", "node-1.a_b").is_ok());
        assert!(host_id("hostId", "a/b").is_err());
        assert!(text("name", "a\nb", 10).is_err());
        assert!(text("name", "a\u{1b}[2Jb", 10).is_err());
        assert!(text("name", "evil\u{202E}txt", 20).is_err());
        assert!(text("name", "\u{9b}31m", 10).is_err());
        text("name", "host-1.example ü", 30).unwrap();
    }

    #[test]
    fn agent_reported_facts() {
        for bad in [
            "127.0.0.1:51820",
            "169.254.1.1:51820",
            "0.1.2.3:51820",
            "224.0.0.1:51820",
            "255.255.255.255:51820",
        ] {
            assert_eq!(
                field_of(endpoint("publicEndpoint", bad).unwrap_err()),
                "publicEndpoint",
                "{bad}"
            );
        }
        endpoint("publicEndpoint", "100.64.0.1:8056").unwrap();
        let overlay: Ipv4Net = "10.77.0.0/24".parse().unwrap();
        let inside = endpoint("e", "10.77.0.9:8055").unwrap().unwrap();
        assert_eq!(
            field_of(outside_overlay("publicEndpoint", inside, overlay).unwrap_err()),
            "publicEndpoint"
        );
        let outside = endpoint("e", "10.78.0.9:8055").unwrap().unwrap();
        outside_overlay("publicEndpoint", outside, overlay).unwrap();
        for bad in ["0.0.0.0/0", "10.0.0.0/7", "224.0.0.1/24", "0.0.0.0/8"] {
            assert_eq!(field_of(reported_cidr("c", bad).unwrap_err()), "c", "{bad}");
        }
        reported_cidr("c", "192.168.1.10/24").unwrap();
        reported_cidr("c", "10.0.0.1/8").unwrap();
        capabilities("facts.capabilities", &["tc".into(), "userspace".into()]).unwrap();
        assert_eq!(
            field_of(
                capabilities("facts.capabilities", &["tc".into(), "rm -rf".into()]).unwrap_err()
            ),
            "facts.capabilities[1]"
        );
        assert!(capabilities("f", &["tc".into(), "tc".into()]).is_err());
        assert!(capabilities("f", &vec!["tc".to_string(); 5]).is_err());
    }
}
